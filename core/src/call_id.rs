//! Call ids: unguessable, prefixed, and checked before they are used as registry keys.
//!
//! Knowing a call id is what lets someone hang a call up, so an id carries 128 random bits from
//! the operating system's generator (the original used the Unix time in nanoseconds). The
//! configurable prefix keeps ids recognisable in logs: `wrtc-3f9c…`.
//!
//! In a fleet each node has an id (`node.id`, [`validate_node_id`]) and its call ids name it:
//! `<prefix>-<node>-<32 hex>`, so any router (a load balancer, another node) can tell from the id
//! alone which node holds the call ([`CallId::node`]).

use std::fmt;

/// Random bytes in a call id: 128 bits.
const RANDOM_BYTES: usize = 16;

/// Longest prefix accepted from configuration.
pub const MAX_PREFIX_LEN: usize = 32;

/// Longest node id.
pub const MAX_NODE_LEN: usize = 16;

/// A call's identity, `<prefix>-<node>-<32 lowercase hex digits>` (or `<prefix>-<32 hex>`
/// from a server without a node id).
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

/// Why a node id from configuration was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("node id {0:?} must be 1 to {MAX_NODE_LEN} lowercase ASCII letters or digits")]
pub struct NodeIdError(pub String);

/// Checks a node id: `[a-z0-9]{1,16}` (it goes into call ids, URLs, metric labels and load
/// balancer rules unescaped).
pub fn validate_node_id(node: &str) -> Result<(), NodeIdError> {
    let ok = (1..=MAX_NODE_LEN).contains(&node.len())
        && node
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(NodeIdError(node.to_owned()))
    }
}

/// A node id made from a host name: its first label, lowercased, letters and digits only, the
/// last 16 of them (a StatefulSet's ordinal is at the end: `voicegate-2` → `voicegate2`);
/// `node` when nothing is left.
pub fn node_id_from_hostname(hostname: &str) -> String {
    let label = hostname.trim().split('.').next().unwrap_or("");
    let kept: Vec<u8> = label
        .bytes()
        .map(|b| b.to_ascii_lowercase())
        .filter(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        .collect();
    let tail = &kept[kept.len().saturating_sub(MAX_NODE_LEN)..];
    if tail.is_empty() {
        "node".to_owned()
    } else {
        String::from_utf8_lossy(tail).into_owned()
    }
}

impl CallId {
    /// A fresh id with `prefix` and, in a fleet, this node's id. The prefix must have passed
    /// [`validate_prefix`] and the node [`validate_node_id`].
    ///
    /// Fails only when the operating system cannot supply random bytes.
    pub fn generate(prefix: &str, node: Option<&str>) -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; RANDOM_BYTES];
        getrandom::fill(&mut bytes)?;
        let node_len = node.map_or(0, |n| n.len() + 1);
        let mut id = String::with_capacity(prefix.len() + 1 + node_len + RANDOM_BYTES * 2);
        id.push_str(prefix);
        id.push('-');
        if let Some(node) = node {
            id.push_str(node);
            id.push('-');
        }
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

    /// The node this id names, given the fleet's call id `prefix`: `Some("b")` for
    /// `wrtc-b-3f9c…`, `None` for an id without a node (`wrtc-3f9c…`) or with another prefix.
    pub fn node(&self, prefix: &str) -> Option<&str> {
        let rest = self.0.strip_prefix(prefix)?.strip_prefix('-')?;
        let (node, _hex) = rest.rsplit_once('-')?;
        validate_node_id(node).is_ok().then_some(node)
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
        let id = CallId::generate("wrtc", None).unwrap();
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
            let id = CallId::generate("my-app_1", None).unwrap();
            assert_eq!(CallId::parse(id.as_str()), Some(id.clone()));
            assert!(seen.insert(id), "duplicate call id");
        }
    }

    #[test]
    fn random_part_is_not_constant_per_position() {
        // Each hex position takes several values over many ids: a broken generator (all zeros,
        // a counter) would fail this.
        let ids: Vec<_> = (0..200)
            .map(|_| CallId::generate("p", None).unwrap())
            .collect();
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

    #[test]
    fn a_node_id_goes_into_the_call_id_and_is_read_back() {
        let id = CallId::generate("wrtc", Some("b7")).unwrap();
        assert!(id.as_str().starts_with("wrtc-b7-"), "{id}");
        assert_eq!(CallId::parse(id.as_str()), Some(id.clone()));
        assert_eq!(id.node("wrtc"), Some("b7"));
        // A prefix with dashes of its own.
        let id = CallId::generate("my-app", Some("c")).unwrap();
        assert_eq!(id.node("my-app"), Some("c"));
        assert_eq!(
            CallId::generate("my-app", None).unwrap().node("my-app"),
            None
        );
        assert_eq!(CallId::generate("wrtc", None).unwrap().node("wrtc"), None);
        assert_eq!(id.node("other"), None, "another fleet's prefix");
    }

    #[test]
    fn node_ids_are_short_lowercase_alphanumerics() {
        for good in ["a", "node7", "0123456789abcdef"] {
            assert_eq!(validate_node_id(good), Ok(()), "{good}");
        }
        for bad in ["", "A", "a-b", "a_b", "0123456789abcdefg", "nöde"] {
            assert!(validate_node_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_names_make_node_ids() {
        assert_eq!(node_id_from_hostname("voicegate-2"), "voicegate2");
        assert_eq!(
            node_id_from_hostname("Voicegate-12.voicegate.ns.svc"),
            "voicegate12"
        );
        assert_eq!(
            node_id_from_hostname("ip-10-0-3-17.ec2.internal"),
            "ip100317"
        );
        assert_eq!(
            node_id_from_hostname("a-very-long-host-name-of-a-pod-0"),
            "ghostnameofapod0",
            "the last 16, where the ordinal is"
        );
        assert_eq!(node_id_from_hostname(""), "node");
        assert_eq!(node_id_from_hostname("---"), "node");
        for h in ["voicegate-2", "X", "a.b", "12345678901234567890"] {
            assert_eq!(validate_node_id(&node_id_from_hostname(h)), Ok(()), "{h}");
        }
    }
}
