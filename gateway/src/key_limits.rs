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
//! them: the key's rates and bursts divided by the number of live gateways of its region that
//! it knows from the control plane's push (the region's cluster: every gateway registered with
//! a link endpoint, itself included), rounded up. So the region admits at most about the
//! configured rate whatever the spread of the key's sessions, and a key whose traffic all goes
//! to one gateway gets that gateway's share only. The share follows the region as gateways
//! come and go (limiters are rebuilt, with a full burst, when it changes). Gateways the push
//! does not list (no link endpoint, or no control plane) enforce the whole limit each
//! (docs/hardening.md §6).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use arc_swap::ArcSwap;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use nexus_proto::v1::KeyLimits;

/// The limiters of one key.
pub struct KeyLimiter {
    limits: KeyLimits,
    /// How many gateways share the limits (1: this one enforces all of them).
    share: u32,
    msgs: Option<DefaultDirectRateLimiter>,
    bytes: Option<DefaultDirectRateLimiter>,
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
        let share = share.max(1);
        let msgs = quota(limits.msgs_per_sec.into(), limits.burst_msgs.into(), share);
        let bytes = quota(limits.bytes_per_sec, limits.burst_bytes, share);
        (msgs.is_some() || bytes.is_some()).then(|| Self {
            limits: *limits,
            share,
            msgs: msgs.map(RateLimiter::direct),
            bytes: bytes.map(RateLimiter::direct),
        })
    }

    /// "; this gateway enforces 50 of them, its share among the region's 2 live gateways".
    fn share_note(&self, rate: u64, burst: u64, unit: &str) -> String {
        if self.share <= 1 {
            return String::new();
        }
        format!(
            "; this gateway enforces {} {unit}/s (burst {}), its share among the region's {} live gateways",
            part(rate, self.share),
            part(burst, self.share),
            self.share
        )
    }

    /// Takes one message of `payload_len` bytes; `Err` is the refusal's message.
    pub fn check(&self, key_id: &str, payload_len: usize) -> Result<(), String> {
        let l = &self.limits;
        if let Some(msgs) = &self.msgs
            && msgs.check().is_err()
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
            match bytes.check_n(n) {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
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

/// The limiters of every limited key, replaced as a whole when the keys change; a key whose
/// limits did not change keeps its limiter (and so its state).
#[derive(Default)]
pub struct KeyLimiters {
    by_key: ArcSwap<HashMap<String, Arc<KeyLimiter>>>,
}

impl KeyLimiters {
    /// Installs the limits of every limited key, each divided among `share` gateways (the
    /// region's live gateways, at least 1).
    pub fn update<'a>(&self, keys: impl Iterator<Item = (&'a str, &'a KeyLimits)>, share: u32) {
        let share = share.max(1);
        let old = self.by_key.load();
        let mut next = HashMap::new();
        for (id, limits) in keys {
            let kept = old
                .get(id)
                .filter(|l| l.limits == *limits && l.share == share)
                .cloned();
            if let Some(l) = kept.or_else(|| KeyLimiter::new(limits, share).map(Arc::new)) {
                next.insert(id.to_owned(), l);
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
        limiters.update([("a", &a), ("b", &b)].into_iter(), 1);
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
        limiters.update([("a", &a), ("b", &b)].into_iter(), 1);
        assert!(limiters.check("a", 10).is_err());
        assert!(KeyLimiter::new(&KeyLimits::default(), 1).is_none());
    }

    #[test]
    fn limits_are_divided_among_the_regions_gateways() {
        let limits = KeyLimits {
            msgs_per_sec: 10,
            burst_msgs: 9,
            ..Default::default()
        };
        let bytes = KeyLimits {
            bytes_per_sec: 1000,
            ..Default::default()
        };
        // Three gateways: each takes ceil(9/3) = 3 messages of the burst, so the region
        // admits 9 in a burst, not 27.
        let limiters = KeyLimiters::default();
        limiters.update([("k", &limits), ("b", &bytes)].into_iter(), 3);
        for _ in 0..3 {
            limiters.check("k", 1).unwrap();
        }
        let e = limiters.check("k", 1).unwrap_err();
        assert!(
            e.contains("10 messages/s (burst 9; this gateway enforces 4 messages/s (burst 3), its share among the region's 3 live gateways)"),
            "{e}"
        );
        // The byte burst (the rate, 1000) is divided too: 334 here.
        let e = limiters.check("b", 400).unwrap_err();
        assert!(
            e.contains("burst of 1000 bytes; this gateway enforces 334"),
            "{e}"
        );
        // When the region shrinks to one gateway, it enforces the whole limit (new limiter).
        limiters.update([("k", &limits)].into_iter(), 1);
        for _ in 0..9 {
            limiters.check("k", 1).unwrap();
        }
        assert!(!limiters.check("k", 1).unwrap_err().contains("share"));
        // A share never rounds a positive limit down to nothing.
        let tiny = KeyLimits {
            msgs_per_sec: 1,
            ..Default::default()
        };
        limiters.update([("t", &tiny)].into_iter(), 5);
        limiters.check("t", 1).unwrap();
        assert!(limiters.check("t", 1).is_err());
    }
}
