//! The gateway's HTTP endpoint for operators: `/metrics` (Prometheus text), `/healthz`
//! (the process is alive), `/readyz` (accepting sessions; 503 while draining), `/v1/status`
//! (JSON: sessions, subjects, balancer, links, spools) and `/v1/explain?subject=` (JSON: where
//! a message published here would go, and why) and `/v1/trace?id=` or
//! `/v1/trace?subject=&since_ms=&until_ms=&limit=` (JSON: the trace records this gateway holds
//! for one message, or for recent messages on subjects matching a pattern; docs/trace.md).

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
        .route("/v1/trace", get(trace))
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

#[derive(serde::Deserialize)]
struct TraceQuery {
    id: Option<String>,
    subject: Option<String>,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    limit: Option<usize>,
}

async fn trace(
    State(router): State<Arc<Router>>,
    Query(q): Query<TraceQuery>,
) -> axum::response::Response {
    let records = match (&q.id, &q.subject) {
        (Some(id), _) => match crate::trace_store::parse_message_id(id) {
            Ok(id) => router.traces.by_id(&id),
            Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
        },
        (None, subject) => {
            if let Some(p) = subject
                && let Err(e) = nexus_proto::subject::validate_pattern(p)
            {
                return (StatusCode::BAD_REQUEST, format!("subject: {e}\n")).into_response();
            }
            router.traces.search(
                subject.as_deref(),
                q.since_ms.unwrap_or(0).saturating_mul(1000),
                q.until_ms.unwrap_or(i64::MAX / 1000).saturating_mul(1000),
                q.limit.unwrap_or(1000).min(10_000),
            )
        }
    };
    let cfg = router.config();
    axum::Json(serde_json::json!({
        "region": cfg.region,
        "gateway_id": cfg.gateway_id,
        "sample_rate": cfg.trace.sample_rate,
        "records": router.trace_records(&records),
    }))
    .into_response()
}
