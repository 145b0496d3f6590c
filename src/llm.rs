//! The embedded demo agent's model: a streaming client for OpenAI-compatible chat completions
//! (`POST {base_url}/v1/chat/completions` with `stream: true`), and the pure parts around it:
//! the conversation [`History`] (bounded, with the assistant's turn cut to what the caller heard)
//! and the server-sent-events parser [`SseParser`].
//!
//! It is its own module because it is the demo's only outbound I/O and its wire format (SSE
//! chunks) is a vendor format: the request and chunk types are serde types here, next to the
//! client, not in the dialog protocol.
//!
//! Every input from the model is bounded: the whole answer must arrive within `timeout`
//! (`demo.llm.timeout_ms`) and be at most `max_response_bytes` of body
//! (`demo.llm.max_response_bytes`); the history keeps at most `max_history_messages` messages
//! besides the system prompt. A breach is an [`LlmError`], which the demo turns into a short
//! spoken apology and a log line; the call goes on.

use futures_util::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::Duration;

/// The path appended to `demo.llm.base_url`.
pub const CHAT_PATH: &str = "/v1/chat/completions";

/// Longest wait for the response head (the rest of the answer is bounded by `timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes of an error body kept for the log line.
const ERROR_BODY_BYTES: usize = 512;

/// The validated `[demo.llm]` settings.
#[derive(Debug, Clone)]
pub struct LlmSettings {
    /// `{base_url}/v1/chat/completions`.
    pub endpoint: url::Url,
    /// The model name sent in each request.
    pub model: String,
    /// Sent as `Authorization: Bearer`; `None` for servers that want no key.
    pub api_key: Option<SecretString>,
    /// The first message of every request (none when empty).
    pub system_prompt: String,
    /// Longest an answer may take, from the request to its last token.
    pub timeout: Duration,
    /// Most bytes of response body read for one answer.
    pub max_response_bytes: usize,
    /// Most user and assistant messages kept in the history (oldest dropped first).
    pub max_history_messages: usize,
    /// What the connection to the server trusts (`vendor_tls`).
    pub tls: voicegate_engines::tls::ClientTls,
}

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The system prompt.
    System,
    /// The caller.
    User,
    /// The model, as far as the caller heard it.
    Assistant,
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: String,
}

impl Message {
    fn new(role: Role, content: impl Into<String>) -> Message {
        Message {
            role,
            content: content.into(),
        }
    }
}

/// The conversation the model sees: the system prompt, then at most `max` user and assistant
/// messages, oldest dropped first (so a long call costs a bounded request).
#[derive(Debug, Clone)]
pub struct History {
    system: Option<Message>,
    turns: VecDeque<Message>,
    max: usize,
}

impl History {
    /// An empty history with `system_prompt` (none when blank) and room for `max` messages.
    pub fn new(system_prompt: &str, max: usize) -> History {
        let system = (!system_prompt.trim().is_empty())
            .then(|| Message::new(Role::System, system_prompt.trim()));
        History {
            system,
            turns: VecDeque::new(),
            max: max.max(1),
        }
    }

    /// Adds what the caller said (or pressed).
    pub fn push_user(&mut self, text: &str) {
        self.push(Message::new(Role::User, text));
    }

    /// Adds what the assistant said; an empty turn (nothing was heard) is left out.
    pub fn push_assistant(&mut self, text: &str) {
        if !text.trim().is_empty() {
            self.push(Message::new(Role::Assistant, text));
        }
    }

    /// Replaces the last message, if it is the assistant's, with what the caller actually heard
    /// (removing it when nothing was heard).
    pub fn truncate_last_assistant(&mut self, heard: &str) {
        if self.turns.back().is_some_and(|m| m.role == Role::Assistant) {
            self.turns.pop_back();
            self.push_assistant(heard);
        }
    }

    /// The messages of a request, system prompt first.
    pub fn messages(&self) -> Vec<Message> {
        self.system
            .iter()
            .chain(self.turns.iter())
            .cloned()
            .collect()
    }

