//! Starting and stopping a gateway: binds the gRPC and HTTP listeners, serves until told
//! to stop, then shuts down gracefully.
//!
//! Shutdown is a drain (docs/protocol.md §3.4): stop admitting new sessions and unary calls
//! (`/readyz` turns 503, `grpc.health.v1` NOT_SERVING), send every session `GoAway` while
//! still serving it, wait up to
//! `shutdown_grace_ms` until the adapters have moved and the requests this gateway routed are
//! answered, then close what is left with UNAVAILABLE and stop the listeners.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use nexus_proto::v1::gateway_server::GatewayServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admission::{AddressBudget, PendingSessions};
use crate::config::GatewayConfig;
use crate::metrics::GatewayMetrics;
use crate::router::Router;
use crate::service::GatewayService;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot listen on {addr} ({what}): {error}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("gRPC reflection setup failed: {0}")]
    Reflection(String),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("gateway task failed: {0}")]
    Task(String),
    #[error(transparent)]
    Tls(#[from] nexus_tls::TlsError),
}

/// A running gateway. Dropping it does not stop it; call `shutdown`.
pub struct RunningGateway {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub gateway_id: String,
    pub router: Arc<Router>,
    stop: CancellationToken,
    task: JoinHandle<Result<(), ServerError>>,
}

impl RunningGateway {
    /// Begins graceful shutdown and waits for it to finish.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        self.stop.cancel();
        self.wait().await
    }

    /// A token that starts graceful shutdown when cancelled.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Waits until the gateway stopped (after `stop_token()` was cancelled).
    pub async fn wait(self) -> Result<(), ServerError> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(ServerError::Task(e.to_string())),
        }
    }
}

/// A short random id (`gw-` and 8 hex digits): it becomes a DNS label in SRV answers, and
/// short labels let eight gateways fit a plain 512-byte UDP answer.
fn new_gateway_id() -> String {
    format!("gw-{:08x}", rand::random::<u32>())
}

/// The adapter listener's TLS configuration, or `None` for plaintext (which the policy
/// allows only on loopback or with `insecure`).
fn adapter_tls(
    cfg: &GatewayConfig,
) -> Result<Option<Arc<nexus_tls::ReloadingServerConfig>>, ServerError> {
    match (&cfg.tls.cert, &cfg.tls.key) {
        (Some(cert), Some(key)) => Ok(Some(nexus_tls::ReloadingServerConfig::from_files(
            nexus_tls::ServerTlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: cfg.tls.client_ca.clone(),
                require_client_cert: true,
            },
            &[b"h2", nexus_proto::native::ALPN],
        )?)),
        _ => {
            nexus_tls::check_plaintext("the gateway's adapter listener", cfg.listen, cfg.insecure)?;
            Ok(None)
        }
    }
}

/// Serves `health` alone, in plaintext, on `addr` until `stop` (`health_listen`).
pub async fn serve_health<S>(
    addr: SocketAddr,
    health: S,
    stop: CancellationToken,
) -> Result<SocketAddr, ServerError>
where
    S: tonic::codegen::Service<
            axum::http::Request<tonic::body::Body>,
            Response = axum::http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|error| ServerError::Bind {
            what: "health_listen",
            addr,
            error,
        })?;
    let bound = listener.local_addr().map_err(|error| ServerError::Bind {
        what: "health_listen",
        addr,
        error,
    })?;
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                stop.cancelled_owned(),
            )
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "health listener failed");
        }
    });
    tracing::info!(health = %bound, "grpc.health.v1 listening (plaintext)");
    Ok(bound)
}

