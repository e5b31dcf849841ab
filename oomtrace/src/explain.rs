//! Why the kill happened: the OOM cgroup's memory breakdown, its biggest tasks, and a one-line
//! verdict, gathered right after the kill.
//!
//! The kernel walk gives limit and usage *at* the kill; the breakdown (`memory.stat`), memory
//! PSI and the task list are read from cgroupfs and procfs immediately after it, within
//! milliseconds (`gathered_after_ms` says how long after). v1 and v2 `memory.stat` names are
//! normalised to one set; a figure a hierarchy does not have is `null`.
use crate::cgroup_fs::{read, read_u64, Hierarchies, MemoryVersion};
use crate::model::{
    Constraint, DetailsSource, Explanation, Level, MemoryStat, OomKill, Pressure, Recommendation, TaskRss,
};
use crate::recommend::pct;
use std::collections::HashMap;
use std::path::Path;

/// How many tasks `oom.tasks` lists (largest RSS first), like the kernel's own dump but bounded.
pub const TOP_TASKS: usize = 8;

/// Parses `memory.stat` (either version) into the normalised set.
pub fn parse_memory_stat(version: MemoryVersion, text: &str) -> MemoryStat {
    let kv: HashMap<&str, u64> = text
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k, v.trim().parse().ok()?))
        })
        .collect();
    let get = |k: &str| kv.get(k).copied();
    match version {
        // v1: the hierarchical `total_*` figures (the cgroup and all below it).
        MemoryVersion::V1 => MemoryStat {
            anon_bytes: get("total_rss"),
            file_bytes: get("total_cache"),
            shmem_bytes: get("total_shmem"),
            file_mapped_bytes: get("total_mapped_file"),
            file_dirty_bytes: get("total_dirty"),
            file_writeback_bytes: get("total_writeback"),
            swap_bytes: get("total_swap"),
            ..Default::default()
        },
        MemoryVersion::V2 => MemoryStat {
            anon_bytes: get("anon"),
            file_bytes: get("file"),
            kernel_bytes: get("kernel"),
            slab_bytes: get("slab"),
            sock_bytes: get("sock"),
            shmem_bytes: get("shmem"),
            file_mapped_bytes: get("file_mapped"),
            file_dirty_bytes: get("file_dirty"),
            file_writeback_bytes: get("file_writeback"),
            swap_bytes: None, // memory.swap.current, read by `gather`
        },
    }
}

/// `some avg10=0.00 avg60=…` / `full avg10=…` lines of `memory.pressure`.
pub fn parse_pressure(text: &str) -> Pressure {
    let avg10 = |kind: &str| {
        text.lines()
            .find(|l| l.starts_with(kind))
            .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("avg10=")))
            .and_then(|v| v.parse().ok())
    };
    Pressure {
        some_avg10: avg10("some"),
        full_avg10: avg10("full"),
    }
}

/// Bounds on what one explanation reads, so an OOM of a huge or wide cgroup tree cannot stall
/// the kills behind it: processes looked at, directories walked, and wall time.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub max_tasks: usize,
    pub max_dirs: usize,
    pub time: std::time::Duration,
}

impl Budget {
    /// A node-wide OOM's: the whole node's tasks are its candidates, and such OOMs are rare, so
    /// it gets a second.
    pub fn for_kill(self, ev: &OomKill) -> Self {
        match ev.oom.constraint {
            Some(Constraint::Global) => Self { time: self.time.max(std::time::Duration::from_secs(1)), ..self },
            _ => self,
        }
    }
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            max_tasks: 4096,
            max_dirs: 1024,
            time: std::time::Duration::from_millis(100),
        }
    }
}

/// The walk of one OOM cgroup's tree, within a [`Budget`].
struct Walk {
    budget: Budget,
    deadline: std::time::Instant,
    dirs: usize,
    /// A bound was reached: the task list may be incomplete.
    cut: bool,
}

