//! Smoke test of the harness against a real gateway: starts the workspace's `nexus` binary
//! (built next to this test, in `<target>/<profile>/nexus`; `scripts/test` builds every
//! binary before running tests), runs every smoke scenario through the library, and fails on
//! any error or lost message. It asserts correctness only, never performance.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nexus_load::suite;
use nexus_load::target::Target;

/// Kills the gateway when dropped, also when the test panics.
struct Gateway {
    child: Child,
    grpc: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `<target>/<profile>/nexus`, from this test's own path `<target>/<profile>/deps/smoke-…`.
fn nexus_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in <target>/<profile>/deps");
    let bin = profile_dir.join(format!("nexus{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} not found: build the gateway first (`cargo build --bin nexus`, or run scripts/test)",
        bin.display()
    );
    bin
}

fn start_gateway() -> Gateway {
    let mut child = Command::new(nexus_binary())
        .args([
            "gateway",
            "--region",
            "smoke",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--auth",
            "off",
        ])
        .env("RUST_LOG", "warn")
        .env_remove("NEXUS_CONTROL_PLANE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the nexus gateway");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut gateway = Gateway {
        child,
        grpc: String::new(),
    };
    // Read stdout on a thread (and keep draining it), so a silent gateway cannot hang us.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("gateway printed no 'listening on' line within 10 s");
        if let Some(rest) = line.split(" listening on ").nth(1) {
            let addr = rest.split(',').next().unwrap_or_default().trim();
            gateway.grpc = format!("nexus://{addr}");
            return gateway;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_scenarios_pass_against_a_real_gateway() {
    let gateway = start_gateway();
    let target: Target = gateway.grpc.parse().expect("gateway address");
    let report = tokio::time::timeout(Duration::from_secs(60), suite::smoke(&target))
        .await
        .expect("smoke run finished");
    for r in &report.results {
        eprintln!(
            "{}: sent {} delivered {} lost {} errors {}",
            r.scenario, r.sent, r.delivered, r.lost, r.errors
        );
    }
    assert!(
        report.failures.is_empty(),
        "smoke failures:\n{}",
        report.failures.join("\n")
    );
    assert_eq!(report.results.len(), suite::smoke_suite().len());
    drop(gateway);
}

/// A paired run (`nexus-load pubsub --remote ... --paired`) reports one row per path, each
/// from its own subscriber, both over every message sent. Here both paths end at the same
/// gateway (the hop script points `--remote` at another gateway).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paired_run_reports_each_path_over_the_same_messages() {
    let gateway = start_gateway();
    let target: Target = gateway.grpc.parse().expect("gateway address");
    let w = nexus_load::scenarios::Workload {
        count: Some(500),
        rate: Some(2000.0),
        ..Default::default()
    };
    let rows = tokio::time::timeout(
        Duration::from_secs(60),
        nexus_load::scenarios::run_paired(&target, &target, &w),
    )
    .await
    .expect("paired run finished")
    .expect("paired run");
    for r in &rows {
        assert_eq!((r.sent, r.delivered, r.lost), (500, 500, 0), "{r:?}");
        assert_eq!(r.lost_per_subscriber, vec![0]);
        assert_eq!(r.duplicates_or_reordered, 0);
        assert_eq!(r.latency.samples, 500, "{r:?}");
        assert!(r.latency.p50_us > 0.0, "{r:?}");
    }
    drop(gateway);
}
