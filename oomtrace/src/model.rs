//! The plain types of what oomtrace reports: the OOM kill event and its sections. No stage
//! lives here and this module imports none, so every stage can depend on it.
//!
//! Field names are stable (versioned by `schema`); a value the kernel did not give us is `null`,
//! never 0, and each section says how its values were obtained (`source`).
use serde::{Deserialize, Serialize};

/// A field with a fixed set of values: serde spells each as the JSON does, and `as_str` gives
/// printers and metric labels the same spelling.
macro_rules! names {
    ($(#[$m:meta])* pub enum $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal,)+ }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $s)] $v,)+
        }

        impl $name {
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$v => $s,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

names! {
    /// How the victim's fields were read.
    pub enum VictimSource {
        /// From the victim's `task_struct` (tp_btf).
        TaskStruct = "tp_btf:task_struct",
        /// From the classic tracepoint's record (kB units).
        TracepointRecord = "tracepoint:record",
        /// The classic tracepoint gave only the pid.
        TracepointPid = "tracepoint:pid",
        Unknown = "unknown",
    }
}

/// What was not obtained is unknown.
macro_rules! unknown_by_default {
    ($($name:ident),+) => {
        $(impl Default for $name {
            fn default() -> Self {
                $name::Unknown
            }
        })+
    };
}
unknown_by_default!(VictimSource, OomSource, CgroupSource);

names! {
    /// The kernel's `enum oom_constraint`: which memory ran out.
    pub enum Constraint {
        Global = "global",
        Cpuset = "cpuset",
        Mempolicy = "mempolicy",
        Memcg = "memcg",
        /// A value this daemon does not know (a newer kernel).
        Unknown = "unknown",
    }
}

impl Constraint {
    /// From `oom_control.constraint`.
    pub fn from_kernel(c: u32) -> Self {
        match c {
            0 => Constraint::Global,
            1 => Constraint::Cpuset,
            2 => Constraint::Mempolicy,
            3 => Constraint::Memcg,
            _ => Constraint::Unknown,
        }
    }
}

names! {
    /// How the OOM domain (`oom.cgroup`, its limit and usage) was obtained.
    pub enum OomSource {
        /// `struct oom_control` from a hook on `oom_kill_process` (which hook unknown).
        OomControl = "kernel:oom_control",
        OomControlFentry = "kernel:oom_control(fentry)",
        OomControlKprobe = "kernel:oom_control(kprobe)",
        /// The victim's memcg ancestry, read in the kernel at the kill.
        Memcg = "kernel:memcg",
        /// cgroupfs, read right after the kill.
        Cgroupfs = "cgroupfs",
        Unknown = "unknown",
    }
}

names! {
    /// How the victim's cgroups were obtained.
    pub enum CgroupSource {
        /// Read from the task in the kernel at the kill.
        Kernel = "kernel",
        /// `/proc/<pid>/cgroup` after the kill.
        Procfs = "procfs",
        Unknown = "unknown",
    }
}

names! {
    /// How the explanation's details were read.
    pub enum DetailsSource {
        /// cgroupfs and procfs, right after the kill.
        CgroupfsProcfs = "cgroupfs+procfs",
    }
}

names! {
    /// Which cgroup of the kubelet hierarchy a path names. An OOM kill's cgroup is the one
    /// whose limit was hit, so the level says *whose* limit it was (node allocatable, QoS,
    /// pod, container).
    pub enum Level {
        /// The kubepods root itself (node-allocatable limit). No pod.
        Kubepods = "kubepods",
        /// A QoS-class cgroup (`kubepods-burstable.slice`, `/kubepods/besteffort`). No pod.
        Qos = "qos",
        /// The pod-level cgroup (pod limit), no container component.
        Pod = "pod",
        /// CRI-O's `conmon` monitor for a container, a sibling of the container cgroup inside
        /// the pod: charged to the pod, but it is *not* the container.
        Conmon = "conmon",
        /// A container's own cgroup.
        Container = "container",
        /// A cgroup nested below a container's cgroup (created by the container's runtime or
        /// workload); it still belongs to that container.
        ContainerChild = "container_child",
    }
}

names! {
    /// Which limit a reclaiming cgroup is at.
    pub enum PressureLimit {
        /// At `memory.max`: the next failed charge is an OOM.
        Max = "max",
        /// Above `memory.high`: throttled.
        High = "high",
    }
}

pub const SCHEMA: &str = "oomtrace.oom_kill/v1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OomKill {
    pub schema: String,
    /// When the kernel marked the victim (RFC 3339, nanoseconds, UTC).
    pub time: String,
    pub node: String,
    pub victim: Victim,
    pub trigger: Trigger,
    pub oom: Oom,
    pub cgroup: VictimCgroup,
    /// The OOM this victim belongs to (several victims for a group kill).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<Incident>,
    /// One line saying why (see `explain::verdict` for the rules).
    pub verdict: Option<String>,
    /// Pod and container of the victim, when it lived under kubepods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s: Option<K8s>,
    /// OpenTelemetry semantic-convention keys (`k8s.pod.name`, `process.pid`, …), so log
    /// pipelines map the event without rules.
    #[serde(default)]
    pub resource: std::collections::BTreeMap<String, serde_json::Value>,
    /// Events dropped (ring buffer full) since the previous event was printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_events: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Victim {
    pub pid: Option<u32>,
    pub tgid: Option<u32>,
    pub comm: Option<String>,
    pub uid: Option<u32>,
    /// pid inside the victim's own pid namespace.
    pub ns_pid: Option<u32>,
    pub oom_score_adj: Option<i32>,
    pub total_vm_bytes: Option<u64>,
    pub rss_anon_bytes: Option<u64>,
    pub rss_file_bytes: Option<u64>,
    pub rss_shmem_bytes: Option<u64>,
    pub swap_bytes: Option<u64>,
    pub pgtables_bytes: Option<u64>,
    /// For a victim inside a Kubernetes container: whether it was the container's main
    /// process (PID 1 of its pid namespace: the container restarts) or not (the pod keeps
    /// running and only this event tells).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_init: Option<bool>,
    /// The victim's language runtime and its memory ceiling; null when not recognised.
    pub runtime: Option<Runtime>,
    /// The victim's command line was read from procfs at the kill, so what it said (a runtime
    /// or none) stands; the pod spec is asked only when it was not.
    #[serde(skip)]
    pub cmdline_read: bool,
    pub source: VictimSource,
}

names! {
    /// A language runtime whose memory ceiling decides many container OOM kills.
    pub enum RuntimeName {
        Jvm = "jvm",
        Node = "node",
        Go = "go",
        Python = "python",
    }
}

names! {
    /// Where the runtime's settings were read.
    pub enum RuntimeSource {
        /// `/proc/<pid>/cmdline` and `environ` of the victim, read as the kill was seen.
        Procfs = "procfs",
        /// The container's command, args and env in the pod spec (the pod index).
        PodSpec = "pod_spec",
    }
}

/// The victim's runtime and the ceiling its settings give (see `runtime`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Runtime {
    pub name: RuntimeName,
    /// The JVM's max heap, V8's max old space or GOMEMLIMIT, in bytes; null for Python (no
    /// ceiling), for Go without GOMEMLIMIT, and when the settings cannot be read.
    pub heap_max_bytes: Option<u64>,
    /// What gives the ceiling, as written (`-XX:MaxRAMPercentage=90`, with the variable it
    /// came from), or `default (…)` / `none (…)`.
    pub setting: String,
    pub source: RuntimeSource,
    /// The same, for the verdict.
    #[serde(skip)]
    pub ceiling: Ceiling,
}

/// Whether the runtime has a ceiling, and what sets it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Ceiling {
    /// `heap_max_bytes` is the ceiling; `knob` is what to change.
    Set(Knob),
    /// The runtime runs without one (Python; Go without GOMEMLIMIT).
    None,
    /// Set where it cannot be read (an options file, a `valueFrom`, the JVM's view of the
    /// node's memory), or not modelled (V8's own default).
    #[default]
    Unknown,
}

