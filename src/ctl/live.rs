//! `nexusctl tail <pattern>` and `nexusctl logs`: live views through the control plane.
//! `tail` prints messages published on matching subjects as gateways tap them (sampled,
//! rate-limited, payload previews redacted per subject; docs/trace.md §7), with the tail's
//! counters to stderr every few seconds; `logs` prints the recent WARN and ERROR events of
//! every gateway and, with `--follow`, new ones (docs/trace.md §8).

use std::time::Duration;

use nexus_proto::v1::{
    FollowLogsRequest, LogRecord, SchemaConfig, TailEvent, TailPreview, TailRequest,
};
use serde_json::json;

use super::admin::{Admin, call};
use super::{Output, format_ms, print_json};

fn time(at_us: i64) -> String {
    format!("{}.{:03}", format_ms(at_us / 1000), (at_us / 1000) % 1000)
}

fn event_json(e: &TailEvent) -> serde_json::Value {
    json!({
        "message_id": e.message_id,
        "subject": e.subject,
        "at_us": e.at_us,
        "region": e.region,
        "gateway_id": e.gateway_id,
        "kind": e.kind,
        "payload_bytes": e.payload_bytes,
        "header_keys": e.header_keys,
        "trace_id": e.trace_id,
        "preview": e.preview,
        "preview_note": e.preview_note,
    })
}

/// Follows the tail until `count` messages were printed (0: until interrupted) or `duration`
/// passed.
pub async fn tail(
    c: &mut Admin,
    req: TailRequest,
    count: u64,
    duration: Option<Duration>,
    output: Output,
) -> anyhow::Result<()> {
    let mut stream = call(c.tail(req).await)?;
    let deadline = duration.map(|d| tokio::time::Instant::now() + d);
    let mut printed = 0u64;
    let mut last_stats = tokio::time::Instant::now();
    let mut stats_seen = false;
    loop {
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d, stream.message()).await {
                Ok(m) => m,
                Err(_) => break,
            },
            None => stream.message().await,
        };
        let Some(e) = next.map_err(|s| anyhow::anyhow!("tail ended: {}", s.message()))? else {
            break;
        };
        if let Some(s) = &e.stats {
            // The first counters (which gateways are tapped), then every 5 s.
            if !stats_seen || last_stats.elapsed() >= Duration::from_secs(5) {
                stats_seen = true;
                last_stats = tokio::time::Instant::now();
                eprintln!(
                    "# {} gateway(s) tapped; {} matched, {} sent, dropped {} (rate limit) + {} (slow viewer)",
                    s.gateways, s.matched, s.sent, s.dropped_rate_limit, s.dropped_slow_viewer
                );
                for u in &s.unreachable {
                    eprintln!("# cannot tap {}/{}: {}", u.region, u.gateway_id, u.error);
                }
            }
            continue;
        }
        match output {
            Output::Json => print_json(&event_json(&e)),
            Output::Text => {
                println!(
                    "{} {}/{} {} {} {} ({} bytes) {}",
                    time(e.at_us),
                    e.region,
                    e.gateway_id,
                    e.kind,
                    e.subject,
                    e.message_id,
                    e.payload_bytes,
                    if e.preview.is_empty() {
                        format!("[{}]", e.preview_note)
                    } else {
                        format!("{} [{}]", e.preview, e.preview_note)
                    }
                );
            }
        }
        printed += 1;
        if count > 0 && printed >= count {
            break;
        }
    }
    Ok(())
}

fn log_json(r: &LogRecord) -> serde_json::Value {
    json!({
        "at_us": r.at_us,
        "region": r.region,
        "gateway_id": r.gateway_id,
        "level": r.level,
        "target": r.target,
        "message": r.message,
        "fields": r.fields,
        "seq": r.seq,
    })
}

/// Prints every gateway's recent warnings, and with `follow` new ones until interrupted.
pub async fn logs(c: &mut Admin, req: FollowLogsRequest, output: Output) -> anyhow::Result<()> {
    let mut stream = call(c.follow_logs(req).await)?;
    while let Some(r) = stream
        .message()
        .await
        .map_err(|s| anyhow::anyhow!("log stream ended: {}", s.message()))?
    {
        match output {
            Output::Json => print_json(&log_json(&r)),
            Output::Text => {
                let mut fields: Vec<_> = r.fields.iter().collect();
                fields.sort();
                let fields: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!(
                    "{} {}/{} {:5} {}: {} {}",
                    time(r.at_us),
                    r.region,
                    r.gateway_id,
                    r.level,
                    r.target,
                    r.message,
                    fields.join(" ")
                );
            }
        }
    }
    Ok(())
}

/// Sets the live tail's preview for a subject (or the default, for an empty subject).
pub async fn set_tail_preview(
    c: &mut Admin,
    subject: &str,
    max_bytes: u32,
    redact: Vec<String>,
    output: Output,
) -> anyhow::Result<()> {
    let r = call(
        c.set_schema_config(nexus_proto::v1::SetSchemaConfigRequest {
            config: Some(SchemaConfig {
                subject: subject.into(),
                tail_preview: Some(TailPreview {
                    max_bytes,
                    redact_fields: redact,
                }),
                ..Default::default()
            }),
        })
        .await,
    )?;
    let t = r.tail_preview.unwrap_or_default();
    let who = if r.subject.is_empty() {
        "default"
    } else {
        &r.subject
    };
    match output {
        Output::Text => println!(
            "{who}: tail preview {} bytes{}",
            t.max_bytes,
            if t.redact_fields.is_empty() {
                String::new()
            } else {
                format!(", redacting {}", t.redact_fields.join(", "))
            }
        ),
        Output::Json => print_json(&json!({
            "subject": r.subject,
            "tail_preview": {"max_bytes": t.max_bytes, "redact_fields": t.redact_fields},
        })),
    }
    Ok(())
}
