use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "oomtrace", version, about = "Catch every kernel OOM kill with eBPF and say exactly what happened")]
struct Cli {
    /// More logging on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Format of oomtrace's own logs on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Trace OOM kills on this host and print each one as it happens.
    Watch(oomtrace::watch::WatchArgs),
    /// The limited memory cgroups closest to their limit, live: usage, trend, time to the
    /// limit, OOM kills.
    Top(oomtrace::top::TopArgs),
    /// Kills per owner (Deployment, StatefulSet, DaemonSet, CronJob, Job, Pod) and container
    /// over a window: the count, the last kill, its limit, trend, verdict and recommendation.
    Report(oomtrace::report::ReportArgs),
    /// Run on a node: JSON lines on stdout, metrics and health on HTTP, Kubernetes Events.
    Daemon(oomtrace::daemon::DaemonArgs),
}

fn init_logging(verbose: u8, format: LogFormat) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colour only for a person at a terminal: escape codes in `kubectl logs` and log pipelines are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The name kubectl's plugin discovery runs the binary under (`kubectl oomtrace …`).
const KUBECTL_PLUGIN: &str = "kubectl-oomtrace";

/// The command line, with usage and help spelled `kubectl oomtrace` when run as the plugin.
fn parse_cli() -> Cli {
    let argv0 = std::env::args_os().next().map(std::path::PathBuf::from);
    let plugin = argv0.as_deref().and_then(|p| p.file_name()).is_some_and(|n| n == KUBECTL_PLUGIN);
    let cmd = if plugin { Cli::command().name("kubectl oomtrace").bin_name("kubectl oomtrace") } else { Cli::command() };
    Cli::from_arg_matches(&cmd.get_matches()).unwrap_or_else(|e| e.exit())
}

fn main() {
    // Before the runtime starts its threads, which would each take an arena.
    oomtrace::heap::limit_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the tokio runtime")
        .block_on(run());
}

async fn run() {
    let cli = parse_cli();
    init_logging(cli.verbose, cli.log_format);
    let result = match cli.cmd {
        Cmd::Watch(args) => oomtrace::watch::run(args).await,
        Cmd::Top(args) => oomtrace::top::run(args).await,
        Cmd::Report(args) => oomtrace::report::run(args).await,
        Cmd::Daemon(args) => oomtrace::daemon::run(args).await,
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
