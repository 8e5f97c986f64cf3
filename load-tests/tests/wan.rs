//! The WAN emulator relaying real UDP on loopback: delay, cuts and loss, and a federation
//! link (QUIC with mutual TLS) running through it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nexus_load::wan::{Impairment, WanProxy};
use tokio::net::UdpSocket;

async fn echo_server() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    addr
}

async fn round_trip(client: &UdpSocket, to: SocketAddr, wait: Duration) -> Option<Duration> {
    let started = Instant::now();
    client.send_to(b"ping", to).await.unwrap();
    let mut buf = [0u8; 16];
    match tokio::time::timeout(wait, client.recv(&mut buf)).await {
        Ok(Ok(_)) => Some(started.elapsed()),
        _ => None,
    }
}

#[tokio::test]
async fn delay_cut_heal_and_loss() {
    let echo = echo_server().await;
    let wan = WanProxy::start(
        "127.0.0.1:0".parse().unwrap(),
        echo,
        Impairment {
            delay: Duration::from_millis(30),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let rtt = round_trip(&client, wan.listen_addr, Duration::from_secs(2))
        .await
        .expect("echo through the emulator");
    assert!(
        rtt >= Duration::from_millis(60),
        "both directions delayed: {rtt:?}"
    );

    wan.cut();
    assert_eq!(
        round_trip(&client, wan.listen_addr, Duration::from_millis(300)).await,
        None
    );
    wan.heal();
    assert!(
        round_trip(&client, wan.listen_addr, Duration::from_secs(2))
            .await
            .is_some()
    );

    wan.set(Impairment {
        loss: 1.0,
        ..Default::default()
    });
    assert_eq!(
        round_trip(&client, wan.listen_addr, Duration::from_millis(300)).await,
        None
    );
    let stats = wan.stats();
    assert!(stats.dropped >= 2 && stats.forwarded >= 4, "{stats:?}");
}

#[tokio::test]
async fn a_federation_link_runs_through_the_emulator_and_measures_its_delay() {
    use nexus_federation::link::{Federation, LinkEvent};
    use nexus_federation::tls::FederationCa;
    let ca = FederationCa::generate("wan test").unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (b, _b_events) = Federation::bind_with_events(
        any,
        &ca.issue("b-west", "gw-b").unwrap(),
        "b-west",
        "gw-b",
        Default::default(),
    )
    .await
    .unwrap();
    let wan = WanProxy::start(
        any,
        b.local_addr().unwrap(),
        Impairment {
            delay: Duration::from_millis(40),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (a, mut a_events) = Federation::bind_with_events(
        any,
        &ca.issue("a-east", "gw-a").unwrap(),
        "a-east",
        "gw-a",
        Default::default(),
    )
    .await
    .unwrap();
    a.maintain(wan.listen_addr, "b-west");
    let up = tokio::time::timeout(Duration::from_secs(10), a_events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(up, LinkEvent::Up { .. }), "{up:?}");
    let rtt = a.rtt("b-west").unwrap();
    assert!(
        rtt >= Duration::from_millis(70),
        "QUIC sees the emulated 2 x 40 ms: {rtt:?}"
    );
    a.shutdown().await;
    b.shutdown().await;
}
