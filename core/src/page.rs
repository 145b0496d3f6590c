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
//! - `{"type": "message", "data"}`: what the dialog app sent the page with `client.send`.
//!
//! Nothing else goes there: not `tts.*`, `asr.error` or the call's lifecycle, and never
//! voicegate's own prompts (the player reports nothing for them). The page is a view, so the
//! channel may drop messages under pressure; the dialog app still gets every event.
//!
//! The page may send too: `call.send(obj)` sends `{"type": "message", "data": obj}`, which the
//! dialog app gets as `client.message {data}`. The page is the caller's browser, so what it sends
//! is held to [`PageLimits`] by a [`PageInbox`]: a size limit, a rate limit, JSON only. A message
//! that breaks one is dropped (the call carries on).
//!
//! This module is the only place that knows these shapes; the call actor only queues the
//! strings. `web/voicegate.js` and the browser tests read them, so the bytes stay as they are.

use crate::dialog::Event;
use serde::Deserialize;
use serde_json::json;
use std::time::Instant;

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
    /// The dialog app's `client.send`.
    Client {
        /// Its `data`.
        data: &'a serde_json::Value,
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
            | Event::TtsPaused { .. }
            | Event::TtsResumed { .. }
            | Event::TtsEnded { .. }
            | Event::TtsInterrupt { .. }
            | Event::CallMedia { .. }
            | Event::CallEnded { .. }
            | Event::ClientMessage { .. }
            | Event::SessionUpdated { .. }
            | Event::Error { .. } => None,
        }
    }

    /// The message as the text the channel carries.
    pub fn to_json(&self) -> String {
        match self {
            PageMessage::Assistant { utterance_id, text } => {
                json!({"type": "assistant", "utterance_id": utterance_id, "text": text}).to_string()
            }
            PageMessage::Mirrored { event, call_id } => event.to_json(call_id),
            PageMessage::Client { data } => json!({"type": "message", "data": data}).to_string(),
        }
    }
}

/// What the page may send the dialog app (`[page]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PageLimits {
    /// Longest message, in bytes of its JSON text, either way (the page's `call.send` and the
    /// app's `client.send`).
    pub max_message_bytes: usize,
    /// Messages per second the page may send, on average.
    pub messages_per_s: f64,
    /// Messages the page may send at once, above the average.
    pub burst: u32,
}

/// Why a message from the page was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageInputError {
    /// Longer than [`PageLimits::max_message_bytes`]: its size and the limit.
    #[error("the message is {0} bytes; the limit is {1}")]
    TooLarge(usize, usize),
    /// Faster than [`PageLimits::messages_per_s`] allows.
    #[error("the page sends faster than its rate limit")]
    TooFast,
    /// Binary, not JSON, or not `{"type": "message", "data": ...}` with some `data`.
    #[error("not a JSON message: {0}")]
    NotJson(&'static str),
}

/// The page's side of `call.send(obj)`.
#[derive(Deserialize)]
struct FromPage {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Option<serde_json::Value>,
}

/// The messages of one call's page, checked against [`PageLimits`]: the size first (nothing
/// larger is parsed), then the rate (every message counts, well-formed or not, so garbage is
/// rate-limited too), then the JSON. The rate is a token bucket refilled by the time passed in.
#[derive(Debug)]
pub struct PageInbox {
    limits: PageLimits,
    /// Messages the page may send now.
    tokens: f64,
    /// When `tokens` was last refilled.
    refilled: Option<Instant>,
}

impl PageInbox {
    /// A page that has sent nothing yet: it may send a whole burst.
    pub fn new(limits: PageLimits) -> Self {
        PageInbox {
            limits,
            tokens: f64::from(limits.burst),
            refilled: None,
        }
    }

