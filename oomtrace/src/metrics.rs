//! Prometheus / OpenMetrics metrics of the daemon.
//!
//! Label cardinality is bounded: at most [`MAX_WORKLOAD_SERIES`] distinct
//! (namespace, pod, container) label sets are kept per family; kills beyond that are counted
//! under `namespace="_other_"` (and the overflow itself is counted), so a node that churns
//! through thousands of pods cannot grow the scrape without bound.
use crate::model::{Constraint, OomKill};
use crate::pipeline::{StageLabels, StageSeconds};
use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use prometheus_client::registry::Registry;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

pub const MAX_WORKLOAD_SERIES: usize = 500;
const OTHER: &str = "_other_";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KillLabels {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub constraint: String,
    /// The pod's controller (`Deployment`/`api`), for alerts by workload rather than pod; a
    /// function of the pod, so it adds no series.
    pub owner_kind: String,
    pub owner_name: String,
    /// `true` when the victim was the container's PID 1 (the container restarts), `false` for
    /// any other process (kubelet sees nothing), empty outside containers: at most three per
    /// workload.
    pub container_init: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkloadLabels {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PressureLabels {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// `max` or `high`.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    kernel: String,
    strategy: String,
}

pub struct Metrics {
    registry: Registry,
    kills: Family<KillLabels, Counter>,
    lost: Family<StageLabels, Counter>,
    warnings_lost: Family<StageLabels, Counter>,
    invocation_ends_lost: Counter,
    seen_by_kernel: Counter,
    emitted: Counter,
    explain_overruns: Counter,
    malformed: Counter,
    unresolved: Counter,
    overflow: Counter,
    last_kill: Gauge<f64, AtomicU64>,
    victim_rss: Family<WorkloadLabels, Gauge>,
    oom_limit: Family<WorkloadLabels, Gauge>,
    build: Family<BuildLabels, Gauge>,
    pressure: Family<PressureLabels, Counter>,
    history_cgroups: Gauge,
    history_untracked: Gauge,
    seen: Mutex<HashSet<WorkloadLabels>>,
    /// The running totals already added to each counter fed from totals.
    totals: Mutex<HashMap<&'static str, u64>>,
}

/// The running totals the pipeline and the kernel keep, exported as counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    pub snapshot: crate::pipeline::Snapshot,
    /// Kill lines and warning lines whose write to stdout failed.
    pub output_lost_kills: u64,
    pub output_lost_warnings: u64,
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A field of the kill's pod owner; `_other_` when the workload was folded past the bound.
fn owner(w: &WorkloadLabels, ev: &OomKill, field: fn(&crate::model::OwnerRef) -> &String) -> String {
    if w.namespace == OTHER {
        return OTHER.into();
    }
    ev.k8s.as_ref().and_then(|k| k.owner.as_ref()).map(|o| field(o).clone()).unwrap_or_default()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("oomtrace");
        let kills = Family::<KillLabels, Counter>::default();
        registry.register(
            "oom_kills",
            "OOM kills seen, by victim workload and constraint",
            kills.clone(),
        );
        let lost = Family::<StageLabels, Counter>::default();
        registry.register(
            "events_lost",
            "OOM kill events lost, by the stage that lost them",
            lost.clone(),
        );
        for stage in ["kernel", "queue", "output", "k8s_event"] {
            lost.get_or_create(&StageLabels { stage }).inc_by(0);
        }
        let warnings_lost = Family::<StageLabels, Counter>::default();
        registry.register(
            "warnings_lost",
            "Early warnings lost, by the stage that lost them",
            warnings_lost.clone(),
        );
        let invocation_ends_lost = Counter::default();
        registry.register(
            "invocation_ends_lost",
            "End-of-OOM-invocation records lost (the incident then closes by its timeout; no kill is lost)",
            invocation_ends_lost.clone(),
        );
        let seen_by_kernel = Counter::default();
        registry.register(
            "kernel_victims_seen",
            "OOM victims the kernel programs saw",
            seen_by_kernel.clone(),
        );
        let emitted = Counter::default();
        registry.register(
            "events_emitted",
            "OOM kill events handed to the outputs",
            emitted.clone(),
        );
        let explain_overruns = Counter::default();
        registry.register(
            "explain_overruns",
            "Kills whose explanation (cgroup and task reads) was cut short by its time or size budget",
            explain_overruns.clone(),
        );
        let malformed = Counter::default();
        registry.register(
            "malformed_records",
            "Ring buffer records of unknown kind or too short",
            malformed.clone(),
        );
        let unresolved = Counter::default();
        registry.register(
            "k8s_unresolved",
            "Kills in a pod the pod index did not know (reported with the cgroup path's pod UID only)",
            unresolved.clone(),
        );
        let overflow = Counter::default();
        registry.register(
            "label_overflow",
            "Kills counted under namespace=\"_other_\" because the label set limit was reached",
            overflow.clone(),
        );
        let last_kill = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "last_oom_kill_timestamp_seconds",
            "Unix time of the last OOM kill",
            last_kill.clone(),
        );
        let victim_rss = Family::<WorkloadLabels, Gauge>::default();
        registry.register(
            "last_victim_rss_bytes",
            "RSS (anon + file + shmem) of the last victim of this workload",
            victim_rss.clone(),
        );
        let oom_limit = Family::<WorkloadLabels, Gauge>::default();
        registry.register(
            "last_oom_limit_bytes",
            "Limit of the cgroup whose limit was hit at this workload's last kill",
            oom_limit.clone(),
        );
        let pressure = Family::<PressureLabels, Counter>::default();
        registry.register(
            "memory_pressure_events",
            "Early warnings: a memory cgroup reclaiming at memory.max or above memory.high (with --warnings)",
            pressure.clone(),
        );
        let history_cgroups = Gauge::default();
        registry.register(
            "history_cgroups",
            "Limited memory cgroups whose usage history is sampled",
            history_cgroups.clone(),
        );
        let history_untracked = Gauge::default();
        registry.register(
            "history_cgroups_untracked",
            "Limited memory cgroups left unsampled by the history's cap (their kills get no trend)",
            history_untracked.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        registry.register(
            "build_info",
            "oomtrace version, kernel and attach strategy (1 once attached)",
            build.clone(),
        );
        Self {
            registry,
            kills,
            lost,
            warnings_lost,
            invocation_ends_lost,
            seen_by_kernel,
            emitted,
            explain_overruns,
            malformed,
            unresolved,
            overflow,
            last_kill,
            victim_rss,
            oom_limit,
            build,
            pressure,
            history_cgroups,
            history_untracked,
            seen: Mutex::new(HashSet::new()),
            totals: Mutex::new(HashMap::new()),
        }
    }

    /// Serves the stages' time per kill (kept by the pipeline's `Stats`, which the stages
    /// update without going through the sinks).
    pub fn with_stage_seconds(mut self, stages: StageSeconds) -> Self {
        self.registry.register(
            "kill_stage_duration_seconds",
            "Time an OOM kill spent in each stage before its outputs (ring: from the kill until the ring reader read it; queue: until the stages took it)",
            stages,
        );
        self
    }

    /// Records the hooks in use once the programs are attached.
    pub fn attached(&self, strategy: &str) {
        self.build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").into(),
                kernel: kernel_release(),
                strategy: strategy.into(),
            })
            .set(1);
    }

    /// The workload labels of a kill, folded into `_other_` past the cardinality bound.
    fn workload(&self, ev: &OomKill) -> WorkloadLabels {
        self.workload_of(ev.k8s.as_ref())
    }

    fn workload_of(&self, k: Option<&crate::model::K8s>) -> WorkloadLabels {
        let get = |f: fn(&crate::model::K8s) -> Option<&String>| {
            k.and_then(f).cloned().unwrap_or_default()
        };
        let labels = WorkloadLabels {
            namespace: get(|k| k.namespace.as_ref()),
            pod: get(|k| k.pod.as_ref()),
            container: get(|k| k.container.as_ref()),
        };
        let mut seen = self.seen.lock().expect("metrics lock");
        if seen.contains(&labels) || seen.len() < MAX_WORKLOAD_SERIES {
            seen.insert(labels.clone());
            return labels;
        }
        self.overflow.inc();
        WorkloadLabels {
            namespace: OTHER.into(),
            pod: OTHER.into(),
            container: OTHER.into(),
        }
    }

    pub fn record(&self, ev: &OomKill) {
        let w = self.workload(ev);
        self.kills
            .get_or_create(&KillLabels {
                namespace: w.namespace.clone(),
                pod: w.pod.clone(),
                container: w.container.clone(),
                constraint: ev.oom.constraint.unwrap_or(Constraint::Unknown).as_str().into(),
                owner_kind: owner(&w, ev, |o| &o.kind),
                owner_name: owner(&w, ev, |o| &o.name),
                container_init: ev.victim.container_init.map(|i| i.to_string()).unwrap_or_default(),
            })
            .inc();
        if ev.k8s.as_ref().is_some_and(|k| !k.resolved) {
            self.unresolved.inc();
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        self.last_kill.set(now);
        let v = &ev.victim;
        if let Some(rss) = v.rss_bytes()
        {
            self.victim_rss.get_or_create(&w).set(i64::try_from(rss).unwrap_or(i64::MAX));
        }
        if let Some(l) = ev.oom.limit_bytes {
            self.oom_limit.get_or_create(&w).set(i64::try_from(l).unwrap_or(i64::MAX));
        }
    }

    pub fn record_pressure(&self, p: &crate::pressure::MemoryPressure) {
        let w = self.workload_of(p.k8s.as_ref());
        self.pressure
            .get_or_create(&PressureLabels {
                namespace: w.namespace,
                pod: w.pod,
                container: w.container,
                reason: p.reason.as_str().into(),
            })
            .inc();
    }

    /// Brings every counter fed from a running total up to `t`.
    pub fn set_totals(&self, t: &Totals) {
        let s = &t.snapshot;
        let lost = |stage| self.lost.get_or_create(&StageLabels { stage }).clone();
        let warnings = |stage| {
            self.warnings_lost
                .get_or_create(&StageLabels { stage })
                .clone()
        };
        let fed: [(&'static str, Counter, u64); 11] = [
            ("lost_kernel", lost("kernel"), s.kernel.lost),
            (
                "lost_queue",
                lost("queue"),
                s.queue_lost_kills.saturating_add(s.exit_lost),
            ),
            ("lost_output", lost("output"), t.output_lost_kills),
            (
                "warnings_kernel",
                warnings("kernel"),
                s.kernel.pressure_lost,
            ),
            ("warnings_queue", warnings("queue"), s.queue_lost_warnings),
            (
                "warnings_output",
                warnings("output"),
                t.output_lost_warnings,
            ),
            (
                "invocation_ends",
                self.invocation_ends_lost.clone(),
                s.queue_lost_invocation_ends,
            ),
            ("seen", self.seen_by_kernel.clone(), s.kernel.seen),
            ("emitted", self.emitted.clone(), s.emitted),
            (
                "overruns",
                self.explain_overruns.clone(),
                s.explain_overruns,
            ),
            ("malformed", self.malformed.clone(), s.malformed),
        ];
        self.history_cgroups.set(i64::try_from(s.history_cgroups).unwrap_or(i64::MAX));
        self.history_untracked.set(i64::try_from(s.history_untracked).unwrap_or(i64::MAX));
        let mut done = self.totals.lock().expect("metrics lock");
        for (key, counter, total) in fed {
            let prev = done.entry(key).or_insert(0);
            if total > *prev {
                counter.inc_by(total - *prev);
                *prev = total;
            }
        }
    }

    /// `n` Kubernetes Events not published.
    pub fn event_dropped(&self, n: u64) {
        self.lost
            .get_or_create(&StageLabels { stage: "k8s_event" })
            .inc_by(n);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}
