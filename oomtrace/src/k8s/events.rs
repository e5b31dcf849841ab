//! Kubernetes Events for kills: `OOMKill` Warnings on the victim's Pod (node-wide OOMs on the
//! Node), readable in `kubectl describe pod`.
//!
//! Publishing never blocks the tracer: events go through a bounded queue to a task that
//! retries with backoff and, when the API server stays unreachable, drops them and counts
//! the drop. Repeated kills of one container within [`AGGREGATION_WINDOW`] of the previous one
//! become a series on the first Event (`series.count`, `lastObservedTime`) instead of a new
//! object per kill, as kube's `Recorder` does it; the Recorder itself cannot set annotations,
//! which carry the kill's numbers for programs (`watch --cluster`) so none parses the note.
use crate::metrics::Metrics;
use crate::model::{Constraint, ContainerKind, OomKill};
use crate::output::human;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub const REASON: &str = "OOMKill";
pub const ACTION: &str = "Killed";
pub const CONTROLLER: &str = "oomtrace";
/// A kill this soon after the previous one of the same container extends its series (the
/// Recorder's own window is 6 minutes).
pub const AGGREGATION_WINDOW: Duration = Duration::from_secs(5 * 60);
const QUEUE: usize = 1024;
const ATTEMPTS: u32 = 4;
/// One publication attempt; an API server that accepts the connection and never answers
/// must not hold the queue.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Annotations on every Event: the numbers of the kill the note describes (the series' first).
pub mod annotation {
    pub const CONTAINER: &str = "oomtrace.io/container";
    pub const PID: &str = "oomtrace.io/pid";
    pub const COMM: &str = "oomtrace.io/comm";
    pub const LIMIT_BYTES: &str = "oomtrace.io/limit-bytes";
    pub const USAGE_BYTES: &str = "oomtrace.io/usage-bytes";
    /// `jvm`, `node`, `go` or `python` (`victim.runtime.name`).
    pub const RUNTIME: &str = "oomtrace.io/runtime";
    pub const HEAP_MAX_BYTES: &str = "oomtrace.io/heap-max-bytes";
    /// The pod's owner as the pod index resolved it (a ReplicaSet's Deployment, a Job's CronJob).
    pub const OWNER_KIND: &str = "oomtrace.io/owner-kind";
    pub const OWNER_NAME: &str = "oomtrace.io/owner-name";
    /// `oom.trend.kind`, and a leak's growth.
    pub const TREND: &str = "oomtrace.io/trend";
    pub const GROWTH_BYTES_PER_MIN: &str = "oomtrace.io/growth-bytes-per-min";
    /// The verdict and the recommendation, as the JSON has them (text to show, not to parse).
    pub const VERDICT: &str = "oomtrace.io/verdict";
    /// `oom.recommendation.action` and `.reason`.
    pub const RECOMMENDATION: &str = "oomtrace.io/recommendation";
    pub const RECOMMENDATION_REASON: &str = "oomtrace.io/recommendation-reason";
    pub const RECOMMENDED_LIMIT_BYTES: &str = "oomtrace.io/recommended-limit-bytes";
}

/// The API server's bound on an Event's note, in bytes.
const NOTE_MAX: usize = 1024;

/// The message an on-call engineer reads in `kubectl describe pod`.
pub fn note(ev: &OomKill) -> String {
    let v = &ev.victim;
    let comm = v.comm.as_deref().unwrap_or("process");
    let pid = v.pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into());
    let container = ev.k8s.as_ref().and_then(|k| k.container.as_deref());
    let who = match container {
        Some(c) => format!("{comm} (pid {pid}) in container {c}"),
        None => format!("{comm} (pid {pid})"),
    };
    let rss = match (v.rss_anon_bytes, v.rss_file_bytes, v.rss_shmem_bytes) {
        (Some(a), Some(f), Some(s)) => {
            format!("rss {} (anon {}, file {}, shmem {})", human(v.rss_bytes()), human(Some(a)), human(Some(f)), human(Some(s)))
        }
        _ => "rss unknown".into(),
    };
    let scope = match ev.oom.constraint.unwrap_or(Constraint::Unknown) {
        Constraint::Global => "node out of memory".to_string(),
        Constraint::Memcg => {
            format!("{} limit {}, usage {}", ev.limit_scope(), human(ev.oom.limit_bytes), human(ev.oom.usage_bytes))
        }
        c => format!("constraint {c}"),
    };
    let consequence = match v.container_init {
        Some(true) => "; the container restarts",
        Some(false) => "; the container keeps running",
        None => "",
    };
    let mut note = format!("{who} killed by the OOM killer: {rss}, {scope}{consequence}");
    let rec = ev.oom.recommendation.as_ref();
    // How usage moved before the kill, unless the recommendation's reason says it already.
    if let Some(how) = ev.oom.trend.as_ref().and_then(|t| crate::trend::phrase(t, ev.oom.limit_bytes)) {
        if rec.is_none_or(|r| r.reason != how) {
            note = format!("{note}; {how}");
        }
    }
    if let Some(r) = rec {
        note = format!("{note}. {}: {}", r.reason, r.action);
    }
    // `kubectl describe` prints notes raw: a process name must not drive the terminal.
    let mut note = crate::output::escape_controls(&note).into_owned();
    // A runtime setting is the process's own text: it must not make the API refuse the Event.
    if note.len() > NOTE_MAX {
        let end = (0..=NOTE_MAX - 3).rev().find(|i| note.is_char_boundary(*i)).unwrap_or(0);
        note.truncate(end);
        note.push('…');
    }
    note
}

