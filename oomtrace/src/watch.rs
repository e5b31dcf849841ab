//! `oomtrace watch`: trace OOM kills on this host and print each one as it happens.
use crate::model::OomKill;
use crate::filter::{Filter, FilterArgs};
use crate::k8s::attribution::Attributor;
use crate::k8s::client;
use crate::k8s::pod_index::PodIndex;
use crate::output::{Format, OutputErrors, Printer};
use crate::pipeline::{trace, Sink, Snapshot, Stats};
use crate::pressure::MemoryPressure;
use crate::tracer::{ContextHook, Options, VictimHook};
use anyhow::Result;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub format: Format,
    /// Exit 0 after printing this many kills.
    #[arg(long)]
    pub count: Option<u64>,
    /// Kills across every node of the cluster (from the daemons' OOMKill Events), not this host.
    #[arg(long)]
    pub cluster: bool,
    /// With --cluster: first list the kills of this last period (e.g. 1h), oldest first.
    #[arg(long, value_parser = humantime::parse_duration, requires = "cluster")]
    pub since: Option<Duration>,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub hooks: HookArgs,
    #[command(flatten)]
    pub k8s: KubeArgs,
}

/// How to attach to the kernel (shared by `watch` and `daemon`).
#[derive(Debug, Clone, clap::Args)]
pub struct HookArgs {
    /// How to hook `oom:mark_victim`.
    #[arg(long, value_enum, default_value = "auto")]
    pub victim_hook: VictimHook,
    /// How to hook `oom_kill_process` for the OOM context.
    #[arg(long, value_enum, default_value = "auto")]
    pub context_hook: ContextHook,
    /// Size of the BPF ring buffer in bytes (power of two). Overflows are counted, not silent.
    #[arg(long, default_value_t = 4 << 20)]
    pub ring_buffer_bytes: u32,
    /// Kernel BTF file (for kernels whose BTF is not at the default path).
    #[arg(long, default_value = crate::btf_offsets::VMLINUX_BTF)]
    pub btf: std::path::PathBuf,
    /// Also report memory cgroups reclaiming at their limit (early warnings before a kill).
    #[arg(long)]
    pub warnings: bool,
    /// Do not capture the charging task's stacks at a kill (`oom.charge` is then null).
    #[arg(long)]
    pub no_charge_stacks: bool,
}

impl HookArgs {
    pub fn options(&self) -> Options {
        Options {
            victim_hook: self.victim_hook,
            context_hook: self.context_hook,
            ring_buffer_bytes: self.ring_buffer_bytes,
            btf: self.btf.clone(),
            warnings: self.warnings,
            charge_stacks: !self.no_charge_stacks,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct KubeArgs {
    #[command(flatten)]
    pub connection: client::ClientArgs,
    /// How long a deleted pod stays known, so kills around its deletion are still attributed.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub tombstone_ttl: Duration,
    /// Run without Kubernetes attribution even if a kubeconfig is found.
    #[arg(long)]
    pub no_kubernetes: bool,
}

impl KubeArgs {
    /// A client for this cluster, or none when there is no Kubernetes here.
    pub async fn client(&self) -> Result<Option<kube::Client>> {
        if self.no_kubernetes {
            return Ok(None);
        }
        self.connection.client().await
    }

    /// Attribution through this node's pod index (none without a client).
    pub fn attributor(&self, client: Option<kube::Client>) -> Attributor {
        Attributor::new(client.map(|c| PodIndex::spawn(c, crate::node_name(), self.tombstone_ttl)))
    }
}

struct PrintSink<W: std::io::Write> {
    printer: Printer<W>,
    filter: Filter,
    left: Option<u64>,
    errors: OutputErrors,
}

impl<W: std::io::Write> PrintSink<W> {
    /// A failed write is counted and logged; only a closed pipe (the reader is gone) stops.
    fn delivered(&mut self, r: std::io::Result<()>) -> bool {
        match r {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => false,
            Err(e) => {
                self.errors.failed(&e);
                true
            }
        }
    }
}

impl<W: std::io::Write> Sink for PrintSink<W> {
    fn kill(&mut self, ev: &OomKill) -> bool {
        if !self.filter.matches_kill(ev) {
            return true;
        }
        let r = self.printer.print(ev);
        if !self.delivered(r) {
            return false;
        }
        match self.left.as_mut() {
            Some(left) => {
                *left = left.saturating_sub(1);
                *left > 0
            }
            None => true,
        }
    }

    fn pressure(&mut self, p: &MemoryPressure) {
        let k = p.k8s.as_ref();
        let ns = k.and_then(|k| k.namespace.as_deref());
        if self.filter.matches(
            ns,
            k.and_then(|k| k.pod.as_deref()),
            k.and_then(|k| k.container.as_deref()),
        ) {
            let r = self.printer.pressure(p);
            self.delivered(r);
        }
    }
}

pub async fn run(args: WatchArgs) -> Result<()> {
    let opts = args.hooks.options();
    if args.count == Some(0) {
        return Ok(());
    }
    let filter = Filter::new(&args.filter)?;
    if args.cluster {
        let Some(client) = args.k8s.client().await? else {
            anyhow::bail!(
                "--cluster needs a Kubernetes config (--kubeconfig, $KUBECONFIG or ~/.kube/config)"
            );
        };
        return crate::cluster::run(client, filter, args.format, args.since, args.count).await;
    }
    // Loaded before the Kubernetes client exists: start-up then peaks at the kernel BTF's
    // parse alone.
    let tracer = crate::tracer::Tracer::start(&opts)?;
    let attributor = args.k8s.attributor(args.k8s.client().await?);
    let errors = OutputErrors::default();
    let mut sink = PrintSink {
        printer: Printer::new(std::io::stdout(), args.format),
        filter,
        left: args.count,
        errors,
    };
    let mut lost_warned = 0;
    let export = move |s: &Snapshot| {
        let lost = s.kernel.lost.saturating_add(s.queue_lost_kills);
        if lost > lost_warned {
            tracing::warn!(
                "{lost} OOM kill events lost so far (raise --ring-buffer-bytes, or read faster)"
            );
            lost_warned = lost;
        }
    };
    trace(
        tracer,
        &attributor,
        &mut sink,
        Arc::new(Stats::default()),
        export,
    )
    .await
}
