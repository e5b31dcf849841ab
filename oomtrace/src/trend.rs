//! How the OOM cgroup's usage moved before the kill (`oom.trend`), from its memory history.
//!
//! The rules, in order (the README lists the same thresholds):
//! 1. `unknown`: the history spans less than [`MIN_SPAN_S`] (a cgroup created seconds before
//!    the kill, or one the sampler had not found yet);
//! 2. `spike`: a sample under half the limit at most [`SPIKE_S`] before the kill; it starts
//!    from the lowest sample of those seconds (the burst's start, however fast it grew);
//! 3. `leak`: a least-squares line over at least [`LEAK_MIN_S`] (to the nearest 15 s sample) explains at least
//!    [`LEAK_R2`] of the variance, rising by at least [`LEAK_MIN_GROWTH`] of the limit over
//!    that window; the longest such window ending at the kill gives `since_s`;
//! 4. `at_limit`: every sample of at least the last [`AT_LIMIT_S`] within [`AT_LIMIT_SLACK`]
//!    of the limit;
//! 5. `steady`: none of these.
use crate::history::{Sample, COARSE_EVERY};
use crate::model::Trend;
use crate::output::human;

pub const MIN_SPAN_S: f64 = 20.0;
pub const SPIKE_S: f64 = 10.0;
pub const LEAK_MIN_S: f64 = 300.0;
pub const LEAK_R2: f64 = 0.8;
pub const LEAK_MIN_GROWTH: f64 = 0.1;
pub const AT_LIMIT_S: f64 = 30.0;
pub const AT_LIMIT_SLACK: f64 = 0.05;
/// The windows tried for a leak, longest first (seconds before the kill).
const LEAK_WINDOWS: [f64; 6] = [3600.0, 1800.0, 900.0, 600.0, 450.0, LEAK_MIN_S];

/// The trend of `samples` (oldest first) against `limit`.
pub fn classify(samples: &[Sample], limit: u64) -> Trend {
    let Some(oldest) = samples.first() else { return Trend::Unknown };
    if oldest.age_s < MIN_SPAN_S || limit == 0 {
        return Trend::Unknown;
    }
    // The low point of the last SPIKE_S (the latest, among equals): where the burst began.
    let low = samples.iter().rev().take_while(|s| s.age_s <= SPIKE_S).min_by_key(|s| s.bytes);
    if let Some(s) = low.filter(|s| s.bytes < limit / 2) {
        return Trend::Spike { from_bytes: s.bytes, seconds: (s.age_s * 10.0).round() / 10.0 };
    }
    if let Some(leak) = leak(samples, limit) {
        return leak;
    }
    let near = (limit as f64 * (1.0 - AT_LIMIT_SLACK)) as u64;
    let at_limit_since = samples.iter().rev().take_while(|s| s.bytes >= near).last().map(|s| s.age_s);
    match at_limit_since {
        Some(since) if since >= AT_LIMIT_S && oldest.age_s >= AT_LIMIT_S => Trend::AtLimit { seconds: since.round() as u64 },
        _ => Trend::Steady,
    }
}

/// The longest window ending at the kill over which usage rose along a line: the whole
/// history first, then each of [`LEAK_WINDOWS`] it spans. A window reaches to the coarse
/// sample nearest its start (they are 15 s apart).
fn leak(samples: &[Sample], limit: u64) -> Option<Trend> {
    let span = samples.first()?.age_s;
    let reach = COARSE_EVERY as f64 / 2.0;
    let windows = std::iter::once(span).chain(LEAK_WINDOWS.into_iter().filter(|&w| w + reach < span));
    for w in windows {
        let window: Vec<&Sample> = samples.iter().filter(|s| s.age_s <= w + reach).collect();
        let Some((slope, r2)) = fit(&window) else { continue };
        let since = window.first().map_or(0.0, |s| s.age_s);
        if since + reach >= LEAK_MIN_S && r2 >= LEAK_R2 && slope * since >= LEAK_MIN_GROWTH * limit as f64 {
            return Some(Trend::Leak { growth_bytes_per_min: (slope * 60.0).round() as u64, since_s: since.round() as u64 });
        }
    }
    None
}

