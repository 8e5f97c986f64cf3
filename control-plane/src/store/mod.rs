//! `Store`: the control plane's durable key-value state, with two backends.
//!
//! - [`etcd::EtcdStore`]: production, a real etcd cluster (3.4+).
//! - [`embedded::EmbeddedStore`]: a single-node file-backed store (redb) so `nexus dev` needs
//!   nothing installed.
//!
//! Both offer the same small model, which is etcd's: keys are strings, every change bumps a
//! store-wide revision, each key has a version (1 on creation, +1 per change, 0 = absent),
//! multi-key changes are transactions guarded by version comparisons (compare-and-swap),
//! keys may be attached to leases that expire unless kept alive, and a watch streams every
//! change under a prefix from a given revision. One conformance suite
//! (`control-plane/tests/store_conformance.rs`) runs against both.

pub mod embedded;
pub mod etcd;
/// The generated etcd v3 client (public for tests that set etcd up, such as its users).
#[doc(hidden)]
pub mod etcd_api;

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;

/// Largest value accepted by either backend (etcd's default request limit is 1.5 MiB).
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Longest key accepted.
pub const MAX_KEY_BYTES: usize = 1024;

/// A lease id; keys attached to a lease are deleted when it expires or is revoked.
pub type LeaseId = i64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    /// 1 when created, +1 on every change.
    pub version: i64,
    /// Store revision of the last change to this key.
    pub mod_revision: i64,
    /// Lease the key is attached to, 0 for none.
    pub lease: LeaseId,
}

/// A condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's version equals this (0: the key does not exist).
    Version(String, i64),
}

/// A change in a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Bytes,
        lease: Option<LeaseId>,
    },
    Delete {
        key: String,
    },
}

impl Op {
    pub fn put(key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }

    pub fn delete(key: impl Into<String>) -> Self {
        Op::Delete { key: key.into() }
    }

    /// The key the op writes.
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
}

/// All `compares` hold => every op is applied atomically; otherwise nothing is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn when(mut self, c: Compare) -> Self {
        self.compares.push(c);
        self
    }

    pub fn then(mut self, op: Op) -> Self {
        self.ops.push(op);
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnOutcome {
    /// Whether the compares held and the ops were applied.
    pub succeeded: bool,
    /// Store revision after the transaction.
    pub revision: i64,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KeyValue),
    Delete { key: String, revision: i64 },
}

impl WatchEvent {
    pub fn revision(&self) -> i64 {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { revision, .. } => *revision,
        }
    }

    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }
}

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, StoreError>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("value for {key:?} is {size} bytes, over the {max}-byte limit")]
    ValueTooLarge {
        key: String,
        size: usize,
        max: usize,
    },
    #[error("key {key:?} is invalid: {reason}")]
    InvalidKey { key: String, reason: String },
    #[error(
        "revision {requested} has been compacted (oldest available {oldest}); list again and watch from the listed revision"
    )]
    Compacted { requested: i64, oldest: i64 },
    #[error("lease {0} not found or expired")]
    LeaseNotFound(LeaseId),
    #[error("store error: {0}")]
    Internal(String),
}

/// Checks key and value sizes before anything is written, so both backends refuse the same
/// inputs with the same errors.
pub fn check_txn(txn: &Txn) -> Result<(), StoreError> {
    for op in &txn.ops {
        let key = op.key();
        check_key(key)?;
        if let Op::Put { value, .. } = op
            && value.len() > MAX_VALUE_BYTES
        {
            return Err(StoreError::ValueTooLarge {
                key: key.to_owned(),
                size: value.len(),
                max: MAX_VALUE_BYTES,
            });
        }
    }
    for Compare::Version(key, _) in &txn.compares {
        check_key(key)?;
    }
    Ok(())
}

fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(StoreError::InvalidKey {
            key: key.chars().take(64).collect(),
            reason: format!("keys must be 1 to {MAX_KEY_BYTES} bytes"),
        });
    }
    Ok(())
}

/// The operations the control plane needs from its store.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// One key, if present.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;
    /// Every key under `prefix`, sorted, and the store revision they were read at.
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), StoreError>;
    /// Up to `limit` keys in `[start, end)`, in ascending key order or, with `descending`,
    /// from the end of the range down: a page of a large prefix (the audit trail) without
    /// reading all of it.
    async fn range_page(
        &self,
        start: &str,
        end: &str,
        limit: usize,
        descending: bool,
    ) -> Result<Vec<KeyValue>, StoreError>;
    /// Applies `txn` atomically if its compares hold.
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError>;
    /// Changes under `prefix` with revision >= `from_revision` (0: from now on).
    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream, StoreError>;
    /// A new lease expiring after `ttl` unless kept alive.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError>;
    /// Renews a lease for another TTL.
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError>;
    /// Ends a lease now, deleting its keys.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError>;
    /// Current store revision.
    async fn revision(&self) -> Result<i64, StoreError>;

    /// Unconditional put.
    async fn put(&self, key: &str, value: Bytes) -> Result<i64, StoreError> {
        Ok(self
            .txn(Txn::new().then(Op::put(key, value)))
            .await?
            .revision)
    }

    /// Unconditional delete; whether the key existed.
    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let existed = self.get(key).await?.is_some();
        self.txn(Txn::new().then(Op::delete(key))).await?;
        Ok(existed)
    }
}
