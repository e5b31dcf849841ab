//! Names the pod and container of a kill, from the cgroup the kernel gave us at kill time.
//!
//! The cgroup path alone gives the pod UID and container ID, so an event always carries them;
//! the pod index adds names, owner and declared resources when it knows the pod (tombstones
//! included). The event is never held back waiting for Kubernetes: when the index misses, the
//! event says `k8s.resolved: false` and goes out with what the path gives.
use super::cgroup_path::{self, KubeCgroup, Level};
use super::pod_index::{ContainerInfo, Owner, PodIndex, PodInfo};
use crate::event::OomKill;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct K8s {
    /// The pod index knew the pod (live or recently deleted).
    pub resolved: bool,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub pod_uid: Option<String>,
    pub container: Option<String>,
    pub container_id: Option<String>,
    /// Container runtime named by the cgroup (`containerd`, `cri-o`, `docker`).
    pub runtime: Option<String>,
    pub node: Option<String>,
    pub qos_class: Option<String>,
    pub owner: Option<OwnerRef>,
    /// The container's declared `resources.limits.memory` / `requests.memory`.
    pub limits_memory_bytes: Option<u64>,
    pub requests_memory_bytes: Option<u64>,
    /// Which kubelet cgroup the victim lived in: `container`, `container_child`, `pod`, …
    pub cgroup_level: String,
    /// The pod had already been deleted from the API server (answered from a tombstone).
    pub pod_deleted: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OwnerRef {
    pub kind: String,
    pub name: String,
}

impl From<Owner> for OwnerRef {
    fn from(o: Owner) -> Self {
        Self { kind: o.kind, name: o.name }
    }
}

/// Adds `k8s` (and `victim.container_init`) to events whose victim lives under kubepods.
pub struct Attributor {
    index: Option<PodIndex>,
}

impl Attributor {
    pub fn new(index: Option<PodIndex>) -> Self {
        Self { index }
    }

    pub fn index(&self) -> Option<&PodIndex> {
        self.index.as_ref()
    }

    pub fn enrich(&self, ev: &mut OomKill) {
        // The memory cgroup is where kubelet's limits are (v1 and v2 alike); the unified path
        // is the same on pure cgroup v2.
        let parsed = [ev.cgroup.memory.path.as_deref(), ev.cgroup.path.as_deref()]
            .into_iter()
            .flatten()
            .find_map(cgroup_path::parse);
        let Some(kc) = parsed else { return };
        let k = self.resolve(&kc, &ev.node);
        if matches!(kc.level, Level::Container | Level::ContainerChild) {
            // PID 1 of the container's pid namespace: its death restarts the container.
            // Anything else dies silently while the pod keeps running.
            ev.victim.container_init = ev.victim.ns_pid.map(|p| p == 1);
        }
        ev.k8s = Some(k);
    }

    /// Pod and container of a cgroup path, if it is under kubepods.
    pub fn for_path(&self, path: &str, node: &str) -> Option<K8s> {
        cgroup_path::parse(path).map(|kc| self.resolve(&kc, node))
    }

    fn resolve(&self, kc: &KubeCgroup, node: &str) -> K8s {
        let mut k = from_path(kc);
        k.node = Some(node.to_string());
        let found = self.index.as_ref().and_then(|idx| lookup(idx, kc));
        match found {
            Some((pod, container)) => fill(&mut k, pod, container),
            None => {
                if self.index.is_some() {
                    tracing::info!(
                        pod_uid = k.pod_uid.as_deref().unwrap_or("-"),
                        container_id = k.container_id.as_deref().unwrap_or("-"),
                        "OOM kill in a pod the index does not know (yet): reporting what the cgroup path gives"
                    );
                }
            }
        }
        k
    }
}

fn from_path(kc: &KubeCgroup) -> K8s {
    K8s {
        pod_uid: kc.pod_uid.clone(),
        container_id: kc.container_id.clone(),
        runtime: kc.runtime.map(|r| r.as_str().to_string()),
        qos_class: Some(kc.qos.as_str().to_string()),
        cgroup_level: kc.level.as_str().to_string(),
        ..Default::default()
    }
}

fn lookup(idx: &PodIndex, kc: &KubeCgroup) -> Option<(PodInfo, Option<ContainerInfo>)> {
    if let Some((pod, c)) = kc.container_id.as_deref().and_then(|id| idx.by_container_id(id)) {
        return Some((pod, Some(c)));
    }
    kc.pod_uid.as_deref().and_then(|uid| idx.by_uid(uid)).map(|p| (p, None))
}

fn fill(k: &mut K8s, pod: PodInfo, container: Option<ContainerInfo>) {
    k.resolved = true;
    k.namespace = Some(pod.namespace);
    k.pod = Some(pod.name);
    k.pod_uid = Some(pod.uid);
    if pod.qos_class.is_some() {
        k.qos_class = pod.qos_class;
    }
    k.owner = pod.owner.map(Into::into);
    k.pod_deleted = pod.deleted;
    if let Some(c) = container {
        k.container = Some(c.name);
        k.limits_memory_bytes = c.limits_memory_bytes;
        k.requests_memory_bytes = c.requests_memory_bytes;
    }
}
