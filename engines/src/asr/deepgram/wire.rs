//! Deepgram's streaming listen protocol, without a socket: the request URL, the control messages
//! voicegate sends, and a parser of what the server sends back.
//!
//! The server speaks JSON text messages, each with a `type`:
//! - `Results`: a transcript of the audio so far, for a stretch of it
//!   (`channel.alternatives[0].transcript`, with the model's `confidence` in it, 0 to 1).
//!   `is_final: false` is an interim hypothesis that a later message replaces; `is_final: true`
//!   settles that stretch (later stretches follow);
//!   `speech_final: true` (on a final) means Deepgram's own endpointing heard the speaker stop.
//! - `Metadata`: a summary, sent last after a `CloseStream`; the server then closes.
//! - `SpeechStarted`, `UtteranceEnd`: voice activity events (only when asked for; ignored).
//! - `Error` (`description`, `message`, `variant`): the server gives up; it closes next.
//!
//! The client sends audio as binary frames (here 16 kHz mono linear16, little-endian) and three
//! control messages: `KeepAlive` (keeps an idle stream open: the server closes one with no audio
//! for about 10 s), `Finalize` (flush without closing; unused here) and `CloseStream` (flush,
//! send the last results and `Metadata`, then close).

use serde::Deserialize;

/// The control message that keeps a stream open while no audio flows.
pub const KEEP_ALIVE: &str = r#"{"type":"KeepAlive"}"#;
/// The control message that ends a stream: the server flushes its results, sends `Metadata`
/// and closes.
pub const CLOSE_STREAM: &str = r#"{"type":"CloseStream"}"#;

/// What the listen URL asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenParams<'a> {
    /// Model, e.g. `nova-3`; empty leaves it to the server.
    pub model: &'a str,
    /// BCP-47 language, e.g. `en-US`; empty leaves it to the server.
    pub language: &'a str,
    /// Words to boost (each may carry an intensifier, `word:2`).
    pub keywords: &'a [String],
    /// Silence (ms) after which Deepgram marks `speech_final`; 0 turns its endpointing off.
    pub endpointing_ms: u32,
}

/// `{base_url}/v1/listen?...` for 16 kHz mono linear16 with interim results.
pub fn listen_url(base_url: &str, p: &ListenParams<'_>) -> String {
    let mut url = format!(
        "{}/v1/listen?encoding=linear16&sample_rate={}&channels=1&interim_results=true",
        base_url.trim_end_matches('/'),
        voicegate_core::frame::SPEECH_RATE
    );
    let mut param = |name: &str, value: &str| {
        url.push('&');
        url.push_str(name);
        url.push('=');
        percent_encode(value, &mut url);
    };
    if !p.model.is_empty() {
        param("model", p.model);
    }
    if !p.language.is_empty() {
        param("language", p.language);
    }
    if p.endpointing_ms == 0 {
        param("endpointing", "false");
    } else {
        param("endpointing", &p.endpointing_ms.to_string());
    }
    for k in p.keywords {
        param("keywords", k);
    }
    url
}

/// Appends `value` to `out` with everything but RFC 3986's unreserved characters (and `:`,
/// which Deepgram's keyword intensifiers use) percent-encoded.
fn percent_encode(value: &str, out: &mut String) {
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// A message from the server, as far as voicegate needs it.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// A transcript (empty when the stretch held no words).
    Results {
        /// The first alternative's text, trimmed.
        transcript: String,
        /// The first alternative's confidence (0 to 1), when it has words and gives one.
        confidence: Option<f32>,
        /// The stretch is settled.
        is_final: bool,
        /// Deepgram's endpointing heard the speaker stop.
        speech_final: bool,
    },
    /// The summary after `CloseStream`.
    Metadata,
    /// The server failed the stream: its description.
    Error(String),
    /// Anything else (`SpeechStarted`, `UtteranceEnd`, a type added later): ignored.
    Other,
}

