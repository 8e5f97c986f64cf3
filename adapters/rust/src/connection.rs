//! The connection task: session establishment (Hello/Welcome), the writer (batching), the
//! reader (which routes inbound frames through [`inbound`]), moving off a draining gateway, and
//! reconnection with exponential backoff ([`backoff`]).
//!
//! One task per [`Client`](crate::Client) owns the outbound queue receivers. Each session runs
//! a reader and a writer concurrently inside that task. Shared state (subscriptions, pending
//! acks, requests, pings and streams) lives in [`Shared`] behind a `parking_lot` mutex that is
//! never held across an `.await`.
//!
//! **Backpressure.** Deliveries go into a bounded per-subscription inbox ([`crate::inbox`]).
//! When it is full the reader *awaits*, so it stops reading from the session; TCP (and HTTP/2)
//! flow control then pushes back on the gateway, which applies its slow-consumer policy.
//! Outbound, `publish()` awaits room in the bounded outbound queue ([`crate::queue`]), and the
//! writer awaits each batch's write (over gRPC, through a 2-slot channel into the request
//! stream), so the transport's backpressure reaches publishers. A consequence: a subscription
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

use nexus_proto::ByteString;
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
use crate::native::{NativeEndpoint, NativeReader, NativeWriter, Transport};
use crate::queue::{Item, OutboundQueue};
use crate::stream::{BiStream, StreamEvent};
use crate::tls::TlsSettings;

mod backoff;
mod establish;
mod inbound;

pub(crate) use backoff::Backoff;
pub(crate) use establish::{Dial, endpoint};
use establish::{Session, SessionTx, establish};
use inbound::{handle_frame, route_frames};

/// Protocol version spoken by this adapter.
pub(crate) const PROTOCOL_VERSION: u32 = 1;
/// Largest inbound batch accepted from the gateway.
pub(crate) const MAX_DECODING_BYTES: usize = 64 << 20;
/// How many sids [`Unsubscribed`] remembers per session (oldest forgotten first).
const MAX_UNSUBSCRIBED: usize = 16 * 1024;

/// Settings fixed at connect time.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// How discovered gateways are reached.
    pub(crate) transport: Transport,
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
    pub(crate) compression: nexus_proto::encoding::Policy,
    pub(crate) tls: TlsSettings,
}

