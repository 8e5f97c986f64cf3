//! Bidirectional streams: the link between an opener and the responder the balancer chose,
//! with credit-based flow control relayed end to end. Either side may be a session of this
//! gateway or, when the responder is on another gateway of the region, that gateway: its
//! frames then travel over the cluster link ([`StreamRelay`], implemented by federation),
//! and each gateway keeps the credit counters of the sessions it serves.
//!
//! Each side may send only as many `StreamData` frames as its peer granted with `Credit`.
//! The gateway keeps the credit counters, relays grants, and aborts a stream whose sender
//! overruns them, so the gateway never holds more than the granted frames for a stream:
//! backpressure reaches the producing application instead of piling up here.
//!
//! Stream frames are never dropped by the slow-consumer policy: data was asked for with
//! credit, and credit and close frames are control frames. A receiver that stops reading
//! makes the sender wait; past `slow_consumer.max_wait_ms` the receiver is cut off, the
//! stream is aborted, and the sender gets an Error{SLOW_CONSUMER} naming the stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use nexus_proto::v1::{self, ErrorCode, frame::Kind};

use crate::connection::Connection;
use crate::metrics::{Direction, Limit, Pattern};
use crate::router::{Group, Router, error, frame};

/// Carries stream frames to another gateway of the region, for streams whose other side is
/// a session there. Federation implements it, one per cluster peer and role.
pub trait StreamRelay: Send + Sync + 'static {
    /// Sends one stream frame (`StreamOpen`, `StreamData`, `Credit` or `StreamClose`; its
    /// own stream id is ignored) for stream `id`, in order; false when it cannot be sent (the
    /// link is down or saturated).
    fn send(&self, id: u64, kind: Kind) -> bool;
    /// Frames the peer sends for stream `id` go to `end` from now on.
    fn attach(&self, id: u64, end: StreamEnd);
    /// Stream `id` ended here: drop its route.
    fn detach(&self, id: u64);
    /// The peer gateway, for error messages.
    fn peer(&self) -> &str;
}

/// One side of a stream as this gateway sees it.
pub enum Side {
    /// A session of this gateway, naming the stream by `id`.
    Session { conn: Arc<Connection>, id: u64 },
    /// Another gateway of the region, over the cluster link, naming the stream by `id`.
    Peer {
        relay: Arc<dyn StreamRelay>,
        id: u64,
    },
}

/// One stream between two sides. Side 0 opened it, side 1 accepted it.
pub struct StreamLink {
    ends: [Side; 2],
    /// `credits[i]`: data frames side `i` may still send.
    credits: [AtomicU32; 2],
    /// `finished[i]`: side `i` half-closed (sends no more).
    finished: [AtomicBool; 2],
    /// The responder's group and member when the responder is a session here (its balancer
    /// counts the stream as pending).
    acceptor: Option<(Arc<Group>, u64)>,
}

/// A side's view of a stream it takes part in.
#[derive(Clone)]
pub struct StreamEnd {
    link: Arc<StreamLink>,
    side: usize,
}

impl StreamEnd {
    fn peer(&self) -> &Side {
        &self.link.ends[1 - self.side]
    }
}

impl Side {
    /// Sends a control frame (credit, close) to this side; false if it could not be queued.
    fn send_control(&self, kind: impl FnOnce(u64) -> Kind) -> bool {
        match self {
            Side::Session { conn, id } => conn.outbound.send_control(frame(kind(*id))),
            Side::Peer { relay, id } => relay.send(*id, kind(*id)),
        }
    }

    /// Routes this side's frames of the stream to `end` from now on.
    fn register(&self, end: StreamEnd) {
        match self {
            Side::Session { conn, id } => {
                conn.streams.lock().insert(*id, end);
            }
            Side::Peer { relay, id } => relay.attach(*id, end),
        }
    }

    /// Stops routing this side's frames of the stream; true if it was still routed.
    fn forget(&self) -> bool {
        match self {
            Side::Session { conn, id } => conn.streams.lock().remove(id).is_some(),
            Side::Peer { relay, id } => {
                relay.detach(*id);
                true
            }
        }
    }
}

/// Result of handling a stream frame that the session must report to its adapter.
pub type StreamResult = Result<(), v1::Error>;

