//! Routing what the gateway sends on a session: deliveries into subscriptions, answers to
//! the waiters of requests, acks and pings, errors to what they name, streams opened by
//! peers, and `GoAway` (the start of a move, see the parent module).

use super::establish::Frames;
use super::*;
use crate::inbox::{Full, Inbox, Wakes};

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

/// A delivery whose subscription's inbox was full: the reader waits on it, which
/// backpressures the gateway.
pub(super) struct FullSubscription {
    inbox: Inbox,
    msg: Message,
}

impl FullSubscription {
    /// Waits for room in the subscription's inbox (or for it to end).
    pub(super) async fn deliver(self) {
        self.inbox.push_waiting(self.msg).await;
    }
}

/// Routes one inbound frame, waiting when its subscription's inbox is full.
pub(super) async fn handle_frame(shared: &Arc<Shared>, frame: pb::Frame) {
    let mut wakes = Wakes::default();
    let full = route_frame(shared, frame, &mut wakes);
    wakes.wake();
    if let Some(full) = full {
        full.deliver().await;
    }
}

/// Routes a batch's frames, in order, until one is a delivery to a full subscription (handed
/// back to wait on; the rest stay in `frames`) or fails to decode. Deliveries in a row are
/// routed under one hold of the state lock; the subscriptions they went to are woken through
/// `wakes`, which the caller wakes before it waits on anything.
pub(super) fn route_frames(
    shared: &Arc<Shared>,
    frames: &mut Frames,
    wakes: &mut Wakes,
) -> std::result::Result<Option<FullSubscription>, prost::DecodeError> {
    let mut st: Option<parking_lot::MutexGuard<'_, State>> = None;
    // Frames are decoded into this slot and their kind taken out once: each move of a frame
    // through an iterator's `Option`s and `Result`s is a ~170-byte copy.
    let mut slot = pb::Frame::default();
    while frames.next_into(&mut slot)? {
        match slot.kind.take() {
            Some(Kind::Msg(mut m)) => {
                if nexus_proto::encoding::find(&m.headers).is_some() {
                    // Decompressing is not done under the lock.
                    st = None;
                    let max = shared.max_payload.load(Ordering::Relaxed);
                    if let Err(e) = crate::compression::decode(&mut m.headers, &mut m.payload, max)
                    {
                        warn!(sid = m.sid, subject = %m.subject, error = %e, "nexus: dropped a message whose compressed payload cannot be decoded");
                        continue;
                    }
                }
                let guard = st.get_or_insert_with(|| shared.state.lock());
                if let Some(full) = deliver(shared, guard, m, wakes) {
                    return Ok(Some(full));
                }
            }
            kind => {
                st = None;
                if let Some(full) = route_frame(shared, pb::Frame { kind }, wakes) {
                    return Ok(Some(full));
                }
            }
        }
    }
    Ok(None)
}

