//! One certificate story for every Nexus process (docs/security.md).
//!
//! - [`issue`]: a cluster CA and the certificates a deployment needs (gateways, control plane,
//!   console, admin clients), made with rcgen; `nexus certs` writes them to files and
//!   `nexus dev` keeps them in memory.
//! - [`load`]: PEM files to rustls types, with errors that name the file and what is missing.
//! - [`reload`]: a server configuration that follows its files: a changed certificate, key or
//!   client CA applies to the next handshake, and established sessions keep theirs.
//! - [`listener`]: a TCP listener that completes TLS handshakes off the accept loop, for
//!   tonic's `serve_with_incoming` (and `axum::serve` with the `axum` feature).
//! - [`policy`]: plaintext is for loopback; anything else needs TLS or an explicit
//!   `--insecure`.
//!
//! Everything uses rustls with the *ring* provider, the one crypto backend of the workspace.

pub mod issue;
pub mod listener;
pub mod load;
pub mod policy;
pub mod reload;

pub use issue::{CertificateAuthority, IssuedPem, Role};
pub use listener::TlsListener;
pub use load::{ServerTlsFiles, load_certs, load_key, load_roots};
pub use policy::{check_plaintext, is_loopback};
pub use reload::ReloadingServerConfig;

use std::sync::Arc;

/// Errors of loading, building or issuing TLS material; each names the file or setting.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path} holds no {what} in PEM form")]
    Missing { path: String, what: &'static str },
    #[error("{path}: {problem}")]
    Invalid { path: String, problem: String },
    #[error("TLS configuration is invalid: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0}")]
    Policy(String),
}

/// The crypto provider every Nexus TLS configuration uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs *ring* as the process default (for libraries that build their own rustls
/// configurations, such as tonic's client); harmless when one is installed already.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
