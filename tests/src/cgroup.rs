//! Memory cgroups for tests: created under the host's memory hierarchy (v1 or v2), always
//! removed again (processes killed first), even when the test fails.
use anyhow::{bail, Context, Result};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// Finds the memory controller: a v1 `memory` mount, else a cgroup2 mount listing `memory`.
pub fn memory_root() -> Result<(Version, PathBuf)> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut v2 = None;
    for line in mounts.lines() {
        let Some((pre, post)) = line.split_once(" - ") else { continue };
        let mnt = pre.split(' ').nth(4).unwrap_or_default();
        let mut post = post.split(' ');
        match (post.next(), post.nth(1)) {
            (Some("cgroup"), Some(opts)) if opts.split(',').any(|o| o == "memory") => {
                return Ok((Version::V1, mnt.into()));
            }
            (Some("cgroup2"), _) if v2.is_none() => v2 = Some(PathBuf::from(mnt)),
            _ => {}
        }
    }
    if let Some(v2) = v2 {
        let ctrls = std::fs::read_to_string(v2.join("cgroup.controllers")).unwrap_or_default();
        if ctrls.split_whitespace().any(|c| c == "memory") {
            return Ok((Version::V2, v2));
        }
    }
    bail!("no cgroup hierarchy with the memory controller is mounted")
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A memory cgroup owned by the test. Dropping it kills what runs inside and removes it.
pub struct TestCgroup {
    pub version: Version,
    pub root: PathBuf,
    /// Path relative to the hierarchy root, with a leading '/': what oomtrace reports.
    pub rel: String,
    children: Vec<TestCgroup>,
    owned: bool,
}

impl TestCgroup {
    /// A new top-level cgroup named `<prefix>-<pid>-<n>` directly under the hierarchy root.
    pub fn new(prefix: &str) -> Result<Self> {
        let (version, root) = memory_root()?;
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        Self::create(version, root, format!("/{name}"))
    }

    /// A new cgroup at an exact path below the hierarchy root (parents must exist).
    pub fn at(rel: &str) -> Result<Self> {
        let (version, root) = memory_root()?;
        Self::create(version, root, rel.to_string())
    }

    fn create(version: Version, root: PathBuf, rel: String) -> Result<Self> {
        let dir = root.join(rel.trim_start_matches('/'));
        std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let cg = Self { version, root, rel, children: Vec::new(), owned: true };
        if version == Version::V2 {
            let _ = cg.write("memory.swap.max", "0");
        } else {
            let _ = cg.write("memory.swappiness", "0");
            // Kernels before 5.16 make v1 hierarchies opt-in per cgroup (a parent's limit binds
            // its children only with use_hierarchy), and kubelet turns it on; later ones have it
            // always on and refuse the write, which is fine.
            let _ = cg.write("memory.use_hierarchy", "1");
        }
        Ok(cg)
    }

    /// A handle on an existing cgroup that something else owns: dropping it removes nothing.
    pub fn handle(rel: &str) -> Result<TestCgroup> {
        let (version, root) = memory_root()?;
        Ok(Self { version, root, rel: rel.to_string(), children: Vec::new(), owned: false })
    }

    /// A child cgroup, removed before this one.
    pub fn child(&mut self, name: &str) -> Result<&mut TestCgroup> {
        if self.version == Version::V2 {
            // On v2 a cgroup with controllers enabled for children holds no processes itself,
            // so the controller is enabled only once this cgroup gets a child.
            self.write("cgroup.subtree_control", "+memory")?;
        }
        let c = Self::create(self.version, self.root.clone(), format!("{}/{name}", self.rel))?;
        self.children.push(c);
        Ok(self.children.last_mut().expect("just pushed"))
    }

    pub fn dir(&self) -> PathBuf {
        self.root.join(self.rel.trim_start_matches('/'))
    }

    pub fn write(&self, file: &str, value: &str) -> Result<()> {
        let p = self.dir().join(file);
        std::fs::write(&p, value).with_context(|| format!("write {value:?} to {}", p.display()))
    }

