//! The dialog WebSocket's wire protocol (compatible with the original) and its dial URL.
//!
//! voicegate is the client: one WebSocket per call to the dialog app. Every message is one JSON
//! object in a text frame. Events go out ([`Event::to_json`]); commands come in
//! ([`parse_command`]). Only this module knows that JSON.
//!
//! Differences from the original, all compatible: `ok`, `fatal` and `end` are always present on
//! the events that carry them (the original omitted `false`, so apps already treat a missing
//! value as false); a malformed or unknown command is reported as an error value for logging,
//! never acted on.

use crate::json_keys::fold_keys;
use crate::session::{OptionError, Session, SessionUpdate};
use crate::speech::{PlayedSegment, TtsLimit};
use crate::untrusted::shown;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::json;
use url::Url;

/// Lost, recovered and concealed audio of an utterance, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetReport {
    /// Audio lost on the way (packets that never arrived in time).
    pub lost_ms: u32,
    /// Of that, rebuilt from in-band FEC.
    pub recovered_ms: u32,
    /// Of that, concealed by PLC.
    pub concealed_ms: u32,
}

/// An event for the dialog app.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Media is up and the dialog socket connected.
    CallStarted {
        /// Caller address and user agent.
        from: String,
        /// PCM rate inside the call.
        pcm_hz: u32,
        /// Who is calling, as the call token's `sub` says (absent without a token or `sub`).
        sub: Option<String>,
    },
    /// Interim recognition.
    AsrPartial {
        /// Text so far.
        text: String,
        /// How sure the recognizer is of it (0 to 1), if it says (an extra field).
        confidence: Option<f32>,
    },
    /// A finished user utterance.
    AsrFinal {
        /// The text.
        text: String,
        /// How sure the recognizer is of it (0 to 1), if it says (an extra field).
        confidence: Option<f32>,
        /// What the network did to its audio (extra fields; apps that do not know them ignore
        /// them).
        net: Option<NetReport>,
        /// Its timing and whether it was a backchannel (extra fields too).
        turn: Option<TurnReport>,
    },
    /// The recognizer failed.
    AsrError {
        /// What happened.
        message: String,
        /// Recognition is off for the rest of the call.
        fatal: bool,
    },
    /// The caller's voice paused an utterance (`barge_in.mode = "confirmed"`): it keeps its
    /// place until their words confirm an interruption (`tts.interrupt`) or not (`tts.resumed`).
    TtsPaused {
        /// The utterance.
        utterance_id: String,
        /// Audio of it that left voicegate before the pause, ms.
        played_ms: u32,
    },
    /// A paused utterance plays on where it paused.
    TtsResumed {
        /// The utterance.
        utterance_id: String,
    },
    /// The first audio of an utterance left voicegate.
    TtsStarted {
        /// The utterance.
        utterance_id: String,
    },
    /// An utterance is over: played out (`ok`), or interrupted, failed, dropped or refused.
    TtsEnded {
        /// The utterance.
        utterance_id: String,
        /// Played completely.
        ok: bool,
        /// The limit that refused it or cut it short (`reason`, omitted when none did, so apps
        /// that do not know it see the event as before).
        reason: Option<TtsLimit>,
    },
    /// The caller talked over an utterance: what they heard of it.
    TtsInterrupt {
        /// The utterance.
        utterance_id: String,
        /// Audio of it that left voicegate, ms.
        played_ms: u32,
        /// Its segments as far as they were played.
        segments: Vec<PlayedSegment>,
    },
    /// A key press in the browser (RFC 4733).
    Dtmf {
        /// `0`-`9`, `*`, `#`, `A`-`D`.
        digit: char,
        /// The press ended.
        end: bool,
    },
    /// The caller's media stopped arriving (ICE disconnected: a network change, a tunnel, a
    /// laptop lid) or came back. Sent only after `call.started`, in pairs; a call whose media
    /// never comes back ends with `ice-failed`.
    CallMedia {
        /// What happened.
        state: MediaState,
    },
    /// The call ended.
    CallEnded {
        /// Why.
        reason: String,
        /// The file name of the call's recording, when one was written (`recording`, omitted
        /// otherwise).
        recording: Option<String>,
    },
    /// The browser page sent a message (`call.send(obj)` in `web/voicegate.js`; see
    /// [`crate::page`]).
    ClientMessage {
        /// What the page sent: any JSON value.
        data: serde_json::Value,
    },
    /// A `session.update` took effect: the call's session as it now stands.
    SessionUpdated {
        /// Every setting (see [`Session::to_value`]).
        session: Session,
    },
    /// A command could not be carried out (the call goes on), and nothing of it took effect.
    Error {
        /// What went wrong, for people.
        message: String,
        /// The `type` of the command it was about.
        command: &'static str,
        /// For `session.update`: each option it could not take (empty for other commands).
        errors: Vec<OptionError>,
    },
}

