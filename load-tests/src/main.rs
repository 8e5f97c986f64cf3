//! `nexus-load`: run load scenarios against Nexus and NATS and print the results.
//!
//! ```text
//! nexus-load pubsub   --target nexus://127.0.0.1:7422 --duration 5
//! nexus-load fanout   --target nexus://127.0.0.1:7422 --target nats://127.0.0.1:4222
//! nexus-load request-open --target nats://127.0.0.1:4222 --rate 5000
//! nexus-load compare  --nexus nexus://127.0.0.1:7422 --nats nats://127.0.0.1:4222 --json
//! nexus-load smoke    --target nexus://127.0.0.1:7422
//! nexus-load pubsub   --target nexus://127.0.0.1:7422 --remote nexus://127.0.0.1:7432
//! ```
//!
//! With two `--target`s (one Nexus, one NATS) a scenario command prints both side by side.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};
use nexus_load::report::{self, Comparison, ScenarioResult};
use nexus_load::scenarios::{self, Kind, Workload};

/// The same allocator as the `nexus` binary, for both targets' clients (Nexus and NATS).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use nexus_load::suite;
use nexus_load::target::Target;

#[derive(Parser)]
#[command(
    name = "nexus-load",
    version,
    about = "Load tests for Nexus, with the identical workload against NATS for comparison"
)]
struct Cli {
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Also write the results as JSON to this file (the table still goes to stdout).
    #[arg(long, global = true)]
    json_out: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Publishers to plain subscribers (default 1:1).
    Pubsub(ScenarioArgs),
    /// Fan-out: one publisher to N subscribers (default 1:4).
    Fanout(ScenarioArgs),
    /// A queue group: publishers to N workers, each message to one (default 4 workers).
    Queue(ScenarioArgs),
    /// Request/reply, closed loop: each requester waits for its reply (see --concurrency).
    Request(ScenarioArgs),
    /// Request/reply, open loop at --rate requests/s; latency from the intended send time.
    RequestOpen(ScenarioArgs),
    /// Bidirectional streams: each opener sends frames, an acceptor echoes them (Nexus only).
    Stream(ScenarioArgs),
    /// The comparison suite against one or more targets.
    Suite(SuiteArgs),
    /// The comparison suite against Nexus and NATS, side by side with ratios.
    Compare(CompareArgs),
    /// Every scenario for well under a second with tiny counts; exits non-zero on any error
    /// or loss.
    Smoke {
        /// nexus://host:port or nats://host:port.
        #[arg(long)]
        target: Target,
    },
    /// Config push latency: commit of a config change to applied on every live gateway
    /// (p50/p99), against a control plane with gateways (e.g. `nexus dev`).
    ConfigPush {
        /// The control plane's Admin API.
        #[arg(long, default_value = "http://127.0.0.1:7400")]
        control_plane: String,
        /// An admin key, unless the Admin API is open (as in `nexus dev`).
        #[arg(long, env = "NEXUS_ADMIN_KEY", hide_env_values = true)]
        admin_key: Option<String>,
        /// How many config changes.
        #[arg(long, default_value_t = 200)]
        rounds: u64,
    },
    /// Open idle connections and hold them (to measure server memory per connection).
    /// Prints `ready <n>` once all are connected.
    Idle {
        /// nexus://host:port or nats://host:port.
        #[arg(long)]
        target: Target,
        /// How many connections.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Seconds to hold them once connected.
        #[arg(long, default_value_t = 5.0)]
        hold: f64,
    },
}

#[derive(Args, Clone)]
struct Shape {
    /// Payload size in bytes (at least 20: the stamp with send time and sequence).
    #[arg(long, default_value_t = 128)]
    payload: usize,
    /// Publishers, requesters or stream openers (one connection each).
    #[arg(long)]
    publishers: Option<usize>,
    /// Subscribers, queue workers, responders or stream acceptors (one connection each).
    #[arg(long)]
    subscribers: Option<usize>,
    /// Messages per publisher instead of a duration.
    #[arg(long)]
    count: Option<u64>,
    /// Seconds to send for (when --count is not given).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Total send rate per second (pub/sub: paced publishing; request-open: required).
    #[arg(long)]
    rate: Option<f64>,
    /// Requests in flight per requester (closed loop).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Seconds to wait for stragglers after the last send.
    #[arg(long, default_value_t = 3.0)]
    drain: f64,
    /// Request timeout in seconds.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
}

