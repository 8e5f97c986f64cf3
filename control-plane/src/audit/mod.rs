//! The audit trail: one record per change made through the Admin API, saying who made it
//! (admin key id or admin certificate name), from which address, what was called, on which
//! object, the object's store version before and after, and what changed.
//!
//! A record is written in the same store transaction as the change it describes
//! ([`Audited`] wraps the store an Admin call writes through and adds the record to every
//! transaction), so a change is never applied without its record and a change that fails
//! leaves none. Records sit under `/nexus/v1/audit/records/<sequence>`; the sequence counter
//! (`/nexus/v1/audit/sequence`) moves in the same transaction, guarded by its version, so
//! sequence numbers are gapless and follow the order in which changes were committed.
//!
//! The Admin API can only read the trail ([`query`]); nothing edits or deletes a record
//! except retention ([`retention`]), which drops the oldest beyond a count or an age.
//!
//! What a record never holds: secrets and their hashes ([`describe`] summarises a key by its
//! name, scopes, limits and state, and a rotation only as "secret rotated").

pub mod describe;
pub mod query;
pub mod retention;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nexus_proto::v1::AuditRecord;

use crate::names::{AUDIT_SEQUENCE, audit_key, now_ms};
use crate::records::encode;
use crate::store::{
    Compare, KeyValue, LeaseId, Op, Store, StoreError, Txn, TxnOutcome, WatchStream,
};

pub use retention::Retention;

/// Who is calling the Admin API, as its authentication established it. The admin
/// interceptor puts one in every authorised request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// An API key with the admin scope, by id.
    Key(String),
    /// An admin client certificate, by its admin name (`<name>.admin.nexus`).
    Certificate(String),
    /// Admin auth is off (`nexus dev`): nobody was identified.
    Anonymous,
    /// The control plane itself (the bootstrap admin key).
    ControlPlane,
}

impl Actor {
    pub fn kind(&self) -> &'static str {
        match self {
            Actor::Key(_) => "key",
            Actor::Certificate(_) => "certificate",
            Actor::Anonymous => "anonymous",
            Actor::ControlPlane => "control-plane",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Actor::Key(id) | Actor::Certificate(id) => id,
            Actor::Anonymous | Actor::ControlPlane => "",
        }
    }
}

/// The caller of one Admin API request: who and from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub actor: Actor,
    pub peer: Option<SocketAddr>,
}

impl Caller {
    /// The caller of `request`: the identity the admin interceptor recorded (anonymous when
    /// none did, as with admin auth off) and the connection's peer address.
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        let actor = request
            .extensions()
            .get::<Actor>()
            .cloned()
            .unwrap_or(Actor::Anonymous);
        Self {
            actor,
            peer: request.remote_addr(),
        }
    }
}

/// How often a change is retried when another change took the trail's next sequence number
/// (or changed the same object) between reading it and committing.
const MAX_ATTEMPTS: usize = 16;

/// A store whose every transaction also appends one audit record for `action` by `caller`.
/// Reads pass through. One is made per Admin call.
pub struct Audited {
    store: Arc<dyn Store>,
    caller: Caller,
    action: &'static str,
    retention: Retention,
}

impl Audited {
    pub fn new(
        store: Arc<dyn Store>,
        caller: Caller,
        action: &'static str,
        retention: Retention,
    ) -> Self {
        Self {
            store,
            caller,
            action,
            retention,
        }
    }

    /// The record of `txn`, as sequence `sequence`, given the records it changes as they are
    /// now (`before`, one per op).
    fn record(&self, sequence: u64, txn: &Txn, before: &[Option<KeyValue>]) -> AuditRecord {
        let change = describe::describe(&txn.ops, before);
        AuditRecord {
            sequence,
            revision: 0,
            time_ms: now_ms(),
            actor_kind: self.caller.actor.kind().to_owned(),
            actor: self.caller.actor.name().to_owned(),
            peer: self.caller.peer.map(|p| p.to_string()).unwrap_or_default(),
            action: self.action.to_owned(),
            target_kind: change.kind,
            target_name: change.name,
            before_version: change.before_version,
            after_version: change.after_version,
            summary: change.summary,
        }
    }

