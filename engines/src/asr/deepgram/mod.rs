//! Deepgram's streaming recognition: one WebSocket to `{base_url}/v1/listen` per utterance
//! (`Authorization: Token <key>`), the caller's audio sent as it arrives (16 kHz mono linear16),
//! interim `Results` reported as partials and the settled ones joined into the utterance's final.
//!
//! One connection per utterance, not one per call: an utterance starts a session and its end (our
//! endpointer's) sends `CloseStream`, so nothing carries over from one turn to the next and no
//! connection idles (with `KeepAlive`s) through the dialog app's answers. The setup (TCP, TLS and
//! the upgrade) overlaps with the caller speaking: audio waits in a bounded buffer
//! (`max_buffered_ms`) until the socket is open, so the setup delays the first partial, not the
//! final, unless it takes longer than the utterance.
//!
//! The final comes when the utterance ended and either Deepgram marks a result `speech_final`
//! (its own endpointing agrees) or it closes the stream after flushing (`Metadata`, then the
//! close). `KeepAlive` is sent when no audio went out for `keepalive` (a long pre-roll wait for
//! the connection does not count: nothing is open yet).
//!
//! Deadlines and bounds: the connection must open within `connect_timeout`; once the utterance
//! ended, the server must keep sending (`stream_idle`, [`DeepgramError::Stalled`], counted as
//! `Limit::AsrStreamIdle`); the recognizer's `asr.utterance_deadline_ms` bounds the rest and
//! drops the session (which drops the socket). Messages larger than `max_message_bytes` and
//! audio beyond `max_buffered_ms` fail the utterance; a message is refused by the length its
//! frames declare, whole or in fragments, before any of it is kept ([`LimitedCodec`];
//! [`DeepgramError::TooBig`], counted as `Limit::AsrMessageBytes`), and a fragmented one is read
//! once its last fragment came. A failure becomes `asr.error`; the call goes on and the next
//! utterance opens a new connection.

pub mod wire;

use super::{AsrEngine, AsrFactory, AsrStream, AsrUpdate, UtteranceSink};
use crate::idle::Stalled;
use crate::ws_codec::{LimitedCodec, ReadError};
use actix_http::ws::Item;
use awc::error::{SendRequestError, WsClientError, WsProtocolError as ProtocolError};
use awc::ws::{Frame, Message};
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use secrecy::{ExposeSecret, SecretString};
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use voicegate_core::session::{AsrOptions, InvalidOption};
use voicegate_core::ws_frame::TooBig;
use wire::{CLOSE_STREAM, KEEP_ALIVE, ListenParams, ServerMessage, Transcript};

/// The most keywords one session sends (configured ones and a session's prompt words).
pub const MAX_KEYWORDS: usize = 100;

/// Results waiting for the recognizer (it takes them as they come; this only bounds a burst).
const UPDATES_QUEUE: usize = 64;

/// Settings of the Deepgram engine. `Debug` shows everything but the key.
#[derive(Debug, Clone)]
pub struct DeepgramSettings {
    /// `wss://api.deepgram.com` (or `ws://` for a local stand-in).
    pub base_url: String,
    /// The API key, sent as `Authorization: Token <key>`; empty sends no header.
    pub api_key: SecretString,
    /// Model, e.g. `nova-3`; empty: the server's default.
    pub model: String,
    /// Language, e.g. `en-US`; empty: the server's default.
    pub language: String,
    /// Words to boost.
    pub keywords: Vec<String>,
    /// Deepgram's endpointing silence (ms); 0 turns it off.
    pub endpointing_ms: u32,
    /// Longest wait for the connection to open.
    pub connect_timeout: Duration,
    /// Longest quiet time from the server once the utterance ended.
    pub stream_idle: Duration,
    /// `KeepAlive` after this long without audio.
    pub keepalive: Duration,
    /// Most audio held while the connection opens or the server reads slowly, in ms.
    pub max_buffered_ms: u32,
    /// The largest message read from the server, by its declared length, a fragmented one
    /// counted whole (`asr.deepgram.max_message_bytes`): a `Results` message of a long
    /// utterance, with word timings, is a few kilobytes.
    pub max_message_bytes: usize,
    /// What the connection to the server trusts (`vendor_tls`).
    pub tls: crate::tls::ClientTls,
}

