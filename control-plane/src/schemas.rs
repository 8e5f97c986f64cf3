//! The schema registry: versions per subject, compatibility checks against the subject's
//! mode (or the global default), and per-subject enforcement settings that gateways apply
//! at publish time. The rules themselves live in [`crate::schema`] (sans-I/O).

use std::collections::BTreeMap;

use nexus_proto::subject::validate_subject;
use nexus_proto::v1::{
    CheckSchemaRequest, CheckSchemaResponse, Compatibility, Enforcement, Incompatibility,
    ListSchemasResponse, RegisterSchemaRequest, SchemaConfig, SchemaFormat, SchemaSubject,
    SchemaVersion, TailPreview,
};

use crate::error::AdminError;
use crate::names::{
    DEFAULT_COMPATIBILITY, SCHEMA_CONFIG, SCHEMAS, now_ms, schema_config_key, schema_key,
    schema_prefix,
};
use crate::records::{decode, encode, get, list};
use crate::schema::{self as core, CompatibilityMode, ParsedSchema};
use crate::store::{Compare, Op, Store, Txn};

/// Mode used when neither the subject nor the global default sets one.
pub const DEFAULT_MODE: Compatibility = Compatibility::Backward;

fn to_core_format(f: i32) -> Result<core::SchemaFormat, AdminError> {
    match SchemaFormat::try_from(f).unwrap_or(SchemaFormat::Unspecified) {
        SchemaFormat::JsonSchema => Ok(core::SchemaFormat::JsonSchema),
        SchemaFormat::Protobuf => Ok(core::SchemaFormat::Protobuf),
        SchemaFormat::Unspecified => Err(AdminError::invalid(
            "format",
            "choose json_schema or protobuf",
        )),
    }
}

fn to_core_mode(c: Compatibility) -> CompatibilityMode {
    match c {
        Compatibility::None => CompatibilityMode::None,
        Compatibility::Backward | Compatibility::Unspecified => CompatibilityMode::Backward,
        Compatibility::BackwardTransitive => CompatibilityMode::BackwardTransitive,
        Compatibility::Forward => CompatibilityMode::Forward,
        Compatibility::ForwardTransitive => CompatibilityMode::ForwardTransitive,
        Compatibility::Full => CompatibilityMode::Full,
        Compatibility::FullTransitive => CompatibilityMode::FullTransitive,
    }
}

/// The same check against one version (transitive modes are applied version by version
/// so every incompatibility names the version it conflicts with).
fn single_version_mode(m: CompatibilityMode) -> CompatibilityMode {
    match m {
        CompatibilityMode::BackwardTransitive => CompatibilityMode::Backward,
        CompatibilityMode::ForwardTransitive => CompatibilityMode::Forward,
        CompatibilityMode::FullTransitive => CompatibilityMode::Full,
        other => other,
    }
}

fn check_subject(subject: &str) -> Result<(), AdminError> {
    validate_subject(subject).map_err(|e| AdminError::invalid("subject", e.to_string()))
}

fn parse(format: i32, definition: &[u8], message: &str) -> Result<ParsedSchema, AdminError> {
    let format = to_core_format(format)?;
    ParsedSchema::parse(format, definition, (!message.is_empty()).then_some(message))
        .map_err(|e| AdminError::invalid("definition", e.to_string()))
}

async fn versions(store: &dyn Store, subject: &str) -> Result<Vec<SchemaVersion>, AdminError> {
    Ok(list::<SchemaVersion>(store, &schema_prefix(subject))
        .await?
        .0
        .into_iter()
        .map(|(v, _)| v)
        .collect())
}

