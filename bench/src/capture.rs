//! Capture and latency: an OOM storm (K kills within seconds across M memcgs) and isolated
//! single kills, every observer running side by side, the kernel's `oom_kill` counters as
//! the truth.
use super::observers::{Arrived, BpfVictim, Bpftrace, KmsgLog, KmsgReader, OomkillTool, OomtraceWatch};
use super::util::{bpf_prog_stats, check_interrupted, parse_rfc3339_ns, r3, sleep, Dist};
use super::Ctx;
use anyhow::Result;
use oomtrace_tests::cgroup::{Hog, TestCgroup};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// Memory limit of each storm cgroup, and how much each hog tries to take.
pub const LIMIT_MIB: u64 = 8;
pub const HOG_MIB: u64 = 16;

/// What one observer reported, against the kernel.
#[derive(Debug, Clone)]
pub struct Seen {
    pub name: &'static str,
    /// Kills of bench pids it reported (distinct victims); `None`: not available.
    pub count: Option<u64>,
    /// Why it is not available, or a remark (lost events, duplicates…).
    pub note: String,
}

impl Seen {
    pub fn ratio(&self, kernel: u64) -> Option<f64> {
        self.count.map(|c| {
            if kernel == 0 {
                f64::NAN
            } else {
                c as f64 * 100.0 / kernel as f64
            }
        })
    }

    pub fn show(&self, kernel: u64) -> String {
        match (self.count, self.ratio(kernel)) {
            (Some(c), Some(r)) => format!("{c} ({r:.1}%)"),
            _ => self.note.clone(),
        }
    }

    fn json(&self, kernel: u64) -> Value {
        json!({ "reported": self.count, "ratio_pct": self.ratio(kernel).map(super::util::r3), "note": self.note })
    }
}

pub struct StormResult {
    pub target: usize,
    /// The bench stopped reading oomtrace's stdout this long at the start of the storm.
    pub stalled: Option<Duration>,
    pub cgroups: usize,
    pub spawned: usize,
    pub sigkilled: usize,
    pub secs: f64,
    pub kernel: u64,
    pub observers: Vec<Seen>,
    pub oomtrace_latency: Dist,
    pub bpftrace_latency: Dist,
    pub strategy: String,
    /// oomtrace's BPF programs over the storm: (runs, ns), when the kernel's stats are on.
    pub bpf: Option<(u64, u64)>,
    /// SIGKILLed bench hogs oomtrace did not report (evidence for a bug report), at most 20.
    pub oomtrace_missing: Vec<u32>,
    /// CPU seconds oomtrace and bpftrace used from the storm's start until they caught up: on
    /// a node busy with the processes being killed, a tool's CPU per kill is what it waits for.
    pub cpu_s: [Option<f64>; 2],
}

impl StormResult {
    pub fn json(&self) -> Value {
        let obs: serde_json::Map<String, Value> = self
            .observers
            .iter()
            .map(|s| (s.name.to_string(), s.json(self.kernel)))
            .collect();
        json!({
            "kills_target": self.target,
            "oomtrace_stdout_stalled_s": self.stalled.map(|d| d.as_secs_f64()),
            "cgroups": self.cgroups,
            "limit_bytes": LIMIT_MIB * MIB,
            "hog_bytes": HOG_MIB * MIB,
            "hogs_spawned": self.spawned,
            "hogs_sigkilled": self.sigkilled,
            "duration_s": super::util::r3(self.secs),
            "kills_per_s": super::util::r3(self.kernel as f64 / self.secs),
            "kernel_oom_kill": self.kernel,
            "observers": obs,
            "latency": { "oomtrace": self.oomtrace_latency.json(), "bpftrace": self.bpftrace_latency.json() },
            "oomtrace_strategy": self.strategy,
            "oomtrace_bpf_runs": self.bpf.map(|b| b.0),
            "oomtrace_bpf_ns": self.bpf.map(|b| b.1),
            "oomtrace_missing_pids": self.oomtrace_missing,
            "cpu_s": { "oomtrace": self.cpu_s[0].map(r3), "bpftrace": self.cpu_s[1].map(r3) },
        })
    }
}

