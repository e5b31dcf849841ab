//! Kernel function names from `/proc/kallsyms`, for the stacks of `oom.charge`.
//!
//! Reading kallsyms costs ~50 ms of kernel time here (seconds under emulation), and the
//! whole table is ~3 MiB of names. So it is read once at start-up for the functions an
//! allocation that ends in the OOM killer runs through (the fault, syscall, page-cache,
//! tmpfs, pipe, socket, slab and memcg charge paths: ~3 700 functions, a 0.13 MiB table here), before
//! the daemon says it is watching: the first kill is then not the one that pays for it. An
//! address outside that set costs one more read, and its function is remembered.
use std::io::BufRead;

/// Name prefixes (after any leading underscores) of the functions kept from the start. A
/// function outside them is still named, by a read of kallsyms when it first shows up.
const WARM: &[&str] = &[
    // entry, faults, the memcg charge and the OOM killer
    "entry_", "do_syscall", "x64_sys_call", "x64_sys_", "sys_", "ksys_", "exc_page_fault", "asm_exc_",
    "do_user_addr_fault", "handle_mm_fault", "handle_pte_fault", "do_", "wp_page", "alloc_anon", "vma_alloc",
    "pte_", "pmd_", "collapse", "huge", "mem_cgroup", "memcg", "charge_memcg", "try_charge", "obj_cgroup",
    "out_of_memory", "oom_", "mark_oom", "pagefault_out_of_memory",
    // page allocation, slab
    "alloc_", "folio", "filemap_", "page_cache", "readahead", "read_pages", "kmalloc", "kmem_cache", "slab",
    "new_slab", "allocate_slab", "get_user_pages", "faultin", "populate", "mm_populate", "mlock", "copy_",
    // write paths, tmpfs, pipes, sockets
    "vfs_", "new_sync", "generic_perform_write", "generic_file", "shmem", "pipe", "anon_pipe", "create_pipe",
    "unix_", "sock_", "sk_", "skb", "alloc_skb", "tcp_", "udp_", "netlink_",
    // the tracepoint and this program, on top of every stack (the victim tracepoint's own
    // glue is matched by its suffix below)
    "bpf_prog_", "bpf_trace_run", "trace_call_bpf", "perf_trace_run_bpf_submit", "perf_tp_event",
];

/// Functions (and addresses in none) remembered beyond the start-up set, about, before the
/// cache starts over from it.
const LEARNED: usize = 4096;

/// A kernel function: `[start, end)` and its name.
#[derive(Debug)]
struct Function {
    start: u64,
    end: u64,
    name: Box<str>,
}

/// What one pass over kallsyms found: the functions `keep` accepted, with their ends.
struct Scan {
    functions: Vec<Function>,
    /// The first function's address (0: addresses hidden from this reader).
    first: Option<u64>,
}

/// Whether a kallsyms type letter is code.
fn is_text(kind: &str) -> bool {
    matches!(kind, "T" | "t" | "W" | "w")
}

/// One pass over kallsyms lines. A function ends where the next code symbol starts (kallsyms
/// has no sizes; modules' symbols are not in address order, so every start is collected).
fn scan(lines: impl Iterator<Item = String>, keep: impl Fn(&str) -> bool) -> Scan {
    let mut starts = Vec::new();
    let mut kept = Vec::new();
    let mut first = None;
    for l in lines {
        let mut it = l.split_ascii_whitespace();
        let (Some(addr), Some(kind), Some(name)) = (it.next(), it.next(), it.next()) else { continue };
        if !is_text(kind) {
            continue;
        }
        let Ok(addr) = u64::from_str_radix(addr, 16) else { continue };
        first.get_or_insert(addr);
        starts.push(addr);
        // `__pfx_` symbols are the padding before a function, never a frame.
        if !name.starts_with("__pfx_") && keep(name) {
            kept.push((addr, Box::<str>::from(name)));
        }
    }
    starts.sort_unstable();
    starts.dedup();
    let functions = kept
        .into_iter()
        .map(|(start, name)| {
            let next = starts.partition_point(|s| *s <= start);
            Function { start, end: starts.get(next).copied().unwrap_or(u64::MAX), name }
        })
        .collect();
    Scan { functions, first }
}

fn read_kallsyms(keep: impl Fn(&str) -> bool) -> Result<Scan, String> {
    let f = std::fs::File::open("/proc/kallsyms").map_err(|e| format!("/proc/kallsyms: {e}"))?;
    Ok(scan(std::io::BufReader::new(f).lines().map_while(Result::ok), keep))
}

/// Whether `name` is on the paths kept from the start.
fn is_warm(name: &str) -> bool {
    let bare = name.trim_start_matches('_');
    WARM.iter().any(|p| bare.starts_with(p)) || name.ends_with("_mark_victim")
}