/// Opens a stream for `opener`: to a responder of this gateway, or when it has none, of
/// another gateway of the region. On failure the opener gets `StreamClose{error}`.
pub async fn open(
    router: &Router,
    opener: &Arc<Connection>,
    mut open: v1::StreamOpen,
) -> StreamResult {
    let id = open.stream_id;
    if let Err(e) = crate::subject::validate_subject(&open.subject) {
        return Err(error(ErrorCode::Invalid, e.to_string(), id));
    }
    if id >= crate::connection::GATEWAY_STREAM_ID_BASE {
        return Err(error(
            ErrorCode::Invalid,
            format!(
                "stream id {id} is in the gateway's range (>= 2^63); adapters must pick ids below 2^63"
            ),
            id,
        ));
    }
    {
        let streams = opener.streams.lock();
        if streams.contains_key(&id) {
            return Err(error(
                ErrorCode::Invalid,
                format!("stream id {id} is already open on this session"),
                id,
            ));
        }
        let max = router.config().limits.max_streams;
        if streams.len() >= max as usize {
            router.metrics.limit(Limit::MaxStreams);
            return Err(error(
                ErrorCode::Limit,
                format!("limits.max_streams ({max}) streams are already open on this session"),
                id,
            ));
        }
    }
    let span = tracing::debug_span!("nexus.stream", subject = %open.subject, conn = opener.id);
    crate::trace::link_span(&span, &mut open.headers);
    let Some((group, member)) = router.pick_stream_acceptor(&open.subject) else {
        return open_at_peer(router, opener, open);
    };
    let opener = Side::Session {
        conn: opener.clone(),
        id,
    };
    to_acceptor(router, opener, group, member, open, id)
}

/// Joins `opener` (a session here, or a peer gateway) to the chosen responder `member` of
/// this gateway: checks the responder's `max_streams`, records the stream on both sides and
/// sends the responder its `StreamOpen`. Errors name the stream by `id` (the opener's).
fn to_acceptor(
    router: &Router,
    opener: Side,
    group: Arc<Group>,
    member: Arc<crate::router::Member>,
    open: v1::StreamOpen,
    id: u64,
) -> StreamResult {
    let acceptor = member.conn.clone();
    let max = router.config().limits.max_streams;
    if acceptor.streams.lock().len() >= max as usize {
        router.stream_finished(&group, member.id);
        router.metrics.limit(Limit::MaxStreams);
        return Err(error(
            ErrorCode::Limit,
            format!("the chosen responder already has limits.max_streams ({max}) streams open"),
            id,
        ));
    }
    let acceptor_id = acceptor.next_gateway_stream_id();
    let link = Arc::new(StreamLink {
        ends: [
            opener,
            Side::Session {
                conn: acceptor.clone(),
                id: acceptor_id,
            },
        ],
        credits: [AtomicU32::new(0), AtomicU32::new(open.credits)],
        finished: [AtomicBool::new(false), AtomicBool::new(false)],
        acceptor: Some((group, member.id)),
    });
    for side in 0..2 {
        link.ends[side].register(StreamEnd {
            link: link.clone(),
            side,
        });
    }
    let f = frame(Kind::StreamOpen(v1::StreamOpen {
        stream_id: acceptor_id,
        subject: open.subject,
        headers: open.headers,
        credits: open.credits,
        sid: member.sid,
    }));
    if !acceptor.outbound.send_control(f) {
        forget(router, &StreamEnd { link, side: 1 });
        return Err(error(
            ErrorCode::ServiceError,
            "the chosen stream responder could not take the stream",
            id,
        ));
    }
    Ok(())
}

/// No responder here: the stream goes to another gateway of the region that has one.
fn open_at_peer(router: &Router, opener: &Arc<Connection>, open: v1::StreamOpen) -> StreamResult {
    let id = open.stream_id;
    let no_responders = || {
        error(
            ErrorCode::NoResponders,
            format!("no responders for stream subject {:?}", open.subject),
            id,
        )
    };
    let Some((relay, peer_id)) = router.remote().and_then(|r| r.stream_peer(&open.subject)) else {
        return Err(no_responders());
    };
    let link = Arc::new(StreamLink {
        ends: [
            Side::Session {
                conn: opener.clone(),
                id,
            },
            Side::Peer {
                relay: relay.clone(),
                id: peer_id,
            },
        ],
        credits: [AtomicU32::new(0), AtomicU32::new(open.credits)],
        finished: [AtomicBool::new(false), AtomicBool::new(false)],
        acceptor: None,
    });
    opener.streams.lock().insert(
        id,
        StreamEnd {
            link: link.clone(),
            side: 0,
        },
    );
    relay.attach(peer_id, StreamEnd { link, side: 1 });
    let peer = relay.peer().to_owned();
    if !relay.send(peer_id, Kind::StreamOpen(open)) {
        relay.detach(peer_id);
        opener.streams.lock().remove(&id);
        return Err(error(
            ErrorCode::ServiceError,
            format!("the stream could not be sent to gateway {peer}, which has its responder"),
            id,
        ));
    }
    Ok(())
}

