//! `cargo xtask bench` (this crate's binary): how oomtrace does under an OOM storm, against the other ways of
//! seeing OOM kills, measured side by side in one run (this kind of machine is noisy):
//!
//! 1. capture: K kills within seconds across M memcgs; what oomtrace, bpftrace
//!    (`tracepoint:oom:mark_victim`), the kernel log (`Killed process`, the rate-limited
//!    `oom-kill:` line) and libbpf-tools' `oomkill` report, against the kernel's own
//!    `oom_kill` counters;
//! 2. latency: the kill (event `time`) → the JSON line read by the bench, in the storm and for
//!    isolated kills;
//! 3. overhead on the allocation path: a fault + reclaim-heavy workload, oomtrace attached or
//!    not, alternating;
//! 4. daemon cost: idle CPU and RSS, and RSS with a 10 000-pod index.
//!
//! Results are printed and written to `bench/results.json`. Every cgroup and process the bench
//! makes is removed/stopped by a guard, on errors and Ctrl-C too.
/// Progress on stderr, with the time since the bench started.
macro_rules! say {
    ($($arg:tt)*) => {
        eprintln!("[{:>6.1}s] bench: {}", $crate::util::since_start(), format_args!($($arg)*))
    };
}

mod capture;
mod daemon;
mod history;
mod observers;
mod overhead;
mod util;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use util::{median, mib, r3};

#[derive(clap::Parser, Debug)]
#[command(about = "oomtrace under OOM storms, side by side with other tools")]
pub struct Args {
    /// Kills per storm, comma-separated (one storm each). Default 200,2000 (50 with --quick).
    #[arg(long, value_delimiter = ',')]
    kills: Option<Vec<usize>>,
    /// A small version (CI smoke, under ~2 minutes): 50 kills, 10 isolated kills, 2 overhead
    /// pairs, short idle windows.
    #[arg(long)]
    quick: bool,
    /// Memory cgroups a storm is spread over (each runs one hog at a time).
    #[arg(long, default_value_t = 16)]
    cgroups: usize,
    /// Isolated single kills for the latency measurement. Default 30 (10 with --quick).
    #[arg(long)]
    isolated: Option<usize>,
    /// A/B pairs of the overhead measurement. Default 10 (2 with --quick).
    #[arg(long)]
    overhead_pairs: Option<usize>,
    /// MiB written per overhead round. Default 1024 (512 with --quick).
    #[arg(long)]
    overhead_mib: Option<usize>,
    /// Pods in the index for the large daemon memory measurement (the small one is a full node,
    /// 110 pods).
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Where to write the results.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run only these parts: capture (storms), stall (the largest storm with oomtrace's
    /// stdout unread for 10 s), latency (isolated kills), overhead, daemon, history (the
    /// memory history's sampling cost with 100 and 1 000 limited cgroups), image (the
    /// container image's size; `cargo xtask bench` builds the image first).
    #[arg(long, value_delimiter = ',', value_parser = ["capture", "stall", "latency", "overhead", "daemon", "history", "image"])]
    only: Option<Vec<String>>,
    /// Also write every storm's raw observations (oomtrace events with their read times,
    /// bpftrace lines, kernel log lines) to this directory, for digging into a result.
    #[arg(long)]
    dump: Option<PathBuf>,
    /// Use the binaries already in target/release (skip `cargo build`).
    #[arg(long)]
    no_build: bool,
    /// Internal: run the fault workload (TOTAL_MIB:REGION_MIB) and print its timing.
    #[arg(long, hide = true)]
    fault_workload: Option<String>,
}

/// What every phase needs.
pub struct Ctx {
    pub oomtrace: PathBuf,
    /// The binary the image ships (the static musl build), whose memory is what a node pays;
    /// `None` when it was not built (`cargo xtask bench` builds it with the image).
    pub shipped: Option<PathBuf>,
    /// The kernel's BPF run-time statistics are on (programs' run_cnt / run_time_ns).
    pub bpf_stats: bool,
    /// Where to dump raw observations (`--dump`).
    pub dump: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = <Args as clap::Parser>::parse();
    if let Some(spec) = &args.fault_workload {
        return overhead::workload(spec);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the bench loads BPF programs, makes memory cgroups and OOM-kills processes: run it as root");
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!("this kernel has no BTF (/sys/kernel/btf/vmlinux): oomtrace cannot run here");
    }
    let started = Instant::now();
    util::since_start();
    let root = xtask::workspace_root();
    if !args.no_build {
        xtask::sys::status(xtask::sys::cargo().current_dir(&root).args([
            "build",
            "--release",
            "-p",
            "oomtrace",
            "-p",
            "oomtrace-tests",
            "--bins",
        ]))?;
    }
    let release = root.join("target/release");
    // Others may rebuild target/ while the bench runs: it runs private copies of the binaries.
    let bins = BinCopy::new("dev", &release, &["oomtrace", "oomtrace-hog"])?;
    let static_bin = xtask::image::static_binary(&root);
    let shipped = match static_bin.parent().filter(|_| static_bin.exists()) {
        Some(dir) => Some(BinCopy::new("static", dir, &["oomtrace"])?),
        None => {
            say!("{} not built (cargo xtask image): daemon figures are the dev build's", static_bin.display());
            None
        }
    };
    let bpf_stats = util::BpfStats::enable();
    let ctx = Ctx {
        oomtrace: bins.path("oomtrace"),
        shipped: shipped.as_ref().map(|b| b.path("oomtrace")),
        bpf_stats: bpf_stats.on(),
        dump: args.dump.clone(),
    };
    // The fixtures find the hog through this variable. Set before any thread exists.
    std::env::set_var("OOMTRACE_HOG", bins.path("oomtrace-hog"));
    util::install_signal_handlers();
    observers::ensure_bpftrace()
        .map_err(|e| say!("cannot install bpftrace: {e:#}"))
        .ok();
    // bpftrace needs tracefs; without it, bpftrace is reported as failed, the rest runs.
    let _tracefs = observers::TracefsGuard::ensure()
        .map_err(|e| say!("tracefs: {e:#}"))
        .ok();

