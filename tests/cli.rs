//! The `nexus` binary as an operator uses it: `nexus dev` starting and stopping cleanly,
//! configuration from files, flags and environment, and clear errors for bad configuration.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{http_get, tempdir};

fn nexus() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nexus"));
    c.env("RUST_LOG", "warn")
        .env_remove("NEXUS_CONFIG")
        .env_remove("NEXUS_REGION")
        .env_remove("NEXUS_CONTROL_PLANE")
        .env_remove("NEXUS_AUTH")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    c
}

/// Reads stdout lines until one contains `needle`; returns everything read.
fn read_until(reader: &mut impl BufRead, needle: &str) -> String {
    let mut all = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("output ended before {needle:?}:\n{all}");
        }
        all.push_str(&line);
        if line.contains(needle) {
            return all;
        }
    }
}

/// The address after `label` ("adapters", "metrics", "federation") on the banner line of
/// `region`.
fn region_addr(banner: &str, region: &str, label: &str) -> std::net::SocketAddr {
    let line = banner
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("region {region} ")))
        .unwrap_or_else(|| panic!("no line for region {region}: {banner}"));
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == label {
            let v = words.next().unwrap();
            return v
                .trim_start_matches("http://")
                .split('/')
                .next()
                .unwrap()
                .parse()
                .unwrap();
        }
    }
    panic!("no {label} on {line}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexus_dev_runs_three_federated_regions_and_stops_on_ctrl_c() {
    let dir = tempdir::Dir::new("dev");
    let mut child = nexus()
        .args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--control-plane-listen",
            "127.0.0.1:0",
            "--dns-listen",
            "127.0.0.1:0",
            "--dev-dir",
        ])
        .arg(&dir.0)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let banner = read_until(&mut out, "admin API");
    assert!(
        banner.contains("OFF"),
        "dev mode says loudly that auth is off: {banner}"
    );
    assert!(banner.contains("control plane"), "{banner}");
    assert!(
        banner.contains("discovery     nexus+srv://us-east.nexus.local?dns="),
        "{banner}"
    );
    for region in ["us-east", "eu-west", "ap-south"] {
        let metrics = region_addr(&banner, region, "metrics");
        let (status, body) = http_get(metrics, "/healthz").unwrap();
        assert_eq!((status, body.trim()), (200, "ok"));
        assert_eq!(http_get(metrics, "/readyz").unwrap().0, 200);
    }
    // A subscriber in ap-south gets what us-east publishes.
    let east = nexus_client::Client::connect(&format!(
        "http://{}",
        region_addr(&banner, "us-east", "adapters")
    ))
    .await
    .unwrap();
    let south = nexus_client::Client::connect(&format!(
        "http://{}",
        region_addr(&banner, "ap-south", "adapters")
    ))
    .await
    .unwrap();
    let mut sub = south.subscribe("dev.>").await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        east.publish("dev.hello", "from us-east").await.unwrap();
        match tokio::time::timeout(std::time::Duration::from_millis(100), sub.next_message()).await
        {
            Ok(Some(m)) => {
                assert_eq!(&m.payload[..], b"from us-east");
                break;
            }
            _ => assert!(
                std::time::Instant::now() < deadline,
                "nothing crossed regions"
            ),
        }
    }
    east.close().await;
    south.close().await;

    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let rest = tokio::task::spawn_blocking(move || {
        let rest = read_until(&mut out, "stopped");
        (rest, child.wait().unwrap())
    })
    .await
    .unwrap();
    assert!(rest.0.contains("nexus: stopped"));
    assert!(rest.1.success(), "{:?}", rest.1);
}

#[test]
fn configuration_comes_from_file_then_env_then_flags() {
    let dir = tempdir::Dir::new("cli");
    let file = dir.0.join("gw.toml");
    std::fs::write(
        &file,
        "region = \"from-file\"\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n[limits]\nmax_payload = 4096\n",
    )
    .unwrap();
    let mut child = nexus()
        .args(["gateway", "--auth", "off", "--config"])
        .arg(&file)
        .env("NEXUS_REGION", "from-env")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let line = read_until(&mut out, "listening on");
    assert!(line.contains("(region from-env)"), "env beats file: {line}");
    let _ = child.kill();
    let _ = child.wait();

    let mut child = nexus()
        .args([
            "gateway",
            "--auth",
            "off",
            "--region",
            "from-flag",
            "--config",
        ])
        .arg(&file)
        .env("NEXUS_REGION", "from-env")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let line = read_until(&mut out, "listening on");
    assert!(
        line.contains("(region from-flag)"),
        "flag beats env: {line}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

fn fails_with(args: &[&str], toml: Option<&str>, expected: &[&str]) {
    let dir = tempdir::Dir::new("cli-bad");
    let mut cmd = nexus();
    cmd.args(args);
    if let Some(toml) = toml {
        let file = dir.0.join("bad.toml");
        std::fs::write(&file, toml).unwrap();
        cmd.arg("--config").arg(&file);
    }
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
        .wait_with_output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr);
    for e in expected {
        assert!(err.contains(e), "stderr should mention {e:?}: {err}");
    }
}

#[test]
fn bad_configuration_is_refused_naming_the_problem() {
    fails_with(
        &["gateway"],
        Some("[limits]\nmax_paylod = 5\n"),
        &["not valid", "max_paylod"],
    );
    fails_with(
        &["gateway"],
        Some("[slow_consumer]\npolicy = \"explode\"\n"),
        &["explode", "backpressure"],
    );
    fails_with(&["gateway"], Some("region = 5\n"), &["region"]);
    fails_with(
        &["gateway", "--region", "Not A Label"],
        None,
        &["`region`", "DNS label"],
    );
    fails_with(
        &["gateway"],
        Some("[limits]\nmax_payload = 0\n"),
        &["limits.max_payload"],
    );
    fails_with(
        &["gateway", "--config", "/nonexistent/nexus.toml"],
        None,
        &["cannot read config file", "/nonexistent/nexus.toml"],
    );
    // A port that is already taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    fails_with(
        &[
            "gateway",
            "--listen",
            &addr,
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        None,
        &["cannot listen on", &addr],
    );
}
