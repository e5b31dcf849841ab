//! The memory history of every cgroup with a finite memory limit, from which a kill's
//! `oom.history` and `oom.trend` are taken.
//!
//! One sample a second for the last 2 minutes and one every 15 s for the last hour, as KiB in
//! fixed rings: [`COST_PER_CGROUP`] bytes per cgroup, at most [`MAX_CGROUPS`] cgroups (those
//! over the cap are counted, never silently left out). The sampler ([`crate::history_sampler`])
//! writes; the pipeline reads the OOM cgroup's samples up to the kill.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Fine samples kept: one a second for 2 minutes.
pub const FINE: usize = 120;
/// Coarse samples kept: one every [`COARSE_EVERY`] ticks for an hour.
pub const COARSE: usize = 240;
pub const COARSE_EVERY: u64 = 15;
/// Cgroups followed at most (a busy node has a few hundred limited ones).
pub const MAX_CGROUPS: usize = 4096;
/// A removed cgroup's samples are kept this long, and longer while kills are still queued.
pub const KEEP_REMOVED: Duration = Duration::from_secs(60);
/// A slot without a sample (the read failed).
const NONE: u32 = u32::MAX;
/// The points `oom.history` carries at most: every fine sample of the last
/// [`HISTORY_FINE_S`] seconds, the rest spread over the older samples.
pub const HISTORY_POINTS: usize = 60;
pub const HISTORY_FINE_S: f64 = 30.0;

/// One usage sample, `age_s` seconds before the kill.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub age_s: f64,
    pub bytes: u64,
}

/// One cgroup's samples, indexed by tick.
struct Series {
    fine: [u32; FINE],
    coarse: [u32; COARSE],
    first_tick: u64,
    last_tick: u64,
    removed_at: Option<SystemTime>,
    /// The limit when last walked (for `top`; a kill reports the kernel's own).
    limit: u64,
}

/// What one followed cgroup costs: its rings and bookkeeping, a map entry and a path of
/// typical length (a kubelet container cgroup is ~120 bytes).
pub const COST_PER_CGROUP: usize = std::mem::size_of::<Series>() + std::mem::size_of::<(String, Box<Series>)>() + 128;
// The budget is 4 KiB per cgroup; the bench measures the real cost.
const _: () = assert!(COST_PER_CGROUP <= 4096);

impl Series {
    fn new(tick: u64, limit: u64) -> Self {
        Self { fine: [NONE; FINE], coarse: [NONE; COARSE], first_tick: tick, last_tick: tick, removed_at: None, limit }
    }
}

/// The wall-clock time of each tick (shared by every series).
struct Ticks {
    now: u64,
    fine_ms: [u64; FINE],
    coarse_ms: [u64; COARSE],
}

struct Store {
    ticks: Ticks,
    series: HashMap<String, Box<Series>>,
}

/// The shared history: the sampler records, the pipeline reads.
pub struct History {
    store: Mutex<Store>,
    /// Kill records between the ring reader and the history stage: a removed cgroup's
    /// samples stay while any is queued, so its last kill still finds them.
    pending: AtomicU64,
    /// Limited cgroups not followed because of the cap.
    pub untracked: AtomicU64,
    /// Cgroups followed now.
    pub tracked: AtomicU64,
}

