//! Commands that talk to the control plane's `nexus.v1.Admin` API: routes, schemas, keys,
//! regions, gateways and topology. Every failure comes back as the server's message, which
//! names the field or object at fault.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use nexus_proto::v1::admin_client::AdminClient;
use nexus_proto::v1::*;
use serde::Deserialize;
use serde_json::json;
use tonic::transport::Channel;

use super::{Output, format_ms, print_json, print_table};

/// Adds `authorization: Bearer <admin key>` to every Admin API call.
#[derive(Clone)]
pub struct AdminKey(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for AdminKey {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}

pub type Admin = AdminClient<tonic::service::interceptor::InterceptedService<Channel, AdminKey>>;

/// Connects to the control plane; `admin_key` is sent with every call.
pub async fn connect(
    addr: &str,
    admin_key: Option<&str>,
    tls: &super::ClientTls,
) -> anyhow::Result<Admin> {
    let key = match admin_key {
        Some(k) => Some(
            format!("Bearer {}", k.trim())
                .parse()
                .context("the admin key contains characters that cannot be sent")?,
        ),
        None => None,
    };
    let url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let endpoint = Channel::from_shared(url.clone())
        .with_context(|| format!("{addr:?} is not a control plane address"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30));
    let channel = tls
        .apply(endpoint, &url)?
        .connect()
        .await
        .with_context(|| format!("cannot reach the control plane at {url}"))?;
    Ok(AdminClient::with_interceptor(channel, AdminKey(key)))
}

/// Turns a gRPC status into an error whose text is the server's explanation, and notes the
/// config version a write produced (its `nexus-config-version` header) for
/// [`super::wait::applied`].
pub(crate) fn call<T>(r: Result<tonic::Response<T>, tonic::Status>) -> anyhow::Result<T> {
    let response = r.map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    if let Some(v) = response
        .metadata()
        .get("nexus-config-version")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
    {
        super::wait::note_config_version(v);
    }
    Ok(response.into_inner())
}

// === routes ===

/// A route as written in a file (TOML or JSON).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub name: String,
    pub subjects: Vec<String>,
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default)]
    pub pinned_region: Option<String>,
    #[serde(default)]
    pub weights: BTreeMap<String, u32>,
    #[serde(default)]
    pub failover: Vec<String>,
    pub consistency: String,
    #[serde(default)]
    pub sync_quorum: u32,
    /// Sync: how long a publish waits for its quorum (default 5000 ms).
    #[serde(default)]
    pub sync_timeout_ms: u32,
    #[serde(default)]
    pub description: String,
}

fn policy_from(s: &str) -> anyhow::Result<RoutePolicy> {
    Ok(match s.to_ascii_lowercase().replace('-', "_").as_str() {
        "local_first" => RoutePolicy::LocalFirst,
        "nearest" => RoutePolicy::Nearest,
        "pinned" => RoutePolicy::Pinned,
        "weighted" => RoutePolicy::Weighted,
        "broadcast" => RoutePolicy::Broadcast,
        _ => bail!("unknown policy {s:?}; use local_first, nearest, pinned, weighted or broadcast"),
    })
}

fn consistency_from(s: &str) -> anyhow::Result<Consistency> {
    Ok(match s.to_ascii_lowercase().replace('-', "_").as_str() {
        "local" => Consistency::Local,
        "best_effort" => Consistency::BestEffort,
        "async" => Consistency::Async,
        "sync" => Consistency::Sync,
        _ => bail!("unknown consistency {s:?}; use local, best_effort, async or sync"),
    })
}

fn policy_name(p: i32) -> &'static str {
    match RoutePolicy::try_from(p).unwrap_or(RoutePolicy::Unspecified) {
        RoutePolicy::LocalFirst => "local_first",
        RoutePolicy::Nearest => "nearest",
        RoutePolicy::Pinned => "pinned",
        RoutePolicy::Weighted => "weighted",
        RoutePolicy::Broadcast => "broadcast",
        RoutePolicy::Unspecified => "-",
    }
}

fn consistency_name(c: i32) -> &'static str {
    match Consistency::try_from(c).unwrap_or(Consistency::Unspecified) {
        Consistency::Local => "local",
        Consistency::BestEffort => "best_effort",
        Consistency::Async => "async",
        Consistency::Sync => "sync",
        Consistency::Unspecified => "-",
    }
}

impl RouteSpec {
    pub fn into_route(self) -> anyhow::Result<Route> {
        Ok(Route {
            name: self.name,
            subjects: self.subjects,
            policy: match &self.policy {
                Some(p) => policy_from(p)? as i32,
                None => RoutePolicy::Unspecified as i32,
            },
            pinned_region: self.pinned_region.unwrap_or_default(),
            weights: self.weights.into_iter().collect(),
            failover: self.failover,
            consistency: consistency_from(&self.consistency)? as i32,
            sync_quorum: self.sync_quorum,
            sync_timeout_ms: self.sync_timeout_ms,
            description: self.description,
            ..Default::default()
        })
    }
}

