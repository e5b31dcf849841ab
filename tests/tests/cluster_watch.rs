//! `oomtrace watch --cluster` (the real binary) against the test API server, through a
//! kubeconfig file: OOMKill Events published by the daemons of several nodes become rows,
//! live; filters; repeats (Event series, also as kube's `Recorder` publishes them); `--since`;
//! table output; API server restarts (resumed watch, and a relist after 410 Gone); a reader
//! that goes away; no kubeconfig at all. No root needed.

use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{channel, Receiver, RecvTimeoutError},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        core::v1::ObjectReference,
        events::v1::{Event, EventSeries},
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use oomtrace_tests::{apiserver::ApiServer, oomtrace_proc::oomtrace_binary};
use serde_json::{json, Value};

/// Bound for anything the watch should do (the first row, recovering from a restart: the
/// view retries every second).
const WAIT: Duration = Duration::from_secs(20);

static SEQ: AtomicU64 = AtomicU64::new(0);

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "oomtrace-cluster-watch-{what}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A test API server and a kubeconfig file for it.
struct Cluster {
    server: ApiServer,
    dir: PathBuf,
    kubeconfig: PathBuf,
}

impl Cluster {
    fn start() -> Self {
        let server = ApiServer::start();
        server.set_bookmark_interval(Duration::from_millis(200));
        let dir = temp_dir("kubeconfig");
        let kubeconfig = dir.join("kubeconfig");
        server.write_kubeconfig(&kubeconfig).unwrap();
        Cluster {
            server,
            dir,
            kubeconfig,
        }
    }

    /// Requests received so far.
    fn request_count(&self) -> usize {
        self.server.requests().len()
    }

