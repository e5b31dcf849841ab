//! Pod → the compact record the index keeps.
//!
//! The watcher decodes the API's Pod JSON straight into an [`IndexedPod`]: serde reads only the
//! fields attribution needs and skips the rest of the object (managed fields, annotations,
//! volumes…) without allocating it, so neither a page of a LIST nor the store ever holds
//! a full `Pod`.
//!
//! # Runtime settings
//!
//! Of each container's `command`, `args` and `env`, only what sizes a language runtime's heap
//! is kept ([`SpecHints`]: the heap flags and JAVA_TOOL_OPTIONS, NODE_OPTIONS, GOMEMLIMIT and
//! their kind), and only for containers that have any; the rest is read past while decoding.
//!
//! # Container IDs
//!
//! Container IDs are kept bare (the `<runtime>://` prefix of `status.*containerStatuses[]
//! .containerID` is stripped, see [`bare_container_id`]), for regular, init and ephemeral
//! containers, together with `lastState.terminated.containerID`: the previous instance of a
//! restarted container (a container killed by the OOM killer is usually restarted by the
//! kubelet right away).
//!
//! # Memory figures
//!
//! [`ContainerInfo::limits_memory_bytes`] / [`ContainerInfo::requests_memory_bytes`] come from
//! `status.containerStatuses[].resources` when the kubelet reports them (the values actually
//! enacted, which differ from the spec after an in-place resize), else from the pod spec.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::NamespaceResourceScope;
use serde::{Deserialize, Deserializer, Serialize};

use super::owner::{resolve_owner, Owner, OwnerReference};
use super::quantity::parse_memory_quantity;
use crate::runtime::SpecHints;

/// What the index knows about a pod, as lookups return it.
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

pub use crate::model::ContainerKind;

/// What the index knows about one container of a pod, as lookups return it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerInfo {
    pub name: String,
    /// Current container ID, bare (no `containerd://` prefix); `None` before it started.
    pub id: Option<String>,
    pub kind: ContainerKind,
    pub limits_memory_bytes: Option<u64>,
    pub requests_memory_bytes: Option<u64>,
    /// What its spec says about a language runtime (for when procfs was too late).
    pub runtime: Option<Box<SpecHints>>,
}

/// One container as the index keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRecord {
    pub name: Box<str>,
    pub kind: ContainerKind,
    /// Current ID, bare.
    pub id: Option<Box<str>>,
    /// `lastState.terminated.containerID`, bare, when it differs from `id`.
    pub last_id: Option<Box<str>>,
    pub limits_memory_bytes: Option<u64>,
    pub requests_memory_bytes: Option<u64>,
    /// `None` for the many containers whose spec says nothing about a runtime.
    pub runtime: Option<Box<SpecHints>>,
}

impl ContainerRecord {
    fn info(&self) -> ContainerInfo {
        ContainerInfo {
            name: self.name.to_string(),
            id: self.id.as_deref().map(str::to_string),
            kind: self.kind,
            limits_memory_bytes: self.limits_memory_bytes,
            requests_memory_bytes: self.requests_memory_bytes,
            runtime: self.runtime.clone(),
        }
    }
}

/// A Pod reduced to what attribution reads. It is what the watcher decodes and the reflector
/// stores: `metadata` holds only the name, namespace and UID (plus the resourceVersion until
/// [`IndexedPod::strip`]).
#[derive(Debug, Clone, PartialEq)]
pub struct IndexedPod {
    metadata: ObjectMeta,
    node: Option<Box<str>>,
    qos_class: Option<Box<str>>,
    owner: Option<Owner>,
    containers: Box<[ContainerRecord]>,
}

impl k8s_openapi::Resource for IndexedPod {
    const API_VERSION: &'static str = "v1";
    const GROUP: &'static str = "";
    const KIND: &'static str = "Pod";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "pods";
    type Scope = NamespaceResourceScope;
}

impl k8s_openapi::Metadata for IndexedPod {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl IndexedPod {
    /// The pod's UID; empty for an object without one (which the index ignores).
    pub fn uid(&self) -> &str {
        self.metadata.uid.as_deref().unwrap_or_default()
    }