impl Event {
    /// The event's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::CallStarted { .. } => "call.started",
            Event::AsrPartial { .. } => "asr.partial",
            Event::AsrFinal { .. } => "asr.final",
            Event::TtsPaused { .. } => "tts.paused",
            Event::TtsResumed { .. } => "tts.resumed",
            Event::AsrError { .. } => "asr.error",
            Event::TtsStarted { .. } => "tts.started",
            Event::TtsEnded { .. } => "tts.ended",
            Event::TtsInterrupt { .. } => "tts.interrupt",
            Event::Dtmf { .. } => "dtmf",
            Event::CallMedia { .. } => "call.media",
            Event::CallEnded { .. } => "call.ended",
            Event::ClientMessage { .. } => "client.message",
            Event::SessionUpdated { .. } => "session.updated",
            Event::Error { .. } => "error",
        }
    }

    /// The event as its wire JSON for call `call_id`.
    pub fn to_json(&self, call_id: &str) -> String {
        let mut v = match self {
            Event::CallStarted { from, pcm_hz, sub } => {
                let mut v =
                    json!({"from": from, "to": "webrtc", "codec": "opus", "pcm_hz": pcm_hz});
                if let Some(sub) = sub {
                    v["sub"] = sub.as_str().into();
                }
                v
            }
            Event::AsrPartial { text, confidence } => {
                let mut v = json!({"text": text});
                if let Some(c) = confidence {
                    v["confidence"] = two_places(*c).into();
                }
                v
            }
            Event::AsrFinal {
                text,
                confidence,
                net,
                turn,
            } => {
                let mut v = json!({"text": text});
                if let Some(c) = confidence {
                    v["confidence"] = two_places(*c).into();
                }
                if let Some(n) = net {
                    v["lost_ms"] = n.lost_ms.into();
                    v["recovered_ms"] = n.recovered_ms.into();
                    v["concealed_ms"] = n.concealed_ms.into();
                }
                if let Some(t) = turn {
                    v["end_of_speech_ms"] = t.end_of_speech_ms.into();
                    if t.backchannel {
                        v["backchannel"] = true.into();
                    }
                }
                v
            }
            Event::TtsPaused {
                utterance_id,
                played_ms,
            } => json!({"utterance_id": utterance_id, "played_ms": played_ms}),
            Event::TtsResumed { utterance_id } => json!({"utterance_id": utterance_id}),
            Event::AsrError { message, fatal } => json!({"message": message, "fatal": fatal}),
            Event::TtsStarted { utterance_id } => json!({"utterance_id": utterance_id}),
            Event::TtsEnded {
                utterance_id,
                ok,
                reason,
            } => {
                let mut v = json!({"utterance_id": utterance_id, "ok": ok});
                if let Some(r) = reason {
                    v["reason"] = r.label().into();
                }
                v
            }
            Event::TtsInterrupt {
                utterance_id,
                played_ms,
                segments,
            } => json!({
                "utterance_id": utterance_id,
                "played_ms": played_ms,
                "played_text": PlayedSegment::join(segments),
                "played_segments": segments
                    .iter()
                    .map(|s| json!({"text": s.text, "played_ms": s.played_ms, "complete": s.complete}))
                    .collect::<Vec<_>>(),
            }),
            Event::Dtmf { digit, end } => json!({"digit": digit.to_string(), "end": end}),
            Event::CallMedia { state } => json!({"state": state.label()}),
            Event::CallEnded { reason, recording } => {
                let mut v = json!({"reason": reason});
                if let Some(file) = recording {
                    v["recording"] = file.as_str().into();
                }
                v
            }
            Event::ClientMessage { data } => json!({"data": data}),
            Event::SessionUpdated { session } => json!({"session": session.to_value()}),
            Event::Error {
                message,
                command,
                errors,
            } => {
                let mut v = json!({"message": message, "command": command});
                if !errors.is_empty() {
                    v["errors"] = errors
                        .iter()
                        .map(|e| json!({"option": e.option, "reason": e.reason}))
                        .collect::<Vec<_>>()
                        .into();
                }
                v
            }
        };
        v["type"] = self.kind().into();
        v["call_id"] = call_id.into();
        // Empty utterance ids are omitted, as the original does.
        if v.get("utterance_id").is_some_and(|u| u == "") {
            v.as_object_mut()
                .expect("built as an object")
                .remove("utterance_id");
        }
        v.to_string()
    }
}

/// A confidence as JSON: two decimals are all it means.
fn two_places(c: f32) -> f64 {
    (f64::from(c.clamp(0.0, 1.0)) * 100.0).round() / 100.0
}

/// An `asr.final`'s turn-taking fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TurnReport {
    /// From the caller's last voiced frame to the final being sent, ms.
    pub end_of_speech_ms: u64,
    /// Said over voicegate's speech and not taken as an interruption: only a backchannel
    /// ("mm-hmm", "yeah", `barge_in.backchannels`), or words the recognizer is unsure of
    /// (below `barge_in.min_confidence`); omitted when false.
    pub backchannel: bool,
}

/// The state a `call.media` event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaState {
    /// Nothing has arrived from the caller for `media.ice_disconnected_timeout_ms`: voicegate
    /// waits for the network to come back.
    Interrupted,
    /// Media flows again after an interruption.
    Restored,
}

impl MediaState {
    /// The wire value: `interrupted` or `restored`.
    pub fn label(self) -> &'static str {
        match self {
            MediaState::Interrupted => "interrupted",
            MediaState::Restored => "restored",
        }
    }
}

/// Metadata a dialog app may attach to speech commands (kept for logs and metrics).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct Meta {
    /// The model that produced the text.
    #[serde(default, rename = "llmModel", skip_serializing_if = "Option::is_none")]
    pub llm_model: Option<String>,
    /// LLM time to first token, ms.
    #[serde(
        default,
        rename = "llmFirstMs",
        skip_serializing_if = "Option::is_none"
    )]
    pub llm_first_ms: Option<f64>,
    /// LLM total time, ms.
    #[serde(default, rename = "llmWallMs", skip_serializing_if = "Option::is_none")]
    pub llm_wall_ms: Option<f64>,
    /// The user text the answer is for.
    #[serde(default, rename = "userText", skip_serializing_if = "Option::is_none")]
    pub user_text: Option<String>,
}

/// A command from the dialog app.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `tts.speak`: say `text` as one utterance, after what is queued.
    Speak {
        /// The utterance (may be empty).
        utterance_id: String,
        /// What to say.
        text: String,
        /// Metadata.
        meta: Option<Meta>,
    },
    /// `tts.stream` / `tts.stream.end`: a chunk of an utterance.
    Stream {
        /// The utterance (never empty).
        utterance_id: String,
        /// The chunk (may be empty).
        text: String,
        /// The stream is complete.
        end: bool,
        /// Metadata.
        meta: Option<Meta>,
    },
    /// `tts.interrupt`: stop now and drop the queue.
    Interrupt,
    /// `hangup`: end the call.
    Hangup {
        /// The reason given (trimmed, at most [`MAX_HANGUP_REASON_BYTES`]), or `dialog-hangup`.
        reason: String,
    },
    /// `client.send`: a message for the browser page (a `message` event of `web/voicegate.js`).
    ClientSend {
        /// Any JSON value.
        data: serde_json::Value,
    },
    /// `session.update`: change this call's engines and listening from now on (see
    /// [`crate::session`]). `errors` lists what the message itself got wrong; the call adds
    /// what the engines refuse, and carries the update out only when there is nothing.
    SessionUpdate {
        /// What it asks for.
        update: SessionUpdate,
        /// Unknown or invalid options.
        errors: Vec<OptionError>,
    },
    /// `recording.start`: record the call from now on (or again, after `recording.stop`).
    RecordingStart,
    /// `recording.stop`: stop recording (a later `recording.start` goes on in the same file).
    RecordingStop,
}

