//! How a step that expects a failure (`expect_error`) checks it: the error's kind, its whole
//! message (`error_contains`), and how soon it came (`max_elapsed_ms`).

use super::*;

pub(crate) fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::InvalidSubject { .. } => "invalid_subject",
        Error::NoResponders { .. } => "no_responders",
        Error::Timeout { .. } => "timeout",
        Error::Service { .. } => "service",
        Error::Limit { .. } => "limit",
        Error::Denied { .. } => "denied",
        Error::Discovery(_) => "discovery",
        Error::Invalid { .. } => "invalid",
        Error::Disconnected | Error::NotConfirmed { .. } => "disconnected",
        Error::Unavailable { .. } => "unavailable",
        Error::Closed => "closed",
        Error::Connect(_) => "connect",
        _ => "other",
    }
}

/// The error and its sources, as `{:#}` with anyhow prints it: Rust errors keep their cause
/// out of `Display` (e.g. `Error::Connect` shows "connect: transport error" and the TLS reason
/// is a source), while `error_contains` means the whole message a user would see.
pub(crate) fn full_message(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

pub(crate) fn check_error<T>(
    s: &Json,
    r: Result<T, Error>,
    started: Instant,
) -> Result<(), String> {
    let kind = s.str("expect_error").unwrap_or_default();
    match r {
        Ok(_) => Err(format!("expected a {kind} error, got success")),
        Err(e) if error_kind(&e) != kind => Err(format!("expected {kind}, got {e}")),
        Err(e) => {
            if let Some(want) = s.str("error_contains")
                && !full_message(&e).contains(want)
            {
                return Err(format!(
                    "error {} does not contain {want:?}",
                    full_message(&e)
                ));
            }
            if let Some(max) = s.num("max_elapsed_ms")
                && started.elapsed() > Duration::from_millis(max)
            {
                return Err(format!("error came after {:?}", started.elapsed()));
            }
            Ok(())
        }
    }
}
