//! API keys bound to TLS client certificates, with the real binaries and certificates from
//! `nexus certs`: a `nexus control-plane` over TLS, a `nexus gateway` registered with it under
//! its certificate and serving adapters over mutual TLS, and keys made and bound with
//! `nexusctl keys create/bind --cert-*`. A bound key works from a connection presenting a
//! matching certificate (by DNS name or by fingerprint), is refused with a message naming the
//! binding from any other, on sessions and on unary calls, and open sessions whose
//! certificate a new binding excludes are closed within 2 s. A gateway without a client CA
//! (so no client certificate) refuses a bound key, saying none was presented.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nexus_client::Client;

#[path = "common/procs.rs"]
mod procs;
use procs::{TempDir, start};

struct Ctl {
    url: String,
    ca: String,
    key_file: String,
}

impl Ctl {
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_nexusctl"))
            .args([
                "--control-plane",
                &self.url,
                "--ca",
                &self.ca,
                "--admin-key-file",
                &self.key_file,
            ])
            .args(args)
            .env_remove("NEXUS_ADMIN_KEY")
            .env_remove("NEXUS_CONTROL_PLANE")
            .output()
            .expect("run nexusctl")
    }

    /// Runs a command that must succeed; returns its stdout parsed as JSON (`-o json`).
    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert!(out.status.success(), "nexusctl {args:?}: {out:?}");
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("nexusctl {args:?} printed no JSON ({e}): {out:?}"))
    }
}

struct Pki {
    dir: String,
}

impl Pki {
    fn p(&self, f: &str) -> String {
        Path::new(&self.dir).join(f).display().to_string()
    }

    fn client(&self, name: &str) -> (String, String) {
        (
            self.p(&format!("clients/{name}.pem")),
            self.p(&format!("clients/{name}-key.pem")),
        )
    }
}

/// Connects over TLS to `addr` with `token`, presenting `cert` if given.
async fn connect(
    addr: &str,
    pki: &Pki,
    token: &str,
    cert: Option<(String, String)>,
) -> nexus_client::Result<Client> {
    let mut b = Client::builder(&format!("https://{addr}"))
        .connect_timeout(Duration::from_secs(5))
        .tls_ca_file(pki.p("ca.pem"))?
        .api_key(token);
    if let Some((c, k)) = cert {
        b = b.tls_client_cert_files(c, k)?;
    }
    b.connect().await
}

/// A unary `Publish` over TLS presenting `cert` (the generated gRPC client: the adapter's
/// unary calls are the same RPC).
async fn unary_publish(
    addr: &str,
    pki: &Pki,
    token: &str,
    cert: (String, String),
) -> Result<(), tonic::Status> {
    let mut gw =
        nexus_proto::v1::gateway_client::GatewayClient::new(tls_channel(addr, pki, cert).await);
    gw.publish(nexus_proto::v1::PublishRequest {
        api_key: token.into(),
        subject: "orders.created".into(),
        payload: bytes::Bytes::from_static(b"unary"),
        ..Default::default()
    })
    .await
    .map(|_| ())
}

/// A session opened with the generated gRPC client (no reconnection, unlike the adapter), so
/// the test sees how the gateway ends it: Hello with `token`, then a subscription; returns
/// the inbound stream after the Welcome, and the sender that keeps the session open.
async fn raw_session(
    addr: &str,
    pki: &Pki,
    token: &str,
    cert: (String, String),
) -> (
    tonic::Streaming<nexus_proto::v1::Batch>,
    tokio::sync::mpsc::Sender<nexus_proto::v1::Batch>,
) {
    use nexus_proto::v1::{Batch, Frame, Hello, Sub, frame::Kind};
    let mut gw =
        nexus_proto::v1::gateway_client::GatewayClient::new(tls_channel(addr, pki, cert).await);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let frames = vec![
        Frame {
            kind: Some(Kind::Hello(Hello {
                api_key: token.into(),
                client_name: "raw".into(),
                protocol: 1,
                ..Default::default()
            })),
        },
        Frame {
            kind: Some(Kind::Sub(Sub {
                sid: 1,
                subject: "orders.>".into(),
                ..Default::default()
            })),
        },
    ];
    tx.send(Batch::of(frames)).await.unwrap();
    let mut inbound = gw
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("session opened")
        .into_inner();
    let first = inbound
        .message()
        .await
        .expect("a Welcome")
        .expect("a batch");
    assert!(
        matches!(first.frames[0].kind, Some(Kind::Welcome(_))),
        "{first:?}"
    );
    (inbound, tx)
}

