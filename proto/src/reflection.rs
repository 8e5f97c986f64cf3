//! gRPC server reflection for the Nexus processes, in both protocol versions: `v1` (grpcurl,
//! grpcui, Postman) and `v1alpha` (Python's official `grpcio-reflection` client and other
//! older tools still ask only for it). Each process lists only the services it serves: a
//! client that sees `nexus.v1.Admin` listed on a gateway would call it and get UNIMPLEMENTED.

use tonic_reflection::server::{Builder, Error, v1, v1alpha};

/// Reflection's own service names, listed by every process beside its own services.
pub const REFLECTION_SERVICES: [&str; 2] = [
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

fn builder(services: &[&str]) -> Builder<'static> {
    let mut b = Builder::configure()
        .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .include_reflection_service(false);
    for s in services.iter().chain(REFLECTION_SERVICES.iter()) {
        b = b.with_service_name(*s);
    }
    b
}

/// The v1 and v1alpha reflection services for a process serving `services` (fully qualified,
/// e.g. `nexus.v1.Gateway`); add both to the tonic server.
#[allow(clippy::type_complexity)]
pub fn services(
    services: &[&str],
) -> Result<
    (
        v1::ServerReflectionServer<impl v1::ServerReflection>,
        v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>,
    ),
    Error,
> {
    Ok((
        builder(services).build_v1()?,
        builder(services).build_v1alpha()?,
    ))
}
