//! `oomtrace watch --cluster`: kills across every node, live, from a laptop with a kubeconfig.
//!
//! Kubernetes is the transport: the daemons publish `OOMKill` Events, this watches them (no
//! aggregator of our own). A repeated kill of one container shows up again with its count.
use crate::filter::Filter;
use crate::k8s::events::{annotation, CONTROLLER, REASON};
use crate::output::Format;
use anyhow::{bail, Result};
use tokio::signal::unix::{signal, SignalKind};
use futures::StreamExt;
use k8s_openapi::api::events::v1::Event;
use kube::runtime::watcher;
use kube::{Api, Client};
use serde::Serialize;
use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

/// One kill (or series of kills) as the cluster view shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClusterKill {
    pub time: String,
    /// The last kill (of a series).
    #[serde(skip)]
    pub at: Option<k8s_openapi::jiff::Timestamp>,
    /// The first kill of a series.
    #[serde(skip)]
    pub first_at: Option<k8s_openapi::jiff::Timestamp>,
    pub node: Option<String>,
    /// `Pod` or `Node`.
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container: Option<String>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub limit_bytes: Option<u64>,
    pub usage_bytes: Option<u64>,
    pub count: i32,
    pub message: String,
}

/// The container an Event is about: its annotation, else the `spec.containers{NAME}` kind of
/// `fieldPath` that kubelet's Events (and Events without annotations) use.
fn container_of(e: &Event) -> Option<String> {
    if let Some(c) = e.metadata.annotations.as_ref().and_then(|a| a.get(annotation::CONTAINER)) {
        return Some(c.clone());
    }
    let path = e.regarding.as_ref()?.field_path.as_deref()?;
    let name = path.strip_suffix('}')?.split_once('{')?.1;
    Some(name.to_string()).filter(|n| !n.is_empty())
}

