//! The zone's contents: turns one question into records, computed afresh from the
//! [`DiscoverySource`] on every query.
//!
//! Nothing is cached here on purpose: the source is the single owner of liveness, and the
//! short TTL is what bounds staleness at the adapters, so a second cache would only add lag.
//!
//! Names (relative to the zone; the rightmost relative label is always the region, except
//! for `_nexus-config`, which lives at the apex because the config version is global):
//!
//! | name | records |
//! | --- | --- |
//! | (apex) | SOA |
//! | `_nexus-config` | TXT `version=<config_version>` |
//! | `_nexus._tcp.<region>` | SRV to each gateway's adapter port |
//! | `_nexus-fed._udp.<region>` | SRV to each gateway's federation port (only gateways that have one) |
//! | `<id>.gw.<region>` | A or AAAA of the gateway's adapter address |
//! | `<id>.fed.<region>` | A or AAAA of the federation address, only when its IP differs from the adapter IP |
//!
//! `<region>`, `_tcp.<region>`, `gw.<region>` (and the `_udp`/`fed` ones when used) are
//! empty non-terminals: they exist (NOERROR, no data) while the region has gateways.
//! A region with no live gateway does not exist (NXDOMAIN): the source cannot tell an
//! unknown region from an empty one, and both mean "nothing to connect to here".

use std::collections::HashSet;
use std::net::IpAddr;

use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV, TXT};
use hickory_server::proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::{DiscoverySource, DnsError, GatewayEndpoint};

/// The label (under the zone apex) of the TXT record carrying the config version.
pub const CONFIG_LABEL: &str = "_nexus-config";

/// What a question resolves to, before it is sized into a message.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Not in this zone (or not class IN): we are not authoritative for it.
    Refused,
    /// The name does not exist in the zone (an SOA goes in the authority section).
    NxDomain,
    /// The name exists but has no record of the asked type (an SOA goes in authority).
    NoData,
    /// Records for the answer section, plus glue for the additional section where
    /// `glue[i]` is the address of `answers[i]`'s SRV target (empty for non-SRV answers).
    Answer {
        answers: Vec<Record>,
        glue: Vec<Record>,
    },
}

/// Which SRV service is asked for.
#[derive(Clone, Copy)]
enum Service {
    Adapter,
    Federation,
}

/// One gateway with the DNS label it is published under.
struct Gateway {
    label: String,
    ep: GatewayEndpoint,
}

impl Gateway {
    /// The federation address when it needs its own host name, i.e. its IP differs from
    /// the adapter IP (`<id>.gw` can only carry one address per family).
    fn distinct_federation_ip(&self) -> Option<IpAddr> {
        let fed = self.ep.federation_addr?.ip().to_canonical();
        (fed != self.ep.adapter_addr.ip().to_canonical()).then_some(fed)
    }
}

/// The zone: its origin, TTL, and how to name things in it.
#[derive(Debug)]
pub(super) struct Zone {
    origin: Name,
    ttl: u32,
}

impl Zone {
    /// Validates the zone name (any depth, not the root) and the TTL (whole seconds, > 0).
    pub(super) fn new(zone: &str, ttl: std::time::Duration) -> Result<Self, DnsError> {
        let invalid = |why: &str| DnsError::InvalidZone {
            zone: zone.to_owned(),
            reason: why.to_owned(),
        };
        let mut origin = Name::from_ascii(zone.trim())
            .map_err(|e| invalid(&e.to_string()))?
            .to_lowercase();
        origin.set_fqdn(true);
        if origin.is_root() {
            return Err(invalid("the root zone cannot be served"));
        }
        let secs = ttl.as_secs();
        if secs == 0 || secs > i32::MAX as u64 {
            return Err(DnsError::InvalidTtl(ttl));
        }
        Ok(Self {
            origin,
            ttl: secs as u32,
        })
    }

    pub(super) fn origin(&self) -> &Name {
        &self.origin
    }

    /// Resolves one question. `qname` may be in any case.
    pub(super) fn resolve(
        &self,
        source: &dyn DiscoverySource,
        qname: &Name,
        qtype: RecordType,
        qclass: DNSClass,
    ) -> Outcome {
        let qname = qname.to_lowercase();
        if !self.origin.zone_of(&qname) || !matches!(qclass, DNSClass::IN | DNSClass::ANY) {
            return Outcome::Refused;
        }
        // Zone transfers and other meta types are not served: the zone is synthesized.
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR | RecordType::OPT) {
            return Outcome::Refused;
        }
        let relative = usize::from(qname.num_labels() - self.origin.num_labels());
        let mut labels = Vec::with_capacity(relative);
        for label in qname.iter().take(relative) {
            // Every name we publish is ASCII; anything else cannot exist here.
            match std::str::from_utf8(label) {
                Ok(l) => labels.push(l),
                Err(_) => return Outcome::NxDomain,
            }
        }
        let wants = |t: RecordType| qtype == t || qtype == RecordType::ANY;

