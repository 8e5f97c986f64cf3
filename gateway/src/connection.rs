//! `Connection`: what the rest of the gateway knows about one adapter session.
//!
//! The session task owns the connection's lifecycle; the router and other sessions hold an
//! `Arc<Connection>` only to deliver frames to it (through its `Outbound`) and to find the
//! requests and streams it serves when it goes away.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;

use crate::outbound::Outbound;
use crate::policy::Grant;
use crate::streams::StreamEnd;

pub struct Connection {
    pub id: u64,
    /// Client name from Hello, for logs.
    pub name: Mutex<String>,
    pub outbound: Outbound,
    /// Requests delivered to this connection as a responder and not yet answered, by
    /// gateway sequence number; failed at once if the connection goes away.
    pub serving: Mutex<HashSet<u64>>,
    /// Streams this connection takes part in, by the stream id it uses for them.
    pub streams: Mutex<HashMap<u64, StreamEnd>>,
    /// Last time (ms since the gateway started) a SLOW_CONSUMER notice was sent, so a
    /// flood of drops produces one notice per second rather than one per message.
    pub last_slow_notice_ms: AtomicU64,
    /// Counter for gateway-assigned stream ids (`2^63 + n`).
    next_stream_id: AtomicU64,
    /// What the session's API key allows; `None` when authentication is off.
    pub grant: ArcSwapOption<Grant>,
    /// Notified when `grant` changed (new scopes), for the session to re-check its
    /// subscriptions.
    pub grant_changed: tokio::sync::Notify,
}

/// Stream ids the gateway assigns have the top bit set, so they never collide with the ids
/// an adapter picks for streams it opens.
pub const GATEWAY_STREAM_ID_BASE: u64 = 1 << 63;

impl Connection {
    pub fn new(id: u64, outbound: Outbound) -> Self {
        Self {
            id,
            name: Mutex::new(String::new()),
            outbound,
            serving: Mutex::new(HashSet::new()),
            streams: Mutex::new(HashMap::new()),
            last_slow_notice_ms: AtomicU64::new(0),
            next_stream_id: AtomicU64::new(0),
            grant: ArcSwapOption::empty(),
            grant_changed: tokio::sync::Notify::new(),
        }
    }

    pub fn next_gateway_stream_id(self: &Arc<Self>) -> u64 {
        GATEWAY_STREAM_ID_BASE | self.next_stream_id.fetch_add(1, Ordering::Relaxed)
    }
}
