//! `terraform-provider-nexus`: a Terraform provider for Nexus (regions, routes, schemas, API
//! keys, certificates; topology and gateway data sources), speaking the plugin protocol v6
//! over gRPC on tonic.
//!
//! Terraform starts the binary with `TF_PLUGIN_MAGIC_COOKIE` set; it serves gRPC on a free
//! loopback port and prints go-plugin's handshake line `1|6|tcp|127.0.0.1:PORT|grpc` on
//! stdout. The transport is TLS with go-plugin's AutoMTLS ([`automtls`]) when Terraform
//! passes its certificate in `PLUGIN_CLIENT_CERT` (it always does), plain TCP on loopback
//! otherwise (a client started by hand with `TF_REATTACH_PROVIDERS`). Besides the
//! provider it serves the gRPC health service (`plugin`: SERVING) and go-plugin's
//! `GRPCController.Shutdown`, which stops it. Logs go to stderr, which Terraform records
//! (`TF_LOG=debug`).

mod automtls;
mod provider;
mod resources;
mod schema;
mod value;

pub mod tfplugin6 {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("tfplugin6");
}

pub mod plugin {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("plugin");
}

use std::io::Write;
use std::sync::Arc;

use tokio::sync::Notify;

const MAGIC_COOKIE_KEY: &str = "TF_PLUGIN_MAGIC_COOKIE";
const MAGIC_COOKIE_VALUE: &str = "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2";

/// go-plugin's controller: `Shutdown` stops the server.
struct Controller(Arc<Notify>);

#[tonic::async_trait]
impl plugin::grpc_controller_server::GrpcController for Controller {
    async fn shutdown(
        &self,
        _: tonic::Request<plugin::Empty>,
    ) -> Result<tonic::Response<plugin::Empty>, tonic::Status> {
        tracing::info!("shutdown requested by terraform");
        self.0.notify_one();
        Ok(tonic::Response::new(plugin::Empty {}))
    }
}

fn main() -> std::process::ExitCode {
    if std::env::args().any(|a| a == "--version" || a == "-V") {
        println!("terraform-provider-nexus {}", env!("CARGO_PKG_VERSION"));
        return std::process::ExitCode::SUCCESS;
    }
    if std::env::var(MAGIC_COOKIE_KEY).ok().as_deref() != Some(MAGIC_COOKIE_VALUE) {
        eprintln!(
            "terraform-provider-nexus is a Terraform plugin: Terraform runs it (see docs/deploy.md, \
             \"Terraform\", for dev_overrides or a filesystem mirror); it is not meant to be run by hand"
        );
        return std::process::ExitCode::from(1);
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NEXUS_PROVIDER_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(serve()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("terraform-provider-nexus: {}", provider::describe(&e));
            std::process::ExitCode::from(1)
        }
    }
}

async fn serve() -> anyhow::Result<()> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on a loopback port")?;
    let addr = listener.local_addr()?;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("plugin", tonic_health::ServingStatus::Serving)
        .await;
    let stop = Arc::new(Notify::new());
    let router = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(tfplugin6::provider_server::ProviderServer::new(
            provider::NexusProvider::default(),
        ))
        .add_service(plugin::grpc_controller_server::GrpcControllerServer::new(
            Controller(stop.clone()),
        ));
    let stopped = async move { stop.notified().await };
    let client_cert = std::env::var("PLUGIN_CLIENT_CERT")
        .ok()
        .filter(|c| !c.is_empty());
    let (server, cert_field) = match client_cert {
        Some(pem) => {
            let (config, field) = automtls::server_config(&pem)?;
            let cancel = tokio_util::sync::CancellationToken::new();
            let incoming = nexus_tls::listener::TlsListener::new(
                listener,
                nexus_tls::reload::ReloadingServerConfig::fixed(config),
                cancel.clone(),
            )?;
            let fut = router.serve_with_incoming_shutdown(incoming.into_stream(), stopped);
            let fut: std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>> =
                Box::pin(async move {
                    let r = fut.await;
                    cancel.cancel();
                    r
                });
            (fut, format!("|{field}"))
        }
        None => {
            let fut: std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>> =
                Box::pin(router.serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    stopped,
                ));
            (fut, String::new())
        }
    };
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "1|6|tcp|{addr}|grpc{cert_field}")?;
        out.flush()?;
    }
    tracing::info!(%addr, "serving the Terraform plugin protocol v6");
    server.await.context("the gRPC server failed")?;
    Ok(())
}
