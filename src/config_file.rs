//! One TOML file for every role: `[gateway]`, `[federation]` (the gateway's links to other
//! regions and its regional cluster), `[control_plane]` and `[console]`. Each process reads
//! the sections of its role (`nexus gateway --config FILE` reads `[gateway]` and
//! `[federation]`, `nexus control-plane --config FILE` reads `[control_plane]`, ...), so one
//! file can describe a host that runs several roles. A file without sections is a gateway's
//! (the format from before sections existed).
//!
//! Precedence, for every role: built-in defaults, then the file, then environment variables
//! and flags (a flag beats its variable). Flags have the same defaults as the settings here;
//! a flag counts only when it was given (`ValueSource::CommandLine` or `EnvVariable`).
//!
//! The file is strict: unknown sections and keys, wrong types and bad values are errors that
//! name the key and, for syntax and type errors, the line. `nexus config check FILE` loads a
//! file this way, validates every section and prints the effective settings.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::ArgMatches;
use clap::parser::ValueSource;
use nexus_gateway::GatewayConfig;
use serde::{Deserialize, Serialize};

/// The sections a file may have.
pub const SECTIONS: [&str; 4] = ["gateway", "federation", "control_plane", "console"];

/// A loaded config file: the sections it has.
#[derive(Debug, Clone, Default)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub gateway: Option<GatewayConfig>,
    pub federation: Option<FederationSettings>,
    pub control_plane: Option<ControlPlaneSettings>,
    pub console: Option<ConsoleSettings>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Sections {
    gateway: Option<GatewayConfig>,
    federation: Option<FederationSettings>,
    control_plane: Option<ControlPlaneSettings>,
    console: Option<ConsoleSettings>,
}

impl ConfigFile {
    /// Reads and parses `path` (no validation beyond types; see [`ConfigFile::check`]).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text, path)
            .with_context(|| format!("config file {} is not valid", path.display()))
    }

    /// Parses a file's text; `path` is only remembered.
    pub fn parse(text: &str, path: &Path) -> anyhow::Result<Self> {
        // Syntax first (its errors carry the line), then which layout the file uses.
        let table: toml::Table = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        let sectioned = table.iter().any(|(k, v)| {
            matches!(k.as_str(), "gateway" | "federation" | "console")
                || (k == "control_plane" && v.is_table())
        });
        if !sectioned {
            let gateway = GatewayConfig::from_toml(text).map_err(|e| match e {
                nexus_gateway::config::ConfigError::Parse { message, .. } => {
                    anyhow::anyhow!("{message}")
                }
                other => anyhow::anyhow!("{other}"),
            })?;
            return Ok(Self {
                path: path.to_owned(),
                gateway: Some(gateway),
                ..Self::default()
            });
        }
        let s: Sections = toml::from_str(text).map_err(|e| {
            let mut msg = e.to_string();
            if msg.contains("unknown field") && e.span().is_some_and(|s| !in_table(text, s.start)) {
                msg.push_str(
                    "\n(a file with sections has only [gateway], [federation], [control_plane] \
                     and [console] at the top level: gateway settings go under [gateway])",
                );
            }
            anyhow::anyhow!("{msg}")
        })?;
        Ok(Self {
            path: path.to_owned(),
            gateway: s.gateway,
            federation: s.federation,
            control_plane: s.control_plane,
            console: s.console,
        })
    }

    /// Validates every section present, naming the section and key of the first problem.
    pub fn check(&self) -> anyhow::Result<()> {
        if let Some(g) = &self.gateway {
            g.validate().context("[gateway]")?;
        }
        if let Some(f) = &self.federation {
            f.validate().context("[federation]")?;
        }
        if let Some(c) = &self.control_plane {
            c.validate().context("[control_plane]")?;
        }
        if let Some(c) = &self.console {
            c.validate().context("[console]")?;
        }
        Ok(())
    }

    /// The effective settings of every section present, as TOML (defaults filled in).
    pub fn effective_toml(&self) -> anyhow::Result<String> {
        #[derive(Serialize)]
        struct Out<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            gateway: Option<&'a GatewayConfig>,
            #[serde(skip_serializing_if = "Option::is_none")]
            federation: Option<&'a FederationSettings>,
            #[serde(skip_serializing_if = "Option::is_none")]
            control_plane: Option<&'a ControlPlaneSettings>,
            #[serde(skip_serializing_if = "Option::is_none")]
            console: Option<&'a ConsoleSettings>,
        }
        toml::to_string(&Out {
            gateway: self.gateway.as_ref(),
            federation: self.federation.as_ref(),
            control_plane: self.control_plane.as_ref(),
            console: self.console.as_ref(),
        })
        .context("cannot print the effective settings")
    }

    /// The names of the sections present.
    pub fn sections(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.gateway.is_some() {
            out.push("gateway");
        }
        if self.federation.is_some() {
            out.push("federation");
        }
        if self.control_plane.is_some() {
            out.push("control_plane");
        }
        if self.console.is_some() {
            out.push("console");
        }
        out
    }

    /// The section a role needs, or an error saying the file lacks it.
    pub fn require<'a, T>(&'a self, section: &str, value: &'a Option<T>) -> anyhow::Result<&'a T> {
        value.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "config file {} has no [{section}] section (it has: {})",
                self.path.display(),
                match self.sections() {
                    s if s.is_empty() => "nothing".to_owned(),
                    s => s
                        .iter()
                        .map(|s| format!("[{s}]"))
                        .collect::<Vec<_>>()
                        .join(", "),
                }
            )
        })
    }
}

