//! W3C trace context on messages: every message carries a `traceparent` header, and each
//! gateway hop gets a `tracing` span linked to it.
//!
//! Adapters create the header; the gateway creates one only when a client sent none (e.g. a
//! unary call from a generic gRPC tool). When OpenTelemetry export is on, the hop's span is
//! made a child of the incoming context and the header is rewritten to the hop's own span,
//! so the next hop (a subscriber, a responder, another region) continues the same trace.

use std::sync::atomic::{AtomicBool, Ordering};

use nexus_proto::ByteString;
use nexus_proto::v1::Header;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub const TRACEPARENT: &str = "traceparent";

static OTEL_ENABLED: AtomicBool = AtomicBool::new(false);

/// Called by the binary once it installed an OpenTelemetry layer.
pub fn enable_otel() {
    OTEL_ENABLED.store(true, Ordering::Relaxed);
}

/// A fresh `traceparent` value with random ids, sampled.
pub fn new_traceparent() -> String {
    let trace: u128 = rand::random::<u128>().max(1);
    let span: u64 = rand::random::<u64>().max(1);
    format!("00-{trace:032x}-{span:016x}-01")
}

/// Whether `value` is a syntactically valid version-00 traceparent
/// (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`, ids not all zero). Runs on every
/// message, so it checks positions in place, and the hex test has no early exit: a loop
/// without branches per byte is one the compiler vectorises.
pub fn is_valid_traceparent(value: &str) -> bool {
    let b = value.as_bytes();
    if b.len() != 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' || &b[0..2] == b"ff" {
        return false;
    }
    // W3C allows lowercase hex only.
    let hex = |s: &[u8]| {
        s.iter().fold(true, |ok, &c| {
            ok & ((c.wrapping_sub(b'0') < 10) | (c.wrapping_sub(b'a') < 6))
        })
    };
    hex(&b[0..2])
        & hex(&b[3..35])
        & hex(&b[36..52])
        & hex(&b[53..55])
        & (b[3..35] != [b'0'; 32])
        & (b[36..52] != [b'0'; 16])
}

/// Makes sure `headers` carries a valid traceparent; a missing or malformed one is replaced.
pub fn ensure_traceparent(headers: &mut Vec<Header>) {
    // Adapters write the key in lower case: compared as bytes first (on every message, a
    // case-folding comparison of the 11 bytes cost ~75 instructions).
    match headers
        .iter_mut()
        .find(|h| &*h.key == TRACEPARENT || h.key.eq_ignore_ascii_case(TRACEPARENT))
    {
        Some(h) if is_valid_traceparent(&h.value) => {}
        Some(h) => h.value = new_traceparent().into(),
        None => headers.push(Header {
            key: ByteString::from_static(TRACEPARENT),
            value: new_traceparent().into(),
        }),
    }
}

struct HeaderCarrier<'a>(&'a mut Vec<Header>);

impl Extractor for HeaderCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|h| h.key.eq_ignore_ascii_case(key))
            .map(|h| &*h.value)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|h| &*h.key).collect()
    }
}

impl Injector for HeaderCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        match self.0.iter_mut().find(|h| h.key.eq_ignore_ascii_case(key)) {
            Some(h) => h.value = value.into(),
            None => self.0.push(Header {
                key: key.into(),
                value: value.into(),
            }),
        }
    }
}

/// Links `span` to the trace in `headers` and, with export on, rewrites the header so the
/// next hop becomes a child of `span`.
pub fn link_span(span: &tracing::Span, headers: &mut Vec<Header>) {
    ensure_traceparent(headers);
    if !OTEL_ENABLED.load(Ordering::Relaxed) || span.is_disabled() {
        return;
    }
    let propagator = TraceContextPropagator::new();
    let parent = propagator.extract(&HeaderCarrier(headers));
    let _ = span.set_parent(parent);
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        propagator.inject_context(&cx, &mut HeaderCarrier(headers));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_traceparents_are_valid() {
        for _ in 0..100 {
            assert!(is_valid_traceparent(&new_traceparent()));
        }
        assert!(!is_valid_traceparent("00-abc-def-01"));
        assert!(!is_valid_traceparent(
            "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01"
        ));
        assert!(!is_valid_traceparent(
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        ));
        assert!(!is_valid_traceparent(
            "00-00000000000000000000000000000000-0000000000000001-01"
        ));
        for bad in [
            "00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01", // 'g'
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", // zero span id
            "00-0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331-01", // separator
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0/", // '/' is below '0'
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 ", // length
        ] {
            assert!(!is_valid_traceparent(bad), "{bad}");
        }
        assert!(is_valid_traceparent(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
        ));
    }

    #[test]
    fn ensure_keeps_valid_and_replaces_invalid() {
        let good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut h = vec![Header {
            key: TRACEPARENT.into(),
            value: good.into(),
        }];
        ensure_traceparent(&mut h);
        assert_eq!(h[0].value, good);
        h[0].value = "garbage".into();
        ensure_traceparent(&mut h);
        assert!(is_valid_traceparent(&h[0].value));
        let mut empty = Vec::new();
        ensure_traceparent(&mut empty);
        assert_eq!(empty.len(), 1);
    }
}
