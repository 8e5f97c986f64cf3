//! The DNS responder end to end: real sockets on 127.0.0.1 (port 0), queried with the real
//! `dig` (package dnsutils), with raw datagrams, and with the hickory resolver the adapters
//! use. Each test starts its own server so that tests can run in parallel.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::Resolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::op::{Message, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use nexus_control_plane::dns::{self, DiscoverySource, DnsError, DnsServer, GatewayEndpoint};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const ZONE: &str = "nexus.local";
/// Not the default (5 s), so that seeing it proves the configured TTL is used.
const TTL: Duration = Duration::from_secs(7);

/// An in-memory source whose contents tests change between queries.
#[derive(Default)]
struct MemSource {
    regions: Mutex<HashMap<String, Vec<GatewayEndpoint>>>,
    version: AtomicU64,
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
        self.version.load(Ordering::SeqCst)
    }
}

fn ep(id: &str, adapter: &str, fed: Option<&str>, priority: u16, weight: u16) -> GatewayEndpoint {
    GatewayEndpoint {
        gateway_id: id.to_owned(),
        region: "us-east".to_owned(),
        adapter_addr: adapter.parse().unwrap(),
        federation_addr: fed.map(|f| f.parse().unwrap()),
        priority,
        weight,
    }
}

/// Three gateways in us-east (two IPv4, one IPv6) and one in eu-west.
fn standard_source() -> Arc<MemSource> {
    let source = Arc::new(MemSource::default());
    source.set(
        "us-east",
        vec![
            ep("gw-a", "127.0.0.10:7001", Some("127.0.0.10:7101"), 10, 60),
            ep("gw-b", "127.0.0.11:7002", Some("127.0.0.99:7102"), 10, 40),
            ep("gw-c", "[fd00::c]:7003", None, 20, 0),
        ],
    );
    source.set("eu-west", vec![ep("gw-z", "127.0.0.20:7001", None, 0, 0)]);
    source.version.store(42, Ordering::SeqCst);
    source
}

/// Serves on one port for both UDP and TCP, as a real deployment does, so that `dig +tcp`
/// and the resolver's TCP fallback reach the same server.
async fn start(source: Arc<MemSource>) -> DnsServer {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = udp.local_addr().unwrap().port();
        if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)).await {
            return dns::serve(udp, Some(tcp), ZONE.to_owned(), source, TTL)
                .await
                .expect("serve");
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1");
}