    pub fn containers(&self) -> &[ContainerRecord] {
        &self.containers
    }

    /// Every container ID that names a container of this pod (current and `lastState`),
    /// with the index of its container.
    pub fn container_ids(&self) -> impl Iterator<Item = (&str, usize)> {
        self.containers.iter().enumerate().flat_map(|(i, c)| {
            [c.id.as_deref(), c.last_id.as_deref()]
                .into_iter()
                .flatten()
                .map(move |id| (id, i))
        })
    }

    /// Drops what the store does not need once the watcher has read it: the resourceVersion
    /// (the watcher resumes from the one it keeps itself).
    pub fn strip(&mut self) {
        self.metadata.resource_version = None;
    }

    /// The lookup view of this pod.
    pub fn info(&self, deleted: bool) -> PodInfo {
        PodInfo {
            namespace: self.metadata.namespace.clone().unwrap_or_default(),
            name: self.metadata.name.clone().unwrap_or_default(),
            uid: self.uid().to_string(),
            node: self.node.as_deref().map(str::to_string),
            qos_class: self.qos_class.as_deref().map(str::to_string),
            owner: self.owner.clone(),
            containers: self.containers.iter().map(ContainerRecord::info).collect(),
            deleted,
        }
    }

    /// The lookup view of container `idx`.
    pub fn container_info(&self, idx: usize) -> Option<ContainerInfo> {
        self.containers.get(idx).map(ContainerRecord::info)
    }
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

// The Pod JSON as the index reads it. Fields not named here are skipped by serde.

#[derive(Deserialize)]
struct PodDoc<'a> {
    #[serde(borrow, default)]
    metadata: MetaDoc<'a>,
    #[serde(borrow, default)]
    spec: Option<SpecDoc<'a>>,
    #[serde(borrow, default)]
    status: Option<StatusDoc<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct MetaDoc<'a> {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    #[serde(borrow, default)]
    labels: Option<LabelsDoc<'a>>,
    #[serde(default)]
    owner_references: Option<Vec<OwnerReference>>,
}

#[derive(Deserialize, Default)]
struct LabelsDoc<'a> {
    #[serde(borrow, rename = "pod-template-hash")]
    pod_template_hash: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct SpecDoc<'a> {
    node_name: Option<String>,
    #[serde(borrow, default)]
    containers: Option<Vec<ContainerDoc<'a>>>,
    #[serde(borrow, default)]
    init_containers: Option<Vec<ContainerDoc<'a>>>,
    #[serde(borrow, default)]
    ephemeral_containers: Option<Vec<ContainerDoc<'a>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerDoc<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    resources: Option<ResourcesDoc<'a>>,
    #[serde(borrow, default)]
    command: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow, default)]
    args: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow, default)]
    env: Option<Vec<EnvDoc<'a>>>,
    #[serde(default)]
    env_from: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvDoc<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    value: Option<Cow<'a, str>>,
    #[serde(default)]
    value_from: Option<serde::de::IgnoredAny>,
}

impl ContainerDoc<'_> {
    fn runtime(&self) -> Option<Box<SpecHints>> {
        fn strs<'s>(v: &'s Option<Vec<Cow<'_, str>>>) -> Vec<&'s str> {
            v.iter().flatten().map(|s| s.as_ref()).collect()
        }
        // A `valueFrom` is not resolved here: set, value unknown.
        let env = self.env.iter().flatten().map(|e| {
            let value = e.value_from.is_none().then(|| e.value.as_deref().unwrap_or_default());
            (e.name.as_ref(), value)
        });
        SpecHints::new(&strs(&self.command), &strs(&self.args), env, self.env_from.is_some())
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct StatusDoc<'a> {
    qos_class: Option<String>,
    #[serde(borrow, default)]
    container_statuses: Option<Vec<StatusOfDoc<'a>>>,
    #[serde(borrow, default)]
    init_container_statuses: Option<Vec<StatusOfDoc<'a>>>,
    #[serde(borrow, default)]
    ephemeral_container_statuses: Option<Vec<StatusOfDoc<'a>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatusOfDoc<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow, default, rename = "containerID")]
    container_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    resources: Option<ResourcesDoc<'a>>,
    #[serde(borrow, default)]
    last_state: Option<LastStateDoc<'a>>,
}