/// Reads a route file; the format follows the extension (.json, else TOML).
pub fn read_route_file(path: &Path) -> anyhow::Result<Route> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read route file {}", path.display()))?;
    let spec: RouteSpec = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text)
            .with_context(|| format!("route file {} is not valid", path.display()))?
    } else {
        toml::from_str(&text)
            .with_context(|| format!("route file {} is not valid", path.display()))?
    };
    spec.into_route()
        .with_context(|| format!("route file {} is not valid", path.display()))
}

fn route_json(r: &Route) -> serde_json::Value {
    json!({
        "name": r.name,
        "subjects": r.subjects,
        "policy": policy_name(r.policy),
        "pinned_region": r.pinned_region,
        "weights": r.weights,
        "failover": r.failover,
        "consistency": consistency_name(r.consistency),
        "sync_quorum": r.sync_quorum,
        "sync_timeout_ms": r.sync_timeout_ms,
        "description": r.description,
        "version": r.version,
        "updated_at_ms": r.updated_at_ms,
    })
}

fn print_routes(routes: &[Route], output: Output) {
    match output {
        Output::Json => print_json(&json!(routes.iter().map(route_json).collect::<Vec<_>>())),
        Output::Text => print_table(
            &[
                "NAME",
                "SUBJECTS",
                "POLICY",
                "FAILOVER",
                "CONSISTENCY",
                "VERSION",
                "UPDATED",
            ],
            &routes
                .iter()
                .map(|r| {
                    let policy = match RoutePolicy::try_from(r.policy) {
                        Ok(RoutePolicy::Pinned) => format!("pinned({})", r.pinned_region),
                        Ok(RoutePolicy::Weighted) => format!(
                            "weighted({})",
                            r.weights
                                .iter()
                                .collect::<BTreeMap<_, _>>()
                                .into_iter()
                                .map(|(k, v)| format!("{k}={v}"))
                                .collect::<Vec<_>>()
                                .join(",")
                        ),
                        _ => policy_name(r.policy).to_owned(),
                    };
                    let consistency = if r.consistency == Consistency::Sync as i32 {
                        format!(
                            "sync({})",
                            if r.sync_quorum == 0 {
                                "all".to_string()
                            } else {
                                r.sync_quorum.to_string()
                            }
                        )
                    } else {
                        consistency_name(r.consistency).to_owned()
                    };
                    vec![
                        r.name.clone(),
                        r.subjects.join(","),
                        policy,
                        if r.failover.is_empty() {
                            "-".into()
                        } else {
                            r.failover.join(",")
                        },
                        consistency,
                        r.version.to_string(),
                        format_ms(r.updated_at_ms),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    }
}

pub async fn routes_list(c: &mut Admin, output: Output) -> anyhow::Result<()> {
    let resp = call(c.list_routes(ListRoutesRequest {}).await)?;
    print_routes(&resp.routes, output);
    Ok(())
}

pub async fn routes_get(c: &mut Admin, name: &str, output: Output) -> anyhow::Result<()> {
    let r = call(c.get_route(GetRouteRequest { name: name.into() }).await)?;
    print_routes(&[r], output);
    Ok(())
}

pub async fn routes_apply(
    c: &mut Admin,
    file: &Path,
    expected_version: i64,
    output: Output,
) -> anyhow::Result<()> {
    let route = read_route_file(file)?;
    let r = call(
        c.apply_route(ApplyRouteRequest {
            route: Some(route),
            expected_version,
        })
        .await,
    )?;
    match output {
        Output::Text => println!("route {} applied (version {})", r.name, r.version),
        Output::Json => print_json(&route_json(&r)),
    }
    Ok(())
}

pub async fn routes_delete(
    c: &mut Admin,
    name: &str,
    expected_version: i64,
    output: Output,
) -> anyhow::Result<()> {
    call(
        c.delete_route(DeleteRouteRequest {
            name: name.into(),
            expected_version,
        })
        .await,
    )?;
    match output {
        Output::Text => println!("route {name} deleted"),
        Output::Json => print_json(&json!({"deleted": name})),
    }
    Ok(())
}

// === schemas ===

fn format_from(s: &str) -> anyhow::Result<SchemaFormat> {
    Ok(match s.to_ascii_lowercase().replace('-', "_").as_str() {
        "json" | "json_schema" | "jsonschema" => SchemaFormat::JsonSchema,
        "protobuf" | "proto" => SchemaFormat::Protobuf,
        _ => bail!("unknown schema format {s:?}; use json or protobuf"),
    })
}

fn format_name(f: i32) -> &'static str {
    match SchemaFormat::try_from(f).unwrap_or(SchemaFormat::Unspecified) {
        SchemaFormat::JsonSchema => "json",
        SchemaFormat::Protobuf => "protobuf",
        SchemaFormat::Unspecified => "-",
    }
}

pub fn compatibility_from(s: &str) -> anyhow::Result<Compatibility> {
    Ok(match s.to_ascii_uppercase().replace('-', "_").as_str() {
        "NONE" => Compatibility::None,
        "BACKWARD" => Compatibility::Backward,
        "BACKWARD_TRANSITIVE" => Compatibility::BackwardTransitive,
        "FORWARD" => Compatibility::Forward,
        "FORWARD_TRANSITIVE" => Compatibility::ForwardTransitive,
        "FULL" => Compatibility::Full,
        "FULL_TRANSITIVE" => Compatibility::FullTransitive,
        _ => bail!(
            "unknown compatibility mode {s:?}; use one of NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE"
        ),
    })
}

fn compatibility_name(c: i32) -> &'static str {
    Compatibility::try_from(c).map_or("-", |c| c.as_str_name())
}

pub fn enforcement_from(s: &str) -> anyhow::Result<Enforcement> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "off" => Enforcement::Off,
        "warn" => Enforcement::Warn,
        "reject" => Enforcement::Reject,
        _ => bail!("unknown enforcement {s:?}; use off, warn or reject"),
    })
}

