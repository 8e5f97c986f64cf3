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
    ConfigSnapshot, Enforcement, FederationPeer, Route, SchemaFormat, StoredKey,
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
}

impl Grant {
    pub fn may_publish(&self, subject: &str) -> bool {
        self.publish.iter().any(|p| matches(p, subject))
    }

    pub fn may_subscribe(&self, pattern: &str) -> bool {
        self.subscribe.iter().any(|s| covers(s, pattern))
    }
}

/// Why a key was refused. Messages name the key, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("an API key is required (Hello.api_key is empty)")]
    Missing,
    #[error("Hello.api_key is not a Nexus API key (expected nxk_<id>_<secret>)")]
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

    /// Checks a token presented in Hello.
    pub fn authenticate(&self, token: &str, now_ms: i64) -> Result<Arc<Grant>, AuthError> {
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
        let used = if current {
            &stored.secret_sha256
        } else {
            &stored.previous_secret_sha256
        };
        Ok(grant_of(stored, used.clone()))
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
    /// or why it must end now (revoked, expired, deleted).
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
        Ok(grant_of(stored, used.clone()))
    }
}

fn grant_of(stored: &StoredKey, secret_sha256: bytes::Bytes) -> Arc<Grant> {
    let key = stored.key.clone().unwrap_or_default();
    let scopes = key.scopes.unwrap_or_default();
    Arc::new(Grant {
        key_id: key.id,
        key_name: key.name,
        publish: scopes.publish,
        subscribe: scopes.subscribe,
        secret_sha256,
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
        let g = p.authenticate(&token, 5_000).unwrap();
        assert!(g.may_publish("orders.eu.created"));
        assert!(!g.may_publish("billing.x"));
        assert!(g.may_subscribe("orders.*.created"));
        assert!(g.may_subscribe("orders.eu.created"));
        assert!(!g.may_subscribe("orders.>"));
        assert_eq!(p.authenticate("", 0), Err(AuthError::Missing));
        assert_eq!(p.authenticate("hello", 0), Err(AuthError::Malformed));
        assert!(matches!(
            p.authenticate(&revoked_token, 0),
            Err(AuthError::Revoked(_))
        ));
        assert!(matches!(
            p.authenticate(&expired_token, 5_000),
            Err(AuthError::Expired(_))
        ));
        let wrong = format!(
            "{}{}",
            &token[..token.len() - 1],
            if token.ends_with('0') { "1" } else { "0" }
        );
        assert!(matches!(
            p.authenticate(&wrong, 0),
            Err(AuthError::WrongSecret(_))
        ));
        let unknown = keys::issue(&keys::new_key_id()).token;
        assert!(matches!(
            p.authenticate(&unknown, 0),
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
        assert!(p.authenticate(&new.token, 20_000).is_ok());
        assert!(p.authenticate(&old_token, 9_999).is_ok());
        assert!(matches!(
            p.authenticate(&old_token, 10_000),
            Err(AuthError::WrongSecret(_))
        ));
    }
}
