//! Development tasks: `cargo xtask setup | test | vm-test`.
mod setup;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "oomtrace development tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building the eBPF programs needs (idempotent, fast when already done).
    Setup,
    /// Boot Debian kernels under QEMU and run the integration suite inside, as root.
    VmTest(vm::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup::run(),
        Cmd::VmTest(args) => vm::run(args),
    }
}
