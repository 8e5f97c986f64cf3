//! The region's other gateways (its cluster, docs/cluster.md): their interest; what this
//! gateway advertises to them (its own subscriptions) and to other regions (the union over
//! the region); which of them get a message published here or arriving from another region
//! (one hop, never further); which one takes a queue group's message or a request (by the
//! gateway balancer, `cluster::balance`); and the
//! per-stream marks that keep relayed spooled messages from being delivered twice; and which
//! peers are absent (link down) but not yet gone.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use nexus_gateway::balancer::GroupCost;
use nexus_gateway::router::MessageRef;
use nexus_proto::v1::{Forward, InterestUpdate};
use parking_lot::Mutex;

use crate::cluster::balance::{GatewayBalance, Taker};
use crate::interest::{Interested, LocalInterest, RemoteInterest};
use crate::replication::StreamId;

/// Interest inside the region.
#[derive(Default)]
struct State {
    /// This gateway's own subscription groups (advertised to cluster peers).
    local: LocalInterest,
    /// The region's: one count per gateway that has a key (advertised to other regions).
    region: LocalInterest,
    /// What each cluster peer advertised.
    sets: HashMap<String, BTreeSet<String>>,
}

/// A cluster peer a message goes to, and whom it is for there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PeerTarget {
    pub(super) gateway_id: String,
    pub(super) plain: bool,
    pub(super) queue_groups: Vec<String>,
}

impl PeerTarget {
    pub(super) fn forward(&self, msg: &MessageRef<'_>, origin_region: &str) -> Forward {
        Forward {
            subject: msg.subject.to_string(),
            reply_to: String::new(),
            headers: msg.headers.to_vec(),
            payload: msg.payload_owned(),
            id: msg.id_owned(),
            origin_region: origin_region.to_owned(),
            skip_plain: !self.plain,
            queue_groups: self.queue_groups.clone(),
        }
    }
}

#[derive(Default)]
pub(super) struct Cluster {
    state: Mutex<State>,
    /// Cluster peers' interest by gateway id, read on every publish without a lock.
    peers: ArcSwap<RemoteInterest>,
    /// Per stream, the highest spooled message delivered here that a cluster peer relayed.
    marks: Mutex<HashMap<StreamId, u64>>,
    /// Cluster peers whose link is down, since when (Unix ms): their interest is kept, and
    /// relays they have not confirmed stay owed, for a grace period, so a short cut inside
    /// the region loses nothing; past it, while the control plane still lists them, their
    /// relays are held (`past_grace`), until they return or are no longer listed.
    absent: Mutex<HashMap<String, Absence>>,
}

#[derive(Debug, Clone, Copy)]
struct Absence {
    since_ms: i64,
    past_grace: bool,
}

/// An update carrying only changes, or `None` when there are none.
fn delta(add: Vec<String>, remove: Vec<String>) -> Option<InterestUpdate> {
    (!add.is_empty() || !remove.is_empty()).then_some(InterestUpdate {
        full: false,
        add,
        remove,
    })
}

impl Cluster {
    /// This gateway gained (`present`) or lost its last subscription group on `key`: the
    /// update for cluster peers and the update for other regions, if any.
    pub(super) fn local_changed(
        &self,
        key: &str,
        present: bool,
    ) -> (Option<InterestUpdate>, Option<InterestUpdate>) {
        let mut st = self.state.lock();
        let for_peers = if present {
            st.local.add(key)
        } else {
            st.local.remove(key)
        };
        let for_regions = match &for_peers {
            Some(_) if present => st.region.add(key),
            Some(_) => st.region.remove(key),
            None => None,
        };
        (for_peers, for_regions)
    }

    /// Cluster peer `gateway` advertised `update`; returns the patterns refused and the update
    /// for other regions, if the region's interest changed.
    pub(super) fn peer_update(
        &self,
        gateway: &str,
        update: &InterestUpdate,
    ) -> (Vec<String>, Option<InterestUpdate>) {
        let mut peers = RemoteInterest::clone(&self.peers.load());
        let rejected = peers.apply(gateway, update);
        let now: BTreeSet<String> = peers.patterns(gateway).into_iter().collect();
        self.peers.store(Arc::new(peers));
        (rejected, self.replace_set(gateway, now))
    }

