//! Requests: one responder picked by the balancer (or another gateway or region, through the
//! federation hook), the pending request kept in a sharded map keyed by its sequence number
//! (also the responder's reply inbox, `$nexus.inbox.<seq>`), and its completion by the reply,
//! a timeout or the responder's departure, which feeds the balancer.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use nexus_proto::v1::{self, ErrorCode, Header, frame::Kind};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::trace_hops::reply_hop;
use super::{
    Group, INBOX_PREFIX, Member, PENDING_SHARDS, RouteError, Router, error, frame, message_size,
};
use crate::balancer::{EjectReason, Ejection, MemberId};
use crate::connection::Connection;
use crate::metrics::{Direction, EjectionLabels, EjectionReason, Pattern, RequestOutcome};
use crate::trace_store::{Event, Hop, Reason, Traced};

/// The answer a requester gets.
pub type ReplyResult = Result<(Vec<Header>, Bytes), v1::Error>;

/// Where a request's answer goes.
pub enum Waiter {
    /// A session: the completion is sent to the session task, which owns the request timer.
    Session {
        tx: mpsc::UnboundedSender<Completion>,
        req_id: u64,
    },
    /// A unary `Request` call.
    Unary(oneshot::Sender<ReplyResult>),
}

impl Waiter {
    /// Hands request `seq`'s answer to whoever waits for it (gone waiters are ignored).
    fn finish(self, seq: u64, result: ReplyResult) {
        match self {
            Waiter::Session { tx, req_id } => {
                let _ = tx.send(Completion {
                    req_id,
                    seq,
                    result,
                });
            }
            Waiter::Unary(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

/// A finished request, delivered to the requesting session.
pub struct Completion {
    pub req_id: u64,
    pub seq: u64,
    pub result: ReplyResult,
}

pub(super) struct Pending {
    waiter: Waiter,
    group: Arc<Group>,
    member: MemberId,
    responder: Arc<Connection>,
    started: Instant,
    /// The request's trace handle when it is traced.
    traced: Option<Traced>,
}

impl Router {
    /// Picks a responder for `subject` and delivers the request to it. The answer arrives
    /// through `waiter`; the returned sequence number identifies the request for `timeout`.
    #[allow(clippy::too_many_arguments)]
    pub async fn request(
        &self,
        waiter: Waiter,
        subject: &str,
        headers: Vec<Header>,
        payload: Bytes,
        id: Bytes,
        timeout: Duration,
    ) -> Result<u64, (Waiter, RouteError)> {
        self.request_inner(waiter, subject, headers, payload, id, timeout, true)
            .await
    }

    /// A request that arrived from another region: served by local responders only, so a
    /// request crosses at most one region hop and can never loop.
    pub async fn request_from_region(
        &self,
        waiter: Waiter,
        subject: &str,
        headers: Vec<Header>,
        payload: Bytes,
        id: Bytes,
        timeout: Duration,
    ) -> Result<u64, (Waiter, RouteError)> {
        self.request_inner(waiter, subject, headers, payload, id, timeout, false)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn request_inner(
        &self,
        waiter: Waiter,
        subject: &str,
        headers: Vec<Header>,
        payload: Bytes,
        id: Bytes,
        timeout: Duration,
        allow_remote: bool,
    ) -> Result<u64, (Waiter, RouteError)> {
        let now = Instant::now();
        if allow_remote {
            // Requests from a client of this gateway (not from another region).
            self.taps.offer("request", &id, subject, &headers, &payload);
        }
        let traced = if self.traces.sampled(&id, &headers) {
            Traced::new(&id, &headers, subject)
        } else {
            None
        };
        if allow_remote && let Some(t) = &traced {
            // The requesting adapter's own span, at the gateway it sent the request to.
            if let Some(span) = super::trace_hops::adapter_span(&headers) {
                self.trace_hop(Some(t), || span);
            }
        }
        let remote = if allow_remote {
            self.remote.get()
        } else {
            None
        };
        // A route pinned (or weighted) to other regions sends requests there even when this
        // region has responders; otherwise a local responder, unless another gateway of the
        // region is cheaper (the gateway balancer, hop included).
        let remote_first = remote.is_some_and(|r| r.prefers_remote_responders(subject));
        let mut picked = if remote_first {
            None
        } else {
            self.pick_responder(subject, now)
        };
        let (mut headers, mut payload) = (headers, payload);
        if let Some(remote) = remote {
            let local = picked.as_ref().and_then(|(g, m)| g.cost_of(m, now));
            if picked.is_none() || local.is_some() {
                match remote.request(subject, &id, headers, payload, timeout, local) {
                    Ok(rx) => {
                        return Ok(self.await_remote(waiter, rx, timeout, now, traced));
                    }
                    Err((h, p)) => (headers, payload) = (h, p),
                }
            }
            if remote_first {
                // The preferred regions are unreachable: local responders after all.
                picked = self.pick_responder(subject, now);
            }
        }
        let Some((group, member)) = picked else {
            self.trace_hop(traced.as_ref(), || {
                Hop::new(Event::Dropped)
                    .reason(Reason::NoInterest)
                    .detail("no responder for its subject at this gateway")
            });
            self.metrics.request_done(RequestOutcome::NoResponders);
            return Err((waiter, RouteError::NoResponders(subject.to_owned())));
        };
        let seq = self.next_id();
        self.trace_hop(traced.as_ref(), || {
            let of = match group.queue.as_deref() {
                Some(q) => format!("queue group {q:?} of {}", group.pattern),
                None => format!("subscription to {}", group.pattern),
            };
            Hop::new(Event::RequestRouted).peer(format!(
                "session {} {:?} sid {} ({of})",
                member.conn.id,
                &*member.conn.name.lock(),
                member.sid,
            ))
        });
        member.conn.serving.lock().insert(seq);
        group.balancer.lock().start(member.id);
        self.pending_shard(seq).lock().insert(
            seq,
            Pending {
                waiter,
                group: group.clone(),
                member: member.id,
                responder: member.conn.clone(),
                started: now,
                traced,
            },
        );
        self.pending_count.fetch_add(1, Ordering::Relaxed);
        let payload_len = payload.len();
        let reply_to = format!("{INBOX_PREFIX}{seq}");
        let size = message_size(subject, &reply_to, &headers, payload_len);
        let f = frame(Kind::Msg(v1::Msg {
            sid: member.sid,
            subject: subject.into(),
            reply_to: reply_to.into(),
            headers,
            payload,
            id,
            deadline_ms: timeout.as_millis().min(u32::MAX as u128) as u32,
        }));
        if self.deliver(&member.conn, f, size, Some(member.sid)).await {
            self.metrics
                .traffic(Pattern::Request, Direction::Out, payload_len);
        } else {
            self.complete(
                seq,
                None,
                Err(error(
                    ErrorCode::ServiceError,
                    "the chosen responder could not take the request (its session closed or is a slow consumer)",
                    0,
                )),
            );
        }
        Ok(seq)
    }

    /// Waits in a task for the answer to a request another gateway or region took, and
    /// completes `waiter` with it; returns the request's sequence number.
    fn await_remote(
        &self,
        waiter: Waiter,
        rx: tokio::sync::oneshot::Receiver<ReplyResult>,
        timeout: Duration,
        started: Instant,
        traced: Option<Traced>,
    ) -> u64 {
        let seq = self.next_id();
        let metrics = self.metrics.clone();
        let traces = traced.map(|t| (t, self.traces.clone()));
        tokio::spawn(async move {
            let result = match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(error(
                    ErrorCode::ServiceError,
                    "the federation link went away before the reply",
                    0,
                )),
                Err(_) => Err(error(ErrorCode::Timeout, "request timed out", 0)),
            };
            metrics.request_done(match &result {
                Ok(_) => RequestOutcome::Ok,
                Err(e) if e.code == ErrorCode::Timeout as i32 => RequestOutcome::Timeout,
                Err(e) if e.code == ErrorCode::NoResponders as i32 => RequestOutcome::NoResponders,
                Err(_) => RequestOutcome::ServiceError,
            });
            metrics
                .request_duration
                .observe(started.elapsed().as_secs_f64());
            if let Some((t, store)) = traces {
                store.record(
                    &t,
                    crate::trace_store::now_us(),
                    reply_hop(&result, started.elapsed()),
                );
            }
            waiter.finish(seq, result);
        });
        seq
    }

    fn pending_shard(&self, seq: u64) -> &Mutex<HashMap<u64, Pending>> {
        &self.pending[(seq % PENDING_SHARDS as u64) as usize]
    }

    /// Parses the sequence number out of an inbox subject.
    pub fn inbox_seq(reply_to: &str) -> Option<u64> {
        reply_to.strip_prefix(INBOX_PREFIX)?.parse().ok()
    }

    /// Finishes request `seq`. `from` is the connection answering; a reply from any other
    /// connection than the one the request was given to is ignored (returns false).
    pub fn complete(&self, seq: u64, from: Option<u64>, result: ReplyResult) -> bool {
        let pending = {
            let mut shard = self.pending_shard(seq).lock();
            match shard.get(&seq) {
                Some(p) if from.is_none_or(|id| id == p.responder.id) => shard.remove(&seq),
                Some(_) => {
                    // An answer from a session the request was not given to.
                    self.metrics.protocol_errors.inc();
                    return false;
                }
                None => None,
            }
        };
        let Some(p) = pending else {
            if from.is_some() {
                self.metrics.late_replies.inc();
            }
            return false;
        };
        self.pending_count.fetch_sub(1, Ordering::Relaxed);
        p.responder.serving.lock().remove(&seq);
        let elapsed = p.started.elapsed();
        let now = Instant::now().into_std();
        let (outcome, ejection) = match &result {
            Ok(_) => (
                RequestOutcome::Ok,
                p.group.balancer.lock().success(p.member, elapsed, now),
            ),
            Err(e) if e.code == ErrorCode::Timeout as i32 => (
                RequestOutcome::Timeout,
                p.group.balancer.lock().failure(p.member, now),
            ),
            Err(_) => (
                RequestOutcome::ServiceError,
                p.group.balancer.lock().failure(p.member, now),
            ),
        };
        if let Some(ejection) = ejection {
            self.record_ejection(&p.group, &ejection);
        }
        self.metrics.request_done(outcome);
        self.metrics.request_duration.observe(elapsed.as_secs_f64());
        if let (Some(t), Ok((headers, _))) = (&p.traced, &result)
            && let Some(span) = super::trace_hops::adapter_span(headers)
        {
            // The responding adapter's handler span, at the responder's gateway.
            self.trace_hop(Some(t), || span);
        }
        self.trace_hop(p.traced.as_ref(), || reply_hop(&result, elapsed));
        p.waiter.finish(seq, result);
        true
    }

    /// The requester went away: forget the request without charging the responder.
    pub fn cancel(&self, seq: u64) {
        let Some(p) = self.pending_shard(seq).lock().remove(&seq) else {
            return;
        };
        self.pending_count.fetch_sub(1, Ordering::Relaxed);
        p.responder.serving.lock().remove(&seq);
        p.group.balancer.lock().cancel(p.member);
        self.metrics.request_done(RequestOutcome::Cancelled);
    }

    fn record_ejection(&self, group: &Group, ejection: &Ejection) {
        let reason = match ejection.reason {
            EjectReason::ConsecutiveFailures => EjectionReason::ConsecutiveFailures,
            EjectReason::Latency => EjectionReason::Latency,
        };
        tracing::warn!(
            pattern = %group.pattern,
            queue = group.queue.as_deref().unwrap_or(""),
            member = ejection.member,
            period_ms = ejection.period.as_millis() as u64,
            ?reason,
            "balancer ejected a member"
        );
        self.metrics
            .balancer_ejections
            .get_or_create(&EjectionLabels { reason })
            .inc();
    }

    /// A session ended: fail the requests it was serving, so their requesters learn at once.
    pub fn connection_gone(&self, conn: &Arc<Connection>) {
        let serving: Vec<u64> = conn.serving.lock().drain().collect();
        for seq in serving {
            self.complete(
                seq,
                None,
                Err(error(
                    ErrorCode::ServiceError,
                    "the responder disconnected before answering",
                    0,
                )),
            );
        }
        crate::streams::connection_gone(self, conn);
    }

    /// Picks a responder for a stream open; shares the request path's choice.
    pub fn pick_stream_acceptor(&self, subject: &str) -> Option<(Arc<Group>, Arc<Member>)> {
        self.pick_responder(subject, Instant::now())
            .inspect(|(g, m)| g.balancer.lock().start(m.id))
    }

    pub fn stream_finished(&self, group: &Group, member: MemberId) {
        group.balancer.lock().cancel(member);
    }
}
