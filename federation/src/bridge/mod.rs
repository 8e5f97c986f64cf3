//! `RegionRouter`: joins a gateway's router to its federation links. It advertises local
//! interest to every linked region, keeps what the others advertise, applies the subject's
//! route (policy and consistency mode, see [`crate::routes`]) to each local publish and to
//! requests no local responder could take, and hands messages from other regions to the
//! local router. It is the links' [`LinkHandler`] and the gateway's [`Remote`].
//!
//! - [`cluster`]: the region's other gateways: their interest, what this gateway advertises,
//!   who gets a message inside the region (one hop).
//! - [`plan`]: which regions a message or request goes to.
//! - [`replication`]: `async` / `sync` routes through the durable spool (the shell around
//!   [`crate::replication`]).
//! - [`remote_requests`]: requests across regions and to the region's other gateways.
//! - [`cluster_streams`]: streams whose two sides are on two gateways of the region.
//! - [`status`]: links, spools and `explain` for operators.
//!
//! Consistency modes: `local` never leaves the region; `best_effort` is queued on the link if
//! it is up and has room, else dropped and counted (and confirmed by the region, or counted
//! lost with its link); `async` / `sync` go through the spool.

mod cluster;
mod cluster_streams;
mod plan;
mod remote_requests;
pub mod replication;
mod status;
mod trace_hops;

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures::future::BoxFuture;
use nexus_gateway::balancer::GroupCost;
use nexus_gateway::config::SlowConsumerPolicy;
use nexus_gateway::local_gateway::{LocalGateway, trace_hop};
use nexus_gateway::remote::{Backlog, LinkStatus, PublishOutcome, Remote, SpoolStatus};
use nexus_gateway::router::{Delivery, ReplyResult};
use nexus_proto::v1::{self, Forward, Header, InterestUpdate, link_frame::Kind};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::cluster::balance::Taker;
use crate::cluster::key_activity::{KeyActivity, ShareChange};
use crate::cluster::membership::Member;
use crate::interest::{RemoteInterest, interest_key};
use crate::link::{Federation, LinkHandler, LinkInfo, LinkKind};
use crate::metrics::{FederationMetrics, Outcome};
use crate::replication::dedup::Seen;
use crate::routes::{Damping, Mode, RouteTable, Traffic};
use cluster::Cluster;
use remote_requests::{RemoteRequests, Via};
use replication::Replication;
pub use replication::SpoolConfig;

pub struct RegionRouter {
    me: Weak<RegionRouter>,
    fed: Arc<Federation>,
    metrics: Arc<FederationMetrics>,
    gateway: Arc<dyn LocalGateway>,
    /// The other gateways of this region, and the interest this gateway advertises.
    cluster: Cluster,
    /// What other regions want; read on every publish without a lock, replaced whole on each
    /// interest update.
    remote: ArcSwap<RemoteInterest>,
    requests: RemoteRequests,
    /// Streams with a side on another gateway of the region.
    streams: Arc<cluster_streams::ClusterStreams>,
    /// The route table and the config version it was built from.
    routes: ArcSwap<(i64, Arc<RouteTable>)>,
    damping: Mutex<Damping>,
    replication: Arc<Replication>,
    /// The registered peers last handed to the links.
    peers_seen: Mutex<Vec<v1::FederationPeer>>,
    /// Which API keys have sessions here and on each cluster peer (the split of the keys'
    /// rate limits).
    keys: Mutex<KeyActivity>,
}

fn now_ms() -> i64 {
    nexus_gateway::policy_now_ms()
}