/// Without CAP_SYSLOG (and `kptr_restrict` ≥ 1, or `perf_event_paranoid` ≥ 2) kallsyms shows
/// every address as 0: say so rather than name the wrong functions. Judged by the first
/// function, not the first line: before 6.15 the table opens with per-CPU symbols at 0,
/// however privileged the reader.
fn hidden(first: Option<u64>) -> Result<(), String> {
    match first {
        Some(0) | None => {
            let restrict = std::fs::read_to_string("/proc/sys/kernel/kptr_restrict").unwrap_or_default();
            Err(format!(
                "kernel addresses are hidden in /proc/kallsyms (kernel.kptr_restrict={}): naming kernel functions needs CAP_SYSLOG, and kptr_restrict below 2",
                restrict.trim()
            ))
        }
        Some(_) => Ok(()),
    }
}

/// A function of the table: its name is `names[name_at..]` up to a NUL. Compact, since the
/// daemon keeps thousands of them.
#[derive(Debug, Clone, Copy)]
struct Entry {
    start: u64,
    len: u32,
    name_at: u32,
}

/// Kernel functions by address: the start-up set and those learned since.
pub struct KernelFunctions {
    /// Sorted by start.
    entries: Vec<Entry>,
    names: String,
    /// Where the start-up set's names end: learned names follow.
    warm_names: usize,
    /// Addresses in no function (kallsyms was read for them once already).
    nowhere: std::collections::HashSet<u64>,
    /// Why no kernel function can be named, when kallsyms hides its addresses.
    unreadable: Option<String>,
}

impl KernelFunctions {
    /// Reads the start-up set.
    pub fn load() -> Self {
        match read_kallsyms(is_warm) {
            Ok(s) => Self::from_scan(s),
            Err(why) => Self::empty(Some(why)),
        }
    }

    fn empty(unreadable: Option<String>) -> Self {
        Self { entries: Vec::new(), names: String::new(), warm_names: 0, nowhere: Default::default(), unreadable }
    }

    fn from_scan(s: Scan) -> Self {
        let mut t = Self::empty(hidden(s.first).err());
        if t.unreadable.is_none() {
            for f in &s.functions {
                t.add(f);
            }
        }
        t.entries.sort_unstable_by_key(|e| e.start);
        t.entries.shrink_to_fit();
        t.names.shrink_to_fit();
        t.warm_names = t.names.len();
        t
    }

    /// Appends `f` (unsorted; callers keep the order).
    fn add(&mut self, f: &Function) {
        let Ok(name_at) = u32::try_from(self.names.len()) else { return };
        self.names.push_str(&f.name);
        self.names.push('\0');
        let len = u32::try_from(f.end.saturating_sub(f.start)).unwrap_or(u32::MAX);
        self.entries.push(Entry { start: f.start, len, name_at });
    }

    /// Why kernel functions cannot be named here, if they cannot.
    pub fn unreadable(&self) -> Option<&str> {
        self.unreadable.as_deref()
    }

    fn lookup(&self, addr: u64) -> Option<&str> {
        let i = self.entries.partition_point(|e| e.start <= addr).checked_sub(1)?;
        let e = self.entries[i];
        if addr - e.start >= u64::from(e.len) {
            return None;
        }
        let name = self.names.get(e.name_at as usize..)?;
        name.split('\0').next()
    }

    /// The names of `addrs`; kallsyms is read again only when one is outside the known
    /// functions. `None` for an address in no function.
    pub fn names(&mut self, addrs: &[u64]) -> Result<Vec<Option<Box<str>>>, String> {
        if let Some(why) = &self.unreadable {
            return Err(why.clone());
        }
        if addrs.iter().any(|a| self.lookup(*a).is_none() && !self.nowhere.contains(a)) {
            self.learn(addrs)?;
        }
        Ok(addrs.iter().map(|a| self.lookup(*a).map(Box::from)).collect())
    }

    /// Adds the functions holding `addrs` from a full read of kallsyms.
    fn learn(&mut self, addrs: &[u64]) -> Result<(), String> {
        let all = read_kallsyms(|_| true)?;
        hidden(all.first)?;
        let mut all = all.functions;
        all.sort_unstable_by_key(|f| f.start);
        if self.names.len() > self.warm_names + LEARNED * 32 {
            let warm = self.warm_names;
            self.entries.retain(|e| (e.name_at as usize) < warm);
            self.names.truncate(warm);
        }
        for a in addrs {
            if self.lookup(*a).is_some() {
                continue;
            }
            let Some(i) = all.partition_point(|f| f.start <= *a).checked_sub(1) else { continue };
            if *a < all[i].end {
                self.add(&all[i]);
                self.entries.sort_unstable_by_key(|e| e.start);
            }
        }
        if self.nowhere.len() > LEARNED {
            self.nowhere.clear();
        }
        let unplaced: Vec<u64> = addrs.iter().copied().filter(|a| self.lookup(*a).is_none()).collect();
        self.nowhere.extend(unplaced);
        drop(all);
        // The full table is freed: hand its pages back rather than keep the peak.
        crate::heap::release_freed();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(t: &str) -> impl Iterator<Item = String> + '_ {
        t.lines().map(str::to_owned)
    }

