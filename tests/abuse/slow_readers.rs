//! Clients that read slowly or not at all: a reading client is not cut off, a publisher is
//! delayed by at most `max_wait_ms` however many subscribers are slow.

use super::*;

/// One batch of 150 000 frames that are each answered (about 2.5 MB: the mix of
/// pings, acked publishes and subscriptions refused for a bad subject) gets every answer: a
/// client that reads them all is never cut off as a slow consumer of its own answers
/// (protocol.md §12.4). Before, the session ended at 65 536 queued control frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_answered_frames_does_not_cut_off_a_reading_client() {
    let gw = Gateway::start();
    let mut s = RawSession::connect(&gw.url()).await;
    const N: u64 = 150_000;
    let frames: Vec<v1::Frame> = (1..=N)
        .map(|i| match i % 3 {
            0 => frame(Kind::Ping(v1::Ping { nonce: i })),
            1 => frame(Kind::Pub(v1::Pub {
                subject: "answered.nobody".into(),
                payload: Bytes::from_static(b"x"),
                ack_id: i,
                ..Default::default()
            })),
            _ => frame(Kind::Sub(v1::Sub {
                sid: i,
                subject: "bad..subject".into(),
                ack_id: i,
                ..Default::default()
            })),
        })
        .collect();
    s.send(frames).await;
    let started = Instant::now();
    let (mut pongs, mut acks, mut nacks) = (0u64, 0u64, 0u64);
    while pongs + acks + nacks < N {
        match s.next_result().await {
            Ok(Some(Kind::Pong(p))) => {
                assert_eq!(p.nonce % 3, 0);
                pongs += 1;
            }
            Ok(Some(Kind::Ack(a))) => {
                assert_eq!(a.ack_id % 3, 1);
                acks += 1;
            }
            Ok(Some(Kind::Nack(n))) => {
                assert_eq!(n.ack_id % 3, 2);
                nacks += 1;
            }
            other => panic!("after {pongs} pongs, {acks} acks, {nacks} nacks: {other:?}"),
        }
    }
    println!(
        "{N} answers read in {:?}: {pongs} pongs, {acks} acks, {nacks} nacks",
        started.elapsed()
    );
    assert_eq!((pongs, acks, nacks), (N / 3, N / 3, N / 3));
    s.send(vec![frame(Kind::Ping(v1::Ping { nonce: 1 }))]).await;
    assert!(matches!(s.next_frame().await, Some(Kind::Pong(_))));
}

/// Ten subscribers that never read delay a publisher by about `max_wait_ms` in all under
/// `backpressure` (they are waited for together, then cut off), and not at all under `drop`
/// and `disconnect`. Before, they were waited for one after another: 10 x `max_wait_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_slow_subscribers_delay_a_publisher_by_at_most_max_wait() {
    const MAX_WAIT_MS: u64 = 1000;
    for policy in ["backpressure", "drop", "disconnect"] {
        let gw = Gateway::start_with_config(&format!(
            "[limits]\nmax_payload = 4096\n[slow_consumer]\npolicy = \"{policy}\"\nmax_pending_bytes = 65536\nmax_wait_ms = {MAX_WAIT_MS}\n"
        ));
        let mut slow = Vec::new();
        for _ in 0..10 {
            let mut s = RawSession::connect(&gw.url()).await;
            s.send(vec![frame(Kind::Sub(v1::Sub {
                sid: 1,
                subject: "firehose".into(),
                queue_group: String::new(),
                ack_id: 1,
            }))])
            .await;
            assert!(matches!(s.next_frame().await, Some(Kind::Ack(_))));
            slow.push(s); // never read again
        }
        // 2 000 x 4 000 bytes: far past each subscriber's budget and HTTP/2 windows.
        let mut p = RawSession::connect(&gw.url()).await;
        let payload = Bytes::from(vec![7u8; 4000]);
        let started = Instant::now();
        for chunk in 0..20u64 {
            p.send(
                (1..=100)
                    .map(|i| {
                        frame(Kind::Pub(v1::Pub {
                            subject: "firehose".into(),
                            payload: payload.clone(),
                            ack_id: chunk * 100 + i,
                            ..Default::default()
                        }))
                    })
                    .collect(),
            )
            .await;
        }
        let mut acked = 0;
        while acked < 2000 {
            match tokio::time::timeout(Duration::from_secs(30), p.rx.message()).await {
                Ok(Ok(Some(b))) => {
                    acked += b
                        .frames
                        .iter()
                        .filter(|f| matches!(f.kind, Some(Kind::Ack(_))))
                        .count()
                }
                other => panic!("{policy}: publisher stream ended after {acked} acks: {other:?}"),
            }
        }
        let took = started.elapsed();
        let waited = gw.metric("nexus_slow_consumer_events_total", &["\"waited\""]);
        let cut = gw.metric("nexus_slow_consumer_events_total", &["\"disconnected\""]);
        println!(
            "{policy}: 2000 publishes to 10 stalled subscribers acked in {took:?} (waited {waited}, disconnected {cut})"
        );
        // Serial waits took at least 10 x max_wait; the bound is one max_wait plus the work,
        // with room for a machine busy with other tests (4.3 s seen in a full parallel run).
        let bound = Duration::from_millis(MAX_WAIT_MS * 8);
        assert!(took < bound, "{policy}: the publisher took {took:?}");
        if policy != "drop" {
            assert_eq!(cut, 10.0, "{policy}: every stalled subscriber is cut off");
        }
        drop(slow);
    }
}
