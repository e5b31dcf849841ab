//! Boot one kernel with virtme-ng under QEMU TCG and wait for the guest runner, relaying its
//! progress, within a time limit.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::kernel::Kernel;
use super::prereq::Vng;
use super::{guest, Cgroups, Paths, Plan};

/// The guest's serial console (kernel messages, virtme-ng-init, runner progress).
pub const CONSOLE: &str = "console.log";

/// QEMU 7.2 TCG: without LA57 (6.12 faults in text_poke with it) and without CX16 (TCG flags
/// bug after `cmpxchg16b %gs:` gives random double faults; SLUB then takes its locked path).
const QEMU_CPU: &str = "max,-la57,-cx16";

/// Kernel command line additions. log_buf_len: room for many OOM reports in dmesg; loglevel=4
/// keeps the (slow, emulated) serial console to warnings and worse; everything still reaches
/// dmesg. tsc=reliable clocksource=tsc: under TCG, 5.10 otherwise falls back to the HPET, whose
/// emulated MMIO reads make every clock read a trap (its suite ran ~4x slower, and timers in
/// the tests' clients overran their waits). A v2 guest adds cgroup_no_v1=all (pure cgroup v2,
/// as on current nodes); a v1 guest leaves the v1 controllers available, and its runner mounts
/// them (`guest::setup`).
fn cmdline(cgroups: Cgroups) -> &'static str {
    match cgroups {
        Cgroups::V2 => "cgroup_no_v1=all tsc=reliable clocksource=tsc log_buf_len=4M loglevel=4",
        Cgroups::V1 => "tsc=reliable clocksource=tsc log_buf_len=4M loglevel=4",
    }
}

/// The guest keeps this much of the time limit for booting, saving dmesg and powering off.
const GUEST_MARGIN: Duration = Duration::from_secs(120);

pub struct VmConfig {
    pub memory: String,
    pub cpus: u32,
    pub timeout: Duration,
}

/// Single-quote for the guest shell that runs vng's `--exec`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Ok(true): the guest powered off by itself; Ok(false): killed at the time limit.
pub fn run_kernel(
    paths: &Paths,
    vng: &Vng,
    guest_exe: &Path,
    k: &Kernel,
    plan: &Plan,
    results: &Path,
    cfg: &VmConfig,
) -> anyhow::Result<bool> {
    let name = &plan.guest;
    // Fresh results dir: it is the guest's only writable host directory.
    if results.exists() {
        std::fs::remove_dir_all(results)
            .with_context(|| format!("clearing {}", results.display()))?;
    }
    std::fs::create_dir_all(results)?;
    let mut plan = plan.clone();
    plan.budget_secs = cfg
        .timeout
        .saturating_sub(GUEST_MARGIN)
        .max(Duration::from_secs(30))
        .as_secs();
    std::fs::write(results.join(guest::PLAN), serde_json::to_vec_pretty(&plan)?)?;

    let console = std::fs::File::create(results.join(CONSOLE))?;
    let exec = format!(
        "exec {} vm-test --guest {}",
        sh_quote(&guest_exe.display().to_string()),
        sh_quote(&results.display().to_string())
    );
    let mut path = std::ffi::OsString::from(&vng.bin_dir);
    if let Some(p) = std::env::var_os("PATH") {
        path.push(":");
        path.push(p);
    }
    eprintln!(
        "vm-test: booting {} ({}) under QEMU TCG, {} vCPUs, {} RAM, time limit {}s; console: {}",
        name,
        k.release,
        cfg.cpus,
        cfg.memory,
        cfg.timeout.as_secs(),
        results.join(CONSOLE).display()
    );
    let start = Instant::now();
    let mut child = Command::new(&vng.vng)
        .arg("-v")
        .arg("-r")
        .arg(&k.vmlinuz)
        .args(["--disable-kvm", "--force-9p", "--user", "root"])
        .args(["--cpus", &cfg.cpus.to_string(), "--memory", &cfg.memory])
        .arg("--rwdir")
        .arg(results)
        .arg(format!("--qemu-opts=-cpu {QEMU_CPU}"))
        .args(["--append", cmdline(plan.cgroups)])
        .args(["--exec", &exec])
        .env("PATH", path)
        .current_dir(&paths.workspace)
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console)
        // Own process group: vng, virtme-run and qemu can be killed together at the limit.
        .process_group(0)
        .spawn()
        .context("starting vng")?;

    let log_path = results.join(guest::LOG);
    let mut log_pos = 0u64;
    let relay = |pos: &mut u64| {
        let Ok(mut f) = std::fs::File::open(&log_path) else {
            return;
        };
        if f.seek(SeekFrom::Start(*pos)).is_err() {
            return;
        }
        let mut buf = String::new();
        if f.read_to_string(&mut buf).is_ok() {
            // Only whole lines.
            if let Some(end) = buf.rfind('\n') {
                for line in buf[..=end].lines() {
                    eprintln!("  [{} guest] {line}", name);
                }
                *pos += end as u64 + 1;
            }
        }
    };
    let in_time = loop {
        if child.try_wait()?.is_some() {
            break true;
        }
        relay(&mut log_pos);
        if start.elapsed() >= cfg.timeout {
            eprintln!(
                "vm-test: {}: time limit of {}s reached, killing the VM",
                name,
                cfg.timeout.as_secs()
            );
            // SAFETY: kill(2) on the process group created for this child.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    relay(&mut log_pos);
    eprintln!(
        "vm-test: {}: VM {} after {:.1}s",
        name,
        if in_time { "exited" } else { "killed" },
        start.elapsed().as_secs_f64()
    );
    Ok(in_time)
}
