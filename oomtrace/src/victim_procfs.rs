//! The first stage after the ring: what procfs still shows of a victim. It runs before any
//! other because the kernel reaps the victim within milliseconds: its command line and
//! environment (which name its runtime) and, when the kernel's record carries no cgroup (the
//! classic tracepoint), its cgroups. The charging task's user stack too: symbolizing it needs
//! that task's memory map, and the trigger is often the victim itself.
use crate::cgroup_fs::{self, Hierarchies};
use crate::record::{dfl_levels, victim_memcg_levels};
use crate::runtime::Process;
use oomtrace_common::{valid, OomEvent};

/// A cgroup as `/proc/<pid>/cgroup` named it, with its id when cgroupfs still has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcCgroup {
    pub path: String,
    pub id: Option<u64>,
}

/// What was read of one victim; empty where procfs was too late or is not this pid's.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub process: Option<Process>,
    /// The victim's unified and memory cgroups, read only when the record has neither.
    pub unified: Option<ProcCgroup>,
    pub memory: Option<ProcCgroup>,
    /// The charging task's user stack (see [`crate::charge::UserSymbols`]).
    pub user_stack: Option<crate::charge::UserStack>,
}

pub struct Reader {
    hierarchies: Option<Hierarchies>,
    /// This process sees the kernel's pids: in a pod's pid namespace `/proc/<pid>` is another
    /// process, whose command line and cgroups would be reported as the victim's.
    host_pids: bool,
    stacks: crate::charge::UserSymbols,
}

impl Reader {
    pub fn new(hierarchies: Option<Hierarchies>) -> Self {
        Self { hierarchies, host_pids: crate::runtime::procfs::host_pids(), stacks: Default::default() }
    }

    pub fn read(&mut self, raw: &OomEvent) -> Snapshot {
        if !self.host_pids {
            return Snapshot::default();
        }
        let mut seen = self.victim(raw);
        // After the victim's command line, which goes first when the trigger is the victim.
        seen.user_stack = self.stacks.user_stack(raw);
        seen
    }

    fn victim(&self, raw: &OomEvent) -> Snapshot {
        if raw.valid & valid::VICTIM_TASK == 0 {
            return Snapshot::default();
        }
        let tgid = if raw.victim_tgid != 0 { raw.victim_tgid } else { raw.victim_pid };
        // The thread whose allocation the kill answered, when it is one of the victim's; the
        // kernel holds the victim's thread it names (`victim_pid`) until it has printed the kill.
        let busy = (tgid == raw.trigger_tgid).then_some(raw.trigger_pid);
        let mut seen = Snapshot {
            process: crate::runtime::procfs::read(tgid, busy, raw.victim_pid),
            ..Default::default()
        };
        if dfl_levels(raw).is_empty() && victim_memcg_levels(raw).is_empty() {
            if let Some((unified, memory)) = cgroup_fs::proc_cgroups(raw.victim_pid) {
                let h = self.hierarchies.as_ref();
                let id = |dir: Option<std::path::PathBuf>| dir.and_then(cgroup_fs::cgroup_id);
                seen.unified = unified.map(|p| ProcCgroup { id: id(h.and_then(|h| h.unified_dir(&p))), path: p });
                seen.memory = memory.map(|p| ProcCgroup { id: id(h.and_then(|h| h.memory_dir(&p))), path: p });
            }
        }
        seen
    }
}
