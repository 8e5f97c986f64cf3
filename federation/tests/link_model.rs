//! A deterministic model of the link decisions of two regions of three gateways each, with
//! simulated time, where a kill, a partition or a heal takes microseconds to run.
//!
//! The real cores decide: [`Membership`] (which links each gateway wants, which side dials,
//! its homes in the other region), [`Liveness`] (when a silent link is declared dead) and
//! [`route_via`] (which linked gateway a region's traffic goes through). The world around them
//! is simulated in 10 ms ticks: a control plane whose registrations outlive a killed gateway
//! by a lease and reach each gateway's view after a push delay; dials that succeed one tick
//! after they start when the peer is alive and reachable; links that carry datagrams while
//! both ends live and are not cut apart, and end on a side whose watchdog says dead. A seeded
//! schedule kills and restarts gateways and cuts and heals pairs of them.
//!
//! Checked on every tick: two gateways with the same view agree on whether they want a link
//! and exactly one of them dials it; a route only ever points at a linked gateway of the
//! region. Bounded re-homing: whenever a gateway's view lists a home in another region that
//! is alive and reachable, its traffic for that region flows (through a live, reachable
//! gateway) again within the detection time plus two ticks. At the end, with everything
//! alive, healed and pushed, every gateway's traffic goes through its first home and every
//! wanted link exists.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use nexus_federation::cluster::membership::{Member, Membership, WantedLink, route_via};
use nexus_federation::link::liveness::{Liveness, Probe};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const GATEWAYS: [(&str, &str); 6] = [
    ("a1", "a"),
    ("a2", "a"),
    ("a3", "a"),
    ("b1", "b"),
    ("b2", "b"),
    ("b3", "b"),
];
const TICK: u64 = 10;
/// A killed gateway stays registered this long (its lease).
const LEASE_MS: u64 = 2000;
/// Registrations reach every gateway's view this long after they change.
const PUSH_MS: u64 = 100;
/// Loopback RTT, as the links measure it.
const RTT: Duration = Duration::from_millis(1);

fn region_of(g: &str) -> &'static str {
    GATEWAYS.iter().find(|(id, _)| *id == g).unwrap().1
}

/// What one gateway's view decides: the links it wants, and its homes per region.
type Decided = (Vec<WantedLink>, HashMap<String, Vec<String>>);

/// One link between two gateways: each end's watchdog and what it has heard.
struct Link {
    watch: [Liveness; 2],
    heard: [u64; 2],
}

struct World {
    now: u64,
    alive: BTreeSet<String>,
    /// When each dead gateway died (its registration lapses `LEASE_MS` later).
    died_at: HashMap<String, u64>,
    /// Unordered pairs that cannot reach each other.
    cuts: BTreeSet<(String, String)>,
    /// Registry snapshots: (time, registered gateways), for the push delay.
    registry: Vec<(u64, BTreeSet<String>)>,
    /// Each gateway's view of the membership, and the registry it was built from.
    views: HashMap<String, (BTreeSet<String>, Membership)>,
    /// What each view decides, computed once per view: the links it wants, and its homes
    /// per other region.
    decided: HashMap<String, Decided>,
    links: BTreeMap<(String, String), Link>,
    /// Per (gateway, other region): since when its traffic there has not flowed although a
    /// home in its view was alive and reachable.
    stuck_since: HashMap<(String, String), u64>,
}

fn pair(x: &str, y: &str) -> (String, String) {
    if x < y {
        (x.to_owned(), y.to_owned())
    } else {
        (y.to_owned(), x.to_owned())
    }
}

fn member(g: &str) -> Member {
    Member {
        gateway_id: g.to_owned(),
        region: region_of(g).to_owned(),
        addr: format!("{g}:7424"),
    }
}

impl World {
    fn new() -> Self {
        let all: BTreeSet<String> = GATEWAYS.iter().map(|(g, _)| g.to_string()).collect();
        let mut w = World {
            now: 0,
            alive: all.clone(),
            died_at: HashMap::new(),
            cuts: BTreeSet::new(),
            registry: vec![(0, all)],
            views: HashMap::new(),
            decided: HashMap::new(),
            links: BTreeMap::new(),
            stuck_since: HashMap::new(),
        };
        w.push_views();
        w
    }

    fn reachable(&self, x: &str, y: &str) -> bool {
        self.alive.contains(x) && self.alive.contains(y) && !self.cuts.contains(&pair(x, y))
    }