    fn push(&mut self, m: Message) {
        self.turns.push_back(m);
        if self.turns.len() <= self.max {
            return;
        }
        while self.turns.len() > self.max {
            self.turns.pop_front();
        }
        // A cut conversation resumes with the caller: an assistant message left at the front by
        // the bound would answer nothing (a greeting before the first question is kept).
        while self.turns.len() > 1
            && self
                .turns
                .front()
                .is_some_and(|m| m.role == Role::Assistant)
        {
            self.turns.pop_front();
        }
    }
}

/// What one SSE event of the answer carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// Text of the answer.
    Token(String),
    /// `data: [DONE]`: the answer is complete.
    Done,
}

/// Why an answer failed. Shown in the log (never with the key).
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The request could not be sent or no response head came.
    #[error("{url}: request failed: {detail}")]
    Send {
        /// The endpoint.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// The server answered with an error status.
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        /// The endpoint.
        url: String,
        /// The status code.
        status: u16,
        /// The start of the error body.
        body: String,
    },
    /// The body failed while it streamed.
    #[error("the answer stream failed: {0}")]
    Stream(String),
    /// An event was not a chat completion chunk.
    #[error("malformed answer: {0}")]
    Malformed(String),
    /// The whole answer took longer than `demo.llm.timeout_ms`.
    #[error("no complete answer within {0:?} (demo.llm.timeout_ms)")]
    Timeout(Duration),
    /// The body grew past `demo.llm.max_response_bytes`.
    #[error("the answer is over {0} bytes (demo.llm.max_response_bytes)")]
    TooLarge(usize),
}

/// An incremental parser of an SSE body (the WHATWG `text/event-stream` format, as OpenAI
/// streams chat completions): lines `data: <chunk JSON>`, events separated by blank lines,
/// `data: [DONE]` at the end. Bytes come in any split; the buffer holds at most one line,
/// which the caller bounds by bounding the whole body.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
}

/// A streamed chunk, as far as the demo reads it.
#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Delta,
}

#[derive(Deserialize, Default)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
}

impl SseParser {
    /// Feeds bytes; returns the items of the lines they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseItem>, LlmError> {
        let mut out = Vec::new();
        for &b in bytes {
            if b != b'\n' {
                self.line.push(b);
                continue;
            }
            let line = std::mem::take(&mut self.line);
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches('\r');
            // Comments (": keep-alive"), event names, ids and blank separators carry no text.
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let data = data.trim();
            if data == "[DONE]" {
                out.push(SseItem::Done);
                continue;
            }
            let chunk: Chunk = serde_json::from_str(data)
                .map_err(|e| LlmError::Malformed(format!("{e} in {:?}", truncated(data, 120))))?;
            for choice in chunk.choices {
                if let Some(text) = choice.delta.content.filter(|t| !t.is_empty()) {
                    out.push(SseItem::Token(text));
                }
            }
        }
        Ok(out)
    }
}

