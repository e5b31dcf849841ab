//! Every OOM kill is captured and reported right: real memcg OOM kills, real BPF programs,
//! the kernel's own log and counters as the oracle.
use oomtrace_tests::cgroup::{Hog, HogKind, TestCgroup, Version};
use oomtrace_tests::kmsg::Kmsg;
use oomtrace_tests::oomtrace_proc::{finding, in_cgroup, victim_is, Watch};
use oomtrace_tests::require_root_and_btf;
use serde_json::Value;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

const MIB: u64 = 1 << 20;

fn within(actual: u64, expected: u64, pct: f64) -> bool {
    (actual as f64 - expected as f64).abs() <= expected as f64 * pct / 100.0 + 8192.0
}

/// The `oom.source` a strategy line promises.
fn expected_oom_source(strategy: &str) -> &'static str {
    if strategy.contains("fentry oom_kill_process") {
        "kernel:oom_control(fentry)"
    } else if strategy.contains("kprobe oom_kill_process") {
        "kernel:oom_control(kprobe)"
    } else {
        "kernel:memcg"
    }
}

/// Kills one hog in a cgroup with a 64 MiB limit under `watch_args`, checks the event
/// against the kernel's own report, and returns it.
fn one_kill(watch_args: &[&str], kind: HogKind) -> Value {
    require_root_and_btf();
    one_kill_with(Watch::start(watch_args), kind)
}

fn one_kill_with(w: Watch, kind: HogKind) -> Value {
    let cg = TestCgroup::new("oomtrace-one").unwrap();
    cg.set_limit(64 * MIB).unwrap();
    let mut kmsg = Kmsg::open().unwrap();

    let hog = Hog { kind, ..Hog::anon(256) };
    let mut child = cg.spawn_hog(&hog).unwrap();
    let pid = child.id();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "the hog should have been OOM-killed");

    let evs = w.collect(1, Duration::from_secs(30), victim_is(pid));
    assert_eq!(evs.len(), 1, "no event for the kill; oomtrace stderr:\n{}", w.stderr_text());
    let extra = w.extra(Duration::from_millis(700), |v| {
        victim_is(pid)(v) || v["oom"]["cgroup"] == cg.rel.as_str()
    });
    assert!(extra.is_empty(), "one kill, several events: {extra:?}");
    let e = evs[0].clone();

    assert_eq!(e["schema"], "oomtrace.oom_kill/v1");
    assert!(chrono_like(&e["time"]), "time is RFC 3339 with ns: {}", e["time"]);
    assert_eq!(e["victim"]["pid"], pid);
    assert_eq!(e["victim"]["comm"], "oomtrace-hog");
    assert_eq!(e["oom"]["constraint"], "memcg", "{e:#}");
    assert_eq!(e["oom"]["cgroup"], cg.rel.as_str(), "{e:#}");
    assert_eq!(e["oom"]["limit_bytes"], 64 * MIB, "{e:#}");
    let usage = e["oom"]["usage_bytes"].as_u64().expect("usage known");
    assert!(usage <= 64 * MIB && usage + 2 * MIB >= 64 * MIB, "usage {usage} not at the limit");
    // The classic tracepoint carries no task: the victim's cgroup then comes from procfs while
    // the victim exits (v1 shows an exiting task in `/`) — each path is right or unknown.
    let memory = &e["cgroup"]["memory"];
    if e["cgroup"]["source"] == "kernel" {
        assert_eq!(memory["path"], cg.rel.as_str(), "{e:#}");
    }
    assert!(memory["path"].is_null() || memory["path"] == cg.rel.as_str(), "{e:#}");
    assert_eq!(memory["path"].is_null(), memory["id"].is_null(), "{e:#}");
    assert!(memory["id"].is_null() || memory["id"].as_u64().is_some_and(|id| id > 1), "{e:#}");
    if cg.version == Version::V2 {
        assert!(e["cgroup"]["path"].is_null() || e["cgroup"]["path"] == cg.rel.as_str(), "{e:#}");
    }
    if e["cgroup"]["source"] == "unknown" {
        assert!(memory["path"].is_null() && e["cgroup"]["path"].is_null(), "{e:#}");
    }
    assert!(e.get("lost_events").is_none(), "no events may be lost here: {e:#}");

    let k = kmsg
        .wait_killed(pid, Duration::from_secs(10))
        .expect("the kernel printed no `Killed process` line for the hog");
    assert_eq!(e["victim"]["comm"], k.comm.as_str());
    assert_eq!(e["victim"]["uid"], k.uid);
    assert_eq!(e["victim"]["oom_score_adj"], k.oom_score_adj);
    let (ours, theirs) = match kind {
        HogKind::Anon => (e["victim"]["rss_anon_bytes"].as_u64().unwrap(), k.anon_rss_kb * 1024),
        HogKind::Shmem => (e["victim"]["rss_shmem_bytes"].as_u64().unwrap(), k.shmem_rss_kb * 1024),
        other => panic!("{other:?} grows no RSS of its own"),
    };
    assert!(theirs > 32 * MIB, "kernel reported only {theirs} bytes");
    assert!(within(ours, theirs, 5.0), "rss {ours} vs kernel {theirs}: {e:#}");
    assert!(within(e["victim"]["total_vm_bytes"].as_u64().unwrap(), k.total_vm_kb * 1024, 5.0));
    assert_eq!(e["oom"]["source"], expected_oom_source(&w.strategy), "{}", w.strategy);
    // The rate-limited summary line, when the kernel printed it, says the same.
    if let Some(o) = kmsg.oom_kill_lines().into_iter().find(|o| o.pid == pid) {
        assert_eq!(o.constraint, "CONSTRAINT_MEMCG");
        assert_eq!(o.oom_memcg.as_deref(), e["oom"]["cgroup"].as_str());
        if e["cgroup"]["source"] == "kernel" {
            assert_eq!(o.task_memcg.as_deref(), e["cgroup"]["memory"]["path"].as_str());
        }
    }
    e
}

