//! cargo-fuzz target `schema_json`: see `nexus_fuzz::harness::schema_json` for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nexus_fuzz::harness::schema_json(data));
