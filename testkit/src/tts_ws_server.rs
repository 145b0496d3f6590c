//! Local stand-ins for the streaming speech vendors' WebSocket APIs, speaking their documented
//! wire protocols: ElevenLabs' stream-input (`/v1/text-to-speech/{voice}/stream-input`) and
//! Cartesia's TTS WebSocket (`/tts/websocket`). Each returns PCM (a tone, [`MS_PER_CHAR`] per
//! character) for the text it receives, base64-encoded in JSON, chunk by chunk ([`CHUNK_MS`]
//! each, [`CHUNK_GAP`] apart: faster than real time, like the vendors), after a fixed
//! first-result delay per generation. Like the vendors, it generates what it holds at each
//! flush (ElevenLabs `flush: true`; Cartesia `flush: true`, then a `flush_done` with the flush's
//! id, its chunks carrying that `flush_id`) and at the end of the input (ElevenLabs' empty text,
//! then `isFinal`; Cartesia's `continue: false`, then `done`), while it keeps reading. ElevenLabs
//! chunks carry their characters' alignment (`chars`, `charStartTimesMs`, `charDurationsMs`,
//! relative to the chunk). It records what it received and how each connection ended, so a
//! test sees a cancel or a close. It can also drop the connection mid-answer.

use crate::Io;
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// Audio per character of text.
pub const MS_PER_CHAR: usize = 30;
/// Audio per message.
pub const CHUNK_MS: usize = 100;
/// Time between messages, by default.
pub const CHUNK_GAP: Duration = Duration::from_millis(20);

/// Which vendor the stand-in plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// ElevenLabs stream-input.
    ElevenLabs,
    /// Cartesia.
    Cartesia,
}

/// How the stand-in answers.
#[derive(Debug, Clone, Copy)]
pub struct Behaviour {
    /// Wait before the first audio of each generation (a flush, or the end of the input).
    pub first_delay: Duration,
    /// Drop the TCP connection of the first stream given text (no close frame) after this many
    /// audio messages.
    pub drop_first_after: Option<usize>,
    /// Time between audio messages.
    pub chunk_gap: Duration,
    /// Mark no segment's end: no `flush_done` (Cartesia), no alignment (ElevenLabs).
    pub no_segment_marks: bool,
    /// Held before answering each connection's upgrade: a far vendor's TCP, TLS and upgrade
    /// round trips.
    pub handshake_delay: Duration,
    /// Send a ping right after the upgrade (a vendor's keep-alive).
    pub ping_first: bool,
    /// Generate nothing, ever, and send a ping this often instead (a vendor whose generation
    /// is stuck while its connection keeps itself alive).
    pub stall_with_pings: Option<Duration>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            first_delay: Duration::ZERO,
            drop_first_after: None,
            chunk_gap: CHUNK_GAP,
            no_segment_marks: false,
            handshake_delay: Duration::ZERO,
            ping_first: false,
            stall_with_pings: None,
        }
    }
}

/// How one stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Still open.
    Open,
    /// All audio sent and the end marker (`isFinal`, `done`) too.
    Done,
    /// The client sent a cancel (Cartesia `{"context_id", "cancel": true}`) before the end.
    Cancelled,
    /// The client closed the socket (or it broke) before the end (of its last context).
    ClosedEarly,
    /// The stand-in dropped it on purpose.
    Dropped,
}

/// One stream (one connection) as received.
#[derive(Debug, Clone)]
pub struct Stream {
    /// Request path and query.
    pub uri: String,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Every text message the client sent, parsed.
    pub messages: Vec<Value>,
    /// The text it was asked to speak, concatenated.
    pub text: String,
    /// Audio messages sent.
    pub chunks_sent: usize,
    /// How it ended.
    pub ending: Ending,
    /// When its TCP connection was accepted.
    pub opened: Instant,
    /// When its first text message came.
    pub first_message: Option<Instant>,
    /// Over TLS ([`TtsWsServer::start_tls`]): whether the client resumed an earlier session.
    pub tls_resumed: Option<bool>,
}

/// A running stand-in.
#[derive(Clone)]
pub struct TtsWsServer {
    addr: SocketAddr,
    tls: bool,
    streams: Arc<Mutex<Vec<Stream>>>,
}

impl TtsWsServer {
    /// Starts on 127.0.0.1, port 0.
    pub async fn start(vendor: Vendor, behaviour: Behaviour) -> TtsWsServer {
        Self::start_on(([127, 0, 0, 1], 0).into(), vendor, behaviour).await
    }

