//! The toolchain pins, all in `Cargo.toml` `[workspace.metadata.toolchains]`: the stable
//! toolchain xtask builds and tests with (whatever toolchain ran xtask itself), the eBPF
//! programs' dated nightly, and the bpf-linker version with the LLVM major it is built against.
//! (Not a rust-toolchain.toml: rustup refuses to run any cargo, `cargo xtask setup` included,
//! until the toolchain it names is installed, unless auto-install is on.)
//!
//! The nightly's LLVM must be the one bpf-linker links: a newer nightly emits bitcode that
//! an older LLVM cannot read (`Invalid record`). [`check_llvm`] says so before any build does.
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::Path;
use std::process::{Command, Stdio};

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Pins {
    /// A dated nightly (`nightly-YYYY-MM-DD`) for the eBPF crate.
    pub ebpf_nightly: String,
    /// bpf-linker's exact version.
    pub bpf_linker: String,
    /// The LLVM major bpf-linker is built against (Debian's `llvm-<N>-dev`), which must be the
    /// nightly's too.
    pub llvm: u32,
    /// The stable toolchain (an exact version) of the daemon, the tests and the image.
    pub stable: String,
}

#[derive(Deserialize)]
struct Manifest {
    workspace: Workspace,
}
#[derive(Deserialize)]
struct Workspace {
    metadata: Metadata,
}
#[derive(Deserialize)]
struct Metadata {
    toolchains: Pins,
}

impl Pins {
    /// The pins of the workspace at `root`.
    pub fn read(root: &Path) -> Result<Self> {
        let manifest = root.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest)
            .with_context(|| format!("reading {}", manifest.display()))?;
        let pins = toml::from_str::<Manifest>(&text)
            .with_context(|| format!("{}: [workspace.metadata.toolchains]", manifest.display()))?
            .workspace
            .metadata
            .toolchains;
        if !is_dated_nightly(&pins.ebpf_nightly) {
            bail!(
                "{}: ebpf-nightly = {:?} is not a dated nightly (nightly-YYYY-MM-DD): an undated \
                 one moves to a newer LLVM without notice",
                manifest.display(),
                pins.ebpf_nightly
            );
        }
        Ok(pins)
    }

    /// The pins of this workspace.
    pub fn workspace() -> Result<Self> {
        Self::read(&crate::workspace_root())
    }

    /// The sentence to print when the nightly's LLVM major is not bpf-linker's.
    pub fn llvm_mismatch(&self, nightly_llvm: u32) -> String {
        format!(
            "{} is built on LLVM {nightly_llvm} but bpf-linker {} is pinned to LLVM {}, so the eBPF \
             programs cannot link: in Cargo.toml [workspace.metadata.toolchains] set ebpf-nightly to \
             a nightly whose `rustc -vV` says LLVM {}, or move llvm and bpf-linker to LLVM {nightly_llvm}",
            self.ebpf_nightly, self.bpf_linker, self.llvm, self.llvm
        )
    }

    /// Fails with [`Pins::llvm_mismatch`] unless the pinned nightly (installed) uses the pinned
    /// LLVM major.
    pub fn check_llvm(&self) -> Result<()> {
        let got = nightly_llvm_major(&self.ebpf_nightly)?;
        if got != self.llvm {
            bail!("{}", self.llvm_mismatch(got));
        }
        Ok(())
    }
}

fn is_dated_nightly(s: &str) -> bool {
    let Some(date) = s.strip_prefix("nightly-") else {
        return false;
    };
    let b = date.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
}

/// The LLVM major of an installed toolchain (`rustc -vV`'s `LLVM version:` line).
pub fn nightly_llvm_major(toolchain: &str) -> Result<u32> {
    let out = Command::new("rustup")
        .args(["run", toolchain, "rustc", "-vV"])
        .stderr(Stdio::null())
        .output()
        .context("running rustup")?;
    if !out.status.success() {
        bail!("toolchain {toolchain} is not installed (run `cargo xtask setup`)");
    }
    parse_llvm_major(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("`rustc +{toolchain} -vV` names no LLVM version"))
}

fn parse_llvm_major(rustc_vv: &str) -> Option<u32> {
    rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse().ok())
}

/// What `bpf-linker` on PATH is: its version, and the LLVM major of the `libLLVM` it links
/// (None when it links LLVM statically, where only its build flags would tell).
#[derive(Debug, PartialEq, Eq)]
pub struct Linker {
    pub version: String,
    pub llvm: Option<u32>,
}

/// The installed bpf-linker, or None when there is none on PATH.
pub fn installed_linker() -> Option<Linker> {
    let exe = crate::sys::which("bpf-linker")?;
    let out = Command::new(&exe).arg("--version").output().ok()?;
    let version = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)?
        .to_string();
    let ldd = Command::new("ldd").arg(&exe).output().ok();
    let llvm = ldd.and_then(|o| parse_libllvm_major(&String::from_utf8_lossy(&o.stdout)));
    Some(Linker { version, llvm })
}

/// `libLLVM.so.22.1 => …` or `libLLVM-22.so => …` in ldd's output.
fn parse_libllvm_major(ldd: &str) -> Option<u32> {
    ldd.lines().find_map(|l| {
        let name = l.split_whitespace().next()?;
        let rest = name.strip_prefix("libLLVM")?;
        let digits: String = rest
            .trim_start_matches(['-', '.'])
            .trim_start_matches("so.")
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rustc_and_ldd() {
        let vv =
            "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\nLLVM version: 22.1.4\n";
        assert_eq!(parse_llvm_major(vv), Some(22));
        assert_eq!(parse_llvm_major("rustc 1.95.0\n"), None);
        let ldd = "\tlinux-vdso.so.1 (0x0)\n\tlibLLVM.so.22.1 => /usr/lib/llvm-22/lib/libLLVM.so.22.1 (0x0)\n";
        assert_eq!(parse_libllvm_major(ldd), Some(22));
        assert_eq!(
            parse_libllvm_major("\tlibLLVM-19.so => /usr/lib/x (0x0)\n"),
            Some(19)
        );
        assert_eq!(parse_libllvm_major("\tlibc.so.6 => /lib/libc.so.6\n"), None);
    }

    #[test]
    fn only_dated_nightlies() {
        assert!(is_dated_nightly("nightly-2026-05-20"));
        for bad in [
            "nightly",
            "nightly-2026-5-20",
            "stable",
            "1.95.0",
            "nightly-2026-05-20x",
        ] {
            assert!(!is_dated_nightly(bad), "{bad}");
        }
    }

    #[test]
    fn the_mismatch_is_one_sentence_with_the_fix() {
        let p = Pins {
            ebpf_nightly: "nightly-2026-11-30".into(),
            bpf_linker: "0.13.0".into(),
            llvm: 22,
            stable: "1.95.0".into(),
        };
        let m = p.llvm_mismatch(23);
        assert!(
            m.contains("LLVM 23") && m.contains("LLVM 22") && m.contains("ebpf-nightly"),
            "{m}"
        );
        assert_eq!(m.matches(". ").count(), 0, "one sentence: {m}");
    }
}
