//! `oomtrace top`: the limited memory cgroups closest to their limit, by pod and container,
//! refreshed live for an incident: usage against the limit, the trend, the time to the limit
//! at the last two minutes' growth, and the kernel's OOM kill counts.
//!
//! It reads cgroupfs only (the memory history's sampler), so it needs no BPF and starts at
//! once; the trend and the growth fill in as the history does.
use crate::cgroup_fs::{read, Hierarchies, MemoryVersion};
use crate::filter::{Filter, FilterArgs};
use crate::history::{History, Sample};
use crate::history_sampler;
use crate::k8s::attribution::Attributor;
use crate::model::Trend;
use crate::output::human;
use crate::watch::KubeArgs;
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TopFormat {
    /// A table refreshed every --interval until q or Ctrl-C (printed once when stdout is not
    /// a terminal).
    Table,
    /// One snapshot as a JSON array, then exit.
    Json,
}

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub format: TopFormat,
    /// How often the table is refreshed.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Show at most this many cgroups (default: as many as the terminal has room for).
    #[arg(long)]
    pub rows: Option<usize>,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub k8s: KubeArgs,
}

/// One limited cgroup, as `top` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub cgroup: String,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    /// `null` for a pod-level cgroup.
    pub container: Option<String>,
    pub usage_bytes: u64,
    pub limit_bytes: u64,
    pub usage_pct: f64,
    pub trend: Trend,
    /// Least-squares growth over the last 2 minutes (negative: shrinking); `null` with less
    /// than 10 s of samples.
    pub growth_bytes_per_min: Option<i64>,
    /// At that growth, when the limit is reached; `null` when not growing.
    pub seconds_to_limit: Option<u64>,
    /// The kernel's count of OOM kills of this cgroup's tasks (v1 `memory.oom_control`, v2
    /// `memory.events`: with those of its descendants).
    pub oom_kills: Option<u64>,
    /// Of those, the ones in the last hour that `top` saw happen (it counts from its start).
    pub oom_kills_last_hour: Option<u64>,
}

/// The kernel's `oom_kill` counter of a cgroup directory.
fn oom_kills(version: MemoryVersion, dir: &std::path::Path) -> Option<u64> {
    let file = match version {
        MemoryVersion::V1 => "memory.oom_control",
        MemoryVersion::V2 => "memory.events",
    };
    read(dir, file)?.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|v| v.trim().parse().ok())
}

/// When each cgroup's counter moved, for the kills of the last hour.
#[derive(Default)]
struct KillLog {
    last: HashMap<String, u64>,
    moved: HashMap<String, VecDeque<(Instant, u64)>>,
}

impl KillLog {
    /// Takes in `count` for `path`; the kills of the last hour seen (`None` on first sight).
    fn observe(&mut self, path: &str, count: u64, now: Instant) -> Option<u64> {
        let prev = self.last.insert(path.to_string(), count)?;
        let log = self.moved.entry(path.to_string()).or_default();
        if count > prev {
            log.push_back((now, count - prev));
        }
        while log.front().is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(3600)) {
            log.pop_front();
        }
        Some(log.iter().map(|(_, n)| n).sum())
    }
}

/// The growth per second over the last 2 minutes of `samples`, when at least 10 s of them.
fn growth(samples: &[Sample]) -> Option<f64> {
    let recent: Vec<&Sample> = samples.iter().filter(|s| s.age_s <= 120.0).collect();
    if recent.first()?.age_s - recent.last()?.age_s < 10.0 {
        return None;
    }
    crate::trend::fit(&recent).map(|(slope, _)| slope).or(Some(0.0))
}