    /// Waits until the view watches: an Event watch was requested after the first `after`
    /// requests (with `relist`: after a new Event list too) and a watch is open.
    fn wait_for_watch(&self, after: usize, relist: bool, w: &ClusterWatch) {
        let deadline = Instant::now() + WAIT;
        loop {
            let reqs = self.server.requests();
            let new = &reqs[after.min(reqs.len())..];
            let from = if relist {
                new.iter().position(|r| r.is_event_list()).map(|i| i + 1)
            } else {
                Some(0)
            };
            let watched = from.is_some_and(|f| new[f..].iter().any(|r| r.is_event_watch()));
            if watched && self.server.active_watches() > 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "oomtrace did not watch Events within {WAIT:?}; requests: {:?}\nstderr:\n{}",
                reqs.iter()
                    .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
                    .collect::<Vec<_>>(),
                w.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts `oomtrace watch --cluster --kubeconfig <file> <args>` and waits until it watches.
    fn watch(&self, args: &[&str]) -> ClusterWatch {
        let before = self.request_count();
        let kubeconfig = self.kubeconfig.to_str().unwrap();
        let mut all = vec!["--cluster", "--kubeconfig", kubeconfig];
        all.extend_from_slice(args);
        let w = ClusterWatch::spawn(&all, &[]);
        self.wait_for_watch(before, false, &w);
        w
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running `oomtrace watch`, its stdout line by line.
struct ClusterWatch {
    child: Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<Vec<String>>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

impl ClusterWatch {
    /// Spawns `oomtrace watch <args>` with `env` (`None`: removed) on top of ours, minus
    /// proxies.
    fn spawn(args: &[&str], env: &[(&str, Option<&str>)]) -> Self {
        let mut cmd = Command::new(oomtrace_binary());
        cmd.arg("watch")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for var in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
        ] {
            cmd.env_remove(var);
        }
        for (k, v) in env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let mut child = cmd.spawn().expect("spawn oomtrace");
        let (tx, lines) = channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let keep = stderr.clone();
        let err = child.stderr.take().unwrap();
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                keep.lock().unwrap().push(line);
            }
        });
        ClusterWatch {
            child,
            lines,
            stderr,
            stderr_reader: Some(stderr_reader),
        }
    }

    fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// The next stdout line, at most `WAIT`; `None` at EOF.
    fn line(&self) -> Option<String> {
        match self.lines.recv_timeout(WAIT) {
            Ok(l) => Some(l),
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => panic!(
                "no output from oomtrace within {WAIT:?}; stderr:\n{}",
                self.stderr_text()
            ),
        }
    }

    /// The next JSON row.
    fn row(&self) -> Value {
        let line = self.line().unwrap_or_else(|| {
            panic!(
                "oomtrace ended its output early; stderr:\n{}",
                self.stderr_text()
            )
        });
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// Waits for the exit (it must come by itself, e.g. after `--count`), then returns the
    /// status, whatever stdout lines were left, and all of stderr.
    fn finish(mut self) -> (ExitStatus, Vec<String>, String) {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "oomtrace did not exit by itself; stderr:\n{}",
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut rest = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            rest.push(l);
        }
        if let Some(t) = self.stderr_reader.take() {
            let _ = t.join();
        }
        (status, rest, self.stderr_text())
    }

    /// Expects a clean exit with nothing more printed.
    fn expect_done(self) {
        let (status, rest, stderr) = self.finish();
        assert!(status.success(), "exit {status}; stderr:\n{stderr}");
        assert!(rest.is_empty(), "extra output: {rest:?}");
    }
}

impl Drop for ClusterWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Now, at the microsecond precision of an Event's `eventTime`.
fn now() -> Timestamp {
    Timestamp::from_microsecond(Timestamp::now().as_microsecond()).unwrap()
}

fn ago(minutes: i64) -> Timestamp {
    now() - SignedDuration::from_mins(minutes)
}

/// The note the daemons write (oomtrace::k8s::events::note).
fn note(comm: &str, pid: u32, container: Option<&str>) -> String {
    match container {
        Some(c) => format!(
            "{comm} (pid {pid}) in container {c} killed by the OOM killer: rss 1.9GiB (anon 1.9GiB, \
             file 0B, shmem 0B), container limit 2.0GiB, usage 2.0GiB; the container keeps running"
        ),
        None => format!(
            "{comm} (pid {pid}) killed by the OOM killer: rss 3.1GiB (anon 3.1GiB, file 0B, \
             shmem 0B), node out of memory"
        ),
    }
}

/// An OOMKill Event as the daemon on `node` publishes it for a kill in container `container`
/// of pod `ns/pod` at `at`.
fn oom_event(node: &str, ns: &str, pod: &str, container: &str, at: Timestamp) -> Event {
    let seq = SEQ.fetch_add(1, Ordering::SeqCst);
    Event {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(format!(
                "{pod}.{:x}",
                at.as_nanosecond() as u128 + seq as u128
            )),
            annotations: Some(
                [
                    ("oomtrace.io/container", container),
                    ("oomtrace.io/pid", "4242"),
                    ("oomtrace.io/comm", "python3"),
                    ("oomtrace.io/limit-bytes", "2147483648"),
                    ("oomtrace.io/usage-bytes", "2147483648"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ),
            ..Default::default()
        },
        event_time: Some(MicroTime(at)),
        reason: Some("OOMKill".into()),
        action: Some("Killed".into()),
        type_: Some("Warning".into()),
        reporting_controller: Some("oomtrace".into()),
        reporting_instance: Some(node.into()),
        regarding: Some(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(ns.into()),
            name: Some(pod.into()),
            uid: Some(format!("{pod}-uid-{seq}")),
            field_path: Some(format!("spec.containers{{{container}}}")),
            ..Default::default()
        }),
        note: Some(note("python3", 4242, Some(container))),
        ..Default::default()
    }
}

/// A node-wide OOM kill outside any pod: the Event is on the Node.
fn node_event(node: &str, at: Timestamp) -> Event {
    let mut e = oom_event(node, "default", node, "-", at);
    e.regarding = Some(ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(node.into()),
        ..Default::default()
    });
    e.note = Some(note("stress", 99, None));
    e.metadata.annotations = None;
    e
}

fn name_of(e: &Value) -> (String, String) {
    let m = &e["metadata"];
    (
        m["namespace"].as_str().unwrap().to_string(),
        m["name"].as_str().unwrap().to_string(),
    )
}

/// `(node, namespace/pod, container, count)` of a JSON row.
fn short(row: &Value) -> (String, String, String, i64) {
    let s = |k: &str| row[k].as_str().unwrap_or("-").to_string();
    (
        s("node"),
        format!("{}/{}", s("namespace"), s("pod")),
        s("container"),
        row["count"].as_i64().unwrap(),
    )
}

fn row_time(row: &Value) -> Timestamp {
    row["time"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("bad time in {row}"))
}

