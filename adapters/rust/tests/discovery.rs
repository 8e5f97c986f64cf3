//! Gateway discovery end to end: in-process gateways (`nexus_gateway::start`) published by
//! an in-process DNS responder (`nexus_control_plane::dns::serve`) with an in-memory source,
//! and clients connecting with `nexus+srv://us-east.nexus.local?dns=127.0.0.1:<port>`.
//! Each test starts its own gateways and DNS server on port 0, so tests run in parallel.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nexus_client::{Client, Error};
use nexus_control_plane::dns::{self, DiscoverySource, DnsServer, GatewayEndpoint};
use nexus_gateway::{GatewayConfig, RunningGateway};
use tokio::net::{TcpListener, UdpSocket};

const ZONE: &str = "nexus.local";
const REGION: &str = "us-east";

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// An in-memory discovery source that tests change while running.
#[derive(Default)]
struct MemSource {
    regions: Mutex<HashMap<String, Vec<GatewayEndpoint>>>,
}

impl MemSource {
    fn set(&self, region: &str, endpoints: Vec<GatewayEndpoint>) {
        self.regions
            .lock()
            .unwrap()
            .insert(region.to_owned(), endpoints);
    }
}

impl DiscoverySource for MemSource {
    fn endpoints(&self, region: &str) -> Vec<GatewayEndpoint> {
        let regions = self.regions.lock().unwrap();
        regions.get(region).cloned().unwrap_or_default()
    }

    fn config_version(&self) -> u64 {
        1
    }
}

fn endpoint(id: &str, addr: SocketAddr, priority: u16, weight: u16) -> GatewayEndpoint {
    GatewayEndpoint {
        gateway_id: id.to_owned(),
        region: REGION.to_owned(),
        adapter_addr: addr,
        federation_addr: None,
        priority,
        weight,
    }
}

/// A DNS responder for `nexus.local` on one port for UDP and TCP (the resolver falls back
/// to TCP), with the default 5 s TTL.
async fn start_dns(source: Arc<MemSource>) -> DnsServer {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = udp.local_addr().unwrap().port();
        if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)).await {
            return dns::serve(udp, Some(tcp), ZONE.to_owned(), source, dns::DEFAULT_TTL)
                .await
                .expect("DNS responder");
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1");
}

/// A gateway of `us-east` on 127.0.0.1 port 0 with API keys not checked. The config is
/// read from TOML so that it works whether or not this gateway version has the `auth`
/// setting (default `required`, which would deny these key-less sessions).
async fn start_gateway(id: &str) -> RunningGateway {
    let base = format!(
        "region = \"{REGION}\"\ngateway_id = \"{id}\"\nlisten = \"127.0.0.1:0\"\n\
         metrics_listen = \"127.0.0.1:0\"\nshutdown_grace_ms = 200\n"
    );
    let config: GatewayConfig = toml::from_str(&format!("{base}auth = \"off\"\n"))
        .or_else(|_| toml::from_str(&base))
        .expect("gateway config");
    nexus_gateway::start(config).await.expect("gateway")
}

fn srv_url(region: &str, dns: &DnsServer) -> String {
    format!("nexus+srv://{region}.{ZONE}?dns={}", dns.udp_addr())
}

async fn connect(url: &str) -> nexus_client::Result<Client> {
    Client::builder(url)
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200))
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
}

fn gateway_in_use(client: &Client) -> String {
    client
        .server_info()
        .map(|i| i.gateway_id)
        .unwrap_or_default()
}

/// Waits until `client` has a session with `gateway_id`.
async fn wait_for_gateway(client: &Client, gateway_id: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !(client.is_connected() && gateway_in_use(client) == gateway_id) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "client did not move to {gateway_id} (connected: {}, gateway: {:?})",
            client.is_connected(),
            gateway_in_use(client)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes through a client connected directly to `gateway` and checks `sub` gets it.
async fn check_delivery(sub: &mut nexus_client::Subscription, gateway: &RunningGateway, n: u32) {
    let publisher = Client::connect(&format!("http://{}", gateway.grpc_addr))
        .await
        .unwrap();
    let payload = format!("order #{n}");
    publisher
        .publish(&format!("orders.{n}"), payload.clone())
        .await
        .unwrap();
    publisher.flush().await.unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), sub.next_message())
        .await
        .expect("delivery in time")
        .expect("subscription open");
    assert_eq!(msg.subject, format!("orders.{n}"));
    assert_eq!(&msg.payload[..], payload.as_bytes());
    publisher.close().await;
}