/// A stream another gateway of the region opened for one of its sessions (`relay`, `id`):
/// to a responder here, or closed back with the reason.
pub fn accept_from_peer(
    router: &Router,
    relay: Arc<dyn StreamRelay>,
    id: u64,
    open: v1::StreamOpen,
) {
    let refuse = |e: v1::Error| {
        relay.send(
            id,
            Kind::StreamClose(v1::StreamClose {
                stream_id: id,
                error: Some(e),
            }),
        );
    };
    let Some((group, member)) = router.pick_stream_acceptor(&open.subject) else {
        return refuse(error(
            ErrorCode::NoResponders,
            format!(
                "no responders for stream subject {:?} on gateway {} any more",
                open.subject,
                router.config().gateway_id
            ),
            id,
        ));
    };
    let opener = Side::Peer {
        relay: relay.clone(),
        id,
    };
    if let Err(e) = to_acceptor(router, opener, group, member, open, id) {
        refuse(e);
    }
}

fn lookup(conn: &Connection, stream_id: u64) -> Result<StreamEnd, v1::Error> {
    conn.streams.lock().get(&stream_id).cloned().ok_or_else(|| {
        error(
            ErrorCode::Invalid,
            format!("stream {stream_id} is not open on this session"),
            stream_id,
        )
    })
}

/// Relays data from `conn`, spending one of its credits.
pub async fn data(router: &Router, conn: &Arc<Connection>, data: v1::StreamData) -> StreamResult {
    let end = lookup(conn, data.stream_id)?;
    end_data(router, &end, data).await
}

/// Relays data sent by `end`'s side, spending one of its credits. Errors name the stream by
/// `data.stream_id`.
async fn end_data(router: &Router, end: &StreamEnd, data: v1::StreamData) -> StreamResult {
    let stream_id = data.stream_id;
    if end.link.finished[end.side].load(Ordering::Acquire) {
        return Err(error(
            ErrorCode::Invalid,
            format!("stream {stream_id}: data after this side closed it"),
            stream_id,
        ));
    }
    let spent = end.link.credits[end.side]
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1))
        .is_ok();
    if !spent {
        router.metrics.limit(Limit::StreamCredit);
        let e = error(
            ErrorCode::Limit,
            format!(
                "stream {stream_id}: data sent without credit (the peer has not granted more); stream aborted"
            ),
            stream_id,
        );
        abort(router, end, e.clone());
        return Err(e);
    }
    let len = data.payload.len();
    router.metrics.traffic(Pattern::Stream, Direction::In, len);
    let delivered = match end.peer() {
        Side::Session { conn: peer, id } => {
            let size = crate::router::message_size("", "", &data.headers, len);
            let f = frame(Kind::StreamData(v1::StreamData {
                stream_id: *id,
                payload: data.payload,
                headers: data.headers,
            }));
            router.deliver_owed(peer, f, size).await
        }
        Side::Peer { relay, id } => relay.send(*id, Kind::StreamData(data)),
    };
    if delivered {
        router.metrics.traffic(Pattern::Stream, Direction::Out, len);
        return Ok(());
    }
    // The receiver was cut off (or is gone, or its gateway unreachable): tell the sender
    // instead of losing data.
    let e = match end.peer() {
        Side::Session { .. } => error(
            ErrorCode::SlowConsumer,
            format!(
                "stream {stream_id}: the receiving side stopped reading and was disconnected; stream aborted"
            ),
            stream_id,
        ),
        Side::Peer { relay, .. } => error(
            ErrorCode::ServiceError,
            format!(
                "stream {stream_id}: the link to gateway {}, which serves the other side, is down or saturated; stream aborted",
                relay.peer()
            ),
            stream_id,
        ),
    };
    abort(router, end, e.clone());
    Err(e)
}

