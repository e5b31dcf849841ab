//! `oomtrace daemon` end to end: a real kill → one JSON line (schema-valid), the metric, the
//! Kubernetes Event on the pod, and readiness that waits for the pod index.
use oomtrace_tests::apiserver::{container_id, containerd_id, pod, ApiServer};
use oomtrace_tests::cgroup::{Hog, TestCgroup};
use oomtrace_tests::daemon::{http_get, listen_addr, start_ready, wait_for};
use oomtrace_tests::oomtrace_proc::{victim_is, Watch};
use oomtrace_tests::require_root_and_btf;
use k8s_openapi::api::rbac::v1::ClusterRole;
use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::io::Read;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const UID: &str = "7a1c2e3d-4b5f-4a6e-8c7d-9e0f1a2b3c4d";

/// The value of the sample named exactly `series` (name and labels).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
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
    let line = r#"oomtrace_oom_kills_total{namespace="shop",pod="cart-5c6d7e8f9-abcde",container="app",constraint="memcg",owner_kind="Deployment",owner_name="cart",container_init="false"} 1"#;
    assert!(metrics.lines().any(|l| l == line), "{line} missing from:\n{metrics}");
    assert!(metrics.contains("oomtrace_last_oom_limit_bytes{namespace=\"shop\",pod=\"cart-5c6d7e8f9-abcde\",container=\"app\"} 50331648"));
    for stage in ["kernel", "queue", "output", "k8s_event"] {
        let series = format!("oomtrace_events_lost_total{{stage=\"{stage}\"}}");
        assert_eq!(sample(&metrics, &series), Some(0.0), "{series} in:\n{metrics}");
    }
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
    // The failed charge is not counted, so usage sits just under the limit: within one THP
    // charge (2 MiB) of it, never over it.
    let usage: u64 = ev["metadata"]["annotations"]["oomtrace.io/usage-bytes"].as_str().unwrap().parse().unwrap();
    assert!((46 * MIB..=48 * MIB).contains(&usage), "{ev:#}");
    let shown = format!("container limit 48.0MiB, usage {:.1}MiB", usage as f64 / MIB as f64);
    // Then what the kill means for the container (and, for a cgroup the daemon sampled long
    // enough, how its usage moved: see `history.rs`).
    assert!(note.contains(&format!("{shown}; the container keeps running")), "{shown} not in {note}");
    // The same numbers, for programs.
    let a = &ev["metadata"]["annotations"];
    assert_eq!(a["oomtrace.io/container"], "app", "{ev:#}");
    assert_eq!(a["oomtrace.io/pid"], pid.to_string());
    assert_eq!(a["oomtrace.io/comm"], "oomtrace-hog");
    assert_eq!(a["oomtrace.io/limit-bytes"], (48 * MIB).to_string());

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
    // Everything the daemon asked the API server for (a pod index, an Event, its series) is
    // what deploy/rbac.yaml grants, and the ClusterRole grants nothing it did not use.
    let used: BTreeSet<_> = api.requests().iter().filter_map(|r| r.rbac()).collect();
    assert_eq!(cluster_role_grants(), used);
    let _ = std::fs::remove_file(&kubeconfig);
    drop(root);
}

