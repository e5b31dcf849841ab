//! The OOM kill event: what userspace prints and forwards, decoded from the kernel's record.
//!
//! Field names are stable (versioned by `schema`); a value the kernel did not give us is `null`,
//! never 0, and each section says how its values were obtained (`source`).
use crate::cgroup_fs::{self, Hierarchies};
use crate::oom_domain::{Domain, DomainTracker};
use oomtrace_common::{
    ctx_source, kind, source, valid, CgroupLevel, InvocationEnd, MemcgLevel, OomEvent, PressureEvent,
    MAX_CGROUP_DEPTH,
};
use serde::{Deserialize, Serialize};

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
    pub incident: Option<crate::incident::Incident>,
    /// One line saying why (see `explain::verdict` for the rules).
    pub verdict: Option<String>,
    /// Pod and container of the victim, when it lived under kubepods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s: Option<crate::k8s::attribution::K8s>,
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
    /// `tp_btf:task_struct` (read from the victim's task) or `tracepoint:record`.
    pub source: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Trigger {
    pub pid: Option<u32>,
    pub tgid: Option<u32>,
    pub comm: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Oom {
    /// `memcg`, `global`, `cpuset` or `mempolicy`.
    pub constraint: Option<String>,
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
    pub details: crate::explain::Explanation,
    /// How the values were obtained: `kernel:oom_control` (fentry/kprobe on
    /// oom_kill_process), `kernel:memcg` (the victim's memcg ancestry read in the kernel at
    /// the kill), `cgroupfs` (read from cgroupfs right after the kill), or `unknown`.
    pub source: String,
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
    /// `kernel` (read from the task at the kill) or `procfs` (/proc/<pid>/cgroup after it).
    pub source: String,
}

/// Bytes of a fixed-size, possibly NUL-terminated kernel string.
pub fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// A ring buffer record, by its leading `kind`.
pub enum Record {
    Victim(Box<OomEvent>),
    InvocationEnd(InvocationEnd),
    Pressure(Box<PressureEvent>),
}

/// Reads `T` from the start of `b`; `None` if it is too short.
fn pod_from_bytes<T: Copy>(b: &[u8]) -> Option<T> {
    if b.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; the record types are plain old data valid for any bit pattern.
    Some(unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) })
}

/// Decodes a ring buffer record; `None` for an unknown kind or a short record.
pub fn record_from_bytes(b: &[u8]) -> Option<Record> {
    match u32::from_ne_bytes(b.get(..4)?.try_into().ok()?) {
        kind::VICTIM => pod_from_bytes(b).map(|e| Record::Victim(Box::new(e))),
        kind::INVOCATION_END => pod_from_bytes(b).map(Record::InvocationEnd),
        kind::PRESSURE => pod_from_bytes(b).map(|e| Record::Pressure(Box::new(e))),
        _ => None,
    }
}


/// Joins kernfs names from the root down to `levels[0]`. The root's own name is not part of
/// any path.
fn path_of<'a>(names: impl DoubleEndedIterator<Item = &'a [u8]>) -> String {
    let mut parts: Vec<String> = names.rev().skip(1).map(cstr).collect();
    parts.retain(|p| !p.is_empty());
    format!("/{}", parts.join("/"))
}

/// The memcg ancestry as the kernel captured it: `[0]` = the victim's memcg, or the
/// trigger's where only that was known (MEMCG_CHAIN_OF_TRIGGER).
pub fn memcg_levels(raw: &OomEvent) -> &[MemcgLevel] {
    if raw.valid & (valid::MEMCG_CHAIN | valid::MEMCG_CHAIN_OF_TRIGGER) == 0 {
        return &[];
    }
    &raw.memcg[..(raw.memcg_depth as usize).min(MAX_CGROUP_DEPTH)]
}

fn dfl_levels(raw: &OomEvent) -> &[CgroupLevel] {
    if raw.valid & valid::DFL_CHAIN == 0 {
        return &[];
    }
    &raw.dfl[..(raw.dfl_depth as usize).min(MAX_CGROUP_DEPTH)]
}

