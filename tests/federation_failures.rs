//! What federation promises when things go wrong, with real gateway processes and the WAN
//! emulator between regions (the three-region cluster of `common::regions`):
//! - an `async` route loses nothing when a link heals while the publishing gateway is held up
//!   by a local subscriber that stopped reading (the scenario that once lost 1 000 acknowledged
//!   messages: the new link was used from the dead link's position before its `Up` was
//!   handled);
//! - best-effort accounting adds up across a cut: every message for a region is confirmed by
//!   it or counted as dropped with a reason;
//! - a region whose gateway is `kill -9`ed is detected dead in well under a second, and
//!   requests fail over to the next region with none sent to the dead one afterwards;
//! - a publish retried with the same message id is not a second message, also after the
//!   gateway was `kill -9`ed and restarted on its state directory.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::regions::*;
use common::{RawSession, eventually, frame, tempdir};
use nexus_proto::v1::{self, frame::Kind};

/// Publishes `n` numbered messages (4-byte big-endian `first..first+n`, padded to `size`) on
/// `orders.s<i % 4>`, each acknowledged.
async fn publish_numbered(c: &nexus_client::Client, first: u32, n: u32, size: usize) {
    for i in first..first + n {
        let mut payload = vec![0u8; size.max(4)];
        payload[..4].copy_from_slice(&i.to_be_bytes());
        c.publish_acked(&format!("orders.s{}", i % 4), payload)
            .await
            .unwrap_or_else(|e| panic!("publish {i}: {e}"));
    }
}

