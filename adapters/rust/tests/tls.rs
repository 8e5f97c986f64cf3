//! TLS end to end (feature `tls`): the client connects with `https://` to a TLS endpoint
//! terminated by rustls (ALPN h2, a certificate issued by a test CA made with rcgen) in front
//! of a real in-process gateway, verifies the certificate against that CA, and publishes and
//! receives through it. The TLS terminator stands in for the gateway's own TLS listener, which
//! this branch does not have; the client's side (rustls through tonic, CA and name checks) is
//! the real one. A client that does not trust the CA is refused.

use std::sync::Arc;
use std::time::Duration;

use nexus_client::Client;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// A CA (PEM) and a TLS terminator on 127.0.0.1 forwarding to `upstream`.
async fn tls_front(upstream: std::net::SocketAddr) -> (String, std::net::SocketAddr) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".into(), "gateway.test".into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(cert.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return; // refused handshakes end here
                };
                let mut gw = TcpStream::connect(upstream).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut gw).await;
            });
        }
    });
    (ca.pem(), addr)
}

async fn gateway() -> nexus_gateway::RunningGateway {
    let config: nexus_gateway::GatewayConfig = toml::from_str(
        "listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\nauth = \"off\"\nshutdown_grace_ms = 200\n",
    )
    .unwrap();
    nexus_gateway::start(config).await.unwrap()
}

#[tokio::test]
async fn https_with_the_gateways_ca() {
    let gw = gateway().await;
    let (ca, addr) = tls_front(gw.grpc_addr).await;
    let client = Client::builder(&format!("https://{addr}"))
        .tls_ca_pem(ca)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("TLS session");
    let mut sub = client.subscribe("tls.*").await.unwrap();
    client.publish_acked("tls.hello", "over TLS").await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next_message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"over TLS");
    client.close().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let gw = gateway().await;
    let (_, addr) = tls_front(gw.grpc_addr).await;
    let (other_ca, _) = tls_front(gw.grpc_addr).await;
    let err = Client::builder(&format!("https://{addr}"))
        .tls_ca_pem(other_ca)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect_err("an untrusted certificate");
    assert!(matches!(err, nexus_client::Error::Connect(_)), "{err}");
}

#[test]
fn a_missing_ca_file_names_it() {
    let err = Client::builder("https://127.0.0.1:1")
        .tls_ca_file("/nonexistent/ca.pem")
        .expect_err("no such file");
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}
