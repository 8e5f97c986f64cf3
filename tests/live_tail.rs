//! The live tail and the gateways' live warnings, end to end with real processes
//! (docs/trace.md §7-8): a control plane and two gateways in regions `a` and `b`.
//!
//! - `nexusctl tail 'orders.>'` sees messages published at both gateways, with the region
//!   and gateway that received them; the payload preview follows each subject's setting
//!   (`schemas set-tail-preview`): cut, with listed JSON fields masked, and none at all for a
//!   subject without a setting; non-matching subjects never show.
//! - A tap is rate-limited and counted (`nexus_tap_dropped_total{reason="rate_limit"}`), and
//!   it closes when its viewer goes away (`nexus_taps` back to 0); an open tap does not hold
//!   up the gateway's shutdown.
//! - `nexusctl logs` shows a gateway's WARN event (a schema violation under `warn`
//!   enforcement) with its region, gateway, target and fields.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{ControlPlane, Gateway, eventually, nexusctl, tempdir};
use serde_json::Value;

struct Deployment {
    a1: Gateway,
    b1: Gateway,
    cp: ControlPlane,
    _cp_dir: tempdir::Dir,
}

impl Deployment {
    async fn start() -> Self {
        let cp_dir = tempdir::Dir::new("tail-cp");
        let cp = ControlPlane::embedded(&cp_dir.0);
        let url = cp.url();
        let gw = |region: &str, id: &str| {
            Gateway::start_with_args(&[
                "--region",
                region,
                "--gateway-id",
                id,
                "--control-plane",
                &url,
            ])
        };
        let (a1, b1) = (gw("a", "a1"), gw("b", "b1"));
        let d = Deployment {
            a1,
            b1,
            cp,
            _cp_dir: cp_dir,
        };
        assert!(
            eventually(Duration::from_secs(10), || {
                let out = nexusctl(&d.cp, &["gateways", "-o", "json"]);
                out.contains(&d.a1.metrics.to_string()) && out.contains(&d.b1.metrics.to_string())
            })
            .await,
            "the gateways did not register"
        );
        d
    }

    fn publish(&self, gw: &Gateway, subject: &str, payload: &str) {
        nexusctl(&self.cp, &["--gateway", &gw.url(), "pub", subject, payload]);
    }

    /// `nexusctl tail` as a child process, its stdout lines read on a thread.
    fn tail(&self, args: &[&str]) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_nexusctl"))
            .args(["tail"])
            .args(args)
            .env("NEXUS_CONTROL_PLANE", self.cp.url())
            .env("NEXUS_ADMIN_KEY", &self.cp.admin_key)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run nexusctl tail");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (child, rx)
    }
}

