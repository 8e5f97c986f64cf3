//! cargo-fuzz target `session_batch`: see `nexus_fuzz::harness::session_batch` for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nexus_fuzz::harness::session_batch(data));