fn chrono_like(v: &Value) -> bool {
    v.as_str().is_some_and(|s| s.len() >= 30 && s.ends_with('Z') && s.contains('T') && s.contains('.'))
}

#[test]
fn memcg_kill_is_reported_once_with_limit_usage_and_rss() {
    require_root_and_btf();
    let w = Watch::start(&[]);
    // Kernels whose mark_victim tracepoint carries no task (5.10 before the 5.10.235
    // backport) get the classic tracepoint; the rest tp_btf with the victim's task_struct.
    let tp_btf = w.strategy.contains("tp_btf mark_victim");
    let e = one_kill_with(w, HogKind::Anon);
    if tp_btf {
        assert_eq!(e["victim"]["source"], "tp_btf:task_struct");
        assert_eq!(e["cgroup"]["source"], "kernel");
    } else {
        assert!(e["victim"]["source"].as_str().is_some_and(|s| s.starts_with("tracepoint:")), "{e:#}");
    }
    // The hog charged the memory itself: it triggered its own OOM.
    assert_eq!(e["trigger"]["pid"], e["victim"]["pid"]);
    assert_eq!(e["trigger"]["comm"], "oomtrace-hog");
}

#[test]
fn classic_tracepoint_strategy_reports_the_same_kill() {
    let e = one_kill(&["--victim-hook", "tracepoint"], HogKind::Anon);
    assert!(
        e["victim"]["source"].as_str().unwrap().starts_with("tracepoint"),
        "{}",
        e["victim"]["source"]
    );
    // Read from procfs while the victim exits: its memory cgroup or unknown, never `/`.
    assert_ne!(e["cgroup"]["memory"]["path"], "/", "{e:#}");
}

#[test]
fn shmem_growth_is_reported_as_shmem() {
    let e = one_kill(&[], HogKind::Shmem);
    let shmem = e["victim"]["rss_shmem_bytes"].as_u64().unwrap();
    let anon = e["victim"]["rss_anon_bytes"].as_u64().unwrap();
    assert!(shmem > 10 * anon, "shmem {shmem} vs anon {anon}");
}

