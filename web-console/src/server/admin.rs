//! The control plane's Admin API as the console uses it: one lazily connected channel, a
//! client per call carrying the caller's admin key as `authorization: Bearer`, and the
//! translation of Admin API records into the pages' [`model`](crate::model) types.

use std::time::Duration;

use anyhow::Context;
use nexus_proto::v1::admin_client::AdminClient;
use nexus_proto::v1::*;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use super::time::fmt_ms;
use crate::model::{KeyLimitsForm, KeyRow, RouteRow, SchemaSubjectRow};

/// Adds the admin key to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}

pub type Admin = AdminClient<InterceptedService<Channel, Bearer>>;

/// Makes Admin API clients over one shared channel.
#[derive(Clone)]
pub struct AdminConnector {
    channel: Channel,
}

impl AdminConnector {
    /// `ca`: PEM CA(s) to verify an `https://` control plane with (default: system roots).
    pub fn new(addr: &str, ca: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let url = if addr.contains("://") {
            addr.to_owned()
        } else {
            format!("http://{addr}")
        };
        let mut endpoint = Endpoint::from_shared(url.clone())
            .with_context(|| format!("{addr:?} is not a control plane address"))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10));
        if url.starts_with("https://") {
            use tonic::transport::{Certificate, ClientTlsConfig};
            let tls =
                match ca {
                    Some(ca) => ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(std::fs::read(ca).with_context(
                            || format!("cannot read the CA file {}", ca.display()),
                        )?)),
                    None => ClientTlsConfig::new().with_native_roots(),
                };
            endpoint = endpoint
                .tls_config(tls)
                .with_context(|| format!("TLS setup for {url}"))?;
        }
        let channel = endpoint.connect_lazy();
        Ok(Self { channel })
    }

    /// A client that sends `key` (if any) with every call.
    pub fn client(&self, key: Option<&str>) -> Result<Admin, tonic::Status> {
        let bearer = match key {
            Some(k) => Some(format!("Bearer {}", k.trim()).parse().map_err(|_| {
                tonic::Status::invalid_argument(
                    "the admin key contains characters that cannot be sent",
                )
            })?),
            None => None,
        };
        Ok(AdminClient::with_interceptor(
            self.channel.clone(),
            Bearer(bearer),
        ))
    }
}

// === names ===

pub fn policy_name(p: i32) -> &'static str {
    match RoutePolicy::try_from(p).unwrap_or(RoutePolicy::Unspecified) {
        RoutePolicy::LocalFirst | RoutePolicy::Unspecified => "local_first",
        RoutePolicy::Nearest => "nearest",
        RoutePolicy::Pinned => "pinned",
        RoutePolicy::Weighted => "weighted",
        RoutePolicy::Broadcast => "broadcast",
    }
}

pub fn policy_from(s: &str) -> Option<RoutePolicy> {
    Some(match s {
        "local_first" => RoutePolicy::LocalFirst,
        "nearest" => RoutePolicy::Nearest,
        "pinned" => RoutePolicy::Pinned,
        "weighted" => RoutePolicy::Weighted,
        "broadcast" => RoutePolicy::Broadcast,
        _ => return None,
    })
}

pub fn consistency_name(c: i32) -> &'static str {
    match Consistency::try_from(c).unwrap_or(Consistency::Unspecified) {
        Consistency::Local => "local",
        Consistency::BestEffort => "best_effort",
        Consistency::Async => "async",
        Consistency::Sync => "sync",
        Consistency::Unspecified => "unspecified",
    }
}

pub fn consistency_from(s: &str) -> Option<Consistency> {
    Some(match s {
        "local" => Consistency::Local,
        "best_effort" => Consistency::BestEffort,
        "async" => Consistency::Async,
        "sync" => Consistency::Sync,
        _ => return None,
    })
}

pub fn format_name(f: i32) -> &'static str {
    match SchemaFormat::try_from(f).unwrap_or(SchemaFormat::Unspecified) {
        SchemaFormat::JsonSchema => "json",
        SchemaFormat::Protobuf => "protobuf",
        SchemaFormat::Unspecified => "-",
    }
}

pub fn compatibility_name(c: i32) -> String {
    Compatibility::try_from(c).map_or_else(|_| "-".to_owned(), |c| c.as_str_name().to_owned())
}

pub fn enforcement_name(e: i32) -> &'static str {
    match Enforcement::try_from(e).unwrap_or(Enforcement::Unspecified) {
        Enforcement::Off | Enforcement::Unspecified => "off",
        Enforcement::Warn => "warn",
        Enforcement::Reject => "reject",
    }
}

// === records to rows ===

pub fn route_row(r: &Route) -> RouteRow {
    let policy = match RoutePolicy::try_from(r.policy) {
        Ok(RoutePolicy::Pinned) => format!("pinned({})", r.pinned_region),
        Ok(RoutePolicy::Weighted) => {
            let mut w: Vec<_> = r.weights.iter().map(|(k, v)| format!("{k}={v}")).collect();
            w.sort();
            format!("weighted({})", w.join(","))
        }
        _ => policy_name(r.policy).to_owned(),
    };
    let consistency = if r.consistency == Consistency::Sync as i32 {
        if r.sync_quorum == 0 {
            "sync (all regions)".to_owned()
        } else {
            format!("sync (quorum {})", r.sync_quorum)
        }
    } else {
        consistency_name(r.consistency).to_owned()
    };
    RouteRow {
        name: r.name.clone(),
        subjects: r.subjects.clone(),
        policy,
        failover: r.failover.clone(),
        consistency,
        description: r.description.clone(),
        version: r.version,
        updated: fmt_ms(r.updated_at_ms),
        replication_lag_ms: None,
        spool_depth: None,
        reporting_gateways: 0,
    }
}

pub fn subject_row(s: &SchemaSubject) -> SchemaSubjectRow {
    SchemaSubjectRow {
        subject: s.subject.clone(),
        latest_version: s.latest_version,
        versions: s.versions.clone(),
        format: format_name(s.format).to_owned(),
        compatibility: compatibility_name(s.compatibility),
        enforcement: enforcement_name(s.enforcement).to_owned(),
    }
}

pub fn key_row(k: &ApiKey, now_ms: i64) -> KeyRow {
    let scopes = k.scopes.clone().unwrap_or_default();
    KeyRow {
        id: k.id.clone(),
        name: k.name.clone(),
        publish: scopes.publish,
        subscribe: scopes.subscribe,
        admin: scopes.admin,
        created: fmt_ms(k.created_at_ms),
        expires: fmt_ms(k.expires_at_ms),
        revoked: k.revoked,
        previous_valid_until: (k.previous_valid_until_ms > now_ms)
            .then(|| fmt_ms(k.previous_valid_until_ms)),
        version: k.version,
        limits: k
            .limits
            .map(|l| KeyLimitsForm {
                msgs_per_sec: l.msgs_per_sec,
                burst_msgs: l.burst_msgs,
                bytes_per_sec: l.bytes_per_sec,
                burst_bytes: l.burst_bytes,
            })
            .unwrap_or_default(),
        cert_sha256: k
            .cert_binding
            .as_ref()
            .map(|b| b.sha256.clone())
            .unwrap_or_default(),
        cert_names: k
            .cert_binding
            .as_ref()
            .map(|b| b.names.clone())
            .unwrap_or_default(),
    }
}
