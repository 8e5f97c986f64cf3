//! The native transport (docs/protocol.md §1.1) against a real gateway process: adapters on
//! `nexus+tcp://` and on gRPC share one port and one subject space, and every kind of bad
//! input on a native connection (a wrong preface, a record over the limit, bytes that are not
//! a batch, a close record from the adapter, a peer that vanishes inside a record) ends that
//! connection with a close record naming the problem, while the gateway and its other
//! sessions carry on.

mod common;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::{Gateway, eventually, frame, hello};
use nexus_client::Client;
use nexus_proto::native::{self, PREFACE, Record, RecordReader};
use nexus_proto::v1::{self, frame::Kind};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn native_url(gw: &Gateway) -> String {
    format!("nexus+tcp://{}", gw.grpc)
}

/// Connects a raw native connection and sends `bytes` (after the preface when `preface`).
async fn raw(gw: &Gateway, preface: bool, bytes: &[u8]) -> (RecordReader<TcpStream>, TcpStream) {
    let mut tcp = TcpStream::connect(gw.grpc).await.expect("connect");
    if preface {
        tcp.write_all(PREFACE).await.unwrap();
    }
    tcp.write_all(bytes).await.unwrap();
    let read = TcpStream::from_std(clone_std(&tcp)).unwrap();
    (RecordReader::new(read, BytesMut::new(), 64 << 20), tcp)
}

fn clone_std(tcp: &TcpStream) -> std::net::TcpStream {
    use std::os::fd::AsFd;
    let std = std::net::TcpStream::from(tcp.as_fd().try_clone_to_owned().unwrap());
    std.set_nonblocking(true).unwrap();
    std
}

fn batch(frames: Vec<v1::Frame>) -> Bytes {
    let batch = v1::Batch::of(frames);
    let body = prost::Message::encode_to_vec(&batch);
    let mut out = BytesMut::new();
    out.put_slice(&native::batch_header(body.len()));
    out.put_slice(&body);
    out.freeze()
}

