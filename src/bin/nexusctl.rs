//! `nexusctl`: the operator's command line. Gateway commands (pub, sub, req, info) go
//! through the Rust adapter; management commands (routes, schemas, keys, regions, gateways,
//! topology) go to the control plane's Admin API. The commands live in `nexus::ctl`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use nexus::ctl::{Output, admin, messaging, parse_duration};

/// `schemas check` found the draft incompatible (distinct from 1, an error, so that CI can
/// tell "this change breaks consumers" from "the check could not run", as `buf breaking` does).
const EXIT_INCOMPATIBLE: u8 = 3;

#[derive(Parser)]
#[command(
    name = "nexusctl",
    version,
    about = "Operate Nexus from the command line",
    long_about = "Operate Nexus from the command line.\n\n\
Messaging (talks to a gateway, --gateway or NEXUS_URL, default http://127.0.0.1:7422):\n  \
nexusctl sub 'orders.>'                          print every message under orders.\n  \
nexusctl pub orders.eu.created '{\"id\":1}'       publish one message\n  \
nexusctl req math.double 21 --timeout 2s         call a service and print its reply\n\n\
Management (talks to the control plane, --control-plane or NEXUS_CONTROL_PLANE,\n\
default http://127.0.0.1:7400):\n  \
nexusctl routes apply -f orders.toml             create or update a route from a file\n  \
nexusctl schemas register orders.created -f order.json\n  \
nexusctl schemas check orders.created -f order-v2.json\n  \
nexusctl keys create billing --publish 'billing.>' --subscribe 'billing.>'\n  \
nexusctl topology                                regions and their live gateways\n  \
nexusctl audit --since 1h --kind route           who changed which route in the last hour\n  \
nexusctl trace 01J9Z3...                         follow one message across every gateway\n\n\
Add -o json to any command for output meant for scripts.\n\n\
Exit status: 0 ok; 1 error (a message on stderr names what is wrong); 2 usage error;\n\
3 `schemas check` found the draft incompatible."
)]
struct Cli {
    /// Gateway for messaging commands.
    #[arg(
        long,
        global = true,
        env = "NEXUS_URL",
        default_value = "http://127.0.0.1:7422"
    )]
    gateway: String,
    /// Control plane for management commands.
    #[arg(
        long,
        global = true,
        env = "NEXUS_CONTROL_PLANE",
        default_value = "http://127.0.0.1:7400"
    )]
    control_plane: String,
    /// API key presented to the gateway. Prefer NEXUS_API_KEY or --api-key-file: a flag
    /// shows in `ps`.
    #[arg(long, global = true, env = "NEXUS_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// File holding the API key presented to the gateway (used when no key is given
    /// directly).
    #[arg(long, global = true, env = "NEXUS_API_KEY_FILE")]
    api_key_file: Option<PathBuf>,
    /// Key with the admin scope, for management commands. Prefer NEXUS_ADMIN_KEY or
    /// --admin-key-file: a flag shows in `ps`.
    #[arg(long, global = true, env = "NEXUS_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    /// File holding the admin key, used when no key is given directly (the control plane's
    /// bootstrap key file works as is).
    #[arg(long, global = true, env = "NEXUS_ADMIN_KEY_FILE")]
    admin_key_file: Option<PathBuf>,
    /// PEM CA(s) to verify https:// gateways and control planes with (default: the system's
    /// roots).
    #[arg(long, global = true, env = "NEXUS_CA")]
    ca: Option<PathBuf>,
    /// Admin client certificate (`nexus certs --admin <name>`), accepted by a control plane
    /// with --tls-client-ca instead of an admin key.
    #[arg(long, global = true, env = "NEXUSCTL_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Key of --tls-cert.
    #[arg(long, global = true, env = "NEXUSCTL_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// After a config change (routes, schemas, enforcement, keys), return at once instead of
    /// waiting until every live gateway applied it.
    #[arg(long, global = true)]
    no_wait: bool,
    /// How long a config change waits for every live gateway to apply it before failing with
    /// the names of those that have not.
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration, allow_hyphen_values = true)]
    wait_timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Publish a message (payload from the argument, or stdin with `-`).
    Pub {
        subject: String,
        payload: String,
        /// Header as key=value; repeatable.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// Publish this many copies.
        #[arg(long, default_value_t = 1)]
        count: u64,
    },
    /// Subscribe and print messages until interrupted (or --count messages).
    Sub {
        /// Subject pattern: `*` matches one token, a trailing `>` the rest.
        pattern: String,
        /// Join this queue group (each message goes to one member).
        #[arg(long)]
        queue: Option<String>,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Send a request and print the reply.
    Req {
        subject: String,
        payload: String,
        /// Header as key=value; repeatable.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// How long to wait, e.g. 500ms, 2s.
        #[arg(long, default_value = "5s", value_parser = parse_duration, allow_hyphen_values = true)]
        timeout: Duration,
    },
    /// Show the gateway's region, id, protocol and limits.
    Info,
    /// Manage routes: where a subject's messages may go, and with which consistency.
    #[command(subcommand)]
    Routes(RoutesCmd),
    /// Manage the schema registry.
    #[command(subcommand)]
    Schemas(SchemasCmd),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// List, create or delete regions.
    #[command(subcommand)]
    Regions(RegionsCmd),
    /// List live gateways.
    Gateways {
        /// Only this region.
        #[arg(long, default_value = "")]
        region: String,
    },
    /// Show regions and their live gateways.
    Topology {
        /// Also ask every gateway for its links: cluster links to the other gateways of its
        /// region (RTT, traffic), the gateway it goes through in each other region, and its
        /// replication spools.
        #[arg(long)]
        links: bool,
    },
    /// Follow one message: what happened to it at every gateway of every region (received,
    /// schema check, route decision, cluster and region hops with RTT, deliveries, drops
    /// and why, the reply), as a timeline. Only traced messages are known: sampled ones, and
    /// every message published with the header `nexus-trace: 1`. Without a MESSAGE_ID, lists
    /// recent traced messages (--subject, --since).
    Trace {
        /// The message id (a ULID, as `nexusctl pub` prints it, and `nexusctl sub -o json`).
        message_id: Option<String>,
        /// Without a message id: only messages on subjects matching this pattern.
        #[arg(long, default_value = "")]
        subject: String,
        /// Without a message id: only messages from this long ago onwards, e.g. 10m.
        #[arg(long, value_parser = parse_duration)]
        since: Option<Duration>,
        /// Without a message id: at most this many records per gateway.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Live tail: messages published on subjects matching PATTERN, as every gateway taps
    /// them (sampled and rate-limited at each gateway; a slow tail loses messages, counted,
    /// and never slows publishers). Payload previews follow each subject's tail preview
    /// setting (`schemas set-tail-preview`); none by default. Counters go to stderr.
    Tail {
        /// Subject pattern (`*`, `>`).
        pattern: String,
        /// Fraction of matching messages shown (decided at each gateway).
        #[arg(long, default_value_t = 1.0)]
        sample: f64,
        /// At most this many messages a second from each gateway (1-1000).
        #[arg(long, default_value_t = 20)]
        rate: u32,
        /// Stop after this many messages (0: run until interrupted).
        #[arg(long, default_value_t = 0)]
        count: u64,
        /// Stop after this long, e.g. 30s.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
    },
    /// Recent WARN and ERROR log events of every gateway, oldest first; --follow keeps
    /// printing new ones.
    Logs {
        #[arg(long, short)]
        follow: bool,
        /// Recent events per gateway printed first.
        #[arg(long, default_value_t = 100)]
        backlog: u32,
        /// warn or error.
        #[arg(long, default_value = "warn")]
        level: String,
    },
    /// Show the audit trail: who changed what through the Admin API, when and from where
    /// (the latest records, or those from --since / --since-seq on). Read-only.
    Audit(AuditArgs),
}

#[derive(clap::Args)]
struct AuditArgs {
    /// Only records from this long ago onwards, e.g. 30m, 2h, 7d.
    #[arg(long, value_parser = parse_duration)]
    since: Option<Duration>,
    /// Only records from this sequence number onwards (to page forward).
    #[arg(long = "since-seq")]
    since_seq: Option<u64>,
    /// Only changes by this admin key id (or admin certificate name).
    #[arg(long)]
    actor: Option<String>,
    /// Only this kind of target: route, key, schema, schema-config, region.
    #[arg(long, value_parser = ["route", "key", "schema", "schema-config", "region"])]
    kind: Option<String>,
    /// Only this target (route or region name, key id, schema subject).
    #[arg(long)]
    name: Option<String>,
    /// Only this action, e.g. routes.apply, keys.revoke.
    #[arg(long)]
    action: Option<String>,
    /// At most this many records (1-1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: u32,
}

#[derive(Subcommand)]
enum RoutesCmd {
    /// List every route.
    List,
    /// Show one route.
    Get { name: String },
    /// Create or replace a route from a TOML or JSON file.
    ///
    /// File fields: name, subjects, policy (local_first | nearest | pinned | weighted |
    /// broadcast), pinned_region, weights (region = weight), failover (regions in order),
    /// consistency (local | best_effort | async | sync), sync_quorum, description.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Only apply if the route is still at this version (-1: must not exist).
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        expect_version: i64,
    },
    /// Delete a route.
    Delete {
        name: String,
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        expect_version: i64,
    },
    /// Where a message on SUBJECT published in a region would go now, and why: the route
    /// that applies, each region's interest, link state, RTT and cost, and the choice.
    Explain {
        subject: String,
        /// The region the message would be published in (asks one of its live gateways);
        /// may be left out when there is only one region.
        #[arg(long)]
        from: Option<String>,
    },
}

