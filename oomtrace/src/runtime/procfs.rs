//! The victim's command line, runtime variables and executable kind from procfs, read the
//! moment the kill is seen: `/proc/<pid>/cmdline` and `environ` go empty once the dying
//! thread has let go of the process's memory, which takes milliseconds.
use super::{by_program, Env, Process};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};

/// At most this much of cmdline and of environ is read (long class paths fit).
const CAP: u64 = 256 << 10;
/// The inode of the initial pid namespace (`PROC_PID_INIT_INO`).
const INIT_PID_NS: u64 = 0xEFFF_FFFC;
/// `PT_NOTE`, and the Go linker's build-ID note (owner `Go`).
const PT_NOTE: u32 = 4;
const NOTE_GO_BUILDID: u32 = 4;

/// Whether this process sees the kernel's pids: in another pid namespace (a pod without
/// `hostPID`) `/proc/<pid>` of a victim is another process or none, and is not read.
pub fn host_pids() -> bool {
    std::fs::metadata("/proc/self/ns/pid").is_ok_and(|m| m.ino() == INIT_PID_NS)
}

/// At most this many of the victim's threads are tried once its main thread has let go.
const THREADS: usize = 64;

/// `pid`'s process, or `None` when procfs no longer has its command line and environment.
///
/// `held` is the victim's thread that the OOM killer locked: it keeps that lock while it prints
/// the kill to the console (milliseconds on a serial console, tens of them when the console is
/// behind), and every path under `/proc/<tid>` of that thread waits for it, `/proc/<pid>` too
/// when it is the main thread. So the thread the kill caught allocating (`busy`: given only
/// when the kernel's record names it as one of `pid`'s threads), which shows the same process
/// through its own `/proc/<tid>`, goes first.
///
/// A process's memory stays until its last thread has exited, but `/proc/<pid>` looks at the
/// main thread, often the first to go (an idle JVM or Go main thread wakes to the SIGKILL and
/// exits at once): then the other threads are asked, through `/proc/<pid>/task/<tid>`.
pub fn read(pid: u32, busy: Option<u32>, held: u32) -> Option<Process> {
    first_dirs(pid, busy, held)
        .iter()
        .find_map(|d| read_at(d))
        .or_else(|| {
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
            tasks
                .flatten()
                .take(THREADS)
                .find_map(|t| read_at(&t.path().to_string_lossy()))
        })
}

/// The procfs directories tried first, in order: the busy thread when the kernel does not
/// hold it, the process, then the busy thread even if held.
fn first_dirs(pid: u32, busy: Option<u32>, held: u32) -> Vec<String> {
    let busy = busy.filter(|t| *t != pid);
    let free = busy.filter(|t| *t != held);
    free.into_iter()
        .chain([pid])
        .chain(busy.filter(|_| free.is_none()))
        .map(|t| format!("/proc/{t}"))
        .collect()
}

/// The process as the procfs directory `dir` (of the process or of one of its threads) shows it.
fn read_at(dir: &str) -> Option<Process> {
    let argv = nul_separated(&format!("{dir}/cmdline"))?;
    // Gone by now, or refused (reading it takes ptrace access): the settings in it are not
    // known, so the process counts as not read and the pod spec is asked.
    let mut env = Env::default();
    for kv in nul_separated(&format!("{dir}/environ"))? {
        if let Some((k, v)) = kv.split_once('=') {
            env.keep(k, Some(v));
        }
    }
    let go_binary = match argv.first() {
        Some(a) if by_program(a).is_some() => Some(false),
        // The executable is gone too (the task is exiting): what it runs is not known, so
        // the process counts as not read and the pod spec is asked.
        _ => Some(go_binary(&format!("{dir}/exe"))?),
    };
    Some(Process {
        argv,
        env,
        go_binary,
    })
}

/// A NUL-separated procfs file as strings; `None` when unreadable or empty.
fn nul_separated(path: &str) -> Option<Vec<String>> {
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(CAP)
        .read_to_end(&mut buf)
        .ok()?;
    let parts: Vec<String> = buf
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    (!parts.is_empty()).then_some(parts)
}

