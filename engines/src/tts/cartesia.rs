//! Cartesia's TTS WebSocket: one context per utterance, fed as the text arrives, raw PCM out.
//!
//! An utterance is one connection (`GET {base_url}/tts/websocket`, the key in `X-API-Key`, the
//! API version in `Cartesia-Version`) and one `context_id`: each segment the player cuts is sent
//! as a generation request with `continue: true` (the context keeps its prosody from one
//! segment to the next), followed by a flush (an empty transcript with `flush: true`), and the
//! end of the utterance is an empty transcript with `continue: false`. The vendor answers
//! `{"type": "chunk", "data": "<base64 PCM>", "flush_id": n, …}` messages, a
//! `{"type": "flush_done"}` when a flushed segment's audio is complete (that is where the speaker
//! cuts the audio into segments, for `played_text`), `{"type": "done"}` at the context's end, or
//! `{"type": "error"}`. Dropping the utterance sends `{"context_id": …, "cancel": true}` and
//! closes the socket. Cartesia ends a context a second after its last audio, so a context with
//! no segment waiting for [`CONTEXT_LINGER`] is ended by us and the next segment starts a new
//! one on the same connection. [`ws`](super::ws) holds the stream, the deadlines and bounds.

use super::ws::{ContextUtterance, Limits, Preconnect, Reply, Request, Wire, json};
use super::{SynthStream, TtsEngine, TtsError, TtsFactory, UtteranceSynth};
use secrecy::{ExposeSecret, SecretString};
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;
use voicegate_core::session::{InvalidOption, TtsOptions};

/// The engine's name, for logs and errors.
pub(super) const ENGINE: &str = "cartesia";

/// A context with no segment waiting is ended after this long, before the vendor expires it
/// (a second after its last audio).
pub const CONTEXT_LINGER: std::time::Duration = std::time::Duration::from_millis(500);

/// The `generation_config.speed` the API takes.
pub const SPEED_RANGE: std::ops::RangeInclusive<f32> = 0.6..=1.5;

/// Settings of the engine. `Debug` shows everything but the key.
#[derive(Debug, Clone)]
pub struct CartesiaSettings {
    /// Base URL, `wss://api.cartesia.ai`.
    pub base_url: String,
    /// The `X-API-Key`; empty sends none.
    pub api_key: SecretString,
    /// The `Cartesia-Version` header, e.g. `2025-04-16`.
    pub version: String,
    /// Model id, e.g. `sonic-2`.
    pub model_id: String,
    /// Voice id.
    pub voice_id: String,
    /// Language, e.g. `en`.
    pub language: String,
    /// The PCM rate asked for; the speaker resamples it.
    pub sample_rate: u32,
    /// Longest wait for the connection.
    pub timeout: Duration,
    /// Longest quiet time once connected (`tts.stream_idle_timeout_ms`).
    pub stream_idle: Duration,
    /// Largest message from the vendor, bytes.
    pub max_message_bytes: usize,
    /// Longest a connection opened ahead waits for an utterance (`tts.preconnect_ms`; zero:
    /// none are opened).
    pub preconnect: Duration,
    /// What the connection to the server trusts (`vendor_tls`).
    pub tls: crate::tls::ClientTls,
}

/// The factory.
pub struct CartesiaTts {
    settings: CartesiaSettings,
}

impl CartesiaTts {
    /// A factory for `settings`.
    pub fn new(settings: CartesiaSettings) -> Self {
        CartesiaTts { settings }
    }
}

impl TtsFactory for CartesiaTts {
    fn for_call(&self) -> Rc<dyn TtsEngine> {
        Rc::new(CartesiaEngine {
            settings: self.settings.clone(),
            speed: None,
            contexts: Rc::default(),
            ahead: Rc::default(),
        })
    }

    /// `voice`: a voice id (letters, digits, `-`, `_`); `speed`: `generation_config.speed`,
    /// within [`SPEED_RANGE`].
    fn with_options(&self, o: &TtsOptions) -> Result<Rc<dyn TtsEngine>, InvalidOption> {
        let mut s = self.settings.clone();
        if let Some(v) = &o.voice {
            if !super::is_voice_id(v) {
                return Err(InvalidOption::new(
                    "voice",
                    "want a voice id (letters, digits, - and _)",
                ));
            }
            s.voice_id.clone_from(v);
        }
        if let Some(speed) = o.speed
            && !SPEED_RANGE.contains(&speed)
        {
            return Err(InvalidOption::new(
                "speed",
                "Cartesia takes a speed of 0.6 to 1.5",
            ));
        }
        Ok(Rc::new(CartesiaEngine {
            settings: s,
            speed: o.speed,
            contexts: Rc::default(),
            ahead: Rc::default(),
        }))
    }
}

struct CartesiaEngine {
    settings: CartesiaSettings,
    /// A session's speed, if it chose one.
    speed: Option<f32>,
    /// Context ids handed out (`vg-<n>`), for the call.
    contexts: Rc<Cell<u64>>,
    /// The connection opened ahead for the next utterance.
    ahead: Rc<Preconnect>,
}