#[derive(Subcommand)]
enum SchemasCmd {
    /// Register a new version for a subject (refused if incompatible).
    Register(SchemaFile),
    /// Check a draft against the registered versions without registering it; exits 1 if
    /// incompatible.
    Check(SchemaFile),
    /// List subjects with their versions and settings.
    List,
    /// Show a version (latest by default).
    Get {
        subject: String,
        #[arg(long, default_value_t = 0)]
        version: u32,
    },
    /// Delete one version, or every version of the subject.
    Delete {
        subject: String,
        #[arg(long, default_value_t = 0)]
        version: u32,
    },
    /// Set the compatibility mode of a subject, or the default with --default.
    SetCompatibility {
        /// NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL or
        /// FULL_TRANSITIVE.
        mode: String,
        #[arg(long, conflicts_with = "default")]
        subject: Option<String>,
        #[arg(long)]
        default: bool,
    },
    /// Set publish-time enforcement for a subject: off, warn or reject.
    SetEnforcement {
        subject: String,
        enforcement: String,
    },
    /// Set how much of a payload the live tail (`nexusctl tail`, the console) may show for a
    /// subject, or by default: the first MAX_BYTES (0: none, the default), with the values
    /// of the --redact JSON fields replaced by "***". Replaces the subject's setting.
    SetTailPreview {
        #[arg(long, conflicts_with = "default")]
        subject: Option<String>,
        /// The default for subjects without their own setting.
        #[arg(long)]
        default: bool,
        /// Payload bytes shown, 0-4096.
        #[arg(long)]
        max_bytes: u32,
        /// Comma-separated JSON field names whose values are masked.
        #[arg(long, value_delimiter = ',')]
        redact: Vec<String>,
    },
}

