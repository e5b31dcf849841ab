//! Node-local pod index: attributes an OOM kill (pod UID / container ID taken from the
//! victim's cgroup path) to a pod and container, even shortly after the pod is gone.
//!
//! # How it works
//!
//! * A [`kube::runtime::watcher`] lists and watches the Pods scheduled on this node
//!   (`fieldSelector=spec.nodeName=<node>`, all namespaces). The watcher uses kube's default
//!   `ListWatch` strategy (paginated LIST, then WATCH from the list's `resourceVersion` with
//!   bookmarks) and [`default_backoff`](kube::runtime::WatchStreamExt::default_backoff), so
//!   it survives API server outages; a `410 Gone` on a stale `resourceVersion` makes the
//!   watcher relist (that is kube's own logic, left untouched here).
//! * The watch events are reflected into our own store instead of kube's
//!   [`reflector::Store`](kube::runtime::reflector::Store): that store keeps whole `Pod`
//!   objects and has neither secondary indexes nor tombstones. We keep a compact [`PodInfo`]
//!   per pod, indexed by pod UID and by container ID, with the same relist semantics as the
//!   reflector (the objects of a relist are buffered between `Init` and `InitDone`, then
//!   swapped in atomically; pods that are not in the relist are treated as deleted).
//! * Deleted pods become *tombstones*: their last known [`PodInfo`] (with `deleted: true`)
//!   stays resolvable for a TTL (default [`DEFAULT_TOMBSTONE_TTL`]), so a kill that races the
//!   pod's deletion still resolves. At most `max_tombstones` (default
//!   [`DEFAULT_MAX_TOMBSTONES`]) are kept, the oldest deletion being evicted first. Expired
//!   tombstones are never returned, and are pruned on every event and on a timer.
//!
//! # Container IDs
//!
//! Container IDs are indexed bare (the `<runtime>://` prefix of `status.*containerStatuses[]
//! .containerID` is stripped, see [`bare_container_id`]). Besides the current ID of every
//! container (regular, init and ephemeral), the index also resolves:
//! * `lastState.terminated.containerID`, i.e. the previous instance of a restarted container:
//!   a container killed by the OOM killer is usually restarted by the kubelet right away;
//! * up to [`MAX_RETIRED_IDS_PER_POD`] IDs that a pod's containers had in earlier updates.
//!
//! A lookup through such an older ID returns the container as it is *now* (its
//! [`ContainerInfo::id`] is the current ID).
//!
//! # Memory figures
//!
//! [`ContainerInfo::limits_memory_bytes`] / [`ContainerInfo::requests_memory_bytes`] come from
//! `status.containerStatuses[].resources` when the kubelet reports them (the values actually
//! enacted, which differ from the spec after an in-place resize), else from the pod spec.
//!
//! # Owner resolution
//!
//! See [`resolve_owner`]: the controlling owner reference is reported, except that a
//! ReplicaSet is reported as its Deployment when the naming rule proves the relation. Jobs are
//! *not* resolved to CronJobs (see [`resolve_owner`] for why).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    path::Path,
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, ResourceRequirements};
use kube::{
    api::Api,
    runtime::{watcher, WatchStreamExt},
    Client,
};
use serde::Serialize;

/// Default time a deleted pod stays resolvable.
pub const DEFAULT_TOMBSTONE_TTL: Duration = Duration::from_secs(10 * 60);
/// Default maximum number of tombstones kept; the oldest deletion is evicted first.
pub const DEFAULT_MAX_TOMBSTONES: usize = 10_000;
/// Maximum number of former container IDs (beyond `lastState`) remembered per pod.
pub const MAX_RETIRED_IDS_PER_POD: usize = 16;

/// What the index knows about a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// `spec.nodeName`.
    pub node: Option<String>,
    /// `status.qosClass`: `Guaranteed`, `Burstable` or `BestEffort`.
    pub qos_class: Option<String>,
    /// The controlling owner, see [`resolve_owner`].
    pub owner: Option<Owner>,
    pub containers: Vec<ContainerInfo>,
    /// The pod was deleted (this is a tombstone).
    pub deleted: bool,
}

/// A pod's owner (workload).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Owner {
    /// `Deployment`, `ReplicaSet`, `StatefulSet`, `DaemonSet`, `Job`, `Node` (static pods)...
    pub kind: String,
    pub name: String,
}

/// The kind of a container within its pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum ContainerKind {
    Init,
    Regular,
    Ephemeral,
}

/// What the index knows about one container of a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerInfo {
    pub name: String,
    /// Current container ID, bare (no `containerd://` prefix); `None` before it started.
    pub id: Option<String>,
    pub kind: ContainerKind,
    pub limits_memory_bytes: Option<u64>,
    pub requests_memory_bytes: Option<u64>,
}

// ---------------------------------------------------------------------------------------------
// Environment helpers
// ---------------------------------------------------------------------------------------------

/// The name of this node: `NODE_NAME` (set it from the downward API, `spec.nodeName`, in the
/// DaemonSet: the hostname is not always the node name), falling back to the hostname.
pub fn node_name() -> Option<String> {
    if let Ok(name) = std::env::var("NODE_NAME") {
        let name = name.trim();
        if !name.is_empty() {
            return Some(name.to_string());
        }
    }
    hostname()
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for `buf.len()` bytes; gethostname NUL-terminates on success
    // when the name fits, and we never read past the buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        if let Ok(name) = std::str::from_utf8(&buf[..end]) {
            let name = name.trim();
            if !name.is_empty() {
                return Some(name.to_string());
            }
        }
    }
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// A Kubernetes client from the environment ([`kube::Config::infer`]: `KUBECONFIG` or
/// `~/.kube/config`, else the in-cluster service account).
///
/// Returns `Ok(None)` (and logs it once at info) when there is no Kubernetes configuration at
/// all: no `KUBECONFIG`, no `~/.kube/config`, no `KUBERNETES_SERVICE_HOST`. Errors only when a
/// configuration exists but cannot be loaded.
pub async fn client_from_env() -> anyhow::Result<Option<Client>> {
    let kubeconfig_env = std::env::var_os("KUBECONFIG")
        .map(|v| std::env::split_paths(&v).any(|p| !p.as_os_str().is_empty()))
        .unwrap_or(false);
    let default_kubeconfig = std::env::home_dir()
        .map(|h| h.join(".kube").join("config").exists())
        .unwrap_or(false);
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|v| !v.is_empty());
    if !kubeconfig_env && !default_kubeconfig && !in_cluster {
        tracing::info!(
            "no Kubernetes config found (no KUBECONFIG, not in a cluster): running without pod attribution"
        );
        return Ok(None);
    }
    let config = kube::Config::infer()
        .await
        .map_err(|e| anyhow::anyhow!("loading the Kubernetes client configuration: {e}"))?;
    let client = Client::try_from(config)
        .map_err(|e| anyhow::anyhow!("creating the Kubernetes client: {e}"))?;
    Ok(Some(client))
}

