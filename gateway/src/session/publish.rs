//! Publishes: the checks a `Pub` passes (subject, id, payload size and encoding, publish
//! scope, key limits, schema), routing it, and acknowledging it: at once, or once a durable
//! route has stored it. A publish that waits for nothing (the usual case) is applied without
//! an `.await` ([`Session::publish_now`]); one that waits for room at a full subscriber, for
//! a cluster link's backlog, or for the spool continues in [`Session::finish_publish`].

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use nexus_proto::encoding::Codec;
use nexus_proto::hot_frames::PubView;
use nexus_proto::v1::{self, ErrorCode, frame::Kind};
use tracing::Instrument;

use super::Session;
use crate::metrics::{Direction, Limit, Pattern};
use crate::remote::{Backlog, PublishOutcome, PublishReceipt};
use crate::router::{Delivered, Delivery, MessageRef, error, frame, owned_slice};
use crate::subject::{self, validate_subject};
use crate::trace;
use crate::trace_store::{Event, Hop, Reason, Traced};

/// Publishes of one session waiting for the spool before their local delivery; beyond this
/// the session stops reading until the oldest is stored.
const MAX_HELD_PUBLISHES: usize = 4096;

/// A publish whose local delivery waits: for its message to be stored (`async` and `sync`
/// routes), or behind one that does, so that subscribers get this session's messages in the
/// order it published them.
pub(super) struct HeldPublish {
    pub(super) stored: Option<PublishReceipt>,
    pub(super) delivery: Delivery,
    pub(super) ack_id: u64,
    pub(super) outcome: PublishOutcome,
}

/// A publish as [`Session::publish_now`] takes it, borrowed: from the batch it arrived in
/// (the native transport's [`PubView`]), or from a decoded `Pub` (gRPC). Its headers go
/// beside it, in a vector the checks may change (a traceparent, the publisher's key).
pub(super) struct IncomingPub<'a> {
    subject: &'a str,
    reply_to: &'a str,
    payload: &'a [u8],
    id: &'a [u8],
    ack_id: u64,
    /// The buffers the fields are slices of ([`MessageRef`]).
    sources: [&'a Bytes; 4],
}

impl<'a> IncomingPub<'a> {
    /// A publish read in place from its batch.
    pub(super) fn in_batch(p: PubView<'a>) -> Self {
        IncomingPub {
            subject: p.subject,
            reply_to: p.reply_to,
            payload: p.payload,
            id: p.id,
            ack_id: p.ack_id,
            sources: [p.buffer; 4],
        }
    }

    /// A decoded publish (its headers taken out).
    pub(super) fn decoded(p: &'a v1::Pub) -> Self {
        IncomingPub {
            subject: &p.subject,
            reply_to: &p.reply_to,
            payload: &p.payload,
            id: &p.id,
            ack_id: p.ack_id,
            sources: crate::router::sources(&p.subject, &p.reply_to, &p.payload, &p.id),
        }
    }
}

/// What is left of a publish that waits (see [`Session::publish_now`]).
pub(super) enum PublishRest {
    /// Delivered where there was room; waits for full subscribers and a full cluster link,
    /// then acknowledges.
    Delivering {
        delivered: Delivered,
        backlog: Option<Backlog>,
        ack_id: u64,
        outcome: PublishOutcome,
        span: tracing::Span,
    },
    /// Its local delivery waits for the spool, or behind one that does.
    Held {
        held: HeldPublish,
        backlog: Option<Backlog>,
    },
}

/// Counts one Ack in flight until dropped (also when its task ends early).
struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Waits until the oldest held publish may be delivered; whether it was stored.
pub(super) async fn oldest_stored(held: &mut VecDeque<HeldPublish>) -> bool {
    match held.front_mut().and_then(|h| h.stored.as_mut()) {
        Some(stored) => matches!(stored.await, Ok(Ok(()))),
        None => true,
    }
}

/// The id a publisher gave its message, or a new ULID when it gave none; an id of another
/// length than 16 bytes is refused with the message to send back.
pub(crate) fn message_id(id: Bytes) -> Result<Bytes, String> {
    match id.len() {
        16 => Ok(id),
        0 => Ok(Bytes::copy_from_slice(&ulid::Ulid::new().to_bytes())),
        n => Err(bad_id(n)),
    }
}

/// [`message_id`] for a borrowed id: a new one is made in `made`.
fn message_id_in<'a>(id: &'a [u8], made: &'a mut [u8; 16]) -> Result<&'a [u8], String> {
    match id.len() {
        16 => Ok(id),
        0 => {
            *made = ulid::Ulid::new().to_bytes();
            Ok(made)
        }
        n => Err(bad_id(n)),
    }
}

fn bad_id(len: usize) -> String {
    format!("message id must be 16 bytes (a ULID) or empty, not {len} bytes")
}

