//! One link, from the moment both hellos are exchanged until it ends: its streams and the
//! tasks that read and write them, its watchdog (failure detection and best-effort
//! receipts), its accounting, and the single place it ends ([`Link::end`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use nexus_proto::v1::{LinkFrame, LinkHello, LinkPing, LinkPong, LinkReceipt, link_frame::Kind};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::mpsc;

use super::compression::{Unbatcher, WriterCodecs};
use super::events::LinkInfo;
use super::liveness::{Liveness, Probe};
use super::wire::{FrameReader, data_writer, write_frame};
use super::{Federation, LinkError, LinkKind, link_err};
use crate::metrics::{DownLabels, DownReason, DropReason, RegionLabels};
use nexus_proto::encoding::CodecSet;

/// Frames a link queues for its data stream before best-effort messages are refused.
pub const DATA_QUEUE: usize = 4096;
/// Frames a link queues for its control stream.
pub const CONTROL_QUEUE: usize = 1024;
/// How often a receiver confirms the best-effort messages it received (when it received any).
pub const RECEIPT_EVERY: Duration = Duration::from_millis(25);

/// A live link, as the endpoint keeps it.
pub struct Link {
    pub info: LinkInfo,
    pub kind: LinkKind,
    /// This side dialled it.
    pub dialed: bool,
    pub conn: quinn::Connection,
    pub control: mpsc::Sender<LinkFrame>,
    pub data: mpsc::Sender<LinkFrame>,
    /// Best-effort messages queued on this link, and how many of them the peer confirmed.
    forwarded: AtomicU64,
    confirmed: AtomicU64,
    /// Best-effort messages received on this link (what our receipts report).
    received: AtomicU64,
    ended: AtomicBool,
    counters: RegionCounters,
}

/// The region's series, resolved once per link so that counting a message is an atomic add.
struct RegionCounters {
    forwarded: Counter,
    confirmed: Counter,
    received: Counter,
    unconfirmed: Gauge,
    queue_full: Counter,
}

/// A link's state, for status.
#[derive(Debug, Clone)]
pub struct LinkSnapshot {
    pub info: LinkInfo,
    pub kind: LinkKind,
    pub rtt: Duration,
    /// Best-effort messages queued on this link, confirmed by the peer, received from it.
    pub forwarded: u64,
    pub confirmed: u64,
    pub received: u64,
}

impl Link {
    pub fn snapshot(&self) -> LinkSnapshot {
        LinkSnapshot {
            info: self.info.clone(),
            kind: self.kind,
            rtt: self.conn.rtt(),
            forwarded: self.forwarded.load(Ordering::Relaxed),
            confirmed: self.confirmed.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
        }
    }

    /// Queues a best-effort message; `false` (counted as dropped) when the queue is full.
    pub fn try_forward(&self, frame: LinkFrame) -> bool {
        if self.data.try_send(frame).is_ok() {
            self.forwarded.fetch_add(1, Ordering::Relaxed);
            self.counters.forwarded.inc();
            true
        } else {
            self.counters.queue_full.inc();
            false
        }
    }

    /// Queues a best-effort message if its queue has room (`None`); when it is full the
    /// message is handed back, not counted yet (the caller waits with
    /// [`Link::forward_within`]). A link that ended counts it as dropped.
    pub fn offer_forward(&self, frame: LinkFrame) -> Option<LinkFrame> {
        match self.data.try_send(frame) {
            Ok(()) => {
                self.forwarded.fetch_add(1, Ordering::Relaxed);
                self.counters.forwarded.inc();
                None
            }
            Err(mpsc::error::TrySendError::Full(frame)) => Some(frame),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.counters.queue_full.inc();
                None
            }
        }
    }

    /// Queues a best-effort message, waiting at most `max` for room; `false` (counted as
    /// dropped for a full queue) when none came or the link ended.
    pub async fn forward_within(&self, frame: LinkFrame, max: Duration) -> bool {
        match tokio::time::timeout(max, self.data.send(frame)).await {
            Ok(Ok(())) => {
                self.forwarded.fetch_add(1, Ordering::Relaxed);
                self.counters.forwarded.inc();
                true
            }
            _ => {
                self.counters.queue_full.inc();
                false
            }
        }
    }

    /// Queues a best-effort message, waiting for room; an error when the link ended.
    pub async fn forward(&self, frame: LinkFrame) -> Result<(), ()> {
        self.data.send(frame).await.map_err(|_| ())?;
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        self.counters.forwarded.inc();
        Ok(())
    }

    /// The peer reported `forwards` best-effort messages received on this link so far.
    fn receipt(&self, forwards: u64) {
        let before = self.confirmed.fetch_max(forwards, Ordering::Relaxed);
        if forwards > before {
            self.counters.confirmed.inc_by(forwards - before);
        }
        let forwarded = self.forwarded.load(Ordering::Relaxed);
        self.counters
            .unconfirmed
            .set(forwarded.saturating_sub(forwards.max(before)) as i64);
    }

    /// Ends the link once: takes it out of the endpoint's table (if it is still the current
    /// link to its region), closes the connection, counts what it leaves unconfirmed as lost,
    /// and tells the owner.
    pub fn end(self: &Arc<Self>, fed: &Federation, reason: DownReason, detail: &str) {
        if self.ended.swap(true, Ordering::AcqRel) {
            return;
        }
        let was_current = fed
            .links
            .change(|links| match links.get(&self.info.gateway_id) {
                Some(l) if l.info.id == self.info.id => {
                    links.remove(&self.info.gateway_id).is_some()
                }
                _ => false,
            });
        let code: u32 = match reason {
            DownReason::Silent => 5,
            DownReason::Closed => 0,
            DownReason::Replaced => 3,
        };
        self.conn.close(code.into(), detail.as_bytes());
        let lost = self
            .forwarded
            .load(Ordering::Relaxed)
            .saturating_sub(self.confirmed.load(Ordering::Relaxed));
        if lost > 0 {
            fed.metrics
                .dropped(&self.info.region, DropReason::LinkLost, lost);
        }
        if was_current {
            self.counters.unconfirmed.set(0);
        }
        fed.metrics
            .link_down
            .get_or_create(&DownLabels {
                region: self.info.region.clone(),
                reason,
            })
            .inc();
        fed.metrics.links.set(fed.links.load().len() as i64);
        match reason {
            DownReason::Replaced => {
                tracing::info!(region = %self.info.region, peer = %self.info.gateway_id, link = %self.info.id, lost, "link replaced by a newer one")
            }
            _ => {
                tracing::warn!(region = %self.info.region, peer = %self.info.gateway_id, link = %self.info.id, kind = ?self.kind, reason = %detail, unconfirmed_best_effort = lost, "link down")
            }
        }
        if let Some(handler) = fed.handler.get() {
            handler.down(&self.info, detail);
        }
    }
}

