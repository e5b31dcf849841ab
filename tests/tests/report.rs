//! `oomtrace report` end to end: real OOM kills in kubelet-shaped cgroups, the daemon's
//! `OOMKill` Events on the test API server, and the report read back from those Events
//! (cluster-wide) and from the daemon's own JSON lines (node-local).
use oomtrace_tests::apiserver::{container_id, containerd_id, PodBuilder};
use oomtrace_tests::cgroup::Hog;
use oomtrace_tests::daemon::{start_ready, wait_for};
use oomtrace_tests::kubelet::{Cluster, Driver, PodCgroups};
use oomtrace_tests::oomtrace_proc::{check_schema, kill_in, oomtrace_binary, Watch};
use oomtrace_tests::require_root_and_btf;
use serde_json::{json, Value};
use std::process::Command;

const MIB: u64 = 1 << 20;
/// The test's own namespace: the daemon also publishes other tests' kills on this host.
const NS: &str = "nightly";
const JOB: &str = "backup-29391840";

/// A pod of the test: its name, container, and kubelet cgroups.
struct Workload {
    pod: &'static str,
    cgroups: PodCgroups,
}

/// Pod `pod` with one container, owned as `owned` makes it.
fn workload(c: &Cluster, pod: &'static str, uid: &str, container: &str, owned: impl FnOnce(PodBuilder) -> PodBuilder) -> Workload {
    let b = PodBuilder::new(NS, pod)
        .uid(uid)
        .node(&c.node)
        .qos("Burstable")
        .container(container, &containerd_id(pod), Some("64Mi"), Some("32Mi"));
    c.api.add_pod(owned(b).build());
    Workload { pod, cgroups: PodCgroups::new(Driver::Cgroupfs, uid, &container_id(pod), 256 * MIB, 64 * MIB) }
}

impl Workload {
    fn kill(&self, daemon: &Watch) -> Value {
        kill_in(&self.cgroups.container(), daemon, Hog::anon(256))
    }
}

/// `oomtrace report ARGS` with `env`: its rows (`-o json`) or its table, and stderr.
fn report(args: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let out = Command::new(oomtrace_binary()).arg("report").args(args).envs(env.iter().copied()).output().unwrap();
    let (stdout, stderr) = (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap());
    assert!(out.status.success(), "report {args:?}: {:?}\n{stderr}", out.status);
    (stdout, stderr)
}

fn rows(json_lines: &str) -> Vec<Value> {
    json_lines.lines().map(|l| check_schema(serde_json::from_str(l).unwrap()).unwrap()).collect()
}

/// (owner kind, owner name, container, kills, kills_at_least) of each row, in order.
fn summary(rows: &[Value]) -> Vec<(String, String, String, u64, bool)> {
    rows.iter()
        .map(|r| {
            let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
            (s(&r["owner"]["kind"]), s(&r["owner"]["name"]), s(&r["container"]), r["kills"].as_u64().unwrap(), r["kills_at_least"] == true)
        })
        .collect()
}

fn row(kind: &str, name: &str, container: &str, kills: u64) -> (String, String, String, u64, bool) {
    (kind.into(), name.into(), container.into(), kills, false)
}

