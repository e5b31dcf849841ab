//! The Kubernetes manifests in `deploy/` against the code they deploy, without a
//! cluster:
//!
//! * every object of every manifest parses into its k8s-openapi type, and re-serializes to
//!   exactly what was written (a misspelt or misplaced field fails, it is not silently dropped);
//! * the kustomization lists every manifest, and its image transform names the DaemonSet's image;
//! * the ClusterRole is bound to the DaemonSet's ServiceAccount (that it grants exactly the
//!   requests the daemon makes is checked against a running daemon, tests/daemon.rs);
//! * the DaemonSet adds exactly the capabilities the daemon needs (the real binary attaches
//!   with them, and refuses without any one of them, naming it), drops the
//!   rest, and mounts exactly the host paths listed here, read-only;
//! * its flags parse with the daemon's own clap definitions, and the listen port, container
//!   port, probes, Service and scrape annotations agree; NODE_NAME comes from spec.nodeName.
use clap::{Arg, ArgAction, Args, Command, FromArgMatches};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    Container, Namespace, PodSpec, ResourceQuota, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------------
// What the code needs.

/// Capabilities added beyond what the daemon needs, each only in the kustomize
/// component named, with the reason.
const EXTRA_CAPABILITIES: &[(&str, &str, &str)] = &[(
    "kernel-pre-5.11",
    "SYS_RESOURCE",
    "kernels < 5.11 charge BPF maps to RLIMIT_MEMLOCK; raising the hard limit (tracer.rs raise_memlock) needs it",
)];

/// Host paths the DaemonSet mounts (read-only, at the same path), and the code that reads
/// them.
const HOST_MOUNTS: &[(&str, &str, &str)] = &[
    // Kernel BTF: offsets and attach targets.
    (
        "/sys/kernel/btf",
        "oomtrace/src/btf_offsets.rs",
        "\"/sys/kernel/btf/vmlinux\"",
    ),
    // The host's cgroup tree (the container's own is namespaced): limits read after a kill.
    (
        "/sys/fs/cgroup",
        "oomtrace/src/cgroup_fs.rs",
        "\"memory.max\"",
    ),
    // tracefs for the classic tracepoint (id, record format).
    (
        "/sys/kernel/tracing",
        "oomtrace/src/tracefs.rs",
        "\"/sys/kernel/tracing\"",
    ),
];

/// Measured (deploy/README.md), in MiB: idle in its own memory cgroup, the binary's pages
/// included, and the peak: start-up with a 10 000-pod index, resident size plus the kernel
/// memory measured at start-up in the cgroup.
const MEASURED_IDLE_MIB: u64 = 26;
const MEASURED_PEAK_MIB: u64 = 56;

// ---------------------------------------------------------------------------------------------
// Loading.

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let p = root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}


fn parse_yaml(rel: &str) -> Vec<Value> {
    let text = read(rel);
    serde_saphyr::from_multiple::<Value>(&text).unwrap_or_else(|e| panic!("{rel}: not YAML: {e}"))
}

fn yaml_files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect()
}

/// The first place where `written` and `reparsed` differ: a field the type does not have
/// (dropped on parsing), or a value that changed.
fn first_difference(written: &Value, reparsed: &Value, path: &str) -> Option<String> {
    match (written, reparsed) {
        (Value::Object(w), Value::Object(r)) => {
            for (k, wv) in w {
                let p = format!("{path}.{k}");
                match r.get(k) {
                    None => return Some(format!("{p} is not a field here")),
                    Some(rv) => {
                        if let Some(d) = first_difference(wv, rv, &p) {
                            return Some(d);
                        }
                    }
                }
            }
            r.keys()
                .find(|k| !w.contains_key(*k))
                .map(|k| format!("{path}.{k} appeared on re-serializing"))
        }
        (Value::Array(w), Value::Array(r)) if w.len() == r.len() => w
            .iter()
            .zip(r)
            .enumerate()
            .find_map(|(i, (wv, rv))| first_difference(wv, rv, &format!("{path}[{i}]"))),
        _ => (written != reparsed).then(|| format!("{path}: {written} became {reparsed}")),
    }
}

