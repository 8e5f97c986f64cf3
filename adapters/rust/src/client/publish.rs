//! Publishing: fire-and-forget publishes (encoded where they are made when nothing about
//! them depends on the session), and publishes the gateway confirms, retried on the next
//! session with the same message id.

use bytes::Bytes;
use nexus_proto::ByteString;
use nexus_proto::v1 as pb;
use nexus_proto::v1::frame::Kind;
use tokio::sync::oneshot;

use super::{Client, PublishOutcome, new_id};
use crate::batch::Outbound;
use crate::connection::AckWaiter;
use crate::error::{Error, Result};
use crate::message::OutgoingMessage;
use crate::subject::{validate_pub_subject, validate_reply_to};

/// Payloads from this size on are queued as frames and encoded by the writer
/// ([`Client::encodes_early`]): encoding a large payload into the queue, under its lock,
/// would hold publishers and the writer up for the copy.
const EARLY_ENCODE_MAX: usize = 4 * 1024;

impl Client {
    /// Publishes `payload` on `subject` (fire and forget). Waits only if the outbound queue
    /// is full. While disconnected, publishes queue up and are sent after reconnecting.
    ///
    /// ```no_run
    /// # async fn demo(client: nexus_client::Client) -> nexus_client::Result<()> {
    /// client.publish("orders.created", "order #1").await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish(&self, subject: &str, payload: impl Into<Bytes>) -> Result<()> {
        validate_pub_subject(subject)?;
        let payload = payload.into();
        self.check_payload(payload.len())?;
        let traceparent = pb::Header {
            key: ByteString::from_static(crate::headers::TRACEPARENT),
            value: crate::trace::outgoing(),
        };
        if self.encodes_early(payload.len()) {
            return self
                .enqueue_pub(subject, "", std::slice::from_ref(&traceparent), &payload)
                .await;
        }
        self.enqueue(Outbound::any(Kind::Pub(pb::Pub {
            subject: subject.into(),
            reply_to: ByteString::new(),
            headers: vec![traceparent],
            payload,
            id: new_id(),
            ack_id: 0,
        })))
        .await
    }

    /// Queues a publish (with a fresh id) encoded where it is made, straight into the
    /// outbound queue: the frame is never built, its subject and headers never allocated.
    async fn enqueue_pub(
        &self,
        subject: &str,
        reply_to: &str,
        headers: &[pb::Header],
        payload: &[u8],
    ) -> Result<()> {
        self.check_open()?;
        let id = crate::ids::new_ulid().to_bytes();
        let p = nexus_proto::hot_frames::PubRef {
            subject,
            reply_to,
            headers,
            payload,
            id: &id,
            ack_id: 0,
        };
        self.shared().outbound.push_pub(&p).await
    }

    /// Whether a publish of `len` payload bytes is encoded where it is made
    /// ([`Client::enqueue_pub`]) rather than by the writer: when nothing about it depends on the
    /// session, i.e. its payload is below the compression threshold (compression uses the
    /// codecs of the session it goes out in), and small enough that copying it twice costs
    /// less than building the frame.
    fn encodes_early(&self, len: usize) -> bool {
        let policy = &self.shared().config.compression;
        len < EARLY_ENCODE_MAX && (policy.codec.is_none() || len < policy.threshold.max(1))
    }

    /// Publishes a message with headers and/or a reply subject.
    ///
    /// ```no_run
    /// # async fn demo(client: nexus_client::Client) -> nexus_client::Result<()> {
    /// use nexus_client::OutgoingMessage;
    /// let msg = OutgoingMessage::new("orders.created", "order #1")
    ///     .with_header("x-tenant", "acme")
    ///     .with_reply_to("orders.replies");
    /// client.publish_message(msg).await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish_message(&self, msg: OutgoingMessage) -> Result<()> {
        if self.encodes_early(msg.payload.len()) {
            self.check_pub(&msg)?;
            let mut headers = msg.headers;
            headers.ensure_traceparent();
            return self
                .enqueue_pub(
                    &msg.subject,
                    msg.reply_to.as_deref().unwrap_or_default(),
                    &headers.into_inner(),
                    &msg.payload,
                )
                .await;
        }
        let frame = self.pub_frame(msg, 0)?;
        self.enqueue(Outbound::any(frame)).await
    }

    fn check_pub(&self, msg: &OutgoingMessage) -> Result<()> {
        validate_pub_subject(&msg.subject)?;
        if let Some(r) = &msg.reply_to {
            validate_reply_to(r)?;
        }
        self.check_payload(msg.payload.len())
    }

    fn pub_frame(&self, msg: OutgoingMessage, ack_id: u64) -> Result<Kind> {
        self.check_pub(&msg)?;
        let mut headers = msg.headers;
        headers.ensure_traceparent();
        Ok(Kind::Pub(pb::Pub {
            subject: msg.subject.into(),
            reply_to: msg.reply_to.map(ByteString::from).unwrap_or_default(),
            headers: headers.into_inner(),
            payload: msg.payload,
            id: new_id(),
            ack_id,
        }))
    }

    /// Publishes and waits until the gateway routed the message; returns how many
    /// subscriptions received it. Fails with the gateway's refusal (e.g. [`Error::Limit`]).
    ///
    /// If the session is lost before the answer came, the publish is sent again on the next
    /// session with the same message id, for up to
    /// [`publish_retry_timeout`](crate::ClientBuilder::publish_retry_timeout); the gateway
    /// de-duplicates it on `async` and `sync` routes. When that time runs out the error is
    /// [`Error::NotConfirmed`].
    ///
    /// ```no_run
    /// # async fn demo(client: nexus_client::Client) -> nexus_client::Result<()> {
    /// match client.publish_acked("orders.created", "order #1").await {
    ///     Ok(n) => println!("delivered to {n} subscriptions"),
    ///     Err(nexus_client::Error::NotConfirmed { id, .. }) => eprintln!("{id} may not have arrived"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn publish_acked(&self, subject: &str, payload: impl Into<Bytes>) -> Result<u32> {
        self.publish_message_acked(OutgoingMessage::new(subject, payload))
            .await
    }

    /// [`publish_acked`](Self::publish_acked) for a full [`OutgoingMessage`].
    pub async fn publish_message_acked(&self, msg: OutgoingMessage) -> Result<u32> {
        Ok(self.publish_message_confirmed(msg).await?.delivered)
    }

    /// Like [`publish_message_acked`](Self::publish_message_acked), with everything the
    /// gateway said about the message: local deliveries, and the other regions it was
    /// forwarded to or spooled for.
    pub async fn publish_message_confirmed(&self, msg: OutgoingMessage) -> Result<PublishOutcome> {
        let subject = msg.subject.clone();
        let Kind::Pub(publish) = self.pub_frame(msg, 0)? else {
            unreachable!("pub_frame builds a Pub")
        };
        let budget = self.shared().config.publish_retry_timeout;
        let started = tokio::time::Instant::now();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let up = budget.is_zero() || self.is_connected() || {
                let left = budget.saturating_sub(started.elapsed());
                tokio::time::timeout(left, self.wait_connected())
                    .await
                    .is_ok()
            };
            let answer = if up {
                self.publish_attempt(&publish, &subject).await
            } else {
                Err(Error::Disconnected)
            };
            match answer {
                Err(Error::Disconnected) => {
                    let elapsed = started.elapsed();
                    if budget.is_zero() || elapsed >= budget {
                        return Err(Error::NotConfirmed {
                            subject,
                            id: ulid::Ulid::from_bytes(
                                publish.id[..].try_into().unwrap_or_default(),
                            )
                            .to_string(),
                            attempts,
                            elapsed,
                            retry_timeout: budget,
                        });
                    }
                }
                other => {
                    return other.map(|a| PublishOutcome {
                        id: ulid::Ulid::from_bytes(publish.id[..].try_into().unwrap_or_default())
                            .to_string(),
                        delivered: a.delivered,
                        forwarded_regions: a.forwarded_regions,
                        spooled_regions: a.spooled_regions,
                        duplicate: a.duplicate,
                    });
                }
            }
        }
    }

    /// One attempt of a confirmed publish: a fresh ack id, the same message (and id).
    async fn publish_attempt(&self, publish: &pb::Pub, subject: &str) -> Result<pb::Ack> {
        let ack_id = self.shared().next_id();
        let frame = Kind::Pub(pb::Pub {
            ack_id,
            ..publish.clone()
        });
        let (tx, rx) = oneshot::channel();
        let ((), epoch) = self
            .register(|st| {
                st.acks.insert(ack_id, AckWaiter::new(tx, None));
            })
            .await;
        self.await_ack(ack_id, Outbound::in_epoch(frame, epoch), rx, subject)
            .await
    }
}
