//! `cargo xtask vm-test`: boot Debian kernels under QEMU and run oomtrace's integration tests
//! inside them, as root, on a pure cgroup v2 system.
//!
//! # Why a VM, and why TCG
//! Production nodes run pure cgroup v2 and kernels with kprobes/fentry; development hosts may
//! not (hybrid cgroups, no kprobes), and the tests provoke real OOM kills, global ones included,
//! which must never hit the host. Each kernel boots in a throwaway QEMU guest in software
//! emulation (TCG, `--disable-kvm`): the `/dev/kvm` on our hosts cannot run stock kernels.
//! QEMU 7.2's TCG needs `-cpu max,-la57,-cx16` (LA57 makes 6.12 fault in text_poke; CX16 trips
//! a TCG flags bug that shows up as random double faults in SLUB's `cmpxchg16b` path).
//!
//! # Route: virtme-ng (vng) sharing the host root read-only over 9p
//! The payload is the host's own build output: `target/release/oomtrace` and the libtest
//! executables of `oomtrace-tests`, which are dynamically linked host binaries that also look
//! at `/work/...` paths (their manifest dir, fixtures). virtme-ng boots the kernel with the
//! host's `/` as the guest root over 9p with QEMU's `readonly=on`, so every host path and
//! library is there unchanged, with nothing to copy. The alternative, a hermetic busybox
//! initramfs (about 8 s faster per boot), would need the binaries, their shared libraries and
//! tools (bpftool, mount, ...) copied in and kept in sync; not worth 8 s on a run that takes
//! minutes. Writes inside the guest land in tmpfs overlays (`/tmp`, `/etc`, `/var`, ...) in
//! guest RAM; the only host directory the guest can write is the per-kernel results dir,
//! handed over as vng's single `--rwdir`. `--force-9p` avoids virtiofsd. Our hosts have no
//! udev, so vng's stdout/exit-code virtio ports do not come up: all results travel through the
//! results dir, and the guest's serial console (kernel log) is saved as `console.log`.
//!
//! # Inside the guest
//! vng runs this very xtask binary (a copy under the cache dir, so a concurrent rebuild of
//! xtask cannot swap it out mid-run) as `xtask vm-test --guest <results dir>`: see
//! [`guest`]. It mounts cgroup2/tracefs/bpffs/debugfs when missing, enables `+memory` (and
//! `+pids`) in the root `cgroup.subtree_control`, moves itself into `/sys/fs/cgroup/runner`
//! with `oom_score_adj` -1000, then runs each test executable with oom_score_adj reset to 0,
//! and writes their outputs, a report and `dmesg` into the results dir.
//!
//! # Cache layout (`<workspace>/target/vm-cache`, or `$OOMTRACE_VM_CACHE`)
//! - `apt/`: private sources.list, lists and apt cache (the host's apt config is never used for
//!   kernels, and never modified); lists are refreshed at most once a day.
//! - `kernels/<uname -r>/`: unpacked `linux-image-*` packages (boot/vmlinuz, lib/modules).
//! - `venv/`: Python venv with virtme-ng (pinned).
//! - `results/<6.1|6.12>/`: `summary.json` (outcome, counts, timings, guest facts),
//!   `test-output.txt` (each executable's stdout/stderr/status), `dmesg.txt` (the guest's whole
//!   kernel log), `console.log` (serial console), `guest.log` (runner progress).
//! - `bin/`: the staged guest runner and the smoke script.

mod boot;
mod guest;
mod kernel;
mod payload;
mod prereq;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// How a guest mounts its cgroups.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Cgroups {
    /// Pure cgroup v2 (`cgroup_no_v1=all`), as on current nodes.
    #[default]
    V2,
    /// Pure cgroup v1: the memory controller (and pids) on v1 hierarchies, no cgroup2 mount,
    /// as on older distributions and cgroup-v1 node images.
    V1,
}

/// One guest of the suite: a Debian kernel series and the cgroups it boots with.
pub struct Guest {
    /// `--kernel` name and results directory.
    pub name: &'static str,
    pub series: &'static str,
    pub cgroups: Cgroups,
}

