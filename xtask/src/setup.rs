//! `cargo xtask setup`: the pinned toolchains (`xtask::pins`), installed only when missing:
//! - the stable toolchain xtask builds and tests with, with the musl target, clippy, rustfmt;
//! - the pinned nightly with `rust-src` (aya-build compiles `core` for bpfel-unknown-none);
//! - `bpf-linker`, built against Debian's `llvm-<N>-dev`.
//!
//! The nightly's LLVM major is checked against bpf-linker's before anything is built, so a
//! mismatch is one sentence with the fix, never a linker error. A second run takes well under
//! a second.
use anyhow::{bail, Result};
use std::process::{Command, Stdio};
use xtask::pins::{installed_linker, Pins};
use xtask::sys::{apt_install, status};

pub fn run() -> Result<Pins> {
    let pins = Pins::workspace()?;
    stable(&pins)?;
    nightly(&pins)?;
    pins.check_llvm()?;
    bpf_linker(&pins)?;
    Ok(pins)
}

/// What rustup lists of a toolchain's `what` (targets, components), or None when the toolchain
/// is not installed; rustup's complaint about that is not shown, installing it comes next.
fn installed(what: &str, toolchain: &str) -> Option<String> {
    let out = Command::new("rustup")
        .args([what, "list", "--installed", "--toolchain", toolchain])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The stable toolchain, with the musl target (the image's static binary), clippy and rustfmt.
fn stable(pins: &Pins) -> Result<()> {
    let t = &pins.stable;
    let has_musl = installed("target", t).is_some_and(|s| s.lines().any(|l| l.trim() == xtask::image::TARGET));
    if has_musl {
        return Ok(());
    }
    eprintln!("setup: installing Rust {t} with the {} target", xtask::image::TARGET);
    status(Command::new("rustup").args(["toolchain", "install", t, "--profile", "minimal"]).args([
        "--component",
        "clippy,rustfmt",
        "--target",
        xtask::image::TARGET,
    ]))
}

fn nightly(pins: &Pins) -> Result<()> {
    let t = &pins.ebpf_nightly;
    let has_src = installed("component", t).is_some_and(|s| s.lines().any(|l| l.starts_with("rust-src")));
    if has_src {
        return Ok(());
    }
    eprintln!("setup: installing {t} with rust-src (the eBPF programs' toolchain)");
    status(Command::new("rustup").args([
        "toolchain",
        "install",
        t,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
}

fn bpf_linker(pins: &Pins) -> Result<()> {
    let llvm = pins.llvm;
    match installed_linker() {
        Some(l) if l.version == pins.bpf_linker && l.llvm == Some(llvm) => return Ok(()),
        Some(l) => eprintln!(
            "setup: bpf-linker {} (LLVM {}) is not the pinned {} on LLVM {llvm}: rebuilding it",
            l.version,
            l.llvm.map_or("unknown".into(), |v| v.to_string()),
            pins.bpf_linker
        ),
        None => {}
    }
    let dev = format!("llvm-{llvm}-dev");
    apt_install("setup", &[&dev])?;
    eprintln!(
        "setup: building bpf-linker {} against LLVM {llvm} (a few minutes, once)",
        pins.bpf_linker
    );
    status(
        xtask::sys::cargo()
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--force",
                "--version",
                &pins.bpf_linker,
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm}"),
            ])
            .env("LLVM_PREFIX", format!("/usr/lib/llvm-{llvm}")),
    )?;
    match installed_linker() {
        Some(l) if l.version == pins.bpf_linker && l.llvm == Some(llvm) => Ok(()),
        other => bail!(
            "bpf-linker was built but PATH finds {other:?}, not {} on LLVM {llvm}: is ~/.cargo/bin first in PATH?",
            pins.bpf_linker
        ),
    }
}
