//! Compression on the wire, end to end with real gateways (docs/protocol.md §9.2,
//! docs/federation.md §8.1): a compressing Rust adapter, sessions that accept the codec and
//! one that does not, limits on what a compressed payload may declare, requests and replies,
//! and batch compression on a federation link between two regions.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Gateway, RawSession, federation_certs, frame, tempdir};
use nexus_client::{Client, Codec, OutgoingMessage};
use nexus_proto::encoding::{self, CodecSet};
use nexus_proto::v1::{self, ErrorCode, frame::Kind};

/// About `n` bytes of JSON that compresses several times over, unlike random bytes.
fn json(n: usize) -> Bytes {
    let mut s = String::from("[");
    let mut i = 0u64;
    while s.len() < n {
        s.push_str(&format!(
            r#"{{"id":{i},"site":"fra-{}","reading":{}.{},"ok":{}}},"#,
            i % 5,
            (i * 37) % 1000,
            i % 10,
            !i.is_multiple_of(3)
        ));
        i += 1;
    }
    s.truncate(n);
    Bytes::from(s)
}

fn hello_with(encodings: &[&str]) -> v1::Frame {
    frame(Kind::Hello(v1::Hello {
        client_name: "raw-compression".into(),
        language: "test".into(),
        protocol: 1,
        encodings: encodings.iter().map(|e| e.to_string()).collect(),
        ..Default::default()
    }))
}

async fn raw_session(url: &str, encodings: &[&str], sid: u64, subject: &str) -> RawSession {
    let mut s = RawSession::open(url, vec![hello_with(encodings)])
        .await
        .expect("open");
    match s.next_frame().await {
        Some(Kind::Welcome(w)) => assert_eq!(w.encodings, ["zstd", "lz4"]),
        other => panic!("expected Welcome, got {other:?}"),
    }
    s.send(vec![frame(Kind::Sub(v1::Sub {
        sid,
        subject: subject.into(),
        ack_id: sid,
        ..Default::default()
    }))])
    .await;
    assert!(matches!(s.next_frame().await, Some(Kind::Ack(_))));
    s
}

async fn next_msg(s: &mut RawSession) -> v1::Msg {
    loop {
        match s.next_frame().await {
            Some(Kind::Msg(m)) => return m,
            Some(_) => continue,
            None => panic!("session ended before a Msg"),
        }
    }
}