impl Session {
    /// Checks a payload's size and, when it is compressed, its encoding header (codec and
    /// declared size, without decompressing: [`crate::payload_encoding::check_in`]). `Ok`
    /// carries the codec of a compressed payload.
    pub(super) fn check_payload(
        &self,
        headers: &[v1::Header],
        payload: &[u8],
        ref_id: u64,
    ) -> Result<Option<Codec>, v1::Error> {
        let max = self.max_payload();
        let len = payload.len();
        if len as u64 > max {
            self.router.metrics.limit(Limit::MaxPayload);
            return Err(error(
                ErrorCode::Limit,
                format!("payload of {len} bytes exceeds limits.max_payload ({max} bytes)"),
                ref_id,
            ));
        }
        crate::payload_encoding::check_in(
            headers,
            payload,
            max as usize,
            &self.router.metrics.encoding,
        )
        .map_err(|(code, message)| {
            if code == ErrorCode::Limit {
                self.router.metrics.limit(Limit::MaxPayload);
            }
            error(code, message, ref_id)
        })
    }

    /// [`Router::check_schema`] on the plain payload: a compressed payload is decompressed
    /// (bounded) only when the subject has an enforced schema.
    pub(super) fn check_schema(
        &self,
        subject: &str,
        codec: Option<Codec>,
        payload: &[u8],
    ) -> Result<(), String> {
        if codec.is_some() && !self.with_policy(|p| p.schemas.contains_key(subject)) {
            return Ok(());
        }
        let plain = crate::payload_encoding::plain_for_check(
            codec,
            payload,
            self.max_payload() as usize,
            &self.router.metrics.encoding,
        )?;
        self.with_policy(|policy| self.router.check_schema_in(policy, subject, &plain))
    }

    /// Applies a publish as far as it goes without waiting: checks, routes and, when nothing
    /// is left to wait for, acknowledges it. `Some` is the rest, for [`Session::finish_publish`].
    /// The message is routed borrowed ([`MessageRef`]); it is owned only where it outlives
    /// this call (held for the spool, a frame of its own for a subscriber).
    pub(super) fn publish_now(
        &mut self,
        p: IncomingPub<'_>,
        headers: &mut Vec<v1::Header>,
    ) -> Option<PublishRest> {
        let ack_id = p.ack_id;
        if p.subject.starts_with(crate::router::INBOX_PREFIX) {
            // A responder answering with a plain publish to its reply inbox.
            if let Err(e) = self.check_payload(headers, p.payload, ack_id) {
                let refused = error(
                    ErrorCode::ServiceError,
                    format!("the responder's reply was refused: {}", e.message),
                    0,
                );
                self.answer(p.subject, Err(refused), 0);
                self.refuse(e.code(), e.message, ack_id, ack_id);
                return None;
            }
            let payload = owned_slice(&p.sources, p.payload);
            self.answer(p.subject, Ok((std::mem::take(headers), payload)), ack_id);
            return None;
        }
        if let Err(e) = validate_subject(p.subject) {
            self.refuse(ErrorCode::Invalid, e.to_string(), ack_id, ack_id);
            return None;
        }
        if !p.reply_to.is_empty()
            && let Err(e) = subject::validate_reply_subject(p.reply_to)
        {
            self.refuse(ErrorCode::Invalid, format!("reply_to: {e}"), ack_id, ack_id);
            return None;
        }
        // The id first, so that a refused message can be traced too.
        let mut made = [0; 16];
        let id = match message_id_in(p.id, &mut made) {
            Ok(id) => id,
            Err(message) => {
                self.refuse(ErrorCode::Invalid, message, ack_id, ack_id);
                return None;
            }
        };
        let traced = self.trace_received(id, headers, p.subject, p.payload.len());
        let refused = |this: &Self, reason: Reason, message: &str| {
            this.router.trace_hop(traced.as_ref(), || {
                Hop::new(Event::Dropped)
                    .reason(reason)
                    .detail(format!("refused: {message}"))
            });
        };
        let codec = match self.check_payload(headers, p.payload, ack_id) {
            Ok(codec) => codec,
            Err(e) => {
                refused(self, Reason::Limit, &e.message);
                self.refuse(e.code(), e.message, ack_id, ack_id);
                return None;
            }
        };
        if let Some(message) = self.may_publish(p.subject) {
            refused(self, Reason::Denied, &message);
            self.refuse(ErrorCode::Denied, message, ack_id, ack_id);
            return None;
        }
        if let Err(message) = self.charge_key(p.payload.len()) {
            refused(self, Reason::Limit, &message);
            self.refuse(ErrorCode::Limit, message, ack_id, ack_id);
            return None;
        }
        if let Err(message) = self.check_schema(p.subject, codec, p.payload) {
            refused(self, Reason::Schema, &message);
            self.refuse(ErrorCode::Invalid, message, ack_id, ack_id);
            return None;
        }
        if traced.is_some() {
            self.router
                .trace_schema_passed(traced.as_ref(), p.subject, p.payload);
        }
        self.router
            .metrics
            .traffic(Pattern::Pub, Direction::In, p.payload.len());
        let span = tracing::debug_span!("nexus.publish", subject = %p.subject, conn = self.conn.id);
        trace::link_span(&span, headers);
        crate::provenance::stamp(headers, self.publisher_key.as_ref());
        let msg = MessageRef::new(p.sources, p.subject, p.reply_to, headers, p.payload, id)
            .traced(traced.is_some());
        let mut outcome = self
            .router
            .offer(&msg, &mut self.scratch, Some(&mut self.match_cache));
        let stored = outcome.stored.take();
        let backlog = outcome.backlog.take();
        if stored.is_none() && self.held.is_empty() {
            let delivered = span.in_scope(|| {
                self.router
                    .deliver_now(&msg, &mut self.scratch, &mut self.wakes)
            });
            if let (Some(count), None) = (delivered.done(), &backlog) {
                self.acknowledge(ack_id, count, outcome);
                return None;
            }
            return Some(PublishRest::Delivering {
                delivered,
                backlog,
                ack_id,
                outcome,
                span,
            });
        }
        Some(PublishRest::Held {
            held: HeldPublish {
                stored,
                delivery: msg.to_delivery(),
                ack_id,
                outcome,
            },
            backlog,
        })
    }

