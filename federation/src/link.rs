//! QUIC links between regions: one connection per region pair, a control stream (hello,
//! interest) and a data stream per direction (forwarded messages), so interest changes
//! never queue behind bulk data. Links are re-dialled with backoff when they drop; the
//! owner learns about it through [`LinkEvent`]s and resynchronises (sends its full interest)
//! on every `Up`.
//!
//! Which side dials: the region whose name sorts first dials the other. Both sides may list
//! each other as peers; exactly one connection results, with no races to resolve.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nexus_proto::v1::{
    Forward, InterestUpdate, LinkFrame, LinkHello, RemoteReply, RemoteRequest, link_frame::Kind,
};
use parking_lot::Mutex;
use prost::Message;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::tls::{Identity, TlsError, server_name};

/// Protocol version of the link.
pub const LINK_PROTOCOL: u32 = 1;
/// Largest frame accepted from a peer: room for the largest payload a gateway can be
/// configured to accept (64 MiB) plus its envelope.
pub const MAX_FRAME: usize = 80 << 20;
/// The data writer coalesces queued frames into writes of up to this many bytes. quinn keeps
/// every write as one segment of the stream's send buffer and finds the bytes of each packet
/// it builds by scanning those segments from the oldest unacknowledged one, so one write per
/// small frame made that scan (tens of thousands of segments with a WAN round trip's worth of
/// data in flight) the sender's main cost, and under overload the link starved for CPU.
pub const WRITE_BATCH: usize = 64 << 10;
/// Socket buffers asked for the federation endpoint's UDP socket (the kernel caps them at
/// `net.core.rmem_max` / `wmem_max`). With the usual 208 KiB default, a receiving gateway
/// that is off the CPU for ~15 ms at 13 MB/s overflows its socket, and QUIC reads the
/// dropped datagrams as congestion and shrinks its window.
pub const SOCKET_BUFFER: usize = 8 << 20;

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

/// What happens on links, for the owner (the gateway) to act on.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkEvent {
    Up {
        region: String,
        gateway_id: String,
    },
    Interest {
        region: String,
        update: InterestUpdate,
    },
    Forward {
        region: String,
        forward: Forward,
    },
    Request {
        region: String,
        request: RemoteRequest,
    },
    Reply {
        region: String,
        reply: RemoteReply,
    },
    /// A message of an `async` / `sync` route from `region`'s spool.
    Spooled {
        region: String,
        spooled: nexus_proto::v1::Spooled,
    },
    /// `region` recorded our spooled messages up to `up_to`.
    SpoolAck {
        region: String,
        up_to: u64,
    },
    Down {
        region: String,
        reason: String,
    },
}

struct Link {
    conn: quinn::Connection,
    control: mpsc::Sender<LinkFrame>,
    data: mpsc::Sender<LinkFrame>,
}

