//! `nexus-proto`: the `nexus.v1` adapter protocol, generated from `proto/nexus/v1/*.proto`.
//!
//! The `.proto` files are the polyglot contract; every adapter (Rust, Python, Java,
//! TypeScript) is generated from them. `docs/protocol.md` describes the semantics.

/// Generated types and gRPC stubs for package `nexus.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("nexus.v1");
}

/// Encoded `FileDescriptorSet` of every nexus proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/nexus_descriptor.bin"));
