//! What each fuzz target does with its input: one function per parser that takes untrusted
//! bytes. Shared by the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`, nightly, coverage
//! guided) and by the stable test `tests/fuzz_corpora.rs`, which replays every checked-in
//! corpus and crash-regression file through the same functions in every `cargo test`.
//!
//! A function returns normally whatever the input; a panic, an overflow, a hang or an
//! unbounded allocation in the code it calls is the bug the fuzzer looks for. The functions
//! also assert properties the product relies on (a decoded batch re-encodes to the same
//! batch; what a validator accepts satisfies its documented rules), so a wrong answer is a
//! crash too.

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use nexus_control_plane::dns::{self, DiscoverySource, GatewayEndpoint};
use nexus_control_plane::schema::{CompatibilityMode, ParsedSchema, SchemaFormat};
use nexus_proto::subject::{
    covers, is_invisible, matches, validate_pattern, validate_reply_subject, validate_subject,
};
use nexus_proto::text::Escaped;
use nexus_proto::v1::{self, Batch, LinkFrame, frame::Kind};
use prost::Message;

/// One target: takes the fuzzer's input.
pub type Target = fn(&[u8]);

/// The targets, by name: the names of `fuzz/fuzz_targets/*.rs`, `fuzz/corpus/*` and
/// `fuzz/regressions/*`.
pub const TARGETS: &[(&str, Target)] = &[
    ("session_batch", session_batch),
    ("subject", subject),
    ("schema_json", schema_json),
    ("schema_protobuf", schema_protobuf),
    ("gateway_config", gateway_config),
    ("link_frames", link_frames),
    ("dns_query", dns_query),
];

/// A gateway session's input: the `Batch` a gRPC message carries, decoded by the hand-written
/// hot frames (`proto/src/hot_frames/mod.rs`) and the generated code for the other frames, as
/// `ExactSizeCodec` does; then what the gateway checks first in each frame (subjects,
/// patterns, reply subjects, the client strings it logs).
pub fn session_batch(data: &[u8]) {
    let Ok(batch) = Batch::decode(Bytes::copy_from_slice(data)) else {
        return;
    };
    let again = batch.encode_to_vec();
    assert_eq!(again.len(), batch.encoded_len(), "encoded_len disagrees");
    let back = Batch::decode(Bytes::from(again)).expect("a re-encoded batch decodes");
    assert_eq!(back, batch, "a batch changed through encode and decode");
    for frame in &batch.frames {
        match &frame.kind {
            Some(Kind::Hello(h)) => {
                for s in [&h.client_name, &h.language, &h.version, &h.api_key] {
                    escaped_is_clean(s);
                }
                let _ = nexus_proto::keys::parse(&h.api_key);
            }
            Some(Kind::Sub(s)) => {
                check_pattern(&s.subject);
                escaped_is_clean(&s.queue_group);
            }
            Some(Kind::Pub(p)) => {
                check_subject(&p.subject);
                if !p.reply_to.is_empty() {
                    let _ = validate_reply_subject(&p.reply_to);
                }
                for h in &p.headers {
                    escaped_is_clean(&h.key);
                }
            }
            Some(Kind::Req(r)) => check_subject(&r.subject),
            Some(Kind::Reply(r)) => {
                let _ = validate_reply_subject(&r.reply_to);
            }
            Some(Kind::StreamOpen(s)) => check_subject(&s.subject),
            _ => {}
        }
    }
}

/// Subjects, patterns and scopes as clients and `nexusctl keys` send them: the input is split
/// at the first NUL into a pattern and a subject.
pub fn subject(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (a, b) = text.split_once('\0').unwrap_or((text, text));
    for s in [a, b] {
        check_subject(s);
        check_pattern(s);
        let _ = validate_reply_subject(s);
        escaped_is_clean(s);
        let _ = nexus_proto::keys::parse(s);
    }
    let m = matches(a, b);
    if m && validate_pattern(a).is_ok() && validate_subject(b).is_ok() {
        // A pattern covers every subject it matches.
        assert!(covers(a, b), "{a:?} matches {b:?} but does not cover it");
    }
    let _ = covers(b, a);
}