/// The container within its pod, as kubelet's own Events point at it (`spec.containers{app}`).
fn field_path(k: &crate::model::K8s) -> Option<String> {
    let list = match k.container_kind? {
        ContainerKind::Regular => "containers",
        ContainerKind::Init => "initContainers",
        ContainerKind::Ephemeral => "ephemeralContainers",
    };
    Some(format!("spec.{list}{{{}}}", k.container.as_deref()?))
}

/// What the Event is about: the Pod's container (the pod when the container is unknown), or
/// the Node for a kill outside any pod. A series is per reference, so the container in
/// `fieldPath` gives each container its own series.
fn regarding(ev: &OomKill) -> Option<ObjectReference> {
    match &ev.k8s {
        Some(k) if k.resolved => Some(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: k.pod.clone(),
            namespace: k.namespace.clone(),
            uid: k.pod_uid.clone(),
            field_path: field_path(k),
            ..Default::default()
        }),
        // A pod we cannot name: an Event on it would be invisible; it still goes to the log.
        Some(_) => None,
        // Outside any pod (a node daemon, or a node-wide OOM): the Node.
        None => Some(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(ev.node.clone()),
            ..Default::default()
        }),
    }
}

/// The kill's numbers, for programs; what is unknown is absent.
fn annotations(ev: &OomKill) -> BTreeMap<String, String> {
    let container = ev.k8s.as_ref().and_then(|k| k.container.clone());
    let owner = ev.k8s.as_ref().and_then(|k| k.owner.as_ref());
    let runtime = ev.victim.runtime.as_ref();
    let trend = ev.oom.trend.as_ref();
    let growth = match trend {
        Some(crate::model::Trend::Leak { growth_bytes_per_min, .. }) => Some(growth_bytes_per_min.to_string()),
        _ => None,
    };
    let rec = ev.oom.recommendation.as_ref();
    [
        (annotation::CONTAINER, container),
        (annotation::PID, ev.victim.pid.map(|p| p.to_string())),
        (annotation::COMM, ev.victim.comm.clone()),
        (annotation::LIMIT_BYTES, ev.oom.limit_bytes.map(|b| b.to_string())),
        (annotation::USAGE_BYTES, ev.oom.usage_bytes.map(|b| b.to_string())),
        (annotation::RUNTIME, runtime.map(|r| r.name.as_str().to_string())),
        (annotation::HEAP_MAX_BYTES, runtime.and_then(|r| r.heap_max_bytes).map(|b| b.to_string())),
        (annotation::OWNER_KIND, owner.map(|o| o.kind.clone())),
        (annotation::OWNER_NAME, owner.map(|o| o.name.clone())),
        (annotation::TREND, trend.map(|t| t.kind().to_string())),
        (annotation::GROWTH_BYTES_PER_MIN, growth),
        (annotation::VERDICT, ev.verdict.clone()),
        (annotation::RECOMMENDATION, rec.map(|r| r.action.clone())),
        (annotation::RECOMMENDATION_REASON, rec.map(|r| r.reason.clone())),
        (annotation::RECOMMENDED_LIMIT_BYTES, rec.and_then(|r| r.limit_bytes).map(|b| b.to_string())),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k.to_string(), v?)))
    .collect()
}

