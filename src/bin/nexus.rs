//! `nexus`: the server binary. `nexus gateway` runs one regional gateway; `nexus dev` runs a
//! local cluster for development with sensible defaults.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use nexus::cli_config::GatewayArgs;
use nexus::config_file::{ConfigFile, ControlPlaneSettings, explicit};
use nexus_gateway::GatewayConfig;

/// mimalloc instead of glibc's allocator: on the message path one task allocates a frame and
/// another frees it, and glibc's cross-thread frees (`_int_free`, `malloc_consolidate`) were
/// ~6 % of the gateway's instructions (docs/benchmarks.md). Built with `no_thp`: with
/// transparent huge pages mimalloc's arenas fill 2 MiB at a time, and the gateway's resident
/// memory grew by 25 MiB instead of ~10 MiB over the slow-consumer test's first 20 MiB flood
/// (tests/protocol.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "nexus",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("NEXUS_BUILD_COMMIT"), ")"),
    about = "Nexus message router: regional gateways for polyglot services",
    long_about = "Nexus message router.\n\nRun `nexus dev` for a local cluster, or `nexus gateway --region <name>` for one regional gateway.\nEvery flag can also be set with the NEXUS_* environment variable shown in its help."
)]
struct Cli {
    /// Log lines on stderr: `text` (coloured only when stderr is a terminal and NO_COLOR is
    /// unset) or `json` (one object per line, for log shippers).
    #[arg(long, global = true, env = "NEXUS_LOG_FORMAT", default_value = "text")]
    log_format: nexus::telemetry::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one regional gateway.
    Gateway {
        #[command(flatten)]
        gateway: GatewayArgs,
        #[command(flatten)]
        federation: Box<nexus::federation::FederationArgs>,
    },
    /// Issue a cluster CA and the certificates of a deployment: gateways, control plane,
    /// console, admin clients (PEM files; re-run to rotate, see docs/security.md).
    Certs(nexus::certs::CertsArgs),
    /// Write a development federation CA and a certificate per region (PEM files).
    FederationCerts {
        /// Directory to write ca.pem, <region>.pem and <region>-key.pem into.
        #[arg(long)]
        out: std::path::PathBuf,
        /// Regions, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        regions: Vec<String>,
    },
    /// Run the control plane: Admin API over etcd or the embedded store.
    ControlPlane(ControlPlaneArgs),
    /// Run a local development cluster: a control plane with the embedded store and DNS,
    /// and one gateway per region, federated; prints where everything listens.
    Dev(DevArgs),
    /// Run the web console for operators (docs/console.md).
    Console(nexus::console::ConsoleArgs),
    /// Config files: `nexus config check FILE` validates one and prints the effective
    /// settings.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file (every section it has: [gateway], [federation],
    /// [control_plane], [console]) and print the effective settings, defaults filled in.
    /// Flags and NEXUS_* variables, which override the file at run time, are not applied.
    /// Exit status 0 when valid, 1 with the problem (key and line) when not.
    Check {
        /// The TOML file.
        file: std::path::PathBuf,
        /// Only print whether it is valid, not the settings.
        #[arg(long, short)]
        quiet: bool,
    },
}