/// A setting a recommendation can name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Knob {
    /// As `oom.recommendation.setting` names it: `MaxRAMPercentage`, `Xmx`, `GOMEMLIMIT`, …
    pub name: &'static str,
    /// As it is written on a command line or in the environment: `-XX:MaxRAMPercentage`.
    pub flag: &'static str,
    /// Its value now, as written (`90`, `512m`).
    pub value: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Trigger {
    pub pid: Option<u32>,
    pub tgid: Option<u32>,
    pub comm: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Oom {
    pub constraint: Option<Constraint>,
    /// Path of the cgroup whose limit was hit (`/` for a global OOM).
    pub cgroup: Option<String>,
    pub cgroup_id: Option<u64>,
    pub limit_bytes: Option<u64>,
    pub usage_bytes: Option<u64>,
    pub swap_limit_bytes: Option<u64>,
    /// Allocation order and GFP mask of the failed allocation (oom_control hook only).
    pub order: Option<i32>,
    pub gfp_mask: Option<String>,
    /// Size of the OOM domain (RAM + swap of the node or the cgroup) the kernel scored
    /// victims against, in bytes. This is not the victim's memory.
    pub domain_bytes: Option<u64>,
    /// Sequence number of the OOM invocation (victims of one OOM share it).
    pub invocation: Option<u64>,
    /// `memory.oom.group` is set on the victim's cgroup or an ancestor within the OOM domain:
    /// the kernel kills the whole group.
    pub group_kill: Option<bool>,
    /// Breakdown, top tasks and pressure of the OOM cgroup (see `explain`).
    #[serde(flatten)]
    pub details: Explanation,
    /// The OOM cgroup's usage before the kill, `[seconds_before_kill, usage_bytes]` oldest
    /// first (see `history::points`); `null` when it was not followed.
    pub history: Option<Vec<(f64, u64)>>,
    /// How that usage moved (see `trend`); `null` when the cgroup was not followed.
    pub trend: Option<Trend>,
    /// What to change, when the evidence names it (see `recommend`).
    pub recommendation: Option<Recommendation>,
    /// The allocation whose charge invoked the OOM killer (see `charge`); null when the
    /// stacks were not captured.
    #[serde(default)]
    pub charge: Option<Charge>,
    pub source: OomSource,
}

names! {
    /// What the charge that invoked the OOM killer was for, from its kernel stack.
    pub enum ChargeKind {
        /// A page fault in anonymous memory (heap, stacks, private mappings).
        AnonFault = "anon_fault",
        /// A file page read or written through the page cache.
        PageCache = "page_cache",
        /// A tmpfs / shared-memory page (emptyDir `medium: Memory`, /dev/shm, memfd).
        Shmem = "shmem",
        /// Kernel objects charged to the cgroup (slab).
        Slab = "slab",
        /// Socket buffers.
        Socket = "socket",
        /// Pipe buffers.
        Pipe = "pipe",
        /// A transparent huge page (2 MiB charged at once).
        Thp = "thp",
        Other = "other",
    }
}

/// The allocation whose charge invoked the OOM killer: the charging task's stacks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Charge {
    /// Null when the kernel stack could not be symbolized (`stack_note` says why).
    pub kind: Option<ChargeKind>,
    /// Whether the page-cache charge was a write (`false`: a read or fault); null otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write: Option<bool>,
    /// Kernel functions from the allocation outwards, below the OOM killer's own frames.
    pub stack: Vec<String>,
    /// The charging task's user stack, innermost first (`[unknown]` where a frame has no
    /// symbol); null when it could not be symbolized (`user_stack_note` says why).
    pub user_stack: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_note: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_stack_note: Option<String>,
}

