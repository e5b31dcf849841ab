//! `oom.candidates`: the OOM domain's largest tasks (the OOM cgroup's, or the node's for a
//! node-wide OOM) as the OOM killer weighs them, and the verdict's clause when it chose a
//! smaller task over a larger one.
//!
//! The kernel's `oom_badness()` (mm/oom_kill.c) gives each task, in pages, its RSS + swap
//! entries + page tables, plus `oom_score_adj × (totalpages / 1000)`; `-1000` makes a task
//! unkillable. `totalpages` is the OOM domain's size: the memory cgroup's limit plus the swap
//! it may use, or the node's RAM plus swap. The inputs are read from procfs right after the kill (the victim's from the
//! kernel's record at the kill), so they can differ from the kernel's by what changed since.
use crate::model::{Candidate, Constraint, OomKill, TaskRss};
use crate::output::human;

/// Candidates listed per kill.
pub const TOP_CANDIDATES: usize = 8;
/// `OOM_SCORE_ADJ_MIN`: never chosen.
const UNKILLABLE: i32 = -1000;

/// What procfs shows of one task: its RSS, and the rest of what the OOM killer counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub rss: TaskRss,
    pub swap_bytes: u64,
    pub pgtables_bytes: u64,
    pub oom_score_adj: Option<i32>,
    pub cgroup: Option<String>,
}

/// `/proc/<pid>/status` (kB figures) and `oom_score_adj`, through one handle on the process
/// directory (a reused pid cannot mix two processes).
pub fn read(pid: u32) -> Option<Task> {
    let dir = std::fs::File::open(format!("/proc/{pid}")).ok()?;
    let mut task = parse_status(pid, &crate::cgroup_fs::read_at(&dir, c"status")?)?;
    task.oom_score_adj = crate::cgroup_fs::read_at(&dir, c"oom_score_adj").and_then(|s| s.trim().parse().ok());
    task.cgroup = crate::cgroup_fs::read_at(&dir, c"cgroup").and_then(|t| memory_cgroup(&t));
    Some(task)
}

/// A live task's memory cgroup from `/proc/<pid>/cgroup`: the v1 memory hierarchy's path, and
/// without one (pure v2) the unified hierarchy's.
fn memory_cgroup(text: &str) -> Option<String> {
    let (unified, memory) = crate::cgroup_fs::parse_proc_cgroup(text);
    memory.or(unified)
}

fn parse_status(pid: u32, status: &str) -> Option<Task> {
    let mut comm = String::new();
    let (mut anon, mut file, mut shmem, mut swap, mut pte) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut has_mm = false;
    for l in status.lines() {
        let Some((k, v)) = l.split_once(':') else { continue };
        let kb = || v.trim().trim_end_matches(" kB").parse::<u64>().unwrap_or(0).saturating_mul(1024);
        match k {
            "Name" => comm = v.trim().to_string(),
            "RssAnon" => {
                anon = kb();
                has_mm = true;
            }
            "RssFile" => file = kb(),
            "RssShmem" => shmem = kb(),
            "VmSwap" => swap = kb(),
            "VmPTE" => pte = kb(),
            _ => {}
        }
    }
    // A kernel thread or a zombie has no memory: the OOM killer passes it over.
    if !has_mm {
        return None;
    }
    let rss = TaskRss {
        pid,
        comm,
        rss_bytes: crate::model::rss_total(anon, file, shmem),
        rss_anon_bytes: anon,
        rss_file_bytes: file,
        rss_shmem_bytes: shmem,
    };
    Some(Task { rss, swap_bytes: swap, pgtables_bytes: pte, oom_score_adj: None, cgroup: None })
}

/// The OOM domain's size in pages: the kernel's own when the OOM context was read. Else, for
/// a memcg OOM, the limit when the node has no swap (then nothing is added to it), and for a
/// node-wide one the node's RAM and swap (`totalram_pages() + total_swap_pages`); unknown
/// otherwise. `/proc/meminfo` is only looked up when the kernel's figure is missing.
fn total_pages(ev: &OomKill, page: u64, meminfo: impl FnOnce() -> Option<MemInfo>) -> Option<u64> {
    if let Some(d) = ev.oom.domain_bytes {
        return Some(d / page);
    }
    match ev.oom.constraint? {
        Constraint::Memcg => match meminfo()?.swap_total {
            0 => ev.oom.limit_bytes.map(|l| l / page),
            _ => None,
        },
        Constraint::Global => meminfo().map(|m| m.mem_total.saturating_add(m.swap_total) / page),
        _ => None,
    }
}

/// The node's RAM and swap, in bytes.
#[derive(Debug, Clone, Copy)]
struct MemInfo {
    mem_total: u64,
    swap_total: u64,
}

/// `MemTotal` and `SwapTotal` of `/proc/meminfo`.
fn meminfo() -> Option<MemInfo> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb = |key: &str| {
        let line = text.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].trim().trim_end_matches(" kB").parse::<u64>().ok().map(|kb| kb.saturating_mul(1024))
    };
    Some(MemInfo { mem_total: kb("MemTotal:")?, swap_total: kb("SwapTotal:")? })
}