/// Path of `levels[i]` (its name and those of its ancestors).
pub fn memcg_path(levels: &[MemcgLevel], i: usize) -> String {
    path_of(levels[i..].iter().map(|l| &l.name[..]))
}

/// Turns kernel records into events: clock conversion, units, OOM domain.
pub struct Decoder {
    pub node: String,
    page_size: u64,
    hierarchies: Option<Hierarchies>,
    domain: DomainTracker,
}

impl Decoder {
    pub fn new(node: String, hierarchies: Option<Hierarchies>) -> Self {
        // SAFETY: sysconf has no preconditions.
        let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
        let domain = DomainTracker::new(hierarchies.clone());
        Self { node, page_size, hierarchies, domain }
    }

    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    pub fn decode(&mut self, raw: &OomEvent, lost_events: u64) -> OomKill {
        let v = raw.valid;
        let has = |bit| v & bit != 0;
        let page = self.page_size;
        // Pages from the task, kB from the classic tracepoint's record.
        let unit = if has(valid::FROM_TRACEPOINT_RECORD) { 1024 } else { page };
        let opt = |bit, val: u64| has(bit).then_some(val);

        let victim = Victim {
            pid: opt(valid::VICTIM_TASK, raw.victim_pid as u64).map(|p| p as u32),
            tgid: (has(valid::VICTIM_TASK) && raw.victim_tgid != 0).then_some(raw.victim_tgid),
            comm: has(valid::VICTIM_COMM).then(|| cstr(&raw.victim_comm)),
            uid: has(valid::VICTIM_UID).then_some(raw.victim_uid),
            ns_pid: has(valid::NS_PID).then_some(raw.victim_ns_pid),
            oom_score_adj: has(valid::OOM_SCORE_ADJ).then_some(raw.oom_score_adj),
            total_vm_bytes: opt(valid::TOTAL_VM, raw.total_vm.saturating_mul(unit)),
            rss_anon_bytes: opt(valid::RSS, raw.rss_anon.saturating_mul(unit)),
            rss_file_bytes: opt(valid::RSS, raw.rss_file.saturating_mul(unit)),
            rss_shmem_bytes: opt(valid::RSS, raw.rss_shmem.saturating_mul(unit)),
            swap_bytes: opt(valid::RSS_SWAP, raw.rss_swap.saturating_mul(page)),
            pgtables_bytes: opt(
                valid::PGTABLES,
                if has(valid::FROM_TRACEPOINT_RECORD) { raw.pgtables.saturating_mul(1024) } else { raw.pgtables },
            ),
            container_init: None,
            source: match raw.source {
                source::TP_BTF => "tp_btf:task_struct",
                source::TRACEPOINT if has(valid::FROM_TRACEPOINT_RECORD) => "tracepoint:record",
                source::TRACEPOINT => "tracepoint:pid",
                _ => "unknown",
            }
            .into(),
        };
        let trigger = Trigger {
            pid: Some(raw.trigger_pid),
            tgid: Some(raw.trigger_tgid),
            comm: Some(cstr(&raw.trigger_comm)),
        };

        let memcg = memcg_levels(raw);
        let victims_memcg = if has(valid::MEMCG_CHAIN) { memcg } else { &[] };
        let dfl = dfl_levels(raw);
        let mut cgroup = VictimCgroup {
            id: dfl.first().map(|l| l.id),
            path: (!dfl.is_empty()).then(|| path_of(dfl.iter().map(|l| &l.name[..]))),
            memory: CgroupRef {
                id: victims_memcg.first().map(|l| l.id),
                path: (!victims_memcg.is_empty()).then(|| memcg_path(victims_memcg, 0)),
            },
            source: "kernel".into(),
        };
        if dfl.is_empty() && victims_memcg.is_empty() {
            cgroup.source = "unknown".into();
            if let Some((v2, mem)) = victim.pid.and_then(crate::cgroup_fs::proc_cgroups) {
                if let Some(h) = &self.hierarchies {
                    cgroup.id = v2.as_deref().and_then(|p| h.unified_dir(p)).and_then(cgroup_fs::cgroup_id);
                    cgroup.memory.id =
                        mem.as_deref().and_then(|p| h.memory_dir(p)).and_then(cgroup_fs::cgroup_id);
                }
                cgroup.path = v2;
                cgroup.memory.path = mem;
                cgroup.source = "procfs".into();
            }
        }

        let ctx = has(valid::OOM_CONTEXT).then_some(&raw.ctx);
        let domain = self.domain.resolve(memcg, ctx, cgroup.memory.path.as_deref());
        let group_kill = group_kill(memcg, &domain);
        let mut oom = match domain {
            Domain::Context { constraint, cgroup: cg, cgroup_id, limit_pages, usage_pages, swap_limit_pages } => Oom {
                constraint: Some(constraint.into()),
                cgroup: cg,
                cgroup_id,
                limit_bytes: limit_pages.map(|p| p.saturating_mul(page)),
                usage_bytes: usage_pages.map(|p| p.saturating_mul(page)),
                swap_limit_bytes: swap_limit_pages.map(|p| p.saturating_mul(page)),
                order: ctx.map(|c| c.order),
                gfp_mask: ctx.map(|c| format!("{:#x}", c.gfp_mask)),
                domain_bytes: ctx.map(|c| c.totalpages.saturating_mul(page)),
                invocation: ctx.map(|c| c.seq),
                source: match ctx.map(|c| c.source) {
                    Some(ctx_source::FENTRY) => "kernel:oom_control(fentry)",
                    Some(ctx_source::KPROBE) => "kernel:oom_control(kprobe)",
                    _ => "kernel:oom_control",
                }
                .into(),
                ..Default::default()
            },
            Domain::Memcg { index } => {
                let l = &memcg[index];
                let finite = |p: u64| crate::oom_domain::finite(p).map(|p| p.saturating_mul(page));
                Oom {
                    constraint: Some("memcg".into()),
                    cgroup: Some(memcg_path(memcg, index)),
                    cgroup_id: Some(l.id),
                    limit_bytes: finite(l.max_pages),
                    usage_bytes: finite(l.usage_pages),
                    swap_limit_bytes: finite(l.swap_max_pages),
                    source: "kernel:memcg".into(),
                    ..Default::default()
                }
            }
            Domain::Cgroupfs { path, mem } => Oom {
                constraint: Some("memcg".into()),
                cgroup: Some(path),
                limit_bytes: mem.limit_bytes,
                usage_bytes: mem.usage_bytes,
                swap_limit_bytes: mem.swap_limit_bytes,
                source: "cgroupfs".into(),
                ..Default::default()
            },
            Domain::Global { source } => Oom {
                constraint: Some("global".into()),
                cgroup: Some("/".into()),
                source: source.into(),
                ..Default::default()
            },
            Domain::Unknown => Oom { source: "unknown".into(), ..Default::default() },
        };
        oom.group_kill = group_kill;

        OomKill {
            schema: SCHEMA.into(),
            time: boot_ns_to_rfc3339(raw.boot_ns),
            node: self.node.clone(),
            victim,
            trigger,
            oom,
            cgroup,
            incident: None,
            verdict: None,
            k8s: None,
            resource: Default::default(),
            lost_events: (lost_events > 0).then_some(lost_events),
        }
    }
}