/// The first Event of a series (named like the Recorder's: `<object>.<nanoseconds>`).
fn new_event(ev: &OomKill, reference: ObjectReference, node: &str, now: Timestamp) -> Event {
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{}.{:x}", reference.name.as_deref().unwrap_or(CONTROLLER), now.as_nanosecond())),
            namespace: Some(namespace(&reference).to_string()),
            annotations: Some(annotations(ev)),
            ..Default::default()
        },
        event_time: Some(MicroTime(now)),
        type_: Some("Warning".into()),
        reason: Some(REASON.into()),
        action: Some(ACTION.into()),
        note: Some(note(ev)),
        regarding: Some(reference),
        reporting_controller: Some(CONTROLLER.into()),
        reporting_instance: Some(node.to_string()),
        ..Default::default()
    }
}

/// Events about cluster-scoped objects (the Node) live in `default`.
fn namespace(reference: &ObjectReference) -> &str {
    reference.namespace.as_deref().unwrap_or("default")
}

/// The series an Event belongs to: one per object and container.
fn series_key(reference: &ObjectReference, ev: &OomKill) -> String {
    format!(
        "{}/{}/{}/{}",
        reference.kind.as_deref().unwrap_or(""),
        reference.uid.as_deref().or(reference.name.as_deref()).unwrap_or(""),
        reference.field_path.as_deref().unwrap_or(""),
        ev.k8s.as_ref().and_then(|k| k.container.as_deref()).unwrap_or("")
    )
}

/// A published Event and its last kill.
struct Series {
    namespace: String,
    name: String,
    count: i32,
    last: Instant,
}