/// kill → line read, in ms, for oomtrace events (event `time` vs CLOCK_REALTIME at read).
pub fn oomtrace_latencies(evs: &[Arrived]) -> Vec<f64> {
    evs.iter()
        .filter_map(|a| {
            let t = parse_rfc3339_ns(a.event["time"].as_str()?)?;
            Some((a.read_at_ns - t) as f64 / 1e6)
        })
        .collect()
}

/// kill (probe `nsecs`, CLOCK_MONOTONIC) → line read (CLOCK_MONOTONIC), in ms.
pub fn bpftrace_latencies(v: &[BpfVictim]) -> Vec<f64> {
    v.iter().map(|b| (b.read_at_ns - b.probe_ns) as f64 / 1e6).collect()
}

fn victim_pid(v: &Value) -> Option<u32> {
    v["victim"]["pid"].as_u64().map(|p| p as u32)
}

/// An OOM storm: `target` kills across `ncg` memcgs, hogs spawned back to back (one at a time
/// per memcg) until the kills are done or the deadline passes. With `stall`, the bench stops
/// reading oomtrace's stdout for that long as the storm starts, as a stuck log pipe would.
pub fn storm(ctx: &Ctx, target: usize, ncg: usize, stall: Option<Duration>) -> Result<StormResult> {
    let stalled = stall.map(|d| format!(", oomtrace's stdout unread for the first {} s", d.as_secs())).unwrap_or_default();
    say!("storm of {target} kills across {ncg} memcgs (limit {LIMIT_MIB} MiB, hogs of {HOG_MIB} MiB){stalled}");
    let cgs: Vec<TestCgroup> = (0..ncg)
        .map(|_| {
            let cg = TestCgroup::new("oomtrace-bench")?;
            cg.set_limit(LIMIT_MIB * MIB)?;
            Ok(cg)
        })
        .collect::<Result<_>>()?;
    let rels: HashSet<String> = cgs.iter().map(|c| c.rel.clone()).collect();
    let before: Vec<u64> = cgs.iter().map(TestCgroup::oom_kills).collect();

    let kmsg = KmsgReader::start()?;
    let watch = OomtraceWatch::start(&ctx.oomtrace, &["--no-kubernetes"], &[])?;
    let mut bpf = match Bpftrace::start() {
        Ok(b) => Ok(b),
        Err(e) => Err(format!("error: {e:#}")),
    };
    let oomkill = OomkillTool::start();
    say!(
        "observers attached: oomtrace, bpftrace ({}), kmsg, libbpf oomkill ({})",
        if bpf.is_ok() { "ok" } else { "failed" },
        oomkill.status()
    );
    sleep(Duration::from_millis(500))?;
    let cpu = |bpf: &Result<Bpftrace, String>| {
        let of = |pid| super::util::cpu_seconds(pid).ok();
        [of(watch.proc.pid()), bpf.as_ref().ok().and_then(|b| of(b.pid()))]
    };
    let cpu_before = cpu(&bpf);

    let kills = AtomicUsize::new(0);
    // Slots: a worker claims one before spawning, so exactly `target` hogs are killed (a hog
    // that was not killed gives its slot back).
    let claimed = AtomicUsize::new(0);
    let spawned = AtomicUsize::new(0);
    let pids = Mutex::new(Vec::<u32>::with_capacity(target + ncg));
    let killed = Mutex::new(Vec::<u32>::with_capacity(target));
    let errors = Mutex::new(Vec::<String>::new());
    let deadline = Instant::now() + Duration::from_secs(30) + Duration::from_millis(60 * target as u64);
    let hog = Hog::anon(HOG_MIB);
    if let Some(d) = stall {
        watch.stall_for(d);
    }
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for cg in &cgs {
            let (kills, claimed, spawned, pids, killed, errors, hog) =
                (&kills, &claimed, &spawned, &pids, &killed, &errors, &hog);
            s.spawn(move || {
                while Instant::now() < deadline && check_interrupted().is_ok() {
                    if claimed.fetch_add(1, Ordering::SeqCst) >= target {
                        return;
                    }
                    let mut child = match cg.spawn_hog(hog) {
                        Ok(c) => c,
                        Err(e) => {
                            claimed.fetch_sub(1, Ordering::SeqCst);
                            errors.lock().unwrap().push(format!("{e:#}"));
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                    };
                    spawned.fetch_add(1, Ordering::SeqCst);
                    let pid = child.id();
                    pids.lock().unwrap().push(pid);
                    match child.wait() {
                        Ok(st) if st.signal() == Some(libc::SIGKILL) => {
                            kills.fetch_add(1, Ordering::SeqCst);
                            killed.lock().unwrap().push(pid);
                        }
                        Ok(st) => {
                            claimed.fetch_sub(1, Ordering::SeqCst);
                            errors.lock().unwrap().push(format!("a hog was not OOM-killed: {st}"))
                        }
                        Err(e) => errors.lock().unwrap().push(format!("wait: {e}")),
                    }
                }
            });
        }
    });
    let secs = t0.elapsed().as_secs_f64();
    check_interrupted()?;
    let errors = errors.into_inner().unwrap();
    if !errors.is_empty() {
        say!("{} hog problems, first: {}", errors.len(), errors[0]);
    }
    let pids: HashSet<u32> = pids.into_inner().unwrap().into_iter().collect();
    let killed: Vec<u32> = killed.into_inner().unwrap();
    let kernel: u64 = cgs.iter().zip(&before).map(|(cg, b)| cg.oom_kills() - b).sum();
    say!(
        "{kernel} kills (kernel oom_kill counters) in {secs:.1} s = {:.0}/s; waiting for the observers",
        kernel as f64 / secs
    );

    // Let every observer catch up (bounded), then stop them.
    let ours = |v: &Value| v["cgroup"]["memory"]["path"].as_str().is_some_and(|p| rels.contains(p));
    watch.wait_for(kernel as usize, Duration::from_secs(30), &ours)?;
    if let Ok(b) = &bpf {
        b.wait_for(kernel as usize, Duration::from_secs(10), &pids)?;
    }
    sleep(Duration::from_secs(1))?;
    let cpu_s = [0, 1].map(|i| Some(cpu(&bpf)[i]? - cpu_before[i]?));
    let prog_stats = if ctx.bpf_stats {
        bpf_prog_stats(watch.proc.pid())
    } else {
        None
    };
    let evs = watch.take(&ours);
    // Bench victims reported in some other cgroup: a misattribution, worth knowing.
    let elsewhere = watch
        .take(&|v: &Value| victim_pid(v).is_some_and(|p| pids.contains(&p)))
        .len();
    let lost_total: u64 = evs.iter().filter_map(|a| a.event["lost_events"].as_u64()).sum();
    let bad = watch.bad_lines();
    let oomtrace_stderr = watch.stderr_lines();
    let strategy = watch.strategy.clone();
    drop(watch);
    let bpf_victims = match &mut bpf {
        Ok(b) => {
            b.stop();
            Ok((b.victims(), b.lost(), b.messages()))
        }
        Err(e) => Err(e.clone()),
    };
    let oomkill_pids = oomkill.pids();
    let oomkill_status = oomkill.status();
    drop(oomkill);
    let klog: KmsgLog = kmsg.finish();
    drop(cgs);
    say!("observers stopped, cgroups removed");

    if let Some(dir) = &ctx.dump {
        dump(
            dir,
            target,
            &evs,
            bpf_victims.as_ref().map(|v| v.0.as_slice()).unwrap_or(&[]),
            &klog,
            &oomtrace_stderr,
        )?;
    }

    // oomtrace: distinct victims among the bench pids; duplicates and strangers noted.
    let mut per_pid: HashMap<u32, usize> = HashMap::new();
    for a in &evs {
        if let Some(p) = victim_pid(&a.event) {
            *per_pid.entry(p).or_default() += 1;
        }
    }
    let distinct = per_pid.keys().filter(|p| pids.contains(p)).count() as u64;
    let dups: usize = per_pid.values().map(|n| n - 1).sum();
    let strangers = per_pid.keys().filter(|p| !pids.contains(p)).count();
    let mut missing: Vec<u32> = killed.iter().copied().filter(|p| !per_pid.contains_key(p)).collect();
    missing.sort_unstable();
    missing.truncate(20);
    let mut note = Vec::new();
    if evs.len() as u64 != distinct {
        note.push(format!("{} events", evs.len()));
    }
    if dups > 0 {
        note.push(format!("{dups} duplicates"));
    }
    if elsewhere > 0 {
        note.push(format!(
            "{elsewhere} bench victims reported with another cgroup.memory.path"
        ));
    }
    if strangers > 0 {
        note.push(format!("{strangers} victims not spawned by the bench"));
    }
    if lost_total > 0 {
        note.push(format!("lost_events={lost_total}"));
    }
    if !bad.is_empty() {
        note.push(format!("{} non-JSON lines", bad.len()));
    }
    let warn: Vec<&String> = oomtrace_stderr
        .iter()
        .filter(|l| l.contains("WARN") || l.contains("lost"))
        .collect();
    if !warn.is_empty() {
        note.push(format!("stderr: {}", warn[0]));
    }
    let mut observers = vec![Seen {
        name: "oomtrace",
        count: Some(distinct),
        note: note.join("; "),
    }];

    let (bpf_seen, bpf_lat) = match bpf_victims {
        Ok((v, lost, msgs)) => {
            let mine: Vec<BpfVictim> = v.into_iter().filter(|b| pids.contains(&b.pid)).collect();
            let distinct: HashSet<u32> = mine.iter().map(|b| b.pid).collect();
            let mut note = Vec::new();
            if lost > 0 {
                note.push(format!("bpftrace says: lost {lost} events"));
            }
            // (Its RLIMIT_MEMLOCK complaint is harmless since 5.11: BPF memory is memcg-charged.)
            if let Some(e) = msgs
                .iter()
                .find(|l| l.contains("ERROR") && !l.contains("RLIMIT_MEMLOCK"))
            {
                note.push(e.clone());
            }
            (
                Seen {
                    name: "bpftrace",
                    count: Some(distinct.len() as u64),
                    note: note.join("; "),
                },
                Dist::of(&bpftrace_latencies(&mine)),
            )
        }
        Err(e) => (
            Seen {
                name: "bpftrace",
                count: None,
                note: e,
            },
            Dist::default(),
        ),
    };
    observers.push(bpf_seen);

    let kmsg_note = if klog.lost_records > 0 {
        format!(
            "kernel log overran: {} records lost before they could be read",
            klog.lost_records
        )
    } else {
        String::new()
    };
    let killed: HashSet<u32> = klog.killed_pids().into_iter().filter(|p| pids.contains(p)).collect();
    observers.push(Seen {
        name: "kmsg_killed_process",
        count: Some(killed.len() as u64),
        note: kmsg_note.clone(),
    });
    let oom_kill: HashSet<u32> = klog.oom_kill_pids().into_iter().filter(|p| pids.contains(p)).collect();
    observers.push(Seen {
        name: "kmsg_oom_kill_line",
        count: Some(oom_kill.len() as u64),
        note: "rate-limited by the kernel (oom_rs: 10 per 5 s)".into(),
    });
    observers.push(match oomkill_pids {
        Some(p) => {
            let d: HashSet<u32> = p.into_iter().filter(|p| pids.contains(p)).collect();
            Seen {
                name: "libbpf_oomkill",
                count: Some(d.len() as u64),
                note: String::new(),
            }
        }
        None => Seen {
            name: "libbpf_oomkill",
            count: None,
            note: oomkill_status,
        },
    });

    Ok(StormResult {
        target,
        stalled: stall,
        cgroups: ncg,
        spawned: spawned.into_inner(),
        sigkilled: kills.into_inner(),
        secs,
        kernel,
        observers,
        oomtrace_latency: Dist::of(&oomtrace_latencies(&evs)),
        bpftrace_latency: bpf_lat,
        strategy,
        bpf: prog_stats,
        oomtrace_missing: missing,
        cpu_s,
    })
}

