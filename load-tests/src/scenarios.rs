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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::payload::{self, Stamp};
use crate::report::{self, Latency, ScenarioResult};
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
    result.scenario = name;
    result.target = target.kind().to_owned();
    result.payload_bytes = w.payload.max(payload::HEADER_LEN);
    result.lost = result.lost_per_subscriber.iter().sum();
    result.compute_rates();
    Ok(result)
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
        r.scenario = name.clone();
        r.target = target.kind().to_owned();
        r.payload_bytes = w.payload.max(payload::HEADER_LEN);
        r.lost = r.lost_per_subscriber.iter().sum();
        r.compute_rates();
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
struct Progress {
    published: AtomicU64,
    done: AtomicBool,
    delivered_total: AtomicU64,
    done_at: Mutex<Option<Instant>>,
}

struct SubOutcome {
    delivered: u64,
    disorder: u64,
    hist: Histogram<u64>,
    last_at: Option<Instant>,
}

struct PubOutcome {
    sent: u64,
    errors: Errors,
}

/// Publishers on `target`; `w.subscribers` subscribers on each of `sub_targets`, one row of
/// results per sub target (in that order).
async fn pubsub(
    target: &Target,
    sub_targets: &[&Target],
    w: &Workload,
    queue: bool,
) -> Result<Vec<ScenarioResult>> {
    let subject = unique_subject(if queue { "queue" } else { "pubsub" });
    let mut sub_conns = Vec::new();
    let mut groups = Vec::new();
    let mut subs = Vec::new();
    for (g, t) in sub_targets.iter().enumerate() {
        for c in connect_all(t, "sub", w.subscribers, w).await? {
            subs.push(c.subscribe(&subject, queue.then_some("workers")).await?);
            groups.push(g);
            sub_conns.push(c);
        }
    }
    let pub_conns = connect_all(target, "pub", w.publishers, w).await?;
    if sub_targets.iter().any(|t| *t != target) {
        wait_for_interest(&pub_conns[0], &subject, &mut subs, queue, w.request_timeout).await?;
    }
    let progress = Arc::new(Progress {
        published: AtomicU64::new(0),
        done: AtomicBool::new(false),
        delivered_total: AtomicU64::new(0),
        done_at: Mutex::new(None),
    });

    let mut sub_tasks = JoinSet::new();
    for (mut sub, group) in subs.into_iter().zip(groups) {
        let progress = progress.clone();
        let (drain, publishers) = (w.drain, w.publishers);
        sub_tasks.spawn(async move {
            let mut out = SubOutcome {
                delivered: 0,
                disorder: 0,
                hist: report::new_histogram(),
                last_at: None,
            };
            let mut next_seq = vec![0u64; publishers];
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tokio::select! {
                    biased;
                    m = sub.next() => {
                        let Some(m) = m else { break };
                        let now = Instant::now();
                        out.delivered += 1;
                        out.last_at = Some(now);
                        if queue {
                            progress.delivered_total.fetch_add(1, Ordering::Relaxed);
                        }
                        match payload::decode(m.payload()) {
                            Some(s) => {
                                report::record(&mut out.hist, payload::instant_ns(now).saturating_sub(s.sent_ns));
                                match next_seq.get_mut(s.publisher as usize) {
                                    Some(n) if s.seq >= *n => *n = s.seq + 1,
                                    _ => out.disorder += 1,
                                }
                            }
                            None => out.disorder += 1,
                        }
                    }
                    _ = tick.tick() => {}
                }
                if progress.done.load(Ordering::Acquire) {
                    let expected = progress.published.load(Ordering::Relaxed);
                    let got = if queue {
                        progress.delivered_total.load(Ordering::Relaxed)
                    } else {
                        out.delivered
                    };
                    let done_at = progress.done_at.lock().unwrap().unwrap_or_else(Instant::now);
                    if got >= expected || done_at.elapsed() > drain {
                        break;
                    }
                }
            }
            (group, out)
        });
    }

    let start = Instant::now();
    let rate = w.rate.map(|r| r / w.publishers.max(1) as f64);
    let mut pub_tasks = JoinSet::new();
    for (index, conn) in pub_conns.iter().cloned().enumerate() {
        let subject = subject.clone();
        let until = Until::new(w, start, w.count);
        let size = w.payload;
        pub_tasks.spawn(async move {
            let mut out = PubOutcome {
                sent: 0,
                errors: Errors::default(),
            };
            let mut i = 0u64;
            loop {
                let sent_ns = match rate {
                    Some(r) => {
                        let at = payload::scheduled(start, i, r);
                        if !until.allows(i, at) {
                            break;
                        }
                        // As the open-loop requester does: tokio's timers have millisecond
                        // resolution, so wake up to 1 ms early and send then rather than up
                        // to 1 ms late (which charged every message the timer's lateness and
                        // sent them in bursts); latency counts from the earlier of the
                        // intended and the actual send time.
                        let early = at.checked_sub(Duration::from_millis(1));
                        if let Some(e) = early.filter(|e| *e > Instant::now()) {
                            tokio::time::sleep_until(e.into()).await;
                        }
                        payload::instant_ns(at.min(Instant::now()))
                    }
                    None => {
                        if !until.allows(i, Instant::now()) {
                            break;
                        }
                        payload::now_ns()
                    }
                };
                let stamp = Stamp {
                    publisher: index as u32,
                    seq: i,
                    sent_ns,
                };
                i += 1;
                match conn.publish(&subject, payload::encode(stamp, size)).await {
                    Ok(()) => out.sent += 1,
                    Err(e) => {
                        out.errors.add(e);
                        if out.errors.count >= 100 {
                            break;
                        }
                    }
                }
            }
            if let Err(e) = conn.flush().await {
                out.errors.add(e);
            }
            out
        });
    }
    let mut published = 0;
    let mut errors = Errors::default();
    while let Some(r) = pub_tasks.join_next().await {
        let r = r?;
        published += r.sent;
        errors.merge(r.errors);
    }
    let publish_end = Instant::now();
    *progress.done_at.lock().unwrap() = Some(publish_end);
    progress.published.store(published, Ordering::Relaxed);
    progress.done.store(true, Ordering::Release);

    let mut outcomes: Vec<Vec<SubOutcome>> = sub_targets.iter().map(|_| Vec::new()).collect();
    while let Some(r) = sub_tasks.join_next().await {
        let (group, out) = r?;
        outcomes[group].push(out);
    }
    let mut rows = Vec::with_capacity(outcomes.len());
    for outs in outcomes {
        let mut result = ScenarioResult {
            sent: published,
            ..Default::default()
        };
        let mut hist = report::new_histogram();
        let mut last = publish_end;
        let mut delivered_total = 0;
        let mut per_sub = Vec::new();
        for r in outs {
            hist.add(&r.hist)?;
            if let Some(t) = r.last_at {
                last = last.max(t);
            }
            delivered_total += r.delivered;
            result.duplicates_or_reordered += r.disorder;
            per_sub.push(r.delivered);
        }
        result.delivered = delivered_total;
        result.lost_per_subscriber = if queue {
            vec![published.saturating_sub(delivered_total)]
        } else {
            per_sub
                .iter()
                .map(|d| published.saturating_sub(*d))
                .collect()
        };
        if !queue {
            result.duplicates_or_reordered += per_sub
                .iter()
                .map(|d| d.saturating_sub(published))
                .sum::<u64>();
        }
        result.errors = errors.count;
        result.first_error = errors.first.clone();
        result.elapsed_s = last.duration_since(start).as_secs_f64();
        result.latency = Latency::from_histogram(&hist);
        rows.push(result);
    }
    close_all(pub_conns).await;
    close_all(sub_conns).await;
    Ok(rows)
}

