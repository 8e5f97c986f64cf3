//! `Remote`: the router's view of everything beyond this region. The federation crate
//! implements it; the gateway only tells it about local interest changes and local
//! publishes, and hands it no other state. Messages arriving from other regions come back
//! through [`crate::router::Router::deliver_from_region`], which never forwards them again,
//! so a message crosses at most one region hop and cannot loop.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nexus_proto::v1::{self, Header};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::balancer::GroupCost;
use crate::router::{MessageRef, ReplyResult};
use crate::streams::StreamRelay;

/// Resolves when a publish's cross-region contract is met: written to the durable spool
/// (`async`) or persisted by enough regions (`sync`); an error says why it was not.
pub type PublishReceipt = oneshot::Receiver<Result<(), v1::Error>>;

/// What federation did with a message published in this region.
#[derive(Debug, Default)]
pub struct PublishOutcome {
    /// Regions it was queued for, best effort.
    pub forwarded: Vec<String>,
    /// Regions it was written to the replication spool for (`async` / `sync` routes).
    pub spooled: Vec<String>,
    /// Resolves when a spooled route's contract is met; `None` when there is nothing to wait
    /// for before the publisher is acknowledged.
    pub receipt: Option<PublishReceipt>,
    /// On `async` and `sync` routes: resolves when the message (and its id) is on disk at
    /// this gateway. Local subscribers get it only then, so that a publisher retrying after
    /// a crash in between cannot deliver it twice; an error means it was not stored and is
    /// delivered nowhere. `None`: deliver at once.
    pub stored: Option<PublishReceipt>,
    /// The message id was accepted before, within the deduplication window of an `async` or
    /// `sync` route: the message must not be delivered again, locally or anywhere else. The
    /// receipt, if any, resolves with the first attempt's outcome.
    pub duplicate: bool,
    /// Local queue groups whose message a cluster peer takes instead (its members were
    /// cheaper, hop included): delivered to no local member of those groups.
    pub taken_groups: Vec<String>,
    /// Copies for other gateways of the region whose cluster link had no room: under the
    /// `backpressure` slow-consumer policy the publisher awaits this (at most
    /// `slow_consumer.max_wait_ms`) after its local deliveries, as it waits for a full local
    /// subscriber; what still finds no room is dropped and counted.
    pub backlog: Option<Backlog>,
}

/// Work a publisher waits for before its next publish (see [`PublishOutcome::backlog`]).
pub struct Backlog(pub std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>);

impl std::fmt::Debug for Backlog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Backlog")
    }
}

pub trait Remote: Send + Sync + 'static {
    /// A local subscription group appeared (`present`) or went away: plain subscriptions
    /// to `pattern` (`queue` is `None`), or the queue group `queue` on `pattern`.
    fn interest_changed(&self, pattern: &str, queue: Option<&str>, present: bool);
    /// API key `key_id` got its first authenticated session on this gateway (`present`) or
    /// lost its last: the region's other gateways divide the key's rate limits by where it
    /// has sessions.
    fn key_active_changed(&self, key_id: &str, present: bool) {
        let _ = (key_id, present);
    }
    /// A message published in this region, for the regions that want it; `local_interest`
    /// says whether a local subscription matched it. Called before local delivery, so that a
    /// duplicate (see [`PublishOutcome::duplicate`]) is delivered nowhere.
    fn publish(&self, msg: &MessageRef<'_>, local_interest: bool) -> PublishOutcome;
    /// A request on `subject` this gateway may not serve itself: sends it to another
    /// gateway of this region or to another region, and returns the channel its answer (or
    /// an error) arrives on within `timeout`. `local` is what this gateway's own chosen
    /// responder costs: with one, the request leaves only when a gateway of this region is
    /// cheaper, the hop included (never for another region); without, it goes to a gateway
    /// of the region with a responder, else to the region the subject's route picks. When
    /// nothing takes it, the message is handed back. `id` is the request's message id.
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn request(
        &self,
        subject: &str,
        id: &Bytes,
        headers: Vec<Header>,
        payload: Bytes,
        timeout: Duration,
        local: Option<GroupCost>,
    ) -> Result<oneshot::Receiver<ReplyResult>, (Vec<Header>, Bytes)>;
    /// Whether requests on `subject` should go to another region even when this region has
    /// responders (a route pinned to, or weighted towards, other regions).
    fn prefers_remote_responders(&self, subject: &str) -> bool {
        let _ = subject;
        false
    }
    /// A stream on `subject` that no responder of this gateway can take: the relay to the
    /// gateway of this region that has one, and the id the stream gets on it; `None` when
    /// no gateway of the region has one.
    fn stream_peer(&self, subject: &str) -> Option<(Arc<dyn StreamRelay>, u64)> {
        let _ = subject;
        None
    }
    /// Federation links, for `/v1/status`.
    fn links(&self) -> Vec<LinkStatus> {
        Vec::new()
    }
    /// Links to the other gateways of this region, for `/v1/status`.
    fn cluster(&self) -> Vec<ClusterPeerStatus> {
        Vec::new()
    }
    /// Spooled (`async` / `sync`) replication per route and region, for `/v1/status`.
    fn spools(&self) -> Vec<SpoolStatus> {
        Vec::new()
    }
    /// Spool replicas (`--spool-replicas 2`): which gateway keeps this gateway's copies, and
    /// whose copies are kept here, for `/v1/status`.
    fn replicas(&self) -> Option<ReplicaStatus> {
        None
    }
    /// Where a message on `subject` published here would go now, and why.
    fn explain(&self, subject: &str, local_interest: bool) -> serde_json::Value {
        let _ = (subject, local_interest);
        serde_json::Value::Null
    }
}

