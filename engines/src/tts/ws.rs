//! The WebSocket plumbing the streaming speech engines share (`elevenlabs`, `cartesia`).
//!
//! **One vendor stream per utterance.** An utterance's segments are synthesized through one
//! [`ContextUtterance`]: its first segment spawns a task on the call's worker that connects and
//! sends the vendor's opening messages; every segment's text is sent on that connection as the
//! player asks for it, each followed by the vendor's flush, so the vendor speaks the utterance in
//! one context (prosody carries from one segment to the next) and starts each segment's audio at
//! once. The vendor's audio is cut back into segments where the vendor says a segment ends
//! ([`Reply::Audio::ends`] from ElevenLabs' character alignment, [`Reply::SegmentDone`] from
//! Cartesia's `flush_done`), or where the vendor goes quiet after speaking a segment's text
//! ([`Wire::quiet`], [`TAIL_QUIET`]), so the player still knows which text every sample speaks
//! (`tts.interrupt`'s `played_text`). Each segment's audio goes to its own [`SynthStream`]
//! through a bounded channel ([`CHANNEL_CHUNKS`]); the socket is not read while the oldest
//! segment's channel is full.
//!
//! **Ends.** When the utterance is over (its handle is dropped), the task sends the vendor's end
//! of input at once, takes what is still owed, and closes at the vendor's end marker (which ends
//! every segment still waiting). If segments are still in flight and all of them were dropped
//! (`tts.interrupt`, a barge-in, the call's end), it sends the vendor's cancel message and a
//! close frame ([`CLOSE_GRACE`] at most) at once. A
//! vendor whose contexts expire when idle ([`Wire::linger`]: Cartesia's expire a second after
//! their last audio) gets the context ended after that quiet time, and the next segment opens a
//! new context on the same connection.
//!
//! **Connections opened ahead.** A new stream waits for its connection (TCP, TLS, the upgrade: two
//! to four round trips to the vendor) before its first text goes out. The call's engine can open
//! one ahead of need ([`Preconnect::prepare`]: when the call's media connects, for a greeting; when
//! the caller starts and stops speaking, so it overlaps the turn, its recognition and the dialog
//! app's thinking; and when a stream starts, for the utterance after it); the next stream takes it,
//! or waits for it if it is still connecting. One waits at most [`Limits::preconnect`] for a stream
//! (`tts.preconnect_ms`, below the vendors' own idle limits), then is closed, as it is when the
//! vendor closes it first or the engine is replaced or dropped; a call holds at most one.
//! Process-wide counts of how they ended are in [`preconnects`].
//!
//! Deadlines and bounds: the connection (TCP, TLS, upgrade) must be up within `connect`, counted
//! from when the stream began waiting (so waiting for one opened ahead that then fails comes out
//! of its own attempt's time, and an utterance waits for a connection at most `connect`); while a
//! segment waits for audio (or the end marker), a quiet socket (no message for `idle`,
//! `tts.stream_idle_timeout_ms`) fails it as [`WsTtsError::Stalled`]; a message is refused by
//! its declared length before its payload is read (`max_message`), so a vendor cannot make the
//! call hold more than one message. A vendor that closes or drops the connection before the
//! audio it owes fails the segments waiting ([`WsTtsError::Dropped`]): that utterance ends
//! `ok: false`, the call goes on.
//!
//! The vendor's wire format stays in its engine ([`Wire`]): this file knows WebSocket frames
//! and segments, not JSON.

use super::{SynthStream, TtsError, UtteranceSynth};
use crate::idle::Stalled;
use crate::ws_codec::{LimitedCodec, ReadError};
use awc::ws::{CloseCode, CloseReason, Frame, Message};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use voicegate_core::ws_frame::TooBig;

/// PCM chunks a synthesis may hold between the socket and the speaker: the socket is not read
/// while the channel is full, so a vendor faster than the call never grows memory.
pub const CHANNEL_CHUNKS: usize = 8;

