//! What the links bring to this gateway: [`RegionRouter`] as the links' [`LinkHandler`].
//! Links coming up and going down (cluster peers absent, relays held back), interest
//! updates, best-effort forwards (delivered here, and relayed one hop to the region's other
//! gateways when they came from another region), spooled messages (judged by the inbox,
//! delivered, relayed and confirmed), relayed spooled messages, and requests to serve.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use nexus_proto::v1::{Forward, InterestUpdate, link_frame::Kind};

use super::forwarded::delivery;
use super::remote_requests::{self, Via};
use super::{RegionRouter, now_ms, replication};
use crate::cluster::balance::Taker;
use crate::interest::RemoteInterest;
use crate::link::{LinkHandler, LinkInfo};
use crate::metrics::Outcome;

impl RegionRouter {
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
            let traced = self.traced(&msg.as_ref());
            let (targets, taken) = self.peer_targets(&msg.subject, plain, Some(&groups));
            for t in targets {
                let queued = self
                    .fed
                    .try_forward_to(&t.gateway_id, t.forward(&msg.as_ref(), &link.region));
                self.trace_to_peer(traced.as_ref(), &t.gateway_id, queued);
            }
            groups.retain(|g| !taken.contains(g));
        }
        self.gateway.deliver_from_region(msg, plain, &groups).await;
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
            // Back: the relays it missed go out again (those held for it past the grace
            // period through this gateway's spool, first).
            self.cluster.peer_present(&link.gateway_id);
            self.replication.peer_linked(&self.fed, &link.gateway_id);
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
                // A cluster peer's own durable publish, or a relay it held for this gateway
                // while it was cut off past the grace period: the peer's own stream,
                // received like another region's (in order, recorded, confirmed), delivered
                // here only.
                Kind::Spooled(spooled)
                    if from_cluster
                        && (spooled.relay_of.is_some()
                            || spooled
                                .forward
                                .as_ref()
                                .is_some_and(|f| f.origin_region == self.fed.region())) =>
                {
                    // Unless this gateway has its id already: a publisher that retried here
                    // after the peer died, before the peer sent it on. A held relay also
                    // counts for the stream it came from, so a later home resending that
                    // stream does not deliver it twice; and when newer messages of that
                    // stream reached this gateway by another path while it was held (the
                    // stream's home changed), it is delivered late, out of order, when its id
                    // is new here, rather than lost.
                    if let Some(f) = &spooled.forward {
                        let how = if spooled.relay_of.is_some() {
                            "spooled, held for this gateway by the stream's home while cut off"
                        } else {
                            "spooled"
                        };
                        self.trace_arrived(link, f, how);
                    }
                    let first = |s: &nexus_proto::v1::Spooled| {
                        let Some(r) = s.relay_of.as_ref() else {
                            return self.first_sight(s);
                        };
                        let stream = crate::replication::StreamId::from(r.stream.as_str());
                        let in_order = self.cluster.first_delivery(&stream, r.seq);
                        let fresh = self.first_sight(s);
                        if fresh && !in_order {
                            self.metrics.held_relays_late.inc();
                            tracing::info!(peer = %link.gateway_id, %stream, seq = r.seq, "held relay delivered after newer messages of its stream (the stream's home changed while it was held)");
                        }
                        fresh
                    };
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
