//! The gateway's HTTP endpoint for operators: `/metrics` (Prometheus text), `/healthz`
//! (the process is alive), `/readyz` (accepting sessions; 503 while draining), `/v1/status`
//! (JSON: sessions, subjects, balancer, links, spools) and `/v1/explain?subject=` (JSON: where
//! a message published here would go, and why).

use std::sync::Arc;

use axum::Router as HttpRouter;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::router::Router;

pub fn routes(router: Arc<Router>) -> HttpRouter {
    HttpRouter::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/v1/status", get(status))
        .route("/v1/explain", get(explain))
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

async fn status(State(router): State<Arc<Router>>) -> impl IntoResponse {
    axum::Json(crate::status::status(&router))
}

#[derive(serde::Deserialize)]
struct ExplainQuery {
    subject: String,
}

async fn explain(
    State(router): State<Arc<Router>>,
    Query(q): Query<ExplainQuery>,
) -> axum::response::Response {
    if let Err(e) = nexus_proto::subject::validate_subject(&q.subject) {
        return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response();
    }
    axum::Json(router.explain(&q.subject)).into_response()
}
