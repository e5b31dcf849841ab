//! The allocation site: the stacks the kernel side captured of the task whose charge invoked
//! the OOM killer (`current` at `mark_victim`), symbolized, and what the charge was for.
//!
//! Kernel addresses are named from `/proc/kallsyms` ([`KernelFunctions`]). User addresses
//! need the task's memory map, which is gone once it exits, so they are symbolized first,
//! with the victim's procfs, by blazesym.
use crate::model::{Charge, ChargeKind};
use crate::kallsyms::KernelFunctions;
use blazesym::symbolize::source::{Process, Source};
use blazesym::symbolize::{Input, Sym, Symbolized, Symbolizer};
use blazesym::ErrorKind;
use oomtrace_common::{valid, OomEvent, KSTACK_DEPTH, USTACK_DEPTH};

/// Kernel frames reported below the OOM killer's own.
const STACK_FRAMES: usize = 12;
const UNKNOWN: &str = "[unknown]";

/// The OOM killer's frames, above the allocation.
fn is_oom_killer(f: &str) -> bool {
    matches!(
        f,
        "out_of_memory"
            | "mem_cgroup_out_of_memory"
            | "mem_cgroup_oom"
            | "oom_kill_process"
            | "__oom_kill_process"
            | "mark_oom_victim"
            | "oom_kill_memcg_member"
            | "mem_cgroup_scan_tasks"
            | "task_will_free_mem"
    )
}

/// The tracepoint's and the program's own frames, on top of every stack.
fn is_tracing(f: &str) -> bool {
    ["bpf_", "__bpf_", "perf_", "__traceiter_", "trace_"].iter().any(|p| f.starts_with(p))
}

/// What the charge was for, from the kernel functions on its stack (innermost first). The
/// most specific caller wins: a pipe or socket buffer is also a kernel allocation, a tmpfs
/// write also goes through the generic write path.
pub fn classify(frames: &[&str]) -> ChargeKind {
    let any = |p: &dyn Fn(&str) -> bool| frames.iter().any(|f| p(f));
    if any(&|f| f.starts_with("shmem_") || f.starts_with("__shmem_")) {
        ChargeKind::Shmem
    } else if any(&|f| f.contains("pipe")) {
        ChargeKind::Pipe
    } else if any(&|f| {
        f.contains("skb") || f.starts_with("sock_") || f.starts_with("tcp_") || f.starts_with("udp_")
            || f.starts_with("unix_") || f.starts_with("sk_") || f.starts_with("__sk_") || f == "mem_cgroup_charge_skmem"
    }) {
        ChargeKind::Socket
    } else if any(&|f| f.contains("huge_pmd") || f.contains("anon_folio_pmd") || f == "collapse_huge_page") {
        ChargeKind::Thp
    } else if any(&|f| {
        matches!(f, "do_anonymous_page" | "do_wp_page" | "wp_page_copy" | "do_cow_fault" | "do_swap_page")
            || f.starts_with("alloc_anon_folio")
    }) {
        ChargeKind::AnonFault
    } else if any(&|f| {
        f.starts_with("filemap_") || f.starts_with("__filemap_") || f.starts_with("page_cache_")
            || f.contains("write_begin") || f == "generic_perform_write" || f.starts_with("add_to_page_cache")
            || f.starts_with("read_pages") || f.starts_with("readahead")
    }) {
        ChargeKind::PageCache
    } else if any(&|f| f.contains("kmem") || f.contains("kmalloc") || f.contains("slab") || f.starts_with("obj_cgroup_charge")) {
        ChargeKind::Slab
    } else if any(&|f| matches!(f, "mem_cgroup_charge" | "__mem_cgroup_charge")) && any(&|f| f == "handle_mm_fault") {
        // A user page charged straight from the fault path, with no file or shmem frame between:
        // an anonymous fault whose `do_anonymous_page` the compiler inlined (5.10).
        ChargeKind::AnonFault
    } else {
        ChargeKind::Other
    }
}

/// A page-cache charge made by a write (`write_begin`, the generic write path).
fn is_write(frames: &[&str]) -> bool {
    frames.iter().any(|f| f.contains("write_begin") || *f == "generic_perform_write" || f.contains("_write_iter"))
}

/// The charging task's user stack as symbolized when the kill was seen, or why it was not.
pub type UserStack = Result<Vec<String>, String>;

/// Symbolizes user stacks with one long-lived symbolizer. Built per kill, parsing each
/// binary's symbol table and freeing it again took a third of the stages' CPU in a storm of
/// kills of one workload, CPU that the stages then waited for. blazesym opens a binary again
/// when its inode, size or mtime changed, so a cached binary is never the wrong one.
pub struct UserSymbols {
    symbolizer: Symbolizer,
    /// Stacks symbolized, and binaries named, since the cache was last emptied.
    stacks: usize,
    binaries: std::collections::HashSet<std::ffi::OsString>,
}