/// One federation link as the status endpoint shows it. Best-effort accounting adds up:
/// every message accepted for the region is `confirmed` by it, still `unconfirmed` (queued
/// or in flight on the current link), or `dropped` with a reason (`link_down`: no link when
/// it was published; `queue_full`: the link was overloaded; `link_lost`: queued or in flight
/// on a link that ended before the region confirmed it).
#[derive(Clone, Debug, Serialize)]
pub struct LinkStatus {
    pub region: String,
    /// `up` or `down`.
    pub state: &'static str,
    /// The gateway of that region this gateway's traffic goes through (its home there).
    pub via: Option<String>,
    pub rtt_ms: Option<f64>,
    /// How long the peer may stay silent before the link is declared dead.
    pub dead_after_ms: Option<f64>,
    /// Best-effort messages queued on the region's link.
    pub forwarded: u64,
    /// Of those, confirmed received by the region.
    pub confirmed: u64,
    /// Queued or in flight on the current link, not yet confirmed.
    pub unconfirmed: u64,
    /// Best-effort messages for the region that did not reach it, all reasons.
    pub dropped: u64,
    pub dropped_by_reason: std::collections::BTreeMap<&'static str, u64>,
    /// Messages received from the region.
    pub received: u64,
}

/// A link to another gateway of this region, as the status endpoint shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterPeerStatus {
    pub gateway_id: String,
    pub rtt_ms: f64,
    /// Best-effort messages queued on the link, confirmed by the peer, and received from it.
    pub forwarded: u64,
    pub confirmed: u64,
    pub received: u64,
}

/// Spool replicas of this gateway, for `/v1/status`.
#[derive(Clone, Debug, Serialize)]
pub struct ReplicaStatus {
    /// How many gateways hold each spooled message before it is acknowledged (1 or 2).
    pub copies: usize,
    /// The gateway keeping this gateway's copies now, if any.
    pub replica: Option<String>,
    /// Other gateways' spools kept here.
    pub held: Vec<HeldSpoolStatus>,
}

/// Copies of one other gateway's spool kept here.
#[derive(Clone, Debug, Serialize)]
pub struct HeldSpoolStatus {
    pub origin: String,
    pub stream: String,
    pub messages: u64,
    /// Whether this gateway sends them (the origin has been unreachable for the takeover
    /// delay).
    pub taking_over: bool,
}

/// Spooled replication of one route towards one region, for `/v1/status`.
#[derive(Clone, Debug, Serialize)]
pub struct SpoolStatus {
    pub route: String,
    pub region: String,
    /// `async` or `sync`.
    pub consistency: &'static str,
    /// Messages written to the spool and not yet acknowledged by the region.
    pub spool_depth: u64,
    /// Age of the oldest unacknowledged message; `None` when the spool is empty.
    pub replication_lag_ms: Option<f64>,
}