impl Default for History {
    fn default() -> Self {
        Self {
            store: Mutex::new(Store {
                ticks: Ticks { now: 0, fine_ms: [0; FINE], coarse_ms: [0; COARSE] },
                series: HashMap::new(),
            }),
            pending: AtomicU64::new(0),
            untracked: AtomicU64::new(0),
            tracked: AtomicU64::new(0),
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn kib(bytes: Option<u64>) -> u32 {
    bytes.map_or(NONE, |b| u32::try_from(b / 1024).unwrap_or(NONE - 1))
}

impl History {
    /// A kill record was queued for the stages.
    pub fn kill_queued(&self) {
        self.pending.fetch_add(1, Relaxed);
    }

    /// The stages took a kill record (and its history, if they wanted it).
    pub fn kill_taken(&self) {
        let _ = self.pending.fetch_update(Relaxed, Relaxed, |p| Some(p.saturating_sub(1)));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One round of samples taken at `at`: `usage` for every followed cgroup (`None` when its
    /// read failed). Cgroups not in `usage` are no longer sampled.
    pub fn record(&self, at: SystemTime, usage: &[(&str, Option<u64>)]) {
        let mut s = self.lock();
        s.ticks.now += 1;
        let tick = s.ticks.now;
        let ms = unix_ms(at);
        s.ticks.fine_ms[fine_slot(tick)] = ms;
        let coarse = tick.is_multiple_of(COARSE_EVERY);
        if coarse {
            s.ticks.coarse_ms[coarse_slot(tick)] = ms;
        }
        for (path, bytes) in usage {
            let Some(series) = s.series.get_mut(*path) else { continue };
            let v = kib(*bytes);
            series.fine[fine_slot(tick)] = v;
            if coarse {
                series.coarse[coarse_slot(tick)] = v;
            }
            series.last_tick = tick;
        }
    }

    /// Follows the limited cgroups in `present` (path, limit) from the next round on; those
    /// no longer present are marked removed at `now` and forgotten after [`KEEP_REMOVED`] with
    /// no kill queued. Returns the paths followed (to sample), within the cap.
    pub fn set_present(&self, present: &[(String, u64)], now: SystemTime, cap: usize) -> Vec<String> {
        let pending = self.pending.load(Relaxed);
        let mut s = self.lock();
        let next = s.ticks.now + 1;
        let here: HashMap<&str, u64> = present.iter().map(|(p, l)| (p.as_str(), *l)).collect();
        s.series.retain(|path, series| {
            if let Some(&limit) = here.get(path.as_str()) {
                series.removed_at = None;
                series.limit = limit;
                return true;
            }
            let removed = *series.removed_at.get_or_insert(now);
            pending > 0 || now.duration_since(removed).unwrap_or_default() < KEEP_REMOVED
        });
        let mut untracked = 0u64;
        for (path, limit) in present {
            if !s.series.contains_key(path) {
                if s.series.len() >= cap {
                    untracked += 1;
                    continue;
                }
                s.series.insert(path.clone(), Box::new(Series::new(next, *limit)));
            }
        }
        self.untracked.store(untracked, Relaxed);
        let followed: Vec<String> = present
            .iter()
            .filter(|(p, _)| s.series.get(p).is_some_and(|x| x.removed_at.is_none()))
            .map(|(p, _)| p.clone())
            .collect();
        self.tracked.store(followed.len() as u64, Relaxed);
        followed
    }

    /// The cgroups followed now, with their limits.
    pub fn followed(&self) -> Vec<(String, u64)> {
        let s = self.lock();
        s.series.iter().filter(|(_, x)| x.removed_at.is_none()).map(|(p, x)| (p.clone(), x.limit)).collect()
    }

    /// The samples of `path` taken up to `kill`, oldest first; `None` when it is not followed.
    pub fn before(&self, path: &str, kill: SystemTime) -> Option<Vec<Sample>> {
        let s = self.lock();
        let series = s.series.get(path)?;
        let kill_ms = unix_ms(kill);
        let mut out = Vec::new();
        let age = |ms: u64| (kill_ms - ms) as f64 / 1000.0;
        // The rings hold the last FINE (COARSE) ticks of every series, the tick times too: a
        // series no longer sampled has only what newer ticks did not overwrite.
        let now = s.ticks.now;
        let fine_from = series.first_tick.max(now.saturating_sub(FINE as u64 - 1));
        // Coarse samples older than the oldest fine one.
        let last_coarse = series.last_tick / COARSE_EVERY;
        let first_coarse =
            series.first_tick.div_ceil(COARSE_EVERY).max((now / COARSE_EVERY).saturating_sub(COARSE as u64 - 1));
        for c in first_coarse..=last_coarse {
            let tick = c * COARSE_EVERY;
            if tick == 0 || tick >= fine_from {
                continue;
            }
            let (ms, v) = (s.ticks.coarse_ms[coarse_slot(tick)], series.coarse[coarse_slot(tick)]);
            if v != NONE && ms <= kill_ms {
                out.push(Sample { age_s: age(ms), bytes: u64::from(v) * 1024 });
            }
        }
        for tick in fine_from..=series.last_tick {
            let (ms, v) = (s.ticks.fine_ms[fine_slot(tick)], series.fine[fine_slot(tick)]);
            if v != NONE && ms <= kill_ms {
                out.push(Sample { age_s: age(ms), bytes: u64::from(v) * 1024 });
            }
        }
        Some(out)
    }
}

fn fine_slot(tick: u64) -> usize {
    (tick % FINE as u64) as usize
}

fn coarse_slot(tick: u64) -> usize {
    ((tick / COARSE_EVERY) % COARSE as u64) as usize
}

/// The points of `oom.history`, `[seconds_before_kill, usage_bytes]` oldest first: every
/// sample of the last [`HISTORY_FINE_S`] s, and older ones evenly spread, [`HISTORY_POINTS`]
/// in all.
pub fn points(samples: &[Sample]) -> Vec<(f64, u64)> {
    let split = samples.partition_point(|s| s.age_s > HISTORY_FINE_S);
    let (older, recent) = samples.split_at(split);
    let recent = &recent[recent.len().saturating_sub(HISTORY_POINTS)..];
    let room = HISTORY_POINTS - recent.len();
    let spread: Vec<&Sample> = if older.len() <= room {
        older.iter().collect()
    } else {
        // `room` picks from oldest to newest, evenly.
        (0..room).map(|i| &older[i * (older.len() - 1) / (room - 1).max(1)]).collect()
    };
    spread.into_iter().chain(recent).map(|s| ((s.age_s * 10.0).round() / 10.0, s.bytes)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000_000;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    /// `n` rounds, one a second, of `f(i)` bytes for cgroup "/a".
    fn run(h: &History, n: u64, f: impl Fn(u64) -> u64) {
        h.set_present(&[("/a".into(), 1 << 30)], at(T0), MAX_CGROUPS);
        for i in 0..n {
            h.record(at(T0 + i * 1000), &[("/a", Some(f(i)))]);
        }
    }

    #[test]
    fn an_hour_of_samples_is_two_minutes_fine_and_the_rest_coarse() {
        let h = History::default();
        run(&h, 4000, |i| i * 1024);
        let kill = at(T0 + 3999 * 1000 + 300);
        let s = h.before("/a", kill).unwrap();
        let fine: Vec<_> = s.iter().filter(|x| x.age_s < FINE as f64).collect();
        assert_eq!(fine.len(), FINE);
        assert_eq!(fine.last().unwrap().bytes, 3999 * 1024);
        assert!((fine.last().unwrap().age_s - 0.3).abs() < 1e-9);
        let coarse = s.len() - FINE;
        // The coarse ring reaches an hour back, minus what the fine ring covers.
        assert!((COARSE - 9..=COARSE).contains(&coarse), "{coarse}");
        assert!(s.windows(2).all(|w| w[0].age_s > w[1].age_s), "oldest first");
        assert!(s[0].age_s <= 3600.0 && s[0].age_s > 3500.0, "{}", s[0].age_s);
        let p = points(&s);
        assert_eq!(p.len(), HISTORY_POINTS);
        assert_eq!(p.iter().filter(|(a, _)| *a <= HISTORY_FINE_S).count(), 30);
        assert_eq!(p[0].0, (s[0].age_s * 10.0).round() / 10.0);
    }

    #[test]
    fn samples_after_the_kill_and_failed_reads_are_left_out() {
        let h = History::default();
        run(&h, 10, |i| (10 - i) << 20);
        h.record(at(T0 + 10_000), &[("/a", None)]);
        // Other cgroups' rounds go on; "/a"'s own samples are not made up from them.
        h.record(at(T0 + 11_000), &[]);
        let s = h.before("/a", at(T0 + 5_500)).unwrap();
        assert_eq!(s.len(), 6);
        assert_eq!(s.last().unwrap().bytes, 5 << 20);
        assert_eq!(h.before("/a", at(T0 + 20_000)).unwrap().len(), 10);
        assert!(h.before("/b", at(T0)).is_none());
        for i in 0..FINE as u64 {
            h.record(at(T0 + 12_000 + i * 1000), &[]);
        }
        assert!(h.before("/a", at(T0 + 500_000)).unwrap().is_empty(), "overwritten by newer ticks");
    }

    #[test]
    fn a_removed_cgroup_is_kept_while_a_kill_is_queued_and_the_cap_is_counted() {
        let h = History::default();
        run(&h, 3, |_| 1 << 20);
        h.kill_queued();
        let gone = h.set_present(&[], at(T0 + 3_600_000), MAX_CGROUPS);
        assert!(gone.is_empty());
        assert!(h.before("/a", at(T0 + 5000)).is_some(), "kept: a kill is queued");
        h.kill_taken();
        h.set_present(&[], at(T0 + 3_600_000 + 1000), MAX_CGROUPS);
        assert!(h.before("/a", at(T0 + 5000)).is_some(), "kept: removed 1 s ago");
        h.set_present(&[], at(T0 + 3_600_000 + 61_000), MAX_CGROUPS);
        assert!(h.before("/a", at(T0 + 5000)).is_none(), "forgotten after KEEP_REMOVED");

        let many: Vec<(String, u64)> = (0..5).map(|i| (format!("/c{i}"), 1 << 20)).collect();
        assert_eq!(h.set_present(&many, at(T0), 3).len(), 3);
        assert_eq!(h.untracked.load(Relaxed), 2);
        assert_eq!(h.tracked.load(Relaxed), 3);
        assert_eq!(h.followed().len(), 3);
    }
}
