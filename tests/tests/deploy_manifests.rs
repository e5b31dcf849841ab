//! The Kubernetes manifests in `deploy/` against the code they deploy. Static checks, no
//! cluster:
//!
//! * every object of every manifest parses into its k8s-openapi type, and re-serializes to
//!   exactly what was written (a misspelt or misplaced field fails, it is not silently dropped);
//! * the kustomization lists every manifest, and its image transform names the DaemonSet's image;
//! * the ClusterRole grants exactly the API calls the code makes: a table of code markers →
//!   rules, each marker checked in the source, each verb checked in the kube-runtime code that
//!   makes the call, and any other Kubernetes API entry point in the source fails the test;
//! * the DaemonSet adds exactly the capabilities `tracer::check_privileges` asks for, drops the
//!   rest, and mounts exactly the host paths listed here, read-only;
//! * its flags parse with the daemon's own clap definitions, and the listen port, container
//!   port, probes, Service and scrape annotations agree; NODE_NAME comes from spec.nodeName.
use clap::{Arg, ArgAction, Args, Command, FromArgMatches};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    Container, Namespace, PodSpec, ResourceQuota, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------------
// What the code needs, and where that is written in the code.

/// A Kubernetes API use in the daemon's source and the RBAC rule it needs.
struct ApiUse {
    /// Source file (from the workspace root) and strings that must be in it: the call sites.
    file: &'static str,
    markers: &'static [&'static str],
    /// The kube-runtime source that makes the HTTP calls, and lines to leave out of its scan
    /// (calls on something that is not an `Api`).
    kube_runtime_file: &'static str,
    not_api_calls: &'static [&'static str],
    /// (API group, resource, verbs).
    group: &'static str,
    resource: &'static str,
    verbs: &'static [&'static str],
}

const API_USES: &[ApiUse] = &[
    // The pod index: kube's watcher (ListWatch strategy: LIST, then WATCH; LIST again when the
    // watch expires). Never a GET of one Pod.
    ApiUse {
        file: "oomtrace/src/k8s/pod_index.rs",
        markers: &[
            "let api: Api<Pod> = Api::all(client);",
            "watcher(api, config)",
        ],
        kube_runtime_file: "src/watcher.rs",
        not_api_calls: &[],
        group: "",
        resource: "pods",
        verbs: &["list", "watch"],
    },
    // OOMKill Events through kube's Recorder: POST a new Event, PATCH it into a series on a
    // repeat.
    ApiUse {
        file: "oomtrace/src/k8s/events.rs",
        markers: &[
            "Recorder::new(client",
            "recorder.publish(&event, &reference)",
        ],
        kube_runtime_file: "src/events.rs",
        // The Recorder's own in-memory cache (a HashMap), not the API.
        not_api_calls: &["self.cache."],
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
    },
];

/// Kubernetes API uses that are not the daemon's: commands a person runs with their own
/// kubeconfig. The ClusterRole does not cover them, so the daemon must not reach them: `call`
/// may only appear in the functions listed.
struct ClientUse {
    file: &'static str,
    markers: &'static [&'static str],
    call: &'static str,
    callers: &'static [(&'static str, &'static str)],
}

const NOT_THE_DAEMON: &[ClientUse] = &[
    // `oomtrace watch --cluster`: the OOMKill Events of the whole cluster, from a laptop.
    ClientUse {
        file: "oomtrace/src/cluster.rs",
        markers: &[
            "let api: Api<Event> = Api::all(client);",
            "watcher(api, cfg)",
        ],
        call: "cluster::run(",
        callers: &[("oomtrace/src/watch.rs", "run")],
    },
];

/// Ways into the Kubernetes API from kube. Every occurrence in the daemon's (non-test) source
/// must be one of the `API_USES` markers; a new one fails until the table and the ClusterRole
/// are updated.
const API_ENTRY_POINTS: &[&str] = &[
    "Api::all",
    "Api::namespaced",
    "Api::default_namespaced",
    "Api::<",
    "Recorder::new",
    "watcher(",
    "metadata_watcher(",
    "watch_object(",
    "reflector(",
    "Controller::new",
    "Discovery::new",
    ".request(",
    ".request_text(",
    ".request_stream(",
    ".request_status(",
];

/// kube `Api` methods → the RBAC verb of the request they make.
const API_METHODS: &[(&str, &str)] = &[
    ("get", "get"),
    ("get_opt", "get"),
    ("get_metadata", "get"),
    ("get_metadata_opt", "get"),
    ("list", "list"),
    ("list_metadata", "list"),
    ("watch", "watch"),
    ("watch_metadata", "watch"),
    ("create", "create"),
    ("patch", "patch"),
    ("patch_metadata", "patch"),
    ("patch_status", "patch"),
    ("replace", "update"),
    ("replace_status", "update"),
    ("delete", "delete"),
    ("delete_collection", "deletecollection"),
    ("entry", "get"),
];

