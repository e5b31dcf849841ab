//! Fixtures for oomtrace's integration tests: memory cgroups made and removed by each test,
//! bounded memory hogs, the kernel log as the oracle, a running `oomtrace watch`, a test API
//! server speaking the real Kubernetes list/watch protocol, and kubelet's cgroup layout.
pub mod apiserver;
pub mod cgroup;
pub mod daemon;
pub mod helm;
pub mod kmsg;
pub mod kubelet;
pub mod oomtrace_proc;

/// Panics with the reason when the test cannot run here for lack of a capability. Tests call
/// this first: on a machine with root and BTF nothing is skipped.
pub fn require_root_and_btf() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests load BPF programs and create cgroups: run them as root"
    );
    assert!(
        std::path::Path::new("/sys/kernel/btf/vmlinux").exists(),
        "this kernel has no BTF (/sys/kernel/btf/vmlinux); oomtrace needs CONFIG_DEBUG_INFO_BTF"
    );
}

/// The path of an external tool a test runs (kubectl, promtool, …); panics saying how to get
/// it rather than skipping the test.
pub fn require_tool(name: &str) -> std::path::PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not installed: run `cargo xtask test`, which installs the tools the tests use"))
}

/// True inside the disposable test VM (`cargo xtask vm-test`), where tests may provoke
/// node-wide OOMs.
pub fn in_test_vm() -> bool {
    std::env::var("OOMTRACE_VM_GUEST").is_ok_and(|v| v == "1")
}
