//! WebSocket frame headers read ahead of their payloads, and the size limit on incoming messages.
//!
//! The WebSocket parser of voicegate's dialog client (actix-http's) buffers a frame's whole
//! declared payload before it compares the length with its size limit, so that limit alone does
//! not bound memory: a dialog app that declares a 150 MB frame and sends it slowly gets 150 MB
//! buffered. The client therefore reads each frame's header first ([`peek_header`], RFC 6455
//! §5.2) and asks a [`MessageLimit`] whether the frame may be read at all, before any of its
//! payload is kept. A message sent in fragments (§5.4) counts as a whole: the limit bounds what
//! the assembled message can take, not only each frame.
//!
//! Only lengths are read here. Everything else about a header (reserved bits, opcodes, masking,
//! control frame sizes) stays the parser's business, which runs right after and refuses what is
//! malformed.

/// Opcode of a continuation frame (RFC 6455 §5.2).
const OP_CONTINUATION: u8 = 0x0;
/// Opcode of a text frame.
const OP_TEXT: u8 = 0x1;
/// Opcode of a binary frame.
const OP_BINARY: u8 = 0x2;
/// Opcodes from 0x8 up are control frames (§5.5).
const CONTROL_BIT: u8 = 0x8;
/// The 7-bit length value that announces a 16-bit extended length.
const LEN_16: u8 = 126;
/// The 7-bit length value that announces a 64-bit extended length.
const LEN_64: u8 = 127;
/// Bytes of a masking key.
const MASK_KEY_LEN: usize = 4;

/// What a frame's first bytes say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// FIN: the last frame of its message.
    pub fin: bool,
    /// The opcode (4 bits).
    pub opcode: u8,
    /// MASK: a masking key follows the length.
    pub masked: bool,
    /// Bytes of the header, the masking key included.
    pub header_len: usize,
    /// The payload length the header declares (up to 63 bits by the RFC; any 64-bit value is
    /// reported as it is, the limit refuses it).
    pub payload_len: u64,
}

impl FrameHeader {
    /// A control frame (close, ping, pong, or a reserved control opcode).
    pub fn is_control(&self) -> bool {
        self.opcode & CONTROL_BIT != 0
    }
}

/// Reads the frame header at the start of `buf`. `None` while the bytes that carry the payload
/// length have not all arrived (2, 4 or 10 bytes: RFC 6455 §5.2); the masking key is not
/// needed to know the length, so it is not waited for.
pub fn peek_header(buf: &[u8]) -> Option<FrameHeader> {
    let (&first, rest) = buf.split_first()?;
    let (&second, rest) = rest.split_first()?;
    let (payload_len, extended) = match second & 0x7f {
        LEN_16 => (u64::from(u16::from_be_bytes(array(rest)?)), 2),
        LEN_64 => (u64::from_be_bytes(array(rest)?), 8),
        short => (u64::from(short), 0),
    };
    let masked = second & 0x80 != 0;
    Some(FrameHeader {
        fin: first & 0x80 != 0,
        opcode: first & 0x0f,
        masked,
        header_len: 2 + extended + if masked { MASK_KEY_LEN } else { 0 },
        payload_len,
    })
}

/// The first `N` bytes of `bytes`, if there are that many.
fn array<const N: usize>(bytes: &[u8]) -> Option<[u8; N]> {
    bytes.get(..N)?.try_into().ok()
}

/// A frame the limit refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("message of at least {declared} bytes refused (limit {limit})")]
pub struct TooBig {
    /// The bytes the message would take: the frame's declared payload, plus the earlier
    /// fragments of its message for a continuation frame.
    pub declared: u64,
    /// The limit.
    pub limit: u64,
}

/// The largest message a peer may send, checked frame by frame before each payload is read.
///
/// Call [`check`](Self::check) for the header at the front of the input as often as needed
/// (a parser waiting for the rest of a frame asks again on every read), and
/// [`read`](Self::read) once, when the frame has been taken off the input.
#[derive(Debug, Clone)]
pub struct MessageLimit {
    /// Most bytes of one message.
    max: u64,
    /// Payload of the fragmented message in progress, so far (0 when none is).
    fragments: u64,
}

