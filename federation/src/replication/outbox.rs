//! The sending side of replication (sans-I/O): the spool's queue of unconfirmed messages per
//! receiving region, numbered by `seq`, with the byte and age limits and their overflow
//! policy, and a send cursor bound to one link.
//!
//! A message moves through four marks, per region: `append` numbers it; `committed` says it
//! is on disk (only then may it be sent, and only then is its publisher acknowledged);
//! [`Outbox::next_to_send`] hands it to a link; `ack` (the region recorded everything up to a
//! `seq`) deletes it. The cursor that remembers what went out belongs to one link
//! ([`LinkId`]): asking for messages on any other link starts again from the oldest
//! unconfirmed one, so a new link can never continue where a dead one stopped (the bug that
//! lost acknowledged messages when the pump used a new link before its `Up` was handled).
//! Time is passed in as Unix milliseconds.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use nexus_proto::v1::{Forward, RelayOf, Spooled};
use prost::Message;

use super::StreamId;
use crate::link::LinkId;

/// What happens when a new message would exceed the spool's byte limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Refuse the publish with an error (the default: nothing is lost silently).
    #[default]
    Reject,
    /// Delete the region's oldest messages to make room, counting and logging them.
    DropOldest,
}

impl std::str::FromStr for Overflow {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "reject" => Ok(Overflow::Reject),
            "drop_oldest" => Ok(Overflow::DropOldest),
            other => Err(format!(
                "unknown spool overflow policy {other:?} (expected reject or drop_oldest)"
            )),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Bytes of spooled messages across all regions.
    pub max_bytes: u64,
    /// Messages older than this are deleted unsent and counted as expired.
    pub max_age_ms: i64,
    pub overflow: Overflow,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 1 << 30,
            max_age_ms: 24 * 3600 * 1000,
            overflow: Overflow::Reject,
        }
    }
}

/// Why a message could not be spooled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the replication spool is full ({used} of {max} bytes; a {size}-byte message for region {region} does not fit; overflow policy reject)"
)]
pub struct SpoolFull {
    pub region: String,
    pub used: u64,
    pub max: u64,
    pub size: u64,
}

/// Gives a message kept in the spool bytes of its own. Messages are decoded without copying,
/// so a payload or header is a view into the whole buffer its frame was read into (a gRPC
/// read buffer, a link's 64 KiB read); a spooled message may wait for hours, and pinning that
/// buffer would cost up to hundreds of times what the spool's byte limit counts for it (the
/// trace store did just that: 2.2 GB in a minute). One copy per spooled message, on a path
/// that writes it to disk anyway.
fn detach(f: &mut Forward) {
    f.payload = bytes::Bytes::copy_from_slice(&f.payload);
    for h in &mut f.headers {
        h.key = nexus_proto::ByteString::from(&*h.key);
        h.value = nexus_proto::ByteString::from(&*h.value);
    }
}

/// Bytes a spooled message is charged: its encoded size.
pub fn charge(s: &Spooled) -> u64 {
    s.encoded_len() as u64
}

/// Which link the cursor belongs to, and the last `seq` handed to it.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    link: LinkId,
    sent: u64,
}

#[derive(Debug, Default)]
struct Queue {
    /// Unconfirmed messages in `seq` order (a message whose write failed leaves a hole).
    entries: VecDeque<Arc<Spooled>>,
    next_seq: u64,
    /// Everything up to here was confirmed by the region.
    acked: u64,
    /// Everything up to here is gone from the queue (confirmed, or deleted by a limit); a
    /// new cursor starts here.
    floor: u64,
    /// Everything up to here is on disk and may be sent.
    committed: u64,
    /// The highest `seq` ever handed to a link; confirmations beyond it are refused.
    max_sent: u64,
    cursor: Option<Cursor>,
    bytes: u64,
    /// Replication to the origin's replica (`--spool-replicas 2`): the last `seq` handed to
    /// the replica's current link, the floor last told to it (none yet on this link), and how
    /// far the replica confirmed holding this queue.
    rep_sent: u64,
    rep_floor_sent: Option<u64>,
    rep_held: u64,
}

