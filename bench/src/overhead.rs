//! Overhead on the allocation path: a page-fault-heavy workload in a memcg held at its limit
//! (so every fault charges and the memcg reclaims), timed with oomtrace attached and not,
//! alternating ABAB… in the same run.
//!
//! The workload is this very binary re-executed (`/proc/self/exe bench --fault-workload T:R`) inside
//! the cgroup: it maps R MiB of anonymous memory and sweeps it until T MiB were written, one
//! byte per page, `MADV_FREE`-ing each chunk after writing it. Lazily-freed pages are
//! reclaimable without swap, so with a limit of R/4 the memcg reclaims them continuously and
//! the next sweep faults them in again: a fault + charge + reclaim per page, no I/O and
//! never an OOM kill. It runs at nice −20 so that other work on the machine disturbs it less.
use super::observers::OomtraceWatch;
use super::util::{bpf_prog_stats, check_interrupted, cpu_seconds, median, r3, sleep};
use super::Ctx;
use anyhow::{bail, Context, Result};
use oomtrace_tests::cgroup::TestCgroup;
use serde_json::{json, Value};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
const CHUNK: usize = 4 * MIB;
const PAGE: usize = 4096;

/// The child side: `T:R` (MiB written in total : MiB of the region). Prints one JSON line.
pub fn workload(spec: &str) -> Result<()> {
    let (t, r) = spec.split_once(':').context("--fault-workload TOTAL_MIB:REGION_MIB")?;
    let total: usize = t.parse::<usize>()? * MIB;
    let region: usize = r.parse::<usize>()? * MIB;
    if region < CHUNK || !region.is_multiple_of(CHUNK) {
        bail!("the region must be a multiple of {} MiB", CHUNK / MIB);
    }
    // SAFETY: fresh private anonymous mapping.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            region,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        bail!("mmap: {}", std::io::Error::last_os_error());
    }
    let base = p.cast::<u8>();
    // The machine may be busy with other work: take the CPU first (nice −20), so the round
    // times the workload rather than the scheduler.
    // SAFETY: plain syscall on ourselves.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -20) };
    let start = Instant::now();
    let mut written = 0usize;
    'outer: loop {
        for off in (0..region).step_by(CHUNK) {
            for pg in (0..CHUNK).step_by(PAGE) {
                // SAFETY: inside the mapping.
                unsafe { base.add(off + pg).write_volatile(1) };
            }
            // SAFETY: a chunk of our mapping.
            if unsafe { libc::madvise(base.add(off).cast(), CHUNK, libc::MADV_FREE) } != 0 {
                bail!("madvise(MADV_FREE): {}", std::io::Error::last_os_error());
            }
            written += CHUNK;
            if written >= total {
                break 'outer;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    // SAFETY: valid out-pointer.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    println!(
        "{}",
        json!({ "secs": secs, "minflt": ru.ru_minflt, "majflt": ru.ru_majflt, "utime": tv(ru.ru_utime), "stime": tv(ru.ru_stime), "pages": written / PAGE })
    );
    Ok(())
}

#[derive(Debug, Clone)]
pub struct Round {
    pub attached: bool,
    /// Wall time of the sweep.
    pub secs: f64,
    /// CPU time (user + system) of the sweep: faults, charges and reclaim all run in the
    /// workload's own context, and so would any BPF program on that path.
    pub cpu: f64,
    pub minflt: u64,
    /// oomtrace's own CPU during the round (attached rounds only).
    pub oomtrace_cpu: Option<f64>,
    /// oomtrace's BPF programs during the round: (runs, ns) (attached rounds, stats on).
    pub bpf: Option<(u64, u64)>,
    /// Pages the memcg uncharged during the round (v1 `total_pgpgout`, v2 `pgscan`).
    pub reclaimed_pages: Option<u64>,
}

pub struct OverheadResult {
    pub total_mib: usize,
    pub region_mib: usize,
    pub limit_mib: usize,
    pub rounds: Vec<Round>,
    pub strategy: String,
    pub settle: Duration,
}

/// Summary of one metric: medians, per-pair overheads, noise.
pub struct Compare {
    pub median_off: f64,
    pub median_on: f64,
    /// Per pair (B_i / A_i − 1), %.
    pub pairs: Vec<f64>,
    /// (max − min) / median of the detached rounds, %.
    pub noise: f64,
}

