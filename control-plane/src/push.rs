//! Config push (the xDS pattern): a `ClusterView` follows the store with a watch and keeps
//! the current config snapshot and the live gateways in memory; `ConfigPushService` serves
//! gateways' `Sync` streams from it and turns each stream into a lease-backed registration.
//!
//! Every change under `/nexus/v1/` rebuilds the snapshot (changes arriving together are
//! coalesced for `DEBOUNCE`) and every connected gateway receives the new one at once.
//! If the watch fails (store unreachable, history compacted) the view rebuilds from a fresh
//! list and watches again, with backoff; gateways keep the last snapshot meanwhile.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::StreamExt;
use nexus_proto::text::Escaped;
use nexus_proto::v1::config_push_server::ConfigPush;
use nexus_proto::v1::{
    ConfigSnapshot, EnforcedSchema, FederationPeer, GatewayInfo, GatewayReport,
    gateway_report::Kind,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::dns::{DiscoverySource, GatewayEndpoint};
use crate::error::AdminError;
use crate::names::{AUDIT, REGIONS, ROOT, gateway_key, now_ms, validate_region};
use crate::records::{decode, encode};
use crate::store::{Op, Store, Txn};
use crate::{keys, regions, routes, schemas};

/// Changes arriving within this window are pushed as one snapshot.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// What the control plane currently knows, kept current by a store watch.
pub struct ClusterView {
    store: Arc<dyn Store>,
    snapshot: watch::Sender<Arc<ConfigSnapshot>>,
    gateways: ArcSwap<Vec<GatewayInfo>>,
    heartbeat: Duration,
}

impl ClusterView {
    /// Builds the first snapshot and starts following the store until `stop`.
    pub async fn start(
        store: Arc<dyn Store>,
        heartbeat: Duration,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, AdminError> {
        let (snapshot, _) = watch::channel(Arc::new(ConfigSnapshot::default()));
        let view = Arc::new(Self {
            store,
            snapshot,
            gateways: ArcSwap::from_pointee(Vec::new()),
            heartbeat,
        });
        let revision = view.rebuild().await?;
        tokio::spawn(view.clone().follow(revision, stop));
        Ok(view)
    }

    pub fn snapshot(&self) -> Arc<ConfigSnapshot> {
        self.snapshot.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<ConfigSnapshot>> {
        self.snapshot.subscribe()
    }

    pub fn gateways(&self) -> Arc<Vec<GatewayInfo>> {
        self.gateways.load_full()
    }

    /// Reads the gateway registrations again.
    async fn refresh_gateways(&self) -> Result<(), AdminError> {
        let gateways = regions::gateways(&*self.store, "").await?;
        let peers = federation_peers(&gateways);
        self.gateways.store(Arc::new(gateways));
        // Peers travel with the config, but a change to them is not a config change: the
        // snapshot is re-sent with the same version.
        if self.snapshot.borrow().peers != peers {
            self.snapshot.send_modify(|s| {
                let mut next = (**s).clone();
                next.peers = peers;
                *s = Arc::new(next);
            });
        }
        Ok(())
    }

    /// Reads everything again; returns the revision it read at. The snapshot's version is
    /// that revision, so it only moves when the config (not a registration) changes.
    async fn rebuild(&self) -> Result<i64, AdminError> {
        let store = &*self.store;
        let revision = store.revision().await?;
        self.refresh_gateways().await?;
        let (routes, _) = routes::list_routes(store).await?;
        let keys = keys::stored_keys(store).await?;
        let schemas = schemas::enforced(store)
            .await?
            .into_iter()
            .map(|(config, schema)| EnforcedSchema {
                subject: config.subject,
                enforcement: config.enforcement,
                schema: Some(schema),
            })
            .collect();
        let snapshot = ConfigSnapshot {
            version: revision,
            routes,
            keys,
            schemas,
            heartbeat_interval_ms: self.heartbeat.as_millis() as u32,
            peers: federation_peers(&self.gateways.load()),
        };
        self.snapshot.send_replace(Arc::new(snapshot));
        Ok(revision)
    }

    async fn follow(self: Arc<Self>, mut revision: i64, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let watch = tokio::select! {
                _ = stop.cancelled() => return,
                w = self.store.watch(ROOT, revision + 1) => w,
            };
            let mut events = match watch {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "config watch failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    if let Ok(r) = self.rebuild().await {
                        revision = r;
                    }
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => return,
                    e = events.next() => e,
                };
                match event {
                    Some(Ok(e)) if e.key().starts_with(AUDIT) => {
                        // The audit trail is not config: its records (written with the
                        // change they describe, or pruned) never cause a snapshot.
                        revision = revision.max(e.revision());
                    }
                    Some(Ok(e)) if e.key().starts_with(REGIONS) => {
                        // A registration or region change: not config, so no new snapshot
                        // (gateways heartbeating their applied version must not cause one).
                        revision = revision.max(e.revision());
                        if let Err(err) = self.refresh_gateways().await {
                            tracing::warn!(error = %err, "gateway list refresh failed");
                        }
                    }
                    Some(Ok(e)) => {
                        revision = revision.max(e.revision());
                        // Let a burst of changes (a transaction, a script) settle, then
                        // rebuild once.
                        tokio::time::sleep(DEBOUNCE).await;
                        match self.rebuild().await {
                            Ok(r) => revision = revision.max(r),
                            Err(err) => tracing::warn!(error = %err, "config rebuild failed"),
                        }
                        // Events up to the rebuilt revision are already reflected.
                        break;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "config watch interrupted; resyncing");
                        if let Ok(r) = self.rebuild().await {
                            revision = r;
                        }
                        break;
                    }
                    None => break,
                }
            }
        }
    }
}

