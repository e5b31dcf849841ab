//! Early warnings: a memory cgroup reclaiming at its `memory.max` (or above `memory.high`)
//! before anything is killed. The kernel reports at most one per cgroup per second and counts
//! the passes it did not report (`suppressed`).
use crate::model::PressureLimit;
use crate::record::{boot_ns_to_rfc3339, cstr, memcg_path};
use oomtrace_common::{PressureEvent, MAX_CGROUP_DEPTH};
use serde::{Deserialize, Serialize};

pub const SCHEMA: &str = "oomtrace.memory_pressure/v1";
/// A reclaim pass that frees fewer pages than this (SWAP_CLUSTER_MAX) is struggling.
const STRUGGLING_PAGES: u64 = 32;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemoryPressure {
    pub schema: String,
    pub time: String,
    pub node: String,
    /// The cgroup at its limit.
    pub cgroup: String,
    pub cgroup_id: u64,
    pub reason: PressureLimit,
    pub limit_bytes: Option<u64>,
    pub high_bytes: Option<u64>,
    pub usage_bytes: Option<u64>,
    pub reclaimed_bytes: u64,
    /// The reclaim pass freed less than 32 pages.
    pub reclaim_struggling: bool,
    /// Passes at this cgroup not reported since the previous warning (rate limit).
    pub suppressed: u64,
    /// The task whose charge had to reclaim.
    pub task: Task,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s: Option<crate::model::K8s>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Task {
    pub pid: u32,
    pub comm: String,
}

pub fn decode(raw: &PressureEvent, node: &str, page: u64) -> Option<MemoryPressure> {
    let depth = (raw.memcg_depth as usize).min(MAX_CGROUP_DEPTH);
    let levels = &raw.memcg[..depth];
    let i = raw.level as usize;
    let l = levels.get(i)?;
    let finite = |p: u64| crate::oom_domain::finite(p).map(|p| p.saturating_mul(page));
    Some(MemoryPressure {
        schema: SCHEMA.into(),
        time: boot_ns_to_rfc3339(raw.boot_ns),
        node: node.into(),
        cgroup: memcg_path(levels, i),
        cgroup_id: l.id,
        reason: if raw.over_high != 0 { PressureLimit::High } else { PressureLimit::Max },
        limit_bytes: finite(l.max_pages),
        high_bytes: finite(l.high_pages),
        usage_bytes: finite(l.usage_pages),
        reclaimed_bytes: raw.nr_reclaimed.saturating_mul(page),
        reclaim_struggling: raw.nr_reclaimed < STRUGGLING_PAGES,
        suppressed: raw.suppressed,
        task: Task { pid: raw.task_pid, comm: cstr(&raw.task_comm) },
        k8s: None,
    })
}
