//! Commands that talk to a gateway through the Rust adapter: publish, subscribe, request,
//! and the gateway's own description of itself.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use nexus_client::{Client, Headers, Message, OutgoingMessage};
use serde_json::json;

use super::{Output, print_json};

pub async fn connect(
    gateway: &str,
    api_key: Option<&str>,
    tls: &super::ClientTls,
) -> anyhow::Result<Client> {
    let mut b = Client::builder(gateway)
        .name("nexusctl")
        .connect_timeout(Duration::from_secs(5));
    if let Some(ca) = &tls.ca {
        b = b.tls_ca_file(ca)?;
    }
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        b = b.tls_client_cert_files(cert, key)?;
    }
    if let Some(k) = api_key {
        b = b.api_key(k);
    }
    b.connect().await.map_err(|e| session_refused(gateway, e))
}

/// Says what stopped the session: the gateway could not be reached at all, or it answered
/// and refused (its connection limit, the API key, draining), in its own words.
fn session_refused(gateway: &str, e: nexus_client::Error) -> anyhow::Error {
    use nexus_client::Error as E;
    let refused =
        |why: &str, message: &str| anyhow::anyhow!("the gateway at {gateway} {why}: {message}");
    match &e {
        E::Limit { message } => refused("refused the session (at its limit)", message),
        E::Transport(s) if s.code() == tonic::Code::ResourceExhausted => {
            refused("refused the session (at its limit)", s.message())
        }
        E::Denied { message } => refused("refused the API key", message),
        E::Transport(s)
            if matches!(
                s.code(),
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
            ) =>
        {
            refused("refused the API key", s.message())
        }
        E::Unavailable { message } => refused("is not accepting sessions", message),
        E::Connect(_) | E::Transport(_) | E::Disconnected => {
            anyhow::Error::new(e).context(format!("cannot reach the gateway at {gateway}"))
        }
        _ => anyhow::Error::new(e).context(format!("no session with the gateway at {gateway}")),
    }
}

pub fn parse_headers(raw: &[String]) -> anyhow::Result<Headers> {
    let mut headers = Headers::new();
    for h in raw {
        let Some((k, v)) = h.split_once('=') else {
            bail!("header {h:?} must look like key=value");
        };
        headers.append(k.trim(), v);
    }
    Ok(headers)
}

/// The payload argument, or standard input for `-`.
pub fn read_payload(arg: &str) -> anyhow::Result<Bytes> {
    if arg == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).context("reading stdin")?;
        Ok(buf.into())
    } else {
        Ok(Bytes::copy_from_slice(arg.as_bytes()))
    }
}

pub fn print_message(msg: &Message, output: Output) {
    match output {
        Output::Text => println!(
            "[{}] {}",
            msg.subject,
            String::from_utf8_lossy(&msg.payload)
        ),
        Output::Json => print_json(&json!({
            "subject": msg.subject,
            "reply_to": msg.reply_to,
            "id": msg.id.map(|id| id.to_string()),
            "headers": msg.headers.iter().map(|(k, v)| [k, v]).collect::<Vec<_>>(),
            "payload": String::from_utf8_lossy(&msg.payload),
        })),
    }
}

pub async fn publish(
    client: &Client,
    subject: &str,
    payload: Bytes,
    headers: Headers,
    count: u64,
    output: Output,
) -> anyhow::Result<()> {
    let mut delivered = 0u64;
    let mut duplicates = 0u64;
    let mut forwarded = std::collections::BTreeSet::new();
    let mut spooled = std::collections::BTreeSet::new();
    let mut ids = Vec::new();
    for _ in 0..count {
        let msg = OutgoingMessage {
            subject: subject.to_owned(),
            reply_to: None,
            headers: headers.clone(),
            payload: payload.clone(),
        };
        let outcome = client.publish_message_confirmed(msg).await?;
        delivered += u64::from(outcome.delivered);
        duplicates += u64::from(outcome.duplicate);
        ids.push(outcome.id);
        forwarded.extend(outcome.forwarded_regions);
        spooled.extend(outcome.spooled_regions);
    }
    let region = client.server_info().map(|i| i.region).unwrap_or_default();
    match output {
        Output::Text => {
            println!(
                "{}",
                publish_summary(
                    count, subject, &region, delivered, &forwarded, &spooled, duplicates
                )
            );
            if let [id] = ids.as_slice() {
                println!("message id {id}");
            }
        }
        Output::Json => print_json(&json!({
            "subject": subject,
            "published": count,
            "region": region,
            "delivered": delivered,
            "forwarded_regions": forwarded,
            "spooled_regions": spooled,
            "duplicates": duplicates,
            "message_ids": ids,
        })),
    }
    Ok(())
}

