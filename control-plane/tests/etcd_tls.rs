//! The control plane's store over TLS to a real etcd (Debian's `/usr/bin/etcd`, 3.4) started
//! on free loopback ports with certificates from `nexus-tls` (the code behind `nexus certs`):
//! with `--client-cert-auth` a client certificate is required and accepted; without one, or
//! trusting another CA, the connection is refused with the endpoint named; with etcd's own
//! users enabled, the right password works and a wrong one is refused. A whole control plane
//! starts on the TLS etcd too.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use nexus_control_plane::store::Store;
use nexus_control_plane::store::etcd::{EtcdAccess, EtcdStore};
use nexus_tls::issue::{CertificateAuthority, Role, Validity};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// A CA, etcd's server certificate and a client certificate, written to a fresh dir.
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("nexus-etcd-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca = CertificateAuthority::generate("etcd test CA", Validity::days(1)).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
        let server = ca
            .issue(
                &Role::Server {
                    hosts: vec!["127.0.0.1".into(), "localhost".into()],
                },
                Validity::days(1),
            )
            .unwrap();
        std::fs::write(dir.join("etcd.pem"), &server.cert_pem).unwrap();
        std::fs::write(dir.join("etcd-key.pem"), &server.key_pem).unwrap();
        // The control plane's client certificate (`Server` carries the client-auth usage).
        let client = ca
            .issue(
                &Role::Server {
                    hosts: vec!["nexus-control-plane".into()],
                },
                Validity::days(1),
            )
            .unwrap();
        std::fs::write(dir.join("client.pem"), &client.cert_pem).unwrap();
        std::fs::write(dir.join("client-key.pem"), &client.key_pem).unwrap();
        let other = CertificateAuthority::generate("another CA", Validity::days(1)).unwrap();
        std::fs::write(dir.join("other-ca.pem"), other.cert_pem()).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn access(&self, ca: &str, with_client_cert: bool) -> EtcdAccess {
        EtcdAccess {
            ca: Some(self.path(ca)),
            cert: with_client_cert.then(|| self.path("client.pem")),
            key: with_client_cert.then(|| self.path("client-key.pem")),
            user: None,
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A real etcd serving TLS; killed on drop.
struct Etcd {
    child: Child,
    endpoint: String,
}

impl Etcd {
    async fn start(pki: &Pki, client_cert_auth: bool, ready: &EtcdAccess) -> Self {
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("https://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let data = pki.path(&format!("data-{client}"));
        let mut cmd = Command::new("/usr/bin/etcd");
        cmd.arg("--name=tls")
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=tls={peer_url}"))
            .arg(format!("--cert-file={}", pki.path("etcd.pem").display()))
            .arg(format!("--key-file={}", pki.path("etcd-key.pem").display()))
            .arg("--log-level=error")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if client_cert_auth {
            // (etcd 3.4 requires client certificates whenever it has a trusted CA file.)
            cmd.arg("--client-cert-auth").arg(format!(
                "--trusted-ca-file={}",
                pki.path("ca.pem").display()
            ));
        }
        let child = cmd
            .spawn()
            .expect("/usr/bin/etcd (Debian package etcd-server)");
        let etcd = Self { child, endpoint };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match EtcdStore::connect_with(std::slice::from_ref(&etcd.endpoint), ready).await {
                Ok(_) => break,
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "etcd did not start: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        etcd
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn roundtrip(store: &EtcdStore) {
    store
        .put("/nexus/test/tls", Bytes::from_static(b"over TLS"))
        .await
        .unwrap();
    let kv = store
        .get("/nexus/test/tls")
        .await
        .unwrap()
        .expect("the value");
    assert_eq!(&kv.value[..], b"over TLS");
}

fn endpoints(etcd: &Etcd) -> Vec<String> {
    vec![etcd.endpoint.clone()]
}

#[tokio::test]
async fn client_certificates_are_required_and_checked() {
    let pki = Pki::new("mtls");
    let good = pki.access("ca.pem", true);
    let etcd = Etcd::start(&pki, true, &good).await;
    let store = EtcdStore::connect_with(&endpoints(&etcd), &good)
        .await
        .unwrap();
    roundtrip(&store).await;

    let err = EtcdStore::connect_with(&endpoints(&etcd), &pki.access("ca.pem", false))
        .await
        .err()
        .expect("no client certificate");
    assert!(err.to_string().contains(&etcd.endpoint), "{err}");
    let err = EtcdStore::connect_with(&endpoints(&etcd), &pki.access("other-ca.pem", true))
        .await
        .err()
        .expect("etcd's certificate is not from this CA");
    assert!(err.to_string().contains(&etcd.endpoint), "{err}");
    let err = EtcdStore::connect_with(
        &endpoints(&etcd),
        &EtcdAccess {
            ca: Some(pki.path("missing.pem")),
            ..EtcdAccess::default()
        },
    )
    .await
    .err()
    .expect("a CA file that does not exist");
    assert!(err.to_string().contains("missing.pem"), "{err}");

    // A whole control plane on it.
    let mut cfg = nexus_control_plane::server::ControlPlaneConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        nexus_control_plane::server::StoreConfig::Etcd(endpoints(&etcd)),
    );
    cfg.etcd_access = good;
    cfg.admin_auth = false;
    cfg.store_connect_timeout = Duration::from_secs(5);
    let cp = nexus_control_plane::server::start(cfg)
        .await
        .expect("a control plane on TLS etcd");
    cp.shutdown().await.unwrap();
}

#[tokio::test]
async fn user_and_password() {
    let pki = Pki::new("auth");
    let tls_only = pki.access("ca.pem", false);
    let etcd = Etcd::start(&pki, false, &tls_only).await;
    // Turn on etcd's users: root (needed before auth_enable) and nexus with a role on
    // everything.
    {
        use nexus_control_plane::store::etcd_api::authpb::{Permission, permission::Type};
        use nexus_control_plane::store::etcd_api::etcdserverpb as pb;
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
        let channel = Endpoint::from_shared(etcd.endpoint.clone())
            .unwrap()
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(
                std::fs::read(pki.path("ca.pem")).unwrap(),
            )))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut c = pb::auth_client::AuthClient::new(channel);
        let user = |name: &str, password: &str| pb::AuthUserAddRequest {
            name: name.into(),
            password: password.into(),
            ..Default::default()
        };
        c.user_add(user("root", "root-pw")).await.unwrap();
        c.user_grant_role(pb::AuthUserGrantRoleRequest {
            user: "root".into(),
            role: "root".into(),
        })
        .await
        .unwrap();
        c.user_add(user("nexus", "s3cret")).await.unwrap();
        c.role_add(pb::AuthRoleAddRequest {
            name: "nexus".into(),
        })
        .await
        .unwrap();
        c.role_grant_permission(pb::AuthRoleGrantPermissionRequest {
            name: "nexus".into(),
            perm: Some(Permission {
                perm_type: Type::Readwrite as i32,
                key: b"/".to_vec(),
                range_end: vec![0],
            }),
        })
        .await
        .unwrap();
        c.user_grant_role(pb::AuthUserGrantRoleRequest {
            user: "nexus".into(),
            role: "nexus".into(),
        })
        .await
        .unwrap();
        c.auth_enable(pb::AuthEnableRequest {}).await.unwrap();
    }
    let user = |password: &str| EtcdAccess {
        user: Some(("nexus".into(), password.into())),
        ..tls_only.clone()
    };
    let store = EtcdStore::connect_with(&endpoints(&etcd), &user("s3cret"))
        .await
        .unwrap();
    roundtrip(&store).await;

    // etcd drops every token when auth is turned off and on again: the store notices the
    // refusal, authenticates again, and a retry works.
    {
        use nexus_control_plane::store::etcd_api::etcdserverpb as pb;
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
        let channel = Endpoint::from_shared(etcd.endpoint.clone())
            .unwrap()
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(
                std::fs::read(pki.path("ca.pem")).unwrap(),
            )))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut auth = pb::auth_client::AuthClient::new(channel);
        let root = auth
            .authenticate(pb::AuthenticateRequest {
                name: "root".into(),
                password: "root-pw".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .token;
        let mut disable = tonic::Request::new(pb::AuthDisableRequest {});
        disable
            .metadata_mut()
            .insert("token", root.parse().unwrap());
        auth.auth_disable(disable).await.unwrap();
        auth.auth_enable(pb::AuthEnableRequest {}).await.unwrap();
    }
    let refused = store.get("/nexus/test/tls").await;
    assert!(
        refused.is_err(),
        "the old token must be refused: {refused:?}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match store.get("/nexus/test/tls").await {
            Ok(v) => {
                assert!(v.is_some());
                break;
            }
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "never re-authenticated: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert!(
        EtcdStore::connect_with(&endpoints(&etcd), &user("wrong"))
            .await
            .is_err(),
        "a wrong password must be refused"
    );
    // Without credentials the store cannot read (etcd answers permission denied).
    let anonymous = EtcdStore::connect_with(&endpoints(&etcd), &tls_only).await;
    if let Ok(s) = anonymous {
        assert!(
            s.get("/nexus/test/tls").await.is_err(),
            "anonymous read allowed"
        );
    }
}
