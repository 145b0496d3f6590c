//! An OpenAI-compatible transcription engine: one `POST {base_url}/v1/audio/transcriptions` per
//! utterance (multipart: the utterance as a 16 kHz WAV, the model, optionally the language),
//! answered with `{"text": "..."}`, or, when streaming is on and the server supports it, with
//! server-sent events (`transcript.text.delta`, then `transcript.text.done`) that become partial
//! results as the server decodes. With `logprobs`, it asks for the tokens' log probabilities
//! (`include[]=logprobs`) and gives each result their geometric mean as its confidence. A server
//! that refuses a request asking for either (`400`) is asked once more without it (log
//! probabilities first, then streaming); only if a request without them is answered does the
//! factory remember not to ask for them again. A `400` that stays without them is the request's
//! own (a language the server does not know, from a session's `session.update`): that
//! utterance gets `asr.error`, and the next ones ask as before.
//!
//! Deadlines: `timeout` bounds the wait for the reply's head; its body must keep moving (no bytes
//! for `stream_idle` fails the utterance: [`OpenAiAsrError::Stalled`], which the recognizer counts
//! as `Limit::AsrStreamIdle`); the whole request
//! is bounded by the recognizer's `asr.utterance_deadline_ms`, which drops (aborts) it. Either
//! way the dialog app gets `asr.error` and the call goes on.
//!
//! Size: a reply is read up to `max_reply_bytes` (`asr.openai.max_reply_bytes`), a JSON one
//! whole, a streamed one's events together (so the text its deltas build is bounded too); one
//! larger fails the utterance ([`OpenAiAsrError::TooLarge`], counted as `Limit::AsrReplyBytes`).

use super::{AsrEngine, AsrFactory, AsrStream, AsrUpdate, UtteranceSink, wav};
use crate::idle::{IdleTimeout, Stalled, idle_timeout};
use awc::error::{PayloadError, SendRequestError};
use awc::http::StatusCode;
use futures_util::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::oneshot;
use voicegate_core::session::{AsrOptions, InvalidOption};

/// Settings of the HTTP engine. `Debug` shows everything but the key.
#[derive(Debug, Clone)]
pub struct OpenAiAsrSettings {
    /// Base URL, e.g. `https://api.openai.com`.
    pub base_url: String,
    /// Bearer token; empty sends no Authorization header.
    pub api_key: SecretString,
    /// Model, e.g. `whisper-1`.
    pub model: String,
    /// ISO-639-1 language hint; empty lets the server detect it.
    pub language: String,
    /// Longest wait for the reply to start.
    pub timeout: Duration,
    /// Longest wait for the next bytes of the reply once it started
    /// (`asr.stream_idle_timeout_ms`).
    pub stream_idle: Duration,
    /// The largest reply read, a streamed one's events together (`asr.openai.max_reply_bytes`):
    /// a transcription of the longest utterance is a few kilobytes.
    pub max_reply_bytes: usize,
    /// Ask for a streamed transcription (`stream=true`: partial text as server-sent events,
    /// as OpenAI's gpt-4o transcription models answer); a server that refuses it (`400`, as
    /// for whisper-1) is asked again without, and, if that is answered, not asked again by
    /// this process.
    pub stream: bool,
    /// Ask for the tokens' log probabilities (`include[]=logprobs`, which OpenAI's gpt-4o
    /// transcription models answer; whisper-1 refuses it): a result's confidence is then the
    /// geometric mean of its tokens' probabilities. Without them (off, or a server that sends
    /// none), results carry no confidence.
    pub logprobs: bool,
    /// What the connection to the server trusts (`vendor_tls`).
    pub tls: crate::tls::ClientTls,
}

