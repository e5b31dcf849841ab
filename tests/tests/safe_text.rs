//! Names chosen by whoever runs a process or makes a cgroup never reach a terminal raw: a
//! real process renames itself to an escape sequence inside a cgroup whose name is one, and
//! is OOM-killed; the table shows both escaped, the JSON carries both exactly.
use oomtrace_tests::cgroup::{Hog, TestCgroup};
use oomtrace_tests::oomtrace_proc::{oomtrace_binary, victim_is, Watch};
use oomtrace_tests::require_root_and_btf;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const RED: &str = "\x1b[31mRED\x1b[0m";

#[test]
fn hostile_comm_and_cgroup_names_are_escaped_in_the_table() {
    require_root_and_btf();
    let cg = TestCgroup::new("oomtrace-\x1b[32mgreen").unwrap();
    cg.set_limit(64 * MIB).unwrap();
    let json = Watch::start(&[]);
    let mut table = Command::new(oomtrace_binary())
        .args(["watch", "-o", "wide"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = channel();
    let out = BufReader::new(table.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in out.split(b'\n').map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let err = BufReader::new(table.stderr.take().unwrap());
    let (ready_tx, ready) = channel();
    std::thread::spawn(move || {
        for line in err.lines().map_while(Result::ok) {
            if line.starts_with("watching for OOM kills") {
                let _ = ready_tx.send(());
            }
        }
    });
    ready
        .recv_timeout(Duration::from_secs(60))
        .expect("the table watcher attached");

    let mut hog = Hog::anon(256).command();
    hog.env("OOMTRACE_HOG_COMM", RED);
    let mut child = cg.spawn(&mut hog).unwrap();
    let pid = child.id();
    assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));

    // JSON: the names exactly as the kernel has them (serde escapes them).
    let evs = json.collect(1, Duration::from_secs(30), victim_is(pid));
    assert_eq!(evs.len(), 1, "{}", json.stderr_text());
    assert_eq!(evs[0]["victim"]["comm"], RED);
    assert_eq!(evs[0]["oom"]["cgroup"], cg.rel.as_str());

    // The table: our victim's row, with no raw control byte anywhere in the output.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let row = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .expect("a table row for the victim");
        seen.push(line.clone());
        let text = String::from_utf8(line).expect("UTF-8 table");
        if text.split_whitespace().nth(1) == Some(&pid.to_string()) {
            break text;
        }
    };
    for line in &seen {
        assert!(
            !line.iter().any(|&b| b < 0x20 || b == 0x7f),
            "raw control byte in {:?}",
            String::from_utf8_lossy(line)
        );
        assert!(!String::from_utf8_lossy(line)
            .chars()
            .any(|c| ('\u{80}'..='\u{9f}').contains(&c)));
    }
    assert!(row.contains(r"\x1b[31mRED\x1b[0m"), "{row}");
    let escaped_cgroup = cg.rel.replace('\x1b', r"\x1b");
    assert!(row.contains(&escaped_cgroup), "{row}");
    let _ = table.kill();
    let _ = table.wait();
}
