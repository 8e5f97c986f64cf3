//! `nexus-control-plane`: holds schemas, routes and keys and pushes them to gateways.
//!
//! [`store`] is the durable state (etcd or the embedded store).

pub mod store;
