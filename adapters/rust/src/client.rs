//! [`Client`] and [`ClientBuilder`]: connecting, publishing, subscribing, requests and flush.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use nexus_proto::ByteString;
use nexus_proto::v1 as pb;
use nexus_proto::v1::frame::Kind;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::batch::{BatchLimits, Outbound};
use crate::connection::{self, AckWaiter, Config, Gateways, Shared, SubEntry, SubKind};
use crate::discovery::{DNS_SERVER_ENV, Discovery, Target, choose_dns_server, parse_target};
use crate::error::{Error, Result, ServiceError};
use crate::headers::{Headers, TRACEPARENT};
use crate::message::{Message, OutgoingMessage};
use crate::native::Transport;
use crate::service::Service;
use crate::stream::{BiStream, StreamListener};
use crate::subject::{
    validate_pub_subject, validate_publish_subject, validate_queue_group, validate_reply_to,
    validate_subscribe_subject,
};
use crate::subscription::Subscription;
use crate::tls::TlsSettings;

mod builder;
pub use builder::ClientBuilder;

/// Extra time the client waits beyond a request's timeout before giving up on its own (in
/// case the gateway vanished without answering).
const CLIENT_GRACE: Duration = Duration::from_secs(1);

/// Default of [`ClientBuilder::publish_retry_timeout`]: well inside the gateway's 120 s
/// de-duplication window.
pub const DEFAULT_PUBLISH_RETRY_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to a Nexus gateway. Cheap to clone (all clones share one session).
///
/// The session is closed by [`close`](Client::close), or when the last `Client` clone and the
/// last handle created from it ([`Subscription`], [`Service`], [`BiStream`],
/// [`StreamListener`], which each hold a clone) are dropped.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<ClientInner>,
}

pub(crate) struct ClientInner {
    pub(crate) shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.shared().config.name)
            .field("connected", &self.is_connected())
            .finish()
    }
}

/// What the gateway said about a confirmed publish (its `Ack`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishOutcome {
    /// Subscriptions in the gateway's region the message was queued for.
    pub delivered: u32,
    /// Other regions it was sent to best effort.
    pub forwarded_regions: Vec<String>,
    /// Other regions it was written to the replication spool for (`async` / `sync` routes).
    pub spooled_regions: Vec<String>,
    /// The message id was accepted before: nothing was delivered or replicated again.
    pub duplicate: bool,
    /// The message's id (a ULID), as subscribers see it and `nexusctl trace` takes it.
    pub id: String,
}

/// What the gateway said in its Welcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// Session id assigned by the gateway.
    pub session_id: String,
    /// The gateway instance.
    pub gateway_id: String,
    /// The gateway's region.
    pub region: String,
    /// Largest payload accepted (0 = not announced).
    pub max_payload: u64,
    /// Most subscriptions allowed per session (0 = not announced).
    pub max_subscriptions: u32,
    /// Protocol version.
    pub protocol: u32,
}

/// `127.0.0.1:7422` -> `http://127.0.0.1:7422`.
pub(crate) fn normalize_addr(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

/// Payloads from this size on are queued as frames and encoded by the writer, as before
/// [`Client::encodes_early`]: copying a large payload into the early encoding and again into
/// the batch would cost more than it saves.
const EARLY_ENCODE_MAX: usize = 4 * 1024;

/// Encodes a publish (with a fresh id) as one `Batch.frames` record, into a per-thread 16 KiB
/// buffer that each record is cut from: the frame is never built, its subject and headers
/// never allocated, and what moves through the outbound queue is one reference-counted
/// slice. The writer appends the bytes to its batch.
fn encode_pub(subject: &str, reply_to: &str, headers: &[pb::Header], payload: &[u8]) -> Bytes {
    const CHUNK: usize = 16 * 1024;
    thread_local! {
        static BUF: std::cell::RefCell<bytes::BytesMut> =
            std::cell::RefCell::new(bytes::BytesMut::new());
    }
    let id = ulid::Ulid::new().to_bytes();
    let p = nexus_proto::hot_frames::PubRef {
        subject,
        reply_to,
        headers,
        payload,
        id: &id,
        ack_id: 0,
    };
    // The record's own key and two lengths take at most 12 bytes.
    let need = p.encoded_len() + 12;
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        if buf.capacity() < need {
            *buf = bytes::BytesMut::with_capacity(CHUNK.max(need));
        }
        pb::Batch::encode_pub(&p, &mut buf);
        buf.split().freeze()
    })
}

