//! The controller's HTTP endpoints: `/metrics`, `/healthz` (alive) and `/readyz` (caches synced,
//! or standing by for leadership).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
}

/// Whether the controller is ready, and since when it is not. Not ready for longer than
/// `sync_limit` makes `/healthz` fail too, so that the kubelet restarts the controller: a watch
/// whose first list stalls never recovers by itself, and an unready pod is never restarted.
pub struct Readiness {
    /// Whether ready, and when that last changed.
    state: Mutex<(bool, Instant)>,
    sync_limit: Duration,
}

impl Readiness {
    pub fn new(sync_limit: Duration) -> Self {
        Self {
            state: Mutex::new((false, Instant::now())),
            sync_limit,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, (bool, Instant)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set(&self, ready: bool) {
        let mut state = self.state();
        if state.0 != ready {
            *state = (ready, Instant::now());
        }
    }

    pub fn is_ready(&self) -> bool {
        self.state().0
    }

    /// Not ready for longer than the limit.
    fn stuck(&self) -> bool {
        let (ready, changed) = *self.state();
        !ready && changed.elapsed() > self.sync_limit
    }
}

/// Binds first, so that a busy port fails start-up rather than going unnoticed.
pub async fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await
}

/// Serves until `stop` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    stop: CancellationToken,
) -> std::io::Result<()> {
    tracing::info!(address = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn healthz(State(state): State<HttpState>) -> impl IntoResponse {
    if state.readiness.stuck() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy: caches not synced within --cache-sync-timeout\n",
        )
    } else {
        (StatusCode::OK, "ok\n")
    }
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: caches not synced yet\n",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_controller_unready_past_the_limit_is_stuck() {
        let patient = Readiness::new(Duration::from_secs(3600));
        assert!(!patient.stuck());
        let readiness = Readiness::new(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(2));
        assert!(readiness.stuck());
        readiness.set(true);
        assert!(!readiness.stuck());
        // Unready again (a standby that won the lease): counted from then.
        readiness.set(false);
        std::thread::sleep(Duration::from_millis(2));
        assert!(readiness.stuck());
    }
}
