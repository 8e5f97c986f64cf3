//! Live tail: taps on a subject pattern that see the messages clients hand this gateway
//! (publishes and requests, once each, at the gateway that received them from their
//! publisher), for `nexusctl tail` and the console's live page through the control plane's
//! `Tail` call (docs/trace.md §7).
//!
//! - **Never slows the publish path**: with no tap open, a message costs one relaxed atomic
//!   load. With taps, each tap whose pattern matches samples the message (from its id),
//!   takes a token from its own lock-free rate limiter and `try_send`s a small event on its
//!   bounded queue; a full queue (the viewer is slower than the traffic) drops the event and
//!   counts it. Nothing waits.
//! - **Bounded**: at most [`MAX_TAPS`] taps at once, each with a queue of [`QUEUE`] events and
//!   a rate of at most [`MAX_RATE`] events a second; an event holds at most
//!   [`MAX_PREVIEW`] payload bytes, a zero-copy slice of the message's payload.
//! - **Payloads**: a tap asks for a preview length (the control plane asks for the largest
//!   its per-subject redaction settings allow, 0 when none does, and redacts each event
//!   before anyone sees it); with 0, no payload byte leaves the gateway.
//!
//! Metrics: `nexus_tap_messages_total` (events queued for viewers), `nexus_tap_dropped_total`
//! by `reason` (`rate_limit`, `slow_viewer`), `nexus_taps` (open now).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use bytes::Bytes;
use nexus_proto::ByteString;
use nexus_proto::v1::Header;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// Taps open at once on one gateway.
pub const MAX_TAPS: usize = 16;
/// Events a tap queues for its viewer before it drops.
pub const QUEUE: usize = 512;
/// The highest rate a tap may ask for, events a second.
pub const MAX_RATE: u32 = 1000;
/// The longest payload preview a tap may ask for, bytes.
pub const MAX_PREVIEW: usize = 4096;

/// Counters of every tap (registered by [`crate::metrics::GatewayMetrics`]).
#[derive(Clone)]
pub struct TapMetrics {
    pub sent: Counter,
    /// By `reason`; the two counters below are its members, so the publish path never
    /// builds labels.
    pub dropped: Family<Vec<(&'static str, &'static str)>, Counter>,
    pub dropped_rate_limit: Counter,
    pub dropped_slow_viewer: Counter,
    pub open: Gauge,
}

impl Default for TapMetrics {
    fn default() -> Self {
        let dropped = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
        let dropped_rate_limit = dropped
            .get_or_create(&vec![("reason", "rate_limit")])
            .clone();
        let dropped_slow_viewer = dropped
            .get_or_create(&vec![("reason", "slow_viewer")])
            .clone();
        Self {
            sent: Counter::default(),
            dropped,
            dropped_rate_limit,
            dropped_slow_viewer,
            open: Gauge::default(),
        }
    }
}

/// What a tap asks for.
#[derive(Clone, Debug)]
pub struct TapSpec {
    pub pattern: String,
    /// Fraction of matching messages sent, (0, 1].
    pub sample_rate: f64,
    /// Events a second, at most [`MAX_RATE`].
    pub max_per_second: u32,
    /// Payload bytes sent with each event, at most [`MAX_PREVIEW`].
    pub preview_bytes: usize,
}

/// One tapped message.
#[derive(Clone, Debug)]
pub struct TapEvent {
    pub id: Bytes,
    pub subject: ByteString,
    pub kind: &'static str,
    pub at_us: i64,
    pub payload_bytes: usize,
    pub header_keys: Vec<ByteString>,
    pub trace_id: [u8; 16],
    /// The first `preview_bytes` of the payload (a slice of it, not a copy).
    pub preview: Bytes,
}

/// A tap's own counters, read by its viewer.
#[derive(Default, Debug)]
pub struct TapCounters {
    pub matched: AtomicU64,
    pub sent: AtomicU64,
    pub dropped_rate_limit: AtomicU64,
    pub dropped_slow_viewer: AtomicU64,
}

struct Tap {
    id: u64,
    spec: TapSpec,
    /// Send one in this many matching messages (by id).
    sample_every: u64,
    limiter: governor::DefaultDirectRateLimiter,
    tx: tokio::sync::mpsc::Sender<TapEvent>,
    counters: Arc<TapCounters>,
}

/// Every open tap of the gateway.
pub struct Taps {
    /// How many taps are open: the publish path reads only this when it is 0.
    active: AtomicUsize,
    list: ArcSwap<Vec<Arc<Tap>>>,
    /// Serialises opening and closing (never taken on the publish path).
    edit: Mutex<()>,
    next_id: AtomicU64,
    metrics: TapMetrics,
}

/// An open tap: its events, its counters; closing it (dropping) removes the tap.
pub struct TapHandle {
    taps: Arc<Taps>,
    id: u64,
    pub events: tokio::sync::mpsc::Receiver<TapEvent>,
    pub counters: Arc<TapCounters>,
}

