//! Power-of-two-choices primitives: drawing two distinct candidates and
//! scoring them.
//!
//! Comparing two random members, rather than scanning for the global minimum,
//! is what keeps the balancer stable under stale information: many gateways
//! (or many picks before any reply) all agreeing on one "best" member would herd
//! onto it, while two random choices spread load and still avoid bad members
//! with high probability.

use rand::Rng;

/// Two distinct indexes in `0..n`, uniformly; `None` if `n < 2`.
///
/// Drawing the second index from `n - 1` slots and skipping the first avoids a
/// retry loop, so the cost is exactly two draws.
pub(crate) fn two_distinct(n: usize, rng: &mut impl Rng) -> Option<(usize, usize)> {
    if n < 2 {
        return None;
    }
    let a = rng.random_range(0..n);
    let mut b = rng.random_range(0..n - 1);
    if b >= a {
        b += 1;
    }
    Some((a, b))
}

/// Expected cost of sending one more request: the latency estimate scaled by
/// the work already queued there (the `+ 1` is the request being placed).
pub(crate) fn cost(estimate_ns: f64, pending: u32, extra_load: u32) -> f64 {
    estimate_ns * (f64::from(pending) + f64::from(extra_load) + 1.0)
}

#[cfg(test)]
mod tests {
    use super::super::{Balancer, BalancerConfig, MemberId};
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    const MS: Duration = Duration::from_millis(1);

    /// A queue group fed only by publishes never measures latency: members joined at
    /// different times must still share the work evenly (by load, ties broken at random).
    #[test]
    fn unmeasured_members_share_evenly_whenever_they_joined() {
        let t0 = Instant::now();
        let mut b = Balancer::new(BalancerConfig::default());
        b.add(1, t0);
        b.add(2, t0 + 5 * MS);
        b.add(3, t0 + 900 * MS);
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts: HashMap<MemberId, u32> = HashMap::new();
        for i in 0..3000u32 {
            let now = t0 + Duration::from_secs(1) + MS * i;
            let id = b.pick(now, &mut rng, |_| 0).unwrap();
            *counts.entry(id).or_default() += 1;
        }
        for id in 1..=3 {
            let c = counts.get(&id).copied().unwrap_or(0);
            assert!((800..1200).contains(&c), "member {id}: {counts:?}");
        }
    }

    #[test]
    fn two_distinct_is_distinct_and_covers_all_pairs() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(two_distinct(0, &mut rng), None);
        assert_eq!(two_distinct(1, &mut rng), None);
        let mut seen = [[0u32; 4]; 4];
        for _ in 0..10_000 {
            let (a, b) = two_distinct(4, &mut rng).expect("n >= 2");
            assert_ne!(a, b);
            seen[a][b] += 1;
        }
        for (a, row) in seen.iter().enumerate() {
            for (b, &count) in row.iter().enumerate() {
                // 10_000 / 12 ordered pairs ~= 833 each.
                assert!(a == b || count > 600, "pair ({a},{b}) seen {count}");
            }
        }
    }

    #[test]
    fn cost_scales_with_load() {
        assert_eq!(cost(10.0, 0, 0), 10.0);
        assert_eq!(cost(10.0, 2, 1), 40.0);
        assert!(cost(1e30, u32::MAX, u32::MAX).is_finite());
    }

    #[test]
    fn fast_member_takes_the_majority() {
        let t0 = Instant::now();
        let mut rng = StdRng::seed_from_u64(7);
        let mut b = Balancer::new(BalancerConfig::default());
        let latency: HashMap<MemberId, Duration> = [(1, MS), (2, 10 * MS), (3, 100 * MS)].into();
        for id in [1, 2, 3] {
            b.add(id, t0);
        }
        let mut counts: HashMap<MemberId, u32> = HashMap::new();
        let mut t = t0;
        for _ in 0..10_000 {
            let id = b.pick(t, &mut rng, |_| 0).expect("non-empty");
            b.start(id);
            let _ = b.success(id, latency[&id], t);
            *counts.entry(id).or_default() += 1;
            t += MS;
        }
        let share = |id| f64::from(counts.get(&id).copied().unwrap_or(0)) / 10_000.0;
        eprintln!(
            "shares: 1ms={} 10ms={} 100ms={}",
            share(1),
            share(2),
            share(3)
        );
        // With three members and nothing pending, P2C caps the best member near
        // 2/3: the pair that excludes it goes to the 10ms member.
        assert!(share(1) > 0.6, "1ms share {}", share(1));
        assert!(share(1) > share(2) && share(2) >= share(3));
        assert!(share(3) < 0.05, "100ms share {}", share(3));
    }

    /// Open-loop simulation: a request arrives every `gap`, requests overlap.
    /// Returns the members picked, in order.
    fn open_loop(
        b: &mut Balancer,
        rng: &mut StdRng,
        start: Instant,
        requests: usize,
        gap: Duration,
        latency: &HashMap<MemberId, Duration>,
        inflight: &mut Vec<(Instant, MemberId)>,
    ) -> (Vec<MemberId>, Instant) {
        let mut picked = Vec::with_capacity(requests);
        let mut t = start;
        for _ in 0..requests {
            inflight.sort_by_key(|&(done, _)| std::cmp::Reverse(done));
            while inflight.last().is_some_and(|&(done, _)| done <= t) {
                if let Some((done, id)) = inflight.pop() {
                    let lat = latency.get(&id).copied().unwrap_or(MS);
                    let _ = b.success(id, lat, done);
                }
            }
            let id = b.pick(t, rng, |_| 0).expect("non-empty");
            b.start(id);
            inflight.push((t + latency.get(&id).copied().unwrap_or(MS), id));
            picked.push(id);
            t += gap;
        }
        (picked, t)
    }

    #[test]
    fn new_member_gets_traffic_in_a_warm_group() {
        let t0 = Instant::now();
        let mut rng = StdRng::seed_from_u64(5);
        let mut b = Balancer::new(BalancerConfig::default());
        let latency: HashMap<MemberId, Duration> =
            [(1, 20 * MS), (2, 20 * MS), (3, 20 * MS), (4, 20 * MS)].into();
        for id in [1, 2, 3] {
            b.add(id, t0);
        }
        let mut inflight = Vec::new();
        // ~10 requests in flight across three members.
        let gap = 2 * MS;
        let (_, t) = open_loop(&mut b, &mut rng, t0, 20_000, gap, &latency, &mut inflight);

        b.add(4, t);
        let (picked, _) = open_loop(&mut b, &mut rng, t, 5_000, gap, &latency, &mut inflight);
        let first = picked.iter().position(|&id| id == 4);
        assert!(
            first.is_some_and(|i| i < 20),
            "first pick of new member at {first:?}"
        );
        let share = picked.iter().filter(|&&id| id == 4).count() as f64 / picked.len() as f64;
        eprintln!("new member share: {share}");
        assert!(share > 0.15, "new member share {share}");
    }

    #[test]
    fn extra_load_steers_away() {
        let t0 = Instant::now();
        let mut rng = StdRng::seed_from_u64(9);
        let mut b = Balancer::new(BalancerConfig::default());
        b.add(1, t0);
        b.add(2, t0);
        for _ in 0..100 {
            assert_eq!(
                b.pick(t0, &mut rng, |id| if id == 1 { 50 } else { 0 }),
                Some(2)
            );
        }
    }
}