#[test]
fn parent_survives_while_its_child_is_killed() {
    require_root_and_btf();
    let cg = TestCgroup::new("oomtrace-parent").unwrap();
    cg.set_limit(48 * MIB).unwrap();
    let w = Watch::start(&[]);
    let hog = Hog::anon(256).command();
    let script = format!("{:?} 256 anon 0; echo child-exit=$?", hog.get_program());
    let out = cg
        .spawn(std::process::Command::new("sh").args(["-c", &script]).stdout(std::process::Stdio::piped()))
        .unwrap();
    let parent = out.id();
    let out = out.wait_with_output().unwrap();
    assert!(out.status.success(), "the parent shell must survive");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "child-exit=137");

    let evs = w.collect(1, Duration::from_secs(30), in_cgroup(cg.rel.clone()));
    assert_eq!(evs.len(), 1, "stderr:\n{}", w.stderr_text());
    let e = &evs[0];
    assert_ne!(e["victim"]["pid"], parent);
    assert_eq!(e["victim"]["comm"], "oomtrace-hog");
    assert!(w.extra(Duration::from_millis(500), in_cgroup(cg.rel.clone())).is_empty());
}

#[test]
fn burst_of_kills_across_cgroups_loses_nothing() {
    require_root_and_btf();
    const CGROUPS: usize = 5;
    const KILLS_EACH: usize = 12;
    let cgs: Vec<TestCgroup> = (0..CGROUPS)
        .map(|_| {
            let cg = TestCgroup::new("oomtrace-burst").unwrap();
            cg.set_limit(16 * MIB).unwrap();
            cg
        })
        .collect();
    let w = Watch::start(&[]);
    let before: Vec<u64> = cgs.iter().map(TestCgroup::oom_kills).collect();
    let pids: Vec<u32> = std::thread::scope(|s| {
        let handles: Vec<_> = cgs
            .iter()
            .map(|cg| {
                s.spawn(move || {
                    (0..KILLS_EACH)
                        .map(|_| {
                            let mut c = cg.spawn_hog(&Hog::anon(64)).unwrap();
                            let pid = c.id();
                            assert_eq!(c.wait().unwrap().signal(), Some(libc::SIGKILL));
                            pid
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let kernel: u64 = cgs.iter().zip(&before).map(|(cg, b)| cg.oom_kills() - b).sum();
    assert_eq!(kernel as usize, CGROUPS * KILLS_EACH, "the kernel counted a different number of kills");

    let ours = |v: &Value| cgs.iter().any(|cg| in_cgroup(cg.rel.clone())(v));
    let evs = w.collect(kernel as usize, Duration::from_secs(60), ours);
    assert_eq!(evs.len() as u64, kernel, "events vs kernel oom_kill counters; stderr:\n{}", w.stderr_text());
    assert!(w.extra(Duration::from_secs(1), ours).is_empty());
    for pid in &pids {
        assert!(evs.iter().any(|e| victim_is(*pid)(e)), "no event for pid {pid}");
    }
    assert!(evs.iter().all(|e| e.get("lost_events").is_none()));
    for e in &evs {
        assert_eq!(e["oom"]["limit_bytes"], 16 * MIB);
        assert_eq!(e["oom"]["cgroup"], e["cgroup"]["memory"]["path"]);
    }
}

#[test]
fn sigterm_detaches_and_exits_cleanly() {
    require_root_and_btf();
    let w = Watch::start(&[]);
    let status = w.stop();
    assert!(status.success(), "exit status {status:?}");
}

/// fentry and kprobe on `oom_kill_process`, each forced: the OOM context comes from the
/// kernel's own `struct oom_control`. Kernels without them (no CONFIG_KPROBES, fentry refused)
/// cannot run this; the VM suite's kernels can.
#[test]
fn context_hooks_report_the_oom_control() {
    require_root_and_btf();
    for hook in ["fentry", "kprobe"] {
        let w = match Watch::try_start(&["--context-hook", hook]) {
            Ok(w) => w,
            Err(stderr) => {
                assert!(stderr.contains("cannot hook oom_kill_process"), "{stderr}");
                eprintln!("SKIPPED {hook}: not available on this kernel: {}", stderr.trim());
                continue;
            }
        };
        assert!(w.strategy.contains(&format!("{hook} oom_kill_process")), "{}", w.strategy);
        let e = one_kill_with(w, HogKind::Anon);
        assert_eq!(e["oom"]["source"], format!("kernel:oom_control({hook})"));
        assert_eq!(e["oom"]["constraint"], "memcg");
        assert_eq!(e["oom"]["order"], 0, "{e:#}");
        assert!(e["oom"]["gfp_mask"].as_str().is_some_and(|g| g.starts_with("0x")));
        assert!(e["oom"]["invocation"].as_u64().is_some_and(|i| i >= 1));
        // The OOM domain of a memcg OOM is its limit (plus swap): never the victim's memory.
        let domain = e["oom"]["domain_bytes"].as_u64().unwrap();
        assert!(domain >= 64 * MIB, "domain {domain}");
        assert_eq!(e["trigger"]["pid"], e["victim"]["pid"]);
        assert_eq!(e["incident"]["victims"], 1);
    }
}

/// A node-wide OOM: no cgroup limit, the node runs out. Only inside the disposable test VM.
#[test]
fn node_wide_oom_is_global() {
    require_root_and_btf();
    if !oomtrace_tests::in_test_vm() {
        eprintln!("SKIPPED: a node-wide OOM is only provoked inside the test VM (cargo xtask vm-test)");
        return;
    }
    let cg = TestCgroup::new("oomtrace-global").unwrap();
    let mut kmsg = Kmsg::open().unwrap();
    let w = Watch::start(&[]);
    let hog = Hog::anon(64 * 1024).command();
    let script = format!("echo 1000 > /proc/self/oom_score_adj; exec {:?} {}", hog.get_program(), "65536 anon 0");
    let mut c = cg.spawn(std::process::Command::new("sh").args(["-c", &script])).unwrap();
    let pid = c.id();
    assert_eq!(c.wait().unwrap().signal(), Some(libc::SIGKILL));
    let evs = w.collect(1, Duration::from_secs(60), victim_is(pid));
    assert_eq!(evs.len(), 1, "stderr:\n{}", w.stderr_text());
    let e = &evs[0];
    assert_eq!(e["oom"]["constraint"], "global", "{e:#}");
    assert_eq!(e["oom"]["cgroup"], "/");
    assert_eq!(e["victim"]["oom_score_adj"], 1000);
    let k = kmsg.wait_killed(pid, Duration::from_secs(10)).expect("kernel report");
    assert!(!k.memcg, "the kernel calls it a plain 'Out of memory'");
    assert!(within(e["victim"]["rss_anon_bytes"].as_u64().unwrap(), k.anon_rss_kb * 1024, 5.0));
    if let Some(o) = kmsg.oom_kill_lines().into_iter().find(|o| o.pid == pid) {
        assert_eq!(o.constraint, "CONSTRAINT_NONE");
    }
    // The OOM killer weighed every process of the node: the victim first, by its adj, then
    // the node's other processes, none of them a kernel thread (no memory to weigh). A guest
    // still reaping gigabytes under emulation may leave too little time to read them: then the
    // daemon must say so, and claim nothing of the tasks it did not read.
    let c = e["oom"]["candidates"].as_array().expect("node-wide candidates");
    let (_, _, stderr) = w.stop_and_drain();
    if stderr.contains("the node's tasks were read only in part") {
        assert_eq!(finding(e), "node out of memory; the OOM killer chose oomtrace-hog", "{e:#}");
    } else {
        assert!(c.len() >= 2, "the node's other processes are listed: {c:#?}");
        assert_eq!(finding(e), "node out of memory; oomtrace-hog was the largest task", "{e:#}");
    }
    assert_eq!(c[0]["victim"], true, "{c:#?}");
    assert_eq!(c[0]["pid"], pid);
    assert_eq!(c[0]["oom_score_adj"], 1000);
    assert!(c[0]["points"].as_i64().is_some_and(|p| p > 0), "the node's size is known: {c:#?}");
    for other in &c[1..] {
        assert!(other["footprint_bytes"].as_u64().is_some_and(|f| f > 0), "no kernel thread: {other:#}");
        assert_ne!(other["pid"], 1, "global init is never weighed");
    }
}
