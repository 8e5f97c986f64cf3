//! What a running process reports about its build: the `nexus_build_info` gauge every role
//! exports on `/metrics` (value 1, the facts in its labels), as Prometheus' `*_build_info`
//! convention has it.
//!
//! The version is this workspace's; the commit is set once at start by the binary (its build
//! script reads it from git, or from `NEXUS_BUILD_COMMIT` when building outside a checkout,
//! e.g. in a container), so that a new commit rebuilds only the thin binary crate.

use std::sync::OnceLock;

/// The labels of `nexus_build_info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    /// The workspace version, e.g. `0.1.0`.
    pub version: &'static str,
    /// The git commit built, abbreviated, or `unknown`.
    pub commit: &'static str,
    /// `release` or `debug`.
    pub profile: &'static str,
}

static INFO: OnceLock<BuildInfo> = OnceLock::new();

/// Records the commit this process was built from; the first call wins.
pub fn set_commit(commit: &'static str) {
    let _ = INFO.set(BuildInfo {
        commit: if commit.is_empty() { "unknown" } else { commit },
        ..defaults()
    });
}

fn defaults() -> BuildInfo {
    BuildInfo {
        version: env!("CARGO_PKG_VERSION"),
        commit: "unknown",
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    }
}

/// This process's build information (commit `unknown` if [`set_commit`] was not called).
pub fn get() -> &'static BuildInfo {
    INFO.get_or_init(defaults)
}

/// The labels as `(name, value)` pairs, with the process's role (`gateway`, `control_plane`,
/// `console`) added, ready for a Prometheus family.
pub fn labels(role: &'static str) -> Vec<(&'static str, &'static str)> {
    let i = get();
    vec![
        ("version", i.version),
        ("commit", i.commit),
        ("profile", i.profile),
        ("role", role),
    ]
}