/// Routes one inbound frame without waiting; a delivery to a full subscription is handed
/// back to wait on. Not `async`, so that the frame is matched where it lies rather than
/// moved into a future first (each move is a copy of ~170 bytes, on every message).
pub(super) fn route_frame(
    shared: &Arc<Shared>,
    frame: pb::Frame,
    wakes: &mut Wakes,
) -> Option<FullSubscription> {
    match frame.kind {
        Some(Kind::Msg(mut m)) => {
            let max = shared.max_payload.load(Ordering::Relaxed);
            match crate::compression::decode(&mut m.headers, &mut m.payload, max) {
                Ok(()) => return deliver(shared, &mut shared.state.lock(), m, wakes),
                Err(e) => {
                    warn!(sid = m.sid, subject = %m.subject, error = %e, "nexus: dropped a message whose compressed payload cannot be decoded")
                }
            }
        }
        Some(Kind::Reply(mut r)) => {
            if r.error.is_none() {
                let max = shared.max_payload.load(Ordering::Relaxed);
                if let Err(e) = crate::compression::decode(&mut r.headers, &mut r.payload, max) {
                    r.payload = bytes::Bytes::new();
                    r.error = Some(pb::Error {
                        code: pb::ErrorCode::ServiceError as i32,
                        message: format!("the reply's compressed payload cannot be decoded: {e}"),
                        ref_id: r.req_id,
                    });
                }
            }
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
        Some(Kind::StreamData(mut d)) => {
            let max = shared.max_payload.load(Ordering::Relaxed);
            if let Err(e) = crate::compression::decode(&mut d.headers, &mut d.payload, max) {
                warn!(stream = d.stream_id, error = %e, "nexus: dropped stream data whose compressed payload cannot be decoded");
                return None;
            }
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
    None
}

/// Hands a delivered message to its subscription; `Some` when the subscription's buffer is
/// full and the message waits for room.
fn deliver(
    shared: &Shared,
    st: &mut State,
    m: pb::Msg,
    wakes: &mut Wakes,
) -> Option<FullSubscription> {
    let sid = m.sid;
    if !m.reply_to.is_empty() && m.deadline_ms > 0 {
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(u64::from(m.deadline_ms));
        st.owed.insert(m.reply_to.clone(), deadline);
    }
    match st.subs.get(&sid) {
        Some(SubEntry {
            kind: SubKind::Messages(inbox),
            ..
        }) => match inbox.push(Message::from_msg(m), wakes) {
            Ok(()) => None,
            // The subscription's inbox is full: the reader waits, which backpressures the
            // gateway.
            Err(Full(msg)) => Some(FullSubscription {
                inbox: inbox.waiter(),
                msg,
            }),
        },
        Some(_) => {
            debug!(sid, "nexus: message for a stream listener ignored");
            None
        }
        None => {
            if let Some(o) = shared.unknown_sid(st, sid) {
                shared.send_ctl(o);
            }
            None
        }
    }
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
            transport: crate::native::Transport::Grpc,
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
            compression: Default::default(),
            tls: TlsSettings::default(),
        };
        let outbound = crate::queue::OutboundQueue::new(8, usize::MAX, config.limits);
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let (shutdown, _) = watch::channel(false);
        let shared = Shared::new(
            config,
            Gateways::Direct(Dial::Grpc(Box::new(Endpoint::from_static(
                "http://127.0.0.1:1",
            )))),
            outbound,
            ctl_tx,
            shutdown,
            Weak::new(),
        );
        shared.state.lock().live = true;
        (Arc::new(shared), ctl_rx)
    }

    fn add_sub(shared: &Shared, sid: u64) -> crate::inbox::InboxReceiver {
        let (tx, rx) = crate::inbox::inbox(4);
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
            if let Some(Kind::Unsub(u)) = o.kind() {
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

    fn msg_n(sid: u64, n: u8) -> pb::Frame {
        pb::Frame {
            kind: Some(Kind::Msg(pb::Msg {
                sid,
                subject: "a.b".into(),
                payload: bytes::Bytes::from(vec![n]),
                ..Default::default()
            })),
        }
    }

    #[tokio::test]
    async fn a_batch_is_routed_in_order_until_a_subscription_is_full() {
        let (shared, mut ctl) = shared();
        let mut five = add_sub(&shared, 5);
        let mut six = add_sub(&shared, 6);
        // Capacity 4: the fifth message for sid 5 waits; what follows it stays in the batch.
        let batch = vec![
            msg_n(5, 0),
            msg_n(6, 0),
            msg_n(5, 1),
            pb::Frame {
                kind: Some(Kind::Ping(pb::Ping { nonce: 1 })),
            },
            msg_n(5, 2),
            msg_n(5, 3),
            msg_n(5, 4),
            msg_n(6, 1),
        ];
        let mut frames = Frames::Decoded(batch.into_iter());
        let mut wakes = Wakes::default();
        let full = route_frames(&shared, &mut frames, &mut wakes)
            .unwrap()
            .expect("sid 5 is full");
        wakes.wake();
        let Frames::Decoded(rest) = &frames else {
            unreachable!("built decoded")
        };
        assert_eq!(
            rest.len(),
            1,
            "the frame after the full delivery is not routed yet"
        );
        let pong = ctl.try_recv().expect("the ping in the middle was answered");
        assert!(matches!(pong.kind(), Some(Kind::Pong(_))));
        let read = |rx: &mut crate::inbox::InboxReceiver| -> Vec<u8> {
            std::iter::from_fn(|| rx.try_recv().map(|m| m.payload[0])).collect()
        };
        assert_eq!(read(&mut six), [0]);
        assert_eq!(read(&mut five), [0, 1, 2, 3]);
        full.deliver().await;
        assert!(
            route_frames(&shared, &mut frames, &mut wakes)
                .unwrap()
                .is_none()
        );
        assert_eq!(read(&mut five), [4]);
        assert_eq!(read(&mut six), [1]);
    }

    #[tokio::test]
    async fn late_msg_after_unsubscribe_sends_no_second_unsub() {
        let (shared, mut ctl) = shared();
        let mut rx = add_sub(&shared, 5);
        handle_frame(&shared, msg(5)).await;
        assert!(rx.try_recv().is_some());
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
}
