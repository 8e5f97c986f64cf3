//! The control plane's HTTP endpoint for operators and orchestrators, beside the gRPC Admin
//! API: `/healthz` (the process is alive), `/readyz` (the store answers; 503 with the reason
//! otherwise, and while stopping) and `/metrics` (Prometheus text: `nexus_build_info`, live
//! gateways by region, whether the store answered the last check).
//!
//! The same store check drives the `grpc.health.v1` status of the gRPC listener
//! ([`HealthLoop`]), so HTTP and gRPC probes agree.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::push::ClusterView;
use crate::store::Store;

/// How long a readiness check waits for the store.
const STORE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the gRPC health status is refreshed from the store.
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// What the endpoints need.
#[derive(Clone)]
pub struct HttpState {
    pub store: Arc<dyn Store>,
    pub stop: CancellationToken,
    pub metrics: Arc<ControlPlaneMetrics>,
}

/// The control plane's Prometheus registry.
pub struct ControlPlaneMetrics {
    registry: Registry,
    store_up: Gauge,
}

/// Live gateways by region, counted from the cluster view at scrape time.
struct LiveGateways(Arc<ClusterView>);

impl std::fmt::Debug for LiveGateways {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveGateways")
    }
}

impl Collector for LiveGateways {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut by_region = std::collections::BTreeMap::<String, i64>::new();
        for g in self.0.gateways().iter() {
            *by_region.entry(g.region.clone()).or_default() += 1;
        }
        let mut family = encoder.encode_descriptor(
            "nexus_control_plane_live_gateways",
            "Gateways registered and heartbeating, by region.",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (region, n) in by_region {
            let labels = [("region", region)];
            ConstGauge::new(n).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl ControlPlaneMetrics {
    pub fn new(view: Arc<ClusterView>) -> Self {
        let mut registry = Registry::default();
        let build_info = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
        build_info
            .get_or_create(&nexus_proto::build_info::labels("control_plane"))
            .set(1);
        registry.register(
            "nexus_build_info",
            "The build of this process (value 1): version, commit, profile and role in the labels",
            build_info,
        );
        let store_up = Gauge::default();
        store_up.set(1);
        registry.register(
            "nexus_control_plane_store_up",
            "1 when the store (etcd or embedded) answered the last check, else 0",
            store_up.clone(),
        );
        registry.register_collector(Box::new(LiveGateways(view)));
        Self { registry, store_up }
    }

    fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

pub fn routes(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(state)
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

/// Whether the store answers a revision read in time; the error says why not.
pub async fn check_store(store: &dyn Store) -> Result<(), String> {
    match tokio::time::timeout(STORE_CHECK_TIMEOUT, store.revision()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("store unreachable: {e}")),
        Err(_) => Err(format!(
            "store unreachable: no answer within {} s",
            STORE_CHECK_TIMEOUT.as_secs()
        )),
    }
}

async fn ready(State(s): State<HttpState>) -> impl IntoResponse {
    if s.stop.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "stopping\n".to_owned());
    }
    match check_store(&*s.store).await {
        Ok(()) => {
            s.metrics.store_up.set(1);
            (StatusCode::OK, "ready\n".to_owned())
        }
        Err(e) => {
            s.metrics.store_up.set(0);
            (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"))
        }
    }
}

/// Keeps the `grpc.health.v1` status of the control plane's services in step with the store:
/// SERVING while it answers, NOT_SERVING when it does not or once stopping.
pub struct HealthLoop;

impl HealthLoop {
    /// The services whose status is reported (and "" for the server as a whole).
    pub const SERVICES: [&str; 3] = ["", "nexus.v1.Admin", "nexus.v1.ConfigPush"];

    pub fn spawn(
        reporter: tonic_health::server::HealthReporter,
        store: Arc<dyn Store>,
        metrics: Arc<ControlPlaneMetrics>,
        stop: CancellationToken,
    ) {
        let serving = Arc::new(AtomicBool::new(false));
        tokio::spawn(async move {
            loop {
                let ok = check_store(&*store).await;
                metrics.store_up.set(i64::from(ok.is_ok()));
                let now = ok.is_ok() && !stop.is_cancelled();
                if serving.swap(now, Ordering::Relaxed) != now || !now {
                    let status = if now {
                        tonic_health::ServingStatus::Serving
                    } else {
                        tonic_health::ServingStatus::NotServing
                    };
                    if let Err(e) = &ok {
                        tracing::warn!(error = %e, "health: NOT_SERVING");
                    }
                    for service in Self::SERVICES {
                        reporter.set_service_status(service, status).await;
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => {
                        for service in Self::SERVICES {
                            reporter
                                .set_service_status(service, tonic_health::ServingStatus::NotServing)
                                .await;
                        }
                        return;
                    }
                    _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
                }
            }
        });
    }
}