pub struct IsolatedResult {
    pub kills: usize,
    pub kernel: u64,
    pub oomtrace_seen: usize,
    pub oomtrace_latency: Dist,
    pub bpftrace_latency: Dist,
    /// oomtrace's BPF time per kill, µs: as run (the charging task's stacks captured), and a
    /// second daemon with `--no-charge-stacks` on the same kills.
    pub bpf_us_per_kill: Option<(f64, f64)>,
}

impl IsolatedResult {
    pub fn json(&self) -> Value {
        json!({
            "kills": self.kills,
            "kernel_oom_kill": self.kernel,
            "oomtrace_reported": self.oomtrace_seen,
            "latency": { "oomtrace": self.oomtrace_latency.json(), "bpftrace": self.bpftrace_latency.json() },
            "bpf_us_per_kill": self.bpf_us_per_kill.map(|(with, without)| json!({
                "with_charge_stacks": r3(with),
                "without_charge_stacks": r3(without),
                "stack_capture": r3(with - without),
            })),
        })
    }
}

/// `n` kills one at a time: each hog is killed, its event awaited, then a pause.
pub fn isolated(ctx: &Ctx, n: usize) -> Result<IsolatedResult> {
    say!("{n} isolated kills");
    let cg = TestCgroup::new("oomtrace-bench-single")?;
    cg.set_limit(LIMIT_MIB * MIB)?;
    let watch = OomtraceWatch::start(&ctx.oomtrace, &["--no-kubernetes"], &[])?;
    // The same kills seen without the stacks: what capturing them costs, side by side.
    let plain = match ctx.bpf_stats {
        true => Some(OomtraceWatch::start(&ctx.oomtrace, &["--no-kubernetes", "--no-charge-stacks"], &[])?),
        false => None,
    };
    let mut bpf = Bpftrace::start().map_err(|e| say!("bpftrace unavailable: {e:#}")).ok();
    sleep(Duration::from_millis(500))?;
    let ours = |v: &Value| v["cgroup"]["memory"]["path"].as_str() == Some(cg.rel.as_str());
    let mut pids = HashSet::new();
    let mut seen = 0;
    for i in 0..n {
        check_interrupted()?;
        let mut child = cg.spawn_hog(&Hog::anon(HOG_MIB))?;
        pids.insert(child.id());
        let st = child.wait()?;
        if st.signal() != Some(libc::SIGKILL) {
            say!("isolated kill {i}: the hog was not OOM-killed ({st})");
        }
        seen = watch.wait_for(i + 1, Duration::from_secs(10), &ours)?;
        if let Some(b) = &bpf {
            b.wait_for(i + 1, Duration::from_secs(2), &pids)?;
        }
        sleep(Duration::from_millis(150))?;
    }
    let kernel = cg.oom_kills();
    let per_kill = |w: &OomtraceWatch| bpf_prog_stats(w.proc.pid()).map(|(_, ns)| ns as f64 / 1e3 / kernel.max(1) as f64);
    let bpf_us_per_kill = plain.as_ref().and_then(|p| per_kill(&watch).zip(per_kill(p)));
    drop(plain);
    let evs = watch.take(&ours);
    drop(watch);
    let bpf_lat = match &mut bpf {
        Some(b) => {
            b.stop();
            let mine: Vec<BpfVictim> = b.victims().into_iter().filter(|v| pids.contains(&v.pid)).collect();
            Dist::of(&bpftrace_latencies(&mine))
        }
        None => Dist::default(),
    };
    Ok(IsolatedResult {
        kills: n,
        kernel,
        oomtrace_seen: seen,
        oomtrace_latency: Dist::of(&oomtrace_latencies(&evs)),
        bpftrace_latency: bpf_lat,
        bpf_us_per_kill,
    })
}

