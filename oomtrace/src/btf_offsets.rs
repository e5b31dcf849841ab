//! Kernel struct member offsets, read from the running kernel's BTF.
//!
//! Rust eBPF has no CO-RE relocations, so the programs read kernel memory at offsets installed
//! by userspace. Each offset is resolved by name (descending into anonymous structs and unions,
//! which the kernel uses a lot), and a member that does not exist on this kernel is reported by
//! name and left as `OFFSET_MISSING`, so the fields that still resolve keep working.
use anyhow::{anyhow, bail, Context, Result};
use btf_rs::{Backend, Btf, Struct, Type};
use fallible_iterator::FallibleIterator;
use oomtrace_common::{KernelOffsets, OFFSET_MISSING};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The kernel's BTF, opened once.
pub struct KernelBtf {
    btf: Btf,
}

/// Offsets plus the names of the members this kernel lacks.
pub struct Resolved {
    pub offsets: KernelOffsets,
    pub missing: Vec<&'static str>,
}

/// `path` copied into an anonymous memory file, which can always be mapped (the mapping
/// keeps it alive once the descriptor is closed).
fn memfd_copy(path: &Path) -> Result<OwnedFd> {
    // SAFETY: a constant C string and no flags; the result is checked.
    let fd = unsafe { libc::memfd_create(c"oomtrace-btf".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("memfd_create");
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(fd.try_clone()?);
    std::io::copy(&mut std::fs::File::open(path)?, &mut file)?;
    Ok(fd)
}

impl KernelBtf {
    /// Maps the file rather than parsing it whole: btf-rs's parsed form of a kernel's BTF
    /// takes about 38 MiB, eight times the file, and would be the daemon's peak. Where the
    /// kernel cannot map `/sys/kernel/btf/vmlinux` (older kernels), a memfd copy is mapped.
    pub fn open(path: &Path) -> Result<Self> {
        match Self::mapped(path) {
            Ok(k) => Ok(k),
            Err(_) => Self::copied(path),
        }
    }

    fn mapped(path: &Path) -> Result<Self> {
        // A malformed file must be an error, never a crash of the daemon.
        let btf = std::panic::catch_unwind(|| Btf::from_file_with_backend(path, Backend::Mmap))
            .map_err(|_| anyhow!("malformed BTF"))?
            .context("malformed BTF")?;
        Ok(Self { btf })
    }

    /// Maps a memfd copy of `path`, for files the kernel cannot map.
    fn copied(path: &Path) -> Result<Self> {
        let copy = memfd_copy(path).with_context(|| {
            format!(
                "cannot read kernel BTF at {}: oomtrace needs a kernel built with \
                 CONFIG_DEBUG_INFO_BTF=y (5.8 or newer)",
                path.display()
            )
        })?;
        Self::mapped(&PathBuf::from(format!("/proc/self/fd/{}", copy.as_raw_fd())))
            .with_context(|| format!("parsing kernel BTF {}", path.display()))
    }

    /// Strips typedefs and qualifiers down to the underlying type.
    fn underlying(&self, mut t: Type) -> Result<Type> {
        for _ in 0..32 {
            match &t {
                Type::Typedef(_)
                | Type::Const(_)
                | Type::Volatile(_)
                | Type::Restrict(_)
                | Type::TypeTag(_) => {
                    let bt = t.as_btf_type().expect("qualifier is a BTF type");
                    t = self.btf.resolve_chained_type(bt)?;
                }
                _ => return Ok(t),
            }
        }
        bail!("typedef chain too long")
    }

    /// The complete definition of `struct name` (skipping forward declarations).
    fn named_struct(&self, name: &str) -> Result<Struct> {
        for t in self.btf.resolve_types_by_name(name).unwrap_or_default() {
            if let Type::Struct(s) = t {
                return Ok(s);
            }
        }
        bail!("struct {name} not found in kernel BTF")
    }

    /// Finds member `name` in `s`, looking inside anonymous struct/union members too.
    /// Returns its byte offset and its (unqualified) type.
    fn find_member(&self, s: &Struct, name: &str, depth: u32) -> Option<(u32, Type)> {
        if depth > 8 {
            return None;
        }
        for m in &s.members {
            if m.bitfield_size().is_some_and(|bits| bits > 0) {
                continue;
            }
            let mname = self.btf.resolve_name(m).unwrap_or_default();
            let Ok(mt) = self.btf.resolve_chained_type(m).and_then(|t| {
                self.underlying(t).map_err(|e| btf_rs::Error::Format(e.to_string()))
            }) else {
                continue;
            };
            let here = m.bit_offset() / 8;
            if mname == name {
                return Some((here, mt));
            }
            if mname.is_empty() {
                if let Type::Struct(inner) | Type::Union(inner) = &mt {
                    if let Some((off, t)) = self.find_member(inner, name, depth + 1) {
                        return Some((here + off, t));
                    }
                }
            }
        }
        None
    }

    /// Byte offset of `path` (e.g. `["memory", "usage"]`) inside `struct strukt`.
    pub fn offset_of(&self, strukt: &str, path: &[&str]) -> Result<u32> {
        let mut s = self.named_struct(strukt)?;
        let mut total = 0u32;
        for (i, name) in path.iter().enumerate() {
            let (off, t) = self
                .find_member(&s, name, 0)
                .ok_or_else(|| anyhow!("{strukt}.{} not found", path[..=i].join(".")))?;
            total += off;
            if i + 1 < path.len() {
                s = match t {
                    Type::Struct(s) | Type::Union(s) => s,
                    other => bail!("{strukt}.{} is a {}, not a struct", name, other.name()),
                };
            }
        }
        Ok(total)
    }

    /// The type of `path` inside `struct strukt`.
    fn member_type(&self, strukt: &str, name: &str) -> Result<Type> {
        let s = self.named_struct(strukt)?;
        self.find_member(&s, name, 0)
            .map(|(_, t)| t)
            .ok_or_else(|| anyhow!("{strukt}.{name} not found"))
    }

    /// Value of an enumerator (e.g. `memory_cgrp_id`, `MEMCG_OOM`).
    pub fn enum_value(&self, name: &str) -> Result<u32> {
        let mut types = self.btf.type_iter();
        while let Ok(Some(t)) = types.next() {
            if let Type::Enum(e) = &t {
                for m in &e.members {
                    if self.btf.resolve_name(m).ok().as_deref() == Some(name) {
                        return Ok(m.val());
                    }
                }
            }
        }
        bail!("enumerator {name} not found in kernel BTF")
    }

    fn size_of(&self, t: &Type) -> Result<u32> {
        Ok(match t {
            Type::Struct(s) | Type::Union(s) => s.size() as u32,
            Type::Int(i) => i.size() as u32,
            Type::Ptr(_) => 8,
            Type::Enum(e) => e.size() as u32,
            other => bail!("no size for BTF {}", other.name()),
        })
    }

    /// Offset of the `idx`-th RSS counter inside `struct mm_struct`: the counter
    /// `get_mm_counter()` reads, which is what the kernel prints in its OOM report.
    fn mm_rss_counter(&self, idx: u32) -> Result<u32> {
        let base = self.offset_of("mm_struct", &["rss_stat"])?;
        match self.member_type("mm_struct", "rss_stat")? {
            // 6.2+: struct percpu_counter rss_stat[NR_MM_COUNTERS]; `count` is the approximate sum.
            Type::Array(a) => {
                let elem = self.underlying(self.btf.resolve_chained_type(&a)?)?;
                let stride = self.size_of(&elem)?;
                let count = self.offset_of("percpu_counter", &["count"])?;
                Ok(base + idx * stride + count)
            }
            // Older: struct mm_rss_stat { atomic_long_t count[NR_MM_COUNTERS]; }
            Type::Struct(_) => Ok(base + self.offset_of("mm_rss_stat", &["count"])? + idx * 8),
            other => bail!("mm_struct.rss_stat is a {}", other.name()),
        }
    }

    /// `struct css_set` → `subsys[memory_cgrp_id]`.
    fn cset_memcg_css(&self) -> Result<u32> {
        let id = self.enum_value("memory_cgrp_id")?;
        Ok(self.offset_of("css_set", &["subsys"])? + id * 8)
    }

    /// `memory_events_local[event]` inside `struct mem_cgroup`.
    fn memcg_event_local(&self, event: &str) -> Result<u32> {
        let idx = self.enum_value(event)?;
        Ok(self.offset_of("mem_cgroup", &["memory_events_local"])? + idx * 8)
    }

    /// `kernfs_node.__parent` since 6.15, `kernfs_node.parent` before.
    fn kn_parent(&self) -> Result<u32> {
        self.offset_of("kernfs_node", &["__parent"])
            .or_else(|_| self.offset_of("kernfs_node", &["parent"]))
    }

    /// Whether `tp_btf/mark_victim` hands the program the victim's `task_struct`
    /// (kernels since 6.9 and the 5.10.235 / 6.1.130 backports) rather than just its pid.
    pub fn mark_victim_has_task(&self) -> bool {
        let Ok(types) = self.btf.resolve_types_by_name("btf_trace_mark_victim") else {
            return false;
        };
        for t in types {
            let Ok(Type::Ptr(p)) = self.underlying(t) else { continue };
            let Ok(Type::FuncProto(fp)) = self.btf.resolve_chained_type(&p) else {
                continue;
            };
            // (void *__data, struct task_struct *task, uid_t uid)
            let Some(arg) = fp.parameters.get(1) else { return false };
            let Ok(Type::Ptr(tp)) = self.btf.resolve_chained_type(arg) else { return false };
            let Ok(target) = self.btf.resolve_chained_type(&tp) else { return false };
            let name = target.as_btf_type().and_then(|bt| self.btf.resolve_name(bt).ok());
            return name.as_deref() == Some("task_struct");
        }
        false
    }

    /// Resolves every offset the programs use. Missing members are listed, not fatal.
    pub fn resolve(&self) -> Resolved {
        let mut missing = Vec::new();
        let mut get = |name: &'static str, r: Result<u32>| match r {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!("BTF: {name}: {e:#}");
                missing.push(name);
                OFFSET_MISSING
            }
        };
        let memcg_css = self.offset_of("mem_cgroup", &["css"]);
        let offsets = KernelOffsets {
            task_pid: get("task_struct.pid", self.offset_of("task_struct", &["pid"])),
            task_tgid: get("task_struct.tgid", self.offset_of("task_struct", &["tgid"])),
            task_comm: get("task_struct.comm", self.offset_of("task_struct", &["comm"])),
            task_mm: get("task_struct.mm", self.offset_of("task_struct", &["mm"])),
            task_signal: get("task_struct.signal", self.offset_of("task_struct", &["signal"])),
            task_cgroups: get("task_struct.cgroups", self.offset_of("task_struct", &["cgroups"])),
            task_real_cred: get(
                "task_struct.real_cred",
                self.offset_of("task_struct", &["real_cred"]),
            ),
            task_thread_pid: get(
                "task_struct.thread_pid",
                self.offset_of("task_struct", &["thread_pid"]),
            ),
            pid_level: get("pid.level", self.offset_of("pid", &["level"])),
            pid_numbers: get("pid.numbers", self.offset_of("pid", &["numbers"])),
            upid_size: get("sizeof(struct upid)", self.named_struct("upid").map(|s| s.size() as u32)),
            cred_uid: get("cred.uid", self.offset_of("cred", &["uid", "val"])),
            signal_oom_score_adj: get(
                "signal_struct.oom_score_adj",
                self.offset_of("signal_struct", &["oom_score_adj"]),
            ),
            mm_total_vm: get("mm_struct.total_vm", self.offset_of("mm_struct", &["total_vm"])),
            mm_pgtables_bytes: get(
                "mm_struct.pgtables_bytes",
                self.offset_of("mm_struct", &["pgtables_bytes"]),
            ),
            mm_rss_file: get(
                "mm_struct.rss_stat[MM_FILEPAGES]",
                self.enum_value("MM_FILEPAGES").and_then(|i| self.mm_rss_counter(i)),
            ),
            mm_rss_anon: get(
                "mm_struct.rss_stat[MM_ANONPAGES]",
                self.enum_value("MM_ANONPAGES").and_then(|i| self.mm_rss_counter(i)),
            ),
            mm_rss_shmem: get(
                "mm_struct.rss_stat[MM_SHMEMPAGES]",
                self.enum_value("MM_SHMEMPAGES").and_then(|i| self.mm_rss_counter(i)),
            ),
            mm_rss_swap: get(
                "mm_struct.rss_stat[MM_SWAPENTS]",
                self.enum_value("MM_SWAPENTS").and_then(|i| self.mm_rss_counter(i)),
            ),
            cset_memcg_css: get("css_set.subsys[memory_cgrp_id]", self.cset_memcg_css()),
            cset_dfl_cgrp: get("css_set.dfl_cgrp", self.offset_of("css_set", &["dfl_cgrp"])),
            css_cgroup: get(
                "cgroup_subsys_state.cgroup",
                self.offset_of("cgroup_subsys_state", &["cgroup"]),
            ),
            css_parent: get(
                "cgroup_subsys_state.parent",
                self.offset_of("cgroup_subsys_state", &["parent"]),
            ),
            cgroup_kn: get("cgroup.kn", self.offset_of("cgroup", &["kn"])),
            kn_parent: get("kernfs_node.parent", self.kn_parent()),
            kn_name: get("kernfs_node.name", self.offset_of("kernfs_node", &["name"])),
            kn_id: get("kernfs_node.id", self.offset_of("kernfs_node", &["id"])),
            memcg_usage: get(
                "mem_cgroup.memory.usage",
                self.offset_of("mem_cgroup", &["memory", "usage"]),
            ),
            memcg_max: get(
                "mem_cgroup.memory.max",
                self.offset_of("mem_cgroup", &["memory", "max"]),
            ),
            memcg_high: get(
                "mem_cgroup.memory.high",
                self.offset_of("mem_cgroup", &["memory", "high"]),
            ),
            memcg_oom_group: get("mem_cgroup.oom_group", self.offset_of("mem_cgroup", &["oom_group"])),
            // cgroup v2 counts swap alone in `swap`; v1 shares the slot with `memsw`.
            memcg_swap_usage: get(
                "mem_cgroup.swap.usage",
                self.offset_of("mem_cgroup", &["swap", "usage"]),
            ),
            memcg_swap_max: get(
                "mem_cgroup.swap.max",
                self.offset_of("mem_cgroup", &["swap", "max"]),
            ),
            memcg_oom_events_local: get(
                "mem_cgroup.memory_events_local[MEMCG_OOM]",
                self.memcg_event_local("MEMCG_OOM"),
            ),
            memcg_oom_kill_events_local: get(
                "mem_cgroup.memory_events_local[MEMCG_OOM_KILL]",
                self.memcg_event_local("MEMCG_OOM_KILL"),
            ),
            memcg_css: get("mem_cgroup.css", memcg_css),
            oc_memcg: get("oom_control.memcg", self.offset_of("oom_control", &["memcg"])),
            oc_gfp_mask: get("oom_control.gfp_mask", self.offset_of("oom_control", &["gfp_mask"])),
            oc_order: get("oom_control.order", self.offset_of("oom_control", &["order"])),
            oc_totalpages: get(
                "oom_control.totalpages",
                self.offset_of("oom_control", &["totalpages"]),
            ),
            oc_chosen: get("oom_control.chosen", self.offset_of("oom_control", &["chosen"])),
            oc_chosen_points: get(
                "oom_control.chosen_points",
                self.offset_of("oom_control", &["chosen_points"]),
            ),
            oc_constraint: get(
                "oom_control.constraint",
                self.offset_of("oom_control", &["constraint"]),
            ),
        };
        Resolved { offsets, missing }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vmlinux() -> Option<Vec<u8>> {
        std::fs::read(VMLINUX_BTF).ok()
    }

    /// `bytes` opened as the daemon opens a `--btf` file (mapped).
    fn open_bytes(bytes: &[u8]) -> Result<KernelBtf> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "oomtrace-btf-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, bytes).unwrap();
        let k = KernelBtf::open(&path);
        std::fs::remove_file(&path).unwrap();
        k
    }

    #[test]
    fn resolves_this_kernel() {
        let Some(bytes) = vmlinux() else {
            panic!("no {VMLINUX_BTF}: this kernel has no BTF");
        };
        let k = KernelBtf::open(Path::new(VMLINUX_BTF)).unwrap();
        let r = k.resolve();
        // The memfd copy (kernels that cannot map their BTF file) and a plain file resolve
        // the same.
        let copy = KernelBtf::copied(Path::new(VMLINUX_BTF)).unwrap().resolve();
        assert_eq!(copy.offsets, r.offsets);
        assert_eq!(open_bytes(&bytes).unwrap().resolve().offsets, r.offsets);
        assert!(r.missing.iter().all(|m| m.starts_with("oom_control") || m.contains("swap")), "{:?}", r.missing);
        assert_ne!(r.offsets.task_pid, OFFSET_MISSING);
        assert_ne!(r.offsets.mm_rss_anon, OFFSET_MISSING);
        assert_ne!(r.offsets.memcg_usage, OFFSET_MISSING);
        assert!(r.offsets.memcg_max > r.offsets.memcg_usage, "page_counter.max after usage");
        assert!(k.mark_victim_has_task());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(open_bytes(b"").is_err());
        assert!(open_bytes(b"\x9f\xeb\x01\x00garbage").is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Corrupting the real kernel BTF anywhere in its header and first types never
        /// panics, and whatever parses still resolves (or reports missing members).
        #[test]
        fn corrupted_btf_never_panics(
            flips in proptest::collection::vec((0usize..4096, any::<u8>()), 1..16),
            cut in proptest::option::of(0usize..8192),
        ) {
            let Some(mut bytes) = vmlinux() else { return Ok(()) };
            for (at, v) in flips {
                if let Some(b) = bytes.get_mut(at) {
                    *b ^= v;
                }
            }
            if let Some(cut) = cut {
                bytes.truncate(cut);
            }
            if let Ok(k) = open_bytes(&bytes) {
                let _ = k.resolve();
                let _ = k.mark_victim_has_task();
            }
        }
    }
}
