//! The connection task: session establishment (Hello/Welcome), the writer (batching), the
//! reader (routing inbound frames), and reconnection with exponential backoff.
//!
//! One task per [`Client`](crate::Client) owns the outbound queue receivers. Each session runs
//! a reader and a writer concurrently inside that task. Shared state (subscriptions, pending
//! acks, requests, pings and streams) lives in [`Shared`] behind a `parking_lot` mutex that is
//! never held across an `.await`.
//!
//! **Backpressure.** Deliveries go into a bounded per-subscription channel. When it is full the
//! reader *awaits*, so it stops reading from the gRPC stream; HTTP/2 flow control then pushes
//! back on the gateway, which applies its slow-consumer policy. Outbound, `publish()` awaits a
//! slot in the bounded outbound queue, and the writer feeds the gRPC request stream through a
//! 2-slot channel, so HTTP/2 backpressure reaches publishers. A consequence: a subscription
//! handler that publishes while the application stops draining a *full* subscription can stall
//! both directions; drain subscriptions from their own tasks.
//!
//! **Epochs.** Every session has an epoch number. Frames that only make sense within one
//! session (requests, acked publishes, subscribes, stream frames, pings) are tagged with the
//! epoch in which their caller registered; when a session ends all such callers fail with
//! [`Error::Disconnected`](crate::Error::Disconnected), the epoch advances, and the writer
//! drops stale frames still queued. Plain publishes are untagged and survive reconnects.
//!
//! **Moving on `GoAway`** (docs/protocol.md §3.4). A draining gateway sends `GoAway` and keeps
//! serving the session. From then on new session work waits ([`State::moving`]) instead of
//! going to that gateway, while the writer still sends what finishes work already there
//! (replies, stream frames, plain publishes already queued). Once nothing sent on the session
//! awaits an answer, or the drain deadline is near, the session ends as [`SessionEnd::Moved`]
//! and the next one is opened at once, on another gateway when discovery knows one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use nexus_proto::v1 as pb;
use nexus_proto::v1::frame::Kind;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use tracing::{debug, info, warn};

use crate::batch::{BatchLimits, Coalescer, Outbound};
use crate::client::{Client, ClientInner};
use crate::credit::SendCredit;
use crate::discovery::Discovery;
use crate::error::{Error, Fail, GatewayAttempt, Result, describe};
use crate::headers::Headers;
use crate::message::Message;
use crate::stream::{BiStream, StreamEvent};
use crate::tls::TlsSettings;

/// Protocol version spoken by this adapter.
pub(crate) const PROTOCOL_VERSION: u32 = 1;
/// Largest inbound batch accepted from the gateway.
const MAX_DECODING_BYTES: usize = 64 << 20;
/// How many sids [`Unsubscribed`] remembers per session (oldest forgotten first).
const MAX_UNSUBSCRIBED: usize = 16 * 1024;

/// Settings fixed at connect time.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) name: String,
    pub(crate) api_key: String,
    pub(crate) request_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) limits: BatchLimits,
    pub(crate) subscription_capacity: usize,
    pub(crate) stream_window: u32,
    pub(crate) listener_backlog: usize,
    pub(crate) max_concurrent_handlers: usize,
    pub(crate) publish_retry_timeout: Duration,
    pub(crate) local_payload_check: bool,
    pub(crate) tls: TlsSettings,
}

/// Where deliveries for a subscription go.
pub(crate) enum SubKind {
    Messages(mpsc::Sender<Message>),
    Streams(mpsc::Sender<BiStream>),
}

pub(crate) struct SubEntry {
    pub(crate) subject: String,
    pub(crate) queue_group: String,
    pub(crate) kind: SubKind,
    /// Acked by the gateway at least once: re-sent after a reconnect.
    pub(crate) confirmed: bool,
    /// SLOW_CONSUMER notices received for this subscription.
    pub(crate) dropped: Arc<AtomicU64>,
}

pub(crate) struct AckWaiter {
    /// `None` once the caller gave up waiting (a subscribe that timed out): if the gateway
    /// acks the `Sub` after all, the subscription is removed again with an `Unsub`.
    pub(crate) tx: Option<oneshot::Sender<std::result::Result<pb::Ack, Fail>>>,
    /// Set when the ack confirms a subscription.
    pub(crate) sid: Option<u64>,
}

impl AckWaiter {
    pub(crate) fn new(
        tx: oneshot::Sender<std::result::Result<pb::Ack, Fail>>,
        sid: Option<u64>,
    ) -> Self {
        AckWaiter { tx: Some(tx), sid }
    }

    fn fail(self, why: Fail) {
        if let Some(tx) = self.tx {
            let _ = tx.send(Err(why));
        }
    }
}

/// Sids this client sent an `Unsub` for in the current session. `Msg` frames the gateway
/// queued before it processed the `Unsub` may still arrive; they are dropped silently. A
/// second `Unsub` for such a sid would be refused with `Error{INVALID}` (and counted as a
/// protocol error by the gateway), so none is sent. Bounded: the oldest sids are forgotten
/// first, long after their late deliveries can still be in flight.
#[derive(Default)]
pub(crate) struct Unsubscribed {
    set: HashSet<u64>,
    order: VecDeque<u64>,
}

impl Unsubscribed {
    /// Records `sid`; returns false if it was already recorded.
    pub(crate) fn insert(&mut self, sid: u64) -> bool {
        if !self.set.insert(sid) {
            return false;
        }
        self.order.push_back(sid);
        if self.order.len() > MAX_UNSUBSCRIBED
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, sid: u64) -> bool {
        self.set.contains(&sid)
    }

