//! `oomtrace report`: kills per owner and container over a window, with the last kill's limit,
//! trend, verdict and recommendation.
//!
//! Cluster-wide it reads the daemons' `OOMKill` Events (their annotations, never the note's
//! English); node-locally it reads a daemon's JSON lines (`kubectl logs` of the node's daemon,
//! or its log file on the node). Unlike kubectl's `OOMKilled`, it counts the kills of processes
//! that are not the container's PID 1.
use crate::cluster::{from_event, ClusterKill};
use crate::filter::{Filter, FilterArgs};
use crate::k8s::client::ClientArgs;
use crate::k8s::events::{annotation, REASON};
use crate::model::{OomKill, SCHEMA};
use crate::output::{human, Format, SafeText};
use anyhow::{bail, Context, Result};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

/// The schema of a report row (docs/owner_kills.schema.json).
pub const ROW_SCHEMA: &str = "oomtrace.owner_kills/v1";
/// Events listed per request, as kubectl pages.
const PAGE: u32 = 500;
/// One Job lookup; a report must not hang on a slow API server.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The window: kills of this last period (e.g. 1h, 7d).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub since: Duration,
    /// Output format (json: one object per owner and container, as JSON lines).
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub format: Format,
    /// Node-local: read the kills from a daemon's JSON lines (its log, or `oomtrace watch -o
    /// json`) instead of the cluster's Events; `-` reads standard input.
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
    /// Only kills on this node.
    #[arg(long)]
    pub node: Option<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub connection: ClientArgs,
}

/// A pod's workload.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Owner {
    pub kind: String,
    pub name: String,
}

/// One kill, or a series of kills of one container, from either source.
#[derive(Debug, Clone, PartialEq)]
pub struct Kill {
    /// The (last) kill.
    pub at: Timestamp,
    /// The first kill of the series.
    pub first_at: Timestamp,
    pub count: u64,
    pub node: Option<String>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container: Option<String>,
    pub comm: Option<String>,
    pub owner: Option<Owner>,
    pub figures: Figures,
}

/// What one kill said: the limit it hit, how usage moved, the verdict and what to change.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Figures {
    pub limit_bytes: Option<u64>,
    pub trend: Option<String>,
    pub growth_bytes_per_min: Option<u64>,
    pub verdict: Option<String>,
    pub recommendation: Option<String>,
    pub recommendation_reason: Option<String>,
    pub recommended_limit_bytes: Option<u64>,
}

impl Kill {
    /// From a daemon's Event (`None` for other Events and Events without a time).
    pub fn from_event(e: &Event) -> Option<Kill> {
        let ClusterKill { at, first_at, node, kind, namespace, pod, container, comm, limit_bytes, count, .. } = from_event(e)?;
        let note = |key: &str| e.metadata.annotations.as_ref()?.get(key).cloned();
        let at = at?;
        let owner = match (note(annotation::OWNER_KIND), note(annotation::OWNER_NAME)) {
            (Some(kind), Some(name)) => Some(Owner { kind, name }),
            _ => None,
        };
        let on_node = kind.as_deref() == Some("Node");
        Some(Kill {
            at,
            first_at: first_at.unwrap_or(at),
            count: u64::try_from(count).unwrap_or(1).max(1),
            owner: owner.or_else(|| bare(on_node, &node, &pod)),
            node,
            namespace,
            pod,
            container,
            comm,
            figures: Figures {
                limit_bytes,
                trend: note(annotation::TREND),
                growth_bytes_per_min: note(annotation::GROWTH_BYTES_PER_MIN).and_then(|g| g.parse().ok()),
                verdict: note(annotation::VERDICT),
                recommendation: note(annotation::RECOMMENDATION),
                recommendation_reason: note(annotation::RECOMMENDATION_REASON),
                recommended_limit_bytes: note(annotation::RECOMMENDED_LIMIT_BYTES).and_then(|b| b.parse().ok()),
            },
        })
    }