/// Publishes short probes (which carry no stamp) until every subscriber has one, so that a
/// measured run does not start before the subscribers' interest reached the publishers'
/// region; then discards any further probes.
async fn wait_for_interest(
    publisher: &Conn,
    subject: &str,
    subs: &mut [crate::target::Sub],
    queue: bool,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    // Plain subscribers each need the probe; a queue group's probe goes to one of them.
    let mut waiting: Vec<usize> = (0..subs.len()).collect();
    while !waiting.is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "subscribers' interest in {subject} did not reach the publishers' gateway within {timeout:?}"
        );
        publisher
            .publish(subject, bytes::Bytes::from_static(b"?"))
            .await?;
        publisher.flush().await?;
        let mut got = Vec::new();
        for &i in &waiting {
            if let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(30), subs[i].next()).await
            {
                got.push(i);
            }
        }
        if queue && !got.is_empty() {
            break;
        }
        waiting.retain(|i| !got.contains(i));
    }
    for sub in subs.iter_mut() {
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
        }
    }
    Ok(())
}

/// Starts `w.subscribers` echo responders in queue group `responders`; abort the returned
/// set to stop them.
async fn start_responders(
    target: &Target,
    subject: &str,
    w: &Workload,
) -> Result<(Vec<Conn>, JoinSet<()>)> {
    let conns = connect_all(target, "responder", w.subscribers, w).await?;
    let mut tasks = JoinSet::new();
    for conn in &conns {
        let mut sub = conn.subscribe(subject, Some("responders")).await?;
        let conn = conn.clone();
        tasks.spawn(async move {
            while let Some(m) = sub.next().await {
                let p = m.payload().clone();
                if conn.reply(&m, p).await.is_err() {
                    break;
                }
            }
        });
    }
    Ok((conns, tasks))
}

