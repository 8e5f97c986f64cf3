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

/// Environment variable choosing the filler: `json` for compressible JSON text (a window of
/// [`json_corpus`] that moves with the sequence number), anything else or unset for `x`s.
pub const FILLER_ENV: &str = "NEXUS_LOAD_FILLER";

fn json_filler() -> bool {
    static JSON: OnceLock<bool> = OnceLock::new();
    *JSON.get_or_init(|| std::env::var(FILLER_ENV).is_ok_and(|v| v == "json"))
}

/// 1 MiB of JSON records (sensor readings with ids, names, timestamps and numbers from a
/// fixed pseudo-random sequence): about as compressible as typical JSON traffic (zstd level 3
/// shrinks a 4-16 KiB window of it 3-5x), unlike a run of one byte.
pub fn json_corpus() -> &'static [u8] {
    static CORPUS: OnceLock<Vec<u8>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let sites = ["fra-1", "iad-2", "sin-1", "gru-3", "syd-1", "ams-2"];
        let kinds = ["temperature", "humidity", "pressure", "vibration"];
        let mut s = String::with_capacity(1 << 20);
        s.push('[');
        let mut i = 0u64;
        while s.len() < 1 << 20 {
            let r = next();
            s.push_str(&format!(
                r#"{{"id":"{:016x}","seq":{i},"site":"{}","sensor":"{}-{}","kind":"{}","ts":"2026-11-{:02}T{:02}:{:02}:{:02}.{:03}Z","value":{}.{:02},"ok":{},"tags":["edge","v{}"]}},"#,
                r,
                sites[(r % 6) as usize],
                kinds[(r >> 8) as usize % 4],
                (r >> 16) % 500,
                kinds[(r >> 8) as usize % 4],
                1 + (r >> 20) % 28,
                (r >> 25) % 24,
                (r >> 30) % 60,
                (r >> 36) % 60,
                (r >> 42) % 1000,
                (r >> 50) % 1000,
                (r >> 4) % 100,
                !r.is_multiple_of(7),
                (r >> 12) % 4,
            ));
            i += 1;
        }
        s.into_bytes()
    })
}

/// Builds a payload of `size` bytes (at least [`HEADER_LEN`]) carrying `stamp`.
pub fn encode(stamp: Stamp, size: usize) -> Bytes {
    let size = size.max(HEADER_LEN);
    let mut b = BytesMut::with_capacity(size);
    b.put_u32(stamp.publisher);
    b.put_u64(stamp.seq);
    b.put_u64(stamp.sent_ns);
    let fill = size - HEADER_LEN;
    let corpus = json_corpus_if_wanted();
    match corpus {
        Some(c) if fill <= c.len() => {
            let start = (stamp.seq.wrapping_mul(7919) as usize) % (c.len() - fill + 1);
            b.put_slice(&c[start..start + fill]);
        }
        _ => b.resize(size, b'x'),
    }
    b.freeze()
}

fn json_corpus_if_wanted() -> Option<&'static [u8]> {
    json_filler().then(json_corpus)
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
