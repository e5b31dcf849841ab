//! Kernel side of oomtrace.
//!
//! `oom:mark_victim` fires once for every task the OOM killer kills (group kills and the
//! "already dying" shortcut included), so it is the one hook that sees every kill. Where the
//! kernel lets us, `oom_kill_process` is hooked too, to capture the `struct oom_control` of the
//! OOM invocation (which cgroup's limit was hit, the constraint, the order) that the victims are
//! then attached to; it is held under `oom_lock`, so one slot is enough.
//!
//! Rust eBPF has no CO-RE, so every struct member is read at an offset that userspace resolved
//! from the running kernel's BTF and installed in `OFFSETS`. A missing member reads as "unknown".
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_stack, bpf_ktime_get_boot_ns, bpf_probe_read_kernel,
        bpf_probe_read_kernel_str_bytes,
    },
    macros::{btf_tracepoint, fentry, fexit, kprobe, kretprobe, map, tracepoint},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::{
        BtfTracePointContext, FEntryContext, FExitContext, ProbeContext, RetProbeContext,
        TracePointContext,
    },
    EbpfContext, Global,
};
use aya_log_ebpf::{debug, warn};
use oomtrace_common::{
    counter, ctx_source, kind, source, valid, Config, InvocationEnd, KernelOffsets, MemcgLevel,
    OomContext, OomEvent, PressureEvent, TracepointLayout, AT_LIMIT_SLACK_PAGES, CGROUP_NAME_LEN,
    KSTACK_DEPTH, MAX_CGROUP_DEPTH, OFFSET_MISSING, UNLIMITED_PAGES, USTACK_DEPTH,
};

#[unsafe(no_mangle)]
static OFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets::MISSING);

#[unsafe(no_mangle)]
static TP_LAYOUT: Global<TracepointLayout> = Global::new(TracepointLayout::MISSING);

#[unsafe(no_mangle)]
static CONFIG: Global<Config> = Global::new(Config { charge_stacks: 1, _pad: 0 });

/// `bpf_get_stack` flag for the user stack.
const BPF_F_USER_STACK: u64 = 256;

/// Victim events to userspace. Userspace sets the size at load time.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Early warnings to userspace, on a ring of their own so that a flood of them never takes
/// the room of a kill record. Userspace sets the size at load time.
#[map]
static WARNINGS: RingBuf = RingBuf::with_byte_size(256 << 10, 0);

/// See `oomtrace_common::counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// The OOM invocation in progress (written at `oom_kill_process` entry, closed at its exit).
#[map]
static OOM_CTX: Array<OomContext> = Array::with_max_entries(1, 0);

/// `oc->chosen` of the OOM invocation in progress, for the classic tracepoint which only
/// carries the victim's pid.
#[map]
static OOM_CHOSEN: Array<u64> = Array::with_max_entries(1, 0);

/// Per charging memory cgroup (its css address): when it was last looked at, and how many
/// reclaim passes were suppressed since.
#[map]
static PRESSURE_RATE: LruHashMap<u64, [u64; 2]> = LruHashMap::with_max_entries(4096, 0);

/// At most one pressure event per cgroup per second.
const PRESSURE_INTERVAL_NS: u64 = 1_000_000_000;

#[inline(always)]
fn bump(idx: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(idx) {
        unsafe { *c += 1 };
    }
}

/// Reads a `T` at `base + off`; `None` when the offset is unknown or the read faults.
#[inline(always)]
unsafe fn read<T>(base: u64, off: u32) -> Option<T> {
    if base == 0 || off == OFFSET_MISSING {
        return None;
    }
    match unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) } {
        Ok(v) => Some(v),
        Err(_) => {
            bump(counter::READ_ERRORS);
            None
        }
    }
}

#[inline(always)]
unsafe fn read_ptr(base: u64, off: u32) -> u64 {
    unsafe { read::<u64>(base, off) }.unwrap_or(0)
}

/// Copies the kernfs node's name (a cgroup directory name) into `dst`, NUL-terminated.
#[inline(always)]
unsafe fn read_kn_name(o: &KernelOffsets, kn: u64, dst: &mut [u8; CGROUP_NAME_LEN]) {
    dst[0] = 0;
    let name = unsafe { read_ptr(kn, o.kn_name) };
    if name != 0 && unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, dst) }.is_err() {
        dst[0] = 0;
    }
}

