//! deploy/monitoring/ with the real Prometheus tools: the PrometheusRule's groups pass
//! `promtool check rules`, and `promtool test rules` (deploy/monitoring/rules.test.yaml) shows
//! each alert firing on series that should fire it and staying quiet on series that should not;
//! a real Prometheus scrapes a real daemon through a real kill, and every query of the Grafana
//! dashboard (deploy/monitoring/dashboard.json) runs on it.
use oomtrace_tests::apiserver::{container_id, containerd_id, pod, ApiServer};
use oomtrace_tests::cgroup::{Hog, TestCgroup};
use oomtrace_tests::daemon::{http_get, start_ready, wait_for};
use oomtrace_tests::{require_root_and_btf, require_tool};
use std::os::unix::process::ExitStatusExt;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring")
}

/// The PrometheusRule object.
fn prometheus_rule() -> Value {
    let text = std::fs::read_to_string(monitoring().join("prometheusrule.yaml")).unwrap();
    let rule: Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(rule["kind"], "PrometheusRule");
    rule
}

/// The rule groups of the PrometheusRule, as a Prometheus rule file (JSON is YAML).
fn rule_file(dir: &Path) -> PathBuf {
    let rule = prometheus_rule();
    let path = dir.join("rules.yaml");
    std::fs::write(&path, serde_json::to_vec(&serde_json::json!({"groups": rule["spec"]["groups"]})).unwrap()).unwrap();
    path
}