    fn clear(&mut self) {
        self.set.clear();
        self.order.clear();
    }
}

pub(crate) struct StreamEntry {
    pub(crate) events: mpsc::UnboundedSender<StreamEvent>,
    pub(crate) credit: Arc<SendCredit>,
    /// Opener side: resolved by the first Credit, StreamData or StreamClose.
    pub(crate) opened: Option<oneshot::Sender<std::result::Result<(), Fail>>>,
    pub(crate) local_finished: bool,
    pub(crate) remote_finished: bool,
}

impl StreamEntry {
    fn resolve_opened(&mut self, r: std::result::Result<(), Fail>) {
        if let Some(tx) = self.opened.take() {
            let _ = tx.send(r);
        }
    }

    fn fail(mut self, why: Fail) {
        self.credit.close(why.clone());
        self.resolve_opened(Err(why.clone()));
        let _ = self.events.send(StreamEvent::Closed(Some(why)));
    }
}

/// State shared by the API handles and the connection task.
#[derive(Default)]
pub(crate) struct State {
    pub(crate) epoch: u64,
    pub(crate) subs: HashMap<u64, SubEntry>,
    pub(crate) acks: HashMap<u64, AckWaiter>,
    pub(crate) requests: HashMap<u64, oneshot::Sender<std::result::Result<pb::Reply, Fail>>>,
    pub(crate) pings: HashMap<u64, oneshot::Sender<std::result::Result<(), Fail>>>,
    pub(crate) streams: HashMap<u64, StreamEntry>,
    /// Sids for which an Unsub was sent in this epoch's session.
    pub(crate) unsubscribed: Unsubscribed,
    /// The gateway session of this epoch knows every confirmed subscription: set when
    /// [`establish`] takes the snapshot of subscriptions to re-send, cleared when the session
    /// ends. An `Unsub` is only sent while it is set (otherwise the next session simply does
    /// not re-subscribe), so the gateway never sees an `Unsub` for a sid it does not know.
    pub(crate) live: bool,
    pub(crate) welcome: Option<pb::Welcome>,
    /// The gateway sent `GoAway`: until this session ends, new session work waits
    /// (see [`Shared::moving`]) rather than going to the draining gateway.
    pub(crate) moving: bool,
    /// When this session must be ended at the latest, after a `GoAway`.
    pub(crate) move_by: Option<tokio::time::Instant>,
}

impl State {
    /// Answers this session still owes for work it was sent: requests, acks and pongs.
    fn awaiting_answers(&self) -> usize {
        self.acks.len() + self.requests.len() + self.pings.len()
    }
}

impl State {
    /// Queues an `Unsub` for `sid` in this session unless one was already sent; returns the
    /// frame to send (outside the lock).
    pub(crate) fn unsub_once(&mut self, sid: u64) -> Option<Outbound> {
        (self.live && self.unsubscribed.insert(sid))
            .then(|| Outbound::in_epoch(Kind::Unsub(pb::Unsub { sid }), self.epoch))
    }
}

/// Where sessions are opened.
pub(crate) enum Gateways {
    /// One gateway (`http://host:port`).
    Direct(Box<Endpoint>),
    /// The gateways discovered through DNS SRV (`nexus+srv://name`), tried in order.
    Discovered(Arc<Discovery>),
}

/// The transport endpoint for `url` with the adapter's settings (TLS for `https://`).
pub(crate) fn endpoint(
    url: String,
    connect_timeout: Duration,
    tls: &TlsSettings,
) -> Result<Endpoint> {
    let ep = Endpoint::from_shared(url.clone())?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    tls.apply(ep, &url)
}

pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) gateways: Gateways,
    pub(crate) out_tx: mpsc::Sender<Outbound>,
    /// Unbounded, prioritised queue for small control frames produced where we must not
    /// await (Pong, Credit, Unsub, aborts from `Drop`).
    pub(crate) ctl_tx: mpsc::UnboundedSender<Outbound>,
    pub(crate) state: Mutex<State>,
    /// Mirror of `State::epoch` for the writer's lock-free staleness check.
    epoch: AtomicU64,
    /// One counter for sids, ack ids, request ids, stream ids and ping nonces, so a gateway
    /// `Error.ref_id` is unambiguous.
    next_id: AtomicU64,
    pub(crate) connected: AtomicBool,
    /// True while a session is up; confirmed publishes waiting to retry watch it.
    pub(crate) up: watch::Sender<bool>,
    /// Service loops and their in-flight handlers; [`Client::drain`] waits for zero.
    pub(crate) busy: watch::Sender<usize>,
    /// Mirror of [`State::moving`] that callers waiting to register work watch.
    pub(crate) moving: watch::Sender<bool>,
    pub(crate) closed: AtomicBool,
    pub(crate) max_payload: AtomicU64,
    pub(crate) shutdown: watch::Sender<bool>,
    /// The client handle, to give accepted streams a `Client` without a reference cycle.
    pub(crate) handle: Weak<ClientInner>,
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: Config,
        gateways: Gateways,
        out_tx: mpsc::Sender<Outbound>,
        ctl_tx: mpsc::UnboundedSender<Outbound>,
        shutdown: watch::Sender<bool>,
        handle: Weak<ClientInner>,
    ) -> Self {
        Shared {
            config,
            gateways,
            out_tx,
            ctl_tx,
            state: Mutex::new(State {
                epoch: 1,
                ..State::default()
            }),
            epoch: AtomicU64::new(1),
            next_id: AtomicU64::new(1),
            connected: AtomicBool::new(false),
            up: watch::Sender::new(false),
            busy: watch::Sender::new(0),
            moving: watch::Sender::new(false),
            closed: AtomicBool::new(false),
            max_payload: AtomicU64::new(0),
            shutdown,
            handle,
        }
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues a control frame (never blocks).
    pub(crate) fn send_ctl(&self, o: Outbound) {
        let _ = self.ctl_tx.send(o);
    }

    /// Forgets a subscription and tells the gateway (if this session knows it).
    pub(crate) fn remove_sub(&self, sid: u64) {
        let mut st = self.state.lock();
        let entry = st.subs.remove(&sid);
        // Only a confirmed subscription is known to the gateway (an unconfirmed one is still
        // waiting for its Ack, see `Client::add_sub`). While disconnected the next session
        // simply won't re-subscribe it.
        let unsub = if entry.as_ref().is_some_and(|e| e.confirmed) {
            st.unsub_once(sid)
        } else {
            None
        };
        drop(st);
        drop(entry);
        if let Some(o) = unsub {
            self.send_ctl(o);
        }
    }

    /// A `Msg` or `StreamOpen` arrived for a sid we do not (or no longer) know. If this client
    /// already unsubscribed it in this session the frame was simply queued before the gateway
    /// processed the `Unsub`; otherwise the gateway holds a subscription we do not know (a
    /// subscribe we gave up on whose Ack was lost), which one `Unsub` removes.
    fn unknown_sid(&self, st: &mut State, sid: u64) -> Option<Outbound> {
        let o = st.unsub_once(sid);
        if o.is_some() {
            debug!(
                sid,
                "nexus: delivery for an unknown subscription, unsubscribing"
            );
        }
        o
    }

    /// Fails everything in flight with `why` and starts a new epoch.
    fn sweep(&self, why: Fail, drop_subs: bool) {
        let mut st = self.state.lock();
        st.epoch += 1;
        self.epoch.store(st.epoch, Ordering::Release);
        st.live = false;
        st.moving = false;
        st.move_by = None;
        self.moving.send_replace(false);
        st.unsubscribed.clear();
        for (_, w) in st.acks.drain() {
            w.fail(why.clone());
        }
        for (_, tx) in st.requests.drain() {
            let _ = tx.send(Err(why.clone()));
        }
        for (_, tx) in st.pings.drain() {
            let _ = tx.send(Err(why.clone()));
        }
        let streams: Vec<StreamEntry> = st.streams.drain().map(|(_, e)| e).collect();
        let subs = if drop_subs {
            std::mem::take(&mut st.subs)
        } else {
            HashMap::new()
        };
        drop(st);
        for e in streams {
            e.fail(why.clone());
        }
        drop(subs);
    }

    fn client(&self) -> Option<Client> {
        self.handle.upgrade().map(|inner| Client { inner })
    }
}

/// Exponential backoff with jitter: each delay is uniformly drawn from `[d/2, d]`, with `d`
/// doubling from `min` up to `max`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    cur: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        let max = max.max(min);
        Backoff { min, max, cur: min }
    }

    pub(crate) fn reset(&mut self) {
        self.cur = self.min;
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.cur;
        self.cur = (self.cur * 2).min(self.max);
        let half = d / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

struct Session {
    req_tx: mpsc::Sender<pb::Batch>,
    inbound: tonic::Streaming<pb::Batch>,
    leftover: Vec<pb::Frame>,
}

enum SessionEnd {
    Shutdown,
    Failed(String),
    /// The gateway sent `GoAway` and the session is done: reconnect at once, elsewhere.
    Moved,
}

/// Runs the connection until shutdown. `first` receives the outcome of the first attempt;
/// if it fails the task ends (the caller's `connect()` returns the error).
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut out_rx: mpsc::Receiver<Outbound>,
    mut ctl_rx: mpsc::UnboundedReceiver<Outbound>,
    mut shutdown: watch::Receiver<bool>,
    first: oneshot::Sender<Result<()>>,
) {
    let mut first = Some(first);
    let mut backoff = Backoff::new(shared.config.backoff_min, shared.config.backoff_max);
    loop {
        if *shutdown.borrow() {
            break;
        }
        let attempt = tokio::select! {
            r = connect_round(&shared) => r,
            _ = shutdown.wait_for(|v| *v) => break,
        };
        match attempt {
            Ok((session, addr)) => {
                backoff.reset();
                shared.connected.store(true, Ordering::Release);
                shared.up.send_replace(true);
                if let Some(tx) = first.take() {
                    let _ = tx.send(Ok(()));
                } else {
                    info!("nexus: reconnected");
                }
                let end =
                    run_session(&shared, session, &mut out_rx, &mut ctl_rx, &mut shutdown).await;
                shared.connected.store(false, Ordering::Release);
                shared.up.send_replace(false);
                if let (Some(addr), Gateways::Discovered(d), false) =
                    (addr, &shared.gateways, matches!(end, SessionEnd::Shutdown))
                {
                    d.demote(addr);
                }
                match end {
                    SessionEnd::Shutdown => break,
                    SessionEnd::Failed(why) => {
                        warn!(reason = %why, "nexus: session lost, reconnecting");
                        shared.sweep(Fail::Disconnected, false);
                    }
                    SessionEnd::Moved => {
                        info!("nexus: left the draining gateway, connecting to another");
                        shared.sweep(Fail::Disconnected, false);
                        continue;
                    }
                }
            }
            Err(e) => {
                if let Some(tx) = first.take() {
                    let _ = tx.send(Err(e));
                    break;
                }
                warn!(error = %e, "nexus: reconnect attempt failed");
            }
        }
        let delay = backoff.next_delay();
        debug!(?delay, "nexus: backing off");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|v| *v) => break,
        }
    }
    shared.closed.store(true, Ordering::Release);
    shared.connected.store(false, Ordering::Release);
    shared.sweep(Fail::Closed, true);
}