/// Parses into `T` and fails on any field `T` does not have.
fn strict<T: DeserializeOwned + Serialize>(file: &str, doc: &Value) -> T {
    let what = format!(
        "{file}: {} {}",
        doc["kind"].as_str().unwrap_or("?"),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    );
    let t: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let back = serde_json::to_value(&t).expect("serialize");
    if let Some(d) = first_difference(doc, &back, "") {
        panic!("{what}: {d} (misspelt, misplaced, or of the wrong type)");
    }
    t
}

#[derive(Default)]
struct Manifests {
    namespaces: Vec<Namespace>,
    quotas: Vec<ResourceQuota>,
    service_accounts: Vec<ServiceAccount>,
    roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    daemonsets: Vec<DaemonSet>,
    services: Vec<Service>,
    network_policies: Vec<NetworkPolicy>,
    /// The DaemonSet as written (for the components' patches).
    daemonset_json: Option<Value>,
}

fn load() -> Manifests {
    let mut m = Manifests::default();
    for file in yaml_files(&root().join("deploy")) {
        if file == "kustomization.yaml" {
            continue;
        }
        let rel = format!("deploy/{file}");
        let docs = parse_yaml(&rel);
        assert!(!docs.is_empty(), "{rel}: no document");
        for doc in docs {
            let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_string();
            let kind = doc["kind"].as_str().unwrap_or_default().to_string();
            match (api_version.as_str(), kind.as_str()) {
                ("v1", "Namespace") => m.namespaces.push(strict(&rel, &doc)),
                ("v1", "ResourceQuota") => m.quotas.push(strict(&rel, &doc)),
                ("v1", "ServiceAccount") => m.service_accounts.push(strict(&rel, &doc)),
                ("v1", "Service") => m.services.push(strict(&rel, &doc)),
                ("networking.k8s.io/v1", "NetworkPolicy") => m.network_policies.push(strict(&rel, &doc)),
                ("rbac.authorization.k8s.io/v1", "ClusterRole") => m.roles.push(strict(&rel, &doc)),
                ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                    m.bindings.push(strict(&rel, &doc))
                }
                ("apps/v1", "DaemonSet") => {
                    m.daemonsets.push(strict(&rel, &doc));
                    m.daemonset_json = Some(doc);
                }
                _ => panic!("{rel}: unexpected object {api_version} {kind}: add it to this test"),
            }
        }
    }
    for (what, n) in [
        ("Namespace", m.namespaces.len()),
        ("ResourceQuota", m.quotas.len()),
        ("ServiceAccount", m.service_accounts.len()),
        ("ClusterRole", m.roles.len()),
        ("ClusterRoleBinding", m.bindings.len()),
        ("DaemonSet", m.daemonsets.len()),
        ("Service", m.services.len()),
        ("NetworkPolicy", m.network_policies.len()),
    ] {
        assert_eq!(n, 1, "deploy/ should have exactly one {what}");
    }
    m
}

impl Manifests {
    fn namespace(&self) -> &str {
        self.namespaces[0]
            .metadata
            .name
            .as_deref()
            .expect("namespace name")
    }
    fn daemonset(&self) -> &DaemonSet {
        &self.daemonsets[0]
    }
    fn pod(&self) -> &PodSpec {
        self.daemonset()
            .spec
            .template
            .spec
            .as_ref()
            .expect("pod spec")
    }
    fn container(&self) -> &Container {
        let pod = self.pod();
        assert_eq!(pod.containers.len(), 1, "one container");
        assert!(pod.init_containers.is_none(), "no init containers");
        &pod.containers[0]
    }
}

fn container_port(c: &Container, port: &IntOrString) -> i32 {
    match port {
        IntOrString::Int(p) => *p,
        IntOrString::String(name) => {
            c.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .unwrap_or_else(|| panic!("no container port named {name}"))
                .container_port
        }
    }
}