    let quick = args.quick;
    let kills = args
        .kills
        .clone()
        .unwrap_or_else(|| if quick { vec![50] } else { vec![200, 2000] });
    let isolated_n = args.isolated.unwrap_or(if quick { 10 } else { 30 });
    let pairs = args.overhead_pairs.unwrap_or(if quick { 2 } else { 10 });
    let fault_mib = args.overhead_mib.unwrap_or(if quick { 512 } else { 1024 });
    let idle_window = Duration::from_secs(if quick { 3 } else { 10 });
    let settle = Duration::from_millis(if quick { 300 } else { 1500 });

    let machine = machine()?;
    print_machine(&machine);

    let mut results = json!({
        "schema": "oomtrace.bench/v1",
        "started_at": util::realtime_ns() as f64 / 1e9,
        "quick": quick,
        "machine": machine,
        "oomtrace": ctx.oomtrace.display().to_string(),
        "git": git_describe(&root),
    });
    let out = args.out.clone().unwrap_or_else(|| root.join("bench/results.json"));
    let write = |results: &Value| -> Result<()> {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&out, serde_json::to_string_pretty(results)? + "\n")
            .with_context(|| format!("writing {}", out.display()))
    };

    let want = |part: &str| args.only.as_ref().is_none_or(|o| o.iter().any(|p| p == part));
    // Each phase's error is recorded and the next phase still runs (guards have cleaned up).
    let mut failures = Vec::new();
    let mut storms = Vec::new();
    for &k in kills.iter().filter(|_| want("capture")) {
        util::check_interrupted()?;
        match capture::storm(&ctx, k, args.cgroups.max(1), None) {
            Ok(s) => storms.push(s),
            Err(e) => failures.push(format!("storm {k}: {e:#}")),
        }
    }
    // The largest storm again, with oomtrace's stdout unread for its first seconds: the ring
    // reader must keep draining, so that nothing is lost once the pipe is read again.
    if let Some(&k) = kills.iter().max().filter(|_| want("stall")) {
        util::check_interrupted()?;
        match capture::storm(&ctx, k, args.cgroups.max(1), Some(STALL)) {
            Ok(s) => storms.push(s),
            Err(e) => failures.push(format!("storm {k} with stdout stalled: {e:#}")),
        }
    }
    results["storms"] = Value::Array(storms.iter().map(capture::StormResult::json).collect());
    write(&results)?;
    util::check_interrupted()?;
    let isolated = want("latency")
        .then(|| {
            capture::isolated(&ctx, isolated_n)
                .map_err(|e| failures.push(format!("isolated: {e:#}")))
                .ok()
        })
        .flatten();
    results["isolated"] = isolated
        .as_ref()
        .map(capture::IsolatedResult::json)
        .unwrap_or(Value::Null);
    write(&results)?;
    util::check_interrupted()?;
    let over = want("overhead")
        .then(|| {
            overhead::overhead(&ctx, pairs, fault_mib, settle)
                .map_err(|e| failures.push(format!("overhead: {e:#}")))
                .ok()
        })
        .flatten();
    results["overhead"] = over.as_ref().map(overhead::OverheadResult::json).unwrap_or(Value::Null);
    write(&results)?;
    util::check_interrupted()?;
    // What a node pays is the shipped (static) binary's memory; the dev build's idle figure
    // is measured beside it, since glibc's allocator holds more than musl's.
    let daemon_bin = ctx.shipped.clone().unwrap_or_else(|| ctx.oomtrace.clone());
    let mut idle = None;
    let mut idle_dev = None;
    if want("daemon") {
        idle = daemon::idle(&daemon_bin, idle_window)
            .map_err(|e| failures.push(format!("daemon idle: {e:#}")))
            .ok();
        if ctx.shipped.is_some() {
            idle_dev = daemon::idle(&ctx.oomtrace, idle_window)
                .map_err(|e| failures.push(format!("daemon idle (dev build): {e:#}")))
                .ok();
        }
    }
    util::check_interrupted()?;
    // A full node (kubelet's default maximum of 110 pods), also under churn, then a large index.
    let mut pods = Vec::new();
    for (n, churn) in [(FULL_NODE_PODS, Some(CHURN_PER_S)), (args.pods, None)] {
        util::check_interrupted()?;
        if !want("daemon") {
            break;
        }
        match daemon::with_pods(&daemon_bin, n, idle_window, churn) {
            Ok(p) => pods.push(p),
            Err(e) => failures.push(format!("daemon with {n} pods: {e:#}")),
        }
    }
    results["daemon"] = json!({
        "binary": if ctx.shipped.is_some() { "static (musl), as shipped in the image" } else { "dev (glibc)" },
        "idle": idle.as_ref().map(daemon::Cost::json),
        "idle_dev_build": idle_dev.as_ref().map(daemon::Cost::json),
        "targets": daemon_targets(idle.as_ref(), &pods),
        "pod_index": pods.iter().map(daemon::PodsResult::json).collect::<Vec<_>>(),
        "bytes_per_pod": bytes_per_pod(&pods),
    });
    util::check_interrupted()?;
    let history = want("history")
        .then(|| history::cost(&ctx, idle_window * 3).map_err(|e| failures.push(format!("history cost: {e:#}"))).ok())
        .flatten();
    results["history"] = history.as_ref().map(history::HistoryResult::json).unwrap_or(Value::Null);
    write(&results)?;
    let image = want("image")
        .then(|| {
            xtask::image::size(xtask::image::TAG)
                .map_err(|e| failures.push(format!("image size: {e:#}")))
                .ok()
        })
        .flatten();
    results["image"] = json!({ "tag": xtask::image::TAG, "size_bytes": image, "target_bytes": IMAGE_TARGET_BYTES });
    let secs = started.elapsed().as_secs_f64();
    results["duration_s"] = json!(r3(secs));
    results["failures"] = json!(failures);
    write(&results)?;

