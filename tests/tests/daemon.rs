//! `oomtrace daemon` end to end: a real kill → one JSON line (schema-valid), the metric, the
//! Kubernetes Event on the pod, and readiness that waits for the pod index.
use oomtrace_tests::apiserver::{container_id, containerd_id, pod, ApiServer};
use oomtrace_tests::cgroup::{Hog, TestCgroup};
use oomtrace_tests::oomtrace_proc::{victim_is, Watch};
use oomtrace_tests::require_root_and_btf;
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const UID: &str = "7a1c2e3d-4b5f-4a6e-8c7d-9e0f1a2b3c4d";

fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the daemon");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The address the daemon says it serves on (`--listen 127.0.0.1:0` picks a free port).
fn listen_addr(w: &Watch) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(addr) = w
            .stderr_text()
            .lines()
            .find_map(|l| l.split("/readyz on ").nth(1).map(|a| a.trim().to_string()))
        {
            return addr;
        }
        assert!(Instant::now() < deadline, "no listen address in:\n{}", w.stderr_text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of the sample named exactly `series` (name and labels).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_kill_becomes_a_json_line_a_metric_and_an_event_on_the_pod() {
    require_root_and_btf();
    let api = ApiServer::start();
    let node = format!("node-daemon-{}", std::process::id());
    let kubeconfig = std::env::temp_dir().join(format!("oomtrace-daemon-kubeconfig-{}", std::process::id()));
    api.write_kubeconfig(&kubeconfig).unwrap();
    let cid = container_id("daemon-app");
    api.add_pod(pod(
        "shop",
        "cart-5c6d7e8f9-abcde",
        UID,
        &node,
        "Burstable",
        &[("app", &containerd_id("daemon-app"), Some("48Mi"), Some("16Mi"))],
        Some(("cart", "5c6d7e8f9")),
    ));
    // Down at start: ready must wait for the pod index.
    api.stop();

    let mut root = TestCgroup::new("oomtrace-daemon").unwrap();
    let container = {
        let p = root.child("kubepods").unwrap().child("burstable").unwrap().child(&format!("pod{UID}")).unwrap();
        let c = p.child(&cid).unwrap();
        c.set_limit(48 * MIB).unwrap();
        c.rel.clone()
    };

    let w = Watch::start_cmd(
        &["daemon", "-v", "--warnings", "--listen", "127.0.0.1:0", "--kubeconfig", kubeconfig.to_str().unwrap()],
        &[],
        &[("NODE_NAME", &node)],
    );
    let addr = listen_addr(&w);
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    let (code, body) = http_get(&addr, "/readyz");
    assert_eq!((code, body.trim()), (503, "pod index not synced"));
    api.restart();
    wait_for("/readyz to flip to ready", || http_get(&addr, "/readyz").0 == 200);

    let mut hog = TestCgroup::handle(&container).unwrap().spawn_hog(&Hog::anon(256)).unwrap();
    let pid = hog.id();
    assert_eq!(hog.wait().unwrap().signal(), Some(libc::SIGKILL));
    let evs = w.collect(1, Duration::from_secs(30), victim_is(pid));
    assert_eq!(evs.len(), 1, "stderr:\n{}", w.stderr_text());
    let e = &evs[0];
    assert_eq!(e["k8s"]["pod"], "cart-5c6d7e8f9-abcde");
    assert_eq!(e["resource"]["k8s.container.name"], "app");
    assert_eq!(e["resource"]["process.pid"], pid);

    let (code, metrics) = http_get(&addr, "/metrics");
    assert_eq!(code, 200);
    let line = r#"oomtrace_oom_kills_total{namespace="shop",pod="cart-5c6d7e8f9-abcde",container="app",constraint="memcg"} 1"#;
    assert!(metrics.lines().any(|l| l == line), "{line} missing from:\n{metrics}");
    assert!(metrics.contains("oomtrace_last_oom_limit_bytes{namespace=\"shop\",pod=\"cart-5c6d7e8f9-abcde\",container=\"app\"} 50331648"));
    assert!(metrics.lines().any(|l| l == "oomtrace_events_lost_total 0"));
    assert!(metrics.contains("oomtrace_build_info{"));
    // The memcg reclaims at its limit before it kills: the early warning came first, and is
    // counted for the same container.
    let warned = sample(
        &metrics,
        r#"oomtrace_memory_pressure_events_total{namespace="shop",pod="cart-5c6d7e8f9-abcde",container="app",reason="max"}"#,
    );
    assert!(warned.is_some_and(|n| n >= 1.0), "{metrics}");
    assert!(metrics.trim_end().ends_with("# EOF"));

    // Other tests' kills on this host reach the daemon too (as Node events): look at the pod's.
    let pod_events = || -> Vec<serde_json::Value> {
        api.events().into_iter().filter(|e| e["regarding"]["kind"] == "Pod").collect()
    };
    wait_for("the OOMKill Event", || !pod_events().is_empty());
    let ev = &pod_events()[0];
    assert_eq!(ev["reason"], "OOMKill", "{ev:#}");
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["reportingController"], "oomtrace");
    assert_eq!(ev["reportingInstance"], node.as_str());
    assert_eq!(ev["regarding"]["kind"], "Pod");
    assert_eq!(ev["regarding"]["name"], "cart-5c6d7e8f9-abcde");
    assert_eq!(ev["regarding"]["namespace"], "shop");
    assert_eq!(ev["regarding"]["uid"], UID);
    let note = ev["note"].as_str().unwrap();
    assert!(
        note.starts_with(&format!("oomtrace-hog (pid {pid}) in container app killed by the OOM killer: rss ")),
        "{note}"
    );
    assert!(note.contains("container limit 48.0MiB, usage 48.0MiB"), "{note}");
    assert!(note.ends_with("; the container keeps running"), "{note}");

    // A second kill of the same container: the Event becomes a series, not a new object.
    let mut hog = TestCgroup::handle(&container).unwrap().spawn_hog(&Hog::anon(256)).unwrap();
    assert_eq!(hog.wait().unwrap().signal(), Some(libc::SIGKILL));
    wait_for("the Event series", || pod_events().iter().any(|e| e["series"]["count"] == 2));
    // events() logs every POST and PATCH: one object, created then patched.
    let names: std::collections::BTreeSet<String> =
        pod_events().iter().map(|e| e["metadata"]["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names.len(), 1, "{:#?}", pod_events());

    let status = w.stop();
    assert!(status.success());
    let _ = std::fs::remove_file(&kubeconfig);
    drop(root);
}

#[test]
fn api_server_unreachable_kills_are_still_printed_and_counted() {
    require_root_and_btf();
    let api = ApiServer::start();
    let kubeconfig = std::env::temp_dir().join(format!("oomtrace-daemon-down-{}", std::process::id()));
    api.write_kubeconfig(&kubeconfig).unwrap();
    api.stop();
    let cg = TestCgroup::new("oomtrace-daemon-down").unwrap();
    cg.set_limit(32 * MIB).unwrap();
    let w = Watch::start_cmd(
        &["daemon", "-v", "--listen", "127.0.0.1:0", "--kubeconfig", kubeconfig.to_str().unwrap()],
        &[],
        &[],
    );
    let addr = listen_addr(&w);
    let mut hog = cg.spawn_hog(&Hog::anon(256)).unwrap();
    let pid = hog.id();
    assert_eq!(hog.wait().unwrap().signal(), Some(libc::SIGKILL));
    assert_eq!(w.collect(1, Duration::from_secs(30), victim_is(pid)).len(), 1);
    // (Other tests' kills on this host are counted too: at least ours.)
    let (_, metrics) = http_get(&addr, "/metrics");
    let kills = sample(&metrics, r#"oomtrace_oom_kills_total{namespace="",pod="",container="",constraint="memcg"}"#);
    assert!(kills.is_some_and(|k| k >= 1.0), "{metrics}");
    // A host process: its Event goes on the Node, and with the API server down it is
    // retried, then dropped and counted.
    wait_for("the dropped Event to be counted", || {
        sample(&http_get(&addr, "/metrics").1, "oomtrace_k8s_events_dropped_total").is_some_and(|v| v >= 1.0)
    });
    let _ = std::fs::remove_file(&kubeconfig);
}
