//! `oomtrace daemon`: what runs on every node. JSON lines on stdout (one per kill, flushed),
//! Prometheus metrics and health on HTTP, Kubernetes Events on the victim's Pod.
//!
//! Kills are printed and counted whatever happens to the API server: Events are best effort
//! (retried, then dropped with a counter), and the pod index only ever adds to an event.
use crate::model::OomKill;
use crate::k8s::events::EventPublisher;
use crate::metrics::Metrics;
use crate::metrics::Totals;
use crate::output::OutputErrors;
use crate::pipeline::{trace, Sink, Snapshot, Stats};
use crate::pressure::MemoryPressure;
use crate::watch::{HookArgs, KubeArgs};
use anyhow::{Context, Result};
use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};
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

/// `/healthz` fails once the ring reader has not run for this long.
const READER_STALL: std::time::Duration = std::time::Duration::from_secs(5);

struct Health {
    attached: AtomicBool,
    stats: Arc<Stats>,
    index: Option<crate::k8s::pod_index::PodIndex>,
    metrics: Arc<Metrics>,
}

async fn serve_metrics(State(h): State<Arc<Health>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        h.metrics.encode(),
    )
}

/// Alive while the ring reader keeps running (a stalled reader means lost kills).
async fn healthz(State(h): State<Arc<Health>>) -> (StatusCode, String) {
    let idle = h.stats.reader_idle();
    if idle > READER_STALL {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("ring reader has not run for {idle:.1?}\n"),
        );
    }
    (StatusCode::OK, "ok\n".into())
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
    kill_errors: OutputErrors,
    warning_errors: OutputErrors,
}

impl Sink for DaemonSink {
    fn attached(&mut self, strategy: &str) {
        self.health.metrics.attached(strategy);
        self.health.attached.store(true, Ordering::Relaxed);
    }

    fn kill(&mut self, ev: &OomKill) -> bool {
        // Counted before it is printed: whoever has read the line finds it in the metrics.
        self.health.metrics.record(ev);
        self.kill_errors.write_json(&mut self.out.lock(), ev);
        if let Some(p) = &self.events {
            p.publish(ev);
        }
        true
    }

    fn pressure(&mut self, p: &MemoryPressure) {
        self.health.metrics.record_pressure(p);
        self.warning_errors.write_json(&mut self.out.lock(), p);
    }

    fn finish(&mut self, deadline: std::time::Instant) {
        if let Some(p) = self.events.take() {
            p.finish(deadline);
        }
    }
}

pub async fn run(args: DaemonArgs) -> Result<()> {
    // Loaded before the Kubernetes client exists: start-up then peaks at the kernel BTF's
    // parse alone.
    let tracer = crate::tracer::Tracer::start(&args.hooks.options())?;
    let client = args.k8s.client().await?;
    let attributor = args.k8s.attributor(client.clone());
    let stats = Arc::new(Stats::default());
    let metrics = Arc::new(Metrics::new().with_stage_seconds(stats.stage_seconds.clone()));
    let health = Arc::new(Health {
        attached: AtomicBool::new(false),
        stats: stats.clone(),
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
    tracing::info!(
        "serving /metrics, /healthz, /readyz on {}",
        listener.local_addr()?
    );
    tokio::spawn(crate::listener::serve(listener, app));

    let events = match (args.no_events, client) {
        (false, Some(c)) => Some(EventPublisher::spawn(
            c,
            crate::node_name(),
            metrics.clone(),
        )),
        _ => None,
    };
    let (kill_errors, warning_errors) = (OutputErrors::default(), OutputErrors::default());
    let (kill_failed, warning_failed) = (kill_errors.total.clone(), warning_errors.total.clone());
    let export = move |s: &Snapshot| {
        metrics.set_totals(&Totals {
            snapshot: *s,
            output_lost_kills: kill_failed.load(Ordering::Relaxed),
            output_lost_warnings: warning_failed.load(Ordering::Relaxed),
        });
    };
    let mut sink = DaemonSink {
        health,
        events,
        out: std::io::stdout(),
        kill_errors,
        warning_errors,
    };
    trace(tracer, &attributor, &mut sink, stats, export).await
}