/// One connection round: the direct gateway, or each discovered gateway in order until one
/// accepts a session. Returns the session and, with discovery, the gateway's address.
async fn connect_round(shared: &Shared) -> Result<(Session, Option<SocketAddr>)> {
    let discovery = match &shared.gateways {
        Gateways::Direct(endpoint) => return Ok((establish(shared, endpoint).await?, None)),
        Gateways::Discovered(d) => d,
    };
    let candidates = discovery.candidates().await?;
    let mut attempts = Vec::with_capacity(candidates.len());
    for c in candidates {
        let addr = match c.addr {
            Ok(addr) => addr,
            Err(error) => {
                warn!(gateway = %c.gateway, %error, "nexus: discovered gateway has no address");
                attempts.push(GatewayAttempt {
                    gateway: c.gateway,
                    addr: None,
                    error,
                });
                continue;
            }
        };
        let url = format!("{}://{addr}", shared.config.tls.srv_scheme());
        let result = match endpoint(url, shared.config.connect_timeout, &shared.config.tls) {
            Ok(ep) => establish(shared, &ep).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(session) => {
                info!(gateway = %c.gateway, %addr, "nexus: session established with a discovered gateway");
                return Ok((session, Some(addr)));
            }
            Err(e) => {
                let error = describe(&e);
                discovery.demote(addr);
                warn!(gateway = %c.gateway, %addr, %error, "nexus: gateway did not accept a session, trying the next");
                attempts.push(GatewayAttempt {
                    gateway: c.gateway,
                    addr: Some(addr),
                    error,
                });
            }
        }
    }
    discovery.mark_all_failed();
    Err(Error::NoGateway {
        target: discovery.url().to_owned(),
        attempts,
    })
}

/// Connects, sends Hello, waits for Welcome and re-sends confirmed subscriptions.
async fn establish(shared: &Shared, endpoint: &Endpoint) -> Result<Session> {
    let cfg = &shared.config;
    let channel = endpoint.connect().await?;
    let mut grpc = pb::gateway_client::GatewayClient::new(channel)
        .max_decoding_message_size(MAX_DECODING_BYTES);
    let (req_tx, req_rx) = mpsc::channel::<pb::Batch>(2);
    let hello = pb::Frame {
        kind: Some(Kind::Hello(pb::Hello {
            api_key: cfg.api_key.clone(),
            client_name: cfg.name.clone(),
            language: "rust".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            protocol: PROTOCOL_VERSION,
        })),
    };
    req_tx
        .try_send(pb::Batch {
            frames: vec![hello],
        })
        .map_err(|_| Error::Protocol("request channel full".into()))?;
    let handshake = async {
        let resp = grpc.session(ReceiverStream::new(req_rx)).await?;
        let mut inbound = resp.into_inner();
        let batch = inbound
            .message()
            .await?
            .ok_or_else(|| Error::Protocol("gateway ended the session before Welcome".into()))?;
        Ok::<_, Error>((inbound, batch))
    };
    let (inbound, batch) = tokio::time::timeout(cfg.connect_timeout, handshake)
        .await
        .map_err(|_| Error::Timeout {
            subject: "<handshake>".into(),
            after: cfg.connect_timeout,
            detail: None,
        })??;
    let mut frames = batch.frames.into_iter();
    let welcome = match frames.next().and_then(|f| f.kind) {
        Some(Kind::Welcome(w)) => w,
        Some(Kind::Error(e)) => return Err(Error::from_gateway(e, "", cfg.connect_timeout)),
        other => {
            return Err(Error::Protocol(format!(
                "expected Welcome as the first frame, got {other:?}"
            )));
        }
    };
    if welcome.protocol != 0 && welcome.protocol != PROTOCOL_VERSION {
        warn!(
            protocol = welcome.protocol,
            "nexus: gateway speaks another protocol version"
        );
    }
    debug!(session = %welcome.session_id, gateway = %welcome.gateway_id, region = %welcome.region, "nexus: welcome");
    shared
        .max_payload
        .store(welcome.max_payload, Ordering::Relaxed);
    let resubs: Vec<pb::Frame> = {
        let mut st = shared.state.lock();
        st.welcome = Some(welcome);
        st.live = true;
        st.subs
            .iter()
            .filter(|(_, s)| s.confirmed)
            .map(|(&sid, s)| pb::Frame {
                kind: Some(Kind::Sub(pb::Sub {
                    sid,
                    subject: s.subject.clone(),
                    queue_group: s.queue_group.clone(),
                    ack_id: 0,
                })),
            })
            .collect()
    };
    if !resubs.is_empty() {
        debug!(count = resubs.len(), "nexus: resubscribing");
    }
    let chunk = cfg.limits.max_frames.max(1);
    let mut resubs = resubs.into_iter().peekable();
    while resubs.peek().is_some() {
        let frames: Vec<_> = resubs.by_ref().take(chunk).collect();
        if req_tx.send(pb::Batch { frames }).await.is_err() {
            // This epoch's session was live (Unsubs may be queued for it): retire it.
            shared.sweep(Fail::Disconnected, false);
            return Err(Error::Disconnected);
        }
    }
    Ok(Session {
        req_tx,
        inbound,
        leftover: frames.collect(),
    })
}

