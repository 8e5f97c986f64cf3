//! Sending on links: by region (through the link to the region's home gateway, [`Federation::via`]) or
//! to one gateway of this region; best-effort forwards, data and control frames. A
//! best-effort message that finds no link is counted as dropped (`link_down`) here, under the
//! region it was for (this gateway's own for a cluster peer).

use std::sync::Arc;
use std::time::Duration;

use nexus_proto::v1::{Forward, InterestUpdate, LinkFrame, link_frame::Kind};

use super::session::Link;
use super::{Federation, LinkError, LinkId, LinkKind, Sent};
use crate::metrics::DropReason;

impl Federation {
    /// The link messages for `region` go through: this gateway's first home there that is
    /// linked, otherwise any link to a gateway of that region (the lowest id).
    pub(super) fn route(&self, region: &str) -> Option<Arc<Link>> {
        let homes = self.homes.load();
        let links = self.links.load();
        let via = crate::cluster::membership::route_via(
            homes.get(region).map_or(&[][..], Vec::as_slice),
            links
                .values()
                .filter(|l| l.info.region == region)
                .map(|l| l.info.gateway_id.as_str()),
            |h| links.contains_key(h),
        )?;
        links.get(via).cloned()
    }

    /// The gateway `region`'s messages go through now, if any.
    pub fn via(&self, region: &str) -> Option<String> {
        self.route(region).map(|l| l.info.gateway_id.clone())
    }

    /// The link `region`'s messages go through now, if any.
    pub fn current(&self, region: &str) -> Option<LinkId> {
        self.route(region).map(|l| l.info.id)
    }

    /// The link to one gateway, if it is up.
    pub fn link_to(&self, gateway_id: &str) -> Option<LinkId> {
        self.links.load().get(gateway_id).map(|l| l.info.id)
    }

    /// Queues a data frame on one particular link to one gateway.
    pub fn send_on_to(&self, gateway_id: &str, link: LinkId, kind: Kind) -> Sent {
        let l = self.links.get(gateway_id);
        match l {
            Some(l) if l.info.id == link => match l.data.try_send(LinkFrame { kind: Some(kind) }) {
                Ok(()) => Sent::Queued,
                Err(_) => Sent::Full,
            },
            _ => Sent::Gone,
        }
    }

    /// Sends an interest update on the link `region`'s messages go through, and on every
    /// other link to that region; false if there is none.
    pub fn send_interest(&self, region: &str, update: InterestUpdate) -> bool {
        let links = self.links.load();
        let mut sent = false;
        for l in links.values().filter(|l| l.info.region == region) {
            sent |= l
                .control
                .try_send(LinkFrame {
                    kind: Some(Kind::Interest(update.clone())),
                })
                .is_ok();
        }
        sent
    }

    /// Sends an interest update on every link of one kind.
    pub fn broadcast_interest(&self, kind: LinkKind, update: &InterestUpdate) {
        self.broadcast_control(kind, Kind::Interest(update.clone()));
    }

    /// Queues a control frame on every link of `kind` (dropped on a link whose control
    /// queue is full, as interest updates are).
    pub fn broadcast_control(&self, kind: LinkKind, frame: Kind) {
        for link in self.links.load().values().filter(|l| l.kind == kind) {
            let _ = link.control.try_send(LinkFrame {
                kind: Some(frame.clone()),
            });
        }
    }

    /// Queues a message for `region`, waiting for room while the link is up (for tools that
    /// want backpressure rather than drops).
    pub async fn forward(&self, region: &str, forward: Forward) -> Result<(), LinkError> {
        let link = self
            .route(region)
            .ok_or_else(|| LinkError::NotConnected(region.to_owned()))?;
        link.forward(LinkFrame {
            kind: Some(Kind::Forward(forward)),
        })
        .await
        .map_err(|_| LinkError::NotConnected(region.to_owned()))
    }

    /// Queues a best-effort message for `region` without waiting; `false` when there is no
    /// link or its queue is full. Either way it is counted: forwarded (and later confirmed
    /// or lost with the link), or dropped with the reason.
    pub fn try_forward(&self, region: &str, forward: Forward) -> bool {
        match self.route(region) {
            Some(link) => link.try_forward(LinkFrame {
                kind: Some(Kind::Forward(forward)),
            }),
            None => {
                self.metrics.dropped(region, DropReason::LinkDown, 1);
                false
            }
        }
    }