/// A gateway's federation endpoint.
pub struct Federation {
    endpoint: quinn::Endpoint,
    region: String,
    gateway_id: String,
    client: quinn::ClientConfig,
    events: mpsc::Sender<LinkEvent>,
    links: Mutex<HashMap<String, Link>>,
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

async fn write_frame(send: &mut quinn::SendStream, frame: &LinkFrame) -> Result<(), String> {
    send.write_all(&frame.encode_length_delimited_to_vec())
        .await
        .map_err(|e| e.to_string())
}

/// Writes the data stream: each frame taken from the queue is sent together with whatever
/// else is queued behind it (up to [`WRITE_BATCH`] bytes), in one write.
async fn data_writer(mut rx: mpsc::Receiver<LinkFrame>, mut send: quinn::SendStream) {
    let mut buf = Vec::with_capacity(WRITE_BATCH + 1024);
    while let Some(frame) = rx.recv().await {
        frame
            .encode_length_delimited(&mut buf)
            .expect("a Vec grows as needed");
        while buf.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(f) => f
                    .encode_length_delimited(&mut buf)
                    .expect("a Vec grows as needed"),
                Err(_) => break,
            }
        }
        if send.write_all(&buf).await.is_err() {
            return;
        }
        buf.clear();
        if buf.capacity() > 4 * WRITE_BATCH {
            // One large frame grew it: do not keep that much per link.
            buf = Vec::with_capacity(WRITE_BATCH + 1024);
        }
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

async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Option<LinkFrame>, String> {
    let mut len: u64 = 0;
    for i in 0..10 {
        let b = match recv.read_u8().await {
            Ok(b) => b,
            Err(e) if i == 0 && e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        len |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            break;
        }
        if i == 9 {
            return Err("malformed frame length".into());
        }
    }
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > MAX_FRAME {
        return Err(format!(
            "frame of {len} bytes exceeds the {MAX_FRAME}-byte limit"
        ));
    }
    let mut buf = vec![0u8; len];
    recv.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    LinkFrame::decode(buf.as_slice())
        .map(Some)
        .map_err(|e| format!("malformed frame: {e}"))
}

impl Federation {
    /// Binds the QUIC endpoint and starts accepting links.
    pub async fn bind(
        listen: SocketAddr,
        identity: &Identity,
        region: &str,
        gateway_id: &str,
    ) -> Result<(Arc<Self>, mpsc::Receiver<LinkEvent>), LinkError> {
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
        let (events, rx) = mpsc::channel(4096);
        let fed = Arc::new(Self {
            endpoint,
            region: region.to_owned(),
            gateway_id: gateway_id.to_owned(),
            client,
            events,
            links: Mutex::new(HashMap::new()),
            peers: Mutex::new(Default::default()),
            static_peers: Mutex::new(Default::default()),
            registered: Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
        });
        tokio::spawn(fed.clone().accept_loop());
        Ok((fed, rx))
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
        self.start_link(conn.clone(), send, recv, hello).await?;
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
        if hello.protocol > LINK_PROTOCOL || hello.region == self.region || hello.region.is_empty()
        {
            conn.close(2u32.into(), b"bad hello");
            return Err(link_err(
                &remote,
                format!(
                    "bad hello: region {:?}, protocol {}",
                    hello.region, hello.protocol
                ),
            ));
        }
        // The client certificate was signed by the federation CA (checked in the
        // handshake); it must also be issued for the region the peer claims to be.
        if let Err(reason) = crate::tls::peer_is_region(&conn, &hello.region) {
            conn.close(4u32.into(), b"certificate does not match region");
            return Err(link_err(&remote, reason));
        }
        write_frame(&mut send, &self.hello())
            .await
            .map_err(|e| link_err(&remote, e))?;
        self.start_link(conn, send, recv, hello).await
    }

