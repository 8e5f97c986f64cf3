//! The provider's resources and data sources. Everything the Admin API holds (regions,
//! routes, schemas, API keys) is read live on every refresh, so a change made with `nexusctl`
//! shows as drift; certificates (`nexus_ca`, `nexus_gateway_certificate`) are issued locally
//! with the same code as `nexus certs` and live only in Terraform's state.

use std::collections::BTreeMap;

use anyhow::{Context, anyhow, bail};
use nexus_proto::v1 as pb;
use nexus_tls::issue::{CertificateAuthority, Role, Validity};
use tonic::Code;

use crate::provider::{Ctx, Diag};
use crate::schema::{Attr, Ty};
use crate::value::{Obj, Val};

/// A managed resource type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Region,
    Route,
    Schema,
    ApiKey,
    Ca,
    GatewayCert,
}

/// A data source type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKind {
    Topology,
    Gateways,
}

fn get<'a>(o: &'a Obj, k: &str) -> &'a Val {
    o.get(k).unwrap_or(&Val::Null)
}
fn s(o: &Obj, k: &str) -> String {
    get(o, k).as_str().unwrap_or_default().to_owned()
}
fn n(o: &Obj, k: &str) -> i64 {
    get(o, k).as_i64().unwrap_or(0)
}
fn u32_of(o: &Obj, k: &str) -> anyhow::Result<u32> {
    u32::try_from(n(o, k)).map_err(|_| anyhow!("{k} must be between 0 and {}", u32::MAX))
}
fn u64_of(o: &Obj, k: &str) -> anyhow::Result<u64> {
    u64::try_from(n(o, k)).map_err(|_| anyhow!("{k} must not be negative"))
}

/// The server's message, or `None` for NOT_FOUND.
fn found<T>(r: Result<tonic::Response<T>, tonic::Status>) -> anyhow::Result<Option<T>> {
    match r {
        Ok(r) => Ok(Some(r.into_inner())),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(anyhow!("{}", s.message())),
    }
}
fn ok<T>(r: Result<tonic::Response<T>, tonic::Status>) -> anyhow::Result<T> {
    r.map(tonic::Response::into_inner)
        .map_err(|s| anyhow!("{}", s.message()))
}

const GATEWAY_OBJECT: &str = r#"["object",{"id":"string","region":"string","adapter_addr":"string","metrics_addr":"string","federation_addr":"string","sessions":"number","draining":"bool","config_version":"number"}]"#;
const GATEWAY_LIST: &str = r#"["list",["object",{"id":"string","region":"string","adapter_addr":"string","metrics_addr":"string","federation_addr":"string","sessions":"number","draining":"bool","config_version":"number"}]]"#;

fn gateway_val(g: &pb::GatewayInfo) -> Val {
    let _ = GATEWAY_OBJECT;
    Val::Map(Obj::from([
        ("id".into(), Val::str(&g.id)),
        ("region".into(), Val::str(&g.region)),
        ("adapter_addr".into(), Val::str(&g.adapter_addr)),
        ("metrics_addr".into(), Val::str(&g.metrics_addr)),
        ("federation_addr".into(), Val::str(&g.federation_addr)),
        ("sessions".into(), Val::Int(g.sessions.into())),
        ("draining".into(), Val::Bool(g.draining)),
        ("config_version".into(), Val::Int(g.config_version)),
    ]))
}

// ---- names of enums, as nexusctl spells them ----

fn policy_from(s: &str) -> Option<pb::RoutePolicy> {
    Some(match s {
        "local_first" => pb::RoutePolicy::LocalFirst,
        "nearest" => pb::RoutePolicy::Nearest,
        "pinned" => pb::RoutePolicy::Pinned,
        "weighted" => pb::RoutePolicy::Weighted,
        "broadcast" => pb::RoutePolicy::Broadcast,
        _ => return None,
    })
}
fn policy_name(p: i32) -> &'static str {
    match pb::RoutePolicy::try_from(p).unwrap_or(pb::RoutePolicy::Unspecified) {
        pb::RoutePolicy::LocalFirst | pb::RoutePolicy::Unspecified => "local_first",
        pb::RoutePolicy::Nearest => "nearest",
        pb::RoutePolicy::Pinned => "pinned",
        pb::RoutePolicy::Weighted => "weighted",
        pb::RoutePolicy::Broadcast => "broadcast",
    }
}
fn consistency_from(s: &str) -> Option<pb::Consistency> {
    Some(match s {
        "local" => pb::Consistency::Local,
        "best_effort" => pb::Consistency::BestEffort,
        "async" => pb::Consistency::Async,
        "sync" => pb::Consistency::Sync,
        _ => return None,
    })
}
fn consistency_name(c: i32) -> &'static str {
    match pb::Consistency::try_from(c).unwrap_or(pb::Consistency::Unspecified) {
        pb::Consistency::Local => "local",
        pb::Consistency::BestEffort => "best_effort",
        pb::Consistency::Async => "async",
        pb::Consistency::Sync => "sync",
        pb::Consistency::Unspecified => "",
    }
}
fn format_from(s: &str) -> Option<pb::SchemaFormat> {
    Some(match s {
        "json" => pb::SchemaFormat::JsonSchema,
        "protobuf" => pb::SchemaFormat::Protobuf,
        _ => return None,
    })
}
fn format_name(f: i32) -> &'static str {
    match pb::SchemaFormat::try_from(f).unwrap_or(pb::SchemaFormat::Unspecified) {
        pb::SchemaFormat::Protobuf => "protobuf",
        _ => "json",
    }
}
fn compatibility_from(s: &str) -> Option<pb::Compatibility> {
    pb::Compatibility::from_str_name(s).filter(|c| *c != pb::Compatibility::Unspecified)
}
fn compatibility_name(c: i32) -> &'static str {
    pb::Compatibility::try_from(c).map_or("BACKWARD", |c| c.as_str_name())
}
fn enforcement_from(s: &str) -> Option<pb::Enforcement> {
    Some(match s {
        "off" => pb::Enforcement::Off,
        "warn" => pb::Enforcement::Warn,
        "reject" => pb::Enforcement::Reject,
        _ => return None,
    })
}
fn enforcement_name(e: i32) -> &'static str {
    match pb::Enforcement::try_from(e).unwrap_or(pb::Enforcement::Unspecified) {
        pb::Enforcement::Off | pb::Enforcement::Unspecified => "off",
        pb::Enforcement::Warn => "warn",
        pb::Enforcement::Reject => "reject",
    }
}

