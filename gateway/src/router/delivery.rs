//! Delivery of published messages: to every member of the matching plain groups and one
//! member of each matching queue group, through each session's outbound budget, with the
//! slow-consumer policy applied when a budget is full.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nexus_proto::hot_frames::MsgRef;
use nexus_proto::v1::{self, ErrorCode, Frame, frame::Kind};
use tokio::time::Instant;

use super::{Delivery, Group, Member, MessageRef, Router, error, frame, message_size};
use crate::config::SlowConsumerPolicy;
use crate::connection::Connection;
use crate::metrics::{Direction, Pattern, SlowConsumerAction, SlowConsumerLabels};
use crate::outbound::{DeferredWakes, EnqueueError, MsgUnqueued};
use crate::trace_store::{Event, Hop, Reason, Traced};

/// Whether `group` is not one of the queue groups in `taken` (plain groups never are).
fn not_taken(group: &Group, taken: &[String]) -> bool {
    group
        .queue
        .as_deref()
        .is_none_or(|q| !taken.iter().any(|t| t == q))
}

impl Router {
    /// Routes a message to every matching subscription and hands it to the federation hook;
    /// returns how many local subscriptions received it, and what federation did with it
    /// (with the receipt to wait for before acknowledging the publisher when the subject's
    /// route replicates durably). A duplicate of a message federation already accepted is
    /// delivered nowhere.
    /// The last delivery takes the message's strings by move, so a message with one
    /// subscriber is routed without copying anything.
    pub async fn publish(
        &self,
        msg: Delivery,
        scratch: &mut Vec<Arc<Member>>,
    ) -> (u32, crate::remote::PublishOutcome) {
        let mut outcome = self.offer(&msg.as_ref(), scratch, None);
        if let Some(stored) = outcome.stored.take() {
            scratch.clear();
            if !matches!(stored.await, Ok(Ok(()))) {
                // Not stored: delivered nowhere; the receipt carries the error.
                return (0, outcome);
            }
            let taken = std::mem::take(&mut outcome.taken_groups);
            let delivered = self.deliver_local(msg, scratch, &taken).await;
            outcome.taken_groups = taken;
            return (delivered, outcome);
        }
        let delivered = self.deliver_collected(msg, scratch).await;
        if let Some(backlog) = outcome.backlog.take() {
            backlog.0.await;
        }
        (delivered, outcome)
    }

    /// The first half of [`Router::publish`], for a caller that keeps its own order of
    /// deliveries: hands `msg` to federation and collects its local subscribers into
    /// `scratch`. When the outcome's `stored` is set, `scratch` is cleared and the caller
    /// delivers with [`Router::deliver_local`] once it resolves; otherwise it delivers to
    /// `scratch` with [`Router::deliver_collected`] (nothing, for a duplicate).
    /// `cache` is the publishing session's [`MatchCache`](super::match_cache::MatchCache).
    pub fn offer(
        &self,
        msg: &MessageRef<'_>,
        scratch: &mut Vec<Arc<Member>>,
        cache: Option<&mut super::match_cache::MatchCache<Arc<Group>>>,
    ) -> crate::remote::PublishOutcome {
        self.taps
            .offer("publish", msg.id, msg.subject, msg.headers, msg.payload);
        match cache {
            Some(cache) => self.collect_members_cached(msg.subject, scratch, cache),
            None => self.collect_members(msg.subject, scratch, |_| true),
        }
        let outcome = match self.remote.get() {
            Some(remote) => remote.publish(msg, !scratch.is_empty()),
            None => {
                if scratch.is_empty() {
                    self.trace(msg, || {
                        Hop::new(Event::Dropped).reason(Reason::NoInterest).detail(
                            "no subscription matches its subject (this gateway has no federation)",
                        )
                    });
                }
                Default::default()
            }
        };
        if outcome.duplicate || outcome.stored.is_some() {
            scratch.clear();
        } else if !outcome.taken_groups.is_empty() {
            // A cluster peer takes some of the local queue groups' message: collect again
            // without them (rare enough not to track which member came from which group).
            self.collect_members(msg.subject, scratch, |g| {
                not_taken(g, &outcome.taken_groups)
            });
        }
        outcome
    }

    /// Delivers a message published here, once stored, to the local subscribers it has now,
    /// but for the queue groups a cluster peer took (`taken`, from the publish's outcome).
    pub async fn deliver_local(
        &self,
        msg: Delivery,
        scratch: &mut Vec<Arc<Member>>,
        taken: &[String],
    ) -> u32 {
        self.collect_members(&msg.subject, scratch, |g| not_taken(g, taken));
        self.deliver_collected(msg, scratch).await
    }

