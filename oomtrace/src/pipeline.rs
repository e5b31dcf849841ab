//! The capture path, read top to bottom:
//!
//! 1. the ring reader ([`read_ring`]) only drains the BPF ring buffer into a bounded queue, so
//!    no slow step after it can make the kernel drop a record (a full queue is counted);
//! 2. what procfs still shows of the victim, first: its cmdline and environ (its runtime, see
//!    [`crate::runtime`]) are gone within milliseconds of the kill ([`victim_procfs`]);
//! 3. the OOM domain: which cgroup's limit was hit ([`DomainTracker`]);
//! 4. decode, pure: the kernel record and what the stages before found become the event
//!    ([`Decoder`]);
//!    The allocation that invoked the OOM killer, symbolized ([`KernelSymbols`], whose kernel
//!    functions are read at start-up);
//! 5. the OOM cgroup's memory history up to the kill and its trend ([`History`], sampled by
//!    [`history_sampler`] on a thread of its own);
//! 6. attribution to a pod and container, and the pod spec's runtime settings when procfs
//!    was too late ([`Attributor`]);
//! 7. the explanation, read within a per-event [`Budget`], with the
//!    containers of the tasks the OOM killer weighed ([`crate::candidates`]);
//! 8. incidents: the victims of one OOM held together ([`Incidents`]);
//! 9. the sinks, in kill order.
//!
//! Stages 2 to 9 run on one thread, in a runtime of their own ([`trace`]). The counters are
//! exported every second by a task of their own ([`export_counters`]), so they stay fresh
//! while a stage is slow. On SIGINT/SIGTERM the reader empties the ring,
//! then the stages finish within [`EXIT_DEADLINE`]; what is left is counted and logged.
use crate::cgroup_fs::Hierarchies;
use crate::charge::KernelSymbols;
use crate::event::{victim_cgroup, Decoder};
use crate::history::History;
use crate::history_sampler;
use crate::oom_domain::DomainTracker;
use crate::victim_procfs;
use crate::model::OomKill;
use crate::record::Record;
use crate::explain::Budget;
use crate::incident::Incidents;
use crate::k8s::attribution::Attributor;
use crate::pressure::MemoryPressure;
use crate::tracer::{Counters, KernelCounters, Tracer};
use anyhow::Result;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

/// A record, and when the ring reader took it from the ring.
type Queued = (Record, Instant);

/// Records the queue between the ring reader and the stages holds (the ring holds ~950).
pub const QUEUE: usize = 16 * 1024;
/// From SIGTERM until the stages must be done; the sinks then get [`FINISH`] to deliver what
/// they still hold. Both together stay under the DaemonSet's 30 s termination grace period.
pub const EXIT_DEADLINE: Duration = Duration::from_secs(20);
pub const FINISH: Duration = Duration::from_secs(5);
/// How often the ring reader reports in when the ring is quiet.
const READER_TICK: Duration = Duration::from_millis(500);

/// Where a stream of kills goes; `watch` prints them, the daemon fans them out.
pub trait Sink {
    /// The programs are attached with these hooks.
    fn attached(&mut self, _strategy: &str) {}
    /// Delivers one kill; false to stop. A delivery that failed is counted by the sink and
    /// never ends the stream.
    fn kill(&mut self, ev: &OomKill) -> bool;
    /// A memory cgroup reclaiming at its limit (only with warnings enabled).
    fn pressure(&mut self, _p: &MemoryPressure) {}
    /// Before exit: deliver what is still held, by `deadline`.
    fn finish(&mut self, _deadline: Instant) {}
}

/// A stage of the capture path, as a metric label: where a record was lost (`kernel`,
/// `queue`, `output`, `k8s_event`), or where a kill's time went (`ring`: from the kill until
/// the ring reader read it, the kernel's wake-up and the reader's wait for a CPU; `queue`:
/// until the stages took it; `victim`: its procfs and the user stack, and decode; `enrich`:
/// the kernel stack, history and attribution; `explain`: the cgroup and task reads).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: &'static str,
}

/// Seconds a kill spent in each stage: 0.5 ms to 4 s, doubling.
pub type StageSeconds = Family<StageLabels, Histogram, fn() -> Histogram>;

