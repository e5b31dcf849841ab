//! Fixtures for oomtrace's integration tests: memory cgroups made and removed by each test,
//! bounded memory hogs, the kernel log as the oracle, a running `oomtrace watch`, and a test
//! API server speaking the real Kubernetes list/watch protocol.
pub mod apiserver;
pub mod cgroup;
pub mod kmsg;
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

/// True inside the disposable test VM (`cargo xtask vm-test`), where tests may provoke
/// node-wide OOMs.
pub fn in_test_vm() -> bool {
    std::env::var("OOMTRACE_VM_GUEST").is_ok_and(|v| v == "1")
}
