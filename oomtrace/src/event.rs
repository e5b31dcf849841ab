//! Decoding, pure: a kernel victim record, with what procfs showed of the victim
//! ([`crate::victim_procfs`]) and its OOM domain ([`crate::oom_domain`]), becomes an OOM kill
//! event (clock conversion, units, the victim's runtime from its command line).
use crate::model::{
    CgroupRef, CgroupSource, Constraint, Oom, OomKill, OomSource, RuntimeSource, Trigger, Victim,
    VictimCgroup, VictimSource, SCHEMA,
};
use crate::oom_domain::Domain;
use crate::record::{boot_ns_to_rfc3339, cstr, dfl_levels, memcg_levels, memcg_path, path_of, victim_memcg_levels};
use crate::victim_procfs::Snapshot;
use oomtrace_common::{ctx_source, source, valid, MemcgLevel, OomEvent};

/// Turns kernel records into events: clock conversion, units.
pub struct Decoder {
    pub node: String,
    page_size: u64,
}

/// The victim's cgroups: the kernel's, or procfs's when the record has none.
pub fn victim_cgroup(raw: &OomEvent, seen: &Snapshot) -> VictimCgroup {
    let memcg = victim_memcg_levels(raw);
    let dfl = dfl_levels(raw);
    if !dfl.is_empty() || !memcg.is_empty() {
        return VictimCgroup {
            id: dfl.first().map(|l| l.id),
            path: (!dfl.is_empty()).then(|| path_of(dfl.iter().map(|l| &l.name[..]))),
            memory: CgroupRef {
                id: memcg.first().map(|l| l.id),
                path: (!memcg.is_empty()).then(|| memcg_path(memcg, 0)),
            },
            source: CgroupSource::Kernel,
        };
    }
    let (unified, memory) = (seen.unified.as_ref(), seen.memory.as_ref());
    VictimCgroup {
        id: unified.and_then(|c| c.id),
        path: unified.map(|c| c.path.clone()),
        memory: CgroupRef { id: memory.and_then(|c| c.id), path: memory.map(|c| c.path.clone()) },
        source: if unified.is_some() || memory.is_some() { CgroupSource::Procfs } else { CgroupSource::Unknown },
    }
}

impl Decoder {
    pub fn new(node: String) -> Self {
        Self { node, page_size: crate::cgroup_fs::page_size() }
    }

    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// `cgroup` is [`victim_cgroup`]'s answer, `domain` the OOM domain stage's.
    pub fn decode(&self, raw: &OomEvent, seen: Snapshot, cgroup: VictimCgroup, domain: Domain, lost_events: u64) -> OomKill {
        let v = raw.valid;
        let has = |bit| v & bit != 0;
        let page = self.page_size;
        // Pages from the task, kB from the classic tracepoint's record.
        let unit = if has(valid::FROM_TRACEPOINT_RECORD) {
            1024
        } else {
            page
        };
        let opt = |bit, val: u64| has(bit).then_some(val);
        let mut victim = Victim {
            pid: opt(valid::VICTIM_TASK, raw.victim_pid as u64).map(|p| p as u32),
            tgid: (has(valid::VICTIM_TASK) && raw.victim_tgid != 0).then_some(raw.victim_tgid),
            comm: has(valid::VICTIM_COMM).then(|| cstr(&raw.victim_comm)),
            uid: has(valid::VICTIM_UID).then_some(raw.victim_uid),
            ns_pid: has(valid::NS_PID).then_some(raw.victim_ns_pid),
            oom_score_adj: has(valid::OOM_SCORE_ADJ).then_some(raw.oom_score_adj),
            total_vm_bytes: opt(valid::TOTAL_VM, raw.total_vm.saturating_mul(unit)),
            rss_anon_bytes: opt(valid::RSS, raw.rss_anon.saturating_mul(unit)),
            rss_file_bytes: opt(valid::RSS, raw.rss_file.saturating_mul(unit)),
            rss_shmem_bytes: opt(valid::RSS, raw.rss_shmem.saturating_mul(unit)),
            swap_bytes: opt(valid::RSS_SWAP, raw.rss_swap.saturating_mul(page)),
            pgtables_bytes: opt(
                valid::PGTABLES,
                if has(valid::FROM_TRACEPOINT_RECORD) {
                    raw.pgtables.saturating_mul(1024)
                } else {
                    raw.pgtables
                },
            ),
            container_init: None,
            runtime: None,
            cmdline_read: seen.process.is_some(),
            source: match raw.source {
                source::TP_BTF => VictimSource::TaskStruct,
                source::TRACEPOINT if has(valid::FROM_TRACEPOINT_RECORD) => VictimSource::TracepointRecord,
                source::TRACEPOINT => VictimSource::TracepointPid,
                _ => VictimSource::Unknown,
            },
        };
        let trigger = Trigger {
            pid: Some(raw.trigger_pid),
            tgid: Some(raw.trigger_tgid),
            comm: Some(cstr(&raw.trigger_comm)),
        };

        let memcg = memcg_levels(raw);
        let ctx = has(valid::OOM_CONTEXT).then_some(&raw.ctx);
        let group_kill = group_kill(memcg, &domain);
        let mut oom = match domain {
            Domain::Context {
                constraint,
                cgroup: cg,
                cgroup_id,
                limit_pages,
                usage_pages,
                swap_limit_pages,
            } => Oom {
                constraint: Some(constraint),
                cgroup: cg,
                cgroup_id,
                limit_bytes: limit_pages.map(|p| p.saturating_mul(page)),
                usage_bytes: usage_pages.map(|p| p.saturating_mul(page)),
                swap_limit_bytes: swap_limit_pages.map(|p| p.saturating_mul(page)),
                order: ctx.map(|c| c.order),
                gfp_mask: ctx.map(|c| format!("{:#x}", c.gfp_mask)),
                domain_bytes: ctx.map(|c| c.totalpages.saturating_mul(page)),
                invocation: ctx.map(|c| c.seq),
                source: match ctx.map(|c| c.source) {
                    Some(ctx_source::FENTRY) => OomSource::OomControlFentry,
                    Some(ctx_source::KPROBE) => OomSource::OomControlKprobe,
                    _ => OomSource::OomControl,
                },
                ..Default::default()
            },
            Domain::Memcg { index } => {
                let l = &memcg[index];
                let finite = |p: u64| crate::oom_domain::finite(p).map(|p| p.saturating_mul(page));
                Oom {
                    constraint: Some(Constraint::Memcg),
                    cgroup: Some(memcg_path(memcg, index)),
                    cgroup_id: Some(l.id),
                    limit_bytes: finite(l.max_pages),
                    usage_bytes: finite(l.usage_pages),
                    swap_limit_bytes: finite(l.swap_max_pages),
                    source: OomSource::Memcg,
                    ..Default::default()
                }
            }
            Domain::Cgroupfs { path, mem } => Oom {
                constraint: Some(Constraint::Memcg),
                cgroup: Some(path),
                limit_bytes: mem.limit_bytes,
                usage_bytes: mem.usage_bytes,
                swap_limit_bytes: mem.swap_limit_bytes,
                source: OomSource::Cgroupfs,
                ..Default::default()
            },
            Domain::Global { source } => Oom {
                constraint: Some(Constraint::Global),
                cgroup: Some("/".into()),
                source,
                ..Default::default()
            },
            Domain::Unknown => Oom::default(),
        };
        oom.group_kill = group_kill;
        victim.runtime = seen
            .process
            .as_ref()
            .and_then(|p| crate::runtime::recognise(p, oom.limit_bytes, RuntimeSource::Procfs));

        OomKill {
            schema: SCHEMA.into(),
            time: boot_ns_to_rfc3339(raw.boot_ns),
            node: self.node.clone(),
            victim,
            trigger,
            oom,
            cgroup,
            incident: None,
            verdict: None,
            k8s: None,
            resource: Default::default(),
            lost_events: (lost_events > 0).then_some(lost_events),
        }
    }
}

