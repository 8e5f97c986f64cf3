//! The gateway's HTTP endpoint for operators: `/metrics` (Prometheus text), `/healthz`
//! (the process is alive) and `/readyz` (accepting sessions; 503 while draining).

use std::sync::Arc;

use axum::Router as HttpRouter;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::router::Router;

pub fn routes(router: Arc<Router>) -> HttpRouter {
    HttpRouter::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(router)
}

async fn metrics(State(router): State<Arc<Router>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        router.metrics.encode(),
    )
}

async fn ready(State(router): State<Arc<Router>>) -> impl IntoResponse {
    if router.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}
