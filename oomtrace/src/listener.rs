//! The daemon's HTTP listener (/metrics, /healthz, /readyz), bounded: anyone on the pod
//! network can connect, so no client may hold it. Each connection serves one request, must
//! send its headers within [`HEADER_TIMEOUT`] and be done within [`REQUEST_TIMEOUT`]; at most
//! [`MAX_CONNECTIONS`] are open, and when all are taken the oldest one that has not sent a
//! request yet makes room, so a scrape always gets in past idle connections.
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

pub const MAX_CONNECTIONS: usize = 128;
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

struct Conn {
    id: u64,
    /// Its request arrived (it is being served, not idle).
    requested: Arc<AtomicBool>,
    task: tokio::task::AbortHandle,
}

/// Serves `app` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, app: Router) {
    let mut open: VecDeque<Conn> = VecDeque::new();
    let (done_tx, mut done) = mpsc::unbounded_channel::<u64>();
    let mut next_id = 0u64;
    loop {
        tokio::select! {
            Some(id) = done.recv() => open.retain(|c| c.id != id),
            r = listener.accept() => {
                let stream = match r {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of fds, typically: wait for connections to end.
                        tracing::warn!("accepting a connection on the metrics listener: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if open.len() >= MAX_CONNECTIONS {
                    match open.iter().position(|c| !c.requested.load(Relaxed)) {
                        Some(i) => {
                            if let Some(idle) = open.remove(i) {
                                idle.task.abort();
                            }
                        }
                        None => continue, // every slot is serving a request: refuse this one
                    }
                }
                let id = next_id;
                next_id += 1;
                let requested = Arc::new(AtomicBool::new(false));
                let svc = {
                    let (app, requested) = (app.clone(), requested.clone());
                    hyper::service::service_fn(move |req| {
                        requested.store(true, Relaxed);
                        tower_service::Service::call(&mut app.clone(), req)
                    })
                };
                let done_tx = done_tx.clone();
                let task = tokio::spawn(async move {
                    let conn = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), svc);
                    if let Ok(Err(e)) = tokio::time::timeout(REQUEST_TIMEOUT, conn).await {
                        tracing::debug!("metrics connection: {e}");
                    }
                    let _ = done_tx.send(id);
                });
                open.push_back(Conn { id, requested, task: task.abort_handle() });
            }
        }
    }
}
