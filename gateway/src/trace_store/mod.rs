//! Message tracing: what happened to one message at this gateway, hop by hop, kept in a
//! bounded store that `nexusctl trace <message-id>` reads (through the control plane, which
//! asks every gateway of every region, docs/trace.md).
//!
//! Sans-I/O: callers pass the time; nothing here reads a clock or does I/O.
//!
//! - **What**: one fixed-size [`Record`] per hop event (received, schema check, route
//!   decision, forwarded to a cluster peer or region, arrived from one, spooled, delivered,
//!   dropped and why, request routed, reply), keyed by the message's 16-byte id, with the
//!   W3C trace id of its `traceparent` so the same message can be found in an OTLP backend.
//! - **Which messages**: head sampling decided from the message id alone
//!   ([`TraceStore::sampled`]), so every gateway on the path makes the same choice without
//!   telling the next one; a message whose headers carry `nexus-trace: 1` is always recorded.
//! - **How much**: per shard, a ring of fixed-size slots and a ring of their text (`ring`),
//!   evicting the oldest records when the shard's share of `trace.max_bytes` is used. What
//!   counts is the memory the rings hold, every slot used or not, so the store's memory rises
//!   to the budget and stays there, and once the rings have their size the store allocates
//!   nothing to record (no small allocations to fragment the heap while messages flow).
//! - **Hot path**: deciding costs a multiply and a scan of the headers for the force header;
//!   an unsampled message records nothing and allocates nothing. Records of one message go
//!   to one shard (chosen by its id), so there is no global lock, and lookups by id read one
//!   shard.

mod ring;

use nexus_proto::ByteString;
use nexus_proto::v1::Header;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;

/// The header that forces recording of one message (value `1` or `true`).
pub const FORCE_HEADER: &str = "nexus-trace";
const SHARDS: usize = 16;

use ring::{Ring, SLOT};

/// What happened at a hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A client session (or unary call) handed the message to this gateway.
    Received,
    /// The subject's enforced schema was checked.
    Schema,
    /// The route decision: policy, consistency mode, and where it sends the message.
    Route,
    /// Sent on to another gateway of this region or to another region.
    Forwarded,
    /// Arrived from another gateway of this region or from another region.
    Arrived,
    /// Written to the replication spool for a region (`async` / `sync` routes).
    Spooled,
    /// Queued for a local subscription.
    Delivered,
    /// Not delivered somewhere, with the reason.
    Dropped,
    /// A request was given to a responder (local session, peer gateway or region).
    RequestRouted,
    /// The request's answer came back (or its error).
    Reply,
    /// An adapter's own span, as the adapter reported it in a `nexus-span` header (the
    /// requester's on a forced-traced request, the responder's handler on its reply).
    Span,
}

/// Why a message was not delivered (for [`Event::Dropped`]) or how a check ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// No subscription anywhere wanted it.
    NoInterest,
    /// The subscriber's outbound budget was full (slow-consumer policy drop or disconnect).
    SlowConsumer,
    /// The publisher's key was over its rate limit, or a gateway limit was exceeded.
    Limit,
    /// The payload did not match the subject's enforced schema.
    Schema,
    /// The publisher's key may not publish to the subject.
    Denied,
    /// A federation link was down or full.
    LinkUnavailable,
    /// A retry of a message already accepted (durable routes).
    Duplicate,
    /// The request timed out.
    Timeout,
    /// Another error (the detail says which).
    Error,
    /// The check passed (schema), or a schema violation only warned.
    Ok,
    Warned,
}

/// One hop event, as callers give it and readers get it back (the store keeps its text in
/// a ring of bytes, `ring`).
#[derive(Clone, Debug)]
pub struct Record {
    pub id: [u8; 16],
    /// W3C trace id of the message's `traceparent`; zero when it had none.
    pub trace_id: [u8; 16],
    /// Unix microseconds.
    pub at_us: i64,
    pub event: Event,
    pub reason: Option<Reason>,
    pub subject: ByteString,
    /// Who: the session (`conn 12 "orders-api" key k1`), the peer gateway or region, the
    /// responder.
    pub peer: ByteString,
    /// What and why: the route explained, an error message.
    pub detail: ByteString,
    /// A latency that belongs to the hop: the link RTT of a federation or cluster hop, a
    /// request's round trip. Microseconds; 0 when none.
    pub latency_us: u64,
    /// How many (subscriptions delivered to, regions forwarded to).
    pub count: u32,
}

