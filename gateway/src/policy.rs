//! `Policy`: what the control plane decided for this gateway (API keys and their scopes,
//! schemas enforced at publish time, routes), built from a config snapshot as one immutable
//! value that sessions read without locks (the router swaps in a new one per snapshot).
//!
//! Sans-I/O: building and checking take the current time as an argument.

use std::collections::HashMap;
use std::sync::Arc;

use nexus_proto::keys;
use nexus_proto::subject::{covers, matches};
use nexus_proto::v1::{
    ConfigSnapshot, Enforcement, FederationPeer, KeyCertBinding, Route, SchemaFormat, StoredKey,
};
use nexus_schema::ParsedSchema;

/// What an authenticated session may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub key_id: String,
    pub key_name: String,
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    /// The stored hash of the secret the session presented (the key's current one, or the
    /// previous one during a rotation's overlap), so that a session opened with a secret that
    /// a rotation retired is closed when the overlap ends.
    pub secret_sha256: bytes::Bytes,
    /// The TLS client certificate the session presented, kept so that a binding set later
    /// ([`Policy::recheck`]) is checked against it.
    pub client_cert: Option<Arc<ClientCert>>,
}

/// A TLS client certificate as key bindings see it (`KeyCertBinding`): its SHA-256
/// fingerprint and DNS names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// SHA-256 of the DER certificate, lower-case hex.
    pub sha256: String,
    /// The DNS names (subjectAltName) it is issued for, lower case.
    pub names: Vec<String>,
}

impl ClientCert {
    /// From the DER end-entity certificate the TLS handshake verified.
    pub fn from_der(der: &[u8]) -> Self {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(der);
        let sha256 = digest.iter().map(|b| format!("{b:02x}")).collect();
        let cert = rustls_pki_types::CertificateDer::from(der);
        let names = nexus_tls::load::dns_names(&cert)
            .into_iter()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        Self { sha256, names }
    }

    fn describe(&self) -> String {
        format!("sha256 {}, names [{}]", self.sha256, self.names.join(", "))
    }
}

/// Whether `cert` may present a key bound by `binding`: `Ok` without a binding (or an empty
/// one), otherwise when the certificate's fingerprint or one of its DNS names is listed.
fn check_binding(
    id: &str,
    binding: Option<&KeyCertBinding>,
    cert: Option<&ClientCert>,
) -> Result<(), AuthError> {
    let Some(b) = binding.filter(|b| !b.sha256.is_empty() || !b.names.is_empty()) else {
        return Ok(());
    };
    let mut bound: Vec<String> = b.sha256.iter().map(|f| format!("sha256 {f}")).collect();
    bound.extend(b.names.iter().map(|n| format!("name {n}")));
    let bound = bound.join(", ");
    let Some(cert) = cert else {
        return Err(AuthError::CertificateRequired {
            id: id.into(),
            bound,
        });
    };
    let fingerprint = b
        .sha256
        .iter()
        .any(|f| f.eq_ignore_ascii_case(&cert.sha256));
    let name = cert
        .names
        .iter()
        .any(|n| b.names.iter().any(|m| m.eq_ignore_ascii_case(n)));
    if fingerprint || name {
        Ok(())
    } else {
        Err(AuthError::CertificateMismatch {
            id: id.into(),
            bound,
            presented: cert.describe(),
        })
    }
}

impl Grant {
    pub fn may_publish(&self, subject: &str) -> bool {
        self.publish.iter().any(|p| matches(p, subject))
    }

    pub fn may_subscribe(&self, pattern: &str) -> bool {
        self.subscribe.iter().any(|s| covers(s, pattern))
    }
}

/// Why a key was refused. Messages name the key, never the secret, and not where the key
/// came from: [`AuthError::describe`] adds that (a session's `Hello.api_key`, a unary call's
/// `api_key` field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("an API key is required")]
    Missing,
    #[error("the API key is not a Nexus API key (expected nxk_<id>_<secret>)")]
    Malformed,
    #[error("API key {0} is unknown to this gateway")]
    Unknown(String),
    #[error("API key {0} was revoked")]
    Revoked(String),
    #[error("API key {0} has expired")]
    Expired(String),
    #[error("wrong secret for API key {0}")]
    WrongSecret(String),
    #[error(
        "API key {0} was rotated and the secret this session presented was retired when the rotation's overlap ended"
    )]
    SecretRetired(String),
    #[error(
        "API key {id} is bound to TLS client certificates ({bound}) and this connection presented none: connect over TLS with one of them (the gateway must run with --tls-client-ca)"
    )]
    CertificateRequired { id: String, bound: String },
    #[error(
        "API key {id} is bound to TLS client certificates ({bound}); the certificate this connection presented ({presented}) matches none of them"
    )]
    CertificateMismatch {
        id: String,
        bound: String,
        presented: String,
    },
}