    /// Starts on `addr` (the bench's stand-ins listen where they are told).
    pub async fn start_on(addr: SocketAddr, vendor: Vendor, behaviour: Behaviour) -> TtsWsServer {
        let listener = TcpListener::bind(addr)
            .await
            .expect("bind the speech stand-in");
        let addr = listener.local_addr().expect("bound");
        let streams = Arc::new(Mutex::new(Vec::new()));
        let s = streams.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let tcp: Box<dyn Io> = Box::new(tcp);
                tokio::spawn(serve(
                    tcp,
                    Instant::now(),
                    None,
                    vendor,
                    behaviour,
                    s.clone(),
                ));
            }
        });
        TtsWsServer {
            addr,
            tls: false,
            streams,
        }
    }

    /// Starts on 127.0.0.1, port 0, serving `wss://` with `tls` (e.g. a
    /// [`TestCa`](crate::tls::TestCa)'s server configuration, which offers ALPN `h2` like the
    /// vendors' servers). Each stream records whether its TLS session was resumed; a connection
    /// whose TLS handshake fails is dropped and not recorded.
    pub async fn start_tls(
        vendor: Vendor,
        behaviour: Behaviour,
        tls: Arc<rustls::ServerConfig>,
    ) -> TtsWsServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the speech stand-in");
        let addr = listener.local_addr().expect("bound");
        let streams = Arc::new(Mutex::new(Vec::new()));
        let s = streams.clone();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, s, opened) = (acceptor.clone(), s.clone(), Instant::now());
                tokio::spawn(async move {
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        let resumed = stream.get_ref().1.handshake_kind()
                            == Some(rustls::HandshakeKind::Resumed);
                        let stream: Box<dyn Io> = Box::new(stream);
                        serve(stream, opened, Some(resumed), vendor, behaviour, s).await;
                    }
                });
            }
        });
        TtsWsServer {
            addr,
            tls: true,
            streams,
        }
    }

    /// The `base_url` for `tts.elevenlabs` / `tts.cartesia` (`wss://127.0.0.1:<port>` over TLS:
    /// the test CA's certificate names 127.0.0.1).
    pub fn base_url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}", self.addr)
    }

    /// The streams so far, in the order they connected.
    pub fn streams(&self) -> Vec<Stream> {
        self.streams
            .lock()
            .expect("no panics while holding")
            .clone()
    }
}

/// The sample rate the client asked for.
fn rate_of(vendor: Vendor, uri: &str, messages: &[Value]) -> u32 {
    match vendor {
        Vendor::ElevenLabs => uri
            .split("output_format=pcm_")
            .nth(1)
            .and_then(|r| r.split('&').next())
            .and_then(|r| r.parse().ok())
            .unwrap_or(16000),
        Vendor::Cartesia => messages
            .iter()
            .find_map(|m| m["output_format"]["sample_rate"].as_u64())
            .map_or(16000, |r| r as u32),
    }
}

fn tone(rate: u32, ms: usize, offset: usize) -> Vec<u8> {
    let n = rate as usize * ms / 1000;
    (0..n)
        .flat_map(|i| {
            let t = (offset + i) as f32 / rate as f32;
            (((t * 440.0 * std::f32::consts::TAU).sin() * 8000.0) as i16).to_le_bytes()
        })
        .collect()
}

#[allow(clippy::result_large_err)] // the handshake callback's error type is tungstenite's
async fn serve(
    tcp: Box<dyn Io>,
    opened: Instant,
    tls_resumed: Option<bool>,
    vendor: Vendor,
    behaviour: Behaviour,
    streams: Arc<Mutex<Vec<Stream>>>,
) {
    tokio::time::sleep(behaviour.handshake_delay).await;
    let head = Arc::new(Mutex::new((String::new(), Vec::new())));
    let h = head.clone();
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, move |req: &Request, res: Response| {
        let headers = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    v.to_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        *h.lock().expect("no panics while holding") = (req.uri().to_string(), headers);
        Ok(res)
    })
    .await
    else {
        return;
    };
    let (uri, headers) = head.lock().expect("no panics while holding").clone();
    let index = {
        let mut s = streams.lock().expect("no panics while holding");
        s.push(Stream {
            uri: uri.clone(),
            headers,
            messages: Vec::new(),
            text: String::new(),
            chunks_sent: 0,
            ending: Ending::Open,
            opened,
            first_message: None,
            tls_resumed,
        });
        s.len() - 1
    };
    let mut conn = Conn {
        vendor,
        behaviour,
        streams,
        index,
        uri,
        rate: 16000,
        buffer: String::new(),
        context: String::new(),
        flush_id: 1,
        jobs: std::collections::VecDeque::new(),
        sent: 0,
    };
    let (mut tx, mut rx) = ws.split();
    if behaviour.ping_first && tx.send(Message::Ping(b"alive"[..].into())).await.is_err() {
        conn.closed();
        return;
    }
    loop {
        let Some(job) = conn.jobs.pop_front() else {
            match rx.next().await {
                Some(Ok(Message::Text(t))) => {
                    if !conn.take(&t) {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    conn.closed();
                    return;
                }
                Some(Ok(_)) => {}
            }
            continue;
        };
        if !conn.generate(job, &mut tx, &mut rx).await {
            return;
        }
    }
}

