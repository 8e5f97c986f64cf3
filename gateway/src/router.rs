//! `Router`: the gateway's shared routing state and the operations every session uses.
//!
//! - Subscriptions are grouped by (pattern, queue group) into `Group`s, indexed by a
//!   persistent `SubjectTable` that publishers read without locks (`ArcSwap`). Subscribing
//!   changes only the group's member list unless the group is new; those writes are
//!   serialised by one mutex that publishing never touches.
//! - A publish goes to every member of each matching plain group and to one member of each
//!   matching queue group, chosen by that group's `Balancer`.
//! - A request goes to one member of one matching group; its latency or failure feeds the
//!   balancer. Pending requests live in a sharded map keyed by a gateway sequence number,
//!   which is also the responder's reply inbox (`$nexus.inbox.<seq>`).
//! - Delivery applies the slow-consumer policy when a session's outbound budget is full.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use nexus_proto::ByteString;
use nexus_proto::v1::{self, ErrorCode, Frame, Header, frame::Kind};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::balancer::{Balancer, BalancerConfig, EjectReason, Ejection, MemberId};
use crate::config::{GatewayConfig, SlowConsumerPolicy};
use crate::connection::Connection;
use crate::metrics::{
    Direction, EjectionLabels, EjectionReason, GatewayMetrics, Pattern, RequestOutcome,
    SlowConsumerAction, SlowConsumerLabels,
};
use crate::outbound::EnqueueError;
use crate::policy::Policy;
use crate::subject_table::SubjectTable;
use crate::trace_store::{Event, Hop, Reason, Traced};

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

/// A message being published, shared by all its deliveries.
pub struct Delivery {
    pub subject: ByteString,
    pub reply_to: ByteString,
    pub headers: Vec<Header>,
    pub payload: Bytes,
    pub id: Bytes,
    /// Whether its hops are recorded in the trace store (sampled, or forced by the
    /// `nexus-trace` header; [`crate::trace_store`]).
    pub traced: bool,
}

/// The answer a requester gets.
pub type ReplyResult = Result<(Vec<Header>, Bytes), v1::Error>;

/// Where a request's answer goes.
pub enum Waiter {
    /// A session: the completion is sent to the session task, which owns the request timer.
    Session {
        tx: mpsc::UnboundedSender<Completion>,
        req_id: u64,
    },
    /// A unary `Request` call.
    Unary(oneshot::Sender<ReplyResult>),
}

