//! What to change so a kill does not come back (`oom.recommendation`), only from evidence:
//! the victim's runtime setting against the limit, and the OOM cgroup's trend before the kill.
//! A limit is named only for a working set that did not fit, computed from what was not
//! reclaimable at the kill; a leak or a burst gets no number.
use crate::model::{Ceiling, Explanation, OomKill, Recommendation, RuntimeName, Trend};
use crate::output::human;
use crate::trend::duration;

/// Headroom added to the non-reclaimable memory at the kill, in percent.
pub const HEADROOM_PCT: u64 = 25;
/// A recommended limit is rounded up to this.
const ROUND: u64 = 16 << 20;

/// `part` as a percentage of `whole` (0 for an empty whole).
pub fn pct(part: u64, whole: u64) -> u64 {
    if whole == 0 {
        0
    } else {
        // In u128: `part * 100` cannot overflow there.
        u64::try_from(u128::from(part) * 100 / u128::from(whole)).unwrap_or(u64::MAX)
    }
}

fn rec(reason: String, action: String, setting: Option<&str>, limit_bytes: Option<u64>) -> Recommendation {
    Recommendation { action, reason, setting: setting.map(str::to_string), limit_bytes }
}

/// From the OOM cgroup's trend, when no runtime setting explains the kill:
/// - `leak`: find the leak, with its growth rate (no limit: a higher one only delays the kill);
/// - `at_limit`: a working set that did not fit: a limit of at least the memory not
///   reclaimable at the kill (usage − page cache other than shmem, that is anon + shmem +
///   kernel) plus [`HEADROOM_PCT`], rounded up to 16 MiB; none without the breakdown;
/// - `spike`: find what allocated the burst (no limit: the burst may have gone on).
pub fn from_trend(ev: &OomKill, x: Option<&Explanation>) -> Option<Recommendation> {
    let trend = ev.oom.trend.as_ref()?;
    let said = || crate::trend::phrase(trend, ev.oom.limit_bytes);
    match trend {
        Trend::Leak { .. } => Some(rec(said()?, "find the leak".into(), None, None)),
        Trend::AtLimit { seconds } => {
            let usage = ev.oom.usage_bytes?;
            let stat = x?.memory_stat.as_ref()?;
            let cache = stat.file_bytes?.saturating_sub(stat.shmem_bytes.unwrap_or(0));
            let kept = usage.saturating_sub(cache);
            let needed = (kept + kept * HEADROOM_PCT / 100).div_ceil(ROUND) * ROUND;
            Some(rec(
                format!(
                    "the working set did not fit: usage sat at the limit for {}, and {} of the {} at the kill was not reclaimable (usage − page cache {} = anon + shmem + kernel); + {HEADROOM_PCT} % headroom, rounded up to 16 MiB",
                    duration(*seconds),
                    human(Some(kept)),
                    human(Some(usage)),
                    human(Some(cache)),
                ),
                format!("raise the limit to at least {}", human(Some(needed))),
                None,
                Some(needed),
            ))
        }
        Trend::Spike { from_bytes, .. } => {
            let to = ev.oom.usage_bytes.or(ev.oom.limit_bytes)?;
            Some(rec(
                said()?,
                format!(
                    "find what allocated {} at once: a higher limit helps only if that burst is bounded",
                    human(Some(to.saturating_sub(*from_bytes)))
                ),
                None,
                None,
            ))
        }
        Trend::Steady | Trend::Unknown => None,
    }
}