    /// Cluster peer `gateway`'s link went down at `now_ms`: it counts as absent (its interest
    /// kept) until it returns or it is forgotten ([`Cluster::forget`]).
    pub(super) fn peer_absent(&self, gateway: &str, now_ms: i64) {
        self.absent
            .lock()
            .entry(gateway.to_owned())
            .or_insert(Absence {
                since_ms: now_ms,
                past_grace: false,
            });
    }

    /// Cluster peer `gateway` is linked again.
    pub(super) fn peer_present(&self, gateway: &str) {
        self.absent.lock().remove(gateway);
    }

    pub(super) fn is_absent(&self, gateway: &str) -> bool {
        self.absent.lock().contains_key(gateway)
    }

    /// Peers that have been absent for `grace_ms` at `now_ms`, each reported once (the
    /// caller holds their relays, or forgets them when they are no longer listed).
    pub(super) fn past_grace(&self, now_ms: i64, grace_ms: i64) -> Vec<String> {
        let mut absent = self.absent.lock();
        let mut out: Vec<String> = Vec::new();
        for (g, a) in absent.iter_mut() {
            if !a.past_grace && now_ms - a.since_ms >= grace_ms {
                a.past_grace = true;
                out.push(g.clone());
            }
        }
        out.sort();
        out
    }

    /// Absent peers already past the grace period.
    pub(super) fn held(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .absent
            .lock()
            .iter()
            .filter(|(_, a)| a.past_grace)
            .map(|(g, _)| g.clone())
            .collect();
        out.sort();
        out
    }

    /// No longer absent but gone: `gateway` is dropped from the absent peers (the caller
    /// also forgets its interest with [`Cluster::peer_gone`]).
    pub(super) fn forget(&self, gateway: &str) {
        self.absent.lock().remove(gateway);
    }

    /// Cluster peer `gateway` is gone: its interest leaves the region's.
    pub(super) fn peer_gone(&self, gateway: &str) -> Option<InterestUpdate> {
        let mut peers = RemoteInterest::clone(&self.peers.load());
        peers.forget(gateway);
        self.peers.store(Arc::new(peers));
        self.replace_set(gateway, BTreeSet::new())
    }

    fn replace_set(&self, gateway: &str, now: BTreeSet<String>) -> Option<InterestUpdate> {
        let mut st = self.state.lock();
        let before = st.sets.remove(gateway).unwrap_or_default();
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        for k in now.difference(&before) {
            if let Some(d) = st.region.add(k) {
                add.extend(d.add);
            }
        }
        for k in before.difference(&now) {
            if let Some(d) = st.region.remove(k) {
                remove.extend(d.remove);
            }
        }
        if !now.is_empty() {
            st.sets.insert(gateway.to_owned(), now);
        }
        delta(add, remove)
    }

    /// Everything this gateway wants, for a cluster link that came up.
    pub(super) fn local_full(&self) -> InterestUpdate {
        self.state.lock().local.full()
    }

    /// Everything the region wants, for a link from another region that came up.
    pub(super) fn region_full(&self) -> InterestUpdate {
        self.state.lock().region.full()
    }

