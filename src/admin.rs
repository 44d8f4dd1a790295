//! `/metrics`, `/healthz`, `/readyz`, `/status.json` and `/status` on their own port;
//! read-only, every one.

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
use crate::status::{self, Fixed};
use crate::telemetry::Metrics;

#[derive(Clone)]
struct AdminState {
    health: Arc<Health>,
    metrics: Metrics,
    /// What `/status` shows that is fixed at start (the budget's settings, the config).
    fixed: Arc<Fixed>,
}

pub fn router(health: Arc<Health>, metrics: Metrics, fixed: Fixed) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .route("/status.json", get(status_json))
        .route("/status", get(status_page))
        .with_state(AdminState {
            health,
            metrics,
            fixed: Arc::new(fixed),
        })
}

async fn status_json(State(state): State<AdminState>) -> impl IntoResponse {
    axum::Json(status::snapshot(
        &state.health,
        &state.metrics,
        &state.fixed,
    ))
}

async fn status_page(State(state): State<AdminState>) -> impl IntoResponse {
    let snapshot = status::snapshot(&state.health, &state.metrics, &state.fixed);
    (
        [(CONTENT_TYPE, "text/html; charset=utf-8")],
        status::page::render(&snapshot),
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nothing_the_admin_port_serves_changes_state_so_only_reads_are_allowed() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            router(
                Arc::new(Health::default()),
                Metrics::new(),
                Fixed::default(),
            ),
            stop.clone(),
        ));
        let client = reqwest::Client::new();
        for path in ["/metrics", "/healthz", "/readyz", "/status.json", "/status"] {
            let url = format!("{base}{path}");
            let status = client.get(&url).send().await.unwrap().status().as_u16();
            assert!(status == 200 || status == 503, "GET {path}: {status}");
            for method in ["POST", "PUT", "DELETE", "PATCH"] {
                let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
                let status = client
                    .request(method.clone(), &url)
                    .body("x")
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16();
                assert_eq!(status, 405, "{method} {path}");
            }
        }
        stop.cancel();
        server.await.unwrap();
    }
}
