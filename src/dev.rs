//! `nexus dev`: a whole multi-region Nexus on loopback in one process — a control plane on
//! the embedded store with its DNS responder, and one gateway per region (us-east, eu-west
//! and ap-south by default) or a cluster of several (`--gateways-per-region`), linked over
//! QUIC with certificates from a development CA generated at start; the gateways find each
//! other through the control plane's registrations. Nothing needs installing; Ctrl-C stops
//! everything cleanly.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use nexus_control_plane::server::{ControlPlaneConfig, StoreConfig};
use nexus_federation::tls::FederationCa;
use nexus_gateway::{AuthMode, GatewayConfig};

pub struct DevOptions {
    pub regions: Vec<String>,
    /// Gateways in each region (a regional cluster when more than one).
    pub gateways_per_region: usize,
    /// First region's adapter address; region i uses port + 10 i (0 stays 0).
    pub listen: SocketAddr,
    /// First region's metrics address; region i uses port + i.
    pub metrics_listen: SocketAddr,
    pub control_plane_listen: SocketAddr,
    pub dns_listen: SocketAddr,
    pub dir: PathBuf,
    pub auth_required: bool,
    /// The web console's address (None: no console).
    pub console_listen: Option<SocketAddr>,
    /// A built console site to serve (None: the bundle compiled into the binary).
    pub console_site: Option<PathBuf>,
}

/// Most gateways per region `nexus dev` runs (their ports are laid out for that many).
pub const MAX_GATEWAYS_PER_REGION: usize = 5;

/// Where gateway `j` of region `i` listens: the first of each region keeps the documented
/// ports (adapters `listen + 10 i`, metrics `metrics + i`, links `listen + 10 i + 2`), the
/// others take ports from `listen + 100` and `metrics + 200` on.
fn ports(opts: &DevOptions, i: usize, j: usize) -> (SocketAddr, SocketAddr, SocketAddr) {
    let (i, j) = (i as u16, j as u16);
    if j == 0 {
        (
            shifted(opts.listen, 10 * i),
            shifted(opts.metrics_listen, i),
            shifted(opts.listen, 10 * i + 2),
        )
    } else {
        let base = 100 + 10 * i + 2 * (j - 1);
        (
            shifted(opts.listen, base),
            shifted(opts.metrics_listen, 200 + 10 * i + (j - 1)),
            shifted(opts.listen, base + 1),
        )
    }
}

fn shifted(addr: SocketAddr, by: u16) -> SocketAddr {
    if addr.port() == 0 {
        addr
    } else {
        SocketAddr::new(addr.ip(), addr.port().saturating_add(by))
    }
}

