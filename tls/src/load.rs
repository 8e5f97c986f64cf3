//! PEM files to rustls types. Every error names the file and what it lacked, so an operator
//! who swapped a key and a certificate reads which file is wrong.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::TlsError;

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        path: path.display().to_string(),
        error,
    })
}

/// Every certificate in a PEM file (a leaf first, then its intermediates; or a CA bundle).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certs_from_pem(&read(path)?, path)
}

/// Certificates from PEM bytes; `path` only names the source in errors.
pub fn certs_from_pem(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut certs = Vec::new();
    for c in CertificateDer::pem_slice_iter(pem) {
        certs.push(c.map_err(|e| TlsError::Invalid {
            path: path.display().to_string(),
            problem: format!("a certificate cannot be decoded: {e:?}"),
        })?);
    }
    if certs.is_empty() {
        return Err(TlsError::Missing {
            path: path.display().to_string(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|_| TlsError::Missing {
        path: path.display().to_string(),
        what: "private key",
    })
}

/// A trust store of every certificate in a PEM file. A bundle of the old and the new CA is
/// how a CA rotation overlaps (docs/security.md §rotation).
pub fn load_roots(path: &Path) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::Invalid {
            path: path.display().to_string(),
            problem: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(Arc::new(roots))
}

/// The files of a TLS server: its certificate chain and key, and optionally the CA whose
/// client certificates it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    /// With a client CA: refuse connections without a client certificate (`true`), or let
    /// them in unauthenticated and leave the decision to the service (`false`; the control
    /// plane does this so `nexusctl` with an admin key needs no certificate while gateways
    /// must present theirs).
    pub require_client_cert: bool,
}

impl ServerTlsFiles {
    /// Reads the files and builds a rustls server configuration offering `alpn`.
    pub fn build(&self, alpn: &[&[u8]]) -> Result<rustls::ServerConfig, TlsError> {
        let chain = load_certs(&self.cert)?;
        let key = load_key(&self.key)?;
        let builder = rustls::ServerConfig::builder_with_provider(crate::provider())
            .with_safe_default_protocol_versions()?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    load_roots(ca)?,
                    crate::provider(),
                );
                if !self.require_client_cert {
                    verifier = verifier.allow_unauthenticated();
                }
                let verifier = verifier
                    .build()
                    .map_err(|e| TlsError::Verifier(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Invalid {
                path: format!("{} / {}", self.cert.display(), self.key.display()),
                problem: format!("certificate and key do not form an identity: {e}"),
            })?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }

    /// The files this configuration is built from (watched for changes).
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut p = vec![self.cert.clone(), self.key.clone()];
        p.extend(self.client_ca.clone());
        p
    }
}

/// Whether `cert` (the leaf a peer presented, already verified against the CA) is issued
/// for `name`.
pub fn cert_is_for(cert: &CertificateDer<'_>, name: &str) -> Result<(), String> {
    let parsed = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| format!("certificate cannot be parsed: {e:?}"))?;
    let server_name = rustls::pki_types::ServerName::try_from(name.to_owned())
        .map_err(|e| format!("{name:?} is not a valid name: {e}"))?;
    parsed
        .verify_is_valid_for_subject_name(&server_name)
        .map_err(|_| format!("the certificate is not issued for {name}"))
}

/// The DNS names a certificate is issued for (empty when it cannot be parsed).
pub fn dns_names(cert: &CertificateDer<'_>) -> Vec<String> {
    match webpki::EndEntityCert::try_from(cert) {
        Ok(parsed) => parsed.valid_dns_names().map(str::to_owned).collect(),
        Err(_) => Vec::new(),
    }
}