#[derive(Deserialize)]
struct LastStateDoc<'a> {
    #[serde(borrow, default)]
    terminated: Option<TerminatedDoc<'a>>,
}

#[derive(Deserialize)]
struct TerminatedDoc<'a> {
    #[serde(borrow, default, rename = "containerID")]
    container_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ResourcesDoc<'a> {
    #[serde(borrow, default)]
    limits: Option<MemoryDoc<'a>>,
    #[serde(borrow, default)]
    requests: Option<MemoryDoc<'a>>,
}

#[derive(Deserialize)]
struct MemoryDoc<'a> {
    #[serde(borrow, default)]
    memory: Option<Cow<'a, str>>,
}

fn memory_of(res: Option<&ResourcesDoc<'_>>, limits: bool) -> Option<u64> {
    let res = res?;
    let map = if limits { &res.limits } else { &res.requests };
    parse_memory_quantity(map.as_ref()?.memory.as_deref()?)
}

fn boxed_id(id: Option<&str>) -> Option<Box<str>> {
    id.and_then(bare_container_id).map(Box::from)
}

/// Adds the containers of one kind: every spec entry in spec order, then any status without
/// a spec entry (which should not happen; kept anyway).
fn add_containers(
    out: &mut Vec<ContainerRecord>,
    kind: ContainerKind,
    specs: &[ContainerDoc<'_>],
    statuses: &[StatusOfDoc<'_>],
) {
    let mut names: Vec<&str> = specs.iter().map(|c| c.name.as_ref()).collect();
    for st in statuses {
        if !names.contains(&st.name.as_ref()) {
            names.push(st.name.as_ref());
        }
    }
    for name in names {
        let spec = specs.iter().find(|c| c.name == name);
        let spec_res = spec.and_then(|c| c.resources.as_ref());
        let st = statuses.iter().find(|s| s.name == name);
        let status_res = st.and_then(|s| s.resources.as_ref());
        let id = boxed_id(st.and_then(|s| s.container_id.as_deref()));
        let last_id = boxed_id(
            st.and_then(|s| s.last_state.as_ref())
                .and_then(|s| s.terminated.as_ref())
                .and_then(|t| t.container_id.as_deref()),
        )
        .filter(|prev| Some(prev) != id.as_ref());
        out.push(ContainerRecord {
            name: name.into(),
            kind,
            id,
            last_id,
            limits_memory_bytes: memory_of(status_res, true).or_else(|| memory_of(spec_res, true)),
            requests_memory_bytes: memory_of(status_res, false)
                .or_else(|| memory_of(spec_res, false)),
            runtime: spec.and_then(ContainerDoc::runtime),
        });
    }
}

impl From<PodDoc<'_>> for IndexedPod {
    fn from(doc: PodDoc<'_>) -> Self {
        let spec = doc.spec.unwrap_or_default();
        let status = doc.status.unwrap_or_default();
        let mut containers = Vec::new();
        let groups = [
            (
                ContainerKind::Init,
                spec.init_containers,
                status.init_container_statuses,
            ),
            (
                ContainerKind::Regular,
                spec.containers,
                status.container_statuses,
            ),
            (
                ContainerKind::Ephemeral,
                spec.ephemeral_containers,
                status.ephemeral_container_statuses,
            ),
        ];
        for (kind, specs, statuses) in groups {
            add_containers(
                &mut containers,
                kind,
                specs.as_deref().unwrap_or_default(),
                statuses.as_deref().unwrap_or_default(),
            );
        }
        let meta = doc.metadata;
        let hash = meta
            .labels
            .as_ref()
            .and_then(|l| l.pod_template_hash.as_deref());
        let owner = resolve_owner(meta.owner_references.as_deref().unwrap_or_default(), hash);
        IndexedPod {
            metadata: ObjectMeta {
                name: meta.name,
                namespace: meta.namespace,
                uid: meta.uid.filter(|u| !u.is_empty()),
                resource_version: meta.resource_version,
                ..ObjectMeta::default()
            },
            node: spec.node_name.map(Box::from),
            qos_class: status.qos_class.map(Box::from),
            owner,
            containers: containers.into_boxed_slice(),
        }
    }
}

impl<'de> Deserialize<'de> for IndexedPod {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        PodDoc::deserialize(deserializer).map(IndexedPod::from)
    }
}

