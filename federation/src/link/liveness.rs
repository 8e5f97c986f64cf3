//! Failure detection for one link (sans-I/O): how long a peer may stay silent before the link
//! is declared dead, and when to probe it.
//!
//! QUIC's own idle timeout is fixed when a connection is made (5 s here) and is the only thing
//! that notices a peer that vanished without closing (a `kill -9`, a pulled cable): requests
//! went on being sent to a dead region for seconds. Here the link's watchdog counts the UDP
//! datagrams QUIC received from the peer; any datagram proves it alive (an acknowledgement of
//! ours included). After a quiet fifth of the detection time the watchdog sends a ping on the
//! control stream, which the peer's QUIC stack acknowledges whether or not its application is
//! busy, so a gateway stalled by a slow local subscriber is never mistaken for a dead one.
//!
//! The detection time is configured, or derived from the measured RTT: `3 × RTT + 400 ms`,
//! bounded to [`MIN_DEAD_AFTER`]..=[`MAX_DEAD_AFTER`], so a loopback or LAN link is declared
//! dead after half a second of silence and a 120 ms WAN link after about 1.1 s.

use std::time::Duration;

/// The shortest detection time derived from RTT: below it, a gateway briefly off the CPU on a
/// loaded host could be declared dead.
pub const MIN_DEAD_AFTER: Duration = Duration::from_millis(500);
/// The longest, below QUIC's 5 s idle timeout (the backstop).
pub const MAX_DEAD_AFTER: Duration = Duration::from_secs(3);
/// Probes per detection time: a peer is pinged after a fifth of it in silence.
const PROBES: u32 = 5;

/// What the watchdog should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The peer was heard recently.
    Quiet,
    /// The peer has been silent for a while: send a ping to make it answer.
    Ping,
    /// The peer has been silent for the whole detection time.
    Dead { silent_for: Duration },
}

#[derive(Debug, Clone)]
pub struct Liveness {
    /// `None`: derived from the RTT.
    configured: Option<Duration>,
    /// Datagrams received from the peer at the last tick.
    received: u64,
    /// When the peer was last heard from (time since the watchdog started).
    heard_at: Duration,
    /// When the last ping went out.
    pinged_at: Option<Duration>,
    /// When the watchdog last ticked.
    ticked_at: Duration,
}

impl Liveness {
    /// A watchdog starting at `now` (time since some fixed instant), with the detection time
    /// `configured` or derived from the RTT.
    pub fn new(configured: Option<Duration>, now: Duration) -> Self {
        Liveness {
            configured: configured.filter(|d| !d.is_zero()),
            received: 0,
            heard_at: now,
            pinged_at: None,
            ticked_at: now,
        }
    }

    /// How long the peer may stay silent on a link with round-trip time `rtt`.
    pub fn dead_after(&self, rtt: Duration) -> Duration {
        self.configured.unwrap_or_else(|| {
            (rtt * 3 + Duration::from_millis(400)).clamp(MIN_DEAD_AFTER, MAX_DEAD_AFTER)
        })
    }

    /// How often the watchdog should tick on a link with round-trip time `rtt`.
    pub fn tick_every(&self, rtt: Duration) -> Duration {
        (self.dead_after(rtt) / PROBES).max(Duration::from_millis(5))
    }

