//! Spool replicas (sans-I/O): with `--spool-replicas 2` every gateway's spool is copied to
//! one other gateway of its region, its **replica**, so that acknowledged `async` / `sync`
//! messages survive the permanent loss of the gateway that took them (its disk gone).
//!
//! - The origin's side lives in the [`Outbox`] (`replicate_to`, `next_to_replicate`,
//!   `replica_acked`): the copies travel as `ReplicaAppend` frames over the cluster link,
//!   and a publish is acknowledged only once the replica confirmed holding it.
//! - [`choose_replica`]: which peer keeps the copies: the current one while its link is up
//!   (copies are not moved needlessly), otherwise the live peer ranked first by rendezvous
//!   hashing of the two gateway ids (so gateways spread their copies over the region).
//! - [`HeldSpools`]: the replica's side: per origin stream, its queues as an [`Outbox`] of
//!   their own, and the **takeover** decision: once the origin has had no link to this
//!   gateway for the takeover delay, the replica sends the origin's queues itself, from the
//!   oldest message the origin had not seen confirmed, under the origin's stream id and
//!   numbers. It never appends to them.
//!
//! Why this needs no consensus: receivers keep a mark per stream and drop anything at or
//! below it (`inbox`), so a second sender of the same stream (the replica while the origin
//! is only cut off, not dead) delivers nothing twice; and a publisher that retries on
//! another gateway is recognised by its message id there (`dedup`). The cost of guessing
//! wrong is resends, never loss or duplicates. What it does not cover: the origin and its
//! replica both lost at once; copies confirmed by a replica that then lost its own disk are
//! single until the origin copies them again (it does on every new link).

use std::collections::HashMap;

use nexus_proto::v1::Spooled;

use super::StreamId;
use super::outbox::{Limits, Outbox, ReplicaGap};

/// How long the origin must be unreachable before its replica sends its spool.
pub const DEFAULT_TAKEOVER_MS: i64 = 3_000;
/// How long a publish waits for the replica's confirmation before it is answered with a
/// timeout (the message stays spooled at the origin and is still delivered).
pub const DEFAULT_REPLICA_TIMEOUT_MS: i64 = 5_000;

/// The peer that should keep `me`'s copies: `current` while it is still live, else the live
/// peer with the highest rendezvous score for `me`.
pub fn choose_replica<'a>(
    me: &str,
    current: Option<&str>,
    live: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let live: Vec<&str> = live.into_iter().filter(|p| *p != me).collect();
    if let Some(c) = current.filter(|c| live.contains(c)) {
        return Some(c.to_owned());
    }
    live.into_iter()
        .max_by_key(|p| (score(me, p), *p))
        .map(str::to_owned)
}

