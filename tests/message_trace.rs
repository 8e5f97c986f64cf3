//! Message tracing end to end with real processes (docs/trace.md): a control plane, region
//! `a` of two gateways and region `b` of one, linked over QUIC. A message published on a1
//! with `nexus-trace: 1` is followed by `nexusctl trace <id>` through the control plane, which
//! asks every gateway: received at a1, the route decision, the cluster hop to a2 and the
//! region hop to b (with link RTT), arrival and delivery at both. A message nobody wants shows
//! the drop and why; an unknown id says so and how to force tracing.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::regions::{client, explain, interest_known, responder, status};
use common::{ControlPlane, Gateway, eventually, nexusctl, nexusctl_as, tempdir};
use nexus_federation::tls::FederationCa;
use serde_json::Value;

/// Fields drop in order: gateways before the control plane they report to.
struct Deployment {
    gws: HashMap<String, Gateway>,
    cp: ControlPlane,
    _cp_dir: tempdir::Dir,
    _certs: tempdir::Dir,
}

impl Deployment {
    async fn start(sizes: &[(&str, usize)]) -> Self {
        let certs = tempdir::Dir::new("trace-certs");
        let ca = FederationCa::generate("trace test CA").unwrap();
        let ca_path = certs.0.join("ca.pem");
        std::fs::write(&ca_path, ca.cert_pem()).unwrap();
        let cp_dir = tempdir::Dir::new("trace-cp");
        let cp = ControlPlane::embedded(&cp_dir.0);
        let mut gws = HashMap::new();
        for &(region, n) in sizes {
            for i in 1..=n {
                let id = format!("{region}{i}");
                let (_, pem) = ca.issue_with_pem(region, &id).unwrap();
                let cert = certs.0.join(format!("{id}.pem"));
                let key = certs.0.join(format!("{id}-key.pem"));
                std::fs::write(&cert, &pem.cert_pem).unwrap();
                std::fs::write(&key, &pem.key_pem).unwrap();
                let cp_url = cp.url();
                let gw = Gateway::start_with_args(&[
                    "--region",
                    region,
                    "--gateway-id",
                    &id,
                    "--control-plane",
                    &cp_url,
                    "--federation-listen",
                    "127.0.0.1:0",
                    "--federation-cert",
                    cert.to_str().unwrap(),
                    "--federation-key",
                    key.to_str().unwrap(),
                    "--federation-ca",
                    ca_path.to_str().unwrap(),
                ]);
                gws.insert(id, gw);
            }
        }
        let d = Deployment {
            gws,
            cp,
            _cp_dir: cp_dir,
            _certs: certs,
        };
        for &(region, n) in sizes {
            for i in 1..=n {
                let id = format!("{region}{i}");
                let gw = d.gw(&id);
                assert!(
                    eventually(Duration::from_secs(20), || {
                        let st = status(gw);
                        let cluster = st["cluster"].as_array().map_or(0, |c| c.len());
                        let up = st["links"]
                            .as_array()
                            .map_or(0, |l| l.iter().filter(|l| l["state"] == "up").count());
                        cluster == n - 1 && up == sizes.len() - 1
                    })
                    .await,
                    "{id} did not link up: {}",
                    status(gw)
                );
            }
        }
        d
    }

    fn gw(&self, id: &str) -> &Gateway {
        &self.gws[id]
    }

    /// `nexusctl trace <id> -o json`, once every record the test expects has arrived
    /// (records are written as the message moves on, so the last ones may lag the publish).
    async fn trace_until(&self, id: &str, mut done: impl FnMut(&[Value]) -> bool) -> Value {
        let mut last = Value::Null;
        let ok = eventually(Duration::from_secs(10), || {
            let out = nexusctl_as(
                &self.cp,
                Some(&self.cp.admin_key),
                &["trace", id, "-o", "json"],
            );
            if !out.status.success() {
                last = Value::String(String::from_utf8_lossy(&out.stderr).into_owned());
                return false;
            }
            last = serde_json::from_slice(&out.stdout).expect("trace JSON");
            done(last["records"].as_array().map_or(&[], |r| r.as_slice()))
        })
        .await;
        assert!(ok, "trace of {id} never complete: {last:#}");
        last
    }
}