/// Why a transcription failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenAiAsrError {
    /// The request could not be sent, or no reply head came within `timeout`.
    #[error("{url}: {source}")]
    Send {
        /// The endpoint.
        url: String,
        /// The client's error.
        #[source]
        source: SendRequestError,
    },
    /// The reply broke off.
    #[error("reading the reply: {0}")]
    Read(#[source] PayloadError),
    /// The reply sent nothing for `stream_idle`.
    #[error("the reply stalled: {0}")]
    Stalled(#[source] Stalled),
    /// The reply is larger than `max_reply_bytes` (this many), which no transcription needs.
    #[error("the reply is larger than {0} bytes")]
    TooLarge(usize),
    /// The server answered with an error status.
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        /// The endpoint.
        url: String,
        /// The status.
        status: StatusCode,
        /// The start of the error body (the server's text).
        body: String,
    },
    /// The reply is not JSON.
    #[error("reply is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The reply is JSON without a `text` string.
    #[error("reply has no \"text\"")]
    NoText,
}

/// The factory.
pub struct OpenAiAsr {
    settings: OpenAiAsrSettings,
    /// What is asked for (until a server refused it).
    asks: Arc<Asks>,
}

/// The optional parts of a request, each asked for until a server refuses it (`400` with it,
/// an answer without it); a process talks to one server, so it then stops asking.
#[derive(Debug)]
struct Asks {
    /// `stream=true`.
    stream: AtomicBool,
    /// `include[]=logprobs`.
    logprobs: AtomicBool,
}

impl Asks {
    /// What a request asks for now.
    fn now(&self) -> Parts {
        Parts {
            stream: self.stream.load(Ordering::Relaxed),
            logprobs: self.logprobs.load(Ordering::Relaxed),
        }
    }

    /// A request that asked for `asked` was refused, and answered once it asked only for
    /// `answered`: the parts it went without were what the server refused, and are not asked
    /// for again.
    fn refused(&self, asked: Parts, answered: Parts) {
        if asked.stream && !answered.stream {
            self.stream.store(false, Ordering::Relaxed);
        }
        if asked.logprobs && !answered.logprobs {
            self.logprobs.store(false, Ordering::Relaxed);
        }
    }
}

/// The optional parts one request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parts {
    /// `stream=true`.
    stream: bool,
    /// `include[]=logprobs`.
    logprobs: bool,
}

impl OpenAiAsr {
    /// A factory for `settings`.
    pub fn new(settings: OpenAiAsrSettings) -> Self {
        let asks = Arc::new(Asks {
            stream: AtomicBool::new(settings.stream),
            logprobs: AtomicBool::new(settings.logprobs),
        });
        OpenAiAsr { settings, asks }
    }
}

impl AsrFactory for OpenAiAsr {
    fn for_call(&self) -> Rc<dyn AsrEngine> {
        Rc::new(OpenAiEngine {
            settings: self.settings.clone(),
            prompt: String::new(),
            asks: self.asks.clone(),
        })
    }

