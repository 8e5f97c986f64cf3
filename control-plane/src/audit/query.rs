//! Reading the trail with filters (`ListAudit`): pages through the records in sequence order
//! (forward from `since_*`, or back from the newest) so that a query never loads the whole
//! trail at once, and keeps the records that match.

use nexus_proto::v1::{AuditRecord, ListAuditRequest, ListAuditResponse};

use crate::error::AdminError;
use crate::names::{AUDIT_RECORDS, AUDIT_RECORDS_END, audit_key};
use crate::records::decode;
use crate::store::{KeyValue, Store};

/// Records returned when the request names no limit.
pub const DEFAULT_LIMIT: usize = 100;
/// Most records one call returns.
pub const MAX_LIMIT: usize = 1000;
/// Records read from the store per round trip.
const PAGE: usize = 256;

fn matches(r: &AuditRecord, q: &ListAuditRequest) -> bool {
    (q.since_ms == 0 || r.time_ms >= q.since_ms)
        && (q.actor.is_empty() || r.actor == q.actor)
        && (q.target_kind.is_empty() || r.target_kind == q.target_kind)
        && (q.target_name.is_empty() || r.target_name == q.target_name)
        && (q.action.is_empty() || r.action == q.action)
}

fn record(kv: &KeyValue) -> Result<AuditRecord, AdminError> {
    let mut r: AuditRecord = decode(&kv.key, &kv.value)?;
    // The record was written once, by the change's own transaction.
    r.revision = kv.mod_revision;
    Ok(r)
}

/// The oldest and newest record's sequence numbers (0, 0 for an empty trail).
pub async fn bounds(store: &dyn Store) -> Result<(u64, u64), AdminError> {
    let sequence = |page: Vec<KeyValue>| -> Result<u64, AdminError> {
        page.first()
            .map(|kv| record(kv).map(|r| r.sequence))
            .transpose()
            .map(Option::unwrap_or_default)
    };
    let oldest = sequence(
        store
            .range_page(AUDIT_RECORDS, AUDIT_RECORDS_END, 1, false)
            .await?,
    )?;
    let newest = sequence(
        store
            .range_page(AUDIT_RECORDS, AUDIT_RECORDS_END, 1, true)
            .await?,
    )?;
    Ok((oldest, newest))
}

pub async fn list(store: &dyn Store, q: ListAuditRequest) -> Result<ListAuditResponse, AdminError> {
    if q.since_ms < 0 {
        return Err(AdminError::invalid("since_ms", "must not be negative"));
    }
    let limit = match q.limit as usize {
        0 => DEFAULT_LIMIT,
        n => n.min(MAX_LIMIT),
    };
    let forward = q.since_sequence > 0 || q.since_ms > 0;
    let mut found = Vec::new();
    let mut more = false;
    // The unread part of the range: [start, end).
    let mut start = if q.since_sequence > 0 {
        audit_key(q.since_sequence)
    } else {
        AUDIT_RECORDS.to_owned()
    };
    let mut end = AUDIT_RECORDS_END.to_owned();
    'pages: loop {
        let page = store.range_page(&start, &end, PAGE, !forward).await?;
        let Some(last) = page.last() else { break };
        if forward {
            start = format!("{}\0", last.key);
        } else {
            end = last.key.clone();
        }
        let full = page.len() == PAGE;
        for kv in &page {
            let r = record(kv)?;
            if matches(&r, &q) {
                if found.len() == limit {
                    more = true;
                    break 'pages;
                }
                found.push(r);
            }
        }
        if !full {
            break;
        }
    }
    if !forward {
        found.reverse();
    }
    let (oldest_sequence, latest_sequence) = bounds(store).await?;
    Ok(ListAuditResponse {
        records: found,
        more,
        oldest_sequence,
        latest_sequence,
    })
}