/// `oom_badness()`: `None` for an unkillable task or an unknown domain.
fn points(footprint_bytes: u64, adj: i32, total_pages: Option<u64>, page: u64) -> Option<i64> {
    if adj <= UNKILLABLE {
        return None;
    }
    let base = i64::try_from(footprint_bytes / page).ok()?;
    let per_adj = i64::try_from(total_pages? / 1000).ok()?;
    Some(base.saturating_add(i64::from(adj).saturating_mul(per_adj)))
}

fn candidate(t: &Task, victim: bool, total_pages: Option<u64>, page: u64) -> Candidate {
    let footprint = t.rss.rss_bytes.saturating_add(t.swap_bytes).saturating_add(t.pgtables_bytes);
    Candidate {
        pid: t.rss.pid,
        comm: t.rss.comm.clone(),
        footprint_bytes: footprint,
        rss_bytes: t.rss.rss_bytes,
        swap_bytes: t.swap_bytes,
        pgtables_bytes: t.pgtables_bytes,
        oom_score_adj: t.oom_score_adj,
        points: t.oom_score_adj.and_then(|adj| points(footprint, adj, total_pages, page)),
        cgroup: t.cgroup.clone(),
        container: None,
        victim,
    }
}

/// The victim as the kernel's record gives it (its memory is being reaped by now).
pub fn victim(ev: &OomKill) -> Option<Task> {
    let v = &ev.victim;
    Some(Task {
        rss: crate::explain::victim_task(ev)?,
        swap_bytes: v.swap_bytes.unwrap_or(0),
        pgtables_bytes: v.pgtables_bytes.unwrap_or(0),
        oom_score_adj: v.oom_score_adj,
        cgroup: ev.cgroup.memory.path.clone(),
    })
}

/// The candidates of `ev` among `tasks`, scored against its OOM domain.
pub fn of(ev: &OomKill, tasks: &[Task]) -> Vec<Candidate> {
    let page = crate::cgroup_fs::page_size();
    rank(tasks, ev.victim.pid, total_pages(ev, page, meminfo), page)
}

/// The largest candidates by points (by footprint where points are unknown), the victim
/// always among them.
fn rank(tasks: &[Task], victim_pid: Option<u32>, total_pages: Option<u64>, page: u64) -> Vec<Candidate> {
    let mut all: Vec<Candidate> =
        tasks.iter().map(|t| candidate(t, Some(t.rss.pid) == victim_pid, total_pages, page)).collect();
    let weight = |c: &Candidate| c.points.map_or(i128::from(c.footprint_bytes / page), i128::from);
    all.sort_by(|a, b| weight(b).cmp(&weight(a)).then(a.pid.cmp(&b.pid)));
    let victim = all.iter().position(|c| c.victim).filter(|&i| i >= TOP_CANDIDATES);
    let kept_victim = victim.map(|i| all[i].clone());
    all.truncate(TOP_CANDIDATES);
    if let Some(v) = kept_victim {
        all[TOP_CANDIDATES - 1] = v;
    }
    all
}

