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
//! Limits apply per gateway: with N gateways in a region a key may reach N times its rate
//! if its sessions are spread over them (docs/hardening.md).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use arc_swap::ArcSwap;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use nexus_proto::v1::KeyLimits;

/// The limiters of one key.
pub struct KeyLimiter {
    limits: KeyLimits,
    msgs: Option<DefaultDirectRateLimiter>,
    bytes: Option<DefaultDirectRateLimiter>,
}

fn quota(per_sec: u64, burst: u64) -> Option<Quota> {
    let rate = NonZeroU32::new(per_sec.min(u32::MAX as u64) as u32)?;
    let burst = NonZeroU32::new(burst.min(u32::MAX as u64) as u32).unwrap_or(rate);
    Some(Quota::per_second(rate).allow_burst(burst))
}

impl KeyLimiter {
    /// `None` when `limits` limit nothing.
    pub fn new(limits: &KeyLimits) -> Option<Self> {
        let msgs = quota(limits.msgs_per_sec.into(), limits.burst_msgs.into());
        let bytes = quota(limits.bytes_per_sec, limits.burst_bytes);
        (msgs.is_some() || bytes.is_some()).then(|| Self {
            limits: *limits,
            msgs: msgs.map(RateLimiter::direct),
            bytes: bytes.map(RateLimiter::direct),
        })
    }

    /// Takes one message of `payload_len` bytes; `Err` is the refusal's message.
    pub fn check(&self, key_id: &str, payload_len: usize) -> Result<(), String> {
        let l = &self.limits;
        if let Some(msgs) = &self.msgs
            && msgs.check().is_err()
        {
            return Err(format!(
                "API key {key_id} is over its rate limit of {} messages/s (burst {}); slow down",
                l.msgs_per_sec,
                if l.burst_msgs == 0 {
                    l.msgs_per_sec
                } else {
                    l.burst_msgs
                }
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
                        "API key {key_id} is over its rate limit of {} payload bytes/s (burst {burst}); slow down",
                        l.bytes_per_sec
                    ));
                }
                Err(_) => {
                    return Err(format!(
                        "a payload of {payload_len} bytes exceeds API key {key_id}'s burst of {burst} bytes"
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
    pub fn update<'a>(&self, keys: impl Iterator<Item = (&'a str, &'a KeyLimits)>) {
        let old = self.by_key.load();
        let mut next = HashMap::new();
        for (id, limits) in keys {
            let kept = old.get(id).filter(|l| l.limits == *limits).cloned();
            if let Some(l) = kept.or_else(|| KeyLimiter::new(limits).map(Arc::new)) {
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
        assert!(KeyLimiter::new(&KeyLimits::default()).is_none());
    }
}