        match labels.as_slice() {
            [] if wants(RecordType::SOA) => self.answer(vec![self.soa(source)]),
            [] => Outcome::NoData,
            [CONFIG_LABEL] if wants(RecordType::TXT) => {
                let txt = TXT::new(vec![format!("version={}", source.config_version())]);
                self.answer(vec![self.record(qname, RData::TXT(txt))])
            }
            [CONFIG_LABEL] => Outcome::NoData,
            [rest @ .., region] => self.resolve_region(source, rest, region, qname.clone(), &wants),
        }
    }

    fn resolve_region(
        &self,
        source: &dyn DiscoverySource,
        rest: &[&str],
        region: &str,
        qname: Name,
        wants: &dyn Fn(RecordType) -> bool,
    ) -> Outcome {
        let gateways = gateways(source.endpoints(region));
        if gateways.is_empty() {
            return Outcome::NxDomain;
        }
        let any_fed = gateways.iter().any(|g| g.ep.federation_addr.is_some());
        let any_distinct_fed = gateways
            .iter()
            .any(|g| g.distinct_federation_ip().is_some());
        match rest {
            [] | ["_tcp"] | ["gw"] => Outcome::NoData,
            ["_udp"] if any_fed => Outcome::NoData,
            ["fed"] if any_distinct_fed => Outcome::NoData,
            ["_nexus", "_tcp"] if wants(RecordType::SRV) => {
                self.srv(&gateways, region, qname, Service::Adapter)
            }
            ["_nexus", "_tcp"] => Outcome::NoData,
            ["_nexus-fed", "_udp"] if any_fed && wants(RecordType::SRV) => {
                self.srv(&gateways, region, qname, Service::Federation)
            }
            ["_nexus-fed", "_udp"] if any_fed => Outcome::NoData,
            [id, "gw"] => match gateways.iter().find(|g| g.label == *id) {
                Some(g) => self.address(qname, g.ep.adapter_addr.ip(), wants),
                None => Outcome::NxDomain,
            },
            [id, "fed"] => match gateways
                .iter()
                .find(|g| g.label == *id)
                .and_then(Gateway::distinct_federation_ip)
            {
                Some(ip) => self.address(qname, ip, wants),
                None => Outcome::NxDomain,
            },
            _ => Outcome::NxDomain,
        }
    }

    /// SRV records in preference order (lowest priority first, then heaviest weight) so
    /// that trimming a prefix to fit a message keeps the best gateways.
    fn srv(&self, gateways: &[Gateway], region: &str, qname: Name, svc: Service) -> Outcome {
        let mut answers = Vec::with_capacity(gateways.len());
        let mut glue = Vec::with_capacity(gateways.len());
        for g in gateways {
            let (port, ip, sub) = match svc {
                Service::Adapter => (g.ep.adapter_addr.port(), g.ep.adapter_addr.ip(), "gw"),
                Service::Federation => {
                    let Some(fed) = g.ep.federation_addr else {
                        continue;
                    };
                    let sub = if g.distinct_federation_ip().is_some() {
                        "fed"
                    } else {
                        "gw"
                    };
                    (fed.port(), fed.ip(), sub)
                }
            };
            let Some(target) = self.host(&g.label, sub, region) else {
                continue;
            };
            let srv = SRV::new(g.ep.priority, g.ep.weight, port, target.clone());
            answers.push(self.record(qname.clone(), RData::SRV(srv)));
            glue.push(self.record(target, address_rdata(ip)));
        }
        Outcome::Answer { answers, glue }
    }

    fn address(&self, qname: Name, ip: IpAddr, wants: &dyn Fn(RecordType) -> bool) -> Outcome {
        let rdata = address_rdata(ip);
        if wants(rdata.record_type()) {
            self.answer(vec![self.record(qname, rdata)])
        } else {
            Outcome::NoData
        }
    }

    fn answer(&self, answers: Vec<Record>) -> Outcome {
        Outcome::Answer {
            answers,
            glue: Vec::new(),
        }
    }

    /// `<label>.<sub>.<region>.<zone>.`; `None` only if that is longer than 255 bytes (a
    /// 63-byte id under a 63-byte region of a long zone), in which case the gateway is left
    /// out rather than failing the whole answer. Raw bytes, not `&str`, so no IDNA mapping
    /// is applied to what already is a wire label.
    fn host(&self, label: &str, sub: &str, region: &str) -> Option<Name> {
        Name::from_labels([label.as_bytes(), sub.as_bytes(), region.as_bytes()])
            .and_then(|n| n.append_domain(&self.origin))
            .ok()
    }

    fn record(&self, name: Name, rdata: RData) -> Record {
        Record::from_rdata(name, self.ttl, rdata)
    }

    /// The zone's SOA. Its minimum (and TTL) is the configured TTL so that negative
    /// answers are cached no longer than positive ones: a new region shows up as fast as a
    /// new gateway does. The serial follows the config version (low 32 bits).
    pub(super) fn soa(&self, source: &dyn DiscoverySource) -> Record {
        let hostmaster = Name::from_labels([b"hostmaster".as_slice()])
            .and_then(|n| n.append_domain(&self.origin))
            .unwrap_or_else(|_| self.origin.clone());
        let ttl = self.ttl as i32;
        let soa = SOA::new(
            self.origin.clone(),
            hostmaster,
            source.config_version() as u32,
            ttl,
            ttl,
            ttl.saturating_mul(10),
            self.ttl,
        );
        self.record(self.origin.clone(), RData::SOA(soa))
    }
}