    /// The rest of a publish [`Session::publish_now`] could not finish. Wakes the streams
    /// deliveries were queued for first: it waits (for a full subscriber's stream, among
    /// others).
    pub(super) async fn finish_publish(&mut self, rest: PublishRest) {
        self.wakes.wake_all();
        match rest {
            PublishRest::Delivering {
                delivered,
                backlog,
                ack_id,
                outcome,
                span,
            } => {
                let delivered = self
                    .router
                    .finish_delivery(delivered)
                    .instrument(span)
                    .await;
                // Other gateways of the region with a full cluster link: this session's next
                // frame waits for room there, as for a full local subscriber.
                if let Some(backlog) = backlog {
                    backlog.0.await;
                }
                self.acknowledge(ack_id, delivered, outcome);
            }
            PublishRest::Held { held, backlog } => {
                if let Some(backlog) = backlog {
                    backlog.0.await;
                }
                self.held.push_back(held);
                while self.held.len() > MAX_HELD_PUBLISHES {
                    let stored = oldest_stored(&mut self.held).await;
                    self.release_oldest(stored).await;
                }
            }
        }
    }

    /// Records that this session handed the gateway message `id`, when it is traced (sampled
    /// or forced); the handle to record its other hops with.
    pub(super) fn trace_received(
        &self,
        id: &[u8],
        headers: &mut Vec<v1::Header>,
        subject: &str,
        len: usize,
    ) -> Option<Traced> {
        if !self.router.traces.sampled(id, headers) {
            return None;
        }
        // A traced message gets its traceparent now, so every record carries its trace id.
        trace::ensure_traceparent(headers);
        let traced = Traced::new(id, headers, subject)?;
        self.router.trace_hop(Some(&traced), || {
            let key = self.publisher_key.as_deref().unwrap_or("-");
            Hop::new(Event::Received)
                .peer(format!(
                    "session {} {:?} key {key}",
                    self.conn.id,
                    &*self.conn.name.lock()
                ))
                .detail(format!("{len} bytes"))
        });
        Some(traced)
    }

    /// Delivers the oldest held publish locally (if it was stored) and acknowledges it.
    pub(super) async fn release_oldest(&mut self, stored: bool) {
        let Some(h) = self.held.pop_front() else {
            return;
        };
        let delivered = if stored && !h.outcome.duplicate {
            self.router
                .deliver_local(h.delivery, &mut self.scratch, &h.outcome.taken_groups)
                .await
        } else {
            0
        };
        self.acknowledge(h.ack_id, delivered, h.outcome);
    }

    /// Acknowledges a publish (when it asked for it): at once, or, on a route that
    /// replicates durably, once the spool (async) or the regions (sync) have it, without
    /// holding up this session's other frames. A publish without ack_id that fails its
    /// contract still gets an Error frame.
    pub(super) fn acknowledge(&self, ack_id: u64, delivered: u32, outcome: PublishOutcome) {
        let ack = move || {
            Kind::Ack(v1::Ack {
                ack_id,
                delivered,
                forwarded_regions: outcome.forwarded,
                spooled_regions: outcome.spooled,
                duplicate: outcome.duplicate,
            })
        };
        match outcome.receipt {
            None if ack_id != 0 => self.send_control(ack()),
            None => {}
            Some(receipt) => {
                let conn = self.conn.clone();
                let in_flight = self.acks_in_flight.clone();
                in_flight.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                tokio::spawn(async move {
                    let _counted = InFlight(in_flight);
                    let result = receipt.await.unwrap_or_else(|_| {
                        Err(error(ErrorCode::Unavailable, "gateway is shutting down", 0))
                    });
                    let kind = match result {
                        Ok(()) if ack_id == 0 => return,
                        Ok(()) => ack(),
                        Err(mut e) => {
                            e.ref_id = ack_id;
                            if ack_id == 0 {
                                Kind::Error(e)
                            } else {
                                Kind::Nack(v1::Nack {
                                    ack_id,
                                    reply_to: String::new(),
                                    error: Some(e),
                                })
                            }
                        }
                    };
                    conn.outbound.send_control(frame(kind));
                });
            }
        }
    }
}
