//! `EmbeddedStore`: a single-node, file-backed [`Store`] on redb, for `nexus dev` and small
//! deployments that do not want to run etcd.
//!
//! It keeps etcd's model (revisions, versions, compare-and-swap transactions, leases,
//! watches) so the rest of the control plane cannot tell the backends apart. Writes are
//! serialised by one mutex and committed durably before they are acknowledged or published
//! to watchers. Watches replay from an in-memory history of the last `HISTORY` changes;
//! older revisions answer `Compacted`, as etcd does after compaction. Leases live in memory:
//! after a restart every leased key is gone, exactly as if the lease had expired, and its
//! owner re-registers (registrations keep their lease alive anyway).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use super::{
    Compare, KeyValue, LeaseId, Op, Store, StoreError, Txn, TxnOutcome, WatchEvent, WatchStream,
    check_txn,
};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";
/// Changes kept for watches that start in the past.
const HISTORY: usize = 10_000;
/// How often expired leases are looked for.
const LEASE_TICK: Duration = Duration::from_millis(100);

/// Stored value layout: version, mod_revision, lease (little-endian i64 each), then data.
const HEADER: usize = 24;

fn encode(version: i64, mod_revision: i64, lease: LeaseId, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + data.len());
    v.extend_from_slice(&version.to_le_bytes());
    v.extend_from_slice(&mod_revision.to_le_bytes());
    v.extend_from_slice(&lease.to_le_bytes());
    v.extend_from_slice(data);
    v
}

fn decode(key: &str, raw: &[u8]) -> Result<KeyValue, StoreError> {
    if raw.len() < HEADER {
        return Err(StoreError::Internal(format!(
            "stored record for {key:?} is truncated ({} bytes)",
            raw.len()
        )));
    }
    let num = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&raw[i..i + 8]);
        i64::from_le_bytes(b)
    };
    Ok(KeyValue {
        key: key.to_owned(),
        version: num(0),
        mod_revision: num(8),
        lease: num(16),
        value: Bytes::copy_from_slice(&raw[HEADER..]),
    })
}

fn internal(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(e.to_string())
}