async fn tls_channel(addr: &str, pki: &Pki, cert: (String, String)) -> tonic::transport::Channel {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(
            std::fs::read(pki.p("ca.pem")).unwrap(),
        ))
        .identity(Identity::from_pem(
            std::fs::read(&cert.0).unwrap(),
            std::fs::read(&cert.1).unwrap(),
        ))
        .domain_name("127.0.0.1");
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("TLS channel")
}

/// Retries `connect` until the gateway knows the key (config push is asynchronous).
async fn connect_when_pushed(
    addr: &str,
    pki: &Pki,
    token: &str,
    cert: Option<(String, String)>,
) -> nexus_client::Result<Client> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match connect(addr, pki, token, cert.clone()).await {
            Err(e)
                if e.to_string().contains("unknown to this gateway")
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => return other,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_bound_to_client_certificates_with_real_processes() {
    let d = TempDir::new("keybind-main");
    let pki = Pki { dir: d.join("pki") };
    let certs = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["certs", "--out", &pki.dir, "--control-plane", "127.0.0.1"])
        .args(["--gateway", "us-east/gw-1@127.0.0.1"])
        .args(["--gateway", "us-east/gw-2@127.0.0.1"])
        .args(["--client", "alice", "--client", "bob"])
        .output()
        .unwrap();
    assert!(certs.status.success(), "{certs:?}");

    let data = d.join("cp");
    let (_cp, cp_addr) = start(
        &[
            "control-plane",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data,
            "--tls-cert",
            &pki.p("control-plane.pem"),
            "--tls-key",
            &pki.p("control-plane-key.pem"),
            "--tls-client-ca",
            &pki.p("ca.pem"),
        ],
        " listening on ",
    );
    let ctl = Ctl {
        url: format!("https://{cp_addr}"),
        ca: pki.p("ca.pem"),
        key_file: Path::new(&data).join("admin.key").display().to_string(),
    };
    let gw_args = |id: &str, client_ca: bool, state: &str| {
        let (cert, key) = (
            pki.p(&format!("gateways/us-east/{id}.pem")),
            pki.p(&format!("gateways/us-east/{id}-key.pem")),
        );
        let mut a: Vec<String> = [
            "gateway",
            "--region",
            "us-east",
            "--gateway-id",
            id,
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--auth",
            "required",
            "--control-plane",
            &ctl.url,
            "--control-plane-ca",
            &pki.p("ca.pem"),
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--state-dir",
            state,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if client_ca {
            a.extend(["--tls-client-ca".to_string(), pki.p("ca.pem")]);
        }
        a
    };
    let args = gw_args("gw-1", true, &d.join("gw-state"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_gw, gw_addr) = start(&args, " listening on ");

    // A key bound by name to alice's certificate, made with `nexusctl keys create`.
    let created = ctl.json(&[
        "keys",
        "create",
        "orders",
        "--publish",
        "orders.>",
        "--subscribe",
        "orders.>",
        "--cert-name",
        "alice.client.nexus",
    ]);
    let id = created["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no key id in {created}"))
        .to_owned();
    let token = created["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("no secret in {created}"))
        .to_owned();
    let listed = ctl.json(&["keys", "list"]);
    let mine = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap();
    assert_eq!(
        mine["cert_binding"]["names"],
        serde_json::json!(["alice.client.nexus"]),
        "{mine}"
    );

    // Alice's certificate: accepted (session and unary).
    let alice = connect_when_pushed(&gw_addr, &pki, &token, Some(pki.client("alice")))
        .await
        .expect("alice's certificate matches the binding");
    alice.publish_acked("orders.created", "hi").await.unwrap();
    unary_publish(&gw_addr, &pki, &token, pki.client("alice"))
        .await
        .expect("unary call with alice's certificate");

    // Bob's certificate (same CA, so the TLS handshake passes): the key is refused, naming
    // the binding and what was presented.
    let err = connect(&gw_addr, &pki, &token, Some(pki.client("bob")))
        .await
        .map(|_| ())
        .expect_err("bob's certificate must not present alice's key");
    let text = err.to_string();
    assert!(
        text.contains(&id)
            && text.contains("bound to TLS client certificates")
            && text.contains("name alice.client.nexus")
            && text.contains("bob.client.nexus"),
        "{text}"
    );
    let status = unary_publish(&gw_addr, &pki, &token, pki.client("bob"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("matches none of them"),
        "{status:?}"
    );

    // `nexusctl keys bind --cert-file bob.pem`: bob (by fingerprint) replaces alice; alice's
    // open session is closed within 2 s, with the reason.
    let (mut alice_raw, _keep) = raw_session(&gw_addr, &pki, &token, pki.client("alice")).await;
    let bound = ctl.json(&["keys", "bind", &id, "--cert-file", &pki.client("bob").0]);
    let fingerprint = bound["cert_binding"]["sha256"][0]
        .as_str()
        .unwrap_or_else(|| panic!("{bound}"))
        .to_owned();
    assert_eq!(fingerprint.len(), 64, "{bound}");
    let t0 = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(2), async {
        let mut told = None;
        loop {
            match alice_raw.message().await {
                Ok(Some(batch)) => {
                    for f in batch.frames {
                        if let Some(nexus_proto::v1::frame::Kind::Error(e)) = f.kind {
                            told = Some(e.message);
                        }
                    }
                }
                Ok(None) => return (told, None),
                Err(status) => return (told, Some(status)),
            }
        }
    })
    .await
    .expect("alice's session was not closed within 2 s of the new binding");
    eprintln!(
        "alice's session closed {:?} after the binding changed: {ended:?}",
        t0.elapsed()
    );
    let status = ended.1.expect("the session ends with a status");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("matches none of them"),
        "{status:?}"
    );
    drop(alice);
    let bob = connect_when_pushed(&gw_addr, &pki, &token, Some(pki.client("bob")))
        .await
        .expect("bob's certificate matches by fingerprint");
    bob.publish_acked("orders.created", "bob").await.unwrap();
    let err = connect(&gw_addr, &pki, &token, Some(pki.client("alice")))
        .await
        .map(|_| ())
        .expect_err("alice is no longer bound");
    assert!(err.to_string().contains(&fingerprint), "{err}");

    // The audit trail names the change.
    let audit = ctl.json(&["audit", "--action", "keys.set_cert_binding"]);
    let text = audit.to_string();
    assert!(text.contains(&fingerprint), "{text}");

    // Bad input is refused by name.
    let out = ctl.run(&["keys", "bind", &id, "--cert-sha256", "abc"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a SHA-256 fingerprint"), "{stderr}");
    let out = ctl.run(&["keys", "bind", &id]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--clear"),
        "{out:?}"
    );

    // A gateway without a client CA sees no client certificate: a bound key is refused,
    // saying so; `--clear` lifts the binding and the key works there too.
    let args = gw_args("gw-2", false, &d.join("gw2-state"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_gw2, gw2_addr) = start(&args, " listening on ");
    let err = connect_when_pushed(&gw2_addr, &pki, &token, None)
        .await
        .map(|_| ())
        .expect_err("no client certificate: refused");
    assert!(err.to_string().contains("presented none"), "{err}");
    let cleared = ctl.json(&["keys", "bind", &id, "--clear"]);
    assert!(cleared["cert_binding"].is_null(), "{cleared}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match connect(&gw2_addr, &pki, &token, None).await {
            Ok(c) => {
                c.publish_acked("orders.created", "free").await.unwrap();
                break;
            }
            Err(e) if Instant::now() < deadline => {
                assert!(e.to_string().contains("presented none"), "{e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the cleared binding never reached the gateway: {e}"),
        }
    }
}
