//! One shard of the trace store: its records' fixed parts in a ring of slots and their text
//! (subject, peer, detail) in a second ring of bytes, both within the shard's byte budget.
//! Both rings grow while the budget allows and then evict the oldest records instead, so
//! once they have reached their size recording allocates nothing, and the memory they hold
//! neither grows nor fragments while messages flow. Sans-I/O.

use std::collections::VecDeque;

use nexus_proto::ByteString;

use super::{Event, Reason, Record};

/// A record with its text replaced by where the text lies in the text ring.
#[derive(Clone, Copy)]
struct Slot {
    id: [u8; 16],
    trace_id: [u8; 16],
    at_us: i64,
    latency_us: u64,
    /// Where the record's text begins, counted over all text ever pushed to this ring.
    text_at: u64,
    /// Lengths of the subject, peer and detail, stored one after the other.
    lens: [u32; 3],
    count: u32,
    event: Event,
    reason: Option<Reason>,
}

/// Bytes of one slot, used or not.
pub(super) const SLOT: usize = std::mem::size_of::<Slot>();

// A record's fixed part stays small (docs/trace.md §4 says 80 bytes).
const _: () = assert!(SLOT <= 80, "a trace slot grew past 80 bytes");

/// The records of one shard, oldest first.
#[derive(Default)]
pub(super) struct Ring {
    slots: VecDeque<Slot>,
    text: VecDeque<u8>,
    /// Where `text[0]` lies, counted over all text ever pushed.
    text_start: u64,
}

/// What [`Ring::push`] did.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Pushed {
    /// Older records evicted to make room.
    pub evicted: u64,
    /// Whether the record was kept (not when its text does not fit even in an emptied ring).
    pub kept: bool,
}

/// Bytes of text a record keeps: subject, peer and detail.
pub(super) fn text_len(rec: &Record) -> usize {
    rec.subject.len() + rec.peer.len() + rec.detail.len()
}

impl Ring {
    /// Memory the ring holds: every slot, used or not, and its text buffer's capacity.
    pub fn bytes(&self) -> usize {
        self.slots.capacity() * SLOT + self.text.capacity()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Keeps a copy of `rec` (its text copied in, so no message buffer is pinned), evicting
    /// the oldest records when the rings are full and `budget` lets them grow no further.
    pub fn push(&mut self, rec: &Record, budget: usize) -> Pushed {
        let texts = [&rec.subject, &rec.peer, &rec.detail];
        let need = text_len(rec);
        let (evicted, kept) = self.make_room(need, budget);
        if kept {
            let text_at = self.text_start + self.text.len() as u64;
            for t in texts {
                self.text.extend(t.as_bytes());
            }
            self.slots.push_back(Slot {
                id: rec.id,
                trace_id: rec.trace_id,
                at_us: rec.at_us,
                latency_us: rec.latency_us,
                text_at,
                lens: texts.map(|t| t.len() as u32),
                count: rec.count,
                event: rec.event,
                reason: rec.reason,
            });
        }
        Pushed { evicted, kept }
    }

    /// Makes room for one slot and `need` bytes of text: grows what is short while the
    /// budget allows (doubling, or as far as the budget goes), else evicts the oldest
    /// record. An emptied ring whose sizes still leave no room (they were set by records
    /// with less text) starts again from nothing, once. Returns the records evicted and
    /// whether there is room.
    fn make_room(&mut self, need: usize, budget: usize) -> (u64, bool) {
        let (mut evicted, mut restarted) = (0, false);
        loop {
            let slot_free = self.slots.len() < self.slots.capacity();
            let text_short = (self.text.len() + need).saturating_sub(self.text.capacity());
            if slot_free && text_short == 0 {
                return (evicted, true);
            }
            let spare = budget.saturating_sub(self.bytes());
            if !slot_free {
                let cap = self.slots.capacity();
                let more = cap.max(16).min(spare / SLOT);
                if more > 0 {
                    self.slots.reserve_exact(cap + more - self.slots.len());
                    continue;
                }
            } else {
                let cap = self.text.capacity();
                let more = cap.max(1024).max(text_short).min(spare);
                if more >= text_short {
                    self.text.reserve_exact(cap + more - self.text.len());
                    continue;
                }
            }
            if let Some(old) = self.slots.pop_front() {
                let n = old.lens.iter().map(|&l| l as usize).sum::<usize>();
                self.text.drain(..n);
                self.text_start += n as u64;
                evicted += 1;
                continue;
            }
            if restarted {
                return (evicted, false);
            }
            let text_start = self.text_start;
            *self = Ring {
                text_start,
                ..Ring::default()
            };
            restarted = true;
        }
    }

    /// The records for which `keep(id, at_us)` holds, oldest first, as owned copies.
    pub fn records<'a>(
        &'a self,
        keep: impl Fn(&[u8; 16], i64) -> bool + 'a,
    ) -> impl Iterator<Item = Record> + 'a {
        self.slots
            .iter()
            .filter(move |s| keep(&s.id, s.at_us))
            .map(|s| {
                let mut at = (s.text_at - self.text_start) as usize;
                let [subject, peer, detail] = s.lens.map(|len| {
                    let text = self.text_at(at, len as usize);
                    at += len as usize;
                    text
                });
                Record {
                    id: s.id,
                    trace_id: s.trace_id,
                    at_us: s.at_us,
                    event: s.event,
                    reason: s.reason,
                    subject,
                    peer,
                    detail,
                    latency_us: s.latency_us,
                    count: s.count,
                }
            })
    }

    /// The `len` bytes of text at offset `at` of the text ring (one string pushed whole).
    fn text_at(&self, at: usize, len: usize) -> ByteString {
        let bytes: Vec<u8> = self.text.range(at..at + len).copied().collect();
        match String::from_utf8(bytes) {
            Ok(s) => ByteString::from(s),
            // Unreachable: each string was pushed whole from a `str`.
            Err(e) => ByteString::from(String::from_utf8_lossy(e.as_bytes()).into_owned()),
        }
    }
}
