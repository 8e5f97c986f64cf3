//! Results: latency histograms (HDR), per-scenario results, and their rendering as Markdown
//! tables (single target, or Nexus and NATS side by side with ratios) and as JSON.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// A latency histogram in nanoseconds, 3 significant digits, up to 10 minutes.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("valid histogram bounds")
}

/// Records `ns` into `h`, clamping to the histogram's range.
pub fn record(h: &mut Histogram<u64>, ns: u64) {
    let v = ns.clamp(1, h.high());
    h.record(v).expect("value clamped into range");
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Latency {
    /// Samples recorded.
    pub samples: u64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample.
    pub max_us: f64,
}

impl Latency {
    /// Percentiles of `h` (nanoseconds) in microseconds.
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            samples: h.len(),
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// The outcome of one scenario against one target.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScenarioResult {
    /// Scenario name, e.g. `pubsub-1x4`.
    pub scenario: String,
    /// `nexus` or `nats`.
    pub target: String,
    /// Why the scenario did not run (e.g. streams on NATS); all numbers are then zero.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Payload size in bytes.
    pub payload_bytes: usize,
    /// Messages (or requests, or stream frames) sent.
    pub sent: u64,
    /// Messages delivered (summed over subscribers), replies or echoed frames received.
    pub delivered: u64,
    /// Messages each subscriber should have got but did not (pub/sub: sent - delivered to
    /// that subscriber; queue group: one value, sent - delivered to the group; requests and
    /// streams: one value, sent - answered).
    pub lost_per_subscriber: Vec<u64>,
    /// Sum of `lost_per_subscriber`.
    pub lost: u64,
    /// Deliveries beyond what was sent, or out of order per publisher (must be 0).
    pub duplicates_or_reordered: u64,
    /// Failed operations (request errors and timeouts, publish errors, ...).
    pub errors: u64,
    /// The first error seen, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Seconds from the first send to the last delivery.
    pub elapsed_s: f64,
    /// Delivered messages per second (all subscribers together).
    pub msgs_per_s: f64,
    /// Delivered payload megabytes (10^6 bytes) per second.
    pub mb_per_s: f64,
    /// Latency from (intended) send to delivery or reply.
    pub latency: Latency,
}

impl ScenarioResult {
    /// A result for a scenario that could not run on this target.
    pub fn skipped(scenario: &str, target: &str, why: &str) -> Self {
        ScenarioResult {
            scenario: scenario.to_owned(),
            target: target.to_owned(),
            skipped: Some(why.to_owned()),
            ..Default::default()
        }
    }

    /// Fills `msgs_per_s` and `mb_per_s` from `delivered`, `elapsed_s` and the payload size.
    pub fn compute_rates(&mut self) {
        if self.elapsed_s > 0.0 {
            self.msgs_per_s = self.delivered as f64 / self.elapsed_s;
            self.mb_per_s = self.msgs_per_s * self.payload_bytes as f64 / 1e6;
        }
    }
}

fn fmt_rate(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn fmt_us(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2} ms", v / 1000.0)
    } else {
        format!("{v:.0} µs")
    }
}

const HEADER: &str = "| scenario | target | msgs/s | MB/s | sent | delivered | lost | errors | p50 | p90 | p99 | p99.9 | max |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";

fn row(out: &mut String, r: &ScenarioResult) {
    if let Some(why) = &r.skipped {
        let _ = writeln!(
            out,
            "| {} | {} | n/a | n/a | | | | | | | | | ({why}) |",
            r.scenario, r.target
        );
        return;
    }
    let l = &r.latency;
    let _ = writeln!(
        out,
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        r.scenario,
        r.target,
        fmt_rate(r.msgs_per_s),
        fmt_rate(r.mb_per_s),
        r.sent,
        r.delivered,
        r.lost,
        r.errors,
        fmt_us(l.p50_us),
        fmt_us(l.p90_us),
        fmt_us(l.p99_us),
        fmt_us(l.p999_us),
        fmt_us(l.max_us),
    );
}

/// A Markdown table of results.
pub fn table(results: &[ScenarioResult]) -> String {
    let mut out = String::from(HEADER);
    for r in results {
        row(&mut out, r);
    }
    out
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "–".into()
    }
}

/// A pair of results for the same scenario: Nexus and NATS.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// Scenario name.
    pub scenario: String,
    /// The Nexus run.
    pub nexus: ScenarioResult,
    /// The NATS run.
    pub nats: ScenarioResult,
}

/// A Markdown table with both targets per scenario and a ratio row (Nexus / NATS: above 1
/// means Nexus is faster for msgs/s and MB/s, slower for latencies).
pub fn comparison_table(pairs: &[Comparison]) -> String {
    let mut out = String::from(HEADER);
    for p in pairs {
        row(&mut out, &p.nexus);
        row(&mut out, &p.nats);
        if p.nexus.skipped.is_none() && p.nats.skipped.is_none() {
            let (a, b) = (&p.nexus, &p.nats);
            let (la, lb) = (&a.latency, &b.latency);
            let _ = writeln!(
                out,
                "| {} | **nexus/nats** | **{}** | **{}** | | | | | {} | {} | **{}** | {} | {} |",
                p.scenario,
                ratio(a.msgs_per_s, b.msgs_per_s),
                ratio(a.mb_per_s, b.mb_per_s),
                ratio(la.p50_us, lb.p50_us),
                ratio(la.p90_us, lb.p90_us),
                ratio(la.p99_us, lb.p99_us),
                ratio(la.p999_us, lb.p999_us),
                ratio(la.max_us, lb.max_us),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_in_microseconds() {
        let mut h = new_histogram();
        for i in 1..=1000u64 {
            record(&mut h, i * 1000);
        }
        let l = Latency::from_histogram(&h);
        assert_eq!(l.samples, 1000);
        assert!((l.p50_us - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.max_us - 1000.0).abs() < 1.0, "{l:?}");
    }

    #[test]
    fn tables_render() {
        let mut a = ScenarioResult {
            scenario: "pubsub-1x1".into(),
            target: "nexus".into(),
            payload_bytes: 128,
            delivered: 1000,
            elapsed_s: 1.0,
            ..Default::default()
        };
        a.compute_rates();
        let mut b = a.clone();
        b.target = "nats".into();
        b.delivered = 2000;
        b.compute_rates();
        let t = comparison_table(&[Comparison {
            scenario: a.scenario.clone(),
            nexus: a,
            nats: b,
        }]);
        assert!(t.contains("0.50×"), "{t}");
        assert!(table(&[ScenarioResult::skipped("stream", "nats", "no streams")]).contains("n/a"));
    }
}
