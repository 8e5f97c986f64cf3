//! The adapter protocol against a real gateway process, frame by frame: malformed input,
//! limits, the slow-consumer policies, unary calls and reflection. These tests speak raw
//! `nexus.v1` frames so they can misbehave in ways the Rust adapter never would.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Gateway, RawSession, eventually, frame, hello};
use nexus_proto::v1::{self, ErrorCode, frame::Kind, gateway_client::GatewayClient};

fn sub(sid: u64, subject: &str, ack_id: u64) -> v1::Frame {
    frame(Kind::Sub(v1::Sub {
        sid,
        subject: subject.into(),
        queue_group: String::new(),
        ack_id,
    }))
}

fn publish(subject: &str, payload: Bytes, ack_id: u64) -> v1::Frame {
    frame(Kind::Pub(v1::Pub {
        subject: subject.into(),
        payload,
        ack_id,
        ..Default::default()
    }))
}

async fn expect_nack(s: &mut RawSession, ack_id: u64) -> v1::Error {
    match s.next_frame().await {
        Some(Kind::Nack(n)) if n.ack_id == ack_id => n.error.expect("nack carries an error"),
        other => panic!("expected Nack {ack_id}, got {other:?}"),
    }
}

async fn expect_ack(s: &mut RawSession, ack_id: u64) -> v1::Ack {
    match s.next_frame().await {
        Some(Kind::Ack(a)) if a.ack_id == ack_id => a,
        other => panic!("expected Ack {ack_id}, got {other:?}"),
    }
}

#[tokio::test]
async fn first_frame_must_be_hello() {
    let gw = Gateway::start();
    let mut s = RawSession::open(&gw.url(), vec![sub(1, "a", 0)])
        .await
        .unwrap();
    let status = s.next_result().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("Hello"), "{}", status.message());
    // The gateway is unaffected.
    RawSession::connect(&gw.url()).await;
}