/// Where deliveries for a subscription go.
pub(crate) enum SubKind {
    Messages(crate::inbox::Inbox),
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

/// A map keyed by an id this client made.
pub(crate) type IdMap<V> = HashMap<u64, V, rustc_hash::FxBuildHasher>;

/// State shared by the API handles and the connection task.
#[derive(Default)]
pub(crate) struct State {
    pub(crate) epoch: u64,
    /// Keyed by ids this client made (sids, ack, request, ping and stream ids), so a fast
    /// hash: a delivered message looks its subscription up, and SipHash was ~1 % of a
    /// message's cost.
    pub(crate) subs: IdMap<SubEntry>,
    pub(crate) acks: IdMap<AckWaiter>,
    pub(crate) requests: IdMap<oneshot::Sender<std::result::Result<pb::Reply, Fail>>>,
    pub(crate) pings: IdMap<oneshot::Sender<std::result::Result<(), Fail>>>,
    pub(crate) streams: IdMap<StreamEntry>,
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
    /// Requests delivered to this client's responders on this session and not answered yet
    /// (reply inbox -> the request's deadline): a move waits for their replies to be written,
    /// since only the gateway that delivered a request takes its reply.
    owed: HashMap<ByteString, tokio::time::Instant>,
}

impl State {
    /// Answers still to come on this session: for requests, acks and pongs it sent, and
    /// replies its responders owe (until their deadline).
    fn awaiting_answers(&mut self, now: tokio::time::Instant) -> usize {
        self.owed.retain(|_, deadline| *deadline > now);
        self.acks.len() + self.requests.len() + self.pings.len() + self.owed.len()
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
    /// One gateway (`http://host:port`, or `nexus+tcp://`/`nexus+tls://`).
    Direct(Dial),
    /// The gateways discovered through DNS SRV (`nexus+srv://name`), tried in order.
    Discovered(Arc<Discovery>),
}

pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) gateways: Gateways,
    /// Frames for the writer, in order (publishes encoded into it).
    pub(crate) outbound: OutboundQueue,
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
    /// Codecs the current session's gateway accepts.
    pub(crate) codecs: crate::compression::Negotiated,
    pub(crate) shutdown: watch::Sender<bool>,
    /// The client handle, to give accepted streams a `Client` without a reference cycle.
    pub(crate) handle: Weak<ClientInner>,
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: Config,
        gateways: Gateways,
        outbound: OutboundQueue,
        ctl_tx: mpsc::UnboundedSender<Outbound>,
        shutdown: watch::Sender<bool>,
        handle: Weak<ClientInner>,
    ) -> Self {
        Shared {
            config,
            gateways,
            outbound,
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
            codecs: Default::default(),
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
        st.owed.clear();
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
            IdMap::default()
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
                let end = run_session(&shared, session, &mut ctl_rx, &mut shutdown).await;
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
    shared.outbound.close();
    shared.connected.store(false, Ordering::Release);
    shared.sweep(Fail::Closed, true);
}

/// One connection round: the direct gateway, or each discovered gateway in order until one
/// accepts a session. When every gateway of a cached answer failed, DNS is asked again at
/// once and the gateways it adds are tried in the same round (in the fresh answer's order),
/// before the caller backs off. Returns the session and, with discovery, the gateway's
/// address.
async fn connect_round(shared: &Shared) -> Result<(Session, Option<SocketAddr>)> {
    let discovery = match &shared.gateways {
        Gateways::Direct(dial) => return Ok((establish(shared, dial).await?, None)),
        Gateways::Discovered(d) => d,
    };
    let (mut candidates, mut resolved) = discovery.candidates().await?;
    let mut attempts = Vec::with_capacity(candidates.len());
    // What this round tried: addresses, and gateways that had no address.
    let mut tried: HashSet<SocketAddr> = HashSet::new();
    let mut unaddressed: HashSet<String> = HashSet::new();
    loop {
        for c in candidates {
            let addr = match c.addr {
                Ok(addr) => addr,
                Err(error) => {
                    warn!(gateway = %c.gateway, %error, "nexus: discovered gateway has no address");
                    unaddressed.insert(c.gateway.clone());
                    attempts.push(GatewayAttempt {
                        gateway: c.gateway,
                        addr: None,
                        error,
                    });
                    continue;
                }
            };
            tried.insert(addr);
            let dial = match shared.config.transport {
                Transport::Native => Ok(Dial::Native(Box::new(NativeEndpoint::discovered(
                    addr,
                    shared.config.tls.srv,
                )))),
                Transport::Grpc => {
                    let url = format!("{}://{addr}", shared.config.tls.srv_scheme());
                    endpoint(url, shared.config.connect_timeout, &shared.config.tls)
                        .map(|ep| Dial::Grpc(Box::new(ep)))
                }
            };
            let result = match dial {
                Ok(dial) => establish(shared, &dial).await,
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
        if resolved {
            break;
        }
        // Every gateway of a cached answer failed: the answer may be older than the gateways
        // that live now (e.g. taken while the gateway that just died was the only one up).
        // Ask DNS again at once, and try what it adds, before backing off.
        resolved = true;
        candidates = match discovery.candidates().await {
            Ok((fresh, _)) => fresh
                .into_iter()
                .filter(|c| match &c.addr {
                    Ok(addr) => !tried.contains(addr),
                    Err(_) => !unaddressed.contains(&c.gateway),
                })
                .collect(),
            Err(e) => {
                debug!(error = %e, "nexus: re-resolution after a failed cached answer failed");
                break;
            }
        };
        debug!(
            new = candidates.len(),
            "nexus: every cached gateway failed, resolved again"
        );
    }
    Err(Error::NoGateway {
        target: discovery.url().to_owned(),
        attempts,
    })
}

async fn run_session(
    shared: &Arc<Shared>,
    session: Session,
    ctl_rx: &mut mpsc::UnboundedReceiver<Outbound>,
    shutdown: &mut watch::Receiver<bool>,
) -> SessionEnd {
    let Session {
        tx,
        mut inbound,
        leftover,
    } = session;
    let reader = async {
        let mut wakes = crate::inbox::Wakes::default();
        for f in leftover {
            handle_frame(shared, f).await;
        }
        loop {
            match inbound.message().await {
                Ok(Some(mut frames)) => loop {
                    let routed = route_frames(shared, &mut frames, &mut wakes);
                    wakes.wake();
                    match routed {
                        Ok(Some(full)) => full.deliver().await,
                        Ok(None) => break,
                        Err(e) => return SessionEnd::Failed(establish::bad_batch(&e)),
                    }
                },
                // After a GoAway the writer half-closed the session; the gateway ends it.
                _ if shared.state.lock().moving => return SessionEnd::Moved,
                Ok(None) => return SessionEnd::Failed("gateway ended the session".into()),
                Err(s) => return SessionEnd::Failed(s.to_string()),
            }
        }
    };
    let writer = async {
        match write_loop(shared, ctl_rx, tx).await {
            // Half-closed: the reader takes what the gateway still sends until it ends the
            // session; don't wait for that forever.
            SessionEnd::Moved => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                SessionEnd::Moved
            }
            end => end,
        }
    };
    tokio::select! {
        e = reader => e,
        e = writer => e,
        _ = shutdown.wait_for(|v| *v) => SessionEnd::Shutdown,
    }
}

/// Completes once the gateway sent `GoAway` and the session may end: nothing sent on it
/// awaits an answer any more, or the drain deadline is close.
async fn moved(shared: &Shared) -> SessionEnd {
    let mut moving = shared.moving.subscribe();
    let _ = moving.wait_for(|m| *m).await;
    loop {
        let now = tokio::time::Instant::now();
        let (waiting, by) = {
            let mut st = shared.state.lock();
            (st.awaiting_answers(now), st.move_by)
        };
        let late = by.is_none_or(|by| now >= by);
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

/// Drains the outbound queues into batches (see [`crate::batch`]).
async fn write_loop(
    shared: &Shared,
    ctl_rx: &mut mpsc::UnboundedReceiver<Outbound>,
    mut tx: SessionTx,
) -> SessionEnd {
    let mut co = Coalescer::new(shared.config.limits);
    let ready_to_move = moved(shared);
    tokio::pin!(ready_to_move);
    let mut replied: Vec<ByteString> = Vec::new();
    let mut taken: Vec<Item> = Vec::new();
    loop {
        let first = tokio::select! {
            biased;
            Some(o) = ctl_rx.recv() => Some(o),
            // Half-closes the session.
            end = &mut ready_to_move => {
                tx.finish().await;
                return end;
            }
            () = shared.outbound.readable() => None,
        };
        let epoch = shared.epoch.load(Ordering::Acquire);
        let policy = &shared.config.compression;
        let codecs = shared.codecs.get();
        let mut push = |co: &mut Coalescer, o: Outbound| {
            if o.epoch != 0 && o.epoch != epoch {
                return;
            }
            let mut frame = o.frame;
            match &frame.kind {
                Some(Kind::Reply(r)) if !r.reply_to.is_empty() => replied.push(r.reply_to.clone()),
                Some(Kind::Nack(n)) if !n.reply_to.is_empty() => {
                    replied.push(n.reply_to.as_str().into())
                }
                _ => {}
            }
            crate::compression::encode_frame(&mut frame, policy, codecs);
            co.push_frame(&frame);
        };
        // Control frames first, then the queue in order.
        if let Some(o) = first {
            push(&mut co, o);
        }
        while !co.is_full() {
            match ctl_rx.try_recv() {
                Ok(o) => push(&mut co, o),
                Err(_) => break,
            }
        }
        // The queue counts a frame's bytes before compression: take again while the batch,
        // as encoded, still has room (a compressed 1 MiB publish takes a few hundred bytes).
        while !co.is_full() {
            shared.outbound.take_into(co.room(), &mut taken);
            if taken.is_empty() {
                break;
            }
            for item in taken.drain(..) {
                match item {
                    Item::Chunk { bytes, frames } => co.push_chunk(bytes, frames),
                    Item::Frame { o, .. } => push(&mut co, o),
                }
            }
        }
        if co.is_empty() {
            continue;
        }
        let batch = co.take();
        if !tx.send(batch).await {
            return SessionEnd::Failed("request stream closed".into());
        }
        if !replied.is_empty() {
            let mut st = shared.state.lock();
            for r in replied.drain(..) {
                st.owed.remove(&r);
            }
        }
    }
}