fn tuple(node: &str, pod: &str, container: &str, count: i64) -> (String, String, String, i64) {
    (node.into(), pod.into(), container.into(), count)
}

#[test]
fn kills_from_every_node_are_printed_live_and_nothing_else() {
    let c = Cluster::start();
    // Before the watch starts: history, not printed without --since.
    c.server
        .add_event(oom_event("node-1", "shop", "old-1", "app", ago(10)));
    let w = c.watch(&["-o", "json", "--count", "4"]);

    let t1 = now();
    let api = c
        .server
        .add_event(oom_event("node-1", "shop", "api-1", "app", t1));
    // Other reasons, other controllers: not ours.
    let mut backoff = oom_event("node-2", "shop", "api-1", "app", now());
    backoff.reason = Some("BackOff".into());
    backoff.reporting_controller = Some("kubelet".into());
    c.server.add_event(backoff);
    let mut kubelet = oom_event("node-2", "shop", "api-1", "app", now());
    kubelet.reporting_controller = Some("kubelet".into());
    c.server.add_event(kubelet);
    let mut evicted = oom_event("node-2", "shop", "api-1", "app", now());
    evicted.reason = Some("Evicted".into());
    c.server.add_event(evicted);
    c.server
        .add_event(oom_event("node-2", "batch", "job-7-x2b", "worker", now()));
    c.server.add_event(oom_event(
        "node-3",
        "kube-system",
        "coredns-5d7b",
        "coredns",
        now(),
    ));
    c.server.add_event(node_event("node-4", now()));

    let first = w.row();
    assert_eq!(
        first,
        json!({
            "time": first["time"],
            "node": "node-1",
            "kind": "Pod",
            "namespace": "shop",
            "pod": "api-1",
            "container": "app",
            "pid": 4242,
            "comm": "python3",
            "limit_bytes": 2147483648u64,
            "usage_bytes": 2147483648u64,
            "count": 1,
            "message": api["note"],
        })
    );
    assert_eq!(row_time(&first), t1);
    let rest: Vec<_> = (0..3).map(|_| w.row()).collect();
    assert_eq!(
        rest.iter().map(short).collect::<Vec<_>>(),
        [
            tuple("node-2", "batch/job-7-x2b", "worker", 1),
            tuple("node-3", "kube-system/coredns-5d7b", "coredns", 1),
            tuple("node-4", "-/-", "-", 1),
        ]
    );
    assert_eq!(rest[2]["kind"], "Node");
    assert!(rest[2]["namespace"].is_null() && rest[2]["container"].is_null());
    assert!(rest[2]["message"]
        .as_str()
        .unwrap()
        .ends_with("node out of memory"));
    w.expect_done();
    // It watched Events with the reason in the field selector.
    let watch = c
        .server
        .requests()
        .into_iter()
        .find(|r| r.is_event_watch())
        .unwrap();
    assert_eq!(watch.path, "/apis/events.k8s.io/v1/events");
    assert_eq!(watch.param("fieldSelector"), Some("reason=OOMKill"));
}

#[test]
fn namespace_pod_glob_and_container_filters() {
    let c = Cluster::start();
    let w = c.watch(&[
        "-o",
        "json",
        "-n",
        "shop",
        "--pod",
        "api-*",
        "--container",
        "app",
        "--count",
        "2",
    ]);
    for (node, ns, pod, container) in [
        ("node-1", "shop", "api-1", "app"),
        ("node-1", "shop", "api-1", "sidecar"),
        ("node-2", "shop", "web-1", "app"),
        ("node-2", "other", "api-2", "app"),
        ("node-3", "shop", "api-7d9f-abcde", "app"),
    ] {
        c.server
            .add_event(oom_event(node, ns, pod, container, now()));
    }
    c.server.add_event(node_event("node-4", now()));
    c.server
        .add_event(oom_event("node-1", "shop", "api-9", "app", now()));
    let rows: Vec<_> = (0..2).map(|_| short(&w.row())).collect();
    assert_eq!(
        rows,
        [
            tuple("node-1", "shop/api-1", "app", 1),
            tuple("node-3", "shop/api-7d9f-abcde", "app", 1),
        ]
    );
    w.expect_done();
}