impl Compare {
    pub fn ratio(&self) -> f64 {
        self.median_on / self.median_off
    }

    pub fn pct(&self) -> f64 {
        (self.ratio() - 1.0) * 100.0
    }

    pub fn pair_range(&self) -> (f64, f64) {
        self.pairs
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &x| (l.min(x), h.max(x)))
    }

    pub fn json(&self) -> Value {
        json!({
            "median_detached_s": r3(self.median_off),
            "median_attached_s": r3(self.median_on),
            "ratio": (self.ratio() * 1e5).round() / 1e5,
            "overhead_pct": r3(self.pct()),
            "median_pair_overhead_pct": r3(median(&self.pairs)),
            "pair_overhead_pct": self.pairs.iter().map(|p| r3(*p)).collect::<Vec<_>>(),
            "detached_spread_pct": r3(self.noise),
        })
    }
}

impl OverheadResult {
    fn compare(&self, f: impl Fn(&Round) -> f64) -> Compare {
        let off: Vec<f64> = self.rounds.iter().filter(|r| !r.attached).map(&f).collect();
        let on: Vec<f64> = self.rounds.iter().filter(|r| r.attached).map(&f).collect();
        let (lo, hi) = off
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &x| (l.min(x), h.max(x)));
        Compare {
            median_off: median(&off),
            median_on: median(&on),
            pairs: off.iter().zip(&on).map(|(a, b)| (b / a - 1.0) * 100.0).collect(),
            noise: (hi - lo) / median(&off) * 100.0,
        }
    }

    pub fn wall(&self) -> Compare {
        self.compare(|r| r.secs)
    }

    pub fn cpu(&self) -> Compare {
        self.compare(|r| r.cpu)
    }

    /// oomtrace's BPF programs over all attached rounds: (runs, ns), if stats were on.
    pub fn bpf_total(&self) -> Option<(u64, u64)> {
        self.rounds
            .iter()
            .filter(|r| r.attached)
            .map(|r| r.bpf)
            .try_fold((0, 0), |(c, t), b| {
                let (bc, bt) = b?;
                Some((c + bc, t + bt))
            })
    }

    /// BPF time as a share of the attached rounds' workload CPU time, %.
    pub fn bpf_share_pct(&self) -> Option<f64> {
        let (_, ns) = self.bpf_total()?;
        let cpu: f64 = self.rounds.iter().filter(|r| r.attached).map(|r| r.cpu).sum();
        Some(ns as f64 / 1e9 / cpu * 100.0)
    }

    pub fn json(&self) -> Value {
        json!({
            "workload": format!(
                "anon sweep: {} MiB written one byte per page over a {} MiB region, MADV_FREE after each 4 MiB chunk, memcg limit {} MiB (fault + charge + reclaim per page)",
                self.total_mib, self.region_mib, self.limit_mib),
            "order": "A = detached, B = `oomtrace watch` attached (started before, stopped after the round); pairs alternate AB, BA, AB, … (ABBA, cancels drift); one discarded warm-up round first",
            "settle_s": self.settle.as_secs_f64(),
            "rounds": self.rounds.iter().map(|r| json!({
                "attached": r.attached, "secs": r3(r.secs), "cpu_s": r3(r.cpu), "minflt": r.minflt,
                "oomtrace_cpu_s": r.oomtrace_cpu.map(r3),
                "oomtrace_bpf_runs": r.bpf.map(|b| b.0), "oomtrace_bpf_ns": r.bpf.map(|b| b.1),
                "memcg_pages_uncharged": r.reclaimed_pages,
            })).collect::<Vec<_>>(),
            "wall": self.wall().json(),
            "cpu": self.cpu().json(),
            "oomtrace_bpf_runs_total": self.bpf_total().map(|b| b.0),
            "oomtrace_bpf_ns_total": self.bpf_total().map(|b| b.1),
            "oomtrace_bpf_share_of_workload_cpu_pct": self.bpf_share_pct(),
            "budget_pct": 1.0,
            "oomtrace_strategy": self.strategy,
        })
    }
}

fn memcg_uncharged(cg: &TestCgroup) -> Option<u64> {
    let stat = cg.read("memory.stat").ok()?;
    let get = |k: &str| {
        stat.lines().find_map(|l| {
            let (key, v) = l.split_once(' ')?;
            (key == k).then(|| v.trim().parse::<u64>().ok()).flatten()
        })
    };
    get("pgscan").or_else(|| get("total_pgpgout"))
}

