//! The observers the bench compares: `oomtrace watch -o json`, bpftrace on
//! `tracepoint:oom:mark_victim`, the kernel log (/dev/kmsg) and libbpf-tools' `oomkill`.
//! Each records what it saw with the time the bench read it.
use super::util::{monotonic_ns, realtime_ns, ChildGuard};
use anyhow::{bail, Context, Result};
use oomtrace_tests::kmsg::{parse_killed, parse_oom_kill};
use serde_json::Value;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One JSON line of `oomtrace watch -o json` and when the bench read it (CLOCK_REALTIME, ns).
pub struct Arrived {
    pub event: Value,
    pub read_at_ns: i128,
}

/// A running `oomtrace watch -o json …`.
pub struct OomtraceWatch {
    pub proc: ChildGuard,
    events: Arc<Mutex<Vec<Arrived>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    bad_lines: Arc<Mutex<Vec<String>>>,
    /// The `watching for OOM kills (strategy: …)` line.
    pub strategy: String,
    /// While set, its stdout is not read (a log pipe that stopped reading): once the pipe is
    /// full, every write of oomtrace's blocks.
    stalled: Arc<AtomicBool>,
}

impl OomtraceWatch {
    /// Starts it and waits until it says it is attached. `ready_line` is the stderr prefix
    /// that means attached (`watching for OOM kills`).
    pub fn start(bin: &Path, args: &[&str], envs: &[(&str, &str)]) -> Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.args(["watch", "-o", "json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().with_context(|| format!("spawning {}", bin.display()))?;
        let out = child.stdout.take().context("stdout")?;
        let err = child.stderr.take().context("stderr")?;
        let proc = ChildGuard {
            child,
            name: "oomtrace",
        };
        let events = Arc::new(Mutex::new(Vec::new()));
        let bad_lines = Arc::new(Mutex::new(Vec::new()));
        let stalled = Arc::new(AtomicBool::new(false));
        let (ev, bad, stall) = (events.clone(), bad_lines.clone(), stalled.clone());
        // The reader only reads and stamps; a thread of its own parses, so that the bench's
        // parsing (oomtrace's lines are kilobytes of JSON, bpftrace's a few bytes) neither
        // delays the next read nor counts as oomtrace's latency.
        let (lines_tx, lines) = channel::<(String, i128)>();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                while stall.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = lines_tx.send((line, realtime_ns()));
            }
        });
        std::thread::spawn(move || {
            for (line, read_at_ns) in lines {
                match serde_json::from_str::<Value>(&line) {
                    Ok(event) => ev.lock().unwrap().push(Arrived { event, read_at_ns }),
                    Err(_) => bad.lock().unwrap().push(line),
                }
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let keep = stderr.clone();
        let (ready_tx, ready) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let line = strip_ansi(&line);
                if line.starts_with("watching for OOM kills") {
                    let _ = ready_tx.send(line.clone());
                }
                keep.lock().unwrap().push(line);
            }
        });
        let mut w = Self {
            proc,
            events,
            stderr,
            bad_lines,
            strategy: String::new(),
            stalled,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            super::util::check_interrupted()?;
            match ready.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    w.strategy = line;
                    return Ok(w);
                }
                Err(_) if Instant::now() > deadline => {
                    bail!("oomtrace did not attach within 60 s; stderr:\n{}", w.stderr_text())
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(100));
                    bail!("oomtrace exited before attaching; stderr:\n{}", w.stderr_text())
                }
                Err(_) => {}
            }
        }
    }

    /// Stops reading its stdout for `d` (from now, in the background).
    pub fn stall_for(&self, d: Duration) {
        let stalled = self.stalled.clone();
        stalled.store(true, Ordering::SeqCst);
        std::thread::spawn(move || {
            std::thread::sleep(d);
            stalled.store(false, Ordering::SeqCst);
        });
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    pub fn bad_lines(&self) -> Vec<String> {
        self.bad_lines.lock().unwrap().clone()
    }

    /// Number of events so far matching `pred`.
    pub fn count(&self, pred: &dyn Fn(&Value) -> bool) -> usize {
        self.events.lock().unwrap().iter().filter(|a| pred(&a.event)).count()
    }

    /// Waits until `n` events match `pred` or `timeout` passes; returns how many matched.
    pub fn wait_for(&self, n: usize, timeout: Duration, pred: &dyn Fn(&Value) -> bool) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            super::util::check_interrupted()?;
            let c = self.count(pred);
            if c >= n || Instant::now() > deadline {
                return Ok(c);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Takes the events matching `pred` (with their read times).
    pub fn take(&self, pred: &dyn Fn(&Value) -> bool) -> Vec<Arrived> {
        let mut all = self.events.lock().unwrap();
        let (mine, rest): (Vec<Arrived>, Vec<Arrived>) = all.drain(..).partition(|a| pred(&a.event));
        *all = rest;
        mine
    }
}

/// One victim printed by bpftrace: pid, the probe's `nsecs` (CLOCK_MONOTONIC) and when the
/// bench read the line (CLOCK_MONOTONIC).
#[derive(Debug, Clone, Copy)]
pub struct BpfVictim {
    pub pid: u32,
    pub probe_ns: i128,
    pub read_at_ns: i128,
}

/// bpftrace on `tracepoint:oom:mark_victim`, printing the victim's pid.
pub struct Bpftrace {
    proc: ChildGuard,
    victims: Arc<Mutex<Vec<BpfVictim>>>,
    other: Arc<Mutex<Vec<String>>>,
}

pub const BPFTRACE_SCRIPT: &str =
    r#"tracepoint:oom:mark_victim { printf("%d %llu\n", args->pid, nsecs); } BEGIN { printf("bench-ready\n"); }"#;

impl Bpftrace {
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn start() -> Result<Self> {
        let mut child = Command::new("bpftrace")
            .args(["-B", "line", "-e", BPFTRACE_SCRIPT])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning bpftrace")?;
        let out = child.stdout.take().context("stdout")?;
        let err = child.stderr.take().context("stderr")?;
        let proc = ChildGuard {
            child,
            name: "bpftrace",
        };
        let victims = Arc::new(Mutex::new(Vec::new()));
        let other = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready) = channel();
        let (v, o) = (victims.clone(), other.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let read_at_ns = monotonic_ns();
                let mut it = line.split_whitespace();
                match (
                    it.next().and_then(|p| p.parse().ok()),
                    it.next().and_then(|t| t.parse().ok()),
                    it.next(),
                ) {
                    (Some(pid), Some(probe_ns), None) => v.lock().unwrap().push(BpfVictim {
                        pid,
                        probe_ns,
                        read_at_ns,
                    }),
                    _ => {
                        if line.trim() == "bench-ready" {
                            let _ = ready_tx.send(());
                        }
                        o.lock().unwrap().push(line)
                    }
                }
            }
        });
        let o = other.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                o.lock().unwrap().push(line);
            }
        });
        let b = Self { proc, victims, other };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            super::util::check_interrupted()?;
            match ready.recv_timeout(Duration::from_millis(100)) {
                Ok(()) => return Ok(b),
                Err(_) if Instant::now() > deadline => {
                    bail!("bpftrace did not attach within 60 s: {}", b.messages().join("\n"))
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(100));
                    bail!("bpftrace exited before attaching: {}", b.messages().join("\n"))
                }
                Err(_) => {}
            }
        }
    }

    /// What bpftrace printed besides victims (attach messages, `Lost N events`, errors).
    pub fn messages(&self) -> Vec<String> {
        self.other.lock().unwrap().clone()
    }

    /// Events bpftrace itself says it lost (its perf buffer was full).
    pub fn lost(&self) -> u64 {
        self.messages()
            .iter()
            .filter_map(|l| {
                let rest = l.trim().strip_prefix("Lost ")?;
                rest.split_whitespace().next()?.parse::<u64>().ok()
            })
            .sum()
    }

    pub fn victims(&self) -> Vec<BpfVictim> {
        self.victims.lock().unwrap().clone()
    }

    pub fn wait_for(&self, n: usize, timeout: Duration, pids: &HashSet<u32>) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            super::util::check_interrupted()?;
            let c = self
                .victims
                .lock()
                .unwrap()
                .iter()
                .filter(|v| pids.contains(&v.pid))
                .count();
            if c >= n || Instant::now() > deadline {
                return Ok(c);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops bpftrace (SIGINT makes it flush and print its summary, `Lost` lines included).
    pub fn stop(&mut self) {
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(self.proc.pid() as i32, libc::SIGINT) };
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.proc.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.proc.stop(Duration::from_secs(2));
        std::thread::sleep(Duration::from_millis(100)); // let the readers drain the pipes
    }
}