    print_storms(&storms);
    print_latency(&storms, isolated.as_ref());
    if let Some(o) = &over {
        print_overhead(o);
    }
    print_daemon(idle.as_ref(), idle_dev.as_ref(), &pods);
    if let Some(h) = &history {
        h.print();
    }
    if let Some(bytes) = image {
        let verdict = if bytes <= IMAGE_TARGET_BYTES { "within" } else { "OVER" };
        println!(
            "\nimage {}: {:.1} MB ({verdict} the {:.0} MB target)",
            xtask::image::TAG,
            bytes as f64 / 1e6,
            IMAGE_TARGET_BYTES as f64 / 1e6
        );
    }
    println!("\nwritten to {} ({:.0} s)", out.display(), secs);
    for s in &storms {
        let ours = &s.observers[0];
        if ours.count != Some(s.kernel) {
            failures.push(format!(
                "BUG: oomtrace reported {:?} of {} kills in the {}-kill storm ({}); first missing pids: {:?}",
                ours.count, s.kernel, s.target, ours.note, s.oomtrace_missing
            ));
        }
    }
    if !failures.is_empty() {
        for f in &failures {
            say!("{f}");
        }
        bail!("{} problem(s), see above", failures.len());
    }
    Ok(())
}

/// The image is pulled onto every node: at most this big.
const IMAGE_TARGET_BYTES: u64 = 20_000_000;
/// How long the stalled storm leaves oomtrace's stdout unread.
const STALL: std::time::Duration = std::time::Duration::from_secs(10);

