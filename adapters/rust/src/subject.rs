//! Local subject validation.
//!
//! Subjects are dot-separated, non-empty tokens of printable, non-space characters. In
//! subscription patterns `*` matches exactly one token and `>` (only as the last token) matches
//! one or more tokens; publish subjects contain no wildcards. Subjects starting with `$nexus.`
//! are reserved for the gateway. The gateway applies the same rules and is authoritative; the
//! local check just gives a clear [`Error::InvalidSubject`] before anything is sent.

use crate::error::{Error, Result};

/// Prefix reserved for gateway-internal subjects (reply inboxes etc.).
pub const RESERVED_PREFIX: &str = "$nexus.";

/// Longest subject in bytes (as the gateway enforces).
pub const MAX_SUBJECT_LEN: usize = 512;

fn invalid(subject: &str, reason: &'static str) -> Error {
    Error::InvalidSubject {
        subject: subject.to_owned(),
        reason,
    }
}

/// Checks the shape shared by publish subjects and patterns. Returns an error reason.
fn check(
    subject: &str,
    allow_wildcards: bool,
    allow_reserved: bool,
) -> std::result::Result<(), &'static str> {
    if subject.is_empty() {
        return Err("subject is empty");
    }
    if subject.len() > MAX_SUBJECT_LEN {
        return Err("subject is too long");
    }
    if !allow_reserved && subject.starts_with(RESERVED_PREFIX) {
        return Err("subjects starting with `$nexus.` are reserved for the gateway");
    }
    if is_plain_ascii_subject(subject.as_bytes()) {
        return Ok(());
    }
    let mut tokens = subject.split('.').peekable();
    while let Some(tok) = tokens.next() {
        if tok.is_empty() {
            return Err("empty token (leading, trailing or double dot)");
        }
        match tok {
            "*" if allow_wildcards => continue,
            ">" if allow_wildcards => {
                if tokens.peek().is_some() {
                    return Err("`>` is only allowed as the last token");
                }
                continue;
            }
            "*" | ">" => return Err("wildcards are not allowed in publish subjects"),
            _ => {}
        }
        // Fast path for ASCII, which is nearly every subject.
        for c in tok.chars() {
            if c == '*' || c == '>' {
                return Err(if allow_wildcards {
                    "wildcards must be whole tokens"
                } else {
                    "wildcards are not allowed in publish subjects"
                });
            }
            if c.is_ascii() {
                if !c.is_ascii_graphic() {
                    return Err("subject contains whitespace or control characters");
                }
            } else if c.is_whitespace() || c.is_control() {
                return Err("subject contains whitespace or control characters");
            }
        }
    }
    Ok(())
}

/// One pass over the bytes accepting the usual subject: printable ASCII without wildcards,
/// no empty token. It runs on every publish, so it avoids `split` and per-char decoding;
/// anything it does not accept takes the full check, which gives the reason.
fn is_plain_ascii_subject(b: &[u8]) -> bool {
    let mut prev_dot = true;
    for &c in b {
        let dot = c == b'.';
        if (dot && prev_dot) || !c.is_ascii_graphic() || c == b'*' || c == b'>' {
            return false;
        }
        prev_dot = dot;
    }
    !prev_dot
}

/// Validates a subject to publish, request or open a stream on (no wildcards, not reserved).
pub fn validate_publish_subject(subject: &str) -> Result<()> {
    check(subject, false, false).map_err(|r| invalid(subject, r))
}

/// Prefix of the reply inboxes the gateway issues (`$nexus.inbox.<n>`).
pub(crate) const INBOX_PREFIX: &str = "$nexus.inbox.";

/// Validates a `Pub` subject: a publish subject, or a reply inbox (publishing to the inbox of
/// a request is one way to answer it).
pub(crate) fn validate_pub_subject(subject: &str) -> Result<()> {
    let inbox = subject.starts_with(INBOX_PREFIX);
    check(subject, false, inbox).map_err(|r| invalid(subject, r))
}

/// Validates `Pub.reply_to`: publish-subject syntax; the reserved prefix is not checked.
pub(crate) fn validate_reply_to(subject: &str) -> Result<()> {
    check(subject, false, true).map_err(|r| invalid(subject, r))
}

