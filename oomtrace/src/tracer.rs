//! Loads the eBPF programs, picks the hooks this kernel offers, and streams victim records.
//!
//! Victims: `tp_btf/mark_victim` (needs no tracefs and hands us the task) where the kernel's
//! tracepoint carries the task, else the classic `oom:mark_victim` tracepoint. OOM context:
//! fentry/fexit on `oom_kill_process`, else kprobe/kretprobe, else none (the victim's memcg
//! ancestry then tells which limit was hit). Every choice is probed at run time, never guessed
//! from the kernel version, and a program that fails to attach leaves nothing behind.
use crate::btf_offsets::{KernelBtf, VMLINUX_BTF};
use crate::record::{record_from_bytes, Record};
use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, FEntry, FExit, KProbe, TracePoint},
    Btf, Ebpf, EbpfLoader,
};
use oomtrace_common::{counter, TracepointLayout};
use tokio::io::unix::AsyncFd;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VictimHook {
    /// tp_btf where the tracepoint carries the task, else the classic tracepoint.
    Auto,
    #[value(name = "tp_btf")]
    TpBtf,
    Tracepoint,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ContextHook {
    /// fentry, else kprobe, else none.
    Auto,
    Fentry,
    Kprobe,
    None,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub victim_hook: VictimHook,
    pub context_hook: ContextHook,
    /// Ring buffer size in bytes (a power of two, at least a page).
    pub ring_buffer_bytes: u32,
    /// Kernel BTF to resolve offsets and attach by (the running kernel's by default).
    pub btf: std::path::PathBuf,
    /// Also hook the memcg reclaim slow path for early warnings.
    pub warnings: bool,
    /// Capture the charging task's stacks at each victim (`oom.charge`).
    pub charge_stacks: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            victim_hook: VictimHook::Auto,
            context_hook: ContextHook::Auto,
            ring_buffer_bytes: 4 << 20,
            btf: VMLINUX_BTF.into(),
            warnings: false,
            charge_stacks: true,
        }
    }
}

/// Counters kept by the programs, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub seen: u64,
    pub lost: u64,
    pub read_errors: u64,
    pub oom_invocations: u64,
    pub pressure_lost: u64,
    pub invocation_end_lost: u64,
}

/// The programs' per-CPU counters, read on their own schedule (not the ring reader's).
pub struct KernelCounters(PerCpuArray<MapData, u64>);

impl KernelCounters {
    pub fn read(&self) -> Result<Counters> {
        let sum = |i: u32| -> Result<u64> { Ok(self.0.get(&i, 0)?.iter().copied().sum()) };
        Ok(Counters {
            seen: sum(counter::SEEN)?,
            lost: sum(counter::LOST)?,
            read_errors: sum(counter::READ_ERRORS)?,
            oom_invocations: sum(counter::OOM_INVOCATIONS)?,
            pressure_lost: sum(counter::PRESSURE_LOST)?,
            invocation_end_lost: sum(counter::INVOCATION_END_LOST)?,
        })
    }
}

pub struct Tracer {
    ring: AsyncFd<RingBuf<MapData>>,
    /// Early warnings, apart from the kills so that a flood of them never costs a kill.
    warnings: AsyncFd<RingBuf<MapData>>,
    /// Human-readable description of the hooks in use.
    pub strategy: String,
    /// The charging task's stacks are captured at each victim.
    pub charge_stacks: bool,
    /// Records of unknown kind or too short to decode (a program/daemon mismatch; counted,
    /// never silent).
    pub malformed: u64,
    // Keeps the programs loaded and attached; dropping the tracer detaches everything.
    ebpf: Option<Ebpf>,
}

/// Size of the warnings' ring: they are rate-limited per cgroup, so this holds plenty.
const WARNINGS_RING_BYTES: u32 = 256 << 10;

static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/oomtrace"));

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Fails with the names of the missing capabilities, before anything is loaded.
pub fn check_privileges() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| anyhow!("cannot read CapEff from /proc/self/status"))?;
    let has = |c: u32| eff & (1u64 << c) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    if !missing.is_empty() {
        bail!(
            "missing capabilities: {} (run as root, or grant CAP_BPF and CAP_PERFMON)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK. Returns why raising it failed, to
/// explain a later EPERM (newer kernels do not need it, so the failure alone is no error).
fn raise_memlock() -> Option<String> {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid pointer to a rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        let e = std::io::Error::last_os_error();
        tracing::debug!("could not raise RLIMIT_MEMLOCK: {e}");
        return Some(format!(
            "raising RLIMIT_MEMLOCK failed ({e}): kernels before 5.11 need it raised (CAP_SYS_RESOURCE) to load BPF maps"
        ));
    }
    None
}

/// Whether `e` is the kernel (or a seccomp filter) refusing a syscall with `errno`.
fn is_errno(e: &anyhow::Error, errno: i32) -> bool {
    let text = format!("(os error {errno})");
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| io.raw_os_error() == Some(errno))
            || c.to_string().ends_with(&text)
    })
}

