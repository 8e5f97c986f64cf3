//! How much of the trail is kept. The count bound is kept exactly at every append (the record
//! `max_records` older than the new one is deleted in the same transaction); the age bound,
//! and a count bound lowered since records were written, are applied at start by
//! [`prune_logged`], before the control plane serves (so no one reads a trail longer than its
//! bound allows), then every [`PRUNE_INTERVAL`] by [`run`]. Pruning removes only the oldest
//! records, so what remains is always a gapless run of sequence numbers ending at the newest.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::AdminError;
use crate::names::{AUDIT_RECORDS, AUDIT_RECORDS_END, audit_key, now_ms};
use crate::records::decode;
use crate::store::{Op, Store, Txn};

/// Records kept when nothing else is configured.
pub const DEFAULT_MAX_RECORDS: u64 = 100_000;
/// How often the age bound is applied.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(600);
/// Deletes per transaction (etcd refuses more than 128 operations by default).
const BATCH: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Newest records kept (0: no count bound).
    pub max_records: u64,
    /// Records older than this are dropped (None: no age bound).
    pub max_age: Option<Duration>,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_records: DEFAULT_MAX_RECORDS,
            max_age: None,
        }
    }
}

async fn delete(store: &dyn Store, keys: Vec<String>) -> Result<(), AdminError> {
    for chunk in keys.chunks(BATCH) {
        let txn = chunk
            .iter()
            .fold(Txn::new(), |t, k| t.then(Op::delete(k.clone())));
        store.txn(txn).await?;
    }
    Ok(())
}

/// Applies both bounds now; returns how many records were removed.
pub async fn prune(store: &dyn Store, retention: Retention) -> Result<u64, AdminError> {
    let mut removed = 0;
    let (oldest, newest) = super::query::bounds(store).await?;
    if retention.max_records > 0 && oldest > 0 && newest - oldest + 1 > retention.max_records {
        let last_dropped = newest - retention.max_records;
        delete(store, (oldest..=last_dropped).map(audit_key).collect()).await?;
        removed += last_dropped - oldest + 1;
    }
    if let Some(max_age) = retention.max_age {
        let cutoff = now_ms() - max_age.as_millis() as i64;
        loop {
            let page = store
                .range_page(AUDIT_RECORDS, AUDIT_RECORDS_END, BATCH, false)
                .await?;
            let mut old = Vec::new();
            for kv in &page {
                let r: nexus_proto::v1::AuditRecord = decode(&kv.key, &kv.value)?;
                if r.time_ms >= cutoff {
                    break;
                }
                old.push(kv.key.clone());
            }
            let done = old.len() < page.len() || page.len() < BATCH;
            removed += old.len() as u64;
            delete(store, old).await?;
            if done {
                break;
            }
        }
    }
    Ok(removed)
}

/// [`prune`], logging what it removed or why it failed (the next pass tries again).
pub async fn prune_logged(store: &dyn Store, retention: Retention) {
    match prune(store, retention).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "audit trail pruned to its retention bound"),
        Err(e) => tracing::warn!(error = %e, "audit trail pruning failed; retrying later"),
    }
}

/// Prunes every [`PRUNE_INTERVAL`] until `stop`; the first pass is the caller's, at start
/// ([`prune_logged`]).
pub async fn run(store: std::sync::Arc<dyn Store>, retention: Retention, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PRUNE_INTERVAL) => {}
        }
        prune_logged(&*store, retention).await;
    }
}