impl Walk {
    fn spent(&mut self) -> bool {
        if std::time::Instant::now() >= self.deadline {
            self.cut = true;
        }
        self.cut
    }

    /// Every process of the node (`/proc`'s numeric entries, thread-group leaders as the OOM
    /// killer walks them), but global init, which it never picks.
    fn every_process(&mut self, out: &mut Vec<u32>) {
        let Ok(entries) = std::fs::read_dir("/proc") else { return };
        for e in entries.flatten() {
            if out.len() >= self.budget.max_tasks {
                self.cut = true;
                return;
            }
            match e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                Some(1) | None => {}
                Some(pid) => out.push(pid),
            }
        }
    }

    /// Every process in `dir` and the cgroups below it.
    fn procs_below(&mut self, dir: &Path, out: &mut Vec<u32>, depth: u32) {
        if depth > 16 || self.spent() {
            return;
        }
        if out.len() >= self.budget.max_tasks || self.dirs >= self.budget.max_dirs {
            self.cut = true;
            return;
        }
        self.dirs += 1;
        if let Some(t) = read(dir, "cgroup.procs") {
            let room = self.budget.max_tasks - out.len();
            out.extend(
                t.lines()
                    .filter_map(|l| l.trim().parse::<u32>().ok())
                    .take(room),
            );
        }
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    self.procs_below(&e.path(), out, depth + 1);
                }
                if self.cut {
                    return;
                }
            }
        }
    }
}

/// Gathers the explanation of `ev`: for a memcg OOM its cgroup's breakdown and tasks, for a
/// node-wide OOM the node's tasks (the OOM killer weighs every process then). A cpuset or
/// mempolicy OOM weighs only the tasks allowed on its nodes, which procfs cannot tell apart:
/// nothing is gathered rather than a wrong list. `killed_at` is when the kernel marked the
/// victim. Returns whether a bound of `budget` cut it short (the task list is then partial).
pub fn gather(
    ev: &OomKill,
    h: &Hierarchies,
    killed_at: std::time::SystemTime,
    budget: Budget,
) -> Option<(Explanation, bool)> {
    let (mut x, dir) = match ev.oom.constraint? {
        Constraint::Memcg => {
            let dir = h.memory_dir(ev.oom.cgroup.as_deref()?)?;
            (cgroup_breakdown(h, &dir)?, Some(dir))
        }
        Constraint::Global => {
            (Explanation { details_source: Some(DetailsSource::CgroupfsProcfs), ..Default::default() }, None)
        }
        _ => return None,
    };
    // The budget starts after the breakdown's few fixed reads: it bounds what grows with the
    // cgroup tree and its tasks, not a `memory.stat` that is slow to flush.
    let mut walk = Walk {
        budget,
        deadline: std::time::Instant::now() + budget.time,
        dirs: 0,
        cut: false,
    };
    let mut pids = Vec::new();
    match &dir {
        Some(dir) => walk.procs_below(dir, &mut pids, 0),
        None => walk.every_process(&mut pids),
    }
    let victim = ev.victim.pid;
    let mut read = Vec::new();
    for pid in pids.into_iter().filter(|p| Some(*p) != victim) {
        if walk.spent() {
            break;
        }
        read.extend(crate::candidates::read(pid));
    }
    read.extend(crate::candidates::victim(ev));
    x.candidates = crate::candidates::of(ev, &read);
    let mut tasks: Vec<TaskRss> = read.into_iter().map(|t| t.rss).collect();
    tasks.sort_by(|a, b| b.rss_bytes.cmp(&a.rss_bytes).then(a.pid.cmp(&b.pid)));
    tasks.truncate(TOP_TASKS);
    x.tasks = tasks;
    x.details_after_ms = killed_at.elapsed().ok().map(|d| d.as_secs_f64() * 1000.0);
    x.partial = walk.cut;
    Some((x, walk.cut))
}