impl RegionRouter {
    /// Connects `router` to `fed`: opens (or recovers) the spool, attaches federation's
    /// metrics to the gateway's, starts the links (this is their handler) and the spool pump.
    pub fn start(
        gateway: Arc<dyn LocalGateway>,
        fed: Arc<Federation>,
        spool: SpoolConfig,
    ) -> Result<Arc<Self>, crate::replication::store::StoreError> {
        let metrics = fed.metrics().clone();
        let (replication, stored_interest) =
            Replication::open(&spool, &gateway.gateway_id(), metrics.clone())?;
        let mut remote = RemoteInterest::default();
        for (region, patterns) in &stored_interest {
            let update = InterestUpdate {
                full: true,
                add: patterns.clone(),
                remove: Vec::new(),
            };
            remote.apply(region, &update);
        }
        gateway.attach_metrics(Box::new(metrics.clone()));
        let bridge = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            fed: fed.clone(),
            metrics,
            gateway: gateway.clone(),
            cluster: Cluster::default(),
            keys: Mutex::new(KeyActivity::default()),
            remote: ArcSwap::from_pointee(remote),
            requests: RemoteRequests::default(),
            streams: cluster_streams::ClusterStreams::new(fed.clone(), gateway.clone()),
            routes: ArcSwap::from_pointee((-1, Arc::new(RouteTable::new(&[])))),
            damping: Mutex::new(Damping::default()),
            replication: Arc::new(replication),
            peers_seen: Mutex::new(Vec::new()),
        });
        gateway.set_remote(bridge.clone());
        fed.start(bridge.clone());
        // The peers to link to, and who may not have told its keys, follow the control
        // plane's pushes as they are installed (no polling).
        let mut pushes = gateway.watch_policy();
        let follower = Arc::downgrade(&bridge);
        tokio::spawn(async move {
            loop {
                match follower.upgrade() {
                    Some(b) => {
                        b.follow_peers();
                        b.count_unknown_key_peers();
                    }
                    None => return,
                }
                if pushes.changed().await.is_err() {
                    return;
                }
            }
        });
        let b = bridge.clone();
        tokio::spawn(
            bridge
                .replication
                .clone()
                .pump(fed, gateway.clone(), move || b.forget_absent_peers()),
        );
        Ok(bridge)
    }

    /// The route table, rebuilt when the control plane's config changes.
    fn route_table(&self) -> Arc<RouteTable> {
        let cached = self.routes.load();
        if cached.0 == self.gateway.policy_version() {
            return cached.1.clone();
        }
        let policy = self.gateway.policy();
        let table = Arc::new(RouteTable::new(&policy.routes));
        self.routes.store(Arc::new((policy.version, table.clone())));
        table
    }

    /// Cluster peers absent (link down) for the grace period are gone: their interest leaves
    /// the region's, and relays stop waiting for them (counted, and logged with how many they
    /// had not confirmed).
    fn forget_absent_peers(&self) {
        for gateway in self
            .cluster
            .absent_for(now_ms(), self.replication.relay_grace_ms())
        {
            let update = self.cluster.peer_gone(&gateway);
            self.tell_regions(update);
            let shares = self.keys.lock().peer_gone(&gateway);
            self.apply_key_shares(shares);
            self.requests.gateways.lock().forget(&gateway);
            self.replication.peer_gone(&self.fed, &gateway);
        }
        for peer in self.fed.cluster_peers() {
            self.replication.reask(&self.fed, &peer.gateway_id);
        }
    }

    /// Keeps links to the peers the control plane pushed with the config, when they change.
    fn follow_peers(&self) {
        let policy = self.gateway.policy();
        let mut seen = self.peers_seen.lock();
        if *seen == policy.peers {
            return;
        }
        *seen = policy.peers.clone();
        let members = policy
            .peers
            .iter()
            .map(|p| Member {
                gateway_id: p.gateway_id.clone(),
                region: p.region.clone(),
                addr: p.addr.clone(),
            })
            .collect();
        drop(seen);
        self.fed.follow_membership(members);
    }

    fn on_interest(&self, region: &str, update: InterestUpdate) {
        let mut remote = RemoteInterest::clone(&self.remote.load());
        let rejected = remote.apply(region, &update);
        let patterns = remote.patterns(region);
        self.remote.store(Arc::new(remote));
        if !rejected.is_empty() {
            tracing::warn!(%region, ?rejected, "peer advertised invalid patterns");
        }
        // Remembered across restarts, so async routes keep spooling for a region that is
        // unreachable when this gateway starts.
        self.replication.store_interest(region.to_owned(), patterns);
    }

    /// A best-effort message from `link`: delivered here, and when it came from another
    /// region, relayed to the cluster peers that want it (one hop, never further).
    async fn on_forward(&self, link: &LinkInfo, forward: Forward) {
        self.metrics.outcome(Outcome::Received);
        self.trace_arrived(link, &forward, "forwarded");
        let (plain, mut groups) = (!forward.skip_plain, forward.queue_groups.clone());
        let Some(mut msg) = delivery(&link.region, forward) else {
            return;
        };
        if link.region != self.fed.region() {
            msg.traced = self.gateway.traces().sampled(&msg.id, &msg.headers);
            let traced = self.traced(&msg);
            let (targets, taken) = self.peer_targets(&msg.subject, plain, Some(&groups));
            for t in targets {
                let queued = self
                    .fed
                    .try_forward_to(&t.gateway_id, t.forward(&msg, &link.region));
                self.trace_to_peer(traced.as_ref(), &t.gateway_id, queued);
            }
            groups.retain(|g| !taken.contains(g));
        }
        self.gateway.deliver_from_region(msg, plain, &groups).await;
    }

    /// The cluster peers a message on `subject` goes on to: plain subscribers (when `plain`),
    /// and each queue group (those in `groups`, or all) at the gateway the gateway balancer
    /// picks. Also returns the local groups a peer takes instead.
    fn peer_targets(
        &self,
        subject: &str,
        plain: bool,
        groups: Option<&[String]>,
    ) -> (Vec<cluster::PeerTarget>, Vec<String>) {
        let (targets, taken) = self.cluster.targets(
            subject,
            plain,
            groups,
            |group| self.gateway.local_queue_cost(subject, group),
            |gw| self.fed.rtt_to(gw),
            &mut rand::rng(),
        );
        if !taken.is_empty() {
            self.metrics
                .queue_messages_to_peers
                .inc_by(taken.len() as u64);
        }
        (targets, taken)
    }

    /// Which gateway of the region takes a request on `subject`: this one (its chosen
    /// responder costs `local`) or a cluster peer with a responder; `None` when neither has
    /// one.
    fn pick_gateway(&self, subject: &str, local: Option<GroupCost>) -> Option<Taker> {
        let peers = self.cluster.responders(subject, |gw| self.fed.rtt_to(gw));
        if peers.is_empty() {
            return local.map(|_| Taker::Local);
        }
        self.requests.gateways.lock().pick_for_request(
            Instant::now(),
            &mut rand::rng(),
            subject,
            local,
            &peers,
        )
    }

    /// Whether this gateway sees the message id of `spooled` for the first time, whichever
    /// gateway's stream brought it (a publisher's retry on another gateway of its region can
    /// make two origins send one message; `dedup::Dedup::received`).
    fn first_sight(&self, spooled: &nexus_proto::v1::Spooled) -> bool {
        spooled
            .forward
            .as_ref()
            .is_none_or(|f| self.replication.first_sight(&f.id))
    }

    /// A spooled message relayed by a cluster peer (the home of its stream in this region):
    /// delivered here unless this gateway has it already.
    async fn on_relayed_spooled(&self, link: &LinkInfo, spooled: nexus_proto::v1::Spooled) {
        let stream = crate::replication::StreamId::from(spooled.stream.as_str());
        if self.cluster.first_delivery(&stream, spooled.seq) && self.first_sight(&spooled) {
            if let Some(forward) = spooled.forward {
                self.trace_arrived(link, &forward, "spooled, relayed by the stream's home");
                let (plain, groups) = (!forward.skip_plain, forward.queue_groups.clone());
                if let Some(msg) = delivery(&link.region, forward) {
                    self.gateway.deliver_from_region(msg, plain, &groups).await;
                }
            }
        } else {
            self.metrics.outcome(Outcome::Duplicate);
        }
        // The home confirms the stream to its origin only once every gateway it relayed to
        // has the message.
        self.fed.try_send_control_to(
            &link.gateway_id,
            Kind::SpoolAck(nexus_proto::v1::SpoolAck {
                up_to: spooled.seq,
                stream: spooled.stream,
            }),
        );
    }

    /// Serves a request that came over `link`: with local responders, and when it came from
    /// another region and none is here, through the nearest cluster peer that has one.
    async fn serve(self: Arc<Self>, link: LinkInfo, request: nexus_proto::v1::RemoteRequest) {
        let from_region = link.region != self.fed.region();
        let traced = self.trace_request_arrived(&link, &request);
        let mut reply = remote_requests::serve(&*self.gateway, request.clone()).await;
        let no_responders = reply
            .error
            .as_ref()
            .is_some_and(|e| e.code == nexus_proto::v1::ErrorCode::NoResponders as i32);
        if from_region
            && no_responders
            && let Some(Taker::Peer(peer)) = self.pick_gateway(&request.subject, None)
            && let Ok(rx) = self.requests.send(
                &self.fed,
                Via::Gateway(peer.clone()),
                &request.subject,
                &request.message_id,
                request.headers,
                request.payload,
                Duration::from_millis(u64::from(request.deadline_ms.max(1))),
            )
        {
            self.trace_request_sent(traced.as_ref(), &peer, None, false);
            let result = rx.await.unwrap_or_else(|_| {
                Err(nexus_gateway::router::error(
                    nexus_proto::v1::ErrorCode::ServiceError,
                    "request was dropped",
                    0,
                ))
            });
            reply = match result {
                Ok((headers, payload)) => nexus_proto::v1::RemoteReply {
                    id: request.id,
                    headers,
                    payload,
                    error: None,
                },
                Err(e) => nexus_proto::v1::RemoteReply {
                    id: request.id,
                    headers: Vec::new(),
                    payload: Bytes::new(),
                    error: Some(e),
                },
            };
        }
        if self
            .fed
            .try_send_data_to(&link.gateway_id, Kind::Reply(reply))
            .is_none()
        {
            tracing::warn!(peer = %link.gateway_id, "could not send a reply back over the link");
        }
    }

    /// The spool queue that confirmations and resend requests on `link` are about.
    fn destination(&self, link: &LinkInfo) -> String {
        if link.region == self.fed.region() {
            replication::peer_key(&link.gateway_id)
        } else {
            link.region.clone()
        }
    }

    /// Sends a message published here to the region's other gateways that want it (one hop,
    /// best effort). Under the `backpressure` slow-consumer policy a copy whose cluster link
    /// is full comes back as work the publisher waits for (at most `max_wait_ms`), so a
    /// subscriber on another gateway loses nothing a local one would not; under `drop` and
    /// `disconnect` it is dropped at once (counted as `queue_full`).
    /// A traced message records each hop as queued (or waited for) or not.
    fn forward_in_region(
        &self,
        in_region: Vec<(String, v1::Forward)>,
        traced: Option<&nexus_gateway::trace_store::Traced>,
    ) -> Option<Backlog> {
        if in_region.is_empty() {
            return None;
        }
        let slow = self.gateway.slow_consumer();
        if slow.policy != SlowConsumerPolicy::Backpressure {
            for (gateway, forward) in in_region {
                let queued = self.fed.try_forward_to(&gateway, forward);
                self.trace_to_peer(traced, &gateway, queued);
            }
            return None;
        }
        let mut backlog = Vec::new();
        for (gateway, forward) in in_region {
            let offered = self.fed.forward_to_or_backlog(&gateway, forward);
            self.trace_to_peer(traced, &gateway, offered.is_ok());
            if let Ok(Some(b)) = offered {
                backlog.push(b);
            }
        }
        if backlog.is_empty() {
            return None;
        }
        self.metrics
            .cluster_forwards_waited
            .inc_by(backlog.len() as u64);
        let max = Duration::from_millis(slow.max_wait_ms);
        Some(Backlog(Box::pin(async move {
            futures::future::join_all(backlog.into_iter().map(|b| b.wait(max))).await;
        })))
    }

    /// Divides each changed key's rate limits among the gateways of the region where it has
    /// sessions now.
    fn apply_key_shares(&self, shares: Vec<ShareChange>) {
        for (key, peers) in shares {
            self.gateway.set_key_peers_active(&key, peers);
        }
        self.count_unknown_key_peers();
    }

    /// The region's other gateways in the control plane's push that have not told their
    /// keys (not linked yet, or gone) count as having sessions of every key.
    fn count_unknown_key_peers(&self) {
        let policy = self.gateway.policy();
        let (region, me) = (self.fed.region(), self.fed.gateway_id());
        let listed: Vec<&str> = policy
            .peers
            .iter()
            .filter(|p| p.region == region && p.gateway_id != me)
            .map(|p| p.gateway_id.as_str())
            .collect();
        let unknown = self.keys.lock().unknown(&listed);
        self.gateway.set_key_unknown_peers(unknown);
    }

    /// Sends an interest change to other regions.
    fn tell_regions(&self, update: Option<InterestUpdate>) {
        if let Some(update) = update {
            self.fed.broadcast_interest(LinkKind::Federation, &update);
        }
    }
}

