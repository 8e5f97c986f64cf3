//! The shell of spool replicas (`--spool-replicas 2`; the decisions are in
//! [`crate::replication::replica`] and the [`Outbox`]):
//!
//! - as an **origin**, each pump pass picks the replica among the live cluster links, tells
//!   every other cluster peer that it keeps no copies there (once per link), and sends the
//!   replica the committed messages it has not had (`ReplicaAppend`); the replica's
//!   `ReplicaAck` releases the publishes waiting for it;
//! - as a **replica**, it writes the copies to its own spool before confirming them, drops
//!   what the origin reports confirmed, and when the origin has been unreachable for the
//!   takeover delay sends the origin's queues itself: to other regions over its own links,
//!   to the region's other gateways over cluster links, and to its own subscribers directly.

use std::sync::Arc;

use nexus_gateway::local_gateway::LocalGateway;
use nexus_gateway::router::error;
use nexus_proto::v1::{ErrorCode, ReplicaAck, ReplicaAppend, SpoolAck, link_frame::Kind};

use super::{Destination, PUMP_BATCH, Replication, Spool, delivery, now_ms};
use crate::link::{Federation, LinkId, LinkInfo, Sent};
use crate::replication::StreamId;
use crate::replication::inbox::Verdict;
use crate::replication::replica::{Change, choose_replica};
use crate::replication::store::Op;

/// The pseudo-link of a taken-over queue addressed to this gateway itself.
const HERE: LinkId = LinkId(u64::MAX);

impl Replication {
    // === the origin's side ===

    /// Copies committed messages to the replica; true when its link's queue filled up.
    pub(super) fn replicate(&self, fed: &Federation) -> bool {
        let peers = fed.cluster_peers();
        let replica = if self.replicas > 1 {
            let current = self.outbox.lock().replica().map(str::to_owned);
            choose_replica(
                &self.gateway_id,
                current.as_deref(),
                peers.iter().map(|p| p.gateway_id.as_str()),
            )
            .and_then(|g| peers.iter().find(|p| p.gateway_id == g))
        } else {
            None
        };
        // Peers that are not the replica drop any copies they kept from before (a previous
        // replica, or this gateway's life before a restart), before anything else on the link.
        let stream = self.outbox.lock().stream().to_string();
        {
            let mut released = self.released.lock();
            released.retain(|l| peers.iter().any(|p| p.id == *l));
            for p in &peers {
                if replica.is_some_and(|r| r.id == p.id) || released.contains(&p.id) {
                    continue;
                }
                let release = Kind::ReplicaAppend(ReplicaAppend {
                    stream: stream.clone(),
                    release: true,
                    ..Default::default()
                });
                if fed.send_on_to(&p.gateway_id, p.id, release) == Sent::Queued {
                    released.insert(p.id);
                }
            }
        }
        let Some(replica) = replica else {
            self.outbox.lock().no_replica();
            return false;
        };
        {
            let mut released = self.released.lock();
            if released.remove(&replica.id) {
                // It was released on this link: its copies start again from the oldest.
                self.outbox.lock().no_replica();
            }
        }
        self.outbox
            .lock()
            .replicate_to(&replica.gateway_id, replica.id);
        loop {
            let batches = self.outbox.lock().next_to_replicate(replica.id, PUMP_BATCH);
            if batches.is_empty() {
                return false;
            }
            for b in batches {
                let first = b.entries.first().map_or(0, |e| e.seq);
                let frame = Kind::ReplicaAppend(ReplicaAppend {
                    stream: stream.clone(),
                    destination: b.destination.clone(),
                    floor: b.floor,
                    entries: b.entries,
                    release: false,
                });
                match fed.send_on_to(&replica.gateway_id, replica.id, frame) {
                    Sent::Queued => {}
                    Sent::Full => {
                        self.outbox
                            .lock()
                            .unreplicate(&b.destination, replica.id, first);
                        return true;
                    }
                    Sent::Gone => return false,
                }
            }
        }
    }

    /// The replica `peer` holds a queue of this gateway's spool through `up_to` (or lacks
    /// what precedes the copies it was sent).
    pub(in crate::bridge) fn on_replica_ack(&self, peer: &str, ack: ReplicaAck) {
        let mut outbox = self.outbox.lock();
        if outbox.stream() != ack.stream.as_str() {
            return;
        }
        if ack.gap {
            tracing::warn!(%peer, destination = %ack.destination, held = ack.up_to, "the replica lacks copies before the ones it was sent; sending that queue again");
            outbox.replica_gap(peer, &ack.destination);
            drop(outbox);
            self.wake.notify_one();
            return;
        }
        let Some(held) = outbox.replica_acked(peer, &ack.destination, ack.up_to) else {
            return;
        };
        drop(outbox);
        let done = self.replica_wait.lock().ack(&ack.destination, held);
        for d in done {
            (d.reply)(Ok(()));
        }
    }

