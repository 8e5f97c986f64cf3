//! The receiving side of replication (sans-I/O): per stream, how far it was delivered (in
//! order, with no gap) and how far that is recorded on disk, and what to answer each
//! arriving message with.
//!
//! A message is delivered only when it continues the stream: its `prev_seq` (the sender's
//! previous message, 0 when it holds none older) is at or below what was delivered, and its
//! `seq` above it. Anything at or below is a resend and is dropped; anything else is a gap (a
//! message the sender still holds went missing), answered with a `SpoolNack` so the sender
//! resends from there. Confirmations (`SpoolAck`) name only what is both delivered in order
//! and durable, so the sender never deletes a message this side could still lose.
//!
//! Repeated answers are rate-limited per link: one confirmation per duplicate run and one nack
//! per gap, since a reconnect can bring thousands of resends.

use std::collections::HashMap;

use super::StreamId;
use crate::link::LinkId;

/// Confirm at least every this many recorded messages while a stream flows, so the sender's
/// spool drains even when deliveries always run ahead of the disk.
pub const ACK_EVERY: u64 = 256;

#[derive(Debug, Clone)]
struct Mark {
    /// The region the stream comes from (where its confirmations go).
    region: String,
    /// Delivered in order through here.
    delivered: u64,
    /// Recorded on disk through here (never above `delivered`).
    durable: u64,
    /// The last confirmation sent, and on which link.
    acked: Option<(LinkId, u64)>,
    /// The last gap answered, and on which link.
    nacked: Option<(LinkId, u64)>,
}

/// What to do with an arriving message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver it, then record its `seq` on disk and call [`Inbox::recorded`].
    Deliver,
    /// Delivered before: drop it; `ack` is a confirmation to send again, if one is due.
    Duplicate { ack: Option<u64> },
    /// Something before it is missing: drop it; `nack` is the mark to ask the sender to
    /// resend after, if not asked already on this link.
    Gap { nack: Option<u64> },
}

#[derive(Debug, Default)]
pub struct Inbox {
    streams: HashMap<StreamId, Mark>,
}

impl Inbox {
    /// A stream's mark as found on disk at start.
    pub fn restore(&mut self, stream: StreamId, region: &str, seq: u64) {
        self.streams.insert(
            stream,
            Mark {
                region: region.to_owned(),
                delivered: seq,
                durable: seq,
                acked: None,
                nacked: None,
            },
        );
    }

    /// Judges message `seq` (after `prev`) of `stream`, from `region` over `link`. On
    /// [`Verdict::Deliver`] the message counts as delivered from now on.
    pub fn on_spooled(
        &mut self,
        region: &str,
        link: LinkId,
        stream: &StreamId,
        seq: u64,
        prev: u64,
    ) -> Verdict {
        let mark = self.streams.entry(stream.clone()).or_insert_with(|| Mark {
            region: region.to_owned(),
            delivered: 0,
            durable: 0,
            acked: None,
            nacked: None,
        });
        if mark.region != region {
            mark.region = region.to_owned();
        }
        if seq <= mark.delivered {
            let due = mark.durable > 0 && mark.acked != Some((link, mark.durable));
            if due {
                mark.acked = Some((link, mark.durable));
            }
            return Verdict::Duplicate {
                ack: due.then_some(mark.durable),
            };
        }
        if prev > mark.delivered {
            let due = mark.nacked != Some((link, mark.delivered));
            if due {
                mark.nacked = Some((link, mark.delivered));
            }
            return Verdict::Gap {
                nack: due.then_some(mark.delivered),
            };
        }
        mark.delivered = seq;
        Verdict::Deliver
    }

    /// Message `seq` of `stream` is recorded on disk; returns the confirmation to send on
    /// `link`, if one is due (the newest delivered message, or every [`ACK_EVERY`]).
    pub fn recorded(&mut self, stream: &StreamId, seq: u64, link: LinkId) -> Option<u64> {
        let mark = self.streams.get_mut(stream)?;
        mark.durable = mark.durable.max(seq.min(mark.delivered));
        let last = mark.acked.map_or(0, |(_, up_to)| up_to);
        let due = mark.durable > last
            && (mark.durable == mark.delivered || mark.durable - last >= ACK_EVERY);
        if due {
            mark.acked = Some((link, mark.durable));
        }
        due.then_some(mark.durable)
    }

    /// Confirmations to send to `region` on a new `link`: every stream from it with
    /// something durable.
    pub fn link_up(&mut self, region: &str, link: LinkId) -> Vec<(StreamId, u64)> {
        let mut out = Vec::new();
        for (stream, mark) in &mut self.streams {
            if mark.region == region && mark.durable > 0 {
                mark.acked = Some((link, mark.durable));
                out.push((stream.clone(), mark.durable));
            }
        }
        out.sort();
        out
    }