impl LinkHandler for RegionRouter {
    fn up(&self, link: &LinkInfo) {
        // A new or returning peer: tell it everything we want (our own subscriptions to a
        // cluster peer, the region's to another region), confirm again what we recorded from
        // it, and let the pump resend what it has not confirmed.
        let cluster_link = link.region == self.fed.region();
        let full = if cluster_link {
            self.cluster.local_full()
        } else {
            self.cluster.region_full()
        };
        self.fed
            .try_send_control_to(&link.gateway_id, Kind::Interest(full));
        if cluster_link {
            let keys = self.keys.lock().local_full();
            self.fed
                .try_send_control_to(&link.gateway_id, Kind::KeyActivity(keys));
            // Back within the grace period: the relays it missed go out again.
            self.cluster.peer_present(&link.gateway_id);
            self.replication.peer_back(&self.fed, &link.gateway_id);
        } else {
            self.replication.link_up(&self.fed, link);
        }
    }

    fn down(&self, link: &LinkInfo, reason: &str) {
        self.requests.link_down(link, reason);
        if link.region == self.fed.region() {
            // Frames queued on the link that ended are gone: its streams end with an error
            // rather than miss data silently.
            self.streams.peer_down(&link.gateway_id, reason);
        }
        if link.region == self.fed.region() && self.fed.link_to(&link.gateway_id).is_none() {
            // The peer may only be cut off: its interest is kept and the relays it has not
            // confirmed stay owed until it returns, or until the grace period ends and it
            // counts as gone ([`RegionRouter::forget_absent_peers`]).
            self.cluster.peer_absent(&link.gateway_id, now_ms());
            self.replication.peer_cut(&link.gateway_id);
        }
        // Another region's interest is kept: best-effort messages it would have received are
        // counted as dropped, spooled ones wait for it.
        self.replication.wake();
    }

