//! Types shared by the eBPF programs and userspace.
//!
//! Everything here is `#[repr(C)]` and plain old data: the kernel side writes these bytes into
//! the ring buffer (or reads them from globals) and userspace reads the very same layout back.
#![no_std]

/// Deepest cgroup ancestry captured per event (the victim's cgroup up to the root).
/// kubelet's deepest layout (QoS slice / pod slice / container scope / nested sub-cgroup)
/// needs six; twelve leaves room for nested runtimes.
pub const MAX_CGROUP_DEPTH: usize = 12;
/// Bytes kept of each cgroup directory name; longer names are truncated and flagged.
pub const CGROUP_NAME_LEN: usize = 128;
pub const TASK_COMM_LEN: usize = 16;
/// Kernel frames kept of the charging task's stack: the OOM killer's own frames come first
/// (about twelve), and the allocation that charged sits below them.
pub const KSTACK_DEPTH: usize = 40;
/// User frames kept of the charging task's stack (without frame pointers only the first one,
/// the faulting or calling instruction, is reliable).
pub const USTACK_DEPTH: usize = 8;

/// A charge that fails can be up to a PMD-sized folio: a memory cgroup whose usage is within
/// this many pages of its limit is at the limit (for the kernel side's warnings and the
/// userspace OOM-domain walk alike).
pub const AT_LIMIT_SLACK_PAGES: u64 = 512;
/// At or above this a page counter means "no limit" (PAGE_COUNTER_MAX and friends).
pub const UNLIMITED_PAGES: u64 = 1 << 50;

/// Sentinel for "the kernel field was not found in BTF": the program skips that read.
pub const OFFSET_MISSING: u32 = u32::MAX;

/// Byte offsets of the kernel struct members the programs read, resolved from the running
/// kernel's BTF by userspace (Rust eBPF has no CO-RE relocations) and installed as a global.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    // struct task_struct
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_comm: u32,
    pub task_mm: u32,
    pub task_signal: u32,
    pub task_cgroups: u32,
    pub task_real_cred: u32,
    pub task_thread_pid: u32,
    // struct pid / struct upid: the task's pid as seen in its own pid namespace
    pub pid_level: u32,
    pub pid_numbers: u32,
    pub upid_size: u32,
    // struct cred
    pub cred_uid: u32,
    // struct signal_struct
    pub signal_oom_score_adj: u32,
    // struct mm_struct: the four rss counters are absolute offsets of the (approximate) counter
    // the kernel itself reports (`get_mm_counter`), whatever the rss_stat representation.
    pub mm_total_vm: u32,
    pub mm_pgtables_bytes: u32,
    pub mm_rss_file: u32,
    pub mm_rss_anon: u32,
    pub mm_rss_shmem: u32,
    pub mm_rss_swap: u32,
    // struct css_set
    pub cset_memcg_css: u32,
    pub cset_dfl_cgrp: u32,
    // struct cgroup_subsys_state
    pub css_cgroup: u32,
    pub css_parent: u32,
    // struct cgroup
    pub cgroup_kn: u32,
    // struct kernfs_node
    pub kn_parent: u32,
    pub kn_name: u32,
    pub kn_id: u32,
    // struct mem_cgroup (relative to its embedded css, which the css_set points at)
    pub memcg_css: u32,
    pub memcg_usage: u32,
    pub memcg_max: u32,
    pub memcg_high: u32,
    /// `bool oom_group` (memory.oom.group).
    pub memcg_oom_group: u32,
    pub memcg_swap_usage: u32,
    pub memcg_swap_max: u32,
    pub memcg_oom_events_local: u32,
    pub memcg_oom_kill_events_local: u32,
    // struct oom_control
    pub oc_memcg: u32,
    pub oc_gfp_mask: u32,
    pub oc_order: u32,
    pub oc_totalpages: u32,
    pub oc_chosen: u32,
    pub oc_chosen_points: u32,
    pub oc_constraint: u32,
}

