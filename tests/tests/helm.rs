//! The Helm chart (deploy/helm/oomtrace) with a real helm 3.17: `helm lint` passes, the default
//! values render the same objects as `kubectl kustomize deploy/` (compared parsed), and each
//! value does what it says.
use oomtrace_tests::helm::helm;
use oomtrace_tests::require_tool;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn output(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Objects by (kind, namespace, name).
fn objects(yaml: &str) -> BTreeMap<(String, String, String), Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).unwrap();
    docs.into_iter()
        .filter(|d| !d.is_null())
        .map(|d| {
            let s = |v: &Value| v.as_str().unwrap_or("").to_string();
            ((s(&d["kind"]), s(&d["metadata"]["namespace"]), s(&d["metadata"]["name"])), d)
        })
        .collect()
}

fn template(set: &[&str]) -> BTreeMap<(String, String, String), Value> {
    let mut cmd = Command::new(helm());
    cmd.args(["template", "oomtrace"]).arg(deploy().join("helm/oomtrace")).args(["--namespace", "oomtrace"]);
    for s in set {
        cmd.args(["--set", s]);
    }
    objects(&output(&mut cmd))
}

fn key(kind: &str, name: &str) -> (String, String, String) {
    let ns = if kind.starts_with("Cluster") || kind == "Namespace" { "" } else { "oomtrace" };
    (kind.into(), ns.into(), name.into())
}

#[test]
fn helm_lint_passes() {
    let out = output(Command::new(helm()).arg("lint").arg(deploy().join("helm/oomtrace")));
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[test]
fn default_values_render_the_kustomize_base() {
    let kustomized = objects(&output(Command::new(require_tool("kubectl")).arg("kustomize").arg(deploy())));
    let rendered = template(&[]);
    assert_eq!(rendered.keys().collect::<Vec<_>>(), kustomized.keys().collect::<Vec<_>>());
    for (k, want) in &kustomized {
        assert_eq!(&rendered[k], want, "{k:?} differs");
    }
}

#[test]
fn values_change_what_they_say() {
    let ds = |objs: &BTreeMap<_, Value>| objs[&key("DaemonSet", "oomtrace")]["spec"]["template"]["spec"].clone();
    let default = template(&[]);
    let args = |spec: &Value| spec["containers"][0]["args"].as_array().unwrap().clone();
    assert!(!args(&ds(&default)).contains(&Value::from("--warnings")));
    assert!(!default.contains_key(&key("PrometheusRule", "oomtrace")));

    let custom = template(&[
        "warnings=true",
        "image.repository=registry.example/oomtrace",
        "image.tag=1.2.3",
        "priorityClassName=high",
        "resources.limits.memory=512Mi",
        "tolerations[0].key=gpu",
        "tolerations[0].operator=Exists",
        "monitoring.enabled=true",
        "networkPolicy.enabled=false",
    ]);
    let spec = ds(&custom);
    assert!(args(&spec).contains(&Value::from("--warnings")));
    let c = &spec["containers"][0];
    assert_eq!(c["image"], "registry.example/oomtrace:1.2.3");
    assert_eq!(c["resources"]["limits"]["memory"], "512Mi");
    // Setting the limit leaves the request at its default.
    assert_eq!(c["resources"]["requests"], ds(&default)["containers"][0]["resources"]["requests"]);
    assert_eq!(spec["priorityClassName"], "high");
    assert_eq!(spec["tolerations"], serde_json::json!([{"key": "gpu", "operator": "Exists"}]));
    assert_eq!(custom[&key("ResourceQuota", "oomtrace-critical-pods")]["spec"]["scopeSelector"]["matchExpressions"][0]["values"][0], "high");
    assert!(!custom.contains_key(&key("NetworkPolicy", "oomtrace")));
    // Monitoring: the same PrometheusRule as deploy/monitoring/, and the dashboard for Grafana.
    let rule = &custom[&key("PrometheusRule", "oomtrace")];
    let shipped: Value = serde_saphyr::from_str(&std::fs::read_to_string(deploy().join("monitoring/prometheusrule.yaml")).unwrap()).unwrap();
    assert_eq!(rule["spec"], shipped["spec"]);
    let dashboard = &custom[&key("ConfigMap", "oomtrace-dashboard")];
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let json: Value = serde_json::from_str(dashboard["data"]["oomtrace.json"].as_str().unwrap()).unwrap();
    assert_eq!(json["uid"], "oomtrace-kills");
}

#[test]
fn the_network_policy_admits_only_scrapes_of_the_metrics_port() {
    let objs = template(&[]);
    let np = &objs[&key("NetworkPolicy", "oomtrace")];
    let ds = &objs[&key("DaemonSet", "oomtrace")];
    assert_eq!(np["spec"]["podSelector"]["matchLabels"], ds["spec"]["selector"]["matchLabels"]);
    assert_eq!(np["spec"]["policyTypes"], serde_json::json!(["Ingress"]));
    let ingress = np["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 1);
    assert_eq!(ingress[0]["ports"], serde_json::json!([{"port": "metrics", "protocol": "TCP"}]));
    let ports = ds["spec"]["template"]["spec"]["containers"][0]["ports"].as_array().unwrap();
    assert_eq!(ports.iter().map(|p| p["name"].as_str().unwrap()).collect::<Vec<_>>(), ["metrics"]);
}