/// k8s-openapi Pods for the tests of the index, decoded the way the watcher decodes them.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::IndexedPod;
    use k8s_openapi::{
        api::core::v1::{
            Container, ContainerStatus, Pod, PodSpec, PodStatus, ResourceRequirements,
        },
        apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::OwnerReference},
    };
    use std::collections::BTreeMap;

    /// `pod` as the watcher would decode it from the API's JSON.
    pub fn indexed(pod: &Pod) -> IndexedPod {
        serde_json::from_value(serde_json::to_value(pod).unwrap()).expect("decodes as IndexedPod")
    }

    pub fn hex_id(seed: u8) -> String {
        format!("{:02x}", seed).repeat(32)
    }

    pub struct C<'a> {
        pub name: &'a str,
        pub id: Option<String>,
        pub limit: Option<&'a str>,
        pub request: Option<&'a str>,
    }

    pub fn resources(limit: Option<&str>, request: Option<&str>) -> Option<ResourceRequirements> {
        let q = |v: Option<&str>| {
            v.map(|v| BTreeMap::from([("memory".to_string(), Quantity(v.to_string()))]))
        };
        Some(ResourceRequirements {
            limits: q(limit),
            requests: q(request),
            ..Default::default()
        })
    }

    pub fn status(c: &C<'_>) -> ContainerStatus {
        ContainerStatus {
            name: c.name.to_string(),
            container_id: c.id.as_ref().map(|id| format!("containerd://{id}")),
            ..Default::default()
        }
    }

    pub fn make_pod(ns: &str, name: &str, uid: &str, containers: &[C<'_>]) -> Pod {
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

    pub fn simple_pod(uid: &str, id_seed: u8) -> Pod {
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

    pub fn owner_ref(
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

    pub fn with_owner(mut pod: Pod, owner: OwnerReference, hash_label: Option<&str>) -> Pod {
        pod.metadata.owner_references = Some(vec![owner]);
        if let Some(h) = hash_label {
            pod.metadata.labels = Some(BTreeMap::from([(
                "pod-template-hash".to_string(),
                h.to_string(),
            )]));
        }
        pod
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerState, ContainerStateTerminated, ContainerStatus, EphemeralContainer,
        Pod,
    };

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

        let e = indexed(&pod);
        let i = &e.info(false);
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
        let mut ids: Vec<_> = e
            .container_ids()
            .map(|(id, i)| (id.to_string(), i))
            .collect();
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
        assert_eq!(indexed(&no_uid).uid(), "", "no UID: the index ignores it");
        no_uid.metadata.uid = Some(String::new());
        assert_eq!(indexed(&no_uid).uid(), "", "an empty UID is none");
        let bare = indexed(&Pod {
            metadata: pod.metadata.clone(),
            ..Default::default()
        });
        assert_eq!(bare.uid(), "uid-1");
        assert!(bare.containers().is_empty());
    }

    #[test]
    fn runtime_settings_are_kept_only_for_containers_that_have_them() {
        use k8s_openapi::api::core::v1::{EnvFromSource, EnvVar, EnvVarSource, ObjectFieldSelector};
        let var = |name: &str, value: &str| EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() };
        let mut pod = make_pod("ns", "p", "u", &[
            C { name: "app", id: None, limit: Some("512Mi"), request: None },
            C { name: "side", id: None, limit: None, request: None },
            C { name: "cfg", id: None, limit: None, request: None },
        ]);
        let cs = pod.spec.as_mut().unwrap().containers.as_mut_slice();
        cs[0].command = Some(vec!["java".into(), "-XX:MaxRAMPercentage=90".into(), "-cp".into(), "/app".into()]);
        cs[0].args = Some(vec!["Main".into(), "-Xmx1g".into()]);
        cs[0].env = Some(vec![
            var("PATH", "/bin"),
            var("JAVA_TOOL_OPTIONS", "-Dfile.encoding=UTF-8"),
            EnvVar {
                name: "GOMEMLIMIT".into(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector { field_path: "metadata.name".into(), ..Default::default() }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ]);
        cs[1].command = Some(vec!["/pause".into()]);
        cs[1].env = Some(vec![var("PATH", "/bin")]);
        cs[2].env_from = Some(vec![EnvFromSource::default()]);
        cs[2].env = Some(vec![var("NODE_OPTIONS", "--max-old-space-size=100")]);
        let e = indexed(&pod);
        let [app, side, cfg] = e.containers() else { panic!("three containers") };
        let hints = app.runtime.as_ref().expect("the JVM's settings");
        let p = hints.process();
        assert_eq!(p.argv, ["java", "-XX:MaxRAMPercentage=90"], "heap flags of the JVM's options only");
        assert_eq!(p.env.get(crate::runtime::EnvVar::JavaToolOptions), Some(Some("-Dfile.encoding=UTF-8")));
        assert_eq!(p.env.get(crate::runtime::EnvVar::GoMemLimit), Some(None), "a valueFrom: set, unknown");
        let r = crate::runtime::recognise(&p, Some(512 << 20), crate::model::RuntimeSource::PodSpec).unwrap();
        assert_eq!(r.heap_max_bytes, Some(462 << 20));
        assert_eq!(side.runtime, None, "nothing about a runtime: nothing kept");
        let p = cfg.runtime.as_ref().unwrap().process();
        assert_eq!(p.env.get(crate::runtime::EnvVar::NodeOptions), Some(Some("--max-old-space-size=100")));
        assert_eq!(p.env.get(crate::runtime::EnvVar::JavaToolOptions), Some(None), "envFrom may set it");
        assert_eq!(e.container_info(0).unwrap().runtime.as_ref(), Some(hints));
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
                prop::sample::select(vec![
                    "128Mi",
                    "1.5Gi",
                    "1e3",
                    "-1",
                    "0.0001Ki",
                    "999999999999999999999E",
                    "containerd://",
                    "docker://ab",
                    "ReplicaSet",
                    "pod-template-hash",
                    "java",
                    "-Xmx1g",
                    "JAVA_TOOL_OPTIONS",
                    "GOMEMLIMIT",
                    "sh"
                ])
                .prop_map(Into::into),
            ];
            leaf.prop_recursive(4, 64, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                    prop::collection::btree_map(
                        prop::sample::select(vec![
                            "metadata",
                            "spec",
                            "status",
                            "name",
                            "namespace",
                            "uid",
                            "labels",
                            "ownerReferences",
                            "kind",
                            "containers",
                            "initContainers",
                            "ephemeralContainers",
                            "containerStatuses",
                            "resources",
                            "limits",
                            "requests",
                            "memory",
                            "containerID",
                            "lastState",
                            "terminated",
                            "qosClass",
                            "nodeName",
                            "command",
                            "args",
                            "env",
                            "envFrom",
                            "value",
                            "valueFrom",
                            "controller",
                            "apiVersion",
                            "pod-template-hash",
                        ])
                        .prop_map(String::from),
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
                if let Ok(pod) = serde_json::from_value::<IndexedPod>(v) {
                    let _ = pod.info(false);
                    let _ = pod.container_ids().count();
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
                let pod: IndexedPod = serde_json::from_value(v).expect("shaped pod deserializes");
                prop_assert_eq!(pod.uid(), "u", "a pod with metadata yields info");
                let info = pod.info(false);
                prop_assert_eq!(info.containers.len(), 1);
            }

            #[test]
            fn container_ids_never_panic(s in "\\PC{0,40}") {
                let _ = bare_container_id(&s);
            }
        }
    }
}