    /// A tick at `now`: `received` is the count of datagrams QUIC has received on the
    /// connection so far, `rtt` its current estimate.
    ///
    /// Time the watchdog itself did not get to run is not counted as the peer's silence: a
    /// tick later than two intervals means this process was off the CPU (a loaded host), and
    /// then QUIC's own driver likely was too, so datagrams the peer sent may still sit
    /// unread in the socket. Only one interval of such a gap counts.
    pub fn tick(&mut self, now: Duration, received: u64, rtt: Duration) -> Probe {
        let every = self.tick_every(rtt);
        let gap = now.saturating_sub(self.ticked_at);
        self.ticked_at = now;
        if gap > every * 2 {
            self.heard_at = (self.heard_at + (gap - every)).min(now);
        }
        if received != self.received {
            self.received = received;
            self.heard_at = now;
            self.pinged_at = None;
            return Probe::Quiet;
        }
        let silent_for = now.saturating_sub(self.heard_at);
        let dead_after = self.dead_after(rtt);
        if silent_for >= dead_after {
            return Probe::Dead { silent_for };
        }
        let every = dead_after / PROBES;
        let due = self
            .pinged_at
            .is_none_or(|at| now.saturating_sub(at) >= every);
        if silent_for >= every && due {
            self.pinged_at = Some(now);
            return Probe::Ping;
        }
        Probe::Quiet
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn detection_time_follows_rtt_within_bounds() {
        let l = Liveness::new(None, ms(0));
        assert_eq!(l.dead_after(ms(0)), MIN_DEAD_AFTER);
        assert_eq!(l.dead_after(ms(80)), ms(640));
        assert_eq!(l.dead_after(ms(240)), ms(1120));
        assert_eq!(l.dead_after(Duration::from_secs(2)), MAX_DEAD_AFTER);
        let l = Liveness::new(Some(ms(200)), ms(0));
        assert_eq!(l.dead_after(ms(240)), ms(200), "configured wins");
        assert_eq!(l.tick_every(ms(240)), ms(40));
    }

    #[test]
    fn a_silent_peer_is_pinged_then_declared_dead() {
        let rtt = ms(0);
        let mut l = Liveness::new(None, ms(0));
        assert_eq!(l.tick(ms(50), 0, rtt), Probe::Quiet);
        assert_eq!(l.tick(ms(100), 0, rtt), Probe::Ping);
        assert_eq!(
            l.tick(ms(150), 0, rtt),
            Probe::Quiet,
            "one ping per interval"
        );
        assert_eq!(l.tick(ms(200), 0, rtt), Probe::Ping);
        for t in [250, 300, 350, 400, 450] {
            assert_ne!(l.tick(ms(t), 0, rtt), Probe::Dead { silent_for: ms(t) });
        }
        assert_eq!(
            l.tick(ms(500), 0, rtt),
            Probe::Dead {
                silent_for: ms(500)
            }
        );
    }

    /// A watchdog that did not run for a while (its process off the CPU) does not count
    /// that time as the peer's silence: QUIC's driver was likely stalled too, with the
    /// peer's datagrams unread. A peer that stays silent once it runs again is still found.
    #[test]
    fn time_the_watchdog_was_stalled_is_not_the_peers_silence() {
        let rtt = ms(0);
        let mut l = Liveness::new(None, ms(0));
        assert_eq!(l.tick(ms(100), 1, rtt), Probe::Quiet);
        // Stalled for 700 ms (past the 500 ms detection time): only one interval counts.
        assert_eq!(l.tick(ms(800), 1, rtt), Probe::Ping);
        let mut t = 800;
        let dead = loop {
            t += 100;
            match l.tick(ms(t), 1, rtt) {
                Probe::Dead { .. } => break t,
                _ => assert!(t < 2000, "never declared dead"),
            }
        };
        assert_eq!(
            dead, 1200,
            "500 ms of counted silence: 100 before the stall, 100 of it, 300 after"
        );
    }

    #[test]
    fn any_datagram_keeps_the_peer_alive() {
        let rtt = ms(0);
        let mut l = Liveness::new(None, ms(0));
        let mut received = 0;
        for t in (100..5000).step_by(100) {
            received += 1;
            assert_eq!(l.tick(ms(t), received, rtt), Probe::Quiet);
        }
        // Then it goes silent at 4900 ms.
        assert_eq!(l.tick(ms(5000), received, rtt), Probe::Ping);
        for t in [5100, 5200, 5300] {
            l.tick(ms(t), received, rtt);
        }
        assert_eq!(
            l.tick(ms(5400), received, rtt),
            Probe::Dead {
                silent_for: ms(500)
            }
        );
    }
}
