//! How a gateway's load and state become its DNS SRV preference: adapters order a region's
//! gateways per RFC 2782 (lowest priority first, then weighted random), so a lightly loaded
//! gateway gets more of the new sessions and a draining one is tried only when no other is
//! there. Pure functions of what the gateway last reported in its heartbeat.

/// SRV priority of a gateway taking sessions.
pub const PRIORITY_LIVE: u16 = 10;
/// SRV priority of a draining gateway: after every live one (it refuses new sessions anyway).
pub const PRIORITY_DRAINING: u16 = 20;

/// Sessions at which a gateway's weight is half of an idle gateway's.
const HALF_WEIGHT_SESSIONS: u32 = 100;
/// An idle gateway's weight.
const IDLE_WEIGHT: u32 = 1000;

/// The SRV weight of a gateway with `sessions` open: inversely proportional to its load
/// (1000 idle, 500 at 100 sessions, 91 at 1000), never 0 (RFC 2782 gives weight-0 records
/// almost no traffic, which would starve a busy but healthy gateway).
pub fn srv_weight(sessions: u32) -> u16 {
    let w = IDLE_WEIGHT * HALF_WEIGHT_SESSIONS / (HALF_WEIGHT_SESSIONS.saturating_add(sessions));
    w.clamp(1, u32::from(u16::MAX)) as u16
}

/// The SRV priority for a gateway in that state.
pub fn srv_priority(draining: bool) -> u16 {
    if draining {
        PRIORITY_DRAINING
    } else {
        PRIORITY_LIVE
    }
}

/// Whether a heartbeat reporting `sessions` moves the weight far enough from the one
/// registered (from `registered` sessions) to be worth a store write: a change of a tenth or
/// more. Heartbeats come every few seconds from every gateway; most must not write.
pub fn weight_moved(registered: u32, sessions: u32) -> bool {
    let (old, new) = (
        u32::from(srv_weight(registered)),
        u32::from(srv_weight(sessions)),
    );
    old.abs_diff(new) * 10 >= old
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_falls_with_load_and_never_reaches_zero() {
        assert_eq!(srv_weight(0), 1000);
        assert_eq!(srv_weight(100), 500);
        assert_eq!(srv_weight(900), 100);
        assert!(srv_weight(u32::MAX) >= 1);
        let mut last = u16::MAX;
        for s in [0, 1, 10, 50, 100, 1000, 10_000, 100_000] {
            let w = srv_weight(s);
            assert!(w <= last, "{s}: {w} > {last}");
            last = w;
        }
    }

    #[test]
    fn draining_gateways_come_after_live_ones() {
        assert!(srv_priority(true) > srv_priority(false));
    }

    #[test]
    fn small_changes_in_load_do_not_write() {
        assert!(!weight_moved(0, 1));
        assert!(!weight_moved(100, 105));
        assert!(weight_moved(0, 20));
        assert!(weight_moved(100, 50));
        assert!(weight_moved(100, 130));
    }
}