/// Longest wait for the cancel message and the close frame when a synthesis is dropped.
pub const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// How long the vendor must send nothing after audio, while the utterance takes text, before
/// the segments whose text it has spoken end ([`Wire::quiet`]). A vendor sends what a flush asks
/// for at once, faster than real time, so this is longer than the gaps between its chunks, and
/// short beside the audio already handed on; at most half the idle limit.
pub const TAIL_QUIET: Duration = Duration::from_millis(250);

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
    /// Raw 16-bit little-endian PCM, base64-encoded on the wire, for the oldest segment still
    /// waiting. `ends`: where segments end within it, in ms from its start, in order
    /// ([`END_OF_CHUNK`]: at its end); what follows the last end belongs to the next segment.
    Audio {
        /// The PCM.
        b64: String,
        /// Segment ends within it.
        ends: Vec<u32>,
    },
    /// The oldest waiting segment's audio is complete.
    SegmentDone,
    /// The context is complete (after [`Wire::finish`]): every segment still waiting ends.
    Done,
    /// Nothing for us (timestamps, another context's messages).
    Other,
}

/// In [`Reply::Audio::ends`]: the segment ends with this chunk.
pub const END_OF_CHUNK: u32 = u32::MAX;

/// A vendor's wire format for one stream of contexts.
pub trait Wire: 'static {
    /// Messages sent once the connection is up, before the first segment.
    fn open(&mut self) -> Vec<String>;
    /// Messages carrying one segment's text, flushed so its audio starts now.
    fn segment(&mut self, text: &str) -> Vec<String>;
    /// Messages ending the input: the vendor sends what is left, then its end marker
    /// ([`Reply::Done`]).
    fn finish(&mut self) -> Vec<String>;
    /// After this long with no segment waiting, the context is ended ([`Wire::finish`], without
    /// waiting for its end marker) and [`Wire::renew`] starts the next; `None`: one context for
    /// the whole connection.
    fn linger(&self) -> Option<Duration>;
    /// Starts a new context on the same connection (after a [`Wire::linger`]).
    fn renew(&mut self);
    /// What to send when the context is dropped before its end (before the close frame).
    fn cancel(&self) -> Option<String>;
    /// The vendor sent nothing for [`TAIL_QUIET`] after audio, while the utterance takes text:
    /// how many of the oldest waiting segments end now. A vendor that places segment ends only
    /// where the next segment's audio starts (ElevenLabs) keeps a segment whose text it has
    /// spoken waiting for the rest of its audio; this ends it when no later segment's audio
    /// comes, so a streamed segment does not wait for the next text. None by default.
    fn quiet(&mut self) -> usize {
        0
    }
    /// Reads one message; `Err` is the vendor's error, quoted.
    fn parse(&mut self, text: &[u8]) -> Result<Reply, String>;
}

/// Where to connect.
#[derive(Clone)]
pub struct Request {
    /// `ws://` or `wss://` URL, query included.
    pub url: String,
    /// Extra headers (the API key among them).
    pub headers: Vec<(&'static str, String)>,
    /// What the connection trusts (`vendor_tls`).
    pub tls: crate::tls::ClientTls,
}

/// Deadlines and bounds of one stream.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest wait for the connection.
    pub connect: Duration,
    /// Longest quiet time while audio is owed.
    pub idle: Duration,
    /// Largest vendor message, bytes.
    pub max_message: usize,
    /// The PCM rate (to place [`Reply::Audio::ends`]).
    pub sample_rate: u32,
    /// Longest a connection opened ahead waits for a stream ([`Preconnect`]); zero: none are.
    pub preconnect: Duration,
}

/// Opens a vendor stream: where to connect and the wire for it.
pub type Opener = Box<dyn Fn() -> (Request, Box<dyn Wire>)>;

/// One utterance's segments through one vendor stream (see the module doc). Dropping it says
/// no segment follows.
pub struct ContextUtterance {
    open: Opener,
    limits: Limits,
    wrap: fn(WsTtsError) -> TtsError,
    /// The engine's connection opened ahead, taken by the stream this utterance starts.
    ahead: Rc<Preconnect>,
    /// The running stream's segment queue; `None` before the first segment.
    segments: Option<mpsc::UnboundedSender<Segment>>,
}

