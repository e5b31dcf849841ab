//! What the memory history costs: `oomtrace watch` (no Kubernetes) idle with 0, 100 and 1 000
//! limited memory cgroups on the host, side by side in one run. The sampling's CPU and memory
//! are the differences to the run without them. Budget at 1 000 cgroups: at most 0.5 % of a
//! core and 4 KiB per cgroup.
use super::daemon::{measure, settle_rss, Cost};
use super::observers::OomtraceWatch;
use super::util::{mib, r3, sleep};
use super::Ctx;
use anyhow::Result;
use oomtrace_tests::cgroup::TestCgroup;
use serde_json::{json, Value};
use std::time::Duration;

/// The cgroup counts measured; the first is the baseline.
pub const COUNTS: [usize; 3] = [0, 100, 1000];
pub const CPU_BUDGET_PCT: f64 = 0.5;
pub const BYTES_BUDGET: f64 = 4096.0;

pub struct Point {
    pub cgroups: usize,
    pub cost: Cost,
    /// Usage files the process holds open (one per followed cgroup), from /proc/<pid>/fd.
    pub followed: usize,
}

pub struct HistoryResult {
    pub points: Vec<Point>,
}

impl HistoryResult {
    /// CPU (% of a core) and bytes per cgroup of `p` over the baseline.
    fn over_base(&self, p: &Point) -> Option<(f64, f64)> {
        let base = self.points.first()?;
        let n = p.cgroups.checked_sub(base.cgroups).filter(|&n| n > 0)? as f64;
        Some((p.cost.cpu_pct() - base.cost.cpu_pct(), (p.cost.rss as f64 - base.cost.rss as f64) / n))
    }

    pub fn json(&self) -> Value {
        let points: Vec<Value> = self
            .points
            .iter()
            .map(|p| {
                let over = self.over_base(p);
                json!({
                    "cgroups": p.cgroups,
                    "followed": p.followed,
                    "cost": p.cost.json(),
                    "sampling_cpu_pct": over.map(|o| r3(o.0)),
                    "bytes_per_cgroup": over.map(|o| r3(o.1)),
                })
            })
            .collect();
        json!({"points": points, "cpu_budget_pct": CPU_BUDGET_PCT, "bytes_per_cgroup_budget": BYTES_BUDGET})
    }

    pub fn print(&self) {
        println!("\n== memory history cost (`oomtrace watch`, idle) ==");
        for p in &self.points {
            let over = match self.over_base(p) {
                Some((cpu, bytes)) => {
                    let within = |ok: bool| if ok { "within" } else { "OVER" };
                    format!(
                        "; sampling {cpu:+.3} % of a core ({} {CPU_BUDGET_PCT} %), {:.2} KiB per cgroup ({} 4 KiB)",
                        within(cpu <= CPU_BUDGET_PCT),
                        bytes / 1024.0,
                        within(bytes <= BYTES_BUDGET)
                    )
                }
                None => String::new(),
            };
            println!(
                "{:>5} limited cgroups (followed {}): {}{over}",
                p.cgroups,
                p.followed,
                p.cost.show()
            );
        }
        if let Some(p) = self.points.last() {
            println!("(VmRSS {:.1} MiB at {} cgroups)", mib(p.cost.rss), p.cgroups);
        }
    }
}

/// The cgroup usage files `pid` holds open: the cgroups its sampler follows.
fn followed(pid: u32) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return 0 };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|t| t.file_name().is_some_and(|n| n == "memory.current" || n == "memory.usage_in_bytes"))
        .count()
}

/// Each of [`COUNTS`]: make that many limited cgroups, start `oomtrace watch`, let its
/// sampler find them, then measure it idle over `window`.
pub fn cost(ctx: &Ctx, window: Duration) -> Result<HistoryResult> {
    let mut points = Vec::new();
    for n in COUNTS {
        say!("memory history cost with {n} limited cgroups ({} s)", window.as_secs());
        let cgroups: Vec<TestCgroup> = (0..n)
            .map(|i| {
                let cg = TestCgroup::new(&format!("oomtrace-bench-h{i}"))?;
                cg.set_limit(64 << 20)?;
                Ok(cg)
            })
            .collect::<Result<_>>()?;
        let w = OomtraceWatch::start(&ctx.oomtrace, &["--no-kubernetes"], &[])?;
        // Two rescans, then the memory it settles at.
        sleep(Duration::from_secs(5))?;
        settle_rss(w.proc.pid(), Duration::from_secs(10))?;
        let cost = measure(w.proc.pid(), window)?;
        let followed = followed(w.proc.pid());
        if followed < n {
            anyhow::bail!("the sampler follows {followed} of {n} limited cgroups: the cost would be measured on too few");
        }
        points.push(Point { cgroups: n, cost, followed });
        drop(w);
        drop(cgroups);
    }
    Ok(HistoryResult { points })
}
