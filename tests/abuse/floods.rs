//! Floods of anonymous or idle connections and sessions: keyed clients still get in, and
//! nothing is left behind.

use super::*;

/// Opens `n` sessions that never send anything, over `channels` HTTP/2 connections from
/// `source`; returns the response streams of the sessions the gateway accepted and how many
/// it refused (with the statuses' messages, deduplicated).
async fn silent_sessions(
    url: &str,
    source: IpAddr,
    channels: usize,
    n: usize,
) -> (Vec<tonic::Streaming<v1::Batch>>, usize, Vec<String>) {
    let mut tasks = Vec::new();
    for _ in 0..channels {
        let channel = tonic::transport::Endpoint::from_shared(url.to_string())
            .unwrap()
            .local_address(Some(source))
            .connect()
            .await
            .expect("connect");
        let client = GatewayClient::new(channel);
        let per = n / channels;
        tasks.push(tokio::spawn(async move {
            let calls = (0..per).map(|_| {
                let mut c = client.clone();
                async move { c.session(tokio_stream::pending::<v1::Batch>()).await }
            });
            futures::future::join_all(calls).await
        }));
    }
    let mut open = Vec::new();
    let mut refused = 0;
    let mut messages = Vec::new();
    for t in tasks {
        for r in t.await.unwrap() {
            match r {
                Ok(resp) => open.push(resp.into_inner()),
                Err(status) => {
                    refused += 1;
                    let m = format!("{:?}: {}", status.code(), status.message());
                    if !messages.contains(&m) {
                        messages.push(m);
                    }
                }
            }
        }
    }
    (open, refused, messages)
}

/// The flood: 10 000 sessions that never send Hello, from 40 addresses. Keyed clients
/// connect throughout, the gateway's memory stays bounded, and every silent session is gone
/// after the Hello deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_silent_sessions_do_not_lock_out_keyed_clients() {
    let (_cp, gw, secret, _dir) = keyed_gateway("hello_timeout_ms = 3000\n").await;
    let rss_before = gw.rss_kib();
    let url = gw.url();
    let flood = tokio::spawn(async move {
        let mut handles = Vec::new();
        for a in 0..40u8 {
            let url = url.clone();
            handles.push(tokio::spawn(async move {
                silent_sessions(&url, IpAddr::V4(Ipv4Addr::new(127, 0, 1, a + 1)), 2, 250).await
            }));
        }
        let mut open = Vec::new();
        let mut refused = 0;
        let mut messages = Vec::new();
        for h in handles {
            let (o, r, m) = h.await.unwrap();
            open.extend(o);
            refused += r;
            for m in m {
                if !messages.contains(&m) {
                    messages.push(m);
                }
            }
        }
        (open, refused, messages)
    });
    // Keyed clients keep getting in while the flood is under way.
    let started = Instant::now();
    let mut keyed = 0;
    let mut worst = Duration::ZERO;
    let mut peak_rss = 0;
    while !flood.is_finished() || keyed < 10 {
        let t = Instant::now();
        let s = tokio::time::timeout(Duration::from_secs(30), keyed_session(&gw.url(), &secret))
            .await
            .unwrap_or_else(|_| panic!("keyed session {keyed} waited over 30 s"))
            .unwrap_or_else(|e| panic!("a keyed client was refused during the flood: {e}"));
        worst = worst.max(t.elapsed());
        println!("keyed session {keyed} in {:?}", t.elapsed());
        drop(s);
        keyed += 1;
        peak_rss = peak_rss.max(gw.rss_kib());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (open, refused, messages) = flood.await.unwrap();
    peak_rss = peak_rss.max(gw.rss_kib());
    let flood_time = started.elapsed();
    let evicted = gw.metric(
        "nexus_admission_refusals_total",
        &["reason=\"unauthenticated_evicted\""],
    );
    let per_address = gw.metric(
        "nexus_admission_refusals_total",
        &["reason=\"unauthenticated_per_address\""],
    );
    // Evicted sessions count as open until their tasks have closed them, which on a busy
    // machine takes a moment after the flood; without eviction some 8 000 would wait for the
    // Hello deadline (3 s), so a second is ample and still fails a missing bound.
    let settling = std::time::Instant::now();
    let mut waiting = gw.metric("nexus_unauthenticated_sessions", &[]);
    while waiting > 1024.0 && settling.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waiting = gw.metric("nexus_unauthenticated_sessions", &[]);
    }
    println!(
        "flood of 10000 silent sessions in {flood_time:?}: {} opened, {refused} refused ({messages:?}), {evicted} evicted, {waiting} waiting (after {:?}); {keyed} keyed sessions, slowest {worst:?}; RSS {rss_before} KiB before, peak {peak_rss} KiB",
        open.len(),
        settling.elapsed()
    );
    assert_eq!(open.len() + refused, 10_000);
    assert!(waiting <= 1024.0, "{waiting} sessions waiting for Hello");
    assert_eq!(per_address, refused as f64);
    assert!(
        messages
            .iter()
            .all(|m| m.contains("limits.max_unauthenticated_per_address (128)")),
        "{messages:?}"
    );
    assert!(
        peak_rss < rss_before + 150 * 1024,
        "RSS grew from {rss_before} KiB to {peak_rss} KiB"
    );
    // Past the Hello deadline, every silent session has been closed and counted.
    assert!(
        eventually(Duration::from_secs(10), || gw
            .metric("nexus_unauthenticated_sessions", &[])
            == 0.0)
        .await
    );
    let timed_out = gw.metric(
        "nexus_admission_refusals_total",
        &["reason=\"hello_timeout\""],
    );
    assert!(timed_out >= 1.0, "{timed_out}");
    let mut ended_with = Vec::new();
    for mut s in open.into_iter().take(50) {
        let end = tokio::time::timeout(Duration::from_secs(5), s.message()).await;
        if let Ok(Err(status)) = end {
            ended_with.push(status.code());
        }
    }
    assert!(
        ended_with.iter().all(|c| matches!(
            c,
            tonic::Code::DeadlineExceeded | tonic::Code::ResourceExhausted
        )),
        "{ended_with:?}"
    );
    println!(
        "after the deadline: {timed_out} closed for no Hello, RSS {} KiB",
        gw.rss_kib()
    );
    keyed_session(&gw.url(), &secret).await.unwrap();
}