struct Sweep {
    secs: f64,
    cpu: f64,
    minflt: u64,
    reclaimed: Option<u64>,
}

fn one_round(cg: &TestCgroup, spec: &str) -> Result<Sweep> {
    let scan0 = memcg_uncharged(cg);
    // This very binary, even if cargo replaced it meanwhile.
    let mut cmd = Command::new("/proc/self/exe");
    cmd.args(["--fault-workload", spec])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let child = cg.spawn(&mut cmd)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "the fault workload failed ({}{}) — OOM-killed? the limit is too tight",
            out.status,
            if out.status.signal() == Some(libc::SIGKILL) {
                ", SIGKILL"
            } else {
                ""
            }
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("workload output")?;
    let reclaimed = match (scan0, memcg_uncharged(cg)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    Ok(Sweep {
        secs: v["secs"].as_f64().context("secs")?,
        cpu: v["utime"].as_f64().unwrap_or(0.0) + v["stime"].as_f64().unwrap_or(0.0),
        minflt: v["minflt"].as_u64().unwrap_or(0),
        reclaimed,
    })
}

/// `pairs` × (A detached, B attached), counterbalanced, after one warm-up round.
pub fn overhead(ctx: &Ctx, pairs: usize, total_mib: usize, settle: Duration) -> Result<OverheadResult> {
    let region_mib = 512;
    let limit_mib = region_mib / 4;
    say!("overhead, {pairs} pairs (ABBA…) of a {total_mib} MiB fault sweep in a {limit_mib} MiB memcg");
    let cg = TestCgroup::new("oomtrace-bench-faults")?;
    cg.set_limit((limit_mib * MIB) as u64)?;
    let spec = format!("{total_mib}:{region_mib}");
    let kills0 = cg.oom_kills();
    one_round(&cg, &spec)?; // warm-up: page tables, caches, binary in page cache
    let mut rounds = Vec::new();
    let mut strategy = String::new();
    for i in 0..pairs * 2 {
        check_interrupted()?;
        // AB BA AB BA …
        let attached = (i % 2 == 1) != ((i / 2) % 2 == 1);
        let round = if attached {
            // With early warnings on: their program is the one on the reclaim path.
            let w = OomtraceWatch::start(&ctx.oomtrace, &["--no-kubernetes", "--warnings"], &[])?;
            strategy = w.strategy.clone();
            sleep(settle)?;
            let pid = w.proc.pid();
            let (c0, b0) = (cpu_seconds(pid)?, bpf_prog_stats(pid));
            let sw = one_round(&cg, &spec)?;
            let (c1, b1) = (cpu_seconds(pid)?, bpf_prog_stats(pid));
            drop(w);
            let bpf = match (b0, b1, ctx.bpf_stats) {
                (Some(a), Some(b), true) => Some((b.0 - a.0, b.1 - a.1)),
                _ => None,
            };
            Round {
                attached,
                secs: sw.secs,
                cpu: sw.cpu,
                minflt: sw.minflt,
                oomtrace_cpu: Some(c1 - c0),
                bpf,
                reclaimed_pages: sw.reclaimed,
            }
        } else {
            // The same settling pause as the attached rounds (after attaching, the kernel
            // and the daemon finish their start-up work: that is not steady-state overhead).
            sleep(settle)?;
            let sw = one_round(&cg, &spec)?;
            Round {
                attached,
                secs: sw.secs,
                cpu: sw.cpu,
                minflt: sw.minflt,
                oomtrace_cpu: None,
                bpf: None,
                reclaimed_pages: sw.reclaimed,
            }
        };
        say!(
            "  round {:>2} {}: {:.3} s wall, {:.3} s CPU, {} faults{}",
            i + 1,
            if attached { "B attached" } else { "A detached" },
            round.secs,
            round.cpu,
            round.minflt,
            round
                .bpf
                .map(|(c, ns)| format!(", oomtrace BPF {c} runs {ns} ns"))
                .unwrap_or_default()
        );
        rounds.push(round);
    }
    if cg.oom_kills() != kills0 {
        bail!("the fault workload was OOM-killed: the overhead measurement is void");
    }
    Ok(OverheadResult {
        total_mib,
        region_mib,
        limit_mib,
        rounds,
        strategy,
        settle,
    })
}
