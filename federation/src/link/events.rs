//! What a link tells its owner: [`LinkHandler`], called from the link's own tasks, and
//! [`LinkEvent`] with [`EventChannel`], the same as a stream of values for tests and tools.

use futures::future::BoxFuture;
use nexus_proto::v1::{
    Forward, InterestUpdate, RemoteReply, RemoteRequest, Spooled, link_frame::Kind,
};
use tokio::sync::mpsc;

/// One link (one QUIC connection) to one region; a new link to the same region gets a new
/// id, so state kept per link (a send cursor, requests in flight) can never be mistaken for
/// the next link's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub u64);

impl std::fmt::Display for LinkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "link#{}", self.0)
    }
}

/// Who is at the other end of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub id: LinkId,
    pub region: String,
    pub gateway_id: String,
}

/// The owner of a federation endpoint (the bridge). For each link, [`LinkHandler::up`] comes
/// before any of its frames and [`LinkHandler::down`] once, when it has ended; frames of one
/// stream arrive in order.
pub trait LinkHandler: Send + Sync + 'static {
    /// The link is up and usable.
    fn up(&self, link: &LinkInfo);
    /// The link ended (closed, silent for the detection time, or replaced by a newer one).
    fn down(&self, link: &LinkInfo, reason: &str);
    /// A frame from the control stream: interest, confirmations. Must not block.
    fn control(&self, link: &LinkInfo, frame: Kind);
    /// A frame from the data stream. The link reads nothing more from that stream until the
    /// future resolves, so a slow local delivery slows this link (and, through QUIC's flow
    /// control, its sender) and nothing else.
    fn data<'a>(&'a self, link: &'a LinkInfo, frame: Kind) -> BoxFuture<'a, ()>;
}

/// What happens on links, as values.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkEvent {
    Up {
        region: String,
        gateway_id: String,
    },
    Interest {
        region: String,
        update: InterestUpdate,
    },
    Forward {
        region: String,
        forward: Forward,
    },
    Request {
        region: String,
        request: RemoteRequest,
    },
    Reply {
        region: String,
        reply: RemoteReply,
    },
    Spooled {
        region: String,
        spooled: Spooled,
    },
    /// Any other control frame (confirmations, nacks).
    Control {
        region: String,
        frame: Kind,
    },
    Down {
        region: String,
        reason: String,
    },
}

/// A [`LinkHandler`] that turns everything into [`LinkEvent`]s on a bounded channel (data
/// frames wait for room, as a real owner's deliveries would).
pub struct EventChannel {
    tx: mpsc::Sender<LinkEvent>,
}

impl EventChannel {
    pub fn new(capacity: usize) -> (std::sync::Arc<Self>, mpsc::Receiver<LinkEvent>) {
        let (tx, rx) = mpsc::channel(capacity);
        (std::sync::Arc::new(EventChannel { tx }), rx)
    }

    fn emit(&self, event: LinkEvent) {
        if self.tx.try_send(event).is_err() {
            tracing::debug!("link event dropped: the channel is full or closed");
        }
    }
}

impl LinkHandler for EventChannel {
    fn up(&self, link: &LinkInfo) {
        self.emit(LinkEvent::Up {
            region: link.region.clone(),
            gateway_id: link.gateway_id.clone(),
        });
    }

    fn down(&self, link: &LinkInfo, reason: &str) {
        self.emit(LinkEvent::Down {
            region: link.region.clone(),
            reason: reason.to_owned(),
        });
    }

    fn control(&self, link: &LinkInfo, frame: Kind) {
        let region = link.region.clone();
        self.emit(match frame {
            Kind::Interest(update) => LinkEvent::Interest { region, update },
            frame => LinkEvent::Control { region, frame },
        });
    }

    fn data<'a>(&'a self, link: &'a LinkInfo, frame: Kind) -> BoxFuture<'a, ()> {
        let region = link.region.clone();
        let event = match frame {
            Kind::Forward(forward) => LinkEvent::Forward { region, forward },
            Kind::Request(request) => LinkEvent::Request { region, request },
            Kind::Reply(reply) => LinkEvent::Reply { region, reply },
            Kind::Spooled(spooled) => LinkEvent::Spooled { region, spooled },
            frame => LinkEvent::Control { region, frame },
        };
        Box::pin(async move {
            let _ = self.tx.send(event).await;
        })
    }
}
