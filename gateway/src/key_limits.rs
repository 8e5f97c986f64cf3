//! Per-key rate limits (`nexusctl keys limits`): messages and payload bytes per second with a
//! burst, set in the control plane and pushed with the keys, enforced here with `governor`'s
//! GCRA limiters (lock-free: one atomic compare-and-swap per check).
//!
//! Every publish, request and stream data frame of a session, and every unary call, that was
//! authenticated with a limited key takes one message and its payload length from that key's
//! limiters; over either limit it is refused with `LIMIT` naming the key and its limits, and
//! counted in `nexus_key_rate_limited_total{key}`. Other keys have limiters of their own, so a
//! key at its limit does not slow anyone else.
//!
//! **A key's limits hold for its region as a whole.** Each gateway enforces its share of
//! them: the key's rates and bursts divided by the number of gateways of the region where the
//! key has authenticated sessions (this one, plus the cluster peers that said so over their
//! cluster links: `nexus_federation::cluster::key_activity`), rounded up. So a key whose
//! sessions all sit on one gateway gets its whole limit there, and a key spread over three
//! gateways a third on each, and the region admits about the configured rate either way. The
//! share follows the key's sessions as they come and go: a key's limiter is rebuilt when its
//! share changes, and starts with the part of its burst the old one had left (so sessions
//! coming and going cannot hand a key a fresh burst each time; a key idle since its last
//! message may start a little below its full burst, and refills at its rate). A gateway with no cluster links
//! enforces the whole limit (docs/security.md §8).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicU32, Ordering};

use governor::middleware::StateInformationMiddleware;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use nexus_proto::v1::KeyLimits;
use parking_lot::Mutex;

/// The limiters of one key.
pub struct KeyLimiter {
    limits: KeyLimits,
    /// How many gateways share the limits (1: this one enforces all of them).
    share: u32,
    msgs: Option<Bucket>,
    bytes: Option<Bucket>,
}

/// One GCRA limiter and how much of its burst it had left after the last message it took.
struct Bucket {
    limiter: DefaultDirectRateLimiter<StateInformationMiddleware>,
    burst: u32,
    left: AtomicU32,
}

impl Bucket {
    /// A limiter for `quota` starting with `left` (a fraction, 0..=1) of its burst.
    fn new(quota: Quota, left: f64) -> Self {
        let burst = quota.burst_size().get();
        let limiter = RateLimiter::direct(quota).with_middleware::<StateInformationMiddleware>();
        let keep = ((f64::from(burst) * left.clamp(0.0, 1.0)).ceil() as u32).min(burst);
        if let Some(spend) = NonZeroU32::new(burst - keep) {
            let _ = limiter.check_n(spend);
        }
        Bucket {
            limiter,
            burst,
            left: AtomicU32::new(keep),
        }
    }

    /// Takes `n`: `Ok(true)` taken, `Ok(false)` over the rate, `Err` more than the burst.
    fn take(&self, n: NonZeroU32) -> Result<bool, ()> {
        match self.limiter.check_n(n) {
            Ok(Ok(state)) => {
                self.left
                    .store(state.remaining_burst_capacity(), Ordering::Relaxed);
                Ok(true)
            }
            Ok(Err(_)) => Ok(false),
            Err(_) => Err(()),
        }
    }

    /// The part of its burst left after the last message it took.
    fn left(&self) -> f64 {
        f64::from(self.left.load(Ordering::Relaxed)) / f64::from(self.burst.max(1))
    }
}

/// `n` divided among `share` gateways, rounded up (a share of a positive limit is never 0).
fn part(n: u64, share: u32) -> u64 {
    n.div_ceil(u64::from(share.max(1)))
}

fn quota(per_sec: u64, burst: u64, share: u32) -> Option<Quota> {
    let burst = if burst == 0 { per_sec } else { burst };
    let rate = NonZeroU32::new(part(per_sec, share).min(u32::MAX as u64) as u32)?;
    let burst = NonZeroU32::new(part(burst, share).min(u32::MAX as u64) as u32).unwrap_or(rate);
    Some(Quota::per_second(rate).allow_burst(burst))
}

