//! The DNS responder adapters use to discover regional gateways.
//!
//! An authoritative-only server for one zone (e.g. `nexus.local`, any depth), answering
//! from a [`DiscoverySource`] on every query:
//!
//! - `_nexus._tcp.<region>.<zone>` SRV: one record per live gateway of the region
//!   (priority/weight from the endpoint, which [`load`] derives from the gateway's reported
//!   sessions and drain state; port = adapter port, target
//!   `<gateway_id>.gw.<region>.<zone>.`), with A/AAAA glue in the additional section;
//! - `_nexus-fed._udp.<region>.<zone>` SRV: the same for the federation address, only for
//!   gateways that have one. If a gateway's federation IP differs from its adapter IP the
//!   target is `<gateway_id>.fed.<region>.<zone>.` instead, because `<id>.gw` can carry only
//!   one address per family and that one is the adapter's;
//! - `<gateway_id>.gw.<region>.<zone>` A or AAAA: the gateway's adapter address;
//! - `_nexus-config.<zone>` TXT `version=<config_version>` (at the apex, not per region,
//!   because the config version is global);
//! - `<zone>` SOA, whose serial is the config version and whose minimum is the TTL.
//!
//! Every record carries the configured TTL ([`DEFAULT_TTL`] = 5 s). Names in the zone that
//! do not exist get NXDOMAIN with the SOA in the authority section (a region with no live
//! gateway does not exist); names outside the zone get REFUSED.
//!
//! Gateway ids are published as-is when they are DNS labels (`a-z0-9-`, ≤ 63 bytes) and
//! are otherwise mapped by [`sanitize_label`] (colliding results get `-2`, `-3`, ...).
//!
//! # Message size
//!
//! UDP answers are fitted to the client's limit — 512 bytes without EDNS, otherwise the
//! client's buffer capped at [`EDNS_UDP_PAYLOAD`] — and never set TC: SRV records are kept
//! best-first (lowest priority, then highest weight) and the rest are dropped with a
//! warning; glue is then added, best-first, as far as it fits (glue is optional data, so
//! omitting it does not call for TC, RFC 2181 §9). Fitting is checked by encoding with
//! hickory's own encoder, which needs room for each name in full before compressing it,
//! so the last record costs ~30 bytes more than its final size. Measured with zone
//! `nexus.local` and region `us-east`: 8 SRV records fit a plain 512-byte answer for
//! gateway ids of up to 11 bytes, which is why gateways generate `gw-<8 hex digits>` ids;
//! with longer configured ids a 512-byte client gets the best ones that fit, while EDNS
//! clients (dig, and hickory-resolver by default, both 1232 bytes) get all 8 with glue. TCP answers carry everything (up to
//! 64 KiB).
//!
//! # Robustness
//!
//! Malformed datagrams are answered with FORMERR or dropped by the hickory server layer,
//! and every UDP query runs in its own task, so neither a bad packet nor a slow query
//! stalls the others. [`DiscoverySource`] methods are called on the runtime for every
//! query: they must be cheap and non-blocking (read a snapshot).

pub mod load;
mod zone;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_server::Server;
use hickory_server::net::NetError;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::{Name, Record};
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};
use tracing::{debug, info, warn};

pub use zone::{CONFIG_LABEL, sanitize_label};
use zone::{Outcome, Zone};

/// The TTL to use when the operator configures none: short, because the answer tracks
/// gateway liveness and adapters should notice a dead gateway within seconds.
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);

/// The EDNS UDP payload size we advertise and never exceed: the DNS Flag Day 2020 value,
/// which avoids IP fragmentation on any common path.
pub const EDNS_UDP_PAYLOAD: u16 = 1232;

/// How long an idle TCP connection is kept open.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Responses queued per TCP connection before the writer pushes back.
const TCP_RESPONSE_BUFFER: usize = 32;

/// At most one "gateways dropped" warning per this many seconds, so that a region that
/// is always too big for 512 bytes does not log on every query.
const DROP_WARN_INTERVAL_SECS: u64 = 60;

/// One gateway as published in DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayEndpoint {
    /// The gateway's id; becomes the first label of its host name (see [`sanitize_label`]).
    pub gateway_id: String,
    /// The region it serves (informational: the region in the query name is what counts).
    pub region: String,
    /// Where adapters connect; published by `_nexus._tcp` SRV and `<id>.gw` A/AAAA.
    pub adapter_addr: SocketAddr,
    /// Where peer gateways federate, if it does; published by `_nexus-fed._udp` SRV.
    pub federation_addr: Option<SocketAddr>,
    /// SRV priority: lower is preferred.
    pub priority: u16,
    /// SRV weight among equal priorities: higher gets more traffic.
    pub weight: u16,
}