fn mib(q: &str) -> u64 {
    if let Some(v) = q.strip_suffix("Mi") {
        v.parse().expect("MiB")
    } else if let Some(v) = q.strip_suffix("Gi") {
        v.parse::<u64>().expect("GiB") * 1024
    } else {
        panic!("memory quantity {q}: write it in Mi or Gi")
    }
}

/// `daemon` + the container's args, parsed with the daemon's own clap definitions.
fn parse_daemon_args(args: &[String]) -> oomtrace::daemon::DaemonArgs {
    // The global flags live in the binary's `Cli` (oomtrace/src/main.rs): checked there, then
    // declared here the same way.
    let main_rs = read("oomtrace/src/main.rs");
    for marker in [
        "verbose: u8",
        "log_format: LogFormat",
        "global = true",
        "Text,",
        "Json,",
    ] {
        assert!(
            main_rs.contains(marker),
            "oomtrace/src/main.rs no longer has `{marker}`: update this test"
        );
    }
    let cmd = Command::new("daemon")
        .arg(
            Arg::new("verbose")
                .short('v')
                .long("verbose")
                .action(ArgAction::Count),
        )
        .arg(
            Arg::new("log-format")
                .long("log-format")
                .value_parser(["text", "json"]),
        );
    let cmd = oomtrace::daemon::DaemonArgs::augment_args(cmd);
    let matches = cmd
        .try_get_matches_from(std::iter::once("daemon".to_string()).chain(args.iter().cloned()))
        .unwrap_or_else(|e| panic!("the DaemonSet's args {args:?} do not parse: {e}"));
    oomtrace::daemon::DaemonArgs::from_arg_matches(&matches).expect("DaemonArgs")
}


// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn every_manifest_parses_strictly_and_the_kustomization_lists_them_all() {
    let m = load();
    let k = parse_yaml("deploy/kustomization.yaml");
    assert_eq!(k.len(), 1);
    let k = &k[0];
    let keys: BTreeSet<&str> = k
        .as_object()
        .expect("mapping")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["apiVersion", "kind", "resources", "images"]),
        "kustomization fields"
    );
    assert_eq!(k["apiVersion"], "kustomize.config.k8s.io/v1beta1");
    assert_eq!(k["kind"], "Kustomization");
    let listed: Vec<String> = k["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("path").to_string())
        .collect();
    let listed_set: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(listed.len(), listed_set.len(), "a resource is listed twice");
    let mut on_disk = yaml_files(&root().join("deploy"));
    on_disk.remove("kustomization.yaml");
    assert_eq!(
        listed_set, on_disk,
        "deploy/kustomization.yaml resources vs the manifests in deploy/"
    );

    // The image transform must name the image the DaemonSet uses, or it silently does nothing.
    let image = m.container().image.as_deref().expect("image");
    let images = k["images"].as_array().expect("images");
    assert_eq!(images.len(), 1);
    assert_eq!(
        images[0]["name"].as_str(),
        Some(image),
        "kustomization images[].name vs the DaemonSet's image"
    );
    assert!(
        images[0]["newTag"].is_string(),
        "images[].newTag must be a string"
    );

    // Namespaced objects are in the Namespace; names and labels hang together.
    let ns = m.namespace();
    for (what, obj_ns) in [
        ("ResourceQuota", &m.quotas[0].metadata.namespace),
        ("ServiceAccount", &m.service_accounts[0].metadata.namespace),
        ("DaemonSet", &m.daemonset().metadata.namespace),
        ("Service", &m.services[0].metadata.namespace),
    ] {
        assert_eq!(obj_ns.as_deref(), Some(ns), "{what} namespace");
    }
    let labels = m.namespaces[0]
        .metadata
        .labels
        .as_ref()
        .expect("namespace labels");
    // hostPath volumes and non-default capabilities are beyond `baseline`.
    assert_eq!(
        labels
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("privileged")
    );
}

