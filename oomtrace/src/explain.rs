//! Why the kill happened: the OOM cgroup's memory breakdown, its biggest tasks, and a one-line
//! verdict, gathered right after the kill.
//!
//! The kernel walk gives limit and usage *at* the kill; the breakdown (`memory.stat`), memory
//! PSI and the task list are read from cgroupfs and procfs immediately after it, within
//! milliseconds (`gathered_after_ms` says how long after). v1 and v2 `memory.stat` names are
//! normalised to one set; a figure a hierarchy does not have is `null`.
use crate::cgroup_fs::{read, read_u64, Hierarchies, MemoryVersion};
use crate::event::OomKill;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// How many tasks `oom.tasks` lists (largest RSS first), like the kernel's own dump but bounded.
pub const TOP_TASKS: usize = 8;

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

/// What `explain` adds under `oom`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Explanation {
    pub memory_stat: Option<MemoryStat>,
    pub swap_usage_bytes: Option<u64>,
    pub high_bytes: Option<u64>,
    pub pressure: Option<Pressure>,
    /// Largest tasks of the OOM cgroup; the victim with its RSS at the kill.
    pub tasks: Vec<TaskRss>,
    /// `cgroupfs+procfs` (read right after the kill); null when nothing was gathered.
    pub details_source: Option<String>,
    /// How long after the kill the details were read.
    pub details_after_ms: Option<f64>,
}

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
    Pressure { some_avg10: avg10("some"), full_avg10: avg10("full") }
}

/// RSS of one task from `/proc/<pid>/status` (kB figures).
fn task_rss(pid: u32) -> Option<TaskRss> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut comm = String::new();
    let (mut anon, mut file, mut shmem) = (0u64, 0u64, 0u64);
    for l in status.lines() {
        let (k, v) = l.split_once(':')?;
        let kb = || v.trim().trim_end_matches(" kB").parse::<u64>().unwrap_or(0) * 1024;
        match k {
            "Name" => comm = v.trim().to_string(),
            "RssAnon" => anon = kb(),
            "RssFile" => file = kb(),
            "RssShmem" => shmem = kb(),
            _ => {}
        }
    }
    Some(TaskRss { pid, comm, rss_bytes: anon + file + shmem, rss_anon_bytes: anon, rss_file_bytes: file, rss_shmem_bytes: shmem })
}

/// Bound on the processes looked at (an OOM of a huge cgroup must not stall the tracer).
const MAX_PROCS: usize = 4096;

/// Every process in `dir` and the cgroups below it.
fn procs_below(dir: &Path, out: &mut Vec<u32>, depth: u32) {
    if depth > 16 || out.len() >= MAX_PROCS {
        return;
    }
    if let Some(t) = read(dir, "cgroup.procs") {
        out.extend(t.lines().filter_map(|l| l.trim().parse::<u32>().ok()).take(MAX_PROCS - out.len()));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                procs_below(&e.path(), out, depth + 1);
            }
        }
    }
}

