//! `RegionRouter`: joins a gateway's router to its federation links. It advertises local
//! interest to every linked region, keeps what the others advertise, forwards local
//! publishes only to regions that asked for the subject, and hands messages from other
//! regions to the local router.
//!
//! Consistency today is `best_effort` for every subject: a message is forwarded while the
//! link is up and has room, and dropped (and counted) otherwise. Routes' policies and the
//! `async` / `sync` modes build on this.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use nexus_gateway::metrics::{FederationOutcome, GatewayMetrics};
use nexus_gateway::remote::Remote;
use nexus_gateway::router::{Delivery, Router};
use nexus_proto::v1::Forward;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::interest::{LocalInterest, RemoteInterest};
use crate::link::{Federation, LinkEvent};

/// Counters of cross-region traffic.
#[derive(Default, Debug)]
pub struct BridgeStats {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
    pub received: AtomicU64,
}

pub struct RegionRouter {
    fed: Arc<Federation>,
    metrics: Arc<GatewayMetrics>,
    local: Mutex<LocalInterest>,
    remote: Mutex<RemoteInterest>,
    pub stats: BridgeStats,
}

impl RegionRouter {
    /// Connects `router` to `fed` and starts handling link events from `events`.
    pub fn start(
        router: Arc<Router>,
        fed: Arc<Federation>,
        mut events: mpsc::Receiver<LinkEvent>,
    ) -> Arc<Self> {
        let bridge = Arc::new(Self {
            fed,
            metrics: router.metrics.clone(),
            local: Mutex::new(LocalInterest::default()),
            remote: Mutex::new(RemoteInterest::default()),
            stats: BridgeStats::default(),
        });
        router.set_remote(bridge.clone());
        let b = bridge.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                b.on_event(&router, event).await;
            }
        });
        bridge
    }

    async fn on_event(&self, router: &Router, event: LinkEvent) {
        match event {
            LinkEvent::Up { region, .. } => {
                self.metrics
                    .federation_links
                    .set(self.fed.connected_regions().len() as i64);
                // A new or returning peer: tell it everything we want.
                let full = self.local.lock().full();
                self.fed.send_interest(&region, full);
            }
            LinkEvent::Interest { region, update } => {
                let rejected = self.remote.lock().apply(&region, &update);
                if !rejected.is_empty() {
                    tracing::warn!(%region, ?rejected, "peer advertised invalid patterns");
                }
            }
            LinkEvent::Forward { region, forward } => {
                self.stats.received.fetch_add(1, Ordering::Relaxed);
                self.metrics.federation(FederationOutcome::Received);
                let msg = Delivery {
                    subject: forward.subject,
                    reply_to: forward.reply_to,
                    headers: forward.headers,
                    payload: forward.payload,
                    id: forward.id,
                };
                if nexus_proto::subject::validate_subject(&msg.subject).is_err() {
                    tracing::warn!(%region, subject = %msg.subject, "dropping a forward with an invalid subject");
                    return;
                }
                router.deliver_from_region(msg).await;
            }
            LinkEvent::Down { region, reason } => {
                tracing::warn!(%region, %reason, "federation link down");
                self.metrics
                    .federation_links
                    .set(self.fed.connected_regions().len() as i64);
                // The region's interest is kept: what it would have received while the
                // link is down is counted as dropped. A full update replaces it on Up.
            }
        }
    }

    /// Regions that currently want `subject`.
    pub fn regions_for(&self, subject: &str) -> Vec<String> {
        self.remote.lock().regions_for(subject)
    }
}

impl Remote for RegionRouter {
    fn interest_changed(&self, pattern: &str, present: bool) {
        let delta = {
            let mut local = self.local.lock();
            if present {
                local.add(pattern)
            } else {
                local.remove(pattern)
            }
        };
        if let Some(delta) = delta {
            self.fed.broadcast_interest(&delta);
        }
    }

    fn publish(&self, msg: &Delivery) {
        let regions = self.remote.lock().regions_for(&msg.subject);
        for region in regions {
            let forward = Forward {
                subject: msg.subject.clone(),
                reply_to: String::new(),
                headers: msg.headers.clone(),
                payload: msg.payload.clone(),
                id: msg.id.clone(),
                origin_region: self.fed.region().to_owned(),
            };
            if self.fed.try_forward(&region, forward) {
                self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
                self.metrics.federation(FederationOutcome::Forwarded);
            } else {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                self.metrics.federation(FederationOutcome::Dropped);
            }
        }
    }
}