#[test]
fn a_repeat_shows_the_row_again_with_its_count() {
    let c = Cluster::start();
    let w = c.watch(&["-o", "json", "--count", "3"]);
    let t0 = now();
    let ev = c
        .server
        .add_event(oom_event("node-2", "shop", "api-1", "app", t0));
    let (ns, name) = name_of(&ev);
    let first = w.row();
    assert_eq!(short(&first), tuple("node-2", "shop/api-1", "app", 1));
    assert_eq!(row_time(&first), t0);

    // kube's Recorder on a repeat: a merge patch adding the series.
    let t1 = t0 + SignedDuration::from_secs(30);
    c.server
        .patch_event(
            &ns,
            &name,
            json!({"series": {"count": 2, "lastObservedTime": MicroTime(t1)}}),
        )
        .unwrap();
    let second = w.row();
    assert_eq!(short(&second), tuple("node-2", "shop/api-1", "app", 2));
    assert_eq!(row_time(&second), t1, "the time of the last kill");
    assert_eq!(second["message"], first["message"]);

    // A change that is not a new kill prints nothing; the next kill does.
    c.server
        .patch_event(
            &ns,
            &name,
            json!({"metadata": {"annotations": {"example.com/seen": "yes"}}}),
        )
        .unwrap();
    let t2 = t1 + SignedDuration::from_secs(30);
    c.server
        .patch_event(
            &ns,
            &name,
            json!({"series": {"count": 3, "lastObservedTime": MicroTime(t2)}}),
        )
        .unwrap();
    let third = w.row();
    assert_eq!(short(&third), tuple("node-2", "shop/api-1", "app", 3));
    assert_eq!(row_time(&third), t2);
    w.expect_done();
}

/// Events as kube's `Recorder` publishes them (POST, then merge-PATCH with a series for a
/// repeat; no annotations): the container comes from kubelet's `fieldPath`, end to end over
/// HTTP.
#[test]
fn events_published_by_the_recorder_are_shown_with_their_series() {
    use kube::runtime::events::{Event as RecorderEvent, EventType, Recorder, Reporter};
    let c = Cluster::start();
    let w = c.watch(&["-o", "json", "--count", "2"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = oomtrace::k8s::client::client_from_kubeconfig(&c.kubeconfig)
            .await
            .unwrap();
        let recorder = Recorder::new(
            client,
            Reporter {
                controller: "oomtrace".into(),
                instance: Some("node-7".into()),
            },
        );
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some("payments".into()),
            name: Some("ledger-0".into()),
            uid: Some("ledger-0-uid".into()),
            field_path: Some("spec.containers{ledger}".into()),
            ..Default::default()
        };
        let event = RecorderEvent {
            type_: EventType::Warning,
            reason: "OOMKill".into(),
            note: Some(note("java", 31337, Some("ledger"))),
            action: "Killed".into(),
            secondary: None,
        };
        recorder.publish(&event, &reference).await.unwrap();
        recorder.publish(&event, &reference).await.unwrap();
    });
    let rows: Vec<_> = (0..2).map(|_| w.row()).collect();
    assert_eq!(
        rows.iter().map(short).collect::<Vec<_>>(),
        [
            tuple("node-7", "payments/ledger-0", "ledger", 1),
            tuple("node-7", "payments/ledger-0", "ledger", 2),
        ]
    );
    assert!(row_time(&rows[1]) >= row_time(&rows[0]));
    let published = c.server.events();
    assert_eq!(published.len(), 2, "a POST and a PATCH: {published:?}");
    w.expect_done();
}