/// Gathers the explanation of `ev`'s OOM cgroup (memcg OOMs only; a node-wide OOM has no
/// cgroup to break down). `killed_at` is when the kernel marked the victim.
pub fn gather(ev: &OomKill, h: &Hierarchies, killed_at: std::time::SystemTime) -> Option<Explanation> {
    if ev.oom.constraint.as_deref() != Some("memcg") {
        return None;
    }
    let (version, _) = h.memory.as_ref()?;
    let dir = h.memory_dir(ev.oom.cgroup.as_deref()?)?;
    let mut x = Explanation {
        memory_stat: read(&dir, "memory.stat").map(|t| parse_memory_stat(*version, &t)),
        details_source: Some("cgroupfs+procfs".into()),
        ..Default::default()
    };
    match version {
        MemoryVersion::V1 => {
            let memsw = read_u64(&dir, "memory.memsw.usage_in_bytes");
            let usage = read_u64(&dir, "memory.usage_in_bytes");
            x.swap_usage_bytes = memsw.zip(usage).map(|(m, u)| m.saturating_sub(u));
            if let Some(ms) = x.memory_stat.as_mut() {
                ms.kernel_bytes = read_u64(&dir, "memory.kmem.usage_in_bytes");
                ms.sock_bytes = read_u64(&dir, "memory.kmem.tcp.usage_in_bytes");
            }
        }
        MemoryVersion::V2 => {
            x.swap_usage_bytes = read_u64(&dir, "memory.swap.current");
            x.high_bytes = read_u64(&dir, "memory.high");
            x.pressure = read(&dir, "memory.pressure").map(|t| parse_pressure(&t));
            if let Some(ms) = x.memory_stat.as_mut() {
                ms.swap_bytes = x.swap_usage_bytes;
            }
        }
    }
    let mut pids = Vec::new();
    procs_below(&dir, &mut pids, 0);
    let victim = ev.victim.pid;
    let mut tasks: Vec<TaskRss> = pids
        .into_iter()
        .filter(|p| Some(*p) != victim)
        .filter_map(task_rss)
        .collect();
    // The victim as the kernel saw it at the kill (by now its memory is being reaped).
    if let (Some(pid), Some(a), Some(f), Some(s)) =
        (victim, ev.victim.rss_anon_bytes, ev.victim.rss_file_bytes, ev.victim.rss_shmem_bytes)
    {
        tasks.push(TaskRss {
            pid,
            comm: ev.victim.comm.clone().unwrap_or_default(),
            rss_bytes: a + f + s,
            rss_anon_bytes: a,
            rss_file_bytes: f,
            rss_shmem_bytes: s,
        });
    }
    tasks.sort_by(|a, b| b.rss_bytes.cmp(&a.rss_bytes).then(a.pid.cmp(&b.pid)));
    tasks.truncate(TOP_TASKS);
    x.tasks = tasks;
    x.details_after_ms = killed_at.elapsed().ok().map(|d| d.as_secs_f64() * 1000.0);
    Some(x)
}

fn pct(part: u64, whole: u64) -> u64 {
    if whole == 0 {
        0
    } else {
        part * 100 / whole
    }
}

