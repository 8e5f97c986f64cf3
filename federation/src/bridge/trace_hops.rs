//! What federation records in the gateway's trace store (`nexus_gateway::trace_store`) for
//! traced messages: the route decision, each hop to a cluster peer or another region with
//! the link's RTT, spooling, arrival from another gateway or region, and "nobody wants it".
//! Only called for messages that are traced (sampled or forced), so formatting here is off
//! the hot path.

use std::time::Duration;

use nexus_gateway::local_gateway::trace_hop;
use nexus_gateway::router::MessageRef;
use nexus_gateway::trace_store::{Event, Hop, Reason, Traced};
use nexus_proto::v1::Forward;

use super::RegionRouter;
use crate::link::LinkInfo;
use crate::routes::Rule;

fn micros(d: Option<Duration>) -> u64 {
    d.map_or(0, |d| d.as_micros() as u64)
}

impl RegionRouter {
    /// The trace handle of a message published here, when it is traced.
    pub(super) fn traced(&self, msg: &MessageRef<'_>) -> Option<Traced> {
        if msg.traced {
            Traced::new(msg.id, msg.headers, msg.subject)
        } else {
            None
        }
    }

    /// The trace handle of a message that arrived on a link, when it is traced.
    pub(super) fn traced_forward(&self, f: &Forward) -> Option<Traced> {
        if self.gateway.traces().sampled(&f.id, &f.headers) {
            Traced::new(&f.id, &f.headers, &f.subject)
        } else {
            None
        }
    }

    /// The route decision for a publish: the rule, its policy and mode, and where it sends
    /// the message (regions, cluster peers) and why.
    pub(super) fn trace_route(
        &self,
        t: Option<&Traced>,
        rule: &Rule,
        local_interest: bool,
        regions: &[String],
        peers: &[String],
        interested: usize,
    ) {
        trace_hop(&*self.gateway, t, || {
            let why = if regions.is_empty() && interested > 0 {
                format!(
                    "{interested} region(s) want it but the policy sent it to none of them (or their links are down)"
                )
            } else if regions.is_empty() {
                "no other region wants it".to_owned()
            } else {
                format!(
                    "{} chosen by policy {}",
                    regions.join(", "),
                    rule.policy.describe()
                )
            };
            Hop::new(Event::Route)
                .peer(format!("route {}", rule.name))
                .detail(format!(
                    "policy {}, mode {}; regions: {why}; gateways of this region: {}; local subscribers here: {}",
                    rule.policy.describe(),
                    rule.mode.as_str(),
                    if peers.is_empty() {
                        "none wants it".to_owned()
                    } else {
                        peers.join(", ")
                    },
                    if local_interest { "yes" } else { "no" },
                ))
                .count(regions.len() as u32)
        });
        if regions.is_empty() && peers.is_empty() && !local_interest {
            trace_hop(&*self.gateway, t, || {
                Hop::new(Event::Dropped)
                    .reason(Reason::NoInterest)
                    .detail("no subscription in this gateway, the other gateways of its region or any other region matches its subject")
            });
        }
    }

    /// A hop to cluster peer `gateway` (queued on its link, or not).
    pub(super) fn trace_to_peer(&self, t: Option<&Traced>, gateway: &str, queued: bool) {
        trace_hop(&*self.gateway, t, || {
            self.hop_to(gateway, "cluster", queued, self.fed.rtt_to(gateway))
        });
    }

    /// A hop to `region` (queued on its link, or not).
    pub(super) fn trace_to_region(&self, t: Option<&Traced>, region: &str, queued: bool) {
        trace_hop(&*self.gateway, t, || {
            let via = self.fed.via(region).unwrap_or_else(|| "-".into());
            self.hop_to(
                &format!("{region} via {via}"),
                "region",
                queued,
                self.fed.rtt(region),
            )
        });
    }

    fn hop_to(&self, to: &str, kind: &str, queued: bool, rtt: Option<Duration>) -> Hop {
        if queued {
            Hop::new(Event::Forwarded)
                .peer(to.to_owned())
                .detail(format!("{kind} hop, best effort"))
                .latency_us(micros(rtt))
        } else {
            Hop::new(Event::Dropped)
                .reason(Reason::LinkUnavailable)
                .peer(to.to_owned())
                .detail(format!("{kind} link down or its queue full: not sent"))
        }
    }

    /// Written to the spool for `regions` (and cluster peers) on an `async` / `sync` route.
    pub(super) fn trace_spooled(&self, t: Option<&Traced>, rule: &Rule, regions: &[String]) {
        trace_hop(&*self.gateway, t, || {
            Hop::new(Event::Spooled)
                .peer(regions.join(", "))
                .detail(format!(
                    "route {} mode {}: written to the replication spool",
                    rule.name,
                    rule.mode.as_str()
                ))
                .count(regions.len() as u32)
        });
    }

    /// A message arrived over `link` (`how`: forwarded or spooled), with the link's RTT.
    pub(super) fn trace_arrived(&self, link: &LinkInfo, f: &Forward, how: &str) {
        let t = self.traced_forward(f);
        trace_hop(&*self.gateway, t.as_ref(), || {
            let kind = if link.region == self.fed.region() {
                "cluster"
            } else {
                "region"
            };
            Hop::new(Event::Arrived)
                .peer(format!("{} ({})", link.gateway_id, link.region))
                .detail(format!(
                    "{how} over the {kind} link; published in region {}",
                    f.origin_region
                ))
                .latency_us(micros(self.fed.rtt_to(&link.gateway_id)))
        });
    }

    /// A request sent to cluster peer or region `to` (`rule`: the route that chose the
    /// region; `cheaper`: a local responder existed but the peer was cheaper).
    pub(super) fn trace_request_sent(
        &self,
        t: Option<&Traced>,
        to: &str,
        rule: Option<&Rule>,
        cheaper: bool,
    ) {
        trace_hop(&*self.gateway, t, || {
            let (peer, rtt, why) = match rule {
                Some(rule) => (
                    format!(
                        "{to} via {}",
                        self.fed.via(to).unwrap_or_else(|| "-".into())
                    ),
                    self.fed.rtt(to),
                    format!(
                        "region hop: route {} policy {} chose it",
                        rule.name,
                        rule.policy.describe()
                    ),
                ),
                None => (
                    to.to_owned(),
                    self.fed.rtt_to(to),
                    if cheaper {
                        "cluster hop: that gateway's responder is cheaper, the hop included".into()
                    } else {
                        "cluster hop: no local responder; that gateway has one".into()
                    },
                ),
            };
            Hop::new(Event::RequestRouted)
                .peer(peer)
                .detail(why)
                .latency_us(micros(rtt))
        });
    }

    /// A request that arrived over `link` to be served here.
    pub(super) fn trace_request_arrived(
        &self,
        link: &LinkInfo,
        r: &nexus_proto::v1::RemoteRequest,
    ) -> Option<Traced> {
        if !self.gateway.traces().sampled(&r.message_id, &r.headers) {
            return None;
        }
        let t = Traced::new(&r.message_id, &r.headers, &r.subject);
        trace_hop(&*self.gateway, t.as_ref(), || {
            Hop::new(Event::Arrived)
                .peer(format!("{} ({})", link.gateway_id, link.region))
                .detail(format!(
                    "request from region {}, {} ms left",
                    r.origin_region, r.deadline_ms
                ))
                .latency_us(micros(self.fed.rtt_to(&link.gateway_id)))
        });
        t
    }
}
