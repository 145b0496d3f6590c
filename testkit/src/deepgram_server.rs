//! A local stand-in for Deepgram's streaming listen API: a WebSocket server on port 0 that speaks
//! the documented wire protocol (`/v1/listen?...`, binary linear16 audio in, JSON `Results` out,
//! `KeepAlive` and `CloseStream` in, `Metadata` and a normal close after `CloseStream`).
//!
//! Each connection "hears" a fixed transcript revealed word by word as audio arrives (one word
//! per [`DeepgramStandIn::ms_per_word`] of 16 kHz mono audio), sends an interim `Results` with
//! the words so far whenever one more is revealed, and on `CloseStream` a final `Results`
//! (`is_final`, `speech_final`, `from_finalize`) with the whole transcript (when it received
//! any audio), then `Metadata`, then closes. It records each connection's request (path and
//! query, headers), audio bytes and control messages. It can misbehave: delay its first result
//! (a vendor's processing time, for the benchmark), drop the connection without a close frame
//! after some audio, or never answer `CloseStream` (silent, or pinging while its recognition is
//! stuck). It can also send the final `Results` as several fragments (RFC 6455 §5.4), as a server
//! may for any message, and pad it past a client's message limit.

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// How the stand-in behaves on every connection.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// What it "hears".
    pub transcript: String,
    /// Audio (ms) per revealed word.
    pub ms_per_word: u32,
    /// Held before the first result of a connection.
    pub first_result_delay: Duration,
    /// Drop the TCP connection (no close frame) once this much audio (bytes) arrived.
    pub drop_after_bytes: Option<usize>,
    /// Ignore `CloseStream` (send nothing more, keep the socket open).
    pub ignore_close_stream: bool,
    /// The `confidence` of every result with words (`None`: the field is left out).
    pub confidence: Option<f32>,
    /// Send the final `Results` as this many fragments (a text frame without FIN, continuation
    /// frames, the last with FIN); 0 or 1: one frame.
    pub final_fragments: usize,
    /// Spaces after the final `Results`' JSON (still valid JSON), to make it this much larger.
    pub final_padding: usize,
    /// Answer `CloseStream` with nothing but a ping this often, never the final result (a
    /// vendor whose recognition is stuck while its connection keeps itself alive).
    pub stall_with_pings: Option<Duration>,
}

impl Behaviour {
    /// Hears `transcript`, a word per 200 ms of audio, at once.
    pub fn hears(transcript: &str) -> Behaviour {
        Behaviour {
            transcript: transcript.to_owned(),
            ms_per_word: 200,
            first_result_delay: Duration::ZERO,
            drop_after_bytes: None,
            ignore_close_stream: false,
            confidence: Some(0.99),
            final_fragments: 1,
            final_padding: 0,
            stall_with_pings: None,
        }
    }
}

/// One connection as received.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// The request's path and query.
    pub uri: String,
    /// Headers, names lower case.
    pub headers: Vec<(String, String)>,
    /// Audio bytes received.
    pub audio_bytes: usize,
    /// Text messages received, in order.
    pub controls: Vec<String>,
}

impl Connection {
    /// A request header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A running stand-in.
#[derive(Clone)]
pub struct DeepgramStandIn {
    addr: SocketAddr,
    behaviour: Arc<Mutex<Behaviour>>,
    connections: Arc<Mutex<Vec<Connection>>>,
}

impl DeepgramStandIn {
    /// Starts on 127.0.0.1, port 0.
    pub async fn start(behaviour: Behaviour) -> DeepgramStandIn {
        Self::start_on(
            "127.0.0.1:0".parse().expect("a constant address"),
            behaviour,
        )
        .await
    }

