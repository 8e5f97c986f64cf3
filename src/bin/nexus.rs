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
    /// Run a local development cluster (one gateway today) and print where it listens.
    Dev(GatewayArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Gateway(args) => run_gateway(args, false).await,
        Command::Dev(args) => run_gateway(args, true).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nexus: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run_gateway(args: GatewayArgs, dev: bool) -> anyhow::Result<()> {
    let _telemetry = nexus::telemetry::init(if dev { "nexus-dev" } else { "nexus-gateway" })?;
    let mut base = GatewayConfig::default();
    if dev && args.region.is_none() {
        base.region = "dev".into();
    }
    let mut cfg = args.resolve(base)?;
    if dev && args.region.is_none() && cfg.region == GatewayConfig::default().region {
        cfg.region = "dev".into();
    }
    let gateway = nexus_gateway::start(cfg.clone()).await?;
    if dev {
        println!("Nexus dev cluster is up (stop with Ctrl-C)");
        println!("  region        {}", cfg.region);
        println!("  gateway       {}", gateway.gateway_id);
        println!("  adapters      http://{}   (NEXUS_URL)", gateway.grpc_addr);
        println!("  metrics       http://{}/metrics", gateway.metrics_addr);
        println!(
            "  health        http://{}/healthz  /readyz",
            gateway.metrics_addr
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