/// Private copies of the binaries under test, removed when dropped.
struct BinCopy(PathBuf);

impl BinCopy {
    fn new(tag: &str, from: &std::path::Path, names: &[&str]) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("oomtrace-bench-bin-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let me = Self(dir);
        for n in names {
            let src = from.join(n);
            if !src.exists() {
                bail!(
                    "{} not found: build it (cargo build --release -p oomtrace -p oomtrace-tests --bins)",
                    src.display()
                );
            }
            std::fs::copy(&src, me.path(n)).with_context(|| format!("copying {}", src.display()))?;
        }
        Ok(me)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for BinCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The commit benchmarked, and whether the tree had local changes (read-only git).
fn git_describe(root: &std::path::Path) -> Value {
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    json!({
        "commit": git(&["rev-parse", "HEAD"]),
        "dirty": git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty()),
    })
}

fn machine() -> Result<Value> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")?
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let mem = meminfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0)
        * 1024;
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let memcg = match oomtrace_tests::cgroup::memory_root() {
        Ok((oomtrace_tests::cgroup::Version::V1, p)) => format!("v1 ({})", p.display()),
        Ok((oomtrace_tests::cgroup::Version::V2, p)) => format!("v2 ({})", p.display()),
        Err(e) => format!("none: {e}"),
    };
    let bpftrace = Command::new("bpftrace")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    Ok(json!({
        "kernel": kernel,
        "cores": cores,
        "mem_total_bytes": mem,
        "cpu_model": model,
        "memory_cgroup": memcg,
        "kprobes": std::path::Path::new(observers::TRACEFS).join("kprobe_events").exists(),
        "bpftrace": bpftrace,
    }))
}

fn print_machine(m: &Value) {
    println!(
        "machine: Linux {} · {} cores · {:.1} GiB RAM · {} · memcg {} · {}",
        m["kernel"].as_str().unwrap_or("?"),
        m["cores"],
        m["mem_total_bytes"].as_u64().unwrap_or(0) as f64 / (1u64 << 30) as f64,
        m["cpu_model"].as_str().unwrap_or("?"),
        m["memory_cgroup"].as_str().unwrap_or("?"),
        if m["kprobes"] == true { "kprobes" } else { "no kprobes" },
    );
}

fn storm_name(s: &capture::StormResult) -> String {
    match s.stalled {
        Some(d) => format!("{} kills, stdout stalled {} s", s.target, d.as_secs()),
        None => format!("{} kills / {} memcgs", s.target, s.cgroups),
    }
}

