//! `Router`: the gateway's shared routing state and the operations every session uses, one
//! job per submodule:
//!
//! - [`subscriptions`]: subscriptions grouped by (pattern, queue group) into `Group`s, indexed
//!   by a persistent `SubjectTable` that publishers read without locks (`ArcSwap`).
//!   Subscribing changes only the group's member list unless the group is new; those writes
//!   are serialised by one mutex that publishing never touches.
//! - [`delivery`]: a publish goes to every member of each matching plain group and to one
//!   member of each matching queue group, chosen by that group's `Balancer`, with the
//!   slow-consumer policy applied when a session's outbound budget is full.
//! - [`requests`]: a request goes to one member of one matching group; its latency or failure
//!   feeds the balancer. Pending requests live in a sharded map keyed by a gateway sequence
//!   number, which is also the responder's reply inbox (`$nexus.inbox.<seq>`).
//! - [`message`]: a published message, owned ([`Delivery`]) or read in place from the batch it
//!   arrived in ([`MessageRef`]).
//! - [`access`]: keys, scopes, per-key rate limits and schemas from the control plane's policy.
//! - [`trace_hops`]: what the gateway records of traced messages (`crate::trace_store`).
//!
//! This file holds the shared types and the state they all read.

mod access;
mod delivery;
pub use delivery::Delivered;
mod message;
pub use message::{Delivery, MessageRef, owned_slice, sources};
pub mod match_cache;
mod requests;
mod subscriptions;
mod trace_hops;

use requests::Pending;
pub use requests::{Completion, ReplyResult, Waiter};

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use nexus_proto::v1::{self, ErrorCode, Frame, Header, frame::Kind};
use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::balancer::{Balancer, BalancerConfig, MemberId};
use crate::config::GatewayConfig;
use crate::connection::Connection;
use crate::metrics::GatewayMetrics;
use crate::policy::Policy;
use crate::subject_table::SubjectTable;

/// Prefix of the reply subjects the gateway hands responders.
pub const INBOX_PREFIX: &str = "$nexus.inbox.";
const PENDING_SHARDS: usize = 32;

/// Subscribers of one pattern sharing one queue group (or none: a plain fan-out group).
pub struct Group {
    pub pattern: Box<str>,
    pub queue: Option<Box<str>>,
    members: ArcSwap<Vec<Arc<Member>>>,
    balancer: Mutex<Balancer>,
}

/// One subscription: a session's `sid` in a group.
pub struct Member {
    pub id: MemberId,
    pub sid: u64,
    pub conn: Arc<Connection>,
}

/// Handle a session keeps for each of its subscriptions.
#[derive(Clone)]
pub struct Subscription {
    pub group: Arc<Group>,
    pub member: MemberId,
}

/// Why a request could not be routed.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("no responders for subject {0:?}")]
    NoResponders(String),
}

/// An authenticated session, by connection id: the connection and its key id.
type KeyedSession = (std::sync::Weak<Connection>, Box<str>);

/// Groups are keyed by (pattern, queue group name; empty for plain subscriptions).
type GroupKey = (Box<str>, Box<str>);

/// Bytes a message occupies in a session's outbound budget besides the fixed overhead:
/// payload, subject, reply subject and headers.
pub fn message_size(
    subject: &str,
    reply_to: &str,
    headers: &[Header],
    payload_len: usize,
) -> usize {
    payload_len
        + subject.len()
        + reply_to.len()
        + headers
            .iter()
            .map(|h| h.key.len() + h.value.len() + 4)
            .sum::<usize>()
}

/// The routing state every session of the gateway shares.
pub struct Router {
    /// The running settings; [`Router::reload_config`] swaps in the live-reloadable ones.
    cfg: ArcSwap<GatewayConfig>,
    balancer_cfg: BalancerConfig,
    pub metrics: Arc<GatewayMetrics>,
    table: ArcSwap<SubjectTable<Arc<Group>>>,
    /// Bumped after every new `table` is stored, for the sessions' [`match_cache`]s.
    table_generation: AtomicU64,
    groups: Mutex<HashMap<GroupKey, Arc<Group>>>,
    pending: Box<[Mutex<HashMap<u64, Pending>>]>,
    pending_count: AtomicU64,
    next_id: AtomicU64,
    started: Instant,
    /// Fired once when the gateway starts draining: every session sends its adapter a
    /// `GoAway` (docs/protocol.md §3.4).
    draining: CancellationToken,
    /// Keys, scopes and enforced schemas from the control plane.
    policy: ArcSwap<Policy>,
    /// The version of the policy in force, for whoever follows changes
    /// ([`Router::watch_policy`]) rather than polling.
    policy_version: tokio::sync::watch::Sender<i64>,
    /// Sessions that authenticated with a key (and its id), re-checked whenever the policy
    /// changes.
    authenticated: Mutex<HashMap<u64, KeyedSession>>,
    /// How many authenticated sessions each key has here (what cluster peers are told, for
    /// the split of the key's rate limits).
    key_sessions: Mutex<HashMap<Box<str>, u32>>,
    /// Other regions, when federation is configured.
    remote: std::sync::OnceLock<Arc<dyn crate::remote::Remote>>,
    /// Per-key rate limits, from the policy's keys.
    pub key_limiters: crate::key_limits::KeyLimiters,
    /// What happened to sampled messages at this gateway (`nexusctl trace`).
    pub traces: Arc<crate::trace_store::TraceStore>,
    /// Live-tail taps on messages clients hand this gateway (`nexusctl tail`).
    pub taps: Arc<crate::tap::Taps>,
}