/// Builds the rows, closest to their limit first.
fn rows(
    history: &History,
    version: MemoryVersion,
    h: &Hierarchies,
    attributor: &Attributor,
    filter: &Filter,
    kills: &mut KillLog,
) -> Vec<Row> {
    let (now, at) = (Instant::now(), SystemTime::now());
    let node = crate::node_name();
    let mut out: Vec<Row> = history
        .followed()
        .into_iter()
        .filter_map(|(path, limit)| {
            let samples = history.before(&path, at)?;
            let usage = samples.last()?.bytes;
            let k = attributor.for_path(&path, &node);
            let (ns, pod, container) = match &k {
                Some(k) => (k.namespace.clone(), k.pod.clone(), k.container.clone()),
                None => (None, None, None),
            };
            if !filter.matches(ns.as_deref(), pod.as_deref(), container.as_deref()) {
                return None;
            }
            let count = h.memory_dir(&path).and_then(|d| oom_kills(version, &d));
            let last_hour = count.and_then(|c| kills.observe(&path, c, now));
            let rate = growth(&samples);
            let to_limit = rate.filter(|&r| r > 0.0).map(|r| (limit.saturating_sub(usage) as f64 / r).round() as u64);
            Some(Row {
                namespace: ns,
                pod,
                container,
                usage_bytes: usage,
                limit_bytes: limit,
                usage_pct: (usage as f64 * 1000.0 / limit as f64).round() / 10.0,
                trend: crate::trend::classify(&samples, limit),
                growth_bytes_per_min: rate.map(|r| (r * 60.0).round() as i64),
                seconds_to_limit: to_limit,
                oom_kills: count,
                oom_kills_last_hour: last_hour,
                cgroup: path,
            })
        })
        .collect();
    out.sort_by(|a, b| b.usage_pct.total_cmp(&a.usage_pct).then_with(|| a.cgroup.cmp(&b.cgroup)));
    out
}

fn or_dash(v: Option<&str>) -> &str {
    v.unwrap_or("-")
}

fn eta(s: Option<u64>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s < 120 => format!("{s}s"),
        Some(s) if s < 7200 => format!("{}m", s / 60),
        Some(s) => format!("{}h", s / 3600),
    }
}

/// The table: a header, then one line per row, each cut to `width`.
fn table(rows: &[Row], since: &str, limit: usize, width: usize) -> Vec<String> {
    let mut lines = vec![format!(
        "oomtrace top: {} limited cgroups, closest to their limit first; kills/1h counted since {since}; q quits",
        rows.len()
    )];
    lines.push(format!(
        "{:<14} {:<28} {:<16} {:>9} {:>9} {:>6} {:<9} {:>10} {:>8} {:>6} {:>8}  {}",
        "NAMESPACE", "POD", "CONTAINER", "USAGE", "LIMIT", "USE%", "TREND", "GROWTH/MIN", "TO LIMIT", "KILLS", "KILLS/1H", "CGROUP"
    ));
    for r in rows.iter().take(limit) {
        let container = match (&r.pod, &r.container) {
            (Some(_), None) => "(pod)",
            (_, c) => or_dash(c.as_deref()),
        };
        lines.push(format!(
            "{:<14} {:<28} {:<16} {:>9} {:>9} {:>6.1} {:<9} {:>10} {:>8} {:>6} {:>8}  {}",
            or_dash(r.namespace.as_deref()),
            or_dash(r.pod.as_deref()),
            container,
            human(Some(r.usage_bytes)),
            human(Some(r.limit_bytes)),
            r.usage_pct,
            r.trend.kind(),
            r.growth_bytes_per_min.map_or("-".into(), |g| format!("{}{}", if g < 0 { "-" } else { "" }, human(Some(g.unsigned_abs())))),
            eta(r.seconds_to_limit),
            r.oom_kills.map_or("-".into(), |k| k.to_string()),
            r.oom_kills_last_hour.map_or("-".into(), |k| k.to_string()),
            r.cgroup,
        ));
    }
    lines
        .into_iter()
        .map(|l| crate::output::escape_controls(&l).chars().take(width).collect())
        .collect()
}

pub async fn run(args: TopArgs) -> Result<()> {
    let filter = Filter::new(&args.filter)?;
    let h = Hierarchies::detect().context("reading the cgroup mounts")?;
    let Some((version, _)) = h.memory else {
        anyhow::bail!("no memory cgroup hierarchy is mounted (neither cgroup v2 with the memory controller nor v1 memory)");
    };
    let attributor = args.k8s.attributor(args.k8s.client().await?);
    let history = Arc::new(History::default());
    let stop = Arc::new(AtomicBool::new(false));
    history_sampler::spawn(&h, history.clone(), stop.clone()).context("starting the sampler")?;
    // The first walk and sample.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut kills = KillLog::default();
    let interactive = args.format == TopFormat::Table && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let snapshot = |kills: &mut KillLog| rows(&history, version, &h, &attributor, &filter, kills);
    if !interactive {
        let rows = snapshot(&mut kills);
        let mut out = std::io::stdout().lock();
        match args.format {
            TopFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?,
            TopFormat::Table => {
                for l in table(&rows, "now", args.rows.unwrap_or(usize::MAX), usize::MAX) {
                    writeln!(out, "{l}")?;
                }
            }
        }
        return Ok(());
    }
    let since = chrono::Local::now().format("%H:%M:%S").to_string();
    tokio::task::block_in_place(|| interactive_loop(&args, &since, || snapshot(&mut kills)))
}

