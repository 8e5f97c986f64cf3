//! [`Escaped`]: how a string a peer sent (a client name, a language tag, a gateway id) is
//! written into logs.
//!
//! A log line is trusted by whoever reads it; a newline in `Hello.client_name` would forge a
//! second line, an ANSI escape would rewrite the operator's terminal, and a bidi override
//! (U+202E) would make the text read backwards. `Escaped` writes printable characters as they
//! are and every control, invisible or bidi-control character, and the backslash, as
//! `\u{..}` (so the output is unambiguous), and cuts the text after [`MAX_LOGGED_CHARS`]
//! characters so a peer cannot fill the log with one field.

use std::fmt;

/// Characters of a peer-supplied string written to a log before it is cut with `…`.
pub const MAX_LOGGED_CHARS: usize = 128;

/// Displays a peer-supplied string safely for a log line; see the module docs.
#[derive(Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write as _;
        for (n, c) in self.0.chars().enumerate() {
            if n == MAX_LOGGED_CHARS {
                return f.write_char('…');
            }
            if c == '\\' || c.is_control() || crate::subject::is_invisible(c) || is_line_break(c) {
                write!(f, "\\u{{{:x}}}", c as u32)?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Line and paragraph separators that are not `Cc` but still break a line in some viewers.
fn is_line_break(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}' | '\u{85}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_invisible_and_bidi_characters_are_escaped() {
        let forged = "app\n2026-01-01T00:00:00Z  INFO admin key created\x1b[2J\u{202e}gnp.exe";
        let out = Escaped(forged).to_string();
        assert!(!out.contains('\n') && !out.contains('\x1b') && !out.contains('\u{202e}'));
        assert_eq!(
            out,
            "app\\u{a}2026-01-01T00:00:00Z  INFO admin key created\\u{1b}[2J\\u{202e}gnp.exe"
        );
        assert_eq!(Escaped("a\\u{a}").to_string(), "a\\u{5c}u{a}");
        assert_eq!(Escaped("caf\u{e9} ✓").to_string(), "caf\u{e9} ✓");
        assert_eq!(format!("{:?}", Escaped("x\ty")), "\"x\\u{9}y\"");
    }

    #[test]
    fn long_strings_are_cut() {
        let long = "x".repeat(10_000);
        let out = Escaped(&long).to_string();
        assert_eq!(out.chars().count(), MAX_LOGGED_CHARS + 1);
        assert!(out.ends_with('…'));
    }
}