pub fn from_event(e: &Event) -> Option<ClusterKill> {
    if e.reason.as_deref() != Some(REASON) || e.reporting_controller.as_deref() != Some(CONTROLLER) {
        return None;
    }
    let note = e.note.clone().unwrap_or_default();
    let regarding = e.regarding.as_ref();
    // Core-v1-made Events have no eventTime: fall back on their timestamps.
    let first_at = e
        .event_time
        .as_ref()
        .map(|t| t.0)
        .or_else(|| e.deprecated_first_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let at = e
        .series
        .as_ref()
        .map(|s| s.last_observed_time.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.deprecated_last_timestamp.as_ref().map(|t| t.0))
        .or(first_at);
    let kind = regarding.and_then(|r| r.kind.clone());
    let is_pod = kind.as_deref() == Some("Pod");
    let number = |key: &str| e.metadata.annotations.as_ref()?.get(key)?.parse().ok();
    Some(ClusterKill {
        time: at.map(|t| t.to_string()).unwrap_or_default(),
        at,
        first_at,
        node: e.reporting_instance.clone(),
        namespace: if is_pod { regarding.and_then(|r| r.namespace.clone()) } else { None },
        pod: if is_pod { regarding.and_then(|r| r.name.clone()) } else { None },
        kind,
        container: if is_pod { container_of(e) } else { None },
        pid: number(annotation::PID).and_then(|p: u64| u32::try_from(p).ok()),
        comm: e.metadata.annotations.as_ref().and_then(|a| a.get(annotation::COMM).cloned()),
        limit_bytes: number(annotation::LIMIT_BYTES),
        usage_bytes: number(annotation::USAGE_BYTES),
        count: e.series.as_ref().map_or(1, |s| s.count),
        message: note,
    })
}

fn print(out: &mut impl Write, format: Format, k: &ClusterKill, header: &mut bool) -> std::io::Result<()> {
    match format {
        Format::Json => {
            serde_json::to_writer(&mut *out, k)?;
            writeln!(out)?;
        }
        Format::Table | Format::Wide => {
            // Notes are written by whoever may create Events: never raw to a terminal.
            let out = &mut crate::output::SafeText(&mut *out);
            if !*header {
                *header = true;
                writeln!(out, "{:<32} {:<20} {:<40} {:<16} {:>5} MESSAGE", "TIME", "NODE", "POD", "CONTAINER", "COUNT")?;
            }
            let pod = match (&k.namespace, &k.pod) {
                (Some(ns), Some(p)) => format!("{ns}/{p}"),
                _ => format!("(node {})", k.node.as_deref().unwrap_or("-")),
            };
            writeln!(
                out,
                "{:<32} {:<20} {:<40} {:<16} {:>5} {}",
                k.time,
                k.node.as_deref().unwrap_or("-"),
                pod,
                k.container.as_deref().unwrap_or("-"),
                k.count,
                k.message
            )?;
        }
    }
    out.flush()
}

/// Whether this kill (Event uid, count) was not seen yet; remembers it.
fn first_time(shown: &mut HashMap<String, i32>, uid: String, k: &ClusterKill) -> bool {
    if shown.get(&uid).is_some_and(|c| *c >= k.count) {
        return false;
    }
    shown.insert(uid, k.count);
    true
}

/// 401 or 403 from the API server.
fn denied(e: &watcher::Error) -> bool {
    use watcher::Error::*;
    matches!(
        e,
        InitialListFailed(kube::Error::Api(s)) | WatchStartFailed(kube::Error::Api(s)) | WatchFailed(kube::Error::Api(s))
            if s.code == 401 || s.code == 403
    )
}

pub async fn run(client: Client, filter: Filter, format: Format, since: Option<Duration>, count: Option<u64>) -> Result<()> {
    let api: Api<Event> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("reason={REASON}"));
    let mut stream = watcher(api, cfg).boxed();
    let mut out = std::io::stdout();
    let mut header = false;
    let mut printed = 0u64;
    // Per Event uid, the count already shown: a relist must not print kills twice.
    let mut shown: HashMap<String, i32> = HashMap::new();
    let mut initial: Vec<(String, ClusterKill)> = Vec::new();
    let mut synced = false;
    let cutoff = since.map(|d| {
        k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::try_from(d).unwrap_or_default()
    });
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    eprintln!("watching OOMKill Events across the cluster");
    loop {
        let ev = tokio::select! {
            ev = stream.next() => match ev {
                Some(ev) => ev,
                None => return Ok(()),
            },
            _ = sigint.recv() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
        };
        let ev = match ev {
            Ok(ev) => ev,
            // Retrying cannot fix credentials or RBAC: say so and stop.
            Err(e) if denied(&e) => bail!("watching OOMKill Events: {e} (check the kubeconfig's credentials and its RBAC: events.k8s.io events list/watch)"),
            Err(e) => {
                tracing::warn!("watching Events: {e} (retrying)");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut ready = Vec::new();
        match ev {
            watcher::Event::Init => initial.clear(),
            // A (re)list is kept until complete, then shown oldest first.
            watcher::Event::InitApply(e) => {
                let Some(k) = from_event(&e) else { continue };
                initial.push((e.metadata.uid.clone().unwrap_or_default(), k));
            }
            watcher::Event::Apply(e) => {
                let Some(k) = from_event(&e) else { continue };
                if first_time(&mut shown, e.metadata.uid.clone().unwrap_or_default(), &k) {
                    ready.push(k);
                }
            }
            watcher::Event::InitDone => {
                initial.sort_by_key(|(_, k)| k.at);
                for (uid, k) in initial.drain(..) {
                    // The first list shows the kills of --since; a relist, those missed meanwhile.
                    if first_time(&mut shown, uid, &k) && (synced || cutoff.is_some_and(|c| k.at.is_some_and(|at| at >= c))) {
                        ready.push(k);
                    }
                }
                synced = true;
            }
            watcher::Event::Delete(_) => {}
        }
        for k in ready {
            if !filter.matches(k.namespace.as_deref(), k.pod.as_deref(), k.container.as_deref()) {
                continue;
            }
            if let Err(e) = print(&mut out, format, &k, &mut header) {
                // The reader went away (`| head`): done, like the node view.
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    return Ok(());
                }
                return Err(e.into());
            }
            printed += 1;
            if count.is_some_and(|n| printed >= n) {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_become_rows() {
        let e: Event = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "api-1.1", "namespace": "shop", "uid": "u1", "annotations": {
                "oomtrace.io/container": "app", "oomtrace.io/pid": "4242", "oomtrace.io/comm": "python3",
                "oomtrace.io/limit-bytes": "2147483648", "oomtrace.io/usage-bytes": "2147483000"}},
            "eventTime": "2026-01-01T10:00:00.000000Z",
            "reason": "OOMKill", "reportingController": "oomtrace", "reportingInstance": "node-1",
            "action": "Killed", "type": "Warning",
            "regarding": {"kind": "Pod", "name": "api-1", "namespace": "shop", "apiVersion": "v1"},
            "note": "python3 (pid 4242) in container sidecar killed by the OOM killer: rss 1.9GiB",
            "series": {"count": 3, "lastObservedTime": "2026-01-01T10:05:00.000000Z"}
        }))
        .unwrap();
        let k = from_event(&e).unwrap();
        assert_eq!(k.namespace.as_deref(), Some("shop"));
        assert_eq!(k.pod.as_deref(), Some("api-1"));
        assert_eq!(k.container.as_deref(), Some("app"), "the annotation, never the note's text");
        assert_eq!((k.pid, k.comm.as_deref()), (Some(4242), Some("python3")));
        assert_eq!((k.limit_bytes, k.usage_bytes), (Some(2147483648), Some(2147483000)));
        assert_eq!(k.count, 3);
        assert!(k.time.starts_with("2026-01-01T10:05:00"));
        // Without annotations (an older daemon): kubelet's fieldPath names the container.
        let mut bare = e.clone();
        bare.metadata.annotations = None;
        bare.regarding.as_mut().unwrap().field_path = Some("spec.initContainers{migrate}".into());
        let k = from_event(&bare).unwrap();
        assert_eq!((k.container.as_deref(), k.pid, k.limit_bytes), (Some("migrate"), None, None));
        bare.regarding.as_mut().unwrap().field_path = None;
        assert_eq!(from_event(&bare).unwrap().container, None);
        let mut other = e.clone();
        other.reporting_controller = Some("kubelet".into());
        assert!(from_event(&other).is_none());
    }
}