#[derive(Default)]
struct ReqOutcome {
    sent: u64,
    answered: u64,
    mismatched: u64,
    errors: Errors,
}

impl ReqOutcome {
    fn merge(&mut self, o: ReqOutcome) {
        self.sent += o.sent;
        self.answered += o.answered;
        self.mismatched += o.mismatched;
        self.errors.merge(o.errors);
    }

    fn into_result(self, hist: &Histogram<u64>, elapsed: Duration) -> ScenarioResult {
        ScenarioResult {
            sent: self.sent,
            delivered: self.answered,
            lost_per_subscriber: vec![self.sent.saturating_sub(self.answered)],
            duplicates_or_reordered: self.mismatched,
            errors: self.errors.count,
            first_error: self.errors.first,
            elapsed_s: elapsed.as_secs_f64(),
            latency: Latency::from_histogram(hist),
            ..Default::default()
        }
    }
}

async fn request_closed(
    target: &Target,
    responder_target: &Target,
    w: &Workload,
) -> Result<ScenarioResult> {
    let subject = unique_subject("req");
    let (resp_conns, responders) = start_responders(responder_target, &subject, w).await?;
    let req_conns = connect_all(target, "requester", w.publishers, w).await?;
    if target != responder_target {
        // The responders' interest reaches the requesters' region about one RTT later.
        let deadline = Instant::now() + w.request_timeout;
        while req_conns[0]
            .request(
                &subject,
                payload::encode(
                    Stamp {
                        publisher: u32::MAX,
                        seq: 0,
                        sent_ns: 0,
                    },
                    w.payload,
                ),
            )
            .await
            .is_err()
        {
            anyhow::ensure!(
                Instant::now() < deadline,
                "no responder on {subject} became reachable from the requesters' gateway within {:?}",
                w.request_timeout
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let concurrency = w.concurrency.max(1);
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for (p, conn) in req_conns.iter().enumerate() {
        for c in 0..concurrency {
            let conn = conn.clone();
            let subject = subject.clone();
            let count = w.count.map(|n| share(n, concurrency, c));
            let until = Until::new(w, start, count);
            let size = w.payload;
            let index = (p * concurrency + c) as u32;
            tasks.spawn(async move {
                let mut out = ReqOutcome::default();
                let mut hist = report::new_histogram();
                let mut i = 0;
                while until.allows(i, Instant::now()) {
                    let t0 = Instant::now();
                    let stamp = Stamp {
                        publisher: index,
                        seq: i,
                        sent_ns: payload::instant_ns(t0),
                    };
                    i += 1;
                    out.sent += 1;
                    match conn.request(&subject, payload::encode(stamp, size)).await {
                        Ok(reply) => {
                            report::record(&mut hist, t0.elapsed().as_nanos() as u64);
                            out.answered += 1;
                            if payload::decode(&reply) != Some(stamp) {
                                out.mismatched += 1;
                            }
                        }
                        Err(e) => out.errors.add(e),
                    }
                }
                (out, hist)
            });
        }
    }
    let mut total = ReqOutcome::default();
    let mut hist = report::new_histogram();
    while let Some(r) = tasks.join_next().await {
        let (o, h) = r?;
        total.merge(o);
        hist.add(&h)?;
    }
    let elapsed = start.elapsed();
    drop(responders);
    close_all(req_conns).await;
    close_all(resp_conns).await;
    Ok(total.into_result(&hist, elapsed))
}

/// Most requests in flight per requester connection in the open loop; beyond it the
/// scheduler waits (and the wait is charged to latency, measured from the intended time).
const MAX_IN_FLIGHT: usize = 20_000;

async fn request_open(target: &Target, w: &Workload) -> Result<ScenarioResult> {
    let rate = w
        .rate
        .filter(|r| *r > 0.0)
        .context("the open loop needs --rate (requests per second)")?;
    let subject = unique_subject("reqopen");
    let (resp_conns, responders) = start_responders(target, &subject, w).await?;
    let req_conns = connect_all(target, "requester", w.publishers, w).await?;
    let per_conn = rate / w.publishers.max(1) as f64;
    let hist = Arc::new(Mutex::new(report::new_histogram()));
    let start = Instant::now() + Duration::from_millis(10);
    let mut schedulers = JoinSet::new();
    for (p, conn) in req_conns.iter().enumerate() {
        let conn = conn.clone();
        let subject = subject.clone();
        let until = Until::new(w, start, w.count);
        let size = w.payload;
        let hist = hist.clone();
        schedulers.spawn(async move {
            let limit = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
            let mut inflight = JoinSet::new();
            let mut out = ReqOutcome::default();
            let mut i = 0;
            loop {
                let intended = payload::scheduled(start, i, per_conn);
                if !until.allows(i, intended) {
                    break;
                }
                // Tokio timers have millisecond resolution: wake up to 1 ms early and send
                // then rather than up to 1 ms late. Latency counts from the earlier of the
                // intended and the actual send time, so an early send is measured honestly
                // and a late one (the system held us back) is charged to the system.
                let early = intended.checked_sub(Duration::from_millis(1));
                if let Some(e) = early.filter(|e| *e > Instant::now()) {
                    tokio::time::sleep_until(e.into()).await;
                }
                let permit = limit.clone().acquire_owned().await.expect("never closed");
                let from = intended.min(Instant::now());
                let stamp = Stamp {
                    publisher: p as u32,
                    seq: i,
                    sent_ns: payload::instant_ns(from),
                };
                i += 1;
                out.sent += 1;
                let conn = conn.clone();
                let subject = subject.clone();
                let hist = hist.clone();
                inflight.spawn(async move {
                    let r = conn.request(&subject, payload::encode(stamp, size)).await;
                    let ns = from.elapsed().as_nanos() as u64;
                    drop(permit);
                    match r {
                        Ok(reply) => {
                            report::record(&mut hist.lock().unwrap(), ns);
                            Ok(payload::decode(&reply) == Some(stamp))
                        }
                        Err(e) => Err(e.to_string()),
                    }
                });
                while let Some(r) = inflight.try_join_next() {
                    tally(&mut out, r);
                }
            }
            while let Some(r) = inflight.join_next().await {
                tally(&mut out, r);
            }
            out
        });
    }
    let mut total = ReqOutcome::default();
    while let Some(r) = schedulers.join_next().await {
        total.merge(r?);
    }
    let elapsed = start.elapsed();
    drop(responders);
    close_all(req_conns).await;
    close_all(resp_conns).await;
    let hist = hist.lock().unwrap().clone();
    Ok(total.into_result(&hist, elapsed))
}

/// Counts the outcome of one open-loop request.
fn tally(
    out: &mut ReqOutcome,
    r: std::result::Result<std::result::Result<bool, String>, tokio::task::JoinError>,
) {
    match r {
        Ok(Ok(matched)) => {
            out.answered += 1;
            if !matched {
                out.mismatched += 1;
            }
        }
        Ok(Err(e)) => out.errors.add(e),
        Err(e) => out.errors.add(e),
    }
}

async fn streams(target: &Target, w: &Workload) -> Result<ScenarioResult> {
    let subject = unique_subject("stream");
    let acc_conns = connect_all(target, "acceptor", w.subscribers, w).await?;
    let mut acceptors = JoinSet::new();
    for conn in &acc_conns {
        let client = conn.nexus().context("streams need a Nexus target")?;
        let mut listener = client.listen_streams(&subject, Some("echo")).await?;
        acceptors.spawn(async move {
            let mut echoes = JoinSet::new();
            while let Some(stream) = listener.accept().await {
                echoes.spawn(async move {
                    let (mut tx, mut rx) = stream.split();
                    while let Some(Ok(m)) = rx.recv().await {
                        if tx.send(m.payload).await.is_err() {
                            return;
                        }
                    }
                    let _ = tx.finish().await;
                });
            }
        });
    }
    let open_conns = connect_all(target, "opener", w.publishers, w).await?;
    let mut streams = Vec::new();
    for conn in &open_conns {
        let client = conn.nexus().context("streams need a Nexus target")?;
        streams.push(client.open_stream(&subject).await?);
    }
    let start = Instant::now();
    let give_up = w.duration + w.drain + w.request_timeout;
    let mut tasks = JoinSet::new();
    for (index, stream) in streams.into_iter().enumerate() {
        let (mut tx, mut rx) = stream.split();
        let until = Until::new(w, start, w.count);
        let size = w.payload;
        let sender = tokio::spawn(async move {
            let mut errors = Errors::default();
            let mut i = 0;
            while until.allows(i, Instant::now()) {
                let stamp = Stamp {
                    publisher: index as u32,
                    seq: i,
                    sent_ns: payload::now_ns(),
                };
                if let Err(e) = tx.send(payload::encode(stamp, size)).await {
                    errors.add(e);
                    break;
                }
                i += 1;
            }
            if let Err(e) = tx.finish().await {
                errors.add(e);
            }
            (i, errors)
        });
        tasks.spawn(async move {
            let mut out = ReqOutcome::default();
            let mut hist = report::new_histogram();
            let mut next = 0;
            let received = tokio::time::timeout(give_up, async {
                while let Some(r) = rx.recv().await {
                    match r {
                        Ok(m) => {
                            out.answered += 1;
                            match payload::decode(&m.payload) {
                                Some(s) => {
                                    report::record(&mut hist, s.age_ns());
                                    if s.seq != next {
                                        out.mismatched += 1;
                                    }
                                    next = s.seq + 1;
                                }
                                None => out.mismatched += 1,
                            }
                        }
                        Err(e) => out.errors.add(e),
                    }
                }
            })
            .await;
            if received.is_err() {
                out.errors.add("timed out waiting for the echo to finish");
            }
            match sender.await {
                Ok((sent, errors)) => {
                    out.sent = sent;
                    out.errors.merge(errors);
                }
                Err(e) => out.errors.add(e),
            }
            (out, hist)
        });
    }
    let mut total = ReqOutcome::default();
    let mut hist = report::new_histogram();
    while let Some(r) = tasks.join_next().await {
        let (o, h) = r?;
        total.merge(o);
        hist.add(&h)?;
    }
    let elapsed = start.elapsed();
    drop(acceptors);
    close_all(open_conns).await;
    close_all(acc_conns).await;
    Ok(total.into_result(&hist, elapsed))
}

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