impl KeyLimiter {
    /// `None` when `limits` limit nothing. `share`: the number of gateways of the region
    /// that divide the limits among them (this one enforces `1/share` of each).
    pub fn new(limits: &KeyLimits, share: u32) -> Option<Self> {
        Self::following(limits, share, None)
    }

    /// As [`KeyLimiter::new`], replacing `previous` (the key's limiter before its share or
    /// limits changed): each limiter starts with the part of its burst the previous one had
    /// left, not a full one.
    fn following(limits: &KeyLimits, share: u32, previous: Option<&KeyLimiter>) -> Option<Self> {
        let share = share.max(1);
        let msgs = quota(limits.msgs_per_sec.into(), limits.burst_msgs.into(), share);
        let bytes = quota(limits.bytes_per_sec, limits.burst_bytes, share);
        let left = |b: Option<&Bucket>| b.map_or(1.0, Bucket::left);
        (msgs.is_some() || bytes.is_some()).then(|| Self {
            limits: *limits,
            share,
            msgs: msgs.map(|q| Bucket::new(q, left(previous.and_then(|p| p.msgs.as_ref())))),
            bytes: bytes.map(|q| Bucket::new(q, left(previous.and_then(|p| p.bytes.as_ref())))),
        })
    }

    /// "; this gateway enforces 50 of them, its share among the 2 gateways of the region
    /// where the key has sessions".
    fn share_note(&self, rate: u64, burst: u64, unit: &str) -> String {
        if self.share <= 1 {
            return String::new();
        }
        format!(
            "; this gateway enforces {} {unit}/s (burst {}), its share among the {} gateways of the region where this key has sessions",
            part(rate, self.share),
            part(burst, self.share),
            self.share
        )
    }

