//! What deployments need from every role, with real processes: one config file with a
//! section per role (`nexus config check`, flags over the file, a role refusing a file
//! without its section), the standard `grpc.health.v1` service on the gateway and control
//! plane, `/healthz`, `/readyz` and `/metrics` with `nexus_build_info` on the control plane
//! and console too, and SIGHUP: live settings applied, the others reported, certificates
//! re-read, a bad file refused without harm.

mod common;
#[path = "common/procs.rs"]
mod procs;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{RawSession, hello, http_get, metric_value};
use procs::TempDir;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn nexus() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nexus"));
    for var in [
        "NEXUS_CONFIG",
        "NEXUS_CONTROL_PLANE",
        "NEXUS_AUTH",
        "NEXUS_CP_LISTEN",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ] {
        c.env_remove(var);
    }
    c
}

/// A running role whose stderr goes to a file (the reload logs are read from it); killed
/// on drop.
struct Role {
    child: Child,
    stdout: String,
    log: std::path::PathBuf,
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Role {
    /// Starts `nexus <args>` and waits until stdout has a line containing `ready_marker`.
    fn start(dir: &TempDir, tag: &str, args: &[&str], ready_marker: &str) -> Self {
        let log = dir.0.join(format!("{tag}.log"));
        let mut child = nexus()
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn nexus");
        let mut lines = BufReader::new(child.stdout.take().unwrap());
        let mut stdout = String::new();
        loop {
            let mut line = String::new();
            let n = lines.read_line(&mut line).unwrap();
            assert!(
                n > 0,
                "nexus {args:?} exited before {ready_marker:?}: {stdout}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            stdout.push_str(&line);
            if line.contains(ready_marker) {
                break;
            }
        }
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = lines.read_to_end(&mut sink);
        });
        Self { child, stdout, log }
    }