/// `(API group, resource, verb)` granted by the ClusterRole of deploy/rbac.yaml.
fn cluster_role_grants() -> BTreeSet<(String, String, String)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rbac.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
    let role: ClusterRole = docs
        .into_iter()
        .find(|d| d["kind"] == "ClusterRole")
        .map(|d| serde_json::from_value(d).unwrap())
        .expect("a ClusterRole in deploy/rbac.yaml");
    let mut granted = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none(), "{rule:?}");
        for g in rule.api_groups.iter().flatten() {
            for r in rule.resources.iter().flatten() {
                for v in &rule.verbs {
                    assert!(granted.insert((g.clone(), r.clone(), v.clone())), "({g:?}, {r}, {v}) granted twice");
                }
            }
        }
    }
    granted
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
    let kills = sample(&metrics, r#"oomtrace_oom_kills_total{namespace="",pod="",container="",constraint="memcg",owner_kind="",owner_name="",container_init=""}"#);
    assert!(kills.is_some_and(|k| k >= 1.0), "{metrics}");
    // A host process: its Event goes on the Node, and with the API server down it is
    // retried, then dropped and counted.
    wait_for("the dropped Event to be counted", || {
        sample(&http_get(&addr, "/metrics").1, r#"oomtrace_events_lost_total{stage="k8s_event"}"#).is_some_and(|v| v >= 1.0)
    });
    let _ = std::fs::remove_file(&kubeconfig);
}

#[test]
fn kills_in_two_containers_of_one_pod_get_an_event_each() {
    require_root_and_btf();
    let api = ApiServer::start();
    let node = format!("node-daemon-two-{}", std::process::id());
    let kubeconfig = std::env::temp_dir().join(format!("oomtrace-daemon-two-kubeconfig-{}", std::process::id()));
    api.write_kubeconfig(&kubeconfig).unwrap();
    const TWO: &str = "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f";
    let (app, sidecar) = (container_id("two-app"), container_id("two-sidecar"));
    api.add_pod(pod(
        "shop",
        "web-6b7c8d9e0-fghij",
        TWO,
        &node,
        "Burstable",
        &[
            ("app", &containerd_id("two-app"), Some("48Mi"), Some("16Mi")),
            ("sidecar", &containerd_id("two-sidecar"), Some("48Mi"), Some("16Mi")),
        ],
        Some(("web", "6b7c8d9e0")),
    ));
    let mut root = TestCgroup::new("oomtrace-daemon-two").unwrap();
    let containers: Vec<String> = {
        let p = root.child("kubepods").unwrap().child("burstable").unwrap().child(&format!("pod{TWO}")).unwrap();
        [&app, &sidecar]
            .iter()
            .map(|cid| {
                let c = p.child(cid).unwrap();
                c.set_limit(48 * MIB).unwrap();
                c.rel.clone()
            })
            .collect()
    };
    let (w, _addr) = start_ready(&kubeconfig, &node);
    // The current Event objects about this pod.
    let on_pod = || -> Vec<serde_json::Value> {
        api.stored_events().into_iter().filter(|e| e["regarding"]["uid"] == TWO).collect()
    };
    for (i, cg) in containers.iter().enumerate() {
        let mut hog = TestCgroup::handle(cg).unwrap().spawn_hog(&Hog::anon(256)).unwrap();
        assert_eq!(hog.wait().unwrap().signal(), Some(libc::SIGKILL));
        wait_for("the container's Event", || on_pod().len() == i + 1 || on_pod().iter().any(|e| e["series"]["count"] == 2));
    }
    let mut events = on_pod();
    events.sort_by_key(|e| e["regarding"]["fieldPath"].as_str().unwrap_or("").to_string());
    // One Event per container, each a single kill, pointing at its container as kubelet's do.
    assert_eq!(events.len(), 2, "{events:#?}");
    for (e, name) in events.iter().zip(["app", "sidecar"]) {
        assert_eq!(e["regarding"]["fieldPath"], format!("spec.containers{{{name}}}"), "{e:#}");
        assert!(e["note"].as_str().unwrap().contains(&format!(" in container {name} killed ")), "{e:#}");
        assert_eq!(e["metadata"]["annotations"]["oomtrace.io/container"], name, "{e:#}");
        assert!(e["series"].is_null(), "{e:#}");
    }
    assert!(w.stop().success());
    let _ = std::fs::remove_file(&kubeconfig);
    drop(root);
}

#[test]
fn closed_stdout_mid_storm_keeps_the_daemon_running_and_counts_the_lines() {
    require_root_and_btf();
    let cg = TestCgroup::new("oomtrace-daemon-epipe").unwrap();
    cg.set_limit(16 * MIB).unwrap();
    let mut w = Watch::start_cmd(&["daemon", "-v", "--listen", "127.0.0.1:0", "--no-kubernetes"], &[], &[]);
    let addr = listen_addr(&w);
    let mut first = cg.spawn_hog(&Hog::anon(64)).unwrap();
    let pid = first.id();
    assert_eq!(first.wait().unwrap().signal(), Some(libc::SIGKILL));
    assert_eq!(w.collect(1, Duration::from_secs(30), victim_is(pid)).len(), 1);
    // The log pipeline goes away, with nothing left in the pipe.
    w.close_stdout();
    for _ in 0..10 {
        let mut hog = cg.spawn_hog(&Hog::anon(64)).unwrap();
        assert_eq!(hog.wait().unwrap().signal(), Some(libc::SIGKILL));
    }
    let lost = r#"oomtrace_events_lost_total{stage="output"}"#;
    // Ten kills after the close: each line hits the closed pipe.
    wait_for("the failed writes to be counted", || {
        sample(&http_get(&addr, "/metrics").1, lost).is_some_and(|v| v >= 10.0)
    });
    assert!(w.running(), "the daemon exited on a closed stdout; stderr:\n{}", w.stderr_text());
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    assert!(w.stderr_text().contains("writes to stdout failed"), "{}", w.stderr_text());
}

#[test]
fn a_thousand_idle_connections_do_not_stop_the_scrape() {
    require_root_and_btf();
    // Room for the connections in this process.
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid out pointer, then a limit no higher than the hard one.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max.min(8192);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    let w = Watch::start_cmd(&["daemon", "-v", "--listen", "127.0.0.1:0", "--no-kubernetes"], &[], &[]);
    let addr = listen_addr(&w);
    let idle: Vec<std::net::TcpStream> =
        (0..1000).map(|i| std::net::TcpStream::connect(&addr).unwrap_or_else(|e| panic!("connection {i}: {e}"))).collect();
    let started = Instant::now();
    let (code, metrics) = http_get(&addr, "/metrics");
    assert_eq!(code, 200, "{metrics}");
    assert!(metrics.contains("oomtrace_build_info{"), "{metrics}");
    eprintln!("the scrape took {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(2), "the scrape waited {:?}", started.elapsed());
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    // An idle connection is closed once its headers are overdue (5 s).
    let mut last = idle.into_iter().last().unwrap();
    last.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 1];
    let n = last.read(&mut buf);
    let closed = match &n {
        Ok(got) => *got == 0,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(closed, "{n:?}");
    assert!(started.elapsed() < Duration::from_secs(8), "closed after {:?}", started.elapsed());
}

/// The explanation is the one stage that walks the OOM cgroup's tree: its budget (100 ms,
/// 1 024 directories) must hold with 10 001 cgroups below, where a full walk takes seconds
/// (60 ms per 1 024 directories here, 10 times that under emulation). Measured by the
/// daemon's own per-stage histogram: the end-to-end time also holds the victim's procfs read,
/// which waits on the kernel tearing the victim down and has nothing to do with the tree.
#[test]
fn ten_thousand_empty_child_cgroups_do_not_delay_the_next_kill() {
    require_root_and_btf();
    let mut cg = TestCgroup::new("oomtrace-wide").unwrap();
    for i in 0..10_000 {
        cg.child(&format!("empty{i}")).unwrap();
    }
    // Each child's per-CPU statistics are charged to this cgroup (~10 KiB apiece): the limit
    // leaves room for them and the hog.
    cg.set_limit(256 * MIB).unwrap();
    let hog_cg = cg.child("hog").unwrap().rel.clone();
    let hog_cg = TestCgroup::handle(&hog_cg).unwrap();
    let w = Watch::start_cmd(&["daemon", "-v", "--listen", "127.0.0.1:0", "--no-kubernetes"], &[], &[]);
    let addr = listen_addr(&w);
    // A first kill in a plain cgroup, for a histogram that holds a kill with no tree below.
    let plain = TestCgroup::new("oomtrace-wide-baseline").unwrap();
    plain.set_limit(32 * MIB).unwrap();
    let mut hog = plain.spawn_hog(&Hog::anon(64)).unwrap();
    let pid = hog.id();
    assert_eq!(hog.wait().unwrap().signal(), Some(libc::SIGKILL));
    assert_eq!(w.collect(1, Duration::from_secs(30), victim_is(pid)).len(), 1, "{}", w.stderr_text());
    for round in 0..2 {
        let mut hog = hog_cg.spawn_hog(&Hog::anon(512)).unwrap();
        let pid = hog.id();
        assert_eq!(hog.wait().unwrap().signal(), Some(libc::SIGKILL));
        let evs = w.collect(1, Duration::from_secs(30), victim_is(pid));
        assert_eq!(evs.len(), 1, "round {round}: {}", w.stderr_text());
        assert_eq!(evs[0]["oom"]["cgroup"], cg.rel.as_str());
        // Cut short, the explanation still lists the victim, with its RSS at the kill.
        let tasks = evs[0]["oom"]["tasks"].as_array().expect("tasks");
        assert!(tasks.iter().any(|t| t["pid"] == pid), "{:#}", evs[0]);
    }
    wait_for("the cut-short explanations to be counted", || {
        sample(&http_get(&addr, "/metrics").1, "oomtrace_explain_overruns_total").is_some_and(|v| v >= 2.0)
    });
    let metrics = http_get(&addr, "/metrics").1;
    let explain = |le: &str| stage_bucket(&metrics, "explain", le);
    for stage in ["ring", "queue", "victim", "enrich", "explain"] {
        let buckets: Vec<String> = ["0.004", "0.032", "0.128", "0.512", "+Inf"]
            .iter()
            .map(|le| format!("≤{le} s: {:?}", stage_bucket(&metrics, stage, le)))
            .collect();
        eprintln!("{stage}: {}", buckets.join(", "));
    }
    assert_eq!(explain("+Inf"), Some(3.0), "{metrics}");
    // 5 times the budget: the last directory read and the tasks already listed finish after
    // it, and a walk of every cgroup would take 10 times as long.
    assert_eq!(explain("0.512"), Some(3.0), "an explanation overran its budget:\n{metrics}");
}

/// The count of `oomtrace_kill_stage_duration_seconds` observations of `stage` at most `le`.
fn stage_bucket(metrics: &str, stage: &str, le: &str) -> Option<f64> {
    sample(metrics, &format!("oomtrace_kill_stage_duration_seconds_bucket{{le=\"{le}\",stage=\"{stage}\"}}"))
}
