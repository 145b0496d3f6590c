//! Call ids: unguessable, prefixed, and checked before they are used as registry keys.
//!
//! Knowing a call id is what lets someone hang a call up, so an id carries 128 random bits from
//! the operating system's generator (the original used the Unix time in nanoseconds). The
//! configurable prefix keeps ids recognisable in logs: `wrtc-3f9c…`.

use std::fmt;

/// Random bytes in a call id: 128 bits.
const RANDOM_BYTES: usize = 16;

/// Longest prefix accepted from configuration.
pub const MAX_PREFIX_LEN: usize = 32;

/// A call's identity, `<prefix>-<32 lowercase hex digits>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(String);

/// Why a prefix from configuration was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PrefixError {
    /// Empty, too long, or holds a character that would need escaping in a URL or a log.
    #[error(
        "call id prefix {0:?} must be 1 to {MAX_PREFIX_LEN} characters of ASCII letters, digits, '_' or '-'"
    )]
    Invalid(String),
}

/// Checks a configured prefix: ASCII letters, digits, `_` and `-`, at most [`MAX_PREFIX_LEN`].
pub fn validate_prefix(prefix: &str) -> Result<(), PrefixError> {
    let ok = !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX_LEN
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(PrefixError::Invalid(prefix.to_owned()))
    }
}

impl CallId {
    /// A fresh id with `prefix`. The prefix must have passed [`validate_prefix`].
    ///
    /// Fails only when the operating system cannot supply random bytes.
    pub fn generate(prefix: &str) -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; RANDOM_BYTES];
        getrandom::fill(&mut bytes)?;
        let mut id = String::with_capacity(prefix.len() + 1 + RANDOM_BYTES * 2);
        id.push_str(prefix);
        id.push('-');
        for b in bytes {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            id.push(HEX[usize::from(b >> 4)] as char);
            id.push(HEX[usize::from(b & 0x0f)] as char);
        }
        Ok(CallId(id))
    }

    /// Takes an id from outside (a hangup request) if it has the shape of one of ours.
    ///
    /// Anything else cannot name a call, so callers treat it as unknown without a lookup.
    pub fn parse(raw: &str) -> Option<Self> {
        let raw = raw.trim();
        let (prefix, hex) = raw.rsplit_once('-')?;
        let shaped = validate_prefix(prefix).is_ok()
            && hex.len() == RANDOM_BYTES * 2
            && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        shaped.then(|| CallId(raw.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CallId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn generated_ids_have_prefix_and_128_bits_of_hex() {
        let id = CallId::generate("wrtc").unwrap();
        let (prefix, hex) = id.as_str().split_once('-').unwrap();
        assert_eq!(prefix, "wrtc");
        assert_eq!(hex.len(), 32);
        assert!(
            hex.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }

    #[test]
    fn generated_ids_are_unique_and_parse_back() {
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let id = CallId::generate("my-app_1").unwrap();
            assert_eq!(CallId::parse(id.as_str()), Some(id.clone()));
            assert!(seen.insert(id), "duplicate call id");
        }
    }

    #[test]
    fn random_part_is_not_constant_per_position() {
        // Each hex position takes several values over many ids: a broken generator (all zeros,
        // a counter) would fail this.
        let ids: Vec<_> = (0..200).map(|_| CallId::generate("p").unwrap()).collect();
        for pos in 2..34 {
            let distinct: HashSet<u8> = ids.iter().map(|id| id.as_str().as_bytes()[pos]).collect();
            assert!(distinct.len() > 4, "position {pos} barely varies");
        }
    }

    #[test]
    fn parse_rejects_what_we_never_issue() {
        for raw in [
            "",
            "wrtc",
            "wrtc-",
            "wrtc-1733200000123456789",
            "wrtc-3F9C00000000000000000000000000AA",
            "wrtc-3f9c0000000000000000000000000000aa",
            "-3f9c00000000000000000000000000aa",
            "wr tc-3f9c00000000000000000000000000aa",
            "wrtc-3f9c00000000000000000000000000ag",
        ] {
            assert_eq!(CallId::parse(raw), None, "{raw:?} parsed");
        }
        assert!(CallId::parse(" wrtc-3f9c00000000000000000000000000aa ").is_some());
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(validate_prefix("wrtc").is_ok());
        assert!(validate_prefix("a-b_C9").is_ok());
        assert!(validate_prefix("").is_err());
        assert!(validate_prefix("has space").is_err());
        assert!(validate_prefix("slash/").is_err());
        assert!(validate_prefix(&"x".repeat(MAX_PREFIX_LEN + 1)).is_err());
    }
}