/// The message id `nexusctl pub` printed.
fn published_id(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("message id "))
        .unwrap_or_else(|| panic!("no message id in {out:?}"))
        .trim()
        .to_owned()
}

fn has(records: &[Value], gateway: &str, event: &str) -> bool {
    records
        .iter()
        .any(|r| r["gateway_id"] == gateway && r["event"] == event)
}

fn find<'a>(records: &'a [Value], gateway: &str, event: &str) -> &'a Value {
    records
        .iter()
        .find(|r| r["gateway_id"] == gateway && r["event"] == event)
        .unwrap_or_else(|| panic!("no {event} at {gateway} in {records:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexusctl_trace_follows_a_message_across_gateways_and_regions() {
    let d = Deployment::start(&[("a", 2), ("b", 1)]).await;
    let (a1, a2, b1) = (d.gw("a1"), d.gw("a2"), d.gw("b1"));

    // Subscribers in region b and on a2 (the other gateway of a's cluster).
    let on_b = client(b1).await;
    let mut sub_b = on_b.subscribe("orders.>").await.unwrap();
    on_b.flush().await.unwrap();
    let on_a2 = client(a2).await;
    let mut sub_a2 = on_a2.subscribe("orders.>").await.unwrap();
    on_a2.flush().await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || {
            let e = explain(a1, "orders.new");
            let cluster = e["federation"]["cluster"]
                .as_array()
                .is_some_and(|c| !c.is_empty());
            let b = e["federation"]["regions"].as_array().is_some_and(|r| {
                r.iter()
                    .any(|c| c["region"] == "b" && c["interest"] == true)
            });
            cluster && b
        })
        .await,
        "a1 never learnt of the subscribers: {}",
        explain(a1, "orders.new")
    );

    // Published on a1 with the force header: nexusctl prints its id.
    let out = nexusctl(
        &d.cp,
        &[
            "--gateway",
            &a1.url(),
            "pub",
            "-H",
            "nexus-trace=1",
            "orders.new",
            "{\"n\":1}",
        ],
    );
    let id = published_id(&out);
    for sub in [&mut sub_b, &mut sub_a2] {
        let m = tokio::time::timeout(Duration::from_secs(5), sub.next_message())
            .await
            .expect("delivered")
            .expect("message");
        assert_eq!(m.id.map(|i| i.to_string()).as_deref(), Some(id.as_str()));
    }

    let t = d
        .trace_until(&id, |r| {
            has(r, "b1", "delivered") && has(r, "a2", "delivered") && has(r, "a1", "route")
        })
        .await;
    let records = t["records"].as_array().unwrap();
    assert_eq!(t["message_id"], id.as_str());
    assert_eq!(t["subject"], "orders.new");
    // The W3C trace id the adapter started, on every record.
    let trace_id = t["trace_id"].as_str().expect("a trace id");
    assert_eq!(trace_id.len(), 32, "{t:#}");
    assert!(records.iter().all(|r| r["trace_id"] == trace_id), "{t:#}");

    // Region a: received from nexusctl's session, the route decision, both hops.
    let received = find(records, "a1", "received");
    assert_eq!(received["region"], "a");
    assert!(
        received["peer"].as_str().unwrap().contains("nexusctl"),
        "{received}"
    );
    let route = find(records, "a1", "route");
    let why = route["detail"].as_str().unwrap();
    assert!(
        why.contains("mode best_effort") && why.contains("regions: b") && why.contains("a2"),
        "{route}"
    );
    let hops: Vec<&Value> = records
        .iter()
        .filter(|r| r["gateway_id"] == "a1" && r["event"] == "forwarded")
        .collect();
    assert!(
        hops.iter().any(|h| h["peer"] == "a2"),
        "no cluster hop: {hops:#?}"
    );
    assert!(
        hops.iter()
            .any(|h| h["peer"].as_str().unwrap().starts_with("b via b1")
                && h["latency_us"].as_u64() > Some(0)),
        "no region hop with its RTT: {hops:#?}"
    );
    // Arrival on the other side with the link's RTT, and the deliveries.
    let arrived = find(records, "b1", "arrived");
    assert_eq!(arrived["region"], "b");
    assert!(arrived["latency_us"].as_u64() > Some(0), "{arrived}");
    assert!(
        arrived["detail"].as_str().unwrap().contains("region link"),
        "{arrived}"
    );
    let arrived = find(records, "a2", "arrived");
    assert!(
        arrived["detail"].as_str().unwrap().contains("cluster link"),
        "{arrived}"
    );
    assert!(
        find(records, "b1", "delivered")["peer"]
            .as_str()
            .unwrap()
            .contains("sid"),
        "{t:#}"
    );
    // In time order, offsets from the first record.
    let offsets: Vec<i64> = records
        .iter()
        .map(|r| r["offset_us"].as_i64().unwrap())
        .collect();
    assert_eq!(offsets[0], 0);
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{offsets:?}");
    assert!(records[0]["event"] == "received", "{t:#}");

    // The text timeline says the same, a line per hop.
    let text = nexusctl(&d.cp, &["trace", &id]);
    eprintln!("{text}");
    assert!(
        text.contains(&format!("message {id} on orders.new")),
        "{text}"
    );
    for needle in [
        "a/a1",
        "a/a2",
        "b/b1",
        "received",
        "route",
        "forwarded",
        "arrived",
        "delivered",
        "rtt ",
    ] {
        assert!(text.contains(needle), "{needle} missing in:\n{text}");
    }

    // Nobody wants it: the drop and why, at the gateway that received it.
    let out = nexusctl(
        &d.cp,
        &[
            "--gateway",
            &a1.url(),
            "pub",
            "-H",
            "nexus-trace=1",
            "nobody.home",
            "x",
        ],
    );
    let lonely = published_id(&out);
    let t = d.trace_until(&lonely, |r| has(r, "a1", "dropped")).await;
    let dropped = find(t["records"].as_array().unwrap(), "a1", "dropped");
    assert_eq!(dropped["reason"], "no_interest", "{t:#}");
    let text = nexusctl(&d.cp, &["trace", &lonely]);
    assert!(text.contains("no_interest"), "{text}");

    // Unknown ids and malformed ones are answered clearly, exit status 1.
    let out = nexusctl_as(
        &d.cp,
        Some(&d.cp.admin_key),
        &["trace", "01ARZ3NDEKTSV4RRFFQ69G5FAV"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no gateway has a trace of message 01ARZ3NDEKTSV4RRFFQ69G5FAV")
            && stderr.contains("3 live gateway(s) asked")
            && stderr.contains("not sampled")
            && stderr.contains("nexus-trace: 1"),
        "{stderr}"
    );
    let out = nexusctl_as(&d.cp, Some(&d.cp.admin_key), &["trace", "not-an-id"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is not a message id"), "{stderr}");

    // A request from region b to a responder on a2, forced: traced at b1, at the gateway of a
    // it reached, and at a2 where the responder answered; found by searching its subject.
    let (_responder, serving) = responder(a2, "svc.echo", "a").await;
    interest_known(b1, "a", "svc.echo").await;
    let out = nexusctl(
        &d.cp,
        &[
            "--gateway",
            &b1.url(),
            "req",
            "-H",
            "nexus-trace=1",
            "svc.echo",
            "?",
        ],
    );
    assert!(out.contains('a'), "{out}");
    let found: Value = serde_json::from_str(&nexusctl(
        &d.cp,
        &["trace", "--subject", "svc.*", "--since", "1m", "-o", "json"],
    ))
    .unwrap();
    let req_id = found["messages"][0]["message_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no traced request: {found:#}"))
        .to_owned();
    let t = d
        .trace_until(&req_id, |r| has(r, "b1", "reply") && has(r, "a2", "reply"))
        .await;
    let records = t["records"].as_array().unwrap();
    let sent = find(records, "b1", "request_routed");
    assert!(
        sent["peer"].as_str().unwrap().starts_with("a via a")
            && sent["latency_us"].as_u64() > Some(0),
        "{t:#}"
    );
    assert!(
        records
            .iter()
            .any(|r| r["region"] == "a" && r["event"] == "arrived"),
        "{t:#}"
    );
    assert!(
        find(records, "a2", "request_routed")["peer"]
            .as_str()
            .unwrap()
            .contains("sid"),
        "{t:#}"
    );
    let reply = find(records, "b1", "reply");
    assert!(
        reply["latency_us"].as_u64() > Some(0) && reply["reason"].is_null(),
        "{t:#}"
    );
    eprintln!("{}", nexusctl(&d.cp, &["trace", &req_id]));
    serving.abort();

    // A durable (`async`) route: spooled at a1 for region b, arrives there from the spool.
    let dir = tempdir::Dir::new("trace-route");
    let route = dir.0.join("ledger.toml");
    std::fs::write(
        &route,
        "name = \"ledger\"\nsubjects = [\"ledger.>\"]\npolicy = \"broadcast\"\nconsistency = \"async\"\n",
    )
    .unwrap();
    nexusctl(&d.cp, &["routes", "apply", "-f", route.to_str().unwrap()]);
    let mut sub_ledger = on_b.subscribe("ledger.>").await.unwrap();
    on_b.flush().await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || {
            let e = explain(a1, "ledger.x");
            e["federation"]["route"]["name"] == "ledger"
                && e["federation"]["regions"].as_array().is_some_and(|r| {
                    r.iter()
                        .any(|c| c["region"] == "b" && c["interest"] == true)
                })
        })
        .await,
        "{}",
        explain(a1, "ledger.x")
    );
    let out = nexusctl(
        &d.cp,
        &[
            "--gateway",
            &a1.url(),
            "pub",
            "-H",
            "nexus-trace=1",
            "ledger.x",
            "1",
        ],
    );
    let durable = published_id(&out);
    tokio::time::timeout(Duration::from_secs(5), sub_ledger.next_message())
        .await
        .expect("delivered")
        .expect("message");
    let t = d.trace_until(&durable, |r| has(r, "b1", "delivered")).await;
    let records = t["records"].as_array().unwrap();
    let spooled = find(records, "a1", "spooled");
    assert!(
        spooled["peer"].as_str().unwrap().contains('b')
            && spooled["detail"].as_str().unwrap().contains("mode async"),
        "{t:#}"
    );
    assert!(
        find(records, "b1", "arrived")["detail"]
            .as_str()
            .unwrap()
            .starts_with("spooled"),
        "{t:#}"
    );

    // A payload its subject's schema rejects: the schema drop, at the gateway that refused it.
    let schema = dir.0.join("typed.json");
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
            "typed.x",
            "-f",
            schema.to_str().unwrap(),
        ],
    );
    nexusctl(&d.cp, &["schemas", "set-enforcement", "typed.x", "reject"]);
    let refused = nexusctl_as(
        &d.cp,
        Some(&d.cp.admin_key),
        &[
            "--gateway",
            &a1.url(),
            "pub",
            "-H",
            "nexus-trace=1",
            "typed.x",
            r#"{"id":"one"}"#,
        ],
    );
    assert!(!refused.status.success(), "{refused:?}");
    let found: Value = serde_json::from_str(&nexusctl(
        &d.cp,
        &["trace", "--subject", "typed.x", "-o", "json"],
    ))
    .unwrap();
    let typed = found["messages"][0]["message_id"]
        .as_str()
        .unwrap_or_else(|| panic!("the refused message was not traced: {found:#}"))
        .to_owned();
    let t = d.trace_until(&typed, |r| has(r, "a1", "dropped")).await;
    let dropped = find(t["records"].as_array().unwrap(), "a1", "dropped");
    assert_eq!(dropped["reason"], "schema", "{t:#}");
    assert!(
        dropped["detail"]
            .as_str()
            .unwrap()
            .contains("does not match schema"),
        "{t:#}"
    );

    // Search by subject lists the traced message; the store's metrics count records.
    let listed = nexusctl(&d.cp, &["trace", "--subject", "orders.>", "--since", "5m"]);
    assert!(
        listed.contains(&id) && !listed.contains(&lonely),
        "{listed}"
    );
    assert!(a1.metric("nexus_trace_records_kept_total", &[]) >= 4.0);
}
