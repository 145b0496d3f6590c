//! The page's data channel: what the browser page receives, and its JSON.
//!
//! A dialog call's page may open a data channel (`voicegate`, see `web/voicegate.js`) to show a
//! transcript. It receives, one JSON object per message:
//!
//! - `{"type": "assistant", "utterance_id", "text"}` when a segment of the dialog app's speech
//!   starts playing: the text the caller hears now (the dialog app gets no such event; it has the
//!   text already);
//! - `asr.partial`, `asr.final` and `dtmf`, byte for byte as the dialog app receives them
//!   ([`Event::to_json`]): what the caller said and pressed.
//!
//! Nothing else goes there: not `tts.*`, `asr.error` or the call's lifecycle, and never
//! voicegate's own prompts (the player reports nothing for them). The page is a view, so the
//! channel may drop messages under pressure; the dialog app still gets every event.
//!
//! This module is the only place that knows these shapes; the call actor only queues the
//! strings. `web/voicegate.js` and the browser tests read them, so the bytes stay as they are.

use crate::dialog::Event;
use serde_json::json;

/// One message for the page.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PageMessage<'a> {
    /// A segment of an utterance of the dialog app started playing.
    Assistant {
        /// The utterance (as the dialog app named it).
        utterance_id: &'a str,
        /// The segment's text.
        text: &'a str,
    },
    /// A dialog event the page shows too (see [`PageMessage::mirror`]).
    Mirrored {
        /// The event.
        event: &'a Event,
        /// The call it belongs to (in the JSON, as for the dialog app).
        call_id: &'a str,
    },
}

impl<'a> PageMessage<'a> {
    /// The page's copy of a dialog event, if the page shows that kind: what the caller said
    /// (`asr.partial`, `asr.final`) and pressed (`dtmf`).
    pub fn mirror(event: &'a Event, call_id: &'a str) -> Option<Self> {
        match event {
            Event::AsrPartial { .. } | Event::AsrFinal { .. } | Event::Dtmf { .. } => {
                Some(PageMessage::Mirrored { event, call_id })
            }
            Event::CallStarted { .. }
            | Event::AsrError { .. }
            | Event::TtsStarted { .. }
            | Event::TtsEnded { .. }
            | Event::TtsInterrupt { .. }
            | Event::CallMedia { .. }
            | Event::CallEnded { .. } => None,
        }
    }

    /// The message as the text the channel carries.
    pub fn to_json(&self) -> String {
        match self {
            PageMessage::Assistant { utterance_id, text } => {
                json!({"type": "assistant", "utterance_id": utterance_id, "text": text}).to_string()
            }
            PageMessage::Mirrored { event, call_id } => event.to_json(call_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assistant_segment_is_its_utterance_and_text() {
        let m = PageMessage::Assistant {
            utterance_id: "u1",
            text: "Hello \"there\".",
        };
        // The exact bytes the page has always received (keys in order, JSON escaping).
        assert_eq!(
            m.to_json(),
            r#"{"text":"Hello \"there\".","type":"assistant","utterance_id":"u1"}"#
        );
    }

    #[test]
    fn what_the_caller_said_and_pressed_is_mirrored_as_the_dialog_app_gets_it() {
        let events = [
            Event::AsrPartial { text: "hel".into() },
            Event::AsrFinal {
                text: "hello".into(),
                net: None,
            },
            Event::Dtmf {
                digit: '5',
                end: true,
            },
        ];
        for e in &events {
            let m = PageMessage::mirror(e, "c1").expect("mirrored");
            assert_eq!(m.to_json(), e.to_json("c1"));
        }
    }

    #[test]
    fn speech_state_errors_and_the_lifecycle_stay_with_the_dialog_app() {
        let events = [
            Event::CallStarted {
                from: "127.0.0.1".into(),
                pcm_hz: 16_000,
                sub: None,
            },
            Event::AsrError {
                message: "down".into(),
                fatal: false,
            },
            Event::TtsStarted {
                utterance_id: "u1".into(),
            },
            Event::TtsEnded {
                utterance_id: "u1".into(),
                ok: true,
                reason: None,
            },
            Event::TtsInterrupt {
                utterance_id: "u1".into(),
                played_ms: 0,
                segments: vec![],
            },
            Event::CallEnded {
                reason: "client-hangup".into(),
            },
        ];
        for e in &events {
            assert_eq!(PageMessage::mirror(e, "c1"), None, "{e:?}");
        }
    }
}