pub fn error(code: ErrorCode, message: impl Into<String>, ref_id: u64) -> v1::Error {
    v1::Error {
        code: code as i32,
        message: message.into(),
        ref_id,
    }
}

pub fn frame(kind: Kind) -> Frame {
    Frame { kind: Some(kind) }
}

// === impl Router ===

impl Router {
    pub fn new(cfg: Arc<GatewayConfig>, metrics: Arc<GatewayMetrics>) -> Self {
        let balancer_cfg = cfg.balancer.to_balancer_config();
        let traces = Arc::new(crate::trace_store::TraceStore::new(
            cfg.trace.to_settings(),
            metrics.trace.clone(),
        ));
        let taps = Arc::new(crate::tap::Taps::new(metrics.tap.clone()));
        Self {
            cfg: ArcSwap::new(cfg),
            balancer_cfg,
            metrics,
            table: ArcSwap::from_pointee(SubjectTable::default()),
            table_generation: AtomicU64::new(1),
            groups: Mutex::new(HashMap::new()),
            pending: (0..PENDING_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            pending_count: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            started: Instant::now(),
            draining: CancellationToken::new(),
            policy: ArcSwap::from_pointee(Policy::default()),
            policy_version: tokio::sync::watch::Sender::new(Policy::default().version),
            authenticated: Mutex::new(HashMap::new()),
            key_sessions: Mutex::new(HashMap::new()),
            remote: std::sync::OnceLock::new(),
            key_limiters: Default::default(),
            taps,
            traces,
        }
    }

    /// Connects the router to other regions; current local interest (and the keys with
    /// sessions here) is announced at once.
    /// Only the first call has an effect.
    pub fn set_remote(&self, remote: Arc<dyn crate::remote::Remote>) {
        let groups = self.groups.lock();
        let keys = self.key_sessions.lock();
        if self.remote.set(remote.clone()).is_ok() {
            for (pattern, queue) in groups.keys() {
                remote.interest_changed(pattern, (!queue.is_empty()).then_some(&**queue), true);
            }
            for key in keys.keys() {
                remote.key_active_changed(key, true);
            }
        }
    }

    /// The running settings (a cheap guard; don't hold it across long waits).
    pub fn config(&self) -> arc_swap::Guard<Arc<GatewayConfig>> {
        self.cfg.load()
    }

    /// The configuration, to keep beyond a short borrow.
    pub fn config_full(&self) -> Arc<GatewayConfig> {
        self.cfg.load_full()
    }

    /// Applies a reloaded configuration (SIGHUP): the settings that can change while running
    /// ([`GatewayConfig::LIVE_SETTINGS`]) take effect at once, for the next session, request
    /// or delivery; the others keep their running values. Returns which settings changed and
    /// were applied, and which changed but need a restart.
    pub fn reload_config(
        &self,
        new: &GatewayConfig,
    ) -> Result<crate::config::Reloaded, crate::config::ConfigError> {
        let running = self.cfg.load_full();
        let (merged, reloaded) = running.merge_live(new)?;
        if !reloaded.applied.is_empty() {
            self.cfg.store(Arc::new(merged));
        }
        Ok(reloaded)
    }

    /// A fresh id, unique for the life of the gateway (connections, members, requests).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn pending_requests(&self) -> u64 {
        self.pending_count.load(Ordering::Relaxed)
    }

    /// Starts the drain: new sessions and unary calls are refused, and every open session
    /// tells its adapter to move (`GoAway`) while it keeps serving it.
    pub fn start_draining(&self) {
        self.draining.cancel();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Completes when the gateway starts draining (at once if it already has).
    pub fn drain_started(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.draining.cancelled()
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Every subscription group, for status output.
    pub fn groups(&self) -> Vec<Arc<Group>> {
        self.groups.lock().values().cloned().collect()
    }

    /// The federation hook, when this gateway is federated.
    pub fn remote(&self) -> Option<&Arc<dyn crate::remote::Remote>> {
        self.remote.get()
    }

    /// Where a message on `subject` published here would go now, and why (JSON).
    pub fn explain(&self, subject: &str) -> serde_json::Value {
        let mut local = Vec::new();
        self.table.load().for_each_match(subject, |g| {
            local.push(serde_json::json!({
                "pattern": &*g.pattern,
                "queue_group": g.queue.as_deref(),
                "members": g.members().len(),
            }));
        });
        let local_interest = !local.is_empty();
        serde_json::json!({
            "region": self.config().region,
            "gateway_id": self.config().gateway_id,
            "subject": subject,
            "local": local,
            "federation": self.remote.get().map(|r| r.explain(subject, local_interest)),
        })
    }

    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}
