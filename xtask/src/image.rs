//! The daemon's container image, built here without pulling anything: the root `Dockerfile`'s
//! `runtime` stage (`FROM scratch` plus one static binary), with its `build` stage replaced by
//! a directory holding the binary built on this machine (`--build-context build=DIR`). What
//! users' CI builds with the `build` stage is the same runtime stage.
use crate::sys::{apt_install, cargo, output, status};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The tag `cargo xtask image` gives the image, which the image test runs.
pub const TAG: &str = "localhost/oomtrace:dev";
/// The static target of the runtime stage's binary.
pub const TARGET: &str = "x86_64-unknown-linux-musl";
/// Debian packages the build and the test use: the musl C toolchain (ring, the C parts of
/// crates), podman with runc (crun refuses hybrid cgroup hosts).
pub const PACKAGES: &[&str] = &["musl-tools", "podman", "runc"];

/// `podman` with the runtime that works on every cgroup layout.
pub fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args(["--runtime", "runc"]);
    c
}

/// The static build's own target directory. With `--target`, cargo builds the build scripts and
/// proc macros for the host into the shared `release/`, with this one package's features; in
/// the shared directory they would flip-flop with the workspace build's and rebuild it each time.
fn static_target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("static")
}

/// The static release binary's path (see [`build_static`]).
pub fn static_binary(root: &Path) -> PathBuf {
    static_target_dir(root).join(TARGET).join("release/oomtrace")
}

/// Builds the static release daemon: the image's binary, and the one the VM guests run (it
/// runs on any guest userland, and one build serves both).
pub fn build_static(root: &Path) -> Result<PathBuf> {
    apt_install("image", PACKAGES)?;
    // Symbols are of no use on a node (the daemon names other processes' frames, never its
    // own) and are half the binary that every node pulls.
    status(cargo().current_dir(root).env("CARGO_PROFILE_RELEASE_STRIP", "symbols").args([
        "build",
        "--release",
        "--locked",
        "-p",
        "oomtrace",
        "--target",
        TARGET,
        "--target-dir",
    ]).arg(static_target_dir(root)))?;
    Ok(static_binary(root))
}

/// Builds the static binary and the image; returns the binary's path.
pub fn build(root: &Path) -> Result<PathBuf> {
    let bin = build_static(root)?;
    let ctx = root.join("target/image");
    let stage = ctx.join("build");
    let empty = ctx.join("context");
    for d in [&stage, &empty] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    std::fs::copy(&bin, stage.join("oomtrace"))
        .with_context(|| format!("copying {}", bin.display()))?;
    status(
        podman()
            .arg("build")
            .arg("--build-context")
            .arg(format!("build={}", stage.display()))
            .args(["--target", "runtime", "--tag", TAG, "--file"])
            .arg(root.join("Dockerfile"))
            .arg(&empty),
    )?;
    Ok(bin)
}

/// The image's size in bytes, as podman reports it.
pub fn size(tag: &str) -> Result<u64> {
    let out = output(podman().args(["image", "inspect", "--format", "{{.Size}}", tag]))?;
    out.trim()
        .parse()
        .with_context(|| format!("podman image inspect: {out:?}"))
}
