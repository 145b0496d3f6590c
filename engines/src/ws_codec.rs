//! A WebSocket client codec that bounds memory: awc's codec behind a check of each frame's
//! declared length.
//!
//! actix-http's frame parser buffers a frame's whole declared payload before it compares the
//! length with its own limit, so that limit does not bound memory. [`LimitedCodec`] reads each
//! frame's header first and refuses a message by its declared length
//! ([`voicegate_core::ws_frame`]), before any of its payload is kept: the read buffer never
//! holds more than one permitted frame and one read. A refusal is final for the connection
//! (every later read fails the same way), so the client closes it; a hook set with
//! [`LimitedCodec::on_refused`] is called once, when it happens (the dialog client counts it).
//!
//! The dialog client and the WebSocket speech engines share it.

use actix_codec::{Decoder, Encoder};
use awc::error::WsProtocolError;
use awc::ws::{Codec, Frame, Message};
use bytes::BytesMut;
use voicegate_core::ws_frame::{MessageLimit, TooBig, peek_header};

/// Why reading from a WebSocket failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A message larger than the limit was announced.
    #[error(transparent)]
    TooBig(#[from] TooBig),
    /// The WebSocket protocol was broken, or the connection failed.
    #[error("{0}")]
    Protocol(#[from] WsProtocolError),
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        ReadError::Protocol(WsProtocolError::Io(e))
    }
}

/// awc's client codec, refusing messages over a size limit by their declared length.
#[derive(Debug)]
pub struct LimitedCodec {
    /// The parser and encoder.
    inner: Codec,
    /// The message size limit.
    limit: MessageLimit,
    /// Set once a message was refused: the connection reads nothing more.
    refused: Option<TooBig>,
    /// Called once, when a message is refused.
    on_refused: Option<fn()>,
}

impl LimitedCodec {
    /// A client codec for messages of at most `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        LimitedCodec {
            inner: Codec::new().max_size(max_bytes).client_mode(),
            limit: MessageLimit::new(max_bytes as u64),
            refused: None,
            on_refused: None,
        }
    }

    /// The same, calling `hook` when it refuses a message (a metric).
    pub fn on_refused(mut self, hook: fn()) -> Self {
        self.on_refused = Some(hook);
        self
    }
}

impl Decoder for LimitedCodec {
    type Item = Frame;
    type Error = ReadError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ReadError> {
        if let Some(too_big) = self.refused {
            return Err(too_big.into());
        }
        // Without the bytes that carry the length, the parser cannot have a frame either.
        let Some(header) = peek_header(src) else {
            return Ok(None);
        };
        if let Err(too_big) = self.limit.check(&header) {
            self.refused = Some(too_big);
            if let Some(hook) = self.on_refused {
                hook();
            }
            // Nothing of this connection is read any more; let go of what arrived.
            src.clear();
            return Err(too_big.into());
        }
        let frame = self.inner.decode(src)?;
        if frame.is_some() {
            // The parser took the frame whose header was peeked off the front of `src`.
            self.limit.read(&header);
        }
        Ok(frame)
    }
}

impl Encoder<Message> for LimitedCodec {
    type Error = WsProtocolError;

    fn encode(&mut self, item: Message, dst: &mut BytesMut) -> Result<(), WsProtocolError> {
        self.inner.encode(item, dst)
    }
}