/// Capabilities added beyond what `check_privileges` requires, each only in the kustomize
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

/// Measured in its own memory cgroup, the binary's pages included (deploy/README.md), in MiB:
/// idle, and the peak (during a storm of ~70 kills/s).
const MEASURED_IDLE_MIB: u64 = 48;
const MEASURED_PEAK_MIB: u64 = 97;

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

/// The part of a Rust file before its unit tests, without comment lines.
fn non_test_code(text: &str) -> String {
    let end = ["#[cfg(test)]\nmod tests", "#[cfg(test)]\nmod test "]
        .iter()
        .filter_map(|m| text.find(m))
        .min()
        .unwrap_or(text.len());
    text[..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
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

/// Where kube-runtime's source is (the version in Cargo.lock, from Cargo's registry cache).
fn kube_runtime_source() -> PathBuf {
    let lock = read("Cargo.lock");
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("\nname = \"kube-runtime\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_string())
        .expect("kube-runtime in Cargo.lock");
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cargo"));
    let registry = cargo_home.join("registry/src");
    std::fs::read_dir(&registry)
        .unwrap_or_else(|e| panic!("reading {}: {e}", registry.display()))
        .map(|e| {
            e.expect("dir entry")
                .path()
                .join(format!("kube-runtime-{version}"))
        })
        .find(|p| p.is_dir())
        .unwrap_or_else(|| {
            panic!(
                "kube-runtime {version} not found under {}",
                registry.display()
            )
        })
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Byte offsets of `token` in `text` that are not the tail of a longer identifier.
fn occurrences(text: &str, token: &str) -> Vec<usize> {
    let needs_boundary = token.starts_with(is_ident);
    text.match_indices(token)
        .map(|(i, _)| i)
        .filter(|&i| !needs_boundary || !text[..i].ends_with(is_ident))
        .collect()
}

fn line_at(text: &str, at: usize) -> &str {
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    &text[start..end]
}

/// The name of the function `at` is in (the last `fn NAME` before it).
fn enclosing_fn(code: &str, at: usize) -> String {
    let start = occurrences(&code[..at], "fn ")
        .into_iter()
        .last()
        .expect("inside a function")
        + 3;
    code[start..].chars().take_while(|c| is_ident(*c)).collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
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

#[test]
fn the_cluster_role_grants_exactly_the_api_calls_the_code_makes() {
    let m = load();
    let kube_runtime = kube_runtime_source();

    let mut needed: BTreeSet<(String, String, String)> = BTreeSet::new();
    for u in API_USES {
        let code = non_test_code(&read(u.file));
        for marker in u.markers {
            assert!(
                code.contains(marker),
                "{}: `{marker}` is gone: re-check which Kubernetes API calls the code makes, then update API_USES and deploy/rbac.yaml",
                u.file
            );
        }
        // The verbs are those of the requests kube-runtime makes for this use.
        let path = kube_runtime.join(u.kube_runtime_file);
        let dep = non_test_code(&std::fs::read_to_string(&path).expect("kube-runtime source"));
        let mut verbs = BTreeSet::new();
        for (method, verb) in API_METHODS {
            for at in occurrences(&dep, &format!(".{method}(")) {
                let line = line_at(&dep, at);
                if !u.not_api_calls.iter().any(|n| line.contains(n)) {
                    verbs.insert(verb.to_string());
                }
            }
        }
        let expected: BTreeSet<String> = u.verbs.iter().map(|v| v.to_string()).collect();
        assert_eq!(
            verbs,
            expected,
            "{} (kube-runtime) makes these requests for {}: update API_USES and deploy/rbac.yaml",
            path.display(),
            u.file
        );
        for v in u.verbs {
            needed.insert((u.group.into(), u.resource.into(), v.to_string()));
        }
    }

    // No other way into the API in the daemon's source.
    let mut files = Vec::new();
    rust_files(&root().join("oomtrace/src"), &mut files);
    for f in files {
        let rel = f
            .strip_prefix(root())
            .expect("in workspace")
            .to_string_lossy()
            .replace('\\', "/");
        let code = non_test_code(&std::fs::read_to_string(&f).expect("source"));
        let markers: Vec<&str> = API_USES
            .iter()
            .filter(|u| u.file == rel)
            .flat_map(|u| u.markers.iter().copied())
            .chain(
                NOT_THE_DAEMON
                    .iter()
                    .filter(|u| u.file == rel)
                    .flat_map(|u| u.markers.iter().copied()),
            )
            .collect();
        for u in NOT_THE_DAEMON {
            for at in occurrences(&code, u.call) {
                let caller = enclosing_fn(&code, at);
                assert!(
                    u.callers.iter().any(|(f, name)| *f == rel && *name == caller),
                    "{rel}: fn {caller} calls `{}`, whose API calls ({}) the daemon's ClusterRole does not grant",
                    u.call,
                    u.file
                );
            }
        }
        for token in API_ENTRY_POINTS {
            for at in occurrences(&code, token) {
                let line = line_at(&code, at);
                assert!(
                    markers.iter().any(|mk| line.contains(mk)),
                    "{rel}: a Kubernetes API call that the ClusterRole may not cover: `{}`; add it to API_USES (with its verbs) and to deploy/rbac.yaml",
                    line.trim()
                );
            }
        }
        // An `Api` value is only handed to the watcher or the Recorder, never called directly.
        for at in occurrences(&code, ": Api<") {
            let before = code[..at].trim_end_matches(' ');
            let name: String = before
                .chars()
                .rev()
                .take_while(|c| is_ident(*c))
                .collect::<String>()
                .chars()
                .rev()
                .collect();
            if name.is_empty() {
                continue;
            }
            if let Some(&call) = occurrences(&code, &format!("{name}.")).first() {
                panic!(
                    "{rel}: direct call on the Api `{name}`: `{}`; add its verb to API_USES and deploy/rbac.yaml",
                    line_at(&code, call).trim()
                );
            }
        }
    }

    for u in NOT_THE_DAEMON {
        let code = non_test_code(&read(u.file));
        for marker in u.markers {
            assert!(
                code.contains(marker),
                "{}: `{marker}` is gone: update NOT_THE_DAEMON",
                u.file
            );
        }
    }
    let daemon_rs = non_test_code(&read("oomtrace/src/daemon.rs"));
    assert!(
        !daemon_rs.contains("watch::run") && !daemon_rs.contains("cluster::"),
        "the daemon reaches a client-only command"
    );

    let role = &m.roles[0];
    let mut granted: BTreeSet<(String, String, String)> = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "unexpected rule {rule:?}"
        );
        for g in rule.api_groups.iter().flatten() {
            for r in rule.resources.iter().flatten() {
                for v in &rule.verbs {
                    assert!(
                        granted.insert((g.clone(), r.clone(), v.clone())),
                        "({g:?}, {r}, {v}) is granted twice"
                    );
                }
            }
        }
    }
    assert!(role.aggregation_rule.is_none());
    assert_eq!(
        granted, needed,
        "deploy/rbac.yaml ClusterRole rules vs the API calls the code makes"
    );
    assert!(
        !granted.iter().any(|(_, r, v)| r == "pods" && v == "get"),
        "the code never GETs a Pod"
    );

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

/// The capabilities `check_privileges` requires (without `CAP_`).
fn required_capabilities() -> BTreeSet<String> {
    let tracer = read("oomtrace/src/tracer.rs");
    let start = tracer
        .find("pub fn check_privileges")
        .expect("tracer.rs: check_privileges");
    let body = &tracer[start..];
    let body = &body[..body.find("\n}\n").expect("end of check_privileges")];
    let caps: BTreeSet<String> = body
        .match_indices("missing.push(\"CAP_")
        .map(|(i, m)| {
            let rest = &body[i + m.len()..];
            rest[..rest.find('"').expect("closing quote")].to_string()
        })
        .collect();
    assert!(
        !caps.is_empty(),
        "no `missing.push(\"CAP_…\")` in check_privileges: update this test"
    );
    caps
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
fn the_daemonset_adds_exactly_the_capabilities_the_daemon_checks_for() {
    let m = load();
    let required = required_capabilities();
    assert_eq!(
        required,
        BTreeSet::from(["BPF".to_string(), "PERFMON".to_string()])
    );
    assert_eq!(
        added_capabilities(m.container()),
        required,
        "deploy/daemonset.yaml capabilities.add"
    );

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
        let mut expected = required.clone();
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
    assert!(parsed.k8s.kubeconfig.is_none(), "in-cluster config");
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
    let mut sources = Vec::new();
    rust_files(&root().join("oomtrace/src"), &mut sources);
    assert!(
        sources.iter().any(
            |f| non_test_code(&std::fs::read_to_string(f).expect("source"))
                .contains("std::env::var(\"NODE_NAME\")")
        ),
        "the daemon reads NODE_NAME"
    );

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
