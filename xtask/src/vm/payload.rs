//! What runs in the guest: the integration test executables of `oomtrace-tests` (built on the
//! host), prebuilt executables (`--test-exe`), or the built-in smoke script (`--smoke`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context};
use serde_json::Value;

use super::kernel::Kernel;
use super::{Guest, Paths, Plan, PlanItem};

pub const SMOKE_SCRIPT: &str = "smoke.sh";
const SMOKE: &str = include_str!("../../vm/smoke.sh");
const TESTS_PACKAGE: &str = "oomtrace-tests";
/// Where `oomtrace-tests` lives in the workspace.
const TESTS_DIR: &str = "tests";
/// Test executables that the guest's kernel cannot change, so they run on the host only:
/// those about the host (its toolchains, its container engine), those that never reach the
/// kernel (the `--cluster` view, the pod index and the Helm chart talk to a test API server or
/// render manifests), those about what kubectl and Prometheus read of the daemon's output
/// (the same bytes on every kernel), `runtimes` (recognising a runtime is userspace only, and the JVMs,
/// javac and `go build` it starts would be slow under QEMU's TCG), and `leak` (five minutes of
/// a slow leak; the sampler and trend rules it checks run on every kernel in `history`), and
/// `top` (a terminal view of that same sampler, driven through tmux), and `report` (it reads
/// the daemon's Events and lines back; the kills and Events it starts from are the `daemon`
/// suite's, which runs on every kernel).
const HOST_ONLY: &[&str] = &[
    "toolchain", "image", "cluster_watch", "pod_index", "helm", "kubectl", "monitoring", "runtimes", "leak", "top",
    "report",
];

pub struct Executable {
    pub name: String,
    pub program: PathBuf,
    /// Arguments before the libtest ones.
    pub pre_args: Vec<String>,
    pub cwd: PathBuf,
}

pub struct Payload {
    pub executables: Vec<Executable>,
    pub oomtrace_bin: PathBuf,
}

impl Payload {
    pub fn smoke(paths: &Paths) -> anyhow::Result<Self> {
        let dir = paths.cache.join("bin");
        std::fs::create_dir_all(&dir)?;
        let script = dir.join(SMOKE_SCRIPT);
        std::fs::write(&script, SMOKE)?;
        Ok(Self {
            executables: vec![Executable {
                name: "smoke".into(),
                program: "/bin/sh".into(),
                pre_args: vec![script.display().to_string()],
                cwd: "/".into(),
            }],
            oomtrace_bin: default_daemon_path(paths),
        })
    }

    pub fn prebuilt(paths: &Paths, exes: &[PathBuf]) -> anyhow::Result<Self> {
        let mut executables = Vec::new();
        for exe in exes {
            let program = exe
                .canonicalize()
                .with_context(|| format!("--test-exe {}", exe.display()))?;
            let name = program
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "test".into());
            executables.push(Executable {
                name,
                program,
                pre_args: vec![],
                cwd: paths.workspace.join("tests"),
            });
        }
        dedup_names(&mut executables);
        let oomtrace_bin = default_daemon_path(paths);
        if !oomtrace_bin.exists() {
            eprintln!(
                "vm-test: warning: {} does not exist (OOMTRACE_BIN is set to it anyway)",
                oomtrace_bin.display()
            );
        }
        Ok(Self {
            executables,
            oomtrace_bin,
        })
    }

    /// The static release daemon (the image's binary, so the guests run what ships) and the
    /// release test executables of `oomtrace-tests`, which `cargo xtask test` has just built
    /// for the host suite: the guests then need no build of their own.
    pub fn build(paths: &Paths) -> anyhow::Result<Self> {
        let oomtrace_bin = xtask::image::build_static(&paths.workspace)?;
        // The host suite's very command, so that its build is reused as is (one package alone
        // would unify features differently and rebuild the daemon).
        eprintln!("vm-test: cargo test --release --no-run (the executables of {TESTS_PACKAGE})");
        let tests_dir = paths.workspace.join(TESTS_DIR);
        let tests: Vec<Artifact> = cargo_json(paths, &["test", "--release", "--no-run"])?
            .into_iter()
            .filter(|a| a.manifest_dir == tests_dir)
            .collect();
        let mut executables: Vec<Executable> = tests
            .into_iter()
            .filter(|a| a.test && !HOST_ONLY.contains(&a.name.as_str()))
            .map(|a| Executable {
                name: a.name,
                program: a.executable,
                pre_args: vec![],
                cwd: a.manifest_dir,
            })
            .collect();
        executables.sort_by(|a, b| a.name.cmp(&b.name));
        dedup_names(&mut executables);
        Ok(Self {
            executables,
            oomtrace_bin,
        })
    }

    pub fn plan(&self, guest: &Guest, k: &Kernel, extra: &[String]) -> Plan {
        Plan {
            guest: guest.name.to_string(),
            kernel_release: k.release.clone(),
            cgroups: guest.cgroups,
            budget_secs: 0, // set from the time limit at boot
            env: vec![
                (
                    "OOMTRACE_BIN".into(),
                    self.oomtrace_bin.display().to_string(),
                ),
                ("OOMTRACE_VM_GUEST".into(), "1".into()),
                ("OOMTRACE_VM_KERNEL".into(), k.release.clone()),
                ("RUST_BACKTRACE".into(), "1".into()),
            ],
            items: self
                .executables
                .iter()
                .map(|e| PlanItem {
                    name: e.name.clone(),
                    program: e.program.clone(),
                    args: e
                        .pre_args
                        .iter()
                        .cloned()
                        .chain(["--test-threads=1".to_string()])
                        .chain(extra.iter().cloned())
                        .collect(),
                    cwd: e.cwd.clone(),
                })
                .collect(),
        }
    }
}