/// Receives until every number below `n` arrived, checking each arrives once and in order
/// per subject.
async fn expect_all_once_in_order(sub: &mut nexus_client::Subscription, n: u32, within: Duration) {
    let mut last = HashMap::<String, u32>::new();
    let mut seen = HashSet::new();
    let deadline = Instant::now() + within;
    while seen.len() < n as usize {
        let m = tokio::time::timeout_at(deadline.into(), sub.next_message())
            .await
            .unwrap_or_else(|_| {
                let missing: Vec<u32> = (0..n).filter(|i| !seen.contains(i)).take(20).collect();
                panic!(
                    "only {} of {n} arrived; missing (first 20): {missing:?}",
                    seen.len()
                )
            })
            .expect("subscription open");
        let i = u32::from_be_bytes(m.payload[..4].try_into().unwrap());
        assert!(seen.insert(i), "message {i} arrived twice");
        if let Some(p) = last.insert(m.subject.to_string(), i) {
            assert!(i > p, "out of order on {}: {i} after {p}", m.subject);
        }
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(500), sub.next_message())
            .await
            .is_err(),
        "a message arrived after all {n}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_route_loses_nothing_when_a_link_heals_while_a_local_subscriber_stalls_the_gateway() {
    // A waits up to 15 s for a subscriber that stopped reading, as in the report.
    let dir = tempdir::Dir::new("stall-config");
    let config = dir.0.join("a.toml");
    std::fs::write(&config, "[slow_consumer]\nmax_wait_ms = 15000\n").unwrap();
    let cl = Cluster::start_with(2, 2, 2, &["--config", config.to_str().unwrap()]).await;
    cl.route(
        "name = \"orders\"\nsubjects = [\"orders.>\"]\npolicy = \"broadcast\"\nconsistency = \"async\"\n",
        "orders",
        "orders.s0",
    )
    .await;
    let c_client = client(&cl.c).await;
    let mut sub = c_client.subscribe("orders.>").await.unwrap();
    c_client.flush().await.unwrap();
    interest_known(&cl.a, C, "orders.s0").await;

    // A subscriber in A that never reads, fed large messages from B.
    let mut stalled = RawSession::connect(&cl.a.url()).await;
    stalled
        .send(vec![frame(Kind::Sub(v1::Sub {
            sid: 1,
            subject: "stall.>".into(),
            ack_id: 1,
            ..Default::default()
        }))])
        .await;
    assert!(matches!(stalled.next_frame().await, Some(Kind::Ack(_))));
    interest_known(&cl.b, A, "stall.x").await;

    let publisher = client(&cl.a).await;
    publish_numbered(&publisher, 0, 200, 8 * 1024).await;
    // Cut A-C; what A publishes before it notices goes into the dead link.
    cl.ac.cut();
    publish_numbered(&publisher, 200, 300, 8 * 1024).await;
    assert!(eventually(Duration::from_secs(15), || link_state(&cl.a, C) == "down").await);

    // Stall A: B sends it far more than its stalled subscriber's queue holds. Random bytes:
    // the adapter compresses payloads (docs/protocol.md §9.2), and 512 KiB of zeros would
    // travel, queue and count against the subscriber's budget as a few dozen bytes.
    let b_client = client(&cl.b).await;
    for _ in 0..64 {
        let payload: Vec<u8> = (0..512 * 1024).map(|_| rand::random::<u8>()).collect();
        b_client.publish("stall.x", payload).await.unwrap();
    }
    b_client.flush().await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || cl
            .a
            .metric("nexus_slow_consumer_events_total", &["action=\"waited\""])
            >= 1.0)
        .await,
        "A's deliveries from B never blocked on the stalled subscriber"
    );
    publish_numbered(&publisher, 500, 300, 8 * 1024).await;
    // Heal while A is still held up.
    cl.ac.heal();
    expect_all_once_in_order(&mut sub, 800, Duration::from_secs(60)).await;
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn best_effort_accounting_adds_up_across_a_cut() {
    let cl = Cluster::start(2, 2, 2).await;
    let c_client = client(&cl.c).await;
    let mut sub = c_client.subscribe("metrics.>").await.unwrap();
    c_client.flush().await.unwrap();
    interest_known(&cl.a, C, "metrics.cpu").await;
    let received = tokio::spawn(async move {
        let mut n = 0u64;
        while let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_secs(8), sub.next_message()).await
        {
            n += 1;
        }
        n
    });
    let publisher = client(&cl.a).await;
    let mut published = 0u64;
    let mut cut_at = None;
    let started = Instant::now();
    // ~3 s at ~2 000 msgs/s; the link to C is cut for the middle second.
    while started.elapsed() < Duration::from_secs(3) {
        for _ in 0..20 {
            publisher
                .publish("metrics.cpu", vec![1u8; 64])
                .await
                .unwrap();
            published += 1;
        }
        publisher.flush().await.unwrap();
        let t = started.elapsed();
        if cut_at.is_none() && t > Duration::from_secs(1) {
            cl.ac.cut();
            cut_at = Some(t);
        }
        if cut_at.is_some_and(|c| t > c + Duration::from_secs(1)) {
            cl.ac.heal();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cl.ac.heal();
    publisher.flush().await.unwrap();
    assert!(eventually(Duration::from_secs(15), || link_state(&cl.a, C) == "up").await);
    let got = received.await.unwrap();
    // Everything settled: nothing is left unconfirmed.
    let link = |st: &serde_json::Value| {
        st["links"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["region"] == C)
            .cloned()
            .unwrap()
    };
    assert!(
        eventually(
            Duration::from_secs(5),
            || link(&status(&cl.a))["unconfirmed"] == 0
        )
        .await,
        "{}",
        status(&cl.a)
    );
    let l = link(&status(&cl.a));
    let n = |k: &str| l[k].as_u64().unwrap_or_else(|| panic!("{k} in {l}"));
    let by = |k: &str| l["dropped_by_reason"][k].as_u64().unwrap_or(0);
    eprintln!("published {published}, subscriber got {got}, A's link to C: {l}");
    assert_eq!(
        n("forwarded"),
        n("confirmed") + by("link_lost"),
        "forwarded = confirmed + lost with the link: {l}"
    );
    assert_eq!(
        published,
        n("confirmed") + n("dropped"),
        "every message is confirmed or dropped with a reason: {l}"
    );
    // What C's subscriber got is what C confirmed, plus at most what arrived in the last
    // receipt interval before the cut (counted lost: A cannot know it arrived).
    assert!(
        got >= n("confirmed") && got <= n("confirmed") + by("link_lost"),
        "subscriber got {got}: {l}"
    );
    assert!(n("dropped") > 0, "the cut dropped something: {l}");
    assert!(by("link_down") > 0, "{l}");
    let c_from_a = status(&cl.c)["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["region"] == A)
        .cloned()
        .unwrap();
    assert_eq!(c_from_a["received"].as_u64(), Some(got), "{c_from_a}");
}

/// What a `kill -9` of the nearest responder region cost requesters in A.
#[derive(Debug)]
struct Failover {
    rate: u32,
    /// From the kill until A's status showed the region down.
    detected: Duration,
    /// From the kill until the first request after which every request was answered.
    gap: Duration,
    sent: usize,
    failed: usize,
    /// Requests that failed although sent after A had detected the region dead.
    failed_after_detection: usize,
}

/// Responders in B (5 ms away, nearest) and C (20 ms), requests from A at `rate` per second
/// on a `local_first` route; B's gateway is killed with `kill -9`.
async fn failover_after_kill(rate: u32) -> Failover {
    let mut cl = Cluster::start(5, 20, 2).await;
    cl.route(
        "name = \"svc\"\nsubjects = [\"svc.>\"]\npolicy = \"local_first\"\nconsistency = \"best_effort\"\n",
        "svc",
        "svc.echo",
    )
    .await;
    let _b = responder(&cl.b, "svc.echo", B).await;
    let _c = responder(&cl.c, "svc.echo", C).await;
    interest_known(&cl.a, B, "svc.echo").await;
    interest_known(&cl.a, C, "svc.echo").await;
    let caller = client(&cl.a).await;
    assert_eq!(majority(&caller, "svc.echo", 10).await, B);

    // Requests at `rate`, each with a 5 s budget, recorded with when they were sent.
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let c2 = caller.clone();
    let every = Duration::from_secs_f64(1.0 / f64::from(rate));
    let load = tokio::spawn(async move {
        let mut out = Vec::new();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut inflight = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = &mut stop_rx => break,
                _ = tick.tick() => {}
            }
            let c = c2.clone();
            inflight.spawn(async move {
                let sent = Instant::now();
                let r = c.request("svc.echo", b"?".to_vec()).await;
                (
                    sent,
                    r.map(|m| String::from_utf8_lossy(&m.payload).into_owned()),
                )
            });
        }
        while let Some(r) = inflight.join_next().await {
            out.push(r.unwrap());
        }
        out
    });
    tokio::time::sleep(Duration::from_millis(1000).max(every * 2)).await;
    let killed = Instant::now();
    cl.b.kill();
    let mut detected = None;
    while killed.elapsed() < Duration::from_secs(10) {
        if link_state(&cl.a, B) == "down" {
            detected = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let detected = detected.expect("A never noticed B was gone");
    tokio::time::sleep(Duration::from_secs(2).max(every * 3)).await;
    let _ = stop_tx.send(());
    let mut results = load.await.unwrap();
    results.sort_by_key(|(sent, _)| *sent);
    let after: Vec<(Duration, bool)> = results
        .iter()
        .filter(|(sent, _)| *sent >= killed)
        .map(|(sent, r)| (sent.duration_since(killed), r.is_ok()))
        .collect();
    let last_failure = after.iter().rposition(|(_, ok)| !ok);
    let gap = match last_failure {
        Some(i) => after.get(i + 1).map_or(detected, |(t, _)| *t),
        None => Duration::ZERO,
    };
    // The status poll adds a few milliseconds to what A itself knew.
    let margin = detected + Duration::from_millis(50);
    Failover {
        rate,
        detected,
        gap,
        sent: after.len(),
        failed: results.iter().filter(|(_, r)| r.is_err()).count(),
        failed_after_detection: after.iter().filter(|(t, ok)| !ok && *t > margin).count(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_region_is_detected_within_a_second_and_requests_fail_over() {
    let f = failover_after_kill(50).await;
    eprintln!("{f:?}");
    assert!(f.detected < Duration::from_millis(1500), "{f:?}");
    assert!(f.gap < Duration::from_millis(1500), "{f:?}");
    assert_eq!(
        f.failed_after_detection, 0,
        "requests went to a region known dead: {f:?}"
    );
}

/// The measurement behind docs/federation.md §4 (run by `load-tests/run-failover.sh`, not by
/// the suite): the same `kill -9` at 2, 50 and 500 requests a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; load-tests/run-failover.sh runs it"]
async fn failover_measurement() {
    let runs: u32 = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    println!(
        "| requests/s | run | detected (ms) | gap (ms) | sent after the kill | failed | failed after detection |"
    );
    println!("|---|---|---|---|---|---|---|");
    for rate in [2, 50, 500] {
        for run in 1..=runs {
            let f = failover_after_kill(rate).await;
            println!(
                "| {} | {run} | {:.0} | {:.0} | {} | {} | {} |",
                f.rate,
                f.detected.as_secs_f64() * 1e3,
                f.gap.as_secs_f64() * 1e3,
                f.sent,
                f.failed,
                f.failed_after_detection
            );
        }
    }
}

fn pub_with_id(subject: &str, id: [u8; 16], ack_id: u64, payload: &'static [u8]) -> v1::Frame {
    frame(Kind::Pub(v1::Pub {
        subject: subject.into(),
        payload: Bytes::from_static(payload),
        id: Bytes::copy_from_slice(&id),
        ack_id,
        ..Default::default()
    }))
}

async fn ack_of(s: &mut RawSession, ack_id: u64) -> v1::Ack {
    loop {
        match s.next_frame().await {
            Some(Kind::Ack(a)) if a.ack_id == ack_id => return a,
            Some(Kind::Nack(n)) if n.ack_id == ack_id => panic!("refused: {n:?}"),
            Some(_) => continue,
            None => panic!("the session ended before ack {ack_id}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_retried_with_the_same_id_is_one_message_also_after_a_kill_9() {
    let mut cl = Cluster::start(2, 2, 2).await;
    cl.route(
        "name = \"orders\"\nsubjects = [\"orders.>\"]\npolicy = \"broadcast\"\nconsistency = \"async\"\n",
        "orders",
        "orders.x",
    )
    .await;
    let c_client = client(&cl.c).await;
    let mut remote = c_client.subscribe("orders.>").await.unwrap();
    c_client.flush().await.unwrap();
    interest_known(&cl.a, C, "orders.x").await;
    let a_client = client(&cl.a).await;
    let mut local = a_client.subscribe("orders.>").await.unwrap();
    a_client.flush().await.unwrap();

    let id = *b"retry-me-please!";
    let mut s = RawSession::connect(&cl.a.url()).await;
    s.send(vec![pub_with_id("orders.x", id, 1, b"one")]).await;
    let first = ack_of(&mut s, 1).await;
    assert!(!first.duplicate);
    assert_eq!(first.spooled_regions, vec![C.to_owned()]);
    // The same message again (a publisher retrying after a lost connection).
    s.send(vec![pub_with_id("orders.x", id, 2, b"one")]).await;
    let again = ack_of(&mut s, 2).await;
    assert!(again.duplicate, "{again:?}");
    assert_eq!(again.delivered, 0);
    // The local subscriber has it (before the kill, which would lose what its gateway has
    // not written to it yet).
    let mut local_payloads = Vec::new();
    let m = tokio::time::timeout(Duration::from_secs(5), local.next_message())
        .await
        .expect("the local subscriber gets the first attempt")
        .unwrap();
    local_payloads.push(String::from_utf8_lossy(&m.payload).into_owned());

    // The gateway dies and comes back on its state directory: it still remembers the id.
    drop(s);
    cl.a.kill();
    cl.a.restart();
    let mut s = RawSession::connect(&cl.a.url()).await;
    s.send(vec![pub_with_id("orders.x", id, 3, b"one")]).await;
    assert!(ack_of(&mut s, 3).await.duplicate);
    // A different id is a new message; an id of the wrong length is refused.
    s.send(vec![pub_with_id(
        "orders.x",
        *b"another-message!",
        4,
        b"two",
    )])
    .await;
    assert!(!ack_of(&mut s, 4).await.duplicate);
    s.send(vec![frame(Kind::Pub(v1::Pub {
        subject: "orders.x".into(),
        id: Bytes::from_static(b"short"),
        ack_id: 5,
        ..Default::default()
    }))])
    .await;
    loop {
        match s.next_frame().await {
            Some(Kind::Nack(n)) if n.ack_id == 5 => {
                let e = n.error.unwrap();
                assert!(e.message.contains("16 bytes"), "{e:?}");
                break;
            }
            Some(_) => continue,
            None => panic!("no answer to a malformed id"),
        }
    }

    // C got "one" once and "two" once; A's local subscriber got "one" once before the kill.
    let mut payloads = Vec::new();
    while let Ok(Some(m)) =
        tokio::time::timeout(Duration::from_secs(3), remote.next_message()).await
    {
        payloads.push(String::from_utf8_lossy(&m.payload).into_owned());
    }
    assert_eq!(payloads, vec!["one", "two"]);
    while let Ok(Some(m)) =
        tokio::time::timeout(Duration::from_millis(500), local.next_message()).await
    {
        local_payloads.push(String::from_utf8_lossy(&m.payload).into_owned());
    }
    // (It may have reconnected in time for "two" after the restart.)
    assert_eq!(
        local_payloads.iter().filter(|p| *p == "one").count(),
        1,
        "{local_payloads:?}"
    );
    assert!(cl.a.metric("nexus_publish_duplicates_total", &[]) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_kill_before_the_ack_is_not_delivered_again() {
    let mut cl = Cluster::start(2, 2, 2).await;
    cl.route(
        "name = \"orders\"\nsubjects = [\"orders.>\"]\npolicy = \"broadcast\"\nconsistency = \"async\"\n",
        "orders",
        "orders.x",
    )
    .await;
    let c_client = client(&cl.c).await;
    let mut remote = c_client.subscribe("orders.>").await.unwrap();
    c_client.flush().await.unwrap();
    interest_known(&cl.a, C, "orders.x").await;
    let id = *b"killed-before-ak";
    let s = RawSession::connect(&cl.a.url()).await;
    s.send(vec![pub_with_id("orders.x", id, 1, b"one")]).await;
    // It reached C; A dies before its Ack is read.
    let m = tokio::time::timeout(Duration::from_secs(10), remote.next_message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"one");
    cl.a.kill();
    drop(s);
    cl.a.restart();
    interest_known(&cl.a, C, "orders.x").await;
    let mut s = RawSession::connect(&cl.a.url()).await;
    s.send(vec![pub_with_id("orders.x", id, 2, b"one")]).await;
    let ack = ack_of(&mut s, 2).await;
    assert!(ack.duplicate, "{ack:?}");
    let again = tokio::time::timeout(Duration::from_secs(2), remote.next_message()).await;
    assert!(again.is_err(), "delivered again: {again:?}");
}