    /// `language` (`""`: the server detects it), `model` and `prompt` go into the request as
    /// they are (the server refuses what it does not know, and that utterance gets `asr.error`);
    /// there are no grammars.
    fn with_options(&self, o: &AsrOptions) -> Result<Rc<dyn AsrEngine>, InvalidOption> {
        if o.grammar.as_deref().is_some_and(|g| !g.is_empty()) {
            return Err(InvalidOption::new(
                "grammar",
                "the openai engine has no grammars (a prompt can suggest words)",
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
        Ok(Rc::new(OpenAiEngine {
            settings,
            prompt: o.prompt.clone().unwrap_or_default(),
            asks: self.asks.clone(),
        }))
    }
}

struct OpenAiEngine {
    settings: OpenAiAsrSettings,
    /// A session's prompt: words to expect (no control characters, so it cannot break out of
    /// its multipart field).
    prompt: String,
    /// What is asked for (shared with the factory).
    asks: Arc<Asks>,
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
        let start = State::Start {
            pcm: rx,
            settings: self.settings.clone(),
            prompt: self.prompt.clone(),
            asks: self.asks.clone(),
        };
        let stream = futures_util::stream::unfold(start, next_update);
        (
            Box::new(Sink {
                pcm: Vec::new(),
                done: tx,
            }),
            Box::pin(stream),
        )
    }
}

/// Where an utterance's transcription stands.
enum State {
    /// Waiting for the utterance's audio.
    Start {
        pcm: oneshot::Receiver<Vec<i16>>,
        settings: OpenAiAsrSettings,
        prompt: String,
        asks: Arc<Asks>,
    },
    /// Reading server-sent events: the body, the bytes read of it and the most it may have,
    /// bytes not parsed yet, the text so far and its tokens' log probabilities.
    Events {
        body: IdleTimeout<awc::ClientResponse>,
        read: usize,
        max: usize,
        pending: Vec<u8>,
        text: String,
        logprobs: Logprobs,
    },
    /// The final result went out.
    Done,
}

/// The next result of an utterance: the audio is sent when it ended; a JSON reply is the final
/// result, a stream of events gives partials and then the final.
async fn next_update(state: State) -> Option<(AsrUpdate, State)> {
    match state {
        State::Done => None,
        State::Start {
            pcm,
            settings,
            prompt,
            asks,
        } => {
            let Ok(pcm) = pcm.await else {
                return Some((AsrUpdate::Final(None, None), State::Done));
            };
            let refused = |r: &Result<Reply, OpenAiAsrError>| matches!(r, Err(OpenAiAsrError::Status { status, .. }) if *status == StatusCode::BAD_REQUEST);
            let asked = asks.now();
            let mut parts = asked;
            let mut reply = request(&settings, &prompt, &pcm, parts).await;
            // A server may refuse an optional part (whisper-1 refuses both `include[]` and
            // `stream`): a refused request is asked again without it, log probabilities first.
            // Only an answer without them shows they were the cause; then this process never
            // asks its server for them again. A `400` that stays is about something else in
            // this request (a session's language the server does not know): it fails this
            // utterance and leaves what the next ones ask for as it was.
            if refused(&reply) && parts.logprobs {
                parts.logprobs = false;
                reply = request(&settings, &prompt, &pcm, parts).await;
            }
            if refused(&reply) && parts.stream {
                parts.stream = false;
                reply = request(&settings, &prompt, &pcm, parts).await;
            }
            if reply.is_ok() {
                asks.refused(asked, parts);
            }
            match reply {
                Err(e) => Some((AsrUpdate::Error(e.into()), State::Done)),
                Ok(Reply::Text(text, logprobs)) => Some((final_of(text, &logprobs), State::Done)),
                Ok(Reply::Events(body)) => {
                    Box::pin(next_update(State::Events {
                        body,
                        read: 0,
                        max: settings.max_reply_bytes,
                        pending: Vec::new(),
                        text: String::new(),
                        logprobs: Logprobs::default(),
                    }))
                    .await
                }
            }
        }
        State::Events {
            mut body,
            mut read,
            max,
            mut pending,
            mut text,
            mut logprobs,
        } => loop {
            // One event per blank-line-separated block; its `data:` line is the JSON.
            if let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = pending.drain(..end + 2).collect();
                let block = String::from_utf8_lossy(&block);
                for line in block.lines() {
                    let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                        continue;
                    };
                    if data == "[DONE]" {
                        return Some((final_of(text, &logprobs), State::Done));
                    }
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
                        continue;
                    };
                    match v["type"].as_str() {
                        Some("transcript.text.delta") => {
                            text.push_str(v["delta"].as_str().unwrap_or(""));
                            logprobs.add(&v["logprobs"]);
                            let partial = text.trim().to_owned();
                            let confidence = logprobs.confidence();
                            let next = State::Events {
                                body,
                                read,
                                max,
                                pending,
                                text,
                                logprobs,
                            };
                            return Some((AsrUpdate::Partial(partial, confidence), next));
                        }
                        Some("transcript.text.done") => {
                            let done = v["text"].as_str().map_or(text, str::to_owned);
                            // The whole text's, when the server sends them again.
                            let mut whole = Logprobs::default();
                            whole.add(&v["logprobs"]);
                            let all = if whole.n > 0 { whole } else { logprobs };
                            return Some((final_of(done, &all), State::Done));
                        }
                        _ => {}
                    }
                }
                continue;
            }
            match body.next().await {
                None => return Some((final_of(text, &logprobs), State::Done)),
                Some(Err(stalled)) => {
                    let e = OpenAiAsrError::Stalled(stalled);
                    return Some((AsrUpdate::Error(e.into()), State::Done));
                }
                Some(Ok(Err(e))) => {
                    return Some((
                        AsrUpdate::Error(OpenAiAsrError::Read(e).into()),
                        State::Done,
                    ));
                }
                Some(Ok(Ok(chunk))) => {
                    // The whole reply counts, not only what waits to be parsed: the text the
                    // deltas build grows with it.
                    read += chunk.len();
                    if read > max {
                        return Some((
                            AsrUpdate::Error(OpenAiAsrError::TooLarge(max).into()),
                            State::Done,
                        ));
                    }
                    // Servers may end lines with CRLF.
                    pending.extend(chunk.iter().filter(|b| **b != b'\r'));
                }
            }
        },
    }
}

