//! The WebSocket plumbing the streaming speech engines share (`elevenlabs`, `cartesia`).
//!
//! One synthesis is one vendor stream: [`synthesize`] spawns a task on the call's worker that
//! connects, sends the vendor's opening messages, and turns the vendor's base64 PCM messages
//! into chunks for the [`SynthStream`] through a bounded channel ([`CHANNEL_CHUNKS`]). The task
//! owns the socket, so dropping the stream (a cancelled segment, `tts.interrupt`, a barge-in)
//! is seen at once: the task sends the vendor's cancel message, if it has one, and a close frame
//! ([`CLOSE_GRACE`] at most), then ends.
//!
//! Deadlines and bounds: the connection (TCP, TLS, upgrade) must be up within `connect`; after
//! it, a quiet socket (no message for `idle`, `tts.stream_idle_timeout_ms`) ends the synthesis
//! as [`WsTtsError::Stalled`]; a message is refused by its declared length before its payload is
//! read (`max_message`), so a vendor cannot make the call hold more than one message. A vendor
//! that closes or drops the connection before it said it was done fails the synthesis
//! ([`WsTtsError::Dropped`]): that utterance ends `ok: false`, the call goes on.
//!
//! The vendor's wire format stays in its engine ([`Vendor`]): this file knows WebSocket frames,
//! not JSON.

use super::{SynthStream, TtsError};
use crate::idle::Stalled;
use crate::ws_codec::{LimitedCodec, ReadError};
use awc::ws::{CloseCode, CloseReason, Frame, Message};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use voicegate_core::ws_frame::TooBig;

/// PCM chunks a synthesis may hold between the socket and the speaker: the socket is not read
/// while the channel is full, so a vendor faster than the call never grows memory.
pub const CHANNEL_CHUNKS: usize = 8;

