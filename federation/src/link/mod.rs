//! QUIC links between regions: one connection per region pair, a control stream (hello,
//! interest, confirmations, liveness) and a data stream per direction (forwarded and spooled
//! messages, requests and replies), so control traffic never queues behind bulk data.
//!
//! - [`Federation`] (here): the endpoint. Binds the QUIC socket, dials the peers this side
//!   should dial (re-dialling with backoff), accepts the others, checks hellos and
//!   certificates, and offers sending by region.
//! - [`session`]: one link's streams, tasks, accounting and its single end.
//! - [`liveness`]: failure detection (sans-I/O): a peer silent for the detection time is dead.
//! - [`events`]: what links tell their owner ([`LinkHandler`]).
//! - [`wire`]: frames on the streams.
//!
//! Which side dials: the region whose name sorts first dials the other. Both sides may list
//! each other as peers; exactly one connection results, with no races to resolve.

pub mod events;
pub mod liveness;
pub mod session;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use nexus_proto::v1::{Forward, InterestUpdate, LinkFrame, LinkHello, link_frame::Kind};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

pub use events::{EventChannel, LinkEvent, LinkHandler, LinkId, LinkInfo};
pub use wire::{MAX_FRAME, WRITE_BATCH};

use crate::metrics::{DropReason, FederationMetrics};
use crate::tls::{Identity, TlsError, server_name};
use session::Link;
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
    client: quinn::ClientConfig,
    /// The owner, set by [`Federation::start`]; links are refused before it.
    handler: OnceLock<Arc<dyn LinkHandler>>,
    links: Mutex<HashMap<String, Arc<Link>>>,
    next_link: AtomicU64,
    dead_after: Option<Duration>,
    metrics: Arc<FederationMetrics>,
    /// Regions configured as peers (dialled by one side or the other).
    peers: Mutex<std::collections::BTreeSet<String>>,
    /// Peers from configuration; registrations never override them.
    static_peers: Mutex<std::collections::HashSet<String>>,
    /// Peers from the control plane's registrations: address and what stops dialling it.
    registered: Mutex<HashMap<String, (SocketAddr, CancellationToken)>>,
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
    /// That link is no longer the region's current one.
    Gone,
}

