//! Decoding Kubernetes identity from a cgroup path.
//!
//! When the kernel OOM-kills a task, the only Kubernetes-related fact it has is the task's memory
//! cgroup. kubelet and the container runtimes encode the QoS class, the pod UID and the container
//! ID in that cgroup's path, so decoding the path lets us attribute a kill to a pod and container
//! without asking the runtime (which has often forgotten the container by the time we ask).
//!
//! The path strings look the same under cgroup v1 (relative to the memory controller mount) and
//! cgroup v2 (relative to the unified hierarchy root), so one parser serves both.
//!
//! # Layouts understood
//!
//! systemd cgroup driver (slice names repeat their parents' names, joined by `-`, which is why
//! kubelet writes the pod UID with `_` instead of `-`):
//!
//! ```text
//! /kubepods.slice                                                   Level::Kubepods
//! /kubepods.slice/kubepods-burstable.slice                          Level::Qos (Burstable)
//! /kubepods.slice/kubepods-besteffort.slice                         Level::Qos (BestEffort)
//! /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice          Level::Pod
//! /kubepods.slice/kubepods-pod<uid_>.slice                          Level::Pod (Guaranteed)
//! .../kubepods-...-pod<uid_>.slice/cri-containerd-<id>.scope        Level::Container
//! .../kubepods-...-pod<uid_>.slice/crio-<id>.scope                  Level::Container
//! .../kubepods-...-pod<uid_>.slice/docker-<id>.scope                Level::Container
//! .../kubepods-...-pod<uid_>.slice/crio-conmon-<id>.scope           Level::Conmon (not a container)
//! .../cri-containerd-<id>.scope/<anything>/...                      Level::ContainerChild
//! ```
//!
//! cgroupfs cgroup driver:
//!
//! ```text
//! /kubepods                                      Level::Kubepods
//! /kubepods/burstable | /kubepods/besteffort     Level::Qos
//! /kubepods/burstable/pod<uid>                   Level::Pod
//! /kubepods/pod<uid>                             Level::Pod (Guaranteed)
//! /kubepods/.../pod<uid>/<id>                    Level::Container (runtime unknown)
//! /kubepods/.../pod<uid>/crio-<id>               Level::Container (also cri-containerd-, docker-)
//! /kubepods/.../pod<uid>/crio-conmon-<id>        Level::Conmon
//! /kubepods/.../pod<uid>/<id>/<anything>/...     Level::ContainerChild
//! ```
//!
//! The kubepods root may sit anywhere in the path, because kubelet's `--cgroup-root`, kind,
//! minikube and some distros nest it (`/kubelet.slice/kubelet-kubepods.slice/...`,
//! `/system.slice/docker-<node>.scope/kubelet.slice/...`, `/docker/<node>/kubepods/...`).
//! A systemd kubepods root is `kubepods.slice` or `<prefix>-kubepods.slice`; a cgroupfs one is a
//! segment named exactly `kubepods`.
//!
//! # What is not guessed
//!
//! Every segment from the kubepods root down to the container segment must match the layout
//! exactly (same driver throughout, systemd slice names consistent with their parent, pod UID
//! well-formed, container ID 64 lowercase hex digits, known runtime prefix). If any of them does
//! not, the attempt fails as a whole: we never stop at "the last valid level", because claiming
//! `Level::Pod` for a path that is really some unknown cgroup below the pod would misreport where
//! the memory limit was hit. Only segments *below* a container's own cgroup are free-form (they
//! belong to the workload, e.g. `init.scope` of systemd-in-a-container or crun's `container`).
//!
//! If several segments look like a kubepods root, the leftmost one whose subtree parses wins, so a
//! cluster nested inside a pod (kind in a pod) is attributed to the outer, host-level pod.
//! Paths containing `.` or `..` segments (which the kernel never produces) yield `None`; empty
//! segments (`//`, trailing `/`) are skipped, and the returned cgroup paths are always exact
//! prefixes of the input.

use std::fmt;

use serde::Serialize;

pub use crate::model::Level;

/// Pod QoS class, spelled as Kubernetes writes it in `status.qosClass`, so a parsed path can be
/// compared with (and reported next to) API objects without translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    /// The `status.qosClass` spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }
}

impl fmt::Display for QosClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Container runtime named by the cgroup path. `as_str` matches the scheme Kubernetes puts in
/// `status.containerStatuses[].containerID` (`containerd://`, `cri-o://`, `docker://`), so a
/// full container ID can be rebuilt as `format!("{runtime}://{id}")`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Runtime {
    #[serde(rename = "containerd")]
    Containerd,
    #[serde(rename = "cri-o")]
    CriO,
    #[serde(rename = "docker")]
    Docker,
}

impl Runtime {
    /// The `containerID` scheme: `"containerd"`, `"cri-o"` or `"docker"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// kubelet cgroup driver that produced the path; reported because it tells which node
/// configuration we are looking at, and the two drivers name the same things differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    Systemd,
    Cgroupfs,
}

