//! ElevenLabs' stream-input WebSocket: one stream per utterance, fed as the text arrives.
//!
//! An utterance is one vendor stream on one connection
//! (`GET {base_url}/v1/text-to-speech/{voice_id}/stream-input?model_id=…&output_format=pcm_{rate}&sync_alignment=true`,
//! the key in the `xi-api-key` header): the opening message (`{"text": " "}` with the voice
//! settings), then each segment the player cuts as it comes, with `flush: true` so its audio
//! starts at once while the stream keeps the utterance's prosody, and at the end the empty text
//! that ends the input. The vendor answers `{"audio": "<base64 PCM>", "alignment": {"chars":
//! […], "charStartTimesMs": […], …}, …}` messages and `{"isFinal": true}` at the end.
//!
//! The stream marks no boundary between two flushed texts, so the audio is cut into segments by
//! its alignment (`sync_alignment=true` puts each chunk's characters in it): a segment ends where
//! the first letter or digit of the next one starts (letters and digits are counted, so spacing
//! and punctuation the vendor adds or drops do not matter). The alignment gives where each
//! character starts, so the audio after the start of a segment's last letter (the rest of that
//! sound, its punctuation) is the segment's too, even in later chunks: when no later segment's
//! letter comes, the segment ends once the vendor goes quiet ([`Wire::quiet`]: it has generated
//! what the flush asked for, and a streamed segment does not wait for the next text), or with the
//! stream's `isFinal` (the input is ended as soon as the last segment was sent). A chunk without
//! alignment belongs to the segment in progress. Dropping the utterance closes the socket (the
//! vendor stops generating). [`ws`](super::ws) holds the stream, the deadlines and bounds.

use super::ws::{ContextUtterance, END_OF_CHUNK, Limits, Preconnect, Reply, Request, Wire, json};
use super::{SynthStream, TtsEngine, TtsError, TtsFactory, UtteranceSynth};
use secrecy::{ExposeSecret, SecretString};
use std::collections::VecDeque;
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
    /// Longest a connection opened ahead waits for an utterance (`tts.preconnect_ms`; zero:
    /// none are opened).
    pub preconnect: Duration,
    /// What the connection to the server trusts (`vendor_tls`).
    pub tls: crate::tls::ClientTls,
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
            ahead: Rc::default(),
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
            ahead: Rc::default(),
        }))
    }
}

struct ElevenLabsEngine {
    settings: ElevenLabsSettings,
    /// A session's speed, if it chose one.
    speed: Option<f32>,
    /// The connection opened ahead for the next utterance.
    ahead: Rc<Preconnect>,
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

    /// One segment in a stream of its own.
    fn synthesize(&self, text: &str) -> SynthStream {
        self.stream().segment(text)
    }

    fn utterance(self: Rc<Self>) -> Box<dyn UtteranceSynth> {
        Box::new(self.stream())
    }

    fn prepare(&self) {
        self.ahead
            .prepare(|| Self::request(&self.settings), self.limits());
    }
}

