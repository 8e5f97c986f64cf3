//! TLS towards the gateway, behind the `tls` feature (rustls with the *ring* provider, through
//! tonic).
//!
//! A `https://host:port` address, or a `nexus+srv://` name with
//! [`ClientBuilder::tls`](crate::ClientBuilder::tls), connects over TLS. The gateway's
//! certificate is verified against the CA certificates given with
//! [`ClientBuilder::tls_ca_pem`](crate::ClientBuilder::tls_ca_pem) (or `tls_ca_file`), else
//! against the system's trust store, for the name in the address (an IP address works when the
//! certificate lists it) or the one given with
//! [`ClientBuilder::tls_domain`](crate::ClientBuilder::tls_domain). Without the feature a
//! `https://` address is refused with [`Error::InvalidAddress`](crate::Error::InvalidAddress)
//! before anything is sent.

use tonic::transport::Endpoint;

use crate::error::Result;

/// TLS settings of a client, fixed at connect time. (Without the `tls` feature nothing sets
/// them, and only the refusal of `https://` remains.)
#[derive(Debug, Clone, Default)]
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub(crate) struct TlsSettings {
    /// Connect to discovered gateways over TLS too.
    pub(crate) srv: bool,
    /// PEM CA certificates to trust instead of the system's.
    pub(crate) ca_pem: Option<Vec<u8>>,
    /// The name to verify instead of the address's host.
    pub(crate) domain: Option<String>,
    /// A client certificate and key (PEM) for gateways that require one.
    pub(crate) identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsSettings {
    /// The scheme for a discovered gateway.
    pub(crate) fn srv_scheme(&self) -> &'static str {
        if self.srv { "https" } else { "http" }
    }

    /// Configures `endpoint` for TLS when `url` is `https://`; refuses it without the feature.
    pub(crate) fn apply(&self, endpoint: Endpoint, url: &str) -> Result<Endpoint> {
        if !url
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
        {
            return Ok(endpoint);
        }
        self.secure(endpoint, url)
    }

    #[cfg(feature = "tls")]
    fn secure(&self, endpoint: Endpoint, _url: &str) -> Result<Endpoint> {
        use tonic::transport::{Certificate, ClientTlsConfig};
        let mut config = ClientTlsConfig::new();
        config = match &self.ca_pem {
            Some(pem) => config.ca_certificate(Certificate::from_pem(pem)),
            None => config.with_native_roots(),
        };
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        if let Some((cert, key)) = &self.identity {
            config = config.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        Ok(endpoint.tls_config(config)?)
    }

    /// Completes TLS on a native connection (`nexus+tls://`) to `host`, verified as for
    /// `https://`, offering the native transport's ALPN id.
    #[cfg(feature = "tls")]
    pub(crate) async fn native_tls(
        &self,
        tcp: tokio::net::TcpStream,
        host: &str,
        url: &str,
    ) -> Result<crate::native::NativeStream> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        let bad = |reason: String| crate::error::Error::InvalidAddress {
            addr: url.to_owned(),
            reason,
        };
        let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        match &self.ca_pem {
            Some(pem) => {
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| bad(format!("the CA certificates: {e}")))?;
                    roots
                        .add(cert)
                        .map_err(|e| bad(format!("the CA certificates: {e}")))?;
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        if roots.is_empty() {
            return Err(bad("no CA certificate to verify the gateway with".into()));
        }
        let builder = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_root_certificates(roots);
        let mut config = match &self.identity {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| bad(format!("the client certificate: {e}")))?;
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| bad(format!("the client key: {e}")))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| bad(format!("the client certificate: {e}")))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![nexus_proto::native::ALPN.to_vec()];
        let name = self.domain.as_deref().unwrap_or(host);
        let name = ServerName::try_from(name.to_owned())
            .map_err(|e| bad(format!("{name:?} is not a name to verify: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| crate::native::unavailable(format!("TLS with {url}: {e}")))?;
        Ok(crate::native::NativeStream::Tls(Box::new(tls)))
    }

    /// Without the `tls` feature, `nexus+tls://` is refused.
    #[cfg(not(feature = "tls"))]
    pub(crate) async fn native_tls(
        &self,
        _tcp: tokio::net::TcpStream,
        _host: &str,
        url: &str,
    ) -> Result<crate::native::NativeStream> {
        Err(crate::error::Error::InvalidAddress {
            addr: url.to_owned(),
            reason: "nexus+tls:// needs TLS: build nexus-client with the `tls` feature".into(),
        })
    }

    #[cfg(not(feature = "tls"))]
    fn secure(&self, _endpoint: Endpoint, url: &str) -> Result<Endpoint> {
        Err(crate::error::Error::InvalidAddress {
            addr: url.to_owned(),
            reason: "https:// needs TLS: build nexus-client with the `tls` feature".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_addresses_pass_through() {
        let ep = Endpoint::from_static("http://127.0.0.1:1");
        assert!(
            TlsSettings::default()
                .apply(ep, "http://127.0.0.1:1")
                .is_ok()
        );
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn https_without_the_feature_names_it() {
        let ep = Endpoint::from_static("https://127.0.0.1:1");
        let e = TlsSettings::default()
            .apply(ep, "https://127.0.0.1:1")
            .unwrap_err();
        assert!(e.to_string().contains("`tls` feature"), "{e}");
    }
}