fn enforcement_name(e: i32) -> &'static str {
    match Enforcement::try_from(e).unwrap_or(Enforcement::Unspecified) {
        Enforcement::Off | Enforcement::Unspecified => "off",
        Enforcement::Warn => "warn",
        Enforcement::Reject => "reject",
    }
}

/// The format: explicit, else from the file extension (.json -> json, .pb/.desc/.binpb ->
/// protobuf).
fn schema_format(file: &Path, format: Option<&str>) -> anyhow::Result<SchemaFormat> {
    if let Some(f) = format {
        return format_from(f);
    }
    match file.extension().and_then(|e| e.to_str()) {
        Some("json") => Ok(SchemaFormat::JsonSchema),
        Some("pb" | "desc" | "binpb" | "protoset") => Ok(SchemaFormat::Protobuf),
        _ => bail!(
            "cannot tell the schema format of {} from its extension; pass --format json or --format protobuf",
            file.display()
        ),
    }
}

pub struct SchemaInput<'a> {
    pub subject: &'a str,
    pub file: &'a Path,
    pub format: Option<&'a str>,
    pub message: Option<&'a str>,
}

fn read_schema(input: &SchemaInput<'_>) -> anyhow::Result<(SchemaFormat, Vec<u8>)> {
    let format = schema_format(input.file, input.format)?;
    let definition = std::fs::read(input.file)
        .with_context(|| format!("cannot read schema file {}", input.file.display()))?;
    if format == SchemaFormat::Protobuf && input.message.is_none() {
        bail!("a protobuf schema needs --message <fully.qualified.Message>");
    }
    Ok((format, definition))
}

fn schema_json(v: &SchemaVersion) -> serde_json::Value {
    json!({
        "subject": v.subject,
        "version": v.version,
        "format": format_name(v.format),
        "message": v.message,
        "created_at_ms": v.created_at_ms,
        "definition": if v.format == SchemaFormat::JsonSchema as i32 {
            serde_json::from_slice::<serde_json::Value>(&v.definition).unwrap_or(serde_json::Value::Null)
        } else {
            json!(format!("<{} bytes of FileDescriptorSet>", v.definition.len()))
        },
    })
}

pub async fn schemas_register(
    c: &mut Admin,
    input: SchemaInput<'_>,
    output: Output,
) -> anyhow::Result<()> {
    let (format, definition) = read_schema(&input)?;
    let v = call(
        c.register_schema(RegisterSchemaRequest {
            subject: input.subject.into(),
            format: format as i32,
            definition: definition.into(),
            message: input.message.unwrap_or_default().into(),
        })
        .await,
    )?;
    match output {
        Output::Text => println!("schema {} version {} registered", v.subject, v.version),
        Output::Json => print_json(&schema_json(&v)),
    }
    Ok(())
}

