//! `nexus-proto`: the `nexus.v1` protocol, generated from `proto/nexus/v1/*.proto`, plus
//! the few rules every party must apply identically: subject syntax ([`subject`]) and the
//! API key token format ([`keys`]), the native transport's records ([`native`]), how peer-supplied text is logged ([`text`]), the
//! gRPC reflection every process serves ([`reflection`]), and the build facts every process
//! reports ([`build_info`]).
//!
//! The `.proto` files are the polyglot contract; every adapter (Rust, Python, Java,
//! TypeScript) is generated from them. `docs/protocol.md` describes the semantics.

pub mod build_info;
pub mod codec;
pub mod encoding;
pub mod hot_frames;
pub mod keys;
pub mod native;
pub mod reflection;
pub mod subject;
pub mod text;

pub use bytestring::ByteString;

/// Generated types and gRPC stubs for package `nexus.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("nexus.v1");
    pub use crate::hot_frames::{Batch, Header, Msg, Pub, Reply, Req};
}

/// Encoded `FileDescriptorSet` of every nexus proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/nexus_descriptor.bin"));