/// The guests, in `--kernel all` order: bullseye's 5.10 (the oldest LTS still on many nodes),
/// bookworm's 6.1, bookworm-backports' 6.12, and 5.10 again on pure cgroup v1.
pub const GUESTS: &[Guest] = &[
    Guest {
        name: "5.10",
        series: "5.10",
        cgroups: Cgroups::V2,
    },
    Guest {
        name: "6.1",
        series: "6.1",
        cgroups: Cgroups::V2,
    },
    Guest {
        name: "6.12",
        series: "6.12",
        cgroups: Cgroups::V2,
    },
    Guest {
        name: "5.10-v1",
        series: "5.10",
        cgroups: Cgroups::V1,
    },
];

#[derive(clap::Args)]
pub struct Args {
    /// Guests to boot: bullseye's 5.10, bookworm's 6.1, bookworm-backports' 6.12 (pure cgroup
    /// v2), 5.10 on pure cgroup v1, or all of them in turn.
    #[arg(long, default_value = "all", value_parser = ["5.10", "6.1", "6.12", "5.10-v1", "all"])]
    kernel: String,

    /// Keep scratch files: per-executable output files and the guest plan in the results dir,
    /// downloaded .deb packages, and superseded kernel versions in the cache.
    #[arg(long)]
    keep: bool,

    /// Guest RAM, as QEMU understands it.
    #[arg(long, default_value = "2G")]
    memory: String,

    /// Guest vCPUs.
    #[arg(long, default_value_t = 2)]
    cpus: u32,

    /// Guests booted at once. A guest's suite runs one test at a time, so under TCG it keeps
    /// about one host core busy: two at once use a 2-core host fully.
    #[arg(long, default_value_t = 2)]
    jobs: usize,

    /// Time limit for booting and running one kernel's tests, e.g. 20m, 90s, 1h (bare number:
    /// seconds). A guest that has not finished by then is killed and counts as a failure. A
    /// full suite takes 22 to 28 min per guest under TCG, two guests at once on 2 cores: the
    /// default leaves room for a busy host.
    #[arg(long, default_value = "45m", value_parser = parse_duration)]
    timeout: Duration,

    /// Run the built-in shell smoke test (cgroup v2 memcg OOM kill, oom tracepoint, BTF, bpf())
    /// instead of the integration tests; builds nothing. For diagnosing VM problems.
    #[arg(long)]
    smoke: bool,

    /// Run these prebuilt test executables instead of building `oomtrace-tests`; nothing is
    /// built then (OOMTRACE_BIN still points at the static release daemon). Repeatable.
    #[arg(long = "test-exe", value_name = "PATH")]
    test_exe: Vec<PathBuf>,

    /// Internal: run as the in-guest test runner, with this results dir.
    #[arg(long, hide = true, value_name = "RESULTS_DIR")]
    guest: Option<PathBuf>,

    /// Extra arguments for every test executable (after `--test-threads=1`), e.g. a test name
    /// filter or `--nocapture`.
    #[arg(last = true)]
    extra: Vec<String>,
}

/// What the host hands to the guest runner, as `plan.json` in the results dir.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Plan {
    /// The guest's name ([`Guest::name`]).
    #[serde(default)]
    pub guest: String,
    pub kernel_release: String,
    #[serde(default)]
    pub cgroups: Cgroups,
    /// Seconds the guest may spend on the executables; when they are up it kills the running
    /// one, skips the rest and still saves dmesg, before the host's time limit kills the VM.
    #[serde(default)]
    pub budget_secs: u64,
    /// Environment added to every test executable's.
    pub env: Vec<(String, String)>,
    pub items: Vec<PlanItem>,
}

/// One executable to run in the guest.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct PlanItem {
    /// Short unique name, also used for its output files.
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub cwd: PathBuf,
}

/// What the guest runner reports, as `guest-report.json` (rewritten after each executable).
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct GuestReport {
    pub uname_r: String,
    pub cmdline: String,
    pub cgroup_controllers: String,
    pub cgroup_subtree_control: String,
    pub btf_vmlinux: bool,
    pub nproc: usize,
    pub mem_total: String,
    /// Problems met while preparing the guest (missing mounts, controllers, ...).
    pub setup_errors: Vec<String>,
    pub items: Vec<ItemResult>,
    /// Set once every executable has run and dmesg.txt is written.
    pub finished: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct ItemResult {
    pub name: String,
    pub command: Vec<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Could not be started at all.
    pub spawn_error: Option<String>,
    /// Killed when the guest's time budget ran out.
    #[serde(default)]
    pub timed_out: bool,
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    /// How many libtest `test result:` lines were seen.
    pub result_lines: u64,
    pub secs: f64,
}

impl ItemResult {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && self.spawn_error.is_none() && !self.timed_out
    }
}

