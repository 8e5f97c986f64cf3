//! Mutual TLS for federation links: a federation CA signs every gateway's certificate, and
//! both ends of a link must present one (QUIC is always TLS 1.3; ALPN `nexus-fed/1`).
//!
//! `nexus dev` generates a development CA and certificates itself
//! ([`FederationCa::generate`]); production loads PEM files ([`Identity::from_pem_files`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;

/// ALPN protocol of federation links.
pub const ALPN: &[u8] = b"nexus-fed/1";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration is invalid: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path} holds no {what}")]
    Missing { path: String, what: &'static str },
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    #[error("QUIC crypto setup: {0}")]
    Quic(String),
    #[error(transparent)]
    Load(#[from] nexus_tls::TlsError),
}

/// The name a gateway's certificate carries for its region; dialers verify it, and the
/// accepting side checks the dialer's client certificate for it ([`peer_is_region`]).
pub fn server_name(region: &str) -> String {
    nexus_tls::issue::region_name(region)
}

/// Whether the peer's (already CA-verified) certificate was issued for `region`, so a
/// gateway of one region cannot claim to be another in its hello.
pub fn peer_is_region(conn: &quinn::Connection, region: &str) -> Result<(), String> {
    let certs = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(|| "peer presented no client certificate".to_owned())?;
    let leaf = certs
        .first()
        .ok_or_else(|| "peer presented an empty certificate chain".to_owned())?;
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("peer certificate cannot be parsed: {e:?}"))?;
    let name = rustls::pki_types::ServerName::try_from(server_name(region))
        .map_err(|e| format!("region {region:?} is not a valid name: {e}"))?;
    cert.verify_is_valid_for_subject_name(&name).map_err(|_| {
        format!(
            "peer claims region {region:?} but its certificate is not issued for {}",
            server_name(region)
        )
    })
}

/// Whether the peer's (already CA-verified) certificate was issued for gateway `gateway_id` of
/// `region` (`<gateway-id>.<region>.fed.nexus`), so a gateway cannot join its region's cluster
/// under another gateway's id.
pub fn peer_is_gateway(
    conn: &quinn::Connection,
    region: &str,
    gateway_id: &str,
) -> Result<(), String> {
    let certs = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(|| "peer presented no client certificate".to_owned())?;
    let leaf = certs
        .first()
        .ok_or_else(|| "peer presented an empty certificate chain".to_owned())?;
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("peer certificate cannot be parsed: {e:?}"))?;
    let expected = nexus_tls::issue::gateway_name(region, gateway_id);
    let name = rustls::pki_types::ServerName::try_from(expected.clone())
        .map_err(|e| format!("gateway id {gateway_id:?} is not a valid name: {e}"))?;
    cert.verify_is_valid_for_subject_name(&name).map_err(|_| {
        format!("peer claims to be gateway {gateway_id:?} of region {region:?} but its certificate is not issued for {expected}")
    })
}

/// A gateway's TLS identity: its certificate chain and key, and the CA it trusts.
#[derive(Debug)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub ca: CertificateDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            ca: self.ca.clone(),
        }
    }
}

/// A development CA that issues gateway certificates.
pub struct FederationCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
}

/// A certificate and key in PEM, for writing to files.
pub struct PemPair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl FederationCa {
    pub fn generate(name: &str) -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate for a gateway of `region`, valid as both TLS server and client.
    pub fn issue(&self, region: &str, gateway_id: &str) -> Result<Identity, TlsError> {
        self.issue_with_pem(region, gateway_id)
            .map(|(identity, _)| identity)
    }

    /// Like `issue`, also returning the certificate and key as PEM.
    pub fn issue_with_pem(
        &self,
        region: &str,
        gateway_id: &str,
    ) -> Result<(Identity, PemPair), TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![
            server_name(region),
            format!("{gateway_id}.{}", server_name(region)),
        ])?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{gateway_id} ({region})"));
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer)?;
        let pem = PemPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok((
            Identity {
                chain: vec![cert.der().clone()],
                key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
                ca: self.cert_der.clone(),
            },
            pem,
        ))
    }
}

impl Identity {
    /// Loads PEM files: the gateway's certificate chain, its private key, the CA (the first
    /// certificate of the CA file). Loading is `nexus-tls`'s, shared by every process.
    pub fn from_pem_files(cert: &Path, key: &Path, ca: &Path) -> Result<Self, TlsError> {
        let chain = nexus_tls::load_certs(cert).map_err(TlsError::from)?;
        let key = nexus_tls::load_key(key).map_err(TlsError::from)?;
        let ca = nexus_tls::load_certs(ca)
            .map_err(TlsError::from)?
            .into_iter()
            .next()
            .ok_or_else(|| TlsError::Missing {
                path: ca.display().to_string(),
                what: "CA certificate",
            })?;
        Ok(Self { chain, key, ca })
    }

    fn roots(&self) -> Result<Arc<rustls::RootCertStore>, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone())?;
        Ok(Arc::new(roots))
    }

    fn transport() -> Arc<quinn::TransportConfig> {
        let mut t = quinn::TransportConfig::default();
        // Keep-alives keep NAT bindings and RTT estimates fresh on idle links. A peer that
        // restarted cannot reset our old connection (its reset key is new), so the idle
        // timeout is what notices it: 1 s keep-alives, gone after 5 s of silence.
        t.keep_alive_interval(Some(Duration::from_secs(1)));
        t.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
            5_000,
        ))));
        // Links are long, fat pipes: one data stream per direction must be able to keep a
        // WAN round trip's worth of data in flight (quinn's defaults suit ~100 ms at tens of
        // Mb/s; 8 MiB is 650 Mb/s at 100 ms). The send side is bounded as tightly: under
        // overload best-effort messages are dropped at the link queue (and counted), and
        // those accepted wait at most the 8 MiB window (a few hundred ms at the link's rate).
        t.stream_receive_window(quinn::VarInt::from_u32(8 << 20));
        t.receive_window(quinn::VarInt::from_u32(16 << 20));
        t.send_window(8 << 20);
        Arc::new(t)
    }

    /// Server side: requires a client certificate signed by the CA.
    pub fn server_config(&self) -> Result<quinn::ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider.clone())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| TlsError::Quic(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Self::transport());
        Ok(config)
    }

    /// Client side: presents this identity and trusts only the CA.
    pub fn client_config(&self) -> Result<quinn::ClientConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| TlsError::Quic(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Self::transport());
        Ok(config)
    }
}