impl KernelOffsets {
    /// Every offset missing: the programs read nothing they cannot locate.
    pub const MISSING: Self = Self {
        task_pid: OFFSET_MISSING,
        task_tgid: OFFSET_MISSING,
        task_comm: OFFSET_MISSING,
        task_mm: OFFSET_MISSING,
        task_signal: OFFSET_MISSING,
        task_cgroups: OFFSET_MISSING,
        task_real_cred: OFFSET_MISSING,
        task_thread_pid: OFFSET_MISSING,
        pid_level: OFFSET_MISSING,
        pid_numbers: OFFSET_MISSING,
        upid_size: OFFSET_MISSING,
        cred_uid: OFFSET_MISSING,
        signal_oom_score_adj: OFFSET_MISSING,
        mm_total_vm: OFFSET_MISSING,
        mm_pgtables_bytes: OFFSET_MISSING,
        mm_rss_file: OFFSET_MISSING,
        mm_rss_anon: OFFSET_MISSING,
        mm_rss_shmem: OFFSET_MISSING,
        mm_rss_swap: OFFSET_MISSING,
        cset_memcg_css: OFFSET_MISSING,
        cset_dfl_cgrp: OFFSET_MISSING,
        css_cgroup: OFFSET_MISSING,
        css_parent: OFFSET_MISSING,
        cgroup_kn: OFFSET_MISSING,
        kn_parent: OFFSET_MISSING,
        kn_name: OFFSET_MISSING,
        kn_id: OFFSET_MISSING,
        memcg_css: OFFSET_MISSING,
        memcg_usage: OFFSET_MISSING,
        memcg_max: OFFSET_MISSING,
        memcg_high: OFFSET_MISSING,
        memcg_oom_group: OFFSET_MISSING,
        memcg_swap_usage: OFFSET_MISSING,
        memcg_swap_max: OFFSET_MISSING,
        memcg_oom_events_local: OFFSET_MISSING,
        memcg_oom_kill_events_local: OFFSET_MISSING,
        oc_memcg: OFFSET_MISSING,
        oc_gfp_mask: OFFSET_MISSING,
        oc_order: OFFSET_MISSING,
        oc_totalpages: OFFSET_MISSING,
        oc_chosen: OFFSET_MISSING,
        oc_chosen_points: OFFSET_MISSING,
        oc_constraint: OFFSET_MISSING,
    };
}

/// Where the classic `oom:mark_victim` tracepoint keeps its fields, read from its tracefs
/// format file. Only used when the program is attached as a classic tracepoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TracepointLayout {
    pub pid: u32,
    /// `__data_loc char[] comm`: a u32 whose low 16 bits are the offset of the string.
    pub comm_data_loc: u32,
    pub total_vm: u32,
    pub anon_rss: u32,
    pub file_rss: u32,
    pub shmem_rss: u32,
    pub uid: u32,
    pub pgtables: u32,
    pub oom_score_adj: u32,
    pub _pad: u32,
}

impl TracepointLayout {
    pub const MISSING: Self = Self {
        pid: OFFSET_MISSING,
        comm_data_loc: OFFSET_MISSING,
        total_vm: OFFSET_MISSING,
        anon_rss: OFFSET_MISSING,
        file_rss: OFFSET_MISSING,
        shmem_rss: OFFSET_MISSING,
        uid: OFFSET_MISSING,
        pgtables: OFFSET_MISSING,
        oom_score_adj: OFFSET_MISSING,
        _pad: 0,
    };
}

/// First `u32` of every ring buffer record.
pub mod kind {
    /// An [`OomEvent`](super::OomEvent): one victim.
    pub const VICTIM: u32 = 1;
    /// An [`InvocationEnd`](super::InvocationEnd): `oom_kill_process` returned.
    pub const INVOCATION_END: u32 = 2;
    /// A [`PressureEvent`](super::PressureEvent): a memcg reclaiming at its limit.
    pub const PRESSURE: u32 = 3;
}