/// Host-side `summary.json`.
#[derive(Serialize, Debug)]
struct Summary {
    series: String,
    kernel_package: String,
    kernel_version: String,
    kernel_release: String,
    outcome: Outcome,
    passed: u64,
    failed: u64,
    executables: usize,
    executables_failed: usize,
    timings_secs: Timings,
    guest: Option<GuestReport>,
}

#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum Outcome {
    Passed,
    Failed,
    DidNotFinish,
    NoTestsRan,
}

#[derive(Serialize, Debug, Clone, Default)]
struct Timings {
    setup: f64,
    download: f64,
    build: f64,
    boot_run: f64,
}

/// Where things are.
pub struct Paths {
    pub workspace: PathBuf,
    pub cache: PathBuf,
}

impl Paths {
    fn new() -> anyhow::Result<Self> {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask has no parent dir")?
            .to_path_buf();
        let cache = match std::env::var_os("OOMTRACE_VM_CACHE") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => workspace.join("target/vm-cache"),
        };
        std::fs::create_dir_all(&cache)
            .with_context(|| format!("creating cache dir {}", cache.display()))?;
        let cache = cache.canonicalize()?;
        Ok(Self { workspace, cache })
    }

    pub fn results(&self, series: &str) -> PathBuf {
        self.cache.join("results").join(series)
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        _ => (s, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad duration {s:?} (expected e.g. 20m, 90s, 1h)"))?;
    if n == 0 {
        return Err("duration must be > 0".into());
    }
    Ok(Duration::from_secs(n * mult))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(dir) = &args.guest {
        return guest::run(dir);
    }
    if let Err(e) = run_host(args) {
        // Print it ourselves: the message is what matters, not a backtrace of xtask.
        eprintln!("vm-test: error: {e:#}");
        std::process::exit(2);
    }
    Ok(())
}

fn run_host(args: Args) -> anyhow::Result<()> {
    let paths = Paths::new()?;
    let _lock = lock_cache(&paths)?;
    let guests: Vec<&Guest> = GUESTS
        .iter()
        .filter(|g| args.kernel == "all" || g.name == args.kernel)
        .collect();
    if guests.is_empty() {
        bail!("bad --kernel {}", args.kernel);
    }
    let mut series: Vec<&str> = guests.iter().map(|g| g.series).collect();
    series.dedup();
    series.sort_unstable();
    series.dedup();
    let mut timings = Timings::default();

    // 1. Host prerequisites.
    let t = Instant::now();
    let vng = prereq::ensure(&paths)?;
    timings.setup = t.elapsed().as_secs_f64();
    eprintln!("vm-test: host prerequisites ready ({:.1}s)", timings.setup);

    // 2. Kernels.
    let t = Instant::now();
    let kernels = kernel::ensure(&paths, &series, args.keep)?;
    timings.download = t.elapsed().as_secs_f64();
    eprintln!("vm-test: kernels ready ({:.1}s)", timings.download);

    // 3. Payload (the guest runner first: the builds below may take minutes).
    let guest_exe = payload::stage_guest_runner(&paths)?;
    let t = Instant::now();
    let payload = if args.smoke {
        payload::Payload::smoke(&paths)?
    } else if !args.test_exe.is_empty() {
        payload::Payload::prebuilt(&paths, &args.test_exe)?
    } else {
        payload::Payload::build(&paths)?
    };
    timings.build = t.elapsed().as_secs_f64();
    eprintln!(
        "vm-test: payload ready ({:.1}s): {} executable(s){}",
        timings.build,
        payload.executables.len(),
        if args.smoke { " [smoke]" } else { "" }
    );
    if payload.executables.is_empty() {
        bail!(
            "no test executable to run: `cargo test -p oomtrace-tests --no-run` produced none \
             (are there tests under tests/tests/?)"
        );
    }

    // 4./5. Boot and run, `--jobs` guests at a time; summaries stay in guest order.
    let run_guest = |guest: &Guest| -> anyhow::Result<Summary> {
        let k = kernels
            .iter()
            .find(|k| k.series == guest.series)
            .context("kernel of a guest")?;
        let results = paths.results(guest.name);
        let plan = payload.plan(guest, k, &args.extra);
        let t = Instant::now();
        let boot = boot::run_kernel(
            &paths,
            &vng,
            &guest_exe,
            k,
            &plan,
            &results,
            &boot::VmConfig {
                memory: args.memory.clone(),
                cpus: args.cpus,
                timeout: args.timeout,
            },
        );
        let boot_run = t.elapsed().as_secs_f64();
        let in_time = boot.unwrap_or_else(|e| {
            eprintln!("vm-test: {}: {e:#}", guest.name);
            false
        });
        finish_kernel(k, &plan, &results, in_time, &timings, boot_run, args.keep)
    };
    let mut summaries = Vec::new();
    for batch in guests.chunks(args.jobs.max(1)) {
        let done: Vec<anyhow::Result<Summary>> = std::thread::scope(|s| {
            let handles: Vec<_> = batch.iter().map(|g| s.spawn(|| run_guest(g))).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a guest's runner panicked"))))
                .collect()
        });
        for summary in done {
            summaries.push(summary?);
        }
    }

    // Report.
    eprintln!();
    eprintln!(
        "vm-test summary (results in {}):",
        paths.cache.join("results").display()
    );
    eprintln!(
        "  phases: setup {:.1}s, download {:.1}s, build {:.1}s",
        timings.setup, timings.download, timings.build
    );
    let mut ok = true;
    for s in &summaries {
        eprintln!(
            "  {:<5} {:<28} {:<15} {:>4} passed {:>4} failed  {}/{} executables ok  boot+run {:.1}s",
            s.series,
            s.kernel_release,
            format!("{:?}", s.outcome),
            s.passed,
            s.failed,
            s.executables - s.executables_failed,
            s.executables,
            s.timings_secs.boot_run,
        );
        ok &= s.outcome == Outcome::Passed;
    }
    if !ok {
        // A verdict, not an error: no anyhow backtrace.
        eprintln!("vm-test: FAILED");
        std::process::exit(1);
    }
    Ok(())
}

/// Serialize vm-test runs sharing a cache (results dirs, staged runner): take an exclusive
/// `flock` on `<cache>/vm-test.lock`, waiting for a concurrent run to end. Held until exit.
fn lock_cache(paths: &Paths) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::create(paths.cache.join("vm-test.lock"))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        eprintln!(
            "vm-test: another vm-test run uses {}, waiting for it",
            paths.cache.display()
        );
        // SAFETY: as above.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error()).context("locking the vm cache");
        }
    }
    Ok(f)
}

