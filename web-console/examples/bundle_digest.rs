//! Prints the digest of the console sources the browser bundle is built from
//! (`nexus_console::server::bundle::source_digest`); scripts/build-console writes it to
//! web-console/bundle/SOURCE_DIGEST.

fn main() -> std::process::ExitCode {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    match nexus_console::server::bundle::source_digest(&workspace) {
        Ok(d) => {
            println!("{d}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot read the console sources: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
