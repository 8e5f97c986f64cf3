//! Generates the etcd v3 gRPC client from etcd's vendored .proto files (`proto/etcd/api`) with
//! protox, a .proto compiler written in Rust, so building the control plane needs no `protoc`
//! (see proto/README.md for where the files come from and what was stripped).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/etcd/api/etcdserverpb/rpc.proto",
        "proto/etcd/api/mvccpb/kv.proto",
        "proto/etcd/api/authpb/auth.proto",
        "proto/etcd/api/versionpb/version.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .bytes(".mvccpb.KeyValue")
        .compile_fds(fds)?;
    Ok(())
}
