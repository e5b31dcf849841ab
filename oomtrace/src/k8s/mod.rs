//! Kubernetes attribution: from the victim's cgroup to its container and pod.
pub mod attribution;
pub mod cgroup_path;
pub mod client;
pub mod events;
pub mod owner;
pub mod pod_history;
pub mod pod_index;
pub mod pod_record;
pub mod quantity;
