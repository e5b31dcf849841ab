//! The in-guest test runner: `xtask vm-test --guest <results dir>`, started by vng as the
//! guest's only job, as root. The host root is shared read-only; `results dir` is the one
//! writable host directory. Everything it learns goes there: `guest.log` (progress, relayed
//! live by the host), `items/<name>.stdout|.stderr`, `guest-report.json` (rewritten after each
//! executable, `finished` set at the very end) and `dmesg.txt`.

use std::fs::File;
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::{Cgroups, GuestReport, ItemResult, Plan, PlanItem};

pub const PLAN: &str = "plan.json";
pub const REPORT: &str = "guest-report.json";
pub const ITEMS_DIR: &str = "items";
pub const LOG: &str = "guest.log";

const CGROUP: &str = "/sys/fs/cgroup";
/// The v1 hierarchies a v1 guest mounts under [`CGROUP`], each with its one controller.
const V1_CONTROLLERS: &[&str] = &["memory", "pids"];
/// The runner's own cgroup: keeps it out of the root cgroup and apart from what tests create.
const RUNNER: &str = "runner";

struct Log {
    file: Option<File>,
    start: Instant,
}

impl Log {
    fn line(&mut self, msg: impl AsRef<str>) {
        let line = format!(
            "[{:7.1}s] {}\n",
            self.start.elapsed().as_secs_f64(),
            msg.as_ref()
        );
        print!("{line}"); // serial console
        let _ = std::io::stdout().flush();
        if let Some(f) = &mut self.file {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

pub fn run(dir: &Path) -> anyhow::Result<()> {
    let mut log = Log {
        file: File::options()
            .create(true)
            .append(true)
            .open(dir.join(LOG))
            .ok(),
        start: Instant::now(),
    };
    let mut report = GuestReport::default();
    let result = run_inner(dir, &mut log, &mut report);
    if let Err(e) = &result {
        log.line(format!("runner error: {e:#}"));
        report.setup_errors.push(format!("runner error: {e:#}"));
    }
    // Always leave the kernel log and a final report behind.
    let dmesg = Command::new("dmesg")
        .output()
        .map(|o| o.stdout)
        .unwrap_or_else(|e| format!("dmesg failed: {e}\n").into_bytes());
    let _ = std::fs::write(dir.join("dmesg.txt"), dmesg);
    report.finished = true;
    write_report(dir, &report);
    log.line("runner done");
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    Ok(())
}

fn write_report(dir: &Path, report: &GuestReport) {
    let tmp = dir.join(format!("{REPORT}.tmp"));
    if let Ok(json) = serde_json::to_vec_pretty(report) {
        if std::fs::write(&tmp, json).is_ok() {
            let _ = std::fs::rename(&tmp, dir.join(REPORT));
        }
    }
}

fn run_inner(dir: &Path, log: &mut Log, report: &mut GuestReport) -> anyhow::Result<()> {
    let plan: Plan =
        serde_json::from_slice(&std::fs::read(dir.join(PLAN)).context("reading the plan")?)
            .context("parsing the plan")?;
    log.line(format!(
        "guest runner up, kernel {}",
        read_trim("/proc/sys/kernel/osrelease")
    ));

    setup(plan.cgroups, log, report);
    report.uname_r = read_trim("/proc/sys/kernel/osrelease");
    report.cmdline = read_trim("/proc/cmdline");
    match plan.cgroups {
        Cgroups::V2 => {
            report.cgroup_controllers = read_trim(&format!("{CGROUP}/cgroup.controllers"));
            report.cgroup_subtree_control = read_trim(&format!("{CGROUP}/cgroup.subtree_control"));
        }
        Cgroups::V1 => {
            let v1: Vec<&str> = V1_CONTROLLERS
                .iter()
                .copied()
                .filter(|c| mounted(&format!("{CGROUP}/{c}")).as_deref() == Some("cgroup"))
                .collect();
            report.cgroup_controllers = format!("v1: {}", v1.join(" "));
            report.cgroup_subtree_control = "(no cgroup2 mount)".into();
        }
    }
    report.btf_vmlinux = Path::new("/sys/kernel/btf/vmlinux").exists();
    report.nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    report.mem_total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_string()))
        })
        .unwrap_or_default();
    log.line(format!(
        "cgroup.controllers: {}; subtree_control: {}; BTF: {}",
        report.cgroup_controllers,
        report.cgroup_subtree_control,
        if report.btf_vmlinux { "yes" } else { "NO" }
    ));
    write_report(dir, report);

    let items_dir = dir.join(ITEMS_DIR);
    std::fs::create_dir_all(&items_dir)?;
    let deadline = log.start + Duration::from_secs(plan.budget_secs);
    for item in &plan.items {
        let res = if Instant::now() >= deadline {
            log.line(format!("{}: not run, time budget exhausted", item.name));
            ItemResult {
                name: item.name.clone(),
                command: command_line(item),
                spawn_error: Some("not run: time budget exhausted".into()),
                ..Default::default()
            }
        } else {
            log.line(format!("{}: running", item.name));
            let r = run_item(&plan, item, dir, &items_dir, deadline);
            log.line(format!(
                "{}: exit {:?}{}{}, {} passed, {} failed, {:.1}s",
                item.name,
                r.exit_code,
                r.signal.map(|s| format!(" signal {s}")).unwrap_or_default(),
                if r.timed_out { " TIMED OUT" } else { "" },
                r.passed,
                r.failed,
                r.secs
            ));
            r
        };
        report.items.push(res);
        write_report(dir, report);
    }
    Ok(())
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("<{e}>"))
}

