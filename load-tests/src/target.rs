//! Targets: one small interface over a Nexus gateway (through `nexus-client`) and a NATS
//! server (through `async-nats`), so every scenario drives both with the identical workload.
//!
//! Only what the scenarios need is exposed: publish, (queue) subscribe, request, reply,
//! flush, and, for Nexus only, bidirectional streams.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use futures::StreamExt;

/// Where the load goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A Nexus gateway; holds the client's URL (`http://host:port` for gRPC,
    /// `nexus+tcp://host:port` for the native transport).
    Nexus(String),
    /// A NATS server; holds the NATS URL (`nats://host:port`).
    Nats(String),
}

impl FromStr for Target {
    type Err = anyhow::Error;

    /// `nexus://host:port` (or `http://host:port`) for Nexus over gRPC,
    /// `nexus+tcp://host:port` for Nexus over the native transport, `nats://host:port` for
    /// NATS.
    fn from_str(s: &str) -> Result<Self> {
        if s.starts_with("nexus+tcp://") {
            Ok(Target::Nexus(s.to_owned()))
        } else if let Some(rest) = s.strip_prefix("nexus://") {
            Ok(Target::Nexus(format!("http://{rest}")))
        } else if s.starts_with("http://") {
            Ok(Target::Nexus(s.to_owned()))
        } else if s.starts_with("nats://") {
            Ok(Target::Nats(s.to_owned()))
        } else {
            bail!(
                "unknown target {s:?}: use nexus://host:port, nexus+tcp://host:port or nats://host:port"
            )
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Nexus(url) if url.starts_with("nexus+tcp://") => f.write_str(url),
            Target::Nexus(url) => write!(f, "nexus://{}", url.trim_start_matches("http://")),
            Target::Nats(url) => f.write_str(url),
        }
    }
}

impl Target {
    /// `"nexus"` (gRPC), `"nexus native"` (the native transport) or `"nats"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Nexus(url) if url.starts_with("nexus+tcp://") => "nexus native",
            Target::Nexus(_) => "nexus",
            Target::Nats(_) => "nats",
        }
    }

    /// Whether the target has bidirectional streams (NATS core does not).
    pub fn supports_streams(&self) -> bool {
        matches!(self, Target::Nexus(_))
    }

    /// Opens one connection (a Nexus session or a NATS connection) with the client's
    /// default settings, except a request timeout of `request_timeout`.
    pub async fn connect(&self, name: &str, request_timeout: Duration) -> Result<Conn> {
        match self {
            Target::Nexus(url) => {
                let client = nexus_client::Client::builder(url)
                    .name(name)
                    .request_timeout(request_timeout)
                    .compression(compression_from_env()?)
                    .connect()
                    .await
                    .with_context(|| format!("connecting to Nexus at {url}"))?;
                Ok(Conn::Nexus(client))
            }
            Target::Nats(url) => {
                let client = async_nats::ConnectOptions::new()
                    .name(name)
                    .request_timeout(Some(request_timeout))
                    .connect(url.as_str())
                    .await
                    .with_context(|| format!("connecting to NATS at {url}"))?;
                Ok(Conn::Nats(client))
            }
        }
    }
}

/// Environment variable choosing the Nexus client's payload codec: `zstd` (the client's
/// default), `lz4` or `off`.
pub const COMPRESSION_ENV: &str = "NEXUS_LOAD_COMPRESSION";

fn compression_from_env() -> Result<Option<nexus_client::Codec>> {
    match std::env::var(COMPRESSION_ENV).as_deref() {
        Err(_) | Ok("zstd") => Ok(Some(nexus_client::Codec::Zstd)),
        Ok("lz4") => Ok(Some(nexus_client::Codec::Lz4)),
        Ok("off") => Ok(None),
        Ok(other) => anyhow::bail!("{COMPRESSION_ENV}={other:?}: use zstd, lz4 or off"),
    }
}

/// One connection to a target. Cheap to clone.
#[derive(Clone)]
pub enum Conn {
    /// A Nexus session.
    Nexus(nexus_client::Client),
    /// A NATS connection.
    Nats(async_nats::Client),
}

/// A message received on a subscription.
pub enum Incoming {
    /// From Nexus.
    Nexus(nexus_client::Message),
    /// From NATS.
    Nats(async_nats::Message),
}

impl Incoming {
    /// The payload.
    pub fn payload(&self) -> &Bytes {
        match self {
            Incoming::Nexus(m) => &m.payload,
            Incoming::Nats(m) => &m.payload,
        }
    }
}