impl Shape {
    fn workload(&self, publishers: usize, subscribers: usize) -> Workload {
        Workload {
            payload: self.payload,
            publishers: self.publishers.unwrap_or(publishers).max(1),
            subscribers: self.subscribers.unwrap_or(subscribers).max(1),
            count: self.count,
            duration: Duration::from_secs_f64(self.duration),
            rate: self.rate,
            concurrency: self.concurrency.max(1),
            drain: Duration::from_secs_f64(self.drain),
            request_timeout: Duration::from_secs_f64(self.timeout),
        }
    }
}

#[derive(Args)]
struct ScenarioArgs {
    /// nexus://host:port or nats://host:port; give one of each to compare.
    #[arg(long = "target", required = true)]
    targets: Vec<Target>,
    /// Cross-region: subscribers, workers or responders connect to this gateway (another
    /// region's, federated with --target's) while publishers and requesters use --target.
    /// For pubsub, fanout, queue and request.
    #[arg(long)]
    remote: Option<Target>,
    /// With --remote, pub/sub 1:1 only: one subscriber on --target and one on --remote take
    /// every message, and the two paths are reported as two rows ("via target", "via
    /// remote") measured on the same messages at the same moments (both subscribers are in
    /// this process: copies arriving within one of its wake-ups are recorded together).
    #[arg(long, requires = "remote")]
    paired: bool,
    /// Scale runs: background connections held open during the scenario (each target gets
    /// its own), carrying the --background-patterns.
    #[arg(long, default_value_t = 0)]
    background_sessions: usize,
    /// Scale runs: subscriptions no scenario message matches, spread over the background
    /// connections (a subject table of this size).
    #[arg(long, default_value_t = 0)]
    background_patterns: usize,
    /// The background patterns have wildcards (`*`, `>`) instead of being literal subjects.
    #[arg(long)]
    background_wildcards: bool,
    #[command(flatten)]
    shape: Shape,
}

#[derive(Args)]
struct SuiteArgs {
    /// nexus://host:port or nats://host:port (repeatable).
    #[arg(long = "target", required = true)]
    targets: Vec<Target>,
    /// Request rate of the open-loop scenario.
    #[arg(long, default_value_t = 2000.0)]
    open_rate: f64,
    #[command(flatten)]
    shape: Shape,
}

