//! A small Kubernetes API server for tests: real HTTP on 127.0.0.1, speaking the real
//! list/watch protocol for Pods, so that the real kube client (in this process or in the
//! oomtrace daemon) talks to it through a kubeconfig file.
//!
//! What it implements:
//!
//! * `GET /api/v1/pods` and `GET /api/v1/namespaces/{ns}/pods` — a `PodList` (items without
//!   `apiVersion`/`kind`, like the real server) whose `metadata.resourceVersion` is the
//!   current one, filtered by `fieldSelector` (`=`, `==`, `!=` on the fields the real server
//!   supports for pods, e.g. `spec.nodeName`) and `labelSelector` (`=`, `==`, `!=`, `in`,
//!   `notin`, `k`, `!k`). `limit`/`continue` are ignored (everything fits in one page, which a
//!   server is allowed to do).
//! * `GET /api/v1/namespaces/{ns}/pods/{name}`.
//! * The same paths with `watch=true` (or `watch=1`): a chunked stream of newline-delimited
//!   `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":{...}}`, starting after the
//!   `resourceVersion` given. Changes that make a pod enter or leave the selector are sent as
//!   `ADDED` / `DELETED`, like the real watch cache. `BOOKMARK`s are sent every
//!   [`bookmark interval`](ApiServer::set_bookmark_interval) when `allowWatchBookmarks=true`;
//!   `timeoutSeconds` ends the stream. A `resourceVersion` older than the retained history
//!   (bounded, see [`ApiServer::set_history_limit`] and [`ApiServer::compact_history`]) gets
//!   what the real server sends: HTTP 200, then one `ERROR` event holding a `Status` with
//!   code 410, reason `Expired`. `resourceVersion` unset or `"0"` starts with synthetic
//!   `ADDED` events for the current pods; `sendInitialEvents=true` (streaming lists) is
//!   supported too and ends the initial events with a bookmark annotated
//!   `k8s.io/initial-events-end: "true"`.
//! * Events, in both APIs over one store (each object converted to the API it is read
//!   through, e.g. `regarding` <-> `involvedObject`, `note` <-> `message`,
//!   `reportingController` <-> `reportingComponent`):
//!   * `POST /api/v1/namespaces/{ns}/events` and
//!     `/apis/events.k8s.io/v1/namespaces/{ns}/events` (201, the object echoed with
//!     `metadata.name` (from `generateName` if need be), `namespace`, `uid`,
//!     `resourceVersion`, `creationTimestamp` filled in; 409 if the name exists) and
//!     `PATCH .../events/{name}` (JSON merge patch; 409 on a stale
//!     `metadata.resourceVersion` precondition). See [`ApiServer::events`].
//!   * `GET /apis/events.k8s.io/v1/events`, `/apis/events.k8s.io/v1/namespaces/{ns}/events`,
//!     `/api/v1/events`, `/api/v1/namespaces/{ns}/events` (an `EventList`), and
//!     `GET .../events/{name}`; with `watch=true`, the same watch protocol as pods (one
//!     resourceVersion counter and one change history for pods and events, so the 410
//!     behaviour is the same). `fieldSelector` takes the fields the real server supports:
//!     `metadata.name`, `metadata.namespace`, `reason`, `type`, and `regarding.*` +
//!     `reportingController` (events.k8s.io) or `involvedObject.*` + `reportingComponent` +
//!     `source` (core). Inject Events as if another node's daemon had published them with
//!     [`ApiServer::add_event`] / [`ApiServer::patch_event`] / [`ApiServer::delete_event`].
//! * Jobs, read only: `GET /apis/batch/v1/namespaces/{ns}/jobs/{name}` (404 when absent), for
//!   resolving a Job to its CronJob. Add them with [`ApiServer::add_job`].
//! * `GET /version`.
//!
//! kube 5's `watcher::Config::default()` uses `InitialListStrategy::ListWatch`: a LIST
//! (`limit=500`, no `resourceVersion`, i.e. most recent), then a WATCH from the list's
//! `resourceVersion` with `allowWatchBookmarks=true&timeoutSeconds=290`; a broken watch is
//! resumed from the last seen `resourceVersion`, and only an `ERROR` event with code 410 makes
//! it relist. (An HTTP-level 410 on the watch request would make it retry the same version
//! forever; the real server never does that, and neither does this one.)
//!
//! The server runs on its own thread with its own tokio runtime, so it can be used from both
//! plain `#[test]`s and `#[tokio::test]`s; all control methods are synchronous and quick.
//! [`ApiServer::stop`] drops that runtime, which cuts every connection (in-flight watches
//! included); [`ApiServer::restart`] binds the same port again. The pods and history survive
//! a restart, like etcd does (and so do the Events).

use std::{
    collections::{BTreeMap, VecDeque},
    convert::Infallible,
    net::SocketAddr,
    path::Path,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::{body::Frame, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::{
    api::core::v1::{
        Container, ContainerState, ContainerStateRunning, ContainerStatus, EphemeralContainer, Pod,
        PodSpec, PodStatus, ResourceRequirements,
    },
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::OwnerReference},
};
use serde_json::{json, Map, Value};

mod kubectl;

type Body = BoxBody<Bytes, Infallible>;

/// Fault injection, see [`ApiServer::set_mode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Behave.
    Normal,
    /// Answer every API request with `200 OK` and a body that is not JSON; open watches
    /// emit one garbage line and are closed.
    Garbage,
    /// Delay every response, and every event of open watches, by this much.
    Slow(Duration),
    /// Answer every API request with a `Status` of this HTTP code (e.g. 500, 403).
    Error(u16),
}

/// One request received by the server.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    /// The raw query string (still percent-encoded).
    pub query: String,
    /// The decoded query parameters, in order.
    pub params: Vec<(String, String)>,
    /// The `Accept` header.
    pub accept: Option<String>,
    pub at: Instant,
}

impl RequestRecord {
    /// The (first) value of a query parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A watch request (`watch=true` or `watch=1`).
    pub fn is_watch(&self) -> bool {
        matches!(self.param("watch"), Some("true" | "1"))
    }

    /// A request for pods (list, watch or get).
    pub fn is_pods(&self) -> bool {
        self.path == "/api/v1/pods"
            || (self.path.starts_with("/api/v1/namespaces/") && self.path.contains("/pods"))
    }

    /// A pod list (not a watch).
    pub fn is_pod_list(&self) -> bool {
        self.method == "GET" && self.is_pods() && !self.is_watch() && !self.path.contains("/pods/")
    }

    /// A pod watch.
    pub fn is_pod_watch(&self) -> bool {
        self.method == "GET" && self.is_pods() && self.is_watch()
    }

    /// A request for Events (either API; list, watch, get, create or patch).
    pub fn is_events(&self) -> bool {
        let p = self.path.as_str();
        (p.starts_with("/api/v1/") || p.starts_with("/apis/events.k8s.io/v1/"))
            && (p.ends_with("/events") || p.contains("/events/"))
    }

    /// An Event list (not a watch).
    pub fn is_event_list(&self) -> bool {
        self.method == "GET"
            && self.is_events()
            && !self.is_watch()
            && !self.path.contains("/events/")
    }

    /// An Event watch.
    pub fn is_event_watch(&self) -> bool {
        self.method == "GET" && self.is_events() && self.is_watch()
    }

    /// What RBAC must allow for this request, as `(API group, resource, verb)` (the
    /// authorizer's view of it); `None` for non-resource URLs (`/version`, discovery).
    pub fn rbac(&self) -> Option<(String, String, String)> {
        let segs: Vec<&str> = self.path.trim_matches('/').split('/').collect();
        let (group, rest) = match segs.as_slice() {
            ["api", _version, rest @ ..] => ("", rest),
            ["apis", group, _version, rest @ ..] => (*group, rest),
            _ => return None,
        };
        let rest = match rest {
            ["namespaces", _ns, rest @ ..] if !rest.is_empty() => rest,
            r => r,
        };
        let (resource, named) = match rest {
            [resource] => (*resource, false),
            [resource, _name, ..] => (*resource, true),
            _ => return None,
        };
        let verb = match (self.method.as_str(), named) {
            ("GET", true) => "get",
            ("GET", false) if self.is_watch() => "watch",
            ("GET", false) => "list",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", true) => "delete",
            ("DELETE", false) => "deletecollection",
            _ => return None,
        };
        Some((group.to_string(), resource.to_string(), verb.to_string()))
    }
}

/// The kinds of objects the server stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    Pods,
    Events,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Added,
    Modified,
    Deleted,
}

#[derive(Debug, Clone)]
struct HistoryEntry {
    rv: u64,
    resource: Resource,
    change: Change,
    /// The object before a modification.
    old: Option<Value>,
    /// The object after the change (the final state for a deletion).
    new: Value,
}

#[derive(Debug)]
struct State {
    rv: u64,
    pods: BTreeMap<(String, String), Value>,
    history: VecDeque<HistoryEntry>,
    history_limit: usize,
    /// Watches from a resourceVersion below this get 410 Gone: all changes after this
    /// version are in `history`.
    compacted_rv: u64,
    mode: Mode,
    bookmark_interval: Duration,
    watch_generation: u64,
    requests: Vec<RequestRecord>,
    events: Vec<Value>,
    event_store: BTreeMap<(String, String), Value>,
    jobs: BTreeMap<(String, String), Value>,
    uid_counter: u64,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Bumped on every change watches must look at (pods, mode, closing watches).
    changed: tokio::sync::watch::Sender<u64>,
    active_watches: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|v| *v += 1);
    }
}