    fn control(&self, link: &LinkInfo, frame: Kind) {
        match frame {
            Kind::Interest(update) if link.region == self.fed.region() => {
                let (rejected, for_regions) = self.cluster.peer_update(&link.gateway_id, &update);
                if !rejected.is_empty() {
                    tracing::warn!(peer = %link.gateway_id, ?rejected, "cluster peer advertised invalid patterns");
                }
                self.tell_regions(for_regions);
            }
            Kind::Interest(update) => self.on_interest(&link.region, update),
            Kind::KeyActivity(update) if link.region == self.fed.region() => {
                let shares = self.keys.lock().peer_update(&link.gateway_id, &update);
                self.apply_key_shares(shares);
            }
            Kind::ReplicaAck(ack) if link.region == self.fed.region() => {
                self.replication.on_replica_ack(&link.gateway_id, ack)
            }
            // From a cluster peer: a confirmation of this gateway's own durable publishes (or
            // of a stream it sends as a replica), or of relays of another region's stream.
            Kind::SpoolAck(ack)
                if link.region == self.fed.region()
                    && !self.replication.is_own_stream(&ack.stream)
                    && !self.replication.is_held_stream(&ack.stream) =>
            {
                self.replication.relay_confirmed(
                    &self.fed,
                    &link.gateway_id,
                    &ack.stream,
                    ack.up_to,
                )
            }
            Kind::SpoolAck(ack) => self.replication.on_ack(&self.destination(link), ack),
            Kind::SpoolNack(nack) => self
                .replication
                .on_nack(&self.destination(link), link, nack),
            _ => {}
        }
    }

