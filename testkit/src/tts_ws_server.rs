//! Local stand-ins for the streaming speech vendors' WebSocket APIs, speaking their documented
//! wire protocols: ElevenLabs' stream-input (`/v1/text-to-speech/{voice}/stream-input`) and
//! Cartesia's TTS WebSocket (`/tts/websocket`). Each returns PCM (a tone, [`MS_PER_CHAR`] per
//! character) for the text it receives, base64-encoded in JSON, chunk by chunk ([`CHUNK_MS`]
//! each, [`CHUNK_GAP`] apart: faster than real time, like the vendors), after a fixed
//! first-result delay. It records what it received and how each stream ended, so a test sees a
//! cancel or a close. It can also drop the connection mid-answer.

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
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
    /// Wait before the first audio of each stream (after its text arrived).
    pub first_delay: Duration,
    /// Drop the first stream's TCP connection (no close frame) after this many audio messages.
    pub drop_first_after: Option<usize>,
    /// Time between audio messages.
    pub chunk_gap: Duration,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            first_delay: Duration::ZERO,
            drop_first_after: None,
            chunk_gap: CHUNK_GAP,
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
    /// The client closed the socket (or it broke) before the end.
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
}

/// A running stand-in.
#[derive(Clone)]
pub struct TtsWsServer {
    addr: SocketAddr,
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
                tokio::spawn(serve(tcp, vendor, behaviour, s.clone()));
            }
        });
        TtsWsServer { addr, streams }
    }

    /// The `base_url` for `tts.elevenlabs` / `tts.cartesia`.
    pub fn base_url(&self) -> String {
        format!("ws://{}", self.addr)
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
    tcp: tokio::net::TcpStream,
    vendor: Vendor,
    behaviour: Behaviour,
    streams: Arc<Mutex<Vec<Stream>>>,
) {
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
        });
        s.len() - 1
    };
    let update = |f: &mut dyn FnMut(&mut Stream)| {
        f(&mut streams.lock().expect("no panics while holding")[index]);
    };
    let (mut tx, mut rx) = ws.split();
    // Read until the input is complete (ElevenLabs: the empty text; Cartesia: `continue: false`).
    let mut messages = Vec::new();
    let mut context = String::new();
    loop {
        match rx.next().await {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                messages.push(v.clone());
                let text = v["text"]
                    .as_str()
                    .or(v["transcript"].as_str())
                    .unwrap_or("")
                    .to_owned();
                let cancel = v["cancel"] == true;
                update(&mut |s| {
                    s.messages.push(v.clone());
                    s.text.push_str(&text);
                    if cancel {
                        s.ending = Ending::Cancelled;
                    }
                });
                if cancel {
                    return;
                }
                if let Some(c) = v["context_id"].as_str() {
                    context = c.to_owned();
                }
                let complete = match vendor {
                    Vendor::ElevenLabs => v["text"] == "",
                    Vendor::Cartesia => v["continue"] != true,
                };
                if complete {
                    break;
                }
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                update(&mut |s| s.ending = Ending::ClosedEarly);
                return;
            }
            Some(Ok(_)) => {}
        }
    }
    let rate = rate_of(vendor, &uri, &messages);
    let text = streams.lock().expect("no panics while holding")[index]
        .text
        .trim()
        .to_owned();
    let total_ms = text.chars().count() * MS_PER_CHAR;
    let b64 = base64::engine::general_purpose::STANDARD;
    tokio::time::sleep(behaviour.first_delay).await;
    let mut sent_ms = 0;
    let mut sent = 0;
    while sent_ms < total_ms {
        if index == 0 && behaviour.drop_first_after.is_some_and(|n| sent >= n) {
            update(&mut |s| s.ending = Ending::Dropped);
            // Dropping both halves drops the TCP connection without a close frame.
            return;
        }
        let ms = CHUNK_MS.min(total_ms - sent_ms);
        let audio = b64.encode(tone(rate, ms, rate as usize * sent_ms / 1000));
        let msg = match vendor {
            Vendor::ElevenLabs => json!({
                "audio": audio,
                "isFinal": null,
                "normalizedAlignment": null,
                "alignment": null,
            }),
            Vendor::Cartesia => json!({
                "type": "chunk",
                "data": audio,
                "done": false,
                "status_code": 206,
                "step_time": 10,
                "context_id": context,
            }),
        };
        if tx
            .send(Message::Text(msg.to_string().into()))
            .await
            .is_err()
        {
            update(&mut |s| s.ending = Ending::ClosedEarly);
            return;
        }
        sent += 1;
        sent_ms += ms;
        update(&mut |s| s.chunks_sent = sent);
        // Watch for a cancel or a close between messages.
        let wait = tokio::time::sleep(behaviour.chunk_gap);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                m = rx.next() => match m {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                        let cancel = v["cancel"] == true;
                        update(&mut |s| {
                            s.messages.push(v.clone());
                            if cancel {
                                s.ending = Ending::Cancelled;
                            }
                        });
                        if cancel {
                            return;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        update(&mut |s| s.ending = Ending::ClosedEarly);
                        return;
                    }
                    Some(Ok(_)) => {}
                }
            }
        }
    }
    let end = match vendor {
        Vendor::ElevenLabs => json!({"audio": null, "isFinal": true}),
        Vendor::Cartesia => json!({
            "type": "done", "done": true, "status_code": 206, "context_id": context,
        }),
    };
    let _ = tx.send(Message::Text(end.to_string().into())).await;
    update(&mut |s| s.ending = Ending::Done);
    if vendor == Vendor::ElevenLabs {
        // The stream-input API closes the connection after `isFinal`.
        let _ = tx.send(Message::Close(None)).await;
    }
}