/// FNV-1a over both ids: stable across processes and versions (unlike `DefaultHasher`).
fn score(me: &str, peer: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in me.bytes().chain([0]).chain(peer.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Copies of one origin's spool.
#[derive(Debug)]
pub struct Held {
    /// The gateway whose spool it is.
    pub origin: String,
    /// Its queues; sent only while taking over.
    pub outbox: Outbox,
    /// Since when the origin has had no link here (Unix ms), if it has none.
    unreachable_since: Option<i64>,
    taking_over: bool,
}

impl Held {
    pub fn taking_over(&self) -> bool {
        self.taking_over
    }
}

/// What changed in a [`HeldSpools::tick`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Start sending `stream` (the origin `origin` has been unreachable for the delay).
    TakeOver { stream: StreamId, origin: String },
    /// The origin is back: stop sending, it sends its own spool again.
    HandBack { stream: StreamId, origin: String },
    /// Taken over and everything confirmed: the copies are gone, forget the stream.
    Drained { stream: StreamId, origin: String },
}

/// The spools this gateway keeps copies of, by stream.
#[derive(Debug)]
pub struct HeldSpools {
    takeover_ms: i64,
    limits: Limits,
    spools: HashMap<StreamId, Held>,
}

impl HeldSpools {
    pub fn new(takeover_ms: i64, limits: Limits) -> Self {
        HeldSpools {
            takeover_ms,
            limits,
            spools: HashMap::new(),
        }
    }

    /// Copies found on disk at start: held, not taken over until the origin proves absent
    /// for the delay.
    pub fn restore(
        &mut self,
        stream: StreamId,
        origin: &str,
        queues: HashMap<String, (u64, Vec<Spooled>)>,
    ) {
        let held = self.entry(&stream, origin);
        for (destination, (floor, entries)) in queues {
            held.outbox.restore(&destination, floor, 0, entries);
        }
    }

    fn entry(&mut self, stream: &StreamId, origin: &str) -> &mut Held {
        let limits = self.limits.clone();
        let held = self.spools.entry(stream.clone()).or_insert_with(|| Held {
            origin: origin.to_owned(),
            outbox: Outbox::new(stream.clone(), limits),
            unreachable_since: None,
            taking_over: false,
        });
        held.origin = origin.to_owned();
        held
    }

    /// `origin` sent copies of `destination` of its `stream`: keep them (in memory; the
    /// caller writes them). Returns the mark to confirm once written.
    pub fn hold(
        &mut self,
        stream: &StreamId,
        origin: &str,
        destination: &str,
        floor: u64,
        entries: Vec<Spooled>,
    ) -> Result<u64, ReplicaGap> {
        let held = self.entry(stream, origin);
        // The origin is alive and sending: whatever this gateway sent for it stops.
        held.unreachable_since = None;
        held.taking_over = false;
        held.outbox.hold(destination, floor, entries)
    }

    /// The origin dropped this gateway as its replica.
    pub fn release(&mut self, stream: &StreamId) -> Option<Held> {
        self.spools.remove(stream)
    }

    /// Decides takeovers at `now_ms`; `linked(origin)` says whether the origin has a live
    /// link to this gateway.
    pub fn tick(&mut self, now_ms: i64, linked: impl Fn(&str) -> bool) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut drained = Vec::new();
        for (stream, held) in &mut self.spools {
            if linked(&held.origin) {
                held.unreachable_since = None;
                if held.taking_over {
                    held.taking_over = false;
                    changes.push(Change::HandBack {
                        stream: stream.clone(),
                        origin: held.origin.clone(),
                    });
                }
                continue;
            }
            let since = *held.unreachable_since.get_or_insert(now_ms);
            if !held.taking_over && now_ms - since >= self.takeover_ms {
                held.taking_over = true;
                changes.push(Change::TakeOver {
                    stream: stream.clone(),
                    origin: held.origin.clone(),
                });
            }
            if held.taking_over && held.outbox.is_drained() {
                drained.push(stream.clone());
            }
        }
        for stream in drained {
            if let Some(held) = self.spools.remove(&stream) {
                changes.push(Change::Drained {
                    stream,
                    origin: held.origin,
                });
            }
        }
        changes.sort_by_key(|c| format!("{c:?}"));
        changes
    }

    pub fn get(&self, stream: &str) -> Option<&Held> {
        self.spools.get(&StreamId::from(stream))
    }

    pub fn get_mut(&mut self, stream: &str) -> Option<&mut Held> {
        self.spools.get_mut(&StreamId::from(stream))
    }

    /// Streams being sent by this gateway for their unreachable origin.
    pub fn taken_over(&self) -> Vec<StreamId> {
        let mut v: Vec<StreamId> = self
            .spools
            .iter()
            .filter(|(_, h)| h.taking_over)
            .map(|(s, _)| s.clone())
            .collect();
        v.sort();
        v
    }

    pub fn iter(&self) -> impl Iterator<Item = (&StreamId, &Held)> {
        self.spools.iter()
    }

    /// Messages held for other gateways.
    pub fn len(&self) -> usize {
        self.spools.values().map(|h| h.outbox.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::LinkId;
    use crate::replication::inbox::{Inbox, Verdict};
    use nexus_proto::v1::Forward;

    fn fwd(n: u64) -> Forward {
        Forward {
            subject: "orders.new".into(),
            payload: n.to_be_bytes().to_vec().into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_replica_is_sticky_and_otherwise_spread_by_rendezvous() {
        let peers = ["a2", "a3", "a4"];
        let first = choose_replica("a1", None, peers).unwrap();
        assert!(peers.contains(&first.as_str()));
        // Stable: the same answer every time, and the current one is kept while live.
        assert_eq!(choose_replica("a1", None, peers).unwrap(), first);
        assert_eq!(choose_replica("a1", Some("a4"), peers).unwrap(), "a4");
        // A current replica that left is replaced by a live one; never oneself.
        let next = choose_replica("a1", Some("a9"), ["a1", "a3"]).unwrap();
        assert_eq!(next, "a3");
        assert_eq!(choose_replica("a1", None, ["a1"]), None);
        // Different origins do not all pick the same peer.
        let picks: std::collections::HashSet<String> = (0..20)
            .map(|i| choose_replica(&format!("gw-{i}"), None, peers).unwrap())
            .collect();
        assert!(picks.len() > 1, "{picks:?}");
    }

    #[test]
    fn an_origin_replicates_committed_messages_and_waits_for_the_replica() {
        let mut o = Outbox::new(StreamId::from("a1.1"), Limits::default());
        for n in 1..=3 {
            o.append("b", "r", fwd(n), 0).unwrap();
        }
        o.committed("b", 2);
        // No replica yet: nothing to send.
        assert!(o.next_to_replicate(LinkId(7), 10).is_empty());
        o.replicate_to("a2", LinkId(7));
        let batch = o.next_to_replicate(LinkId(7), 10);
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].destination, "b");
        let seqs: Vec<u64> = batch[0].entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1, 2], "only committed messages are copied");
        assert!(o.next_to_replicate(LinkId(7), 10).is_empty());
        // Another link gets nothing; the current one gets the next commit.
        assert!(o.next_to_replicate(LinkId(8), 10).is_empty());
        o.committed("b", 3);
        assert_eq!(o.next_to_replicate(LinkId(7), 10)[0].entries[0].seq, 3);
        // Confirmations count only from the current replica, and never beyond what exists.
        assert_eq!(o.replica_acked("a3", "b", 3), None);
        assert_eq!(o.replica_acked("a2", "b", 99), Some(3));
        assert_eq!(o.replica_held("b"), 3);
        // The region confirms 1..=2: the replica is told the new floor, with no entries.
        assert_eq!(o.next_to_send("b", LinkId(1), 10).len(), 3);
        o.ack("b", 2);
        let trim = o.next_to_replicate(LinkId(7), 10);
        assert_eq!(
            trim,
            vec![crate::replication::outbox::ToReplicate {
                destination: "b".into(),
                floor: 2,
                entries: vec![]
            }]
        );
        // A new link to the same replica starts again from the oldest unconfirmed message and
        // keeps what it held; a new replica holds nothing.
        o.replicate_to("a2", LinkId(9));
        assert_eq!(o.next_to_replicate(LinkId(9), 10)[0].entries[0].seq, 3);
        assert_eq!(o.replica_held("b"), 3);
        o.replicate_to("a3", LinkId(10));
        assert_eq!(o.replica_held("b"), 2);
        assert_eq!(o.next_to_replicate(LinkId(10), 10)[0].entries[0].seq, 3);
    }

    /// The replica takes over only after the delay, hands back when the origin returns, and
    /// forgets a drained spool.
    #[test]
    fn takeover_waits_for_the_delay_and_hands_back() {
        let mut held = HeldSpools::new(1000, Limits::default());
        let stream = StreamId::from("a1.1");
        let mut origin = Outbox::new(stream.clone(), Limits::default());
        let (s, _) = origin.append("b", "r", fwd(1), 0).unwrap();
        origin.committed("b", 1);
        assert_eq!(held.hold(&stream, "a1", "b", 0, vec![(*s).clone()]), Ok(1));
        assert!(held.tick(0, |_| true).is_empty());
        assert!(held.tick(100, |_| false).is_empty());
        assert!(held.tick(1099, |_| false).is_empty());
        assert_eq!(
            held.tick(1100, |_| false),
            vec![Change::TakeOver {
                stream: stream.clone(),
                origin: "a1".into()
            }]
        );
        assert_eq!(held.taken_over(), vec![stream.clone()]);
        assert_eq!(
            held.tick(1200, |_| true),
            vec![Change::HandBack {
                stream: stream.clone(),
                origin: "a1".into()
            }]
        );
        // Unreachable again: a fresh delay.
        assert!(held.tick(1300, |_| false).is_empty());
        assert_eq!(held.tick(2300, |_| false).len(), 1);
        // Everything confirmed to the replica: drained and forgotten.
        let h = held.get_mut("a1.1").unwrap();
        let sent = h.outbox.next_to_send("b", LinkId(3), 10);
        assert_eq!(sent.len(), 1);
        h.outbox.ack("b", 1);
        assert_eq!(
            held.tick(2400, |_| false),
            vec![Change::Drained {
                stream: stream.clone(),
                origin: "a1".into()
            }]
        );
        assert!(held.get("a1.1").is_none());
    }

    #[test]
    fn a_replica_refuses_copies_that_skip_a_message() {
        let mut held = HeldSpools::new(1000, Limits::default());
        let stream = StreamId::from("a1.1");
        let copy = |seq, prev_seq| Spooled {
            seq,
            prev_seq,
            stream: "a1.1".into(),
            ..Default::default()
        };
        assert_eq!(held.hold(&stream, "a1", "b", 0, vec![copy(1, 0)]), Ok(1));
        // 3 follows 2, which is not held: refused, nothing taken.
        assert_eq!(
            held.hold(&stream, "a1", "b", 0, vec![copy(3, 2)]),
            Err(ReplicaGap { held: 1 })
        );
        // Resent from the start: what is held is skipped, the rest taken.
        assert_eq!(
            held.hold(
                &stream,
                "a1",
                "b",
                0,
                vec![copy(1, 0), copy(2, 1), copy(3, 2)]
            ),
            Ok(3)
        );
        // A floor confirms what precedes: a copy after it continues.
        assert_eq!(held.hold(&stream, "a1", "b", 5, vec![copy(7, 5)]), Ok(7));
        assert_eq!(
            held.hold(&stream, "a1", "b", 5, vec![copy(9, 8)]),
            Err(ReplicaGap { held: 7 })
        );
        assert_eq!(held.get("a1.1").unwrap().outbox.len(), 1);
    }

    /// A deterministic model: an origin copies its stream to its replica over links that
    /// are cut and replaced, is cut off from it at random moments (so the replica takes over
    /// while the origin still sends), and both send the stream to one receiver over links
    /// that are replaced too. Over 3000 random schedules the receiver delivers every message
    /// at most once and in order, and everything published is delivered in the end.
    #[test]
    fn two_senders_of_one_stream_deliver_each_message_once_and_in_order() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let (mut deaths, mut by_replica) = (0, 0);
        for schedule in 0..3000 {
            let stream = StreamId::from("a1.1");
            let mut origin = Outbox::new(stream.clone(), Limits::default());
            let mut held = HeldSpools::new(0, Limits::default());
            let mut inbox = Inbox::default();
            let mut delivered = Vec::new();
            let total = 1 + next() % 40;
            let mut published = 0;
            // Links: origin->receiver, replica->receiver, origin->replica.
            let (mut lo, mut lr, mut lc) = (1u64, 1000u64, 2000u64);
            let mut cut = false;
            let mut dead = false;
            origin.replicate_to("a2", LinkId(lc));
            let mut from_replica = 0;
            let mut deliver = |inbox: &mut Inbox, link: u64, e: &Spooled, out: &mut Vec<u64>| {
                if let Verdict::Deliver =
                    inbox.on_spooled("b", LinkId(link), &stream, e.seq, e.prev_seq)
                {
                    out.push(e.seq);
                    if link >= 1000 {
                        from_replica += 1;
                    }
                }
            };
            for step in 0..600 {
                let quiet = step >= 450; // the end: no more faults, let everything settle
                match next() % 9 {
                    0 | 1 if published < total && !dead => {
                        let (s, _) = origin.append("b", "r", fwd(published), 0).unwrap();
                        origin.committed("b", s.seq);
                        published += 1;
                    }
                    // Copies travel to the replica.
                    2 if !cut && !dead => {
                        for batch in origin.next_to_replicate(LinkId(lc), 1 + next() as usize % 4) {
                            match held.hold(
                                &stream,
                                "a1",
                                &batch.destination,
                                batch.floor,
                                batch.entries,
                            ) {
                                Ok(up_to) => {
                                    origin.replica_acked("a2", &batch.destination, up_to);
                                }
                                Err(_) => origin.replica_gap("a2", &batch.destination),
                            }
                        }
                    }
                    3 if !dead => {
                        for e in origin.next_to_send("b", LinkId(lo), 1 + next() as usize % 3) {
                            deliver(&mut inbox, lo, &e, &mut delivered);
                        }
                    }
                    4 => {
                        held.tick(0, |_| !cut && !dead);
                        if let Some(h) = held.get_mut("a1.1").filter(|h| h.taking_over()) {
                            for e in h
                                .outbox
                                .next_to_send("b", LinkId(lr), 1 + next() as usize % 3)
                            {
                                deliver(&mut inbox, lr, &e, &mut delivered);
                            }
                        }
                    }
                    5 if !quiet => match next() % 3 {
                        0 => lo += 1,
                        1 => lr += 1,
                        _ => {
                            lc += 1;
                            origin.replicate_to("a2", LinkId(lc));
                        }
                    },
                    6 if !quiet => {
                        cut = !cut;
                        if !cut {
                            lc += 1;
                            origin.replicate_to("a2", LinkId(lc));
                        }
                    }
                    // The origin dies for good, but only once the replica holds everything it
                    // acknowledged (what --spool-replicas promises).
                    7 if !quiet && !cut && next() % 20 == 0 => {
                        if origin.replica_held("b") >= published {
                            dead = true;
                        }
                    }
                    // Confirmations reach whoever sends.
                    _ => {
                        if let Some(m) = inbox.to_record(&stream) {
                            inbox.recorded(&stream, m, LinkId(lo));
                            origin.ack("b", m);
                            if let Some(h) = held.get_mut("a1.1") {
                                h.outbox.ack("b", m);
                            }
                        }
                    }
                }
                // At the end, the survivors keep sending until all is delivered.
                if quiet {
                    cut = false;
                    if !dead {
                        for e in origin.next_to_send("b", LinkId(lo), 64) {
                            deliver(&mut inbox, lo, &e, &mut delivered);
                        }
                    }
                }
            }
            if dead {
                deaths += 1;
                held.tick(0, |_| false);
                if let Some(h) = held.get_mut("a1.1") {
                    for e in h.outbox.next_to_send("b", LinkId(lr + 1), usize::MAX) {
                        deliver(&mut inbox, lr + 1, &e, &mut delivered);
                    }
                }
            }
            by_replica += from_replica;
            let mut sorted = delivered.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(
                sorted.len(),
                delivered.len(),
                "schedule {schedule}: delivered twice: {delivered:?}"
            );
            assert_eq!(sorted, delivered, "schedule {schedule}: out of order");
            let acknowledged = if dead {
                origin.replica_held("b")
            } else {
                published
            };
            assert!(
                delivered.len() as u64 >= acknowledged,
                "schedule {schedule}: {} of {acknowledged} acknowledged messages delivered (dead: {dead}): {delivered:?}",
                delivered.len()
            );
        }
        // The schedules reach what they are for.
        assert!(
            deaths > 100 && by_replica > 1000,
            "{deaths} deaths, {by_replica} delivered by the replica"
        );
    }
}