/// Whether the kernel kills the whole group: `memory.oom.group` on the victim's memcg or an
/// ancestor inside the OOM domain (below the root for a node-wide OOM).
fn group_kill(levels: &[MemcgLevel], domain: &Domain) -> Option<bool> {
    let top = match domain {
        Domain::Memcg { index } => *index,
        Domain::Context {
            cgroup_id: Some(id),
            ..
        } => levels.iter().position(|l| l.id == *id)?,
        _ => levels.len().checked_sub(2)?,
    };
    let within = levels.get(..=top)?;
    if within.iter().any(|l| l.oom_group == 1) {
        return Some(true);
    }
    within.iter().all(|l| l.oom_group == 0).then_some(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{Format, Printer};
    use crate::record::{record_from_bytes, victim_record, Record};

    /// The stages up to decode, without procfs or cgroupfs.
    fn decode_alone(raw: &OomEvent, lost: u64) -> OomKill {
        let seen = Snapshot::default();
        let cgroup = victim_cgroup(raw, &seen);
        let domain = crate::oom_domain::DomainTracker::new(None).resolve(raw, cgroup.memory.path.as_deref());
        Decoder::new("n".into()).decode(raw, seen, cgroup, domain, lost)
    }

    #[test]
    fn unknown_values_are_null() {
        let Some(Record::Victim(raw)) =
            record_from_bytes(&victim_record(std::mem::size_of::<OomEvent>()))
        else {
            panic!("a full victim record decodes");
        };
        let ev = decode_alone(&raw, 0);
        let j = serde_json::to_value(&ev).unwrap();
        assert!(j["victim"]["pid"].is_null());
        assert!(j["victim"]["rss_anon_bytes"].is_null());
        assert!(j["oom"]["limit_bytes"].is_null());
        assert!(j.get("lost_events").is_none());
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_records_never_panics(
            kind in 0u32..5,
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..12000),
        ) {
            let mut bytes = bytes;
            if bytes.len() >= 4 {
                bytes[..4].copy_from_slice(&kind.to_ne_bytes());
            }
            let d = Decoder::new("n".into());
            match record_from_bytes(&bytes) {
                Some(Record::Victim(raw)) => {
                    // The whole path from decode on: verdict, metrics, Event note, every printer.
                    let mut ev = decode_alone(&raw, 1);
                    crate::explain::apply(&mut ev, None);
                    ev.fill_resource();
                    crate::metrics::Metrics::new().record(&ev);
                    crate::k8s::events::note(&ev);
                    for format in [Format::Json, Format::Table, Format::Wide] {
                        Printer::new(Vec::new(), format).print(&ev).unwrap();
                    }
                }
                Some(Record::Pressure(raw)) => {
                    if let Some(p) = crate::pressure::decode(&raw, "n", d.page_size()) {
                        serde_json::to_string(&p).unwrap();
                    }
                }
                Some(Record::InvocationEnd(_)) | None => {}
            }
        }
    }
}
