//! Every messaging pattern end to end: the Rust adapter (`nexus-client`) against real
//! gateway processes on loopback, plus `nexusctl` and the adapter's examples.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{Gateway, eventually};
use nexus_client::{Client, Error, Headers, OutgoingMessage, ServiceError};
use std::sync::Mutex;

async fn connect(gw: &Gateway) -> Client {
    Client::builder(&gw.url())
        .name("e2e")
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .connect()
        .await
        .expect("connect")
}

async fn next(sub: &mut nexus_client::Subscription) -> nexus_client::Message {
    tokio::time::timeout(Duration::from_secs(5), sub.next_message())
        .await
        .expect("a message within 5 s")
        .expect("subscription open")
}

async fn nothing_more(sub: &mut nexus_client::Subscription) {
    let r = tokio::time::timeout(Duration::from_millis(200), sub.next_message()).await;
    assert!(r.is_err(), "unexpected message: {:?}", r.ok().flatten());
}

#[tokio::test]
async fn pub_sub_with_wildcards_headers_and_trace_context() {
    let gw = Gateway::start();
    let c = connect(&gw).await;
    let mut exact = c.subscribe("orders.eu.created").await.unwrap();
    let mut star = c.subscribe("orders.*.created").await.unwrap();
    let mut gt = c.subscribe("orders.>").await.unwrap();
    let mut other = c.subscribe("invoices.>").await.unwrap();

    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    c.publish_message(
        OutgoingMessage::new("orders.eu.created", "order 1")
            .with_header("traceparent", tp)
            .with_header("x-tenant", "acme"),
    )
    .await
    .unwrap();
    c.publish("orders.us.created", "order 2").await.unwrap();
    c.publish("orders.eu.created.v2", "order 3").await.unwrap();
    c.publish("orders", "not matched by orders.>")
        .await
        .unwrap();

    let m = next(&mut exact).await;
    assert_eq!(&m.payload[..], b"order 1");
    assert_eq!(
        m.traceparent(),
        Some(tp),
        "trace context is carried unchanged"
    );
    assert_eq!(m.headers.get("x-tenant"), Some("acme"));
    assert!(m.id.is_some(), "every message has an id");
    nothing_more(&mut exact).await;

    assert_eq!(&next(&mut star).await.payload[..], b"order 1");
    assert_eq!(&next(&mut star).await.payload[..], b"order 2");
    nothing_more(&mut star).await;

    let got: Vec<Bytes> = vec![
        next(&mut gt).await.payload,
        next(&mut gt).await.payload,
        next(&mut gt).await.payload,
    ];
    assert_eq!(got, vec!["order 1", "order 2", "order 3"]);
    nothing_more(&mut gt).await;
    nothing_more(&mut other).await;

    // A message without a traceparent gets one from the adapter.
    c.publish("orders.eu.created", "order 4").await.unwrap();
    let m = next(&mut exact).await;
    assert!(nexus_client::is_valid_traceparent(m.traceparent().unwrap()));

    // Unsubscribing stops delivery.
    exact.unsubscribe().await.unwrap();
    c.publish("orders.eu.created", "order 5").await.unwrap();
    assert_eq!(&next(&mut gt).await.payload[..], b"order 4");
    assert_eq!(&next(&mut gt).await.payload[..], b"order 5");
    assert!(
        eventually(Duration::from_secs(2), || gw
            .metric("nexus_subscriptions", &[])
            == 4.0)
        .await
            || gw.metric("nexus_subscriptions", &[]) == 3.0
    );
    assert_eq!(gw.metric("nexus_protocol_errors_total", &[]), 0.0);
}

