//! cargo-fuzz target `subject`: see `nexus_fuzz::harness::subject` for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nexus_fuzz::harness::subject(data));
