//! Regional clusters: the decisions that make several gateways of a region one region to its
//! users and to other regions (docs/cluster.md). Sans-I/O, like the rest of the protocol
//! cores; the link layer and the bridge act on them.
//!
//! - [`membership`]: who links to whom, and each gateway's home in every other region.
//! - [`balance`]: which gateway of the region takes a queue group's message or a request.
//! - [`key_activity`]: which API keys have sessions on which gateways (the per-key rate
//!   limits' split).

pub mod balance;
pub mod key_activity;
pub mod membership;