#[derive(clap::Args)]
struct ControlPlaneArgs {
    /// TOML config file: its [control_plane] section (docs/operations.md §8); flags and
    /// environment variables override its values.
    #[arg(long, env = "NEXUS_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// HTTP address for /healthz, /readyz and /metrics (none when absent).
    #[arg(long, env = "NEXUS_CP_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Plaintext gRPC address serving only grpc.health.v1, for probes that cannot speak TLS
    /// (none when absent).
    #[arg(long, env = "NEXUS_CP_HEALTH_LISTEN")]
    health_listen: Option<std::net::SocketAddr>,
    /// gRPC address for the Admin API (and grpc.health.v1).
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
    /// UDP/TCP address for DNS discovery (SRV records of live gateways); off when absent.
    #[arg(long, env = "NEXUS_DNS_LISTEN")]
    dns_listen: Option<std::net::SocketAddr>,
    /// DNS zone: adapters resolve _nexus._tcp.<region>.<zone>.
    #[arg(long, env = "NEXUS_DNS_ZONE", default_value = "nexus.local")]
    dns_zone: String,
    /// TTL of DNS answers (at least 1s).
    #[arg(long, default_value = "5s", value_parser = nexus::ctl::parse_duration)]
    dns_ttl: std::time::Duration,
    /// A gateway that stops heartbeating disappears from discovery after this long.
    #[arg(long, default_value = "10s", value_parser = nexus::ctl::parse_duration)]
    lease_ttl: std::time::Duration,
    /// Admin API calls need a key with the admin scope (`required`) or anyone may manage
    /// everything (`off`, development only).
    #[arg(long, env = "NEXUS_ADMIN_AUTH", default_value = "required", value_parser = ["required", "off"])]
    admin_auth: String,
    /// Where the bootstrap admin key is written if no admin key exists (default:
    /// <data-dir>/admin.key).
    #[arg(long, env = "NEXUS_ADMIN_KEY_FILE")]
    admin_key_file: Option<std::path::PathBuf>,
    /// PEM certificate of the Admin API and config push: served over TLS (reloaded when the
    /// file changes). `nexus certs --control-plane <host>` issues one.
    #[arg(long, env = "NEXUS_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "NEXUS_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// The cluster CA: gateways must present a certificate from it naming their id and
    /// region to sync and register; admin certificates from it stand in for an admin key.
    #[arg(long, env = "NEXUS_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<std::path::PathBuf>,
    /// Serve plaintext, or accept gateways without certificates, on a non-loopback address
    /// (a warning at start).
    #[arg(long, env = "NEXUS_INSECURE")]
    insecure: bool,
    /// PEM CA(s) of etcd's server certificate (use https:// --etcd endpoints).
    #[arg(long, env = "NEXUS_ETCD_CA")]
    etcd_ca: Option<std::path::PathBuf>,
    /// PEM client certificate for etcd (etcd --client-cert-auth).
    #[arg(long, env = "NEXUS_ETCD_CERT", requires = "etcd_key")]
    etcd_cert: Option<std::path::PathBuf>,
    /// Key of --etcd-cert.
    #[arg(long, env = "NEXUS_ETCD_KEY", requires = "etcd_cert")]
    etcd_key: Option<std::path::PathBuf>,
    /// etcd user (with etcd auth enabled); the password comes from --etcd-password-file or
    /// NEXUS_ETCD_PASSWORD, never the command line.
    #[arg(long, env = "NEXUS_ETCD_USER")]
    etcd_user: Option<String>,
    /// File holding the etcd user's password.
    #[arg(long, env = "NEXUS_ETCD_PASSWORD_FILE", requires = "etcd_user")]
    etcd_password_file: Option<std::path::PathBuf>,
    /// Audit records kept: each new record beyond this many drops the oldest (0: no count
    /// bound; then set --audit-max-age).
    #[arg(long, env = "NEXUS_AUDIT_MAX_RECORDS", default_value_t = nexus_control_plane::audit::retention::DEFAULT_MAX_RECORDS)]
    audit_max_records: u64,
    /// Audit records older than this are dropped (checked at start and every 10 minutes),
    /// e.g. 90d; no age bound when absent.
    #[arg(long, env = "NEXUS_AUDIT_MAX_AGE", value_parser = nexus::ctl::parse_duration)]
    audit_max_age: Option<std::time::Duration>,
}