/// Fills the victim fields that come from its `task_struct`.
#[inline(always)]
unsafe fn fill_from_task(ev: &mut OomEvent, task: u64, uid: Option<u32>) {
    let o = OFFSETS.load();
    let mut v = ev.valid;
    if let (Some(pid), Some(tgid)) =
        (unsafe { read::<u32>(task, o.task_pid) }, unsafe { read::<u32>(task, o.task_tgid) })
    {
        ev.victim_pid = pid;
        ev.victim_tgid = tgid;
        v |= valid::VICTIM_TASK;
    }
    // The pid in the task's own namespace: thread_pid->numbers[thread_pid->level].nr
    let tpid = unsafe { read_ptr(task, o.task_thread_pid) };
    if let Some(level) = unsafe { read::<u32>(tpid, o.pid_level) } {
        if o.pid_numbers != OFFSET_MISSING && o.upid_size != OFFSET_MISSING && level < 64 {
            let at = o.pid_numbers as u64 + level as u64 * o.upid_size as u64;
            if let Some(nr) = unsafe { read::<i32>(tpid + at, 0) } {
                ev.victim_ns_pid = nr as u32;
                v |= valid::NS_PID;
            }
        }
    }
    if let Some(comm) = unsafe { read::<[u8; 16]>(task, o.task_comm) } {
        ev.victim_comm = comm;
        v |= valid::VICTIM_COMM;
    }
    let uid = match uid {
        Some(u) => Some(u),
        None => unsafe { read::<u32>(read_ptr(task, o.task_real_cred), o.cred_uid) },
    };
    if let Some(u) = uid {
        ev.victim_uid = u;
        v |= valid::VICTIM_UID;
    }
    if let Some(adj) = unsafe { read::<i16>(read_ptr(task, o.task_signal), o.signal_oom_score_adj) }
    {
        ev.oom_score_adj = adj as i32;
        v |= valid::OOM_SCORE_ADJ;
    }
    let mm = unsafe { read_ptr(task, o.task_mm) };
    if mm != 0 {
        if let Some(t) = unsafe { read::<u64>(mm, o.mm_total_vm) } {
            ev.total_vm = t;
            v |= valid::TOTAL_VM;
        }
        if let Some(p) = unsafe { read::<i64>(mm, o.mm_pgtables_bytes) } {
            ev.pgtables = p.max(0) as u64;
            v |= valid::PGTABLES;
        }
        if let (Some(a), Some(f), Some(s)) = unsafe {
            (
                read::<i64>(mm, o.mm_rss_anon),
                read::<i64>(mm, o.mm_rss_file),
                read::<i64>(mm, o.mm_rss_shmem),
            )
        } {
            // The kernel reports these approximate counters clamped at zero, and so do we.
            ev.rss_anon = a.max(0) as u64;
            ev.rss_file = f.max(0) as u64;
            ev.rss_shmem = s.max(0) as u64;
            v |= valid::RSS;
        }
        if let Some(sw) = unsafe { read::<i64>(mm, o.mm_rss_swap) } {
            ev.rss_swap = sw.max(0) as u64;
            v |= valid::RSS_SWAP;
        }
    }
    ev.valid = v;
    unsafe { fill_cgroups(ev, &o, task) };
}

/// Walks the victim's memory cgroup and cgroup v2 ancestries, reading limits and usage from
/// the kernel's own page counters at the moment of the kill.
#[inline(always)]
unsafe fn fill_cgroups(ev: &mut OomEvent, o: &KernelOffsets, task: u64) {
    let cset = unsafe { read_ptr(task, o.task_cgroups) };
    if cset == 0 {
        return;
    }
    let (depth, truncated) = unsafe { fill_memcg_chain(o, &mut ev.memcg, read_ptr(cset, o.cset_memcg_css)) };
    if depth > 0 {
        ev.memcg_depth = depth;
        ev.valid |= valid::MEMCG_CHAIN;
        if truncated {
            ev.valid |= valid::CHAIN_TRUNCATED;
        }
    }

    let mut kn = unsafe { read_ptr(read_ptr(cset, o.cset_dfl_cgrp), o.cgroup_kn) };
    let mut depth = 0u32;
    for i in 0..MAX_CGROUP_DEPTH {
        if kn == 0 {
            break;
        }
        let lvl = &mut ev.dfl[i];
        lvl.id = unsafe { read::<u64>(kn, o.kn_id) }.unwrap_or(0);
        unsafe { read_kn_name(o, kn, &mut lvl.name) };
        depth = i as u32 + 1;
        kn = unsafe { read_ptr(kn, o.kn_parent) };
    }
    if depth > 0 {
        ev.dfl_depth = depth;
        ev.valid |= valid::DFL_CHAIN;
        if kn != 0 {
            ev.valid |= valid::CHAIN_TRUNCATED;
        }
    }
}