/// Makes sure bpftrace is installed (Debian package `bpftrace`).
pub fn ensure_bpftrace() -> Result<()> {
    let have = Command::new("bpftrace")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if have.is_ok_and(|s| s.success()) {
        return Ok(());
    }
    xtask::sys::apt_install("bench", &["bpftrace"])
}

/// Mounts tracefs at /sys/kernel/tracing if it is not there (bpftrace needs it); unmounts
/// it again when dropped, only if this guard mounted it.
pub struct TracefsGuard {
    mounted: bool,
}

pub const TRACEFS: &str = "/sys/kernel/tracing";

impl TracefsGuard {
    pub fn ensure() -> Result<Self> {
        if Path::new(TRACEFS).join("events").exists() {
            return Ok(Self { mounted: false });
        }
        let st = Command::new("mount")
            .args(["-t", "tracefs", "nodev", TRACEFS])
            .status()
            .context("mount tracefs")?;
        if !st.success() {
            bail!("mounting tracefs at {TRACEFS} failed ({st})");
        }
        Ok(Self { mounted: true })
    }
}

impl Drop for TracefsGuard {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(TRACEFS).status();
        }
    }
}

/// libbpf-tools' `oomkill` (a kprobe on `oom_kill_process`): running it, or why it cannot run.
pub enum OomkillTool {
    Running {
        _proc: ChildGuard,
        pids: Arc<Mutex<Vec<u32>>>,
    },
    Unavailable(String),
}

