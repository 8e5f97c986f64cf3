//! `Remote`: the router's view of everything beyond this region. The federation crate
//! implements it; the gateway only tells it about local interest changes and local
//! publishes, and hands it no other state. Messages arriving from other regions come back
//! through [`crate::router::Router::deliver_from_region`], which never forwards them again,
//! so a message crosses at most one region hop and cannot loop.

use crate::router::Delivery;

pub trait Remote: Send + Sync + 'static {
    /// `pattern` gained its first local subscription group (`present`) or lost its last.
    fn interest_changed(&self, pattern: &str, present: bool);
    /// A message published in this region, for the regions that want it.
    fn publish(&self, msg: &Delivery);
}
