//! Subject syntax: validation of publish subjects and subscription patterns.
//!
//! A subject is a non-empty sequence of dot-separated tokens. Patterns may use `*` (exactly one
//! token) and `>` (one or more tokens, last position only). Subjects under `$nexus.` are
//! reserved for the gateway (request inboxes). The rules are specified in `docs/protocol.md`.

use std::fmt;

/// Longest subject or pattern accepted, in bytes.
pub const MAX_SUBJECT_LEN: usize = 512;
/// Prefix reserved for gateway-generated subjects such as request inboxes.
pub const RESERVED_PREFIX: &str = "$nexus.";

/// Why a subject or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("subject is empty")]
    Empty,
    #[error("subject is {len} bytes, longer than the {max}-byte limit")]
    TooLong { len: usize, max: usize },
    #[error("subject {subject:?} has an empty token at position {position}")]
    EmptyToken { subject: String, position: usize },
    #[error(
        "subject {subject:?} contains {ch:?}, which is not allowed (whitespace and control characters are not)"
    )]
    InvalidChar { subject: String, ch: char },
    #[error(
        "subject {subject:?} contains the invisible or bidirectional-control character U+{code:04X}, which is not allowed (two subjects must never look alike)"
    )]
    InvisibleChar { subject: String, code: u32 },
    #[error("subject {subject:?} contains a wildcard; wildcards are only allowed in subscriptions")]
    WildcardInPublish { subject: String },
    #[error("pattern {subject:?} has '>' before the last token")]
    FullWildcardNotLast { subject: String },
    #[error("pattern {subject:?} has token {token:?} mixing a wildcard with other characters")]
    PartialWildcard { subject: String, token: String },
    #[error("subject {subject:?} is reserved: the '$nexus.' prefix belongs to the gateway")]
    Reserved { subject: String },
}

/// Whether the subject is in the gateway's reserved namespace.
pub fn is_reserved(subject: &str) -> bool {
    subject.starts_with(RESERVED_PREFIX)
}

/// Checks a subject used for publishing or requests: no wildcards, not reserved.
pub fn validate_subject(subject: &str) -> Result<(), SubjectError> {
    // Every published message is validated: decide the usual all-ASCII valid subject in one
    // byte scan; anything else takes the full path, whose errors name the exact problem.
    if is_valid_ascii_subject(subject) {
        return Ok(());
    }
    check(subject, false)?;
    if is_reserved(subject) {
        return Err(SubjectError::Reserved {
            subject: subject.to_owned(),
        });
    }
    Ok(())
}

/// True only for a subject `validate_subject` accepts: 1..=MAX_SUBJECT_LEN bytes, no empty
/// token, printable ASCII without wildcards, not under the reserved prefix.
fn is_valid_ascii_subject(subject: &str) -> bool {
    let b = subject.as_bytes();
    if b.is_empty()
        || b.len() > MAX_SUBJECT_LEN
        || b[0] == b'.'
        || b[b.len() - 1] == b'.'
        || is_reserved(subject)
    {
        return false;
    }
    // In blocks of 16 bytes read where they lie, without a branch per byte, which the
    // compiler vectorises (a loop that returned at the first bad byte cost ~10 instructions a
    // byte, on every message; copying the subject into a padded block first stalled the
    // vector loads on the copy's stores); the last few bytes one at a time. ASCII whitespace
    // and control characters are all <= 0x20 or DEL; bytes >= 0x80 are non-ASCII text, left
    // to the full (Unicode) check.
    const BLOCK: usize = 16;
    let mut dot_before = false;
    let mut blocks = b.chunks_exact(BLOCK);
    for block in &mut blocks {
        let Ok(block) = <&[u8; BLOCK]>::try_from(block) else {
            return false;
        };
        let mut bad = 0u8;
        let mut dots = 0u32;
        for (i, &c) in block.iter().enumerate() {
            bad |= u8::from((c <= 0x20) | (c >= 0x7f) | (c == b'*') | (c == b'>'));
            dots |= u32::from(c == b'.') << i;
        }
        // Two dots in a row (an empty token), also across blocks.
        if bad != 0 || dots & (dots >> 1) != 0 || (dot_before && dots & 1 != 0) {
            return false;
        }
        dot_before = dots >> (BLOCK - 1) != 0;
    }
    for &c in blocks.remainder() {
        match c {
            b'.' if dot_before => return false,
            b'.' => dot_before = true,
            0..=0x20 | 0x7f..=0xff | b'*' | b'>' => return false,
            _ => dot_before = false,
        }
    }
    true
}

/// Checks a subscription pattern: wildcards allowed as whole tokens, not reserved.
pub fn validate_pattern(pattern: &str) -> Result<(), SubjectError> {
    check(pattern, true)?;
    if is_reserved(pattern) {
        return Err(SubjectError::Reserved {
            subject: pattern.to_owned(),
        });
    }
    Ok(())
}

/// Checks an inbox subject the gateway generated (used when a responder publishes a reply).
pub fn validate_reply_subject(subject: &str) -> Result<(), SubjectError> {
    check(subject, false)
}

