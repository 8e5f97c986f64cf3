//! Streams whose opener and responder are sessions of two gateways of the region
//! (docs/cluster.md §5): the relay that carries their frames over the cluster link (one per
//! peer and role), the per-stream order in which frames from the peer are applied, and the
//! abort of every stream of a peer whose link went down.
//!
//! Frames for a stream arriving from a peer are handed to a small task of their own, in
//! order, so that a session that reads slowly holds up its own stream (as between two
//! sessions of one gateway: credits bound what can be queued) and never the cluster link's
//! data stream, which carries every other relay between the two gateways.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use nexus_gateway::local_gateway::LocalGateway;
use nexus_gateway::streams::{StreamEnd, StreamRelay};
use nexus_proto::v1::{self, ClusterStream, cluster_stream, frame, link_frame};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::link::Federation;

/// A stream with a side on another gateway: (peer gateway id, opened here, id).
type Key = (String, bool, u64);

struct Route {
    frames: mpsc::UnboundedSender<frame::Kind>,
    end: StreamEnd,
}

/// Every stream of this gateway with a side on another gateway of the region.
pub(super) struct ClusterStreams {
    me: Weak<ClusterStreams>,
    fed: Arc<Federation>,
    gateway: Arc<dyn LocalGateway>,
    next_id: AtomicU64,
    routes: Mutex<HashMap<Key, Route>>,
}

/// The relay to one peer gateway, for the streams opened here (`opened_here`) or there.
struct Relay {
    streams: Weak<ClusterStreams>,
    gateway_id: String,
    opened_here: bool,
}

impl ClusterStreams {
    pub(super) fn new(fed: Arc<Federation>, gateway: Arc<dyn LocalGateway>) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            fed,
            gateway,
            next_id: AtomicU64::new(1),
            routes: Mutex::new(HashMap::new()),
        })
    }

    fn relay(&self, gateway_id: &str, opened_here: bool) -> Arc<dyn StreamRelay> {
        Arc::new(Relay {
            streams: self.me.clone(),
            gateway_id: gateway_id.to_owned(),
            opened_here,
        })
    }

    /// A relay to `gateway_id` for a new stream opened here, and the stream's id.
    pub(super) fn open_to(&self, gateway_id: &str) -> (Arc<dyn StreamRelay>, u64) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        (self.relay(gateway_id, true), id)
    }

    /// A stream frame from cluster peer `gateway_id`.
    pub(super) fn on_frame(&self, gateway_id: &str, frame: ClusterStream) {
        let Some(inner) = frame.frame else {
            tracing::warn!(peer = %gateway_id, id = frame.id, "a cluster stream frame without a frame; ignored");
            return;
        };
        // The peer opened it: routed under "not opened here", and the other way round.
        let opened_here = !frame.from_opener;
        let kind = match inner {
            cluster_stream::Frame::Open(open) if frame.from_opener => {
                self.gateway
                    .accept_stream_from_peer(self.relay(gateway_id, false), frame.id, open);
                return;
            }
            cluster_stream::Frame::Open(_) => {
                tracing::warn!(peer = %gateway_id, id = frame.id, "a cluster peer sent a stream open as the accepting side; ignored");
                return;
            }
            cluster_stream::Frame::Data(d) => frame::Kind::StreamData(d),
            cluster_stream::Frame::Credit(c) => frame::Kind::Credit(c),
            cluster_stream::Frame::Close(c) => frame::Kind::StreamClose(c),
        };
        let key = (gateway_id.to_owned(), opened_here, frame.id);
        let closing = matches!(kind, frame::Kind::StreamClose(_));
        let sent = self
            .routes
            .lock()
            .get(&key)
            .is_some_and(|r| r.frames.send(kind).is_ok());
        if !sent && !closing {
            // The stream ended here (its session left, or it was aborted) and the peer did
            // not know yet: tell it, so its side does not wait for ever.
            self.relay(gateway_id, opened_here).send(
                frame.id,
                frame::Kind::StreamClose(v1::StreamClose {
                    stream_id: frame.id,
                    error: Some(nexus_gateway::router::error(
                        v1::ErrorCode::ServiceError,
                        format!(
                            "the stream is no longer open on gateway {}",
                            self.gateway.gateway_id()
                        ),
                        frame.id,
                    )),
                }),
            );
        }
    }

    /// The cluster link to `gateway_id` went down: every stream with a side there is
    /// aborted towards its session here.
    pub(super) fn peer_down(&self, gateway_id: &str, reason: &str) {
        let ends: Vec<StreamEnd> = {
            let mut routes = self.routes.lock();
            let keys: Vec<Key> = routes
                .keys()
                .filter(|(g, _, _)| g == gateway_id)
                .cloned()
                .collect();
            keys.into_iter()
                .filter_map(|k| routes.remove(&k).map(|r| r.end))
                .collect()
        };
        if !ends.is_empty() {
            tracing::info!(peer = %gateway_id, streams = ends.len(), %reason, "cluster link down: aborting the streams it carried");
        }
        for end in ends {
            self.gateway.stream_peer_gone(&end, reason);
        }
    }
}

impl StreamRelay for Relay {
    fn send(&self, id: u64, kind: frame::Kind) -> bool {
        let Some(streams) = self.streams.upgrade() else {
            return false;
        };
        let frame = match kind {
            frame::Kind::StreamOpen(o) => cluster_stream::Frame::Open(o),
            frame::Kind::StreamData(d) => cluster_stream::Frame::Data(d),
            frame::Kind::Credit(c) => cluster_stream::Frame::Credit(c),
            frame::Kind::StreamClose(c) => cluster_stream::Frame::Close(c),
            _ => return false,
        };
        streams
            .fed
            .try_send_data_to(
                &self.gateway_id,
                link_frame::Kind::Stream(ClusterStream {
                    id,
                    from_opener: self.opened_here,
                    frame: Some(frame),
                }),
            )
            .is_some()
    }

    fn attach(&self, id: u64, end: StreamEnd) {
        let Some(streams) = self.streams.upgrade() else {
            return;
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let gateway = streams.gateway.clone();
        let task_end = end.clone();
        tokio::spawn(async move {
            while let Some(kind) = rx.recv().await {
                gateway.stream_from_peer(&task_end, kind).await;
            }
        });
        streams.routes.lock().insert(
            (self.gateway_id.clone(), self.opened_here, id),
            Route { frames: tx, end },
        );
    }

    fn detach(&self, id: u64) {
        if let Some(streams) = self.streams.upgrade() {
            streams
                .routes
                .lock()
                .remove(&(self.gateway_id.clone(), self.opened_here, id));
        }
    }

    fn peer(&self) -> &str {
        &self.gateway_id
    }
}