/// The OOM cgroup's `memory.stat`, swap, `memory.high` and pressure.
fn cgroup_breakdown(h: &Hierarchies, dir: &Path) -> Option<Explanation> {
    let (version, _) = h.memory.as_ref()?;
    let mut x = Explanation {
        memory_stat: read(dir, "memory.stat").map(|t| parse_memory_stat(*version, &t)),
        details_source: Some(DetailsSource::CgroupfsProcfs),
        ..Default::default()
    };
    match version {
        MemoryVersion::V1 => {
            let memsw = read_u64(dir, "memory.memsw.usage_in_bytes");
            let usage = read_u64(dir, "memory.usage_in_bytes");
            x.swap_usage_bytes = memsw.zip(usage).map(|(m, u)| m.saturating_sub(u));
            if let Some(ms) = x.memory_stat.as_mut() {
                ms.kernel_bytes = read_u64(dir, "memory.kmem.usage_in_bytes");
                ms.sock_bytes = read_u64(dir, "memory.kmem.tcp.usage_in_bytes");
            }
        }
        MemoryVersion::V2 => {
            x.swap_usage_bytes = read_u64(dir, "memory.swap.current");
            x.high_bytes = read_u64(dir, "memory.high");
            x.pressure = read(dir, "memory.pressure").map(|t| parse_pressure(&t));
            if let Some(ms) = x.memory_stat.as_mut() {
                ms.swap_bytes = x.swap_usage_bytes;
            }
        }
    }
    Some(x)
}

/// The victim as the kernel saw it at the kill (by now its memory is being reaped): listed
/// even when nothing else could be read.
pub fn victim_task(ev: &OomKill) -> Option<TaskRss> {
    let v = &ev.victim;
    let (a, f, s) = (v.rss_anon_bytes?, v.rss_file_bytes?, v.rss_shmem_bytes?);
    Some(TaskRss {
        pid: v.pid?,
        comm: v.comm.clone().unwrap_or_default(),
        rss_bytes: crate::model::rss_total(a, f, s),
        rss_anon_bytes: a,
        rss_file_bytes: f,
        rss_shmem_bytes: s,
    })
}


/// Adds the OOM cgroup's breakdown (when one was gathered), the verdict and the
/// recommendation to `ev`.
pub fn apply(ev: &mut OomKill, details: Option<Explanation>) {
    if let Some(x) = details {
        ev.oom.details = x;
    }
    let (verdict, recommendation) = judge(ev, Some(&ev.oom.details));
    ev.verdict = Some(verdict);
    ev.oom.recommendation = recommendation;
}

/// One line an on-call engineer reads first, and what to change when the evidence names it.
/// The rules, in order:
/// 1. node-wide OOM → "node out of memory; <victim> was the largest task" (or "the OOM killer
///    chose <victim>" when the node's candidates do not show it largest);
/// 2. the OOM cgroup is a pod-level cgroup → "pod-level limit hit while every container was
///    under its own";
/// 3. page cache + tmpfs ≥ 50 % of usage → "page cache + tmpfs (shmem) made up N % of usage";
/// 4. kernel memory ≥ 30 % → "kernel memory (slab, sockets, …) made up N % of usage";
/// 5. the victim's runtime ceiling against the limit (see [`crate::recommend::runtime`]), with a
///    recommendation;
/// 6. the victim's own anon memory ≥ 50 % of the limit → "anon memory of <comm> filled the
///    <scope> limit";
/// 7. anon ≥ 50 % → "anon memory of several processes filled the <scope> limit";
/// 8. otherwise "<scope> limit hit".
///
/// The charge that invoked the OOM killer then says what its task was doing (see
/// [`crate::charge::phrase`]), a surprising choice of victim why (see
/// [`crate::candidates::surprise`]), and the OOM cgroup's trend how usage moved (see [`crate::trend::phrase`]) and, where
/// no runtime setting is named, what follows from it (see [`crate::recommend::from_trend`]).
pub fn judge(ev: &OomKill, x: Option<&Explanation>) -> (String, Option<Recommendation>) {
    let (mut verdict, recommendation) = finding(ev, x);
    let own = ev.trigger.tgid.is_some() && ev.trigger.tgid == ev.victim.tgid.or(ev.victim.pid);
    let comm = ev.trigger.comm.as_deref().unwrap_or("the trigger");
    // Another task than the victim, often of the same name: its pid tells them apart.
    let trigger = match ev.trigger.tgid.filter(|_| !own) {
        Some(tgid) => format!("{comm} (pid {tgid})"),
        None => comm.to_owned(),
    };
    if let Some(how) = ev.oom.charge.as_ref().and_then(|c| crate::charge::phrase(c, &trigger, own, ev.limit_scope())) {
        verdict = format!("{verdict}; {how}");
    }
    if let Some(why) = x.and_then(|x| crate::candidates::surprise(&x.candidates)) {
        verdict = format!("{verdict}; {why}");
    }
    let verdict = match ev.oom.trend.as_ref().and_then(|t| crate::trend::phrase(t, ev.oom.limit_bytes)) {
        Some(how) => format!("{verdict}; {how}"),
        None => verdict,
    };
    (verdict, recommendation.or_else(|| crate::recommend::from_trend(ev, x)))
}