    /// Whether `compares` (the caller's own conditions) hold now.
    async fn holds(&self, compares: &[Compare]) -> Result<bool, StoreError> {
        for Compare::Version(key, version) in compares {
            let now = self.store.get(key).await?.map_or(0, |kv| kv.version);
            if now != *version {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// A short pause before retry `attempt`: growing, up to 64 ms, with jitter from the clock.
fn backoff(attempt: usize) -> Duration {
    let cap = 1u64 << attempt.min(6);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    Duration::from_micros(nanos % (cap * 1000) + 100)
}

/// Reads the trail's last sequence number and the counter's version (0: no record yet).
pub(crate) async fn last_sequence(store: &dyn Store) -> Result<(u64, i64), StoreError> {
    match store.get(AUDIT_SEQUENCE).await? {
        Some(kv) => {
            let text = std::str::from_utf8(&kv.value).unwrap_or("");
            let sequence = text.trim().parse::<u64>().map_err(|_| {
                StoreError::Internal(format!(
                    "{AUDIT_SEQUENCE} holds {text:?}, not a sequence number"
                ))
            })?;
            Ok((sequence, kv.version))
        }
        None => Ok((0, 0)),
    }
}

#[async_trait::async_trait]
impl Store for Audited {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.store.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), StoreError> {
        self.store.list(prefix).await
    }
    async fn range_page(
        &self,
        start: &str,
        end: &str,
        limit: usize,
        descending: bool,
    ) -> Result<Vec<KeyValue>, StoreError> {
        self.store.range_page(start, end, limit, descending).await
    }

    /// Applies `txn` with its audit record, or neither. The record's before versions are
    /// pinned by compares, so they are exactly what the change replaced; when only those
    /// pins (or the sequence counter) failed, because another change came in between, the
    /// change is read again and retried. When the caller's own compares fail, the outcome is
    /// the failure the caller would have seen without the trail.
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        if txn.ops.is_empty() {
            return self.store.txn(txn).await;
        }
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                // Concurrent writers that collided retry at spread-out moments.
                tokio::time::sleep(backoff(attempt)).await;
            }
            let mut before = Vec::with_capacity(txn.ops.len());
            for op in &txn.ops {
                before.push(self.store.get(op.key()).await?);
            }
            let (last, counter_version) = last_sequence(&*self.store).await?;
            let sequence = last + 1;
            let mut audited = txn.clone();
            for (op, kv) in txn.ops.iter().zip(&before) {
                let version = kv.as_ref().map_or(0, |kv| kv.version);
                audited = audited.when(Compare::Version(op.key().to_owned(), version));
            }
            audited = audited
                .when(Compare::Version(AUDIT_SEQUENCE.to_owned(), counter_version))
                .then(Op::put(AUDIT_SEQUENCE, sequence.to_string()))
                .then(Op::put(
                    audit_key(sequence),
                    encode(&self.record(sequence, &txn, &before)),
                ));
            // The count bound holds exactly: each record pushes the one `max_records` older out.
            if self.retention.max_records > 0
                && let Some(dropped) = sequence.checked_sub(self.retention.max_records)
                && dropped > 0
            {
                audited = audited.then(Op::delete(audit_key(dropped)));
            }
            let outcome = self.store.txn(audited).await?;
            if outcome.succeeded || !self.holds(&txn.compares).await? {
                return Ok(outcome);
            }
        }
        Err(StoreError::Unavailable(format!(
            "the change conflicted with concurrent changes {MAX_ATTEMPTS} times; retry it"
        )))
    }

    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream, StoreError> {
        self.store.watch(prefix, from_revision).await
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.store.grant_lease(ttl).await
    }
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.store.keep_alive(lease).await
    }
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.store.revoke_lease(lease).await
    }
    async fn revision(&self) -> Result<i64, StoreError> {
        self.store.revision().await
    }
}