/// Reads a memory cgroup ancestry from `css` up: ids, names and page counters at this moment.
/// Returns the depth and whether the chain was cut at MAX_CGROUP_DEPTH.
#[inline(always)]
unsafe fn fill_memcg_chain(
    o: &KernelOffsets,
    levels: &mut [MemcgLevel; MAX_CGROUP_DEPTH],
    mut css: u64,
) -> (u32, bool) {
    let mut depth = 0u32;
    for (i, lvl) in levels.iter_mut().enumerate() {
        if css == 0 {
            break;
        }
        let memcg = css - o.memcg_css as u64;
        let kn = unsafe { read_ptr(read_ptr(css, o.css_cgroup), o.cgroup_kn) };
        lvl.id = unsafe { read::<u64>(kn, o.kn_id) }.unwrap_or(0);
        unsafe { read_kn_name(o, kn, &mut lvl.name) };
        let counter = |off: u32| unsafe { read::<u64>(memcg, off) }.unwrap_or(u64::MAX);
        lvl.usage_pages = counter(o.memcg_usage);
        lvl.max_pages = counter(o.memcg_max);
        lvl.high_pages = counter(o.memcg_high);
        lvl.swap_usage_pages = counter(o.memcg_swap_usage);
        lvl.swap_max_pages = counter(o.memcg_swap_max);
        lvl.oom_events_local = counter(o.memcg_oom_events_local);
        lvl.oom_kill_events_local = counter(o.memcg_oom_kill_events_local);
        lvl.oom_group = unsafe { read::<u8>(memcg, o.memcg_oom_group) }.map_or(u32::MAX, u32::from);
        lvl._pad = 0;
        depth = i as u32 + 1;
        css = unsafe { read_ptr(css, o.css_parent) };
    }
    (depth, css != 0)
}

/// The charging task's stacks: `current` at `mark_victim` is the task whose charge invoked
/// the OOM killer, so its kernel stack below the OOM killer's frames is the allocation.
/// Written straight into the reserved record; a failed capture leaves the field unset.
#[inline(always)]
fn capture_stacks<C: EbpfContext>(ctx: &C, ev: &mut OomEvent) {
    ev.kstack_len = 0;
    ev.ustack_len = 0;
    if CONFIG.load().charge_stacks == 0 {
        return;
    }
    let size = (KSTACK_DEPTH * 8) as u32;
    let n = unsafe { bpf_get_stack(ctx.as_ptr(), ev.kstack.as_mut_ptr().cast(), size, 0) };
    if n > 0 {
        ev.kstack_len = (n as u32 / 8).min(KSTACK_DEPTH as u32);
        ev.valid |= valid::KSTACK;
    } else {
        bump(counter::READ_ERRORS);
    }
    let size = (USTACK_DEPTH * 8) as u32;
    let n = unsafe {
        bpf_get_stack(ctx.as_ptr(), ev.ustack.as_mut_ptr().cast(), size, BPF_F_USER_STACK)
    };
    // A kernel thread has no user stack: that is no error.
    if n > 0 {
        ev.ustack_len = (n as u32 / 8).min(USTACK_DEPTH as u32);
        ev.valid |= valid::USTACK;
    }
}