fn print_storms(storms: &[capture::StormResult]) {
    if storms.is_empty() {
        return;
    }
    println!("\n== capture under an OOM storm (truth: the kernel's oom_kill counters of the bench memcgs) ==");
    let names = [
        "oomtrace",
        "bpftrace",
        "kmsg `Killed process`",
        "kmsg `oom-kill:`",
        "libbpf-tools oomkill",
    ];
    println!(
        "{:<22} {:>7} {:>7} {:>8} | {:<16} {:<16} {:<22} {:<18} {}",
        "storm", "kernel", "secs", "kills/s", names[0], names[1], names[2], names[3], names[4]
    );
    for s in storms {
        let o: Vec<String> = s.observers.iter().map(|x| x.show(s.kernel)).collect();
        println!(
            "{:<22} {:>7} {:>7.1} {:>8.0} | {:<16} {:<16} {:<22} {:<18} {}",
            storm_name(s),
            s.kernel,
            s.secs,
            s.kernel as f64 / s.secs,
            o[0],
            o[1],
            o[2],
            o[3],
            o[4]
        );
        for x in &s.observers {
            if !x.note.is_empty() && x.count.is_some() {
                println!("    {}: {}", x.name, x.note);
            }
        }
        if let Some((runs, ns)) = s.bpf {
            println!(
                "    oomtrace BPF programs: {runs} runs, {:.1} µs per run",
                ns as f64 / 1e3 / runs.max(1) as f64
            );
        }
        let per_kill = |cpu: Option<f64>| {
            cpu.map_or("n/a".into(), |c| format!("{c:.2} s ({:.0} µs per kill)", c * 1e6 / s.kernel.max(1) as f64))
        };
        println!("    CPU over the storm: oomtrace {}, bpftrace {}", per_kill(s.cpu_s[0]), per_kill(s.cpu_s[1]));
    }
    if let Some(s) = storms.first() {
        println!("    oomtrace {}", s.strategy);
    }
}

fn print_latency(storms: &[capture::StormResult], iso: Option<&capture::IsolatedResult>) {
    println!("\n== latency: kill → line read by the bench, ms (p50 / p99 / max) ==");
    println!(
        "{:<26} {:<28} bpftrace (probe nsecs→line)",
        "", "oomtrace (event time→JSON)"
    );
    for s in storms {
        println!(
            "{:<26} {:<28} {}",
            storm_name(s),
            s.oomtrace_latency.show(),
            s.bpftrace_latency.show()
        );
    }
    if let Some(i) = iso {
        println!(
            "{:<26} {:<28} {}",
            format!("isolated ×{} ({} seen)", i.kills, i.oomtrace_seen),
            i.oomtrace_latency.show(),
            i.bpftrace_latency.show()
        );
        if let Some((with, without)) = i.bpf_us_per_kill {
            println!(
                "    oomtrace BPF time per kill: {with:.1} µs with the charging task's stacks, {without:.1} µs without (--no-charge-stacks): the stacks cost {:.1} µs",
                with - without
            );
        }
    }
}

