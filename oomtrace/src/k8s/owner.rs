//! The workload a pod belongs to, from its owner references.

use serde::{Deserialize, Serialize};

/// A pod's owner (workload).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Owner {
    /// `Deployment`, `ReplicaSet`, `StatefulSet`, `DaemonSet`, `Job`, `Node` (static pods)...
    pub kind: String,
    pub name: String,
}

/// The part of a `metadata.ownerReferences[]` entry that names the owner.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    pub controller: Option<bool>,
}

/// The owner reported for a pod with these owner references and this `pod-template-hash`
/// label.
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
pub fn resolve_owner(refs: &[OwnerReference], pod_template_hash: Option<&str>) -> Option<Owner> {
    let owner = refs
        .iter()
        .find(|r| r.controller == Some(true))
        .or_else(|| refs.first())?;
    if owner.kind == "ReplicaSet" && owner.api_version.starts_with("apps/") {
        if let Some(hash) = pod_template_hash.filter(|h| !h.is_empty()) {
            if let Some(deployment) = owner
                .name
                .strip_suffix(hash)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Owner references and the `pod-template-hash` label of a pod.
    #[derive(Clone, Default)]
    struct Pod {
        refs: Vec<OwnerReference>,
        hash: Option<String>,
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
            controller,
        }
    }

    fn with_owner(mut pod: Pod, owner: OwnerReference, hash_label: Option<&str>) -> Pod {
        pod.refs = vec![owner];
        if let Some(h) = hash_label {
            pod.hash = Some(h.to_string());
        }
        pod
    }

    fn owner(pod: &Pod) -> Option<(String, String)> {
        resolve_owner(&pod.refs, pod.hash.as_deref()).map(|o| (o.kind, o.name))
    }

    #[test]
    fn owner_resolution() {
        let base = Pod::default();
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
        pod.refs = vec![
            owner_ref("ConfigMap", "v1", "cm", None),
            owner_ref("DaemonSet", "apps/v1", "agent", Some(true)),
        ];
        assert_eq!(owner(&pod), Some(("DaemonSet".into(), "agent".into())));
        pod.refs = vec![owner_ref("ConfigMap", "v1", "cm", Some(false))];
        assert_eq!(owner(&pod), Some(("ConfigMap".into(), "cm".into())));
    }
}
