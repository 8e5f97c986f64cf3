//! Identity of config-push callers, end to end over real TLS on loopback: a control plane
//! serving TLS with the cluster CA as client CA (embedded store, DNS on), and `Sync` callers
//! that are real gRPC clients with or without gateway certificates. A gateway registers with
//! its own certificate; an impostor without one, one with another gateway's certificate and
//! one with a certificate from another CA are refused before they receive any snapshot (key
//! records included), and the real gateway's DNS SRV answer (queried with `dig`) never
//! changes. The plaintext policy is checked too.

use std::path::PathBuf;
use std::time::Duration;

use nexus_control_plane::server::{ControlPlaneConfig, RunningControlPlane, StoreConfig};
use nexus_proto::v1::config_push_client::ConfigPushClient;
use nexus_proto::v1::gateway_report::Kind;
use nexus_proto::v1::{ConfigSnapshot, GatewayInfo, GatewayReport};
use nexus_tls::issue::{CertificateAuthority, IssuedPem, Role, Validity};
use tokio::sync::mpsc;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

struct Pki {
    dir: PathBuf,
    ca: CertificateAuthority,
}

impl Pki {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("nexus-cp-identity-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca = CertificateAuthority::generate("cluster CA", Validity::days(1)).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
        Self { dir, ca }
    }

    fn issue(&self, role: Role) -> IssuedPem {
        self.ca.issue(&role, Validity::days(1)).unwrap()
    }

    fn gateway(&self, region: &str, id: &str) -> IssuedPem {
        self.issue(Role::Gateway {
            region: region.into(),
            id: id.into(),
            hosts: vec![],
        })
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn control_plane(pki: &Pki) -> RunningControlPlane {
    let server = pki.issue(Role::ControlPlane {
        hosts: vec!["127.0.0.1".into()],
    });
    let (cert, key) = (pki.dir.join("cp.pem"), pki.dir.join("cp-key.pem"));
    std::fs::write(&cert, &server.cert_pem).unwrap();
    std::fs::write(&key, &server.key_pem).unwrap();
    let mut cfg = ControlPlaneConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        StoreConfig::Embedded(pki.dir.join("cp.redb")),
    );
    cfg.dns_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.admin_auth = false;
    cfg.tls = Some(nexus_tls::ServerTlsFiles {
        cert,
        key,
        client_ca: Some(pki.dir.join("ca.pem")),
        require_client_cert: false,
    });
    nexus_control_plane::server::start(cfg).await.unwrap()
}

/// A `Sync` stream kept open while the returned sender lives.
struct SyncCall {
    _reports: mpsc::Sender<GatewayReport>,
    first: Result<ConfigSnapshot, tonic::Status>,
}

async fn sync(
    cp: &RunningControlPlane,
    ca_pem: &str,
    identity: Option<&IssuedPem>,
    id: &str,
    adapter: &str,
) -> Result<SyncCall, String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some(i) = identity {
        tls = tls.identity(Identity::from_pem(&i.cert_pem, &i.key_pem));
    }
    let channel = Endpoint::from_shared(format!("https://{}", cp.grpc_addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let (tx, rx) = mpsc::channel(4);
    tx.send(GatewayReport {
        kind: Some(Kind::Register(GatewayInfo {
            id: id.into(),
            region: "us-east".into(),
            adapter_addr: adapter.into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let first = match ConfigPushClient::new(channel)
        .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    {
        Ok(resp) => {
            let mut stream = resp.into_inner();
            match stream.message().await {
                Ok(Some(s)) => Ok(s),
                Ok(None) => Err(tonic::Status::unknown("stream ended")),
                Err(s) => Err(s),
            }
        }
        Err(s) => Err(s),
    };
    Ok(SyncCall {
        _reports: tx,
        first,
    })
}

/// The SRV targets' ports `dig` reads for us-east.
async fn srv_ports(cp: &RunningControlPlane) -> Vec<String> {
    let dns = cp.dns_addr.unwrap();
    let out = tokio::process::Command::new("dig")
        .args([
            &format!("@{}", dns.ip()),
            "-p",
            &dns.port().to_string(),
            "_nexus._tcp.us-east.nexus.local",
            "SRV",
            "+short",
        ])
        .output()
        .await
        .expect("dig (dnsutils) runs");
    let mut ports: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_owned))
        .collect();
    ports.sort();
    ports
}

async fn eventually_ports(cp: &RunningControlPlane, want: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ports = srv_ports(cp).await;
        if ports == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "SRV ports {ports:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn only_a_gateways_own_certificate_may_register_it() {
    let pki = Pki::new("register");
    let cp = control_plane(&pki).await;
    let ca = pki.ca.cert_pem().to_owned();

    let gw_a = pki.gateway("us-east", "gw-a");
    let real = sync(&cp, &ca, Some(&gw_a), "gw-a", "127.0.0.1:7001")
        .await
        .unwrap();
    real.first
        .as_ref()
        .expect("the real gateway gets its snapshot");
    eventually_ports(&cp, &["7001"]).await;

    // No certificate: refused before any snapshot (which would carry the key records).
    let anonymous = sync(&cp, &ca, None, "gw-a", "127.0.0.1:6666")
        .await
        .unwrap();
    let status = anonymous.first.expect_err("no certificate");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("client certificate"),
        "{status:?}"
    );

    // Another gateway's certificate: refused, naming the claimed identity.
    let gw_b = pki.gateway("us-east", "gw-b");
    let impostor = sync(&cp, &ca, Some(&gw_b), "gw-a", "127.0.0.1:6666")
        .await
        .unwrap();
    let status = impostor.first.expect_err("gw-b claiming gw-a");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("gw-a"), "{status:?}");

    // A certificate from another CA with the right name: the handshake fails.
    let other = CertificateAuthority::generate("rogue CA", Validity::days(1)).unwrap();
    let forged = other
        .issue(
            &Role::Gateway {
                region: "us-east".into(),
                id: "gw-a".into(),
                hosts: vec![],
            },
            Validity::days(1),
        )
        .unwrap();
    match sync(&cp, &ca, Some(&forged), "gw-a", "127.0.0.1:6666").await {
        Err(_) => {}
        Ok(call) => assert!(call.first.is_err(), "a rogue CA's certificate was accepted"),
    }

    // The impostors changed nothing: DNS still answers with the real gateway only, and it
    // is still registered after their streams ended.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(srv_ports(&cp).await, ["7001"]);
    let live = nexus_control_plane::push::live_gateways(&*cp.store)
        .await
        .unwrap();
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].adapter_addr, "127.0.0.1:7001");

    // gw-b under its own name is welcome.
    let b = sync(&cp, &ca, Some(&gw_b), "gw-b", "127.0.0.1:7002")
        .await
        .unwrap();
    b.first.as_ref().expect("gw-b registers as itself");
    eventually_ports(&cp, &["7001", "7002"]).await;
    drop(real);
    eventually_ports(&cp, &["7002"]).await;
    drop(b);
    cp.shutdown().await.unwrap();
}

#[tokio::test]
async fn plaintext_off_loopback_needs_insecure() {
    let dir = std::env::temp_dir().join(format!("nexus-cp-plain-{}", std::process::id()));
    let cfg = ControlPlaneConfig::new(
        "0.0.0.0:0".parse().unwrap(),
        StoreConfig::Embedded(dir.join("cp.redb")),
    );
    let err = match nexus_control_plane::server::start(cfg.clone()).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("plaintext on 0.0.0.0 must be refused"),
    };
    assert!(
        err.contains("--insecure") && err.contains("0.0.0.0"),
        "{err}"
    );
    let mut cfg = cfg;
    cfg.insecure = true;
    cfg.admin_auth = false;
    let cp = nexus_control_plane::server::start(cfg)
        .await
        .expect("with --insecure");
    cp.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn admin_calls_need_a_bearer_key_or_an_admin_certificate() {
    use nexus_proto::v1::ListKeysRequest;
    use nexus_proto::v1::admin_client::AdminClient;

    let pki = Pki::new("admin");
    let server = pki.issue(Role::ControlPlane {
        hosts: vec!["127.0.0.1".into()],
    });
    let (cert, key) = (pki.dir.join("cp.pem"), pki.dir.join("cp-key.pem"));
    std::fs::write(&cert, &server.cert_pem).unwrap();
    std::fs::write(&key, &server.key_pem).unwrap();
    let mut cfg = ControlPlaneConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        StoreConfig::Embedded(pki.dir.join("cp.redb")),
    );
    cfg.admin_key_file = Some(pki.dir.join("admin.key"));
    cfg.tls = Some(nexus_tls::ServerTlsFiles {
        cert,
        key,
        client_ca: Some(pki.dir.join("ca.pem")),
        require_client_cert: false,
    });
    let cp = nexus_control_plane::server::start(cfg).await.unwrap();
    let token = std::fs::read_to_string(pki.dir.join("admin.key")).unwrap();
    let token = token.trim();