fn is_eperm(e: &anyhow::Error) -> bool {
    is_errno(e, libc::EPERM)
}

/// Why perf_event_open() (the classic tracepoint) answered EACCES with CAP_PERFMON effective:
/// `kernel.perf_event_paranoid` 3 is a distribution patch (Debian, Ubuntu), and its older
/// versions (Debian's 5.10) admit CAP_SYS_ADMIN only.
fn eacces_hint() -> Option<String> {
    let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid").ok()?;
    let level: i32 = paranoid.trim().parse().ok()?;
    (level > 2).then(|| {
        format!(
            "kernel.perf_event_paranoid is {level}: this kernel's perf restriction (a distribution \
             patch) admits only CAP_SYS_ADMIN, not CAP_PERFMON, to the classic tracepoint; set \
             kernel.perf_event_paranoid=2 on the node (deploy/README.md)"
        )
    })
}

/// `(major, minor)` of the running kernel.
fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release.trim().split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Why bpf() answered EPERM after the capability check passed: the memlock rlimit on kernels
/// before 5.11 (when it could not be raised), else a seccomp profile that lets bpf() and
/// perf_event_open() through only with CAP_SYS_ADMIN, as older container runtimes' defaults do.
fn eperm_hint(memlock: Option<String>) -> String {
    match (memlock, kernel_version()) {
        (Some(hint), Some(v)) if v < (5, 11) => hint,
        (Some(hint), None) => hint,
        _ => "bpf() was refused although CAP_BPF and CAP_PERFMON are effective: a seccomp profile \
              blocks it, as the default ones of containerd before 1.6.9 and of CRI-O/podman with \
              containers-common before 0.60 do without CAP_SYS_ADMIN; upgrade the runtime or use a \
              Localhost seccomp profile that allows bpf and perf_event_open (deploy/README.md)"
            .into(),
    }
}

impl Tracer {
    pub fn start(opts: &Options) -> Result<(Self, KernelCounters)> {
        check_privileges()?;
        let memlock = raise_memlock();
        if !opts.ring_buffer_bytes.is_power_of_two() || opts.ring_buffer_bytes < 4096 {
            bail!(
                "ring buffer size must be a power of two of at least 4096 bytes, got {}",
                opts.ring_buffer_bytes
            );
        }
        // Two BTF parsers (btf-rs for member offsets, aya for loading) each hold a parse of the
        // multi-megabyte kernel BTF: take what the first one answers and free it before the
        // second parses, so start-up peaks at one parse, not two.
        let kbtf = KernelBtf::open(&opts.btf)?;
        let resolved = kbtf.resolve();
        let mark_victim_has_task = kbtf.mark_victim_has_task();
        drop(kbtf);
        if !resolved.missing.is_empty() {
            tracing::warn!(
                "this kernel lacks {} (those fields will be null): {}",
                resolved.missing.len(),
                resolved.missing.join(", ")
            );
        }

        let use_btf = match opts.victim_hook {
            VictimHook::TpBtf => true,
            VictimHook::Tracepoint => false,
            VictimHook::Auto => mark_victim_has_task,
        };
        let btf = Btf::parse_file(&opts.btf, aya::Endianness::default())
            .with_context(|| format!("parsing kernel BTF {}", opts.btf.display()))?;
        let first = if use_btf { VictimHook::TpBtf } else { VictimHook::Tracepoint };
        let loaded = match Self::load(opts, &btf, &resolved.offsets, first) {
            Ok(t) => Ok(t),
            // Refused bpf() fails every hook alike: falling back would only hide why.
            Err(e) if is_eperm(&e) => Err(e),
            Err(e) if opts.victim_hook == VictimHook::Auto && first == VictimHook::TpBtf => {
                tracing::warn!(
                    "tp_btf/mark_victim unavailable ({e:#}); using the classic tracepoint"
                );
                Self::load(opts, &btf, &resolved.offsets, VictimHook::Tracepoint)
            }
            Err(e) => Err(e),
        };
        drop(btf);
        crate::heap::release_freed();
        match loaded {
            Err(e) if is_eperm(&e) => Err(e.context(eperm_hint(memlock))),
            Err(e) if is_errno(&e, libc::EACCES) => match eacces_hint() {
                Some(hint) => Err(e.context(hint)),
                None => Err(e),
            },
            r => r,
        }
    }