/// Rule 5: the victim's runtime and its ceiling against the `limit` it was killed at, when
/// the victim itself held at least half of it (its RSS at the kill, `rss`):
/// - a ceiling not below the limit: the runtime grows into the kernel's kill before its own
///   collector is pressed (→ lower the setting, or raise the limit above the ceiling);
/// - JVM / Node: memory beyond the heap ceiling (`rss − ceiling`) at least as large as the
///   heap itself: native memory filled the limit, not the heap (→ no heap setting);
/// - JVM / Node otherwise: the ceiling leaves `limit − ceiling` for the rest of the process,
///   which did not fit (→ lower the setting or raise the limit);
/// - Go under GOMEMLIMIT: live memory outgrew a soft limit; Go without it: the GC paced by
///   GOGC alone (→ set GOMEMLIMIT below the limit);
/// - Python: no ceiling to set.
pub fn runtime(ev: &OomKill, limit: u64, scope: &str) -> Option<Recommendation> {
    let rt = ev.victim.runtime.as_ref()?;
    let rss = ev.victim.rss_bytes()?;
    if pct(rss, limit) < 50 {
        return None;
    }
    let l = human(Some(limit));
    let comm = ev.victim.comm.as_deref().unwrap_or("the victim");
    let (what, rest) = match rt.name {
        RuntimeName::Jvm => ("JVM heap max", "metaspace, threads and native memory"),
        RuntimeName::Node => ("Node old space max", "V8's young generation, code and native memory"),
        RuntimeName::Go => ("GOMEMLIMIT", "memory the Go runtime does not manage"),
        RuntimeName::Python => {
            return Some(rec(
                format!("{comm} (Python) filled the {scope} limit {l}, and CPython has no heap ceiling"),
                "raise the limit or reduce what the program keeps in memory".into(),
                None,
                None,
            ))
        }
    };
    let knob = match &rt.ceiling {
        Ceiling::Set(k) => k,
        Ceiling::None if rt.name == RuntimeName::Go => {
            return Some(rec(
                format!("{comm} (Go) filled the {scope} limit {l} with no GOMEMLIMIT: its GC is paced by GOGC alone"),
                format!("set GOMEMLIMIT below the limit {l}, so the GC works harder before the kernel kills"),
                Some("GOMEMLIMIT"),
                None,
            ))
        }
        Ceiling::None | Ceiling::Unknown => return None,
    };
    let h = rt.heap_max_bytes?;
    let hh = human(Some(h));
    if h >= limit {
        return Some(rec(
            format!("{what} {hh} ({}) is not below the {scope} limit {l}: the kernel kills before the runtime must collect", rt.setting),
            format!("lower {} below the limit, leaving room for {rest}, or raise the limit above {hh}", knob.flag),
            Some(knob.name),
            Some(h),
        ));
    }
    if rt.name == RuntimeName::Go {
        return Some(rec(
            format!("{comm} (Go) held {} past its {what} {hh} ({}), a soft limit, up to the {scope} limit {l}", human(Some(rss)), rt.setting),
            "raise the limit or shrink what the program keeps alive: the GC cannot free live memory".into(),
            None,
            None,
        ));
    }
    let beyond = rss.saturating_sub(h);
    if beyond >= h {
        return Some(rec(
            format!("{comm} held {} with a {what} of {hh} ({}): at least {} beyond the heap, in {rest}", human(Some(rss)), rt.setting, human(Some(beyond))),
            "find the off-heap memory (direct buffers, thread stacks, native libraries) and cap it, or raise the limit: the heap setting is not what filled it".into(),
            None,
            None,
        ));
    }
    let of = if knob.name == "MaxRAMPercentage" { format!(" of {l}") } else { String::new() };
    let value = if knob.value.is_empty() { String::new() } else { format!(" below {}", knob.value) };
    Some(rec(
        format!("{what} {hh} ({}{of}) leaves {} for {rest}", rt.setting, human(Some(limit - h))),
        format!("lower {}{value} or raise the limit", knob.flag),
        Some(knob.name),
        None,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MemoryStat;

    const M: u64 = 1 << 20;

    fn kill(trend: serde_json::Value) -> OomKill {
        crate::model::test_kill(serde_json::json!({
            "victim": {"pid": 1, "comm": "app", "rss_anon_bytes": 500 * M, "rss_file_bytes": 0, "rss_shmem_bytes": 0},
            "oom": {"constraint": "memcg", "cgroup": "/t", "limit_bytes": 512 * M, "usage_bytes": 512 * M, "trend": trend}
        }))
    }

    fn stat(file: u64, shmem: u64) -> Explanation {
        let memory_stat = MemoryStat { anon_bytes: Some(500 * M), file_bytes: Some(file), shmem_bytes: Some(shmem), ..Default::default() };
        Explanation { memory_stat: Some(memory_stat), ..Default::default() }
    }

    #[test]
    fn a_working_set_that_did_not_fit_gets_a_limit_and_how_it_was_computed() {
        let ev = kill(serde_json::json!({"kind": "at_limit", "seconds": 45}));
        // 32 MiB of page cache, 8 of it tmpfs: 488 MiB not reclaimable, × 1.25 = 610 → 624 MiB.
        let r = from_trend(&ev, Some(&stat(32 * M, 8 * M))).unwrap();
        assert_eq!(r.limit_bytes, Some(624 * M));
        assert_eq!(r.action, "raise the limit to at least 624.0MiB");
        assert!(r.reason.contains("488.0MiB of the 512.0MiB at the kill was not reclaimable"), "{}", r.reason);
        assert!(r.reason.contains("page cache 24.0MiB"), "{}", r.reason);
        // Without the breakdown there is no evidence for a number.
        assert_eq!(from_trend(&ev, None), None);
    }

    #[test]
    fn a_leak_or_a_burst_gets_no_number() {
        let leak = kill(serde_json::json!({"kind": "leak", "growth_bytes_per_min": 4 * M, "since_s": 900}));
        let r = from_trend(&leak, Some(&stat(0, 0))).unwrap();
        assert_eq!((r.action.as_str(), r.limit_bytes), ("find the leak", None));
        assert!(r.reason.starts_with("grew steadily 4.0MiB/min for 15 min before the kill"), "{}", r.reason);
        let spike = kill(serde_json::json!({"kind": "spike", "from_bytes": 100 * M, "seconds": 1.5}));
        let r = from_trend(&spike, None).unwrap();
        assert_eq!(r.limit_bytes, None);
        assert!(r.action.starts_with("find what allocated 412.0MiB at once"), "{}", r.action);
        for quiet in [serde_json::json!({"kind": "steady"}), serde_json::json!({"kind": "unknown"}), serde_json::Value::Null] {
            assert_eq!(from_trend(&kill(quiet), Some(&stat(0, 0))), None);
        }
    }

    #[test]
    fn the_verdict_says_how_usage_moved() {
        let ev = kill(serde_json::json!({"kind": "leak", "growth_bytes_per_min": 4 * M, "since_s": 900}));
        let (v, r) = crate::explain::judge(&ev, Some(&stat(0, 0)));
        assert_eq!(v, "anon memory of app filled the cgroup limit; grew steadily 4.0MiB/min for 15 min before the kill; looks like a leak: a higher limit only delays the next kill");
        assert_eq!(r.unwrap().action, "find the leak");
        let note = crate::k8s::events::note(&{
            let mut ev = ev;
            crate::explain::apply(&mut ev, Some(stat(0, 0)));
            ev
        });
        assert_eq!(note.matches("grew steadily").count(), 1, "{note}");
        assert!(note.ends_with("a higher limit only delays the next kill: find the leak"), "{note}");
    }
}