/// Assemble `test-output.txt` and `summary.json` from what the guest left in `results`.
/// `in_time` is whether the VM exited on its own before the time limit.
fn finish_kernel(
    k: &kernel::Kernel,
    plan: &Plan,
    results: &Path,
    in_time: bool,
    timings: &Timings,
    boot_run: f64,
    keep: bool,
) -> anyhow::Result<Summary> {
    let report: Option<GuestReport> = std::fs::read(results.join(guest::REPORT))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let finished = in_time && report.as_ref().is_some_and(|r| r.finished);

    // test-output.txt: guest facts, then each executable's stdout/stderr/status.
    let mut out = String::new();
    out.push_str(&format!(
        "kernel {} ({} {})\n",
        k.release, k.package, k.version
    ));
    if let Some(r) = &report {
        out.push_str(&format!(
            "uname -r: {}\n/proc/cmdline: {}\ncgroup.controllers: {}\ncgroup.subtree_control: {}\n\
             /sys/kernel/btf/vmlinux: {}\nCPUs: {}, MemTotal: {}\n",
            r.uname_r,
            r.cmdline,
            r.cgroup_controllers,
            r.cgroup_subtree_control,
            if r.btf_vmlinux { "present" } else { "MISSING" },
            r.nproc,
            r.mem_total
        ));
        for e in &r.setup_errors {
            out.push_str(&format!("guest setup error: {e}\n"));
        }
    } else {
        out.push_str("(no report from the guest: it did not start the runner, see console.log)\n");
    }
    for item in &plan.items {
        let res = report
            .as_ref()
            .and_then(|r| r.items.iter().find(|i| i.name == item.name));
        out.push_str(&format!(
            "\n===== {} =====\n$ (cd {} && {} {})\n",
            item.name,
            item.cwd.display(),
            item.program.display(),
            item.args.join(" ")
        ));
        let [stdout, stderr] = ["stdout", "stderr"].map(|stream| {
            let f = results
                .join(guest::ITEMS_DIR)
                .join(format!("{}.{stream}", item.name));
            let text = std::fs::read(&f).ok().map(|b| String::from_utf8_lossy(&b).into_owned());
            match &text {
                Some(t) => {
                    out.push_str(&format!("----- {stream} -----\n"));
                    out.push_str(t);
                    if !t.ends_with('\n') && !t.is_empty() {
                        out.push('\n');
                    }
                }
                None => out.push_str(&format!("----- {stream}: (none) -----\n")),
            }
            text.unwrap_or_default()
        });
        if let Some(r) = res.filter(|r| !r.success()) {
            relay_failures(&plan.guest, &item.name, &stdout, &stderr, r);
        }
        match res {
            Some(r) => {
                out.push_str(&format!(
                "----- {}: exit code {:?}, signal {:?}{}{}; {} passed, {} failed; {:.1}s -----\n",
                item.name,
                r.exit_code,
                r.signal,
                if r.timed_out { ", KILLED at the time budget" } else { "" },
                r.spawn_error
                    .as_deref()
                    .map(|e| format!(", could not start: {e}"))
                    .unwrap_or_default(),
                r.passed,
                r.failed,
                r.secs
            ))
            }
            None => out.push_str(&format!("----- {}: did not complete -----\n", item.name)),
        }
    }
    std::fs::write(results.join("test-output.txt"), out)?;

    if !results.join("dmesg.txt").exists() {
        // The guest died before saving its kernel log: the serial console has most of it.
        let console = std::fs::read(results.join(boot::CONSOLE)).unwrap_or_default();
        let mut text = String::from(
            "# guest did not finish: kernel messages recovered from the serial console\n",
        );
        text.push_str(&String::from_utf8_lossy(&console));
        std::fs::write(results.join("dmesg.txt"), text)?;
    }

    let items = report.as_ref().map(|r| r.items.as_slice()).unwrap_or(&[]);
    let passed: u64 = items.iter().map(|i| i.passed).sum();
    let failed: u64 = items.iter().map(|i| i.failed).sum();
    let executables_failed = items.iter().filter(|i| !i.success()).count()
        + plan.items.len().saturating_sub(items.len());
    let outcome = if !finished {
        Outcome::DidNotFinish
    } else if executables_failed > 0 || report.as_ref().is_some_and(|r| !r.setup_errors.is_empty())
    {
        Outcome::Failed
    } else if items.is_empty() || passed + failed == 0 {
        // No executable ran, or none reported a single passed or failed test.
        Outcome::NoTestsRan
    } else {
        Outcome::Passed
    };
    let summary = Summary {
        series: plan.guest.clone(),
        kernel_package: k.package.clone(),
        kernel_version: k.version.clone(),
        kernel_release: k.release.clone(),
        outcome,
        passed,
        failed,
        executables: plan.items.len(),
        executables_failed,
        timings_secs: Timings {
            boot_run,
            ..timings.clone()
        },
        guest: report,
    };
    std::fs::write(
        results.join("summary.json"),
        serde_json::to_string_pretty(&summary)? + "\n",
    )?;
    if !keep {
        let _ = std::fs::remove_dir_all(results.join(guest::ITEMS_DIR));
        let _ = std::fs::remove_file(results.join(guest::PLAN));
        let _ = std::fs::remove_file(results.join(guest::REPORT));
    }
    eprintln!(
        "vm-test: {} {}: {:?}, {} passed, {} failed ({:.1}s boot+run); results in {}",
        plan.guest,
        k.release,
        outcome,
        passed,
        failed,
        boot_run,
        results.display()
    );
    Ok(summary)
}

/// Lines of a failed executable's output echoed to the host's stderr: enough for libtest's
/// `failures:` section, so a CI log that keeps only stderr still names the test and its panic.
const RELAYED_LINES: usize = 150;

/// Echoes a failed executable's libtest `failures:` section (or, without one, its last lines).
fn relay_failures(series: &str, name: &str, stdout: &str, stderr: &str, r: &ItemResult) {
    let text = match stdout.find("\nfailures:\n") {
        Some(at) => stdout[at + 1..].to_owned(),
        None => format!("{stdout}{stderr}"),
    };
    let lines: Vec<&str> = text.lines().collect();
    let shown = &lines[lines.len().saturating_sub(RELAYED_LINES)..];
    eprintln!(
        "vm-test: {series}: {name} failed (exit code {:?}, signal {:?}{}); its last {} lines:",
        r.exit_code,
        r.signal,
        if r.timed_out { ", killed at the time budget" } else { "" },
        shown.len()
    );
    for line in shown {
        eprintln!("  [{series} {name}] {line}");
    }
}
