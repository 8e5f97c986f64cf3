//! QUIC links between regions: one connection per region pair, a control stream (hello,
//! interest, confirmations, liveness) and a data stream per direction (forwarded and spooled
//! messages, requests and replies), so control traffic never queues behind bulk data.
//!
//! - [`Federation`] (here): the endpoint. Binds the QUIC socket, accepts links, checks hellos
//!   and certificates, keeps one link per peer **gateway** (cluster links to the gateways of
//!   its own region, federation links to its home in every other region and to the gateways
//!   whose home it is, [`crate::cluster::membership`]), and offers sending by region (through
//!   the region's home link) or to one gateway.
//! - [`dialer`]: the links this side dials, re-dialled with backoff.
//! - [`session`]: one link's streams, tasks, accounting and its single end.
//! - [`liveness`]: failure detection (sans-I/O): a peer silent for the detection time is dead.
//! - [`events`]: what links tell their owner ([`LinkHandler`]).
//! - [`send`]: sending by region or to one gateway, and best-effort drop accounting.
//! - [`wire`]: frames on the streams.
//!
//! Which side dials: of two gateways the membership links, the one whose id sorts first; of two
//! regions linked by static `--peer` entries, the one whose name sorts first. When both sides
//! dial anyway (static cluster peers), the connection dialled by the lower gateway id is kept.

pub mod compression;
pub mod dialer;
pub mod events;
mod frame_size;
pub mod liveness;
mod send;
pub mod session;
mod table;
pub mod wire;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use nexus_proto::v1::{LinkFrame, LinkHello, link_frame::Kind};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

pub use crate::cluster::membership::LinkKind;
pub use events::{EventChannel, LinkEvent, LinkHandler, LinkId, LinkInfo};
pub use wire::{MAX_FRAME, WRITE_BATCH};

use crate::cluster::membership::{Member, Membership};
use crate::metrics::FederationMetrics;
use crate::tls::{Identity, TlsError, server_name};
use dialer::{DialKey, DialTarget, Dialing};
use wire::{read_frame, write_frame};

/// Protocol version of the link. Version 2 added stream ids, `prev_seq`, nacks and receipts to
/// replication; a version 1 peer is refused with a message saying so.
pub const LINK_PROTOCOL: u32 = 2;
/// Socket buffers asked for the federation endpoint's UDP socket (the kernel caps them at
/// `net.core.rmem_max` / `wmem_max`). With the usual 208 KiB default, a receiving gateway
/// that is off the CPU for ~15 ms at 13 MB/s overflows its socket, and QUIC reads the
/// dropped datagrams as congestion and shrinks its window.
pub const SOCKET_BUFFER: usize = 8 << 20;

/// How a link is run.
#[derive(Debug, Clone, Default)]
pub struct LinkSettings {
    /// How long a peer may stay silent before its link is declared dead; `None` derives it
    /// from the RTT (see [`liveness`]).
    pub dead_after: Option<Duration>,
    /// Batch compression per link kind ([`compression`]).
    pub compression: compression::LinkCompression,
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot bind federation endpoint on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("no link to region {0:?}")]
    NotConnected(String),
    #[error("link to {peer}: {reason}")]
    Link { peer: String, reason: String },
}

/// A gateway's federation endpoint.
pub struct Federation {
    endpoint: quinn::Endpoint,
    region: String,
    gateway_id: String,
    /// The TLS identity dialled links present; replaced by [`Federation::reload_identity`].
    client: Mutex<quinn::ClientConfig>,
    /// The owner, set by [`Federation::start`]; links are refused before it.
    handler: OnceLock<Arc<dyn LinkHandler>>,
    /// Live links by peer gateway id.
    links: table::LinkTable,
    /// This gateway's homes in each other region, best first (by the membership), read on
    /// every send to a region.
    homes: ArcSwap<HashMap<String, Vec<String>>>,
    membership: Mutex<Membership>,
    /// Regions given with `--peer` (they take precedence over the membership).
    static_regions: Mutex<BTreeSet<String>>,
    dialing: Mutex<Dialing>,
    next_link: AtomicU64,
    dead_after: Option<Duration>,
    compression: compression::LinkCompression,
    metrics: Arc<FederationMetrics>,
    stop: CancellationToken,
}