#[test]
fn since_lists_recent_kills_oldest_first_then_goes_live() {
    let c = Cluster::start();
    let ev = |pod: &str, minutes: i64| oom_event("node-1", "shop", pod, "app", ago(minutes));
    c.server.add_event(ev("two-hours-ago", 120));
    c.server.add_event(ev("fifty-min-ago", 50));
    c.server.add_event(ev("five-min-ago", 5));
    c.server.add_event(ev("thirty-min-ago", 30));
    // First kill three hours ago, the last one of its series ten minutes ago: recent.
    let mut series = ev("series-ten-min-ago", 180);
    series.series = Some(EventSeries {
        count: 4,
        last_observed_time: MicroTime(ago(10)),
    });
    c.server.add_event(series);
    let mut other = ev("backoff", 1);
    other.reason = Some("BackOff".into());
    c.server.add_event(other);
    let mut filtered = oom_event("node-1", "other", "elsewhere", "app", ago(20));
    filtered.reporting_instance = Some("node-9".into());
    c.server.add_event(filtered);

    let w = c.watch(&["-o", "json", "--since", "1h", "-n", "shop", "--count", "5"]);
    let listed: Vec<_> = (0..4).map(|_| w.row()).collect();
    let pods: Vec<_> = listed.iter().map(|r| r["pod"].as_str().unwrap()).collect();
    assert_eq!(
        pods,
        [
            "fifty-min-ago",
            "thirty-min-ago",
            "series-ten-min-ago",
            "five-min-ago"
        ]
    );
    assert_eq!(listed[2]["count"], 4);
    assert!(listed
        .windows(2)
        .all(|p| row_time(&p[0]) <= row_time(&p[1])));

    c.server.add_event(ev("live", 0));
    assert_eq!(w.row()["pod"], "live");
    w.expect_done();
}

#[test]
fn table_output_has_a_header_and_a_row_per_kill() {
    let c = Cluster::start();
    let w = c.watch(&["-o", "table", "--count", "1"]);
    let e = c.server.add_event(oom_event(
        "node-5",
        "shop",
        "api-1",
        "app",
        now() - SignedDuration::from_secs(1),
    ));
    let header = w.line().unwrap();
    let cols: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        cols,
        ["TIME", "NODE", "POD", "CONTAINER", "COUNT", "MESSAGE"],
        "{header}"
    );
    let row = w.line().unwrap();
    let mut it = row.split_whitespace();
    let (time, node, pod, container, count) = (
        it.next().unwrap(),
        it.next().unwrap(),
        it.next().unwrap(),
        it.next().unwrap(),
        it.next().unwrap(),
    );
    assert!(time.parse::<Timestamp>().is_ok(), "{row}");
    assert_eq!(
        (node, pod, container, count),
        ("node-5", "shop/api-1", "app", "1"),
        "{row}"
    );
    assert!(
        row.trim_end().ends_with(e["note"].as_str().unwrap()),
        "{row}"
    );
    // Columns line up with the header.
    assert_eq!(row.find(" node-5").map(|i| i + 1), header.find("NODE"));
    assert_eq!(row.find(" shop/api-1").map(|i| i + 1), header.find("POD"));
    assert_eq!(row.find(" app ").map(|i| i + 1), header.find("CONTAINER"));
    w.expect_done();
}