#[tokio::test]
async fn malformed_frames_get_errors_and_the_session_survives() {
    let gw = Gateway::start();
    let mut s = RawSession::connect(&gw.url()).await;

    s.send(vec![v1::Frame { kind: None }]).await;
    match s.next_frame().await {
        Some(Kind::Error(e)) => {
            assert_eq!(e.code, ErrorCode::Invalid as i32);
            assert!(e.message.contains("empty frame"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }

    s.send(vec![sub(1, "a..b", 7)]).await;
    let e = expect_nack(&mut s, 7).await;
    assert_eq!(e.code, ErrorCode::Invalid as i32);
    assert!(e.message.contains("empty token"), "{}", e.message);

    s.send(vec![sub(2, "a.>.b", 8)]).await;
    let e = expect_nack(&mut s, 8).await;
    assert!(e.message.contains("'>'"), "{}", e.message);

    s.send(vec![publish("orders.*", Bytes::from_static(b"x"), 9)])
        .await;
    let e = expect_nack(&mut s, 9).await;
    assert!(e.message.contains("wildcard"), "{}", e.message);

    s.send(vec![publish("$nexus.secret", Bytes::new(), 10)])
        .await;
    let e = expect_nack(&mut s, 10).await;
    assert!(
        e.message.contains("reserved") || e.message.contains("inbox"),
        "{}",
        e.message
    );

    s.send(vec![frame(Kind::Unsub(v1::Unsub { sid: 99 }))])
        .await;
    match s.next_frame().await {
        Some(Kind::Error(e)) => assert!(e.message.contains("sid 99"), "{}", e.message),
        other => panic!("{other:?}"),
    }

    s.send(vec![sub(3, "ok.subject", 11), sub(3, "other", 12)])
        .await;
    expect_ack(&mut s, 11).await;
    let e = expect_nack(&mut s, 12).await;
    assert!(e.message.contains("already in use"), "{}", e.message);

    s.send(vec![frame(Kind::Ping(v1::Ping { nonce: 42 }))])
        .await;
    assert!(matches!(s.next_frame().await, Some(Kind::Pong(p)) if p.nonce == 42));
    assert!(gw.metric("nexus_protocol_errors_total", &[]) >= 5.0);
}

#[tokio::test]
async fn oversized_payloads_are_refused_naming_the_limit() {
    let gw = Gateway::start_with_config("[limits]\nmax_payload = 1024\n");
    let mut s = RawSession::connect(&gw.url()).await;
    s.send(vec![sub(1, "big", 1)]).await;
    expect_ack(&mut s, 1).await;

    s.send(vec![publish("big", Bytes::from(vec![0u8; 1025]), 2)])
        .await;
    let e = expect_nack(&mut s, 2).await;
    assert_eq!(e.code, ErrorCode::Limit as i32);
    assert!(
        e.message.contains("limits.max_payload (1024 bytes)"),
        "{}",
        e.message
    );

    // The same session keeps working, and a payload at the limit goes through.
    s.send(vec![publish("big", Bytes::from(vec![1u8; 1024]), 3)])
        .await;
    let mut got_msg = false;
    let mut got_ack = false;
    while !(got_msg && got_ack) {
        match s.next_frame().await {
            Some(Kind::Msg(m)) => {
                assert_eq!(m.payload.len(), 1024);
                got_msg = true;
            }
            Some(Kind::Ack(a)) => {
                assert_eq!((a.ack_id, a.delivered), (3, 1));
                got_ack = true;
            }
            other => panic!("{other:?}"),
        }
    }

    // Unary calls get a gRPC status naming the limit.
    let mut client = GatewayClient::connect(gw.url()).await.unwrap();
    let status = client
        .publish(v1::PublishRequest {
            subject: "big".into(),
            payload: Bytes::from(vec![0u8; 4096]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(
        status.message().contains("limits.max_payload"),
        "{}",
        status.message()
    );

    // A gRPC message beyond the transport limit ends only that session.
    let mut huge = RawSession::connect(&gw.url()).await;
    huge.send(vec![publish("big", Bytes::from(vec![0u8; 6 << 20]), 4)])
        .await;
    let status = huge.next_result().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("limits.max_payload"),
        "{status:?}"
    );
    s.send(vec![frame(Kind::Ping(v1::Ping { nonce: 5 }))]).await;
    assert!(matches!(s.next_frame().await, Some(Kind::Pong(_))));
    assert!(gw.metric("nexus_limit_violations_total", &["\"max_payload\""]) >= 2.0);
}

#[tokio::test]
async fn subscription_and_connection_limits() {
    let gw = Gateway::start_with_config("[limits]\nmax_subscriptions = 2\nmax_connections = 2\n");
    let mut s = RawSession::connect(&gw.url()).await;
    s.send(vec![sub(1, "a", 1), sub(2, "b", 2), sub(3, "c", 3)])
        .await;
    expect_ack(&mut s, 1).await;
    expect_ack(&mut s, 2).await;
    let e = expect_nack(&mut s, 3).await;
    assert_eq!(e.code, ErrorCode::Limit as i32);
    assert!(
        e.message.contains("limits.max_subscriptions (2)"),
        "{}",
        e.message
    );

    let _second = RawSession::connect(&gw.url()).await;
    let third = RawSession::open(&gw.url(), vec![hello()]).await;
    let status = match third {
        Err(status) => status,
        Ok(mut s) => s.next_result().await.unwrap_err(),
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(
        status.message().contains("limits.max_connections (2)"),
        "{}",
        status.message()
    );

    // Closing a session frees its slot.
    drop(s);
    assert!(
        eventually(Duration::from_secs(5), || gw
            .metric("nexus_connections", &[])
            < 2.0)
        .await
    );
    RawSession::connect(&gw.url()).await;
}

/// Publishes `n` acked messages of `size` bytes and returns how many were acked. With
/// `window`, waits for the acks of each `window` messages before sending more.
async fn flood(url: &str, subject: &str, n: u64, size: usize, window: Option<u64>) -> u64 {
    let mut p = RawSession::connect(url).await;
    let payload = Bytes::from(vec![7u8; size]);
    let mut acked = 0;
    let mut sent = 0;
    while acked < n {
        let limit = window.map_or(n, |w| (acked + w).min(n));
        while sent < limit {
            let upto = (sent + 100).min(limit);
            p.send(
                (sent + 1..=upto)
                    .map(|i| publish(subject, payload.clone(), i))
                    .collect(),
            )
            .await;
            sent = upto;
        }
        match p.next_frame().await {
            Some(Kind::Ack(_)) => acked += 1,
            Some(_) => {}
            None => break,
        }
    }
    acked
}

#[tokio::test]
async fn slow_consumer_drop_policy_bounds_memory_and_counts_drops() {
    let gw = Gateway::start_with_config(
        "[limits]\nmax_payload = 4096\n[slow_consumer]\npolicy = \"drop\"\nmax_pending_bytes = 1048576\n",
    );
    // A subscriber that never reads its stream.
    let mut slow = RawSession::connect(&gw.url()).await;
    slow.send(vec![sub(1, "firehose", 1)]).await;
    expect_ack(&mut slow, 1).await;
    // A well-behaved subscriber on the same subject.
    const ROUNDS: u64 = 3;
    const PER_ROUND: u64 = 5000;
    let fast_url = gw.url();
    let fast = tokio::spawn(async move {
        let mut s = RawSession::connect(&fast_url).await;
        s.send(vec![sub(1, "firehose", 1)]).await;
        expect_ack(&mut s, 1).await;
        let mut n = 0u64;
        while n < ROUNDS * PER_ROUND {
            match s.next_frame().await {
                Some(Kind::Msg(_)) => n += 1,
                Some(Kind::Error(_)) => {}
                other => panic!("fast subscriber got {other:?} after {n}"),
            }
        }
        n
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Three floods of 5000 x 4 KiB = 20 MiB each towards a subscriber with a 1 MiB budget.
    // Resident memory says what the allocator keeps as well as what is live (mimalloc holds
    // freed pages for a while), so the test bounds it against the volume sent: held for
    // the stalled subscriber, 60 MiB would show as at least 60 MiB of growth; dropped, the
    // gateway's working set settles in the first flood and the next two add little to it.
    let rss_before = gw.rss_kib();
    let mut rss_after = Vec::new();
    for round in 0..ROUNDS {
        let acked = tokio::time::timeout(
            Duration::from_secs(30),
            flood(&gw.url(), "firehose", PER_ROUND, 4000, Some(50)),
        )
        .await
        .unwrap_or_else(|_| panic!("publisher was never acked in flood {round}"));
        assert_eq!(acked, PER_ROUND);
        rss_after.push(gw.rss_kib());
    }
    assert_eq!(
        fast.await.unwrap(),
        ROUNDS * PER_ROUND,
        "the fast subscriber lost nothing"
    );
    let dropped = gw.metric("nexus_slow_consumer_events_total", &["\"dropped\""]);
    assert!(dropped > 3000.0, "dropped {dropped}");
    let growth = rss_after[2].saturating_sub(rss_before);
    let later = rss_after[2].saturating_sub(rss_after[0]);
    eprintln!("gateway RSS {rss_before} KiB, after each flood {rss_after:?} KiB");
    assert!(
        growth < 24 * 1024,
        "gateway RSS grew by {growth} KiB while 60 MiB went to a stalled subscriber"
    );
    assert!(
        later < 12 * 1024,
        "gateway RSS grew by {later} KiB over the second and third floods (20 MiB each): \
         memory follows the volume sent to a stalled subscriber"
    );
    // The slow subscriber learns about it when it finally reads.
    let mut saw_notice = false;
    while let Some(k) = slow.next_frame().await {
        if let Kind::Error(e) = k {
            assert_eq!(e.code, ErrorCode::SlowConsumer as i32);
            assert!(e.message.contains("max_pending_bytes"), "{}", e.message);
            saw_notice = true;
            break;
        }
    }
    assert!(saw_notice);
}

#[tokio::test]
async fn slow_consumer_disconnect_policy_closes_only_the_slow_session() {
    let gw = Gateway::start_with_config(
        "[limits]\nmax_payload = 4096\n[slow_consumer]\npolicy = \"disconnect\"\nmax_pending_bytes = 65536\n",
    );
    let mut slow = RawSession::connect(&gw.url()).await;
    slow.send(vec![sub(1, "firehose", 1)]).await;
    expect_ack(&mut slow, 1).await;
    let acked = flood(&gw.url(), "firehose", 3000, 4000, None).await;
    assert_eq!(acked, 3000);
    assert!(
        eventually(Duration::from_secs(5), || gw
            .metric("nexus_slow_consumer_events_total", &["\"disconnected\""])
            >= 1.0)
        .await
    );
    // Reading now, the slow session finds its stream ended with a status naming the policy.
    let status = loop {
        match slow.next_result().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended without a status"),
            Err(s) => break s,
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(
        status.message().contains("slow consumer"),
        "{}",
        status.message()
    );
    assert!(
        eventually(Duration::from_secs(5), || gw
            .metric("nexus_subscriptions", &[])
            == 0.0)
        .await
    );
}

#[tokio::test]
async fn slow_consumer_backpressure_policy_slows_the_publisher_then_cuts_the_consumer() {
    let gw = Gateway::start_with_config(
        "[limits]\nmax_payload = 4096\n[slow_consumer]\npolicy = \"backpressure\"\nmax_pending_bytes = 65536\nmax_wait_ms = 300\n",
    );
    let mut slow = RawSession::connect(&gw.url()).await;
    slow.send(vec![sub(1, "firehose", 1)]).await;
    expect_ack(&mut slow, 1).await;
    let acked = tokio::time::timeout(
        Duration::from_secs(30),
        flood(&gw.url(), "firehose", 3000, 4000, None),
    )
    .await
    .expect("the publisher is released once the consumer is cut off");
    assert_eq!(acked, 3000);
    assert!(gw.metric("nexus_slow_consumer_events_total", &["\"waited\""]) >= 1.0);
    assert!(gw.metric("nexus_slow_consumer_events_total", &["\"disconnected\""]) >= 1.0);
    assert_eq!(
        gw.metric("nexus_slow_consumer_events_total", &["\"dropped\""]),
        0.0
    );
}

#[tokio::test]
async fn unary_publish_and_request() {
    let gw = Gateway::start();
    let mut client = GatewayClient::connect(gw.url()).await.unwrap();
    let status = client
        .request(v1::RequestRequest {
            subject: "nobody.home".into(),
            timeout_ms: 500,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.message().contains("no responders"),
        "{}",
        status.message()
    );

    // A raw responder answering with Reply to the inbox it was given.
    let mut responder = RawSession::connect(&gw.url()).await;
    responder.send(vec![sub(1, "echo", 1)]).await;
    expect_ack(&mut responder, 1).await;
    let serve = tokio::spawn(async move {
        match responder.next_frame().await {
            Some(Kind::Msg(m)) => {
                assert!(m.reply_to.starts_with("$nexus.inbox."));
                assert!(m.headers.iter().any(|h| h.key == "traceparent"));
                assert!(m.deadline_ms > 0 && m.deadline_ms <= 2000);
                responder
                    .send(vec![frame(Kind::Reply(v1::Reply {
                        reply_to: m.reply_to,
                        payload: m.payload,
                        ..Default::default()
                    }))])
                    .await;
            }
            other => panic!("{other:?}"),
        }
        responder
    });
    let reply = client
        .request(v1::RequestRequest {
            subject: "echo".into(),
            payload: Bytes::from_static(b"hi"),
            timeout_ms: 2000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&reply.payload[..], b"hi");
    let _responder = serve.await.unwrap();

    let published = client
        .publish(v1::PublishRequest {
            subject: "echo".into(),
            payload: Bytes::from_static(b"one"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(published.delivered, 1);
    assert_eq!(published.id.len(), 16);

    // Timeouts come back as DEADLINE_EXCEEDED.
    let status = client
        .request(v1::RequestRequest {
            subject: "echo".into(),
            timeout_ms: 200,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
}

/// What `grpc.reflection.v1` and `grpc.reflection.v1alpha` list at `url`, each sorted.
async fn reflected_services(url: &str) -> (Vec<String>, Vec<String>) {
    use tonic_reflection::pb::{v1, v1alpha};
    let channel = tonic::transport::Channel::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let resp = v1::server_reflection_client::ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("reflection v1")
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        resp.message_response
    else {
        panic!("unexpected v1 reflection response");
    };
    let mut v1_names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    v1_names.sort();
    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let resp = v1alpha::server_reflection_client::ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("reflection v1alpha")
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        resp.message_response
    else {
        panic!("unexpected v1alpha reflection response");
    };
    let mut alpha_names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    alpha_names.sort();
    (v1_names, alpha_names)
}

/// Reflection v1 and v1alpha both answer, and each process lists exactly what it serves: the
/// gateway not the control plane's Admin/ConfigPush, the control plane not Gateway.
#[tokio::test]
async fn reflection_lists_only_the_services_each_process_serves() {
    let reflection = [
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    let gw = Gateway::start();
    let (v1, v1alpha) = reflected_services(&gw.url()).await;
    let mut expected: Vec<String> = ["nexus.v1.Gateway"]
        .iter()
        .chain(reflection.iter())
        .map(|s| s.to_string())
        .collect();
    expected.sort();
    assert_eq!(v1, expected);
    assert_eq!(v1alpha, expected);

    let dir = common::tempdir::Dir::new("reflection-cp");
    let cp = common::ControlPlane::embedded(&dir.0);
    let (v1, v1alpha) = reflected_services(&format!("http://{}", cp.addr)).await;
    let mut expected: Vec<String> = ["nexus.v1.Admin", "nexus.v1.ConfigPush"]
        .iter()
        .chain(reflection.iter())
        .map(|s| s.to_string())
        .collect();
    expected.sort();
    assert_eq!(v1, expected);
    assert_eq!(v1alpha, expected);
}

/// The Python interpreter with `grpcio-reflection` (`NEXUS_REFLECTION_PYTHON`, default
/// `$NEXUS_CACHE/venv-reflection/bin/python`; scripts/test creates that venv from PyPI).
fn reflection_python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("NEXUS_REFLECTION_PYTHON") {
        return p.into();
    }
    let cache = std::env::var_os("NEXUS_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/nexus")
        });
    cache.join("venv-reflection/bin/python")
}

/// A user's own tool: Python's official reflection client (v1alpha only) lists and resolves
/// what the gateway and the control plane serve.
#[test]
fn python_grpcio_reflection_sees_each_process_services() {
    let python = reflection_python();
    assert!(
        python.is_file(),
        "no Python with grpcio-reflection at {} (python3 -m venv it and pip install grpcio grpcio-reflection, as scripts/test does)",
        python.display()
    );
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/reflection_list.py");
    let list = |addr: String| {
        let out = std::process::Command::new(&python)
            .arg(&script)
            .arg(&addr)
            .output()
            .expect("python");
        assert!(
            out.status.success(),
            "grpcio-reflection against {addr}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let gw = Gateway::start();
    let gateway = list(gw.url().trim_start_matches("http://").to_owned());
    assert_eq!(
        gateway,
        [
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "nexus.v1.Gateway"
        ]
    );
    let dir = common::tempdir::Dir::new("reflection-py-cp");
    let cp = common::ControlPlane::embedded(&dir.0);
    let control_plane = list(cp.addr.to_string());
    assert_eq!(
        control_plane,
        [
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "nexus.v1.Admin",
            "nexus.v1.ConfigPush"
        ]
    );
}
