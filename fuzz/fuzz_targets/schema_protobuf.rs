//! cargo-fuzz target `schema_protobuf`: see `nexus_fuzz::harness::schema_protobuf` for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nexus_fuzz::harness::schema_protobuf(data));