/// Rule 1: the victim is called the largest task only when the node's candidates show it
/// (an `oom_score_adj` can pick a smaller one; [`crate::candidates::surprise`] then says why).
fn node_wide(comm: &str, x: Option<&Explanation>) -> String {
    let largest = x
        .filter(|x| !x.partial)
        .map(|x| &x.candidates)
        .and_then(|c| c.iter().find(|c| c.victim).map(|v| c.iter().all(|o| o.footprint_bytes <= v.footprint_bytes)));
    match largest {
        Some(true) => format!("node out of memory; {comm} was the largest task"),
        _ => format!("node out of memory; the OOM killer chose {comm}"),
    }
}

/// Rules 1–8 of [`judge`].
fn finding(ev: &OomKill, x: Option<&Explanation>) -> (String, Option<Recommendation>) {
    let comm = ev.victim.comm.as_deref().unwrap_or("the victim");
    let plain = |v: String| (v, None);
    match ev.oom.constraint {
        Some(Constraint::Global) => return plain(node_wide(comm, x)),
        Some(Constraint::Memcg) => {}
        Some(other) => return plain(format!("{other}-constrained OOM")),
        None => return plain("OOM of unknown scope".into()),
    }
    let scope = ev.limit_scope();
    let in_container = ev.k8s.as_ref().is_some_and(|k| matches!(k.cgroup_level, Level::Container | Level::ContainerChild));
    if scope == "pod" && in_container {
        return plain("pod-level limit hit while every container was under its own".into());
    }
    let usage = ev.oom.usage_bytes.or(ev.oom.limit_bytes).unwrap_or(0);
    let stat = x.and_then(|x| x.memory_stat.as_ref());
    if let Some(s) = stat {
        let cache = s.file_bytes.unwrap_or(0);
        // v2's `file` includes shmem; v1's `cache` too.
        if usage > 0 && pct(cache, usage) >= 50 {
            return plain(format!(
                "page cache + tmpfs (shmem) made up {} % of usage",
                pct(cache, usage)
            ));
        }
        let kernel = s.kernel_bytes.or(s.slab_bytes).unwrap_or(0);
        if usage > 0 && pct(kernel, usage) >= 30 {
            return plain(format!(
                "kernel memory (slab, sockets, …) made up {} % of usage",
                pct(kernel, usage)
            ));
        }
    }
    let victim_anon = ev.victim.rss_anon_bytes.unwrap_or(0);
    if let Some(limit) = ev.oom.limit_bytes {
        if let Some(r) = crate::recommend::runtime(ev, limit, scope) {
            return (format!("{}: {}", r.reason, r.action), Some(r));
        }
        if pct(victim_anon, limit) >= 50 {
            return plain(format!("anon memory of {comm} filled the {scope} limit"));
        }
        if let Some(anon) = stat.and_then(|s| s.anon_bytes) {
            if pct(anon, limit) >= 50 {
                return plain(format!("anon memory of several processes filled the {scope} limit"));
            }
        }
    }
    plain(format!("{scope} limit hit"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(ev: &OomKill, x: Option<&Explanation>) -> String {
        judge(ev, x).0
    }

    fn memcg_kill(anon: u64, shmem: u64, limit: u64) -> OomKill {
        crate::model::test_kill(serde_json::json!({
            "victim": {"pid": 1, "comm": "python3", "rss_anon_bytes": anon, "rss_file_bytes": 0, "rss_shmem_bytes": shmem},
            "oom": {"constraint": "memcg", "cgroup": "/t", "limit_bytes": limit, "usage_bytes": limit}
        }))
    }

    fn with_stat(anon: u64, file: u64, kernel: Option<u64>) -> Explanation {
        Explanation {
            memory_stat: Some(MemoryStat {
                anon_bytes: Some(anon),
                file_bytes: Some(file),
                kernel_bytes: kernel,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    const M: u64 = 1 << 20;

    #[test]
    fn verdicts() {
        let anon = memcg_kill(60 * M, 0, 64 * M);
        assert_eq!(
            verdict(&anon, Some(&with_stat(62 * M, M, None))),
            "anon memory of python3 filled the cgroup limit"
        );
        let shm = memcg_kill(M, 60 * M, 64 * M);
        assert_eq!(
            verdict(&shm, Some(&with_stat(M, 62 * M, None))),
            "page cache + tmpfs (shmem) made up 96 % of usage"
        );
        let slab = memcg_kill(10 * M, 0, 64 * M);
        assert_eq!(
            verdict(&slab, Some(&with_stat(20 * M, 4 * M, Some(40 * M)))),
            "kernel memory (slab, sockets, …) made up 62 % of usage"
        );
        let many = memcg_kill(10 * M, 0, 64 * M);
        assert_eq!(
            verdict(&many, Some(&with_stat(60 * M, 2 * M, None))),
            "anon memory of several processes filled the cgroup limit"
        );
        let mut global = memcg_kill(10 * M, 0, 64 * M);
        global.oom.constraint = Some(Constraint::Global);
        assert_eq!(verdict(&global, None), "node out of memory; the OOM killer chose python3");
        let node = |victim_mib: u64, other_mib: u64| Explanation {
            candidates: [(1, victim_mib, true), (2, other_mib, false)]
                .map(|(pid, mib, victim)| crate::model::Candidate {
                    pid,
                    comm: format!("t{pid}"),
                    footprint_bytes: mib * M,
                    rss_bytes: mib * M,
                    swap_bytes: 0,
                    pgtables_bytes: 0,
                    oom_score_adj: Some(0),
                    points: None,
                    cgroup: None,
                    container: None,
                    victim,
                })
                .to_vec(),
            ..Default::default()
        };
        assert_eq!(verdict(&global, Some(&node(500, 20))), "node out of memory; python3 was the largest task");
        assert_eq!(verdict(&global, Some(&node(20, 500))), "node out of memory; the OOM killer chose python3");
        let partial = Explanation { partial: true, ..node(500, 20) };
        assert_eq!(verdict(&global, Some(&partial)), "node out of memory; the OOM killer chose python3", "not all was read");
    }

    /// A memcg kill of `comm` holding `rss_mib`, under `limit_mib`, whose process was this.
    fn runtime_kill(comm: &str, rss_mib: u64, limit_mib: u64, argv: &[&str], env: &[(&str, &str)], go: bool) -> OomKill {
        let mut ev = memcg_kill(rss_mib * M, 0, limit_mib * M);
        ev.victim.comm = Some(comm.into());
        let mut e = crate::runtime::Env::default();
        for (k, v) in env {
            e.keep(k, Some(v));
        }
        let p = crate::runtime::Process { argv: argv.iter().map(|s| s.to_string()).collect(), env: e, go_binary: Some(go) };
        ev.victim.runtime = crate::runtime::recognise(&p, Some(limit_mib * M), crate::model::RuntimeSource::Procfs);
        ev
    }

    #[test]
    fn a_jvm_heap_that_leaves_too_little_names_its_setting() {
        let ev = runtime_kill("java", 500, 512, &["java", "-XX:MaxRAMPercentage=90", "-jar", "app.jar"], &[], false);
        let (v, r) = judge(&ev, None);
        assert_eq!(
            v,
            "JVM heap max 462.0MiB (-XX:MaxRAMPercentage=90 of 512.0MiB) leaves 50.0MiB for metaspace, threads and native memory: lower -XX:MaxRAMPercentage below 90 or raise the limit"
        );
        let r = r.unwrap();
        assert_eq!((r.setting.as_deref(), r.limit_bytes), (Some("MaxRAMPercentage"), None));
        let ev = runtime_kill("java", 250, 256, &["java", "Main"], &[("JAVA_TOOL_OPTIONS", "-Xmx200m")], false);
        assert_eq!(
            verdict(&ev, None),
            "JVM heap max 200.0MiB (-Xmx200m (JAVA_TOOL_OPTIONS)) leaves 56.0MiB for metaspace, threads and native memory: lower -Xmx below 200m or raise the limit"
        );
    }

    #[test]
    fn a_ceiling_not_below_the_limit_says_so_and_how_far() {
        let ev = runtime_kill("java", 250, 256, &["java", "-Xmx1g", "Main"], &[], false);
        let (v, r) = judge(&ev, None);
        assert_eq!(
            v,
            "JVM heap max 1.0GiB (-Xmx1g) is not below the cgroup limit 256.0MiB: the kernel kills before the runtime must collect: lower -Xmx below the limit, leaving room for metaspace, threads and native memory, or raise the limit above 1.0GiB"
        );
        assert_eq!(r.unwrap().limit_bytes, Some(1 << 30));
        let ev = runtime_kill("node", 250, 256, &["node", "--max-old-space-size=512", "a.js"], &[], false);
        let (v, r) = judge(&ev, None);
        assert!(v.starts_with("Node old space max 512.0MiB (--max-old-space-size=512) is not below the cgroup limit 256.0MiB"), "{v}");
        assert!(v.contains("lower --max-old-space-size below the limit"), "{v}");
        assert_eq!(r.unwrap().setting.as_deref(), Some("max-old-space-size"));
        let ev = runtime_kill("server", 250, 256, &["/app/server"], &[("GOMEMLIMIT", "1GiB")], true);
        let (v, r) = judge(&ev, None);
        assert!(v.starts_with("GOMEMLIMIT 1.0GiB (GOMEMLIMIT=1GiB) is not below the cgroup limit 256.0MiB"), "{v}");
        let r = r.unwrap();
        assert_eq!((r.setting.as_deref(), r.limit_bytes), (Some("GOMEMLIMIT"), Some(1 << 30)));
    }

    #[test]
    fn native_memory_beyond_the_heap_is_not_blamed_on_the_heap() {
        let ev = runtime_kill("java", 250, 256, &["java", "-Xmx64m", "Main"], &[], false);
        let (v, r) = judge(&ev, None);
        assert_eq!(
            v,
            "java held 250.0MiB with a JVM heap max of 64.0MiB (-Xmx64m): at least 186.0MiB beyond the heap, in metaspace, threads and native memory: find the off-heap memory (direct buffers, thread stacks, native libraries) and cap it, or raise the limit: the heap setting is not what filled it"
        );
        assert_eq!(r.unwrap().setting, None);
    }

    #[test]
    fn go_and_python_without_a_ceiling() {
        let ev = runtime_kill("server", 250, 256, &["/app/server"], &[], true);
        let (v, r) = judge(&ev, None);
        assert_eq!(
            v,
            "server (Go) filled the cgroup limit 256.0MiB with no GOMEMLIMIT: its GC is paced by GOGC alone: set GOMEMLIMIT below the limit 256.0MiB, so the GC works harder before the kernel kills"
        );
        assert_eq!(r.unwrap().setting.as_deref(), Some("GOMEMLIMIT"));
        let ev = runtime_kill("server", 250, 256, &["/app/server"], &[("GOMEMLIMIT", "200MiB")], true);
        assert!(verdict(&ev, None).starts_with("server (Go) held 250.0MiB past its GOMEMLIMIT 200.0MiB (GOMEMLIMIT=200MiB), a soft limit"));
        let ev = runtime_kill("python3", 60, 64, &["python3", "app.py"], &[], false);
        let (v, r) = judge(&ev, None);
        assert_eq!(
            v,
            "python3 (Python) filled the cgroup limit 64.0MiB, and CPython has no heap ceiling: raise the limit or reduce what the program keeps in memory"
        );
        assert_eq!(r.unwrap().setting, None);
    }

    #[test]
    fn a_runtime_that_did_not_fill_the_limit_or_cannot_be_read_leaves_the_other_rules() {
        // Another process held most of it.
        let ev = runtime_kill("java", 20, 256, &["java", "-Xmx1g", "Main"], &[], false);
        assert_eq!(judge(&ev, Some(&with_stat(250 * M, 0, None))), ("anon memory of several processes filled the cgroup limit".into(), None));
        let ev = runtime_kill("java", 250, 256, &["java", "@/app/jvm.args", "Main"], &[], false);
        assert_eq!(judge(&ev, None), ("anon memory of java filled the cgroup limit".into(), None));
        let ev = runtime_kill("node", 250, 256, &["node", "a.js"], &[], false);
        assert_eq!(judge(&ev, None).1, None, "V8's default is not modelled");
        // Page cache is the story, whatever the runtime.
        let ev = runtime_kill("java", 250, 256, &["java", "-Xmx1g", "Main"], &[], false);
        assert!(judge(&ev, Some(&with_stat(M, 200 * M, None))).0.starts_with("page cache"));
    }

    #[test]
    fn pod_level_verdict() {
        let mut ev = memcg_kill(10 * M, 0, 64 * M);
        let uid = "0e0b1f4c-5a2d-4d0e-9b1c-1f2e3d4c5b6a";
        ev.oom.cgroup = Some(format!("/kubepods/burstable/pod{uid}"));
        let mut k = crate::model::test_k8s(Level::Container);
        k.oom_cgroup_level = Some(Level::Pod);
        ev.k8s = Some(k);
        assert_eq!(
            verdict(&ev, None),
            "pod-level limit hit while every container was under its own"
        );
    }

    #[test]
    fn stat_names_are_normalised() {
        let v1 = "cache 100\nrss 5\ntotal_cache 4096\ntotal_rss 8192\ntotal_shmem 1024\ntotal_mapped_file 10\ntotal_dirty 3\ntotal_writeback 0\ntotal_swap 7\n";
        let s = parse_memory_stat(MemoryVersion::V1, v1);
        assert_eq!(
            (s.anon_bytes, s.file_bytes, s.shmem_bytes, s.swap_bytes),
            (Some(8192), Some(4096), Some(1024), Some(7))
        );
        let v2 = "anon 8192\nfile 4096\nkernel 512\nslab 256\nsock 0\nshmem 1024\nfile_mapped 10\nfile_dirty 3\nfile_writeback 0\n";
        let s = parse_memory_stat(MemoryVersion::V2, v2);
        assert_eq!(
            (s.anon_bytes, s.kernel_bytes, s.slab_bytes, s.sock_bytes),
            (Some(8192), Some(512), Some(256), Some(0))
        );
    }

    #[test]
    fn pressure() {
        let p = parse_pressure("some avg10=1.50 avg60=0.20 avg300=0.00 total=1\nfull avg10=0.75 avg60=0.10 avg300=0.00 total=1\n");
        assert_eq!(
            p,
            Pressure {
                some_avg10: Some(1.5),
                full_avg10: Some(0.75)
            }
        );
    }
}
