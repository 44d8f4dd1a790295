//! `/metrics`, `/healthz` and `/readyz` on their own port.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::telemetry::Metrics;

#[derive(Clone)]
struct AdminState {
    health: Arc<Health>,
    metrics: Metrics,
}

pub fn router(health: Arc<Health>, metrics: Metrics) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(AdminState { health, metrics })
}

async fn metrics_handler(State(state): State<AdminState>) -> impl IntoResponse {
    state
        .metrics
        .ready
        .set(i64::from(state.health.readiness().ready()));
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn ready_handler(State(state): State<AdminState>) -> impl IntoResponse {
    let readiness = state.health.readiness();
    let mut body = if readiness.ready() {
        "ready\n".to_owned()
    } else {
        format!("not ready: {}\n", readiness.reasons.join("; "))
    };
    for note in &readiness.notes {
        body.push_str(note);
        body.push('\n');
    }
    let status = if readiness.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

/// Binds the admin listener; fails at start when the address is taken.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves until `stop` is cancelled.
pub async fn serve(listener: tokio::net::TcpListener, router: Router, stop: CancellationToken) {
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "admin server failed");
    }
}
