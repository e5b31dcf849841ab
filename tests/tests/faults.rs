//! Faults: a ring buffer too small for the burst, SIGTERM in the middle of a storm, restarts,
//! an API server that goes away. Nothing is lost silently and nothing is left attached.
use oomtrace_tests::apiserver::{container_id, containerd_id, pod, ApiServer};
use oomtrace_tests::cgroup::{Hog, TestCgroup};
use oomtrace_tests::oomtrace_proc::{in_cgroup, victim_is, Watch};
use oomtrace_tests::require_root_and_btf;
use serde_json::Value;
use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::sync::Mutex;
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// These tests count BPF links and kernel-wide events: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn kill_n(cg: &TestCgroup, n: usize) -> Vec<u32> {
    (0..n)
        .map(|_| {
            let mut c = cg.spawn_hog(&Hog::anon(64)).unwrap();
            let pid = c.id();
            assert_eq!(c.wait().unwrap().signal(), Some(libc::SIGKILL));
            pid
        })
        .collect()
}

/// What is attached to `mark_victim` right now, each by a key of its own: BPF links (tp_btf;
/// the classic tracepoint on 5.15 and later) and perf-event attachments (the classic tracepoint
/// on older kernels, which have no perf links).
fn mark_victim_links() -> BTreeSet<String> {
    let bpftool = |what: &str| -> Value {
        let out = std::process::Command::new("bpftool").args(["-j", what, "list"]).output().expect("bpftool");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(vec![]))
    };
    let links = bpftool("link");
    let perf = bpftool("perf");
    let links = links.as_array().into_iter().flatten().filter(|l| l["tp_name"] == "mark_victim").filter_map(|l| l["id"].as_u64()).map(|id| format!("link {id}"));
    let perf = perf
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["fd_type"] == "tracepoint" && p["tracepoint"] == "mark_victim")
        .map(|p| format!("perf pid {} fd {}", p["pid"], p["fd"]));
    links.chain(perf).collect()
}

#[test]
fn ring_buffer_overflow_is_counted_exactly() {
    let _g = serial();
    require_root_and_btf();
    let cg = TestCgroup::new("oomtrace-overflow").unwrap();
    cg.set_limit(16 * MIB).unwrap();
    // Room for one victim record only (a record is ~4.5 KiB).
    let w = Watch::start(&["--ring-buffer-bytes", "8192"]);
    // A consumer that is not reading: the kernel keeps producing, the ring fills up.
    w.signal(libc::SIGSTOP);
    let pids = kill_n(&cg, 10);
    w.signal(libc::SIGCONT);
    let evs = w.collect(1, Duration::from_secs(10), in_cgroup(cg.rel.clone()));
    assert_eq!(evs.len(), 1, "stderr:\n{}", w.stderr_text());
    assert!(w.extra(Duration::from_millis(500), in_cgroup(cg.rel.clone())).is_empty());
    assert_eq!(evs[0]["victim"]["pid"], pids[0], "the first victim fit in the ring");
    // The nine that did not fit are reported with the first event printed after they were
    // dropped — here that one, since the consumer only woke up after all ten.
    assert_eq!(evs[0]["lost_events"], 9, "{:#}", evs[0]);
    // Nothing more to report on the next one.
    let mut c = cg.spawn_hog(&Hog::anon(64)).unwrap();
    let last = c.id();
    assert_eq!(c.wait().unwrap().signal(), Some(libc::SIGKILL));
    let next = w.collect(1, Duration::from_secs(10), victim_is(last));
    assert_eq!(next.len(), 1);
    assert!(next[0].get("lost_events").is_none(), "{:#}", next[0]);
    assert_eq!(cg.oom_kills(), 11, "the kernel's own count");
    // And on stderr within a second, for a person watching.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(w.stderr_text().contains("9 OOM kill events lost so far"), "{}", w.stderr_text());
}

/// The numbers of a log message, in order (colour escapes skipped).
fn numbers(text: &str) -> Vec<u64> {
    let mut plain = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            plain.push(c);
        }
    }
    plain.split(|c: char| !c.is_ascii_digit()).filter(|w| !w.is_empty()).map(|w| w.parse().unwrap()).collect()
}

