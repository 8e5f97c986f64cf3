//! TLS end to end (feature `tls`) against a real in-process gateway serving its own TLS
//! listener (`tls.cert`/`tls.key`, optionally `tls.client_ca`), with certificates issued by
//! `nexus-tls` (the code behind `nexus certs`): a client trusting the cluster CA publishes and
//! receives; one trusting another CA, one given an expired certificate, one expecting another
//! name and one without a required client certificate are refused; a renewed certificate is
//! picked up from its files while an established session keeps working.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nexus_client::Client;
use nexus_tls::issue::{CertificateAuthority, IssuedPem, Role, Validity};

struct Pki {
    dir: PathBuf,
    ca: CertificateAuthority,
}

impl Pki {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("nexus-client-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca = CertificateAuthority::generate("test cluster CA", Validity::days(1)).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
        Self { dir, ca }
    }

    fn gateway(&self, hosts: &[&str], validity: Validity) -> IssuedPem {
        self.ca
            .issue(
                &Role::Gateway {
                    region: "local".into(),
                    id: "gw-1".into(),
                    hosts: hosts.iter().map(|h| h.to_string()).collect(),
                },
                validity,
            )
            .unwrap()
    }

    fn write(&self, name: &str, pem: &IssuedPem) -> (PathBuf, PathBuf) {
        let (cert, key) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&key, &pem.key_pem).unwrap();
        std::fs::write(&cert, &pem.cert_pem).unwrap();
        (cert, key)
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn gateway(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> nexus_gateway::RunningGateway {
    let mut toml = format!(
        "listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\nauth = \"off\"\nshutdown_grace_ms = 200\n[tls]\ncert = {:?}\nkey = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    if let Some(ca) = client_ca {
        toml.push_str(&format!("client_ca = {:?}\n", ca.display().to_string()));
    }
    let config: nexus_gateway::GatewayConfig = toml::from_str(&toml).unwrap();
    nexus_gateway::start(config).await.unwrap()
}

fn builder(addr: std::net::SocketAddr) -> nexus_client::ClientBuilder {
    Client::builder(&format!("https://{addr}")).connect_timeout(Duration::from_secs(5))
}

async fn pubsub(client: &Client, subject: &str) {
    let mut sub = client.subscribe(subject).await.unwrap();
    client.publish_acked(subject, "over TLS").await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next_message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"over TLS");
}

#[tokio::test]
async fn the_gateways_own_tls_listener_good_ca_wrong_ca_expired_and_name_mismatch() {
    let pki = Pki::new("cases");
    let (cert, key) = pki.write(
        "gw",
        &pki.gateway(&["127.0.0.1", "gateway.test"], Validity::days(1)),
    );
    let gw = gateway(&cert, &key, None).await;

    let client = builder(gw.grpc_addr)
        .tls_ca_file(pki.ca_file())
        .unwrap()
        .connect()
        .await
        .expect("a TLS session with the cluster CA");
    pubsub(&client, "tls.good").await;
    // The name in the certificate, not only the address.
    let by_name = builder(gw.grpc_addr)
        .tls_ca_file(pki.ca_file())
        .unwrap()
        .tls_domain("gateway.test")
        .connect()
        .await
        .expect("the certificate carries gateway.test");
    by_name.close().await;

    let other = CertificateAuthority::generate("another CA", Validity::days(1)).unwrap();
    let err = builder(gw.grpc_addr)
        .tls_ca_pem(other.cert_pem())
        .connect()
        .await
        .expect_err("a certificate from a CA the client does not trust");
    assert!(matches!(err, nexus_client::Error::Connect(_)), "{err}");

    let err = builder(gw.grpc_addr)
        .tls_ca_file(pki.ca_file())
        .unwrap()
        .tls_domain("elsewhere.test")
        .connect()
        .await
        .expect_err("a certificate for another name");
    assert!(matches!(err, nexus_client::Error::Connect(_)), "{err}");
    client.close().await;
    gw.shutdown().await.unwrap();

    let now = time::OffsetDateTime::now_utc();
    let expired = Validity {
        not_before: now - Duration::from_secs(3 * 86_400),
        not_after: now - Duration::from_secs(86_400),
    };
    let (cert, key) = pki.write("expired", &pki.gateway(&["127.0.0.1"], expired));
    let gw = gateway(&cert, &key, None).await;
    let err = builder(gw.grpc_addr)
        .tls_ca_file(pki.ca_file())
        .unwrap()
        .connect()
        .await
        .expect_err("an expired certificate");
    assert!(matches!(err, nexus_client::Error::Connect(_)), "{err}");
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_required_client_certificate() {
    let pki = Pki::new("mtls");
    let (cert, key) = pki.write("gw", &pki.gateway(&["127.0.0.1"], Validity::days(1)));
    let gw = gateway(&cert, &key, Some(&pki.ca_file())).await;
    let err = builder(gw.grpc_addr)
        .tls_ca_file(pki.ca_file())
        .unwrap()
        .connect()
        .await
        .expect_err("no client certificate");
    // TLS 1.3 reports the refusal after the handshake, on the first read: the error names it.
    assert!(
        format!("{err:?}").contains("CertificateRequired"),
        "{err:?}"
    );

    let service = pki
        .ca
        .issue(
            &Role::Admin {
                name: "billing".into(),
            },
            Validity::days(1),
        )
        .unwrap();
    let (c, k) = pki.write("billing", &service);
    let client = builder(gw.grpc_addr)
        .tls_ca_file(pki.ca_file())
        .unwrap()
        .tls_client_cert_files(&c, &k)
        .unwrap()
        .connect()
        .await
        .expect("a client certificate from the CA");
    pubsub(&client, "tls.mtls").await;
    client.close().await;
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_renewed_certificate_is_served_and_live_sessions_survive() {
    let pki = Pki::new("reload");
    let (cert, key) = pki.write(
        "gw",
        &pki.gateway(&["127.0.0.1", "before.test"], Validity::days(1)),
    );
    let gw = gateway(&cert, &key, None).await;
    let live = builder(gw.grpc_addr)
        .tls_ca_file(pki.ca_file())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut sub = live.subscribe("tls.live").await.unwrap();

    // Renew: a certificate for another name replaces the files (key first, as
    // `nexus certs` writes them).
    pki.write(
        "gw",
        &pki.gateway(&["127.0.0.1", "after.test"], Validity::days(1)),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let renewed = builder(gw.grpc_addr)
            .tls_ca_file(pki.ca_file())
            .unwrap()
            .tls_domain("after.test")
            .connect()
            .await;
        match renewed {
            Ok(c) => {
                c.publish_acked("tls.live", "after renewal").await.unwrap();
                c.close().await;
                break;
            }
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "never renewed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // The session from before the renewal still receives and publishes.
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next_message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"after renewal");
    live.publish_acked("tls.live", "still here").await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next_message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"still here");
    live.close().await;
    gw.shutdown().await.unwrap();
}

#[test]
fn a_missing_ca_file_names_it() {
    let err = Client::builder("https://127.0.0.1:1")
        .tls_ca_file("/nonexistent/ca.pem")
        .expect_err("no such file");
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}

/// A gateway config that registers with `cp` over TLS, showing the gateway certificate.
fn registering_gateway(
    pki: &Pki,
    id: &str,
    cp: std::net::SocketAddr,
    cert: &Path,
    key: &Path,
) -> nexus_gateway::GatewayConfig {
    let state = pki.dir.join(format!("state-{id}"));
    toml::from_str(&format!(
        "gateway_id = {id:?}\nregion = \"local\"\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\nauth = \"off\"\nshutdown_grace_ms = 200\ncontrol_plane = \"https://{cp}\"\nstate_dir = {:?}\n[tls]\ncert = {:?}\nkey = {:?}\n[control_plane_tls]\nca = {:?}\n",
        state.display().to_string(),
        cert.display().to_string(),
        key.display().to_string(),
        pki.ca_file().display().to_string(),
    ))
    .unwrap()
}

#[tokio::test]
async fn a_gateway_registers_with_a_tls_control_plane_only_under_its_own_id() {
    let pki = Pki::new("cp");
    let cp_pem = pki
        .ca
        .issue(
            &Role::ControlPlane {
                hosts: vec!["127.0.0.1".into()],
            },
            Validity::days(1),
        )
        .unwrap();
    let (cp_cert, cp_key) = pki.write("cp", &cp_pem);
    let mut cfg = nexus_control_plane::server::ControlPlaneConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        nexus_control_plane::server::StoreConfig::Embedded(pki.dir.join("cp.redb")),
    );
    cfg.admin_auth = false;
    cfg.tls = Some(nexus_tls::ServerTlsFiles {
        cert: cp_cert,
        key: cp_key,
        client_ca: Some(pki.ca_file()),
        require_client_cert: false,
    });
    let cp = nexus_control_plane::server::start(cfg).await.unwrap();
    // The certificate names gateway gw-1 of region local.
    let (cert, key) = pki.write("gw", &pki.gateway(&["127.0.0.1"], Validity::days(1)));
    let gw = nexus_gateway::start(registering_gateway(&pki, "gw-1", cp.grpc_addr, &cert, &key))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cp.view.gateways().iter().any(|g| g.id == "gw-1") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gw-1 never registered over TLS"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The same certificate under another id is refused (and keeps being refused).
    let other = nexus_gateway::start(registering_gateway(&pki, "gw-2", cp.grpc_addr, &cert, &key))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ids: Vec<String> = cp.view.gateways().iter().map(|g| g.id.clone()).collect();
    assert_eq!(
        ids,
        ["gw-1"],
        "only the gateway the certificate names registers"
    );
    other.shutdown().await.unwrap();
    gw.shutdown().await.unwrap();
    cp.shutdown().await.unwrap();
}

/// A TLS session that stays open longer than `limits.idle_connection_timeout_ms` is not
/// closed as idle. The gateway found a request's connection state only under plaintext's
/// connect info, not under TLS's (`TlsConnectInfo`), so over TLS an open session did not
/// count as activity and its connection was cut at the idle timeout (found while binding keys
/// to client certificates). A raw gRPC session, because the adapter would hide a cut by
/// reconnecting.
#[tokio::test]
async fn a_tls_session_outlives_the_idle_connection_timeout() {
    use nexus_proto::v1::{Batch, Frame, Ping, frame::Kind};
    let pki = Pki::new("idle");
    let (cert, key) = pki.write("gw", &pki.gateway(&["127.0.0.1"], Validity::days(1)));
    let toml = format!(
        "listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\nauth = \"off\"\nshutdown_grace_ms = 200\n[limits]\nhello_timeout_ms = 300\nidle_connection_timeout_ms = 300\n[tls]\ncert = {:?}\nkey = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    let config: nexus_gateway::GatewayConfig = toml::from_str(&toml).unwrap();
    let gw = nexus_gateway::start(config).await.unwrap();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            std::fs::read(pki.ca_file()).unwrap(),
        ))
        .domain_name("127.0.0.1");
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", gw.grpc_addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = nexus_proto::v1::gateway_client::GatewayClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let frame = |k| Batch::of(vec![Frame { kind: Some(k) }]);
    tx.send(frame(Kind::Hello(nexus_proto::v1::Hello {
        client_name: "idle".into(),
        protocol: 1,
        ..Default::default()
    })))
    .await
    .unwrap();
    let mut inbound = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(inbound.message().await.unwrap().is_some(), "Welcome");
    // Three idle timeouts with the session open and quiet.
    tokio::time::sleep(Duration::from_millis(900)).await;
    tx.send(frame(Kind::Ping(Ping { nonce: 7 }))).await.unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(5), inbound.message())
        .await
        .expect("an answer to the ping")
        .expect("the session is still open (not cut as idle)")
        .expect("a batch");
    assert!(
        matches!(pong.frames[0].kind, Some(Kind::Pong(_))),
        "{pong:?}"
    );
    drop(tx);
    gw.shutdown().await.unwrap();
}
