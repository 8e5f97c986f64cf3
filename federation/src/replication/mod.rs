//! Replication of `async` and `sync` routes between regions: what makes an acknowledged
//! publish reach every target region exactly once, in order, across link cuts, stalls and
//! restarts. The protocol's decisions are sans-I/O state machines here, driven by the bridge
//! (`crate::bridge::replication`) and by the deterministic model test
//! (`federation/tests/replication_model.rs`) alike:
//!
//! - [`outbox`]: the sender. Messages are numbered per target region (`seq`), written to disk
//!   before the publisher is acknowledged, sent over the current link only, and deleted only
//!   when the region confirms them.
//! - [`inbox`]: the receiver. Delivers each stream strictly in order, drops resends, refuses
//!   gaps with a request to resend, and confirms only what is delivered and on disk.
//! - [`quorum`]: which regions must confirm a `sync` publish before its publisher is answered.
//! - [`dedup`]: message ids accepted recently, so a publisher's retry is not a second message.
//! - [`replica`]: copies of the spool on another gateway of the region
//!   (`--spool-replicas 2`), and that gateway taking over when the origin is gone for good.
//! - [`store`]: the redb file that makes all of it survive a `kill -9`.
//!
//! A **stream** is what one spool sends to one region. It is named by the spool's
//! [`StreamId`], chosen when the spool file is created and kept in it, so a receiver never
//! mistakes a new spool (a gateway whose disk was replaced) for the continuation of an old
//! one, and two gateways never share numbers.

pub mod dedup;
pub mod inbox;
pub mod outbox;
pub mod quorum;
pub mod replica;
pub mod store;

pub use outbox::{Limits, Overflow};

/// The name of one spool's streams, carried in every `Spooled`, `SpoolAck` and `SpoolNack`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(String);

impl StreamId {
    /// A new id for a spool created now by `gateway_id`: the gateway id (for people reading
    /// logs) and 64 random bits (so a recreated spool never reuses a name).
    pub fn generate(gateway_id: &str) -> Self {
        StreamId(format!("{gateway_id}.{:016x}", rand::random::<u64>()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for StreamId {
    fn from(s: &str) -> Self {
        StreamId(s.to_owned())
    }
}

impl From<String> for StreamId {
    fn from(s: String) -> Self {
        StreamId(s)
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for StreamId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}