impl Queue {
    /// The cursor for `link`, started afresh (at the oldest unconfirmed message) when the
    /// current one belongs to another link.
    fn cursor(&mut self, link: LinkId) -> &mut Cursor {
        let floor = self.floor;
        let c = self.cursor.get_or_insert(Cursor { link, sent: floor });
        if c.link != link {
            *c = Cursor { link, sent: floor };
        }
        c
    }

    /// Up to `max` committed messages (through `committed`) after `sent`, ready for the wire:
    /// each says which message precedes it in the queue. The oldest message held says it has
    /// no predecessor (0): whatever came before it was confirmed or deleted by a limit, and
    /// the receiver must not wait for it.
    fn unsent(&self, sent: u64, committed: u64, max: usize) -> Vec<Spooled> {
        let mut prev = 0;
        let mut out = Vec::new();
        for e in &self.entries {
            if e.seq > committed || out.len() == max {
                break;
            }
            if e.seq > sent {
                let mut frame = Spooled::clone(e);
                frame.prev_seq = prev;
                out.push(frame);
            }
            prev = e.seq;
        }
        out
    }

    /// Removes the oldest message (it must exist), keeping sizes and the floor right.
    fn pop_front(&mut self) -> Arc<Spooled> {
        let e = self.entries.pop_front().expect("caller checked the front");
        self.bytes -= charge(&e);
        self.floor = self.floor.max(e.seq);
        e
    }
}

/// Messages removed without delivery, for metrics, logs and the store.
#[derive(Debug, Default, PartialEq)]
pub struct Removed {
    pub region: String,
    pub seqs: Vec<u64>,
}

impl Removed {
    /// `first..=last (n messages)`, for logs.
    pub fn range(&self) -> String {
        match (self.seqs.first(), self.seqs.last()) {
            (Some(a), Some(b)) => format!("seq {a}..={b} ({} messages)", self.seqs.len()),
            _ => "nothing".to_owned(),
        }
    }
}

/// What a confirmation did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Acked {
    /// Messages deleted.
    pub freed: u64,
    /// The region claimed more than was ever sent to it (a confused or malicious peer): the
    /// claim was cut to what was sent.
    pub beyond_sent: bool,
}

/// Depth and lag of one route towards one region.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteDepth {
    pub route: String,
    pub region: String,
    pub depth: u64,
    pub oldest_ms: Option<i64>,
}

/// Copies that do not continue what the replica holds (something before them is missing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("replica copies skip messages after seq {held}")]
pub struct ReplicaGap {
    pub held: u64,
}

/// Messages of one queue for the replica: everything at or below `floor` may be dropped
/// there; `entries` are committed messages it has not had on this link.
#[derive(Debug, Clone, PartialEq)]
pub struct ToReplicate {
    pub destination: String,
    pub floor: u64,
    pub entries: Vec<Spooled>,
}

#[derive(Debug)]
pub struct Outbox {
    stream: StreamId,
    limits: Limits,
    queues: HashMap<String, Queue>,
    bytes: u64,
    /// The gateway keeping copies of this spool, and the link replication goes over.
    replica: Option<(String, LinkId)>,
}

impl Outbox {
    pub fn new(stream: StreamId, limits: Limits) -> Self {
        Outbox {
            stream,
            limits,
            queues: HashMap::new(),
            bytes: 0,
            replica: None,
        }
    }