    fn load(
        opts: &Options,
        btf: &Btf,
        offsets: &oomtrace_common::KernelOffsets,
        victim: VictimHook,
    ) -> Result<(Self, KernelCounters)> {
        let layout = match victim {
            VictimHook::Tracepoint => {
                crate::tracefs::mark_victim_layout(&crate::tracefs::ensure_mounted()?)?
            }
            _ => TracepointLayout::MISSING,
        };
        let mut ebpf = EbpfLoader::new()
            .btf(Some(btf))
            .override_global("OFFSETS", offsets, true)
            .override_global("TP_LAYOUT", &layout, true)
            .override_global(
                "CONFIG",
                &oomtrace_common::Config { charge_stacks: opts.charge_stacks.into(), _pad: 0 },
                true,
            )
            .map_max_entries("EVENTS", opts.ring_buffer_bytes)
            .map_max_entries("WARNINGS", WARNINGS_RING_BYTES)
            .load(PROGRAMS)
            .context("loading the eBPF object")?;
        if let Err(e) = aya_log::EbpfLogger::init(&mut ebpf).map(spawn_logger) {
            tracing::debug!("eBPF-side logging unavailable: {e}");
        }

        let mut parts = Vec::new();
        match victim {
            VictimHook::Tracepoint => {
                let p: &mut TracePoint = program(&mut ebpf, "mark_victim_tp")?;
                p.load().map_err(verifier("mark_victim_tp"))?;
                p.attach("oom", "mark_victim")
                    .context("attaching tracepoint oom:mark_victim")?;
                parts.push("tracepoint mark_victim");
            }
            _ => {
                let p: &mut BtfTracePoint = program(&mut ebpf, "mark_victim_btf")?;
                p.load("mark_victim", btf)
                    .map_err(verifier("mark_victim_btf"))?;
                p.attach().context("attaching tp_btf/mark_victim")?;
                parts.push("tp_btf mark_victim");
            }
        }
        parts.push(attach_context(&mut ebpf, btf, opts.context_hook)?);
        if opts.warnings {
            match attach_pressure(&mut ebpf, btf) {
                Ok(()) => parts.push("warnings: tp_btf mm_vmscan_memcg_reclaim_end"),
                Err(e) => tracing::warn!("early warnings unavailable on this kernel: {e:#}"),
            }
        }

        let ring = RingBuf::try_from(ebpf.take_map("EVENTS").context("EVENTS map")?)?;
        let warnings = RingBuf::try_from(ebpf.take_map("WARNINGS").context("WARNINGS map")?)?;
        let counters = PerCpuArray::try_from(ebpf.take_map("COUNTERS").context("COUNTERS map")?)?;
        let tracer = Self {
            // SAFETY: each ring buffer owns its fd for as long as its AsyncFd owns the ring.
            ring: unsafe { AsyncFd::register(ring)? },
            warnings: unsafe { AsyncFd::register(warnings)? },
            strategy: parts.join(" + "),
            charge_stacks: opts.charge_stacks,
            malformed: 0,
            ebpf: Some(ebpf),
        };
        Ok((tracer, KernelCounters(counters)))
    }

    /// Waits for records on either ring and appends every one available, the warnings' first.
    /// Reclaim at a limit warns before that limit's kill is recorded, so a wake-up for the
    /// kill finds the warning already in its ring: taken first, it reaches the sinks first.
    pub async fn next_batch(&mut self, out: &mut Vec<Record>) -> Result<()> {
        // Readiness is cleared before the rings are read: a record that lands after the read
        // sets it again, so none waits for the next wake-up.
        tokio::select! {
            g = self.warnings.readable_mut() => g?.clear_ready(),
            g = self.ring.readable_mut() => g?.clear_ready(),
        }
        self.drain_now(out);
        Ok(())
    }

    /// Appends every record in the rings now, without waiting, the warnings' first.
    pub fn drain_now(&mut self, out: &mut Vec<Record>) {
        self.malformed += drain(self.warnings.get_mut(), out) + drain(self.ring.get_mut(), out);
    }

    /// Detaches the programs: nothing more is counted or written to the rings, so what they
    /// hold now is the last of it.
    pub fn detach(&mut self) {
        self.ebpf.take();
    }
}

