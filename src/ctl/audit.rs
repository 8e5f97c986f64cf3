//! `nexusctl audit`: the control plane's audit trail (who changed what, when, from where),
//! read with `ListAudit`. Read-only, like the API: there is nothing to edit or delete.

use std::time::Duration;

use nexus_proto::v1::{AuditRecord, ListAuditRequest};
use serde_json::json;

use super::admin::{Admin, call};
use super::{Output, format_ms, print_json, print_table};

/// The filters of `nexusctl audit`.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    /// Records from this long ago onwards.
    pub since: Option<Duration>,
    /// Records from this sequence number onwards.
    pub since_sequence: Option<u64>,
    pub actor: Option<String>,
    pub kind: Option<String>,
    pub name: Option<String>,
    pub action: Option<String>,
    pub limit: u32,
}

impl Filters {
    fn request(&self, now_ms: i64) -> ListAuditRequest {
        ListAuditRequest {
            since_sequence: self.since_sequence.unwrap_or(0),
            since_ms: self
                .since
                .map_or(0, |d| (now_ms - d.as_millis() as i64).max(1)),
            actor: self.actor.clone().unwrap_or_default(),
            target_kind: self.kind.clone().unwrap_or_default(),
            target_name: self.name.clone().unwrap_or_default(),
            action: self.action.clone().unwrap_or_default(),
            limit: self.limit,
        }
    }
}

fn record_json(r: &AuditRecord) -> serde_json::Value {
    json!({
        "sequence": r.sequence,
        "revision": r.revision,
        "time_ms": r.time_ms,
        "time": format_ms(r.time_ms),
        "actor_kind": r.actor_kind,
        "actor": r.actor,
        "peer": r.peer,
        "action": r.action,
        "target_kind": r.target_kind,
        "target_name": r.target_name,
        "before_version": r.before_version,
        "after_version": r.after_version,
        "summary": r.summary,
    })
}

fn actor(r: &AuditRecord) -> String {
    match (r.actor_kind.as_str(), r.actor.as_str()) {
        ("key", id) => id.to_owned(),
        ("certificate", name) => format!("cert:{name}"),
        (kind, "") => format!("({kind})"),
        (kind, name) => format!("{kind}:{name}"),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub async fn list(c: &mut Admin, filters: &Filters, output: Output) -> anyhow::Result<()> {
    let resp = call(c.list_audit(filters.request(now_ms())).await)?;
    match output {
        Output::Json => print_json(&json!(
            resp.records.iter().map(record_json).collect::<Vec<_>>()
        )),
        Output::Text if resp.records.is_empty() => println!("no audit records match"),
        Output::Text => print_table(
            &[
                "SEQ",
                "TIME (UTC)",
                "ACTOR",
                "FROM",
                "ACTION",
                "TARGET",
                "VERSION",
                "SUMMARY",
            ],
            &resp
                .records
                .iter()
                .map(|r| {
                    vec![
                        r.sequence.to_string(),
                        format_ms(r.time_ms),
                        actor(r),
                        if r.peer.is_empty() {
                            "-".into()
                        } else {
                            r.peer.clone()
                        },
                        r.action.clone(),
                        format!("{} {}", r.target_kind, r.target_name),
                        format!("{} -> {}", r.before_version, r.after_version),
                        r.summary.clone(),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    }
    if resp.more {
        let hint = match (filters.since, filters.since_sequence, resp.records.last()) {
            (None, None, _) => {
                "earlier ones exist: narrow with --since/--since-seq or raise --limit".to_owned()
            }
            (_, _, Some(last)) => format!("continue with --since-seq {}", last.sequence + 1),
            _ => "raise --limit".to_owned(),
        };
        eprintln!(
            "nexusctl: more records match than the {} shown; {hint}",
            resp.records.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_become_a_request() {
        let f = Filters {
            since: Some(Duration::from_secs(60)),
            actor: Some("k1".into()),
            limit: 5,
            ..Default::default()
        };
        let r = f.request(100_000);
        assert_eq!((r.since_ms, r.actor.as_str(), r.limit), (40_000, "k1", 5));
        assert_eq!(Filters::default().request(1).since_ms, 0);
    }
}