    #[test]
    fn functions_end_at_the_next_code_symbol_in_any_order() {
        let t = "0000000000000000 A fixed_percpu_data\n\
                 ffffffff81000010 T do_anonymous_page\n\
                 ffffffff81000008 t __pfx_do_anonymous_page\n\
                 ffffffff81000100 D some_data\n\
                 ffffffff81000200 T vfs_write\n\
                 ffffffffa0000000 t unrelated_fn\t[mod]\n\
                 ffffffff81000300 T handle_mm_fault\n";
        let s = scan(lines(t), is_warm);
        assert_eq!(s.first, Some(0xffffffff81000010));
        let f = KernelFunctions::from_scan(s);
        assert_eq!(f.lookup(0xffffffff81000010), Some("do_anonymous_page"));
        // Data symbols do not end a function; the next code symbol does.
        assert_eq!(f.lookup(0xffffffff81000150), Some("do_anonymous_page"));
        assert_eq!(f.lookup(0xffffffff81000201), Some("vfs_write"));
        // Not kept, so not named from the start-up set.
        assert_eq!(f.lookup(0xffffffffa0000004), None);
        // vfs_write ends where handle_mm_fault starts, though it was listed later.
        assert_eq!(f.lookup(0xffffffff81000300), Some("handle_mm_fault"));
        assert_eq!(f.lookup(0xffffffff81000008), None, "padding is no function");
    }

    #[test]
    fn hidden_addresses_are_judged_by_the_first_function() {
        let v6_12 = "0000000000000000 A fixed_percpu_data\n0000000000000000 A __per_cpu_start\nffffffff81000000 T _stext\n";
        assert_eq!(scan(lines(v6_12), |_| true).first, Some(0xffffffff81000000));
        let hide = "0000000000000000 A fixed_percpu_data\n0000000000000000 T _stext\n";
        let f = KernelFunctions::from_scan(scan(lines(hide), |_| true));
        assert!(f.unreadable().is_some_and(|w| w.contains("CAP_SYSLOG")));
        assert!(hidden(scan(lines(""), |_| true).first).is_err());
    }

    #[test]
    fn the_oom_paths_are_warm() {
        for f in ["__handle_mm_fault", "try_charge_memcg", "shmem_get_folio_gfp", "anon_pipe_write", "unix_stream_sendmsg",
            "__kmalloc_noprof", "filemap_add_folio", "bpf_trace_run2", "__traceiter_mark_victim", "__bpf_trace_mark_victim",
            "perf_trace_mark_victim", "bpf_prog_6deef7357e7b4530_mark_victim_btf", "__x64_sys_write"] {
            assert!(is_warm(f), "{f}");
        }
        assert!(!is_warm("ext4_write_begin"));
        assert!(!is_warm("__traceiter_sched_switch"), "other tracepoints' glue is not kept");
    }

    /// Real kallsyms here: a function outside the start-up set is read and remembered.
    #[test]
    fn names_kernel_addresses_from_kallsyms() {
        let mut k = KernelFunctions::load();
        if let Some(why) = k.unreadable() {
            eprintln!("SKIP: {why}");
            return;
        }
        let text = std::fs::read_to_string("/proc/kallsyms").unwrap();
        let find = |name: &str| {
            text.lines().find_map(|l| {
                let mut it = l.split_whitespace();
                let (a, _, n) = (it.next()?, it.next()?, it.next()?);
                (n == name).then(|| u64::from_str_radix(a, 16).ok()).flatten()
            })
        };
        let oom = find("out_of_memory").expect("out_of_memory in kallsyms");
        assert_eq!(k.lookup(oom + 1), Some("out_of_memory"), "warm from the start");
        let cold = find("ext4_write_begin").or_else(|| find("kernel_clone")).expect("a cold function");
        assert_eq!(k.lookup(cold + 1), None);
        let names = k.names(&[oom + 1, cold + 1]).unwrap();
        assert_eq!(names[0].as_deref(), Some("out_of_memory"));
        assert!(names[1].is_some());
        assert_eq!(k.lookup(cold + 1), names[1].as_deref(), "remembered");
    }
}
