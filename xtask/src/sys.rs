//! Running commands and installing Debian packages, with errors that name the command.
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Runs `cmd` with inherited stdio; an error names the command and its exit status.
pub fn status(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout (stderr is passed through).
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `cargo` of the pinned stable toolchain (`rustup run <stable> cargo`), whatever toolchain
/// ran the caller; `cargo xtask setup` installs it.
pub fn cargo() -> Command {
    let stable = crate::pins::Pins::workspace().map(|p| p.stable).unwrap_or_else(|e| panic!("{e:#}"));
    let mut c = Command::new("rustup");
    c.args(["run", &stable, "cargo"]);
    c
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether the Debian package `pkg` is installed.
pub fn is_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).ends_with(" installed"))
        .unwrap_or(false)
}

/// Installs the Debian packages of `pkgs` that are not installed yet. The package lists are
/// refreshed only when an install from the current ones fails (a fresh machine has none).
pub fn apt_install(who: &str, pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !is_installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if Command::new("dpkg-query")
        .arg("--version")
        .output()
        .is_err()
    {
        bail!(
            "{who}: needs the Debian packages {} and this is not a Debian-based host",
            missing.join(" ")
        );
    }
    if !is_root() {
        bail!(
            "{who}: missing Debian packages, and not root to install them: run \
             `sudo apt-get install --no-install-recommends {}`",
            missing.join(" ")
        );
    }
    eprintln!("{who}: apt-get install {}", missing.join(" "));
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if install() {
        return Ok(());
    }
    status(
        Command::new("apt-get")
            .args(["update", "-qq"])
            .stdout(Stdio::null()),
    )?;
    if !install() {
        bail!("{who}: `apt-get install {}` failed", missing.join(" "));
    }
    Ok(())
}

/// `which`: the first executable `name` in PATH (or `name` itself if it has a slash).
pub fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exe = |p: &std::path::Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_exe(&p).then_some(p);
    }
    // sbin dirs too: depmod and bpftool live there, and a non-root PATH may lack them.
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_exe(p))
}
