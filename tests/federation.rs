//! Federation end to end: three `nexus gateway` processes in three regions, linked over QUIC
//! with mutual TLS (certificates from `nexus federation-certs`), adapters in different
//! regions talking through them, interest-only propagation, and a region that restarts.

mod common;

use std::time::{Duration, Instant};

use common::{Gateway, federation_certs, tempdir};
use nexus_client::Client;

fn region_gateway(certs: &tempdir::Dir, region: &str, peers: &[(&str, &Gateway)]) -> Gateway {
    let d = certs.0.display().to_string();
    let mut args: Vec<String> = vec![
        "--region".into(),
        region.into(),
        "--federation-listen".into(),
        "127.0.0.1:0".into(),
        "--federation-cert".into(),
        format!("{d}/{region}.pem"),
        "--federation-key".into(),
        format!("{d}/{region}-key.pem"),
        "--federation-ca".into(),
        format!("{d}/ca.pem"),
    ];
    for (peer, gw) in peers {
        args.push("--peer".into());
        args.push(format!(
            "{peer}={}",
            gw.federation.expect("peer federation address")
        ));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Gateway::start_with_args(&args)
}

/// Publishes from `from` until `sub` receives a message (interest takes a moment to
/// propagate); returns what was received.
async fn publish_until_received(
    from: &Client,
    subject: &str,
    sub: &mut nexus_client::Subscription,
) -> nexus_client::Message {
    // Up to the link idle timeout (5 s) for a peer that restarted, plus re-dial backoff.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        from.publish(subject, "hello across regions").await.unwrap();
        match tokio::time::timeout(Duration::from_millis(100), sub.next_message()).await {
            Ok(Some(m)) => return m,
            _ if Instant::now() < deadline => {}
            _ => panic!("nothing crossed the regions for {subject}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_regions_exchange_messages_by_interest_and_survive_a_restart() {
    let certs = federation_certs(&["a-east", "b-west", "c-south"]);
    // Regions dial the ones whose names sort after theirs, so start from the last.
    let c = region_gateway(&certs, "c-south", &[]);
    let mut b = region_gateway(&certs, "b-west", &[("c-south", &c)]);
    let a = region_gateway(&certs, "a-east", &[("b-west", &b), ("c-south", &c)]);

    let in_a = Client::connect(&a.url()).await.unwrap();
    let in_b = Client::connect(&b.url()).await.unwrap();
    let in_c = Client::connect(&c.url()).await.unwrap();

    // A subscriber in c-south receives what a-east publishes.
    let mut c_orders = in_c.subscribe("orders.>").await.unwrap();
    let m = publish_until_received(&in_a, "orders.eu.created", &mut c_orders).await;
    assert_eq!(&m.payload[..], b"hello across regions");
    assert!(m.traceparent().is_some(), "trace context crosses regions");

    // And the other way round, b-west to a-east, over the link a-east dialled.
    let mut a_prices = in_a.subscribe("prices.*").await.unwrap();
    publish_until_received(&in_b, "prices.eur", &mut a_prices).await;

    // Local delivery is unaffected: a local subscriber still gets exactly one copy.
    let mut b_local = in_b.subscribe("local.only").await.unwrap();
    in_b.publish("local.only", "x").await.unwrap();
    assert!(b_local.next_message().await.is_some());

    // Request/reply across regions: a service only in c-south answers callers elsewhere.
    let _svc = in_c
        .serve("svc.where", Some("svc"), |m| async move {
            Ok(bytes::Bytes::from(format!(
                "c-south got {}",
                String::from_utf8_lossy(&m.payload)
            )))
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let reply = loop {
        match in_a.request("svc.where", "a question").await {
            Ok(r) => break r,
            Err(nexus_client::Error::NoResponders { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(&reply.payload[..], b"c-south got a question");
    assert_eq!(
        &in_b.request("svc.where", "b").await.unwrap().payload[..],
        b"c-south got b"
    );
    assert!(matches!(
        in_a.request("svc.nowhere", "x").await,
        Err(nexus_client::Error::NoResponders { .. })
    ));

    // b-west goes away: best effort drops what a-east publishes for it, and says so.
    let mut b_cut = in_b.subscribe("cut.>").await.unwrap();
    publish_until_received(&in_a, "cut.before", &mut b_cut).await;
    b.kill();
    assert!(
        common::eventually(Duration::from_secs(10), || a
            .metric("nexus_federation_links", &[])
            == 1.0)
        .await,
        "a-east noticed the link to b-west is gone"
    );
    let dropped_before = a.metric("nexus_federation_messages_total", &["\"dropped\""]);
    for _ in 0..5 {
        in_a.publish("cut.during", "lost").await.unwrap();
    }
    in_a.flush().await.unwrap();
    assert!(
        common::eventually(Duration::from_secs(5), || a
            .metric("nexus_federation_messages_total", &["\"dropped\""])
            >= dropped_before + 5.0)
        .await,
        "the metrics count what best effort dropped"
    );

    // b-west restarts on the same addresses; links come back and interest is resent.
    drop(b_local);
    drop(b_cut);
    b.restart();
    let in_b = Client::connect(&b.url()).await.unwrap();
    let mut b_orders = in_b.subscribe("orders.>").await.unwrap();
    publish_until_received(&in_a, "orders.us.created", &mut b_orders).await;
    publish_until_received(&in_c, "orders.ap.created", &mut b_orders).await;
}