    fn registered_now(&self) -> BTreeSet<String> {
        GATEWAYS
            .iter()
            .map(|(g, _)| g.to_string())
            .filter(|g| {
                self.alive.contains(g)
                    || self.died_at.get(g).is_some_and(|t| self.now < t + LEASE_MS)
            })
            .collect()
    }

    /// Every live gateway's view becomes the registry as of `PUSH_MS` ago.
    fn push_views(&mut self) {
        let cutoff = self.now.saturating_sub(PUSH_MS);
        let seen = self
            .registry
            .iter()
            .rev()
            .find(|(t, _)| *t <= cutoff)
            .map(|(_, r)| r.clone())
            .unwrap_or_default();
        for g in self.alive.clone() {
            if self.views.get(&g).is_some_and(|(r, _)| *r == seen) {
                continue;
            }
            // A gateway always counts itself, registered yet or not.
            let mut with_me = seen.clone();
            with_me.insert(g.clone());
            let members: Vec<Member> = with_me.iter().map(|m| member(m)).collect();
            let view = Membership::new(members);
            let homes = ["a", "b"]
                .iter()
                .map(|r| {
                    let ids = view.homes(&g, r).into_iter().map(|m| m.gateway_id.clone());
                    (r.to_string(), ids.collect())
                })
                .collect();
            self.decided
                .insert(g.clone(), (view.wanted(&g, region_of(&g)), homes));
            self.views.insert(g.clone(), (seen.clone(), view));
        }
    }

    fn kill(&mut self, g: &str) {
        self.alive.remove(g);
        self.died_at.insert(g.to_owned(), self.now);
        self.views.remove(g);
        self.decided.remove(g);
        self.links.retain(|(x, y), _| x != g && y != g);
    }

    fn restart(&mut self, g: &str) {
        self.alive.insert(g.to_owned());
        self.died_at.remove(g);
    }

    /// The gateway `g`'s traffic for `region` goes through now.
    fn route(&self, g: &str, region: &str) -> Option<String> {
        let homes = &self.decided.get(g)?.1[region];
        let linked: Vec<String> = self
            .links
            .keys()
            .filter_map(|(x, y)| {
                let peer = if x == g {
                    y
                } else if y == g {
                    x
                } else {
                    return None;
                };
                (region_of(peer) == region).then(|| peer.clone())
            })
            .collect();
        let is_linked = |h: &str| linked.iter().any(|l| l == h);
        route_via(homes, linked.iter().map(String::as_str), is_linked).map(str::to_owned)
    }

    fn step(&mut self) {
        self.now += TICK;
        let registered = self.registered_now();
        if self.registry.last().is_none_or(|(_, r)| *r != registered) {
            self.registry.push((self.now, registered));
        }
        self.push_views();
        let now = Duration::from_millis(self.now);

        // Links carry datagrams while both ends can reach each other; a watchdog that hears
        // nothing for the detection time ends the link.
        let mut dead = Vec::new();
        for ((x, y), link) in self.links.iter_mut() {
            let heard = !self.cuts.contains(&pair(x, y));
            for side in 0..2 {
                if heard {
                    link.heard[side] += 1;
                }
                if let Probe::Dead { .. } = link.watch[side].tick(now, link.heard[side], RTT) {
                    dead.push((x.clone(), y.clone()));
                }
            }
        }
        for k in dead {
            self.links.remove(&k);
        }

        // Dials: every wanted link its dialer does not have yet, to a reachable peer.
        let mut dials = Vec::new();
        for g in &self.alive {
            for want in &self.decided[g].0 {
                let peer = &want.peer.gateway_id;
                if want.dial && !self.links.contains_key(&pair(g, peer)) && self.reachable(g, peer)
                {
                    dials.push(pair(g, peer));
                }
            }
        }
        for k in dials {
            self.links.entry(k).or_insert_with(|| Link {
                watch: [Liveness::new(None, now), Liveness::new(None, now)],
                heard: [0, 0],
            });
        }
    }

