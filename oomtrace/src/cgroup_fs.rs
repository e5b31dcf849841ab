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
            let Some((pre, post)) = line.split_once(" - ") else { continue };
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            let (Some(mnt), Some(fstype)) = (pre.get(4), post.first()) else { continue };
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
            (None, Some(v2))
                if controllers(v2).split_whitespace().any(|c| c == "memory") =>
            {
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
        let digits = b.get(i + 1..i + 4).and_then(|d| std::str::from_utf8(d).ok());
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
pub fn proc_cgroups(pid: u32) -> Option<(Option<String>, Option<String>)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    Some(parse_proc_cgroup(&text))
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
            v2 = Some(path.to_string());
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
        assert_eq!(h.unified.as_deref(), Some(Path::new("/sys/fs/cgroup/unified")));
        assert_eq!(h.memory, Some((MemoryVersion::V1, "/sys/fs/cgroup/memory".into())));
        assert_eq!(h.memory_dir("/a/b"), Some("/sys/fs/cgroup/memory/a/b".into()));
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
    fn octal_escapes() {
        assert_eq!(unescape_octal("/a\\040b"), "/a b");
        assert_eq!(unescape_octal("/a\\04"), "/a\\04");
    }
}