    pub fn read(&self, file: &str) -> Result<String> {
        let p = self.dir().join(file);
        std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))
    }

    pub fn set_limit(&self, bytes: u64) -> Result<()> {
        match self.version {
            Version::V1 => self.write("memory.limit_in_bytes", &bytes.to_string()),
            Version::V2 => self.write("memory.max", &bytes.to_string()),
        }
    }

    /// Its memory usage (v1 `memory.usage_in_bytes`, v2 `memory.current`).
    pub fn usage(&self) -> u64 {
        let file = match self.version {
            Version::V1 => "memory.usage_in_bytes",
            Version::V2 => "memory.current",
        };
        self.read(file).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0)
    }

    /// Waits (up to 60 s, for emulated guests) until its usage reaches `bytes`: a resident
    /// hog has grown.
    pub fn wait_for_usage(&self, bytes: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.usage() < bytes {
            assert!(Instant::now() < deadline, "{} never reached {bytes} bytes (at {})", self.rel, self.usage());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The kernel's count of OOM kills of tasks in this cgroup (and below).
    pub fn oom_kills(&self) -> u64 {
        let (file, key) = match self.version {
            Version::V1 => ("memory.oom_control", "oom_kill"),
            Version::V2 => ("memory.events", "oom_kill"),
        };
        self.read(file)
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    (k == key).then(|| v.trim().parse().ok()).flatten()
                })
            })
            .unwrap_or(0)
    }

    /// Runs `cmd` inside this cgroup from its very first instruction.
    pub fn spawn(&self, cmd: &mut Command) -> Result<Child> {
        let procs = std::ffi::CString::new(self.dir().join("cgroup.procs").into_os_string().into_encoded_bytes())?;
        // SAFETY: the closure only calls async-signal-safe libc functions.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if n != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn().context("spawning into the cgroup")
    }

    /// Starts the memory hog in this cgroup.
    pub fn spawn_hog(&self, hog: &Hog) -> Result<Child> {
        self.spawn(&mut hog.command())
    }

    fn pids(dir: &Path) -> Vec<i32> {
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    fn remove(dir: &Path) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for pid in Self::pids(dir) {
                // SAFETY: plain syscall.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            match std::fs::remove_dir(dir) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() > deadline => {
                    eprintln!("warning: could not remove test cgroup {}: {e}", dir.display());
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        self.children.clear();
        if self.owned {
            Self::remove(&self.dir());
        }
    }
}

/// How the hog grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HogKind {
    /// Anonymous memory (malloc'ed heap touched page by page).
    Anon,
    /// Shared memory (shmem): anonymous, or a memfd's pages (see [`Hog::shm_fd`]), like a
    /// container writing to /dev/shm.
    Shmem,
    /// Pipe buffers nobody reads.
    Pipe,
    /// Unix socket buffers nobody reads.
    Socket,
    /// write(2) into a memfd (tmpfs pages charged by the write path).
    TmpfsWrite,
    /// Kernel objects alone: `mib` × 4096 untouched one-page mappings, a VMA each.
    Vmas,
    /// Page cache: the file in `OOMTRACE_HOG_FILE` mapped and mlocked (set it with
    /// `Command::env`).
    FileMlock,
}

/// A bounded memory hog: allocates up to `mib` MiB, touching every page, then sleeps
/// `hold_ms` (so a test can watch it) and exits 0 if nothing killed it.
#[derive(Debug, Clone)]
pub struct Hog {
    pub mib: u64,
    pub kind: HogKind,
    pub hold_ms: u64,
    /// Run as PID 1 of a new pid namespace (a container's main process).
    pub pid1: bool,
    /// Pause after each MiB (0: as fast as it can), for a slow leak.
    pub step_ms: u64,
    /// Set as its `oom_score_adj` before it allocates (raising it needs no privilege).
    pub oom_score_adj: Option<i32>,
    /// For `Shmem`: a memfd (not close-on-exec) to grow instead of anonymous shared memory,
    /// so the pages outlive the hog.
    pub shm_fd: Option<i32>,
    /// Lock its mapped code and libraries in memory first (`mlockall(MCL_CURRENT)`), so that
    /// reclaim cannot drop them and the charge that invokes the OOM killer is never a page
    /// fault re-reading its own code.
    pub lock_code: bool,
}

impl Hog {
    pub fn anon(mib: u64) -> Self {
        Self { mib, kind: HogKind::Anon, hold_ms: 0, pid1: false, step_ms: 0, oom_score_adj: None, shm_fd: None, lock_code: false }
    }

    pub fn command(&self) -> Command {
        self.command_at(&hog_binary())
    }

    /// The hog run from `binary`, a copy of [`hog_binary`].
    pub fn command_at(&self, binary: &Path) -> Command {
        let mut c = Command::new(binary);
        c.arg(self.mib.to_string())
            .arg(match self.kind {
                HogKind::Anon => "anon",
                HogKind::Shmem => "shmem",
                HogKind::Pipe => "pipe",
                HogKind::Socket => "socket",
                HogKind::TmpfsWrite => "tmpfs-write",
                HogKind::Vmas => "vmas",
                HogKind::FileMlock => "file-mlock",
            })
            .arg(self.hold_ms.to_string())
            .args(self.pid1.then_some("pid1"))
            .env("OOMTRACE_HOG_STEP_MS", self.step_ms.to_string())
            .envs(self.oom_score_adj.map(|a| ("OOMTRACE_HOG_OOM_SCORE_ADJ", a.to_string())))
            .envs(self.shm_fd.map(|fd| ("OOMTRACE_HOG_SHM_FD", fd.to_string())))
            .envs(self.lock_code.then_some(("OOMTRACE_HOG_MLOCK", "1")))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        c
    }
}

/// The `oomtrace-hog` binary built with this crate.
pub fn hog_binary() -> PathBuf {
    sibling_binary("oomtrace-hog", "OOMTRACE_HOG")
}

/// A binary in the same target directory as the running test (or `$env_var`).
pub fn sibling_binary(name: &str, env_var: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target layout");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not found: build it first (cargo build -p {}) or set {env_var}",
        p.display(),
        if name == "oomtrace" { "oomtrace" } else { "oomtrace-tests" }
    );
    p
}
