//! `nexus-control-plane`: holds schemas, routes and keys and pushes them to gateways.
//!
//! - [`store`]: durable state, on etcd or the embedded store, behind one trait.
//! - [`routes`], [`keys`], [`regions`], [`schemas`]: the records operators manage, each
//!   validated before anything is written; [`schema`] (crate `nexus-schema`) holds the
//!   sans-I/O schema rules.
//! - [`admin`]: the `nexus.v1.Admin` gRPC service over them; [`audit`] records every change
//!   it makes, in the same transaction.
//! - [`http`]: `/healthz`, `/readyz` and `/metrics`, and the `grpc.health.v1` status.
//! - [`names`] fixes the key layout under `/nexus/v1/`; [`records`] encodes records.
//! - [`trace`]: `GetTrace` asks every live gateway for what it recorded about a message;
//!   [`tail`] (`Tail`) taps live messages on a subject pattern at every gateway, redacting
//!   payload previews; [`logs`] (`FollowLogs`) follows every gateway's recent warnings.

pub mod admin;
pub mod admin_auth;
pub mod audit;
pub mod dns;
pub mod error;
pub mod http;
pub mod keys;
pub mod logs;
pub mod names;
pub mod push;
pub mod records;
pub mod regions;
pub mod routes;
pub mod schemas;
pub mod server;
pub mod store;
pub mod tail;
pub mod trace;

/// The schema rules (sans-I/O), shared with gateways for enforcement at publish time.
pub use nexus_schema as schema;
