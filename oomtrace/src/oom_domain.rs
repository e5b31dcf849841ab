//! Which limit was hit: the OOM domain of a kill.
//!
//! With a hook on `oom_kill_process` the kernel tells us (`oc->memcg`, `oc->constraint`). Without
//! one (kernels lacking kprobes and fentry), the victim's memcg ancestry read in the kernel at the
//! kill decides: the OOM memcg is the deepest ancestor that is at its limit *and* whose own OOM
//! counter (`memory_events_local[MEMCG_OOM]`, bumped by `mem_cgroup_oom()` on the memcg whose
//! limit was hit) moved since we last looked. No such ancestor means the node ran out of memory.
use crate::cgroup_fs::{self, CgroupfsMemory, Hierarchies};
use crate::model::{Constraint, OomSource};
use crate::record::{memcg_levels, memcg_path};
use oomtrace_common::{valid, MemcgLevel, OomContext, OomEvent, AT_LIMIT_SLACK_PAGES, UNLIMITED_PAGES};
use std::collections::HashMap;

/// Bound on the remembered per-cgroup OOM counters (cgroups come and go on a busy node).
const MAX_TRACKED: usize = 65_536;

#[derive(Debug, PartialEq)]
pub enum Domain {
    /// From `struct oom_control` (fentry/kprobe).
    Context {
        constraint: Constraint,
        cgroup: Option<String>,
        cgroup_id: Option<u64>,
        limit_pages: Option<u64>,
        usage_pages: Option<u64>,
        swap_limit_pages: Option<u64>,
    },
    /// `levels[index]` of the victim's memcg ancestry hit its limit.
    Memcg { index: usize },
    /// Found by reading cgroupfs after the kill.
    Cgroupfs { path: String, mem: CgroupfsMemory },
    Global { source: OomSource },
    Unknown,
}

pub struct DomainTracker {
    last_oom_events: HashMap<u64, u64>,
    hierarchies: Option<Hierarchies>,
    page_size: u64,
}

/// A page count that is a real limit (not "max").
pub fn finite(p: u64) -> Option<u64> {
    (p < UNLIMITED_PAGES).then_some(p)
}

impl DomainTracker {
    pub fn new(hierarchies: Option<Hierarchies>) -> Self {
        Self { last_oom_events: HashMap::new(), hierarchies, page_size: crate::cgroup_fs::page_size() }
    }

    /// The domain of the kill `raw` reports; `victim_memcg_path` is the victim's memory
    /// cgroup, for kernels that captured no memcg in the record.
    pub fn resolve(&mut self, raw: &OomEvent, victim_memcg_path: Option<&str>) -> Domain {
        let ctx = (raw.valid & valid::OOM_CONTEXT != 0).then_some(&raw.ctx);
        self.resolve_levels(memcg_levels(raw), ctx, victim_memcg_path)
    }

    fn resolve_levels(
        &mut self,
        levels: &[MemcgLevel],
        ctx: Option<&OomContext>,
        victim_memcg_path: Option<&str>,
    ) -> Domain {
        let walked = self.walk(levels);
        if let Some(ctx) = ctx {
            return from_context(levels, ctx);
        }
        if !levels.is_empty() {
            return match walked {
                Some(index) => Domain::Memcg { index },
                None => Domain::Global { source: OomSource::Memcg },
            };
        }
        self.by_cgroupfs(victim_memcg_path)
    }

    /// Finds the OOM memcg among `levels` and remembers every level's OOM counter.
    fn walk(&mut self, levels: &[MemcgLevel]) -> Option<usize> {
        let mut found = None;
        // The last level is the root memcg, which has no limit to hit.
        for (i, l) in levels.iter().enumerate().take(levels.len().saturating_sub(1)) {
            if l.oom_events_local == u64::MAX {
                continue; // counter not readable on this kernel
            }
            let moved = match self.last_oom_events.get(&l.id) {
                Some(&prev) => l.oom_events_local > prev,
                None => l.oom_events_local > 0,
            };
            let at_limit = finite(l.max_pages).is_some_and(|max| {
                l.usage_pages != u64::MAX && l.usage_pages.saturating_add(AT_LIMIT_SLACK_PAGES) >= max
            });
            if found.is_none() && moved && at_limit {
                found = Some(i);
            }
        }
        if self.last_oom_events.len() > MAX_TRACKED {
            self.last_oom_events.clear();
        }
        for l in levels {
            if l.oom_events_local != u64::MAX {
                self.last_oom_events.insert(l.id, l.oom_events_local);
            }
        }
        found
    }

    /// Without the kernel's view: walk up from the victim's memory cgroup in cgroupfs and take
    /// the deepest ancestor that is at its limit.
    fn by_cgroupfs(&self, victim_memcg_path: Option<&str>) -> Domain {
        let (Some(h), Some(path)) = (&self.hierarchies, victim_memcg_path) else {
            return Domain::Unknown;
        };
        let Some((version, _)) = h.memory else { return Domain::Unknown };
        let mut cur = path.trim_end_matches('/').to_string();
        while !cur.is_empty() && cur != "/" {
            if let Some(dir) = h.memory_dir(&cur) {
                if let Ok(mem) = cgroup_fs::read_memory(version, &dir) {
                    let slack = AT_LIMIT_SLACK_PAGES.saturating_mul(self.page_size);
                    if let (Some(limit), Some(usage)) = (mem.limit_bytes, mem.usage_bytes) {
                        if usage.saturating_add(slack) >= limit {
                            return Domain::Cgroupfs { path: cur, mem };
                        }
                    }
                }
            }
            cur = match cur.rfind('/') {
                Some(0) | None => String::new(),
                Some(i) => cur[..i].to_string(),
            };
        }
        Domain::Global { source: OomSource::Cgroupfs }
    }
}