impl ContextUtterance {
    /// An utterance whose stream `open` describes; `wrap` names the engine in errors; its
    /// stream takes the connection `ahead` holds, if one is there.
    pub fn new(
        open: Opener,
        limits: Limits,
        wrap: fn(WsTtsError) -> TtsError,
        ahead: Rc<Preconnect>,
    ) -> Self {
        ContextUtterance {
            open,
            limits,
            wrap,
            ahead,
            segments: None,
        }
    }
}

/// A segment for the stream: its text and where its audio goes.
struct Segment {
    text: String,
    tx: Tx,
}

impl UtteranceSynth for ContextUtterance {
    fn segment(&mut self, text: &str) -> SynthStream {
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let mut segment = Segment {
            text: text.to_owned(),
            tx,
        };
        // The running stream takes it, unless it has ended (the vendor closed it, or it failed):
        // then a new one does.
        if let Some(queue) = &self.segments {
            match queue.send(segment) {
                Ok(()) => return receiver_stream(rx),
                Err(mpsc::error::SendError(s)) => segment = s,
            }
        }
        // The queue is bounded by the player: it asks for a few segments ahead at most.
        let (queue, segments) = mpsc::unbounded_channel();
        let _ = queue.send(segment);
        self.segments = Some(queue);
        let (request, wire) = (self.open)();
        let (limits, wrap) = (self.limits, self.wrap);
        let ahead = self.ahead.take();
        // The next utterance's connection opens while this one speaks.
        self.ahead.prepare(|| request.clone(), limits);
        // Runs on the call's worker (a `LocalSet`), like every engine.
        tokio::task::spawn_local(async move {
            let mut stream = Stream {
                wire,
                limits,
                segments,
                waiting: VecDeque::new(),
                pcm: PcmDecoder::default(),
            };
            match stream.run(request, ahead).await {
                Err(e) => stream.fail(e, wrap).await,
                // The vendor closed an idle connection: a segment sent to this stream meanwhile
                // fails (the next one opens a new stream).
                Ok(()) => {
                    stream
                        .fail(
                            WsTtsError::Dropped("the vendor closed the connection".into()),
                            wrap,
                        )
                        .await
                }
            }
        });
        receiver_stream(rx)
    }
}