fn encoding_of(headers: &[v1::Header]) -> Option<String> {
    headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(encoding::HEADER))
        .map(|h| h.value.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_payloads_reach_every_kind_of_session_plain_or_as_accepted() {
    let gw = Gateway::start();
    let url = gw.url();
    let payload = json(8192);

    let publisher = Client::builder(&url).connect().await.unwrap();
    let subscriber = Client::builder(&url).connect().await.unwrap();
    let mut sub = subscriber.subscribe("c.json").await.unwrap();
    let mut legacy = raw_session(&url, &[], 1, "c.json").await;
    let mut lz4_only = raw_session(&url, &["lz4"], 2, "c.json").await;
    let mut modern = raw_session(&url, &["zstd", "lz4"], 3, "c.json").await;

    publisher
        .publish_message_acked(OutgoingMessage::new("c.json", payload.clone()))
        .await
        .unwrap();

    // The Rust adapter decodes: the application sees the plain payload and no marker.
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next_message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.payload, payload);
    assert!(!m.headers.contains_key(encoding::HEADER));

    // A session that accepts zstd gets the publisher's bytes as they were.
    let m = next_msg(&mut modern).await;
    assert_eq!(encoding_of(&m.headers).as_deref(), Some("zstd"));
    assert!(
        m.payload.len() * 3 < payload.len(),
        "compressed to {} bytes",
        m.payload.len()
    );
    assert_eq!(
        encoding::decompress(Codec::Zstd, &m.payload, 1 << 20).unwrap(),
        payload
    );
    // Sessions that do not: decoded by the gateway, marker removed.
    for s in [&mut legacy, &mut lz4_only] {
        let m = next_msg(s).await;
        assert_eq!(encoding_of(&m.headers), None);
        assert_eq!(m.payload, payload);
    }
    assert!(
        gw.metric(
            "nexus_payload_encoded_messages_total",
            &[r#"direction="in""#]
        ) >= 1.0
    );
    assert!(
        gw.metric(
            "nexus_payload_encoded_bytes_total",
            &[r#"direction="in""#, r#"form="plain""#]
        ) >= payload.len() as f64
    );
    assert_eq!(
        gw.metric("nexus_payload_decoded_total", &[r#"reason="receiver""#]),
        2.0
    );
    // The Rust subscriber and the raw zstd session got it still encoded.
    assert_eq!(
        gw.metric(
            "nexus_payload_encoded_messages_total",
            &[r#"direction="out""#]
        ),
        2.0
    );

    // lz4 from the adapter, and a payload below the threshold stays plain.
    let lz4 = Client::builder(&url)
        .compression(Some(Codec::Lz4))
        .connect()
        .await
        .unwrap();
    lz4.publish("c.json", payload.clone()).await.unwrap();
    lz4.publish("c.json", "small").await.unwrap();
    let m = next_msg(&mut modern).await;
    assert_eq!(encoding_of(&m.headers).as_deref(), Some("lz4"));
    let m = next_msg(&mut modern).await;
    assert_eq!(encoding_of(&m.headers), None);
    assert_eq!(&m.payload[..], b"small");
    for _ in 0..2 {
        let m = tokio::time::timeout(Duration::from_secs(5), sub.next_message())
            .await
            .unwrap()
            .unwrap();
        assert!(m.payload == payload || &m.payload[..] == b"small");
    }

    // Requests and replies both ways compressed; both ends see plain payloads.
    let responder = Client::builder(&url).connect().await.unwrap();
    let answer = json(4000);
    let mut service = responder.subscribe("c.svc").await.unwrap();
    let a = answer.clone();
    let served = tokio::spawn(async move {
        let req = service.next_message().await.unwrap();
        responder.reply(&req, a).await.unwrap();
        (req.payload, responder)
    });
    let reply = publisher.request("c.svc", payload.clone()).await.unwrap();
    assert_eq!(reply.payload, answer);
    assert!(!reply.headers.contains_key(encoding::HEADER));
    assert_eq!(served.await.unwrap().0, payload);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_payload_that_lies_or_names_an_unknown_codec_is_refused() {
    let gw = Gateway::start();
    let mut s = raw_session(&gw.url(), &["zstd", "lz4"], 1, "bomb.>").await;
    let publish = |ack_id: u64, codec: &str, payload: Vec<u8>| {
        frame(Kind::Pub(v1::Pub {
            subject: "bomb.x".into(),
            headers: vec![v1::Header {
                key: encoding::HEADER.into(),
                value: codec.into(),
            }],
            payload: Bytes::from(payload),
            ack_id,
            ..Default::default()
        }))
    };
    // 16 MiB of zeros compress to a few hundred bytes, far below max_payload (1 MiB).
    let bomb = encoding::compress(Codec::Zstd, &vec![0u8; 16 << 20], 3);
    assert!(bomb.len() < 4096);
    let mut lz4_bomb = encoding::compress(Codec::Lz4, &vec![0u8; 16 << 20], 3);
    s.send(vec![
        publish(10, "zstd", bomb),
        publish(11, "lz4", lz4_bomb.clone()),
        publish(12, "brotli", b"whatever".to_vec()),
        publish(13, "zstd", b"not a zstd frame".to_vec()),
    ])
    .await;
    // An lz4 payload whose prefix lies (claims 100 bytes) passes the header check but
    // cannot be decoded for a session that needs it plain: a legacy subscriber does not get it.
    lz4_bomb[..4].copy_from_slice(&100u32.to_le_bytes());
    let mut legacy = raw_session(&gw.url(), &[], 2, "bomb.>").await;
    s.send(vec![publish(14, "lz4", lz4_bomb)]).await;
    let mut answers = Vec::new();
    let mut msgs = Vec::new();
    while answers.len() < 5 || msgs.is_empty() {
        match s.next_frame().await {
            Some(Kind::Nack(n)) => answers.push((n.ack_id, n.error.unwrap())),
            Some(Kind::Ack(a)) => answers.push((
                a.ack_id,
                v1::Error {
                    code: 0,
                    ..Default::default()
                },
            )),
            Some(Kind::Msg(m)) => msgs.push(m),
            Some(_) => {}
            None => panic!("session ended"),
        }
    }
    answers.sort_by_key(|a| a.0);
    let expect = [
        (
            10,
            ErrorCode::Limit,
            "exceeds limits.max_payload (1048576 bytes)",
        ),
        (11, ErrorCode::Limit, "limits.max_payload"),
        (12, ErrorCode::Invalid, "\"brotli\""),
        (13, ErrorCode::Invalid, "not a zstd frame"),
    ];
    for ((ack, e), (want_ack, code, text)) in answers.iter().zip(expect) {
        assert_eq!(*ack, want_ack);
        assert_eq!(e.code, code as i32, "{}", e.message);
        assert!(e.message.contains(text), "{}", e.message);
    }
    assert_eq!(answers[4].0, 14, "accepted: the header is plausible");
    // The accepting session gets it as sent; the legacy one does not get it at all.
    assert_eq!(msgs.len(), 1, "only the plausible one was routed");
    assert_eq!(encoding_of(&msgs[0].headers).as_deref(), Some("lz4"));
    s.send(vec![frame(Kind::Pub(v1::Pub {
        subject: "bomb.after".into(),
        payload: Bytes::from_static(b"plain"),
        ..Default::default()
    }))])
    .await;
    let m = next_msg(&mut legacy).await;
    assert_eq!(&m.subject[..], "bomb.after", "the corrupt one was skipped");
    assert!(gw.metric("nexus_payload_decode_errors_total", &[]) >= 5.0);
    // Nothing crashed: the gateway still serves.
    assert!(gw.metric("nexus_connections", &[]) >= 2.0);
}

fn region(certs: &tempdir::Dir, region: &str, peer: Option<(&str, &Gateway)>) -> Gateway {
    let d = certs.0.display().to_string();
    let mut args: Vec<String> = [
        "--region",
        region,
        "--federation-listen",
        "127.0.0.1:0",
        "--federation-cert",
        &format!("{d}/{region}.pem"),
        "--federation-key",
        &format!("{d}/{region}-key.pem"),
        "--federation-ca",
        &format!("{d}/ca.pem"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some((name, gw)) = peer {
        args.push("--peer".into());
        args.push(format!("{name}={}", gw.federation.unwrap()));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Gateway::start_with_args(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_links_compress_batches_and_carry_compressed_payloads_unchanged() {
    let certs = federation_certs(&["eu-west", "us-east"]);
    let east = region(&certs, "us-east", None);
    let west = region(&certs, "eu-west", Some(("us-east", &east)));
    // A publisher that does not compress: only the link can.
    let plain_pub = Client::builder(&west.url())
        .compression(None)
        .connect()
        .await
        .unwrap();
    let zstd_pub = Client::builder(&west.url()).connect().await.unwrap();
    let subscriber = Client::builder(&east.url()).connect().await.unwrap();
    let mut sub = subscriber.subscribe("fed.json").await.unwrap();
    let mut legacy = raw_session(&east.url(), &[], 1, "fed.json").await;
    let payload = json(6000);
    // Interest takes a moment to cross.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        plain_pub
            .publish("fed.json", payload.clone())
            .await
            .unwrap();
        if let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(200), sub.next_message()).await
        {
            assert_eq!(m.payload, payload);
            break;
        }
        assert!(Instant::now() < deadline, "nothing crossed the link");
    }
    for _ in 0..50 {
        plain_pub
            .publish("fed.json", payload.clone())
            .await
            .unwrap();
        zstd_pub.publish("fed.json", payload.clone()).await.unwrap();
    }
    let mut got = 0;
    while got < 100 {
        let m = tokio::time::timeout(Duration::from_secs(5), sub.next_message())
            .await
            .expect("all 100 arrive")
            .unwrap();
        assert_eq!(m.payload, payload);
        assert!(!m.headers.contains_key(encoding::HEADER));
        got += 1;
    }
    // The legacy session in the other region gets every one plain.
    let mut plain = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while plain < 100 && Instant::now() < deadline {
        let m = next_msg(&mut legacy).await;
        assert_eq!(encoding_of(&m.headers), None);
        assert_eq!(m.payload, payload);
        plain += 1;
    }
    let sent = |form: &str| {
        west.metric(
            "nexus_link_bytes_total",
            &[
                r#"link="federation""#,
                r#"direction="sent""#,
                &format!(r#"form="{form}""#),
            ],
        )
    };
    let (raw, wire) = (sent("raw"), sent("wire"));
    assert!(raw > 100.0 * 3000.0, "raw {raw}");
    assert!(
        wire * 2.0 < raw,
        "batch compression: {wire} on the wire for {raw} of frames"
    );
    assert!(
        west.metric(
            "nexus_link_compressed_batches_total",
            &[r#"direction="sent""#]
        ) >= 1.0
    );
    let received = east.metric(
        "nexus_link_bytes_total",
        &[r#"direction="received""#, r#"form="wire""#],
    );
    assert!(received > 0.0);
    // The zstd publisher's payloads crossed compressed (counted on arrival at us-east as
    // delivered to the accepting Rust session still encoded).
    assert!(
        east.metric(
            "nexus_payload_encoded_messages_total",
            &[r#"direction="out""#, r#"codec="zstd""#]
        ) >= 50.0
    );
    let _ = CodecSet::ALL;
}