#[test]
fn the_watch_survives_api_server_restarts() {
    let c = Cluster::start();
    let w = c.watch(&["-o", "json", "--count", "6"]);
    c.server
        .add_event(oom_event("node-1", "shop", "before", "app", now()));
    assert_eq!(w.row()["pod"], "before");

    // Down and up again: the view resumes its watch where it was.
    let before = c.request_count();
    c.server.stop();
    std::thread::sleep(Duration::from_millis(300));
    // (Another API server replica took this one while ours was away.)
    c.server
        .add_event(oom_event("node-2", "shop", "during-outage", "app", now()));
    c.server.restart();
    c.wait_for_watch(before, false, &w);
    c.server
        .add_event(oom_event("node-3", "shop", "after-restart", "app", now()));
    assert_eq!(w.row()["pod"], "during-outage");
    assert_eq!(w.row()["pod"], "after-restart");
    let lists = c
        .server
        .requests()
        .iter()
        .filter(|r| r.is_event_list())
        .count();
    assert_eq!(lists, 1, "resumed from its resourceVersion, no relist");

    // Down, and the history it would resume from compacted meanwhile: 410, relist; kills it
    // already printed are not printed again.
    let before = c.request_count();
    c.server.stop();
    // Two kills meanwhile, whose names sort the other way round than their times.
    let t = now();
    c.server.add_event(oom_event(
        "node-4",
        "shop",
        "zz-first",
        "app",
        t - SignedDuration::from_secs(2),
    ));
    c.server.add_event(oom_event(
        "node-4",
        "shop",
        "aa-second",
        "app",
        t - SignedDuration::from_secs(1),
    ));
    c.server.compact_history();
    c.server.restart();
    c.wait_for_watch(before, true, &w);
    c.server
        .add_event(oom_event("node-5", "shop", "after-relist", "app", now()));
    let pods: Vec<_> = (0..3)
        .map(|_| w.row()["pod"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        pods,
        ["zz-first", "aa-second", "after-relist"],
        "missed kills oldest first, none twice"
    );
    let lists = c
        .server
        .requests()
        .iter()
        .filter(|r| r.is_event_list())
        .count();
    assert_eq!(lists, 2, "410 Gone, then one relist");
    w.expect_done();
}

#[test]
fn cluster_without_any_kubeconfig_fails_clearly() {
    let home = temp_dir("home");
    let home_s = home.to_str().unwrap();
    let env = [
        ("HOME", Some(home_s)),
        ("KUBECONFIG", None),
        ("KUBERNETES_SERVICE_HOST", None),
        ("KUBERNETES_SERVICE_PORT", None),
    ];
    let w = ClusterWatch::spawn(&["--cluster", "-o", "json"], &env);
    let (status, out, stderr) = w.finish();
    assert_eq!(status.code(), Some(1), "stderr:\n{stderr}");
    assert!(out.is_empty(), "{out:?}");
    assert!(
        stderr.contains("error: --cluster needs a Kubernetes config"),
        "{stderr}"
    );

    // An explicit kubeconfig that does not exist: also exit 1, naming the file.
    let missing = home.join("nope.yaml");
    let w = ClusterWatch::spawn(
        &["--cluster", "--kubeconfig", missing.to_str().unwrap()],
        &env,
    );
    let (status, _, stderr) = w.finish();
    assert_eq!(status.code(), Some(1), "stderr:\n{stderr}");
    assert!(
        stderr.contains("kubeconfig") && stderr.contains("nope.yaml"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&home);
}

/// `oomtrace watch --cluster | head -n 1`: the reader going away ends the view quietly, as it
/// does the node view.
#[test]
fn a_closed_pipe_ends_the_view_quietly() {
    let c = Cluster::start();
    let before = c.request_count();
    /// Kills the whole pipeline (its own process group) if the test fails half-way.
    struct Group(Child);
    impl Drop for Group {
        fn drop(&mut self) {
            // SAFETY: plain syscall on the process group we created.
            unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
            let _ = self.0.wait();
        }
    }
    let child = Command::new("bash")
        .process_group(0)
        .arg("-c")
        .arg(r#""$0" watch --cluster --kubeconfig "$1" -o json | head -n 1; echo "oomtrace exit status: ${PIPESTATUS[0]}" >&2"#)
        .arg(oomtrace_binary())
        .arg(&c.kubeconfig)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Group(child);
    let deadline = Instant::now() + WAIT;
    while !c.server.requests()[before..]
        .iter()
        .any(|r| r.is_event_watch())
        || c.server.active_watches() == 0
    {
        assert!(Instant::now() < deadline, "oomtrace did not watch Events");
        std::thread::sleep(Duration::from_millis(10));
    }
    c.server
        .add_event(oom_event("node-1", "shop", "api-1", "app", now()));
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(first.contains(r#""pod":"api-1""#), "{first}");
    // head has exited: the next row hits a closed pipe.
    let deadline = Instant::now() + WAIT;
    let status = loop {
        c.server
            .add_event(oom_event("node-1", "shop", "api-2", "app", now()));
        if let Some(st) = child.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "oomtrace kept running after its reader left"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("oomtrace exit status: 0"), "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
}

#[test]
fn forbidden_fails_clearly_instead_of_retrying_forever() {
    let c = Cluster::start();
    c.server.set_mode(oomtrace_tests::apiserver::Mode::Error(403));
    let kubeconfig = c.kubeconfig.to_str().unwrap();
    let w = ClusterWatch::spawn(&["--cluster", "--kubeconfig", kubeconfig], &[]);
    let (status, out, stderr) = w.finish();
    assert_eq!(status.code(), Some(1), "stderr:\n{stderr}");
    assert!(out.is_empty(), "{out:?}");
    assert!(stderr.contains("403") && stderr.contains("RBAC"), "{stderr}");
}

#[test]
fn sigint_ends_the_view_cleanly() {
    let c = Cluster::start();
    let w = c.watch(&["-o", "json"]);
    // SAFETY: plain syscall on our child.
    unsafe { libc::kill(w.child.id() as i32, libc::SIGINT) };
    let (status, _, stderr) = w.finish();
    assert!(status.success(), "{status:?}\n{stderr}");
}
