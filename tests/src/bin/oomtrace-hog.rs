//! A bounded memory hog for OOM tests: `oomtrace-hog <MiB> <anon|shmem> <hold_ms> [pid1]`.
//! Grows by 1 MiB steps, touching every page so it is really charged, then holds what it has
//! for `hold_ms` and exits 0 if nothing killed it. With `pid1` it first enters a new pid
//! namespace and grows as its PID 1, like a container's main process; the outer process
//! dies the way the inner one did. `OOMTRACE_HOG_COMM` renames it (prctl PR_SET_NAME) first;
//! `OOMTRACE_HOG_STEP_MS` pauses after each MiB (a slow leak); `OOMTRACE_HOG_OOM_SCORE_ADJ`
//! sets its `oom_score_adj` first; `OOMTRACE_HOG_SHM_FD` backs `shmem` with that inherited
//! memfd, whose pages then stay charged after the hog dies, as a file in /dev/shm does.
use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(256);
    let kind = args.get(2).map(String::as_str).unwrap_or("anon");
    let hold_ms: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(0);
    if let Some(name) = std::env::var_os("OOMTRACE_HOG_COMM") {
        use std::os::unix::ffi::OsStrExt;
        let name = std::ffi::CString::new(name.as_bytes()).expect("no NUL in the name");
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of up to 16 bytes.
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    }
    if let Ok(adj) = std::env::var("OOMTRACE_HOG_OOM_SCORE_ADJ") {
        std::fs::write("/proc/self/oom_score_adj", adj).expect("setting oom_score_adj");
    }
    if args.get(4).map(String::as_str) == Some("pid1") {
        as_pid1();
    }
    let step_ms: u64 = std::env::var("OOMTRACE_HOG_STEP_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let shm_fd: Option<i32> = std::env::var("OOMTRACE_HOG_SHM_FD").ok().and_then(|v| v.parse().ok()).filter(|_| kind == "shmem");
    const MIB: usize = 1 << 20;
    let mut keep: Vec<*mut u8> = Vec::with_capacity(mib);
    for i in 0..mib {
        let (flags, fd, offset) = match (kind, shm_fd) {
            ("shmem", Some(fd)) => {
                // SAFETY: plain syscall on an inherited fd.
                if unsafe { libc::ftruncate(fd, ((i + 1) * MIB) as libc::off_t) } != 0 {
                    std::process::exit(2);
                }
                (libc::MAP_SHARED, fd, (i * MIB) as libc::off_t)
            }
            ("shmem", None) => (libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1, 0),
            _ => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0),
        };
        // SAFETY: a fresh mapping (of the memfd's own new MiB), no aliasing.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), MIB, libc::PROT_READ | libc::PROT_WRITE, flags, fd, offset)
        };
        if p == libc::MAP_FAILED {
            std::process::exit(2);
        }
        let p = p.cast::<u8>();
        for off in (0..MIB).step_by(4096) {
            // SAFETY: inside the mapping just made.
            unsafe { p.add(off).write_volatile(0xa5) };
        }
        keep.push(p);
        if step_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(step_ms));
        }
    }
    let _ = writeln!(std::io::stdout(), "survived with {mib} MiB");
    std::thread::sleep(std::time::Duration::from_millis(hold_ms));
}

/// Continues as PID 1 of a new pid namespace; this process waits and mirrors its fate.
fn as_pid1() {
    // SAFETY: plain syscalls; the child only continues into `main`'s allocation loop.
    unsafe {
        if libc::unshare(libc::CLONE_NEWPID) != 0 {
            eprintln!("unshare(CLONE_NEWPID): {}", std::io::Error::last_os_error());
            std::process::exit(3);
        }
        match libc::fork() {
            -1 => std::process::exit(3),
            0 => {}
            child => {
                let mut status = 0;
                libc::waitpid(child, &mut status, 0);
                if libc::WIFSIGNALED(status) {
                    libc::signal(libc::WTERMSIG(status), libc::SIG_DFL);
                    libc::raise(libc::WTERMSIG(status));
                }
                std::process::exit(libc::WEXITSTATUS(status));
            }
        }
    }
}
