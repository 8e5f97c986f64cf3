//! Starting and stopping a control plane: opens the store (etcd or embedded), serves the
//! Admin API (with gRPC reflection and `grpc.health.v1`) and, when configured, the DNS SRV
//! responder and the HTTP endpoint of [`crate::http`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nexus_proto::v1::admin_server::AdminServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::AdminService;
use crate::store::Store;
use crate::store::embedded::EmbeddedStore;
use crate::store::etcd::EtcdStore;

/// Where state lives.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// etcd endpoints, e.g. `http://127.0.0.1:2379`.
    Etcd(Vec<String>),
    /// A file for the embedded store.
    Embedded(PathBuf),
}

#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    pub listen: SocketAddr,
    pub store: StoreConfig,
    /// How long to keep retrying an unreachable etcd at start.
    pub store_connect_timeout: Duration,
    /// UDP and TCP address for DNS discovery; `None` serves no DNS.
    pub dns_listen: Option<SocketAddr>,
    /// DNS zone, e.g. `nexus.local`: adapters resolve `_nexus._tcp.<region>.<zone>`.
    pub dns_zone: String,
    pub dns_ttl: Duration,
    /// TTL of gateway registrations; gateways heartbeat at a third of it.
    pub lease_ttl: Duration,
    /// Whether Admin API calls must carry a key with the admin scope.
    pub admin_auth: bool,
    /// Where the bootstrap admin key is written when no admin key exists yet.
    pub admin_key_file: Option<PathBuf>,
    /// TLS of the Admin API and config push. With a client CA, gateways must present a
    /// certificate issued for `<gateway-id>.<region>.fed.nexus` to sync and register, and
    /// admin client certificates (`<name>.admin.nexus`) stand in for an admin key.
    pub tls: Option<nexus_tls::ServerTlsFiles>,
    /// Serve plaintext, or gateways without certificates, on a non-loopback address anyway.
    pub insecure: bool,
    /// TLS and/or user and password towards etcd.
    pub etcd_access: crate::store::etcd::EtcdAccess,
    /// How much of the audit trail to keep (docs/security.md, "Audit trail").
    pub audit_retention: crate::audit::Retention,
    /// HTTP address for `/healthz`, `/readyz` and `/metrics`; `None` serves none.
    pub metrics_listen: Option<SocketAddr>,
    /// A plaintext gRPC address serving only `grpc.health.v1`, for probes that cannot speak
    /// TLS (the kubelet's); `None` serves none. The Admin API listener serves it too.
    pub health_listen: Option<SocketAddr>,
}

