//! Quorum bookkeeping for `sync` publishes: which regions must confirm which `seq` before a
//! publisher is acknowledged. Sans-I/O: the caller owns the timer and the reply channel
//! (`T`), and asks [`Quorum::expire`] for waiters whose time is up.

use std::collections::{BTreeMap, HashMap};

struct Waiter<T> {
    needed: usize,
    confirmed: Vec<String>,
    /// (region, seq) still outstanding.
    pending: Vec<(String, u64)>,
    deadline_ms: i64,
    reply: T,
}

/// The outcome of a sync publish.
#[derive(Debug, PartialEq)]
pub struct Outcome<T> {
    pub reply: T,
    pub confirmed: Vec<String>,
    pub pending: Vec<String>,
    pub needed: usize,
}

pub struct Quorum<T> {
    next: u64,
    waiters: HashMap<u64, Waiter<T>>,
    /// region -> seq -> waiters needing that region to reach seq.
    by_region: HashMap<String, BTreeMap<u64, Vec<u64>>>,
}

impl<T> Default for Quorum<T> {
    fn default() -> Self {
        Quorum {
            next: 1,
            waiters: HashMap::new(),
            by_region: HashMap::new(),
        }
    }
}

impl<T> Quorum<T> {
    /// Waits for `needed` of `targets` ((region, seq) pairs) by `deadline_ms`.
    pub fn add(&mut self, targets: Vec<(String, u64)>, needed: usize, deadline_ms: i64, reply: T) {
        let id = self.next;
        self.next += 1;
        for (region, seq) in &targets {
            self.by_region
                .entry(region.clone())
                .or_default()
                .entry(*seq)
                .or_default()
                .push(id);
        }
        self.waiters.insert(
            id,
            Waiter {
                needed,
                confirmed: Vec::new(),
                pending: targets,
                deadline_ms,
                reply,
            },
        );
    }

    /// `region` confirmed everything up to `up_to`; returns the publishes that now have
    /// their quorum.
    pub fn ack(&mut self, region: &str, up_to: u64) -> Vec<Outcome<T>> {
        let Some(seqs) = self.by_region.get_mut(region) else {
            return Vec::new();
        };
        let rest = seqs.split_off(&(up_to + 1));
        let done = std::mem::replace(seqs, rest);
        let mut out = Vec::new();
        for id in done.into_values().flatten() {
            let Some(w) = self.waiters.get_mut(&id) else {
                continue;
            };
            w.pending.retain(|(r, _)| r != region);
            w.confirmed.push(region.to_owned());
            if w.confirmed.len() >= w.needed {
                let w = self.remove(id).expect("waiter exists");
                out.push(w);
            }
        }
        out
    }

    /// Publishes whose deadline has passed without a quorum.
    pub fn expire(&mut self, now_ms: i64) -> Vec<Outcome<T>> {
        let late: Vec<u64> = self
            .waiters
            .iter()
            .filter(|(_, w)| w.deadline_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        late.into_iter().filter_map(|id| self.remove(id)).collect()
    }

    fn remove(&mut self, id: u64) -> Option<Outcome<T>> {
        let w = self.waiters.remove(&id)?;
        for (region, seq) in &w.pending {
            if let Some(seqs) = self.by_region.get_mut(region)
                && let Some(ids) = seqs.get_mut(seq)
            {
                ids.retain(|i| *i != id);
                if ids.is_empty() {
                    seqs.remove(seq);
                }
            }
        }
        Some(Outcome {
            reply: w.reply,
            confirmed: w.confirmed,
            pending: w.pending.into_iter().map(|(r, _)| r).collect(),
            needed: w.needed,
        })
    }

    pub fn len(&self) -> usize {
        self.waiters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completes_at_quorum_and_expires_otherwise() {
        let mut q = Quorum::default();
        q.add(vec![("b".into(), 3), ("c".into(), 9)], 1, 100, "p1");
        q.add(vec![("b".into(), 4), ("c".into(), 10)], 2, 100, "p2");
        assert!(q.ack("b", 2).is_empty());
        let done = q.ack("b", 4);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].reply, "p1");
        assert_eq!(done[0].confirmed, vec!["b"]);
        assert!(q.expire(99).is_empty());
        let late = q.expire(100);
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].reply, "p2");
        assert_eq!(late[0].confirmed, vec!["b"]);
        assert_eq!(late[0].pending, vec!["c"]);
        assert!(q.is_empty());
        // Nothing left behind for c.
        assert!(q.ack("c", 100).is_empty());
    }

    #[test]
    fn all_regions_needed() {
        let mut q = Quorum::default();
        q.add(vec![("b".into(), 1), ("c".into(), 1)], 2, 100, ());
        assert!(q.ack("c", 1).is_empty());
        assert_eq!(q.ack("b", 1).len(), 1);
    }
}