#[tokio::test]
async fn queue_groups_deliver_each_message_to_exactly_one_member() {
    let gw = Gateway::start();
    let publisher = connect(&gw).await;
    let mut members = Vec::new();
    for _ in 0..3 {
        let c = connect(&gw).await;
        let sub = c.queue_subscribe("jobs.>", "workers").await.unwrap();
        members.push((c, sub));
    }
    let audit_client = connect(&gw).await;
    let mut audit = audit_client.subscribe("jobs.>").await.unwrap();

    let n = 600;
    for i in 0..n {
        publisher
            .publish(&format!("jobs.{}", i % 7), i.to_string())
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();

    let mut seen = BTreeSet::new();
    let mut per_member = Vec::new();
    for (_, sub) in members.iter_mut() {
        let mut count = 0;
        while let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(500), sub.next_message()).await
        {
            let i: u32 = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
            assert!(seen.insert(i), "message {i} delivered twice in the group");
            count += 1;
        }
        per_member.push(count);
    }
    assert_eq!(
        seen.len(),
        n as usize,
        "every message reached one member: {per_member:?}"
    );
    assert!(
        per_member.iter().all(|&c| c > 0),
        "work is shared: {per_member:?}"
    );
    // The plain subscriber sees everything, independently of the group.
    for _ in 0..n {
        next(&mut audit).await;
    }
    assert!(gw.metric("nexus_balancer_picks_total", &[]) >= n as f64);
}

#[tokio::test]
async fn request_reply_timeouts_no_responders_and_service_errors() {
    let gw = Gateway::start();
    let server = connect(&gw).await;
    let caller = connect(&gw).await;

    match caller.request("math.double", "21").await {
        Err(Error::NoResponders { subject }) => assert_eq!(subject, "math.double"),
        other => panic!("{other:?}"),
    }

    let _svc = server
        .serve("math.double", Some("math"), |m| async move {
            let n: u64 = std::str::from_utf8(&m.payload)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| ServiceError::new("payload is not a number"))?;
            if n == 999 {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Ok(Bytes::from((n * 2).to_string()))
        })
        .await
        .unwrap();

    let reply = caller.request("math.double", "21").await.unwrap();
    assert_eq!(&reply.payload[..], b"42");

    match caller.request("math.double", "forty").await {
        Err(Error::Service { message }) => {
            assert!(message.contains("not a number"), "{message}")
        }
        other => panic!("{other:?}"),
    }

    let started = std::time::Instant::now();
    match caller
        .request_with(
            "math.double",
            Headers::new(),
            Bytes::from_static(b"999"),
            Duration::from_millis(300),
        )
        .await
    {
        Err(Error::Timeout { .. }) => {}
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_millis(1500));

    // Many concurrent requests.
    let mut calls = Vec::new();
    for i in 0..200u64 {
        let caller = caller.clone();
        calls.push(tokio::spawn(async move {
            let r = caller.request("math.double", i.to_string()).await.unwrap();
            assert_eq!(r.payload, Bytes::from((i * 2).to_string()));
        }));
    }
    for c in calls {
        c.await.unwrap();
    }
    assert!(gw.metric("nexus_requests_total", &["\"ok\""]) >= 201.0);
    assert!(gw.metric("nexus_requests_total", &["\"timeout\""]) >= 1.0);
    assert!(gw.metric("nexus_request_duration_seconds_count", &[]) >= 203.0);
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let gw = Gateway::start_with_config("[limits]\nmax_payload = 1000\n");
    let c = connect(&gw).await;
    for bad in ["a..b", "", "a.>.b", "a b"] {
        assert!(
            matches!(c.subscribe(bad).await, Err(Error::InvalidSubject { .. })),
            "{bad:?}"
        );
    }
    assert!(matches!(
        c.publish("a.*", "x").await,
        Err(Error::InvalidSubject { .. })
    ));
    match c.publish_acked("big", vec![0u8; 1001]).await {
        Err(Error::Limit { message }) => assert!(message.contains("1000"), "{message}"),
        other => panic!("{other:?}"),
    }
    // The client keeps working.
    let mut sub = c.subscribe("ok").await.unwrap();
    assert_eq!(c.publish_acked("ok", vec![1u8; 1000]).await.unwrap(), 1);
    assert_eq!(next(&mut sub).await.payload.len(), 1000);
}

