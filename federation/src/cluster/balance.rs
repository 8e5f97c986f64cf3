//! Which gateway of the region takes a queue group's message or a request (sans-I/O): power
//! of two choices over the gateways that have members, each costed by a Peak-EWMA of the
//! latency measured through it, the hop between gateways included.
//!
//! The choice is in two levels, as a load balancer in front of load balancers: this module
//! picks a *gateway* (this one, or a cluster peer), and the gateway picked chooses the
//! *member* with its own balancer (`nexus_gateway::balancer`), which knows each member's
//! latency and queue. The members' individual estimates never cross the cluster: they change
//! with every message, and shipping them would cost more chatter than the choice gains.
//!
//! Costs, compared in nanoseconds as the member balancer does (`estimate x (load + 1)`):
//! - this gateway: the cheapest local member's estimate and load (pending requests plus
//!   queued frames), as its own balancer sees them;
//! - a cluster peer, for a **request**: the Peak-EWMA of the replies to requests on the same
//!   subject that came back through it, from sending to reply (so the hop's round trip and
//!   the peer's queueing are in it), times its requests in flight on that subject plus one.
//!   What a peer's responders of one service take says nothing about another's, so the
//!   state is kept per (peer, subject), at most [`MAX_SUBJECTS_PER_PEER`] subjects per peer
//!   (the least recently used idle one is forgotten first). A peer never measured starts at this gateway's
//!   own member estimate plus the hop's RTT (as fast as the local members, plus what the hop
//!   surely costs), entered as a sample that relaxes while the peer is not used, as every
//!   Peak-EWMA reading does: so with one request at a time an idle peer is probed now and
//!   then (after about `decay x ln(bias x (estimate + rtt) / estimate)`: 4.2 s for a 20 ms
//!   local responder, a 0.2 ms hop and the local bias of 1.5) and wins from then on if it
//!   answers faster, hop included;
//! - a cluster peer, for a **queue-group message**: this gateway's member estimate plus the
//!   hop's RTT, fixed. These messages get no replies, so nothing could correct a guess that
//!   relaxed, and what requests taught about a peer is about other traffic.
//!
//! So with idle members everywhere the local gateway wins (the hop makes every peer
//! dearer), as NATS prefers local queue subscribers; when local members queue up, or answer
//! slower than the hop plus a peer's members, work moves to peers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nexus_gateway::balancer::{GroupCost, PeakEwma};
use rand::Rng;

/// Who takes a message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Taker {
    /// A member of this gateway.
    Local,
    /// The cluster peer with this gateway id.
    Peer(String),
}

/// Subjects whose request latency is remembered per cluster peer; past it the least
/// recently used subject with no request in flight is forgotten (and starts again from the
/// guess if it comes back).
pub const MAX_SUBJECTS_PER_PEER: usize = 1024;

/// What this gateway knows of one cluster peer as a taker of requests on one subject.
#[derive(Debug, Clone)]
struct PeerLoad {
    /// Reply latency through the peer, hop included; `None` before the first reply.
    ewma: Option<PeakEwma>,
    /// Requests sent to the peer and not answered yet.
    pending: u32,
    /// When a request on this subject last went to the peer or was answered (for eviction).
    used: Instant,
}

impl PeerLoad {
    fn new(now: Instant) -> Self {
        Self {
            ewma: None,
            pending: 0,
            used: now,
        }
    }
}

/// The costs of the region's other gateways as takers, learnt from requests sent to them:
/// per gateway, per subject.
#[derive(Debug, Clone)]
pub struct GatewayBalance {
    peers: HashMap<String, HashMap<Box<str>, PeerLoad>>,
    /// Peak-EWMA time constant, as the member balancer's.
    decay: Duration,
}

impl Default for GatewayBalance {
    fn default() -> Self {
        Self::new(Duration::from_secs(10))
    }
}