    /// Who keeps this gateway's copies, and whose are kept here.
    pub(in crate::bridge) fn replica_status(&self) -> nexus_gateway::remote::ReplicaStatus {
        let mut held: Vec<_> = self
            .held
            .lock()
            .iter()
            .map(|(stream, h)| nexus_gateway::remote::HeldSpoolStatus {
                origin: h.origin.clone(),
                stream: stream.to_string(),
                messages: h.outbox.len() as u64,
                taking_over: h.taking_over(),
            })
            .collect();
        held.sort_by(|a, b| a.origin.cmp(&b.origin));
        nexus_gateway::remote::ReplicaStatus {
            copies: self.replicas,
            replica: self.outbox.lock().replica().map(str::to_owned),
            held,
        }
    }

    // === the replica's side ===

    /// Copies (or a trim, or a release) of the spool of the cluster peer behind `link`.
    pub(in crate::bridge) fn on_replica_append(
        self: &Arc<Self>,
        fed: &Arc<Federation>,
        link: &LinkInfo,
        frame: ReplicaAppend,
    ) {
        let stream = StreamId::from(frame.stream.as_str());
        let origin = link.gateway_id.clone();
        if frame.release {
            if self.held.lock().release(&stream).is_some() {
                tracing::info!(%origin, %stream, "the gateway keeps its spool's copies elsewhere now; dropped them here");
            }
            let _ = self.writer.send(super::WriteBatch {
                ops: vec![Op::ReplicaRelease { stream }],
                done: None,
            });
            return;
        }
        let held = self.held.lock().hold(
            &stream,
            &origin,
            &frame.destination,
            frame.floor,
            frame.entries.clone(),
        );
        let destination = frame.destination.clone();
        match held {
            Err(gap) => {
                tracing::warn!(%origin, %stream, %destination, held = gap.held, "copies from the replicated gateway skip messages; asking for the queue again");
                self.send_replica_ack(fed, &origin, &stream, &destination, gap.held, true);
            }
            Ok(up_to) => {
                let me = self.clone();
                let fed = fed.clone();
                let _ = self.writer.send(super::WriteBatch {
                    ops: vec![Op::ReplicaHold {
                        stream: stream.clone(),
                        origin: origin.clone(),
                        destination: frame.destination,
                        floor: frame.floor,
                        entries: frame.entries,
                    }],
                    done: Some(Box::new(move |result| match result {
                        Ok(()) => {
                            me.send_replica_ack(&fed, &origin, &stream, &destination, up_to, false)
                        }
                        Err(e) => {
                            tracing::error!(%origin, %stream, error = %e, "cannot write a replicated gateway's copies; not confirmed")
                        }
                    })),
                });
            }
        }
    }

    fn send_replica_ack(
        &self,
        fed: &Federation,
        origin: &str,
        stream: &StreamId,
        destination: &str,
        up_to: u64,
        gap: bool,
    ) {
        let ack = ReplicaAck {
            stream: stream.to_string(),
            destination: destination.to_owned(),
            up_to,
            gap,
        };
        let key = (
            origin.to_owned(),
            ack.stream.clone(),
            ack.destination.clone(),
        );
        if fed.try_send_control_to(origin, Kind::ReplicaAck(ack)) {
            self.replica_acks_due.lock().remove(&key);
        } else {
            // Its control queue is full: the chores try again, or the publishes behind it
            // would wait for their timeout.
            self.replica_acks_due.lock().insert(key, (up_to, gap));
        }
    }

    /// Whether `stream` is another gateway's, held here.
    pub(in crate::bridge) fn is_held_stream(&self, stream: &str) -> bool {
        self.held.lock().get(stream).is_some()
    }

    /// A receiver confirmed a stream this gateway sends as a replica; false when it is not
    /// one of them.
    pub(super) fn on_held_ack(&self, destination: &str, ack: &SpoolAck) -> bool {
        let floor = {
            let mut held = self.held.lock();
            let Some(h) = held.get_mut(&ack.stream) else {
                return false;
            };
            if h.outbox.ack(destination, ack.up_to).freed == 0 {
                return true;
            }
            h.outbox.acked(destination)
        };
        self.trim_held(&ack.stream, destination, floor);
        true
    }

    /// Drops copies of `stream`'s queue `destination` through `floor` on disk.
    fn trim_held(&self, stream: &str, destination: &str, floor: u64) {
        let origin = self
            .held
            .lock()
            .get(stream)
            .map(|h| h.origin.clone())
            .unwrap_or_default();
        let _ = self.writer.send(super::WriteBatch {
            ops: vec![Op::ReplicaHold {
                stream: StreamId::from(stream),
                origin,
                destination: destination.to_owned(),
                floor,
                entries: Vec::new(),
            }],
            done: None,
        });
    }

