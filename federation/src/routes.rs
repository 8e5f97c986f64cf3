//! Routes as the federation applies them: which route governs a subject, and which regions a
//! message or request goes to under the route's policy. Sans-I/O: callers pass the regions
//! with interest, their link costs and a random source; nothing here reads clocks or sockets.
//!
//! Policies (from the control plane's routes):
//! - `broadcast`: every region with interest gets published messages (the default for
//!   subjects no route covers); a request goes to the cheapest region, as under `nearest`.
//! - `local_first`: stay in the region while it has subscribers or responders; otherwise the
//!   cheapest other region, switching only when another is clearly cheaper (damping).
//! - `nearest`: the cheapest region with interest, damped the same way.
//! - `pinned(region)`: that region, then the failover order.
//! - `weighted{region: w}`: one region at random in proportion to its weight among those
//!   with interest, then the failover order.
//!
//! Published messages always reach this region's own subscribers; the policy decides which
//! *other* regions get a copy. The failover order is used when the policy's choice has no
//! interest or no link.

use std::collections::HashMap;

use nexus_proto::subject::matches;
use nexus_proto::v1::{Consistency, Route, RoutePolicy};
use rand::Rng;

/// A challenger region must be this much cheaper than the current choice to take over, so
/// that small RTT wobbles do not make traffic flap between two similar regions.
pub const SWITCH_RATIO: f64 = 0.75;
/// Sync publishes wait this long for their quorum when the route does not say.
pub const DEFAULT_SYNC_TIMEOUT_MS: u32 = 5_000;

/// How a route's messages cross regions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    Local,
    BestEffort,
    Async,
    Sync,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Local => "local",
            Mode::BestEffort => "best_effort",
            Mode::Async => "async",
            Mode::Sync => "sync",
        }
    }

    /// Whether messages go through the durable spool.
    pub fn spooled(self) -> bool {
        matches!(self, Mode::Async | Mode::Sync)
    }
}

/// The policy part of a route.
#[derive(Clone, Debug, PartialEq)]
pub enum Policy {
    Broadcast,
    LocalFirst,
    Nearest,
    Pinned(String),
    Weighted(Vec<(String, u32)>),
}