fn nanos(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

impl GatewayBalance {
    pub fn new(decay: Duration) -> Self {
        Self {
            peers: HashMap::new(),
            decay,
        }
    }

    /// The cost of `local` as P2C compares it.
    pub fn local_cost(local: GroupCost) -> f64 {
        nanos(local.estimate) * (f64::from(local.load) + 1.0)
    }

    /// The cost of a request on `subject` to peer `gateway` over a link of round trip `rtt`
    /// at `now`; `local_estimate` is this gateway's own member estimate, the guess for a
    /// peer never considered before (see [`GatewayBalance::pick_for_request`]).
    pub fn peer_cost(
        &self,
        gateway: &str,
        subject: &str,
        rtt: Duration,
        local_estimate: Option<Duration>,
        now: Instant,
    ) -> f64 {
        let load = self.load(gateway, subject);
        let estimate = match load.and_then(|p| p.ewma.as_ref()) {
            Some(e) => e.estimate(now),
            None => local_estimate.unwrap_or_default() + rtt,
        };
        let pending = load.map_or(0, |p| p.pending);
        nanos(estimate) * (f64::from(pending) + 1.0)
    }

    /// Picks the gateway that takes a request: this one (when it has a responder: `local`,
    /// with its cost) or one of `peers` (gateway id and the link's RTT), by learnt reply
    /// latency. A peer seen for the first time is entered with this gateway's estimate plus
    /// the hop as a relaxing sample, so that it is eventually probed. `None` when there is
    /// no candidate.
    pub fn pick_for_request(
        &mut self,
        now: Instant,
        rng: &mut impl Rng,
        subject: &str,
        local: Option<GroupCost>,
        peers: &[(String, Duration)],
    ) -> Option<Taker> {
        let guess = local.map(|l| l.estimate).unwrap_or_default();
        let decay = self.decay;
        for (gw, rtt) in peers {
            if let Some(p) = self.entry(gw, subject, now)
                && p.ewma.is_none()
            {
                let mut e = PeakEwma::new(guess + *rtt, decay, now);
                e.observe(guess + *rtt, now);
                p.ewma = Some(e);
            }
        }
        let estimate = local.map(|l| l.estimate);
        pick(rng, local, peers, |gw, rtt| {
            self.peer_cost(gw, subject, rtt, estimate, now)
        })
    }

    /// What is known of `gateway` for requests on `subject`.
    fn load(&self, gateway: &str, subject: &str) -> Option<&PeerLoad> {
        self.peers.get(gateway)?.get(subject)
    }

    /// The state of (`gateway`, `subject`), made room for and marked used at `now`. Keys are
    /// allocated only the first time a gateway or a subject is seen (this runs on every
    /// request routed to a peer). Never `None`.
    fn entry(&mut self, gateway: &str, subject: &str, now: Instant) -> Option<&mut PeerLoad> {
        if !self.peers.contains_key(gateway) {
            self.peers.insert(gateway.to_owned(), HashMap::new());
        }
        let subjects = self.peers.get_mut(gateway)?;
        if !subjects.contains_key(subject) {
            if subjects.len() >= MAX_SUBJECTS_PER_PEER {
                let idle = subjects
                    .iter()
                    .filter(|(_, p)| p.pending == 0)
                    .min_by_key(|(_, p)| p.used)
                    .map(|(k, _)| k.clone());
                if let Some(k) = idle {
                    subjects.remove(&k);
                }
            }
            subjects.insert(subject.into(), PeerLoad::new(now));
        }
        let p = subjects.get_mut(subject)?;
        p.used = p.used.max(now);
        Some(p)
    }

    /// Picks the gateway that takes a queue group's message: this one (when it has a
    /// member: `local`) or one of `peers`, each peer costing `local`'s estimate plus its hop
    /// (or the hop alone when nothing is local). Reads nothing learnt from requests.
    pub fn pick_for_message(
        rng: &mut impl Rng,
        local: Option<GroupCost>,
        peers: &[(String, Duration)],
    ) -> Option<Taker> {
        let estimate = local.map(|l| l.estimate).unwrap_or_default();
        pick(rng, local, peers, |_, rtt| nanos(estimate + rtt))
    }

    /// A request on `subject` went to `gateway` at `now`.
    pub fn start(&mut self, gateway: &str, subject: &str, now: Instant) {
        if let Some(p) = self.entry(gateway, subject, now) {
            p.pending = p.pending.saturating_add(1);
        }
    }

    /// The reply from `gateway` to a request on `subject` came `latency` after sending, at
    /// `now`.
    pub fn success(&mut self, gateway: &str, subject: &str, latency: Duration, now: Instant) {
        let decay = self.decay;
        let Some(p) = self.entry(gateway, subject, now) else {
            return;
        };
        p.pending = p.pending.saturating_sub(1);
        match &mut p.ewma {
            Some(e) => e.observe(latency, now),
            None => {
                let mut e = PeakEwma::new(latency, decay, now);
                e.observe(latency, now);
                p.ewma = Some(e);
            }
        }
    }

    /// A request on `subject` to `gateway` ended without a latency worth learning (an
    /// error, a timeout, its link went down).
    pub fn done(&mut self, gateway: &str, subject: &str) {
        if let Some(p) = self.peers.get_mut(gateway).and_then(|s| s.get_mut(subject)) {
            p.pending = p.pending.saturating_sub(1);
        }
    }

    /// `gateway` left the region: forget what was learnt of it.
    pub fn forget(&mut self, gateway: &str) {
        self.peers.remove(gateway);
    }

    /// The current latency estimate of `gateway` for requests on `subject`, if measured,
    /// and its requests in flight on it.
    pub fn snapshot(&self, gateway: &str, subject: &str, now: Instant) -> (Option<Duration>, u32) {
        self.load(gateway, subject).map_or((None, 0), |p| {
            (p.ewma.as_ref().map(|e| e.estimate(now)), p.pending)
        })
    }

    /// How many subjects' latency is remembered for `gateway`.
    pub fn subjects_known(&self, gateway: &str) -> usize {
        self.peers.get(gateway).map_or(0, HashMap::len)
    }
}

/// How much cheaper than this gateway a peer must be to take work that a local member
/// could: its cost times this must still be lower. The hop costs CPU on two gateways and
/// cluster-link capacity that latency does not show, and without a margin every passing
/// peak of a local member (Peak-EWMA takes peaks at once) would send work over the hop.
pub const LOCAL_BIAS: f64 = 1.5;

/// P2C among `peers` (two distinct peers drawn, the cheaper by `peer_cost` kept), then this
/// gateway (when it has a member: `local`) against that peer, which must be cheaper by
/// [`LOCAL_BIAS`] to win.
///
/// Why this gateway is never left out of the draw: with plain P2C over three gateways an
/// idle local member would still lose a third of the messages (whenever the two peers are
/// drawn), each paying the hop for nothing.
fn pick(
    rng: &mut impl Rng,
    local: Option<GroupCost>,
    peers: &[(String, Duration)],
    peer_cost: impl Fn(&str, Duration) -> f64,
) -> Option<Taker> {
    let cost = |i: usize| {
        let (gw, rtt) = &peers[i];
        peer_cost(gw, *rtt)
    };
    let peer = match peers.len() {
        0 => None,
        1 => Some(0),
        n => {
            let a = rng.random_range(0..n);
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            Some(if cost(b) < cost(a) { b } else { a })
        }
    };
    match (local, peer) {
        (None, None) => None,
        (Some(_), None) => Some(Taker::Local),
        (None, Some(i)) => Some(Taker::Peer(peers[i].0.clone())),
        (Some(l), Some(i)) if cost(i) * LOCAL_BIAS < GatewayBalance::local_cost(l) => {
            Some(Taker::Peer(peers[i].0.clone()))
        }
        (Some(_), Some(_)) => Some(Taker::Local),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    fn local(estimate: Duration, load: u32) -> Option<GroupCost> {
        Some(GroupCost { estimate, load })
    }

    fn peers(list: &[(&str, Duration)]) -> Vec<(String, Duration)> {
        list.iter().map(|(g, r)| (g.to_string(), *r)).collect()
    }

    /// How many of `n` queue-group messages each taker gets.
    fn messages(
        local: Option<GroupCost>,
        peers: &[(String, Duration)],
        n: usize,
    ) -> HashMap<Taker, usize> {
        let mut rng = StdRng::seed_from_u64(7);
        let mut out = HashMap::new();
        for _ in 0..n {
            let t = GatewayBalance::pick_for_message(&mut rng, local, peers).unwrap();
            *out.entry(t).or_default() += 1;
        }
        out
    }

    fn peer(g: &str) -> Taker {
        Taker::Peer(g.to_string())
    }

    #[test]
    fn nothing_to_choose_from_and_one_candidate() {
        let mut b = GatewayBalance::default();
        let now = Instant::now();
        let mut rng = StdRng::seed_from_u64(1);
        let one = peers(&[("a2", us(200))]);
        assert_eq!(GatewayBalance::pick_for_message(&mut rng, None, &[]), None);
        assert_eq!(b.pick_for_request(now, &mut rng, "svc", None, &[]), None);
        assert_eq!(
            GatewayBalance::pick_for_message(&mut rng, local(ms(5), 9), &[]),
            Some(Taker::Local)
        );
        assert_eq!(
            b.pick_for_request(now, &mut rng, "svc", None, &one),
            Some(peer("a2"))
        );
    }

    #[test]
    fn an_idle_local_member_takes_queue_messages_and_a_loaded_one_gives_them_to_peers() {
        let two = peers(&[("a2", us(100)), ("a3", us(100))]);
        let t = messages(local(us(1000), 0), &two, 3000);
        assert_eq!(
            t.get(&Taker::Local),
            Some(&3000),
            "the hop makes peers dearer"
        );
        // Local members busy: the two peers share by the draw, neither starved.
        let t = messages(local(us(1000), 1), &two, 3000);
        assert_eq!(t.get(&Taker::Local), None);
        for g in ["a2", "a3"] {
            let n = t.get(&peer(g)).copied().unwrap_or(0);
            assert!(n > 1000, "{g}: {t:?}");
        }
        // Nothing local: the nearer peer whenever both are drawn.
        let t = messages(None, &peers(&[("a2", us(900)), ("a3", us(100))]), 100);
        assert_eq!(t.get(&peer("a3")), Some(&100));
    }

    #[test]
    fn queue_messages_ignore_what_requests_taught() {
        let mut b = GatewayBalance::default();
        let now = Instant::now();
        b.start("a2", "svc", now);
        b.success("a2", "svc", us(10), now);
        // The peer answered requests in 10 us, but queue messages still see it as the local
        // estimate plus the hop: an idle local member keeps them.
        let t = messages(local(ms(1), 0), &peers(&[("a2", us(100))]), 100);
        assert_eq!(t.get(&Taker::Local), Some(&100));
    }

    #[test]
    fn measured_replies_through_a_peer_decide_over_its_rtt() {
        let mut b = GatewayBalance::default();
        let now = Instant::now();
        let mut rng = StdRng::seed_from_u64(2);
        // a3 is nearer, but its responders answer in 40 ms; a2's in 3 ms.
        b.start("a3", "svc", now);
        b.success("a3", "svc", ms(40), now);
        b.start("a2", "svc", now);
        b.success("a2", "svc", ms(3), now);
        let both = peers(&[("a2", us(900)), ("a3", us(100))]);
        for _ in 0..100 {
            assert_eq!(
                b.pick_for_request(now, &mut rng, "svc", None, &both),
                Some(peer("a2"))
            );
        }
        // And a slow local responder loses to the fast peer, hop included.
        for _ in 0..100 {
            assert_eq!(
                b.pick_for_request(now, &mut rng, "svc", local(ms(20), 0), &both[..1]),
                Some(peer("a2"))
            );
        }
    }

    #[test]
    fn requests_in_flight_to_a_peer_make_it_dearer_until_answered() {
        let mut b = GatewayBalance::default();
        let now = Instant::now();
        let mut rng = StdRng::seed_from_u64(3);
        b.start("a2", "svc", now);
        b.success("a2", "svc", ms(2), now);
        let one = peers(&[("a2", us(100))]);
        // 2 ms x 2 (one in flight) against local 3 ms x 1: local.
        b.start("a2", "svc", now);
        assert_eq!(
            b.pick_for_request(now, &mut rng, "svc", local(ms(3), 0), &one),
            Some(Taker::Local)
        );
        b.done("a2", "svc");
        assert_eq!(
            b.pick_for_request(now, &mut rng, "svc", local(ms(4), 0), &one),
            Some(peer("a2")),
            "2 ms x 1.5 (the local bias) against 4 ms"
        );
        // Forgetting a peer drops what was learnt: back to the guess (3 ms + 0.1 ms).
        b.forget("a2");
        assert_eq!(b.snapshot("a2", "svc", now), (None, 0));
        assert_eq!(
            b.pick_for_request(now, &mut rng, "svc", local(ms(3), 0), &one),
            Some(Taker::Local)
        );
    }

    /// One request at a time for `secs` simulated seconds, every 10 ms: the local responder
    /// answers in `local_ms`, the peer's in `peer_ms` plus the hop. Returns how many went
    /// to the peer, and how many of the last 100.
    fn sequential(local_ms: u64, peer_ms: u64, secs: u64) -> (usize, usize) {
        let mut b = GatewayBalance::default();
        let mut rng = StdRng::seed_from_u64(4);
        let start = Instant::now();
        let hop = us(200);
        let one = peers(&[("a2", hop)]);
        let n = (secs * 100) as usize;
        let mut to_peer = Vec::with_capacity(n);
        for i in 0..n {
            let now = start + ms(10 * i as u64);
            let t = b.pick_for_request(now, &mut rng, "svc", local(ms(local_ms), 0), &one);
            let went = t == Some(peer("a2"));
            if went {
                b.start("a2", "svc", now);
                b.success("a2", "svc", ms(peer_ms) + hop, now);
            }
            to_peer.push(went);
        }
        (
            to_peer.iter().filter(|w| **w).count(),
            to_peer[n - 100..].iter().filter(|w| **w).count(),
        )
    }

    #[test]
    fn with_one_request_at_a_time_a_faster_peer_is_found_and_a_slower_one_only_probed() {
        // Local 20 ms, peer 1 ms: the peer's guess (20.2 ms) relaxes below 20 / 1.5 (the local
        // bias) after about 4.2 s; probed then, it takes everything from then on.
        let (_, last) = sequential(20, 1, 10);
        assert_eq!(last, 100);
        // Local 1 ms, peer 1 ms (+ hop): local keeps nearly everything; the peer is probed
        // now and then.
        let (all, _) = sequential(1, 1, 60);
        assert!(all > 0 && all < 6000 / 50, "{all} of 6000 went to the peer");
        // Local 1 ms, peer 40 ms: probed rarely.
        let (all, _) = sequential(1, 40, 60);
        assert!(all < 10, "{all} of 6000 went to the slow peer");
    }
    #[test]
    fn what_a_peer_taught_about_one_subject_does_not_price_another() {
        let mut b = GatewayBalance::default();
        let now = Instant::now();
        let mut rng = StdRng::seed_from_u64(5);
        let one = peers(&[("a2", us(100))]);
        // a2's responders of svc.slow answer in 100 ms, its svc.fast ones in 1 ms.
        for _ in 0..5 {
            b.start("a2", "svc.slow", now);
            b.success("a2", "svc.slow", ms(100), now);
            b.start("a2", "svc.fast", now);
            b.success("a2", "svc.fast", ms(1), now);
        }
        // A 20 ms local svc.fast responder loses to a2's, whatever svc.slow costs there.
        for _ in 0..100 {
            assert_eq!(
                b.pick_for_request(now, &mut rng, "svc.fast", local(ms(20), 0), &one),
                Some(peer("a2"))
            );
        }
        // A 20 ms local svc.slow responder keeps svc.slow.
        for _ in 0..100 {
            assert_eq!(
                b.pick_for_request(now, &mut rng, "svc.slow", local(ms(20), 0), &one),
                Some(Taker::Local)
            );
        }
        assert_eq!(b.snapshot("a2", "svc.fast", now).0, Some(ms(1)));
        assert_eq!(b.snapshot("a2", "svc.other", now), (None, 0));
    }

    #[test]
    fn subjects_per_peer_are_bounded_and_the_least_recently_used_idle_one_goes() {
        let mut b = GatewayBalance::default();
        let start = Instant::now();
        // One request in flight on the oldest subject: it must survive eviction.
        b.start("a2", "s.0", start);
        for i in 1..MAX_SUBJECTS_PER_PEER + 10 {
            let now = start + ms(i as u64);
            b.start("a2", &format!("s.{i}"), now);
            b.success("a2", &format!("s.{i}"), ms(1), now);
        }
        assert_eq!(b.subjects_known("a2"), MAX_SUBJECTS_PER_PEER);
        let later = start + ms(10_000);
        assert_eq!(b.snapshot("a2", "s.0", later).1, 1, "in flight: kept");
        assert_eq!(
            b.snapshot("a2", "s.1", later),
            (None, 0),
            "oldest idle: gone"
        );
        let last = format!("s.{}", MAX_SUBJECTS_PER_PEER + 9);
        assert!(b.snapshot("a2", &last, later).0.is_some());
        b.forget("a2");
        assert_eq!(b.subjects_known("a2"), 0);
    }
}
