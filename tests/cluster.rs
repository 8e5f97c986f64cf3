//! Regional clusters with real processes: two regions (`a`, `b`) of two gateways each, found
//! through a real control plane's registrations, linked over QUIC with mutual TLS (a
//! certificate per gateway naming its id): pub/sub, queue groups and requests across the
//! gateways of a region, and messages published on any gateway of one region reaching every
//! subscriber of the other exactly once, best effort and `async`.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::regions::{client, explain, status};
use common::{ControlPlane, Gateway, eventually, nexusctl, tempdir};
use nexus_federation::tls::FederationCa;
use nexus_load::wan::{Impairment, WanProxy};

/// A control plane and `gateways` per region for `regions`; gateway ids `<region><n>`.
struct Regions {
    gws: HashMap<String, Gateway>,
    /// A WAN emulator in front of each gateway's QUIC endpoint, by gateway id, when started
    /// with [`Regions::start_behind_wan`].
    wan: HashMap<String, WanProxy>,
    cp: ControlPlane,
    _cp_dir: tempdir::Dir,
    _certs: tempdir::Dir,
}

impl Regions {
    async fn start(regions: &[&str], gateways: usize) -> Self {
        Self::start_on(regions, gateways, false, &[]).await
    }

    /// With the control plane's DNS, so clients find a region's gateways by SRV.
    async fn start_with_dns(regions: &[&str], gateways: usize) -> Self {
        Self::start_on(regions, gateways, true, &[]).await
    }

    /// `sizes` gateways per region, with `extra` arguments for every gateway.
    async fn start_sized(sizes: &[(&str, usize)], extra: &[&str]) -> Self {
        Self::start_each(sizes, false, extra).await
    }

    async fn start_on(regions: &[&str], gateways: usize, dns: bool, extra: &[&str]) -> Self {
        let sizes: Vec<(&str, usize)> = regions.iter().map(|r| (*r, gateways)).collect();
        Self::start_each(&sizes, dns, extra).await
    }

    /// `sizes` gateways per region, each registering a WAN emulator with `impairment` in
    /// front of its QUIC endpoint (`--federation-advertise`): every cluster and federation
    /// link crosses one, in both directions.
    async fn start_behind_wan(sizes: &[(&str, usize)], impairment: Impairment) -> Self {
        Self::start_all(
            sizes,
            false,
            &["--link-dead-after-ms", "2000"],
            Some(impairment),
        )
        .await
    }

    async fn start_each(sizes: &[(&str, usize)], dns: bool, extra: &[&str]) -> Self {
        Self::start_all(sizes, dns, extra, None).await
    }

    async fn start_all(
        sizes: &[(&str, usize)],
        dns: bool,
        extra: &[&str],
        impairment: Option<Impairment>,
    ) -> Self {
        let certs = tempdir::Dir::new("cluster-certs");
        let ca = FederationCa::generate("test cluster CA").unwrap();
        std::fs::write(certs.0.join("ca.pem"), ca.cert_pem()).unwrap();
        let cp_dir = tempdir::Dir::new("cluster-cp");
        let cp = if dns {
            ControlPlane::embedded_with_dns(&cp_dir.0, "2s")
        } else {
            ControlPlane::embedded(&cp_dir.0)
        };
        let mut gws = HashMap::new();
        let mut wan = HashMap::new();
        for &(region, gateways) in sizes {
            for n in 1..=gateways {
                let id = format!("{region}{n}");
                let (_, pem) = ca.issue_with_pem(region, &id).unwrap();
                let cert = certs.0.join(format!("{id}.pem"));
                let key = certs.0.join(format!("{id}-key.pem"));
                std::fs::write(&cert, &pem.cert_pem).unwrap();
                std::fs::write(&key, &pem.key_pem).unwrap();
                let ca_path = certs.0.join("ca.pem");
                let cp_url = cp.url();
                let mut args = vec![
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
                ];
                args.extend_from_slice(extra);
                let (listen, advertise);
                if let Some(impairment) = impairment {
                    // The gateway's QUIC port is chosen first so the emulator can point at
                    // it; the emulator's address is what the gateway registers.
                    let port = std::net::UdpSocket::bind("127.0.0.1:0")
                        .unwrap()
                        .local_addr()
                        .unwrap();
                    let proxy = WanProxy::start("127.0.0.1:0".parse().unwrap(), port, impairment)
                        .await
                        .unwrap();
                    listen = port.to_string();
                    advertise = proxy.listen_addr.to_string();
                    let at = args.iter().position(|a| *a == "127.0.0.1:0").unwrap();
                    args[at] = &listen;
                    args.extend_from_slice(&["--federation-advertise", &advertise]);
                    wan.insert(id.clone(), proxy);
                }
                let gw = Gateway::start_with_args(&args);
                gws.insert(id.clone(), gw);
            }
        }
        let r = Regions {
            gws,
            wan,
            cp,
            _cp_dir: cp_dir,
            _certs: certs,
        };
        for &(region, gateways) in sizes {
            for n in 1..=gateways {
                r.linked(&format!("{region}{n}"), gateways, sizes.len())
                    .await;
            }
        }
        r
    }

    /// Waits until `id` links to the other gateways of its region and to every other region.
    async fn linked(&self, id: &str, gateways: usize, regions: usize) {
        let gw = self.gw(id);
        assert!(
            eventually(Duration::from_secs(20), || {
                let st = status(gw);
                let cluster = st["cluster"].as_array().map_or(0, |c| c.len());
                let regions_up = st["links"]
                    .as_array()
                    .map_or(0, |l| l.iter().filter(|l| l["state"] == "up").count());
                cluster == gateways - 1 && regions_up == regions - 1
            })
            .await,
            "{id} did not link up: {}",
            status(gw)
        );
    }

    /// Applies the route `orders` (`orders.>`, broadcast, `async`) and waits until every
    /// gateway has it.
    async fn async_orders_route(&self) {
        let dir = tempdir::Dir::new("cluster-route");
        let route = dir.0.join("route.toml");
        std::fs::write(
            &route,
            "name = \"orders\"\nsubjects = [\"orders.>\"]\npolicy = \"broadcast\"\nconsistency = \"async\"\n",
        )
        .unwrap();
        nexusctl(
            &self.cp,
            &["routes", "apply", "-f", route.to_str().unwrap()],
        );
        for (id, gw) in &self.gws {
            assert!(
                eventually(
                    Duration::from_secs(10),
                    || explain(gw, "orders.x")["federation"]["route"]["name"] == "orders"
                )
                .await,
                "{id} never applied the route"
            );
        }
    }

    /// A client of `region` that finds its gateways through DNS SRV (default settings).
    async fn srv_client(&self, region: &str) -> nexus_client::Client {
        let dns = self.cp.dns.expect("started with DNS");
        nexus_client::Client::builder(&format!("nexus+srv://{region}.nexus.local?dns={dns}"))
            .connect()
            .await
            .expect("connect by SRV")
    }

    fn gw(&self, id: &str) -> &Gateway {
        &self.gws[id]
    }
}

/// A client of `gw` subscribed to `subject`, once the gateway has the subscription.
async fn subscribed(
    gw: &Gateway,
    subject: &str,
) -> (nexus_client::Client, nexus_client::Subscription) {
    let c = client(gw).await;
    let sub = c.subscribe(subject).await.unwrap();
    c.flush().await.unwrap();
    (c, sub)
}

/// Waits until `gw` routes `subject` somewhere: a subscriber in its region or elsewhere.
async fn wanted(gw: &Gateway, subject: &str, region: &str) {
    assert!(
        eventually(Duration::from_secs(10), || {
            let e = explain(gw, subject);
            e["federation"]["cluster"]
                .as_array()
                .is_some_and(|c| !c.is_empty())
                || e["federation"]["regions"].as_array().is_some_and(|r| {
                    r.iter()
                        .any(|c| c["region"] == region && c["interest"] == true)
                })
        })
        .await,
        "{subject} never became wanted at {}",
        explain(gw, subject)
    );
}

/// Waits until each of `gws` (all of one region, each with a subscriber on `subject`) knows
/// that the others want `subject`: whichever of them is a stream's home relays to the others
/// only once it does (the other region may learn of the interest from one of them first).
async fn each_knows_the_others_want(r: &Regions, gws: &[&str], subject: &str) {
    for gw in gws {
        assert!(
            eventually(Duration::from_secs(10), || {
                explain(r.gw(gw), subject)["federation"]["cluster"]
                    .as_array()
                    .is_some_and(|c| c.len() == gws.len() - 1)
            })
            .await,
            "{gw}: {}",
            explain(r.gw(gw), subject)
        );
    }
}

