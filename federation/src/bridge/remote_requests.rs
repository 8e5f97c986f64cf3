//! Requests across regions and gateways: sending a request to the region its route picks or
//! the gateway of this region the gateway balancer picks (with the deadline reduced by the
//! link's RTT), learning each region's service time and each gateway's reply latency from
//! the replies, failing at once what was in flight on a link that ended, and serving
//! requests other regions send here with local responders only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nexus_gateway::local_gateway::LocalGateway;
use nexus_gateway::router::{ReplyResult, Waiter, error};
use nexus_proto::v1::{ErrorCode, Header, RemoteReply, RemoteRequest, link_frame::Kind};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::cluster::balance::GatewayBalance;
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

/// Where a request goes: the region's home link, or one gateway of this region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Via {
    Region(String),
    Gateway(String),
}

impl Via {
    fn name(&self) -> &str {
        match self {
            Via::Region(r) => r,
            Via::Gateway(g) => g,
        }
    }
}

/// A request sent to another region or gateway.
struct Outstanding {
    /// The region or gateway it went to (costs are kept per name).
    region: String,
    /// Its subject, when it went to a gateway of this region (whose latency per subject the
    /// gateway balancer learns).
    to_gateway: Option<Box<str>>,
    link: LinkId,
    sent: Instant,
    reply: oneshot::Sender<ReplyResult>,
}

#[derive(Default)]
pub(super) struct RemoteRequests {
    outstanding: Mutex<HashMap<u64, Outstanding>>,
    next: AtomicU64,
    pub(super) costs: Mutex<HashMap<String, RegionCost>>,
    /// The region's other gateways as takers of requests: their reply latency (hop
    /// included) and requests in flight.
    pub(super) gateways: Mutex<GatewayBalance>,
}

impl RemoteRequests {
    /// Sends a request to `via` with what is left of `timeout` after the round trip. Hands
    /// the message back when `via` has no link.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send(
        &self,
        fed: &Federation,
        via: Via,
        subject: &str,
        message_id: &Bytes,
        headers: Vec<Header>,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<oneshot::Receiver<ReplyResult>, (Vec<Header>, Bytes)> {
        let rtt = match &via {
            Via::Region(r) => fed.rtt(r),
            Via::Gateway(g) => fed.rtt_to(g),
        };
        let Some(rtt) = rtt else {
            return Err((headers, payload));
        };
        let region = via.name().to_owned();
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
            return Ok(rx);
        };
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let request = RemoteRequest {
            id,
            subject: subject.to_owned(),
            headers,
            payload,
            deadline_ms: budget.as_millis().min(u128::from(u32::MAX)) as u32,
            origin_region: fed.region().to_owned(),
            message_id: message_id.clone(),
        };
        // Registered on the link it goes on before it can be answered, so a link that ends
        // from here on fails it.
        let link = match &via {
            Via::Region(r) => fed.current(r),
            Via::Gateway(g) => fed.link_to(g),
        };
        let Some(link) = link else {
            let _ = tx.send(Err(error(
                ErrorCode::ServiceError,
                format!("the link to region {region} is down"),
                0,
            )));
            return Ok(rx);
        };
        let to_gateway = matches!(via, Via::Gateway(_)).then(|| Box::<str>::from(subject));
        self.outstanding.lock().insert(
            id,
            Outstanding {
                region: region.clone(),
                to_gateway: to_gateway.clone(),
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
        if let Some(subject) = &to_gateway {
            self.gateways.lock().start(&region, subject, Instant::now());
        }
        let sent = match &via {
            Via::Region(r) => fed.send_on(r, link, Kind::Request(request)),
            Via::Gateway(g) => fed.send_on_to(g, link, Kind::Request(request)),
        };
        if sent != Sent::Queued {
            self.fail(id, format!("the link to region {region} is down or full"));
        }
        Ok(rx)
    }

    fn fail(&self, id: u64, message: String) {
        let Some(o) = self.outstanding.lock().remove(&id) else {
            return;
        };
        if let Some(c) = self.costs.lock().get_mut(&o.region) {
            c.in_flight = c.in_flight.saturating_sub(1);
        }
        if let Some(subject) = &o.to_gateway {
            self.gateways.lock().done(&o.region, subject);
        }
        let _ = o
            .reply
            .send(Err(error(ErrorCode::ServiceError, message, 0)));
    }

    /// A reply that came over `link`.
    pub(super) fn on_reply(&self, fed: &Federation, link: &LinkInfo, reply: RemoteReply) {
        let Some(o) = self.outstanding.lock().remove(&reply.id) else {
            return;
        };
        let rtt = fed.rtt_to(&link.gateway_id).unwrap_or_default();
        let latency = o.sent.elapsed();
        let service = latency.saturating_sub(rtt);
        if let Some(subject) = &o.to_gateway {
            let mut gateways = self.gateways.lock();
            if reply.error.is_none() {
                gateways.success(&o.region, subject, latency, Instant::now());
            } else {
                gateways.done(&o.region, subject);
            }
        }
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
pub(super) async fn serve(gateway: &dyn LocalGateway, request: RemoteRequest) -> RemoteReply {
    let deadline = Duration::from_millis(u64::from(request.deadline_ms.max(1)));
    let (tx, rx) = oneshot::channel();
    // The requester's message id, so that the hops here are traced under it.
    let id = if request.message_id.len() == 16 {
        request.message_id.clone()
    } else {
        Bytes::copy_from_slice(&rand::random::<[u8; 16]>())
    };
    let routed = gateway
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