impl ControlPlaneConfig {
    /// Defaults for everything but where to listen and store.
    pub fn new(listen: SocketAddr, store: StoreConfig) -> Self {
        Self {
            listen,
            store,
            store_connect_timeout: Duration::from_secs(30),
            dns_listen: None,
            dns_zone: "nexus.local".into(),
            dns_ttl: crate::dns::DEFAULT_TTL,
            lease_ttl: Duration::from_secs(10),
            admin_auth: true,
            admin_key_file: None,
            tls: None,
            insecure: false,
            etcd_access: Default::default(),
            audit_retention: Default::default(),
            metrics_listen: None,
            health_listen: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr} ({what}): {error}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("gRPC reflection setup failed: {0}")]
    Reflection(String),
    #[error(transparent)]
    Admin(#[from] crate::error::AdminError),
    #[error("DNS: {0}")]
    Dns(#[from] crate::dns::DnsError),
    #[error("control plane task failed: {0}")]
    Task(String),
    #[error(transparent)]
    Tls(#[from] nexus_tls::TlsError),
}

pub struct RunningControlPlane {
    pub grpc_addr: SocketAddr,
    pub dns_addr: Option<SocketAddr>,
    /// Where `/healthz`, `/readyz` and `/metrics` are served, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    pub store: Arc<dyn Store>,
    pub view: Arc<crate::push::ClusterView>,
    stop: CancellationToken,
    task: JoinHandle<Result<(), ServerError>>,
}

impl RunningControlPlane {
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    pub async fn wait(self) -> Result<(), ServerError> {
        self.task
            .await
            .map_err(|e| ServerError::Task(e.to_string()))?
    }

    pub async fn shutdown(self) -> Result<(), ServerError> {
        self.stop.cancel();
        self.wait().await
    }
}

pub async fn open_store(cfg: &ControlPlaneConfig) -> Result<Arc<dyn Store>, ServerError> {
    Ok(match &cfg.store {
        StoreConfig::Etcd(endpoints) => Arc::new(
            EtcdStore::connect_with_retry_using(
                endpoints,
                &cfg.etcd_access,
                cfg.store_connect_timeout,
            )
            .await?,
        ),
        StoreConfig::Embedded(path) => Arc::new(EmbeddedStore::open(path).await?),
    })
}

/// The TLS configuration of the gRPC listener, after the plaintext policy: plaintext, or
/// gateways that cannot be authenticated, only on loopback or with `insecure`.
fn grpc_tls(
    cfg: &ControlPlaneConfig,
) -> Result<Option<Arc<nexus_tls::ReloadingServerConfig>>, ServerError> {
    let Some(files) = &cfg.tls else {
        nexus_tls::check_plaintext("the control plane", cfg.listen, cfg.insecure)?;
        return Ok(None);
    };
    if files.client_ca.is_none() {
        // TLS alone hides the traffic but anyone could still register as any gateway.
        nexus_tls::check_plaintext(
            "the control plane (gateways unauthenticated: no --tls-client-ca)",
            cfg.listen,
            cfg.insecure,
        )?;
    }
    let mut files = files.clone();
    // nexusctl with an admin key needs no certificate; the services decide per call.
    files.require_client_cert = false;
    Ok(Some(nexus_tls::ReloadingServerConfig::from_files(
        files,
        &[b"h2"],
    )?))
}

pub async fn start(cfg: ControlPlaneConfig) -> Result<RunningControlPlane, ServerError> {
    let tls = grpc_tls(&cfg)?;
    let gateway_certificates = cfg.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    let store = open_store(&cfg).await?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|error| ServerError::Bind {
            what: "control plane gRPC",
            addr: cfg.listen,
            error,
        })?;
    let grpc_addr = listener.local_addr().map_err(|error| ServerError::Bind {
        what: "control plane gRPC",
        addr: cfg.listen,
        error,
    })?;
    // Reflection lists what the control plane serves, not the adapters' Gateway service.
    let (reflection, reflection_v1alpha) =
        nexus_proto::reflection::services(&["nexus.v1.Admin", "nexus.v1.ConfigPush"])
            .map_err(|e| ServerError::Reflection(e.to_string()))?;
    let stop = CancellationToken::new();
    if cfg.admin_auth {
        // The bootstrap key is a change like any other: it goes on the audit trail.
        let audited = crate::audit::Audited::new(
            store.clone(),
            crate::audit::Caller {
                actor: crate::audit::Actor::ControlPlane,
                peer: None,
            },
            "keys.bootstrap",
            cfg.audit_retention,
        );
        crate::admin_auth::bootstrap(&audited, cfg.admin_key_file.as_deref()).await?;
    }
    // The trail's bounds hold before the first request: a bound lowered at a restart prunes
    // the oldest records now, not moments after the API answers.
    crate::audit::retention::prune_logged(&*store, cfg.audit_retention).await;
    tokio::spawn(crate::audit::retention::run(
        store.clone(),
        cfg.audit_retention,
        stop.clone(),
    ));
    let view =
        crate::push::ClusterView::start(store.clone(), cfg.lease_ttl / 3, stop.clone()).await?;
    let admin = tonic::service::interceptor::InterceptedService::new(
        AdminServer::new(AdminService {
            store: store.clone(),
            audit_retention: cfg.audit_retention,
        })
        .max_decoding_message_size(4 << 20),
        crate::admin_auth::AdminAuth {
            view: view.clone(),
            required: cfg.admin_auth,
            admin_certificates: gateway_certificates,
        },
    );
    let push = nexus_proto::v1::config_push_server::ConfigPushServer::new(
        crate::push::ConfigPushService {
            view: view.clone(),
            store: store.clone(),
            lease_ttl: cfg.lease_ttl,
            stop: stop.clone(),
            require_certificate: gateway_certificates,
        },
    );
    let dns = match cfg.dns_listen {
        Some(addr) => {
            let (udp, tcp) = bind_dns(addr).await?;
            let source: Arc<dyn crate::dns::DiscoverySource> = view.clone();
            Some(
                crate::dns::serve(udp, Some(tcp), cfg.dns_zone.clone(), source, cfg.dns_ttl)
                    .await?,
            )
        }
        None => None,
    };
    let dns_addr = dns.as_ref().map(|d| d.udp_addr());
    let metrics = Arc::new(crate::http::ControlPlaneMetrics::new(view.clone()));
    let (health, health_service) = tonic_health::server::health_reporter();
    crate::http::HealthLoop::spawn(health, store.clone(), metrics.clone(), stop.clone());
    if let Some(addr) = cfg.health_listen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|error| ServerError::Bind {
                what: "health_listen",
                addr,
                error,
            })?;
        let health = health_service.clone();
        let stop = stop.clone();
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
    }
    let (metrics_addr, http_task) = match cfg.metrics_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|error| ServerError::Bind {
                    what: "metrics_listen",
                    addr,
                    error,
                })?;
            let bound = listener.local_addr().map_err(|error| ServerError::Bind {
                what: "metrics_listen",
                addr,
                error,
            })?;
            let app = crate::http::routes(crate::http::HttpState {
                store: store.clone(),
                stop: stop.clone(),
                metrics,
            });
            let http_stop = stop.clone();
            let task = tokio::spawn(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(http_stop.cancelled_owned())
                    .await;
            });
            (Some(bound), Some(task))
        }
        None => (None, None),
    };
    let grpc_stop = stop.clone();
    let router = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(admin)
        .add_service(push)
        .add_service(reflection)
        .add_service(reflection_v1alpha);
    let served = serve_grpc(router, listener, tls, cfg.listen, grpc_stop)?;
    let task = tokio::spawn(async move {
        let served = served.await;
        if let Some(http) = http_task {
            let _ = tokio::time::timeout(Duration::from_secs(5), http).await;
        }
        if let Some(dns) = dns
            && let Err(e) = dns.shutdown().await
        {
            tracing::warn!(error = %e, "DNS responder did not stop cleanly");
        }
        served
    });
    tracing::info!(grpc = %grpc_addr, dns = ?dns_addr, metrics = ?metrics_addr, tls = cfg.tls.is_some(), "control plane listening");
    Ok(RunningControlPlane {
        grpc_addr,
        dns_addr,
        metrics_addr,
        store,
        view,
        stop,
        task,
    })
}

