//! Kills in Kubernetes pods name the right pod and container — from kubelet-shaped cgroups,
//! a real pod list/watch (the test API server), and real OOM kills.
use oomtrace_tests::apiserver::{container_id, containerd_id, pod};
use oomtrace_tests::cgroup::{Hog, TestCgroup};
use oomtrace_tests::kubelet::{Cluster, Driver, PodCgroups};
use oomtrace_tests::oomtrace_proc::{finding, in_cgroup, Watch};
use oomtrace_tests::require_root_and_btf;
use serde_json::Value;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::Duration;

const MIB: u64 = 1 << 20;
const UID: &str = "5f2b6c1e-8d4a-4e3b-9a7c-2d1e0f9b8a76";

/// The test's pod, on the test API server.
fn add_pod(c: &Cluster, cid_seed: &str) {
    c.api.add_pod(pod(
        "shop",
        "api-7d9f8b6c4-x2x9z",
        UID,
        &c.node,
        "Burstable",
        &[("app", &containerd_id(cid_seed), Some("64Mi"), Some("32Mi"))],
        Some(("api", "7d9f8b6c4")),
    ));
}

/// A pod served by the test API server, its kubelet cgroups, and a watcher that has synced.
struct Scene {
    cluster: Cluster,
    layout: PodCgroups,
    watch: Watch,
    cid: String,
}

fn scene(seed: &str, driver: Driver, pod_limit: u64, container_limit: u64) -> Scene {
    require_root_and_btf();
    let cluster = Cluster::new();
    add_pod(&cluster, seed);
    let cid = container_id(seed);
    let layout = PodCgroups::new(driver, UID, &cid, pod_limit, container_limit);
    let watch = cluster.watch();
    cluster.wait_synced();
    Scene { cluster, layout, watch, cid }
}

impl Scene {
    fn kill(&self, hog: Hog) -> Value {
        kill(&self.layout.container(), &self.watch, &mut hog.command())
    }
}

fn kill(cg: &TestCgroup, w: &Watch, cmd: &mut Command) -> Value {
    let mut c = cg.spawn(cmd).unwrap();
    let st = c.wait().unwrap();
    assert!(st.signal() == Some(libc::SIGKILL) || st.code() == Some(137), "{st:?}");
    // Every watcher sees every kill on the host, and the tests share a pod UID: pick this
    // test's kill by its container cgroup (each test has its own root).
    let evs = w.collect(1, Duration::from_secs(30), in_cgroup(cg.rel.clone()));
    assert_eq!(evs.len(), 1, "stderr:\n{}", w.stderr_text());
    evs.into_iter().next().unwrap()
}

fn assert_names_the_pod(e: &Value, cid: &str) {
    let k = &e["k8s"];
    assert_eq!(k["resolved"], true, "{e:#}");
    assert_eq!(k["namespace"], "shop");
    assert_eq!(k["pod"], "api-7d9f8b6c4-x2x9z");
    assert_eq!(k["pod_uid"], UID);
    assert_eq!(k["container"], "app");
    assert_eq!(k["container_id"], cid);
    assert_eq!(k["qos_class"], "Burstable");
    assert_eq!(k["owner"]["kind"], "Deployment");
    assert_eq!(k["owner"]["name"], "api");
    assert_eq!(k["limits_memory_bytes"], 64 * MIB);
    assert_eq!(k["requests_memory_bytes"], 32 * MIB);
    assert_eq!(k["cgroup_level"], "container");
    assert_eq!(e["resource"]["k8s.pod.name"], "api-7d9f8b6c4-x2x9z");
    assert_eq!(e["resource"]["k8s.namespace.name"], "shop");
    assert_eq!(e["resource"]["container.id"], cid);
}

#[test]
fn container_kill_names_namespace_pod_container_qos_and_owner() {
    container_kill(Driver::Cgroupfs, "c1");
}

#[test]
fn systemd_driver_layout_container_kill() {
    let e = container_kill(Driver::Systemd, "c7");
    assert_eq!(e["k8s"]["runtime"], "containerd");
}

fn container_kill(driver: Driver, seed: &str) -> Value {
    let s = scene(seed, driver, 256 * MIB, 64 * MIB);
    let e = s.kill(Hog::anon(512));
    assert_names_the_pod(&e, &s.cid);
    assert_eq!(e["oom"]["cgroup"], s.layout.container_rel.as_str());
    // Not the container's PID 1: the container keeps running, and only this event says so.
    assert_eq!(e["victim"]["container_init"], false);
    e
}

#[test]
fn main_process_of_the_container_is_flagged() {
    let s = scene("c2", Driver::Cgroupfs, 256 * MIB, 64 * MIB);
    // The hog as PID 1 of its own pid namespace, as a container's entrypoint is.
    let e = s.kill(Hog { pid1: true, ..Hog::anon(512) });
    assert_eq!(e["victim"]["ns_pid"], 1, "{e:#}");
    assert_eq!(e["victim"]["container_init"], true);
    assert_names_the_pod(&e, &s.cid);
}

#[test]
fn pod_deleted_just_before_the_kill_is_still_named() {
    let s = scene("c3", Driver::Cgroupfs, 256 * MIB, 64 * MIB);
    s.cluster.api.delete_pod("shop", "api-7d9f8b6c4-x2x9z").expect("pod existed");
    std::thread::sleep(Duration::from_secs(2));
    let e = s.kill(Hog::anon(512));
    assert_names_the_pod(&e, &s.cid);
    assert_eq!(e["k8s"]["pod_deleted"], true);
}

