//! Daemon cost: idle CPU and memory of `oomtrace watch`, without Kubernetes and with pod
//! indexes of a full node (110 pods, kubelet's default maximum) and of 10 000 pods served by the
//! test API server, and its CPU under a churn of pod updates.
use super::observers::OomtraceWatch;
use super::util::{check_interrupted, cpu_seconds, mib, r3, sleep, status_kb};
use anyhow::{bail, Result};
use oomtrace_tests::apiserver::{pod, ApiServer};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Default)]
pub struct Cost {
    pub window_s: f64,
    pub cpu_s: f64,
    pub rss: u64,
    pub hwm: u64,
    /// Threads of the daemon.
    pub threads: u64,
}

impl Cost {
    pub fn cpu_pct(&self) -> f64 {
        self.cpu_s / self.window_s * 100.0
    }

    pub fn json(&self) -> Value {
        json!({
            "idle_window_s": r3(self.window_s),
            "idle_cpu_s": r3(self.cpu_s),
            "idle_cpu_pct": r3(self.cpu_pct()),
            "vm_rss_bytes": self.rss,
            "vm_hwm_bytes": self.hwm,
            "threads": self.threads,
        })
    }

    pub fn show(&self) -> String {
        format!(
            "CPU {:.3}% ({:.2} s over {:.0} s), VmRSS {:.1} MiB, VmHWM {:.1} MiB",
            self.cpu_pct(),
            self.cpu_s,
            self.window_s,
            mib(self.rss),
            mib(self.hwm)
        )
    }
}

pub fn measure(pid: u32, window: Duration) -> Result<Cost> {
    let c0 = cpu_seconds(pid)?;
    let t0 = Instant::now();
    sleep(window)?;
    let c1 = cpu_seconds(pid)?;
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Ok(Cost {
        window_s: t0.elapsed().as_secs_f64(),
        cpu_s: c1 - c0,
        rss: status_kb(pid, "VmRSS")?,
        hwm: status_kb(pid, "VmHWM")?,
        threads,
    })
}

