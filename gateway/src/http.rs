//! The gateway's HTTP endpoint for operators: `/metrics` (Prometheus text), `/healthz`
//! (the process is alive), `/readyz` (accepting sessions; 503 while draining), `/v1/status`
//! (JSON: sessions, subjects, balancer, links, spools) and `/v1/explain?subject=` (JSON: where
//! a message published here would go, and why) and `/v1/trace?id=` or
//! `/v1/trace?subject=&since_ms=&until_ms=&limit=` (JSON: the trace records this gateway holds
//! for one message, or for recent messages on subjects matching a pattern; docs/trace.md),
//! `/v1/tail?subject=&sample=&rate=&preview=` (a live tap: newline-delimited JSON, one line
//! per tapped message and a `stats` line every second, until the client disconnects;
//! [`crate::tap`]) and `/v1/logs?after=&limit=&level=` (recent WARN/ERROR events,
//! [`crate::log_ring`]).

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
        .route("/v1/tail", get(tail))
        .route("/v1/logs", get(logs))
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

#[derive(serde::Deserialize)]
struct TailQuery {
    subject: String,
    sample: Option<f64>,
    rate: Option<u32>,
    preview: Option<usize>,
}

async fn tail(
    State(router): State<Arc<Router>>,
    Query(q): Query<TailQuery>,
) -> axum::response::Response {
    let spec = crate::tap::TapSpec {
        pattern: q.subject,
        sample_rate: q.sample.unwrap_or(1.0),
        max_per_second: q.rate.unwrap_or(20),
        preview_bytes: q.preview.unwrap_or(0),
    };
    let handle = match router.taps.open(spec) {
        Ok(h) => h,
        Err(e @ crate::tap::TapError::TooMany) => {
            return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response();
        }
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let cfg = router.config();
    let hello = serde_json::json!({
        "type": "start",
        "region": cfg.region,
        "gateway_id": cfg.gateway_id,
    });
    drop(cfg);
    let line = |v: serde_json::Value| {
        let mut b = serde_json::to_vec(&v).unwrap_or_default();
        b.push(b'\n');
        Ok::<_, std::convert::Infallible>(bytes::Bytes::from(b))
    };
    let first = line(hello);
    // A stats line every second also finds a viewer that went away: the write fails, the
    // stream and its handle are dropped, and the tap closes. The tap ends when the gateway
    // starts draining, so that it does not hold up the HTTP server's shutdown.
    let ticks = tokio::time::interval(std::time::Duration::from_secs(1));
    let stream = futures::stream::unfold(
        (handle, ticks, Some(first), router),
        move |(mut handle, mut ticks, first, router)| async move {
            if let Some(first) = first {
                return Some((first, (handle, ticks, None, router)));
            }
            let out = tokio::select! {
                e = handle.events.recv() => match e {
                    Some(e) => crate::tap::event_json(&e),
                    None => return None,
                },
                _ = ticks.tick() => crate::tap::stats_json(&handle.counters),
                _ = router.drain_started() => return None,
            };
            Some((line(out), (handle, ticks, None, router)))
        },
    );
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct LogsQuery {
    after: Option<u64>,
    limit: Option<usize>,
    level: Option<String>,
}

async fn logs(
    State(router): State<Arc<Router>>,
    Query(q): Query<LogsQuery>,
) -> axum::response::Response {
    let errors_only = match q.level.as_deref() {
        None | Some("") | Some("warn") | Some("WARN") => false,
        Some("error") | Some("ERROR") => true,
        Some(other) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("level {other:?}: expected warn or error\n"),
            )
                .into_response();
        }
    };
    let (events, next) = crate::log_ring::since(
        q.after.unwrap_or(0),
        q.limit.unwrap_or(100).min(crate::log_ring::CAPACITY),
        errors_only,
    );
    let cfg = router.config();
    axum::Json(serde_json::json!({
        "region": cfg.region,
        "gateway_id": cfg.gateway_id,
        "next": next,
        "events": events,
    }))
    .into_response()
}