/// Reads records until the close record; returns its code and message.
async fn close_of(reader: &mut RecordReader<TcpStream>) -> (i32, String) {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), reader.next_record())
            .await
            .expect("an answer within 5 s");
        match next {
            Ok(Some(Record::Close { code, message })) => return (code, message),
            Ok(Some(Record::Batch(_))) => continue,
            other => panic!("expected a close record, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_and_grpc_adapters_share_a_port_and_subjects() {
    let gw = Gateway::start();
    let native = Client::connect(&native_url(&gw))
        .await
        .expect("native client");
    let grpc = Client::connect(&gw.url()).await.expect("gRPC client");
    let mut from_native = grpc.subscribe("mix.n").await.unwrap();
    let mut from_grpc = native.subscribe("mix.g").await.unwrap();
    grpc.flush().await.unwrap();
    native.flush().await.unwrap();
    native.publish("mix.n", "over native").await.unwrap();
    grpc.publish("mix.g", "over gRPC").await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), from_native.next_message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"over native");
    let m = tokio::time::timeout(Duration::from_secs(5), from_grpc.next_message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"over gRPC");

    // Request/reply both ways, and a payload larger than a read buffer.
    let _svc = native
        .serve("svc.echo", None, |m| async move { Ok(m.payload.clone()) })
        .await
        .unwrap();
    native.flush().await.unwrap();
    let big = Bytes::from(vec![b'x'; 300_000]);
    let reply = grpc
        .request("svc.echo", big.clone())
        .await
        .expect("a reply over native");
    assert_eq!(reply.payload, big);
    assert_eq!(gw.metric("nexus_native_sessions_opened_total", &[]), 1.0);
    assert_eq!(gw.metric("nexus_connections_opened_total", &[]), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_native_input_gets_a_close_record_naming_it() {
    let gw = Gateway::start_with_config("[limits]\nmax_payload = 1024\n");

    // Another version of the preface.
    let (mut r, _c) = raw(&gw, false, b"NEXUS/2\n").await;
    let (code, message) = close_of(&mut r).await;
    assert_eq!(code, tonic::Code::InvalidArgument as i32);
    assert!(
        message.contains("NEXUS/2") && message.contains("version 1"),
        "{message}"
    );

    // A record longer than the gateway accepts (announced, never sent).
    let (mut r, _c) = raw(&gw, true, &native::batch_header(100 << 20)).await;
    let (code, message) = close_of(&mut r).await;
    assert_eq!(code, tonic::Code::ResourceExhausted as i32);
    assert!(
        message.contains("104857600 bytes is larger than the gateway accepts"),
        "{message}"
    );

    // A record that is not a Batch.
    let mut junk = BytesMut::new();
    junk.put_slice(&native::batch_header(6));
    junk.put_slice(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]);
    let (mut r, _c) = raw(&gw, true, &junk).await;
    let (code, message) = close_of(&mut r).await;
    assert_eq!(code, tonic::Code::InvalidArgument as i32);
    assert!(message.contains("not a valid nexus.v1.Batch"), "{message}");

    // A record whose third frame does not decode: the frames before it are applied (the
    // gateway decodes a record frame by frame, docs/protocol.md §1.1), so the publish
    // reaches its subscriber, then the session ends naming the problem.
    let watcher = Client::connect(&native_url(&gw)).await.unwrap();
    let mut partial = watcher.subscribe("partial").await.unwrap();
    watcher.flush().await.unwrap();
    let mut body = prost::Message::encode_to_vec(&v1::Batch::of(vec![
        hello(),
        frame(Kind::Pub(v1::Pub {
            subject: "partial".into(),
            payload: Bytes::from_static(b"before the bad frame"),
            ..Default::default()
        })),
    ]));
    body.extend([0x0a, 0x02, 0x2a, 0x05]); // a Frame whose `pub` runs past its end
    let mut bytes = BytesMut::new();
    bytes.put_slice(&native::batch_header(body.len()));
    bytes.put_slice(&body);
    let (mut r, _c) = raw(&gw, true, &bytes).await;
    let (code, message) = close_of(&mut r).await;
    assert_eq!(code, tonic::Code::InvalidArgument as i32);
    assert!(message.contains("not a valid nexus.v1.Batch"), "{message}");
    let m = tokio::time::timeout(Duration::from_secs(5), partial.next_message())
        .await
        .expect("the publish before the bad frame was routed")
        .unwrap();
    assert_eq!(&m.payload[..], b"before the bad frame");
    drop(partial);
    watcher.close().await;

    // A close record from the adapter, after a good Hello.
    let mut bytes = BytesMut::from(&batch(vec![hello()])[..]);
    native::encode_close(0, "bye", &mut bytes);
    let (mut r, _c) = raw(&gw, true, &bytes).await;
    let (_, message) = close_of(&mut r).await;
    assert!(
        message.contains("adapters do not send close records"),
        "{message}"
    );

    // A payload over max_payload is refused frame by frame, as over gRPC: the session lives.
    let mut bytes = BytesMut::from(&batch(vec![hello()])[..]);
    bytes.put_slice(&batch(vec![frame(Kind::Pub(v1::Pub {
        subject: "big".into(),
        payload: Bytes::from(vec![0u8; 2048]),
        ack_id: 7,
        ..Default::default()
    }))]));
    let (mut r, mut c) = raw(&gw, true, &bytes).await;
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let Ok(Some(Record::Batch(b))) = r.next_record().await else {
            panic!("the session stays open")
        };
        let b: v1::Batch = prost::Message::decode(b).unwrap();
        kinds.extend(b.frames.into_iter().filter_map(|f| f.kind));
    }
    assert!(matches!(kinds[0], Kind::Welcome(_)), "{kinds:?}");
    match &kinds[1] {
        Kind::Nack(n) => assert!(n.error.as_ref().unwrap().message.contains("1024"), "{n:?}"),
        other => panic!("expected a Nack for the oversized payload, got {other:?}"),
    }

    // The adapter vanishes inside a record: its session ends, nothing else does.
    c.write_all(&native::batch_header(100)).await.unwrap();
    c.write_all(&[0u8; 10]).await.unwrap();
    drop(c);
    drop(r);
    assert!(
        eventually(Duration::from_secs(5), || gw
            .metric("nexus_connections", &[])
            == 0.0)
        .await,
        "every session ended"
    );

    // The gateway is fine.
    let client = Client::connect(&native_url(&gw))
        .await
        .expect("still serving");
    let mut sub = client.subscribe("after").await.unwrap();
    client.flush().await.unwrap();
    client.publish("after", "ok").await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next_message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"ok");
}

