//! cargo-fuzz target `dns_query`: see `nexus_fuzz::harness::dns_query` for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nexus_fuzz::harness::dns_query(data));
