//! Admission before authentication: budgets per source address and in total, so that
//! connections and sessions that have not (yet) presented a key can never use up what keyed
//! clients need, nor grow the gateway's memory without bound.
//!
//! Two budgets use this module's [`AddressBudget`]:
//! - transport connections (TCP, before any HTTP/2 request): `limits.max_transport_connections`
//!   and `limits.max_transport_connections_per_address`;
//! - sessions that have not completed `Hello`: `limits.max_unauthenticated_per_address` (a
//!   refusal beyond it), with `limits.max_unauthenticated` in all enforced by
//!   [`PendingSessions`] (the oldest waiting session is evicted). A session leaves this budget
//!   when its `Hello` is accepted and then counts against `limits.max_connections` instead, so
//!   anonymous sessions never take the slots of keyed ones.
//!
//! Addresses are grouped the way one party usually holds them: an IPv4 address alone, an IPv6
//! address by its /64 prefix (one host is routinely given a whole /64), and an IPv4-mapped IPv6
//! address as the IPv4 address it is.
//!
//! The budget is a plain data structure behind one mutex taken only when a connection or a
//! session opens, completes `Hello` or closes, never per message. [`RefusalLog`] keeps the
//! warnings about refusals to one line per second per kind (with a count of the suppressed
//! ones), so a flood cannot flood the log too.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

/// The key an address is counted under; see the module docs.
pub fn address_group(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Why a slot was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `total` slots are taken in all.
    Total { max: u32 },
    /// `max` slots are taken by this address group.
    PerAddress { max: u32 },
}

/// Slots counted per address group and in total; see the module docs.
#[derive(Debug)]
pub struct AddressBudget {
    max_total: u32,
    max_per_address: u32,
    state: Mutex<BudgetState>,
}

#[derive(Debug, Default)]
struct BudgetState {
    total: u32,
    by_address: HashMap<IpAddr, u32>,
}

impl AddressBudget {
    pub fn new(max_total: u32, max_per_address: u32) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_address,
            state: Mutex::new(BudgetState::default()),
        })
    }

    /// Takes a slot for `addr`, released when the returned [`Slot`] is dropped.
    pub fn try_acquire(self: &Arc<Self>, addr: IpAddr) -> Result<Slot, Refusal> {
        let group = address_group(addr);
        let mut state = self.state.lock();
        if state.total >= self.max_total {
            return Err(Refusal::Total {
                max: self.max_total,
            });
        }
        let n = state.by_address.entry(group).or_insert(0);
        if *n >= self.max_per_address {
            return Err(Refusal::PerAddress {
                max: self.max_per_address,
            });
        }
        *n += 1;
        state.total += 1;
        Ok(Slot {
            budget: self.clone(),
            group,
        })
    }

    /// Slots taken in all.
    pub fn in_use(&self) -> u32 {
        self.state.lock().total
    }

    /// Slots taken by `addr`'s group.
    pub fn in_use_by(&self, addr: IpAddr) -> u32 {
        let group = address_group(addr);
        self.state
            .lock()
            .by_address
            .get(&group)
            .copied()
            .unwrap_or(0)
    }

    fn release(&self, group: IpAddr) {
        let mut state = self.state.lock();
        state.total = state.total.saturating_sub(1);
        if let Some(n) = state.by_address.get_mut(&group) {
            *n -= 1;
            if *n == 0 {
                // Forget the address, so the table holds only addresses with open slots.
                state.by_address.remove(&group);
            }
        }
    }
}

/// One taken slot; dropping it gives it back.
#[derive(Debug)]
pub struct Slot {
    budget: Arc<AddressBudget>,
    group: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.budget.release(self.group);
    }
}

/// Rate-limits the warning written for one kind of refusal: at most one line per second,
/// carrying how many refusals were not logged since the last line.
#[derive(Debug, Default)]
pub struct RefusalLog {
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RefusalLog {
    /// Whether to write a line now (`now_ms` is any monotonic millisecond clock); when it
    /// returns `Some(n)`, `n` refusals were suppressed before this one.
    pub fn should_log(&self, now_ms: u64) -> Option<u64> {
        let last = self.last_ms.load(Ordering::Relaxed);
        if last != 0 && now_ms < last + 1000 {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self
            .last_ms
            .compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

/// The sessions waiting for their Hello, oldest first, bounded by `limits.max_unauthenticated`.
///
/// When the bound is reached the *oldest* waiting session is evicted rather than the new one
/// refused: a keyed client sends its Hello within a round trip of opening its session, so to
/// starve it an attacker would have to open more than `max_unauthenticated` sessions within
/// that round trip, where refusing new sessions would let a slow trickle of silent sessions
/// (one per `hello_timeout_ms / max_unauthenticated`) lock every newcomer out.
#[derive(Debug)]
pub struct PendingSessions {
    max: usize,
    state: Mutex<PendingState>,
}

#[derive(Debug, Default)]
struct PendingState {
    next: u64,
    by_age: std::collections::BTreeMap<u64, Waiting>,
}

#[derive(Debug)]
struct Waiting {
    token: CancellationToken,
    /// The session ran and found no input: it is first in line for eviction.
    silent: bool,
}

impl PendingSessions {
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1) as usize,
            state: Mutex::new(PendingState::default()),
        })
    }

