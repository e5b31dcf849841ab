//! Development tasks: `cargo xtask setup | watch | test | vm-test | image | bench`.
mod setup;
mod test;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "oomtrace development tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building the eBPF programs needs, at the pinned versions (idempotent, fast
    /// when already done), and check that the pins agree.
    Setup,
    /// Build oomtrace (release) and run `oomtrace watch` with these arguments.
    Watch {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The whole test suite: unit tests, the integration suite on this host (as root), then
    /// the integration suite inside VMs on other kernels. Installs what the tests use.
    Test(test::Args),
    /// Boot Debian kernels under QEMU and run the integration suite inside, as root.
    VmTest(vm::Args),
    /// Build the container image (the Dockerfile's runtime stage, a static binary) as
    /// `localhost/oomtrace:dev`.
    Image,
    /// Capture ratio, latency and overhead under an OOM storm, side by side with other tools
    /// (the `oomtrace-bench` crate; `cargo xtask bench --help` lists its flags).
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup::run().map(drop),
        Cmd::Watch { args } => test::watch(&args),
        Cmd::Test(args) => test::run(args),
        Cmd::VmTest(args) => vm::run(args),
        Cmd::Image => test::image().map(drop),
        Cmd::Bench { args } => test::bench(&args),
    }
}