/// Which fields of an [`OomEvent`] the kernel side filled in (bit set = value is real).
pub mod valid {
    pub const VICTIM_TASK: u32 = 1 << 0;
    pub const VICTIM_COMM: u32 = 1 << 1;
    pub const VICTIM_UID: u32 = 1 << 2;
    pub const OOM_SCORE_ADJ: u32 = 1 << 3;
    pub const TOTAL_VM: u32 = 1 << 4;
    pub const RSS: u32 = 1 << 5;
    pub const PGTABLES: u32 = 1 << 6;
    pub const MEMCG_CHAIN: u32 = 1 << 7;
    pub const DFL_CHAIN: u32 = 1 << 8;
    pub const OOM_CONTEXT: u32 = 1 << 9;
    pub const RSS_SWAP: u32 = 1 << 10;
    /// Values came from the classic tracepoint's record (kB units), not from the task.
    pub const FROM_TRACEPOINT_RECORD: u32 = 1 << 11;
    /// A cgroup chain was cut at MAX_CGROUP_DEPTH.
    pub const CHAIN_TRUNCATED: u32 = 1 << 12;
    pub const NS_PID: u32 = 1 << 13;
    /// `memcg` holds the *trigger's* memcg ancestry (classic tracepoint without the task):
    /// good for the OOM domain, not for the victim's own cgroup.
    pub const MEMCG_CHAIN_OF_TRIGGER: u32 = 1 << 14;
    /// `kstack` holds the charging task's kernel stack (`kstack_len` frames).
    pub const KSTACK: u32 = 1 << 15;
    /// `ustack` holds the charging task's user stack (`ustack_len` frames).
    pub const USTACK: u32 = 1 << 16;
}

/// Settings userspace installs as the global `CONFIG` before load.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// 1: capture the charging task's kernel and user stacks at each victim.
    pub charge_stacks: u32,
    pub _pad: u32,
}

/// How the program that produced the event was attached.
pub mod source {
    pub const TP_BTF: u32 = 1;
    pub const TRACEPOINT: u32 = 2;
}

/// How the OOM context (`struct oom_control`) was captured.
pub mod ctx_source {
    pub const NONE: u32 = 0;
    pub const FENTRY: u32 = 1;
    pub const KPROBE: u32 = 2;
}

/// One level of the victim's memory cgroup ancestry, read from `struct mem_cgroup`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct MemcgLevel {
    /// kernfs id of the cgroup directory (its inode number in cgroupfs).
    pub id: u64,
    pub usage_pages: u64,
    pub max_pages: u64,
    pub swap_usage_pages: u64,
    pub swap_max_pages: u64,
    /// `memory_events_local[MEMCG_OOM]`: OOMs whose limit was hit at this very cgroup.
    pub oom_events_local: u64,
    pub oom_kill_events_local: u64,
    pub high_pages: u64,
    /// memory.oom.group (0/1; u32::MAX when unknown).
    pub oom_group: u32,
    pub _pad: u32,
    pub name: [u8; CGROUP_NAME_LEN],
}

/// One level of the victim's cgroup v2 (default hierarchy) ancestry.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CgroupLevel {
    pub id: u64,
    pub name: [u8; CGROUP_NAME_LEN],
}

/// `struct oom_control` of the OOM invocation that chose the victim (fentry/kprobe only).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct OomContext {
    /// kernfs id of `oc->memcg`'s cgroup; 0 for a global OOM (`oc->memcg == NULL`).
    pub memcg_id: u64,
    pub memcg_usage_pages: u64,
    pub memcg_max_pages: u64,
    pub memcg_swap_max_pages: u64,
    /// Size of the OOM domain in pages. Not the victim's memory.
    pub totalpages: u64,
    pub chosen_points: i64,
    pub gfp_mask: u32,
    pub order: i32,
    pub constraint: u32,
    pub source: u32,
    /// Task that invoked the OOM killer (`current` at `oom_kill_process`).
    pub trigger_pid: u32,
    pub _pad: u32,
    /// Monotonic sequence number of the OOM invocation, to group victims.
    pub seq: u64,
    /// Victims marked so far in this invocation.
    pub victims: u32,
    pub _pad2: u32,
    pub memcg_name: [u8; CGROUP_NAME_LEN],
}