#[test]
fn kills_per_owner_from_the_cluster_events_and_from_the_daemons_lines() {
    require_root_and_btf();
    let c = Cluster::new();
    let kubeconfig = c.kubeconfig.to_str().unwrap().to_string();
    c.api.add_job(NS, JOB, Some("backup"));
    let api = workload(&c, "api-6b7c8d9e0f-q8x2k", "0c9e4a51-6f3b-4d2a-9b8e-1a2b3c4d5e01", "app", |b| b.deployment("api", "6b7c8d9e0f"));
    let backup = workload(&c, "backup-29391840-t5r7w", "0c9e4a51-6f3b-4d2a-9b8e-1a2b3c4d5e02", "dump", |b| b.owner("batch/v1", "Job", JOB));
    let debug = workload(&c, "debug", "0c9e4a51-6f3b-4d2a-9b8e-1a2b3c4d5e03", "shell", |b| b);
    let (daemon, _) = start_ready(&c.kubeconfig, &c.node);

    // Two kills of the Deployment's container, one of the CronJob's, one of the bare pod: none
    // of them the container's PID 1, so kubectl shows none of them as OOMKilled.
    let mut lines = Vec::new();
    for w in [&api, &api, &backup, &debug] {
        let e = w.kill(&daemon);
        assert_eq!((e["k8s"]["pod"].as_str(), e["victim"]["container_init"].as_bool()), (Some(w.pod), Some(false)), "{e:#}");
        lines.push(e);
    }
    let ours = |e: &Value| e["regarding"]["namespace"] == NS;
    wait_for("the Events of the four kills", || {
        let stored: Vec<Value> = c.api.stored_events().into_iter().filter(ours).collect();
        stored.len() == 3 && stored.iter().any(|e| e["series"]["count"] == 2)
    });
    // Two days ago, a kill of the same Deployment (published by another node's daemon).
    let old = (k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_hours(48)).to_string();
    c.api.add_event(json!({
        "metadata": {"name": "api-old.1", "namespace": NS, "annotations": {
            "oomtrace.io/container": "app", "oomtrace.io/owner-kind": "Deployment", "oomtrace.io/owner-name": "api",
            "oomtrace.io/limit-bytes": (32 * MIB).to_string(), "oomtrace.io/trend": "leak"}},
        "eventTime": old, "reason": "OOMKill", "action": "Killed", "type": "Warning",
        "reportingController": "oomtrace", "reportingInstance": "node-other",
        "regarding": {"kind": "Pod", "apiVersion": "v1", "namespace": NS, "name": "api-6b7c8d9e0f-old00"},
        "note": "an older kill"
    }));

    // Cluster-wide: the Job resolves to its CronJob, the bare pod is itself; most kills first,
    // then the latest.
    let (out, _) = report(&["--kubeconfig", &kubeconfig, "-n", NS, "-o", "json"], &[]);
    let got = rows(&out);
    assert_eq!(
        summary(&got),
        [row("Deployment", "api", "app", 2), row("Pod", "debug", "shell", 1), row("CronJob", "backup", "dump", 1)],
        "{out}"
    );
    let deployment = &got[0];
    assert_eq!(deployment["limit_bytes"], 64 * MIB, "the last kill's limit, not the older one's");
    assert_eq!((deployment["pods"].as_u64(), &deployment["nodes"]), (Some(1), &json!([c.node])));
    assert_eq!(deployment["last_pod"], api.pod);
    // An Event's figures are its series' first kill's (a repeat only counts on it).
    assert_eq!(deployment["trend"], lines[0]["oom"]["trend"]["kind"], "{deployment:#}");
    assert_eq!(deployment["verdict"], lines[0]["verdict"]);
    assert!(deployment["verdict"].as_str().is_some_and(|v| v.contains("limit")), "{deployment:#}");
    // A longer window takes in the old kill too.
    let (out, _) = report(&["--kubeconfig", &kubeconfig, "-n", NS, "-o", "json", "--since", "72h"], &[]);
    assert_eq!(summary(&rows(&out))[0], row("Deployment", "api", "app", 3), "{out}");
    let (out, _) = report(&["--kubeconfig", &kubeconfig, "-n", NS, "-o", "json", "--container", "dump"], &[]);
    assert_eq!(summary(&rows(&out)), [row("CronJob", "backup", "dump", 1)]);

    // The table, as an SRE reads it.
    let (table, _) = report(&["--kubeconfig", &kubeconfig, "-n", NS], &[]);
    let cells: Vec<Vec<&str>> =
        table.lines().map(|l| l.split("   ").map(str::trim).filter(|c| !c.is_empty()).collect()).collect();
    assert_eq!(cells[0], ["NAMESPACE", "OWNER", "CONTAINER", "KILLS", "LAST", "LIMIT", "TREND", "RECOMMENDATION"], "{table}");
    assert_eq!(cells.len(), 4, "{table}");
    assert_eq!(cells[1][..4], [NS, "Deployment/api", "app", "2"], "{table}");
    assert!(cells[1][4].ends_with('s') || cells[1][4].ends_with('m'), "an age: {table}");
    assert_eq!(cells[1][5], "64.0MiB", "{table}");
    assert_eq!(cells[2][..4], [NS, "Pod/debug", "shell", "1"], "{table}");
    assert_eq!(cells[3][..4], [NS, "CronJob/backup", "dump", "1"], "{table}");

    // Node-local, from the daemon's JSON lines as `kubectl logs --timestamps` gives them, with
    // no Kubernetes config at hand: the same counts, and the Job stays a Job.
    let file = std::env::temp_dir().join(format!("oomtrace-report-{}.jsonl", std::process::id()));
    let mut text = String::from("a line that is not JSON\n");
    for (i, e) in lines.iter().enumerate() {
        let prefix = if i == 0 { "2026-12-03T10:00:00.000000000Z " } else { "" };
        text.push_str(&format!("{prefix}{e}\n"));
    }
    std::fs::write(&file, text).unwrap();
    let home = std::env::temp_dir().join(format!("oomtrace-report-home-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let offline = [("KUBECONFIG", ""), ("HOME", home.to_str().unwrap()), ("KUBERNETES_SERVICE_HOST", "")];
    let (out, stderr) = report(&["-f", file.to_str().unwrap(), "-n", NS, "-o", "json"], &offline);
    assert_eq!(
        summary(&rows(&out)),
        [row("Deployment", "api", "app", 2), row("Pod", "debug", "shell", 1), row("Job", JOB, "dump", 1)],
        "{out}"
    );
    assert!(stderr.contains("1 lines were not oomtrace kill records"), "{stderr}");
    // With the kubeconfig, the lines' Job resolves too; `--node` keeps this node's kills.
    let (out, _) = report(&["-f", file.to_str().unwrap(), "-n", NS, "-o", "json", "--kubeconfig", &kubeconfig], &[]);
    assert_eq!(summary(&rows(&out))[2], row("CronJob", "backup", "dump", 1), "{out}");
    let (out, _) = report(&["-f", file.to_str().unwrap(), "-o", "json", "--node", "node-elsewhere"], &offline);
    assert_eq!(out, "", "no kill on that node");
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_dir_all(&home);
    assert!(daemon.stop().success());
}

#[test]
fn without_a_kubeconfig_or_a_file_it_says_what_it_needs() {
    let home = std::env::temp_dir().join(format!("oomtrace-report-nohome-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let out = Command::new(oomtrace_binary())
        .args(["report"])
        .env("HOME", &home)
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&home);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("report needs a Kubernetes config") && stderr.contains("--file"), "{stderr}");
}

#[test]
fn an_api_server_that_refuses_gives_a_clear_error() {
    let c = Cluster::new();
    c.api.set_mode(oomtrace_tests::apiserver::Mode::Error(403));
    let out = Command::new(oomtrace_binary())
        .args(["report", "--kubeconfig", c.kubeconfig.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("RBAC: events.k8s.io events list"), "{stderr}");
}
