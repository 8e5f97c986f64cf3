//! Compatibility-mode driver: picks which (reader, writer) pairs to compare for
//! a [`CompatibilityMode`] and merges the per-format findings.

use super::{CompatibilityMode, Incompatibility, Inner, ParsedSchema};

/// Checks `candidate` against the registered versions `previous` (oldest
/// first) according to `mode`.
///
/// BACKWARD: a reader using the candidate can read data written with the old
/// schema. FORWARD: a reader using the old schema can read data written with
/// the candidate. FULL: both. Non-transitive modes compare with the latest
/// version only, transitive modes with every previous version. NONE, and an
/// empty `previous`, always pass. See the module documentation for the rules.
pub fn check_compatibility(
    mode: CompatibilityMode,
    candidate: &ParsedSchema,
    previous: &[ParsedSchema],
) -> Result<(), Vec<Incompatibility>> {
    if mode == CompatibilityMode::None || previous.is_empty() {
        return Ok(());
    }
    let start = if mode.is_transitive() {
        0
    } else {
        previous.len() - 1
    };
    let latest = previous.len() - 1;
    let mut found: Vec<Incompatibility> = Vec::new();
    // Newest first, so the most relevant problems come first.
    for index in (start..previous.len()).rev() {
        let old = &previous[index];
        let mut here = Vec::new();
        if candidate.format() != old.format() {
            here.push(Incompatibility::new(
                "",
                format!(
                    "schema format changed from {} to {}",
                    old.format(),
                    candidate.format()
                ),
            ));
        } else {
            if mode.checks_backward() {
                here.extend(reader_reads_writer(candidate, old, true));
            }
            if mode.checks_forward() {
                here.extend(reader_reads_writer(old, candidate, false));
            }
        }
        for mut problem in here {
            if index != latest {
                problem.reason = format!("(against version index {index}) {}", problem.reason);
            }
            if !found.contains(&problem) {
                found.push(problem);
            }
        }
    }
    if found.is_empty() { Ok(()) } else { Err(found) }
}

/// Problems preventing `reader` from reading data written with `writer`
/// (both of the same format). `reader_is_new` tells whether the reader is the
/// candidate (BACKWARD) or a previous version (FORWARD); it only affects the
/// wording ("changed from OLD to NEW").
fn reader_reads_writer(
    reader: &ParsedSchema,
    writer: &ParsedSchema,
    reader_is_new: bool,
) -> Vec<Incompatibility> {
    match (&reader.inner, &writer.inner) {
        (Inner::Json(r), Inner::Json(w)) => super::json::reader_reads_writer(r, w, reader_is_new),
        (Inner::Protobuf(r), Inner::Protobuf(w)) => {
            super::protobuf::reader_reads_writer(r, w, reader_is_new)
        }
        _ => vec![Incompatibility::new("", "schema formats differ")],
    }
}
