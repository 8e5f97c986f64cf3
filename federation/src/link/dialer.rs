//! Keeping the links this gateway dials up: one task per dial target, re-dialling with backoff
//! (100 ms doubling to 5 s, back to 100 ms after a link that stayed up for 10 s) until the
//! target is no longer wanted.
//!
//! Targets come from three places: the membership pushed by the control plane (a gateway by
//! id: cluster peers and homes, [`crate::cluster::membership`]), static federation peers
//! (`--peer REGION=ADDR`: a region, dialled by the side whose region sorts first) and static
//! cluster peers (`--cluster-peer ADDR`: a gateway of this region whose id is learnt from its
//! hello).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Federation;

/// What a dial task is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DialKey {
    /// A gateway the membership names.
    Gateway(String),
    /// `--peer REGION=ADDR`.
    StaticRegion(String),
    /// `--cluster-peer ADDR`.
    StaticCluster(SocketAddr),
}

/// Where to dial and whom to expect there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialTarget {
    pub addr: SocketAddr,
    pub region: String,
    /// The gateway id its hello and certificate must name, when known.
    pub gateway_id: Option<String>,
}

/// The dial tasks running, by what they are for.
#[derive(Default)]
pub struct Dialing {
    tasks: HashMap<DialKey, (DialTarget, CancellationToken)>,
}

impl Dialing {
    /// Makes the running tasks of `kind` exactly `wanted`: starts the new ones, stops those no
    /// longer wanted or whose target changed. `kind` selects which keys `wanted` replaces.
    pub fn follow(
        &mut self,
        fed: &Arc<Federation>,
        is_kind: impl Fn(&DialKey) -> bool,
        wanted: HashMap<DialKey, DialTarget>,
    ) {
        self.tasks.retain(|key, (target, stop)| {
            let keep = !is_kind(key) || wanted.get(key) == Some(target);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for (key, target) in wanted {
            if self.tasks.contains_key(&key) {
                continue;
            }
            tracing::info!(peer = ?key, addr = %target.addr, "keeping a link");
            let stop = keep_dialling(fed, target.clone());
            self.tasks.insert(key, (target, stop));
        }
    }

    /// Every dial target, for status.
    pub fn targets(&self) -> Vec<(DialKey, DialTarget)> {
        let mut v: Vec<_> = self
            .tasks
            .iter()
            .map(|(k, (t, _))| (k.clone(), t.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// Dials `target` until stopped; the returned token stops it.
fn keep_dialling(fed: &Arc<Federation>, target: DialTarget) -> CancellationToken {
    let stop = fed.stop.child_token();
    let token = stop.clone();
    let fed = fed.clone();
    tokio::spawn(async move {
        let peer = target
            .gateway_id
            .clone()
            .unwrap_or_else(|| target.region.clone());
        let mut backoff = Duration::from_millis(100);
        let mut failures = 0u32;
        loop {
            if stop.is_cancelled() {
                return;
            }
            // A link with the gateway at that address may exist already (it dialled us):
            // wait on that one instead of dialling a second.
            if let Some(conn) = fed.link_at(target.addr) {
                tokio::select! {
                    _ = conn.closed() => {}
                    _ = stop.cancelled() => return,
                }
                continue;
            }
            let started = tokio::time::Instant::now();
            match fed.dial(&target).await {
                Ok(conn) => {
                    failures = 0;
                    let reason = tokio::select! {
                        e = conn.closed() => e.to_string(),
                        _ = stop.cancelled() => {
                            conn.close(0u32.into(), b"peer left the membership");
                            return;
                        }
                    };
                    tracing::info!(%peer, %reason, "link ended; re-dialling");
                    if started.elapsed() > Duration::from_secs(10) {
                        backoff = Duration::from_millis(100);
                    }
                }
                Err(e) => {
                    // Loud once per outage, quiet while it lasts.
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(%peer, addr = %target.addr, error = %e, "dial failed; retrying with backoff");
                    } else {
                        tracing::debug!(%peer, error = %e, failures, "dial failed");
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
    token
}