/// Filesystem type mounted at `target`, if any (the topmost mount).
fn mounted(target: &str) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().rev().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_src, dst, fstype) = (f.next()?, f.next()?, f.next()?);
        (dst == target).then(|| fstype.to_string())
    })
}

fn mount(fstype: &str, target: &str) -> std::io::Result<()> {
    mount_with(fstype, target, None)
}

/// mount(2) of `fstype` at `target` (created if missing), with `data` options.
fn mount_with(fstype: &str, target: &str, data: Option<&str>) -> std::io::Result<()> {
    use std::ffi::CString;
    std::fs::create_dir_all(target)?;
    let fs = CString::new(fstype).unwrap();
    let tgt = CString::new(target).unwrap();
    let data = data.map(|d| CString::new(d).unwrap());
    let data_ptr = data
        .as_ref()
        .map_or(std::ptr::null(), |d| d.as_ptr().cast());
    // SAFETY: valid NUL-terminated strings (or a null data pointer).
    let rc = unsafe { libc::mount(fs.as_ptr(), tgt.as_ptr(), fs.as_ptr(), 0, data_ptr) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Pure cgroup v1 in the guest: whatever cgroup2 the guest's init mounted at [`CGROUP`] is
/// unmounted (this is the guest's own kernel: nothing of the host is touched), a tmpfs goes
/// there, and each of [`V1_CONTROLLERS`] gets its own v1 hierarchy, as systemd's legacy mode
/// lays them out. Returns the memory hierarchy's root.
fn mount_v1(log: &mut Log) -> Result<String, String> {
    while mounted(CGROUP).as_deref() == Some("cgroup2") {
        let tgt = std::ffi::CString::new(CGROUP).unwrap();
        // SAFETY: a valid NUL-terminated path.
        if unsafe { libc::umount2(tgt.as_ptr(), 0) } != 0 {
            return Err(format!(
                "unmounting the guest's cgroup2 at {CGROUP}: {}",
                std::io::Error::last_os_error()
            ));
        }
        log.line(format!("unmounted cgroup2 at {CGROUP}"));
    }
    if mounted(CGROUP).as_deref() != Some("tmpfs") {
        mount_with("tmpfs", CGROUP, Some("mode=755"))
            .map_err(|e| format!("mounting tmpfs at {CGROUP}: {e}"))?;
    }
    for c in V1_CONTROLLERS {
        let target = format!("{CGROUP}/{c}");
        if mounted(&target).as_deref() != Some("cgroup") {
            mount_with("cgroup", &target, Some(c))
                .map_err(|e| format!("mounting the v1 {c} hierarchy at {target}: {e}"))?;
            log.line(format!("mounted cgroup v1 {c} at {target}"));
        }
    }
    Ok(format!("{CGROUP}/memory"))
}

/// Enables memory (+pids) for the children of the v2 root; returns the root.
fn enable_v2(err: &mut impl FnMut(String)) -> String {
    let available = read_trim(&format!("{CGROUP}/cgroup.controllers"));
    for ctrl in ["memory", "pids"] {
        if !available.split_whitespace().any(|c| c == ctrl) {
            if ctrl == "memory" {
                err(format!(
                    "no memory controller in cgroup.controllers ({available})"
                ));
            }
            continue;
        }
        if let Err(e) = std::fs::write(
            format!("{CGROUP}/cgroup.subtree_control"),
            format!("+{ctrl}"),
        ) {
            err(format!(
                "enabling +{ctrl} in the root cgroup.subtree_control: {e}"
            ));
        }
    }
    CGROUP.to_string()
}

/// The guest's cgroups (pure v2 with memory and pids, or pure v1), tracefs, bpffs, debugfs;
/// the runner in its own memory cgroup, exempt from the OOM killer. Failures are recorded, not
/// fatal: the tests will tell.
fn setup(cgroups: Cgroups, log: &mut Log, report: &mut GuestReport) {
    let mut errors = Vec::new();
    let mut err = |msg: String| errors.push(msg);
    let mut mounts = vec![
        ("tracefs", "/sys/kernel/tracing"),
        ("bpf", "/sys/fs/bpf"),
        ("debugfs", "/sys/kernel/debug"),
    ];
    if cgroups == Cgroups::V2 {
        mounts.insert(0, ("cgroup2", CGROUP));
    }
    for (fstype, target) in mounts {
        match mounted(target) {
            Some(t) if t == fstype => {}
            other => match mount(fstype, target) {
                Err(e) => err(format!(
                    "mounting {fstype} at {target} (had {other:?}): {e}"
                )),
                Ok(()) => log.line(format!("mounted {fstype} at {target}")),
            },
        }
    }
    let memory_root = match cgroups {
        Cgroups::V2 => Some(enable_v2(&mut err)),
        Cgroups::V1 => mount_v1(log).map_err(&mut err).ok(),
    };
    if let Some(root) = memory_root {
        let runner = format!("{root}/{RUNNER}");
        if let Err(e) = std::fs::create_dir_all(&runner).and_then(|()| {
            std::fs::write(
                format!("{runner}/cgroup.procs"),
                std::process::id().to_string(),
            )
        }) {
            err(format!("moving the runner into {runner}: {e}"));
        }
    }
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "-1000") {
        err(format!("setting the runner's oom_score_adj: {e}"));
    }
    for msg in errors {
        log.line(format!("setup error: {msg}"));
        report.setup_errors.push(msg);
    }
}

fn command_line(item: &PlanItem) -> Vec<String> {
    std::iter::once(item.program.display().to_string())
        .chain(item.args.iter().cloned())
        .collect()
}

fn run_item(
    plan: &Plan,
    item: &PlanItem,
    results_dir: &Path,
    items_dir: &Path,
    deadline: Instant,
) -> ItemResult {
    let start = Instant::now();
    let mut res = ItemResult {
        name: item.name.clone(),
        command: command_line(item),
        ..Default::default()
    };
    let out_path: PathBuf = items_dir.join(format!("{}.stdout", item.name));
    let err_path: PathBuf = items_dir.join(format!("{}.stderr", item.name));
    let spawned = (|| -> anyhow::Result<std::process::Child> {
        let stdout = File::create(&out_path)?;
        let stderr = File::create(&err_path)?;
        // The runner is at oom_score_adj -1000, which children inherit: give the tests back a
        // normal 0 (they protect themselves if they need to), or a global OOM would find
        // nothing killable and panic the guest.
        Command::new("/bin/sh")
            .arg("-c")
            .arg("echo 0 > /proc/self/oom_score_adj && exec \"$0\" \"$@\"")
            .arg(&item.program)
            .args(&item.args)
            .current_dir(&item.cwd)
            .envs(plan.env.iter().map(|(k, v)| (k, v)))
            // Where a test may leave extra artifacts for the host (items/ is wiped unless
            // --keep, the results dir itself is not).
            .env("OOMTRACE_VM_RESULTS", results_dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", item.program.display()))
    })();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            res.spawn_error = Some(format!("{e:#}"));
            return res;
        }
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() >= deadline => {
                // Kill the whole process group: the executable and whatever it started.
                // SAFETY: plain kill(2) on the group we created for this child.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                res.timed_out = true;
                break child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => {
                res.spawn_error = Some(format!("waiting: {e}"));
                break None;
            }
        }
    };
    if let Some(st) = status {
        res.exit_code = st.code();
        res.signal = st.signal();
    }
    res.secs = start.elapsed().as_secs_f64();
    if let Ok(stdout) = std::fs::read_to_string(&out_path) {
        for line in stdout.lines() {
            let Some(rest) = line.trim_start().strip_prefix("test result: ") else {
                continue;
            };
            res.result_lines += 1;
            for part in rest.split(';') {
                let t: Vec<&str> = part.split_whitespace().collect();
                let [.., n, what] = t.as_slice() else {
                    continue;
                };
                let Ok(n) = n.parse::<u64>() else { continue };
                match *what {
                    "passed" => res.passed += n,
                    "failed" => res.failed += n,
                    "ignored" => res.ignored += n,
                    _ => {}
                }
            }
        }
    }
    res
}
