//! The embedded demo dialog app: the default `dialog.url`, served by this process.
//!
//! It speaks the dialog WebSocket protocol from the app's side, so a new user hears a
//! conversation with no app of their own. On `call.started` it greets the caller; when the
//! caller says goodbye it says goodbye and sends `hangup` once that has played. What it answers
//! depends on `[demo.llm]`:
//! - **Without a model** (the default) it answers `asr.final` with "You said: <text>" in
//!   `tts.stream` chunks, the way an LLM would stream, and a key press with "You pressed <key>."
//! - **With a model** (`demo.llm.base_url`) it is an LLM agent: each `asr.final` (and each key
//!   press, as a user message) goes with the conversation so far to the model
//!   ([`crate::llm::stream_answer`]), and every token is passed on as a `tts.stream` chunk as it
//!   arrives, so the first audio never waits for the whole answer. On `tts.interrupt` (a
//!   barge-in) it cancels the request (its connection is closed) and cuts the assistant's turn in
//!   the history to `played_text`, so the model knows what the caller actually heard.
//!
//! When the model fails (an error status, a broken or malformed stream, a limit of
//! [`crate::llm`], counted in `voicegate_limit_hits_total`), the failure is logged once; a caller who heard nothing of the answer hears a
//! short apology, one who heard part of it keeps that part; the call goes on.
//!
//! With a model, the socket takes only voicegate's own dials: the URL it dials carries a random
//! per-process `demo_key` (redacted in logs like every key), so nobody who reaches the HTTP port
//! can spend the model's budget without placing a call (and passing `auth`).
//!
//! It is an actix-web-actors WebSocket actor: a server-side WebSocket that keeps per-connection
//! state and reacts to frames is exactly an actor (the crate is deprecated in favour of
//! `actix-ws`, which has no actor model; the design asks for actors here). The model's request
//! runs as a future spawned in the actor's context, so cancelling it is dropping it.

use crate::llm::{History, LlmError, LlmSettings, stream_answer};
use actix::prelude::*;
use actix_web::{Error, HttpRequest, HttpResponse, web};
use actix_web_actors::ws;
use serde_json::Value;
use std::sync::Arc;
use voicegate_actors::metrics::{Limit, metrics};
use voicegate_core::dialog::Command;
use voicegate_core::untrusted::shown;

/// What the demo says first.
pub const GREETING: &str = "Hello! Say something and I will repeat it.";
/// What the demo agent says first.
pub const AGENT_GREETING: &str = "Hello! I am an AI assistant. How can I help you?";
/// What it says before hanging up.
pub const FAREWELL: &str = "Goodbye! Thanks for calling.";
/// What a caller hears when the model failed before saying anything.
pub const APOLOGY: &str = "Sorry, I cannot answer right now. Please try again.";

/// What the demo needs from the server: the model, and the key its URL must carry.
#[derive(Clone)]
pub struct DemoConfig {
    /// The model (`None`: repeat what was heard).
    pub llm: Option<Arc<LlmSettings>>,
    /// The `demo_key` voicegate's dials carry; a dial without it gets `403`.
    pub key: Arc<str>,
}

/// `GET /dialog/demo?call_id=...&demo_key=...`: the WebSocket upgrade, for voicegate's own dials
/// only. The key keeps everyone else off: the agent spends a model's budget, and the socket's
/// frame parser (actix's) holds a frame's whole declared length in memory before it checks it,
/// which only voicegate's own dialog client, writing small events, may be trusted with.
pub async fn connect(
    req: HttpRequest,
    stream: web::Payload,
    config: web::Data<DemoConfig>,
) -> Result<HttpResponse, Error> {
    let query =
        web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
            .map(|q| q.into_inner())
            .unwrap_or_default();
    let given = query.get("demo_key").map(String::as_str).unwrap_or("");
    if !same_key(given.as_bytes(), config.key.as_bytes()) {
        return Ok(HttpResponse::Forbidden().finish());
    }
    let agent = config.llm.as_ref().map(|settings| Agent {
        history: History::new(&settings.system_prompt, settings.max_history_messages),
        settings: settings.clone(),
        pending: None,
        last_spoken: None,
    });
    ws::start(
        DemoDialog {
            call_id: query.get("call_id").cloned().unwrap_or_default(),
            turn: 0,
            farewell: None,
            agent,
        },
        &req,
        stream,
    )
}

/// Compares in time independent of where the keys differ.
fn same_key(given: &[u8], want: &[u8]) -> bool {
    given.len() == want.len() && given.iter().zip(want).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
}

/// One call's demo conversation.
struct DemoDialog {
    /// The call it talks to.
    call_id: String,
    /// Answers given so far.
    turn: u32,
    /// The farewell's utterance id, once said: hang up when it has played.
    farewell: Option<String>,
    /// The LLM agent's state (`None`: the demo repeats what it heard).
    agent: Option<Agent>,
}

