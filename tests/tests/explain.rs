//! Why a kill happened: memory breakdown, the OOM cgroup's tasks, verdicts, group kills and
//! early warnings — from real kills in real cgroups.
use oomtrace_tests::cgroup::{Hog, HogKind, TestCgroup, Version};
use oomtrace_tests::oomtrace_proc::{finding, in_cgroup, kill_in, Watch};
use oomtrace_tests::require_root_and_btf;
use serde_json::Value;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

#[test]
fn shmem_and_anon_growth_get_different_breakdowns_and_verdicts() {
    require_root_and_btf();
    let w = Watch::start(&[]);
    let anon_cg = TestCgroup::new("oomtrace-anon").unwrap();
    anon_cg.set_limit(64 * MIB).unwrap();
    let shm_cg = TestCgroup::new("oomtrace-shm").unwrap();
    shm_cg.set_limit(64 * MIB).unwrap();

    let anon = kill_in(&anon_cg, &w, Hog::anon(256));
    // A tmpfs file's pages stay charged after its writer dies (anonymous shared memory is
    // freed with the process, maybe before the details are read): a memfd this test holds.
    // SAFETY: plain syscall; the fd is owned below.
    let memfd = unsafe { libc::memfd_create(c"oomtrace-shm".as_ptr(), 0) };
    assert!(memfd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: just created, owned by nothing else.
    let memfd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(memfd) };
    let shm_fd = Some(std::os::fd::AsRawFd::as_raw_fd(&memfd));
    let shm = kill_in(&shm_cg, &w, Hog { kind: HogKind::Shmem, shm_fd, ..Hog::anon(256) });

    let stat = |e: &Value, k: &str| e["oom"]["memory_stat"][k].as_u64().unwrap_or_else(|| panic!("{k}: {e:#}"));
    // Anonymous growth: anon dominates the cgroup right after the kill (the victim's
    // memory may already be partly reaped; the kernel's figure at the kill is in `victim`).
    assert!(anon["victim"]["rss_anon_bytes"].as_u64().unwrap() > 48 * MIB);
    assert_eq!(finding(&anon), "anon memory of oomtrace-hog filled the cgroup limit", "{anon:#}");
    // tmpfs growth: shmem pages stay charged (page cache) and say so.
    assert!(stat(&shm, "shmem_bytes") > 32 * MIB, "{shm:#}");
    // v2's `file` includes shmem, but the two are separate counters, read one after the other
    // while the victim's pages are being freed, and each may hold up to 32 pages per CPU not
    // yet folded in (MEMCG_CHARGE_BATCH): `file` can read that much below `shmem`, never more.
    let cpus = std::thread::available_parallelism().map_or(64, |n| n.get() as u64);
    let slack = (2 * 32 * cpus + 1) * 4096;
    let (file, shmem) = (stat(&shm, "file_bytes"), stat(&shm, "shmem_bytes"));
    assert!(file + slack >= shmem, "file {file} < shmem {shmem} by more than the kernel's batching ({slack}): {shm:#}");
    assert!(shm["victim"]["rss_shmem_bytes"].as_u64().unwrap() > 48 * MIB);
    let v = shm["verdict"].as_str().unwrap();
    assert!(v.starts_with("page cache + tmpfs (shmem) made up "), "{v}");
    for e in [&anon, &shm] {
        assert_eq!(e["oom"]["details_source"], "cgroupfs+procfs");
        assert!(e["oom"]["details_after_ms"].as_f64().unwrap() < 5000.0);
    }
}

