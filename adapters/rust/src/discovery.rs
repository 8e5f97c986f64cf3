//! Gateway discovery through DNS SRV: `nexus+srv://<name>` addresses, the RFC 2782 order of
//! the answer, and the per-client cache of the last answer.
//!
//! `nexus+srv://us-east.nexus.local` looks up the SRV records of
//! `_nexus._tcp.us-east.nexus.local.` (as published by the control plane's DNS responder),
//! orders them per RFC 2782 (lowest priority first, weighted random order within a
//! priority) and resolves each target's addresses (the A/AAAA glue of the answer when
//! present, otherwise A/AAAA lookups). The connection task then tries the gateways in that
//! order (see `connection::connect_round`).
//!
//! The answer is kept until its TTL runs out, or until a round in which no gateway accepted
//! a session; then the next round resolves again (clearing the resolver's own cache in the
//! second case, so that a fresh answer is fetched from the server). When every gateway of a
//! *cached* answer failed, the round itself resolves again at once and tries the gateways
//! the fresh answer adds before the client backs off: the cached answer may predate the
//! gateways that live now (taken while the one that just died was the only one up).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tracing::{debug, warn};

use crate::error::{Error, Result};

/// The URL scheme of discovery names.
pub(crate) const SRV_SCHEME: &str = "nexus+srv";
/// The service label prepended to the discovery name.
pub(crate) const SRV_PREFIX: &str = "_nexus._tcp.";
/// Environment variable naming the DNS server (`ip` or `ip:port`).
pub const DNS_SERVER_ENV: &str = "NEXUS_DNS_SERVER";
/// Where the system's name servers are read from when none is configured.
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// Per-query timeout of the resolver (it makes `DNS_ATTEMPTS` attempts).
const DNS_TIMEOUT: Duration = Duration::from_secs(2);
const DNS_ATTEMPTS: usize = 2;

/// What [`Client::connect`](crate::Client::connect) was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// `http://host:port` (a bare `host:port` gets `http://`): one gateway, as before.
    Direct(String),
    /// `nexus+srv://<name>[?dns=<ip[:port]>]`: discover the gateways.
    Srv(SrvTarget),
}

/// A parsed `nexus+srv://` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SrvTarget {
    /// The address as given (for messages).
    pub(crate) url: String,
    /// The fully qualified SRV name, `_nexus._tcp.<name>.`.
    pub(crate) srv_name: String,
    /// The `?dns=` override.
    pub(crate) dns_server: Option<SocketAddr>,
}

fn invalid(addr: &str, reason: impl Into<String>) -> Error {
    Error::InvalidAddress {
        addr: addr.to_owned(),
        reason: reason.into(),
    }
}

/// Parses a gateway address: `nexus+srv://name[?dns=ip[:port]]` is a discovery name;
/// anything else is a direct address, normalized as before (`host:port` gets `http://`)
/// and checked by the transport when connecting.
pub(crate) fn parse_target(addr: &str) -> Result<Target> {
    let trimmed = addr.trim();
    let Some((scheme, rest)) = trimmed.split_once("://") else {
        return Ok(Target::Direct(crate::client::normalize_addr(addr)));
    };
    if !scheme.eq_ignore_ascii_case(SRV_SCHEME) {
        return Ok(Target::Direct(crate::client::normalize_addr(addr)));
    }
    if rest.contains('#') {
        return Err(invalid(addr, "a fragment (#...) is not allowed"));
    }
    let (authority, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let host = authority.strip_suffix('/').unwrap_or(authority);
    if host.contains('/') {
        return Err(invalid(
            addr,
            "a path is not allowed after the discovery name",
        ));
    }
    if host.contains('@') {
        return Err(invalid(addr, "user information is not allowed"));
    }
    if host.contains(':') {
        return Err(invalid(
            addr,
            "a port is not allowed: the SRV records give each gateway's port",
        ));
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    validate_dns_name(host).map_err(|reason| invalid(addr, reason))?;

    let mut dns_server = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "dns" if dns_server.is_some() => {
                return Err(invalid(addr, "`dns` is given more than once"));
            }
            "dns" => {
                dns_server = Some(parse_dns_server(value).map_err(|r| invalid(addr, r))?);
            }
            other => {
                return Err(invalid(
                    addr,
                    format!("unknown parameter {other:?} (only `dns` is supported)"),
                ));
            }
        }
    }
    Ok(Target::Srv(SrvTarget {
        url: trimmed.to_owned(),
        srv_name: format!("{SRV_PREFIX}{}.", host.to_ascii_lowercase()),
        dns_server,
    }))
}