#[tokio::test]
async fn reconnects_and_resubscribes_after_a_gateway_restart() {
    let mut gw = Gateway::start();
    let subscriber = connect(&gw).await;
    let mut sub = subscriber.subscribe("events.>").await.unwrap();
    let server = connect(&gw).await;
    let _svc = server
        .serve("echo", None, |m| async move { Ok(m.payload) })
        .await
        .unwrap();

    gw.kill();
    assert!(eventually(Duration::from_secs(5), || !subscriber.is_connected()).await);
    gw.restart();
    assert!(
        eventually(Duration::from_secs(10), || subscriber.is_connected()
            && server.is_connected())
        .await,
        "clients reconnected"
    );
    // Subscriptions and services were re-created on the new gateway process.
    assert!(
        eventually(Duration::from_secs(5), || gw
            .metric("nexus_subscriptions", &[])
            >= 2.0)
        .await
    );
    let publisher = connect(&gw).await;
    publisher
        .publish("events.restarted", "hello again")
        .await
        .unwrap();
    assert_eq!(&next(&mut sub).await.payload[..], b"hello again");
    let r = publisher.request("echo", "still there").await.unwrap();
    assert_eq!(&r.payload[..], b"still there");
}

#[tokio::test]
async fn streams_carry_data_both_ways_with_backpressure() {
    let gw = Gateway::start();
    let server = Client::builder(&gw.url()).connect().await.unwrap();
    let mut listener = server.listen_streams("upload", None).await.unwrap();
    // The acceptor reads slowly: the opener must be held back by credit, not buffered.
    let acceptor = tokio::spawn(async move {
        let mut s = listener.accept().await.expect("a stream");
        let mut total = 0u64;
        let mut n = 0u32;
        while let Some(m) = s.recv().await {
            let m = m.expect("stream data");
            total += m.payload.len() as u64;
            n += 1;
            if n.is_multiple_of(100) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        s.send(format!("{n} frames, {total} bytes")).await.unwrap();
        s.finish().await.unwrap();
        (n, total)
    });
    let client = Client::builder(&gw.url())
        .stream_window(16)
        .connect()
        .await
        .unwrap();
    let mut s = client.open_stream("upload").await.unwrap();
    for i in 0..2000u32 {
        s.send(Bytes::from(vec![(i % 251) as u8; 512]))
            .await
            .unwrap();
    }
    s.finish().await.unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(20), s.recv())
        .await
        .expect("summary in time")
        .expect("summary")
        .unwrap();
    assert_eq!(&summary.payload[..], b"2000 frames, 1024000 bytes");
    assert_eq!(acceptor.await.unwrap(), (2000, 1_024_000));
    assert_eq!(
        gw.metric("nexus_limit_violations_total", &["\"stream_credit\""]),
        0.0,
        "the adapter never overran its credit"
    );
}

