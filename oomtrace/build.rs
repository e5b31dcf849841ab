//! Builds the eBPF programs (`oomtrace-ebpf`, target bpfel-unknown-none) with aya-build, so that
//! the daemon embeds the exact programs of its own source tree.
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=../oomtrace-common/src");
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir).join("../oomtrace-ebpf");
    let root = root.to_str().context("non-UTF-8 path")?;
    let ebpf = aya_build::Package {
        name: "oomtrace-ebpf",
        root_dir: root,
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::default()).map_err(|e| {
        anyhow!(
            "building the eBPF programs failed: {e:#}\n\
             (needs the nightly toolchain with rust-src and bpf-linker: run `cargo xtask setup`)"
        )
    })
}
