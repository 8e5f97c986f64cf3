//! `GatewayConfig`: the one typed source of truth for a gateway's settings.
//!
//! Values come from defaults, then an optional TOML file, then command-line flags and
//! environment variables (applied by the binary). `validate` names the offending field in
//! every error. `docs/operations.md` lists every setting.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::balancer::BalancerConfig;

/// Errors loading or validating configuration; each names the field or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("invalid value for `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// What the gateway does when a subscriber's outbound queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlowConsumerPolicy {
    /// The publisher waits (up to `max_wait_ms`) for room; if the subscriber still has not
    /// drained by then it is disconnected. Nothing is dropped silently.
    Backpressure,
    /// The message is dropped for that subscriber only, counted, and the subscriber is told
    /// with a SLOW_CONSUMER error frame.
    Drop,
    /// The subscriber's session is closed at once.
    Disconnect,
}

impl SlowConsumerPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backpressure => "backpressure",
            Self::Drop => "drop",
            Self::Disconnect => "disconnect",
        }
    }
}

/// Whether sessions must present an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Every session presents a key the control plane issued; scopes are enforced.
    Required,
    /// Anyone may connect and do anything (development only).
    Off,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Region this gateway serves, e.g. `us-east`.
    pub region: String,
    /// Stable id of this gateway; generated when empty.
    pub gateway_id: String,
    /// gRPC listen address for adapters.
    pub listen: SocketAddr,
    /// HTTP listen address for `/metrics`, `/healthz`, `/readyz`.
    pub metrics_listen: SocketAddr,
    /// Default request timeout when a request does not carry one.
    pub request_timeout_ms: u64,
    /// How long shutdown waits for in-flight requests to finish.
    pub shutdown_grace_ms: u64,
    /// Control plane to register with and take config from (`http://host:port`); empty
    /// runs standalone.
    pub control_plane: String,
    /// Where the last good config snapshot is kept across restarts.
    pub state_dir: String,
    /// Address registered for adapters to reach this gateway; defaults to `listen`.
    pub advertise: Option<SocketAddr>,
    /// A plaintext gRPC address serving only `grpc.health.v1` (for probes that cannot speak
    /// TLS, such as the kubelet's); none when absent. The adapter listener serves it too.
    pub health_listen: Option<SocketAddr>,
    /// `required` (default) or `off`.
    pub auth: AuthMode,
    /// Federation (QUIC) address registered for other regions; set by the binary when
    /// federation is on, never from a config file.
    #[serde(skip)]
    pub federation_addr: Option<SocketAddr>,
    pub limits: LimitsConfig,
    pub slow_consumer: SlowConsumerConfig,
    pub balancer: BalancerSettings,
    /// Message tracing (`nexusctl trace`, docs/trace.md).
    pub trace: TraceConfig,
    /// TLS on the adapter listener (docs/security.md).
    pub tls: TlsConfig,
    /// TLS towards the control plane and the identity shown to it.
    pub control_plane_tls: ControlPlaneTlsConfig,
    /// Serve plaintext on a non-loopback address anyway (a warning at start). Without it a
    /// gateway without `tls` refuses to listen anywhere but loopback.
    pub insecure: bool,
}

/// TLS of the adapter listener. Files are re-read when they change (new sessions get the
/// new certificate; live sessions keep theirs).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain served to adapters.
    pub cert: Option<std::path::PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<std::path::PathBuf>,
    /// PEM CA(s): adapters must present a client certificate issued by one of them.
    pub client_ca: Option<std::path::PathBuf>,
}

/// How the gateway reaches an `https://` control plane.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ControlPlaneTlsConfig {
    /// PEM CA(s) to verify the control plane with (default: the system's roots).
    pub ca: Option<std::path::PathBuf>,
    /// This gateway's certificate (default: `tls.cert`): it must be issued for
    /// `<gateway-id>.<region>.fed.nexus` (`nexus certs --gateway region/id`); the control
    /// plane registers the gateway only under that identity.
    pub cert: Option<std::path::PathBuf>,
    /// Key of `cert` (default: `tls.key`).
    pub key: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TraceConfig {
    /// Fraction of messages whose hops are recorded (head sampling by message id); messages
    /// with the header `nexus-trace: 1` are always recorded. 0 records forced ones only.
    /// The default, 1 in 1000, keeps the average cost near the 9-ns sampling decision
    /// (docs/trace.md §3).
    pub sample_rate: f64,
    /// Memory the trace records may use; the oldest are evicted beyond it.
    pub max_bytes: u64,
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self {
            sample_rate: 0.001,
            max_bytes: 16 * 1024 * 1024,
        }
    }
}

