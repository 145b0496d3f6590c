//! What a `DialogClient` reads from the app: frames, fragmented messages put back together,
//! close frames and the socket's end; and what its writer reports.

use super::*;

/// A fragmented message being put together (RFC 6455 §5.4).
#[derive(Debug, Default)]
pub(super) struct Fragments {
    /// The message so far; `None` between messages.
    so_far: Option<bytes::BytesMut>,
}

impl Fragments {
    /// Takes one fragment; the whole message once its last fragment came.
    fn push(&mut self, item: actix_http::ws::Item) -> Option<bytes::Bytes> {
        use actix_http::ws::Item;
        match item {
            Item::FirstText(b) | Item::FirstBinary(b) => {
                self.so_far = Some(bytes::BytesMut::from(&b[..]));
                None
            }
            Item::Continue(b) => {
                if let Some(m) = self.so_far.as_mut() {
                    m.extend_from_slice(&b);
                }
                None
            }
            Item::Last(b) => {
                let mut m = self.so_far.take()?;
                m.extend_from_slice(&b);
                Some(m.freeze())
            }
        }
    }
}

impl StreamHandler<Result<Frame, ReadError>> for DialogClient {
    fn handle(&mut self, item: Result<Frame, ReadError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        match item {
            Ok(Frame::Text(bytes)) | Ok(Frame::Binary(bytes)) => {
                match std::str::from_utf8(&bytes) {
                    Ok(text) => self.on_text(text),
                    Err(_) => self
                        .span
                        .in_scope(|| tracing::warn!("dialog frame is not UTF-8; ignored")),
                }
            }
            Ok(Frame::Ping(p)) => {
                if let Some(sink) = self.sink.as_mut() {
                    let _ = sink.write(WsMessage::Pong(p));
                }
            }
            // A message sent in fragments is put together (the codec has already limited their
            // total to `dialog.max_message_bytes`) and read as one.
            Ok(Frame::Continuation(item)) => {
                if let Some(whole) = self.fragments.push(item) {
                    match std::str::from_utf8(&whole) {
                        Ok(text) => self.on_text(text),
                        Err(_) => self.span.in_scope(|| {
                            tracing::warn!("fragmented dialog message is not UTF-8; ignored")
                        }),
                    }
                }
            }
            Ok(Frame::Pong(_)) => {}
            Ok(Frame::Close(reason)) => {
                let code: u16 = reason.as_ref().map_or(1005, |r| r.code.into());
                if self.state != State::Open {
                    return;
                }
                if matches!(code, 1000 | 1001) {
                    self.span
                        .in_scope(|| tracing::info!(code, "dialog app closed the connection"));
                    self.state = State::Closing;
                    // RFC 6455 §5.5.1: a close frame is answered with one, echoing its code;
                    // then the socket is closed. Nothing more is sent: the events of the call's
                    // end stay unsent, the app having left. The actor stops once the answer is
                    // flushed (`WriteHandler::finished`), or when the call's `Close` comes.
                    if let Some(sink) = self.sink.as_mut() {
                        let _ = sink.write(WsMessage::Close(Some(CloseReason {
                            code: CloseCode::from(code),
                            description: None,
                        })));
                        sink.close();
                    }
                    self.parent.do_send(DialogEvent::Closed { code });
                } else {
                    self.lost(DialogFailure::Closed(code), None, ctx);
                }
            }
            Err(ReadError::TooBig(e)) => {
                if self.state == State::Open {
                    self.span.in_scope(|| {
                        tracing::warn!(
                            declared = e.declared,
                            limit = e.limit,
                            "dialog message too big; closing the connection"
                        )
                    });
                }
                self.lost(DialogFailure::TooBig(e), Some(CloseCode::Size), ctx);
            }
            Err(ReadError::Protocol(e)) => self.lost(DialogFailure::Protocol(e), None, ctx),
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // The TCP connection ended without a close frame.
        self.lost(DialogFailure::Ended, None, ctx);
    }
}

impl actix::io::WriteHandler<awc::error::WsProtocolError> for DialogClient {
    fn error(&mut self, err: awc::error::WsProtocolError, ctx: &mut Self::Context) -> Running {
        self.lost(DialogFailure::Write(err), None, ctx);
        Running::Continue
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        if self.state == State::Closing {
            self.stopped_cleanly = true;
            ctx.stop();
        }
    }
}