    /// Takes one message of `payload_len` bytes; `Err` is the refusal's message.
    pub fn check(&self, key_id: &str, payload_len: usize) -> Result<(), String> {
        let l = &self.limits;
        if let Some(msgs) = &self.msgs
            && msgs.take(NonZeroU32::MIN) != Ok(true)
        {
            let rate = u64::from(l.msgs_per_sec);
            let burst = if l.burst_msgs == 0 {
                rate
            } else {
                u64::from(l.burst_msgs)
            };
            return Err(format!(
                "API key {key_id} is over its rate limit of {rate} messages/s (burst {burst}{}); slow down",
                self.share_note(rate, burst, "messages")
            ));
        }
        if let (Some(bytes), Some(n)) = (&self.bytes, NonZeroU32::new(payload_len as u32)) {
            let burst = if l.burst_bytes == 0 {
                l.bytes_per_sec
            } else {
                l.burst_bytes
            };
            match bytes.take(n) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(format!(
                        "API key {key_id} is over its rate limit of {} payload bytes/s (burst {burst}{}); slow down",
                        l.bytes_per_sec,
                        self.share_note(l.bytes_per_sec, burst, "bytes")
                    ));
                }
                Err(_) => {
                    return Err(format!(
                        "a payload of {payload_len} bytes exceeds API key {key_id}'s burst of {burst} bytes{}",
                        self.share_note(l.bytes_per_sec, burst, "bytes")
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The limiters of every limited key, replaced as a whole when the keys or their shares
/// change; a key whose limits and share did not change keeps its limiter (and so its state).
#[derive(Default)]
pub struct KeyLimiters {
    by_key: ArcSwap<HashMap<String, Arc<KeyLimiter>>>,
    /// What the limiters are built from; changed only when the keys are pushed or a key's
    /// sessions appear or leave on a cluster peer, never per message.
    inputs: Mutex<Inputs>,
}

#[derive(Default)]
struct Inputs {
    /// Every limited key's limits, as pushed by the control plane.
    limits: HashMap<String, KeyLimits>,
    /// For each key with sessions on other gateways of the region: how many.
    peers_active: HashMap<String, u32>,
    /// Other gateways of the region that have not told which keys they have sessions of:
    /// each counts for every key.
    unknown_peers: u32,
}

impl Inputs {
    fn share(&self, key: &str) -> u32 {
        let peers = self.peers_active.get(key).copied().unwrap_or(0);
        peers.saturating_add(self.unknown_peers).saturating_add(1)
    }
}

impl KeyLimiters {
    /// Installs the limits of every limited key (each divided among the gateways of the
    /// region where the key has sessions).
    pub fn update<'a>(&self, keys: impl Iterator<Item = (&'a str, &'a KeyLimits)>) {
        let mut inputs = self.inputs.lock();
        inputs.limits = keys.map(|(id, l)| (id.to_owned(), *l)).collect();
        self.rebuild(&inputs);
    }

    /// `peers` other gateways of the region have sessions of `key` now: this gateway
    /// enforces `1 / (peers + 1)` of its limits.
    pub fn set_peers_active(&self, key: &str, peers: u32) {
        let mut inputs = self.inputs.lock();
        let before = if peers == 0 {
            inputs.peers_active.remove(key)
        } else {
            inputs.peers_active.insert(key.to_owned(), peers)
        };
        if before.unwrap_or(0) != peers && inputs.limits.contains_key(key) {
            self.rebuild(&inputs);
        }
    }

    /// `peers` other gateways of the region have not told which keys they have sessions of:
    /// each counts as having sessions of every key (the conservative even split).
    /// Returns whether that changed anything.
    pub fn set_unknown_peers(&self, peers: u32) -> bool {
        let mut inputs = self.inputs.lock();
        if inputs.unknown_peers == peers {
            return false;
        }
        inputs.unknown_peers = peers;
        self.rebuild(&inputs);
        true
    }

    /// The share `key` is enforced with here (1: the whole limit).
    pub fn share(&self, key: &str) -> u32 {
        self.inputs.lock().share(key)
    }

    /// Every limited key and the share it is enforced with here.
    pub fn shares(&self) -> Vec<(String, u32)> {
        let inputs = self.inputs.lock();
        inputs
            .limits
            .keys()
            .map(|k| (k.clone(), inputs.share(k)))
            .collect()
    }

    fn rebuild(&self, inputs: &Inputs) {
        let old = self.by_key.load();
        let mut next = HashMap::new();
        for (id, limits) in &inputs.limits {
            let share = inputs.share(id);
            let previous = old.get(id);
            let kept = previous
                .filter(|l| l.limits == *limits && l.share == share)
                .cloned();
            let made =
                || KeyLimiter::following(limits, share, previous.map(|p| &**p)).map(Arc::new);
            if let Some(l) = kept.or_else(made) {
                next.insert(id.clone(), l);
            }
        }
        self.by_key.store(Arc::new(next));
    }

    /// Takes one message for `key_id` (no-op for an unlimited key).
    pub fn check(&self, key_id: &str, payload_len: usize) -> Result<(), String> {
        let by_key = self.by_key.load();
        if by_key.is_empty() {
            return Ok(());
        }
        match by_key.get(key_id) {
            Some(l) => l.check(key_id, payload_len),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_bytes_are_limited_per_key() {
        let limiters = KeyLimiters::default();
        let a = KeyLimits {
            msgs_per_sec: 10,
            burst_msgs: 5,
            ..Default::default()
        };
        let b = KeyLimits {
            bytes_per_sec: 1000,
            ..Default::default()
        };
        limiters.update([("a", &a), ("b", &b)].into_iter());
        for _ in 0..5 {
            limiters.check("a", 10).unwrap();
        }
        let e = limiters.check("a", 10).unwrap_err();
        assert!(
            e.contains("API key a") && e.contains("10 messages/s"),
            "{e}"
        );
        // b is unaffected by a, and limited in bytes.
        limiters.check("b", 600).unwrap();
        assert!(limiters.check("b", 600).unwrap_err().contains("bytes/s"));
        assert!(limiters.check("b", 5000).unwrap_err().contains("burst"));
        limiters.check("unlimited", 1 << 20).unwrap();
        // Unchanged limits keep their state across an update.
        limiters.update([("a", &a), ("b", &b)].into_iter());
        assert!(limiters.check("a", 10).is_err());
        assert!(KeyLimiter::new(&KeyLimits::default(), 1).is_none());
    }

    #[test]
    fn limits_are_divided_among_the_gateways_where_the_key_has_sessions() {
        let limits = KeyLimits {
            msgs_per_sec: 10,
            burst_msgs: 9,
            ..Default::default()
        };
        let bytes = KeyLimits {
            bytes_per_sec: 1000,
            ..Default::default()
        };
        let limiters = KeyLimiters::default();
        limiters.update([("k", &limits), ("b", &bytes)].into_iter());
        // Sessions of k and b on two other gateways too: each takes ceil(9/3) = 3 messages
        // of the burst, so the region admits 9 in a burst, not 27.
        limiters.set_peers_active("k", 2);
        limiters.set_peers_active("b", 2);
        assert_eq!(limiters.share("k"), 3);
        for _ in 0..3 {
            limiters.check("k", 1).unwrap();
        }
        let e = limiters.check("k", 1).unwrap_err();
        assert!(
            e.contains("10 messages/s (burst 9; this gateway enforces 4 messages/s (burst 3), its share among the 3 gateways of the region where this key has sessions)"),
            "{e}"
        );
        // The byte burst (the rate, 1000) is divided too: 334 here.
        let e = limiters.check("b", 400).unwrap_err();
        assert!(
            e.contains("burst of 1000 bytes; this gateway enforces 334"),
            "{e}"
        );
        // The other gateways' sessions of k leave: this one enforces the whole limit (a new
        // limiter, starting with what the old one had left of its burst: nothing); b,
        // unchanged, keeps its state.
        limiters.set_peers_active("k", 0);
        assert_eq!(limiters.share("k"), 1);
        assert!(!limiters.check("k", 1).unwrap_err().contains("share"));
        assert!(limiters.check("b", 400).is_err());
        // Limits pushed again keep the shares.
        limiters.update([("k", &limits), ("b", &bytes)].into_iter());
        assert!(limiters.check("b", 400).is_err());
        // Two gateways that have not told their keys count for every key.
        limiters.set_unknown_peers(2);
        assert_eq!(limiters.share("k"), 3);
        assert_eq!(limiters.share("b"), 5);
        limiters.set_unknown_peers(0);
        assert_eq!(limiters.share("k"), 1);
        // A share never rounds a positive limit down to nothing.
        let tiny = KeyLimits {
            msgs_per_sec: 1,
            ..Default::default()
        };
        limiters.update([("t", &tiny)].into_iter());
        limiters.set_peers_active("t", 4);
        limiters.check("t", 1).unwrap();
        assert!(limiters.check("t", 1).is_err());
    }

    /// Sessions coming and going on other gateways change a key's share again and again;
    /// none of the changes hands the key a fresh burst (each limiter starts with the part of
    /// its burst the one before had left), so flapping cannot let a key past its limit. A
    /// key that sent nothing keeps its whole burst across a change.
    #[test]
    fn a_change_of_share_hands_out_no_fresh_burst() {
        let limits = KeyLimits {
            msgs_per_sec: 1,
            burst_msgs: 100,
            ..Default::default()
        };
        let limiters = KeyLimiters::default();
        limiters.update([("k", &limits), ("idle", &limits)].into_iter());
        let mut taken = 0;
        for round in 0..10 {
            limiters.set_peers_active("k", round % 2);
            limiters.set_peers_active("idle", round % 2);
            while limiters.check("k", 1).is_ok() {
                taken += 1;
            }
        }
        // The burst of 100 (plus at most a message of refill and rounding per change), not
        // 50 or 100 again at every change.
        assert!(taken <= 110, "{taken} taken over 10 changes of share");
        assert!(taken >= 100, "{taken}");
        limiters.set_peers_active("idle", 0);
        for _ in 0..100 {
            limiters.check("idle", 1).unwrap();
        }
    }
}