struct Runner {
    shutdown: tokio::sync::oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

/// The test API server. Stopped when dropped.
pub struct ApiServer {
    shared: Arc<Shared>,
    port: u16,
    runner: Mutex<Option<Runner>>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("url", &self.url())
            .field("running", &self.is_running())
            .finish()
    }
}

impl ApiServer {
    /// Starts a server on 127.0.0.1 with an ephemeral port.
    pub fn start() -> ApiServer {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rv: 1,
                pods: BTreeMap::new(),
                history: VecDeque::new(),
                history_limit: 1000,
                compacted_rv: 1,
                mode: Mode::Normal,
                bookmark_interval: Duration::from_secs(1),
                watch_generation: 0,
                requests: Vec::new(),
                events: Vec::new(),
                event_store: BTreeMap::new(),
                jobs: BTreeMap::new(),
                uid_counter: 0,
            }),
            changed: tokio::sync::watch::channel(0).0,
            active_watches: AtomicUsize::new(0),
        });
        let (runner, port) = spawn_server(shared.clone(), 0).expect("starting the test API server");
        ApiServer {
            shared,
            port,
            runner: Mutex::new(Some(runner)),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A kubeconfig for this server (cluster, user with a dummy token, context,
    /// current-context).
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: oomtrace-test\n  cluster:\n    server: {url}\n\
             users:\n\
             - name: oomtrace-test\n  user:\n    token: oomtrace-test-dummy-token\n\
             contexts:\n\
             - name: oomtrace-test\n  context:\n    cluster: oomtrace-test\n    user: oomtrace-test\n    namespace: default\n\
             current-context: oomtrace-test\n\
             preferences: {{}}\n",
            url = self.url()
        )
    }

    /// Writes [`kubeconfig_yaml`](Self::kubeconfig_yaml) to `path`.
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())
    }

    pub fn is_running(&self) -> bool {
        self.runner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Stops serving: closes the listening socket and every connection (in-flight watches
    /// are cut). State is kept. No-op when stopped.
    pub fn stop(&self) {
        let runner = self.runner.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(runner) = runner {
            let _ = runner.shutdown.send(());
            let _ = runner.thread.join();
        }
    }

    /// Starts serving again on the same port (stops first if running).
    pub fn restart(&self) {
        self.stop();
        let mut last_err = None;
        for _ in 0..50 {
            match spawn_server(self.shared.clone(), self.port) {
                Ok((runner, _)) => {
                    *self.runner.lock().unwrap_or_else(|e| e.into_inner()) = Some(runner);
                    return;
                }
                Err(e) => {
                    last_err = Some(e);
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        panic!(
            "restarting the test API server on port {}: {last_err:?}",
            self.port
        );
    }

    /// Sets the fault-injection mode.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.lock().mode = mode;
        self.shared.notify();
    }

    /// How often watches that asked for bookmarks get one (default 1 s).
    pub fn set_bookmark_interval(&self, every: Duration) {
        self.shared.lock().bookmark_interval = every;
    }

    /// How many changes are retained for watches (default 1000).
    pub fn set_history_limit(&self, limit: usize) {
        let mut st = self.shared.lock();
        st.history_limit = limit.max(1);
        trim_history(&mut st);
    }

    /// Forgets the change history: a watch from any resourceVersion older than the current
    /// one gets `410 Gone` (as after an etcd compaction). A client that is up to date is not
    /// affected.
    pub fn compact_history(&self) {
        let mut st = self.shared.lock();
        st.history.clear();
        st.compacted_rv = st.rv;
        drop(st);
        self.shared.notify();
    }

    /// Ends every open watch stream cleanly (as the server-side watch timeout does).
    pub fn close_watches(&self) {
        self.shared.lock().watch_generation += 1;
        self.shared.notify();
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Number of watch streams currently open.
    pub fn active_watches(&self) -> usize {
        self.shared.active_watches.load(Ordering::SeqCst)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().requests.clone()
    }

    /// Every Event object POSTed or PATCHed over HTTP, in order, as returned to the client
    /// (for a PATCH: the merged object). Events injected with [`add_event`](Self::add_event)
    /// and [`patch_event`](Self::patch_event) are not in it; see
    /// [`stored_events`](Self::stored_events) for the current objects.
    pub fn events(&self) -> Vec<Value> {
        self.shared.lock().events.clone()
    }

    /// The current Event objects (however they were made), each in the API version it was
    /// created through, ordered by namespace and name.
    pub fn stored_events(&self) -> Vec<Value> {
        self.shared.lock().event_store.values().cloned().collect()
    }

    /// Stores an Event as if another client (e.g. another node's daemon) had created it: an
    /// `events.k8s.io/v1` Event (a `k8s_openapi` `Event` of either API, or a
    /// `serde_json::Value`; without `apiVersion`, `events.k8s.io/v1`). Watches see `ADDED`;
    /// if one with the same namespace/name exists, it is replaced (`MODIFIED`, keeping its
    /// UID and creationTimestamp). Fills in `kind`, `metadata.namespace` (default
    /// `"default"`), `metadata.name` (from `generateName`, else `event-xxxxx`), `metadata.uid`,
    /// `metadata.creationTimestamp` (unless given: set it to fake an older Event) and
    /// `metadata.resourceVersion`. Not recorded in [`events`](Self::events). Returns the
    /// stored object.
    pub fn add_event(&self, event: impl serde::Serialize) -> Value {
        let mut event = serde_json::to_value(event).expect("serializing the Event");
        assert!(event.is_object(), "an Event must be a JSON object");
        if event["apiVersion"].as_str().is_none_or(str::is_empty) {
            event["apiVersion"] = json!(EVENTS_V1);
        }
        let (ns, name) = event_key(&event);
        let mut st = self.shared.lock();
        let old = (!name.is_empty())
            .then(|| st.event_store.get(&(ns.clone(), name)).cloned())
            .flatten();
        let stored = store_event(&mut st, event, &ns, old.as_ref());
        drop(st);
        self.shared.notify();
        stored
    }

    /// Applies a JSON merge patch to a stored Event (in the API version it is stored in), as
    /// kube's `Recorder` does for a repeat (`{"series": {"count": 2, "lastObservedTime":
    /// ...}}`). Watches see `MODIFIED`. Not recorded in [`events`](Self::events). Returns
    /// the new object, or `None` (nothing changed) if there is no such Event.
    pub fn patch_event(&self, namespace: &str, name: &str, patch: Value) -> Option<Value> {
        let mut st = self.shared.lock();
        let old = st
            .event_store
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()?;
        let mut event = old.clone();
        merge_patch(&mut event, &patch);
        let stored = store_event(&mut st, event, namespace, Some(&old));
        drop(st);
        self.shared.notify();
        Some(stored)
    }

    /// Deletes an Event (as the API server's TTL does). Watches see `DELETED`. Returns its
    /// final state, or `None` if there was no such Event.
    pub fn delete_event(&self, namespace: &str, name: &str) -> Option<Value> {
        let mut st = self.shared.lock();
        let mut event = st
            .event_store
            .remove(&(namespace.to_string(), name.to_string()))?;
        st.rv += 1;
        let rv = st.rv;
        meta_mut(&mut event).insert("resourceVersion".into(), json!(rv.to_string()));
        st.history.push_back(HistoryEntry {
            rv,
            resource: Resource::Events,
            change: Change::Deleted,
            old: None,
            new: event.clone(),
        });
        trim_history(&mut st);
        drop(st);
        self.shared.notify();
        Some(event)
    }

    /// Adds a Job named `name`, owned (controller) by CronJob `cronjob` when given, as the
    /// CronJob controller makes them. Returns the stored object.
    pub fn add_job(&self, namespace: &str, name: &str, cronjob: Option<&str>) -> Value {
        let owners: Vec<Value> = cronjob
            .map(|c| {
                json!({"apiVersion": "batch/v1", "kind": "CronJob", "name": c, "controller": true,
                       "blockOwnerDeletion": true, "uid": format!("{:016x}", fnv64(format!("CronJob/{c}").as_bytes()))})
            })
            .into_iter()
            .collect();
        let mut st = self.shared.lock();
        let uid = new_uid(&mut st);
        st.rv += 1;
        let job = json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": namespace, "uid": uid, "ownerReferences": owners,
                         "resourceVersion": st.rv.to_string(), "creationTimestamp": now_rfc3339()},
            "spec": {"template": {"spec": {"containers": [], "restartPolicy": "Never"}}}
        });
        st.jobs.insert((namespace.to_string(), name.to_string()), job.clone());
        job
    }

    /// The current pods.
    pub fn pods(&self) -> Vec<Value> {
        self.shared.lock().pods.values().cloned().collect()
    }

    /// Adds a pod (a `k8s_openapi` `Pod` or a `serde_json::Value`). If one with the same
    /// namespace/name exists, it is replaced: a modification when the UID is the same (or the
    /// new object has none), else a deletion of the old pod and an addition of the new one
    /// (a recreated pod). Fills in `apiVersion`, `kind`, `metadata.uid` (if absent),
    /// `metadata.creationTimestamp` and `metadata.resourceVersion`. Returns the stored object.
    pub fn add_pod(&self, pod: impl serde::Serialize) -> Value {
        let pod = serde_json::to_value(pod).expect("serializing the pod");
        let (ns, name) = pod_key(&pod);
        let mut st = self.shared.lock();
        let mut old = st.pods.get(&(ns.clone(), name.clone())).cloned();
        let new_uid = pod["metadata"]["uid"].as_str().filter(|u| !u.is_empty());
        if let (Some(o), Some(new_uid)) = (&old, new_uid) {
            if o["metadata"]["uid"].as_str() != Some(new_uid) {
                remove_pod(&mut st, &ns, &name);
                old = None;
            }
        }
        let stored = store_pod(&mut st, pod, old.as_ref());
        drop(st);
        self.shared.notify();
        stored
    }

    /// Replaces an existing pod (a modification). Returns `None` (and changes nothing) if
    /// there is no such pod. A missing `metadata.uid` is taken from the existing pod.
    pub fn update_pod(&self, pod: impl serde::Serialize) -> Option<Value> {
        let pod = serde_json::to_value(pod).expect("serializing the pod");
        let (ns, name) = pod_key(&pod);
        let mut st = self.shared.lock();
        let old = st.pods.get(&(ns, name)).cloned()?;
        let stored = store_pod(&mut st, pod, Some(&old));
        drop(st);
        self.shared.notify();
        Some(stored)
    }

    /// Deletes a pod. Returns its final state (with `deletionTimestamp` and a new
    /// resourceVersion), or `None` if there was no such pod.
    pub fn delete_pod(&self, namespace: &str, name: &str) -> Option<Value> {
        let pod = remove_pod(&mut self.shared.lock(), namespace, name)?;
        self.shared.notify();
        Some(pod)
    }

    /// Waits (asynchronously, polling) until some request matches, at most `timeout`.
    pub async fn wait_for_request(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&RequestRecord) -> bool,
    ) -> Option<RequestRecord> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.shared.lock().requests.iter().find(|r| pred(r)) {
                return Some(r.clone());
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits (asynchronously, polling) until at least `n` watches are open.
    pub async fn wait_for_watches(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.active_watches() < n {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn remove_pod(st: &mut State, namespace: &str, name: &str) -> Option<Value> {
    let mut pod = st.pods.remove(&(namespace.to_string(), name.to_string()))?;
    st.rv += 1;
    let rv = st.rv;
    let meta = meta_mut(&mut pod);
    meta.insert("resourceVersion".into(), json!(rv.to_string()));
    meta.entry("deletionTimestamp")
        .or_insert_with(|| json!(now_rfc3339()));
    meta.entry("deletionGracePeriodSeconds").or_insert(json!(0));
    st.history.push_back(HistoryEntry {
        rv,
        resource: Resource::Pods,
        change: Change::Deleted,
        old: None,
        new: pod.clone(),
    });
    trim_history(st);
    Some(pod)
}

fn pod_key(pod: &Value) -> (String, String) {
    let meta = &pod["metadata"];
    let ns = meta["namespace"].as_str().unwrap_or("default").to_string();
    let name = meta["name"]
        .as_str()
        .expect("a pod needs metadata.name")
        .to_string();
    (ns, name)
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    let map = obj.as_object_mut().expect("object");
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    meta.as_object_mut().expect("object")
}

fn new_uid(st: &mut State) -> String {
    st.uid_counter += 1;
    let n = st.uid_counter;
    let h = fnv64(format!("uid-{n}-{:?}", std::thread::current().id()).as_bytes());
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (h >> 32) as u32,
        (h >> 16) as u16,
        h & 0xfff,
        n & 0xfff,
        n
    )
}

fn store_pod(st: &mut State, mut pod: Value, old: Option<&Value>) -> Value {
    let (ns, name) = pod_key(&pod);
    if let Some(map) = pod.as_object_mut() {
        map.insert("apiVersion".into(), json!("v1"));
        map.insert("kind".into(), json!("Pod"));
    }
    let old_uid = old.and_then(|o| o["metadata"]["uid"].as_str().map(str::to_string));
    let old_created = old.and_then(|o| {
        o["metadata"]["creationTimestamp"]
            .as_str()
            .map(str::to_string)
    });
    let fresh_uid = new_uid(st);
    st.rv += 1;
    let rv = st.rv;
    let meta = meta_mut(&mut pod);
    meta.insert("namespace".into(), json!(ns));
    if meta
        .get("uid")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        meta.insert("uid".into(), json!(old_uid.unwrap_or(fresh_uid)));
    }
    if meta
        .get("creationTimestamp")
        .and_then(Value::as_str)
        .is_none()
    {
        meta.insert(
            "creationTimestamp".into(),
            json!(old_created.unwrap_or_else(now_rfc3339)),
        );
    }
    meta.insert("resourceVersion".into(), json!(rv.to_string()));
    st.pods.insert((ns, name), pod.clone());
    record_upsert(st, rv, Resource::Pods, old, &pod);
    pod
}

/// Appends an ADDED (no `old`) or MODIFIED change to the watch history.
fn record_upsert(st: &mut State, rv: u64, resource: Resource, old: Option<&Value>, new: &Value) {
    st.history.push_back(HistoryEntry {
        rv,
        resource,
        change: if old.is_some() { Change::Modified } else { Change::Added },
        old: old.cloned(),
        new: new.clone(),
    });
    trim_history(st);
}

fn trim_history(st: &mut State) {
    while st.history.len() > st.history_limit {
        if let Some(e) = st.history.pop_front() {
            st.compacted_rv = st.compacted_rv.max(e.rv);
        }
    }
}

const EVENTS_V1: &str = "events.k8s.io/v1";

/// Fields that differ between the two Event APIs: `(events.k8s.io/v1, core v1)`.
const EVENT_FIELD_NAMES: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

/// An Event as API version `to` (`"v1"` or `"events.k8s.io/v1"`) serves it.
fn convert_event(event: &Value, to: &str) -> Value {
    let mut out = event.clone();
    let Some(map) = out.as_object_mut() else {
        return out;
    };
    let from = map
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or(to)
        .to_string();
    if from != to {
        for (v1, core) in EVENT_FIELD_NAMES {
            let (src, dst) = if to == "v1" { (v1, core) } else { (core, v1) };
            if let Some(v) = map.remove(*src) {
                map.insert(dst.to_string(), v);
            }
        }
    }
    map.insert("apiVersion".into(), json!(to));
    map.insert("kind".into(), json!("Event"));
    out
}

/// `(namespace or "default", name or "")`.
fn event_key(event: &Value) -> (String, String) {
    let meta = &event["metadata"];
    let ns = meta["namespace"]
        .as_str()
        .filter(|n| !n.is_empty())
        .unwrap_or("default");
    let name = meta["name"].as_str().unwrap_or("");
    (ns.to_string(), name.to_string())
}

/// Fills in and stores an Event in namespace `ns` (a creation when `old` is `None`, else a
/// modification of `old`), and records the change. Returns the stored object.
fn store_event(st: &mut State, mut event: Value, ns: &str, old: Option<&Value>) -> Value {
    let fresh_uid = new_uid(st);
    st.rv += 1;
    let rv = st.rv;
    if let Some(map) = event.as_object_mut() {
        map.entry("apiVersion").or_insert_with(|| json!(EVENTS_V1));
        map.insert("kind".into(), json!("Event"));
    }
    let meta = meta_mut(&mut event);
    let name = match (
        old.and_then(|o| o["metadata"]["name"].as_str()),
        meta.get("name").and_then(Value::as_str),
    ) {
        (Some(n), _) => n.to_string(),
        (None, Some(n)) if !n.is_empty() => n.to_string(),
        _ => {
            let base = meta
                .get("generateName")
                .and_then(Value::as_str)
                .unwrap_or("event-")
                .to_string();
            format!("{base}{:05x}", fnv64(fresh_uid.as_bytes()) & 0xfffff)
        }
    };
    meta.insert("name".into(), json!(name));
    meta.insert("namespace".into(), json!(ns));
    // uid and creationTimestamp: kept from the stored object, else the client's (a non-empty
    // uid, any timestamp), else made here.
    let mut keep_or_set = |field: &str, accept_empty: bool, fresh: String| {
        let value = old
            .and_then(|o| o["metadata"][field].as_str().map(str::to_string))
            .or_else(|| meta.get(field).and_then(Value::as_str).filter(|v| accept_empty || !v.is_empty()).map(str::to_string))
            .unwrap_or(fresh);
        meta.insert(field.into(), json!(value));
    };
    keep_or_set("uid", false, fresh_uid.clone());
    keep_or_set("creationTimestamp", true, now_rfc3339());
    meta.insert("resourceVersion".into(), json!(rv.to_string()));
    st.event_store.insert((ns.to_string(), name), event.clone());
    record_upsert(st, rv, Resource::Events, old, &event);
    event
}

// ---------------------------------------------------------------------------------------------
// Serving
// ---------------------------------------------------------------------------------------------

fn spawn_server(shared: Arc<Shared>, port: u16) -> std::io::Result<(Runner, u16)> {
    let std_listener = bind_listener(port)?;
    let port = std_listener.local_addr()?.port();
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(format!("test-apiserver-{port}"))
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("test API server runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
                let accept = async {
                    loop {
                        let Ok((stream, peer)) = listener.accept().await else {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            continue;
                        };
                        let shared = shared.clone();
                        tokio::spawn(serve_connection(shared, stream, peer));
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = shutdown_rx => {}
                }
            });
            // Dropping the runtime cancels every connection task and closes its socket.
            drop(rt);
        })?;
    Ok((
        Runner {
            shutdown: shutdown_tx,
            thread,
        },
        port,
    ))
}