/// (What the ClusterRole grants is checked against the requests of a running daemon in
/// tests/daemon.rs.)
#[test]
fn the_cluster_role_is_bound_to_the_daemons_service_account() {
    let m = load();
    let role = &m.roles[0];
    assert!(role.aggregation_rule.is_none());
    // Bound to the daemon's ServiceAccount.
    let binding = &m.bindings[0];
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(
        binding.role_ref.api_group.as_deref(),
        Some("rbac.authorization.k8s.io")
    );
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let sa = &m.service_accounts[0];
    let subjects = binding.subjects.as_ref().expect("subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), sa.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace.as_deref(), Some(m.namespace()));
    assert_eq!(
        m.pod().service_account_name.as_ref(),
        sa.metadata.name.as_ref()
    );
    assert_ne!(
        m.pod().automount_service_account_token,
        Some(false),
        "the daemon needs its token"
    );
}

/// Runs the real `oomtrace watch` as root bounded to exactly `caps` (the container's view
/// after exec): `Ok` once it has attached, else its error.
/// Whether `oomtrace watch` attaches with only `caps`: what it said before it did, or why not.
fn attaches_with(caps: &BTreeSet<String>) -> Result<String, String> {
    use std::io::BufRead;
    let bounding: String = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{}", c.to_lowercase())))
        .collect::<Vec<_>>()
        .join(",");
    let mut child = std::process::Command::new("setpriv")
        .arg(format!("--bounding-set={bounding}"))
        .args(["--inh-caps=-all", "--"])
        .arg(oomtrace_tests::oomtrace_proc::oomtrace_binary())
        .args(["watch", "--no-kubernetes"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux)");
    let mut stderr = String::new();
    for line in std::io::BufReader::new(child.stderr.take().expect("stderr")).lines() {
        let line = line.expect("stderr line");
        if line.contains("watching for OOM kills") {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(stderr);
        }
        stderr.push_str(&line);
        stderr.push('\n');
    }
    let _ = child.wait();
    Err(stderr)
}

/// `kernel.perf_event_paranoid` above 2 (a distribution's restriction), put back on drop.
struct Paranoid(String);

impl Paranoid {
    const PATH: &str = "/proc/sys/kernel/perf_event_paranoid";

    fn above_2() -> Option<Self> {
        let now = std::fs::read_to_string(Self::PATH).ok()?;
        (now.trim().parse::<i32>().ok()? > 2).then(|| Paranoid(now.trim().to_string()))
    }

    fn set(&self, level: i32) {
        std::fs::write(Self::PATH, level.to_string()).expect("setting perf_event_paranoid");
    }
}

impl Drop for Paranoid {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

/// Whether the running kernel is older than `major.minor`.
fn kernel_before(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut v = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    (v.next().unwrap_or(0), v.next().unwrap_or(0)) < (major, minor)
}

fn added_capabilities(c: &Container) -> BTreeSet<String> {
    let caps = c
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .expect("capabilities");
    let added: Vec<String> = caps.add.clone().unwrap_or_default();
    let set: BTreeSet<String> = added.iter().cloned().collect();
    assert_eq!(set.len(), added.len(), "a capability is added twice");
    set
}

#[test]
fn the_daemonset_adds_exactly_the_capabilities_the_daemon_needs() {
    oomtrace_tests::require_root_and_btf();
    let m = load();
    // With exactly the added capabilities the daemon attaches (on kernels before 5.11, with
    // those the kernel-pre-5.11 component adds too); without any one of them it refuses,
    // naming it.
    let added = added_capabilities(m.container());
    let mut needed = added.clone();
    let mut _paranoid = None;
    if kernel_before(5, 11) {
        needed.extend(EXTRA_CAPABILITIES.iter().filter(|(c, _, _)| *c == "kernel-pre-5.11").map(|(_, cap, _)| cap.to_string()));
        // These kernels' victim hook is the classic tracepoint (perf_event_open). Debian's
        // 5.10 restricts perf at perf_event_paranoid 3 to CAP_SYS_ADMIN: the daemon must say
        // so, and the node setting it names must be enough.
        if let Some(p) = Paranoid::above_2() {
            let err = attaches_with(&needed).expect_err("perf_event_paranoid 3 refuses the classic tracepoint");
            assert!(err.contains("kernel.perf_event_paranoid is 3") && err.contains("=2"), "{err}");
            p.set(2);
            _paranoid = Some(p);
        }
    }
    let said = attaches_with(&needed).unwrap_or_else(|e| panic!("with {needed:?} only, oomtrace does not attach:\n{e}"));
    let sysctl = |name: &str| std::fs::read_to_string(format!("/proc/sys/kernel/{name}")).ok().and_then(|v| v.trim().parse::<i32>().ok());
    let kptr_restrict = sysctl("kptr_restrict").unwrap_or(1);
    // At kptr_restrict 2 no capability shows kernel addresses.
    let named = kptr_restrict < 2;
    assert_eq!(!said.contains("CAP_SYSLOG"), named, "with every added capability:\n{said}");
    for cap in &needed {
        let mut fewer = needed.clone();
        fewer.remove(cap);
        // SYSLOG only names kernel functions: without it the daemon runs and says what it lacks,
        // where the node hides kernel addresses from the unprivileged.
        if cap == "SYSLOG" {
            let said = attaches_with(&fewer).unwrap_or_else(|e| panic!("without SYSLOG oomtrace does not attach:\n{e}"));
            let hidden = kptr_restrict >= 1 || sysctl("perf_event_paranoid").unwrap_or(2) > 1;
            assert_eq!(said.contains("naming kernel functions needs CAP_SYSLOG"), hidden, "without SYSLOG:\n{said}");
            continue;
        }
        let err = attaches_with(&fewer).expect_err(&format!("{cap} is added but not needed"));
        // SYS_RESOURCE is not checked up front (later kernels do without it): its absence
        // shows as the memlock limit the kernel then enforces.
        let named = if cap == "SYS_RESOURCE" {
            err.contains("RLIMIT_MEMLOCK")
        } else {
            err.contains("missing capabilities") && err.contains(&format!("CAP_{cap}"))
        };
        assert!(named, "without {cap}: {err}");
    }

    // Each component adds only its justified extras, through a patch that applies.
    assert!(
        read("oomtrace/src/tracer.rs").contains("RLIMIT_MEMLOCK"),
        "raise_memlock is gone: drop SYS_RESOURCE"
    );
    let components = root().join("deploy/components");
    let names: BTreeSet<String> = std::fs::read_dir(&components)
        .expect("deploy/components")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let justified: BTreeSet<String> = EXTRA_CAPABILITIES
        .iter()
        .map(|(c, _, _)| c.to_string())
        .collect();
    assert_eq!(names, justified, "deploy/components vs EXTRA_CAPABILITIES");
    for (component, cap, why) in EXTRA_CAPABILITIES {
        let rel = format!("deploy/components/{component}/kustomization.yaml");
        assert_eq!(
            yaml_files(&components.join(component)),
            BTreeSet::from(["kustomization.yaml".to_string()])
        );
        let docs = parse_yaml(&rel);
        let k = &docs[0];
        assert_eq!(k["apiVersion"], "kustomize.config.k8s.io/v1alpha1", "{rel}");
        assert_eq!(k["kind"], "Component", "{rel}");
        let patches = k["patches"].as_array().expect("patches");
        assert_eq!(patches.len(), 1, "{rel}");
        let target = &patches[0]["target"];
        assert_eq!(target["kind"], "DaemonSet", "{rel}");
        assert_eq!(target["group"], "apps", "{rel}");
        assert_eq!(
            target["name"].as_str(),
            m.daemonset().metadata.name.as_deref(),
            "{rel}"
        );
        let ops: Vec<Value> =
            serde_saphyr::from_str(patches[0]["patch"].as_str().expect("inline patch"))
                .expect("patch YAML");
        let mut patched = m.daemonset_json.clone().expect("DaemonSet");
        for op in &ops {
            apply_add(&mut patched, op, &rel);
        }
        let ds: DaemonSet = strict(&rel, &patched);
        let c = &ds.spec.template.spec.expect("pod").containers[0];
        let mut expected = added.clone();
        expected.insert(cap.to_string());
        assert_eq!(added_capabilities(c), expected, "{rel} ({why})");
    }
}

/// Applies one JSON-patch `add` operation (the only kind the components use).
fn apply_add(doc: &mut Value, op: &Value, file: &str) {
    assert_eq!(
        op["op"], "add",
        "{file}: only `add` operations are expected"
    );
    let path = op["path"].as_str().expect("path");
    let mut parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let last = parts.pop().expect("path");
    let mut at = doc;
    for p in parts {
        at = match at {
            Value::Object(o) => o.get_mut(p),
            Value::Array(a) => p.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .unwrap_or_else(|| panic!("{file}: {path} does not exist in the DaemonSet ({p})"));
    }
    match (at, last) {
        (Value::Array(a), "-") => a.push(op["value"].clone()),
        (Value::Object(o), k) => {
            o.insert(k.to_string(), op["value"].clone());
        }
        _ => panic!("{file}: cannot add at {path}"),
    }
}

#[test]
fn the_daemonset_is_least_privilege() {
    let m = load();
    let pod = m.pod();
    assert_ne!(
        pod.host_pid,
        Some(true),
        "hostPID: pids come from the kernel"
    );
    assert_ne!(pod.host_network, Some(true), "hostNetwork");
    assert_ne!(pod.host_ipc, Some(true), "hostIPC");
    // A user namespace would make CAP_BPF/CAP_PERFMON useless for bpf()/perf_event_open().
    assert_ne!(
        pod.host_users,
        Some(false),
        "hostUsers: false cannot load BPF programs"
    );
    let pod_seccomp = pod
        .security_context
        .as_ref()
        .and_then(|s| s.seccomp_profile.as_ref());

    let c = m.container();
    let sc = c
        .security_context
        .as_ref()
        .expect("container securityContext");
    assert_ne!(sc.privileged, Some(true), "privileged");
    assert_eq!(
        sc.allow_privilege_escalation,
        Some(false),
        "allowPrivilegeEscalation"
    );
    assert_eq!(
        sc.read_only_root_filesystem,
        Some(true),
        "readOnlyRootFilesystem"
    );
    // Root without ambient capabilities: how the added capabilities survive exec.
    assert_eq!(sc.run_as_user, Some(0), "runAsUser");
    assert_ne!(sc.run_as_non_root, Some(true));
    assert!(
        sc.proc_mount.is_none() && sc.se_linux_options.is_none() && sc.app_armor_profile.is_none()
    );
    let drop = sc
        .capabilities
        .as_ref()
        .and_then(|c| c.drop.clone())
        .unwrap_or_default();
    assert_eq!(drop, vec!["ALL".to_string()], "capabilities.drop");
    let seccomp = sc
        .seccomp_profile
        .as_ref()
        .or(pod_seccomp)
        .expect("a seccomp profile");
    assert_eq!(seccomp.type_, "RuntimeDefault");
    for s in [sc.seccomp_profile.as_ref(), pod_seccomp]
        .into_iter()
        .flatten()
    {
        assert_eq!(s.type_, "RuntimeDefault", "no Unconfined seccomp anywhere");
    }

    // Exactly the host paths the code reads, read-only, at the same path.
    let volumes = pod.volumes.as_ref().expect("volumes");
    let mounts = c.volume_mounts.as_ref().expect("volumeMounts");
    assert_eq!(volumes.len(), HOST_MOUNTS.len(), "volumes vs HOST_MOUNTS");
    assert_eq!(
        mounts.len(),
        HOST_MOUNTS.len(),
        "volumeMounts vs HOST_MOUNTS"
    );
    for (path, file, marker) in HOST_MOUNTS {
        assert!(
            read(file).contains(marker),
            "{file} no longer has {marker}: is {path} still read?"
        );
        let v = volumes
            .iter()
            .find(|v| v.host_path.as_ref().is_some_and(|h| h.path == *path))
            .unwrap_or_else(|| panic!("no hostPath volume for {path}"));
        assert_eq!(
            v.host_path.as_ref().and_then(|h| h.type_.as_deref()),
            Some("Directory"),
            "{path} type"
        );
        let mnt = mounts
            .iter()
            .find(|mt| mt.name == v.name)
            .unwrap_or_else(|| panic!("{path} is not mounted"));
        assert_eq!(mnt.mount_path, *path, "{path} mounted elsewhere");
        assert_eq!(mnt.read_only, Some(true), "{path} must be read-only");
        assert!(
            mnt.sub_path.is_none() && mnt.mount_propagation.is_none(),
            "{path}"
        );
    }
    assert!(
        volumes.iter().all(|v| v.host_path.is_some()),
        "only hostPath volumes"
    );

    // Scheduled everywhere, evicted last.
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = pod.tolerations.as_ref().expect("tolerations");
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()
                && t.toleration_seconds.is_none()),
        "a toleration of every taint (operator: Exists alone)"
    );
    // The quota that lets system-node-critical pods in on clusters that limit the class.
    let quota = m.quotas[0].spec.as_ref().expect("quota spec");
    let scope = &quota
        .scope_selector
        .as_ref()
        .expect("scopeSelector")
        .match_expressions
        .as_ref()
        .expect("matchExpressions")[0];
    assert_eq!(scope.scope_name, "PriorityClass");
    assert_eq!(scope.operator, "In");
    assert_eq!(
        scope.values.as_deref(),
        Some(&["system-node-critical".to_string()][..])
    );

    let strategy = m
        .daemonset()
        .spec
        .update_strategy
        .as_ref()
        .expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let ru = strategy.rolling_update.as_ref().expect("rollingUpdate");
    assert_eq!(ru.max_unavailable, Some(IntOrString::String("10%".into())));

    // Sized from the measurement, with room for the pod index.
    let res = c.resources.as_ref().expect("resources");
    let requests = res.requests.as_ref().expect("requests");
    let limits = res.limits.as_ref().expect("limits");
    assert!(requests.contains_key("cpu"), "requests.cpu");
    let req = mib(&requests["memory"].0);
    let lim = mib(&limits["memory"].0);
    assert!(
        req >= MEASURED_IDLE_MIB,
        "requests.memory {req}Mi below the measured idle usage"
    );
    assert!(
        lim >= 2 * MEASURED_PEAK_MIB,
        "limits.memory {lim}Mi: keep twice the measured peak"
    );
    assert!(lim >= req);
}

#[test]
fn the_network_policy_admits_only_the_metrics_port_of_the_daemon() {
    let m = load();
    let np = &m.network_policies[0];
    assert_eq!(np.metadata.namespace.as_deref(), Some(m.namespace()));
    let spec = np.spec.as_ref().expect("spec");
    let pod_labels = m.daemonset().spec.template.metadata.as_ref().and_then(|m| m.labels.clone());
    let selected = spec.pod_selector.as_ref().and_then(|s| s.match_labels.clone());
    assert_eq!(selected, pod_labels, "the policy selects the daemon's pods");
    assert_eq!(spec.policy_types.as_deref(), Some(&["Ingress".to_string()][..]), "ingress only: egress reaches the API server");
    let rules = spec.ingress.as_ref().expect("one ingress rule");
    assert_eq!(rules.len(), 1, "one ingress rule");
    let ports = rules[0].ports.as_ref().expect("the rule names its port");
    assert_eq!(ports.len(), 1, "one port");
    assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));
    let port = ports[0].port.as_ref().expect("a port");
    let c = m.container();
    let metrics = i32::from(parse_daemon_args(&c.args.clone().unwrap_or_default()).listen.port());
    assert_eq!(container_port(c, port), metrics, "the port admitted is the one --listen serves");
    assert!(ports[0].end_port.is_none());
}