/// The LLM agent's side of a conversation.
struct Agent {
    /// The model.
    settings: Arc<LlmSettings>,
    /// What the model sees next time.
    history: History,
    /// The answer being streamed, if any.
    pending: Option<Pending>,
    /// The utterance whose text is the history's last assistant message, while it may still be
    /// interrupted.
    last_spoken: Option<String>,
}

/// An answer in progress.
struct Pending {
    /// Its turn number (tokens of a cancelled turn still in the mailbox are dropped by it).
    turn: u32,
    /// Its utterance id.
    utterance_id: String,
    /// The text streamed so far.
    text: String,
    /// The request's future, to cancel it.
    handle: SpawnHandle,
}

/// A piece of the model's answer arrived.
#[derive(Message)]
#[rtype(result = "()")]
struct Token {
    /// The turn it belongs to.
    turn: u32,
    /// The text.
    text: String,
}

/// The model's answer ended.
#[derive(Message)]
#[rtype(result = "()")]
struct Answered {
    /// The turn it belongs to.
    turn: u32,
    /// How it ended.
    result: Result<(), LlmError>,
}

impl Actor for DemoDialog {
    type Context = ws::WebsocketContext<Self>;

    fn stopped(&mut self, ctx: &mut Self::Context) {
        // The call is over: a request still running is cancelled with the actor's futures, but
        // say so explicitly for the reader.
        self.cancel_pending(ctx);
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for DemoDialog {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        match msg {
            Ok(ws::Message::Text(text)) => self.on_event(&text, ctx),
            Ok(ws::Message::Ping(p)) => ctx.pong(&p),
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "demo dialog: protocol error");
                ctx.stop();
            }
        }
    }
}

impl Handler<Token> for DemoDialog {
    type Result = ();

    fn handle(&mut self, msg: Token, ctx: &mut Self::Context) {
        let Some(p) = self.agent.as_mut().and_then(|a| a.pending.as_mut()) else {
            return;
        };
        if p.turn != msg.turn {
            return;
        }
        p.text.push_str(&msg.text);
        let id = p.utterance_id.clone();
        self.stream(&id, msg.text, false, ctx);
    }
}

impl Handler<Answered> for DemoDialog {
    type Result = ();

    fn handle(&mut self, msg: Answered, ctx: &mut Self::Context) {
        let Some(agent) = self.agent.as_mut() else {
            return;
        };
        if agent.pending.as_ref().map(|p| p.turn) != Some(msg.turn) {
            return;
        }
        let Some(p) = agent.pending.take() else {
            return;
        };
        let mut text = p.text;
        if let Err(e) = &msg.result {
            match e {
                LlmError::Timeout(_) => metrics().limit_hit(Limit::DemoLlmTimeout),
                LlmError::TooLarge(_) => metrics().limit_hit(Limit::DemoLlmResponseBytes),
                _ => {}
            }
            tracing::warn!(
                call_id = %shown(&self.call_id),
                error = %shown(&e.to_string()),
                streamed_bytes = text.len(),
                "demo agent: the model failed; the caller hears {}",
                if text.trim().is_empty() { "an apology" } else { "what came" }
            );
            if text.trim().is_empty() {
                // Spoken in the same utterance, so the caller's turn gets one answer; not put in
                // the history: the model did not say it.
                self.stream(&p.utterance_id, APOLOGY.to_owned(), false, ctx);
                text.clear();
            }
        }
        if let Some(agent) = self.agent.as_mut() {
            agent.history.push_assistant(&text);
            agent.last_spoken = Some(p.utterance_id.clone());
        }
        self.stream(&p.utterance_id, String::new(), true, ctx);
    }
}

impl DemoDialog {
    fn send(&self, command: Command, ctx: &mut ws::WebsocketContext<Self>) {
        ctx.text(command.to_json(&self.call_id));
    }

    fn speak(&self, id: String, text: String, ctx: &mut ws::WebsocketContext<Self>) {
        let (utterance_id, meta) = (id, None);
        self.send(
            Command::Speak {
                utterance_id,
                text,
                meta,
            },
            ctx,
        );
    }

    fn stream(&self, id: &str, text: String, end: bool, ctx: &mut ws::WebsocketContext<Self>) {
        let (utterance_id, meta) = (id.to_owned(), None);
        self.send(
            Command::Stream {
                utterance_id,
                text,
                end,
                meta,
            },
            ctx,
        );
    }

