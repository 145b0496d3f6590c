//! The embedded demo dialog app: the default `dialog.url`, served by this process.
//!
//! It speaks the dialog WebSocket protocol from the app's side, so a new user hears a
//! conversation with no app of their own: on `call.started` it greets the caller; on `asr.final`
//! it answers "You said: <text>" with `tts.stream` in a few chunks, the way an LLM would stream;
//! a key press gets "You pressed <key>."; when the caller says goodbye it says goodbye and sends
//! `hangup` once that has played. It is
//! also a small reference for writing a dialog app.
//!
//! It is an actix-web-actors WebSocket actor: a server-side WebSocket that keeps per-connection
//! state and reacts to frames is exactly an actor (the crate is deprecated in favour of
//! `actix-ws`, which has no actor model; the design asks for actors here).

use actix::prelude::*;
use actix_web::{Error, HttpRequest, HttpResponse, web};
use actix_web_actors::ws;
use serde_json::Value;
use voicegate_core::dialog::Command;

/// What the demo says first.
pub const GREETING: &str = "Hello! Say something and I will repeat it.";
/// What it says before hanging up.
pub const FAREWELL: &str = "Goodbye! Thanks for calling.";

/// `GET /dialog/demo?call_id=...`: the WebSocket upgrade.
pub async fn connect(req: HttpRequest, stream: web::Payload) -> Result<HttpResponse, Error> {
    let call_id =
        web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
            .ok()
            .and_then(|q| q.get("call_id").cloned())
            .unwrap_or_default();
    ws::start(
        DemoDialog {
            call_id,
            turn: 0,
            farewell: None,
        },
        &req,
        stream,
    )
}

/// One call's demo conversation.
struct DemoDialog {
    /// The call it talks to.
    call_id: String,
    /// Answers given so far.
    turn: u32,
    /// The farewell's utterance id, once said: hang up when it has played.
    farewell: Option<String>,
}

impl Actor for DemoDialog {
    type Context = ws::WebsocketContext<Self>;
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
                self.speak("greeting".to_owned(), GREETING.to_owned(), ctx);
            }
            "asr.final" => {
                let heard = event["text"].as_str().unwrap_or("").trim().to_owned();
                if heard.is_empty() {
                    return;
                }
                self.turn += 1;
                let lower = heard.to_lowercase();
                if lower.contains("goodbye") || lower.split_whitespace().any(|w| w == "bye") {
                    let id = format!("farewell-{}", self.turn);
                    self.speak(id.clone(), FAREWELL.to_owned(), ctx);
                    self.farewell = Some(id);
                    return;
                }
                // Stream the answer in chunks, as an LLM would.
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
            "tts.ended" if self.farewell.as_deref() == event["utterance_id"].as_str() => {
                let reason = "caller-said-goodbye".to_owned();
                self.send(Command::Hangup { reason }, ctx);
            }
            "dtmf" => {
                let digit = event["digit"].as_str().unwrap_or("");
                let name = match digit {
                    "#" => "hash",
                    "*" => "star",
                    d => d,
                };
                self.turn += 1;
                let text = format!("You pressed {name}.");
                self.speak(format!("key-{}", self.turn), text, ctx);
            }
            "call.ended" => ctx.close(Some(ws::CloseCode::Normal.into())),
            _ => {}
        }
    }
}
