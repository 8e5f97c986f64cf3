//! What this gateway hands to federation: [`RegionRouter`] as the gateway's [`Remote`].
//! Each local publish is planned (which regions, which mode, which gateways of the region)
//! and forwarded, spooled or held; requests no local responder takes go to another gateway
//! of the region or another region; interest and key-activity changes go out to the links;
//! and the status calls (`links`, `spools`, `explain`) answer for operators.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use nexus_gateway::balancer::GroupCost;
use nexus_gateway::config::SlowConsumerPolicy;
use nexus_gateway::local_gateway::trace_hop;
use nexus_gateway::remote::{Backlog, LinkStatus, PublishOutcome, Remote, SpoolStatus};
use nexus_gateway::router::{MessageRef, ReplyResult};
use nexus_proto::v1::{self, Header, link_frame::Kind};
use tokio::sync::oneshot;

use super::remote_requests::Via;
use super::{RegionRouter, now_ms, replication};
use crate::cluster::balance::Taker;
use crate::interest::interest_key;
use crate::link::LinkKind;
use crate::metrics::Outcome;
use crate::replication::dedup::Seen;
use crate::routes::{Mode, Traffic};

impl RegionRouter {
    /// Which gateway of the region takes a request on `subject`: this one (its chosen
    /// responder costs `local`) or a cluster peer with a responder; `None` when neither has
    /// one.
    pub(super) fn pick_gateway(&self, subject: &str, local: Option<GroupCost>) -> Option<Taker> {
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
            nexus_gateway::trace_store::Traced::new(id, &headers, subject)
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

    fn publish(&self, msg: &MessageRef<'_>, local_interest: bool) -> PublishOutcome {
        let mut outcome = PublishOutcome::default();
        let table = self.route_table();
        let (rule, _) = table.resolve(msg.subject);
        // The other gateways of this region get it like local subscribers do: one hop, best
        // effort, whatever the route's mode towards other regions.
        let origin = self.fed.region();
        let traced = self.traced(msg);
        let (targets, taken) = self.peer_targets(msg.subject, true, None);
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
        let matches = self.remote.load().matches(msg.subject);
        let targets = if matches.is_empty() {
            Vec::new()
        } else {
            self.targets(rule, msg.subject, local_interest, &matches)
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