impl Waiter {
    /// Hands request `seq`'s answer to whoever waits for it (gone waiters are ignored).
    fn finish(self, seq: u64, result: ReplyResult) {
        match self {
            Waiter::Session { tx, req_id } => {
                let _ = tx.send(Completion {
                    req_id,
                    seq,
                    result,
                });
            }
            Waiter::Unary(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

/// A finished request, delivered to the requesting session.
pub struct Completion {
    pub req_id: u64,
    pub seq: u64,
    pub result: ReplyResult,
}

struct Pending {
    waiter: Waiter,
    group: Arc<Group>,
    member: MemberId,
    responder: Arc<Connection>,
    started: Instant,
    /// The request's trace handle when it is traced.
    traced: Option<Traced>,
}

/// Why a request could not be routed.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("no responders for subject {0:?}")]
    NoResponders(String),
}

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

pub struct Router {
    /// The running settings; [`Router::reload_config`] swaps in the live-reloadable ones.
    cfg: ArcSwap<GatewayConfig>,
    balancer_cfg: BalancerConfig,
    pub metrics: Arc<GatewayMetrics>,
    table: ArcSwap<SubjectTable<Arc<Group>>>,
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
    /// Sessions that authenticated with a key, re-checked whenever the policy changes.
    authenticated: Mutex<HashMap<u64, std::sync::Weak<Connection>>>,
    /// Other regions, when federation is configured.
    remote: std::sync::OnceLock<Arc<dyn crate::remote::Remote>>,
    /// Per-key rate limits, from the policy's keys.
    pub key_limiters: crate::key_limits::KeyLimiters,
    /// What happened to sampled messages at this gateway (`nexusctl trace`).
    pub traces: Arc<crate::trace_store::TraceStore>,
}

/// Whether `group` is not one of the queue groups in `taken` (plain groups never are).
fn not_taken(group: &Group, taken: &[String]) -> bool {
    group
        .queue
        .as_deref()
        .is_none_or(|q| !taken.iter().any(|t| t == q))
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

// === impl Group ===

impl Group {
    pub fn members(&self) -> arc_swap::Guard<Arc<Vec<Arc<Member>>>> {
        self.members.load()
    }

    pub fn is_queue(&self) -> bool {
        self.queue.is_some()
    }

    /// Chooses one member with the balancer; `None` when the group is empty.
    fn pick(&self, now: Instant) -> Option<Arc<Member>> {
        let members = self.members.load();
        match members.len() {
            0 => return None,
            1 => return Some(members[0].clone()),
            _ => {}
        }
        let id = {
            let mut rng = rand::rng();
            let depth = |id: MemberId| {
                members
                    .iter()
                    .find(|m| m.id == id)
                    .map_or(0, |m| m.conn.outbound.depth())
            };
            self.balancer.lock().pick(now.into_std(), &mut rng, depth)?
        };
        members.iter().find(|m| m.id == id).cloned()
    }

    /// What `member` costs now (its estimate; its requests in flight plus queued frames).
    pub fn cost_of(&self, member: &Member, now: Instant) -> Option<crate::balancer::GroupCost> {
        self.balancer
            .lock()
            .cost_of(member.id, now.into_std(), member.conn.outbound.depth())
    }

    /// The cheapest member's cost now; `None` when the group is empty.
    pub fn cheapest(&self, now: Instant) -> Option<crate::balancer::GroupCost> {
        let members = self.members.load();
        let depth = |id: MemberId| {
            members
                .iter()
                .find(|m| m.id == id)
                .map_or(0, |m| m.conn.outbound.depth())
        };
        self.balancer.lock().cheapest(now.into_std(), depth)
    }

    /// Balancer state for metrics and debugging.
    pub fn balancer_snapshot(&self) -> Vec<crate::balancer::MemberSnapshot> {
        self.balancer.lock().snapshot(Instant::now().into_std())
    }
}

// === impl Router ===

impl Router {
    pub fn new(cfg: Arc<GatewayConfig>, metrics: Arc<GatewayMetrics>) -> Self {
        let balancer_cfg = cfg.balancer.to_balancer_config();
        let traces = Arc::new(crate::trace_store::TraceStore::new(
            cfg.trace.to_settings(),
            metrics.trace.clone(),
        ));
        Self {
            cfg: ArcSwap::new(cfg),
            balancer_cfg,
            metrics,
            table: ArcSwap::from_pointee(SubjectTable::default()),
            groups: Mutex::new(HashMap::new()),
            pending: (0..PENDING_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            pending_count: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            started: Instant::now(),
            draining: CancellationToken::new(),
            policy: ArcSwap::from_pointee(Policy::default()),
            authenticated: Mutex::new(HashMap::new()),
            remote: std::sync::OnceLock::new(),
            key_limiters: Default::default(),
            traces,
        }
    }

    /// Connects the router to other regions; current local interest is announced at once.
    /// Only the first call has an effect.
    pub fn set_remote(&self, remote: Arc<dyn crate::remote::Remote>) {
        let groups = self.groups.lock();
        if self.remote.set(remote.clone()).is_ok() {
            for (pattern, queue) in groups.keys() {
                remote.interest_changed(pattern, (!queue.is_empty()).then_some(&**queue), true);
            }
        }
    }

    // --- policy: keys, scopes, schemas ---

    pub fn auth_required(&self) -> bool {
        self.cfg.load().auth == crate::config::AuthMode::Required
    }

    pub fn policy(&self) -> arc_swap::Guard<Arc<Policy>> {
        self.policy.load()
    }

    /// Installs a new policy and re-checks every authenticated session against it: a
    /// session whose key was revoked, expired or deleted is closed at once; the others
    /// get their (possibly changed) scopes.
    pub fn apply_policy(&self, policy: Policy) {
        self.metrics.config_version.set(policy.version);
        self.metrics.config_updates.inc();
        let cfg = self.cfg.load();
        let share = policy.region_gateways(&cfg.region, &cfg.gateway_id);
        self.key_limiters.update(policy.key_limits(), share);
        self.policy.store(Arc::new(policy));
        self.recheck_sessions(crate::policy_now_ms());
    }

    /// Re-checks authenticated sessions (also run periodically, for expiry).
    pub fn recheck_sessions(&self, now_ms: i64) {
        let policy = self.policy.load();
        let mut sessions = self.authenticated.lock();
        sessions.retain(|_, weak| {
            let Some(conn) = weak.upgrade() else {
                return false;
            };
            let Some(grant) = conn.grant.load_full() else {
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
                    false
                }
            }
        });
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

    pub fn track_authenticated(&self, conn: &Arc<Connection>) {
        self.authenticated
            .lock()
            .insert(conn.id, Arc::downgrade(conn));
    }

    pub fn untrack(&self, conn: &Connection) {
        self.authenticated.lock().remove(&conn.id);
    }

    /// Checks a payload against the subject's enforced schema. `Err` carries the message
    /// for a rejected publisher; violations under `warn` are logged and counted only.
    pub fn check_schema(&self, subject: &str, payload: &[u8]) -> Result<(), String> {
        let policy = self.policy.load();
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

    /// The running settings (a cheap guard; don't hold it across long waits).
    pub fn config(&self) -> arc_swap::Guard<Arc<GatewayConfig>> {
        self.cfg.load()
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

    // --- message tracing ---

    /// Records a hop of `msg` in the trace store when the message is traced; `hop` is only
    /// built then.
    pub fn trace(&self, msg: &Delivery, hop: impl FnOnce() -> Hop) {
        if msg.traced
            && let Some(t) = Traced::new(&msg.id, &msg.headers, &msg.subject)
        {
            self.traces.record(&t, crate::trace_store::now_us(), hop());
        }
    }

    /// Records a hop of a traced message through its handle.
    pub fn trace_hop(&self, traced: Option<&Traced>, hop: impl FnOnce() -> Hop) {
        if let Some(t) = traced {
            self.traces.record(t, crate::trace_store::now_us(), hop());
        }
    }

    /// Records that a traced message passed its subject's enforced schema, or violated it
    /// under `warn` enforcement (nothing when the subject has none). Validates again: only
    /// traced messages come here.
    pub fn trace_schema_passed(&self, traced: Option<&Traced>, subject: &str, payload: &[u8]) {
        let policy = self.policy.load();
        if let Some(enforced) = policy.schemas.get(subject) {
            self.trace_hop(traced, || {
                let checked = format!(
                    "payload checked against schema {subject:?} version {}",
                    enforced.version
                );
                match enforced.schema.validate(payload) {
                    Ok(()) => Hop::new(Event::Schema).reason(Reason::Ok).detail(checked),
                    Err(v) => Hop::new(Event::Schema)
                        .reason(Reason::Warned)
                        .detail(format!(
                            "{checked}: {} violation(s), delivered anyway (enforcement warn){}",
                            v.len(),
                            v.first()
                                .map(|v| format!(", first: {} {}", v.path, v.message))
                                .unwrap_or_default()
                        )),
                }
            });
        }
    }

    /// The records of message `id` this gateway holds, as JSON (`/v1/trace`).
    pub fn trace_records(&self, records: &[crate::trace_store::Record]) -> serde_json::Value {
        let cfg = self.config();
        serde_json::Value::Array(
            records
                .iter()
                .map(|r| crate::trace_store::to_json(r, &cfg.region, &cfg.gateway_id))
                .collect(),
        )
    }

    // --- subscriptions ---

    pub fn subscribe(
        &self,
        conn: &Arc<Connection>,
        sid: u64,
        pattern: &str,
        queue: &str,
    ) -> Subscription {
        let key: GroupKey = (pattern.into(), queue.into());
        let member = Arc::new(Member {
            id: self.next_id(),
            sid,
            conn: conn.clone(),
        });
        let now = Instant::now().into_std();
        let mut groups = self.groups.lock();
        let group = match groups.get(&key) {
            Some(group) => group.clone(),
            None => {
                let group = Arc::new(Group {
                    pattern: pattern.into(),
                    queue: (!queue.is_empty()).then(|| queue.into()),
                    members: ArcSwap::from_pointee(Vec::new()),
                    balancer: Mutex::new(Balancer::new(self.balancer_cfg.clone())),
                });
                groups.insert(key, group.clone());
                if let Some(remote) = self.remote.get() {
                    remote.interest_changed(pattern, (!queue.is_empty()).then_some(queue), true);
                }
                let table = self.table.load();
                self.table
                    .store(Arc::new(table.insert(pattern, group.clone())));
                group
            }
        };
        let mut members = Vec::clone(&group.members.load());
        members.push(member.clone());
        group.members.store(Arc::new(members));
        group.balancer.lock().add(member.id, now);
        self.metrics.subscriptions.inc();
        Subscription {
            group,
            member: member.id,
        }
    }

    pub fn unsubscribe(&self, sub: &Subscription) {
        let mut groups = self.groups.lock();
        let group = &sub.group;
        let mut members = Vec::clone(&group.members.load());
        let before = members.len();
        members.retain(|m| m.id != sub.member);
        if members.len() == before {
            return;
        }
        self.metrics.subscriptions.dec();
        group.balancer.lock().remove(sub.member);
        let empty = members.is_empty();
        group.members.store(Arc::new(members));
        if empty {
            let key: GroupKey = (
                group.pattern.clone(),
                group.queue.clone().unwrap_or_default(),
            );
            groups.remove(&key);
            if let Some(remote) = self.remote.get() {
                remote.interest_changed(&group.pattern, group.queue.as_deref(), false);
            }
            let table = self.table.load();
            let (table, _) = table.remove(&group.pattern, |g| Arc::ptr_eq(g, group));
            self.table.store(Arc::new(table));
        }
    }

    /// Groups whose pattern matches `subject`.
    pub fn matching_groups(&self, subject: &str, out: &mut Vec<Arc<Group>>) {
        self.table
            .load()
            .for_each_match(subject, |g| out.push(g.clone()));
    }

    // --- publish ---

    /// Routes a message to every matching subscription and hands it to the federation hook;
    /// returns how many local subscriptions received it, and what federation did with it
    /// (with the receipt to wait for before acknowledging the publisher when the subject's
    /// route replicates durably). A duplicate of a message federation already accepted is
    /// delivered nowhere.
    /// The last delivery takes the message's strings by move, so a message with one
    /// subscriber is routed without copying anything.
    pub async fn publish(
        &self,
        msg: Delivery,
        scratch: &mut Vec<Arc<Member>>,
    ) -> (u32, crate::remote::PublishOutcome) {
        let mut outcome = self.offer(&msg, scratch);
        if let Some(stored) = outcome.stored.take() {
            scratch.clear();
            if !matches!(stored.await, Ok(Ok(()))) {
                // Not stored: delivered nowhere; the receipt carries the error.
                return (0, outcome);
            }
            let taken = std::mem::take(&mut outcome.taken_groups);
            let delivered = self.deliver_local(msg, scratch, &taken).await;
            outcome.taken_groups = taken;
            return (delivered, outcome);
        }
        (self.deliver_collected(msg, scratch).await, outcome)
    }

    /// The first half of [`Router::publish`], for a caller that keeps its own order of
    /// deliveries: hands `msg` to federation and collects its local subscribers into
    /// `scratch`. When the outcome's `stored` is set, `scratch` is cleared and the caller
    /// delivers with [`Router::deliver_local`] once it resolves; otherwise it delivers to
    /// `scratch` with [`Router::deliver_collected`] (nothing, for a duplicate).
    pub fn offer(
        &self,
        msg: &Delivery,
        scratch: &mut Vec<Arc<Member>>,
    ) -> crate::remote::PublishOutcome {
        self.collect_members(&msg.subject, scratch, |_| true);
        let outcome = match self.remote.get() {
            Some(remote) => remote.publish(msg, !scratch.is_empty()),
            None => {
                if scratch.is_empty() {
                    self.trace(msg, || {
                        Hop::new(Event::Dropped).reason(Reason::NoInterest).detail(
                            "no subscription matches its subject (this gateway has no federation)",
                        )
                    });
                }
                Default::default()
            }
        };
        if outcome.duplicate || outcome.stored.is_some() {
            scratch.clear();
        } else if !outcome.taken_groups.is_empty() {
            // A cluster peer takes some of the local queue groups' message: collect again
            // without them (rare enough not to track which member came from which group).
            self.collect_members(&msg.subject, scratch, |g| {
                not_taken(g, &outcome.taken_groups)
            });
        }
        outcome
    }

    /// Delivers a message published here, once stored, to the local subscribers it has now,
    /// but for the queue groups a cluster peer took (`taken`, from the publish's outcome).
    pub async fn deliver_local(
        &self,
        msg: Delivery,
        scratch: &mut Vec<Arc<Member>>,
        taken: &[String],
    ) -> u32 {
        self.collect_members(&msg.subject, scratch, |g| not_taken(g, taken));
        self.deliver_collected(msg, scratch).await
    }

    /// Delivers a message that came from another region to local subscribers only: plain
    /// subscriptions if `plain`, and only the queue groups named in `queue_groups` (the
    /// sending region chose this region for those; it never forwards again).
    pub async fn deliver_from_region(
        &self,
        msg: Delivery,
        plain: bool,
        queue_groups: &[String],
    ) -> u32 {
        let mut msg = msg;
        msg.traced = self.traces.sampled(&msg.id, &msg.headers);
        let mut scratch = Vec::new();
        self.collect_members(&msg.subject, &mut scratch, |group| match &group.queue {
            Some(q) => queue_groups.iter().any(|g| **g == **q),
            None => plain,
        });
        self.deliver_collected(msg, &mut scratch).await
    }

    /// Names of the local queue groups with members matching `subject`.
    pub fn local_queue_groups(&self, subject: &str) -> Vec<String> {
        let mut out = Vec::new();
        self.table.load().for_each_match(subject, |g| {
            if let Some(q) = &g.queue
                && !g.members().is_empty()
                && !out.iter().any(|o: &String| **o == **q)
            {
                out.push(q.to_string());
            }
        });
        out
    }

    /// What the local queue group `queue` costs for a message on `subject`: its cheapest
    /// member (the lowest over the matching patterns that share the group name); `None` when
    /// no local member matches. For the choice between this gateway and the region's other
    /// gateways, asked only for groups that other gateways have members of.
    pub fn local_queue_cost(
        &self,
        subject: &str,
        queue: &str,
    ) -> Option<crate::balancer::GroupCost> {
        let now = Instant::now();
        let cost =
            |c: &crate::balancer::GroupCost| c.estimate.as_secs_f64() * (f64::from(c.load) + 1.0);
        let mut best: Option<crate::balancer::GroupCost> = None;
        self.table.load().for_each_match(subject, |g| {
            if g.queue.as_deref() != Some(queue) {
                return;
            }
            if let Some(c) = g.cheapest(now)
                && best.as_ref().is_none_or(|b| cost(&c) < cost(b))
            {
                best = Some(c);
            }
        });
        best
    }

    /// The members a message on `subject` goes to: every member of plain groups, one
    /// balancer-chosen member of each queue group.
    /// Only groups for which `wanted` is true are considered.
    fn collect_members(
        &self,
        subject: &str,
        scratch: &mut Vec<Arc<Member>>,
        wanted: impl Fn(&Group) -> bool,
    ) {
        scratch.clear();
        // The clock is read only when a queue group's balancer needs it: plain
        // subscriptions (the common case) never do, and `clock_gettime` per message was
        // ~2 % of the pub/sub profile.
        let mut now = None;
        let table = self.table.load();
        table.for_each_match(subject, |group| {
            if !wanted(group) {
                return;
            }
            if group.is_queue() {
                let now = *now.get_or_insert_with(Instant::now);
                if let Some(m) = group.pick(now) {
                    self.metrics.balancer_picks.inc();
                    scratch.push(m);
                }
            } else {
                scratch.extend(group.members.load().iter().cloned());
            }
        });
    }

    /// Queues a message for each of `scratch`'s members. Under `backpressure`, the members
    /// whose budget is full are waited for *together*, after the others were served: one
    /// publish is delayed by at most `slow_consumer.max_wait_ms` however many subscribers are
    /// slow (waiting for them one after another made ten non-reading subscribers freeze a
    /// publisher for ten times that), and each one still full then is disconnected.
    /// Delivers a message to the local subscribers collected in `scratch` (by
    /// [`Router::offer`] or `collect_members`).
    pub async fn deliver_collected(&self, msg: Delivery, scratch: &mut Vec<Arc<Member>>) -> u32 {
        let payload_len = msg.payload.len();
        let size = message_size(&msg.subject, &msg.reply_to, &msg.headers, payload_len);
        let traced = if msg.traced {
            Traced::new(&msg.id, &msg.headers, &msg.subject)
        } else {
            None
        };
        let mut msg = Some(msg);
        let mut delivered = 0;
        let mut full: Vec<(Arc<Connection>, u64, Frame, u32)> = Vec::new();
        let count = scratch.len();
        for (i, member) in scratch.drain(..).enumerate() {
            let m = if i + 1 == count {
                let Some(m) = msg.take() else { break };
                v1::Msg {
                    sid: member.sid,
                    subject: m.subject,
                    reply_to: m.reply_to,
                    headers: m.headers,
                    payload: m.payload,
                    id: m.id,
                    deadline_ms: 0,
                }
            } else {
                let Some(m) = msg.as_ref() else { break };
                v1::Msg {
                    sid: member.sid,
                    subject: m.subject.clone(),
                    reply_to: m.reply_to.clone(),
                    headers: m.headers.clone(),
                    payload: m.payload.clone(),
                    id: m.id.clone(),
                    deadline_ms: 0,
                }
            };
            match self.offer_frame(&member.conn, frame(Kind::Msg(m)), size, Some(member.sid)) {
                Offer::Queued => {
                    self.metrics
                        .traffic(Pattern::Pub, Direction::Out, payload_len);
                    delivered += 1;
                    self.trace_delivery(traced.as_ref(), &member.conn, member.sid, true);
                }
                Offer::Refused => {
                    self.trace_delivery(traced.as_ref(), &member.conn, member.sid, false)
                }
                Offer::Wait(frame, cost) => {
                    full.push((member.conn.clone(), member.sid, frame, cost))
                }
            }
        }
        if !full.is_empty() {
            let waits = full.into_iter().map(|(conn, sid, frame, cost)| async move {
                let queued = self.wait_or_disconnect(&conn, frame, cost).await;
                (conn, sid, queued)
            });
            for (conn, sid, queued) in futures::future::join_all(waits).await {
                if queued {
                    self.metrics
                        .traffic(Pattern::Pub, Direction::Out, payload_len);
                    delivered += 1;
                }
                self.trace_delivery(traced.as_ref(), &conn, sid, queued);
            }
        }
        delivered
    }

    /// Records that a traced message was queued for subscription `sid` of `conn`, or not.
    fn trace_delivery(&self, traced: Option<&Traced>, conn: &Connection, sid: u64, queued: bool) {
        self.trace_hop(traced, || {
            let peer = format!("session {} {:?} sid {sid}", conn.id, &*conn.name.lock());
            if queued {
                Hop::new(Event::Delivered).peer(peer).count(1)
            } else {
                Hop::new(Event::Dropped)
                    .reason(Reason::SlowConsumer)
                    .peer(peer)
                    .detail(format!(
                        "not queued: the subscriber's session is closed or its outbound budget was full (slow_consumer.policy {})",
                        self.cfg.load().slow_consumer.policy.as_str()
                    ))
            }
        })
    }

    /// Queues a message if its receiver's budget has room, else applies the slow-consumer
    /// policy without waiting: `Wait` hands the frame back when the policy is
    /// `backpressure`, for the caller to wait for room.
    fn offer_frame(
        &self,
        conn: &Arc<Connection>,
        frame: Frame,
        size: usize,
        sid: Option<u64>,
    ) -> Offer {
        let cost = conn.outbound.cost(size);
        let frame = match conn.outbound.try_send(frame, cost) {
            Ok(()) => return Offer::Queued,
            Err(EnqueueError::Closed) => return Offer::Refused,
            Err(EnqueueError::Full(frame)) => frame,
        };
        let policy = self.cfg.load().slow_consumer.policy;
        match policy {
            SlowConsumerPolicy::Drop => {
                self.slow_consumer_event(SlowConsumerAction::Dropped);
                self.notify_slow_consumer(conn, sid.unwrap_or(0));
                Offer::Refused
            }
            SlowConsumerPolicy::Disconnect => {
                self.disconnect_slow_consumer(conn);
                Offer::Refused
            }
            SlowConsumerPolicy::Backpressure => Offer::Wait(frame, cost),
        }
    }

    /// Queues a message for a subscriber, applying the slow-consumer policy when its budget
    /// is full. `size` is from `message_size`. Returns whether the frame was queued.
    pub async fn deliver(
        &self,
        conn: &Arc<Connection>,
        frame: Frame,
        size: usize,
        sid: Option<u64>,
    ) -> bool {
        match self.offer_frame(conn, frame, size, sid) {
            Offer::Queued => true,
            Offer::Refused => false,
            Offer::Wait(frame, cost) => self.wait_or_disconnect(conn, frame, cost).await,
        }
    }

    /// Queues a frame the receiver asked for (a reply to its request, stream data within
    /// the credit it granted): never dropped under any policy. When the budget is full it
    /// waits up to `slow_consumer.max_wait_ms`, then closes the receiver as a slow consumer
    /// and returns false.
    pub async fn deliver_owed(&self, conn: &Arc<Connection>, frame: Frame, size: usize) -> bool {
        let cost = conn.outbound.cost(size);
        match conn.outbound.try_send(frame, cost) {
            Ok(()) => true,
            Err(EnqueueError::Closed) => false,
            Err(EnqueueError::Full(frame)) => self.wait_or_disconnect(conn, frame, cost).await,
        }
    }

    /// Waits up to `slow_consumer.max_wait_ms` for room in a full budget; if none came,
    /// closes the receiver as a slow consumer. Returns whether the frame was queued.
    async fn wait_or_disconnect(&self, conn: &Arc<Connection>, frame: Frame, cost: u32) -> bool {
        self.slow_consumer_event(SlowConsumerAction::Waited);
        let wait = Duration::from_millis(self.cfg.load().slow_consumer.max_wait_ms);
        match conn.outbound.send_wait(frame, cost, wait).await {
            Ok(()) => true,
            Err(EnqueueError::Closed) => false,
            Err(EnqueueError::Full(_)) => {
                self.disconnect_slow_consumer(conn);
                false
            }
        }
    }

    fn slow_consumer_event(&self, action: SlowConsumerAction) {
        self.metrics
            .slow_consumer
            .get_or_create(&SlowConsumerLabels { action })
            .inc();
    }

    fn disconnect_slow_consumer(&self, conn: &Arc<Connection>) {
        if conn.outbound.is_closed() {
            return;
        }
        self.slow_consumer_event(SlowConsumerAction::Disconnected);
        tracing::warn!(conn = conn.id, name = %nexus_proto::text::Escaped(&conn.name.lock()), "disconnecting slow consumer");
        let cfg = self.cfg.load();
        conn.outbound.close(Some(tonic::Status::resource_exhausted(format!(
            "slow consumer: more than slow_consumer.max_pending_bytes ({} bytes) queued for this session for longer than {} ms (policy {})",
            cfg.slow_consumer.max_pending_bytes,
            cfg.slow_consumer.max_wait_ms,
            cfg.slow_consumer.policy.as_str(),
        ))));
    }

    /// Tells a subscriber that messages were dropped for it, at most once a second, as a
    /// control frame (so the notice itself is never dropped).
    fn notify_slow_consumer(&self, conn: &Arc<Connection>, sid: u64) {
        let now = self.elapsed_ms().max(1);
        let last = conn.last_slow_notice_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < 1000 {
            return;
        }
        conn.last_slow_notice_ms.store(now, Ordering::Relaxed);
        let f = frame(Kind::Error(error(
            ErrorCode::SlowConsumer,
            format!(
                "messages for subscription {sid} were dropped: more than slow_consumer.max_pending_bytes ({} bytes) queued (policy drop)",
                self.cfg.load().slow_consumer.max_pending_bytes
            ),
            sid,
        )));
        conn.outbound.send_control(f);
    }

    // --- requests ---

    /// Picks a responder for `subject` and delivers the request to it. The answer arrives
    /// through `waiter`; the returned sequence number identifies the request for `timeout`.
    #[allow(clippy::too_many_arguments)]
    pub async fn request(
        &self,
        waiter: Waiter,
        subject: &str,
        headers: Vec<Header>,
        payload: Bytes,
        id: Bytes,
        timeout: Duration,
    ) -> Result<u64, (Waiter, RouteError)> {
        self.request_inner(waiter, subject, headers, payload, id, timeout, true)
            .await
    }

    /// A request that arrived from another region: served by local responders only, so a
    /// request crosses at most one region hop and can never loop.
    pub async fn request_from_region(
        &self,
        waiter: Waiter,
        subject: &str,
        headers: Vec<Header>,
        payload: Bytes,
        id: Bytes,
        timeout: Duration,
    ) -> Result<u64, (Waiter, RouteError)> {
        self.request_inner(waiter, subject, headers, payload, id, timeout, false)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn request_inner(
        &self,
        waiter: Waiter,
        subject: &str,
        headers: Vec<Header>,
        payload: Bytes,
        id: Bytes,
        timeout: Duration,
        allow_remote: bool,
    ) -> Result<u64, (Waiter, RouteError)> {
        let now = Instant::now();
        let traced = if self.traces.sampled(&id, &headers) {
            Traced::new(&id, &headers, &ByteString::from(subject))
        } else {
            None
        };
        let remote = if allow_remote {
            self.remote.get()
        } else {
            None
        };
        // A route pinned (or weighted) to other regions sends requests there even when this
        // region has responders; otherwise a local responder, unless another gateway of the
        // region is cheaper (the gateway balancer, hop included).
        let remote_first = remote.is_some_and(|r| r.prefers_remote_responders(subject));
        let mut picked = if remote_first {
            None
        } else {
            self.pick_responder(subject, now)
        };
        let (mut headers, mut payload) = (headers, payload);
        if let Some(remote) = remote {
            let local = picked.as_ref().and_then(|(g, m)| g.cost_of(m, now));
            if picked.is_none() || local.is_some() {
                match remote.request(subject, &id, headers, payload, timeout, local) {
                    Ok(rx) => {
                        return Ok(self.await_remote(waiter, rx, timeout, now, traced));
                    }
                    Err((h, p)) => (headers, payload) = (h, p),
                }
            }
            if remote_first {
                // The preferred regions are unreachable: local responders after all.
                picked = self.pick_responder(subject, now);
            }
        }
        let Some((group, member)) = picked else {
            self.trace_hop(traced.as_ref(), || {
                Hop::new(Event::Dropped)
                    .reason(Reason::NoInterest)
                    .detail("no responder for its subject at this gateway")
            });
            self.metrics.request_done(RequestOutcome::NoResponders);
            return Err((waiter, RouteError::NoResponders(subject.to_owned())));
        };
        let seq = self.next_id();
        self.trace_hop(traced.as_ref(), || {
            let of = match group.queue.as_deref() {
                Some(q) => format!("queue group {q:?} of {}", group.pattern),
                None => format!("subscription to {}", group.pattern),
            };
            Hop::new(Event::RequestRouted).peer(format!(
                "session {} {:?} sid {} ({of})",
                member.conn.id,
                &*member.conn.name.lock(),
                member.sid,
            ))
        });
        member.conn.serving.lock().insert(seq);
        group.balancer.lock().start(member.id);
        self.pending_shard(seq).lock().insert(
            seq,
            Pending {
                waiter,
                group: group.clone(),
                member: member.id,
                responder: member.conn.clone(),
                started: now,
                traced,
            },
        );
        self.pending_count.fetch_add(1, Ordering::Relaxed);
        let payload_len = payload.len();
        let reply_to = format!("{INBOX_PREFIX}{seq}");
        let size = message_size(subject, &reply_to, &headers, payload_len);
        let f = frame(Kind::Msg(v1::Msg {
            sid: member.sid,
            subject: subject.into(),
            reply_to: reply_to.into(),
            headers,
            payload,
            id,
            deadline_ms: timeout.as_millis().min(u32::MAX as u128) as u32,
        }));
        if self.deliver(&member.conn, f, size, Some(member.sid)).await {
            self.metrics
                .traffic(Pattern::Request, Direction::Out, payload_len);
        } else {
            self.complete(
                seq,
                None,
                Err(error(
                    ErrorCode::ServiceError,
                    "the chosen responder could not take the request (its session closed or is a slow consumer)",
                    0,
                )),
            );
        }
        Ok(seq)
    }

    /// Waits in a task for the answer to a request another gateway or region took, and
    /// completes `waiter` with it; returns the request's sequence number.
    fn await_remote(
        &self,
        waiter: Waiter,
        rx: tokio::sync::oneshot::Receiver<ReplyResult>,
        timeout: Duration,
        started: Instant,
        traced: Option<Traced>,
    ) -> u64 {
        let seq = self.next_id();
        let metrics = self.metrics.clone();
        let traces = traced.map(|t| (t, self.traces.clone()));
        tokio::spawn(async move {
            let result = match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(error(
                    ErrorCode::ServiceError,
                    "the federation link went away before the reply",
                    0,
                )),
                Err(_) => Err(error(ErrorCode::Timeout, "request timed out", 0)),
            };
            metrics.request_done(match &result {
                Ok(_) => RequestOutcome::Ok,
                Err(e) if e.code == ErrorCode::Timeout as i32 => RequestOutcome::Timeout,
                Err(e) if e.code == ErrorCode::NoResponders as i32 => RequestOutcome::NoResponders,
                Err(_) => RequestOutcome::ServiceError,
            });
            metrics
                .request_duration
                .observe(started.elapsed().as_secs_f64());
            if let Some((t, store)) = traces {
                store.record(
                    &t,
                    crate::trace_store::now_us(),
                    reply_hop(&result, started.elapsed()),
                );
            }
            waiter.finish(seq, result);
        });
        seq
    }

    /// One member of one group matching `subject`: a group chosen at random among the
    /// matching ones, then a member by that group's balancer.
    fn pick_responder(&self, subject: &str, now: Instant) -> Option<(Arc<Group>, Arc<Member>)> {
        let mut groups = Vec::new();
        self.matching_groups(subject, &mut groups);
        groups.retain(|g| !g.members.load().is_empty());
        while !groups.is_empty() {
            let i = if groups.len() == 1 {
                0
            } else {
                rand::Rng::random_range(&mut rand::rng(), 0..groups.len())
            };
            let group = groups.swap_remove(i);
            if let Some(member) = group.pick(now) {
                self.metrics.balancer_picks.inc();
                return Some((group, member));
            }
        }
        None
    }

    fn pending_shard(&self, seq: u64) -> &Mutex<HashMap<u64, Pending>> {
        &self.pending[(seq % PENDING_SHARDS as u64) as usize]
    }

    /// Parses the sequence number out of an inbox subject.
    pub fn inbox_seq(reply_to: &str) -> Option<u64> {
        reply_to.strip_prefix(INBOX_PREFIX)?.parse().ok()
    }

    /// Finishes request `seq`. `from` is the connection answering; a reply from any other
    /// connection than the one the request was given to is ignored (returns false).
    pub fn complete(&self, seq: u64, from: Option<u64>, result: ReplyResult) -> bool {
        let pending = {
            let mut shard = self.pending_shard(seq).lock();
            match shard.get(&seq) {
                Some(p) if from.is_none_or(|id| id == p.responder.id) => shard.remove(&seq),
                Some(_) => {
                    // An answer from a session the request was not given to.
                    self.metrics.protocol_errors.inc();
                    return false;
                }
                None => None,
            }
        };
        let Some(p) = pending else {
            if from.is_some() {
                self.metrics.late_replies.inc();
            }
            return false;
        };
        self.pending_count.fetch_sub(1, Ordering::Relaxed);
        p.responder.serving.lock().remove(&seq);
        let elapsed = p.started.elapsed();
        let now = Instant::now().into_std();
        let (outcome, ejection) = match &result {
            Ok(_) => (
                RequestOutcome::Ok,
                p.group.balancer.lock().success(p.member, elapsed, now),
            ),
            Err(e) if e.code == ErrorCode::Timeout as i32 => (
                RequestOutcome::Timeout,
                p.group.balancer.lock().failure(p.member, now),
            ),
            Err(_) => (
                RequestOutcome::ServiceError,
                p.group.balancer.lock().failure(p.member, now),
            ),
        };
        if let Some(ejection) = ejection {
            self.record_ejection(&p.group, &ejection);
        }
        self.metrics.request_done(outcome);
        self.metrics.request_duration.observe(elapsed.as_secs_f64());
        self.trace_hop(p.traced.as_ref(), || reply_hop(&result, elapsed));
        p.waiter.finish(seq, result);
        true
    }

    /// The requester went away: forget the request without charging the responder.
    pub fn cancel(&self, seq: u64) {
        let Some(p) = self.pending_shard(seq).lock().remove(&seq) else {
            return;
        };
        self.pending_count.fetch_sub(1, Ordering::Relaxed);
        p.responder.serving.lock().remove(&seq);
        p.group.balancer.lock().cancel(p.member);
        self.metrics.request_done(RequestOutcome::Cancelled);
    }

    fn record_ejection(&self, group: &Group, ejection: &Ejection) {
        let reason = match ejection.reason {
            EjectReason::ConsecutiveFailures => EjectionReason::ConsecutiveFailures,
            EjectReason::Latency => EjectionReason::Latency,
        };
        tracing::warn!(
            pattern = %group.pattern,
            queue = group.queue.as_deref().unwrap_or(""),
            member = ejection.member,
            period_ms = ejection.period.as_millis() as u64,
            ?reason,
            "balancer ejected a member"
        );
        self.metrics
            .balancer_ejections
            .get_or_create(&EjectionLabels { reason })
            .inc();
    }

    /// A session ended: fail the requests it was serving, so their requesters learn at once.
    pub fn connection_gone(&self, conn: &Arc<Connection>) {
        let serving: Vec<u64> = conn.serving.lock().drain().collect();
        for seq in serving {
            self.complete(
                seq,
                None,
                Err(error(
                    ErrorCode::ServiceError,
                    "the responder disconnected before answering",
                    0,
                )),
            );
        }
        crate::streams::connection_gone(self, conn);
    }

    /// Picks a responder for a stream open; shares the request path's choice.
    pub fn pick_stream_acceptor(&self, subject: &str) -> Option<(Arc<Group>, Arc<Member>)> {
        self.pick_responder(subject, Instant::now())
            .inspect(|(g, m)| g.balancer.lock().start(m.id))
    }

    pub fn stream_finished(&self, group: &Group, member: MemberId) {
        group.balancer.lock().cancel(member);
    }
}
/// The trace record of a request's answer.
fn reply_hop(result: &ReplyResult, elapsed: Duration) -> Hop {
    let hop = Hop::new(Event::Reply).latency_us(elapsed.as_micros() as u64);
    match result {
        Ok(_) => hop,
        Err(e) if e.code == ErrorCode::Timeout as i32 => {
            hop.reason(Reason::Timeout).detail(e.message.clone())
        }
        Err(e) => hop.reason(Reason::Error).detail(e.message.clone()),
    }
}

/// What [`Router::offer_frame`] did with a message.
enum Offer {
    Queued,
    /// Not queued: the session is closed, or the policy dropped it or cut the receiver off.
    Refused,
    /// The budget is full and the policy is `backpressure`: wait for room with this frame
    /// and cost.
    Wait(Frame, u32),
}
