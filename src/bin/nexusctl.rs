//! `nexusctl`: the operator's command line. Today it talks to a gateway: publish, subscribe,
//! request, and show what the gateway says about itself. Route, schema and key management
//! arrive with the control plane.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use nexus_client::{Client, Headers, Message, OutgoingMessage};

#[derive(Parser)]
#[command(
    name = "nexusctl",
    version,
    about = "Operate Nexus from the command line",
    long_about = "Operate Nexus from the command line.\n\n\
Examples:\n  \
nexusctl sub 'orders.>'                      print every message under orders.\n  \
nexusctl pub orders.eu.created '{\"id\":1}'   publish one message\n  \
nexusctl req math.double 21 --timeout 2s     call a service and print its reply\n  \
nexusctl info                                show the gateway's region, id and limits\n\n\
The gateway address comes from --gateway or NEXUS_URL (default http://127.0.0.1:7422)."
)]
struct Cli {
    /// Gateway to talk to.
    #[arg(
        long,
        global = true,
        env = "NEXUS_URL",
        default_value = "http://127.0.0.1:7422"
    )]
    gateway: String,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Publish a message (payload from the argument, or stdin with `-`).
    Pub {
        subject: String,
        payload: String,
        /// Header as key=value; repeatable.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// Publish this many copies.
        #[arg(long, default_value_t = 1)]
        count: u64,
    },
    /// Subscribe and print messages until interrupted (or --count messages).
    Sub {
        /// Subject pattern: `*` matches one token, a trailing `>` the rest.
        pattern: String,
        /// Join this queue group (each message goes to one member).
        #[arg(long)]
        queue: Option<String>,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Send a request and print the reply.
    Req {
        subject: String,
        payload: String,
        /// Header as key=value; repeatable.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// How long to wait, e.g. 500ms, 2s.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Show the gateway's region, id, protocol and limits.
    Info,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "ms"));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 2s or 1m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: unknown unit {unit:?} (use ms, s or m)")),
    }
}

fn parse_headers(raw: &[String]) -> anyhow::Result<Headers> {
    let mut headers = Headers::new();
    for h in raw {
        let Some((k, v)) = h.split_once('=') else {
            bail!("header {h:?} must look like key=value");
        };
        headers.append(k.trim(), v);
    }
    Ok(headers)
}

fn read_payload(arg: &str) -> anyhow::Result<Vec<u8>> {
    if arg == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).context("reading stdin")?;
        Ok(buf)
    } else {
        Ok(arg.as_bytes().to_vec())
    }
}

fn print_message(msg: &Message, output: Output) {
    match output {
        Output::Text => {
            let payload = String::from_utf8_lossy(&msg.payload);
            println!("[{}] {}", msg.subject, payload);
        }
        Output::Json => {
            let headers: Vec<String> = msg
                .headers
                .iter()
                .map(|(k, v)| format!("[{},{}]", json_str(k), json_str(v)))
                .collect();
            println!(
                "{{\"subject\":{},\"reply_to\":{},\"id\":{},\"headers\":[{}],\"payload\":{}}}",
                json_str(&msg.subject),
                msg.reply_to
                    .as_deref()
                    .map(json_str)
                    .unwrap_or_else(|| "null".into()),
                msg.id
                    .map(|id| json_str(&id.to_string()))
                    .unwrap_or_else(|| "null".into()),
                headers.join(","),
                json_str(&String::from_utf8_lossy(&msg.payload)),
            );
        }
    }
}

/// Minimal JSON string encoding (keeps the binary free of a JSON dependency for one line).
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = Client::builder(&cli.gateway)
        .name("nexusctl")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot reach the gateway at {}", cli.gateway))?;
    match cli.command {
        Command::Pub {
            subject,
            payload,
            headers,
            count,
        } => {
            let headers = parse_headers(&headers)?;
            let payload = bytes::Bytes::from(read_payload(&payload)?);
            let mut delivered = 0u64;
            for _ in 0..count {
                let msg = OutgoingMessage {
                    subject: subject.clone(),
                    reply_to: None,
                    headers: headers.clone(),
                    payload: payload.clone(),
                };
                delivered += client.publish_message_acked(msg).await? as u64;
            }
            match cli.output {
                Output::Text => {
                    println!("published {count} message(s) to {subject}: {delivered} deliveries")
                }
                Output::Json => println!(
                    "{{\"subject\":{},\"published\":{count},\"delivered\":{delivered}}}",
                    json_str(&subject)
                ),
            }
        }
        Command::Sub {
            pattern,
            queue,
            count,
        } => {
            let mut sub = match &queue {
                Some(q) => client.queue_subscribe(&pattern, q).await?,
                None => client.subscribe(&pattern).await?,
            };
            if cli.output == Output::Text {
                eprintln!("listening on {pattern} (Ctrl-C to stop)");
            }
            let mut seen = 0u64;
            loop {
                tokio::select! {
                    msg = sub.next_message() => match msg {
                        Some(msg) => {
                            print_message(&msg, cli.output);
                            seen += 1;
                            if count.is_some_and(|c| seen >= c) {
                                break;
                            }
                        }
                        None => bail!("the subscription ended"),
                    },
                    _ = tokio::signal::ctrl_c() => break,
                }
            }
        }
        Command::Req {
            subject,
            payload,
            headers,
            timeout,
        } => {
            let headers = parse_headers(&headers)?;
            let payload = bytes::Bytes::from(read_payload(&payload)?);
            let reply = client
                .request_with(&subject, headers, payload, timeout)
                .await?;
            print_message(&reply, cli.output);
        }
        Command::Info => {
            let info = client
                .server_info()
                .context("the gateway sent no Welcome")?;
            match cli.output {
                Output::Text => {
                    println!("gateway            {}", info.gateway_id);
                    println!("region             {}", info.region);
                    println!("session            {}", info.session_id);
                    println!("protocol           {}", info.protocol);
                    println!("max payload        {} bytes", info.max_payload);
                    println!("max subscriptions  {}", info.max_subscriptions);
                }
                Output::Json => println!(
                    "{{\"gateway_id\":{},\"region\":{},\"session_id\":{},\"protocol\":{},\"max_payload\":{},\"max_subscriptions\":{}}}",
                    json_str(&info.gateway_id),
                    json_str(&info.region),
                    json_str(&info.session_id),
                    info.protocol,
                    info.max_payload,
                    info.max_subscriptions
                ),
            }
        }
    }
    client.close().await;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nexusctl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
