//! The replication shell: drives the sans-I/O [`crate::replication`] state machines with the
//! real things: a redb spool written by one thread (group commit), a pump task sending over
//! links, confirmations and resend requests from peers, local delivery of what arrives, and
//! the periodic chores (age limit, late `sync` publishes, gauges, pruning the dedup window).
//!
//! - [`replicas`]: copies of this spool on another gateway of the region, copies of other
//!   gateways' spools kept here, and sending them when their gateway is gone
//!   (`--spool-replicas 2`).

mod replicas;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use nexus_gateway::local_gateway::LocalGateway;
use nexus_gateway::router::{MessageRef, error};
use nexus_proto::v1::{self, ErrorCode, RelayOf, SpoolAck, SpoolNack, Spooled, link_frame::Kind};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc, oneshot};

use super::forwarded::delivery;
use super::now_ms;
use crate::link::{Federation, LinkId, LinkInfo, Sent};
use crate::metrics::{
    FederationMetrics, Outcome, RegionLabels, SpoolLabels, SpoolLoss, SpoolLossLabels,
};
use crate::replication::dedup::{Dedup, MessageId, Seen};
use crate::replication::inbox::{Inbox, RelayTo, Verdict};
use crate::replication::outbox::{Outbox, Removed};
use crate::replication::quorum::Quorum;
use crate::replication::replica::HeldSpools;
use crate::replication::store::{Loaded, Op, SpoolStore};
use crate::replication::{Limits, StreamId};

/// Spooled messages sent per region per pump pass, so one region cannot starve the others.
const PUMP_BATCH: usize = 512;
/// How often the pump expires old messages, fails late sync publishes and updates gauges.
const HOUSEKEEPING: Duration = Duration::from_millis(50);
/// How long a cluster peer may be unlinked before relays stop waiting for it: long enough
/// for a link that bounced to come back, short enough that a dead peer delays its region's
/// confirmations (and so `sync` publishes) by little.
pub const DEFAULT_RELAY_GRACE_MS: i64 = 1_000;
/// How often the accepted-id table on disk is pruned to the dedup window.
const DEDUP_PRUNE_MS: i64 = 10_000;

/// Where the spool lives, how big it may grow, and how long message ids are remembered.
#[derive(Clone, Debug)]
pub struct SpoolConfig {
    pub path: std::path::PathBuf,
    pub limits: Limits,
    /// Idempotent publishing: how long accepted message ids are remembered, and at most how
    /// many.
    pub dedup_window_ms: i64,
    pub dedup_max_ids: usize,
    /// How many gateways of the region hold each spooled message before its publisher is
    /// acknowledged: 1 (this gateway's disk) or 2 (and a replica's).
    pub replicas: usize,
    /// How long a replica waits for an unreachable origin before sending its spool.
    pub takeover_ms: i64,
    /// How long an `async` publish waits for the replica's confirmation.
    pub replica_timeout_ms: i64,
    /// How long a cluster peer may be unlinked before messages relayed to it stop waiting for
    /// its confirmation (and its interest is forgotten).
    pub relay_grace_ms: i64,
}

impl SpoolConfig {
    pub fn new(path: std::path::PathBuf, limits: Limits) -> Self {
        SpoolConfig {
            path,
            limits,
            dedup_window_ms: crate::replication::dedup::DEFAULT_WINDOW_MS,
            dedup_max_ids: crate::replication::dedup::DEFAULT_MAX_IDS,
            replicas: 1,
            takeover_ms: crate::replication::replica::DEFAULT_TAKEOVER_MS,
            replica_timeout_ms: crate::replication::replica::DEFAULT_REPLICA_TIMEOUT_MS,
            relay_grace_ms: DEFAULT_RELAY_GRACE_MS,
        }
    }
}

type WriteDone = Box<dyn FnOnce(Result<(), String>) + Send>;

struct WriteBatch {
    ops: Vec<Op>,
    done: Option<WriteDone>,
}

/// Where the outcome of a durable publish goes: the publisher's receipt, or a retry waiting
/// for the first attempt.
pub(super) type Reply = oneshot::Sender<Result<(), v1::Error>>;

/// Called once a durable publish is on disk here (or could not be written): from then on it
/// may be delivered in this region.
pub(super) type OnStored = Box<dyn FnOnce(Result<(), v1::Error>) + Send>;

/// (origin gateway, stream, queue) of a confirmation a replica owes.
type ReplicaAckKey = (String, String, String);

/// What runs when a publish's copies are confirmed by the replica (or could not be).
type OnReplicated = Box<dyn FnOnce(Result<(), v1::Error>) + Send>;

