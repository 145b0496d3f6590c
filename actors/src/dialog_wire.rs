//! The dialog WebSocket's plumbing below the actor: the engines' [`LimitedCodec`] (each
//! frame's declared length checked before its payload is kept) counting its refusals, and a
//! write half that flushes before it shuts down.
//!
//! A refusal is counted under `dialog_message_bytes` in `voicegate_limit_hits_total` and is
//! final for the connection (every later read fails the same way), so the client closes it.
//!
//! actix-codec's `Framed` shuts the socket down without writing what its write buffer still
//! holds, so a close frame written just before closing never left: [`FlushThenClose`] flushes
//! first, as `Sink::poll_close` promises.
//!
//! A separate file from the actor because it is plain code with tests of its own.

use crate::metrics::{Limit, metrics};
use futures_util::Sink;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
pub use voicegate_engines::ws_codec::{LimitedCodec, ReadError};

/// The dialog WebSocket's codec: [`LimitedCodec`] at `dialog.max_message_bytes`, counting a
/// refusal under `dialog_message_bytes`.
pub fn dialog_codec(max_bytes: usize) -> LimitedCodec {
    LimitedCodec::new(max_bytes).on_refused(|| metrics().limit_hit(Limit::DialogMessageBytes))
}

/// A sink whose close flushes what is buffered before it closes the sink below (see the module
/// doc).
#[derive(Debug)]
pub struct FlushThenClose<S>(pub S);

impl<I, S: Sink<I> + Unpin> Sink<I> for FlushThenClose<S> {
    type Error = S::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        Pin::new(&mut self.0).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: I) -> Result<(), S::Error> {
        Pin::new(&mut self.0).start_send(item)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        ready!(Pin::new(&mut self.0).poll_flush(cx))?;
        Pin::new(&mut self.0).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_codec::{Decoder, Encoder};
    use awc::error::WsProtocolError;
    use awc::ws::{Frame, Message};
    use bytes::BytesMut;

    /// An unmasked frame header as a server sends it (RFC 6455 §5.2).
    fn header(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        if len < 126 {
            out.push(len as u8);
        } else if len <= 0xffff {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(127);
            out.extend_from_slice(&len.to_be_bytes());
        }
        out
    }

    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = header(fin, opcode, payload.len() as u64);
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn a_frame_within_the_limit_is_decoded_even_when_it_arrives_in_pieces() {
        let mut codec = dialog_codec(1024);
        let bytes = frame(true, 0x1, &[b'x'; 1000]);
        let mut src = BytesMut::new();
        for chunk in bytes.chunks(100) {
            assert!(matches!(codec.decode(&mut src), Ok(None)));
            src.extend_from_slice(chunk);
        }
        match codec.decode(&mut src) {
            Ok(Some(Frame::Text(t))) => assert_eq!(t.len(), 1000),
            other => panic!("{other:?}"),
        }
        assert!(src.is_empty());
    }

    #[test]
    fn a_huge_declared_frame_is_refused_from_its_header_alone() {
        let before = metrics().limit_hits(Limit::DialogMessageBytes);
        let mut codec = dialog_codec(1 << 20);
        let mut src = BytesMut::from(&header(true, 0x2, 150_000_000)[..]);
        src.extend_from_slice(&[0; 100]);
        match codec.decode(&mut src) {
            Err(ReadError::TooBig(t)) => assert_eq!(t.declared, 150_000_000),
            other => panic!("{other:?}"),
        }
        assert!(src.is_empty(), "nothing kept");
        assert!(src.capacity() < 4096, "nothing reserved");
        // Final: a later read fails the same way, even with a fine frame behind.
        src.extend_from_slice(&frame(true, 0x1, b"{}"));
        assert!(matches!(codec.decode(&mut src), Err(ReadError::TooBig(_))));
        assert!(metrics().limit_hits(Limit::DialogMessageBytes) > before);
    }

    #[test]
    fn fragments_are_limited_as_one_message() {
        let mut codec = dialog_codec(1000);
        let mut src = BytesMut::new();
        src.extend_from_slice(&frame(false, 0x1, &[b'a'; 600]));
        src.extend_from_slice(&frame(true, 0x9, b"ping"));
        src.extend_from_slice(&frame(true, 0x0, &[b'b'; 401]));
        assert!(matches!(
            codec.decode(&mut src),
            Ok(Some(Frame::Continuation(_)))
        ));
        assert!(matches!(codec.decode(&mut src), Ok(Some(Frame::Ping(_)))));
        match codec.decode(&mut src) {
            Err(ReadError::TooBig(t)) => assert_eq!(t.declared, 1001),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn protocol_errors_still_come_from_the_parser() {
        let mut codec = dialog_codec(1000);
        // A masked frame from the server (RFC 6455 §5.1).
        let mut src = BytesMut::from(&[0x81u8, 0x82, 1, 2, 3, 4, 5, 6][..]);
        assert!(matches!(
            codec.decode(&mut src),
            Err(ReadError::Protocol(WsProtocolError::MaskedFrame))
        ));
    }

    #[test]
    fn closing_flushes_first() {
        /// Records the order of flushes and closes.
        struct Log(Vec<&'static str>);
        impl Sink<()> for Log {
            type Error = ();
            fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
                Poll::Ready(Ok(()))
            }
            fn start_send(self: Pin<&mut Self>, _: ()) -> Result<(), ()> {
                Ok(())
            }
            fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
                self.0.push("flush");
                Poll::Ready(Ok(()))
            }
            fn poll_close(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
                self.0.push("close");
                Poll::Ready(Ok(()))
            }
        }
        let mut sink = FlushThenClose(Log(Vec::new()));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut sink).poll_close(&mut cx).is_ready());
        assert_eq!(sink.0.0, ["flush", "close"]);
    }

    #[test]
    fn encodes_like_the_client_codec() {
        let mut ours = BytesMut::new();
        dialog_codec(1000)
            .encode(Message::Text("hi".into()), &mut ours)
            .unwrap();
        // Masked (a client's frames are), two bytes of payload.
        assert_eq!(ours[0], 0x81);
        assert_eq!(ours[1], 0x80 | 2);
        assert_eq!(ours.len(), 2 + 4 + 2);
    }
}
