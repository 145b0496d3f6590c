//! ElevenLabs' stream-input WebSocket: text in, base64 PCM out.
//!
//! Each segment the player cuts is one vendor stream on its own connection
//! (`GET {base_url}/v1/text-to-speech/{voice_id}/stream-input?model_id=…&output_format=pcm_{rate}`,
//! the key in the `xi-api-key` header): the opening message (`{"text": " "}` with the voice
//! settings), the segment's text with `flush: true` so generation starts at once, and the empty
//! text that ends the input. The vendor answers `{"audio": "<base64 PCM>", …}` messages and
//! `{"isFinal": true}` at the end. The player sends the first segment of a `tts.stream` as soon
//! as it is cut, so audio starts before the stream's last chunk; dropping the synthesis closes
//! the socket (the vendor stops generating). [`ws`](super::ws) holds the deadlines and bounds.
//!
//! Why one connection per segment: the stream-input API reports no boundary between the audio
//! of two flushed texts on one socket, and the player must attribute every sample to its segment
//! (`tts.interrupt`'s `played_text` depends on it). The player prefetches, so the next segment's
//! connection is set up while the current one plays.

use super::ws::{self, Limits, Reply, Request, Vendor, json};
use super::{SynthStream, TtsEngine, TtsError, TtsFactory};
use secrecy::{ExposeSecret, SecretString};
use std::rc::Rc;
use std::time::Duration;
use voicegate_core::session::{InvalidOption, TtsOptions};

/// The engine's name, for logs and errors.
pub(super) const ENGINE: &str = "elevenlabs";

/// The PCM rates the API offers (`output_format = pcm_<rate>`).
pub const SAMPLE_RATES: [u32; 6] = [8000, 16000, 22050, 24000, 44100, 48000];

/// The `voice_settings.speed` the API takes.
pub const SPEED_RANGE: std::ops::RangeInclusive<f32> = 0.7..=1.2;

/// Settings of the engine. `Debug` shows everything but the key.
#[derive(Debug, Clone)]
pub struct ElevenLabsSettings {
    /// Base URL, `wss://api.elevenlabs.io`.
    pub base_url: String,
    /// The `xi-api-key`; empty sends none.
    pub api_key: SecretString,
    /// Voice id.
    pub voice_id: String,
    /// Model id, e.g. `eleven_flash_v2_5`.
    pub model_id: String,
    /// The PCM rate asked for (one of [`SAMPLE_RATES`]); the speaker resamples it.
    pub sample_rate: u32,
    /// Longest wait for the connection.
    pub timeout: Duration,
    /// Longest quiet time once connected (`tts.stream_idle_timeout_ms`).
    pub stream_idle: Duration,
    /// Largest message from the vendor, bytes.
    pub max_message_bytes: usize,
}

/// The factory.
pub struct ElevenLabsTts {
    settings: ElevenLabsSettings,
}

impl ElevenLabsTts {
    /// A factory for `settings`.
    pub fn new(settings: ElevenLabsSettings) -> Self {
        ElevenLabsTts { settings }
    }
}

impl TtsFactory for ElevenLabsTts {
    fn for_call(&self) -> Rc<dyn TtsEngine> {
        Rc::new(ElevenLabsEngine {
            settings: self.settings.clone(),
            speed: None,
        })
    }

    /// `voice`: a voice id (letters and digits); `speed`: `voice_settings.speed`, within
    /// [`SPEED_RANGE`].
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
                "ElevenLabs takes a speed of 0.7 to 1.2",
            ));
        }
        Ok(Rc::new(ElevenLabsEngine {
            settings: s,
            speed: o.speed,
        }))
    }
}

struct ElevenLabsEngine {
    settings: ElevenLabsSettings,
    /// A session's speed, if it chose one.
    speed: Option<f32>,
}

/// The opening message: a single space, and the voice settings.
#[derive(serde::Serialize)]
struct Open {
    text: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    voice_settings: Option<VoiceSettings>,
}

#[derive(serde::Serialize)]
struct VoiceSettings {
    speed: f32,
}

/// Text to synthesize; `flush` makes the vendor generate what it holds now.
#[derive(serde::Serialize)]
struct Text<'a> {
    text: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    flush: bool,
}