/// Least-squares slope (bytes per second, rising towards the kill) and R².
pub fn fit(samples: &[&Sample]) -> Option<(f64, f64)> {
    let n = samples.len() as f64;
    if samples.len() < 10 {
        return None;
    }
    // x = time going forward (−age), y = bytes.
    let mx = samples.iter().map(|s| -s.age_s).sum::<f64>() / n;
    let my = samples.iter().map(|s| s.bytes as f64).sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for s in samples {
        let (dx, dy) = (-s.age_s - mx, s.bytes as f64 - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    Some((slope, sxy * sxy / (sxx * syy)))
}

/// Minutes or seconds, as a person says a duration.
pub fn duration(s: u64) -> String {
    match s {
        s if s < 120 => format!("{s} s"),
        s => format!("{} min", (s + 30) / 60),
    }
}

/// What the verdict adds for a trend; nothing for `steady` and `unknown`.
pub fn phrase(t: &Trend, limit: Option<u64>) -> Option<String> {
    match t {
        Trend::Leak { growth_bytes_per_min, since_s } => Some(format!(
            "grew steadily {}/min for {} before the kill; looks like a leak: a higher limit only delays the next kill",
            human(Some(*growth_bytes_per_min)),
            duration(*since_s)
        )),
        Trend::Spike { from_bytes, seconds } => {
            Some(format!("jumped from {} to {} in {seconds} s", human(Some(*from_bytes)), human(limit)))
        }
        Trend::AtLimit { seconds } => Some(format!(
            "sat within {} % of the limit for {} before the kill: a working set that does not fit, or a cgroup living on reclaim",
            (AT_LIMIT_SLACK * 100.0) as u64,
            duration(*seconds)
        )),
        Trend::Steady | Trend::Unknown => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// One sample a second for the last 2 minutes, every 15 s before that, back `span` s.
    fn samples(span: u64, f: impl Fn(f64) -> u64) -> Vec<Sample> {
        let mut ages: Vec<u64> = (120..=span).rev().filter(|a| a % 15 == 0).collect();
        ages.extend((1..120.min(span + 1)).rev());
        ages.into_iter().map(|a| Sample { age_s: a as f64 + 0.4, bytes: f(a as f64 + 0.4) }).collect()
    }

    #[test]
    fn each_kind_from_its_shape() {
        let limit = 320 * MIB;
        // 1 MiB/s for 5 min 20 s, with a little noise.
        let leak = samples(318, |a| (318.0 - a) as u64 * MIB + (a as u64 % 3) * 100_000);
        match classify(&leak, limit) {
            Trend::Leak { growth_bytes_per_min, since_s } => {
                assert!((growth_bytes_per_min as f64 / (60 * MIB) as f64 - 1.0).abs() < 0.05, "{growth_bytes_per_min}");
                assert!((300..=320).contains(&since_s), "{since_s}");
            }
            t => panic!("{t:?}"),
        }
        // Flat at 100 MiB, then from there to the limit in 2 s.
        let spike = samples(60, |a| if a > 2.0 { 100 * MIB } else { 300 * MIB });
        assert_eq!(classify(&spike, limit), Trend::Spike { from_bytes: 100 * MIB, seconds: 2.4 });
        // A slower burst, sampled on its way up: it began at the low point, not at the last
        // sample under half.
        let ramp = samples(60, |a| if a > 5.0 { 50 * MIB } else { 50 * MIB + ((5.0 - a) * 30.0) as u64 * MIB });
        assert_eq!(classify(&ramp, limit), Trend::Spike { from_bytes: 50 * MIB, seconds: 5.4 });
        // At 97 % for 40 s, after a climb.
        let at = samples(100, |a| if a > 40.0 { 150 * MIB } else { limit * 97 / 100 });
        assert_eq!(classify(&at, limit), Trend::AtLimit { seconds: 39 });
        // Flat at 80 %, then killed: none of the above.
        assert_eq!(classify(&samples(600, |_| limit * 8 / 10), limit), Trend::Steady);
        // Ten seconds of history: too little to say.
        assert_eq!(classify(&samples(10, |_| 0), limit), Trend::Unknown);
        assert_eq!(classify(&[], limit), Trend::Unknown);
    }

    #[test]
    fn a_short_or_noisy_climb_is_no_leak() {
        let limit = 320 * MIB;
        // Linear, but only for 4 minutes.
        let short = samples(240, |a| (250.0 - a) as u64 * MIB);
        assert!(!matches!(classify(&short, limit), Trend::Leak { .. }));
        // Ten minutes of a saw tooth that only ends high.
        let saw = samples(600, |a| ((a as u64 / 60) % 2) * 200 * MIB + 50 * MIB);
        assert!(!matches!(classify(&saw, limit), Trend::Leak { .. }));
    }

    #[test]
    fn phrases_read_like_a_person() {
        let p = phrase(&Trend::Leak { growth_bytes_per_min: 4089446, since_s: 840 }, None).unwrap();
        assert_eq!(p, "grew steadily 3.9MiB/min for 14 min before the kill; looks like a leak: a higher limit only delays the next kill");
        let p = phrase(&Trend::Spike { from_bytes: 120 * MIB, seconds: 2.0 }, Some(512 * MIB)).unwrap();
        assert_eq!(p, "jumped from 120.0MiB to 512.0MiB in 2 s");
        assert_eq!(phrase(&Trend::Steady, None), None);
    }
}