    /// From one kill as the daemon prints it.
    pub fn from_oom_kill(ev: &OomKill) -> Option<Kill> {
        let at: Timestamp = ev.time.parse().ok()?;
        let k = ev.k8s.as_ref();
        let pod = k.and_then(|k| k.pod.clone());
        let node = Some(ev.node.clone());
        let owner = k.and_then(|k| k.owner.as_ref()).map(|o| Owner { kind: o.kind.clone(), name: o.name.clone() });
        let rec = ev.oom.recommendation.as_ref();
        Some(Kill {
            at,
            first_at: at,
            count: 1,
            owner: owner.or_else(|| bare(k.is_none(), &node, &pod)),
            node,
            namespace: k.and_then(|k| k.namespace.clone()),
            pod,
            container: k.and_then(|k| k.container.clone()),
            comm: ev.victim.comm.clone(),
            figures: Figures {
                limit_bytes: ev.oom.limit_bytes,
                trend: ev.oom.trend.as_ref().map(|t| t.kind().to_string()),
                growth_bytes_per_min: match ev.oom.trend {
                    Some(crate::model::Trend::Leak { growth_bytes_per_min, .. }) => Some(growth_bytes_per_min),
                    _ => None,
                },
                verdict: ev.verdict.clone(),
                recommendation: rec.map(|r| r.action.clone()),
                recommendation_reason: rec.map(|r| r.reason.clone()),
                recommended_limit_bytes: rec.and_then(|r| r.limit_bytes),
            },
        })
    }
}

/// The owner of a kill with no workload: the bare Pod, or the Node for a process outside any
/// pod. A pod that could not be named has none.
fn bare(on_node: bool, node: &Option<String>, pod: &Option<String>) -> Option<Owner> {
    if on_node {
        return node.clone().map(|name| Owner { kind: "Node".into(), name });
    }
    pod.clone().map(|name| Owner { kind: "Pod".into(), name })
}

/// One owner's (and container's) kills in the window: a report row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OwnerKills {
    pub schema: &'static str,
    pub namespace: Option<String>,
    /// `null`: a pod the daemon could not name.
    pub owner: Option<Owner>,
    pub container: Option<String>,
    /// The process name, for kills outside any pod (owner `Node`).
    pub process: Option<String>,
    pub kills: u64,
    /// A series of kills began before the window: `kills` counts its last one only.
    pub kills_at_least: bool,
    pub pods: u64,
    pub nodes: Vec<String>,
    /// The last kill (RFC 3339), and what it said.
    pub last_kill: String,
    pub last_pod: Option<String>,
    #[serde(flatten)]
    pub figures: Figures,
    #[serde(skip)]
    at: Timestamp,
}

type Key = (Option<String>, Option<Owner>, Option<String>, Option<String>);

/// The kills since `cutoff`, one row per owner and container, most kills first.
pub fn group(kills: &[Kill], cutoff: Timestamp) -> Vec<OwnerKills> {
    let mut groups: BTreeMap<Key, (OwnerKills, BTreeSet<String>)> = BTreeMap::new();
    let mut sorted: Vec<&Kill> = kills.iter().filter(|k| k.at >= cutoff).collect();
    sorted.sort_by_key(|k| k.at);
    for k in sorted {
        let on_node = k.owner.as_ref().is_some_and(|o| o.kind == "Node");
        let process = if on_node { k.comm.clone() } else { None };
        let key = (k.namespace.clone(), k.owner.clone(), k.container.clone(), process.clone());
        let (row, pods) = groups.entry(key).or_insert_with(|| {
            let row = OwnerKills {
                schema: ROW_SCHEMA,
                namespace: k.namespace.clone(),
                owner: k.owner.clone(),
                container: k.container.clone(),
                process,
                kills: 0,
                kills_at_least: false,
                pods: 0,
                nodes: Vec::new(),
                last_kill: String::new(),
                last_pod: None,
                figures: Figures::default(),
                at: k.at,
            };
            (row, BTreeSet::new())
        });
        let whole = k.first_at >= cutoff;
        row.kills = row.kills.saturating_add(if whole { k.count } else { 1 });
        row.kills_at_least |= !whole && k.count > 1;
        if let Some(p) = &k.pod {
            pods.insert(p.clone());
        }
        if let Some(n) = k.node.as_ref().filter(|n| !row.nodes.contains(n)) {
            row.nodes.push(n.clone());
        }
        // In time order: the last kill's figures win.
        row.at = k.at;
        row.last_kill = k.at.to_string();
        row.last_pod = k.pod.clone();
        row.figures = k.figures.clone();
    }
    let mut rows: Vec<OwnerKills> = groups
        .into_values()
        .map(|(mut row, pods)| {
            row.pods = pods.len() as u64;
            row.nodes.sort();
            row
        })
        .collect();
    rows.sort_by(|a, b| b.kills.cmp(&a.kills).then(b.at.cmp(&a.at)));
    rows
}

