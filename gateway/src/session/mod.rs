//! The session task: reads an adapter's batches, applies each frame, and owns everything
//! the session created (subscriptions, outstanding requests and their timers, streams) so
//! that all of it is released when the session ends, however it ends.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use nexus_proto::encoding::CodecSet;
use nexus_proto::text::Escaped;
use nexus_proto::v1::{self, ErrorCode, Frame, frame::Kind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::time::{DelayQueue, delay_queue};
use tonic::Status;

use crate::connection::Connection;
use crate::metrics::Limit;
use crate::outbound::DeferredWakes;
use crate::router::match_cache::MatchCache;
use crate::router::{Completion, Member, Router, Subscription, error, frame};
use crate::service::SessionAdmission;
use crate::streams;
use crate::subject::validate_pattern;

mod batch;
mod publish;
mod request;

pub(crate) use publish::message_id;
use publish::{HeldPublish, IncomingPub, oldest_stored};
use request::{next_completion, next_expired};

/// Protocol version this gateway speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest accepted queue group name.
const MAX_QUEUE_GROUP_LEN: usize = 256;

/// What the frames of one batch are checked against, loaded once when the batch arrives: the
/// configuration, the policy and the session's grant, each an `ArcSwap` that another task
/// may replace. Loading them for every frame cost a publish four `ArcSwap` loads (about 300
/// instructions, 4 % of the gateway's work for a message); a change now applies from the
/// next batch. Dropped when the batch is done, so an idle session keeps no old policy alive.
struct Snapshot {
    cfg: Arc<crate::config::GatewayConfig>,
    policy: Arc<crate::policy::Policy>,
    grant: Option<Arc<crate::policy::Grant>>,
}

impl Snapshot {
    fn load(router: &Router, conn: &Connection) -> Self {
        Snapshot {
            cfg: router.config_full(),
            policy: router.policy_full(),
            grant: conn.grant.load_full(),
        }
    }
}

pub struct Session {
    router: Arc<Router>,
    conn: Arc<Connection>,
    gateway_id: Arc<str>,
    hello: bool,
    subs: HashMap<u64, Subscription>,
    /// Requests this session made: gateway seq -> (client req_id, timer).
    requests: HashMap<u64, (u64, delay_queue::Key)>,
    /// Client req_ids outstanding, to refuse a duplicate whose reply would be ambiguous.
    req_ids: std::collections::HashSet<u64>,
    /// Request timeouts; created with the first request (a `DelayQueue` allocates its timer
    /// wheel, ~6 KiB, up front, which every idle session paid).
    timers: Option<DelayQueue<u64>>,
    /// Answers to this session's requests; created with the first request (a tokio channel
    /// allocates its first block of slots, ~3 KiB here, up front, which every idle session
    /// paid).
    completions: Option<(
        mpsc::UnboundedSender<Completion>,
        mpsc::UnboundedReceiver<Completion>,
    )>,
    scratch: Vec<Arc<Member>>,
    /// Which groups the subjects this session publishes to match
    /// ([`crate::router::match_cache`]).
    match_cache: MatchCache<Arc<crate::router::Group>>,
    held: VecDeque<HeldPublish>,
    /// Durable publishes stored or being stored whose Ack has not been queued yet.
    acks_in_flight: Arc<std::sync::atomic::AtomicUsize>,
    admission: SessionAdmission,
    /// The id of the API key the session authenticated with, stamped into what it publishes
    /// (`provenance`); `None` without auth.
    publisher_key: Option<nexus_proto::ByteString>,
    /// Set while a batch is applied.
    snap: Option<Snapshot>,
    /// The headers of the publish being applied, decoded into one vector per session.
    pub_headers: Vec<v1::Header>,
    /// The outbound streams deliveries of the batch being applied were queued for, woken
    /// when it is applied or before the session waits for anything (`DeferredWakes`).
    wakes: DeferredWakes,
}

/// What to do after a frame.
enum Flow {
    Continue,
    /// End the session with this status.
    Close(Status),
}

impl Session {
    pub(crate) fn new(
        router: Arc<Router>,
        conn: Arc<Connection>,
        gateway_id: Arc<str>,
        admission: SessionAdmission,
    ) -> Self {
        Self {
            router,
            conn,
            gateway_id,
            hello: false,
            subs: HashMap::new(),
            requests: HashMap::new(),
            req_ids: std::collections::HashSet::new(),
            timers: None,
            completions: None,
            scratch: Vec::new(),
            match_cache: MatchCache::default(),
            held: VecDeque::new(),
            acks_in_flight: Arc::default(),
            admission,
            publisher_key: None,
            snap: None,
            pub_headers: Vec::new(),
            wakes: DeferredWakes::default(),
        }
    }

    /// Runs until the adapter goes away, the session is closed (slow consumer), or
    /// `close_all` fires at shutdown. `inbound` is the adapter's batches: gRPC's request
    /// stream, or the records of a native connection (`crate::native`).
    pub async fn run<S>(mut self, mut inbound: S, close_all: CancellationToken)
    where
        S: futures::Stream<Item = Result<v1::Batch, Status>> + Unpin,
    {
        let conn = self.conn.clone();
        let hello_timeout = self.router.config().hello_timeout();
        let hello_deadline = tokio::time::sleep(hello_timeout);
        tokio::pin!(hello_deadline);
        let evicted = self.admission.evicted().unwrap_or_default();
        let router = self.router.clone();
        let drain = router.drain_started();
        tokio::pin!(drain);
        let mut told_to_go = false;
        // A session that has sent nothing by the time it first runs becomes a candidate for
        // eviction (see `admission::PendingSessions`); one whose Hello is already here is
        // admitted before newer sessions can push it out.
        let first = inbound.next().now_or_never();
        if first.is_none() {
            self.admission.mark_silent();
        }
        if let Some(item) = first
            && let Err(outcome) = self.on_input(item).await
        {
            return self.finish(outcome);
        }
        let outcome: Option<Status> = loop {
            tokio::select! {
                biased;
                _ = conn.outbound.closed() => break None,
                _ = &mut hello_deadline, if !self.hello => {
                    break Some(self.hello_timed_out(hello_timeout));
                }
                _ = evicted.cancelled(), if !self.hello => {
                    break Some(Status::resource_exhausted(format!(
                        "limits.max_unauthenticated ({}) sessions were waiting for their Hello; this one had waited longest and was closed",
                        self.router.config().limits.max_unauthenticated
                    )));
                }
                _ = close_all.cancelled() => {
                    self.settle_publishes().await;
                    self.send_control(Kind::Error(error(
                        ErrorCode::Unavailable,
                        "gateway is shutting down",
                        0,
                    )));
                    // Let the error frame and anything else queued reach the adapter.
                    conn.outbound.close_after_flush(Some(Status::unavailable(
                        "gateway is shutting down; reconnect to another gateway",
                    )));
                    break None;
                }
                _ = &mut drain, if !told_to_go => {
                    if !self.hello {
                        break Some(Status::unavailable("gateway is shutting down"));
                    }
                    told_to_go = true;
                    self.tell_to_go();
                }
                _ = conn.grant_changed.notified() => self.drop_disallowed_subscriptions(),
                Some(done) = next_completion(&mut self.completions) => self.on_completion(done).await,
                stored = oldest_stored(&mut self.held), if !self.held.is_empty() => {
                    self.release_oldest(stored).await;
                }
                Some(expired) = next_expired(&mut self.timers),
                    if self.timers.as_ref().is_some_and(|t| !t.is_empty()) => {
                    let seq = expired.into_inner();
                    if self.requests.remove(&seq).is_some() {
                        self.router.complete(seq, None, Err(error(ErrorCode::Timeout, "request timed out", 0)));
                        // The completion comes back through the channel with the req_id.
                    }
                }
                batch = inbound.next() => {
                    // Frames an adapter sent together are all ready at once and most
                    // publishes never wait, so a fast publisher could hold this worker for
                    // thousands of messages: every 128 it yields (tokio's cooperative budget),
                    // so the tasks it woke (QUIC drivers, writers) and other sessions run.
                    tokio::task::consume_budget().await;
                    if let Err(outcome) = self.on_input(batch).await {
                        break outcome;
                    }
                }
            }
        };
        self.finish(outcome);
    }

    /// The gateway started draining: tell the adapter to move (docs/protocol.md §3.4). The
    /// session keeps working until the adapter ends it or the drain period ends.
    fn tell_to_go(&self) {
        let drain_ms = u32::try_from(self.router.config().shutdown_grace_ms).unwrap_or(u32::MAX);
        tracing::debug!(
            conn = self.conn.id,
            drain_ms,
            "session told to move: GoAway"
        );
        self.router.metrics.goaways_sent.inc();
        self.send_control(Kind::GoAway(v1::GoAway {
            reason: "gateway is shutting down".into(),
            drain_ms,
        }));
    }

    /// At shutdown: every publish this session already sent is stored and acknowledged (or
    /// refused) before the session closes, within the shutdown grace. An adapter that lost
    /// an Ack would retry the publish on another gateway, which does not know its id yet, and
    /// the message would exist twice.
    async fn settle_publishes(&mut self) {
        let deadline = tokio::time::Instant::now() + self.router.config().shutdown_grace();
        while !self.held.is_empty() {
            match tokio::time::timeout_at(deadline, oldest_stored(&mut self.held)).await {
                Ok(stored) => self.release_oldest(stored).await,
                Err(_) => break,
            }
        }
        while self
            .acks_in_flight
            .load(std::sync::atomic::Ordering::Acquire)
            > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Applies one item of the session's input; `Err` ends the session with that outcome.
    async fn on_input(
        &mut self,
        batch: Option<Result<v1::Batch, Status>>,
    ) -> Result<(), Option<Status>> {
        let conn = self.conn.clone();
        match batch {
            Some(Ok(batch)) => {
                self.router.metrics.batches_received.inc();
                self.snap = Some(Snapshot::load(&self.router, &conn));
                let applied = self.apply_batch(batch).await;
                self.snap = None;
                applied
            }
            Some(Err(status)) => {
                tracing::debug!(conn = conn.id, %status, "session stream failed");
                // Usually the adapter is gone; if it is still there (a message over
                // the transport limit, say) it learns why its session ended.
                let message = if status.code() == tonic::Code::OutOfRange {
                    format!(
                        "session input refused: {} (the gateway's limit on one batch is 2 x limits.max_payload, at least 4 MiB, plus 64 KiB)",
                        status.message()
                    )
                } else {
                    format!("session input failed: {}", status.message())
                };
                let code = match status.code() {
                    tonic::Code::OutOfRange => tonic::Code::ResourceExhausted,
                    code => code,
                };
                Err(Some(Status::new(code, message)))
            }
            None => Err(None),
        }
    }

    fn finish(mut self, outcome: Option<Status>) {
        self.router.untrack(&self.conn);
        for sub in self.subs.values() {
            self.router.unsubscribe(sub);
        }
        self.subs.clear();
        for seq in self.requests.keys() {
            self.router.cancel(*seq);
        }
        self.router.connection_gone(&self.conn);
        self.conn.outbound.close(outcome);
        // Held publishes are (being) stored and go to other regions whatever happens to this
        // session: local subscribers get them too, or a retry, recognised as a duplicate,
        // would deliver them nowhere here.
        let mut held = std::mem::take(&mut self.held);
        if !held.is_empty() {
            let router = self.router.clone();
            tokio::spawn(async move {
                let mut scratch = Vec::new();
                while !held.is_empty() {
                    let stored = oldest_stored(&mut held).await;
                    let Some(h) = held.pop_front() else { break };
                    if stored && !h.outcome.duplicate {
                        router
                            .deliver_local(h.delivery, &mut scratch, &h.outcome.taken_groups)
                            .await;
                    }
                }
            });
        }
        self.router.metrics.connections.dec();
        // Late completions for requests cancelled above are dropped with the receiver.
        if let Some((_, rx)) = &mut self.completions {
            rx.close();
        }
        tracing::debug!(conn = self.conn.id, "session ended");
    }

    /// The key's scopes changed: subscriptions they no longer cover are removed, each with
    /// an `Error{DENIED, ref_id: sid}` naming the key and its scopes.
    fn drop_disallowed_subscriptions(&mut self) {
        let grant = self.conn.grant.load_full();
        let Some(grant) = grant else { return };
        let denied: Vec<u64> = self
            .subs
            .iter()
            .filter(|(_, sub)| !grant.may_subscribe(&sub.group.pattern))
            .map(|(sid, _)| *sid)
            .collect();
        for sid in denied {
            let Some(sub) = self.subs.remove(&sid) else {
                continue;
            };
            self.router.unsubscribe(&sub);
            self.send_control(Kind::Error(error(
                ErrorCode::Denied,
                format!(
                    "subscription {sid} to {:?} was removed: API key {} may no longer subscribe to it (its subscribe scopes: {})",
                    sub.group.pattern,
                    grant.key_id,
                    grant.subscribe.join(", ")
                ),
                sid,
            )));
        }
    }

    /// The session sent no Hello in time: counted, logged (at most once a second) and closed.
    fn hello_timed_out(&self, timeout: Duration) -> Status {
        self.router
            .metrics
            .admission_refused(crate::metrics::AdmissionRefusal::HelloTimeout);
        if let Some(suppressed) = self
            .admission
            .logs
            .hello_timeout
            .should_log(crate::monotonic_ms())
        {
            tracing::warn!(
                conn = self.conn.id,
                remote = ?self.admission.remote,
                suppressed,
                "session closed: no Hello within limits.hello_timeout_ms"
            );
        }
        Status::deadline_exceeded(format!(
            "no Hello within {} ms of opening the session (limits.hello_timeout_ms)",
            timeout.as_millis()
        ))
    }

    /// Queues an ack, error, pong or similar; never dropped (see `Outbound::send_control`).
    fn send_control(&self, kind: Kind) {
        self.conn.outbound.send_control(frame(kind));
    }

    fn refuse(&self, code: ErrorCode, message: String, ref_id: u64, ack_id: u64) {
        if code == ErrorCode::Invalid {
            self.router.metrics.protocol_errors.inc();
        }
        let e = error(code, message, ref_id);
        if ack_id != 0 {
            self.send_control(Kind::Nack(v1::Nack {
                ack_id,
                reply_to: String::new(),
                error: Some(e),
            }));
        } else {
            self.send_control(Kind::Error(e));
        }
    }

    async fn on_frame(&mut self, f: Frame) -> Flow {
        let Some(kind) = f.kind else {
            if !self.hello {
                self.router.metrics.protocol_errors.inc();
                return Flow::Close(Status::invalid_argument(
                    "the first frame of a session must be Hello (got an empty frame)",
                ));
            }
            self.refuse(ErrorCode::Invalid, "empty frame (no kind set)".into(), 0, 0);
            return Flow::Continue;
        };
        if !self.hello {
            return match kind {
                Kind::Hello(h) => self.on_hello(h),
                _ => {
                    self.router.metrics.protocol_errors.inc();
                    Flow::Close(Status::invalid_argument(
                        "the first frame of a session must be Hello",
                    ))
                }
            };
        }
        match kind {
            Kind::Hello(_) => self.refuse(
                ErrorCode::Invalid,
                "Hello was already received on this session".into(),
                0,
                0,
            ),
            Kind::Sub(s) => self.on_sub(s),
            Kind::Unsub(u) => self.on_unsub(u),
            Kind::Pub(mut p) => {
                let mut headers = std::mem::take(&mut p.headers);
                if let Some(rest) = self.publish_now(IncomingPub::decoded(&p), &mut headers) {
                    self.finish_publish(rest).await;
                }
            }
            Kind::Req(r) => self.on_req(r).await,
            Kind::Reply(r) => self.on_reply(r),
            Kind::Nack(n) => self.on_nack(n),
            Kind::Ping(p) => self.send_control(Kind::Pong(v1::Pong { nonce: p.nonce })),
            Kind::Pong(_) | Kind::Ack(_) => {}
            Kind::StreamOpen(mut o) => {
                crate::provenance::stamp(&mut o.headers, self.publisher_key.as_ref());
                let id = o.stream_id;
                if let Some(message) = self.may_publish(&o.subject) {
                    self.send_control(Kind::StreamClose(v1::StreamClose {
                        stream_id: id,
                        error: Some(error(ErrorCode::Denied, message, id)),
                    }));
                } else if let Err(e) = streams::open(&self.router, &self.conn, o).await {
                    self.count_invalid(&e);
                    self.send_control(Kind::StreamClose(v1::StreamClose {
                        stream_id: id,
                        error: Some(e),
                    }));
                }
            }
            Kind::StreamData(d) => {
                let result = match self.check_payload(&d.headers, &d.payload, d.stream_id) {
                    Ok(_) => match self.charge_key(d.payload.len()) {
                        Ok(()) => streams::data(&self.router, &self.conn, d).await,
                        Err(message) => Err(error(ErrorCode::Limit, message, d.stream_id)),
                    },
                    Err(e) => Err(e),
                };
                self.stream_result(result);
            }
            Kind::Credit(c) => {
                let result = streams::credit(&self.router, &self.conn, c);
                self.stream_result(result);
            }
            Kind::StreamClose(c) => {
                let result = streams::close(&self.router, &self.conn, c);
                self.stream_result(result);
            }
            Kind::Welcome(_) | Kind::Msg(_) | Kind::Error(_) | Kind::GoAway(_) => self.refuse(
                ErrorCode::Invalid,
                "Welcome, Msg, Error and GoAway frames are sent by the gateway, not to it".into(),
                0,
                0,
            ),
        }
        Flow::Continue
    }

    /// `Some(reason)` when the session's key may not publish (or request, or open a stream)
    /// on `subject`.
    fn may_publish(&self, subject: &str) -> Option<String> {
        self.with_grant(|grant| {
            let grant = grant?;
            (!grant.may_publish(subject)).then(|| {
                format!(
                    "API key {} may not publish to {subject:?} (its publish scopes: {})",
                    grant.key_id,
                    grant.publish.join(", ")
                )
            })
        })
    }

    /// `f` of the session's grant: the batch's [`Snapshot`], or loaded now outside a batch.
    fn with_grant<R>(&self, f: impl FnOnce(Option<&crate::policy::Grant>) -> R) -> R {
        match &self.snap {
            Some(snap) => f(snap.grant.as_deref()),
            None => f(self.conn.grant.load().as_deref()),
        }
    }

    /// `f` of the policy: the batch's [`Snapshot`], or loaded now outside a batch.
    fn with_policy<R>(&self, f: impl FnOnce(&crate::policy::Policy) -> R) -> R {
        match &self.snap {
            Some(snap) => f(&snap.policy),
            None => f(&self.router.policy()),
        }
    }

    /// `limits.max_payload`: the batch's [`Snapshot`], or loaded now outside a batch.
    fn max_payload(&self) -> u64 {
        match &self.snap {
            Some(snap) => snap.cfg.limits.max_payload,
            None => self.router.config().limits.max_payload,
        }
    }

    /// Charges a message to the session key's rate limits ([`crate::key_limits`]).
    fn charge_key(&self, payload_len: usize) -> Result<(), String> {
        self.with_grant(|grant| self.router.charge_key(grant, payload_len))
    }

    fn count_invalid(&self, e: &v1::Error) {
        if e.code == ErrorCode::Invalid as i32 {
            self.router.metrics.protocol_errors.inc();
        }
    }

    fn stream_result(&self, result: streams::StreamResult) {
        if let Err(e) = result {
            self.count_invalid(&e);
            self.send_control(Kind::Error(e));
        }
    }

    fn on_hello(&mut self, h: v1::Hello) -> Flow {
        if h.protocol > PROTOCOL_VERSION {
            return Flow::Close(Status::failed_precondition(format!(
                "adapter speaks protocol {} but this gateway speaks up to {PROTOCOL_VERSION}",
                h.protocol
            )));
        }
        if self.router.auth_required() {
            match self.router.policy().authenticate(
                &h.api_key,
                crate::policy_now_ms(),
                self.admission.client_cert.as_ref(),
            ) {
                Ok(grant) => {
                    if let Some(snap) = &mut self.snap {
                        // The frames after the Hello in this batch are checked against it.
                        snap.grant = Some(grant.clone());
                    }
                    self.conn.grant.store(Some(grant));
                    self.router.track_authenticated(&self.conn);
                }
                Err(e) => {
                    self.router.metrics.auth_failures.inc();
                    let reason = e.describe("Hello.api_key");
                    tracing::info!(conn = self.conn.id, client = %Escaped(&h.client_name), %reason, "session refused");
                    self.send_control(Kind::Error(error(ErrorCode::Denied, reason.clone(), 0)));
                    self.conn
                        .outbound
                        .close_after_flush(Some(Status::unauthenticated(reason.clone())));
                    return Flow::Close(Status::unauthenticated(reason));
                }
            }
        }
        if let Err(status) = self
            .admission
            .admit(self.router.config().limits.max_connections)
        {
            self.router.metrics.limit(Limit::MaxConnections);
            self.send_control(Kind::Error(error(
                ErrorCode::Limit,
                status.message().to_string(),
                0,
            )));
            self.conn.outbound.close_after_flush(Some(status.clone()));
            return Flow::Close(status);
        }
        self.hello = true;
        self.publisher_key = self
            .conn
            .grant
            .load()
            .as_ref()
            .map(|g| nexus_proto::ByteString::from(g.key_id.as_str()));
        *self.conn.name.lock() = if h.client_name.is_empty() {
            format!("{}-{}", h.language, self.conn.id)
        } else {
            h.client_name.clone()
        };
        tracing::debug!(
            conn = self.conn.id,
            client = %Escaped(&h.client_name),
            language = %Escaped(&h.language),
            version = %Escaped(&h.version),
            "session hello"
        );
        let cfg = self.router.config();
        self.conn
            .outbound
            .set_receiver(crate::payload_encoding::Receiver {
                accept: CodecSet::from_names(&h.encodings),
                max: cfg.limits.max_payload as usize,
                metrics: self.router.metrics.encoding.clone(),
                session: self.conn.id,
            });
        self.send_control(Kind::Welcome(v1::Welcome {
            session_id: self.conn.id.to_string(),
            gateway_id: self.gateway_id.to_string(),
            region: cfg.region.clone(),
            max_payload: cfg.limits.max_payload,
            max_subscriptions: cfg.limits.max_subscriptions,
            protocol: PROTOCOL_VERSION,
            encodings: crate::payload_encoding::accepted().names(),
        }));
        Flow::Continue
    }

    fn on_sub(&mut self, s: v1::Sub) {
        if let Err(e) = validate_pattern(&s.subject) {
            return self.refuse(ErrorCode::Invalid, e.to_string(), s.sid, s.ack_id);
        }
        if s.queue_group.len() > MAX_QUEUE_GROUP_LEN
            || s.queue_group
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return self.refuse(
                ErrorCode::Invalid,
                format!(
                    "queue group {:?} must be at most {MAX_QUEUE_GROUP_LEN} bytes without whitespace or control characters",
                    s.queue_group
                ),
                s.sid,
                s.ack_id,
            );
        }
        if let Some(grant) = self.conn.grant.load().as_ref()
            && !grant.may_subscribe(&s.subject)
        {
            return self.refuse(
                ErrorCode::Denied,
                format!(
                    "API key {} may not subscribe to {:?} (its subscribe scopes: {})",
                    grant.key_id,
                    s.subject,
                    grant.subscribe.join(", ")
                ),
                s.sid,
                s.ack_id,
            );
        }
        if self.subs.contains_key(&s.sid) {
            return self.refuse(
                ErrorCode::Invalid,
                format!("sid {} is already in use on this session", s.sid),
                s.sid,
                s.ack_id,
            );
        }
        let max = self.router.config().limits.max_subscriptions;
        if self.subs.len() >= max as usize {
            self.router.metrics.limit(Limit::MaxSubscriptions);
            return self.refuse(
                ErrorCode::Limit,
                format!("limits.max_subscriptions ({max}) reached for this session"),
                s.sid,
                s.ack_id,
            );
        }
        let sub = self
            .router
            .subscribe(&self.conn, s.sid, &s.subject, &s.queue_group);
        self.subs.insert(s.sid, sub);
        if s.ack_id != 0 {
            self.send_control(Kind::Ack(v1::Ack {
                ack_id: s.ack_id,
                ..Default::default()
            }));
        }
    }

    fn on_unsub(&mut self, u: v1::Unsub) {
        match self.subs.remove(&u.sid) {
            Some(sub) => self.router.unsubscribe(&sub),
            None => self.refuse(
                ErrorCode::Invalid,
                format!("unsub: no subscription with sid {}", u.sid),
                u.sid,
                0,
            ),
        }
    }
}