impl TraceConfig {
    pub fn to_settings(&self) -> crate::trace_store::TraceSettings {
        crate::trace_store::TraceSettings {
            sample_rate: self.sample_rate,
            max_bytes: self.max_bytes.min(usize::MAX as u64) as usize,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest payload accepted, in bytes.
    pub max_payload: u64,
    /// Most subscriptions one session may hold.
    pub max_subscriptions: u32,
    /// Most concurrent sessions.
    pub max_connections: u32,
    /// Most requests one session may have outstanding.
    pub max_pending_requests: u32,
    /// Most open streams per session.
    pub max_streams: u32,
    /// How long a session may take to send its Hello before it is closed.
    pub hello_timeout_ms: u64,
    /// Sessions open without a completed Hello, in all (they never count against
    /// `max_connections`, so they cannot lock out keyed clients).
    pub max_unauthenticated: u32,
    /// Sessions open without a completed Hello from one address (IPv6: one /64).
    pub max_unauthenticated_per_address: u32,
    /// TCP connections open on the adapter listener, in all.
    pub max_transport_connections: u32,
    /// TCP connections open from one address (IPv6: one /64).
    pub max_transport_connections_per_address: u32,
    /// A TCP connection with no gRPC call open for this long is closed.
    pub idle_connection_timeout_ms: u64,
    /// Most concurrent gRPC calls (sessions and unary calls) on one connection (HTTP/2
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_calls_per_connection: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlowConsumerConfig {
    pub policy: SlowConsumerPolicy,
    /// Bytes queued towards one session before the policy applies.
    pub max_pending_bytes: u64,
    /// For `backpressure`: how long a publisher waits before the subscriber is disconnected.
    pub max_wait_ms: u64,
}

/// Balancer knobs in config-file units (milliseconds, percent).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BalancerSettings {
    pub default_rtt_ms: u64,
    pub decay_ms: u64,
    pub consecutive_failures: u32,
    pub base_ejection_ms: u64,
    pub max_ejection_ms: u64,
    pub max_ejection_percent: u8,
    pub latency_factor: f64,
    pub latency_min_ms: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            region: "local".into(),
            gateway_id: String::new(),
            listen: "127.0.0.1:7422".parse().expect("static address"),
            metrics_listen: "127.0.0.1:7480".parse().expect("static address"),
            request_timeout_ms: 5_000,
            shutdown_grace_ms: 5_000,
            control_plane: String::new(),
            state_dir: "nexus-state".into(),
            advertise: None,
            health_listen: None,
            auth: AuthMode::Required,
            federation_addr: None,
            limits: LimitsConfig::default(),
            slow_consumer: SlowConsumerConfig::default(),
            balancer: BalancerSettings::default(),
            trace: TraceConfig::default(),
            tls: TlsConfig::default(),
            control_plane_tls: ControlPlaneTlsConfig::default(),
            insecure: false,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_payload: 1024 * 1024,
            max_subscriptions: 10_000,
            max_connections: 10_000,
            max_pending_requests: 10_000,
            max_streams: 1_000,
            hello_timeout_ms: 5_000,
            max_unauthenticated: 1_024,
            max_unauthenticated_per_address: 128,
            max_transport_connections: 12_000,
            max_transport_connections_per_address: 1_000,
            idle_connection_timeout_ms: 30_000,
            max_calls_per_connection: 1_000,
        }
    }
}

impl Default for SlowConsumerConfig {
    fn default() -> Self {
        Self {
            policy: SlowConsumerPolicy::Backpressure,
            max_pending_bytes: 16 * 1024 * 1024,
            max_wait_ms: 2_000,
        }
    }
}

impl Default for BalancerSettings {
    fn default() -> Self {
        let d = BalancerConfig::default();
        Self {
            default_rtt_ms: d.default_rtt.as_millis() as u64,
            decay_ms: d.decay.as_millis() as u64,
            consecutive_failures: d.consecutive_failures,
            base_ejection_ms: d.base_ejection.as_millis() as u64,
            max_ejection_ms: d.max_ejection.as_millis() as u64,
            max_ejection_percent: d.max_ejection_percent,
            latency_factor: d.latency_factor,
            latency_min_ms: d.latency_min.as_millis() as u64,
        }
    }
}