fn check(subject: &str, wildcards: bool) -> Result<(), SubjectError> {
    if subject.is_empty() {
        return Err(SubjectError::Empty);
    }
    if subject.len() > MAX_SUBJECT_LEN {
        return Err(SubjectError::TooLong {
            len: subject.len(),
            max: MAX_SUBJECT_LEN,
        });
    }
    let mut tokens = subject.split('.').enumerate().peekable();
    while let Some((position, token)) = tokens.next() {
        if token.is_empty() {
            return Err(SubjectError::EmptyToken {
                subject: subject.to_owned(),
                position,
            });
        }
        if let Some(ch) = token.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(SubjectError::InvalidChar {
                subject: subject.to_owned(),
                ch,
            });
        }
        if let Some(ch) = token.chars().find(|&c| is_invisible(c)) {
            return Err(SubjectError::InvisibleChar {
                subject: subject.to_owned(),
                code: ch as u32,
            });
        }
        let has_wildcard = token.contains(['*', '>']);
        if !has_wildcard {
            continue;
        }
        if !wildcards {
            return Err(SubjectError::WildcardInPublish {
                subject: subject.to_owned(),
            });
        }
        match token {
            "*" => {}
            ">" if tokens.peek().is_none() => {}
            ">" => {
                return Err(SubjectError::FullWildcardNotLast {
                    subject: subject.to_owned(),
                });
            }
            _ => {
                return Err(SubjectError::PartialWildcard {
                    subject: subject.to_owned(),
                    token: token.to_owned(),
                });
            }
        }
    }
    Ok(())
}

/// Whether `c` renders as nothing or reorders the text around it: Unicode's
/// `Default_Ignorable_Code_Point` set (zero-width spaces and joiners, bidi marks, embeddings,
/// overrides and isolates, variation selectors, tag characters, fillers) as of Unicode 15.
/// Such characters would let two different subjects (and key scopes) print identically.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c as u32,
        0x00AD
            | 0x034F
            | 0x061C
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180B..=0x180F
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x206F
            | 0x3164
            | 0xFE00..=0xFE0F
            | 0xFEFF
            | 0xFFA0
            | 0xFFF0..=0xFFF8
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE0FFF
    )
}