fn stage_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

/// What each stage counts, shared with the exporter (lock-free, never waits on a stage).
#[derive(Debug)]
pub struct Stats {
    start: Instant,
    /// When the ring reader last ran, in ms since `start`.
    reader_ran_ms: AtomicU64,
    /// Kill records dropped because the queue was full.
    pub queue_lost_kills: AtomicU64,
    pub queue_lost_invocation_ends: AtomicU64,
    pub queue_lost_warnings: AtomicU64,
    /// Ring records of unknown kind or too short (a program/daemon mismatch).
    pub malformed: AtomicU64,
    /// Kills handed to the sinks.
    pub emitted: AtomicU64,
    /// Kills whose explanation was cut short by its budget.
    pub explain_overruns: AtomicU64,
    /// Kills still in the queue or held when the exit deadline passed.
    pub exit_lost: AtomicU64,
    /// Where each kill's time went, by stage.
    pub stage_seconds: StageSeconds,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            reader_ran_ms: AtomicU64::new(0),
            queue_lost_kills: AtomicU64::new(0),
            queue_lost_invocation_ends: AtomicU64::new(0),
            queue_lost_warnings: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            emitted: AtomicU64::new(0),
            explain_overruns: AtomicU64::new(0),
            exit_lost: AtomicU64::new(0),
            stage_seconds: Family::new_with_constructor(stage_histogram),
        }
    }
}

impl Stats {
    fn reader_ran(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.reader_ran_ms.store(ms, Relaxed);
    }

    /// One kill's time in `stage`.
    fn took(&self, stage: &'static str, d: Duration) {
        self.stage_seconds.get_or_create(&StageLabels { stage }).observe(d.as_secs_f64());
    }

    /// How long ago the ring reader last ran.
    pub fn reader_idle(&self) -> Duration {
        let ran = Duration::from_millis(self.reader_ran_ms.load(Relaxed));
        self.start.elapsed().saturating_sub(ran)
    }
}

/// The kernel's counters with the stages', once a second.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    pub kernel: Counters,
    pub queue_lost_kills: u64,
    pub queue_lost_invocation_ends: u64,
    pub queue_lost_warnings: u64,
    pub malformed: u64,
    pub emitted: u64,
    pub explain_overruns: u64,
    pub exit_lost: u64,
    /// Limited cgroups whose memory history is kept, and those left out by the cap.
    pub history_cgroups: u64,
    pub history_untracked: u64,
}

impl Snapshot {
    fn of(kernel: Counters, s: &Stats, h: &History) -> Self {
        Self {
            history_cgroups: h.tracked.load(Relaxed),
            history_untracked: h.untracked.load(Relaxed),
            kernel,
            queue_lost_kills: s.queue_lost_kills.load(Relaxed),
            queue_lost_invocation_ends: s.queue_lost_invocation_ends.load(Relaxed),
            queue_lost_warnings: s.queue_lost_warnings.load(Relaxed),
            malformed: s.malformed.load(Relaxed),
            emitted: s.emitted.load(Relaxed),
            explain_overruns: s.explain_overruns.load(Relaxed),
            exit_lost: s.exit_lost.load(Relaxed),
        }
    }
}

/// Stage 1: drains the ring into `queue` until `stop`, then detaches, empties the ring and
/// returns how many kill records the stages no longer took.
async fn read_ring(
    mut tracer: Tracer,
    queue: mpsc::Sender<Queued>,
    stats: Arc<Stats>,
    history: Arc<History>,
    mut stop: watch::Receiver<bool>,
) -> u64 {
    let mut batch = Vec::new();
    loop {
        stats.reader_ran();
        tokio::select! {
            r = tokio::time::timeout(READER_TICK, tracer.next_batch(&mut batch)) => {
                if let Ok(Err(e)) = r {
                    tracing::error!("reading the ring buffer: {e:#}");
                    tokio::time::sleep(READER_TICK).await;
                }
            }
            _ = stop.changed() => break,
        }
        forward(&mut batch, &queue, &stats, &history);
        stats.malformed.store(tracer.malformed, Relaxed);
    }
    tracer.detach();
    tracer.drain_now(&mut batch);
    stats.malformed.store(tracer.malformed, Relaxed);
    let mut unsent = 0;
    let read = Instant::now();
    for rec in batch.drain(..) {
        if matches!(rec, Record::Victim(_)) {
            history.kill_queued();
        }
        if let Err(mpsc::error::SendError((rec, _))) = queue.send((rec, read)).await {
            unsent += u64::from(matches!(rec, Record::Victim(_)));
        }
    }
    stats.reader_ran();
    unsent
}

