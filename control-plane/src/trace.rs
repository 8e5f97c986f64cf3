//! `GetTrace`: what happened to one message across the deployment. Each gateway keeps the
//! records of the messages it traced (sampled, or forced by the `nexus-trace: 1` header) and
//! serves them on its operator endpoint, `GET http://<metrics_addr>/v1/trace`; this module
//! asks every live registered gateway of every region at once, each within a short timeout,
//! and merges the answers in time order. A gateway that cannot be asked is reported, not
//! fatal: the rest of the path is still useful.

use std::time::Duration;

use nexus_proto::v1::{
    GatewayInfo, GetTraceRequest, GetTraceResponse, TraceGatewayError, TraceRecord,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one gateway may take to answer.
const GATEWAY_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest answer read from one gateway.
const MAX_BODY: u64 = 32 * 1024 * 1024;

/// Percent-encodes a query parameter value.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `/v1/trace` query for `req`.
pub fn query(req: &GetTraceRequest) -> String {
    if !req.message_id.is_empty() {
        return format!("/v1/trace?id={}", escape(&req.message_id));
    }
    let mut q = format!(
        "/v1/trace?limit={}",
        if req.limit == 0 { 1000 } else { req.limit }
    );
    if !req.subject.is_empty() {
        q.push_str(&format!("&subject={}", escape(&req.subject)));
    }
    if req.since_ms > 0 {
        q.push_str(&format!("&since_ms={}", req.since_ms));
    }
    if req.until_ms > 0 {
        q.push_str(&format!("&until_ms={}", req.until_ms));
    }
    q
}

/// A plain HTTP/1.0 GET (so the answer is never chunked): the status and body.
pub(crate) async fn http_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .map_err(|e| format!("writing to {addr}: {e}"))?;
        let mut raw = Vec::new();
        (&mut stream)
            .take(MAX_BODY)
            .read_to_end(&mut raw)
            .await
            .map_err(|e| format!("reading from {addr}: {e}"))?;
        Ok::<_, String>(raw)
    };
    let raw = tokio::time::timeout(GATEWAY_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{addr} did not answer within {GATEWAY_TIMEOUT:?}"))??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("malformed HTTP answer from {addr}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("malformed HTTP status from {addr}"))?;
    Ok((status, body.to_owned()))
}

fn record(v: &Value) -> TraceRecord {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    TraceRecord {
        message_id: s("message_id"),
        trace_id: s("trace_id"),
        at_us: v["at_us"].as_i64().unwrap_or_default(),
        region: s("region"),
        gateway_id: s("gateway"),
        event: s("event"),
        reason: s("reason"),
        subject: s("subject"),
        peer: s("peer"),
        detail: s("detail"),
        latency_us: v["latency_us"].as_u64().unwrap_or_default(),
        count: v["count"].as_u64().unwrap_or_default() as u32,
    }
}

/// One gateway's records and sampling rate.
async fn ask(gw: &GatewayInfo, path: &str) -> Result<(Vec<TraceRecord>, f64), String> {
    if gw.metrics_addr.is_empty() {
        return Err("registered no HTTP (metrics) address".into());
    }
    let (status, body) = http_get(&gw.metrics_addr, path).await?;
    if status == 400 {
        return Err(format!("refused the query: {}", body.trim()));
    }
    if status != 200 {
        return Err(format!("answered HTTP {status}: {}", body.trim()));
    }
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("sent malformed JSON: {e}"))?;
    let records = v["records"]
        .as_array()
        .map(|a| a.iter().map(record).collect())
        .unwrap_or_default();
    Ok((records, v["sample_rate"].as_f64().unwrap_or_default()))
}

/// Asks every gateway in `gateways` and merges their records in time order.
pub async fn collect(gateways: &[GatewayInfo], req: &GetTraceRequest) -> GetTraceResponse {
    let path = query(req);
    let answers = futures::future::join_all(gateways.iter().map(|g| ask(g, &path))).await;
    let mut out = GetTraceResponse {
        gateways_asked: gateways.len() as u32,
        ..Default::default()
    };
    for (gw, answer) in gateways.iter().zip(answers) {
        match answer {
            Ok((records, rate)) => {
                out.records.extend(records);
                if !out.sample_rates.contains(&rate) {
                    out.sample_rates.push(rate);
                }
            }
            Err(error) => {
                tracing::debug!(gateway = %gw.id, %error, "trace query failed");
                out.unreachable.push(TraceGatewayError {
                    region: gw.region.clone(),
                    gateway_id: gw.id.clone(),
                    error,
                })
            }
        }
    }
    // Time order; at equal times (clocks of one gateway are microsecond-grained), the
    // gateway's own order is kept (the sort is stable).
    out.records.sort_by_key(|r| r.at_us);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_escaped() {
        let by_id = GetTraceRequest {
            message_id: "01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
            ..Default::default()
        };
        assert_eq!(query(&by_id), "/v1/trace?id=01ARZ3NDEKTSV4RRFFQ69G5FAV");
        let search = GetTraceRequest {
            subject: "orders.>".into(),
            since_ms: 5,
            ..Default::default()
        };
        assert_eq!(
            query(&search),
            "/v1/trace?limit=1000&subject=orders.%3E&since_ms=5"
        );
    }
}