    /// A message arrived at `now`: its text, or `None` if it is binary. Returns the `data` to
    /// pass on to the dialog app.
    pub fn accept(
        &mut self,
        text: Option<&str>,
        len: usize,
        now: Instant,
    ) -> Result<serde_json::Value, PageInputError> {
        if len > self.limits.max_message_bytes {
            return Err(PageInputError::TooLarge(len, self.limits.max_message_bytes));
        }
        let burst = f64::from(self.limits.burst);
        if let Some(then) = self.refilled {
            let gained =
                now.saturating_duration_since(then).as_secs_f64() * self.limits.messages_per_s;
            self.tokens = (self.tokens + gained).min(burst);
        }
        self.refilled = Some(now);
        if self.tokens < 1.0 {
            return Err(PageInputError::TooFast);
        }
        self.tokens -= 1.0;
        let text = text.ok_or(PageInputError::NotJson("binary"))?;
        let msg: FromPage = serde_json::from_str(text)
            .map_err(|_| PageInputError::NotJson("not a JSON object with a type"))?;
        if msg.kind != "message" {
            return Err(PageInputError::NotJson("type is not \"message\""));
        }
        match msg.data {
            None | Some(serde_json::Value::Null) => Err(PageInputError::NotJson("no data")),
            Some(data) => Ok(data),
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
            Event::AsrPartial {
                text: "hel".into(),
                confidence: None,
            },
            Event::AsrFinal {
                text: "hello".into(),
                confidence: Some(0.9),
                net: None,
                turn: None,
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
                recording: Some("c1.wav".into()),
            },
            Event::Error {
                message: "recording is off".into(),
                command: "recording.start",
                errors: Vec::new(),
            },
        ];
        for e in &events {
            assert_eq!(PageMessage::mirror(e, "c1"), None, "{e:?}");
        }
    }

    fn limits() -> PageLimits {
        PageLimits {
            max_message_bytes: 100,
            messages_per_s: 2.0,
            burst: 3,
        }
    }

    fn ok(
        inbox: &mut PageInbox,
        text: &str,
        at: Instant,
    ) -> Result<serde_json::Value, PageInputError> {
        inbox.accept(Some(text), text.len(), at)
    }

    #[test]
    fn the_app_s_message_reaches_the_page_as_a_message() {
        let data = json!({"a": [1, 2]});
        assert_eq!(
            PageMessage::Client { data: &data }.to_json(),
            r#"{"data":{"a":[1,2]},"type":"message"}"#
        );
        let sent = Event::ClientMessage { data: data.clone() };
        assert_eq!(
            PageMessage::mirror(&sent, "c1"),
            None,
            "the page's own message stays with the app"
        );
    }

    #[test]
    fn the_page_s_message_is_its_data() {
        let mut inbox = PageInbox::new(limits());
        let t0 = Instant::now();
        assert_eq!(
            ok(&mut inbox, r#"{"type":"message","data":{"x":1}}"#, t0),
            Ok(json!({"x": 1}))
        );
        assert_eq!(
            ok(&mut inbox, r#"{"type":"message","data":"hi"}"#, t0),
            Ok(json!("hi"))
        );
    }

    #[test]
    fn json_only() {
        let t0 = Instant::now();
        for text in [
            "not json",
            "[1]",
            r#"{"data":1}"#,
            r#"{"type":"other","data":1}"#,
            r#"{"type":"message"}"#,
            r#"{"type":"message","data":null}"#,
        ] {
            let mut inbox = PageInbox::new(limits());
            assert!(
                matches!(ok(&mut inbox, text, t0), Err(PageInputError::NotJson(_))),
                "{text}"
            );
        }
        let mut inbox = PageInbox::new(limits());
        assert_eq!(
            inbox.accept(None, 4, t0),
            Err(PageInputError::NotJson("binary"))
        );
    }

    #[test]
    fn a_message_over_the_size_limit_is_dropped_unread() {
        let mut inbox = PageInbox::new(limits());
        let big = format!(r#"{{"type":"message","data":"{}"}}"#, "x".repeat(100));
        assert_eq!(
            ok(&mut inbox, &big, Instant::now()),
            Err(PageInputError::TooLarge(big.len(), 100))
        );
    }

    #[test]
    fn the_rate_limit_allows_a_burst_then_the_average() {
        let mut inbox = PageInbox::new(limits());
        let t0 = Instant::now();
        let m = r#"{"type":"message","data":1}"#;
        for _ in 0..3 {
            assert!(ok(&mut inbox, m, t0).is_ok());
        }
        assert_eq!(ok(&mut inbox, m, t0), Err(PageInputError::TooFast));
        // Garbage counts too.
        assert_eq!(ok(&mut inbox, "x", t0), Err(PageInputError::TooFast));
        // 2 per second: one more after half a second, not two.
        let t1 = t0 + std::time::Duration::from_millis(500);
        assert!(ok(&mut inbox, m, t1).is_ok());
        assert_eq!(ok(&mut inbox, m, t1), Err(PageInputError::TooFast));
        // A long pause refills at most a burst.
        let t2 = t1 + std::time::Duration::from_secs(60);
        for _ in 0..3 {
            assert!(ok(&mut inbox, m, t2).is_ok());
        }
        assert_eq!(ok(&mut inbox, m, t2), Err(PageInputError::TooFast));
    }
}