    fn data<'a>(&'a self, link: &'a LinkInfo, frame: Kind) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let from_cluster = link.region == self.fed.region();
            match frame {
                Kind::Forward(forward) => self.on_forward(link, forward).await,
                Kind::Stream(frame) if from_cluster => {
                    self.streams.on_frame(&link.gateway_id, frame)
                }
                Kind::Stream(_) => {
                    tracing::warn!(peer = %link.gateway_id, region = %link.region, "a gateway of another region sent a stream frame; streams run inside a region only, ignored")
                }
                // Copies of a cluster peer's spool, kept here as its replica.
                Kind::ReplicaAppend(copies) if from_cluster => {
                    self.replication.on_replica_append(&self.fed, link, copies)
                }
                Kind::ReplicaAppend(_) => {
                    tracing::warn!(peer = %link.gateway_id, region = %link.region, "a gateway of another region sent spool copies; only gateways of this region keep replicas here, ignored")
                }
                // A cluster peer's own durable publish: its stream, received like another
                // region's (in order, recorded, confirmed), delivered here only.
                Kind::Spooled(spooled)
                    if from_cluster
                        && spooled
                            .forward
                            .as_ref()
                            .is_some_and(|f| f.origin_region == self.fed.region()) =>
                {
                    // Unless this gateway has its id already: a publisher that retried here
                    // after the peer died, before the peer sent it on.
                    if let Some(f) = &spooled.forward {
                        self.trace_arrived(link, f, "spooled");
                    }
                    let first = |s: &nexus_proto::v1::Spooled| self.first_sight(s);
                    self.replication
                        .on_spooled(
                            &self.fed,
                            &*self.gateway,
                            link,
                            spooled,
                            replication::Relays::none(),
                            first,
                        )
                        .await
                }
                Kind::Spooled(spooled) if from_cluster => {
                    self.on_relayed_spooled(link, spooled).await
                }
                Kind::Spooled(mut spooled) => {
                    if let Some(f) = &spooled.forward {
                        self.trace_arrived(link, f, "spooled");
                    }
                    // Copies for the other gateways of this region that want it, sent only if
                    // it continues its stream; the queue groups a peer takes are not delivered
                    // here.
                    let (targets, taken) = match &spooled.forward {
                        Some(f) => {
                            self.peer_targets(&f.subject, !f.skip_plain, Some(&f.queue_groups))
                        }
                        None => (Vec::new(), Vec::new()),
                    };
                    let relays: Vec<(String, nexus_proto::v1::Spooled)> = targets
                        .into_iter()
                        .map(|t| {
                            let mut copy = spooled.clone();
                            if let Some(f) = copy.forward.as_mut() {
                                f.skip_plain = !t.plain;
                                f.queue_groups = t.queue_groups;
                            }
                            (t.gateway_id, copy)
                        })
                        .collect();
                    if let Some(f) = spooled.forward.as_mut() {
                        f.queue_groups.retain(|g| !taken.contains(g));
                    }
                    let first = |s: &nexus_proto::v1::Spooled| {
                        self.cluster.first_delivery(
                            &crate::replication::StreamId::from(s.stream.as_str()),
                            s.seq,
                        ) && self.first_sight(s)
                    };
                    let relays = replication::Relays {
                        copies: relays,
                        absent: |g: &str| self.cluster.is_absent(g),
                    };
                    self.replication
                        .on_spooled(&self.fed, &*self.gateway, link, spooled, relays, first)
                        .await
                }
                Kind::Request(request) => {
                    // Served like a local request, with the budget the requester has left.
                    if let Some(me) = self.me.upgrade() {
                        tokio::spawn(me.serve(link.clone(), request));
                    }
                }
                Kind::Reply(reply) => self.requests.on_reply(&self.fed, link, reply),
                _ => {}
            }
        })
    }
}

