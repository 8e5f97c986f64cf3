//! The load payload: a 20-byte header (publisher index, sequence number, send timestamp)
//! followed by filler up to the requested size, so a receiver can compute latency and spot
//! loss, duplicates and reordering without any side channel.
//!
//! Timestamps are nanoseconds since a process-wide monotonic epoch ([`now_ns`]); senders and
//! receivers run in the same process, so no clock synchronisation is needed.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

/// Bytes of header at the start of every payload.
pub const HEADER_LEN: usize = 20;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// The process-wide monotonic epoch.
pub fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since [`epoch`].
pub fn now_ns() -> u64 {
    instant_ns(Instant::now())
}

/// `t` as nanoseconds since [`epoch`] (0 if before it).
pub fn instant_ns(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

/// The decoded header of a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Index of the sender.
    pub publisher: u32,
    /// Sequence number within that sender, from 0.
    pub seq: u64,
    /// (Intended) send time, nanoseconds since [`epoch`].
    pub sent_ns: u64,
}

impl Stamp {
    /// Nanoseconds from the send time to now (0 if the clock seems to go backwards).
    pub fn age_ns(&self) -> u64 {
        now_ns().saturating_sub(self.sent_ns)
    }
}

/// Builds a payload of `size` bytes (at least [`HEADER_LEN`]) carrying `stamp`.
pub fn encode(stamp: Stamp, size: usize) -> Bytes {
    let size = size.max(HEADER_LEN);
    let mut b = BytesMut::with_capacity(size);
    b.put_u32(stamp.publisher);
    b.put_u64(stamp.seq);
    b.put_u64(stamp.sent_ns);
    b.resize(size, b'x');
    b.freeze()
}

/// Reads the header of a payload built by [`encode`].
pub fn decode(payload: &[u8]) -> Option<Stamp> {
    if payload.len() < HEADER_LEN {
        return None;
    }
    let publisher = u32::from_be_bytes(payload[0..4].try_into().ok()?);
    let seq = u64::from_be_bytes(payload[4..12].try_into().ok()?);
    let sent_ns = u64::from_be_bytes(payload[12..20].try_into().ok()?);
    Some(Stamp {
        publisher,
        seq,
        sent_ns,
    })
}

/// The instant `i` intervals after `start` for a sender running at `rate` per second.
pub fn scheduled(start: Instant, i: u64, rate: f64) -> Instant {
    start + Duration::from_secs_f64(i as f64 / rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let s = Stamp {
            publisher: 7,
            seq: 123_456_789,
            sent_ns: 42,
        };
        let p = encode(s, 128);
        assert_eq!(p.len(), 128);
        assert_eq!(decode(&p), Some(s));
        assert_eq!(encode(s, 4).len(), HEADER_LEN);
        assert_eq!(decode(b"short"), None);
    }
}