#[derive(clap::Args)]
struct DevArgs {
    /// Regions to run, comma-separated; each gets a gateway, all federated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "us-east,eu-west,ap-south"
    )]
    regions: Vec<String>,
    /// First region's adapter address; region i listens on port + 10 i.
    /// Gateways in each region: more than one makes each region a cluster.
    #[arg(long, default_value_t = 1)]
    gateways_per_region: usize,
    #[arg(long, default_value = "127.0.0.1:7422")]
    listen: std::net::SocketAddr,
    /// First region's metrics address; region i uses port + i.
    #[arg(long, default_value = "127.0.0.1:7480")]
    metrics_listen: std::net::SocketAddr,
    /// Control plane Admin API address.
    #[arg(long, default_value = "127.0.0.1:7400")]
    control_plane_listen: std::net::SocketAddr,
    /// Control plane DNS address (SRV discovery of the dev gateways).
    #[arg(long, default_value = "127.0.0.1:7453")]
    dns_listen: std::net::SocketAddr,
    /// Where the dev cluster keeps its state (default: $XDG_DATA_HOME/nexus/dev).
    #[arg(long, env = "NEXUS_DEV_DIR")]
    dev_dir: Option<std::path::PathBuf>,
    /// API keys on the gateways: off (default for dev) or required.
    #[arg(long, default_value = "off", value_parser = ["required", "off"])]
    auth: String,
    /// Web console address ("off": no console).
    #[arg(long, default_value = "127.0.0.1:7490")]
    console_listen: String,
    /// A console site built by `scripts/build-console SITE_DIR`, served instead of the
    /// browser bundle compiled into the binary (the default).
    #[arg(long, env = "NEXUS_CONSOLE_SITE")]
    console_site: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    nexus_proto::build_info::set_commit(env!("NEXUS_BUILD_COMMIT"));
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // The subcommand's own matches: which flags were given, for layering over the file.
    let sub = matches
        .subcommand()
        .map(|(_, m)| m.clone())
        .unwrap_or_default();
    let service = match &cli.command {
        Command::Gateway { .. } => "nexus-gateway",
        Command::FederationCerts { .. } => "nexus-federation-certs",
        Command::ControlPlane(_) => "nexus-control-plane",
        Command::Dev(_) => "nexus-dev",
        Command::Console(_) => "nexus-console",
        Command::Certs(_) => "nexus-certs",
        Command::Config(_) => "nexus-config",
    };
    // Kept until the end of main: dropping it flushes exported spans.
    let _telemetry = match nexus::telemetry::init(service, cli.log_format) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("nexus: error: cannot set up logging: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Gateway {
            gateway,
            federation,
        } => run_gateway(gateway, *federation, sub).await,
        Command::FederationCerts { out, regions } => {
            nexus::federation::write_dev_certs(&out, &regions).map(|()| {
                println!(
                    "wrote ca.pem and certificates for {} to {}",
                    regions.join(", "),
                    out.display()
                )
            })
        }
        Command::Certs(args) => nexus::certs::run(&args).map(|written| {
            for f in written {
                println!("wrote {}", f.display());
            }
        }),
        Command::ControlPlane(args) => match resolve_control_plane(&args, &sub) {
            Ok(settings) => {
                let reload = args.config.is_some().then_some(sub);
                run_control_plane(settings, reload).await
            }
            Err(e) => Err(e),
        },
        Command::Dev(args) => run_dev(args).await,
        Command::Console(args) => match nexus::console::resolve(&args, &sub) {
            Ok(settings) => {
                let has_file = args.config.is_some();
                let again = move || {
                    let args =
                        <nexus::console::ConsoleArgs as FromArgMatches>::from_arg_matches(&sub)?;
                    nexus::console::resolve(&args, &sub)
                };
                let again = has_file.then_some(again);
                nexus::reload::on_sighup_report("console", settings.clone(), again);
                nexus::console::run(settings, shutdown_signal()).await
            }
            Err(e) => Err(e),
        },
        Command::Config(ConfigCommand::Check { file, quiet }) => config_check(&file, quiet),
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

