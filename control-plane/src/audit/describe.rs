//! What a transaction changed, for its audit record: the target object (kind and name, from
//! the first key it writes), the target's store version before and after, and a one-line
//! summary of the fields that changed. Pure: it sees the ops and the records as they were.
//!
//! Key records hold secret hashes; a summary names a key's name, scopes, limits, expiry and
//! state, and says "secret rotated" when the hash changed, never the hash.

use nexus_proto::v1::{
    Compatibility, Consistency, Enforcement, KeyLimits, KeyScopes, Route, RoutePolicy,
    SchemaConfig, SchemaFormat, SchemaVersion, StoredKey,
};
use prost::Message;

use crate::names::{DEFAULT_COMPATIBILITY, KEYS, REGIONS, ROUTES, SCHEMA_CONFIG, SCHEMAS, now_ms};
use crate::store::{KeyValue, Op};

/// Longest summary kept; a longer one ends with "…".
const MAX_SUMMARY: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: String,
    pub name: String,
    pub before_version: i64,
    pub after_version: i64,
    pub summary: String,
}

/// The object a store key holds: (kind, name).
pub fn target(key: &str) -> (&'static str, String) {
    if let Some(name) = key.strip_prefix(ROUTES) {
        ("route", name.to_owned())
    } else if let Some(id) = key.strip_prefix(KEYS) {
        ("key", id.to_owned())
    } else if let Some(rest) = key.strip_prefix(SCHEMAS) {
        let subject = rest.rsplit_once('/').map_or(rest, |(s, _)| s);
        ("schema", subject.to_owned())
    } else if let Some(subject) = key.strip_prefix(SCHEMA_CONFIG) {
        ("schema-config", subject.to_owned())
    } else if key == DEFAULT_COMPATIBILITY {
        ("schema-config", "*".to_owned())
    } else if let Some(rest) = key.strip_prefix(REGIONS) {
        let region = rest.split('/').next().unwrap_or(rest);
        ("region", region.to_owned())
    } else {
        ("other", key.to_owned())
    }
}

