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

fn addr_after(text: &str, label: &str) -> std::net::SocketAddr {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap();
    let url = line.split_whitespace().nth(1).unwrap();
    url.trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn nexus_dev_prints_where_it_listens_and_stops_on_ctrl_c() {
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
    let banner = read_until(&mut out, "auth");
    assert!(banner.contains("region        dev"), "{banner}");
    assert!(
        banner.contains("OFF"),
        "dev mode says loudly that auth is off: {banner}"
    );
    let metrics = addr_after(&banner, "metrics");
    assert!(banner.contains("control plane"), "{banner}");
    assert!(
        banner.contains("discovery     nexus+srv://dev.nexus.local?dns="),
        "{banner}"
    );
    let (status, body) = http_get(metrics, "/healthz").unwrap();
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, _) = http_get(metrics, "/readyz").unwrap();
    assert_eq!(status, 200);

    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let rest = read_until(&mut out, "stopped");
    assert!(rest.contains("nexus: stopped"));
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
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
