//! `oomtrace top` as a person uses it: in a real terminal (tmux), read off the screen
//! (capture-pane), with keys sent to it (send-keys); and its one-shot JSON.
use oomtrace_tests::cgroup::{Hog, TestCgroup};
use oomtrace_tests::oomtrace_proc::oomtrace_binary;
use oomtrace_tests::{require_root_and_btf, require_tool};
use serde_json::Value;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// A detached tmux session of its own (own socket), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(cmd: &str) -> Self {
        let tmux = require_tool("tmux");
        // One server per session: tests run in parallel, and dropping one kills its server.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let socket = format!("oomtrace-top-{}-{n}", std::process::id());
        let me = Self { socket };
        // The shell says how the program exited, on the screen it gives back, and stays.
        let shell = format!("{cmd}; echo \"exit status $?\"; sleep 600");
        let ok = Command::new(tmux)
            .args(["-L", &me.socket, "-f", "/dev/null", "new-session", "-d", "-x", "220", "-y", "40", &shell])
            .status()
            .unwrap();
        assert!(ok.success(), "tmux new-session");
        me
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux").args(["-L", &self.socket]).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p"])
    }

    /// Waits until the screen satisfies `ok`, at most `timeout`; the last screen.
    fn wait_for(&self, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + timeout;
        loop {
            let s = self.screen();
            if ok(&s) || Instant::now() > end {
                return s;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The program's exit status, once the shell printed it (within `timeout`).
    fn exited(&self, timeout: Duration) -> Option<i32> {
        let s = self.wait_for(timeout, |s| s.contains("exit status "));
        s.lines().find_map(|l| l.trim().strip_prefix("exit status ")).and_then(|v| v.parse().ok())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).status();
    }
}

/// Holds `mib` MiB in `cg` until killed.
fn resident(cg: &TestCgroup, mib: u64) -> Child {
    cg.spawn_hog(&Hog { hold_ms: 600_000, ..Hog::anon(mib) }).unwrap()
}

/// The screen line of the cgroup `rel` (the table ends each line with the cgroup path).
fn line_of<'a>(screen: &'a str, rel: &str) -> Option<&'a str> {
    screen.lines().find(|l| l.trim_end().ends_with(&format!(" {rel}")))
}

fn top_cmd(extra: &str) -> String {
    format!("{} top --no-kubernetes --interval 1s {extra}", oomtrace_binary().display())
}

