//! API keys: issuing (the secret is returned once and only its hash is stored), rotation
//! with an overlap window, and revocation. Gateways verify tokens against the stored hashes
//! they receive through config push; the token format is `nexus_proto::keys`.

use nexus_proto::keys::{issue, new_key_id};
use nexus_proto::subject::validate_pattern;
use nexus_proto::v1::{ApiKey, KeyCertBinding, KeyLimits, KeyScopes, StoredKey};

use crate::error::AdminError;
use crate::names::{KEYS, key_key, now_ms, validate_name};
use crate::records::{conflict, encode, get, list};
use crate::store::{Compare, Op, Store, Txn};

/// Default time the previous secret keeps working after a rotation.
pub const DEFAULT_OVERLAP_SECS: u64 = 3600;
const MAX_PATTERNS: usize = 256;

fn validate_scopes(scopes: &KeyScopes) -> Result<(), AdminError> {
    for (field, patterns) in [
        ("scopes.publish", &scopes.publish),
        ("scopes.subscribe", &scopes.subscribe),
    ] {
        if patterns.len() > MAX_PATTERNS {
            return Err(AdminError::invalid(
                field,
                format!("at most {MAX_PATTERNS} patterns"),
            ));
        }
        for (i, p) in patterns.iter().enumerate() {
            validate_pattern(p)
                .map_err(|e| AdminError::invalid(format!("{field}[{i}]"), e.to_string()))?;
        }
    }
    if scopes.publish.is_empty() && scopes.subscribe.is_empty() && !scopes.admin {
        return Err(AdminError::invalid(
            "scopes",
            "a key needs at least one publish or subscribe pattern, or admin",
        ));
    }
    Ok(())
}

/// At most this many fingerprints, and this many names, in a key's certificate binding.
const MAX_BOUND: usize = 32;

/// Checks a certificate binding and returns it normalised: fingerprints in lower-case hex
/// without separators (`AB:CD:...` as `openssl x509 -fingerprint -sha256` prints them is
/// accepted), names in lower case; `None` when both lists are empty (no binding).
pub fn normalize_binding(
    binding: Option<KeyCertBinding>,
) -> Result<Option<KeyCertBinding>, AdminError> {
    let Some(b) = binding else { return Ok(None) };
    if b.sha256.len() > MAX_BOUND || b.names.len() > MAX_BOUND {
        return Err(AdminError::invalid(
            "cert_binding",
            format!("at most {MAX_BOUND} fingerprints and {MAX_BOUND} names"),
        ));
    }
    let mut out = KeyCertBinding::default();
    for (i, f) in b.sha256.iter().enumerate() {
        let hex: String = f
            .trim()
            .chars()
            .filter(|c| *c != ':')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if hex.len() != 64 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(AdminError::invalid(
                format!("cert_binding.sha256[{i}]"),
                format!(
                    "{f:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed; e.g. `openssl x509 -noout -fingerprint -sha256 -in cert.pem`)"
                ),
            ));
        }
        if !out.sha256.contains(&hex) {
            out.sha256.push(hex);
        }
    }
    for (i, n) in b.names.iter().enumerate() {
        let name = n.trim().trim_end_matches('.').to_ascii_lowercase();
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'*')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(AdminError::invalid(
                format!("cert_binding.names[{i}]"),
                format!("{n:?} is not a DNS name (such as orders.client.nexus)"),
            ));
        }
        if !out.names.contains(&name) {
            out.names.push(name);
        }
    }
    Ok((!out.sha256.is_empty() || !out.names.is_empty()).then_some(out))
}