/// Queues `batch` without waiting; a full queue drops the record and counts it by kind.
fn forward(batch: &mut Vec<Record>, queue: &mpsc::Sender<Queued>, stats: &Stats, history: &History) {
    let read = Instant::now();
    for rec in batch.drain(..) {
        if matches!(rec, Record::Victim(_)) {
            history.kill_queued();
        }
        if let Err(mpsc::error::TrySendError::Full((rec, _)) | mpsc::error::TrySendError::Closed((rec, _))) =
            queue.try_send((rec, read))
        {
            match rec {
                Record::Victim(_) => {
                    history.kill_taken();
                    &stats.queue_lost_kills
                }
                Record::InvocationEnd(_) => &stats.queue_lost_invocation_ends,
                Record::Pressure(_) => &stats.queue_lost_warnings,
            }
            .fetch_add(1, Relaxed);
        }
    }
}

/// Reads the kernel's counters and the stages' every second and hands them to `export`.
fn export_counters(
    rt: &Handle,
    counters: Arc<KernelCounters>,
    stats: Arc<Stats>,
    history: Arc<History>,
    mut export: impl FnMut(&Snapshot) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    rt.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            export_once(&counters, &stats, &history, &mut export);
        }
    })
}

fn export_once(
    counters: &KernelCounters,
    stats: &Stats,
    history: &History,
    export: &mut impl FnMut(&Snapshot),
) -> Option<Snapshot> {
    match counters.read() {
        Ok(k) => {
            let s = Snapshot::of(k, stats, history);
            export(&s);
            Some(s)
        }
        Err(e) => {
            tracing::warn!("reading the kernel counters: {e:#}");
            None
        }
    }
}

/// Stage 5: the OOM cgroup's samples up to the kill, as `oom.history` (`null` for a cgroup
/// the sampler did not follow) and `oom.trend` (`unknown` then; `null` for a kill that hit
/// no cgroup limit).
fn history_of(ev: &mut OomKill, history: &History) {
    history.kill_taken();
    let (Some(path), Some(limit)) = (ev.oom.cgroup.as_deref(), ev.oom.limit_bytes) else { return };
    if ev.oom.constraint != Some(crate::model::Constraint::Memcg) {
        return;
    }
    let samples = history.before(path, ev.killed_at().unwrap_or_else(std::time::SystemTime::now));
    ev.oom.trend = Some(crate::trend::classify(samples.as_deref().unwrap_or_default(), limit));
    ev.oom.history = samples.map(|s| crate::history::points(&s));
}

/// Stage 7: the explanation. The walk stops itself at the kill's budget; one cut short is
/// counted (and said, for a node-wide OOM: those are rare, memcg overruns can come in storms).
fn explain(ev: &OomKill, h: Option<&Hierarchies>, budget: Budget, stats: &Stats) -> Option<crate::model::Explanation> {
    let budget = budget.for_kill(ev);
    let killed_at = ev.killed_at().unwrap_or_else(std::time::SystemTime::now);
    let (x, cut) = crate::explain::gather(ev, h?, killed_at, budget)?;
    if cut {
        stats.explain_overruns.fetch_add(1, Relaxed);
        if ev.oom.constraint == Some(crate::model::Constraint::Global) {
            tracing::warn!("node-wide OOM (victim pid {:?}): the node's tasks were read only in part within {:?}", ev.victim.pid, budget.time);
        }
    }
    Some(x)
}