/// Relays a credit grant from `conn` to its peer.
pub fn credit(router: &Router, conn: &Arc<Connection>, credit: v1::Credit) -> StreamResult {
    let end = lookup(conn, credit.stream_id)?;
    end_credit(router, &end, credit.credits);
    Ok(())
}

fn end_credit(router: &Router, end: &StreamEnd, credits: u32) {
    let _ = router;
    let peer_side = 1 - end.side;
    let _ = end.link.credits[peer_side].fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
        Some(c.saturating_add(credits))
    });
    end.peer()
        .send_control(|stream_id| Kind::Credit(v1::Credit { stream_id, credits }));
}

/// Half-closes (no error) or aborts (error) a stream from `conn`'s side.
pub fn close(router: &Router, conn: &Arc<Connection>, close: v1::StreamClose) -> StreamResult {
    let end = lookup(conn, close.stream_id)?;
    end_close(router, &end, close.error);
    Ok(())
}

fn end_close(router: &Router, end: &StreamEnd, e: Option<v1::Error>) {
    if let Some(e) = e {
        abort(router, end, e);
        return;
    }
    end.link.finished[end.side].store(true, Ordering::Release);
    end.peer().send_control(|stream_id| {
        Kind::StreamClose(v1::StreamClose {
            stream_id,
            error: None,
        })
    });
    if end.link.finished[1 - end.side].load(Ordering::Acquire) {
        forget(router, end);
    }
}

/// A frame the other gateway sent for the stream whose side it is (`end`). A frame that
/// breaks the stream's rules aborts it both ways.
pub async fn from_peer(router: &Router, end: &StreamEnd, kind: Kind) {
    match kind {
        Kind::StreamData(mut d) => {
            if let Side::Peer { id, .. } = &end.link.ends[end.side] {
                d.stream_id = *id;
            }
            if let Err(e) = end_data(router, end, d).await {
                // end_data told the session's side; the gateway that sent it learns too.
                end.link.ends[end.side].send_control(|stream_id| {
                    Kind::StreamClose(v1::StreamClose {
                        stream_id,
                        error: Some(v1::Error {
                            ref_id: stream_id,
                            ..e
                        }),
                    })
                });
            }
        }
        Kind::Credit(c) => end_credit(router, end, c.credits),
        Kind::StreamClose(c) => end_close(router, end, c.error),
        _ => {
            let e = error(
                ErrorCode::Invalid,
                "a cluster peer sent a frame that is not stream data, credit or close for an open stream",
                0,
            );
            abort(router, end, e);
        }
    }
}

/// The gateway on `end`'s side became unreachable (its cluster link went down): the session
/// on the other side gets the stream aborted.
pub fn peer_gone(router: &Router, end: &StreamEnd, reason: &str) {
    forget(router, end);
    end.peer().send_control(|stream_id| {
        Kind::StreamClose(v1::StreamClose {
            stream_id,
            error: Some(error(
                ErrorCode::ServiceError,
                format!(
                    "the gateway serving the other side of the stream became unreachable ({reason})"
                ),
                stream_id,
            )),
        })
    });
}

/// Removes the stream from both sides and tells the peer why.
fn abort(router: &Router, end: &StreamEnd, e: v1::Error) {
    forget(router, end);
    end.peer().send_control(|stream_id| {
        Kind::StreamClose(v1::StreamClose {
            stream_id,
            error: Some(v1::Error {
                ref_id: stream_id,
                ..e
            }),
        })
    });
}

fn forget(router: &Router, end: &StreamEnd) {
    let mut removed = false;
    for side in &end.link.ends {
        removed |= side.forget();
    }
    if removed && let Some((group, member)) = &end.link.acceptor {
        router.stream_finished(group, *member);
    }
}

/// A session ended: abort each of its streams towards the other side.
pub fn connection_gone(router: &Router, conn: &Arc<Connection>) {
    let ends: Vec<StreamEnd> = conn.streams.lock().drain().map(|(_, e)| e).collect();
    for end in ends {
        end.peer().forget();
        if let Some((group, member)) = &end.link.acceptor {
            router.stream_finished(group, *member);
        }
        end.peer().send_control(|stream_id| {
            Kind::StreamClose(v1::StreamClose {
                stream_id,
                error: Some(error(
                    ErrorCode::ServiceError,
                    "the other side of the stream disconnected",
                    stream_id,
                )),
            })
        });
    }
}
