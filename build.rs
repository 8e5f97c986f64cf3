//! Records the git commit being built as `NEXUS_BUILD_COMMIT` for `nexus_build_info`
//! (proto/src/build_info.rs). `NEXUS_BUILD_COMMIT` in the build environment wins (builds
//! outside a checkout, such as deploy/container/Containerfile, pass it in); without git the
//! commit is `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo:rerun-if-env-changed=NEXUS_BUILD_COMMIT");
    let commit = match std::env::var("NEXUS_BUILD_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_owned(),
        _ => {
            // Rebuild when HEAD moves: HEAD itself, the branch it names, packed refs.
            // (Only files that exist: cargo reruns every build for a missing one.)
            let watch = |path: String| {
                if std::path::Path::new(&path).exists() {
                    println!("cargo:rerun-if-changed={path}");
                }
            };
            if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
                watch(format!("{dir}/HEAD"));
            }
            if let (Some(common), Some(head)) = (
                git(&["rev-parse", "--git-common-dir"]),
                git(&["symbolic-ref", "-q", "HEAD"]),
            ) {
                watch(format!("{common}/{head}"));
                watch(format!("{common}/packed-refs"));
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
        }
    };
    println!("cargo:rustc-env=NEXUS_BUILD_COMMIT={commit}");
}