/// A generation request.
#[derive(serde::Serialize)]
struct Generate<'a> {
    model_id: &'a str,
    transcript: &'a str,
    voice: Voice<'a>,
    language: &'a str,
    context_id: &'a str,
    output_format: OutputFormat,
    #[serde(skip_serializing_if = "Option::is_none")]
    generation_config: Option<GenerationConfig>,
    #[serde(rename = "continue")]
    more: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    flush: bool,
}

#[derive(serde::Serialize)]
struct Voice<'a> {
    mode: &'static str,
    id: &'a str,
}

#[derive(serde::Serialize)]
struct OutputFormat {
    container: &'static str,
    encoding: &'static str,
    sample_rate: u32,
}

#[derive(serde::Serialize)]
struct GenerationConfig {
    speed: f32,
}

impl TtsEngine for CartesiaEngine {
    fn name(&self) -> &'static str {
        ENGINE
    }

    fn sample_rate(&self) -> u32 {
        self.settings.sample_rate
    }

    /// One segment in a context of its own.
    fn synthesize(&self, text: &str) -> SynthStream {
        self.context().segment(text)
    }

    fn utterance(self: Rc<Self>) -> Box<dyn UtteranceSynth> {
        Box::new(self.context())
    }

    fn prepare(&self) {
        self.ahead
            .prepare(|| Self::request(&self.settings), self.limits());
    }
}

impl CartesiaEngine {
    fn limits(&self) -> Limits {
        let s = &self.settings;
        Limits {
            connect: s.timeout,
            idle: s.stream_idle,
            max_message: s.max_message_bytes,
            sample_rate: s.sample_rate,
            preconnect: s.preconnect,
        }
    }

    /// Where an utterance's stream connects.
    fn request(s: &CartesiaSettings) -> Request {
        let url = format!("{}/tts/websocket", s.base_url.trim_end_matches('/'));
        let mut headers = vec![("Cartesia-Version", s.version.clone())];
        let key = s.api_key.expose_secret();
        if !key.is_empty() {
            headers.push(("X-API-Key", key.to_owned()));
        }
        Request {
            url,
            headers,
            tls: s.tls.clone(),
        }
    }

    /// An utterance's stream.
    fn context(&self) -> ContextUtterance {
        let s = self.settings.clone();
        let (speed, contexts) = (self.speed, self.contexts.clone());
        ContextUtterance::new(
            Box::new(move || {
                let mut wire = CartesiaWire {
                    settings: s.clone(),
                    speed,
                    contexts: contexts.clone(),
                    context_id: String::new(),
                };
                wire.renew();
                (Self::request(&s), Box::new(wire))
            }),
            self.limits(),
            TtsError::Cartesia,
            self.ahead.clone(),
        )
    }
}

/// The vendor's messages for one connection, one context at a time.
struct CartesiaWire {
    settings: CartesiaSettings,
    speed: Option<f32>,
    contexts: Rc<Cell<u64>>,
    /// The context in use.
    context_id: String,
}

impl CartesiaWire {
    /// A generation request on the current context (every field but the transcript,
    /// `continue` and `flush` stays the same within a context, as the API asks).
    fn request(&self, transcript: &str, more: bool, flush: bool) -> String {
        let s = &self.settings;
        json(&Generate {
            model_id: &s.model_id,
            transcript,
            voice: Voice {
                mode: "id",
                id: &s.voice_id,
            },
            language: &s.language,
            context_id: &self.context_id,
            output_format: OutputFormat {
                container: "raw",
                encoding: "pcm_s16le",
                sample_rate: s.sample_rate,
            },
            generation_config: self.speed.map(|speed| GenerationConfig { speed }),
            more,
            flush,
        })
    }
}

#[derive(serde::Deserialize)]
struct Answer {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    context_id: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    title: Option<String>,
}

#[derive(serde::Serialize)]
struct Cancel<'a> {
    context_id: &'a str,
    cancel: bool,
}

impl Wire for CartesiaWire {
    fn open(&mut self) -> Vec<String> {
        Vec::new()
    }

    /// The transcript (transcripts are joined verbatim, so it ends with a space), then a flush:
    /// the vendor generates it now and says when its audio is complete.
    fn segment(&mut self, text: &str) -> Vec<String> {
        vec![
            self.request(&format!("{} ", text.trim_end()), true, false),
            self.request("", true, true),
        ]
    }

    fn finish(&mut self) -> Vec<String> {
        vec![self.request("", false, false)]
    }

    fn linger(&self) -> Option<std::time::Duration> {
        Some(CONTEXT_LINGER)
    }

    fn renew(&mut self) {
        let n = self.contexts.get() + 1;
        self.contexts.set(n);
        self.context_id = format!("vg-{n}");
    }

    fn cancel(&self) -> Option<String> {
        Some(json(&Cancel {
            context_id: &self.context_id,
            cancel: true,
        }))
    }