impl AuthError {
    /// The refusal as the client sees it, naming the field that carried the key where that
    /// helps (`field`: `Hello.api_key` for sessions, `api_key` for unary calls).
    pub fn describe(&self, field: &str) -> String {
        match self {
            AuthError::Missing => format!("an API key is required ({field} is empty)"),
            AuthError::Malformed => {
                format!("{field} is not a Nexus API key (expected nxk_<id>_<secret>)")
            }
            other => other.to_string(),
        }
    }
}

/// A schema enforced on one subject.
pub struct EnforcedSchema {
    pub enforcement: Enforcement,
    pub version: u32,
    pub schema: ParsedSchema,
}

#[derive(Default)]
pub struct Policy {
    /// Version of the snapshot this was built from (0: none yet).
    pub version: i64,
    keys: HashMap<String, StoredKey>,
    pub schemas: HashMap<String, EnforcedSchema>,
    pub routes: Vec<Route>,
    /// Other regions' federation endpoints, from the control plane's registrations.
    pub peers: Vec<FederationPeer>,
}

impl Policy {
    /// Builds a policy; schemas that fail to parse are skipped and reported.
    pub fn from_snapshot(snapshot: &ConfigSnapshot) -> (Self, Vec<String>) {
        let mut problems = Vec::new();
        let keys = snapshot
            .keys
            .iter()
            .filter_map(|k| Some((k.key.as_ref()?.id.clone(), k.clone())))
            .collect();
        let mut schemas = HashMap::new();
        for e in &snapshot.schemas {
            let Some(v) = &e.schema else { continue };
            let format = match SchemaFormat::try_from(v.format) {
                Ok(SchemaFormat::JsonSchema) => nexus_schema::SchemaFormat::JsonSchema,
                Ok(SchemaFormat::Protobuf) => nexus_schema::SchemaFormat::Protobuf,
                _ => {
                    problems.push(format!("schema for {:?} has an unknown format", e.subject));
                    continue;
                }
            };
            let message = (!v.message.is_empty()).then_some(v.message.as_str());
            match ParsedSchema::parse(format, &v.definition, message) {
                Ok(schema) => {
                    schemas.insert(
                        e.subject.clone(),
                        EnforcedSchema {
                            enforcement: Enforcement::try_from(e.enforcement)
                                .unwrap_or(Enforcement::Off),
                            version: v.version,
                            schema,
                        },
                    );
                }
                Err(err) => problems.push(format!(
                    "schema for {:?} version {} cannot be enforced: {err}",
                    e.subject, v.version
                )),
            }
        }
        (
            Self {
                version: snapshot.version,
                keys,
                schemas,
                routes: snapshot.routes.clone(),
                peers: snapshot.peers.clone(),
            },
            problems,
        )
    }

