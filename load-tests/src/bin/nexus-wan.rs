//! `nexus-wan`: the WAN emulator as a process. Relays UDP from `--listen` to `--target`
//! with delay, jitter, loss and a bandwidth cap per direction, and takes commands over a small HTTP API:
//!
//! ```text
//! GET  /            current impairment and counters (JSON)
//! POST /set?delay_ms=40&jitter_ms=5&loss=0.01&rate_kbps=20000
//! POST /cut         drop everything until /heal
//! POST /heal
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use nexus_load::wan::{Impairment, WanProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(
    name = "nexus-wan",
    about = "UDP WAN emulator between Nexus regions (delay, jitter, loss, cuts)"
)]
struct Args {
    /// Address clients send to.
    #[arg(long)]
    listen: SocketAddr,
    /// Address datagrams are relayed to (a gateway's federation port).
    #[arg(long)]
    target: SocketAddr,
    /// One-way delay in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Jitter in milliseconds (uniform, either way).
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Loss probability, 0..=1.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Bandwidth of each direction in kbit/s; 0 = unlimited.
    #[arg(long, default_value_t = 0)]
    rate_kbps: u64,
    /// HTTP control address.
    #[arg(long)]
    control: Option<SocketAddr>,
}

fn parse_query(q: &str, current: Impairment) -> Result<Impairment, String> {
    let mut imp = current;
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not key=value"))?;
        let num = |v: &str| {
            v.parse::<f64>()
                .map_err(|_| format!("{k}={v:?} is not a number"))
        };
        match k {
            "delay_ms" => imp.delay = Duration::from_secs_f64(num(v)?.max(0.0) / 1000.0),
            "rate_kbps" => imp.rate_kbps = num(v)?.max(0.0) as u64,
            "jitter_ms" => imp.jitter = Duration::from_secs_f64(num(v)?.max(0.0) / 1000.0),
            "loss" => {
                let l = num(v)?;
                if !(0.0..=1.0).contains(&l) {
                    return Err(format!("loss={l} must be between 0 and 1"));
                }
                imp.loss = l;
            }
            _ => {
                return Err(format!(
                    "unknown parameter {k:?} (delay_ms, jitter_ms, loss, rate_kbps)"
                ));
            }
        }
    }
    Ok(imp)
}

async fn control(listener: TcpListener, proxy: Arc<WanProxy>) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let line = req.lines().next().unwrap_or("");
            let mut parts = line.split_whitespace();
            let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let (status, body) = match (method, path) {
                ("GET", "/") => (200, String::new()),
                ("POST", "/cut") => {
                    proxy.cut();
                    (200, String::new())
                }
                ("POST", "/heal") => {
                    proxy.heal();
                    (200, String::new())
                }
                ("POST", "/set") => match parse_query(query, proxy.impairment()) {
                    Ok(imp) => {
                        proxy.set(imp);
                        (200, String::new())
                    }
                    Err(e) => (400, e),
                },
                _ => (404, format!("no route {method} {path}")),
            };
            let body = if status == 200 {
                serde_json::json!({"impairment": proxy.impairment(), "stats": proxy.stats()})
                    .to_string()
            } else {
                serde_json::json!({"error": body}).to_string()
            };
            let reply = format!(
                "HTTP/1.0 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                match status {
                    200 => "OK",
                    404 => "Not Found",
                    _ => "Bad Request",
                },
                body.len()
            );
            let _ = s.write_all(reply.as_bytes()).await;
        });
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let imp = parse_query(
        &format!(
            "delay_ms={}&jitter_ms={}&loss={}&rate_kbps={}",
            a.delay_ms, a.jitter_ms, a.loss, a.rate_kbps
        ),
        Impairment::default(),
    )
    .map_err(anyhow::Error::msg)?;
    let proxy = Arc::new(
        WanProxy::start(a.listen, a.target, imp)
            .await
            .with_context(|| format!("cannot listen on {}", a.listen))?,
    );
    println!(
        "nexus-wan relaying {} -> {}",
        proxy.listen_addr, proxy.target
    );
    if let Some(addr) = a.control {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (control)"))?;
        println!("nexus-wan control on http://{}", l.local_addr()?);
        tokio::spawn(control(l, proxy.clone()));
    }
    tokio::signal::ctrl_c().await?;
    Ok(())
}