impl ElevenLabsEngine {
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
    fn request(s: &ElevenLabsSettings) -> Request {
        let url = format!(
            "{}/v1/text-to-speech/{}/stream-input?model_id={}&output_format=pcm_{}&sync_alignment=true",
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
        Request {
            url,
            headers,
            tls: s.tls.clone(),
        }
    }

    /// An utterance's stream.
    fn stream(&self) -> ContextUtterance {
        let s = self.settings.clone();
        let speed = self.speed;
        ContextUtterance::new(
            Box::new(move || {
                let wire = ElevenLabsWire {
                    speed,
                    owed: VecDeque::new(),
                    spoken: 0,
                };
                (Self::request(&s), Box::new(wire))
            }),
            self.limits(),
            TtsError::ElevenLabs,
            self.ahead.clone(),
        )
    }
}

/// The vendor's messages for one stream.
struct ElevenLabsWire {
    speed: Option<f32>,
    /// For each segment sent whose letters and digits have not all been spoken, how many are
    /// still to come.
    owed: VecDeque<usize>,
    /// Segments before those, still waiting, whose letters and digits were all spoken: their
    /// audio goes on (the rest of the last sound, punctuation) until a later segment's first
    /// letter or digit starts, the vendor goes quiet, or `isFinal`.
    spoken: usize,
}

/// What the alignment counts: letters and digits.
fn counted(c: char) -> bool {
    c.is_alphanumeric()
}

#[derive(serde::Deserialize)]
struct Answer {
    #[serde(default)]
    audio: Option<String>,
    #[serde(default, rename = "isFinal")]
    is_final: Option<bool>,
    #[serde(default)]
    alignment: Option<Alignment>,
    #[serde(default)]
    error: Option<serde_json::Value>,
    #[serde(default)]
    message: Option<String>,
}

/// The characters a chunk speaks, and where each starts in it.
#[derive(serde::Deserialize)]
struct Alignment {
    #[serde(default)]
    chars: Vec<String>,
    #[serde(default, rename = "charStartTimesMs")]
    starts: Vec<f64>,
}

impl ElevenLabsWire {
    /// Where segments end within a chunk that speaks `alignment`: where a letter or digit of a
    /// later segment starts, for the segments spoken before it.
    fn ends(&mut self, alignment: Option<Alignment>) -> Vec<u32> {
        let mut ends = Vec::new();
        self.settle();
        let Some(a) = alignment else {
            return ends;
        };
        for (i, ch) in a.chars.iter().enumerate() {
            let n = ch.chars().filter(|&c| counted(c)).count();
            if n == 0 {
                continue;
            }
            // With no segment owing letters, the vendor spoke more than the text had (a number
            // read out): it is the last spoken segment's.
            if self.spoken > 0 && !self.owed.is_empty() {
                let at = a
                    .starts
                    .get(i)
                    .map_or(END_OF_CHUNK, |&ms| ms.max(0.0) as u32);
                ends.extend(std::iter::repeat_n(at, self.spoken));
                self.spoken = 0;
            }
            for _ in 0..n {
                let Some(front) = self.owed.front_mut() else {
                    break;
                };
                *front = front.saturating_sub(1);
                if *front == 0 {
                    self.owed.pop_front();
                    self.spoken += 1;
                    self.settle();
                }
            }
        }
        ends
    }

    /// Segments with nothing to count, next in line, are spoken as soon as those before them.
    fn settle(&mut self) {
        while self.owed.front() == Some(&0) {
            self.owed.pop_front();
            self.spoken += 1;
        }
    }
}

impl Wire for ElevenLabsWire {
    fn open(&mut self) -> Vec<String> {
        vec![json(&Open {
            text: " ",
            voice_settings: self.speed.map(|speed| VoiceSettings { speed }),
        })]
    }

    /// The text (the API wants each to end with a space: it marks the end of a word), flushed.
    fn segment(&mut self, text: &str) -> Vec<String> {
        self.owed
            .push_back(text.chars().filter(|&c| counted(c)).count());
        vec![json(&Text {
            text: &format!("{} ", text.trim_end()),
            flush: true,
        })]
    }

    /// The empty text: the vendor sends what is left, then `isFinal`.
    fn finish(&mut self) -> Vec<String> {
        vec![json(&Text {
            text: "",
            flush: false,
        })]
    }

    /// One stream for the utterance; the vendor closes it after its own inactivity timeout, and
    /// the next segment opens another.
    fn linger(&self) -> Option<Duration> {
        None
    }

    fn renew(&mut self) {}

    /// The segments whose letters and digits were all spoken: what the vendor generates for a
    /// flush comes at once, so nothing more of them is coming.
    fn quiet(&mut self) -> usize {
        self.settle();
        std::mem::take(&mut self.spoken)
    }

    /// Closing the socket is the cancel.
    fn cancel(&self) -> Option<String> {
        None
    }

