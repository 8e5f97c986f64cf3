//! Unit tests of [`super`]: the outbound queue.

use super::*;
use futures::StreamExt;
use nexus_proto::v1::{Ping, frame::Kind};

fn ping(n: u64) -> Frame {
    Frame {
        kind: Some(Kind::Ping(Ping { nonce: n })),
    }
}

#[tokio::test]
async fn coalesces_ready_frames_and_bounds_bytes() {
    let (out, mut stream) = Outbound::new(1000);
    for i in 0..10 {
        out.try_send(ping(i), 100).unwrap();
    }
    assert!(matches!(
        out.try_send(ping(99), 100),
        Err(EnqueueError::Full(_))
    ));
    assert_eq!(out.depth(), 10);
    let batch = stream.next().await.unwrap().unwrap();
    assert_eq!(batch.into_frames().unwrap().len(), 10);
    assert_eq!(out.depth(), 0);
    out.try_send(ping(11), 1000).unwrap();
}

#[tokio::test(start_paused = true)]
async fn send_wait_times_out_then_succeeds_after_drain() {
    let (out, mut stream) = Outbound::new(100);
    out.try_send(ping(1), 100).unwrap();
    let r = out.send_wait(ping(2), 100, Duration::from_millis(50)).await;
    assert!(matches!(r, Err(EnqueueError::Full(_))));
    stream.next().await.unwrap().unwrap();
    out.send_wait(ping(3), 100, Duration::from_millis(50))
        .await
        .unwrap();
}

