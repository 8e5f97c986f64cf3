//! Where plaintext is allowed: on loopback, for development. Any other address carries
//! secrets (API keys, the admin key, key records) that anyone on the path could read, so it
//! needs TLS, or an explicit `--insecure` that logs a warning at start.

use std::net::SocketAddr;

use crate::TlsError;

/// Whether `addr` only accepts connections from this host.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Refuses to serve `what` in plaintext on a non-loopback `addr` unless `insecure`; with
/// `insecure` it warns and allows it.
pub fn check_plaintext(what: &str, addr: SocketAddr, insecure: bool) -> Result<(), TlsError> {
    if is_loopback(&addr) {
        return Ok(());
    }
    if insecure {
        tracing::warn!(
            %addr,
            "{what} serves PLAINTEXT on a non-loopback address (--insecure): keys and data cross the network readable by anyone on the path"
        );
        return Ok(());
    }
    Err(TlsError::Policy(format!(
        "{what} would serve plaintext on {addr}, which is not a loopback address: give --tls-cert and --tls-key (see `nexus certs`), listen on 127.0.0.1, or pass --insecure to accept the risk"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_allowed_and_other_addresses_need_insecure() {
        assert!(check_plaintext("x", "127.0.0.1:1".parse().unwrap(), false).is_ok());
        assert!(check_plaintext("x", "[::1]:1".parse().unwrap(), false).is_ok());
        let e = check_plaintext("gateway", "0.0.0.0:7422".parse().unwrap(), false).unwrap_err();
        assert!(e.to_string().contains("--insecure"), "{e}");
        assert!(e.to_string().contains("0.0.0.0:7422"), "{e}");
        assert!(check_plaintext("x", "10.1.2.3:1".parse().unwrap(), true).is_ok());
    }
}
