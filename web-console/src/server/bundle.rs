//! The browser bundle shipped in the repository (`web-console/bundle/`) and compiled into the
//! binary, so `nexus console` and `nexus dev` serve a hydrated console on a machine with only
//! the Rust toolchain (building the wasm needs Debian's rustc-web and wasm-bindgen; see
//! docs/console.md, "Building").
//!
//! `bundle/SOURCE_DIGEST` is the [`source_digest`] of the sources the bundle was built from.
//! A test (`web-console/tests/bundle.rs`) recomputes it from the working tree and fails when
//! they differ: a server rendering one version of the components and a wasm hydrating another
//! fails in the browser in ways no server-side check sees. `scripts/build-console` rebuilds the
//! wasm and rewrites the digest.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// wasm-bindgen's JS glue.
pub const JS: &[u8] = include_bytes!("../../bundle/nexus_console.js");
/// The hydrating client.
pub const WASM: &[u8] = include_bytes!("../../bundle/nexus_console_bg.wasm");
/// The digest of the sources `JS` and `WASM` were built from.
pub const SOURCE_DIGEST: &str = include_str!("../../bundle/SOURCE_DIGEST");

/// Crates whose version in Cargo.lock changes what the wasm does or how the glue talks to it.
const LOCKED_CRATES: &[&str] = &[
    "hydration_context",
    "js-sys",
    "leptos",
    "leptos_dom",
    "leptos_macro",
    "leptos_meta",
    "leptos_router",
    "reactive_graph",
    "server_fn",
    "tachys",
    "wasm-bindgen",
    "web-sys",
];

/// The embedded file for a `/pkg/<file>` request, with its content type. The wasm answers to
/// both names Leptos may ask for (`<name>_bg.wasm`, or `<name>.wasm` when the server was
/// compiled with `LEPTOS_OUTPUT_NAME` set).
pub fn file(name: &str) -> Option<(&'static [u8], &'static str)> {
    let js = format!("{}.js", super::OUTPUT_NAME);
    let bg = format!("{}_bg.wasm", super::OUTPUT_NAME);
    let plain = format!("{}.wasm", super::OUTPUT_NAME);
    if name == js {
        Some((JS, "text/javascript; charset=utf-8"))
    } else if name == bg || name == plain {
        Some((WASM, "application/wasm"))
    } else {
        None
    }
}

/// The digest of what the browser bundle is built from, given the workspace root: every file
/// under `web-console/src` except `src/server/` (server-only code, compiled out of the wasm),
/// `web-console/Cargo.toml`, and the Cargo.lock versions of the crates in [`LOCKED_CRATES`].
/// Hex SHA-256 over `path\nsha256(file)\n` lines in path order, then `lock name version\n`.
pub fn source_digest(workspace: &Path) -> std::io::Result<String> {
    let console = workspace.join("web-console");
    let mut files = vec![console.join("Cargo.toml")];
    collect(
        &console.join("src"),
        &console.join("src/server"),
        &mut files,
    )?;
    let mut named: Vec<(String, PathBuf)> = files
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(workspace)
                .unwrap_or(&p)
                .to_string_lossy()
                .replace('\\', "/");
            (rel, p)
        })
        .collect();
    named.sort();
    let mut all = Sha256::new();
    for (rel, path) in &named {
        let content = std::fs::read(path)?;
        all.update(format!("{rel}\n{}\n", hex(&Sha256::digest(&content))));
    }
    let lock = std::fs::read_to_string(workspace.join("Cargo.lock"))?;
    for (name, version) in locked_versions(&lock) {
        all.update(format!("lock {name} {version}\n"));
    }
    Ok(hex(&all.finalize()))
}

fn collect(dir: &Path, skip: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path == skip {
            continue;
        }
        if path.is_dir() {
            collect(&path, skip, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// `(name, version)` of every Cargo.lock package named in [`LOCKED_CRATES`], sorted.
fn locked_versions(lock: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut name: Option<&str> = None;
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"'));
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = "), name.take())
            && LOCKED_CRATES.contains(&n)
        {
            found.push((n.to_owned(), v.trim_matches('"').to_owned()));
        }
    }
    found.sort();
    found
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_versions_are_read_per_package() {
        let lock = "[[package]]\nname = \"leptos\"\nversion = \"0.8.23\"\n\n[[package]]\nname = \"tokio\"\nversion = \"1.54.0\"\n\n[[package]]\nname = \"wasm-bindgen\"\nversion = \"0.2.130\"\n";
        assert_eq!(
            locked_versions(lock),
            vec![
                ("leptos".to_owned(), "0.8.23".to_owned()),
                ("wasm-bindgen".to_owned(), "0.2.130".to_owned())
            ]
        );
    }

    #[test]
    fn the_embedded_bundle_answers_both_wasm_names() {
        assert!(file("nexus_console.js").is_some());
        assert_eq!(file("nexus_console_bg.wasm").unwrap().1, "application/wasm");
        assert_eq!(file("nexus_console.wasm").unwrap().1, "application/wasm");
        assert!(file("other.js").is_none());
        assert!(
            WASM.starts_with(b"\0asm"),
            "the bundle's wasm is a wasm module"
        );
    }
}