/// What a caller says about a hop; the store adds id, trace id, subject and time.
#[derive(Clone, Debug)]
pub struct Hop {
    pub event: Event,
    pub reason: Option<Reason>,
    pub peer: ByteString,
    pub detail: ByteString,
    pub latency_us: u64,
    pub count: u32,
}

impl Hop {
    pub fn new(event: Event) -> Self {
        Self {
            event,
            reason: None,
            peer: ByteString::new(),
            detail: ByteString::new(),
            latency_us: 0,
            count: 0,
        }
    }
    pub fn reason(mut self, r: Reason) -> Self {
        self.reason = Some(r);
        self
    }
    pub fn peer(mut self, p: impl Into<ByteString>) -> Self {
        self.peer = p.into();
        self
    }
    pub fn detail(mut self, d: impl Into<ByteString>) -> Self {
        self.detail = d.into();
        self
    }
    pub fn latency_us(mut self, us: u64) -> Self {
        self.latency_us = us;
        self
    }
    pub fn count(mut self, n: u32) -> Self {
        self.count = n;
        self
    }
}

/// Settings (`[trace]` in the gateway's config).
#[derive(Clone, Copy, Debug)]
pub struct TraceSettings {
    /// Fraction of messages recorded without the force header: 0 records only forced ones.
    pub sample_rate: f64,
    /// Memory the records may use, all shards together.
    pub max_bytes: usize,
}

/// Counters the store keeps (registered by [`crate::metrics::GatewayMetrics`]).
#[derive(Clone, Default)]
pub struct TraceMetrics {
    pub kept: Counter,
    pub evicted: Counter,
    pub bytes: Gauge,
}

pub struct TraceStore {
    shards: Box<[Mutex<Ring>]>,
    shard_budget: usize,
    /// Record one message in this many; 0: none without the force header.
    sample_every: u64,
    metrics: TraceMetrics,
}

/// A message the store records: what every one of its records repeats.
#[derive(Clone, Debug)]
pub struct Traced {
    id: [u8; 16],
    trace_id: [u8; 16],
    subject: ByteString,
}

impl Traced {
    /// A handle for message `id` (16 bytes, else `None`), whether sampled or not.
    pub fn new(id: &[u8], headers: &[Header], subject: &str) -> Option<Self> {
        Some(Self {
            id: id.try_into().ok()?,
            trace_id: trace_id(headers),
            subject: subject.into(),
        })
    }

    pub fn id(&self) -> &[u8; 16] {
        &self.id
    }
}