    /// Checks a token presented in Hello (or a unary call's `api_key`), with the TLS client
    /// certificate of the connection it came on (`None`: plaintext, or no certificate), which
    /// must match the key's certificate binding if it has one.
    pub fn authenticate(
        &self,
        token: &str,
        now_ms: i64,
        client_cert: Option<&Arc<ClientCert>>,
    ) -> Result<Arc<Grant>, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let (id, secret) = keys::parse(token).ok_or(AuthError::Malformed)?;
        let stored = self.valid_key(id, now_ms)?;
        let key = stored
            .key
            .as_ref()
            .ok_or_else(|| AuthError::Unknown(id.into()))?;
        let current = keys::secret_matches(secret, &stored.secret_sha256);
        let previous = !stored.previous_secret_sha256.is_empty()
            && now_ms < key.previous_valid_until_ms
            && keys::secret_matches(secret, &stored.previous_secret_sha256);
        if !(current || previous) {
            return Err(AuthError::WrongSecret(id.into()));
        }
        // After the secret: only a caller holding the key learns what it is bound to.
        check_binding(id, key.cert_binding.as_ref(), client_cert.map(|c| &**c))?;
        let used = if current {
            &stored.secret_sha256
        } else {
            &stored.previous_secret_sha256
        };
        Ok(grant_of(stored, used.clone(), client_cert.cloned()))
    }

    fn valid_key(&self, id: &str, now_ms: i64) -> Result<&StoredKey, AuthError> {
        let stored = self
            .keys
            .get(id)
            .ok_or_else(|| AuthError::Unknown(id.into()))?;
        let key = stored
            .key
            .as_ref()
            .ok_or_else(|| AuthError::Unknown(id.into()))?;
        if key.revoked {
            return Err(AuthError::Revoked(id.into()));
        }
        if key.expires_at_ms != 0 && now_ms >= key.expires_at_ms {
            return Err(AuthError::Expired(id.into()));
        }
        Ok(stored)
    }

    /// The rate limits of every key that has some.
    pub fn key_limits(&self) -> impl Iterator<Item = (&str, &nexus_proto::v1::KeyLimits)> {
        self.keys.iter().filter_map(|(id, k)| {
            let l = k.key.as_ref()?.limits.as_ref()?;
            Some((id.as_str(), l))
        })
    }

    /// For a session authenticated earlier: its current grant (scopes may have changed),
    /// or why it must end now (revoked, expired, deleted, bound to certificates that do not
    /// include the session's).
    /// Also ends a session whose secret a rotation retired: it presented the previous
    /// secret and the overlap (`previous_valid_until_ms`) is over, or the key was rotated again.
    pub fn recheck(&self, grant: &Grant, now_ms: i64) -> Result<Arc<Grant>, AuthError> {
        let stored = self.valid_key(&grant.key_id, now_ms)?;
        let used = &grant.secret_sha256;
        let current = stored.secret_sha256 == *used;
        let previous = !current
            && stored.previous_secret_sha256 == *used
            && stored
                .key
                .as_ref()
                .is_some_and(|k| now_ms < k.previous_valid_until_ms);
        if !(current || previous) {
            return Err(AuthError::SecretRetired(grant.key_id.clone()));
        }
        check_binding(
            &grant.key_id,
            stored.key.as_ref().and_then(|k| k.cert_binding.as_ref()),
            grant.client_cert.as_deref(),
        )?;
        Ok(grant_of(stored, used.clone(), grant.client_cert.clone()))
    }
}

