//! Kubernetes attribution: from the victim's cgroup to its container and pod.
pub mod attribution;
pub mod cgroup_path;
pub mod events;
pub mod pod_index;