impl Driver {
    /// `"systemd"` or `"cgroupfs"`, as in kubelet's `cgroupDriver` setting.
    pub const fn as_str(self) -> &'static str {
        match self {
            Driver::Systemd => "systemd",
            Driver::Cgroupfs => "cgroupfs",
        }
    }
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a kubelet-managed cgroup path says about its pod and container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KubeCgroup {
    /// Which kubelet cgroup driver wrote the path.
    pub driver: Driver,
    /// QoS class of the pod (or of the QoS cgroup). For `Level::Kubepods` this is `Guaranteed`,
    /// following kubelet, whose Guaranteed QoS cgroup *is* the kubepods root; check `level`
    /// before reading it as a pod's class.
    pub qos: QosClass,
    /// Pod UID, canonical with `-` (as in `metadata.uid`) so it can be looked up directly.
    /// Static pods are the exception: kubelet names their cgroup after the 32-hex-digit hash
    /// of the manifest, which is the mirror pod's `kubernetes.io/config.hash` annotation, not its
    /// `metadata.uid`; it is returned as is (no dashes).
    pub pod_uid: Option<String>,
    /// Bare 64-hex container ID, as in `status.containerStatuses[].containerID` after the
    /// `<runtime>://` scheme. Set for `Container` and `ContainerChild` only. It can also be a pod
    /// sandbox's (pause container's) ID, which appears in no `containerStatuses`.
    pub container_id: Option<String>,
    /// For `Level::Conmon` only: the ID of the container that this conmon monitors. Kept apart
    /// from `container_id` so that a conmon kill is never mistaken for a container kill.
    pub conmon_for: Option<String>,
    /// Runtime, when the path names it (systemd scope prefix, prefixed cgroupfs directory);
    /// `None` for bare cgroupfs container IDs, which every runtime uses alike.
    pub runtime: Option<Runtime>,
    /// Which cgroup of the hierarchy the path is.
    pub level: Level,
    /// Path of the pod-level cgroup (a prefix of the input), so callers can tell an OOM at the
    /// pod limit from one at the container limit and read the pod cgroup's files.
    pub pod_cgroup: Option<String>,
    /// Path of the container's own cgroup (a prefix of the input), for `Container` and
    /// `ContainerChild`; for a child this is where the container's limit lives.
    pub container_cgroup: Option<String>,
}

/// Parses a cgroup path (as the kernel reports it, with a leading `/`) into what kubelet and the
/// container runtime encoded in it. Returns `None` for anything that is not under a kubepods root
/// or does not follow a known layout exactly; see the module documentation for the rules.
///
/// Never panics; runs in time linear in the input and allocates only the returned strings.
#[must_use]
pub fn parse(path: &str) -> Option<KubeCgroup> {
    let segments = Segments::new(path);
    // The kernel never produces these; with them the path may not mean what it says.
    if segments.clone().any(|(_, s)| s == "." || s == "..") {
        return None;
    }
    let mut it = segments;
    while let Some((_, seg)) = it.next() {
        let parsed = if seg == "kubepods" {
            parse_cgroupfs(path, it.clone())
        } else if let Some(stem) = systemd_root_stem(seg) {
            parse_systemd(path, stem, it.clone())
        } else {
            None
        };
        if parsed.is_some() {
            return parsed;
        }
    }
    None
}

/// Non-empty `/`-separated segments with their byte offsets, without allocating.
#[derive(Clone)]
struct Segments<'a> {
    path: &'a str,
    pos: usize,
}

impl<'a> Segments<'a> {
    fn new(path: &'a str) -> Self {
        Segments { path, pos: 0 }
    }
}

impl<'a> Iterator for Segments<'a> {
    /// (byte offset of the segment's start, segment)
    type Item = (usize, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.path.get(self.pos..)?;
        let trimmed = rest.trim_start_matches('/');
        if trimmed.is_empty() {
            self.pos = self.path.len();
            return None;
        }
        let start = self.pos + (rest.len() - trimmed.len());
        let len = trimmed.find('/').unwrap_or(trimmed.len());
        self.pos = start + len;
        Some((start, &trimmed[..len]))
    }
}

/// The input up to and including the segment at `start` (always a char boundary).
fn prefix_through(path: &str, start: usize, seg: &str) -> Option<String> {
    path.get(..start + seg.len()).map(str::to_owned)
}

/// `kubepods.slice` → `kubepods`, `kubelet-kubepods.slice` → `kubelet-kubepods`.
fn systemd_root_stem(seg: &str) -> Option<&str> {
    let stem = seg.strip_suffix(".slice")?;
    if stem == "kubepods" {
        return Some(stem);
    }
    let parent = stem.strip_suffix("-kubepods")?;
    // A systemd slice name has no empty components.
    (!parent.is_empty() && !parent.split('-').any(str::is_empty)).then_some(stem)
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(is_lower_hex)
}

/// Whether `raw` is a pod UID as kubelet writes it in a path: a lowercase UUID with `sep` where
/// the UUID has `-`, or a 32-hex static-pod hash. Checked before anything is allocated.
fn is_pod_uid(raw: &str, sep: u8) -> bool {
    let b = raw.as_bytes();
    match b.len() {
        32 => b.iter().copied().all(is_lower_hex),
        36 => b.iter().enumerate().all(|(i, &c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == sep
            } else {
                is_lower_hex(c)
            }
        }),
        _ => false,
    }
}

/// A container directory/scope name without `.scope`: (is conmon, runtime, id).
fn prefixed_container(name: &str) -> Option<(bool, Runtime, &str)> {
    const PREFIXES: [(&str, Runtime); 3] = [
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("docker-", Runtime::Docker),
    ];
    if let Some(id) = name.strip_prefix("crio-conmon-") {
        return is_container_id(id).then_some((true, Runtime::CriO, id));
    }
    PREFIXES.iter().find_map(|&(prefix, runtime)| {
        let id = name.strip_prefix(prefix)?;
        is_container_id(id).then_some((false, runtime, id))
    })
}

fn above_pod(driver: Driver, qos: QosClass, level: Level) -> KubeCgroup {
    KubeCgroup {
        driver,
        qos,
        pod_uid: None,
        container_id: None,
        conmon_for: None,
        runtime: None,
        level,
        pod_cgroup: None,
        container_cgroup: None,
    }
}

/// A recognised segment directly below the pod cgroup.
struct ContainerSeg<'a> {
    /// Byte offset of `seg` in the input.
    start: usize,
    seg: &'a str,
    /// CRI-O's conmon rather than a container.
    conmon: bool,
    runtime: Option<Runtime>,
    id: &'a str,
}

/// A validated pod segment.
struct PodSeg<'a> {
    /// Byte offset of `seg` in the input.
    start: usize,
    seg: &'a str,
    /// The UID as written in the path, already checked with [`is_pod_uid`].
    uid_raw: &'a str,
    /// What stands for `-` in `uid_raw`.
    sep: char,
}