/// A forwarded message as the local router delivers it; `None` (logged) when its subject is
/// not valid.
fn delivery(region: &str, forward: Forward) -> Option<Delivery> {
    if nexus_proto::subject::validate_subject(&forward.subject).is_err() {
        tracing::warn!(%region, subject = %nexus_proto::text::Escaped(&forward.subject), "dropping a message with an invalid subject from another region");
        return None;
    }
    Some(Delivery {
        subject: forward.subject.into(),
        reply_to: forward.reply_to.into(),
        headers: forward.headers,
        payload: forward.payload,
        id: forward.id,
        // The local router decides (sampling, or the force header) when it delivers.
        traced: false,
    })
}

impl Remote for RegionRouter {
    fn request(
        &self,
        subject: &str,
        id: &Bytes,
        headers: Vec<Header>,
        payload: Bytes,
        timeout: Duration,
        local: Option<GroupCost>,
    ) -> Result<oneshot::Receiver<ReplyResult>, (Vec<Header>, Bytes)> {
        let traced = if self.gateway.traces().sampled(id, &headers) {
            nexus_gateway::trace_store::Traced::new(id, &headers, &subject.into())
        } else {
            None
        };
        // Another gateway of this region when the gateway balancer picks one (over this
        // gateway's own responder, if any), unless the route sends requests elsewhere.
        let elsewhere = local.is_none() && self.prefers_remote_responders(subject);
        let (headers, payload) = if elsewhere {
            (headers, payload)
        } else {
            match self.pick_gateway(subject, local) {
                Some(Taker::Peer(peer)) => {
                    if local.is_some() {
                        self.metrics.requests_to_peers.inc();
                    }
                    match self.requests.send(
                        &self.fed,
                        Via::Gateway(peer.clone()),
                        subject,
                        id,
                        headers,
                        payload,
                        timeout,
                    ) {
                        Ok(rx) => {
                            self.trace_request_sent(traced.as_ref(), &peer, None, local.is_some());
                            return Ok(rx);
                        }
                        Err(back) if local.is_some() => return Err(back),
                        Err(back) => back,
                    }
                }
                Some(Taker::Local) => return Err((headers, payload)),
                None => (headers, payload),
            }
        };
        let table = self.route_table();
        let (rule, _) = table.resolve(subject);
        let choice = self.choose(rule, Traffic::Request, false, subject);
        let Some(region) = choice.regions.into_iter().next() else {
            return Err((headers, payload));
        };
        let sent = self.requests.send(
            &self.fed,
            Via::Region(region.clone()),
            subject,
            id,
            headers,
            payload,
            timeout,
        );
        if sent.is_ok() {
            self.trace_request_sent(traced.as_ref(), &region, Some(rule), false);
        }
        sent
    }

