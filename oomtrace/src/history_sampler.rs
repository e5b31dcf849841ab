//! Samples the usage of every limited memory cgroup once a second into the [`History`].
//!
//! The memory hierarchy is walked every [`RESCAN`] for cgroups with a finite limit (v2
//! `memory.max`, v1 `memory.limit_in_bytes`; for a cgroup that had none, read again only while
//! it is young and then every 30 s); each followed cgroup's usage file (v2
//! `memory.current`, v1 `memory.usage_in_bytes`) stays open and is re-read with `pread`, so a
//! round costs one syscall per cgroup. It runs on a thread of its own: a slow cgroupfs never
//! holds up the capture path.
use crate::cgroup_fs::{Hierarchies, MemoryVersion};
use crate::history::{History, MAX_CGROUPS};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How often the hierarchy is walked for new and removed cgroups. A walk of 1 000 cgroups
/// costs about 10 ms of CPU (cgroupfs `getdents` is linear in a directory's entries), as
/// much as 5 s of sampling them: see the bench's `history` part.
pub const RESCAN: Duration = Duration::from_secs(10);
const TICK: Duration = Duration::from_secs(1);
/// v1 writes "unlimited" as the largest page-aligned counter; anything this large is no limit.
const UNLIMITED: u64 = 1 << 62;
/// File descriptors left for everything else when the cap is set by `RLIMIT_NOFILE`.
const FD_RESERVE: u64 = 256;
/// Directories walked at most per rescan (a node with runaway cgroup creation stays bounded).
const MAX_DIRS: usize = 65_536;

/// The usage and limit file names of a memory hierarchy version.
fn files(version: MemoryVersion) -> (&'static str, &'static str) {
    match version {
        MemoryVersion::V1 => ("memory.usage_in_bytes", "memory.limit_in_bytes"),
        MemoryVersion::V2 => ("memory.current", "memory.max"),
    }
}

/// A limit file's value when it is a finite limit.
pub fn parse_limit(text: &str) -> Option<u64> {
    text.trim().parse::<u64>().ok().filter(|&l| l < UNLIMITED)
}

/// The cgroup directories under `root` (paths relative to it, `/`-rooted; not the root).
fn cgroups(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if out.len() >= MAX_DIRS {
            tracing::warn!("memory history: more than {MAX_DIRS} cgroups under {}; the rest are not followed", root.display());
            break;
        }
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for entry in rd.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
        if let Ok(rel) = dir.strip_prefix(root) {
            if dir != root {
                out.push(format!("/{}", rel.to_string_lossy()));
            }
        }
    }
    out
}

/// What a rescan remembers of a cgroup directory, so that it reads the limit files of limited
/// and young ones only, and now and then of those that had none.
struct Seen {
    limit: Option<u64>,
    first: Instant,
    checked: Instant,
}

/// A cgroup without a limit is looked at again on every rescan while it is this young (its
/// limit is usually written right after the mkdir), then at this interval.
const YOUNG: Duration = Duration::from_secs(15);
const RECHECK: Duration = Duration::from_secs(30);

/// How many cgroups may be followed: [`MAX_CGROUPS`], or fewer when the open-file limit
/// (raised to its hard limit first) leaves less room.
fn cap() -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid pointer to a rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return MAX_CGROUPS;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: valid pointer to a rlimit; raising the soft limit to the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    usize::try_from(lim.rlim_cur.saturating_sub(FD_RESERVE)).unwrap_or(MAX_CGROUPS).min(MAX_CGROUPS)
}

/// The sampler: the followed cgroups' open usage files.
struct Sampler {
    root: PathBuf,
    version: MemoryVersion,
    open: HashMap<String, File>,
    seen: HashMap<String, Seen>,
    cap: usize,
}