/// The expression of alert `name` in the PrometheusRule.
fn alert_expr(name: &str) -> String {
    let rule = prometheus_rule();
    let rules = rule["spec"]["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap());
    let found = rules.into_iter().find(|r| r["alert"] == name).unwrap_or_else(|| panic!("no alert {name}"));
    found["expr"].as_str().unwrap().to_string()
}

fn promtool(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(require_tool("promtool")).args(args).current_dir(dir).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_rules_are_valid_and_fire_exactly_when_they_should() {
    let dir = std::env::temp_dir().join(format!("oomtrace-promtool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    rule_file(&dir);
    std::fs::copy(monitoring().join("rules.test.yaml"), dir.join("rules.test.yaml")).unwrap();
    let checked = promtool(&dir, &["check", "rules", "rules.yaml"]);
    assert!(checked.contains("SUCCESS: 8 rules found"), "{checked}");
    let tested = promtool(&dir, &["test", "rules", "rules.test.yaml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A real Prometheus on 127.0.0.1 scraping `target` every second, removed on drop.
struct Prometheus {
    child: std::process::Child,
    dir: PathBuf,
    addr: String,
}

impl Prometheus {
    fn start(target: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("oomtrace-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n- job_name: oomtrace\n  static_configs:\n  - targets: ['{target}']\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        // A free port (released just before Prometheus binds it).
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(require_tool("prometheus"))
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).unwrap())
            .spawn()
            .unwrap();
        let p = Prometheus { child, dir, addr };
        wait_for("Prometheus to be ready", || {
            std::net::TcpStream::connect(&p.addr).is_ok() && http_get(&p.addr, "/-/ready").0 == 200
        });
        p
    }

    /// An instant PromQL query: the result vector (panics on a query error).
    fn query(&self, promql: &str) -> Vec<Value> {
        let q = percent_encoding::utf8_percent_encode(promql, percent_encoding::NON_ALPHANUMERIC);
        let (code, body) = http_get(&self.addr, &format!("/api/v1/query?query={q}"));
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!((code, v["status"].as_str()), (200, Some("success")), "{promql}: {body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The dashboard's queries, with Grafana's variables set as a user looking at all namespaces.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(monitoring().join("dashboard.json")).unwrap();
    let d: Value = serde_json::from_str(&text).unwrap();
    let panels = d["panels"].as_array().unwrap();
    assert!(!panels.is_empty());
    panels
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap().to_string();
            p["targets"].as_array().unwrap().iter().map(move |t| {
                let expr = t["expr"].as_str().unwrap().replace("$__rate_interval", "1m").replace("$namespace", ".*");
                (title.clone(), expr)
            })
        })
        .collect()
}

#[test]
fn prometheus_scrapes_a_real_kill_and_the_dashboard_queries_it() {
    require_root_and_btf();
    require_tool("prometheus");
    let api = ApiServer::start();
    let node = format!("node-prometheus-{}", std::process::id());
    let kubeconfig = std::env::temp_dir().join(format!("oomtrace-prometheus-kubeconfig-{}", std::process::id()));
    api.write_kubeconfig(&kubeconfig).unwrap();
    const UID: &str = "2c3d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e61";
    let seed = "prometheus-app";
    api.add_pod(pod("shop", "cart-7f8e9d0c1-prom1", UID, &node, "Burstable", &[("app", &containerd_id(seed), Some("48Mi"), None)], Some(("cart", "7f8e9d0c1"))));
    let mut root = TestCgroup::new("oomtrace-prometheus").unwrap();
    let container = {
        let c = root.child("kubepods").unwrap().child("burstable").unwrap().child(&format!("pod{UID}")).unwrap().child(&container_id(seed)).unwrap();
        c.set_limit(48 * (1 << 20)).unwrap();
        c.rel.clone()
    };
    let (w, addr) = start_ready(&kubeconfig, &node);
    let prom = Prometheus::start(&addr);
    wait_for("the first scrape", || prom.query(r#"up{job="oomtrace"} == 1"#).len() == 1);

    let mut hog = TestCgroup::handle(&container).unwrap().spawn_hog(&Hog::anon(256)).unwrap();
    assert_eq!(hog.wait().unwrap().signal(), Some(libc::SIGKILL));
    let kills = r#"oomtrace_oom_kills_total{pod="cart-7f8e9d0c1-prom1"}"#;
    wait_for("the kill in Prometheus", || !prom.query(kills).is_empty());
    let series = prom.query(kills);
    assert_eq!(series.len(), 1, "{series:#?}");
    let m = &series[0]["metric"];
    for (label, value) in [("job", "oomtrace"), ("namespace", "shop"), ("container", "app"), ("owner_kind", "Deployment"), ("owner_name", "cart"), ("container_init", "false"), ("constraint", "memcg")] {
        assert_eq!(m[label], value, "{label}: {series:#?}");
    }
    assert_eq!(series[0]["value"][1], "1");

    // Every dashboard query runs on the real server, and the kill panels show the kill.
    wait_for("a second sample of the new series", || !prom.query(&format!("increase({kills}[1m])")).is_empty());
    for (title, expr) in dashboard_queries() {
        let result = prom.query(&expr);
        if title.contains("kills") || title == "Last victims" {
            assert!(result.iter().any(|r| r["metric"]["namespace"] == "shop"), "{title}: {expr}: {result:#?}");
        }
        if title.contains("by stage") {
            let mut stages: Vec<&str> = result.iter().filter_map(|r| r["metric"]["stage"].as_str()).collect();
            stages.sort_unstable();
            assert_eq!(stages, ["enrich", "explain", "queue", "ring", "victim"], "{title}: {expr}: {result:#?}");
        }
    }

    // The stall alert's arithmetic matches the real series label for label: one value, none in
    // flight once the kill is out (a mismatch would give no series, and the alert never fires).
    let stalled = alert_expr("OomtraceStalled");
    let (in_flight, _) = stalled.split_once(") > 0").expect("OomtraceStalled: (kills in flight) > 0 and …");
    let in_flight = format!("{in_flight})");
    // The counters are exported once a second: a scrape may still hold the kill in flight.
    let seen = r#"oomtrace_kernel_victims_seen_total{job="oomtrace"}"#;
    wait_for("the kill seen and out of flight, in Prometheus", || {
        prom.query(seen).first().is_some_and(|r| r["value"][1] == "1")
            && prom.query(&in_flight).first().is_some_and(|r| r["value"][1] == "0")
    });
    let result = prom.query(&in_flight);
    assert_eq!(result.len(), 1, "{in_flight}: {result:#?}");
    assert_eq!(result[0]["value"][1], "0", "{in_flight}: {result:#?}");
    assert_eq!(result[0]["metric"]["job"], "oomtrace", "{result:#?}");
    assert!(prom.query(&stalled).is_empty(), "{stalled}");
    assert!(w.stop().success());
    let _ = std::fs::remove_file(&kubeconfig);
    drop(root);
}