/// Validates `cfg`, binds both listeners and starts serving.
pub async fn start(mut cfg: GatewayConfig) -> Result<RunningGateway, ServerError> {
    cfg.validate()?;
    if cfg.gateway_id.is_empty() {
        cfg.gateway_id = new_gateway_id();
    }
    let grpc = TcpListener::bind(cfg.listen)
        .await
        .map_err(|error| ServerError::Bind {
            what: "gRPC listen",
            addr: cfg.listen,
            error,
        })?;
    let http = TcpListener::bind(cfg.metrics_listen)
        .await
        .map_err(|error| ServerError::Bind {
            what: "metrics_listen",
            addr: cfg.metrics_listen,
            error,
        })?;
    let grpc_addr = grpc.local_addr().map_err(|error| ServerError::Bind {
        what: "gRPC listen",
        addr: cfg.listen,
        error,
    })?;
    let metrics_addr = http.local_addr().map_err(|error| ServerError::Bind {
        what: "metrics_listen",
        addr: cfg.metrics_listen,
        error,
    })?;

    // TLS files are read before anything starts, so a bad file stops start-up with its name.
    let tls = adapter_tls(&cfg)?;
    let cfg = Arc::new(cfg);
    let metrics = Arc::new(GatewayMetrics::new());
    let router = Arc::new(Router::new(cfg.clone(), metrics));
    let stop = CancellationToken::new();
    let close_all = CancellationToken::new();
    if !cfg.control_plane.is_empty() {
        let state_dir = std::path::PathBuf::from(&cfg.state_dir);
        crate::control::load_saved(&router, &state_dir);
        let advertise = cfg.advertise.unwrap_or(grpc_addr);
        let info = nexus_proto::v1::GatewayInfo {
            id: cfg.gateway_id.clone(),
            region: cfg.region.clone(),
            adapter_addr: advertise.to_string(),
            metrics_addr: metrics_addr.to_string(),
            federation_addr: cfg
                .federation_addr
                .map(|a| a.to_string())
                .unwrap_or_default(),
            started_at_ms: crate::policy_now_ms(),
            ..Default::default()
        };
        tokio::spawn(crate::control::run(
            router.clone(),
            cfg.control_plane.clone(),
            info,
            state_dir,
            close_all.clone(),
        ));
    }
    let gateway_id: Arc<str> = cfg.gateway_id.as_str().into();

    let limits = &cfg.limits;
    let service = GatewayService {
        router: router.clone(),
        gateway_id: gateway_id.clone(),
        connections: Arc::new(AtomicU32::new(0)),
        unauthenticated: AddressBudget::new(u32::MAX, limits.max_unauthenticated_per_address),
        pending: PendingSessions::new(limits.max_unauthenticated),
        logs: Default::default(),
        close_all: close_all.clone(),
    };
    let incoming = crate::transport::incoming(
        grpc,
        crate::transport::TransportLimits {
            budget: AddressBudget::new(
                limits.max_transport_connections,
                limits.max_transport_connections_per_address,
            ),
            idle_timeout: cfg.idle_connection_timeout(),
            metrics: router.metrics.clone(),
        },
    );
    // A batch may hold many frames; one frame may carry a max_payload payload.
    let max_message = (cfg.limits.max_payload as usize)
        .saturating_mul(2)
        .max(4 << 20)
        + (64 << 10);
    let native = crate::native::NativeSessions {
        service: service.clone(),
        max_record: max_message,
        close_all: close_all.clone(),
    };
    let grpc_service = GatewayServer::new(service)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    // Reflection lists the one service a gateway serves (not Admin or ConfigPush, which
    // share the descriptor set).
    let (reflection, reflection_v1alpha) = nexus_proto::reflection::services(&["nexus.v1.Gateway"])
        .map_err(|e| ServerError::Reflection(e.to_string()))?;

    // The standard grpc.health.v1 service (Kubernetes gRPC probes, grpc-health-probe, load
    // balancers): SERVING for "" and nexus.v1.Gateway until draining begins.
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<GatewayServer<GatewayService>>().await;
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;

    if let Some(addr) = cfg.health_listen {
        crate::server::serve_health(addr, health_service.clone(), close_all.clone()).await?;
    }

    let http_stop = close_all.clone();
    let http_app = crate::http::routes(router.clone());
    let http_task = tokio::spawn(async move {
        let _ = axum::serve(http, http_app)
            .with_graceful_shutdown(async move { http_stop.cancelled().await })
            .await;
    });

    let grpc_stop = close_all.clone();
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(cfg.limits.max_calls_per_connection))
        .add_service(grpc_service)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha);
    let grpc_task =
        match tls {
            // TLS on top of the transport layer: connections are budgeted and timed out
            // (transport.rs) before and during the handshake.
            Some(tls) => {
                tls.watch(
                    nexus_tls::reload::DEFAULT_RELOAD_INTERVAL,
                    close_all.clone(),
                );
                let incoming =
                    nexus_tls::TlsListener::from_incoming(incoming, tls, close_all.clone());
                // Native sessions are told from gRPC ones after the handshake (native.rs).
                let incoming =
                    crate::native::dispatch(incoming.into_stream(), native, close_all.clone());
                tokio::spawn(server.serve_with_incoming_shutdown(incoming, async move {
                    grpc_stop.cancelled().await
                }))
            }
            None => {
                let incoming = crate::native::dispatch(incoming, native, close_all.clone());
                tokio::spawn(server.serve_with_incoming_shutdown(incoming, async move {
                    grpc_stop.cancelled().await
                }))
            }
        };

    let task = {
        let router = router.clone();
        let stop = stop.clone();
        let grace = cfg.shutdown_grace();
        tokio::spawn(async move {
            stop.cancelled().await;
            tracing::info!("gateway draining");
            router.start_draining();
            health
                .set_not_serving::<GatewayServer<GatewayService>>()
                .await;
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            // Sessions got GoAway and move on their own; wait for them and for the requests
            // this gateway routed, within the grace (docs/protocol.md §3.4).
            let deadline = tokio::time::Instant::now() + grace;
            let busy = || router.metrics.connections.get() > 0 || router.pending_requests() > 0;
            while busy() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let (sessions, requests) =
                (router.metrics.connections.get(), router.pending_requests());
            if sessions > 0 || requests > 0 {
                tracing::warn!(
                    sessions,
                    requests,
                    "shutdown grace elapsed with sessions still open or requests in flight; closing them"
                );
            } else {
                tracing::info!("drained: every session moved away");
            }
            close_all.cancel();
            // Sessions end as their streams close; don't let a stuck connection hold us.
            let _ = tokio::time::timeout(Duration::from_secs(5), http_task).await;
            match tokio::time::timeout(Duration::from_secs(5), grpc_task).await {
                Ok(Ok(result)) => result.map_err(ServerError::from),
                Ok(Err(e)) => Err(ServerError::Task(format!("gRPC server task: {e}"))),
                Err(_) => {
                    tracing::warn!("gRPC connections did not close within 5 s of shutdown");
                    Ok(())
                }
            }
        })
    };

    tracing::info!(
        region = %cfg.region,
        gateway = %gateway_id,
        grpc = %grpc_addr,
        tls = cfg.tls.cert.is_some(),
        metrics = %metrics_addr,
        "gateway listening"
    );
    Ok(RunningGateway {
        grpc_addr,
        metrics_addr,
        gateway_id: gateway_id.to_string(),
        router,
        stop,
        task,
    })
}
