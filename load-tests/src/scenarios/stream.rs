//! Bidirectional streams (Nexus only): openers send frames, acceptors echo them back.

use std::time::Instant;

use anyhow::{Context, Result};
use tokio::task::JoinSet;

use super::request::ReqOutcome;
use super::{Errors, Until, Workload, close_all, connect_all, unique_subject};
use crate::payload::{self, Stamp};
use crate::report::{self, ScenarioResult};
use crate::target::Target;

pub(super) async fn streams(target: &Target, w: &Workload) -> Result<ScenarioResult> {
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