/// The cache starts over after this many stacks, or sooner once it has named [`BINARIES`]
/// binaries, so that a node running many different programs does not grow it without bound.
const STACKS: usize = 256;
const BINARIES: usize = 32;

impl Default for UserSymbols {
    fn default() -> Self {
        Self { symbolizer: names_only(), stacks: 0, binaries: Default::default() }
    }
}

impl UserSymbols {
    /// The charging task's user stack, while its memory map still exists.
    pub fn user_stack(&mut self, raw: &OomEvent) -> Option<UserStack> {
        if raw.valid & valid::USTACK == 0 || raw.trigger_tgid == 0 {
            return None; // a kernel thread, or stacks not captured
        }
        if self.stacks >= STACKS || self.binaries.len() >= BINARIES {
            *self = Self::default();
        }
        self.stacks += 1;
        let addrs = &raw.ustack[..(raw.ustack_len as usize).min(USTACK_DEPTH)];
        // Through the charging thread's own `/proc/<tid>`: every path under `/proc/<pid>` takes
        // the main thread's lock, which the OOM killer holds while it prints the kill when that
        // thread is the victim's (see [`crate::runtime::procfs::read`]).
        let mut src = Process::new(raw.trigger_pid.into());
        src.debug_syms = false;
        // The mapped files themselves (`/proc/<pid>/map_files`). The paths in the memory map
        // would be opened in this process's mount namespace, where a path can name another
        // file (a container's binary, or one replaced since the task started) and give
        // another program's names.
        src.map_files = true;
        let syms = match self.symbolizer.symbolize(&Source::Process(src), Input::AbsAddr(addrs)) {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                return Some(Err(format!("the task's mapped files could not be opened ({e}): that takes CAP_CHECKPOINT_RESTORE (or CAP_SYS_ADMIN), and the task's user or CAP_SYS_PTRACE")))
            }
            Err(e) => return Some(Err(format!("the task's memory map could not be read ({e}); it may have exited"))),
        };
        for s in &syms {
            if let Symbolized::Sym(Sym { module: Some(m), .. }) = s {
                if !self.binaries.contains::<std::ffi::OsStr>(m) {
                    self.binaries.insert(m.to_os_string());
                }
            }
        }
        match syms.first() {
            Some(Symbolized::Sym(_)) => {}
            Some(Symbolized::Unknown(blazesym::symbolize::Reason::Unmapped)) => {
                return Some(Err("the faulting address was no longer mapped: the task's memory was torn down (it was killed) before it could be read".into()))
            }
            Some(Symbolized::Unknown(why)) => {
                return Some(Err(format!("no symbol for the faulting address ({why}): a stripped binary or JIT-compiled code")))
            }
            None => return None,
        }
        // Without frame pointers the frames after the first are guesses: keep them only while
        // they resolve.
        Some(Ok(syms.iter().map_while(|s| name_of(s).map(str::to_owned)).collect()))
    }
}

/// A symbolizer that gives function names only: no source lines, no inlined frames.
fn names_only() -> Symbolizer {
    Symbolizer::builder().enable_code_info(false).enable_inlined_fns(false).build()
}

fn name_of<'a>(s: &'a Symbolized<'_>) -> Option<&'a str> {
    match s {
        Symbolized::Sym(sym) => Some(&sym.name),
        Symbolized::Unknown(_) => None,
    }
}

/// Names the charging task's stacks.
pub struct KernelSymbols {
    functions: Option<KernelFunctions>,
}

impl KernelSymbols {
    /// Reads the kernel functions of the OOM paths now, when stacks are captured (`capture`),
    /// so that the first kill does not wait for kallsyms. Warns when kallsyms hides them.
    pub fn load(capture: bool) -> Self {
        let functions = capture.then(KernelFunctions::load);
        if let Some(why) = functions.as_ref().and_then(KernelFunctions::unreadable) {
            tracing::warn!("{why}: oom.charge will name no kernel function (--no-charge-stacks turns the capture off)");
        }
        Self { functions }
    }