impl TraceStore {
    pub fn new(settings: TraceSettings, metrics: TraceMetrics) -> Self {
        let rate = settings.sample_rate;
        let sample_every = if rate.is_nan() || rate <= 0.0 {
            0
        } else if rate >= 1.0 {
            1
        } else {
            (1.0 / rate).round() as u64
        };
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Ring::default())).collect(),
            shard_budget: settings.max_bytes / SHARDS,
            sample_every,
            metrics,
        }
    }

    fn mix(id: &[u8; 16]) -> u64 {
        let lo = u64::from_le_bytes(id[8..16].try_into().unwrap_or_default());
        let hi = u64::from_le_bytes(id[0..8].try_into().unwrap_or_default());
        (lo ^ hi.rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    /// Whether the message with `id` and `headers` is recorded: forced by the header, or
    /// chosen by head sampling from its id (the same choice at every gateway).
    pub fn sampled(&self, id: &[u8], headers: &[Header]) -> bool {
        let Ok(id) = <&[u8; 16]>::try_from(id) else {
            return false;
        };
        if forced(headers) {
            return true;
        }
        match self.sample_every {
            0 => false,
            1 => true,
            n => (Self::mix(id) >> 32) % n == 0,
        }
    }

    /// The handle to record a message's hops through, when it is [`sampled`](Self::sampled).
    pub fn begin(&self, id: &[u8], headers: &[Header], subject: &ByteString) -> Option<Traced> {
        if !self.sampled(id, headers) {
            return None;
        }
        Traced::new(id, headers, subject)
    }

    /// Records `hop` of message `t` at `now_us` (Unix microseconds).
    pub fn record(&self, t: &Traced, now_us: i64, hop: Hop) {
        self.push(Record {
            id: t.id,
            trace_id: t.trace_id,
            at_us: now_us,
            event: hop.event,
            reason: hop.reason,
            subject: t.subject.clone(),
            peer: hop.peer,
            detail: hop.detail,
            latency_us: hop.latency_us,
            count: hop.count,
        });
    }

    fn shard(&self, id: &[u8; 16]) -> &Mutex<Ring> {
        &self.shards[(Self::mix(id) as usize) % SHARDS]
    }

    fn push(&self, rec: Record) {
        // The ring copies the record's text in: messages are decoded without copying, so a
        // subject (or a peer or detail taken from a message) is a slice of the whole buffer
        // its frame was read into, and a record kept for minutes would pin that buffer, many
        // times its cost (a sustained run once grew the gateway by ~60 bytes per message
        // routed: each record of the 0.1 % sampled held a read buffer).
        if SLOT + ring::text_len(&rec) > self.shard_budget {
            self.metrics.evicted.inc();
            return;
        }
        let mut shard = self.shard(&rec.id).lock();
        let before = shard.bytes();
        let pushed = shard.push(&rec, self.shard_budget);
        let after = shard.bytes();
        drop(shard);
        // A record that does not fit is counted as evicted, like one over the whole budget.
        let evicted = pushed.evicted + u64::from(!pushed.kept);
        if pushed.kept {
            self.metrics.kept.inc();
        }
        if evicted > 0 {
            self.metrics.evicted.inc_by(evicted);
        }
        self.metrics.bytes.inc_by(after as i64 - before as i64);
    }

    /// Every record of message `id`, oldest first.
    pub fn by_id(&self, id: &[u8; 16]) -> Vec<Record> {
        let shard = self.shard(id).lock();
        shard.records(|rid, _| rid == id).collect()
    }

    /// Records of messages on subjects matching `pattern` (any subject when `None`), within
    /// `[since_us, until_us]`, newest last, at most `limit` of them (the newest).
    pub fn search(
        &self,
        pattern: Option<&str>,
        since_us: i64,
        until_us: i64,
        limit: usize,
    ) -> Vec<Record> {
        let mut out: Vec<Record> = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            out.extend(
                shard
                    .records(|_, at| at >= since_us && at <= until_us)
                    .filter(|r| {
                        pattern.is_none_or(|p| nexus_proto::subject::matches(p, &r.subject))
                    }),
            );
        }
        out.sort_by_key(|r| r.at_us);
        if out.len() > limit {
            out.drain(..out.len() - limit);
        }
        out
    }

    /// Memory the records hold now (all shards: ring slots and strings).
    pub fn bytes(&self) -> usize {
        self.shards.iter().map(|s| s.lock().bytes()).sum()
    }

    /// Records held now (all shards).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether `headers` carry the force header with value `1` or `true`.
pub fn forced(headers: &[Header]) -> bool {
    headers.iter().any(|h| {
        h.key.len() == FORCE_HEADER.len()
            && h.key.eq_ignore_ascii_case(FORCE_HEADER)
            && (&*h.value == "1" || h.value.eq_ignore_ascii_case("true"))
    })
}

/// The trace id of the `traceparent` header, zero when there is none or it is malformed.
pub fn trace_id(headers: &[Header]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let Some(h) = headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(crate::trace::TRACEPARENT))
    else {
        return out;
    };
    if !crate::trace::is_valid_traceparent(&h.value) {
        return out;
    }
    let hex = &h.value.as_bytes()[3..35];
    for (i, pair) in hex.chunks(2).enumerate() {
        let digit = |c: u8| if c <= b'9' { c - b'0' } else { c - b'a' + 10 };
        out[i] = digit(pair[0]) << 4 | digit(pair[1]);
    }
    out
}

/// Wall-clock Unix microseconds, for callers outside this module.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The JSON form of a record, as `/v1/trace` serves it (with the gateway that holds it).
pub fn to_json(r: &Record, region: &str, gateway: &str) -> serde_json::Value {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    serde_json::json!({
        "message_id": ulid::Ulid::from_bytes(r.id).to_string(),
        "trace_id": if r.trace_id == [0; 16] { String::new() } else { hex(&r.trace_id) },
        "at_us": r.at_us,
        "region": region,
        "gateway": gateway,
        "event": r.event,
        "reason": r.reason,
        "subject": &*r.subject,
        "peer": &*r.peer,
        "detail": &*r.detail,
        "latency_us": r.latency_us,
        "count": r.count,
    })
}