fn truncated(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The request body (OpenAI's chat completions, the fields every compatible server takes).
#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: &'a [Message],
    stream: bool,
}

/// Asks the model for the answer to `messages` and calls `on_token` with each piece of text as it
/// arrives. Returns when the answer is complete, or with the error that ended it (the tokens
/// already passed stand). Dropping the future cancels the request: its connection is closed.
/// Runs on an actix runtime (the client is awc, like the speech engines').
pub async fn stream_answer(
    settings: &LlmSettings,
    messages: &[Message],
    mut on_token: impl FnMut(String),
) -> Result<(), LlmError> {
    let work = async {
        let url = settings.endpoint.to_string();
        // The worker's pool, shared with the speech engines: a turn after the first skips the
        // handshakes.
        let mut req = voicegate_engines::http::client(&settings.tls)
            .post(url.as_str())
            .timeout(CONNECT_TIMEOUT)
            .insert_header(("Accept", "text/event-stream"));
        if let Some(key) = &settings.api_key {
            req = req.bearer_auth(key.expose_secret());
        }
        let body = ChatRequest {
            model: &settings.model,
            messages,
            stream: true,
        };
        let mut res = voicegate_engines::http::send_json(req, &body)
            .await
            .map_err(|e| LlmError::Send {
                url: url.clone(),
                detail: e.to_string(),
            })?;
        if !res.status().is_success() {
            let body = res.body().limit(ERROR_BODY_BYTES).await.unwrap_or_default();
            return Err(LlmError::Status {
                url,
                status: res.status().as_u16(),
                body: String::from_utf8_lossy(&body).trim().to_owned(),
            });
        }
        let mut parser = SseParser::default();
        let mut read = 0usize;
        while let Some(bytes) = res.next().await {
            let bytes = bytes.map_err(|e| LlmError::Stream(e.to_string()))?;
            read += bytes.len();
            if read > settings.max_response_bytes {
                return Err(LlmError::TooLarge(settings.max_response_bytes));
            }
            for item in parser.push(&bytes)? {
                match item {
                    SseItem::Token(t) => on_token(t),
                    SseItem::Done => return Ok(()),
                }
            }
        }
        // Some servers end the body without `[DONE]`; what came is the answer.
        Ok(())
    };
    tokio::time::timeout(settings.timeout, work)
        .await
        .unwrap_or(Err(LlmError::Timeout(settings.timeout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(text: &str) -> String {
        format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}}}}]}}\n\n",
            serde_json::to_string(text).unwrap()
        )
    }

    #[test]
    fn sse_tokens_come_out_whatever_the_split() {
        let body = format!(
            ": keep-alive\n\n{}{}data: {{\"choices\":[{{\"delta\":{{\"role\":\"assistant\"}}}}]}}\r\n\r\n{}data: [DONE]\n\n",
            chunk("Hello"),
            chunk(" there, é"),
            chunk("!")
        );
        for split in [1, 2, 3, 7, 64, body.len()] {
            let mut p = SseParser::default();
            let mut items = Vec::new();
            for piece in body.as_bytes().chunks(split) {
                items.extend(p.push(piece).unwrap());
            }
            assert_eq!(
                items,
                [
                    SseItem::Token("Hello".into()),
                    SseItem::Token(" there, é".into()),
                    SseItem::Token("!".into()),
                    SseItem::Done
                ],
                "split {split}"
            );
        }
    }

    #[test]
    fn a_malformed_event_is_an_error_not_a_panic() {
        for bad in ["data: {\n", "data: [1,2]\n", "data: {\"choices\": 3}\n"] {
            assert!(
                matches!(
                    SseParser::default().push(bad.as_bytes()),
                    Err(LlmError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
        // Garbage that is not a data line carries nothing.
        assert!(
            SseParser::default()
                .push(b"\xff\xfe\nevent: x\n")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn history_is_bounded_and_starts_with_the_caller() {
        let mut h = History::new("Be brief.", 3);
        h.push_assistant("Hello!");
        h.push_user("one");
        assert_eq!(
            h.messages().len(),
            3,
            "a greeting stays while there is room"
        );
        h.push_assistant("uno");
        h.push_user("two");
        h.push_assistant("dos");
        let m = h.messages();
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!(m[0], Message::new(Role::System, "Be brief."));
        assert_eq!(
            m[1],
            Message::new(Role::User, "two"),
            "no assistant message first"
        );
        assert_eq!(m[2], Message::new(Role::Assistant, "dos"));
    }

    #[test]
    fn the_assistant_turn_is_cut_to_what_was_heard() {
        let mut h = History::new("", 10);
        h.push_user("tell me a story");
        h.push_assistant("Once upon a time there was a fox.");
        h.truncate_last_assistant("Once upon a time…");
        assert_eq!(
            h.messages().last().unwrap(),
            &Message::new(Role::Assistant, "Once upon a time…")
        );
        // Nothing heard: the turn goes.
        h.truncate_last_assistant("");
        assert_eq!(h.messages(), [Message::new(Role::User, "tell me a story")]);
        // A user message last is left alone.
        h.truncate_last_assistant("x");
        assert_eq!(h.messages().len(), 1);
    }
}