impl BalancerSettings {
    pub fn to_balancer_config(&self) -> BalancerConfig {
        BalancerConfig {
            default_rtt: Duration::from_millis(self.default_rtt_ms),
            decay: Duration::from_millis(self.decay_ms),
            consecutive_failures: self.consecutive_failures,
            base_ejection: Duration::from_millis(self.base_ejection_ms),
            max_ejection: Duration::from_millis(self.max_ejection_ms),
            max_ejection_percent: self.max_ejection_percent,
            latency_factor: self.latency_factor,
            latency_min: Duration::from_millis(self.latency_min_ms),
            ..BalancerConfig::default()
        }
    }
}

/// What a reload ([`GatewayConfig::merge_live`]) did, by dotted setting name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Settings that changed and now have their new value.
    pub applied: Vec<String>,
    /// Settings that changed but keep their running value until a restart.
    pub need_restart: Vec<String>,
}

/// Every setting of `cfg` as `(dotted name, value)`, in a stable order.
pub fn flatten_settings(cfg: &GatewayConfig) -> Vec<(String, String)> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut Vec<(String, String)>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            other => out.push((prefix.to_owned(), other.to_string())),
        }
    }
    let mut out = Vec::new();
    if let Ok(v) = toml::Value::try_from(cfg) {
        walk("", &v, &mut out);
    }
    out.sort();
    out
}

impl GatewayConfig {
    /// Settings a running gateway takes from a reloaded file (SIGHUP) without a restart.
    /// Each is read where it is used (at a session's start, a request, a delivery), so the
    /// new value applies to what comes next; everything else needs a restart.
    pub const LIVE_SETTINGS: &[&str] = &[
        "request_timeout_ms",
        "limits.max_connections",
        "limits.max_subscriptions",
        "limits.max_pending_requests",
        "limits.max_streams",
        "limits.hello_timeout_ms",
        "slow_consumer.policy",
        "slow_consumer.max_pending_bytes",
        "slow_consumer.max_wait_ms",
    ];

    /// This running configuration with the live settings of `new` applied, and what changed.
    /// `new` is validated first, and so is the result; on an error nothing is applied. An
    /// empty `gateway_id` in `new` means "the running one" (it was generated at start).
    pub fn merge_live(&self, new: &GatewayConfig) -> Result<(Self, Reloaded), ConfigError> {
        let mut new = new.clone();
        if new.gateway_id.is_empty() {
            new.gateway_id = self.gateway_id.clone();
        }
        new.federation_addr = self.federation_addr;
        new.validate()?;
        let mut merged = self.clone();
        merged.request_timeout_ms = new.request_timeout_ms;
        merged.limits.max_connections = new.limits.max_connections;
        merged.limits.max_subscriptions = new.limits.max_subscriptions;
        merged.limits.max_pending_requests = new.limits.max_pending_requests;
        merged.limits.max_streams = new.limits.max_streams;
        merged.limits.hello_timeout_ms = new.limits.hello_timeout_ms;
        merged.slow_consumer = new.slow_consumer.clone();
        merged.validate()?;
        let before = flatten_settings(self);
        let after: std::collections::BTreeMap<_, _> = flatten_settings(&new).into_iter().collect();
        let mut reloaded = Reloaded::default();
        let mut seen = std::collections::BTreeSet::new();
        for (key, old) in &before {
            seen.insert(key.clone());
            if after.get(key) != Some(old) {
                if Self::LIVE_SETTINGS.contains(&key.as_str()) {
                    reloaded.applied.push(key.clone());
                } else {
                    reloaded.need_restart.push(key.clone());
                }
            }
        }
        // Optional settings set only in the new file (absent before).
        for key in after.keys() {
            if !seen.contains(key) {
                reloaded.need_restart.push(key.clone());
            }
        }
        Ok((merged, reloaded))
    }

