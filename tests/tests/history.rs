//! The memory history before a kill and its trend, from real workloads in real cgroups: a
//! burst from a quiet start, a level held well above half the limit and then pushed over it, a
//! working set that sits at its limit and then goes over it, and a cgroup killed before it had
//! any history. (The five-minute leak is `leak.rs`.)
use oomtrace_tests::cgroup::{Hog, TestCgroup};
use oomtrace_tests::oomtrace_proc::{in_cgroup, kill_in, without_charge, Watch};
use oomtrace_tests::require_root_and_btf;
use serde_json::Value;
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// `oom.history` as (seconds before the kill, bytes), checked for shape.
fn history(e: &Value) -> Vec<(f64, u64)> {
    let h = e["oom"]["history"].as_array().unwrap_or_else(|| panic!("no history: {e:#}"));
    let h: Vec<(f64, u64)> = h.iter().map(|p| (p[0].as_f64().unwrap(), p[1].as_u64().unwrap())).collect();
    assert!(h.len() <= 60, "{h:?}");
    assert!(h.windows(2).all(|w| w[0].0 > w[1].0), "oldest first: {h:?}");
    h
}

/// Holds `mib` MiB in `cg` for as long as the test needs it.
fn resident(cg: &TestCgroup, mib: u64) -> std::process::Child {
    let c = cg.spawn_hog(&Hog { hold_ms: 600_000, ..Hog::anon(mib) }).unwrap();
    std::thread::sleep(Duration::from_secs(2)); // grown
    c
}

#[test]
fn a_burst_is_a_spike_a_held_level_is_steady_and_a_new_cgroup_is_unknown() {
    require_root_and_btf();
    let w = Watch::start(&[]);
    // Killed before the sampler had 20 s of it: too little history to say.
    let new = TestCgroup::new("oomtrace-new").unwrap();
    new.set_limit(64 * MIB).unwrap();
    let e = kill_in(&new, &w, Hog::anon(256));
    assert_eq!(e["oom"]["trend"]["kind"], "unknown", "{e:#}");
    assert!(!without_charge(&e).contains(';'), "{e:#}");

    let cg = TestCgroup::new("oomtrace-spike").unwrap();
    cg.set_limit(256 * MIB).unwrap();
    // Meanwhile, 80 of 128 MiB: above half the limit, far from it, for too short a time to
    // be a leak.
    let held = TestCgroup::new("oomtrace-steady").unwrap();
    held.set_limit(128 * MIB).unwrap();
    // 48 MiB resident for 40 s (the sampler finds a new cgroup within 10 s), then a burst to
    // the limit.
    let mut quiet = resident(&cg, 48);
    let mut level = resident(&held, 80);
    std::thread::sleep(Duration::from_secs(36));
    let steady = kill_in_either(&held, &w, &mut level);
    assert_eq!(steady["oom"]["trend"]["kind"], "steady", "{steady:#}");
    assert!(history(&steady)[0].0 >= 20.0, "{steady:#}");
    let v = without_charge(&steady);
    assert!(!v.contains(';'), "a steady level adds nothing to the verdict: {v}");
    assert!(steady["oom"]["recommendation"].is_null(), "no evidence, no recommendation: {steady:#}");
    let e = kill_in(&cg, &w, Hog::anon(1024));
    let _ = quiet.kill();
    let _ = quiet.wait();
    let t = &e["oom"]["trend"];
    assert_eq!(t["kind"], "spike", "{e:#}");
    // From the quiet level (the lowest sample of the last 10 s), however fast the burst grew.
    let from = t["from_bytes"].as_u64().unwrap();
    assert!((40 * MIB..80 * MIB).contains(&from), "{t}");
    assert!(t["seconds"].as_f64().unwrap() <= 10.0, "{t}");
    let h = history(&e);
    assert!(h[0].0 >= 20.0, "the history reaches back half a minute: {h:?}");
    // Quiet before the burst (which takes well under 20 s, even emulated).
    assert!(h.iter().filter(|p| p.0 > 20.0).all(|p| (40 * MIB..80 * MIB).contains(&p.1)), "quiet before: {h:?}");
    let v = e["verdict"].as_str().unwrap();
    assert!(v.contains("; jumped from "), "{v}");
    let r = &e["oom"]["recommendation"];
    assert!(r["action"].as_str().unwrap().starts_with("find what allocated"), "{r}");
    assert!(r["limit_bytes"].is_null(), "no number for a burst: {r}");
    assert!(w.stop().success());
}

#[test]
fn a_working_set_at_its_limit_gets_a_limit_that_fits_it() {
    require_root_and_btf();
    let w = Watch::start(&[]);
    let cg = TestCgroup::new("oomtrace-atlimit").unwrap();
    let limit = 128 * MIB;
    cg.set_limit(limit).unwrap();
    // 124 of 128 MiB (97 % with the hog's own pages) for 50 s (the sampler finds a new
    // cgroup within 10 s), then 64 MiB more.
    let mut set = resident(&cg, 124);
    std::thread::sleep(Duration::from_secs(48));
    let e = kill_in_either(&cg, &w, &mut set);
    let t = &e["oom"]["trend"];
    assert_eq!(t["kind"], "at_limit", "{e:#}");
    assert!(t["seconds"].as_u64().unwrap() >= 30, "{t}");
    let h = history(&e);
    assert!(h.iter().filter(|p| p.0 <= 30.0).all(|p| p.1 >= limit * 95 / 100), "{h:?}");
    let v = e["verdict"].as_str().unwrap();
    assert!(v.contains("; sat within 5 % of the limit for "), "{v}");
    let r = &e["oom"]["recommendation"];
    let needed = r["limit_bytes"].as_u64().unwrap_or_else(|| panic!("{r}"));
    // What was not reclaimable at the kill (about the limit) plus 25 %.
    assert!((limit + limit / 8..=limit * 3 / 2).contains(&needed), "{r}");
    assert_eq!(needed % (16 * MIB), 0);
    assert!(r["reason"].as_str().unwrap().starts_with("the working set did not fit"), "{r}");
    assert!(w.stop().success());
}

/// Pushes `cg` over its limit with 64 MiB more; the kernel kills the pusher or the resident
/// `set` (whichever it scores higher). The kill's event.
fn kill_in_either(cg: &TestCgroup, w: &Watch, set: &mut std::process::Child) -> Value {
    let mut push = cg.spawn_hog(&Hog::anon(64)).unwrap();
    let evs = w.collect(1, Duration::from_secs(30), in_cgroup(cg.rel.clone()));
    for c in [&mut push, set] {
        let _ = c.kill();
        let _ = c.wait();
    }
    assert_eq!(evs.len(), 1, "stderr:\n{}", w.stderr_text());
    evs.into_iter().next().unwrap()
}
