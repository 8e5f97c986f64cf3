//! The gateway's side of config push: registers with the control plane over a `Sync`
//! stream, heartbeats on it (keeping the registration's lease alive), applies every config
//! snapshot it receives, and keeps the last good snapshot on disk.
//!
//! The gateway never depends on the control plane being up: at start it applies the
//! snapshot saved by its previous run (if any) before serving, and while the control plane
//! or its store is unreachable it keeps routing with what it has, reconnecting with
//! exponential backoff (100 ms doubling to 5 s) and resynchronising on recovery.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nexus_proto::v1::config_push_client::ConfigPushClient;
use nexus_proto::v1::{
    ConfigSnapshot, GatewayInfo, GatewayReport, Heartbeat, gateway_report::Kind,
};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::policy::Policy;
use crate::router::Router;

const SNAPSHOT_FILE: &str = "config-snapshot.pb";

/// Where the last good snapshot lives.
pub fn snapshot_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SNAPSHOT_FILE)
}

/// Applies a snapshot to the router; returns problems worth logging.
pub fn apply(router: &Router, snapshot: &ConfigSnapshot) -> Vec<String> {
    let (policy, problems) = Policy::from_snapshot(snapshot);
    for p in &problems {
        tracing::warn!("{p}");
    }
    router.apply_policy(policy);
    problems
}

/// Loads and applies the snapshot a previous run saved. A missing file is normal (first
/// start); an unreadable or corrupt one is reported and ignored, never half-applied.
pub fn load_saved(router: &Router, state_dir: &Path) -> Option<i64> {
    let path = snapshot_path(state_dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the saved config snapshot");
            return None;
        }
    };
    match ConfigSnapshot::decode(bytes.as_slice()) {
        Ok(snapshot) => {
            apply(router, &snapshot);
            tracing::info!(
                version = snapshot.version,
                "applied the config saved by the last run"
            );
            Some(snapshot.version)
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "saved config snapshot is corrupt; ignoring it");
            None
        }
    }
}

/// Writes the snapshot atomically (temporary file, fsync, rename), so a crash leaves the
/// previous good file or the new one, never a torn write.
pub fn save(state_dir: &Path, snapshot: &ConfigSnapshot) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(state_dir)?;
    let path = snapshot_path(state_dir);
    let tmp = state_dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&snapshot.encode_to_vec())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)
}

/// Follows the control plane at `url` until `stop`.
pub async fn run(
    router: Arc<Router>,
    url: String,
    info: GatewayInfo,
    state_dir: PathBuf,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let mut applied = router.policy().version;
    // Key expiry needs no config change to take effect: re-check sessions every second.
    {
        let router = router.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => router.recheck_sessions(crate::policy_now_ms()),
                }
            }
        });
    }
    loop {
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            r = session(&router, &url, &info, &state_dir, &mut applied) => r,
        };
        match outcome {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(control_plane = %url, error = %e, retry_in_ms = backoff.as_millis() as u64, "control plane unavailable; routing with config version {applied}")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// For an `https://` control plane: trust its CA and present this gateway's certificate,
/// read from the files at every connect (so a renewed certificate is used on the next one).
fn control_plane_tls(
    endpoint: tonic::transport::Endpoint,
    url: &str,
    cfg: &crate::GatewayConfig,
) -> Result<tonic::transport::Endpoint, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    if !url.starts_with("https://") {
        return Ok(endpoint);
    }
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let tls_cfg = &cfg.control_plane_tls;
    let mut tls = match &tls_cfg.ca {
        Some(ca) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?)),
        None => ClientTlsConfig::new().with_native_roots(),
    };
    let cert = tls_cfg.cert.as_ref().or(cfg.tls.cert.as_ref());
    let key = tls_cfg.key.as_ref().or(cfg.tls.key.as_ref());
    if let (Some(cert), Some(key)) = (cert, key) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    endpoint.tls_config(tls).map_err(|e| e.to_string())
}

/// What the gateway tells the control plane with every heartbeat: the config it applied, and
/// its load and drain state, from which DNS SRV weights it (control-plane `dns::load`).
fn heartbeat_report(router: &Router, applied: i64) -> Heartbeat {
    Heartbeat {
        applied_version: applied,
        sessions: u32::try_from(router.metrics.connections.get().max(0)).unwrap_or(u32::MAX),
        draining: router.is_draining(),
    }
}

/// Sends a heartbeat on the Sync stream; an error when the stream is gone.
async fn send_heartbeat(
    tx: &mpsc::Sender<GatewayReport>,
    router: &Router,
    applied: i64,
) -> Result<(), String> {
    tx.send(GatewayReport {
        kind: Some(Kind::Heartbeat(heartbeat_report(router, applied))),
    })
    .await
    .map_err(|_| "the Sync stream closed".to_owned())
}

async fn session(
    router: &Arc<Router>,
    url: &str,
    info: &GatewayInfo,
    state_dir: &Path,
    applied: &mut i64,
) -> Result<(), String> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true);
    let channel = control_plane_tls(endpoint, url, &router.config())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let mut client = ConfigPushClient::new(channel);
    let (tx, rx) = mpsc::channel(8);
    let mut register = info.clone();
    register.config_version = *applied;
    tx.send(GatewayReport {
        kind: Some(Kind::Register(register)),
    })
    .await
    .map_err(|e| e.to_string())?;
    let mut snapshots = client
        .sync(ReceiverStream::new(rx))
        .await
        .map_err(|s| s.message().to_owned())?
        .into_inner();
    tracing::info!(control_plane = %url, "registered with the control plane");
    let mut heartbeat = tokio::time::interval(Duration::from_secs(3));
    let mut told_draining = false;
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = snapshots.message() => {
                let snapshot = match msg {
                    Ok(Some(s)) => s,
                    Ok(None) => return Err("the control plane closed the stream".into()),
                    Err(s) => return Err(s.message().to_owned()),
                };
                if snapshot.heartbeat_interval_ms > 0 {
                    let every = Duration::from_millis(snapshot.heartbeat_interval_ms as u64);
                    if every != heartbeat.period() {
                        heartbeat = tokio::time::interval(every);
                        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    }
                }
                if snapshot.version != *applied
                    || router.policy().version == 0
                    || snapshot.peers != router.policy().peers
                {
                    apply(router, &snapshot);
                    *applied = snapshot.version;
                    if let Err(e) = save(state_dir, &snapshot) {
                        tracing::warn!(dir = %state_dir.display(), error = %e, "cannot save the config snapshot; it will not survive a restart");
                    }
                    tracing::info!(version = snapshot.version, "config applied");
                    send_heartbeat(&tx, router, *applied).await?;
                }
            }
            // Tell the control plane at once, so DNS SRV lists this gateway last.
            _ = router.drain_started(), if !told_draining => {
                told_draining = true;
                send_heartbeat(&tx, router, *applied).await?;
            }
            _ = heartbeat.tick() => send_heartbeat(&tx, router, *applied).await?,
        }
    }
}
