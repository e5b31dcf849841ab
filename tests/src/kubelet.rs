//! A node as kubelet lays it out, for tests that attribute kills to pods: the pod's and the
//! container's memory cgroups (either cgroup driver) under a private root, and a test API
//! server with a kubeconfig that `oomtrace watch --kubeconfig` reads.
use crate::apiserver::ApiServer;
use crate::cgroup::TestCgroup;
use crate::oomtrace_proc::Watch;
use std::time::{Duration, Instant};

/// kubelet's cgroup layouts, for either cgroup driver.
#[derive(Clone, Copy, Debug)]
pub enum Driver {
    /// `<root>/kubepods/burstable/pod<uid>/<container id>`
    Cgroupfs,
    /// `<root>/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/
    /// cri-containerd-<container id>.scope`
    Systemd,
}

/// A burstable pod's cgroups with one container.
pub struct PodCgroups {
    /// Owns the cgroups: dropping it kills what runs in them and removes them.
    _root: TestCgroup,
    pub pod_rel: String,
    pub container_rel: String,
}

impl PodCgroups {
    pub fn new(driver: Driver, uid: &str, cid: &str, pod_limit: u64, container_limit: u64) -> Self {
        let mut root = TestCgroup::new("oomtrace-k8s").unwrap();
        let names = match driver {
            Driver::Cgroupfs => [
                "kubepods".to_string(),
                "burstable".into(),
                format!("pod{uid}"),
                cid.to_string(),
            ],
            Driver::Systemd => [
                "kubepods.slice".to_string(),
                "kubepods-burstable.slice".into(),
                format!("kubepods-burstable-pod{}.slice", uid.replace('-', "_")),
                format!("cri-containerd-{cid}.scope"),
            ],
        };
        let pod_rel;
        let container_rel;
        {
            let kubepods = root.child(&names[0]).unwrap();
            let qos = kubepods.child(&names[1]).unwrap();
            let p = qos.child(&names[2]).unwrap();
            p.set_limit(pod_limit).unwrap();
            pod_rel = p.rel.clone();
            let c = p.child(&names[3]).unwrap();
            c.set_limit(container_limit).unwrap();
            container_rel = c.rel.clone();
        }
        PodCgroups {
            _root: root,
            pod_rel,
            container_rel,
        }
    }

    /// A handle on the container's cgroup (the root owns and removes it).
    pub fn container(&self) -> TestCgroup {
        TestCgroup::handle(&self.container_rel).unwrap()
    }
}

/// The test API server, a kubeconfig for it, and the node name oomtrace runs as.
pub struct Cluster {
    pub api: ApiServer,
    pub kubeconfig: std::path::PathBuf,
    pub node: String,
}

impl Cluster {
    pub fn new() -> Self {
        let api = ApiServer::start();
        let kubeconfig = std::env::temp_dir().join(format!(
            "oomtrace-kubeconfig-{}-{}",
            std::process::id(),
            api.port()
        ));
        api.write_kubeconfig(&kubeconfig).unwrap();
        Cluster {
            api,
            kubeconfig,
            node: format!("node-e2e-{}", std::process::id()),
        }
    }

    /// `oomtrace watch -o json` with this cluster's pod index.
    pub fn watch(&self) -> Watch {
        Watch::start_cmd(
            &["watch", "-o", "json"],
            &["--kubeconfig", self.kubeconfig.to_str().unwrap()],
            &[("NODE_NAME", &self.node)],
        )
    }

    /// Waits until oomtrace's pod watch is established (its initial list is done).
    pub fn wait_synced(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.api.requests().iter().any(|r| r.is_pod_watch()) {
            assert!(
                Instant::now() < deadline,
                "oomtrace never started watching pods"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Default for Cluster {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}