/// Everything from the pod segment down, shared by both drivers. All checks are done before the
/// first allocation, so that failed attempts (one per kubepods-looking segment) cost nothing.
fn below_pod(
    path: &str,
    driver: Driver,
    qos: QosClass,
    pod: &PodSeg<'_>,
    container: Option<ContainerSeg<'_>>,
    mut rest: Segments<'_>,
) -> Option<KubeCgroup> {
    let mut k = KubeCgroup {
        driver,
        qos,
        pod_uid: None,
        container_id: None,
        conmon_for: None,
        runtime: None,
        level: Level::Pod,
        pod_cgroup: None,
        container_cgroup: None,
    };
    if let Some(c) = container {
        let has_child = rest.next().is_some();
        k.runtime = c.runtime;
        if c.conmon {
            // conmon never creates sub-cgroups; something below it is not a layout we know.
            if has_child {
                return None;
            }
            k.level = Level::Conmon;
            k.conmon_for = Some(c.id.to_owned());
        } else {
            k.level = if has_child {
                Level::ContainerChild
            } else {
                Level::Container
            };
            k.container_id = Some(c.id.to_owned());
            k.container_cgroup = Some(prefix_through(path, c.start, c.seg)?);
        }
    }
    k.pod_uid = Some(pod.uid_raw.replace(pod.sep, "-"));
    k.pod_cgroup = Some(prefix_through(path, pod.start, pod.seg)?);
    Some(k)
}

/// Parses what follows a systemd kubepods root slice named `<stem>.slice`.
fn parse_systemd(path: &str, stem: &str, mut rest: Segments<'_>) -> Option<KubeCgroup> {
    const D: Driver = Driver::Systemd;
    let Some((qos_start, qos_seg)) = rest.next() else {
        return Some(above_pod(D, QosClass::Guaranteed, Level::Kubepods));
    };
    let child = qos_seg.strip_prefix(stem)?.strip_prefix('-')?;
    let qos = match child {
        "burstable.slice" => Some(QosClass::Burstable),
        "besteffort.slice" => Some(QosClass::BestEffort),
        _ => None,
    };
    let (qos, pod_start, pod_seg, uid_raw) = match qos {
        Some(qos) => {
            let Some((pod_start, pod_seg)) = rest.next() else {
                return Some(above_pod(D, qos, Level::Qos));
            };
            let qos_stem = qos_seg.strip_suffix(".slice")?;
            let uid_raw = pod_seg
                .strip_prefix(qos_stem)?
                .strip_prefix("-pod")?
                .strip_suffix(".slice")?;
            (qos, pod_start, pod_seg, uid_raw)
        }
        None => {
            let uid_raw = child.strip_prefix("pod")?.strip_suffix(".slice")?;
            (QosClass::Guaranteed, qos_start, qos_seg, uid_raw)
        }
    };
    if !is_pod_uid(uid_raw, b'_') {
        return None;
    }
    let pod = PodSeg {
        start: pod_start,
        seg: pod_seg,
        uid_raw,
        sep: '_',
    };
    let container = match rest.next() {
        None => None,
        Some((start, seg)) => {
            let (conmon, runtime, id) = prefixed_container(seg.strip_suffix(".scope")?)?;
            Some(ContainerSeg {
                start,
                seg,
                conmon,
                runtime: Some(runtime),
                id,
            })
        }
    };
    below_pod(path, D, qos, &pod, container, rest)
}

