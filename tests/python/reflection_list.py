"""Lists a gRPC server's services with Python's official reflection client (grpcio-reflection,
which speaks grpc.reflection.v1alpha), then resolves each listed service's file descriptor.

    python reflection_list.py 127.0.0.1:7422

Prints one service name per line, sorted; exits non-zero (with the gRPC error) on failure.
Used by tests/protocol.rs.
"""

import sys

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main() -> int:
    channel = grpc.insecure_channel(sys.argv[1])
    db = ProtoReflectionDescriptorDatabase(channel)
    services = sorted(db.get_services())
    pool = DescriptorPool(db)
    for name in services:
        # Resolving the service proves its descriptor is served, not only its name.
        service = pool.FindServiceByName(name)
        assert service.methods, f"{name} has no methods"
        print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