impl Federation {
    /// Binds the QUIC endpoint and starts accepting links.
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
            client,
            handler: OnceLock::new(),
            links: Mutex::new(HashMap::new()),
            next_link: AtomicU64::new(1),
            dead_after: settings.dead_after.filter(|d| !d.is_zero()),
            metrics: Arc::new(FederationMetrics::default()),
            peers: Mutex::new(Default::default()),
            static_peers: Mutex::new(Default::default()),
            registered: Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
        }))
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

    /// Keeps a link to `peer_region` at `addr` up: dials, and re-dials with exponential
    /// backoff (100 ms doubling to 5 s) whenever it drops. Does nothing when the peer's
    /// name sorts first (it dials us).
    pub fn maintain(self: &Arc<Self>, addr: SocketAddr, peer_region: &str) {
        self.peers.lock().insert(peer_region.to_owned());
        self.static_peers.lock().insert(peer_region.to_owned());
        self.keep_dialling(addr, peer_region);
    }

    /// Follows the peers the control plane knows (its gateway registrations): starts
    /// keeping links to new ones, re-targets a region whose address changed, and stops
    /// dialling regions that left. Peers given with [`Federation::maintain`] (configuration)
    /// take precedence over registrations for the same region.
    pub fn follow_registered(self: &Arc<Self>, peers: &[(String, SocketAddr)]) {
        let statics = self.static_peers.lock().clone();
        let wanted: HashMap<&str, SocketAddr> = peers
            .iter()
            .filter(|(r, _)| *r != self.region && !statics.contains(r))
            .map(|(r, a)| (r.as_str(), *a))
            .collect();
        let mut registered = self.registered.lock();
        registered.retain(|region, (addr, stop)| {
            let keep = wanted.get(region.as_str()) == Some(addr);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for (region, addr) in wanted {
            if registered.contains_key(region) {
                continue;
            }
            tracing::info!(peer = %region, %addr, "federation peer from the control plane");
            self.peers.lock().insert(region.to_owned());
            if let Some(stop) = self.keep_dialling(addr, region) {
                registered.insert(region.to_owned(), (addr, stop));
            }
        }
    }

    /// Dials `peer_region` at `addr` until stopped (when this side is the dialer); the
    /// returned token stops it.
    fn keep_dialling(
        self: &Arc<Self>,
        addr: SocketAddr,
        peer_region: &str,
    ) -> Option<CancellationToken> {
        if peer_region <= self.region.as_str() {
            return None;
        }
        let stop = self.stop.child_token();
        let fed = self.clone();
        let peer = peer_region.to_owned();
        let token = stop.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            let mut failures = 0u32;
            loop {
                if stop.is_cancelled() {
                    return;
                }
                let started = tokio::time::Instant::now();
                match fed.dial(addr, &peer).await {
                    Ok(conn) => {
                        failures = 0;
                        let reason = tokio::select! {
                            e = conn.closed() => e.to_string(),
                            _ = stop.cancelled() => {
                                conn.close(0u32.into(), b"peer left the registry");
                                return;
                            }
                        };
                        tracing::warn!(peer = %peer, %reason, "federation link down; re-dialling");
                        if started.elapsed() > Duration::from_secs(10) {
                            backoff = Duration::from_millis(100);
                        }
                    }
                    Err(e) => {
                        // Loud once per outage, quiet while it lasts.
                        failures += 1;
                        if failures == 1 {
                            tracing::warn!(peer = %peer, %addr, error = %e, "federation dial failed; retrying with backoff");
                        } else {
                            tracing::debug!(peer = %peer, error = %e, failures, "federation dial failed");
                        }
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
        Some(token)
    }

    /// One dial attempt; on success the link is registered and `Up` emitted.
    pub async fn dial(
        self: &Arc<Self>,
        addr: SocketAddr,
        peer_region: &str,
    ) -> Result<quinn::Connection, LinkError> {
        let connecting = self
            .endpoint
            .connect_with(self.client.clone(), addr, &server_name(peer_region))
            .map_err(|e| link_err(peer_region, e))?;
        let conn = connecting.await.map_err(|e| link_err(peer_region, e))?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| link_err(peer_region, e))?;
        write_frame(&mut send, &self.hello())
            .await
            .map_err(|e| link_err(peer_region, e))?;
        let hello = match read_frame(&mut recv).await {
            Ok(Some(LinkFrame {
                kind: Some(Kind::Hello(h)),
            })) => h,
            Ok(_) => return Err(link_err(peer_region, "peer did not send a hello")),
            Err(e) => return Err(link_err(peer_region, e)),
        };
        if hello.region != peer_region {
            conn.close(1u32.into(), b"unexpected region");
            return Err(link_err(
                peer_region,
                format!("answered as region {:?}", hello.region),
            ));
        }
        if hello.protocol != LINK_PROTOCOL {
            conn.close(2u32.into(), b"link protocol mismatch");
            return Err(link_err(
                peer_region,
                format!(
                    "the peer speaks link protocol {}, this gateway {LINK_PROTOCOL}: run the same Nexus version on every federated gateway",
                    hello.protocol
                ),
            ));
        }
        if let Some(reason) =
            session::region_taken(&self.links.lock(), &hello.region, &hello.gateway_id)
        {
            conn.close(7u32.into(), reason.as_bytes());
            return Err(link_err(peer_region, reason));
        }
        session::start(
            self,
            conn.clone(),
            send,
            recv,
            hello.region,
            hello.gateway_id,
        )
        .await?;
        Ok(conn)
    }

    fn hello(&self) -> LinkFrame {
        LinkFrame {
            kind: Some(Kind::Hello(LinkHello {
                region: self.region.clone(),
                gateway_id: self.gateway_id.clone(),
                protocol: LINK_PROTOCOL,
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
                    tracing::warn!(%remote, error = %e, "federation link refused");
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
        if hello.region == self.region || hello.region.is_empty() {
            conn.close(2u32.into(), b"bad hello");
            return Err(link_err(
                &remote,
                format!("bad hello: region {:?}", hello.region),
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
        // The client certificate was signed by the federation CA (checked in the
        // handshake); it must also be issued for the region the peer claims to be.
        if let Err(reason) = crate::tls::peer_is_region(&conn, &hello.region) {
            conn.close(4u32.into(), b"certificate does not match region");
            return Err(link_err(&remote, reason));
        }
        if let Some(reason) =
            session::region_taken(&self.links.lock(), &hello.region, &hello.gateway_id)
        {
            conn.close(7u32.into(), reason.as_bytes());
            return Err(link_err(&remote, reason));
        }
        write_frame(&mut send, &self.hello())
            .await
            .map_err(|e| link_err(&remote, e))?;
        session::start(self, conn, send, recv, hello.region, hello.gateway_id).await
    }

    /// The current link to `region`, if one is up.
    pub fn current(&self, region: &str) -> Option<LinkId> {
        self.links.lock().get(region).map(|l| l.info.id)
    }

    /// Sends an interest update to one region; false if there is no link.
    pub fn send_interest(&self, region: &str, update: InterestUpdate) -> bool {
        self.try_send_control(region, Kind::Interest(update))
    }

    /// Sends an interest update on every link.
    pub fn broadcast_interest(&self, update: &InterestUpdate) {
        for link in self.links.lock().values() {
            let _ = link.control.try_send(LinkFrame {
                kind: Some(Kind::Interest(update.clone())),
            });
        }
    }

    /// Queues a message for `region`, waiting for room while the link is up (for tools that
    /// want backpressure rather than drops).
    pub async fn forward(&self, region: &str, forward: Forward) -> Result<(), LinkError> {
        let link = self
            .links
            .lock()
            .get(region)
            .cloned()
            .ok_or_else(|| LinkError::NotConnected(region.to_owned()))?;
        link.forward(LinkFrame {
            kind: Some(Kind::Forward(forward)),
        })
        .await
        .map_err(|_| LinkError::NotConnected(region.to_owned()))
    }

    /// Queues a best-effort message for `region` without waiting; `false` when there is no
    /// link or its queue is full. Either way it is counted: forwarded (and later confirmed
    /// or lost with the link), or dropped with the reason.
    pub fn try_forward(&self, region: &str, forward: Forward) -> bool {
        let link = self.links.lock().get(region).cloned();
        match link {
            Some(link) => link.try_forward(LinkFrame {
                kind: Some(Kind::Forward(forward)),
            }),
            None => {
                self.metrics.dropped(region, DropReason::LinkDown, 1);
                false
            }
        }
    }

    /// Queues a request or reply (or any data frame) for `region` without waiting; the link
    /// it went on, or `None` when there is no link or its queue is full.
    pub fn try_send_data(&self, region: &str, kind: Kind) -> Option<LinkId> {
        let links = self.links.lock();
        let link = links.get(region)?;
        link.data
            .try_send(LinkFrame { kind: Some(kind) })
            .ok()
            .map(|_| link.info.id)
    }

    /// Queues a data frame on one particular link (the spool pump's, which must never
    /// continue on a link other than the one its cursor belongs to).
    pub fn send_on(&self, region: &str, link: LinkId, kind: Kind) -> Sent {
        let links = self.links.lock();
        match links.get(region) {
            Some(l) if l.info.id == link => match l.data.try_send(LinkFrame { kind: Some(kind) }) {
                Ok(()) => Sent::Queued,
                Err(_) => Sent::Full,
            },
            _ => Sent::Gone,
        }
    }

    /// Queues a control frame (small, never behind data) for `region` without waiting.
    pub fn try_send_control(&self, region: &str, kind: Kind) -> bool {
        self.links
            .lock()
            .get(region)
            .is_some_and(|l| l.control.try_send(LinkFrame { kind: Some(kind) }).is_ok())
    }

    /// Round-trip time of the link to `region`, as QUIC measures it continuously.
    pub fn rtt(&self, region: &str) -> Option<Duration> {
        self.links.lock().get(region).map(|l| l.conn.rtt())
    }

    /// The detection time of the link to `region` now (configured, or derived from its RTT).
    pub fn dead_after(&self, region: &str) -> Option<Duration> {
        let rtt = self.rtt(region)?;
        Some(liveness::Liveness::new(self.dead_after, Duration::ZERO).dead_after(rtt))
    }

    /// Regions this endpoint keeps dialling (its configured peers).
    pub fn peers(&self) -> Vec<String> {
        let mut r: Vec<String> = self.peers.lock().iter().cloned().collect();
        r.sort();
        r
    }

    pub fn connected_regions(&self) -> Vec<String> {
        let mut r: Vec<String> = self.links.lock().keys().cloned().collect();
        r.sort();
        r
    }

    /// Closes every link and stops accepting and re-dialling.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.endpoint.close(0u32.into(), b"shutdown");
        self.links.lock().clear();
        self.endpoint.wait_idle().await;
    }
}