#[tokio::test]
async fn a_responder_vanishing_mid_request_fails_the_call_quickly() {
    let gw = Gateway::start();
    let server = connect(&gw).await;
    let got_it = Arc::new(tokio::sync::Notify::new());
    let notify = got_it.clone();
    let _svc = server
        .serve("slow", None, move |_| {
            let notify = notify.clone();
            async move {
                notify.notify_one();
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(Bytes::new())
            }
        })
        .await
        .unwrap();
    let caller = connect(&gw).await;
    let call = tokio::spawn({
        let caller = caller.clone();
        async move {
            caller
                .request_with(
                    "slow",
                    Headers::new(),
                    Bytes::new(),
                    Duration::from_secs(30),
                )
                .await
        }
    });
    got_it.notified().await;
    server.close().await;
    let result = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("failed fast, not after the 30 s timeout")
        .unwrap();
    match result {
        Err(Error::Service { message }) => assert!(message.contains("disconnected"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn requests_prefer_fast_responders() {
    let gw = Gateway::start();
    let served: Arc<Mutex<HashMap<&'static str, u32>>> = Arc::default();
    let mut servers = Vec::new();
    for (name, ms) in [("fast", 1u64), ("medium", 15), ("slow", 60)] {
        let c = connect(&gw).await;
        let served = served.clone();
        let svc = c
            .serve("work", Some("pool"), move |_| {
                let served = served.clone();
                async move {
                    *served.lock().unwrap().entry(name).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok(Bytes::from_static(b"ok"))
                }
            })
            .await
            .unwrap();
        servers.push((c, svc));
    }
    let caller = connect(&gw).await;
    let inflight = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let caller = caller.clone();
        let inflight = inflight.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                inflight.fetch_add(1, Ordering::Relaxed);
                caller.request("work", "x").await.unwrap();
                inflight.fetch_sub(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let served = served.lock().unwrap().clone();
    let total: u32 = served.values().sum();
    assert_eq!(total, 400);
    let fast = served.get("fast").copied().unwrap_or(0);
    let slow = served.get("slow").copied().unwrap_or(0);
    assert!(
        fast > 200,
        "the fast responder takes most requests: {served:?}"
    );
    assert!(slow < 60, "the slow responder takes few: {served:?}");
}

/// Runs nexusctl without blocking the runtime (the services it calls live in this test).
async fn nexusctl(gw: &Gateway, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_nexusctl"))
        .args(args)
        .env("NEXUS_URL", gw.url())
        .output()
        .await
        .expect("run nexusctl")
}

#[tokio::test]
async fn nexusctl_publishes_requests_and_reports_errors() {
    let gw = Gateway::start();
    let c = connect(&gw).await;
    let mut sub = c.subscribe("greet.*").await.unwrap();
    let _svc = c
        .serve("time.now", None, |_| async {
            Ok(Bytes::from_static(b"noon"))
        })
        .await
        .unwrap();

    let out = nexusctl(&gw, &["pub", "greet.world", "hello", "-H", "k=v"]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(": 1 delivery in "));
    let m = next(&mut sub).await;
    assert_eq!(
        (&m.payload[..], m.headers.get("k")),
        (&b"hello"[..], Some("v"))
    );

    let out = nexusctl(&gw, &["req", "time.now", "", "-o", "json"]).await;
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\"payload\":\"noon\""), "{stdout}");

    let out = nexusctl(&gw, &["req", "nobody.home", ""]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no responders"));

    let out = nexusctl(&gw, &["sub", "a..b"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid subject"));

    let out = nexusctl(&gw, &["info", "-o", "json"]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"region\":\"test\""));
}

/// The adapter's examples, built by `cargo test --all-targets`, run against a real gateway.
#[tokio::test]
async fn the_rust_examples_run_against_a_gateway() {
    let gw = Gateway::start();
    let exe = std::env::current_exe().unwrap();
    let examples = exe.parent().unwrap().parent().unwrap().join("examples");
    for name in ["pubsub", "request_reply", "queue_group", "stream"] {
        let path = examples.join(name);
        if !path.exists() {
            panic!(
                "example {name} not built at {}; run cargo test --all-targets",
                path.display()
            );
        }
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new(&path)
                .env("NEXUS_URL", gw.url())
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("example {name} did not finish"))
        .unwrap();
        assert!(
            out.status.success(),
            "example {name} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A publisher's session caches which subscriptions its subjects match
/// (gateway/src/router/match_cache.rs): subscriptions made and removed afterwards, by other
/// sessions and with other patterns, are seen by its very next publish.
#[tokio::test]
async fn a_publishers_cached_matches_follow_subscriptions() {
    let gw = Gateway::start();
    let publisher = connect(&gw).await;
    let other = connect(&gw).await;
    assert_eq!(publisher.publish_acked("cache.x", "1").await.unwrap(), 0);
    assert_eq!(publisher.publish_acked("cache.x", "2").await.unwrap(), 0);
    let wide = other.subscribe("cache.*").await.unwrap();
    assert_eq!(publisher.publish_acked("cache.x", "3").await.unwrap(), 1);
    let exact = other.subscribe("cache.x").await.unwrap();
    assert_eq!(publisher.publish_acked("cache.x", "4").await.unwrap(), 2);
    wide.unsubscribe().await.unwrap();
    other.flush().await.unwrap();
    assert_eq!(publisher.publish_acked("cache.x", "5").await.unwrap(), 1);
    exact.unsubscribe().await.unwrap();
    other.flush().await.unwrap();
    assert_eq!(publisher.publish_acked("cache.x", "6").await.unwrap(), 0);
    // A member joining an existing group changes no table: it is found too.
    let a = other.subscribe("cache.y").await.unwrap();
    assert_eq!(publisher.publish_acked("cache.y", "7").await.unwrap(), 1);
    let b = publisher.subscribe("cache.y").await.unwrap();
    assert_eq!(publisher.publish_acked("cache.y", "8").await.unwrap(), 2);
    drop((a, b));
}