/// A schema definition named on the command line (register and check take the same).
#[derive(clap::Args)]
struct SchemaFile {
    /// The message subject the schema describes (no wildcards).
    subject: String,
    /// The schema: a JSON Schema document (.json) or a FileDescriptorSet (.pb, .desc,
    /// .binpb, .protoset).
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// json or protobuf (default: from the file extension).
    #[arg(long)]
    format: Option<String>,
    /// Protobuf: the fully-qualified message name payloads are encoded as.
    #[arg(long)]
    message: Option<String>,
}

impl SchemaFile {
    fn input(&self) -> admin::SchemaInput<'_> {
        admin::SchemaInput {
            subject: &self.subject,
            file: &self.file,
            format: self.format.as_deref(),
            message: self.message.as_deref(),
        }
    }
}

/// Which TLS client certificates may present a key (docs/security.md §4.1); repeatable, and a
/// certificate matching any one of them is accepted.
#[derive(Debug, clap::Args)]
struct CertBindingArgs {
    /// SHA-256 fingerprint of an allowed client certificate (64 hex digits, colons allowed).
    #[arg(long = "cert-sha256")]
    cert_sha256: Vec<String>,
    /// A DNS name (subjectAltName) an allowed client certificate carries, e.g.
    /// orders.client.nexus for `nexus certs --client orders`.
    #[arg(long = "cert-name")]
    cert_name: Vec<String>,
    /// A PEM certificate file: allows exactly that certificate (by its fingerprint).
    #[arg(long = "cert-file")]
    cert_file: Vec<std::path::PathBuf>,
}