#[test]
fn flags_ports_probes_service_and_node_name_agree_with_the_daemon() {
    let m = load();
    let c = m.container();
    assert!(
        c.command.is_none(),
        "the image's entrypoint is `/oomtrace daemon`; set args only"
    );
    let args = c.args.clone().unwrap_or_default();
    let parsed = parse_daemon_args(&args);
    assert!(
        !parsed.k8s.no_kubernetes,
        "the DaemonSet runs with Kubernetes attribution"
    );
    assert!(parsed.k8s.connection.kubeconfig.is_none(), "in-cluster config");
    assert!(
        !parsed.no_events,
        "Events are published (the ClusterRole grants them)"
    );
    let listen = parsed.listen;
    assert!(
        listen.ip().is_unspecified(),
        "--listen must be reachable on the pod IP, got {listen}"
    );
    let port = i32::from(listen.port());

    let ports = c.ports.as_ref().expect("ports");
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].container_port, port, "containerPort vs --listen");
    assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));
    assert!(ports[0].host_port.is_none(), "no hostPort");

    let daemon_rs = read("oomtrace/src/daemon.rs");
    for (probe, path) in [
        (&c.liveness_probe, "/healthz"),
        (&c.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{path} probe"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(container_port(c, &get.port), port, "{path} probe port");
        assert!(
            get.scheme.as_deref().is_none_or(|s| s == "HTTP"),
            "plain HTTP"
        );
        assert!(
            daemon_rs.contains(&format!(".route(\"{path}\"")),
            "daemon.rs serves {path}"
        );
    }
    assert!(
        daemon_rs.contains(".route(\"/metrics\""),
        "daemon.rs serves /metrics"
    );

    let env = c.env.as_ref().expect("env");
    let node = env
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME");
    let field = node
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("NODE_NAME from a fieldRef");
    assert_eq!(field.field_path, "spec.nodeName");
    // (That the daemon names its Events with NODE_NAME: tests/daemon.rs.)

    let svc = &m.services[0];
    let spec = svc.spec.as_ref().expect("service spec");
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"), "headless");
    let template_labels = m
        .daemonset()
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|md| md.labels.clone())
        .expect("pod labels");
    let selector = spec.selector.as_ref().expect("service selector");
    assert!(
        selector
            .iter()
            .all(|(k, v)| template_labels.get(k) == Some(v)),
        "the Service selects the daemon's pods"
    );
    let ds_selector: BTreeMap<String, String> = m
        .daemonset()
        .spec
        .selector
        .match_labels
        .clone()
        .expect("matchLabels");
    assert!(
        ds_selector
            .iter()
            .all(|(k, v)| template_labels.get(k) == Some(v)),
        "the DaemonSet selects its pods"
    );
    let svc_ports = spec.ports.as_ref().expect("service ports");
    assert_eq!(svc_ports.len(), 1);
    assert_eq!(svc_ports[0].port, port, "Service port vs --listen");
    let target = svc_ports[0].target_port.as_ref().expect("targetPort");
    assert_eq!(container_port(c, target), port, "Service targetPort");

    let ann = svc.metadata.annotations.as_ref().expect("annotations");
    assert_eq!(
        ann.get("prometheus.io/scrape").map(String::as_str),
        Some("true")
    );
    assert_eq!(ann.get("prometheus.io/port"), Some(&port.to_string()));
    assert_eq!(
        ann.get("prometheus.io/path").map(String::as_str),
        Some("/metrics")
    );
    let pod_ann = m
        .daemonset()
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|md| md.annotations.as_ref());
    assert!(
        pod_ann.is_none_or(|a| !a.keys().any(|k| k.starts_with("prometheus.io/"))),
        "scrape annotations on the Service only, or a pods job scrapes every daemon twice"
    );
}
