//! go-plugin's AutoMTLS, the transport Terraform asks for: Terraform passes its own
//! self-signed client certificate in `PLUGIN_CLIENT_CERT` (PEM); the plugin makes a
//! self-signed server certificate for `localhost`, sends it (base64 DER) as the sixth field
//! of the handshake line, and accepts only connections presenting exactly Terraform's
//! certificate. Both ends pin the other's certificate, so no CA is involved.

use std::sync::Arc;

use anyhow::Context;
use base64::Engine;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};

/// Accepts only the one client certificate Terraform announced.
#[derive(Debug)]
struct PinnedClient {
    cert: CertificateDer<'static>,
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PinnedClient {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the client certificate is not the one in PLUGIN_CLIENT_CERT".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if dss.scheme == SignatureScheme::ECDSA_NISTP521_SHA512 {
            return verify_p521(message, cert, dss.signature());
        }
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        let mut schemes = self.algs.supported_schemes();
        schemes.push(SignatureScheme::ECDSA_NISTP521_SHA512);
        schemes
    }
}

/// Checks an ECDSA P-521 / SHA-512 handshake signature (go-plugin's client key type).
fn verify_p521(
    message: &[u8],
    cert: &CertificateDer<'_>,
    signature: &[u8],
) -> Result<HandshakeSignatureValid, rustls::Error> {
    use p521::ecdsa::signature::Verifier;
    let bad = |what: &str| rustls::Error::General(format!("client certificate: {what}"));
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|_| bad("not X.509"))?;
    let point = &parsed.public_key().subject_public_key.data;
    let key = p521::ecdsa::VerifyingKey::from_sec1_bytes(point)
        .map_err(|_| bad("not a P-521 public key"))?;
    let sig = p521::ecdsa::Signature::from_der(signature).map_err(|_| bad("bad signature"))?;
    key.verify(message, &sig)
        .map_err(|_| bad("the handshake signature does not verify"))?;
    Ok(HandshakeSignatureValid::assertion())
}

/// The server's TLS configuration for Terraform's client certificate `client_pem`, and the
/// handshake line's certificate field.
pub fn server_config(client_pem: &str) -> anyhow::Result<(rustls::ServerConfig, String)> {
    let client =
        nexus_tls::load::certs_from_pem(client_pem.as_bytes(), "PLUGIN_CLIENT_CERT".as_ref())
            .context("PLUGIN_CLIENT_CERT is not a PEM certificate")?
            .into_iter()
            .next()
            .context("PLUGIN_CLIENT_CERT holds no certificate")?;
    let key = rcgen::KeyPair::generate().context("cannot generate the plugin's key")?;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .context("cannot make the plugin's certificate")?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
        rcgen::KeyUsagePurpose::KeyCertSign,
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let cert = params
        .self_signed(&key)
        .context("cannot sign the plugin's certificate")?;
    let provider = nexus_tls::provider();
    let verifier = PinnedClient {
        cert: client,
        algs: provider.signature_verification_algorithms,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .context("the plugin's certificate and key do not match")?;
    // gRPC clients insist on HTTP/2 being negotiated.
    config.alpn_protocols = vec![b"h2".to_vec()];
    let field = base64::engine::general_purpose::STANDARD_NO_PAD.encode(cert.der());
    Ok((config, field))
}