    /// Queues a best-effort message for one gateway (a cluster peer) without waiting; `false`
    /// when there is no link to it (counted as dropped, `link_down`, under this region) or its
    /// queue is full (counted as `queue_full`).
    pub fn try_forward_to(&self, gateway_id: &str, forward: Forward) -> bool {
        let link = self.links.get(gateway_id);
        match link {
            Some(link) => link.try_forward(LinkFrame {
                kind: Some(Kind::Forward(forward)),
            }),
            None => {
                self.metrics.dropped(self.region(), DropReason::LinkDown, 1);
                false
            }
        }
    }

    /// Queues a best-effort message for one gateway of this region without waiting:
    /// `Ok(None)` when queued; when its link's queue is full the message comes back as a
    /// [`Backlogged`] forward for the caller to wait on (or drop); `Err(())` when there is no
    /// link to the gateway (counted as dropped, as by [`Federation::try_forward_to`]).
    #[allow(clippy::result_unit_err)]
    pub fn forward_to_or_backlog(
        &self,
        gateway_id: &str,
        forward: Forward,
    ) -> Result<Option<Backlogged>, ()> {
        let Some(link) = self.links.get(gateway_id) else {
            self.metrics.dropped(self.region(), DropReason::LinkDown, 1);
            return Err(());
        };
        let frame = LinkFrame {
            kind: Some(Kind::Forward(forward)),
        };
        Ok(link
            .offer_forward(frame)
            .map(|frame| Backlogged { link, frame }))
    }

    /// Queues a request or reply (or any data frame) for `region` without waiting; the link
    /// it went on, or `None` when there is no link or its queue is full.
    pub fn try_send_data(&self, region: &str, kind: Kind) -> Option<LinkId> {
        let link = self.route(region)?;
        link.data
            .try_send(LinkFrame { kind: Some(kind) })
            .ok()
            .map(|_| link.info.id)
    }

    /// Queues a data frame for one gateway, waiting for room while its link is up.
    pub async fn send_data_to(&self, gateway_id: &str, kind: Kind) -> Result<(), LinkError> {
        let link = self
            .links
            .get(gateway_id)
            .ok_or_else(|| LinkError::NotConnected(gateway_id.to_owned()))?;
        link.data
            .send(LinkFrame { kind: Some(kind) })
            .await
            .map_err(|_| LinkError::NotConnected(gateway_id.to_owned()))
    }

    /// Queues a data frame for one gateway without waiting; the link it went on.
    pub fn try_send_data_to(&self, gateway_id: &str, kind: Kind) -> Option<LinkId> {
        let link = self.links.get(gateway_id)?;
        link.data
            .try_send(LinkFrame { kind: Some(kind) })
            .ok()
            .map(|_| link.info.id)
    }

    /// Queues a data frame on one particular link to `region` (the spool pump's, which must
    /// never continue on a link other than the one its cursor belongs to).
    pub fn send_on(&self, region: &str, link: LinkId, kind: Kind) -> Sent {
        match self.route(region) {
            Some(l) if l.info.id == link => match l.data.try_send(LinkFrame { kind: Some(kind) }) {
                Ok(()) => Sent::Queued,
                Err(_) => Sent::Full,
            },
            _ => Sent::Gone,
        }
    }

    /// Queues a control frame (small, never behind data) for `region` without waiting.
    pub fn try_send_control(&self, region: &str, kind: Kind) -> bool {
        self.route(region)
            .is_some_and(|l| l.control.try_send(LinkFrame { kind: Some(kind) }).is_ok())
    }

    /// Queues a control frame for one gateway without waiting.
    pub fn try_send_control_to(&self, gateway_id: &str, kind: Kind) -> bool {
        self.links
            .load()
            .get(gateway_id)
            .is_some_and(|l| l.control.try_send(LinkFrame { kind: Some(kind) }).is_ok())
    }
}

/// A best-effort message whose link had no room when it was published: the publisher waits
/// for room (the `backpressure` slow-consumer policy applied to a cluster hop) or it is
/// dropped and counted.
pub struct Backlogged {
    link: Arc<Link>,
    frame: LinkFrame,
}

impl Backlogged {
    /// Waits at most `max` for room on the link; `false` when the message was dropped.
    pub async fn wait(self, max: Duration) -> bool {
        self.link.forward_within(self.frame, max).await
    }
}
