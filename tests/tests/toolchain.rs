//! The toolchain pins agree with each other and with what `cargo xtask setup` installed: the
//! eBPF programs' nightly is built on the LLVM that bpf-linker links, and the image's build
//! stage uses the pinned stable. A pin moved alone fails here, not in a linker.
use xtask::pins::{installed_linker, nightly_llvm_major, Linker, Pins};

fn pins() -> Pins {
    Pins::workspace().expect("reading the toolchain pins")
}

#[test]
fn the_pinned_nightly_is_built_on_bpf_linkers_llvm() {
    let pins = pins();
    let nightly = nightly_llvm_major(&pins.ebpf_nightly)
        .expect("the pinned nightly (cargo xtask setup installs it)");
    assert_eq!(nightly, pins.llvm, "{}", pins.llvm_mismatch(nightly));
    let linker = installed_linker().expect("bpf-linker on PATH (cargo xtask setup installs it)");
    assert_eq!(
        linker,
        Linker {
            version: pins.bpf_linker.clone(),
            llvm: Some(pins.llvm)
        },
        "the installed bpf-linker is not the pinned one: run `cargo xtask setup`"
    );
}

#[test]
fn a_pin_that_disagrees_is_refused_with_the_fix() {
    let mut pins = pins();
    let real = pins.llvm;
    pins.llvm = real + 1;
    let err = pins
        .check_llvm()
        .expect_err("an LLVM pin the nightly does not use must be refused")
        .to_string();
    assert!(
        err.contains(&format!("built on LLVM {real}"))
            && err.contains(&format!("pinned to LLVM {}", real + 1)),
        "{err}"
    );
    assert!(
        err.contains("[workspace.metadata.toolchains]") && err.contains("ebpf-nightly"),
        "names the fix: {err}"
    );
}

#[test]
fn the_image_build_stage_uses_the_pinned_stable() {
    let pins = pins();
    let dockerfile =
        std::fs::read_to_string(xtask::workspace_root().join("Dockerfile")).expect("Dockerfile");
    let from = dockerfile
        .lines()
        .find(|l| l.starts_with("FROM ") && l.contains(" AS build"))
        .expect("the Dockerfile's build stage");
    assert!(
        from.contains(&format!("rust:{}-", pins.stable)),
        "{from:?} is not on the pinned stable {}",
        pins.stable
    );
}