/// Handle to the publishing task.
pub struct EventPublisher {
    tx: mpsc::Sender<OomKill>,
    metrics: Arc<Metrics>,
    /// Kills queued or being published, to count what exit leaves undelivered.
    pending: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl EventPublisher {
    pub fn spawn(client: kube::Client, node: String, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let pending = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(run(client, node, rx, metrics.clone(), pending.clone()));
        Self { tx, metrics, pending, task }
    }

    /// Queues the kill for publication; a full queue drops it (counted).
    pub fn publish(&self, ev: &OomKill) {
        if regarding(ev).is_none() {
            return;
        }
        self.pending.fetch_add(1, Relaxed);
        if self.tx.try_send(ev.clone()).is_err() {
            self.pending.fetch_sub(1, Relaxed);
            tracing::warn!("Kubernetes Event queue full: dropping the Event for this kill");
            self.metrics.event_dropped(1);
        }
    }

    /// Publishes what is still queued, until `deadline`; the rest is counted and logged.
    /// Runs on a thread allowed to block (the exit path).
    pub fn finish(self, deadline: Instant) {
        let Self { tx, metrics, pending, mut task } = self;
        drop(tx);
        let left = deadline.saturating_duration_since(Instant::now());
        let done = tokio::runtime::Handle::current().block_on(tokio::time::timeout(left, &mut task));
        if done.is_err() {
            task.abort();
            let lost = pending.load(Relaxed);
            tracing::warn!("{lost} Kubernetes Events not published before the exit deadline");
            metrics.event_dropped(lost);
        }
    }
}

async fn run(
    client: kube::Client,
    node: String,
    mut rx: mpsc::Receiver<OomKill>,
    metrics: Arc<Metrics>,
    pending: Arc<AtomicU64>,
) {
    let mut series: HashMap<String, Series> = HashMap::new();
    while let Some(ev) = rx.recv().await {
        deliver(&client, &node, &ev, &mut series, &metrics).await;
        pending.fetch_sub(1, Relaxed);
    }
}

/// One kill's Event, retried with backoff, each attempt within [`ATTEMPT_TIMEOUT`].
async fn deliver(client: &kube::Client, node: &str, ev: &OomKill, series: &mut HashMap<String, Series>, metrics: &Metrics) {
    let Some(reference) = regarding(ev) else { return };
    let key = series_key(&reference, ev);
    series.retain(|_, s| s.last.elapsed() < AGGREGATION_WINDOW);
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=ATTEMPTS {
        match tokio::time::timeout(ATTEMPT_TIMEOUT, publish(client, node, ev, &reference, series.get(&key))).await {
            Ok(Ok(s)) => {
                series.insert(key, s);
                return;
            }
            // The API server dropped the Event (its TTL, or deleted): start a new series.
            Ok(Err(kube::Error::Api(s))) if s.code == 404 => {
                series.remove(&key);
                continue;
            }
            Ok(Err(e)) => tracing::warn!("publishing the OOMKill Event failed (attempt {attempt}/{ATTEMPTS}): {e}"),
            Err(_) => tracing::warn!(
                "publishing the OOMKill Event timed out after {ATTEMPT_TIMEOUT:?} (attempt {attempt}/{ATTEMPTS})"
            ),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(delay).await;
            delay *= 4;
        }
    }
    metrics.event_dropped(1);
}

/// Creates the Event, or counts one more kill on the series' Event.
async fn publish(
    client: &kube::Client,
    node: &str,
    ev: &OomKill,
    reference: &ObjectReference,
    series: Option<&Series>,
) -> Result<Series, kube::Error> {
    let now = Timestamp::now();
    match series {
        Some(s) => {
            let api: Api<Event> = Api::namespaced(client.clone(), &s.namespace);
            let count = s.count.saturating_add(1);
            let patch = serde_json::json!({"series": {"count": count, "lastObservedTime": MicroTime(now)}});
            api.patch(&s.name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
            Ok(Series { namespace: s.namespace.clone(), name: s.name.clone(), count, last: Instant::now() })
        }
        None => {
            let event = new_event(ev, reference.clone(), node, now);
            let ns = namespace(reference).to_string();
            let api: Api<Event> = Api::namespaced(client.clone(), &ns);
            let created = api.create(&PostParams::default(), &event).await?;
            let name = created.metadata.name.or(event.metadata.name).unwrap_or_default();
            Ok(Series { namespace: ns, name, count: 1, last: Instant::now() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Level;

    /// A kill in container `app` at its own limit (attribution found the OOM cgroup is it).
    fn kill() -> OomKill {
        let mut k = crate::model::test_kill(serde_json::json!({
            "victim": {"pid": 4242, "comm": "python3", "rss_anon_bytes": 1900u64 << 20, "rss_file_bytes": 0,
                       "rss_shmem_bytes": 0, "container_init": false},
            "oom": {"constraint": "memcg", "cgroup": "/kubepods/burstable/pod1234/abcd",
                    "limit_bytes": 2u64 << 30, "usage_bytes": 2u64 << 30},
            "k8s": {"resolved": true, "namespace": "shop", "pod": "api-1", "pod_uid": "1234", "container": "app",
                    "cgroup_level": "container", "pod_deleted": false}
        }));
        k.k8s.as_mut().unwrap().oom_cgroup_level = Some(Level::Container);
        k
    }

    #[test]
    fn the_note_says_what_died_and_what_happens_next() {
        let n = note(&kill());
        assert_eq!(
            n,
            "python3 (pid 4242) in container app killed by the OOM killer: rss 1.9GiB (anon 1.9GiB, file 0B, shmem 0B), container limit 2.0GiB, usage 2.0GiB; the container keeps running"
        );
        let mut k = kill();
        k.oom.cgroup = Some("/kubepods/burstable/pod1234".into());
        k.k8s.as_mut().unwrap().oom_cgroup_level = Some(Level::Pod);
        k.victim.container_init = Some(true);
        assert!(note(&k).contains("pod limit 2.0GiB"));
        assert!(note(&k).ends_with("the container restarts"));
    }

    fn jvm_kill(argv: &[&str]) -> OomKill {
        let mut k = kill();
        let p = crate::runtime::Process { argv: argv.iter().map(|s| s.to_string()).collect(), ..Default::default() };
        k.victim.runtime = crate::runtime::recognise(&p, k.oom.limit_bytes, crate::model::RuntimeSource::Procfs);
        crate::explain::apply(&mut k, None);
        k
    }

    #[test]
    fn the_note_ends_with_the_recommendation_and_annotations_name_the_runtime() {
        let k = jvm_kill(&["java", "-XX:MaxRAMPercentage=95", "-jar", "app.jar"]);
        assert!(
            note(&k).ends_with(
                "the container keeps running. JVM heap max 1.9GiB (-XX:MaxRAMPercentage=95 of 2.0GiB) leaves 102.0MiB for metaspace, threads and native memory: lower -XX:MaxRAMPercentage below 95 or raise the limit"
            ),
            "{}",
            note(&k)
        );
        let a = annotations(&k);
        assert_eq!(a.get(annotation::RUNTIME).map(String::as_str), Some("jvm"));
        assert_eq!(a.get(annotation::HEAP_MAX_BYTES).map(String::as_str), Some("2040528896"));
        assert!(!annotations(&kill()).contains_key(annotation::RUNTIME));
    }

    #[test]
    fn a_hostile_setting_cannot_push_the_note_past_the_api_servers_bound() {
        let long = format!("-Xmx{}k", "0".repeat(4000) + "1");
        let k = jvm_kill(&["java", &long, "Main"]);
        let n = note(&k);
        assert!(n.len() <= NOTE_MAX && n.ends_with('…'), "{} bytes", n.len());
        assert!(n.starts_with("python3 (pid 4242) in container app killed"));
    }

    #[test]
    fn the_note_escapes_a_hostile_process_name() {
        let mut k = kill();
        k.victim.comm = Some("\x1b[31mRED\x1b[0m".into());
        assert!(note(&k).starts_with("\\x1b[31mRED\\x1b[0m (pid 4242)"), "{}", note(&k));
    }

    #[test]
    fn events_go_on_the_pod_or_the_node() {
        let r = regarding(&kill()).unwrap();
        assert_eq!(r.kind.as_deref(), Some("Pod"));
        assert_eq!(r.namespace.as_deref(), Some("shop"));
        assert_eq!(r.field_path, None, "no container kind, no fieldPath");
        for (kind, path) in [
            (ContainerKind::Regular, "spec.containers{app}"),
            (ContainerKind::Init, "spec.initContainers{app}"),
            (ContainerKind::Ephemeral, "spec.ephemeralContainers{app}"),
        ] {
            let mut k = kill();
            k.k8s.as_mut().unwrap().container_kind = Some(kind);
            assert_eq!(regarding(&k).unwrap().field_path.as_deref(), Some(path));
        }
        let mut global = kill();
        global.k8s = None;
        global.oom.constraint = Some(Constraint::Global);
        let r = regarding(&global).unwrap();
        assert_eq!(r.kind.as_deref(), Some("Node"));
        assert_eq!(r.name.as_deref(), Some("node-1"));
        let mut unresolved = kill();
        unresolved.k8s.as_mut().unwrap().resolved = false;
        assert!(regarding(&unresolved).is_none());
    }

    #[test]
    fn annotations_carry_the_numbers_and_omit_the_unknown() {
        let a = annotations(&kill());
        let get = |k: &str| a.get(k).map(String::as_str);
        assert_eq!(get(annotation::CONTAINER), Some("app"));
        assert_eq!(get(annotation::PID), Some("4242"));
        assert_eq!(get(annotation::COMM), Some("python3"));
        assert_eq!(get(annotation::LIMIT_BYTES), Some("2147483648"));
        assert_eq!(get(annotation::USAGE_BYTES), Some("2147483648"));
        assert_eq!(get(annotation::TREND), None, "no trend without a history");
        // What `report` reads: the owner, the trend and the recommendation, never the note.
        let mut leak = kill();
        leak.k8s.as_mut().unwrap().owner = Some(crate::model::OwnerRef { kind: "Deployment".into(), name: "api".into() });
        leak.oom.trend = Some(crate::model::Trend::Leak { growth_bytes_per_min: 4 << 20, since_s: 900 });
        crate::explain::apply(&mut leak, None);
        let a = annotations(&leak);
        let get = |k: &str| a.get(k).map(String::as_str);
        assert_eq!((get(annotation::OWNER_KIND), get(annotation::OWNER_NAME)), (Some("Deployment"), Some("api")));
        assert_eq!((get(annotation::TREND), get(annotation::GROWTH_BYTES_PER_MIN)), (Some("leak"), Some("4194304")));
        assert_eq!(get(annotation::VERDICT), leak.verdict.as_deref());
        assert_eq!(get(annotation::RECOMMENDATION), Some("find the leak"), "{a:?}");
        assert!(get(annotation::RECOMMENDATION_REASON).unwrap().contains("looks like a leak"), "{a:?}");
        assert_eq!(get(annotation::RECOMMENDED_LIMIT_BYTES), None);
        let mut global = kill();
        global.k8s = None;
        global.oom.limit_bytes = None;
        let a = annotations(&global);
        assert!(!a.contains_key(annotation::CONTAINER) && !a.contains_key(annotation::LIMIT_BYTES), "{a:?}");
        let e = new_event(&global, regarding(&global).unwrap(), "node-1", Timestamp::UNIX_EPOCH);
        assert_eq!(e.metadata.namespace.as_deref(), Some("default"), "the Node's Events live in default");
        assert_eq!(e.reporting_instance.as_deref(), Some("node-1"));
    }
}
