//! Peak-EWMA latency estimator for one balancer member.
//!
//! The estimate reacts to a slow response at once (a sample above it replaces
//! it) and forgets slowly (a sample below it only pulls it down with weight
//! `1 - exp(-elapsed / decay)`). The asymmetry is the point: P2C should steer
//! away from a member the moment it degrades, and one lucky fast reply from a
//! struggling member should not make it look healthy again.
//!
//! Between samples the *reading* ([`PeakEwma::estimate`]) additionally relaxes
//! toward zero with the same time constant. Without that, a member that showed
//! one bad peak and then lost every P2C comparison would never be picked again,
//! so its estimate could never recover; relaxing guarantees that an idle member
//! is eventually probed. The un-relaxed value ([`PeakEwma::last`]) is kept for
//! outlier detection, where "has been idle" must not count as "is fast".
//! A prior (no sample yet) does not relax: it is a guess, not a peak to recover from, and
//! relaxing it would rank never-measured members by when they joined.
//!
//! The initial value is a prior, not an observation: the first real sample
//! replaces it outright. Otherwise a member faster than the default would need
//! several decay periods to be recognised as fast (the downward path is the
//! slow one), while a slower one is recognised at once anyway.

use std::time::{Duration, Instant};

/// Peak-sensitive, time-weighted moving average of round-trip times.
///
/// All arithmetic is in `f64` nanoseconds so that weights need no integer
/// rounding; conversions back to [`Duration`] saturate instead of panicking.
#[derive(Clone, Debug)]
pub struct PeakEwma {
    /// Estimate as of `stamp`, before any idle relaxation.
    value_ns: f64,
    /// When `value_ns` was last set (construction or the latest sample).
    stamp: Instant,
    /// Time constant; `<= 0` means "no memory" (see [`PeakEwma::weight`]).
    decay_ns: f64,
    /// Whether `value_ns` is still the default rather than a measurement.
    prior: bool,
}

impl PeakEwma {
    /// Starts at `default_rtt`, as if a sample of that size arrived at `now`.
    pub fn new(default_rtt: Duration, decay: Duration, now: Instant) -> Self {
        Self {
            value_ns: nanos(default_rtt),
            stamp: now,
            decay_ns: nanos(decay),
            prior: true,
        }
    }

    /// Folds one round-trip time observed at `now` into the estimate.
    pub fn observe(&mut self, rtt: Duration, now: Instant) {
        let rtt_ns = nanos(rtt);
        if self.prior || rtt_ns > self.value_ns {
            self.prior = false;
            self.value_ns = rtt_ns;
        } else {
            let w = self.weight(now);
            self.value_ns = self.value_ns * w + rtt_ns * (1.0 - w);
        }
        // Callers may report completions slightly out of order; never moving the
        // stamp backwards keeps later weights from being computed over a negative
        // (saturated to zero) interval twice.
        if now > self.stamp {
            self.stamp = now;
        }
    }

    /// Whether the estimate is still the initial guess (no sample yet).
    pub fn is_prior(&self) -> bool {
        self.prior
    }

    /// Lowers a not-yet-measured estimate to `to` (a peer's fresh sample), so a
    /// member that has never been picked looks as fast as its fastest peer and is
    /// tried soon; its own first sample then replaces the guess. No effect once
    /// the member has been measured, or when `to` is not lower.
    pub fn lower_prior(&mut self, to: Duration, now: Instant) {
        let to_ns = nanos(to);
        if self.prior && to_ns < self.estimate_ns(now) {
            self.value_ns = to_ns;
            if now > self.stamp {
                self.stamp = now;
            }
        }
    }

    /// The estimate P2C should use at `now`: the last value relaxed toward zero
    /// for the time since the last sample.
    pub fn estimate(&self, now: Instant) -> Duration {
        duration(self.estimate_ns(now))
    }

    /// The estimate as of the last sample, without idle relaxation.
    pub fn last(&self) -> Duration {
        duration(self.value_ns)
    }

    pub(crate) fn estimate_ns(&self, now: Instant) -> f64 {
        // A prior is not a measurement, so there is nothing to recover from: it does not
        // relax. Otherwise members that are never measured (a queue group fed only by
        // publishes) would differ only by when they joined, and the oldest would always win.
        if self.prior {
            return self.value_ns;
        }
        self.value_ns * self.weight(now)
    }

    pub(crate) fn last_ns(&self) -> f64 {
        self.value_ns
    }