/// One line an on-call engineer reads first. The rules, in order:
/// 1. node-wide OOM → "node out of memory; <victim> was the largest task";
/// 2. the OOM cgroup is a pod-level cgroup → "pod-level limit hit while every container was
///    under its own";
/// 3. page cache + tmpfs ≥ 50 % of usage → "page cache + tmpfs (shmem) made up N % of usage";
/// 4. kernel memory ≥ 30 % → "kernel memory (slab, sockets, …) made up N % of usage";
/// 5. the victim's own anon memory ≥ 50 % of the limit → "anon memory of <comm> filled the
///    <scope> limit";
/// 6. anon ≥ 50 % → "anon memory of several processes filled the <scope> limit";
/// 7. otherwise "<scope> limit hit".
pub fn verdict(ev: &OomKill, x: Option<&Explanation>) -> String {
    let comm = ev.victim.comm.as_deref().unwrap_or("the victim");
    match ev.oom.constraint.as_deref() {
        Some("global") => return format!("node out of memory; {comm} was the largest task"),
        Some("memcg") => {}
        Some(other) => return format!("{other}-constrained OOM"),
        None => return "OOM of unknown scope".into(),
    }
    let level = ev.k8s.as_ref().map(|k| k.cgroup_level.as_str());
    let oom_is_pod = ev.oom.cgroup.as_deref().and_then(crate::k8s::cgroup_path::parse).is_some_and(|kc| {
        kc.level == crate::k8s::cgroup_path::Level::Pod
    });
    if oom_is_pod && matches!(level, Some("container" | "container_child")) {
        return "pod-level limit hit while every container was under its own".into();
    }
    let scope = if ev.k8s.is_some() { if oom_is_pod { "pod" } else { "container" } } else { "cgroup" };
    let usage = ev.oom.usage_bytes.or(ev.oom.limit_bytes).unwrap_or(0);
    let stat = x.and_then(|x| x.memory_stat.as_ref());
    if let Some(s) = stat {
        let cache = s.file_bytes.unwrap_or(0);
        // v2's `file` includes shmem; v1's `cache` too.
        if usage > 0 && pct(cache, usage) >= 50 {
            return format!("page cache + tmpfs (shmem) made up {} % of usage", pct(cache, usage));
        }
        let kernel = s.kernel_bytes.or(s.slab_bytes).unwrap_or(0);
        if usage > 0 && pct(kernel, usage) >= 30 {
            return format!("kernel memory (slab, sockets, …) made up {} % of usage", pct(kernel, usage));
        }
    }
    let victim_anon = ev.victim.rss_anon_bytes.unwrap_or(0);
    if let Some(limit) = ev.oom.limit_bytes {
        if pct(victim_anon, limit) >= 50 {
            return format!("anon memory of {comm} filled the {scope} limit");
        }
        if let Some(anon) = stat.and_then(|s| s.anon_bytes) {
            if pct(anon, limit) >= 50 {
                return format!("anon memory of several processes filled the {scope} limit");
            }
        }
    }
    format!("{scope} limit hit")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memcg_kill(anon: u64, shmem: u64, limit: u64) -> OomKill {
        crate::event::test_kill(serde_json::json!({
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
        assert_eq!(verdict(&anon, Some(&with_stat(62 * M, 1 * M, None))), "anon memory of python3 filled the cgroup limit");
        let shm = memcg_kill(1 * M, 60 * M, 64 * M);
        assert_eq!(verdict(&shm, Some(&with_stat(1 * M, 62 * M, None))), "page cache + tmpfs (shmem) made up 96 % of usage");
        let slab = memcg_kill(10 * M, 0, 64 * M);
        assert_eq!(
            verdict(&slab, Some(&with_stat(20 * M, 4 * M, Some(40 * M)))),
            "kernel memory (slab, sockets, …) made up 62 % of usage"
        );
        let many = memcg_kill(10 * M, 0, 64 * M);
        assert_eq!(verdict(&many, Some(&with_stat(60 * M, 2 * M, None))), "anon memory of several processes filled the cgroup limit");
        let mut global = memcg_kill(10 * M, 0, 64 * M);
        global.oom.constraint = Some("global".into());
        assert_eq!(verdict(&global, None), "node out of memory; python3 was the largest task");
    }

    #[test]
    fn pod_level_verdict() {
        let mut ev = memcg_kill(10 * M, 0, 64 * M);
        let uid = "0e0b1f4c-5a2d-4d0e-9b1c-1f2e3d4c5b6a";
        ev.oom.cgroup = Some(format!("/kubepods/burstable/pod{uid}"));
        ev.k8s = Some(crate::k8s::attribution::K8s { cgroup_level: "container".into(), ..Default::default() });
        assert_eq!(verdict(&ev, None), "pod-level limit hit while every container was under its own");
    }

    #[test]
    fn stat_names_are_normalised() {
        let v1 = "cache 100\nrss 5\ntotal_cache 4096\ntotal_rss 8192\ntotal_shmem 1024\ntotal_mapped_file 10\ntotal_dirty 3\ntotal_writeback 0\ntotal_swap 7\n";
        let s = parse_memory_stat(MemoryVersion::V1, v1);
        assert_eq!((s.anon_bytes, s.file_bytes, s.shmem_bytes, s.swap_bytes), (Some(8192), Some(4096), Some(1024), Some(7)));
        let v2 = "anon 8192\nfile 4096\nkernel 512\nslab 256\nsock 0\nshmem 1024\nfile_mapped 10\nfile_dirty 3\nfile_writeback 0\n";
        let s = parse_memory_stat(MemoryVersion::V2, v2);
        assert_eq!((s.anon_bytes, s.kernel_bytes, s.slab_bytes, s.sock_bytes), (Some(8192), Some(512), Some(256), Some(0)));
    }

    #[test]
    fn pressure() {
        let p = parse_pressure("some avg10=1.50 avg60=0.20 avg300=0.00 total=1\nfull avg10=0.75 avg60=0.10 avg300=0.00 total=1\n");
        assert_eq!(p, Pressure { some_avg10: Some(1.5), full_avg10: Some(0.75) });
    }
}
