//! Idempotent publishing (sans-I/O): the message ids a gateway accepted on `async` and `sync`
//! routes within a window, so that a publisher that lost its connection before the
//! acknowledgement can send the same message (same id) again without it becoming a second
//! message.
//!
//! An id is **pending** from the first attempt until its outcome is known (the spool write,
//! or the `sync` quorum), then **accepted** for the window, or forgotten when the attempt
//! failed (so the retry is a new attempt). A retry of a pending id waits for the first
//! attempt's outcome; a retry of an accepted id is answered at once as a duplicate and
//! delivered nowhere. The window is bounded in time and in count: past `max_ids` the oldest
//! accepted ids leave early, counted by [`Dedup::evicted`].
//!
//! **Across gateways.** The same table holds the ids of durable messages this gateway
//! *received* from other gateways' streams ([`Dedup::received`]): from the other gateways of
//! its region (their `@gateway` queues) and from other regions. So a publisher whose gateway
//! died and who retries on another gateway of the region is answered "duplicate" if that
//! gateway already has the message, and if it does not (the dead gateway stored it but never
//! sent it on), the copy the dead gateway sends after its restart is recognised, wherever it
//! arrives, and delivered nowhere a second time: within the window, a message id is delivered
//! once per gateway whichever origin sends it. Received ids live in memory only.

use std::collections::{HashMap, VecDeque};

/// A publisher's 16-byte message id (a ULID in every adapter).
pub type MessageId = [u8; 16];

/// Defaults: two minutes, and at most a million ids (about 70 MB at the worst).
pub const DEFAULT_WINDOW_MS: i64 = 120_000;
pub const DEFAULT_MAX_IDS: usize = 1_000_000;

/// What is known of an id that just arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Never seen (or forgotten): a new message. The id is pending until
    /// [`Dedup::settle`].
    New,
    /// Accepted within the window: a duplicate.
    Accepted,
    /// Its first attempt is still under way: [`Dedup::wait`] for its outcome.
    Pending,
}

enum State<T> {
    Pending(Vec<T>),
    Accepted(i64),
}

pub struct Dedup<T> {
    window_ms: i64,
    max_ids: usize,
    ids: HashMap<MessageId, State<T>>,
    /// Accepted ids by the time they were accepted, oldest first.
    order: VecDeque<(i64, MessageId)>,
    evicted: u64,
}

impl<T> Dedup<T> {
    pub fn new(window_ms: i64, max_ids: usize) -> Self {
        Dedup {
            window_ms,
            max_ids: max_ids.max(1),
            ids: HashMap::new(),
            order: VecDeque::new(),
            evicted: 0,
        }
    }

    pub fn window_ms(&self) -> i64 {
        self.window_ms
    }

    /// An id found on disk at start, accepted at `at_ms`.
    pub fn restore(&mut self, id: MessageId, at_ms: i64) {
        if self.ids.insert(id, State::Accepted(at_ms)).is_none() {
            self.order.push_back((at_ms, id));
        }
    }

    /// A publish with `id` arrives at `now_ms`.
    pub fn check(&mut self, id: MessageId, now_ms: i64) -> Seen {
        self.expire(now_ms);
        match self.ids.get(&id) {
            Some(State::Accepted(_)) => Seen::Accepted,
            Some(State::Pending(_)) => Seen::Pending,
            None => {
                self.ids.insert(id, State::Pending(Vec::new()));
                Seen::New
            }
        }
    }

    /// Waits for the outcome of `id`'s first attempt; gives `waiter` back when there is no
    /// attempt under way (it was settled in between).
    pub fn wait(&mut self, id: MessageId, waiter: T) -> Result<(), T> {
        match self.ids.get_mut(&id) {
            Some(State::Pending(waiters)) => {
                waiters.push(waiter);
                Ok(())
            }
            _ => Err(waiter),
        }
    }

    /// The first attempt of `id` ended: `accepted`, or failed (then the id is forgotten).
    /// Returns the retries that waited for it.
    pub fn settle(&mut self, id: MessageId, accepted: bool, now_ms: i64) -> Vec<T> {
        let waiters = match self.ids.remove(&id) {
            Some(State::Pending(w)) => w,
            Some(accepted_before) => {
                self.ids.insert(id, accepted_before);
                return Vec::new();
            }
            None => Vec::new(),
        };
        if accepted {
            self.ids.insert(id, State::Accepted(now_ms));
            self.order.push_back((now_ms, id));
            while self.order.len() > self.max_ids {
                self.pop_oldest();
                self.evicted += 1;
            }
        }
        waiters
    }