/// What the responder publishes. Called on every query: implementations must return
/// quickly without blocking (e.g. clone from an `ArcSwap` snapshot).
pub trait DiscoverySource: Send + Sync + 'static {
    /// The live gateways of `region` (the lowercased region label from the query). Empty
    /// means the region does not exist in DNS.
    fn endpoints(&self, region: &str) -> Vec<GatewayEndpoint>;
    /// The current config version, published in the `_nexus-config` TXT record.
    fn config_version(&self) -> u64;
}

/// Why the responder could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The zone name is not a valid, non-root domain name.
    #[error("invalid DNS zone {zone:?}: {reason}")]
    InvalidZone {
        /// The zone as given.
        zone: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TTL must be at least one second (whole seconds are used) and fit in an i32.
    #[error("invalid DNS TTL {0:?}: must be between 1 s and 2^31-1 s")]
    InvalidTtl(Duration),
    /// Reading a socket's local address failed.
    #[error("DNS socket: {0}")]
    Io(#[from] std::io::Error),
    /// A server task ended with an error during shutdown.
    #[error("DNS server: {0}")]
    Server(#[from] NetError),
}

/// Starts serving `zone` on `socket` (and on `tcp`, if given) until
/// [`DnsServer::shutdown`] is called or the handle is dropped.
///
/// The sockets must already be bound (port 0 is fine: see [`DnsServer::udp_addr`]). `ttl`
/// is used in whole seconds and must be at least 1 s; [`DEFAULT_TTL`] is the usual value.
/// Must be called within a Tokio runtime.
pub async fn serve(
    socket: UdpSocket,
    tcp: Option<TcpListener>,
    zone: String,
    source: Arc<dyn DiscoverySource>,
    ttl: Duration,
) -> Result<DnsServer, DnsError> {
    let zone = Zone::new(&zone, ttl)?;
    let udp_addr = socket.local_addr()?;
    let tcp_addr = tcp.as_ref().map(TcpListener::local_addr).transpose()?;
    info!(zone = %zone.origin(), %udp_addr, ?tcp_addr, ?ttl, "DNS responder serving");

    let mut server = Server::new(Responder {
        zone,
        source,
        last_drop_warning: AtomicU64::new(0),
    });
    server.register_socket(socket);
    if let Some(listener) = tcp {
        server.register_listener(listener, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
    }
    Ok(DnsServer {
        server,
        udp_addr,
        tcp_addr,
    })
}

/// A running responder. Dropping it stops the server tasks abruptly; prefer
/// [`DnsServer::shutdown`].
pub struct DnsServer {
    server: Server<Responder>,
    udp_addr: SocketAddr,
    tcp_addr: Option<SocketAddr>,
}

impl fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsServer")
            .field("udp_addr", &self.udp_addr)
            .field("tcp_addr", &self.tcp_addr)
            .finish_non_exhaustive()
    }
}

impl DnsServer {
    /// The UDP address being served.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp_addr
    }

    /// The TCP address being served, if a listener was given.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// Stops accepting queries and waits for the server tasks to end.
    pub async fn shutdown(mut self) -> Result<(), DnsError> {
        self.server.shutdown_gracefully().await?;
        Ok(())
    }
}

/// The request handler: validates the request, resolves the question, sizes and sends.
struct Responder {
    zone: Zone,
    source: Arc<dyn DiscoverySource>,
    /// Unix seconds of the last "gateways dropped" warning (rate limit).
    last_drop_warning: AtomicU64,
}

#[async_trait::async_trait]
impl RequestHandler for Responder {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        // Answer EDNS with EDNS (RFC 6891), advertising our own payload size.
        let mut edns = request.edns.as_ref().map(|req| {
            let mut e = Edns::new();
            e.set_max_payload(EDNS_UDP_PAYLOAD).set_version(0);
            (e, req.version())
        });
        let mut metadata = Metadata::response_from_request(&request.metadata);

        let rcode = if edns.as_ref().is_some_and(|(_, version)| *version > 0) {
            Some(ResponseCode::BADVERS)
        } else if request.metadata.op_code != OpCode::Query {
            Some(ResponseCode::NotImp)
        } else {
            None
        };
        let info = match (rcode, request.request_info()) {
            (Some(rcode), _) => Err(rcode),
            // Not exactly one question: nothing sensible to answer.
            (None, Err(_)) => Err(ResponseCode::FormErr),
            (None, Ok(info)) => Ok(info),
        };
        let info = match info {
            Ok(info) => info,
            Err(rcode) => {
                metadata.response_code = rcode;
                if let Some((e, _)) = edns.as_mut() {
                    // The upper 8 bits of extended codes (BADVERS) live in the OPT record.
                    e.set_rcode_high(rcode.high());
                }
                let edns = edns.as_ref().map(|(e, _)| e);
                return send(&mut response_handle, request, edns, metadata, &[], &[], &[]).await;
            }
        };
        let edns = edns.as_ref().map(|(e, _)| e);

