//! The real kubectl reads what the daemon publishes for real kills (against the test API
//! server): `kubectl describe pod` shows the OOMKill Event with its note and count, and
//! `kubectl get events -A --field-selector reason=OOMKill` lists the kills of every namespace.
use oomtrace_tests::apiserver::{container_id, containerd_id, pod, ApiServer};
use oomtrace_tests::cgroup::{Hog, TestCgroup};
use oomtrace_tests::daemon::{start_ready, wait_for};
use oomtrace_tests::{require_root_and_btf, require_tool};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

const MIB: u64 = 1 << 20;
/// (namespace, pod, uid, container, kills)
const PODS: [(&str, &str, &str, &str, usize); 2] = [
    ("shop", "web-6b7c8d9e0-kctl1", "1b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d51", "app", 2),
    ("batch", "report-28711-kctl2", "1b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d52", "worker", 1),
];

fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let out = Command::new(require_tool("kubectl")).arg("--kubeconfig").arg(kubeconfig).args(args).output().unwrap();
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn kubectl_describe_and_get_events_show_the_kills() {
    require_root_and_btf();
    require_tool("kubectl");
    let api = ApiServer::start();
    let node = format!("node-kubectl-{}", std::process::id());
    let kubeconfig = std::env::temp_dir().join(format!("oomtrace-kubectl-kubeconfig-{}", std::process::id()));
    api.write_kubeconfig(&kubeconfig).unwrap();
    let mut root = TestCgroup::new("oomtrace-kubectl").unwrap();
    let mut cgroups = Vec::new();
    {
        let qos = root.child("kubepods").unwrap().child("burstable").unwrap();
        for (ns, name, uid, container, _) in PODS {
            let seed = format!("kubectl-{name}");
            let cid = containerd_id(&seed);
            api.add_pod(pod(ns, name, uid, &node, "Burstable", &[(container, &cid, Some("48Mi"), None)], None));
            let c = qos.child(&format!("pod{uid}")).unwrap().child(&container_id(&seed)).unwrap();
            c.set_limit(48 * MIB).unwrap();
            cgroups.push(c.rel.clone());
        }
    }
    let (w, _) = start_ready(&kubeconfig, &node);
    let mut first_pids = Vec::new();
    for ((_, _, uid, _, kills), cg) in PODS.iter().zip(&cgroups) {
        for i in 0..*kills {
            let mut hog = TestCgroup::handle(cg).unwrap().spawn_hog(&Hog::anon(256)).unwrap();
            if i == 0 {
                first_pids.push(hog.id());
            }
            assert_eq!(hog.wait().unwrap().signal(), Some(libc::SIGKILL));
            // Each kill published before the next (the series counts them in order).
            let want = i as i64 + 1;
            wait_for("the Event", || {
                api.stored_events().iter().any(|e| {
                    e["regarding"]["uid"] == *uid && e["series"]["count"].as_i64().unwrap_or(1) == want
                })
            });
        }
    }
    assert!(w.stop().success());

    // describe: the Events section, with the note, the reporter and the count.
    for ((ns, name, _, container, kills), pid) in PODS.iter().zip(&first_pids) {
        let out = kubectl(&kubeconfig, &["describe", "pod", "-n", ns, name]);
        let events = &out[out.find("\nEvents:").unwrap_or_else(|| panic!("no Events section:\n{out}"))..];
        let line = events
            .lines()
            .find(|l| l.contains("OOMKill"))
            .unwrap_or_else(|| panic!("no OOMKill Event:\n{out}"));
        assert!(line.trim_start().starts_with("Warning  OOMKill"), "{line}");
        assert!(line.contains("oomtrace"), "the reporter: {line}");
        let note = format!("oomtrace-hog (pid {pid}) in container {container} killed by the OOM killer: rss ");
        assert!(line.contains(&note), "{line}");
        assert!(line.contains("container limit 48.0MiB"), "{line}");
        assert_eq!(line.contains(&format!("(x{kills} over ")), *kills > 1, "{line}");
    }

    // get events -A: both namespaces, one row per series, the repeat with its count.
    let out = kubectl(&kubeconfig, &["get", "events", "-A", "--field-selector", "reason=OOMKill"]);
    let header = out.lines().next().unwrap_or_default();
    assert_eq!(header.split_whitespace().collect::<Vec<_>>(), ["NAMESPACE", "LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"], "{out}");
    for (ns, name, _, container, kills) in PODS {
        let rows: Vec<&str> = out.lines().filter(|l| l.contains(&format!("pod/{name}"))).collect();
        assert_eq!(rows.len(), 1, "{out}");
        let row = rows[0];
        assert!(row.starts_with(ns), "{row}");
        assert!(row.contains("Warning   OOMKill"), "{row}");
        assert!(row.contains(&format!("in container {container} killed by the OOM killer")), "{row}");
        assert_eq!(row.contains(&format!("(x{kills} over ")), kills > 1, "{row}");
    }
    assert!(!out.lines().any(|l| l.contains("BackOff")), "{out}");
    let _ = std::fs::remove_file(&kubeconfig);
    drop(root);
}