/// Publishes arrive whole when the gateway reads them in place from their record
/// (`BatchFrames::next_view`): headers, reply subject, a given id and one the gateway makes, a
/// traceparent the gateway adds, a large payload (queued as a frame of its own, owned slices
/// of the record), and a publish of another shape (an unknown field: decoded by prost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_read_in_place_arrive_whole() {
    let gw = Gateway::start();
    let mut sub = common::RawSession::connect(&gw.url()).await;
    sub.send(vec![frame(Kind::Sub(v1::Sub {
        sid: 1,
        subject: "inplace.>".into(),
        ..Default::default()
    }))])
    .await;
    assert!(
        eventually(Duration::from_secs(5), || gw
            .metric("nexus_subscriptions", &[])
            == 1.0)
        .await,
        "subscribed"
    );

    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let id = Bytes::from_static(b"0123456789abcdef");
    let big = Bytes::from(vec![b'b'; 20_000]);
    let publish = |subject: &str, headers: Vec<v1::Header>, payload: Bytes, id: Bytes| {
        frame(Kind::Pub(v1::Pub {
            subject: subject.into(),
            reply_to: "inplace.answers".into(),
            headers,
            payload,
            id,
            ..Default::default()
        }))
    };
    let header = |key: &str, value: &str| v1::Header {
        key: key.into(),
        value: value.into(),
    };
    let mut body = prost::Message::encode_to_vec(&v1::Batch::of(vec![
        hello(),
        publish(
            "inplace.a",
            vec![header("traceparent", traceparent), header("x-order", "42")],
            Bytes::from_static(b"first"),
            id.clone(),
        ),
        publish(
            "inplace.b",
            vec![],
            Bytes::from_static(b"second"),
            Bytes::new(),
        ),
        publish("inplace.c", vec![], big.clone(), id.clone()),
    ]));
    // A publish with a field this gateway does not know (field 15, varint 1).
    let mut odd = prost::Message::encode_to_vec(&v1::Pub {
        subject: "inplace.d".into(),
        payload: Bytes::from_static(b"fourth"),
        ..Default::default()
    });
    odd.extend([0x78, 0x01]);
    let mut odd_frame = vec![0x2a, odd.len() as u8];
    odd_frame.extend(&odd);
    body.extend([0x0a, odd_frame.len() as u8]);
    body.extend(&odd_frame);
    let mut bytes = BytesMut::new();
    bytes.put_slice(&native::batch_header(body.len()));
    bytes.put_slice(&body);
    let (_r, _c) = raw(&gw, true, &bytes).await;

    let mut got = Vec::new();
    while got.len() < 4 {
        match sub.next_frame().await {
            Some(Kind::Msg(m)) => got.push(m),
            Some(_) => {}
            None => panic!("only {} of 4 messages arrived", got.len()),
        }
    }
    let header_of = |m: &v1::Msg, key: &str| {
        m.headers
            .iter()
            .find(|h| h.key == key)
            .map(|h| h.value.to_string())
    };
    let (a, b, c, d) = (&got[0], &got[1], &got[2], &got[3]);
    assert_eq!((&*a.subject, &a.payload[..]), ("inplace.a", &b"first"[..]));
    assert_eq!(&*a.reply_to, "inplace.answers");
    assert_eq!(a.id, id);
    assert_eq!(header_of(a, "traceparent").as_deref(), Some(traceparent));
    assert_eq!(header_of(a, "x-order").as_deref(), Some("42"));
    assert_eq!((&*b.subject, &b.payload[..]), ("inplace.b", &b"second"[..]));
    assert_eq!(b.id.len(), 16, "the gateway gave it an id");
    assert!(
        header_of(b, "traceparent").is_some_and(|t| t.len() == 55),
        "the gateway gave it a traceparent: {:?}",
        b.headers
    );
    assert_eq!((&*c.subject, &c.payload), ("inplace.c", &big));
    assert_eq!(c.id, id);
    assert_eq!((&*d.subject, &d.payload[..]), ("inplace.d", &b"fourth"[..]));
}