    /// A durable message with `id` arrived from another gateway's stream at `now_ms`: true
    /// when it is the first sighting (deliver it; the id is now accepted here), false when
    /// this gateway has accepted the id already or is storing a publish of it (a retry that
    /// reached both gateways): then it must not be delivered again.
    pub fn received(&mut self, id: MessageId, now_ms: i64) -> bool {
        match self.check(id, now_ms) {
            Seen::New => {
                self.settle(id, true, now_ms);
                true
            }
            Seen::Accepted | Seen::Pending => false,
        }
    }

    /// Forgets accepted ids older than the window.
    pub fn expire(&mut self, now_ms: i64) {
        let cutoff = now_ms - self.window_ms;
        while self.order.front().is_some_and(|(at, _)| *at < cutoff) {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((at, id)) = self.order.pop_front()
            && matches!(self.ids.get(&id), Some(State::Accepted(t)) if *t == at)
        {
            self.ids.remove(&id);
        }
    }

    /// Ids accepted before this time may be deleted from the store: they have left the
    /// window by age. (Not "older than the oldest id still in memory": an id is remembered in
    /// memory from when its first attempt completed, on disk from when it was published, a
    /// little earlier, and such a cutoff deleted ids still in the window. Ids evicted early by
    /// the count limit stay on disk until they age out.)
    pub fn prune_before(&self, now_ms: i64) -> i64 {
        now_ms - self.window_ms
    }

    /// Ids that left the window early because of `max_ids`.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Ids remembered (accepted and pending).
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> MessageId {
        [n; 16]
    }

    #[test]
    fn a_retry_of_an_accepted_id_is_a_duplicate_within_the_window_only() {
        let mut d: Dedup<()> = Dedup::new(1000, 10);
        assert_eq!(d.check(id(1), 0), Seen::New);
        assert!(d.settle(id(1), true, 10).is_empty());
        assert_eq!(d.check(id(1), 500), Seen::Accepted);
        assert_eq!(d.check(id(1), 1009), Seen::Accepted);
        assert_eq!(d.check(id(1), 1011), Seen::New, "the window has passed");
    }

    #[test]
    fn a_retry_of_a_pending_id_waits_for_the_first_outcome() {
        let mut d = Dedup::new(1000, 10);
        assert_eq!(d.check(id(1), 0), Seen::New);
        assert_eq!(d.check(id(1), 1), Seen::Pending);
        d.wait(id(1), "retry").unwrap();
        assert_eq!(d.settle(id(1), true, 2), vec!["retry"]);
        assert_eq!(d.wait(id(1), "late"), Err("late"));
    }

    #[test]
    fn a_failed_first_attempt_leaves_the_retry_free() {
        let mut d = Dedup::new(1000, 10);
        d.check(id(1), 0);
        d.wait(id(1), "retry").unwrap();
        assert_eq!(d.settle(id(1), false, 1), vec!["retry"]);
        assert_eq!(d.check(id(1), 2), Seen::New);
    }

    #[test]
    fn the_count_bound_evicts_the_oldest_and_counts_it() {
        let mut d: Dedup<()> = Dedup::new(1000, 2);
        for n in 1..=3 {
            d.check(id(n), 0);
            d.settle(id(n), true, i64::from(n));
        }
        assert_eq!(d.evicted(), 1);
        assert_eq!(d.check(id(1), 5), Seen::New);
        assert_eq!(d.check(id(3), 5), Seen::Accepted);
        assert_eq!(d.prune_before(5000), 4000);
    }

    #[test]
    fn restored_ids_count_from_their_acceptance() {
        let mut d: Dedup<()> = Dedup::new(1000, 10);
        d.restore(id(7), 100);
        assert_eq!(d.check(id(7), 1000), Seen::Accepted);
        assert_eq!(d.check(id(7), 1101), Seen::New);
    }

    #[test]
    fn a_message_received_from_two_origins_is_delivered_once_and_answers_a_retry() {
        let mut d: Dedup<()> = Dedup::new(1000, 10);
        let id = [7u8; 16];
        assert!(d.received(id, 0), "first sighting: deliver");
        assert!(
            !d.received(id, 10),
            "the same id from another origin: not again"
        );
        assert_eq!(
            d.check(id, 20),
            Seen::Accepted,
            "a publisher's retry here is a duplicate"
        );
        // A local publish under way: the copy from elsewhere is not delivered either.
        let other = [8u8; 16];
        assert_eq!(d.check(other, 30), Seen::New);
        assert!(!d.received(other, 31));
        // After the window the id is new again.
        assert!(d.received(id, 2000));
    }
}
