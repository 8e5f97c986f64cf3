//! The console's endpoints for operators and orchestrators, outside the login check:
//! `/healthz` (the process is alive), `/readyz` (serving; 503 once shutting down) and
//! `/metrics` (Prometheus text: `nexus_build_info`, whether the last poll reached the control
//! plane, login sessions open).

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
}

async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    if state.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut registry = Registry::default();
    let build_info = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
    build_info
        .get_or_create(&nexus_proto::build_info::labels("console"))
        .set(1);
    registry.register(
        "nexus_build_info",
        "The build of this process (value 1): version, commit, profile and role in the labels",
        build_info,
    );
    let snapshot = state.monitor.subscribe().borrow().clone();
    let up = Gauge::<i64>::default();
    up.set(i64::from(
        !snapshot.view.polled_at.is_empty() && snapshot.view.error.is_none(),
    ));
    registry.register(
        "nexus_console_control_plane_up",
        "1 when the console's last poll reached the control plane, else 0",
        up,
    );
    let sessions = Gauge::<i64>::default();
    sessions.set(state.sessions.len() as i64);
    registry.register("nexus_console_sessions", "Login sessions open", sessions);
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::warn!(error = %e, "cannot encode metrics");
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
}
