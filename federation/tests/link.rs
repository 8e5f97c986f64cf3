//! Federation links over real QUIC on loopback with mutual TLS: hello, interest exchange,
//! ordered forwarding with backpressure, RTT, refusal of a foreign CA and of a region the
//! certificate does not name, and re-dialling
//! after the peer restarts.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use nexus_federation::link::{Federation, LinkEvent};
use nexus_federation::tls::FederationCa;
use nexus_proto::v1::{Forward, InterestUpdate};
use tokio::sync::mpsc;

async fn next(rx: &mut mpsc::Receiver<LinkEvent>) -> LinkEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a link event in time")
        .expect("events open")
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test]
async fn linked_regions_exchange_interest_and_forward_in_order() {
    let ca = FederationCa::generate("test federation").unwrap();
    let (a, mut a_events) = Federation::bind_with_events(
        loopback(),
        &ca.issue("a-east", "gw-a").unwrap(),
        "a-east",
        "gw-a",
        Default::default(),
    )
    .await
    .unwrap();
    let (b, mut b_events) = Federation::bind_with_events(
        loopback(),
        &ca.issue("b-west", "gw-b").unwrap(),
        "b-west",
        "gw-b",
        Default::default(),
    )
    .await
    .unwrap();
    // Both list each other; only "a-east" (sorts first) dials.
    a.maintain(b.local_addr().unwrap(), "b-west");
    b.maintain(a.local_addr().unwrap(), "a-east");
    assert_eq!(
        next(&mut a_events).await,
        LinkEvent::Up {
            region: "b-west".into(),
            gateway_id: "gw-b".into()
        }
    );
    assert_eq!(
        next(&mut b_events).await,
        LinkEvent::Up {
            region: "a-east".into(),
            gateway_id: "gw-a".into()
        }
    );
    assert_eq!(a.connected_regions(), vec!["b-west"]);
    assert!(a.rtt("b-west").is_some());

    let update = InterestUpdate {
        full: true,
        add: vec!["orders.>".into()],
        remove: vec![],
    };
    assert!(b.send_interest("a-east", update.clone()));
    assert_eq!(
        next(&mut a_events).await,
        LinkEvent::Interest {
            region: "b-west".into(),
            update
        }
    );

    for i in 0..2000u32 {
        a.forward(
            "b-west",
            Forward {
                subject: "orders.eu.created".into(),
                payload: Bytes::from(i.to_be_bytes().to_vec()),
                origin_region: "a-east".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    for i in 0..2000u32 {
        match next(&mut b_events).await {
            LinkEvent::Forward { region, forward } => {
                assert_eq!(region, "a-east");
                assert_eq!(forward.payload.as_ref(), i.to_be_bytes(), "in order");
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(
        a.forward("nowhere", Forward::default()).await,
        Err(nexus_federation::link::LinkError::NotConnected(_))
    ));
    a.shutdown().await;
    match next(&mut b_events).await {
        LinkEvent::Down { region, .. } => assert_eq!(region, "a-east"),
        other => panic!("{other:?}"),
    }
    b.shutdown().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let ca = FederationCa::generate("ours").unwrap();
    let rogue = FederationCa::generate("theirs").unwrap();
    let (ours, _events) = Federation::bind_with_events(
        loopback(),
        &ca.issue("b-west", "gw-b").unwrap(),
        "b-west",
        "gw-b",
        Default::default(),
    )
    .await
    .unwrap();
    let (intruder, _e) = Federation::bind_with_events(
        loopback(),
        &rogue.issue("a-east", "gw-x").unwrap(),
        "a-east",
        "gw-x",
        Default::default(),
    )
    .await
    .unwrap();
    let err = intruder
        .dial(ours.local_addr().unwrap(), "b-west")
        .await
        .expect_err("the handshake must fail");
    assert!(err.to_string().contains("b-west"), "{err}");
    assert!(ours.connected_regions().is_empty());
}

#[tokio::test]
async fn a_gateway_cannot_claim_another_region_than_its_certificate_names() {
    let ca = FederationCa::generate("ours").unwrap();
    let (ours, mut events) = Federation::bind_with_events(
        loopback(),
        &ca.issue("c-south", "gw-c").unwrap(),
        "c-south",
        "gw-c",
        Default::default(),
    )
    .await
    .unwrap();
    // A genuine certificate for b-west, but the hello says a-east.
    let (impostor, _e) = Federation::bind_with_events(
        loopback(),
        &ca.issue("b-west", "gw-b").unwrap(),
        "a-east",
        "gw-b",
        Default::default(),
    )
    .await
    .unwrap();
    let result = impostor.dial(ours.local_addr().unwrap(), "c-south").await;
    assert!(result.is_err(), "the link must be refused");
    assert!(ours.connected_regions().is_empty());
    assert!(
        tokio::time::timeout(Duration::from_millis(300), events.recv())
            .await
            .is_err(),
        "no link event for a refused peer"
    );
}

#[tokio::test]
async fn links_are_redialled_after_the_peer_restarts() {
    let ca = FederationCa::generate("test").unwrap();
    let (a, mut a_events) = Federation::bind_with_events(
        loopback(),
        &ca.issue("a-east", "gw-a").unwrap(),
        "a-east",
        "gw-a",
        Default::default(),
    )
    .await
    .unwrap();
    let b_identity = ca.issue("b-west", "gw-b").unwrap();
    let (b, _b_events) = Federation::bind_with_events(
        loopback(),
        &b_identity,
        "b-west",
        "gw-b",
        Default::default(),
    )
    .await
    .unwrap();
    let b_addr = b.local_addr().unwrap();
    a.maintain(b_addr, "b-west");
    assert!(matches!(next(&mut a_events).await, LinkEvent::Up { .. }));
    b.shutdown().await;
    assert!(matches!(next(&mut a_events).await, LinkEvent::Down { .. }));
    drop(b);
    // The peer comes back on the same address (once the old socket is released): the link
    // is re-established by itself.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let (b2, mut b2_events) = loop {
        match Federation::bind_with_events(
            b_addr,
            &b_identity,
            "b-west",
            "gw-b2",
            Default::default(),
        )
        .await
        {
            Ok(x) => break x,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    match next(&mut a_events).await {
        LinkEvent::Up { region, gateway_id } => {
            assert_eq!((region.as_str(), gateway_id.as_str()), ("b-west", "gw-b2"))
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(next(&mut b2_events).await, LinkEvent::Up { .. }));
    a.shutdown().await;
    b2.shutdown().await;
}

#[tokio::test]
async fn a_second_gateway_of_a_region_is_refused_while_the_first_is_linked() {
    let ca = FederationCa::generate("test").unwrap();
    let bind = |region: &'static str, id: &'static str| {
        let identity = ca.issue(region, id).unwrap();
        async move {
            Federation::bind_with_events(loopback(), &identity, region, id, Default::default())
                .await
                .unwrap()
        }
    };
    let (b, mut b_events) = bind("b-west", "gw-b").await;
    let (a1, mut a1_events) = bind("a-east", "gw-a1").await;
    let (a2, mut a2_events) = bind("a-east", "gw-a2").await;
    a1.maintain(b.local_addr().unwrap(), "b-west");
    assert!(matches!(next(&mut a1_events).await, LinkEvent::Up { .. }));
    assert_eq!(
        next(&mut b_events).await,
        LinkEvent::Up {
            region: "a-east".into(),
            gateway_id: "gw-a1".into()
        }
    );
    // The second gateway of a-east is refused, again and again, and never displaces the
    // first: no flapping.
    a2.maintain(b.local_addr().unwrap(), "b-west");
    let quiet = tokio::time::timeout(Duration::from_secs(2), b_events.recv()).await;
    assert!(quiet.is_err(), "b saw {quiet:?}");
    assert!(a2_events.try_recv().is_err());
    assert_eq!(b.connected_regions(), vec!["a-east"]);
    // When the first goes, the second gets the link.
    a1.shutdown().await;
    assert!(matches!(next(&mut b_events).await, LinkEvent::Down { .. }));
    assert_eq!(
        next(&mut b_events).await,
        LinkEvent::Up {
            region: "a-east".into(),
            gateway_id: "gw-a2".into()
        }
    );
    a2.shutdown().await;
    b.shutdown().await;
}