/// How the OOM cgroup's usage moved before the kill.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Trend {
    /// Grew along a line for minutes.
    Leak { growth_bytes_per_min: u64, since_s: u64 },
    /// From under half the limit to the limit within seconds.
    Spike { from_bytes: u64, seconds: f64 },
    /// Within a few percent of the limit for `seconds` before the kill.
    AtLimit { seconds: u64 },
    Steady,
    /// Too little history.
    Unknown,
}

impl Trend {
    pub const fn kind(&self) -> &'static str {
        match self {
            Trend::Leak { .. } => "leak",
            Trend::Spike { .. } => "spike",
            Trend::AtLimit { .. } => "at_limit",
            Trend::Steady => "steady",
            Trend::Unknown => "unknown",
        }
    }
}

/// What to change so the kill does not come back, from the evidence of this one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Recommendation {
    pub action: String,
    /// The finding the action answers.
    pub reason: String,
    /// The setting to change (`MaxRAMPercentage`, `Xmx`, `max-old-space-size`, `GOMEMLIMIT`).
    pub setting: Option<String>,
    /// A memory limit the container needs at least, when the evidence gives one (the
    /// configured ceiling, when it is not below the limit).
    pub limit_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct CgroupRef {
    pub id: Option<u64>,
    pub path: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct VictimCgroup {
    /// The victim's cgroup v2 (unified hierarchy) cgroup.
    pub id: Option<u64>,
    pub path: Option<String>,
    /// The victim's memory cgroup (the v1 memory hierarchy on hybrid hosts; on pure
    /// cgroup v2 the nearest cgroup with the memory controller).
    pub memory: CgroupRef,
    pub source: CgroupSource,
}

/// A task's RSS: anon + file + shmem (saturating: the parts come from the kernel).
pub fn rss_total(anon: u64, file: u64, shmem: u64) -> u64 {
    anon.saturating_add(file).saturating_add(shmem)
}

impl Victim {
    /// The victim's RSS at the kill, when all three parts are known.
    pub fn rss_bytes(&self) -> Option<u64> {
        Some(rss_total(
            self.rss_anon_bytes?,
            self.rss_file_bytes?,
            self.rss_shmem_bytes?,
        ))
    }
}

impl OomKill {
    /// The kernel's timestamp of the kill as a `SystemTime`.
    pub fn killed_at(&self) -> Option<std::time::SystemTime> {
        let t = chrono::DateTime::parse_from_rfc3339(&self.time).ok()?;
        let ns = t.timestamp_nanos_opt()?;
        Some(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(u64::try_from(ns).ok()?))
    }

    /// Whose limit the kill answered, as verdicts and notes name it: the victim's `pod`, its
    /// `container`, or a `cgroup` (above the pod, or outside Kubernetes).
    pub fn limit_scope(&self) -> &'static str {
        match self.k8s.as_ref().and_then(|k| k.oom_cgroup_level) {
            Some(Level::Pod) => "pod",
            Some(Level::Container | Level::ContainerChild) => "container",
            _ => "cgroup",
        }
    }

    /// Fills `resource` from the event (call after Kubernetes attribution).
    pub fn fill_resource(&mut self) {
        use serde_json::Value;
        let mut r = std::collections::BTreeMap::new();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                r.insert(k.to_string(), v);
            }
        };
        put("host.name", Some(self.node.clone().into()));
        put("process.pid", self.victim.pid.map(Into::into));
        put(
            "process.executable.name",
            self.victim.comm.clone().map(Into::into),
        );
        if let Some(k) = &self.k8s {
            put("k8s.node.name", k.node.clone().map(Into::into));
            put("k8s.namespace.name", k.namespace.clone().map(Into::into));
            put("k8s.pod.name", k.pod.clone().map(Into::into));
            put("k8s.pod.uid", k.pod_uid.clone().map(Into::into));
            put("k8s.container.name", k.container.clone().map(Into::into));
            put("container.id", k.container_id.clone().map(Into::into));
            put("container.runtime", k.runtime.clone().map(Into::into));
        }
        self.resource = r;
    }
}

