//! Cartesia's TTS WebSocket: a generation request per context id, raw PCM out.
//!
//! Each segment the player cuts is one context on its own connection
//! (`GET {base_url}/tts/websocket`, the key in `X-API-Key`, the API version in
//! `Cartesia-Version`): one generation request with the segment's transcript, a fresh
//! `context_id` and `continue: false` (nothing follows on that context), asking for
//! `raw`/`pcm_s16le` at the configured rate. The vendor answers `{"type": "chunk", "data":
//! "<base64 PCM>", …}` messages for the context and `{"type": "done"}` at its end, or
//! `{"type": "error"}`. Dropping the synthesis sends `{"context_id": …, "cancel": true}` and
//! closes the socket. [`ws`](super::ws) holds the deadlines and bounds.
//!
//! Why a context and a connection per segment, not one context per utterance with `continue`:
//! the player must attribute every sample to its segment (`tts.interrupt`'s `played_text`
//! depends on it), and a context's audio carries no boundary between its inputs. The player
//! sends a `tts.stream`'s first segment as soon as it is cut and prefetches the next, so audio
//! starts before the stream's last chunk and the next connection is up while one plays.

use super::ws::{self, Limits, Reply, Request, Vendor, json};
use super::{SynthStream, TtsEngine, TtsError, TtsFactory};
use secrecy::{ExposeSecret, SecretString};
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;
use voicegate_core::session::{InvalidOption, TtsOptions};

/// The engine's name, for logs and errors.
pub(super) const ENGINE: &str = "cartesia";

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
            contexts: Cell::new(0),
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
            contexts: Cell::new(0),
        }))
    }
}

struct CartesiaEngine {
    settings: CartesiaSettings,
    /// A session's speed, if it chose one.
    speed: Option<f32>,
    /// Context ids handed out (`vg-<n>`).
    contexts: Cell<u64>,
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

    fn synthesize(&self, text: &str) -> SynthStream {
        let s = &self.settings;
        let n = self.contexts.get() + 1;
        self.contexts.set(n);
        let context_id = format!("vg-{n}");
        let url = format!("{}/tts/websocket", s.base_url.trim_end_matches('/'));
        let mut headers = vec![("Cartesia-Version", s.version.clone())];
        let key = s.api_key.expose_secret();
        if !key.is_empty() {
            headers.push(("X-API-Key", key.to_owned()));
        }
        let messages = vec![json(&Generate {
            model_id: &s.model_id,
            transcript: text,
            voice: Voice {
                mode: "id",
                id: &s.voice_id,
            },
            language: &s.language,
            context_id: &context_id,
            output_format: OutputFormat {
                container: "raw",
                encoding: "pcm_s16le",
                sample_rate: s.sample_rate,
            },
            generation_config: self.speed.map(|speed| GenerationConfig { speed }),
            more: false,
        })];
        ws::synthesize(
            Request {
                url,
                headers,
                messages,
            },
            CartesiaWire { context_id },
            Limits {
                connect: s.timeout,
                idle: s.stream_idle,
                max_message: s.max_message_bytes,
            },
            TtsError::Cartesia,
        )
    }
}

/// The vendor's messages for one context.
struct CartesiaWire {
    context_id: String,
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

impl Vendor for CartesiaWire {
    fn parse(&self, text: &[u8]) -> Result<Reply, String> {
        let a: Answer =
            serde_json::from_slice(text).map_err(|e| format!("unreadable message: {e}"))?;
        if a.kind == "error" {
            let parts: Vec<String> = [a.title, a.message, a.error]
                .into_iter()
                .flatten()
                .collect();
            return Err(parts.join(": "));
        }
        if a.context_id
            .as_deref()
            .is_some_and(|c| c != self.context_id)
        {
            // Only our context runs on this connection.
            return Ok(Reply::Other);
        }
        Ok(match (a.kind.as_str(), a.data) {
            ("chunk", Some(data)) if !data.is_empty() => Reply::Audio(data),
            ("done", _) => Reply::Done,
            _ => Reply::Other,
        })
    }

    fn cancel(&self) -> Option<String> {
        Some(json(&Cancel {
            context_id: &self.context_id,
            cancel: true,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> CartesiaSettings {
        CartesiaSettings {
            base_url: "ws://x".into(),
            api_key: "sk_car_secret".into(),
            version: "2025-04-16".into(),
            model_id: "sonic-2".into(),
            voice_id: "v".into(),
            language: "en".into(),
            sample_rate: 16000,
            timeout: Duration::from_secs(1),
            stream_idle: Duration::from_secs(1),
            max_message_bytes: 1 << 20,
        }
    }

    #[test]
    fn debug_hides_the_key() {
        assert!(!format!("{:?}", settings()).contains("sk_car_secret"));
    }

    #[test]
    fn reads_the_vendor_messages() {
        let w = CartesiaWire {
            context_id: "vg-1".into(),
        };
        assert_eq!(
            w.parse(br#"{"type":"chunk","data":"AAA=","done":false,"status_code":206,"step_time":1,"context_id":"vg-1"}"#),
            Ok(Reply::Audio("AAA=".into()))
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