fn address_rdata(ip: IpAddr) -> RData {
    match ip.to_canonical() {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

/// Labels every endpoint (sanitized, unique) and orders them by preference.
///
/// Labels are assigned in gateway-id order, not preference order, so that a priority
/// change never makes two colliding ids swap names between queries.
fn gateways(mut endpoints: Vec<GatewayEndpoint>) -> Vec<Gateway> {
    endpoints.sort_by(|a, b| (&a.gateway_id, a.adapter_addr).cmp(&(&b.gateway_id, b.adapter_addr)));
    let mut taken = HashSet::with_capacity(endpoints.len());
    let mut out: Vec<Gateway> = endpoints
        .into_iter()
        .map(|ep| {
            let base = sanitize_label(&ep.gateway_id);
            let mut label = base.clone();
            let mut n = 2u32;
            while !taken.insert(label.clone()) {
                let suffix = format!("-{n}");
                let keep = base.len().min(63 - suffix.len());
                label = format!("{}{suffix}", base[..keep].trim_end_matches('-'));
                n += 1;
            }
            Gateway { label, ep }
        })
        .collect();
    out.sort_by(|a, b| {
        (a.ep.priority, std::cmp::Reverse(a.ep.weight), &a.label).cmp(&(
            b.ep.priority,
            std::cmp::Reverse(b.ep.weight),
            &b.label,
        ))
    });
    out
}

/// Maps a gateway id to a DNS label: lowercase `a-z0-9-`, no leading/trailing `-`, at
/// most 63 bytes. Ids that are already labels are unchanged, so the common case is the
/// identity and operators see their own ids in DNS.
pub fn sanitize_label(id: &str) -> String {
    let mapped: String = id
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-') => c,
            _ => '-',
        })
        .collect();
    let trimmed = mapped.trim_matches('-');
    // All ASCII by now, so byte slicing is on char boundaries.
    let cut = trimmed[..trimmed.len().min(63)].trim_end_matches('-');
    if cut.is_empty() {
        "gw".to_owned()
    } else {
        cut.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize() {
        assert_eq!(sanitize_label("gw-1"), "gw-1");
        assert_eq!(sanitize_label("GW_One.Bad"), "gw-one-bad");
        assert_eq!(sanitize_label("--x--"), "x");
        assert_eq!(sanitize_label("ü"), "gw");
        assert_eq!(sanitize_label(&"a".repeat(80)).len(), 63);
    }

    #[test]
    fn colliding_ids_get_distinct_labels() {
        let ep = |id: &str| GatewayEndpoint {
            gateway_id: id.into(),
            region: "r".into(),
            adapter_addr: "127.0.0.1:1".parse().unwrap(),
            federation_addr: None,
            priority: 0,
            weight: 0,
        };
        let gws = gateways(vec![ep("a_b"), ep("a.b"), ep("A-B")]);
        let labels: HashSet<_> = gws.iter().map(|g| g.label.as_str()).collect();
        assert_eq!(labels, HashSet::from(["a-b", "a-b-2", "a-b-3"]));
    }
}