/// Issues a new key; the returned token is the only copy of its secret.
pub async fn create(
    store: &dyn Store,
    name: &str,
    scopes: KeyScopes,
    expires_at_ms: i64,
    cert_binding: Option<KeyCertBinding>,
) -> Result<(ApiKey, String), AdminError> {
    validate_name("name", name)?;
    validate_scopes(&scopes)?;
    let cert_binding = normalize_binding(cert_binding)?;
    let now = now_ms();
    if expires_at_ms != 0 && expires_at_ms <= now {
        return Err(AdminError::invalid(
            "expires_at_ms",
            "must be in the future (or 0 for never)",
        ));
    }
    let id = new_key_id();
    let issued = issue(&id);
    let key = ApiKey {
        id: id.clone(),
        name: name.to_owned(),
        scopes: Some(scopes),
        created_at_ms: now,
        expires_at_ms,
        cert_binding,
        ..Default::default()
    };
    let stored = StoredKey {
        key: Some(key.clone()),
        secret_sha256: issued.secret_sha256.into(),
        previous_secret_sha256: Default::default(),
    };
    let record = key_key(&id);
    let txn = Txn::new()
        .when(Compare::Version(record.clone(), 0))
        .then(Op::put(record.clone(), encode(&stored)));
    if !store.txn(txn).await?.succeeded {
        return Err(AdminError::AlreadyExists {
            what: format!("key {id}"),
        });
    }
    Ok((ApiKey { version: 1, ..key }, issued.token))
}

async fn load(store: &dyn Store, id: &str) -> Result<(StoredKey, i64), AdminError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(AdminError::invalid("id", format!("{id:?} is not a key id")));
    }
    get::<StoredKey>(store, &key_key(id))
        .await?
        .ok_or_else(|| AdminError::not_found(format!("key {id}")))
}

fn public(stored: &StoredKey, version: i64) -> ApiKey {
    ApiKey {
        version,
        ..stored.key.clone().unwrap_or_default()
    }
}

pub async fn list_keys(store: &dyn Store) -> Result<Vec<ApiKey>, AdminError> {
    let (records, _) = list::<StoredKey>(store, KEYS).await?;
    Ok(records.iter().map(|(s, v)| public(s, *v)).collect())
}

/// Every stored key with hashes, for config push to gateways.
pub async fn stored_keys(store: &dyn Store) -> Result<Vec<StoredKey>, AdminError> {
    Ok(list::<StoredKey>(store, KEYS)
        .await?
        .0
        .into_iter()
        .map(|(s, _)| s)
        .collect())
}

/// Issues a new secret; the old one keeps working for `overlap_secs`.
pub async fn rotate(
    store: &dyn Store,
    id: &str,
    overlap_secs: u64,
) -> Result<(ApiKey, String), AdminError> {
    let (mut stored, version) = load(store, id).await?;
    let mut key = stored.key.clone().unwrap_or_default();
    if key.revoked {
        return Err(AdminError::invalid(
            "id",
            format!("key {id} is revoked; create a new one"),
        ));
    }
    let overlap = if overlap_secs == 0 {
        DEFAULT_OVERLAP_SECS
    } else {
        overlap_secs.min(30 * 86_400)
    };
    let issued = issue(id);
    stored.previous_secret_sha256 =
        std::mem::replace(&mut stored.secret_sha256, issued.secret_sha256.into());
    key.previous_valid_until_ms = now_ms() + overlap as i64 * 1000;
    stored.key = Some(key);
    let record = key_key(id);
    let txn = Txn::new()
        .when(Compare::Version(record.clone(), version))
        .then(Op::put(record.clone(), encode(&stored)));
    if !store.txn(txn).await?.succeeded {
        return Err(conflict(store, &record, &format!("key {id}"), version).await);
    }
    Ok((public(&stored, version + 1), issued.token))
}

/// Replaces a key's scopes (validated as at creation). Gateways apply the new scopes to open
/// sessions: subscriptions no longer covered are removed, publishes outside them refused.
pub async fn update_scopes(
    store: &dyn Store,
    id: &str,
    scopes: KeyScopes,
) -> Result<ApiKey, AdminError> {
    validate_scopes(&scopes)?;
    update_live(store, id, |key| key.scopes = Some(scopes)).await
}

