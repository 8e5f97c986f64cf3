//! `nexus-gateway`: the regional gateway that adapters connect to.
//!
//! A message's path through this crate:
//! 1. [`service`] accepts a gRPC `Session` (or a unary call) and spawns a [`session`] task.
//! 2. The session validates each frame ([`subject`], limits from [`config`]) and hands it to
//!    the [`router`].
//! 3. The router matches the subject in the lock-free [`subject_table`] and, for queue
//!    groups and requests, asks the group's [`balancer`] (P2C over Peak-EWMA, with outlier
//!    ejection) for one member. Streams are linked by [`streams`].
//! 4. Each delivery is queued on the target session's [`outbound`] queue, bounded in bytes,
//!    where the slow-consumer policy applies; its response stream batches frames out.
//!
//! Before step 1, [`transport`] admits TCP connections within per-address budgets and closes
//! idle ones, and [`admission`] keeps sessions that have not sent their Hello in a budget of
//! their own, so that anonymous peers cannot lock out keyed clients.
//!
//! [`metrics`] holds the Prometheus series, [`http`] serves them and the JSON [`status`], [`trace`] carries W3C
//! trace context in message headers, [`trace_store`] keeps what happened to sampled messages
//! at each hop (`nexusctl trace`), [`tap`] shows live messages on a subject pattern
//! (`nexusctl tail`), [`log_ring`] keeps recent warnings (`nexusctl logs`), [`server`] starts
//! and gracefully stops it all.
//! The subject table and balancer are sans-I/O: plain data structures with injected time.

pub mod admission;
pub mod balancer;
pub mod config;
pub mod connection;
pub mod control;
pub mod http;
pub mod key_limits;
pub mod local_gateway;
pub mod log_ring;
pub mod metrics;
pub mod native;
pub mod outbound;
pub mod payload_encoding;
pub mod policy;
pub mod provenance;
pub mod remote;
pub mod router;
pub mod server;
pub mod service;
pub mod session;
pub mod status;
pub mod streams;
pub mod subject_table;
pub mod tap;
pub mod trace;
pub mod trace_store;
pub mod transport;

/// Subject syntax lives with the protocol (`nexus-proto`), shared with the control plane.
pub use nexus_proto::subject;

pub use config::{AuthMode, GatewayConfig, SlowConsumerPolicy};

/// Wall-clock milliseconds since the Unix epoch, the time base of key expiry.
pub fn policy_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
/// Milliseconds on a monotonic clock (tokio's, so paused-time tests control it), for rate
/// limits of log lines and similar bookkeeping.
pub fn monotonic_ms() -> u64 {
    static START: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(tokio::time::Instant::now);
    tokio::time::Instant::now()
        .saturating_duration_since(start)
        .as_millis() as u64
}
pub use server::{RunningGateway, ServerError, start};