struct LeaseState {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

struct State {
    revision: i64,
    history: VecDeque<WatchEvent>,
    leases: HashMap<LeaseId, LeaseState>,
    next_lease: LeaseId,
}

struct Inner {
    db: Database,
    path: PathBuf,
    state: Mutex<State>,
    events: broadcast::Sender<WatchEvent>,
}

/// The embedded store; cheap to clone.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

impl EmbeddedStore {
    /// Opens (or creates) the store file at `path`. Must be called inside a tokio runtime:
    /// it starts the lease-expiry task.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        // Reopening in the same process can race with the previous instance's last
        // background task still holding the file lock for a moment; wait it out briefly.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let inner = loop {
            let p = path.clone();
            match tokio::task::spawn_blocking(move || Self::open_blocking(p))
                .await
                .map_err(internal)?
            {
                Err(StoreError::Unavailable(m))
                    if m.contains("already open") && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => break other?,
            }
        };
        let inner = Arc::new(inner);
        tokio::spawn(expire_leases(Arc::downgrade(&inner)));
        tracing::debug!(path = %path.display(), "embedded store open");
        Ok(Self { inner })
    }

    fn open_blocking(path: PathBuf) -> Result<Inner, StoreError> {
        let db = Database::create(&path).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot open embedded store {}: {e}",
                path.display()
            ))
        })?;
        let (events, _) = broadcast::channel(4096);
        // Leases do not survive a restart: drop every leased key, in one revision.
        let w = db.begin_write().map_err(internal)?;
        let revision;
        {
            let mut kv = w.open_table(KV).map_err(internal)?;
            let mut meta = w.open_table(META).map_err(internal)?;
            let mut rev = meta
                .get(REVISION)
                .map_err(internal)?
                .map(|g| g.value() as i64)
                .unwrap_or(0);
            let mut stale = Vec::new();
            for entry in kv.iter().map_err(internal)? {
                let (k, v) = entry.map_err(internal)?;
                let record = decode(k.value(), v.value())?;
                if record.lease != 0 {
                    stale.push(record.key);
                }
            }
            if !stale.is_empty() {
                rev += 1;
                for key in &stale {
                    kv.remove(key.as_str()).map_err(internal)?;
                }
                meta.insert(REVISION, rev as u64).map_err(internal)?;
                tracing::info!(
                    removed = stale.len(),
                    "embedded store: removed keys whose leases ended with the last run"
                );
            }
            revision = rev;
        }
        w.commit().map_err(internal)?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(1);
        Ok(Inner {
            db,
            path,
            state: Mutex::new(State {
                revision,
                history: VecDeque::new(),
                leases: HashMap::new(),
                // Distinct from the ids of earlier runs.
                next_lease: now_ms.saturating_mul(1000),
            }),
            events,
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(internal)?
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock means a panic mid-write; redb's transaction was not committed,
        // so the state it guards (revision, leases) is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a transaction; the caller holds the state lock.
    fn apply(&self, st: &mut State, txn: &Txn) -> Result<TxnOutcome, StoreError> {
        let w = self.db.begin_write().map_err(internal)?;
        let mut events = Vec::new();
        let new_revision = st.revision + 1;
        {
            let mut kv = w.open_table(KV).map_err(internal)?;
            for Compare::Version(key, expected) in &txn.compares {
                let version = match kv.get(key.as_str()).map_err(internal)? {
                    Some(g) => decode(key, g.value())?.version,
                    None => 0,
                };
                if version != *expected {
                    return Ok(TxnOutcome {
                        succeeded: false,
                        revision: st.revision,
                    });
                }
            }
            for op in &txn.ops {
                match op {
                    Op::Put { key, value, lease } => {
                        let lease = lease.unwrap_or(0);
                        if lease != 0 && !st.leases.contains_key(&lease) {
                            return Err(StoreError::LeaseNotFound(lease));
                        }
                        let previous = match kv.get(key.as_str()).map_err(internal)? {
                            Some(g) => Some(decode(key, g.value())?),
                            None => None,
                        };
                        let version = previous.as_ref().map_or(0, |p| p.version) + 1;
                        if let Some(p) = &previous
                            && p.lease != 0
                            && p.lease != lease
                            && let Some(l) = st.leases.get_mut(&p.lease)
                        {
                            l.keys.remove(key);
                        }
                        kv.insert(
                            key.as_str(),
                            encode(version, new_revision, lease, value).as_slice(),
                        )
                        .map_err(internal)?;
                        if lease != 0
                            && let Some(l) = st.leases.get_mut(&lease)
                        {
                            l.keys.insert(key.clone());
                        }
                        events.push(WatchEvent::Put(KeyValue {
                            key: key.clone(),
                            value: value.clone(),
                            version,
                            mod_revision: new_revision,
                            lease,
                        }));
                    }
                    Op::Delete { key } => {
                        let removed = kv.remove(key.as_str()).map_err(internal)?;
                        if let Some(g) = removed {
                            let p = decode(key, g.value())?;
                            if p.lease != 0
                                && let Some(l) = st.leases.get_mut(&p.lease)
                            {
                                l.keys.remove(key);
                            }
                            events.push(WatchEvent::Delete {
                                key: key.clone(),
                                revision: new_revision,
                            });
                        }
                    }
                }
            }
            if !events.is_empty() {
                let mut meta = w.open_table(META).map_err(internal)?;
                meta.insert(REVISION, new_revision as u64)
                    .map_err(internal)?;
            }
        }
        if events.is_empty() {
            // Nothing changed: no new revision, nothing to commit.
            return Ok(TxnOutcome {
                succeeded: true,
                revision: st.revision,
            });
        }
        w.commit().map_err(internal)?;
        st.revision = new_revision;
        for e in events {
            if st.history.len() == HISTORY {
                st.history.pop_front();
            }
            st.history.push_back(e.clone());
            let _ = self.events.send(e);
        }
        Ok(TxnOutcome {
            succeeded: true,
            revision: new_revision,
        })
    }

    fn revoke(&self, st: &mut State, lease: LeaseId) -> Result<(), StoreError> {
        let Some(l) = st.leases.remove(&lease) else {
            return Err(StoreError::LeaseNotFound(lease));
        };
        let mut txn = Txn::new();
        for key in l.keys {
            txn = txn.then(Op::delete(key));
        }
        self.apply(st, &txn).map(|_| ())
    }
}

async fn expire_leases(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(LEASE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let result = tokio::task::spawn_blocking(move || {
            let mut st = inner.lock();
            let now = Instant::now();
            let expired: Vec<LeaseId> = st
                .leases
                .iter()
                .filter(|(_, l)| l.deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in expired {
                if let Err(e) = inner.revoke(&mut st, id) {
                    tracing::warn!(lease = id, error = %e, "could not expire lease");
                }
            }
        })
        .await;
        if result.is_err() {
            return;
        }
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_owned();
        self.blocking(move |inner| {
            let r = inner.db.begin_read().map_err(internal)?;
            let kv = match r.open_table(KV) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(internal(e)),
            };
            match kv.get(key.as_str()).map_err(internal)? {
                Some(g) => Ok(Some(decode(&key, g.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), StoreError> {
        let prefix = prefix.to_owned();
        self.blocking(move |inner| {
            let r = inner.db.begin_read().map_err(internal)?;
            let kv = r.open_table(KV).map_err(internal)?;
            let meta = r.open_table(META).map_err(internal)?;
            let revision = meta
                .get(REVISION)
                .map_err(internal)?
                .map(|g| g.value() as i64)
                .unwrap_or(0);
            let mut out = Vec::new();
            for entry in kv.range(prefix.as_str()..).map_err(internal)? {
                let (k, v) = entry.map_err(internal)?;
                if !k.value().starts_with(prefix.as_str()) {
                    break;
                }
                out.push(decode(k.value(), v.value())?);
            }
            Ok((out, revision))
        })
        .await
    }

    async fn range_page(
        &self,
        start: &str,
        end: &str,
        limit: usize,
        descending: bool,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let (start, end) = (start.to_owned(), end.to_owned());
        self.blocking(move |inner| {
            if start >= end || limit == 0 {
                return Ok(Vec::new());
            }
            let r = inner.db.begin_read().map_err(internal)?;
            let kv = match r.open_table(KV) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(internal(e)),
            };
            let range = kv.range(start.as_str()..end.as_str()).map_err(internal)?;
            let mut out = Vec::new();
            let mut take = |entry: Result<_, redb::StorageError>| -> Result<bool, StoreError> {
                let (k, v): (redb::AccessGuard<&str>, redb::AccessGuard<&[u8]>) =
                    entry.map_err(internal)?;
                out.push(decode(k.value(), v.value())?);
                Ok(out.len() < limit)
            };
            if descending {
                for entry in range.rev() {
                    if !take(entry)? {
                        break;
                    }
                }
            } else {
                for entry in range {
                    if !take(entry)? {
                        break;
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        check_txn(&txn)?;
        self.blocking(move |inner| {
            let mut st = inner.lock();
            inner.apply(&mut st, &txn)
        })
        .await
    }

    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream, StoreError> {
        let (rx, backlog, after) = {
            let st = self.inner.lock();
            let rx = self.inner.events.subscribe();
            let mut backlog = Vec::new();
            if from_revision > 0 && from_revision <= st.revision {
                let oldest = st.history.front().map_or(st.revision + 1, |e| e.revision());
                if from_revision < oldest {
                    return Err(StoreError::Compacted {
                        requested: from_revision,
                        oldest,
                    });
                }
                backlog.extend(
                    st.history
                        .iter()
                        .filter(|e| e.revision() >= from_revision && e.key().starts_with(prefix))
                        .cloned(),
                );
            }
            // Live events at or below this revision were already in the backlog (or are
            // older than asked for).
            let after = st.revision.max(from_revision - 1);
            (rx, backlog, after)
        };
        let prefix = prefix.to_owned();
        let live = BroadcastStream::new(rx).filter_map(move |item| {
            let out = match item {
                Ok(e) if e.revision() > after && e.key().starts_with(prefix.as_str()) => {
                    Some(Ok(e))
                }
                Ok(_) => None,
                Err(BroadcastStreamRecvError::Lagged(n)) => Some(Err(StoreError::Compacted {
                    requested: after,
                    oldest: after + n as i64,
                })),
            };
            futures::future::ready(out)
        });
        Ok(Box::pin(
            futures::stream::iter(backlog.into_iter().map(Ok)).chain(live),
        ))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let mut st = self.inner.lock();
        st.next_lease += 1;
        let id = st.next_lease;
        st.leases.insert(
            id,
            LeaseState {
                ttl,
                deadline: Instant::now() + ttl,
                keys: BTreeSet::new(),
            },
        );
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        let mut st = self.inner.lock();
        match st.leases.get_mut(&lease) {
            Some(l) => {
                l.deadline = Instant::now() + l.ttl;
                Ok(())
            }
            None => Err(StoreError::LeaseNotFound(lease)),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.blocking(move |inner| {
            let mut st = inner.lock();
            inner.revoke(&mut st, lease)
        })
        .await
    }

    async fn revision(&self) -> Result<i64, StoreError> {
        Ok(self.inner.lock().revision)
    }
}
