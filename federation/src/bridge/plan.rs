//! Where a message or request goes (planning): the candidate regions for a subject with their
//! interest, link state and cost, the route policy's choice among them ([`crate::routes`],
//! sans-I/O, damped), and for a publish the list of [`Target`]s: which regions get a copy,
//! for their plain subscribers and for which queue groups.

use nexus_gateway::router::MessageRef;
use nexus_proto::v1::Forward;

use super::RegionRouter;
use crate::interest::Interested;
use crate::metrics::Outcome;
use crate::routes::{Candidate, Choice, Rule, Traffic, choose};

impl RegionRouter {
    /// Every region this gateway knows of, as a candidate for `subject`.
    pub(super) fn candidates(&self, subject: &str, spooled: bool) -> Vec<Candidate> {
        let interested = self.remote.load().regions_for(subject);
        self.candidates_among(&interested, spooled)
    }

    /// Every region this gateway knows of, `interested` ones marked, with link state and cost.
    pub(super) fn candidates_among(&self, interested: &[String], spooled: bool) -> Vec<Candidate> {
        let mut regions: Vec<String> = self.fed.connected_regions();
        for r in interested {
            if !regions.contains(r) {
                regions.push(r.clone());
            }
        }
        regions.sort();
        let costs = self.requests.costs.lock();
        regions
            .into_iter()
            .map(|region| {
                let rtt = self.fed.rtt(&region);
                let cost = costs.get(&region).copied().unwrap_or_default();
                Candidate {
                    interest: interested.contains(&region),
                    // Spooled modes queue for a region whose link is down.
                    up: spooled || rtt.is_some(),
                    cost_us: rtt.map(|rtt| {
                        (rtt.as_secs_f64() * 1e6 + cost.service_us) * f64::from(cost.in_flight + 1)
                    }),
                    region,
                }
            })
            .collect()
    }

    pub(super) fn choose(
        &self,
        rule: &Rule,
        traffic: Traffic,
        local: bool,
        subject: &str,
    ) -> Choice {
        // Publishes of spooled routes wait for a region whose link is down; best-effort
        // broadcasts count it as a drop. Everything else picks among links that are up.
        let assume_up = traffic == Traffic::Publish
            && (rule.mode.spooled() || rule.policy == crate::routes::Policy::Broadcast);
        let candidates = self.candidates(subject, assume_up);
        choose(
            rule,
            traffic,
            local,
            &candidates,
            &mut self.damping.lock(),
            &mut rand::rng(),
        )
    }

    /// Which regions get a copy of a message on `subject`, and for whom there: the route's
    /// policy picks the regions whose plain subscribers get it; each queue group with no
    /// local members goes to the one region the policy picks among those that have it
    /// (local members always win, so a queue group never gets a message twice).
    pub(super) fn targets(
        &self,
        rule: &Rule,
        subject: &str,
        local_interest: bool,
        matches: &[Interested],
    ) -> Vec<Target> {
        let assume_up = rule.mode.spooled() || rule.policy == crate::routes::Policy::Broadcast;
        let mut plain: Vec<String> = matches
            .iter()
            .filter(|m| m.queue.is_none())
            .map(|m| m.region.clone())
            .collect();
        plain.dedup();
        let mut targets: Vec<Target> = Vec::new();
        if !plain.is_empty() {
            let candidates = self.candidates_among(&plain, assume_up);
            let choice = choose(
                rule,
                Traffic::Publish,
                local_interest,
                &candidates,
                &mut self.damping.lock(),
                &mut rand::rng(),
            );
            if choice.regions.is_empty() && !choice.local {
                // Wanted elsewhere, but no region the policy allows is reachable.
                self.metrics.outcome(Outcome::Dropped);
            }
            targets.extend(choice.regions.into_iter().map(|region| Target {
                region,
                plain: true,
                queue_groups: Vec::new(),
            }));
        }
        let mut groups: Vec<&str> = matches.iter().filter_map(|m| m.queue.as_deref()).collect();
        groups.sort_unstable();
        groups.dedup();
        if groups.is_empty() {
            return targets;
        }
        // Groups with members anywhere in this region (this gateway or a cluster peer) are
        // served here.
        let mut local_groups = self.gateway.local_queue_groups(subject);
        local_groups.extend(self.cluster.groups(subject));
        for group in groups {
            if local_groups.iter().any(|g| g == group) {
                continue;
            }
            let having: Vec<String> = matches
                .iter()
                .filter(|m| m.queue.as_deref() == Some(group))
                .map(|m| m.region.clone())
                .collect();
            let candidates = self.candidates_among(&having, rule.mode.spooled());
            // One region takes the group's message, as with a request.
            let choice = choose(
                rule,
                Traffic::Request,
                false,
                &candidates,
                &mut self.damping.lock(),
                &mut rand::rng(),
            );
            let Some(region) = choice.regions.into_iter().next() else {
                self.metrics.outcome(Outcome::Dropped);
                continue;
            };
            match targets.iter_mut().find(|t| t.region == region) {
                Some(t) => t.queue_groups.push(group.to_owned()),
                None => targets.push(Target {
                    region,
                    plain: false,
                    queue_groups: vec![group.to_owned()],
                }),
            }
        }
        targets
    }
}

/// One region a message goes to, and whom it is for there.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Target {
    pub(super) region: String,
    /// Its plain subscriptions.
    pub(super) plain: bool,
    /// Its queue groups the message was assigned to.
    pub(super) queue_groups: Vec<String>,
}

impl Target {
    pub(super) fn forward(&self, msg: &MessageRef<'_>, origin: &str) -> Forward {
        Forward {
            subject: msg.subject.to_string(),
            reply_to: String::new(),
            headers: msg.headers.to_vec(),
            payload: msg.payload_owned(),
            id: msg.id_owned(),
            origin_region: origin.to_owned(),
            skip_plain: !self.plain,
            queue_groups: self.queue_groups.clone(),
        }
    }
}