fn grant_of(
    stored: &StoredKey,
    secret_sha256: bytes::Bytes,
    client_cert: Option<Arc<ClientCert>>,
) -> Arc<Grant> {
    let key = stored.key.clone().unwrap_or_default();
    let scopes = key.scopes.unwrap_or_default();
    Arc::new(Grant {
        key_id: key.id,
        key_name: key.name,
        publish: scopes.publish,
        subscribe: scopes.subscribe,
        secret_sha256,
        client_cert,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_proto::v1::{ApiKey, KeyScopes};

    fn key(revoked: bool, expires_at_ms: i64) -> (StoredKey, String) {
        let id = keys::new_key_id();
        let issued = keys::issue(&id);
        (
            StoredKey {
                key: Some(ApiKey {
                    id: id.clone(),
                    name: "k".into(),
                    scopes: Some(KeyScopes {
                        publish: vec!["orders.>".into()],
                        subscribe: vec!["orders.*.created".into()],
                        admin: false,
                    }),
                    revoked,
                    expires_at_ms,
                    ..Default::default()
                }),
                secret_sha256: issued.secret_sha256.into(),
                previous_secret_sha256: Default::default(),
            },
            issued.token,
        )
    }

    fn policy(keys: Vec<StoredKey>) -> Policy {
        Policy::from_snapshot(&ConfigSnapshot {
            version: 3,
            keys,
            ..Default::default()
        })
        .0
    }

    #[test]
    fn tokens_scopes_and_refusals() {
        let (good, token) = key(false, 0);
        let (revoked, revoked_token) = key(true, 0);
        let (expired, expired_token) = key(false, 1_000);
        let p = policy(vec![good, revoked, expired]);
        let g = p.authenticate(&token, 5_000, None).unwrap();
        assert!(g.may_publish("orders.eu.created"));
        assert!(!g.may_publish("billing.x"));
        assert!(g.may_subscribe("orders.*.created"));
        assert!(g.may_subscribe("orders.eu.created"));
        assert!(!g.may_subscribe("orders.>"));
        assert_eq!(p.authenticate("", 0, None), Err(AuthError::Missing));
        assert_eq!(
            AuthError::Missing.describe("api_key"),
            "an API key is required (api_key is empty)"
        );
        assert_eq!(
            AuthError::Malformed.describe("Hello.api_key"),
            "Hello.api_key is not a Nexus API key (expected nxk_<id>_<secret>)"
        );
        assert_eq!(p.authenticate("hello", 0, None), Err(AuthError::Malformed));
        assert!(matches!(
            p.authenticate(&revoked_token, 0, None),
            Err(AuthError::Revoked(_))
        ));
        assert!(matches!(
            p.authenticate(&expired_token, 5_000, None),
            Err(AuthError::Expired(_))
        ));
        let wrong = format!(
            "{}{}",
            &token[..token.len() - 1],
            if token.ends_with('0') { "1" } else { "0" }
        );
        assert!(matches!(
            p.authenticate(&wrong, 0, None),
            Err(AuthError::WrongSecret(_))
        ));
        let unknown = keys::issue(&keys::new_key_id()).token;
        assert!(matches!(
            p.authenticate(&unknown, 0, None),
            Err(AuthError::Unknown(_))
        ));
    }

    #[test]
    fn rotation_overlap_accepts_the_previous_secret_until_it_ends() {
        let (mut k, old_token) = key(false, 0);
        let id = k.key.as_ref().unwrap().id.clone();
        let new = keys::issue(&id);
        k.previous_secret_sha256 =
            std::mem::replace(&mut k.secret_sha256, new.secret_sha256.into());
        k.key.as_mut().unwrap().previous_valid_until_ms = 10_000;
        let p = policy(vec![k]);
        assert!(p.authenticate(&new.token, 20_000, None).is_ok());
        assert!(p.authenticate(&old_token, 9_999, None).is_ok());
        assert!(matches!(
            p.authenticate(&old_token, 10_000, None),
            Err(AuthError::WrongSecret(_))
        ));
    }

    #[test]
    fn a_bound_key_needs_a_matching_client_certificate() {
        let (mut k, token) = key(false, 0);
        let id = k.key.as_ref().unwrap().id.clone();
        let alice = Arc::new(ClientCert {
            sha256: "ab".repeat(32),
            names: vec!["alice.client.nexus".into()],
        });
        let bob = Arc::new(ClientCert {
            sha256: "cd".repeat(32),
            names: vec!["bob.client.nexus".into()],
        });
        k.key.as_mut().unwrap().cert_binding = Some(KeyCertBinding {
            sha256: vec!["cd".repeat(32)],
            names: vec!["alice.client.nexus".into()],
        });
        let p = policy(vec![k.clone()]);
        // By name, by fingerprint.
        let g = p.authenticate(&token, 0, Some(&alice)).unwrap();
        assert!(p.authenticate(&token, 0, Some(&bob)).is_ok());
        let none = p.authenticate(&token, 0, None).unwrap_err();
        assert!(matches!(none, AuthError::CertificateRequired { .. }));
        assert!(none.to_string().contains("presented none"), "{none}");
        let stranger = Arc::new(ClientCert {
            sha256: "ef".repeat(32),
            names: vec!["eve.client.nexus".into()],
        });
        let e = p.authenticate(&token, 0, Some(&stranger)).unwrap_err();
        assert!(matches!(e, AuthError::CertificateMismatch { .. }));
        let text = e.to_string();
        assert!(
            text.contains(&id) && text.contains("eve.client.nexus"),
            "{text}"
        );
        // A wrong secret is refused as such, without naming the binding.
        let wrong = format!(
            "{}{}",
            &token[..token.len() - 1],
            if token.ends_with('0') { "1" } else { "0" }
        );
        assert!(matches!(
            p.authenticate(&wrong, 0, Some(&stranger)),
            Err(AuthError::WrongSecret(_))
        ));
        // Binding changed under an open session: the recheck ends it.
        k.key.as_mut().unwrap().cert_binding = Some(KeyCertBinding {
            sha256: Vec::new(),
            names: vec!["bob.client.nexus".into()],
        });
        let p = policy(vec![k.clone()]);
        assert!(matches!(
            p.recheck(&g, 0),
            Err(AuthError::CertificateMismatch { .. })
        ));
        // An empty binding binds nothing.
        k.key.as_mut().unwrap().cert_binding = Some(KeyCertBinding::default());
        assert!(policy(vec![k]).authenticate(&token, 0, None).is_ok());
    }

    #[test]
    fn client_cert_fingerprint_and_names() {
        let ca = nexus_tls::CertificateAuthority::generate(
            "test CA",
            nexus_tls::issue::Validity::days(1),
        )
        .unwrap();
        let issued = ca
            .issue(
                &nexus_tls::Role::Client {
                    name: "orders".into(),
                },
                nexus_tls::issue::Validity::days(1),
            )
            .unwrap();
        let der =
            nexus_tls::load::certs_from_pem(issued.cert_pem.as_bytes(), std::path::Path::new("x"))
                .unwrap()
                .remove(0);
        let c = ClientCert::from_der(&der);
        assert_eq!(c.sha256.len(), 64);
        assert_eq!(c.names, vec!["orders.client.nexus".to_string()]);
    }
}
