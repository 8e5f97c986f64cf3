//! `Remote`: the router's view of everything beyond this region. The federation crate
//! implements it; the gateway only tells it about local interest changes and local
//! publishes, and hands it no other state. Messages arriving from other regions come back
//! through [`crate::router::Router::deliver_from_region`], which never forwards them again,
//! so a message crosses at most one region hop and cannot loop.

use std::time::Duration;

use bytes::Bytes;
use nexus_proto::v1::Header;
use tokio::sync::oneshot;

use crate::router::{Delivery, ReplyResult};

pub trait Remote: Send + Sync + 'static {
    /// `pattern` gained its first local subscription group (`present`) or lost its last.
    fn interest_changed(&self, pattern: &str, present: bool);
    /// A message published in this region, for the regions that want it.
    fn publish(&self, msg: &Delivery);
    /// A request no local responder could take: sends it to the nearest region that has
    /// responders, if any. The answer (or an error) arrives on the returned channel within
    /// `timeout`.
    fn request(
        &self,
        subject: &str,
        headers: Vec<Header>,
        payload: Bytes,
        timeout: Duration,
    ) -> Option<oneshot::Receiver<ReplyResult>>;
}