async fn run_session(
    shared: &Arc<Shared>,
    session: Session,
    out_rx: &mut mpsc::Receiver<Outbound>,
    ctl_rx: &mut mpsc::UnboundedReceiver<Outbound>,
    shutdown: &mut watch::Receiver<bool>,
) -> SessionEnd {
    let Session {
        req_tx,
        mut inbound,
        leftover,
    } = session;
    let reader = async {
        for f in leftover {
            handle_frame(shared, f).await;
        }
        loop {
            match inbound.message().await {
                Ok(Some(batch)) => {
                    for f in batch.frames {
                        handle_frame(shared, f).await;
                    }
                }
                Ok(None) => return SessionEnd::Failed("gateway ended the session".into()),
                Err(s) => return SessionEnd::Failed(s.to_string()),
            }
        }
    };
    let writer = write_loop(shared, out_rx, ctl_rx, req_tx);
    tokio::select! {
        e = reader => e,
        e = writer => e,
        e = moved(shared) => e,
        _ = shutdown.wait_for(|v| *v) => SessionEnd::Shutdown,
    }
}

/// Completes once the gateway sent `GoAway` and the session may end: nothing sent on it
/// awaits an answer any more, or the drain deadline is close.
async fn moved(shared: &Shared) -> SessionEnd {
    let mut moving = shared.moving.subscribe();
    let _ = moving.wait_for(|m| *m).await;
    loop {
        let (waiting, by) = {
            let st = shared.state.lock();
            (st.awaiting_answers(), st.move_by)
        };
        let late = by.is_none_or(|by| tokio::time::Instant::now() >= by);
        if waiting == 0 || late {
            if waiting > 0 {
                warn!(
                    waiting,
                    "nexus: drain deadline near with answers outstanding; moving anyway"
                );
            }
            return SessionEnd::Moved;
        }
        // Only during a move, for at most the drain period.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The gateway is draining (`GoAway`): stop starting work on this session and plan the move.
fn on_go_away(shared: &Shared, g: pb::GoAway) {
    // Leave before the gateway cuts the session: half the period, at most 1 s short of it.
    let period = Duration::from_millis(u64::from(g.drain_ms));
    let margin = (period / 2).min(Duration::from_secs(1));
    let mut st = shared.state.lock();
    if st.moving {
        return;
    }
    st.moving = true;
    st.move_by = Some(tokio::time::Instant::now() + period - margin);
    drop(st);
    info!(reason = %g.reason, drain_ms = g.drain_ms, "nexus: gateway is draining (GoAway); moving");
    shared.moving.send_replace(true);
}

/// Drains the outbound queues into batches (see [`crate::batch`]).
async fn write_loop(
    shared: &Shared,
    out_rx: &mut mpsc::Receiver<Outbound>,
    ctl_rx: &mut mpsc::UnboundedReceiver<Outbound>,
    req_tx: mpsc::Sender<pb::Batch>,
) -> SessionEnd {
    let mut co = Coalescer::new(shared.config.limits);
    loop {
        let first = tokio::select! {
            biased;
            Some(o) = ctl_rx.recv() => o,
            o = out_rx.recv() => match o {
                Some(o) => o,
                None => return SessionEnd::Shutdown,
            },
        };
        let epoch = shared.epoch.load(Ordering::Acquire);
        let keep = |o: Outbound| (o.epoch == 0 || o.epoch == epoch).then_some(o.frame);
        if let Some(f) = keep(first) {
            co.push(f);
        }
        co.fill(|| {
            loop {
                let o = match ctl_rx.try_recv() {
                    Ok(o) => o,
                    Err(_) => out_rx.try_recv().ok()?,
                };
                if let Some(f) = keep(o) {
                    return Some(f);
                }
            }
        });
        if co.is_empty() {
            continue;
        }
        if req_tx.send(co.take()).await.is_err() {
            return SessionEnd::Failed("request stream closed".into());
        }
    }
}

/// Routes one inbound frame.
async fn handle_frame(shared: &Arc<Shared>, frame: pb::Frame) {
    match frame.kind {
        Some(Kind::Msg(m)) => deliver(shared, m).await,
        Some(Kind::Reply(r)) => {
            let tx = shared.state.lock().requests.remove(&r.req_id);
            match tx {
                Some(tx) => {
                    let _ = tx.send(Ok(r));
                }
                None => debug!(req_id = r.req_id, "nexus: reply for unknown request"),
            }
        }
        Some(Kind::Ack(a)) => on_ack(shared, a),
        Some(Kind::Nack(n)) => {
            let w = shared.state.lock().acks.remove(&n.ack_id);
            if let Some(w) = w {
                w.fail(Fail::from_pb(n.error));
            }
        }
        Some(Kind::Credit(c)) => {
            let mut st = shared.state.lock();
            if let Some(e) = st.streams.get_mut(&c.stream_id) {
                e.resolve_opened(Ok(()));
                e.credit.grant(c.credits);
            }
        }
        Some(Kind::Error(e)) => on_error(shared, e),
        Some(Kind::Ping(p)) => {
            shared.send_ctl(Outbound::any(Kind::Pong(pb::Pong { nonce: p.nonce })))
        }
        Some(Kind::Pong(p)) => {
            let tx = shared.state.lock().pings.remove(&p.nonce);
            if let Some(tx) = tx {
                let _ = tx.send(Ok(()));
            }
        }
        Some(Kind::StreamOpen(o)) => accept_stream(shared, o),
        Some(Kind::StreamData(d)) => {
            let mut st = shared.state.lock();
            if let Some(e) = st.streams.get_mut(&d.stream_id) {
                e.resolve_opened(Ok(()));
                let msg = Message::from_parts(String::new(), d.headers, d.payload);
                let _ = e.events.send(StreamEvent::Data(msg));
            }
        }
        Some(Kind::StreamClose(c)) => {
            let mut st = shared.state.lock();
            match c.error {
                Some(err) => {
                    let entry = st.streams.remove(&c.stream_id);
                    drop(st);
                    if let Some(entry) = entry {
                        entry.fail(Fail::from_pb(Some(err)));
                    }
                }
                None => {
                    if let Some(e) = st.streams.get_mut(&c.stream_id) {
                        e.resolve_opened(Ok(()));
                        e.remote_finished = true;
                        let _ = e.events.send(StreamEvent::Closed(None));
                        if e.local_finished {
                            st.streams.remove(&c.stream_id);
                        }
                    }
                }
            }
        }
        Some(Kind::GoAway(g)) => on_go_away(shared, g),
        Some(Kind::Welcome(_)) => debug!("nexus: ignoring repeated Welcome"),
        Some(other) => debug!(frame = ?other, "nexus: ignoring unexpected frame"),
        None => {}
    }
}

async fn deliver(shared: &Shared, m: pb::Msg) {
    let sid = m.sid;
    let (tx, msg) = {
        let mut st = shared.state.lock();
        match st.subs.get(&sid) {
            Some(SubEntry {
                kind: SubKind::Messages(tx),
                ..
            }) => match tx.try_send(Message::from_msg(m)) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(msg)) => (tx.clone(), msg),
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            },
            Some(_) => {
                debug!(sid, "nexus: message for a stream listener ignored");
                return;
            }
            None => {
                let unsub = shared.unknown_sid(&mut st, sid);
                drop(st);
                if let Some(o) = unsub {
                    shared.send_ctl(o);
                }
                return;
            }
        }
    };
    // The subscription's buffer is full: wait, which backpressures the gateway.
    let _ = tx.send(msg).await;
}