/// The control plane's settings: defaults, then the file's [control_plane], then the flags
/// given.
fn resolve_control_plane(
    args: &ControlPlaneArgs,
    m: &clap::ArgMatches,
) -> anyhow::Result<ControlPlaneSettings> {
    let mut s = match &args.config {
        Some(path) => {
            let file = ConfigFile::load(path)?;
            file.require("control_plane", &file.control_plane)?.clone()
        }
        None => ControlPlaneSettings::default(),
    };
    let e = |id: &str| explicit(m, id);
    if e("listen") {
        s.listen = args.listen;
    }
    if e("etcd") {
        s.etcd = args.etcd.clone();
    }
    if e("data_dir") {
        s.data_dir = args.data_dir.clone();
    }
    if e("etcd_connect_timeout") {
        s.etcd_connect_timeout = args.etcd_connect_timeout;
    }
    if e("dns_listen") {
        s.dns_listen = args.dns_listen;
    }
    if e("dns_zone") {
        s.dns_zone = args.dns_zone.clone();
    }
    if e("dns_ttl") {
        s.dns_ttl = args.dns_ttl;
    }
    if e("lease_ttl") {
        s.lease_ttl = args.lease_ttl;
    }
    if e("admin_auth") {
        s.admin_auth = if args.admin_auth == "off" {
            nexus::config_file::AdminAuth::Off
        } else {
            nexus::config_file::AdminAuth::Required
        };
    }
    if e("admin_key_file") {
        s.admin_key_file = args.admin_key_file.clone();
    }
    if e("metrics_listen") {
        s.metrics_listen = args.metrics_listen;
    }
    if e("health_listen") {
        s.health_listen = args.health_listen;
    }
    if e("tls_cert") {
        s.tls.cert = args.tls_cert.clone();
    }
    if e("tls_key") {
        s.tls.key = args.tls_key.clone();
    }
    if e("tls_client_ca") {
        s.tls.client_ca = args.tls_client_ca.clone();
    }
    if args.insecure {
        s.insecure = true;
    }
    if e("etcd_ca") {
        s.etcd_ca = args.etcd_ca.clone();
    }
    if e("etcd_cert") {
        s.etcd_cert = args.etcd_cert.clone();
    }
    if e("etcd_key") {
        s.etcd_key = args.etcd_key.clone();
    }
    if e("etcd_user") {
        s.etcd_user = args.etcd_user.clone();
    }
    if e("etcd_password_file") {
        s.etcd_password_file = args.etcd_password_file.clone();
    }
    if e("audit_max_records") {
        s.audit_max_records = args.audit_max_records;
    }
    if e("audit_max_age") {
        s.audit_max_age = args.audit_max_age;
    }
    s.validate()
        .map_err(|e| anyhow::anyhow!("control plane configuration is invalid: {e:#}"))?;
    Ok(s)
}

