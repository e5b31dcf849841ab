//! Kubernetes Events for kills: `OOMKill` Warnings on the victim's Pod (node-wide OOMs on the
//! Node), readable in `kubectl describe pod`, published through kube's `Recorder`.
//!
//! Publishing never blocks the tracer: events go through a bounded queue to a task that
//! retries with backoff and, when the API server stays unreachable, drops them and counts
//! the drop. Repeated kills of one container within [`AGGREGATION_WINDOW`] re-publish the
//! first Event, which the Recorder turns into a series (`count`, `lastObservedTime`) instead
//! of a new object per kill.
use crate::event::OomKill;
use crate::metrics::Metrics;
use crate::output::human;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub const REASON: &str = "OOMKill";
pub const ACTION: &str = "Killed";
pub const CONTROLLER: &str = "oomtrace";
/// Shorter than the Recorder's own 6-minute cache, so a re-publish always aggregates.
pub const AGGREGATION_WINDOW: Duration = Duration::from_secs(5 * 60);
const QUEUE: usize = 1024;
const ATTEMPTS: u32 = 4;

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
            format!("rss {} (anon {}, file {}, shmem {})", human(Some(a + f + s)), human(Some(a)), human(Some(f)), human(Some(s)))
        }
        _ => "rss unknown".into(),
    };
    let scope = match (ev.oom.constraint.as_deref(), ev.k8s.as_ref().map(|k| k.cgroup_level.as_str())) {
        (Some("global"), _) => "node out of memory".to_string(),
        (Some("memcg"), _) => {
            let level = match &ev.oom.cgroup {
                Some(c) if ev.k8s.as_ref().is_some_and(|k| k.pod_uid.as_deref().is_some_and(|u| pod_level(c, u))) => "pod",
                Some(_) if container.is_some() => "container",
                _ => "cgroup",
            };
            format!("{level} limit {}, usage {}", human(ev.oom.limit_bytes), human(ev.oom.usage_bytes))
        }
        (c, _) => format!("constraint {}", c.unwrap_or("unknown")),
    };
    let consequence = match v.container_init {
        Some(true) => "; the container restarts",
        Some(false) => "; the container keeps running",
        None => "",
    };
    format!("{who} killed by the OOM killer: {rss}, {scope}{consequence}")
}

/// Whether the OOM cgroup is the pod-level cgroup (its last component names the pod UID).
fn pod_level(cgroup: &str, uid: &str) -> bool {
    let last = cgroup.rsplit('/').next().unwrap_or("");
    last.contains(uid) || last.contains(&uid.replace('-', "_"))
}

/// What the Event is about: the Pod, or the Node for a kill outside any pod.
fn regarding(ev: &OomKill) -> Option<ObjectReference> {
    match &ev.k8s {
        Some(k) if k.resolved => Some(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: k.pod.clone(),
            namespace: k.namespace.clone(),
            uid: k.pod_uid.clone(),
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

/// Handle to the publishing task.
#[derive(Clone)]
pub struct EventPublisher {
    tx: mpsc::Sender<OomKill>,
    metrics: Arc<Metrics>,
}

impl EventPublisher {
    pub fn spawn(client: kube::Client, node: String, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let recorder = Recorder::new(client, Reporter { controller: CONTROLLER.into(), instance: Some(node) });
        tokio::spawn(run(recorder, rx, metrics.clone()));
        Self { tx, metrics }
    }

    /// Queues the kill for publication; a full queue drops it (counted).
    pub fn publish(&self, ev: &OomKill) {
        if regarding(ev).is_none() {
            return;
        }
        if self.tx.try_send(ev.clone()).is_err() {
            tracing::warn!("Kubernetes Event queue full: dropping the Event for this kill");
            self.metrics.event_dropped();
        }
    }
}

async fn run(recorder: Recorder, mut rx: mpsc::Receiver<OomKill>, metrics: Arc<Metrics>) {
    // First Event per container (or node) and when it was made.
    let mut recent: HashMap<String, (String, Instant)> = HashMap::new();
    while let Some(ev) = rx.recv().await {
        let Some(reference) = regarding(&ev) else { continue };
        let key = format!(
            "{}/{}/{}",
            reference.kind.as_deref().unwrap_or(""),
            reference.uid.as_deref().or(reference.name.as_deref()).unwrap_or(""),
            ev.k8s.as_ref().and_then(|k| k.container.as_deref()).unwrap_or("")
        );
        recent.retain(|_, (_, at)| at.elapsed() < AGGREGATION_WINDOW);
        let note = match recent.get(&key) {
            Some((first, _)) => first.clone(),
            None => {
                let n = note(&ev);
                recent.insert(key, (n.clone(), Instant::now()));
                n
            }
        };
        let event = Event {
            type_: EventType::Warning,
            reason: REASON.into(),
            note: Some(note),
            action: ACTION.into(),
            secondary: None,
        };
        let mut delay = Duration::from_millis(200);
        let mut sent = false;
        for attempt in 1..=ATTEMPTS {
            match recorder.publish(&event, &reference).await {
                Ok(()) => {
                    sent = true;
                    break;
                }
                Err(e) => {
                    tracing::warn!("publishing the OOMKill Event failed (attempt {attempt}/{ATTEMPTS}): {e}");
                    if attempt < ATTEMPTS {
                        tokio::time::sleep(delay).await;
                        delay *= 4;
                    }
                }
            }
        }
        if !sent {
            metrics.event_dropped();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kill() -> OomKill {
        crate::event::test_kill(serde_json::json!({
            "victim": {"pid": 4242, "comm": "python3", "rss_anon_bytes": 1900u64 << 20, "rss_file_bytes": 0,
                       "rss_shmem_bytes": 0, "container_init": false},
            "oom": {"constraint": "memcg", "cgroup": "/kubepods/burstable/pod1234/abcd",
                    "limit_bytes": 2u64 << 30, "usage_bytes": 2u64 << 30},
            "k8s": {"resolved": true, "namespace": "shop", "pod": "api-1", "pod_uid": "1234", "container": "app",
                    "cgroup_level": "container", "pod_deleted": false}
        }))
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
        k.victim.container_init = Some(true);
        assert!(note(&k).contains("pod limit 2.0GiB"));
        assert!(note(&k).ends_with("the container restarts"));
    }

    #[test]
    fn events_go_on_the_pod_or_the_node() {
        let r = regarding(&kill()).unwrap();
        assert_eq!(r.kind.as_deref(), Some("Pod"));
        assert_eq!(r.namespace.as_deref(), Some("shop"));
        let mut global = kill();
        global.k8s = None;
        global.oom.constraint = Some("global".into());
        let r = regarding(&global).unwrap();
        assert_eq!(r.kind.as_deref(), Some("Node"));
        assert_eq!(r.name.as_deref(), Some("node-1"));
        let mut unresolved = kill();
        unresolved.k8s.as_mut().unwrap().resolved = false;
        assert!(regarding(&unresolved).is_none());
    }
}