/// Whether byte `at` of `text` lies below a `[table]` header (rather than at the top level).
fn in_table(text: &str, at: usize) -> bool {
    text[..at.min(text.len())]
        .lines()
        .any(|l| l.trim_start().starts_with('['))
}

/// Whether `id` was given on the command line or in its environment variable (rather than
/// left at its default).
pub fn explicit(m: &ArgMatches, id: &str) -> bool {
    matches!(
        m.try_get_raw(id).ok().and(m.value_source(id)),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// Durations as strings in the flags' syntax (`500ms`, `10s`, `5m`, `1h`, `30d`).
pub mod duration_str {
    use super::*;

    pub fn format(d: Duration) -> String {
        let ms = d.as_millis();
        const DAY: u128 = 86_400_000;
        if ms == 0 {
            "0s".into()
        } else if ms.is_multiple_of(DAY) {
            format!("{}d", ms / DAY)
        } else if ms.is_multiple_of(3_600_000) {
            format!("{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            format!("{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            format!("{}s", ms / 1000)
        } else {
            format!("{ms}ms")
        }
    }

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        crate::ctl::parse_duration(&s).map_err(serde::de::Error::custom)
    }

    /// The same for an optional duration.
    pub mod option {
        use super::*;

        pub fn serialize<S: serde::Serializer>(
            d: &Option<Duration>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.serialize_str(&format(*d)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: serde::Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Duration>, D::Error> {
            let s = String::deserialize(d)?;
            crate::ctl::parse_duration(&s)
                .map(Some)
                .map_err(serde::de::Error::custom)
        }
    }
}

/// `required` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AdminAuth {
    #[default]
    Required,
    Off,
}

/// TLS of a listener: certificate, key, and (where it applies) the CA clients must come from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerTls {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

/// `[control_plane]`: the settings of `nexus control-plane` (its flags, by the same names).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlPlaneSettings {
    /// gRPC address of the Admin API and config push.
    pub listen: SocketAddr,
    /// etcd endpoints; empty uses the embedded store in `data_dir`.
    pub etcd: Vec<String>,
    pub data_dir: PathBuf,
    #[serde(with = "duration_str")]
    pub etcd_connect_timeout: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_listen: Option<SocketAddr>,
    pub dns_zone: String,
    #[serde(with = "duration_str")]
    pub dns_ttl: Duration,
    #[serde(with = "duration_str")]
    pub lease_ttl: Duration,
    pub admin_auth: AdminAuth,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_key_file: Option<PathBuf>,
    /// HTTP address for `/healthz`, `/readyz` and `/metrics`; none when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Plaintext gRPC address serving only `grpc.health.v1`; none when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_listen: Option<SocketAddr>,
    pub insecure: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_ca: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_password_file: Option<PathBuf>,
    pub audit_max_records: u64,
    #[serde(with = "duration_str::option", skip_serializing_if = "Option::is_none")]
    pub audit_max_age: Option<Duration>,
    /// TLS of the Admin API and config push.
    pub tls: ListenerTls,
}

impl Default for ControlPlaneSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7400".parse().expect("static address"),
            etcd: Vec::new(),
            data_dir: "nexus-data".into(),
            etcd_connect_timeout: Duration::from_secs(30),
            dns_listen: None,
            dns_zone: "nexus.local".into(),
            dns_ttl: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(10),
            admin_auth: AdminAuth::Required,
            admin_key_file: None,
            metrics_listen: None,
            health_listen: None,
            insecure: false,
            etcd_ca: None,
            etcd_cert: None,
            etcd_key: None,
            etcd_user: None,
            etcd_password_file: None,
            audit_max_records: nexus_control_plane::audit::retention::DEFAULT_MAX_RECORDS,
            audit_max_age: None,
            tls: ListenerTls::default(),
        }
    }
}

