//! # nexus-load
//!
//! The load-test harness of Nexus. It drives a Nexus gateway (through `nexus-client`) or a
//! NATS server (through `async-nats`) with the same workload shapes and reports delivered
//! messages per second, MB/s, messages lost, and HDR latency percentiles, as a Markdown table
//! or as JSON.
//!
//! * [`target`]: the two targets behind one interface.
//! * [`payload`]: the stamped payload (sender, sequence, send time) every message carries.
//! * [`scenarios`]: pub/sub, fan-out, queue groups, request/reply (closed and open loop) and
//!   streams.
//! * [`suite`]: the comparison suite and the smoke run.
//! * [`report`]: histograms, results, tables and JSON.
//! * [`background`]: sessions and subscriptions no message matches, for the scale curves.
//!
//! The binary `nexus-load` is a thin command line over this library; the smoke test in
//! `tests/smoke.rs` uses the library directly against a real gateway.

pub mod background;
pub mod config_push;
pub mod payload;
pub mod report;
pub mod scenarios;
pub mod suite;
pub mod target;
pub mod wan;

pub use report::{Comparison, Latency, ScenarioResult};
pub use scenarios::{Kind, Workload};
pub use target::Target;
