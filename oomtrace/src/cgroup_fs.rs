//! The host's cgroup filesystems: where the memory controller is mounted (cgroup v1 or v2),
//! and the limit files read right after a kill when the kernel walk could not give a value.
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// Which cgroup version carries the memory controller on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryVersion {
    V1,
    V2,
}

/// Mount points of the cgroup hierarchies oomtrace reads.
#[derive(Debug, Clone)]
pub struct Hierarchies {
    /// The cgroup2 (unified) mount, if any.
    pub unified: Option<PathBuf>,
    /// Where the memory controller lives, and in which version.
    pub memory: Option<(MemoryVersion, PathBuf)>,
}

impl Hierarchies {
    pub fn detect() -> Result<Self> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")?;
        Ok(Self::from_mountinfo(&text, |p| {
            std::fs::read_to_string(p.join("cgroup.controllers")).unwrap_or_default()
        }))
    }

    /// `controllers` reads a cgroup2 root's `cgroup.controllers` (injected for tests).
    pub fn from_mountinfo(text: &str, controllers: impl Fn(&Path) -> String) -> Self {
        let mut unified = None;
        let mut v1_memory = None;
        for line in text.lines() {
            // id parent maj:min root mountpoint opts [optional...] - fstype source superopts
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            let (Some(mnt), Some(fstype)) = (pre.get(4), post.first()) else {
                continue;
            };
            let mnt = PathBuf::from(unescape_octal(mnt));
            match *fstype {
                "cgroup2" if unified.is_none() => unified = Some(mnt),
                "cgroup" if v1_memory.is_none() => {
                    let superopts = post.get(2).copied().unwrap_or("");
                    if superopts.split(',').any(|o| o == "memory") {
                        v1_memory = Some(mnt);
                    }
                }
                _ => {}
            }
        }
        let memory = match (&v1_memory, &unified) {
            (Some(v1), _) => Some((MemoryVersion::V1, v1.clone())),
            (None, Some(v2)) if controllers(v2).split_whitespace().any(|c| c == "memory") => {
                Some((MemoryVersion::V2, v2.clone()))
            }
            _ => None,
        };
        Self { unified, memory }
    }

    /// Directory of a cgroup v2 cgroup given its path relative to the unified root.
    pub fn unified_dir(&self, rel: &str) -> Option<PathBuf> {
        Some(self.unified.as_ref()?.join(rel.trim_start_matches('/')))
    }

    /// Directory of a memory cgroup given its path relative to the hierarchy root.
    pub fn memory_dir(&self, rel: &str) -> Option<PathBuf> {
        let (_, root) = self.memory.as_ref()?;
        Some(root.join(rel.trim_start_matches('/')))
    }
}

/// The system's page size (the unit of the kernel's memory counters), from sysconf.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|s| s.is_power_of_two()).unwrap_or(4096)
}

/// The kernel's id of a cgroup: its kernfs node id, which is the directory's inode number.
pub fn cgroup_id(dir: PathBuf) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().map(|m| m.ino())
}

/// mountinfo escapes spaces and the like as `\040`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let digits = b
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok());
        if let (b'\\', Some(Ok(v))) = (b[i], digits.map(|d| u8::from_str_radix(d, 8))) {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Limit, usage and peak of a memory cgroup, read from cgroupfs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupfsMemory {
    pub limit_bytes: Option<u64>,
    pub usage_bytes: Option<u64>,
    pub peak_bytes: Option<u64>,
    pub swap_limit_bytes: Option<u64>,
}

/// "max" (v2) and the v1 "unlimited" value (PAGE_COUNTER_MAX * page size, rounded) are
/// reported as no limit.
fn parse_limit(s: &str) -> Option<u64> {
    let s = s.trim();
    if s == "max" {
        return None;
    }
    let v: u64 = s.parse().ok()?;
    (v < (1u64 << 62)).then_some(v)
}

/// A cgroupfs file's contents; `None` when it is missing (or the cgroup is gone).
pub fn read(dir: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(file)).ok()
}

/// A cgroupfs file holding one number.
pub fn read_u64(dir: &Path, file: &str) -> Option<u64> {
    read(dir, file)?.trim().parse().ok()
}

fn read_limit(dir: &Path, file: &str) -> Option<u64> {
    parse_limit(&read(dir, file)?)
}

/// Reads what cgroupfs says of a memory cgroup right now.
pub fn read_memory(version: MemoryVersion, dir: &Path) -> Result<CgroupfsMemory> {
    if !dir.is_dir() {
        bail!("{} no longer exists", dir.display());
    }
    Ok(match version {
        MemoryVersion::V1 => CgroupfsMemory {
            limit_bytes: read_limit(dir, "memory.limit_in_bytes"),
            usage_bytes: read_u64(dir, "memory.usage_in_bytes"),
            peak_bytes: read_u64(dir, "memory.max_usage_in_bytes"),
            swap_limit_bytes: read_limit(dir, "memory.memsw.limit_in_bytes"),
        },
        MemoryVersion::V2 => CgroupfsMemory {
            limit_bytes: read_limit(dir, "memory.max"),
            usage_bytes: read_u64(dir, "memory.current"),
            peak_bytes: read_u64(dir, "memory.peak"),
            swap_limit_bytes: read_limit(dir, "memory.swap.max"),
        },
    })
}