    /// `oom.charge` of a victim record; `None` when no stack was captured.
    pub fn charge(&mut self, raw: &OomEvent, user: Option<UserStack>) -> Option<Charge> {
        if raw.valid & valid::KSTACK == 0 {
            return None;
        }
        let (user_stack, user_stack_note) = match user {
            Some(Ok(s)) => (Some(s), None),
            Some(Err(why)) => (None, Some(why)),
            None => (None, Some("no user stack: a kernel thread's charge".into())),
        };
        let addrs = &raw.kstack[..(raw.kstack_len as usize).min(KSTACK_DEPTH)];
        let functions = self.functions.as_mut()?;
        let names = match functions.names(addrs) {
            Ok(n) => n,
            Err(why) => {
                return Some(Charge { kind: None, write: None, stack: Vec::new(), user_stack, stack_note: Some(why), user_stack_note })
            }
        };
        let names: Vec<&str> = names.iter().map(|n| n.as_deref().unwrap_or(UNKNOWN)).collect();
        let frames = allocation_frames(&names);
        let kind = classify(frames);
        Some(Charge {
            kind: Some(kind),
            write: (kind == ChargeKind::PageCache).then(|| is_write(frames)),
            stack: frames.iter().take(STACK_FRAMES).map(|f| (*f).to_owned()).collect(),
            user_stack,
            stack_note: None,
            user_stack_note,
        })
    }
}

/// The frames below the OOM killer's: from the charge outwards.
fn allocation_frames<'a, 'b>(names: &'b [&'a str]) -> &'b [&'a str] {
    let skip = match names.iter().rposition(|f| is_oom_killer(f)) {
        Some(i) => i + 1,
        None => names.iter().take_while(|f| is_tracing(f)).count(),
    };
    &names[skip..]
}