/// The effective settings for a subject: its own, else the global default compatibility,
/// and enforcement off.
pub async fn get_config(store: &dyn Store, subject: &str) -> Result<SchemaConfig, AdminError> {
    let global = get::<SchemaConfig>(store, DEFAULT_COMPATIBILITY)
        .await?
        .map(|(c, _)| c);
    let global_tail = global.as_ref().and_then(|c| c.tail_preview.clone());
    let default_mode = global
        .map(|c| c.compatibility)
        .filter(|c| *c != Compatibility::Unspecified as i32)
        .unwrap_or(DEFAULT_MODE as i32);
    if subject.is_empty() {
        return Ok(SchemaConfig {
            subject: String::new(),
            compatibility: default_mode,
            enforcement: Enforcement::Unspecified as i32,
            tail_preview: global_tail,
        });
    }
    check_subject(subject)?;
    let own = get::<SchemaConfig>(store, &schema_config_key(subject)).await?;
    let tail_preview = own
        .as_ref()
        .and_then(|(c, _)| c.tail_preview.clone())
        .or(global_tail);
    let (compatibility, enforcement) = match own {
        Some((c, _)) => (
            if c.compatibility == Compatibility::Unspecified as i32 {
                default_mode
            } else {
                c.compatibility
            },
            if c.enforcement == Enforcement::Unspecified as i32 {
                Enforcement::Off as i32
            } else {
                c.enforcement
            },
        ),
        None => (default_mode, Enforcement::Off as i32),
    };
    Ok(SchemaConfig {
        subject: subject.to_owned(),
        compatibility,
        enforcement,
        tail_preview,
    })
}

/// Sets a subject's compatibility and/or enforcement (unspecified fields are kept), or the
/// global default compatibility when `subject` is empty.
pub async fn set_config(
    store: &dyn Store,
    config: SchemaConfig,
) -> Result<SchemaConfig, AdminError> {
    if Compatibility::try_from(config.compatibility).is_err() {
        return Err(AdminError::invalid(
            "compatibility",
            format!(
                "unknown mode number {}; valid: {}",
                config.compatibility,
                CompatibilityMode::ALL.map(|m| m.as_str()).join(", ")
            ),
        ));
    }
    if Enforcement::try_from(config.enforcement).is_err() {
        return Err(AdminError::invalid(
            "enforcement",
            format!(
                "unknown enforcement number {}; valid: off, warn, reject",
                config.enforcement
            ),
        ));
    }
    if let Some(t) = &config.tail_preview {
        check_tail_preview(t)?;
    }
    if config.subject.is_empty() {
        if config.enforcement != Enforcement::Unspecified as i32 {
            return Err(AdminError::invalid(
                "enforcement",
                "enforcement is set per subject, not globally",
            ));
        }
        let mut merged = get::<SchemaConfig>(store, DEFAULT_COMPATIBILITY)
            .await?
            .map(|(c, _)| c)
            .unwrap_or_default();
        if config.compatibility != Compatibility::Unspecified as i32 {
            merged.compatibility = config.compatibility;
        }
        if config.tail_preview.is_some() {
            merged.tail_preview = config.tail_preview;
        }
        store.put(DEFAULT_COMPATIBILITY, encode(&merged)).await?;
        return get_config(store, "").await;
    }
    check_subject(&config.subject)?;
    let key = schema_config_key(&config.subject);
    let mut merged = get::<SchemaConfig>(store, &key)
        .await?
        .map(|(c, _)| c)
        .unwrap_or_default();
    merged.subject = config.subject.clone();
    if config.compatibility != Compatibility::Unspecified as i32 {
        merged.compatibility = config.compatibility;
    }
    if config.enforcement != Enforcement::Unspecified as i32 {
        merged.enforcement = config.enforcement;
    }
    if config.tail_preview.is_some() {
        merged.tail_preview = config.tail_preview;
    }
    store.put(&key, encode(&merged)).await?;
    get_config(store, &config.subject).await
}

/// The largest payload preview the live tail may show (`TailPreview.max_bytes`).
pub const MAX_TAIL_PREVIEW: u32 = 4096;

