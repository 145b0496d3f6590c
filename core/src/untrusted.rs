//! Text that came from outside (a caller, a page, a dialog app), made safe to show.
//!
//! Anything a remote party chose can end up in a log line or in an error body: an utterance id,
//! a command type, a field of a malformed offer. Written as it is, a newline and an escape
//! sequence forge a log line or repaint an operator's terminal, and a megabyte of it floods the
//! logs. [`Shown`] is the one way such text is displayed: control characters, quotes and
//! backslashes escaped (Rust's `escape_debug`, so the result is always one line) and the length
//! capped at [`SHOWN_MAX_CHARS`] characters with the number of characters left out appended.
//!
//! The cap counts characters of the input, so the output is bounded too (an escaped character
//! takes at most 10 bytes: `\u{10ffff}`), and the work is linear in the cap, never in the input.

use std::fmt;

/// Most characters of untrusted text shown in a log line or an error body.
pub const SHOWN_MAX_CHARS: usize = 200;

/// Untrusted text for a log line or an error message: escaped and capped (see the module doc).
#[derive(Clone, Copy)]
pub struct Shown<'a>(pub &'a str);

/// Shorthand for [`Shown`].
pub fn shown(s: &str) -> Shown<'_> {
    Shown(s)
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = self.0.chars();
        for c in chars.by_ref().take(SHOWN_MAX_CHARS) {
            fmt::Display::fmt(&c.escape_debug(), f)?;
        }
        // Counting what was left out is linear in the input; the input is already in memory
        // and bounded by whoever read it, so this is cheap next to having read it.
        let rest = chars.count();
        if rest > 0 {
            write!(f, "…(+{rest} chars)")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl Shown<'_> {
    /// The shown form as an owned string (for error bodies).
    pub fn to_owned_string(self) -> String {
        self.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_break_the_line() {
        let forged = "u1\n2026-12-06T00:00:00Z  INFO call ended\x1b[2J";
        let out = shown(forged).to_string();
        assert!(!out.contains('\n'), "{out}");
        assert!(!out.contains('\x1b'), "{out}");
        assert!(out.contains("\\n"), "{out}");
        assert!(out.contains("\\u{1b}"), "{out}");
    }

    #[test]
    fn long_text_is_capped_and_says_so() {
        let long = "a".repeat(10_000);
        let out = shown(&long).to_string();
        assert!(out.starts_with(&"a".repeat(SHOWN_MAX_CHARS)));
        assert!(out.ends_with("…(+9800 chars)"), "{out}");
        assert_eq!(shown("short").to_string(), "short");
        assert_eq!(format!("{:?}", shown("a\"b")), "\"a\\\"b\"");
    }

    #[test]
    fn output_is_bounded_whatever_the_input() {
        let nasty: String = std::iter::repeat_n('\u{7}', 100_000).collect();
        let out = shown(&nasty).to_string();
        assert!(out.len() < SHOWN_MAX_CHARS * 10 + 32, "{}", out.len());
    }
}
