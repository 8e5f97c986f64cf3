//! Background load for the scale curves (docs/benchmarks.md, "Scale"): sessions that hold
//! subscriptions no benchmark message matches, so a scenario measures how a server's cost
//! grows with the size of its subject table and the number of sessions it serves, not with
//! the messages it delivers.
//!
//! [`Background::open`] connects `sessions` connections and spreads `patterns` subscriptions
//! over them. Every pattern shares the first token (`load`) with the scenarios' subjects
//! (`load.<pid>.<run>.<what>`, see `scenarios`), so a lookup has to look at them:
//!
//! - literal: `load.<pid>.bg<i>.x`
//! - wildcard (`--background-wildcards`): alternately `load.<pid>.bg<i>.*` and
//!   `load.*.bg<i>.>`, so matching walks both the literal and the `*` branch at the second
//!   token, where tens of thousands of siblings wait.
//!
//! None of them matches a scenario subject (whose third token is a number, not `bg<i>`).

use anyhow::{Context, Result};
use futures::StreamExt;
use std::time::Duration;

use crate::target::{Conn, Sub, Target};

/// Subscriptions requested at once on one connection while the background is built.
const IN_FLIGHT: usize = 256;
/// Connections opened at once.
const CONNECT_AT_ONCE: usize = 50;

/// What background to hold while a scenario runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    /// Connections (sessions) held open.
    pub sessions: usize,
    /// Subscriptions spread over them (at least one connection is opened when non-zero).
    pub patterns: usize,
    /// Wildcard patterns instead of literal subjects.
    pub wildcards: bool,
}

impl Shape {
    /// Whether there is any background at all.
    pub fn is_empty(&self) -> bool {
        self.sessions == 0 && self.patterns == 0
    }

    /// The `i`-th pattern.
    pub fn pattern(&self, i: usize) -> String {
        let pid = std::process::id();
        match (self.wildcards, i % 2) {
            (false, _) => format!("load.{pid}.bg{i}.x"),
            (true, 0) => format!("load.{pid}.bg{i}.*"),
            (true, _) => format!("load.*.bg{i}.>"),
        }
    }

    /// A short label for tables: `10 000 sessions, 100 000 wildcard patterns`.
    pub fn label(&self) -> String {
        let kind = if self.wildcards {
            "wildcard patterns"
        } else {
            "subscriptions"
        };
        let sessions = self.sessions.max(usize::from(self.patterns > 0));
        format!(
            "{} session{}, {} {kind}",
            thousands(sessions),
            if sessions == 1 { "" } else { "s" },
            thousands(self.patterns)
        )
    }
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// Open background connections and their subscriptions; closed by [`Background::close`].
pub struct Background {
    conns: Vec<Conn>,
    subs: Vec<Sub>,
}

impl Background {
    /// Connects and subscribes `shape` on `target`; returns once the server holds every
    /// subscription (Nexus confirms each; NATS after a flush per connection).
    pub async fn open(target: &Target, shape: Shape) -> Result<Self> {
        let mut bg = Background {
            conns: Vec::new(),
            subs: Vec::new(),
        };
        if shape.is_empty() {
            return Ok(bg);
        }
        let sessions = shape.sessions.max(1);
        for start in (0..sessions).step_by(CONNECT_AT_ONCE) {
            let n = (sessions - start).min(CONNECT_AT_ONCE);
            let batch = futures::future::try_join_all((0..n).map(|i| async move {
                target
                    .connect(
                        &format!("background-{}", start + i),
                        Duration::from_secs(30),
                    )
                    .await
            }))
            .await
            .with_context(|| format!("opening background sessions from {start}"))?;
            bg.conns.extend(batch);
        }
        for (c, conn) in bg.conns.iter().enumerate() {
            let mine: Vec<String> = (c..shape.patterns)
                .step_by(sessions)
                .map(|i| shape.pattern(i))
                .collect();
            let subs: Vec<Result<Sub>> = futures::stream::iter(mine)
                .map(|p| async move { conn.subscribe_unconfirmed(&p).await })
                .buffer_unordered(IN_FLIGHT)
                .collect()
                .await;
            for s in subs {
                bg.subs.push(s.context("background subscription")?);
            }
            conn.flush().await?;
        }
        Ok(bg)
    }

    /// Subscriptions held.
    pub fn subscriptions(&self) -> usize {
        self.subs.len()
    }

    /// Drops the subscriptions and closes the connections.
    pub async fn close(self) {
        drop(self.subs);
        futures::future::join_all(self.conns.into_iter().map(|c| c.close())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_never_match_a_scenario_subject() {
        let pid = std::process::id();
        let subject = format!("load.{pid}.7.pubsub");
        for wildcards in [false, true] {
            let s = Shape {
                sessions: 1,
                patterns: 10,
                wildcards,
            };
            for i in 0..10 {
                let p = s.pattern(i);
                assert!(!matches(&p, &subject), "{p} matches {subject}");
            }
        }
    }

    /// NATS-style matching, enough for the test.
    fn matches(pattern: &str, subject: &str) -> bool {
        let (p, s): (Vec<&str>, Vec<&str>) =
            (pattern.split('.').collect(), subject.split('.').collect());
        for (i, t) in p.iter().enumerate() {
            match *t {
                ">" => return s.len() > i,
                "*" if i < s.len() => {}
                t if s.get(i) == Some(&t) => {}
                _ => return false,
            }
        }
        p.len() == s.len()
    }

    #[test]
    fn labels() {
        let s = Shape {
            sessions: 10_000,
            patterns: 100_000,
            wildcards: true,
        };
        assert_eq!(s.label(), "10 000 sessions, 100 000 wildcard patterns");
        assert_eq!(
            Shape {
                sessions: 0,
                patterns: 100,
                wildcards: false
            }
            .label(),
            "1 session, 100 subscriptions"
        );
    }
}