#[tokio::test]
async fn control_frames_bypass_the_budget_but_are_capped() {
    let (out, mut stream) = Outbound::new(100);
    out.try_send(ping(0), 100).unwrap();
    assert!(out.send_control(ping(1)));
    let batch = stream.next().await.unwrap().unwrap();
    assert_eq!(batch.into_frames().unwrap().len(), 2);
    for i in 0..MAX_CONTROL_FRAMES {
        assert!(out.send_control(ping(i as u64)));
    }
    assert!(
        !out.send_control(ping(0)),
        "one past the cap closes the session"
    );
    assert!(out.is_closed());
    let err = stream.next().await.unwrap().unwrap_err();
    assert!(err.message().contains("slow consumer"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn control_room_waits_while_the_adapter_reads_and_cuts_one_that_does_not() {
    let (out, mut stream) = Outbound::new(100);
    for i in 0..CONTROL_HIGH_WATER {
        assert!(out.send_control(ping(i as u64)));
    }
    // The adapter reads: room comes back, the session goes on.
    let reader = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        stream.next().await.unwrap().unwrap();
        stream
    });
    assert!(out.control_room(Duration::from_secs(2)).await);
    assert!(out.control_queued() < CONTROL_HIGH_WATER);
    let _stream = reader.await.unwrap();
    // It stops reading: cut off after max_wait without progress.
    while out.control_queued() < CONTROL_HIGH_WATER {
        assert!(out.send_control(ping(0)));
    }
    assert!(!out.control_room(Duration::from_secs(2)).await);
    assert!(out.is_closed());
}

#[tokio::test]
async fn close_after_flush_delivers_queued_frames_first() {
    let (out, mut stream) = Outbound::new(100);
    assert!(out.send_control(ping(7)));
    out.close_after_flush(Some(Status::unavailable("bye")));
    let batch = stream.next().await.unwrap().unwrap();
    assert_eq!(batch.into_frames().unwrap().len(), 1);
    assert_eq!(stream.next().await.unwrap().unwrap_err().message(), "bye");
    assert!(stream.next().await.is_none());
}

fn msg(sid: u64, payload: usize) -> Frame {
    Frame {
        kind: Some(Kind::Msg(nexus_proto::v1::Msg {
            sid,
            subject: "a.b".into(),
            payload: bytes::Bytes::from(vec![sid as u8; payload]),
            ..Default::default()
        })),
    }
}

fn sids(frames: Vec<Frame>) -> Vec<u64> {
    frames
        .into_iter()
        .map(|f| match f.kind {
            Some(Kind::Msg(m)) => m.sid,
            other => panic!("not a Msg: {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn small_frames_leave_encoded_and_large_ones_whole_in_queue_order() {
    let (out, mut stream) = Outbound::new(1 << 20);
    let large = WHOLE_FRAME_PAYLOAD;
    for (sid, len) in [(1, 10), (2, 10), (3, large), (4, large), (5, 10)] {
        out.try_send(msg(sid, len), out.cost(len)).unwrap();
    }
    assert_eq!(out.depth(), 5);
    let mut order = Vec::new();
    for (encoded, whole) in [(2, 0), (0, 2), (1, 0)] {
        let batch = stream.next().await.unwrap().unwrap();
        assert_eq!(batch.frames.len(), whole);
        assert_eq!(batch.encoded.is_empty(), encoded == 0);
        let frames = batch.into_frames().unwrap();
        assert_eq!(frames.len(), encoded + whole);
        order.extend(sids(frames));
    }
    assert_eq!(order, [1, 2, 3, 4, 5]);
    assert_eq!(out.depth(), 0);
    // Every permit came back.
    out.try_send(msg(6, 0), 1 << 20).unwrap();
}

#[tokio::test]
async fn a_batch_closes_at_its_frame_or_byte_limit() {
    let (out, mut stream) = Outbound::new(u32::MAX >> 3);
    for sid in 0..(MAX_BATCH_FRAMES as u64 + 3) {
        out.try_send(msg(sid, 1), out.cost(1)).unwrap();
    }
    let first = stream.next().await.unwrap().unwrap().into_frames().unwrap();
    assert_eq!(first.len(), MAX_BATCH_FRAMES as usize);
    let second = stream.next().await.unwrap().unwrap().into_frames().unwrap();
    assert_eq!(sids(second), [512, 513, 514]);
    let len = 4 * 1024;
    let per_batch = (MAX_BATCH_BYTES as usize).div_ceil(len + FRAME_OVERHEAD as usize);
    for sid in 0..per_batch as u64 + 1 {
        out.try_send(msg(sid, len), out.cost(len)).unwrap();
    }
    let full = stream.next().await.unwrap().unwrap().into_frames().unwrap();
    assert_eq!(full.len(), per_batch);
    let rest = stream.next().await.unwrap().unwrap().into_frames().unwrap();
    assert_eq!(rest.len(), 1);
}

#[tokio::test]
async fn the_stream_ends_after_the_queue_when_the_sender_goes_and_sending_fails_without_a_stream() {
    let (out, mut stream) = Outbound::new(1000);
    out.try_send(msg(1, 10), 100).unwrap();
    drop(out);
    let batch = stream.next().await.unwrap().unwrap();
    assert_eq!(sids(batch.into_frames().unwrap()), [1]);
    assert!(stream.next().await.is_none());

    let (out, stream) = Outbound::new(1000);
    drop(stream);
    assert!(matches!(
        out.try_send(msg(1, 10), 100),
        Err(EnqueueError::Closed)
    ));
    assert!(!out.send_control(ping(1)));
    assert_eq!(out.depth(), 0);
    assert_eq!(out.control_queued(), 0);
}

#[tokio::test]
async fn a_waiting_stream_is_woken_by_the_next_frame() {
    let (out, mut stream) = Outbound::new(1000);
    let reader = tokio::spawn(async move { stream.next().await.unwrap().unwrap() });
    tokio::task::yield_now().await;
    out.try_send(msg(9, 10), 100).unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .expect("woken")
        .unwrap();
    assert_eq!(sids(batch.into_frames().unwrap()), [9]);
}

#[tokio::test]
async fn close_yields_status_then_ends() {
    let (out, mut stream) = Outbound::new(100);
    out.try_send(ping(1), 10).unwrap();
    out.close(Some(Status::resource_exhausted("slow consumer")));
    let err = stream.next().await.unwrap().unwrap_err();
    assert_eq!(err.message(), "slow consumer");
    assert!(stream.next().await.is_none());
    assert!(matches!(
        out.try_send(ping(2), 10),
        Err(EnqueueError::Closed)
    ));
}

/// Many batches queued at once, encoded ones around a frame queued whole: every frame comes
/// out once, in order, in batches of at most `MAX_BATCH_FRAMES` (the encoded batches before
/// the newest are sealed off the queue's buffer as the next one begins).
#[tokio::test]
async fn a_long_queue_keeps_order_across_sealed_batches() {
    let (out, mut stream) = Outbound::new(u32::MAX);
    let msg = |sid: u64, payload: &[u8]| {
        let m = nexus_proto::v1::Msg {
            sid,
            subject: "q.s".into(),
            payload: bytes::Bytes::copy_from_slice(payload),
            ..Default::default()
        };
        (m.clone(), out.cost(m.payload.len()))
    };
    let n = MAX_BATCH_FRAMES as u64 * 3 + 7;
    for sid in 0..n {
        let (m, cost) = msg(sid, b"small");
        out.try_send_msg(&m.as_ref(), cost, &mut DeferredWakes::default())
            .unwrap();
    }
    let big = vec![7u8; WHOLE_FRAME_PAYLOAD];
    let (m, cost) = msg(n, &big);
    assert_eq!(
        out.try_send_msg(&m.as_ref(), cost, &mut DeferredWakes::default()),
        Err(MsgUnqueued::AsFrame)
    );
    out.try_send(
        Frame {
            kind: Some(Kind::Msg(m)),
        },
        cost,
    )
    .unwrap();
    for sid in n + 1..n + 10 {
        let (m, cost) = msg(sid, b"after");
        out.try_send_msg(&m.as_ref(), cost, &mut DeferredWakes::default())
            .unwrap();
    }
    drop(out);
    let mut sids = Vec::new();
    while let Some(batch) = stream.next().await {
        let frames = batch.unwrap().into_frames().unwrap();
        assert!(frames.len() <= MAX_BATCH_FRAMES as usize);
        for f in frames {
            let Some(Kind::Msg(m)) = f.kind else {
                panic!("only messages were queued")
            };
            sids.push(m.sid);
        }
    }
    assert_eq!(sids, (0..n + 10).collect::<Vec<_>>());
}

#[test]
fn a_batch_begun_at_a_seal_is_filled_without_reallocating() {
    let mut queue = Queue::default();
    let msg = |payload: usize| nexus_proto::v1::Msg {
        sid: 1,
        subject: "q.s".into(),
        payload: bytes::Bytes::from(vec![7u8; payload]),
        ..Default::default()
    };
    let (first, rest) = (msg(1000), msg(700));
    // Batches of ~370 KB, larger than the capacity `BytesMut` remembers for a split buffer.
    // The first batch grows from nothing (one larger frame, so that what is left of its
    // buffer is less than a batch); the frame after it begins the second batch.
    queue.push_msg(&first.as_ref(), 1000, 1);
    for _ in 0..MAX_BATCH_FRAMES {
        queue.push_msg(&rest.as_ref(), 700, 1);
    }
    assert_eq!(queue.batches.len(), 2);
    assert!(matches!(queue.batches[0].body, Body::Sealed(_)));
    // The second batch fills the buffer reserved when it began: its bytes never move.
    let start = queue.encoded.as_ptr();
    for _ in 1..MAX_BATCH_FRAMES {
        queue.push_msg(&rest.as_ref(), 700, 1);
        assert_eq!(
            queue.encoded.as_ptr(),
            start,
            "the batch's buffer was reallocated"
        );
    }
    assert_eq!(queue.batches.len(), 2);
}

/// A delivery leaves the waiting stream's wake to its caller ([`DeferredWakes`]): one wake
/// for all the deliveries of a batch, and none lost when the collection is dropped.
#[test]
fn deliveries_leave_the_wake_to_the_batch() {
    struct Count(std::sync::atomic::AtomicUsize);
    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let count = Arc::new(Count(Default::default()));
    let woken = || count.0.load(Ordering::SeqCst);
    let waker = Waker::from(count.clone());
    let mut cx = Context::from_waker(&waker);
    let (out, mut stream) = Outbound::new(1 << 20);
    let m = nexus_proto::v1::Msg {
        sid: 1,
        subject: "a".into(),
        ..Default::default()
    };
    assert!(stream.poll_next_unpin(&mut cx).is_pending());
    let mut wakes = DeferredWakes::default();
    for _ in 0..3 {
        out.try_send_msg(&m.as_ref(), out.cost(0), &mut wakes)
            .unwrap();
    }
    assert_eq!(woken(), 0, "not woken by each delivery");
    wakes.wake_all();
    assert_eq!(woken(), 1, "woken once for the three");
    match stream.poll_next_unpin(&mut cx) {
        Poll::Ready(Some(Ok(batch))) => assert_eq!(batch.into_frames().unwrap().len(), 3),
        other => panic!("expected the batch, got {other:?}"),
    }
    assert!(stream.poll_next_unpin(&mut cx).is_pending());
    let mut wakes = DeferredWakes::default();
    out.try_send_msg(&m.as_ref(), out.cost(0), &mut wakes)
        .unwrap();
    drop(wakes);
    assert_eq!(woken(), 2, "a dropped collection wakes what it holds");
    // A frame queued by value still wakes at once.
    assert!(stream.poll_next_unpin(&mut cx).is_ready());
    assert!(stream.poll_next_unpin(&mut cx).is_pending());
    out.try_send(ping(1), 100).unwrap();
    assert_eq!(woken(), 3);
}
