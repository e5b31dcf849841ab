//! oomtrace: catch every kernel OOM kill with eBPF and say exactly what happened.
pub mod k8s;
