//! The `nexus` package: the wiring behind the `nexus` and `nexusctl` binaries.
//!
//! The binaries stay thin: argument parsing lives in `src/bin/`, shared set-up (logging,
//! tracing export, configuration layering) lives here, and everything that routes messages
//! lives in the workspace crates (`nexus-gateway`, `nexus-proto`, `nexus-client`).

pub mod certs;
pub mod cli_config;
pub mod config_file;
pub mod console;
pub mod ctl;
pub mod dev;
pub mod federation;
pub mod reload;
pub mod telemetry;
