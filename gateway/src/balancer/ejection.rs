//! Outlier-ejection policy: when a member is taken out of rotation, for how
//! long, and how many members may be out at once.
//!
//! The functions here are pure so the rules can be read (and tested) apart from
//! the bookkeeping in [`super::Balancer`]. Two triggers exist:
//! - consecutive errors/timeouts, which catch members that are down or broken;
//! - a latency outlier test against the group median, which catches members
//!   that still answer but far slower than their peers (P2C alone only reduces
//!   their share; under load they would still receive traffic).
//!
//! Backoff: the n-th ejection of a member lasts `min(base * n, max)`, so a
//! flapping member is kept out longer each time. A member is forgiven one level
//! of that backoff for every `max_ejection` it stays in rotation since it last
//! returned: a member that has been healthy for the longest possible ejection
//! period has earned a step back, and one that flaps right after returning has
//! not.

use std::time::Duration;

/// Why a member was ejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EjectReason {
    /// `consecutive_failures` errors/timeouts in a row.
    ConsecutiveFailures,
    /// Latency estimate far above the group median.
    Latency,
}

impl EjectReason {
    /// Stable lowercase label, suitable for a metrics label value.
    pub fn as_str(self) -> &'static str {
        match self {
            EjectReason::ConsecutiveFailures => "consecutive_failures",
            EjectReason::Latency => "latency",
        }
    }
}

/// An ejection that just happened; returned so the caller can count and log it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ejection {
    pub member: super::MemberId,
    /// How long the member is out of rotation.
    pub period: Duration,
    pub reason: EjectReason,
}

/// How many of `members` may be ejected at the same time.
///
/// At least one once there are two members (a percentage of a small group
/// rounds to zero, which would disable ejection exactly where a single bad
/// member hurts most), never all of them (the group must keep serving), and
/// never a lone member (it has nobody to hand its traffic to).
pub(crate) fn max_ejected(members: usize, percent: u8) -> usize {
    if members < 2 {
        return 0;
    }
    let share = members.saturating_mul(usize::from(percent.min(100))) / 100;
    share.max(1).min(members - 1)
}

/// Length of an ejection at backoff `level` (1 for the first ejection).
pub(crate) fn ejection_period(base: Duration, max: Duration, level: u32) -> Duration {
    base.checked_mul(level).map_or(max, |p| p.min(max))
}

/// Backoff levels forgiven after staying in rotation for `healthy`.
pub(crate) fn forgiven_levels(healthy: Duration, interval: Duration) -> u32 {
    let interval = interval.as_nanos();
    if interval == 0 {
        // With a zero maximum every ejection is zero-length anyway.
        return 0;
    }
    u32::try_from(healthy.as_nanos() / interval).unwrap_or(u32::MAX)
}

/// Lower median of `values` (reordering them), `None` if empty.
///
/// The lower median keeps a pair meaningful: in a group of two the slower
/// member is compared against the faster one, not against their midpoint
/// (which a 5x outlier could never exceed by a factor of 5).
pub(crate) fn lower_median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mid = (values.len() - 1) / 2;
    let (_, m, _) = values.select_nth_unstable_by(mid, f64::total_cmp);
    Some(*m)
}

#[cfg(test)]
mod tests {
    use super::super::{Balancer, BalancerConfig, MemberId};
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::time::Instant;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn cap_rules() {
        assert_eq!(max_ejected(0, 10), 0);
        assert_eq!(max_ejected(1, 100), 0);
        assert_eq!(max_ejected(2, 10), 1);
        assert_eq!(max_ejected(2, 100), 1);
        assert_eq!(max_ejected(3, 10), 1);
        assert_eq!(max_ejected(3, 0), 1);
        assert_eq!(max_ejected(20, 10), 2);
        assert_eq!(max_ejected(20, 255), 19);
        assert_eq!(max_ejected(usize::MAX, 50), usize::MAX / 100);
    }

    #[test]
    fn period_rules() {
        let s = Duration::from_secs;
        assert_eq!(ejection_period(s(30), s(300), 1), s(30));
        assert_eq!(ejection_period(s(30), s(300), 2), s(60));
        assert_eq!(ejection_period(s(30), s(300), 11), s(300));
        assert_eq!(ejection_period(Duration::MAX, s(300), 2), s(300));
        assert_eq!(forgiven_levels(s(299), s(300)), 0);
        assert_eq!(forgiven_levels(s(600), s(300)), 2);
        assert_eq!(
            forgiven_levels(Duration::MAX, Duration::from_nanos(1)),
            u32::MAX
        );
        assert_eq!(forgiven_levels(s(600), Duration::ZERO), 0);
    }