    /// The id every message of this spool carries.
    pub fn stream(&self) -> &StreamId {
        &self.stream
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Restores a region's queue from disk: `acked` is the last confirmed `seq`,
    /// `deleted_through` the highest one a limit deleted unconfirmed, `entries` the stored
    /// unconfirmed messages (all committed). Numbering continues above all three: a number
    /// once sent is never reused, or a receiver that had the old message would drop the new
    /// one as a resend.
    pub fn restore(
        &mut self,
        region: &str,
        acked: u64,
        deleted_through: u64,
        mut entries: Vec<Spooled>,
    ) {
        entries.sort_by_key(|e| e.seq);
        let q = self.queues.entry(region.to_owned()).or_default();
        q.acked = q.acked.max(acked);
        q.floor = q.floor.max(q.acked).max(deleted_through);
        for mut e in entries {
            if e.seq <= q.acked {
                continue;
            }
            e.stream = self.stream.to_string();
            let size = charge(&e);
            q.bytes += size;
            self.bytes += size;
            q.committed = q.committed.max(e.seq);
            q.entries.push_back(Arc::new(e));
        }
        q.next_seq = q.committed.max(q.floor) + 1;
        // Anything on disk may have been sent by the previous incarnation.
        q.max_sent = q.committed.max(q.floor);
    }

    /// Adds a message for `region`, numbering it. The caller writes it to disk and calls
    /// [`Outbox::committed`] once it is there. Returns it and any messages the overflow
    /// policy dropped to make room.
    pub fn append(
        &mut self,
        region: &str,
        route: &str,
        forward: Forward,
        now_ms: i64,
    ) -> Result<(Arc<Spooled>, Option<Removed>), SpoolFull> {
        self.append_relay(region, route, forward, None, now_ms)
    }

    /// [`Outbox::append`] of a held relay: another region's message kept here for a cluster
    /// peer cut off past the grace period, with where it came from (docs/cluster.md §4).
    pub fn append_relay(
        &mut self,
        region: &str,
        route: &str,
        forward: Forward,
        relay_of: Option<RelayOf>,
        now_ms: i64,
    ) -> Result<(Arc<Spooled>, Option<Removed>), SpoolFull> {
        let mut forward = forward;
        detach(&mut forward);
        let mut spooled = Spooled {
            seq: 0,
            route: route.to_owned(),
            forward: Some(forward),
            spooled_at_ms: now_ms,
            stream: self.stream.to_string(),
            prev_seq: 0,
            relay_of,
        };
        // Room for the largest seq and prev_seq varints the message will carry.
        let size = charge(&spooled) + 20;
        let mut removed = None;
        if self.bytes + size > self.limits.max_bytes {
            let full = || SpoolFull {
                region: region.to_owned(),
                used: self.bytes,
                max: self.limits.max_bytes,
                size,
            };
            if self.limits.overflow == Overflow::Reject {
                return Err(full());
            }
            let q = self.queues.entry(region.to_owned()).or_default();
            let mut r = Removed {
                region: region.to_owned(),
                seqs: Vec::new(),
            };
            // Only committed messages may go: the others are still being written. The
            // region's own queue must hold enough of them, or nothing is dropped.
            let mut room = self.limits.max_bytes.saturating_sub(self.bytes);
            let mut n = 0;
            for e in q.entries.iter().take_while(|e| e.seq <= q.committed) {
                if room >= size {
                    break;
                }
                room += charge(e);
                n += 1;
            }
            if room < size {
                return Err(SpoolFull {
                    region: region.to_owned(),
                    used: self.bytes,
                    max: self.limits.max_bytes,
                    size,
                });
            }
            for _ in 0..n {
                let e = q.pop_front();
                self.bytes -= charge(&e);
                r.seqs.push(e.seq);
            }
            removed = Some(r);
        }
        let q = self.queues.entry(region.to_owned()).or_default();
        if q.next_seq == 0 {
            q.next_seq = q.floor.max(q.committed) + 1;
        }
        spooled.seq = q.next_seq;
        q.next_seq += 1;
        let size = charge(&spooled);
        q.bytes += size;
        self.bytes += size;
        let spooled = Arc::new(spooled);
        q.entries.push_back(spooled.clone());
        Ok((spooled, removed))
    }

    /// Messages up to `seq` for `region` are on disk.
    pub fn committed(&mut self, region: &str, seq: u64) {
        if let Some(q) = self.queues.get_mut(region) {
            q.committed = q.committed.max(seq);
        }
    }

    /// A write failed: forget the uncommitted messages `seqs` (their publishers get an
    /// error). Their numbers are not reused; the next message sent says what precedes it.
    pub fn forget(&mut self, region: &str, seqs: &[u64]) {
        if let Some(q) = self.queues.get_mut(region) {
            let before = q.bytes;
            q.entries.retain(|e| {
                let gone = seqs.contains(&e.seq);
                if gone {
                    q.bytes -= charge(e);
                }
                !gone
            });
            self.bytes -= before - q.bytes;
        }
    }

    /// Up to `max` committed messages for `region` not yet sent on `link`, ready for the
    /// wire (`stream` and `prev_seq` set). A link other than the one the cursor belongs to
    /// starts again from the oldest unconfirmed message.
    pub fn next_to_send(&mut self, region: &str, link: LinkId, max: usize) -> Vec<Spooled> {
        let Some(q) = self.queues.get_mut(region) else {
            return Vec::new();
        };
        let committed = q.committed;
        let sent = q.cursor(link).sent;
        let out = q.unsent(sent, committed, max);
        if let Some(last) = out.last() {
            q.cursor(link).sent = last.seq;
            q.max_sent = q.max_sent.max(last.seq);
        }
        out
    }

    /// Sending on `link` stopped at `seq` (its queue was full): it and what follows go next.
    pub fn unsend(&mut self, region: &str, link: LinkId, seq: u64) {
        if let Some(q) = self.queues.get_mut(region)
            && let Some(c) = q.cursor.as_mut().filter(|c| c.link == link)
        {
            c.sent = c.sent.min(seq.saturating_sub(1));
        }
    }

    /// The region saw a gap on `link`: it has delivered through `have` and wants everything
    /// after it again.
    pub fn rewind(&mut self, region: &str, link: LinkId, have: u64) {
        if let Some(q) = self.queues.get_mut(region)
            && let Some(c) = q.cursor.as_mut().filter(|c| c.link == link)
        {
            c.sent = c.sent.min(have.max(q.floor));
        }
    }

    /// `region` confirmed everything up to `up_to`.
    pub fn ack(&mut self, region: &str, up_to: u64) -> Acked {
        let Some(q) = self.queues.get_mut(region) else {
            return Acked::default();
        };
        // Never beyond what was sent: a confused peer cannot make us delete unsent data.
        let beyond_sent = up_to > q.max_sent;
        let up_to = up_to.min(q.max_sent);
        q.acked = q.acked.max(up_to);
        q.floor = q.floor.max(q.acked);
        let mut freed = 0;
        while q.entries.front().is_some_and(|e| e.seq <= up_to) {
            let e = q.pop_front();
            self.bytes -= charge(&e);
            freed += 1;
        }
        if let Some(c) = q.cursor.as_mut() {
            c.sent = c.sent.max(q.acked);
        }
        Acked { freed, beyond_sent }
    }

    pub fn acked(&self, region: &str) -> u64 {
        self.queues.get(region).map_or(0, |q| q.acked)
    }

    /// How far `region`'s queue is done with: confirmed, or deleted unsent by the spool's
    /// age or size limit (counted as lost then); everything before its oldest message.
    pub fn done_through(&self, region: &str) -> u64 {
        self.queues
            .get(region)
            .map_or(0, |q| match q.entries.front() {
                Some(e) => e.seq.saturating_sub(1).max(q.acked),
                None => q.next_seq.saturating_sub(1).max(q.acked),
            })
    }

    /// Deletes committed messages older than the age limit.
    pub fn expire(&mut self, now_ms: i64) -> Vec<Removed> {
        let cutoff = now_ms - self.limits.max_age_ms;
        let mut out = Vec::new();
        for (region, q) in &mut self.queues {
            let mut r = Removed {
                region: region.clone(),
                seqs: Vec::new(),
            };
            while q
                .entries
                .front()
                .is_some_and(|e| e.spooled_at_ms < cutoff && e.seq <= q.committed)
            {
                let e = q.pop_front();
                self.bytes -= charge(&e);
                r.seqs.push(e.seq);
            }
            if !r.seqs.is_empty() {
                out.push(r);
            }
        }
        out.sort_by(|a, b| a.region.cmp(&b.region));
        out
    }

    // === copies for a replica (the origin's side) ===

    /// The gateway that keeps copies of this spool, if any.
    pub fn replica(&self) -> Option<&str> {
        self.replica.as_ref().map(|(g, _)| g.as_str())
    }

    /// Replicate to `gateway` over `link` from now on. A new link starts again from each
    /// queue's oldest unconfirmed message (the replica ignores what it holds already); a new
    /// gateway also holds nothing yet, so what the old one confirmed no longer counts.
    pub fn replicate_to(&mut self, gateway: &str, link: LinkId) {
        if self
            .replica
            .as_ref()
            .is_some_and(|(g, l)| g == gateway && *l == link)
        {
            return;
        }
        let same_gateway = self.replica.as_ref().is_some_and(|(g, _)| g == gateway);
        self.replica = Some((gateway.to_owned(), link));
        for q in self.queues.values_mut() {
            q.rep_sent = q.floor;
            q.rep_floor_sent = None;
            if !same_gateway {
                q.rep_held = q.floor;
            }
        }
    }

    /// No gateway keeps copies any more (the replica's link ended and none other is up).
    pub fn no_replica(&mut self) {
        self.replica = None;
    }

    /// Up to `max` committed messages per queue that the replica has not had on `link`, and
    /// floors it has not been told; nothing when `link` is not the replica's.
    pub fn next_to_replicate(&mut self, link: LinkId, max: usize) -> Vec<ToReplicate> {
        if self.replica.as_ref().is_none_or(|(_, l)| *l != link) {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (destination, q) in &mut self.queues {
            // Copies carry `prev_seq` as on the wire to a region, so the replica can tell a
            // continuation from a gap.
            let entries = q.unsent(q.rep_sent.max(q.floor), q.committed, max);
            if entries.is_empty() && q.rep_floor_sent == Some(q.floor) {
                continue;
            }
            if let Some(last) = entries.last() {
                q.rep_sent = last.seq;
            }
            q.rep_floor_sent = Some(q.floor);
            out.push(ToReplicate {
                destination: destination.clone(),
                floor: q.floor,
                entries,
            });
        }
        out.sort_by(|a, b| a.destination.cmp(&b.destination));
        out
    }

    /// The replica lacks what precedes the copies of `destination` it was sent: send that
    /// queue again from its oldest unconfirmed message.
    pub fn replica_gap(&mut self, gateway: &str, destination: &str) {
        if self.replica.as_ref().is_none_or(|(g, _)| g != gateway) {
            return;
        }
        if let Some(q) = self.queues.get_mut(destination) {
            q.rep_sent = q.floor;
            q.rep_floor_sent = None;
        }
    }

    /// Sending to the replica on `link` stopped before `first` of `destination` (its queue
    /// was full): it goes again next time.
    pub fn unreplicate(&mut self, destination: &str, link: LinkId, first: u64) {
        if self.replica.as_ref().is_none_or(|(_, l)| *l != link) {
            return;
        }
        if let Some(q) = self.queues.get_mut(destination) {
            q.rep_sent = q.rep_sent.min(first.saturating_sub(1));
            q.rep_floor_sent = None;
        }
    }

    /// `gateway` holds `destination` through `up_to`; the new mark, or `None` when
    /// `gateway` is not the current replica (a late answer from a previous one).
    pub fn replica_acked(&mut self, gateway: &str, destination: &str, up_to: u64) -> Option<u64> {
        if self.replica.as_ref().is_none_or(|(g, _)| g != gateway) {
            return None;
        }
        let q = self.queues.get_mut(destination)?;
        // Never beyond what exists: a confused replica cannot vouch for unsent messages.
        let up_to = up_to.min(q.committed.max(q.floor));
        q.rep_held = q.rep_held.max(up_to);
        Some(q.rep_held)
    }

    /// How far the current replica holds `destination`.
    pub fn replica_held(&self, destination: &str) -> u64 {
        self.queues.get(destination).map_or(0, |q| q.rep_held)
    }

    // === copies of another gateway's spool (the replica's side) ===

    /// Keeps copies of the origin's `destination` queue: drops everything at or below
    /// `floor`, adds `entries` it does not hold yet. Entries arrive committed (the origin
    /// wrote them first). Returns the mark to confirm: held through here.
    pub fn hold(
        &mut self,
        destination: &str,
        floor: u64,
        entries: Vec<Spooled>,
    ) -> Result<u64, ReplicaGap> {
        let q = self.queues.entry(destination.to_owned()).or_default();
        let mut freed = 0;
        while q.entries.front().is_some_and(|e| e.seq <= floor) {
            freed += charge(&q.pop_front());
        }
        q.floor = q.floor.max(floor);
        q.acked = q.acked.max(floor);
        self.bytes -= freed;
        // Copies must continue what is held: each one's predecessor at the origin is held
        // here or was confirmed (at or below the floor). Otherwise sending the stream from
        // here would skip what is missing. Checked before anything is taken.
        let held = q.entries.back().map_or(q.floor, |e| e.seq);
        let mut last = held;
        for e in entries.iter().filter(|e| e.seq > held) {
            if e.prev_seq > last {
                return Err(ReplicaGap { held });
            }
            last = e.seq;
        }
        for mut e in entries.into_iter().filter(|e| e.seq > held) {
            if let Some(f) = e.forward.as_mut() {
                detach(f);
            }
            let size = charge(&e);
            q.bytes += size;
            self.bytes += size;
            q.entries.push_back(Arc::new(e));
        }
        q.committed = q.committed.max(last);
        q.max_sent = q.max_sent.max(last);
        q.next_seq = q.next_seq.max(last + 1);
        Ok(last.max(q.floor))
    }

    /// Whether every queue is empty (all confirmed).
    pub fn is_drained(&self) -> bool {
        self.queues.values().all(|q| q.entries.is_empty())
    }

    /// Messages held, over all queues.
    pub fn len(&self) -> usize {
        self.queues.values().map(|q| q.entries.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `region` has committed messages `link` has not carried yet.
    pub fn has_unsent(&self, region: &str, link: LinkId) -> bool {
        self.queues.get(region).is_some_and(|q| {
            let sent = match q.cursor {
                Some(c) if c.link == link => c.sent,
                _ => q.floor,
            };
            q.entries
                .iter()
                .any(|e| e.seq > sent && e.seq <= q.committed)
        })
    }

    /// Regions with a queue (possibly empty).
    pub fn regions(&self) -> Vec<String> {
        let mut r: Vec<String> = self.queues.keys().cloned().collect();
        r.sort();
        r
    }

    /// Messages still waiting for `region`'s confirmation.
    pub fn depth(&self, region: &str) -> usize {
        self.queues.get(region).map_or(0, |q| q.entries.len())
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Depth and oldest message per (route, region).
    pub fn depths(&self) -> Vec<RouteDepth> {
        let mut by: HashMap<(&str, &str), (u64, i64)> = HashMap::new();
        for (region, q) in &self.queues {
            for e in &q.entries {
                let d = by
                    .entry((e.route.as_str(), region))
                    .or_insert((0, e.spooled_at_ms));
                d.0 += 1;
            }
        }
        let mut out: Vec<RouteDepth> = by
            .into_iter()
            .map(|((route, region), (depth, oldest))| RouteDepth {
                route: route.to_owned(),
                region: region.to_owned(),
                depth,
                oldest_ms: Some(oldest),
            })
            .collect();
        out.sort_by(|a, b| (&a.route, &a.region).cmp(&(&b.route, &b.region)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L1: LinkId = LinkId(1);
    const L2: LinkId = LinkId(2);

    fn fwd(n: u8) -> Forward {
        Forward {
            subject: "orders.new".into(),
            payload: vec![n; 100].into(),
            ..Default::default()
        }
    }

    fn outbox(limits: Limits) -> Outbox {
        Outbox::new(StreamId::from("gw-a.1"), limits)
    }

    fn seqs(v: &[Spooled]) -> Vec<(u64, u64)> {
        v.iter().map(|e| (e.prev_seq, e.seq)).collect()
    }

    #[test]
    fn a_spooled_message_does_not_keep_the_buffer_it_was_read_into() {
        // A received publish's payload is a view into the buffer its frame was read into.
        let frame = bytes::Bytes::from(vec![7u8; 64 * 1024]);
        let start = frame.as_ptr() as usize;
        let inside = |p: *const u8| (start..start + frame.len()).contains(&(p as usize));
        let f = Forward {
            subject: "orders.new".into(),
            payload: frame.slice(100..228),
            ..Default::default()
        };
        let mut s = outbox(Limits::default());
        let (spooled, _) = s.append("c", "r", f.clone(), 0).unwrap();
        let kept = &spooled.forward.as_ref().unwrap().payload;
        assert_eq!(kept.len(), 128);
        assert!(
            !inside(kept.as_ptr()),
            "the spool pins the 64 KiB read buffer"
        );
        // Copies held for another gateway (a replica) too.
        let mut held = outbox(Limits::default());
        let copy = Spooled {
            seq: 1,
            forward: Some(f),
            ..Default::default()
        };
        held.hold("c", 0, vec![copy]).unwrap();
        let sent = held.next_to_send("c", L1, 10);
        assert!(!inside(sent[0].forward.as_ref().unwrap().payload.as_ptr()));
    }

    #[test]
    fn sends_only_committed_messages_in_order_and_resends_on_a_new_link() {
        let mut s = outbox(Limits::default());
        for i in 0..5 {
            s.append("c", "r", fwd(i), 0).unwrap();
        }
        assert!(
            s.next_to_send("c", L1, 10).is_empty(),
            "nothing committed yet"
        );
        s.committed("c", 3);
        assert_eq!(seqs(&s.next_to_send("c", L1, 10)), [(0, 1), (1, 2), (2, 3)]);
        s.committed("c", 5);
        assert_eq!(seqs(&s.next_to_send("c", L1, 1)), [(3, 4)]);
        s.ack("c", 2);
        // A new link starts from the oldest unconfirmed message, whatever L1 sent.
        assert_eq!(seqs(&s.next_to_send("c", L2, 10)), [(0, 3), (3, 4), (4, 5)]);
        let acked = s.ack("c", 5);
        assert_eq!(acked.freed, 3);
        assert_eq!(s.bytes(), 0);
        assert!(!s.has_unsent("c", L2));
        assert!(s.next_to_send("c", L1, 10).is_empty());
    }

    #[test]
    fn a_stale_link_cannot_move_the_cursor_of_the_current_one() {
        let mut s = outbox(Limits::default());
        for i in 0..4 {
            s.append("c", "r", fwd(i), 0).unwrap();
        }
        s.committed("c", 4);
        assert_eq!(s.next_to_send("c", L2, 2).len(), 2);
        s.unsend("c", L1, 1);
        s.rewind("c", L1, 0);
        assert_eq!(seqs(&s.next_to_send("c", L2, 10)), [(2, 3), (3, 4)]);
        // The current link's own full queue and a nack rewind it.
        s.unsend("c", L2, 4);
        assert_eq!(seqs(&s.next_to_send("c", L2, 10)), [(3, 4)]);
        s.rewind("c", L2, 1);
        assert_eq!(seqs(&s.next_to_send("c", L2, 10)), [(1, 2), (2, 3), (3, 4)]);
    }

    #[test]
    fn numbering_continues_after_restore_and_the_front_says_what_precedes_it() {
        let mut s = outbox(Limits::default());
        let stored = |seq| Spooled {
            seq,
            route: "r".into(),
            forward: Some(fwd(1)),
            ..Default::default()
        };
        s.restore("c", 6, 0, vec![stored(8), stored(7), stored(5)]);
        assert_eq!(seqs(&s.next_to_send("c", L1, 10)), [(0, 7), (7, 8)]);
        let (e, _) = s.append("c", "r", fwd(2), 0).unwrap();
        assert_eq!(e.seq, 9);
        assert_eq!(e.stream, "gw-a.1");
        // A region acked everything and nothing is stored: numbering still continues.
        let mut s = outbox(Limits::default());
        s.restore("c", 40, 0, Vec::new());
        assert_eq!(s.append("c", "r", fwd(2), 0).unwrap().0.seq, 41);
        // Numbers deleted by a limit are not reused either.
        let mut s = outbox(Limits::default());
        s.restore("c", 40, 52, Vec::new());
        assert_eq!(s.append("c", "r", fwd(2), 0).unwrap().0.seq, 53);
    }

    #[test]
    fn reject_overflow_refuses_and_keeps_everything() {
        let mut s = outbox(Limits {
            max_bytes: 450,
            ..Limits::default()
        });
        s.append("c", "r", fwd(1), 0).unwrap();
        s.append("c", "r", fwd(2), 0).unwrap();
        s.committed("c", 2);
        s.append("c", "r", fwd(3), 0).unwrap();
        let err = s.append("c", "r", fwd(4), 0).unwrap_err();
        assert!(err.to_string().contains("spool is full"), "{err}");
        assert_eq!(s.depths()[0].depth, 3);
    }

    #[test]
    fn drop_oldest_makes_room_from_the_front_and_the_next_message_skips_the_hole() {
        let mut s = outbox(Limits {
            max_bytes: 450,
            overflow: Overflow::DropOldest,
            ..Limits::default()
        });
        for i in 0..3 {
            s.append("c", "r", fwd(i), 0).unwrap();
        }
        s.committed("c", 3);
        let (e, removed) = s.append("c", "r", fwd(9), 0).unwrap();
        assert_eq!(e.seq, 4);
        let removed = removed.unwrap();
        assert_eq!(removed.seqs, vec![1]);
        assert_eq!(removed.range(), "seq 1..=1 (1 messages)");
        assert_eq!(seqs(&s.next_to_send("c", L1, 10)), [(0, 2), (2, 3)]);
    }

    #[test]
    fn drop_oldest_refuses_rather_than_drop_uncommitted_messages() {
        let mut s = outbox(Limits {
            max_bytes: 300,
            overflow: Overflow::DropOldest,
            ..Limits::default()
        });
        s.append("c", "r", fwd(1), 0).unwrap();
        s.append("c", "r", fwd(2), 0).unwrap();
        assert!(s.append("c", "r", fwd(3), 0).is_err());
        assert_eq!(s.depth("c"), 2);
    }

    #[test]
    fn expiry_removes_old_committed_messages() {
        let mut s = outbox(Limits {
            max_age_ms: 1000,
            ..Limits::default()
        });
        s.append("c", "r", fwd(1), 0).unwrap();
        s.append("c", "r", fwd(2), 900).unwrap();
        s.committed("c", 2);
        let r = s.expire(1500);
        assert_eq!(
            r,
            vec![Removed {
                region: "c".into(),
                seqs: vec![1]
            }]
        );
        assert_eq!(seqs(&s.next_to_send("c", L1, 10)), [(0, 2)]);
    }

    #[test]
    fn acks_never_delete_unsent_messages() {
        let mut s = outbox(Limits::default());
        s.append("c", "r", fwd(1), 0).unwrap();
        s.append("c", "r", fwd(2), 0).unwrap();
        s.committed("c", 2);
        assert_eq!(s.next_to_send("c", L1, 1).len(), 1);
        let acked = s.ack("c", 99);
        assert_eq!(
            acked,
            Acked {
                freed: 1,
                beyond_sent: true
            }
        );
        assert_eq!(seqs(&s.next_to_send("c", L1, 10)), [(0, 2)]);
    }

    #[test]
    fn a_failed_write_leaves_a_hole_the_next_message_declares() {
        let mut s = outbox(Limits::default());
        for i in 0..3 {
            s.append("c", "r", fwd(i), 0).unwrap();
        }
        s.forget("c", &[2]);
        s.committed("c", 3);
        assert_eq!(seqs(&s.next_to_send("c", L1, 10)), [(0, 1), (1, 3)]);
    }
}