    /// The checks of every tick.
    fn check(&mut self, seed: u64) {
        // Agreement on links between gateways with the same view.
        for g in &self.alive {
            let reg_g = &self.views[g].0;
            for want in &self.decided[g].0 {
                let p = &want.peer.gateway_id;
                let Some((reg_p, _)) = self.views.get(p) else {
                    continue;
                };
                // Only views of the same members must agree.
                let with = |r: &BTreeSet<String>, me: &str| {
                    let mut r = r.clone();
                    r.insert(me.to_owned());
                    r
                };
                if with(reg_p, p) != with(reg_g, g) {
                    continue;
                }
                let back = self.decided[p].0.iter().find(|w| w.peer.gateway_id == *g);
                let back = back.unwrap_or_else(|| {
                    panic!("seed {seed}: {g} wants a link to {p}, which does not want it")
                });
                assert_ne!(
                    back.dial, want.dial,
                    "seed {seed}: {g} and {p} both dial, or neither"
                );
            }
        }
        // Routes point at linked gateways of the region; bounded re-homing.
        let dead_after = Liveness::new(None, Duration::ZERO)
            .dead_after(RTT)
            .as_millis() as u64;
        for g in self.alive.clone() {
            let my_region = region_of(&g);
            for region in ["a", "b"] {
                if region == my_region {
                    continue;
                }
                let via = self.route(&g, region);
                if let Some(v) = &via {
                    assert_eq!(
                        region_of(v),
                        region,
                        "seed {seed}: {g} routes {region} via {v}"
                    );
                    assert!(
                        self.links.contains_key(&pair(&g, v)),
                        "seed {seed}: {g} routes {region} via {v}, not linked"
                    );
                }
                let flows = via.as_deref().is_some_and(|v| self.reachable(&g, v));
                let home_reachable = self.decided[&g].1[region]
                    .iter()
                    .any(|h| self.reachable(&g, h));
                let key = (g.clone(), region.to_owned());
                if flows || !home_reachable {
                    self.stuck_since.remove(&key);
                    continue;
                }
                let since = *self.stuck_since.entry(key).or_insert(self.now);
                assert!(
                    self.now - since <= dead_after + 2 * TICK,
                    "seed {seed}: at {} ms {g}'s traffic for {region} has not flowed for {} ms (via {via:?}) though a home in its view is reachable",
                    self.now,
                    self.now - since
                );
            }
        }
    }
}

fn run(seed: u64) -> (usize, usize, usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut w = World::new();
    let (mut kills, mut cuts, mut restarts) = (0, 0, 0);
    let mut next_event = 1000;
    while w.now < 20_000 {
        if w.now >= next_event {
            let g = GATEWAYS[rng.random_range(0..GATEWAYS.len())].0;
            match rng.random_range(0..4) {
                0 if w.alive.contains(g) && w.alive.len() > 2 => {
                    w.kill(g);
                    kills += 1;
                }
                1 if !w.alive.contains(g) => {
                    w.restart(g);
                    restarts += 1;
                }
                2 => {
                    let h = GATEWAYS[rng.random_range(0..GATEWAYS.len())].0;
                    if g != h {
                        w.cuts.insert(pair(g, h));
                        cuts += 1;
                    }
                }
                _ => w.cuts.clear(),
            }
            next_event = w.now + rng.random_range(200..3000);
        }
        w.step();
        w.check(seed);
    }
    // Heal everything, bring everyone back, let the registry settle and push.
    w.cuts.clear();
    for (g, _) in GATEWAYS {
        if !w.alive.contains(g) {
            w.restart(g);
        }
    }
    for _ in 0..(LEASE_MS + PUSH_MS + 1000) / TICK {
        w.step();
        w.check(seed);
    }
    let full = Membership::new(GATEWAYS.iter().map(|(g, _)| member(g)));
    for (g, region) in GATEWAYS {
        for want in full.wanted(g, region) {
            assert!(
                w.links.contains_key(&pair(g, &want.peer.gateway_id)),
                "seed {seed}: after the heal {g} has no link to {}",
                want.peer.gateway_id
            );
        }
        let other = if region == "a" { "b" } else { "a" };
        assert_eq!(
            w.route(g, other).as_deref(),
            full.home(g, other).map(|m| m.gateway_id.as_str()),
            "seed {seed}: after the heal {g} does not go through its first home"
        );
    }
    (kills, cuts, restarts)
}

#[test]
fn links_agree_rehome_within_the_detection_time_and_converge_after_heals() {
    let schedules: u64 = std::env::var("NEXUS_LINK_MODEL_SCHEDULES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let (mut kills, mut cuts, mut restarts) = (0, 0, 0);
    for seed in 0..schedules {
        let (k, c, r) = run(seed);
        kills += k;
        cuts += c;
        restarts += r;
    }
    eprintln!("{schedules} schedules: {kills} kills, {restarts} restarts, {cuts} cuts");
    assert!(
        kills as u64 > schedules && cuts as u64 > schedules,
        "the schedules must do something"
    );
}