/// Whether literal `subject` matches `pattern` (`*` one token, trailing `>` one or more).
pub fn matches(pattern: &str, subject: &str) -> bool {
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

/// Whether every subject matched by `pattern` is also matched by `scope`: the check that
/// a key allowed to subscribe to `scope` may subscribe to `pattern`.
pub fn covers(scope: &str, pattern: &str) -> bool {
    let mut sc = scope.split('.');
    let mut p = pattern.split('.');
    loop {
        match (sc.next(), p.next()) {
            // `>` covers one or more remaining tokens, whatever they are.
            (Some(">"), Some(_)) => return true,
            // `*` covers any single token, including a `*`, but not `>` (many tokens).
            (Some("*"), Some(t)) if t != ">" => {}
            (Some(a), Some(b)) if a == b && a != "*" && a != ">" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Display helper that quotes a subject in logs without allocating.
pub struct Quoted<'a>(pub &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_subjects() {
        for s in ["a", "orders.created", "a.b.c.d", "ünïcode.ok", "$other.ok"] {
            assert_eq!(validate_subject(s), Ok(()), "{s}");
        }
    }

    #[test]
    fn accepts_patterns() {
        for s in ["a.*", "*", ">", "a.>", "*.b.>", "a.*.c"] {
            assert_eq!(validate_pattern(s), Ok(()), "{s}");
        }
    }

    #[test]
    fn refuses_bad_subjects() {
        assert_eq!(validate_subject(""), Err(SubjectError::Empty));
        assert!(matches!(
            validate_subject("a..b"),
            Err(SubjectError::EmptyToken { position: 1, .. })
        ));
        assert!(matches!(
            validate_subject(".a"),
            Err(SubjectError::EmptyToken { position: 0, .. })
        ));
        assert!(matches!(
            validate_subject("a."),
            Err(SubjectError::EmptyToken { .. })
        ));
        assert!(matches!(
            validate_subject("a b"),
            Err(SubjectError::InvalidChar { ch: ' ', .. })
        ));
        assert!(matches!(
            validate_subject("a\tb"),
            Err(SubjectError::InvalidChar { .. })
        ));
        assert!(matches!(
            validate_subject("a.*"),
            Err(SubjectError::WildcardInPublish { .. })
        ));
        assert!(matches!(
            validate_subject("$nexus.inbox.1"),
            Err(SubjectError::Reserved { .. })
        ));
        let long = "a".repeat(MAX_SUBJECT_LEN + 1);
        assert!(matches!(
            validate_subject(&long),
            Err(SubjectError::TooLong { .. })
        ));
    }

    #[test]
    fn fast_path_agrees_with_the_full_check() {
        let long = "a".repeat(MAX_SUBJECT_LEN);
        let too_long = "a".repeat(MAX_SUBJECT_LEN + 1);
        let cases = [
            "a",
            "a.b.c",
            "orders.eu-west.created",
            "$nexus.inbox.1",
            "$nexus",
            "$nexusx.a",
            "",
            ".",
            ".a",
            "a.",
            "a..b",
            "a b",
            "a\tb",
            "a\u{7f}b",
            "a\u{1}b",
            "a.*",
            "a.>",
            "a*b",
            "caf\u{e9}.x",
            "a\u{a0}b",
            "a\u{85}b",
            "a\u{2028}b",
            "a\u{200b}b",
            "a\u{202e}b",
            long.as_str(),
            too_long.as_str(),
        ];
        for case in cases {
            let full = check(case, false).and_then(|()| {
                if is_reserved(case) {
                    Err(SubjectError::Reserved {
                        subject: case.to_owned(),
                    })
                } else {
                    Ok(())
                }
            });
            assert_eq!(validate_subject(case), full, "{case:?}");
            if is_valid_ascii_subject(case) {
                assert!(full.is_ok(), "{case:?}");
            }
        }
    }

    #[test]
    fn empty_tokens_are_found_across_the_fast_paths_blocks() {
        for at in 1..70 {
            let a = "a".repeat(at);
            for (subject, valid) in [
                (format!("{a}..b"), false),
                (format!("{a}..b{a}{a}"), false),
                (format!("{a}.b"), true),
                (format!("{a}.b.{a}"), true),
                (format!("{a}*b"), false),
            ] {
                assert_eq!(validate_subject(&subject).is_ok(), valid, "{subject}");
                assert_eq!(is_valid_ascii_subject(&subject), valid, "{subject}");
            }
        }
    }

    proptest::proptest! {
        /// Long subjects of letters and dots: empty tokens wherever they fall.
        #[test]
        fn the_fast_path_agrees_on_long_subjects(subject in "[ab.]{1,100}") {
            proptest::prop_assert_eq!(
                is_valid_ascii_subject(&subject),
                check(&subject, false).is_ok()
            );
        }


        /// The all-ASCII fast path accepts only what the full check accepts, and
        /// `validate_subject` answers as the full check does, on strings of the characters
        /// that matter (dots, wildcards, space, control, non-ASCII, the reserved prefix).
        #[test]
        fn the_fast_path_agrees_on_generated_subjects(
            subject in "(\\$nexus\\.)?[a.*> \u{7}\u{7f}é$]{0,12}"
        ) {
            let full = check(&subject, false).and_then(|()| {
                if is_reserved(&subject) {
                    Err(SubjectError::Reserved { subject: subject.clone() })
                } else {
                    Ok(())
                }
            });
            proptest::prop_assert_eq!(validate_subject(&subject), full.clone());
            if is_valid_ascii_subject(&subject) {
                proptest::prop_assert!(full.is_ok());
            }
        }
    }

    #[test]
    fn refuses_invisible_and_bidi_characters() {
        for (s, code) in [
            ("a\u{200b}.b", 0x200B),
            ("orders.\u{202e}detaerc", 0x202E),
            ("a\u{2066}b", 0x2066),
            ("\u{feff}a", 0xFEFF),
            ("a\u{ad}b", 0xAD),
            ("a\u{e0041}", 0xE0041),
        ] {
            assert_eq!(
                validate_subject(s),
                Err(SubjectError::InvisibleChar {
                    subject: s.to_owned(),
                    code
                }),
                "{s:?}"
            );
            let pattern = format!("{s}.>");
            assert!(
                matches!(
                    validate_pattern(&pattern),
                    Err(SubjectError::InvisibleChar { .. })
                ),
                "{pattern:?}"
            );
        }
        let e = validate_subject("a\u{202e}b").unwrap_err().to_string();
        assert!(e.contains("U+202E"), "{e}");
        // Visible non-ASCII text stays allowed.
        validate_subject("caf\u{e9}.\u{65e5}\u{672c}").unwrap();
    }

    #[test]
    fn matching_and_covering() {
        assert!(matches("a.*.c", "a.b.c"));
        assert!(matches("a.>", "a.b.c"));
        assert!(!matches("a.>", "a"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(matches(">", "x"));
        assert!(covers("billing.>", "billing.*.created"));
        assert!(covers("billing.>", "billing.>"));
        assert!(covers("billing.*", "billing.*"));
        assert!(!covers("billing.*", "billing.>"));
        assert!(!covers("billing.*.x", "billing.>"));
        assert!(!covers("billing.a", "billing.*"));
        assert!(!covers("billing.>", "billing"));
        assert!(covers(">", "anything.>"));
    }

    #[test]
    fn refuses_bad_patterns() {
        assert!(matches!(
            validate_pattern("a.>.b"),
            Err(SubjectError::FullWildcardNotLast { .. })
        ));
        assert!(matches!(
            validate_pattern("a.b*"),
            Err(SubjectError::PartialWildcard { .. })
        ));
        assert!(matches!(
            validate_pattern("a.>>"),
            Err(SubjectError::PartialWildcard { .. })
        ));
        assert!(matches!(
            validate_pattern("$nexus.>"),
            Err(SubjectError::Reserved { .. })
        ));
    }
}
