//! Recording the hops of traced messages (sampled, or forced by the `nexus-trace` header)
//! in the gateway's trace store, for `nexusctl trace` (docs/trace.md). Every call records
//! only for a traced message and builds its record only then.

use std::time::Duration;

use nexus_proto::v1::ErrorCode;

use super::{MessageRef, ReplyResult, Router};
use crate::connection::Connection;
use crate::trace_store::{Event, Hop, Reason, Traced};

impl Router {
    /// Records a hop of `msg` in the trace store when the message is traced; `hop` is only
    /// built then.
    pub fn trace(&self, msg: &MessageRef<'_>, hop: impl FnOnce() -> Hop) {
        if msg.traced
            && let Some(t) = Traced::new(msg.id, msg.headers, msg.subject)
        {
            self.traces.record(&t, crate::trace_store::now_us(), hop());
        }
    }

    /// Records a hop of a traced message through its handle.
    pub fn trace_hop(&self, traced: Option<&Traced>, hop: impl FnOnce() -> Hop) {
        if let Some(t) = traced {
            self.traces.record(t, crate::trace_store::now_us(), hop());
        }
    }

    /// Records that a traced message passed its subject's enforced schema, or violated it
    /// under `warn` enforcement (nothing when the subject has none). Validates again: only
    /// traced messages come here.
    pub fn trace_schema_passed(&self, traced: Option<&Traced>, subject: &str, payload: &[u8]) {
        let policy = self.policy.load();
        if let Some(enforced) = policy.schemas.get(subject) {
            self.trace_hop(traced, || {
                let checked = format!(
                    "payload checked against schema {subject:?} version {}",
                    enforced.version
                );
                match enforced.schema.validate(payload) {
                    Ok(()) => Hop::new(Event::Schema).reason(Reason::Ok).detail(checked),
                    Err(v) => Hop::new(Event::Schema)
                        .reason(Reason::Warned)
                        .detail(format!(
                            "{checked}: {} violation(s), delivered anyway (enforcement warn){}",
                            v.len(),
                            v.first()
                                .map(|v| format!(", first: {} {}", v.path, v.message))
                                .unwrap_or_default()
                        )),
                }
            });
        }
    }

    /// The records of message `id` this gateway holds, as JSON (`/v1/trace`).
    pub fn trace_records(&self, records: &[crate::trace_store::Record]) -> serde_json::Value {
        let cfg = self.config();
        serde_json::Value::Array(
            records
                .iter()
                .map(|r| crate::trace_store::to_json(r, &cfg.region, &cfg.gateway_id))
                .collect(),
        )
    }

    /// Records that a traced message was queued for subscription `sid` of `conn`, or not.
    pub(super) fn trace_delivery(
        &self,
        traced: Option<&Traced>,
        conn: &Connection,
        sid: u64,
        queued: bool,
    ) {
        self.trace_hop(traced, || {
            let peer = format!("session {} {:?} sid {sid}", conn.id, &*conn.name.lock());
            if queued {
                Hop::new(Event::Delivered).peer(peer).count(1)
            } else {
                Hop::new(Event::Dropped)
                    .reason(Reason::SlowConsumer)
                    .peer(peer)
                    .detail(format!(
                        "not queued: the subscriber's session is closed or its outbound budget was full (slow_consumer.policy {})",
                        self.cfg.load().slow_consumer.policy.as_str()
                    ))
            }
        })
    }
}

/// The header adapters report their own span in, on forced-traced requests and replies:
/// `kind=client|server;name=...;span=<16 hex>;parent=<16 hex>;start_us=<unix µs>;
/// duration_us=<µs>;lang=...` (docs/trace.md §2).
pub const SPAN_HEADER: &str = "nexus-span";

/// The span record an adapter's `nexus-span` header describes, if any.
pub(super) fn adapter_span(headers: &[nexus_proto::v1::Header]) -> Option<Hop> {
    let value = &headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(SPAN_HEADER))?
        .value;
    let field = |k: &str| {
        value
            .split(';')
            .find_map(|kv| kv.split_once('=').filter(|(key, _)| key.trim() == k))
            .map(|(_, v)| v.trim())
            .unwrap_or("")
    };
    let clip = |s: &str| s.chars().take(200).collect::<String>();
    let mut detail = format!("{} span {:?}", clip(field("kind")), clip(field("name")));
    for k in ["span", "parent", "start_us"] {
        if !field(k).is_empty() {
            detail.push_str(&format!(" {k} {}", clip(field(k))));
        }
    }
    let lang = field("lang");
    Some(
        Hop::new(Event::Span)
            .peer(format!(
                "{} adapter",
                if lang.is_empty() { "an" } else { lang }
            ))
            .detail(detail)
            .latency_us(field("duration_us").parse().unwrap_or(0)),
    )
}

/// The trace record of a request's answer.
pub(super) fn reply_hop(result: &ReplyResult, elapsed: Duration) -> Hop {
    let hop = Hop::new(Event::Reply).latency_us(elapsed.as_micros() as u64);
    match result {
        Ok(_) => hop,
        Err(e) if e.code == ErrorCode::Timeout as i32 => {
            hop.reason(Reason::Timeout).detail(e.message.clone())
        }
        Err(e) => hop.reason(Reason::Error).detail(e.message.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_proto::v1::Header;

    #[test]
    fn adapter_spans_are_read_from_their_header() {
        let h = |v: &str| {
            vec![Header {
                key: "Nexus-Span".into(),
                value: v.into(),
            }]
        };
        let hop = adapter_span(&h(
            "kind=server;name=handle a.b;span=00f067aa0ba902b7;parent=00000000000000b2;start_us=17;duration_us=250;lang=python",
        ))
        .unwrap();
        assert_eq!(hop.event, Event::Span);
        assert_eq!(&*hop.peer, "python adapter");
        assert_eq!(
            &*hop.detail,
            "server span \"handle a.b\" span 00f067aa0ba902b7 parent 00000000000000b2 start_us 17"
        );
        assert_eq!(hop.latency_us, 250);
        let bare = adapter_span(&h("garbage")).unwrap();
        assert_eq!((&*bare.peer, bare.latency_us), ("an adapter", 0));
        assert!(adapter_span(&[]).is_none());
    }
}