/// A generation the stand-in owes: the text of one flush, or of the end of the input.
struct Job {
    text: String,
    /// Cartesia's flush id for its chunks and `flush_done`; `None` at the end of the input.
    flush_id: Option<u64>,
    /// The input is complete after it: send the end marker.
    end: bool,
}

/// One connection's state.
struct Conn {
    vendor: Vendor,
    behaviour: Behaviour,
    streams: Arc<Mutex<Vec<Stream>>>,
    index: usize,
    uri: String,
    rate: u32,
    /// Text received and not generated yet.
    buffer: String,
    /// Cartesia's context id.
    context: String,
    /// Cartesia's current flush id.
    flush_id: u64,
    jobs: std::collections::VecDeque<Job>,
    /// Audio messages sent.
    sent: usize,
}

type WsTx =
    futures_util::stream::SplitSink<tokio_tungstenite::WebSocketStream<Box<dyn Io>>, Message>;
type WsRx = futures_util::stream::SplitStream<tokio_tungstenite::WebSocketStream<Box<dyn Io>>>;

impl Conn {
    fn update(&self, f: impl FnOnce(&mut Stream)) {
        f(&mut self.streams.lock().expect("no panics while holding")[self.index]);
    }

    /// Whether this is the first stream that was given text (connections opened ahead of an
    /// utterance may come before it, without any).
    fn first_given_text(&self) -> bool {
        let streams = self.streams.lock().expect("no panics while holding");
        // By when the text came, not by place in the list: streams are listed as their upgrades
        // complete, and one opened ahead may complete before one opened earlier.
        let first = streams
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.first_message.map(|t| (t, i)))
            .min();
        first.map(|(_, i)| i) == Some(self.index)
    }

    /// The client closed the connection, or it broke: early unless its last context was done.
    fn closed(&self) {
        self.update(|s| {
            if s.ending == Ending::Open {
                s.ending = Ending::ClosedEarly;
            }
        });
    }

    /// Takes one text message: records it and queues the generations it asks for. False when it
    /// cancelled the stream.
    fn take(&mut self, t: &str) -> bool {
        let v: Value = serde_json::from_str(t).unwrap_or(Value::Null);
        let text = v["text"]
            .as_str()
            .or(v["transcript"].as_str())
            .unwrap_or("")
            .to_owned();
        let cancel = v["cancel"] == true;
        self.update(|s| {
            s.first_message.get_or_insert_with(Instant::now);
            s.messages.push(v.clone());
            s.text.push_str(&text);
            if cancel {
                s.ending = Ending::Cancelled;
            }
        });
        if cancel {
            return false;
        }
        if let Some(r) = v["output_format"]["sample_rate"].as_u64() {
            self.rate = r as u32;
        }
        match self.vendor {
            Vendor::ElevenLabs => {
                self.rate = rate_of(self.vendor, &self.uri, &[]);
                if text.is_empty() && v.get("text").is_some() {
                    // The end of the input.
                    self.jobs.push_back(Job {
                        text: std::mem::take(&mut self.buffer),
                        flush_id: None,
                        end: true,
                    });
                } else {
                    self.buffer.push_str(&text);
                    if v["flush"] == true {
                        self.jobs.push_back(Job {
                            text: std::mem::take(&mut self.buffer),
                            flush_id: None,
                            end: false,
                        });
                    }
                }
            }
            Vendor::Cartesia => {
                if let Some(c) = v["context_id"].as_str()
                    && c != self.context
                {
                    // A new context: its flush ids start again, and it is open.
                    c.clone_into(&mut self.context);
                    self.flush_id = 1;
                    self.update(|s| s.ending = Ending::Open);
                }
                self.buffer.push_str(&text);
                if v["flush"] == true {
                    self.jobs.push_back(Job {
                        text: std::mem::take(&mut self.buffer),
                        flush_id: Some(self.flush_id),
                        end: false,
                    });
                    self.flush_id += 1;
                }
                if v["continue"] != true {
                    self.jobs.push_back(Job {
                        text: std::mem::take(&mut self.buffer),
                        flush_id: None,
                        end: true,
                    });
                }
            }
        }
        true
    }

    /// Sends one generation's audio, reading the client between chunks. False when the
    /// connection is over.
    async fn generate(&mut self, job: Job, tx: &mut WsTx, rx: &mut WsRx) -> bool {
        let text = job.text.trim().to_owned();
        let chars: Vec<char> = text.chars().collect();
        let total_ms = chars.len() * MS_PER_CHAR;
        let b64 = base64::engine::general_purpose::STANDARD;
        let rate = self.rate;
        if let Some(every) = self.behaviour.stall_with_pings {
            loop {
                if !self.wait(every, rx).await
                    || tx.send(Message::Ping(b"alive"[..].into())).await.is_err()
                {
                    return false;
                }
            }
        }
        if total_ms > 0 && !self.wait(self.behaviour.first_delay, rx).await {
            return false;
        }
        let mut sent_ms = 0;
        while sent_ms < total_ms {
            if self.first_given_text()
                && self
                    .behaviour
                    .drop_first_after
                    .is_some_and(|n| self.sent >= n)
            {
                self.update(|s| s.ending = Ending::Dropped);
                // Dropping both halves drops the TCP connection without a close frame.
                return false;
            }
            let ms = CHUNK_MS.min(total_ms - sent_ms);
            let audio = b64.encode(tone(rate, ms, rate as usize * sent_ms / 1000));
            let msg = match self.vendor {
                Vendor::ElevenLabs => {
                    // The characters that start in this chunk, timed from its start.
                    let first = sent_ms.div_ceil(MS_PER_CHAR);
                    let last = (sent_ms + ms).div_ceil(MS_PER_CHAR).min(chars.len());
                    let here: Vec<String> =
                        chars[first..last].iter().map(|c| c.to_string()).collect();
                    let starts: Vec<usize> =
                        (first..last).map(|i| i * MS_PER_CHAR - sent_ms).collect();
                    let durations = vec![MS_PER_CHAR; here.len()];
                    let alignment = json!({
                        "chars": here,
                        "charStartTimesMs": starts,
                        "charDurationsMs": durations,
                    });
                    json!({
                        "audio": audio,
                        "isFinal": null,
                        "normalizedAlignment": null,
                        "alignment": if self.behaviour.no_segment_marks { Value::Null } else { alignment },
                    })
                }
                Vendor::Cartesia => json!({
                    "type": "chunk",
                    "data": audio,
                    "done": false,
                    "status_code": 206,
                    "step_time": 10,
                    "context_id": self.context,
                    "flush_id": job.flush_id.unwrap_or(self.flush_id),
                }),
            };
            if tx
                .send(Message::Text(msg.to_string().into()))
                .await
                .is_err()
            {
                self.update(|s| s.ending = Ending::ClosedEarly);
                return false;
            }
            self.sent += 1;
            sent_ms += ms;
            let sent = self.sent;
            self.update(|s| s.chunks_sent = sent);
            if !self.wait(self.behaviour.chunk_gap, rx).await {
                return false;
            }
        }
        let marker = match (self.vendor, job.flush_id, job.end) {
            (Vendor::Cartesia, Some(_), _) if self.behaviour.no_segment_marks => None,
            (Vendor::Cartesia, Some(id), _) => Some(json!({
                "type": "flush_done", "done": false, "flush_done": true, "flush_id": id,
                "status_code": 206, "context_id": self.context,
            })),
            (Vendor::Cartesia, None, true) => Some(json!({
                "type": "done", "done": true, "status_code": 206, "context_id": self.context,
            })),
            (Vendor::ElevenLabs, _, true) => Some(json!({"audio": null, "isFinal": true})),
            _ => None,
        };
        if let Some(m) = marker
            && tx.send(Message::Text(m.to_string().into())).await.is_err()
        {
            self.update(|s| s.ending = Ending::ClosedEarly);
            return false;
        }
        if job.end {
            self.update(|s| s.ending = Ending::Done);
            if self.vendor == Vendor::ElevenLabs {
                // The stream-input API closes the connection after `isFinal`.
                let _ = tx.send(Message::Close(None)).await;
                return false;
            }
        }
        true
    }

    /// Waits `d`, taking what the client sends meanwhile. False when it cancelled or closed.
    async fn wait(&mut self, d: Duration, rx: &mut WsRx) -> bool {
        let wait = tokio::time::sleep(d);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => return true,
                m = rx.next() => match m {
                    Some(Ok(Message::Text(t))) => {
                        if !self.take(&t) {
                            return false;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        self.closed();
                        return false;
                    }
                    Some(Ok(_)) => {}
                }
            }
        }
    }
}