/// What the explanation adds under `oom`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MemoryStat {
    pub anon_bytes: Option<u64>,
    pub file_bytes: Option<u64>,
    pub kernel_bytes: Option<u64>,
    pub slab_bytes: Option<u64>,
    pub sock_bytes: Option<u64>,
    pub shmem_bytes: Option<u64>,
    pub file_mapped_bytes: Option<u64>,
    pub file_dirty_bytes: Option<u64>,
    pub file_writeback_bytes: Option<u64>,
    pub swap_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Pressure {
    pub some_avg10: Option<f64>,
    pub full_avg10: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskRss {
    pub pid: u32,
    pub comm: String,
    pub rss_bytes: u64,
    pub rss_anon_bytes: u64,
    pub rss_file_bytes: u64,
    pub rss_shmem_bytes: u64,
}

/// A task of the OOM cgroup as the OOM killer weighs it (see `candidates`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Candidate {
    pub pid: u32,
    pub comm: String,
    /// RSS + swap + page tables: what `oom_badness()` counts.
    pub footprint_bytes: u64,
    pub rss_bytes: u64,
    pub swap_bytes: u64,
    pub pgtables_bytes: u64,
    pub oom_score_adj: Option<i32>,
    /// The kernel's points (pages, adj included); null when unkillable (adj -1000) or when
    /// the OOM domain's size is unknown.
    pub points: Option<i64>,
    /// Its memory cgroup, and the container that cgroup is.
    pub cgroup: Option<String>,
    pub container: Option<String>,
    pub victim: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Explanation {
    pub memory_stat: Option<MemoryStat>,
    pub swap_usage_bytes: Option<u64>,
    pub high_bytes: Option<u64>,
    pub pressure: Option<Pressure>,
    /// Largest tasks of the OOM cgroup; the victim with its RSS at the kill.
    pub tasks: Vec<TaskRss>,
    /// The OOM cgroup's tasks the OOM killer weighed, highest points first.
    pub candidates: Vec<Candidate>,
    /// Null when nothing was gathered.
    pub details_source: Option<DetailsSource>,
    /// How long after the kill the details were read.
    pub details_after_ms: Option<f64>,
    /// The budget ran out before every task was read: the lists are partial, so nothing is
    /// claimed of what was not read.
    #[serde(skip)]
    pub partial: bool,
}

/// The OOM incident a victim belongs to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Incident {
    pub id: String,
    /// Victims of this incident.
    pub victims: u32,
    /// This victim's position (1-based).
    pub index: u32,
}

