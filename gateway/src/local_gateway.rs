//! `LocalGateway`: this gateway as federation sees it, the narrow interface from the
//! federation crate back into the gateway. It is the counterpart of [`crate::remote::Remote`]
//! (the gateway's view of everything beyond it): the router tells federation about local
//! interest and publishes through `Remote`, and federation hands messages, requests and
//! stream frames from other gateways back through this trait, and reads the policy the
//! control plane pushed. Federation holds an `Arc<dyn LocalGateway>`, never the concrete
//! [`Router`], so what it can do to the gateway is this list and nothing else: it cannot
//! subscribe, publish as a session, or reach into the subscription table.
//!
//! Messages handed in here are delivered to local subscribers only (never forwarded again),
//! which is what keeps every message to at most one region hop and one cluster hop.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use nexus_proto::v1::{self, Header, frame::Kind};
use prometheus_client::collector::Collector;
use tokio::sync::watch;

use crate::balancer::GroupCost;
use crate::config::SlowConsumerConfig;
use crate::policy::Policy;
use crate::remote::Remote;
use crate::router::{Delivery, RouteError, Router, Waiter};
use crate::streams::{self, StreamEnd, StreamRelay};
use crate::trace_store::{Hop, TraceStore, Traced};

/// What federation may ask of the gateway it runs in.
pub trait LocalGateway: Send + Sync + 'static {
    /// This gateway's id (unique in its region).
    fn gateway_id(&self) -> String;

    /// What to do when a receiver is full (applied to the cluster hop as to local
    /// subscribers).
    fn slow_consumer(&self) -> SlowConsumerConfig;

    /// The policy the control plane pushed last (routes, peers, keys).
    fn policy(&self) -> Arc<Policy>;

    /// The version of [`LocalGateway::policy`], cheap enough to read on every message (no
    /// reference count is taken).
    fn policy_version(&self) -> i64;

    /// Changes whenever a new policy is installed.
    fn watch_policy(&self) -> watch::Receiver<i64>;

    /// Adds federation's metrics to what the gateway's `/metrics` shows.
    fn attach_metrics(&self, collector: Box<dyn Collector>);

    /// Installs federation as the gateway's way beyond itself.
    fn set_remote(&self, remote: Arc<dyn Remote>);

    /// The gateway's store of traced messages' hops.
    fn traces(&self) -> &TraceStore;

    /// Delivers a message from another gateway (of this region or another) to local
    /// subscribers only: plain subscriptions if `plain`, and the queue groups named in
    /// `queue_groups`. Returns how many subscribers got it.
    fn deliver_from_region<'a>(
        &'a self,
        msg: Delivery,
        plain: bool,
        queue_groups: &'a [String],
    ) -> BoxFuture<'a, u32>;

    /// Routes a request from another gateway to a local responder, never onward.
    #[allow(clippy::too_many_arguments)]
    fn request_from_region<'a>(
        &'a self,
        waiter: Waiter,
        subject: &'a str,
        headers: Vec<Header>,
        payload: Bytes,
        id: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<u64, (Waiter, RouteError)>>;

    /// The queue groups on `subject` that have members here.
    fn local_queue_groups(&self, subject: &str) -> Vec<String>;

    /// What giving the next message of `queue` on `subject` to a member here would cost.
    fn local_queue_cost(&self, subject: &str, queue: &str) -> Option<GroupCost>;

    /// `peers` other gateways of the region have sessions of `key` (its limits' share).
    fn set_key_peers_active(&self, key: &str, peers: u32);

    /// `peers` other gateways of the region have not told which keys they have sessions of.
    fn set_key_unknown_peers(&self, peers: u32);

    /// A stream another gateway of the region opened, for a responder here.
    fn accept_stream_from_peer(&self, relay: Arc<dyn StreamRelay>, id: u64, open: v1::StreamOpen);

    /// A frame the other gateway sent for a stream with a side there.
    fn stream_from_peer<'a>(&'a self, end: &'a StreamEnd, kind: Kind) -> BoxFuture<'a, ()>;

    /// The gateway on `end`'s side became unreachable.
    fn stream_peer_gone(&self, end: &StreamEnd, reason: &str);
}

/// Records a hop of a traced message (`traced` is `Some` only for those); `hop` is built
/// only then.
pub fn trace_hop(gateway: &dyn LocalGateway, traced: Option<&Traced>, hop: impl FnOnce() -> Hop) {
    if let Some(t) = traced {
        gateway
            .traces()
            .record(t, crate::trace_store::now_us(), hop());
    }
}

impl LocalGateway for Router {
    fn gateway_id(&self) -> String {
        self.config().gateway_id.clone()
    }

    fn slow_consumer(&self) -> SlowConsumerConfig {
        self.config().slow_consumer.clone()
    }

    fn policy(&self) -> Arc<Policy> {
        Router::policy(self).clone()
    }

    fn policy_version(&self) -> i64 {
        Router::policy(self).version
    }

    fn watch_policy(&self) -> watch::Receiver<i64> {
        Router::watch_policy(self)
    }

    fn attach_metrics(&self, collector: Box<dyn Collector>) {
        self.metrics.attach(collector);
    }

    fn set_remote(&self, remote: Arc<dyn Remote>) {
        Router::set_remote(self, remote);
    }

    fn traces(&self) -> &TraceStore {
        &self.traces
    }

    fn deliver_from_region<'a>(
        &'a self,
        msg: Delivery,
        plain: bool,
        queue_groups: &'a [String],
    ) -> BoxFuture<'a, u32> {
        Box::pin(Router::deliver_from_region(self, msg, plain, queue_groups))
    }

    fn request_from_region<'a>(
        &'a self,
        waiter: Waiter,
        subject: &'a str,
        headers: Vec<Header>,
        payload: Bytes,
        id: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<u64, (Waiter, RouteError)>> {
        Box::pin(Router::request_from_region(
            self, waiter, subject, headers, payload, id, timeout,
        ))
    }

    fn local_queue_groups(&self, subject: &str) -> Vec<String> {
        Router::local_queue_groups(self, subject)
    }

    fn local_queue_cost(&self, subject: &str, queue: &str) -> Option<GroupCost> {
        Router::local_queue_cost(self, subject, queue)
    }

    fn set_key_peers_active(&self, key: &str, peers: u32) {
        Router::set_key_peers_active(self, key, peers);
    }

    fn set_key_unknown_peers(&self, peers: u32) {
        Router::set_key_unknown_peers(self, peers);
    }

    fn accept_stream_from_peer(&self, relay: Arc<dyn StreamRelay>, id: u64, open: v1::StreamOpen) {
        streams::accept_from_peer(self, relay, id, open);
    }

    fn stream_from_peer<'a>(&'a self, end: &'a StreamEnd, kind: Kind) -> BoxFuture<'a, ()> {
        Box::pin(streams::from_peer(self, end, kind))
    }

    fn stream_peer_gone(&self, end: &StreamEnd, reason: &str) {
        streams::peer_gone(self, end, reason);
    }
}
