//! `Remote`: the router's view of everything beyond this region. The federation crate
//! implements it; the gateway only tells it about local interest changes and local
//! publishes, and hands it no other state. Messages arriving from other regions come back
//! through [`crate::router::Router::deliver_from_region`], which never forwards them again,
//! so a message crosses at most one region hop and cannot loop.

use std::time::Duration;

use bytes::Bytes;
use nexus_proto::v1::{self, Header};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::router::{Delivery, ReplyResult};

/// Resolves when a publish's cross-region contract is met: written to the durable spool
/// (`async`) or persisted by enough regions (`sync`); an error says why it was not.
pub type PublishReceipt = oneshot::Receiver<Result<(), v1::Error>>;

pub trait Remote: Send + Sync + 'static {
    /// A local subscription group appeared (`present`) or went away: plain subscriptions
    /// to `pattern` (`queue` is `None`), or the queue group `queue` on `pattern`.
    fn interest_changed(&self, pattern: &str, queue: Option<&str>, present: bool);
    /// A message published in this region, for the regions that want it; `local_interest`
    /// says whether a local subscription matched it. `None` when nothing needs waiting for
    /// before the publisher is acknowledged.
    fn publish(&self, msg: &Delivery, local_interest: bool) -> Option<PublishReceipt>;
    /// A request no local responder could take: sends it to the region the subject's route
    /// chooses, if any. The answer (or an error) arrives on the returned channel within
    /// `timeout`.
    fn request(
        &self,
        subject: &str,
        headers: Vec<Header>,
        payload: Bytes,
        timeout: Duration,
    ) -> Option<oneshot::Receiver<ReplyResult>>;
    /// Whether requests on `subject` should go to another region even when this region has
    /// responders (a route pinned to, or weighted towards, other regions).
    fn prefers_remote_responders(&self, subject: &str) -> bool {
        let _ = subject;
        false
    }
    /// Federation links, for `/v1/status`.
    fn links(&self) -> Vec<LinkStatus> {
        Vec::new()
    }
    /// Spooled (`async` / `sync`) replication per route and region, for `/v1/status`.
    fn spools(&self) -> Vec<SpoolStatus> {
        Vec::new()
    }
    /// Where a message on `subject` published here would go now, and why.
    fn explain(&self, subject: &str, local_interest: bool) -> serde_json::Value {
        let _ = (subject, local_interest);
        serde_json::Value::Null
    }
}

/// One federation link as the status endpoint shows it.
#[derive(Clone, Debug, Serialize)]
pub struct LinkStatus {
    pub region: String,
    /// `up` or `down`.
    pub state: &'static str,
    pub rtt_ms: Option<f64>,
    pub forwarded: u64,
    pub dropped: u64,
    pub received: u64,
}

/// Replication state of one route towards one region.
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
