//! The workloads: pub/sub (1:1 and 1:N fan-out), queue groups, request/reply in a closed
//! loop and in an open loop at a fixed rate, and bidirectional streams (Nexus only).
//!
//! Every scenario opens its own connections (one per publisher, subscriber, worker,
//! requester or responder), uses a subject no other run uses, and closes everything at the
//! end. Latency is measured from the send time carried in the payload ([`crate::payload`]);
//! in rate-limited runs that is the *intended* send time (or the actual one when a sender
//! woke early: tokio's timers have millisecond resolution, so paced senders wake up to 1 ms
//! early rather than late), so a stalled system is charged for the messages it kept the
//! sender from sending (coordinated omission is corrected).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::payload;
use crate::report::ScenarioResult;
use crate::target::{Conn, Target};

/// The kinds of scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Publishers to plain subscribers: every subscriber gets every message (1:1 or 1:N).
    Pubsub,
    /// Publishers to a queue group of workers: each message to exactly one worker.
    Queue,
    /// Request/reply, closed loop: each requester waits for its reply before the next.
    Request,
    /// Request/reply, open loop: requests at a fixed rate whatever the replies do.
    RequestOpen,
    /// Bidirectional streams: each opener sends frames, an acceptor echoes them back.
    Stream,
}

/// The shape and size of a run. `publishers` are publishers, requesters or stream openers;
/// `subscribers` are subscribers, queue workers, responders or stream acceptors.
#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    /// Payload size in bytes (at least the 20-byte stamp).
    pub payload: usize,
    /// Publishers / requesters / stream openers (one connection each).
    pub publishers: usize,
    /// Subscribers / workers / responders / acceptors (one connection each).
    pub subscribers: usize,
    /// Messages (requests, frames) per publisher; `None`: run for `duration`.
    pub count: Option<u64>,
    /// How long to send when `count` is `None`.
    pub duration: Duration,
    /// Total send rate per second over all publishers; `None`: as fast as possible. Required
    /// for [`Kind::RequestOpen`].
    pub rate: Option<f64>,
    /// Requests in flight per requester in the closed loop.
    pub concurrency: usize,
    /// How long to wait for stragglers after the last send.
    pub drain: Duration,
    /// Request (and subscribe) timeout.
    pub request_timeout: Duration,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            payload: 128,
            publishers: 1,
            subscribers: 1,
            count: None,
            duration: Duration::from_secs(5),
            rate: None,
            concurrency: 1,
            drain: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// A human-readable name for a scenario with this workload, e.g. `fan-out 1:4`.
pub fn scenario_name(kind: Kind, w: &Workload) -> String {
    match kind {
        Kind::Pubsub if w.subscribers > 1 => format!("fan-out {}:{}", w.publishers, w.subscribers),
        Kind::Pubsub => format!("pub/sub {}:{}", w.publishers, w.subscribers),
        Kind::Queue => format!("queue {}→{} workers", w.publishers, w.subscribers),
        Kind::Request => format!("req/reply closed c={}", w.publishers * w.concurrency),
        Kind::RequestOpen => format!("req/reply open {:.0}/s", w.rate.unwrap_or(0.0)),
        Kind::Stream => format!("stream echo ×{}", w.publishers),
    }
}

/// Runs one scenario against one target.
pub async fn run(kind: Kind, target: &Target, w: &Workload) -> Result<ScenarioResult> {
    run_between(kind, target, target, w).await
}

/// Runs one scenario with publishers (requesters) on `target` and subscribers (responders)
/// on `remote`: with two federated gateways of different regions, the cross-region shape.
/// Pub/sub, queue and closed-loop requests support two targets; the others use `target`.
pub async fn run_between(
    kind: Kind,
    target: &Target,
    remote: &Target,
    w: &Workload,
) -> Result<ScenarioResult> {
    payload::epoch();
    let name = scenario_name(kind, w);
    let mut result = match kind {
        Kind::Pubsub => pubsub(target, &[remote], w, false).await.map(one),
        Kind::Queue => pubsub(target, &[remote], w, true).await.map(one),
        Kind::Request => request_closed(target, remote, w).await,
        Kind::RequestOpen => request_open(target, w).await,
        Kind::Stream if !target.supports_streams() => {
            return Ok(ScenarioResult::skipped(
                &name,
                target.kind(),
                "NATS core has no bidirectional streams",
            ));
        }
        Kind::Stream => streams(target, w).await,
    }
    .with_context(|| format!("scenario {name} against {target}"))?;
    finish(&mut result, &name, target, w);
    Ok(result)
}