/// The kills in a daemon's JSON lines; lines that are not oomtrace records are counted.
pub fn read_lines(input: impl BufRead) -> Result<(Vec<Kill>, u64)> {
    let mut kills = Vec::new();
    let mut foreign = 0u64;
    for line in input.lines() {
        let line = line.context("reading the kills")?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        // `kubectl logs --timestamps` puts the time before the object.
        let json = line.find('{').map_or(line, |i| &line[i..]);
        let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
            foreign += 1;
            continue;
        };
        match v.get("schema").and_then(|s| s.as_str()) {
            Some(SCHEMA) => match serde_json::from_value::<OomKill>(v).ok().as_ref().and_then(Kill::from_oom_kill) {
                Some(k) => kills.push(k),
                None => foreign += 1,
            },
            Some(s) if s.starts_with("oomtrace.") => {}
            _ => foreign += 1,
        }
    }
    Ok((kills, foreign))
}

/// Every `OOMKill` Event oomtrace published (in `namespace`, else everywhere), page by page.
async fn list_events(client: &kube::Client, namespace: Option<&str>) -> Result<Vec<Kill>> {
    let api: Api<Event> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut kills = Vec::new();
    let mut params = ListParams::default().fields(&format!("reason={REASON}")).limit(PAGE);
    loop {
        let page = match api.list(&params).await {
            Ok(page) => page,
            Err(kube::Error::Api(s)) if s.code == 401 || s.code == 403 => bail!(
                "listing OOMKill Events: {} (check the kubeconfig's credentials and its RBAC: events.k8s.io events list)",
                s.message
            ),
            Err(e) => bail!("listing OOMKill Events: {e}"),
        };
        kills.extend(page.items.iter().filter_map(Kill::from_event));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(kills),
        }
    }
}

/// Job → CronJob: a Job's owner is read from the API (nothing on the pod proves a CronJob made
/// it). A Job that is gone, or that RBAC hides, stays a Job.
async fn resolve_jobs(client: &kube::Client, mut kills: Vec<Kill>) -> Vec<Kill> {
    let mut resolved: HashMap<(String, String), Option<Owner>> = HashMap::new();
    let mut warned = false;
    for k in kills.iter_mut() {
        let (Some(ns), Some(owner)) = (&k.namespace, &k.owner) else { continue };
        if owner.kind != "Job" {
            continue;
        }
        let key = (ns.clone(), owner.name.clone());
        if !resolved.contains_key(&key) {
            let api: Api<Job> = Api::namespaced(client.clone(), ns);
            let cronjob = match tokio::time::timeout(LOOKUP_TIMEOUT, api.get_opt(&owner.name)).await {
                Ok(Ok(job)) => job.and_then(|j| cronjob_of(&j)),
                Ok(Err(e)) => {
                    if !std::mem::replace(&mut warned, true) {
                        tracing::warn!("reading Job {ns}/{}: {e} (Jobs are reported as Jobs, not CronJobs)", owner.name);
                    }
                    None
                }
                Err(_) => None,
            };
            resolved.insert(key.clone(), cronjob);
        }
        if let Some(Some(cronjob)) = resolved.get(&key) {
            k.owner = Some(cronjob.clone());
        }
    }
    kills
}

/// The CronJob controlling a Job, from its owner references.
fn cronjob_of(job: &Job) -> Option<Owner> {
    let refs = job.metadata.owner_references.as_ref()?;
    let r = refs.iter().find(|r| r.controller == Some(true))?;
    (r.kind == "CronJob" && r.api_version.starts_with("batch/")).then(|| Owner { kind: "CronJob".into(), name: r.name.clone() })
}