/// Where a spool queue goes: another region (by name), or another gateway of this region,
/// keyed `@<gateway id>` (region names cannot contain `@`). Durable publishes reach the
/// region's other gateways through the same protocol as other regions, so a gateway that
/// dies after storing a message still delivers it there when it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Destination<'a> {
    Region(&'a str),
    Peer(&'a str),
}

impl<'a> Destination<'a> {
    pub(super) fn of(key: &'a str) -> Self {
        match key.strip_prefix('@') {
            Some(gateway) => Destination::Peer(gateway),
            None => Destination::Region(key),
        }
    }
}

/// The spool queue key of a cluster peer.
pub(super) fn peer_key(gateway_id: &str) -> String {
    format!("@{gateway_id}")
}

/// The error a publisher gets when its message could not be written to the spool.
fn unwritten(e: &str) -> v1::Error {
    error(
        ErrorCode::Unavailable,
        format!("could not write the message to the replication spool: {e}"),
        0,
    )
}

/// Copies of a spooled message from another region for the cluster peers that want it, and
/// which peers are absent (link down within the grace period: the relay is owed, and sent
/// when they return).
pub(super) struct Relays<A> {
    pub(super) copies: Vec<(String, Spooled)>,
    pub(super) absent: A,
}

impl Relays<fn(&str) -> bool> {
    /// No relays (a stream from a gateway of this region).
    pub(super) fn none() -> Self {
        Relays {
            copies: Vec::new(),
            absent: |_| false,
        }
    }
}

/// Whose spool an outbox operation is about: this gateway's own, or one it holds as another
/// gateway's replica.
enum Spool {
    Own,
    Held(StreamId),
}

/// The state of `async` / `sync` replication of one gateway.
pub(super) struct Replication {
    outbox: Mutex<Outbox>,
    inbox: Mutex<Inbox>,
    writer: mpsc::UnboundedSender<WriteBatch>,
    quorum: Mutex<Quorum<(Reply, MessageId)>>,
    dedup: Mutex<Dedup<Reply>>,
    /// Delivery of one stream is serialized: for a moment an old and a new link of one region
    /// may both carry it, and two messages must never be delivered out of order.
    stream_locks: Mutex<HashMap<StreamId, Arc<tokio::sync::Mutex<()>>>>,
    wake: Notify,
    metrics: Arc<FederationMetrics>,
    last_prune_ms: Mutex<i64>,
    gateway_id: String,
    /// 1, or 2 with a replica (`SpoolConfig::replicas`).
    replicas: usize,
    replica_timeout_ms: i64,
    relay_grace_ms: i64,
    /// When each cluster peer's held-back relays were last asked for again.
    last_ask: Mutex<HashMap<String, i64>>,
    /// Publishes waiting for the replica to hold their copies, per queue.
    replica_wait: Mutex<Quorum<OnReplicated>>,
    /// Other gateways' spools held here.
    held: Mutex<HeldSpools>,
    /// Confirmations to replicated gateways that found their control queue full, to retry.
    replica_acks_due: Mutex<HashMap<ReplicaAckKey, (u64, bool)>>,
    /// Cluster links already told that this gateway keeps no copies there.
    released: Mutex<std::collections::HashSet<LinkId>>,
}

impl Replication {
    /// Opens (or recovers) the spool; returns it with the other regions' interest found there.
    pub(super) fn open(
        cfg: &SpoolConfig,
        gateway_id: &str,
        metrics: Arc<FederationMetrics>,
    ) -> Result<(Self, HashMap<String, Vec<String>>), crate::replication::store::StoreError> {
        let store = SpoolStore::open(&cfg.path, gateway_id)?;
        let Loaded {
            stream,
            queues,
            inbox: marks,
            interest,
            accepted,
            held: held_spools,
        } = store.load()?;
        let mut outbox = Outbox::new(stream.clone(), cfg.limits.clone());
        let mut recovered = 0usize;
        let mut inbox = Inbox::default();
        for (region, q) in queues {
            recovered += q.entries.len();
            // Held relays still queued for a peer: its relays keep going through the queue
            // until it confirmed them, so none overtakes a held one.
            if let Destination::Peer(peer) = Destination::of(&region)
                && let Some(last) = q
                    .entries
                    .iter()
                    .filter(|e| e.relay_of.is_some())
                    .map(|e| e.seq)
                    .max()
            {
                inbox.held_at(peer, last);
            }
            outbox.restore(&region, q.acked, q.deleted_through, q.entries);
        }
        for (s, region, seq) in marks {
            inbox.restore(s, &region, seq);
        }
        let mut held = HeldSpools::new(cfg.takeover_ms, cfg.limits.clone());
        for h in held_spools {
            held.restore(h.stream, &h.origin, h.queues);
        }
        let mut dedup = Dedup::new(cfg.dedup_window_ms, cfg.dedup_max_ids);
        for (id, at) in accepted {
            dedup.restore(id, at);
        }
        tracing::info!(
            %stream,
            recovered,
            remembered_ids = dedup.len(),
            held_for_others = held.len(),
            replicas = cfg.replicas,
            path = %cfg.path.display(),
            "replication spool opened"
        );
        Ok((
            Replication {
                outbox: Mutex::new(outbox),
                inbox: Mutex::new(inbox),
                writer: start_writer(store),
                quorum: Mutex::new(Quorum::default()),
                dedup: Mutex::new(dedup),
                stream_locks: Mutex::new(HashMap::new()),
                wake: Notify::new(),
                metrics,
                last_prune_ms: Mutex::new(0),
                gateway_id: gateway_id.to_owned(),
                replicas: cfg.replicas,
                replica_timeout_ms: cfg.replica_timeout_ms,
                relay_grace_ms: cfg.relay_grace_ms,
                last_ask: Mutex::new(HashMap::new()),
                replica_wait: Mutex::new(Quorum::default()),
                held: Mutex::new(held),
                replica_acks_due: Mutex::new(HashMap::new()),
                released: Mutex::new(Default::default()),
            },
            interest,
        ))
    }

    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Remembers `region`'s advertised interest across restarts.
    pub(super) fn store_interest(&self, region: String, patterns: Vec<String>) {
        let _ = self.writer.send(WriteBatch {
            ops: vec![Op::Interest { region, patterns }],
            done: None,
        });
    }

    /// Whether a durable message from another gateway's stream, carrying the publisher's
    /// message `id`, is seen here for the first time (see `dedup::Dedup::received`). Messages
    /// without a well-formed id cannot be recognised and always are.
    pub(super) fn first_sight(&self, id: &[u8]) -> bool {
        match <MessageId>::try_from(id) {
            Ok(id) => self.dedup.lock().received(id, now_ms()),
            Err(_) => true,
        }
    }

    // === sender side ===

    /// Idempotent publishing: what is known of message `id`. On [`Seen::Pending`] the
    /// returned receipt resolves with the first attempt's outcome.
    pub(super) fn check_id(
        &self,
        id: MessageId,
    ) -> (Seen, Option<oneshot::Receiver<Result<(), v1::Error>>>) {
        let mut dedup = self.dedup.lock();
        loop {
            match dedup.check(id, now_ms()) {
                Seen::Pending => {
                    let (tx, rx) = oneshot::channel();
                    match dedup.wait(id, tx) {
                        Ok(()) => return (Seen::Pending, Some(rx)),
                        // Settled in between: look again.
                        Err(_) => continue,
                    }
                }
                seen => return (seen, None),
            }
        }
    }

    /// The first attempt of `id` ended; answers the retries that waited for it.
    fn settle(&self, id: MessageId, result: &Result<(), v1::Error>) {
        // A sync publish that timed out stays spooled and will be delivered: a retry must not
        // send it again, so it counts as accepted too. Only a failed write frees the id.
        let accepted = match result {
            Ok(()) => true,
            Err(e) => e.code == ErrorCode::Timeout as i32,
        };
        let waiters = self.dedup.lock().settle(id, accepted, now_ms());
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }

    /// A durable publish that no other region wanted: only its id is written (so a retry
    /// after a crash is still recognised), then it is accepted.
    pub(super) fn accept_without_spool(self: &Arc<Self>, id: MessageId, on_stored: OnStored) {
        let me = self.clone();
        let _ = self.writer.send(WriteBatch {
            ops: vec![Op::Accepted {
                id,
                at_ms: now_ms(),
            }],
            done: Some(Box::new(move |result| {
                let result = result.map_err(|e| unwritten(&e));
                me.settle(id, &result);
                on_stored(result);
            })),
        });
    }

    /// Writes `msg` to the spool for each of `targets` (region, forward); the receipt
    /// resolves when the write is durable (`async`) or when `sync_quorum` regions confirmed
    /// it (`sync`, by `sync_deadline_ms`).
    pub(super) fn publish(
        self: &Arc<Self>,
        route: &str,
        id: MessageId,
        targets: Vec<(String, v1::Forward)>,
        sync: Option<(usize, i64)>,
        on_stored: OnStored,
    ) -> oneshot::Receiver<Result<(), v1::Error>> {
        let (tx, rx) = oneshot::channel();
        let now = now_ms();
        let mut ops = Vec::with_capacity(targets.len() + 1);
        let mut seqs: Vec<(String, u64)> = Vec::with_capacity(targets.len());
        {
            let mut outbox = self.outbox.lock();
            for (region, forward) in targets {
                match outbox.append(&region, route, forward, now) {
                    Ok((spooled, removed)) => {
                        if let Some(r) = removed {
                            self.lost(&r, SpoolLoss::Overflow);
                            ops.push(Op::Delete {
                                region: r.region,
                                seqs: r.seqs,
                            });
                        }
                        seqs.push((region.clone(), spooled.seq));
                        ops.push(Op::Append { region, spooled });
                    }
                    Err(full) => {
                        for (r, seq) in &seqs {
                            outbox.forget(r, &[*seq]);
                        }
                        drop(outbox);
                        let result = Err(error(ErrorCode::Limit, full.to_string(), 0));
                        self.settle(id, &result);
                        on_stored(result.clone());
                        let _ = tx.send(result);
                        return rx;
                    }
                }
            }
            for _ in &seqs {
                self.metrics.outcome(Outcome::Spooled);
            }
            ops.push(Op::Accepted { id, at_ms: now });
            // Sent under the outbox lock, so the writer sees each region's messages in `seq`
            // order and commits them in that order.
            let me = self.clone();
            let _ = self.writer.send(WriteBatch {
                ops,
                done: Some(Box::new(move |result| {
                    me.written(result, id, seqs, sync, tx, on_stored)
                })),
            });
        }
        rx
    }

    /// After a spool write: answer the publisher (async) or start waiting for its quorum
    /// (sync), then let the pump send the messages.
    fn written(
        self: &Arc<Self>,
        result: Result<(), String>,
        id: MessageId,
        seqs: Vec<(String, u64)>,
        sync: Option<(usize, i64)>,
        tx: Reply,
        on_stored: OnStored,
    ) {
        match result {
            Err(e) => {
                let mut outbox = self.outbox.lock();
                for (r, seq) in &seqs {
                    outbox.forget(r, &[*seq]);
                }
                drop(outbox);
                let result = Err(unwritten(&e));
                self.settle(id, &result);
                on_stored(result.clone());
                let _ = tx.send(result);
            }
            Ok(()) => {
                on_stored(Ok(()));
                // Every waiter (replica, quorum) exists before the pump can send, so no
                // confirmation is missed.
                if self.replicas > 1 {
                    let deadline = sync.map_or(now_ms() + self.replica_timeout_ms, |(_, d)| d);
                    let me = self.clone();
                    let regions = seqs.clone();
                    self.replica_wait.lock().add(
                        seqs.clone(),
                        seqs.len(),
                        deadline,
                        Box::new(move |held| match (held, sync) {
                            (Ok(()), Some((needed, deadline))) => {
                                me.await_quorum(regions, needed, deadline, tx, id)
                            }
                            (result, _) => {
                                me.settle(id, &result);
                                let _ = tx.send(result);
                            }
                        }),
                    );
                } else {
                    match sync {
                        Some((needed, deadline)) => {
                            self.await_quorum(seqs.clone(), needed, deadline, tx, id)
                        }
                        None => {
                            self.settle(id, &Ok(()));
                            let _ = tx.send(Ok(()));
                        }
                    }
                }
                let mut outbox = self.outbox.lock();
                for (r, seq) in &seqs {
                    outbox.committed(r, *seq);
                }
                drop(outbox);
                self.wake.notify_one();
            }
        }
    }

    /// Waits for `needed` other regions to confirm a `sync` publish (its queues `seqs`);
    /// regions that confirmed already (while the replica was being waited for) count.
    fn await_quorum(
        &self,
        seqs: Vec<(String, u64)>,
        needed: usize,
        deadline: i64,
        tx: Reply,
        id: MessageId,
    ) {
        // Only other regions count towards a sync quorum.
        let mut quorum = self.quorum.lock();
        let outbox = self.outbox.lock();
        let (done, pending): (Vec<_>, Vec<_>) = seqs
            .into_iter()
            .filter(|(d, _)| matches!(Destination::of(d), Destination::Region(_)))
            .partition(|(d, seq)| outbox.acked(d) >= *seq);
        drop(outbox);
        if done.len() >= needed {
            drop(quorum);
            self.settle(id, &Ok(()));
            let _ = tx.send(Ok(()));
        } else {
            quorum.add(pending, needed - done.len(), deadline, (tx, id));
        }
    }

    /// Whether `stream` is this gateway's own spool stream.
    pub(super) fn is_own_stream(&self, stream: &str) -> bool {
        self.outbox.lock().stream() == stream
    }

    /// A peer confirmed our stream up to `up_to` (or a stream this gateway sends as another
    /// gateway's replica).
    pub(super) fn on_ack(self: &Arc<Self>, region: &str, ack: SpoolAck) {
        let stream_ok = self.outbox.lock().stream() == ack.stream.as_str();
        if !stream_ok {
            if !self.on_held_ack(region, &ack) {
                tracing::debug!(%region, stream = %ack.stream, "confirmation for another spool's stream; ignored");
            }
            return;
        }
        tracing::debug!(%region, up_to = ack.up_to, "spool confirmed");
        let (acked, up_to) = {
            let mut outbox = self.outbox.lock();
            let acked = outbox.ack(region, ack.up_to);
            (acked, outbox.acked(region))
        };
        if acked.beyond_sent {
            tracing::warn!(%region, claimed = ack.up_to, sent = up_to, "region confirmed spooled messages that were never sent to it; only what was sent is deleted");
        }
        if acked.freed > 0 {
            let _ = self.writer.send(WriteBatch {
                ops: vec![Op::Ack {
                    region: region.to_owned(),
                    up_to,
                }],
                done: None,
            });
        }
        let done = self.quorum.lock().ack(region, ack.up_to);
        for d in done {
            let (reply, id) = d.reply;
            self.settle(id, &Ok(()));
            let _ = reply.send(Ok(()));
        }
    }

    /// A peer saw a gap in our stream (or one sent as a replica) on `link`: resend after
    /// `have`.
    pub(super) fn on_nack(&self, destination: &str, link: &LinkInfo, nack: SpoolNack) {
        let spool = if self.outbox.lock().stream() == nack.stream.as_str() {
            Spool::Own
        } else if self.held.lock().get(&nack.stream).is_some() {
            Spool::Held(StreamId::from(nack.stream.as_str()))
        } else {
            return;
        };
        tracing::info!(%destination, link = %link.id, have = nack.have, stream = %nack.stream, "peer asked for spooled messages again after a gap");
        self.with_outbox(&spool, |o| o.rewind(destination, link.id, nack.have));
        self.wake.notify_one();
    }

    /// Runs `f` on the outbox of `spool`, if it still exists.
    fn with_outbox<R>(&self, spool: &Spool, f: impl FnOnce(&mut Outbox) -> R) -> Option<R> {
        match spool {
            Spool::Own => Some(f(&mut self.outbox.lock())),
            Spool::Held(stream) => self
                .held
                .lock()
                .get_mut(stream.as_str())
                .map(|h| f(&mut h.outbox)),
        }
    }

    /// Sends committed spooled messages over the current link of each region, and does the
    /// periodic chores.
    pub(super) async fn pump(
        self: Arc<Self>,
        fed: Arc<Federation>,
        gateway: Arc<dyn LocalGateway>,
        chores: impl Fn(),
    ) {
        let mut last_chores = std::time::Instant::now();
        loop {
            let mut blocked = self.replicate(&fed);
            let destinations = self.outbox.lock().regions();
            for key in destinations {
                let link = match Destination::of(&key) {
                    Destination::Region(region) => fed.current(region),
                    Destination::Peer(gateway) => fed.link_to(gateway),
                };
                let Some(link) = link else {
                    continue;
                };
                blocked |= self.send_batch(&fed, &Spool::Own, &key, link);
            }
            blocked |= self.send_taken_over(&fed, &*gateway).await;
            if last_chores.elapsed() >= HOUSEKEEPING {
                last_chores = std::time::Instant::now();
                self.chores();
                self.replica_chores(&fed);
                chores();
            }
            let busy =
                blocked || !self.quorum.lock().is_empty() || !self.replica_wait.lock().is_empty();
            let wait = if busy {
                Duration::from_millis(5)
            } else {
                HOUSEKEEPING
            };
            let _ = tokio::time::timeout(wait, self.wake.notified()).await;
        }
    }

    /// Sends what the queue `region` (a [`Destination`] key) of `spool` has not had on
    /// `link`; true when the link's queue filled up.
    fn send_batch(&self, fed: &Federation, spool: &Spool, region: &str, link: LinkId) -> bool {
        loop {
            let Some(batch) = self.with_outbox(spool, |o| o.next_to_send(region, link, PUMP_BATCH))
            else {
                return false;
            };
            let n = batch.len();
            if n == 0 {
                return false;
            }
            for e in batch {
                let seq = e.seq;
                let sent = match Destination::of(region) {
                    Destination::Region(r) => fed.send_on(r, link, Kind::Spooled(e)),
                    Destination::Peer(gateway) => fed.send_on_to(gateway, link, Kind::Spooled(e)),
                };
                match sent {
                    Sent::Queued => {}
                    Sent::Full => {
                        self.with_outbox(spool, |o| o.unsend(region, link, seq));
                        return true;
                    }
                    // The link ended: the next one starts from the oldest unconfirmed.
                    Sent::Gone => return false,
                }
            }
            if n < PUMP_BATCH {
                return false;
            }
        }
    }

    fn lost(&self, r: &Removed, reason: SpoolLoss) {
        tracing::warn!(
            region = %r.region,
            range = %r.range(),
            reason = reason.as_str(),
            "spooled messages deleted without delivery"
        );
        self.metrics
            .spool_lost
            .get_or_create(&SpoolLossLabels {
                region: r.region.clone(),
                reason,
            })
            .inc_by(r.seqs.len() as u64);
    }

    fn chores(&self) {
        let now = now_ms();
        let expired = self.outbox.lock().expire(now);
        for r in expired {
            self.lost(&r, SpoolLoss::Expired);
            let _ = self.writer.send(WriteBatch {
                ops: vec![Op::Delete {
                    region: r.region,
                    seqs: r.seqs,
                }],
                done: None,
            });
        }
        let late = self.quorum.lock().expire(now);
        for late in late {
            let result = Err(error(
                ErrorCode::Timeout,
                format!(
                    "sync replication timed out: {} of {} required regions confirmed ({}); still waiting for {}. The message stays spooled and may still be delivered",
                    late.confirmed.len(),
                    late.needed,
                    if late.confirmed.is_empty() {
                        "none".to_owned()
                    } else {
                        late.confirmed.join(", ")
                    },
                    late.pending.join(", ")
                ),
                0,
            ));
            let (reply, id) = late.reply;
            self.settle(id, &result);
            let _ = reply.send(result);
        }
        {
            let mut dedup = self.dedup.lock();
            dedup.expire(now);
            self.metrics.dedup_ids.set(dedup.len() as i64);
            let evicted = dedup.evicted();
            let counted = self.metrics.dedup_evicted.get();
            if evicted > counted {
                self.metrics.dedup_evicted.inc_by(evicted - counted);
            }
            let mut last = self.last_prune_ms.lock();
            if now - *last >= DEDUP_PRUNE_MS {
                *last = now;
                let before_ms = dedup.prune_before(now);
                let _ = self.writer.send(WriteBatch {
                    ops: vec![Op::ForgetAccepted { before_ms }],
                    done: None,
                });
            }
        }
        let outbox = self.outbox.lock();
        self.metrics.spool_bytes.set(outbox.bytes() as i64);
        let depths = outbox.depths();
        drop(outbox);
        self.metrics.spool_depth.clear();
        self.metrics.replication_lag_ms.clear();
        for d in depths {
            let labels = SpoolLabels {
                route: d.route,
                region: d.region,
            };
            self.metrics
                .spool_depth
                .get_or_create(&labels)
                .set(d.depth as i64);
            if let Some(oldest) = d.oldest_ms {
                self.metrics
                    .replication_lag_ms
                    .get_or_create(&labels)
                    .set((now - oldest).max(0));
            }
        }
    }

    pub(super) fn depths(&self) -> Vec<crate::replication::outbox::RouteDepth> {
        self.outbox.lock().depths()
    }

    // === receiver side ===

    /// A link to `link.region` came up: confirm again what we recorded from it, and let the
    /// pump send to it.
    pub(super) fn link_up(&self, fed: &Federation, link: &LinkInfo) {
        let confirmations = self.inbox.lock().link_up(&link.region, link.id);
        for (stream, up_to) in confirmations {
            fed.try_send_control_to(
                &link.gateway_id,
                Kind::SpoolAck(SpoolAck {
                    up_to,
                    stream: stream.to_string(),
                }),
            );
        }
        self.wake.notify_one();
    }

    /// A spooled message from `link.region`: deliver it if it continues its stream, record
    /// that durably, then confirm it.
    pub(super) async fn on_spooled(
        self: &Arc<Self>,
        fed: &Arc<Federation>,
        gateway: &dyn LocalGateway,
        link: &LinkInfo,
        spooled: Spooled,
        relays: Relays<impl Fn(&str) -> bool>,
        first_delivery: impl Fn(&Spooled) -> bool,
    ) {
        let Relays {
            copies: relays,
            absent,
        } = relays;
        let stream = StreamId::from(spooled.stream.as_str());
        let lock = self
            .stream_locks
            .lock()
            .entry(stream.clone())
            .or_default()
            .clone();
        let _serial = lock.lock().await;
        let verdict = self.inbox.lock().on_spooled_from(
            &link.region,
            &link.gateway_id,
            link.id,
            &stream,
            spooled.seq,
            spooled.prev_seq,
        );
        match verdict {
            Verdict::Duplicate { ack } => {
                self.metrics.outcome(Outcome::Duplicate);
                // A resend asked for because a cluster peer came back (or was cut off past
                // the grace period): the relays it missed, in order.
                let to = self
                    .inbox
                    .lock()
                    .resend_to(&stream, spooled.seq, spooled.prev_seq, |g| !absent(g));
                for (gateway, copy) in relays {
                    match to.iter().find(|(g, _)| *g == gateway).map(|(_, how)| *how) {
                        Some(RelayTo::Now) => {
                            let _ = fed.send_data_to(&gateway, Kind::Spooled(copy)).await;
                        }
                        Some(RelayTo::Held) => {
                            self.hold_relay(fed, &gateway, &stream, spooled.seq, copy)
                        }
                        Some(RelayTo::Owed) | None => {}
                    }
                }
                // Owed relays the sender no longer holds were dropped: that may settle more.
                let to_record = self.inbox.lock().to_record(&stream);
                if let Some(mark) = to_record {
                    self.record(fed, stream.clone(), mark);
                }
                if let Some(up_to) = ack {
                    self.confirm(fed, &link.gateway_id, &stream, up_to);
                }
            }
            Verdict::Gap { nack } => {
                self.metrics
                    .replication_gaps
                    .get_or_create(&RegionLabels {
                        region: link.region.clone(),
                    })
                    .inc();
                if let Some(have) = nack {
                    tracing::warn!(region = %link.region, %stream, have, seq = spooled.seq, prev = spooled.prev_seq, "spooled message out of order; asking for a resend");
                    fed.try_send_control_to(
                        &link.gateway_id,
                        Kind::SpoolNack(SpoolNack {
                            stream: stream.to_string(),
                            have,
                        }),
                    );
                }
            }
            Verdict::Deliver => {
                self.metrics.outcome(Outcome::Received);
                self.metrics
                    .received
                    .get_or_create(&RegionLabels {
                        region: link.region.clone(),
                    })
                    .inc();
                // The other gateways of this region that want it get it first (one hop, with
                // its stream and seq); the mark written (and so confirmed) waits for them.
                // Every peer that wants it owes a confirmation. One whose link is down (within
                // its grace period), or whose older relays of this stream are held back, gets
                // it later from the resends asked for when it is back (`peer_back`), in order.
                // One cut off past the grace gets it through the held queue.
                let mut peers = Vec::new();
                let mut held = Vec::new();
                for (gateway, copy) in relays {
                    let how = self.inbox.lock().relay_to(
                        &stream,
                        &gateway,
                        spooled.seq,
                        !absent(&gateway),
                        || self.outbox.lock().done_through(&peer_key(&gateway)),
                    );
                    match how {
                        RelayTo::Now => {
                            if fed
                                .send_data_to(&gateway, Kind::Spooled(copy))
                                .await
                                .is_err()
                            {
                                self.inbox
                                    .lock()
                                    .relay_failed(&stream, &gateway, spooled.seq);
                            }
                        }
                        RelayTo::Held => held.push((gateway.clone(), copy)),
                        RelayTo::Owed => {}
                    }
                    peers.push(gateway);
                }
                self.inbox.lock().relayed(&stream, spooled.seq, peers);
                // Written once the relay is noted, so its confirmation finds it.
                for (gateway, copy) in held {
                    self.hold_relay(fed, &gateway, &stream, spooled.seq, copy);
                }
                // Delivered here only if this gateway did not have it already (through a
                // previous home of the stream in this region).
                let local = first_delivery(&spooled);
                if let Some(forward) = spooled.forward.filter(|_| local) {
                    let (plain, groups) = (!forward.skip_plain, forward.queue_groups.clone());
                    if let Some(msg) = delivery(&link.region, forward) {
                        gateway.deliver_from_region(msg, plain, &groups).await;
                    }
                }
                let to_record = self.inbox.lock().to_record(&stream);
                if let Some(mark) = to_record {
                    self.record(fed, stream, mark);
                }
            }
        }
    }

    /// A cluster peer confirmed the relays of `stream` through `up_to` (it has them).
    pub(super) fn relay_confirmed(
        self: &Arc<Self>,
        fed: &Arc<Federation>,
        peer: &str,
        stream: &str,
        up_to: u64,
    ) {
        let stream = StreamId::from(stream);
        let to_record = self.inbox.lock().relay_confirmed(&stream, peer, up_to);
        if let Some(mark) = to_record {
            self.record(fed, stream, mark);
        }
    }

    /// A cluster peer is linked again: each stream with relays it has not confirmed is asked
    /// for again, from the oldest, from the gateway that sends it here; the resends arrive as
    /// duplicates and the owed relays go out with them.
    fn peer_back(&self, fed: &Federation, peer: &str) {
        self.last_ask.lock().insert(peer.to_owned(), now_ms());
        let owing = self.inbox.lock().owing(peer);
        for (stream, first, sender) in owing {
            tracing::info!(%peer, %stream, from = first, %sender, "cluster peer back: asking for the relays it missed again");
            fed.try_send_control_to(
                &sender,
                Kind::SpoolNack(SpoolNack {
                    stream: stream.to_string(),
                    have: first - 1,
                }),
            );
        }
    }

    /// `peer`'s cluster link went down: its unconfirmed relays are held back from the oldest.
    pub(super) fn peer_cut(&self, peer: &str) {
        self.inbox.lock().peer_cut(peer);
    }

    /// `peer` is linked again: its relays go over the link again once it confirmed the
    /// held ones; the owed ones are asked for again.
    pub(super) fn peer_linked(&self, fed: &Federation, peer: &str) {
        self.inbox.lock().peer_linked(peer);
        self.peer_back(fed, peer);
    }

    /// `peer` stayed cut off past the grace period and the control plane still lists it (it
    /// may be alive, its subscribers connected): what it is owed, and every relay for it
    /// from now on, is written to this gateway's spool for it (held relays) and sent when it
    /// returns, so neither its subscribers nor the origin's confirmations wait on the cut.
    pub(super) fn peer_held(&self, fed: &Federation, peer: &str) {
        let owed = self.inbox.lock().owed_to(peer);
        tracing::warn!(%peer, owed, grace_ms = self.relay_grace_ms, "cluster peer cut off past the grace period: relays for it are kept in this gateway's spool until it returns");
        self.inbox.lock().hold(peer);
        self.peer_back(fed, peer);
    }

    /// Writes relay `seq` of `stream` for `peer` to this gateway's own spool queue for it (a
    /// held relay, carrying where it came from); once durable it counts as confirmed by the
    /// peer. With no room in the spool it is given up, counted and logged.
    fn hold_relay(
        self: &Arc<Self>,
        fed: &Arc<Federation>,
        peer: &str,
        stream: &StreamId,
        seq: u64,
        copy: Spooled,
    ) {
        let key = peer_key(peer);
        let Spooled { route, forward, .. } = copy;
        let relay_of = Some(RelayOf {
            stream: stream.to_string(),
            seq,
        });
        let appended = forward.map(|forward| {
            self.outbox
                .lock()
                .append_relay(&key, &route, forward, relay_of, now_ms())
        });
        let (spooled, removed) = match appended {
            Some(Ok(appended)) => appended,
            Some(Err(full)) => {
                tracing::warn!(%peer, %stream, seq, error = %full, "no room in the spool to hold a relay for a cluster peer cut off past the grace period; given up for it");
                self.metrics.relays_abandoned.inc();
                self.relay_confirmed(fed, peer, stream.as_str(), seq);
                return;
            }
            None => {
                self.relay_confirmed(fed, peer, stream.as_str(), seq);
                return;
            }
        };
        let at = spooled.seq;
        self.inbox.lock().held_at(peer, at);
        self.metrics.relays_held.inc();
        let mut ops = Vec::with_capacity(2);
        if let Some(r) = removed {
            self.lost(&r, SpoolLoss::Overflow);
            ops.push(Op::Delete {
                region: r.region,
                seqs: r.seqs,
            });
        }
        ops.push(Op::Append {
            region: key.clone(),
            spooled,
        });
        let (me, fed, peer, stream) = (self.clone(), fed.clone(), peer.to_owned(), stream.clone());
        let _ = self.writer.send(WriteBatch {
            ops,
            done: Some(Box::new(move |result| {
                match result {
                    Ok(()) => me.outbox.lock().committed(&key, at),
                    Err(e) => {
                        me.outbox.lock().forget(&key, &[at]);
                        tracing::error!(%peer, %stream, seq, error = %e, "could not write a held relay; given up for the peer");
                        me.metrics.relays_abandoned.inc();
                    }
                }
                me.relay_confirmed(&fed, &peer, stream.as_str(), seq);
                me.wake.notify_one();
            })),
        });
    }

    /// Asks again, at most once a second, for the relays a linked peer is still owed (the
    /// first request, or the resends, may have been lost).
    pub(super) fn reask(&self, fed: &Federation, peer: &str) {
        let due = self
            .last_ask
            .lock()
            .get(peer)
            .is_none_or(|t| now_ms() - t >= 1000);
        if due && !self.inbox.lock().owing(peer).is_empty() {
            self.peer_back(fed, peer);
        }
    }

    /// How long a cluster peer may be unlinked before relays stop waiting for it.
    pub(super) fn relay_grace_ms(&self) -> i64 {
        self.relay_grace_ms
    }

    /// A cluster peer is gone (cut off past the grace period, and the control plane no
    /// longer lists it): relays no longer wait for it.
    pub(super) fn peer_gone(self: &Arc<Self>, fed: &Arc<Federation>, peer: &str) {
        let owed = self.inbox.lock().owed_to(peer);
        if owed > 0 {
            tracing::warn!(%peer, owed, "cluster peer gone (no longer listed): relayed messages it had not confirmed are given up for it");
            self.metrics.relays_abandoned.inc_by(owed as u64);
        }
        let to_record = self.inbox.lock().peer_gone(peer);
        for (stream, mark) in to_record {
            self.record(fed, stream, mark);
        }
    }

    /// Records durably that `stream` was delivered (and relayed) through `seq`, then confirms
    /// it to the gateway that sends it, if due.
    fn record(self: &Arc<Self>, fed: &Arc<Federation>, stream: StreamId, seq: u64) {
        let me = self.clone();
        let fed = fed.clone();
        let Some((sender, link_id)) = self.inbox.lock().sender(&stream) else {
            return;
        };
        let region = self.inbox.lock().region(&stream).unwrap_or_default();
        let _ = self.writer.send(WriteBatch {
            ops: vec![Op::Received {
                stream: stream.clone(),
                region: region.clone(),
                seq,
            }],
            done: Some(Box::new(move |result| {
                if let Err(e) = result {
                    tracing::error!(%region, %stream, error = %e, "cannot record received spooled messages");
                    return;
                }
                let due = me.inbox.lock().recorded(&stream, seq, link_id);
                if let Some(up_to) = due {
                    me.confirm(&fed, &sender, &stream, up_to);
                }
            })),
        });
    }

    /// Confirms `stream` through `up_to` to the gateway that sends it (in a cluster, not
    /// necessarily the one this gateway's own traffic for that region goes through).
    fn confirm(&self, fed: &Federation, sender: &str, stream: &StreamId, up_to: u64) {
        fed.try_send_control_to(
            sender,
            Kind::SpoolAck(SpoolAck {
                up_to,
                stream: stream.to_string(),
            }),
        );
    }
}

/// The spool writer: a dedicated thread applying batches of operations, each group of
/// batches that arrived together in one durable transaction (group commit), then running
/// their completions in order.
fn start_writer(store: SpoolStore) -> mpsc::UnboundedSender<WriteBatch> {
    let (tx, mut rx) = mpsc::unbounded_channel::<WriteBatch>();
    std::thread::Builder::new()
        .name("nexus-spool-writer".into())
        .spawn(move || {
            while let Some(first) = rx.blocking_recv() {
                let mut batches = vec![first];
                while batches.len() < 4096 {
                    match rx.try_recv() {
                        Ok(b) => batches.push(b),
                        Err(_) => break,
                    }
                }
                let ops: Vec<Op> = batches.iter_mut().flat_map(|b| b.ops.drain(..)).collect();
                let result = store.apply(&ops).map_err(|e| e.to_string());
                if let Err(e) = &result {
                    tracing::error!(error = %e, "replication spool write failed");
                }
                for b in batches {
                    if let Some(done) = b.done {
                        done(result.clone());
                    }
                }
            }
        })
        .expect("spawn the spool writer thread");
    tx
}

/// The dedup key of a message published here: its 16-byte id (the session checked the
/// length; anything shorter is padded with zeros).
pub(super) fn message_id(msg: &MessageRef<'_>) -> MessageId {
    let mut id = [0u8; 16];
    let n = msg.id.len().min(16);
    id[..n].copy_from_slice(&msg.id[..n]);
    id
}