impl Sampler {
    /// The limited cgroups now, with their limits (read again on every walk: `top` shows them).
    fn limited(&mut self, limit_file: &str) -> Vec<(String, u64)> {
        let now = Instant::now();
        let dirs = cgroups(&self.root);
        let here: std::collections::HashSet<&String> = dirs.iter().collect();
        self.seen.retain(|p, _| here.contains(p));
        let mut out = Vec::new();
        for rel in &dirs {
            let recheck = |s: &Seen| s.limit.is_some() || now - s.first < YOUNG || now - s.checked >= RECHECK;
            if self.seen.get(rel).is_none_or(recheck) {
                let dir = self.root.join(rel.trim_start_matches('/'));
                let limit = std::fs::read_to_string(dir.join(limit_file)).ok().and_then(|t| parse_limit(&t));
                let first = self.seen.get(rel).map_or(now, |s| s.first);
                self.seen.insert(rel.clone(), Seen { limit, first, checked: now });
            }
            if let Some(limit) = self.seen.get(rel).and_then(|s| s.limit) {
                out.push((rel.clone(), limit));
            }
        }
        out
    }

    fn rescan(&mut self, history: &History) {
        let (usage_file, limit_file) = files(self.version);
        let present = self.limited(limit_file);
        let followed = history.set_present(&present, SystemTime::now(), self.cap);
        let keep: std::collections::HashSet<&String> = followed.iter().collect();
        self.open.retain(|p, _| keep.contains(p));
        for path in followed {
            if !self.open.contains_key(&path) {
                let file = self.root.join(path.trim_start_matches('/')).join(usage_file);
                if let Ok(f) = File::open(file) {
                    self.open.insert(path, f);
                }
            }
        }
    }

    fn sample(&self, history: &History) {
        let mut buf = [0u8; 32];
        let usage: Vec<(&str, Option<u64>)> = self
            .open
            .iter()
            .map(|(path, f)| {
                let v = f.read_at(&mut buf, 0).ok().and_then(|n| std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok());
                (path.as_str(), v)
            })
            .collect();
        history.record(SystemTime::now(), &usage);
    }
}

/// The sampler's niceness. Its rescans of a large hierarchy take CPU (10 000 cgroups: ~0.1 s
/// here, seconds under emulation), and a kill being reported must not share a core with them
/// as an equal; a sample a little late costs nothing.
const NICE: libc::c_int = 10;

/// Lowers this thread's priority (its own: Linux gives each thread a nice value). Lowering
/// needs no privilege; a failure leaves the default.
fn yield_cpu() {
    // SAFETY: gettid has no preconditions; setpriority on this thread's id only.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    // SAFETY: as above.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE) } != 0 {
        tracing::debug!("memory history: cannot lower its thread's priority: {}", std::io::Error::last_os_error());
    }
}

/// Starts sampling into `history` until `stop` is set; `None` without a memory hierarchy.
pub fn spawn(hierarchies: &Hierarchies, history: Arc<History>, stop: Arc<AtomicBool>) -> Option<std::thread::JoinHandle<()>> {
    let (version, root) = hierarchies.memory.clone()?;
    let mut sampler = Sampler { root, version, open: HashMap::new(), seen: HashMap::new(), cap: cap() };
    let spawned = std::thread::Builder::new().name("memory-history".into()).spawn(move || {
        yield_cpu();
        let mut next = Instant::now();
        let mut rescan_at = next;
        while !stop.load(Relaxed) {
            if Instant::now() >= rescan_at {
                sampler.rescan(&history);
                rescan_at = Instant::now() + RESCAN;
            }
            sampler.sample(&history);
            next += TICK;
            let now = Instant::now();
            if next < now {
                next = now; // behind (a suspended machine): start again from now
            }
            std::thread::sleep(next - now);
        }
    });
    spawned.inspect_err(|e| tracing::warn!("memory history: cannot start its thread: {e}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_of_both_versions() {
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit("536870912\n"), Some(512 << 20));
        assert_eq!(parse_limit(""), None);
    }
}
