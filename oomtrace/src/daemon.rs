//! `oomtrace daemon`: what runs on every node. JSON lines on stdout (one per kill, flushed),
//! Prometheus metrics and health on HTTP, Kubernetes Events on the victim's Pod.
//!
//! Kills are printed and counted whatever happens to the API server: Events are best effort
//! (retried, then dropped with a counter), and the pod index only ever adds to an event.
use crate::event::OomKill;
use crate::k8s::events::EventPublisher;
use crate::metrics::Metrics;
use crate::pressure::MemoryPressure;
use crate::tracer::Counters;
use crate::watch::{trace, HookArgs, KubeArgs, Sink};
use anyhow::{Context, Result};
use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// Address of the HTTP endpoint serving /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:9102")]
    pub listen: SocketAddr,
    /// Do not publish Kubernetes Events.
    #[arg(long)]
    pub no_events: bool,
    #[command(flatten)]
    pub hooks: HookArgs,
    #[command(flatten)]
    pub k8s: KubeArgs,
}

struct Health {
    attached: AtomicBool,
    index: Option<crate::k8s::pod_index::PodIndex>,
    metrics: Arc<Metrics>,
}

async fn serve_metrics(State(h): State<Arc<Health>>) -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        h.metrics.encode(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready once the programs are attached and, in a cluster, the pod index has synced.
async fn readyz(State(h): State<Arc<Health>>) -> (StatusCode, &'static str) {
    if !h.attached.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "programs not attached\n");
    }
    if h.index.as_ref().is_some_and(|i| !i.is_synced()) {
        return (StatusCode::SERVICE_UNAVAILABLE, "pod index not synced\n");
    }
    (StatusCode::OK, "ready\n")
}

struct DaemonSink {
    health: Arc<Health>,
    events: Option<EventPublisher>,
    out: std::io::Stdout,
}

impl Sink for DaemonSink {
    fn attached(&mut self, strategy: &str) {
        self.health.metrics.attached(strategy);
        self.health.attached.store(true, Ordering::Relaxed);
    }

    fn kill(&mut self, ev: &OomKill) -> Result<bool> {
        let mut out = self.out.lock();
        serde_json::to_writer(&mut out, ev)?;
        writeln!(out)?;
        out.flush()?;
        self.health.metrics.record(ev);
        if let Some(p) = &self.events {
            p.publish(ev);
        }
        Ok(true)
    }

    fn counters(&mut self, c: &Counters) {
        self.health.metrics.set_lost(c.lost);
    }

    fn pressure(&mut self, p: &MemoryPressure) -> Result<()> {
        let mut out = self.out.lock();
        serde_json::to_writer(&mut out, p)?;
        writeln!(out)?;
        out.flush()?;
        self.health.metrics.record_pressure(p);
        Ok(())
    }
}

pub async fn run(args: DaemonArgs) -> Result<()> {
    let client = args.k8s.client().await?;
    let attributor = args.k8s.attributor(client.clone());
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health {
        attached: AtomicBool::new(false),
        index: attributor.index().cloned(),
        metrics: metrics.clone(),
    });
    let app = Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health.clone());
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!("serving /metrics, /healthz, /readyz on {}", listener.local_addr()?);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("HTTP server stopped: {e}");
        }
    });

    let events = match (args.no_events, client) {
        (false, Some(c)) => Some(EventPublisher::spawn(c, crate::node_name(), metrics)),
        _ => None,
    };
    let mut sink = DaemonSink { health, events, out: std::io::stdout() };
    trace(&args.hooks.options(), &attributor, &mut sink).await
}