pub async fn run(
    opts: DevOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    if opts.regions.is_empty() {
        anyhow::bail!("--regions needs at least one region");
    }
    if !(1..=MAX_GATEWAYS_PER_REGION).contains(&opts.gateways_per_region) {
        anyhow::bail!(
            "--gateways-per-region must be between 1 and {MAX_GATEWAYS_PER_REGION}, not {}",
            opts.gateways_per_region
        );
    }
    std::fs::create_dir_all(&opts.dir)
        .with_context(|| format!("cannot create the dev directory {}", opts.dir.display()))?;
    let mut cp_cfg = ControlPlaneConfig::new(
        opts.control_plane_listen,
        StoreConfig::Embedded(opts.dir.join("control-plane.redb")),
    );
    cp_cfg.dns_listen = Some(opts.dns_listen);
    // Development: the Admin API is open, and the banner says so.
    cp_cfg.admin_auth = false;
    let cp = nexus_control_plane::server::start(cp_cfg).await?;
    let ca = FederationCa::generate("Nexus dev federation CA")?;

    // Bind every link endpoint first, so each gateway registers its address; the gateways
    // then find each other (their region's cluster, their homes elsewhere) through the
    // control plane's registrations.
    let mut pending = Vec::new();
    for (i, region) in opts.regions.iter().enumerate() {
        nexus_control_plane::regions::ensure(&*cp.store, region).await?;
        for j in 0..opts.gateways_per_region {
            let id = if j == 0 {
                format!("gw-{region}")
            } else {
                format!("gw-{region}-{}", j + 1)
            };
            let identity = ca.issue(region, &id)?;
            let (_, _, fed_listen) = ports(&opts, i, j);
            let p = crate::federation::bind(
                fed_listen,
                &identity,
                region,
                &id,
                Vec::new(),
                Default::default(),
            )
            .await
            .with_context(|| format!("link endpoint for {id}"))?;
            pending.push((i, j, region.clone(), id, p));
        }
    }

    let mut gateways = Vec::new();
    let mut bridges = Vec::new();
    for (i, j, region, id, p) in pending {
        let (listen, metrics_listen, _) = ports(&opts, i, j);
        let state_dir = if j == 0 {
            opts.dir.join(format!("gateway-{region}"))
        } else {
            opts.dir.join(format!("gateway-{id}"))
        };
        let cfg = GatewayConfig {
            region: region.clone(),
            gateway_id: id.clone(),
            listen,
            metrics_listen,
            control_plane: format!("http://{}", cp.grpc_addr),
            state_dir: state_dir.display().to_string(),
            auth: if opts.auth_required {
                AuthMode::Required
            } else {
                AuthMode::Off
            },
            federation_addr: Some(p.addr()?),
            ..Default::default()
        };
        let fed_addr = p.addr()?;
        let gw = nexus_gateway::start(cfg)
            .await
            .with_context(|| format!("gateway {id}"))?;
        let fed = p.fed.clone();
        let spool = nexus_federation::bridge::SpoolConfig::new(
            state_dir.join("spool.redb"),
            Default::default(),
        );
        bridges.push((fed, p.attach(gw.router.clone(), spool)?));
        gateways.push((region, id, fed_addr, gw));
    }

    // The web console, against this control plane (its Admin API is open: any key logs in).
    let console = match opts.console_listen {
        Some(listen) => Some(
            crate::console::bind(listen, cp.grpc_addr.to_string(), None, opts.console_site)
                .await
                .context("web console")?,
        ),
        None => None,
    };
    let console_line = console.as_ref().map(|c| {
        format!(
            "  console       http://{}   (any key logs in: the admin API is open){}",
            c.local_addr(),
            if c.hydrates() {
                ""
            } else {
                "; not hydrated: that site has no wasm (scripts/build-console SITE_DIR writes one)"
            }
        )
    });
    let (console_stop, console_stopped) = tokio::sync::oneshot::channel::<()>();
    let console_task = console.map(|c| {
        tokio::spawn(c.run(async move {
            let _ = console_stopped.await;
        }))
    });

    println!("Nexus dev cluster is up (stop with Ctrl-C)");
    println!(
        "  control plane http://{}   (NEXUS_CONTROL_PLANE; embedded store in {})",
        cp.grpc_addr,
        opts.dir.display()
    );
    if let Some(dns) = cp.dns_addr {
        println!("  dns           {dns}   (zone nexus.local)");
    }
    for (region, id, fed, gw) in &gateways {
        let name = if opts.gateways_per_region > 1 {
            format!("{region} {id}")
        } else {
            region.clone()
        };
        println!(
            "  region {name:<9} adapters http://{}  metrics http://{}/metrics  links {fed}",
            gw.grpc_addr, gw.metrics_addr
        );
    }
    if let (Some(dns), Some((first, _, _, _))) = (cp.dns_addr, gateways.first()) {
        println!("  discovery     nexus+srv://{first}.nexus.local?dns={dns}");
    }
    if opts.auth_required {
        println!("  auth          required: create keys with `nexusctl keys create`");
    } else {
        println!("  auth          OFF: any client may publish and subscribe (development only)");
    }
    println!("  admin API     OPEN: no admin key needed (development only)");
    if let Some(line) = console_line {
        println!("{line}");
    }

    shutdown.await;
    tracing::info!("shutdown requested");
    let _ = console_stop.send(());
    if let Some(task) = console_task {
        task.await.context("web console task")??;
    }
    for (_, _, _, gw) in gateways {
        gw.shutdown().await?;
    }
    for (fed, _bridge) in bridges {
        fed.shutdown().await;
    }
    cp.shutdown().await?;
    println!("nexus: stopped");
    Ok(())
}