/// Runs `dig @127.0.0.1 -p <port> <args>` and returns its stdout.
async fn dig(server: &DnsServer, args: &[&str]) -> String {
    let port = server.udp_addr().port().to_string();
    let out = tokio::process::Command::new("dig")
        .args(["@127.0.0.1", "-p", &port, "+time=2", "+tries=1"])
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run `dig` ({e}): install dnsutils"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "dig {args:?} failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The resource-record lines of dig output (`+noall +answer` style), split into fields.
fn records(output: &str) -> Vec<Vec<String>> {
    output
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with(';'))
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// The records of one section (`ANSWER`, `AUTHORITY`, `ADDITIONAL`) of full dig output.
fn section(output: &str, name: &str) -> Vec<Vec<String>> {
    let header = format!(";; {name} SECTION:");
    let body: String = output
        .lines()
        .skip_while(|l| *l != header)
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    records(&body)
}

/// The header flags of full dig output, e.g. `["qr", "aa", "rd"]`.
fn flags(output: &str) -> Vec<String> {
    let line = output
        .lines()
        .find(|l| l.starts_with(";; flags:"))
        .unwrap_or_else(|| panic!("no flags line in: {output}"));
    let flags = line.trim_start_matches(";; flags:");
    let flags = flags.split(';').next().unwrap_or_default();
    flags.split_whitespace().map(str::to_owned).collect()
}

fn status(output: &str) -> String {
    let line = output
        .lines()
        .find(|l| l.contains("status: "))
        .unwrap_or_else(|| panic!("no status in: {output}"));
    let rest = &line[line.find("status: ").unwrap() + "status: ".len()..];
    rest.split(',').next().unwrap().to_owned()
}

#[tokio::test]
async fn srv_lists_exactly_the_region_gateways_with_glue_and_ttl() {
    let server = start(standard_source()).await;
    let q = "_nexus._tcp.us-east.nexus.local";

    let short = dig(&server, &[q, "SRV", "+short"]).await;
    let got: BTreeSet<&str> = short.lines().collect();
    let want = BTreeSet::from([
        "10 60 7001 gw-a.gw.us-east.nexus.local.",
        "10 40 7002 gw-b.gw.us-east.nexus.local.",
        "20 0 7003 gw-c.gw.us-east.nexus.local.",
    ]);
    assert_eq!(got, want, "dig +short:\n{short}");

    let answer = records(&dig(&server, &[q, "SRV", "+noall", "+answer"]).await);
    assert_eq!(answer.len(), 3);
    for rr in &answer {
        assert_eq!(rr[1], TTL.as_secs().to_string(), "answer TTL: {rr:?}");
    }

    let additional = records(&dig(&server, &[q, "SRV", "+noall", "+additional"]).await);
    let glue: BTreeSet<(String, String, String)> = additional
        .iter()
        .filter(|rr| rr[3] == "A" || rr[3] == "AAAA")
        .map(|rr| {
            assert_eq!(rr[1], TTL.as_secs().to_string(), "glue TTL: {rr:?}");
            (rr[0].clone(), rr[3].clone(), rr[4].clone())
        })
        .collect();
    let want_glue = BTreeSet::from([
        (
            "gw-a.gw.us-east.nexus.local.".into(),
            "A".into(),
            "127.0.0.10".into(),
        ),
        (
            "gw-b.gw.us-east.nexus.local.".into(),
            "A".into(),
            "127.0.0.11".into(),
        ),
        (
            "gw-c.gw.us-east.nexus.local.".into(),
            "AAAA".into(),
            "fd00::c".into(),
        ),
    ]);
    assert_eq!(glue, want_glue, "additional: {additional:?}");

    // Authoritative, and the same answer over TCP.
    let full = dig(&server, &[q, "SRV"]).await;
    assert!(flags(&full).contains(&"aa".to_owned()), "{full}");
    let tcp = dig(&server, &[q, "SRV", "+short", "+tcp"]).await;
    assert_eq!(tcp.lines().collect::<BTreeSet<_>>(), want);

    // Case does not matter in DNS names.
    let upper = dig(
        &server,
        &["_NEXUS._TCP.US-EAST.NEXUS.LOCAL", "SRV", "+short"],
    )
    .await;
    assert_eq!(upper.lines().count(), 3, "{upper}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn gateway_host_names_resolve_to_their_addresses() {
    let server = start(standard_source()).await;
    let a = dig(&server, &["gw-a.gw.us-east.nexus.local", "A", "+short"]).await;
    assert_eq!(a.trim(), "127.0.0.10");
    let aaaa = dig(&server, &["gw-c.gw.us-east.nexus.local", "AAAA", "+short"]).await;
    assert_eq!(aaaa.trim(), "fd00::c");

    // The name exists but has no A: NOERROR, empty answer, SOA in authority (NODATA).
    let nodata = dig(&server, &["gw-c.gw.us-east.nexus.local", "A"]).await;
    assert_eq!(status(&nodata), "NOERROR", "{nodata}");
    assert!(section(&nodata, "ANSWER").is_empty(), "{nodata}");
    assert_eq!(section(&nodata, "AUTHORITY")[0][3], "SOA", "{nodata}");

    let unknown = dig(&server, &["gw-nope.gw.us-east.nexus.local", "A"]).await;
    assert_eq!(status(&unknown), "NXDOMAIN", "{unknown}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn federation_srv_lists_only_gateways_with_a_federation_address() {
    let server = start(standard_source()).await;
    let q = "_nexus-fed._udp.us-east.nexus.local";
    let short = dig(&server, &[q, "SRV", "+short"]).await;
    let got: BTreeSet<&str> = short.lines().collect();
    // gw-b federates on another IP than its adapter one, so it gets its own host name.
    let want = BTreeSet::from([
        "10 60 7101 gw-a.gw.us-east.nexus.local.",
        "10 40 7102 gw-b.fed.us-east.nexus.local.",
    ]);
    assert_eq!(got, want, "{short}");

    let additional = records(&dig(&server, &[q, "SRV", "+noall", "+additional"]).await);
    assert!(
        additional
            .iter()
            .any(|rr| rr[0] == "gw-b.fed.us-east.nexus.local." && rr[4] == "127.0.0.99"),
        "{additional:?}"
    );
    let fed = dig(&server, &["gw-b.fed.us-east.nexus.local", "A", "+short"]).await;
    assert_eq!(fed.trim(), "127.0.0.99");

    // eu-west has no federation address at all.
    let none = dig(&server, &["_nexus-fed._udp.eu-west.nexus.local", "SRV"]).await;
    assert_eq!(status(&none), "NXDOMAIN", "{none}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn txt_record_carries_the_config_version() {
    let source = standard_source();
    let server = start(source.clone()).await;
    let txt = dig(&server, &["_nexus-config.nexus.local", "TXT", "+short"]).await;
    assert_eq!(txt.trim(), "\"version=42\"");

    source.version.store(43, Ordering::SeqCst);
    let txt = dig(
        &server,
        &["_nexus-config.nexus.local", "TXT", "+noall", "+answer"],
    )
    .await;
    let rr = &records(&txt)[0];
    assert_eq!(rr[1], TTL.as_secs().to_string());
    assert_eq!(rr[4], "\"version=43\"");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn unknown_names_in_the_zone_are_nxdomain_with_soa() {
    let server = start(standard_source()).await;
    for name in [
        "_nexus._tcp.nowhere.nexus.local",
        "_nexus._udp.us-east.nexus.local",
        "a.b.c.us-east.nexus.local",
    ] {
        let out = dig(&server, &[name, "SRV"]).await;
        assert_eq!(status(&out), "NXDOMAIN", "{name}: {out}");
        assert!(flags(&out).contains(&"aa".to_owned()), "{out}");
        let authority = section(&out, "AUTHORITY");
        assert_eq!(authority.len(), 1, "{out}");
        assert_eq!(authority[0][0], "nexus.local.");
        assert_eq!(authority[0][1], TTL.as_secs().to_string());
        assert_eq!(authority[0][3], "SOA");
        // The SOA minimum (last field) bounds negative caching to the TTL too.
        assert_eq!(authority[0].last().unwrap(), &TTL.as_secs().to_string());
    }
    let apex = dig(&server, &["nexus.local", "SOA", "+short"]).await;
    assert!(
        apex.starts_with("nexus.local. hostmaster.nexus.local. 42 "),
        "{apex}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn names_outside_the_zone_are_refused() {
    let server = start(standard_source()).await;
    for (name, qtype) in [
        ("example.com", "A"),
        ("local", "SOA"),
        ("_nexus._tcp.us-east.nexus.local.example.com", "SRV"),
    ] {
        let out = dig(&server, &[name, qtype]).await;
        assert_eq!(status(&out), "REFUSED", "{name}: {out}");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn answers_follow_the_source() {
    let source = Arc::new(MemSource::default());
    let server = start(source.clone()).await;
    let q = "_nexus._tcp.ap-south.nexus.local";

    let out = dig(&server, &[q, "SRV"]).await;
    assert_eq!(status(&out), "NXDOMAIN", "{out}");

    source.set("ap-south", vec![ep("gw-1", "127.0.0.31:7001", None, 1, 1)]);
    let out = dig(&server, &[q, "SRV", "+short"]).await;
    assert_eq!(out.trim(), "1 1 7001 gw-1.gw.ap-south.nexus.local.");

    source.set(
        "ap-south",
        vec![
            ep("gw-1", "127.0.0.31:7005", None, 2, 3),
            ep("gw-2", "127.0.0.32:7001", None, 1, 1),
        ],
    );
    let out = dig(&server, &[q, "SRV", "+short"]).await;
    assert_eq!(
        out.lines().collect::<BTreeSet<_>>(),
        BTreeSet::from([
            "2 3 7005 gw-1.gw.ap-south.nexus.local.",
            "1 1 7001 gw-2.gw.ap-south.nexus.local.",
        ])
    );

    source.set("ap-south", Vec::new());
    let out = dig(&server, &[q, "SRV"]).await;
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn gateway_ids_are_sanitized_into_labels() {
    let source = Arc::new(MemSource::default());
    source.set(
        "us-east",
        vec![ep("GW_West.1", "127.0.0.41:7001", None, 0, 0)],
    );
    let server = start(source).await;
    let out = dig(
        &server,
        &["_nexus._tcp.us-east.nexus.local", "SRV", "+short"],
    )
    .await;
    assert_eq!(out.trim(), "0 0 7001 gw-west-1.gw.us-east.nexus.local.");
    let a = dig(
        &server,
        &["gw-west-1.gw.us-east.nexus.local", "A", "+short"],
    )
    .await;
    assert_eq!(a.trim(), "127.0.0.41");
    server.shutdown().await.unwrap();
}

fn eight_gateways() -> Arc<MemSource> {
    let source = Arc::new(MemSource::default());
    source.set(
        "us-east",
        (1..=8)
            .map(|i| {
                let addr = format!("127.0.1.{i}:{}", 7000 + i);
                ep(&format!("gw-use1-a{i}"), &addr, None, i, 10)
            })
            .collect(),
    );
    source
}

#[tokio::test]
async fn eight_gateways_fit_a_plain_512_byte_udp_answer() {
    let server = start(eight_gateways()).await;
    let q = "_nexus._tcp.us-east.nexus.local";
    // +noedns: the classic 512-byte limit; +ignore: show TC instead of retrying over TCP.
    let out = dig(&server, &[q, "SRV", "+noedns", "+ignore"]).await;
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(!flags(&out).contains(&"tc".to_owned()), "{out}");
    assert_eq!(section(&out, "ANSWER").len(), 8, "{out}");
    let size = out.lines().find(|l| l.contains("MSG SIZE")).unwrap();
    let bytes: usize = size.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(bytes <= 512, "{size}");

    // With dig's default EDNS buffer everything, glue included, fits.
    let out = dig(&server, &[q, "SRV", "+ignore"]).await;
    assert!(!flags(&out).contains(&"tc".to_owned()), "{out}");
    assert_eq!(section(&out, "ANSWER").len(), 8, "{out}");
    let glue = section(&out, "ADDITIONAL");
    assert_eq!(glue.iter().filter(|rr| rr[3] == "A").count(), 8, "{out}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn eight_gateways_raw_udp_without_edns() {
    // The same check without dig: what is on the wire, byte for byte.
    let server = start(eight_gateways()).await;
    let mut query = Message::query();
    query.metadata.recursion_desired = false;
    query.add_query(Query::query(
        Name::from_ascii("_nexus._tcp.us-east.nexus.local.").unwrap(),
        RecordType::SRV,
    ));
    let reply = exchange(&server, &query.to_vec().unwrap())
        .await
        .expect("a reply");
    assert!(reply.len() <= 512, "{} bytes", reply.len());
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(!reply.metadata.truncation);
    assert!(reply.metadata.authoritative);
    assert_eq!(reply.answers.len(), 8);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn too_many_gateways_keep_the_best_priorities_without_tc() {
    let source = Arc::new(MemSource::default());
    source.set(
        "us-east",
        // Registered in reverse so that the kept set is not just registration order.
        (1..=20)
            .rev()
            .map(|i| {
                let addr = format!("127.0.2.{i}:{}", 7000 + i);
                ep(&format!("gateway-number-{i}"), &addr, None, i, 1)
            })
            .collect(),
    );
    let server = start(source).await;
    let q = "_nexus._tcp.us-east.nexus.local";

    let out = dig(&server, &[q, "SRV", "+noedns", "+ignore"]).await;
    assert!(!flags(&out).contains(&"tc".to_owned()), "{out}");
    let answer = section(&out, "ANSWER");
    assert!(answer.len() >= 4 && answer.len() < 20, "{out}");
    let priorities: BTreeSet<u16> = answer.iter().map(|rr| rr[4].parse().unwrap()).collect();
    let best: BTreeSet<u16> = (1..=answer.len() as u16).collect();
    assert_eq!(priorities, best, "kept must be the best priorities: {out}");

    // TCP answers everything, glue included.
    let out = dig(&server, &[q, "SRV", "+tcp"]).await;
    assert_eq!(section(&out, "ANSWER").len(), 20, "{out}");
    assert_eq!(
        section(&out, "ADDITIONAL")
            .iter()
            .filter(|rr| rr[3] == "A")
            .count(),
        20
    );
    server.shutdown().await.unwrap();
}

/// Sends one datagram and waits briefly for a reply.
async fn exchange(server: &DnsServer, bytes: &[u8]) -> Option<Vec<u8>> {
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.send_to(bytes, server.udp_addr()).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let read = tokio::time::timeout(Duration::from_secs(2), client.recv(&mut buf)).await;
    let n = read.ok()?.unwrap();
    buf.truncate(n);
    Some(buf)
}

#[tokio::test]
async fn malformed_queries_do_not_break_the_server() {
    let server = start(standard_source()).await;
    let header = |qdcount: u8, flags_hi: u8| {
        vec![0x12, 0x34, flags_hi, 0x00, 0x00, qdcount, 0, 0, 0, 0, 0, 0]
    };
    let mut self_pointer = header(1, 0x00);
    self_pointer.extend_from_slice(&[0xC0, 0x0C, 0x00, 0x21, 0x00, 0x01]);
    let mut two_questions = header(2, 0x00);
    for _ in 0..2 {
        two_questions.extend_from_slice(b"\x05nexus\x05local\x00\x00\x06\x00\x01");
    }
    let mut huge_label = header(1, 0x00);
    huge_label.push(0x3f);
    huge_label.extend_from_slice(&[b'a'; 10]);
    let noise: Vec<u8> = (0..600u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 3],
        header(1, 0x00), // promises a question, has none
        header(0, 0x80), // a response, not a query
        self_pointer,    // compression pointer loop
        two_questions,   // QDCOUNT 2
        huge_label,      // label runs past the end
        noise,
        vec![0xff; 12], // every header bit set
    ];
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for g in &garbage {
        client.send_to(g, server.udp_addr()).await.unwrap();
    }
    // Two questions in one message is well-formed wire data we refuse to guess about.
    let reply = exchange(&server, &garbage[5]).await.expect("FORMERR reply");
    assert_eq!(
        Message::from_vec(&reply).unwrap().metadata.response_code,
        ResponseCode::FormErr
    );

    // Garbage over TCP too, then hang up.
    let mut tcp = TcpStream::connect(server.tcp_addr().unwrap())
        .await
        .unwrap();
    tcp.write_all(&[0x00, 0x05, 1, 2, 3, 4, 5, 0xff, 0xff])
        .await
        .unwrap();
    drop(tcp);
    // And a TCP client that sends half a length prefix and then sits there: it must not
    // hold up anyone else.
    let mut idle = TcpStream::connect(server.tcp_addr().unwrap())
        .await
        .unwrap();
    idle.write_all(&[0x00]).await.unwrap();

    let out = dig(
        &server,
        &["_nexus._tcp.us-east.nexus.local", "SRV", "+short"],
    )
    .await;
    assert_eq!(out.lines().count(), 3, "{out}");
    let out = dig(
        &server,
        &["_nexus._tcp.us-east.nexus.local", "SRV", "+short", "+tcp"],
    )
    .await;
    assert_eq!(out.lines().count(), 3, "{out}");
    server.shutdown().await.unwrap();
}

/// A resolver configured the way the adapter configures it: one name server, UDP with TCP
/// fallback, library defaults otherwise (EDNS on).
fn resolver_for(server: &DnsServer) -> Resolver<TokioRuntimeProvider> {
    let addr: SocketAddr = server.udp_addr();
    let mut udp = ConnectionConfig::udp();
    udp.port = addr.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = addr.port();
    let config = ResolverConfig::from_name_servers(vec![NameServerConfig::new(
        addr.ip(),
        true,
        vec![udp, tcp],
    )]);
    Resolver::builder_with_config(config, TokioRuntimeProvider::default())
        .build()
        .unwrap()
}

#[tokio::test]
async fn hickory_resolver_reads_the_srv_records() {
    let server = start(standard_source()).await;
    let resolver = resolver_for(&server);

    let lookup = resolver
        .srv_lookup("_nexus._tcp.us-east.nexus.local.")
        .await
        .unwrap();
    let mut got: Vec<(u16, u16, u16, String)> = lookup
        .answers()
        .iter()
        .filter_map(|rr| match &rr.data {
            RData::SRV(srv) => Some((srv.priority, srv.weight, srv.port, srv.target.to_ascii())),
            _ => None,
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (10, 40, 7002, "gw-b.gw.us-east.nexus.local.".to_owned()),
            (10, 60, 7001, "gw-a.gw.us-east.nexus.local.".to_owned()),
            (20, 0, 7003, "gw-c.gw.us-east.nexus.local.".to_owned()),
        ]
    );
    assert!(
        lookup
            .answers()
            .iter()
            .all(|rr| rr.ttl <= TTL.as_secs() as u32)
    );

    // The adapter then resolves the target to connect.
    let ips = resolver
        .lookup_ip("gw-a.gw.us-east.nexus.local.")
        .await
        .unwrap();
    assert_eq!(
        ips.iter().collect::<Vec<_>>(),
        vec!["127.0.0.10".parse::<std::net::IpAddr>().unwrap()]
    );

    let txt = resolver
        .txt_lookup("_nexus-config.nexus.local.")
        .await
        .unwrap();
    assert!(matches!(&txt.answers()[0].data, RData::TXT(t) if t.to_string() == "version=42"));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_stops_answering() {
    let server = start(standard_source()).await;
    let addr = server.udp_addr();
    server.shutdown().await.unwrap();
    let mut query = Message::query();
    query.add_query(Query::query(
        Name::from_ascii("nexus.local.").unwrap(),
        RecordType::SOA,
    ));
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let _ = client.send_to(&query.to_vec().unwrap(), addr).await;
    let mut buf = [0u8; 512];
    let read = tokio::time::timeout(Duration::from_millis(300), client.recv(&mut buf)).await;
    assert!(!matches!(read, Ok(Ok(_))), "answered after shutdown");
}

#[tokio::test]
async fn bad_configuration_is_rejected() {
    let source: Arc<dyn DiscoverySource> = standard_source();
    let udp = || async { UdpSocket::bind("127.0.0.1:0").await.unwrap() };
    let err = dns::serve(
        udp().await,
        None,
        ZONE.into(),
        source.clone(),
        Duration::ZERO,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, DnsError::InvalidTtl(_)), "{err}");
    let err = dns::serve(
        udp().await,
        None,
        ZONE.into(),
        source.clone(),
        Duration::from_millis(500),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, DnsError::InvalidTtl(_)), "{err}");
    for zone in ["", ".", "bad..zone"] {
        let err = dns::serve(
            udp().await,
            None,
            zone.into(),
            source.clone(),
            dns::DEFAULT_TTL,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, DnsError::InvalidZone { .. }),
            "{zone:?}: {err}"
        );
    }
    // A trailing dot and upper case are fine.
    let server = dns::serve(
        udp().await,
        None,
        "Nexus.Local.".into(),
        source,
        dns::DEFAULT_TTL,
    )
    .await
    .unwrap();
    assert!(server.tcp_addr().is_none());
    let out = dig(&server, &["_nexus-config.nexus.local", "TXT", "+short"]).await;
    assert_eq!(out.trim(), "\"version=42\"");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn eight_gateways_with_generated_ids_reach_the_resolver_over_edns() {
    // The gateway's default id is `<region>-<ulid>` (34 bytes): 8 such SRV records are
    // past 512 bytes, so they rely on EDNS, which the adapters' resolver sends by default.
    let source = Arc::new(MemSource::default());
    let ids: Vec<String> = (1..=8)
        .map(|i| format!("us-east-01jdq7k3m9x2v5w8y4z6t0r1s{i}"))
        .collect();
    source.set(
        "us-east",
        ids.iter()
            .enumerate()
            .map(|(i, id)| ep(id, &format!("127.0.3.{i}:7422"), None, 10, 10))
            .collect(),
    );
    let server = start(source).await;
    let q = "_nexus._tcp.us-east.nexus.local";
    let plain = dig(&server, &[q, "SRV", "+noedns", "+ignore"]).await;
    eprintln!(
        "512-byte clients get {} of 8",
        section(&plain, "ANSWER").len()
    );
    assert!(!flags(&plain).contains(&"tc".to_owned()), "{plain}");

    let resolver = resolver_for(&server);
    let lookup = resolver.srv_lookup(format!("{q}.")).await.unwrap();
    let mut targets: Vec<String> = lookup
        .answers()
        .iter()
        .filter_map(|rr| match &rr.data {
            RData::SRV(srv) => Some(srv.target.to_ascii()),
            _ => None,
        })
        .collect();
    targets.sort();
    let want: Vec<String> = ids
        .iter()
        .map(|id| format!("{id}.gw.us-east.nexus.local."))
        .collect();
    assert_eq!(targets, want);
    server.shutdown().await.unwrap();
}