impl Command {
    /// The command as the dialog app sends it, for call `call_id`: the app's side of the
    /// protocol (the embedded demo app, tests). [`parse_command`] reads it back unchanged, except
    /// that an empty `hangup` reason is read as `dialog-hangup` and a longer one than
    /// [`MAX_HANGUP_REASON_BYTES`] is cut.
    pub fn to_json(&self, call_id: &str) -> String {
        let mut v = match self {
            Command::Speak {
                utterance_id,
                text,
                meta,
            } => {
                let mut v =
                    json!({"type": "tts.speak", "utterance_id": utterance_id, "text": text});
                if let Some(m) = meta {
                    v["meta"] = json!(m);
                }
                v
            }
            Command::Stream {
                utterance_id,
                text,
                end,
                meta,
            } => {
                let mut v =
                    json!({"type": "tts.stream", "utterance_id": utterance_id, "text": text});
                if *end {
                    v["stream_end"] = true.into();
                }
                if let Some(m) = meta {
                    v["meta"] = json!(m);
                }
                v
            }
            Command::Interrupt => json!({"type": "tts.interrupt"}),
            Command::Hangup { reason } => json!({"type": "hangup", "reason": reason}),
            Command::ClientSend { data } => json!({"type": "client.send", "data": data}),
            Command::SessionUpdate { update, .. } => {
                json!({"type": "session.update", "session": update.to_value()})
            }
            Command::RecordingStart | Command::RecordingStop => json!({"type": self.kind()}),
        };
        v["call_id"] = call_id.into();
        v.to_string()
    }

    /// One line for logs: the type, the utterance id (escaped and capped, see
    /// [`crate::untrusted`]) and the length of the text, never the text itself.
    pub fn summary(&self) -> String {
        match self {
            Command::Speak {
                utterance_id, text, ..
            }
            | Command::Stream {
                utterance_id, text, ..
            } => format!(
                "{} {:?}, {} bytes",
                self.kind(),
                shown(utterance_id),
                text.len()
            ),
            Command::Interrupt => self.kind().to_owned(),
            Command::Hangup { reason } => format!("hangup {:?}", shown(reason)),
            // Never the data: it is the app's, and may be anything.
            Command::ClientSend { .. } | Command::RecordingStart | Command::RecordingStop => {
                self.kind().to_owned()
            }
            Command::SessionUpdate { errors, .. } => {
                format!("session.update, {} invalid options", errors.len())
            }
        }
    }

    /// The command's `type`, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Speak { .. } => "tts.speak",
            Command::Stream { end: false, .. } => "tts.stream",
            Command::Stream { end: true, .. } => "tts.stream.end",
            Command::Interrupt => "tts.interrupt",
            Command::Hangup { .. } => "hangup",
            Command::ClientSend { .. } => "client.send",
            Command::SessionUpdate { .. } => "session.update",
            Command::RecordingStart => "recording.start",
            Command::RecordingStop => "recording.stop",
        }
    }
}

/// Why a message is not a command for this call. Each is logged and ignored; the app's strings
/// in it are shown escaped and capped (see [`crate::untrusted`]), so it cannot forge a log line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    /// Not a JSON object of the command shape (the parser's message may quote the app's text).
    #[error("malformed command: {}", shown(.0))]
    Malformed(String),
    /// A `type` we do not know.
    #[error("unknown command type {:?}", shown(.0))]
    Unknown(String),
    /// Addressed to another call.
    #[error("command for another call {:?}", shown(.0))]
    OtherCall(String),
    /// `tts.stream` without an `utterance_id`.
    #[error("{0} needs an utterance_id")]
    MissingUtteranceId(&'static str),
    /// `client.send` without `data` (or with `data: null`).
    #[error("client.send needs data")]
    MissingData,
}

#[derive(Deserialize)]
struct RawCommand {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    call_id: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    utterance_id: Option<String>,
    #[serde(default)]
    stream_end: Option<bool>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    meta: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    data: Option<serde_json::Value>,
    #[serde(default)]
    session: Option<serde_json::Value>,
}

/// [`RawCommand`]'s fields, for [`fold_keys`]: the original matched keys case-insensitively.
const COMMAND_FIELDS: [&str; 9] = [
    "type",
    "call_id",
    "text",
    "utterance_id",
    "stream_end",
    "reason",
    "meta",
    "data",
    "session",
];
/// [`Meta`]'s fields, for [`fold_keys`].
const META_FIELDS: [&str; 4] = ["llmModel", "llmFirstMs", "llmWallMs", "userText"];

/// A command's `meta` object, its keys matched case-insensitively. `null` is no meta.
fn parse_meta(raw: Option<&serde_json::value::RawValue>) -> Result<Option<Meta>, CommandError> {
    let malformed = |e: serde_json::Error| CommandError::Malformed(format!("meta: {e}"));
    match raw.map(|r| r.get()) {
        None | Some("null") => Ok(None),
        Some(text) => {
            let folded = fold_keys(text, &META_FIELDS).map_err(malformed)?;
            serde_json::from_str(&folded).map(Some).map_err(malformed)
        }
    }
}

/// Longest `hangup` reason kept, in bytes of UTF-8; a longer one is cut (on a character
/// boundary). The reason is the call's end reason: it goes back to the app in `call.ended`, and
/// the supervisor keeps it for every recently ended call, so it must not be as long as a dialog
/// message may be (`dialog.max_message_bytes`, 1 MiB by default). Reasons are short words such
/// as `resolved`; 256 bytes leaves room for a sentence.
pub const MAX_HANGUP_REASON_BYTES: usize = 256;

/// Longest reason in a WebSocket close frame, in bytes of UTF-8: a control frame's payload is
/// at most 125 bytes (RFC 6455 §5.5), and a close frame's starts with the 2-byte status code
/// (§5.5.1). A longer payload is a protocol error the app's library refuses (Node's `ws` fails
/// the connection), so the close frame would not be a clean close.
pub const MAX_CLOSE_REASON_BYTES: usize = 123;