/// Starts a link whose hellos are exchanged: opens the data streams, registers it (ending
/// the one it replaces), tells the owner, then starts its tasks.
pub async fn start(
    fed: &Arc<Federation>,
    conn: quinn::Connection,
    mut control_send: quinn::SendStream,
    mut control_recv: quinn::RecvStream,
    hello: LinkHello,
    dialed: bool,
) -> Result<(), LinkError> {
    let LinkHello {
        region,
        gateway_id,
        encodings,
        batch_codecs,
        ..
    } = hello;
    let kind = if region == fed.region {
        LinkKind::Cluster
    } else {
        LinkKind::Federation
    };
    let writer_codecs = WriterCodecs {
        batch: match kind {
            LinkKind::Cluster => fed.compression.cluster,
            LinkKind::Federation => fed.compression.federation,
        }
        .filter(|c| CodecSet::from_names(&batch_codecs).contains(*c)),
        peer_payloads: CodecSet::from_names(&encodings),
        counters: fed.metrics.link_counters(kind, "sent"),
    };
    let read_counters = fed.metrics.link_counters(kind, "received");
    let mut data_send = conn.open_uni().await.map_err(|e| link_err(&region, e))?;
    // A QUIC stream becomes visible to the peer with its first bytes: announce ours before
    // waiting for theirs, or both sides would wait forever.
    let announce = LinkFrame {
        kind: Some(Kind::Ping(LinkPing { nonce: 0 })),
    };
    write_frame(&mut data_send, &announce)
        .await
        .map_err(|e| link_err(&region, e))?;
    let mut data_recv = conn.accept_uni().await.map_err(|e| link_err(&region, e))?;
    let (control_tx, mut control_rx) = mpsc::channel::<LinkFrame>(CONTROL_QUEUE);
    let (data_tx, data_rx) = mpsc::channel::<LinkFrame>(DATA_QUEUE);
    let labels = RegionLabels {
        region: region.clone(),
    };
    let m = &fed.metrics;
    let link = Arc::new(Link {
        info: LinkInfo {
            id: fed.next_link_id(),
            region: region.clone(),
            gateway_id: gateway_id.clone(),
        },
        kind,
        dialed,
        conn: conn.clone(),
        control: control_tx,
        data: data_tx,
        forwarded: AtomicU64::new(0),
        confirmed: AtomicU64::new(0),
        received: AtomicU64::new(0),
        ended: AtomicBool::new(false),
        counters: RegionCounters {
            forwarded: m.forwarded.get_or_create(&labels).clone(),
            confirmed: m.confirmed.get_or_create(&labels).clone(),
            received: m.received.get_or_create(&labels).clone(),
            unconfirmed: m.unconfirmed.get_or_create(&labels).clone(),
            queue_full: m
                .dropped
                .get_or_create(&crate::metrics::DropLabels {
                    region: region.clone(),
                    reason: DropReason::QueueFull,
                })
                .clone(),
        },
    });
    let Some(handler) = fed.handler.get().cloned() else {
        conn.close(6u32.into(), b"not ready");
        return Err(link_err(&region, "this gateway is not ready for links yet"));
    };
    let previous = fed.links.change(|links| {
        if let Some(current) = links.get(&gateway_id)
            && !replaces(fed, &link, current)
        {
            return Err(());
        }
        Ok(links.insert(gateway_id.clone(), link.clone()))
    });
    let Ok(previous) = previous else {
        conn.close(7u32.into(), b"duplicate link");
        return Err(link_err(
            &gateway_id,
            "a link with this gateway exists already (the one dialled by the lower gateway id is kept)",
        ));
    };
    if let Some(old) = previous {
        old.end(fed, DownReason::Replaced, "replaced by a newer link");
    }
    m.links.set(fed.links.load().len() as i64);
    tracing::info!(%region, peer = %link.info.gateway_id, link = %link.info.id, ?kind, "link up");
    handler.up(&link.info);

    // Writers.
    tokio::spawn(async move {
        while let Some(f) = control_rx.recv().await {
            if write_frame(&mut control_send, &f).await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(data_writer(data_rx, data_send, writer_codecs));
    // Control reader: pings and receipts are the link's own; the rest goes to the owner.
    let (l, h) = (link.clone(), handler.clone());
    tokio::spawn(async move {
        let mut frames = FrameReader::default();
        while let Ok(Some(frame)) = frames.next(&mut control_recv).await {
            match frame.kind {
                Some(Kind::Ping(p)) => {
                    let _ = l.control.try_send(LinkFrame {
                        kind: Some(Kind::Pong(LinkPong { nonce: p.nonce })),
                    });
                }
                Some(Kind::Pong(_)) => {}
                Some(Kind::Receipt(r)) => l.receipt(r.forwards),
                Some(kind) => h.control(&l.info, kind),
                None => {}
            }
        }
    });
    // Data reader: the link ends when its data stream does.
    let (f, l, h) = (fed.clone(), link.clone(), handler);
    tokio::spawn(async move {
        let mut frames = FrameReader::default();
        let mut unbatcher = Unbatcher::default();
        let reason = loop {
            // Frames of an opened compressed batch come first, in order.
            let read = match unbatcher.pop() {
                Some(frame) => Ok(Some(frame)),
                None => frames.next(&mut data_recv).await,
            };
            match read {
                Ok(Some(LinkFrame {
                    kind: Some(Kind::Compressed(batch)),
                })) => {
                    if let Err(e) = unbatcher.open(batch, CodecSet::ALL, &read_counters) {
                        break e;
                    }
                }
                Ok(Some(LinkFrame { kind: Some(kind) })) => {
                    match kind {
                        Kind::Ping(_) | Kind::Pong(_) => continue,
                        Kind::Forward(_) => {
                            l.received.fetch_add(1, Ordering::Relaxed);
                            l.counters.received.inc();
                        }
                        _ => {}
                    }
                    h.data(&l.info, kind).await;
                }
                Ok(Some(_)) => {}
                Ok(None) => break "peer closed the data stream".to_owned(),
                Err(e) => break e,
            }
        };
        let reason = l.conn.close_reason().map_or(reason, |c| c.to_string());
        l.end(&f, DownReason::Closed, &reason);
    });
    tokio::spawn(watchdog(fed.clone(), link));
    Ok(())
}

/// Whether a new link with a gateway replaces the one that exists: the connection dialled by
/// the side that should dial ([`crate::cluster::membership::dials`]) is kept (both sides
/// decide alike, so two gateways that dialled each other at once end with one link); between
/// two of the same kind, the newer wins (a peer that restarted reconnects before its old link
/// is found dead).
fn replaces(fed: &Federation, new: &Link, old: &Link) -> bool {
    let we_dial = crate::cluster::membership::dials(
        &fed.gateway_id,
        &fed.region,
        &new.info.gateway_id,
        &new.info.region,
    );
    let canonical = |l: &Link| l.dialed == we_dial;
    canonical(new) || !canonical(old)
}

/// Failure detection and receipts for one link, until it ends.
async fn watchdog(fed: Arc<Federation>, link: Arc<Link>) {
    let started = tokio::time::Instant::now();
    let mut liveness = Liveness::new(fed.dead_after, Duration::ZERO);
    let mut reported = 0u64;
    let mut nonce = 0u64;
    loop {
        let rtt = link.conn.rtt();
        let every = liveness.tick_every(rtt).min(RECEIPT_EVERY);
        tokio::select! {
            _ = link.conn.closed() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if link.ended.load(Ordering::Acquire) {
            return;
        }
        let received = link.received.load(Ordering::Relaxed);
        if received != reported {
            reported = received;
            let _ = link.control.try_send(LinkFrame {
                kind: Some(Kind::Receipt(LinkReceipt { forwards: received })),
            });
        }
        let datagrams = link.conn.stats().udp_rx.datagrams;
        match liveness.tick(started.elapsed(), datagrams, link.conn.rtt()) {
            Probe::Quiet => {}
            Probe::Ping => {
                nonce += 1;
                let _ = link.control.try_send(LinkFrame {
                    kind: Some(Kind::Ping(LinkPing { nonce })),
                });
            }
            Probe::Dead { silent_for } => {
                let detail = format!(
                    "peer silent for {} ms (detection time {} ms)",
                    silent_for.as_millis(),
                    liveness.dead_after(rtt).as_millis()
                );
                link.end(&fed, DownReason::Silent, &detail);
                return;
            }
        }
    }
}