    async fn start_link(
        self: &Arc<Self>,
        conn: quinn::Connection,
        mut control_send: quinn::SendStream,
        mut control_recv: quinn::RecvStream,
        hello: LinkHello,
    ) -> Result<(), LinkError> {
        let region = hello.region.clone();
        let mut data_send = conn.open_uni().await.map_err(|e| link_err(&region, e))?;
        // A QUIC stream becomes visible to the peer with its first bytes: announce ours
        // before waiting for theirs, or both sides would wait forever.
        let announce = LinkFrame {
            kind: Some(Kind::Ping(nexus_proto::v1::LinkPing { nonce: 0 })),
        };
        write_frame(&mut data_send, &announce)
            .await
            .map_err(|e| link_err(&region, e))?;
        let mut data_recv = conn.accept_uni().await.map_err(|e| link_err(&region, e))?;
        let (control_tx, mut control_rx) = mpsc::channel::<LinkFrame>(256);
        let (data_tx, data_rx) = mpsc::channel::<LinkFrame>(4096);
        let previous = self.links.lock().insert(
            region.clone(),
            Link {
                conn: conn.clone(),
                control: control_tx,
                data: data_tx,
            },
        );
        if let Some(old) = previous {
            old.conn.close(3u32.into(), b"replaced");
        }
        // Writers.
        tokio::spawn(async move {
            while let Some(f) = control_rx.recv().await {
                if write_frame(&mut control_send, &f).await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(data_writer(data_rx, data_send));
        // Readers: control and data; the link ends when the connection does.
        let fed = self.clone();
        let r = region.clone();
        tokio::spawn(async move {
            while let Ok(Some(f)) = read_frame(&mut control_recv).await {
                let event = match f.kind {
                    Some(Kind::Interest(update)) => LinkEvent::Interest {
                        region: r.clone(),
                        update,
                    },
                    Some(Kind::SpoolAck(ack)) => LinkEvent::SpoolAck {
                        region: r.clone(),
                        up_to: ack.up_to,
                    },
                    _ => continue,
                };
                let _ = fed.events.send(event).await;
            }
        });
        let fed = self.clone();
        let r = region.clone();
        let watched = conn.clone();
        tokio::spawn(async move {
            let reason = loop {
                match read_frame(&mut data_recv).await {
                    Ok(Some(LinkFrame {
                        kind: Some(Kind::Forward(forward)),
                    })) => {
                        let _ = fed
                            .events
                            .send(LinkEvent::Forward {
                                region: r.clone(),
                                forward,
                            })
                            .await;
                    }
                    Ok(Some(LinkFrame {
                        kind: Some(Kind::Request(request)),
                    })) => {
                        let _ = fed
                            .events
                            .send(LinkEvent::Request {
                                region: r.clone(),
                                request,
                            })
                            .await;
                    }
                    Ok(Some(LinkFrame {
                        kind: Some(Kind::Spooled(spooled)),
                    })) => {
                        let _ = fed
                            .events
                            .send(LinkEvent::Spooled {
                                region: r.clone(),
                                spooled,
                            })
                            .await;
                    }
                    Ok(Some(LinkFrame {
                        kind: Some(Kind::Reply(reply)),
                    })) => {
                        let _ = fed
                            .events
                            .send(LinkEvent::Reply {
                                region: r.clone(),
                                reply,
                            })
                            .await;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break "peer closed the data stream".to_owned(),
                    Err(e) => break e,
                }
            };
            let reason = watched
                .close_reason()
                .map(|c| c.to_string())
                .unwrap_or(reason);
            let removed = {
                let mut links = fed.links.lock();
                match links.get(&r) {
                    Some(l) if l.conn.stable_id() == watched.stable_id() => {
                        links.remove(&r).is_some()
                    }
                    _ => false,
                }
            };
            if removed {
                let _ = fed.events.send(LinkEvent::Down { region: r, reason }).await;
            }
        });
        // Transport health once a second at debug level (`RUST_LOG=nexus_federation::link=debug`):
        // what QUIC's congestion control and loss recovery see on this link.
        if tracing::enabled!(tracing::Level::DEBUG) {
            let watched = conn.clone();
            let r = region.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = watched.closed() => return,
                        _ = tick.tick() => {}
                    }
                    let s = watched.stats();
                    tracing::debug!(
                        peer = %r,
                        rtt_ms = s.path.rtt.as_secs_f64() * 1e3,
                        cwnd = s.path.cwnd,
                        congestion_events = s.path.congestion_events,
                        lost_packets = s.path.lost_packets,
                        sent_packets = s.path.sent_packets,
                        udp_tx_bytes = s.udp_tx.bytes,
                        udp_rx_bytes = s.udp_rx.bytes,
                        stream_data_blocked = s.frame_tx.stream_data_blocked,
                        "federation link transport"
                    );
                }
            });
        }
        tracing::info!(peer = %region, gateway = %hello.gateway_id, "federation link up");
        let _ = self
            .events
            .send(LinkEvent::Up {
                region,
                gateway_id: hello.gateway_id,
            })
            .await;
        Ok(())
    }

    /// Sends an interest update to one region; false if there is no link.
    pub fn send_interest(&self, region: &str, update: InterestUpdate) -> bool {
        let links = self.links.lock();
        let Some(link) = links.get(region) else {
            return false;
        };
        link.control
            .try_send(LinkFrame {
                kind: Some(Kind::Interest(update)),
            })
            .is_ok()
    }

    /// Sends an interest update on every link.
    pub fn broadcast_interest(&self, update: &InterestUpdate) {
        for link in self.links.lock().values() {
            let _ = link.control.try_send(LinkFrame {
                kind: Some(Kind::Interest(update.clone())),
            });
        }
    }

    /// Queues a message for `region`, waiting for room (backpressure) while the link is up.
    pub async fn forward(&self, region: &str, forward: Forward) -> Result<(), LinkError> {
        let tx = self
            .links
            .lock()
            .get(region)
            .map(|l| l.data.clone())
            .ok_or_else(|| LinkError::NotConnected(region.to_owned()))?;
        tx.send(LinkFrame {
            kind: Some(Kind::Forward(forward)),
        })
        .await
        .map_err(|_| LinkError::NotConnected(region.to_owned()))
    }

    /// Queues a message for `region` without waiting: `false` when there is no link or
    /// its queue is full (the caller decides whether that is a drop or an error).
    pub fn try_forward(&self, region: &str, forward: Forward) -> bool {
        self.try_send_data(region, Kind::Forward(forward))
    }

    /// Queues a request or reply (or any data frame) for `region` without waiting.
    pub fn try_send_data(&self, region: &str, kind: Kind) -> bool {
        self.links
            .lock()
            .get(region)
            .is_some_and(|l| l.data.try_send(LinkFrame { kind: Some(kind) }).is_ok())
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