fn check_tail_preview(t: &TailPreview) -> Result<(), AdminError> {
    if t.max_bytes > MAX_TAIL_PREVIEW {
        return Err(AdminError::invalid(
            "tail_preview.max_bytes",
            format!("{} is above the limit of {MAX_TAIL_PREVIEW}", t.max_bytes),
        ));
    }
    if t.redact_fields.len() > 64 {
        return Err(AdminError::invalid(
            "tail_preview.redact_fields",
            format!("{} fields; at most 64", t.redact_fields.len()),
        ));
    }
    for f in &t.redact_fields {
        if f.is_empty() || f.len() > 128 || f.chars().any(|c| c.is_control() || c == '"') {
            return Err(AdminError::invalid(
                "tail_preview.redact_fields",
                format!(
                    "{f:?} is not a JSON field name (1-128 characters, no quote or control character)"
                ),
            ));
        }
    }
    Ok(())
}

/// Checks a draft against the registered versions without registering it.
pub async fn check(
    store: &dyn Store,
    req: CheckSchemaRequest,
) -> Result<CheckSchemaResponse, AdminError> {
    check_subject(&req.subject)?;
    let candidate = parse(req.format, &req.definition, &req.message)?;
    let config = get_config(store, &req.subject).await?;
    let mode = Compatibility::try_from(config.compatibility).unwrap_or(DEFAULT_MODE);
    let registered = versions(store, &req.subject).await?;
    let incompatibilities = incompatibilities(to_core_mode(mode), &candidate, &registered)?;
    Ok(CheckSchemaResponse {
        compatible: incompatibilities.is_empty(),
        mode: mode as i32,
        incompatibilities,
    })
}

fn incompatibilities(
    mode: CompatibilityMode,
    candidate: &ParsedSchema,
    registered: &[SchemaVersion],
) -> Result<Vec<Incompatibility>, AdminError> {
    if mode == CompatibilityMode::None || registered.is_empty() {
        return Ok(Vec::new());
    }
    let against: Vec<&SchemaVersion> = if mode.is_transitive() {
        registered.iter().collect()
    } else {
        registered.last().into_iter().collect()
    };
    let mut out = Vec::new();
    for v in against {
        let previous =
            parse(v.format, &v.definition, &v.message).map_err(|e| AdminError::Corrupt {
                key: schema_key(&v.subject, v.version),
                reason: e.to_string(),
            })?;
        if let Err(found) =
            core::check_compatibility(single_version_mode(mode), candidate, &[previous])
        {
            out.extend(found.into_iter().map(|i| Incompatibility {
                path: i.path,
                reason: i.reason,
                version: v.version,
            }));
        }
    }
    Ok(out)
}

/// Registers a new version if it is compatible; registering the latest definition again
/// returns the existing version.
pub async fn register(
    store: &dyn Store,
    req: RegisterSchemaRequest,
) -> Result<SchemaVersion, AdminError> {
    check_subject(&req.subject)?;
    let candidate = parse(req.format, &req.definition, &req.message)?;
    let registered = versions(store, &req.subject).await?;
    if let Some(latest) = registered.last()
        && latest.format == req.format
        && latest.definition == req.definition
        && latest.message == req.message
    {
        return Ok(latest.clone());
    }
    let config = get_config(store, &req.subject).await?;
    let mode = Compatibility::try_from(config.compatibility).unwrap_or(DEFAULT_MODE);
    let problems = incompatibilities(to_core_mode(mode), &candidate, &registered)?;
    if !problems.is_empty() {
        return Err(AdminError::Incompatible {
            subject: req.subject,
            mode: to_core_mode(mode).as_str().to_owned(),
            reasons: problems
                .iter()
                .map(|p| format!("{} (against version {}): {}", p.path, p.version, p.reason))
                .collect(),
        });
    }
    let version = registered.last().map_or(1, |v| v.version + 1);
    let record = SchemaVersion {
        subject: req.subject.clone(),
        version,
        format: req.format,
        definition: req.definition,
        message: req.message,
        created_at_ms: now_ms(),
    };
    let key = schema_key(&req.subject, version);
    let txn = Txn::new()
        .when(Compare::Version(key.clone(), 0))
        .then(Op::put(key, encode(&record)));
    if !store.txn(txn).await?.succeeded {
        return Err(AdminError::Conflict {
            what: format!("schema {:?} version {version}", req.subject),
            expected: 0,
            actual: 1,
        });
    }
    Ok(record)
}