/// Why a text message is not a server message.
#[derive(Debug, thiserror::Error)]
#[error("not a Deepgram message: {0}")]
pub struct BadMessage(#[source] serde_json::Error);

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    is_final: bool,
    #[serde(default)]
    speech_final: bool,
    /// An object in `Results`, a list of channel numbers in `SpeechStarted` and `UtteranceEnd`:
    /// read by type.
    #[serde(default)]
    channel: serde_json::Value,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct Channel {
    #[serde(default)]
    alternatives: Vec<Alternative>,
}

#[derive(Deserialize)]
struct Alternative {
    #[serde(default)]
    transcript: String,
    #[serde(default)]
    confidence: Option<f64>,
}

/// Parses one text message from the server.
pub fn parse(text: &str) -> Result<ServerMessage, BadMessage> {
    let raw: Raw = serde_json::from_str(text).map_err(BadMessage)?;
    Ok(match raw.kind.as_str() {
        "Results" => {
            let first = serde_json::from_value::<Channel>(raw.channel)
                .map_err(BadMessage)?
                .alternatives
                .into_iter()
                .next();
            let transcript = first
                .as_ref()
                .map(|a| a.transcript.trim().to_owned())
                .unwrap_or_default();
            // A stretch without words has nothing to be sure of (Deepgram sends 0 there).
            let confidence = first
                .and_then(|a| a.confidence)
                .filter(|_| !transcript.is_empty())
                .map(|c| c.clamp(0.0, 1.0) as f32);
            ServerMessage::Results {
                transcript,
                confidence,
                is_final: raw.is_final,
                speech_final: raw.speech_final,
            }
        }
        "Metadata" => ServerMessage::Metadata,
        "Error" => ServerMessage::Error(
            [raw.description, raw.message]
                .into_iter()
                .flatten()
                .filter(|s| !s.trim().is_empty())
                .collect::<Vec<_>>()
                .join(": "),
        ),
        _ => ServerMessage::Other,
    })
}

/// One utterance's transcript as the results arrive: the settled stretches and the current
/// interim hypothesis, each with its confidence.
#[derive(Debug, Default)]
pub struct Transcript {
    /// Settled stretches, in order.
    finals: Vec<Stretch>,
    /// The hypothesis for the stretch after them (empty text: none).
    interim: Stretch,
}

#[derive(Debug, Default)]
struct Stretch {
    text: String,
    confidence: Option<f32>,
}

impl Transcript {
    /// Takes a `Results` message's text and confidence; returns the whole text so far (settled
    /// stretches and the interim one, space-separated).
    pub fn update(&mut self, transcript: &str, confidence: Option<f32>, is_final: bool) -> String {
        if is_final {
            if !transcript.is_empty() {
                self.finals.push(Stretch {
                    text: transcript.to_owned(),
                    confidence,
                });
            }
            self.interim.text.clear();
            self.interim.confidence = None;
        } else {
            transcript.clone_into(&mut self.interim.text);
            self.interim.confidence = confidence;
        }
        self.text(true)
    }

    /// The stretches with words: the settled ones, and the interim one if asked for.
    fn stretches(&self, with_interim: bool) -> impl Iterator<Item = &Stretch> {
        self.finals
            .iter()
            .chain(Some(&self.interim).filter(|i| with_interim && !i.text.is_empty()))
    }

    /// The settled text (`with_interim: false`), or everything heard so far.
    pub fn text(&self, with_interim: bool) -> String {
        let parts: Vec<&str> = self
            .stretches(with_interim)
            .map(|s| s.text.as_str())
            .collect();
        parts.join(" ")
    }

    /// How sure the server is of [`Transcript::text`]: its stretches' confidences averaged by
    /// their words (one stretch: its own). `None` without words, or when a stretch came without
    /// one.
    pub fn confidence(&self, with_interim: bool) -> Option<f32> {
        let (mut sum, mut words) = (0.0f32, 0usize);
        for s in self.stretches(with_interim) {
            let n = s.text.split_whitespace().count();
            sum += s.confidence? * n as f32;
            words += n;
        }
        (words > 0).then(|| sum / words as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Results` message as the vendor documents it (trimmed of word timings).
    const RESULTS: &str = r#"{"type":"Results","channel_index":[0,1],"duration":1.98,"start":5.99,
        "is_final":true,"speech_final":true,"from_finalize":false,
        "channel":{"alternatives":[{"transcript":" Another big problem ","confidence":0.99,
        "words":[{"word":"another","start":6.0,"end":6.2,"confidence":0.99}]}]},
        "metadata":{"request_id":"x","model_info":{"name":"general","version":"1","arch":"nova-3"},
        "model_uuid":"y"}}"#;

    #[test]
    fn parses_results_metadata_errors_and_ignores_the_rest() {
        assert_eq!(
            parse(RESULTS).unwrap(),
            ServerMessage::Results {
                transcript: "Another big problem".into(),
                confidence: Some(0.99),
                is_final: true,
                speech_final: true
            }
        );
        // An interim result leaves out the flags it does not set; no alternatives is no text.
        assert_eq!(
            parse(r#"{"type":"Results","channel":{"alternatives":[]}}"#).unwrap(),
            ServerMessage::Results {
                transcript: String::new(),
                confidence: None,
                is_final: false,
                speech_final: false
            }
        );
        // No words, no confidence (the server's 0 there means nothing); no field, none; a value
        // out of range is held to it.
        for (alternative, confidence) in [
            (r#"{"transcript":"","confidence":0.0}"#, None),
            (r#"{"transcript":"yes"}"#, None),
            (r#"{"transcript":"yes","confidence":1.5}"#, Some(1.0)),
            (r#"{"transcript":"yes","confidence":-1}"#, Some(0.0)),
        ] {
            let text =
                format!(r#"{{"type":"Results","channel":{{"alternatives":[{alternative}]}}}}"#);
            let ServerMessage::Results { confidence: c, .. } = parse(&text).unwrap() else {
                panic!("{text}");
            };
            assert_eq!(c, confidence, "{text}");
        }
        assert_eq!(
            parse(r#"{"type":"Metadata","request_id":"r","duration":0.0,"channels":0}"#).unwrap(),
            ServerMessage::Metadata
        );
        assert_eq!(
            parse(r#"{"type":"Error","description":"Failed to decode audio","message":"DATA-0000","variant":"x"}"#)
                .unwrap(),
            ServerMessage::Error("Failed to decode audio: DATA-0000".into())
        );
        for other in [
            r#"{"type":"SpeechStarted","channel":[0],"timestamp":1.2}"#,
            r#"{"type":"UtteranceEnd","channel":[0,1],"last_word_end":2.3}"#,
        ] {
            assert_eq!(parse(other).unwrap(), ServerMessage::Other);
        }
        for bad in [
            "",
            "[]",
            "{}",
            r#"{"type":1}"#,
            "not json",
            r#"{"type":"Results","channel":[0]}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_transcript_joins_settled_stretches_and_replaces_the_interim_one() {
        let mut t = Transcript::default();
        assert_eq!(t.confidence(true), None, "no words yet");
        assert_eq!(t.update("hello", Some(0.5), false), "hello");
        assert_eq!(t.confidence(true), Some(0.5));
        assert_eq!(t.update("hello there", Some(0.6), false), "hello there");
        assert_eq!(t.confidence(false), None, "nothing settled");
        assert_eq!(t.update("hello there", Some(0.8), true), "hello there");
        assert_eq!(t.confidence(false), Some(0.8));
        assert_eq!(t.update("how", Some(0.2), false), "hello there how");
        // Two words at 0.8 and one at 0.2.
        assert!((t.confidence(true).unwrap() - 0.6).abs() < 1e-6);
        assert_eq!(
            t.update("", None, true),
            "hello there",
            "an empty final settles nothing"
        );
        assert_eq!(t.confidence(true), Some(0.8), "the interim one is gone");
        assert_eq!(
            t.update("how are you", Some(0.4), false),
            "hello there how are you"
        );
        assert_eq!(t.text(false), "hello there");
        assert_eq!(
            t.update("how are you", Some(0.3), true),
            "hello there how are you"
        );
        assert_eq!(t.text(false), "hello there how are you");
        // Two words at 0.8, three at 0.3.
        assert!((t.confidence(false).unwrap() - 0.5).abs() < 1e-6);
        // A stretch without a confidence leaves the whole without one.
        t.update("fine", None, false);
        assert_eq!(t.confidence(true), None);
        assert!(t.confidence(false).is_some());
    }

    #[test]
    fn the_url_asks_for_the_audio_as_sent_and_encodes_options() {
        let keywords = ["voicegate:2".to_owned(), "São Paulo".to_owned()];
        let url = listen_url(
            "wss://api.deepgram.com/",
            &ListenParams {
                model: "nova-3",
                language: "en-US",
                keywords: &keywords,
                endpointing_ms: 300,
            },
        );
        assert_eq!(
            url,
            "wss://api.deepgram.com/v1/listen?encoding=linear16&sample_rate=16000&channels=1\
             &interim_results=true&model=nova-3&language=en-US&endpointing=300\
             &keywords=voicegate:2&keywords=S%C3%A3o%20Paulo"
        );
        let bare = listen_url(
            "ws://127.0.0.1:9",
            &ListenParams {
                model: "",
                language: "",
                keywords: &[],
                endpointing_ms: 0,
            },
        );
        assert!(
            bare.ends_with("interim_results=true&endpointing=false"),
            "{bare}"
        );
        // Nothing in a value can add a parameter.
        let sneaky = listen_url(
            "ws://h",
            &ListenParams {
                model: "a&language=xx",
                language: "",
                keywords: &[],
                endpointing_ms: 10,
            },
        );
        assert!(sneaky.contains("model=a%26language%3Dxx&"), "{sneaky}");
    }
}
