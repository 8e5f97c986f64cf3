//! `nexusctl topology --links`: what each live gateway reports about its links on its
//! operator endpoint (`/v1/status`): cluster links to the other gateways of its region, its
//! federation links (the home it uses in each other region) and its replication spools. The
//! control plane only knows who is registered; the links are each gateway's own view, read
//! directly from it, so a gateway that cannot be reached is shown as such rather than failing
//! the command.

use serde_json::{Value, json};

use super::admin::http_get;

/// What one gateway reported, or why it could not be asked.
pub struct GatewayLinks {
    pub gateway: String,
    pub report: Result<Value, String>,
}

/// Reads `/v1/status` from the gateway at `metrics_addr`.
pub async fn fetch(gateway: &str, metrics_addr: &str) -> GatewayLinks {
    let report = async {
        if metrics_addr.is_empty() {
            return Err("registered no HTTP (metrics) address".to_owned());
        }
        let (status, body) = http_get(metrics_addr, "/v1/status")
            .await
            .map_err(|e| format!("{e:#}"))?;
        if status != 200 {
            return Err(format!("answered HTTP {status}: {}", body.trim()));
        }
        let v: Value =
            serde_json::from_str(&body).map_err(|e| format!("sent malformed JSON: {e}"))?;
        Ok(json!({
            "sessions": v["sessions"],
            "cluster": v["cluster"],
            "links": v["links"],
            "spools": v["routes"],
            "replicas": v["replicas"],
        }))
    }
    .await;
    GatewayLinks {
        gateway: gateway.to_owned(),
        report,
    }
}

/// The JSON form: the gateway's report, or `{"error": ...}`.
pub fn to_json(l: &GatewayLinks) -> Value {
    match &l.report {
        Ok(v) => v.clone(),
        Err(e) => json!({ "error": e }),
    }
}

/// Prints one gateway's links as indented lines under the region's table.
pub fn print(l: &GatewayLinks) {
    let v = match &l.report {
        Ok(v) => v,
        Err(e) => {
            println!("  {}: unreachable: {e}", l.gateway);
            return;
        }
    };
    println!("  {}: {} session(s)", l.gateway, num(&v["sessions"]));
    let items = |k: &str| v[k].as_array().cloned().unwrap_or_default();
    for c in items("cluster") {
        println!(
            "    cluster  {:<16} rtt {} ms  forwarded {}  confirmed {}  received {}",
            text(&c["gateway_id"]),
            ms(&c["rtt_ms"]),
            num(&c["forwarded"]),
            num(&c["confirmed"]),
            num(&c["received"]),
        );
    }
    for f in items("links") {
        println!(
            "    region   {:<16} {} via {}  rtt {} ms  forwarded {}  dropped {}",
            text(&f["region"]),
            text(&f["state"]),
            text(&f["via"]),
            ms(&f["rtt_ms"]),
            num(&f["forwarded"]),
            num(&f["dropped"]),
        );
    }
    for s in items("spools") {
        println!(
            "    spool    {} -> {}  {}  depth {}  lag {} ms",
            text(&s["route"]),
            text(&s["region"]),
            text(&s["consistency"]),
            num(&s["spool_depth"]),
            ms(&s["replication_lag_ms"]),
        );
    }
    let replicas = &v["replicas"];
    if replicas["copies"].as_u64().is_some_and(|c| c > 1) {
        println!(
            "    replica  copies kept by {}",
            match &replicas["replica"] {
                Value::String(g) => g.clone(),
                _ => "nobody (no other gateway of the region is linked)".to_owned(),
            }
        );
    }
    for h in replicas["held"].as_array().into_iter().flatten() {
        println!(
            "    replica  holds {} messages of {}{}",
            num(&h["messages"]),
            text(&h["origin"]),
            if h["taking_over"] == true {
                " (taken over: sending them)"
            } else {
                ""
            },
        );
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn num(v: &Value) -> String {
    v.as_i64().map_or_else(|| text(v), |n| n.to_string())
}

fn ms(v: &Value) -> String {
    v.as_f64().map_or_else(|| "-".into(), |x| format!("{x:.1}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_print_as_operators_read_them() {
        assert_eq!(text(&Value::Null), "-");
        assert_eq!(text(&json!("up")), "up");
        assert_eq!(num(&json!(42)), "42");
        assert_eq!(ms(&json!(0.4321)), "0.4");
        assert_eq!(ms(&Value::Null), "-");
    }

    #[tokio::test]
    async fn a_gateway_without_an_address_is_reported_not_fatal() {
        let l = fetch("gw-x", "").await;
        assert_eq!(
            to_json(&l),
            json!({"error": "registered no HTTP (metrics) address"})
        );
    }
}
