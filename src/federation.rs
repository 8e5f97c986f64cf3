//! Wiring federation into a gateway process: flags, certificate files, binding the QUIC
//! endpoint before the gateway starts (so its address can be registered), and joining the
//! links to the gateway's router once it runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use nexus_federation::bridge::{RegionRouter, SpoolConfig};
use nexus_federation::link::compression::parse_codec;
use nexus_federation::link::{Federation, LinkSettings};
use nexus_federation::replication::Limits;
use nexus_federation::tls::{FederationCa, Identity};
use nexus_proto::encoding::Codec;

#[derive(Debug, Clone, Args, Default)]
pub struct FederationArgs {
    /// UDP address for federation links with other regions (QUIC); off when absent.
    #[arg(long, env = "NEXUS_FEDERATION_LISTEN")]
    pub federation_listen: Option<SocketAddr>,
    /// Federation (QUIC) address registered for the other gateways to dial, when it is not
    /// the one bound: listening on 0.0.0.0, behind NAT, a UDP load balancer per gateway, or a
    /// WAN emulator in front. Default: the --federation-listen address as bound.
    #[arg(long, env = "NEXUS_FEDERATION_ADVERTISE")]
    pub federation_advertise: Option<SocketAddr>,
    /// A peer region's federation address, as REGION=HOST:PORT; repeatable.
    #[arg(long = "peer", value_parser = parse_peer)]
    pub peers: Vec<(String, SocketAddr)>,
    /// Another gateway of this region (its --federation-listen address), for a regional
    /// cluster without a control plane; repeatable. With a control plane, gateways of a region
    /// find each other through its registrations.
    #[arg(long = "cluster-peer")]
    pub cluster_peers: Vec<SocketAddr>,
    /// This gateway's certificate (PEM), signed by the federation CA.
    #[arg(long, env = "NEXUS_FEDERATION_CERT")]
    pub federation_cert: Option<PathBuf>,
    /// This gateway's private key (PEM).
    #[arg(long, env = "NEXUS_FEDERATION_KEY")]
    pub federation_key: Option<PathBuf>,
    /// The federation CA certificate (PEM).
    #[arg(long, env = "NEXUS_FEDERATION_CA")]
    pub federation_ca: Option<PathBuf>,
    /// The replication spool of async/sync routes (a redb file); default
    /// <state_dir>/spool.redb.
    #[arg(long, env = "NEXUS_SPOOL_PATH")]
    pub spool_path: Option<PathBuf>,
    /// Largest total size of the spool, in bytes.
    #[arg(long, default_value_t = 1 << 30)]
    pub spool_max_bytes: u64,
    /// Spooled messages older than this many seconds are deleted unsent (and counted).
    #[arg(long, default_value_t = 86_400)]
    pub spool_max_age_s: u64,
    /// When the spool is full: `reject` new publishes with an error, or `drop_oldest`.
    #[arg(long, default_value = "reject")]
    pub spool_overflow: nexus_federation::replication::Overflow,
    /// Idempotent publishing on async/sync routes: how long (seconds) a publish's message id
    /// is remembered, so a retry with the same id is not a second message.
    #[arg(long, default_value_t = 120)]
    pub dedup_window_s: u64,
    /// At most this many message ids are remembered; past it the oldest leave early (counted
    /// in nexus_publish_dedup_evicted_total).
    #[arg(long, default_value_t = 1_000_000)]
    pub dedup_max_ids: usize,
    /// How many gateways of the region hold each message of an async/sync route before its
    /// publisher is acknowledged: 1 (this gateway's disk) or 2 (also a replica: another
    /// gateway of the region, which sends the spool itself if this gateway is gone for
    /// --replica-takeover-ms, so acknowledged messages survive the loss of this machine).
    #[arg(long, env = "NEXUS_SPOOL_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub spool_replicas: u8,
    /// With --spool-replicas 2: how long (ms) the gateway a replica holds copies for must be
    /// unreachable before the replica sends its spool.
    #[arg(long, default_value_t = 3000)]
    pub replica_takeover_ms: u64,
    /// With --spool-replicas 2: how long (ms) an async publish waits for the replica to hold
    /// it before it is answered with a timeout (the message stays spooled and is delivered).
    #[arg(long, default_value_t = 5000)]
    pub replica_timeout_ms: u64,
    /// How long (ms) a gateway of this region may be unlinked before messages this gateway
    /// relayed to it stop waiting for its confirmation: within it, a cut cluster link loses
    /// nothing (the relays go out again when it returns); past it, they are given up and
    /// counted in nexus_cluster_relays_abandoned_total.
    #[arg(long, default_value_t = 1000)]
    pub cluster_grace_ms: u64,
    /// How long a peer gateway may stay silent before its link is declared dead, in
    /// milliseconds; 0 derives it from the link's RTT (3 x RTT + 400 ms, within 500 ms..3 s).
    #[arg(long, env = "NEXUS_LINK_DEAD_AFTER_MS", default_value_t = 0)]
    pub link_dead_after_ms: u64,
    /// How links to other regions compress their data streams (batches of frames): zstd, lz4
    /// or off. Used when the peer gateway can read it (docs/federation.md, Compression).
    #[arg(long, env = "NEXUS_LINK_COMPRESSION", default_value = "zstd", value_parser = link_codec)]
    pub link_compression: String,
    /// How cluster links (gateways of this region) compress their data streams: zstd, lz4 or
    /// off (the default: inside a region CPU is scarcer than bandwidth).
    #[arg(long, env = "NEXUS_CLUSTER_COMPRESSION", default_value = "off", value_parser = link_codec)]
    pub cluster_compression: String,
}