impl Drop for TapHandle {
    fn drop(&mut self) {
        self.taps.close(self.id);
    }
}

/// Why a tap could not be opened.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TapError {
    #[error("subject pattern {0:?}: {1}")]
    Pattern(String, String),
    #[error("sample rate {0} must be above 0 and at most 1")]
    SampleRate(f64),
    #[error("max_per_second {0} must be between 1 and {MAX_RATE}")]
    Rate(u32),
    #[error("preview {0} must be at most {MAX_PREVIEW} bytes")]
    Preview(usize),
    #[error("{MAX_TAPS} taps are open on this gateway already; close one first")]
    TooMany,
}

fn mix(id: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Taps {
    pub fn new(metrics: TapMetrics) -> Self {
        Self {
            active: AtomicUsize::new(0),
            list: ArcSwap::from_pointee(Vec::new()),
            edit: Mutex::new(()),
            next_id: AtomicU64::new(1),
            metrics,
        }
    }

    /// Opens a tap; its events arrive on the handle until it is dropped.
    pub fn open(self: &Arc<Self>, spec: TapSpec) -> Result<TapHandle, TapError> {
        nexus_proto::subject::validate_pattern(&spec.pattern)
            .map_err(|e| TapError::Pattern(spec.pattern.clone(), e.to_string()))?;
        if !(spec.sample_rate > 0.0 && spec.sample_rate <= 1.0) {
            return Err(TapError::SampleRate(spec.sample_rate));
        }
        let rate = NonZeroU32::new(spec.max_per_second)
            .filter(|r| r.get() <= MAX_RATE)
            .ok_or(TapError::Rate(spec.max_per_second))?;
        if spec.preview_bytes > MAX_PREVIEW {
            return Err(TapError::Preview(spec.preview_bytes));
        }
        let _edit = self.edit.lock();
        let current = self.list.load_full();
        if current.len() >= MAX_TAPS {
            return Err(TapError::TooMany);
        }
        let (tx, events) = tokio::sync::mpsc::channel(QUEUE);
        let counters = Arc::new(TapCounters::default());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let tap = Arc::new(Tap {
            id,
            sample_every: (1.0 / spec.sample_rate).round().max(1.0) as u64,
            spec,
            limiter: governor::RateLimiter::direct(governor::Quota::per_second(rate)),
            tx,
            counters: counters.clone(),
        });
        let mut next = (*current).clone();
        next.push(tap);
        self.list.store(Arc::new(next));
        self.active.fetch_add(1, Ordering::Release);
        self.metrics.open.inc();
        Ok(TapHandle {
            taps: self.clone(),
            id,
            events,
            counters,
        })
    }

    fn close(&self, id: u64) {
        let _edit = self.edit.lock();
        let current = self.list.load_full();
        if current.iter().any(|t| t.id == id) {
            let next: Vec<_> = current.iter().filter(|t| t.id != id).cloned().collect();
            self.list.store(Arc::new(next));
            self.active.fetch_sub(1, Ordering::Release);
            self.metrics.open.dec();
        }
    }

    /// How many taps are open.
    pub fn open_count(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Shows a message a client handed this gateway to every tap that wants it. Costs one
    /// atomic load when no tap is open; never waits.
    #[inline]
    pub fn offer(
        &self,
        kind: &'static str,
        id: &[u8],
        subject: &str,
        headers: &[Header],
        payload: &[u8],
    ) {
        if self.active.load(Ordering::Relaxed) == 0 {
            return;
        }
        self.offer_slow(kind, id, subject, headers, payload);
    }

    #[cold]
    fn offer_slow(
        &self,
        kind: &'static str,
        id: &[u8],
        subject: &str,
        headers: &[Header],
        payload: &[u8],
    ) {
        let taps = self.list.load();
        for tap in taps.iter() {
            if !nexus_proto::subject::matches(&tap.spec.pattern, subject) {
                continue;
            }
            tap.counters.matched.fetch_add(1, Ordering::Relaxed);
            if tap.sample_every > 1 && !mix(id).is_multiple_of(tap.sample_every) {
                continue;
            }
            if tap.limiter.check().is_err() {
                tap.counters
                    .dropped_rate_limit
                    .fetch_add(1, Ordering::Relaxed);
                self.metrics.dropped_rate_limit.inc();
                continue;
            }
            let event = TapEvent {
                id: Bytes::copy_from_slice(id),
                subject: ByteString::from(subject),
                kind,
                at_us: crate::trace_store::now_us(),
                payload_bytes: payload.len(),
                header_keys: headers.iter().map(|h| h.key.clone()).collect(),
                trace_id: crate::trace_store::trace_id(headers),
                // A copy: a slice would keep the whole receive buffer alive in the viewer's
                // queue.
                preview: Bytes::copy_from_slice(
                    &payload[..payload.len().min(tap.spec.preview_bytes)],
                ),
            };
            match tap.tx.try_send(event) {
                Ok(()) => {
                    tap.counters.sent.fetch_add(1, Ordering::Relaxed);
                    self.metrics.sent.inc();
                }
                Err(_) => {
                    tap.counters
                        .dropped_slow_viewer
                        .fetch_add(1, Ordering::Relaxed);
                    self.metrics.dropped_slow_viewer.inc();
                }
            }
        }
    }
}

/// The JSON line `/v1/tail` sends for an event.
pub fn event_json(e: &TapEvent) -> serde_json::Value {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let id = <[u8; 16]>::try_from(&e.id[..])
        .map(|b| ulid::Ulid::from_bytes(b).to_string())
        .unwrap_or_else(|_| hex(&e.id));
    serde_json::json!({
        "type": "message",
        "message_id": id,
        "subject": &*e.subject,
        "kind": e.kind,
        "at_us": e.at_us,
        "payload_bytes": e.payload_bytes,
        "header_keys": e.header_keys.iter().map(|k| &**k).collect::<Vec<_>>(),
        "trace_id": if e.trace_id == [0; 16] { String::new() } else { hex(&e.trace_id) },
        "preview_hex": hex(&e.preview),
    })
}

/// The JSON line `/v1/tail` sends every second: the tap's counters.
pub fn stats_json(c: &TapCounters) -> serde_json::Value {
    serde_json::json!({
        "type": "stats",
        "matched": c.matched.load(Ordering::Relaxed),
        "sent": c.sent.load(Ordering::Relaxed),
        "dropped_rate_limit": c.dropped_rate_limit.load(Ordering::Relaxed),
        "dropped_slow_viewer": c.dropped_slow_viewer.load(Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(pattern: &str, rate: u32, preview: usize) -> TapSpec {
        TapSpec {
            pattern: pattern.into(),
            sample_rate: 1.0,
            max_per_second: rate,
            preview_bytes: preview,
        }
    }

    fn offer(taps: &Taps, n: u8, subject: &str) {
        let id = Bytes::from(vec![n; 16]);
        taps.offer(
            "publish",
            &id,
            subject,
            &[],
            &Bytes::from_static(b"{\"card\":\"4111\",\"n\":1}"),
        );
    }

    #[tokio::test]
    async fn matching_messages_reach_the_tap_with_a_bounded_preview() {
        let taps = Arc::new(Taps::new(TapMetrics::default()));
        let mut h = taps.open(spec("orders.>", 1000, 8)).unwrap();
        offer(&taps, 1, "orders.new");
        offer(&taps, 2, "users.new");
        let e = h.events.recv().await.unwrap();
        assert_eq!(&*e.subject, "orders.new");
        assert_eq!(&e.preview[..], b"{\"card\":");
        assert_eq!(e.payload_bytes, 21);
        assert!(h.events.try_recv().is_err(), "users.new does not match");
        assert_eq!(h.counters.matched.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_slow_viewer_loses_events_and_the_publisher_never_waits() {
        let taps = Arc::new(Taps::new(TapMetrics::default()));
        let h = taps.open(spec(">", 1000, 0)).unwrap();
        for i in 0..(QUEUE + 100) {
            offer(&taps, (i % 250) as u8, "a.b");
        }
        let c = &h.counters;
        let sent = c.sent.load(Ordering::Relaxed);
        let slow = c.dropped_slow_viewer.load(Ordering::Relaxed);
        let rate = c.dropped_rate_limit.load(Ordering::Relaxed);
        assert_eq!(sent as usize, QUEUE);
        assert_eq!(sent + slow + rate, (QUEUE + 100) as u64);
        assert!(slow > 0);
    }

    #[tokio::test]
    async fn the_rate_limit_drops_beyond_its_burst() {
        let taps = Arc::new(Taps::new(TapMetrics::default()));
        let h = taps.open(spec(">", 5, 0)).unwrap();
        for i in 0..50 {
            offer(&taps, i, "a.b");
        }
        assert_eq!(h.counters.sent.load(Ordering::Relaxed), 5);
        assert_eq!(h.counters.dropped_rate_limit.load(Ordering::Relaxed), 45);
    }

    #[test]
    fn closing_removes_the_tap_and_limits_hold() {
        let taps = Arc::new(Taps::new(TapMetrics::default()));
        assert!(matches!(
            taps.open(spec("a..b", 1, 0)),
            Err(TapError::Pattern(..))
        ));
        assert_eq!(taps.open(spec(">", 0, 0)).err(), Some(TapError::Rate(0)));
        assert_eq!(
            taps.open(spec(">", 1, MAX_PREVIEW + 1)).err(),
            Some(TapError::Preview(MAX_PREVIEW + 1))
        );
        let handles: Vec<_> = (0..MAX_TAPS)
            .map(|_| taps.open(spec(">", 1, 0)).unwrap())
            .collect();
        assert_eq!(taps.open(spec(">", 1, 0)).err(), Some(TapError::TooMany));
        drop(handles);
        assert_eq!(taps.open_count(), 0);
        offer(&taps, 1, "a.b");
    }
}
