//! Fixtures for oomtrace's integration tests: memory cgroups, memory hogs, a test API server.
pub mod apiserver;
