//! A bounded memory hog for OOM tests: `oomtrace-hog <MiB> <kind> <hold_ms> [pid1]`.
//! Grows by 1 MiB steps, touching every page so it is really charged, then holds what it has
//! for `hold_ms` and exits 0 if nothing killed it. With `pid1` it first enters a new pid
//! namespace and grows as its PID 1, like a container's main process; the outer process
//! dies the way the inner one did. `OOMTRACE_HOG_COMM` renames it (prctl PR_SET_NAME) first;
//! `OOMTRACE_HOG_STEP_MS` pauses after each MiB (a slow leak); `OOMTRACE_HOG_OOM_SCORE_ADJ`
//! sets its `oom_score_adj` first; `OOMTRACE_HOG_MLOCK` locks its code in memory first; `OOMTRACE_HOG_SHM_FD` backs `shmem` with that inherited
//! memfd, whose pages then stay charged after the hog dies, as a file in /dev/shm does.
//!
//! Kinds other than `anon` and `shmem` charge memory no page fault of the hog's makes, so
//! each OOM is triggered from that kernel path: `pipe` (pipe buffers nobody reads), `socket`
//! (unix socket buffers nobody reads), `tmpfs-write` (write(2) into a memfd), `vmas` (kernel
//! objects: one-page mappings never touched, each a VMA) and `file-mlock` (page cache: mlocks
//! a mapping of the file `OOMTRACE_HOG_FILE`, uncached first).
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
    if std::env::var_os("OOMTRACE_HOG_MLOCK").is_some() {
        // SAFETY: plain syscall; locks what is mapped now (code, libraries), not what grows.
        check(unsafe { libc::mlockall(libc::MCL_CURRENT) }, "mlockall");
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
    let other: Option<fn(usize)> = match kind {
        "pipe" => Some(pipes),
        "socket" => Some(sockets),
        "tmpfs-write" => Some(tmpfs_write),
        "vmas" => Some(vmas),
        "file-mlock" => Some(file_mlock),
        _ => None,
    };
    if let Some(grow) = other {
        grow(mib);
        let _ = writeln!(std::io::stdout(), "survived {kind}");
        std::thread::sleep(std::time::Duration::from_millis(hold_ms));
        return;
    }
    // Shared anonymous memory is one mapping made up front: each mmap of it makes a tmpfs
    // inode and a VMA (kernel objects), and near the limit those would be the charges that
    // hit it rather than the pages.
    let shared = match (kind, shm_fd) {
        // SAFETY: a fresh mapping, no aliasing.
        ("shmem", None) => Some(unsafe {
            libc::mmap(std::ptr::null_mut(), mib.max(1) * MIB, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1, 0)
        }),
        _ => None,
    };
    if shared == Some(libc::MAP_FAILED) {
        std::process::exit(2);
    }
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
            _ => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0),
        };
        // SAFETY: a fresh mapping (of the memfd's own new MiB), no aliasing; or the MiB `i` of
        // the shared mapping made above.
        let p = match shared {
            Some(base) => unsafe { base.cast::<u8>().add(i * MIB).cast() },
            None => unsafe { libc::mmap(std::ptr::null_mut(), MIB, libc::PROT_READ | libc::PROT_WRITE, flags, fd, offset) },
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

fn check(r: libc::c_int, what: &str) -> libc::c_int {
    if r < 0 {
        eprintln!("{what}: {}", std::io::Error::last_os_error());
        std::process::exit(2);
    }
    r
}

/// Fills 1 MiB pipe buffers that nobody reads (kernel memory charged to the cgroup).
fn pipes(mib: usize) {
    let chunk = vec![0xa5u8; 1 << 20];
    for _ in 0..mib {
        let mut fds = [0; 2];
        // SAFETY: plain syscalls on fds this process owns; never closed, so the buffers stay.
        unsafe {
            check(libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK), "pipe2");
            check(libc::fcntl(fds[1], libc::F_SETPIPE_SZ, 1 << 20), "F_SETPIPE_SZ");
            libc::write(fds[1], chunk.as_ptr().cast(), chunk.len());
        }
    }
}

/// Fills unix stream sockets' send buffers that nobody reads.
fn sockets(mib: usize) {
    let chunk = vec![0xa5u8; 64 << 10];
    let mut sent = 0usize;
    while sent < mib << 20 {
        let mut fds = [0; 2];
        // SAFETY: plain syscalls on fds this process owns; never closed, so the buffers stay.
        unsafe {
            check(libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0, fds.as_mut_ptr()), "socketpair");
            let size: libc::c_int = 4 << 20;
            // SO_SNDBUFFORCE (root) past wmem_max, so fewer fds hold the memory.
            libc::setsockopt(fds[0], libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, (&raw const size).cast(), 4);
            loop {
                let n = libc::write(fds[0], chunk.as_ptr().cast(), chunk.len());
                if n <= 0 {
                    break;
                }
                sent += n as usize;
            }
        }
    }
}

/// write(2)s into a memfd: tmpfs pages charged by the write path, not by a fault.
fn tmpfs_write(mib: usize) {
    let chunk = vec![0xa5u8; 1 << 20];
    // SAFETY: plain syscalls on an fd this process owns.
    unsafe {
        let fd = check(libc::memfd_create(c"oomtrace-hog".as_ptr(), 0), "memfd_create");
        for _ in 0..mib {
            check(libc::write(fd, chunk.as_ptr().cast(), chunk.len()) as libc::c_int, "write");
        }
    }
}

/// Kernel objects only: up to `mib` × 4096 one-page mappings, never touched (no page, no page
/// table), each a VMA of its own (neighbours differ in protection, so none merge). The VMA
/// cache is charged to the cgroup and nothing reclaims it.
fn vmas(mib: usize) {
    for i in 0..mib * 4096 {
        let prot = if i % 2 == 0 { libc::PROT_READ } else { libc::PROT_NONE };
        // SAFETY: a fresh mapping, never accessed; the process holds it until it dies.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), 4096, prot, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE, -1, 0) };
        if p == libc::MAP_FAILED {
            // vm.max_map_count reached before the limit: the test says so by the exit status.
            check(-1, "mmap");
        }
    }
}

/// Page cache that reclaim cannot take back: the whole file mapped and mlocked, its pages
/// dropped from the cache first so that this process charges them.
fn file_mlock(_mib: usize) {
    let path = std::env::var("OOMTRACE_HOG_FILE").expect("OOMTRACE_HOG_FILE");
    let f = std::fs::File::open(&path).expect("the file");
    let len = f.metadata().expect("metadata").len() as usize;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    // SAFETY: plain syscalls; the mapping is never unmapped (the process holds it until it dies).
    unsafe {
        // Dirty pages are not dropped: written back first.
        check(libc::fdatasync(fd), "fdatasync");
        check(libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED), "posix_fadvise");
        let p = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, fd, 0);
        if p == libc::MAP_FAILED {
            check(-1, "mmap");
        }
        check(libc::mlock(p, len), "mlock");
    }
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