/// Returns whether the draft is compatible (the caller turns "no" into a failing exit).
pub async fn schemas_check(
    c: &mut Admin,
    input: SchemaInput<'_>,
    output: Output,
) -> anyhow::Result<bool> {
    let (format, definition) = read_schema(&input)?;
    let r = call(
        c.check_schema(CheckSchemaRequest {
            subject: input.subject.into(),
            format: format as i32,
            definition: definition.into(),
            message: input.message.unwrap_or_default().into(),
        })
        .await,
    )?;
    match output {
        Output::Json => print_json(&json!({
            "compatible": r.compatible,
            "mode": compatibility_name(r.mode),
            "incompatibilities": r.incompatibilities.iter().map(|i| json!({
                "path": i.path, "reason": i.reason, "version": i.version
            })).collect::<Vec<_>>(),
        })),
        Output::Text => {
            if r.compatible {
                println!(
                    "compatible with {} under {}",
                    input.subject,
                    compatibility_name(r.mode)
                );
            } else {
                println!(
                    "NOT compatible with {} under {}:",
                    input.subject,
                    compatibility_name(r.mode)
                );
                print_table(
                    &["VERSION", "PATH", "REASON"],
                    &r.incompatibilities
                        .iter()
                        .map(|i| vec![i.version.to_string(), i.path.clone(), i.reason.clone()])
                        .collect::<Vec<_>>(),
                );
            }
        }
    }
    Ok(r.compatible)
}

pub async fn schemas_list(c: &mut Admin, output: Output) -> anyhow::Result<()> {
    let r = call(c.list_schemas(ListSchemasRequest {}).await)?;
    match output {
        Output::Json => print_json(&json!({
            "default_compatibility": compatibility_name(r.default_compatibility),
            "subjects": r.subjects.iter().map(|s| json!({
                "subject": s.subject,
                "latest_version": s.latest_version,
                "versions": s.versions,
                "format": format_name(s.format),
                "compatibility": compatibility_name(s.compatibility),
                "enforcement": enforcement_name(s.enforcement),
            })).collect::<Vec<_>>(),
        })),
        Output::Text => {
            print_table(
                &[
                    "SUBJECT",
                    "LATEST",
                    "VERSIONS",
                    "FORMAT",
                    "COMPATIBILITY",
                    "ENFORCEMENT",
                ],
                &r.subjects
                    .iter()
                    .map(|s| {
                        vec![
                            s.subject.clone(),
                            s.latest_version.to_string(),
                            s.versions.len().to_string(),
                            format_name(s.format).into(),
                            compatibility_name(s.compatibility).into(),
                            enforcement_name(s.enforcement).into(),
                        ]
                    })
                    .collect::<Vec<_>>(),
            );
            println!(
                "(default compatibility: {})",
                compatibility_name(r.default_compatibility)
            );
        }
    }
    Ok(())
}

pub async fn schemas_get(
    c: &mut Admin,
    subject: &str,
    version: u32,
    output: Output,
) -> anyhow::Result<()> {
    let v = call(
        c.get_schema(GetSchemaRequest {
            subject: subject.into(),
            version,
        })
        .await,
    )?;
    match output {
        Output::Json => print_json(&schema_json(&v)),
        Output::Text => {
            println!("subject  {}", v.subject);
            println!("version  {}", v.version);
            println!("format   {}", format_name(v.format));
            if !v.message.is_empty() {
                println!("message  {}", v.message);
            }
            println!("created  {}", format_ms(v.created_at_ms));
            if v.format == SchemaFormat::JsonSchema as i32 {
                println!("{}", String::from_utf8_lossy(&v.definition));
            } else {
                println!("({} bytes of FileDescriptorSet)", v.definition.len());
            }
        }
    }
    Ok(())
}

pub async fn schemas_delete(
    c: &mut Admin,
    subject: &str,
    version: u32,
    output: Output,
) -> anyhow::Result<()> {
    let r = call(
        c.delete_schema(DeleteSchemaRequest {
            subject: subject.into(),
            version,
        })
        .await,
    )?;
    match output {
        Output::Text => println!("deleted {} schema version(s) of {subject}", r.deleted),
        Output::Json => print_json(&json!({"subject": subject, "deleted": r.deleted})),
    }
    Ok(())
}

pub async fn schemas_set_config(
    c: &mut Admin,
    subject: &str,
    compatibility: Option<Compatibility>,
    enforcement: Option<Enforcement>,
    output: Output,
) -> anyhow::Result<()> {
    let r = call(
        c.set_schema_config(SetSchemaConfigRequest {
            config: Some(SchemaConfig {
                subject: subject.into(),
                compatibility: compatibility.map_or(0, |c| c as i32),
                enforcement: enforcement.map_or(0, |e| e as i32),
                tail_preview: None,
            }),
        })
        .await,
    )?;
    let who = if r.subject.is_empty() {
        "default".to_owned()
    } else {
        r.subject.clone()
    };
    match output {
        Output::Text => println!(
            "{who}: compatibility {}, enforcement {}",
            compatibility_name(r.compatibility),
            if r.subject.is_empty() {
                "-"
            } else {
                enforcement_name(r.enforcement)
            }
        ),
        Output::Json => print_json(&json!({
            "subject": r.subject,
            "compatibility": compatibility_name(r.compatibility),
            "enforcement": enforcement_name(r.enforcement),
        })),
    }
    Ok(())
}

