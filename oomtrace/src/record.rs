//! The kernel's ring buffer records and the raw values in them: record kinds, fixed-size
//! strings, cgroup ancestries, boot-clock timestamps. Plain functions over
//! `oomtrace_common`, for the decoding stages.
use oomtrace_common::{
    kind, valid, CgroupLevel, InvocationEnd, MemcgLevel, OomEvent, PressureEvent, MAX_CGROUP_DEPTH,
};

/// Bytes of a fixed-size, possibly NUL-terminated kernel string.
pub fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// A ring buffer record, by its leading `kind`.
pub enum Record {
    Victim(Box<OomEvent>),
    InvocationEnd(InvocationEnd),
    Pressure(Box<PressureEvent>),
}

/// Reads `T` from the start of `b`; `None` if it is too short.
fn pod_from_bytes<T: Copy>(b: &[u8]) -> Option<T> {
    if b.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; the record types are plain old data valid for any bit pattern.
    Some(unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) })
}

/// Decodes a ring buffer record; `None` for an unknown kind or a short record.
pub fn record_from_bytes(b: &[u8]) -> Option<Record> {
    match u32::from_ne_bytes(b.get(..4)?.try_into().ok()?) {
        kind::VICTIM => pod_from_bytes(b).map(|e| Record::Victim(Box::new(e))),
        kind::INVOCATION_END => pod_from_bytes(b).map(Record::InvocationEnd),
        kind::PRESSURE => pod_from_bytes(b).map(|e| Record::Pressure(Box::new(e))),
        _ => None,
    }
}

/// Joins kernfs names from the root down to `levels[0]`. The root's own name is not part of
/// any path.
pub fn path_of<'a>(names: impl DoubleEndedIterator<Item = &'a [u8]>) -> String {
    let mut parts: Vec<String> = names.rev().skip(1).map(cstr).collect();
    parts.retain(|p| !p.is_empty());
    format!("/{}", parts.join("/"))
}

/// The memcg ancestry as the kernel captured it: `[0]` = the victim's memcg, or the
/// trigger's where only that was known (MEMCG_CHAIN_OF_TRIGGER).
pub fn memcg_levels(raw: &OomEvent) -> &[MemcgLevel] {
    if raw.valid & (valid::MEMCG_CHAIN | valid::MEMCG_CHAIN_OF_TRIGGER) == 0 {
        return &[];
    }
    &raw.memcg[..(raw.memcg_depth as usize).min(MAX_CGROUP_DEPTH)]
}

/// The victim's own memcg ancestry; empty where the kernel captured only the trigger's.
pub fn victim_memcg_levels(raw: &OomEvent) -> &[MemcgLevel] {
    if raw.valid & valid::MEMCG_CHAIN == 0 {
        return &[];
    }
    memcg_levels(raw)
}

pub fn dfl_levels(raw: &OomEvent) -> &[CgroupLevel] {
    if raw.valid & valid::DFL_CHAIN == 0 {
        return &[];
    }
    &raw.dfl[..(raw.dfl_depth as usize).min(MAX_CGROUP_DEPTH)]
}

/// Path of `levels[i]` (its name and those of its ancestors).
pub fn memcg_path(levels: &[MemcgLevel], i: usize) -> String {
    path_of(levels[i..].iter().map(|l| &l.name[..]))
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// Converts `bpf_ktime_get_boot_ns()` to wall-clock time, using the current offset between
/// CLOCK_REALTIME and CLOCK_BOOTTIME.
pub fn boot_ns_to_rfc3339(boot_ns: u64) -> String {
    let offset = clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME);
    let wall = boot_ns as i128 + offset;
    let secs = wall.div_euclid(1_000_000_000) as i64;
    let nanos = wall.rem_euclid(1_000_000_000) as u32;
    chrono::DateTime::from_timestamp(secs, nanos)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// A zeroed victim record of `len` bytes, for unit tests.
#[cfg(test)]
pub(crate) fn victim_record(len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    buf[..4].copy_from_slice(&kind::VICTIM.to_ne_bytes());
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> [u8; oomtrace_common::CGROUP_NAME_LEN] {
        let mut n = [0u8; oomtrace_common::CGROUP_NAME_LEN];
        n[..s.len()].copy_from_slice(s.as_bytes());
        n
    }

    #[test]
    fn paths_skip_the_root_name() {
        let names = [name("leaf"), name("mid"), name("")];
        assert_eq!(path_of(names.iter().map(|n| &n[..])), "/mid/leaf");
        let root = [name("")];
        assert_eq!(path_of(root.iter().map(|n| &n[..])), "/");
    }

    #[test]
    fn short_or_unknown_records_are_rejected() {
        assert!(record_from_bytes(&victim_record(16)).is_none());
        assert!(record_from_bytes(&[]).is_none());
        assert!(record_from_bytes(&[0xff; 64]).is_none());
        let Some(Record::Victim(raw)) =
            record_from_bytes(&victim_record(std::mem::size_of::<OomEvent>()))
        else {
            panic!("a full victim record decodes");
        };
        assert_eq!(raw.valid, 0);
    }
}