type Served = std::pin::Pin<Box<dyn Future<Output = Result<(), ServerError>> + Send>>;

/// Serves `router` on `listener`, over TLS when `tls` is set, until `stop`.
fn serve_grpc(
    router: tonic::transport::server::Router,
    listener: TcpListener,
    tls: Option<Arc<nexus_tls::ReloadingServerConfig>>,
    listen: SocketAddr,
    stop: CancellationToken,
) -> Result<Served, ServerError> {
    let task_error = |e: tonic::transport::Error| ServerError::Task(e.to_string());
    Ok(match tls {
        Some(tls) => {
            tls.watch(nexus_tls::reload::DEFAULT_RELOAD_INTERVAL, stop.clone());
            let incoming =
                nexus_tls::TlsListener::new(listener, tls, stop.clone()).map_err(|error| {
                    ServerError::Bind {
                        what: "control plane gRPC",
                        addr: listen,
                        error,
                    }
                })?;
            Box::pin(async move {
                router
                    .serve_with_incoming_shutdown(incoming.into_stream(), stop.cancelled_owned())
                    .await
                    .map_err(task_error)
            })
        }
        None => Box::pin(async move {
            router
                .serve_with_incoming_shutdown(
                    // Small frames (acks, replies) must not wait on Nagle's algorithm.
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    stop.cancelled_owned(),
                )
                .await
                .map_err(task_error)
        }),
    })
}

/// Binds the DNS server's UDP socket and a TCP listener on the same port. With port 0 the
/// UDP socket gets a free port that TCP may already use (another process's connection, say),
/// so that case retries with a new port instead of failing.
async fn bind_dns(
    addr: std::net::SocketAddr,
) -> Result<(tokio::net::UdpSocket, TcpListener), ServerError> {
    const ATTEMPTS_FOR_ANY_PORT: usize = 16;
    let mut attempt = 1;
    loop {
        let udp = tokio::net::UdpSocket::bind(addr)
            .await
            .map_err(|error| ServerError::Bind {
                what: "DNS (UDP)",
                addr,
                error,
            })?;
        let bound = udp.local_addr().map_err(|error| ServerError::Bind {
            what: "DNS (UDP)",
            addr,
            error,
        })?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(error)
                if addr.port() == 0
                    && error.kind() == std::io::ErrorKind::AddrInUse
                    && attempt < ATTEMPTS_FOR_ANY_PORT =>
            {
                attempt += 1;
            }
            Err(error) => {
                return Err(ServerError::Bind {
                    what: "DNS (TCP)",
                    addr: bound,
                    error,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dns_gets_one_port_for_udp_and_tcp() {
        let (udp, tcp) = bind_dns("127.0.0.1:0".parse().unwrap()).await.unwrap();
        assert_eq!(udp.local_addr().unwrap(), tcp.local_addr().unwrap());
    }

    #[tokio::test]
    async fn an_explicit_dns_port_whose_tcp_side_is_taken_is_refused_by_name() {
        // Hold a TCP port, then ask for DNS on it: UDP binds, TCP cannot, and with an
        // explicit port there is no retry.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        if std::net::UdpSocket::bind(addr).is_err() {
            return; // the UDP side of that port is in use too: nothing to check here
        }
        let err = bind_dns(addr).await.unwrap_err().to_string();
        assert!(
            err.contains("DNS (TCP)") && err.contains(&addr.to_string()),
            "{err}"
        );
    }
}
