//! `--namespace`, `--pod` (glob) and `--container` filters of `oomtrace watch`, shared by the
//! node view and the cluster view.
use anyhow::{Context, Result};

#[derive(Debug, Clone, Default, clap::Args)]
pub struct FilterArgs {
    /// Only kills in this namespace.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Kills in every namespace (the default; kubectl's `-A`).
    #[arg(long, short = 'A', conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// Only kills in pods whose name matches this glob (e.g. 'api-*').
    #[arg(long)]
    pub pod: Option<String>,
    /// Only kills in this container.
    #[arg(long)]
    pub container: Option<String>,
}

/// A compiled filter. Kills outside any pod never match a pod-level filter.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    namespace: Option<String>,
    pod: Option<glob::Pattern>,
    container: Option<String>,
}

impl Filter {
    pub fn new(args: &FilterArgs) -> Result<Self> {
        let pod = args
            .pod
            .as_deref()
            .map(glob::Pattern::new)
            .transpose()
            .context("--pod is not a valid glob")?;
        Ok(Self { namespace: args.namespace.clone(), pod, container: args.container.clone() })
    }

    pub fn matches(&self, namespace: Option<&str>, pod: Option<&str>, container: Option<&str>) -> bool {
        let eq = |want: &Option<String>, have: Option<&str>| want.as_deref().is_none_or(|w| have == Some(w));
        eq(&self.namespace, namespace)
            && eq(&self.container, container)
            && self.pod.as_ref().is_none_or(|p| pod.is_some_and(|name| p.matches(name)))
    }

    pub fn matches_kill(&self, ev: &crate::model::OomKill) -> bool {
        let k = ev.k8s.as_ref();
        self.matches(
            k.and_then(|k| k.namespace.as_deref()),
            k.and_then(|k| k.pod.as_deref()),
            k.and_then(|k| k.container.as_deref()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(ns: Option<&str>, pod: Option<&str>, c: Option<&str>) -> Filter {
        Filter::new(&FilterArgs {
            namespace: ns.map(Into::into),
            pod: pod.map(Into::into),
            container: c.map(Into::into),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn filters() {
        assert!(f(None, None, None).matches(None, None, None));
        let g = f(Some("shop"), Some("api-*"), None);
        assert!(g.matches(Some("shop"), Some("api-7d9f"), Some("app")));
        assert!(!g.matches(Some("shop"), Some("web-1"), Some("app")));
        assert!(!g.matches(Some("prod"), Some("api-1"), Some("app")));
        assert!(!g.matches(None, None, None), "a host process is not in any pod");
        assert!(f(None, None, Some("app")).matches(Some("x"), Some("y"), Some("app")));
        assert!(Filter::new(&FilterArgs { pod: Some("[".into()), ..Default::default() }).is_err());
    }
}
