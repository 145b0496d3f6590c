//! `Recognizer`: a call's speech in — utterances from the codec's endpointer to the ASR engine,
//! results to the call as `asr.partial` / `asr.final` / `asr.error`.
//!
//! Each utterance gets its own engine session, so nothing carries over from one turn to the next
//! (the original's sentence filter leaked the previous turn's words into the next one). Partials
//! are rate-limited and sent only when the text changed; exactly one final is reported per
//! utterance, and only when something was recognized. Each final carries what the network did to
//! that utterance's audio.
//!
//! Failure: an engine error becomes `asr.error`; a fatal one turns recognition off for the call,
//! which goes on (speech out, DTMF and hangup still work).

use crate::asr::{AsrEngine, AsrUpdate, UtteranceSink};
use crate::trace_msg;
use actix::prelude::*;
use futures_util::StreamExt;
use std::rc::Rc;
use std::time::{Duration, Instant};
use voicegate_core::call_id::CallId;
use voicegate_core::dialog::NetReport;
use voicegate_core::listen::UtteranceNetStats;

/// Utterance audio from the codec.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub enum Heard {
    /// An utterance started: pre-roll and the speech that started it.
    Start(Vec<i16>),
    /// More of it.
    Audio(Vec<i16>),
    /// It ended.
    End {
        /// Frame origins within it.
        net: UtteranceNetStats,
        /// Packets lost while it lasted.
        lost_frames: u64,
        /// Its length.
        duration: Duration,
    },
}

/// Reports to the call.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub enum RecognizerEvent {
    /// Interim text.
    Partial(String),
    /// A finished utterance.
    Final {
        /// The text.
        text: String,
        /// What the network did to it.
        net: NetReport,
        /// From the end of speech to this result.
        latency: Duration,
    },
    /// The engine failed.
    Error {
        /// What happened.
        message: String,
        /// Recognition is off for the rest of the call.
        fatal: bool,
    },
}

/// The call is ending: stop.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Stop;

impl Handler<Stop> for Recognizer {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// One result of utterance `n`.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct Update {
    n: u64,
    update: AsrUpdate,
}

/// The actor.
pub struct Recognizer {
    /// The call's id.
    call_id: CallId,
    /// The call's span.
    span: tracing::Span,
    /// The engine; `None` after a fatal error.
    engine: Option<Rc<dyn AsrEngine>>,
    /// The call actor.
    parent: Recipient<RecognizerEvent>,
    /// The utterance being heard: its number and sink.
    current: Option<(u64, Box<dyn UtteranceSink>)>,
    /// Utterances started so far.
    count: u64,
    /// Network reports and end times of ended utterances awaiting their final.
    ended: Vec<(u64, NetReport, Instant)>,
    /// The last partial sent and when.
    last_partial: (String, Option<Instant>),
    /// Minimum time between partials.
    partial_interval: Duration,
    /// Counted in `voicegate_actors_live` while it exists.
    _live: crate::metrics::Live,
}

impl Recognizer {
    /// A recognizer for one call.
    pub fn new(
        call_id: CallId,
        span: tracing::Span,
        engine: Rc<dyn AsrEngine>,
        partial_interval: Duration,
        parent: Recipient<RecognizerEvent>,
    ) -> Self {
        Recognizer {
            call_id,
            span,
            engine: Some(engine),
            parent,
            current: None,
            count: 0,
            ended: Vec::new(),
            last_partial: (String::new(), None),
            partial_interval,
            _live: crate::metrics::Live::new("recognizer"),
        }
    }

    fn start(&mut self, audio: &[i16], ctx: &mut Context<Self>) {
        if let Some((_, sink)) = self.current.take() {
            sink.finish();
        }
        let Some(engine) = &self.engine else {
            return;
        };
        self.count += 1;
        let n = self.count;
        let (mut sink, results) = engine.utterance();
        sink.push(audio);
        self.current = Some((n, sink));
        self.last_partial = (String::new(), None);
        ctx.add_stream(results.map(move |update| Update { n, update }));
    }
}

impl Actor for Recognizer {
    type Context = Context<Self>;
}

impl Handler<Heard> for Recognizer {
    type Result = ();

    fn handle(&mut self, msg: Heard, ctx: &mut Self::Context) {
        match msg {
            Heard::Start(audio) => {
                trace_msg!(self.call_id, "codec" => "recognizer", "Heard::Start", "{} samples", audio.len());
                self.start(&audio, ctx);
            }
            Heard::Audio(audio) => {
                if let Some((_, sink)) = self.current.as_mut() {
                    sink.push(&audio);
                }
            }
            Heard::End {
                net,
                lost_frames,
                duration,
            } => {
                trace_msg!(self.call_id, "codec" => "recognizer", "Heard::End", "{} ms", duration.as_millis());
                if let Some((n, sink)) = self.current.take() {
                    sink.finish();
                    let report = NetReport {
                        lost_ms: lost_frames as u32 * 20,
                        recovered_ms: net.recovered * 20,
                        concealed_ms: net.concealed * 20,
                    };
                    self.ended.push((n, report, Instant::now()));
                }
            }
        }
    }
}

impl StreamHandler<Update> for Recognizer {
    fn handle(&mut self, Update { n, update }: Update, _ctx: &mut Self::Context) {
        match update {
            AsrUpdate::Partial(text) => {
                let text = text.trim().to_owned();
                let current = self.current.as_ref().is_some_and(|(c, _)| *c == n);
                let due = self
                    .last_partial
                    .1
                    .is_none_or(|t| t.elapsed() >= self.partial_interval);
                if current && !text.is_empty() && text != self.last_partial.0 && due {
                    self.last_partial = (text.clone(), Some(Instant::now()));
                    self.parent.do_send(RecognizerEvent::Partial(text));
                }
            }
            AsrUpdate::Final(text) => {
                let (net, ended_at) = match self.ended.iter().position(|(e, _, _)| *e == n) {
                    Some(i) => {
                        let (_, net, at) = self.ended.remove(i);
                        (net, at)
                    }
                    None => (NetReport::default(), Instant::now()),
                };
                if let Some(text) = text.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()) {
                    let latency = ended_at.elapsed();
                    self.span.in_scope(
                        || tracing::info!(%text, final_ms = latency.as_millis() as u64, "heard"),
                    );
                    self.parent
                        .do_send(RecognizerEvent::Final { text, net, latency });
                }
            }
            AsrUpdate::Error { message, fatal } => {
                self.span
                    .in_scope(|| tracing::warn!(%message, fatal, "speech recognition failed"));
                if fatal {
                    self.engine = None;
                    self.current = None;
                }
                self.parent
                    .do_send(RecognizerEvent::Error { message, fatal });
            }
        }
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {
        // One utterance's results ended; the recognizer lives on.
    }
}