impl TtsEngine for ElevenLabsEngine {
    fn name(&self) -> &'static str {
        ENGINE
    }

    fn sample_rate(&self) -> u32 {
        self.settings.sample_rate
    }

    fn synthesize(&self, text: &str) -> SynthStream {
        let s = &self.settings;
        let url = format!(
            "{}/v1/text-to-speech/{}/stream-input?model_id={}&output_format=pcm_{}",
            s.base_url.trim_end_matches('/'),
            s.voice_id,
            s.model_id,
            s.sample_rate
        );
        let mut headers = Vec::new();
        let key = s.api_key.expose_secret();
        if !key.is_empty() {
            headers.push(("xi-api-key", key.to_owned()));
        }
        // The API wants each text to end with a space (it marks the end of a word).
        let segment = format!("{} ", text.trim_end());
        let messages = vec![
            json(&Open {
                text: " ",
                voice_settings: self.speed.map(|speed| VoiceSettings { speed }),
            }),
            json(&Text {
                text: &segment,
                flush: true,
            }),
            // The end of the input: the vendor sends what is left, then `isFinal`.
            json(&Text {
                text: "",
                flush: false,
            }),
        ];
        ws::synthesize(
            Request {
                url,
                headers,
                messages,
            },
            ElevenLabsWire,
            Limits {
                connect: s.timeout,
                idle: s.stream_idle,
                max_message: s.max_message_bytes,
            },
            TtsError::ElevenLabs,
        )
    }
}

/// The vendor's messages.
struct ElevenLabsWire;

#[derive(serde::Deserialize)]
struct Answer {
    #[serde(default)]
    audio: Option<String>,
    #[serde(default, rename = "isFinal")]
    is_final: Option<bool>,
    #[serde(default)]
    error: Option<serde_json::Value>,
    #[serde(default)]
    message: Option<String>,
}

impl Vendor for ElevenLabsWire {
    fn parse(&self, text: &[u8]) -> Result<Reply, String> {
        let a: Answer =
            serde_json::from_slice(text).map_err(|e| format!("unreadable message: {e}"))?;
        if let Some(e) = a.error.filter(|e| !e.is_null()) {
            return Err(format!("{e}: {}", a.message.unwrap_or_default()));
        }
        match (a.audio.filter(|a| !a.is_empty()), a.is_final) {
            (Some(audio), _) => Ok(Reply::Audio(audio)),
            (None, Some(true)) => Ok(Reply::Done),
            (None, _) => Ok(Reply::Other),
        }
    }

    /// Closing the socket is the cancel.
    fn cancel(&self) -> Option<String> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ElevenLabsSettings {
        ElevenLabsSettings {
            base_url: "ws://x".into(),
            api_key: "xi-secret".into(),
            voice_id: "v".into(),
            model_id: "m".into(),
            sample_rate: 16000,
            timeout: Duration::from_secs(1),
            stream_idle: Duration::from_secs(1),
            max_message_bytes: 1 << 20,
        }
    }

    #[test]
    fn debug_hides_the_key() {
        assert!(!format!("{:?}", settings()).contains("xi-secret"));
    }

    #[test]
    fn reads_the_vendor_messages() {
        let w = ElevenLabsWire;
        assert_eq!(
            w.parse(br#"{"audio":"AAA=","isFinal":null,"alignment":{}}"#),
            Ok(Reply::Audio("AAA=".into()))
        );
        assert_eq!(
            w.parse(br#"{"audio":null,"isFinal":true}"#),
            Ok(Reply::Done)
        );
        assert_eq!(w.parse(br#"{"isFinal":true}"#), Ok(Reply::Done));
        assert_eq!(w.parse(br#"{"audio":""}"#), Ok(Reply::Other));
        let e = w
            .parse(br#"{"message":"bad voice","error":"invalid_request","code":1008}"#)
            .unwrap_err();
        assert!(e.contains("bad voice"), "{e}");
        assert!(w.parse(b"not json").is_err());
    }

    #[test]
    fn options_check_voice_and_speed() {
        let f = ElevenLabsTts::new(settings());
        let opt = |voice: Option<&str>, speed| TtsOptions {
            voice: voice.map(Into::into),
            speed,
        };
        assert!(
            f.with_options(&opt(Some("21m00Tcm4TlvDq8ikWAM"), Some(1.1)))
                .is_ok()
        );
        let e = f.with_options(&opt(Some("../x"), None)).err().unwrap();
        assert_eq!(e.option, "voice");
        let e = f.with_options(&opt(None, Some(2.0))).err().unwrap();
        assert_eq!(e.option, "speed");
    }
}