    fn parse(&mut self, text: &[u8]) -> Result<Reply, String> {
        let a: Answer =
            serde_json::from_slice(text).map_err(|e| format!("unreadable message: {e}"))?;
        if a.context_id
            .as_deref()
            .is_some_and(|c| c != self.context_id)
        {
            // A context we ended (its `done`, or audio cancelled with it).
            return Ok(Reply::Other);
        }
        if a.kind == "error" {
            let parts: Vec<String> = [a.title, a.message, a.error]
                .into_iter()
                .flatten()
                .collect();
            return Err(parts.join(": "));
        }
        Ok(match (a.kind.as_str(), a.data) {
            ("chunk", Some(data)) if !data.is_empty() => Reply::Audio {
                b64: data,
                ends: Vec::new(),
            },
            ("flush_done", _) => Reply::SegmentDone,
            ("done", _) => Reply::Done,
            _ => Reply::Other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> CartesiaSettings {
        CartesiaSettings {
            base_url: "ws://x".into(),
            tls: crate::tls::ClientTls::public(),
            api_key: "sk_car_secret".into(),
            version: "2025-04-16".into(),
            model_id: "sonic-2".into(),
            voice_id: "v".into(),
            language: "en".into(),
            sample_rate: 16000,
            timeout: Duration::from_secs(1),
            stream_idle: Duration::from_secs(1),
            max_message_bytes: 1 << 20,
            preconnect: Duration::ZERO,
        }
    }

    #[test]
    fn debug_hides_the_key() {
        assert!(!format!("{:?}", settings()).contains("sk_car_secret"));
    }

    #[test]
    fn reads_the_vendor_messages() {
        let mut w = CartesiaWire {
            settings: settings(),
            speed: None,
            contexts: Rc::default(),
            context_id: String::new(),
        };
        w.renew();
        assert_eq!(
            w.parse(br#"{"type":"chunk","data":"AAA=","done":false,"status_code":206,"step_time":1,"context_id":"vg-1","flush_id":1}"#),
            Ok(Reply::Audio {
                b64: "AAA=".into(),
                ends: vec![]
            })
        );
        assert_eq!(
            w.parse(br#"{"type":"flush_done","done":false,"flush_done":true,"flush_id":1,"status_code":206,"context_id":"vg-1"}"#),
            Ok(Reply::SegmentDone)
        );
        assert_eq!(
            w.parse(br#"{"type":"done","done":true,"status_code":206,"context_id":"vg-1"}"#),
            Ok(Reply::Done)
        );
        assert_eq!(
            w.parse(br#"{"type":"chunk","data":"AAA=","context_id":"other"}"#),
            Ok(Reply::Other)
        );
        assert_eq!(
            w.parse(br#"{"type":"timestamps","context_id":"vg-1","word_timestamps":{}}"#),
            Ok(Reply::Other)
        );
        let e = w
            .parse(br#"{"type":"error","done":true,"title":"Invalid model","message":"The model is not valid","status_code":400,"context_id":"vg-1"}"#)
            .unwrap_err();
        assert!(e.contains("Invalid model"), "{e}");
        assert_eq!(
            w.cancel().as_deref(),
            Some(r#"{"context_id":"vg-1","cancel":true}"#)
        );
        // A segment is its transcript with `continue`, then a flush; the end is `continue: false`.
        let m: Vec<serde_json::Value> = w
            .segment("Hello there.")
            .iter()
            .map(|m| serde_json::from_str(m).unwrap())
            .collect();
        assert_eq!(m[0]["transcript"], "Hello there. ");
        assert_eq!(
            (&m[0]["continue"], &m[0]["flush"]),
            (&true.into(), &serde_json::Value::Null)
        );
        assert_eq!(
            (&m[1]["transcript"], &m[1]["flush"]),
            (&"".into(), &true.into())
        );
        let end: serde_json::Value = serde_json::from_str(&w.finish()[0]).unwrap();
        assert_eq!(end["continue"], false);
        // After a linger the next context has a new id, and the old one's messages are ignored.
        w.renew();
        assert_eq!(
            w.parse(br#"{"type":"done","done":true,"context_id":"vg-1"}"#),
            Ok(Reply::Other)
        );
        let next: serde_json::Value = serde_json::from_str(&w.segment("x")[0]).unwrap();
        assert_eq!(next["context_id"], "vg-2");
    }

    #[test]
    fn options_check_voice_and_speed() {
        let f = CartesiaTts::new(settings());
        let opt = |voice: Option<&str>, speed| TtsOptions {
            voice: voice.map(Into::into),
            speed,
        };
        assert!(
            f.with_options(&opt(
                Some("a0e99841-438c-4a64-b679-ae501e7d6091"),
                Some(0.8)
            ))
            .is_ok()
        );
        let e = f.with_options(&opt(Some("a b"), None)).err().unwrap();
        assert_eq!(e.option, "voice");
        let e = f.with_options(&opt(None, Some(3.0))).err().unwrap();
        assert_eq!(e.option, "speed");
    }
}
