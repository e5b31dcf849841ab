//! The daemon's heap, handed back to the kernel after the phases that peak.
//!
//! glibc's allocator keeps freed pages mapped for reuse, so after a peak (two BTF parses at
//! start-up, the first pod list) the resident size stays at the peak although the memory is
//! free. A node agent is billed by its resident size on every node.
//!
//! It also gives each thread that allocates under contention an arena of its own (up to 8 per
//! core), and pages freed in one arena are not reused by another: with the pod list decoded
//! on tokio's workers, a 10 000-pod index cost 3.0 KiB per pod of resident size with the
//! default arenas and 1.6 to 2.5 KiB with two (`oomtrace watch` against the test API server,
//! glibc 2.36).

/// At most two malloc arenas. Call before any thread is started.
pub fn limit_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; it has no preconditions.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns the free heap pages of every arena to the kernel.
pub fn release_freed() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap memory; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
