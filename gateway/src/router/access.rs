//! What the control plane's policy asks of sessions: API keys and their scopes re-checked when
//! the policy changes, per-key rate limits, and schema enforcement on published payloads.

use std::sync::Arc;

use nexus_proto::v1::{ErrorCode, frame::Kind};

use super::{Router, error, frame};
use crate::connection::Connection;
use crate::policy::Policy;

impl Router {
    pub fn auth_required(&self) -> bool {
        self.cfg.load().auth == crate::config::AuthMode::Required
    }

    /// Changes to the policy: the receiver sees the version of each policy installed (a
    /// new policy may skip versions; read it with [`Router::policy`]).
    pub fn watch_policy(&self) -> tokio::sync::watch::Receiver<i64> {
        self.policy_version.subscribe()
    }

    pub fn policy(&self) -> arc_swap::Guard<Arc<Policy>> {
        self.policy.load()
    }

    /// The policy, to keep beyond a short borrow.
    pub fn policy_full(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Installs a new policy and re-checks every authenticated session against it: a
    /// session whose key was revoked, expired or deleted is closed at once; the others
    /// get their (possibly changed) scopes.
    pub fn apply_policy(&self, policy: Policy) {
        self.metrics.config_version.set(policy.version);
        self.metrics.config_updates.inc();
        self.key_limiters.update(policy.key_limits());
        self.show_key_shares();
        let version = policy.version;
        self.policy.store(Arc::new(policy));
        self.policy_version.send_replace(version);
        self.recheck_sessions(crate::policy_now_ms());
    }

    /// Re-checks authenticated sessions (also run periodically, for expiry).
    pub fn recheck_sessions(&self, now_ms: i64) {
        let policy = self.policy.load();
        let mut sessions = self.authenticated.lock();
        let mut ended = Vec::new();
        sessions.retain(|_, (weak, key)| {
            let Some(conn) = weak.upgrade() else {
                ended.push(key.clone());
                return false;
            };
            let Some(grant) = conn.grant.load_full() else {
                ended.push(key.clone());
                return false;
            };
            match policy.recheck(&grant, now_ms) {
                Ok(fresh) => {
                    if *fresh != *grant {
                        conn.grant.store(Some(fresh));
                        // The session drops subscriptions its key no longer allows.
                        conn.grant_changed.notify_one();
                    }
                    true
                }
                Err(e) => {
                    self.metrics.sessions_revoked.inc();
                    tracing::info!(conn = conn.id, reason = %e, "closing session: API key no longer valid");
                    conn.outbound.send_control(frame(Kind::Error(error(
                        ErrorCode::Denied,
                        e.to_string(),
                        0,
                    ))));
                    conn.outbound
                        .close_after_flush(Some(tonic::Status::permission_denied(e.to_string())));
                    ended.push(key.clone());
                    false
                }
            }
        });
        drop(sessions);
        for key in ended {
            self.key_session_ended(&key);
        }
    }

    /// Charges one message of `payload_len` bytes to the rate limits of `grant`'s key (none
    /// when authentication is off); `Err` is the refusal, already counted.
    pub fn charge_key(
        &self,
        grant: Option<&crate::policy::Grant>,
        payload_len: usize,
    ) -> Result<(), String> {
        let Some(grant) = grant else { return Ok(()) };
        self.key_limiters
            .check(&grant.key_id, payload_len)
            .inspect_err(|_| self.metrics.key_rate_limited(&grant.key_id))
    }

    /// A session authenticated with a key: re-checked when the policy changes, and counted
    /// for the key (its first session here is announced to the region's other gateways).
    pub fn track_authenticated(&self, conn: &Arc<Connection>) {
        let Some(grant) = conn.grant.load_full() else {
            return;
        };
        let key: Box<str> = grant.key_id.as_str().into();
        let before = self
            .authenticated
            .lock()
            .insert(conn.id, (Arc::downgrade(conn), key.clone()));
        if before.is_none() {
            let mut counts = self.key_sessions.lock();
            let n = counts.entry(key.clone()).or_insert(0);
            *n += 1;
            if *n == 1
                && let Some(remote) = self.remote.get()
            {
                // Under the lock, so that a key's first and last sessions are announced in
                // the order they happened.
                remote.key_active_changed(&key, true);
            }
        }
    }

    /// `peers` other gateways of the region have sessions of `key` now: this gateway enforces
    /// `1 / (peers + 1)` of its rate limits (more while some gateways have not told theirs).
    pub fn set_key_peers_active(&self, key: &str, peers: u32) {
        self.key_limiters.set_peers_active(key, peers);
        self.show_key_shares();
    }

    /// `peers` other gateways of the region have not told which keys they have sessions of:
    /// each counts for every key.
    pub fn set_key_unknown_peers(&self, peers: u32) {
        if self.key_limiters.set_unknown_peers(peers) {
            self.show_key_shares();
        }
    }

    /// `nexus_key_limit_share{key}`: each limited key enforced with a share of its limits.
    fn show_key_shares(&self) {
        let family = &self.metrics.key_limit_share;
        family.clear();
        for (key, share) in self.key_limiters.shares() {
            if share > 1 {
                family
                    .get_or_create(&crate::metrics::KeyLabels { key })
                    .set(i64::from(share));
            }
        }
    }

    /// A session ended.
    pub fn untrack(&self, conn: &Connection) {
        let removed = self.authenticated.lock().remove(&conn.id);
        if let Some((_, key)) = removed {
            self.key_session_ended(&key);
        }
    }

    /// One session of `key` is no longer tracked; its last one here is announced.
    fn key_session_ended(&self, key: &str) {
        let mut counts = self.key_sessions.lock();
        let Some(n) = counts.get_mut(key) else {
            return;
        };
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(key);
            if let Some(remote) = self.remote.get() {
                remote.key_active_changed(key, false);
            }
        }
    }

    /// Checks a payload against the subject's enforced schema. `Err` carries the message
    /// for a rejected publisher; violations under `warn` are logged and counted only.
    pub fn check_schema(&self, subject: &str, payload: &[u8]) -> Result<(), String> {
        self.check_schema_in(&self.policy.load(), subject, payload)
    }

    /// [`Router::check_schema`] against `policy` (a session's snapshot of it).
    pub fn check_schema_in(
        &self,
        policy: &Policy,
        subject: &str,
        payload: &[u8],
    ) -> Result<(), String> {
        let Some(enforced) = policy.schemas.get(subject) else {
            return Ok(());
        };
        let Err(violations) = enforced.schema.validate(payload) else {
            return Ok(());
        };
        let detail: Vec<String> = violations
            .iter()
            .take(5)
            .map(|v| {
                if v.path.is_empty() {
                    v.message.clone()
                } else {
                    format!("{}: {}", v.path, v.message)
                }
            })
            .collect();
        let message = format!(
            "payload does not match schema {subject:?} version {}: {}",
            enforced.version,
            detail.join("; ")
        );
        match enforced.enforcement {
            nexus_proto::v1::Enforcement::Reject => {
                self.metrics
                    .schema_violations
                    .get_or_create(&crate::metrics::SchemaLabels {
                        action: crate::metrics::SchemaAction::Rejected,
                    })
                    .inc();
                Err(message)
            }
            nexus_proto::v1::Enforcement::Warn => {
                self.metrics
                    .schema_violations
                    .get_or_create(&crate::metrics::SchemaLabels {
                        action: crate::metrics::SchemaAction::Warned,
                    })
                    .inc();
                tracing::warn!(%subject, "{message}");
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