impl ControlPlaneSettings {
    /// Checks the settings together; the error names the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.lease_ttl < Duration::from_secs(1) {
            bail!("`lease_ttl` (--lease-ttl) must be at least 1s");
        }
        if self.dns_ttl < Duration::from_secs(1) {
            bail!("`dns_ttl` (--dns-ttl) must be at least 1s");
        }
        if self.audit_max_records == 0 && self.audit_max_age.is_none() {
            bail!(
                "`audit_max_records` (--audit-max-records) 0 needs `audit_max_age` (--audit-max-age): the audit trail must have a bound"
            );
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            bail!(
                "`tls.cert` and `tls.key` (--tls-cert, --tls-key) go together: give both or neither"
            );
        }
        if self.tls.client_ca.is_some() && self.tls.cert.is_none() {
            bail!("`tls.client_ca` (--tls-client-ca) needs `tls.cert` and `tls.key`");
        }
        if self.etcd_cert.is_some() != self.etcd_key.is_some() {
            bail!(
                "`etcd_cert` and `etcd_key` (--etcd-cert, --etcd-key) go together: give both or neither"
            );
        }
        if self.etcd_password_file.is_some() && self.etcd_user.is_none() {
            bail!("`etcd_password_file` (--etcd-password-file) needs `etcd_user` (--etcd-user)");
        }
        if self.dns_zone.is_empty() {
            bail!("`dns_zone` (--dns-zone) must not be empty");
        }
        if let Some(m) = self.metrics_listen
            && m == self.listen
            && m.port() != 0
        {
            bail!("`metrics_listen` (--metrics-listen) {m} is the same address as `listen`");
        }
        Ok(())
    }
}

/// `[console]`: the settings of `nexus console`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleSettings {
    pub listen: SocketAddr,
    /// The control plane's Admin API (host:port or URL).
    pub control_plane: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_key_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_plane_ca: Option<PathBuf>,
    pub insecure: bool,
    /// HTTPS: `cert` and `key` (no `client_ca`: operators log in with admin keys).
    pub tls: ListenerTls,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7490".parse().expect("static address"),
            control_plane: "127.0.0.1:7400".into(),
            admin_key_file: None,
            site: None,
            control_plane_ca: None,
            insecure: false,
            tls: ListenerTls::default(),
        }
    }
}

impl ConsoleSettings {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            bail!("`tls.cert` and `tls.key` go together: give both or neither");
        }
        if self.tls.client_ca.is_some() {
            bail!(
                "`tls.client_ca` does not apply to the console (operators log in with admin keys)"
            );
        }
        if self.control_plane.trim().is_empty() {
            bail!("`control_plane` must name the control plane's Admin API");
        }
        Ok(())
    }
}

/// `[federation]`: a gateway's links to other regions and to the other gateways of its
/// region (the `nexus gateway` federation flags, without their `federation-` prefix).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationSettings {
    /// UDP address of the QUIC endpoint; federation is off when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// The address registered for other gateways to dial (default: the bound `listen`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<SocketAddr>,
    /// Peer regions' federation addresses: `region = "IP:PORT"`.
    pub peers: BTreeMap<String, SocketAddr>,
    /// Other gateways of this region (without a control plane).
    pub cluster_peers: Vec<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spool_path: Option<PathBuf>,
    pub spool_max_bytes: u64,
    pub spool_max_age_s: u64,
    /// `reject` or `drop_oldest`.
    pub spool_overflow: String,
    pub dedup_window_s: u64,
    pub dedup_max_ids: usize,
    pub spool_replicas: u8,
    pub replica_takeover_ms: u64,
    pub replica_timeout_ms: u64,
    pub cluster_grace_ms: u64,
    pub link_dead_after_ms: u64,
    /// Data-stream compression of links to other regions: `zstd`, `lz4` or `off`.
    pub link_compression: String,
    /// Data-stream compression of cluster links: `zstd`, `lz4` or `off`.
    pub cluster_compression: String,
}

impl Default for FederationSettings {
    fn default() -> Self {
        Self {
            listen: None,
            advertise: None,
            peers: BTreeMap::new(),
            cluster_peers: Vec::new(),
            cert: None,
            key: None,
            ca: None,
            spool_path: None,
            spool_max_bytes: 1 << 30,
            spool_max_age_s: 86_400,
            spool_overflow: "reject".into(),
            dedup_window_s: 120,
            dedup_max_ids: 1_000_000,
            spool_replicas: 1,
            replica_takeover_ms: 3000,
            replica_timeout_ms: 5000,
            cluster_grace_ms: 1000,
            link_dead_after_ms: 0,
            link_compression: "zstd".into(),
            cluster_compression: "off".into(),
        }
    }
}