/// The victim's cgroups from `/proc/<pid>/cgroup`: (cgroup v2 path, v1 memory path).
/// Used only when the kernel could not hand us the task (classic tracepoint strategy).
///
/// The victim is dying while we read. On v1 hierarchies the kernel shows an exiting task
/// (PF_EXITING) in `/`, so the v1 path is kept only if the task was not exiting yet *after*
/// the read; otherwise it is unknown, never `/`. Both files are read through one handle on
/// `/proc/<pid>`, so a reused pid cannot mix two processes.
pub fn proc_cgroups(pid: u32) -> Option<(Option<String>, Option<String>)> {
    let dir = std::fs::File::open(format!("/proc/{pid}")).ok()?;
    let (v2, mem) = parse_proc_cgroup(&read_at(&dir, c"cgroup")?);
    let exiting = parse_stat_flags(&read_at(&dir, c"stat")?).is_none_or(|f| f & PF_EXITING != 0);
    Some((v2, if exiting { None } else { mem }))
}

/// The kernel's `PF_EXITING` task flag (include/linux/sched.h), never cleared once set.
const PF_EXITING: u64 = 0x4;

/// A file of the process directory `dir` (openat, so it is that process's or nothing).
pub fn read_at(dir: &std::fs::File, name: &std::ffi::CStr) -> Option<String> {
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: a valid directory fd and a NUL-terminated name; the returned fd is owned below.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut text = String::new();
    f.read_to_string(&mut text).ok()?;
    Some(text)
}

/// Field 9 (`flags`) of `/proc/<pid>/stat`; the comm before it may hold spaces and parens.
fn parse_stat_flags(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(6)?.parse().ok()
}

pub fn parse_proc_cgroup(text: &str) -> (Option<String>, Option<String>) {
    let mut v2 = None;
    let mut mem = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" && ctrls.is_empty() {
            // cgroup v2 keeps showing a zombie's cgroup, marked once that cgroup is removed.
            v2 = Some(path.trim_end_matches(" (deleted)").to_string());
        } else if ctrls.split(',').any(|c| c == "memory") {
            mem = Some(path.to_string());
        }
    }
    (v2, mem)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
35 25 0:30 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
40 35 0:35 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 35 0:36 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
";
    const PURE_V2: &str = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";

    #[test]
    fn hybrid_picks_v1_memory() {
        let h = Hierarchies::from_mountinfo(HYBRID, |_| String::new());
        assert_eq!(
            h.unified.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            h.memory,
            Some((MemoryVersion::V1, "/sys/fs/cgroup/memory".into()))
        );
        assert_eq!(
            h.memory_dir("/a/b"),
            Some("/sys/fs/cgroup/memory/a/b".into())
        );
    }

    #[test]
    fn pure_v2_needs_the_memory_controller() {
        let h = Hierarchies::from_mountinfo(PURE_V2, |_| "cpuset cpu io memory pids".into());
        assert_eq!(h.memory, Some((MemoryVersion::V2, "/sys/fs/cgroup".into())));
        let h = Hierarchies::from_mountinfo(PURE_V2, |_| "cpu io".into());
        assert_eq!(h.memory, None);
    }

    #[test]
    fn limits() {
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit("67108864\n"), Some(64 << 20));
        assert_eq!(parse_limit("junk"), None);
    }

    #[test]
    fn proc_cgroup_hybrid() {
        let t = "12:memory:/oomtrace/x\n11:cpu,cpuacct:/\n0::/user.slice\n";
        assert_eq!(
            parse_proc_cgroup(t),
            (Some("/user.slice".into()), Some("/oomtrace/x".into()))
        );
    }

    #[test]
    fn proc_cgroup_of_a_zombie_in_a_removed_v2_cgroup() {
        assert_eq!(
            parse_proc_cgroup("0::/gone (deleted)\n").0.as_deref(),
            Some("/gone")
        );
    }

    #[test]
    fn stat_flags_after_a_hostile_comm() {
        let stat = "42 (a) b (c) R 1 42 42 0 -1 4194564 100 0 0 0";
        assert_eq!(parse_stat_flags(stat), Some(4194564));
        assert_eq!(parse_stat_flags("42 (x"), None);
    }

    #[test]
    fn this_live_process_keeps_its_memory_cgroup() {
        let own = parse_proc_cgroup(&std::fs::read_to_string("/proc/self/cgroup").unwrap());
        assert_eq!(proc_cgroups(std::process::id()), Some(own));
    }

    #[test]
    fn octal_escapes() {
        assert_eq!(unescape_octal("/a\\040b"), "/a b");
        assert_eq!(unescape_octal("/a\\04"), "/a\\04");
    }
}