impl FederationArgs {
    /// The spool settings, with the file under `state_dir` unless given.
    pub fn spool(&self, state_dir: &Path) -> SpoolConfig {
        let mut cfg = SpoolConfig::new(
            self.spool_path
                .clone()
                .unwrap_or_else(|| state_dir.join("spool.redb")),
            Limits {
                max_bytes: self.spool_max_bytes,
                max_age_ms: (self.spool_max_age_s.min(i64::MAX as u64 / 1000) * 1000) as i64,
                overflow: self.spool_overflow,
            },
        );
        cfg.dedup_window_ms = (self.dedup_window_s.min(i64::MAX as u64 / 1000) * 1000) as i64;
        cfg.dedup_max_ids = self.dedup_max_ids;
        cfg.replicas = usize::from(self.spool_replicas.max(1));
        let ms = |v: u64| v.min(i64::MAX as u64) as i64;
        cfg.takeover_ms = ms(self.replica_takeover_ms);
        cfg.replica_timeout_ms = ms(self.replica_timeout_ms);
        cfg.relay_grace_ms = ms(self.cluster_grace_ms);
        cfg
    }

    /// How links are run.
    pub fn link_settings(&self) -> LinkSettings {
        LinkSettings {
            dead_after: (self.link_dead_after_ms > 0)
                .then(|| std::time::Duration::from_millis(self.link_dead_after_ms)),
            // Both were checked by `link_codec` (or the config file's validation).
            compression: nexus_federation::link::compression::LinkCompression {
                federation: parse_codec(&self.link_compression).unwrap_or(Some(Codec::Zstd)),
                cluster: parse_codec(&self.cluster_compression).unwrap_or(None),
            },
        }
    }
}

/// Checks a `--link-compression` / `--cluster-compression` value.
fn link_codec(s: &str) -> Result<String, String> {
    parse_codec(s).map(|_| s.to_owned())
}

fn parse_peer(s: &str) -> Result<(String, SocketAddr), String> {
    let (region, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} must look like REGION=HOST:PORT"))?;
    let addr = addr
        .parse()
        .map_err(|_| format!("{addr:?} in --peer {s} is not HOST:PORT with an IP address"))?;
    Ok((region.to_owned(), addr))
}

/// A bound federation endpoint waiting for its gateway.
pub struct Pending {
    pub fed: Arc<Federation>,
    /// Regions to keep links to, with their federation addresses.
    pub peers: Vec<(String, SocketAddr)>,
    /// Gateways of this region to keep links to.
    pub cluster_peers: Vec<SocketAddr>,
}

impl Pending {
    pub fn addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.fed.local_addr()?)
    }

    /// Joins the links to the running gateway (opening or recovering its spool) and starts
    /// dialling peers.
    pub fn attach(
        self,
        router: Arc<nexus_gateway::router::Router>,
        spool: SpoolConfig,
    ) -> anyhow::Result<Arc<RegionRouter>> {
        // Static regions first: the bridge follows the control plane's pushed peers as soon
        // as it starts, and must skip these (a link to a pushed address beside the static
        // one made the two replace each other).
        for (region, _) in &self.peers {
            self.fed.declare_static_region(region);
        }
        let bridge = RegionRouter::start(router, self.fed.clone(), spool)
            .context("cannot open the replication spool")?;
        for (region, addr) in &self.peers {
            self.fed.maintain(*addr, region);
        }
        for addr in &self.cluster_peers {
            self.fed.maintain_cluster_peer(*addr);
        }
        Ok(bridge)
    }
}

/// Binds federation with certificate files, if configured.
pub async fn bind_from_args(
    args: &FederationArgs,
    region: &str,
    gateway_id: &str,
) -> anyhow::Result<Option<Pending>> {
    let Some(listen) = args.federation_listen else {
        if !args.peers.is_empty() || !args.cluster_peers.is_empty() {
            bail!("--peer and --cluster-peer need --federation-listen");
        }
        return Ok(None);
    };
    let (Some(cert), Some(key), Some(ca)) = (
        &args.federation_cert,
        &args.federation_key,
        &args.federation_ca,
    ) else {
        bail!(
            "federation needs --federation-cert, --federation-key and --federation-ca (create development ones with `nexus federation-certs`)"
        );
    };
    let identity = Identity::from_pem_files(cert, key, ca)?;
    let mut pending = bind(
        listen,
        &identity,
        region,
        gateway_id,
        args.peers.clone(),
        args.link_settings(),
    )
    .await?;
    pending.cluster_peers = args.cluster_peers.clone();
    Ok(Some(pending))
}

pub async fn bind(
    listen: SocketAddr,
    identity: &Identity,
    region: &str,
    gateway_id: &str,
    peers: Vec<(String, SocketAddr)>,
    settings: LinkSettings,
) -> anyhow::Result<Pending> {
    let fed = Federation::bind(listen, identity, region, gateway_id, settings).await?;
    Ok(Pending {
        fed,
        peers,
        cluster_peers: Vec::new(),
    })
}

/// Writes a development federation CA and one certificate per region into `dir`.
pub fn write_dev_certs(dir: &Path, regions: &[String]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ca = FederationCa::generate("Nexus development federation CA")?;
    let write = |name: String, text: &str| -> anyhow::Result<()> {
        let p = dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))
    };
    write("ca.pem".into(), ca.cert_pem())?;
    for region in regions {
        let (_, pem) = ca.issue_with_pem(region, &format!("{region}-gateway"))?;
        write(format!("{region}.pem"), &pem.cert_pem)?;
        write(format!("{region}-key.pem"), &pem.key_pem)?;
    }
    Ok(())
}