    /// Delivered and durable marks of `stream`.
    pub fn marks(&self, stream: &StreamId) -> Option<(u64, u64)> {
        self.streams.get(stream).map(|m| (m.delivered, m.durable))
    }

    /// Forgets what was delivered but not recorded: the process is restarting (model tests)
    /// and its state is what the disk holds.
    pub fn crash(&mut self) {
        for mark in self.streams.values_mut() {
            mark.delivered = mark.durable;
            mark.acked = None;
            mark.nacked = None;
        }
        self.streams.retain(|_, m| m.durable > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L1: LinkId = LinkId(1);
    const L2: LinkId = LinkId(2);

    fn s() -> StreamId {
        StreamId::from("gw-a.1")
    }

    #[test]
    fn delivers_in_order_and_drops_resends() {
        let mut i = Inbox::default();
        assert_eq!(i.on_spooled("a", L1, &s(), 1, 0), Verdict::Deliver);
        assert_eq!(i.on_spooled("a", L1, &s(), 2, 1), Verdict::Deliver);
        assert_eq!(
            i.recorded(&s(), 1, L1),
            None,
            "2 is newer and will confirm both"
        );
        assert_eq!(i.recorded(&s(), 2, L1), Some(2));
        // A resend after a reconnect: one confirmation per link, then silence.
        assert_eq!(
            i.on_spooled("a", L2, &s(), 1, 0),
            Verdict::Duplicate { ack: Some(2) }
        );
        assert_eq!(
            i.on_spooled("a", L2, &s(), 2, 1),
            Verdict::Duplicate { ack: None }
        );
        assert_eq!(i.on_spooled("a", L2, &s(), 3, 2), Verdict::Deliver);
    }

    #[test]
    fn a_gap_is_refused_and_answered_once_per_link() {
        let mut i = Inbox::default();
        assert_eq!(i.on_spooled("a", L1, &s(), 1, 0), Verdict::Deliver);
        // 2..=2460 went into a dead link; the new link must not continue at 2461.
        assert_eq!(
            i.on_spooled("a", L2, &s(), 2461, 2460),
            Verdict::Gap { nack: Some(1) }
        );
        assert_eq!(
            i.on_spooled("a", L2, &s(), 2462, 2461),
            Verdict::Gap { nack: None }
        );
        assert_eq!(i.marks(&s()), Some((1, 0)));
        assert_eq!(i.on_spooled("a", L2, &s(), 2, 1), Verdict::Deliver);
    }

    #[test]
    fn the_oldest_message_held_by_the_sender_is_accepted_after_its_losses() {
        let mut i = Inbox::default();
        i.restore(s(), "a", 10);
        // The sender expired 11..=19 unsent: its oldest message says it has no predecessor.
        assert_eq!(i.on_spooled("a", L1, &s(), 20, 0), Verdict::Deliver);
        // A stream never seen starts wherever its sender's oldest message is.
        let other = StreamId::from("gw-b.7");
        assert_eq!(
            i.on_spooled("b", L1, &other, 5, 4),
            Verdict::Gap { nack: Some(0) }
        );
        assert_eq!(i.on_spooled("b", L1, &other, 4, 0), Verdict::Deliver);
    }

    #[test]
    fn confirmations_come_at_least_every_ack_every_while_deliveries_run_ahead() {
        let mut i = Inbox::default();
        for seq in 1..=1000 {
            assert_eq!(i.on_spooled("a", L1, &s(), seq, seq - 1), Verdict::Deliver);
        }
        let acks: Vec<u64> = (1..=600)
            .filter_map(|seq| i.recorded(&s(), seq, L1))
            .collect();
        assert_eq!(acks, vec![256, 512]);
        assert_eq!(i.recorded(&s(), 1000, L1), Some(1000));
    }

    #[test]
    fn a_crash_keeps_only_what_was_durable_and_link_up_reconfirms_it() {
        let mut i = Inbox::default();
        for seq in 1..=3 {
            i.on_spooled("a", L1, &s(), seq, seq - 1);
        }
        i.recorded(&s(), 2, L1);
        i.crash();
        assert_eq!(i.marks(&s()), Some((2, 2)));
        assert_eq!(i.link_up("a", L2), vec![(s(), 2)]);
        assert!(i.link_up("b", L2).is_empty());
        assert_eq!(i.on_spooled("a", L2, &s(), 3, 2), Verdict::Deliver);
    }
}