impl Policy {
    pub fn describe(&self) -> String {
        match self {
            Policy::Broadcast => "broadcast".into(),
            Policy::LocalFirst => "local_first".into(),
            Policy::Nearest => "nearest".into(),
            Policy::Pinned(r) => format!("pinned({r})"),
            Policy::Weighted(w) => format!(
                "weighted{{{}}}",
                w.iter()
                    .map(|(r, w)| format!("{r}: {w}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// One route, ready to apply.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub name: String,
    pub version: i64,
    pub subjects: Vec<String>,
    pub policy: Policy,
    pub failover: Vec<String>,
    pub mode: Mode,
    /// Sync: regions that must persist before the publisher is acknowledged (0 = all).
    pub sync_quorum: u32,
    pub sync_timeout_ms: u32,
}

impl Rule {
    /// What applies to subjects no route covers: today's behaviour of a plain message
    /// router — every interested region, best effort.
    pub fn default_rule() -> Self {
        Rule {
            name: "(default)".into(),
            version: 0,
            subjects: vec![">".into()],
            policy: Policy::Broadcast,
            failover: Vec::new(),
            mode: Mode::BestEffort,
            sync_quorum: 0,
            sync_timeout_ms: DEFAULT_SYNC_TIMEOUT_MS,
        }
    }

    pub fn from_route(r: &Route) -> Self {
        let policy = match RoutePolicy::try_from(r.policy).unwrap_or(RoutePolicy::Unspecified) {
            RoutePolicy::LocalFirst | RoutePolicy::Unspecified => Policy::LocalFirst,
            RoutePolicy::Nearest => Policy::Nearest,
            RoutePolicy::Pinned => Policy::Pinned(r.pinned_region.clone()),
            RoutePolicy::Weighted => {
                let mut w: Vec<(String, u32)> =
                    r.weights.iter().map(|(k, v)| (k.clone(), *v)).collect();
                w.sort();
                Policy::Weighted(w)
            }
            RoutePolicy::Broadcast => Policy::Broadcast,
        };
        let mode = match Consistency::try_from(r.consistency).unwrap_or(Consistency::Unspecified) {
            Consistency::Local => Mode::Local,
            Consistency::BestEffort | Consistency::Unspecified => Mode::BestEffort,
            Consistency::Async => Mode::Async,
            Consistency::Sync => Mode::Sync,
        };
        Rule {
            name: r.name.clone(),
            version: r.version,
            subjects: r.subjects.clone(),
            policy,
            failover: r.failover.clone(),
            mode,
            sync_quorum: r.sync_quorum,
            sync_timeout_ms: if r.sync_timeout_ms == 0 {
                DEFAULT_SYNC_TIMEOUT_MS
            } else {
                r.sync_timeout_ms
            },
        }
    }
}

/// How specific a pattern is: literal tokens count most, `*` less, `>` least; the most
/// specific matching pattern's route wins, ties go to the route name that sorts first.
fn specificity(pattern: &str) -> (u32, u32) {
    let mut literal = 0;
    let mut single = 0;
    for token in pattern.split('.') {
        match token {
            ">" => {}
            "*" => single += 1,
            _ => literal += 1,
        }
    }
    (literal, single)
}

/// Every route, resolved per subject.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    rules: Vec<Rule>,
    default: Option<Rule>,
}

impl RouteTable {
    pub fn new(routes: &[Route]) -> Self {
        let mut rules: Vec<Rule> = routes.iter().map(Rule::from_route).collect();
        rules.sort_by(|a, b| a.name.cmp(&b.name));
        RouteTable {
            rules,
            default: Some(Rule::default_rule()),
        }
    }

    /// The route governing `subject` and the pattern that matched (`None` for the default).
    pub fn resolve(&self, subject: &str) -> (&Rule, Option<&str>) {
        let mut best: Option<(&Rule, &str, (u32, u32))> = None;
        for rule in &self.rules {
            for p in &rule.subjects {
                if matches(p, subject) {
                    let s = specificity(p);
                    if best.is_none_or(|(_, _, bs)| s > bs) {
                        best = Some((rule, p, s));
                    }
                }
            }
        }
        match best {
            Some((rule, p, _)) => (rule, Some(p)),
            None => (
                self.default.as_ref().unwrap_or_else(|| default_rule_ref()),
                None,
            ),
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

fn default_rule_ref() -> &'static Rule {
    static DEFAULT: std::sync::OnceLock<Rule> = std::sync::OnceLock::new();
    DEFAULT.get_or_init(Rule::default_rule)
}

/// A region that could take a message, as the caller sees it now.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub region: String,
    /// Whether the region advertised interest in the subject.
    pub interest: bool,
    /// Whether a link to it is up.
    pub up: bool,
    /// Estimated cost in microseconds (link RTT plus the region's service latency, times
    /// outstanding requests + 1); `None` when unknown.
    pub cost_us: Option<f64>,
}

impl Candidate {
    fn usable(&self) -> bool {
        self.interest && self.up
    }
}

/// Where a message goes, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    /// Other regions to send to (empty: this region only, or nowhere).
    pub regions: Vec<String>,
    /// Whether this region's own subscribers or responders handle it.
    pub local: bool,
    pub reason: String,
}

/// Per-route memory of the last choice, for damping.
#[derive(Debug, Default)]
pub struct Damping {
    current: HashMap<String, String>,
}

impl Damping {
    /// Picks the cheapest usable candidate, but keeps the route's current region unless the
    /// challenger costs less than [`SWITCH_RATIO`] of it.
    fn cheapest<'a>(&mut self, route: &str, usable: &[&'a Candidate]) -> Option<&'a Candidate> {
        let cost = |c: &Candidate| c.cost_us.unwrap_or(f64::MAX);
        let best = usable
            .iter()
            .copied()
            .min_by(|a, b| cost(a).total_cmp(&cost(b)))?;
        let chosen = match self
            .current
            .get(route)
            .and_then(|cur| usable.iter().find(|c| &c.region == cur))
        {
            Some(cur) if cost(best) >= cost(cur) * SWITCH_RATIO => *cur,
            _ => best,
        };
        self.current.insert(route.to_owned(), chosen.region.clone());
        Some(chosen)
    }
}

/// What the choice is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traffic {
    /// A published message: local subscribers always get it; the policy picks other regions.
    Publish,
    /// A request: exactly one region answers.
    Request,
}