/// `5s`, `12m`, `3h`, `2d`, as kubectl's AGE column.
fn age(d: SignedDuration) -> String {
    let s = d.as_secs().max(0);
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// The table's cells for one row (`wide`: also pods, nodes and the verdict).
fn cells(r: &OwnerKills, now: Timestamp, wide: bool) -> Vec<String> {
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let owner = r.owner.as_ref().map_or_else(|| "(unnamed pod)".into(), |o| format!("{}/{}", o.kind, o.name));
    let container = match (&r.container, &r.process) {
        (Some(c), _) => c.clone(),
        (None, Some(p)) => format!("(process {p})"),
        (None, None) => "-".into(),
    };
    let kills = if r.kills_at_least { format!("{}+", r.kills) } else { r.kills.to_string() };
    let mut row = vec![
        dash(&r.namespace),
        owner,
        container,
        kills,
        age(now.duration_since(r.at)),
        human(r.figures.limit_bytes),
        dash(&r.figures.trend),
        dash(&r.figures.recommendation),
    ];
    if wide {
        row.extend([r.pods.to_string(), if r.nodes.is_empty() { "-".into() } else { r.nodes.join(",") }, dash(&r.figures.verdict)]);
    }
    row
}

/// The rows as a table, columns as wide as their widest cell (kubectl's layout).
pub fn table(rows: &[OwnerKills], now: Timestamp, wide: bool) -> String {
    let mut head = vec!["NAMESPACE", "OWNER", "CONTAINER", "KILLS", "LAST", "LIMIT", "TREND", "RECOMMENDATION"];
    if wide {
        head.extend(["PODS", "NODES", "VERDICT"]);
    }
    let mut lines: Vec<Vec<String>> = vec![head.iter().map(|h| h.to_string()).collect()];
    lines.extend(rows.iter().map(|r| cells(r, now, wide)));
    let widths: Vec<usize> =
        (0..head.len()).map(|i| lines.iter().map(|l| l[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for l in &lines {
        let last = l.len() - 1;
        for (i, cell) in l.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            }
        }
        out.push('\n');
    }
    out
}

pub async fn run(args: ReportArgs) -> Result<()> {
    let filter = Filter::new(&args.filter)?;
    let now = Timestamp::now();
    let window = SignedDuration::try_from(args.since).context("--since is too long")?;
    let cutoff = now.checked_sub(window).unwrap_or(Timestamp::MIN);
    let (mut kills, client) = match &args.file {
        Some(path) => {
            let (kills, foreign) = if path.as_os_str() == "-" {
                read_lines(std::io::stdin().lock())?
            } else {
                let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
                read_lines(std::io::BufReader::new(f))?
            };
            if foreign > 0 {
                tracing::warn!("{foreign} lines were not oomtrace kill records (skipped)");
            }
            // With a kubeconfig at hand, Jobs still resolve to their CronJobs.
            let client = args.connection.client().await.unwrap_or_else(|e| {
                tracing::warn!("{e:#} (Jobs are reported as Jobs, not CronJobs)");
                None
            });
            (kills, client)
        }
        None => {
            let Some(client) = args.connection.client().await? else {
                bail!("report needs a Kubernetes config (--kubeconfig, $KUBECONFIG or ~/.kube/config), or --file for a daemon's JSON lines");
            };
            (list_events(&client, args.filter.namespace.as_deref()).await?, Some(client))
        }
    };
    // Before any Job is looked up: only the kills the report shows.
    kills.retain(|k| {
        k.at >= cutoff
            && filter.matches(k.namespace.as_deref(), k.pod.as_deref(), k.container.as_deref())
            && args.node.as_ref().is_none_or(|n| k.node.as_ref() == Some(n))
    });
    if let Some(client) = &client {
        kills = resolve_jobs(client, kills).await;
    }
    let rows = group(&kills, cutoff);
    let mut out = std::io::stdout().lock();
    let written = match args.format {
        Format::Json => rows.iter().try_for_each(|r| {
            serde_json::to_writer(&mut out, r)?;
            writeln!(out)
        }),
        Format::Table | Format::Wide if rows.is_empty() => {
            writeln!(std::io::stderr(), "no OOM kills in the last {}", humantime::format_duration(args.since))
        }
        // Names and notes come from whoever may create pods and Events: never raw to a terminal.
        Format::Table | Format::Wide => SafeText(&mut out).write_all(table(&rows, now, args.format == Format::Wide).as_bytes()),
    };
    match written.and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn kill(time: &str, pod: &str, owner: Option<(&str, &str)>, count: u64) -> Kill {
        Kill {
            at: at(time),
            first_at: at(time),
            count,
            node: Some("node-1".into()),
            namespace: Some("shop".into()),
            pod: Some(pod.into()),
            container: Some("app".into()),
            comm: Some("java".into()),
            owner: owner.map(|(kind, name)| Owner { kind: kind.into(), name: name.into() }),
            figures: Figures {
                limit_bytes: Some(512 << 20),
                trend: Some("steady".into()),
                verdict: Some("the container's limit was hit".into()),
                ..Default::default()
            },
        }
    }

    #[test]
    fn kills_group_per_owner_and_container_with_the_last_kills_figures() {
        let mut late = kill("2026-01-01T11:00:00Z", "api-2", Some(("Deployment", "api")), 1);
        late.figures.trend = Some("at_limit".into());
        late.figures.recommendation = Some("raise the limit to at least 640.0MiB".into());
        let mut other_container = kill("2026-01-01T10:30:00Z", "api-1", Some(("Deployment", "api")), 1);
        other_container.container = Some("sidecar".into());
        let kills = vec![
            late,
            kill("2026-01-01T10:00:00Z", "api-1", Some(("Deployment", "api")), 2),
            other_container,
            kill("2026-01-01T09:00:00Z", "debug", Some(("Pod", "debug")), 1),
            kill("2025-12-30T09:00:00Z", "old", Some(("Pod", "old")), 5),
        ];
        let rows = group(&kills, at("2026-01-01T00:00:00Z"));
        let summary: Vec<_> = rows
            .iter()
            .map(|r| (r.owner.as_ref().unwrap().name.as_str(), r.container.as_deref().unwrap(), r.kills, r.pods))
            .collect();
        assert_eq!(summary, [("api", "app", 3, 2), ("api", "sidecar", 1, 1), ("debug", "app", 1, 1)], "the old kill is outside the window");
        let api = &rows[0];
        assert_eq!(api.last_kill, "2026-01-01T11:00:00Z");
        assert_eq!(api.last_pod.as_deref(), Some("api-2"));
        assert_eq!(api.figures.trend.as_deref(), Some("at_limit"));
        assert_eq!(api.figures.recommendation.as_deref(), Some("raise the limit to at least 640.0MiB"));
        assert!(!api.kills_at_least);
    }

    #[test]
    fn a_series_begun_before_the_window_counts_its_last_kill_only() {
        let mut k = kill("2026-01-01T10:00:00Z", "api-1", Some(("Deployment", "api")), 4);
        k.first_at = at("2026-01-01T08:00:00Z");
        let rows = group(std::slice::from_ref(&k), at("2026-01-01T09:00:00Z"));
        assert_eq!((rows[0].kills, rows[0].kills_at_least), (1, true));
        let rows = group(&[k], at("2026-01-01T07:00:00Z"));
        assert_eq!((rows[0].kills, rows[0].kills_at_least), (4, false));
    }

    #[test]
    fn events_give_owner_trend_and_recommendation_from_annotations() {
        let e: Event = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "api-1.1", "namespace": "shop", "annotations": {
                "oomtrace.io/container": "app", "oomtrace.io/comm": "java",
                "oomtrace.io/limit-bytes": "536870912", "oomtrace.io/owner-kind": "StatefulSet",
                "oomtrace.io/owner-name": "db", "oomtrace.io/trend": "leak",
                "oomtrace.io/growth-bytes-per-min": "4194304", "oomtrace.io/verdict": "the container's limit was hit",
                "oomtrace.io/recommendation": "find the leak", "oomtrace.io/recommendation-reason": "grew steadily"}},
            "eventTime": "2026-01-01T10:00:00.000000Z",
            "reason": "OOMKill", "reportingController": "oomtrace", "reportingInstance": "node-1",
            "regarding": {"kind": "Pod", "name": "db-0", "namespace": "shop", "apiVersion": "v1"},
            "note": "ignored: English for people",
            "series": {"count": 3, "lastObservedTime": "2026-01-01T10:05:00.000000Z"}
        }))
        .unwrap();
        let k = Kill::from_event(&e).unwrap();
        assert_eq!(k.owner, Some(Owner { kind: "StatefulSet".into(), name: "db".into() }));
        assert_eq!((k.first_at, k.at, k.count), (at("2026-01-01T10:00:00Z"), at("2026-01-01T10:05:00Z"), 3));
        assert_eq!((k.figures.trend.as_deref(), k.figures.growth_bytes_per_min), (Some("leak"), Some(4 << 20)));
        assert_eq!(k.figures.recommendation.as_deref(), Some("find the leak"));
        // No owner annotation: a bare pod; a kill on the Node: the node.
        let mut bare = e.clone();
        bare.metadata.annotations.as_mut().unwrap().retain(|k, _| !k.starts_with("oomtrace.io/owner"));
        assert_eq!(Kill::from_event(&bare).unwrap().owner, Some(Owner { kind: "Pod".into(), name: "db-0".into() }));
        let mut node = bare.clone();
        node.regarding = Some(k8s_openapi::api::core::v1::ObjectReference { kind: Some("Node".into()), name: Some("node-1".into()), ..Default::default() });
        let k = Kill::from_event(&node).unwrap();
        assert_eq!((k.owner.unwrap().kind.as_str(), k.namespace, k.container), ("Node", None, None));
    }

    #[test]
    fn json_lines_give_the_kills_and_count_what_is_not_one() {
        let mut ev = crate::model::test_kill(serde_json::json!({
            "k8s": {"resolved": true, "namespace": "shop", "pod": "backup-29000000-x", "container": "dump",
                    "owner": {"kind": "Job", "name": "backup-29000000"}, "cgroup_level": "container", "pod_deleted": false}
        }));
        ev.time = "2026-01-01T10:00:00.123456789Z".into();
        let line = serde_json::to_string(&ev).unwrap();
        let input = format!(
            "{line}\n2026-01-01T10:00:01Z {line}\n\n{{\"schema\":\"oomtrace.memory_pressure/v1\"}}\nnot json\n{{\"schema\":\"x\"}}\n"
        );
        let (kills, foreign) = read_lines(input.as_bytes()).unwrap();
        assert_eq!((kills.len(), foreign), (2, 2), "the pressure record is oomtrace's own; the other two are foreign");
        assert_eq!(kills[0].owner, Some(Owner { kind: "Job".into(), name: "backup-29000000".into() }));
        assert_eq!(kills[0].at, at("2026-01-01T10:00:00.123456789Z"));
    }

    #[test]
    fn a_cronjob_owns_a_job_only_by_its_controller_reference() {
        let job = |kind: &str, controller: bool| -> Job {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "backup-1", "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": kind, "name": "backup", "uid": "u", "controller": controller}]}}))
            .unwrap()
        };
        assert_eq!(cronjob_of(&job("CronJob", true)), Some(Owner { kind: "CronJob".into(), name: "backup".into() }));
        assert_eq!(cronjob_of(&job("CronJob", false)), None);
        assert_eq!(cronjob_of(&job("Workflow", true)), None);
    }

    #[test]
    fn the_table_aligns_columns_and_marks_partial_counts() {
        let mut k = kill("2026-01-01T10:00:00Z", "api-1", Some(("Deployment", "api")), 3);
        k.first_at = at("2026-01-01T08:00:00Z");
        let mut node = kill("2026-01-01T09:00:00Z", "", Some(("Node", "node-1")), 1);
        (node.namespace, node.pod, node.container, node.figures.limit_bytes, node.figures.trend) = (None, None, None, None, None);
        let rows = group(&[k, node], at("2026-01-01T09:00:00Z"));
        let t = table(&rows, at("2026-01-01T10:05:00Z"), false);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "NAMESPACE   OWNER            CONTAINER        KILLS   LAST   LIMIT      TREND    RECOMMENDATION");
        assert_eq!(lines[1], "shop        Deployment/api   app              1+      5m     512.0MiB   steady   -");
        assert_eq!(lines[2], "-           Node/node-1      (process java)   1       65m    -          -        -");
        let wide = table(&rows, at("2026-01-01T10:05:00Z"), true);
        let wide: Vec<&str> = wide.lines().collect();
        assert!(wide[0].ends_with("RECOMMENDATION   PODS   NODES    VERDICT"), "{}", wide[0]);
        assert!(wide[1].ends_with("-                1      node-1   the container's limit was hit"), "{}", wide[1]);
    }

    #[test]
    fn ages_read_like_kubectl() {
        let d = SignedDuration::from_secs;
        assert_eq!([age(d(59)), age(d(119)), age(d(120)), age(d(7199)), age(d(7200)), age(d(200_000))], ["59s", "119s", "2m", "119m", "2h", "2d"]);
    }
}