/// Runs the tracer started by [`Tracer::start`] until SIGINT/SIGTERM or until the sink says
/// stop. Announces on stderr that the programs are attached, so people and scripts know it
/// is live. Callers start the tracer before the pod index, so that the start-up peak (the
/// kernel BTF, the programs' load) is over before the pod list is decoded.
///
/// The stages run on this thread, taken out of the runtime, in a runtime of their own: a
/// kill goes from stage to stage without waking another thread (each wake-up waits for a
/// CPU, milliseconds on a node busy with the processes being killed), and a stage that
/// blocks holds up no task of the daemon's. The ring reader and the counters' exporter stay
/// on the daemon's runtime, so neither waits for a stage.
pub async fn trace(
    tracer: (Tracer, KernelCounters),
    attributor: &Attributor,
    sink: &mut dyn Sink,
    stats: Arc<Stats>,
    export: impl FnMut(&Snapshot) + Clone + Send + 'static,
) -> Result<()> {
    let main = Handle::current();
    tokio::task::block_in_place(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let tail = rt.block_on(stages(&main, tracer, attributor, sink, stats.clone(), export.clone()))?;
        drop(rt);
        // Back in the daemon's runtime: the sinks' last deliveries (Events) run on it.
        sink.finish(Instant::now() + FINISH);
        tail.exporter.abort();
        tail.stop_sampler.store(true, Relaxed);
        // The reader detached the programs and emptied the rings: the counters are final.
        let mut export = export;
        if let Some(s) = export_once(&tail.counters, &stats, &tail.history, &mut export) {
            tracing::info!(
                "stopping: the kernel saw {} victims; {} emitted, lost {} in the kernel, {} in the queue, {} at exit",
                s.kernel.seen,
                s.emitted,
                s.kernel.lost,
                s.queue_lost_kills,
                s.exit_lost,
            );
        }
        Ok(())
    })
}

/// What outlives the stages until the daemon's last export.
struct Tail {
    exporter: tokio::task::JoinHandle<()>,
    stop_sampler: Arc<std::sync::atomic::AtomicBool>,
    counters: Arc<KernelCounters>,
    history: Arc<History>,
}

