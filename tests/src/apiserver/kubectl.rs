//! What kubectl needs from a server beyond list and watch: the discovery documents (which
//! resources exist, in which group and version) and the server-side Table of Events that
//! `kubectl get events` prints, as kube-apiserver renders them.
use serde_json::{json, Value};

/// `GET /api`: the core group's versions.
pub(super) fn core_versions() -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"]})
}

/// `GET /apis`: the named groups this server serves.
pub(super) fn groups() -> Value {
    let v = json!({"groupVersion": "events.k8s.io/v1", "version": "v1"});
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [{"name": "events.k8s.io", "versions": [v], "preferredVersion": v}],
    })
}

fn resource(name: &str, kind: &str, verbs: &[&str], short: &[&str]) -> Value {
    json!({"name": name, "singularName": kind.to_lowercase(), "namespaced": true, "kind": kind,
           "verbs": verbs, "shortNames": short})
}

/// `GET /api/v1` or `GET /apis/events.k8s.io/v1`: the resources of that group version.
pub(super) fn resources(group_version: &str) -> Option<Value> {
    let events = resource("events", "Event", &["create", "get", "list", "patch", "watch"], &["ev"]);
    let list = match group_version {
        "v1" => vec![resource("pods", "Pod", &["get", "list", "watch"], &["po"]), events],
        "events.k8s.io/v1" => vec![events],
        _ => return None,
    };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": list}))
}

/// Whether the client asked for a Table (`Accept: application/json;as=Table;…`).
pub(super) fn wants_table(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.split(',').next().is_some_and(|first| first.contains("as=Table")))
}

/// kube-apiserver's short ages (apimachinery's `duration.HumanDuration`, to the hour).
fn age(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => match s % 60 {
            0 => format!("{}m", s / 60),
            r => format!("{}m{r}s", s / 60),
        },
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 8 * 3600 => match (s / 60) % 60 {
            0 => format!("{}h", s / 3600),
            m => format!("{}h{m}m", s / 3600),
        },
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// The age of `time` at `now` (seconds since the epoch).
fn since(time: &Value, now: i64) -> Option<String> {
    let t: k8s_openapi::jiff::Timestamp = time.as_str()?.parse().ok()?;
    Some(age(now.saturating_sub(t.as_second())))
}

/// Now, from the system clock: `Timestamp::now` needs jiff's `std` feature, which only some
/// builds of this crate unify in (the bench's does not).
fn now_secs() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    i64::try_from(now).unwrap_or(i64::MAX)
}

/// The Table of a list of core v1 Events, with kube-apiserver's Event columns and cells
/// (`LAST SEEN` says `(xN over …)` for a repeat), each row carrying the object's metadata
/// (kubectl takes the NAMESPACE column of `-A` from it).
pub(super) fn event_table(list: &Value) -> Value {
    let columns = [
        ("Last Seen", "string", 0),
        ("Type", "string", 0),
        ("Reason", "string", 0),
        ("Object", "string", 0),
        ("Subobject", "string", 1),
        ("Source", "string", 1),
        ("Message", "string", 0),
        ("First Seen", "string", 1),
        ("Count", "integer", 1),
        ("Name", "string", 1),
    ]
    .map(|(name, ty, priority)| json!({"name": name, "type": ty, "format": "", "description": "", "priority": priority}));
    // One clock reading for the whole table, so every row's age is taken at the same instant.
    let now = now_secs();
    let rows: Vec<Value> = list["items"].as_array().into_iter().flatten().map(|e| event_row(e, now)).collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": list["metadata"]["resourceVersion"]},
        "columnDefinitions": columns,
        "rows": rows,
    })
}

fn event_row(e: &Value, now: i64) -> Value {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let first = since(&e["eventTime"], now).or_else(|| since(&e["firstTimestamp"], now)).unwrap_or_else(|| "<unknown>".into());
    let (last, count) = match e["series"].as_object() {
        Some(series) => (since(&series["lastObservedTime"], now), series["count"].as_i64().unwrap_or(1)),
        None => (since(&e["lastTimestamp"], now), e["count"].as_i64().unwrap_or(1).max(1)),
    };
    let last = last.unwrap_or_else(|| first.clone());
    let interval = if count > 1 { format!("{last} (x{count} over {first})") } else { last };
    let involved = &e["involvedObject"];
    let object = format!("{}/{}", s(&involved["kind"]).to_lowercase(), s(&involved["name"]));
    let source = e["reportingComponent"]
        .as_str()
        .filter(|c| !c.is_empty())
        .map(|c| match e["reportingInstance"].as_str() {
            Some(i) if !i.is_empty() => format!("{c}, {i}"),
            _ => c.to_string(),
        })
        .unwrap_or_default();
    json!({
        "cells": [interval, s(&e["type"]), s(&e["reason"]), object, s(&involved["fieldPath"]), source,
                  s(&e["message"]).trim(), first, count, s(&e["metadata"]["name"])],
        "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": e["metadata"]},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(age(45), "45s");
        assert_eq!(age(150), "2m30s");
        assert_eq!(age(1800), "30m");
        assert_eq!(age(4 * 3600 + 60), "4h1m");
        assert_eq!(age(3 * 86400), "3d");
    }

    #[test]
    fn a_repeat_says_how_often() {
        // A fixed clock: with the system's, the ages move on whenever a second turns between
        // building the Event and rendering it (seen on a slow guest as "1s (x3 over 91s)").
        let now: k8s_openapi::jiff::Timestamp = "2026-12-03T10:00:00.5Z".parse().unwrap();
        let e = json!({"metadata": {"name": "a.1", "namespace": "shop"}, "type": "Warning", "reason": "OOMKill",
                       "eventTime": (now - k8s_openapi::jiff::SignedDuration::from_secs(90)).to_string(),
                       "series": {"count": 3, "lastObservedTime": now.to_string()},
                       "involvedObject": {"kind": "Pod", "name": "web-1"}, "message": "killed ",
                       "reportingComponent": "oomtrace", "reportingInstance": "n1"});
        let cells = &event_row(&e, now.as_second())["cells"];
        assert_eq!(cells[0], "0s (x3 over 90s)");
        assert_eq!((cells[3].as_str(), cells[5].as_str(), cells[6].as_str()), (Some("pod/web-1"), Some("oomtrace, n1"), Some("killed")));
        assert!(wants_table(Some("application/json;as=Table;v=v1;g=meta.k8s.io,application/json")));
        assert!(!wants_table(Some("application/json")));
    }
}
