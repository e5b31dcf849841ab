//! A running `oomtrace watch -o json` (the real binary), read line by line.
use crate::cgroup::sibling_binary;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The daemon binary under test: `$OOMTRACE_BIN`, else next to the test executable.
pub fn oomtrace_binary() -> std::path::PathBuf {
    sibling_binary("oomtrace", "OOMTRACE_BIN")
}

pub struct Watch {
    child: Child,
    events: Receiver<Value>,
    /// Set to make the stdout reader close the pipe; it answers once closed.
    close_stdout: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stdout_closed: Receiver<()>,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stderr_thread: Option<std::thread::JoinHandle<()>>,
    /// The strategy line printed once attached.
    pub strategy: String,
}

impl Watch {
    /// Starts `oomtrace watch -o json <args>` and waits until it says it is attached.
    pub fn start(args: &[&str]) -> Self {
        Self::start_cmd(&["watch", "-o", "json"], args, &[])
    }

    /// Starts `oomtrace <sub...> <args>` with extra environment variables and waits until
    /// it says it is attached.
    pub fn start_cmd(sub: &[&str], args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::try_start_cmd(sub, args, env).unwrap_or_else(|stderr| panic!("oomtrace did not attach; stderr:\n{stderr}"))
    }

    /// Like [`Watch::start`], but returns oomtrace's stderr when it exits without attaching.
    pub fn try_start(args: &[&str]) -> Result<Self, String> {
        Self::try_start_cmd(&["watch", "-o", "json"], args, &[])
    }

    fn try_start_cmd(sub: &[&str], args: &[&str], env: &[(&str, &str)]) -> Result<Self, String> {
        let mut cmd = Command::new(oomtrace_binary());
        cmd.args(sub).args(args).envs(env.iter().copied());
        Self::try_spawn(cmd)
    }