/// Applies `rule` to the candidates. `local` says whether this region has subscribers (for
/// publishes) or responders (for requests) for the subject.
pub fn choose(
    rule: &Rule,
    traffic: Traffic,
    local: bool,
    candidates: &[Candidate],
    damping: &mut Damping,
    rng: &mut impl Rng,
) -> Choice {
    if rule.mode == Mode::Local {
        return Choice {
            regions: Vec::new(),
            local,
            reason: format!(
                "route {} is local: messages never leave the region",
                rule.name
            ),
        };
    }
    let usable: Vec<&Candidate> = candidates.iter().filter(|c| c.usable()).collect();
    let failover = |why: String| -> Choice {
        for region in &rule.failover {
            if let Some(c) = usable.iter().find(|c| &c.region == region) {
                return Choice {
                    regions: vec![c.region.clone()],
                    local,
                    reason: format!("{why}; failover to {region}"),
                };
            }
        }
        Choice {
            regions: Vec::new(),
            local,
            reason: format!("{why}; no failover region has interest and a link"),
        }
    };
    let cheapest = |damping: &mut Damping, why: &str| -> Choice {
        match damping.cheapest(&rule.name, &usable) {
            Some(c) => Choice {
                regions: vec![c.region.clone()],
                local: false,
                reason: format!(
                    "{why}: {} is the cheapest region with interest ({})",
                    c.region,
                    c.cost_us.map_or("cost unknown".into(), |us| format!(
                        "cost {:.1} ms",
                        us / 1e3
                    ))
                ),
            },
            None => failover(format!("{why}: no other region has interest and a link")),
        }
    };
    match (&rule.policy, traffic) {
        (Policy::Broadcast, Traffic::Publish) => Choice {
            regions: usable.iter().map(|c| c.region.clone()).collect(),
            local,
            reason: "broadcast: every region with interest".into(),
        },
        (Policy::Broadcast | Policy::Nearest | Policy::LocalFirst, Traffic::Request)
        | (Policy::Nearest | Policy::LocalFirst, Traffic::Publish)
            if local =>
        {
            Choice {
                regions: Vec::new(),
                local: true,
                reason: "this region has interest".into(),
            }
        }
        (Policy::Broadcast | Policy::Nearest | Policy::LocalFirst, _) => {
            cheapest(damping, "no local interest")
        }
        (Policy::Pinned(region), _) => {
            if usable.iter().any(|c| &c.region == region) {
                Choice {
                    regions: vec![region.clone()],
                    local: local && traffic == Traffic::Publish,
                    reason: format!("pinned to {region}"),
                }
            } else if local && traffic == Traffic::Request {
                Choice {
                    regions: Vec::new(),
                    local: true,
                    reason: format!("pinned to {region}, which is this region"),
                }
            } else {
                failover(format!("pinned region {region} has no interest or no link"))
            }
        }
        (Policy::Weighted(weights), _) => {
            let pool: Vec<(&str, u32)> = weights
                .iter()
                .filter(|(r, w)| *w > 0 && usable.iter().any(|c| &c.region == r))
                .map(|(r, w)| (r.as_str(), *w))
                .collect();
            let total: u64 = pool.iter().map(|(_, w)| u64::from(*w)).sum();
            if total == 0 {
                return failover("no weighted region has interest and a link".into());
            }
            let mut pick = rng.random_range(0..total);
            for (region, w) in &pool {
                if pick < u64::from(*w) {
                    return Choice {
                        regions: vec![(*region).to_owned()],
                        local: local && traffic == Traffic::Publish,
                        reason: format!("weighted: chose {region} (weight {w} of {total})"),
                    };
                }
                pick -= u64::from(*w);
            }
            failover("weighted choice fell through".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rule(policy: Policy, mode: Mode) -> Rule {
        Rule {
            name: "r".into(),
            policy,
            mode,
            failover: vec!["c".into()],
            ..Rule::default_rule()
        }
    }

    fn cand(region: &str, interest: bool, up: bool, cost_ms: f64) -> Candidate {
        Candidate {
            region: region.into(),
            interest,
            up,
            cost_us: Some(cost_ms * 1e3),
        }
    }

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    #[test]
    fn most_specific_route_wins() {
        let mk = |name: &str, subj: &str| Route {
            name: name.into(),
            subjects: vec![subj.into()],
            ..Default::default()
        };
        let t = RouteTable::new(&[
            mk("all", ">"),
            mk("orders", "orders.*"),
            mk("eu", "orders.eu"),
        ]);
        assert_eq!(t.resolve("orders.eu").0.name, "eu");
        assert_eq!(t.resolve("orders.us").0.name, "orders");
        assert_eq!(t.resolve("billing.x").0.name, "all");
        let empty = RouteTable::new(&[]);
        assert_eq!(empty.resolve("x").0.name, "(default)");
        assert_eq!(empty.resolve("x").0.mode, Mode::BestEffort);
    }

    #[test]
    fn broadcast_publishes_to_every_usable_region() {
        let c = [
            cand("a", true, true, 5.0),
            cand("b", true, false, 1.0),
            cand("c", false, true, 1.0),
        ];
        let ch = choose(
            &Rule::default_rule(),
            Traffic::Publish,
            true,
            &c,
            &mut Damping::default(),
            &mut rng(),
        );
        assert_eq!(ch.regions, vec!["a"]);
        assert!(ch.local);
    }

    #[test]
    fn local_first_stays_local_then_takes_the_cheapest() {
        let r = rule(Policy::LocalFirst, Mode::BestEffort);
        let c = [cand("a", true, true, 40.0), cand("b", true, true, 5.0)];
        let mut d = Damping::default();
        let ch = choose(&r, Traffic::Request, true, &c, &mut d, &mut rng());
        assert!(ch.local && ch.regions.is_empty());
        let ch = choose(&r, Traffic::Request, false, &c, &mut d, &mut rng());
        assert_eq!(ch.regions, vec!["b"]);
    }

    #[test]
    fn damping_keeps_the_current_region_until_a_challenger_is_clearly_cheaper() {
        let r = rule(Policy::Nearest, Mode::BestEffort);
        let mut d = Damping::default();
        // (a's link up, a's cost, b's cost) -> the region requests go to.
        let mut pick = |a_up: bool, a_ms: f64, b_ms: f64| {
            let c = [cand("a", true, a_up, a_ms), cand("b", true, true, b_ms)];
            choose(&r, Traffic::Request, false, &c, &mut d, &mut rng()).regions
        };
        assert_eq!(pick(true, 10.0, 12.0), vec!["a"]);
        // b is now a bit cheaper: not enough to switch.
        assert_eq!(pick(true, 10.0, 9.0), vec!["a"]);
        // b is much cheaper: switch.
        assert_eq!(pick(true, 10.0, 5.0), vec!["b"]);
        // a's link goes down: b regardless.
        assert_eq!(pick(false, 1.0, 5.0), vec!["b"]);
    }

    #[test]
    fn pinned_uses_failover_when_its_region_is_unavailable() {
        let r = rule(Policy::Pinned("a".into()), Mode::Async);
        let c = [cand("a", true, false, 1.0), cand("c", true, true, 50.0)];
        let ch = choose(
            &r,
            Traffic::Publish,
            false,
            &c,
            &mut Damping::default(),
            &mut rng(),
        );
        assert_eq!(ch.regions, vec!["c"]);
        assert!(ch.reason.contains("failover to c"), "{}", ch.reason);
        let c = [cand("a", true, true, 1.0), cand("c", true, true, 50.0)];
        let ch = choose(
            &r,
            Traffic::Publish,
            false,
            &c,
            &mut Damping::default(),
            &mut rng(),
        );
        assert_eq!(ch.regions, vec!["a"]);
    }

    #[test]
    fn weighted_follows_the_weights() {
        let r = rule(
            Policy::Weighted(vec![("a".into(), 3), ("b".into(), 1)]),
            Mode::BestEffort,
        );
        let c = [cand("a", true, true, 1.0), cand("b", true, true, 1.0)];
        let mut d = Damping::default();
        let mut g = rng();
        let a = (0..4000)
            .filter(|_| {
                choose(&r, Traffic::Request, false, &c, &mut d, &mut g).regions == vec!["a"]
            })
            .count();
        assert!((2700..3300).contains(&a), "{a}");
        // Only b usable: always b.
        let c = [cand("a", true, false, 1.0), cand("b", true, true, 1.0)];
        assert_eq!(
            choose(&r, Traffic::Request, false, &c, &mut d, &mut g).regions,
            vec!["b"]
        );
    }

    #[test]
    fn local_mode_never_leaves() {
        let r = rule(Policy::Broadcast, Mode::Local);
        let c = [cand("a", true, true, 1.0)];
        let ch = choose(
            &r,
            Traffic::Publish,
            false,
            &c,
            &mut Damping::default(),
            &mut rng(),
        );
        assert!(ch.regions.is_empty());
    }
}