/// Stages 2 to 9, until a stop; the reader and the exporter are spawned on `main`.
async fn stages(
    main: &Handle,
    (tracer, counters): (Tracer, KernelCounters),
    attributor: &Attributor,
    sink: &mut dyn Sink,
    stats: Arc<Stats>,
    export: impl FnMut(&Snapshot) + Send + 'static,
) -> Result<Tail> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let hierarchies = Hierarchies::detect()
        .inspect_err(|e| tracing::warn!("cannot read cgroup mounts: {e:#}"))
        .ok();
    let node = crate::node_name();
    let mut procfs = victim_procfs::Reader::new(hierarchies.clone());
    let mut domains = DomainTracker::new(hierarchies.clone());
    let decoder = Decoder::new(node.clone());
    let mut symbols = KernelSymbols::load(tracer.charge_stacks);
    let mut incidents = Incidents::default();
    let history = Arc::new(History::default());
    let stop_sampler = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = hierarchies.as_ref().and_then(|h| history_sampler::spawn(h, history.clone(), stop_sampler.clone()));
    sink.attached(&tracer.strategy);
    eprintln!("watching for OOM kills (strategy: {})", tracer.strategy);

    let (tx, mut rx) = mpsc::channel(QUEUE);
    let (stop_tx, stop_rx) = watch::channel(false);
    let reader = main.spawn(read_ring(tracer, tx, stats.clone(), history.clone(), stop_rx));
    let counters = Arc::new(counters);
    let exporter = export_counters(main, counters.clone(), stats.clone(), history.clone(), export);
    let budget = Budget::default();
    let mut lost_attached = 0u64; // kills lost already reported on an event
    let mut exit_by: Option<Instant> = None;
    let mut stopped = false;
    'run: loop {
        let hold = incidents.deadline();
        let mut ready = Vec::new();
        tokio::select! {
            rec = rx.recv() => match rec {
                Some((Record::Victim(raw), read)) => {
                    let taken = Instant::now();
                    let mut seen = procfs.read(&raw);
                    let user_stack = seen.user_stack.take();
                    let kernel_lost = counters.read().map(|c| c.lost).unwrap_or(0);
                    let lost_now = kernel_lost.saturating_add(stats.queue_lost_kills.load(Relaxed));
                    let cgroup = victim_cgroup(&raw, &seen);
                    let domain = domains.resolve(&raw, cgroup.memory.path.as_deref());
                    let lost = lost_now.saturating_sub(lost_attached);
                    let mut ev = decoder.decode(&raw, seen, cgroup, domain, lost);
                    lost_attached = lost_now;
                    let decoded = Instant::now();
                    ev.oom.charge = symbols.charge(&raw, user_stack);
                    history_of(&mut ev, &history);
                    attributor.enrich(&mut ev);
                    let enriched = Instant::now();
                    let mut details = explain(&ev, hierarchies.as_ref(), budget, &stats);
                    for c in details.iter_mut().flat_map(|x| x.candidates.iter_mut()) {
                        c.container = c.cgroup.as_deref().and_then(|p| attributor.for_path(p, &node)).and_then(|k| k.container);
                    }
                    crate::explain::apply(&mut ev, details);
                    ev.fill_resource();
                    let explained = Instant::now();
                    time_spent(&ev, &stats, [read, taken, decoded, enriched, explained]);
                    ready.extend(incidents.push(ev, explained));
                }
                Some((Record::InvocationEnd(end), _)) => ready.extend(incidents.invocation_end(end.seq)),
                Some((Record::Pressure(raw), _)) => {
                    if let Some(mut p) = crate::pressure::decode(&raw, &node, decoder.page_size()) {
                        p.k8s = attributor.for_path(&p.cgroup, &node);
                        sink.pressure(&p);
                    }
                }
                None => break 'run, // the reader emptied the ring after a stop
            },
            _ = sleep_until(hold) => ready.extend(incidents.due(Instant::now())),
            _ = sleep_until(exit_by) => break 'run,
            _ = sigint.recv(), if exit_by.is_none() => exit_by = Some(stop(&stop_tx)),
            _ = sigterm.recv(), if exit_by.is_none() => exit_by = Some(stop(&stop_tx)),
        }
        for ev in ready {
            stats.emitted.fetch_add(1, Relaxed);
            if !sink.kill(&ev) {
                stopped = true;
                break 'run;
            }
        }
    }
    if !stopped {
        for ev in incidents.flush() {
            stats.emitted.fetch_add(1, Relaxed);
            if !sink.kill(&ev) {
                break;
            }
        }
    }
    let _ = stop_tx.send(true);
    // Kill records that never reached a sink (the deadline passed): still queued, or not
    // taken from the reader any more.
    rx.close();
    let mut left = 0;
    while let Ok(rec) = rx.try_recv() {
        left += u64::from(matches!(rec, (Record::Victim(_), _)));
    }
    left += tokio::time::timeout(FINISH, reader)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    if left > 0 && !stopped {
        stats.exit_lost.fetch_add(left, Relaxed);
        tracing::warn!("{left} kills still queued at the exit deadline were not delivered");
    }
    drop(sampler); // detached: it sees `stop_sampler` within a second
    Ok(Tail { exporter, stop_sampler, counters, history })
}

/// Records where a kill's time went, from the instants the ring reader read it, the stages
/// took it from the queue, decoded, enriched and explained it; logged at debug level (`-vv`).
fn time_spent(ev: &OomKill, stats: &Stats, [read, taken, decoded, enriched, explained]: [Instant; 5]) {
    // The kernel's clock: unknown when the kill time is (not a wrong duration).
    let ring = ev.killed_at().and_then(|t| t.elapsed().ok()).map(|d| d.saturating_sub(read.elapsed()));
    if let Some(r) = ring {
        stats.took("ring", r);
    }
    let [queue, victim, enrich, explain] = [taken - read, decoded - taken, enriched - decoded, explained - enriched];
    stats.took("queue", queue);
    stats.took("victim", victim);
    stats.took("enrich", enrich);
    stats.took("explain", explain);
    tracing::debug!(
        "victim pid {:?}: read {ring:?} after the kill, queued {queue:?}; victim and decode {victim:?}, enrichment {enrich:?}, explanation {explain:?}",
        ev.victim.pid,
    );
}

/// Asks the reader to empty the ring and stop; returns when the stages must be done.
fn stop(stop: &watch::Sender<bool>) -> Instant {
    let _ = stop.send(true);
    Instant::now() + EXIT_DEADLINE
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