fn final_of(text: String, logprobs: &Logprobs) -> AsrUpdate {
    let text = Some(text.trim().to_owned()).filter(|t| !t.is_empty());
    let confidence = text.as_ref().and(logprobs.confidence());
    AsrUpdate::Final(text, confidence)
}

/// The log probabilities of a transcription's tokens, as the server sent them.
#[derive(Debug, Default, Clone, Copy)]
struct Logprobs {
    sum: f64,
    n: usize,
}

impl Logprobs {
    /// Adds `v`'s tokens: an array of `{"logprob": ...}`; anything else adds none.
    fn add(&mut self, v: &serde_json::Value) {
        for p in v.as_array().into_iter().flatten() {
            if let Some(l) = p["logprob"].as_f64().filter(|l| l.is_finite()) {
                self.sum += l.min(0.0);
                self.n += 1;
            }
        }
    }

    /// The geometric mean of the tokens' probabilities (0 to 1); none without tokens.
    fn confidence(&self) -> Option<f32> {
        (self.n > 0).then(|| ((self.sum / self.n as f64).exp() as f32).clamp(0.0, 1.0))
    }
}

/// What the server answered.
enum Reply {
    /// The whole transcription, and its tokens' log probabilities.
    Text(String, Logprobs),
    /// Server-sent events, to be read as they come.
    Events(IdleTimeout<awc::ClientResponse>),
}

