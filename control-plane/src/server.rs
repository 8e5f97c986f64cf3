//! Starting and stopping a control plane: opens the store (etcd or embedded), serves the
//! Admin API (with gRPC reflection) and, when configured, the DNS SRV responder.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nexus_proto::v1::admin_server::AdminServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
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
    #[error("control plane task failed: {0}")]
    Task(String),
}

pub struct RunningControlPlane {
    pub grpc_addr: SocketAddr,
    pub store: Arc<dyn Store>,
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
        StoreConfig::Etcd(endpoints) => {
            Arc::new(EtcdStore::connect_with_retry(endpoints, cfg.store_connect_timeout).await?)
        }
        StoreConfig::Embedded(path) => Arc::new(EmbeddedStore::open(path).await?),
    })
}

pub async fn start(cfg: ControlPlaneConfig) -> Result<RunningControlPlane, ServerError> {
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
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(nexus_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;
    let admin = AdminServer::new(AdminService {
        store: store.clone(),
    })
    .max_decoding_message_size(4 << 20);
    let stop = CancellationToken::new();
    let grpc_stop = stop.clone();
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(admin)
            .add_service(reflection)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                grpc_stop.cancelled().await
            })
            .await
            .map_err(|e| ServerError::Task(e.to_string()))
    });
    tracing::info!(grpc = %grpc_addr, "control plane listening");
    Ok(RunningControlPlane {
        grpc_addr,
        store,
        stop,
        task,
    })
}