    /// The address printed after `marker` on stdout.
    fn addr(&self, marker: &str) -> SocketAddr {
        let rest = self
            .stdout
            .split(marker)
            .nth(1)
            .unwrap_or_else(|| panic!("no {marker:?} in {}", self.stdout));
        rest.split(|c: char| c.is_whitespace() || c == ',')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Sends SIGHUP and waits for the `reload_number`-th "reload done" summary; returns it.
    fn reload(&self, reload_number: usize) -> String {
        self.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let logs = self.logs();
            let done: Vec<&str> = logs
                .lines()
                .filter(|l| l.contains("SIGHUP: reload done"))
                .collect();
            if done.len() >= reload_number {
                return done[reload_number - 1].to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no reload summary #{reload_number}: {logs}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

async fn health(addr: SocketAddr, service: &str) -> Result<ServingStatus, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut client = HealthClient::new(channel);
    let resp = client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?;
    Ok(resp.into_inner().status())
}

/// A loopback port nothing listens on (for listeners whose address is not printed).
fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn build_info_has_role(metrics: &str, role: &str) {
    let line = metrics
        .lines()
        .find(|l| l.starts_with("nexus_build_info{"))
        .unwrap_or_else(|| panic!("no nexus_build_info in {metrics}"));
    assert!(line.contains(&format!("role=\"{role}\"")), "{line}");
    assert!(
        line.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
        "{line}"
    );
    assert!(line.contains("commit=\""), "{line}");
    assert!(line.ends_with(" 1"), "{line}");
}

#[test]
fn config_check_validates_every_section_and_prints_the_effective_settings() {
    let dir = TempDir::new("cfgcheck");
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        r#"
[gateway]
region = "eu-west"
[gateway.limits]
max_connections = 50

[federation]
listen = "127.0.0.1:7424"
cert = "/etc/nexus/fed.pem"
key = "/etc/nexus/fed-key.pem"
ca = "/etc/nexus/ca.pem"
peers = { us-east = "10.0.0.1:7424" }

[control_plane]
lease_ttl = "15s"
etcd = ["http://10.0.0.5:2379"]

[console]
control_plane = "https://cp.example:7400"
"#,
    )
    .unwrap();
    let out = nexus().args(["config", "check", &good]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("valid ([gateway], [federation], [control_plane], [console])"),
        "{stdout}"
    );
    // The file's values and the defaults it left out, by section.
    for expected in [
        "[gateway]",
        "region = \"eu-west\"",
        "max_connections = 50",
        "max_payload = 1048576",
        "[federation]",
        "spool_overflow = \"reject\"",
        "us-east = \"10.0.0.1:7424\"",
        "[control_plane]",
        "lease_ttl = \"15s\"",
        "dns_ttl = \"5s\"",
        "listen = \"127.0.0.1:7400\"",
        "[console]",
        "control_plane = \"https://cp.example:7400\"",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing:\n{stdout}");
    }
    // The printed settings are a valid file themselves.
    let effective = dir.join("effective.toml");
    let body: String = stdout.lines().skip(1).collect::<Vec<_>>().join("\n");
    std::fs::write(&effective, body).unwrap();
    let again = nexus()
        .args(["config", "check", "--quiet", &effective])
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    let bad = |name: &str, text: &str, expect: &[&str]| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let out = nexus().args(["config", "check", &path]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        for e in expect {
            assert!(stderr.contains(e), "{name}: {e:?} missing in {stderr}");
        }
    };
    // Unknown keys are named with their line, in every section.
    bad(
        "typo.toml",
        "[gateway]\nregion = \"x\"\n\n[control_plane]\nlease_tll = \"5s\"\n",
        &["line 5", "unknown field `lease_tll`", "lease_ttl"],
    );
    bad(
        "unknown-section.toml",
        "[gateway]\n[gateways]\n",
        &["unknown field `gateways`"],
    );
    // A file with sections keeps gateway settings in [gateway].
    bad(
        "mixed.toml",
        "region = \"x\"\n[console]\n",
        &["line 1", "unknown field `region`", "go under [gateway]"],
    );
    // Values checked after parsing name their section and key.
    bad(
        "invalid.toml",
        "[control_plane]\naudit_max_records = 0\n",
        &["[control_plane]", "audit_max_records", "audit_max_age"],
    );
    bad(
        "invalid-gw.toml",
        "[gateway]\n[gateway.limits]\nmax_payload = 0\n",
        &["[gateway]", "limits.max_payload"],
    );
    bad(
        "bad-duration.toml",
        "[control_plane]\nlease_ttl = \"10 parsecs\"\n",
        &["line 2", "lease_ttl", "unknown unit"],
    );
    bad(
        "federation.toml",
        "[federation]\nlisten = \"127.0.0.1:7424\"\n",
        &["[federation]", "`listen` needs `cert`, `key` and `ca`"],
    );
    bad("syntax.toml", "[gateway\n", &["line 1"]);

    // A role refuses a file without its section, naming what the file has.
    let gw_only = dir.join("gw-only.toml");
    std::fs::write(&gw_only, "region = \"eu-west\"\n").unwrap();
    for (role, section) in [
        ("control-plane", "[control_plane]"),
        ("console", "[console]"),
    ] {
        let out = nexus().args([role, "--config", &gw_only]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{role}: {stderr}");
        assert!(
            stderr.contains(&format!("has no {section} section (it has: [gateway])")),
            "{role}: {stderr}"
        );
    }
}

#[tokio::test]
async fn control_plane_health_metrics_flags_over_file_and_sighup() {
    let dir = TempDir::new("cpops");
    let file = dir.join("nexus.toml");
    let data = dir.join("data");
    let probe = free_port();
    // `listen` in the file is an address this machine does not have: the flag must win.
    let write = |lease: &str| {
        std::fs::write(
            &file,
            format!(
                "[control_plane]\nlisten = \"192.0.2.1:7400\"\nmetrics_listen = \"127.0.0.1:0\"\n\
                 health_listen = \"{probe}\"\n\
                 admin_auth = \"off\"\ndata_dir = \"{data}\"\nlease_ttl = \"{lease}\"\n"
            ),
        )
        .unwrap()
    };
    write("10s");
    let cp = Role::start(
        &dir,
        "cp",
        &[
            "control-plane",
            "--config",
            &file,
            "--listen",
            "127.0.0.1:0",
        ],
        "control plane listening on",
    );
    let grpc = cp.addr("listening on ");
    let http = cp.addr("metrics on ");
    assert!(cp.stdout.contains("store: embedded"), "{}", cp.stdout);

    for service in ["", "nexus.v1.Admin", "nexus.v1.ConfigPush"] {
        assert_eq!(
            health(grpc, service).await.unwrap(),
            ServingStatus::Serving,
            "{service:?}"
        );
    }
    // The plaintext health-only listener (for the kubelet's probes) answers the same.
    assert_eq!(
        health(probe, "nexus.v1.Admin").await.unwrap(),
        ServingStatus::Serving
    );
    let unknown = health(grpc, "nexus.v1.Nope").await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    assert_eq!(http_get(http, "/healthz").unwrap().0, 200);
    let (status, body) = http_get(http, "/readyz").unwrap();
    assert_eq!((status, body.trim()), (200, "ready"));
    let (status, metrics) = http_get(http, "/metrics").unwrap();
    assert_eq!(status, 200);
    build_info_has_role(&metrics, "control_plane");
    assert_eq!(
        metric_value(&metrics, "nexus_control_plane_store_up", &[]),
        1.0
    );

    // A gateway registers: counted by region.
    let _gw = common::Gateway::start_with_args(&[
        "--region",
        "eu-west",
        "--control-plane",
        &format!("http://{grpc}"),
    ]);
    assert!(
        common::eventually(Duration::from_secs(10), || {
            let m = http_get(http, "/metrics").unwrap().1;
            metric_value(
                &m,
                "nexus_control_plane_live_gateways",
                &["region=\"eu-west\""],
            ) == 1.0
        })
        .await,
        "{}",
        http_get(http, "/metrics").unwrap().1
    );

    // SIGHUP: a changed setting is reported as needing a restart; nothing else changed.
    write("20s");
    let done = cp.reload(1);
    assert!(done.contains("need_restart=1"), "{done}");
    let logs = cp.logs();
    assert!(
        logs.contains("setting=control_plane.lease_ttl")
            && logs.contains("takes effect after a restart"),
        "{logs}"
    );
    // An invalid file changes nothing, and the control plane keeps serving.
    std::fs::write(&file, "[control_plane]\nlease_ttl = 5\n").unwrap();
    let done = cp.reload(2);
    assert!(done.contains("need_restart=0"), "{done}");
    let logs = cp.logs();
    assert!(
        logs.contains("config reload failed; keeping the running settings")
            && logs.contains("lease_ttl"),
        "{logs}"
    );
    assert_eq!(http_get(http, "/readyz").unwrap().0, 200);
    assert_eq!(health(grpc, "").await.unwrap(), ServingStatus::Serving);
}

#[tokio::test]
async fn gateway_health_build_info_live_reload_and_drain() {
    let dir = TempDir::new("gwops");
    let file = dir.join("nexus.toml");
    let state = dir.join("state");
    let probe = free_port();
    let write = |max_connections: u32, region: &str| {
        std::fs::write(
            &file,
            format!(
                "[gateway]\nregion = \"{region}\"\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
                 health_listen = \"{probe}\"\n\
                 auth = \"off\"\nstate_dir = \"{state}\"\nshutdown_grace_ms = 4000\n\n[gateway.limits]\nmax_connections = {max_connections}\n"
            ),
        )
        .unwrap()
    };
    write(10, "eu-west");
    let gw = Role::start(
        &dir,
        "gw",
        &["gateway", "--config", &file],
        " listening on ",
    );
    let grpc = gw.addr(" listening on ");
    let http = gw.addr("metrics on ");
    let url = format!("http://{grpc}");
    for service in ["", "nexus.v1.Gateway"] {
        assert_eq!(
            health(grpc, service).await.unwrap(),
            ServingStatus::Serving,
            "{service:?}"
        );
    }
    assert_eq!(
        health(probe, "nexus.v1.Gateway").await.unwrap(),
        ServingStatus::Serving
    );
    build_info_has_role(&http_get(http, "/metrics").unwrap().1, "gateway");

    let first = RawSession::connect(&url).await;
    let _second = RawSession::connect(&url).await;

    // SIGHUP with max_connections = 2 (applied at once) and a new region (needs a restart).
    write(2, "us-east");
    let done = gw.reload(1);
    assert!(
        done.contains("applied=1") && done.contains("need_restart=1"),
        "{done}"
    );
    let logs = gw.logs();
    assert!(
        logs.contains("setting applied setting=gateway.limits.max_connections"),
        "{logs}"
    );
    assert!(logs.contains("setting=gateway.region"), "{logs}");
    let third = RawSession::open(&url, vec![hello()]).await;
    let status = match third {
        Err(status) => status,
        Ok(mut s) => s.next_result().await.unwrap_err(),
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("limits.max_connections (2)"),
        "{}",
        status.message()
    );
    // The region did not change.
    let (_, st) = http_get(http, "/v1/status").unwrap();
    assert!(st.contains("\"eu-west\""), "{st}");

    // A bad file: nothing changes, the gateway keeps serving.
    std::fs::write(
        &file,
        "[gateway]\nregion = \"eu-west\"\n[gateway.limits]\nmax_connectons = 1\n",
    )
    .unwrap();
    let done = gw.reload(2);
    assert!(done.contains("applied=0"), "{done}");
    assert!(
        gw.logs().contains("config reload failed") && gw.logs().contains("max_connectons"),
        "{}",
        gw.logs()
    );
    assert_eq!(health(grpc, "").await.unwrap(), ServingStatus::Serving);

    // Draining (SIGTERM with sessions open): health turns NOT_SERVING at once, while the
    // sessions are still served through the grace period.
    gw.signal("TERM");
    let mut not_serving = false;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Ok(ServingStatus::NotServing) = health(grpc, "nexus.v1.Gateway").await {
            not_serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        not_serving,
        "health did not turn NOT_SERVING while draining"
    );
    assert_eq!(health(grpc, "").await.unwrap(), ServingStatus::NotServing);
    assert_eq!(health(probe, "").await.unwrap(), ServingStatus::NotServing);
    assert_eq!(http_get(http, "/readyz").unwrap().0, 503);
    drop(first);
}

#[test]
fn sighup_reloads_certificates_and_keeps_the_old_ones_when_the_new_are_bad() {
    let dir = TempDir::new("certhup");
    let certs = dir.join("certs");
    let issue = |new_ca: bool| {
        let mut args = vec![
            "certs",
            "--out",
            &certs,
            "--gateway",
            "eu-west/gw-1@127.0.0.1",
        ];
        if new_ca {
            args.push("--new-ca");
        }
        let out = nexus().args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    issue(false);
    let cert = format!("{certs}/gateways/eu-west/gw-1.pem");
    let key = format!("{certs}/gateways/eu-west/gw-1-key.pem");
    let file = dir.join("nexus.toml");
    let state = dir.join("state");
    std::fs::write(
        &file,
        format!(
            "[gateway]\nregion = \"eu-west\"\ngateway_id = \"gw-1\"\nlisten = \"127.0.0.1:0\"\n\
             metrics_listen = \"127.0.0.1:0\"\nauth = \"off\"\nstate_dir = \"{state}\"\n\n[gateway.tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n\n\
             [federation]\nlisten = \"127.0.0.1:0\"\ncert = \"{cert}\"\nkey = \"{key}\"\nca = \"{certs}/ca.pem\"\n"
        ),
    )
    .unwrap();
    let gw = Role::start(
        &dir,
        "gw",
        &["gateway", "--config", &file],
        " listening on ",
    );
    let http = gw.addr("metrics on ");
    assert!(
        gw.stdout.contains("nexus federation for region eu-west on"),
        "{}",
        gw.stdout
    );

    // Rotated files: re-read on SIGHUP (the adapter listener's and federation's), nothing
    // else changed.
    issue(false);
    let done = gw.reload(1);
    assert!(
        done.contains("certificates=2") && done.contains("need_restart=0"),
        "{done}"
    );
    let logs = gw.logs();
    assert!(logs.contains("TLS certificate reloaded"), "{logs}");
    assert!(logs.contains("federation certificate reloaded"), "{logs}");

    // A key that is not a key: the previous certificate stays, the gateway keeps serving.
    std::fs::write(&key, "not a key\n").unwrap();
    let done = gw.reload(2);
    assert!(done.contains("certificates=0"), "{done}");
    let logs = gw.logs();
    assert!(
        logs.contains("TLS files cannot be loaded; keeping the previous certificate")
            && logs.contains("federation certificate cannot be loaded; keeping the previous one"),
        "{logs}"
    );
    assert_eq!(http_get(http, "/readyz").unwrap().0, 200);
}

#[test]
fn console_serves_health_and_metrics_without_login() {
    let dir = TempDir::new("consoleops");
    let file = dir.join("nexus.toml");
    // Nothing listens on the control plane's port: the console still runs and says so.
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cp = unused.local_addr().unwrap();
    drop(unused);
    std::fs::write(
        &file,
        format!("[console]\nlisten = \"127.0.0.1:0\"\ncontrol_plane = \"{cp}\"\n"),
    )
    .unwrap();
    let console = Role::start(
        &dir,
        "console",
        &["console", "--config", &file],
        "nexus console on",
    );
    let addr: SocketAddr = console
        .stdout
        .split("://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        console.stdout.contains(&format!("control plane {cp}")),
        "{}",
        console.stdout
    );
    let (status, body) = http_get(addr, "/healthz").unwrap();
    assert_eq!((status, body.trim()), (200, "ok"));
    assert_eq!(http_get(addr, "/readyz").unwrap().0, 200);
    let (status, metrics) = http_get(addr, "/metrics").unwrap();
    assert_eq!(status, 200, "{metrics}");
    build_info_has_role(&metrics, "console");
    assert_eq!(metric_value(&metrics, "nexus_console_sessions", &[]), 0.0);
    assert_eq!(
        metric_value(&metrics, "nexus_console_control_plane_up", &[]),
        0.0
    );
    // Other pages still need a login.
    let (status, _) = http_get(addr, "/audit").unwrap();
    assert_ne!(status, 200);
}