/// One line saying where the messages went: local deliveries, then the other regions.
fn publish_summary(
    count: u64,
    subject: &str,
    region: &str,
    delivered: u64,
    forwarded: &std::collections::BTreeSet<String>,
    spooled: &std::collections::BTreeSet<String>,
    duplicates: u64,
) -> String {
    let noun = if count == 1 { "message" } else { "messages" };
    let local = if region.is_empty() {
        "this region".to_owned()
    } else {
        region.to_owned()
    };
    let deliveries = if delivered == 1 {
        "delivery"
    } else {
        "deliveries"
    };
    let mut line =
        format!("published {count} {noun} to {subject}: {delivered} {deliveries} in {local}");
    let join =
        |s: &std::collections::BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(", ");
    if !forwarded.is_empty() {
        line.push_str(&format!("; forwarded to {}", join(forwarded)));
    }
    if !spooled.is_empty() {
        line.push_str(&format!("; spooled for {}", join(spooled)));
    }
    if forwarded.is_empty() && spooled.is_empty() {
        line.push_str("; not sent to other regions");
    }
    if duplicates > 0 {
        line.push_str(&format!(
            "; {duplicates} already accepted before (duplicate id, not delivered again)"
        ));
    }
    line
}

pub async fn subscribe(
    client: &Client,
    pattern: &str,
    queue: Option<&str>,
    count: Option<u64>,
    output: Output,
) -> anyhow::Result<()> {
    let mut sub = match queue {
        Some(q) => client.queue_subscribe(pattern, q).await?,
        None => client.subscribe(pattern).await?,
    };
    if output == Output::Text {
        eprintln!("listening on {pattern} (Ctrl-C to stop)");
    }
    let mut seen = 0u64;
    loop {
        tokio::select! {
            msg = sub.next_message() => match msg {
                Some(msg) => {
                    print_message(&msg, output);
                    seen += 1;
                    if count.is_some_and(|c| seen >= c) {
                        return Ok(());
                    }
                }
                None => bail!("the subscription ended"),
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

pub async fn request(
    client: &Client,
    subject: &str,
    payload: Bytes,
    headers: Headers,
    timeout: Duration,
    output: Output,
) -> anyhow::Result<()> {
    let reply = client
        .request_with(subject, headers, payload, timeout)
        .await?;
    print_message(&reply, output);
    Ok(())
}

pub fn info(client: &Client, output: Output) -> anyhow::Result<()> {
    let info = client
        .server_info()
        .context("the gateway sent no Welcome")?;
    match output {
        Output::Text => {
            println!("gateway            {}", info.gateway_id);
            println!("region             {}", info.region);
            println!("session            {}", info.session_id);
            println!("protocol           {}", info.protocol);
            println!("max payload        {} bytes", info.max_payload);
            println!("max subscriptions  {}", info.max_subscriptions);
        }
        Output::Json => print_json(&json!({
            "gateway_id": info.gateway_id,
            "region": info.region,
            "session_id": info.session_id,
            "protocol": info.protocol,
            "max_payload": info.max_payload,
            "max_subscriptions": info.max_subscriptions,
        })),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::publish_summary;

    #[test]
    fn the_summary_names_local_deliveries_and_other_regions() {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            publish_summary(
                1,
                "greetings.world",
                "us-east",
                0,
                &set(&["ap-south"]),
                &set(&[]),
                0
            ),
            "published 1 message to greetings.world: 0 deliveries in us-east; forwarded to ap-south"
        );
        assert_eq!(
            publish_summary(2, "a", "eu-west", 1, &set(&[]), &set(&["us-east"]), 1),
            "published 2 messages to a: 1 delivery in eu-west; spooled for us-east; 1 already accepted before (duplicate id, not delivered again)"
        );
        assert_eq!(
            publish_summary(1, "a", "eu-west", 3, &set(&[]), &set(&[]), 0),
            "published 1 message to a: 3 deliveries in eu-west; not sent to other regions"
        );
    }
}