fn print_overhead(o: &overhead::OverheadResult) {
    println!(
        "\n== overhead on the allocation path: {} MiB fault+reclaim sweep in a {} MiB memcg, {} A/B pairs (ABBA…) ==",
        o.total_mib,
        o.limit_mib,
        o.rounds.len() / 2
    );
    let list = |attached: bool, f: &dyn Fn(&overhead::Round) -> f64| {
        o.rounds
            .iter()
            .filter(|r| r.attached == attached)
            .map(|r| format!("{:.3}", f(r)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("wall s  A detached: {}", list(false, &|r| r.secs));
    println!("        B attached: {}", list(true, &|r| r.secs));
    println!("CPU s   A detached: {}", list(false, &|r| r.cpu));
    println!("        B attached: {}", list(true, &|r| r.cpu));
    for (name, c) in [("wall", o.wall()), ("CPU ", o.cpu())] {
        let (lo, hi) = c.pair_range();
        println!(
            "{name}: median A {:.3} s, B {:.3} s → B/A {:.4} ({:+.2} %); per pair {:+.2} … {:+.2} % (median {:+.2} %); A spread {:.1} %",
            c.median_off,
            c.median_on,
            c.ratio(),
            c.pct(),
            lo,
            hi,
            median(&c.pairs),
            c.noise
        );
    }
    let faults = o.rounds.iter().map(|r| r.minflt).max().unwrap_or(0);
    let ocpu: f64 = o.rounds.iter().filter_map(|r| r.oomtrace_cpu).sum();
    match o.bpf_total() {
        Some((runs, ns)) => println!(
            "oomtrace's BPF programs during the B rounds: {runs} runs, {ns} ns ({:.4} % of the workload's CPU); oomtrace process CPU {ocpu:.2} s; ~{faults} faults/round; budget < 1 %",
            o.bpf_share_pct().unwrap_or(f64::NAN)
        ),
        None => println!("oomtrace process CPU during the B rounds {ocpu:.2} s; ~{faults} faults/round; budget < 1 %"),
    }
}

/// Pods of a full node (kubelet's default `maxPods`).
const FULL_NODE_PODS: usize = 110;
/// Pod updates per second for the churn measurement.
const CHURN_PER_S: u32 = 100;

/// Resident bytes per indexed pod: the RSS difference between the largest and the smallest
/// index, over their difference in pods (the fixed cost of the Kubernetes client cancels out).
fn bytes_per_pod(pods: &[daemon::PodsResult]) -> Option<f64> {
    let small = pods.iter().min_by_key(|p| p.pods)?;
    let large = pods.iter().max_by_key(|p| p.pods)?;
    (large.pods > small.pods)
        .then(|| (large.cost.rss as f64 - small.cost.rss as f64) / (large.pods - small.pods) as f64)
}

/// Published by Perun (an aya-based OOM watcher): its RSS with 27 pods.
const PERUN_RSS_27_PODS: u64 = 23 << 20;

/// The daemon's memory against its targets: `(figure, measured, target, met)`.
fn targets(idle: Option<&daemon::Cost>, pods: &[daemon::PodsResult]) -> Vec<(&'static str, f64, f64, bool)> {
    let mut t = Vec::new();
    if let Some(c) = idle {
        t.push(("idle VmRSS, MiB", mib(c.rss), 20.0, mib(c.rss) <= 20.0));
        t.push(("start-up VmHWM, MiB", mib(c.hwm), 40.0, mib(c.hwm) <= 40.0));
    }
    if let Some(b) = bytes_per_pod(pods) {
        t.push(("per indexed pod, KiB", b / 1024.0, 2.0, b <= 2048.0));
    }
    if let Some(p) = pods.iter().find(|p| p.pods == FULL_NODE_PODS) {
        let perun = mib(PERUN_RSS_27_PODS);
        t.push(("VmRSS at 110 pods, MiB (Perun: 23 at 27)", mib(p.cost.rss), perun, p.cost.rss < PERUN_RSS_27_PODS));
    }
    t
}

fn daemon_targets(idle: Option<&daemon::Cost>, pods: &[daemon::PodsResult]) -> Value {
    targets(idle, pods)
        .into_iter()
        .map(|(what, got, target, met)| json!({ "figure": what, "measured": r3(got), "target": target, "met": met }))
        .collect()
}

fn print_daemon(idle: Option<&daemon::Cost>, idle_dev: Option<&daemon::Cost>, pods: &[daemon::PodsResult]) {
    println!("\n== daemon cost (`oomtrace watch`) ==");
    if let Some(c) = idle {
        println!("idle, no Kubernetes:        {}", c.show());
    }
    if let Some(c) = idle_dev {
        println!("  same, dev (glibc) build:  {}", c.show());
    }
    for p in pods {
        println!(
            "{:>6} pods on the node:     {} (synced in {:.1} s; pods JSON {:.1} MiB in one LIST page; RSS delta vs idle {})",
            p.pods,
            p.cost.show(),
            p.sync_s,
            mib(p.list_json_bytes as u64),
            idle.map(|c| format!("{:+.1} MiB", mib(p.cost.rss) - mib(c.rss))).unwrap_or_default()
        );
        if let Some(c) = &p.churn {
            println!(
                "{:>6} pods, {:.0} updates/s:   CPU {:.2}% ({:.2} s over {:.0} s), VmRSS after {:.1} MiB",
                p.pods,
                c.rate(),
                c.cpu_pct(),
                c.cpu_s,
                c.window_s,
                mib(c.rss_after)
            );
        }
    }
    if let Some(b) = bytes_per_pod(pods) {
        println!("cost per indexed pod:       {:.2} KiB", b / 1024.0);
    }
    for (what, got, target, met) in targets(idle, pods) {
        println!("target {what}: {got:.2} against {target:.1}: {}", if met { "met" } else { "MISSED" });
    }
}