fn check_subject(s: &str) {
    if validate_subject(s).is_ok() {
        assert!(
            validate_pattern(s).is_ok(),
            "subject {s:?} is not a valid pattern"
        );
        assert!(
            !s.chars()
                .any(|c| c.is_control() || c.is_whitespace() || is_invisible(c)),
            "subject {s:?} accepted with an invisible character"
        );
        assert!(matches(s, s), "subject {s:?} does not match itself");
    }
}

fn check_pattern(s: &str) {
    if validate_pattern(s).is_ok() {
        assert!(
            !s.chars()
                .any(|c| c.is_control() || c.is_whitespace() || is_invisible(c)),
            "pattern {s:?} accepted with an invisible character"
        );
        assert!(covers(s, s), "pattern {s:?} does not cover itself");
    }
}

fn escaped_is_clean(s: &str) {
    let out = Escaped(s).to_string();
    assert!(
        !out.chars().any(|c| c.is_control() || is_invisible(c)),
        "escaped {s:?} still holds a control character: {out:?}"
    );
}

/// The registry's JSON Schema path (`RegisterSchema`, `CheckSchema`, payload validation at a
/// gateway): the input is split at the first NUL into a candidate and a previous version (or
/// a payload); both are parsed, the second is validated as a payload against the first, and
/// every compatibility mode compares them.
pub fn schema_json(data: &[u8]) {
    let (a, b) = split(data);
    schemas(SchemaFormat::JsonSchema, (a, None), (b, None));
}

/// The registry's protobuf path: each half (split at the first NUL byte pair, see [`split2`])
/// is `<message name>\n<encoded FileDescriptorSet>`.
pub fn schema_protobuf(data: &[u8]) {
    let (a, b) = split2(data);
    let named = |d: &[u8]| -> (Vec<u8>, Option<String>) {
        match d.iter().position(|&c| c == b'\n') {
            Some(i) => (
                d[i + 1..].to_vec(),
                Some(String::from_utf8_lossy(&d[..i]).into_owned()),
            ),
            None => (d.to_vec(), None),
        }
    };
    let (da, na) = named(a);
    let (db, nb) = named(b);
    schemas(
        SchemaFormat::Protobuf,
        (&da, na.as_deref()),
        (&db, nb.as_deref()),
    );
}

fn schemas(format: SchemaFormat, a: (&[u8], Option<&str>), b: (&[u8], Option<&str>)) {
    let pa = ParsedSchema::parse(format, a.0, a.1);
    let pb = ParsedSchema::parse(format, b.0, b.1);
    if let Ok(pa) = &pa {
        let _ = pa.validate(b.0);
        let _ = pa.validate(a.0);
    }
    if let (Ok(pa), Ok(pb)) = (pa, pb) {
        for mode in CompatibilityMode::ALL {
            let _ = nexus_control_plane::schema::check_compatibility(
                mode,
                &pa,
                std::slice::from_ref(&pb),
            );
            let _ = nexus_control_plane::schema::check_compatibility(
                mode,
                &pb,
                std::slice::from_ref(&pa),
            );
        }
    }
}

fn split(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&c| c == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, data),
    }
}

/// Splits at the first `\0\0\0\0` (an encoded descriptor holds single NULs).
fn split2(data: &[u8]) -> (&[u8], &[u8]) {
    match data.windows(4).position(|w| w == [0, 0, 0, 0]) {
        Some(i) => (&data[..i], &data[i + 4..]),
        None => (data, data),
    }
}

/// A gateway's TOML config file (`nexus gateway --config`): parse, then validate.
pub fn gateway_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = nexus_gateway::GatewayConfig::from_toml(text)
        && config.validate().is_ok()
    {
        let _ = config.balancer.to_balancer_config();
        let _ = (
            config.request_timeout(),
            config.hello_timeout(),
            config.idle_connection_timeout(),
            config.shutdown_grace(),
        );
    }
}