fn receiver_stream(rx: mpsc::Receiver<Result<Vec<i16>, TtsError>>) -> SynthStream {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// One of the engines' own message structs as JSON text.
pub fn json<T: serde::Serialize>(message: &T) -> String {
    // Invariant: the engines' messages hold only strings, numbers, booleans and nested structs.
    serde_json::to_string(message).expect("plain structs serialize")
}

type Tx = mpsc::Sender<Result<Vec<i16>, TtsError>>;

/// The endpoint for messages: the URL without its query (which may name the voice and model,
/// not secrets, but is long).
fn shown_url(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_owned()
}

/// How often a stream whose utterance is over looks whether its segments were all dropped.
const DROP_CHECK: Duration = Duration::from_millis(20);

/// The task's state.
struct Stream {
    wire: Box<dyn Wire>,
    limits: Limits,
    segments: mpsc::UnboundedReceiver<Segment>,
    /// Segments sent to the vendor whose audio has not all come, oldest first.
    waiting: VecDeque<Tx>,
    pcm: PcmDecoder,
}

/// Where the stream is.
#[derive(PartialEq)]
enum Phase {
    /// Segments may come.
    Open,
    /// The utterance is over: the end of input goes out next.
    Closing,
    /// The end of input was sent; waiting for what is owed and the end marker.
    Finishing,
}

impl Stream {
    async fn run(&mut self, request: Request, ahead: Option<Ahead>) -> Result<(), WsTtsError> {
        let limits = self.limits;
        // `limits.connect` bounds the whole wait for a connection: one opened ahead that fails
        // after this stream began waiting for it leaves its own attempt only the rest.
        let began = Instant::now();
        let taken = match ahead {
            Some(a) => a.claim().await,
            None => None,
        };
        let mut framed = match taken {
            Some(framed) => framed,
            None => {
                connect(
                    &request,
                    limits,
                    limits.connect.saturating_sub(began.elapsed()),
                )
                .await?
            }
        };
        for m in self.wire.open() {
            framed
                .feed(Message::Text(m.into()))
                .await
                .map_err(dropped)?;
        }
        let mut phase = Phase::Open;
        // When the last message came (the idle limit counts from it while audio is owed), and
        // since when the context has had no segment waiting (for the linger; `None` once it
        // was ended or while a segment waits).
        let mut last_message = Instant::now();
        let mut quiet_since = None;
        // Audio came, and the vendor has not been quiet for `TAIL_QUIET` since.
        let mut tail = false;
        let tail_quiet = TAIL_QUIET.min(limits.idle / 2);
        let mut sent_any = false;
        let linger = self.wire.linger();
        // A fragmented message in progress (bounded by the codec's message limit).
        let mut fragments = BytesMut::new();
        loop {
            let owed = !self.waiting.is_empty() || phase == Phase::Finishing;
            let dropped_all =
                !self.waiting.is_empty() && self.waiting.iter().all(|t| t.is_closed());
            if phase != Phase::Open && dropped_all {
                // The utterance is over and nobody wants the audio still owed: cancel it.
                if let Some(m) = self.wire.cancel() {
                    let _ = tokio::time::timeout(CLOSE_GRACE, framed.send(Message::Text(m.into())))
                        .await;
                }
                close(&mut framed, "cancelled").await;
                return Ok(());
            }
            if phase == Phase::Closing {
                if !sent_any {
                    // Dropped before any text was sent: nothing to end at the vendor.
                    close(&mut framed, "cancelled").await;
                    return Ok(());
                }
                // No segment follows: end the input now. The vendor sends what it owes, then
                // its end marker, which ends every segment still waiting (so the last one does
                // not depend on the vendor marking its end).
                for m in self.wire.finish() {
                    framed
                        .feed(Message::Text(m.into()))
                        .await
                        .map_err(dropped)?;
                }
                framed.flush().await.map_err(dropped)?;
                phase = Phase::Finishing;
                if self.waiting.is_empty() {
                    last_message = Instant::now();
                }
                continue;
            }
            let idle_at = last_message + limits.idle;
            let linger_at = linger.zip(quiet_since).map(|(l, q)| q + l);
            tokio::select! {
                segment = self.segments.recv(), if phase == Phase::Open => match segment {
                    Some(Segment { tx, .. }) if tx.is_closed() && self.waiting.is_empty() => {
                        // Dropped before it was sent (an interrupt while connecting).
                    }
                    Some(Segment { text, tx }) => {
                        // Written together and flushed once: small writes one after another
                        // would wait for the peer's delayed ACK (Nagle), about 40 ms each.
                        for m in self.wire.segment(&text) {
                            framed.feed(Message::Text(m.into())).await.map_err(dropped)?;
                        }
                        framed.flush().await.map_err(dropped)?;
                        if self.waiting.is_empty() {
                            last_message = Instant::now();
                        }
                        self.waiting.push_back(tx);
                        sent_any = true;
                        quiet_since = None;
                    }
                    None => phase = Phase::Closing,
                },
                _ = tokio::time::sleep_until(idle_at), if owed => {
                    return Err(WsTtsError::Stalled(Stalled(limits.idle)));
                }
                _ = async { tokio::time::sleep_until(linger_at.expect("guarded")).await },
                    if phase == Phase::Open && !owed && linger_at.is_some() && sent_any => {
                    // The vendor's context would expire: end it, and start the next one for
                    // whatever segment comes.
                    for m in self.wire.finish() {
                        framed.feed(Message::Text(m.into())).await.map_err(dropped)?;
                    }
                    framed.flush().await.map_err(dropped)?;
                    self.wire.renew();
                    quiet_since = None;
                }
                _ = tokio::time::sleep_until(last_message + tail_quiet),
                    if tail && phase == Phase::Open && !self.waiting.is_empty() => {
                    // The vendor has generated what it was asked for: the segments whose text it
                    // spoke are complete. (Once the input is ended, its end marker ends them.)
                    tail = false;
                    let n = self.wire.quiet().min(self.waiting.len());
                    self.waiting.drain(..n);
                    if self.waiting.is_empty() && quiet_since.is_none() {
                        quiet_since = Some(Instant::now());
                    }
                }
                _ = tokio::time::sleep(DROP_CHECK), if phase == Phase::Finishing && !self.waiting.is_empty() => {}
                next = framed.next() => {
                    let frame = match next {
                        None => return self.ended("connection lost".into(), phase),
                        Some(Err(ReadError::TooBig(t))) => return Err(t.into()),
                        Some(Err(ReadError::Protocol(e))) => {
                            return Err(WsTtsError::Dropped(e.to_string()));
                        }
                        Some(Ok(frame)) => frame,
                    };
                    if !matches!(frame, Frame::Ping(_) | Frame::Pong(_)) {
                        last_message = Instant::now();
                    }
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
                        // Keep-alives are not the vendor's answer: a stalled generation
                        // whose connection pings must still hit the idle limit.
                        Frame::Ping(p) => {
                            let _ = framed.send(Message::Pong(p)).await;
                            continue;
                        }
                        Frame::Pong(_) => continue,
                        Frame::Close(reason) => {
                            let why = reason
                                .map(|r| {
                                    format!(
                                        "close {:?} {}",
                                        r.code,
                                        r.description.unwrap_or_default()
                                    )
                                })
                                .unwrap_or_else(|| "closed".into());
                            return self.ended(why, phase);
                        }
                    };
                    match self.wire.parse(&text).map_err(WsTtsError::Vendor)? {
                        Reply::Audio { b64, ends } => {
                            self.audio(&b64, &ends).await?;
                            tail = true;
                        }
                        Reply::SegmentDone => {
                            self.waiting.pop_front();
                        }
                        Reply::Done => {
                            // Whatever still waits ends here (its audio is complete).
                            self.waiting.clear();
                            if phase == Phase::Finishing {
                                let _ = tokio::time::timeout(
                                    CLOSE_GRACE,
                                    framed.send(Message::Close(Some(CloseCode::Normal.into()))),
                                )
                                .await;
                                return Ok(());
                            }
                        }
                        Reply::Other => {}
                    }
                    if self.waiting.is_empty() && phase == Phase::Open && quiet_since.is_none() {
                        quiet_since = Some(Instant::now());
                    }
                }
            }
        }
    }

    /// Hands a chunk's samples to the segments it belongs to.
    async fn audio(&mut self, b64: &str, ends: &[u32]) -> Result<(), WsTtsError> {
        let samples = self.pcm.push(b64)?;
        let mut from = 0;
        for &end in ends {
            let at = if end == END_OF_CHUNK {
                samples.len()
            } else {
                (end as usize * self.limits.sample_rate as usize / 1000).clamp(from, samples.len())
            };
            self.deliver(&samples[from..at]).await;
            self.waiting.pop_front();
            from = at;
        }
        self.deliver(&samples[from..]).await;
        Ok(())
    }

    /// Sends samples to the oldest waiting segment (dropped if it was cancelled, or if the
    /// vendor sent more than it owed).
    async fn deliver(&mut self, samples: &[i16]) {
        if samples.is_empty() {
            return;
        }
        if let Some(tx) = self.waiting.front()
            && !tx.is_closed()
        {
            let _ = tx.send(Ok(samples.to_vec())).await;
        }
    }

    /// The vendor closed or dropped the connection: an error if audio was owed, else the stream
    /// just ends (a vendor closing an idle connection) and the next segment opens another.
    fn ended(&self, why: String, phase: Phase) -> Result<(), WsTtsError> {
        if self.waiting.is_empty() && phase != Phase::Finishing {
            Ok(())
        } else {
            Err(WsTtsError::Dropped(why))
        }
    }

    /// Fails the segments waiting and those queued: the oldest gets the error, the others
    /// that it came first.
    async fn fail(&mut self, e: WsTtsError, wrap: fn(WsTtsError) -> TtsError) {
        self.segments.close();
        let detail = e.to_string();
        let mut first = Some(e);
        let queued = std::iter::from_fn(|| self.segments.try_recv().ok().map(|s| s.tx));
        let all: Vec<Tx> = self.waiting.drain(..).chain(queued).collect();
        for tx in all {
            let e = first.take().unwrap_or_else(|| {
                WsTtsError::Dropped(format!("an earlier segment failed: {detail}"))
            });
            let _ = tx.send(Err(wrap(e))).await;
        }
    }
}