/// `reason` as a close frame can carry it: its first [`MAX_CLOSE_REASON_BYTES`] bytes, cut on a
/// character boundary (the reason must be UTF-8, RFC 6455 §5.5.1). `call.ended` carries the whole
/// reason; the close frame's copy is only a courtesy.
pub fn close_reason(reason: &str) -> &str {
    cut_at_char(reason, MAX_CLOSE_REASON_BYTES)
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn cut_at_char(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    // A character is at most 4 bytes, so this looks at no more than 3 positions.
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Parses one text frame from the dialog app, for call `call_id`.
pub fn parse_command(frame: &str, call_id: &str) -> Result<Command, CommandError> {
    let malformed = |e: serde_json::Error| CommandError::Malformed(e.to_string());
    let folded = fold_keys(frame, &COMMAND_FIELDS).map_err(malformed)?;
    let raw: RawCommand = serde_json::from_str(&folded).map_err(malformed)?;
    let meta = parse_meta(raw.meta.as_deref())?;
    if let Some(target) = raw.call_id.as_deref().map(str::trim)
        && !target.is_empty()
        && target != call_id
    {
        return Err(CommandError::OtherCall(target.to_owned()));
    }
    let utterance_id = raw.utterance_id.unwrap_or_default().trim().to_owned();
    let text = raw.text.unwrap_or_default();
    match raw.kind.as_str() {
        "tts.speak" => Ok(Command::Speak {
            utterance_id,
            text,
            meta,
        }),
        kind @ ("tts.stream" | "tts.stream.end") => {
            if utterance_id.is_empty() {
                return Err(CommandError::MissingUtteranceId(if kind == "tts.stream" {
                    "tts.stream"
                } else {
                    "tts.stream.end"
                }));
            }
            Ok(Command::Stream {
                utterance_id,
                text,
                end: kind == "tts.stream.end" || raw.stream_end.unwrap_or(false),
                meta,
            })
        }
        "tts.interrupt" => Ok(Command::Interrupt),
        "hangup" => Ok(Command::Hangup {
            // Cut after trimming, and trimmed again: a cut may end on white space. What is left
            // is never empty: the trimmed reason starts with a character that is not white space.
            reason: raw
                .reason
                .map(|r| {
                    cut_at_char(r.trim(), MAX_HANGUP_REASON_BYTES)
                        .trim_end()
                        .to_owned()
                })
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "dialog-hangup".to_owned()),
        }),
        "client.send" => match raw.data {
            None | Some(serde_json::Value::Null) => Err(CommandError::MissingData),
            Some(data) => Ok(Command::ClientSend { data }),
        },
        "session.update" => {
            let (update, errors) = crate::session::parse_update(raw.session.as_ref());
            Ok(Command::SessionUpdate { update, errors })
        }
        "recording.start" => Ok(Command::RecordingStart),
        "recording.stop" => Ok(Command::RecordingStop),
        other => Err(CommandError::Unknown(other.to_owned())),
    }
}

/// What the offer contributes to the dial URL. The payload and the credentials are
/// [`SecretString`]s: `Debug` shows whether each is there, never its value, and only
/// [`dial_url`] reads them.
#[derive(Debug, Clone, Default)]
pub struct DialParams {
    /// The raw JSON text of `payload`, trimmed (it may carry the team's credentials).
    pub payload: Option<SecretString>,
    /// `apiKey`.
    pub api_key: Option<SecretString>,
    /// `apiSecret`.
    pub api_secret: Option<SecretString>,
    /// `agentId`.
    pub agent_id: Option<String>,
}

/// The value of an optional secret, for the one place that sends it.
fn exposed(secret: &Option<SecretString>) -> Option<&str> {
    secret.as_ref().map(|s| s.expose_secret())
}

/// Why the offer's dialog parameters are refused (a `400` at offer time).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DialParamsError {
    /// `payload` is not JSON.
    #[error("payload is not valid JSON: {0}")]
    InvalidPayload(String),
    /// `payload` is too large to travel in a URL: its size and the limit
    /// (`dialog.max_payload_bytes`), in bytes.
    #[error("payload is {0} bytes; the limit is {1}")]
    PayloadTooLarge(usize, usize),
}