impl OomKill {
    /// The kernel's timestamp of the kill as a `SystemTime`.
    pub fn killed_at(&self) -> Option<std::time::SystemTime> {
        let t = chrono::DateTime::parse_from_rfc3339(&self.time).ok()?;
        let ns = t.timestamp_nanos_opt()?;
        Some(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(u64::try_from(ns).ok()?))
    }

    /// Adds the OOM cgroup's breakdown and the verdict.
    pub fn explain(&mut self, h: Option<&Hierarchies>) {
        let killed_at = self.killed_at().unwrap_or_else(std::time::SystemTime::now);
        if let Some(x) = h.and_then(|h| crate::explain::gather(self, h, killed_at)) {
            self.oom.details = x;
        }
        self.verdict = Some(crate::explain::verdict(self, Some(&self.oom.details)));
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
        put("process.executable.name", self.victim.comm.clone().map(Into::into));
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

/// Whether the kernel kills the whole group: `memory.oom.group` on the victim's memcg or an
/// ancestor inside the OOM domain (below the root for a node-wide OOM).
fn group_kill(levels: &[MemcgLevel], domain: &Domain) -> Option<bool> {
    let top = match domain {
        Domain::Memcg { index } => *index,
        Domain::Context { cgroup_id: Some(id), .. } => levels.iter().position(|l| l.id == *id)?,
        _ => levels.len().checked_sub(2)?,
    };
    let within = levels.get(..=top)?;
    if within.iter().any(|l| l.oom_group == 1) {
        return Some(true);
    }
    within.iter().all(|l| l.oom_group == 0).then_some(false)
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// Converts `bpf_ktime_get_boot_ns()` to wall-clock time, using the current offset between
/// CLOCK_REALTIME and CLOCK_BOOTTIME.
pub fn boot_ns_to_rfc3339(boot_ns: u64) -> String {
    let offset = clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME);
    let wall = boot_ns as i128 + offset;
    let secs = wall.div_euclid(1_000_000_000) as i64;
    let nanos = wall.rem_euclid(1_000_000_000) as u32;
    chrono::DateTime::from_timestamp(secs, nanos)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// A kill built from JSON over a minimal valid base, for unit tests.
#[cfg(test)]
pub(crate) fn test_kill(over: serde_json::Value) -> OomKill {
    let mut base = serde_json::json!({
        "schema": SCHEMA, "time": "2026-01-01T00:00:00.000000000Z", "node": "node-1",
        "victim": {"source": "test"}, "trigger": {},
        "oom": {"source": "test"}, "cgroup": {"memory": {}, "source": "test"}
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

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> [u8; oomtrace_common::CGROUP_NAME_LEN] {
        let mut n = [0u8; oomtrace_common::CGROUP_NAME_LEN];
        n[..s.len()].copy_from_slice(s.as_bytes());
        n
    }

    #[test]
    fn paths_skip_the_root_name() {
        let names = [name("leaf"), name("mid"), name("")];
        assert_eq!(path_of(names.iter().map(|n| &n[..])), "/mid/leaf");
        let root = [name("")];
        assert_eq!(path_of(root.iter().map(|n| &n[..])), "/");
    }

    fn victim_record(len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        buf[..4].copy_from_slice(&kind::VICTIM.to_ne_bytes());
        buf
    }

    #[test]
    fn short_or_unknown_records_are_rejected() {
        assert!(record_from_bytes(&victim_record(16)).is_none());
        assert!(record_from_bytes(&[]).is_none());
        assert!(record_from_bytes(&[0xff; 64]).is_none());
        let Some(Record::Victim(raw)) = record_from_bytes(&victim_record(std::mem::size_of::<OomEvent>())) else {
            panic!("a full victim record decodes");
        };
        assert_eq!(raw.valid, 0);
    }

    #[test]
    fn unknown_values_are_null() {
        let Some(Record::Victim(raw)) = record_from_bytes(&victim_record(std::mem::size_of::<OomEvent>())) else {
            panic!("a full victim record decodes");
        };
        let mut d = Decoder::new("n".into(), None);
        let ev = d.decode(&raw, 0);
        let j = serde_json::to_value(&ev).unwrap();
        assert!(j["victim"]["pid"].is_null());
        assert!(j["victim"]["rss_anon_bytes"].is_null());
        assert!(j["oom"]["limit_bytes"].is_null());
        assert!(j.get("lost_events").is_none());
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_records_never_panics(
            kind in 0u32..5,
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..12000),
        ) {
            let mut bytes = bytes;
            if bytes.len() >= 4 {
                bytes[..4].copy_from_slice(&kind.to_ne_bytes());
            }
            let mut d = Decoder::new("n".into(), None);
            match record_from_bytes(&bytes) {
                Some(Record::Victim(raw)) => {
                    let ev = d.decode(&raw, 1);
                    serde_json::to_string(&ev).unwrap();
                }
                Some(Record::Pressure(raw)) => {
                    if let Some(p) = crate::pressure::decode(&raw, "n", d.page_size()) {
                        serde_json::to_string(&p).unwrap();
                    }
                }
                Some(Record::InvocationEnd(_)) | None => {}
            }
        }
    }
}