/// One stream's connection, upgraded, with the message limit.
type Conn = actix_codec::Framed<awc::BoxedSocket, LimitedCodec>;

/// Connects and upgrades within `budget` (at most `limits.connect`, which the error names).
async fn connect(request: &Request, limits: Limits, budget: Duration) -> Result<Conn, WsTtsError> {
    let url = shown_url(&request.url);
    if budget.is_zero() {
        return Err(WsTtsError::ConnectTimeout {
            url,
            limit: limits.connect,
        });
    }
    let client = awc::Client::builder()
        .connector(awc::Connector::new().rustls_0_23(request.tls.config()))
        .timeout(budget)
        .finish();
    let mut ws = client
        .ws(request.url.as_str())
        .max_frame_size(limits.max_message);
    for (name, value) in &request.headers {
        ws = ws.header(*name, value.as_str());
    }
    match tokio::time::timeout(budget, ws.connect()).await {
        Err(_) => Err(WsTtsError::ConnectTimeout {
            url,
            limit: limits.connect,
        }),
        Ok(Err(e)) => Err(WsTtsError::Connect {
            url,
            detail: e.to_string(),
        }),
        Ok(Ok((_, framed))) => Ok(framed.replace_codec(LimitedCodec::new(limits.max_message))),
    }
}

