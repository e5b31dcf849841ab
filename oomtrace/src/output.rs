//! How `oomtrace watch` prints kills: a table for people, JSON lines for programs.
use crate::event::OomKill;
use std::io::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Wide,
    Json,
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

fn rss(ev: &OomKill) -> Option<u64> {
    let v = &ev.victim;
    Some(v.rss_anon_bytes? + v.rss_file_bytes? + v.rss_shmem_bytes?)
}

fn or_dash<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// Local wall-clock time of day from the event's RFC 3339 time.
fn clock(ev: &OomKill) -> String {
    chrono::DateTime::parse_from_rfc3339(&ev.time)
        .map(|t| t.with_timezone(&chrono::Local).format("%H:%M:%S%.3f").to_string())
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
    ev.cgroup.memory.path.as_deref().or(ev.cgroup.path.as_deref()).unwrap_or("-").to_string()
}

pub struct Printer<W: Write> {
    out: W,
    format: Format,
    header_done: bool,
}

impl<W: Write> Printer<W> {
    pub fn new(out: W, format: Format) -> Self {
        Self { out, format, header_done: false }
    }

    /// Prints one kill and flushes, so a pipe sees it at once.
    pub fn print(&mut self, ev: &OomKill) -> std::io::Result<()> {
        match self.format {
            Format::Json => {
                serde_json::to_writer(&mut self.out, ev)?;
                writeln!(self.out)?;
            }
            Format::Table | Format::Wide => self.row(ev)?,
        }
        self.out.flush()
    }

    /// Prints an early warning (JSON line, or a `WARNING` line in the table formats).
    pub fn pressure(&mut self, p: &crate::pressure::MemoryPressure) -> std::io::Result<()> {
        match self.format {
            Format::Json => {
                serde_json::to_writer(&mut self.out, p)?;
                writeln!(self.out)?;
            }
            Format::Table | Format::Wide => {
                let who = match &p.k8s {
                    Some(k) if k.pod.is_some() => format!(
                        "{}/{}/{}",
                        k.namespace.as_deref().unwrap_or("-"),
                        k.pod.as_deref().unwrap_or("-"),
                        k.container.as_deref().unwrap_or("-")
                    ),
                    _ => p.cgroup.clone(),
                };
                let limit = if p.reason == "high" { p.high_bytes } else { p.limit_bytes };
                writeln!(
                    self.out,
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
            }
        }
        self.out.flush()
    }

    fn row(&mut self, ev: &OomKill) -> std::io::Result<()> {
        let wide = self.format == Format::Wide;
        if !self.header_done {
            self.header_done = true;
            write!(
                self.out,
                "{:<12} {:>8} {:<16} {:>9} {:<10} {:>9} {:>9} {:<40} {}",
                "TIME", "PID", "COMM", "RSS", "CONSTRAINT", "LIMIT", "USAGE", "POD/CGROUP", "WHY"
            )?;
            if wide {
                write!(self.out, "  {:>9} {:>9} {:>9} {:<24} OOM-CGROUP", "ANON", "FILE", "SHMEM", "TRIGGER")?;
            }
            writeln!(self.out)?;
        }
        let cgroup = where_(ev);
        write!(
            self.out,
            "{:<12} {:>8} {:<16} {:>9} {:<10} {:>9} {:>9} {:<40} {}",
            clock(ev),
            or_dash(&ev.victim.pid),
            ev.victim.comm.as_deref().unwrap_or("-"),
            human(rss(ev)),
            ev.oom.constraint.as_deref().unwrap_or("-"),
            human(ev.oom.limit_bytes),
            human(ev.oom.usage_bytes),
            cgroup,
            ev.verdict.as_deref().unwrap_or("-")
        )?;
        if wide {
            let trigger = format!("{}/{}", or_dash(&ev.trigger.pid), ev.trigger.comm.as_deref().unwrap_or("-"));
            write!(
                self.out,
                "  {:>9} {:>9} {:>9} {:<24} {}",
                human(ev.victim.rss_anon_bytes),
                human(ev.victim.rss_file_bytes),
                human(ev.victim.rss_shmem_bytes),
                trigger,
                ev.oom.cgroup.as_deref().unwrap_or("-")
            )?;
        }
        if let Some(lost) = ev.lost_events {
            write!(self.out, "  ({lost} earlier kills lost: ring buffer full)")?;
        }
        writeln!(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human(None), "-");
        assert_eq!(human(Some(512)), "512B");
        assert_eq!(human(Some(64 << 20)), "64.0MiB");
        assert_eq!(human(Some(3 << 29)), "1.5GiB");
    }
}
