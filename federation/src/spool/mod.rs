//! The replication spool of `async` and `sync` routes. A message for another region is
//! written here (durably, by [`store`]) before the publisher is acknowledged, sent over the
//! link in order, and deleted only when the receiving region confirms it has recorded it.
//!
//! This module is the sans-I/O core: per-region queues numbered by `seq`, the byte and age
//! limits with their overflow policy, what to (re)send after a reconnect, and the quorum
//! bookkeeping of `sync` publishes ([`quorum`]). Time is passed in as Unix milliseconds.

pub mod quorum;
pub mod store;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use nexus_proto::v1::Spooled;
use prost::Message;

/// What happens when a new message would exceed the spool's byte limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Refuse the publish with an error (the default: nothing is lost silently).
    #[default]
    Reject,
    /// Delete the region's oldest messages to make room, counting them as dropped.
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

/// Bytes a spooled message is charged: its encoded size.
pub fn charge(s: &Spooled) -> u64 {
    s.encoded_len() as u64
}

#[derive(Debug, Default)]
struct RegionQueue {
    /// Unacknowledged messages in `seq` order.
    entries: VecDeque<Arc<Spooled>>,
    next_seq: u64,
    /// Everything up to here was confirmed by the region.
    acked: u64,
    /// Everything up to here is on disk and may be sent.
    committed: u64,
    /// Everything up to here went out on the current link.
    sent: u64,
    bytes: u64,
}

/// Messages removed without delivery, for metrics and the store.
#[derive(Debug, Default, PartialEq)]
pub struct Removed {
    pub region: String,
    pub seqs: Vec<u64>,
}

/// Depth and lag of one route towards one region.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteDepth {
    pub route: String,
    pub region: String,
    pub depth: u64,
    pub oldest_ms: Option<i64>,
}

#[derive(Debug, Default)]
pub struct Spool {
    limits: Limits,
    queues: HashMap<String, RegionQueue>,
    bytes: u64,
}

