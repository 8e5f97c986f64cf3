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
//!
//! In a regional cluster the gateway that receives a stream (its home in this region) relays
//! each message to the other gateways that want it. What is written to disk, and so confirmed,
//! then also waits until every such gateway confirmed its relay (or is gone): otherwise a home
//! that died with a relay in flight would, after a restart, take the message for a resend and
//! never relay it again, and the origin would never send it again, so that gateway's
//! subscribers would miss it for good.
//!
//! The shell's loop: on [`Verdict::Deliver`] it delivers, notes the relays
//! ([`Inbox::relayed`]) and writes [`Inbox::to_record`] when there is something; relay
//! confirmations and lost peers may give more to write; once written, [`Inbox::recorded`] says
//! what to confirm to the origin.

use std::collections::{HashMap, VecDeque};

use super::StreamId;
use crate::link::LinkId;

/// Confirm at least every this many recorded messages while a stream flows, so the sender's
/// spool drains even when deliveries always run ahead of the disk.
pub const ACK_EVERY: u64 = 256;

#[derive(Debug, Clone)]
struct Mark {
    /// The region the stream comes from, and the gateway and link that last sent it here
    /// (where its confirmations go).
    region: String,
    sender: Option<(String, LinkId)>,
    /// Delivered in order through here.
    delivered: u64,
    /// Recorded on disk through here (never above `delivered`).
    durable: u64,
    /// The highest mark handed to the shell to write.
    written: u64,
    /// The last confirmation sent, and on which link.
    acked: Option<(LinkId, u64)>,
    /// The last gap answered, and on which link.
    nacked: Option<(LinkId, u64)>,
    /// Relays not yet confirmed: (seq, gateways it went to that have not confirmed it), in
    /// `seq` order.
    relays: VecDeque<(u64, Vec<String>)>,
    /// Peers whose relays are held back, from the oldest one not sent on their current link:
    /// they were cut off (or absent) and get what they owe again, in order, from the resends.
    blocked: HashMap<String, u64>,
}

impl Mark {
    fn new(region: &str) -> Self {
        Mark {
            region: region.to_owned(),
            sender: None,
            delivered: 0,
            durable: 0,
            written: 0,
            acked: None,
            nacked: None,
            relays: VecDeque::new(),
            blocked: HashMap::new(),
        }
    }

    /// Delivered here and relayed to every peer that was to get it.
    fn settled(&self) -> u64 {
        match self.relays.front() {
            Some((seq, _)) => self.delivered.min(seq.saturating_sub(1)),
            None => self.delivered,
        }
    }

    /// How far a confirmation may go: what is on disk (which is only ever what was settled).
    fn confirmable(&self) -> u64 {
        self.durable
    }

    fn drop_confirmed_relays(&mut self) {
        while self
            .relays
            .front()
            .is_some_and(|(_, peers)| peers.is_empty())
        {
            self.relays.pop_front();
        }
    }

    /// A confirmation to send now, if one is due (`force`: whatever is confirmable and newer
    /// than the last one).
    fn due(&mut self, link: LinkId, force: bool) -> Option<u64> {
        let up_to = self.confirmable();
        let last = self.acked.map_or(0, |(_, a)| a);
        // Due when it covers everything settled so far (the newest message when no relay is
        // outstanding), or every ACK_EVERY while more keeps arriving.
        let due = up_to > last && (force || up_to >= self.settled() || up_to - last >= ACK_EVERY);
        if due {
            self.acked = Some((link, up_to));
        }
        due.then_some(up_to)
    }
}

/// How a relay of a spooled message goes to a cluster peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayTo {
    /// Over the cluster link, now; the peer confirms it.
    Now,
    /// Owed: the peer is cut off within the grace period, or older relays of the stream are
    /// held back for it. It goes out (or into the held queue) when the stream's sender is
    /// asked to send again from the oldest owed one and the resends arrive, in order.
    Owed,
    /// A held relay: written to this gateway's own spool queue for the peer, which sends it
    /// when the peer is back; it counts as confirmed once that write is durable, so the
    /// origin's confirmations (and `sync` publishes) do not wait for the peer.
    Held,
}

