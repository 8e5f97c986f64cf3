//! Coverage-guided fuzzing of the parsers that take untrusted bytes (cargo-fuzz, nightly).
//! The per-target logic is in [`harness`], which the stable test suite also compiles
//! (`tests/fuzz_corpora.rs`) to replay the corpora and crash regressions kept in `fuzz/`.

pub mod harness;