/// A kubeconfig whose current context points nowhere; the context `oomtrace-test` is `api`.
fn two_context_kubeconfig(api: &ApiServer) -> String {
    format!(
        "apiVersion: v1\nkind: Config\n\
         clusters:\n\
         - name: nowhere\n  cluster:\n    server: http://127.0.0.1:1\n\
         - name: oomtrace-test\n  cluster:\n    server: {url}\n\
         users:\n- name: u\n  user:\n    token: dummy\n\
         contexts:\n\
         - name: elsewhere\n  context:\n    cluster: nowhere\n    user: u\n\
         - name: oomtrace-test\n  context:\n    cluster: oomtrace-test\n    user: u\n\
         current-context: elsewhere\n",
        url = api.url()
    )
}

fn oom_event(ns: &str, pod: &str, container: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"namespace": ns, "name": format!("{pod}.1"), "annotations": {"oomtrace.io/container": container}},
        "eventTime": k8s_openapi::jiff::Timestamp::now().to_string(),
        "reason": "OOMKill", "action": "Killed", "type": "Warning",
        "reportingController": "oomtrace", "reportingInstance": "node-1",
        "regarding": {"apiVersion": "v1", "kind": "Pod", "namespace": ns, "name": pod,
                      "fieldPath": format!("spec.containers{{{container}}}")},
        "note": format!("python3 (pid 42) in container {container} killed by the OOM killer"),
    })
}

#[test]
fn kubectl_oomtrace_is_the_cluster_view_with_kubectls_flags() {
    let kubectl = require_tool("kubectl");
    let api = ApiServer::start();
    let dir = std::env::temp_dir().join(format!("oomtrace-kubectl-plugin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(oomtrace_tests::oomtrace_proc::oomtrace_binary(), dir.join("kubectl-oomtrace")).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, two_context_kubeconfig(&api)).unwrap();
    api.add_event(oom_event("shop", "api-1", "app"));
    api.add_event(oom_event("batch", "report-1", "worker"));
    let path = std::env::join_paths(std::iter::once(dir.clone()).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())))
        .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(&kubectl).args(args).env("PATH", &path).env_remove("KUBECONFIG").output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };

    // kubectl finds it on PATH.
    let (_, plugins, _) = run(&["plugin", "list", "--name-only"]);
    assert!(plugins.lines().any(|l| l.trim() == "kubectl-oomtrace"), "{plugins}");
    let (ok, help, _) = run(&["oomtrace", "--help"]);
    assert!(ok && help.contains("Usage: kubectl oomtrace"), "{help}");

    let k = kubeconfig.to_str().unwrap();
    let base = ["oomtrace", "watch", "--cluster", "--kubeconfig", k, "--context", "oomtrace-test", "-o", "json", "--since", "1h"];
    let rows = |extra: &[&str]| -> Vec<serde_json::Value> {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let (ok, out, err) = run(&args);
        assert!(ok, "kubectl {args:?}: {err}");
        out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let shop = rows(&["-n", "shop", "--count", "1"]);
    assert_eq!((shop[0]["namespace"].as_str(), shop[0]["pod"].as_str(), shop[0]["container"].as_str()), (Some("shop"), Some("api-1"), Some("app")));
    let all = rows(&["-A", "--count", "2"]);
    let mut names: Vec<&str> = all.iter().map(|r| r["namespace"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["batch", "shop"]);
    // --context picks the context: an unknown one fails, naming it.
    let (ok, _, err) = run(&["oomtrace", "watch", "--cluster", "--kubeconfig", k, "--context", "nope"]);
    assert!(!ok && err.contains("nope"), "{err}");
    // -A and -n contradict each other, as in kubectl.
    let (ok, _, err) = run(&["oomtrace", "watch", "--cluster", "-A", "-n", "shop"]);
    assert!(!ok && err.contains("cannot be used with"), "{err}");
    // `kubectl oomtrace report`: the same Events, per owner (bare pods here).
    let (ok, out, err) = run(&["oomtrace", "report", "--kubeconfig", k, "--context", "oomtrace-test", "-A", "-o", "json"]);
    assert!(ok, "{err}");
    let mut owners: Vec<(String, String)> = out
        .lines()
        .map(|l| oomtrace_tests::oomtrace_proc::check_schema(serde_json::from_str(l).unwrap()).unwrap())
        .map(|r| (r["namespace"].as_str().unwrap().to_string(), format!("{}/{}", r["owner"]["kind"].as_str().unwrap(), r["owner"]["name"].as_str().unwrap())))
        .collect();
    owners.sort();
    assert_eq!(owners, [("batch".to_string(), "Pod/report-1".to_string()), ("shop".into(), "Pod/api-1".into())], "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