/// A cluster peer cut off past the grace period while the control plane still lists it, or
/// back from that with held relays it has not confirmed yet.
#[derive(Debug, Default, Clone, Copy)]
struct HeldPeer {
    /// Still cut off.
    away: bool,
    /// Position, in this gateway's own spool queue for the peer, of the newest held relay:
    /// until the peer confirmed that far, its relays keep going through the queue, so none
    /// overtakes a held one.
    last: u64,
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
    /// Cluster peers whose relays go to the held queue (docs/cluster.md §4).
    held: HashMap<String, HeldPeer>,
}

impl Inbox {
    /// A stream's mark as found on disk at start.
    pub fn restore(&mut self, stream: StreamId, region: &str, seq: u64) {
        let mut mark = Mark::new(region);
        mark.delivered = seq;
        mark.durable = seq;
        mark.written = seq;
        self.streams.insert(stream, mark);
    }

    /// The region `stream` comes from.
    pub fn region(&self, stream: &StreamId) -> Option<String> {
        self.streams.get(stream).map(|m| m.region.clone())
    }

    /// The gateway and link that last sent `stream` here.
    pub fn sender(&self, stream: &StreamId) -> Option<(String, LinkId)> {
        self.streams.get(stream).and_then(|m| m.sender.clone())
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
        self.on_spooled_from(region, "", link, stream, seq, prev)
    }

