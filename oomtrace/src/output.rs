//! How `oomtrace watch` prints kills: a table for people, JSON lines for programs.
use crate::model::{Constraint, OomKill, PressureLimit};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// At most one log line per this period about failed writes (a full disk fails every one).
const ERROR_LOG_PERIOD: Duration = Duration::from_secs(10);

/// Writes that failed (EPIPE, ENOSPC, …): counted, logged at most once per period, and never
/// the end of the stream.
#[derive(Debug, Default, Clone)]
pub struct OutputErrors {
    /// Every failed write so far (shared with the metrics).
    pub total: Arc<AtomicU64>,
    logged: Option<Instant>,
    unlogged: u64,
}

impl OutputErrors {
    pub fn failed(&mut self, e: &std::io::Error) {
        self.total.fetch_add(1, Relaxed);
        self.unlogged += 1;
        if self.logged.is_none_or(|t| t.elapsed() >= ERROR_LOG_PERIOD) {
            tracing::warn!(
                "{} writes to stdout failed (last: {e}); those records are lost",
                self.unlogged
            );
            self.logged = Some(Instant::now());
            self.unlogged = 0;
        }
    }

    /// Writes `v` as one JSON line; a failed write is counted here and the stream goes on.
    pub fn write_json(&mut self, out: &mut impl Write, v: &impl serde::Serialize) {
        if let Err(e) = json_line(v).and_then(|line| write_whole(out, &line)) {
            self.failed(&e);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Wide,
    Json,
}

/// Whether `c` must not reach a terminal raw: C0 controls (but the line's own newline), DEL
/// and C1 controls. A process or cgroup can name itself with an escape sequence.
fn unsafe_for_terminals(c: char) -> bool {
    c.is_control() && c != '\n'
}

/// `s` with every control character written as a `\xNN` escape.
pub fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(unsafe_for_terminals) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_for_terminals(c) {
            out.push_str(&format!("\\x{:02x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out.into()
}

/// `v` as one JSON line.
fn json_line(v: &impl serde::Serialize) -> std::io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(v)?;
    line.push(b'\n');
    Ok(line)
}

/// Writes text rendered whole, then flushes. Stdout's buffer holds 1 KiB and a kill's JSON
/// is several: serialized straight into it, a line went out in pieces, each a `write` that
/// woke the pipe's reader for part of a line, and a write that failed midway left a part
/// behind to prefix the next line. Whole text ending in a newline goes from stdout to the
/// kernel in one `write` (a pipe keeps up to 4 KiB of it together).
fn write_whole(out: &mut impl Write, text: &[u8]) -> std::io::Result<()> {
    out.write_all(text)?;
    out.flush()
}

/// A writer of human-readable text: whatever goes through it has its control characters
/// escaped ([`escape_controls`]). Formatting hands it whole `str` pieces, never half a char.
pub struct SafeText<W>(pub W);

impl<W: Write> Write for SafeText<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_all(escape_controls(&String::from_utf8_lossy(buf)).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// 1.5GiB-style sizes; `-` for unknown.
pub fn human(bytes: Option<u64>) -> String {
    let Some(b) = bytes else { return "-".into() };
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

fn or_dash<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map(|v| v.to_string())
        .unwrap_or_else(|| "-".into())
}

/// Local wall-clock time of day from the event's RFC 3339 time.
fn clock(ev: &OomKill) -> String {
    chrono::DateTime::parse_from_rfc3339(&ev.time)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%H:%M:%S%.3f")
                .to_string()
        })
        .unwrap_or_else(|_| ev.time.clone())
}

/// `namespace/pod/container` for a pod the index knew, the pod UID for one it did not, else
/// the victim's memory cgroup.
fn where_(ev: &OomKill) -> String {
    if let Some(k) = &ev.k8s {
        if let (Some(ns), Some(pod)) = (&k.namespace, &k.pod) {
            return format!("{ns}/{pod}/{}", k.container.as_deref().unwrap_or("-"));
        }
        if let Some(uid) = &k.pod_uid {
            return format!("pod {uid} (unresolved)");
        }
    }
    ev.cgroup
        .memory
        .path
        .as_deref()
        .or(ev.cgroup.path.as_deref())
        .unwrap_or("-")
        .to_string()
}

pub struct Printer<W: Write> {
    out: W,
    format: Format,
    header_done: bool,
}

impl<W: Write> Printer<W> {
    pub fn new(out: W, format: Format) -> Self {
        Self {
            out,
            format,
            header_done: false,
        }
    }

    /// Prints one kill and flushes, so a pipe sees it at once.
    pub fn print(&mut self, ev: &OomKill) -> std::io::Result<()> {
        let text = match self.format {
            Format::Json => json_line(ev)?,
            Format::Table | Format::Wide => {
                let mut text = Vec::new();
                row(&mut SafeText(&mut text), ev, self.format, &mut self.header_done)?;
                text
            }
        };
        write_whole(&mut self.out, &text)
    }

    /// Prints an early warning (JSON line, or a `WARNING` line in the table formats).
    pub fn pressure(&mut self, p: &crate::pressure::MemoryPressure) -> std::io::Result<()> {
        let text = match self.format {
            Format::Json => json_line(p)?,
            Format::Table | Format::Wide => {
                let mut text = Vec::new();
                let who = match &p.k8s {
                    Some(k) if k.pod.is_some() => format!(
                        "{}/{}/{}",
                        k.namespace.as_deref().unwrap_or("-"),
                        k.pod.as_deref().unwrap_or("-"),
                        k.container.as_deref().unwrap_or("-")
                    ),
                    _ => p.cgroup.clone(),
                };
                let limit = if p.reason == PressureLimit::High {
                    p.high_bytes
                } else {
                    p.limit_bytes
                };
                writeln!(
                    SafeText(&mut text),
                    "WARNING {who}: reclaiming at memory.{} ({} of {}), reclaimed {}{}, charging task {} ({}){}",
                    p.reason,
                    human(p.usage_bytes),
                    human(limit),
                    human(Some(p.reclaimed_bytes)),
                    if p.reclaim_struggling { " (struggling)" } else { "" },
                    p.task.comm,
                    p.task.pid,
                    if p.suppressed > 0 { format!(", {} more passes", p.suppressed) } else { String::new() }
                )?;
                text
            }
        };
        write_whole(&mut self.out, &text)
    }

}

/// One table row (and the header before the first), to a text writer.
fn row(out: &mut impl Write, ev: &OomKill, format: Format, header_done: &mut bool) -> std::io::Result<()> {
    let wide = format == Format::Wide;
    if !*header_done {
        *header_done = true;
        write!(
            out,
            "{:<12} {:>8} {:<16} {:>9} {:<10} {:>9} {:>9} {:<40} WHY",
            "TIME", "PID", "COMM", "RSS", "CONSTRAINT", "LIMIT", "USAGE", "POD/CGROUP"
        )?;
        if wide {
            write!(
                out,
                "  {:>9} {:>9} {:>9} {:<24} OOM-CGROUP",
                "ANON", "FILE", "SHMEM", "TRIGGER"
            )?;
        }
        writeln!(out)?;
    }
    let cgroup = where_(ev);
    write!(
        out,
        "{:<12} {:>8} {:<16} {:>9} {:<10} {:>9} {:>9} {:<40} {}",
        clock(ev),
        or_dash(&ev.victim.pid),
        ev.victim.comm.as_deref().unwrap_or("-"),
        human(ev.victim.rss_bytes()),
        ev.oom.constraint.map_or("-", Constraint::as_str),
        human(ev.oom.limit_bytes),
        human(ev.oom.usage_bytes),
        cgroup,
        ev.verdict.as_deref().unwrap_or("-")
    )?;
    if wide {
        let trigger = format!(
            "{}/{}",
            or_dash(&ev.trigger.pid),
            ev.trigger.comm.as_deref().unwrap_or("-")
        );
        write!(
            out,
            "  {:>9} {:>9} {:>9} {:<24} {}",
            human(ev.victim.rss_anon_bytes),
            human(ev.victim.rss_file_bytes),
            human(ev.victim.rss_shmem_bytes),
            trigger,
            ev.oom.cgroup.as_deref().unwrap_or("-")
        )?;
    }
    if let Some(lost) = ev.lost_events {
        write!(out, "  ({lost} earlier kills lost: ring buffer full)")?;
    }
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_controls("python3"), "python3");
        assert_eq!(escape_controls("\x1b[31mRED\x1b[0m"), "\\x1b[31mRED\\x1b[0m");
        assert_eq!(escape_controls("a\x7fb\u{9b}c\td\n"), "a\\x7fb\\x9bc\\x09d\n");
        let mut out = Vec::new();
        write!(SafeText(&mut out), "{:<6}|{}", "\x07", 1).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "\\x07     |1");
    }

    /// Each `write` it is handed, as the reader of a pipe gets them; fails from the `fail`th on.
    #[derive(Default)]
    struct Writes {
        each: Vec<Vec<u8>>,
        fail: Option<usize>,
    }

    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.fail.is_some_and(|n| self.each.len() >= n) {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.each.push(buf.to_vec());
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A kill whose JSON is kilobytes long, as one with its explanation is.
    fn long_kill() -> OomKill {
        let cgroup = format!("/kubepods/burstable/pod{}/\x1b[31m", "0123456789abcdef".repeat(200));
        crate::model::test_kill(serde_json::json!({
            "victim": {"pid": 7, "comm": "python3"},
            "cgroup": {"memory": {"path": cgroup}},
            "oom": {"constraint": "memcg", "cgroup": cgroup, "limit_bytes": 1u64 << 30, "usage_bytes": 1u64 << 30}
        }))
    }

    #[test]
    fn each_kill_is_one_write_of_whole_lines() {
        let ev = long_kill();
        for format in [Format::Json, Format::Table, Format::Wide] {
            let mut p = Printer::new(Writes::default(), format);
            p.print(&ev).unwrap();
            p.print(&ev).unwrap();
            let each = &p.out.each;
            assert_eq!(each.len(), 2, "{format:?}: one write per kill");
            assert!(each.iter().all(|w| w.len() > 3000 && w.ends_with(b"\n")), "{format:?}");
            if format == Format::Json {
                for w in each {
                    assert_eq!(serde_json::from_slice::<OomKill>(w).unwrap(), ev);
                }
            }
        }
    }

    #[test]
    fn the_daemon_writes_whole_json_lines_and_counts_failures() {
        let ev = long_kill();
        let mut errors = OutputErrors::default();
        let mut out = Writes { fail: Some(1), ..Default::default() };
        errors.write_json(&mut out, &ev);
        errors.write_json(&mut out, &ev);
        assert_eq!(out.each.len(), 1);
        assert_eq!(serde_json::from_slice::<OomKill>(&out.each[0]).unwrap(), ev);
        assert_eq!(errors.total.load(Relaxed), 1, "the failed line is counted");
    }

    #[test]
    fn sizes() {
        assert_eq!(human(None), "-");
        assert_eq!(human(Some(512)), "512B");
        assert_eq!(human(Some(64 << 20)), "64.0MiB");
        assert_eq!(human(Some(3 << 29)), "1.5GiB");
    }
}