#[tokio::test]
async fn lands_on_the_preferred_gateway_and_fails_over_when_it_stops() {
    init_tracing();
    let gw_a = start_gateway("gw-a").await;
    let gw_b = start_gateway("gw-b").await;
    let gw_c = start_gateway("gw-c").await;
    let source = Arc::new(MemSource::default());
    source.set(
        REGION,
        vec![
            endpoint("gw-c", gw_c.grpc_addr, 3, 10),
            endpoint("gw-b", gw_b.grpc_addr, 2, 10),
            endpoint("gw-a", gw_a.grpc_addr, 1, 10),
        ],
    );
    let dns = start_dns(source.clone()).await;

    let client = connect(&srv_url(REGION, &dns)).await.unwrap();
    assert_eq!(gateway_in_use(&client), "gw-a");
    let mut sub = client.subscribe("orders.*").await.unwrap();
    check_delivery(&mut sub, &gw_a, 1).await;

    // gw-a goes away (still published in DNS: the cached answer is within its TTL).
    gw_a.shutdown().await.unwrap();
    wait_for_gateway(&client, "gw-b").await;
    // Everything queued so far (the re-sent Sub included) has reached gw-b.
    client.flush().await.unwrap();
    check_delivery(&mut sub, &gw_b, 2).await;

    // And on to the next priority when gw-b stops too.
    gw_b.shutdown().await.unwrap();
    wait_for_gateway(&client, "gw-c").await;
    client.flush().await.unwrap();
    check_delivery(&mut sub, &gw_c, 3).await;
    assert_eq!(sub.dropped(), 0);

    client.close().await;
    gw_c.shutdown().await.unwrap();
    dns.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_refusing_gateway_is_skipped_at_connect() {
    init_tracing();
    let gw_a = start_gateway("gw-a").await;
    let refusing = gw_a.grpc_addr;
    gw_a.shutdown().await.unwrap();
    let gw_b = start_gateway("gw-b").await;
    let source = Arc::new(MemSource::default());
    source.set(
        REGION,
        vec![
            endpoint("gw-a", refusing, 1, 10),
            endpoint("gw-b", gw_b.grpc_addr, 2, 10),
        ],
    );
    let dns = start_dns(source).await;

    let client = connect(&srv_url(REGION, &dns)).await.unwrap();
    assert_eq!(gateway_in_use(&client), "gw-b");
    let mut sub = client.subscribe("orders.*").await.unwrap();
    check_delivery(&mut sub, &gw_b, 1).await;
    client.close().await;
    gw_b.shutdown().await.unwrap();
    dns.shutdown().await.unwrap();
}

#[tokio::test]
async fn when_no_gateway_accepts_the_error_lists_each_one() {
    init_tracing();
    let gw_a = start_gateway("gw-a").await;
    let gw_b = start_gateway("gw-b").await;
    let (addr_a, addr_b) = (gw_a.grpc_addr, gw_b.grpc_addr);
    gw_a.shutdown().await.unwrap();
    gw_b.shutdown().await.unwrap();
    let source = Arc::new(MemSource::default());
    source.set(
        REGION,
        vec![
            endpoint("gw-b", addr_b, 2, 10),
            endpoint("gw-a", addr_a, 1, 10),
        ],
    );
    let dns = start_dns(source).await;
    let url = srv_url(REGION, &dns);

    let err = connect(&url).await.unwrap_err();
    let text = err.to_string();
    let Error::NoGateway { target, attempts } = &err else {
        panic!("expected NoGateway, got {err:?}");
    };
    assert_eq!(target, &url);
    let tried: Vec<(&str, Option<SocketAddr>)> = attempts
        .iter()
        .map(|a| (a.gateway.as_str(), a.addr))
        .collect();
    assert_eq!(
        tried,
        vec![("gw-a", Some(addr_a)), ("gw-b", Some(addr_b))],
        "priority order"
    );
    assert!(
        text.starts_with(&format!(
            "no gateway for {url} accepted a session: gw-a ({addr_a}): "
        )),
        "{text}"
    );
    assert!(text.contains(&format!("; gw-b ({addr_b}): ")), "{text}");
    assert!(text.to_lowercase().contains("refused"), "{text}");
    assert!(err.is_transient());
    dns.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_unknown_region_is_a_clear_nxdomain_error() {
    init_tracing();
    let source = Arc::new(MemSource::default());
    let dns = start_dns(source).await;
    let err = connect(&srv_url("eu-north", &dns)).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Discovery(_)), "{err:?}");
    assert!(text.contains("_nexus._tcp.eu-north.nexus.local."), "{text}");
    assert!(text.contains("NXDOMAIN"), "{text}");
    assert!(text.contains(&dns.udp_addr().to_string()), "{text}");
    dns.shutdown().await.unwrap();
}

#[tokio::test]
async fn builder_dns_server_overrides_the_url() {
    init_tracing();
    let gw = start_gateway("gw-a").await;
    let source = Arc::new(MemSource::default());
    source.set(REGION, vec![endpoint("gw-a", gw.grpc_addr, 1, 1)]);
    let dns = start_dns(source).await;
    // Nothing answers DNS on port 9 of 127.0.0.1; the builder's server wins.
    let client = Client::builder("nexus+srv://us-east.nexus.local?dns=127.0.0.1:9")
        .dns_server(dns.udp_addr())
        .connect()
        .await
        .unwrap();
    assert_eq!(gateway_in_use(&client), "gw-a");
    client.close().await;

    // A bad address is refused before anything is sent.
    let err = Client::connect("nexus+srv://us-east.nexus.local:7422")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidAddress { .. }), "{err:?}");
    gw.shutdown().await.unwrap();
    dns.shutdown().await.unwrap();
}