// === keys ===

fn key_json(k: &ApiKey) -> serde_json::Value {
    let scopes = k.scopes.clone().unwrap_or_default();
    json!({
        "id": k.id,
        "name": k.name,
        "publish": scopes.publish,
        "subscribe": scopes.subscribe,
        "admin": scopes.admin,
        "created_at_ms": k.created_at_ms,
        "expires_at_ms": k.expires_at_ms,
        "revoked": k.revoked,
        "previous_valid_until_ms": k.previous_valid_until_ms,
        "version": k.version,
        "cert_binding": k.cert_binding.as_ref().map(|b| json!({
            "sha256": b.sha256,
            "names": b.names,
        })),
        "limits": k.limits.as_ref().map(|l| json!({
            "msgs_per_sec": l.msgs_per_sec,
            "bytes_per_sec": l.bytes_per_sec,
            "burst_msgs": l.burst_msgs,
            "burst_bytes": l.burst_bytes,
        })),
    })
}

fn print_secret(resp: CreateKeyResponse, verb: &str, output: Output) {
    let key = resp.key.unwrap_or_default();
    match output {
        Output::Json => {
            let mut v = key_json(&key);
            v["secret"] = json!(resp.secret);
            print_json(&v);
        }
        Output::Text => {
            println!("key {} ({}) {verb}", key.id, key.name);
            println!();
            println!("  {}", resp.secret);
            println!();
            println!("This secret is shown once and cannot be recovered; store it now.");
            if key.previous_valid_until_ms > 0 {
                println!(
                    "The previous secret keeps working until {} UTC.",
                    format_ms(key.previous_valid_until_ms)
                );
            }
        }
    }
}

/// A key's certificate binding from `nexusctl` flags: fingerprints given as such, or read
/// from PEM certificate files (the first certificate of each), and DNS names. `None` when
/// none is given.
pub fn cert_binding(
    sha256: Vec<String>,
    names: Vec<String>,
    files: &[std::path::PathBuf],
) -> anyhow::Result<Option<KeyCertBinding>> {
    let mut binding = KeyCertBinding { sha256, names };
    for f in files {
        let certs = nexus_tls::load_certs(f)?;
        let first = certs
            .first()
            .with_context(|| format!("{} holds no certificate", f.display()))?;
        binding
            .sha256
            .push(nexus_gateway::policy::ClientCert::from_der(first).sha256);
    }
    Ok((!binding.sha256.is_empty() || !binding.names.is_empty()).then_some(binding))
}

fn binding_text(b: Option<&KeyCertBinding>) -> String {
    match b {
        None => "none (any connection may present the key)".into(),
        Some(b) => {
            let mut parts: Vec<String> = b.sha256.iter().map(|f| format!("sha256 {f}")).collect();
            parts.extend(b.names.iter().map(|n| format!("name {n}")));
            parts.join(", ")
        }
    }
}

