//! Builds the eBPF programs (`oomtrace-ebpf`, target bpfel-unknown-none) with aya-build, so that
//! the daemon embeds the exact programs of its own source tree, with the dated nightly pinned in
//! the workspace's Cargo.toml (`[workspace.metadata.toolchains] ebpf-nightly`).
use anyhow::{anyhow, Context as _};
use std::path::Path;

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=../oomtrace-common/src");
    println!("cargo:rerun-if-changed=../Cargo.toml");
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let workspace = Path::new(&manifest_dir).join("..");
    let nightly = pinned_nightly(&workspace.join("Cargo.toml"))?;
    let root = workspace.join("oomtrace-ebpf");
    let root = root.to_str().context("non-UTF-8 path")?;
    let ebpf = aya_build::Package {
        name: "oomtrace-ebpf",
        root_dir: root,
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Custom(&nightly)).map_err(|e| {
        anyhow!(
            "building the eBPF programs with {nightly} failed: {e:#}\n\
             (it needs {nightly} with rust-src and the pinned bpf-linker: run `cargo xtask setup`, \
             which installs both and checks that their LLVM versions agree)"
        )
    })
}

fn pinned_nightly(manifest: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let doc: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", manifest.display()))?;
    doc.get("workspace")
        .and_then(|w| w.get("metadata"))
        .and_then(|m| m.get("toolchains"))
        .and_then(|t| t.get("ebpf-nightly"))
        .and_then(|n| n.as_str())
        .map(str::to_owned)
        .with_context(|| {
            format!(
                "{}: no [workspace.metadata.toolchains] ebpf-nightly",
                manifest.display()
            )
        })
}
