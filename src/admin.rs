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
            router(Arc::new(Health::default()), Metrics::new()),
            stop.clone(),
        ));
        let client = reqwest::Client::new();
        for path in ["/metrics", "/healthz", "/readyz"] {
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