impl DialParams {
    /// The original's precedence: a `payload` that is present and neither blank nor `null` is
    /// used alone; otherwise each non-blank credential is used. A payload longer than
    /// `max_payload_bytes` is refused: it travels in the dial URL's query, and WebSocket servers
    /// limit the length of the request line.
    pub fn from_offer(
        max_payload_bytes: usize,
        payload: Option<&str>,
        api_key: Option<&str>,
        api_secret: Option<&str>,
        agent_id: Option<&str>,
    ) -> Result<DialParams, DialParamsError> {
        let payload = payload
            .map(str::trim)
            .filter(|p| !p.is_empty() && *p != "null");
        if let Some(p) = payload {
            serde_json::from_str::<serde::de::IgnoredAny>(p)
                .map_err(|e| DialParamsError::InvalidPayload(e.to_string()))?;
            if p.len() > max_payload_bytes {
                return Err(DialParamsError::PayloadTooLarge(p.len(), max_payload_bytes));
            }
            return Ok(DialParams {
                payload: Some(p.into()),
                ..Default::default()
            });
        }
        let keep = |v: Option<&str>| {
            v.map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        Ok(DialParams {
            payload: None,
            api_key: keep(api_key).map(SecretString::from),
            api_secret: keep(api_secret).map(SecretString::from),
            agent_id: keep(agent_id),
        })
    }
}

/// The URL to dial for `call_id`: `base` with `call_id` and the offer's parameters set in its
/// query (overwriting any already there; other parameters are kept).
pub fn dial_url(base: &Url, call_id: &str, params: &DialParams) -> Url {
    let mut set: Vec<(&str, &str)> = vec![("call_id", call_id)];
    for (k, v) in [
        ("payload", exposed(&params.payload)),
        ("apiKey", exposed(&params.api_key)),
        ("apiSecret", exposed(&params.api_secret)),
        ("agentId", params.agent_id.as_deref()),
    ] {
        if let Some(v) = v {
            set.push((k, v));
        }
    }
    let mut pairs: Vec<(String, String)> = base
        .query_pairs()
        .filter(|(k, _)| !set.iter().any(|(s, _)| s == k))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    pairs.extend(set.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    // Sorted like Go's url.Values.Encode, so URLs read the same as the original's.
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut url = base.clone();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    url
}

/// Whether a query parameter's name says its value is a secret: `payload` (the dial payload
/// may carry the team's credentials) or a name containing token, secret, key, password,
/// passwd, pwd, auth, signature, sig or credential (case-insensitive: `apiKey`, `access_token`,
/// `X-Amz-Signature`, ...).
pub fn secret_param(name: &str) -> bool {
    const WORDS: [&str; 10] = [
        "token",
        "secret",
        "key",
        "password",
        "passwd",
        "pwd",
        "auth",
        "signature",
        "sig",
        "credential",
    ];
    let n = name.to_ascii_lowercase();
    n == "payload" || WORDS.iter().any(|w| n.contains(w))
}

/// The URL as it may appear in logs: the values of secret-looking query parameters
/// ([`secret_param`]) and any password are `***`.
pub fn redact(url: &Url) -> String {
    let mut u = url.clone();
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let secret = secret_param(&k) && !v.is_empty();
                (
                    k.into_owned(),
                    if secret {
                        "***".to_owned()
                    } else {
                        v.into_owned()
                    },
                )
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The payload limit of these tests (the configured default).
    const LIMIT: usize = 4096;

    fn base() -> Url {
        Url::parse("ws://dialog.example/ws?call_id=old&keep=1&apiKey=stale").unwrap()
    }

    fn query(u: &Url) -> Vec<(String, String)> {
        u.query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    #[test]
    fn payload_wins_over_credentials() {
        let p = DialParams::from_offer(
            LIMIT,
            Some(r#" {"user": "a b", "n": 1} "#),
            Some("k"),
            Some("s"),
            Some("agent"),
        )
        .unwrap();
        assert_eq!(exposed(&p.payload), Some(r#"{"user": "a b", "n": 1}"#));
        assert_eq!(
            (
                exposed(&p.api_key),
                exposed(&p.api_secret),
                p.agent_id.as_deref()
            ),
            (None, None, None)
        );
        let u = dial_url(&base(), "wrtc-1", &p);
        // Parameters already in the configured URL stay unless the offer sets them.
        assert_eq!(
            query(&u),
            vec![
                ("apiKey".into(), "stale".into()),
                ("call_id".into(), "wrtc-1".into()),
                ("keep".into(), "1".into()),
                ("payload".into(), r#"{"user": "a b", "n": 1}"#.into()),
            ]
        );
        // Any JSON value counts as a payload.
        assert!(
            DialParams::from_offer(LIMIT, Some("42"), None, None, None)
                .unwrap()
                .payload
                .is_some()
        );
        assert!(
            DialParams::from_offer(LIMIT, Some("\"text\""), None, None, None)
                .unwrap()
                .payload
                .is_some()
        );
    }

    #[test]
    fn blank_or_null_payload_falls_back_to_credentials() {
        for payload in [None, Some(""), Some("  "), Some("null"), Some(" null ")] {
            let p = DialParams::from_offer(LIMIT, payload, Some(" k "), Some(""), Some("agent"))
                .unwrap();
            assert!(p.payload.is_none(), "{payload:?}");
            assert_eq!(exposed(&p.api_key), Some("k"));
            assert!(p.api_secret.is_none(), "blank credentials are left out");
            assert_eq!(p.agent_id.as_deref(), Some("agent"));
        }
        let p = DialParams::from_offer(LIMIT, None, Some("k"), Some("s"), None).unwrap();
        let u = dial_url(&base(), "wrtc-2", &p);
        assert_eq!(
            query(&u),
            vec![
                ("apiKey".into(), "k".into()),
                ("apiSecret".into(), "s".into()),
                ("call_id".into(), "wrtc-2".into()),
                ("keep".into(), "1".into()),
            ]
        );
    }

    #[test]
    fn call_id_is_overwritten_on_every_dial() {
        let p = DialParams::default();
        let first = dial_url(&base(), "wrtc-a", &p);
        let again = dial_url(&first, "wrtc-b", &p);
        assert_eq!(
            again.query_pairs().filter(|(k, _)| k == "call_id").count(),
            1
        );
        assert!(query(&again).contains(&("call_id".into(), "wrtc-b".into())));
    }

    #[test]
    fn invalid_or_huge_payload_is_refused() {
        assert!(matches!(
            DialParams::from_offer(LIMIT, Some("{not json"), None, None, None),
            Err(DialParamsError::InvalidPayload(_))
        ));
        let huge = format!("\"{}\"", "x".repeat(LIMIT));
        assert_eq!(
            DialParams::from_offer(LIMIT, Some(&huge), None, None, None).unwrap_err(),
            DialParamsError::PayloadTooLarge(LIMIT + 2, LIMIT)
        );
        // The limit is the configured one.
        assert!(DialParams::from_offer(LIMIT + 2, Some(&huge), None, None, None).is_ok());
    }

    #[test]
    fn redaction_hides_secrets_only() {
        let p = DialParams::from_offer(
            LIMIT,
            None,
            Some("sekrit-key"),
            Some("sekrit-secret"),
            Some("agent-7"),
        )
        .unwrap();
        let dbg = format!("{p:?}");
        assert!(!dbg.contains("sekrit") && dbg.contains("agent-7"), "{dbg}");
        let u = dial_url(
            &Url::parse("wss://user:pw@dialog.example/ws").unwrap(),
            "wrtc-3",
            &p,
        );
        let shown = redact(&u);
        assert!(
            !shown.contains("sekrit") && !shown.contains(":pw@"),
            "{shown}"
        );
        assert!(
            shown.contains("agentId=agent-7") && shown.contains("call_id=wrtc-3"),
            "{shown}"
        );
        assert!(
            shown.contains("apiKey=***") || shown.contains("apiKey=%2A%2A%2A"),
            "{shown}"
        );
        let p =
            DialParams::from_offer(LIMIT, Some(r#"{"token":"sekrit"}"#), None, None, None).unwrap();
        let shown = redact(&dial_url(&base(), "wrtc-4", &p));
        assert!(!shown.contains("sekrit"), "{shown}");
        assert!(!format!("{p:?}").contains("sekrit"));
        // Secrets the team put into dialog.url itself, whatever they are called.
        let u = Url::parse(
            "wss://d.example/ws?token=t1x&access_token=t2x&X-Amz-Signature=t3x&client_secret=t4x&Authorization=t5x&PASSWORD=t6x&region=eu",
        )
        .unwrap();
        let shown = redact(&u);
        for leaked in ["t1x", "t2x", "t3x", "t4x", "t5x", "t6x"] {
            assert!(!shown.contains(leaked), "{leaked} in {shown}");
        }
        assert!(shown.contains("region=eu"), "{shown}");
    }

    #[test]
    fn commands_parse() {
        let id = "wrtc-1";
        assert_eq!(
            parse_command(
                r#"{"type":"tts.speak","text":"Hi","utterance_id":"u1","meta":{"llmModel":"m","llmFirstMs":12}}"#,
                id
            ),
            Ok(Command::Speak {
                utterance_id: "u1".into(),
                text: "Hi".into(),
                meta: Some(Meta {
                    llm_model: Some("m".into()),
                    llm_first_ms: Some(12.0),
                    ..Default::default()
                }),
            })
        );
        assert_eq!(
            parse_command(
                r#"{"type":"tts.stream","call_id":"wrtc-1","text":"a","utterance_id":"u2"}"#,
                id
            ),
            Ok(Command::Stream {
                utterance_id: "u2".into(),
                text: "a".into(),
                end: false,
                meta: None
            })
        );
        assert_eq!(
            parse_command(
                r#"{"type":"tts.stream","text":"","utterance_id":"u2","stream_end":true}"#,
                id
            ),
            Ok(Command::Stream {
                utterance_id: "u2".into(),
                text: "".into(),
                end: true,
                meta: None
            })
        );
        assert_eq!(
            parse_command(r#"{"type":"tts.stream.end","utterance_id":"u2"}"#, id),
            Ok(Command::Stream {
                utterance_id: "u2".into(),
                text: "".into(),
                end: true,
                meta: None
            })
        );
        assert_eq!(
            parse_command(r#"{"type":"tts.interrupt"}"#, id),
            Ok(Command::Interrupt)
        );
        assert_eq!(
            parse_command(r#"{"type":"hangup"}"#, id),
            Ok(Command::Hangup {
                reason: "dialog-hangup".into()
            })
        );
        assert_eq!(
            parse_command(r#"{"type":"hangup","reason":"bye"}"#, id),
            Ok(Command::Hangup {
                reason: "bye".into()
            })
        );
        // Unknown fields are ignored.
        assert_eq!(
            parse_command(r#"{"type":"tts.interrupt","extra":[1,2]}"#, id),
            Ok(Command::Interrupt)
        );
    }

    #[test]
    fn recording_commands_parse_whatever_the_case_of_their_keys() {
        for (frame, cmd) in [
            (r#"{"type":"recording.start"}"#, Command::RecordingStart),
            (
                r#"{"TYPE":"recording.stop","Call_Id":"wrtc-1"}"#,
                Command::RecordingStop,
            ),
        ] {
            assert_eq!(parse_command(frame, "wrtc-1"), Ok(cmd.clone()));
            assert_eq!(parse_command(&cmd.to_json("wrtc-1"), "wrtc-1"), Ok(cmd));
        }
        assert_eq!(
            parse_command(r#"{"type":"RECORDING.START"}"#, "wrtc-1"),
            Err(CommandError::Unknown("RECORDING.START".into())),
            "values are matched as they are"
        );
    }

    #[test]
    fn a_long_hangup_reason_is_cut_on_a_character_boundary() {
        let hangup = |reason: &str| {
            let frame = json!({"type": "hangup", "reason": reason}).to_string();
            match parse_command(&frame, "wrtc-1") {
                Ok(Command::Hangup { reason }) => reason,
                other => panic!("{other:?}"),
            }
        };
        let x300 = "x".repeat(300);
        // '€' is 3 bytes: 256 bytes end inside the 86th (bytes 255..258).
        let euros = "€".repeat(100);
        let spaced = format!("{} tail", "y".repeat(255));
        for (reason, want) in [
            ("bye", "bye".to_owned()),
            (x300.as_str(), "x".repeat(MAX_HANGUP_REASON_BYTES)),
            (euros.as_str(), "€".repeat(85)),
            // The cut falls just after a space, which is trimmed too.
            (spaced.as_str(), "y".repeat(255)),
            ("  \t ", "dialog-hangup".to_owned()),
        ] {
            let got = hangup(reason);
            assert!(got.len() <= MAX_HANGUP_REASON_BYTES, "{}", got.len());
            assert_eq!(got, want, "{reason:?}");
        }
    }

    #[test]
    fn a_close_reason_fits_a_control_frame() {
        let x300 = "x".repeat(300);
        let e200 = "é".repeat(200);
        for (reason, want) in [
            ("", ""),
            ("client-hangup", "client-hangup"),
            (x300.as_str(), &x300[..123]),
            // 123 bytes end inside the 62nd 'é' (bytes 122..124): 61 of them fit.
            (e200.as_str(), &e200[..122]),
        ] {
            let got = close_reason(reason);
            assert_eq!(got, want, "{reason:?}");
            assert!(2 + got.len() <= 125, "RFC 6455 §5.5: {} bytes", got.len());
        }
    }

    #[test]
    fn command_errors_show_the_apps_strings_on_one_line() {
        let forged = "x\n2026-12-06T00:00:00Z  INFO forged\u{1b}[2J";
        for frame in [
            json!({"type": forged}),
            json!({"type": "hangup", "call_id": forged}),
            json!({"type": "tts.speak", "stream_end": forged}),
        ] {
            let e = parse_command(&frame.to_string(), "wrtc-1").unwrap_err();
            let shown = e.to_string();
            assert!(
                !shown.contains('\n') && !shown.contains('\u{1b}'),
                "{shown}"
            );
            assert!(shown.contains("forged"), "{shown}");
        }
        let long = json!({"type": "x".repeat(100_000)}).to_string();
        assert!(
            parse_command(&long, "wrtc-1")
                .unwrap_err()
                .to_string()
                .len()
                < 300
        );
    }

    #[test]
    fn command_keys_match_whatever_their_case_as_the_original_decoded_them() {
        assert_eq!(
            parse_command(
                r#"{"Type":"tts.speak","Call_ID":"wrtc-1","UTTERANCE_ID":"u1","Text":"hi","Meta":{"LLMModel":"m","userTEXT":"q"}}"#,
                "wrtc-1"
            ),
            Ok(Command::Speak {
                utterance_id: "u1".into(),
                text: "hi".into(),
                meta: Some(Meta {
                    llm_model: Some("m".into()),
                    user_text: Some("q".into()),
                    ..Default::default()
                }),
            })
        );
        assert_eq!(
            parse_command(r#"{"TYPE":"hangup","Reason":"bye"}"#, "wrtc-1"),
            Ok(Command::Hangup {
                reason: "bye".into()
            })
        );
        // The values are not folded: a type is matched exactly.
        assert_eq!(
            parse_command(r#"{"type":"TTS.SPEAK"}"#, "wrtc-1"),
            Err(CommandError::Unknown("TTS.SPEAK".into()))
        );
    }

    #[test]
    fn client_messages_carry_any_json_both_ways() {
        assert_eq!(
            parse_command(
                r#"{"type":"client.send","data":{"show":[1,"two"]}}"#,
                "wrtc-1"
            ),
            Ok(Command::ClientSend {
                data: serde_json::json!({"show": [1, "two"]})
            })
        );
        assert_eq!(
            parse_command(r#"{"type":"client.send","data":"text"}"#, "wrtc-1"),
            Ok(Command::ClientSend {
                data: "text".into()
            })
        );
        for frame in [
            r#"{"type":"client.send"}"#,
            r#"{"type":"client.send","data":null}"#,
        ] {
            assert_eq!(
                parse_command(frame, "wrtc-1"),
                Err(CommandError::MissingData)
            );
        }
        let cmd = Command::ClientSend {
            data: serde_json::json!({"a": 1}),
        };
        assert_eq!(
            parse_command(&cmd.to_json("wrtc-1"), "wrtc-1"),
            Ok(cmd.clone())
        );
        assert_eq!(cmd.summary(), "client.send");
        let event = Event::ClientMessage {
            data: serde_json::json!({"clicked": "yes"}),
        };
        assert_eq!(
            event.to_json("wrtc-1"),
            r#"{"call_id":"wrtc-1","data":{"clicked":"yes"},"type":"client.message"}"#
        );
    }

    #[test]
    fn bad_commands_are_errors_not_actions() {
        let id = "wrtc-1";
        assert!(matches!(
            parse_command("not json", id),
            Err(CommandError::Malformed(_))
        ));
        assert!(matches!(
            parse_command("[]", id),
            Err(CommandError::Malformed(_))
        ));
        assert!(matches!(
            parse_command(r#"{"text":"no type"}"#, id),
            Err(CommandError::Malformed(_))
        ));
        assert!(matches!(
            parse_command(r#"{"type":"tts.speak","text":5}"#, id),
            Err(CommandError::Malformed(_))
        ));
        assert_eq!(
            parse_command(r#"{"type":"transfer"}"#, id),
            Err(CommandError::Unknown("transfer".into()))
        );
        assert_eq!(
            parse_command(r#"{"type":"hangup","call_id":"wrtc-2"}"#, id),
            Err(CommandError::OtherCall("wrtc-2".into()))
        );
        assert_eq!(
            parse_command(
                r#"{"type":"tts.stream","text":"x","utterance_id":"  "}"#,
                id
            ),
            Err(CommandError::MissingUtteranceId("tts.stream"))
        );
    }

    #[test]
    fn events_serialize_like_the_original() {
        let j = |e: Event| serde_json::from_str::<serde_json::Value>(&e.to_json("wrtc-1")).unwrap();
        assert_eq!(
            j(Event::CallStarted {
                from: "1.2.3.4:5 ua=\"x\"".into(),
                pcm_hz: 16000,
                sub: None,
            }),
            serde_json::json!({"type":"call.started","call_id":"wrtc-1","from":"1.2.3.4:5 ua=\"x\"","to":"webrtc","codec":"opus","pcm_hz":16000})
        );
        assert_eq!(
            j(Event::CallStarted {
                from: "1.2.3.4:5".into(),
                pcm_hz: 16000,
                sub: Some("user-42".into()),
            })["sub"],
            "user-42"
        );
        assert_eq!(
            j(Event::TtsStarted {
                utterance_id: "u".into()
            }),
            serde_json::json!({"type":"tts.started","call_id":"wrtc-1","utterance_id":"u"})
        );
        assert_eq!(
            j(Event::TtsStarted {
                utterance_id: "".into()
            }),
            serde_json::json!({"type":"tts.started","call_id":"wrtc-1"})
        );
        assert_eq!(
            j(Event::TtsEnded {
                utterance_id: "u".into(),
                ok: false,
                reason: None
            }),
            serde_json::json!({"type":"tts.ended","call_id":"wrtc-1","utterance_id":"u","ok":false})
        );
        assert_eq!(
            j(Event::TtsEnded {
                utterance_id: "u".into(),
                ok: false,
                reason: Some(TtsLimit::QueueFull)
            }),
            serde_json::json!({"type":"tts.ended","call_id":"wrtc-1","utterance_id":"u","ok":false,"reason":"queue-full"})
        );
        assert_eq!(
            j(Event::TtsEnded {
                utterance_id: "u".into(),
                ok: false,
                reason: Some(TtsLimit::TextTooLong)
            })["reason"],
            "text-too-long"
        );
        assert_eq!(
            j(Event::TtsEnded {
                utterance_id: "u".into(),
                ok: false,
                reason: Some(TtsLimit::AudioTooLong)
            })["reason"],
            "audio-too-long"
        );
        assert_eq!(
            j(Event::CallEnded {
                reason: "client-hangup".into(),
                recording: None,
            }),
            serde_json::json!({"type":"call.ended","call_id":"wrtc-1","reason":"client-hangup"})
        );
        assert_eq!(
            j(Event::CallEnded {
                reason: "dialog-hangup".into(),
                recording: Some("wrtc-1.wav".into()),
            }),
            serde_json::json!({"type":"call.ended","call_id":"wrtc-1","reason":"dialog-hangup","recording":"wrtc-1.wav"})
        );
        assert_eq!(
            j(Event::Error {
                message: "recording is off".into(),
                command: "recording.start",
                errors: Vec::new(),
            }),
            serde_json::json!({"type":"error","call_id":"wrtc-1","message":"recording is off","command":"recording.start"})
        );
        assert_eq!(
            j(Event::Error {
                message: "tts.pitch: unknown option".into(),
                command: "session.update",
                errors: vec![crate::session::OptionError::new(
                    "tts.pitch",
                    "unknown option"
                )],
            }),
            serde_json::json!({"type":"error","call_id":"wrtc-1","message":"tts.pitch: unknown option",
                "command":"session.update","errors":[{"option":"tts.pitch","reason":"unknown option"}]})
        );
        assert_eq!(
            j(Event::AsrFinal {
                text: "hi".into(),
                confidence: None,
                turn: None,
                net: None
            }),
            serde_json::json!({"type":"asr.final","call_id":"wrtc-1","text":"hi"})
        );
        assert_eq!(
            j(Event::AsrFinal {
                text: "stop".into(),
                confidence: Some(0.466),
                turn: Some(TurnReport {
                    end_of_speech_ms: 210,
                    backchannel: true
                }),
                net: None
            }),
            serde_json::json!({"type":"asr.final","call_id":"wrtc-1","text":"stop","confidence":0.47,"end_of_speech_ms":210,"backchannel":true})
        );
        assert_eq!(
            j(Event::AsrPartial {
                text: "sto".into(),
                confidence: Some(1.0),
            }),
            serde_json::json!({"type":"asr.partial","call_id":"wrtc-1","text":"sto","confidence":1.0})
        );
        assert_eq!(
            j(Event::AsrFinal {
                text: "hi".into(),
                confidence: None,
                turn: None,
                net: Some(NetReport {
                    lost_ms: 60,
                    recovered_ms: 20,
                    concealed_ms: 40
                })
            }),
            serde_json::json!({"type":"asr.final","call_id":"wrtc-1","text":"hi","lost_ms":60,"recovered_ms":20,"concealed_ms":40})
        );
        assert_eq!(
            j(Event::CallMedia {
                state: MediaState::Interrupted
            }),
            serde_json::json!({"type":"call.media","call_id":"wrtc-1","state":"interrupted"})
        );
        assert_eq!(
            j(Event::CallMedia {
                state: MediaState::Restored
            })["state"],
            "restored"
        );
        assert_eq!(
            j(Event::Dtmf {
                digit: '#',
                end: true
            }),
            serde_json::json!({"type":"dtmf","call_id":"wrtc-1","digit":"#","end":true})
        );
        assert_eq!(
            j(Event::TtsInterrupt {
                utterance_id: "u".into(),
                played_ms: 1240,
                segments: vec![
                    PlayedSegment {
                        text: "One.".into(),
                        played_ms: 1000,
                        complete: true
                    },
                    PlayedSegment {
                        text: "Two three.".into(),
                        played_ms: 240,
                        complete: false
                    },
                ],
            }),
            serde_json::json!({"type":"tts.interrupt","call_id":"wrtc-1","utterance_id":"u","played_ms":1240,
                "played_text":"One. Two three.…",
                "played_segments":[{"text":"One.","played_ms":1000,"complete":true},{"text":"Two three.","played_ms":240,"complete":false}]})
        );
        assert_eq!(
            j(Event::AsrError {
                message: "m".into(),
                fatal: false
            }),
            serde_json::json!({"type":"asr.error","call_id":"wrtc-1","message":"m","fatal":false})
        );
    }
}

#[cfg(test)]
mod properties {
    //! `parse_command` sees whatever a dialog app sends: it never panics, whatever the text or
    //! the JSON, and every valid command survives the trip through its wire form.
    use super::*;
    use crate::text::properties::cases;
    use proptest::prelude::*;
    use serde_json::Value;

    const CALL: &str = "wrtc-1";

    /// Field names and values the parser looks for, to reach its deeper paths often.
    const WORDS: &[&str] = &[
        "type",
        "call_id",
        "text",
        "utterance_id",
        "stream_end",
        "reason",
        "meta",
        "llmModel",
        "llmFirstMs",
        "llmWallMs",
        "userText",
        "tts.speak",
        "tts.stream",
        "tts.stream.end",
        "tts.interrupt",
        "hangup",
        CALL,
        "wrtc-2",
        "",
        " ",
    ];

    fn word() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => prop::sample::select(WORDS).prop_map(str::to_owned),
            1 => any::<String>(),
        ]
    }

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            word().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((word(), inner), 0..8)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// An object with a command's `type` and arbitrary other fields.
    fn command_like() -> impl Strategy<Value = Value> {
        (
            prop::sample::select(&WORDS[11..16]),
            prop::collection::vec((word(), json()), 0..6),
        )
            .prop_map(|(kind, fields)| {
                let mut v: serde_json::Map<String, Value> = fields.into_iter().collect();
                v.insert("type".into(), kind.into());
                Value::Object(v)
            })
    }

    fn trimmed() -> impl Strategy<Value = String> {
        any::<String>().prop_map(|s| s.trim().to_owned())
    }

    fn meta() -> impl Strategy<Value = Option<Meta>> {
        prop::option::of(
            (
                prop::option::of(any::<String>()),
                prop::option::of(0u32..1_000_000),
                prop::option::of(0u32..1_000_000),
                prop::option::of(any::<String>()),
            )
                .prop_map(|(model, first, wall, user)| Meta {
                    llm_model: model,
                    llm_first_ms: first.map(f64::from),
                    llm_wall_ms: wall.map(f64::from),
                    user_text: user,
                }),
        )
    }

    fn command() -> impl Strategy<Value = Command> {
        prop_oneof![
            (trimmed(), any::<String>(), meta()).prop_map(|(utterance_id, text, meta)| {
                Command::Speak {
                    utterance_id,
                    text,
                    meta,
                }
            }),
            (
                trimmed().prop_filter("a stream has an id", |s| !s.is_empty()),
                any::<String>(),
                any::<bool>(),
                meta()
            )
                .prop_map(|(utterance_id, text, end, meta)| Command::Stream {
                    utterance_id,
                    text,
                    end,
                    meta,
                }),
            Just(Command::Interrupt),
            Just(Command::RecordingStart),
            Just(Command::RecordingStop),
            trimmed().prop_map(|r| Command::Hangup {
                reason: if r.is_empty() {
                    "dialog-hangup".into()
                } else {
                    r
                }
            }),
        ]
    }

    /// The wire form a dialog app would send: [`Command::to_json`], or with `end` spelled as
    /// the `tts.stream.end` type, or without the call id.
    fn wire(cmd: &Command, end_as_flag: bool, addressed: bool) -> String {
        let mut v: Value = serde_json::from_str(&cmd.to_json(CALL)).unwrap();
        if let Command::Stream { end: true, .. } = cmd
            && !end_as_flag
        {
            v["type"] = "tts.stream.end".into();
            v.as_object_mut().unwrap().remove("stream_end");
        }
        if !addressed {
            v.as_object_mut().unwrap().remove("call_id");
        }
        v.to_string()
    }

    proptest! {
        #![proptest_config(cases(1000))]

        #[test]
        fn any_text_is_a_command_or_an_error(frame in any::<String>()) {
            let _ = parse_command(&frame, CALL);
        }

        #[test]
        fn any_json_is_a_command_or_an_error(v in prop_oneof![json(), command_like()]) {
            if let Ok(Command::Stream { utterance_id, .. }) = parse_command(&v.to_string(), CALL) {
                prop_assert!(!utterance_id.is_empty());
                prop_assert_eq!(utterance_id.trim(), utterance_id.as_str());
            }
        }

        #[test]
        fn a_hangup_reason_is_kept_to_its_cap(reason in prop_oneof![any::<String>(), "[ a-zé€😀]{200,400}"]) {
            let frame = json!({"type": "hangup", "reason": reason}).to_string();
            let Ok(Command::Hangup { reason: got }) = parse_command(&frame, CALL) else {
                panic!("a hangup is a hangup");
            };
            prop_assert!(got.len() <= MAX_HANGUP_REASON_BYTES);
            prop_assert!(got == "dialog-hangup" || reason.trim().starts_with(got.as_str()));
            prop_assert!(close_reason(&got).len() <= MAX_CLOSE_REASON_BYTES);
            prop_assert!(got.starts_with(close_reason(&got)));
        }

        #[test]
        fn valid_commands_round_trip(cmd in command(), flag in any::<bool>(), addressed in any::<bool>()) {
            let frame = wire(&cmd, flag, addressed);
            prop_assert_eq!(parse_command(&frame, CALL), Ok(cmd.clone()));
            // The same command for another call is refused as such.
            let mut other: Value = serde_json::from_str(&frame).expect("we wrote JSON");
            other["call_id"] = "wrtc-2".into();
            prop_assert_eq!(
                parse_command(&other.to_string(), CALL),
                Err(CommandError::OtherCall("wrtc-2".into()))
            );
            // Its log summary is one line and never carries the text.
            let summary = cmd.summary();
            prop_assert!(!summary.contains('\n') && summary.len() < 2200, "{}", summary);
        }
    }
}
