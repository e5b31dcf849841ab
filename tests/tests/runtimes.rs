//! Language runtimes killed by real memcg OOM kills, in kubelet-shaped cgroups of a pod the
//! pod index knows: the runtime and its heap ceiling are recognised (from procfs at the kill,
//! or from the pod spec when procfs was too late), and the verdict and the recommendation
//! name the setting. Each case is a small program under `tests/programs`, run by the real
//! runtime (OpenJDK 17, Node.js, Go, CPython).
use k8s_openapi::api::core::v1::{Container, EnvVar};
use oomtrace_tests::apiserver::{container_id, containerd_id, pod};
use oomtrace_tests::cgroup::TestCgroup;
use oomtrace_tests::kubelet::{Cluster, Driver, PodCgroups};
use oomtrace_tests::oomtrace_proc::{finding, in_cgroup, oomtrace_binary, Watch};
use oomtrace_tests::{require_root_and_btf, require_tool};
use serde_json::Value;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const MIB: u64 = 1 << 20;
const UID: &str = "3c9d1e2f-6a4b-4c5d-8e7f-0a1b2c3d4e5f";
/// The variables that carry runtime options: the runtimes get only the test's own.
const RUNTIME_VARS: &[&str] = &[
    "JAVA_TOOL_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "_JAVA_OPTIONS",
    "JAVA_OPTS",
    "NODE_OPTIONS",
    "GOMEMLIMIT",
];

/// A directory of the test's, removed with it.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let d = std::env::temp_dir().join(format!("oomtrace-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn program(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("programs")
        .join(name)
}

fn run_ok(cmd: &mut Command) {
    let st = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(st.success(), "{cmd:?}: {st}");
}

/// The Java programs compiled into `dir` (which also brings the JDK's files into the page
/// cache outside the test's cgroup, as on a node that ran java before).
fn javac(dir: &Path) {
    run_ok(
        Command::new(require_tool("javac"))
            .arg("-d")
            .arg(dir)
            .arg(program("HeapHog.java"))
            .arg(program("NativeHog.java")),
    );
}

/// How oomtrace runs: on the host, or in a pid namespace of its own as the DaemonSet runs it
/// (no `hostPID`), where procfs cannot show it the victim.
#[derive(Clone, Copy, PartialEq)]
enum Tracer {
    Host,
    OwnPidNamespace,
}

/// A pod whose one container runs `argv` with `env` under `limit_mib`, its spec saying the
/// same; returns the kill's event.
fn kill_in_pod(
    seed: &str,
    tracer: Tracer,
    limit_mib: u64,
    argv: &[&str],
    env: &[(&str, &str)],
) -> Value {
    require_root_and_btf();
    let cluster = Cluster::new();
    let limit = format!("{limit_mib}Mi");
    let mut p = pod(
        "shop",
        "svc-0",
        UID,
        &cluster.node,
        "Burstable",
        &[("app", &containerd_id(seed), Some(&limit), None)],
        None,
    );
    let c: &mut Container = &mut p.spec.as_mut().unwrap().containers[0];
    c.command = Some(argv.iter().map(|a| a.to_string()).collect());
    c.env = Some(
        env.iter()
            .map(|(k, v)| EnvVar {
                name: k.to_string(),
                value: Some(v.to_string()),
                ..Default::default()
            })
            .collect(),
    );
    cluster.api.add_pod(p);
    let cgroups = PodCgroups::new(
        Driver::Cgroupfs,
        UID,
        &container_id(seed),
        2 * limit_mib * MIB,
        limit_mib * MIB,
    );
    let w = match tracer {
        Tracer::Host => cluster.watch(),
        Tracer::OwnPidNamespace => {
            let mut cmd = Command::new(require_tool("unshare"));
            cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child"])
                .arg(oomtrace_binary())
                .args([
                    "watch",
                    "-o",
                    "json",
                    "--kubeconfig",
                    cluster.kubeconfig.to_str().unwrap(),
                ])
                .env("NODE_NAME", &cluster.node);
            Watch::try_spawn(cmd).unwrap_or_else(|e| panic!("oomtrace did not attach:\n{e}"))
        }
    };
    cluster.wait_synced();
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for v in RUNTIME_VARS {
        cmd.env_remove(v);
    }
    cmd.envs(env.iter().copied());
    let st = cgroups.container().spawn(&mut cmd).unwrap().wait().unwrap();
    assert_eq!(
        st.signal(),
        Some(libc::SIGKILL),
        "the kernel's kill, not the runtime's own out-of-memory exit: {st}"
    );
    let evs = w.collect(
        1,
        Duration::from_secs(60),
        in_cgroup(cgroups.container_rel.clone()),
    );
    assert_eq!(evs.len(), 1, "stderr:\n{}", w.stderr_text());
    let e = evs.into_iter().next().unwrap();
    eprintln!(
        "{seed}: victim.runtime {} ({} after the kill)",
        e["victim"]["runtime"], e["oom"]["details_after_ms"]
    );
    e
}