/// Validates a subscription pattern (`*` and trailing `>` allowed, not reserved).
pub fn validate_subscribe_subject(subject: &str) -> Result<()> {
    check(subject, true, false).map_err(|r| invalid(subject, r))
}

/// Validates a queue group name: non-empty, printable, no spaces.
pub(crate) fn validate_queue_group(group: &str) -> Result<()> {
    if group.is_empty() {
        return Err(invalid(group, "queue group is empty"));
    }
    if group.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            group,
            "queue group contains whitespace or control characters",
        ));
    }
    Ok(())
}

/// True if `pattern` (a valid subscription pattern) matches `subject` (a valid publish
/// subject). Provided for applications that multiplex several patterns; the gateway does the
/// real routing.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_subjects() {
        for ok in [
            "a",
            "a.b.c",
            "orders.eu-west.1",
            "x_y.Z-9",
            "ünï.cödé",
            "a$b.c",
        ] {
            assert!(validate_publish_subject(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "a.",
            ".a",
            "a..b",
            "a b",
            "a.*",
            ">",
            "a.>",
            "a*",
            "a\tb",
            "a\nb",
            "$nexus.inbox.1",
            "$nexus.x",
            "a.\u{7f}",
            "a.\u{a0}",
        ] {
            let e = validate_publish_subject(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidSubject { .. }), "{bad}: {e}");
        }
        assert!(validate_publish_subject(&"a".repeat(MAX_SUBJECT_LEN + 1)).is_err());
        assert!(validate_publish_subject(&"a".repeat(MAX_SUBJECT_LEN)).is_ok());
        // Pub may target a reply inbox; reply_to is not checked against the reserved prefix.
        assert!(validate_pub_subject("$nexus.inbox.42").is_ok());
        assert!(validate_pub_subject("$nexus.other").is_err());
        assert!(validate_pub_subject("a.*").is_err());
        assert!(validate_reply_to("$nexus.x.y").is_ok());
        assert!(validate_reply_to("a.>").is_err());
    }

    #[test]
    fn fast_path_agrees_with_the_full_check() {
        for s in [
            "a", "a.b.c", "a..b", ".a", "a.", ".", "a*", "a.>", "a b", "ü.x", "a\u{7f}", "x_y.Z-9",
            "$nexus.x", "a.$b",
        ] {
            if is_plain_ascii_subject(s.as_bytes()) {
                assert!(
                    validate_publish_subject(s).is_ok() || s.starts_with(RESERVED_PREFIX),
                    "{s}"
                );
            }
        }
        assert!(is_plain_ascii_subject(b"orders.eu-west.1"));
        assert!(!is_plain_ascii_subject(b"a..b"));
        assert!(!is_plain_ascii_subject(b"a."));
        assert!(!is_plain_ascii_subject(b""));
    }

    #[test]
    fn subscribe_patterns() {
        for ok in ["a", "a.*", "*.b", "a.>", ">", "*.*.>", "a.*.c"] {
            assert!(validate_subscribe_subject(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "a.>.b", ">.a", "a*", "a.b*", "a.>b", "a..*", "$nexus.>", "a b.*",
        ] {
            assert!(validate_subscribe_subject(bad).is_err(), "{bad}");
        }
        let e = validate_subscribe_subject("a.>.b").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid subject \"a.>.b\": `>` is only allowed as the last token"
        );
    }

    #[test]
    fn queue_groups() {
        assert!(validate_queue_group("workers").is_ok());
        assert!(validate_queue_group("").is_err());
        assert!(validate_queue_group("a b").is_err());
    }

    #[test]
    fn matching() {
        assert!(subject_matches("a.*.c", "a.b.c"));
        assert!(!subject_matches("a.*.c", "a.b.d"));
        assert!(subject_matches("a.>", "a.b.c"));
        assert!(!subject_matches("a.>", "a"));
        assert!(subject_matches("a", "a"));
        assert!(!subject_matches("a.b", "a"));
        assert!(!subject_matches("a", "a.b"));
        assert!(subject_matches(">", "x"));
    }
}
