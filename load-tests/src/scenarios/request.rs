//! Request/reply: a closed loop (each requester waits for its replies) and an open loop at
//! a fixed rate, against responders that echo.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use super::{Errors, Until, Workload, close_all, connect_all, share, unique_subject};
use crate::payload::{self, Stamp};
use crate::report::{self, Latency, ScenarioResult};
use crate::target::{Conn, Target};

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
pub(super) struct ReqOutcome {
    pub(super) sent: u64,
    pub(super) answered: u64,
    pub(super) mismatched: u64,
    pub(super) errors: Errors,
}

impl ReqOutcome {
    pub(super) fn merge(&mut self, o: ReqOutcome) {
        self.sent += o.sent;
        self.answered += o.answered;
        self.mismatched += o.mismatched;
        self.errors.merge(o.errors);
    }

    pub(super) fn into_result(self, hist: &Histogram<u64>, elapsed: Duration) -> ScenarioResult {
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

pub(super) async fn request_closed(
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

pub(super) async fn request_open(target: &Target, w: &Workload) -> Result<ScenarioResult> {
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
pub(super) fn tally(
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