/// Sessions opened and dropped in a flood (keyed ones after their Welcome and a subscription,
/// anonymous ones before or in the middle of their Hello, from 20 addresses): a healthy
/// publisher and subscriber keep exchanging every message throughout, the gateway forgets
/// every dropped session and connection (its gauges return to the healthy pair), and its
/// memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_sessions_opened_and_dropped_leaves_nothing_behind() {
    const CHURN: usize = 2000;
    let (cp, gw, secret, _dir) = keyed_gateway("").await;
    let (_, healthy) = create_key(&cp, "healthy", &["healthy.>"], &["healthy.>"]);
    let mut sub = keyed_session_once_accepted(&gw.url(), &healthy).await;
    sub.send(vec![sub_frame(1, "healthy.ticks")]).await;
    assert!(matches!(sub.next_frame().await, Some(Kind::Ack(a)) if a.ack_id == 1));
    let publisher = keyed_session_once_accepted(&gw.url(), &healthy).await;
    let rss_before = gw.rss_kib();
    let connections_before = gw.metric("nexus_connections", &[]);

    let url = gw.url();
    let churn_secret = secret.clone();
    let churn = tokio::spawn(async move {
        let secret = churn_secret;
        let mut workers = Vec::new();
        for w in 0..20u8 {
            let (url, secret) = (url.clone(), secret.clone());
            workers.push(tokio::spawn(async move {
                let source = IpAddr::V4(Ipv4Addr::new(127, 0, 2, w + 1));
                for i in 0..CHURN / 20 {
                    match i % 4 {
                        // Keyed: Welcome, a subscription, then dropped without a word.
                        0 | 1 => {
                            if let Ok(s) = keyed_session(&url, &secret).await {
                                let _ =
                                    s.tx.send(v1::Batch::of(vec![sub_frame(
                                        1,
                                        &format!("churn.{w}.{i}"),
                                    )]))
                                    .await;
                            }
                        }
                        // Anonymous: a session opened and dropped before any frame.
                        2 => {
                            let channel = tonic::transport::Endpoint::from_shared(url.clone())
                                .unwrap()
                                .local_address(Some(source))
                                .connect()
                                .await
                                .unwrap();
                            let mut c = GatewayClient::new(channel);
                            let _ = tokio::time::timeout(
                                Duration::from_millis(50),
                                c.session(tokio_stream::pending::<v1::Batch>()),
                            )
                            .await;
                        }
                        // Half a Hello: the first bytes of a gRPC message, then the
                        // connection is dropped.
                        _ => {
                            let addr = url.trim_start_matches("http://");
                            if let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await {
                                use tokio::io::AsyncWriteExt;
                                let _ = tcp
                                    .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00")
                                    .await;
                            }
                        }
                    }
                }
            }));
        }
        for w in workers {
            w.await.unwrap();
        }
    });

    // The healthy pair publishes and receives throughout.
    let started = Instant::now();
    let mut sent = 0u64;
    let mut peak_rss = 0;
    while !churn.is_finished() {
        sent += 1;
        publisher
            .send(vec![frame(Kind::Pub(v1::Pub {
                subject: "healthy.ticks".into(),
                payload: Bytes::from(sent.to_string()),
                ..Default::default()
            }))])
            .await;
        match sub.next_result().await {
            Ok(Some(Kind::Msg(m))) => assert_eq!(m.payload, sent.to_string().as_bytes()),
            other => panic!("the healthy subscriber, message {sent}: {other:?}"),
        }
        peak_rss = peak_rss.max(gw.rss_kib());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    churn.await.unwrap();
    let took = started.elapsed();
    // Every dropped session and connection is forgotten: the gauges return to the pair.
    let settled = eventually(Duration::from_secs(15), || {
        gw.metric("nexus_connections", &[]) == connections_before
            && gw.metric("nexus_unauthenticated_sessions", &[]) == 0.0
    })
    .await;
    let opened = gw.metric("nexus_connections_opened_total", &[]);
    println!(
        "{CHURN} sessions opened and dropped in {took:?} ({opened} sessions opened in all); the healthy pair exchanged {sent} messages; \
         sessions {} (before {connections_before}), unauthenticated {}, transport connections {}; RSS {rss_before} KiB before, peak {peak_rss} KiB, after {} KiB",
        gw.metric("nexus_connections", &[]),
        gw.metric("nexus_unauthenticated_sessions", &[]),
        gw.metric("nexus_transport_connections", &[]),
        gw.rss_kib()
    );
    assert!(settled, "the gateway kept dropped sessions");
    assert!(
        eventually(Duration::from_secs(15), || gw
            .metric("nexus_transport_connections", &[])
            <= 4.0)
        .await,
        "{} transport connections left",
        gw.metric("nexus_transport_connections", &[])
    );
    assert!(
        peak_rss < rss_before + 150 * 1024,
        "RSS grew from {rss_before} KiB to {peak_rss} KiB"
    );
    assert!(sent > 0);
    // And the gateway still takes new sessions.
    keyed_session(&gw.url(), &secret).await.unwrap();
}