    /// Sends the queues of spools taken over (their origin is gone); true when a link's
    /// queue filled up.
    pub(super) async fn send_taken_over(
        self: &Arc<Self>,
        fed: &Arc<Federation>,
        gateway: &dyn LocalGateway,
    ) -> bool {
        let streams = self.held.lock().taken_over();
        let mut blocked = false;
        for stream in streams {
            let spool = Spool::Held(stream.clone());
            let keys = self
                .with_outbox(&spool, |o| o.regions())
                .unwrap_or_default();
            for key in keys {
                let link = match Destination::of(&key) {
                    Destination::Peer(g) if g == self.gateway_id => {
                        self.deliver_taken_over_here(fed, gateway, &stream, &key)
                            .await;
                        continue;
                    }
                    Destination::Region(region) => fed.current(region),
                    Destination::Peer(gateway) => fed.link_to(gateway),
                };
                if let Some(link) = link {
                    blocked |= self.send_batch(fed, &spool, &key, link);
                }
            }
        }
        blocked
    }

    /// The queue of a taken-over spool meant for this gateway's own subscribers: delivered
    /// here as if it had arrived over the cluster link (in order, once, its id remembered).
    async fn deliver_taken_over_here(
        self: &Arc<Self>,
        fed: &Arc<Federation>,
        gateway: &dyn LocalGateway,
        stream: &StreamId,
        key: &str,
    ) {
        let spool = Spool::Held(stream.clone());
        let Some(batch) = self.with_outbox(&spool, |o| o.next_to_send(key, HERE, PUMP_BATCH))
        else {
            return;
        };
        let Some(last) = batch.last().map(|e| e.seq) else {
            return;
        };
        let region = fed.region().to_owned();
        for e in batch {
            let verdict = self.inbox.lock().on_spooled_from(
                &region,
                &self.gateway_id,
                HERE,
                stream,
                e.seq,
                e.prev_seq,
            );
            if verdict != Verdict::Deliver {
                continue;
            }
            let first = e.forward.as_ref().is_none_or(|f| self.first_sight(&f.id));
            if let Some(forward) = e.forward.filter(|_| first) {
                let (plain, groups) = (!forward.skip_plain, forward.queue_groups.clone());
                if let Some(msg) = delivery(&region, forward) {
                    gateway.deliver_from_region(msg, plain, &groups).await;
                }
            }
        }
        let to_record = self.inbox.lock().to_record(stream);
        if let Some(mark) = to_record {
            self.record(fed, stream.clone(), mark);
        }
        let floor = self.with_outbox(&spool, |o| {
            o.ack(key, last);
            o.acked(key)
        });
        if let Some(floor) = floor {
            self.trim_held(stream.as_str(), key, floor);
        }
    }

    /// Takeovers and hand-backs, late publishes, confirmations to retry, gauges.
    pub(super) fn replica_chores(self: &Arc<Self>, fed: &Federation) {
        let now = now_ms();
        let changes = self
            .held
            .lock()
            .tick(now, |origin| fed.link_to(origin).is_some());
        for change in changes {
            match change {
                Change::TakeOver { stream, origin } => {
                    let depth = self
                        .held
                        .lock()
                        .get(stream.as_str())
                        .map_or(0, |h| h.outbox.len());
                    self.metrics.replica_takeovers.inc();
                    tracing::warn!(%origin, %stream, depth, "gateway unreachable for the takeover delay: sending its spool as its replica");
                }
                Change::HandBack { stream, origin } => {
                    tracing::info!(%origin, %stream, "gateway reachable again: it sends its own spool; this replica stops");
                }
                Change::Drained { stream, origin } => {
                    tracing::info!(%origin, %stream, "every message of the taken-over spool was confirmed; copies dropped");
                    let _ = self.writer.send(super::WriteBatch {
                        ops: vec![Op::ReplicaRelease { stream }],
                        done: None,
                    });
                }
            }
        }
        let late = self.replica_wait.lock().expire(now);
        for late in late {
            self.metrics.replica_timeouts.inc();
            let replica = self.outbox.lock().replica().map(str::to_owned);
            let why = match replica {
                Some(r) => format!("its replica {r} did not confirm holding it in time"),
                None => "no other gateway of the region is linked to hold a copy".to_owned(),
            };
            let result = Err(error(
                ErrorCode::Timeout,
                format!(
                    "the message is stored on this gateway only: --spool-replicas 2 needs a second gateway of the region to hold it, and {why}. It stays spooled here and will still be delivered"
                ),
                0,
            ));
            (late.reply)(result);
        }
        let due: Vec<_> = self.replica_acks_due.lock().drain().collect();
        for ((origin, stream, destination), (up_to, gap)) in due {
            self.send_replica_ack(
                fed,
                &origin,
                &StreamId::from(stream),
                &destination,
                up_to,
                gap,
            );
        }
        let held = self.held.lock().len();
        self.metrics.replica_held.set(held as i64);
    }
}
