//! # nexus-client
//!
//! The Rust adapter for Nexus, a polyglot message router. A [`Client`]
//! keeps one gRPC session (`nexus.v1.Gateway/Session`) with a regional gateway, given by
//! address or discovered through DNS SRV (see [below](#gateway-discovery-dns-srv)), and
//! offers:
//!
//! * publish / subscribe with subject wildcards (`*` one token, trailing `>` the rest) and
//!   queue groups,
//! * request / reply ([`Client::request`], [`Client::serve`]),
//! * bidirectional streams with end-to-end credit-based flow control
//!   ([`Client::open_stream`], [`Client::listen_streams`]),
//! * automatic reconnection (exponential backoff with jitter) that re-creates subscriptions,
//!   failing over to another discovered gateway when the current one goes away,
//! * invisible batching: frames queued at the same time travel in one gRPC message.
//!
//! Every publish, request and stream open carries a W3C `traceparent` header (generated when
//! absent); see [`Message::traceparent`].
//!
//! ```no_run
//! use std::time::Duration;
//! use nexus_client::{Client, ServiceError};
//!
//! # async fn demo() -> nexus_client::Result<()> {
//! let client = Client::builder("http://127.0.0.1:7422")
//!     .name("orders-service")
//!     .request_timeout(Duration::from_secs(2))
//!     .connect()
//!     .await?;
//!
//! // Publish / subscribe.
//! let mut sub = client.subscribe("orders.*.created").await?;
//! client.publish("orders.eu.created", "order #1").await?;
//! let msg = sub.next_message().await.expect("subscription open");
//! println!("{} -> {:?}", msg.subject, msg.payload);
//!
//! // Request / reply.
//! let _svc = client
//!     .serve("math.double", Some("workers"), |m| async move {
//!         let n: u64 = std::str::from_utf8(&m.payload)
//!             .ok()
//!             .and_then(|s| s.parse().ok())
//!             .ok_or_else(|| ServiceError::new("not a number"))?;
//!         Ok((n * 2).to_string().into())
//!     })
//!     .await?;
//! let reply = client.request("math.double", "21").await?;
//! assert_eq!(&reply.payload[..], b"42");
//!
//! client.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! ## Backpressure
//!
//! Nothing is buffered without bound. Each subscription has a bounded buffer; when the
//! application falls behind, the client stops reading from the gateway and HTTP/2 flow
//! control pushes back on it (the gateway then applies its slow-consumer policy, reported by
//! [`Subscription::dropped`]). `publish()` waits when the outbound queue is full, which
//! happens when the gateway or network cannot keep up. Streams use credits, so
//! [`BiStream::send`] waits until the receiver consumed enough.
//!
//! ## Reconnection
//!
//! When the session breaks, in-flight requests, acked publishes, flushes and open streams fail
//! with [`Error::Disconnected`]; plain publishes stay queued and are sent after reconnecting;
//! subscriptions are re-sent with the same ids and keep delivering.
//!
//! ## Gateway discovery (DNS SRV)
//!
//! Besides `http://host:port`, [`Client::connect`] and [`Client::builder`] accept a discovery
//! name, `nexus+srv://<region>.<zone>[?dns=ip[:port]]`. The client looks up the SRV records
//! of `_nexus._tcp.<region>.<zone>` (published by the control plane's DNS responder), orders
//! them per RFC 2782 (lowest priority first, weighted random order within a priority),
//! resolves each target (A/AAAA glue, else A/AAAA lookups) and tries the gateways in that
//! order until one accepts the session.
//!
//! * The DNS server is, by precedence, [`ClientBuilder::dns_server`], the URL's `?dns=`,
//!   the [`NEXUS_DNS_SERVER`](DNS_SERVER_ENV) environment variable, then the name servers
//!   of `/etc/resolv.conf`.
//! * Errors: [`Error::InvalidAddress`] for a malformed address, [`Error::Discovery`] when
//!   the name does not resolve (e.g. NXDOMAIN for an unknown region, naming the SRV name),
//!   [`Error::NoGateway`] when no gateway accepted, listing each one tried
//!   ([`GatewayAttempt`]) and why.
//! * After a session breaks, reconnecting tries the other gateways first (the failed one
//!   and any that refused are moved to the end), re-resolving when the cached answer is
//!   older than its TTL or when no gateway of it accepted; rounds are separated by the
//!   reconnect backoff. [`Client::server_info`] shows the gateway in use.
//!
//! ```no_run
//! # async fn demo() -> nexus_client::Result<()> {
//! let client = nexus_client::Client::builder("nexus+srv://us-east.nexus.local")
//!     .dns_server("127.0.0.1:5353".parse().unwrap())
//!     .connect()
//!     .await?;
//! println!("connected to {}", client.server_info().unwrap().gateway_id);
//! # Ok(())
//! # }
//! ```

//!
//! ## TLS
//!
//! With the `tls` feature, a `https://host:port` address, or a `nexus+srv://` name with
//! [`ClientBuilder::tls`], connects over TLS (rustls with the *ring* provider, through tonic).
//! The gateway's certificate is verified against the CA certificates given with
//! [`ClientBuilder::tls_ca_pem`] or [`ClientBuilder::tls_ca_file`], else against the system's
//! trust store, for the host of the address or the name given with
//! [`ClientBuilder::tls_domain`]. Without the feature a `https://` address is refused with
//! [`Error::InvalidAddress`] before anything is sent.
//!
//! ## Tracing
//!
//! Messages without a `traceparent` of their own continue the current trace context: see
//! [`trace`] ([`trace::with_traceparent`], and with the `opentelemetry` feature the current
//! `tracing` span's OpenTelemetry context). `serve` handlers run inside the request's.
//!
//! ## Features
//!
//! | Feature | What it adds |
//! |---|---|
//! | `tls` | TLS towards the gateway (see [above](#tls)) |
//! | `opentelemetry` | trace context from and to `tracing` spans through `tracing-opentelemetry` |

#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]

// The README's code blocks compile as doctests too (tests/readme.rs also runs its hello world).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod batch;
mod client;
mod compression;
mod connection;
mod credit;
mod discovery;
mod error;
mod headers;
mod ids;
mod inbox;
mod message;
mod native;
mod queue;
mod service;
mod stream;
mod subject;
mod subscription;
mod tls;
pub mod trace;

pub use bytes::Bytes;
pub use client::{
    Client, ClientBuilder, DEFAULT_PUBLISH_RETRY_TIMEOUT, PublishOutcome, ServerInfo,
};
pub use compression::Codec;
pub use discovery::DNS_SERVER_ENV;
pub use error::{Error, GatewayAttempt, Result, ServiceError};
pub use headers::{Headers, TRACEPARENT, is_valid_traceparent, new_traceparent};
pub use message::{Message, OutgoingMessage};
pub use native::Transport;
/// The string type of [`Message::subject`] and [`Message::reply_to`]: a UTF-8 slice of the
/// buffer the message arrived in (it derefs to `&str`).
pub use nexus_proto::ByteString;
pub use service::Service;
pub use stream::{BiStream, StreamListener, StreamReceiver, StreamSender};
pub use subject::{
    RESERVED_PREFIX, subject_matches, validate_publish_subject, validate_subscribe_subject,
};
pub use subscription::Subscription;