/// How connections opened ahead ended, in this process (for the metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Preconnects {
    /// Taken by a stream.
    pub used: u64,
    /// Closed unused: waited [`Limits::preconnect`], or the engine was replaced or dropped
    /// (another voice, the call's end), or the vendor closed it first.
    pub unused: u64,
    /// Failed to connect.
    pub failed: u64,
}

static PRECONNECTS_USED: AtomicU64 = AtomicU64::new(0);
static PRECONNECTS_UNUSED: AtomicU64 = AtomicU64::new(0);
static PRECONNECTS_FAILED: AtomicU64 = AtomicU64::new(0);

/// How connections opened ahead ended so far, in this process.
pub fn preconnects() -> Preconnects {
    Preconnects {
        used: PRECONNECTS_USED.load(Ordering::Relaxed),
        unused: PRECONNECTS_UNUSED.load(Ordering::Relaxed),
        failed: PRECONNECTS_FAILED.load(Ordering::Relaxed),
    }
}

/// A call engine's connection opened ahead of the stream that will use it (see the module
/// doc). Lives on the call's worker; dropping it closes the connection it holds.
#[derive(Default)]
pub struct Preconnect {
    slot: RefCell<Option<Ahead>>,
}

/// A connection opened ahead: its task holds it until a stream claims it.
struct Ahead {
    /// When connecting began.
    since: Instant,
    /// The task's end of the claim: a stream sends where the connection should go.
    claim: oneshot::Sender<oneshot::Sender<Conn>>,
}

