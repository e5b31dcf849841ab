//! Bad conditions get a clear error and a non-zero exit, and leave nothing attached.
use oomtrace_tests::oomtrace_proc::oomtrace_binary;
use oomtrace_tests::require_root_and_btf;
use std::process::{Command, Output};

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(std::process::Stdio::null()).output().expect("run oomtrace")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn without_cap_bpf_it_says_which_capabilities_are_missing() {
    require_root_and_btf();
    let o = run(Command::new("setpriv")
        .args(["--bounding-set=-bpf,-perfmon,-sys_admin", "--inh-caps=-bpf,-perfmon,-sys_admin", "--"])
        .arg(oomtrace_binary())
        .args(["watch", "--count", "1"]));
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("missing capabilities: CAP_BPF, CAP_PERFMON"), "stderr: {e}");
    assert!(!e.contains("watching for OOM kills"));
}

#[test]
fn without_btf_it_says_so() {
    require_root_and_btf();
    let o = run(Command::new(oomtrace_binary()).args(["watch", "--btf", "/nonexistent/vmlinux"]));
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("cannot read kernel BTF at /nonexistent/vmlinux"), "stderr: {e}");
    assert!(e.contains("CONFIG_DEBUG_INFO_BTF"), "stderr: {e}");
}

#[test]
fn corrupt_btf_is_an_error_not_a_crash() {
    require_root_and_btf();
    let dir = std::env::temp_dir().join(format!("oomtrace-badbtf-{}", std::process::id()));
    std::fs::write(&dir, b"\x9f\xeb\x01\x00garbage").unwrap();
    let o = run(Command::new(oomtrace_binary()).args(["watch", "--btf"]).arg(&dir));
    std::fs::remove_file(&dir).unwrap();
    assert_eq!(o.status.code(), Some(1), "stderr: {}", stderr(&o));
    assert!(stderr(&o).contains("BTF"), "stderr: {}", stderr(&o));
}

#[test]
fn bad_flags_are_rejected() {
    let o = run(Command::new(oomtrace_binary()).args(["watch", "--ring-buffer-bytes", "1000"]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("power of two"), "stderr: {}", stderr(&o));

    let o = run(Command::new(oomtrace_binary()).args(["watch", "-o", "yaml"]));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("invalid value 'yaml'"), "stderr: {}", stderr(&o));
}

/// Forcing a hook this kernel lacks fails loudly (exit 1, the reason); where the
/// kernel has it (the VM tests), the forced hook is the one in use.
#[test]
fn forced_context_hooks_work_or_fail_cleanly() {
    require_root_and_btf();
    for hook in ["fentry", "kprobe"] {
        let mut child = Command::new(oomtrace_binary())
            .args(["watch", "--context-hook", hook])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        // Either it attaches (and says so) or it exits with an error.
        let mut text = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(err)).map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
            if line.starts_with("watching for OOM kills") {
                break;
            }
        }
        if text.contains("watching for OOM kills") {
            assert!(text.contains(&format!("{hook} oom_kill_process")), "{text}");
            // SAFETY: plain syscall on our child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            assert!(child.wait().unwrap().success());
        } else {
            let st = child.wait().unwrap();
            assert_eq!(st.code(), Some(1), "{text}");
            assert!(text.contains("cannot hook oom_kill_process"), "{text}");
            eprintln!("{hook} is not available on this kernel: {}", text.trim());
        }
    }
}