/// Moves every available record to `out`; returns how many were malformed.
fn drain(rb: &mut RingBuf<MapData>, out: &mut Vec<Record>) -> u64 {
    let mut malformed = 0;
    while let Some(item) = rb.next() {
        match record_from_bytes(&item) {
            Some(ev) => out.push(ev),
            None => malformed += 1,
        }
    }
    malformed
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the object"))?;
    Ok(p.try_into()?)
}

/// Keeps the verifier's log in the error: it is the only way to know why a program was refused.
fn verifier(name: &'static str) -> impl Fn(aya::programs::ProgramError) -> anyhow::Error {
    move |e| anyhow!("the kernel refused program {name}: {e}")
}

/// Hooks `oom_kill_process` by the first mechanism that works (or the one forced).
fn attach_context(ebpf: &mut Ebpf, btf: &Btf, hook: ContextHook) -> Result<&'static str> {
    let order: &[ContextHook] = match hook {
        ContextHook::Auto => &[ContextHook::Fentry, ContextHook::Kprobe],
        ContextHook::None => return Ok("memcg walk (no oom_kill_process hook)"),
        ContextHook::Fentry => &[ContextHook::Fentry],
        ContextHook::Kprobe => &[ContextHook::Kprobe],
    };
    let mut errors = Vec::new();
    for h in order {
        let r = match h {
            ContextHook::Fentry => try_fentry(ebpf, btf).map(|_| "fentry oom_kill_process"),
            _ => try_kprobe(ebpf).map(|_| "kprobe oom_kill_process"),
        };
        match r {
            Ok(desc) => return Ok(desc),
            Err(e) => {
                tracing::debug!("{h:?} on oom_kill_process unavailable: {e:#}");
                errors.push(format!("{h:?}: {e:#}"));
            }
        }
    }
    if hook == ContextHook::Auto {
        tracing::info!(
            "no fentry or kprobe on oom_kill_process on this kernel; the OOM cgroup comes from the victim's memcg ancestry"
        );
        return Ok("memcg walk (no oom_kill_process hook)");
    }
    bail!("cannot hook oom_kill_process: {}", errors.join("; "))
}

fn try_fentry(ebpf: &mut Ebpf, btf: &Btf) -> Result<()> {
    let r = (|| -> Result<()> {
        let p: &mut FEntry = program(ebpf, "oom_kill_process_fentry")?;
        p.load("oom_kill_process", btf)
            .map_err(verifier("oom_kill_process_fentry"))?;
        p.attach()?;
        let p: &mut FExit = program(ebpf, "oom_kill_process_fexit")?;
        p.load("oom_kill_process", btf)
            .map_err(verifier("oom_kill_process_fexit"))?;
        p.attach()?;
        Ok(())
    })();
    if r.is_err() {
        unload(ebpf, &["oom_kill_process_fentry", "oom_kill_process_fexit"]);
    }
    r
}

fn try_kprobe(ebpf: &mut Ebpf) -> Result<()> {
    let r = (|| -> Result<()> {
        for name in ["oom_kill_process_kprobe", "oom_kill_process_kretprobe"] {
            let p: &mut KProbe = program(ebpf, name)?;
            p.load().map_err(verifier("oom_kill_process kprobe"))?;
            p.attach("oom_kill_process", 0)?;
        }
        Ok(())
    })();
    if r.is_err() {
        unload(
            ebpf,
            &["oom_kill_process_kprobe", "oom_kill_process_kretprobe"],
        );
    }
    r
}

/// The reclaim slow path of memory cgroups (never the charge fast path).
fn attach_pressure(ebpf: &mut Ebpf, btf: &Btf) -> Result<()> {
    let p: &mut BtfTracePoint = program(ebpf, "memcg_reclaim_end")?;
    p.load("mm_vmscan_memcg_reclaim_end", btf)
        .map_err(verifier("memcg_reclaim_end"))?;
    p.attach()?;
    Ok(())
}

/// Leaves nothing behind of a hook that failed half-way (loaded, or one of two attached).
fn unload(ebpf: &mut Ebpf, names: &[&str]) {
    use aya::programs::Program;
    for name in names {
        let r = match ebpf.program_mut(name) {
            Some(Program::FEntry(p)) => p.unload(),
            Some(Program::FExit(p)) => p.unload(),
            Some(Program::KProbe(p)) => p.unload(),
            _ => Ok(()),
        };
        if let Err(e) = r {
            tracing::debug!("unloading {name}: {e}");
        }
    }
}

/// Forwards the programs' aya-log records to `tracing` (quiet unless asked).
fn spawn_logger(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring buffer fd for as long as the AsyncFd owns the logger.
    let Ok(mut fd) = (unsafe { AsyncFd::register(logger) }) else {
        return;
    };
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}
