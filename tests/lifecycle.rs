//! Sessions coming and going at awkward moments, against a real gateway process: a responder
//! vanishing mid-request, a requester vanishing before the reply, a stream peer vanishing,
//! a sender overrunning its stream credit, and graceful shutdown with requests in flight.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Gateway, RawSession, eventually, frame, http_get};
use nexus_proto::v1::{self, ErrorCode, frame::Kind, gateway_client::GatewayClient};

async fn responder(url: &str, subject: &str) -> RawSession {
    let mut s = RawSession::connect(url).await;
    s.send(vec![frame(Kind::Sub(v1::Sub {
        sid: 1,
        subject: subject.into(),
        queue_group: "svc".into(),
        ack_id: 1,
    }))])
    .await;
    assert!(matches!(s.next_frame().await, Some(Kind::Ack(_))));
    s
}

fn req(req_id: u64, subject: &str, timeout_ms: u32) -> v1::Frame {
    frame(Kind::Req(v1::Req {
        req_id,
        subject: subject.into(),
        timeout_ms,
        payload: Bytes::from_static(b"ping"),
        ..Default::default()
    }))
}

#[tokio::test]
async fn responder_vanishing_mid_request_fails_the_request_at_once() {
    let gw = Gateway::start();
    let mut svc = responder(&gw.url(), "work").await;
    let mut caller = RawSession::connect(&gw.url()).await;
    caller.send(vec![req(5, "work", 30_000)]).await;
    assert!(matches!(svc.next_frame().await, Some(Kind::Msg(_))));
    let started = Instant::now();
    drop(svc);
    match caller.next_frame().await {
        Some(Kind::Reply(r)) => {
            assert_eq!(r.req_id, 5);
            let e = r.error.expect("an error reply");
            assert_eq!(e.code, ErrorCode::ServiceError as i32);
            assert!(e.message.contains("disconnected"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5), "not a timeout");
    assert!(gw.metric("nexus_requests_total", &["\"service_error\""]) >= 1.0);
}

#[tokio::test]
async fn requester_vanishing_mid_request_is_harmless() {
    let gw = Gateway::start();
    let mut svc = responder(&gw.url(), "work").await;
    let caller = RawSession::connect(&gw.url()).await;
    caller.send(vec![req(1, "work", 30_000)]).await;
    let Some(Kind::Msg(m)) = svc.next_frame().await else {
        panic!("no request")
    };
    drop(caller);
    assert!(
        eventually(Duration::from_secs(5), || gw
            .metric("nexus_requests_total", &["\"cancelled\""])
            >= 1.0)
        .await
    );
    svc.send(vec![frame(Kind::Reply(v1::Reply {
        reply_to: m.reply_to,
        payload: Bytes::from_static(b"too late"),
        ..Default::default()
    }))])
    .await;
    assert!(
        eventually(Duration::from_secs(5), || gw
            .metric("nexus_late_replies_total", &[])
            >= 1.0)
        .await
    );
    // The responder is still served normally.
    let mut caller = RawSession::connect(&gw.url()).await;
    caller.send(vec![req(2, "work", 5_000)]).await;
    let Some(Kind::Msg(m)) = svc.next_frame().await else {
        panic!("no request")
    };
    svc.send(vec![frame(Kind::Reply(v1::Reply {
        reply_to: m.reply_to,
        payload: Bytes::from_static(b"pong"),
        ..Default::default()
    }))])
    .await;
    match caller.next_frame().await {
        Some(Kind::Reply(r)) => assert_eq!(&r.payload[..], b"pong"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn requests_time_out_and_no_responders_is_explicit() {
    let gw = Gateway::start();
    let mut caller = RawSession::connect(&gw.url()).await;
    caller.send(vec![req(1, "nobody", 1_000)]).await;
    match caller.next_frame().await {
        Some(Kind::Reply(r)) => {
            let e = r.error.unwrap();
            assert_eq!((r.req_id, e.code), (1, ErrorCode::NoResponders as i32));
            assert!(e.message.contains("nobody"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    let _svc = responder(&gw.url(), "slow").await; // never answers
    let started = Instant::now();
    caller.send(vec![req(2, "slow", 300)]).await;
    match caller.next_frame().await {
        Some(Kind::Reply(r)) => {
            assert_eq!(r.req_id, 2);
            assert_eq!(r.error.unwrap().code, ErrorCode::Timeout as i32);
        }
        other => panic!("{other:?}"),
    }
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(290), "{waited:?}");
    assert!(gw.metric("nexus_requests_total", &["\"timeout\""]) >= 1.0);
}

fn open_stream(id: u64, subject: &str, credits: u32) -> v1::Frame {
    frame(Kind::StreamOpen(v1::StreamOpen {
        stream_id: id,
        subject: subject.into(),
        credits,
        ..Default::default()
    }))
}

fn data(id: u64, payload: &'static [u8]) -> v1::Frame {
    frame(Kind::StreamData(v1::StreamData {
        stream_id: id,
        payload: Bytes::from_static(payload),
        headers: Vec::new(),
    }))
}

#[tokio::test]
async fn stream_credit_is_relayed_and_enforced() {
    let gw = Gateway::start();
    let mut acceptor = responder(&gw.url(), "chat").await;
    let mut opener = RawSession::connect(&gw.url()).await;
    opener.send(vec![open_stream(10, "chat", 2)]).await;
    let gw_id = match acceptor.next_frame().await {
        Some(Kind::StreamOpen(o)) => {
            assert!(o.stream_id >= 1 << 63);
            assert_eq!((o.credits, o.sid), (2, 1));
            o.stream_id
        }
        other => panic!("{other:?}"),
    };
    // The acceptor may send two frames (the opener's window); the third is an overrun.
    acceptor
        .send(vec![
            frame(Kind::Credit(v1::Credit {
                stream_id: gw_id,
                credits: 1,
            })),
            data(gw_id, b"a"),
            data(gw_id, b"b"),
        ])
        .await;
    let mut got = Vec::new();
    let mut credit = 0;
    while got.len() < 2 || credit == 0 {
        match opener.next_frame().await {
            Some(Kind::StreamData(d)) => {
                assert_eq!(d.stream_id, 10);
                got.push(d.payload);
            }
            Some(Kind::Credit(c)) => {
                assert_eq!(c.stream_id, 10);
                credit += c.credits;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        got,
        vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]
    );
    assert_eq!(credit, 1);
    // The opener has one credit: one frame passes, the second aborts the stream.
    opener.send(vec![data(10, b"x"), data(10, b"y")]).await;
    assert!(
        matches!(acceptor.next_frame().await, Some(Kind::StreamData(d)) if &d.payload[..] == b"x")
    );
    match acceptor.next_frame().await {
        Some(Kind::StreamClose(c)) => {
            assert_eq!(c.stream_id, gw_id);
            assert_eq!(c.error.unwrap().code, ErrorCode::Limit as i32);
        }
        other => panic!("{other:?}"),
    }
    match opener.next_frame().await {
        Some(Kind::Error(e)) => {
            assert_eq!(e.code, ErrorCode::Limit as i32);
            assert!(e.message.contains("without credit"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn stream_half_close_and_peer_vanishing() {
    let gw = Gateway::start();
    let mut acceptor = responder(&gw.url(), "chat").await;
    let mut opener = RawSession::connect(&gw.url()).await;

    // No responders for an unknown subject.
    opener.send(vec![open_stream(1, "nobody", 4)]).await;
    match opener.next_frame().await {
        Some(Kind::StreamClose(c)) => {
            assert_eq!(c.stream_id, 1);
            assert_eq!(c.error.unwrap().code, ErrorCode::NoResponders as i32);
        }
        other => panic!("{other:?}"),
    }

    opener.send(vec![open_stream(2, "chat", 4)]).await;
    let Some(Kind::StreamOpen(o)) = acceptor.next_frame().await else {
        panic!("no open")
    };
    // Opener half-closes; the acceptor can still send.
    opener
        .send(vec![frame(Kind::StreamClose(v1::StreamClose {
            stream_id: 2,
            error: None,
        }))])
        .await;
    assert!(matches!(acceptor.next_frame().await, Some(Kind::StreamClose(c)) if c.error.is_none()));
    acceptor.send(vec![data(o.stream_id, b"last words")]).await;
    assert!(
        matches!(opener.next_frame().await, Some(Kind::StreamData(d)) if &d.payload[..] == b"last words")
    );

    // Now the acceptor vanishes mid-stream.
    drop(acceptor);
    match opener.next_frame().await {
        Some(Kind::StreamClose(c)) => {
            assert_eq!(c.stream_id, 2);
            let e = c.error.unwrap();
            assert_eq!(e.code, ErrorCode::ServiceError as i32);
            assert!(e.message.contains("disconnected"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
}

/// SIGTERM drains (protocol.md §3.4): sessions get GoAway and keep being served (a request in
/// flight is answered, a new one from an open session is routed), new sessions and unary calls
/// are refused, and the sessions still open when the grace ends are closed with UNAVAILABLE.
#[tokio::test]
async fn graceful_shutdown_drains_in_flight_requests() {
    let mut gw = Gateway::start_with_args(&["--shutdown-grace-ms", "1500"]);
    let mut svc = responder(&gw.url(), "work").await;
    let mut caller = RawSession::connect(&gw.url()).await;
    caller.send(vec![req(1, "work", 10_000)]).await;
    let Some(Kind::Msg(m)) = svc.next_frame().await else {
        panic!("no request")
    };
    let mut child = gw.terminate();
    for s in [&mut caller, &mut svc] {
        match s.next_frame().await {
            Some(Kind::GoAway(g)) => assert_eq!(g.drain_ms, 1500),
            other => panic!("expected GoAway, got {other:?}"),
        }
    }
    // Draining: not ready, new sessions and unary calls refused.
    assert!(
        eventually(Duration::from_secs(5), || matches!(
            http_get(gw.metrics, "/readyz"),
            Ok((503, _))
        ))
        .await
    );
    let mut client = GatewayClient::connect(gw.url()).await.unwrap();
    let status = client
        .publish(v1::PublishRequest {
            subject: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    // An open session is still served: a new request reaches the responder.
    caller.send(vec![req(2, "work", 10_000)]).await;
    let Some(Kind::Msg(m2)) = svc.next_frame().await else {
        panic!("the request sent while draining was not routed")
    };
    for (m, body) in [(m, "done"), (m2, "done too")] {
        svc.send(vec![frame(Kind::Reply(v1::Reply {
            reply_to: m.reply_to,
            payload: Bytes::from(body),
            ..Default::default()
        }))])
        .await;
    }
    for (id, body) in [(1, "done"), (2, "done too")] {
        match caller.next_frame().await {
            Some(Kind::Reply(r)) => {
                assert_eq!(r.req_id, id);
                assert_eq!(&r.payload[..], body.as_bytes());
            }
            other => panic!("{other:?}"),
        }
    }
    // Then every session is closed with UNAVAILABLE and the process exits cleanly.
    let status = loop {
        match caller.next_result().await {
            Ok(Some(_)) => continue,
            Ok(None) => break None,
            Err(s) => break Some(s),
        }
    };
    if let Some(s) = status {
        assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
    }
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}
