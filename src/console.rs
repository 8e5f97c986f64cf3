//! `nexus console`: the web console for operators (crate `nexus-console`, in `web-console/`),
//! served over HTTP and talking to the control plane's Admin API and the gateways' HTTP
//! endpoints. `nexus dev` starts one too. docs/console.md describes it.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use nexus_console::server::{Console, ConsoleOptions};

#[derive(clap::Args)]
pub struct ConsoleArgs {
    /// HTTP address of the console.
    #[arg(long, env = "NEXUS_CONSOLE_LISTEN", default_value = "127.0.0.1:7490")]
    pub listen: SocketAddr,
    /// The control plane's Admin API (host:port or URL).
    #[arg(long, env = "NEXUS_CONTROL_PLANE", default_value = "127.0.0.1:7400")]
    pub control_plane: String,
    /// File holding an admin key the console uses for its background topology poll
    /// (otherwise it uses the key of the latest login). The key may also come from
    /// NEXUS_CONSOLE_ADMIN_KEY; never pass it on the command line.
    #[arg(long, env = "NEXUS_CONSOLE_ADMIN_KEY_FILE")]
    pub admin_key_file: Option<PathBuf>,
    /// A site directory written by `scripts/build-console SITE_DIR`, served instead of the
    /// browser bundle compiled into this binary (the default).
    #[arg(long, env = "NEXUS_CONSOLE_SITE")]
    pub site: Option<PathBuf>,
}

/// Binds the console; the caller prints where it listens and runs it.
pub async fn bind(
    listen: SocketAddr,
    control_plane: String,
    admin_key: Option<String>,
    site: Option<PathBuf>,
) -> anyhow::Result<Console> {
    let mut opts = ConsoleOptions::new(listen, control_plane, site);
    opts.admin_key = admin_key;
    Console::bind(opts).await
}

/// Runs `nexus console` until `shutdown`.
pub async fn run(
    args: ConsoleArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let admin_key = match (
        &args.admin_key_file,
        std::env::var("NEXUS_CONSOLE_ADMIN_KEY"),
    ) {
        (Some(path), _) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the admin key file {}", path.display()))?
                .trim()
                .to_owned(),
        ),
        (None, Ok(k)) if !k.trim().is_empty() => Some(k.trim().to_owned()),
        _ => None,
    };
    let console = bind(
        args.listen,
        args.control_plane.clone(),
        admin_key,
        args.site,
    )
    .await?;
    println!(
        "nexus console on http://{} (control plane {}){}",
        console.local_addr(),
        args.control_plane,
        if console.hydrates() {
            ""
        } else {
            "; not hydrated: that site has no wasm (scripts/build-console SITE_DIR writes one)"
        }
    );
    console.run(shutdown).await?;
    println!("nexus: stopped");
    Ok(())
}