#[test]
fn the_oom_cgroups_tasks_are_listed_with_their_rss() {
    require_root_and_btf();
    let cg = TestCgroup::new("oomtrace-tasks").unwrap();
    cg.set_limit(96 * MIB).unwrap();
    let w = Watch::start(&[]);
    // Two small residents that hold 12 MiB each, then one that grows until it is killed.
    let mut holders: Vec<_> = (0..2)
        .map(|_| cg.spawn_hog(&Hog { hold_ms: 60_000, ..Hog::anon(12) }).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let e = kill_in(&cg, &w, Hog::anon(512));
    let tasks = e["oom"]["tasks"].as_array().expect("tasks");
    let victim = e["victim"]["pid"].as_u64().unwrap();
    for h in &holders {
        let t = tasks
            .iter()
            .find(|t| t["pid"].as_u64() == Some(h.id() as u64))
            .unwrap_or_else(|| panic!("holder {} missing from {e:#}\nstderr:\n{}", h.id(), w.stderr_text()));
        let rss = t["rss_anon_bytes"].as_u64().unwrap();
        assert!((11 * MIB..=14 * MIB).contains(&rss), "holder rss {rss}");
        assert_eq!(t["comm"], "oomtrace-hog");
    }
    let v = tasks.iter().find(|t| t["pid"].as_u64() == Some(victim)).expect("victim listed");
    assert_eq!(v["rss_anon_bytes"], e["victim"]["rss_anon_bytes"]);
    // Largest first: the victim.
    assert_eq!(tasks[0]["pid"].as_u64(), Some(victim));
    for h in holders.iter_mut() {
        let _ = h.kill();
        let _ = h.wait();
    }
}

#[test]
fn a_smaller_task_with_a_higher_oom_score_adj_is_chosen_and_the_verdict_says_why() {
    require_root_and_btf();
    let cg = TestCgroup::new("oomtrace-adj").unwrap();
    cg.set_limit(128 * MIB).unwrap();
    let w = Watch::start(&[]);
    // An 80 MiB resident at adj 0, then a pusher at adj 1000 (as BestEffort pods get): each
    // adj point is worth 128 MiB / 1000 of memory, so the kernel kills the smaller pusher.
    let mut resident = cg.spawn_hog(&Hog { hold_ms: 60_000, ..Hog::anon(80) }).unwrap();
    cg.wait_for_usage(80 * MIB);
    let mut pusher = cg.spawn_hog(&Hog { oom_score_adj: Some(1000), ..Hog::anon(256) }).unwrap();
    assert_eq!(pusher.wait().unwrap().signal(), Some(libc::SIGKILL));
    let evs = w.collect(1, Duration::from_secs(30), in_cgroup(cg.rel.clone()));
    let _ = resident.kill();
    let _ = resident.wait();
    let e = evs.first().unwrap_or_else(|| panic!("no kill: {}", w.stderr_text()));
    assert_eq!(e["victim"]["pid"], pusher.id(), "{e:#}");
    let candidates = e["oom"]["candidates"].as_array().expect("candidates");
    let find = |pid: u32| candidates.iter().find(|c| c["pid"] == pid).unwrap_or_else(|| panic!("{pid} not in {candidates:#?}"));
    // 128 MiB of 4 KiB pages: each adj point is 32 pages (no swap here, or the kernel's own
    // domain size from the OOM context).
    let page = 4096;
    let r = find(resident.id());
    assert_eq!((r["oom_score_adj"].as_i64(), r["victim"].as_bool()), (Some(0), Some(false)), "{r}");
    let footprint = r["footprint_bytes"].as_u64().unwrap();
    assert!((80 * MIB..90 * MIB).contains(&footprint), "{r}");
    assert_eq!(r["points"].as_i64(), Some((footprint / page) as i64), "{r}");
    assert_eq!(r["cgroup"], cg.rel.as_str());
    let v = find(pusher.id());
    assert_eq!(v["victim"], true);
    let verdict = e["verdict"].as_str().unwrap();
    if e["victim"]["oom_score_adj"].is_null() {
        // The kernel's record had no task (5.10's classic tracepoint) and procfs was late:
        // nothing to compare with, so nothing is claimed.
        assert!(!verdict.contains("was chosen over"), "{verdict}");
        return;
    }
    assert_eq!(v["oom_score_adj"], 1000, "{v}");
    let v_footprint = v["footprint_bytes"].as_u64().unwrap();
    assert_eq!(v["points"].as_i64(), Some((v_footprint / page) as i64 + 32_000), "{v}");
    assert_eq!(candidates[0]["pid"], pusher.id(), "highest points first: {candidates:#?}");
    let pid = resident.id();
    assert!(
        verdict.contains(&format!("; oomtrace-hog (pid {}) was chosen over the larger oomtrace-hog (pid {pid}, ", pusher.id()))
            && verdict.ends_with("oom_score_adj 1000 against 0"),
        "{verdict}"
    );
}

fn is_warning_for(v: &Value, cg: &TestCgroup) -> bool {
    v["schema"] == "oomtrace.memory_pressure/v1" && v["cgroup"] == cg.rel.as_str()
}

fn pressure_for(w: &Watch, cg: &TestCgroup) -> Value {
    let warn = w.collect(1, Duration::from_secs(30), |v| is_warning_for(v, cg));
    assert_eq!(warn.len(), 1, "no pressure event; stderr:\n{}", w.stderr_text());
    warn.into_iter().next().unwrap()
}

/// The first warning for `cg` and the kill in it, which must be printed in that order:
/// warnings and kills come from two rings, and the reader takes the warnings' first. (More
/// warnings may come between, one a second.)
fn warning_then_kill(w: &Watch, cg: &TestCgroup) -> (Value, Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let is_kill = in_cgroup(cg.rel.clone());
    let mut warning = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(v) = w.collect(1, left, |v| is_warning_for(v, cg) || is_kill(v)).pop() else {
            panic!("no kill for the hog (warning: {warning:?}); stderr:\n{}", w.stderr_text())
        };
        if is_warning_for(&v, cg) {
            warning.get_or_insert(v);
        } else {
            let w = warning.unwrap_or_else(|| panic!("the kill was printed before any warning: {v:#}"));
            return (w, v);
        }
    }
}

