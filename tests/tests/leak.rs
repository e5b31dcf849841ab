//! A slow leak, about 1 MiB/s, until the kernel kills it: the trend says `leak`, with its rate,
//! and the recommendation names no limit. It takes five minutes, so it runs on the host only:
//! the sampler and the rules it checks are the ones `history.rs` runs on every kernel.
use oomtrace_tests::cgroup::{Hog, TestCgroup};
use oomtrace_tests::oomtrace_proc::{kill_in, Watch};
use oomtrace_tests::require_root_and_btf;

const MIB: u64 = 1 << 20;

#[test]
fn a_slow_leak_is_a_leak() {
    require_root_and_btf();
    let w = Watch::start(&[]);
    let cg = TestCgroup::new("oomtrace-leak").unwrap();
    cg.set_limit(320 * MIB).unwrap();
    // 1 MiB, then a second's pause: killed after about 5 min 20 s.
    let e = &kill_in(&cg, &w, Hog { step_ms: 1000, ..Hog::anon(1024) });
    let t = &e["oom"]["trend"];
    assert_eq!(t["kind"], "leak", "{e:#}");
    let rate = t["growth_bytes_per_min"].as_u64().unwrap();
    // 1 MiB a second plus the time touching it takes: 50–62 MiB/min.
    assert!((50 * MIB..=62 * MIB).contains(&rate), "{t}");
    assert!(t["since_s"].as_u64().unwrap() >= 290, "{t}");
    let h = e["oom"]["history"].as_array().unwrap();
    assert_eq!(h.len(), 60, "{h:?}");
    assert!(h[0][0].as_f64().unwrap() >= 290.0, "{h:?}");
    let v = e["verdict"].as_str().unwrap();
    assert!(v.contains("; grew steadily ") && v.ends_with("looks like a leak: a higher limit only delays the next kill"), "{v}");
    let r = &e["oom"]["recommendation"];
    assert_eq!(r["action"], "find the leak", "{r}");
    assert!(r["limit_bytes"].is_null(), "{r}");
    assert!(w.stop().success());
}
