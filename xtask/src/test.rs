//! `cargo xtask test` and `cargo xtask watch`: the README's two commands.
use crate::setup::{self, status};
use anyhow::{Context, Result};
use std::os::unix::process::CommandExt;
use std::process::Command;

#[derive(clap::Args)]
pub struct Args {
    /// Skip the VM suite (host suite only).
    #[arg(long)]
    no_vm: bool,
    /// Kernels for the VM suite (see `cargo xtask vm-test --help`).
    #[arg(long, default_value = "all")]
    kernel: String,
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

pub fn run(args: Args) -> Result<()> {
    setup::run()?;
    // The integration tests run the real binaries: build them first.
    status(cargo().args(["build", "-p", "oomtrace", "-p", "oomtrace-tests", "--bins"]))?;
    status(cargo().args(["test", "--no-fail-fast"]))?;
    if !args.no_vm {
        let me = std::env::current_exe().context("locating xtask")?;
        status(Command::new(me).args(["vm-test", "--kernel", &args.kernel]))?;
    }
    Ok(())
}

pub fn watch(args: &[String]) -> Result<()> {
    setup::run()?;
    status(cargo().args(["build", "--release", "-p", "oomtrace"]))?;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let err = Command::new(root.join("target/release/oomtrace")).arg("watch").args(args).exec();
    Err(err).context("running oomtrace")
}