    /// Delivers a message that came from another region to local subscribers only: plain
    /// subscriptions if `plain`, and only the queue groups named in `queue_groups` (the
    /// sending region chose this region for those; it never forwards again).
    pub async fn deliver_from_region(
        &self,
        msg: Delivery,
        plain: bool,
        queue_groups: &[String],
    ) -> u32 {
        let mut msg = msg;
        msg.traced = self.traces.sampled(&msg.id, &msg.headers);
        let mut scratch = Vec::new();
        self.collect_members(&msg.subject, &mut scratch, |group| match &group.queue {
            Some(q) => queue_groups.iter().any(|g| **g == **q),
            None => plain,
        });
        self.deliver_collected(msg, &mut scratch).await
    }

    /// The members a message on `subject` goes to: every member of plain groups, one
    /// balancer-chosen member of each queue group.
    /// Only groups for which `wanted` is true are considered.
    fn collect_members(
        &self,
        subject: &str,
        scratch: &mut Vec<Arc<Member>>,
        wanted: impl Fn(&Group) -> bool,
    ) {
        scratch.clear();
        let mut now = None;
        let table = self.table.load();
        table.for_each_match(subject, |group| {
            if wanted(group) {
                self.add_members(group, scratch, &mut now);
            }
        });
    }

    /// [`Router::collect_members`] of every group, through a session's cache of the table's
    /// matches.
    fn collect_members_cached(
        &self,
        subject: &str,
        scratch: &mut Vec<Arc<Member>>,
        cache: &mut super::match_cache::MatchCache<Arc<Group>>,
    ) {
        scratch.clear();
        let mut now = None;
        // The generation first: a table stored after this load is one generation later.
        let generation = self.table_generation.load(Ordering::SeqCst);
        let table = self.table.load();
        cache.lookup(
            generation,
            subject,
            |f| table.for_each_match(subject, f),
            |group| self.add_members(group, scratch, &mut now),
        );
    }

    /// Adds the members of `group` a message goes to: all of a plain group, the balancer's
    /// pick of a queue group. The clock is read only when a queue group's balancer needs
    /// it: plain subscriptions (the common case) never do, and `clock_gettime` per message
    /// was ~2 % of the pub/sub profile.
    fn add_members(
        &self,
        group: &Group,
        scratch: &mut Vec<Arc<Member>>,
        now: &mut Option<Instant>,
    ) {
        if group.is_queue() {
            let now = *now.get_or_insert_with(Instant::now);
            if let Some(m) = group.pick(now) {
                self.metrics.balancer_picks.inc();
                scratch.push(m);
            }
        } else {
            scratch.extend(group.members.load().iter().cloned());
        }
    }

    /// Queues a message for each of `scratch`'s members. Under `backpressure`, the members
    /// whose budget is full are waited for *together*, after the others were served: one
    /// publish is delayed by at most `slow_consumer.max_wait_ms` however many subscribers are
    /// slow (waiting for them one after another made ten non-reading subscribers freeze a
    /// publisher for ten times that), and each one still full then is disconnected.
    /// Delivers a message to the local subscribers collected in `scratch` (by
    /// [`Router::offer`] or `collect_members`).
    pub async fn deliver_collected(&self, msg: Delivery, scratch: &mut Vec<Arc<Member>>) -> u32 {
        let delivered = self.deliver_now(&msg.as_ref(), scratch, &mut DeferredWakes::default());
        self.finish_delivery(delivered).await
    }