impl MessageLimit {
    /// Messages of at most `max` bytes.
    pub fn new(max: u64) -> Self {
        MessageLimit { max, fragments: 0 }
    }

    /// The limit.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Whether the frame with header `h` may be read. A control frame is a message of its own
    /// and may come between the fragments of another (§5.4), so only a continuation frame adds
    /// to the fragments before it.
    pub fn check(&self, h: &FrameHeader) -> Result<(), TooBig> {
        let declared = if h.opcode == OP_CONTINUATION {
            self.fragments.saturating_add(h.payload_len)
        } else {
            h.payload_len
        };
        if declared > self.max {
            Err(TooBig {
                declared,
                limit: self.max,
            })
        } else {
            Ok(())
        }
    }

    /// Records that the frame with header `h` was read.
    pub fn read(&mut self, h: &FrameHeader) {
        self.fragments = match h.opcode {
            OP_TEXT | OP_BINARY if !h.fin => h.payload_len,
            OP_CONTINUATION if !h.fin => self.fragments.saturating_add(h.payload_len),
            OP_TEXT | OP_BINARY | OP_CONTINUATION => 0,
            _ => self.fragments,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A reference encoder (RFC 6455 §5.2): the shortest length encoding, as every sender must
    /// use it, and a zero masking key when masked.
    fn encode(fin: bool, opcode: u8, masked: bool, len: u64) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | (opcode & 0x0f)];
        let mask = if masked { 0x80 } else { 0 };
        if len < 126 {
            out.push(mask | len as u8);
        } else if len <= u64::from(u16::MAX) {
            out.push(mask | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(mask | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
        if masked {
            out.extend_from_slice(&[0; 4]);
        }
        out
    }

    fn header(fin: bool, opcode: u8, payload_len: u64) -> FrameHeader {
        peek_header(&encode(fin, opcode, false, payload_len)).unwrap()
    }

    #[test]
    fn lengths_in_all_three_encodings() {
        let cases: &[(&[u8], u64, usize)] = &[
            (&[0x81, 0x05], 5, 2),
            (&[0x81, 125], 125, 2),
            (&[0x81, 126, 0x00, 0x7e], 126, 4),
            (&[0x82, 126, 0xff, 0xff], 65_535, 4),
            (
                &[0x82, 127, 0, 0, 0, 0, 0x08, 0xf0, 0xd1, 0x80],
                150_000_000,
                10,
            ),
            (
                &[0x82, 127, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                u64::MAX,
                10,
            ),
            // Not the shortest encoding, but the length is still what it says.
            (&[0x81, 126, 0x00, 0x01], 1, 4),
            (&[0x81, 0x85, 1, 2, 3, 4], 5, 6),
        ];
        for &(bytes, len, header_len) in cases {
            let h = peek_header(bytes).unwrap();
            assert_eq!(
                (h.payload_len, h.header_len),
                (len, header_len),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn waits_for_the_bytes_that_carry_the_length() {
        for bytes in [
            &[][..],
            &[0x81],
            &[0x81, 126, 0x01],
            &[0x82, 127, 0, 0, 0, 0, 0, 0, 0],
        ] {
            assert_eq!(peek_header(bytes), None, "{bytes:?}");
        }
        // The masking key is not needed to know the length.
        let h = peek_header(&[0x81, 0x85]).unwrap();
        assert!(h.masked);
        assert_eq!((h.payload_len, h.header_len), (5, 6));
    }

    #[test]
    fn fin_opcode_and_control() {
        let h = peek_header(&[0x09, 0x00]).unwrap();
        assert!(!h.fin);
        assert_eq!(h.opcode, 0x9);
        assert!(h.is_control());
        assert!(!peek_header(&[0x81, 0]).unwrap().is_control());
    }

    #[test]
    fn a_single_frame_is_refused_by_its_declared_length() {
        let limit = MessageLimit::new(1024);
        assert_eq!(limit.check(&header(true, OP_TEXT, 1024)), Ok(()));
        assert_eq!(
            limit.check(&header(true, OP_TEXT, 150_000_000)),
            Err(TooBig {
                declared: 150_000_000,
                limit: 1024
            })
        );
        assert!(limit.check(&header(true, 0x9, 1025)).is_err(), "pings too");
        assert!(limit.check(&header(true, OP_BINARY, u64::MAX)).is_err());
    }

    #[test]
    fn fragments_count_as_one_message() {
        let mut limit = MessageLimit::new(1000);
        let first = header(false, OP_TEXT, 400);
        limit.check(&first).unwrap();
        limit.read(&first);
        let more = header(false, OP_CONTINUATION, 400);
        limit.check(&more).unwrap();
        limit.read(&more);
        // A ping between fragments neither counts nor resets.
        let ping = header(true, 0x9, 10);
        limit.check(&ping).unwrap();
        limit.read(&ping);
        assert_eq!(
            limit.check(&header(true, OP_CONTINUATION, 201)),
            Err(TooBig {
                declared: 1001,
                limit: 1000
            })
        );
        let last = header(true, OP_CONTINUATION, 200);
        limit.check(&last).unwrap();
        limit.read(&last);
        // The next message starts from nothing.
        limit.check(&header(true, OP_TEXT, 1000)).unwrap();
        limit.check(&header(false, OP_BINARY, 1000)).unwrap();
    }

    #[test]
    fn checking_again_while_a_frame_arrives_changes_nothing() {
        let mut limit = MessageLimit::new(100);
        let first = header(false, OP_TEXT, 60);
        for _ in 0..5 {
            limit.check(&first).unwrap();
        }
        limit.read(&first);
        let last = header(true, OP_CONTINUATION, 40);
        for _ in 0..5 {
            limit.check(&last).unwrap();
        }
    }

    proptest! {
        #[test]
        fn never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            if let Some(h) = peek_header(&bytes) {
                prop_assert!(h.header_len >= 2 && h.header_len <= 14);
                prop_assert!(h.opcode <= 0x0f);
            }
        }

        #[test]
        fn agrees_with_the_reference_encoder(
            fin in any::<bool>(),
            opcode in 0u8..16,
            masked in any::<bool>(),
            len in prop_oneof![0u64..126, 126u64..=65_535, 65_536u64..=u64::MAX],
            tail in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let mut bytes = encode(fin, opcode, masked, len);
            let header_len = bytes.len();
            bytes.extend_from_slice(&tail);
            let h = peek_header(&bytes).unwrap();
            prop_assert_eq!(h, FrameHeader { fin, opcode, masked, header_len, payload_len: len });
            // Every prefix too short to hold the length yields nothing yet.
            let len_bytes = header_len - if masked { MASK_KEY_LEN } else { 0 };
            for cut in 0..len_bytes {
                prop_assert_eq!(peek_header(&bytes[..cut]), None);
            }
        }

        #[test]
        fn a_fragmented_message_is_refused_exactly_when_its_total_passes_the_limit(
            max in 0u64..10_000,
            sizes in proptest::collection::vec(0u64..4_000, 1..8),
        ) {
            let mut limit = MessageLimit::new(max);
            let mut total = 0u64;
            for (i, &size) in sizes.iter().enumerate() {
                let opcode = if i == 0 { OP_TEXT } else { OP_CONTINUATION };
                let h = header(i + 1 == sizes.len(), opcode, size);
                total += size;
                match limit.check(&h) {
                    Ok(()) => {
                        prop_assert!(total <= max);
                        limit.read(&h);
                    }
                    Err(e) => {
                        prop_assert!(total > max);
                        prop_assert_eq!(e.declared, total);
                        break;
                    }
                }
            }
        }
    }
}
