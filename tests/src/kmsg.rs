//! The kernel log as the test oracle: what the kernel itself printed for each OOM kill.
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

/// A `Killed process …` line of the kernel's OOM report (not rate-limited).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KilledProcess {
    pub pid: u32,
    pub comm: String,
    pub total_vm_kb: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
    pub uid: u32,
    pub oom_score_adj: i32,
    /// "Memory cgroup out of memory" vs "Out of memory".
    pub memcg: bool,
}

/// An `oom-kill:constraint=…` line (rate-limited by the kernel, so it may be missing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OomKillLine {
    pub constraint: String,
    pub oom_memcg: Option<String>,
    pub task_memcg: Option<String>,
    pub task: String,
    pub pid: u32,
}

/// Reads `/dev/kmsg` from the moment it was opened.
pub struct Kmsg {
    file: std::fs::File,
    pub lines: Vec<String>,
}

impl Kmsg {
    /// Opens the log positioned at its end: only what the kernel prints from now on is seen.
    pub fn open() -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")?;
        // SAFETY: valid fd; SEEK_END on /dev/kmsg moves past every existing record.
        unsafe { libc::lseek(std::os::fd::AsRawFd::as_raw_fd(&file), 0, libc::SEEK_END) };
        Ok(Self { file, lines: Vec::new() })
    }

    /// Reads every record available now.
    pub fn poll(&mut self) {
        let mut buf = vec![0u8; 8192];
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    let rec = String::from_utf8_lossy(&buf[..n]);
                    // "prio,seq,usec,flags;message\n continuation…"
                    if let Some((_, msg)) = rec.split_once(';') {
                        self.lines.push(msg.lines().next().unwrap_or("").to_string());
                    }
                }
                // EPIPE: records were overwritten before we read them; keep going.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(_) => return,
            }
        }
    }

    pub fn killed(&mut self) -> Vec<KilledProcess> {
        self.poll();
        self.lines.iter().filter_map(|l| parse_killed(l)).collect()
    }

    pub fn oom_kill_lines(&mut self) -> Vec<OomKillLine> {
        self.poll();
        self.lines.iter().filter_map(|l| parse_oom_kill(l)).collect()
    }

    /// Waits until the kernel has printed a `Killed process` line for `pid`.
    pub fn wait_killed(&mut self, pid: u32, timeout: Duration) -> Option<KilledProcess> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(k) = self.killed().into_iter().find(|k| k.pid == pid) {
                return Some(k);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn field<'a>(s: &'a str, key: &str) -> Option<&'a str> {
    let start = s.find(key)? + key.len();
    let rest = &s[start..];
    let end = rest.find([',', ' ']).unwrap_or(rest.len());
    Some(&rest[..end])
}

fn kb(s: &str, key: &str) -> Option<u64> {
    field(s, key)?.trim_end_matches("kB").parse().ok()
}

/// `Memory cgroup out of memory: Killed process 123 (hog) total-vm:…kB, anon-rss:…kB,
/// file-rss:…kB, shmem-rss:…kB, UID:0 pgtables:…kB oom_score_adj:0`
pub fn parse_killed(line: &str) -> Option<KilledProcess> {
    let at = line.find("Killed process ")?;
    let rest = &line[at + "Killed process ".len()..];
    let (pid, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix('(')?;
    let close = rest.rfind(") total-vm:")?;
    let comm = &rest[..close];
    let rest = &rest[close..];
    Some(KilledProcess {
        pid: pid.parse().ok()?,
        comm: comm.to_string(),
        total_vm_kb: kb(rest, "total-vm:")?,
        anon_rss_kb: kb(rest, "anon-rss:")?,
        file_rss_kb: kb(rest, "file-rss:")?,
        shmem_rss_kb: kb(rest, "shmem-rss:")?,
        uid: field(rest, "UID:")?.parse().ok()?,
        oom_score_adj: field(rest, "oom_score_adj:")?.parse().ok()?,
        memcg: line[..at].contains("Memory cgroup"),
    })
}

/// `oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,
/// oom_memcg=/x,task_memcg=/x,task=hog,pid=123,uid=0`
pub fn parse_oom_kill(line: &str) -> Option<OomKillLine> {
    let rest = &line[line.find("oom-kill:")? + "oom-kill:".len()..];
    let kv = |k: &str| {
        rest.split(',').find_map(|p| p.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
    };
    Some(OomKillLine {
        constraint: kv("constraint")?.to_string(),
        oom_memcg: kv("oom_memcg").map(str::to_string),
        task_memcg: kv("task_memcg").map(str::to_string),
        task: kv("task")?.to_string(),
        pid: kv("pid")?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn killed_line() {
        let l = "Memory cgroup out of memory: Killed process 4242 (python3 x) total-vm:80000kB, anon-rss:65000kB, file-rss:1200kB, shmem-rss:0kB, UID:1000 pgtables:180kB oom_score_adj:-998";
        let k = parse_killed(l).unwrap();
        assert_eq!(k.pid, 4242);
        assert_eq!(k.comm, "python3 x");
        assert_eq!(k.anon_rss_kb, 65000);
        assert_eq!(k.uid, 1000);
        assert_eq!(k.oom_score_adj, -998);
        assert!(k.memcg);
    }

    #[test]
    fn oom_kill_line() {
        let l = "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/t1,task_memcg=/t1/c,task=oomtrace-hog,pid=77,uid=0";
        let o = parse_oom_kill(l).unwrap();
        assert_eq!(o.constraint, "CONSTRAINT_MEMCG");
        assert_eq!(o.oom_memcg.as_deref(), Some("/t1"));
        assert_eq!(o.task_memcg.as_deref(), Some("/t1/c"));
        assert_eq!(o.pid, 77);
    }
}
