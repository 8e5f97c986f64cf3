//! Requests and replies: routing a session's `Req` to a responder, its timeout, delivering
//! the reply (or the error) back, and taking a responder's `Reply` or `Nack` for a request
//! routed to it.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use nexus_proto::ByteString;
use nexus_proto::v1::{self, ErrorCode, frame::Kind};
use tokio::sync::mpsc;
use tokio_util::time::{DelayQueue, delay_queue};
use tracing::Instrument;

use super::Session;
use super::publish::message_id;
use crate::metrics::{Direction, Limit, Pattern};
use crate::router::{Completion, Router, Waiter, error, frame};
use crate::subject::validate_subject;
use crate::trace;
use crate::trace_store::{Event, Hop, Reason};

/// Longest request timeout a client may ask for.
const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);

/// The next answer to one of the session's requests; never, while it has made none.
pub(super) async fn next_completion(
    completions: &mut Option<(
        mpsc::UnboundedSender<Completion>,
        mpsc::UnboundedReceiver<Completion>,
    )>,
) -> Option<Completion> {
    match completions {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The next expired request timer; never, while the session has made no request (its timer
/// wheel is created with the first one: an idle session does not hold one).
pub(super) async fn next_expired(
    timers: &mut Option<DelayQueue<u64>>,
) -> Option<delay_queue::Expired<u64>> {
    match timers {
        Some(t) => t.next().await,
        None => std::future::pending().await,
    }
}

impl Session {
    pub(super) async fn on_req(&mut self, mut r: v1::Req) {
        if let Err(e) = validate_subject(&r.subject) {
            self.router.metrics.protocol_errors.inc();
            return self.send_reply(
                r.req_id,
                Err(error(ErrorCode::Invalid, e.to_string(), r.req_id)),
            );
        }
        // Recorded as received when traced; the router records where it went, and a refusal
        // here is recorded as a drop.
        let traced = match message_id(r.id.clone()) {
            Ok(id) => {
                r.id = id;
                self.trace_received(&r.id, &mut r.headers, &r.subject, r.payload.len())
            }
            Err(_) => None,
        };
        let refuse = |this: &Self, code: ErrorCode, message: String| {
            this.router.trace_hop(traced.as_ref(), || {
                let reason = match code {
                    ErrorCode::Limit => Reason::Limit,
                    ErrorCode::Denied => Reason::Denied,
                    _ if message.contains("schema") => Reason::Schema,
                    _ => Reason::Error,
                };
                Hop::new(Event::Dropped)
                    .reason(reason)
                    .detail(format!("refused: {message}"))
            });
            this.send_reply(r.req_id, Err(error(code, message, r.req_id)));
        };
        let codec = match self.check_payload(&r.headers, &r.payload, r.req_id) {
            Ok(codec) => codec,
            Err(e) => return refuse(self, e.code(), e.message),
        };
        if let Some(message) = self.may_publish(&r.subject) {
            return refuse(self, ErrorCode::Denied, message);
        }
        if let Err(message) = self.charge_key(r.payload.len()) {
            return refuse(self, ErrorCode::Limit, message);
        }
        if let Err(message) = self.check_schema(&r.subject, codec, &r.payload) {
            return refuse(self, ErrorCode::Invalid, message);
        }
        if self.req_ids.contains(&r.req_id) {
            self.router.metrics.protocol_errors.inc();
            return refuse(
                self,
                ErrorCode::Invalid,
                format!("req_id {} is already outstanding on this session", r.req_id),
            );
        }
        let max = self.router.config().limits.max_pending_requests;
        if self.requests.len() >= max as usize {
            self.router.metrics.limit(Limit::MaxPendingRequests);
            return refuse(
                self,
                ErrorCode::Limit,
                format!(
                    "limits.max_pending_requests ({max}) requests are already outstanding on this session"
                ),
            );
        }
        let id = match message_id(std::mem::take(&mut r.id)) {
            Ok(id) => id,
            Err(message) => return refuse(self, ErrorCode::Invalid, message),
        };
        let timeout = match r.timeout_ms {
            0 => self.router.config().request_timeout(),
            ms => Duration::from_millis(ms as u64).min(MAX_REQUEST_TIMEOUT),
        };
        self.router
            .metrics
            .traffic(Pattern::Request, Direction::In, r.payload.len());
        let span = tracing::debug_span!("nexus.request", subject = %r.subject, conn = self.conn.id);
        trace::link_span(&span, &mut r.headers);
        crate::provenance::stamp(&mut r.headers, self.publisher_key.as_ref());
        let waiter = Waiter::Session {
            tx: self
                .completions
                .get_or_insert_with(mpsc::unbounded_channel)
                .0
                .clone(),
            req_id: r.req_id,
        };
        let routed = self
            .router
            .request(waiter, &r.subject, r.headers, r.payload, id, timeout)
            .instrument(span)
            .await;
        match routed {
            Ok(seq) => {
                let key = self
                    .timers
                    .get_or_insert_with(DelayQueue::new)
                    .insert(seq, timeout);
                self.requests.insert(seq, (r.req_id, key));
                self.req_ids.insert(r.req_id);
            }
            Err((_, e)) => {
                let code = match e {
                    crate::router::RouteError::NoResponders(_) => ErrorCode::NoResponders,
                };
                self.send_reply(r.req_id, Err(error(code, e.to_string(), r.req_id)));
            }
        }
    }

    pub(super) async fn on_completion(&mut self, done: Completion) {
        if let Some((_, key)) = self.requests.remove(&done.seq)
            && let Some(timers) = &mut self.timers
        {
            timers.try_remove(&key);
        }
        self.req_ids.remove(&done.req_id);
        match done.result {
            Err(e) => self.send_reply(
                done.req_id,
                Err(v1::Error {
                    ref_id: done.req_id,
                    ..e
                }),
            ),
            Ok((headers, payload)) => {
                let len = payload.len();
                let size = crate::router::message_size("", "", &headers, len);
                let f = frame(Kind::Reply(v1::Reply {
                    req_id: done.req_id,
                    reply_to: ByteString::new(),
                    headers,
                    payload,
                    error: None,
                }));
                // The requester asked for this reply: it is never dropped, only delayed
                // (or the requester cut off as a slow consumer if it stopped reading).
                if self.router.deliver_owed(&self.conn, f, size).await {
                    self.router
                        .metrics
                        .traffic(Pattern::Reply, Direction::Out, len);
                }
            }
        }
    }

    /// Sends an error reply (small, so it goes as a control frame).
    pub(super) fn send_reply(&self, req_id: u64, result: crate::router::ReplyResult) {
        self.send_control(Kind::Reply(v1::Reply {
            req_id,
            reply_to: ByteString::new(),
            headers: Vec::new(),
            payload: Bytes::new(),
            error: result.err(),
        }));
    }

    pub(super) fn on_reply(&mut self, r: v1::Reply) {
        if let Err(e) = self.check_payload(&r.headers, &r.payload, 0) {
            let seq_err = error(
                ErrorCode::ServiceError,
                format!("the responder's reply was refused: {}", e.message),
                0,
            );
            self.answer(&r.reply_to, Err(seq_err), 0);
            return self.send_control(Kind::Error(e));
        }
        let result = match r.error {
            Some(e) => Err(error(ErrorCode::ServiceError, e.message, 0)),
            None => Ok((r.headers, r.payload)),
        };
        self.answer(&r.reply_to, result, 0);
    }

    pub(super) fn on_nack(&mut self, n: v1::Nack) {
        let message = n
            .error
            .map(|e| e.message)
            .unwrap_or_else(|| "the responder refused the request".into());
        self.answer(
            &n.reply_to,
            Err(error(ErrorCode::ServiceError, message, 0)),
            n.ack_id,
        );
    }

    /// Completes the request behind inbox `reply_to` with `result` from this responder.
    pub(super) fn answer(
        &mut self,
        reply_to: &str,
        result: crate::router::ReplyResult,
        ack_id: u64,
    ) {
        let Some(seq) = Router::inbox_seq(reply_to) else {
            return self.refuse(
                ErrorCode::Invalid,
                format!("{reply_to:?} is not a reply inbox this gateway issued"),
                0,
                ack_id,
            );
        };
        if let Ok((_, payload)) = &result {
            self.router
                .metrics
                .traffic(Pattern::Reply, Direction::In, payload.len());
        }
        // A reply for a request that already timed out is counted (late_replies) and
        // dropped; it is not an error for the responder.
        let _ = self.router.complete(seq, Some(self.conn.id), result);
        if ack_id != 0 {
            self.send_control(Kind::Ack(v1::Ack {
                ack_id,
                delivered: 1,
                ..Default::default()
            }));
        }
    }
}