impl OomkillTool {
    /// Probes for kprobe support first; only where there is some is the tool installed
    /// (Debian `libbpf-tools`) and started. An attach error makes it unavailable too.
    pub fn start() -> Self {
        let bin = PathBuf::from("/usr/sbin/oomkill");
        let kprobes = Path::new(TRACEFS).join("kprobe_events").exists();
        if !kprobes {
            return Self::Unavailable(format!("n/a (no kprobes: {TRACEFS}/kprobe_events absent)"));
        }
        if !bin.exists() {
            if let Err(e) = xtask::sys::apt_install("bench", &["libbpf-tools"]) {
                return Self::Unavailable(format!("n/a (installing libbpf-tools failed: {e:#})"));
            }
        }
        let spawned = Command::new(&bin)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => return Self::Unavailable(format!("n/a (cannot run {}: {e})", bin.display())),
        };
        let out = child.stdout.take().expect("stdout");
        let mut err = child.stderr.take().expect("stderr");
        let mut proc = ChildGuard { child, name: "oomkill" };
        let pids = Arc::new(Mutex::new(Vec::new()));
        let p = pids.clone();
        std::thread::spawn(move || {
            // `HH:MM:SS Triggered by PID 1 ("x"), OOM kill of PID 2 ("y"), 123 pages, loadavg: …`
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(pid) = line
                    .split_once("OOM kill of PID ")
                    .and_then(|(_, r)| r.split_whitespace().next()?.parse::<u32>().ok())
                {
                    p.lock().unwrap().push(pid);
                }
            }
        });
        // It has no ready message: give it a moment, and if it exited, that was an attach error.
        std::thread::sleep(Duration::from_secs(2));
        if let Ok(Some(st)) = proc.child.try_wait() {
            let mut msg = String::new();
            let _ = err.read_to_string(&mut msg);
            let last = msg.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("").to_string();
            return Self::Unavailable(format!("n/a (attach failed, {st}: {last})"));
        }
        std::thread::spawn(move || {
            let mut sink = String::new();
            let _ = err.read_to_string(&mut sink);
        });
        Self::Running { _proc: proc, pids }
    }

    pub fn pids(&self) -> Option<Vec<u32>> {
        match self {
            Self::Running { pids, .. } => Some(pids.lock().unwrap().clone()),
            Self::Unavailable(_) => None,
        }
    }

    pub fn status(&self) -> String {
        match self {
            Self::Running { .. } => "running".into(),
            Self::Unavailable(why) => why.clone(),
        }
    }
}