pub async fn keys_bind(
    c: &mut Admin,
    id: &str,
    binding: Option<KeyCertBinding>,
    output: Output,
) -> anyhow::Result<()> {
    let k = call(
        c.set_key_cert_binding(SetKeyCertBindingRequest {
            id: id.into(),
            binding,
        })
        .await,
    )?;
    match output {
        Output::Text => println!(
            "key {} ({}) bound to client certificates: {}",
            k.id,
            k.name,
            binding_text(k.cert_binding.as_ref())
        ),
        Output::Json => print_json(&key_json(&k)),
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub async fn keys_create(
    c: &mut Admin,
    name: &str,
    publish: Vec<String>,
    subscribe: Vec<String>,
    admin: bool,
    expires_in: Option<Duration>,
    cert_binding: Option<KeyCertBinding>,
    output: Output,
) -> anyhow::Result<()> {
    let expires_at_ms = expires_in.map_or(0, |d| {
        nexus_now_ms() + d.as_millis().min(i64::MAX as u128) as i64
    });
    let resp = call(
        c.create_key(CreateKeyRequest {
            name: name.into(),
            scopes: Some(KeyScopes {
                publish,
                subscribe,
                admin,
            }),
            expires_at_ms,
            cert_binding,
        })
        .await,
    )?;
    print_secret(resp, "created", output);
    Ok(())
}

fn nexus_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub async fn keys_list(c: &mut Admin, output: Output) -> anyhow::Result<()> {
    let r = call(c.list_keys(ListKeysRequest {}).await)?;
    match output {
        Output::Json => print_json(&json!(r.keys.iter().map(key_json).collect::<Vec<_>>())),
        Output::Text => print_table(
            &[
                "ID",
                "NAME",
                "PUBLISH",
                "SUBSCRIBE",
                "ADMIN",
                "EXPIRES",
                "STATE",
            ],
            &r.keys
                .iter()
                .map(|k| {
                    let s = k.scopes.clone().unwrap_or_default();
                    let state = if k.revoked {
                        "revoked".to_owned()
                    } else if k.expires_at_ms > 0 && k.expires_at_ms <= nexus_now_ms() {
                        "expired".to_owned()
                    } else if k.previous_valid_until_ms > nexus_now_ms() {
                        "rotating".to_owned()
                    } else {
                        "active".to_owned()
                    };
                    vec![
                        k.id.clone(),
                        k.name.clone(),
                        if s.publish.is_empty() {
                            "-".into()
                        } else {
                            s.publish.join(",")
                        },
                        if s.subscribe.is_empty() {
                            "-".into()
                        } else {
                            s.subscribe.join(",")
                        },
                        if s.admin { "yes".into() } else { "no".into() },
                        format_ms(k.expires_at_ms),
                        state,
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    }
    Ok(())
}

pub async fn keys_rotate(
    c: &mut Admin,
    id: &str,
    overlap: Option<Duration>,
    output: Output,
) -> anyhow::Result<()> {
    let resp = call(
        c.rotate_key(RotateKeyRequest {
            id: id.into(),
            overlap_seconds: overlap.map_or(0, |d| d.as_secs().max(1)),
        })
        .await,
    )?;
    print_secret(resp, "rotated", output);
    Ok(())
}

pub async fn keys_revoke(c: &mut Admin, id: &str, output: Output) -> anyhow::Result<()> {
    let k = call(c.revoke_key(RevokeKeyRequest { id: id.into() }).await)?;
    match output {
        Output::Text => println!("key {} ({}) revoked", k.id, k.name),
        Output::Json => print_json(&key_json(&k)),
    }
    Ok(())
}

pub async fn keys_limits(
    c: &mut Admin,
    id: &str,
    limits: KeyLimits,
    output: Output,
) -> anyhow::Result<()> {
    let k = call(
        c.set_key_limits(SetKeyLimitsRequest {
            id: id.into(),
            limits: Some(limits),
        })
        .await,
    )?;
    match output {
        Output::Text => {
            let l = k.limits.unwrap_or_default();
            let show = |v: u64| {
                if v == 0 {
                    "unlimited".to_string()
                } else {
                    v.to_string()
                }
            };
            println!(
                "key {} ({}) limits: {} msgs/s (burst {}), {} bytes/s (burst {})",
                k.id,
                k.name,
                show(l.msgs_per_sec.into()),
                show(l.burst_msgs.into()),
                show(l.bytes_per_sec),
                show(l.burst_bytes)
            )
        }
        Output::Json => print_json(&key_json(&k)),
    }
    Ok(())
}

pub async fn keys_scopes(
    c: &mut Admin,
    id: &str,
    publish: Vec<String>,
    subscribe: Vec<String>,
    admin: bool,
    output: Output,
) -> anyhow::Result<()> {
    let k = call(
        c.update_key_scopes(UpdateKeyScopesRequest {
            id: id.into(),
            scopes: Some(KeyScopes {
                publish,
                subscribe,
                admin,
            }),
        })
        .await,
    )?;
    match output {
        Output::Text => {
            let s = k.scopes.clone().unwrap_or_default();
            println!(
                "key {} ({}) scopes: publish [{}], subscribe [{}]{}",
                k.id,
                k.name,
                s.publish.join(", "),
                s.subscribe.join(", "),
                if s.admin { ", admin" } else { "" }
            )
        }
        Output::Json => print_json(&key_json(&k)),
    }
    Ok(())
}

// === regions, gateways, topology ===

pub async fn regions_list(c: &mut Admin, output: Output) -> anyhow::Result<()> {
    let r = call(c.list_regions(ListRegionsRequest {}).await)?;
    match output {
        Output::Json => print_json(&json!(
            r.regions
                .iter()
                .map(|r| json!({
                    "name": r.name, "created_at_ms": r.created_at_ms
                }))
                .collect::<Vec<_>>()
        )),
        Output::Text => print_table(
            &["REGION", "CREATED"],
            &r.regions
                .iter()
                .map(|r| vec![r.name.clone(), format_ms(r.created_at_ms)])
                .collect::<Vec<_>>(),
        ),
    }
    Ok(())
}

pub async fn regions_create(c: &mut Admin, name: &str, output: Output) -> anyhow::Result<()> {
    let r = call(
        c.create_region(CreateRegionRequest { name: name.into() })
            .await,
    )?;
    match output {
        Output::Text => println!("region {} exists", r.name),
        Output::Json => print_json(&json!({"name": r.name, "created_at_ms": r.created_at_ms})),
    }
    Ok(())
}

pub async fn regions_delete(c: &mut Admin, name: &str, output: Output) -> anyhow::Result<()> {
    call(
        c.delete_region(DeleteRegionRequest { name: name.into() })
            .await,
    )?;
    match output {
        Output::Text => println!("region {name} deleted"),
        Output::Json => print_json(&json!({"deleted": name})),
    }
    Ok(())
}

fn gateway_json(g: &GatewayInfo) -> serde_json::Value {
    json!({
        "id": g.id, "region": g.region, "adapter_addr": g.adapter_addr,
        "metrics_addr": g.metrics_addr, "federation_addr": g.federation_addr,
        "started_at_ms": g.started_at_ms, "config_version": g.config_version,
        "sessions": g.sessions, "draining": g.draining,
    })
}

fn gateway_rows(gateways: &[GatewayInfo]) -> Vec<Vec<String>> {
    gateways
        .iter()
        .map(|g| {
            vec![
                g.region.clone(),
                g.id.clone(),
                g.adapter_addr.clone(),
                if g.metrics_addr.is_empty() {
                    "-".into()
                } else {
                    g.metrics_addr.clone()
                },
                g.config_version.to_string(),
                if g.draining {
                    format!("{} (draining)", g.sessions)
                } else {
                    g.sessions.to_string()
                },
                format_ms(g.started_at_ms),
            ]
        })
        .collect()
}

const GATEWAY_HEADER: [&str; 7] = [
    "REGION", "GATEWAY", "ADAPTERS", "METRICS", "CONFIG", "SESSIONS", "STARTED",
];

pub async fn gateways_list(c: &mut Admin, region: &str, output: Output) -> anyhow::Result<()> {
    let r = call(
        c.list_gateways(ListGatewaysRequest {
            region: region.into(),
        })
        .await,
    )?;
    match output {
        Output::Json => print_json(&json!(
            r.gateways.iter().map(gateway_json).collect::<Vec<_>>()
        )),
        Output::Text => print_table(&GATEWAY_HEADER, &gateway_rows(&r.gateways)),
    }
    Ok(())
}

/// Regions and their live gateways; with `links`, each gateway's cluster and federation
/// links and spools as it reports them ([`super::links`]).
pub async fn topology(c: &mut Admin, links: bool, output: Output) -> anyhow::Result<()> {
    let t = call(c.get_topology(GetTopologyRequest {}).await)?;
    let mut reports = std::collections::HashMap::new();
    if links {
        let all = t.regions.iter().flat_map(|r| r.gateways.iter());
        let fetched =
            futures::future::join_all(all.map(|g| super::links::fetch(&g.id, &g.metrics_addr)))
                .await;
        reports.extend(fetched.into_iter().map(|l| (l.gateway.clone(), l)));
    }
    match output {
        Output::Json => print_json(&json!({
            "config_version": t.config_version,
            "regions": t.regions.iter().map(|r| json!({
                "region": r.region.as_ref().map(|r| r.name.clone()),
                "gateways": r.gateways.iter().map(|g| {
                    let mut v = gateway_json(g);
                    if let Some(l) = reports.get(&g.id) {
                        v["links"] = super::links::to_json(l);
                    }
                    v
                }).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })),
        Output::Text => {
            println!("config version {}", t.config_version);
            for r in &t.regions {
                let name = r.region.as_ref().map_or("?", |r| r.name.as_str());
                println!("\nregion {name}: {} gateway(s)", r.gateways.len());
                if !r.gateways.is_empty() {
                    print_table(&GATEWAY_HEADER, &gateway_rows(&r.gateways));
                }
                for g in &r.gateways {
                    if let Some(l) = reports.get(&g.id) {
                        super::links::print(l);
                    }
                }
            }
        }
    }
    Ok(())
}

// === route explain ===

/// Percent-encodes a subject for a query string.
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A plain HTTP/1.1 GET of a gateway's operator endpoint; returns (status, body).
pub(super) async fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .map_err(|_| anyhow::anyhow!("connecting to gateway {addr} timed out"))?
    .with_context(|| format!("cannot connect to gateway {addr}"))?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut raw = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut raw),
    )
    .await
    .map_err(|_| anyhow::anyhow!("gateway {addr} did not answer within 10 s"))??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("malformed HTTP answer from gateway {addr}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("malformed HTTP status from gateway {addr}"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub async fn routes_explain(
    c: &mut Admin,
    subject: &str,
    from: Option<&str>,
    output: Output,
) -> anyhow::Result<()> {
    nexus_proto::subject::validate_subject(subject).map_err(|e| anyhow::anyhow!("{e}"))?;
    let gateways = call(
        c.list_gateways(ListGatewaysRequest {
            region: from.unwrap_or_default().into(),
        })
        .await,
    )?
    .gateways;
    let gw = match from {
        Some(region) => gateways.first().ok_or_else(|| {
            anyhow::anyhow!(
                "region {region:?} has no live gateway registered with the control plane"
            )
        })?,
        None => {
            let mut regions: Vec<&str> = gateways.iter().map(|g| g.region.as_str()).collect();
            regions.sort();
            regions.dedup();
            match regions.len() {
                0 => bail!("no live gateway is registered with the control plane"),
                1 => &gateways[0],
                _ => bail!(
                    "gateways run in several regions ({}): choose one with --from",
                    regions.join(", ")
                ),
            }
        }
    };
    if gw.metrics_addr.is_empty() {
        bail!(
            "gateway {} did not register an HTTP (metrics) address",
            gw.id
        );
    }
    let (status, body) = http_get(
        &gw.metrics_addr,
        &format!("/v1/explain?subject={}", query_escape(subject)),
    )
    .await?;
    if status != 200 {
        bail!("gateway {} refused: {}", gw.id, body.trim());
    }
    let v: serde_json::Value = serde_json::from_str(&body)
        .with_context(|| format!("gateway {} sent malformed JSON", gw.id))?;
    match output {
        Output::Json => print_json(&v),
        Output::Text => print_explain(&v),
    }
    Ok(())
}

fn print_explain(v: &serde_json::Value) {
    let s = |x: &serde_json::Value| match x {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.1}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    };
    println!(
        "subject {} published in {} (gateway {})",
        s(&v["subject"]),
        s(&v["region"]),
        s(&v["gateway_id"])
    );
    let local = v["local"].as_array().cloned().unwrap_or_default();
    if local.is_empty() {
        println!("local subscriptions: none");
    } else {
        for l in &local {
            println!(
                "local subscription {} {}({} member(s))",
                s(&l["pattern"]),
                match &l["queue_group"] {
                    serde_json::Value::String(q) => format!("queue {q} "),
                    _ => String::new(),
                },
                s(&l["members"])
            );
        }
    }
    let f = &v["federation"];
    if f.is_null() {
        println!("federation: off (this gateway has no links to other regions)");
        return;
    }
    let r = &f["route"];
    println!(
        "route {} (version {}, pattern {}): policy {}, consistency {}, failover [{}]",
        s(&r["name"]),
        s(&r["version"]),
        s(&r["matched_pattern"]),
        s(&r["policy"]),
        s(&r["consistency"]),
        r["failover"]
            .as_array()
            .map(|a| a.iter().map(s).collect::<Vec<_>>().join(", "))
            .unwrap_or_default()
    );
    println!("config version {}", s(&f["config_version"]));
    if let Some(peers) = f["cluster"].as_array().filter(|p| !p.is_empty()) {
        let names: Vec<String> = peers.iter().map(s).collect();
        println!(
            "gateways of this region with subscribers: {}",
            names.join(", ")
        );
    }
    for t in f["cluster_takers"].as_array().into_iter().flatten() {
        println!(
            "  {}: hop {:.2} ms, replies {}, {} in flight",
            s(&t["gateway_id"]),
            t["rtt_ms"].as_f64().unwrap_or_default(),
            t["reply_ms"]
                .as_f64()
                .map_or("not measured".to_owned(), |ms| format!("{ms:.2} ms")),
            s(&t["in_flight"])
        );
    }
    let replica = &f["spool_replica"];
    if replica["copies"].as_u64().is_some_and(|c| c > 1) {
        println!(
            "spool copies: {} (replica {})",
            s(&replica["copies"]),
            match &replica["replica"] {
                serde_json::Value::String(g) => g.clone(),
                _ => "none linked: publishes wait for one".to_owned(),
            }
        );
    }
    let rows: Vec<Vec<String>> = f["regions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|c| {
            vec![
                s(&c["region"]),
                if c["interest"] == true { "yes" } else { "no" }.into(),
                s(&c["link"]),
                s(&c["rtt_ms"]),
                s(&c["service_ms"]),
                s(&c["in_flight"]),
                s(&c["cost_ms"]),
                s(&c["spool_depth"]),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("no other regions known");
    } else {
        print_table(
            &[
                "REGION",
                "INTEREST",
                "LINK",
                "RTT_MS",
                "SERVICE_MS",
                "IN_FLIGHT",
                "COST_MS",
                "SPOOLED",
            ],
            &rows,
        );
    }
    let targets = |x: &serde_json::Value| {
        let r: Vec<String> = x["regions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(s)
            .collect();
        if r.is_empty() {
            "no other region".to_owned()
        } else {
            r.join(", ")
        }
    };
    println!(
        "publish: {}{} — {}",
        if f["publish"]["local"] == true {
            "local subscribers, "
        } else {
            ""
        },
        targets(&f["publish"]),
        s(&f["publish"]["reason"])
    );
    println!(
        "request with no local responder: {} — {}",
        targets(&f["request_without_local_responder"]),
        s(&f["request_without_local_responder"]["reason"])
    );
}