/// Names a row and adds what follows from its counts.
fn finish(r: &mut ScenarioResult, name: &str, target: &Target, w: &Workload) {
    r.scenario = name.to_owned();
    r.target = target.kind().to_owned();
    r.payload_bytes = w.payload.max(payload::HEADER_LEN);
    r.lost = r.lost_per_subscriber.iter().sum();
    r.compute_rates();
}

/// Pub/sub 1:1 paced or not, with the publishers on `target` and, for every message, one
/// subscriber on `target` and one on `remote`: the same messages over both paths at the same
/// moments, so a slow wake-up of the machine lands on both. Both subscribers live in this
/// process, so copies that arrive within one of its wake-ups are recorded together: on a
/// 2-CPU VM the two rows came out equal, and the difference is not the hop's own cost
/// (docs/benchmarks.md, round 9). Returns the row via `target`, then the row via `remote`.
pub async fn run_paired(
    target: &Target,
    remote: &Target,
    w: &Workload,
) -> Result<[ScenarioResult; 2]> {
    payload::epoch();
    let name = scenario_name(Kind::Pubsub, w);
    let results = pubsub(target, &[target, remote], w, false)
        .await
        .with_context(|| format!("scenario {name} against {target} and {remote}"))?;
    let [mut local, mut far]: [ScenarioResult; 2] = results
        .try_into()
        .map_err(|_| anyhow::anyhow!("a paired run gives two rows"))?;
    for r in [&mut local, &mut far] {
        finish(r, &name, target, w);
    }
    Ok([local, far])
}

/// The only row of a run with one group of subscribers.
fn one(mut rows: Vec<ScenarioResult>) -> ScenarioResult {
    rows.swap_remove(0)
}

static RUN: AtomicU64 = AtomicU64::new(0);

/// A subject no other run (in this process or another) uses.
fn unique_subject(what: &str) -> String {
    format!(
        "load.{}.{}.{what}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    )
}

async fn connect_all(target: &Target, role: &str, n: usize, w: &Workload) -> Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        conns.push(
            target
                .connect(&format!("nexus-load-{role}-{i}"), w.request_timeout)
                .await?,
        );
    }
    Ok(conns)
}

async fn close_all(conns: Vec<Conn>) {
    futures::future::join_all(conns.into_iter().map(Conn::close)).await;
}

/// When a sender stops: after `count` sends, or at `deadline`.
#[derive(Clone, Copy)]
struct Until {
    count: Option<u64>,
    deadline: Instant,
}

impl Until {
    fn new(w: &Workload, start: Instant, count: Option<u64>) -> Self {
        Until {
            count,
            deadline: start + w.duration,
        }
    }

    /// Whether send number `i` (from 0) should happen; `at` is when it would be sent.
    fn allows(&self, i: u64, at: Instant) -> bool {
        match self.count {
            Some(c) => i < c,
            None => at < self.deadline,
        }
    }
}

/// `total` split into `parts` nearly equal shares; share `i`.
fn share(total: u64, parts: usize, i: usize) -> u64 {
    let parts = parts.max(1) as u64;
    total / parts + u64::from((i as u64) < total % parts)
}

/// Errors counted by a task, with the first message kept.
#[derive(Default)]
struct Errors {
    count: u64,
    first: Option<String>,
}

impl Errors {
    fn add(&mut self, e: impl std::fmt::Display) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(e.to_string());
        }
    }

    fn merge(&mut self, other: Errors) {
        self.count += other.count;
        if self.first.is_none() {
            self.first = other.first;
        }
    }
}

/// Shared between the publishers and the subscribers of a pub/sub or queue run.
mod pubsub;
mod request;
mod stream;

use pubsub::pubsub;
use request::{request_closed, request_open};
use stream::streams;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        let total: u64 = (0..3).map(|i| share(10, 3, i)).sum();
        assert_eq!(total, 10);
        assert_eq!(share(10, 3, 0), 4);
        assert_eq!(share(10, 3, 2), 3);
    }

    #[test]
    fn names() {
        let w = Workload {
            subscribers: 4,
            ..Default::default()
        };
        assert_eq!(scenario_name(Kind::Pubsub, &w), "fan-out 1:4");
        assert_eq!(scenario_name(Kind::Queue, &w), "queue 1→4 workers");
    }
}
