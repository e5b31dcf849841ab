//! Prometheus / OpenMetrics metrics of the daemon.
//!
//! Label cardinality is bounded: at most [`MAX_WORKLOAD_SERIES`] distinct
//! (namespace, pod, container) label sets are kept per family; kills beyond that are counted
//! under `namespace="_other_"` (and the overflow itself is counted), so a node that churns
//! through thousands of pods cannot grow the scrape without bound.
use crate::event::OomKill;
use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use prometheus_client::registry::Registry;
use std::collections::HashSet;
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
    lost: Counter,
    unresolved: Counter,
    events_dropped: Counter,
    overflow: Counter,
    last_kill: Gauge<f64, AtomicU64>,
    victim_rss: Family<WorkloadLabels, Gauge>,
    oom_limit: Family<WorkloadLabels, Gauge>,
    build: Family<BuildLabels, Gauge>,
    pressure: Family<PressureLabels, Counter>,
    seen: Mutex<HashSet<WorkloadLabels>>,
    lost_so_far: Mutex<u64>,
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
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
        registry.register("oom_kills", "OOM kills seen, by victim workload and constraint", kills.clone());
        let lost = Counter::default();
        registry.register("events_lost", "OOM kill events dropped because the ring buffer was full", lost.clone());
        let unresolved = Counter::default();
        registry.register(
            "k8s_unresolved",
            "Kills in a pod the pod index did not know (reported with the cgroup path's pod UID only)",
            unresolved.clone(),
        );
        let events_dropped = Counter::default();
        registry.register(
            "k8s_events_dropped",
            "Kubernetes Events not published (API server unreachable after retries, or queue full)",
            events_dropped.clone(),
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
        let build = Family::<BuildLabels, Gauge>::default();
        registry.register("build_info", "oomtrace version, kernel and attach strategy (1 once attached)", build.clone());
        Self {
            registry,
            kills,
            lost,
            unresolved,
            events_dropped,
            overflow,
            last_kill,
            victim_rss,
            oom_limit,
            build,
            pressure,
            seen: Mutex::new(HashSet::new()),
            lost_so_far: Mutex::new(0),
        }
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

    fn workload_of(&self, k: Option<&crate::k8s::attribution::K8s>) -> WorkloadLabels {
        let get = |f: fn(&crate::k8s::attribution::K8s) -> Option<&String>| {
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
        WorkloadLabels { namespace: OTHER.into(), pod: OTHER.into(), container: OTHER.into() }
    }

    pub fn record(&self, ev: &OomKill) {
        let w = self.workload(ev);
        self.kills
            .get_or_create(&KillLabels {
                namespace: w.namespace.clone(),
                pod: w.pod.clone(),
                container: w.container.clone(),
                constraint: ev.oom.constraint.clone().unwrap_or_else(|| "unknown".into()),
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
        if let (Some(a), Some(f), Some(s)) = (v.rss_anon_bytes, v.rss_file_bytes, v.rss_shmem_bytes) {
            self.victim_rss.get_or_create(&w).set((a + f + s) as i64);
        }
        if let Some(l) = ev.oom.limit_bytes {
            self.oom_limit.get_or_create(&w).set(l as i64);
        }
    }

    pub fn record_pressure(&self, p: &crate::pressure::MemoryPressure) {
        let w = self.workload_of(p.k8s.as_ref());
        self.pressure
            .get_or_create(&PressureLabels {
                namespace: w.namespace,
                pod: w.pod,
                container: w.container,
                reason: p.reason.clone(),
            })
            .inc();
    }

    /// The kernel's running count of dropped events.
    pub fn set_lost(&self, total: u64) {
        let mut prev = self.lost_so_far.lock().expect("metrics lock");
        if total > *prev {
            self.lost.inc_by(total - *prev);
            *prev = total;
        }
    }

    pub fn event_dropped(&self) {
        self.events_dropped.inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}
