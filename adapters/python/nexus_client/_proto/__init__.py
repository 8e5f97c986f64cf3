"""Protobuf messages of nexus.v1, generated from proto/nexus/v1/gateway.proto."""