/// Whether the ELF file at `path` carries the Go linker's build-ID note (every Go binary
/// does, stripped or not); `None` when it cannot be read.
pub fn go_binary(path: &str) -> Option<bool> {
    let f = std::fs::File::open(path).ok()?;
    let mut h = [0u8; 64];
    f.read_exact_at(&mut h, 0).ok()?;
    // 64-bit little-endian ELF only (what Go builds for amd64 and arm64).
    if h[..4] != *b"\x7fELF" || h[4] != 2 || h[5] != 1 {
        return Some(false);
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at =
        |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
    let u64_at =
        |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
    let (phoff, phentsize, phnum) = (
        u64_at(&h, 0x20),
        usize::from(u16_at(&h, 0x36)),
        u16_at(&h, 0x38).min(64),
    );
    if phentsize < 56 {
        return Some(false);
    }
    for i in 0..u64::from(phnum) {
        let mut ph = [0u8; 56];
        f.read_exact_at(&mut ph, phoff.saturating_add(i * phentsize as u64))
            .ok()?;
        if u32_at(&ph, 0) != PT_NOTE {
            continue;
        }
        let mut notes = vec![0u8; usize::try_from(u64_at(&ph, 0x20).min(4096)).unwrap_or(0)];
        f.read_exact_at(&mut notes, u64_at(&ph, 0x08)).ok()?;
        if has_go_note(&notes) {
            return Some(true);
        }
    }
    Some(false)
}

/// Walks ELF notes (`namesz`, `descsz`, `type`, name, desc, each padded to 4 bytes).
fn has_go_note(mut notes: &[u8]) -> bool {
    let pad = |n: usize| n.div_ceil(4).saturating_mul(4);
    while notes.len() >= 12 {
        let word = |o: usize| {
            u32::from_le_bytes([notes[o], notes[o + 1], notes[o + 2], notes[o + 3]]) as usize
        };
        let (namesz, descsz, kind) = (word(0), word(4), word(8) as u32);
        let name_end = 12usize.saturating_add(pad(namesz));
        // The Go linker writes the name "Go" NUL-padded to 4 bytes.
        let name = notes
            .get(12..12usize.saturating_add(namesz))
            .map(|n| n.split(|b| *b == 0).next().unwrap_or(n));
        if name == Some(b"Go") && kind == NOTE_GO_BUILDID {
            return true;
        }
        let next = name_end.saturating_add(pad(descsz));
        if next > notes.len() {
            return false;
        }
        notes = &notes[next..];
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_read_whole() {
        let p = read(std::process::id(), None, std::process::id()).expect("our own cmdline");
        assert_eq!(p.argv[0], std::env::args().next().unwrap());
        assert_eq!(p.go_binary, Some(false), "a Rust test binary");
        assert_eq!(go_binary("/proc/self/exe"), Some(false));
    }

    #[test]
    fn a_thread_shows_its_process() {
        let me = std::process::id();
        let t = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() } as u32;
            // Through the thread's own directory only, as when the kernel holds the main thread.
            let alone = read_at(&format!("/proc/{tid}"));
            (alone, read(me, Some(tid), me))
        });
        let (alone, busy_first) = t.join().unwrap();
        let p = alone.expect("a live thread's view");
        assert_eq!(Some(&p), busy_first.as_ref());
        assert_eq!(Some(p), read(me, None, me));
    }

    #[test]
    fn the_thread_the_kernel_holds_is_read_last() {
        let dirs = |busy, held| first_dirs(100, busy, held);
        // Another thread allocated; the OOM killer holds the main thread.
        assert_eq!(dirs(Some(105), 100), ["/proc/105", "/proc/100"]);
        // The main thread's lock is free (it had exited: the kernel holds another thread).
        assert_eq!(dirs(Some(105), 107), ["/proc/105", "/proc/100"]);
        // The allocating thread is the one held.
        assert_eq!(dirs(Some(105), 105), ["/proc/100", "/proc/105"]);
        // The process allocated from its main thread, or the trigger was another process.
        assert_eq!(dirs(Some(100), 100), ["/proc/100"]);
        assert_eq!(dirs(None, 100), ["/proc/100"]);
    }

    #[test]
    fn a_gone_process_is_none() {
        // Above pid_max: no such process, ever.
        assert_eq!(read(u32::MAX, Some(u32::MAX - 1), u32::MAX), None);
        assert_eq!(go_binary("/nonexistent"), None);
    }

    #[test]
    fn go_notes() {
        let note = |name: &[u8], kind: u32, desc: usize| {
            let mut n = Vec::new();
            n.extend((name.len() as u32).to_le_bytes());
            n.extend((desc as u32).to_le_bytes());
            n.extend(kind.to_le_bytes());
            n.extend(name);
            n.resize(n.len().div_ceil(4) * 4, 0);
            n.extend(vec![7u8; desc.div_ceil(4) * 4]);
            n
        };
        let gnu = note(b"GNU\0", 3, 20);
        let go = note(b"Go\0\0", NOTE_GO_BUILDID, 83);
        assert!(has_go_note(&[gnu.clone(), go.clone()].concat()));
        assert!(!has_go_note(&gnu));
        assert!(!has_go_note(&note(b"Go\0\0", 1, 8)), "another Go note type");
        assert!(!has_go_note(&note(b"Gopher\0", NOTE_GO_BUILDID, 8)));
        assert!(!has_go_note(&go[..11]));
        let mut huge = go.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(has_go_note(&huge), "the name is checked before the size");
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(!has_go_note(&huge));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_notes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = has_go_note(&bytes);
        }
    }
}