#[test]
fn sigterm_during_a_storm_delivers_or_counts_every_kill_and_detaches() {
    let _g = serial();
    require_root_and_btf();
    let before = mark_victim_links();
    let cg = TestCgroup::new("oomtrace-storm").unwrap();
    cg.set_limit(16 * MIB).unwrap();
    let w = Watch::start(&["-v"]);
    let ours: BTreeSet<String> = mark_victim_links().difference(&before).cloned().collect();
    assert_eq!(ours.len(), 1, "one mark_victim link while running");
    let storm = std::thread::spawn({
        let rel = cg.rel.clone();
        move || {
            let cg = TestCgroup::handle(&rel).unwrap();
            kill_n(&cg, 30)
        }
    });
    // In the middle of it: once the kernel has killed the first (under emulation that takes
    // seconds, so no fixed sleep).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while cg.oom_kills() == 0 {
        assert!(std::time::Instant::now() < deadline, "the storm killed nothing");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (status, printed, stderr) = w.stop_and_drain();
    assert!(status.success(), "{status:?}");
    storm.join().unwrap();
    // Every victim the programs saw until they were detached was printed or counted lost.
    let line = stderr.lines().find(|l| l.contains("stopping: the kernel saw")).unwrap_or_else(|| panic!("{stderr}"));
    let n = numbers(line.split_once("stopping:").unwrap().1);
    assert_eq!(n.len(), 5, "{line}");
    let (seen, emitted, kernel, queue, exit) = (n[0], n[1], n[2], n[3], n[4]);
    assert!(seen > 0, "{line}");
    assert_eq!(seen, emitted + kernel + queue + exit, "{line}");
    let kills = printed.iter().filter(|v| v["schema"] == "oomtrace.oom_kill/v1").count() as u64;
    assert_eq!(kills, emitted, "{line}");
    let mine = printed.iter().filter(|v| in_cgroup(cg.rel.clone())(v)).count() as u64;
    assert!(mine > 0 && mine <= cg.oom_kills(), "{mine} printed of {} kills; {line}", cg.oom_kills());
    let left: Vec<String> = mark_victim_links().intersection(&ours).cloned().collect();
    assert!(left.is_empty(), "links left attached after exit: {left:?}");
}

#[test]
fn a_restarted_tracer_works_again() {
    let _g = serial();
    require_root_and_btf();
    let cg = TestCgroup::new("oomtrace-restart").unwrap();
    cg.set_limit(16 * MIB).unwrap();
    for round in 0..2 {
        let w = Watch::start(&[]);
        let pid = kill_n(&cg, 1)[0];
        assert_eq!(w.collect(1, Duration::from_secs(10), victim_is(pid)).len(), 1, "round {round}");
        assert!(w.stop().success());
    }
}

#[test]
fn api_server_restart_mid_watch_loses_no_kill_and_resyncs() {
    let _g = serial();
    require_root_and_btf();
    const UID_A: &str = "1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d";
    const UID_B: &str = "2c3d4e5f-6071-4b8c-9d0e-1f2a3b4c5d6e";
    let api = ApiServer::start();
    let node = format!("node-faults-{}", std::process::id());
    let kubeconfig = std::env::temp_dir().join(format!("oomtrace-faults-{}", std::process::id()));
    api.write_kubeconfig(&kubeconfig).unwrap();
    let mk = |name: &str, uid: &str, seed: &str| {
        pod("shop", name, uid, &node, "Burstable", &[("app", &containerd_id(seed), None, None)], None)
    };
    api.add_pod(mk("a", UID_A, "fa"));
    let mut root = TestCgroup::new("oomtrace-faults").unwrap();
    let (ca, cb) = {
        let qos = root.child("kubepods").unwrap().child("burstable").unwrap();
        let a = qos.child(&format!("pod{UID_A}")).unwrap();
        let ca = a.child(&container_id("fa")).unwrap();
        ca.set_limit(16 * MIB).unwrap();
        let ca = ca.rel.clone();
        let b = qos.child(&format!("pod{UID_B}")).unwrap();
        let cb = b.child(&container_id("fb")).unwrap();
        cb.set_limit(16 * MIB).unwrap();
        (ca, cb.rel.clone())
    };
    let w = Watch::start_cmd(&["watch", "-o", "json"], &["--kubeconfig", kubeconfig.to_str().unwrap()], &[("NODE_NAME", &node)]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !api.requests().iter().any(|r| r.is_pod_watch()) {
        assert!(std::time::Instant::now() < deadline, "never watched pods");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The API server dies mid-watch; a kill meanwhile is printed, attributed from the index.
    api.stop();
    let pid = kill_n(&TestCgroup::handle(&ca).unwrap(), 1)[0];
    let e = w.collect(1, Duration::from_secs(10), victim_is(pid));
    assert_eq!(e.len(), 1);
    assert_eq!(e[0]["k8s"]["pod"], "a");
    // Back up with a pod created meanwhile: the index resyncs and knows it.
    api.restart();
    api.add_pod(mk("b", UID_B, "fb"));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let pid = kill_n(&TestCgroup::handle(&cb).unwrap(), 1)[0];
        let e = w.collect(1, Duration::from_secs(10), victim_is(pid));
        assert_eq!(e.len(), 1, "kill {pid} lost; stderr:\n{}", w.stderr_text());
        if e[0]["k8s"]["resolved"] == true {
            assert_eq!(e[0]["k8s"]["pod"], "b");
            break;
        }
        assert_eq!(e[0]["k8s"]["pod_uid"], UID_B, "unresolved kills still carry the pod UID");
        assert!(std::time::Instant::now() < deadline, "the index never resynced");
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = std::fs::remove_file(&kubeconfig);
}
