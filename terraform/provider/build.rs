//! Compiles the vendored Terraform plugin protocol (`proto/tfplugin6.8.proto`, from
//! hashicorp/terraform v1.11.4) and go-plugin's controller service with protox (pure Rust, no
//! `protoc`), as `proto/build.rs` does for Nexus' own protocol.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["tfplugin6.8.proto", "grpc_controller.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed=proto/{p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .compile_fds(fds)?;
    Ok(())
}