fn on_ack(shared: &Shared, a: pb::Ack) {
    let mut st = shared.state.lock();
    let Some(w) = st.acks.remove(&a.ack_id) else {
        return;
    };
    let unconfirmed = match (w.tx, w.sid) {
        (Some(tx), sid) => {
            if let Some(sub) = sid.and_then(|sid| st.subs.get_mut(&sid)) {
                sub.confirmed = true;
            }
            // The subscribe call went away before its Ack (cancelled): undo it.
            tx.send(Ok(a)).err().and(sid)
        }
        // The subscribe timed out locally but the gateway applied it after all: undo it.
        (None, sid) => sid,
    };
    let Some(sid) = unconfirmed else {
        return;
    };
    let entry = st.subs.remove(&sid);
    let unsub = st.unsub_once(sid);
    drop(st);
    drop(entry);
    if let Some(o) = unsub {
        shared.send_ctl(o);
    }
}

/// What a gateway `Error` about one of our streams means for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamErrorEffect {
    /// The frame was refused but the stream stays open at the gateway.
    FrameRefused,
    /// The gateway no longer has the stream: fail it locally.
    StreamGone,
}

/// Classifies an `Error{ref_id: stream id}` (protocol §8.3/§8.4).
fn stream_error_effect(code: pb::ErrorCode) -> StreamErrorEffect {
    match code {
        // A StreamData over max_payload is refused without spending credit and the stream
        // stays open. (The other LIMIT, data sent without credit, aborts the stream, but this
        // client never sends without credit: it spends a local credit for every frame and the
        // gateway's count is never lower than ours.)
        pb::ErrorCode::Limit => StreamErrorEffect::FrameRefused,
        // INVALID "stream N is not open on this session" (it ended on the gateway, e.g. a
        // frame that crossed an abort), SLOW_CONSUMER "the receiving side ... was
        // disconnected; stream aborted", or anything else: the stream is over.
        _ => StreamErrorEffect::StreamGone,
    }
}

