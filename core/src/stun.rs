//! The little of STUN the shared media port needs to route datagrams safely.
//!
//! Every call shares one UDP port, so the port's receive loop decides which call a datagram
//! belongs to before the WebRTC stack sees it. Two kinds of STUN message matter there:
//! - **Binding requests** (ICE connectivity checks, RFC 8445 §7.2.2) name the call by the local
//!   ufrag before the colon of their USERNAME. They are the only thing that may bind a remote
//!   address to a call, and only once their MESSAGE-INTEGRITY verifies with that call's local
//!   ICE password (RFC 8489 §9.1 short-term credentials, §14.5): anyone can write a ufrag into a
//!   datagram and spoof its source address, only the caller who received our answer knows the
//!   password. [`BindingRequest::verify`] checks it.
//! - **Responses** to our own checks are routed by their transaction id (96 random bits that we
//!   chose, RFC 8489 §6), so a route never has to be guessed from where we last sent.
//!
//! Parsing never panics and never reads past the datagram: every length is checked against
//! what arrived (property-tested below).

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// RFC 8489 §5: the magic cookie in every STUN header.
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
/// STUN header length.
const HEADER: usize = 20;
/// Attribute type of USERNAME (RFC 8489 §14.3).
const ATTR_USERNAME: u16 = 0x0006;
/// Attribute type of MESSAGE-INTEGRITY (RFC 8489 §14.5): HMAC-SHA1, 20 bytes.
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
/// Length of a MESSAGE-INTEGRITY value.
const INTEGRITY_LEN: usize = 20;
/// Attribute type of USE-CANDIDATE (RFC 8445 §16.1): the controlling agent nominates the pair.
const ATTR_USE_CANDIDATE: u16 = 0x0025;

/// A STUN transaction id.
pub type TransactionId = [u8; 12];

/// What a datagram on the media port is, as far as routing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A STUN Binding request (method 0x001, class request).
    BindingRequest,
    /// A STUN success or error response, with its transaction id.
    Response(TransactionId),
    /// Any other STUN message (indications, other methods).
    OtherStun,
    /// Not STUN: DTLS, SRTP/SRTCP, or garbage.
    NotStun,
}

/// Classifies a datagram by its first bytes (RFC 7983 demultiplexing: STUN starts 0..=3).
pub fn classify(b: &[u8]) -> Kind {
    if b.len() < HEADER || b[0] > 3 || b[4..8] != MAGIC_COOKIE {
        return Kind::NotStun;
    }
    let typ = u16::from_be_bytes([b[0], b[1]]);
    // Class bits are 0x0100 and 0x0010 of the type (RFC 8489 §5).
    let class = ((typ >> 7) & 0b10) | ((typ >> 4) & 0b01);
    let method = (typ & 0x000F) | ((typ >> 1) & 0x0070) | ((typ >> 2) & 0x0F80);
    match (method, class) {
        (0x001, 0b00) => Kind::BindingRequest,
        (_, 0b10 | 0b11) => Kind::Response(transaction_id(b)),
        _ => Kind::OtherStun,
    }
}

fn transaction_id(b: &[u8]) -> TransactionId {
    let mut id = [0u8; 12];
    id.copy_from_slice(&b[8..HEADER]);
    id
}

/// A Binding request, read far enough to route and authenticate it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingRequest<'a> {
    /// The whole datagram.
    msg: &'a [u8],
    /// USERNAME before the colon: the receiver's (our) ufrag.
    pub local_ufrag: &'a str,
    /// Offset of the MESSAGE-INTEGRITY attribute's header, when there is one.
    integrity_at: Option<usize>,
    /// Whether it carries USE-CANDIDATE: the caller nominates the pair it arrived on.
    pub nominates: bool,
}

impl<'a> BindingRequest<'a> {
    /// Reads a Binding request with a USERNAME; `None` for anything else or anything malformed.
    pub fn parse(b: &'a [u8]) -> Option<Self> {
        if classify(b) != Kind::BindingRequest {
            return None;
        }
        let msg_len = usize::from(u16::from_be_bytes([b[2], b[3]]));
        // RFC 8489 §5: the length counts the attributes, always a multiple of 4, and never
        // more than arrived.
        if msg_len % 4 != 0 || HEADER + msg_len > b.len() {
            return None;
        }
        let msg = &b[..HEADER + msg_len];
        let mut username = None;
        let mut integrity_at = None;
        let mut nominates = false;
        let mut i = HEADER;
        while i + 4 <= msg.len() {
            let typ = u16::from_be_bytes([msg[i], msg[i + 1]]);
            let len = usize::from(u16::from_be_bytes([msg[i + 2], msg[i + 3]]));
            let value = msg.get(i + 4..i + 4 + len)?;
            match typ {
                ATTR_USERNAME if username.is_none() => {
                    let s = std::str::from_utf8(value).ok()?;
                    username = Some(s.split(':').next().unwrap_or(s));
                }
                ATTR_MESSAGE_INTEGRITY => {
                    if len != INTEGRITY_LEN {
                        return None;
                    }
                    integrity_at = Some(i);
                    // §14.5: attributes after MESSAGE-INTEGRITY (but FINGERPRINT) are ignored.
                    break;
                }
                ATTR_USE_CANDIDATE => nominates = true,
                _ => {}
            }
            i += 4 + ((len + 3) & !3);
        }
        Some(BindingRequest {
            msg,
            local_ufrag: username?,
            integrity_at,
            nominates,
        })
    }