/// The gateway of `region` that `gw`'s traffic for it goes through now (its home there).
fn home_of(gw: &Gateway, region: &str) -> String {
    status(gw)["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["region"] == region)
        .and_then(|l| l["via"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no home in {region}"))
}

async fn drain(sub: &mut nexus_client::Subscription) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(Some(m)) =
        tokio::time::timeout(Duration::from_millis(700), sub.next_message()).await
    {
        out.push(String::from_utf8_lossy(&m.payload).into_owned());
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_of_two_gateways_is_one_region_to_its_users_and_to_the_other() {
    let r = Regions::start(&["a", "b"], 2).await;

    // Subscribers on a1 (plain), b1 and b2 (plain), a queue group with members on a2 and b2.
    let (a1, mut on_a1) = subscribed(r.gw("a1"), "news.>").await;
    let (b1, mut on_b1) = subscribed(r.gw("b1"), "news.>").await;
    let (_b2, mut on_b2) = subscribed(r.gw("b2"), "news.>").await;
    wanted(r.gw("a2"), "news.x", "b").await;
    each_knows_the_others_want(&r, &["b1", "b2"], "news.x").await;
    assert!(
        eventually(Duration::from_secs(10), || {
            explain(r.gw("a2"), "news.x")["federation"]["cluster"]
                .as_array()
                .is_some_and(|c| c.len() == 1)
        })
        .await,
        "a2 never heard of a1's subscriber"
    );

    // Published on a2: a1's subscriber (same region, other gateway) and both of b's get it,
    // each once.
    let a2 = client(r.gw("a2")).await;
    for i in 0..20 {
        a2.publish("news.x", format!("n{i:02}")).await.unwrap();
    }
    a2.flush().await.unwrap();
    let expected: Vec<String> = (0..20).map(|i| format!("n{i:02}")).collect();
    assert_eq!(drain(&mut on_a1).await, expected, "a1");
    assert_eq!(drain(&mut on_b1).await, expected, "b1");
    assert_eq!(drain(&mut on_b2).await, expected, "b2");

    // Requests from b1 reach a responder that only a2 has, whichever gateway of a is b1's home.
    let mut served = a2.subscribe("svc.echo").await.unwrap();
    a2.flush().await.unwrap();
    let server = a2.clone();
    let responder = tokio::spawn(async move {
        while let Some(m) = served.next_message().await {
            let _ = server.reply(&m, b"from a2".to_vec()).await;
        }
    });
    wanted(r.gw("b1"), "svc.echo", "a").await;
    let answer = b1
        .request("svc.echo", b"?".to_vec())
        .await
        .expect("request");
    assert_eq!(&answer.payload[..], b"from a2");
    // And from a1, in the same region.
    let answer = a1
        .request("svc.echo", b"?".to_vec())
        .await
        .expect("request");
    assert_eq!(&answer.payload[..], b"from a2");
    responder.abort();

    // Operators see the cluster: every gateway's links as it reports them.
    let t: serde_json::Value =
        serde_json::from_str(&nexusctl(&r.cp, &["topology", "--links", "-o", "json"])).unwrap();
    for region in t["regions"].as_array().unwrap() {
        let name = region["region"].as_str().unwrap();
        let other = if name == "a" { "b" } else { "a" };
        let gateways = region["gateways"].as_array().unwrap();
        assert_eq!(gateways.len(), 2, "{t}");
        for g in gateways {
            let id = g["id"].as_str().unwrap();
            let links = &g["links"];
            let peers: Vec<&str> = links["cluster"]
                .as_array()
                .unwrap_or_else(|| panic!("{id}: no cluster links in {links}"))
                .iter()
                .map(|c| c["gateway_id"].as_str().unwrap())
                .collect();
            assert_eq!(peers.len(), 1, "{id}: {links}");
            assert!(
                peers[0].starts_with(name) && peers[0] != id,
                "{id}: {links}"
            );
            let fed = links["links"].as_array().unwrap();
            assert!(
                fed.iter().any(|l| l["region"] == other
                    && l["state"] == "up"
                    && l["via"].as_str().is_some_and(|v| v.starts_with(other))),
                "{id}: {links}"
            );
        }
    }
    let text = nexusctl(&r.cp, &["topology", "--links"]);
    assert!(
        text.contains("cluster  a2") && text.contains("region   b"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_messages_from_every_gateway_reach_every_subscriber_of_the_other_region_once() {
    let r = Regions::start(&["a", "b"], 2).await;
    r.async_orders_route().await;
    let (_b1, mut on_b1) = subscribed(r.gw("b1"), "orders.>").await;
    let (_b2, mut on_b2) = subscribed(r.gw("b2"), "orders.>").await;
    wanted(r.gw("a1"), "orders.x", "b").await;
    wanted(r.gw("a2"), "orders.x", "b").await;
    each_knows_the_others_want(&r, &["b1", "b2"], "orders.x").await;
    let a1 = client(r.gw("a1")).await;
    let a2 = client(r.gw("a2")).await;
    for i in 0..50 {
        let (c, from) = if i % 2 == 0 { (&a1, "a1") } else { (&a2, "a2") };
        c.publish_acked("orders.x", format!("{from}-{i:02}"))
            .await
            .expect("acknowledged once spooled");
    }
    let mut expected: Vec<String> = (0..50)
        .map(|i| format!("{}-{i:02}", if i % 2 == 0 { "a1" } else { "a2" }))
        .collect();
    expected.sort();
    assert_eq!(drain(&mut on_b1).await, expected, "b1");
    assert_eq!(drain(&mut on_b2).await, expected, "b2");
    // Each origin's spool empties: the receivers' confirmations reach the gateway that sent
    // each stream, whichever gateway of a their own traffic goes through.
    for id in ["a1", "a2"] {
        assert!(
            eventually(Duration::from_secs(10), || status(r.gw(id))["routes"]
                .as_array()
                .is_some_and(|r| r.is_empty()))
            .await,
            "{id}'s spool did not empty: {}",
            status(r.gw(id))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_home_gateway_re_homes_within_a_second_and_async_messages_arrive_once() {
    let mut r = Regions::start(&["a", "b"], 3).await;
    r.async_orders_route().await;
    // A subscriber on every gateway of b.
    let mut subs = HashMap::new();
    let mut clients = Vec::new();
    for id in ["b1", "b2", "b3"] {
        let c = client(r.gw(id)).await;
        let s = c.subscribe("orders.>").await.unwrap();
        c.flush().await.unwrap();
        subs.insert(id.to_owned(), s);
        clients.push(c);
    }
    wanted(r.gw("a1"), "orders.x", "b").await;
    each_knows_the_others_want(&r, &["b1", "b2", "b3"], "orders.x").await;
    let via = |r: &Regions| {
        status(r.gw("a1"))["links"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["region"] == "b")
            .and_then(|l| l["via"].as_str().map(str::to_owned))
    };
    let home = via(&r).expect("a1 has a home in b");
    let a1 = client(r.gw("a1")).await;
    const N: u32 = 300;
    let publisher = tokio::spawn(async move {
        for i in 0..N {
            a1.publish_acked("orders.x", i.to_be_bytes().to_vec())
                .await
                .expect("acknowledged once spooled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The home dies.
    let killed = std::time::Instant::now();
    r.gws.get_mut(&home).unwrap().kill();
    let mut rehomed = None;
    while killed.elapsed() < Duration::from_secs(10) {
        if via(&r).is_some_and(|v| v != home) {
            rehomed = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rehomed = rehomed.expect("a1 never moved to another home");
    eprintln!("a1 moved from {home} to {:?} after {rehomed:?}", via(&r));
    assert!(rehomed < Duration::from_millis(1500), "{rehomed:?}");
    publisher.await.unwrap();
    // Every surviving subscriber of b gets every message once.
    for (id, sub) in subs.iter_mut().filter(|(id, _)| **id != home) {
        let mut seen = std::collections::BTreeSet::new();
        let mut dups = Vec::new();
        while let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_secs(2), sub.next_message()).await
        {
            let i = u32::from_be_bytes(m.payload[..4].try_into().unwrap());
            if !seen.insert(i) {
                dups.push(i);
            }
        }
        assert!(dups.is_empty(), "{id} got duplicates: {dups:?}");
        let missing: Vec<u32> = (0..N).filter(|i| !seen.contains(i)).collect();
        assert!(missing.is_empty(), "{id} is missing {missing:?}");
    }
}

/// A publish on an `async` route with a message id, as the adapters' idempotent retries send it.
fn pub_with_id(subject: &str, n: u64) -> nexus_proto::v1::Frame {
    use nexus_proto::v1::{self, frame::Kind};
    common::frame(Kind::Pub(v1::Pub {
        subject: subject.into(),
        payload: bytes::Bytes::from(format!("m{n:05}")),
        id: bytes::Bytes::from(format!("durable-{n:08}").into_bytes()),
        ack_id: n + 1,
        ..Default::default()
    }))
}

/// A publisher that outruns the cluster hop waits for it, as for a slow local subscriber
/// (the default `backpressure` policy), so a subscriber on another gateway of the region
/// loses nothing: 60 000 best-effort publishes from a1 in batches of 1000, unpaced, reach a
/// subscriber on a2 once each and in order, with the hop's queue full now and then (before,
/// the copies that found it full were dropped: 29-58 % in the release benchmark).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_outrunning_the_cluster_hop_waits_for_it_and_nothing_is_lost() {
    use nexus_proto::v1::{self, frame::Kind};
    let r = Regions::start(&["a"], 2).await;
    let (_a2, mut on_a2) = subscribed(r.gw("a2"), "flood.>").await;
    wanted(r.gw("a1"), "flood.x", "a").await;
    const N: u64 = 60_000;
    let s = common::RawSession::connect(&r.gw("a1").url()).await;
    for chunk in 0..N / 1000 {
        s.send(
            (0..1000)
                .map(|i| {
                    common::frame(Kind::Pub(v1::Pub {
                        subject: "flood.x".into(),
                        payload: bytes::Bytes::from((chunk * 1000 + i).to_be_bytes().to_vec()),
                        ..Default::default()
                    }))
                })
                .collect(),
        )
        .await;
    }
    let mut next = 0u64;
    while next < N {
        let m = tokio::time::timeout(Duration::from_secs(30), on_a2.next_message())
            .await
            .unwrap_or_else(|_| panic!("a2 received {next} of {N}, then nothing for 30 s"))
            .expect("subscription ended");
        let n = u64::from_be_bytes(m.payload[..8].try_into().unwrap());
        assert_eq!(n, next, "out of order or missing at a2");
        next += 1;
    }
    let a1 = r.gw("a1");
    let waited = a1.metric("nexus_cluster_forwards_waited_total", &[]);
    let dropped = a1.metric("nexus_federation_dropped_total", &["reason=\"queue_full\""]);
    println!("the publisher waited for the hop {waited} times; {dropped} dropped");
    assert_eq!(dropped, 0.0);
    assert!(
        waited > 0.0,
        "the hop's queue never filled: the test proves nothing"
    );
}

/// Sends publishes `0..n` with message ids ([`pub_with_id`]) on `s`, 100 to a batch.
async fn publish_with_ids(s: &common::RawSession, n: u64) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        s.send(chunk.iter().map(|n| pub_with_id("orders.x", *n)).collect())
            .await;
    }
}

/// Reads `n` Acks from `s` and returns how many said `duplicate`; a Nack fails the test.
async fn acks(s: &mut common::RawSession, n: u64) -> u64 {
    let (mut acked, mut duplicates) = (0, 0);
    while acked < n {
        match tokio::time::timeout(Duration::from_secs(10), s.next_frame()).await {
            Ok(Some(nexus_proto::v1::frame::Kind::Ack(a))) => {
                acked += 1;
                duplicates += u64::from(a.duplicate);
            }
            Ok(Some(nexus_proto::v1::frame::Kind::Nack(n))) => panic!("refused: {n:?}"),
            Ok(Some(_)) => {}
            other => panic!("after {acked} acks: {other:?}"),
        }
    }
    duplicates
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_publishes_reach_the_region_only_once_stored_so_retries_after_a_kill_deliver_nothing_twice()
 {
    let mut r = Regions::start(&["a", "b"], 2).await;
    r.async_orders_route().await;
    // A subscriber on a2 (the publisher's gateway is a1) and one in region b.
    let (_a2, mut on_a2) = subscribed(r.gw("a2"), "orders.>").await;
    let b1 = client(r.gw("b1")).await;
    let _on_b1 = b1.subscribe("orders.>").await.unwrap();
    b1.flush().await.unwrap();
    wanted(r.gw("a1"), "orders.x", "b").await;

    // Many publishes in flight at once, so that the kill finds some written to the session
    // but not yet stored.
    const N: u64 = 3000;
    let s = common::RawSession::connect(&r.gw("a1").url()).await;
    publish_with_ids(&s, N).await;
    let mut seen: HashMap<String, u32> = HashMap::new();
    while seen.len() < 300 {
        let m = tokio::time::timeout(Duration::from_secs(10), on_a2.next_message())
            .await
            .expect("messages reach a2")
            .unwrap();
        *seen
            .entry(String::from_utf8_lossy(&m.payload).into_owned())
            .or_default() += 1;
    }
    r.gws.get_mut("a1").unwrap().kill();
    drop(s);
    for m in drain(&mut on_a2).await {
        *seen.entry(m).or_default() += 1;
    }
    let before_kill = seen.len();

    // The publisher retries everything with the same ids once a1 is back.
    r.gws.get_mut("a1").unwrap().restart();
    assert!(
        eventually(Duration::from_secs(20), || {
            let st = status(r.gw("a1"));
            st["cluster"].as_array().map_or(0, |c| c.len()) == 1
        })
        .await
    );
    let mut s = common::RawSession::connect(&r.gw("a1").url()).await;
    publish_with_ids(&s, N).await;
    let duplicates_acked = acks(&mut s, N).await;
    for m in drain(&mut on_a2).await {
        *seen.entry(m).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} messages reached a2 more than once (first: {:?}); {before_kill} before the kill, {duplicates_acked} retries acknowledged as duplicates",
        twice.len(),
        twice.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        duplicates_acked as usize >= before_kill,
        "every message a2 had seen before the kill was stored, so its retry is a duplicate: {duplicates_acked} < {before_kill}"
    );
    // And nothing is missing: what a1 stored before dying reached a2 from its spool when a1
    // came back; the rest was published again by the retries.
    assert_eq!(seen.len() as u64, N, "messages that reached a2");
}

/// Counts of each payload received, read until the subscriptions stay quiet.
async fn tally(subs: &mut [&mut nexus_client::Subscription], seen: &mut [HashMap<String, u32>]) {
    for (sub, seen) in subs.iter_mut().zip(seen.iter_mut()) {
        for m in drain(sub).await {
            *seen.entry(m).or_default() += 1;
        }
    }
}

/// A publisher whose gateway is killed retries on *another* gateway of the region: what that
/// gateway already had from the dead one is answered as a duplicate, and what the dead one
/// stored but never sent on, published again by the retry, is not delivered a second time
/// when the dead gateway comes back and sends it from its spool, in either region.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_on_another_gateway_of_the_region_after_a_kill_delivers_nothing_twice() {
    let mut r = Regions::start(&["a", "b"], 2).await;
    r.async_orders_route().await;
    let (_a2, mut on_a2) = subscribed(r.gw("a2"), "orders.>").await;
    let (_b1, mut on_b1) = subscribed(r.gw("b1"), "orders.>").await;
    let (_b2, mut on_b2) = subscribed(r.gw("b2"), "orders.>").await;
    wanted(r.gw("a1"), "orders.x", "b").await;
    wanted(r.gw("a2"), "orders.x", "b").await;
    each_knows_the_others_want(&r, &["b1", "b2"], "orders.x").await;

    const N: u64 = 3000;
    let s = common::RawSession::connect(&r.gw("a1").url()).await;
    publish_with_ids(&s, N).await;
    let mut seen = vec![HashMap::new(), HashMap::new(), HashMap::new()];
    while seen[0].len() < 300 {
        let m = tokio::time::timeout(Duration::from_secs(10), on_a2.next_message())
            .await
            .expect("messages reach a2")
            .unwrap();
        *seen[0]
            .entry(String::from_utf8_lossy(&m.payload).into_owned())
            .or_default() += 1;
    }
    r.gws.get_mut("a1").unwrap().kill();
    drop(s);

    // The publisher retries everything on a2.
    let mut s = common::RawSession::connect(&r.gw("a2").url()).await;
    publish_with_ids(&s, N).await;
    let duplicates = acks(&mut s, N).await;
    assert!(
        duplicates >= 300,
        "a2 had at least 300 of them already: {duplicates} duplicates"
    );

    // a1 comes back and sends what it had stored from its spool, to a2 and to region b.
    r.gws.get_mut("a1").unwrap().restart();
    assert!(
        eventually(Duration::from_secs(30), || {
            let st = status(r.gw("a1"));
            st["routes"]
                .as_array()
                .is_some_and(|routes| routes.iter().all(|s| s["spool_depth"] == 0))
                && st["cluster"].as_array().map_or(0, |c| c.len()) == 1
        })
        .await,
        "a1 never emptied its spool: {}",
        status(r.gw("a1"))
    );
    tally(&mut [&mut on_a2, &mut on_b1, &mut on_b2], &mut seen).await;
    for (name, seen) in ["a2", "b1", "b2"].iter().zip(&seen) {
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "{} messages reached {name} more than once (first: {:?}); {duplicates} retries were answered as duplicates",
            twice.len(),
            twice.iter().take(5).collect::<Vec<_>>()
        );
        assert_eq!(seen.len() as u64, N, "messages that reached {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_a_region_under_load_loses_nothing_and_shows_callers_no_error() {
    let mut r = Regions::start_with_dns(&["a", "b"], 2).await;
    r.async_orders_route().await;
    let b = r.srv_client("b").await;
    let mut on_b = b.subscribe("orders.>").await.unwrap();
    b.flush().await.unwrap();
    for id in ["a1", "a2"] {
        wanted(r.gw(id), "orders.x", "b").await;
    }

    // Steady load: acknowledged publishes at ~200/s from a client of region a.
    let a = r.srv_client("a").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut errors = Vec::new();
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match a.publish_acked("orders.x", format!("o{i:06}")).await {
                    Ok(_) => acked.push(i),
                    Err(e) => errors.push(format!("o{i:06}: {e}")),
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (i, acked, errors)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Every gateway of region a in turn: SIGTERM, wait for it to exit, start it again.
    for id in ["a1", "a2"] {
        let child = r.gws.get_mut(id).unwrap().terminate();
        let exited = tokio::task::spawn_blocking(move || {
            let mut child = child;
            child.wait()
        })
        .await
        .unwrap();
        assert!(exited.is_ok(), "{id} did not exit: {exited:?}");
        r.gws.get_mut(id).unwrap().restart();
        r.linked(id, 2, 2).await;
        wanted(r.gw(id), "orders.x", "b").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (published, acked, errors) = publisher.await.unwrap();
    assert!(
        errors.is_empty(),
        "{} of {published} publishes failed at the caller: {:?}",
        errors.len(),
        errors.iter().take(5).collect::<Vec<_>>()
    );
    let mut got: HashMap<String, u32> = HashMap::new();
    while got.len() < acked.len() {
        match tokio::time::timeout(Duration::from_secs(10), on_b.next_message()).await {
            Ok(Some(m)) => {
                *got.entry(String::from_utf8_lossy(&m.payload).into_owned())
                    .or_default() += 1
            }
            _ => break,
        }
    }
    for m in drain(&mut on_b).await {
        *got.entry(m).or_default() += 1;
    }
    let missing: Vec<_> = acked
        .iter()
        .map(|i| format!("o{i:06}"))
        .filter(|k| !got.contains_key(k))
        .collect();
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        missing.is_empty() && twice.is_empty(),
        "of {} acknowledged: {} missing at b (first {:?}), {} twice (first {:?})",
        acked.len(),
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        twice.len(),
        twice.iter().take(5).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_quorum_is_counted_per_region_whichever_gateway_of_it_confirms() {
    let mut r = Regions::start(&["a", "b", "c"], 2).await;
    let dir = tempdir::Dir::new("cluster-route");
    let route = dir.0.join("route.toml");
    // Both other regions must confirm; the region's own other gateway does not count.
    std::fs::write(
        &route,
        "name = \"ledger\"\nsubjects = [\"ledger.>\"]\npolicy = \"broadcast\"\nconsistency = \"sync\"\nsync_quorum = 2\nsync_timeout_ms = 3000\n",
    )
    .unwrap();
    nexusctl(&r.cp, &["routes", "apply", "-f", route.to_str().unwrap()]);
    let mut clients = Vec::new();
    for id in ["a2", "b1", "b2", "c1", "c2"] {
        let c = client(r.gw(id)).await;
        let s = c.subscribe("ledger.>").await.unwrap();
        c.flush().await.unwrap();
        clients.push((id, c, s));
    }
    wanted(r.gw("a1"), "ledger.x", "b").await;
    wanted(r.gw("a1"), "ledger.x", "c").await;
    let a1 = client(r.gw("a1")).await;
    let ack = a1
        .publish_acked("ledger.x", b"first".to_vec())
        .await
        .expect("b and c confirmed");
    let _ = ack;
    // Kill a1's home in b: the quorum is still met, through b's other gateway.
    let home = home_of(r.gw("a1"), "b");
    r.gws.get_mut(&home).unwrap().kill();
    clients.retain(|(id, _, _)| *id != home);
    let started = std::time::Instant::now();
    a1.publish_acked("ledger.x", b"second".to_vec())
        .await
        .expect("b's other gateway confirmed");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    // Every surviving subscriber has both, once.
    for (id, _, sub) in clients.iter_mut() {
        let got = drain(sub).await;
        assert_eq!(got, ["first", "second"], "{id}");
    }
    // Region c gone entirely: b and a2 confirm, but a2 is not a region, so the quorum of two
    // regions is not met.
    r.gws.get_mut("c1").unwrap().kill();
    r.gws.get_mut("c2").unwrap().kill();
    let refused = a1.publish_acked("ledger.x", b"third".to_vec()).await;
    assert!(
        matches!(refused, Err(nexus_client::Error::Timeout { .. })),
        "{refused:?}"
    );
}

/// Kills the gateway a subscriber (found by DNS SRV) is on, `rounds` times, and measures the
/// gap from the kill to the first message it receives again through another gateway of the
/// region (published every 2 ms on the surviving gateway). Returns the gaps, sorted.
async fn subscriber_failover_gaps(rounds: usize) -> Vec<Duration> {
    let mut r = Regions::start_with_dns(&["a"], 2).await;
    let sub_client = r.srv_client("a").await;
    let mut sub = sub_client.subscribe("ticks").await.unwrap();
    sub_client.flush().await.unwrap();
    let mut gaps = Vec::new();
    for round in 0..rounds {
        let on = sub_client.server_info().expect("connected").gateway_id;
        let other = if on == "a1" { "a2" } else { "a1" };
        // The subscriber's interest has reached the other gateway.
        wanted(r.gw(other), "ticks", "a").await;
        let publisher = client(r.gw(other)).await;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let ticking = {
            let stop = stop.clone();
            let sent = sent.clone();
            let publisher = publisher.clone();
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    // Counted before it is sent: a tick numbered above what the kill read
                    // was published after the kill (counting after the send let a tick
                    // already delivered before the kill pass for a new one: a 41 us "gap").
                    sent.store(i, std::sync::atomic::Ordering::Release);
                    let _ = publisher.publish("ticks", i.to_be_bytes().to_vec()).await;
                    let _ = publisher.flush().await;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        // Ticks flow through the cluster hop before the kill.
        tokio::time::timeout(Duration::from_secs(10), sub.next_message())
            .await
            .expect("ticks before the kill")
            .unwrap();
        r.gws.get_mut(&on).unwrap().kill();
        let killed = std::time::Instant::now();
        // The first tick published after the kill proves the new session (anything older
        // may have been in the client's buffer).
        let last_before = sent.load(std::sync::atomic::Ordering::Acquire);
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), sub.next_message())
                .await
                .unwrap_or_else(|_| panic!("round {round}: no message within 10 s of the kill"))
                .unwrap_or_else(|| panic!("round {round}: subscription ended"));
            let tick = u64::from_be_bytes(m.payload[..8].try_into().unwrap());
            if tick > last_before {
                break;
            }
        }
        gaps.push(killed.elapsed());
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = ticking.await;
        publisher.close().await;
        r.gws.get_mut(&on).unwrap().restart();
        r.linked(&on, 2, 1).await;
    }
    gaps.sort();
    gaps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_moves_to_another_gateway_of_its_region_within_a_second_of_a_kill() {
    let gaps = subscriber_failover_gaps(3).await;
    assert!(
        gaps.iter().all(|g| *g < Duration::from_secs(1)),
        "gaps after kill -9: {gaps:?}"
    );
}

/// `cargo test --test cluster subscriber_failover_measurement -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (20 kills): prints the gaps"]
async fn subscriber_failover_measurement() {
    let gaps = subscriber_failover_gaps(20).await;
    let at = |q: f64| gaps[((gaps.len() as f64 * q).ceil() as usize).clamp(1, gaps.len()) - 1];
    println!(
        "SUBSCRIBER-FAILOVER kills={} p50={:?} p99={:?} max={:?} all={gaps:?}",
        gaps.len(),
        at(0.5),
        at(0.99),
        gaps[gaps.len() - 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_move_to_the_next_region_when_the_gateway_of_the_regions_only_responder_dies() {
    let mut r = Regions::start(&["a", "b"], 2).await;
    // The only responder of region a sits on a2; region b has one too.
    let (_a2_client, _a2_task) = common::regions::responder(r.gw("a2"), "svc.echo", "a2").await;
    let (_b_client, _b_task) = common::regions::responder(r.gw("b1"), "svc.echo", "b").await;
    wanted(r.gw("a1"), "svc.echo", "b").await;
    let caller = client(r.gw("a1")).await;
    // Through the cluster hop first (local first, then the region's other gateways).
    assert!(
        eventually(Duration::from_secs(10), || {
            let st = explain(r.gw("a1"), "svc.echo");
            st["federation"]["cluster"]
                .as_array()
                .is_some_and(|c| !c.is_empty())
        })
        .await
    );
    assert_eq!(
        common::regions::who_answers(&caller, "svc.echo").await,
        "a2"
    );

    // Requests every 10 ms; a2 is killed; count the failures and when answers come from b.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let requester = {
        let stop = stop.clone();
        let caller = caller.clone();
        tokio::spawn(async move {
            let mut log = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let sent = std::time::Instant::now();
                let answer = caller
                    .request_with(
                        "svc.echo",
                        nexus_client::Headers::new(),
                        bytes::Bytes::from_static(b"?"),
                        Duration::from_secs(2),
                    )
                    .await
                    .map(|m| String::from_utf8_lossy(&m.payload).into_owned());
                log.push((sent, answer));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            log
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    r.gws.get_mut("a2").unwrap().kill();
    let killed = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let log = requester.await.unwrap();
    let failed: Vec<_> = log.iter().filter(|(_, a)| a.is_err()).collect();
    let first_from_b = log
        .iter()
        .find(|(sent, a)| *sent >= killed && a.as_deref().is_ok_and(|w| w == "b"))
        .map(|(sent, _)| sent.duration_since(killed));
    let after = log.iter().filter(|(sent, _)| *sent >= killed).count();
    eprintln!(
        "RESPONDER-GATEWAY-KILL failed={} of {} first_from_b_after_kill={first_from_b:?}",
        failed.len(),
        log.len()
    );
    assert!(
        first_from_b.is_some_and(|d| d < Duration::from_secs(1)),
        "first answer from b after the kill: {first_from_b:?}"
    );
    // Only requests already in flight to a2, or sent before its loss was detected, may fail.
    assert!(
        failed.len() <= 3,
        "{} of {} requests failed after the kill ({after} sent after it): {:?}",
        failed.len(),
        log.len(),
        failed.iter().take(3).collect::<Vec<_>>()
    );
    // And everything later is answered by b.
    let late: Vec<_> = log
        .iter()
        .filter(|(sent, _)| sent.duration_since(killed) > Duration::from_secs(1))
        .filter(|(_, a)| a.as_deref().map_or(true, |w| w != "b"))
        .collect();
    assert!(late.is_empty(), "{late:?}");
}

/// `(priority, weight)` of each gateway id in the SRV answer for region `region`.
fn srv_preferences(r: &Regions, region: &str) -> HashMap<String, (u16, u16)> {
    let dns = r.cp.dns.expect("started with DNS");
    common::dig_srv(dns, &format!("_nexus._tcp.{region}.nexus.local"))
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let id = f.get(3)?.split('.').next()?.to_owned();
            Some((id, (f.first()?.parse().ok()?, f.get(1)?.parse().ok()?)))
        })
        .collect()
}

/// SIGTERM drains (docs/protocol.md §3.4): DNS SRV weights the region's gateways by load and
/// lists a draining one last; the draining gateway sends its sessions `GoAway` and keeps
/// serving them (an acked publish is still acknowledged), waits for a session that does not
/// move, and exits as soon as it has gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_gateway_tells_sessions_to_move_serves_them_meanwhile_and_dns_lists_it_last() {
    let mut r = Regions::start_with_dns(&["a"], 2).await;

    // 30 sessions on a1, none on a2: a1 weighs less in DNS.
    let mut clients = Vec::new();
    for _ in 0..30 {
        clients.push(client(r.gw("a1")).await);
    }
    assert!(
        eventually(Duration::from_secs(15), || {
            let p = srv_preferences(&r, "a");
            matches!((p.get("a1"), p.get("a2")), (Some(a1), Some(a2)) if a1.0 == a2.0 && a1.1 < a2.1)
        })
        .await,
        "a1's SRV weight never fell below a2's: {:?}",
        srv_preferences(&r, "a")
    );
    for c in clients.drain(..) {
        c.close().await;
    }

    // A session that does not know GoAway (a raw one) stays on a1 through the drain.
    let mut raw = common::RawSession::connect(&r.gw("a1").url()).await;
    let mut a1 = r.gws.get_mut("a1").unwrap().terminate();
    match raw.next_frame().await {
        Some(nexus_proto::v1::frame::Kind::GoAway(g)) => {
            assert_eq!(g.drain_ms, 5000, "the default shutdown grace");
            assert!(g.reason.contains("shutting down"), "{}", g.reason);
        }
        other => panic!("expected GoAway, got {other:?}"),
    }
    // It is still served: an acked publish is acknowledged, not refused.
    raw.send(vec![common::frame(nexus_proto::v1::frame::Kind::Pub(
        nexus_proto::v1::Pub {
            subject: "drain.still.served".into(),
            payload: bytes::Bytes::from_static(b"x"),
            ack_id: 7,
            ..Default::default()
        },
    ))])
    .await;
    match raw.next_frame().await {
        Some(nexus_proto::v1::frame::Kind::Ack(a)) => assert_eq!(a.ack_id, 7),
        other => panic!("expected the Ack of a publish sent while draining, got {other:?}"),
    }
    // DNS now lists a1 after a2.
    assert!(
        eventually(Duration::from_secs(3), || {
            let p = srv_preferences(&r, "a");
            matches!((p.get("a1"), p.get("a2")), (Some(a1), Some(a2)) if a1.0 > a2.0)
        })
        .await,
        "DNS did not list the draining a1 last: {:?}",
        srv_preferences(&r, "a")
    );
    // The gateway waits for the session, and exits once it has gone.
    assert!(
        a1.try_wait().unwrap().is_none(),
        "a1 exited with a session still open"
    );
    drop(raw);
    let left = std::time::Instant::now();
    let status = loop {
        if let Some(s) = a1.try_wait().unwrap() {
            break s;
        }
        assert!(
            left.elapsed() < Duration::from_secs(2),
            "a1 did not exit after its last session left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
}

/// `--spool-replicas 2`: a publish on an `async` route is acknowledged only once a second
/// gateway of the region holds it, so the permanent loss of the gateway that took it (killed,
/// never back, its disk gone with it) loses nothing: its replica sends its spool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_spool_replicas_2_acknowledged_messages_survive_the_permanent_loss_of_their_gateway() {
    let lost = permanent_loss(2).await;
    assert_eq!(lost, 0);
}

/// The same loss without a replica loses what the dead gateway held: the case above can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a demonstration that the replica test can fail; run by hand"]
async fn without_a_replica_the_permanent_loss_of_a_gateway_loses_its_spool() {
    let lost = permanent_loss(1).await;
    assert!(lost > 0, "nothing was lost");
}

/// Publishes acknowledged `async` messages on a1 while region b's gateway is stopped
/// (SIGSTOP, so they wait in a1's spool), kills a1 for good, lets b1 run again, and counts at
/// b1 and a2 (subscribers all along): every message must arrive once at each; returns how
/// many never reached b1 (duplicates fail the test at once). Region b has one gateway: a
/// cluster link inside b cut by the stop would lose relays in flight, a separate weakness
/// (docs/cluster.md).
async fn permanent_loss(replicas: u8) -> usize {
    let replicas = replicas.to_string();
    let mut r = Regions::start_sized(
        &[("a", 2), ("b", 1)],
        &[
            "--spool-replicas",
            &replicas,
            "--replica-takeover-ms",
            "1000",
        ],
    )
    .await;
    r.async_orders_route().await;
    let (_a2, mut on_a2) = subscribed(r.gw("a2"), "orders.>").await;
    let (_b1, mut on_b1) = subscribed(r.gw("b1"), "orders.>").await;
    wanted(r.gw("a1"), "orders.x", "b").await;
    wanted(r.gw("a2"), "orders.x", "b").await;

    r.gw("b1").signal("STOP");
    const N: u64 = 2000;
    let mut s = common::RawSession::connect(&r.gw("a1").url()).await;
    publish_with_ids(&s, N).await;
    assert_eq!(acks(&mut s, N).await, 0, "no retries here");
    if replicas == "2" {
        let held = r.gw("a2").metric("nexus_spool_replica_held", &[]);
        assert!(held > 0.0, "a2 holds no copies of a1's spool");
        // Operators see who keeps whose copies.
        assert_eq!(status(r.gw("a1"))["replicas"]["replica"], "a2");
        let text = nexusctl(&r.cp, &["topology", "--links"]);
        assert!(text.contains("replica  copies kept by a2"), "{text}");
        assert!(text.contains("replica  holds"), "{text}");
        let text = nexusctl(&r.cp, &["routes", "explain", "orders.x", "--from", "a"]);
        assert!(text.contains("spool copies: 2 (replica a"), "{text}");
    }
    // a1 is gone for good, with its disk.
    r.gws.remove("a1");
    drop(s);
    r.gw("b1").signal("CONT");

    let mut seen = vec![HashMap::new(), HashMap::new()];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        tally(&mut [&mut on_b1, &mut on_a2], &mut seen).await;
        let done = seen.iter().all(|s| s.len() as u64 == N);
        if done || tokio::time::Instant::now() > deadline {
            break;
        }
    }
    for (name, s) in ["b1", "a2"].iter().zip(&seen) {
        let twice = s.values().filter(|n| **n > 1).count();
        assert_eq!(twice, 0, "{name} received {twice} messages more than once");
    }
    if replicas == "2" {
        let took_over = r
            .gw("a2")
            .metric("nexus_spool_replica_takeovers_total", &[]);
        assert!(took_over >= 1.0, "a2 never took over a1's spool");
        let missing = |s: &HashMap<String, u32>| -> Vec<u64> {
            (0..N)
                .filter(|n| !s.contains_key(&format!("m{n:05}")))
                .collect()
        };
        let report: Vec<String> = ["b1", "a2"]
            .iter()
            .zip(&seen)
            .map(|(name, s)| {
                let m = missing(s);
                format!(
                    "{name}: {} of {N}, missing {} (first {:?})",
                    s.len(),
                    m.len(),
                    &m[..m.len().min(10)]
                )
            })
            .collect();
        assert!(
            seen.iter().all(|s| s.len() as u64 == N),
            "messages lost: {}",
            report.join("; ")
        );
    }
    (N as usize).saturating_sub(seen[0].len())
}

/// What reached region b's two subscribers, and the home's relay counters, when b's gateway
/// that is not a1's home is stopped (SIGSTOP, so its cluster link to the home goes down while
/// its subscriber's session stays) for two seconds while a1 publishes 1500 messages on an
/// `async` route, with `--cluster-grace-ms grace_ms`.
struct CutOff {
    home: String,
    cut: String,
    seen: Vec<HashMap<String, u32>>,
    abandoned: f64,
    held: f64,
}

const CUT_OFF_MESSAGES: u64 = 1500;

async fn cut_off_for_two_seconds(grace_ms: &str) -> CutOff {
    let r = Regions::start_sized(&[("a", 1), ("b", 2)], &["--cluster-grace-ms", grace_ms]).await;
    r.async_orders_route().await;
    let (_b1, mut on_b1) = subscribed(r.gw("b1"), "orders.>").await;
    let (_b2, mut on_b2) = subscribed(r.gw("b2"), "orders.>").await;
    wanted(r.gw("a1"), "orders.x", "b").await;
    let home = home_of(r.gw("a1"), "b");
    let cut = if home == "b1" { "b2" } else { "b1" };
    // Both of b's gateways want the subject before anything is published.
    assert!(
        eventually(Duration::from_secs(10), || {
            explain(r.gw(&home), "orders.x")["federation"]["cluster"]
                .as_array()
                .is_some_and(|c| !c.is_empty())
        })
        .await,
        "{home} never learned that {cut} wants orders.x"
    );

    let mut s = common::RawSession::connect(&r.gw("a1").url()).await;
    for (i, chunk) in (0..CUT_OFF_MESSAGES)
        .collect::<Vec<_>>()
        .chunks(50)
        .enumerate()
    {
        if i == 5 {
            r.gw(cut).signal("STOP");
        }
        if i == 25 {
            r.gw(cut).signal("CONT");
        }
        s.send(chunk.iter().map(|n| pub_with_id("orders.x", *n)).collect())
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(acks(&mut s, CUT_OFF_MESSAGES).await, 0);

    let mut seen = vec![HashMap::new(), HashMap::new()];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        tally(&mut [&mut on_b1, &mut on_b2], &mut seen).await;
        if seen.iter().all(|s| s.len() as u64 == CUT_OFF_MESSAGES)
            || tokio::time::Instant::now() > deadline
        {
            break;
        }
    }
    let abandoned = r
        .gw(&home)
        .metric("nexus_cluster_relays_abandoned_total", &[]);
    let held = r.gw(&home).metric("nexus_cluster_relays_held_total", &[]);
    CutOff {
        home: home.clone(),
        cut: cut.to_owned(),
        seen,
        abandoned,
        held,
    }
}

impl CutOff {
    /// Every message reached both of b's subscribers exactly once.
    fn assert_all_once(&self) {
        for (name, s) in ["b1", "b2"].iter().zip(&self.seen) {
            let twice = s.values().filter(|n| **n > 1).count();
            assert_eq!(twice, 0, "{name} received {twice} messages more than once");
            assert_eq!(
                s.len() as u64,
                CUT_OFF_MESSAGES,
                "messages that reached {name} ({} was cut off from the home {})",
                self.cut,
                self.home
            );
        }
        assert_eq!(self.abandoned, 0.0, "relays given up by the home");
    }
}

/// A cut inside a region that heals within `--cluster-grace-ms` loses nothing: the home keeps
/// the relays it owes the cut-off gateway, and when the link is back asks a1 to send them
/// again. Every message reaches both of b's subscribers once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_link_cut_that_heals_within_the_grace_period_loses_no_relayed_message() {
    let c = cut_off_for_two_seconds("6000").await;
    c.assert_all_once();
    assert_eq!(c.held, 0.0, "nothing needed holding within the grace");
}

/// A cut that outlasts the grace period (200 ms here, cut for 2 s) loses nothing either: the
/// control plane still lists the cut-off gateway, so the home writes what it owes it, and
/// every relay for it while it stays cut off, to its own spool (held relays, confirmed to a1
/// once on disk) and sends them when the link is back, before any newer relay. Before held
/// relays, this lost about 900 of the 1500 at the cut-off gateway (606 reached it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_link_cut_past_the_grace_period_loses_no_relayed_message() {
    let c = cut_off_for_two_seconds("200").await;
    c.assert_all_once();
    assert!(c.held > 0.0, "the home held no relay for {}", c.cut);
    eprintln!("held relays at {}: {}", c.home, c.held);
}

/// The hop between gateways of a region is best effort (like a local subscriber's queue):
/// what is published while the link to a gateway with subscribers is down is dropped, and
/// counted as such under the gateway's own region, so an operator can see it; once the link
/// is back, messages flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn best_effort_copies_for_an_unlinked_gateway_of_the_region_are_counted_as_dropped() {
    let r = Regions::start_sized(&[("a", 2)], &[]).await;
    let (_a2, mut on_a2) = subscribed(r.gw("a2"), "news.>").await;
    wanted(r.gw("a1"), "news.x", "a").await;
    let dropped = || {
        r.gw("a1").metric(
            "nexus_federation_dropped_total",
            &["region=\"a\"", "reason=\"link_down\""],
        )
    };
    let before = dropped();
    let cluster_links = |gw: &Gateway| status(gw)["cluster"].as_array().map_or(0, |c| c.len());
    r.gw("a2").signal("STOP");
    assert!(
        eventually(Duration::from_secs(10), || cluster_links(r.gw("a1")) == 0).await,
        "a1 never noticed that a2 stopped answering"
    );
    let a1 = client(r.gw("a1")).await;
    for i in 0..20 {
        a1.publish("news.x", format!("lost{i:02}")).await.unwrap();
    }
    a1.flush().await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || dropped() - before >= 20.0).await,
        "copies for the unlinked a2 were not counted: {} dropped",
        dropped() - before
    );
    r.gw("a2").signal("CONT");
    r.linked("a1", 2, 1).await;
    for i in 0..20 {
        a1.publish("news.x", format!("after{i:02}")).await.unwrap();
    }
    a1.flush().await.unwrap();
    let got = drain(&mut on_a2).await;
    let after: Vec<&String> = got.iter().filter(|m| m.starts_with("after")).collect();
    assert_eq!(after.len(), 20, "a2 after the heal: {got:?}");
    assert!(!got.iter().any(|m| m.starts_with("lost")), "{got:?}");
}

/// Who answered each of `n` requests on `subject` sent one at a time from `from`.
async fn answered_by(from: &nexus_client::Client, subject: &str, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let m = from.request(subject, b"?".to_vec()).await.expect("request");
        out.push(String::from_utf8_lossy(&m.payload).into_owned());
    }
    out
}

/// A responder in queue group `svc` on `subject` that answers with `name` after `delay`.
async fn responder(
    gw: &Gateway,
    subject: &str,
    name: &'static str,
    delay: Duration,
) -> tokio::task::JoinHandle<()> {
    let c = client(gw).await;
    let mut sub = c.queue_subscribe(subject, "svc").await.unwrap();
    c.flush().await.unwrap();
    tokio::spawn(async move {
        while let Some(m) = sub.next_message().await {
            let c = c.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = c.reply(&m, name.as_bytes().to_vec()).await;
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_balances_requests_and_queue_groups_over_its_gateways_by_cost_hop_included() {
    let r = Regions::start_sized(&[("a", 2)], &[]).await;
    let caller = client(r.gw("a1")).await;

    // Equal, fast responders on both gateways: a1's own takes (nearly) everything, the hop
    // makes a2 dearer.
    let fast_a1 = responder(r.gw("a1"), "svc.fast", "a1", Duration::ZERO).await;
    let fast_a2 = responder(r.gw("a2"), "svc.fast", "a2", Duration::ZERO).await;
    wanted(r.gw("a1"), "svc.fast", "a").await;
    let who = answered_by(&caller, "svc.fast", 200).await;
    let local = who.iter().filter(|w| *w == "a1").count();
    // Not all on a loaded machine: Peak-EWMA takes a local responder's latency peak at
    // once, and while it stands a2 may be cheaper even with the local bias (a suite run saw
    // 137 before the bias). A balancer blind to the hop would split about evenly.
    assert!(
        local >= 130,
        "a1 answered {local} of 200 with equal responders"
    );
    eprintln!("equal responders: a1 answered {local} of 200");

    // a1's responder takes 150 ms, a2's answers at once: a2 is probed as soon as a1's
    // estimate is measured above a2's guess, and answers the requests from then on, hop
    // included (150 ms leaves room for a loaded machine's peaks on the two-gateway path).
    let slow_a1 = responder(r.gw("a1"), "svc.slow", "a1", Duration::from_millis(150)).await;
    let quick_a2 = responder(r.gw("a2"), "svc.slow", "a2", Duration::ZERO).await;
    wanted(r.gw("a1"), "svc.slow", "a").await;
    let who = answered_by(&caller, "svc.slow", 80).await;
    let last: Vec<&String> = who.iter().rev().take(50).collect();
    let remote = last.iter().filter(|w| **w == "a2").count();
    assert!(
        remote >= 45,
        "a2 answered {remote} of the last 50 (all: {who:?})"
    );
    // Operators see what the balancer learnt: a2's reply latency through the hop.
    let e = explain(r.gw("a1"), "svc.slow");
    let takers = e["federation"]["cluster_takers"].as_array().cloned();
    assert!(
        takers.is_some_and(|t| t.len() == 1
            && t[0]["gateway_id"] == "a2"
            && t[0]["reply_ms"].as_f64().is_some_and(|ms| ms < 150.0)),
        "{e}"
    );
    assert!(
        r.gw("a1")
            .metric("nexus_cluster_requests_to_peers_total", &[])
            >= 50.0,
        "requests a1 could have served, sent to a2, are counted"
    );
    let first = who.iter().position(|w| w == "a2");
    eprintln!("slow a1: a2 answered {remote} of the last 50, first at request {first:?}");
    for h in [fast_a1, fast_a2, slow_a1, quick_a2] {
        h.abort();
    }

    // A queue group with a member on each gateway; a1's stops reading. Messages published on
    // a1 go to its own member while it keeps up, then to a2's: every message reaches the
    // group exactly once, and the stuck member does not hold the group's work (with local
    // members always first, a1's member would get them all and be cut off as a slow
    // consumer, losing what it held).
    let stuck = nexus_client::Client::builder(&r.gw("a1").url())
        .subscription_capacity(8)
        .connect()
        .await
        .unwrap();
    let mut on_a1 = stuck.queue_subscribe("jobs.x", "workers").await.unwrap();
    stuck.flush().await.unwrap();
    let reader = client(r.gw("a2")).await;
    let mut on_a2 = reader.queue_subscribe("jobs.x", "workers").await.unwrap();
    reader.flush().await.unwrap();
    wanted(r.gw("a1"), "jobs.x", "a").await;
    const N: usize = 3000;
    let body = "x".repeat(4096);
    for i in 0..N {
        caller
            .publish("jobs.x", format!("{i:05}{body}"))
            .await
            .unwrap();
    }
    caller.flush().await.unwrap();
    let mut seen: HashMap<String, u32> = HashMap::new();
    let mut from_a2 = 0;
    while let Ok(Some(m)) =
        tokio::time::timeout(Duration::from_millis(1500), on_a2.next_message()).await
    {
        *seen
            .entry(String::from_utf8_lossy(&m.payload[..5]).into_owned())
            .or_default() += 1;
        from_a2 += 1;
    }
    // Now a1's member reads what it held.
    let mut from_a1 = 0;
    while let Ok(Some(m)) =
        tokio::time::timeout(Duration::from_millis(1500), on_a1.next_message()).await
    {
        *seen
            .entry(String::from_utf8_lossy(&m.payload[..5]).into_owned())
            .or_default() += 1;
        from_a1 += 1;
    }
    let twice = seen.values().filter(|n| **n > 1).count();
    assert_eq!(twice, 0, "{twice} messages reached the group twice");
    assert_eq!(
        seen.len(),
        N,
        "the group got {} of {N} (a1 {from_a1}, a2 {from_a2})",
        seen.len()
    );
    assert!(from_a1 > 0 && from_a2 > N / 2, "a1 {from_a1}, a2 {from_a2}");
    assert_eq!(
        r.gw("a1")
            .metric("nexus_cluster_queue_messages_to_peers_total", &[]),
        from_a2 as f64,
        "every message a2's member got instead of a1's is counted"
    );
    eprintln!("queue group, a1's member stuck: a1 {from_a1}, a2 {from_a2}, each once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_run_between_sessions_of_two_gateways_with_credit_and_end_when_a_gateway_dies() {
    let mut r = Regions::start_sized(&[("a", 2)], &[]).await;
    // The responder is on a2 only; the opener on a1.
    let server = client(r.gw("a2")).await;
    let mut listener = server.listen_streams("upload", None).await.unwrap();
    server.flush().await.unwrap();
    wanted(r.gw("a1"), "upload", "a").await;
    let acceptor = tokio::spawn(async move {
        let mut s = listener.accept().await.expect("a stream");
        let (mut n, mut total) = (0u32, 0u64);
        while let Some(m) = s.recv().await {
            let m = m.expect("stream data");
            total += m.payload.len() as u64;
            n += 1;
            if n.is_multiple_of(100) {
                // A slow reader: the opener must wait for credit, not overrun it.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        s.send(format!("{n} frames, {total} bytes")).await.unwrap();
        s.finish().await.unwrap();
        (n, total, listener)
    });
    let opener = nexus_client::Client::builder(&r.gw("a1").url())
        .stream_window(16)
        .connect()
        .await
        .unwrap();
    let mut s = opener.open_stream("upload").await.unwrap();
    for i in 0..2000u32 {
        s.send(vec![(i % 251) as u8; 512]).await.unwrap();
    }
    s.finish().await.unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(20), s.recv())
        .await
        .expect("summary in time")
        .expect("summary")
        .unwrap();
    assert_eq!(&summary.payload[..], b"2000 frames, 1024000 bytes");
    let (n, total, mut listener) = acceptor.await.unwrap();
    assert_eq!((n, total), (2000, 1_024_000));
    for gw in ["a1", "a2"] {
        assert_eq!(
            r.gw(gw)
                .metric("nexus_limit_violations_total", &["\"stream_credit\""]),
            0.0,
            "{gw}: nobody overran its credit"
        );
    }

    // A second stream, then a2 dies (kill -9): the opener's stream ends with an error that
    // says why, within the link's failure detection, instead of hanging.
    let mut s = opener.open_stream("upload").await.unwrap();
    s.send(b"hello".to_vec()).await.unwrap();
    let mut accepted = listener.accept().await.expect("a second stream");
    let first = accepted.recv().await.expect("data").unwrap();
    assert_eq!(&first.payload[..], b"hello");
    r.gws.get_mut("a2").unwrap().kill();
    let end = tokio::time::timeout(Duration::from_secs(5), s.recv())
        .await
        .expect("the stream ends within 5 s of the kill");
    let err = match end {
        Some(Err(e)) => e.to_string(),
        other => panic!("expected an error, got {other:?}"),
    };
    assert!(
        err.contains("unreachable") || err.contains("disconnected"),
        "{err}"
    );
    eprintln!("after the kill of a2 the opener saw: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_regions_of_three_gateways_behind_a_wan_emulator_are_one_region_each() {
    // Every link (inside a region and between regions) crosses an emulator adding 5 ms
    // (+-1 ms) each way and dropping 1 % of datagrams, which QUIC must recover.
    let impairment = Impairment {
        delay: Duration::from_millis(5),
        jitter: Duration::from_millis(1),
        loss: 0.01,
        ..Default::default()
    };
    let r = Regions::start_behind_wan(&[("a", 3), ("b", 3)], impairment).await;
    // (The emulators run in this test process: when the suite starves it, every link through
    // them falls silent at once; the detection time is raised so that such a pause is not a
    // link failure, which would drop the best-effort messages below.)
    r.async_orders_route().await;

    // Pub/sub across gateways of a region and into the other region: plain subscribers on
    // a1, a3 and b2; a queue group with members on a1 and a3; published on a2.
    let (_c1, mut on_a1) = subscribed(r.gw("a1"), "news.>").await;
    let (_c3, mut on_a3) = subscribed(r.gw("a3"), "news.>").await;
    let (_cb, mut on_b2) = subscribed(r.gw("b2"), "news.>").await;
    let w1 = client(r.gw("a1")).await;
    let mut q1 = w1.queue_subscribe("news.>", "workers").await.unwrap();
    w1.flush().await.unwrap();
    let w3 = client(r.gw("a3")).await;
    let mut q3 = w3.queue_subscribe("news.>", "workers").await.unwrap();
    w3.flush().await.unwrap();
    wanted(r.gw("a2"), "news.x", "b").await;
    // a2 knows that a1 and a3 want the subject and is linked to both (`cluster_takers`
    // lists only linked gateways): the hop is best effort, so a link down now would drop.
    assert!(
        eventually(Duration::from_secs(10), || {
            let e = explain(r.gw("a2"), "news.x");
            e["federation"]["cluster"]
                .as_array()
                .is_some_and(|c| c.len() == 2)
                && e["federation"]["cluster_takers"]
                    .as_array()
                    .is_some_and(|c| c.len() == 2)
        })
        .await,
        "{}",
        explain(r.gw("a2"), "news.x")
    );
    let a2 = client(r.gw("a2")).await;
    for i in 0..200 {
        a2.publish("news.x", format!("n{i:03}")).await.unwrap();
    }
    a2.flush().await.unwrap();
    let expected: Vec<String> = (0..200).map(|i| format!("n{i:03}")).collect();
    assert_eq!(drain(&mut on_a1).await, expected, "a1");
    assert_eq!(drain(&mut on_a3).await, expected, "a3");
    assert_eq!(drain(&mut on_b2).await, expected, "b2");
    let mut group = drain(&mut q1).await;
    group.extend(drain(&mut q3).await);
    group.sort();
    assert_eq!(group, expected, "the queue group got each message once");

    // Requests: from b3 and a1 to a responder that only a3 has.
    let server = client(r.gw("a3")).await;
    let mut served = server.subscribe("svc.echo").await.unwrap();
    server.flush().await.unwrap();
    let responder = tokio::spawn(async move {
        while let Some(m) = served.next_message().await {
            let _ = server.reply(&m, b"from a3".to_vec()).await;
        }
    });
    wanted(r.gw("b3"), "svc.echo", "a").await;
    wanted(r.gw("a1"), "svc.echo", "a").await;
    for from in ["b3", "a1"] {
        let c = client(r.gw(from)).await;
        for _ in 0..20 {
            let answer = c.request("svc.echo", b"?".to_vec()).await.expect(from);
            assert_eq!(&answer.payload[..], b"from a3", "{from}");
        }
    }
    responder.abort();

    // async: acknowledged publishes from every gateway of a reach every subscriber of b
    // once.
    let mut subs = Vec::new();
    let mut clients = Vec::new();
    for gw in ["b1", "b2", "b3"] {
        let (c, s) = subscribed(r.gw(gw), "orders.>").await;
        clients.push(c);
        subs.push(s);
    }
    for gw in ["a1", "a2", "a3"] {
        wanted(r.gw(gw), "orders.x", "b").await;
    }
    // (A run once published before b1 had heard of b2's subscriber: b2 missed a1's first
    // six.)
    each_knows_the_others_want(&r, &["b1", "b2", "b3"], "orders.x").await;
    let mut publishers = Vec::new();
    for gw in ["a1", "a2", "a3"] {
        publishers.push((gw, client(r.gw(gw)).await));
    }
    for i in 0..100 {
        for (gw, p) in &publishers {
            p.publish_acked("orders.x", format!("{gw}-{i:03}"))
                .await
                .unwrap();
        }
    }
    let mut expected: Vec<String> = Vec::new();
    for gw in ["a1", "a2", "a3"] {
        expected.extend((0..100).map(|i| format!("{gw}-{i:03}")));
    }
    expected.sort();
    for (gw, sub) in ["b1", "b2", "b3"].iter().zip(subs.iter_mut()) {
        assert_eq!(drain(sub).await, expected, "{gw}");
    }

    // The traffic really crossed the emulators, and some of it was lost and recovered.
    let (forwarded, dropped) = r.wan.values().fold((0, 0), |(f, d), w| {
        let s = w.stats();
        (f + s.forwarded, d + s.dropped)
    });
    assert!(
        forwarded > 1000 && dropped > 0,
        "forwarded {forwarded}, dropped {dropped}"
    );
    eprintln!("through the emulators: {forwarded} datagrams forwarded, {dropped} dropped");
}

/// `--cluster-compression lz4`: the hop between two gateways of a region sends its batches
/// compressed (docs/federation.md §8.1), and what arrives is what was published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_hop_compresses_its_batches_when_asked() {
    use nexus_proto::v1::{self, frame::Kind};
    let r = Regions::start_sized(&[("a", 2)], &["--cluster-compression", "lz4"]).await;
    let (_a2, mut on_a2) = subscribed(r.gw("a2"), "zip.>").await;
    wanted(r.gw("a1"), "zip.x", "a").await;
    const N: u64 = 2000;
    let s = common::RawSession::connect(&r.gw("a1").url()).await;
    let body = |n: u64| {
        format!(
            r#"{{"n":{n},"site":"fra-1","reading":{},"ok":true}}"#,
            n % 97
        )
    };
    s.send(
        (0..N)
            .map(|n| {
                common::frame(Kind::Pub(v1::Pub {
                    subject: "zip.x".into(),
                    payload: bytes::Bytes::from(body(n)),
                    ..Default::default()
                }))
            })
            .collect(),
    )
    .await;
    for n in 0..N {
        let m = tokio::time::timeout(Duration::from_secs(10), on_a2.next_message())
            .await
            .unwrap_or_else(|_| panic!("a2 received {n} of {N}"))
            .expect("subscription ended");
        assert_eq!(m.payload, body(n).as_bytes());
    }
    let a1 = r.gw("a1");
    let sent = |form: &str| {
        a1.metric(
            "nexus_link_bytes_total",
            &[
                r#"link="cluster""#,
                r#"direction="sent""#,
                &format!(r#"form="{form}""#),
            ],
        )
    };
    let (raw, wire) = (sent("raw"), sent("wire"));
    assert!(
        a1.metric(
            "nexus_link_compressed_batches_total",
            &[r#"link="cluster""#, r#"direction="sent""#]
        ) >= 1.0
    );
    assert!(
        wire * 1.5 < raw,
        "{wire} bytes on the wire for {raw} of frames"
    );
    assert!(
        r.gw("a2").metric(
            "nexus_link_compressed_batches_total",
            &[r#"link="cluster""#, r#"direction="received""#]
        ) >= 1.0
    );
}
