//! cargo-fuzz target `gateway_config`: see `nexus_fuzz::harness::gateway_config` for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nexus_fuzz::harness::gateway_config(data));