/// Raw TCP connections that send nothing are closed after the idle timeout, and one address
/// cannot hold more than its share of connections.
#[tokio::test]
async fn idle_and_excess_tcp_connections_are_closed() {
    let gw = Gateway::start_with_config(
        "[limits]\nhello_timeout_ms = 500\nidle_connection_timeout_ms = 2500\nmax_transport_connections_per_address = 100\n",
    );
    // The idle timeout is well above the time 150 connects take on a busy machine: were the
    // first connections closed idle before the last were accepted, fewer than 50 would be
    // over the budget (seen: 31, with 1 s, during a full parallel run).
    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 2, 1));
    let mut conns = Vec::new();
    for _ in 0..150 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(source, 0)).unwrap();
        conns.push(sock.connect(gw.grpc).await.unwrap());
    }
    // Those over the per-address budget are closed at once, the rest after the idle timeout.
    let started = Instant::now();
    let closed_at = futures::future::join_all(conns.into_iter().map(|mut c| async move {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue, // the server's HTTP/2 preface
                }
            }
        })
        .await;
        assert!(n.is_ok(), "an idle connection stayed open over 5 s");
        started.elapsed()
    }))
    .await;
    let early = closed_at
        .iter()
        .filter(|t| **t < Duration::from_millis(500))
        .count();
    assert!(early >= 50, "{early} closed at once: {closed_at:?}");
    assert_eq!(
        gw.metric(
            "nexus_admission_refusals_total",
            &["reason=\"transport_per_address\""]
        ),
        50.0
    );
    assert_eq!(
        gw.metric(
            "nexus_admission_refusals_total",
            &["reason=\"idle_connection\""]
        ),
        100.0
    );
    println!(
        "150 silent TCP connections: 50 refused at once, 100 closed idle after {:?}",
        closed_at.iter().max().unwrap()
    );
    // A session that stays open keeps its connection, past the idle timeout.
    let mut s = RawSession::connect(&gw.url()).await;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    s.send(vec![frame(Kind::Ping(v1::Ping { nonce: 7 }))]).await;
    assert!(matches!(s.next_frame().await, Some(Kind::Pong(_))));
}