/// Checks a known string attribute against its allowed values.
fn one_of(config: &Obj, attr: &str, ok: impl Fn(&str) -> bool, allowed: &str, out: &mut Vec<Diag>) {
    if let Val::Str(v) = get(config, attr)
        && !ok(v)
    {
        out.push(Diag::error(
            format!("{attr} {v:?} is not valid"),
            format!("use one of: {allowed}"),
            Some(attr),
        ));
    }
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Region,
        Kind::Route,
        Kind::Schema,
        Kind::ApiKey,
        Kind::Ca,
        Kind::GatewayCert,
    ];

    pub fn type_name(self) -> &'static str {
        match self {
            Kind::Region => "nexus_region",
            Kind::Route => "nexus_route",
            Kind::Schema => "nexus_schema",
            Kind::ApiKey => "nexus_api_key",
            Kind::Ca => "nexus_ca",
            Kind::GatewayCert => "nexus_gateway_certificate",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_name() == name)
    }

    pub fn description(self) -> &'static str {
        match self {
            Kind::Region => {
                "A region known to the control plane (routes may name only known regions). Import by name."
            }
            Kind::Route => {
                "A route: which regions messages on some subjects go to, with what consistency. Import by name."
            }
            Kind::Schema => {
                "A schema subject: its latest definition, compatibility mode and enforcement. An incompatible definition fails at plan time with the registry's reasons. Import by subject."
            }
            Kind::ApiKey => {
                "An API key: scopes, expiry, rate limits and client-certificate binding; the secret is known only to the state of the Terraform run that created it. Destroy revokes it. Import by key id (without the secret)."
            }
            Kind::Ca => {
                "The cluster CA, as `nexus certs` makes it. Import from a `nexus certs --out` directory (its path)."
            }
            Kind::GatewayCert => {
                "A gateway's certificate (adapters, federation and cluster links, control plane), signed by the cluster CA as `nexus certs --gateway` issues it. Import as DIR:REGION/GATEWAY_ID from a `nexus certs --out` directory."
            }
        }
    }

    pub fn attrs(self) -> Vec<Attr> {
        use Ty::*;
        let id = Attr::computed("id", Str, "The object's id.");
        match self {
            Kind::Region => vec![
                id,
                Attr::required("name", Str, "Region name (a DNS label such as `eu-west`).")
                    .force_new(),
                Attr::computed(
                    "created_at_ms",
                    Num,
                    "Unix milliseconds of the region's creation.",
                ),
            ],
            Kind::Route => vec![
                id,
                Attr::required("name", Str, "Route name.").force_new(),
                Attr::required(
                    "subjects",
                    ListStr,
                    "Subject patterns the route applies to (wildcards allowed).",
                ),
                Attr::optional(
                    "policy",
                    Str,
                    Val::str("local_first"),
                    "local_first, nearest, pinned, weighted or broadcast.",
                ),
                Attr::optional(
                    "pinned_region",
                    Str,
                    Val::str(""),
                    "With policy pinned: the region messages go to.",
                ),
                Attr::optional(
                    "weights",
                    MapNum,
                    Val::Map(BTreeMap::new()),
                    "With policy weighted: region -> relative weight.",
                ),
                Attr::optional(
                    "failover",
                    ListStr,
                    Val::List(Vec::new()),
                    "Regions to try, in order, when the policy's choice is unavailable.",
                ),
                Attr::required("consistency", Str, "local, best_effort, async or sync."),
                Attr::optional(
                    "sync_quorum",
                    Num,
                    Val::Int(0),
                    "With sync: acknowledge after this many regions persisted (0 = all).",
                ),
                Attr::optional(
                    "sync_timeout_ms",
                    Num,
                    Val::Int(0),
                    "With sync: how long a publish waits for its quorum (0 = 5000).",
                ),
                Attr::optional("description", Str, Val::str(""), "Free text."),
                Attr::computed("version", Num, "Store version of the route's record.").volatile(),
            ],
            Kind::Schema => vec![
                id,
                Attr::required("subject", Str, "The literal subject the schema describes.")
                    .force_new(),
                Attr::optional(
                    "format",
                    Str,
                    Val::str("json"),
                    "json (JSON Schema) or protobuf.",
                )
                .force_new(),
                Attr::required(
                    "definition",
                    Str,
                    "JSON Schema: the document. Protobuf: a FileDescriptorSet, base64-encoded.",
                ),
                Attr::optional(
                    "message",
                    Str,
                    Val::str(""),
                    "Protobuf: the fully-qualified message name.",
                ),
                Attr::optional_computed(
                    "compatibility",
                    Str,
                    "NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL or FULL_TRANSITIVE (default: the registry's).",
                ),
                Attr::optional_computed(
                    "enforcement",
                    Str,
                    "What gateways do with a non-conforming publish: off, warn or reject.",
                ),
                Attr::computed("version", Num, "The latest registered version.").volatile(),
            ],
            Kind::ApiKey => vec![
                id,
                Attr::required("name", Str, "Key name (a label for people).").force_new(),
                Attr::optional(
                    "publish",
                    ListStr,
                    Val::List(Vec::new()),
                    "Subject patterns the key may publish and request on.",
                ),
                Attr::optional(
                    "subscribe",
                    ListStr,
                    Val::List(Vec::new()),
                    "Subject patterns the key may subscribe and serve on.",
                ),
                Attr::optional("admin", Bool, Val::Bool(false), "May use the Admin API."),
                Attr::optional(
                    "expires_at_ms",
                    Num,
                    Val::Int(0),
                    "Unix milliseconds after which the key stops working (0 = never).",
                )
                .force_new(),
                Attr::optional(
                    "msgs_per_sec",
                    Num,
                    Val::Int(0),
                    "Rate limit: messages per second (0 = unlimited).",
                ),
                Attr::optional(
                    "bytes_per_sec",
                    Num,
                    Val::Int(0),
                    "Rate limit: payload bytes per second (0 = unlimited).",
                ),
                Attr::optional(
                    "burst_msgs",
                    Num,
                    Val::Int(0),
                    "Messages allowed at once above the rate (0 = one second's worth).",
                ),
                Attr::optional(
                    "burst_bytes",
                    Num,
                    Val::Int(0),
                    "Bytes allowed at once above the rate (0 = one second's worth).",
                ),
                Attr::optional(
                    "cert_names",
                    ListStr,
                    Val::List(Vec::new()),
                    "Bind the key to TLS client certificates with one of these DNS names (e.g. orders.client.nexus). Both lists empty: any session.",
                ),
                Attr::optional(
                    "cert_sha256",
                    ListStr,
                    Val::List(Vec::new()),
                    "Bind the key to TLS client certificates with one of these SHA-256 fingerprints (64 hex digits).",
                ),
                Attr::computed(
                    "secret",
                    Str,
                    "The key's secret (only known to the run that created it; null after import).",
                )
                .sensitive(),
            ],
            Kind::Ca => vec![
                id,
                Attr::optional(
                    "common_name",
                    Str,
                    Val::str("Nexus cluster CA"),
                    "The CA certificate's common name.",
                )
                .force_new(),
                Attr::optional("validity_days", Num, Val::Int(3650), "Validity in days.")
                    .force_new(),
                Attr::computed("cert_pem", Str, "The CA certificate (ca.pem)."),
                Attr::computed("key_pem", Str, "The CA's private key (ca-key.pem).").sensitive(),
            ],
            Kind::GatewayCert => vec![
                id,
                Attr::required("ca_cert_pem", Str, "The cluster CA's certificate.").force_new(),
                Attr::required("ca_key_pem", Str, "The cluster CA's private key.")
                    .sensitive()
                    .force_new(),
                Attr::required("region", Str, "The gateway's region.").force_new(),
                Attr::required("gateway_id", Str, "The gateway's id.").force_new(),
                Attr::optional(
                    "hosts",
                    ListStr,
                    Val::List(Vec::new()),
                    "Names or IP addresses adapters dial.",
                )
                .force_new(),
                Attr::optional("validity_days", Num, Val::Int(397), "Validity in days.")
                    .force_new(),
                Attr::computed("cert_pem", Str, "The gateway's certificate."),
                Attr::computed("key_pem", Str, "The gateway's private key.").sensitive(),
            ],
        }
    }

    /// Checks a configuration's known values without the control plane.
    pub fn validate(self, config: &Obj) -> Vec<Diag> {
        let mut out = Vec::new();
        match self {
            Kind::Route => {
                one_of(
                    config,
                    "policy",
                    |v| policy_from(v).is_some(),
                    "local_first, nearest, pinned, weighted, broadcast",
                    &mut out,
                );
                one_of(
                    config,
                    "consistency",
                    |v| consistency_from(v).is_some(),
                    "local, best_effort, async, sync",
                    &mut out,
                );
            }
            Kind::Schema => {
                one_of(
                    config,
                    "format",
                    |v| format_from(v).is_some(),
                    "json, protobuf",
                    &mut out,
                );
                one_of(
                    config,
                    "compatibility",
                    |v| compatibility_from(v).is_some(),
                    "NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE",
                    &mut out,
                );
                one_of(
                    config,
                    "enforcement",
                    |v| enforcement_from(v).is_some(),
                    "off, warn, reject",
                    &mut out,
                );
            }
            Kind::Ca | Kind::GatewayCert => {
                if let Some(d) = get(config, "validity_days").as_i64()
                    && !(1..=36_500).contains(&d)
                {
                    out.push(Diag::error(
                        "validity_days must be between 1 and 36500",
                        String::new(),
                        Some("validity_days"),
                    ));
                }
            }
            Kind::Region | Kind::ApiKey => {}
        }
        out
    }

    /// Checks the plan against the control plane where it can say more than the config:
    /// a new schema definition must be compatible with the registered versions.
    pub async fn plan_check(self, ctx: &Ctx, prior: Option<&Obj>, planned: &Obj) -> Vec<Diag> {
        if self != Kind::Schema {
            return Vec::new();
        }
        let fields = ["definition", "format", "message"];
        if fields.iter().any(|f| !get(planned, f).is_known()) {
            return Vec::new();
        }
        if let Some(prior) = prior
            && fields.iter().all(|f| get(prior, f) == get(planned, f))
        {
            return Vec::new();
        }
        let subject = s(planned, "subject");
        let req = match schema_request(planned) {
            Ok(r) => r,
            Err(e) => {
                return vec![Diag::error(
                    format!("schema {subject:?}"),
                    format!("{e:#}"),
                    Some("definition"),
                )];
            }
        };
        let mut admin = match ctx.admin().await {
            Ok(a) => a,
            Err(e) => {
                return vec![Diag::warning(
                    format!("cannot check schema {subject:?} for compatibility now"),
                    format!(
                        "{}; the registry checks it again when it is registered at apply",
                        crate::provider::describe(&e)
                    ),
                )];
            }
        };
        // The registry checks under the subject's current mode; a plan that changes the mode
        // is checked under the new one at apply (NONE accepts anything).
        let planned_mode = get(planned, "compatibility")
            .as_str()
            .and_then(compatibility_from);
        if let Some(mode) = planned_mode {
            let current = match ok(admin
                .get_schema_config(pb::GetSchemaConfigRequest {
                    subject: subject.clone(),
                })
                .await)
            {
                Ok(c) => c.compatibility,
                Err(e) => {
                    return vec![Diag::error(
                        format!("schema {subject:?}"),
                        format!("{e:#}"),
                        None,
                    )];
                }
            };
            if mode as i32 != current {
                if mode == pb::Compatibility::None {
                    return Vec::new();
                }
                return vec![Diag::warning(
                    format!(
                        "schema {subject:?}: compatibility changes to {}",
                        mode.as_str_name()
                    ),
                    "the registry checks the new definition under the new mode when it is registered at apply",
                )];
            }
        }
        let check = pb::CheckSchemaRequest {
            subject: req.subject,
            format: req.format,
            definition: req.definition,
            message: req.message,
        };
        match ok(admin.check_schema(check).await) {
            Ok(r) if r.compatible => Vec::new(),
            Ok(r) => {
                let reasons: Vec<String> = r
                    .incompatibilities
                    .iter()
                    .map(|i| {
                        format!(
                            "{}: {} (version {})",
                            if i.path.is_empty() { "/" } else { &i.path },
                            i.reason,
                            i.version
                        )
                    })
                    .collect();
                vec![Diag::error(
                    format!(
                        "schema {subject:?} is incompatible with its registered versions ({} mode)",
                        compatibility_name(r.mode)
                    ),
                    reasons.join("\n"),
                    Some("definition"),
                )]
            }
            Err(e) => vec![Diag::error(
                format!("schema {subject:?}"),
                format!("{e:#}"),
                Some("definition"),
            )],
        }
    }

    /// Creates the object `planned` describes; returns `planned` with its computed values.
    pub async fn create(self, ctx: &Ctx, planned: &Obj) -> anyhow::Result<Obj> {
        let mut out = planned.clone();
        match self {
            Kind::Region => {
                let name = s(planned, "name");
                let r = ok(ctx
                    .admin()
                    .await?
                    .create_region(pb::CreateRegionRequest { name: name.clone() })
                    .await)?;
                out.insert("id".into(), Val::str(name));
                out.insert("created_at_ms".into(), Val::Int(r.created_at_ms));
            }
            Kind::Route => {
                let r = ok(ctx
                    .admin()
                    .await?
                    .apply_route(pb::ApplyRouteRequest {
                        route: Some(route_of(planned)?),
                        expected_version: -1,
                    })
                    .await)?;
                out.insert("id".into(), Val::str(&r.name));
                out.insert("version".into(), Val::Int(r.version));
            }
            Kind::Schema => return self.write_schema(ctx, None, planned).await,
            Kind::ApiKey => {
                let mut admin = ctx.admin().await?;
                let r = ok(admin
                    .create_key(pb::CreateKeyRequest {
                        name: s(planned, "name"),
                        scopes: Some(scopes_of(planned)),
                        expires_at_ms: n(planned, "expires_at_ms"),
                        cert_binding: binding_of(planned),
                    })
                    .await)?;
                let key = r.key.context("the control plane returned no key")?;
                let limits = limits_of(planned)?;
                if limits != pb::KeyLimits::default() {
                    ok(admin
                        .set_key_limits(pb::SetKeyLimitsRequest {
                            id: key.id.clone(),
                            limits: Some(limits),
                        })
                        .await)
                    .with_context(|| {
                        format!("key {} was created but its limits were not set", key.id)
                    })?;
                }
                out.insert("id".into(), Val::str(&key.id));
                out.insert("secret".into(), Val::str(r.secret));
            }
            Kind::Ca => {
                let days = u32_of(planned, "validity_days")?;
                let ca = CertificateAuthority::generate(
                    &s(planned, "common_name"),
                    Validity::days(days),
                )?;
                out.insert("id".into(), Val::str(fingerprint(ca.cert_pem())));
                out.insert("cert_pem".into(), Val::str(ca.cert_pem()));
                out.insert("key_pem".into(), Val::str(ca.key_pem()));
            }
            Kind::GatewayCert => {
                let ca = CertificateAuthority::from_pem(
                    &s(planned, "ca_cert_pem"),
                    &s(planned, "ca_key_pem"),
                )
                .context("ca_cert_pem and ca_key_pem are not a usable CA")?;
                let (region, id) = (s(planned, "region"), s(planned, "gateway_id"));
                let pem = ca.issue(
                    &Role::Gateway {
                        region: region.clone(),
                        id: id.clone(),
                        hosts: get(planned, "hosts").as_strings(),
                    },
                    Validity::days(u32_of(planned, "validity_days")?),
                )?;
                out.insert("id".into(), Val::str(format!("{region}/{id}")));
                out.insert("cert_pem".into(), Val::str(pem.cert_pem));
                out.insert("key_pem".into(), Val::str(pem.key_pem));
            }
        }
        Ok(out)
    }

    /// Changes the object in place (only attributes without `force_new` reach here).
    pub async fn update(self, ctx: &Ctx, prior: &Obj, planned: &Obj) -> anyhow::Result<Obj> {
        let mut out = planned.clone();
        let changed = |k: &str| get(prior, k) != get(planned, k);
        match self {
            Kind::Route => {
                let r = ok(ctx
                    .admin()
                    .await?
                    .apply_route(pb::ApplyRouteRequest {
                        route: Some(route_of(planned)?),
                        expected_version: n(prior, "version"),
                    })
                    .await)?;
                out.insert("version".into(), Val::Int(r.version));
            }
            Kind::Schema => return self.write_schema(ctx, Some(prior), planned).await,
            Kind::ApiKey => {
                let mut admin = ctx.admin().await?;
                let id = s(prior, "id");
                if ["publish", "subscribe", "admin"].iter().any(|k| changed(k)) {
                    ok(admin
                        .update_key_scopes(pb::UpdateKeyScopesRequest {
                            id: id.clone(),
                            scopes: Some(scopes_of(planned)),
                        })
                        .await)?;
                }
                if ["msgs_per_sec", "bytes_per_sec", "burst_msgs", "burst_bytes"]
                    .iter()
                    .any(|k| changed(k))
                {
                    ok(admin
                        .set_key_limits(pb::SetKeyLimitsRequest {
                            id: id.clone(),
                            limits: Some(limits_of(planned)?),
                        })
                        .await)?;
                }
                if ["cert_names", "cert_sha256"].iter().any(|k| changed(k)) {
                    ok(admin
                        .set_key_cert_binding(pb::SetKeyCertBindingRequest {
                            id,
                            binding: binding_of(planned),
                        })
                        .await)?;
                }
            }
            // Every attribute of these forces a replacement.
            Kind::Region | Kind::Ca | Kind::GatewayCert => {}
        }
        Ok(out)
    }

    pub async fn delete(self, ctx: &Ctx, prior: &Obj) -> anyhow::Result<()> {
        match self {
            Kind::Region => {
                // Gateways stopped in the same run leave the registry when their lease
                // expires (the control plane's --lease-ttl): wait for that, up to a minute.
                let name = s(prior, "name");
                let mut admin = ctx.admin().await?;
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                loop {
                    match found(
                        admin
                            .delete_region(pb::DeleteRegionRequest { name: name.clone() })
                            .await,
                    ) {
                        Err(e)
                            if e.to_string().contains("live gateways")
                                && std::time::Instant::now() < deadline =>
                        {
                            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                        }
                        r => {
                            r?;
                            break;
                        }
                    }
                }
            }
            Kind::Route => {
                found(
                    ctx.admin()
                        .await?
                        .delete_route(pb::DeleteRouteRequest {
                            name: s(prior, "name"),
                            expected_version: 0,
                        })
                        .await,
                )?;
            }
            Kind::Schema => {
                found(
                    ctx.admin()
                        .await?
                        .delete_schema(pb::DeleteSchemaRequest {
                            subject: s(prior, "subject"),
                            version: 0,
                        })
                        .await,
                )?;
            }
            Kind::ApiKey => {
                found(
                    ctx.admin()
                        .await?
                        .revoke_key(pb::RevokeKeyRequest { id: s(prior, "id") })
                        .await,
                )?;
            }
            Kind::Ca | Kind::GatewayCert => {}
        }
        Ok(())
    }

    /// The object as it is now, or `None` when it is gone.
    pub async fn read(self, ctx: &Ctx, state: &Obj) -> anyhow::Result<Option<Obj>> {
        let mut out = state.clone();
        match self {
            Kind::Region => {
                let name = s(state, "name");
                let regions = ok(ctx
                    .admin()
                    .await?
                    .list_regions(pb::ListRegionsRequest {})
                    .await)?;
                let Some(r) = regions.regions.into_iter().find(|r| r.name == name) else {
                    return Ok(None);
                };
                out.insert("id".into(), Val::str(&name));
                out.insert("created_at_ms".into(), Val::Int(r.created_at_ms));
            }
            Kind::Route => {
                let name = s(state, "name");
                let Some(r) = found(
                    ctx.admin()
                        .await?
                        .get_route(pb::GetRouteRequest { name })
                        .await,
                )?
                else {
                    return Ok(None);
                };
                out.extend(route_obj(&r));
            }
            Kind::Schema => {
                let subject = s(state, "subject");
                let mut admin = ctx.admin().await?;
                let Some(v) = found(
                    admin
                        .get_schema(pb::GetSchemaRequest {
                            subject: subject.clone(),
                            version: 0,
                        })
                        .await,
                )?
                else {
                    return Ok(None);
                };
                let cfg = ok(admin
                    .get_schema_config(pb::GetSchemaConfigRequest {
                        subject: subject.clone(),
                    })
                    .await)?;
                out.insert("id".into(), Val::str(&subject));
                out.insert("format".into(), Val::str(format_name(v.format)));
                out.insert("definition".into(), Val::str(definition_text(&v)));
                out.insert("message".into(), Val::str(&v.message));
                out.insert("version".into(), Val::Int(v.version.into()));
                out.insert(
                    "compatibility".into(),
                    Val::str(compatibility_name(cfg.compatibility)),
                );
                out.insert(
                    "enforcement".into(),
                    Val::str(enforcement_name(cfg.enforcement)),
                );
            }
            Kind::ApiKey => {
                let id = s(state, "id");
                let keys = ok(ctx.admin().await?.list_keys(pb::ListKeysRequest {}).await)?;
                let Some(k) = keys.keys.into_iter().find(|k| k.id == id && !k.revoked) else {
                    return Ok(None);
                };
                let scopes = k.scopes.unwrap_or_default();
                let limits = k.limits.unwrap_or_default();
                out.insert("name".into(), Val::str(&k.name));
                out.insert("publish".into(), Val::strings(scopes.publish));
                out.insert("subscribe".into(), Val::strings(scopes.subscribe));
                out.insert("admin".into(), Val::Bool(scopes.admin));
                out.insert("expires_at_ms".into(), Val::Int(k.expires_at_ms));
                out.insert("msgs_per_sec".into(), Val::Int(limits.msgs_per_sec.into()));
                out.insert(
                    "bytes_per_sec".into(),
                    Val::Int(limits.bytes_per_sec as i64),
                );
                out.insert("burst_msgs".into(), Val::Int(limits.burst_msgs.into()));
                out.insert("burst_bytes".into(), Val::Int(limits.burst_bytes as i64));
                let binding = k.cert_binding.unwrap_or_default();
                out.insert("cert_names".into(), Val::strings(binding.names));
                out.insert("cert_sha256".into(), Val::strings(binding.sha256));
            }
            // Local objects: the state is the truth.
            Kind::Ca | Kind::GatewayCert => {}
        }
        Ok(Some(out))
    }

    /// The state of an existing object named by `id` (then refreshed by [`Self::read`]).
    pub async fn import(self, ctx: &Ctx, id: &str) -> anyhow::Result<Obj> {
        let mut o = Obj::new();
        match self {
            Kind::Region | Kind::Route => {
                o.insert("name".into(), Val::str(id));
            }
            Kind::Schema => {
                o.insert("subject".into(), Val::str(id));
            }
            Kind::ApiKey => {
                o.insert("id".into(), Val::str(id));
            }
            Kind::Ca => {
                let dir = std::path::Path::new(id);
                let read = |f: &str| {
                    std::fs::read_to_string(dir.join(f))
                        .with_context(|| format!("cannot read {}", dir.join(f).display()))
                };
                let (cert, key) = (read("ca.pem")?, read("ca-key.pem")?);
                CertificateAuthority::from_pem(&cert, &key)
                    .with_context(|| format!("{id}/ca.pem is not a usable CA"))?;
                o.insert("id".into(), Val::str(fingerprint(&cert)));
                o.insert("common_name".into(), Val::str("Nexus cluster CA"));
                o.insert("validity_days".into(), Val::Int(3650));
                o.insert("cert_pem".into(), Val::str(cert));
                o.insert("key_pem".into(), Val::str(key));
            }
            Kind::GatewayCert => {
                let Some((dir, name)) = id.rsplit_once(':') else {
                    bail!("import nexus_gateway_certificate as DIR:REGION/GATEWAY_ID, not {id:?}");
                };
                let Some((region, gw)) = name.split_once('/') else {
                    bail!("import nexus_gateway_certificate as DIR:REGION/GATEWAY_ID, not {id:?}");
                };
                let dir = std::path::Path::new(dir);
                let read = |f: std::path::PathBuf| {
                    std::fs::read_to_string(&f)
                        .with_context(|| format!("cannot read {}", f.display()))
                };
                o.insert("id".into(), Val::str(name));
                o.insert("ca_cert_pem".into(), Val::str(read(dir.join("ca.pem"))?));
                o.insert("ca_key_pem".into(), Val::str(read(dir.join("ca-key.pem"))?));
                o.insert("region".into(), Val::str(region));
                o.insert("gateway_id".into(), Val::str(gw));
                o.insert("hosts".into(), Val::List(Vec::new()));
                o.insert("validity_days".into(), Val::Int(397));
                let gdir = dir.join("gateways").join(region);
                o.insert(
                    "cert_pem".into(),
                    Val::str(read(gdir.join(format!("{gw}.pem")))?),
                );
                o.insert(
                    "key_pem".into(),
                    Val::str(read(gdir.join(format!("{gw}-key.pem")))?),
                );
            }
        }
        match self.read(ctx, &o).await? {
            Some(o) => Ok(o),
            None => bail!("{} {id:?} does not exist", self.type_name()),
        }
    }

    async fn write_schema(
        self,
        ctx: &Ctx,
        prior: Option<&Obj>,
        planned: &Obj,
    ) -> anyhow::Result<Obj> {
        let mut out = planned.clone();
        let mut admin = ctx.admin().await?;
        let subject = s(planned, "subject");
        let changed = |k: &str| prior.is_none_or(|p| get(p, k) != get(planned, k));
        // The mode first, so that the registration is checked under it.
        let (compat, enforce) = (get(planned, "compatibility"), get(planned, "enforcement"));
        if (compat.is_known() && !compat.is_null() && changed("compatibility"))
            || (enforce.is_known() && !enforce.is_null() && changed("enforcement"))
        {
            let current = ok(admin
                .get_schema_config(pb::GetSchemaConfigRequest {
                    subject: subject.clone(),
                })
                .await)?;
            let compatibility = compat
                .as_str()
                .and_then(compatibility_from)
                .map_or(current.compatibility, |c| c as i32);
            let enforcement = enforce
                .as_str()
                .and_then(enforcement_from)
                .map_or(current.enforcement, |e| e as i32);
            ok(admin
                .set_schema_config(pb::SetSchemaConfigRequest {
                    config: Some(pb::SchemaConfig {
                        subject: subject.clone(),
                        compatibility,
                        enforcement,
                        tail_preview: None,
                    }),
                })
                .await)?;
        }
        if ["definition", "format", "message"]
            .iter()
            .any(|k| changed(k))
        {
            let v = ok(admin.register_schema(schema_request(planned)?).await)?;
            out.insert("version".into(), Val::Int(v.version.into()));
        }
        out.insert("id".into(), Val::str(&subject));
        if !compat.is_known() || !enforce.is_known() {
            let cfg = ok(admin
                .get_schema_config(pb::GetSchemaConfigRequest { subject })
                .await)?;
            if !compat.is_known() {
                out.insert(
                    "compatibility".into(),
                    Val::str(compatibility_name(cfg.compatibility)),
                );
            }
            if !enforce.is_known() {
                out.insert(
                    "enforcement".into(),
                    Val::str(enforcement_name(cfg.enforcement)),
                );
            }
        }
        Ok(out)
    }
}