/// Records of /dev/kmsg read continuously by a thread (the kernel's log buffer is small and
/// an OOM storm writes a lot: reading late loses records). Counts the records lost (gaps in
/// the sequence numbers).
pub struct KmsgReader {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<KmsgLog>>,
}

#[derive(Debug, Default, Clone)]
pub struct KmsgLog {
    /// OOM-related messages (`Killed process`, `oom-kill:`), first line of each record.
    pub lines: Vec<String>,
    pub records: u64,
    /// Records the kernel overwrote before the bench could read them.
    pub lost_records: u64,
}

impl KmsgLog {
    /// Pids of `Killed process` lines.
    pub fn killed_pids(&self) -> Vec<u32> {
        self.lines
            .iter()
            .filter_map(|l| parse_killed(l))
            .map(|k| k.pid)
            .collect()
    }

    /// Pids of `oom-kill:constraint=…` lines (rate-limited by the kernel).
    pub fn oom_kill_pids(&self) -> Vec<u32> {
        self.lines
            .iter()
            .filter_map(|l| parse_oom_kill(l))
            .map(|k| k.pid)
            .collect()
    }
}

impl KmsgReader {
    /// Starts reading at the current end of the log.
    pub fn start() -> Result<Self> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .context("opening /dev/kmsg")?;
        // SAFETY: valid fd; SEEK_END on /dev/kmsg moves past every existing record.
        unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_END) };
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut log = KmsgLog::default();
            let mut last_seq: Option<u64> = None;
            let mut buf = vec![0u8; 16384];
            loop {
                let stopping = s.load(Ordering::SeqCst);
                loop {
                    match file.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            let rec = String::from_utf8_lossy(&buf[..n]);
                            let Some((hdr, msg)) = rec.split_once(';') else {
                                continue;
                            };
                            if let Some(seq) = hdr.split(',').nth(1).and_then(|s| s.parse::<u64>().ok()) {
                                if let Some(last) = last_seq {
                                    log.lost_records += seq.saturating_sub(last + 1);
                                }
                                last_seq = Some(seq);
                            }
                            log.records += 1;
                            let first = msg.lines().next().unwrap_or("");
                            if first.contains("Killed process ") || first.contains("oom-kill:") {
                                log.lines.push(first.to_string());
                            }
                        }
                        // EPIPE: records were overwritten; the next read continues after
                        // them (the sequence gap counts them).
                        Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                        Err(_) => break,
                    }
                }
                if stopping {
                    return log;
                }
                let mut pfd = libc::pollfd {
                    fd: file.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, 20) };
            }
        });
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops reading (after draining what is there) and returns the log.
    pub fn finish(mut self) -> KmsgLog {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default()
    }
}

impl Drop for KmsgReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The text of a log line without its terminal colour escapes (`ESC [ … m`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC '[' parameters… final byte in '@'..='~'.
            if chars.next() == Some('[') {
                for f in chars.by_ref() {
                    if ('@'..='~').contains(&f) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn strip_ansi() {
        let l = "\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m synced \u{1b}[3mlive\u{1b}[0m\u{1b}[2m=\u{1b}[0m10000";
        assert_eq!(super::strip_ansi(l), "2026  INFO synced live=10000");
    }
}