    /// The part of [`Router::deliver_collected`] that does not wait: queues the message for
    /// every member with room, applies the slow-consumer policy to the others, and returns
    /// those it must wait for under `backpressure` (none, usually: then the delivery is done
    /// without an `.await`). A member that takes the message as a frame of its own gets
    /// owned slices of its buffers (`MessageRef::to_delivery`), not copies. The subscribers'
    /// outbound streams are left for the caller to wake (`wakes`, woken when dropped): a
    /// session wakes them once per batch of publishes.
    pub fn deliver_now(
        &self,
        msg: &MessageRef<'_>,
        scratch: &mut Vec<Arc<Member>>,
        wakes: &mut DeferredWakes,
    ) -> Delivered {
        let payload_len = msg.payload.len();
        let size = message_size(msg.subject, msg.reply_to, msg.headers, payload_len);
        let traced = if msg.traced {
            Traced::new(msg.id, msg.headers, msg.subject)
        } else {
            None
        };
        // A plain payload is encoded into each subscriber's queue straight from `msg`; a
        // compressed one may need decoding for some sessions, which takes a frame.
        let plain = nexus_proto::encoding::find(msg.headers).is_none();
        let mut delivered = 0;
        let mut full: Vec<(Arc<Connection>, u64, Frame, u32)> = Vec::new();
        for member in scratch.drain(..) {
            if plain {
                let view = MsgRef {
                    sid: member.sid,
                    subject: msg.subject,
                    reply_to: msg.reply_to,
                    headers: msg.headers,
                    payload: msg.payload,
                    id: msg.id,
                    deadline_ms: 0,
                };
                let cost = member.conn.outbound.cost(size);
                match member.conn.outbound.try_send_msg(&view, cost, wakes) {
                    Ok(()) => {
                        self.metrics
                            .traffic(Pattern::Pub, Direction::Out, payload_len);
                        delivered += 1;
                        self.trace_delivery(traced.as_ref(), &member.conn, member.sid, true);
                        continue;
                    }
                    Err(MsgUnqueued::Closed) => {
                        self.trace_delivery(traced.as_ref(), &member.conn, member.sid, false);
                        continue;
                    }
                    // As a frame: a large payload is queued whole, and a full budget takes
                    // the slow-consumer policy, which may hand the frame back to wait.
                    Err(MsgUnqueued::Full | MsgUnqueued::AsFrame) => {}
                }
            }
            let m = v1::Msg {
                sid: member.sid,
                subject: msg.subject_owned(),
                reply_to: msg.reply_to_owned(),
                headers: msg.headers.to_vec(),
                payload: msg.payload_owned(),
                id: msg.id_owned(),
                deadline_ms: 0,
            };
            match self.offer_frame(&member.conn, frame(Kind::Msg(m)), size, Some(member.sid)) {
                Offer::Queued => {
                    self.metrics
                        .traffic(Pattern::Pub, Direction::Out, payload_len);
                    delivered += 1;
                    self.trace_delivery(traced.as_ref(), &member.conn, member.sid, true);
                }
                Offer::Refused => {
                    self.trace_delivery(traced.as_ref(), &member.conn, member.sid, false)
                }
                Offer::Wait(frame, cost) => {
                    full.push((member.conn.clone(), member.sid, frame, cost))
                }
            }
        }
        Delivered {
            count: delivered,
            full,
            traced,
            payload_len,
        }
    }

    /// Waits, together, for the members [`Router::deliver_now`] found full (module docs of
    /// `deliver_collected`); returns how many members got the message in all.
    pub async fn finish_delivery(&self, delivered: Delivered) -> u32 {
        let Delivered {
            mut count,
            full,
            traced,
            payload_len,
        } = delivered;
        if full.is_empty() {
            return count;
        }
        let waits = full.into_iter().map(|(conn, sid, frame, cost)| async move {
            let queued = self.wait_or_disconnect(&conn, frame, cost).await;
            (conn, sid, queued)
        });
        for (conn, sid, queued) in futures::future::join_all(waits).await {
            if queued {
                self.metrics
                    .traffic(Pattern::Pub, Direction::Out, payload_len);
                count += 1;
            }
            self.trace_delivery(traced.as_ref(), &conn, sid, queued);
        }
        count
    }

    /// Queues a message if its receiver's budget has room, else applies the slow-consumer
    /// policy without waiting: `Wait` hands the frame back when the policy is
    /// `backpressure`, for the caller to wait for room.
    fn offer_frame(
        &self,
        conn: &Arc<Connection>,
        frame: Frame,
        size: usize,
        sid: Option<u64>,
    ) -> Offer {
        let cost = conn.outbound.cost(size);
        let frame = match conn.outbound.try_send(frame, cost) {
            Ok(()) => return Offer::Queued,
            Err(EnqueueError::Closed) => return Offer::Refused,
            Err(EnqueueError::Full(frame)) => frame,
        };
        let policy = self.cfg.load().slow_consumer.policy;
        match policy {
            SlowConsumerPolicy::Drop => {
                self.slow_consumer_event(SlowConsumerAction::Dropped);
                self.notify_slow_consumer(conn, sid.unwrap_or(0));
                Offer::Refused
            }
            SlowConsumerPolicy::Disconnect => {
                self.disconnect_slow_consumer(conn);
                Offer::Refused
            }
            SlowConsumerPolicy::Backpressure => Offer::Wait(frame, cost),
        }
    }