/// Reserves an event and fills what every strategy knows: time, trigger, OOM context.
#[inline(always)]
fn begin_event(src: u32) -> Option<aya_ebpf::maps::ring_buf::RingBufEntry<OomEvent>> {
    bump(counter::SEEN);
    let Some(mut entry) = EVENTS.reserve::<OomEvent>(0) else {
        bump(counter::LOST);
        return None;
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.kind = kind::VICTIM;
    ev._pad0 = 0;
    ev.boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    ev.valid = 0;
    ev.source = src;
    ev.victim_pid = 0;
    ev.victim_tgid = 0;
    ev.victim_uid = 0;
    ev.oom_score_adj = 0;
    ev.victim_ns_pid = 0;
    ev._pad = 0;
    ev.total_vm = 0;
    ev.rss_anon = 0;
    ev.rss_file = 0;
    ev.rss_shmem = 0;
    ev.rss_swap = 0;
    ev.pgtables = 0;
    ev.victim_comm = [0; 16];
    ev.memcg_depth = 0;
    ev.dfl_depth = 0;
    let pid_tgid = bpf_get_current_pid_tgid();
    ev.trigger_pid = pid_tgid as u32;
    ev.trigger_tgid = (pid_tgid >> 32) as u32;
    ev.trigger_comm = bpf_get_current_comm().unwrap_or([0; 16]);
    ev.ctx.source = ctx_source::NONE;
    if let Some(ctx) = OOM_CTX.get_ptr_mut(0) {
        let ctx = unsafe { &mut *ctx };
        // Only the invocation this very task is running belongs to this victim.
        if ctx.source != ctx_source::NONE && ctx.trigger_pid == ev.trigger_pid {
            ctx.victims += 1;
            ev.ctx = *ctx;
            ev.valid |= valid::OOM_CONTEXT;
        }
    }
    Some(entry)
}

/// `oom:mark_victim` through BTF: the tracepoint hands us the victim's `task_struct`.
#[btf_tracepoint(function = "mark_victim")]
pub fn mark_victim_btf(ctx: BtfTracePointContext) -> i32 {
    let task: u64 = ctx.arg(0);
    let uid: u32 = ctx.arg(1);
    let Some(mut entry) = begin_event(source::TP_BTF) else {
        warn!(&ctx, "ring buffer full: OOM victim event dropped");
        return 0;
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    capture_stacks(&ctx, ev);
    unsafe { fill_from_task(ev, task, Some(uid)) };
    debug!(&ctx, "mark_victim (tp_btf) pid={}", ev.victim_pid);
    entry.submit(0);
    0
}

/// Classic `oom:mark_victim`: the record carries the victim's pid (and on newer kernels its
/// memory figures); the task itself is only known when `oom_kill_process` was hooked.
#[tracepoint(category = "oom", name = "mark_victim")]
pub fn mark_victim_tp(ctx: TracePointContext) -> i32 {
    let l = TP_LAYOUT.load();
    let Some(mut entry) = begin_event(source::TRACEPOINT) else {
        warn!(&ctx, "ring buffer full: OOM victim event dropped");
        return 0;
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    capture_stacks(&ctx, ev);
    let rec = ctx.as_ptr() as u64;
    if let Some(pid) = unsafe { read::<i32>(rec, l.pid) } {
        ev.victim_pid = pid as u32;
        ev.valid |= valid::VICTIM_TASK;
    }
    if let (Some(t), Some(a), Some(f), Some(s)) = unsafe {
        (
            read::<u64>(rec, l.total_vm),
            read::<u64>(rec, l.anon_rss),
            read::<u64>(rec, l.file_rss),
            read::<u64>(rec, l.shmem_rss),
        )
    } {
        ev.total_vm = t;
        ev.rss_anon = a;
        ev.rss_file = f;
        ev.rss_shmem = s;
        ev.valid |= valid::TOTAL_VM | valid::RSS | valid::FROM_TRACEPOINT_RECORD;
    }
    if let Some(p) = unsafe { read::<u64>(rec, l.pgtables) } {
        ev.pgtables = p;
        ev.valid |= valid::PGTABLES;
    }
    if let Some(u) = unsafe { read::<u32>(rec, l.uid) } {
        ev.victim_uid = u;
        ev.valid |= valid::VICTIM_UID;
    }
    if let Some(adj) = unsafe { read::<i16>(rec, l.oom_score_adj) } {
        ev.oom_score_adj = adj as i32;
        ev.valid |= valid::OOM_SCORE_ADJ;
    }
    if let Some(loc) = unsafe { read::<u32>(rec, l.comm_data_loc) } {
        let mut comm = [0u8; 16];
        let at = rec + (loc & 0xffff) as u64;
        if unsafe { bpf_probe_read_kernel_str_bytes(at as *const u8, &mut comm) }.is_ok() {
            ev.victim_comm = comm;
            ev.valid |= valid::VICTIM_COMM;
        }
    }
    // The chosen task of the current OOM invocation gives us the cgroups; it is the victim
    // unless this is one of a group kill's other members.
    let chosen = OOM_CHOSEN.get(0).copied().unwrap_or(0);
    let o = OFFSETS.load();
    if ev.valid & valid::OOM_CONTEXT != 0
        && chosen != 0
        && unsafe { read::<u32>(chosen, o.task_pid) } == Some(ev.victim_pid)
    {
        if ev.valid & valid::RSS != 0 {
            unsafe { fill_cgroups(ev, &o, chosen) };
        } else {
            unsafe { fill_from_task(ev, chosen, None) };
        }
    } else {
        // The memcg being charged is the trigger's (or an ancestor's): its ancestry holds the
        // OOM domain, read in the kernel at the kill.
        let cset = unsafe { read_ptr(bpf_get_current_task(), o.task_cgroups) };
        let (depth, _) = unsafe { fill_memcg_chain(&o, &mut ev.memcg, read_ptr(cset, o.cset_memcg_css)) };
        if depth > 0 {
            ev.memcg_depth = depth;
            ev.valid |= valid::MEMCG_CHAIN_OF_TRIGGER;
        }
    }
    debug!(&ctx, "mark_victim (tracepoint) pid={}", ev.victim_pid);
    entry.submit(0);
    0
}

/// Opens the OOM invocation: records `struct oom_control` and the memcg whose limit was hit.
#[inline(always)]
fn open_oom_ctx(oc: u64, src: u32) {
    bump(counter::OOM_INVOCATIONS);
    let Some(ctx) = OOM_CTX.get_ptr_mut(0) else {
        return;
    };
    let ctx = unsafe { &mut *ctx };
    let o = OFFSETS.load();
    ctx.seq += 1;
    ctx.victims = 0;
    ctx._pad2 = 0;
    ctx.trigger_pid = bpf_get_current_pid_tgid() as u32;
    ctx.gfp_mask = unsafe { read::<u32>(oc, o.oc_gfp_mask) }.unwrap_or(0);
    ctx.order = unsafe { read::<i32>(oc, o.oc_order) }.unwrap_or(-1);
    ctx.constraint = unsafe { read::<u32>(oc, o.oc_constraint) }.unwrap_or(u32::MAX);
    ctx.totalpages = unsafe { read::<u64>(oc, o.oc_totalpages) }.unwrap_or(0);
    ctx.chosen_points = unsafe { read::<i64>(oc, o.oc_chosen_points) }.unwrap_or(i64::MIN);
    let memcg = unsafe { read_ptr(oc, o.oc_memcg) };
    ctx.memcg_id = 0;
    ctx.memcg_name[0] = 0;
    ctx.memcg_usage_pages = u64::MAX;
    ctx.memcg_max_pages = u64::MAX;
    ctx.memcg_swap_max_pages = u64::MAX;
    if memcg != 0 {
        let css = memcg + o.memcg_css as u64;
        let kn = unsafe { read_ptr(read_ptr(css, o.css_cgroup), o.cgroup_kn) };
        ctx.memcg_id = unsafe { read::<u64>(kn, o.kn_id) }.unwrap_or(0);
        unsafe { read_kn_name(&o, kn, &mut ctx.memcg_name) };
        ctx.memcg_usage_pages = unsafe { read::<u64>(memcg, o.memcg_usage) }.unwrap_or(u64::MAX);
        ctx.memcg_max_pages = unsafe { read::<u64>(memcg, o.memcg_max) }.unwrap_or(u64::MAX);
        ctx.memcg_swap_max_pages =
            unsafe { read::<u64>(memcg, o.memcg_swap_max) }.unwrap_or(u64::MAX);
    }
    if let Some(chosen) = OOM_CHOSEN.get_ptr_mut(0) {
        unsafe { *chosen = read_ptr(oc, o.oc_chosen) };
    }
    ctx.source = src;
}

/// Closes the OOM invocation and tells userspace how many victims it marked, so the victims
/// of one group kill are reported as one incident without guessing.
#[inline(always)]
fn close_oom_ctx() {
    if let Some(ctx) = OOM_CTX.get_ptr_mut(0) {
        let ctx = unsafe { &mut *ctx };
        if ctx.source != ctx_source::NONE {
            let end = InvocationEnd {
                kind: kind::INVOCATION_END,
                victims: ctx.victims,
                seq: ctx.seq,
                boot_ns: unsafe { bpf_ktime_get_boot_ns() },
            };
            if EVENTS.output::<InvocationEnd>(&end, 0).is_err() {
                bump(counter::INVOCATION_END_LOST);
            }
        }
        ctx.source = ctx_source::NONE;
    }
    if let Some(chosen) = OOM_CHOSEN.get_ptr_mut(0) {
        unsafe { *chosen = 0 };
    }
}

#[fentry(function = "oom_kill_process")]
pub fn oom_kill_process_fentry(ctx: FEntryContext) -> i32 {
    open_oom_ctx(ctx.arg(0), ctx_source::FENTRY);
    0
}

#[fexit(function = "oom_kill_process")]
pub fn oom_kill_process_fexit(_ctx: FExitContext) -> i32 {
    close_oom_ctx();
    0
}

#[kprobe]
pub fn oom_kill_process_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(oc) = ctx.arg::<u64>(0) {
        open_oom_ctx(oc, ctx_source::KPROBE);
    }
    0
}

#[kretprobe]
pub fn oom_kill_process_kretprobe(_ctx: RetProbeContext) -> u32 {
    close_oom_ctx();
    0
}

/// Early warning: a memory cgroup's direct reclaim pass ended (the charge slow path; the fast
/// path is never hooked). Reported when the charging task's cgroup, or an ancestor, is at its
/// `memory.max` or above `memory.high`, at most once a second per cgroup.
#[btf_tracepoint(function = "mm_vmscan_memcg_reclaim_end")]
pub fn memcg_reclaim_end(ctx: BtfTracePointContext) -> i32 {
    let nr_reclaimed: u64 = ctx.arg(0);
    let o = OFFSETS.load();
    let task = unsafe { bpf_get_current_task() };
    let cset = unsafe { read_ptr(task, o.task_cgroups) };
    if cset == 0 {
        return 0;
    }
    // Rate limit first, keyed by the charging task's memory cgroup, so that the passes of a
    // cgroup that already warned this second cost a map lookup and nothing more.
    let css = unsafe { read_ptr(cset, o.cset_memcg_css) };
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let suppressed = match PRESSURE_RATE.get_ptr_mut(&css) {
        Some(state) => {
            let state = unsafe { &mut *state };
            if now.wrapping_sub(state[0]) < PRESSURE_INTERVAL_NS {
                state[1] += 1;
                return 0;
            }
            let s = state[1];
            *state = [now, 0];
            s
        }
        None => {
            let _ = PRESSURE_RATE.insert(&css, &[now, 0], 0);
            0
        }
    };
    let Some(mut entry) = WARNINGS.reserve::<PressureEvent>(0) else {
        bump(counter::PRESSURE_LOST);
        return 0;
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    let (depth, _) = unsafe { fill_memcg_chain(&o, &mut ev.memcg, css) };
    // The deepest cgroup (not the root) at its limit, else the deepest above memory.high.
    let mut at_max: Option<usize> = None;
    let mut over_high: Option<usize> = None;
    for i in 0..MAX_CGROUP_DEPTH {
        if i + 1 >= depth as usize {
            break;
        }
        let l = &ev.memcg[i];
        let finite = |p: u64| p < UNLIMITED_PAGES;
        // Usage is read after the pass: add back what it freed to see where the charge stood.
        let before = l.usage_pages.saturating_add(nr_reclaimed).saturating_add(AT_LIMIT_SLACK_PAGES);
        if at_max.is_none() && finite(l.max_pages) && before >= l.max_pages {
            at_max = Some(i);
        }
        if over_high.is_none() && finite(l.high_pages) && l.usage_pages.saturating_add(nr_reclaimed) > l.high_pages {
            over_high = Some(i);
        }
    }
    let at = at_max.map(|i| (i, 0)).or(over_high.map(|i| (i, 1)));
    let Some((level, over_high)) = at else {
        // Not at a limit (proactive reclaim): nothing to warn about this second either.
        entry.discard(0);
        return 0;
    };
    ev.kind = kind::PRESSURE;
    ev.level = level as u32;
    ev.boot_ns = now;
    ev.nr_reclaimed = nr_reclaimed;
    ev.suppressed = suppressed;
    let pid_tgid = bpf_get_current_pid_tgid();
    ev.task_pid = pid_tgid as u32;
    ev.task_tgid = (pid_tgid >> 32) as u32;
    ev.task_comm = bpf_get_current_comm().unwrap_or([0; 16]);
    ev.memcg_depth = depth;
    ev.over_high = over_high;
    entry.submit(0);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
