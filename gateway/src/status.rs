//! `/v1/status`: a JSON view of one gateway for operators and the web console — sessions,
//! traffic counters, subscribed patterns, balancer state, federation links and replication
//! spools. Built on demand from the router's state; nothing here is on the message path.

use serde::Serialize;

use crate::metrics::{Direction, Pattern};
use crate::remote::{ClusterPeerStatus, LinkStatus, SpoolStatus};
use crate::router::Router;

/// How many subject patterns the status lists (those with the most subscribers).
const TOP_SUBJECTS: usize = 20;

#[derive(Debug, Serialize)]
pub struct GatewayStatus {
    pub gateway_id: String,
    pub region: String,
    pub uptime_s: u64,
    pub sessions: i64,
    pub subscriptions: i64,
    pub messages: MessageCounts,
    pub subjects: Vec<SubjectStatus>,
    pub balancer: Vec<GroupStatus>,
    pub links: Vec<LinkStatus>,
    /// Links to the other gateways of this region (its cluster).
    pub cluster: Vec<ClusterPeerStatus>,
    pub routes: Vec<SpoolStatus>,
    /// Spool replicas; absent without federation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<crate::remote::ReplicaStatus>,
}

/// Monotonic counters; rates are the difference between two reads.
#[derive(Debug, Serialize)]
pub struct MessageCounts {
    /// Messages adapters published or sent as requests into this gateway.
    pub published: u64,
    /// Messages this gateway delivered to adapters.
    pub delivered: u64,
}

#[derive(Debug, Serialize)]
pub struct SubjectStatus {
    pub pattern: String,
    pub subscribers: usize,
}

#[derive(Debug, Serialize)]
pub struct GroupStatus {
    pub subject: String,
    pub group: String,
    pub members: Vec<MemberStatus>,
}

#[derive(Debug, Serialize)]
pub struct MemberStatus {
    pub session: String,
    pub cost_us: f64,
    pub in_flight: u32,
    pub ejected: bool,
    pub ejection_reason: Option<&'static str>,
}

pub fn status(router: &Router) -> GatewayStatus {
    let cfg = router.config();
    let m = &router.metrics;
    let count = |dir| {
        [
            Pattern::Pub,
            Pattern::Request,
            Pattern::Reply,
            Pattern::Stream,
        ]
        .into_iter()
        .map(|p| m.traffic_count(p, dir))
        .sum()
    };
    let mut subjects: std::collections::HashMap<String, usize> = Default::default();
    let mut balancer = Vec::new();
    for group in router.groups() {
        let members = group.members();
        *subjects.entry(group.pattern.to_string()).or_default() += members.len();
        if let Some(queue) = &group.queue {
            let snapshot = group.balancer_snapshot();
            balancer.push(GroupStatus {
                subject: group.pattern.to_string(),
                group: queue.to_string(),
                members: snapshot
                    .iter()
                    .map(|s| {
                        let session = members
                            .iter()
                            .find(|m| m.id == s.id)
                            .map(|m| format!("{}/{}", m.conn.id, m.sid))
                            .unwrap_or_default();
                        MemberStatus {
                            session,
                            cost_us: s.estimate.as_secs_f64() * 1e6 * f64::from(s.pending + 1),
                            in_flight: s.pending,
                            ejected: s.ejected_until.is_some(),
                            ejection_reason: s.ejection_reason.map(|r| r.as_str()),
                        }
                    })
                    .collect(),
            });
        }
    }
    let mut subjects: Vec<SubjectStatus> = subjects
        .into_iter()
        .map(|(pattern, subscribers)| SubjectStatus {
            pattern,
            subscribers,
        })
        .collect();
    subjects.sort_by(|a, b| {
        b.subscribers
            .cmp(&a.subscribers)
            .then(a.pattern.cmp(&b.pattern))
    });
    subjects.truncate(TOP_SUBJECTS);
    balancer.sort_by(|a, b| (&a.subject, &a.group).cmp(&(&b.subject, &b.group)));
    let (links, cluster, routes, replicas) = match router.remote() {
        Some(r) => (r.links(), r.cluster(), r.spools(), r.replicas()),
        None => (Vec::new(), Vec::new(), Vec::new(), None),
    };
    GatewayStatus {
        gateway_id: cfg.gateway_id.clone(),
        region: cfg.region.clone(),
        uptime_s: router.uptime().as_secs(),
        sessions: m.connections.get(),
        subscriptions: m.subscriptions.get(),
        messages: MessageCounts {
            published: count(Direction::In),
            delivered: count(Direction::Out),
        },
        subjects,
        balancer,
        links,
        cluster,
        routes,
        replicas,
    }
}