/// Every live gateway with a federation (cluster and federation links) endpoint, sorted by
/// region and id: each gateway links to the others of its region and picks its home in every
/// other region from this list (docs/cluster.md).
fn federation_peers(gateways: &[GatewayInfo]) -> Vec<FederationPeer> {
    let mut peers: Vec<FederationPeer> = gateways
        .iter()
        .filter(|g| !g.federation_addr.is_empty())
        .map(|g| FederationPeer {
            region: g.region.clone(),
            gateway_id: g.id.clone(),
            addr: g.federation_addr.clone(),
        })
        .collect();
    peers.sort_by(|a, b| (&a.region, &a.gateway_id).cmp(&(&b.region, &b.gateway_id)));
    peers.dedup_by(|a, b| a.gateway_id == b.gateway_id);
    peers
}

impl DiscoverySource for ClusterView {
    fn endpoints(&self, region: &str) -> Vec<GatewayEndpoint> {
        self.gateways
            .load()
            .iter()
            .filter(|g| g.region == region)
            .filter_map(|g| {
                Some(GatewayEndpoint {
                    gateway_id: g.id.clone(),
                    region: g.region.clone(),
                    adapter_addr: g.adapter_addr.parse().ok()?,
                    federation_addr: g.federation_addr.parse().ok(),
                    priority: crate::dns::load::srv_priority(g.draining),
                    weight: crate::dns::load::srv_weight(g.sessions),
                })
            })
            .collect()
    }

    fn config_version(&self) -> u64 {
        self.snapshot.borrow().version.max(0) as u64
    }
}

/// The gateway-facing `nexus.v1.ConfigPush` service.
pub struct ConfigPushService {
    pub view: Arc<ClusterView>,
    pub store: Arc<dyn Store>,
    /// Lease TTL of registrations; a gateway that stops heartbeating disappears after it.
    pub lease_ttl: Duration,
    /// Ends every Sync stream at shutdown, so graceful shutdown does not wait on gateways.
    pub stop: CancellationToken,
    /// Gateways must present a client certificate issued for
    /// `<gateway-id>.<region>.fed.nexus` (verified against the control plane's client CA by
    /// the TLS layer) before they receive config or register; the registration is bound to
    /// that identity, so no other caller can take it over or remove it.
    pub require_certificate: bool,
}