fn from_context(levels: &[MemcgLevel], ctx: &OomContext) -> Domain {
    let limited = |p: u64| (p != u64::MAX).then_some(p).and_then(finite);
    if ctx.memcg_id == 0 {
        return Domain::Context {
            constraint: Constraint::from_kernel(ctx.constraint),
            cgroup: Some("/".into()),
            cgroup_id: None,
            limit_pages: None,
            usage_pages: None,
            swap_limit_pages: None,
        };
    }
    let path = match levels.iter().position(|l| l.id == ctx.memcg_id) {
        Some(i) => memcg_path(levels, i),
        // Not an ancestor we captured: at least name it.
        None => format!(".../{}", crate::record::cstr(&ctx.memcg_name)),
    };
    Domain::Context {
        constraint: Constraint::from_kernel(ctx.constraint),
        cgroup: Some(path),
        cgroup_id: Some(ctx.memcg_id),
        limit_pages: limited(ctx.memcg_max_pages),
        usage_pages: limited(ctx.memcg_usage_pages),
        swap_limit_pages: limited(ctx.memcg_swap_max_pages),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oomtrace_common::CGROUP_NAME_LEN;

    fn level(id: u64, name: &str, usage: u64, max: u64, ooms: u64) -> MemcgLevel {
        let mut n = [0u8; CGROUP_NAME_LEN];
        n[..name.len()].copy_from_slice(name.as_bytes());
        MemcgLevel {
            id,
            usage_pages: usage,
            max_pages: max,
            swap_usage_pages: 0,
            swap_max_pages: u64::MAX >> 12,
            oom_events_local: ooms,
            oom_kill_events_local: 0,
            high_pages: u64::MAX >> 12,
            oom_group: 0,
            _pad: 0,
            name: n,
        }
    }

    const NOLIMIT: u64 = (1 << 63) / 4096;

    #[test]
    fn container_limit() {
        let mut t = DomainTracker::new(None);
        let levels = [level(3, "ctr", 16384, 16384, 1), level(2, "pod", 16384, 40000, 0), level(1, "", 99999, NOLIMIT, 0)];
        assert_eq!(t.resolve_levels(&levels, None, None), Domain::Memcg { index: 0 });
    }

    #[test]
    fn pod_limit_while_container_is_under_its_own() {
        let mut t = DomainTracker::new(None);
        let levels = [level(3, "ctr", 9000, 16384, 0), level(2, "pod", 12800, 12800, 1), level(1, "", 1, NOLIMIT, 0)];
        assert_eq!(t.resolve_levels(&levels, None, None), Domain::Memcg { index: 1 });
    }

    #[test]
    fn a_counter_that_did_not_move_is_not_this_oom() {
        let mut t = DomainTracker::new(None);
        let levels = [level(3, "ctr", 16384, 16384, 1), level(1, "", 1, NOLIMIT, 0)];
        assert_eq!(t.resolve_levels(&levels, None, None), Domain::Memcg { index: 0 });
        // Second kill: the container is still at its limit but its counter did not move.
        assert_eq!(t.resolve_levels(&levels, None, None), Domain::Global { source: OomSource::Memcg });
        let levels = [level(3, "ctr", 16384, 16384, 2), level(1, "", 1, NOLIMIT, 0)];
        assert_eq!(t.resolve_levels(&levels, None, None), Domain::Memcg { index: 0 });
    }

    #[test]
    fn below_the_limit_is_not_the_domain() {
        let mut t = DomainTracker::new(None);
        let levels = [level(3, "ctr", 100, 16384, 5), level(1, "", 1, NOLIMIT, 0)];
        assert_eq!(t.resolve_levels(&levels, None, None), Domain::Global { source: OomSource::Memcg });
    }

    #[test]
    fn context_wins() {
        let mut t = DomainTracker::new(None);
        let levels = [level(3, "ctr", 1, 16384, 0), level(2, "pod", 1, 100, 0), level(1, "", 1, NOLIMIT, 0)];
        let ctx = OomContext {
            memcg_id: 2,
            memcg_usage_pages: 100,
            memcg_max_pages: 100,
            memcg_swap_max_pages: u64::MAX,
            totalpages: 100,
            chosen_points: 1,
            gfp_mask: 0xcc0,
            order: 0,
            constraint: 3,
            source: 1,
            trigger_pid: 1,
            _pad: 0,
            seq: 1,
            victims: 0,
            _pad2: 0,
            memcg_name: [0; CGROUP_NAME_LEN],
        };
        match t.resolve_levels(&levels, Some(&ctx), None) {
            Domain::Context { constraint, cgroup, limit_pages, .. } => {
                assert_eq!(constraint, Constraint::Memcg);
                assert_eq!(cgroup.as_deref(), Some("/pod"));
                assert_eq!(limit_pages, Some(100));
            }
            d => panic!("{d:?}"),
        }
    }
}
