//! What federation shows operators: the links with their best-effort accounting, spooled
//! replication per route and region, and `explain` (where a subject's messages would go now,
//! and why), for `/v1/status`, `/v1/explain`, `nexusctl` and the console.

use nexus_gateway::remote::{LinkStatus, SpoolStatus};

use super::{RegionRouter, now_ms};
use crate::metrics::{DropLabels, DropReason, RegionLabels};
use crate::routes::{Damping, Traffic, choose};

impl RegionRouter {
    pub(super) fn cluster_statuses(&self) -> Vec<nexus_gateway::remote::ClusterPeerStatus> {
        self.fed
            .links()
            .into_iter()
            .filter(|l| l.kind == crate::link::LinkKind::Cluster)
            .map(|l| nexus_gateway::remote::ClusterPeerStatus {
                gateway_id: l.info.gateway_id,
                rtt_ms: l.rtt.as_secs_f64() * 1e3,
                forwarded: l.forwarded,
                confirmed: l.confirmed,
                received: l.received,
            })
            .collect()
    }

    pub(super) fn link_statuses(&self) -> Vec<LinkStatus> {
        let mut regions: Vec<String> = self.fed.connected_regions();
        regions.extend(self.fed.peers());
        regions.extend(self.remote.load().regions());
        regions.extend(self.replication.depths().into_iter().map(|d| d.region));
        regions.sort();
        regions.dedup();
        let m = self.fed.metrics();
        regions
            .into_iter()
            .map(|region| {
                let labels = RegionLabels {
                    region: region.clone(),
                };
                let rtt = self.fed.rtt(&region);
                let dropped_by_reason: std::collections::BTreeMap<&'static str, u64> = [
                    DropReason::LinkDown,
                    DropReason::QueueFull,
                    DropReason::LinkLost,
                ]
                .into_iter()
                .map(|reason| {
                    let n = m
                        .dropped
                        .get_or_create(&DropLabels {
                            region: region.clone(),
                            reason,
                        })
                        .get();
                    (reason.as_str(), n)
                })
                .collect();
                LinkStatus {
                    state: if rtt.is_some() { "up" } else { "down" },
                    via: self.fed.via(&region),
                    rtt_ms: rtt.map(|r| r.as_secs_f64() * 1e3),
                    dead_after_ms: self.fed.dead_after(&region).map(|d| d.as_secs_f64() * 1e3),
                    forwarded: m.forwarded.get_or_create(&labels).get(),
                    confirmed: m.confirmed.get_or_create(&labels).get(),
                    unconfirmed: if rtt.is_some() {
                        m.unconfirmed.get_or_create(&labels).get().max(0) as u64
                    } else {
                        0
                    },
                    dropped: dropped_by_reason.values().sum(),
                    dropped_by_reason,
                    received: m.received.get_or_create(&labels).get(),
                    region,
                }
            })
            .collect()
    }

    pub(super) fn spool_statuses(&self) -> Vec<SpoolStatus> {
        let now = now_ms();
        let table = self.route_table();
        let depths = self.replication.depths();
        depths
            .into_iter()
            .map(|d| SpoolStatus {
                consistency: table
                    .rules()
                    .iter()
                    .find(|r| r.name == d.route)
                    .map_or("async", |r| r.mode.as_str()),
                spool_depth: d.depth,
                replication_lag_ms: d.oldest_ms.map(|o| (now - o).max(0) as f64),
                route: d.route,
                region: d.region,
            })
            .collect()
    }

    pub(super) fn explanation(&self, subject: &str, local_interest: bool) -> serde_json::Value {
        let table = self.route_table();
        let (rule, pattern) = table.resolve(subject);
        let spooled = rule.mode.spooled();
        let candidates = self.candidates(subject, false);
        let costs = self.requests.costs.lock().clone();
        let depths = self.replication.depths();
        let regions: Vec<serde_json::Value> = candidates
            .iter()
            .map(|c| {
                let cost = costs.get(&c.region).copied().unwrap_or_default();
                serde_json::json!({
                    "region": c.region,
                    "interest": c.interest,
                    "link": if c.up { "up" } else { "down" },
                    "rtt_ms": self.fed.rtt(&c.region).map(|r| r.as_secs_f64() * 1e3),
                    "service_ms": cost.service_us / 1e3,
                    "in_flight": cost.in_flight,
                    "cost_ms": c.cost_us.map(|us| us / 1e3),
                    "spool_depth": depths.iter().find(|d| d.region == c.region && d.route == rule.name).map_or(0, |d| d.depth),
                })
            })
            .collect();
        // Explaining must not move the damping state real traffic uses.
        let mut damping = self.damping.lock();
        let mut scratch = Damping::default();
        std::mem::swap(&mut *damping, &mut scratch);
        let cands_pub = self.candidates(
            subject,
            spooled || rule.policy == crate::routes::Policy::Broadcast,
        );
        let publish = choose(
            rule,
            Traffic::Publish,
            local_interest,
            &cands_pub,
            &mut scratch,
            &mut rand::rng(),
        );
        let request = choose(
            rule,
            Traffic::Request,
            false,
            &candidates,
            &mut scratch,
            &mut rand::rng(),
        );
        std::mem::swap(&mut *damping, &mut scratch);
        serde_json::json!({
            "route": {
                "name": rule.name,
                "version": rule.version,
                "matched_pattern": pattern,
                "policy": rule.policy.describe(),
                "consistency": rule.mode.as_str(),
                "failover": rule.failover,
                "sync_quorum": rule.sync_quorum,
                "sync_timeout_ms": rule.sync_timeout_ms,
            },
            "config_version": self.gateway.policy_version(),
            "cluster": self.cluster.interested(subject),
            // The region's other gateways that could take a request on the subject, with
            // what the gateway balancer knows of them (docs/cluster.md §5).
            "cluster_takers": self.takers(subject),
            // Durable routes only: the gateway of this region keeping copies of the spool
            // (--spool-replicas 2), or null.
            "spool_replica": if spooled {
                let r = self.replication.replica_status();
                serde_json::json!({ "copies": r.copies, "replica": r.replica })
            } else {
                serde_json::Value::Null
            },
            "regions": regions,
            "publish": {
                "local": publish.local,
                "regions": publish.regions,
                "reason": publish.reason,
            },
            "request_without_local_responder": {
                "regions": request.regions,
                "reason": request.reason,
            },
        })
    }

    /// Cluster peers with a subscriber on `subject`: the hop's RTT, the reply latency to
    /// requests on `subject` the gateway balancer learnt through each (hop included; `null`
    /// before the first reply) and those requests in flight.
    fn takers(&self, subject: &str) -> Vec<serde_json::Value> {
        let now = std::time::Instant::now();
        let balance = self.requests.gateways.lock();
        self.cluster
            .responders(subject, |gw| self.fed.rtt_to(gw))
            .into_iter()
            .map(|(gw, rtt)| {
                let (latency, in_flight) = balance.snapshot(&gw, subject, now);
                serde_json::json!({
                    "gateway_id": gw,
                    "rtt_ms": rtt.as_secs_f64() * 1e3,
                    "reply_ms": latency.map(|l| l.as_secs_f64() * 1e3),
                    "in_flight": in_flight,
                })
            })
            .collect()
    }
}