impl CertBindingArgs {
    fn binding(self) -> anyhow::Result<Option<nexus_proto::v1::KeyCertBinding>> {
        nexus::ctl::admin::cert_binding(self.cert_sha256, self.cert_name, &self.cert_file)
    }
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Create a key; its secret is printed once.
    Create {
        name: String,
        /// Subject pattern the key may publish and request on; repeatable.
        #[arg(long)]
        publish: Vec<String>,
        /// Subject pattern the key may subscribe and serve on; repeatable.
        #[arg(long)]
        subscribe: Vec<String>,
        /// May use the Admin API.
        #[arg(long)]
        admin: bool,
        /// Expire after this long, e.g. 90d.
        #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
        expires_in: Option<Duration>,
        #[command(flatten)]
        binding: CertBindingArgs,
    },
    /// List keys (never their secrets).
    List,
    /// Issue a new secret; the old one works for --overlap more (default 1h).
    Rotate {
        id: String,
        #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
        overlap: Option<Duration>,
    },
    /// Revoke a key at once.
    Revoke { id: String },
    /// Set a key's rate limits (every gateway enforces them; 0 or omitted: unlimited).
    Limits {
        id: String,
        /// Messages per second (publishes, requests, stream data).
        #[arg(long, default_value_t = 0)]
        msgs_per_sec: u32,
        /// Payload bytes per second.
        #[arg(long, default_value_t = 0)]
        bytes_per_sec: u64,
        /// Messages allowed at once above the rate (default: one second's worth).
        #[arg(long, default_value_t = 0)]
        burst_msgs: u32,
        /// Payload bytes allowed at once above the rate (default: one second's worth).
        #[arg(long, default_value_t = 0)]
        burst_bytes: u64,
    },
    /// Bind a key to TLS client certificates: gateways then accept it only from connections
    /// presenting one of them (open sessions without one are closed). `--clear` lifts it.
    Bind {
        id: String,
        #[command(flatten)]
        binding: CertBindingArgs,
        /// Lift the binding: any connection may present the key again.
        #[arg(long, conflicts_with_all = ["cert_sha256", "cert_name", "cert_file"])]
        clear: bool,
    },
    /// Replace a key's scopes; open sessions lose subscriptions no longer covered.
    Scopes {
        id: String,
        /// Subject pattern the key may publish and request on; repeatable.
        #[arg(long)]
        publish: Vec<String>,
        /// Subject pattern the key may subscribe and serve on; repeatable.
        #[arg(long)]
        subscribe: Vec<String>,
        /// May use the Admin API.
        #[arg(long)]
        admin: bool,
    },
}

#[derive(Subcommand)]
enum RegionsCmd {
    /// List regions.
    List,
    /// Create a region (gateways also create theirs when they register).
    Create { name: String },
    /// Delete a region; refused while gateways are registered in it or a route names it.
    Delete { name: String },
}

async fn run(mut cli: Cli) -> anyhow::Result<ExitCode> {
    let out = cli.output;
    // A key given directly (flag or environment) wins over a key file.
    if cli.api_key.is_none()
        && let Some(path) = &cli.api_key_file
    {
        cli.api_key = Some(nexus::ctl::read_secret_file(path, "API key")?);
    }
    if cli.admin_key.is_none()
        && let Some(path) = &cli.admin_key_file
    {
        cli.admin_key = Some(nexus::ctl::read_secret_file(path, "admin key")?);
    }
    let tls = nexus::ctl::ClientTls {
        ca: cli.ca.clone(),
        cert: cli.tls_cert.clone(),
        key: cli.tls_key.clone(),
    };
    let (control_plane, admin_key) = (cli.control_plane.clone(), cli.admin_key.clone());
    let (no_wait, timeout) = (cli.no_wait, cli.wait_timeout);
    let code = command(cli, &tls).await?;
    // Read-your-writes: a config change returns once every live gateway applied it.
    if let (Some(version), false) = (nexus::ctl::wait::written_config_version(), no_wait) {
        let mut a = admin::connect(&control_plane, admin_key.as_deref(), &tls).await?;
        nexus::ctl::wait::applied(&mut a, version, timeout, out).await?;
    }
    Ok(code)
}

