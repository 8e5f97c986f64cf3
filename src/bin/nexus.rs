//! `nexus`: the server binary. `nexus gateway` runs one regional gateway; `nexus dev` runs a
//! local cluster for development with sensible defaults.

use clap::{Parser, Subcommand};
use nexus::cli_config::GatewayArgs;
use nexus_gateway::GatewayConfig;

#[derive(Parser)]
#[command(
    name = "nexus",
    version,
    about = "Nexus message router: regional gateways for polyglot services",
    long_about = "Nexus message router.\n\nRun `nexus dev` for a local cluster, or `nexus gateway --region <name>` for one regional gateway.\nEvery flag can also be set with the NEXUS_* environment variable shown in its help."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one regional gateway.
    Gateway(GatewayArgs),
    /// Run the control plane: Admin API over etcd or the embedded store.
    ControlPlane(ControlPlaneArgs),
    /// Run a local development cluster (control plane with the embedded store, and a
    /// gateway) and print where everything listens.
    Dev(DevArgs),
}

#[derive(clap::Args)]
struct ControlPlaneArgs {
    /// gRPC address for the Admin API.
    #[arg(long, env = "NEXUS_CP_LISTEN", default_value = "127.0.0.1:7400")]
    listen: std::net::SocketAddr,
    /// etcd endpoint (repeatable); without it the embedded store in --data-dir is used.
    #[arg(long, env = "NEXUS_ETCD", value_delimiter = ',')]
    etcd: Vec<String>,
    /// Directory of the embedded store.
    #[arg(long, env = "NEXUS_DATA_DIR", default_value = "nexus-data")]
    data_dir: std::path::PathBuf,
    /// How long to retry an unreachable etcd at start before giving up.
    #[arg(long, default_value = "30s", value_parser = nexus::ctl::parse_duration)]
    etcd_connect_timeout: std::time::Duration,
}

#[derive(clap::Args)]
struct DevArgs {
    #[command(flatten)]
    gateway: GatewayArgs,
    /// Control plane Admin API address.
    #[arg(long, default_value = "127.0.0.1:7400")]
    control_plane_listen: std::net::SocketAddr,
    /// Where the dev cluster keeps its state (default: $XDG_DATA_HOME/nexus/dev).
    #[arg(long, env = "NEXUS_DEV_DIR")]
    dev_dir: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Gateway(args) => run_gateway(args, None).await,
        Command::ControlPlane(args) => run_control_plane(args).await,
        Command::Dev(args) => run_dev(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nexus: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dev_dir(explicit: Option<std::path::PathBuf>) -> std::path::PathBuf {
    explicit.unwrap_or_else(|| {
        let base = std::env::var_os("XDG_DATA_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".local/share"))
            })
            .unwrap_or_else(|| std::path::PathBuf::from("."));
        base.join("nexus").join("dev")
    })
}

async fn run_control_plane(args: ControlPlaneArgs) -> anyhow::Result<()> {
    let _telemetry = nexus::telemetry::init("nexus-control-plane")?;
    let store = if args.etcd.is_empty() {
        nexus_control_plane::server::StoreConfig::Embedded(args.data_dir.join("control-plane.redb"))
    } else {
        nexus_control_plane::server::StoreConfig::Etcd(args.etcd.clone())
    };
    let cp = nexus_control_plane::server::start(nexus_control_plane::server::ControlPlaneConfig {
        listen: args.listen,
        store: store.clone(),
        store_connect_timeout: args.etcd_connect_timeout,
    })
    .await?;
    match &store {
        nexus_control_plane::server::StoreConfig::Etcd(e) => println!(
            "nexus control plane listening on {} (store: etcd {})",
            cp.grpc_addr,
            e.join(",")
        ),
        nexus_control_plane::server::StoreConfig::Embedded(p) => println!(
            "nexus control plane listening on {} (store: embedded {})",
            cp.grpc_addr,
            p.display()
        ),
    }
    let stop = cp.stop_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        stop.cancel();
    });
    cp.wait().await?;
    println!("nexus: stopped");
    Ok(())
}

async fn run_dev(args: DevArgs) -> anyhow::Result<()> {
    let dir = dev_dir(args.dev_dir.clone());
    std::fs::create_dir_all(&dir)
        .map_err(|e| anyhow::anyhow!("cannot create the dev directory {}: {e}", dir.display()))?;
    run_gateway(args.gateway, Some((args.control_plane_listen, dir))).await
}

async fn run_gateway(
    args: GatewayArgs,
    dev: Option<(std::net::SocketAddr, std::path::PathBuf)>,
) -> anyhow::Result<()> {
    let _telemetry = nexus::telemetry::init(if dev.is_some() {
        "nexus-dev"
    } else {
        "nexus-gateway"
    })?;
    let control_plane = match &dev {
        Some((listen, dir)) => Some(
            nexus_control_plane::server::start(nexus_control_plane::server::ControlPlaneConfig {
                listen: *listen,
                store: nexus_control_plane::server::StoreConfig::Embedded(
                    dir.join("control-plane.redb"),
                ),
                store_connect_timeout: std::time::Duration::from_secs(5),
            })
            .await?,
        ),
        None => None,
    };
    let dev = dev.is_some();
    let mut base = GatewayConfig::default();
    if dev && args.region.is_none() {
        base.region = "dev".into();
    }
    let mut cfg = args.resolve(base)?;
    if dev && args.region.is_none() && cfg.region == GatewayConfig::default().region {
        cfg.region = "dev".into();
    }
    let gateway = nexus_gateway::start(cfg.clone()).await?;
    if let Some(cp) = &control_plane {
        nexus_control_plane::regions::ensure(&*cp.store, &cfg.region).await?;
        println!("Nexus dev cluster is up (stop with Ctrl-C)");
        println!("  region        {}", cfg.region);
        println!("  gateway       {}", gateway.gateway_id);
        println!("  adapters      http://{}   (NEXUS_URL)", gateway.grpc_addr);
        println!("  metrics       http://{}/metrics", gateway.metrics_addr);
        println!(
            "  health        http://{}/healthz  /readyz",
            gateway.metrics_addr
        );
        println!(
            "  control plane http://{}   (NEXUS_CONTROL_PLANE; embedded store)",
            cp.grpc_addr
        );
        println!("  auth          OFF: any client may publish and subscribe (development only)");
    } else {
        println!(
            "nexus gateway {} (region {}) listening on {}, metrics on {}",
            gateway.gateway_id, cfg.region, gateway.grpc_addr, gateway.metrics_addr
        );
    }
    let stop = gateway.stop_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        stop.cancel();
    });
    gateway.wait().await?;
    if let Some(cp) = control_plane {
        cp.shutdown().await?;
    }
    println!("nexus: stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