    /// Registers a new waiting session; returns its entry (removed on drop) and whether an
    /// older session was evicted to make room (its token is cancelled). The oldest session
    /// already seen silent ([`PendingEntry::mark_silent`]) goes first; only when there is none
    /// the oldest of all, so the bound always holds.
    pub fn enter(self: &Arc<Self>) -> (PendingEntry, bool) {
        let mut state = self.state.lock();
        let mut evicted = false;
        while state.by_age.len() >= self.max {
            let victim = state
                .by_age
                .iter()
                .find(|(_, w)| w.silent)
                .map(|(id, _)| *id)
                .or_else(|| state.by_age.keys().next().copied());
            if let Some(w) = victim.and_then(|id| state.by_age.remove(&id)) {
                w.token.cancel();
                evicted = true;
            }
        }
        let id = state.next;
        state.next += 1;
        let token = CancellationToken::new();
        state.by_age.insert(
            id,
            Waiting {
                token: token.clone(),
                silent: false,
            },
        );
        (
            PendingEntry {
                owner: self.clone(),
                id,
                evicted: token,
            },
            evicted,
        )
    }

    /// Sessions waiting.
    pub fn len(&self) -> usize {
        self.state.lock().by_age.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A session's place among the [`PendingSessions`]; `evicted` is cancelled if it is pushed
/// out by newer ones.
#[derive(Debug)]
pub struct PendingEntry {
    owner: Arc<PendingSessions>,
    id: u64,
    pub evicted: CancellationToken,
}

impl PendingEntry {
    /// The session ran and had received nothing: evict it before sessions that may be about
    /// to present their Hello.
    pub fn mark_silent(&self) {
        if let Some(w) = self.owner.state.lock().by_age.get_mut(&self.id) {
            w.silent = true;
        }
    }
}

impl Drop for PendingEntry {
    fn drop(&mut self) {
        self.owner.state.lock().by_age.remove(&self.id);
    }
}

/// The rate limits of the warnings about session admission, shared by every session.
#[derive(Debug, Default)]
pub struct AdmissionLogs {
    pub unauthenticated_total: RefusalLog,
    pub unauthenticated_per_address: RefusalLog,
    pub hello_timeout: RefusalLog,
    pub max_connections: RefusalLog,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_address_and_total_bounds() {
        let b = AddressBudget::new(3, 2);
        let a1 = b.try_acquire(ip("10.0.0.1")).unwrap();
        let _a2 = b.try_acquire(ip("10.0.0.1")).unwrap();
        assert_eq!(
            b.try_acquire(ip("10.0.0.1")).unwrap_err(),
            Refusal::PerAddress { max: 2 }
        );
        let _b1 = b.try_acquire(ip("10.0.0.2")).unwrap();
        assert_eq!(
            b.try_acquire(ip("10.0.0.3")).unwrap_err(),
            Refusal::Total { max: 3 }
        );
        drop(a1);
        assert_eq!(b.in_use(), 2);
        assert_eq!(b.in_use_by(ip("10.0.0.1")), 1);
        let _c = b.try_acquire(ip("10.0.0.3")).unwrap();
    }

    #[test]
    fn released_addresses_are_forgotten() {
        let b = AddressBudget::new(100, 100);
        let slots: Vec<_> = (0..50)
            .map(|i| b.try_acquire(ip(&format!("10.0.0.{i}"))).unwrap())
            .collect();
        assert_eq!(b.state.lock().by_address.len(), 50);
        drop(slots);
        assert_eq!(b.in_use(), 0);
        assert!(b.state.lock().by_address.is_empty());
    }

    #[test]
    fn ipv6_counts_by_slash_64_and_mapped_ipv4_as_ipv4() {
        let b = AddressBudget::new(10, 1);
        let _a = b.try_acquire(ip("2001:db8:1:2::1")).unwrap();
        assert!(b.try_acquire(ip("2001:db8:1:2:ffff::9")).is_err());
        let _c = b.try_acquire(ip("2001:db8:1:3::1")).unwrap();
        let _d = b.try_acquire(ip("192.0.2.1")).unwrap();
        assert!(b.try_acquire(ip("::ffff:192.0.2.1")).is_err());
    }

    #[test]
    fn the_oldest_waiting_session_is_evicted_when_full() {
        let p = PendingSessions::new(2);
        let (a, evicted) = p.enter();
        assert!(!evicted);
        let (b, _) = p.enter();
        let (c, evicted) = p.enter();
        assert!(evicted && a.evicted.is_cancelled());
        assert!(!b.evicted.is_cancelled() && !c.evicted.is_cancelled());
        assert_eq!(p.len(), 2);
        drop(b); // Hello accepted: leaves the set.
        let (_d, evicted) = p.enter();
        assert!(!evicted && !c.evicted.is_cancelled());
        drop(a);
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn silent_sessions_are_evicted_before_newer_unread_ones() {
        let p = PendingSessions::new(3);
        let (unread, _) = p.enter();
        let (silent, _) = p.enter();
        silent.mark_silent();
        let (_c, _) = p.enter();
        let (_d, evicted) = p.enter();
        assert!(evicted && silent.evicted.is_cancelled());
        assert!(!unread.evicted.is_cancelled());
        // With nothing marked silent the oldest goes, so the bound holds.
        let (_e, evicted) = p.enter();
        assert!(evicted && unread.evicted.is_cancelled());
        assert_eq!(p.len(), 3);
    }

    #[test]
    fn refusal_log_writes_one_line_per_second() {
        let log = RefusalLog::default();
        assert_eq!(log.should_log(5_000), Some(0));
        for t in 5_001..5_100 {
            assert_eq!(log.should_log(t), None);
        }
        assert_eq!(log.should_log(6_000), Some(99));
        assert_eq!(log.should_log(6_001), None);
    }
}