fn default_daemon_path(paths: &Paths) -> PathBuf {
    xtask::image::static_binary(&paths.workspace)
}

/// Make names unique (they name output files): `name`, `name-2`, ...
fn dedup_names(exes: &mut [Executable]) {
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for e in exes.iter_mut() {
        e.name = e
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let n = seen.entry(e.name.clone()).or_insert(0);
        *n += 1;
        if *n > 1 {
            e.name = format!("{}-{}", e.name, n);
        }
    }
}

struct Artifact {
    name: String,
    test: bool,
    executable: PathBuf,
    manifest_dir: PathBuf,
}

/// Run cargo with JSON messages; show its diagnostics, return its executable artifacts.
fn cargo_json(paths: &Paths, args: &[&str]) -> anyhow::Result<Vec<Artifact>> {
    let mut child = xtask::sys::cargo()
        .args(args)
        .arg("--message-format=json-diagnostic-rendered-ansi")
        .current_dir(&paths.workspace)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo")?;
    let mut artifacts = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line?;
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            eprintln!("{line}");
            continue;
        };
        match msg["reason"].as_str() {
            Some("compiler-message") => {
                if let Some(r) = msg["message"]["rendered"].as_str() {
                    eprint!("{r}");
                }
            }
            Some("compiler-artifact") => {
                let Some(exe) = msg["executable"].as_str() else {
                    continue;
                };
                let manifest = msg["manifest_path"].as_str().map(Path::new);
                artifacts.push(Artifact {
                    name: msg["target"]["name"].as_str().unwrap_or("test").to_string(),
                    test: msg["profile"]["test"].as_bool().unwrap_or(false),
                    executable: exe.into(),
                    manifest_dir: manifest
                        .and_then(Path::parent)
                        .map(Path::to_path_buf)
                        .unwrap_or_else(|| paths.workspace.clone()),
                });
            }
            _ => {}
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(artifacts)
}

/// Copy the running xtask binary to `<cache>/bin/xtask-guest`: the guest runs that copy, so a
/// rebuild of xtask on the host (other work in the same tree) cannot pull the file from under
/// it.
pub fn stage_guest_runner(paths: &Paths) -> anyhow::Result<PathBuf> {
    let dir = paths.cache.join("bin");
    std::fs::create_dir_all(&dir)?;
    let dest = dir.join("xtask-guest");
    let tmp = dir.join("xtask-guest.tmp");
    // /proc/self/exe, not current_exe(): it still opens our binary after a concurrent
    // `cargo build` replaced (unlinked) target/debug/xtask.
    let me = std::fs::metadata("/proc/self/exe")?;
    let same = std::fs::metadata(&dest)
        .is_ok_and(|d| d.len() == me.len() && d.modified().ok() == me.modified().ok());
    if !same {
        std::fs::copy("/proc/self/exe", &tmp)
            .context("copying the xtask binary (/proc/self/exe)")?;
        // Same mtime as the original, so the next run can tell the copy is current.
        let f = std::fs::File::options().write(true).open(&tmp)?;
        f.set_modified(me.modified()?)?;
        drop(f);
        std::fs::rename(&tmp, &dest)?;
    }
    Ok(dest)
}
