//! Named sets of scenarios: the comparison suite (the shapes `docs/benchmarks.md` reports)
//! and the smoke run (each scenario for well under a second with tiny counts, failing on
//! any error or on loss where loss can only mean a bug).

use std::time::Duration;

use anyhow::Result;

use crate::report::{Comparison, ScenarioResult};
use crate::scenarios::{self, Kind, Workload};
use crate::target::Target;

/// The comparison suite built on `base` (payload, duration or count, timeouts):
/// pub/sub 1:1, fan-out 1:4, queue group of 4 workers, request/reply closed loop with 1 and
/// with 16 requests in flight, open loop at `open_rate` requests/s, and one echo stream.
pub fn comparison_suite(base: &Workload, open_rate: f64) -> Vec<(Kind, Workload)> {
    let with = |publishers, subscribers, concurrency, rate| Workload {
        publishers,
        subscribers,
        concurrency,
        rate,
        ..base.clone()
    };
    vec![
        (Kind::Pubsub, with(1, 1, 1, None)),
        (Kind::Pubsub, with(1, 4, 1, None)),
        (Kind::Queue, with(1, 4, 1, None)),
        (Kind::Request, with(1, 1, 1, None)),
        (Kind::Request, with(1, 1, 16, None)),
        (Kind::RequestOpen, with(1, 1, 1, Some(open_rate))),
        (Kind::Stream, with(1, 1, 1, None)),
    ]
}

/// Runs every scenario of `suite` on `target`, in order.
pub async fn run_suite(target: &Target, suite: &[(Kind, Workload)]) -> Result<Vec<ScenarioResult>> {
    let mut out = Vec::new();
    for (kind, w) in suite {
        out.push(scenarios::run(*kind, target, w).await?);
    }
    Ok(out)
}

/// Runs every scenario of `suite` on Nexus and then on NATS before moving to the next, so
/// both see the same machine conditions.
pub async fn compare(
    nexus: &Target,
    nats: &Target,
    suite: &[(Kind, Workload)],
) -> Result<Vec<Comparison>> {
    let mut out = Vec::new();
    for (kind, w) in suite {
        let a = scenarios::run(*kind, nexus, w).await?;
        let b = scenarios::run(*kind, nats, w).await?;
        out.push(Comparison {
            scenario: a.scenario.clone(),
            nexus: a,
            nats: b,
        });
    }
    Ok(out)
}

/// The smoke scenarios: tiny counts, a short drain.
pub fn smoke_suite() -> Vec<(Kind, Workload)> {
    let base = Workload {
        payload: 64,
        count: Some(200),
        duration: Duration::from_secs(1),
        drain: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
        ..Workload::default()
    };
    let with = |subscribers, concurrency, rate| Workload {
        subscribers,
        concurrency,
        rate,
        ..base.clone()
    };
    vec![
        (Kind::Pubsub, with(1, 1, None)),
        (Kind::Pubsub, with(3, 1, None)),
        (Kind::Queue, with(3, 1, None)),
        (Kind::Request, with(2, 4, None)),
        (Kind::RequestOpen, with(1, 1, Some(1000.0))),
        (Kind::Stream, with(1, 1, None)),
    ]
}

/// What a smoke run found.
#[derive(Debug, Default)]
pub struct SmokeReport {
    /// Every scenario's result.
    pub results: Vec<ScenarioResult>,
    /// One line per problem; empty when the smoke run passed.
    pub failures: Vec<String>,
}

/// The problems in one smoke result: any error, any lost, duplicated or reordered message,
/// or nothing delivered at all. The smoke loads are far below capacity and Nexus applies
/// backpressure rather than dropping, so every one of these is a bug.
pub fn smoke_problems(r: &ScenarioResult) -> Vec<String> {
    let mut out = Vec::new();
    if r.skipped.is_some() {
        return out;
    }
    let name = format!("{} ({})", r.scenario, r.target);
    if r.errors > 0 {
        out.push(format!(
            "{name}: {} errors, first: {}",
            r.errors,
            r.first_error.as_deref().unwrap_or("?")
        ));
    }
    if r.lost > 0 {
        out.push(format!(
            "{name}: {} messages lost (per subscriber {:?})",
            r.lost, r.lost_per_subscriber
        ));
    }
    if r.duplicates_or_reordered > 0 {
        out.push(format!(
            "{name}: {} duplicated, reordered or corrupted",
            r.duplicates_or_reordered
        ));
    }
    if r.sent == 0 || r.delivered == 0 {
        out.push(format!(
            "{name}: nothing sent or delivered (sent {}, delivered {})",
            r.sent, r.delivered
        ));
    }
    out
}

/// Runs the smoke scenarios against `target`. A scenario that cannot even start (e.g. the
/// target is down) is reported as a failure, and the others still run.
pub async fn smoke(target: &Target) -> SmokeReport {
    let mut report = SmokeReport::default();
    for (kind, w) in smoke_suite() {
        match scenarios::run(kind, target, &w).await {
            Ok(r) => {
                report.failures.extend(smoke_problems(&r));
                report.results.push(r);
            }
            Err(e) => report
                .failures
                .push(format!("{}: {e:#}", scenarios::scenario_name(kind, &w))),
        }
    }
    report
}