#[derive(Args)]
struct CompareArgs {
    /// The Nexus gateway.
    #[arg(long, default_value = "nexus://127.0.0.1:7422")]
    nexus: Target,
    /// The NATS server.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: Target,
    /// Request rate of the open-loop scenario.
    #[arg(long, default_value_t = 2000.0)]
    open_rate: f64,
    #[command(flatten)]
    shape: Shape,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nexus-load: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn write_json(path: Option<&std::path::Path>, v: &impl serde::Serialize) -> Result<()> {
    if let Some(p) = path {
        std::fs::write(p, serde_json::to_string_pretty(v)? + "\n")?;
    }
    Ok(())
}

async fn idle(target: &Target, connections: usize, hold: f64) -> Result<()> {
    let mut conns = Vec::with_capacity(connections);
    for chunk in 0..connections.div_ceil(50) {
        let n = (connections - chunk * 50).min(50);
        let batch = futures::future::try_join_all((0..n).map(|i| async move {
            let name = format!("idle-{}", chunk * 50 + i);
            target.connect(&name, Duration::from_secs(10)).await
        }))
        .await?;
        conns.extend(batch);
    }
    println!("ready {}", conns.len());
    tokio::time::sleep(Duration::from_secs_f64(hold)).await;
    futures::future::join_all(conns.into_iter().map(|c| c.close())).await;
    Ok(())
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let json = cli.json;
    let json_out = cli.json_out.as_deref();
    let (kind, args, pubs, subs) = match cli.command {
        Command::Pubsub(a) => (Kind::Pubsub, a, 1, 1),
        Command::Fanout(a) => (Kind::Pubsub, a, 1, 4),
        Command::Queue(a) => (Kind::Queue, a, 1, 4),
        Command::Request(a) => (Kind::Request, a, 1, 1),
        Command::RequestOpen(a) => {
            if a.shape.rate.is_none() {
                bail!("request-open needs --rate (requests per second)");
            }
            (Kind::RequestOpen, a, 1, 1)
        }
        Command::Stream(a) => (Kind::Stream, a, 1, 1),
        Command::Suite(a) => {
            let s = suite::comparison_suite(&a.shape.workload(1, 1), a.open_rate);
            let mut all = Vec::new();
            for t in &a.targets {
                all.extend(suite::run_suite(t, &s).await?);
            }
            write_json(json_out, &all)?;
            return output(json, &all).map(|()| ExitCode::SUCCESS);
        }
        Command::Compare(a) => {
            let s = suite::comparison_suite(&a.shape.workload(1, 1), a.open_rate);
            let pairs = suite::compare(&a.nexus, &a.nats, &s).await?;
            write_json(json_out, &pairs)?;
            if json {
                print_json(&pairs)?;
            } else {
                print!("{}", report::comparison_table(&pairs));
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::ConfigPush {
            control_plane,
            admin_key,
            rounds,
        } => {
            let r = nexus_load::config_push::measure(&control_plane, admin_key.as_deref(), rounds)
                .await?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "config push, commit -> applied on all {} gateways, {} changes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                    r.gateways, r.rounds, r.p50_ms, r.p99_ms, r.max_ms
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Idle {
            target,
            connections,
            hold,
        } => {
            idle(&target, connections, hold).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Smoke { target } => {
            let r = suite::smoke(&target).await;
            write_json(json_out, &r.results)?;
            output(json, &r.results)?;
            if r.failures.is_empty() {
                eprintln!("smoke: all scenarios passed against {target}");
                return Ok(ExitCode::SUCCESS);
            }
            for f in &r.failures {
                eprintln!("smoke: FAILED: {f}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let w = args.shape.workload(pubs, subs);
    let mut results = Vec::new();
    if let Some(remote) = args.remote.as_ref().filter(|_| args.paired) {
        if args.targets.len() != 1
            || kind != Kind::Pubsub
            || w.publishers != 1
            || w.subscribers != 1
        {
            bail!("--paired takes one --target and --remote, with pubsub (1:1)");
        }
        let rate = w.rate.map_or(String::new(), |r| format!(" at {r:.0}/s"));
        let rows = scenarios::run_paired(&args.targets[0], remote, &w).await?;
        let [mut local, mut far] = rows;
        local.scenario = format!("{}{rate} via target", local.scenario);
        far.scenario = format!("{}{rate} via remote", far.scenario);
        results.extend([local, far]);
        write_json(json_out, &results)?;
        return output(json, &results).map(|()| ExitCode::SUCCESS);
    }
    if let Some(remote) = &args.remote {
        if args.targets.len() != 1 || !matches!(kind, Kind::Pubsub | Kind::Queue | Kind::Request) {
            bail!("--remote takes one --target, with pubsub, fanout, queue or request");
        }
        let mut r = scenarios::run_between(kind, &args.targets[0], remote, &w).await?;
        r.scenario = match w.rate {
            Some(rate) if kind != Kind::Request => {
                format!("{} cross-region at {rate:.0}/s", r.scenario)
            }
            _ => format!("{} cross-region", r.scenario),
        };
        results.push(r);
        write_json(json_out, &results)?;
        return output(json, &results).map(|()| ExitCode::SUCCESS);
    }
    let background = nexus_load::background::Shape {
        sessions: args.background_sessions,
        patterns: args.background_patterns,
        wildcards: args.background_wildcards,
    };
    for t in &args.targets {
        let bg = nexus_load::background::Background::open(t, background).await?;
        let mut r = scenarios::run(kind, t, &w).await;
        if let Ok(r) = &mut r
            && !background.is_empty()
        {
            r.scenario = format!("{}, {}", r.scenario, background.label());
        }
        bg.close().await;
        results.push(r?);
    }
    let nexus = results.iter().position(|r| r.target.starts_with("nexus"));
    let nats = results.iter().position(|r| r.target == "nats");
    match (nexus, nats) {
        (Some(a), Some(b)) if results.len() == 2 => {
            let pair = Comparison {
                scenario: results[a].scenario.clone(),
                nexus: results[a].clone(),
                nats: results[b].clone(),
            };
            write_json(json_out, &[&pair])?;
            if json {
                print_json(&[pair])?;
            } else {
                print!("{}", report::comparison_table(&[pair]));
            }
        }
        _ => {
            write_json(json_out, &results)?;
            output(json, &results)?
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn output(json: bool, results: &[ScenarioResult]) -> Result<()> {
    if json {
        print_json(&results)
    } else {
        print!("{}", report::table(results));
        Ok(())
    }
}
