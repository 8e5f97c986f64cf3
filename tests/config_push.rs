//! Config push end to end: a `nexus control-plane` process, a `nexus gateway` registered
//! with it, `nexusctl` changing keys and schemas, and the Rust adapter observing the effect
//! on the gateway: authentication, scopes, revocation within 2 s, schema enforcement, the
//! last good config surviving a control-plane outage and a gateway restart, registration
//! and DNS SRV answers, and a dead gateway disappearing within the lease TTL.

mod common;

use std::time::{Duration, Instant};

use common::{ControlPlane, Gateway, dig_srv, eventually, nexusctl, tempdir};
use nexus_client::{Client, Error};
use nexus_proto::v1::{self, frame::Kind};

async fn connect(gw: &Gateway, key: Option<&str>) -> Result<Client, Error> {
    let mut b = Client::builder(&gw.url())
        .connect_timeout(Duration::from_secs(3))
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200));
    if let Some(k) = key {
        b = b.api_key(k);
    }
    b.connect().await
}

fn create_key(cp: &ControlPlane, name: &str, publish: &str, subscribe: &str) -> (String, String) {
    let out = nexusctl(
        cp,
        &[
            "keys",
            "create",
            name,
            "--publish",
            publish,
            "--subscribe",
            subscribe,
            "-o",
            "json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    (
        v["id"].as_str().unwrap().to_owned(),
        v["secret"].as_str().unwrap().to_owned(),
    )
}

/// Waits until a session with `key` is accepted (the gateway has the key's snapshot).
async fn wait_accepted(gw: &Gateway, key: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match connect(gw, Some(key)).await {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("key never accepted: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_scopes_revocation_schemas_persistence_registration_and_dns() {
    let data = tempdir::Dir::new("push-cp");
    let state = tempdir::Dir::new("push-gw");
    let mut cp = ControlPlane::embedded_with_dns(&data.0, "2s");
    let dns = cp.dns.expect("DNS address");
    let state_dir = state.0.display().to_string();
    let cp_url = cp.url();
    let mut gw = Gateway::start_with_args(&[
        "--control-plane",
        &cp_url,
        "--auth",
        "required",
        "--state-dir",
        &state_dir,
    ]);

    // Registration and DNS.
    assert!(
        eventually(Duration::from_secs(5), || nexusctl(
            &cp,
            &["gateways", "-o", "json"]
        )
        .contains(&gw.grpc.to_string()))
        .await,
        "the gateway registered"
    );
    let srv = dig_srv(dns, "_nexus._tcp.test.nexus.local");
    assert!(
        srv.contains(&format!(" {} ", gw.grpc.port())),
        "SRV answer: {srv:?}"
    );

    // Authentication.
    match connect(&gw, None).await {
        Err(Error::Denied { message }) => {
            assert!(message.contains("API key is required"), "{message}")
        }
        other => panic!(
            "a session without a key must be refused: {:?}",
            other.map(|_| ())
        ),
    }
    let (id, secret) = create_key(&cp, "orders-svc", "orders.>", "orders.>");
    let client = wait_accepted(&gw, &secret).await;
    let wrong = format!("nxk_{id}_{}", "0".repeat(64));
    match connect(&gw, Some(&wrong)).await {
        Err(Error::Denied { message }) => assert!(message.contains("wrong secret"), "{message}"),
        other => panic!("{:?}", other.map(|_| ())),
    }

    // Scopes.
    let mut sub = client.subscribe("orders.>").await.unwrap();
    match client.subscribe("billing.>").await {
        Err(Error::Denied { message }) => {
            assert!(
                message.contains(&id) && message.contains("billing.>"),
                "{message}"
            )
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    match client.publish_acked("billing.invoice", "x").await {
        Err(Error::Denied { message }) => assert!(message.contains("may not publish"), "{message}"),
        other => panic!("{other:?}"),
    }
    client.publish("orders.eu.created", "{}").await.unwrap();
    assert!(sub.next_message().await.is_some());
    // A publish in the same batch as the Hello is checked against the key that Hello
    // authenticated (the gateway checks a batch against the grant as it was when the batch
    // arrived, and takes the Hello's grant into it).
    let mut raw = common::RawSession::open(
        &gw.url(),
        vec![
            common::frame(Kind::Hello(v1::Hello {
                api_key: secret.clone(),
                client_name: "raw-scoped".into(),
                protocol: 1,
                ..Default::default()
            })),
            common::frame(Kind::Pub(v1::Pub {
                subject: "billing.invoice".into(),
                ack_id: 7,
                ..Default::default()
            })),
        ],
    )
    .await
    .expect("session opens");
    assert!(matches!(raw.next_frame().await, Some(Kind::Welcome(_))));
    match raw.next_frame().await {
        Some(Kind::Nack(n)) => {
            assert_eq!(n.ack_id, 7);
            let message = n.error.map(|e| e.message).unwrap_or_default();
            assert!(message.contains("may not publish"), "{message}");
        }
        other => panic!("expected a Nack for the out-of-scope publish, got {other:?}"),
    }

    // Provenance: the gateway names the publisher's key, whatever the publisher claimed.
    let forged = nexus_client::Headers::new().with("Nexus-Publisher-Key", "someone-else");
    client
        .publish_message(
            nexus_client::OutgoingMessage::new("orders.eu.signed", "{}").with_headers(forged),
        )
        .await
        .unwrap();
    let m = sub.next_message().await.unwrap();
    assert_eq!(
        m.headers.get_all("nexus-publisher-key").collect::<Vec<_>>(),
        vec![id.as_str()],
        "{:?}",
        m.headers
    );

    // Schema enforcement: registered and set to reject, the gateway refuses bad payloads
    // with the schema and the violation named.
    let files = tempdir::Dir::new("push-files");
    let schema = files.0.join("order.json");
    std::fs::write(
        &schema,
        r#"{"type":"object","properties":{"id":{"type":"integer"}},"required":["id"]}"#,
    )
    .unwrap();
    nexusctl(
        &cp,
        &[
            "schemas",
            "register",
            "orders.created",
            "-f",
            schema.to_str().unwrap(),
        ],
    );
    nexusctl(
        &cp,
        &["schemas", "set-enforcement", "orders.created", "reject"],
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    let message = loop {
        match client
            .publish_acked("orders.created", r#"{"id":"seven"}"#)
            .await
        {
            Err(Error::Invalid { message }) => break message,
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => panic!("bad payload not rejected: {other:?}"),
        }
    };
    assert!(
        message.contains("orders.created") && message.contains("version 1"),
        "{message}"
    );
    assert!(message.contains("/id"), "names the violation: {message}");
    assert_eq!(
        client
            .publish_acked("orders.created", r#"{"id":7}"#)
            .await
            .unwrap(),
        1
    );
    assert!(gw.metric("nexus_schema_violations_total", &["\"rejected\""]) >= 1.0);

    // A second key, then revoke the first: its session ends within 2 seconds.
    let (_, secret2) = create_key(&cp, "reader", "orders.>", "orders.>");
    drop(wait_accepted(&gw, &secret2).await);
    let revoked_at = Instant::now();
    nexusctl(&cp, &["keys", "revoke", &id]);
    assert!(
        eventually(Duration::from_secs(2), || !client.is_connected()).await,
        "revocation reached the connected session"
    );
    let took = revoked_at.elapsed();
    assert!(took < Duration::from_secs(2), "{took:?}");
    match connect(&gw, Some(&secret)).await {
        Err(Error::Denied { message }) => assert!(message.contains("revoked"), "{message}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert!(gw.metric("nexus_sessions_revoked_total", &[]) >= 1.0);

    // The control plane goes away; the gateway restarts and routes with its saved config.
    cp.kill();
    gw.restart();
    let c2 = connect(&gw, Some(&secret2))
        .await
        .expect("saved config accepts the live key");
    assert!(matches!(
        connect(&gw, Some(&secret)).await,
        Err(Error::Denied { .. })
    ));
    assert!(matches!(
        c2.publish_acked("orders.created", "not json").await,
        Err(Error::Invalid { .. })
    ));

    // The control plane comes back: the gateway re-registers; killed, it disappears
    // within the lease TTL (2 s here).
    cp.restart();
    assert!(
        eventually(Duration::from_secs(10), || nexusctl(
            &cp,
            &["gateways", "-o", "json"]
        )
        .contains(&gw.grpc.to_string()))
        .await,
        "the gateway re-registered"
    );
    gw.kill();
    assert!(
        eventually(Duration::from_secs(5), || !nexusctl(
            &cp,
            &["gateways", "-o", "json"]
        )
        .contains(&gw.grpc.to_string()))
        .await,
        "a dead gateway leaves the registry"
    );
    let dns = cp.dns.expect("DNS after restart");
    assert!(
        eventually(Duration::from_secs(5), || dig_srv(
            dns,
            "_nexus._tcp.test.nexus.local"
        )
        .trim()
        .is_empty())
        .await,
        "DNS no longer lists the dead gateway"
    );
}

/// The same path on a real etcd, with a protobuf schema (a FileDescriptorSet) enforced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_schema_enforcement_with_the_etcd_store() {
    use prost::Message;
    let etcd = common::Etcd::start();
    let cp = ControlPlane::etcd(&etcd.endpoint);
    let state = tempdir::Dir::new("push-etcd-gw");
    let state_dir = state.0.display().to_string();
    let cp_url = cp.url();
    let gw = Gateway::start_with_args(&[
        "--control-plane",
        &cp_url,
        "--auth",
        "required",
        "--state-dir",
        &state_dir,
    ]);
    let (_, secret) = create_key(&cp, "routes-feed", "routes.>", "routes.>");
    let client = wait_accepted(&gw, &secret).await;

    let files = tempdir::Dir::new("push-etcd-files");
    let protoset = files.0.join("nexus.protoset");
    std::fs::write(&protoset, nexus_proto::FILE_DESCRIPTOR_SET).unwrap();
    nexusctl(
        &cp,
        &[
            "schemas",
            "register",
            "routes.changed",
            "-f",
            protoset.to_str().unwrap(),
            "--message",
            "nexus.v1.Route",
        ],
    );
    nexusctl(
        &cp,
        &["schemas", "set-enforcement", "routes.changed", "reject"],
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    let message = loop {
        match client
            .publish_acked("routes.changed", vec![0xffu8, 0xff, 0xff])
            .await
        {
            Err(Error::Invalid { message }) => break message,
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => panic!("malformed protobuf not rejected: {other:?}"),
        }
    };
    assert!(message.contains("routes.changed"), "{message}");
    let route = nexus_proto::v1::Route {
        name: "orders".into(),
        subjects: vec!["orders.>".into()],
        ..Default::default()
    };
    let mut sub = client.subscribe("routes.changed").await.unwrap();
    assert_eq!(
        client
            .publish_acked("routes.changed", route.encode_to_vec())
            .await
            .unwrap(),
        1
    );
    let got = sub.next_message().await.unwrap();
    assert_eq!(
        nexus_proto::v1::Route::decode(got.payload).unwrap().name,
        "orders"
    );
    // Warn mode lets a bad payload through and counts it.
    nexusctl(
        &cp,
        &["schemas", "set-enforcement", "routes.changed", "warn"],
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match client
            .publish_acked("routes.changed", vec![0xffu8, 0xff, 0xff])
            .await
        {
            Ok(_) => break,
            Err(Error::Invalid { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(gw.metric("nexus_schema_violations_total", &["\"warned\""]) >= 1.0);
}

/// SIGTERM stops a control plane promptly even while gateways hold Sync streams open, and
/// the gateways keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_shuts_down_cleanly_with_gateways_connected() {
    let data = tempdir::Dir::new("push-stop");
    let state = tempdir::Dir::new("push-stop-gw");
    let mut cp = ControlPlane::embedded(&data.0);
    let state_dir = state.0.display().to_string();
    let cp_url = cp.url();
    let gw = Gateway::start_with_args(&["--control-plane", &cp_url, "--state-dir", &state_dir]);
    assert!(
        eventually(Duration::from_secs(5), || nexusctl(
            &cp,
            &["gateways", "-o", "json"]
        )
        .contains(&gw.grpc.to_string()))
        .await
    );
    let mut child = cp.terminate();
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let c = connect(&gw, None).await.expect("the gateway still serves");
    c.close().await;
}
