//! The container image (`cargo xtask image`) run exactly as `deploy/daemonset.yaml` runs it:
//! the manifest's args, capabilities (all dropped but BPF and PERFMON), user, read-only root
//! filesystem, read-only host mounts, memory limit and no host PID namespace, read from the
//! manifest itself. It must report a real OOM kill in a host cgroup with the right cgroup and
//! limit, and refuse to start, naming the capability, when CAP_BPF is missing.
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Container;
use oomtrace_tests::cgroup::{Hog, TestCgroup};
use oomtrace_tests::oomtrace_proc::{victim_is, Watch};
use oomtrace_tests::require_root_and_btf;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::Duration;
use xtask::image::{podman, TAG};

const MIB: u64 = 1 << 20;

fn daemonset() -> DaemonSet {
    let path = xtask::workspace_root().join("deploy/daemonset.yaml");
    serde_saphyr::from_str(&std::fs::read_to_string(&path).expect("deploy/daemonset.yaml"))
        .expect("a DaemonSet")
}

/// The runtime's default seccomp profile as a current containerd or CRI-O ships it: podman
/// 4.3's own default (containers-common 0.50) lets bpf() and perf_event_open() through only
/// with CAP_SYS_ADMIN; containers-common >= 0.60 and containerd >= 1.6.9 also with CAP_BPF and
/// CAP_PERFMON. The DaemonSet's `RuntimeDefault` means the latter on supported nodes
/// (deploy/README.md).
fn runtime_default_seccomp(dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string("/usr/share/containers/seccomp.json")
        .expect("podman's default seccomp profile");
    let mut profile: serde_json::Value = serde_json::from_str(&text).expect("seccomp JSON");
    let rules = profile["syscalls"].as_array_mut().expect("syscalls");
    for (syscall, cap) in [("bpf", "CAP_BPF"), ("perf_event_open", "CAP_PERFMON")] {
        rules.push(serde_json::json!({ "names": [syscall], "action": "SCMP_ACT_ALLOW", "includes": { "caps": [cap] } }));
        // The profile's "errno unless CAP_SYS_ADMIN" rule must not apply with the new cap either.
        for r in rules.iter_mut() {
            let errno_unless_admin = r["action"] == "SCMP_ACT_ERRNO"
                && r["names"]
                    .as_array()
                    .is_some_and(|n| n.iter().any(|s| s == syscall))
                && r["excludes"]["caps"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c == "CAP_SYS_ADMIN"));
            if errno_unless_admin {
                r["excludes"]["caps"]
                    .as_array_mut()
                    .unwrap()
                    .push(cap.into());
            }
        }
    }
    let path = dir.join("seccomp.json");
    std::fs::write(&path, serde_json::to_vec(&profile).unwrap()).unwrap();
    path
}

/// Half of this process's soft limit: the sandbox may not raise rlimits (no CAP_SYS_RESOURCE).
fn ulimit(resource: libc::__rlimit_resource_t, want: u64) -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct.
    assert_eq!(unsafe { libc::getrlimit(resource, &mut r) }, 0);
    want.min(r.rlim_cur / 2)
}