    /// [`Inbox::on_spooled`], knowing which gateway sent it.
    pub fn on_spooled_from(
        &mut self,
        region: &str,
        gateway: &str,
        link: LinkId,
        stream: &StreamId,
        seq: u64,
        prev: u64,
    ) -> Verdict {
        let mark = self
            .streams
            .entry(stream.clone())
            .or_insert_with(|| Mark::new(region));
        if mark.region != region {
            mark.region = region.to_owned();
        }
        if mark
            .sender
            .as_ref()
            .is_none_or(|(g, l)| g != gateway || *l != link)
        {
            mark.sender = Some((gateway.to_owned(), link));
        }
        if seq <= mark.delivered {
            let up_to = mark.confirmable();
            let due = up_to > 0 && mark.acked != Some((link, up_to));
            if due {
                mark.acked = Some((link, up_to));
            }
            return Verdict::Duplicate {
                ack: due.then_some(up_to),
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

    /// Message `seq` of `stream` was relayed to the cluster peers `peers`; it is written (and
    /// so confirmed) only once each of them confirmed it ([`Inbox::relay_confirmed`]) or is
    /// gone.
    pub fn relayed(&mut self, stream: &StreamId, seq: u64, peers: Vec<String>) {
        if peers.is_empty() {
            return;
        }
        if let Some(mark) = self.streams.get_mut(stream) {
            mark.relays.push_back((seq, peers));
        }
    }

    /// The mark to write to disk for `stream` now, if it moved: everything delivered here and
    /// relayed to every peer that was to get it.
    pub fn to_record(&mut self, stream: &StreamId) -> Option<u64> {
        let mark = self.streams.get_mut(stream)?;
        let settled = mark.settled();
        (settled > mark.written).then(|| {
            mark.written = settled;
            settled
        })
    }

    /// `stream` is recorded on disk through `seq`; returns the confirmation to send on `link`,
    /// if one is due (the newest delivered message, or every [`ACK_EVERY`]).
    pub fn recorded(&mut self, stream: &StreamId, seq: u64, link: LinkId) -> Option<u64> {
        let mark = self.streams.get_mut(stream)?;
        mark.durable = mark.durable.max(seq.min(mark.delivered));
        mark.due(link, false)
    }

    /// Cluster peer `peer` confirmed the relays of `stream` through `up_to`; returns the mark
    /// to write now, if that moved it.
    pub fn relay_confirmed(&mut self, stream: &StreamId, peer: &str, up_to: u64) -> Option<u64> {
        {
            let mark = self.streams.get_mut(stream)?;
            for (seq, peers) in mark.relays.iter_mut() {
                if *seq > up_to {
                    break;
                }
                peers.retain(|p| p != peer);
            }
            mark.drop_confirmed_relays();
        }
        self.to_record(stream)
    }

    /// The cluster peers still owing a confirmation of message `seq` of `stream` (relayed to
    /// them, or owed while their link was down).
    pub fn owed(&self, stream: &StreamId, seq: u64) -> Vec<String> {
        self.streams
            .get(stream)
            .and_then(|m| m.relays.iter().find(|(s, _)| *s == seq))
            .map(|(_, peers)| peers.clone())
            .unwrap_or_default()
    }

    /// How message `seq` of `stream`, just delivered, goes to `peer` ([`RelayTo`]): owed when
    /// the peer is unlinked within the grace period (`linked` false) or its older relays of
    /// the stream are held back (it must get them first); held while the peer is cut off
    /// past the grace, or back with held relays not confirmed through `queue_done` (how far
    /// this gateway's own queue for it is done with; asked only then, so the usual relay
    /// reads no queue); else now.
    pub fn relay_to(
        &mut self,
        stream: &StreamId,
        peer: &str,
        seq: u64,
        linked: bool,
        queue_done: impl FnOnce() -> u64,
    ) -> RelayTo {
        let held = self.held.get(peer).copied();
        let away = held.is_some_and(|h| h.away);
        let Some(mark) = self.streams.get_mut(stream) else {
            return if linked { RelayTo::Now } else { RelayTo::Owed };
        };
        if mark.blocked.contains_key(peer) || (!linked && !away) {
            let from = mark.blocked.entry(peer.to_owned()).or_insert(seq);
            *from = (*from).min(seq);
            return RelayTo::Owed;
        }
        match held {
            Some(h) if h.away || h.last > queue_done() => RelayTo::Held,
            Some(_) => {
                // Back, and every held relay confirmed: the link again from here.
                self.held.remove(peer);
                RelayTo::Now
            }
            None => RelayTo::Now,
        }
    }

    /// Sending relay `seq` of `stream` to `peer` failed (its link ended): it is owed, and
    /// held back from here.
    pub fn relay_failed(&mut self, stream: &StreamId, peer: &str, seq: u64) {
        if let Some(mark) = self.streams.get_mut(stream) {
            let from = mark.blocked.entry(peer.to_owned()).or_insert(seq);
            *from = (*from).min(seq);
        }
    }

    /// `peer` passed the grace period cut off, and the control plane still lists it: from now
    /// on its relays are held ([`RelayTo::Held`]), the owed ones as their resends arrive.
    pub fn hold(&mut self, peer: &str) {
        self.held.entry(peer.to_owned()).or_default().away = true;
    }

    /// Whether `peer` is cut off past the grace period (its relays are held).
    pub fn is_held(&self, peer: &str) -> bool {
        self.held.get(peer).is_some_and(|h| h.away)
    }

    /// `peer` is linked again: relays go over the link again once it confirmed the held ones.
    pub fn peer_linked(&mut self, peer: &str) {
        if let Some(h) = self.held.get_mut(peer) {
            h.away = false;
        }
    }

    /// A held relay for `peer` was written at position `at` of this gateway's queue for it.
    pub fn held_at(&mut self, peer: &str, at: u64) {
        let h = self.held.entry(peer.to_owned()).or_default();
        h.last = h.last.max(at);
    }

    /// `peer`'s link went down: every relay of every stream it has not confirmed is held
    /// back from the oldest, to be sent again from the resends once it returns.
    pub fn peer_cut(&mut self, peer: &str) {
        for mark in self.streams.values_mut() {
            if let Some(first) = mark
                .relays
                .iter()
                .find(|(_, peers)| peers.iter().any(|p| p == peer))
                .map(|(seq, _)| *seq)
            {
                let from = mark.blocked.entry(peer.to_owned()).or_insert(first);
                *from = (*from).min(first);
            }
        }
    }

    /// Message `seq` (after `prev`, the newest message its sender still holds before it) of
    /// `stream` arrived again (a resend): the peers to relay it to now, and how (over the
    /// link, or into the held queue), among those held back for whom it is the oldest relay
    /// they still owe, `linked` or held. Each moves its hold to its next owed message, and is
    /// free again past the last one.
    pub fn resend_to(
        &mut self,
        stream: &StreamId,
        seq: u64,
        prev: u64,
        linked: impl Fn(&str) -> bool,
    ) -> Vec<(String, RelayTo)> {
        let Some(mark) = self.streams.get_mut(stream) else {
            return Vec::new();
        };
        let owed: Vec<String> = mark
            .relays
            .iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, peers)| peers.clone())
            .unwrap_or_default();
        let mut out = Vec::new();
        for peer in owed {
            let held = self.held.get(&peer);
            let away = held.is_some_and(|h| h.away);
            let Some(&from) = mark.blocked.get(&peer) else {
                continue;
            };
            if !(linked(&peer) || away) {
                continue;
            }
            // Only the oldest relay the peer still owes from its hold goes now: resends of an
            // earlier pass (a link that changed meanwhile) can arrive ahead of the ones
            // asked for, and relaying a newer one first would skip the older for good.
            // Unless the sender holds none of the older ones any more (`prev` is the newest
            // it holds before this one): another home of this region confirmed them, having
            // relayed them, so they will not come again and are no longer owed.
            let oldest = mark
                .relays
                .iter()
                .find(|(s, peers)| *s >= from && peers.contains(&peer))
                .map_or(seq, |(s, _)| *s);
            if oldest > seq || (oldest < seq && prev >= oldest) {
                continue;
            }
            for (s, peers) in mark.relays.iter_mut() {
                if *s >= oldest && *s < seq {
                    peers.retain(|p| *p != peer);
                }
            }
            mark.drop_confirmed_relays();
            let next = mark
                .relays
                .iter()
                .find(|(s, peers)| *s > seq && peers.contains(&peer))
                .map(|(s, _)| *s);
            match next {
                Some(n) => {
                    mark.blocked.insert(peer.clone(), n);
                }
                None => {
                    mark.blocked.remove(&peer);
                }
            }
            // A peer with held relays gets this one held too, behind them.
            let how = if held.is_some() {
                RelayTo::Held
            } else {
                RelayTo::Now
            };
            out.push((peer, how));
        }
        out
    }

    /// Streams whose relays to `peer` are held back, each with the oldest held `seq` and
    /// the gateway sending the stream here: once `peer` is back, that gateway is asked to
    /// send again from there.
    pub fn owing(&self, peer: &str) -> Vec<(StreamId, u64, String)> {
        let mut out: Vec<_> = self
            .streams
            .iter()
            .filter_map(|(stream, m)| {
                let first = *m.blocked.get(peer)?;
                let (sender, _) = m.sender.clone()?;
                Some((stream.clone(), first, sender))
            })
            .collect();
        out.sort();
        out
    }

    /// How many relays `peer` has not confirmed, over all streams.
    pub fn owed_to(&self, peer: &str) -> usize {
        self.streams
            .values()
            .flat_map(|m| m.relays.iter())
            .filter(|(_, peers)| peers.iter().any(|p| p == peer))
            .count()
    }

    /// Cluster peer `peer` is gone: no relay waits for it any more. Returns the marks to
    /// write now, per stream.
    pub fn peer_gone(&mut self, peer: &str) -> Vec<(StreamId, u64)> {
        let mut touched = Vec::new();
        for (stream, mark) in &mut self.streams {
            if mark.relays.is_empty() {
                continue;
            }
            for (_, peers) in mark.relays.iter_mut() {
                peers.retain(|p| p != peer);
            }
            mark.blocked.remove(peer);
            mark.drop_confirmed_relays();
            touched.push(stream.clone());
        }
        self.held.remove(peer);
        touched.sort();
        touched
            .into_iter()
            .filter_map(|s| self.to_record(&s).map(|m| (s, m)))
            .collect()
    }

    /// Confirmations to send to `region` on a new `link`: every stream from it with
    /// something durable.
    pub fn link_up(&mut self, region: &str, link: LinkId) -> Vec<(StreamId, u64)> {
        let mut out = Vec::new();
        for (stream, mark) in &mut self.streams {
            let up_to = mark.confirmable();
            if mark.region == region && up_to > 0 {
                mark.acked = Some((link, up_to));
                out.push((stream.clone(), up_to));
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
            mark.written = mark.durable;
            mark.acked = None;
            mark.nacked = None;
            mark.relays.clear();
            mark.blocked.clear();
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
    fn relays_owed_to_a_cut_peer_are_held_back_and_resent_in_order() {
        let mut i = Inbox::default();
        for seq in 1..=4 {
            assert_eq!(
                i.on_spooled_from("a", "a1", L1, &s(), seq, seq - 1),
                Verdict::Deliver
            );
            assert_eq!(i.relay_to(&s(), "b2", seq, true, || 0), RelayTo::Now);
            i.relayed(&s(), seq, vec!["b2".into()]);
        }
        assert_eq!(i.relay_confirmed(&s(), "b2", 2), Some(2));
        // b2's link goes down with 3 and 4 unconfirmed: held back from 3; a new message is
        // held too, even once b2 is linked again, until the older ones went out.
        i.peer_cut("b2");
        assert_eq!(i.owing("b2"), vec![(s(), 3, "a1".to_string())]);
        assert_eq!(
            i.on_spooled_from("a", "a1", L1, &s(), 5, 4),
            Verdict::Deliver
        );
        assert_eq!(i.relay_to(&s(), "b2", 5, true, || 0), RelayTo::Owed);
        i.relayed(&s(), 5, vec!["b2".into()]);
        assert_eq!(i.owed_to("b2"), 3);
        assert!(i.owing("b3").is_empty());
        assert_eq!(i.to_record(&s()), None, "nothing past 2 is settled");
        // The resends from 3: each goes to b2 in order, then b2 is free again. A resend of 4
        // from an earlier pass, ahead of 3, is not relayed (3 would be skipped for good).
        let linked = |_: &str| true;
        assert!(i.resend_to(&s(), 4, 3, linked).is_empty(), "3 first");
        assert!(
            i.resend_to(&s(), 2, 1, linked).is_empty(),
            "confirmed already"
        );
        assert_eq!(
            i.resend_to(&s(), 3, 2, linked),
            vec![("b2".to_string(), RelayTo::Now)]
        );
        assert_eq!(i.owing("b2"), vec![(s(), 4, "a1".to_string())]);
        assert!(
            i.resend_to(&s(), 3, 2, linked).is_empty(),
            "sent once per resend pass"
        );
        assert_eq!(
            i.resend_to(&s(), 4, 3, linked),
            vec![("b2".to_string(), RelayTo::Now)]
        );
        assert_eq!(
            i.resend_to(&s(), 5, 4, linked),
            vec![("b2".to_string(), RelayTo::Now)]
        );
        assert!(i.owing("b2").is_empty());
        assert_eq!(
            i.on_spooled_from("a", "a1", L1, &s(), 6, 5),
            Verdict::Deliver
        );
        assert_eq!(i.relay_to(&s(), "b2", 6, true, || 0), RelayTo::Now);
        i.relayed(&s(), 6, vec!["b2".into()]);
        assert_eq!(i.relay_confirmed(&s(), "b2", 5), Some(5));
    }

    #[test]
    fn a_peer_cut_off_past_the_grace_gets_its_relays_held_in_order_and_back_over_the_link_after() {
        let mut i = Inbox::default();
        let deliver = |i: &mut Inbox, seq: u64| {
            assert_eq!(
                i.on_spooled_from("a", "a1", L1, &s(), seq, seq - 1),
                Verdict::Deliver
            );
        };
        for seq in 1..=3 {
            deliver(&mut i, seq);
            assert_eq!(i.relay_to(&s(), "b2", seq, true, || 0), RelayTo::Now);
            i.relayed(&s(), seq, vec!["b2".into()]);
        }
        assert_eq!(i.relay_confirmed(&s(), "b2", 1), Some(1));
        // Cut with 2 and 3 unconfirmed; 4 arrives within the grace: owed.
        i.peer_cut("b2");
        deliver(&mut i, 4);
        assert_eq!(i.relay_to(&s(), "b2", 4, false, || 0), RelayTo::Owed);
        i.relayed(&s(), 4, vec!["b2".into()]);
        // Past the grace, still listed: held. 5 waits behind the owed ones; the resends from
        // 2 go to the held queue in order (the shell confirms each once written).
        i.hold("b2");
        assert!(i.is_held("b2"));
        deliver(&mut i, 5);
        assert_eq!(i.relay_to(&s(), "b2", 5, false, || 0), RelayTo::Owed);
        i.relayed(&s(), 5, vec!["b2".into()]);
        let unlinked = |_: &str| false;
        for (seq, at) in (2..=5).zip(1..) {
            assert_eq!(
                i.resend_to(&s(), seq, seq - 1, unlinked),
                vec![("b2".to_string(), RelayTo::Held)]
            );
            i.held_at("b2", at);
            // Held relays count as settled once written.
            assert_eq!(i.relay_confirmed(&s(), "b2", seq), Some(seq));
        }
        // 6 goes straight to the held queue, at position 5.
        deliver(&mut i, 6);
        assert_eq!(i.relay_to(&s(), "b2", 6, false, || 0), RelayTo::Held);
        i.held_at("b2", 5);
        // Back: held until it confirmed the queue through 5, then over the link.
        i.peer_linked("b2");
        assert!(!i.is_held("b2"));
        deliver(&mut i, 7);
        assert_eq!(i.relay_to(&s(), "b2", 7, true, || 4), RelayTo::Held);
        i.held_at("b2", 6);
        deliver(&mut i, 8);
        assert_eq!(i.relay_to(&s(), "b2", 8, true, || 5), RelayTo::Held);
        deliver(&mut i, 9);
        assert_eq!(i.relay_to(&s(), "b2", 9, true, || 6), RelayTo::Now);
        assert_eq!(i.relay_to(&s(), "b2", 10, true, || 0), RelayTo::Now);
        // A peer the control plane dropped is gone: nothing is held for it any more.
        i.hold("b3");
        i.peer_gone("b3");
        assert!(!i.is_held("b3"));
    }

    #[test]
    fn owed_relays_the_sender_no_longer_holds_are_skipped_and_no_longer_owed() {
        let mut i = Inbox::default();
        for seq in 1..=4 {
            assert_eq!(
                i.on_spooled_from("a", "a1", L1, &s(), seq, seq - 1),
                Verdict::Deliver
            );
            assert_eq!(i.relay_to(&s(), "b2", seq, false, || 0), RelayTo::Owed);
            i.relayed(&s(), seq, vec!["b2".into()]);
        }
        // Another home confirmed 1 and 2 to the origin meanwhile: the resend pass starts at 3
        // with nothing older held (prev 0). 3 goes, 1 and 2 are no longer owed.
        let linked = |_: &str| true;
        assert_eq!(
            i.resend_to(&s(), 3, 0, linked),
            vec![("b2".to_string(), RelayTo::Now)]
        );
        assert_eq!(i.owed_to("b2"), 2, "3 and 4");
        assert_eq!(
            i.to_record(&s()),
            Some(2),
            "1 and 2 settle; 3 is not confirmed yet"
        );
        assert_eq!(i.relay_confirmed(&s(), "b2", 3), Some(3));
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
    fn what_is_written_waits_for_the_relays_to_cluster_peers() {
        let mut i = Inbox::default();
        for seq in 1..=3 {
            assert_eq!(i.on_spooled("a", L1, &s(), seq, seq - 1), Verdict::Deliver);
            i.relayed(&s(), seq, vec!["b2".into(), "b3".into()]);
        }
        assert_eq!(i.to_record(&s()), None, "b2 and b3 have not confirmed");
        assert_eq!(i.relay_confirmed(&s(), "b2", 3), None, "b3 has not");
        assert_eq!(i.relay_confirmed(&s(), "b3", 2), Some(2));
        assert_eq!(i.recorded(&s(), 2, L1), Some(2));
        // b3 dies: nothing waits for it.
        assert_eq!(i.peer_gone("b3"), vec![(s(), 3)]);
        assert_eq!(i.recorded(&s(), 3, L1), Some(3));
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