/// The verdict's clause for the charge: what the triggering task was doing. A victim's own
/// anonymous fault adds nothing to "its anon memory filled the limit", so it has none.
pub fn phrase(c: &Charge, trigger: &str, trigger_is_victim: bool, scope: &str) -> Option<String> {
    Some(match c.kind? {
        ChargeKind::AnonFault if trigger_is_victim => return None,
        ChargeKind::AnonFault => format!("an anonymous-memory page fault by {trigger} triggered it"),
        ChargeKind::PageCache => format!(
            "a page-cache {} by {trigger} triggered it: the {scope}'s page cache counts toward its limit",
            if c.write == Some(true) { "write" } else { "read" }
        ),
        ChargeKind::Shmem => format!(
            "a tmpfs/shared-memory page of {trigger} triggered it: tmpfs (emptyDir medium: Memory), /dev/shm and memfd pages count toward the limit and outlive the process"
        ),
        ChargeKind::Slab => format!("a kernel allocation (slab) for {trigger} triggered it: kernel memory counts toward the limit"),
        ChargeKind::Socket => format!("socket buffers of {trigger} triggered it: network buffers count toward the limit"),
        ChargeKind::Pipe => format!("pipe buffers of {trigger} triggered it: pipe buffers count toward the limit"),
        ChargeKind::Thp => format!("a transparent huge page fault by {trigger} triggered it (2 MiB charged at once)"),
        ChargeKind::Other => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process's own stack, named through one symbolizer many times over, across its
    /// starting over: the same name every time.
    #[test]
    fn user_stacks_are_named_alike_through_the_cache() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP: /proc/self/map_files takes CAP_CHECKPOINT_RESTORE; run as root");
            return;
        }
        #[inline(never)]
        fn faulting_here() -> u64 {
            std::hint::black_box(faulting_here as *const () as u64)
        }
        let Some(crate::record::Record::Victim(mut raw)) =
            crate::record::record_from_bytes(&crate::record::victim_record(std::mem::size_of::<OomEvent>()))
        else {
            panic!("a victim record")
        };
        raw.valid = valid::USTACK;
        raw.trigger_tgid = std::process::id();
        raw.ustack[0] = faulting_here() + 1;
        raw.ustack_len = 1;
        // Charged by a thread other than the main one: read through that thread's `/proc/<tid>`.
        let (tid_tx, tid) = std::sync::mpsc::channel();
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let charging = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tid_tx.send(unsafe { libc::gettid() } as u32).unwrap();
            let _ = wait.recv();
        });
        raw.trigger_pid = tid.recv().unwrap();
        assert_ne!(raw.trigger_pid, raw.trigger_tgid);
        let mut symbols = UserSymbols::default();
        for i in 0..=STACKS {
            let stack = symbols.user_stack(&raw).expect("a stack").expect("named");
            assert!(stack[0].contains("faulting_here"), "stack {i}: {stack:?}");
        }
        assert_eq!((symbols.stacks, symbols.binaries.len()), (1, 1), "started over after {STACKS} stacks");
        done.send(()).unwrap();
        charging.join().unwrap();
    }

    /// Stacks as this kernel (6.18) gave them at `oom:mark_victim` in a 32 MiB memcg.
    #[test]
    fn classifies_the_kernels_own_stacks() {
        let oom = ["bpf_trace_run2", "__bpf_trace_mark_victim", "mark_oom_victim", "__oom_kill_process", "oom_kill_process", "out_of_memory", "mem_cgroup_out_of_memory", "try_charge_memcg"];
        let case = |tail: &[&str]| {
            let all: Vec<&str> = oom.iter().chain(tail).copied().collect();
            let frames = allocation_frames(&all);
            assert_eq!(frames[0], "try_charge_memcg");
            (classify(frames), is_write(frames))
        };
        assert_eq!(case(&["__mem_cgroup_charge", "alloc_anon_folio", "do_anonymous_page", "__handle_mm_fault", "handle_mm_fault", "do_user_addr_fault", "exc_page_fault"]).0, ChargeKind::AnonFault);
        assert_eq!(case(&["__mem_cgroup_charge", "shmem_alloc_and_add_folio", "shmem_get_folio_gfp", "shmem_write_begin", "generic_perform_write", "shmem_file_write_iter", "vfs_write"]).0, ChargeKind::Shmem);
        assert_eq!(case(&["__memcg_kmem_charge_page", "__alloc_pages_noprof", "anon_pipe_write", "vfs_write", "ksys_write"]).0, ChargeKind::Pipe);
        // Making a pipe, or growing it (F_SETPIPE_SZ), allocates with kmalloc: still the pipe's.
        assert_eq!(case(&["obj_cgroup_charge_pages", "__memcg_slab_post_alloc_hook", "__kmalloc_noprof", "alloc_pipe_info", "create_pipe_files", "do_pipe2"]).0, ChargeKind::Pipe);
        assert_eq!(case(&["obj_cgroup_charge_pages", "__memcg_kmem_charge_page", "__kmalloc_noprof", "pipe_resize_ring", "pipe_fcntl", "do_fcntl"]).0, ChargeKind::Pipe);
        assert_eq!(case(&["obj_cgroup_charge", "__kmalloc_node_track_caller_noprof", "kmalloc_reserve", "__alloc_skb", "alloc_skb_with_frags", "sock_alloc_send_pskb", "unix_stream_sendmsg"]).0, ChargeKind::Socket);
        assert_eq!(case(&["__mem_cgroup_charge", "filemap_add_folio", "page_cache_ra_unbounded", "filemap_get_pages", "filemap_read", "vfs_read"]), (ChargeKind::PageCache, false));
        assert_eq!(case(&["__mem_cgroup_charge", "__filemap_get_folio", "ext4_write_begin", "generic_perform_write", "ext4_buffered_write_iter"]), (ChargeKind::PageCache, true));
        assert_eq!(case(&["__mem_cgroup_charge", "vma_alloc_anon_folio_pmd", "do_huge_pmd_anonymous_page", "__handle_mm_fault"]).0, ChargeKind::Thp);
        assert_eq!(case(&["obj_cgroup_charge", "__memcg_slab_post_alloc_hook", "kmem_cache_alloc_noprof", "d_alloc", "lookup_open"]).0, ChargeKind::Slab);
        assert_eq!(case(&["__mem_cgroup_charge", "something_new"]).0, ChargeKind::Other);
        // 5.10: do_anonymous_page inlined into the fault path; a page table is kernel memory.
        assert_eq!(case(&["mem_cgroup_charge", "handle_mm_fault", "do_user_addr_fault", "exc_page_fault"]).0, ChargeKind::AnonFault);
        assert_eq!(case(&["__memcg_kmem_charge_page", "pte_alloc_one", "__pte_alloc", "handle_mm_fault", "exc_page_fault"]).0, ChargeKind::Slab);
        assert_eq!(case(&["mem_cgroup_charge", "shmem_add_to_page_cache", "shmem_getpage_gfp", "shmem_fault", "__do_fault", "handle_mm_fault"]).0, ChargeKind::Shmem);
    }

    #[test]
    fn phrases_name_the_trigger_and_the_kind() {
        let c = |kind, write| Charge { kind: Some(kind), write, stack: vec![], user_stack: None, stack_note: None, user_stack_note: None };
        assert_eq!(
            phrase(&c(ChargeKind::PageCache, Some(true)), "tar", false, "container").as_deref(),
            Some("a page-cache write by tar triggered it: the container's page cache counts toward its limit")
        );
        assert!(phrase(&c(ChargeKind::PageCache, Some(false)), "cat", false, "pod").unwrap().starts_with("a page-cache read by cat"));
        assert_eq!(phrase(&c(ChargeKind::Other, None), "x", false, "pod"), None);
        assert_eq!(phrase(&c(ChargeKind::AnonFault, None), "app", true, "pod"), None);
        assert!(phrase(&c(ChargeKind::AnonFault, None), "dd", false, "pod").unwrap().contains("by dd"));
        let unknown = Charge { kind: None, ..c(ChargeKind::Other, None) };
        assert_eq!(phrase(&unknown, "x", false, "pod"), None);
    }
}