        let query = info.query;
        let qname = Name::from(query.name());
        let outcome = self.zone.resolve(
            self.source.as_ref(),
            &qname,
            query.query_type(),
            query.query_class(),
        );
        debug!(%qname, qtype = %query.query_type(), ?outcome, "DNS query");

        let (answers, authority, glue) = match outcome {
            Outcome::Refused => {
                metadata.response_code = ResponseCode::Refused;
                (Vec::new(), Vec::new(), Vec::new())
            }
            Outcome::NxDomain | Outcome::NoData => {
                metadata.authoritative = true;
                if matches!(outcome, Outcome::NxDomain) {
                    metadata.response_code = ResponseCode::NXDomain;
                }
                let soa = vec![self.zone.soa(self.source.as_ref())];
                (Vec::new(), soa, Vec::new())
            }
            Outcome::Answer { answers, glue } => {
                metadata.authoritative = true;
                (answers, Vec::new(), glue)
            }
        };

        // The size the whole message must fit in; hickory would set TC past it.
        let limit = match request.protocol() {
            Protocol::Udp => request.max_payload().min(EDNS_UDP_PAYLOAD),
            _ => u16::MAX,
        };
        let fits = |n_answers: usize, n_glue: usize| {
            fits_in(
                limit,
                request,
                edns,
                metadata,
                &answers[..n_answers],
                &authority,
                &glue[..n_glue],
            )
        };
        let (n_answers, n_glue) = if fits(answers.len(), glue.len()) {
            (answers.len(), glue.len())
        } else {
            let n_answers = largest_fitting(answers.len(), |n| fits(n, 0));
            let n_glue = largest_fitting(glue.len().min(n_answers), |n| fits(n_answers, n));
            if n_answers < answers.len() {
                self.warn_dropped(&qname, answers.len(), n_answers, limit);
            }
            debug!(%qname, limit, n_answers, n_glue, "DNS answer trimmed to fit");
            (n_answers, n_glue)
        };

        send(
            &mut response_handle,
            request,
            edns,
            metadata,
            &answers[..n_answers],
            &authority,
            &glue[..n_glue],
        )
        .await
    }
}

impl Responder {
    fn warn_dropped(&self, qname: &Name, total: usize, kept: usize, limit: u16) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_drop_warning.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= DROP_WARN_INTERVAL_SECS
            && self
                .last_drop_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(
                %qname, total, kept, limit,
                "DNS answer too big for the client's UDP size: kept the best-priority gateways \
                 (clients can use EDNS or TCP to get all; further drops are logged at most once a minute)"
            );
        }
    }
}

/// The largest `n` in `0..=max` with `fits(n)`, for `fits` monotone (true then false).
fn largest_fitting(max: usize, fits: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, max);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid) { lo = mid } else { hi = mid - 1 }
    }
    lo
}

/// Whether the response fits in `limit` bytes without truncation, checked by encoding
/// it exactly as hickory will (same encoder, same size limit). Measuring the compressed
/// length is not enough: the encoder writes each name in full before replacing it with a
/// compression pointer, so a record can overflow the limit mid-write even though its
/// final form would fit, and hickory then sets TC.
fn fits_in(
    limit: u16,
    request: &Request,
    edns: Option<&Edns>,
    metadata: Metadata,
    answers: &[Record],
    authority: &[Record],
    additionals: &[Record],
) -> bool {
    let mut buf = Vec::with_capacity(usize::from(limit).min(4096));
    let mut encoder = BinEncoder::new(&mut buf);
    encoder.set_max_size(limit);
    let emitted = MessageResponseBuilder::new(&request.queries, edns)
        .build(metadata, answers, authority, &[], additionals)
        .destructive_emit(&mut encoder);
    matches!(emitted, Ok(info) if !info.truncation)
}

async fn send<R: ResponseHandler>(
    handle: &mut R,
    request: &Request,
    edns: Option<&Edns>,
    metadata: Metadata,
    answers: &[Record],
    authority: &[Record],
    additionals: &[Record],
) -> ResponseInfo {
    let response = MessageResponseBuilder::new(&request.queries, edns).build(
        metadata,
        answers,
        authority,
        &[],
        additionals,
    );
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            warn!(%error, src = %request.src(), "failed to send DNS response");
            let mut metadata = metadata;
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        }
    }
}
