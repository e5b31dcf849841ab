//! The Kubernetes client of the daemon and of `watch --cluster`, and the node it runs on.

use std::path::Path;

use kube::Client;

/// The name of this node: `NODE_NAME` (set it from the downward API, `spec.nodeName`, in the
/// DaemonSet: the hostname is not always the node name), falling back to the hostname.
pub fn node_name() -> Option<String> {
    if let Ok(name) = std::env::var("NODE_NAME") {
        let name = name.trim();
        if !name.is_empty() {
            return Some(name.to_string());
        }
    }
    hostname()
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for `buf.len()` bytes; gethostname NUL-terminates on success
    // when the name fits, and we never read past the buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        if let Ok(name) = std::str::from_utf8(&buf[..end]) {
            let name = name.trim();
            if !name.is_empty() {
                return Some(name.to_string());
            }
        }
    }
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// kubectl's `--kubeconfig` and `--context`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientArgs {
    /// kubeconfig to use (default: $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long)]
    pub context: Option<String>,
}

impl ClientArgs {
    /// A client for the cluster these name, or none when neither is given and the environment
    /// has no Kubernetes configuration.
    pub async fn client(&self) -> anyhow::Result<Option<Client>> {
        match (&self.kubeconfig, &self.context) {
            (None, None) => client_from_env().await,
            (path, context) => Ok(Some(client_for(path.as_deref(), context.as_deref()).await?)),
        }
    }
}

/// A Kubernetes client from the environment ([`kube::Config::infer`]: `KUBECONFIG` or
/// `~/.kube/config`, else the in-cluster service account).
///
/// Returns `Ok(None)` (and logs it once at info) when there is no Kubernetes configuration at
/// all: no `KUBECONFIG`, no `~/.kube/config`, no `KUBERNETES_SERVICE_HOST`. Errors only when a
/// configuration exists but cannot be loaded.
pub async fn client_from_env() -> anyhow::Result<Option<Client>> {
    let kubeconfig_env = std::env::var_os("KUBECONFIG")
        .map(|v| std::env::split_paths(&v).any(|p| !p.as_os_str().is_empty()))
        .unwrap_or(false);
    let default_kubeconfig = std::env::home_dir()
        .map(|h| h.join(".kube").join("config").exists())
        .unwrap_or(false);
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|v| !v.is_empty());
    if !kubeconfig_env && !default_kubeconfig && !in_cluster {
        tracing::info!(
            "no Kubernetes config found (no KUBECONFIG, not in a cluster): running without pod attribution"
        );
        return Ok(None);
    }
    let config = kube::Config::infer()
        .await
        .map_err(|e| anyhow::anyhow!("loading the Kubernetes client configuration: {e}"))?;
    let client = Client::try_from(config)
        .map_err(|e| anyhow::anyhow!("creating the Kubernetes client: {e}"))?;
    Ok(Some(client))
}

/// A Kubernetes client from an explicit kubeconfig file (its current context), without
/// looking at the process environment.
pub async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<Client> {
    client_for(Some(path), None).await
}

/// A Kubernetes client from a kubeconfig (`path`, else `$KUBECONFIG` or `~/.kube/config`) and
/// one of its contexts (else its current context), as kubectl's `--kubeconfig` and `--context`.
pub async fn client_for(path: Option<&Path>, context: Option<&str>) -> anyhow::Result<Client> {
    let what = path.map_or_else(|| "the kubeconfig".to_string(), |p| format!("kubeconfig {}", p.display()));
    let kubeconfig = match path {
        Some(p) => kube::config::Kubeconfig::read_from(p),
        None => kube::config::Kubeconfig::read(),
    }
    .map_err(|e| anyhow::anyhow!("reading {what}: {e}"))?;
    let options = kube::config::KubeConfigOptions { context: context.map(str::to_string), ..Default::default() };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| anyhow::anyhow!("loading {what}: {e}"))?;
    Client::try_from(config).map_err(|e| anyhow::anyhow!("creating the Kubernetes client: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_name_is_something() {
        // NODE_NAME is not set in unit tests (we never mutate the environment); the hostname
        // fallback must work on Linux.
        if std::env::var_os("NODE_NAME").is_none() {
            assert!(hostname().is_some());
        }
        assert!(node_name().is_some());
    }
}