/// Parses what follows a cgroupfs `kubepods` directory.
fn parse_cgroupfs(path: &str, mut rest: Segments<'_>) -> Option<KubeCgroup> {
    const D: Driver = Driver::Cgroupfs;
    let Some((mut pod_start, mut pod_seg)) = rest.next() else {
        return Some(above_pod(D, QosClass::Guaranteed, Level::Kubepods));
    };
    let qos = match pod_seg {
        "burstable" => QosClass::Burstable,
        "besteffort" => QosClass::BestEffort,
        _ => QosClass::Guaranteed,
    };
    if qos != QosClass::Guaranteed {
        let Some(next) = rest.next() else {
            return Some(above_pod(D, qos, Level::Qos));
        };
        (pod_start, pod_seg) = next;
    }
    let uid_raw = pod_seg.strip_prefix("pod")?;
    if !is_pod_uid(uid_raw, b'-') {
        return None;
    }
    let pod = PodSeg {
        start: pod_start,
        seg: pod_seg,
        uid_raw,
        sep: '-',
    };
    let container = match rest.next() {
        None => None,
        Some((start, seg)) if is_container_id(seg) => Some(ContainerSeg {
            start,
            seg,
            conmon: false,
            runtime: None,
            id: seg,
        }),
        Some((start, seg)) => {
            let (conmon, runtime, id) = prefixed_container(seg)?;
            Some(ContainerSeg {
                start,
                seg,
                conmon,
                runtime: Some(runtime),
                id,
            })
        }
    };
    below_pod(path, D, qos, &pod, container, rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const UID: &str = "1b2c3d4e-5f60-4172-8394-a5b6c7d8e9f0";
    const UID_: &str = "1b2c3d4e_5f60_4172_8394_a5b6c7d8e9f0";
    const STATIC_UID: &str = "6b5cf9c1d4fa2e0a2ab1f4b9b53c2d6c";
    const ID: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
    const NODE: &str = "9a8b7c6d5e4f30211203f4e5d6c7b8a99a8b7c6d5e4f30211203f4e5d6c7b8a9";

    /// Expected outcome of one table row.
    struct Want {
        driver: Driver,
        qos: QosClass,
        level: Level,
        uid: Option<&'static str>,
        id: Option<&'static str>,
        conmon_for: Option<&'static str>,
        runtime: Option<Runtime>,
        pod_cgroup: Option<String>,
        container_cgroup: Option<String>,
    }

    fn want(driver: Driver, qos: QosClass, level: Level) -> Want {
        Want {
            driver,
            qos,
            level,
            uid: None,
            id: None,
            conmon_for: None,
            runtime: None,
            pod_cgroup: None,
            container_cgroup: None,
        }
    }

    fn pod(driver: Driver, qos: QosClass, uid: &'static str, pod_cgroup: &str) -> Want {
        Want {
            uid: Some(uid),
            pod_cgroup: Some(pod_cgroup.to_owned()),
            ..want(driver, qos, Level::Pod)
        }
    }

    fn ctr(
        driver: Driver,
        qos: QosClass,
        runtime: Option<Runtime>,
        pod_cgroup: &str,
        container_cgroup: &str,
        child: bool,
    ) -> Want {
        Want {
            level: if child {
                Level::ContainerChild
            } else {
                Level::Container
            },
            id: Some(ID),
            runtime,
            container_cgroup: Some(container_cgroup.to_owned()),
            ..pod(driver, qos, UID, pod_cgroup)
        }
    }

    fn to_kube(w: Want) -> KubeCgroup {
        KubeCgroup {
            driver: w.driver,
            qos: w.qos,
            pod_uid: w.uid.map(str::to_owned),
            container_id: w.id.map(str::to_owned),
            conmon_for: w.conmon_for.map(str::to_owned),
            runtime: w.runtime,
            level: w.level,
            pod_cgroup: w.pod_cgroup,
            container_cgroup: w.container_cgroup,
        }
    }

    /// Real-world layouts: (name, path, expected).
    fn positive_table() -> Vec<(&'static str, String, Want)> {
        use Driver::{Cgroupfs, Systemd};
        use QosClass::{BestEffort, Burstable, Guaranteed};
        use Runtime::{Containerd, CriO, Docker};
        let sd_bu_pod =
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice");
        let sd_be_pod = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice"
        );
        let sd_gu_pod = format!("/kubepods.slice/kubepods-pod{UID_}.slice");
        let kind_pod = format!(
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/\
             kubelet-kubepods-besteffort-pod{UID_}.slice"
        );
        let kind_host_pod = format!("/system.slice/docker-{NODE}.scope{kind_pod}");
        let fs_bu_pod = format!("/kubepods/burstable/pod{UID}");
        let fs_be_pod = format!("/kubepods/besteffort/pod{UID}");
        let fs_gu_pod = format!("/kubepods/pod{UID}");
        let minikube_pod = format!("/docker/{NODE}/kubepods/besteffort/pod{UID}");
        let fs_kubelet_root_pod = format!("/kubelet/kubepods/pod{UID}");

        let mut t: Vec<(&'static str, String, Want)> = vec![
            // --- systemd driver (v2 unified or v1 memory controller: same strings) ---
            (
                "systemd containerd burstable",
                format!("{sd_bu_pod}/cri-containerd-{ID}.scope"),
                ctr(Systemd, Burstable, Some(Containerd), &sd_bu_pod, &format!("{sd_bu_pod}/cri-containerd-{ID}.scope"), false),
            ),
            (
                "systemd containerd besteffort",
                format!("{sd_be_pod}/cri-containerd-{ID}.scope"),
                ctr(Systemd, BestEffort, Some(Containerd), &sd_be_pod, &format!("{sd_be_pod}/cri-containerd-{ID}.scope"), false),
            ),
            (
                "systemd containerd guaranteed (no QoS slice)",
                format!("{sd_gu_pod}/cri-containerd-{ID}.scope"),
                ctr(Systemd, Guaranteed, Some(Containerd), &sd_gu_pod, &format!("{sd_gu_pod}/cri-containerd-{ID}.scope"), false),
            ),
            (
                "systemd cri-o burstable (OpenShift)",
                format!("{sd_bu_pod}/crio-{ID}.scope"),
                ctr(Systemd, Burstable, Some(CriO), &sd_bu_pod, &format!("{sd_bu_pod}/crio-{ID}.scope"), false),
            ),
            (
                "systemd cri-o v2 crun 'container' subgroup",
                format!("{sd_bu_pod}/crio-{ID}.scope/container"),
                ctr(Systemd, Burstable, Some(CriO), &sd_bu_pod, &format!("{sd_bu_pod}/crio-{ID}.scope"), true),
            ),
            (
                "systemd docker / cri-dockerd guaranteed",
                format!("{sd_gu_pod}/docker-{ID}.scope"),
                ctr(Systemd, Guaranteed, Some(Docker), &sd_gu_pod, &format!("{sd_gu_pod}/docker-{ID}.scope"), false),
            ),
            (
                "systemd containerd nested init cgroup",
                format!("{sd_be_pod}/cri-containerd-{ID}.scope/init"),
                ctr(Systemd, BestEffort, Some(Containerd), &sd_be_pod, &format!("{sd_be_pod}/cri-containerd-{ID}.scope"), true),
            ),
            (
                "systemd-in-container deep child",
                format!("{sd_gu_pod}/cri-containerd-{ID}.scope/init.scope/system.slice/foo.service"),
                ctr(Systemd, Guaranteed, Some(Containerd), &sd_gu_pod, &format!("{sd_gu_pod}/cri-containerd-{ID}.scope"), true),
            ),
            (
                "kind (kubelet cgroup root /kubelet)",
                format!("{kind_pod}/cri-containerd-{ID}.scope"),
                ctr(Systemd, BestEffort, Some(Containerd), &kind_pod, &format!("{kind_pod}/cri-containerd-{ID}.scope"), false),
            ),
            (
                "kind seen from the host (node container scope first)",
                format!("{kind_host_pod}/cri-containerd-{ID}.scope"),
                ctr(Systemd, BestEffort, Some(Containerd), &kind_host_pod, &format!("{kind_host_pod}/cri-containerd-{ID}.scope"), false),
            ),
            (
                "systemd pod level burstable",
                sd_bu_pod.clone(),
                pod(Systemd, Burstable, UID, &sd_bu_pod),
            ),
            (
                "systemd pod level guaranteed",
                sd_gu_pod.clone(),
                pod(Systemd, Guaranteed, UID, &sd_gu_pod),
            ),
            (
                "systemd pod level with trailing slash",
                format!("{sd_be_pod}/"),
                pod(Systemd, BestEffort, UID, &sd_be_pod),
            ),
            (
                "systemd static pod (manifest hash uid)",
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_UID}.slice"),
                pod(Systemd, Burstable, STATIC_UID, &format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_UID}.slice")),
            ),
            (
                "systemd QoS burstable",
                "/kubepods.slice/kubepods-burstable.slice".to_owned(),
                want(Systemd, Burstable, Level::Qos),
            ),
            (
                "systemd QoS besteffort",
                "/kubepods.slice/kubepods-besteffort.slice".to_owned(),
                want(Systemd, BestEffort, Level::Qos),
            ),
            (
                "systemd kubepods root",
                "/kubepods.slice".to_owned(),
                want(Systemd, Guaranteed, Level::Kubepods),
            ),
            (
                "kind kubepods root",
                "/kubelet.slice/kubelet-kubepods.slice".to_owned(),
                want(Systemd, Guaranteed, Level::Kubepods),
            ),
            (
                "kind QoS",
                "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice".to_owned(),
                want(Systemd, Burstable, Level::Qos),
            ),
            // --- cgroupfs driver ---
            (
                "cgroupfs burstable bare id (EKS AL2, GKE COS v1)",
                format!("{fs_bu_pod}/{ID}"),
                ctr(Cgroupfs, Burstable, None, &fs_bu_pod, &format!("{fs_bu_pod}/{ID}"), false),
            ),
            (
                "cgroupfs besteffort bare id",
                format!("{fs_be_pod}/{ID}"),
                ctr(Cgroupfs, BestEffort, None, &fs_be_pod, &format!("{fs_be_pod}/{ID}"), false),
            ),
            (
                "cgroupfs guaranteed bare id",
                format!("{fs_gu_pod}/{ID}"),
                ctr(Cgroupfs, Guaranteed, None, &fs_gu_pod, &format!("{fs_gu_pod}/{ID}"), false),
            ),
            (
                "cgroupfs cri-o prefixed",
                format!("{fs_bu_pod}/crio-{ID}"),
                ctr(Cgroupfs, Burstable, Some(CriO), &fs_bu_pod, &format!("{fs_bu_pod}/crio-{ID}"), false),
            ),
            (
                "cgroupfs docker prefixed",
                format!("{fs_gu_pod}/docker-{ID}"),
                ctr(Cgroupfs, Guaranteed, Some(Docker), &fs_gu_pod, &format!("{fs_gu_pod}/docker-{ID}"), false),
            ),
            (
                "cgroupfs cri-containerd prefixed",
                format!("{fs_be_pod}/cri-containerd-{ID}"),
                ctr(Cgroupfs, BestEffort, Some(Containerd), &fs_be_pod, &format!("{fs_be_pod}/cri-containerd-{ID}"), false),
            ),
            (
                "cgroupfs nested child",
                format!("{fs_bu_pod}/{ID}/nested"),
                ctr(Cgroupfs, Burstable, None, &fs_bu_pod, &format!("{fs_bu_pod}/{ID}"), true),
            ),
            (
                "minikube docker driver (node container first)",
                format!("{minikube_pod}/{ID}"),
                ctr(Cgroupfs, BestEffort, None, &minikube_pod, &format!("{minikube_pod}/{ID}"), false),
            ),
            (
                "cgroupfs with --cgroup-root=/kubelet",
                format!("{fs_kubelet_root_pod}/{ID}"),
                ctr(Cgroupfs, Guaranteed, None, &fs_kubelet_root_pod, &format!("{fs_kubelet_root_pod}/{ID}"), false),
            ),
            (
                "cgroupfs pod level burstable",
                fs_bu_pod.clone(),
                pod(Cgroupfs, Burstable, UID, &fs_bu_pod),
            ),
            (
                "cgroupfs pod level guaranteed",
                fs_gu_pod.clone(),
                pod(Cgroupfs, Guaranteed, UID, &fs_gu_pod),
            ),
            (
                "cgroupfs static pod",
                format!("/kubepods/burstable/pod{STATIC_UID}"),
                pod(Cgroupfs, Burstable, STATIC_UID, &format!("/kubepods/burstable/pod{STATIC_UID}")),
            ),
            (
                "cgroupfs QoS besteffort",
                "/kubepods/besteffort".to_owned(),
                want(Cgroupfs, BestEffort, Level::Qos),
            ),
            (
                "cgroupfs QoS burstable",
                "/kubepods/burstable".to_owned(),
                want(Cgroupfs, Burstable, Level::Qos),
            ),
            (
                "cgroupfs kubepods root",
                "/kubepods".to_owned(),
                want(Cgroupfs, Guaranteed, Level::Kubepods),
            ),
            (
                "relative path, no leading slash",
                format!("kubepods/pod{UID}/{ID}"),
                ctr(Cgroupfs, Guaranteed, None, &format!("kubepods/pod{UID}"), &format!("kubepods/pod{UID}/{ID}"), false),
            ),
            (
                "doubled slashes kept verbatim in returned prefixes",
                format!("//kubepods//burstable//pod{UID}//{ID}//x"),
                ctr(Cgroupfs, Burstable, None, &format!("//kubepods//burstable//pod{UID}"), &format!("//kubepods//burstable//pod{UID}//{ID}"), true),
            ),
            (
                "cluster nested in a pod: outer pod wins",
                format!("{sd_bu_pod}/cri-containerd-{ID}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{UID_}.slice"),
                ctr(Systemd, Burstable, Some(Containerd), &sd_bu_pod, &format!("{sd_bu_pod}/cri-containerd-{ID}.scope"), true),
            ),
            (
                "malformed outer kubepods tree, valid one below",
                format!("/kubepods/garbage/kubepods/pod{UID}/{ID}"),
                ctr(Cgroupfs, Guaranteed, None, &format!("/kubepods/garbage/kubepods/pod{UID}"), &format!("/kubepods/garbage/kubepods/pod{UID}/{ID}"), false),
            ),
        ];

        // conmon rows
        t.push((
            "systemd cri-o conmon (not a container)",
            format!("{sd_bu_pod}/crio-conmon-{ID}.scope"),
            Want {
                level: Level::Conmon,
                conmon_for: Some(ID),
                runtime: Some(CriO),
                ..pod(Systemd, Burstable, UID, &sd_bu_pod)
            },
        ));
        t.push((
            "cgroupfs cri-o conmon (not a container)",
            format!("{fs_gu_pod}/crio-conmon-{ID}"),
            Want {
                level: Level::Conmon,
                conmon_for: Some(ID),
                runtime: Some(CriO),
                ..pod(Cgroupfs, Guaranteed, UID, &fs_gu_pod)
            },
        ));
        t
    }

    fn negative_table() -> Vec<(&'static str, String)> {
        let sd_bu = "/kubepods.slice/kubepods-burstable.slice";
        vec![
            ("empty", String::new()),
            ("root", "/".to_owned()),
            ("only slashes", "////".to_owned()),
            (
                "user session",
                "/user.slice/user-1000.slice/session-2.scope".to_owned(),
            ),
            (
                "user service",
                "/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service".to_owned(),
            ),
            (
                "docker outside kubernetes",
                format!("/system.slice/docker-{ID}.scope"),
            ),
            (
                "containerd service",
                "/system.slice/containerd.service".to_owned(),
            ),
            (
                "docker cgroupfs outside kubernetes",
                format!("/docker/{ID}"),
            ),
            ("kubepods lookalike slice", "/mykubepods.slice".to_owned()),
            (
                "kubepods lookalike dir",
                format!("/kubepodsx/pod{UID}/{ID}"),
            ),
            ("empty slice component", "/a--kubepods.slice".to_owned()),
            ("leading-dash root", "/-kubepods.slice".to_owned()),
            (
                "unknown systemd child",
                "/kubepods.slice/kubepods-guaranteed.slice".to_owned(),
            ),
            (
                "systemd child of other root",
                "/kubepods.slice/kubelet-kubepods-burstable.slice".to_owned(),
            ),
            (
                "bad uid in systemd",
                format!("{sd_bu}/kubepods-burstable-podNOTAUUID.slice"),
            ),
            (
                "dashed uid in systemd",
                format!("{sd_bu}/kubepods-burstable-pod{UID}.slice"),
            ),
            (
                "uppercase uid",
                format!("/kubepods/pod{}", UID.to_uppercase()),
            ),
            (
                "underscore uid in cgroupfs",
                format!("/kubepods/burstable/pod{UID_}"),
            ),
            ("uid too short", format!("/kubepods/pod{}", &UID[1..])),
            (
                "pod slice under the wrong QoS slice",
                format!("{sd_bu}/kubepods-besteffort-pod{UID_}.slice"),
            ),
            (
                "guaranteed pod slice under a QoS slice",
                format!("{sd_bu}/kubepods-pod{UID_}.slice"),
            ),
            (
                "pod without .slice",
                format!("{sd_bu}/kubepods-burstable-pod{UID_}"),
            ),
            (
                "unknown cgroupfs QoS",
                format!("/kubepods/guaranteed/pod{UID}/{ID}"),
            ),
            (
                "cgroupfs pod under systemd root",
                format!("/kubepods.slice/pod{UID}"),
            ),
            (
                "systemd slices under cgroupfs root",
                format!("/kubepods/kubepods-pod{UID_}.slice"),
            ),
            (
                "63-hex id",
                format!(
                    "{sd_bu}/kubepods-burstable-pod{UID_}.slice/cri-containerd-{}.scope",
                    &ID[1..]
                ),
            ),
            ("65-hex id", format!("/kubepods/pod{UID}/{ID}0")),
            (
                "uppercase id",
                format!("/kubepods/pod{UID}/{}", ID.to_uppercase()),
            ),
            (
                "unknown runtime prefix",
                format!("{sd_bu}/kubepods-burstable-pod{UID_}.slice/libpod-{ID}.scope"),
            ),
            (
                "systemd container without .scope",
                format!("{sd_bu}/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}"),
            ),
            (
                "cgroupfs container with .scope",
                format!("/kubepods/pod{UID}/cri-containerd-{ID}.scope"),
            ),
            (
                "unknown cgroup below pod",
                format!("/kubepods/pod{UID}/something"),
            ),
            (
                "below conmon",
                format!("/kubepods/pod{UID}/crio-conmon-{ID}/x"),
            ),
            (
                "dot-dot segment",
                format!("/kubepods/pod{UID}/{ID}/../../x"),
            ),
            ("dot segment", format!("/kubepods/./pod{UID}")),
            ("NUL garbage", "\0/kubepods\0".to_owned()),
        ]
    }

    #[test]
    fn real_world_paths() {
        for (name, path, w) in positive_table() {
            let got = parse(&path);
            assert_eq!(got, Some(to_kube(w)), "row {name:?}: {path}");
            check_invariants(&path, got.as_ref().unwrap());
        }
    }

    #[test]
    fn unknown_layouts_yield_none() {
        for (name, path) in negative_table() {
            assert_eq!(parse(&path), None, "row {name:?}: {path}");
        }
    }

    #[test]
    fn names_match_kubernetes_spelling() {
        assert_eq!(QosClass::Guaranteed.to_string(), "Guaranteed");
        assert_eq!(QosClass::Burstable.as_str(), "Burstable");
        assert_eq!(QosClass::BestEffort.as_str(), "BestEffort");
        assert_eq!(Runtime::Containerd.to_string(), "containerd");
        assert_eq!(Runtime::CriO.as_str(), "cri-o");
        assert_eq!(Runtime::Docker.as_str(), "docker");
        assert_eq!(Driver::Systemd.to_string(), "systemd");
        assert_eq!(Level::ContainerChild.to_string(), "container_child");
        for (v, s) in [
            (
                serde_json::to_value(QosClass::BestEffort).unwrap(),
                "BestEffort",
            ),
            (serde_json::to_value(Runtime::CriO).unwrap(), "cri-o"),
            (serde_json::to_value(Driver::Cgroupfs).unwrap(), "cgroupfs"),
            (
                serde_json::to_value(Level::ContainerChild).unwrap(),
                "container_child",
            ),
        ] {
            assert_eq!(v, serde_json::Value::String(s.to_owned()));
        }
        let k = parse(&format!("/kubepods/pod{UID}/crio-{ID}")).unwrap();
        let j = serde_json::to_value(&k).unwrap();
        assert_eq!(j["runtime"], "cri-o");
        assert_eq!(j["qos"], "Guaranteed");
        assert_eq!(j["pod_uid"], UID);
    }

    #[test]
    fn huge_inputs_are_linear_and_fine() {
        let junk = "/a".repeat(500_000);
        let path = format!("{junk}/kubepods/burstable/pod{UID}/{ID}{junk}");
        let k = parse(&path).unwrap();
        assert_eq!(k.level, Level::ContainerChild);
        assert_eq!(k.container_id.as_deref(), Some(ID));
        // Many kubepods roots, each failing right away.
        assert_eq!(parse(&"/kubepods/x".repeat(200_000)), None);
        assert_eq!(parse(&"/kubepods.slice/kubepods-x".repeat(200_000)), None);
        assert_eq!(parse(&"/".repeat(1_000_000)), None);
        let k = parse(&"/kubepods".repeat(100_000)).unwrap();
        assert_eq!(k.level, Level::Kubepods);
        // Many attempts that fail late (after a valid pod segment) must not copy the prefix
        // each time: this would be quadratic.
        let bad = format!("/kubepods/pod{UID}/not-a-container").repeat(100_000);
        assert_eq!(parse(&bad), None);
        let bad = format!("/kubepods.slice/kubepods-pod{UID_}.slice/x.scope").repeat(100_000);
        assert_eq!(parse(&bad), None);
    }

    // ---- property tests ----

    fn is_valid_uid(u: &str) -> bool {
        is_pod_uid(u, b'-')
    }

    /// Structural promises every `Some` result keeps, whatever the input.
    fn check_invariants(input: &str, k: &KubeCgroup) {
        let trimmed = input.trim_end_matches('/');
        if let Some(p) = &k.pod_cgroup {
            assert!(
                input.starts_with(p.as_str()),
                "pod_cgroup {p:?} not a prefix of {input:?}"
            );
        }
        if let Some(c) = &k.container_cgroup {
            assert!(
                input.starts_with(c.as_str()),
                "container_cgroup not a prefix"
            );
            assert!(c.starts_with(k.pod_cgroup.as_deref().unwrap()));
        }
        match k.level {
            Level::Kubepods | Level::Qos => {
                assert!(k.pod_uid.is_none() && k.pod_cgroup.is_none());
                assert!(k.container_id.is_none() && k.container_cgroup.is_none());
                assert!(k.runtime.is_none() && k.conmon_for.is_none());
                if k.level == Level::Kubepods {
                    assert_eq!(k.qos, QosClass::Guaranteed);
                } else {
                    assert_ne!(k.qos, QosClass::Guaranteed);
                }
            }
            Level::Pod => {
                assert!(is_valid_uid(k.pod_uid.as_deref().unwrap()));
                assert_eq!(k.pod_cgroup.as_deref(), Some(trimmed));
                assert!(k.container_id.is_none() && k.container_cgroup.is_none());
                assert!(k.runtime.is_none() && k.conmon_for.is_none());
            }
            Level::Conmon => {
                assert!(is_valid_uid(k.pod_uid.as_deref().unwrap()));
                assert!(is_container_id(k.conmon_for.as_deref().unwrap()));
                assert_eq!(k.runtime, Some(Runtime::CriO));
                assert!(k.container_id.is_none() && k.container_cgroup.is_none());
                let id = k.conmon_for.as_deref().unwrap();
                assert!(trimmed.ends_with(id) || trimmed.ends_with(&format!("{id}.scope")));
            }
            Level::Container | Level::ContainerChild => {
                assert!(is_valid_uid(k.pod_uid.as_deref().unwrap()));
                let id = k.container_id.as_deref().unwrap();
                assert!(is_container_id(id));
                let c = k.container_cgroup.as_deref().unwrap();
                assert!(c.contains(id));
                assert!(k.conmon_for.is_none());
                assert_eq!(k.level == Level::Container, c == trimmed);
            }
        }
    }

    fn real_paths() -> Vec<String> {
        let mut v: Vec<String> = positive_table().into_iter().map(|(_, p, _)| p).collect();
        v.extend(negative_table().into_iter().map(|(_, p)| p));
        v
    }

    fn floor_char_boundary(s: &str, mut i: usize) -> usize {
        i = i.min(s.len());
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        i
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        Insert(usize, String),
        Delete(usize, usize),
        Truncate(usize),
        AppendReal(usize, bool),
        PrependReal(usize, bool),
        Repeat(u8),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        let token = prop_oneof![
            any::<String>(),
            Just("/".to_owned()),
            Just("//".to_owned()),
            Just("-".to_owned()),
            Just("_".to_owned()),
            Just(".slice".to_owned()),
            Just(".scope".to_owned()),
            Just("kubepods".to_owned()),
            Just("/kubepods".to_owned()),
            Just("-pod".to_owned()),
            Just("crio-conmon-".to_owned()),
            Just("..".to_owned()),
            Just("\0".to_owned()),
            "[0-9a-f]{1,70}",
        ];
        prop_oneof![
            (any::<usize>(), token).prop_map(|(i, s)| Mutation::Insert(i, s)),
            (any::<usize>(), 0usize..80).prop_map(|(i, n)| Mutation::Delete(i, n)),
            any::<usize>().prop_map(Mutation::Truncate),
            (any::<usize>(), any::<bool>()).prop_map(|(i, b)| Mutation::AppendReal(i, b)),
            (any::<usize>(), any::<bool>()).prop_map(|(i, b)| Mutation::PrependReal(i, b)),
            (1u8..4).prop_map(Mutation::Repeat),
        ]
    }

    fn apply(s: &mut String, m: &Mutation, reals: &[String]) {
        match m {
            Mutation::Insert(i, t) => {
                let i = floor_char_boundary(s, i % (s.len() + 1));
                s.insert_str(i, t);
            }
            Mutation::Delete(i, n) => {
                let a = floor_char_boundary(s, i % (s.len() + 1));
                let b = floor_char_boundary(s, a.saturating_add(*n));
                s.replace_range(a..b, "");
            }
            Mutation::Truncate(i) => {
                let i = floor_char_boundary(s, i % (s.len() + 1));
                s.truncate(i);
            }
            Mutation::AppendReal(i, slash) => {
                if *slash {
                    s.push('/');
                }
                s.push_str(&reals[i % reals.len()]);
            }
            Mutation::PrependReal(i, slash) => {
                let mut p = reals[i % reals.len()].clone();
                if *slash {
                    p.push('/');
                }
                s.insert_str(0, &p);
            }
            Mutation::Repeat(n) => *s = s.repeat(usize::from(*n)),
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn uuid(b: &[u8; 16]) -> String {
        let h = hex(b);
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn never_panics_on_arbitrary_strings(s in any::<String>()) {
            if let Some(k) = parse(&s) {
                check_invariants(&s, &k);
            }
        }

        #[test]
        fn never_panics_on_path_like_strings(s in "[/a-f0-9_.kubepodsliceqrtn-]{0,300}") {
            if let Some(k) = parse(&s) {
                check_invariants(&s, &k);
            }
        }

        #[test]
        fn never_panics_on_mutated_real_paths(
            base in any::<prop::sample::Index>(),
            ops in prop::collection::vec(mutation(), 0..8),
        ) {
            let reals = real_paths();
            let mut s = reals[base.index(reals.len())].clone();
            for m in &ops {
                apply(&mut s, m, &reals);
                if s.len() > 100_000 {
                    s.truncate(floor_char_boundary(&s, 100_000));
                }
            }
            if let Some(k) = parse(&s) {
                check_invariants(&s, &k);
            }
        }

        #[test]
        fn round_trips_every_layout(
            uid_bytes in any::<[u8; 16]>(),
            static_pod in prop::bool::weighted(0.2),
            id_bytes in any::<[u8; 32]>(),
            systemd in any::<bool>(),
            qos in prop::sample::select(vec![QosClass::Guaranteed, QosClass::Burstable, QosClass::BestEffort]),
            // 0 = none/bare, 1 = containerd, 2 = cri-o, 3 = docker, 4 = cri-o conmon
            runtime in 0u8..5,
            root in 0usize..4,
            depth in 0u8..3, // 0 = pod, 1 = container, 2 = container child
            child in "[a-z][a-z0-9._-]{0,20}(/[a-z][a-z0-9._-]{0,20}){0,3}",
        ) {
            let uid = if static_pod { hex(&uid_bytes) } else { uuid(&uid_bytes) };
            let id = hex(&id_bytes);
            let (path, pod_cgroup, ctr_seg, rt) = if systemd {
                let (prefix, stem) = [
                    ("", "kubepods"),
                    ("/kubelet.slice", "kubelet-kubepods"),
                    ("/system.slice/docker-0000000000000000000000000000000000000000000000000000000000000000.scope/kubelet.slice", "kubelet-kubepods"),
                    ("/a.slice/a-b.slice", "a-b-kubepods"),
                ][root];
                let mut p = format!("{prefix}/{stem}.slice");
                let parent = match qos {
                    QosClass::Guaranteed => stem.to_owned(),
                    q => {
                        let qs = format!("{stem}-{}", q.as_str().to_lowercase());
                        p.push_str(&format!("/{qs}.slice"));
                        qs
                    }
                };
                p.push_str(&format!("/{parent}-pod{}.slice", uid.replace('-', "_")));
                let (seg, rt) = match runtime {
                    0 | 1 => (format!("cri-containerd-{id}.scope"), Some(Runtime::Containerd)),
                    2 => (format!("crio-{id}.scope"), Some(Runtime::CriO)),
                    3 => (format!("docker-{id}.scope"), Some(Runtime::Docker)),
                    _ => (format!("crio-conmon-{id}.scope"), Some(Runtime::CriO)),
                };
                (p.clone(), p, seg, rt)
            } else {
                let prefix = ["", "/kubelet", "/docker/abc", "/x/y/z"][root];
                let mut p = format!("{prefix}/kubepods");
                if qos != QosClass::Guaranteed {
                    p.push_str(&format!("/{}", qos.as_str().to_lowercase()));
                }
                p.push_str(&format!("/pod{uid}"));
                let (seg, rt) = match runtime {
                    0 => (id.clone(), None),
                    1 => (format!("cri-containerd-{id}"), Some(Runtime::Containerd)),
                    2 => (format!("crio-{id}"), Some(Runtime::CriO)),
                    3 => (format!("docker-{id}"), Some(Runtime::Docker)),
                    _ => (format!("crio-conmon-{id}"), Some(Runtime::CriO)),
                };
                (p.clone(), p, seg, rt)
            };
            let driver = if systemd { Driver::Systemd } else { Driver::Cgroupfs };
            let conmon = runtime == 4;
            let mut expected = KubeCgroup {
                driver,
                qos,
                pod_uid: Some(uid.clone()),
                container_id: None,
                conmon_for: None,
                runtime: None,
                level: Level::Pod,
                pod_cgroup: Some(pod_cgroup.clone()),
                container_cgroup: None,
            };
            let mut path = path;
            if depth >= 1 {
                path = format!("{path}/{ctr_seg}");
                expected.runtime = rt;
                if conmon {
                    expected.level = Level::Conmon;
                    expected.conmon_for = Some(id.clone());
                } else {
                    expected.level = Level::Container;
                    expected.container_id = Some(id.clone());
                    expected.container_cgroup = Some(path.clone());
                }
            }
            if depth >= 2 {
                path = format!("{path}/{child}");
                if conmon {
                    prop_assert_eq!(parse(&path), None);
                    return Ok(());
                }
                expected.level = Level::ContainerChild;
            }
            let got = parse(&path);
            prop_assert_eq!(got.as_ref(), Some(&expected), "path {}", path);
            check_invariants(&path, got.as_ref().unwrap());
            // Exactness: UID and ID come back byte for byte.
            prop_assert_eq!(got.as_ref().unwrap().pod_uid.as_deref(), Some(uid.as_str()));
            if depth >= 1 && !conmon {
                prop_assert_eq!(got.unwrap().container_id, Some(id));
            }
        }
    }
}