impl FederationSettings {
    pub fn validate(&self) -> anyhow::Result<()> {
        for (key, value) in [
            ("link_compression", &self.link_compression),
            ("cluster_compression", &self.cluster_compression),
        ] {
            if let Err(e) = nexus_federation::link::compression::parse_codec(value) {
                bail!("`{key}`: {e}");
            }
        }
        if self
            .spool_overflow
            .parse::<nexus_federation::replication::Overflow>()
            .is_err()
        {
            bail!(
                "`spool_overflow` {:?} must be \"reject\" or \"drop_oldest\"",
                self.spool_overflow
            );
        }
        if !(1..=2).contains(&self.spool_replicas) {
            bail!("`spool_replicas` {} must be 1 or 2", self.spool_replicas);
        }
        if self.listen.is_none()
            && (!self.peers.is_empty()
                || !self.cluster_peers.is_empty()
                || self.advertise.is_some())
        {
            bail!("`peers`, `cluster_peers` and `advertise` need `listen`");
        }
        if self.listen.is_some() && (self.cert.is_none() || self.key.is_none() || self.ca.is_none())
        {
            bail!("`listen` needs `cert`, `key` and `ca` (federation links are mutual TLS)");
        }
        for region in self.peers.keys() {
            if region.is_empty()
                || !region
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                bail!("`peers`: {region:?} is not a region name (a-z, 0-9 and '-')");
            }
        }
        Ok(())
    }

    /// The flags' form, which the federation wiring (crate::federation) takes.
    pub fn to_args(&self) -> crate::federation::FederationArgs {
        crate::federation::FederationArgs {
            federation_listen: self.listen,
            federation_advertise: self.advertise,
            peers: self.peers.iter().map(|(r, a)| (r.clone(), *a)).collect(),
            cluster_peers: self.cluster_peers.clone(),
            federation_cert: self.cert.clone(),
            federation_key: self.key.clone(),
            federation_ca: self.ca.clone(),
            spool_path: self.spool_path.clone(),
            spool_max_bytes: self.spool_max_bytes,
            spool_max_age_s: self.spool_max_age_s,
            spool_overflow: self
                .spool_overflow
                .parse()
                .unwrap_or(nexus_federation::replication::Overflow::Reject),
            dedup_window_s: self.dedup_window_s,
            dedup_max_ids: self.dedup_max_ids,
            spool_replicas: self.spool_replicas,
            replica_takeover_ms: self.replica_takeover_ms,
            replica_timeout_ms: self.replica_timeout_ms,
            cluster_grace_ms: self.cluster_grace_ms,
            link_dead_after_ms: self.link_dead_after_ms,
            link_compression: self.link_compression.clone(),
            cluster_compression: self.cluster_compression.clone(),
        }
    }

    /// These settings with every flag given on the command line (or its variable) applied.
    pub fn overlay(
        mut self,
        args: &crate::federation::FederationArgs,
        m: &ArgMatches,
    ) -> anyhow::Result<Self> {
        let e = |id: &str| explicit(m, id);
        if e("federation_listen") {
            self.listen = args.federation_listen;
        }
        if e("federation_advertise") {
            self.advertise = args.federation_advertise;
        }
        if e("peers") {
            self.peers = args.peers.iter().cloned().collect();
        }
        if e("cluster_peers") {
            self.cluster_peers = args.cluster_peers.clone();
        }
        if e("federation_cert") {
            self.cert = args.federation_cert.clone();
        }
        if e("federation_key") {
            self.key = args.federation_key.clone();
        }
        if e("federation_ca") {
            self.ca = args.federation_ca.clone();
        }
        if e("spool_path") {
            self.spool_path = args.spool_path.clone();
        }
        if e("spool_max_bytes") {
            self.spool_max_bytes = args.spool_max_bytes;
        }
        if e("spool_max_age_s") {
            self.spool_max_age_s = args.spool_max_age_s;
        }
        if e("spool_overflow") {
            self.spool_overflow = match args.spool_overflow {
                nexus_federation::replication::Overflow::Reject => "reject",
                nexus_federation::replication::Overflow::DropOldest => "drop_oldest",
            }
            .into();
        }
        if e("dedup_window_s") {
            self.dedup_window_s = args.dedup_window_s;
        }
        if e("dedup_max_ids") {
            self.dedup_max_ids = args.dedup_max_ids;
        }
        if e("spool_replicas") {
            self.spool_replicas = args.spool_replicas;
        }
        if e("replica_takeover_ms") {
            self.replica_takeover_ms = args.replica_takeover_ms;
        }
        if e("replica_timeout_ms") {
            self.replica_timeout_ms = args.replica_timeout_ms;
        }
        if e("cluster_grace_ms") {
            self.cluster_grace_ms = args.cluster_grace_ms;
        }
        if e("link_dead_after_ms") {
            self.link_dead_after_ms = args.link_dead_after_ms;
        }
        if e("link_compression") {
            self.link_compression = args.link_compression.clone();
        }
        if e("cluster_compression") {
            self.cluster_compression = args.cluster_compression.clone();
        }
        Ok(self)
    }
}