/// Parses a message id as printed (a 26-character ULID) or as 32 hex digits.
pub fn parse_message_id(s: &str) -> Result<[u8; 16], String> {
    let s = s.trim();
    if s.len() == 32 && s.bytes().all(|c| c.is_ascii_hexdigit()) {
        let mut out = [0u8; 16];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        return Ok(out);
    }
    ulid::Ulid::from_string(s)
        .map(|u| u.to_bytes())
        .map_err(|e| {
            format!("{s:?} is not a message id (a 26-character ULID or 32 hex digits): {e}")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that records every message within `max_bytes`, and its metrics.
    fn recording_all(max_bytes: usize) -> (TraceStore, TraceMetrics) {
        let metrics = TraceMetrics::default();
        let settings = TraceSettings {
            sample_rate: 1.0,
            max_bytes,
        };
        (TraceStore::new(settings, metrics.clone()), metrics)
    }

    fn store(rate: f64, max_bytes: usize) -> TraceStore {
        TraceStore::new(
            TraceSettings {
                sample_rate: rate,
                max_bytes,
            },
            TraceMetrics::default(),
        )
    }

    fn id(n: u64) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&n.to_be_bytes());
        id[8..].copy_from_slice(&n.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        id
    }

    fn header(k: &str, v: &str) -> Header {
        Header {
            key: k.to_owned().into(),
            value: v.to_owned().into(),
        }
    }

    #[test]
    fn records_of_a_message_come_back_in_order_with_trace_id() {
        let s = store(1.0, 1 << 20);
        let subject = ByteString::from("orders.new");
        let tp = header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
        let t = s.begin(&id(1), &[tp], &subject).expect("sampled");
        s.record(&t, 10, Hop::new(Event::Received).peer("conn 1"));
        s.record(&t, 20, Hop::new(Event::Delivered).count(2));
        let other = s.begin(&id(2), &[], &subject).expect("sampled");
        s.record(&other, 15, Hop::new(Event::Received));
        let recs = s.by_id(&id(1));
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].event, Event::Received);
        assert_eq!(recs[1].at_us, 20);
        assert_eq!(recs[0].trace_id[0], 0x0a);
        assert_eq!(recs[0].trace_id[15], 0x9c);
        assert_eq!(s.by_id(&id(2))[0].trace_id, [0; 16]);
        assert!(s.by_id(&id(3)).is_empty());
        let found = s.search(Some("orders.*"), 0, 100, 10);
        assert_eq!(found.len(), 3);
        assert!(s.search(Some("billing.>"), 0, 100, 10).is_empty());
        assert_eq!(s.search(None, 11, 100, 10).len(), 2);
        assert_eq!(s.search(None, 0, 100, 1)[0].at_us, 20);
    }

    #[test]
    fn a_record_does_not_keep_the_buffer_its_subject_was_decoded_from() {
        // A received frame's subject is a view into the buffer the frame was read into.
        let s = store(1.0, 1 << 20);
        let mut buf = vec![b'x'; 64 * 1024];
        buf[..10].copy_from_slice(b"orders.new");
        let frame = bytes::Bytes::from(buf);
        let subject = ByteString::try_from(frame.slice(0..10)).expect("utf-8");
        let t = s.begin(&id(1), &[], &subject).expect("sampled");
        s.record(&t, 10, Hop::new(Event::Received).peer("conn 1"));
        let recs = s.by_id(&id(1));
        let kept = recs[0].subject.as_ptr() as usize;
        let start = frame.as_ptr() as usize;
        assert_eq!(&*recs[0].subject, "orders.new");
        assert!(
            !(start..start + frame.len()).contains(&kept),
            "the record's subject points into the 64 KiB frame buffer"
        );
    }

    #[test]
    fn head_sampling_keeps_about_the_rate_and_the_force_header_always_wins() {
        let s = store(0.01, 1 << 20);
        let kept = (0..100_000u64).filter(|n| s.sampled(&id(*n), &[])).count();
        assert!((700..1300).contains(&kept), "kept {kept} of 100000 at 1%");
        // The same id gets the same answer every time (and at every gateway).
        let some = (0..1000u64)
            .find(|n| s.sampled(&id(*n), &[]))
            .expect("one sampled");
        assert!(s.sampled(&id(some), &[]));
        let forced = [header("Nexus-Trace", "1")];
        let never = store(0.0, 1 << 20);
        assert!((0..1000u64).all(|n| !never.sampled(&id(n), &[])));
        assert!((0..1000u64).all(|n| never.sampled(&id(n), &forced)));
        assert!(!never.sampled(&id(1), &[header("nexus-trace", "0")]));
        assert!(never.sampled(&id(1), &[header("nexus-trace", "true")]));
        // Ids of another length are never recorded.
        assert!(!never.sampled(&[1, 2, 3], &forced));
    }

    #[test]
    fn the_ring_evicts_the_oldest_and_memory_stays_within_the_budget() {
        let budget = 64 * 1024;
        let (s, metrics) = recording_all(budget);
        let subject = ByteString::from("telemetry.sensor.42");
        for n in 0..20_000u64 {
            let t = s.begin(&id(n), &[], &subject).expect("sampled");
            s.record(
                &t,
                n as i64,
                Hop::new(Event::Received).detail("received from conn 7"),
            );
        }
        assert!(s.bytes() <= budget, "{} bytes over {budget}", s.bytes());
        assert!(s.bytes() > budget / 2, "budget badly used: {}", s.bytes());
        assert_eq!(metrics.bytes.get() as usize, s.bytes());
        let held = s.len() as u64;
        assert_eq!(metrics.kept.get(), 20_000);
        assert_eq!(metrics.evicted.get(), 20_000 - held);
        // The newest survive, the oldest are gone.
        assert_eq!(s.by_id(&id(19_999)).len(), 1);
        assert!(s.by_id(&id(0)).is_empty());
    }

    #[test]
    fn a_full_ring_evicts_rather_than_grow_past_the_budget() {
        let budget = 16 * 40 * SLOT; // 40 slots' worth per shard, text included
        let (s, metrics) = recording_all(budget);
        let subject = ByteString::from("orders.created");
        let fill = |from: u64, to: u64, detail: &str| {
            for n in from..to {
                let t = s.begin(&id(n), &[], &subject).expect("sampled");
                s.record(&t, 0, Hop::new(Event::Delivered).detail(detail.to_owned()));
            }
        };
        fill(0, 5_000, "x");
        let sizes = || {
            s.shards
                .iter()
                .map(|sh| sh.lock().bytes())
                .collect::<Vec<_>>()
        };
        let full = sizes();
        for sh in s.shards.iter() {
            let sh = sh.lock();
            // Every slot counts, used or not: a ring that doubled would hold 64 slots here.
            assert!(
                sh.bytes() <= budget / SHARDS,
                "shard holds {} bytes",
                sh.bytes()
            );
            assert!(sh.len() > 20, "ring barely used: {}", sh.len());
        }
        // Full: more records evict old ones, the rings keep their size.
        fill(5_000, 10_000, "x");
        assert_eq!(full, sizes());
        assert_eq!(metrics.bytes.get() as usize, s.bytes());
        // Records with longer text evict more of the old ones and still fit, whole.
        let long = "y".repeat(SLOT * 4);
        fill(10_000, 11_000, &long);
        assert!(s.bytes() <= budget, "{} bytes over {budget}", s.bytes());
        let last = s.by_id(&id(10_999));
        assert_eq!(last.len(), 1);
        assert_eq!(&*last[0].detail, long.as_str());
        assert_eq!(&*last[0].subject, "orders.created");
        assert_eq!(metrics.bytes.get() as usize, s.bytes());
        // One whose text leaves no room for even one slot is not kept, and is counted.
        let evicted = metrics.evicted.get();
        fill(11_000, 11_001, &"z".repeat(budget / SHARDS));
        assert!(s.by_id(&id(11_000)).is_empty());
        assert!(metrics.evicted.get() > evicted);
        // Every record offered was kept or counted: 11 000 kept, the held ones not evicted.
        assert_eq!(metrics.kept.get(), 11_000);
        assert_eq!(metrics.evicted.get(), 11_000 - s.len() as u64 + 1);
    }

    #[test]
    fn records_come_back_whole_after_their_text_wrapped_around() {
        let budget = 16 * 64 * 1024;
        let s = store(1.0, budget);
        let subjects = ["a", "orders.eu.created", "é.ü", "x.y.z.w"];
        for n in 0..50_000u64 {
            let subject = ByteString::from(subjects[n as usize % 4]);
            let t = s.begin(&id(n), &[], &subject).expect("sampled");
            let hop = Hop::new(Event::Forwarded)
                .peer(format!("peer {n}"))
                .detail("d".repeat(n as usize % 97))
                .latency_us(n)
                .count(n as u32);
            s.record(&t, n as i64, hop);
        }
        assert!(s.bytes() <= budget);
        let held = s.search(None, 0, i64::MAX, usize::MAX);
        assert_eq!(held.len(), s.len());
        assert!(held.len() > 1000, "{} held", held.len());
        for r in &held {
            let n = r.at_us as u64;
            assert_eq!(r.id, id(n));
            assert_eq!(&*r.subject, subjects[n as usize % 4]);
            assert_eq!(&*r.peer, format!("peer {n}"));
            assert_eq!(r.detail.len(), n as usize % 97);
            assert_eq!((r.latency_us, r.count), (n, n as u32));
        }
        // The newest are held, in order.
        assert_eq!(held.last().map(|r| r.at_us), Some(49_999));
        let matching = s.search(Some("orders.>"), 0, i64::MAX, usize::MAX);
        assert!(!matching.is_empty());
        assert!(matching.iter().all(|r| &*r.subject == "orders.eu.created"));
    }

    /// What tracing costs per message, in-process: the sampling decision every message pays,
    /// and the records of a traced one (the four hops of a publish with one remote region and
    /// one subscriber, strings formatted as the router does). Run in release:
    /// `cargo test --release -p nexus-gateway --lib trace_store::tests::cost -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement; prints figures"]
    fn cost_per_message() {
        use std::time::Instant;
        let s = store(0.01, 16 << 20);
        let headers = vec![
            header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            header("nexus-publisher-key", "k1"),
        ];
        let ids: Vec<[u8; 16]> = (0..1_000_000u64).map(id).collect();
        let started = Instant::now();
        let sampled = ids.iter().filter(|i| s.sampled(&i[..], &headers)).count();
        let decide = started.elapsed().as_nanos() as f64 / ids.len() as f64;
        let subject = ByteString::from("orders.eu.created");
        let n = 100_000;
        let started = Instant::now();
        for i in &ids[..n] {
            let t = Traced::new(i, &headers, &subject).expect("16 bytes");
            s.record(
                &t,
                now_us(),
                Hop::new(Event::Received)
                    .peer(format!("session {} {:?} key {}", 12, "orders-api", "k1"))
                    .detail(format!("{} bytes", 512)),
            );
            s.record(
                &t,
                now_us(),
                Hop::new(Event::Route).peer("route orders").detail(format!(
                    "policy {}, mode {}; regions: {}; gateways of this region: {}; local subscribers here: {}",
                    "nearest", "best_effort", "eu-west chosen by policy nearest", "none wants it", "yes"
                )),
            );
            s.record(
                &t,
                now_us(),
                Hop::new(Event::Forwarded)
                    .peer(format!("{} via {}", "eu-west", "gw-eu-1"))
                    .detail("region hop, best effort")
                    .latency_us(81_000),
            );
            s.record(
                &t,
                now_us(),
                Hop::new(Event::Delivered)
                    .peer(format!("session {} {:?} sid {}", 7, "billing", 1))
                    .count(1),
            );
        }
        let traced = started.elapsed().as_nanos() as f64 / n as f64;
        println!(
            "sampling decision: {decide:.1} ns/message ({sampled} of {} sampled at 1%); a traced message's 4 records: {traced:.0} ns; average at 1%: {:.1} ns/message",
            ids.len(),
            decide + traced / 100.0
        );
        assert!(s.bytes() <= 16 << 20);
    }

    #[test]
    fn message_ids_parse_as_ulid_or_hex() {
        let u = ulid::Ulid::from_parts(1_700_000_000_000, 42);
        assert_eq!(parse_message_id(&u.to_string()), Ok(u.to_bytes()));
        let hex: String = u.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(parse_message_id(&hex), Ok(u.to_bytes()));
        assert!(
            parse_message_id("nope")
                .unwrap_err()
                .contains("not a message id")
        );
    }
}