    fn stream_peer(
        &self,
        subject: &str,
    ) -> Option<(Arc<dyn nexus_gateway::streams::StreamRelay>, u64)> {
        match self.pick_gateway(subject, None)? {
            Taker::Peer(gateway) => Some(self.streams.open_to(&gateway)),
            Taker::Local => None,
        }
    }

    fn prefers_remote_responders(&self, subject: &str) -> bool {
        let table = self.route_table();
        let (rule, _) = table.resolve(subject);
        let here = self.fed.region();
        match &rule.policy {
            crate::routes::Policy::Pinned(r) => r != here,
            // Weighted: this region takes its share only if it is listed.
            crate::routes::Policy::Weighted(w) => {
                let total: u64 = w.iter().map(|(_, w)| u64::from(*w)).sum();
                let mine: u64 = w
                    .iter()
                    .filter(|(r, _)| r == here)
                    .map(|(_, w)| u64::from(*w))
                    .sum();
                total > 0 && rand::random_range(0..total) >= mine
            }
            _ => false,
        }
    }

    fn key_active_changed(&self, key_id: &str, present: bool) {
        let mut keys = self.keys.lock();
        if let Some(update) = keys.local_changed(key_id, present) {
            // Under the lock: peers get a key's changes in the order they happened.
            self.fed
                .broadcast_control(LinkKind::Cluster, Kind::KeyActivity(update));
        }
    }

    fn interest_changed(&self, pattern: &str, queue: Option<&str>, present: bool) {
        let key = interest_key(pattern, queue);
        let (for_peers, for_regions) = self.cluster.local_changed(&key, present);
        if let Some(update) = for_peers {
            self.fed.broadcast_interest(LinkKind::Cluster, &update);
        }
        self.tell_regions(for_regions);
    }