    fn parse(&mut self, text: &[u8]) -> Result<Reply, String> {
        let a: Answer =
            serde_json::from_slice(text).map_err(|e| format!("unreadable message: {e}"))?;
        if let Some(e) = a.error.filter(|e| !e.is_null()) {
            return Err(format!("{e}: {}", a.message.unwrap_or_default()));
        }
        match (a.audio.filter(|a| !a.is_empty()), a.is_final) {
            (Some(b64), _) => Ok(Reply::Audio {
                b64,
                ends: self.ends(a.alignment),
            }),
            (None, Some(true)) => {
                self.owed.clear();
                self.spoken = 0;
                Ok(Reply::Done)
            }
            (None, _) => Ok(Reply::Other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ElevenLabsSettings {
        ElevenLabsSettings {
            base_url: "ws://x".into(),
            tls: crate::tls::ClientTls::public(),
            api_key: "xi-secret".into(),
            voice_id: "v".into(),
            model_id: "m".into(),
            sample_rate: 16000,
            timeout: Duration::from_secs(1),
            stream_idle: Duration::from_secs(1),
            max_message_bytes: 1 << 20,
            preconnect: Duration::ZERO,
        }
    }

    #[test]
    fn debug_hides_the_key() {
        assert!(!format!("{:?}", settings()).contains("xi-secret"));
    }

    #[test]
    fn reads_the_vendor_messages() {
        let mut w = ElevenLabsWire {
            speed: None,
            owed: VecDeque::new(),
            spoken: 0,
        };
        assert_eq!(
            w.parse(br#"{"audio":"AAA=","isFinal":null,"alignment":null}"#),
            Ok(Reply::Audio {
                b64: "AAA=".into(),
                ends: vec![]
            })
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

    /// A chunk of audio speaking `text`, one character every 10 ms.
    fn chunk(text: &str) -> Vec<u8> {
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let starts: Vec<usize> = (0..chars.len()).map(|i| i * 10).collect();
        serde_json::to_vec(&serde_json::json!({
            "audio": "AAAA",
            "isFinal": null,
            "alignment": {"chars": chars, "charStartTimesMs": starts, "charDurationsMs": starts},
        }))
        .unwrap()
    }

    #[test]
    fn the_alignment_cuts_the_audio_into_segments() {
        let mut w = ElevenLabsWire {
            speed: None,
            owed: VecDeque::new(),
            spoken: 0,
        };
        w.segment("Hi, Bo.");
        w.segment("OK then!");
        w.segment("...");
        w.segment("Next one.");
        let ends = |w: &mut ElevenLabsWire, text: &str| match w.parse(&chunk(text)).unwrap() {
            Reply::Audio { ends, .. } => ends,
            r => panic!("{r:?}"),
        };
        // "Hi" and half of "Bo": no end yet.
        assert_eq!(ends(&mut w, "Hi, B"), Vec::<u32>::new());
        // "o" completes the first segment, which ends where "OK" starts (30 ms); "then"
        // completes the second, and the punctuation-only segment after it too (nothing of it
        // to count), but their audio may go on: no end yet.
        assert_eq!(ends(&mut w, "o. OK then"), [30]);
        // They end where "Next" starts: the "!" is the second's.
        assert_eq!(ends(&mut w, "!Next"), [10, 10]);
        // The last is complete with " one.", but what follows the start of its "e" is still its
        // own: a later chunk of it (the rest of the sound, the "."), then more than its text had.
        assert_eq!(ends(&mut w, " one"), Vec::<u32>::new());
        assert_eq!(ends(&mut w, "."), Vec::<u32>::new());
        assert_eq!(ends(&mut w, "s"), Vec::<u32>::new());
        // It ends when the vendor goes quiet.
        assert_eq!(w.quiet(), 1);
        assert_eq!(w.quiet(), 0);
        assert!(w.owed.is_empty());
    }

    #[test]
    fn the_end_marker_ends_the_segments_spoken() {
        let mut w = ElevenLabsWire {
            speed: None,
            owed: VecDeque::new(),
            spoken: 0,
        };
        w.segment("Done.");
        assert!(matches!(w.parse(&chunk("Done")), Ok(Reply::Audio { .. })));
        assert_eq!(w.parse(br#"{"isFinal":true}"#), Ok(Reply::Done));
        assert_eq!(w.quiet(), 0, "nothing left waiting");
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