/// Checks a discovery name: dot-separated labels of letters, digits, `-` and `_`, each
/// 1 to 63 bytes, 253 bytes at most in all.
fn validate_dns_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("the discovery name is missing (nexus+srv://<region>.<zone>)".into());
    }
    if name.len() > 253 - SRV_PREFIX.len() {
        return Err(format!("the discovery name {name:?} is too long"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(format!("the discovery name {name:?} has an empty label"));
        }
        if label.len() > 63 {
            return Err(format!("the label {label:?} is longer than 63 bytes"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "the discovery name {name:?} contains {c:?} (letters, digits, '-' and '_' only)"
            ));
        }
    }
    Ok(())
}

/// `ip` (port 53) or `ip:port` (`[v6]:port` for IPv6).
pub(crate) fn parse_dns_server(s: &str) -> std::result::Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    Err(format!(
        "DNS server {s:?} is not an IP address or IP:port (e.g. 127.0.0.1:5353)"
    ))
}

/// The DNS server to ask, by precedence: the builder's, the URL's `?dns=`, then the
/// `NEXUS_DNS_SERVER` value. `None` means the system configuration.
pub(crate) fn choose_dns_server(
    builder: Option<SocketAddr>,
    url: Option<SocketAddr>,
    env: Option<&str>,
) -> Result<Option<SocketAddr>> {
    if let Some(a) = builder.or(url) {
        return Ok(Some(a));
    }
    match env.map(str::trim).filter(|v| !v.is_empty()) {
        Some(v) => parse_dns_server(v)
            .map(Some)
            .map_err(|reason| Error::InvalidAddress {
                addr: format!("{DNS_SERVER_ENV}={v}"),
                reason,
            }),
        None => Ok(None),
    }
}

/// The `nameserver` addresses of a resolv.conf.
pub(crate) fn parse_resolv_conf(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
                .and_then(|ip| ip.parse().ok())
        })
        .collect()
}

/// One SRV record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SrvRecord {
    pub(crate) priority: u16,
    pub(crate) weight: u16,
    pub(crate) port: u16,
    /// Fully qualified, lowercase, with the trailing dot.
    pub(crate) target: String,
}

impl SrvRecord {
    /// The gateway's name for messages: the id label of a Nexus target
    /// (`<id>.gw.<region>.<zone>.`), otherwise the target without its trailing dot.
    pub(crate) fn gateway_name(&self) -> String {
        let host = self.target.trim_end_matches('.');
        let mut labels = host.split('.');
        match (labels.next(), labels.next()) {
            (Some(id), Some("gw")) => id.to_owned(),
            _ => host.to_owned(),
        }
    }
}

/// Orders SRV records per RFC 2782: ascending priority; within a priority, repeatedly pick
/// one at random with probability proportional to its weight (weight-0 records are put
/// first before each draw, so they are chosen only when the draw is 0, i.e. rarely while
/// weighted records remain, and in random order among themselves otherwise).
pub(crate) fn rfc2782_order<R: Rng + ?Sized>(records: &[SrvRecord], rng: &mut R) -> Vec<SrvRecord> {
    let mut sorted = records.to_vec();
    sorted.sort_by_key(|r| r.priority);
    let mut out = Vec::with_capacity(sorted.len());
    for group in sorted.chunk_by(|a, b| a.priority == b.priority) {
        let mut left = group.to_vec();
        // "Any order, except that all those with weight 0 are placed at the beginning."
        left.shuffle(rng);
        left.sort_by_key(|r| r.weight != 0);
        while !left.is_empty() {
            let total: u32 = left.iter().map(|r| u32::from(r.weight)).sum();
            let draw = rng.random_range(0..=total);
            let mut running = 0u32;
            let pick = left
                .iter()
                .position(|r| {
                    running += u32::from(r.weight);
                    running >= draw
                })
                .unwrap_or(0);
            out.push(left.remove(pick));
        }
    }
    out
}