pub async fn get_version(
    store: &dyn Store,
    subject: &str,
    version: u32,
) -> Result<SchemaVersion, AdminError> {
    check_subject(subject)?;
    let found = if version == 0 {
        versions(store, subject).await?.pop()
    } else {
        get::<SchemaVersion>(store, &schema_key(subject, version))
            .await?
            .map(|(v, _)| v)
    };
    found.ok_or_else(|| {
        AdminError::not_found(if version == 0 {
            format!("schema subject {subject:?}")
        } else {
            format!("schema {subject:?} version {version}")
        })
    })
}

pub async fn list_subjects(store: &dyn Store) -> Result<ListSchemasResponse, AdminError> {
    let (kvs, _) = store.list(SCHEMAS).await?;
    let mut by_subject: BTreeMap<String, Vec<SchemaVersion>> = BTreeMap::new();
    for kv in &kvs {
        let v: SchemaVersion = decode(&kv.key, &kv.value)?;
        by_subject.entry(v.subject.clone()).or_default().push(v);
    }
    let mut subjects = Vec::new();
    for (subject, vs) in by_subject {
        let config = get_config(store, &subject).await?;
        subjects.push(SchemaSubject {
            latest_version: vs.last().map_or(0, |v| v.version),
            versions: vs.iter().map(|v| v.version).collect(),
            format: vs.last().map_or(0, |v| v.format),
            subject,
            compatibility: config.compatibility,
            enforcement: config.enforcement,
        });
    }
    Ok(ListSchemasResponse {
        subjects,
        default_compatibility: get_config(store, "").await?.compatibility,
    })
}

/// Deletes one version, or (version 0) every version and the subject's settings, in one
/// transaction.
pub async fn delete(store: &dyn Store, subject: &str, version: u32) -> Result<u32, AdminError> {
    check_subject(subject)?;
    let mut txn = Txn::new();
    let mut count = 0;
    if version == 0 {
        for v in versions(store, subject).await? {
            txn = txn.then(Op::delete(schema_key(subject, v.version)));
            count += 1;
        }
        if count == 0 {
            return Err(AdminError::not_found(format!("schema subject {subject:?}")));
        }
        // The live tail's redaction outlives the schema: deleting a schema must not start
        // showing payloads the operator hid.
        match get::<SchemaConfig>(store, &schema_config_key(subject)).await? {
            Some((c, _)) if c.tail_preview.is_some() => {
                let kept = SchemaConfig {
                    subject: subject.to_owned(),
                    tail_preview: c.tail_preview,
                    ..Default::default()
                };
                txn = txn.then(Op::put(schema_config_key(subject), encode(&kept)));
            }
            _ => txn = txn.then(Op::delete(schema_config_key(subject))),
        }
    } else {
        let key = schema_key(subject, version);
        let Some(kv) = store.get(&key).await? else {
            return Err(AdminError::not_found(format!(
                "schema {subject:?} version {version}"
            )));
        };
        txn = txn
            .when(Compare::Version(key.clone(), kv.version))
            .then(Op::delete(key));
        count = 1;
    }
    if !store.txn(txn).await?.succeeded {
        return Err(AdminError::Conflict {
            what: format!("schema {subject:?}"),
            expected: 1,
            actual: 0,
        });
    }
    Ok(count)
}

/// Enforced schemas (subject, enforcement, latest version) for config push.
pub async fn enforced(store: &dyn Store) -> Result<Vec<(SchemaConfig, SchemaVersion)>, AdminError> {
    let (configs, _) = list::<SchemaConfig>(store, SCHEMA_CONFIG).await?;
    let mut out = Vec::new();
    for (config, _) in configs {
        let enforcement = Enforcement::try_from(config.enforcement).unwrap_or(Enforcement::Off);
        if matches!(enforcement, Enforcement::Off | Enforcement::Unspecified) {
            continue;
        }
        if let Some(latest) = versions(store, &config.subject).await?.pop() {
            out.push((config, latest));
        }
    }
    Ok(out)
}
