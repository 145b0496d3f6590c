//! The `dialog` profile's counterpart: a dialog app for many calls at once (a WebSocket server
//! that answers every `asr.final` with `tts.speak`), and the speech engines it makes voicegate
//! use, which are kept out of the measurement: local OpenAI-compatible endpoints that return a
//! fixed transcription and one pre-rendered answer (PCM cached in memory), so the server's CPU
//! goes to the gateway's own work (decoding, listening, resampling, encoding, pacing) and not to
//! a speech engine.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use voicegate_testkit::speech_server::{Behaviour, SpeechServer};

/// What the dialog app saw, over all calls.
#[derive(Debug, Default)]
pub struct Counts {
    /// Dialog connections accepted.
    pub connections: AtomicU64,
    /// `asr.final` events (each answered).
    pub finals: AtomicU64,
    /// `tts.ended` with `ok: true`.
    pub spoken: AtomicU64,
    /// `tts.interrupt` events (barge-ins).
    pub interrupts: AtomicU64,
    /// `asr.error` and `tts.ended ok:false` without an interrupt.
    pub errors: AtomicU64,
}

/// The running dialog app and engines.
pub struct BenchDialog {
    /// Counters.
    pub counts: Arc<Counts>,
    /// Settings that point a voicegate at them.
    pub env: Vec<(String, String)>,
    _engines: StandInEngines,
}

/// The answer every `asr.final` gets.
pub const ANSWER: &str = "Sure, it will be sunny today.";

impl BenchDialog {
    /// Starts the app and engines on loopback; `answer_pcm` is the cached answer at `rate`.
    pub async fn start(answer_pcm: Vec<i16>, rate: u32) -> anyhow::Result<BenchDialog> {
        let engines = StandInEngines::start(answer_pcm, rate).await;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let c = counts.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve(tcp, c.clone()));
            }
        });
        let mut env = vec![("VOICEGATE__DIALOG__URL".into(), url(addr))];
        env.extend(engines.env.iter().cloned());
        Ok(BenchDialog {
            counts,
            env,
            _engines: engines,
        })
    }
}

/// The speech engines the bench points voicegate at: local OpenAI-compatible endpoints, one
/// returning a fixed transcription, the other one pre-rendered answer for any text.
pub struct StandInEngines {
    /// Settings that point a voicegate at them.
    pub env: Vec<(String, String)>,
    _tts: SpeechServer,
    _asr: SpeechServer,
}

impl StandInEngines {
    /// Starts both on loopback; every synthesis returns `answer_pcm` (at `rate`).
    pub async fn start(answer_pcm: Vec<i16>, rate: u32) -> StandInEngines {
        let tts = SpeechServer::start(Behaviour::Stream {
            pcm: answer_pcm,
            chunk: 8192,
            gap: std::time::Duration::ZERO,
        })
        .await;
        let asr = SpeechServer::start(Behaviour::Transcribe(
            "what is the weather like today".into(),
        ))
        .await;
        let env = vec![
            ("VOICEGATE__TTS__ENGINE".into(), "openai".into()),
            ("VOICEGATE__TTS__OPENAI__BASE_URL".into(), tts.base_url()),
            (
                "VOICEGATE__TTS__OPENAI__SAMPLE_RATE".into(),
                rate.to_string(),
            ),
            ("VOICEGATE__ASR__ENGINE".into(), "openai".into()),
            ("VOICEGATE__ASR__OPENAI__BASE_URL".into(), asr.base_url()),
        ];
        StandInEngines {
            env,
            _tts: tts,
            _asr: asr,
        }
    }
}

fn url(addr: SocketAddr) -> String {
    format!("ws://{addr}/dialog")
}

async fn serve(tcp: tokio::net::TcpStream, counts: Arc<Counts>) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    counts.connections.fetch_add(1, Relaxed);
    let mut answers = 0u64;
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(text) = msg else { continue };
        let Ok(event) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        match event["type"].as_str().unwrap_or_default() {
            "asr.final" => {
                counts.finals.fetch_add(1, Relaxed);
                answers += 1;
                let cmd = json!({"type": "tts.speak", "utterance_id": format!("a{answers}"), "text": ANSWER});
                if ws.send(Message::text(cmd.to_string())).await.is_err() {
                    return;
                }
            }
            "tts.ended" if event["ok"] == true => {
                counts.spoken.fetch_add(1, Relaxed);
            }
            "tts.interrupt" => {
                counts.interrupts.fetch_add(1, Relaxed);
            }
            "asr.error" => {
                counts.errors.fetch_add(1, Relaxed);
            }
            "call.ended" => return,
            _ => {}
        }
    }
}