/// A fresh ULID as the 16 raw bytes the protocol carries. Ids are cut from a per-thread
/// 4 KiB buffer, so each costs a reference count instead of an allocation and a free (a
/// publish runs this for every message).
fn new_id() -> Bytes {
    const CHUNK: usize = 16 * 256;
    thread_local! {
        static IDS: std::cell::RefCell<bytes::BytesMut> =
            std::cell::RefCell::new(bytes::BytesMut::new());
    }
    let id = ulid::Ulid::new().to_bytes();
    IDS.with(|ids| {
        let mut ids = ids.borrow_mut();
        if ids.capacity() < id.len() {
            *ids = bytes::BytesMut::with_capacity(CHUNK);
        }
        ids.extend_from_slice(&id);
        ids.split_to(id.len()).freeze()
    })
}

fn duration_ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl Client {
    /// Connects with default settings. `addr` is `http://host:port` (a bare `host:port`
    /// gets `http://`), or a discovery name `nexus+srv://<region>.<zone>[?dns=ip[:port]]`
    /// whose gateways are found through the DNS SRV records of `_nexus._tcp.<region>.<zone>`
    /// (see [`ClientBuilder::connect`] and the crate docs).
    ///
    /// ```no_run
    /// # async fn demo() -> nexus_client::Result<()> {
    /// let client = nexus_client::Client::connect("http://127.0.0.1:7422").await?;
    /// println!("connected to {:?}", client.server_info());
    /// # Ok(()) }
    /// ```
    pub async fn connect(addr: &str) -> Result<Client> {
        Self::builder(addr).connect().await
    }

    /// A builder to configure the connection.
    ///
    /// ```no_run
    /// # async fn demo() -> nexus_client::Result<()> {
    /// use std::time::Duration;
    /// let client = nexus_client::Client::builder("nexus+srv://us-east.nexus.local")
    ///     .api_key("nxk_...")
    ///     .request_timeout(Duration::from_secs(2))
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder(addr: &str) -> ClientBuilder {
        ClientBuilder::new(addr)
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.shared().config.request_timeout
    }

    fn check_open(&self) -> Result<()> {
        if self.shared().closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    pub(crate) fn check_payload(&self, len: usize) -> Result<()> {
        if !self.shared().config.local_payload_check {
            return Ok(());
        }
        let max = self.shared().max_payload.load(Ordering::Relaxed);
        if max > 0 && len as u64 > max {
            return Err(Error::Limit {
                message: format!("payload of {len} bytes exceeds max_payload {max}"),
            });
        }
        Ok(())
    }

    /// Queues a frame, waiting for room in the outbound queue.
    pub(crate) async fn enqueue(&self, o: Outbound) -> Result<()> {
        self.check_open()?;
        self.shared()
            .out_tx
            .send(o)
            .await
            .map_err(|_| Error::Closed)
    }

    /// Registers session work with `f` under the state lock and returns the epoch it belongs
    /// to. While the gateway is draining (`GoAway`, docs/protocol.md §3.4) it first waits for
    /// the move to end, so that new work goes to the next gateway, not the draining one; the
    /// wait is bounded by the gateway's drain period.
    async fn register<T>(&self, f: impl FnOnce(&mut connection::State) -> T) -> (T, u64) {
        let mut moving = self.shared().moving.subscribe();
        loop {
            {
                let mut st = self.shared().state.lock();
                if !st.moving {
                    let t = f(&mut st);
                    return (t, st.epoch);
                }
            }
            let _ = moving.wait_for(|m| !*m).await;
        }
    }

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
        let headers = std::slice::from_ref(&traceparent);
        let o = if self.encodes_early(payload.len()) {
            Outbound::encoded(encode_pub(subject, "", headers, &payload))
        } else {
            Outbound::any(Kind::Pub(pb::Pub {
                subject: subject.into(),
                reply_to: ByteString::new(),
                headers: vec![traceparent],
                payload,
                id: new_id(),
                ack_id: 0,
            }))
        };
        self.enqueue(o).await
    }

    /// Whether a publish of `len` payload bytes is encoded where it is made
    /// ([`encode_pub`]) rather than by the writer: when nothing about it depends on the
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
            let bytes = encode_pub(
                &msg.subject,
                msg.reply_to.as_deref().unwrap_or_default(),
                &headers.into_inner(),
                &msg.payload,
            );
            return self.enqueue(Outbound::encoded(bytes)).await;
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
    /// [`publish_retry_timeout`](ClientBuilder::publish_retry_timeout); the gateway
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

    /// Waits until a session with a gateway is up (at once when it is).
    pub(crate) async fn wait_connected(&self) {
        let mut up = self.shared().up.subscribe();
        let _ = up.wait_for(|up| *up).await;
    }

    async fn await_ack(
        &self,
        ack_id: u64,
        o: Outbound,
        mut rx: oneshot::Receiver<std::result::Result<pb::Ack, crate::error::Fail>>,
        subject: &str,
    ) -> Result<pb::Ack> {
        let t = self.request_timeout();
        if let Err(e) = self.enqueue(o).await {
            self.shared().state.lock().acks.remove(&ack_id);
            return Err(e);
        }
        let answer = match tokio::time::timeout(t + CLIENT_GRACE, &mut rx).await {
            Ok(answer) => answer,
            Err(_) => {
                let mut st = self.shared().state.lock();
                match st.acks.get_mut(&ack_id) {
                    // A subscribe: keep waiting for the Ack in the background, so that a Sub
                    // the gateway applies after all is undone with an Unsub that follows it.
                    Some(w) if w.sid.is_some() => w.tx = None,
                    Some(_) => drop(st.acks.remove(&ack_id)),
                    // Answered just now, while timing out.
                    None => {
                        drop(st);
                        if let Ok(answer) = rx.try_recv() {
                            return answer.map_err(|f| f.into_error(subject, t));
                        }
                    }
                }
                return Err(Error::Timeout {
                    subject: subject.to_owned(),
                    after: t,
                    detail: None,
                });
            }
        };
        match answer {
            Ok(Ok(ack)) => Ok(ack),
            Ok(Err(f)) => Err(f.into_error(subject, t)),
            Err(_) => Err(Error::Closed),
        }
    }

    /// Registers a subscription and waits for the gateway's Ack. Returns the sid.
    pub(crate) async fn add_sub(
        &self,
        subject: &str,
        group: &str,
        kind: SubKind,
    ) -> Result<(u64, Arc<AtomicU64>)> {
        validate_subscribe_subject(subject)?;
        if !group.is_empty() {
            validate_queue_group(group)?;
        }
        self.check_open()?;
        let sid = self.shared().next_id();
        let ack_id = self.shared().next_id();
        let dropped = Arc::new(AtomicU64::new(0));
        let (tx, rx) = oneshot::channel();
        let ((), epoch) = self
            .register(|st| {
                st.subs.insert(
                    sid,
                    SubEntry {
                        subject: subject.to_owned(),
                        queue_group: group.to_owned(),
                        kind,
                        confirmed: false,
                        dropped: dropped.clone(),
                    },
                );
                st.acks.insert(ack_id, AckWaiter::new(tx, Some(sid)));
            })
            .await;
        let frame = Kind::Sub(pb::Sub {
            sid,
            subject: subject.to_owned(),
            queue_group: group.to_owned(),
            ack_id,
        });
        match self
            .await_ack(ack_id, Outbound::in_epoch(frame, epoch), rx, subject)
            .await
        {
            Ok(_) => Ok((sid, dropped)),
            Err(e) => {
                // Refused, disconnected or timed out. After a timeout the gateway may still
                // apply the Sub: its late Ack then triggers the Unsub (see `connection::on_ack`),
                // so no Unsub is sent here, where it could reach the gateway for a sid it does
                // not know (refused Sub) and be answered with Error{INVALID}.
                let entry = self.shared().state.lock().subs.remove(&sid);
                drop(entry);
                Err(e)
            }
        }
    }

    /// Subscribes to `subject` (a pattern with optional `*` / trailing `>`). Returns after the
    /// gateway confirmed it, so refusals (invalid subject, subscription limit) are reported
    /// here.
    ///
    /// ```no_run
    /// # async fn demo(client: nexus_client::Client) -> nexus_client::Result<()> {
    /// let mut sub = client.subscribe("orders.*.created").await?;
    /// while let Some(msg) = sub.next_message().await {
    ///     println!("{}: {:?}", msg.subject, msg.payload);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn subscribe(&self, subject: &str) -> Result<Subscription> {
        self.subscribe_inner(subject, "").await
    }

    /// Like [`subscribe`](Self::subscribe) but in queue group `group`: each message goes to
    /// one member of the group.
    ///
    /// ```no_run
    /// # async fn demo(client: nexus_client::Client) -> nexus_client::Result<()> {
    /// // Each message goes to one of the subscribers in "resizers".
    /// let mut jobs = client.queue_subscribe("images.resize", "resizers").await?;
    /// let job = jobs.next_message().await;
    /// # Ok(()) }
    /// ```
    pub async fn queue_subscribe(&self, subject: &str, group: &str) -> Result<Subscription> {
        validate_queue_group(group)?;
        self.subscribe_inner(subject, group).await
    }

    pub(crate) async fn subscribe_inner(&self, subject: &str, group: &str) -> Result<Subscription> {
        let (tx, rx) = mpsc::channel(self.shared().config.subscription_capacity);
        let (sid, dropped) = self.add_sub(subject, group, SubKind::Messages(tx)).await?;
        Ok(Subscription::new(
            self.clone(),
            sid,
            subject.to_owned(),
            rx,
            dropped,
        ))
    }

    /// Sends a request and waits for one reply, using the default request timeout.
    ///
    /// ```no_run
    /// # async fn demo(client: nexus_client::Client) -> nexus_client::Result<()> {
    /// match client.request("math.double", "21").await {
    ///     Ok(reply) => println!("{:?}", reply.payload),
    ///     Err(nexus_client::Error::NoResponders { .. }) => eprintln!("nobody serves math.double"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn request(&self, subject: &str, payload: impl Into<Bytes>) -> Result<Message> {
        self.request_with(
            subject,
            Headers::new(),
            payload.into(),
            self.request_timeout(),
        )
        .await
    }

    /// Sends a request with headers and an explicit timeout (zero = the default). The reply's
    /// `subject` is the request subject.
    ///
    /// ```no_run
    /// # async fn demo(client: nexus_client::Client) -> nexus_client::Result<()> {
    /// use std::time::Duration;
    /// use nexus_client::{Bytes, Headers};
    /// let headers = Headers::new().with("x-tenant", "acme");
    /// let reply = client
    ///     .request_with("math.double", headers, Bytes::from("21"), Duration::from_millis(500))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn request_with(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message> {
        validate_publish_subject(subject)?;
        self.check_payload(payload.len())?;
        let timeout = if timeout.is_zero() {
            self.request_timeout()
        } else {
            timeout
        };
        let mut headers = headers;
        headers.ensure_traceparent();
        let req_id = self.shared().next_id();
        let (tx, rx) = oneshot::channel();
        let ((), epoch) = self
            .register(|st| {
                st.requests.insert(req_id, tx);
            })
            .await;
        let frame = Kind::Req(pb::Req {
            req_id,
            subject: subject.into(),
            headers: headers.into_inner(),
            payload,
            timeout_ms: duration_ms(timeout).max(1),
            id: new_id(),
        });
        if let Err(e) = self.enqueue(Outbound::in_epoch(frame, epoch)).await {
            self.shared().state.lock().requests.remove(&req_id);
            return Err(e);
        }
        match tokio::time::timeout(timeout + CLIENT_GRACE, rx).await {
            Ok(Ok(Ok(reply))) => match reply.error {
                Some(e) if e.code != 0 || !e.message.is_empty() => {
                    Err(Error::from_gateway(e, subject, timeout))
                }
                _ => Ok(Message::from_parts(
                    subject.to_owned(),
                    reply.headers,
                    reply.payload,
                )),
            },
            Ok(Ok(Err(f))) => Err(f.into_error(subject, timeout)),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => {
                self.shared().state.lock().requests.remove(&req_id);
                Err(Error::Timeout {
                    subject: subject.to_owned(),
                    after: timeout,
                    detail: None,
                })
            }
        }
    }

    /// Answers a request received on a subscription (a message with `reply_to`). The reply
    /// carries the request's `traceparent`. [`serve`](Self::serve) does this for you.
    ///
    /// ```no_run
    /// # async fn demo(client: nexus_client::Client) -> nexus_client::Result<()> {
    /// let mut sub = client.subscribe("time.now").await?;
    /// while let Some(req) = sub.next_message().await {
    ///     client.reply(&req, "12:00").await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn reply(&self, request: &Message, payload: impl Into<Bytes>) -> Result<()> {
        let reply_to = request.reply_to.clone().ok_or_else(|| Error::Invalid {
            message: "message has no reply_to".into(),
        })?;
        let payload = payload.into();
        self.check_payload(payload.len())?;
        self.enqueue(Outbound::any(reply_frame(
            request.traceparent(),
            reply_to,
            Ok(payload),
        )))
        .await
    }

    /// Refuses a request received on a subscription; the requester gets
    /// [`Error::Service`] with `error.message`.
    pub async fn reply_error(&self, request: &Message, error: ServiceError) -> Result<()> {
        let reply_to = request.reply_to.clone().ok_or_else(|| Error::Invalid {
            message: "message has no reply_to".into(),
        })?;
        self.enqueue(Outbound::any(reply_frame(
            request.traceparent(),
            reply_to,
            Err(error),
        )))
        .await
    }

    /// Subscribes to `subject` (optionally in a queue group) and answers every request with
    /// `handler`, running handlers concurrently on spawned tasks (at most
    /// [`max_concurrent_handlers`](ClientBuilder::max_concurrent_handlers) at once).
    /// `Ok(payload)` is sent as the reply, `Err(ServiceError)` as a refusal; a panicking
    /// handler is reported as a refusal too. Messages without `reply_to` run the handler and
    /// the result is discarded. Runs until [`Service::stop`] or the `Service` is dropped.
    ///
    /// ```no_run
    /// # async fn demo(client: nexus_client::Client) -> nexus_client::Result<()> {
    /// use nexus_client::ServiceError;
    /// let svc = client
    ///     .serve("math.double", Some("math"), |m| async move {
    ///         let n: u64 = std::str::from_utf8(&m.payload)
    ///             .ok()
    ///             .and_then(|s| s.parse().ok())
    ///             .ok_or_else(|| ServiceError::new("not a number"))?;
    ///         Ok((n * 2).to_string().into())
    ///     })
    ///     .await?;
    /// // ... later
    /// svc.stop().await;
    /// # Ok(()) }
    /// ```
    pub async fn serve<F, Fut>(
        &self,
        subject: &str,
        queue_group: Option<&str>,
        handler: F,
    ) -> Result<Service>
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<Bytes, ServiceError>> + Send + 'static,
    {
        let group = queue_group.unwrap_or("");
        if queue_group.is_some() {
            validate_queue_group(group)?;
        }
        let sub = self.subscribe_inner(subject, group).await?;
        Ok(Service::start(self.clone(), sub, handler))
    }

    /// Opens a bidirectional stream to one responder listening on `subject`. Returns once the
    /// responder accepted (first credit, data or close), or fails with
    /// [`Error::NoResponders`] / [`Error::Timeout`].
    ///
    /// ```no_run
    /// # async fn demo(client: nexus_client::Client) -> nexus_client::Result<()> {
    /// let (mut tx, mut rx) = client.open_stream("upper").await?.split();
    /// tx.send("hello").await?;
    /// tx.finish().await?;
    /// while let Some(frame) = rx.recv().await {
    ///     println!("{:?}", frame?.payload);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn open_stream(&self, subject: &str) -> Result<BiStream> {
        self.open_stream_with(subject, Headers::new()).await
    }

    /// [`open_stream`](Self::open_stream) with headers (delivered to the acceptor).
    pub async fn open_stream_with(&self, subject: &str, headers: Headers) -> Result<BiStream> {
        validate_publish_subject(subject)?;
        self.check_open()?;
        let mut headers = headers;
        headers.ensure_traceparent();
        let id = self.shared().next_id();
        let window = self.shared().config.stream_window;
        let (opened_tx, opened_rx) = oneshot::channel();
        let (stream, epoch) = self
            .register(|st| {
                let epoch = st.epoch;
                let (stream, entry) = BiStream::new_parts(
                    self.clone(),
                    id,
                    subject.to_owned(),
                    headers.clone(),
                    0,
                    window,
                    epoch,
                    Some(opened_tx),
                );
                st.streams.insert(id, entry);
                stream
            })
            .await;
        let frame = Kind::StreamOpen(pb::StreamOpen {
            stream_id: id,
            subject: subject.to_owned(),
            headers: headers.into_inner(),
            credits: window,
            sid: 0,
        });
        self.enqueue(Outbound::in_epoch(frame, epoch)).await?;
        let t = self.request_timeout();
        match tokio::time::timeout(t, opened_rx).await {
            Ok(Ok(Ok(()))) => Ok(stream),
            Ok(Ok(Err(f))) => Err(f.into_error(subject, t)),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout {
                subject: subject.to_owned(),
                after: t,
                detail: None,
            }),
        }
    }

    /// Accepts streams opened on `subject` (optionally balanced within a queue group).
    ///
    /// ```no_run
    /// # async fn demo(client: nexus_client::Client) -> nexus_client::Result<()> {
    /// let mut listener = client.listen_streams("upper", None).await?;
    /// while let Some(mut stream) = listener.accept().await {
    ///     tokio::spawn(async move {
    ///         while let Some(Ok(frame)) = stream.recv().await {
    ///             let _ = stream.send(frame.payload.to_ascii_uppercase()).await;
    ///         }
    ///         let _ = stream.finish().await;
    ///     });
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn listen_streams(
        &self,
        subject: &str,
        queue_group: Option<&str>,
    ) -> Result<StreamListener> {
        let group = queue_group.unwrap_or("");
        if queue_group.is_some() {
            validate_queue_group(group)?;
        }
        let (tx, rx) = mpsc::channel(self.shared().config.listener_backlog);
        let (sid, _) = self.add_sub(subject, group, SubKind::Streams(tx)).await?;
        Ok(StreamListener::new(
            self.clone(),
            sid,
            subject.to_owned(),
            rx,
        ))
    }

    /// Waits until everything queued before this call has been handed to the transport and
    /// processed by the gateway (a Ping/Pong round trip behind it). While disconnected it
    /// waits for the reconnect; it has no timeout of its own.
    ///
    /// ```no_run
    /// # async fn demo(client: nexus_client::Client) -> nexus_client::Result<()> {
    /// for i in 0..1000 {
    ///     client.publish("metrics.tick", i.to_string()).await?;
    /// }
    /// client.flush().await?; // the gateway has processed all 1000
    /// # Ok(()) }
    /// ```
    pub async fn flush(&self) -> Result<()> {
        let nonce = self.shared().next_id();
        let (tx, rx) = oneshot::channel();
        let ((), epoch) = self
            .register(|st| {
                st.pings.insert(nonce, tx);
            })
            .await;
        if let Err(e) = self
            .enqueue(Outbound::in_epoch(Kind::Ping(pb::Ping { nonce }), epoch))
            .await
        {
            self.shared().state.lock().pings.remove(&nonce);
            return Err(e);
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(f)) => Err(f.into_error("", Duration::ZERO)),
            Err(_) => Err(Error::Closed),
        }
    }

    /// True while a session with the gateway is established.
    pub fn is_connected(&self) -> bool {
        self.shared().connected.load(Ordering::Acquire)
    }

    /// The gateway's Welcome of the current (or last) session. With discovery this is the
    /// gateway in use now (it changes when the client fails over).
    pub fn server_info(&self) -> Option<ServerInfo> {
        self.shared()
            .state
            .lock()
            .welcome
            .as_ref()
            .map(|w| ServerInfo {
                session_id: w.session_id.clone(),
                gateway_id: w.gateway_id.clone(),
                region: w.region.clone(),
                max_payload: w.max_payload,
                max_subscriptions: w.max_subscriptions,
                protocol: w.protocol,
            })
    }

    /// Closes gracefully, the way NATS clients drain: every subscription is unsubscribed
    /// without losing what the gateway already sent for it (buffered messages stay readable,
    /// then the subscription ends), services answer the requests they received, everything
    /// queued is sent and processed by the gateway, then the session ends. Bounded by the
    /// request timeout; later calls fail with [`Error::Closed`].
    ///
    /// ```no_run
    /// # async fn demo(client: nexus_client::Client) {
    /// client.publish("orders.created", "last one").await.unwrap();
    /// client.drain().await; // the publish above reaches the gateway first
    /// # }
    /// ```
    pub async fn drain(&self) {
        if !self.shared().closed.load(Ordering::Acquire) {
            let _ = tokio::time::timeout(self.request_timeout(), self.drain_in_flight()).await;
        }
        self.close().await;
    }

    async fn drain_in_flight(&self) {
        // Unsubscribe, but keep routing deliveries until the gateway confirmed it.
        let unsubs: Vec<Outbound> = {
            let mut st = self.shared().state.lock();
            let sids: Vec<u64> = st
                .subs
                .iter()
                .filter(|(_, s)| s.confirmed)
                .map(|(&sid, _)| sid)
                .collect();
            sids.into_iter()
                .filter_map(|sid| st.unsub_once(sid))
                .collect()
        };
        for o in unsubs {
            self.shared().send_ctl(o);
        }
        // The Pong comes after every Msg the gateway queued before it took the Unsubs.
        let _ = self.flush().await;
        // Each subscription now yields what it buffered, then ends.
        let subs = std::mem::take(&mut self.shared().state.lock().subs);
        drop(subs);
        let mut busy = self.shared().busy.subscribe();
        let _ = busy.wait_for(|n| *n == 0).await;
        let _ = self.flush().await;
    }

    /// Flushes (bounded by the request timeout), then ends the session. Pending operations
    /// fail with [`Error::Closed`], subscriptions end, later calls return `Error::Closed`.
    pub async fn close(&self) {
        if self.is_connected() && !self.shared().closed.load(Ordering::Acquire) {
            let _ = tokio::time::timeout(self.request_timeout(), self.flush()).await;
        }
        self.shared().closed.store(true, Ordering::Release);
        self.shared().shutdown.send_replace(true);
        let task = self.inner.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// Builds the Reply (or Nack) frame answering `request`.
pub(crate) fn reply_frame(
    traceparent: Option<&str>,
    reply_to: ByteString,
    result: std::result::Result<Bytes, ServiceError>,
) -> Kind {
    match result {
        Ok(payload) => {
            let headers = match traceparent {
                Some(tp) => vec![pb::Header {
                    key: ByteString::from_static(TRACEPARENT),
                    value: tp.into(),
                }],
                None => Vec::new(),
            };
            Kind::Reply(pb::Reply {
                req_id: 0,
                reply_to,
                headers,
                payload,
                error: None,
            })
        }
        Err(e) => Kind::Nack(pb::Nack {
            ack_id: 0,
            reply_to: reply_to.to_string(),
            error: Some(pb::Error {
                code: pb::ErrorCode::ServiceError as i32,
                message: e.message,
                ref_id: 0,
            }),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(normalize_addr("127.0.0.1:7422"), "http://127.0.0.1:7422");
        assert_eq!(normalize_addr("http://h:1"), "http://h:1");
        assert_eq!(normalize_addr("https://h:1"), "https://h:1");
    }

    #[test]
    fn millis_saturate() {
        assert_eq!(duration_ms(Duration::from_millis(1500)), 1500);
        assert_eq!(duration_ms(Duration::from_secs(u64::MAX)), u32::MAX);
    }
}