/// Polls VmRSS until it stops moving (3 samples 500 ms apart within 1 %), at most `timeout`.
pub fn settle_rss(pid: u32, timeout: Duration) -> Result<u64> {
    let end = Instant::now() + timeout;
    let mut last = Vec::new();
    loop {
        check_interrupted()?;
        let rss = status_kb(pid, "VmRSS")?;
        last.push(rss);
        if last.len() >= 3 {
            let w = &last[last.len() - 3..];
            let (lo, hi) = (w.iter().min().unwrap(), w.iter().max().unwrap());
            if (hi - lo) as f64 <= *hi as f64 * 0.01 || Instant::now() > end {
                return Ok(rss);
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `oomtrace watch` with no Kubernetes: idle CPU over `window`, RSS.
pub fn idle(bin: &Path, window: Duration) -> Result<Cost> {
    say!("daemon idle cost ({} s, {})", window.as_secs(), bin.display());
    let w = OomtraceWatch::start(bin, &["--no-kubernetes"], &[])?;
    sleep(Duration::from_secs(1))?;
    settle_rss(w.proc.pid(), Duration::from_secs(5))?;
    measure(w.proc.pid(), window)
}

/// CPU of the daemon while the API server changes pods at a steady rate.
pub struct Churn {
    pub updates: usize,
    pub window_s: f64,
    pub cpu_s: f64,
    /// VmRSS right after the churn.
    pub rss_after: u64,
}

impl Churn {
    pub fn rate(&self) -> f64 {
        self.updates as f64 / self.window_s
    }

    pub fn cpu_pct(&self) -> f64 {
        self.cpu_s / self.window_s * 100.0
    }

    pub fn json(&self) -> Value {
        json!({
            "updates": self.updates,
            "window_s": r3(self.window_s),
            "updates_per_s": r3(self.rate()),
            "cpu_s": r3(self.cpu_s),
            "cpu_pct": r3(self.cpu_pct()),
            "vm_rss_after_bytes": self.rss_after,
        })
    }
}

pub struct PodsResult {
    pub pods: usize,
    /// Size of the pods on this node as JSON (what one unpaginated LIST carries; the test API
    /// server ignores `limit`, a real one pages by 500).
    pub list_json_bytes: usize,
    pub node: String,
    pub sync_s: f64,
    pub synced_line: String,
    pub cost: Cost,
    pub churn: Option<Churn>,
}

impl PodsResult {
    pub fn json(&self) -> Value {
        json!({
            "pods_on_node": self.pods,
            "pods_json_bytes": self.list_json_bytes,
            "note": "the test API server answers the LIST in one page (it ignores limit=500), so the whole list is decoded at once",
            "node": self.node,
            "time_to_sync_s": r3(self.sync_s),
            "synced_log": self.synced_line,
            "cost": self.cost.json(),
            "churn": self.churn.as_ref().map(Churn::json),
        })
    }
}

/// A realistic pod: 1–3 containers with containerd IDs, limits/requests per QoS class,
/// owned by a Deployment's ReplicaSet. Each `generation` gives its containers new IDs (they
/// restarted), so the index's container-ID history moves.
fn bench_pod(i: usize, node: &str, generation: usize) -> impl serde::Serialize {
    let ns = format!("team-{:03}", i % 120);
    let app = format!("svc-{:04}", i / 8);
    let hash = format!("{:010x}", (i as u64 / 8).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 24);
    let name = format!("{app}-{hash}-{:05x}", (i as u64).wrapping_mul(0x2545_f491) & 0xfffff);
    let uid = format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (i as u64 * 2_654_435_761) & 0xffff_ffff,
        i & 0xffff,
        i & 0xfff,
        (i >> 12) & 0xfff,
        (i as u64).wrapping_mul(0x5851_f42d_4c95_7f2d) & 0xffff_ffff_ffff
    );
    let cid = |k: usize| {
        format!(
            "containerd://{:016x}{:016x}{:016x}{:016x}",
            i,
            k + generation * 8,
            i * 31 + k,
            (i as u64) ^ 0xdead_beef
        )
    };
    let (qos, limit, request) = match i % 3 {
        0 => ("Guaranteed", Some("512Mi"), Some("512Mi")),
        1 => ("Burstable", Some("1Gi"), Some("256Mi")),
        _ => ("BestEffort", None, None),
    };
    let ids: Vec<String> = (0..3).map(cid).collect();
    let mut containers = vec![("app", ids[0].as_str(), limit, request)];
    if i.is_multiple_of(2) {
        containers.push((
            "istio-proxy",
            ids[1].as_str(),
            limit.map(|_| "256Mi"),
            request.map(|_| "128Mi"),
        ));
    }
    if i.is_multiple_of(7) {
        containers.push((
            "log-shipper",
            ids[2].as_str(),
            limit.map(|_| "128Mi"),
            request.map(|_| "64Mi"),
        ));
    }
    pod(&ns, &name, &uid, node, qos, &containers, Some((&app, &hash)))
}

/// `oomtrace watch --kubeconfig …` against the test API server holding `n` pods on this
/// node: time to sync, then RSS once settled, and idle CPU; then, with `churn_per_s`, its CPU
/// while the server updates that many pods per second (round robin) for `window`.
pub fn with_pods(bin: &Path, n: usize, window: Duration, churn_per_s: Option<u32>) -> Result<PodsResult> {
    say!("daemon with a {n}-pod index (test API server)");
    let node = "oomtrace-bench-node".to_string();
    let api = ApiServer::start();
    for i in 0..n {
        api.add_pod(bench_pod(i, &node, 0));
    }
    // A few pods elsewhere, filtered out by the node field selector.
    for i in 0..100 {
        api.add_pod(bench_pod(n + i, "some-other-node", 0));
    }
    let list_json_bytes: usize = api
        .pods()
        .iter()
        .filter(|p| p["spec"]["nodeName"] == node.as_str())
        .map(|p| serde_json::to_vec(p).map(|v| v.len()).unwrap_or(0))
        .sum();
    let dir = std::env::temp_dir().join(format!("oomtrace-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = RemoveDir(dir.clone());
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig)?;
    let kc = kubeconfig.to_string_lossy().into_owned();
    let t0 = Instant::now();
    let w = OomtraceWatch::start(
        bin,
        &["-v", "--kubeconfig", &kc],
        &[("NODE_NAME", &node), ("RUST_LOG", "info")],
    )?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let synced_line = loop {
        check_interrupted()?;
        if let Some(l) = w
            .stderr_lines()
            .into_iter()
            .find(|l| l.contains("initial pod list synced"))
        {
            break l;
        }
        if Instant::now() > deadline {
            bail!(
                "oomtrace did not sync its pod index within 120 s; stderr:\n{}",
                w.stderr_text()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let sync_s = t0.elapsed().as_secs_f64();
    if !synced_line.contains(&format!("live={n}")) {
        say!("warning: the index did not report live={n}: {synced_line}");
    }
    settle_rss(w.proc.pid(), Duration::from_secs(20))?;
    let cost = measure(w.proc.pid(), window)?;
    let churn = match churn_per_s {
        Some(rate) if n > 0 => Some(churn(&api, &node, n, rate, window, w.proc.pid())?),
        _ => None,
    };
    drop(w);
    drop(api);
    Ok(PodsResult {
        pods: n,
        list_json_bytes,
        node,
        sync_s,
        synced_line,
        cost,
        churn,
    })
}

/// Updates `rate` pods per second, paced, for `window`, and measures the daemon's CPU over it.
fn churn(api: &ApiServer, node: &str, n: usize, rate: u32, window: Duration, pid: u32) -> Result<Churn> {
    say!("daemon under {rate} pod updates/s ({} s)", window.as_secs());
    let every = Duration::from_secs(1) / rate.max(1);
    let c0 = cpu_seconds(pid)?;
    let t0 = Instant::now();
    let mut updates = 0;
    while t0.elapsed() < window {
        check_interrupted()?;
        if api.update_pod(bench_pod(updates % n, node, 1 + updates / n)).is_none() {
            bail!("the test API server lost pod {}", updates % n);
        }
        updates += 1;
        if let Some(wait) = (t0 + every * updates as u32).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let window_s = t0.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds(pid)? - c0;
    Ok(Churn {
        updates,
        window_s,
        cpu_s,
        rss_after: status_kb(pid, "VmRSS")?,
    })
}

struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
