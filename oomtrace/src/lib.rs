//! oomtrace: catch every kernel OOM kill with eBPF and say exactly what happened.
pub mod btf_offsets;
pub mod candidates;
pub mod charge;
pub mod cgroup_fs;
pub mod cluster;
pub mod daemon;
pub mod event;
pub mod explain;
pub mod filter;
pub mod heap;
pub mod history;
pub mod history_sampler;
pub mod incident;
pub mod k8s;
pub mod kallsyms;
pub mod listener;
pub mod metrics;
pub mod model;
pub mod oom_domain;
pub mod output;
pub mod pipeline;
pub mod pressure;
pub mod recommend;
pub mod record;
pub mod report;
pub mod runtime;
pub mod tracefs;
pub mod top;
pub mod tracer;
pub mod trend;
pub mod victim_procfs;
pub mod watch;

/// This node's name: `NODE_NAME` (set from the downward API in the DaemonSet), else the
/// hostname.
pub fn node_name() -> String {
    k8s::client::node_name().unwrap_or_else(|| "unknown".into())
}
