//! An OpenAI-compatible transcription engine: one `POST {base_url}/v1/audio/transcriptions` per
//! utterance (multipart: the utterance as a 16 kHz WAV, the model, optionally the language),
//! answered with `{"text": "..."}`. No partials: the text arrives once the utterance ended.
//!
//! Deadlines: `timeout` bounds the wait for the reply's head; its body must keep moving (no bytes
//! for `stream_idle` fails the utterance, counted as `Limit::AsrStreamIdle`); the whole request
//! is bounded by the recognizer's `asr.utterance_deadline_ms`, which drops (aborts) it. Either
//! way the dialog app gets `asr.error` and the call goes on.

use super::{AsrEngine, AsrFactory, AsrStream, AsrUpdate, UtteranceSink, wav};
use crate::idle::idle_timeout;
use crate::metrics::{Limit, metrics};
use futures_util::StreamExt;
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::oneshot;

/// The largest reply read: a transcription of the longest utterance is a few kilobytes.
const MAX_REPLY_BYTES: usize = 1 << 20;

/// Settings of the HTTP engine.
#[derive(Clone)]
pub struct OpenAiAsrSettings {
    /// Base URL, e.g. `https://api.openai.com`.
    pub base_url: String,
    /// Bearer token; empty sends no Authorization header.
    pub api_key: String,
    /// Model, e.g. `whisper-1`.
    pub model: String,
    /// ISO-639-1 language hint; empty lets the server detect it.
    pub language: String,
    /// Longest wait for the reply to start.
    pub timeout: Duration,
    /// Longest wait for the next bytes of the reply once it started
    /// (`asr.stream_idle_timeout_ms`).
    pub stream_idle: Duration,
}

impl std::fmt::Debug for OpenAiAsrSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiAsrSettings")
            .field("base_url", &self.base_url)
            .field("api_key", &if self.api_key.is_empty() { "" } else { "***" })
            .field("model", &self.model)
            .field("language", &self.language)
            .field("timeout", &self.timeout)
            .field("stream_idle", &self.stream_idle)
            .finish()
    }
}

/// The factory.
pub struct OpenAiAsr {
    settings: OpenAiAsrSettings,
}

impl OpenAiAsr {
    /// A factory for `settings`.
    pub fn new(settings: OpenAiAsrSettings) -> Self {
        OpenAiAsr { settings }
    }
}

impl AsrFactory for OpenAiAsr {
    fn for_call(&self) -> Rc<dyn AsrEngine> {
        Rc::new(OpenAiEngine {
            settings: self.settings.clone(),
        })
    }
}

struct OpenAiEngine {
    settings: OpenAiAsrSettings,
}

struct Sink {
    pcm: Vec<i16>,
    done: oneshot::Sender<Vec<i16>>,
}

impl UtteranceSink for Sink {
    fn push(&mut self, pcm: &[i16]) {
        self.pcm.extend_from_slice(pcm);
    }

    fn finish(self: Box<Self>) {
        let _ = self.done.send(self.pcm);
    }
}

impl AsrEngine for OpenAiEngine {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn utterance(&self) -> (Box<dyn UtteranceSink>, AsrStream) {
        let (tx, rx) = oneshot::channel::<Vec<i16>>();
        let s = self.settings.clone();
        let stream = futures_util::stream::once(async move {
            let Ok(pcm) = rx.await else {
                return AsrUpdate::Final(None);
            };
            match transcribe(&s, &pcm).await {
                Ok(text) => AsrUpdate::Final(Some(text).filter(|t| !t.is_empty())),
                Err(message) => AsrUpdate::Error {
                    message,
                    fatal: false,
                },
            }
        });
        (
            Box::new(Sink {
                pcm: Vec::new(),
                done: tx,
            }),
            Box::pin(stream),
        )
    }
}

async fn transcribe(s: &OpenAiAsrSettings, pcm: &[i16]) -> Result<String, String> {
    let url = format!(
        "{}/v1/audio/transcriptions",
        s.base_url.trim_end_matches('/')
    );
    let boundary = format!(
        "voicegate-{:016x}",
        voicegate_core::random::u32() as u64 * 0x1_0000_0001
    );
    let mut body = Vec::with_capacity(pcm.len() * 2 + 1024);
    let mut field = |name: &str, value: &str| {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    };
    field("model", &s.model);
    field("response_format", "json");
    if !s.language.is_empty() {
        field("language", &s.language);
    }
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"utterance.wav\"\r\nContent-Type: audio/wav\r\n\r\n").as_bytes(),
    );
    body.extend_from_slice(&wav(pcm, voicegate_core::frame::SPEECH_RATE));
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let client = awc::Client::builder().timeout(s.timeout).finish();
    let mut req = client.post(url.clone()).insert_header((
        "Content-Type",
        format!("multipart/form-data; boundary={boundary}"),
    ));
    if !s.api_key.is_empty() {
        req = req.bearer_auth(&s.api_key);
    }
    let res = req
        .send_body(body)
        .await
        .map_err(|e| format!("openai asr: {url}: {e}"))?;
    let status = res.status();
    let mut bytes = Vec::new();
    let mut body = idle_timeout(res, s.stream_idle);
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(Ok(chunk)) => chunk,
            Ok(Err(e)) => return Err(format!("openai asr: reading the reply: {e}")),
            Err(stalled) => {
                metrics().limit_hit(Limit::AsrStreamIdle);
                return Err(format!("openai asr: the reply stalled: {stalled}"));
            }
        };
        if bytes.len() + chunk.len() > MAX_REPLY_BYTES {
            return Err(format!(
                "openai asr: the reply is larger than {MAX_REPLY_BYTES} bytes"
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        return Err(format!(
            "openai asr: {url}: HTTP {status}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).trim()
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("openai asr: reply is not JSON: {e}"))?;
    v["text"]
        .as_str()
        .map(|t| t.trim().to_owned())
        .ok_or_else(|| "openai asr: reply has no \"text\"".to_owned())
}