/// A gateway to try, in order.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    /// See [`SrvRecord::gateway_name`].
    pub(crate) gateway: String,
    /// Where to connect, or why the target has no address.
    pub(crate) addr: std::result::Result<SocketAddr, String>,
}

/// One resolved answer.
#[derive(Debug, Clone)]
struct Answer {
    records: Vec<SrvRecord>,
    /// Target -> its addresses (or why it has none).
    addrs: HashMap<String, std::result::Result<Vec<IpAddr>, String>>,
    valid_until: Instant,
}

struct CacheState {
    answer: Option<Answer>,
    /// Set when a whole round failed: resolve again, bypassing the resolver's cache.
    stale: bool,
    /// Addresses that refused a session or whose session broke since the answer was
    /// fetched, least recently failed first: tried after the others.
    demoted: Vec<SocketAddr>,
    rng: StdRng,
}

/// A client's view of the gateways behind one `nexus+srv://` name.
pub(crate) struct Discovery {
    target: SrvTarget,
    /// For messages: the server asked, or "the system resolver".
    server: String,
    resolver: TokioResolver,
    cache: Mutex<CacheState>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("target", &self.target)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Discovery {
    /// Sets up the resolver: `dns_server` if given (see [`choose_dns_server`]), otherwise
    /// the name servers of /etc/resolv.conf.
    pub(crate) fn new(target: SrvTarget, dns_server: Option<SocketAddr>) -> Result<Discovery> {
        let (servers, server) = match dns_server {
            Some(addr) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                (
                    vec![NameServerConfig::new(addr.ip(), true, vec![udp, tcp])],
                    addr.to_string(),
                )
            }
            None => {
                let text = std::fs::read_to_string(RESOLV_CONF).unwrap_or_default();
                let mut ips = parse_resolv_conf(&text);
                if ips.is_empty() {
                    debug!("nexus: no nameserver in {RESOLV_CONF}, using 127.0.0.1");
                    ips.push(IpAddr::from([127, 0, 0, 1]));
                }
                let server = format!(
                    "{} (from {RESOLV_CONF})",
                    ips.iter()
                        .map(IpAddr::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                (
                    ips.into_iter().map(NameServerConfig::udp_and_tcp).collect(),
                    server,
                )
            }
        };
        let mut opts = ResolverOpts::default();
        opts.timeout = DNS_TIMEOUT;
        opts.attempts = DNS_ATTEMPTS;
        opts.use_hosts_file = ResolveHosts::Never;
        let mut builder = Resolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        );
        *builder.options_mut() = opts;
        let resolver = builder.build().map_err(|e| {
            Error::Discovery(format!("cannot set up a DNS resolver for {server}: {e}"))
        })?;
        Ok(Discovery {
            target,
            server,
            resolver,
            cache: Mutex::new(CacheState {
                answer: None,
                stale: false,
                demoted: Vec::new(),
                rng: StdRng::from_os_rng(),
            }),
        })
    }

    /// The address as given (`nexus+srv://...`).
    pub(crate) fn url(&self) -> &str {
        &self.target.url
    }

    /// Records that no gateway of the current answer accepted a session: the next round
    /// resolves again.
    pub(crate) fn mark_all_failed(&self) {
        self.cache.lock().stale = true;
    }

    /// Records that `addr` refused a session or that its session broke: until the answer
    /// is refreshed, it is tried after the gateways that did not fail.
    pub(crate) fn demote(&self, addr: SocketAddr) {
        let mut c = self.cache.lock();
        c.demoted.retain(|a| *a != addr);
        c.demoted.push(addr);
    }

    /// The gateways to try this round, best first, and whether DNS was asked for them
    /// (`false`: they come from the cached answer). Resolves when there is no answer yet,
    /// when the cached one is older than its TTL, or after a round in which every gateway
    /// failed (see [`mark_all_failed`](Self::mark_all_failed)); if that resolution fails,
    /// the previous answer is used (with a warning) and counts as asked. Demoted gateways
    /// (see [`demote`](Self::demote)) come last.
    pub(crate) async fn candidates(&self) -> Result<(Vec<Candidate>, bool)> {
        let (refresh, stale) = {
            let c = self.cache.lock();
            let expired = c
                .answer
                .as_ref()
                .is_none_or(|a| Instant::now() >= a.valid_until);
            (expired || c.stale, c.stale)
        };
        if refresh {
            if stale {
                self.resolver.clear_cache();
            }
            match self.resolve().await {
                Ok(answer) => {
                    debug!(
                        name = %self.target.srv_name,
                        gateways = answer.records.len(),
                        "nexus: discovered gateways"
                    );
                    let mut c = self.cache.lock();
                    c.answer = Some(answer);
                    c.stale = false;
                    c.demoted.clear();
                }
                Err(e) => {
                    if self.cache.lock().answer.is_none() {
                        return Err(e);
                    }
                    warn!(error = %e, "nexus: DNS re-resolution failed, using the previous answer");
                }
            }
        }
        let mut c = self.cache.lock();
        let CacheState {
            answer,
            rng,
            demoted,
            ..
        } = &mut *c;
        let answer = answer
            .as_ref()
            .ok_or_else(|| Error::Discovery(format!("no answer for {}", self.target.srv_name)))?;
        let mut out = Vec::new();
        for rec in rfc2782_order(&answer.records, rng) {
            let gateway = rec.gateway_name();
            match answer.addrs.get(&rec.target) {
                Some(Ok(ips)) => out.extend(ips.iter().map(|ip| Candidate {
                    gateway: gateway.clone(),
                    addr: Ok(SocketAddr::new(*ip, rec.port)),
                })),
                Some(Err(why)) => out.push(Candidate {
                    gateway,
                    addr: Err(why.clone()),
                }),
                None => out.push(Candidate {
                    gateway,
                    addr: Err(format!("no address for {}", rec.target)),
                }),
            }
        }
        // Stable: the RFC 2782 order is kept among the others.
        out.sort_by_key(|c| {
            c.addr
                .as_ref()
                .ok()
                .and_then(|a| demoted.iter().position(|d| d == a))
        });
        Ok((out, refresh))
    }

    fn dns_error(&self, name: &str, e: &NetError) -> Error {
        let (srv, server) = (&self.target.srv_name, &self.server);
        Error::Discovery(if e.is_nx_domain() {
            format!(
                "{name} does not exist (NXDOMAIN from {server}): no gateway is published \
                 for {} (unknown region or zone, or no live gateway in it)",
                self.target.url
            )
        } else if e.is_no_records_found() {
            format!("{name} has no records (asked {server})")
        } else if name == srv {
            format!("SRV lookup of {srv} via {server} failed: {e}")
        } else {
            format!("address lookup of {name} via {server} failed: {e}")
        })
    }

    async fn resolve(&self) -> Result<Answer> {
        let srv_name = self.target.srv_name.as_str();
        let lookup = self
            .resolver
            .srv_lookup(srv_name)
            .await
            .map_err(|e| self.dns_error(srv_name, &e))?;
        let mut valid_until = lookup.valid_until();
        let records: Vec<SrvRecord> = lookup
            .answers()
            .iter()
            .filter_map(|rr| match &rr.data {
                RData::SRV(srv) if !srv.target.is_root() => Some(SrvRecord {
                    priority: srv.priority,
                    weight: srv.weight,
                    port: srv.port,
                    target: srv.target.to_ascii().to_ascii_lowercase(),
                }),
                _ => None,
            })
            .collect();
        if records.is_empty() {
            return Err(Error::Discovery(format!(
                "{srv_name} has no usable SRV records (asked {}): no gateway is published for {}",
                self.server, self.target.url
            )));
        }
        // Glue: A/AAAA records for the targets in the additional section.
        let mut glue: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for rr in lookup.additionals() {
            let ip = match &rr.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                _ => continue,
            };
            glue.entry(rr.name.to_ascii().to_ascii_lowercase())
                .or_default()
                .push(ip);
        }
        let mut addrs = HashMap::new();
        for rec in &records {
            if addrs.contains_key(&rec.target) {
                continue;
            }
            let resolved = match glue.remove(&rec.target) {
                Some(ips) => Ok(ips),
                None => match self.resolver.lookup_ip(rec.target.as_str()).await {
                    Ok(ips) => {
                        valid_until = valid_until.min(ips.valid_until());
                        Ok(ips.iter().collect())
                    }
                    Err(e) => {
                        let e = self.dns_error(&rec.target, &e);
                        warn!(error = %e, "nexus: cannot resolve a discovered gateway");
                        Err(match e {
                            Error::Discovery(m) => m,
                            other => other.to_string(),
                        })
                    }
                },
            };
            addrs.insert(rec.target.clone(), resolved);
        }
        Ok(Answer {
            records,
            addrs,
            valid_until,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srv(target: &str) -> SrvTarget {
        match parse_target(target).unwrap() {
            Target::Srv(t) => t,
            other => panic!("{target}: {other:?}"),
        }
    }

    fn bad(addr: &str) -> String {
        match parse_target(addr) {
            Err(e @ Error::InvalidAddress { .. }) => e.to_string(),
            other => panic!("{addr}: expected InvalidAddress, got {other:?}"),
        }
    }

    #[test]
    fn srv_urls_parse() {
        let t = srv("nexus+srv://us-east.nexus.local");
        assert_eq!(t.srv_name, "_nexus._tcp.us-east.nexus.local.");
        assert_eq!(t.dns_server, None);
        assert_eq!(t.url, "nexus+srv://us-east.nexus.local");
        // Trailing slash/dot, upper case scheme and name.
        let t = srv("NEXUS+SRV://US-East.Nexus.Local./");
        assert_eq!(t.srv_name, "_nexus._tcp.us-east.nexus.local.");
        let t = srv("nexus+srv://us-east.nexus.local?dns=127.0.0.1:5353");
        assert_eq!(t.dns_server, Some("127.0.0.1:5353".parse().unwrap()));
        let t = srv("nexus+srv://us-east.nexus.local/?dns=10.0.0.2");
        assert_eq!(t.dns_server, Some("10.0.0.2:53".parse().unwrap()));
        let t = srv("nexus+srv://eu.example?dns=[::1]:5353");
        assert_eq!(t.dns_server, Some("[::1]:5353".parse().unwrap()));
        assert_eq!(t.srv_name, "_nexus._tcp.eu.example.");
    }

    #[test]
    fn direct_addresses_are_unchanged() {
        assert_eq!(
            parse_target("127.0.0.1:7422").unwrap(),
            Target::Direct("http://127.0.0.1:7422".into())
        );
        assert_eq!(
            parse_target("http://h:1").unwrap(),
            Target::Direct("http://h:1".into())
        );
        assert_eq!(
            parse_target("https://h:1").unwrap(),
            Target::Direct("https://h:1".into())
        );
    }

    #[test]
    fn bad_srv_urls_are_explained() {
        assert!(bad("nexus+srv://").contains("discovery name is missing"));
        assert!(bad("nexus+srv://?dns=127.0.0.1").contains("discovery name is missing"));
        assert!(bad("nexus+srv://us-east.nexus.local:7422").contains("port is not allowed"));
        assert!(bad("nexus+srv://us-east.nexus.local/x").contains("path is not allowed"));
        assert!(bad("nexus+srv://a..b").contains("empty label"));
        assert!(bad("nexus+srv://us east").contains("contains ' '"));
        assert!(bad("nexus+srv://u@us-east.local").contains("user information"));
        assert!(bad("nexus+srv://a.b#frag").contains("fragment"));
        assert!(bad(&format!("nexus+srv://{}.local", "x".repeat(64))).contains("63 bytes"));
        let e = bad("nexus+srv://us-east.nexus.local?dns=localhost");
        assert!(e.contains("not an IP address or IP:port"), "{e}");
        assert!(
            e.contains("nexus+srv://us-east.nexus.local?dns=localhost"),
            "{e}"
        );
        assert!(bad("nexus+srv://a.b?dns=").contains("not an IP"));
        assert!(bad("nexus+srv://a.b?dns=1.2.3.4&dns=1.2.3.5").contains("more than once"));
        assert!(bad("nexus+srv://a.b?timeout=3").contains("unknown parameter \"timeout\""));
    }

    #[test]
    fn dns_server_precedence() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        assert_eq!(
            choose_dns_server(Some(a), Some(b), Some("127.0.0.1:3")).unwrap(),
            Some(a)
        );
        assert_eq!(
            choose_dns_server(None, Some(b), Some("127.0.0.1:3")).unwrap(),
            Some(b)
        );
        assert_eq!(
            choose_dns_server(None, None, Some(" 127.0.0.1:3 ")).unwrap(),
            Some("127.0.0.1:3".parse().unwrap())
        );
        assert_eq!(
            choose_dns_server(None, None, Some("::1")).unwrap(),
            Some("[::1]:53".parse().unwrap())
        );
        assert_eq!(choose_dns_server(None, None, Some("")).unwrap(), None);
        assert_eq!(choose_dns_server(None, None, None).unwrap(), None);
        let e = choose_dns_server(None, None, Some("dns.local")).unwrap_err();
        assert!(e.to_string().contains("NEXUS_DNS_SERVER=dns.local"), "{e}");
    }

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# comment\nsearch example.com\nnameserver 10.0.0.2\n\
                    nameserver ::1 # trailing\n;nameserver 9.9.9.9\nnameserver fe80::1%eth0\n\
                    nameserver\noptions ndots:2\n";
        assert_eq!(
            parse_resolv_conf(text),
            vec![
                "10.0.0.2".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
    }

    fn rec(target: &str, priority: u16, weight: u16) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port: 7422,
            target: format!("{target}.gw.us-east.nexus.local."),
        }
    }

    fn names(order: &[SrvRecord]) -> Vec<String> {
        order.iter().map(SrvRecord::gateway_name).collect()
    }

    #[test]
    fn gateway_names() {
        assert_eq!(rec("gw-a", 1, 1).gateway_name(), "gw-a");
        let other = SrvRecord {
            target: "host.example.".into(),
            ..rec("x", 1, 1)
        };
        assert_eq!(other.gateway_name(), "host.example");
    }

    #[test]
    fn lower_priority_always_first() {
        let records = vec![
            rec("c", 30, 100),
            rec("a", 10, 0),
            rec("b", 20, 65535),
            rec("a2", 10, 0),
        ];
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..200 {
            let order = rfc2782_order(&records, &mut rng);
            let prios: Vec<u16> = order.iter().map(|r| r.priority).collect();
            assert_eq!(prios, vec![10, 10, 20, 30]);
        }
    }

    #[test]
    fn order_is_deterministic_for_a_seed() {
        let records: Vec<SrvRecord> = (0..8)
            .map(|i| rec(&format!("g{i}"), (i % 2) as u16, (i * 10) as u16))
            .collect();
        let a = rfc2782_order(&records, &mut StdRng::seed_from_u64(42));
        let b = rfc2782_order(&records, &mut StdRng::seed_from_u64(42));
        assert_eq!(a, b);
        assert_eq!(a.len(), 8);
        let mut sorted = names(&a);
        sorted.sort();
        let mut want = names(&records);
        want.sort();
        assert_eq!(sorted, want, "a permutation");
    }

    #[test]
    fn weights_set_the_odds_of_going_first() {
        let records = vec![rec("a", 1, 60), rec("b", 1, 30), rec("c", 1, 10)];
        let mut rng = StdRng::seed_from_u64(7);
        let mut first: HashMap<String, u32> = HashMap::new();
        const N: u32 = 20_000;
        for _ in 0..N {
            let order = rfc2782_order(&records, &mut rng);
            *first.entry(order[0].gateway_name()).or_default() += 1;
        }
        let share = |n: &str| f64::from(first[n]) / f64::from(N);
        assert!((share("a") - 0.6).abs() < 0.02, "{first:?}");
        assert!((share("b") - 0.3).abs() < 0.02, "{first:?}");
        assert!((share("c") - 0.1).abs() < 0.02, "{first:?}");
    }

    #[test]
    fn zero_weight_goes_last_almost_always() {
        // RFC 2782: weight 0 "should be given a very small chance of being selected".
        let records = vec![rec("zero", 1, 0), rec("w", 1, 100)];
        let mut rng = StdRng::seed_from_u64(3);
        let zero_first = (0..10_000)
            .filter(|_| rfc2782_order(&records, &mut rng)[0].gateway_name() == "zero")
            .count();
        // The draw is uniform in 0..=100 and only 0 picks it: ~1/101.
        assert!(zero_first > 30 && zero_first < 200, "{zero_first}");

        // All zero: every one gets a fair chance to go first.
        let records = vec![rec("x", 1, 0), rec("y", 1, 0), rec("z", 1, 0)];
        let mut first: HashMap<String, u32> = HashMap::new();
        for _ in 0..3_000 {
            *first
                .entry(rfc2782_order(&records, &mut rng)[0].gateway_name())
                .or_default() += 1;
        }
        assert_eq!(first.len(), 3, "{first:?}");
        assert!(first.values().all(|&n| n > 800), "{first:?}");
    }

    #[tokio::test]
    async fn cached_answer_is_used_and_demoted_gateways_go_last() {
        // No DNS traffic: the answer is cached and valid, so nothing is resolved.
        let d = Discovery::new(
            srv("nexus+srv://us-east.nexus.local"),
            Some("127.0.0.1:9".parse().unwrap()),
        )
        .unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let records = vec![
            rec("a", 1, 1),
            rec("b", 2, 1),
            rec("c", 3, 1),
            rec("d", 4, 1),
        ];
        let mut addrs = HashMap::new();
        for r in &records {
            let result = if r.target.starts_with("d.") {
                Err("no address".to_owned())
            } else {
                Ok(vec![ip])
            };
            addrs.insert(r.target.clone(), result);
        }
        let port_of = |c: &Candidate| c.addr.as_ref().map(|a| a.port()).ok();
        let records: Vec<SrvRecord> = records
            .into_iter()
            .enumerate()
            .map(|(i, r)| SrvRecord {
                port: 7000 + i as u16,
                ..r
            })
            .collect();
        d.cache.lock().answer = Some(Answer {
            records,
            addrs,
            valid_until: Instant::now() + Duration::from_secs(60),
        });
        let order = |cs: Vec<Candidate>| -> Vec<(String, Option<u16>)> {
            cs.iter().map(|c| (c.gateway.clone(), port_of(c))).collect()
        };
        let a = |g: &str, p: Option<u16>| (g.to_owned(), p);
        assert_eq!(
            order(d.candidates().await.unwrap().0),
            vec![
                a("a", Some(7000)),
                a("b", Some(7001)),
                a("c", Some(7002)),
                a("d", None)
            ]
        );
        d.demote("127.0.0.1:7001".parse().unwrap());
        d.demote("127.0.0.1:7000".parse().unwrap());
        assert_eq!(
            order(d.candidates().await.unwrap().0),
            vec![
                a("c", Some(7002)),
                a("d", None),
                a("b", Some(7001)),
                a("a", Some(7000))
            ]
        );
        // Failing again moves it behind the others.
        d.demote("127.0.0.1:7001".parse().unwrap());
        assert_eq!(
            order(d.candidates().await.unwrap().0),
            vec![
                a("c", Some(7002)),
                a("d", None),
                a("a", Some(7000)),
                a("b", Some(7001))
            ]
        );
    }

    #[test]
    fn empty_answer_orders_to_nothing() {
        assert!(rfc2782_order(&[], &mut StdRng::seed_from_u64(0)).is_empty());
    }
}