fn on_error(shared: &Shared, e: pb::Error) {
    let code = pb::ErrorCode::try_from(e.code).unwrap_or(pb::ErrorCode::Unspecified);
    warn!(code = code.as_str_name(), message = %e.message, ref_id = e.ref_id, "nexus: gateway error");
    if e.ref_id == 0 {
        return;
    }
    let mut st = shared.state.lock();
    if code == pb::ErrorCode::SlowConsumer
        && let Some(sub) = st.subs.get(&e.ref_id)
    {
        sub.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    // Ids come from one counter, so ref_id names at most one pending operation.
    if let Some(tx) = st.requests.remove(&e.ref_id) {
        let _ = tx.send(Err(Fail::from_pb(Some(e))));
    } else if let Some(w) = st.acks.remove(&e.ref_id) {
        w.fail(Fail::from_pb(Some(e)));
    } else if let Some(entry) = st.streams.get(&e.ref_id) {
        match stream_error_effect(code) {
            StreamErrorEffect::FrameRefused => {
                // The refused frame spent a local credit but no credit at the gateway.
                entry.credit.grant(1);
            }
            StreamErrorEffect::StreamGone => {
                let entry = st.streams.remove(&e.ref_id);
                drop(st);
                if let Some(entry) = entry {
                    entry.fail(Fail::from_pb(Some(e)));
                }
            }
        }
    }
}

fn reject_stream(shared: &Shared, stream_id: u64, code: pb::ErrorCode, message: &str) {
    shared.send_ctl(Outbound::any(Kind::StreamClose(pb::StreamClose {
        stream_id,
        error: Some(pb::Error {
            code: code as i32,
            message: message.to_owned(),
            ref_id: stream_id,
        }),
    })));
}

/// A StreamOpen for one of our stream listeners.
fn accept_stream(shared: &Shared, o: pb::StreamOpen) {
    let listener = {
        let st = shared.state.lock();
        match st.subs.get(&o.sid) {
            Some(SubEntry {
                kind: SubKind::Streams(tx),
                ..
            }) => Some((tx.clone(), st.epoch)),
            _ => None,
        }
    };
    let Some((listener, epoch)) = listener else {
        let unsub = {
            let mut st = shared.state.lock();
            if st.subs.contains_key(&o.sid) {
                None
            } else {
                shared.unknown_sid(&mut st, o.sid)
            }
        };
        if let Some(u) = unsub {
            shared.send_ctl(u);
        }
        reject_stream(
            shared,
            o.stream_id,
            pb::ErrorCode::ServiceError,
            "subscription does not accept streams",
        );
        return;
    };
    let Some(client) = shared.client() else {
        reject_stream(
            shared,
            o.stream_id,
            pb::ErrorCode::Unavailable,
            "client closing",
        );
        return;
    };
    let window = shared.config.stream_window;
    let (stream, entry) = BiStream::new_parts(
        client,
        o.stream_id,
        o.subject,
        Headers(o.headers),
        o.credits,
        window,
        epoch,
        None,
    );
    shared.state.lock().streams.insert(o.stream_id, entry);
    shared.send_ctl(Outbound::in_epoch(
        Kind::Credit(pb::Credit {
            stream_id: o.stream_id,
            credits: window,
        }),
        epoch,
    ));
    if let Err(e) = listener.try_send(stream) {
        warn!(
            stream_id = o.stream_id,
            "nexus: stream listener backlog full or closed, refusing stream"
        );
        // Dropping the stream aborts it (outside the state lock).
        drop(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Shared` with no connection behind it, and the receiving end of its control queue.
    fn shared() -> (Arc<Shared>, mpsc::UnboundedReceiver<Outbound>) {
        let config = Config {
            name: "test".into(),
            api_key: String::new(),
            request_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(1),
            backoff_max: Duration::from_millis(2),
            limits: BatchLimits {
                max_frames: 8,
                max_bytes: 1024,
            },
            subscription_capacity: 4,
            stream_window: 4,
            listener_backlog: 4,
            max_concurrent_handlers: 4,
            publish_retry_timeout: Duration::from_secs(1),
            local_payload_check: true,
            tls: TlsSettings::default(),
        };
        let (out_tx, _out_rx) = mpsc::channel(8);
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let (shutdown, _) = watch::channel(false);
        let shared = Shared::new(
            config,
            Gateways::Direct(Box::new(Endpoint::from_static("http://127.0.0.1:1"))),
            out_tx,
            ctl_tx,
            shutdown,
            Weak::new(),
        );
        shared.state.lock().live = true;
        (Arc::new(shared), ctl_rx)
    }

    fn add_sub(shared: &Shared, sid: u64) -> mpsc::Receiver<Message> {
        let (tx, rx) = mpsc::channel(4);
        shared.state.lock().subs.insert(
            sid,
            SubEntry {
                subject: "a.b".into(),
                queue_group: String::new(),
                kind: SubKind::Messages(tx),
                confirmed: true,
                dropped: Arc::new(AtomicU64::new(0)),
            },
        );
        rx
    }

    fn msg(sid: u64) -> pb::Frame {
        pb::Frame {
            kind: Some(Kind::Msg(pb::Msg {
                sid,
                subject: "a.b".into(),
                ..Default::default()
            })),
        }
    }

    fn unsubs(ctl: &mut mpsc::UnboundedReceiver<Outbound>) -> Vec<u64> {
        let mut v = Vec::new();
        while let Ok(o) = ctl.try_recv() {
            if let Some(Kind::Unsub(u)) = o.frame.kind {
                v.push(u.sid);
            }
        }
        v
    }

    fn error_frame(code: pb::ErrorCode, ref_id: u64) -> pb::Frame {
        pb::Frame {
            kind: Some(Kind::Error(pb::Error {
                code: code as i32,
                message: "test".into(),
                ref_id,
            })),
        }
    }

    fn add_stream(
        shared: &Shared,
        id: u64,
        credit: u32,
    ) -> (Arc<SendCredit>, mpsc::UnboundedReceiver<StreamEvent>) {
        let (events, rx) = mpsc::unbounded_channel();
        let credit = Arc::new(SendCredit::new(credit));
        shared.state.lock().streams.insert(
            id,
            StreamEntry {
                events,
                credit: credit.clone(),
                opened: None,
                local_finished: false,
                remote_finished: false,
            },
        );
        (credit, rx)
    }

    #[tokio::test]
    async fn late_msg_after_unsubscribe_sends_no_second_unsub() {
        let (shared, mut ctl) = shared();
        let mut rx = add_sub(&shared, 5);
        handle_frame(&shared, msg(5)).await;
        assert!(rx.try_recv().is_ok());
        shared.remove_sub(5);
        assert_eq!(unsubs(&mut ctl), vec![5]);
        // Msgs the gateway queued before it processed the Unsub: dropped, no second Unsub.
        handle_frame(&shared, msg(5)).await;
        handle_frame(&shared, msg(5)).await;
        assert_eq!(unsubs(&mut ctl), Vec::<u64>::new());
        // Removing it again (e.g. close after unsubscribe) sends nothing either.
        shared.remove_sub(5);
        assert_eq!(unsubs(&mut ctl), Vec::<u64>::new());
    }

    #[tokio::test]
    async fn msg_for_a_sid_never_unsubscribed_sends_one_unsub() {
        let (shared, mut ctl) = shared();
        handle_frame(&shared, msg(9)).await;
        handle_frame(&shared, msg(9)).await;
        assert_eq!(unsubs(&mut ctl), vec![9]);
    }

    #[tokio::test]
    async fn no_unsub_while_the_session_is_down() {
        let (shared, mut ctl) = shared();
        let _rx = add_sub(&shared, 5);
        shared.sweep(Fail::Disconnected, false);
        assert!(!shared.state.lock().live);
        // The next session will not re-subscribe it, so the gateway will not know the sid.
        shared.remove_sub(5);
        assert_eq!(unsubs(&mut ctl), Vec::<u64>::new());
        assert!(shared.state.lock().subs.is_empty());
    }

    #[test]
    fn unconfirmed_subscription_is_not_unsubscribed() {
        let (shared, mut ctl) = shared();
        let _rx = add_sub(&shared, 5);
        shared.state.lock().subs.get_mut(&5).unwrap().confirmed = false;
        shared.remove_sub(5);
        assert_eq!(unsubs(&mut ctl), Vec::<u64>::new());
    }

    #[test]
    fn unsubscribed_is_bounded_and_forgets_oldest_first() {
        let mut u = Unsubscribed::default();
        assert!(u.insert(1));
        assert!(!u.insert(1));
        for sid in 2..=(MAX_UNSUBSCRIBED as u64 + 1) {
            assert!(u.insert(sid));
        }
        assert!(!u.contains(1), "oldest evicted");
        assert!(u.contains(2) && u.contains(MAX_UNSUBSCRIBED as u64 + 1));
        assert_eq!(u.set.len(), MAX_UNSUBSCRIBED);
        assert_eq!(u.order.len(), MAX_UNSUBSCRIBED);
    }

    #[tokio::test]
    async fn late_ack_of_abandoned_subscribe_unsubscribes() {
        let (shared, mut ctl) = shared();
        // A subscribe that timed out locally (its waiter's `tx` was taken).
        shared.state.lock().acks.insert(
            7,
            AckWaiter {
                tx: None,
                sid: Some(6),
            },
        );
        let ack = |ack_id| pb::Frame {
            kind: Some(Kind::Ack(pb::Ack {
                ack_id,
                ..Default::default()
            })),
        };
        handle_frame(&shared, ack(7)).await;
        assert_eq!(unsubs(&mut ctl), vec![6]);
        // Its deliveries, if any were queued, are then dropped silently.
        handle_frame(&shared, msg(6)).await;
        assert_eq!(unsubs(&mut ctl), Vec::<u64>::new());

        // A subscribe whose caller went away before the Ack is undone too.
        let _sub = add_sub(&shared, 8);
        shared.state.lock().subs.get_mut(&8).unwrap().confirmed = false;
        let (tx, rx) = oneshot::channel();
        shared
            .state
            .lock()
            .acks
            .insert(10, AckWaiter::new(tx, Some(8)));
        drop(rx);
        handle_frame(&shared, ack(10)).await;
        assert_eq!(unsubs(&mut ctl), vec![8]);
        assert!(shared.state.lock().subs.is_empty());
    }

    #[tokio::test]
    async fn oversize_stream_data_refusal_keeps_the_stream_open() {
        let (shared, _ctl) = shared();
        let (credit, mut events) = add_stream(&shared, 3, 1);
        credit.take().await.unwrap(); // the refused frame spent a local credit
        handle_frame(&shared, error_frame(pb::ErrorCode::Limit, 3)).await;
        assert!(shared.state.lock().streams.contains_key(&3));
        assert!(events.try_recv().is_err(), "no close event");
        assert_eq!(credit.available(), 1, "credit refunded");
        assert!(matches!(credit.try_take(), Some(Ok(()))));
    }

    #[tokio::test]
    async fn stream_errors_that_end_the_stream_fail_it() {
        let (shared, _ctl) = shared();
        for (id, code) in [
            (3, pb::ErrorCode::Invalid),
            (4, pb::ErrorCode::SlowConsumer),
            (5, pb::ErrorCode::ServiceError),
        ] {
            let (credit, mut events) = add_stream(&shared, id, 1);
            handle_frame(&shared, error_frame(code, id)).await;
            assert!(!shared.state.lock().streams.contains_key(&id), "{code:?}");
            assert!(matches!(
                events.try_recv(),
                Ok(StreamEvent::Closed(Some(_)))
            ));
            assert!(matches!(credit.try_take(), Some(Err(_))));
        }
    }

    #[tokio::test]
    async fn slow_consumer_for_a_sid_is_counted() {
        let (shared, _ctl) = shared();
        let _rx = add_sub(&shared, 5);
        handle_frame(&shared, error_frame(pb::ErrorCode::SlowConsumer, 5)).await;
        let dropped = shared.state.lock().subs[&5].dropped.load(Ordering::Relaxed);
        assert_eq!(dropped, 1);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut nominal = Duration::from_millis(100);
        for _ in 0..12 {
            let d = b.next_delay();
            assert!(d >= nominal / 2 && d <= nominal, "{d:?} vs {nominal:?}");
            nominal = (nominal * 2).min(Duration::from_secs(5));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
