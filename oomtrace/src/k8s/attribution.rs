//! Names the pod and container of a kill, from the cgroup the kernel gave us at kill time.
//!
//! The cgroup path alone gives the pod UID and container ID, so an event always carries them;
//! the pod index adds names, owner and declared resources when it knows the pod (tombstones
//! included). The event is never held back waiting for Kubernetes: when the index misses, the
//! event says `k8s.resolved: false` and goes out with what the path gives.
//!
//! When procfs could not give the victim's command line at the kill, the container's spec
//! tells its runtime instead (`victim.runtime.source: pod_spec`).
use super::cgroup_path::{self, KubeCgroup, Level};
use super::owner::Owner;
use super::pod_index::PodIndex;
use super::pod_record::{ContainerInfo, PodInfo};
use crate::model::{OomKill, OwnerRef, RuntimeSource, K8s};
use crate::runtime::SpecHints;

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
        let (mut k, hints) = self.resolve(&kc, &ev.node);
        k.oom_cgroup_level = oom_level(ev.oom.cgroup.as_deref(), &kc);
        if matches!(kc.level, Level::Container | Level::ContainerChild) {
            // PID 1 of the container's pid namespace: its death restarts the container.
            // Anything else dies silently while the pod keeps running.
            ev.victim.container_init = ev.victim.ns_pid.map(|p| p == 1);
        }
        if !ev.victim.cmdline_read {
            ev.victim.runtime = hints
                .and_then(|h| crate::runtime::recognise(&h.process(), ev.oom.limit_bytes, RuntimeSource::PodSpec));
        }
        ev.k8s = Some(k);
    }

    /// Pod and container of a cgroup path, if it is under kubepods.
    pub fn for_path(&self, path: &str, node: &str) -> Option<K8s> {
        cgroup_path::parse(path).map(|kc| self.resolve(&kc, node).0)
    }

    /// The pod and container of `kc`, with what the container's spec says of its runtime.
    fn resolve(&self, kc: &KubeCgroup, node: &str) -> (K8s, Option<Box<SpecHints>>) {
        let mut k = from_path(kc);
        k.node = Some(node.to_string());
        let found = self.index.as_ref().and_then(|idx| lookup(idx, kc));
        let mut hints = None;
        match found {
            Some((pod, mut container)) => {
                hints = container.as_mut().and_then(|c| c.runtime.take());
                fill(&mut k, pod, container);
            }
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
        (k, hints)
    }
}

fn from_path(kc: &KubeCgroup) -> K8s {
    K8s {
        pod_uid: kc.pod_uid.clone(),
        container_id: kc.container_id.clone(),
        runtime: kc.runtime.map(|r| r.as_str().to_string()),
        qos_class: Some(kc.qos.as_str().to_string()),
        cgroup_level: kc.level,
        oom_cgroup_level: None,
        resolved: false,
        namespace: None,
        pod: None,
        container: None,
        container_kind: None,
        node: None,
        owner: None,
        limits_memory_bytes: None,
        requests_memory_bytes: None,
        pod_deleted: false,
    }
}

/// The kubelet level of the OOM cgroup when it is the victim's pod's own cgroup or one of its
/// containers': says whether the pod's limit or a container's was hit.
fn oom_level(oom_cgroup: Option<&str>, victim: &KubeCgroup) -> Option<Level> {
    let oc = cgroup_path::parse(oom_cgroup?)?;
    (oc.pod_uid.is_some() && oc.pod_uid == victim.pod_uid).then_some(oc.level)
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
        k.container_kind = Some(c.kind);
        k.limits_memory_bytes = c.limits_memory_bytes;
        k.requests_memory_bytes = c.requests_memory_bytes;
    }
}
