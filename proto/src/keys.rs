//! API key tokens: the format clients present in `Hello.api_key` and how secrets are hashed.
//! The control plane issues and stores keys; gateways verify them; both use these functions
//! so they cannot disagree.
//!
//! A token is `nxk_<id>_<secret>`: `id` is 16 lowercase hex characters naming the key record,
//! `secret` is 64 hex characters (32 random bytes). Only SHA-256 of the secret is stored:
//! secrets are random and long, so a fast hash is enough (no password stretching needed).

use sha2::{Digest, Sha256};

const PREFIX: &str = "nxk_";

/// A freshly issued secret: the token to show once, and the hash to store.
pub struct IssuedToken {
    pub token: String,
    pub secret_sha256: Vec<u8>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new random key id.
pub fn new_key_id() -> String {
    hex(&rand::random::<[u8; 8]>())
}

/// A new secret for key `id`.
pub fn issue(id: &str) -> IssuedToken {
    let secret = hex(&rand::random::<[u8; 32]>());
    IssuedToken {
        token: format!("{PREFIX}{id}_{secret}"),
        secret_sha256: hash_secret(&secret),
    }
}

pub fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Splits a token into (id, secret); `None` when it is not a Nexus key token.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex_of = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex_of(id, 16) && hex_of(secret, 64)).then_some((id, secret))
}

/// Compares a presented secret with a stored hash in constant time.
pub fn secret_matches(secret: &str, stored_sha256: &[u8]) -> bool {
    let h = hash_secret(secret);
    h.len() == stored_sha256.len()
        && h.iter()
            .zip(stored_sha256)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_parse_and_verify() {
        let id = new_key_id();
        let t = issue(&id);
        let (pid, secret) = parse(&t.token).unwrap();
        assert_eq!(pid, id);
        assert!(secret_matches(secret, &t.secret_sha256));
        assert!(!secret_matches(&"0".repeat(64), &t.secret_sha256));
        for bad in [
            "",
            "nxk_",
            "nxk_abc_def",
            "key",
            &t.token.replace("nxk_", "nxz_"),
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }
}