    /// Reads a TOML file; unknown fields and wrong types are errors naming the field.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.display().to_string(),
            error,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "<inline>".into(),
            message: e.to_string(),
        })
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn hello_timeout(&self) -> Duration {
        Duration::from_millis(self.limits.hello_timeout_ms)
    }

    pub fn idle_connection_timeout(&self) -> Duration {
        Duration::from_millis(self.limits.idle_connection_timeout_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// Checks every field; the first problem found is returned, naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(field: &'static str, reason: impl Into<String>) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid {
                field,
                reason: reason.into(),
            })
        }
        let region_ok = !self.region.is_empty()
            && self.region.len() <= 63
            && self
                .region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !self.region.starts_with('-')
            && !self.region.ends_with('-');
        if !region_ok {
            return invalid(
                "region",
                format!(
                    "{:?} must be 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-' (it becomes a DNS label)",
                    self.region
                ),
            );
        }
        if self.listen == self.metrics_listen && self.listen.port() != 0 {
            return invalid(
                "metrics_listen",
                format!("{} is the same address as `listen`", self.metrics_listen),
            );
        }
        if !(0.0..=1.0).contains(&self.trace.sample_rate) {
            return invalid(
                "trace.sample_rate",
                format!("{} must be between 0 and 1", self.trace.sample_rate),
            );
        }
        if self.trace.max_bytes < 64 * 1024 {
            return invalid(
                "trace.max_bytes",
                format!(
                    "{} is below the minimum of 65536 bytes",
                    self.trace.max_bytes
                ),
            );
        }
        if self.request_timeout_ms == 0 || self.request_timeout_ms > 3_600_000 {
            return invalid("request_timeout_ms", "must be between 1 and 3600000");
        }
        let cp = &self.control_plane;
        if !(cp.is_empty() || cp.starts_with("http://") || cp.starts_with("https://")) {
            return invalid(
                "control_plane",
                format!(
                    "{:?} must be an http:// or https:// URL",
                    self.control_plane
                ),
            );
        }
        if self.state_dir.is_empty() {
            return invalid("state_dir", "must name a directory");
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return invalid("tls", "cert and key go together: give both or neither");
        }
        if self.tls.client_ca.is_some() && self.tls.cert.is_none() {
            return invalid(
                "tls.client_ca",
                "requiring client certificates needs TLS: give tls.cert and tls.key too",
            );
        }
        let cpt = &self.control_plane_tls;
        if cpt.cert.is_some() != cpt.key.is_some() {
            return invalid(
                "control_plane_tls",
                "cert and key go together: give both or neither",
            );
        }
        if self.shutdown_grace_ms > 600_000 {
            return invalid("shutdown_grace_ms", "must be at most 600000 (10 minutes)");
        }
        let l = &self.limits;
        if l.max_payload == 0 || l.max_payload > 64 * 1024 * 1024 {
            return invalid(
                "limits.max_payload",
                format!("{} must be between 1 and 67108864 (64 MiB)", l.max_payload),
            );
        }
        if l.max_subscriptions == 0 {
            return invalid("limits.max_subscriptions", "must be at least 1");
        }
        if l.max_connections == 0 {
            return invalid("limits.max_connections", "must be at least 1");
        }
        if l.max_pending_requests == 0 {
            return invalid("limits.max_pending_requests", "must be at least 1");
        }
        if l.max_streams == 0 {
            return invalid("limits.max_streams", "must be at least 1");
        }
        if l.hello_timeout_ms == 0 || l.hello_timeout_ms > 300_000 {
            return invalid("limits.hello_timeout_ms", "must be between 1 and 300000");
        }
        if l.max_unauthenticated == 0 {
            return invalid("limits.max_unauthenticated", "must be at least 1");
        }
        if l.max_unauthenticated_per_address == 0 {
            return invalid(
                "limits.max_unauthenticated_per_address",
                "must be at least 1",
            );
        }
        if l.max_transport_connections == 0 {
            return invalid("limits.max_transport_connections", "must be at least 1");
        }
        if l.max_transport_connections_per_address == 0 {
            return invalid(
                "limits.max_transport_connections_per_address",
                "must be at least 1",
            );
        }
        if l.idle_connection_timeout_ms < l.hello_timeout_ms {
            return invalid(
                "limits.idle_connection_timeout_ms",
                format!(
                    "{} must be at least limits.hello_timeout_ms ({})",
                    l.idle_connection_timeout_ms, l.hello_timeout_ms
                ),
            );
        }
        if l.max_calls_per_connection == 0 {
            return invalid("limits.max_calls_per_connection", "must be at least 1");
        }
        let s = &self.slow_consumer;
        if s.max_pending_bytes < l.max_payload + 1024 {
            return invalid(
                "slow_consumer.max_pending_bytes",
                format!(
                    "{} must be larger than limits.max_payload + 1024 ({}), or a single message could never be queued",
                    s.max_pending_bytes,
                    l.max_payload + 1024
                ),
            );
        }
        if s.max_pending_bytes > u32::MAX as u64 {
            return invalid("slow_consumer.max_pending_bytes", "must be below 4 GiB");
        }
        let b = &self.balancer;
        if b.default_rtt_ms == 0 {
            return invalid("balancer.default_rtt_ms", "must be at least 1");
        }
        if b.decay_ms == 0 {
            return invalid("balancer.decay_ms", "must be at least 1");
        }
        if b.consecutive_failures == 0 {
            return invalid("balancer.consecutive_failures", "must be at least 1");
        }
        if b.max_ejection_ms < b.base_ejection_ms {
            return invalid(
                "balancer.max_ejection_ms",
                "must be at least balancer.base_ejection_ms",
            );
        }
        if b.max_ejection_percent > 100 {
            return invalid("balancer.max_ejection_percent", "must be between 0 and 100");
        }
        if !(b.latency_factor.is_finite() && b.latency_factor > 1.0) {
            return invalid("balancer.latency_factor", "must be a number above 1.0");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        GatewayConfig::default().validate().unwrap();
    }

    #[test]
    fn parses_toml_with_partial_sections() {
        let c = GatewayConfig::from_toml(
            r#"
            region = "eu-west"
            listen = "127.0.0.1:9000"
            [limits]
            max_payload = 2048
            [slow_consumer]
            policy = "drop"
            "#,
        )
        .unwrap();
        assert_eq!(c.region, "eu-west");
        assert_eq!(c.limits.max_payload, 2048);
        assert_eq!(c.limits.max_subscriptions, 10_000);
        assert_eq!(c.slow_consumer.policy, SlowConsumerPolicy::Drop);
        c.validate().unwrap();
    }

    #[test]
    fn unknown_fields_and_bad_values_name_the_field() {
        let e = GatewayConfig::from_toml("[limits]\nmax_paylod = 5\n").unwrap_err();
        assert!(e.to_string().contains("max_paylod"), "{e}");
        let e = GatewayConfig::from_toml("[slow_consumer]\npolicy = \"explode\"\n").unwrap_err();
        assert!(e.to_string().contains("explode"), "{e}");
        let c = GatewayConfig {
            region: "US East".into(),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("`region`"));
        let mut c = GatewayConfig::default();
        c.limits.max_payload = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("limits.max_payload")
        );
        let mut c = GatewayConfig::default();
        c.slow_consumer.max_pending_bytes = 10;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("slow_consumer.max_pending_bytes")
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(512)
        ))]

        /// Any config file text: parsed and validated, or an error naming the problem; never
        /// a panic. Lines are drawn from real keys with arbitrary values so that validation
        /// is reached, not only the TOML parser.
        #[test]
        fn config_files_never_panic(
            lines in proptest::collection::vec(
                (
                    proptest::sample::select(vec![
                        "region", "listen", "max_payload", "max_subscriptions", "max_connections",
                        "hello_timeout_ms", "idle_connection_timeout_ms", "max_unauthenticated",
                        "policy", "max_pending_bytes", "max_wait_ms", "[limits]",
                        "[slow_consumer]", "[balancer]", "latency_factor", "decay_ms",
                    ]),
                    "[ -~]{0,24}",
                ),
                0..8,
            )
        ) {
            let text: String = lines
                .iter()
                .map(|(k, v)| if k.starts_with('[') { format!("{k}\n") } else { format!("{k} = {v}\n") })
                .collect();
            if let Ok(c) = GatewayConfig::from_toml(&text) {
                let _ = c.validate();
            }
        }
    }

    #[test]
    fn a_reload_applies_live_settings_and_names_the_others() {
        let running = GatewayConfig {
            gateway_id: "gw-1".into(), // generated at start
            ..Default::default()
        };
        let mut new = GatewayConfig::default(); // gateway_id "" in the file
        new.limits.max_connections = 7;
        new.slow_consumer.policy = SlowConsumerPolicy::Drop;
        new.region = "eu-west".into();
        new.limits.max_payload = 2048;
        let (merged, r) = running.merge_live(&new).unwrap();
        assert_eq!(
            r.applied,
            ["limits.max_connections", "slow_consumer.policy"]
        );
        assert_eq!(r.need_restart, ["limits.max_payload", "region"]);
        assert_eq!(merged.limits.max_connections, 7);
        assert_eq!(merged.slow_consumer.policy, SlowConsumerPolicy::Drop);
        assert_eq!(merged.region, "local");
        assert_eq!(merged.limits.max_payload, running.limits.max_payload);
        assert_eq!(merged.gateway_id, "gw-1");

        // An invalid file applies nothing.
        let mut bad = GatewayConfig::default();
        bad.limits.max_connections = 0;
        let e = running.merge_live(&bad).unwrap_err();
        assert!(e.to_string().contains("limits.max_connections"), "{e}");
        // Nothing changed: nothing to report.
        let (_, r) = running.merge_live(&GatewayConfig::default()).unwrap();
        assert_eq!(r, Reloaded::default());
    }
}
