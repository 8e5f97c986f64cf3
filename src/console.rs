//! `nexus console`: the web console for operators (crate `nexus-console`, in `web-console/`),
//! served over HTTP and talking to the control plane's Admin API and the gateways' HTTP
//! endpoints. `nexus dev` starts one too. docs/console.md describes it.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use nexus_console::server::{Console, ConsoleOptions};

use crate::config_file::{ConfigFile, ConsoleSettings, explicit};

#[derive(clap::Args)]
pub struct ConsoleArgs {
    /// TOML config file: its [console] section (docs/operations.md §2); flags and
    /// environment variables override its values.
    #[arg(long, env = "NEXUS_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTP address of the console (also /healthz, /readyz and /metrics).
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
    /// PEM certificate: serve HTTPS (reloaded when the file changes) with a Secure session
    /// cookie. `nexus certs --console <host>` issues one.
    #[arg(long, env = "NEXUS_CONSOLE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "NEXUS_CONSOLE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA(s) of an https:// control plane (default: the system's roots).
    #[arg(long, env = "NEXUS_CONTROL_PLANE_CA")]
    pub control_plane_ca: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address (a warning at start).
    #[arg(long, env = "NEXUS_INSECURE")]
    pub insecure: bool,
}

/// Binds the console; the caller prints where it listens and runs it.
pub async fn bind(
    listen: SocketAddr,
    control_plane: String,
    admin_key: Option<String>,
    site: Option<PathBuf>,
) -> anyhow::Result<Console> {
    bind_with(options(listen, control_plane, admin_key, site)).await
}

/// Console options with the defaults for everything but these.
pub fn options(
    listen: SocketAddr,
    control_plane: String,
    admin_key: Option<String>,
    site: Option<PathBuf>,
) -> ConsoleOptions {
    let mut opts = ConsoleOptions::new(listen, control_plane, site);
    opts.admin_key = admin_key;
    opts
}

/// Binds the console with full options.
pub async fn bind_with(opts: ConsoleOptions) -> anyhow::Result<Console> {
    Console::bind(opts).await
}

/// The console's settings: defaults, then the file's [console], then the flags given.
pub fn resolve(args: &ConsoleArgs, m: &clap::ArgMatches) -> anyhow::Result<ConsoleSettings> {
    let mut s = match &args.config {
        Some(path) => {
            let file = ConfigFile::load(path)?;
            file.require("console", &file.console)?.clone()
        }
        None => ConsoleSettings::default(),
    };
    let e = |id: &str| explicit(m, id);
    if e("listen") {
        s.listen = args.listen;
    }
    if e("control_plane") {
        s.control_plane = args.control_plane.clone();
    }
    if e("admin_key_file") {
        s.admin_key_file = args.admin_key_file.clone();
    }
    if e("site") {
        s.site = args.site.clone();
    }
    if e("tls_cert") {
        s.tls.cert = args.tls_cert.clone();
    }
    if e("tls_key") {
        s.tls.key = args.tls_key.clone();
    }
    if e("control_plane_ca") {
        s.control_plane_ca = args.control_plane_ca.clone();
    }
    if args.insecure {
        s.insecure = true;
    }
    s.validate().context("console configuration is invalid")?;
    Ok(s)
}

/// Runs `nexus console` until `shutdown`.
pub async fn run(
    args: ConsoleSettings,
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
    let mut opts = options(
        args.listen,
        args.control_plane.clone(),
        admin_key,
        args.site,
    );
    if let (Some(cert), Some(key)) = (&args.tls.cert, &args.tls.key) {
        opts.tls = Some(nexus_tls::ServerTlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: None,
            require_client_cert: false,
        });
    }
    opts.control_plane_ca = args.control_plane_ca.clone();
    opts.insecure = args.insecure;
    let console = bind_with(opts).await?;
    println!(
        "nexus console on {}://{} (control plane {}){}",
        if console.https() { "https" } else { "http" },
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
