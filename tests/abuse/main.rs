//! Abuse of a real gateway process: input a well-written adapter never sends (frames that
//! do not decode, look-alike subjects), anonymous connection floods, subscribers that never
//! read. Each test checks that the gateway refuses with a clear error, stays up, and that
//! healthy clients are unaffected. `docs/security.md` describes the mechanisms.

#[path = "../common/mod.rs"]
mod common;
mod floods;
mod input;
mod keys;
mod slow_readers;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use common::{ControlPlane, Gateway, RawSession, eventually, frame, hello, nexusctl, tempdir};
use nexus_proto::v1::{self, ErrorCode, frame::Kind, gateway_client::GatewayClient};
use prost::Message as _;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// A control plane, a gateway that requires keys (with `limits` as extra TOML) and one key
/// allowed everything; returns them with the key's secret once the gateway accepts it.
async fn keyed_gateway(limits: &str) -> (ControlPlane, Gateway, String, tempdir::Dir) {
    let data = tempdir::Dir::new("abuse-cp");
    let cp = ControlPlane::embedded(&data.0);
    let conf = data.0.join("gateway.toml");
    std::fs::write(&conf, format!("[limits]\n{limits}")).unwrap();
    let gw = Gateway::start_with_args(&[
        "--control-plane",
        &cp.url(),
        "--auth",
        "required",
        "--config",
        conf.to_str().unwrap(),
    ]);
    let out = nexusctl(
        &cp,
        &[
            "keys",
            "create",
            "abuse-test",
            "--publish",
            ">",
            "--subscribe",
            ">",
            "-o",
            "json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let secret = v["secret"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    while keyed_session(&gw.url(), &secret).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the key never reached the gateway"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (cp, gw, secret, data)
}

/// [`keyed_session`], retried for up to 10 s while the gateway does not know the key yet (a
/// key just created reaches it with the next config push).
async fn keyed_session_once_accepted(url: &str, secret: &str) -> RawSession {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match keyed_session(url, secret).await {
            Ok(s) => return s,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("key never accepted: {e}"),
        }
    }
}

/// Opens a session from 127.0.0.1 with `secret` and waits for its Welcome.
async fn keyed_session(url: &str, secret: &str) -> Result<RawSession, String> {
    let hello = frame(Kind::Hello(v1::Hello {
        api_key: secret.into(),
        client_name: "keyed".into(),
        language: "test".into(),
        protocol: 1,
        ..Default::default()
    }));
    let mut s = RawSession::open(url, vec![hello])
        .await
        .map_err(|e| e.to_string())?;
    // Generous: on a loaded two-core machine the flood itself can take the CPU for seconds;
    // what must not happen is a refusal.
    match tokio::time::timeout(Duration::from_secs(20), s.rx.message()).await {
        Ok(Ok(Some(b)))
            if matches!(
                b.frames.first().and_then(|f| f.kind.as_ref()),
                Some(Kind::Welcome(_))
            ) =>
        {
            Ok(s)
        }
        other => Err(format!("{other:?}")),
    }
}

/// Creates a key with the given scopes; returns (id, secret).
fn create_key(
    cp: &ControlPlane,
    name: &str,
    publish: &[&str],
    subscribe: &[&str],
) -> (String, String) {
    let mut args = vec!["keys", "create", name, "-o", "json"];
    for p in publish {
        args.extend(["--publish", p]);
    }
    for s in subscribe {
        args.extend(["--subscribe", s]);
    }
    let v: serde_json::Value = serde_json::from_str(&nexusctl(cp, &args)).unwrap();
    (
        v["id"].as_str().unwrap().to_owned(),
        v["secret"].as_str().unwrap().to_owned(),
    )
}

fn sub_frame(sid: u64, subject: &str) -> v1::Frame {
    frame(Kind::Sub(v1::Sub {
        sid,
        subject: subject.into(),
        queue_group: String::new(),
        ack_id: sid,
    }))
}