    fn publish(&self, msg: &Delivery, local_interest: bool) -> PublishOutcome {
        let mut outcome = PublishOutcome::default();
        let table = self.route_table();
        let (rule, _) = table.resolve(&msg.subject);
        // The other gateways of this region get it like local subscribers do: one hop, best
        // effort, whatever the route's mode towards other regions.
        let origin = self.fed.region();
        let traced = self.traced(msg);
        let (targets, taken) = self.peer_targets(&msg.subject, true, None);
        outcome.taken_groups = taken;
        let in_region: Vec<(String, v1::Forward)> = targets
            .into_iter()
            .map(|t| (t.gateway_id.clone(), t.forward(msg, origin)))
            .collect();
        if rule.mode == Mode::Local {
            if traced.is_some() {
                let peers: Vec<String> = in_region.iter().map(|(g, _)| g.clone()).collect();
                self.trace_route(traced.as_ref(), rule, local_interest, &[], &peers, 0);
            }
            outcome.backlog = self.forward_in_region(in_region, traced.as_ref());
            return outcome;
        }
        // Idempotent publishing on durable routes: a message id seen before is answered with
        // the first attempt's outcome and delivered nowhere.
        let id = replication::message_id(msg);
        if rule.mode.spooled() {
            match self.replication.check_id(id) {
                (Seen::New, _) => {}
                (seen, receipt) => {
                    self.metrics.publish_duplicates.inc();
                    trace_hop(&*self.gateway, traced.as_ref(), || {
                        nexus_gateway::trace_store::Hop::new(
                            nexus_gateway::trace_store::Event::Dropped,
                        )
                        .reason(nexus_gateway::trace_store::Reason::Duplicate)
                        .detail(format!(
                            "route {}: its id was accepted before (a retried publish): delivered and replicated nowhere again",
                            rule.name
                        ))
                    });
                    outcome.duplicate = true;
                    outcome.receipt = receipt.or_else(|| {
                        debug_assert_eq!(seen, Seen::Accepted);
                        let (tx, rx) = oneshot::channel();
                        let _ = tx.send(Ok(()));
                        Some(rx)
                    });
                    return outcome;
                }
            }
        }
        let matches = self.remote.load().matches(&msg.subject);
        let targets = if matches.is_empty() {
            Vec::new()
        } else {
            self.targets(rule, &msg.subject, local_interest, &matches)
        };
        if traced.is_some() {
            let regions: Vec<String> = targets.iter().map(|t| t.region.clone()).collect();
            let peers: Vec<String> = in_region.iter().map(|(g, _)| g.clone()).collect();
            let interested = {
                let mut r: Vec<&str> = matches.iter().map(|m| m.region.as_str()).collect();
                r.sort_unstable();
                r.dedup();
                r.len()
            };
            self.trace_route(
                traced.as_ref(),
                rule,
                local_interest,
                &regions,
                &peers,
                interested,
            );
        }
        if !rule.mode.spooled() {
            outcome.backlog = self.forward_in_region(in_region, traced.as_ref());
        } else {
            // Nothing of a durable publish is delivered before its id is on disk: a
            // publisher retrying after a crash in between would otherwise get it delivered
            // twice. The region's other gateways that want it get it through the spool, like
            // other regions, so a crash after the write cannot lose it for them either.
            let (tx, rx) = oneshot::channel();
            let on_stored: replication::OnStored = Box::new(move |result| {
                let _ = tx.send(result);
            });
            outcome.stored = Some(rx);
            if targets.is_empty() && in_region.is_empty() {
                let (receipt_tx, receipt) = oneshot::channel();
                outcome.receipt = Some(receipt);
                self.replication.accept_without_spool(
                    id,
                    Box::new(move |result| {
                        let _ = receipt_tx.send(result.clone());
                        on_stored(result);
                    }),
                );
                return outcome;
            }
            outcome.spooled = targets.iter().map(|t| t.region.clone()).collect();
            if traced.is_some() {
                let mut to = outcome.spooled.clone();
                to.extend(in_region.iter().map(|(g, _)| format!("@{g}")));
                self.trace_spooled(traced.as_ref(), rule, &to);
            }
            let needed = match rule.sync_quorum as usize {
                0 => targets.len(),
                q => q.min(targets.len()),
            };
            let sync = (rule.mode == Mode::Sync)
                .then(|| (needed, now_ms() + i64::from(rule.sync_timeout_ms)));
            let forwards = targets
                .iter()
                .map(|t| (t.region.clone(), t.forward(msg, origin)))
                .chain(
                    in_region
                        .into_iter()
                        .map(|(gateway, forward)| (replication::peer_key(&gateway), forward)),
                )
                .collect();
            outcome.receipt = Some(
                self.replication
                    .publish(&rule.name, id, forwards, sync, on_stored),
            );
            return outcome;
        }
        for t in targets {
            let queued = self.fed.try_forward(&t.region, t.forward(msg, origin));
            self.trace_to_region(traced.as_ref(), &t.region, queued);
            if queued {
                self.metrics.outcome(Outcome::Forwarded);
                outcome.forwarded.push(t.region);
            }
        }
        outcome
    }

    fn links(&self) -> Vec<LinkStatus> {
        self.link_statuses()
    }

    fn spools(&self) -> Vec<SpoolStatus> {
        self.spool_statuses()
    }

    fn replicas(&self) -> Option<nexus_gateway::remote::ReplicaStatus> {
        Some(self.replication.replica_status())
    }

    fn cluster(&self) -> Vec<nexus_gateway::remote::ClusterPeerStatus> {
        self.cluster_statuses()
    }

    fn explain(&self, subject: &str, local_interest: bool) -> serde_json::Value {
        self.explanation(subject, local_interest)
    }
}