    /// Whether MESSAGE-INTEGRITY is present and verifies with `password` (our local ICE
    /// password): HMAC-SHA1 keyed with it over the message up to the attribute, with the
    /// header's length adjusted to end just after the attribute (RFC 8489 §14.5).
    /// The comparison is constant-time.
    pub fn verify(&self, password: &[u8]) -> bool {
        let Some(at) = self.integrity_at else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(password) else {
            return false;
        };
        let adjusted = (at + 4 + INTEGRITY_LEN - HEADER) as u16;
        mac.update(&self.msg[..2]);
        mac.update(&adjusted.to_be_bytes());
        mac.update(&self.msg[4..at]);
        mac.verify_slice(&self.msg[at + 4..at + 4 + INTEGRITY_LEN])
            .is_ok()
    }
}

/// Builds a Binding request with USERNAME `username` and, keyed with `password`,
/// MESSAGE-INTEGRITY (for tests and tools; the WebRTC stack builds the real ones).
pub fn binding_request(txid: TransactionId, username: &str, password: Option<&[u8]>) -> Vec<u8> {
    request(txid, username, password, false)
}

/// Builds a Binding request like [`binding_request`] that also nominates its pair
/// (USE-CANDIDATE), as the controlling agent's final check does.
pub fn nominating_request(txid: TransactionId, username: &str, password: &[u8]) -> Vec<u8> {
    request(txid, username, Some(password), true)
}

