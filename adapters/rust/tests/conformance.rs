//! The cross-language conformance suite, run with the Rust adapter: reads
//! `conformance/cases.json` (the cases every adapter runs; step language in
//! `conformance/README.md`) and executes each case against real `nexus gateway` (and, for the
//! auth and discovery cases, `nexus control-plane`) processes on loopback ports.
//!
//! The `nexus` binary belongs to another package, so it is found as `$NEXUS_BIN`, else next to
//! this test's target directory (`target/debug/nexus`, built by `cargo build --workspace
//! --bins` or by `cargo test --workspace`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nexus_client::{Bytes, Client, Error, Headers, Message, OutgoingMessage, Subscription};

#[path = "conformance/relay.rs"]
mod relay;

#[path = "conformance/checks.rs"]
mod checks;
#[path = "conformance/environment.rs"]
mod environment;
#[path = "conformance/failover.rs"]
mod failover;
#[path = "conformance/json.rs"]
mod json;
#[path = "conformance/runner.rs"]
mod runner;

use checks::*;
use environment::*;
use failover::*;
use json::*;
use runner::*;

async fn run_case(doc: &Json, case: &Json) -> Result<(), String> {
    let env_name = case.str("env").unwrap_or("open");
    let spec = doc
        .get("environments")
        .and_then(|e| e.get(env_name))
        .ok_or(format!("unknown environment {env_name}"))?;
    let name = case.str("name").unwrap_or_default().to_owned();
    let env = tokio::task::spawn_blocking({
        let spec = spec.clone();
        move || Environment::start(&spec, &name)
    })
    .await
    .map_err(|e| e.to_string())??;
    let mut env = env;
    if spec.flag("relay") {
        let upstream = env.gateways[0].grpc.clone();
        env.relay = Some(
            relay::Relay::start(upstream)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let mut runner = Runner {
        env,
        clients: HashMap::new(),
        subs: HashMap::new(),
        services: Vec::new(),
        tasks: Vec::new(),
        killed: String::new(),
        pending: HashMap::new(),
        terminated: None,
        marks: (0.0, 0.0),
    };
    let mut result = Ok(());
    for (i, s) in case
        .get("steps")
        .map(Json::items)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let op = s.str("op").unwrap_or_default();
        match tokio::time::timeout(step_timeout(s), runner.step(s)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                result = Err(format!("step {} ({op}): {e}", i + 1));
                break;
            }
            Err(_) => {
                result = Err(format!(
                    "step {} ({op}): took over {} s",
                    i + 1,
                    step_timeout(s).as_secs()
                ));
                break;
            }
        }
    }
    for t in runner.tasks.drain(..) {
        t.abort();
    }
    for (_, (t, _)) in runner.pending.drain() {
        t.abort();
    }
    runner.services.clear();
    for (_, c) in runner.clients.drain() {
        c.close().await;
    }
    // Every session the first gateway opened came over the pass's transport (it may have
    // been restarted, which restarts both counters). Checked before the clients closed
    // would race their sessions; the counters only grow.
    if result.is_ok()
        && let (Ok(all), Ok(native)) = (
            runner.env.metric("nexus_connections_opened_total", &[]),
            runner.env.metric("nexus_native_sessions_opened_total", &[]),
        )
    {
        let expected = if NATIVE.load(std::sync::atomic::Ordering::Relaxed) {
            all
        } else {
            0.0
        };
        if native != expected {
            result = Err(format!(
                "{native} of the first gateway's {all} sessions came over the native transport; expected {expected}"
            ));
        }
    }
    result
}

/// Whether this pass connects over the native transport (docs/protocol.md §1.1) instead of
/// gRPC: every case runs over both, with direct addresses (`nexus+tcp://`, `nexus+tls://`)
/// and discovered gateways (`ClientBuilder::transport`).
static NATIVE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The transport for discovered gateways in the current pass.
fn transport() -> nexus_client::Transport {
    if NATIVE.load(std::sync::atomic::Ordering::Relaxed) {
        nexus_client::Transport::Native
    } else {
        nexus_client::Transport::Grpc
    }
}

/// The scheme of a direct gateway address in the current pass.
pub(crate) fn scheme(tls: bool) -> &'static str {
    match (NATIVE.load(std::sync::atomic::Ordering::Relaxed), tls) {
        (false, false) => "http",
        (false, true) => "https",
        (true, false) => "nexus+tcp",
        (true, true) => "nexus+tls",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_cases() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conformance/cases.json");
    let text = std::fs::read_to_string(&path).expect("conformance/cases.json");
    let doc = JsonParser::parse(&text).expect("cases.json is valid JSON");
    assert!(
        nexus_bin().exists(),
        "{} not found: build it with `cargo build --bin nexus --bin nexusctl` (or set NEXUS_BIN)",
        nexus_bin().display()
    );
    let mut failures = Vec::new();
    // NEXUS_CONFORMANCE_ONLY=a,b runs only those cases (while working on them).
    let only = std::env::var("NEXUS_CONFORMANCE_ONLY").ok();
    let cases: Vec<&Json> = doc
        .get("cases")
        .map(Json::items)
        .unwrap_or_default()
        .iter()
        .filter(|c| {
            only.as_deref()
                .is_none_or(|o| o.split(',').any(|n| Some(n) == c.str("name")))
        })
        .collect();
    let mut skipped = 0;
    // NEXUS_CONFORMANCE_TRANSPORT=grpc or native runs one pass only.
    let transports = match std::env::var("NEXUS_CONFORMANCE_TRANSPORT").as_deref() {
        Ok("grpc") => vec![false],
        Ok("native") => vec![true],
        _ => vec![false, true],
    };
    for native in transports {
        NATIVE.store(native, std::sync::atomic::Ordering::Relaxed);
        let transport = if native { "native" } else { "grpc" };
        let before = failures.len();
        for case in cases.iter().copied() {
            let name = case.str("name").unwrap_or_default();
            let started = Instant::now();
            let env_tls = case
                .str("env")
                .and_then(|e| doc.get("environments")?.get(e)?.get("gateway")?.get("tls"))
                .is_some();
            if env_tls && !cfg!(feature = "tls") {
                // `cargo test --workspace` builds nexus-client with `tls` (the binaries need it).
                println!(
                    "SKIP {name} [{transport}]: nexus-client built without its `tls` feature (use --features tls)"
                );
                skipped += 1;
                continue;
            }
            match run_case(&doc, case).await {
                Ok(()) => println!(
                    "PASS {name} [{transport}] ({} ms)",
                    started.elapsed().as_millis()
                ),
                Err(e) => {
                    println!("FAIL {name} [{transport}]: {e}");
                    failures.push(format!("{name} [{transport}]: {e}"));
                }
            }
        }
        println!(
            "rust conformance over {transport}: {} cases, {} failed",
            cases.len(),
            failures.len() - before
        );
    }
    println!(
        "rust conformance: {} failed, {skipped} skipped",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "conformance failures:\n{}",
        failures.join("\n")
    );
}