/// `nexus config check FILE`.
fn config_check(file: &std::path::Path, quiet: bool) -> anyhow::Result<()> {
    let config = ConfigFile::load(file)?;
    config
        .check()
        .map_err(|e| anyhow::anyhow!("config file {} is not valid: {e:#}", file.display()))?;
    let sections = config.sections();
    println!(
        "{}: valid ({})",
        file.display(),
        sections
            .iter()
            .map(|s| format!("[{s}]"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !quiet {
        println!(
            "# Effective settings: the file with defaults filled in. At run time, flags and NEXUS_* variables override them."
        );
        print!("{}", config.effective_toml()?);
    }
    Ok(())
}

async fn run_control_plane(
    args: ControlPlaneSettings,
    reload: Option<clap::ArgMatches>,
) -> anyhow::Result<()> {
    let store = if args.etcd.is_empty() {
        nexus_control_plane::server::StoreConfig::Embedded(args.data_dir.join("control-plane.redb"))
    } else {
        nexus_control_plane::server::StoreConfig::Etcd(args.etcd.clone())
    };
    let mut cfg = nexus_control_plane::server::ControlPlaneConfig::new(args.listen, store.clone());
    cfg.store_connect_timeout = args.etcd_connect_timeout;
    cfg.dns_listen = args.dns_listen;
    cfg.dns_zone = args.dns_zone.clone();
    cfg.dns_ttl = args.dns_ttl;
    cfg.lease_ttl = args.lease_ttl;
    cfg.admin_auth = args.admin_auth == nexus::config_file::AdminAuth::Required;
    cfg.insecure = args.insecure;
    cfg.metrics_listen = args.metrics_listen;
    cfg.health_listen = args.health_listen;
    cfg.audit_retention = nexus_control_plane::audit::Retention {
        max_records: args.audit_max_records,
        max_age: args.audit_max_age,
    };
    if let (Some(cert), Some(key)) = (&args.tls.cert, &args.tls.key) {
        cfg.tls = Some(nexus_tls::ServerTlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.tls.client_ca.clone(),
            require_client_cert: false,
        });
    }
    cfg.etcd_access = nexus_control_plane::store::etcd::EtcdAccess {
        ca: args.etcd_ca.clone(),
        cert: args.etcd_cert.clone(),
        key: args.etcd_key.clone(),
        user: match &args.etcd_user {
            None => None,
            Some(user) => {
                let password = match &args.etcd_password_file {
                    Some(f) => nexus::ctl::read_secret_file(f, "etcd password")?,
                    None => std::env::var("NEXUS_ETCD_PASSWORD").map_err(|_| {
                        anyhow::anyhow!(
                            "--etcd-user needs a password: --etcd-password-file or NEXUS_ETCD_PASSWORD"
                        )
                    })?,
                };
                Some((user.clone(), password))
            }
        },
    };
    let key_file = args
        .admin_key_file
        .clone()
        .unwrap_or_else(|| args.data_dir.join("admin.key"));
    cfg.admin_key_file = Some(key_file.clone());
    let cp = nexus_control_plane::server::start(cfg).await?;
    if args.admin_auth == nexus::config_file::AdminAuth::Required {
        println!(
            "nexus control plane admin API requires an admin key (bootstrap key file: {})",
            key_file.display()
        );
    } else {
        println!(
            "nexus control plane admin API is OPEN (--admin-auth off): anyone can manage everything"
        );
    }
    match &cfg_tls_summary(&args) {
        Some(s) => println!("nexus control plane serves TLS ({s})"),
        None => println!(
            "nexus control plane serves PLAINTEXT: gateways are not authenticated (give --tls-cert, --tls-key and --tls-client-ca)"
        ),
    }
    if let Some(dns) = cp.dns_addr {
        println!("nexus control plane DNS on {dns} (zone {})", args.dns_zone);
    }
    if let Some(m) = cp.metrics_addr {
        println!("nexus control plane metrics on {m} (/metrics, /healthz, /readyz)");
    }
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
    let again = reload.map(|m| {
        move || {
            let a = <ControlPlaneArgs as FromArgMatches>::from_arg_matches(&m)?;
            resolve_control_plane(&a, &m)
        }
    });
    nexus::reload::on_sighup_report("control_plane", args.clone(), again);
    let stop = cp.stop_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        stop.cancel();
    });
    cp.wait().await?;
    println!("nexus: stopped");
    Ok(())
}

fn cfg_tls_summary(args: &ControlPlaneSettings) -> Option<String> {
    args.tls.cert.as_ref()?;
    Some(if args.tls.client_ca.is_some() {
        "gateways must present their certificates".to_owned()
    } else {
        "gateways are NOT authenticated: no --tls-client-ca".to_owned()
    })
}

async fn run_dev(args: DevArgs) -> anyhow::Result<()> {
    nexus::dev::run(
        nexus::dev::DevOptions {
            regions: args.regions,
            gateways_per_region: args.gateways_per_region,
            listen: args.listen,
            metrics_listen: args.metrics_listen,
            control_plane_listen: args.control_plane_listen,
            dns_listen: args.dns_listen,
            dir: dev_dir(args.dev_dir),
            auth_required: args.auth == "required",
            console_listen: match args.console_listen.as_str() {
                "off" => None,
                a => Some(a.parse().map_err(|e| {
                    anyhow::anyhow!("--console-listen {a:?} is not an address: {e}")
                })?),
            },
            console_site: args.console_site,
        },
        shutdown_signal(),
    )
    .await
}