/// Removes the container whatever happens to the test.
struct Removed(String);
impl Drop for Removed {
    fn drop(&mut self) {
        let _ = podman()
            .args(["rm", "--force", "--time", "0", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Which seccomp profile stands for the manifest's `RuntimeDefault`.
enum Seccomp<'a> {
    /// A current runtime's default, written into this directory.
    Current(&'a std::path::Path),
    /// podman 4.3's own, as old runtimes ship it.
    Old,
}

/// `podman run` of the image with the DaemonSet's container settings; `drop_caps` are removed
/// from the capabilities the manifest adds.
fn run_as_daemonset(name: &str, drop_caps: &[&str], seccomp: Seccomp) -> Command {
    let ds = daemonset();
    let pod = ds.spec.template.spec.expect("pod spec");
    assert!(
        !pod.host_pid.unwrap_or(false) && !pod.host_network.unwrap_or(false),
        "no host namespaces"
    );
    let c: &Container = &pod.containers[0];
    let sc = c.security_context.as_ref().expect("securityContext");
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert_eq!(sc.privileged, Some(false));
    let mut cmd = podman();
    cmd.args([
        "run",
        "--rm",
        "--name",
        name,
        "--network",
        "none",
        "--cap-drop",
        "ALL",
    ]);
    for cap in caps
        .add
        .iter()
        .flatten()
        .filter(|c| !drop_caps.contains(&c.as_str()))
    {
        cmd.args(["--cap-add", &format!("CAP_{cap}")]);
    }
    if sc.read_only_root_filesystem == Some(true) {
        cmd.arg("--read-only");
    }
    if sc.allow_privilege_escalation == Some(false) {
        cmd.args(["--security-opt", "no-new-privileges"]);
    }
    let user = (
        sc.run_as_user.expect("runAsUser"),
        sc.run_as_group.expect("runAsGroup"),
    );
    cmd.args(["--user", &format!("{}:{}", user.0, user.1)]);
    let profile = pod
        .security_context
        .as_ref()
        .and_then(|s| s.seccomp_profile.as_ref())
        .map(|p| p.type_.as_str());
    assert_eq!(profile, Some("RuntimeDefault"));
    if let Seccomp::Current(dir) = seccomp {
        cmd.arg("--security-opt").arg(format!(
            "seccomp={}",
            runtime_default_seccomp(dir).display()
        ));
    }
    let volumes = pod.volumes.unwrap_or_default();
    for m in c.volume_mounts.iter().flatten() {
        let v = volumes
            .iter()
            .find(|v| v.name == m.name)
            .expect("volume of a mount");
        let host = &v.host_path.as_ref().expect("hostPath volume").path;
        assert_eq!(
            m.read_only,
            Some(true),
            "{} is mounted read-only",
            m.mount_path
        );
        cmd.args(["--volume", &format!("{host}:{}:ro", m.mount_path)]);
    }
    if let Some(mem) = c
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
    {
        let mib = mem.0.strip_suffix("Mi").expect("memory limit in Mi");
        cmd.args(["--memory", &format!("{mib}m")]);
    }
    for e in c.env.iter().flatten() {
        // NODE_NAME comes from the downward API: the node is this host.
        let value = e.value.clone().unwrap_or_else(hostname);
        cmd.args(["--env", &format!("{}={value}", e.name)]);
    }
    cmd.arg("--ulimit")
        .arg(format!("nofile={0}:{0}", ulimit(libc::RLIMIT_NOFILE, 4096)));
    cmd.arg("--ulimit")
        .arg(format!("nproc={0}:{0}", ulimit(libc::RLIMIT_NPROC, 4096)));
    cmd.arg(TAG).args(c.args.iter().flatten());
    cmd
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("hostname")
        .trim()
        .to_string()
}

fn require_image() {
    require_root_and_btf();
    let have = podman()
        .args(["image", "exists", TAG])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        have,
        "no image {TAG}: run `cargo xtask image` (`cargo xtask test` builds it first)"
    );
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_image_reports_a_host_kill_with_the_daemonsets_privileges() {
    require_image();
    let name = format!("oomtrace-image-test-{}", std::process::id());
    let dir = scratch(&name);
    let _rm = Removed(name.clone());
    let w = Watch::try_spawn(run_as_daemonset(&name, &[], Seccomp::Current(&dir)))
        .unwrap_or_else(|e| panic!("the image did not attach:\n{e}"));

    let cg = TestCgroup::new("oomtrace-image").unwrap();
    cg.set_limit(64 * MIB).unwrap();
    let mut hog = cg.spawn_hog(&Hog::anon(256)).unwrap();
    let pid = hog.id();
    assert_eq!(
        hog.wait().unwrap().signal(),
        Some(libc::SIGKILL),
        "the hog should have been OOM-killed"
    );

    // The container has its own pid namespace: the victim is found by its cgroup and comm, and
    // its host pid is what the kernel reports.
    let evs = w.collect(1, Duration::from_secs(30), victim_is(pid));
    assert_eq!(
        evs.len(),
        1,
        "no event from the container; its stderr:\n{}",
        w.stderr_text()
    );
    let e = &evs[0];
    assert_eq!(e["oom"]["constraint"], "memcg", "{e:#}");
    assert_eq!(e["oom"]["cgroup"], cg.rel.as_str(), "{e:#}");
    assert_eq!(e["oom"]["limit_bytes"], 64 * MIB, "{e:#}");
    assert_eq!(e["cgroup"]["memory"]["path"], cg.rel.as_str(), "{e:#}");
    assert_eq!(e["victim"]["comm"], "oomtrace-hog");
    assert_eq!(
        e["node"],
        hostname().as_str(),
        "NODE_NAME from the manifest's env"
    );
    let st = w.stop();
    assert!(
        st.success(),
        "the container should exit 0 on SIGTERM: {st:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs the image as the DaemonSet would, less `drop_caps`, and returns its stderr once it
/// has refused to start with exit 1.
fn refused(test: &str, drop_caps: &[&str], current_seccomp: bool) -> String {
    require_image();
    let name = format!("oomtrace-image-{test}-{}", std::process::id());
    let dir = scratch(&name);
    let _rm = Removed(name.clone());
    let seccomp = if current_seccomp { Seccomp::Current(&dir) } else { Seccomp::Old };
    let out = run_as_daemonset(&name, drop_caps, seccomp)
        .stdin(Stdio::null())
        .output()
        .expect("podman run");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "exit status; stderr:\n{stderr}");
    stderr
}

#[test]
fn the_image_without_cap_bpf_exits_1_naming_it() {
    let stderr = refused("nobpf", &["BPF"], true);
    assert!(stderr.contains("CAP_BPF"), "names the missing capability:\n{stderr}");
    assert!(!stderr.contains("CAP_PERFMON,") && !stderr.contains("CAP_PERFMON\""), "PERFMON is there:\n{stderr}");
}

#[test]
fn an_old_runtimes_seccomp_default_is_named_as_the_cause() {
    let stderr = refused("oldseccomp", &[], false);
    assert!(stderr.contains("seccomp profile"), "names seccomp as the cause:\n{stderr}");
    // This kernel (>= 5.11) does not charge maps to RLIMIT_MEMLOCK: that is not the cause.
    assert!(!stderr.contains("RLIMIT_MEMLOCK"), "{stderr}");
    assert!(!stderr.contains("tracefs"), "no fallback to a hook that cannot help:\n{stderr}");
}