    /// Runs `cmd` (oomtrace, or what runs it: a container engine) with its stdout read as JSON
    /// lines, and waits until it says it is attached; on failure returns its stderr.
    pub fn try_spawn(mut cmd: Command) -> Result<Self, String> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn oomtrace");
        let (tx, events) = channel();
        let out = child.stdout.take().expect("stdout");
        let close_stdout = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let close = close_stdout.clone();
        let (closed_tx, stdout_closed) = channel();
        std::thread::spawn(move || {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&out);
            let mut out = BufReader::new(out);
            loop {
                // Waits for a line, looking at the close flag every 20 ms: a close must not wait
                // for the next line, or lines written before it would be lost unread and uncounted.
                while out.buffer().is_empty() {
                    if close.load(std::sync::atomic::Ordering::Relaxed) {
                        drop(out);
                        let _ = closed_tx.send(());
                        return;
                    }
                    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
                    // SAFETY: one valid pollfd for the pipe this thread owns.
                    if unsafe { libc::poll(&mut pfd, 1, 20) } > 0 {
                        break;
                    }
                }
                let mut line = String::new();
                match out.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let line = line.trim_end_matches('\n');
                let v = match serde_json::from_str::<Value>(line) {
                    Ok(v) => check_schema(v),
                    Err(e) => Err(format!("not JSON ({e}): {line}")),
                };
                // A bad line reaches the test as an error object it will fail on.
                let v = v.unwrap_or_else(|e| serde_json::json!({ "invalid_output": e }));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (ready_tx, ready) = channel();
        let err = child.stderr.take().expect("stderr");
        let keep = stderr.clone();
        let stderr_thread = std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.starts_with("watching for OOM kills") {
                    let _ = ready_tx.send(line.clone());
                }
                keep.lock().expect("lock").push(line);
            }
        });
        let stderr_thread = Some(stderr_thread);
        let mut w = Watch { child, events, close_stdout, stdout_closed, stderr, stderr_thread, strategy: String::new() };
        // Start-up is the kernel BTF and the programs' verification: about a second here, but
        // it once took over 60 s on emulated 5.10 (with `--warnings`, while another guest ran),
        // before the daemon had printed anything.
        match ready.recv_timeout(Duration::from_secs(180)) {
            Ok(line) => {
                w.strategy = line;
                Ok(w)
            }
            Err(_) => {
                // Exited (the stderr reader is done) or hung: give its words either way.
                let _ = w.child.kill();
                let _ = w.child.wait();
                std::thread::sleep(Duration::from_millis(100));
                Err(w.stderr_text())
            }
        }
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().expect("lock").join("\n")
    }

    /// Collects events until `pred` has matched `n` of them or `timeout` passes. Returns the
    /// matching events only.
    pub fn collect(&self, n: usize, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) if v.get("invalid_output").is_some() => panic!("oomtrace printed an invalid line: {}", v["invalid_output"]),
                Ok(v) if pred(&v) => got.push(v),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        got
    }

    /// Events still arriving within `quiet` that match `pred` (to prove there are no extras).
    pub fn extra(&self, quiet: Duration, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.collect(usize::MAX, quiet, pred)
    }

    /// Sends `sig` to the oomtrace process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain syscall on our child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Closes oomtrace's stdout now (a log pipeline that went away): every line it prints
    /// after this returns fails. Lines still in the pipe are lost, as they would be.
    pub fn close_stdout(&self) {
        self.close_stdout.store(true, std::sync::atomic::Ordering::Relaxed);
        self.stdout_closed.recv_timeout(Duration::from_secs(10)).expect("the stdout reader closed the pipe");
    }

    /// Whether the oomtrace process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }

    /// SIGTERM, waits for the exit, and returns the exit status with every event printed
    /// and not collected yet (up to the end of the output) and the whole stderr.
    pub fn stop_and_drain(mut self) -> (std::process::ExitStatus, Vec<Value>, String) {
        let status = self.terminate();
        // The readers end at the end of the output, now that the process is gone.
        let evs = self.events.iter().collect();
        if let Some(t) = self.stderr_thread.take() {
            t.join().expect("stderr reader");
        }
        (status, evs, self.stderr_text())
    }

    /// SIGTERM, then waits for a clean exit; returns the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.terminate()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: plain syscall on our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st;
            }
            assert!(Instant::now() < deadline, "oomtrace did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Validates a printed object against the JSON Schema its `schema` field names
/// (docs/oom_kill.schema.json, docs/memory_pressure.schema.json, docs/owner_kills.schema.json).
pub fn check_schema(v: Value) -> Result<Value, String> {
    static SCHEMAS: std::sync::OnceLock<Vec<(String, jsonschema::Validator)>> = std::sync::OnceLock::new();
    let schemas = SCHEMAS.get_or_init(|| {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
        [("oomtrace.oom_kill/v1", "oom_kill.schema.json"), ("oomtrace.memory_pressure/v1", "memory_pressure.schema.json"),
         ("oomtrace.owner_kills/v1", "owner_kills.schema.json")]
            .into_iter()
            .map(|(name, file)| {
                let text = std::fs::read_to_string(docs.join(file)).expect("schema file");
                let schema: Value = serde_json::from_str(&text).expect("schema is JSON");
                (name.to_string(), jsonschema::validator_for(&schema).expect("valid JSON Schema"))
            })
            .collect()
    });
    let name = v["schema"].as_str().unwrap_or_default();
    let Some((_, validator)) = schemas.iter().find(|(n, _)| n == name) else {
        return Err(format!("unknown schema {name:?}: {v}"));
    };
    let errors: Vec<String> = validator.iter_errors(&v).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    if errors.is_empty() {
        Ok(v)
    } else {
        Err(format!("{} schema violations: {}\n{v}", errors.len(), errors.join("; ")))
    }
}

/// Runs `hog` in `cg` until the kernel kills it; the kill's event (as `w` printed it).
pub fn kill_in(cg: &crate::cgroup::TestCgroup, w: &Watch, hog: crate::cgroup::Hog) -> Value {
    use std::os::unix::process::ExitStatusExt;
    let mut c = cg.spawn_hog(&hog).unwrap();
    assert_eq!(c.wait().unwrap().signal(), Some(libc::SIGKILL));
    let evs = w.collect(1, Duration::from_secs(30), in_cgroup(cg.rel.clone()));
    assert_eq!(evs.len(), 1, "stderr:\n{}", w.stderr_text());
    evs.into_iter().next().unwrap()
}

/// The verdict's finding: the verdict without the clauses that follow it: what the charging
/// task was doing (`oom.charge`) and how the OOM cgroup's usage moved (which depends on how
/// long the cgroup lived before the kill).
pub fn finding(e: &Value) -> &str {
    let v = verdict(e);
    ["; grew steadily ", "; jumped from ", "; sat within "]
        .iter()
        .filter_map(|clause| v.find(clause))
        .chain(charge_clause(v).map(|r| r.start))
        .min()
        .map_or(v, |at| &v[..at])
}

/// The verdict without the clause of what the charging task was doing (`oom.charge`), which
/// names whichever allocation happened to hit the limit.
pub fn without_charge(e: &Value) -> String {
    let v = verdict(e);
    match charge_clause(v) {
        Some(r) => format!("{}{}", &v[..r.start], &v[r.end..]),
        None => v.to_owned(),
    }
}

fn verdict(e: &Value) -> &str {
    e["verdict"].as_str().unwrap_or_else(|| panic!("no verdict: {e:#}"))
}

/// Where the `; … triggered it…` clause stands in a verdict.
fn charge_clause(v: &str) -> Option<std::ops::Range<usize>> {
    let start = v[..v.find(" triggered it")?].rfind("; ")?;
    let end = v[start + 2..].find("; ").map_or(v.len(), |i| start + 2 + i);
    Some(start..end)
}

/// `victim.pid == pid`.
pub fn victim_is(pid: u32) -> impl Fn(&Value) -> bool {
    move |v| v["victim"]["pid"].as_u64() == Some(pid as u64)
}

/// The victim's memory cgroup path starts with `prefix`.
pub fn in_cgroup(prefix: String) -> impl Fn(&Value) -> bool {
    move |v| {
        v["cgroup"]["memory"]["path"]
            .as_str()
            .is_some_and(|p| p == prefix || p.starts_with(&format!("{prefix}/")))
    }
}