    /// Starts on `addr`.
    pub async fn start_on(addr: SocketAddr, behaviour: Behaviour) -> DeepgramStandIn {
        let listener = TcpListener::bind(addr)
            .await
            .expect("bind the Deepgram stand-in");
        let addr = listener.local_addr().expect("bound");
        let me = DeepgramStandIn {
            addr,
            behaviour: Arc::new(Mutex::new(behaviour)),
            connections: Arc::new(Mutex::new(Vec::new())),
        };
        let m = me.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(m.clone().serve(tcp));
            }
        });
        me
    }

    /// The `asr.deepgram.base_url` for it (`ws://127.0.0.1:<port>`).
    pub fn base_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Changes the behaviour for connections from now on.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self.behaviour.lock().expect("not poisoned") = behaviour;
    }

    /// Every connection so far, in order.
    pub fn connections(&self) -> Vec<Connection> {
        self.connections.lock().expect("not poisoned").clone()
    }

    #[allow(clippy::result_large_err)] // the handshake callback's error type is tungstenite's
    async fn serve(self, tcp: tokio::net::TcpStream) {
        let behaviour = self.behaviour.lock().expect("not poisoned").clone();
        let mut seen = Connection::default();
        let ws = tokio_tungstenite::accept_hdr_async(tcp, |req: &Request, res: Response| {
            seen.uri = req.uri().to_string();
            seen.headers = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_ascii_lowercase(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            Ok(res)
        })
        .await;
        let Ok(mut ws) = ws else {
            return;
        };
        let index = {
            let mut all = self.connections.lock().expect("not poisoned");
            all.push(seen);
            all.len() - 1
        };
        let record = |f: &dyn Fn(&mut Connection)| {
            f(&mut self.connections.lock().expect("not poisoned")[index]);
        };
        let words: Vec<&str> = behaviour.transcript.split_whitespace().collect();
        let bytes_per_word = (behaviour.ms_per_word as usize * 32).max(1); // 16 kHz, 2 bytes
        let (mut audio, mut revealed, mut first) = (0usize, 0usize, true);
        let mut start = 0.0f64;
        while let Some(Ok(msg)) = ws.next().await {
            match msg {
                Message::Binary(b) => {
                    audio += b.len();
                    record(&|c| c.audio_bytes += b.len());
                    if behaviour.drop_after_bytes.is_some_and(|n| audio >= n) {
                        return; // the TCP connection drops with the socket
                    }
                    let now = (audio / bytes_per_word).min(words.len());
                    if now > revealed {
                        revealed = now;
                        if std::mem::take(&mut first) {
                            tokio::time::sleep(behaviour.first_result_delay).await;
                        }
                        let text = words[..revealed].join(" ");
                        let r = results(&text, behaviour.confidence, start, audio, false, false);
                        if ws.send(Message::text(r)).await.is_err() {
                            return;
                        }
                    }
                }
                Message::Text(t) => {
                    let t = t.to_string();
                    record(&|c| c.controls.push(t.clone()));
                    let kind = serde_json::from_str::<serde_json::Value>(&t)
                        .ok()
                        .and_then(|v| v["type"].as_str().map(str::to_owned));
                    if kind.as_deref() != Some("CloseStream") || behaviour.ignore_close_stream {
                        continue;
                    }
                    if let Some(every) = behaviour.stall_with_pings {
                        ping_until_closed(&mut ws, every).await;
                        return;
                    }
                    if std::mem::take(&mut first) {
                        tokio::time::sleep(behaviour.first_result_delay).await;
                    }
                    let text = if audio > 0 {
                        behaviour.transcript.clone()
                    } else {
                        String::new()
                    };
                    let fin = results(&text, behaviour.confidence, start, audio, true, true);
                    start = audio as f64 / 32_000.0;
                    let meta = json!({
                        "type": "Metadata", "transaction_key": "deprecated",
                        "request_id": "00000000-0000-0000-0000-000000000000",
                        "sha256": "", "created": "2026-01-01T00:00:00.000Z",
                        "duration": start, "channels": 1
                    });
                    let fin = fin + &" ".repeat(behaviour.final_padding);
                    let _ = send_fragmented(&mut ws, fin, behaviour.final_fragments).await;
                    let _ = ws.send(Message::text(meta.to_string())).await;
                    let _ = ws
                        .send(Message::Close(Some(CloseFrame {
                            code: CloseCode::Normal,
                            reason: "".into(),
                        })))
                        .await;
                }
                Message::Close(_) => return,
                _ => {}
            }
        }
    }
}

/// Sends a ping every `every` and nothing else, reading (and dropping) what the client sends,
/// until it closes the connection.
async fn ping_until_closed(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    every: Duration,
) {
    let mut next = tokio::time::Instant::now() + every;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {
                next += every;
                if ws.send(Message::Ping(b"alive"[..].into())).await.is_err() {
                    return;
                }
            }
            msg = ws.next() => match msg {
                None | Some(Err(_) | Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// Sends `text` as one text message in `pieces` frames (RFC 6455 §5.4: the first a text frame
/// without FIN, then continuation frames, the last with FIN); 0 or 1 piece: one frame.
async fn send_fragmented(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    text: String,
    pieces: usize,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    if pieces <= 1 {
        return ws.send(Message::text(text)).await;
    }
    let bytes = text.into_bytes();
    let size = bytes.len().div_ceil(pieces).max(1);
    let chunks: Vec<&[u8]> = bytes.chunks(size).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let op = if i == 0 { Data::Text } else { Data::Continue };
        let last = i + 1 == chunks.len();
        let frame = Frame::message(chunk.to_vec(), OpCode::Data(op), last);
        ws.send(Message::Frame(frame)).await?;
    }
    Ok(())
}

/// A `Results` message as Deepgram sends it (without word timings; a stretch without words has
/// confidence 0).
fn results(
    text: &str,
    confidence: Option<f32>,
    start: f64,
    audio: usize,
    is_final: bool,
    speech_final: bool,
) -> String {
    let mut alternative = json!({"transcript": text, "words": []});
    if let Some(c) = confidence {
        alternative["confidence"] = json!(if text.is_empty() { 0.0 } else { c });
    }
    json!({
        "type": "Results",
        "channel_index": [0, 1],
        "duration": audio as f64 / 32_000.0 - start,
        "start": start,
        "is_final": is_final,
        "speech_final": speech_final,
        "from_finalize": is_final,
        "channel": {"alternatives": [alternative]},
        "metadata": {
            "request_id": "00000000-0000-0000-0000-000000000000",
            "model_info": {"name": "stand-in", "version": "1", "arch": "stand-in"},
            "model_uuid": "00000000-0000-0000-0000-000000000000"
        }
    })
    .to_string()
}