#[tokio::test]
async fn re_resolves_when_every_cached_gateway_failed() {
    init_tracing();
    let gw_a = start_gateway("gw-a").await;
    let gw_b = start_gateway("gw-b").await;
    let source = Arc::new(MemSource::default());
    source.set(REGION, vec![endpoint("gw-a", gw_a.grpc_addr, 1, 1)]);
    let dns = start_dns(source.clone()).await;

    let client = connect(&srv_url(REGION, &dns)).await.unwrap();
    assert_eq!(gateway_in_use(&client), "gw-a");
    let mut sub = client.subscribe("orders.*").await.unwrap();

    // The control plane now publishes only gw-b; the client's cached answer (TTL 5 s)
    // still names gw-a alone. Once gw-a stops, the cached round fails and the client asks
    // DNS again instead of waiting for the TTL.
    source.set(REGION, vec![endpoint("gw-b", gw_b.grpc_addr, 1, 1)]);
    let stopped = tokio::time::Instant::now();
    gw_a.shutdown().await.unwrap();
    wait_for_gateway(&client, "gw-b").await;
    assert!(
        stopped.elapsed() < dns::DEFAULT_TTL,
        "re-resolved only after {:?}",
        stopped.elapsed()
    );
    client.flush().await.unwrap();
    check_delivery(&mut sub, &gw_b, 1).await;
    client.close().await;
    gw_b.shutdown().await.unwrap();
    dns.shutdown().await.unwrap();
}

/// A TCP forwarder in front of a gateway: `kill` drops its listener and every forwarded
/// connection at once, as if the gateway's process were killed (no GoAway, connections
/// reset, the port refusing).
struct Forwarder {
    addr: SocketAddr,
    tasks: tokio::task::JoinSet<()>,
}

impl Forwarder {
    async fn start(to: SocketAddr) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Forwarder { addr, tasks }
    }

    async fn kill(mut self) {
        self.tasks.shutdown().await;
    }
}

#[tokio::test]
async fn a_failed_cached_answer_is_resolved_again_before_backing_off() {
    init_tracing();
    // The answer cached at connect lists only gw-a (gw-b was not up yet); DNS then publishes
    // both. When gw-a dies, the round that tries the cached answer fails; the client asks DNS
    // again at once and reaches gw-b in the same round, instead of backing off a second,
    // doubled delay before the next round resolves again (the failover measurement's slow
    // tail). With a minimum backoff of MIN, the first round starts MIN/2..MIN after the
    // session broke and a second round would start MIN..2*MIN after the first.
    const MIN: Duration = Duration::from_millis(1500);
    let gw_a = start_gateway("gw-a").await;
    let gw_b = start_gateway("gw-b").await;
    let front_a = Forwarder::start(gw_a.grpc_addr).await;
    let source = Arc::new(MemSource::default());
    source.set(REGION, vec![endpoint("gw-a", front_a.addr, 1, 1)]);
    let dns = start_dns(source.clone()).await;

    let client = Client::builder(&srv_url(REGION, &dns))
        .reconnect_backoff(MIN, Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap();
    assert_eq!(gateway_in_use(&client), "gw-a");
    let mut sub = client.subscribe("orders.*").await.unwrap();

    // Both are published now, gw-a first; the client's answer (TTL 5 s) still lists gw-a alone.
    source.set(
        REGION,
        vec![
            endpoint("gw-a", front_a.addr, 1, 1),
            endpoint("gw-b", gw_b.grpc_addr, 2, 1),
        ],
    );
    let killed = tokio::time::Instant::now();
    front_a.kill().await;
    wait_for_gateway(&client, "gw-b").await;
    let took = killed.elapsed();
    // One backoff delay (at most MIN) and the round; a failed round and its doubled delay
    // would take at least MIN/2 + MIN.
    assert!(
        took < MIN + MIN / 3,
        "reached gw-b only after {took:?}: the failed cached round backed off before resolving"
    );
    client.flush().await.unwrap();
    check_delivery(&mut sub, &gw_b, 1).await;
    client.close().await;
    gw_a.shutdown().await.unwrap();
    gw_b.shutdown().await.unwrap();
    dns.shutdown().await.unwrap();
}

#[tokio::test]
async fn plain_http_addresses_still_work() {
    init_tracing();
    let gw = start_gateway("gw-a").await;
    for addr in [format!("http://{}", gw.grpc_addr), gw.grpc_addr.to_string()] {
        let client = Client::connect(&addr).await.unwrap();
        assert_eq!(gateway_in_use(&client), "gw-a");
        client.close().await;
    }
    gw.shutdown().await.unwrap();
}