    fn on_event(&mut self, text: &str, ctx: &mut ws::WebsocketContext<Self>) {
        let Ok(event) = serde_json::from_str::<Value>(text) else {
            return;
        };
        match event["type"].as_str().unwrap_or("") {
            "call.started" => {
                let greeting = match self.agent.as_mut() {
                    Some(agent) => {
                        agent.history.push_assistant(AGENT_GREETING);
                        agent.last_spoken = Some("greeting".to_owned());
                        AGENT_GREETING
                    }
                    None => GREETING,
                };
                self.speak("greeting".to_owned(), greeting.to_owned(), ctx);
            }
            "asr.final" => {
                let heard = event["text"].as_str().unwrap_or("").trim().to_owned();
                // A backchannel ("mm-hmm" over our speech) is not a turn: our speech goes on.
                if heard.is_empty() || event["backchannel"] == true {
                    return;
                }
                self.turn += 1;
                let lower = heard.to_lowercase();
                if lower.contains("goodbye") || lower.split_whitespace().any(|w| w == "bye") {
                    self.cancel_pending(ctx);
                    let id = format!("farewell-{}", self.turn);
                    self.speak(id.clone(), FAREWELL.to_owned(), ctx);
                    self.farewell = Some(id);
                    return;
                }
                if self.agent.is_some() {
                    self.ask(&heard, ctx);
                } else {
                    self.repeat(&heard, ctx);
                }
            }
            "tts.interrupt" => {
                let id = event["utterance_id"].as_str().unwrap_or("");
                let heard = event["played_text"].as_str().unwrap_or("");
                self.interrupted(id, heard, ctx);
            }
            "tts.ended" if self.farewell.as_deref() == event["utterance_id"].as_str() => {
                let reason = "caller-said-goodbye".to_owned();
                self.send(Command::Hangup { reason }, ctx);
            }
            "dtmf" => {
                let digit = event["digit"].as_str().unwrap_or("");
                self.turn += 1;
                if self.agent.is_some() {
                    // The model reads the key as something the caller did, in words.
                    let said = format!(
                        "(The caller pressed the key {} on the keypad.)",
                        shown(digit)
                    );
                    self.ask(&said, ctx);
                    return;
                }
                let name = match digit {
                    "#" => "hash",
                    "*" => "star",
                    d => d,
                };
                let text = format!("You pressed {name}.");
                self.speak(format!("key-{}", self.turn), text, ctx);
            }
            "call.ended" => ctx.close(Some(ws::CloseCode::Normal.into())),
            _ => {}
        }
    }

    /// Without a model: "You said: ..." streamed in chunks, as an LLM would.
    fn repeat(&mut self, heard: &str, ctx: &mut ws::WebsocketContext<Self>) {
        let id = format!("turn-{}", self.turn);
        let words: Vec<&str> = heard.split_whitespace().collect();
        let half = words.len().div_ceil(2);
        let chunks = [
            "You said: ".to_owned(),
            words[..half].join(" "),
            format!(" {}.", words[half..].join(" ")),
        ];
        for chunk in chunks {
            self.stream(&id, chunk, false, ctx);
        }
        self.stream(&id, String::new(), true, ctx);
    }

    /// With a model: adds `said` to the history and streams the model's answer.
    fn ask(&mut self, said: &str, ctx: &mut ws::WebsocketContext<Self>) {
        // A new turn replaces an answer still streaming (the gateway interrupts its utterance
        // when the new one starts).
        self.cancel_pending(ctx);
        let turn = self.turn;
        let Some(agent) = self.agent.as_mut() else {
            return;
        };
        agent.history.push_user(said);
        agent.last_spoken = None;
        let settings = agent.settings.clone();
        let messages = agent.history.messages();
        let addr = ctx.address();
        let request = async move {
            let tokens = addr.clone();
            let result = stream_answer(&settings, &messages, |text| {
                tokens.do_send(Token { turn, text });
            })
            .await;
            addr.do_send(Answered { turn, result });
        };
        let handle = ctx.spawn(actix::fut::wrap_future(request));
        agent.pending = Some(Pending {
            turn,
            utterance_id: format!("turn-{turn}"),
            text: String::new(),
            handle,
        });
    }

    /// Cancels the answer in progress, if any, keeping what was streamed of it in the history,
    /// and closes its stream.
    fn cancel_pending(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let Some(p) = self.agent.as_mut().and_then(|a| a.pending.take()) else {
            return;
        };
        ctx.cancel_future(p.handle);
        if let Some(agent) = self.agent.as_mut() {
            agent.history.push_assistant(&p.text);
        }
        self.stream(&p.utterance_id, String::new(), true, ctx);
    }

    /// A barge-in cut utterance `id` after `heard`.
    fn interrupted(&mut self, id: &str, heard: &str, ctx: &mut ws::WebsocketContext<Self>) {
        let Some(agent) = self.agent.as_mut() else {
            return;
        };
        if agent.pending.as_ref().is_some_and(|p| p.utterance_id == id) {
            // Still streaming: stop the model, and keep only what was heard.
            if let Some(p) = agent.pending.take() {
                ctx.cancel_future(p.handle);
                agent.history.push_assistant(heard);
                self.stream(&p.utterance_id, String::new(), true, ctx);
            }
        } else if agent.last_spoken.as_deref() == Some(id) {
            // The answer was complete but still playing.
            agent.history.truncate_last_assistant(heard);
            agent.last_spoken = None;
        }
    }
}