/// When the kernel chose the victim over a larger task because of `oom_score_adj`: the
/// clause saying so. Said only when the figures agree with the kernel's choice (the victim
/// scores at least as high), so a task that grew after the kill never makes it up.
pub fn surprise(candidates: &[Candidate]) -> Option<String> {
    let v = candidates.iter().find(|c| c.victim)?;
    let (v_adj, v_points) = (v.oom_score_adj?, v.points?);
    let larger = candidates
        .iter()
        .filter(|c| !c.victim && c.footprint_bytes > v.footprint_bytes)
        .filter(|c| c.oom_score_adj.is_some_and(|adj| adj < v_adj) && c.points.is_some_and(|p| p <= v_points))
        .max_by_key(|c| c.footprint_bytes)?;
    let name = |c: &Candidate, size: Option<u64>| {
        let container = c.container.as_ref().map(|ct| format!(", container {ct}")).unwrap_or_default();
        let size = size.map(|b| format!(", {}", human(Some(b)))).unwrap_or_default();
        format!("{} (pid {}{container}{size})", c.comm, c.pid)
    };
    Some(format!(
        "{} was chosen over the larger {}: oom_score_adj {v_adj} against {}",
        name(v, None),
        name(larger, Some(larger.footprint_bytes)),
        larger.oom_score_adj.unwrap_or(0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;
    const MIB: u64 = 1 << 20;

    fn task(pid: u32, rss_mib: u64, adj: i32) -> Task {
        let rss = TaskRss {
            pid,
            comm: format!("t{pid}"),
            rss_bytes: rss_mib * MIB,
            rss_anon_bytes: rss_mib * MIB,
            rss_file_bytes: 0,
            rss_shmem_bytes: 0,
        };
        Task { rss, swap_bytes: 0, pgtables_bytes: 64 << 10, oom_score_adj: Some(adj), cgroup: None }
    }

    #[test]
    fn points_are_the_kernels_badness() {
        // 128 MiB limit = 32768 pages: each adj point is worth 32 pages.
        let total = Some(32768);
        assert_eq!(points(80 * MIB, 0, total, PAGE), Some(20480));
        assert_eq!(points(48 * MIB, 1000, total, PAGE), Some(12288 + 32000));
        assert_eq!(points(48 * MIB, -500, total, PAGE), Some(12288 - 16000), "below zero, as the kernel's long");
        assert_eq!(points(48 * MIB, -1000, total, PAGE), None, "unkillable");
        assert_eq!(points(48 * MIB, 0, None, PAGE), None, "unknown domain");
    }

    #[test]
    fn status_gives_rss_swap_and_page_tables() {
        let t = parse_status(7, "Name:\tenvoy\nVmPTE:\t     120 kB\nVmSwap:\t       8 kB\nRssAnon:\t  1024 kB\nRssFile:\t   512 kB\nRssShmem:\t  0 kB\n").unwrap();
        assert_eq!((t.rss.comm.as_str(), t.rss.rss_bytes, t.swap_bytes, t.pgtables_bytes), ("envoy", 1536 << 10, 8 << 10, 120 << 10));
    }

    #[test]
    fn the_memory_cgroup_on_hybrid_and_pure_v2() {
        assert_eq!(memory_cgroup("12:memory:/kubepods/pod1/c1\n0::/system.slice\n").as_deref(), Some("/kubepods/pod1/c1"));
        assert_eq!(memory_cgroup("0::/kubepods/pod1/c1\n").as_deref(), Some("/kubepods/pod1/c1"));
    }

    #[test]
    fn a_smaller_victim_with_a_higher_adj_is_explained() {
        let total = Some(32768);
        let tasks = [task(1, 80, 0), task(2, 48, 1000), task(3, 8, 0)];
        let mut c = rank(&tasks, Some(2), total, PAGE);
        assert_eq!(c.iter().map(|c| c.pid).collect::<Vec<_>>(), [2, 1, 3], "by points");
        c[1].container = Some("app".into());
        assert_eq!(
            surprise(&c).as_deref(),
            Some("t2 (pid 2) was chosen over the larger t1 (pid 1, container app, 80.1MiB): oom_score_adj 1000 against 0")
        );
        // Same adj: the kernel chose by size; a larger task now only grew after the kill.
        let c = rank(&[task(1, 80, 0), task(2, 48, 0)], Some(2), total, PAGE);
        assert_eq!(surprise(&c), None);
        // Figures that disagree with the kernel's choice say nothing.
        let c = rank(&[task(1, 400, 0), task(2, 48, 300)], Some(2), total, PAGE);
        assert_eq!(surprise(&c), None);
    }

    #[test]
    fn the_victim_is_always_listed() {
        let mut tasks: Vec<Task> = (1..=20).map(|p| task(p, 100 + u64::from(p), 0)).collect();
        tasks.push(task(99, 1, 0));
        let c = rank(&tasks, Some(99), Some(32768), PAGE);
        assert_eq!(c.len(), TOP_CANDIDATES);
        assert_eq!(c[0].pid, 20);
        assert!(c.last().is_some_and(|c| c.victim && c.pid == 99));
    }

    #[test]
    fn the_domain_is_the_kernels_or_the_limit_without_swap() {
        let mem = |swap_total| move || Some(MemInfo { mem_total: 1 << 30, swap_total });
        let mut ev = crate::model::test_kill(serde_json::json!({"oom": {"constraint": "memcg", "limit_bytes": 128 * MIB}}));
        assert_eq!(total_pages(&ev, PAGE, mem(0)), Some(32768));
        assert_eq!(total_pages(&ev, PAGE, mem(1 << 30)), None, "swap adds an unknown share");
        ev.oom.domain_bytes = Some(256 * MIB);
        assert_eq!(total_pages(&ev, PAGE, || unreachable!("the kernel's figure needs no lookup")), Some(65536));
        let global = crate::model::test_kill(serde_json::json!({"oom": {"constraint": "global"}}));
        assert_eq!(total_pages(&global, PAGE, mem(256 * MIB)), Some(327_680), "RAM and swap");
        let cpuset = crate::model::test_kill(serde_json::json!({"oom": {"constraint": "cpuset"}}));
        assert_eq!(total_pages(&cpuset, PAGE, mem(0)), None);
    }

    #[test]
    fn kernel_threads_and_zombies_are_passed_over() {
        assert_eq!(parse_status(2, "Name:\tkthreadd\nState:\tS (sleeping)\nThreads:\t1\n"), None);
    }

    #[test]
    fn meminfo_here_has_ram() {
        assert!(meminfo().is_some_and(|m| m.mem_total > 0));
    }
}
