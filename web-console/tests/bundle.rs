//! The browser bundle compiled into the binary (`web-console/bundle/`) was built from the
//! console sources in this tree: its recorded digest equals the digest of the sources now.
//! A stale bundle renders on the server but fails to hydrate (or hydrates other components)
//! in the browser, which no server-side test would notice.

#[test]
fn the_shipped_bundle_matches_the_console_sources() {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let now = nexus_console::server::bundle::source_digest(&workspace).expect("console sources");
    let built_from = nexus_console::server::bundle::SOURCE_DIGEST.trim();
    assert_eq!(
        built_from, now,
        "web-console/bundle/ was built from other sources than the ones in this tree (the \
         components, web-console/Cargo.toml or the leptos / wasm-bindgen versions changed): \
         run scripts/build-console and commit web-console/bundle/"
    );
}
