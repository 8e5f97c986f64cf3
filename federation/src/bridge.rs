//! `RegionRouter`: joins a gateway's router to its federation links. It advertises local
//! interest to every linked region, keeps what the others advertise, forwards local
//! publishes only to regions that asked for the subject, and hands messages from other
//! regions to the local router.
//!
//! Consistency today is `best_effort` for every subject: a message is forwarded while the
//! link is up and has room, and dropped (and counted) otherwise. Routes' policies and the
//! `async` / `sync` modes build on this.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use nexus_gateway::router::{ReplyResult, Waiter, error};
use nexus_proto::v1::{ErrorCode, Header, RemoteReply, RemoteRequest, link_frame::Kind};
use tokio::sync::oneshot;

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
    /// Requests sent to other regions, by id: (region, where the answer goes).
    requests: Mutex<HashMap<u64, (String, oneshot::Sender<ReplyResult>)>>,
    next_request: AtomicU64,
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
            requests: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
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

    async fn on_event(self: &Arc<Self>, router: &Arc<Router>, event: LinkEvent) {
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
            LinkEvent::Request { region, request } => {
                // Served like a local request, with the budget the requester has left.
                let bridge = self.clone();
                let router = router.clone();
                tokio::spawn(async move {
                    let reply = bridge.serve_remote(&router, request).await;
                    if !bridge.fed.try_send_data(&region, Kind::Reply(reply)) {
                        tracing::warn!(%region, "could not send a reply back across the link");
                    }
                });
            }
            LinkEvent::Reply { reply, .. } => {
                if let Some((_, tx)) = self.requests.lock().remove(&reply.id) {
                    let result = match reply.error {
                        Some(e) => Err(e),
                        None => Ok((reply.headers, reply.payload)),
                    };
                    let _ = tx.send(result);
                }
            }
            LinkEvent::Down { region, reason } => {
                // Requests in flight on this link will get no answer: fail them now.
                let failed: Vec<oneshot::Sender<ReplyResult>> = {
                    let mut requests = self.requests.lock();
                    let ids: Vec<u64> = requests
                        .iter()
                        .filter(|(_, (r, _))| *r == region)
                        .map(|(id, _)| *id)
                        .collect();
                    ids.into_iter()
                        .filter_map(|id| requests.remove(&id).map(|(_, tx)| tx))
                        .collect()
                };
                for tx in failed {
                    let _ = tx.send(Err(error(
                        ErrorCode::ServiceError,
                        format!("the link to region {region} went down before the reply"),
                        0,
                    )));
                }
                tracing::warn!(%region, %reason, "federation link down");
                self.metrics
                    .federation_links
                    .set(self.fed.connected_regions().len() as i64);
                // The region's interest is kept: what it would have received while the
                // link is down is counted as dropped. A full update replaces it on Up.
            }
        }
    }

    async fn serve_remote(&self, router: &Router, request: RemoteRequest) -> RemoteReply {
        let deadline = Duration::from_millis(u64::from(request.deadline_ms.max(1)));
        let (tx, rx) = oneshot::channel();
        let id = Bytes::copy_from_slice(&rand_id());
        let routed = router
            .request_from_region(
                Waiter::Unary(tx),
                &request.subject,
                request.headers,
                request.payload,
                id,
                deadline,
            )
            .await;
        let result = match routed {
            Err((_, e)) => Err(error(ErrorCode::NoResponders, e.to_string(), 0)),
            Ok(_) => match tokio::time::timeout(deadline, rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(error(ErrorCode::ServiceError, "request was dropped", 0)),
                Err(_) => Err(error(ErrorCode::Timeout, "request timed out", 0)),
            },
        };
        match result {
            Ok((headers, payload)) => RemoteReply {
                id: request.id,
                headers,
                payload,
                error: None,
            },
            Err(e) => RemoteReply {
                id: request.id,
                headers: Vec::new(),
                payload: Bytes::new(),
                error: Some(e),
            },
        }
    }

    /// Regions that currently want `subject`.
    pub fn regions_for(&self, subject: &str) -> Vec<String> {
        self.remote.lock().regions_for(subject)
    }
}

fn rand_id() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    let mut out = [0u8; 16];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(i);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}

impl Remote for RegionRouter {
    fn request(
        &self,
        subject: &str,
        headers: Vec<Header>,
        payload: Bytes,
        timeout: Duration,
    ) -> Option<oneshot::Receiver<ReplyResult>> {
        // The nearest region with responders, by the link's measured RTT.
        let regions = self.remote.lock().regions_for(subject);
        let (region, rtt) = regions
            .into_iter()
            .filter_map(|r| self.fed.rtt(&r).map(|rtt| (r, rtt)))
            .min_by_key(|(_, rtt)| *rtt)?;
        let (tx, rx) = oneshot::channel();
        // The remote side gets what is left after the round trip it costs to get there
        // and back.
        let Some(budget) = timeout.checked_sub(rtt).filter(|b| !b.is_zero()) else {
            let _ = tx.send(Err(error(
                ErrorCode::Timeout,
                format!(
                    "the {}-ms budget is below the RTT to region {region}",
                    timeout.as_millis()
                ),
                0,
            )));
            return Some(rx);
        };
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        self.requests.lock().insert(id, (region.clone(), tx));
        let request = RemoteRequest {
            id,
            subject: subject.to_owned(),
            headers,
            payload,
            deadline_ms: budget.as_millis().min(u128::from(u32::MAX)) as u32,
            origin_region: self.fed.region().to_owned(),
        };
        if !self.fed.try_send_data(&region, Kind::Request(request))
            && let Some((_, tx)) = self.requests.lock().remove(&id)
        {
            let _ = tx.send(Err(error(
                ErrorCode::ServiceError,
                format!("the link to region {region} is down or full"),
                0,
            )));
        }
        Some(rx)
    }

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
