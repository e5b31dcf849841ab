//! `oomtrace watch`: trace OOM kills on this host and print each one as it happens.
use crate::cgroup_fs::Hierarchies;
use crate::event::{Decoder, OomKill};
use crate::k8s::attribution::Attributor;
use crate::k8s::pod_index::{self, PodIndex};
use crate::output::{Format, Printer};
use crate::event::Record;
use crate::filter::{Filter, FilterArgs};
use crate::incident::Incidents;
use crate::pressure::MemoryPressure;
use crate::tracer::{ContextHook, Counters, Options, Tracer, VictimHook};
use std::time::Instant;
use anyhow::Result;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

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
}

impl HookArgs {
    pub fn options(&self) -> Options {
        Options {
            victim_hook: self.victim_hook,
            context_hook: self.context_hook,
            ring_buffer_bytes: self.ring_buffer_bytes,
            btf: self.btf.clone(),
            warnings: self.warnings,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct KubeArgs {
    /// kubeconfig for pod attribution (default: $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<std::path::PathBuf>,
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
        match &self.kubeconfig {
            Some(path) => Ok(Some(pod_index::client_from_kubeconfig(path).await?)),
            None => pod_index::client_from_env().await,
        }
    }

    /// Attribution through this node's pod index (none without a client).
    pub fn attributor(&self, client: Option<kube::Client>) -> Attributor {
        Attributor::new(client.map(|c| PodIndex::spawn(c, crate::node_name(), self.tombstone_ttl)))
    }
}

/// Where a stream of kills goes; `watch` prints them, the daemon fans them out.
pub trait Sink {
    /// The programs are attached with these hooks.
    fn attached(&mut self, _strategy: &str) {}
    /// Returns false to stop.
    fn kill(&mut self, ev: &OomKill) -> Result<bool>;
    /// The kernel-side counters, about once a second.
    fn counters(&mut self, _c: &Counters) {}
    /// A memory cgroup reclaiming at its limit (only with warnings enabled).
    fn pressure(&mut self, _p: &MemoryPressure) -> Result<()> {
        Ok(())
    }
}

/// Runs the tracer until SIGINT/SIGTERM or until the sink says stop. Announces on stderr
/// once the programs are attached, so people and scripts know it is live.
pub async fn trace(opts: &Options, attributor: &Attributor, sink: &mut dyn Sink) -> Result<()> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tracer = Tracer::start(opts)?;
    let hierarchies = Hierarchies::detect()
        .inspect_err(|e| tracing::warn!("cannot read cgroup mounts: {e:#}"))
        .ok();
    let node = crate::node_name();
    let mut decoder = Decoder::new(node.clone(), hierarchies.clone());
    let mut incidents = Incidents::default();
    sink.attached(&tracer.strategy);
    eprintln!("watching for OOM kills (strategy: {})", tracer.strategy);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut batch = Vec::new();
    let mut lost_attached = 0u64; // lost events already reported on an event
    let mut lost_warned = 0u64;
    loop {
        let hold = incidents.deadline();
        let mut ready = Vec::new();
        tokio::select! {
            r = tracer.next_batch(&mut batch) => {
                r?;
                let lost_now = tracer.counters()?.lost;
                for rec in batch.drain(..) {
                    match rec {
                        Record::Victim(raw) => {
                            let mut ev = decoder.decode(&raw, lost_now - lost_attached);
                            lost_attached = lost_now;
                            attributor.enrich(&mut ev);
                            ev.explain(hierarchies.as_ref());
                            ev.fill_resource();
                            ready.extend(incidents.push(ev, Instant::now()));
                        }
                        Record::InvocationEnd(end) => ready.extend(incidents.invocation_end(end.seq)),
                        Record::Pressure(raw) => {
                            if let Some(mut p) = crate::pressure::decode(&raw, &node, decoder.page_size()) {
                                p.k8s = attributor.for_path(&p.cgroup, &node);
                                sink.pressure(&p)?;
                            }
                        }
                    }
                }
            }
            _ = sleep_until(hold) => ready.extend(incidents.due(Instant::now())),
            _ = tick.tick() => {
                let c = tracer.counters()?;
                sink.counters(&c);
                if c.lost > lost_warned {
                    tracing::warn!(
                        "{} OOM kill events lost so far: the ring buffer was full (raise --ring-buffer-bytes)",
                        c.lost
                    );
                    lost_warned = c.lost;
                }
                if tracer.malformed > 0 {
                    tracing::warn!("{} malformed ring buffer records", tracer.malformed);
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
        for ev in ready {
            if !sink.kill(&ev)? {
                return Ok(());
            }
        }
    }
    for ev in incidents.flush() {
        if !sink.kill(&ev)? {
            break;
        }
    }
    let c = tracer.counters()?;
    tracing::info!(
        "stopping: {} victims seen in {} hooked OOM invocations, {} lost, {} warnings lost, {} kernel read errors; detaching",
        c.seen, c.oom_invocations, c.lost, c.pressure_lost, c.read_errors
    );
    Ok(())
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

struct PrintSink<W: std::io::Write> {
    printer: Printer<W>,
    filter: Filter,
    left: Option<u64>,
}

impl<W: std::io::Write> Sink for PrintSink<W> {
    fn kill(&mut self, ev: &OomKill) -> Result<bool> {
        if !self.filter.matches_kill(ev) {
            return Ok(true);
        }
        if let Err(e) = self.printer.print(ev) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(false);
            }
            return Err(e.into());
        }
        if let Some(left) = self.left.as_mut() {
            *left -= 1;
            return Ok(*left > 0);
        }
        Ok(true)
    }

    fn pressure(&mut self, p: &MemoryPressure) -> Result<()> {
        let k = p.k8s.as_ref();
        let ns = k.and_then(|k| k.namespace.as_deref());
        if !self.filter.matches(ns, k.and_then(|k| k.pod.as_deref()), k.and_then(|k| k.container.as_deref())) {
            return Ok(());
        }
        match self.printer.pressure(p) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
            _ => Ok(()),
        }
    }
}

pub async fn run(args: WatchArgs) -> Result<()> {
    let opts = args.hooks.options();
    if args.count == Some(0) {
        return Ok(());
    }
    let filter = Filter::new(&args.filter)?;
    let client = args.k8s.client().await?;
    if args.cluster {
        let Some(client) = client else {
            anyhow::bail!("--cluster needs a Kubernetes config (--kubeconfig, $KUBECONFIG or ~/.kube/config)");
        };
        return crate::cluster::run(client, filter, args.format, args.since, args.count).await;
    }
    let attributor = args.k8s.attributor(client);
    let mut sink = PrintSink { printer: Printer::new(std::io::stdout(), args.format), filter, left: args.count };
    trace(&opts, &attributor, &mut sink).await
}