/// A gateway's settings and its federation's: defaults, the file, then the flags given.
fn resolve_gateway(
    args: &GatewayArgs,
    federation: &nexus::federation::FederationArgs,
    m: &clap::ArgMatches,
) -> anyhow::Result<(GatewayConfig, nexus::config_file::FederationSettings)> {
    let (cfg, file_fed) = args.resolve_with_file(GatewayConfig::default())?;
    let from_file = file_fed.is_some();
    let fed = file_fed.unwrap_or_default().overlay(federation, m)?;
    if from_file {
        // Flags alone are checked where they are used, with messages naming the flags.
        fed.validate()
            .map_err(|e| anyhow::anyhow!("federation configuration is invalid: {e:#}"))?;
    }
    Ok((cfg, fed))
}

async fn run_gateway(
    args: GatewayArgs,
    federation: nexus::federation::FederationArgs,
    m: clap::ArgMatches,
) -> anyhow::Result<()> {
    let (mut cfg, fed_settings) = resolve_gateway(&args, &federation, &m)?;
    let federation = fed_settings.to_args();
    if cfg.gateway_id.is_empty() {
        // Chosen here rather than in the gateway so federation can use it too.
        cfg.gateway_id = format!("gw-{:08x}", rand_id());
    }
    let pending =
        nexus::federation::bind_from_args(&federation, &cfg.region, &cfg.gateway_id).await?;
    let mut bound = None;
    if let Some(p) = &pending {
        bound = Some(p.addr()?);
        cfg.federation_addr = federation.federation_advertise.or(bound);
    }
    let gateway = nexus_gateway::start(cfg.clone()).await?;
    let links = pending.map(|p| {
        if let Some(addr) = bound {
            match cfg.federation_addr.filter(|a| *a != addr) {
                Some(advertised) => println!(
                    "nexus federation for region {} on {addr} (QUIC), registered as {advertised}",
                    cfg.region
                ),
                None => println!(
                    "nexus federation for region {} on {addr} (QUIC)",
                    cfg.region
                ),
            }
        }
        let fed = p.fed.clone();
        let spool = federation.spool(std::path::Path::new(&cfg.state_dir));
        p.attach(gateway.router.clone(), spool).map(|b| (fed, b))
    });
    let links = links.transpose()?;
    println!(
        "nexus gateway {} (region {}) listening on {}, metrics on {}",
        gateway.gateway_id, cfg.region, gateway.grpc_addr, gateway.metrics_addr
    );
    type Resolve = Box<
        dyn Fn() -> anyhow::Result<(GatewayConfig, nexus::config_file::FederationSettings)>
            + Send
            + Sync,
    >;
    let resolve: Option<Resolve> = args.config.is_some().then(|| {
        Box::new(move || {
            let args = <GatewayArgs as FromArgMatches>::from_arg_matches(&m)?;
            let fed = <nexus::federation::FederationArgs as FromArgMatches>::from_arg_matches(&m)?;
            resolve_gateway(&args, &fed, &m)
        }) as Resolve
    });
    let reload = std::sync::Arc::new(nexus::reload::GatewayReload {
        router: gateway.router.clone(),
        resolve,
        federation: links
            .as_ref()
            .map(|(fed, _)| (fed.clone(), fed_settings.clone())),
    });
    nexus::reload::on_sighup(move || {
        let reload = reload.clone();
        async move { reload.run().await }
    });
    let stop = gateway.stop_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        stop.cancel();
    });
    gateway.wait().await?;
    if let Some((fed, _bridge)) = links {
        // Close links now so peers notice at once rather than after the idle timeout.
        fed.shutdown().await;
    }
    println!("nexus: stopped");
    Ok(())
}

/// A random 32-bit id for generated gateway ids.
fn rand_id() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
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