/// Describes `ops`, given the record each op's key held before (`before[i]` for `ops[i]`).
pub fn describe(ops: &[Op], before: &[Option<KeyValue>]) -> Change {
    let Some(first) = ops.first() else {
        return Change {
            kind: "other".into(),
            name: String::new(),
            before_version: 0,
            after_version: 0,
            summary: "no change".into(),
        };
    };
    let (kind, name) = target(first.key());
    let old = before.first().cloned().flatten();
    let before_version = old.as_ref().map_or(0, |kv| kv.version);
    let after_version = match first {
        Op::Put { .. } => before_version + 1,
        Op::Delete { .. } => 0,
    };
    let summary = match kind {
        "route" => route(first, old.as_ref()),
        "key" => key(first, old.as_ref()),
        "schema" => schema(ops, before),
        "schema-config" => schema_config(first, old.as_ref()),
        "region" => match first {
            Op::Put { .. } if old.is_none() => "created".to_owned(),
            Op::Put { .. } => "updated".to_owned(),
            Op::Delete { .. } => "deleted".to_owned(),
        },
        _ => format!("{} key(s) written", ops.len()),
    };
    Change {
        kind: kind.to_owned(),
        name,
        before_version,
        after_version,
        summary: truncate(summary),
    }
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_SUMMARY {
        let mut end = MAX_SUMMARY;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

fn decoded<M: Message + Default>(kv: Option<&KeyValue>) -> Option<M> {
    kv.and_then(|kv| M::decode(&kv.value[..]).ok())
}

fn put_value<M: Message + Default>(op: &Op) -> Option<M> {
    match op {
        Op::Put { value, .. } => M::decode(&value[..]).ok(),
        Op::Delete { .. } => None,
    }
}

/// "field a -> b" for each field that differs, or `unchanged` when none does.
struct Diff(Vec<String>);

impl Diff {
    fn field(&mut self, name: &str, before: String, after: String) {
        if before != after {
            self.0.push(format!("{name} {before} -> {after}"));
        }
    }

    fn finish(self, unchanged: &str) -> String {
        if self.0.is_empty() {
            unchanged.to_owned()
        } else {
            self.0.join("; ")
        }
    }
}

fn list(items: &[String]) -> String {
    format!("[{}]", items.join(", "))
}

/// An enum value's name in lowercase ("unset" for the unspecified 0).
fn enum_name<E: TryFrom<i32>>(v: i32, name: impl Fn(E) -> &'static str) -> String {
    if v == 0 {
        return "unset".into();
    }
    E::try_from(v)
        .map(|e| name(e).to_ascii_lowercase())
        .unwrap_or_else(|_| v.to_string())
}

fn route_fields(r: &Route) -> Vec<(&'static str, String)> {
    let weights: Vec<String> = r.weights.iter().map(|(k, v)| format!("{k}={v}")).collect();
    vec![
        ("subjects", list(&r.subjects)),
        (
            "policy",
            enum_name::<RoutePolicy>(r.policy, |p| p.as_str_name()),
        ),
        ("pinned_region", r.pinned_region.clone()),
        ("weights", list(&weights)),
        ("failover", list(&r.failover)),
        (
            "consistency",
            enum_name::<Consistency>(r.consistency, |c| c.as_str_name()),
        ),
        ("sync_quorum", r.sync_quorum.to_string()),
        ("sync_timeout_ms", r.sync_timeout_ms.to_string()),
        ("description", format!("{:?}", r.description)),
    ]
}

fn route(op: &Op, old: Option<&KeyValue>) -> String {
    let before: Option<Route> = decoded(old);
    let Some(after) = put_value::<Route>(op) else {
        return match before {
            Some(r) => format!("deleted (subjects {})", list(&r.subjects)),
            None => "deleted".into(),
        };
    };
    let Some(before) = before else {
        let parts: Vec<String> = route_fields(&after)
            .into_iter()
            .filter(|(_, v)| !matches!(v.as_str(), "" | "[]" | "0" | "\"\"" | "unset"))
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        return format!("created: {}", parts.join("; "));
    };
    let mut diff = Diff(Vec::new());
    for ((name, b), (_, a)) in route_fields(&before).into_iter().zip(route_fields(&after)) {
        diff.field(name, b, a);
    }
    diff.finish("applied unchanged")
}

fn scopes_text(s: &KeyScopes) -> String {
    format!(
        "publish {}, subscribe {}{}",
        list(&s.publish),
        list(&s.subscribe),
        if s.admin { ", admin" } else { "" }
    )
}

fn limits_text(l: &KeyLimits) -> String {
    let n = |v: u64| {
        if v == 0 {
            "unlimited".to_owned()
        } else {
            v.to_string()
        }
    };
    format!(
        "{} msgs/s (burst {}), {} bytes/s (burst {})",
        n(l.msgs_per_sec.into()),
        n(l.burst_msgs.into()),
        n(l.bytes_per_sec),
        n(l.burst_bytes)
    )
}

fn key(op: &Op, old: Option<&KeyValue>) -> String {
    let before: Option<StoredKey> = decoded(old);
    let Some(after) = put_value::<StoredKey>(op) else {
        return "deleted".into();
    };
    let a = after.key.clone().unwrap_or_default();
    let Some(before) = before else {
        let mut s = format!(
            "created {:?}: {}",
            a.name,
            scopes_text(&a.scopes.clone().unwrap_or_default())
        );
        if let Some(b) = a.cert_binding.as_ref() {
            s.push_str(&format!("; bound to {}", binding_text(b)));
        }
        if a.expires_at_ms != 0 {
            s.push_str(&format!(
                "; expires in {} s",
                (a.expires_at_ms - now_ms()).max(0) / 1000
            ));
        }
        return s;
    };
    let b = before.key.clone().unwrap_or_default();
    let mut diff = Diff(Vec::new());
    if !b.revoked && a.revoked {
        diff.0.push("revoked".into());
    }
    if before.secret_sha256 != after.secret_sha256 {
        let overlap = (a.previous_valid_until_ms - now_ms()).max(0) / 1000;
        diff.0.push(format!(
            "secret rotated (the previous secret stays valid for {overlap} s)"
        ));
    }
    diff.field("name", format!("{:?}", b.name), format!("{:?}", a.name));
    diff.field(
        "scopes",
        scopes_text(&b.scopes.unwrap_or_default()),
        scopes_text(&a.scopes.unwrap_or_default()),
    );
    diff.field(
        "limits",
        limits_text(&b.limits.unwrap_or_default()),
        limits_text(&a.limits.unwrap_or_default()),
    );
    diff.field(
        "cert_binding",
        b.cert_binding.as_ref().map_or("none".into(), binding_text),
        a.cert_binding.as_ref().map_or("none".into(), binding_text),
    );
    diff.field(
        "expires_at_ms",
        b.expires_at_ms.to_string(),
        a.expires_at_ms.to_string(),
    );
    diff.finish("written unchanged")
}

/// A certificate binding: fingerprints (public, not secrets) and names.
fn binding_text(b: &nexus_proto::v1::KeyCertBinding) -> String {
    let mut parts: Vec<String> = b.sha256.iter().map(|f| format!("sha256:{f}")).collect();
    parts.extend(b.names.iter().cloned());
    if parts.is_empty() {
        "none".into()
    } else {
        list(&parts)
    }
}

fn schema(ops: &[Op], before: &[Option<KeyValue>]) -> String {
    let mut registered = Vec::new();
    let mut deleted = Vec::new();
    let mut settings_deleted = false;
    for (op, old) in ops.iter().zip(before) {
        let key = op.key();
        if key.starts_with(SCHEMA_CONFIG) {
            settings_deleted |= matches!(op, Op::Delete { .. }) && old.is_some();
            continue;
        }
        let version = key.rsplit('/').next().unwrap_or("").trim_start_matches('0');
        match op {
            Op::Put { .. } => {
                let format = put_value::<SchemaVersion>(op)
                    .map(|s| enum_name::<SchemaFormat>(s.format, |f| f.as_str_name()))
                    .unwrap_or_default();
                registered.push(format!("registered version {version} ({format})"));
            }
            Op::Delete { .. } => deleted.push(version.to_owned()),
        }
    }
    let mut parts = registered;
    if !deleted.is_empty() {
        parts.push(format!(
            "deleted version{} {}",
            if deleted.len() == 1 { "" } else { "s" },
            deleted.join(", ")
        ));
    }
    if settings_deleted {
        parts.push("deleted the subject's compatibility and enforcement settings".into());
    }
    parts.join("; ")
}

fn config_fields(c: &SchemaConfig) -> [(&'static str, String); 3] {
    [
        (
            "compatibility",
            enum_name::<Compatibility>(c.compatibility, |m| m.as_str_name()),
        ),
        (
            "enforcement",
            enum_name::<Enforcement>(c.enforcement, |e| e.as_str_name()),
        ),
        (
            "tail_preview",
            match &c.tail_preview {
                None => "inherited".into(),
                Some(t) if t.redact_fields.is_empty() => format!("{} bytes", t.max_bytes),
                Some(t) => format!(
                    "{} bytes, redacting {}",
                    t.max_bytes,
                    t.redact_fields.join(",")
                ),
            },
        ),
    ]
}

fn schema_config(op: &Op, old: Option<&KeyValue>) -> String {
    let before: SchemaConfig = decoded(old).unwrap_or_default();
    let Some(after) = put_value::<SchemaConfig>(op) else {
        return "deleted".into();
    };
    let mut diff = Diff(Vec::new());
    for ((name, b), (_, a)) in config_fields(&before)
        .into_iter()
        .zip(config_fields(&after))
    {
        diff.field(name, b, a);
    }
    diff.finish("set unchanged")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::{key_key, route_key, schema_config_key, schema_key};
    use crate::records::encode;

    fn kv(key: &str, value: bytes::Bytes, version: i64) -> Option<KeyValue> {
        Some(KeyValue {
            key: key.into(),
            value,
            version,
            mod_revision: 7,
            lease: 0,
        })
    }

    #[test]
    fn a_route_change_names_the_fields_and_versions() {
        let old = Route {
            name: "orders".into(),
            subjects: vec!["orders.>".into()],
            consistency: Consistency::Async as i32,
            ..Default::default()
        };
        let new = Route {
            consistency: Consistency::Sync as i32,
            ..old.clone()
        };
        let k = route_key("orders");
        let c = describe(
            &[Op::put(k.clone(), encode(&new))],
            &[kv(&k, encode(&old), 3)],
        );
        assert_eq!((c.kind.as_str(), c.name.as_str()), ("route", "orders"));
        assert_eq!((c.before_version, c.after_version), (3, 4));
        assert_eq!(c.summary, "consistency async -> sync");
        let c = describe(&[Op::delete(k.clone())], &[kv(&k, encode(&old), 4)]);
        assert_eq!((c.before_version, c.after_version), (4, 0));
        assert!(c.summary.starts_with("deleted"), "{}", c.summary);
    }

    #[test]
    fn a_key_rotation_never_shows_the_hash() {
        let key = nexus_proto::v1::ApiKey {
            id: "k1".into(),
            name: "billing".into(),
            scopes: Some(KeyScopes {
                publish: vec!["billing.>".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let old = StoredKey {
            key: Some(key.clone()),
            secret_sha256: vec![0xab; 32].into(),
            previous_secret_sha256: Default::default(),
        };
        let new = StoredKey {
            secret_sha256: vec![0xcd; 32].into(),
            previous_secret_sha256: vec![0xab; 32].into(),
            key: Some(nexus_proto::v1::ApiKey {
                previous_valid_until_ms: now_ms() + 3_600_000,
                ..key
            }),
        };
        let k = key_key("k1");
        let c = describe(
            &[Op::put(k.clone(), encode(&new))],
            &[kv(&k, encode(&old), 1)],
        );
        assert!(c.summary.starts_with("secret rotated"), "{}", c.summary);
        assert!(!c.summary.contains("abab") && !c.summary.contains("cdcd"));
        let created = describe(&[Op::put(k.clone(), encode(&old))], &[None]);
        assert_eq!(
            created.summary,
            "created \"billing\": publish [billing.>], subscribe []"
        );
        assert_eq!((created.before_version, created.after_version), (0, 1));
    }

    #[test]
    fn schema_deletes_and_settings() {
        let (v1, v2, cfg) = (
            schema_key("a.b", 1),
            schema_key("a.b", 2),
            schema_config_key("a.b"),
        );
        let c = describe(
            &[
                Op::delete(v1.clone()),
                Op::delete(v2.clone()),
                Op::delete(cfg.clone()),
            ],
            &[
                kv(&v1, Default::default(), 1),
                kv(&v2, Default::default(), 1),
                kv(&cfg, Default::default(), 2),
            ],
        );
        assert_eq!((c.kind.as_str(), c.name.as_str()), ("schema", "a.b"));
        assert_eq!(
            c.summary,
            "deleted versions 1, 2; deleted the subject's compatibility and enforcement settings"
        );
        let set = SchemaConfig {
            subject: "a.b".into(),
            compatibility: Compatibility::Full as i32,
            enforcement: Enforcement::Reject as i32,
            tail_preview: None,
        };
        let c = describe(&[Op::put(cfg.clone(), encode(&set))], &[None]);
        assert_eq!(
            c.summary,
            "compatibility unset -> full; enforcement unset -> reject"
        );
    }
}
