//! `FollowLogs`: the recent WARN and ERROR events of every live gateway, then (with
//! `follow`) the new ones, polled from each gateway's operator endpoint
//! (`GET /v1/logs?after=<seq>`, `nexus_gateway::log_ring`) once a second
//! (docs/trace.md §8). A gateway that cannot be asked is reported once, as a WARN record
//! from the control plane itself (target `nexus_control_plane::logs`), until it answers
//! again; a gateway that restarted (its sequence numbers went back) is read from its start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use nexus_proto::v1::{FollowLogsRequest, GatewayInfo, LogRecord};
use serde_json::Value;

use crate::error::AdminError;
use crate::store::Store;

const POLL: Duration = Duration::from_secs(1);

/// Where the reading of one gateway stands.
#[derive(Default)]
struct Cursor {
    after: u64,
    failing: bool,
}

fn record(gw: &GatewayInfo, v: &Value) -> LogRecord {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    LogRecord {
        at_us: v["at_us"].as_i64().unwrap_or_default(),
        region: gw.region.clone(),
        gateway_id: gw.id.clone(),
        level: s("level"),
        target: s("target"),
        message: s("message"),
        fields: v["fields"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|kv| Some((kv[0].as_str()?.to_owned(), kv[1].as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default(),
        seq: v["seq"].as_u64().unwrap_or_default(),
    }
}

/// Asks one gateway for its events after `cursor`; advances it.
async fn poll(
    gw: &GatewayInfo,
    cursor: &mut Cursor,
    limit: u32,
    level: &str,
) -> Result<Vec<LogRecord>, String> {
    if gw.metrics_addr.is_empty() {
        return Err("registered no HTTP (metrics) address".into());
    }
    let path = format!(
        "/v1/logs?after={}&limit={limit}&level={level}",
        cursor.after
    );
    let (status, body) = crate::trace::http_get(&gw.metrics_addr, &path).await?;
    if status != 200 {
        return Err(format!("answered HTTP {status}: {}", body.trim()));
    }
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("sent malformed JSON: {e}"))?;
    let next = v["next"].as_u64().unwrap_or_default();
    if next <= cursor.after {
        // It restarted: its numbering began again.
        cursor.after = 0;
        return Ok(Vec::new());
    }
    let records: Vec<LogRecord> = v["events"]
        .as_array()
        .map(|a| a.iter().map(|e| record(gw, e)).collect())
        .unwrap_or_default();
    cursor.after = next.saturating_sub(1);
    Ok(records)
}

fn unreachable(gw: &GatewayInfo, error: String) -> LogRecord {
    LogRecord {
        at_us: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0),
        region: gw.region.clone(),
        gateway_id: gw.id.clone(),
        level: "WARN".into(),
        target: "nexus_control_plane::logs".into(),
        message: "cannot read this gateway's logs".into(),
        fields: [("error".to_owned(), error)].into(),
        seq: 0,
    }
}

/// Starts the stream: the backlog of every gateway in time order, then new events.
pub async fn start(
    store: Arc<dyn Store>,
    req: FollowLogsRequest,
) -> Result<tokio_stream::wrappers::ReceiverStream<Result<LogRecord, tonic::Status>>, AdminError> {
    let level = match req.min_level.to_ascii_lowercase().as_str() {
        "" | "warn" => "warn",
        "error" => "error",
        other => {
            return Err(AdminError::invalid(
                "min_level",
                format!("{other:?}: expected warn or error"),
            ));
        }
    };
    let backlog = if req.backlog == 0 {
        100
    } else {
        req.backlog.min(1000)
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(async move {
        let mut cursors: HashMap<(String, String), Cursor> = HashMap::new();
        let mut first = true;
        loop {
            let gateways = match crate::regions::gateways(&*store, "").await {
                Ok(g) => g,
                Err(e) => {
                    let _ = tx.send(Err(tonic::Status::from(e))).await;
                    return;
                }
            };
            cursors.retain(|k, _| gateways.iter().any(|g| (&g.region, &g.id) == (&k.0, &k.1)));
            let mut batch = Vec::new();
            let mut polls = Vec::new();
            for gw in &gateways {
                let mut cursor = cursors
                    .remove(&(gw.region.clone(), gw.id.clone()))
                    .unwrap_or_default();
                polls.push(async move {
                    let r = poll(gw, &mut cursor, backlog, level).await;
                    (gw, cursor, r)
                });
            }
            for (gw, mut cursor, r) in futures::future::join_all(polls).await {
                match r {
                    Ok(records) => {
                        cursor.failing = false;
                        batch.extend(records);
                    }
                    Err(error) => {
                        if !cursor.failing {
                            batch.push(unreachable(gw, error));
                        }
                        cursor.failing = true;
                    }
                }
                cursors.insert((gw.region.clone(), gw.id.clone()), cursor);
            }
            batch.sort_by_key(|r| r.at_us);
            for r in batch {
                if tx.send(Ok(r)).await.is_err() {
                    return;
                }
            }
            if first && !req.follow {
                return;
            }
            first = false;
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_read_with_their_fields() {
        let gw = GatewayInfo {
            id: "a1".into(),
            region: "a".into(),
            ..Default::default()
        };
        let v: Value = serde_json::json!({
            "seq": 7, "at_us": 5, "level": "WARN", "target": "nexus_gateway::session",
            "message": "slow consumer", "fields": [["conn", "3"], ["sid", "1"]],
        });
        let r = record(&gw, &v);
        assert_eq!(
            (r.seq, r.level.as_str(), r.region.as_str()),
            (7, "WARN", "a")
        );
        assert_eq!(r.fields.get("conn").map(String::as_str), Some("3"));
    }
}