/// A Kubernetes client from an explicit kubeconfig file (its current context), without
/// looking at the process environment.
pub async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .map_err(|e| anyhow::anyhow!("reading kubeconfig {}: {e}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("loading kubeconfig {}: {e}", path.display()))?;
    Client::try_from(config).map_err(|e| anyhow::anyhow!("creating the Kubernetes client: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Pure helpers: quantities, container IDs, owners, Pod -> PodInfo
// ---------------------------------------------------------------------------------------------

/// Parses a Kubernetes resource quantity (`"128Mi"`, `"1Gi"`, `"1G"`, `"500M"`, `"1e9"`,
/// `"123456"`, `"0.5Gi"`, `"100k"`, `"1.5E3"`...) into a whole number of bytes, rounding a
/// fractional result up like Kubernetes' `Quantity.Value()` does.
///
/// Returns `None` for anything that is not a valid non-negative quantity, or does not fit
/// in a `u64`. Leading/trailing whitespace is tolerated.
pub fn parse_memory_quantity(s: &str) -> Option<u64> {
    let s = s.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(num_end);
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => {
            if f.contains('.') {
                return None;
            }
            (i, f)
        }
        None => (number, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    let int_part = int_part.trim_start_matches('0');
    let frac_part = frac_part.trim_end_matches('0');
    let mut mantissa: u128 = 0;
    for c in int_part.bytes().chain(frac_part.bytes()) {
        mantissa = mantissa
            .checked_mul(10)?
            .checked_add(u128::from(c - b'0'))?;
    }
    let frac_len = i32::try_from(frac_part.len()).ok()?;

    let (pow2, mut pow10): (u32, i32) = match suffix {
        "" => (0, 0),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        _ => {
            // Decimal exponent: e3, E-2, e+6.
            let exp = suffix.strip_prefix(['e', 'E'])?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            (0, exp.parse::<i32>().ok()?)
        }
    };
    pow10 -= frac_len;
    if mantissa == 0 {
        return Some(0);
    }
    let scaled = mantissa.checked_mul(1u128.checked_shl(pow2)?)?;
    let bytes = if pow10 >= 0 {
        scaled.checked_mul(10u128.checked_pow(pow10.unsigned_abs())?)?
    } else {
        match 10u128.checked_pow(pow10.unsigned_abs()) {
            // ceil(scaled / div); scaled > 0.
            Some(div) => (scaled - 1) / div + 1,
            // A divisor beyond u128: the value is a positive amount below one byte.
            None => 1,
        }
    };
    u64::try_from(bytes).ok()
}

/// The bare container ID of a `status.containerStatuses[].containerID`: strips the
/// `<runtime>://` prefix (`containerd://`, `cri-o://`, `docker://`, or any other scheme).
/// Returns `None` for an empty ID.
pub fn bare_container_id(id: &str) -> Option<&str> {
    let id = id.trim();
    let id = match id.split_once("://") {
        Some((scheme, rest))
            if !scheme.is_empty()
                && scheme.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'+' | b'_')
                }) =>
        {
            rest
        }
        _ => id,
    };
    (!id.is_empty()).then_some(id)
}

/// The owner reported for a pod.
///
/// The controlling owner reference (`controller: true`, else the first one) is used, with
/// one resolution:
///
/// * **ReplicaSet → Deployment**: a ReplicaSet created by a Deployment is named
///   `<deployment>-<pod-template-hash>`, and its pods carry the label
///   `pod-template-hash=<pod-template-hash>`. When the owner is a ReplicaSet (API group
///   `apps`) whose name ends with `-` + the pod's `pod-template-hash` label value, the owner
///   is reported as `Deployment/<deployment>`. Otherwise (no label, label mismatch, a
///   hand-made ReplicaSet) it stays `ReplicaSet/<name>`.
///
/// **Job → CronJob is not resolved**: a CronJob names its Jobs `<cronjob>-<scheduled time in
/// minutes>`, but nothing on the pod proves the Job was created by a CronJob (only the Job's
/// own owner references do, which would need reading Jobs from the API). A hand-made Job
/// named `backup-20240101` would be misattributed, so Jobs are reported as Jobs.
pub fn resolve_owner(pod: &Pod) -> Option<Owner> {
    let refs = pod.metadata.owner_references.as_deref()?;
    let owner = refs
        .iter()
        .find(|r| r.controller == Some(true))
        .or_else(|| refs.first())?;
    if owner.kind == "ReplicaSet" && owner.api_version.starts_with("apps/") {
        let hash = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-template-hash"))
            .filter(|h| !h.is_empty());
        if let Some(hash) = hash {
            if let Some(deployment) = owner
                .name
                .strip_suffix(hash.as_str())
                .and_then(|n| n.strip_suffix('-'))
                .filter(|n| !n.is_empty())
            {
                return Some(Owner {
                    kind: "Deployment".to_string(),
                    name: deployment.to_string(),
                });
            }
        }
    }
    Some(Owner {
        kind: owner.kind.clone(),
        name: owner.name.clone(),
    })
}

fn memory_of(res: Option<&ResourceRequirements>, limits: bool) -> Option<u64> {
    let res = res?;
    let map = if limits {
        res.limits.as_ref()
    } else {
        res.requests.as_ref()
    }?;
    parse_memory_quantity(&map.get("memory")?.0)
}

/// A pod converted for the index: its info and every container ID (current, `lastState`)
/// mapped to the index of its container in `info.containers`.
#[derive(Debug, Clone)]
struct Entry {
    info: PodInfo,
    ids: Vec<(String, usize)>,
}

/// Converts a Pod into a [`PodInfo`] (`deleted: false`). `None` when the pod has no UID.
pub fn pod_info(pod: &Pod) -> Option<PodInfo> {
    entry_from_pod(pod).map(|e| e.info)
}

fn entry_from_pod(pod: &Pod) -> Option<Entry> {
    let uid = pod.metadata.uid.clone().filter(|u| !u.is_empty())?;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let mut containers = Vec::new();
    let mut ids = Vec::new();

    let mut add = |kind: ContainerKind,
                   specs: Vec<(&str, Option<&ResourceRequirements>)>,
                   statuses: Option<&Vec<ContainerStatus>>| {
        let statuses: &[ContainerStatus] = statuses.map(Vec::as_slice).unwrap_or(&[]);
        let mut names: Vec<&str> = specs.iter().map(|(n, _)| *n).collect();
        // A status without a spec entry should not happen; keep it anyway.
        for st in statuses {
            if !names.contains(&st.name.as_str()) {
                names.push(st.name.as_str());
            }
        }
        for name in names {
            let spec_res = specs.iter().find(|(n, _)| *n == name).and_then(|(_, r)| *r);
            let st = statuses.iter().find(|s| s.name == name);
            let status_res = st.and_then(|s| s.resources.as_ref());
            let idx = containers.len();
            let id = st
                .and_then(|s| s.container_id.as_deref())
                .and_then(bare_container_id)
                .map(str::to_string);
            if let Some(id) = &id {
                ids.push((id.clone(), idx));
            }
            if let Some(prev) = st
                .and_then(|s| s.last_state.as_ref())
                .and_then(|s| s.terminated.as_ref())
                .and_then(|t| t.container_id.as_deref())
                .and_then(bare_container_id)
            {
                if Some(prev) != id.as_deref() {
                    ids.push((prev.to_string(), idx));
                }
            }
            containers.push(ContainerInfo {
                name: name.to_string(),
                id,
                kind,
                limits_memory_bytes: memory_of(status_res, true)
                    .or_else(|| memory_of(spec_res, true)),
                requests_memory_bytes: memory_of(status_res, false)
                    .or_else(|| memory_of(spec_res, false)),
            });
        }
    };

    add(
        ContainerKind::Init,
        spec.and_then(|s| s.init_containers.as_ref())
            .map(|v| {
                v.iter()
                    .map(|c| (c.name.as_str(), c.resources.as_ref()))
                    .collect()
            })
            .unwrap_or_default(),
        status.and_then(|s| s.init_container_statuses.as_ref()),
    );
    add(
        ContainerKind::Regular,
        spec.map(|s| {
            s.containers
                .iter()
                .map(|c| (c.name.as_str(), c.resources.as_ref()))
                .collect()
        })
        .unwrap_or_default(),
        status.and_then(|s| s.container_statuses.as_ref()),
    );
    add(
        ContainerKind::Ephemeral,
        spec.and_then(|s| s.ephemeral_containers.as_ref())
            .map(|v| {
                v.iter()
                    .map(|c| (c.name.as_str(), c.resources.as_ref()))
                    .collect()
            })
            .unwrap_or_default(),
        status.and_then(|s| s.ephemeral_container_statuses.as_ref()),
    );

    Some(Entry {
        info: PodInfo {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid,
            node: spec.and_then(|s| s.node_name.clone()),
            qos_class: status.and_then(|s| s.qos_class.clone()),
            owner: resolve_owner(pod),
            containers,
            deleted: false,
        },
        ids,
    })
}

// ---------------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Tombstone {
    entry: Entry,
    deleted_at: Instant,
    seq: u64,
}

/// The index proper. Every time-dependent method takes `now`, so tests can use a fake clock.
#[derive(Debug)]
struct IndexState {
    ttl: Duration,
    max_tombstones: usize,
    live: HashMap<String, Entry>,
    /// container ID -> (pod UID, container index), for live pods.
    live_ids: HashMap<String, (String, usize)>,
    tombstones: HashMap<String, Tombstone>,
    /// container ID -> (pod UID, container index), for tombstones.
    tomb_ids: HashMap<String, (String, usize)>,
    /// (seq, uid) in deletion order; entries whose seq no longer matches are stale.
    tomb_order: VecDeque<(u64, String)>,
    next_seq: u64,
    /// Objects of a relist in progress (between watcher `Init` and `InitDone`).
    relist: Option<Vec<Entry>>,
}

impl IndexState {
    fn new(ttl: Duration, max_tombstones: usize) -> Self {
        Self {
            ttl,
            max_tombstones,
            live: HashMap::new(),
            live_ids: HashMap::new(),
            tombstones: HashMap::new(),
            tomb_ids: HashMap::new(),
            tomb_order: VecDeque::new(),
            next_seq: 0,
            relist: None,
        }
    }

    fn is_expired(&self, t: &Tombstone, now: Instant) -> bool {
        now.saturating_duration_since(t.deleted_at) >= self.ttl
    }

    /// Handles one watcher event. Returns true on `InitDone`.
    fn handle(&mut self, event: watcher::Event<Pod>, now: Instant) -> bool {
        let mut init_done = false;
        match event {
            watcher::Event::Apply(pod) => {
                if let Some(entry) = entry_from_pod(&pod) {
                    self.upsert(entry);
                }
            }
            watcher::Event::Delete(pod) => {
                if let Some(entry) = entry_from_pod(&pod) {
                    self.delete(entry, now);
                }
            }
            watcher::Event::Init => self.relist = Some(Vec::new()),
            watcher::Event::InitApply(pod) => {
                if let Some(entry) = entry_from_pod(&pod) {
                    self.relist.get_or_insert_with(Vec::new).push(entry);
                }
            }
            watcher::Event::InitDone => {
                let listed = self.relist.take().unwrap_or_default();
                let seen: HashSet<&str> = listed.iter().map(|e| e.info.uid.as_str()).collect();
                let vanished: Vec<String> = self
                    .live
                    .keys()
                    .filter(|uid| !seen.contains(uid.as_str()))
                    .cloned()
                    .collect();
                for uid in vanished {
                    if let Some(entry) = self.live.get(&uid).cloned() {
                        self.delete(entry, now);
                    }
                }
                for entry in listed {
                    self.upsert(entry);
                }
                init_done = true;
            }
        }
        self.prune(now);
        init_done
    }

    fn unindex_live(&mut self, uid: &str) -> Option<Entry> {
        let old = self.live.remove(uid)?;
        for (id, _) in &old.ids {
            if self.live_ids.get(id).is_some_and(|(u, _)| u == uid) {
                self.live_ids.remove(id);
            }
        }
        Some(old)
    }

    fn remove_tombstone(&mut self, uid: &str) -> Option<Tombstone> {
        let t = self.tombstones.remove(uid)?;
        for (id, _) in &t.entry.ids {
            if self.tomb_ids.get(id).is_some_and(|(u, _)| u == uid) {
                self.tomb_ids.remove(id);
            }
        }
        Some(t)
    }

    /// Keeps the IDs the pod's containers had before (not in `new`) as aliases, by
    /// container name, at most [`MAX_RETIRED_IDS_PER_POD`] of them (the newest).
    fn carry_over_ids(old: &Entry, new: &mut Entry) {
        let known: HashSet<String> = new.ids.iter().map(|(id, _)| id.clone()).collect();
        let retired: Vec<(String, usize)> = old
            .ids
            .iter()
            .filter(|(id, _)| !known.contains(id))
            .filter_map(|(id, idx)| {
                let name = &old.info.containers.get(*idx)?.name;
                let kind = old.info.containers.get(*idx)?.kind;
                let new_idx = new
                    .info
                    .containers
                    .iter()
                    .position(|c| &c.name == name && c.kind == kind)?;
                Some((id.clone(), new_idx))
            })
            .collect();
        // `new.ids` holds the IDs of the current object; `old.ids` lists the old object's IDs
        // first, then its own retired ones, newest first. Keep the newest retired ones.
        let cap = new.ids.len() + MAX_RETIRED_IDS_PER_POD;
        new.ids.extend(retired);
        new.ids.truncate(cap);
    }

    fn upsert(&mut self, mut entry: Entry) {
        let uid = entry.info.uid.clone();
        // A pod we had as deleted is live again (e.g. a spurious relist gap).
        self.remove_tombstone(&uid);
        if let Some(old) = self.unindex_live(&uid) {
            Self::carry_over_ids(&old, &mut entry);
        }
        for (id, idx) in &entry.ids {
            self.live_ids.insert(id.clone(), (uid.clone(), *idx));
        }
        self.live.insert(uid, entry);
    }

    fn delete(&mut self, mut entry: Entry, now: Instant) {
        let uid = entry.info.uid.clone();
        if let Some(old) = self.unindex_live(&uid) {
            Self::carry_over_ids(&old, &mut entry);
        }
        if let Some(old) = self.remove_tombstone(&uid) {
            // Deleted twice (e.g. a Delete event then a relist): keep the first deletion time.
            Self::carry_over_ids(&old.entry, &mut entry);
            self.insert_tombstone(entry, old.deleted_at);
        } else {
            self.insert_tombstone(entry, now);
        }
    }

    fn insert_tombstone(&mut self, mut entry: Entry, deleted_at: Instant) {
        if self.max_tombstones == 0 {
            return;
        }
        entry.info.deleted = true;
        let uid = entry.info.uid.clone();
        let seq = self.next_seq;
        self.next_seq += 1;
        for (id, idx) in &entry.ids {
            self.tomb_ids.insert(id.clone(), (uid.clone(), *idx));
        }
        self.tombstones.insert(
            uid.clone(),
            Tombstone {
                entry,
                deleted_at,
                seq,
            },
        );
        // Keep `tomb_order` sorted by deletion time (re-insertions may carry an older time).
        let pos = self
            .tomb_order
            .iter()
            .rposition(|(s, u)| {
                self.tombstones
                    .get(u)
                    .is_some_and(|t| t.seq == *s && t.deleted_at <= deleted_at)
            })
            .map_or(0, |p| p + 1);
        if pos == self.tomb_order.len() {
            self.tomb_order.push_back((seq, uid));
        } else {
            self.tomb_order.insert(pos, (seq, uid));
        }
        while self.tombstones.len() > self.max_tombstones {
            let Some((s, u)) = self.tomb_order.pop_front() else {
                break;
            };
            if self.tombstones.get(&u).is_some_and(|t| t.seq == s) {
                self.remove_tombstone(&u);
            }
        }
        // Bound the stale entries left by resurrected pods.
        if self.tomb_order.len() > 2 * self.tombstones.len() + 64 {
            let tombstones = &self.tombstones;
            self.tomb_order
                .retain(|(s, u)| tombstones.get(u).is_some_and(|t| t.seq == *s));
        }
    }

    /// Drops expired tombstones (oldest first).
    fn prune(&mut self, now: Instant) {
        while let Some((s, u)) = self.tomb_order.front() {
            match self.tombstones.get(u) {
                Some(t) if t.seq == *s => {
                    if !self.is_expired(t, now) {
                        break;
                    }
                    let u = u.clone();
                    self.tomb_order.pop_front();
                    self.remove_tombstone(&u);
                }
                _ => {
                    self.tomb_order.pop_front();
                }
            }
        }
    }

    fn by_uid(&self, uid: &str, now: Instant) -> Option<PodInfo> {
        // The systemd cgroup driver spells pod UIDs with `_` instead of `-`.
        if uid.contains('_') {
            return self.by_uid(&uid.replace('_', "-"), now);
        }
        if let Some(e) = self.live.get(uid) {
            return Some(e.info.clone());
        }
        let t = self.tombstones.get(uid)?;
        (!self.is_expired(t, now)).then(|| t.entry.info.clone())
    }

    fn by_container_id(&self, id: &str, now: Instant) -> Option<(PodInfo, ContainerInfo)> {
        let id = bare_container_id(id)?;
        if let Some((uid, idx)) = self.live_ids.get(id) {
            if let Some(e) = self.live.get(uid) {
                let c = e.info.containers.get(*idx)?.clone();
                return Some((e.info.clone(), c));
            }
        }
        let (uid, idx) = self.tomb_ids.get(id)?;
        let t = self.tombstones.get(uid)?;
        if self.is_expired(t, now) {
            return None;
        }
        let c = t.entry.info.containers.get(*idx)?.clone();
        Some((t.entry.info.clone(), c))
    }

    fn len(&self, now: Instant) -> (usize, usize) {
        let tombs = self
            .tombstones
            .values()
            .filter(|t| !self.is_expired(t, now))
            .count();
        (self.live.len(), tombs)
    }
}

// ---------------------------------------------------------------------------------------------
// PodIndex
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Shared {
    state: RwLock<IndexState>,
    synced: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, IndexState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, IndexState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn handle(&self, event: watcher::Event<Pod>, now: Instant) {
        let done = self.write().handle(event, now);
        if done {
            self.synced.send_replace(true);
        }
    }
}

/// Aborts the watcher task when the last [`PodIndex`] clone is dropped.
#[derive(Debug)]
struct TaskGuard(Option<tokio::task::JoinHandle<()>>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Options of [`PodIndex::spawn_with`].
#[derive(Debug, Clone)]
pub struct PodIndexOptions {
    /// How long a deleted pod stays resolvable.
    pub tombstone_ttl: Duration,
    /// Maximum number of tombstones; the oldest deletion is evicted first.
    pub max_tombstones: usize,
}

impl Default for PodIndexOptions {
    fn default() -> Self {
        Self {
            tombstone_ttl: DEFAULT_TOMBSTONE_TTL,
            max_tombstones: DEFAULT_MAX_TOMBSTONES,
        }
    }
}

/// The node-local pod index. Cheap to clone (shared state); the watcher task stops when the
/// last clone is dropped.
#[derive(Debug, Clone)]
pub struct PodIndex {
    shared: Arc<Shared>,
    _task: Arc<TaskGuard>,
}

impl PodIndex {
    /// Starts watching the pods of `node` on the current tokio runtime (panics outside one).
    pub fn spawn(client: Client, node: String, tombstone_ttl: Duration) -> PodIndex {
        Self::spawn_with(
            client,
            node,
            PodIndexOptions {
                tombstone_ttl,
                ..PodIndexOptions::default()
            },
        )
    }

    /// [`spawn`](Self::spawn) with all options.
    pub fn spawn_with(client: Client, node: String, options: PodIndexOptions) -> PodIndex {
        let shared = Self::new_shared(&options);
        let api: Api<Pod> = Api::all(client);
        let prune_every =
            (options.tombstone_ttl / 2).clamp(Duration::from_millis(100), Duration::from_secs(60));
        let task = tokio::spawn(run_watcher(shared.clone(), api, node, prune_every));
        PodIndex {
            shared,
            _task: Arc::new(TaskGuard(Some(task))),
        }
    }

    /// An index without a watcher, fed through [`apply_event`](Self::apply_event) (tests,
    /// replay tools).
    pub fn unwatched(options: PodIndexOptions) -> PodIndex {
        PodIndex {
            shared: Self::new_shared(&options),
            _task: Arc::new(TaskGuard(None)),
        }
    }

    fn new_shared(options: &PodIndexOptions) -> Arc<Shared> {
        Arc::new(Shared {
            state: RwLock::new(IndexState::new(
                options.tombstone_ttl,
                options.max_tombstones,
            )),
            synced: tokio::sync::watch::channel(false).0,
        })
    }

    /// Applies one watcher event, as the watcher task does.
    pub fn apply_event(&self, event: watcher::Event<Pod>) {
        self.shared.handle(event, Instant::now());
    }

    /// The pod with this UID: live, or deleted less than the tombstone TTL ago. The UID may be
    /// spelled with `_` instead of `-` (as in systemd cgroup slice names).
    pub fn by_uid(&self, uid: &str) -> Option<PodInfo> {
        self.shared.read().by_uid(uid, Instant::now())
    }

    /// The pod and container with this container ID (bare or with a `<runtime>://` prefix).
    pub fn by_container_id(&self, id: &str) -> Option<(PodInfo, ContainerInfo)> {
        self.shared.read().by_container_id(id, Instant::now())
    }

    /// True once the initial list completed (stays true across later relists and outages).
    pub fn is_synced(&self) -> bool {
        *self.shared.synced.borrow()
    }

    /// Waits until [`is_synced`](Self::is_synced), at most `timeout`. Returns whether it is.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        let mut rx = self.shared.synced.subscribe();
        let synced = tokio::time::timeout(timeout, rx.wait_for(|synced| *synced))
            .await
            .is_ok_and(|r| r.is_ok());
        synced
    }

    /// (live pods, unexpired tombstones).
    pub fn len(&self) -> (usize, usize) {
        self.shared.read().len(Instant::now())
    }

    /// No live pod and no tombstone.
    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }
}