impl Spool {
    pub fn new(limits: Limits) -> Self {
        Spool {
            limits,
            ..Default::default()
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Restores a region's queue from disk: `acked` is the last confirmed `seq`, `entries`
    /// the stored unconfirmed messages (all committed).
    pub fn restore(&mut self, region: &str, acked: u64, mut entries: Vec<Spooled>) {
        entries.sort_by_key(|e| e.seq);
        let q = self.queues.entry(region.to_owned()).or_default();
        q.acked = q.acked.max(acked);
        for e in entries {
            if e.seq <= q.acked {
                continue;
            }
            let size = charge(&e);
            q.bytes += size;
            self.bytes += size;
            q.committed = q.committed.max(e.seq);
            q.entries.push_back(Arc::new(e));
        }
        q.next_seq = q.committed.max(q.acked) + 1;
        q.sent = q.acked;
    }

    /// Adds a message for `region`, numbering it. The caller writes it to disk and calls
    /// [`Spool::committed`] once it is there. Returns its `seq` and any messages the
    /// overflow policy dropped to make room.
    pub fn append(
        &mut self,
        region: &str,
        route: &str,
        forward: nexus_proto::v1::Forward,
        now_ms: i64,
    ) -> Result<(Arc<Spooled>, Option<Removed>), SpoolFull> {
        let mut spooled = Spooled {
            seq: 0,
            route: route.to_owned(),
            forward: Some(forward),
            spooled_at_ms: now_ms,
        };
        let size = charge(&spooled) + 10;
        let mut removed = None;
        if self.bytes + size > self.limits.max_bytes {
            match self.limits.overflow {
                Overflow::Reject => {
                    return Err(SpoolFull {
                        region: region.to_owned(),
                        used: self.bytes,
                        max: self.limits.max_bytes,
                        size,
                    });
                }
                Overflow::DropOldest => {
                    let q = self.queues.entry(region.to_owned()).or_default();
                    let mut r = Removed {
                        region: region.to_owned(),
                        seqs: Vec::new(),
                    };
                    while self.bytes + size > self.limits.max_bytes {
                        // Only committed messages may go: the others are still being written.
                        match q.entries.front() {
                            Some(e) if e.seq <= q.committed => {
                                let e = q.entries.pop_front().expect("front exists");
                                let c = charge(&e);
                                q.bytes -= c;
                                self.bytes -= c;
                                r.seqs.push(e.seq);
                            }
                            _ => {
                                return Err(SpoolFull {
                                    region: region.to_owned(),
                                    used: self.bytes,
                                    max: self.limits.max_bytes,
                                    size,
                                });
                            }
                        }
                    }
                    removed = Some(r);
                }
            }
        }
        let q = self.queues.entry(region.to_owned()).or_default();
        if q.next_seq == 0 {
            q.next_seq = q.acked.max(q.committed) + 1;
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
    /// error), keeping numbering monotonic.
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

    /// Up to `max` committed messages for `region` not yet sent on the current link.
    pub fn next_to_send(&mut self, region: &str, max: usize) -> Vec<Arc<Spooled>> {
        let Some(q) = self.queues.get_mut(region) else {
            return Vec::new();
        };
        let out: Vec<Arc<Spooled>> = q
            .entries
            .iter()
            .skip_while(|e| e.seq <= q.sent)
            .take_while(|e| e.seq <= q.committed)
            .take(max)
            .cloned()
            .collect();
        if let Some(last) = out.last() {
            q.sent = last.seq;
        }
        out
    }

    /// Sending stopped at `seq` (the link's queue was full): it and what follows go next time.
    pub fn unsend(&mut self, region: &str, seq: u64) {
        if let Some(q) = self.queues.get_mut(region) {
            q.sent = q.sent.min(seq.saturating_sub(1)).max(q.acked);
        }
    }

    /// The link to `region` was (re)established: everything unconfirmed goes again.
    pub fn link_reset(&mut self, region: &str) {
        if let Some(q) = self.queues.get_mut(region) {
            q.sent = q.acked;
        }
    }

    /// `region` confirmed everything up to `up_to`; returns how many messages that freed.
    pub fn ack(&mut self, region: &str, up_to: u64) -> u64 {
        let Some(q) = self.queues.get_mut(region) else {
            return 0;
        };
        // Never beyond what was sent: a confused peer cannot make us delete unsent data.
        let up_to = up_to.min(q.committed);
        q.acked = q.acked.max(up_to);
        q.sent = q.sent.max(q.acked);
        let mut freed = 0;
        while q.entries.front().is_some_and(|e| e.seq <= up_to) {
            let e = q.entries.pop_front().expect("front exists");
            let c = charge(&e);
            q.bytes -= c;
            self.bytes -= c;
            freed += 1;
        }
        freed
    }

    pub fn acked(&self, region: &str) -> u64 {
        self.queues.get(region).map_or(0, |q| q.acked)
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
                let e = q.entries.pop_front().expect("front exists");
                let c = charge(&e);
                q.bytes -= c;
                self.bytes -= c;
                r.seqs.push(e.seq);
            }
            if !r.seqs.is_empty() {
                out.push(r);
            }
        }
        out
    }

    /// Whether `region` has committed messages its link has not carried yet.
    pub fn has_unsent(&self, region: &str) -> bool {
        self.queues.get(region).is_some_and(|q| {
            q.committed > q.sent && q.entries.back().is_some_and(|e| e.seq > q.sent)
        })
    }

    pub fn regions(&self) -> Vec<String> {
        self.queues.keys().cloned().collect()
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
    use nexus_proto::v1::Forward;

    fn fwd(n: u8) -> Forward {
        Forward {
            subject: "orders.new".into(),
            payload: vec![n; 100].into(),
            ..Default::default()
        }
    }

    fn seqs(v: &[Arc<Spooled>]) -> Vec<u64> {
        v.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn sends_only_committed_messages_in_order_and_resends_after_a_reset() {
        let mut s = Spool::new(Limits::default());
        for i in 0..5 {
            s.append("c", "r", fwd(i), 0).unwrap();
        }
        assert!(s.next_to_send("c", 10).is_empty(), "nothing committed yet");
        s.committed("c", 3);
        assert_eq!(seqs(&s.next_to_send("c", 10)), vec![1, 2, 3]);
        s.committed("c", 5);
        assert_eq!(seqs(&s.next_to_send("c", 1)), vec![4]);
        s.ack("c", 2);
        s.link_reset("c");
        assert_eq!(seqs(&s.next_to_send("c", 10)), vec![3, 4, 5]);
        assert_eq!(s.ack("c", 5), 3);
        assert_eq!(s.bytes(), 0);
        assert!(!s.has_unsent("c"));
    }

    #[test]
    fn numbering_continues_after_restore() {
        let mut s = Spool::new(Limits::default());
        let stored = vec![
            Spooled {
                seq: 8,
                route: "r".into(),
                forward: Some(fwd(1)),
                spooled_at_ms: 0,
            },
            Spooled {
                seq: 7,
                route: "r".into(),
                forward: Some(fwd(1)),
                spooled_at_ms: 0,
            },
            Spooled {
                seq: 5,
                route: "r".into(),
                forward: Some(fwd(1)),
                spooled_at_ms: 0,
            },
        ];
        s.restore("c", 6, stored);
        assert_eq!(seqs(&s.next_to_send("c", 10)), vec![7, 8]);
        let (e, _) = s.append("c", "r", fwd(2), 0).unwrap();
        assert_eq!(e.seq, 9);
        // A region acked everything and nothing is stored: numbering still continues.
        let mut s = Spool::new(Limits::default());
        s.restore("c", 40, Vec::new());
        assert_eq!(s.append("c", "r", fwd(2), 0).unwrap().0.seq, 41);
    }

    #[test]
    fn reject_overflow_refuses_and_keeps_everything() {
        let mut s = Spool::new(Limits {
            max_bytes: 400,
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
    fn drop_oldest_overflow_makes_room_from_the_front() {
        let mut s = Spool::new(Limits {
            max_bytes: 400,
            overflow: Overflow::DropOldest,
            ..Limits::default()
        });
        for i in 0..3 {
            s.append("c", "r", fwd(i), 0).unwrap();
        }
        s.committed("c", 3);
        let (e, removed) = s.append("c", "r", fwd(9), 0).unwrap();
        assert_eq!(e.seq, 4);
        assert_eq!(removed.unwrap().seqs, vec![1]);
        assert_eq!(seqs(&s.next_to_send("c", 10)), vec![2, 3]);
    }

    #[test]
    fn expiry_removes_old_committed_messages() {
        let mut s = Spool::new(Limits {
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
        assert_eq!(s.depths()[0].depth, 1);
    }

    #[test]
    fn acks_never_delete_unsent_messages() {
        let mut s = Spool::new(Limits::default());
        s.append("c", "r", fwd(1), 0).unwrap();
        s.append("c", "r", fwd(2), 0).unwrap();
        s.committed("c", 1);
        assert_eq!(s.ack("c", 99), 1);
        s.committed("c", 2);
        assert_eq!(seqs(&s.next_to_send("c", 10)), vec![2]);
    }
}