/// Why an utterance was not recognized.
#[derive(Debug, thiserror::Error)]
pub enum DeepgramError {
    /// The connection could not be opened.
    #[error("{url}: {reason}")]
    Connect {
        /// The endpoint (no key in it).
        url: String,
        /// The client's error.
        reason: String,
    },
    /// The server refused the upgrade (a bad key: 401, bad options: 400).
    #[error("{url}: HTTP {status}")]
    Status {
        /// The endpoint.
        url: String,
        /// The status.
        status: awc::http::StatusCode,
    },
    /// The connection did not open within `connect_timeout`.
    #[error("no connection within {} ms", .0.as_millis())]
    ConnectTimeout(Duration),
    /// The WebSocket broke (a bad frame, the socket closed under us).
    #[error("websocket: {0}")]
    Protocol(#[source] ProtocolError),
    /// The server announced a message larger than `max_message_bytes`, in one frame or in
    /// fragments; none of it was kept.
    #[error("{0}")]
    TooBig(#[source] TooBig),
    /// The server ended the stream before the utterance ended.
    #[error("the server closed the stream mid-utterance{}", .0.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Closed(Option<String>),
    /// The server reported an error.
    #[error("server error: {0}")]
    Server(String),
    /// The server sent something that is not its protocol.
    #[error(transparent)]
    BadMessage(#[from] wire::BadMessage),
    /// The server sent nothing for `stream_idle` after the utterance ended.
    #[error("the stream stalled: {0}")]
    Stalled(#[source] Stalled),
    /// More audio waited than `max_buffered_ms` (the connection opened too slowly, or the server
    /// read too slowly).
    #[error("more than {0} ms of audio waiting to be sent")]
    Overflow(u32),
}

/// The factory.
pub struct Deepgram {
    settings: DeepgramSettings,
}

impl Deepgram {
    /// A factory for `settings`.
    pub fn new(settings: DeepgramSettings) -> Self {
        Deepgram { settings }
    }
}

impl AsrFactory for Deepgram {
    fn for_call(&self) -> Rc<dyn AsrEngine> {
        Rc::new(DeepgramEngine {
            settings: Rc::new(self.settings.clone()),
        })
    }

    /// `language` and `model` replace the configured ones (the server refuses what it does not
    /// know, and that utterance gets `asr.error`); a prompt's words are added as keywords (up to
    /// [`MAX_KEYWORDS`] in all); there are no grammars.
    fn with_options(&self, o: &AsrOptions) -> Result<Rc<dyn AsrEngine>, InvalidOption> {
        if o.grammar.as_deref().is_some_and(|g| !g.is_empty()) {
            return Err(InvalidOption::new(
                "grammar",
                "the deepgram engine has no grammars (a prompt's words become keywords)",
            ));
        }
        let mut settings = self.settings.clone();
        if let Some(l) = &o.language {
            settings.language.clone_from(l);
        }
        if let Some(m) = &o.model {
            if m.is_empty() {
                return Err(InvalidOption::new("model", "empty"));
            }
            settings.model.clone_from(m);
        }
        if let Some(p) = &o.prompt {
            let words = p
                .split(|c: char| c.is_whitespace() || c == ',')
                .filter(|w| !w.is_empty());
            settings.keywords.extend(words.map(str::to_owned));
            if settings.keywords.len() > MAX_KEYWORDS {
                return Err(InvalidOption::new(
                    "prompt",
                    format!("more than {MAX_KEYWORDS} keywords with the configured ones"),
                ));
            }
        }
        Ok(Rc::new(DeepgramEngine {
            settings: Rc::new(settings),
        }))
    }
}

struct DeepgramEngine {
    settings: Rc<DeepgramSettings>,
}

/// The utterance's audio on its way to the session.
struct Sink {
    /// `None` once finished or overflowed: the session then closes the stream.
    tx: Option<mpsc::UnboundedSender<Bytes>>,
    /// Samples sent into `tx` and not yet taken by the session.
    queued: Rc<Cell<usize>>,
    /// The most samples `queued` may reach.
    max: usize,
    /// Set when the bound was hit: the session fails the utterance.
    overflowed: Rc<Cell<bool>>,
}

impl UtteranceSink for Sink {
    fn push(&mut self, pcm: &[i16]) {
        let Some(tx) = &self.tx else {
            return;
        };
        if self.queued.get() + pcm.len() > self.max {
            self.overflowed.set(true);
            self.tx = None;
            return;
        }
        let mut bytes = Vec::with_capacity(pcm.len() * 2);
        for s in pcm {
            bytes.extend_from_slice(&s.to_le_bytes());
        }
        if tx.send(Bytes::from(bytes)).is_ok() {
            self.queued.set(self.queued.get() + pcm.len());
        }
    }

    fn finish(self: Box<Self>) {
        // Dropping the sender tells the session the utterance ended.
    }
}

/// Aborts the session's task when the results stream is dropped (the recognizer gave up).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl AsrEngine for DeepgramEngine {
    fn name(&self) -> &'static str {
        "deepgram"
    }

    fn utterance(&self) -> (Box<dyn UtteranceSink>, AsrStream) {
        let (audio_tx, audio_rx) = mpsc::unbounded_channel();
        let (updates_tx, updates_rx) = mpsc::channel(UPDATES_QUEUE);
        let queued = Rc::new(Cell::new(0));
        let overflowed = Rc::new(Cell::new(false));
        let session = Session {
            settings: self.settings.clone(),
            audio: audio_rx,
            queued: queued.clone(),
            overflowed: overflowed.clone(),
            updates: updates_tx,
        };
        // The engine lives on the call's worker: a local task, aborted with the stream.
        let task = tokio::task::spawn_local(session.run());
        let stream = futures_util::stream::unfold(
            (updates_rx, AbortOnDrop(task)),
            |(mut rx, guard)| async move { rx.recv().await.map(|u| (u, (rx, guard))) },
        );
        let max = self.settings.max_buffered_ms as usize
            * voicegate_core::frame::SPEECH_RATE as usize
            / 1000;
        (
            Box::new(Sink {
                tx: Some(audio_tx),
                queued,
                max,
                overflowed,
            }),
            Box::pin(stream),
        )
    }
}

/// One utterance's connection.
struct Session {
    settings: Rc<DeepgramSettings>,
    audio: mpsc::UnboundedReceiver<Bytes>,
    queued: Rc<Cell<usize>>,
    overflowed: Rc<Cell<bool>>,
    updates: mpsc::Sender<AsrUpdate>,
}

impl Session {
    async fn run(mut self) {
        let updates = self.updates.clone();
        let last = match self.recognize().await {
            Ok((text, confidence)) => {
                AsrUpdate::Final(Some(text).filter(|t| !t.is_empty()), confidence)
            }
            Err(e) => AsrUpdate::Error(e.into()),
        };
        let _ = updates.send(last).await;
    }

    /// Streams the utterance and returns its text and the server's confidence in it.
    async fn recognize(&mut self) -> Result<(String, Option<f32>), DeepgramError> {
        let s = self.settings.clone();
        let url = wire::listen_url(
            &s.base_url,
            &ListenParams {
                model: &s.model,
                language: &s.language,
                keywords: &s.keywords,
                endpointing_ms: s.endpointing_ms,
            },
        );
        let shown_url = s.base_url.trim_end_matches('/').to_owned() + "/v1/listen";
        let client = awc::Client::builder()
            .connector(awc::Connector::new().rustls_0_23(s.tls.config()))
            .timeout(s.connect_timeout)
            .finish();
        let mut request = client.ws(url).max_frame_size(s.max_message_bytes);
        let key = s.api_key.expose_secret();
        if !key.is_empty() {
            request = request.header("Authorization", format!("Token {key}"));
        }
        let connecting = Instant::now();
        let framed = match tokio::time::timeout(s.connect_timeout, request.connect()).await {
            // awc's own timeout (the same) may fire first.
            Err(_) | Ok(Err(WsClientError::SendRequest(SendRequestError::Timeout))) => {
                return Err(DeepgramError::ConnectTimeout(s.connect_timeout));
            }
            Ok(Err(WsClientError::InvalidResponseStatus(status))) => {
                return Err(DeepgramError::Status {
                    url: shown_url,
                    status,
                });
            }
            Ok(Err(e)) => {
                return Err(DeepgramError::Connect {
                    url: shown_url,
                    reason: e.to_string(),
                });
            }
            // The codec that refuses a message by its declared length, before keeping any of
            // it (awc's own buffers a frame whole before it checks its size).
            Ok(Ok((_, framed))) => framed.replace_codec(LimitedCodec::new(s.max_message_bytes)),
        };
        // The setup a connection per utterance costs (BENCHMARKS.md quotes it).
        tracing::debug!(
            setup_ms = connecting.elapsed().as_secs_f64() * 1000.0,
            "deepgram connected"
        );
        if self.overflowed.get() {
            // The connection took longer than the buffer holds: the utterance's start is lost.
            return Err(DeepgramError::Overflow(s.max_buffered_ms));
        }
        let (mut out, mut input) = framed.split();
        let mut transcript = Transcript::default();
        // Our endpointer ended the utterance and `CloseStream` went out.
        let mut ended = false;
        // Once ended: the server must send something by then.
        let mut idle_deadline = Instant::now() + s.stream_idle;
        let mut keepalive_at = Instant::now() + s.keepalive;
        // A fragmented text message in progress (RFC 6455 §5.4: awc hands the fragments over
        // one by one); bounded by the codec, which counts a message's fragments together.
        // `None` between messages and during a fragmented binary one (which is not read).
        let mut fragments: Option<BytesMut> = None;
        loop {
            tokio::select! {
                chunk = self.audio.recv(), if !ended => match chunk {
                    Some(bytes) => {
                        self.queued.set(self.queued.get().saturating_sub(bytes.len() / 2));
                        out.send(Message::Binary(bytes)).await.map_err(DeepgramError::Protocol)?;
                        keepalive_at = Instant::now() + s.keepalive;
                    }
                    None => {
                        if self.overflowed.get() {
                            let _ = out.send(Message::Close(None)).await;
                            return Err(DeepgramError::Overflow(s.max_buffered_ms));
                        }
                        out.send(Message::Text(CLOSE_STREAM.into())).await.map_err(DeepgramError::Protocol)?;
                        ended = true;
                        idle_deadline = Instant::now() + s.stream_idle;
                    }
                },
                () = tokio::time::sleep_until(keepalive_at), if !ended => {
                    out.send(Message::Text(KEEP_ALIVE.into())).await.map_err(DeepgramError::Protocol)?;
                    keepalive_at = Instant::now() + s.keepalive;
                }
                () = tokio::time::sleep_until(idle_deadline), if ended => {
                    return Err(DeepgramError::Stalled(Stalled(s.stream_idle)));
                }
                frame = input.next() => {
                    // Keep-alives are not the server's answer: a stream that only pings after
                    // the utterance ended still stalls.
                    if !matches!(frame, Some(Ok(Frame::Ping(_) | Frame::Pong(_)))) {
                        idle_deadline = Instant::now() + s.stream_idle;
                    }
                    let frame = match frame {
                        None if ended => return Ok(settled(&transcript)),
                        None => return Err(DeepgramError::Closed(None)),
                        Some(Err(ReadError::TooBig(t))) => return Err(DeepgramError::TooBig(t)),
                        Some(Err(ReadError::Protocol(e))) => return Err(DeepgramError::Protocol(e)),
                        Some(Ok(frame)) => frame,
                    };
                    let text: Bytes = match frame {
                        Frame::Text(text) => text,
                        // The codec keeps the fragments in order: a first, then continuations,
                        // the last with FIN (it refuses anything else).
                        Frame::Continuation(Item::FirstText(b)) => {
                            fragments = Some(BytesMut::from(&b[..]));
                            continue;
                        }
                        Frame::Continuation(Item::FirstBinary(_)) => {
                            fragments = None;
                            continue;
                        }
                        Frame::Continuation(Item::Continue(b)) => {
                            if let Some(f) = &mut fragments {
                                f.extend_from_slice(&b);
                            }
                            continue;
                        }
                        Frame::Continuation(Item::Last(b)) => {
                            let Some(mut f) = fragments.take() else {
                                continue; // the end of a binary message
                            };
                            f.extend_from_slice(&b);
                            f.freeze()
                        }
                        Frame::Close(reason) => {
                            if ended {
                                return Ok(settled(&transcript));
                            }
                            return Err(DeepgramError::Closed(reason.map(|r| {
                                let code: u16 = r.code.into();
                                match r.description {
                                    Some(d) => format!("{code} {d}"),
                                    None => code.to_string(),
                                }
                            })));
                        }
                        Frame::Ping(p) => {
                            out.send(Message::Pong(p)).await.map_err(DeepgramError::Protocol)?;
                            continue;
                        }
                        // Binary messages and pongs carry nothing voicegate reads.
                        Frame::Binary(_) | Frame::Pong(_) => continue,
                    };
                    let text = std::str::from_utf8(&text).unwrap_or("");
                    match wire::parse(text)? {
                        ServerMessage::Results { transcript: t, confidence, is_final, speech_final } => {
                            let so_far = transcript.update(&t, confidence, is_final);
                            if ended && is_final && speech_final {
                                let _ = out.send(Message::Close(None)).await;
                                return Ok(settled(&transcript));
                            }
                            if !so_far.is_empty() {
                                let c = transcript.confidence(true);
                                let _ = self.updates.send(AsrUpdate::Partial(so_far, c)).await;
                            }
                        }
                        ServerMessage::Metadata if ended => {
                            let _ = out.send(Message::Close(None)).await;
                            return Ok(settled(&transcript));
                        }
                        ServerMessage::Error(e) => return Err(DeepgramError::Server(e)),
                        ServerMessage::Metadata | ServerMessage::Other => {}
                    }
                }
            }
        }
    }
}

/// The utterance's settled text and its confidence.
fn settled(t: &Transcript) -> (String, Option<f32>) {
    (t.text(false), t.confidence(false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use voicegate_testkit::deepgram_server::{Behaviour, DeepgramStandIn};

    fn settings() -> DeepgramSettings {
        DeepgramSettings {
            base_url: "ws://127.0.0.1:9".into(),
            tls: crate::tls::ClientTls::public(),
            api_key: "dg-secret".into(),
            model: "nova-3".into(),
            language: "en-US".into(),
            keywords: vec![],
            endpointing_ms: 300,
            connect_timeout: Duration::from_millis(500),
            stream_idle: Duration::from_millis(500),
            keepalive: Duration::from_secs(5),
            max_buffered_ms: 100,
            max_message_bytes: 256 * 1024,
        }
    }

    #[test]
    fn debug_hides_the_key_and_errors_name_the_engine() {
        let shown = format!("{:?}", settings());
        assert!(!shown.contains("dg-secret"), "{shown}");
        assert!(shown.contains("nova-3"), "{shown}");
        let stalled: super::super::AsrError =
            DeepgramError::Stalled(Stalled(Duration::from_millis(500))).into();
        assert_eq!(
            stalled.to_string(),
            "deepgram: the stream stalled: nothing received for 500 ms"
        );
        assert!(stalled.stalled() && !stalled.is_fatal() && !stalled.refused());
        let closed: super::super::AsrError =
            DeepgramError::Closed(Some("1011 NET-0001".into())).into();
        assert_eq!(
            closed.to_string(),
            "deepgram: the server closed the stream mid-utterance: 1011 NET-0001"
        );
    }

    /// The updates of one utterance of `ms` of audio to `dg`, reading messages of at most
    /// `max_message_bytes`.
    async fn utterance(dg: &DeepgramStandIn, ms: u32, max_message_bytes: usize) -> Vec<AsrUpdate> {
        use futures_util::StreamExt;
        let engine = Deepgram::new(DeepgramSettings {
            base_url: dg.base_url(),
            connect_timeout: Duration::from_secs(2),
            stream_idle: Duration::from_secs(2),
            max_buffered_ms: 5000,
            max_message_bytes,
            ..settings()
        })
        .for_call();
        let (mut sink, results) = engine.utterance();
        for _ in 0..ms / 20 {
            sink.push(&[100; 320]);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        sink.finish();
        tokio::time::timeout(Duration::from_secs(10), results.collect())
            .await
            .expect("the utterance's results end")
    }

    #[actix_rt::test]
    async fn a_final_result_sent_in_fragments_is_read_whole() {
        let dg = DeepgramStandIn::start(Behaviour {
            final_fragments: 3,
            ..Behaviour::hears("turn on the kitchen lights")
        })
        .await;
        let updates = utterance(&dg, 1000, 4096).await;
        assert!(
            matches!(updates.last(), Some(AsrUpdate::Final(Some(t), Some(_))) if t == "turn on the kitchen lights"),
            "{updates:?}"
        );
    }

    #[actix_rt::test]
    async fn a_message_over_the_limit_fails_the_utterance_even_in_small_fragments() {
        // Each fragment is well under the configured limit; the message they make is over it.
        let dg = DeepgramStandIn::start(Behaviour {
            final_fragments: 8,
            final_padding: 4096,
            ..Behaviour::hears("turn on the kitchen lights")
        })
        .await;
        let updates = utterance(&dg, 1000, 4096).await;
        let Some(AsrUpdate::Error(e)) = updates.last() else {
            panic!("{updates:?}");
        };
        assert!(e.to_string().ends_with("(limit 4096)"), "{e}");
        assert_eq!(e.limit(), Some(crate::asr::AsrLimit::MessageBytes));
        // The same message within a larger limit is read.
        let updates = utterance(&dg, 1000, 16 * 1024).await;
        assert!(
            matches!(updates.last(), Some(AsrUpdate::Final(Some(t), _)) if t == "turn on the kitchen lights"),
            "{updates:?}"
        );
    }

    #[test]
    fn session_options_replace_language_and_model_and_add_keywords() {
        let f = Deepgram::new(settings());
        let grammar = AsrOptions {
            grammar: Some("digits".into()),
            ..AsrOptions::default()
        };
        assert_eq!(f.with_options(&grammar).err().unwrap().option, "grammar");
        let empty_model = AsrOptions {
            model: Some(String::new()),
            ..AsrOptions::default()
        };
        assert_eq!(f.with_options(&empty_model).err().unwrap().option, "model");
        let many = AsrOptions {
            prompt: Some("w ".repeat(MAX_KEYWORDS + 1)),
            ..AsrOptions::default()
        };
        assert_eq!(f.with_options(&many).err().unwrap().option, "prompt");
        let ok = AsrOptions {
            language: Some("de".into()),
            model: Some("nova-2".into()),
            prompt: Some("voicegate, Opus".into()),
            grammar: Some(String::new()),
        };
        assert!(f.with_options(&ok).is_ok());
    }
}