/// One victim, as the kernel saw it when `oom:mark_victim` fired.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct OomEvent {
    /// [`kind::VICTIM`].
    pub kind: u32,
    pub _pad0: u32,
    /// `bpf_ktime_get_boot_ns()` when the tracepoint fired.
    pub boot_ns: u64,
    pub valid: u32,
    pub source: u32,
    pub victim_pid: u32,
    pub victim_tgid: u32,
    pub victim_uid: u32,
    pub oom_score_adj: i32,
    /// The victim's pid inside its own pid namespace (1 = a container's main process).
    pub victim_ns_pid: u32,
    pub _pad: u32,
    /// Pages from the task; kB where FROM_TRACEPOINT_RECORD is set.
    pub total_vm: u64,
    pub rss_anon: u64,
    pub rss_file: u64,
    pub rss_shmem: u64,
    pub rss_swap: u64,
    /// Bytes from the task; kB where FROM_TRACEPOINT_RECORD is set.
    pub pgtables: u64,
    pub victim_comm: [u8; TASK_COMM_LEN],
    pub trigger_pid: u32,
    pub trigger_tgid: u32,
    pub trigger_comm: [u8; TASK_COMM_LEN],
    pub memcg_depth: u32,
    pub dfl_depth: u32,
    /// `memcg[0]` is the victim's own memory cgroup, then its parent, up to the root.
    pub memcg: [MemcgLevel; MAX_CGROUP_DEPTH],
    /// `dfl[0]` is the victim's cgroup v2 cgroup, then its parent, up to the root.
    pub dfl: [CgroupLevel; MAX_CGROUP_DEPTH],
    pub ctx: OomContext,
    /// Frames of `kstack` and `ustack` filled (see valid::KSTACK, valid::USTACK).
    pub kstack_len: u32,
    pub ustack_len: u32,
    /// The charging task's (`current`'s) kernel stack at the kill, innermost first: the
    /// allocation whose charge invoked the OOM killer.
    pub kstack: [u64; KSTACK_DEPTH],
    /// The same task's user stack, innermost first.
    pub ustack: [u64; USTACK_DEPTH],
}

/// `oom_kill_process` returned: every victim of invocation `seq` has been marked.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct InvocationEnd {
    /// [`kind::INVOCATION_END`].
    pub kind: u32,
    pub victims: u32,
    pub seq: u64,
    pub boot_ns: u64,
}

/// A memory cgroup reclaiming at its limit (`memory.max`) or above `memory.high`: the early
/// warning before an OOM kill. Rate-limited per cgroup in the kernel.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PressureEvent {
    /// [`kind::PRESSURE`].
    pub kind: u32,
    /// Index in `memcg` of the cgroup at its limit.
    pub level: u32,
    pub boot_ns: u64,
    /// Pages the reclaim pass freed.
    pub nr_reclaimed: u64,
    /// Reclaim passes of this cgroup suppressed by the rate limit since the last report.
    pub suppressed: u64,
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_comm: [u8; TASK_COMM_LEN],
    pub memcg_depth: u32,
    /// 1 when `level` is above memory.high rather than at memory.max.
    pub over_high: u32,
    /// The charging task's memory cgroup ancestry, `[0]` its own.
    pub memcg: [MemcgLevel; MAX_CGROUP_DEPTH],
}

/// Indexes of the per-CPU counters array `COUNTERS`.
pub mod counter {
    /// Times `mark_victim` fired.
    pub const SEEN: u32 = 0;
    /// Events dropped because the ring buffer was full.
    pub const LOST: u32 = 1;
    /// Kernel reads that failed (the event still went out, with the field unset).
    pub const READ_ERRORS: u32 = 2;
    /// OOM invocations seen by the oom_kill_process hook.
    pub const OOM_INVOCATIONS: u32 = 3;
    /// Pressure events dropped because their ring buffer was full.
    pub const PRESSURE_LOST: u32 = 4;
    /// Invocation-end records dropped because the ring buffer was full (the incident then
    /// closes by its timeout; no kill is lost).
    pub const INVOCATION_END_LOST: u32 = 5;
    pub const COUNT: u32 = 6;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers and byte arrays, no padding holes with invalid values.
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::TracepointLayout {}
    unsafe impl aya::Pod for super::Config {}
}
