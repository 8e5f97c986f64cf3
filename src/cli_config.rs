//! Layering of gateway configuration for the binaries: defaults, then a TOML file (its
//! `[gateway]` section, or a file without sections; see [`crate::config_file`]), then flags
//! and environment variables (clap reads both; a flag beats its variable).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use nexus_gateway::GatewayConfig;

/// Flags shared by `nexus gateway` (and reused by `nexus dev`).
#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    /// TOML config file: its [gateway] and [federation] sections, or a file without sections
    /// (docs/operations.md §2); flags and environment variables override its values.
    #[arg(long, env = "NEXUS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Region this gateway serves (a DNS label such as `us-east`).
    #[arg(long, env = "NEXUS_REGION")]
    pub region: Option<String>,
    /// gRPC address adapters connect to.
    #[arg(long, env = "NEXUS_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// HTTP address for /metrics, /healthz and /readyz.
    #[arg(long, env = "NEXUS_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Plaintext gRPC address serving only grpc.health.v1, for probes that cannot speak TLS
    /// (none when absent).
    #[arg(long, env = "NEXUS_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    /// Stable gateway id (generated when absent).
    #[arg(long, env = "NEXUS_GATEWAY_ID")]
    pub gateway_id: Option<String>,
    /// Largest payload accepted, in bytes.
    #[arg(long, env = "NEXUS_MAX_PAYLOAD")]
    pub max_payload: Option<u64>,
    /// How long a draining gateway (after SIGTERM) waits for its adapters to move before it
    /// closes the sessions left, in milliseconds (default 5000).
    #[arg(long, env = "NEXUS_SHUTDOWN_GRACE_MS")]
    pub shutdown_grace_ms: Option<u64>,
    /// Control plane to register with and take config from, e.g. http://127.0.0.1:7400.
    #[arg(long, env = "NEXUS_CONTROL_PLANE")]
    pub control_plane: Option<String>,
    /// Directory for the last good config snapshot and the replication spool.
    #[arg(long, env = "NEXUS_STATE_DIR")]
    pub state_dir: Option<String>,
    /// API keys: `required` (default) or `off` (anyone may do anything; development only).
    #[arg(long, env = "NEXUS_AUTH", value_parser = ["required", "off"])]
    pub auth: Option<String>,
    /// Address registered for adapters to reach this gateway (default: --listen).
    #[arg(long, env = "NEXUS_ADVERTISE")]
    pub advertise: Option<SocketAddr>,
    /// PEM certificate (chain) adapters see: sessions are served over TLS. Reloaded when the
    /// file changes.
    #[arg(long, env = "NEXUS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "NEXUS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA(s): adapters must present a client certificate issued by one of them.
    #[arg(long, env = "NEXUS_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// PEM CA(s) of an https:// control plane (default: the system's roots).
    #[arg(long, env = "NEXUS_CONTROL_PLANE_CA")]
    pub control_plane_ca: Option<PathBuf>,
    /// Certificate this gateway shows the control plane (default: --tls-cert); issued for
    /// <gateway-id>.<region>.fed.nexus by `nexus certs --gateway <region>/<id>`.
    #[arg(long, env = "NEXUS_CONTROL_PLANE_CERT", requires = "control_plane_key")]
    pub control_plane_cert: Option<PathBuf>,
    /// Key of --control-plane-cert (default: --tls-key).
    #[arg(long, env = "NEXUS_CONTROL_PLANE_KEY", requires = "control_plane_cert")]
    pub control_plane_key: Option<PathBuf>,
    /// Serve adapters in plaintext on a non-loopback address (a warning at start); without
    /// it, such an address needs --tls-cert.
    #[arg(long, env = "NEXUS_INSECURE")]
    pub insecure: bool,
}

impl GatewayArgs {
    /// Builds the effective configuration and validates it.
    pub fn resolve(&self, base: GatewayConfig) -> anyhow::Result<GatewayConfig> {
        Ok(self.resolve_with_file(base)?.0)
    }

    /// [`GatewayArgs::resolve`], also returning the file's `[federation]` section if any.
    pub fn resolve_with_file(
        &self,
        base: GatewayConfig,
    ) -> anyhow::Result<(
        GatewayConfig,
        Option<crate::config_file::FederationSettings>,
    )> {
        let (mut cfg, federation) = match &self.config {
            Some(path) => {
                let file = crate::config_file::ConfigFile::load(path)?;
                let gateway = file.require("gateway", &file.gateway)?.clone();
                (gateway, file.federation)
            }
            None => (base, None),
        };
        if let Some(v) = &self.region {
            cfg.region = v.clone();
        }
        if let Some(v) = self.listen {
            cfg.listen = v;
        }
        if let Some(v) = self.metrics_listen {
            cfg.metrics_listen = v;
        }
        if let Some(v) = self.health_listen {
            cfg.health_listen = Some(v);
        }
        if let Some(v) = &self.gateway_id {
            cfg.gateway_id = v.clone();
        }
        if let Some(v) = self.max_payload {
            cfg.limits.max_payload = v;
        }
        if let Some(v) = self.shutdown_grace_ms {
            cfg.shutdown_grace_ms = v;
        }
        if let Some(v) = &self.control_plane {
            cfg.control_plane = v.clone();
        }
        if let Some(v) = &self.state_dir {
            cfg.state_dir = v.clone();
        }
        if let Some(v) = &self.auth {
            cfg.auth = if v == "off" {
                nexus_gateway::AuthMode::Off
            } else {
                nexus_gateway::AuthMode::Required
            };
        }
        if let Some(v) = self.advertise {
            cfg.advertise = Some(v);
        }
        if let Some(v) = &self.tls_cert {
            cfg.tls.cert = Some(v.clone());
        }
        if let Some(v) = &self.tls_key {
            cfg.tls.key = Some(v.clone());
        }
        if let Some(v) = &self.tls_client_ca {
            cfg.tls.client_ca = Some(v.clone());
        }
        if let Some(v) = &self.control_plane_ca {
            cfg.control_plane_tls.ca = Some(v.clone());
        }
        if let Some(v) = &self.control_plane_cert {
            cfg.control_plane_tls.cert = Some(v.clone());
        }
        if let Some(v) = &self.control_plane_key {
            cfg.control_plane_tls.key = Some(v.clone());
        }
        if self.insecure {
            cfg.insecure = true;
        }
        cfg.validate().context("gateway configuration is invalid")?;
        Ok((cfg, federation))
    }
}
