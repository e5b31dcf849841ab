//! Host prerequisites: Debian packages and a venv with virtme-ng. Checked first, installed only
//! when missing, so a second run costs a few `dpkg-query` calls.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};
use xtask::sys::{apt_install, which};

use super::Paths;

/// virtme-ng release the VM route was verified with.
const VIRTME_NG: &str = "virtme-ng==1.42";
const VIRTME_NG_VERSION: &str = "virtme-ng 1.42";

/// Debian packages the route needs, with a command that proves each one usable.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86", "qemu-system-x86_64"), // the emulator (TCG)
    ("busybox-static", "busybox"),             // virtme-ng builds its initramfs from busybox
    ("kmod", "depmod"),                        // modules.dep for the unpacked kernels
    ("bpftool", "bpftool"),                    // used by the smoke test, handy in tests
    ("python3-venv", ""),                      // venv for virtme-ng
    ("debian-archive-keyring", ""),            // verifies the private kernel apt lists
    ("apt", "apt-get"),
    ("dpkg", "dpkg-deb"),
];

/// Paths of the tools the rest of vm-test runs.
pub struct Vng {
    /// `<venv>/bin`, to put first in vng's PATH (it runs `virtme-run` from there).
    pub bin_dir: PathBuf,
    pub vng: PathBuf,
}

pub fn ensure(paths: &Paths) -> anyhow::Result<Vng> {
    if std::env::consts::ARCH != "x86_64" {
        bail!("vm-test boots amd64 kernels and expects an x86_64 host");
    }
    let pkgs: Vec<&str> = APT_PACKAGES.iter().map(|(pkg, _)| *pkg).collect();
    apt_install("vm-test", &pkgs)?;
    for (pkg, tool) in APT_PACKAGES {
        if !tool.is_empty() && which(tool).is_none() {
            bail!("`{tool}` (package {pkg}) is installed but not found in PATH");
        }
    }

    // virtme-ng in its own venv, from PyPI, pinned.
    let venv = paths.cache.join("venv");
    let bin_dir = venv.join("bin");
    let vng = bin_dir.join("vng");
    let version_ok = || {
        Command::new(&vng)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == VIRTME_NG_VERSION)
            .unwrap_or(false)
    };
    if !version_ok() {
        eprintln!("vm-test: installing {VIRTME_NG} into {}", venv.display());
        // Debian's python3 (python3-venv is installed above), not whatever `python3` is first
        // in PATH.
        let python = ["/usr/bin/python3", "python3"]
            .into_iter()
            .find(|p| which(p).is_some())
            .context("python3 not found")?;
        let _ = std::fs::remove_dir_all(&venv);
        let st = Command::new(python)
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .context("running python3 -m venv")?;
        if !st.success() {
            bail!("python3 -m venv {} failed", venv.display());
        }
        let st = Command::new(bin_dir.join("pip"))
            .args(["install", "-q", "--disable-pip-version-check", VIRTME_NG])
            .status()
            .context("running pip")?;
        if !st.success() || !version_ok() {
            let _ = std::fs::remove_dir_all(&venv);
            bail!(
                "could not install {VIRTME_NG} from PyPI into {}",
                venv.display()
            );
        }
    }
    Ok(Vng { bin_dir, vng })
}