/// Longest wait for the cancel message and the close frame when a synthesis is dropped.
pub const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// Why a WebSocket synthesis failed. The text may quote the vendor (its error message), so it is
/// logged through `untrusted::shown`; it never holds the API key (that goes in a header).
#[derive(Debug, thiserror::Error)]
pub enum WsTtsError {
    /// The connection or the WebSocket upgrade failed (refused, TLS, a non-101 status).
    #[error("connecting to {url}: {detail}")]
    Connect {
        /// The endpoint without its query.
        url: String,
        /// The client's error.
        detail: String,
    },
    /// The connection was not up within the connect deadline.
    #[error("connecting to {url}: no connection within {} ms", .limit.as_millis())]
    ConnectTimeout {
        /// The endpoint without its query.
        url: String,
        /// The deadline.
        limit: Duration,
    },
    /// The vendor sent nothing for the idle limit.
    #[error("the audio stream stalled: {0}")]
    Stalled(#[source] Stalled),
    /// The vendor closed or dropped the connection before it finished.
    #[error("the connection ended before the audio did ({0})")]
    Dropped(String),
    /// A message longer than the limit.
    #[error("{0}")]
    TooBig(#[from] TooBig),
    /// The WebSocket protocol was broken.
    #[error("{0}")]
    Protocol(String),
    /// The vendor reported an error, or sent a message it should not have.
    #[error("{0}")]
    Vendor(String),
}

/// What one vendor message means.
#[derive(Debug, PartialEq)]
pub enum Reply {
    /// Raw 16-bit little-endian PCM, base64-encoded on the wire.
    Audio(String),
    /// The synthesis is complete.
    Done,
    /// Nothing for us (timestamps, alignment).
    Other,
}

/// A vendor's wire format.
pub trait Vendor: 'static {
    /// Reads one text message; `Err` is the vendor's error, quoted.
    fn parse(&self, text: &[u8]) -> Result<Reply, String>;
    /// What to send when the synthesis is dropped before it is done (before the close frame).
    fn cancel(&self) -> Option<String>;
}

/// Where to connect and what to say first.
pub struct Request {
    /// `ws://` or `wss://` URL, query included.
    pub url: String,
    /// Extra headers (the API key among them).
    pub headers: Vec<(&'static str, String)>,
    /// Text messages sent in order once the connection is up.
    pub messages: Vec<String>,
}

/// Deadlines and bounds of one synthesis.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest wait for the connection.
    pub connect: Duration,
    /// Longest quiet time once connected.
    pub idle: Duration,
    /// Largest vendor message, bytes.
    pub max_message: usize,
}

/// Starts one synthesis on the call's worker (see the module doc); `wrap` names the engine in
/// its errors.
pub fn synthesize<V: Vendor>(
    request: Request,
    vendor: V,
    limits: Limits,
    wrap: fn(WsTtsError) -> TtsError,
) -> SynthStream {
    let (tx, rx) = tokio::sync::mpsc::channel(CHANNEL_CHUNKS);
    // Runs on the call's worker (a `LocalSet`), like every engine.
    tokio::task::spawn_local(async move {
        if let Err(e) = run(request, &vendor, limits, &tx).await {
            let _ = tx.send(Err(wrap(e))).await;
        }
    });
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// One of the engines' own message structs as JSON text.
pub fn json<T: serde::Serialize>(message: &T) -> String {
    // Invariant: the engines' messages hold only strings, numbers, booleans and nested structs.
    serde_json::to_string(message).expect("plain structs serialize")
}

type Tx = tokio::sync::mpsc::Sender<Result<Vec<i16>, TtsError>>;

/// The endpoint for messages: the URL without its query (which may name the voice and model,
/// not secrets, but is long).
fn shown_url(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_owned()
}

async fn run<V: Vendor>(
    request: Request,
    vendor: &V,
    limits: Limits,
    tx: &Tx,
) -> Result<(), WsTtsError> {
    let url = shown_url(&request.url);
    let client = awc::Client::builder().timeout(limits.connect).finish();
    let mut ws = client
        .ws(request.url.as_str())
        .max_frame_size(limits.max_message);
    for (name, value) in &request.headers {
        ws = ws.header(*name, value.as_str());
    }
    let connect = tokio::select! {
        // Dropped while connecting: nothing to cancel at the vendor yet.
        _ = tx.closed() => return Ok(()),
        c = tokio::time::timeout(limits.connect, ws.connect()) => c,
    };
    let mut framed = match connect {
        Err(_) => {
            return Err(WsTtsError::ConnectTimeout {
                url,
                limit: limits.connect,
            });
        }
        Ok(Err(e)) => {
            return Err(WsTtsError::Connect {
                url,
                detail: e.to_string(),
            });
        }
        Ok(Ok((_, framed))) => framed.replace_codec(LimitedCodec::new(limits.max_message)),
    };
    // Written together and flushed once: small writes one after another would wait for the
    // peer's delayed ACK (Nagle), about 40 ms each.
    for m in request.messages {
        framed
            .feed(Message::Text(m.into()))
            .await
            .map_err(|e| WsTtsError::Dropped(e.to_string()))?;
    }
    framed
        .flush()
        .await
        .map_err(|e| WsTtsError::Dropped(e.to_string()))?;
    let mut pcm = PcmDecoder::default();
    // A fragmented message in progress (bounded by the codec's message limit).
    let mut fragments = BytesMut::new();
    loop {
        let next = tokio::select! {
            _ = tx.closed() => {
                cancel(&mut framed, vendor).await;
                return Ok(());
            }
            n = tokio::time::timeout(limits.idle, framed.next()) => n,
        };
        let frame = match next {
            Err(_) => return Err(WsTtsError::Stalled(Stalled(limits.idle))),
            Ok(None) => return Err(WsTtsError::Dropped("connection lost".into())),
            Ok(Some(Err(ReadError::TooBig(t)))) => return Err(t.into()),
            Ok(Some(Err(ReadError::Protocol(e)))) => {
                return Err(WsTtsError::Dropped(e.to_string()));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let text: Bytes = match frame {
            Frame::Text(b) | Frame::Binary(b) => b,
            Frame::Continuation(item) => {
                use actix_http::ws::Item;
                match item {
                    Item::FirstText(b) | Item::FirstBinary(b) => {
                        fragments.clear();
                        fragments.extend_from_slice(&b);
                        continue;
                    }
                    Item::Continue(b) => {
                        fragments.extend_from_slice(&b);
                        continue;
                    }
                    Item::Last(b) => {
                        fragments.extend_from_slice(&b);
                        fragments.split().freeze()
                    }
                }
            }
            Frame::Ping(p) => {
                let _ = framed.send(Message::Pong(p)).await;
                continue;
            }
            Frame::Pong(_) => continue,
            Frame::Close(reason) => {
                let why = reason
                    .map(|r| format!("close {:?} {}", r.code, r.description.unwrap_or_default()))
                    .unwrap_or_else(|| "closed".into());
                return Err(WsTtsError::Dropped(why));
            }
        };
        match vendor.parse(&text).map_err(WsTtsError::Vendor)? {
            Reply::Audio(b64) => {
                let samples = pcm.push(&b64)?;
                if !samples.is_empty() && tx.send(Ok(samples)).await.is_err() {
                    cancel(&mut framed, vendor).await;
                    return Ok(());
                }
            }
            Reply::Done => {
                let _ = tokio::time::timeout(
                    CLOSE_GRACE,
                    framed.send(Message::Close(Some(CloseCode::Normal.into()))),
                )
                .await;
                return Ok(());
            }
            Reply::Other => {}
        }
    }
}

/// Tells the vendor to stop (its cancel message, then a close frame), within [`CLOSE_GRACE`].
async fn cancel<S, V: Vendor>(framed: &mut S, vendor: &V)
where
    S: futures_util::Sink<Message> + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        if let Some(m) = vendor.cancel() {
            framed.send(Message::Text(m.into())).await.ok()?;
        }
        framed
            .send(Message::Close(Some(CloseReason {
                code: CloseCode::Normal,
                description: Some("cancelled".into()),
            })))
            .await
            .ok()
    })
    .await;
}

/// Base64 PCM messages to samples, carrying an odd byte over to the next message.
#[derive(Debug, Default)]
struct PcmDecoder {
    carry: Option<u8>,
}

impl PcmDecoder {
    fn push(&mut self, b64: &str) -> Result<Vec<i16>, WsTtsError> {
        let mut data = Vec::with_capacity(b64.len() * 3 / 4 + 1);
        data.extend(self.carry.take());
        base64::engine::general_purpose::STANDARD
            .decode_vec(b64, &mut data)
            .map_err(|e| WsTtsError::Vendor(format!("audio is not base64: {e}")))?;
        if data.len() % 2 == 1 {
            self.carry = data.pop();
        }
        Ok(data
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_bytes_carry_over_between_messages() {
        let b = |x: &[u8]| base64::engine::general_purpose::STANDARD.encode(x);
        let mut d = PcmDecoder::default();
        assert_eq!(d.push(&b(&[1, 0, 2])).unwrap(), vec![1]);
        assert_eq!(d.push(&b(&[0, 3, 0])).unwrap(), vec![2, 3]);
        assert!(d.push("not base64!").is_err());
    }

    #[test]
    fn the_shown_url_drops_the_query() {
        assert_eq!(shown_url("wss://h/p?model_id=m"), "wss://h/p");
    }
}