/// Changes a key that is not revoked with `change`, guarded by its version.
async fn update_live(
    store: &dyn Store,
    id: &str,
    change: impl FnOnce(&mut ApiKey),
) -> Result<ApiKey, AdminError> {
    let (mut stored, version) = load(store, id).await?;
    let mut key = stored.key.clone().unwrap_or_default();
    if key.revoked {
        return Err(AdminError::invalid(
            "id",
            format!("key {id} is revoked; create a new one"),
        ));
    }
    change(&mut key);
    stored.key = Some(key);
    let record = key_key(id);
    let txn = Txn::new()
        .when(Compare::Version(record.clone(), version))
        .then(Op::put(record.clone(), encode(&stored)));
    if !store.txn(txn).await?.succeeded {
        return Err(conflict(store, &record, &format!("key {id}"), version).await);
    }
    Ok(public(&stored, version + 1))
}

/// Sets a key's rate limits (all zero: unlimited).
pub async fn set_limits(
    store: &dyn Store,
    id: &str,
    limits: KeyLimits,
) -> Result<ApiKey, AdminError> {
    if limits.burst_msgs != 0 && limits.msgs_per_sec == 0 {
        return Err(AdminError::invalid(
            "limits.burst_msgs",
            "needs limits.msgs_per_sec",
        ));
    }
    if limits.burst_bytes != 0 && limits.bytes_per_sec == 0 {
        return Err(AdminError::invalid(
            "limits.burst_bytes",
            "needs limits.bytes_per_sec",
        ));
    }
    update_live(store, id, |key| key.limits = Some(limits)).await
}

/// Binds a key to TLS client certificates (`None` or an empty binding lifts it).
pub async fn set_cert_binding(
    store: &dyn Store,
    id: &str,
    binding: Option<KeyCertBinding>,
) -> Result<ApiKey, AdminError> {
    let binding = normalize_binding(binding)?;
    update_live(store, id, |key| key.cert_binding = binding).await
}

/// Revokes a key: every secret stops working as soon as gateways see the change.
pub async fn revoke(store: &dyn Store, id: &str) -> Result<ApiKey, AdminError> {
    let (mut stored, version) = load(store, id).await?;
    let mut key = stored.key.clone().unwrap_or_default();
    key.revoked = true;
    key.previous_valid_until_ms = 0;
    stored.key = Some(key);
    stored.previous_secret_sha256.clear();
    let record = key_key(id);
    let txn = Txn::new()
        .when(Compare::Version(record.clone(), version))
        .then(Op::put(record.clone(), encode(&stored)));
    if !store.txn(txn).await?.succeeded {
        return Err(conflict(store, &record, &format!("key {id}"), version).await);
    }
    Ok(public(&stored, version + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_are_normalised_and_bad_ones_named() {
        let colons = (0..32).map(|_| "AB").collect::<Vec<_>>().join(":");
        let b = normalize_binding(Some(KeyCertBinding {
            sha256: vec![colons, "ab".repeat(32)],
            names: vec!["Orders.Client.Nexus.".into()],
        }))
        .unwrap()
        .unwrap();
        assert_eq!(b.sha256, vec!["ab".repeat(32)]);
        assert_eq!(b.names, vec!["orders.client.nexus".to_string()]);
        assert_eq!(
            normalize_binding(Some(KeyCertBinding::default())).unwrap(),
            None
        );
        assert_eq!(normalize_binding(None).unwrap(), None);
        let e = normalize_binding(Some(KeyCertBinding {
            sha256: vec!["abc".into()],
            names: vec![],
        }))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("cert_binding.sha256[0]") && e.contains("not a SHA-256"),
            "{e}"
        );
        let e = normalize_binding(Some(KeyCertBinding {
            sha256: vec![],
            names: vec!["a b".into()],
        }))
        .unwrap_err()
        .to_string();
        assert!(e.contains("cert_binding.names[0]"), "{e}");
    }
}