/// Raw observations of one storm, for digging: `storm-K-oomtrace.jsonl` (read time + event),
/// `storm-K-bpftrace.txt` (pid, probe ns, read ns; CLOCK_MONOTONIC), `storm-K-kmsg.txt`,
/// `storm-K-oomtrace.stderr` (with `RUST_LOG=oomtrace=debug`, each kill's time by stage).
fn dump(dir: &std::path::Path, target: usize, evs: &[Arrived], bpf: &[BpfVictim], klog: &KmsgLog, stderr: &[String]) -> Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let mut f = std::io::BufWriter::new(std::fs::File::create(
        dir.join(format!("storm-{target}-oomtrace.jsonl")),
    )?);
    for a in evs {
        writeln!(
            f,
            "{}",
            json!({ "read_at_ns": a.read_at_ns.to_string(), "event": a.event })
        )?;
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join(format!("storm-{target}-bpftrace.txt")))?);
    for b in bpf {
        writeln!(f, "{} {} {}", b.pid, b.probe_ns, b.read_at_ns)?;
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join(format!("storm-{target}-kmsg.txt")))?);
    writeln!(f, "# records {} lost {}", klog.records, klog.lost_records)?;
    for l in &klog.lines {
        writeln!(f, "{l}")?;
    }
    std::fs::write(dir.join(format!("storm-{target}-oomtrace.stderr")), stderr.join("\n"))?;
    Ok(())
}