async fn command(cli: Cli, tls: &nexus::ctl::ClientTls) -> anyhow::Result<ExitCode> {
    let out = cli.output;
    match cli.command {
        Command::Pub {
            subject,
            payload,
            headers,
            count,
        } => {
            let c = messaging::connect(&cli.gateway, cli.api_key.as_deref(), tls).await?;
            let headers = messaging::parse_headers(&headers)?;
            let payload = messaging::read_payload(&payload)?;
            messaging::publish(&c, &subject, payload, headers, count, out).await?;
            c.close().await;
        }
        Command::Sub {
            pattern,
            queue,
            count,
        } => {
            let c = messaging::connect(&cli.gateway, cli.api_key.as_deref(), tls).await?;
            messaging::subscribe(&c, &pattern, queue.as_deref(), count, out).await?;
            c.close().await;
        }
        Command::Req {
            subject,
            payload,
            headers,
            timeout,
        } => {
            let c = messaging::connect(&cli.gateway, cli.api_key.as_deref(), tls).await?;
            let headers = messaging::parse_headers(&headers)?;
            let payload = messaging::read_payload(&payload)?;
            messaging::request(&c, &subject, payload, headers, timeout, out).await?;
            c.close().await;
        }
        Command::Info => {
            let c = messaging::connect(&cli.gateway, cli.api_key.as_deref(), tls).await?;
            messaging::info(&c, out)?;
            c.close().await;
        }
        Command::Routes(cmd) => {
            let mut a = admin::connect(&cli.control_plane, cli.admin_key.as_deref(), tls).await?;
            match cmd {
                RoutesCmd::List => admin::routes_list(&mut a, out).await?,
                RoutesCmd::Get { name } => admin::routes_get(&mut a, &name, out).await?,
                RoutesCmd::Apply {
                    file,
                    expect_version,
                } => admin::routes_apply(&mut a, &file, expect_version, out).await?,
                RoutesCmd::Delete {
                    name,
                    expect_version,
                } => admin::routes_delete(&mut a, &name, expect_version, out).await?,
                RoutesCmd::Explain { subject, from } => {
                    admin::routes_explain(&mut a, &subject, from.as_deref(), out).await?
                }
            }
        }
        Command::Schemas(cmd) => {
            let mut a = admin::connect(&cli.control_plane, cli.admin_key.as_deref(), tls).await?;
            match cmd {
                SchemasCmd::Register(f) => admin::schemas_register(&mut a, f.input(), out).await?,
                SchemasCmd::Check(f) => {
                    if !admin::schemas_check(&mut a, f.input(), out).await? {
                        return Ok(ExitCode::from(EXIT_INCOMPATIBLE));
                    }
                }
                SchemasCmd::List => admin::schemas_list(&mut a, out).await?,
                SchemasCmd::Get { subject, version } => {
                    admin::schemas_get(&mut a, &subject, version, out).await?
                }
                SchemasCmd::Delete { subject, version } => {
                    admin::schemas_delete(&mut a, &subject, version, out).await?
                }
                SchemasCmd::SetCompatibility {
                    mode,
                    subject,
                    default,
                } => {
                    let subject = match (subject, default) {
                        (Some(s), false) => s,
                        (None, true) => String::new(),
                        _ => anyhow::bail!("pass --subject <subject> or --default"),
                    };
                    let mode = admin::compatibility_from(&mode)?;
                    admin::schemas_set_config(&mut a, &subject, Some(mode), None, out).await?
                }
                SchemasCmd::SetEnforcement {
                    subject,
                    enforcement,
                } => {
                    let e = admin::enforcement_from(&enforcement)?;
                    admin::schemas_set_config(&mut a, &subject, None, Some(e), out).await?
                }
                SchemasCmd::SetTailPreview {
                    subject,
                    default,
                    max_bytes,
                    redact,
                } => {
                    let subject = match (subject, default) {
                        (Some(s), false) => s,
                        (None, true) => String::new(),
                        _ => anyhow::bail!("pass --subject <subject> or --default"),
                    };
                    nexus::ctl::live::set_tail_preview(&mut a, &subject, max_bytes, redact, out)
                        .await?
                }
            }
        }
        Command::Keys(cmd) => {
            let mut a = admin::connect(&cli.control_plane, cli.admin_key.as_deref(), tls).await?;
            match cmd {
                KeysCmd::Create {
                    name,
                    publish,
                    subscribe,
                    admin: is_admin,
                    expires_in,
                    binding,
                } => {
                    let binding = binding.binding()?;
                    admin::keys_create(
                        &mut a, &name, publish, subscribe, is_admin, expires_in, binding, out,
                    )
                    .await?
                }
                KeysCmd::Bind { id, binding, clear } => {
                    let binding = binding.binding()?;
                    if binding.is_none() && !clear {
                        anyhow::bail!(
                            "nexusctl keys bind needs --cert-sha256, --cert-name or --cert-file (or --clear to lift the binding)"
                        );
                    }
                    admin::keys_bind(&mut a, &id, binding, out).await?
                }
                KeysCmd::List => admin::keys_list(&mut a, out).await?,
                KeysCmd::Rotate { id, overlap } => {
                    admin::keys_rotate(&mut a, &id, overlap, out).await?
                }
                KeysCmd::Revoke { id } => admin::keys_revoke(&mut a, &id, out).await?,
                KeysCmd::Limits {
                    id,
                    msgs_per_sec,
                    bytes_per_sec,
                    burst_msgs,
                    burst_bytes,
                } => {
                    let limits = nexus_proto::v1::KeyLimits {
                        msgs_per_sec,
                        bytes_per_sec,
                        burst_msgs,
                        burst_bytes,
                    };
                    admin::keys_limits(&mut a, &id, limits, out).await?
                }
                KeysCmd::Scopes {
                    id,
                    publish,
                    subscribe,
                    admin: is_admin,
                } => admin::keys_scopes(&mut a, &id, publish, subscribe, is_admin, out).await?,
            }
        }
        Command::Regions(cmd) => {
            let mut a = admin::connect(&cli.control_plane, cli.admin_key.as_deref(), tls).await?;
            match cmd {
                RegionsCmd::List => admin::regions_list(&mut a, out).await?,
                RegionsCmd::Create { name } => admin::regions_create(&mut a, &name, out).await?,
                RegionsCmd::Delete { name } => admin::regions_delete(&mut a, &name, out).await?,
            }
        }
        Command::Gateways { region } => {
            let mut a = admin::connect(&cli.control_plane, cli.admin_key.as_deref(), tls).await?;
            admin::gateways_list(&mut a, &region, out).await?
        }
        Command::Topology { links } => {
            let mut a = admin::connect(&cli.control_plane, cli.admin_key.as_deref(), tls).await?;
            admin::topology(&mut a, links, out).await?
        }
        Command::Trace {
            message_id,
            subject,
            since,
            limit,
        } => {
            let mut a = admin::connect(&cli.control_plane, cli.admin_key.as_deref(), tls).await?;
            match message_id {
                Some(id) => nexus::ctl::trace::by_id(&mut a, &id, out).await?,
                None => nexus::ctl::trace::search(&mut a, &subject, since, limit, out).await?,
            }
        }
        Command::Tail {
            pattern,
            sample,
            rate,
            count,
            duration,
        } => {
            let mut a = admin::connect(&cli.control_plane, cli.admin_key.as_deref(), tls).await?;
            let req = nexus_proto::v1::TailRequest {
                subject: pattern,
                sample_rate: sample,
                max_per_second: rate,
            };
            nexus::ctl::live::tail(&mut a, req, count, duration, out).await?
        }
        Command::Logs {
            follow,
            backlog,
            level,
        } => {
            let mut a = admin::connect(&cli.control_plane, cli.admin_key.as_deref(), tls).await?;
            let req = nexus_proto::v1::FollowLogsRequest {
                backlog,
                min_level: level,
                follow,
            };
            nexus::ctl::live::logs(&mut a, req, out).await?
        }
        Command::Audit(args) => {
            let mut a = admin::connect(&cli.control_plane, cli.admin_key.as_deref(), tls).await?;
            let filters = nexus::ctl::audit::Filters {
                since: args.since,
                since_sequence: args.since_seq,
                actor: args.actor,
                kind: args.kind,
                name: args.name,
                action: args.action,
                limit: args.limit,
            };
            nexus::ctl::audit::list(&mut a, &filters, out).await?
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nexusctl: error: {}", nexus::ctl::describe_error(&e));
            ExitCode::FAILURE
        }
    }
}