impl Preconnect {
    /// Opens a connection for the next stream, unless one is held that will last (younger than
    /// half of `limits.preconnect`); with `limits.preconnect` zero, nothing. Runs on the call's
    /// worker and never blocks: the connection is made by a task there.
    pub fn prepare(&self, request: impl FnOnce() -> Request, limits: Limits) {
        if limits.preconnect.is_zero() {
            return;
        }
        let mut slot = self.slot.borrow_mut();
        if slot
            .as_ref()
            .is_some_and(|a| !a.claim.is_closed() && a.since.elapsed() < limits.preconnect / 2)
        {
            return;
        }
        let (claim, claims) = oneshot::channel();
        tokio::task::spawn_local(hold_ahead(request(), limits, claims));
        // The one it replaces, if any, sees its claim dropped and closes.
        *slot = Some(Ahead {
            since: Instant::now(),
            claim,
        });
    }

    /// The connection held, if its task still holds or makes it.
    fn take(&self) -> Option<Ahead> {
        self.slot
            .borrow_mut()
            .take()
            .filter(|a| !a.claim.is_closed())
    }
}

impl Ahead {
    /// The connection, once made (waiting for it if it is still connecting); `None` if it
    /// failed, expired or was closed meanwhile: the stream then connects itself.
    async fn claim(self) -> Option<Conn> {
        let (to, conn) = oneshot::channel();
        self.claim.send(to).ok()?;
        conn.await.ok()
    }
}

/// The task of a connection opened ahead: connects, then holds the connection until a stream
/// claims it, it has waited `limits.preconnect`, the vendor closes it, or nobody can claim it.
async fn hold_ahead(
    request: Request,
    limits: Limits,
    mut claims: oneshot::Receiver<oneshot::Sender<Conn>>,
) {
    let deadline = Instant::now() + limits.preconnect;
    let connecting = connect(&request, limits, limits.connect);
    tokio::pin!(connecting);
    // A stream that claimed it while it was connecting.
    let mut claimed = None;
    let made = loop {
        tokio::select! {
            made = &mut connecting => break made,
            to = &mut claims, if claimed.is_none() => match to {
                Ok(to) => claimed = Some(to),
                // Replaced or dropped before it connected: the connection attempt is dropped.
                Err(_) => {
                    PRECONNECTS_UNUSED.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
        }
    };
    let mut framed = match made {
        Ok(framed) => framed,
        Err(e) => {
            // A stream waiting for it connects itself.
            tracing::debug!(error = %e, "a connection opened ahead failed");
            PRECONNECTS_FAILED.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    if claimed.is_none() {
        claimed = loop {
            tokio::select! {
                to = &mut claims => break to.ok(),
                () = tokio::time::sleep_until(deadline) => break None,
                frame = framed.next() => match frame {
                    // The vendor's keep-alive: answered, and the connection stays usable.
                    Some(Ok(Frame::Ping(p))) => {
                        if framed.send(Message::Pong(p)).await.is_err() {
                            PRECONNECTS_UNUSED.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                    Some(Ok(Frame::Pong(_))) => {}
                    // It closed, went away, or spoke before any text: not usable.
                    _ => {
                        PRECONNECTS_UNUSED.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                },
            }
        };
    }
    let mut unused = match claimed {
        Some(to) => match to.send(framed) {
            Ok(()) => {
                PRECONNECTS_USED.fetch_add(1, Ordering::Relaxed);
                return;
            }
            // The stream that claimed it is gone (its utterance was dropped).
            Err(framed) => framed,
        },
        None => framed,
    };
    PRECONNECTS_UNUSED.fetch_add(1, Ordering::Relaxed);
    close(&mut unused, "unused").await;
}

/// A connection error while writing: the vendor is gone.
fn dropped(e: impl std::fmt::Display) -> WsTtsError {
    WsTtsError::Dropped(e.to_string())
}

/// Sends a close frame, within [`CLOSE_GRACE`].
async fn close<S>(framed: &mut S, why: &'static str)
where
    S: futures_util::Sink<Message> + Unpin,
{
    let _ = tokio::time::timeout(
        CLOSE_GRACE,
        framed.send(Message::Close(Some(CloseReason {
            code: CloseCode::Normal,
            description: Some(why.into()),
        }))),
    )
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