fn request(
    txid: TransactionId,
    username: &str,
    password: Option<&[u8]>,
    nominate: bool,
) -> Vec<u8> {
    let mut m = vec![0x00, 0x01, 0, 0];
    m.extend_from_slice(&MAGIC_COOKIE);
    m.extend_from_slice(&txid);
    // PRIORITY, as browsers send it (RFC 8445 §7.1.1).
    m.extend_from_slice(&0x0024u16.to_be_bytes());
    m.extend_from_slice(&4u16.to_be_bytes());
    m.extend_from_slice(&0x6e7f_1effu32.to_be_bytes());
    if nominate {
        m.extend_from_slice(&ATTR_USE_CANDIDATE.to_be_bytes());
        m.extend_from_slice(&0u16.to_be_bytes());
    }
    m.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
    m.extend_from_slice(&(username.len() as u16).to_be_bytes());
    m.extend_from_slice(username.as_bytes());
    while m.len() % 4 != 0 {
        m.push(0);
    }
    if let Some(key) = password {
        let at = m.len();
        let len = (at + 4 + INTEGRITY_LEN - HEADER) as u16;
        m[2..4].copy_from_slice(&len.to_be_bytes());
        let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(&m);
        let tag = mac.finalize().into_bytes();
        m.extend_from_slice(&ATTR_MESSAGE_INTEGRITY.to_be_bytes());
        m.extend_from_slice(&(INTEGRITY_LEN as u16).to_be_bytes());
        m.extend_from_slice(&tag);
    }
    let len = (m.len() - HEADER) as u16;
    m[2..4].copy_from_slice(&len.to_be_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TX: TransactionId = [7; 12];

    #[test]
    fn reads_the_local_ufrag() {
        let m = binding_request(TX, "abcd:wxyz", None);
        assert_eq!(BindingRequest::parse(&m).unwrap().local_ufrag, "abcd");
        let m = binding_request(TX, "nocolon", None);
        assert_eq!(BindingRequest::parse(&m).unwrap().local_ufrag, "nocolon");
    }

    #[test]
    fn integrity_verifies_only_with_the_right_password() {
        let m = binding_request(TX, "abcd:wxyz", Some(b"the-local-password"));
        let r = BindingRequest::parse(&m).unwrap();
        assert!(r.verify(b"the-local-password"));
        assert!(!r.verify(b"another-password"));
        // Without the attribute, nothing verifies.
        let bare = binding_request(TX, "abcd:wxyz", None);
        assert!(
            !BindingRequest::parse(&bare)
                .unwrap()
                .verify(b"the-local-password")
        );
        // A changed byte anywhere before the attribute breaks it.
        for i in [1usize, 9, 24, 30] {
            let mut bad = m.clone();
            bad[i] ^= 0x01;
            let ok = BindingRequest::parse(&bad).is_some_and(|r| r.verify(b"the-local-password"));
            assert!(!ok, "byte {i} flipped");
        }
    }

    #[test]
    fn tells_a_nominating_check() {
        let plain = binding_request(TX, "abcd:wxyz", Some(b"pw"));
        assert!(!BindingRequest::parse(&plain).unwrap().nominates);
        let m = nominating_request(TX, "abcd:wxyz", b"pw");
        let r = BindingRequest::parse(&m).unwrap();
        assert!(r.nominates && r.verify(b"pw"));
    }

    /// Browsers end their checks with FINGERPRINT after MESSAGE-INTEGRITY; the length in the
    /// header then covers it, and the integrity must still verify (the real stack's checks are
    /// exercised end to end by the integration tests).
    #[test]
    fn fingerprint_after_integrity_is_allowed() {
        let mut m = binding_request(TX, "srv1:brw1", Some(b"pw"));
        let len = u16::from_be_bytes([m[2], m[3]]) + 8;
        m[2..4].copy_from_slice(&len.to_be_bytes());
        m.extend_from_slice(&0x8028u16.to_be_bytes());
        m.extend_from_slice(&4u16.to_be_bytes());
        m.extend_from_slice(&[1, 2, 3, 4]);
        let r = BindingRequest::parse(&m).unwrap();
        assert!(r.verify(b"pw"));
    }

    #[test]
    fn classifies() {
        let req = binding_request(TX, "a:b", None);
        assert_eq!(classify(&req), Kind::BindingRequest);
        let mut ok = req.clone();
        ok[0] = 0x01; // 0x0101 Binding success response
        assert_eq!(classify(&ok), Kind::Response(TX));
        let mut err = req.clone();
        err[0] = 0x01;
        err[1] = 0x11; // 0x0111 Binding error response
        assert_eq!(classify(&err), Kind::Response(TX));
        let mut ind = req.clone();
        ind[1] = 0x11; // 0x0011 Binding indication
        assert_eq!(classify(&ind), Kind::OtherStun);
        assert_eq!(classify(&[0x16, 0xfe, 0xfd]), Kind::NotStun); // DTLS
        assert_eq!(classify(&[0x80; 40]), Kind::NotStun); // RTP
        let mut no_cookie = req.clone();
        no_cookie[4] = 0;
        assert_eq!(classify(&no_cookie), Kind::NotStun);
        assert_eq!(BindingRequest::parse(&ok), None);
    }

    #[test]
    fn malformed_requests_are_refused() {
        let full = binding_request(TX, "abcd:wxyz", Some(b"pw"));
        // Truncated: the declared length is more than arrived.
        assert_eq!(BindingRequest::parse(&full[..30]), None);
        // A length that is not a multiple of 4.
        let mut odd = full.clone();
        odd[3] |= 1;
        assert_eq!(BindingRequest::parse(&odd), None);
        // No USERNAME.
        let mut none = full[..HEADER].to_vec();
        none[2..4].copy_from_slice(&0u16.to_be_bytes());
        assert_eq!(BindingRequest::parse(&none), None);
        // An attribute running past the message.
        let mut over = binding_request(TX, "abcd:wxyz", None);
        let at = HEADER + 8 + 2; // USERNAME's length field
        over[at..at + 2].copy_from_slice(&500u16.to_be_bytes());
        assert_eq!(BindingRequest::parse(&over), None);
    }

    proptest! {
        #[test]
        fn never_panics_on_any_datagram(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = classify(&b);
            if let Some(r) = BindingRequest::parse(&b) {
                let _ = r.verify(b"pw");
            }
        }

        #[test]
        fn never_panics_on_mutated_requests(
            user in "[a-zA-Z0-9+/]{1,32}:[a-zA-Z0-9+/]{1,32}",
            flips in proptest::collection::vec((0usize..200, any::<u8>()), 0..8),
            cut in 0usize..200,
        ) {
            let mut m = binding_request(TX, &user, Some(b"secret"));
            for (i, v) in flips {
                if let Some(b) = m.get_mut(i) {
                    *b = v;
                }
            }
            m.truncate(cut.max(1).min(m.len()));
            let _ = classify(&m);
            if let Some(r) = BindingRequest::parse(&m) {
                let _ = r.verify(b"secret");
            }
        }

        #[test]
        fn well_formed_requests_round_trip(
            ufrag in "[a-zA-Z0-9+/]{4,32}",
            remote in "[a-zA-Z0-9+/]{4,32}",
            pwd in proptest::collection::vec(any::<u8>(), 1..64),
            txid in any::<[u8; 12]>(),
        ) {
            let m = binding_request(txid, &format!("{ufrag}:{remote}"), Some(&pwd));
            let r = BindingRequest::parse(&m).unwrap();
            prop_assert_eq!(r.local_ufrag, ufrag.as_str());
            prop_assert!(r.verify(&pwd));
            let mut wrong = pwd.clone();
            wrong[0] ^= 0xff;
            prop_assert!(!r.verify(&wrong));
        }
    }
}
