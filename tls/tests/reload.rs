//! Certificates reload when their files change: real sockets, real handshakes. A connection
//! made before the change keeps working; one made after sees the new certificate; a broken
//! half-written pair keeps the old one; a client without a certificate is refused when the
//! listener requires one.

use std::sync::Arc;
use std::time::Duration;

use nexus_tls::issue::{CertificateAuthority, Role, Validity};
use nexus_tls::{ReloadingServerConfig, ServerTlsFiles, TlsListener};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

fn server(ca: &CertificateAuthority, host: &str) -> nexus_tls::IssuedPem {
    ca.issue(
        &Role::Server {
            hosts: vec![host.into()],
        },
        Validity::days(1),
    )
    .unwrap()
}

fn client(
    ca: &CertificateAuthority,
    identity: Option<&nexus_tls::IssuedPem>,
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(nexus_tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some(id) => builder
            .with_client_auth_cert(
                nexus_tls::load::certs_from_pem(id.cert_pem.as_bytes(), "c".as_ref()).unwrap(),
                rustls::pki_types::PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

use rustls::pki_types::pem::PemObject;

/// An echo server over `TlsListener`.
async fn echo(config: Arc<ReloadingServerConfig>, stop: CancellationToken) -> std::net::SocketAddr {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut listener = TlsListener::new(tcp, config, stop).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use axum::serve::Listener;
        loop {
            let (mut tls, _) = listener.accept().await;
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn roundtrip<S: AsyncReadExt + AsyncWriteExt + Unpin>(s: &mut S) {
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn a_changed_certificate_applies_to_new_connections_and_old_ones_survive() {
    let dir = std::env::temp_dir().join(format!("nexus-tls-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = CertificateAuthority::generate("reload CA", Validity::days(1)).unwrap();
    let first = server(&ca, "first.test");
    let files = ServerTlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        client_ca: None,
        require_client_cert: false,
    };
    std::fs::write(&files.cert, &first.cert_pem).unwrap();
    std::fs::write(&files.key, &first.key_pem).unwrap();
    let config = ReloadingServerConfig::from_files(files.clone(), &[]).unwrap();
    let stop = CancellationToken::new();
    config.watch(Duration::from_millis(50), stop.clone());
    let addr = echo(config.clone(), stop.clone()).await;
    let connector = client(&ca, None);

    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut old = connector
        .connect(ServerName::try_from("first.test").unwrap(), tcp)
        .await
        .expect("first certificate");
    roundtrip(&mut old).await;

    // Half-written: a new certificate with the old key does not load; the old one stays.
    let second = server(&ca, "second.test");
    std::fs::write(&files.cert, &second.cert_pem).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(config.reloads(), 0, "a mismatched pair must not be loaded");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    connector
        .connect(ServerName::try_from("first.test").unwrap(), tcp)
        .await
        .expect("still the first certificate");

    std::fs::write(&files.key, &second.key_pem).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while config.reloads() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never reloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut new = connector
        .connect(ServerName::try_from("second.test").unwrap(), tcp)
        .await
        .expect("the new certificate");
    roundtrip(&mut new).await;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(
        connector
            .connect(ServerName::try_from("first.test").unwrap(), tcp)
            .await
            .is_err(),
        "the old name is no longer served"
    );
    // The connection made before the change still works.
    roundtrip(&mut old).await;
    stop.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_required_client_certificate_is_checked_against_the_client_ca() {
    let dir = std::env::temp_dir().join(format!("nexus-tls-mtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = CertificateAuthority::generate("mtls CA", Validity::days(1)).unwrap();
    let other = CertificateAuthority::generate("other CA", Validity::days(1)).unwrap();
    let srv = server(&ca, "srv.test");
    let files = ServerTlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        client_ca: Some(dir.join("ca.pem")),
        require_client_cert: true,
    };
    std::fs::write(&files.cert, &srv.cert_pem).unwrap();
    std::fs::write(&files.key, &srv.key_pem).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
    let config = ReloadingServerConfig::from_files(files, &[]).unwrap();
    let stop = CancellationToken::new();
    let addr = echo(config, stop.clone()).await;
    let name = || ServerName::try_from("srv.test").unwrap();

    let admin = ca
        .issue(&Role::Admin { name: "ops".into() }, Validity::days(1))
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut ok = client(&ca, Some(&admin))
        .connect(name(), tcp)
        .await
        .unwrap();
    roundtrip(&mut ok).await;

    // TLS 1.3 reports a refused client certificate on the first read.
    for identity in [
        None,
        Some(
            other
                .issue(&Role::Admin { name: "x".into() }, Validity::days(1))
                .unwrap(),
        ),
    ] {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let refused = match client(&ca, identity.as_ref()).connect(name(), tcp).await {
            Err(_) => true,
            Ok(mut s) => {
                let _ = s.write_all(b"ping").await;
                let mut buf = [0u8; 4];
                s.read_exact(&mut buf).await.is_err()
            }
        };
        assert!(
            refused,
            "a client without a certificate from the CA must be refused"
        );
    }
    stop.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}
