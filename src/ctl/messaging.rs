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
    b.connect()
        .await
        .with_context(|| format!("cannot reach the gateway at {gateway}"))
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
    for _ in 0..count {
        let msg = OutgoingMessage {
            subject: subject.to_owned(),
            reply_to: None,
            headers: headers.clone(),
            payload: payload.clone(),
        };
        delivered += client.publish_message_acked(msg).await? as u64;
    }
    match output {
        Output::Text => {
            println!("published {count} message(s) to {subject}: {delivered} deliveries")
        }
        Output::Json => print_json(&json!({
            "subject": subject, "published": count, "delivered": delivered
        })),
    }
    Ok(())
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