/// A non-blocking listening socket on 127.0.0.1:`port`. (std sets SO_REUSEADDR on Unix, so a
/// restart can bind the same port while old connections are in TIME_WAIT.)
fn bind_listener(port: u16) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

async fn serve_connection(shared: Arc<Shared>, stream: tokio::net::TcpStream, _peer: SocketAddr) {
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(shared, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(body.into()).boxed())
        .expect("response")
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    full(status, serde_json::to_vec(value).expect("json"))
}

fn status_object(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn status_response(code: u16, reason: &str, message: &str) -> Response<Body> {
    json_response(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &status_object(code, reason, message),
    )
}

fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Expired",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

const GARBAGE: &str = "<html>this is not JSON {{{ \u{fffd} ]]\n";

async fn handle(shared: Arc<Shared>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let params = parse_query(&query);
    let record = RequestRecord {
        method: method.to_string(),
        path: path.clone(),
        query,
        params,
        accept: req.headers().get("accept").and_then(|a| a.to_str().ok()).map(str::to_string),
        at: Instant::now(),
    };
    let mode = {
        let mut st = shared.lock();
        st.requests.push(record.clone());
        st.mode
    };
    match mode {
        Mode::Normal => {}
        Mode::Slow(d) => tokio::time::sleep(d).await,
        Mode::Garbage => return full(StatusCode::OK, GARBAGE),
        Mode::Error(code) => {
            return status_response(code, reason_for(code), "injected failure (test API server)")
        }
    }

    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    // The API an Event request goes through.
    let events_api = if segments.first() == Some(&"api") {
        "v1"
    } else {
        EVENTS_V1
    };
    match (&method, segments.as_slice()) {
        (&Method::GET, ["api"]) => json_response(StatusCode::OK, &kubectl::core_versions()),
        (&Method::GET, ["apis"]) => json_response(StatusCode::OK, &kubectl::groups()),
        (&Method::GET, ["api", "v1"]) | (&Method::GET, ["apis", "events.k8s.io", "v1"]) => {
            match kubectl::resources(events_api) {
                Some(list) => json_response(StatusCode::OK, &list),
                None => status_response(404, "NotFound", "no such group version"),
            }
        }
        (&Method::GET, ["version"]) => json_response(
            StatusCode::OK,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-oomtrace-test", "platform": "linux/amd64"}),
        ),
        (&Method::GET, ["api", "v1", "pods"]) => pods_collection(&shared, None, &record).await,
        (&Method::GET, ["api", "v1", "namespaces", ns, "pods"]) => {
            pods_collection(&shared, Some(ns), &record).await
        }
        (&Method::GET, ["api", "v1", "namespaces", ns, "pods", name]) => {
            let pod = shared
                .lock()
                .pods
                .get(&(ns.to_string(), name.to_string()))
                .cloned();
            match pod {
                Some(pod) => json_response(StatusCode::OK, &pod),
                None => status_response(404, "NotFound", &format!("pods \"{name}\" not found")),
            }
        }
        (_, ["api", "v1", "pods"] | ["api", "v1", "namespaces", _, "pods", ..]) => status_response(
            405,
            "MethodNotAllowed",
            "the test API server only reads pods",
        ),
        (&Method::GET, ["apis", "batch", "v1", "namespaces", ns, "jobs", name]) => {
            let job = shared.lock().jobs.get(&(ns.to_string(), name.to_string())).cloned();
            match job {
                Some(job) => json_response(StatusCode::OK, &job),
                None => status_response(404, "NotFound", &format!("jobs.batch \"{name}\" not found")),
            }
        }
        (&Method::GET, ["api", "v1", "events"])
        | (&Method::GET, ["apis", "events.k8s.io", "v1", "events"]) => {
            collection(&shared, Collection::events(events_api), None, &record).await
        }
        (&Method::GET, ["api", "v1", "namespaces", ns, "events"])
        | (&Method::GET, ["apis", "events.k8s.io", "v1", "namespaces", ns, "events"]) => {
            collection(&shared, Collection::events(events_api), Some(ns), &record).await
        }
        (&Method::GET, ["api", "v1", "namespaces", ns, "events", name])
        | (&Method::GET, ["apis", "events.k8s.io", "v1", "namespaces", ns, "events", name]) => {
            let event = shared
                .lock()
                .event_store
                .get(&(ns.to_string(), name.to_string()))
                .map(|e| convert_event(e, events_api));
            match event {
                Some(event) => json_response(StatusCode::OK, &event),
                None => status_response(404, "NotFound", &format!("events \"{name}\" not found")),
            }
        }
        (&Method::POST, ["api", "v1", "namespaces", ns, "events"])
        | (&Method::POST, ["apis", "events.k8s.io", "v1", "namespaces", ns, "events"]) => {
            let ns = ns.to_string();
            let body = read_json(req).await;
            http_create_event(&shared, &ns, events_api, body)
        }
        (&Method::PATCH, ["api", "v1", "namespaces", ns, "events", name])
        | (&Method::PATCH, ["apis", "events.k8s.io", "v1", "namespaces", ns, "events", name]) => {
            let (ns, name) = (ns.to_string(), name.to_string());
            let body = read_json(req).await;
            http_patch_event(&shared, &ns, &name, events_api, body)
        }
        (
            _,
            ["api", "v1", "events"]
            | ["apis", "events.k8s.io", "v1", "events"]
            | ["api", "v1", "namespaces", _, "events", ..]
            | ["apis", "events.k8s.io", "v1", "namespaces", _, "events", ..],
        ) => status_response(
            405,
            "MethodNotAllowed",
            "the test API server only lists, watches, gets, creates and patches events",
        ),
        _ => status_response(
            404,
            "NotFound",
            &format!("the server could not find the requested resource ({method} {path})"),
        ),
    }
}

async fn read_json(req: Request<hyper::body::Incoming>) -> Result<Value, String> {
    let bytes = req
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

fn http_create_event(
    shared: &Shared,
    ns: &str,
    api_version: &str,
    body: Result<Value, String>,
) -> Response<Body> {
    let mut event = match body {
        Ok(v) if v.is_object() => v,
        Ok(_) => return status_response(400, "BadRequest", "an Event must be a JSON object"),
        Err(e) => return status_response(400, "BadRequest", &format!("invalid JSON: {e}")),
    };
    // The body is in the version of the API it is sent to.
    event["apiVersion"] = json!(api_version);
    let (_, name) = event_key(&event);
    let mut st = shared.lock();
    if !name.is_empty() && st.event_store.contains_key(&(ns.to_string(), name.clone())) {
        return status_response(
            409,
            "AlreadyExists",
            &format!("events \"{name}\" already exists"),
        );
    }
    let stored = store_event(&mut st, event, ns, None);
    st.events.push(stored.clone());
    drop(st);
    shared.notify();
    json_response(StatusCode::CREATED, &stored)
}

fn http_patch_event(
    shared: &Shared,
    ns: &str,
    name: &str,
    api_version: &str,
    body: Result<Value, String>,
) -> Response<Body> {
    let patch = match body {
        Ok(v) => v,
        Err(e) => return status_response(400, "BadRequest", &format!("invalid JSON: {e}")),
    };
    let mut st = shared.lock();
    let Some(old) = st
        .event_store
        .get(&(ns.to_string(), name.to_string()))
        .cloned()
    else {
        return status_response(404, "NotFound", &format!("events \"{name}\" not found"));
    };
    // A resourceVersion in the patch is a precondition.
    if let Some(want) = patch["metadata"]["resourceVersion"].as_str() {
        let have = old["metadata"]["resourceVersion"].as_str().unwrap_or("");
        if want != have {
            return status_response(
                409,
                "Conflict",
                &format!(
                    "Operation cannot be fulfilled on events \"{name}\": the object has been \
                     modified; please apply your changes to the latest version and try again"
                ),
            );
        }
    }
    // The patch applies to the object as this API serves it.
    let mut event = convert_event(&old, api_version);
    merge_patch(&mut event, &patch);
    event["apiVersion"] = json!(api_version);
    let stored = store_event(&mut st, event, ns, Some(&old));
    st.events.push(stored.clone());
    drop(st);
    shared.notify();
    json_response(StatusCode::OK, &stored)
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let map = target.as_object_mut().expect("object");
    for (k, v) in patch {
        if v.is_null() {
            map.remove(k);
        } else {
            merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pods: list and watch
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Filter {
    namespace: Option<String>,
    fields: Vec<(String, bool, String)>,
    labels: Vec<LabelReq>,
}

#[derive(Debug, Clone)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

const POD_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];

/// The fields the real server selects core v1 Events on.
const CORE_EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
    "metadata.namespace",
    "metadata.name",
];

/// The fields the real server selects events.k8s.io/v1 Events on.
const EVENTS_V1_FIELDS: &[&str] = &[
    "regarding.kind",
    "regarding.namespace",
    "regarding.name",
    "regarding.uid",
    "regarding.apiVersion",
    "regarding.resourceVersion",
    "regarding.fieldPath",
    "reason",
    "reportingController",
    "type",
    "metadata.namespace",
    "metadata.name",
];

/// A field selector for pods.
#[cfg(test)]
fn parse_field_selector(s: &str) -> Result<Vec<(String, bool, String)>, String> {
    parse_fields(s, POD_FIELDS)
}

fn parse_fields(s: &str, supported: &[&str]) -> Result<Vec<(String, bool, String)>, String> {
    let mut out = Vec::new();
    for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (key, eq, value) = if let Some((k, v)) = term.split_once("!=") {
            (k, false, v)
        } else if let Some((k, v)) = term.split_once("==") {
            (k, true, v)
        } else if let Some((k, v)) = term.split_once('=') {
            (k, true, v)
        } else {
            return Err(format!("invalid field selector term {term:?}"));
        };
        let key = key.trim();
        if !supported.contains(&key) {
            return Err(format!("field label not supported: {key}"));
        }
        out.push((key.to_string(), eq, value.trim().to_string()));
    }
    Ok(out)
}

fn split_top_level(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out.into_iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

fn parse_label_selector(s: &str) -> Result<Vec<LabelReq>, String> {
    let mut out = Vec::new();
    for term in split_top_level(s) {
        let set = |rest: &str| -> Result<Vec<String>, String> {
            let inner = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| format!("invalid set in label selector term {term:?}"))?;
            Ok(inner
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect())
        };
        let req = if let Some(k) = term.strip_prefix('!') {
            LabelReq::NotExists(k.trim().to_string())
        } else if let Some((k, v)) = term.split_once("!=") {
            LabelReq::NotEq(k.trim().to_string(), v.trim().to_string())
        } else if let Some((k, v)) = term.split_once("==") {
            LabelReq::Eq(k.trim().to_string(), v.trim().to_string())
        } else if let Some((k, v)) = term.split_once('=') {
            LabelReq::Eq(k.trim().to_string(), v.trim().to_string())
        } else if let Some((k, rest)) = term.split_once(" notin ") {
            LabelReq::NotIn(k.trim().to_string(), set(rest)?)
        } else if let Some((k, rest)) = term.split_once(" in ") {
            LabelReq::In(k.trim().to_string(), set(rest)?)
        } else if term
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        {
            LabelReq::Exists(term.clone())
        } else {
            return Err(format!("unable to parse label selector term {term:?}"));
        };
        out.push(req);
    }
    Ok(out)
}

fn field_value(pod: &Value, path: &str) -> String {
    // The core Event field `source` selects on `source.component`.
    let path = if path == "source" {
        "source.component"
    } else {
        path
    };
    let mut v = pod;
    for part in path.split('.') {
        v = &v[part];
    }
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Filter {
    fn matches(&self, pod: &Value) -> bool {
        if let Some(ns) = &self.namespace {
            if pod["metadata"]["namespace"].as_str() != Some(ns.as_str()) {
                return false;
            }
        }
        for (key, eq, value) in &self.fields {
            if (field_value(pod, key) == *value) != *eq {
                return false;
            }
        }
        let labels = &pod["metadata"]["labels"];
        let label = |k: &str| labels[k].as_str();
        self.labels.iter().all(|req| match req {
            LabelReq::Eq(k, v) => label(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => label(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::NotIn(k, vs) => label(k).is_none_or(|l| !vs.iter().any(|v| v == l)),
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
        })
    }
}

/// A collection as one API serves it.
#[derive(Debug, Clone, Copy)]
struct Collection {
    resource: Resource,
    /// The API version objects are served in (`v1`, `events.k8s.io/v1`).
    api_version: &'static str,
}

impl Collection {
    const PODS: Collection = Collection {
        resource: Resource::Pods,
        api_version: "v1",
    };

    fn events(api_version: &'static str) -> Self {
        Collection {
            resource: Resource::Events,
            api_version,
        }
    }

    fn kind(&self) -> &'static str {
        match self.resource {
            Resource::Pods => "Pod",
            Resource::Events => "Event",
        }
    }

    fn fields(&self) -> &'static [&'static str] {
        match (self.resource, self.api_version) {
            (Resource::Pods, _) => POD_FIELDS,
            (Resource::Events, "v1") => CORE_EVENT_FIELDS,
            (Resource::Events, _) => EVENTS_V1_FIELDS,
        }
    }

    /// A stored object as this API serves it.
    fn view(&self, obj: &Value) -> Value {
        match self.resource {
            Resource::Pods => obj.clone(),
            Resource::Events => convert_event(obj, self.api_version),
        }
    }

    /// The current objects, as served.
    fn current(&self, st: &State) -> Vec<Value> {
        match self.resource {
            Resource::Pods => st.pods.values().cloned().collect(),
            Resource::Events => st.event_store.values().map(|e| self.view(e)).collect(),
        }
    }

    /// The watch event a history entry produces for this collection and filter, if any.
    fn translate(&self, entry: &HistoryEntry, filter: &Filter) -> Option<(&'static str, Value)> {
        if entry.resource != self.resource {
            return None;
        }
        match self.resource {
            Resource::Pods => translate(entry, filter),
            Resource::Events => translate(
                &HistoryEntry {
                    old: entry.old.as_ref().map(|o| self.view(o)),
                    new: self.view(&entry.new),
                    ..entry.clone()
                },
                filter,
            ),
        }
    }
}

async fn pods_collection(
    shared: &Arc<Shared>,
    namespace: Option<&str>,
    req: &RequestRecord,
) -> Response<Body> {
    collection(shared, Collection::PODS, namespace, req).await
}

async fn collection(
    shared: &Arc<Shared>,
    coll: Collection,
    namespace: Option<&str>,
    req: &RequestRecord,
) -> Response<Body> {
    let fields = match parse_fields(req.param("fieldSelector").unwrap_or(""), coll.fields()) {
        Ok(f) => f,
        Err(e) => return status_response(400, "BadRequest", &e),
    };
    let labels = match parse_label_selector(req.param("labelSelector").unwrap_or("")) {
        Ok(l) => l,
        Err(e) => return status_response(400, "BadRequest", &e),
    };
    let filter = Filter {
        namespace: namespace.map(str::to_string),
        fields,
        labels,
    };
    if req.is_watch() {
        return watch(shared.clone(), coll, filter, req);
    }
    let st = shared.lock();
    let items: Vec<Value> = coll
        .current(&st)
        .into_iter()
        .filter(|p| filter.matches(p))
        .map(|mut p| {
            // Like the real server: list items have no apiVersion/kind.
            if let Some(m) = p.as_object_mut() {
                m.remove("apiVersion");
                m.remove("kind");
            }
            p
        })
        .collect();
    let list = json!({
        "apiVersion": coll.api_version,
        "kind": format!("{}List", coll.kind()),
        "metadata": {"resourceVersion": st.rv.to_string()},
        "items": items,
    });
    drop(st);
    // `kubectl get events` prints the server's Table (the core v1 view's columns).
    if coll.resource == Resource::Events && coll.api_version == "v1" && kubectl::wants_table(req.accept.as_deref()) {
        return json_response(StatusCode::OK, &kubectl::event_table(&list));
    }
    json_response(StatusCode::OK, &list)
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).expect("json");
    line.push(b'\n');
    Bytes::from(line)
}

fn bookmark_line(coll: Collection, rv: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        &json!({"kind": coll.kind(), "apiVersion": coll.api_version, "metadata": metadata}),
    )
}

fn with_rv(obj: &Value, rv: u64) -> Value {
    let mut obj = obj.clone();
    meta_mut(&mut obj).insert("resourceVersion".into(), json!(rv.to_string()));
    obj
}

/// The watch event (type, object) a history entry produces for a filter, if any.
fn translate(entry: &HistoryEntry, filter: &Filter) -> Option<(&'static str, Value)> {
    let new_m = filter.matches(&entry.new);
    match entry.change {
        Change::Added => new_m.then(|| ("ADDED", entry.new.clone())),
        Change::Deleted => new_m.then(|| ("DELETED", entry.new.clone())),
        Change::Modified => {
            let old_m = entry.old.as_ref().is_some_and(|o| filter.matches(o));
            match (old_m, new_m) {
                (true, true) => Some(("MODIFIED", entry.new.clone())),
                (false, true) => Some(("ADDED", entry.new.clone())),
                // Left the selector: the previous state, at the new version.
                (true, false) => Some(("DELETED", with_rv(entry.old.as_ref()?, entry.rv))),
                (false, false) => None,
            }
        }
    }
}

struct WatchGuard(Arc<Shared>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.active_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

fn watch(
    shared: Arc<Shared>,
    coll: Collection,
    filter: Filter,
    req: &RequestRecord,
) -> Response<Body> {
    let rv_param = req.param("resourceVersion").unwrap_or("").to_string();
    let bookmarks = matches!(req.param("allowWatchBookmarks"), Some("true" | "1"));
    let send_initial = matches!(req.param("sendInitialEvents"), Some("true" | "1"));
    let timeout = req
        .param("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    let start: Option<u64> = match rv_param.as_str() {
        "" | "0" => None,
        s => match s.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                return status_response(
                    400,
                    "BadRequest",
                    &format!("invalid resource version: {s}"),
                )
            }
        },
    };

    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    shared.active_watches.fetch_add(1, Ordering::SeqCst);
    let guard = WatchGuard(shared.clone());
    tokio::spawn(async move {
        let _guard = guard;
        let opts = WatchOptions {
            start,
            send_initial,
            bookmarks,
            timeout,
        };
        watch_task(shared, coll, filter, opts, tx).await;
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(StreamBody::new(stream).boxed())
        .expect("response")
}

struct WatchOptions {
    /// The resourceVersion to start after (`None`: the current state first).
    start: Option<u64>,
    send_initial: bool,
    bookmarks: bool,
    timeout: Option<Duration>,
}

async fn watch_task(
    shared: Arc<Shared>,
    coll: Collection,
    filter: Filter,
    opts: WatchOptions,
    tx: tokio::sync::mpsc::Sender<Bytes>,
) {
    let WatchOptions {
        start,
        send_initial,
        bookmarks,
        timeout,
    } = opts;
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut changed = shared.changed.subscribe();
    changed.borrow_and_update();

    // Where the stream starts.
    enum Start {
        Expired(String),
        From(u64),
        Initial(Vec<Bytes>, u64),
    }
    let (start, generation, bookmark_every) = {
        let st = shared.lock();
        let start = match start {
            Some(n) if n < st.compacted_rv => Start::Expired(format!(
                "too old resource version: {n} ({})",
                st.compacted_rv
            )),
            Some(n) => Start::From(n.min(st.rv)),
            // Synthetic ADDED events for the current state.
            None => Start::Initial(
                coll.current(&st)
                    .iter()
                    .filter(|p| filter.matches(p))
                    .map(|p| event_line("ADDED", p))
                    .collect(),
                st.rv,
            ),
        };
        (start, st.watch_generation, st.bookmark_interval)
    };
    let mut cursor = match start {
        Start::Expired(msg) => {
            let _ = tx
                .send(event_line("ERROR", &status_object(410, "Expired", &msg)))
                .await;
            return;
        }
        Start::From(n) => n,
        Start::Initial(lines, rv) => {
            for line in lines {
                if tx.send(line).await.is_err() {
                    return;
                }
            }
            if send_initial && bookmarks && tx.send(bookmark_line(coll, rv, true)).await.is_err() {
                return;
            }
            rv
        }
    };

    let mut next_bookmark = tokio::time::Instant::now() + bookmark_every;
    loop {
        changed.borrow_and_update();
        let (events, mode, gen_now, rv_now, expired) = {
            let st = shared.lock();
            let expired = cursor < st.compacted_rv;
            let events: Vec<(u64, &'static str, Value)> = if expired {
                Vec::new()
            } else {
                st.history
                    .iter()
                    .filter(|e| e.rv > cursor)
                    .filter_map(|e| coll.translate(e, &filter).map(|(t, o)| (e.rv, t, o)))
                    .collect()
            };
            (events, st.mode, st.watch_generation, st.rv, expired)
        };
        if gen_now != generation {
            return;
        }
        match mode {
            Mode::Garbage => {
                let _ = tx.send(Bytes::from_static(GARBAGE.as_bytes())).await;
                return;
            }
            Mode::Error(code) => {
                let _ = tx
                    .send(event_line(
                        "ERROR",
                        &status_object(code, reason_for(code), "injected failure"),
                    ))
                    .await;
                return;
            }
            Mode::Normal | Mode::Slow(_) => {}
        }
        if expired {
            let msg = format!("too old resource version: {cursor}");
            let _ = tx
                .send(event_line("ERROR", &status_object(410, "Expired", &msg)))
                .await;
            return;
        }
        for (rv, kind, obj) in events {
            if let Mode::Slow(d) = mode {
                tokio::time::sleep(d).await;
            }
            if tx.send(event_line(kind, &obj)).await.is_err() {
                return;
            }
            cursor = rv;
        }
        cursor = cursor.max(rv_now);

        let sleep_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(next_bookmark), if bookmarks => {
                next_bookmark = tokio::time::Instant::now() + shared.lock().bookmark_interval;
                if tx.send(bookmark_line(coll, cursor, false)).await.is_err() {
                    return;
                }
            }
            _ = sleep_deadline => return,
            _ = tx.closed() => return,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (url_decode(k), url_decode(v))
        })
        .collect()
}

fn url_decode(s: &str) -> String {
    let s = s.replace('+', " ");
    percent_encoding::percent_decode_str(&s)
        .decode_utf8_lossy()
        .into_owned()
}

fn fnv64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// RFC 3339 UTC timestamp of now, second precision.
fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

// ---------------------------------------------------------------------------------------------
// Pod fixtures
// ---------------------------------------------------------------------------------------------

/// A deterministic 64-hex-digit container ID derived from `seed`.
pub fn container_id(seed: &str) -> String {
    (0..4u8)
        .map(|i| {
            let mut data = seed.as_bytes().to_vec();
            data.push(i);
            format!("{:016x}", fnv64(&data))
        })
        .collect()
}

/// `containerd://` + [`container_id`]`(seed)`.
pub fn containerd_id(seed: &str) -> String {
    format!("containerd://{}", container_id(seed))
}

/// The kind of a container in a [`PodBuilder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerKind {
    Init,
    Regular,
    Ephemeral,
}