async fn taps_open(gws: &[&Gateway], n: f64) -> bool {
    eventually(Duration::from_secs(10), || {
        gws.iter().all(|g| g.metric("nexus_taps", &[]) == n)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_shows_messages_of_every_gateway_with_redacted_previews() {
    let d = Deployment::start().await;

    // orders.new: 60 bytes of preview, the card number masked. orders.other: no setting,
    // so no preview (the default).
    let out = nexusctl(
        &d.cp,
        &[
            "schemas",
            "set-tail-preview",
            "--subject",
            "orders.new",
            "--max-bytes",
            "60",
            "--redact",
            "card,cvv",
        ],
    );
    assert!(
        out.contains("orders.new: tail preview 60 bytes, redacting card, cvv"),
        "{out}"
    );

    let (mut child, lines) = d.tail(&[
        "orders.>",
        "-o",
        "json",
        "--count",
        "3",
        "--duration",
        "60s",
    ]);
    assert!(
        taps_open(&[&d.a1, &d.b1], 1.0).await,
        "both gateways tapped"
    );

    d.publish(&d.b1, "users.new", r#"{"name":"not tapped"}"#);
    d.publish(
        &d.a1,
        "orders.new",
        r#"{"id":7,"card":"4111-1111-1111-1111","cvv":123,"note":"this part is beyond the preview"}"#,
    );
    d.publish(&d.b1, "orders.other", "secret text");
    d.publish(&d.a1, "orders.new", "card=4111");

    let mut got: Vec<Value> = Vec::new();
    while got.len() < 3 {
        let line = lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("tail printed only {got:#?}"));
        got.push(serde_json::from_str(&line).expect("a JSON line"));
    }
    let _ = child.wait();

    let find = |subject: &str, n: usize| {
        got.iter()
            .filter(|e| e["subject"] == subject)
            .nth(n)
            .unwrap_or_else(|| panic!("no {subject} in {got:#?}"))
    };
    assert!(got.iter().all(|e| e["subject"] != "users.new"), "{got:#?}");
    let order = find("orders.new", 0);
    assert_eq!(
        (order["region"].as_str(), order["gateway_id"].as_str()),
        (Some("a"), Some("a1"))
    );
    assert_eq!(order["kind"], "publish");
    assert_eq!(
        order["message_id"].as_str().map(str::len),
        Some(26),
        "{order}"
    );
    assert_eq!(
        order["trace_id"].as_str().map(str::len),
        Some(32),
        "{order}"
    );
    let preview = order["preview"].as_str().unwrap();
    assert_eq!(
        preview, r#"{"id":7,"card":"***","cvv":"***","note":"this "#,
        "{order}"
    );
    assert!(
        order["preview_note"]
            .as_str()
            .unwrap()
            .contains("first 60 of 88 bytes, 2 field(s) redacted"),
        "{order}"
    );
    let other = find("orders.other", 0);
    assert_eq!(other["gateway_id"], "b1");
    assert_eq!(other["preview"], "", "no setting: no preview: {other}");
    assert!(
        other["preview_note"].as_str().unwrap().contains("off"),
        "{other}"
    );
    let plain = find("orders.new", 1);
    assert_eq!(
        plain["preview"], "",
        "not JSON with fields to redact: hidden: {plain}"
    );

    // The viewer left: both taps closed.
    assert!(
        taps_open(&[&d.a1, &d.b1], 0.0).await,
        "taps closed with their viewer"
    );
    assert!(d.a1.metric("nexus_tap_messages_total", &[]) >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tap_is_rate_limited_and_counts_what_it_drops() {
    let d = Deployment::start().await;
    let (mut child, lines) = d.tail(&["load.*", "--rate", "2", "-o", "json"]);
    assert!(taps_open(&[&d.a1], 1.0).await);
    // 50 messages at once from one session: 2 a second (the burst) pass, the rest are
    // dropped and counted, and the publisher does not wait for the viewer.
    let c = common::regions::client(&d.a1).await;
    let started = std::time::Instant::now();
    for _ in 0..50 {
        c.publish("load.x", "1").await.unwrap();
    }
    c.flush().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        eventually(Duration::from_secs(5), || {
            d.a1.metric("nexus_tap_dropped_total", &["reason=\"rate_limit\""]) >= 40.0
        })
        .await,
        "rate-limited events counted: {}",
        d.a1.metrics_text()
    );
    let shown = lines.try_iter().count() + {
        std::thread::sleep(Duration::from_millis(500));
        lines.try_iter().count()
    };
    assert!((1..=4).contains(&shown), "{shown} messages shown at 2/s");
    child.kill().unwrap();
    let _ = child.wait();
    assert!(
        taps_open(&[&d.a1], 0.0).await,
        "the tap closed when its viewer was killed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_show_a_gateways_warnings() {
    let d = Deployment::start().await;
    let files = tempdir::Dir::new("tail-schema");
    let schema = files.0.join("s.json");
    std::fs::write(
        &schema,
        r#"{"type":"object","properties":{"id":{"type":"integer"}},"required":["id"]}"#,
    )
    .unwrap();
    nexusctl(
        &d.cp,
        &[
            "schemas",
            "register",
            "checked.x",
            "-f",
            schema.to_str().unwrap(),
        ],
    );
    nexusctl(&d.cp, &["schemas", "set-enforcement", "checked.x", "warn"]);
    let mut last = String::new();
    let found = eventually(Duration::from_secs(15), || {
        // Warn enforcement delivers anyway and logs a WARN at the gateway.
        d.publish(&d.b1, "checked.x", r#"{"id":"seven"}"#);
        last = nexusctl(&d.cp, &["logs", "-o", "json"]);
        last.lines().any(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_default();
            v["gateway_id"] == "b1"
                && v["region"] == "b"
                && v["level"] == "WARN"
                && v["fields"]["subject"] == "checked.x"
                && v["target"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("nexus_gateway"))
        })
    })
    .await;
    assert!(found, "no warning from b1 in: {last}");
    // Text output names the gateway and the message.
    let text = nexusctl(&d.cp, &["logs", "--level", "warn"]);
    assert!(text.contains("b/b1 WARN "), "{text}");
    let bad = common::nexusctl_as(&d.cp, Some(&d.cp.admin_key), &["logs", "--level", "info"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("expected warn or error"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_tap_does_not_hold_up_a_gateways_shutdown() {
    let mut d = Deployment::start().await;
    // A viewer straight on the gateway's endpoint, that keeps its connection open (the
    // control plane would close its own when the gateway deregisters).
    use std::io::Write as _;
    let mut viewer = std::net::TcpStream::connect(d.a1.metrics).unwrap();
    write!(viewer, "GET /v1/tail?subject=%3E HTTP/1.0\r\n\r\n").unwrap();
    assert!(taps_open(&[&d.a1], 1.0).await);
    let started = std::time::Instant::now();
    let mut gw = d.a1.terminate();
    let exited = loop {
        if gw.try_wait().unwrap().is_some() {
            break true;
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = gw.kill();
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exited, "the gateway did not exit");
    // Without the tap ending at drain, the HTTP server waits 5 s for it.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        started.elapsed()
    );
    drop(viewer);
}