fn link_err(peer: &str, e: impl std::fmt::Display) -> LinkError {
    LinkError::Link {
        peer: peer.to_owned(),
        reason: e.to_string(),
    }
}

/// The federation endpoint's UDP socket, with receive and send buffers enlarged to
/// [`SOCKET_BUFFER`] where the kernel allows it.
fn federation_socket(listen: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(listen)?;
    let state = quinn::udp::UdpSocketState::new((&socket).into())?;
    if let Err(e) = state.set_recv_buffer_size((&socket).into(), SOCKET_BUFFER) {
        tracing::debug!(error = %e, "cannot enlarge the federation socket's receive buffer");
    }
    if let Err(e) = state.set_send_buffer_size((&socket).into(), SOCKET_BUFFER) {
        tracing::debug!(error = %e, "cannot enlarge the federation socket's send buffer");
    }
    tracing::debug!(
        recv = ?state.recv_buffer_size((&socket).into()),
        send = ?state.send_buffer_size((&socket).into()),
        "federation socket buffers"
    );
    Ok(socket)
}

/// What became of a frame handed to [`Federation::send_on`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Queued,
    /// The link's queue is full: try again later.
    Full,
    /// That link is no longer the current one.
    Gone,
}

impl Federation {
    /// Binds the QUIC endpoint. Links are accepted and dialled once [`Federation::start`]
    /// names their owner.
    pub async fn bind(
        listen: SocketAddr,
        identity: &Identity,
        region: &str,
        gateway_id: &str,
        settings: LinkSettings,
    ) -> Result<Arc<Self>, LinkError> {
        let bind_err = |error| LinkError::Bind {
            addr: listen,
            error,
        };
        let socket = federation_socket(listen).map_err(bind_err)?;
        let mut endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(identity.server_config()?),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind_err)?;
        let client = identity.client_config()?;
        endpoint.set_default_client_config(client.clone());
        Ok(Arc::new(Self {
            endpoint,
            region: region.to_owned(),
            gateway_id: gateway_id.to_owned(),
            client: Mutex::new(client),
            handler: OnceLock::new(),
            links: table::LinkTable::default(),
            homes: ArcSwap::from_pointee(HashMap::new()),
            membership: Mutex::new(Membership::default()),
            static_regions: Mutex::new(BTreeSet::new()),
            dialing: Mutex::new(Dialing::default()),
            next_link: AtomicU64::new(1),
            dead_after: settings.dead_after.filter(|d| !d.is_zero()),
            compression: settings.compression,
            metrics: Arc::new(FederationMetrics::default()),
            stop: CancellationToken::new(),
        }))
    }

    /// Uses `identity` (a rotated certificate, key or CA) for the links accepted and dialled
    /// from now on; live links keep the keys they negotiated. The binaries call this on
    /// SIGHUP.
    pub fn reload_identity(&self, identity: &Identity) -> Result<(), LinkError> {
        let server = identity.server_config()?;
        let client = identity.client_config()?;
        self.endpoint.set_server_config(Some(server));
        *self.client.lock() = client;
        Ok(())
    }

    /// [`Federation::bind`] and [`Federation::start`] with every link event delivered as a
    /// [`LinkEvent`] on a channel, for tools and tests.
    pub async fn bind_with_events(
        listen: SocketAddr,
        identity: &Identity,
        region: &str,
        gateway_id: &str,
        settings: LinkSettings,
    ) -> Result<(Arc<Self>, tokio::sync::mpsc::Receiver<LinkEvent>), LinkError> {
        let fed = Self::bind(listen, identity, region, gateway_id, settings).await?;
        let (handler, events) = EventChannel::new(16 * 1024);
        fed.start(handler);
        Ok((fed, events))
    }

    /// Names the owner of every link and starts accepting them. Once only.
    pub fn start(self: &Arc<Self>, handler: Arc<dyn LinkHandler>) {
        if self.handler.set(handler).is_ok() {
            tokio::spawn(self.clone().accept_loop());
        }
    }

    /// Federation's series (links, best-effort accounting, spool), for the gateway's
    /// `/metrics`.
    pub fn metrics(&self) -> &Arc<FederationMetrics> {
        &self.metrics
    }

    fn next_link_id(&self) -> LinkId {
        LinkId(self.next_link.fetch_add(1, Ordering::Relaxed))
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn gateway_id(&self) -> &str {
        &self.gateway_id
    }

    // === who to link to ===

    /// Keeps a link to `peer_region` at `addr` up (`--peer`): dials, and re-dials with
    /// backoff whenever it drops. Does nothing when the peer's region sorts first (it dials
    /// us). Static peers take precedence over the membership for their region.
    /// Says that links to `peer_region` are static (`--peer`): the control plane's
    /// registrations are not followed for it. Call before anything follows them (the bridge
    /// follows each pushed config as soon as it starts), or a link to a pushed address could
    /// be made beside the static one. [`Federation::maintain`] does it too.
    pub fn declare_static_region(&self, peer_region: &str) {
        self.static_regions.lock().insert(peer_region.to_owned());
    }

    pub fn maintain(self: &Arc<Self>, addr: SocketAddr, peer_region: &str) {
        self.static_regions.lock().insert(peer_region.to_owned());
        if peer_region <= self.region.as_str() {
            return;
        }
        let key = DialKey::StaticRegion(peer_region.to_owned());
        let target = DialTarget {
            addr,
            region: peer_region.to_owned(),
            gateway_id: None,
        };
        let mut dialing = self.dialing.lock();
        let mut wanted: HashMap<DialKey, DialTarget> = dialing
            .targets()
            .into_iter()
            .filter(|(k, _)| matches!(k, DialKey::StaticRegion(_)))
            .collect();
        wanted.insert(key, target);
        dialing.follow(self, |k| matches!(k, DialKey::StaticRegion(_)), wanted);
    }

    /// Keeps links to gateways of this region given by address (`--cluster-peer`), for
    /// setups without a control plane. Both sides may list each other.
    pub fn maintain_cluster_peer(self: &Arc<Self>, addr: SocketAddr) {
        let mut dialing = self.dialing.lock();
        let mut wanted: HashMap<DialKey, DialTarget> = dialing
            .targets()
            .into_iter()
            .filter(|(k, _)| matches!(k, DialKey::StaticCluster(_)))
            .collect();
        wanted.insert(
            DialKey::StaticCluster(addr),
            DialTarget {
                addr,
                region: self.region.clone(),
                gateway_id: None,
            },
        );
        dialing.follow(self, |k| matches!(k, DialKey::StaticCluster(_)), wanted);
    }

    /// Follows the live gateways the control plane knows (its registrations): keeps a link to
    /// every other gateway of this region, to this gateway's home in every other region (not
    /// given with `--peer`) and to the gateways whose home it is, dialling those whose id
    /// sorts after ours; stops dialling gateways that left.
    pub fn follow_membership(self: &Arc<Self>, members: Vec<Member>) {
        let statics = self.static_regions.lock().clone();
        let members: Vec<Member> = members
            .into_iter()
            .filter(|m| !statics.contains(&m.region) && m.gateway_id != self.gateway_id)
            .chain(std::iter::once(Member {
                gateway_id: self.gateway_id.clone(),
                region: self.region.clone(),
                addr: String::new(),
            }))
            .collect();
        let membership = Membership::new(members);
        let homes: HashMap<String, Vec<String>> = membership
            .regions()
            .filter(|r| *r != self.region)
            .map(|r| {
                let ids = membership
                    .homes(&self.gateway_id, r)
                    .into_iter()
                    .map(|m| m.gateway_id.clone())
                    .collect();
                (r.to_owned(), ids)
            })
            .collect();
        let mut wanted = HashMap::new();
        for l in membership.wanted(&self.gateway_id, &self.region) {
            if !l.dial {
                continue;
            }
            match l.peer.addr.parse::<SocketAddr>() {
                Ok(addr) => {
                    wanted.insert(
                        DialKey::Gateway(l.peer.gateway_id.clone()),
                        DialTarget {
                            addr,
                            region: l.peer.region.clone(),
                            gateway_id: Some(l.peer.gateway_id.clone()),
                        },
                    );
                }
                Err(_) => tracing::warn!(
                    gateway = %l.peer.gateway_id,
                    addr = %l.peer.addr,
                    "registered address is not IP:PORT; not linking to it"
                ),
            }
        }
        self.homes.store(Arc::new(homes));
        *self.membership.lock() = membership;
        self.dialing
            .lock()
            .follow(self, |k| matches!(k, DialKey::Gateway(_)), wanted);
    }

    // === dialling and accepting ===

    /// One dial attempt; on success the link is registered and the owner told.
    pub async fn dial(
        self: &Arc<Self>,
        target: &DialTarget,
    ) -> Result<quinn::Connection, LinkError> {
        let peer = target.gateway_id.as_deref().unwrap_or(&target.region);
        // A known gateway of this region (a cluster peer) must present a certificate naming
        // it; a gateway of another region, one naming its region.
        let name = match &target.gateway_id {
            Some(id) if target.region == self.region => {
                format!("{id}.{}", server_name(&target.region))
            }
            _ => server_name(&target.region),
        };
        let connecting = self
            .endpoint
            .connect_with(self.client.lock().clone(), target.addr, &name)
            .map_err(|e| link_err(peer, e))?;
        let conn = connecting.await.map_err(|e| link_err(peer, e))?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| link_err(peer, e))?;
        write_frame(&mut send, &self.hello())
            .await
            .map_err(|e| link_err(peer, e))?;
        let hello = match read_frame(&mut recv).await {
            Ok(Some(LinkFrame {
                kind: Some(Kind::Hello(h)),
            })) => h,
            Ok(_) => return Err(link_err(peer, "peer did not send a hello")),
            Err(e) => {
                let reason = conn.close_reason().map_or(e, |r| r.to_string());
                return Err(link_err(peer, reason));
            }
        };
        let unexpected = hello.region != target.region
            || target
                .gateway_id
                .as_ref()
                .is_some_and(|id| *id != hello.gateway_id)
            || hello.gateway_id == self.gateway_id;
        if unexpected {
            conn.close(1u32.into(), b"unexpected peer");
            return Err(link_err(
                peer,
                format!(
                    "answered as gateway {:?} of region {:?}",
                    hello.gateway_id, hello.region
                ),
            ));
        }
        if hello.protocol != LINK_PROTOCOL {
            conn.close(2u32.into(), b"link protocol mismatch");
            return Err(link_err(
                peer,
                format!(
                    "the peer speaks link protocol {}, this gateway {LINK_PROTOCOL}: run the same Nexus version on every federated gateway",
                    hello.protocol
                ),
            ));
        }
        session::start(self, conn.clone(), send, recv, hello, true).await?;
        Ok(conn)
    }

    /// One dial attempt to a gateway of `region` at `addr`, whatever its id.
    pub async fn dial_region(
        self: &Arc<Self>,
        addr: SocketAddr,
        region: &str,
    ) -> Result<quinn::Connection, LinkError> {
        self.dial(&DialTarget {
            addr,
            region: region.to_owned(),
            gateway_id: None,
        })
        .await
    }

    fn hello(&self) -> LinkFrame {
        LinkFrame {
            kind: Some(Kind::Hello(LinkHello {
                region: self.region.clone(),
                gateway_id: self.gateway_id.clone(),
                protocol: LINK_PROTOCOL,
                encodings: nexus_proto::encoding::CodecSet::ALL.names(),
                batch_codecs: nexus_proto::encoding::CodecSet::ALL.names(),
            })),
        }
    }

    async fn accept_loop(self: Arc<Self>) {
        loop {
            let incoming = tokio::select! {
                _ = self.stop.cancelled() => return,
                i = self.endpoint.accept() => i,
            };
            let Some(incoming) = incoming else { return };
            let fed = self.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                if let Err(e) = fed.accept_one(incoming).await {
                    tracing::warn!(%remote, error = %e, "link refused");
                }
            });
        }
    }

    async fn accept_one(self: &Arc<Self>, incoming: quinn::Incoming) -> Result<(), LinkError> {
        let remote = incoming.remote_address().to_string();
        let conn = incoming.await.map_err(|e| link_err(&remote, e))?;
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| link_err(&remote, e))?;
        let hello = match read_frame(&mut recv).await {
            Ok(Some(LinkFrame {
                kind: Some(Kind::Hello(h)),
            })) => h,
            Ok(_) => return Err(link_err(&remote, "first frame was not a hello")),
            Err(e) => return Err(link_err(&remote, e)),
        };
        if hello.region.is_empty()
            || hello.gateway_id.is_empty()
            || hello.gateway_id == self.gateway_id
        {
            conn.close(2u32.into(), b"bad hello");
            return Err(link_err(
                &remote,
                format!(
                    "bad hello: gateway {:?} of region {:?}",
                    hello.gateway_id, hello.region
                ),
            ));
        }
        if hello.protocol != LINK_PROTOCOL {
            let reason = format!(
                "link protocol {} is not supported: this gateway speaks {LINK_PROTOCOL}; run the same Nexus version on every federated gateway",
                hello.protocol
            );
            conn.close(2u32.into(), reason.as_bytes());
            return Err(link_err(&remote, reason));
        }
        // The client certificate was signed by the CA (checked in the handshake); it must
        // also be issued for the region the peer claims, and a gateway of this region (a
        // cluster peer) must present one naming its gateway id.
        let named = if hello.region == self.region {
            crate::tls::peer_is_gateway(&conn, &hello.region, &hello.gateway_id)
        } else {
            crate::tls::peer_is_region(&conn, &hello.region)
        };
        if let Err(reason) = named {
            conn.close(4u32.into(), b"certificate does not match the hello");
            return Err(link_err(&remote, reason));
        }
        write_frame(&mut send, &self.hello())
            .await
            .map_err(|e| link_err(&remote, e))?;
        session::start(self, conn, send, recv, hello, false).await
    }

    // === state ===

    /// Round-trip time of the link `region`'s messages go through, as QUIC measures it.
    pub fn rtt(&self, region: &str) -> Option<Duration> {
        self.route(region).map(|l| l.conn.rtt())
    }

    /// Round-trip time of the link to one gateway.
    pub fn rtt_to(&self, gateway_id: &str) -> Option<Duration> {
        self.links.load().get(gateway_id).map(|l| l.conn.rtt())
    }

    /// The detection time of the link to `region` now (configured, or derived from its RTT).
    pub fn dead_after(&self, region: &str) -> Option<Duration> {
        let rtt = self.rtt(region)?;
        Some(liveness::Liveness::new(self.dead_after, Duration::ZERO).dead_after(rtt))
    }

    /// A live link with the gateway listening at `addr`, if any.
    fn link_at(&self, addr: SocketAddr) -> Option<quinn::Connection> {
        self.links
            .load()
            .values()
            .find(|l| l.conn.remote_address() == addr)
            .map(|l| l.conn.clone())
    }

    /// Other regions this endpoint links to or is configured to (peers and membership).
    pub fn peers(&self) -> Vec<String> {
        let mut r: BTreeSet<String> = self.static_regions.lock().clone();
        r.extend(
            self.membership
                .lock()
                .regions()
                .filter(|x| *x != self.region)
                .map(str::to_owned),
        );
        r.into_iter().collect()
    }

    /// Other regions with at least one live link.
    pub fn connected_regions(&self) -> Vec<String> {
        let r: BTreeSet<String> = self
            .links
            .load()
            .values()
            .filter(|l| l.kind == LinkKind::Federation)
            .map(|l| l.info.region.clone())
            .collect();
        r.into_iter().collect()
    }

    /// Live links to gateways of this region.
    pub fn cluster_peers(&self) -> Vec<LinkInfo> {
        let mut v: Vec<LinkInfo> = self
            .links
            .load()
            .values()
            .filter(|l| l.kind == LinkKind::Cluster)
            .map(|l| l.info.clone())
            .collect();
        v.sort_by(|a, b| a.gateway_id.cmp(&b.gateway_id));
        v
    }

    /// Every live link, for status.
    pub fn links(&self) -> Vec<session::LinkSnapshot> {
        let mut v: Vec<_> = self.links.load().values().map(|l| l.snapshot()).collect();
        v.sort_by(|a, b| a.info.gateway_id.cmp(&b.info.gateway_id));
        v
    }

    /// Closes every link and stops accepting and re-dialling.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.endpoint.close(0u32.into(), b"shutdown");
        self.links.change(|links| links.clear());
        self.endpoint.wait_idle().await;
    }
}