#[test]
fn reclaim_at_the_limit_warns_before_the_kill() {
    require_root_and_btf();
    let cg = TestCgroup::new("oomtrace-pressure").unwrap();
    cg.set_limit(48 * MIB).unwrap();
    let w = Watch::start(&["--warnings"]);
    assert!(w.strategy.contains("mm_vmscan_memcg_reclaim_end"), "{}", w.strategy);
    let p = if cg.version == Version::V1 {
        // No memory.high on v1, and page cache needs a disk-backed filesystem (the test VM's
        // are 9p and tmpfs): anon memory past the limit, whose reclaim passes at memory.max
        // come before the kill.
        let mut hog = cg.spawn_hog(&Hog::anon(256)).unwrap();
        assert_eq!(hog.wait().unwrap().signal(), Some(libc::SIGKILL));
        let (p, first) = warning_then_kill(&w, &cg);
        assert_eq!(p["reason"], "max");
        assert_eq!(p["limit_bytes"], 48 * MIB);
        assert!(p["usage_bytes"].as_u64().unwrap() + 4 * MIB >= 48 * MIB, "{p:#}");
        assert_eq!(p["task"]["comm"], "oomtrace-hog");
        assert!(first["time"].as_str().unwrap() > p["time"].as_str().unwrap(), "the kill follows the warning");
        p
    } else {
        // cgroup v2: throttle at memory.high — the charge path reclaims above it without
        // killing, whatever the filesystems (the test VM has no disk-backed page cache).
        cg.write("memory.high", &(32 * MIB).to_string()).unwrap();
        let st = cg.spawn_hog(&Hog::anon(34)).unwrap().wait().unwrap();
        assert!(st.success(), "the throttled hog must not be killed: {st:?}");
        let p = pressure_for(&w, &cg);
        assert_eq!(p["reason"], "high");
        assert_eq!(p["high_bytes"], 32 * MIB);
        // Usage after the reclaim pass: near memory.high (the pass freed only file pages).
        assert!(p["usage_bytes"].as_u64().unwrap() + 4 * MIB > 32 * MIB, "{p:#}");
        assert_eq!(p["task"]["comm"], "oomtrace-hog");
        cg.write("memory.high", "max").unwrap();
        p
    };
    let kill = kill_in(&cg, &w, Hog::anon(256));
    assert!(kill["time"].as_str().unwrap() > p["time"].as_str().unwrap(), "the kill follows the warning");
}

#[test]
fn group_kill_is_one_incident_with_every_victim() {
    require_root_and_btf();
    let cg = TestCgroup::new("oomtrace-group").unwrap();
    if cg.version == Version::V1 || cg.write("memory.oom.group", "1").is_err() {
        eprintln!(
            "SKIPPED: memory.oom.group needs the memory controller on cgroup v2; this host has it on v1 \
             (runs in `cargo xtask vm-test`)"
        );
        return;
    }
    cg.set_limit(96 * MIB).unwrap();
    let w = Watch::start(&[]);
    let mut holders: Vec<_> = (0..2)
        .map(|_| cg.spawn_hog(&Hog { hold_ms: 60_000, ..Hog::anon(8) }).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut big = cg.spawn_hog(&Hog::anon(512)).unwrap();
    let mut pids: Vec<u64> = holders.iter().map(|h| h.id() as u64).collect();
    pids.push(big.id() as u64);
    assert_eq!(big.wait().unwrap().signal(), Some(libc::SIGKILL));
    for h in holders.iter_mut() {
        assert_eq!(h.wait().unwrap().signal(), Some(libc::SIGKILL), "group kill kills every task");
    }
    // By pid: where the victim hook carries no task (the classic tracepoint on 5.10), the
    // memory cgroup of a victim already reaped is unknown, as it should be.
    let evs = w.collect(3, Duration::from_secs(30), |v| v["victim"]["pid"].as_u64().is_some_and(|p| pids.contains(&p)));
    assert_eq!(evs.len(), 3, "stderr:\n{}", w.stderr_text());
    let id = &evs[0]["incident"]["id"];
    for e in &evs {
        assert_eq!(&e["incident"]["id"], id);
        assert_eq!(e["incident"]["victims"], 3);
        assert_eq!(e["oom"]["group_kill"], true);
    }
}
