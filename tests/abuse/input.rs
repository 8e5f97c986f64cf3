//! Input a well-written adapter never sends: frames that do not decode, look-alike
//! subjects, client names that try to forge log lines.

use super::*;

/// A codec that sends and receives gRPC messages as raw bytes, to put on the wire what no
/// generated client can encode (a string that is not UTF-8).
#[derive(Clone, Copy, Default)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Opens a session whose batches are the given raw byte strings; returns the status the
/// gateway ended it with (or OK if it ended cleanly).
async fn raw_session(url: &str, batches: Vec<Bytes>) -> tonic::Status {
    let channel = tonic::transport::Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let (tx, rx) = mpsc::channel(16);
    for b in batches {
        tx.send(b).await.unwrap();
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/nexus.v1.Gateway/Session");
    let mut stream = match grpc
        .streaming(tonic::Request::new(ReceiverStream::new(rx)), path, RawCodec)
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => return status,
    };
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
            Err(_) => panic!("session neither ended nor answered within 5 s"),
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => return tonic::Status::ok(""),
            Ok(Err(status)) => return status,
        }
    }
}

#[tokio::test]
async fn a_frame_that_is_not_utf8_ends_the_session_with_invalid_argument() {
    let gw = Gateway::start();
    let hello = Bytes::from(v1::Batch::of(vec![hello()]).encode_to_vec());
    // Batch.frames[0].pub.subject = 0xff 0xfe (Frame.pub is field 5).
    let bad = Bytes::from_static(&[0x0a, 0x06, 0x2a, 0x04, 0x0a, 0x02, 0xff, 0xfe]);
    let status = raw_session(&gw.url(), vec![hello, bad]).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("malformed message") && status.message().contains("UTF-8"),
        "{}",
        status.message()
    );
    // The gateway is unaffected.
    RawSession::connect(&gw.url()).await;
}

#[tokio::test]
async fn invisible_and_bidi_characters_in_subjects_are_refused() {
    let gw = Gateway::start();
    let mut s = RawSession::connect(&gw.url()).await;
    s.send(vec![
        frame(Kind::Sub(v1::Sub {
            sid: 1,
            subject: "orders.\u{200b}created".into(),
            queue_group: String::new(),
            ack_id: 1,
        })),
        frame(Kind::Pub(v1::Pub {
            subject: "orders.\u{202e}detaerc".into(),
            ack_id: 2,
            ..Default::default()
        })),
    ])
    .await;
    for (ack_id, code) in [(1, "U+200B"), (2, "U+202E")] {
        match s.next_frame().await {
            Some(Kind::Nack(n)) if n.ack_id == ack_id => {
                let e = n.error.unwrap();
                assert_eq!(e.code, ErrorCode::Invalid as i32);
                assert!(e.message.contains(code), "{}", e.message);
            }
            other => panic!("expected Nack {ack_id}, got {other:?}"),
        }
    }
}

/// A client name carrying a newline, an ANSI escape and a bidi override cannot forge or
/// rewrite a line of the gateway's log: it is written escaped. (The case: a session
/// refused at Hello wrote a forged line.)
#[tokio::test]
async fn client_supplied_names_cannot_forge_log_lines() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = tempdir::Dir::new("abuse-log");
    let log = dir.0.join("gateway.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["gateway", "--region", "test", "--listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "127.0.0.1:0", "--auth", "required"])
        .arg("--state-dir")
        .arg(dir.0.join("state"))
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("NEXUS_CONTROL_PLANE")
        .env_remove("NEXUS_AUTH")
        .env_remove("NEXUS_CONFIG")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let grpc = loop {
        line.clear();
        assert!(lines.read_line(&mut line).unwrap() > 0, "gateway exited");
        if let Some(rest) = line.trim().split(" listening on ").nth(1) {
            break rest.split(", metrics on ").next().unwrap().to_owned();
        }
    };
    let forged =
        "app\n2026-12-02T00:00:00.000000Z  INFO admin key created for mallory\x1b[2K\u{202e}";
    let hello = frame(Kind::Hello(v1::Hello {
        api_key: "nxk_0000000000000000_wrong".into(),
        client_name: forged.into(),
        language: "x\ny".into(),
        protocol: 1,
        ..Default::default()
    }));
    let mut s = RawSession::open(&format!("http://{grpc}"), vec![hello])
        .await
        .unwrap();
    // Refused at Hello (no such key), which logs the client name.
    while s.next_result().await.is_ok_and(|k| k.is_some()) {}
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("session refused") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    let refused: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("session refused"))
        .collect();
    assert_eq!(refused.len(), 1, "{text}");
    assert!(
        refused[0].contains("app\\u{a}2026-12-02T00:00:00.000000Z  INFO admin key created for mallory\\u{1b}[2K\\u{202e}"),
        "{}",
        refused[0]
    );
    assert!(
        !text.lines().any(|l| l.starts_with("2026-12-02T00:00:00")),
        "{text}"
    );
    assert!(
        !text.contains('\x1b') && !text.contains('\u{202e}'),
        "{text}"
    );
}
