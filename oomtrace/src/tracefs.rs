//! tracefs: where the classic tracepoint's id and record layout live.
//!
//! Only the classic-tracepoint strategy needs it (tp_btf attaches by BTF id). Many hosts do not
//! mount tracefs; we mount it where the kernel expects it rather than fail.
use anyhow::{bail, Context, Result};
use oomtrace_common::TracepointLayout;
use std::{collections::HashMap, ffi::CString, path::PathBuf};

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// Returns the tracefs root, mounting tracefs at `/sys/kernel/tracing` when nothing is there.
pub fn ensure_mounted() -> Result<PathBuf> {
    for root in [TRACEFS, DEBUGFS_TRACING] {
        if std::path::Path::new(root).join("events").is_dir() {
            return Ok(root.into());
        }
    }
    let target = CString::new(TRACEFS).expect("no NUL");
    let fstype = CString::new("tracefs").expect("no NUL");
    // SAFETY: valid NUL-terminated strings, no data argument.
    let rc = unsafe {
        libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null())
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "tracefs is not mounted and mounting it at {TRACEFS} failed: {err} \
             (needs CAP_SYS_ADMIN, or mount it yourself: mount -t tracefs tracefs {TRACEFS})"
        );
    }
    tracing::info!("mounted tracefs at {TRACEFS}");
    Ok(TRACEFS.into())
}

/// One field of a tracepoint record: byte offset and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

/// Parses a tracefs `format` file into its fields, by name. Lines that are not field
/// declarations (name, ID, print fmt) are skipped; malformed ones are ignored.
pub fn parse_format(text: &str) -> HashMap<String, Field> {
    let mut fields = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else { continue };
        let mut decl = None;
        let mut offset = None;
        let mut size = None;
        for part in rest.split(';') {
            let part = part.trim();
            if let Some(v) = part.strip_prefix("offset:") {
                offset = v.trim().parse().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.trim().parse().ok();
            } else if decl.is_none() && !part.is_empty() && !part.contains(':') {
                decl = Some(part);
            }
        }
        let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) else { continue };
        // The name is the last word, without an array suffix: "unsigned long anon_rss",
        // "__data_loc char[] comm", "char comm[16]".
        let last = decl.rsplit(char::is_whitespace).next().unwrap_or("");
        let name = last.split('[').next().unwrap_or("");
        if !name.is_empty() {
            fields.insert(name.to_string(), Field { offset, size });
        }
    }
    fields
}

/// Layout of `oom:mark_victim`'s record. Kernels before 6.9 (without the 5.10.235 / 6.1.130
/// backports) only carry `pid`; the memory figures are then absent, not zero.
pub fn mark_victim_layout(root: &std::path::Path) -> Result<TracepointLayout> {
    let path = root.join("events/oom/mark_victim/format");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {}: is the oom:mark_victim tracepoint built in?", path.display()))?;
    layout_from_format(&text)
}

pub fn layout_from_format(text: &str) -> Result<TracepointLayout> {
    let fields = parse_format(text);
    let at = |name: &str, size: u32| {
        fields
            .get(name)
            .filter(|f| f.size == size)
            .map(|f| f.offset)
            .unwrap_or(oomtrace_common::OFFSET_MISSING)
    };
    let layout = TracepointLayout {
        pid: at("pid", 4),
        comm_data_loc: at("comm", 4),
        total_vm: at("total_vm", 8),
        anon_rss: at("anon_rss", 8),
        file_rss: at("file_rss", 8),
        shmem_rss: at("shmem_rss", 8),
        uid: at("uid", 4),
        pgtables: at("pgtables", 8),
        oom_score_adj: at("oom_score_adj", 2),
        _pad: 0,
    };
    if layout.pid == oomtrace_common::OFFSET_MISSING {
        bail!("oom:mark_victim format has no 4-byte `pid` field");
    }
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT_6_18: &str = "name: mark_victim
ID: 609
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] comm;\toffset:12;\tsize:4;\tsigned:0;
\tfield:unsigned long total_vm;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned long anon_rss;\toffset:24;\tsize:8;\tsigned:0;
\tfield:unsigned long file_rss;\toffset:32;\tsize:8;\tsigned:0;
\tfield:unsigned long shmem_rss;\toffset:40;\tsize:8;\tsigned:0;
\tfield:uid_t uid;\toffset:48;\tsize:4;\tsigned:0;
\tfield:unsigned long pgtables;\toffset:56;\tsize:8;\tsigned:0;
\tfield:short oom_score_adj;\toffset:64;\tsize:2;\tsigned:1;

print fmt: \"pid=%d comm=%s\", REC->pid, __get_str(comm)
";

    const FORMAT_OLD: &str = "name: mark_victim
ID: 512
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;

print fmt: \"pid=%d\", REC->pid
";

    #[test]
    fn extended_layout() {
        let l = layout_from_format(FORMAT_6_18).unwrap();
        assert_eq!(l.pid, 8);
        assert_eq!(l.comm_data_loc, 12);
        assert_eq!(l.anon_rss, 24);
        assert_eq!(l.shmem_rss, 40);
        assert_eq!(l.uid, 48);
        assert_eq!(l.oom_score_adj, 64);
    }

    #[test]
    fn pid_only_layout_leaves_the_rest_missing() {
        let l = layout_from_format(FORMAT_OLD).unwrap();
        assert_eq!(l.pid, 8);
        assert_eq!(l.anon_rss, oomtrace_common::OFFSET_MISSING);
        assert_eq!(l.comm_data_loc, oomtrace_common::OFFSET_MISSING);
    }

    #[test]
    fn array_fields_and_garbage() {
        let f = parse_format("\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\nfield:;;\nfield:int x; offset:zz; size:4;");
        assert_eq!(f.get("comm"), Some(&Field { offset: 8, size: 16 }));
        assert!(!f.contains_key("x"));
        assert!(layout_from_format("garbage").is_err());
    }

    proptest::proptest! {
        #[test]
        fn parse_format_never_panics(s in "\\PC*") {
            let _ = parse_format(&s);
            let _ = layout_from_format(&s);
        }
    }
}
