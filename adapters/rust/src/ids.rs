//! Message ids: ULIDs made without reading the precise clock or a cryptographic generator
//! for every message.
//!
//! A ULID is 48 bits of Unix time in milliseconds and 80 random bits. `Ulid::new()` reads the
//! precise clock (`clock_gettime(CLOCK_REALTIME)`: ~2 % of a publishing client's CPU in the
//! pub/sub benchmark, docs/benchmarks.md round 7) and draws from a CSPRNG. Nothing reads an
//! id's time more finely than the coarse clock's resolution (a few milliseconds): an id only
//! has to be unique, since gateways de-duplicate retried publishes by it, and 80 bits from a
//! per-thread generator seeded at random are, within each millisecond. Ids are not secrets.

use ulid::Ulid;

/// A new message id.
pub(crate) fn new_ulid() -> Ulid {
    Ulid::from_parts(unix_ms(), fastrand::u128(..))
}

/// Milliseconds since the Unix epoch from the coarse real-time clock (updated every tick,
/// read from the vDSO without reading the time-stamp counter). Through libc, whose vDSO
/// call tools such as valgrind know (rustix's own vDSO lookup crashes under valgrind).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn unix_ms() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid, writable `timespec`, which is all `clock_gettime` writes to.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut t) };
    if rc != 0 {
        return precise_unix_ms();
    }
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(t.tv_nsec).unwrap_or(0);
    secs * 1000 + nanos / 1_000_000
}

/// Milliseconds since the Unix epoch (no coarse clock here: the precise one).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn unix_ms() -> u64 {
    precise_unix_ms()
}

/// Milliseconds since the Unix epoch from the precise clock.
fn precise_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_carry_the_time_and_differ() {
        let before = std::time::SystemTime::now();
        let ids: Vec<Ulid> = (0..10_000).map(|_| new_ulid()).collect();
        let after = std::time::SystemTime::now();
        let unique: HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        for id in [ids[0], ids[ids.len() - 1]] {
            let t = id.datetime();
            // The coarse clock lags the precise one by up to a tick (at most 10 ms).
            let slack = std::time::Duration::from_millis(20);
            assert!(t + slack >= before && t <= after + slack, "{t:?}");
        }
    }
}