/// The CA's id: `sha256:` and the SHA-256 of its DER certificate, as `openssl x509
/// -fingerprint -sha256` shows it (without colons).
fn fingerprint(pem: &str) -> String {
    use sha2::Digest;
    let der = nexus_tls::load::certs_from_pem(pem.as_bytes(), "ca.pem".as_ref())
        .ok()
        .and_then(|c| c.into_iter().next());
    let digest = sha2::Sha256::digest(der.as_ref().map_or(pem.as_bytes(), |d| d.as_ref()));
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn route_of(o: &Obj) -> anyhow::Result<pb::Route> {
    let policy = policy_from(&s(o, "policy"))
        .with_context(|| format!("unknown policy {:?}", s(o, "policy")))?;
    let consistency = consistency_from(&s(o, "consistency"))
        .with_context(|| format!("unknown consistency {:?}", s(o, "consistency")))?;
    let mut weights = std::collections::HashMap::new();
    if let Val::Map(m) = get(o, "weights") {
        for (region, w) in m {
            let w = w
                .as_i64()
                .and_then(|w| u32::try_from(w).ok())
                .with_context(|| format!("weights[{region:?}] must be a whole number >= 0"))?;
            weights.insert(region.clone(), w);
        }
    }
    Ok(pb::Route {
        name: s(o, "name"),
        subjects: get(o, "subjects").as_strings(),
        policy: policy as i32,
        pinned_region: s(o, "pinned_region"),
        weights,
        failover: get(o, "failover").as_strings(),
        consistency: consistency as i32,
        sync_quorum: u32_of(o, "sync_quorum")?,
        sync_timeout_ms: u32_of(o, "sync_timeout_ms")?,
        description: s(o, "description"),
        version: 0,
        updated_at_ms: 0,
    })
}

fn route_obj(r: &pb::Route) -> Obj {
    Obj::from([
        ("id".into(), Val::str(&r.name)),
        ("name".into(), Val::str(&r.name)),
        ("subjects".into(), Val::strings(r.subjects.clone())),
        ("policy".into(), Val::str(policy_name(r.policy))),
        ("pinned_region".into(), Val::str(&r.pinned_region)),
        (
            "weights".into(),
            Val::Map(
                r.weights
                    .iter()
                    .map(|(k, v)| (k.clone(), Val::Int((*v).into())))
                    .collect(),
            ),
        ),
        ("failover".into(), Val::strings(r.failover.clone())),
        (
            "consistency".into(),
            Val::str(consistency_name(r.consistency)),
        ),
        ("sync_quorum".into(), Val::Int(r.sync_quorum.into())),
        ("sync_timeout_ms".into(), Val::Int(r.sync_timeout_ms.into())),
        ("description".into(), Val::str(&r.description)),
        ("version".into(), Val::Int(r.version)),
    ])
}

fn schema_request(o: &Obj) -> anyhow::Result<pb::RegisterSchemaRequest> {
    let format = format_from(&s(o, "format"))
        .with_context(|| format!("unknown format {:?}", s(o, "format")))?;
    let text = s(o, "definition");
    let definition = match format {
        pb::SchemaFormat::Protobuf => base64_decode(text.trim())
            .context("a protobuf definition must be a base64-encoded FileDescriptorSet")?,
        _ => text.into_bytes(),
    };
    Ok(pb::RegisterSchemaRequest {
        subject: s(o, "subject"),
        format: format as i32,
        definition: definition.into(),
        message: s(o, "message"),
    })
}

fn definition_text(v: &pb::SchemaVersion) -> String {
    if v.format == pb::SchemaFormat::Protobuf as i32 {
        base64_encode(&v.definition)
    } else {
        String::from_utf8_lossy(&v.definition).into_owned()
    }
}

fn base64_encode(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn base64_decode(text: &str) -> anyhow::Result<Vec<u8>> {
    use base64::Engine;
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    Ok(base64::engine::general_purpose::STANDARD.decode(compact)?)
}

fn scopes_of(o: &Obj) -> pb::KeyScopes {
    pb::KeyScopes {
        publish: get(o, "publish").as_strings(),
        subscribe: get(o, "subscribe").as_strings(),
        admin: get(o, "admin").as_bool().unwrap_or(false),
    }
}

fn binding_of(o: &Obj) -> Option<pb::KeyCertBinding> {
    let binding = pb::KeyCertBinding {
        sha256: get(o, "cert_sha256").as_strings(),
        names: get(o, "cert_names").as_strings(),
    };
    (binding != pb::KeyCertBinding::default()).then_some(binding)
}

fn limits_of(o: &Obj) -> anyhow::Result<pb::KeyLimits> {
    Ok(pb::KeyLimits {
        msgs_per_sec: u32_of(o, "msgs_per_sec")?,
        bytes_per_sec: u64_of(o, "bytes_per_sec")?,
        burst_msgs: u32_of(o, "burst_msgs")?,
        burst_bytes: u64_of(o, "burst_bytes")?,
    })
}

impl DataKind {
    pub const ALL: [DataKind; 2] = [DataKind::Topology, DataKind::Gateways];

    pub fn type_name(self) -> &'static str {
        match self {
            DataKind::Topology => "nexus_topology",
            DataKind::Gateways => "nexus_gateways",
        }
    }

    pub fn from_name(name: &str) -> Option<DataKind> {
        DataKind::ALL.into_iter().find(|k| k.type_name() == name)
    }

    pub fn description(self) -> &'static str {
        match self {
            DataKind::Topology => {
                "The regions the control plane knows and the live gateways of each."
            }
            DataKind::Gateways => "The live gateways (of one region, or all).",
        }
    }

    pub fn attrs(self) -> Vec<Attr> {
        let gateways = Attr::computed(
            "gateways",
            Ty::Raw(GATEWAY_LIST),
            "Live gateways: id, region, adapter_addr, metrics_addr, federation_addr, sessions, draining, config_version.",
        );
        match self {
            DataKind::Topology => vec![
                Attr::computed("id", Ty::Str, "Always \"topology\"."),
                Attr::computed("regions", Ty::ListStr, "Region names."),
                gateways,
                Attr::computed(
                    "config_version",
                    Ty::Num,
                    "The control plane's config version.",
                ),
            ],
            DataKind::Gateways => vec![
                Attr::computed("id", Ty::Str, "The region, or \"*\"."),
                Attr::optional(
                    "region",
                    Ty::Str,
                    Val::str(""),
                    "Only this region's gateways (empty: all).",
                ),
                gateways,
            ],
        }
    }

    pub async fn read(self, ctx: &Ctx, config: &Obj) -> anyhow::Result<Obj> {
        let mut admin = ctx.admin().await?;
        let mut out = config.clone();
        match self {
            DataKind::Topology => {
                let t = ok(admin.get_topology(pb::GetTopologyRequest {}).await)?;
                let mut regions = Vec::new();
                let mut gateways = Vec::new();
                for r in &t.regions {
                    regions.push(
                        r.region
                            .as_ref()
                            .map(|r| r.name.clone())
                            .unwrap_or_default(),
                    );
                    gateways.extend(r.gateways.iter().map(gateway_val));
                }
                out.insert("id".into(), Val::str("topology"));
                out.insert("regions".into(), Val::strings(regions));
                out.insert("gateways".into(), Val::List(gateways));
                out.insert("config_version".into(), Val::Int(t.config_version));
            }
            DataKind::Gateways => {
                let region = s(config, "region");
                let g = ok(admin
                    .list_gateways(pb::ListGatewaysRequest {
                        region: region.clone(),
                    })
                    .await)?;
                let mut list = g.gateways;
                list.sort_by(|a, b| (&a.region, &a.id).cmp(&(&b.region, &b.id)));
                out.insert(
                    "id".into(),
                    Val::str(if region.is_empty() {
                        "*".to_owned()
                    } else {
                        region.clone()
                    }),
                );
                out.insert("region".into(), Val::str(region));
                out.insert(
                    "gateways".into(),
                    Val::List(list.iter().map(gateway_val).collect()),
                );
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for data in [&b""[..], b"a", b"ab", b"abc", b"abcd", &[0, 255, 7, 128, 9]] {
            assert_eq!(base64_decode(&base64_encode(data)).unwrap(), data);
        }
        assert_eq!(base64_encode(b"Man"), "TWFu");
        assert_eq!(base64_encode(b"Ma"), "TWE=");
        assert!(base64_decode("a*b").is_err());
    }
}
