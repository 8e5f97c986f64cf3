//! Bidirectional streams: the link between an opener and the responder the balancer chose,
//! with credit-based flow control relayed end to end.
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

/// One stream between two sessions. Side 0 opened it, side 1 accepted it.
pub struct StreamLink {
    ends: [(Arc<Connection>, u64); 2],
    /// `credits[i]`: data frames side `i` may still send.
    credits: [AtomicU32; 2],
    /// `finished[i]`: side `i` half-closed (sends no more).
    finished: [AtomicBool; 2],
    group: Arc<Group>,
    member: u64,
}

/// A connection's view of a stream it takes part in.
#[derive(Clone)]
pub struct StreamEnd {
    link: Arc<StreamLink>,
    side: usize,
}

impl StreamEnd {
    fn peer(&self) -> &(Arc<Connection>, u64) {
        &self.link.ends[1 - self.side]
    }
}

/// Result of handling a stream frame that the session must report to its adapter.
pub type StreamResult = Result<(), v1::Error>;

/// Opens a stream for `opener`. On failure the opener gets `StreamClose{error}`.
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
    let Some((group, member)) = router.pick_stream_acceptor(&open.subject) else {
        return Err(error(
            ErrorCode::NoResponders,
            format!("no responders for stream subject {:?}", open.subject),
            id,
        ));
    };
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
    let span = tracing::debug_span!("nexus.stream", subject = %open.subject, conn = opener.id);
    crate::trace::link_span(&span, &mut open.headers);
    let acceptor_id = acceptor.next_gateway_stream_id();
    let link = Arc::new(StreamLink {
        ends: [(opener.clone(), id), (acceptor.clone(), acceptor_id)],
        credits: [AtomicU32::new(0), AtomicU32::new(open.credits)],
        finished: [AtomicBool::new(false), AtomicBool::new(false)],
        group,
        member: member.id,
    });
    opener.streams.lock().insert(
        id,
        StreamEnd {
            link: link.clone(),
            side: 0,
        },
    );
    acceptor
        .streams
        .lock()
        .insert(acceptor_id, StreamEnd { link, side: 1 });
    let f = frame(Kind::StreamOpen(v1::StreamOpen {
        stream_id: acceptor_id,
        subject: open.subject,
        headers: open.headers,
        credits: open.credits,
        sid: member.sid,
    }));
    if !acceptor.outbound.send_control(f) {
        if let Some(end) = acceptor.streams.lock().remove(&acceptor_id) {
            router.stream_finished(&end.link.group, end.link.member);
        }
        opener.streams.lock().remove(&id);
        return Err(error(
            ErrorCode::ServiceError,
            "the chosen stream responder could not take the stream",
            id,
        ));
    }
    Ok(())
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
    if end.link.finished[end.side].load(Ordering::Acquire) {
        return Err(error(
            ErrorCode::Invalid,
            format!("stream {}: data after this side closed it", data.stream_id),
            data.stream_id,
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
                "stream {}: data sent without credit (the peer has not granted more); stream aborted",
                data.stream_id
            ),
            data.stream_id,
        );
        abort(router, &end, e.clone());
        return Err(e);
    }
    let (peer, peer_id) = end.peer();
    let len = data.payload.len();
    router.metrics.traffic(Pattern::Stream, Direction::In, len);
    let size = crate::router::message_size("", "", &data.headers, len);
    let f = frame(Kind::StreamData(v1::StreamData {
        stream_id: *peer_id,
        payload: data.payload,
        headers: data.headers,
    }));
    if router.deliver_owed(peer, f, size).await {
        router.metrics.traffic(Pattern::Stream, Direction::Out, len);
        return Ok(());
    }
    // The receiver was cut off (or is gone): tell the sender instead of losing data.
    forget(router, &end);
    Err(error(
        ErrorCode::SlowConsumer,
        format!(
            "stream {}: the receiving side stopped reading and was disconnected; stream aborted",
            data.stream_id
        ),
        data.stream_id,
    ))
}

/// Relays a credit grant from `conn` to its peer.
pub fn credit(router: &Router, conn: &Arc<Connection>, credit: v1::Credit) -> StreamResult {
    let _ = router;
    let end = lookup(conn, credit.stream_id)?;
    let peer_side = 1 - end.side;
    let _ = end.link.credits[peer_side].fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
        Some(c.saturating_add(credit.credits))
    });
    let (peer, peer_id) = end.peer();
    let f = frame(Kind::Credit(v1::Credit {
        stream_id: *peer_id,
        credits: credit.credits,
    }));
    peer.outbound.send_control(f);
    Ok(())
}

/// Half-closes (no error) or aborts (error) a stream from `conn`'s side.
pub fn close(router: &Router, conn: &Arc<Connection>, close: v1::StreamClose) -> StreamResult {
    let end = lookup(conn, close.stream_id)?;
    if let Some(e) = close.error {
        abort(router, &end, e);
        return Ok(());
    }
    end.link.finished[end.side].store(true, Ordering::Release);
    let (peer, peer_id) = end.peer();
    let f = frame(Kind::StreamClose(v1::StreamClose {
        stream_id: *peer_id,
        error: None,
    }));
    peer.outbound.send_control(f);
    if end.link.finished[1 - end.side].load(Ordering::Acquire) {
        forget(router, &end);
    }
    Ok(())
}

/// Removes the stream from both sessions and tells the peer why.
fn abort(router: &Router, end: &StreamEnd, e: v1::Error) {
    forget(router, end);
    let (peer, peer_id) = end.peer();
    let f = frame(Kind::StreamClose(v1::StreamClose {
        stream_id: *peer_id,
        error: Some(v1::Error {
            ref_id: *peer_id,
            ..e
        }),
    }));
    peer.outbound.send_control(f);
}

fn forget(router: &Router, end: &StreamEnd) {
    let mut removed = false;
    for (conn, id) in &end.link.ends {
        removed |= conn.streams.lock().remove(id).is_some();
    }
    if removed {
        router.stream_finished(&end.link.group, end.link.member);
    }
}

/// A session ended: abort each of its streams towards the other side.
pub fn connection_gone(router: &Router, conn: &Arc<Connection>) {
    let ends: Vec<StreamEnd> = conn.streams.lock().drain().map(|(_, e)| e).collect();
    for end in ends {
        let (peer, peer_id) = end.peer();
        peer.streams.lock().remove(peer_id);
        router.stream_finished(&end.link.group, end.link.member);
        let f = frame(Kind::StreamClose(v1::StreamClose {
            stream_id: *peer_id,
            error: Some(error(
                ErrorCode::ServiceError,
                "the other side of the stream disconnected",
                *peer_id,
            )),
        }));
        peer.outbound.send_control(f);
    }
}
