//! Small helpers for the bench: clocks, percentiles, /proc readers, child-process guards,
//! interruption.
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Seconds since the bench started (first call).
pub fn since_start() -> f64 {
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

pub fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

pub fn realtime_ns() -> i128 {
    clock_ns(libc::CLOCK_REALTIME)
}

pub fn monotonic_ns() -> i128 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-11-29T11:08:33.328043916Z` (or `+00:00`) → ns since the epoch.
pub fn parse_rfc3339_ns(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    let mut frac_ns = 0i128;
    if let Some(r) = rest.strip_prefix('.') {
        let digits = r.bytes().take_while(u8::is_ascii_digit).count();
        let f = &r[..digits];
        let mut v: i128 = 0;
        for (i, c) in f.bytes().enumerate().take(9) {
            v += i128::from(c - b'0') * 10i128.pow(8 - i as u32);
        }
        frac_ns = v;
        rest = &r[digits..];
    }
    let offset_s: i64 = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            sign * (o[1..3].parse::<i64>().ok()? * 3600 + o[4..6].parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset_s;
    Some(secs as i128 * 1_000_000_000 + frac_ns)
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// p50/p99/max (and min, n) of latencies in milliseconds.
#[derive(Debug, Clone, Default)]
pub struct Dist {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Dist {
    pub fn of(values: &[f64]) -> Self {
        let mut s = values.to_vec();
        s.sort_by(f64::total_cmp);
        if s.is_empty() {
            return Self::default();
        }
        Self {
            n: s.len(),
            min: s[0],
            p50: percentile(&s, 50.0),
            p99: percentile(&s, 99.0),
            max: s[s.len() - 1],
        }
    }

    pub fn json(&self) -> Value {
        if self.n == 0 {
            return json!({ "n": 0 });
        }
        json!({ "n": self.n, "min_ms": r3(self.min), "p50_ms": r3(self.p50), "p99_ms": r3(self.p99), "max_ms": r3(self.max) })
    }

    pub fn show(&self) -> String {
        if self.n == 0 {
            return "—".into();
        }
        format!("{:.2} / {:.2} / {:.2}", self.p50, self.p99, self.max)
    }
}

pub fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT/SIGTERM set a flag that every loop checks, so the bench stops through its normal
/// path and every guard (cgroups, processes, mounts) cleans up.
pub fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        anyhow::bail!("interrupted");
    }
    Ok(())
}

/// Sleeps, but returns early (with an error) when interrupted.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupted()?;
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// A child process that is stopped (SIGTERM, then SIGKILL after `grace`) when dropped.
pub struct ChildGuard {
    pub child: Child,
    pub name: &'static str,
}

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit status if it exited.
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        if let Ok(Some(st)) = self.child.try_wait() {
            return Some(st);
        }
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + grace;
        while Instant::now() < end {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        say!("{} did not exit on SIGTERM within {grace:?}: SIGKILL", self.name);
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("/proc/{pid}/stat"))?;
    // Fields after "(comm) ": state is field 3; utime/stime are fields 14/15.
    let after = &stat[stat.rfind(')').context("malformed stat")? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = f.get(11).context("utime")?.parse()?;
    let stime: f64 = f.get(12).context("stime")?.parse()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((utime + stime) / hz)
}

/// A `kB` line of /proc/<pid>/status (VmRSS, VmHWM, …), in bytes.
pub fn status_kb(pid: u32, key: &str) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .strip_prefix(':')?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kb| kb * 1024)
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

/// Keeps the kernel's BPF run-time statistics on (`BPF_ENABLE_STATS`) while it lives: every
/// program's `run_cnt`/`run_time_ns` count, readable from the fdinfo of its fds. Switched off
/// by the kernel when the fd is closed, even if the bench dies.
pub struct BpfStats(Option<std::os::fd::OwnedFd>);

impl BpfStats {
    pub fn enable() -> Self {
        const BPF_ENABLE_STATS: libc::c_long = 32;
        const BPF_STATS_RUN_TIME: u32 = 0;
        let mut attr = [0u8; 64];
        attr[..4].copy_from_slice(&BPF_STATS_RUN_TIME.to_ne_bytes());
        // SAFETY: bpf(2) with a zeroed attr holding the stats type; returns an fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_ENABLE_STATS, attr.as_mut_ptr(), attr.len() as u32) };
        if fd < 0 {
            say!("cannot enable BPF run-time stats: {}", std::io::Error::last_os_error());
            return Self(None);
        }
        // SAFETY: a fresh fd we own.
        Self(Some(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as i32) }))
    }

    pub fn on(&self) -> bool {
        self.0.is_some()
    }
}

/// Sum of `run_cnt` and `run_time_ns` over the distinct BPF programs process `pid` holds.
pub fn bpf_prog_stats(pid: u32) -> Option<(u64, u64)> {
    let mut seen = std::collections::HashSet::new();
    let (mut cnt, mut ns) = (0u64, 0u64);
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).ok()?.flatten() {
        let Ok(info) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let get = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(':')?.trim().parse::<u64>().ok())
        };
        // Program fds carry run_cnt; link fds only name their program.
        if let (Some(id), Some(c), Some(t)) = (get("prog_id"), get("run_cnt"), get("run_time_ns")) {
            if seen.insert(id) {
                cnt += c;
                ns += t;
            }
        }
    }
    (!seen.is_empty()).then_some((cnt, ns))
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339_ns("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_ns("1970-01-01T00:00:01.5Z"), Some(1_500_000_000));
        assert_eq!(
            parse_rfc3339_ns("2026-11-29T11:08:33.328043916Z"),
            Some(1_795_950_513_328_043_916)
        );
        assert_eq!(
            parse_rfc3339_ns("2026-11-29T12:08:33.328043916+01:00"),
            parse_rfc3339_ns("2026-11-29T11:08:33.328043916Z")
        );
        assert_eq!(parse_rfc3339_ns("garbage"), None);
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
