//! The gateway's recent warnings: a `tracing` layer that keeps the last [`CAPACITY`] WARN and
//! ERROR events of the process (level, target, message, fields, time, a sequence number) in
//! a bounded ring, served on the operator endpoint as `GET /v1/logs?after=<seq>` and followed
//! by the control plane's `FollowLogs` call (the console's live log panel, `nexusctl logs`;
//! docs/trace.md §8).
//!
//! The ring is process-wide (the subscriber is): in `nexus dev`, which runs several
//! components in one process, every gateway's endpoint serves the same events. Recording
//! costs one short lock per WARN/ERROR event, and nothing for other levels (the layer's filter
//! rejects them before any field is visited). A message or field longer than [`MAX_TEXT`]
//! bytes is cut.

use std::collections::VecDeque;
use std::fmt::Write as _;

use parking_lot::Mutex;
use tracing::field::{Field, Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::LevelFilter;

/// Events kept.
pub const CAPACITY: usize = 1000;
/// Longest message or field value kept, bytes.
pub const MAX_TEXT: usize = 1024;

/// One logged event.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LogEvent {
    pub seq: u64,
    pub at_us: i64,
    pub level: &'static str,
    pub target: String,
    pub message: String,
    pub fields: Vec<(String, String)>,
}

struct Ring {
    events: VecDeque<LogEvent>,
    next_seq: u64,
}

static RING: Mutex<Ring> = Mutex::new(Ring {
    events: VecDeque::new(),
    next_seq: 1,
});

/// The layer to add to the process's subscriber; it sees WARN and ERROR events only.
pub fn layer<S>() -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    RingLayer.with_filter(LevelFilter::WARN)
}

struct RingLayer;

fn cut(mut s: String) -> String {
    if s.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

#[derive(Default)]
struct Fields {
    message: String,
    fields: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = cut(value.to_owned());
        } else {
            self.fields
                .push((field.name().to_owned(), cut(value.to_owned())));
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut s = String::new();
        let _ = write!(s, "{value:?}");
        if field.name() == "message" {
            self.message = cut(s);
        } else {
            self.fields.push((field.name().to_owned(), cut(s)));
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for RingLayer {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let meta = event.metadata();
        let mut f = Fields::default();
        event.record(&mut f);
        let level = match *meta.level() {
            tracing::Level::ERROR => "ERROR",
            tracing::Level::WARN => "WARN",
            _ => return,
        };
        push(level, meta.target(), f.message, f.fields);
    }
}

/// Adds an event (what the layer does; also for tests).
pub fn push(level: &'static str, target: &str, message: String, fields: Vec<(String, String)>) {
    let at_us = crate::trace_store::now_us();
    let mut ring = RING.lock();
    let seq = ring.next_seq;
    ring.next_seq += 1;
    if ring.events.len() >= CAPACITY {
        ring.events.pop_front();
    }
    ring.events.push_back(LogEvent {
        seq,
        at_us,
        level,
        target: target.to_owned(),
        message,
        fields,
    });
}

/// Events with a sequence number above `after`, oldest first, at most `limit` (the newest
/// ones when there are more), ERROR only when `errors_only`; and the next sequence number.
pub fn since(after: u64, limit: usize, errors_only: bool) -> (Vec<LogEvent>, u64) {
    let ring = RING.lock();
    let mut out: Vec<LogEvent> = ring
        .events
        .iter()
        .rev()
        .filter(|e| e.seq > after && (!errors_only || e.level == "ERROR"))
        .take(limit)
        .cloned()
        .collect();
    out.reverse();
    (out, ring.next_seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::prelude::*;

    #[test]
    fn keeps_warnings_and_errors_with_their_fields() {
        let subscriber = tracing_subscriber::registry().with(layer());
        let (_, start) = since(u64::MAX, 0, false);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("not kept");
            tracing::warn!(peer = "b1", rtt_ms = 12, "link slow");
            tracing::error!(error = %"boom", "link down");
        });
        let (events, next) = since(start - 1, 100, false);
        let ours: Vec<_> = events
            .iter()
            .filter(|e| e.target.ends_with("log_ring::tests"))
            .collect();
        assert_eq!(ours.len(), 2, "{events:?}");
        assert_eq!(ours[0].level, "WARN");
        assert_eq!(ours[0].message, "link slow");
        assert_eq!(
            ours[0].fields,
            vec![("peer".into(), "b1".into()), ("rtt_ms".into(), "12".into())]
        );
        assert_eq!(ours[1].level, "ERROR");
        assert!(next > ours[1].seq);
        let (errors, _) = since(start - 1, 100, true);
        assert!(errors.iter().all(|e| e.level == "ERROR"));

        // Bounded (in the same test: the ring is process-wide).
        for i in 0..(CAPACITY + 10) {
            push("WARN", "t", format!("{i}"), vec![]);
        }
        let (events, _) = since(0, usize::MAX, false);
        assert!(events.len() <= CAPACITY);
        let long = "x".repeat(MAX_TEXT * 2);
        assert!(cut(long).len() <= MAX_TEXT + '…'.len_utf8());
    }
}