/// The pod and container of the victim.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct K8s {
    /// The pod index knew the pod (live or recently deleted).
    pub resolved: bool,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub pod_uid: Option<String>,
    pub container: Option<String>,
    pub container_id: Option<String>,
    /// Which list of the pod spec names the container (for the Event's `fieldPath`).
    #[serde(skip)]
    pub container_kind: Option<ContainerKind>,
    /// Container runtime named by the cgroup (`containerd`, `cri-o`, `docker`).
    pub runtime: Option<String>,
    pub node: Option<String>,
    pub qos_class: Option<String>,
    pub owner: Option<OwnerRef>,
    /// The container's declared `resources.limits.memory` / `requests.memory`.
    pub limits_memory_bytes: Option<u64>,
    pub requests_memory_bytes: Option<u64>,
    /// Which kubelet cgroup the victim lived in.
    pub cgroup_level: Level,
    /// The kubelet level of the OOM cgroup, when it is this pod's (or one of its
    /// containers'): whether the pod's limit or a container's was hit.
    #[serde(skip)]
    pub oom_cgroup_level: Option<Level>,
    /// The pod had already been deleted from the API server (answered from a tombstone).
    pub pod_deleted: bool,
}

/// The kind of a container within its pod: the pod spec's list that names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum ContainerKind {
    Init,
    Regular,
    Ephemeral,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OwnerRef {
    pub kind: String,
    pub name: String,
}

/// Pod and container of a test kill, known by their cgroup `level` only.
#[cfg(test)]
pub(crate) fn test_k8s(level: Level) -> K8s {
    serde_json::from_value(serde_json::json!({
        "resolved": false, "cgroup_level": level, "pod_deleted": false
    }))
    .expect("valid test k8s")
}

/// A kill built from JSON over a minimal valid base, for unit tests.
#[cfg(test)]
pub(crate) fn test_kill(over: serde_json::Value) -> OomKill {
    let mut base = serde_json::json!({
        "schema": SCHEMA, "time": "2026-01-01T00:00:00.000000000Z", "node": "node-1",
        "victim": {"source": "unknown"}, "trigger": {},
        "oom": {"source": "unknown"}, "cgroup": {"memory": {}, "source": "unknown"}
    });
    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }
    merge(&mut base, over);
    serde_json::from_value(base).expect("valid test kill")
}
