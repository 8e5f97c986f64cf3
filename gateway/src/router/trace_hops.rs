//! Recording the hops of traced messages (sampled, or forced by the `nexus-trace` header)
//! in the gateway's trace store, for `nexusctl trace` (docs/trace.md). Every call records
//! only for a traced message and builds its record only then.

use std::time::Duration;

use nexus_proto::v1::ErrorCode;

use super::{Delivery, ReplyResult, Router};
use crate::connection::Connection;
use crate::trace_store::{Event, Hop, Reason, Traced};

impl Router {
    /// Records a hop of `msg` in the trace store when the message is traced; `hop` is only
    /// built then.
    pub fn trace(&self, msg: &Delivery, hop: impl FnOnce() -> Hop) {
        if msg.traced
            && let Some(t) = Traced::new(&msg.id, &msg.headers, &msg.subject)
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
