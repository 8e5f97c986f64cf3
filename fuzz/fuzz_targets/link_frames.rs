//! cargo-fuzz target `link_frames`: see `nexus_fuzz::harness::link_frames` for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nexus_fuzz::harness::link_frames(data));