/// A federation or cluster link stream: varint-length-prefixed `LinkFrame`s read by the same
/// reader a link uses, until the end or the first error; what decodes re-encodes.
pub fn link_frames(data: &[u8]) {
    let mut r = data;
    futures::executor::block_on(async {
        // A stream can hold at most one frame per byte: bounded.
        for _ in 0..=data.len() {
            match nexus_federation::link::wire::read_frame(&mut r).await {
                Ok(Some(frame)) => {
                    let again = frame.encode_to_vec();
                    let back = LinkFrame::decode(again.as_slice()).expect("re-encoded frame");
                    assert_eq!(
                        back, frame,
                        "a link frame changed through encode and decode"
                    );
                    if let Some(v1::link_frame::Kind::Forward(f)) = &frame.kind {
                        escaped_is_clean(&f.subject);
                    }
                }
                Ok(None) | Err(_) => return,
            }
        }
    });
}

/// The control plane's DNS responder (`nexus control-plane --dns`), the real server on a
/// loopback UDP socket: each input is one datagram. Every 64 inputs a good SRV query must be
/// answered within 5 s, or the responder is taken to have hung.
pub fn dns_query(data: &[u8]) {
    let dns = dns_server();
    let mut guard = dns.lock().unwrap_or_else(|p| p.into_inner());
    let DnsFixture {
        client, server, n, ..
    } = &mut *guard;
    if client.send_to(data, *server).is_err() {
        return; // e.g. larger than a datagram
    }
    let mut buf = [0u8; 4096];
    // Most inputs get an answer (FORMERR, REFUSED, NXDOMAIN, ...); some are dropped.
    let _ = client.recv(&mut buf);
    *n += 1;
    if *n % 64 == 0 {
        let probe = srv_query(0xbeef);
        client.send_to(&probe, *server).expect("probe sent");
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        loop {
            match client.recv(&mut buf) {
                // The answer to the probe (late answers to fuzz inputs have other ids).
                Ok(len) if len >= 12 && buf[..2] == [0xbe, 0xef] => {
                    assert_eq!(buf[3] & 0x0f, 0, "the probe got rcode {}", buf[3] & 0x0f);
                    break;
                }
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("the DNS responder did not answer a good query within 5 s")
                }
                Err(e) => panic!("probe: {e}"),
            }
        }
        client
            .set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
    }
}

/// A standard query for `_nexus._tcp.us-east.nexus.local` SRV with id `id`, as a resolver
/// sends it.
pub fn srv_query(id: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in ["_nexus", "_tcp", "us-east", "nexus", "local"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&[0, 33, 0, 1]);
    q
}

struct DnsFixture {
    client: UdpSocket,
    server: SocketAddr,
    n: u64,
    _runtime: tokio::runtime::Runtime,
    _server: dns::DnsServer,
}

struct Gateways;

impl DiscoverySource for Gateways {
    fn endpoints(&self, region: &str) -> Vec<GatewayEndpoint> {
        if region != "us-east" {
            return Vec::new();
        }
        (0..3u16)
            .map(|i| GatewayEndpoint {
                gateway_id: format!("gw-{i:08x}"),
                region: region.to_owned(),
                adapter_addr: SocketAddr::from(([127, 0, 0, 1], 7000 + i)),
                federation_addr: (i != 1).then(|| SocketAddr::from(([127, 0, 0, 2], 7100 + i))),
                priority: i,
                weight: 10,
            })
            .collect()
    }

    fn config_version(&self) -> u64 {
        42
    }
}

fn dns_server() -> &'static Mutex<DnsFixture> {
    static DNS: OnceLock<Mutex<DnsFixture>> = OnceLock::new();
    DNS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let server = runtime.block_on(async {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind UDP");
            dns::serve(
                udp,
                None,
                "nexus.local".into(),
                Arc::new(Gateways),
                dns::DEFAULT_TTL,
            )
            .await
            .expect("DNS responder")
        });
        let client = UdpSocket::bind("127.0.0.1:0").expect("bind client");
        client
            .set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        Mutex::new(DnsFixture {
            client,
            server: server.udp_addr(),
            n: 0,
            _runtime: runtime,
            _server: server,
        })
    })
}