#[derive(Debug, Clone)]
struct TestContainer {
    kind: ContainerKind,
    name: String,
    /// With its runtime prefix; `None`: not started yet.
    id: Option<String>,
    limit: Option<String>,
    request: Option<String>,
    last_terminated_id: Option<String>,
}

/// Builds real-shaped Pod objects (spec, status with phase, qosClass, containerStatuses).
#[derive(Debug, Clone)]
pub struct PodBuilder {
    namespace: String,
    name: String,
    uid: Option<String>,
    node: Option<String>,
    qos: Option<String>,
    phase: String,
    labels: BTreeMap<String, String>,
    owners: Vec<OwnerReference>,
    containers: Vec<TestContainer>,
}

impl PodBuilder {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            uid: None,
            node: None,
            qos: None,
            phase: "Running".into(),
            labels: BTreeMap::new(),
            owners: Vec::new(),
            containers: Vec::new(),
        }
    }

    pub fn uid(mut self, uid: &str) -> Self {
        self.uid = Some(uid.into());
        self
    }

    pub fn node(mut self, node: &str) -> Self {
        self.node = Some(node.into());
        self
    }

    /// `Guaranteed`, `Burstable` or `BestEffort`.
    pub fn qos(mut self, qos: &str) -> Self {
        self.qos = Some(qos.into());
        self
    }

    pub fn phase(mut self, phase: &str) -> Self {
        self.phase = phase.into();
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    fn push(
        mut self,
        kind: ContainerKind,
        name: &str,
        id: &str,
        limit: Option<&str>,
        request: Option<&str>,
    ) -> Self {
        self.containers.push(TestContainer {
            kind,
            name: name.into(),
            id: (!id.is_empty()).then(|| id.to_string()),
            limit: limit.map(str::to_string),
            request: request.map(str::to_string),
            last_terminated_id: None,
        });
        self
    }

    /// A regular container; `id` with its runtime prefix (`""`: not started yet).
    pub fn container(
        self,
        name: &str,
        id: &str,
        limit: Option<&str>,
        request: Option<&str>,
    ) -> Self {
        self.push(ContainerKind::Regular, name, id, limit, request)
    }

    pub fn init_container(
        self,
        name: &str,
        id: &str,
        limit: Option<&str>,
        request: Option<&str>,
    ) -> Self {
        self.push(ContainerKind::Init, name, id, limit, request)
    }

    pub fn ephemeral_container(self, name: &str, id: &str) -> Self {
        self.push(ContainerKind::Ephemeral, name, id, None, None)
    }

    /// Sets `lastState.terminated` (reason OOMKilled) with this container ID (prefixed) on
    /// the container named `name` added before.
    pub fn last_terminated(mut self, name: &str, id: &str) -> Self {
        if let Some(c) = self.containers.iter_mut().find(|c| c.name == name) {
            c.last_terminated_id = Some(id.into());
        }
        self
    }

    /// Owned by ReplicaSet `<deployment>-<hash>` (controller) and labelled
    /// `pod-template-hash=<hash>`, as a Deployment's pods are.
    pub fn deployment(self, deployment: &str, hash: &str) -> Self {
        self.owner("apps/v1", "ReplicaSet", &format!("{deployment}-{hash}"))
            .label("pod-template-hash", hash)
    }

    /// A controller owner reference.
    pub fn owner(mut self, api_version: &str, kind: &str, name: &str) -> Self {
        self.owners.push(OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            name: name.into(),
            uid: format!("{:016x}", fnv64(format!("{kind}/{name}").as_bytes())),
            controller: Some(true),
            block_owner_deletion: Some(true),
        });
        self
    }

    pub fn build(self) -> Pod {
        let resources = |c: &TestContainer| {
            let q = |v: &Option<String>| {
                v.as_ref()
                    .map(|v| BTreeMap::from([("memory".to_string(), Quantity(v.clone()))]))
            };
            (c.limit.is_some() || c.request.is_some()).then(|| ResourceRequirements {
                limits: q(&c.limit),
                requests: q(&c.request),
                ..Default::default()
            })
        };
        let of = |kind: ContainerKind| self.containers.iter().filter(move |c| c.kind == kind);
        let status = |c: &TestContainer| {
            ContainerStatus {
            name: c.name.clone(),
            container_id: c.id.clone(),
            image: "registry.example/app:1".into(),
            image_id: "registry.example/app@sha256:0000000000000000000000000000000000000000000000000000000000000000".into(),
            ready: c.id.is_some() && c.kind != ContainerKind::Init,
            started: Some(c.id.is_some()),
            restart_count: i32::from(c.last_terminated_id.is_some()),
            state: c.id.as_ref().map(|_| ContainerState {
                running: Some(ContainerStateRunning::default()),
                ..Default::default()
            }),
            last_state: c.last_terminated_id.as_ref().map(|id| ContainerState {
                terminated: Some(k8s_openapi::api::core::v1::ContainerStateTerminated {
                    container_id: Some(id.clone()),
                    exit_code: 137,
                    reason: Some("OOMKilled".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
        };
        let container = |c: &TestContainer| Container {
            name: c.name.clone(),
            image: Some("registry.example/app:1".into()),
            resources: resources(c),
            ..Default::default()
        };
        let inits: Vec<_> = of(ContainerKind::Init).collect();
        let ephemerals: Vec<_> = of(ContainerKind::Ephemeral).collect();
        let mut pod = Pod::default();
        pod.metadata.namespace = Some(self.namespace.clone());
        pod.metadata.name = Some(self.name.clone());
        pod.metadata.uid = self.uid.clone();
        pod.metadata.labels = (!self.labels.is_empty()).then(|| self.labels.clone());
        pod.metadata.owner_references = (!self.owners.is_empty()).then(|| self.owners.clone());
        pod.spec = Some(PodSpec {
            node_name: self.node.clone(),
            containers: of(ContainerKind::Regular).map(container).collect(),
            init_containers: (!inits.is_empty())
                .then(|| inits.iter().map(|c| container(c)).collect()),
            ephemeral_containers: (!ephemerals.is_empty()).then(|| {
                ephemerals
                    .iter()
                    .map(|c| EphemeralContainer {
                        name: c.name.clone(),
                        image: Some("busybox".into()),
                        target_container_name: None,
                        ..Default::default()
                    })
                    .collect()
            }),
            restart_policy: Some("Always".into()),
            ..Default::default()
        });
        pod.status = Some(PodStatus {
            phase: Some(self.phase.clone()),
            qos_class: self.qos.clone(),
            host_ip: Some("10.0.0.1".into()),
            pod_ip: Some("10.244.0.10".into()),
            container_statuses: Some(of(ContainerKind::Regular).map(status).collect()),
            init_container_statuses: (!inits.is_empty())
                .then(|| inits.iter().map(|c| status(c)).collect()),
            ephemeral_container_statuses: (!ephemerals.is_empty())
                .then(|| ephemerals.iter().map(|c| status(c)).collect()),
            ..Default::default()
        });
        pod
    }
}

/// A Running pod with regular containers `(name, container ID with its runtime prefix or "",
/// memory limit, memory request)`, optionally owned by a Deployment `(name, pod-template-hash)`
/// through its ReplicaSet.
pub fn pod(
    namespace: &str,
    name: &str,
    uid: &str,
    node: &str,
    qos: &str,
    containers: &[(&str, &str, Option<&str>, Option<&str>)],
    deployment: Option<(&str, &str)>,
) -> Pod {
    let mut b = PodBuilder::new(namespace, name)
        .uid(uid)
        .node(node)
        .qos(qos);
    for (cname, id, limit, request) in containers {
        b = b.container(cname, id, *limit, *request);
    }
    if let Some((deploy, hash)) = deployment {
        b = b.deployment(deploy, hash);
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let p = serde_json::to_value(
            PodBuilder::new("ns", "p")
                .node("n1")
                .label("app", "web")
                .label("tier", "front")
                .build(),
        )
        .unwrap();
        let f = |fs: &str, ls: &str| Filter {
            namespace: None,
            fields: parse_field_selector(fs).unwrap(),
            labels: parse_label_selector(ls).unwrap(),
        };
        assert!(f("spec.nodeName=n1", "").matches(&p));
        assert!(f("spec.nodeName==n1,metadata.namespace=ns", "").matches(&p));
        assert!(!f("spec.nodeName=n2", "").matches(&p));
        assert!(f("spec.nodeName!=n2", "").matches(&p));
        assert!(f(
            "status.phase=Running",
            "app=web,tier in (front, back),!gone,app"
        )
        .matches(&p));
        assert!(!f("", "tier notin (front)").matches(&p));
        assert!(f("", "tier notin (back),missing notin (x)").matches(&p));
        assert!(parse_field_selector("spec.foo=bar").is_err());
        assert!(parse_label_selector("a in b").is_err());
    }

    fn http_get(port: u16, path: &str) -> String {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            conn,
            "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        conn.read_to_string(&mut out).unwrap();
        out
    }

    /// Usable from a plain #[test] (no tokio runtime here), across stop/restart.
    #[test]
    fn serves_from_a_plain_test() {
        let server = ApiServer::start();
        server.add_pod(pod(
            "ns",
            "a",
            "uid-a",
            "n1",
            "BestEffort",
            &[("c", "", None, None)],
            None,
        ));
        server.add_pod(pod("ns", "b", "uid-b", "n2", "BestEffort", &[], None));
        let list = http_get(
            server.port(),
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1",
        );
        assert!(list.starts_with("HTTP/1.1 200"), "{list}");
        assert!(
            list.contains(r#""kind":"PodList""#)
                && list.contains("uid-a")
                && !list.contains("uid-b"),
            "{list}"
        );
        let rv = server.resource_version();
        assert_eq!(rv, 3);

        server.stop();
        assert!(std::net::TcpStream::connect(("127.0.0.1", server.port())).is_err());
        server.delete_pod("ns", "a").unwrap();
        server.compact_history();
        server.restart();
        let gone = http_get(server.port(), "/api/v1/pods?watch=true&resourceVersion=2");
        assert!(gone.starts_with("HTTP/1.1 200"), "{gone}");
        assert!(
            gone.contains(r#""type":"ERROR""#) && gone.contains(r#""code":410"#),
            "{gone}"
        );
        assert!(gone.contains(r#""reason":"Expired""#), "{gone}");
        let missing = http_get(server.port(), "/api/v1/namespaces/ns/pods/a");
        assert!(
            missing.starts_with("HTTP/1.1 404") && missing.contains("NotFound"),
            "{missing}"
        );
        let bad = http_get(server.port(), "/api/v1/pods?fieldSelector=spec.bogus%3Dx");
        assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
        assert_eq!(server.requests().len(), 4);
    }

    /// One HTTP/1.1 request (`Connection: close`); the raw response.
    fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> String {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let content_type = if method == "PATCH" {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        write!(
            conn,
            "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
             Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        conn.read_to_string(&mut out).unwrap();
        out
    }

    /// The JSON body of a non-chunked response.
    fn body_json(response: &str) -> Value {
        let body = response.split_once("\r\n\r\n").unwrap().1;
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"))
    }

    /// Reads a (watch) response until `done` holds for what was read so far, at most 5 s.
    fn read_until(port: u16, path: &str, done: impl Fn(&str) -> bool) -> String {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        conn.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        write!(conn, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while !done(&String::from_utf8_lossy(&out)) {
            assert!(
                Instant::now() < deadline,
                "timed out reading {path}: {}",
                String::from_utf8_lossy(&out)
            );
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn oom_event(ns: &str, name: &str, pod: &str, node: &str) -> Value {
        json!({
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"namespace": ns, "name": name},
            "eventTime": "2026-01-01T10:00:00.000000Z",
            "reason": "OOMKill",
            "action": "Killed",
            "type": "Warning",
            "reportingController": "oomtrace",
            "reportingInstance": node,
            "regarding": {"apiVersion": "v1", "kind": "Pod", "namespace": ns, "name": pod},
            "note": "python3 (pid 1) in container app killed by the OOM killer",
        })
    }

    #[test]
    fn events_are_listed_watched_and_converted() {
        let server = ApiServer::start();
        let port = server.port();
        let a = server.add_event(oom_event("shop", "api-1.1", "api-1", "node-1"));
        assert_eq!(a["metadata"]["resourceVersion"], "2");
        assert!(a["metadata"]["uid"].as_str().is_some_and(|u| !u.is_empty()));
        assert!(a["metadata"]["creationTimestamp"].is_string());
        let mut backoff = oom_event("other", "web-1.1", "web-1", "node-2");
        backoff["reason"] = json!("BackOff");
        backoff["reportingController"] = json!("kubelet");
        server.add_event(backoff);

        // A core v1 Event, through the core API.
        let created = http(
            port,
            "POST",
            "/api/v1/namespaces/default/events",
            Some(&json!({
                "metadata": {"generateName": "db-0."},
                "involvedObject": {"kind": "Pod", "namespace": "default", "name": "db-0"},
                "reason": "OOMKill",
                "message": "postgres (pid 7) in container db killed by the OOM killer",
                "reportingComponent": "oomtrace",
                "source": {"component": "oomtrace"},
                "type": "Warning",
            })),
        );
        assert!(created.starts_with("HTTP/1.1 201"), "{created}");
        let created = body_json(&created);
        let db = created["metadata"]["name"].as_str().unwrap().to_string();
        assert!(db.starts_with("db-0."), "{created}");
        assert!(
            created["metadata"]["uid"].is_string()
                && created["metadata"]["creationTimestamp"].is_string()
        );
        assert_eq!(
            server.events().len(),
            1,
            "injected Events are not in events()"
        );
        assert_eq!(server.stored_events().len(), 3);

        let list = |path: &str| {
            let r = http(port, "GET", path, None);
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
            let list = body_json(&r);
            let names: Vec<String> = list["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
                .collect();
            (list, names)
        };
        let (l, names) = list("/apis/events.k8s.io/v1/events?fieldSelector=reason%3DOOMKill");
        assert_eq!(l["kind"], "EventList");
        assert_eq!(l["apiVersion"], "events.k8s.io/v1");
        assert_eq!(
            l["metadata"]["resourceVersion"],
            server.resource_version().to_string()
        );
        assert_eq!(names, [db.as_str(), "api-1.1"]);
        let core_item = &l["items"][0];
        assert_eq!(core_item["regarding"]["name"], "db-0", "{core_item}");
        assert_eq!(core_item["reportingController"], "oomtrace");
        assert!(core_item["note"].as_str().unwrap().starts_with("postgres"));
        assert!(core_item.get("involvedObject").is_none() && core_item.get("apiVersion").is_none());
        let (_, names) =
            list("/apis/events.k8s.io/v1/events?fieldSelector=reportingController%21%3Doomtrace");
        assert_eq!(names, ["web-1.1"]);
        let (_, names) = list(
            "/apis/events.k8s.io/v1/events?fieldSelector=regarding.name%3Dapi-1,regarding.kind%3DPod,metadata.namespace%3Dshop",
        );
        assert_eq!(names, ["api-1.1"]);
        let (_, names) = list("/apis/events.k8s.io/v1/namespaces/other/events");
        assert_eq!(names, ["web-1.1"]);
        let (l, names) = list("/api/v1/events?fieldSelector=involvedObject.name%3Dapi-1");
        assert_eq!(names, ["api-1.1"]);
        assert_eq!(l["items"][0]["message"], a["note"]);
        let (_, names) = list("/api/v1/events?fieldSelector=source%3Doomtrace");
        assert_eq!(names, [db.as_str()]);
        let bad = http(
            port,
            "GET",
            "/apis/events.k8s.io/v1/events?fieldSelector=involvedObject.name%3Dx",
            None,
        );
        assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
        let got = body_json(&http(
            port,
            "GET",
            &format!("/apis/events.k8s.io/v1/namespaces/default/events/{db}"),
            None,
        ));
        assert_eq!(got["apiVersion"], "events.k8s.io/v1");
        assert_eq!(got["regarding"]["name"], "db-0");

        // Watch from here: ADDED, MODIFIED (a series), nothing for other reasons, bookmarks.
        let rv = server.resource_version();
        server.add_event(oom_event("shop", "api-2.1", "api-2", "node-3"));
        let mut other = oom_event("shop", "api-2.2", "api-2", "node-3");
        other["reason"] = json!("Killing");
        server.add_event(other);
        server
            .patch_event(
                "shop",
                "api-1.1",
                json!({"series": {"count": 2, "lastObservedTime": "2026-01-01T10:01:00.000000Z"}}),
            )
            .unwrap();
        let patched = http(
            port,
            "PATCH",
            &format!("/apis/events.k8s.io/v1/namespaces/default/events/{db}"),
            Some(
                &json!({"series": {"count": 2, "lastObservedTime": "2026-01-01T10:02:00.000000Z"}}),
            ),
        );
        assert!(patched.starts_with("HTTP/1.1 200"), "{patched}");
        let patched = body_json(&patched);
        assert_eq!(patched["metadata"]["uid"], created["metadata"]["uid"]);
        assert_eq!(patched["regarding"]["name"], "db-0");
        let stale = http(
            port,
            "PATCH",
            &format!("/apis/events.k8s.io/v1/namespaces/default/events/{db}"),
            Some(&json!({"metadata": {"resourceVersion": "1"}, "note": "x"})),
        );
        assert!(stale.starts_with("HTTP/1.1 409"), "{stale}");
        let path = format!(
            "/apis/events.k8s.io/v1/events?watch=true&resourceVersion={rv}&fieldSelector=reason%3DOOMKill&allowWatchBookmarks=true"
        );
        server.set_bookmark_interval(Duration::from_millis(50));
        let w = read_until(port, &path, |s| s.contains(r#""type":"BOOKMARK""#));
        let lines: Vec<Value> = w
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            // (Chunk sizes are lines too.)
            .filter(|v| v["type"].is_string() && v["type"] != "BOOKMARK")
            .collect();
        let seen: Vec<(String, String)> = lines
            .iter()
            .map(|v| {
                (
                    v["type"].as_str().unwrap().to_string(),
                    v["object"]["metadata"]["name"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("ADDED".to_string(), "api-2.1".to_string()),
                ("MODIFIED".to_string(), "api-1.1".to_string()),
                ("MODIFIED".to_string(), db.clone()),
            ],
            "{w}"
        );
        assert_eq!(lines[1]["object"]["series"]["count"], 2);
        assert_eq!(lines[1]["object"]["apiVersion"], "events.k8s.io/v1");
        let bookmark = w
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["type"] == "BOOKMARK")
            .unwrap();
        assert_eq!(bookmark["object"]["kind"], "Event");
        assert_eq!(bookmark["object"]["apiVersion"], "events.k8s.io/v1");
        assert_eq!(
            bookmark["object"]["metadata"]["resourceVersion"],
            server.resource_version().to_string()
        );

        // Pod watches do not see Events.
        server.add_pod(pod("ns", "p", "uid-p", "n1", "BestEffort", &[], None));
        let pw = read_until(port, "/api/v1/pods?watch=true&resourceVersion=1", |s| {
            s.contains("uid-p")
        });
        assert!(!pw.contains("OOMKill"), "{pw}");

        // A stale version: 410 for Event watches too.
        server.delete_event("shop", "api-2.1").unwrap();
        server.compact_history();
        let gone = read_until(port, &path, |s| s.contains(r#""type":"ERROR""#));
        assert!(gone.contains(r#""code":410"#), "{gone}");
        let fresh = "/apis/events.k8s.io/v1/namespaces/shop/events?watch=true&resourceVersion=0";
        let initial = read_until(port, fresh, |s| s.contains("api-1.1"));
        assert!(!initial.contains("api-2.1"), "deleted: {initial}");
    }

    #[test]
    fn watch_translation_follows_the_selector() {
        let on = |node: &str| {
            serde_json::to_value(PodBuilder::new("ns", "p").node(node).build()).unwrap()
        };
        let filter = Filter {
            namespace: None,
            fields: parse_field_selector("spec.nodeName=n1").unwrap(),
            labels: Vec::new(),
        };
        let entry = |change, old: Option<Value>, new: Value| HistoryEntry {
            rv: 7,
            resource: Resource::Pods,
            change,
            old,
            new,
        };
        let kind = |e: &HistoryEntry| translate(e, &filter).map(|(k, _)| k);
        assert_eq!(kind(&entry(Change::Added, None, on("n1"))), Some("ADDED"));
        assert_eq!(kind(&entry(Change::Added, None, on("n2"))), None);
        assert_eq!(
            kind(&entry(Change::Modified, Some(on("n1")), on("n1"))),
            Some("MODIFIED")
        );
        assert_eq!(
            kind(&entry(Change::Modified, Some(on("n2")), on("n1"))),
            Some("ADDED")
        );
        assert_eq!(
            kind(&entry(Change::Modified, Some(on("n2")), on("n2"))),
            None
        );
        let left = translate(&entry(Change::Modified, Some(on("n1")), on("n2")), &filter).unwrap();
        assert_eq!(left.0, "DELETED");
        assert_eq!(left.1["spec"]["nodeName"], "n1");
        assert_eq!(left.1["metadata"]["resourceVersion"], "7");
        assert_eq!(
            kind(&entry(Change::Deleted, None, on("n1"))),
            Some("DELETED")
        );
        assert_eq!(kind(&entry(Change::Deleted, None, on("n2"))), None);
    }

    #[test]
    fn timestamps_and_ids() {
        let ts = now_rfc3339();
        assert_eq!(ts.len(), 20, "{ts}");
        assert!(ts.starts_with("20"), "{ts}");
        let id = container_id("x");
        assert_eq!(id.len(), 64);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, container_id("y"));
        assert_eq!(
            parse_query("a=b%3Dc&watch=true&x"),
            vec![
                ("a".to_string(), "b=c".to_string()),
                ("watch".to_string(), "true".to_string()),
                ("x".to_string(), String::new()),
            ]
        );
        let mut t = json!({"a": {"b": 1, "c": 2}, "d": 3});
        merge_patch(&mut t, &json!({"a": {"b": null, "e": 4}, "d": 5}));
        assert_eq!(t, json!({"a": {"c": 2, "e": 4}, "d": 5}));
    }
}