/// Whether the caller's certificate (already verified against the client CA) is issued for
/// the gateway it claims to be.
fn check_gateway_identity(
    certs: Option<&[rustls_pki_types::CertificateDer<'static>]>,
    info: &GatewayInfo,
) -> Result<(), Status> {
    let leaf = certs.and_then(|c| c.first()).ok_or_else(|| {
        Status::unauthenticated(
            "gateways must present a client certificate issued by the cluster CA (nexus certs --gateway <region>/<id>; gateway flags --control-plane-cert/--control-plane-key)",
        )
    })?;
    let expected = nexus_tls::issue::gateway_name(&info.region, &info.id);
    nexus_tls::load::cert_is_for(leaf, &expected).map_err(|e| {
        Status::permission_denied(format!(
            "this caller may not register as gateway {:?} of region {:?}: {e}",
            info.id, info.region
        ))
    })
}

type SnapshotStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<ConfigSnapshot, Status>> + Send>>;

fn validate_info(info: &GatewayInfo) -> Result<(), Status> {
    validate_region("gateway.region", &info.region).map_err(Status::from)?;
    let id_ok = !info.id.is_empty()
        && info.id.len() <= 63
        && info
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !id_ok {
        return Err(Status::invalid_argument(format!(
            "gateway.id {:?} must be 1-63 characters of letters, digits, '-' and '_'",
            info.id
        )));
    }
    if info.adapter_addr.parse::<std::net::SocketAddr>().is_err() {
        return Err(Status::invalid_argument(format!(
            "gateway.adapter_addr {:?} must be host:port with an IP address",
            info.adapter_addr
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl ConfigPush for ConfigPushService {
    type SyncStream = SnapshotStream;

    async fn sync(
        &self,
        request: Request<Streaming<GatewayReport>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let certs = request.peer_certs();
        let mut reports = request.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), reports.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no register message within 10 s"))??;
        let Some(GatewayReport {
            kind: Some(Kind::Register(mut info)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message of a Sync stream must be register",
            ));
        };
        validate_info(&info)?;
        if self.require_certificate {
            check_gateway_identity(certs.as_deref().map(Vec::as_slice), &info).inspect_err(
                |e| {
                    tracing::warn!(gateway = ?info.id, region = ?info.region, error = %e.message(), "gateway registration refused");
                },
            )?;
        }
        let store = self.store.clone();
        regions::ensure(&*store, &info.region).await?;
        let lease = store
            .grant_lease(self.lease_ttl)
            .await
            .map_err(AdminError::from)?;
        let key = gateway_key(&info.region, &info.id);
        info.started_at_ms = if info.started_at_ms == 0 {
            now_ms()
        } else {
            info.started_at_ms
        };
        store
            .txn(Txn::new().then(Op::Put {
                key: key.clone(),
                value: encode(&info),
                lease: Some(lease),
            }))
            .await
            .map_err(AdminError::from)?;
        tracing::info!(gateway = %Escaped(&info.id), region = %Escaped(&info.region), "gateway registered");

        // Reports: heartbeats keep the lease alive; the stream ending removes the gateway.
        let done = CancellationToken::new();
        {
            let store = store.clone();
            let done = done.clone();
            let key = key.clone();
            let mut info = info.clone();
            tokio::spawn(async move {
                loop {
                    match reports.message().await {
                        Ok(Some(GatewayReport {
                            kind: Some(Kind::Heartbeat(h)),
                        })) => {
                            if let Err(e) = store.keep_alive(lease).await {
                                tracing::warn!(gateway = %Escaped(&info.id), error = %e, "lease renewal failed");
                                break;
                            }
                            // Rewritten only when something DNS or `nexusctl` shows changed
                            // enough: heartbeats must not turn into a stream of writes.
                            if h.applied_version != info.config_version
                                || h.draining != info.draining
                                || crate::dns::load::weight_moved(info.sessions, h.sessions)
                            {
                                info.config_version = h.applied_version;
                                info.sessions = h.sessions;
                                info.draining = h.draining;
                                let _ = store
                                    .txn(Txn::new().then(Op::Put {
                                        key: key.clone(),
                                        value: encode(&info),
                                        lease: Some(lease),
                                    }))
                                    .await;
                            }
                        }
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => break,
                    }
                }
                let _ = store.revoke_lease(lease).await;
                tracing::info!(gateway = %Escaped(&info.id), "gateway disconnected; registration removed");
                done.cancel();
            });
        }

        let mut updates = self.view.subscribe();
        let stop = self.stop.clone();
        let stream = async_stream::stream! {
            let current = updates.borrow_and_update().clone();
            yield Ok((*current).clone());
            loop {
                tokio::select! {
                    _ = done.cancelled() => break,
                    _ = stop.cancelled() => {
                        yield Err(Status::unavailable("control plane is shutting down"));
                        break;
                    }
                    changed = updates.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        let s = updates.borrow_and_update().clone();
                        yield Ok((*s).clone());
                    }
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Gateways registered in the store right now (for tests and topology).
pub async fn live_gateways(store: &dyn Store) -> Result<Vec<GatewayInfo>, AdminError> {
    let (kvs, _) = store.list(REGIONS).await?;
    kvs.iter()
        .filter(|kv| kv.key.contains("/gateways/"))
        .map(|kv| decode(&kv.key, &kv.value))
        .collect()
}