    #[test]
    fn median_rules() {
        assert_eq!(lower_median(&mut []), None);
        assert_eq!(lower_median(&mut [3.0]), Some(3.0));
        assert_eq!(lower_median(&mut [300.0, 5.0]), Some(5.0));
        assert_eq!(lower_median(&mut [300.0, 5.0, 6.0, 5.0, 5.0]), Some(5.0));
        assert_eq!(lower_median(&mut [f64::NAN, 1.0, 2.0]), Some(2.0));
    }

    fn group(ids: &[MemberId], now: Instant) -> Balancer {
        let mut b = Balancer::new(BalancerConfig::default());
        for &id in ids {
            b.add(id, now);
        }
        b
    }

    fn fail(b: &mut Balancer, id: MemberId, now: Instant) -> Option<Ejection> {
        b.start(id);
        b.failure(id, now)
    }

    fn ejected(b: &Balancer, now: Instant) -> Vec<MemberId> {
        b.snapshot(now)
            .into_iter()
            .filter(|s| s.ejected_until.is_some())
            .map(|s| s.id)
            .collect()
    }

    /// Picks every 10ms over `[from, to)`, completing each pick with a 10ms
    /// success; returns how often `watch` was picked.
    fn traffic(
        b: &mut Balancer,
        rng: &mut StdRng,
        from: Instant,
        to: Instant,
        watch: MemberId,
    ) -> usize {
        let mut hits = 0;
        let mut t = from;
        while t < to {
            let Some(id) = b.pick(t, rng, |_| 0) else {
                panic!("non-empty group returned no member");
            };
            hits += usize::from(id == watch);
            b.start(id);
            if id != watch {
                assert_eq!(b.success(id, 10 * MS, t), None);
            } else {
                b.cancel(id);
            }
            t += 10 * MS;
        }
        hits
    }

    #[test]
    fn consecutive_failures_eject_with_growing_periods() {
        let t0 = Instant::now();
        let mut rng = StdRng::seed_from_u64(2);
        let mut b = group(&[1, 2, 3], t0);

        // A success in between resets the streak.
        for _ in 0..4 {
            assert_eq!(fail(&mut b, 1, t0), None);
        }
        b.start(1);
        assert_eq!(b.success(1, 10 * MS, t0), None);
        for _ in 0..4 {
            assert_eq!(fail(&mut b, 1, t0), None);
        }
        let e = fail(&mut b, 1, t0).expect("5th consecutive failure ejects");
        assert_eq!(
            e,
            Ejection {
                member: 1,
                period: Duration::from_secs(30),
                reason: EjectReason::ConsecutiveFailures
            }
        );
        assert_eq!(ejected(&b, t0), vec![1]);

        // No traffic while ejected; failures of in-flight requests don't extend it.
        let back = t0 + Duration::from_secs(30);
        assert_eq!(fail(&mut b, 1, t0 + MS), None);
        assert_eq!(traffic(&mut b, &mut rng, t0, back, 1), 0);

        // Back after the period, and picked again.
        let hits = traffic(&mut b, &mut rng, back, back + Duration::from_secs(1), 1);
        assert!(hits > 0, "member did not come back");
        assert!(ejected(&b, back).is_empty());

        // Second ejection right after returning: twice as long.
        let t1 = back + Duration::from_secs(1);
        for _ in 0..4 {
            assert_eq!(fail(&mut b, 1, t1), None);
        }
        let e = fail(&mut b, 1, t1).expect("ejected again");
        assert_eq!(e.period, Duration::from_secs(60));
        let back = t1 + Duration::from_secs(60);
        assert_eq!(traffic(&mut b, &mut rng, t1, back, 1), 0);
        assert!(traffic(&mut b, &mut rng, back, back + Duration::from_secs(1), 1) > 0);
        let snap = b.snapshot(back);
        assert_eq!(
            snap.iter().find(|s| s.id == 1).map(|s| s.ejections),
            Some(2)
        );
    }