/// A subscription (plain or in a queue group).
pub enum Sub {
    /// On Nexus.
    Nexus(nexus_client::Subscription),
    /// On NATS.
    Nats(async_nats::Subscriber),
}

impl Sub {
    /// The next message, or `None` when the subscription ended.
    pub async fn next(&mut self) -> Option<Incoming> {
        match self {
            Sub::Nexus(s) => s.next_message().await.map(Incoming::Nexus),
            Sub::Nats(s) => s.next().await.map(Incoming::Nats),
        }
    }
}

impl Conn {
    /// Fire-and-forget publish.
    pub async fn publish(&self, subject: &str, payload: Bytes) -> Result<()> {
        match self {
            Conn::Nexus(c) => c.publish(subject, payload).await?,
            Conn::Nats(c) => c.publish(subject.to_owned(), payload).await?,
        }
        Ok(())
    }

    /// Subscribes to `subject`, in queue group `group` if given. Returns once the
    /// subscription is active on the server.
    pub async fn subscribe(&self, subject: &str, group: Option<&str>) -> Result<Sub> {
        match self {
            Conn::Nexus(c) => Ok(Sub::Nexus(match group {
                Some(g) => c.queue_subscribe(subject, g).await?,
                None => c.subscribe(subject).await?,
            })),
            Conn::Nats(c) => {
                let sub = match group {
                    Some(g) => c.queue_subscribe(subject.to_owned(), g.to_owned()).await?,
                    None => c.subscribe(subject.to_owned()).await?,
                };
                // NATS confirms nothing: a flush (PING/PONG) proves the server has the SUB.
                c.flush().await?;
                Ok(Sub::Nats(sub))
            }
        }
    }

    /// Subscribes to `subject` for the background of a scale run: Nexus confirms it as
    /// usual; on NATS nothing waits for the server (the caller flushes once for many).
    pub async fn subscribe_unconfirmed(&self, subject: &str) -> Result<Sub> {
        match self {
            Conn::Nexus(c) => Ok(Sub::Nexus(c.subscribe(subject).await?)),
            Conn::Nats(c) => Ok(Sub::Nats(c.subscribe(subject.to_owned()).await?)),
        }
    }

    /// Sends a request and waits for the reply's payload.
    pub async fn request(&self, subject: &str, payload: Bytes) -> Result<Bytes> {
        match self {
            Conn::Nexus(c) => Ok(c.request(subject, payload).await?.payload),
            Conn::Nats(c) => Ok(c.request(subject.to_owned(), payload).await?.payload),
        }
    }

    /// Answers a request received on a subscription.
    pub async fn reply(&self, request: &Incoming, payload: Bytes) -> Result<()> {
        match (self, request) {
            (Conn::Nexus(c), Incoming::Nexus(m)) => c.reply(m, payload).await?,
            (Conn::Nats(c), Incoming::Nats(m)) => {
                let reply = m
                    .reply
                    .clone()
                    .ok_or_else(|| anyhow!("NATS message has no reply subject"))?;
                c.publish(reply, payload).await?;
            }
            _ => bail!("message from another kind of target"),
        }
        Ok(())
    }

    /// Waits until everything published so far reached the server.
    pub async fn flush(&self) -> Result<()> {
        match self {
            Conn::Nexus(c) => c.flush().await?,
            Conn::Nats(c) => c.flush().await?,
        }
        Ok(())
    }

    /// The Nexus client, for scenarios only Nexus supports (streams).
    pub fn nexus(&self) -> Option<&nexus_client::Client> {
        match self {
            Conn::Nexus(c) => Some(c),
            Conn::Nats(_) => None,
        }
    }

    /// Closes the connection, after flushing what is queued.
    pub async fn close(self) {
        match self {
            Conn::Nexus(c) => c.close().await,
            Conn::Nats(c) => {
                let _ = c.flush().await;
                drop(c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        assert_eq!(
            "nexus://127.0.0.1:7422".parse::<Target>().unwrap(),
            Target::Nexus("http://127.0.0.1:7422".into())
        );
        assert_eq!(
            "nats://127.0.0.1:4222".parse::<Target>().unwrap(),
            Target::Nats("nats://127.0.0.1:4222".into())
        );
        assert!("tcp://x:1".parse::<Target>().is_err());
        let native = "nexus+tcp://127.0.0.1:7422".parse::<Target>().unwrap();
        assert_eq!(native, Target::Nexus("nexus+tcp://127.0.0.1:7422".into()));
        assert_eq!(native.to_string(), "nexus+tcp://127.0.0.1:7422");
        assert_eq!(
            Target::Nexus("http://127.0.0.1:7422".into()).to_string(),
            "nexus://127.0.0.1:7422"
        );
    }
}