    /// Queues a message for a subscriber, applying the slow-consumer policy when its budget
    /// is full. `size` is from `message_size`. Returns whether the frame was queued.
    pub async fn deliver(
        &self,
        conn: &Arc<Connection>,
        frame: Frame,
        size: usize,
        sid: Option<u64>,
    ) -> bool {
        match self.offer_frame(conn, frame, size, sid) {
            Offer::Queued => true,
            Offer::Refused => false,
            Offer::Wait(frame, cost) => self.wait_or_disconnect(conn, frame, cost).await,
        }
    }

    /// Queues a frame the receiver asked for (a reply to its request, stream data within
    /// the credit it granted): never dropped under any policy. When the budget is full it
    /// waits up to `slow_consumer.max_wait_ms`, then closes the receiver as a slow consumer
    /// and returns false.
    pub async fn deliver_owed(&self, conn: &Arc<Connection>, frame: Frame, size: usize) -> bool {
        let cost = conn.outbound.cost(size);
        match conn.outbound.try_send(frame, cost) {
            Ok(()) => true,
            Err(EnqueueError::Closed) => false,
            Err(EnqueueError::Full(frame)) => self.wait_or_disconnect(conn, frame, cost).await,
        }
    }

    /// Waits up to `slow_consumer.max_wait_ms` for room in a full budget; if none came,
    /// closes the receiver as a slow consumer. Returns whether the frame was queued.
    async fn wait_or_disconnect(&self, conn: &Arc<Connection>, frame: Frame, cost: u32) -> bool {
        self.slow_consumer_event(SlowConsumerAction::Waited);
        let wait = Duration::from_millis(self.cfg.load().slow_consumer.max_wait_ms);
        match conn.outbound.send_wait(frame, cost, wait).await {
            Ok(()) => true,
            Err(EnqueueError::Closed) => false,
            Err(EnqueueError::Full(_)) => {
                self.disconnect_slow_consumer(conn);
                false
            }
        }
    }

    fn slow_consumer_event(&self, action: SlowConsumerAction) {
        self.metrics
            .slow_consumer
            .get_or_create(&SlowConsumerLabels { action })
            .inc();
    }

    fn disconnect_slow_consumer(&self, conn: &Arc<Connection>) {
        if conn.outbound.is_closed() {
            return;
        }
        self.slow_consumer_event(SlowConsumerAction::Disconnected);
        tracing::warn!(conn = conn.id, name = %nexus_proto::text::Escaped(&conn.name.lock()), "disconnecting slow consumer");
        let cfg = self.cfg.load();
        conn.outbound.close(Some(tonic::Status::resource_exhausted(format!(
            "slow consumer: more than slow_consumer.max_pending_bytes ({} bytes) queued for this session for longer than {} ms (policy {})",
            cfg.slow_consumer.max_pending_bytes,
            cfg.slow_consumer.max_wait_ms,
            cfg.slow_consumer.policy.as_str(),
        ))));
    }

    /// Tells a subscriber that messages were dropped for it, at most once a second, as a
    /// control frame (so the notice itself is never dropped).
    fn notify_slow_consumer(&self, conn: &Arc<Connection>, sid: u64) {
        let now = self.elapsed_ms().max(1);
        let last = conn.last_slow_notice_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < 1000 {
            return;
        }
        conn.last_slow_notice_ms.store(now, Ordering::Relaxed);
        let f = frame(Kind::Error(error(
            ErrorCode::SlowConsumer,
            format!(
                "messages for subscription {sid} were dropped: more than slow_consumer.max_pending_bytes ({} bytes) queued (policy drop)",
                self.cfg.load().slow_consumer.max_pending_bytes
            ),
            sid,
        )));
        conn.outbound.send_control(f);
    }
}

/// A delivery [`Router::deliver_now`] made, and the full members it still waits for.
pub struct Delivered {
    count: u32,
    full: Vec<(Arc<Connection>, u64, Frame, u32)>,
    traced: Option<Traced>,
    payload_len: usize,
}

impl Delivered {
    /// Members that got the message, when nothing is left to wait for; `None` while some
    /// wait ([`Router::finish_delivery`]).
    pub fn done(&self) -> Option<u32> {
        self.full.is_empty().then_some(self.count)
    }
}

/// What [`Router::offer_frame`] did with a message.
enum Offer {
    Queued,
    /// Not queued: the session is closed, or the policy dropped it or cut the receiver off.
    Refused,
    /// The budget is full and the policy is `backpressure`: wait for room with this frame
    /// and cost.
    Wait(Frame, u32),
}
