//! Pub/sub (1:1, fan-out) and queue groups: publishers on one target, subscribers or
//! workers on one or more, one row per group of subscribers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use super::{Errors, Until, Workload, close_all, connect_all, unique_subject};
use crate::payload::{self, Stamp};
use crate::report::{self, Latency, ScenarioResult};
use crate::target::{Conn, Target};

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
pub(super) async fn pubsub(
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