async fn request(
    s: &OpenAiAsrSettings,
    prompt: &str,
    pcm: &[i16],
    parts: Parts,
) -> Result<Reply, OpenAiAsrError> {
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
    if parts.logprobs {
        field("include[]", "logprobs");
    }
    if !s.language.is_empty() {
        field("language", &s.language);
    }
    if !prompt.is_empty() {
        field("prompt", prompt);
    }
    if parts.stream {
        field("stream", "true");
    }
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"utterance.wav\"\r\nContent-Type: audio/wav\r\n\r\n").as_bytes(),
    );
    body.extend_from_slice(&wav(pcm, voicegate_core::frame::SPEECH_RATE));
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    // The worker's pool: after the first utterance, the next ones skip the handshakes.
    let mut req = crate::http::client(&s.tls)
        .post(url.clone())
        .timeout(s.timeout)
        .insert_header((
            "Content-Type",
            format!("multipart/form-data; boundary={boundary}"),
        ));
    let key = s.api_key.expose_secret();
    if !key.is_empty() {
        req = req.bearer_auth(key);
    }
    let res = match crate::http::send(req, body.into()).await {
        Ok(res) => res,
        Err(source) => return Err(OpenAiAsrError::Send { url, source }),
    };
    let status = res.status();
    let events = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut body = idle_timeout(res, s.stream_idle);
    if status.is_success() && events {
        return Ok(Reply::Events(body));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(Ok(chunk)) => chunk,
            Ok(Err(e)) => return Err(OpenAiAsrError::Read(e)),
            Err(stalled) => return Err(OpenAiAsrError::Stalled(stalled)),
        };
        if bytes.len() + chunk.len() > s.max_reply_bytes {
            return Err(OpenAiAsrError::TooLarge(s.max_reply_bytes));
        }
        bytes.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        return Err(OpenAiAsrError::Status {
            url,
            status,
            body: String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
                .trim()
                .to_owned(),
        });
    }
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(OpenAiAsrError::NotJson)?;
    let mut logprobs = Logprobs::default();
    logprobs.add(&v["logprobs"]);
    v["text"]
        .as_str()
        .map(|t| Reply::Text(t.trim().to_owned(), logprobs))
        .ok_or(OpenAiAsrError::NoText)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_confidence_is_the_geometric_mean_of_the_tokens_probabilities() {
        let of = |v: serde_json::Value| {
            let mut l = Logprobs::default();
            l.add(&v);
            l.confidence()
        };
        assert_eq!(of(serde_json::Value::Null), None);
        assert_eq!(of(serde_json::json!([])), None);
        assert_eq!(of(serde_json::json!([{"token": "a"}])), None, "no logprob");
        let half = of(serde_json::json!([
            {"token": "a", "logprob": 0.0},
            {"token": "b", "logprob": (0.25f64).ln()},
        ]))
        .unwrap();
        assert!((half - 0.5).abs() < 1e-6, "{half}");
        // A positive log probability is a server's error: it counts as certain, never above 1.
        assert_eq!(of(serde_json::json!([{"logprob": 3.0}])), Some(1.0));
        let mut split = Logprobs::default();
        split.add(&serde_json::json!([{"logprob": -1.0}]));
        split.add(&serde_json::json!([{"logprob": -3.0}]));
        assert!((split.confidence().unwrap() - (-2.0f32).exp()).abs() < 1e-6);
    }

    #[test]
    fn debug_hides_the_key() {
        let s = OpenAiAsrSettings {
            base_url: "http://x".into(),
            tls: crate::tls::ClientTls::public(),
            api_key: "sk-secret".into(),
            model: "whisper-1".into(),
            language: String::new(),
            timeout: Duration::from_secs(1),
            stream_idle: Duration::from_secs(1),
            max_reply_bytes: 1 << 20,
            stream: false,
            logprobs: false,
        };
        let shown = format!("{s:?}");
        assert!(!shown.contains("sk-secret"), "{shown}");
        assert!(shown.contains("whisper-1"), "the rest still shows: {shown}");
    }

    #[test]
    fn errors_name_the_engine_and_a_stall_is_marked_for_counting() {
        let stalled: super::super::AsrError =
            OpenAiAsrError::Stalled(Stalled(Duration::from_millis(500))).into();
        assert_eq!(
            stalled.to_string(),
            "openai asr: the reply stalled: nothing received for 500 ms"
        );
        assert!(stalled.stalled() && !stalled.refused() && !stalled.is_fatal());
        let no_text: super::super::AsrError = OpenAiAsrError::NoText.into();
        assert_eq!(no_text.to_string(), "openai asr: reply has no \"text\"");
        assert!(!no_text.stalled());
        assert_eq!(no_text.limit(), None);
        let too_large: super::super::AsrError = OpenAiAsrError::TooLarge(4096).into();
        assert_eq!(
            too_large.to_string(),
            "openai asr: the reply is larger than 4096 bytes"
        );
        assert_eq!(too_large.limit(), Some(super::super::AsrLimit::ReplyBytes));
    }
}