#[test]
fn api_server_down_still_reports_the_kill_with_the_pod_uid() {
    require_root_and_btf();
    let c = Cluster::new();
    add_pod(&c, "c4");
    c.api.stop();
    let cid = container_id("c4");
    let layout = PodCgroups::new(Driver::Cgroupfs, UID, &cid, 256 * MIB, 64 * MIB);
    let w = c.watch();
    let e = kill(&layout.container(), &w, &mut Hog::anon(512).command());
    let k = &e["k8s"];
    assert_eq!(k["resolved"], false, "{e:#}");
    assert_eq!(k["pod_uid"], UID);
    assert_eq!(k["container_id"], cid.as_str());
    assert_eq!(k["qos_class"], "Burstable");
    assert!(k["pod"].is_null() && k["namespace"].is_null());
    // The kill itself is fully reported.
    assert_eq!(e["oom"]["limit_bytes"], 64 * MIB);
}

#[test]
fn kill_at_the_pod_limit_names_the_pod_cgroup_and_the_container() {
    pod_limit_kill(Driver::Cgroupfs, "c5");
}

#[test]
fn systemd_driver_layout_pod_limit_kill() {
    pod_limit_kill(Driver::Systemd, "c6");
}

fn pod_limit_kill(driver: Driver, seed: &str) {
    // The container is allowed 128 MiB, the pod only 64 MiB.
    let s = scene(seed, driver, 64 * MIB, 128 * MIB);
    let (layout, cid) = (&s.layout, &s.cid);
    let e = s.kill(Hog::anon(512));
    assert_eq!(e["oom"]["cgroup"], layout.pod_rel.as_str(), "{e:#}");
    assert_eq!(e["oom"]["limit_bytes"], 64 * MIB);
    assert_eq!(e["cgroup"]["memory"]["path"], layout.container_rel.as_str());
    assert_names_the_pod(&e, cid);
    assert_eq!(finding(&e), "pod-level limit hit while every container was under its own");
}

#[test]
fn without_kubernetes_there_is_one_info_line_and_no_pod_index() {
    require_root_and_btf();
    let home = std::env::temp_dir().join(format!("oomtrace-nohome-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let w = Watch::start_cmd(&["watch", "-o", "json", "-v"], &[], &[("HOME", home.to_str().unwrap()), ("KUBECONFIG", "")]);
    std::thread::sleep(Duration::from_millis(300));
    let err = w.stderr_text();
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("Kubernetes")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("no Kubernetes config found"), "{err}");
    let _ = std::fs::remove_dir(&home);
}

#[test]
fn a_sidecar_chosen_over_a_larger_app_names_both_containers() {
    require_root_and_btf();
    const POD_UID: &str = "5f2b6c1e-8d4a-4e3b-9a7c-2d1e0f9b8a78";
    let cluster = Cluster::new();
    let containers = [("app", containerd_id("c8-app"), None, Some("32Mi")), ("envoy", containerd_id("c8-envoy"), None, Some("16Mi"))];
    let containers: Vec<_> = containers.iter().map(|(n, id, l, r)| (*n, id.as_str(), *l, *r)).collect();
    cluster.api.add_pod(pod("shop", "web-6c8d9f7b5-k2m4n", POD_UID, &cluster.node, "Burstable", &containers, Some(("web", "6c8d9f7b5"))));
    // The pod may use 128 MiB; neither container has a limit of its own.
    let layout = PodCgroups::new(Driver::Cgroupfs, POD_UID, &container_id("c8-app"), 128 * MIB, 1 << 30);
    let mut pod_cg = TestCgroup::handle(&layout.pod_rel).unwrap();
    let envoy = pod_cg.child(&container_id("c8-envoy")).unwrap();
    let watch = cluster.watch();
    cluster.wait_synced();
    // The app holds 80 MiB; the sidecar, at oom_score_adj 1000, grows past the pod's limit.
    let mut app = layout.container().spawn_hog(&Hog { hold_ms: 60_000, ..Hog::anon(80) }).unwrap();
    layout.container().wait_for_usage(80 * MIB);
    let mut sidecar = envoy.spawn_hog(&Hog { oom_score_adj: Some(1000), ..Hog::anon(256) }).unwrap();
    assert_eq!(sidecar.wait().unwrap().signal(), Some(libc::SIGKILL));
    let evs = watch.collect(1, Duration::from_secs(30), in_cgroup(layout.pod_rel.clone()));
    let _ = app.kill();
    let _ = app.wait();
    let e = evs.first().unwrap_or_else(|| panic!("no kill: {}", watch.stderr_text()));
    assert_eq!((e["k8s"]["container"].as_str(), e["oom"]["cgroup"].as_str()), (Some("envoy"), Some(layout.pod_rel.as_str())), "{e:#}");
    let candidates = e["oom"]["candidates"].as_array().expect("candidates");
    let container_of = |pid: u32| candidates.iter().find(|c| c["pid"] == pid).map(|c| c["container"].clone());
    assert_eq!(container_of(app.id()), Some("app".into()), "{candidates:#?}");
    assert_eq!(container_of(sidecar.id()), Some("envoy".into()), "{candidates:#?}");
    let verdict = e["verdict"].as_str().unwrap();
    if e["victim"]["oom_score_adj"].is_null() {
        // 5.10's classic tracepoint carries no task: nothing to compare, nothing claimed.
        assert!(!verdict.contains("was chosen over"), "{verdict}");
        return;
    }
    let chosen = format!(
        "oomtrace-hog (pid {}, container envoy) was chosen over the larger oomtrace-hog (pid {}, container app, ",
        sidecar.id(),
        app.id()
    );
    assert!(verdict.contains(&chosen) && verdict.ends_with("oom_score_adj 1000 against 0"), "{verdict}");
}