#[test]
fn top_in_a_terminal_shows_the_fullest_first_counts_a_kill_and_quits_on_q() {
    require_root_and_btf();
    let full = TestCgroup::new("oomtrace-top-full").unwrap();
    full.set_limit(64 * MIB).unwrap();
    let roomy = TestCgroup::new("oomtrace-top-roomy").unwrap();
    roomy.set_limit(256 * MIB).unwrap();
    let mut a = resident(&full, 48);
    let mut b = resident(&roomy, 16);
    std::thread::sleep(Duration::from_secs(1));

    let t = Tmux::start(&top_cmd(""));
    let screen = t.wait_for(Duration::from_secs(15), |s| {
        line_of(s, &full.rel).is_some_and(|l| l.contains("MiB")) && line_of(s, &roomy.rel).is_some()
    });
    assert!(screen.starts_with("oomtrace top: "), "{screen}");
    let header = screen.lines().nth(1).unwrap();
    for col in ["USAGE", "LIMIT", "USE%", "TREND", "TO LIMIT", "KILLS/1H", "CGROUP"] {
        assert!(header.contains(col), "{header}");
    }
    let (lf, lr) = (line_of(&screen, &full.rel).unwrap(), line_of(&screen, &roomy.rel).unwrap());
    let pos = |l: &str| screen.find(l).unwrap();
    assert!(pos(lf) < pos(lr), "the fullest first:\n{screen}");
    let pct = |l: &str| -> f64 {
        let words: Vec<&str> = l.split_whitespace().collect();
        words[5].parse().unwrap_or_else(|_| panic!("USE% of {l}"))
    };
    // 48 of 64 MiB (and the hog's own pages); 16 of 256.
    assert!((74.0..82.0).contains(&pct(lf)), "{lf}");
    assert!((6.0..8.0).contains(&pct(lr)), "{lr}");
    assert!(lf.contains(" 64.0MiB "), "{lf}");

    // Kills in the full cgroup (the resident, the biggest, then the hog itself once it has
    // grown past it): KILLS and KILLS/1H show the kernel's count within a refresh or two.
    let mut c = full.spawn_hog(&Hog::anon(256)).unwrap();
    let _ = c.wait();
    let n = full.oom_kills().to_string();
    assert_ne!(n, "0");
    let kills = |s: &str| {
        line_of(s, &full.rel).map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w[w.len() - 3].to_string(), w[w.len() - 2].to_string())
        })
    };
    let screen = t.wait_for(Duration::from_secs(10), |s| kills(s) == Some((n.clone(), n.clone())));
    assert_eq!(kills(&screen), Some((n.clone(), n)), "{screen}");

    t.tmux(&["send-keys", "q"]);
    assert_eq!(t.exited(Duration::from_secs(5)), Some(0), "q quits cleanly:\n{}", t.screen());
    // The terminal is given back: the alternate screen is gone, the table with it.
    assert!(!t.screen().contains("oomtrace top: "), "{}", t.screen());
    assert!(t.screen().starts_with("exit status 0"), "{}", t.screen());
    for c in [&mut a, &mut b] {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn ctrl_c_quits_and_a_filter_leaves_cgroups_outside_pods_out() {
    require_root_and_btf();
    let cg = TestCgroup::new("oomtrace-top-ctrlc").unwrap();
    cg.set_limit(64 * MIB).unwrap();
    let t = Tmux::start(&top_cmd(""));
    t.wait_for(Duration::from_secs(15), |s| line_of(s, &cg.rel).is_some());
    t.tmux(&["send-keys", "C-c"]);
    assert_eq!(t.exited(Duration::from_secs(5)), Some(0), "Ctrl-C quits cleanly:\n{}", t.screen());

    // `--pod` matches pods only: a plain cgroup is not one.
    let t = Tmux::start(&top_cmd("--pod 'cart-*'"));
    let screen = t.wait_for(Duration::from_secs(5), |s| s.starts_with("oomtrace top: "));
    assert!(screen.starts_with("oomtrace top: "), "{screen}");
    assert!(line_of(&screen, &cg.rel).is_none(), "{screen}");
    t.tmux(&["send-keys", "q"]);
    assert_eq!(t.exited(Duration::from_secs(5)), Some(0));
}

#[test]
fn json_is_one_snapshot() {
    require_root_and_btf();
    let cg = TestCgroup::new("oomtrace-top-json").unwrap();
    cg.set_limit(96 * MIB).unwrap();
    let mut r = resident(&cg, 24);
    std::thread::sleep(Duration::from_secs(1));
    let out = Command::new(oomtrace_binary()).args(["top", "--no-kubernetes", "-o", "json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let row = rows.iter().find(|r| r["cgroup"] == cg.rel.as_str()).unwrap_or_else(|| panic!("{rows:#?}"));
    assert_eq!(row["limit_bytes"], 96 * MIB);
    let usage = row["usage_bytes"].as_u64().unwrap();
    assert!((23 * MIB..30 * MIB).contains(&usage), "{row}");
    assert_eq!(row["trend"]["kind"], "unknown", "one second of history: {row}");
    assert_eq!(row["oom_kills"], 0);
    assert!(row["oom_kills_last_hour"].is_null(), "a snapshot cannot know the last hour: {row}");
    let pcts: Vec<f64> = rows.iter().map(|r| r["usage_pct"].as_f64().unwrap()).collect();
    assert!(pcts.windows(2).all(|w| w[0] >= w[1]), "closest to the limit first: {pcts:?}");
    let _ = r.kill();
    let _ = r.wait();
}
