//! Requests across regions: sending a request no local responder took to the region its
//! route picks (with the deadline reduced by the link's RTT), learning each region's service
//! time from the replies, failing at once what was in flight on a link that ended, and
//! serving requests other regions send here with local responders only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nexus_gateway::router::{ReplyResult, Router, Waiter, error};
use nexus_proto::v1::{ErrorCode, Header, RemoteReply, RemoteRequest, link_frame::Kind};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::link::{Federation, LinkId, LinkInfo, Sent};

/// A latency estimate of what a region's responders take, learnt from replies.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct RegionCost {
    /// Peak-EWMA of service time (reply latency minus link RTT), in microseconds.
    pub(super) service_us: f64,
    pub(super) in_flight: u32,
}

impl RegionCost {
    fn observe(&mut self, service_us: f64) {
        // Peak-sensitive: a slower sample takes over at once, faster ones decay in.
        if service_us > self.service_us {
            self.service_us = service_us;
        } else {
            self.service_us += (service_us - self.service_us) * 0.2;
        }
    }
}

/// A request sent to another region.
struct Outstanding {
    region: String,
    link: LinkId,
    sent: Instant,
    reply: oneshot::Sender<ReplyResult>,
}

#[derive(Default)]
pub(super) struct RemoteRequests {
    outstanding: Mutex<HashMap<u64, Outstanding>>,
    next: AtomicU64,
    pub(super) costs: Mutex<HashMap<String, RegionCost>>,
}

impl RemoteRequests {
    /// Sends a request to `region` with what is left of `timeout` after the round trip.
    pub(super) fn send(
        &self,
        fed: &Federation,
        region: String,
        subject: &str,
        headers: Vec<Header>,
        payload: Bytes,
        timeout: Duration,
    ) -> Option<oneshot::Receiver<ReplyResult>> {
        let rtt = fed.rtt(&region)?;
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
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let request = RemoteRequest {
            id,
            subject: subject.to_owned(),
            headers,
            payload,
            deadline_ms: budget.as_millis().min(u128::from(u32::MAX)) as u32,
            origin_region: fed.region().to_owned(),
        };
        // Registered on the link it goes on before it can be answered, so a link that ends
        // from here on fails it.
        let Some(link) = fed.current(&region) else {
            let _ = tx.send(Err(error(
                ErrorCode::ServiceError,
                format!("the link to region {region} is down"),
                0,
            )));
            return Some(rx);
        };
        self.outstanding.lock().insert(
            id,
            Outstanding {
                region: region.clone(),
                link,
                sent: Instant::now(),
                reply: tx,
            },
        );
        self.costs
            .lock()
            .entry(region.clone())
            .or_default()
            .in_flight += 1;
        if fed.send_on(&region, link, Kind::Request(request)) != Sent::Queued {
            self.fail(id, format!("the link to region {region} is down or full"));
        }
        Some(rx)
    }

    fn fail(&self, id: u64, message: String) {
        let Some(o) = self.outstanding.lock().remove(&id) else {
            return;
        };
        if let Some(c) = self.costs.lock().get_mut(&o.region) {
            c.in_flight = c.in_flight.saturating_sub(1);
        }
        let _ = o
            .reply
            .send(Err(error(ErrorCode::ServiceError, message, 0)));
    }

    /// A reply from `region`.
    pub(super) fn on_reply(&self, fed: &Federation, region: &str, reply: RemoteReply) {
        let Some(o) = self.outstanding.lock().remove(&reply.id) else {
            return;
        };
        let rtt = fed.rtt(region).unwrap_or_default();
        let service = o.sent.elapsed().saturating_sub(rtt);
        {
            let mut costs = self.costs.lock();
            let c = costs.entry(o.region).or_default();
            c.in_flight = c.in_flight.saturating_sub(1);
            if reply.error.is_none() {
                c.observe(service.as_secs_f64() * 1e6);
            }
        }
        let result = match reply.error {
            Some(e) => Err(e),
            None => Ok((reply.headers, reply.payload)),
        };
        let _ = o.reply.send(result);
    }

    /// `link` ended: its requests in flight will get no answer; fail them now.
    pub(super) fn link_down(&self, link: &LinkInfo, reason: &str) {
        let ids: Vec<u64> = self
            .outstanding
            .lock()
            .iter()
            .filter(|(_, o)| o.link == link.id)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.fail(
                id,
                format!(
                    "the link to region {} went down before the reply ({reason})",
                    link.region
                ),
            );
        }
    }
}

/// Serves a request from another region with local responders only, within its budget.
pub(super) async fn serve(router: &Router, request: RemoteRequest) -> RemoteReply {
    let deadline = Duration::from_millis(u64::from(request.deadline_ms.max(1)));
    let (tx, rx) = oneshot::channel();
    let id = Bytes::copy_from_slice(&rand::random::<[u8; 16]>());
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
