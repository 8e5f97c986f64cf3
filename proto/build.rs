//! Compiles `nexus/v1/*.proto` with protox (pure Rust, so no `protoc` is needed) and generates
//! the tonic client and server code plus a file descriptor set for gRPC reflection.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "nexus/v1/gateway.proto",
        "nexus/v1/admin.proto",
        "nexus/v1/config.proto",
        "nexus/v1/federation.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["."])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("nexus_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // The per-message frames are written by hand (src/hot_frames.rs) so that their strings
    // share the receive buffer instead of being copied into `String`s.
    let mut config = tonic_prost_build::configure()
        .bytes(".")
        .codec_path("crate::codec::ExactSizeCodec");
    for message in ["Batch", "Header", "Pub", "Msg", "Req", "Reply"] {
        config = config.extern_path(
            format!(".nexus.v1.{message}"),
            format!("crate::hot_frames::{message}"),
        );
    }
    config.compile_fds(fds)?;
    Ok(())
}