async fn run_watcher(shared: Arc<Shared>, api: Api<Pod>, node: String, prune_every: Duration) {
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut prune = tokio::time::interval(prune_every);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Start of the current outage; errors are logged at warn once per outage.
    let mut outage: Option<Instant> = None;
    tracing::debug!(%node, "pod index: starting pod watcher");
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(event)) => {
                    if let Some(since) = outage.take() {
                        tracing::info!(
                            down_for = ?since.elapsed(),
                            "pod index: Kubernetes API reachable again, pod watch resumed"
                        );
                    }
                    if matches!(event, watcher::Event::InitDone) {
                        let first = !*shared.synced.borrow();
                        shared.handle(event, Instant::now());
                        let (live, tombstones) = shared.read().len(Instant::now());
                        if first {
                            tracing::info!(%node, live, tombstones, "pod index: initial pod list synced");
                        } else {
                            tracing::debug!(%node, live, tombstones, "pod index: relisted pods");
                        }
                    } else {
                        shared.handle(event, Instant::now());
                    }
                }
                Some(Err(watcher::Error::WatchError(status))) if status.code == 410 => {
                    // Our resourceVersion is too old: the watcher relists on its own.
                    tracing::debug!(status = %status.message, "pod index: watch expired (410 Gone), relisting");
                }
                Some(Err(error)) => {
                    if outage.is_none() {
                        outage = Some(Instant::now());
                        tracing::warn!(
                            %error,
                            "pod index: pod watch failed, retrying with backoff (pods deleted meanwhile stay resolvable; further errors of this outage are logged at debug)"
                        );
                    } else {
                        tracing::debug!(%error, "pod index: pod watch still failing");
                    }
                }
                None => {
                    // kube's watcher never ends; be defensive anyway.
                    tracing::warn!("pod index: pod watcher ended");
                    break;
                }
            },
            _ = prune.tick() => shared.write().prune(Instant::now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::{
        api::core::v1::{
            Container, ContainerState, ContainerStateTerminated, EphemeralContainer, PodSpec,
            PodStatus,
        },
        apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::OwnerReference},
    };
    use std::collections::BTreeMap;

    #[test]
    fn quantities() {
        let cases: &[(&str, Option<u64>)] = &[
            ("128Mi", Some(128 << 20)),
            ("1Gi", Some(1 << 30)),
            ("1G", Some(1_000_000_000)),
            ("500M", Some(500_000_000)),
            ("1e9", Some(1_000_000_000)),
            ("1E9", Some(1_000_000_000)),
            ("1e+3", Some(1000)),
            ("123456", Some(123_456)),
            ("0.5Gi", Some(512 << 20)),
            ("100k", Some(100_000)),
            ("1Ki", Some(1024)),
            ("2Ti", Some(2 << 40)),
            ("1Pi", Some(1 << 50)),
            ("1Ei", Some(1 << 60)),
            ("1E", Some(1_000_000_000_000_000_000)),
            ("1P", Some(1_000_000_000_000_000)),
            ("1T", Some(1_000_000_000_000)),
            ("0", Some(0)),
            ("0Gi", Some(0)),
            ("+1Ki", Some(1024)),
            (".5Ki", Some(512)),
            ("5.", Some(5)),
            ("1.5", Some(2)),   // rounded up
            ("100m", Some(1)),  // 0.1 byte, rounded up
            ("1500m", Some(2)), // 1.5 bytes
            ("1e-3", Some(1)),
            ("12e-1", Some(2)),
            ("1n", Some(1)),
            ("1000000000n", Some(1)),
            ("3000000001n", Some(4)),
            ("1.25Mi", Some(1_310_720)),
            ("0000128Mi", Some(128 << 20)),
            ("1.000Gi", Some(1 << 30)),
            (" 64Mi ", Some(64 << 20)),
            ("16Ei", None), // overflows u64
            ("99999999999999999999999", None),
            ("1e40", None),
            ("", None),
            (".", None),
            ("Mi", None),
            ("-1Gi", None),
            ("1..2", None),
            ("1.2.3", None),
            ("1 Gi", None),
            ("1GiB", None),
            ("1K", None),
            ("1mi", None),
            ("1e", None),
            ("1e+", None),
            ("1e1.5", None),
            ("1e99999", None),
            ("abc", None),
            ("0x10", None),
            ("1Gi1", None),
            ("１Gi", None),
            ("1.0e-999", Some(1)), // a positive amount below one byte
        ];
        for (input, want) in cases {
            assert_eq!(parse_memory_quantity(input), *want, "parse {input:?}");
        }
    }

    #[test]
    fn quantity_parser_never_panics() {
        let alphabet = [
            "", "0", "1", "9", ".", "e", "E", "-", "+", "i", "K", "k", "M", "m", "G", "n", "u",
            "x", " ",
        ];
        // All strings of up to 4 symbols from the alphabet.
        let mut inputs = vec![String::new()];
        for _ in 0..4 {
            let mut next = Vec::new();
            for s in &inputs {
                for a in alphabet {
                    next.push(format!("{s}{a}"));
                }
            }
            inputs = next;
        }
        for s in inputs {
            let _ = parse_memory_quantity(&s);
        }
        let _ = parse_memory_quantity(&"9".repeat(10_000));
        let _ = parse_memory_quantity(&format!("0.{}1", "0".repeat(10_000)));
        assert_eq!(
            parse_memory_quantity(&format!("0.{}1", "0".repeat(100))),
            Some(1)
        );
    }

    #[test]
    fn container_id_prefixes() {
        let hex = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        for prefix in ["containerd://", "cri-o://", "docker://", ""] {
            assert_eq!(bare_container_id(&format!("{prefix}{hex}")), Some(hex));
        }
        assert_eq!(bare_container_id(""), None);
        assert_eq!(bare_container_id("containerd://"), None);
        assert_eq!(bare_container_id("  docker://abc "), Some("abc"));
        // Not a scheme: kept as is.
        assert_eq!(bare_container_id("a/b://c"), Some("a/b://c"));
    }

    fn hex_id(seed: u8) -> String {
        format!("{:02x}", seed).repeat(32)
    }

    struct C<'a> {
        name: &'a str,
        id: Option<String>,
        limit: Option<&'a str>,
        request: Option<&'a str>,
    }

    fn resources(limit: Option<&str>, request: Option<&str>) -> Option<ResourceRequirements> {
        let q = |v: Option<&str>| {
            v.map(|v| BTreeMap::from([("memory".to_string(), Quantity(v.to_string()))]))
        };
        Some(ResourceRequirements {
            limits: q(limit),
            requests: q(request),
            ..Default::default()
        })
    }

    fn status(c: &C<'_>) -> ContainerStatus {
        ContainerStatus {
            name: c.name.to_string(),
            container_id: c.id.as_ref().map(|id| format!("containerd://{id}")),
            ..Default::default()
        }
    }

    fn make_pod(ns: &str, name: &str, uid: &str, containers: &[C<'_>]) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.namespace = Some(ns.into());
        pod.metadata.name = Some(name.into());
        pod.metadata.uid = Some(uid.into());
        pod.spec = Some(PodSpec {
            node_name: Some("node-1".into()),
            containers: containers
                .iter()
                .map(|c| Container {
                    name: c.name.into(),
                    resources: resources(c.limit, c.request),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
        pod.status = Some(PodStatus {
            phase: Some("Running".into()),
            qos_class: Some("Burstable".into()),
            container_statuses: Some(containers.iter().map(status).collect()),
            ..Default::default()
        });
        pod
    }

    fn simple_pod(uid: &str, id_seed: u8) -> Pod {
        make_pod(
            "default",
            &format!("pod-{uid}"),
            uid,
            &[C {
                name: "app",
                id: Some(hex_id(id_seed)),
                limit: Some("256Mi"),
                request: Some("128Mi"),
            }],
        )
    }

    fn owner_ref(
        kind: &str,
        api_version: &str,
        name: &str,
        controller: Option<bool>,
    ) -> OwnerReference {
        OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            name: name.into(),
            uid: "owner-uid".into(),
            controller,
            ..Default::default()
        }
    }

    fn with_owner(mut pod: Pod, owner: OwnerReference, hash_label: Option<&str>) -> Pod {
        pod.metadata.owner_references = Some(vec![owner]);
        if let Some(h) = hash_label {
            pod.metadata.labels = Some(BTreeMap::from([(
                "pod-template-hash".to_string(),
                h.to_string(),
            )]));
        }
        pod
    }

    fn owner(pod: &Pod) -> Option<(String, String)> {
        resolve_owner(pod).map(|o| (o.kind, o.name))
    }

    #[test]
    fn owner_resolution() {
        let base = simple_pod("u1", 1);
        assert_eq!(owner(&base), None);

        let rs = |name: &str| owner_ref("ReplicaSet", "apps/v1", name, Some(true));
        let dep = |n: &str| Some(("Deployment".to_string(), n.to_string()));
        let rset = |n: &str| Some(("ReplicaSet".to_string(), n.to_string()));

        assert_eq!(
            owner(&with_owner(
                base.clone(),
                rs("web-7d4b9c8f6d"),
                Some("7d4b9c8f6d")
            )),
            dep("web")
        );
        assert_eq!(
            owner(&with_owner(
                base.clone(),
                rs("my-api-server-5f9c7b6d4"),
                Some("5f9c7b6d4")
            )),
            dep("my-api-server")
        );
        // Label mismatch, no label, no dash, empty deployment part: stays a ReplicaSet.
        assert_eq!(
            owner(&with_owner(base.clone(), rs("web-7d4b9c8f6d"), Some("abc"))),
            rset("web-7d4b9c8f6d")
        );
        assert_eq!(
            owner(&with_owner(base.clone(), rs("web-7d4b9c8f6d"), None)),
            rset("web-7d4b9c8f6d")
        );
        assert_eq!(
            owner(&with_owner(
                base.clone(),
                rs("web7d4b9c8f6d"),
                Some("7d4b9c8f6d")
            )),
            rset("web7d4b9c8f6d")
        );
        assert_eq!(
            owner(&with_owner(
                base.clone(),
                rs("-7d4b9c8f6d"),
                Some("7d4b9c8f6d")
            )),
            rset("-7d4b9c8f6d")
        );
        assert_eq!(
            owner(&with_owner(
                base.clone(),
                rs("7d4b9c8f6d"),
                Some("7d4b9c8f6d")
            )),
            rset("7d4b9c8f6d")
        );
        // Not the apps group: untouched.
        assert_eq!(
            owner(&with_owner(
                base.clone(),
                owner_ref("ReplicaSet", "example.com/v1", "web-abc", Some(true)),
                Some("abc")
            )),
            rset("web-abc")
        );
        // Other kinds are kept; Jobs are not resolved to CronJobs.
        assert_eq!(
            owner(&with_owner(
                base.clone(),
                owner_ref("StatefulSet", "apps/v1", "db", Some(true)),
                None
            )),
            Some(("StatefulSet".into(), "db".into()))
        );
        assert_eq!(
            owner(&with_owner(
                base.clone(),
                owner_ref("Job", "batch/v1", "backup-28934520", Some(true)),
                None
            )),
            Some(("Job".into(), "backup-28934520".into()))
        );
        assert_eq!(
            owner(&with_owner(
                base.clone(),
                owner_ref("Node", "v1", "node-1", Some(true)),
                None
            )),
            Some(("Node".into(), "node-1".into()))
        );
        // The controller reference wins over the first one.
        let mut pod = base.clone();
        pod.metadata.owner_references = Some(vec![
            owner_ref("ConfigMap", "v1", "cm", None),
            owner_ref("DaemonSet", "apps/v1", "agent", Some(true)),
        ]);
        assert_eq!(owner(&pod), Some(("DaemonSet".into(), "agent".into())));
        pod.metadata.owner_references = Some(vec![owner_ref("ConfigMap", "v1", "cm", Some(false))]);
        assert_eq!(owner(&pod), Some(("ConfigMap".into(), "cm".into())));
    }

    #[test]
    fn pod_conversion() {
        let mut pod = make_pod(
            "ns1",
            "p",
            "uid-1",
            &[
                C {
                    name: "app",
                    id: Some(hex_id(1)),
                    limit: Some("1Gi"),
                    request: Some("512Mi"),
                },
                C {
                    name: "side",
                    id: None,
                    limit: None,
                    request: None,
                },
            ],
        );
        let spec = pod.spec.as_mut().unwrap();
        spec.init_containers = Some(vec![Container {
            name: "init".into(),
            resources: resources(Some("64Mi"), None),
            ..Default::default()
        }]);
        spec.ephemeral_containers = Some(vec![EphemeralContainer {
            name: "debug".into(),
            ..Default::default()
        }]);
        let st = pod.status.as_mut().unwrap();
        st.init_container_statuses = Some(vec![ContainerStatus {
            name: "init".into(),
            container_id: Some(format!("cri-o://{}", hex_id(2))),
            ..Default::default()
        }]);
        st.ephemeral_container_statuses = Some(vec![ContainerStatus {
            name: "debug".into(),
            container_id: Some(format!("docker://{}", hex_id(3))),
            ..Default::default()
        }]);
        // The app container was restarted; it was resized in place to 2Gi.
        let app = &mut st.container_statuses.as_mut().unwrap()[0];
        app.last_state = Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                container_id: Some(format!("containerd://{}", hex_id(9))),
                reason: Some("OOMKilled".into()),
                exit_code: 137,
                ..Default::default()
            }),
            ..Default::default()
        });
        app.resources = resources(Some("2Gi"), None);

        let e = entry_from_pod(&pod).unwrap();
        let i = &e.info;
        assert_eq!(
            (i.namespace.as_str(), i.name.as_str(), i.uid.as_str()),
            ("ns1", "p", "uid-1")
        );
        assert_eq!(i.node.as_deref(), Some("node-1"));
        assert_eq!(i.qos_class.as_deref(), Some("Burstable"));
        assert!(!i.deleted);
        let names: Vec<_> = i
            .containers
            .iter()
            .map(|c| (c.name.as_str(), c.kind))
            .collect();
        assert_eq!(
            names,
            [
                ("init", ContainerKind::Init),
                ("app", ContainerKind::Regular),
                ("side", ContainerKind::Regular),
                ("debug", ContainerKind::Ephemeral)
            ]
        );
        assert_eq!(i.containers[0].id.as_deref(), Some(hex_id(2).as_str()));
        assert_eq!(i.containers[0].limits_memory_bytes, Some(64 << 20));
        assert_eq!(i.containers[1].id.as_deref(), Some(hex_id(1).as_str()));
        assert_eq!(
            i.containers[1].limits_memory_bytes,
            Some(2 << 30),
            "status resources win"
        );
        assert_eq!(
            i.containers[1].requests_memory_bytes,
            Some(512 << 20),
            "falls back to spec"
        );
        assert_eq!(i.containers[2].id, None);
        assert_eq!(i.containers[2].limits_memory_bytes, None);
        assert_eq!(i.containers[3].id.as_deref(), Some(hex_id(3).as_str()));
        let mut ids: Vec<_> = e.ids.clone();
        ids.sort();
        let mut want = vec![
            (hex_id(2), 0),
            (hex_id(1), 1),
            (hex_id(9), 1),
            (hex_id(3), 3),
        ];
        want.sort();
        assert_eq!(ids, want);

        let mut no_uid = pod.clone();
        no_uid.metadata.uid = None;
        assert!(pod_info(&no_uid).is_none());
        assert!(pod_info(&Pod {
            metadata: pod.metadata.clone(),
            ..Default::default()
        })
        .is_some());
    }

    fn state(ttl_secs: u64, max: usize) -> IndexState {
        IndexState::new(Duration::from_secs(ttl_secs), max)
    }

    #[test]
    fn lookups_and_updates() {
        let t0 = Instant::now();
        let mut s = state(600, 100);
        s.handle(watcher::Event::Apply(simple_pod("u1", 1)), t0);
        let (p, c) = s
            .by_container_id(&format!("containerd://{}", hex_id(1)), t0)
            .unwrap();
        assert_eq!((p.uid.as_str(), c.name.as_str()), ("u1", "app"));
        assert_eq!(c.limits_memory_bytes, Some(256 << 20));
        assert_eq!(c.requests_memory_bytes, Some(128 << 20));
        assert_eq!(s.by_container_id(&hex_id(1), t0).unwrap().0.uid, "u1");
        assert!(s.by_uid("u1", t0).is_some());
        assert!(s.by_uid("nope", t0).is_none());
        assert!(s.by_container_id(&hex_id(7), t0).is_none());

        // The container restarts with a new ID: both the new and the old ID resolve.
        s.handle(watcher::Event::Apply(simple_pod("u1", 2)), t0);
        assert_eq!(
            s.by_container_id(&hex_id(2), t0).unwrap().1.id,
            Some(hex_id(2))
        );
        assert_eq!(
            s.by_container_id(&hex_id(1), t0).unwrap().1.id,
            Some(hex_id(2))
        );
        // Bounded number of retired IDs.
        for seed in 3..60 {
            s.handle(watcher::Event::Apply(simple_pod("u1", seed)), t0);
        }
        assert!(s.live["u1"].ids.len() <= 1 + MAX_RETIRED_IDS_PER_POD);
        assert_eq!(s.live_ids.len(), s.live["u1"].ids.len());
        assert!(s.by_container_id(&hex_id(58), t0).is_some());
        assert_eq!(s.len(t0), (1, 0));
    }

    #[test]
    fn uid_with_underscores() {
        let t0 = Instant::now();
        let mut s = state(600, 100);
        s.handle(watcher::Event::Apply(simple_pod("9f1c-44aa-b2", 40)), t0);
        assert_eq!(s.by_uid("9f1c_44aa_b2", t0).unwrap().uid, "9f1c-44aa-b2");
        s.handle(watcher::Event::Delete(simple_pod("9f1c-44aa-b2", 40)), t0);
        assert!(s.by_uid("9f1c_44aa_b2", t0).unwrap().deleted);
        assert!(s.by_uid("9f1c_44aa_b3", t0).is_none());
    }

    #[test]
    fn tombstone_ttl() {
        let t0 = Instant::now();
        let mut s = state(600, 100);
        s.handle(watcher::Event::Apply(simple_pod("u1", 1)), t0);
        s.handle(watcher::Event::Apply(simple_pod("u2", 2)), t0);
        let t1 = t0 + Duration::from_secs(10);
        s.handle(watcher::Event::Delete(simple_pod("u1", 1)), t1);
        assert_eq!(s.len(t1), (1, 1));
        let p = s.by_uid("u1", t1).unwrap();
        assert!(p.deleted);
        let (p, c) = s.by_container_id(&hex_id(1), t1).unwrap();
        assert!(p.deleted);
        assert_eq!(c.name, "app");
        // Still there just before the TTL, gone at the TTL (even before pruning).
        let almost = t1 + Duration::from_secs(599);
        assert!(s.by_uid("u1", almost).is_some());
        let expired = t1 + Duration::from_secs(600);
        assert!(s.by_uid("u1", expired).is_none());
        assert!(s.by_container_id(&hex_id(1), expired).is_none());
        assert_eq!(s.len(expired), (1, 0));
        assert_eq!(s.tombstones.len(), 1, "lazy: not pruned yet");
        s.prune(expired);
        assert!(s.tombstones.is_empty() && s.tomb_ids.is_empty() && s.tomb_order.is_empty());
        // The live pod is untouched.
        assert!(s.by_container_id(&hex_id(2), expired).is_some());
    }

    #[test]
    fn tombstone_cap_evicts_oldest() {
        let t0 = Instant::now();
        let mut s = state(600, 3);
        for i in 0..5u8 {
            let uid = format!("u{i}");
            s.handle(watcher::Event::Apply(simple_pod(&uid, i)), t0);
            s.handle(
                watcher::Event::Delete(simple_pod(&uid, i)),
                t0 + Duration::from_secs(u64::from(i)),
            );
        }
        let now = t0 + Duration::from_secs(5);
        assert_eq!(s.len(now), (0, 3));
        for i in 0..5u8 {
            let present = s.by_uid(&format!("u{i}"), now).is_some();
            assert_eq!(present, i >= 2, "u{i}");
            assert_eq!(
                s.by_container_id(&hex_id(i), now).is_some(),
                i >= 2,
                "cid of u{i}"
            );
        }
        assert_eq!(s.tomb_ids.len(), 3);
        // No tombstones at all when the cap is 0.
        let mut none = state(600, 0);
        none.handle(watcher::Event::Apply(simple_pod("a", 1)), t0);
        none.handle(watcher::Event::Delete(simple_pod("a", 1)), t0);
        assert_eq!(none.len(t0), (0, 0));
        assert!(none.by_container_id(&hex_id(1), t0).is_none());
    }

    #[test]
    fn relist_turns_vanished_pods_into_tombstones() {
        let t0 = Instant::now();
        let mut s = state(600, 100);
        assert!(!s.handle(watcher::Event::Init, t0));
        s.handle(watcher::Event::InitApply(simple_pod("u1", 1)), t0);
        s.handle(watcher::Event::InitApply(simple_pod("u2", 2)), t0);
        // Nothing visible until InitDone.
        assert!(s.by_uid("u1", t0).is_none());
        assert!(s.handle(watcher::Event::InitDone, t0));
        assert_eq!(s.len(t0), (2, 0));

        // Relist after an outage: u1 vanished, u3 appeared, u2 changed container.
        let t1 = t0 + Duration::from_secs(30);
        s.handle(watcher::Event::Init, t1);
        s.handle(watcher::Event::InitApply(simple_pod("u2", 22)), t1);
        s.handle(watcher::Event::InitApply(simple_pod("u3", 3)), t1);
        // During the relist the old state is still served.
        assert!(!s.by_uid("u1", t1).unwrap().deleted);
        assert!(s.by_uid("u3", t1).is_none());
        assert!(s.handle(watcher::Event::InitDone, t1));
        assert_eq!(s.len(t1), (2, 1));
        assert!(s.by_uid("u1", t1).unwrap().deleted);
        assert!(s.by_container_id(&hex_id(1), t1).unwrap().0.deleted);
        assert_eq!(s.by_container_id(&hex_id(22), t1).unwrap().0.uid, "u2");
        assert_eq!(s.by_container_id(&hex_id(2), t1).unwrap().0.uid, "u2");
        assert!(!s.by_uid("u3", t1).unwrap().deleted);
        // A tombstoned pod that shows up live again is live.
        s.handle(watcher::Event::Apply(simple_pod("u1", 1)), t1);
        assert!(!s.by_uid("u1", t1).unwrap().deleted);
        assert_eq!(s.len(t1), (3, 0));
        assert!(s.tomb_ids.is_empty());
        // A delete event for an unknown pod still leaves a tombstone.
        s.handle(watcher::Event::Delete(simple_pod("u9", 9)), t1);
        assert!(s.by_container_id(&hex_id(9), t1).unwrap().0.deleted);
    }

    #[test]
    fn double_delete_keeps_first_deletion_time() {
        let t0 = Instant::now();
        let mut s = state(100, 10);
        s.handle(watcher::Event::Apply(simple_pod("u1", 1)), t0);
        s.handle(watcher::Event::Delete(simple_pod("u1", 1)), t0);
        s.handle(
            watcher::Event::Delete(simple_pod("u1", 1)),
            t0 + Duration::from_secs(50),
        );
        assert!(s.by_uid("u1", t0 + Duration::from_secs(99)).is_some());
        assert!(s.by_uid("u1", t0 + Duration::from_secs(100)).is_none());
        s.prune(t0 + Duration::from_secs(100));
        assert!(s.tombstones.is_empty());
    }

    #[tokio::test]
    async fn unwatched_index_api() {
        let index = PodIndex::unwatched(PodIndexOptions {
            tombstone_ttl: Duration::from_millis(200),
            max_tombstones: 10,
        });
        assert!(!index.is_synced());
        assert!(!index.wait_synced(Duration::from_millis(10)).await);
        index.apply_event(watcher::Event::Init);
        index.apply_event(watcher::Event::InitApply(with_owner(
            simple_pod("u1", 1),
            owner_ref("ReplicaSet", "apps/v1", "web-abc12", Some(true)),
            Some("abc12"),
        )));
        index.apply_event(watcher::Event::InitDone);
        assert!(index.wait_synced(Duration::from_secs(1)).await);
        assert!(index.is_synced());
        let clone = index.clone();
        let (p, _) = clone.by_container_id(&hex_id(1)).unwrap();
        assert_eq!(
            p.owner,
            Some(Owner {
                kind: "Deployment".into(),
                name: "web".into()
            })
        );
        index.apply_event(watcher::Event::Delete(simple_pod("u1", 1)));
        assert_eq!(index.len(), (0, 1));
        assert!(index.by_uid("u1").unwrap().deleted);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(index.by_uid("u1").is_none());
        assert!(index.is_empty());
    }

    #[test]
    fn node_name_is_something() {
        // NODE_NAME is not set in unit tests (we never mutate the environment); the hostname
        // fallback must work on Linux.
        if std::env::var_os("NODE_NAME").is_none() {
            assert!(hostname().is_some());
        }
        assert!(node_name().is_some());
    }

    /// Arbitrary JSON shaped like a Pod (random strings, numbers and nesting in the fields the
    /// index reads) never panics the conversion, whatever deserializes.
    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn json() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(Into::into),
                any::<i64>().prop_map(Into::into),
                "\\PC{0,24}".prop_map(Into::into),
                prop::sample::select(vec!["128Mi", "1.5Gi", "1e3", "-1", "0.0001Ki", "999999999999999999999E", "containerd://", "docker://ab", "ReplicaSet", "pod-template-hash"]).prop_map(Into::into),
            ];
            leaf.prop_recursive(4, 64, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                    prop::collection::btree_map(
                        prop::sample::select(vec![
                            "metadata", "spec", "status", "name", "namespace", "uid", "labels", "ownerReferences", "kind",
                            "containers", "initContainers", "ephemeralContainers", "containerStatuses", "resources",
                            "limits", "requests", "memory", "containerID", "lastState", "terminated", "qosClass", "nodeName",
                            "controller", "apiVersion", "pod-template-hash",
                        ]).prop_map(String::from),
                        inner,
                        0..5,
                    )
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            #[test]
            fn pod_json_never_panics(v in json()) {
                if let Ok(pod) = serde_json::from_value::<Pod>(v) {
                    let _ = pod_info(&pod);
                    let _ = resolve_owner(&pod);
                }
            }

            /// Real-shaped pods with arbitrary values where the index parses strings.
            #[test]
            fn shaped_pods_never_panic(
                name in "\\PC{0,30}", rs in "\\PC{0,30}", hash in "\\PC{0,12}",
                limit in "\\PC{0,16}", request in "[0-9.eEkMGTPKi-]{0,12}",
                id in "\\PC{0,80}", last_id in "\\PC{0,80}", qos in "\\PC{0,12}",
            ) {
                let v = serde_json::json!({
                    "metadata": {"name": name, "namespace": "ns", "uid": "u",
                        "labels": {"pod-template-hash": hash},
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": "o", "controller": true}]},
                    "spec": {"nodeName": "n", "containers": [{"name": "c", "resources": {"limits": {"memory": limit}, "requests": {"memory": request}}}]},
                    "status": {"qosClass": qos, "containerStatuses": [{"name": "c", "containerID": id, "image": "i", "imageID": "", "ready": true, "restartCount": 1,
                        "lastState": {"terminated": {"exitCode": 137, "containerID": last_id}}}]}
                });
                let pod: Pod = serde_json::from_value(v).expect("shaped pod deserializes");
                let info = pod_info(&pod).expect("a pod with metadata yields info");
                prop_assert_eq!(info.containers.len(), 1);
                let _ = resolve_owner(&pod);
            }

            #[test]
            fn quantities_never_panic(s in "\\PC{0,40}") {
                let _ = parse_memory_quantity(&s);
                let _ = bare_container_id(&s);
            }
        }
    }
}