/// MaxHeapSize as `java <flags>` itself sizes it in `cg`.
fn jvm_max_heap(cg: &TestCgroup, flags: &[&str]) -> u64 {
    let mut cmd = Command::new(require_tool("java"));
    cmd.args(flags)
        .args(["-XX:+PrintFlagsFinal", "-version"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let out = cg.spawn(&mut cmd).unwrap().wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&"MaxHeapSize"))
                .then(|| f[3].parse().ok())
                .flatten()
        })
        .unwrap_or_else(|| panic!("no MaxHeapSize in:\n{text}"))
}

fn source_is_known(e: &Value) {
    let s = e["victim"]["runtime"]["source"].as_str();
    assert!(matches!(s, Some("procfs" | "pod_spec")), "{e:#}");
}

#[test]
fn a_jvm_heap_sized_to_90_percent_of_the_limit_is_told_to_shrink() {
    let dir = TempDir::new("jvm-heap");
    javac(&dir.0);
    let cp = dir.0.to_str().unwrap();
    // 48 MiB of direct buffers first, as a service keeps, then a heap that grows to its max.
    let flags = ["-XX:MaxRAMPercentage=90", "-cp", cp];
    let argv = ["java", flags[0], flags[1], flags[2], "HeapHog", "48"];
    let e = kill_in_pod("rt-jvm-heap", Tracer::Host, 256, &argv, &[]);
    let rt = &e["victim"]["runtime"];
    assert_eq!(rt["name"], "jvm", "{e:#}");
    assert_eq!(rt["setting"], "-XX:MaxRAMPercentage=90");
    source_is_known(&e);
    // The JVM's own sizing in a cgroup of the same limit agrees to the byte.
    let probe = TestCgroup::new("oomtrace-jvm-probe").unwrap();
    probe.set_limit(256 * MIB).unwrap();
    assert_eq!(
        rt["heap_max_bytes"].as_u64(),
        Some(jvm_max_heap(&probe, &flags[..1]))
    );
    assert_eq!(rt["heap_max_bytes"], 232 * MIB);
    assert_eq!(
        finding(&e),
        "JVM heap max 232.0MiB (-XX:MaxRAMPercentage=90 of 256.0MiB) leaves 24.0MiB for metaspace, threads and native memory: lower -XX:MaxRAMPercentage below 90 or raise the limit"
    );
    let r = &e["oom"]["recommendation"];
    assert_eq!(r["setting"], "MaxRAMPercentage", "{e:#}");
    assert_eq!(
        r["action"],
        "lower -XX:MaxRAMPercentage below 90 or raise the limit"
    );
    assert!(r["limit_bytes"].is_null());
}