    #[test]
    fn backoff_is_forgiven_after_a_healthy_stretch() {
        let t0 = Instant::now();
        let mut b = group(&[1, 2, 3], t0);
        fn eject(b: &mut Balancer, t: Instant) -> Option<Ejection> {
            let mut last = None;
            for _ in 0..5 {
                last = fail(b, 1, t);
            }
            last
        }
        assert_eq!(
            eject(&mut b, t0).map(|e| e.period),
            Some(Duration::from_secs(30))
        );
        // Returns at 30s, then stays healthy 10 minutes = two max periods.
        let t1 = t0 + Duration::from_secs(30 + 600);
        let _ = b.pick(t1, &mut StdRng::seed_from_u64(0), |_| 0);
        assert_eq!(
            eject(&mut b, t1).map(|e| e.period),
            Some(Duration::from_secs(30))
        );
        // Right after returning there is no forgiveness.
        let t2 = t1 + Duration::from_secs(30);
        let _ = b.pick(t2, &mut StdRng::seed_from_u64(0), |_| 0);
        assert_eq!(
            eject(&mut b, t2).map(|e| e.period),
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn latency_outlier_is_ejected() {
        let t0 = Instant::now();
        let lat = [(1, 5), (2, 5), (3, 5), (4, 6), (5, 300)];
        let mut b = group(&[1, 2, 3, 4, 5], t0);
        let mut t = t0;
        let mut events = Vec::new();
        for round in 1..=20u32 {
            for &(id, ms) in &lat {
                t += MS;
                b.start(id);
                if let Some(e) = b.success(id, ms * MS, t) {
                    events.push((round, e));
                }
            }
        }
        assert_eq!(events.len(), 1, "{events:?}");
        let (round, e) = events[0];
        // Needs latency_min_samples (10) samples first.
        assert_eq!(round, 10);
        assert_eq!(e.member, 5);
        assert_eq!(e.reason, EjectReason::Latency);
        assert_eq!(e.period, Duration::from_secs(30));
        let snap = b.snapshot(t);
        let s5 = snap.iter().find(|s| s.id == 5).expect("member 5");
        assert_eq!(s5.ejection_reason, Some(EjectReason::Latency));
    }

    #[test]
    fn slow_but_under_the_floor_is_not_ejected() {
        // 40ms is 8x the median but below latency_min (50ms).
        let t0 = Instant::now();
        let mut b = group(&[1, 2, 3, 4, 5], t0);
        let mut t = t0;
        for _ in 0..50 {
            for (id, ms) in [(1, 5), (2, 5), (3, 5), (4, 5), (5, 40)] {
                t += MS;
                b.start(id);
                assert_eq!(b.success(id, ms * MS, t), None);
            }
        }
    }

    #[test]
    fn latency_outlier_in_a_pair() {
        let t0 = Instant::now();
        let mut b = group(&[1, 2], t0);
        let mut t = t0;
        let mut got = None;
        for _ in 0..10 {
            for (id, ms) in [(1, 5), (2, 300)] {
                t += MS;
                b.start(id);
                got = got.or(b.success(id, ms * MS, t));
            }
        }
        assert_eq!(
            got.map(|e| (e.member, e.reason)),
            Some((2, EjectReason::Latency))
        );
    }

    #[test]
    fn cap_keeps_the_group_serving_when_everyone_fails() {
        let t0 = Instant::now();
        let mut rng = StdRng::seed_from_u64(4);
        let mut b = group(&[1, 2, 3], t0);
        let mut t = t0;
        let mut ejections = Vec::new();
        for _ in 0..30_000 {
            let id = b
                .pick(t, &mut rng, |_| 0)
                .expect("group never stops serving");
            b.start(id);
            if let Some(e) = b.failure(id, t) {
                ejections.push(e);
            }
            let out = ejected(&b, t);
            assert!(out.len() <= 1, "{out:?} ejected at once");
            t += 10 * MS;
        }
        // Ejections happen, rotate across members, and back off.
        assert!(ejections.len() >= 3, "{ejections:?}");
        for id in [1, 2, 3] {
            assert!(
                ejections.iter().any(|e| e.member == id),
                "{id} never ejected"
            );
        }
        assert!(ejections.iter().any(|e| e.period > Duration::from_secs(30)));
    }

    #[test]
    fn capped_member_is_ejected_once_the_cap_allows() {
        let t0 = Instant::now();
        let mut b = group(&[1, 2, 3], t0);
        assert!((0..5).filter_map(|_| fail(&mut b, 1, t0)).next().is_some());
        // Member 2 qualifies but member 1 already uses the only slot.
        assert_eq!((0..8).filter_map(|_| fail(&mut b, 2, t0)).next(), None);
        // After member 1 returns, member 2's streak is still there: one more
        // failure ejects it.
        let t1 = t0 + Duration::from_secs(30);
        let e = fail(&mut b, 2, t1).expect("ejected once the cap allows");
        assert_eq!(e.member, 2);
        assert_eq!(ejected(&b, t1), vec![2]);
    }
}
