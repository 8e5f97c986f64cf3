//! `nexusctl trace <message-id>`: what happened to one message, hop by hop, across every
//! gateway of every region (the control plane's `GetTrace` asks them all), printed as a
//! timeline with each hop's offset from the first record and the time since the previous
//! one, or as JSON with `-o json`. Without an id, `--subject` and `--since` list recent
//! traced messages.

use std::time::Duration;

use anyhow::bail;
use nexus_proto::v1::{GetTraceRequest, GetTraceResponse, TraceRecord};
use serde_json::{Value, json};

use super::admin::{Admin, call};
use super::{Output, print_json};

/// Whether `id` looks like a message id: a 26-character ULID or 32 hex digits.
fn check_id(id: &str) -> anyhow::Result<()> {
    if nexus_gateway::trace_store::parse_message_id(id).is_err() {
        bail!(
            "{id:?} is not a message id: expected a 26-character ULID (as `nexusctl pub` prints it, and `nexusctl sub -o json`) or 32 hex digits"
        );
    }
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn record_json(r: &TraceRecord, first_us: i64) -> Value {
    json!({
        "offset_us": r.at_us - first_us,
        "at_us": r.at_us,
        "region": r.region,
        "gateway_id": r.gateway_id,
        "event": r.event,
        "reason": if r.reason.is_empty() { Value::Null } else { json!(r.reason) },
        "subject": r.subject,
        "peer": r.peer,
        "detail": r.detail,
        "latency_us": r.latency_us,
        "count": r.count,
        "trace_id": r.trace_id,
        "message_id": r.message_id,
    })
}

fn unreachable_json(t: &GetTraceResponse) -> Value {
    json!(
        t.unreachable
            .iter()
            .map(|u| json!({"region": u.region, "gateway_id": u.gateway_id, "error": u.error}))
            .collect::<Vec<_>>()
    )
}

fn rates(t: &GetTraceResponse) -> String {
    let mut r: Vec<String> = t
        .sample_rates
        .iter()
        .map(|r| format!("{}%", r * 100.0))
        .collect();
    r.sort();
    r.dedup();
    if r.is_empty() {
        "unknown".into()
    } else {
        r.join(", ")
    }
}

/// `s` with control characters escaped (the text comes from gateways and clients' names),
/// whole: unlike log lines, the timeline does not cut long details.
fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

fn ms(us: i64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

/// The timeline of message `id`. Errors (exit 1) when no gateway has a record of it.
pub async fn by_id(c: &mut Admin, id: &str, output: Output) -> anyhow::Result<()> {
    let id = id.trim();
    check_id(id)?;
    let t = call(
        c.get_trace(GetTraceRequest {
            message_id: id.to_owned(),
            ..Default::default()
        })
        .await,
    )?;
    for u in &t.unreachable {
        eprintln!(
            "warning: gateway {} ({}) could not be asked: {}",
            u.gateway_id, u.region, u.error
        );
    }
    if t.records.is_empty() {
        let asked = t.gateways_asked;
        bail!(
            "no gateway has a trace of message {id} ({asked} live gateway(s) asked, {} unreachable): it was not sampled (sampling rate {}), its records were already evicted (each gateway keeps a bounded ring, trace.max_bytes), or no gateway received it. To trace a message for sure, publish it with the header nexus-trace: 1, e.g. nexusctl pub -H nexus-trace=1 <subject> <payload>",
            t.unreachable.len(),
            rates(&t),
        );
    }
    let first = t.records[0].at_us;
    let last = t.records.last().map_or(first, |r| r.at_us);
    match output {
        Output::Json => print_json(&json!({
            "message_id": id,
            "subject": t.records[0].subject,
            "trace_id": t.records.iter().map(|r| r.trace_id.as_str()).find(|s| !s.is_empty()),
            "duration_us": last - first,
            "gateways_asked": t.gateways_asked,
            "unreachable": unreachable_json(&t),
            "records": t.records.iter().map(|r| record_json(r, first)).collect::<Vec<_>>(),
        })),
        Output::Text => print_timeline(id, &t),
    }
    Ok(())
}

fn print_timeline(id: &str, t: &GetTraceResponse) {
    let first = t.records[0].at_us;
    let trace_id = t
        .records
        .iter()
        .map(|r| r.trace_id.as_str())
        .find(|s| !s.is_empty())
        .unwrap_or("-");
    println!(
        "message {id} on {} (trace {trace_id})",
        printable(&t.records[0].subject)
    );
    println!(
        "{:>10} {:>9}  {:<22} {:<15} {:<17} DETAIL",
        "AT(ms)", "+HOP(ms)", "REGION/GATEWAY", "EVENT", "REASON"
    );
    let mut prev = first;
    for r in &t.records {
        let mut detail = String::new();
        if !r.peer.is_empty() {
            detail.push_str(&r.peer);
        }
        if !r.detail.is_empty() {
            if !detail.is_empty() {
                detail.push_str(": ");
            }
            detail.push_str(&r.detail);
        }
        if r.latency_us > 0 {
            let what = if r.event == "reply" { "took" } else { "rtt" };
            if !detail.is_empty() {
                detail.push(' ');
            }
            detail.push_str(&format!(
                "[{what} {} ms]",
                ms(r.latency_us.min(i64::MAX as u64) as i64)
            ));
        }
        println!(
            "{:>10} {:>9}  {:<22} {:<15} {:<17} {}",
            ms(r.at_us - first),
            ms(r.at_us - prev),
            format!("{}/{}", r.region, r.gateway_id),
            r.event,
            if r.reason.is_empty() { "-" } else { &r.reason },
            printable(&detail),
        );
        prev = r.at_us;
    }
    let delivered: u32 = t
        .records
        .iter()
        .filter(|r| r.event == "delivered")
        .map(|r| r.count.max(1))
        .sum();
    let dropped = t.records.iter().filter(|r| r.event == "dropped").count();
    let mut gateways: Vec<String> = t
        .records
        .iter()
        .map(|r| format!("{}/{}", r.region, r.gateway_id))
        .collect();
    gateways.sort();
    gateways.dedup();
    println!(
        "{delivered} delivery(ies), {dropped} drop(s), across {} gateway(s) in {} ms (times are each gateway's own clock)",
        gateways.len(),
        ms(t.records.last().map_or(first, |r| r.at_us) - first),
    );
}

/// Recent traced messages on subjects matching `subject`, from `since` ago: one line per
/// message (its first record).
pub async fn search(
    c: &mut Admin,
    subject: &str,
    since: Option<Duration>,
    limit: u32,
    output: Output,
) -> anyhow::Result<()> {
    let since_ms = since.map_or(0, |d| {
        now_ms().saturating_sub(d.as_millis().min(i64::MAX as u128) as i64)
    });
    let t = call(
        c.get_trace(GetTraceRequest {
            subject: subject.to_owned(),
            since_ms,
            limit,
            ..Default::default()
        })
        .await,
    )?;
    // One entry per message: its first record and how many hops.
    let mut messages: Vec<(&TraceRecord, usize)> = Vec::new();
    for r in &t.records {
        match messages
            .iter_mut()
            .find(|(m, _)| m.message_id == r.message_id)
        {
            Some((_, n)) => *n += 1,
            None => messages.push((r, 1)),
        }
    }
    match output {
        Output::Json => print_json(&json!({
            "gateways_asked": t.gateways_asked,
            "unreachable": unreachable_json(&t),
            "messages": messages.iter().map(|(r, n)| json!({
                "message_id": r.message_id,
                "subject": r.subject,
                "first_at_us": r.at_us,
                "region": r.region,
                "gateway_id": r.gateway_id,
                "records": n,
            })).collect::<Vec<_>>(),
        })),
        Output::Text => {
            if messages.is_empty() {
                println!(
                    "no traced message matches ({} gateway(s) asked; sampling rate {})",
                    t.gateways_asked,
                    rates(&t)
                );
            }
            for (r, n) in &messages {
                println!(
                    "{}  {}  {}/{}  {} record(s)",
                    r.message_id,
                    printable(&r.subject),
                    r.region,
                    r.gateway_id,
                    n
                );
            }
        }
    }
    for u in &t.unreachable {
        eprintln!(
            "warning: gateway {} ({}) could not be asked: {}",
            u.gateway_id, u.region, u.error
        );
    }
    Ok(())
}