    /// Weight of the old value after the time elapsed since the last sample.
    fn weight(&self, now: Instant) -> f64 {
        // A zero decay is a configuration of "trust only the newest sample";
        // dividing by it would give NaN for a zero interval.
        if self.decay_ns <= 0.0 {
            return 0.0;
        }
        let elapsed = nanos(now.saturating_duration_since(self.stamp));
        (-elapsed / self.decay_ns).exp()
    }
}

fn nanos(d: Duration) -> f64 {
    d.as_nanos() as f64
}

fn duration(ns: f64) -> Duration {
    // `as` saturates (and maps NaN to 0), unlike `Duration::from_secs_f64`.
    Duration::from_nanos(ns as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const DECAY: Duration = Duration::from_secs(10);

    fn close(a: Duration, b: Duration) -> bool {
        a.abs_diff(b) <= Duration::from_micros(1)
    }

    #[test]
    fn starts_at_default() {
        let t0 = Instant::now();
        let e = PeakEwma::new(30 * MS, DECAY, t0);
        assert_eq!(e.estimate(t0), 30 * MS);
        assert_eq!(e.last(), 30 * MS);
    }

    #[test]
    fn first_sample_replaces_the_default() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(30 * MS, DECAY, t0);
        e.observe(MS, t0 + MS);
        assert_eq!(e.last(), MS);
        // Only the first: later lower samples blend.
        e.observe(MS, t0 + 2 * MS);
        e.observe(200 * MS, t0 + 3 * MS);
        e.observe(MS, t0 + 4 * MS);
        assert!(e.last() > 199 * MS);
    }

    #[test]
    fn jumps_to_a_peak() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(5 * MS, DECAY, t0);
        e.observe(5 * MS, t0);
        e.observe(200 * MS, t0 + MS);
        assert_eq!(e.estimate(t0 + MS), 200 * MS);
    }

    #[test]
    fn lower_samples_decay_with_elapsed_weight() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(100 * MS, DECAY, t0);
        e.observe(100 * MS, t0);
        // After one time constant the old value keeps weight 1/e.
        e.observe(10 * MS, t0 + DECAY);
        let w = (-1.0f64).exp();
        let want = Duration::from_secs_f64((0.100 * w) + (0.010 * (1.0 - w)));
        assert!(close(e.last(), want), "{:?} vs {want:?}", e.last());

        // Many quick samples converge on the true latency.
        let mut e = PeakEwma::new(100 * MS, DECAY, t0);
        e.observe(100 * MS, t0);
        let mut t = t0;
        for _ in 0..100_000 {
            t += MS;
            e.observe(10 * MS, t);
        }
        assert!(e.last() < 11 * MS && e.last() >= 10 * MS, "{:?}", e.last());
    }

    #[test]
    fn a_prior_does_not_relax() {
        let t0 = Instant::now();
        let e = PeakEwma::new(100 * MS, DECAY, t0);
        assert_eq!(e.estimate(t0 + 3 * DECAY), 100 * MS);
    }

    #[test]
    fn one_fast_sample_barely_moves_a_slow_estimate() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(100 * MS, DECAY, t0);
        e.observe(100 * MS, t0);
        e.observe(MS, t0 + MS);
        assert!(e.last() > 99 * MS, "{:?}", e.last());
    }

    #[test]
    fn idle_reading_relaxes_toward_zero() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(100 * MS, DECAY, t0);
        e.observe(100 * MS, t0);
        let later = e.estimate(t0 + 3 * DECAY);
        assert!(later < 6 * MS && later > 4 * MS, "{later:?}");
        // The un-relaxed value is what outlier detection compares.
        assert_eq!(e.last(), 100 * MS);
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(Duration::MAX, Duration::ZERO, t0);
        e.observe(Duration::ZERO, t0);
        assert_eq!(e.estimate(t0), Duration::ZERO);
        e.observe(Duration::MAX, t0 + MS);
        let _ = e.estimate(t0);
        // Time going backwards: no decay, no panic.
        let mut e = PeakEwma::new(10 * MS, DECAY, t0 + DECAY);
        e.observe(10 * MS, t0 + DECAY);
        e.observe(MS, t0);
        assert_eq!(e.estimate(t0), 10 * MS);
        // An enormous decay: effectively infinite memory.
        let mut e = PeakEwma::new(10 * MS, Duration::MAX, t0);
        e.observe(10 * MS, t0);
        e.observe(MS, t0 + DECAY);
        assert!(close(e.last(), 10 * MS), "{:?}", e.last());
    }
}