    /// Cluster peers with any subscriber on `subject`, sorted.
    pub(super) fn interested(&self, subject: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .peers
            .load()
            .matches(subject)
            .into_iter()
            .map(|m| m.region)
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Queue groups on `subject` with members on cluster peers.
    pub(super) fn groups(&self, subject: &str) -> Vec<String> {
        let mut g: Vec<String> = self
            .peers
            .load()
            .matches(subject)
            .into_iter()
            .filter_map(|m| m.queue)
            .collect();
        g.sort();
        g.dedup();
        g
    }

    /// Which cluster peers get a message on `subject`: those with plain subscriptions (when
    /// `plain`), and for each queue group (`groups`, or every group when `None`), the gateway
    /// the gateway balancer picks among this one (when it has members: `local`, with their
    /// cost) and the peers that have members (`cluster::balance`). Returns the targets and
    /// the local groups a peer takes instead of this gateway.
    pub(super) fn targets(
        &self,
        subject: &str,
        plain: bool,
        groups: Option<&[String]>,
        local: impl Fn(&str) -> Option<GroupCost>,
        rtt: impl Fn(&str) -> Option<Duration>,
        rng: &mut impl rand::Rng,
    ) -> (Vec<PeerTarget>, Vec<String>) {
        let matches = self.peers.load().matches(subject);
        let mut taken = Vec::new();
        if matches.is_empty() {
            return (Vec::new(), taken);
        }
        let mut out: Vec<PeerTarget> = Vec::new();
        let target = |out: &mut Vec<PeerTarget>, gw: &str| -> usize {
            match out.iter().position(|t| t.gateway_id == gw) {
                Some(i) => i,
                None => {
                    out.push(PeerTarget {
                        gateway_id: gw.to_owned(),
                        plain: false,
                        queue_groups: Vec::new(),
                    });
                    out.len() - 1
                }
            }
        };
        if plain {
            for m in matches.iter().filter(|m| m.queue.is_none()) {
                let i = target(&mut out, &m.region);
                out[i].plain = true;
            }
        }
        let mut wanted: Vec<&str> = matches.iter().filter_map(|m| m.queue.as_deref()).collect();
        wanted.sort_unstable();
        wanted.dedup();
        for group in wanted {
            if groups.is_some_and(|g| !g.iter().any(|x| x == group)) {
                continue;
            }
            let mut peers: Vec<(String, Duration)> = matches
                .iter()
                .filter(|m: &&Interested| m.queue.as_deref() == Some(group))
                .filter_map(|m| rtt(&m.region).map(|r| (m.region.clone(), r)))
                .collect();
            peers.sort();
            peers.dedup_by(|a, b| a.0 == b.0);
            let mine = local(group);
            if let Some(Taker::Peer(gw)) = GatewayBalance::pick_for_message(rng, mine, &peers) {
                let i = target(&mut out, &gw);
                out[i].queue_groups.push(group.to_owned());
                if mine.is_some() {
                    taken.push(group.to_owned());
                }
            }
        }
        (out, taken)
    }

    /// The cluster peers with a subscriber (plain or in a queue group) on `subject` and a
    /// link whose RTT is known, each once, sorted: the candidates for a request.
    pub(super) fn responders(
        &self,
        subject: &str,
        rtt: impl Fn(&str) -> Option<Duration>,
    ) -> Vec<(String, Duration)> {
        let mut v: Vec<(String, Duration)> = self
            .peers
            .load()
            .matches(subject)
            .iter()
            .filter_map(|m| rtt(&m.region).map(|r| (m.region.clone(), r)))
            .collect();
        v.sort();
        v.dedup_by(|a, b| a.0 == b.0);
        v
    }

    /// Whether this gateway should deliver spooled message `seq` of `stream` to its local
    /// subscribers: only if it is newer than what it delivered of that stream, whether it came
    /// straight from the origin (this gateway is the stream's home here) or through a cluster
    /// peer (the home). When the home changes, the new one resends what the old one did not
    /// confirm, and every gateway that had it already drops it.
    pub(super) fn first_delivery(&self, stream: &StreamId, seq: u64) -> bool {
        let mut marks = self.marks.lock();
        let mark = marks.entry(stream.clone()).or_default();
        if seq <= *mark {
            return false;
        }
        *mark = seq;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(add: &[&str]) -> InterestUpdate {
        InterestUpdate {
            full: true,
            add: add.iter().map(|s| s.to_string()).collect(),
            remove: Vec::new(),
        }
    }

    #[test]
    fn the_region_advertises_the_union_of_its_gateways_edges_only() {
        let c = Cluster::default();
        let (peers, regions) = c.local_changed("orders.>", true);
        assert_eq!(peers.unwrap().add, vec!["orders.>"]);
        assert_eq!(regions.unwrap().add, vec!["orders.>"]);
        // A peer with the same pattern changes nothing for other regions.
        let (_, regions) = c.peer_update("gw-2", &full(&["orders.>", "jobs.* workers"]));
        assert_eq!(regions.unwrap().add, vec!["jobs.* workers"]);
        // This gateway's last subscriber leaves: the peer still wants it.
        let (peers, regions) = c.local_changed("orders.>", false);
        assert_eq!(peers.unwrap().remove, vec!["orders.>"]);
        assert!(regions.is_none());
        // The peer goes: the region wants nothing any more.
        let mut gone = c.peer_gone("gw-2").unwrap().remove;
        gone.sort();
        assert_eq!(gone, vec!["jobs.* workers", "orders.>"]);
        assert!(c.region_full().add.is_empty());
    }

    fn cost(ms: u64, load: u32) -> GroupCost {
        GroupCost {
            estimate: Duration::from_millis(ms),
            load,
        }
    }

    #[test]
    fn plain_subscribers_everywhere_and_each_queue_group_once_at_the_cheapest_gateway() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let c = Cluster::default();
        c.peer_update("gw-2", &full(&["orders.>", "orders.* workers"]));
        c.peer_update("gw-3", &full(&["orders.* workers", "orders.new"]));
        let rtt = |gw: &str| {
            Some(Duration::from_micros(match gw {
                "gw-2" => 300,
                _ => 100,
            }))
        };
        // No local member: the nearer of the two unmeasured peers.
        let (t, taken) = c.targets("orders.new", true, None, |_| None, rtt, &mut rng);
        assert_eq!(
            t,
            vec![
                PeerTarget {
                    gateway_id: "gw-2".into(),
                    plain: true,
                    queue_groups: vec![]
                },
                PeerTarget {
                    gateway_id: "gw-3".into(),
                    plain: true,
                    queue_groups: vec!["workers".into()]
                },
            ]
        );
        assert!(taken.is_empty());
        // An idle local member takes the group (the hop makes every peer dearer)...
        let idle = |g: &str| (g == "workers").then(|| cost(2, 0));
        let (t, taken) = c.targets("orders.new", true, None, idle, rtt, &mut rng);
        assert!(t.iter().all(|t| t.queue_groups.is_empty()));
        assert!(taken.is_empty());
        // ...a busy one gives it to a peer, and says it was taken.
        let busy = |g: &str| (g == "workers").then(|| cost(2, 5));
        let (t, taken) = c.targets("orders.new", true, None, busy, rtt, &mut rng);
        assert_eq!(t.iter().map(|t| t.queue_groups.len()).sum::<usize>(), 1);
        assert_eq!(taken, vec!["workers".to_string()]);
        // A message from another region for plain subscribers only does not touch the group.
        let (t, _) = c.targets("orders.new", true, Some(&[]), |_| None, rtt, &mut rng);
        assert!(t.iter().all(|t| t.queue_groups.is_empty()));
        assert_eq!(
            c.responders("orders.new", rtt),
            vec![
                ("gw-2".to_string(), Duration::from_micros(300)),
                ("gw-3".to_string(), Duration::from_micros(100))
            ]
        );
    }

    #[test]
    fn an_absent_peer_passes_the_grace_period_once_and_stays_absent_until_forgotten() {
        let c = Cluster::default();
        c.peer_absent("gw-2", 1000);
        c.peer_absent("gw-2", 1500); // a second down of the same absence keeps the first time
        assert!(c.is_absent("gw-2"));
        assert!(c.past_grace(1999, 1000).is_empty());
        assert_eq!(c.past_grace(2000, 1000), vec!["gw-2".to_string()]);
        assert!(c.past_grace(2500, 1000).is_empty(), "reported once");
        assert!(c.is_absent("gw-2"));
        assert_eq!(c.held(), vec!["gw-2".to_string()]);
        c.forget("gw-2");
        assert!(!c.is_absent("gw-2"));
        assert!(c.held().is_empty());
        c.peer_absent("gw-3", 0);
        c.peer_present("gw-3");
        assert!(c.past_grace(10_000, 1000).is_empty());
    }

    #[test]
    fn relayed_spooled_messages_are_delivered_once_per_stream() {
        let c = Cluster::default();
        let s = StreamId::from("gw-a.1");
        assert!(c.first_delivery(&s, 1));
        assert!(c.first_delivery(&s, 2));
        assert!(
            !c.first_delivery(&s, 2),
            "the same message through a new home"
        );
        assert!(c.first_delivery(&StreamId::from("gw-b.1"), 1));
    }
}