    let client = |identity: Option<IssuedPem>| {
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pki.ca.cert_pem()));
        if let Some(i) = identity {
            tls = tls.identity(Identity::from_pem(&i.cert_pem, &i.key_pem));
        }
        let addr = cp.grpc_addr;
        async move {
            let channel = Endpoint::from_shared(format!("https://{addr}"))
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect()
                .await
                .unwrap();
            AdminClient::new(channel)
        }
    };
    let call = |header: Option<String>| {
        let mut r = tonic::Request::new(ListKeysRequest {});
        if let Some(h) = header {
            r.metadata_mut().insert("authorization", h.parse().unwrap());
        }
        r
    };

    let mut anonymous = client(None).await;
    anonymous
        .list_keys(call(Some(format!("Bearer {token}"))))
        .await
        .expect("the bootstrap admin key with Bearer");
    let status = anonymous
        .list_keys(call(Some(token.to_owned())))
        .await
        .expect_err("a key without the Bearer prefix");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(status.message().contains("Bearer"), "{status:?}");
    let status = anonymous.list_keys(call(None)).await.expect_err("nothing");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    // An admin certificate stands in for the key; a gateway's certificate does not.
    let mut admin = client(Some(pki.issue(Role::Admin {
        name: "alice".into(),
    })))
    .await;
    admin
        .list_keys(call(None))
        .await
        .expect("an admin certificate");
    let mut gateway = client(Some(pki.gateway("us-east", "gw-a"))).await;
    let status = gateway
        .list_keys(call(None))
        .await
        .expect_err("a gateway certificate is not an admin credential");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    cp.shutdown().await.unwrap();
}