#[test]
fn a_jvm_filled_by_native_memory_is_not_told_to_shrink_its_heap() {
    let dir = TempDir::new("jvm-native");
    javac(&dir.0);
    let argv = [
        "java",
        "-Xmx64m",
        "-XX:MaxDirectMemorySize=1g",
        "-cp",
        dir.0.to_str().unwrap(),
        "NativeHog",
    ];
    let e = kill_in_pod("rt-jvm-native", Tracer::Host, 256, &argv, &[]);
    let rt = &e["victim"]["runtime"];
    assert_eq!(
        (&rt["name"], &rt["heap_max_bytes"], &rt["setting"]),
        (&"jvm".into(), &(64 * MIB).into(), &"-Xmx64m".into()),
        "{e:#}"
    );
    source_is_known(&e);
    let v = finding(&e);
    assert!(
        v.starts_with("java held ")
            && v.contains(" with a JVM heap max of 64.0MiB (-Xmx64m): at least "),
        "{v}"
    );
    assert!(v.ends_with("the heap setting is not what filled it"), "{v}");
    // What it held beyond the heap, as the verdict says, is the kernel's RSS less the heap max.
    let rss = ["rss_anon_bytes", "rss_file_bytes", "rss_shmem_bytes"]
        .iter()
        .map(|k| e["victim"][k].as_u64().unwrap())
        .sum::<u64>();
    assert!(rss - 64 * MIB >= 64 * MIB, "{e:#}");
    assert!(
        e["oom"]["recommendation"]["setting"].is_null(),
        "no heap setting to change: {e:#}"
    );
}

#[test]
fn node_old_space_above_the_limit_is_named() {
    // The runtime's files in the page cache outside the test's cgroup, as on a node that ran
    // node before (else the kill thrashes on them for seconds).
    run_ok(Command::new(require_tool("node")).args(["-e", "0"]));
    let script = program("old_space.js");
    let argv = ["node", "--max-old-space-size=512", script.to_str().unwrap()];
    let e = kill_in_pod("rt-node", Tracer::Host, 256, &argv, &[]);
    let rt = &e["victim"]["runtime"];
    assert_eq!(
        (&rt["name"], &rt["heap_max_bytes"]),
        (&"node".into(), &(512 * MIB).into()),
        "{e:#}"
    );
    assert_eq!(rt["setting"], "--max-old-space-size=512");
    source_is_known(&e);
    assert_eq!(
        finding(&e),
        "Node old space max 512.0MiB (--max-old-space-size=512) is not below the container limit 256.0MiB: the kernel kills before the runtime must collect: lower --max-old-space-size below the limit, leaving room for V8's young generation, code and native memory, or raise the limit above 512.0MiB"
    );
    let r = &e["oom"]["recommendation"];
    assert_eq!(
        (&r["setting"], &r["limit_bytes"]),
        (&"max-old-space-size".into(), &(512 * MIB).into()),
        "{e:#}"
    );
}

/// The Go program built into `dir` offline (the standard library only), with its caches there.
fn go_build(dir: &Path) -> PathBuf {
    let bin = dir.join("gomemlimit");
    run_ok(
        Command::new(require_tool("go"))
            .arg("build")
            .arg("-o")
            .arg(&bin)
            .arg(program("gomemlimit.go"))
            .current_dir(dir)
            .env("GOCACHE", dir.join("cache"))
            .env("GOPATH", dir.join("gopath"))
            .env("GOPROXY", "off")
            .env("GOTOOLCHAIN", "local"),
    );
    bin
}

fn assert_gomemlimit_above_the_limit(e: &Value) {
    let rt = &e["victim"]["runtime"];
    assert_eq!(
        (&rt["name"], &rt["heap_max_bytes"]),
        (&"go".into(), &(1u64 << 30).into()),
        "{e:#}"
    );
    assert_eq!(rt["setting"], "GOMEMLIMIT=1GiB");
    assert_eq!(
        finding(e),
        "GOMEMLIMIT 1.0GiB (GOMEMLIMIT=1GiB) is not below the container limit 256.0MiB: the kernel kills before the runtime must collect: lower GOMEMLIMIT below the limit, leaving room for memory the Go runtime does not manage, or raise the limit above 1.0GiB"
    );
    let r = &e["oom"]["recommendation"];
    assert_eq!(
        (&r["setting"], &r["limit_bytes"]),
        (&"GOMEMLIMIT".into(), &(1u64 << 30).into()),
        "{e:#}"
    );
}