/// Redraws every interval on the alternate screen until q, Esc or Ctrl-C.
fn interactive_loop(args: &TopArgs, since: &str, mut snapshot: impl FnMut() -> Vec<Row>) -> Result<()> {
    use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyModifiers};
    use crossterm::{cursor, execute, queue, terminal};
    let mut out = std::io::stdout();
    terminal::enable_raw_mode().context("the terminal")?;
    execute!(out, terminal::EnterAlternateScreen, cursor::Hide)?;
    let result = (|| -> Result<()> {
        loop {
            let rows = snapshot();
            let (w, h) = terminal::size().unwrap_or((200, 50));
            let room = usize::from(h).saturating_sub(2);
            queue!(out, cursor::MoveTo(0, 0), terminal::Clear(terminal::ClearType::All))?;
            for l in table(&rows, since, args.rows.unwrap_or(room).min(room), usize::from(w)) {
                write!(out, "{l}\r\n")?;
            }
            out.flush()?;
            let deadline = Instant::now() + args.interval;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                if !event::poll(left)? {
                    break;
                }
                if let Event::Key(KeyEvent { code, modifiers, .. }) = event::read()? {
                    let ctrl_c = code == KeyCode::Char('c') && modifiers.contains(KeyModifiers::CONTROL);
                    if ctrl_c || matches!(code, KeyCode::Char('q') | KeyCode::Esc) {
                        return Ok(());
                    }
                }
            }
        }
    })();
    execute!(out, cursor::Show, terminal::LeaveAlternateScreen)?;
    terminal::disable_raw_mode()?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kills_of_the_last_hour_count_from_the_first_sight() {
        let mut k = KillLog::default();
        let t0 = Instant::now();
        assert_eq!(k.observe("/a", 5, t0), None, "the kills before are not known to be recent");
        assert_eq!(k.observe("/a", 7, t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(k.observe("/a", 8, t0 + Duration::from_secs(3000)), Some(3));
        assert_eq!(k.observe("/a", 8, t0 + Duration::from_secs(3700)), Some(1), "the first two are over an hour old");
    }

    #[test]
    fn the_table_reads_like_kubectl_top() {
        let row = |cgroup: &str, pct: f64, pod: Option<&str>, container: Option<&str>| Row {
            cgroup: cgroup.into(),
            namespace: pod.map(|_| "shop".into()),
            pod: pod.map(Into::into),
            container: container.map(Into::into),
            usage_bytes: 96 << 20,
            limit_bytes: 128 << 20,
            usage_pct: pct,
            trend: Trend::Steady,
            growth_bytes_per_min: Some(-(1 << 20)),
            seconds_to_limit: Some(300),
            oom_kills: Some(2),
            oom_kills_last_hour: None,
        };
        let rows = [row("/kubepods/pod1/c1", 75.0, Some("cart-1"), Some("app")), row("/kubepods/pod1", 60.0, Some("cart-1"), None), row("/t\x1b[2J", 1.0, None, None)];
        let t = table(&rows, "12:00:00", 10, 300);
        assert_eq!(t.len(), 5);
        let cells: Vec<&str> = t[2].split_whitespace().collect();
        assert_eq!(cells, ["shop", "cart-1", "app", "96.0MiB", "128.0MiB", "75.0", "steady", "-1.0MiB", "5m", "2", "-", "/kubepods/pod1/c1"]);
        // Columns line up under the header.
        for (col, cell) in [("USAGE", "96.0MiB"), ("TREND", "steady"), ("CGROUP", "/kubepods")] {
            let end = |l: &str, w: &str| l.find(w).unwrap() + if col == "USAGE" { w.len() } else { 0 };
            assert_eq!(end(&t[1], col), end(&t[2], cell), "{col}:\n{}\n{}", t[1], t[2]);
        }
        assert!(t[3].contains(" (pod) "), "{}", t[3]);
        assert!(!t[4].contains('\x1b'), "a cgroup name cannot drive the terminal: {:?}", t[4]);
        assert!(table(&rows, "12:00:00", 10, 120).iter().all(|l| l.chars().count() <= 120), "cut to the terminal's width");
        assert_eq!(table(&rows, "now", 1, 200).len(), 3);
    }
}