#[test]
fn gomemlimit_above_the_limit_is_named() {
    let dir = TempDir::new("go");
    let bin = go_build(&dir.0);
    let e = kill_in_pod(
        "rt-go",
        Tracer::Host,
        256,
        &[bin.to_str().unwrap()],
        &[("GOMEMLIMIT", "1GiB")],
    );
    source_is_known(&e);
    assert_gomemlimit_above_the_limit(&e);
}

#[test]
fn without_the_hosts_pids_the_pod_spec_names_the_runtime() {
    let dir = TempDir::new("go-pidns");
    let bin = go_build(&dir.0);
    let e = kill_in_pod(
        "rt-go-pidns",
        Tracer::OwnPidNamespace,
        256,
        &[bin.to_str().unwrap()],
        &[("GOMEMLIMIT", "1GiB")],
    );
    assert_eq!(e["victim"]["runtime"]["source"], "pod_spec", "{e:#}");
    assert_gomemlimit_above_the_limit(&e);
}

/// How often procfs still has the victim's command line and environment when oomtrace sees
/// the kill: Python victims (known by argv[0] alone) killed one after another. Then the same
/// when a thread other than the main one allocates, as in a JVM or a Python worker: the kernel
/// holds the main thread while it prints the kill, and the victim is read through the
/// allocating thread's own `/proc/<tid>`. One after the other, so that neither loop of kills
/// slows the other's reads.
#[test]
fn procfs_is_read_at_the_kill() {
    procfs_read_at_the_kill("oomtrace-procfs", "b = [bytearray(1 << 20) for _ in range(1 << 20)]");
    procfs_read_at_the_kill(
        "oomtrace-procfs-thread",
        "import threading\n\
         t = threading.Thread(target=lambda: [bytearray(1 << 20) for _ in range(1 << 20)])\n\
         t.start()\n\
         t.join()",
    );
}

fn procfs_read_at_the_kill(name: &str, script: &str) {
    require_root_and_btf();
    const KILLS: usize = 20;
    let cg = TestCgroup::new(name).unwrap();
    cg.set_limit(64 * MIB).unwrap();
    let w = Watch::start(&[]);
    let mut read = 0;
    for _ in 0..KILLS {
        let mut py = Command::new(require_tool("python3"));
        py.args(["-c", script]).stderr(Stdio::null());
        let st = cg.spawn(&mut py).unwrap().wait().unwrap();
        assert_eq!(st.signal(), Some(libc::SIGKILL), "{st}");
        let evs = w.collect(1, Duration::from_secs(30), in_cgroup(cg.rel.clone()));
        assert_eq!(evs.len(), 1, "stderr:\n{}", w.stderr_text());
        let e = &evs[0];
        let rt = &e["victim"]["runtime"];
        // Read in time, or not at all: never anything else.
        if !rt.is_null() {
            assert_eq!(rt["name"], "python", "{e:#}");
            assert_eq!(rt["source"], "procfs");
            assert!(rt["heap_max_bytes"].is_null());
            assert_eq!(rt["setting"], "none (CPython has no heap ceiling)");
            assert!(finding(e).ends_with("CPython has no heap ceiling: raise the limit or reduce what the program keeps in memory"), "{e:#}");
            read += 1;
        }
    }
    eprintln!("{name}: procfs had the victim's cmdline and environ at {read} of {KILLS} kills");
    // Measured on this host: 12 to 20 of 20 with one thread, 13 to 19 through the allocating
    // thread (12 to 17 while the main thread was read first), and 0 of 20 with the read put
    // off by 5 ms, as it would be after the other stages. A quarter tells the two apart and
    // leaves the race with the victim's exit its variance. A one-thread victim is held until
    // the kernel has printed its kill to this host's slow serial console; with a quick console
    // (QEMU guests) it is gone first, and this suite runs on the host only.
    assert!(
        read * 4 >= KILLS,
        "procfs read at only {read} of {KILLS} kills"
    );
}
