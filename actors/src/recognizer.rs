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
//! which goes on (speech out, DTMF and hangup still work). The limits an engine enforces itself
//! (a stalled reply, a full decoder queue, a caller's audio that stopped mid-utterance, a reply
//! or message too large: `AsrError::limit`) are counted here, since the engines keep no metrics.
//!
//! Deadline: every engine must give an utterance's result within `asr.utterance_deadline_ms` of
//! the utterance's end. Past it the recognizer drops the engine session (which aborts an HTTP
//! request, or lets a pocketsphinx decoder drop the utterance and take the next one), reports
//! `asr.error` ("recognition timed out"), and counts `Limit::AsrDeadline`. The call goes on.
//! So an engine that never answers (a stalled server, a long decoder queue, a bug) costs one
//! utterance, and nothing about it is kept waiting for the rest of the call.

use crate::metrics::{EngineLabel, Limit, Outcome, metrics};
use crate::trace_msg;
use actix::prelude::*;
use futures_util::StreamExt;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use voicegate_core::call_id::CallId;
use voicegate_core::dialog::NetReport;
use voicegate_core::listen::UtteranceNetStats;
use voicegate_core::session::AsrOptions;
use voicegate_core::untrusted::shown;
use voicegate_engines::asr::{AsrEngine, AsrFactory, AsrLimit, AsrUpdate, UtteranceSink};

/// How a call's recognizer behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecognizerSettings {
    /// Minimum time between partials (`asr.partial_interval_ms`).
    pub partial_interval: Duration,
    /// Longest wait for a result after an utterance ended (`asr.utterance_deadline_ms`).
    pub utterance_deadline: Duration,
}

/// Utterance audio from the codec: speech-rate PCM (16 kHz mono, [`voicegate_core::frame`])
/// whatever the call's rate.
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
        /// The silence at its end: its last voiced frame was this long before the end.
        trailing: Duration,
    },
}

/// Reports to the call.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub enum RecognizerEvent {
    /// Interim text (rate-limited by `asr.partial_interval_ms`, for the app) and the engine's
    /// confidence in it, if it gives one.
    Partial(String, Option<f32>),
    /// The engine's hypothesis changed (every change, not rate-limited), with its confidence:
    /// what endpointing and barge-in confirmation listen to.
    Hypothesis(String, Option<f32>),
    /// The caller started speaking (the endpointer started an utterance).
    SpeechStarted,
    /// The caller stopped speaking (the endpointer ended an utterance); its result follows.
    SpeechEnded,
    /// An utterance ended with nothing recognized (noise, a cough).
    Unheard,
    /// A finished utterance.
    Final {
        /// The text.
        text: String,
        /// The engine's confidence in it, if it gives one.
        confidence: Option<f32>,
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

/// An utterance whose result has not come yet.
struct Pending {
    /// Its number.
    n: u64,
    /// Its engine session's results.
    results: SpawnHandle,
    /// Its engine, for the per-engine metrics.
    engine: EngineLabel,
    /// When its first audio went to the engine; `None` once its first result came.
    started: Option<Instant>,
    /// Once it ended: what the network did to it, when it ended, and its deadline timer.
    ended: Option<(NetReport, Instant, SpawnHandle)>,
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
    /// Utterances awaiting their result, oldest first.
    pending: Vec<Pending>,
    /// The last partial sent and when.
    last_partial: (String, Option<Instant>),
    /// Partial rate and result deadline.
    settings: RecognizerSettings,
    /// Counted in `voicegate_actors_live` while it exists.
    _live: crate::metrics::Live,
}

impl Recognizer {
    /// A recognizer for one call.
    pub fn new(
        call_id: CallId,
        span: tracing::Span,
        engine: Rc<dyn AsrEngine>,
        settings: RecognizerSettings,
        parent: Recipient<RecognizerEvent>,
    ) -> Self {
        Recognizer {
            call_id,
            span,
            engine: Some(engine),
            parent,
            current: None,
            count: 0,
            pending: Vec::new(),
            last_partial: (String::new(), None),
            settings,
            _live: crate::metrics::Live::new(crate::metrics::ActorKind::Recognizer),
        }
    }

    fn start(&mut self, audio: &[i16], ctx: &mut Context<Self>) {
        // An utterance that never got its end (the codec was replaced mid-utterance) ends here.
        self.end_current(NetReport::default(), Duration::ZERO, ctx);
        let Some(engine) = &self.engine else {
            return;
        };
        self.count += 1;
        let n = self.count;
        let (mut sink, results) = engine.utterance();
        sink.push(audio);
        self.current = Some((n, sink));
        self.last_partial = (String::new(), None);
        let results = ctx.add_stream(results.map(move |update| Update { n, update }));
        self.pending.push(Pending {
            n,
            results,
            engine: EngineLabel::asr(engine.name()),
            started: Some(Instant::now()),
            ended: None,
        });
    }

    /// The utterance being heard ended: its result is due within the deadline. Its speech
    /// ended `trailing` before now, which is where the time to its result is counted from.
    fn end_current(&mut self, net: NetReport, trailing: Duration, ctx: &mut Context<Self>) {
        let Some((n, sink)) = self.current.take() else {
            return;
        };
        sink.finish();
        // An utterance that already failed (refused at its start) has nothing left to wait for.
        if !self.pending.iter().any(|p| p.n == n) {
            return;
        }
        let timer = ctx.run_later(self.settings.utterance_deadline, move |act, ctx| {
            act.expire(n, ctx)
        });
        if let Some(p) = self.pending.iter_mut().find(|p| p.n == n) {
            let now = Instant::now();
            p.ended = Some((net, now.checked_sub(trailing).unwrap_or(now), timer));
        }
    }

    /// Utterance `n` has its result (or failed): no deadline for it any more. Counts it under
    /// `outcome` in `voicegate_engine_requests_total`.
    fn settle(
        &mut self,
        n: u64,
        outcome: Outcome,
        ctx: &mut Context<Self>,
    ) -> Option<(NetReport, Instant)> {
        let i = self.pending.iter().position(|p| p.n == n)?;
        let p = self.pending.remove(i);
        metrics().engine_request(p.engine, outcome);
        let (net, ended_at, timer) = p.ended?;
        ctx.cancel_future(timer);
        Some((net, ended_at))
    }

    /// Utterance `n`'s deadline passed: give up on it.
    fn expire(&mut self, n: u64, ctx: &mut Context<Self>) {
        let Some(i) = self.pending.iter().position(|p| p.n == n) else {
            return;
        };
        let p = self.pending.remove(i);
        // Dropping the session aborts it at the engine.
        ctx.cancel_future(p.results);
        metrics().limit_hit(Limit::AsrDeadline);
        metrics().engine_request(p.engine, Outcome::Timeout);
        let ms = self.settings.utterance_deadline.as_millis();
        self.span.in_scope(|| {
            tracing::warn!(
                deadline_ms = ms as u64,
                "speech recognition timed out; the utterance is dropped"
            )
        });
        self.parent.do_send(RecognizerEvent::Error {
            message: format!("recognition timed out: no result {ms} ms after the utterance ended"),
            fatal: false,
        });
    }
}

impl Actor for Recognizer {
    type Context = Context<Self>;
}

/// A session chose another recognizer or its options (`session.update`): the next utterance
/// uses it; the one in progress finishes on the old one. The call checked the options with the
/// same factory, so they hold. After a fatal engine error recognition stays off.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetEngine(pub Arc<dyn AsrFactory>, pub AsrOptions);

impl Handler<SetEngine> for Recognizer {
    type Result = ();

    fn handle(&mut self, SetEngine(factory, options): SetEngine, _: &mut Self::Context) {
        trace_msg!(self.call_id, "call" => "recognizer", "SetEngine", "{options:?}");
        if self.engine.is_some() {
            self.engine = Some(
                factory
                    .with_options(&options)
                    .unwrap_or_else(|_| factory.for_call()),
            );
        }
    }
}

impl Handler<Heard> for Recognizer {
    type Result = ();

    fn handle(&mut self, msg: Heard, ctx: &mut Self::Context) {
        match msg {
            Heard::Start(audio) => {
                trace_msg!(self.call_id, "codec" => "recognizer", "Heard::Start", "{} samples", audio.len());
                self.parent.do_send(RecognizerEvent::SpeechStarted);
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
                trailing,
            } => {
                trace_msg!(self.call_id, "codec" => "recognizer", "Heard::End", "{} ms", duration.as_millis());
                self.parent.do_send(RecognizerEvent::SpeechEnded);
                let report = NetReport {
                    lost_ms: lost_frames as u32 * 20,
                    recovered_ms: net.recovered * 20,
                    concealed_ms: net.concealed * 20,
                };
                self.end_current(report, trailing, ctx);
            }
        }
    }
}

impl StreamHandler<Update> for Recognizer {
    fn handle(&mut self, Update { n, update }: Update, ctx: &mut Self::Context) {
        // The first result of an utterance, partial or final (an error is none).
        if !matches!(update, AsrUpdate::Error(_))
            && let Some(p) = self.pending.iter_mut().find(|p| p.n == n)
            && let Some(started) = p.started.take()
        {
            metrics().engine_first_result(p.engine, started.elapsed());
        }
        match update {
            AsrUpdate::Partial(text, confidence) => {
                let text = text.trim().to_owned();
                // The latest utterance's: while it is heard, or after it ended for an engine that
                // streams its result (openai's events). An older one's partials are stale.
                let current = n == self.count;
                if current && !text.is_empty() {
                    self.parent
                        .do_send(RecognizerEvent::Hypothesis(text.clone(), confidence));
                }
                let due = self
                    .last_partial
                    .1
                    .is_none_or(|t| t.elapsed() >= self.settings.partial_interval);
                if current && !text.is_empty() && text != self.last_partial.0 && due {
                    self.last_partial = (text.clone(), Some(Instant::now()));
                    self.parent
                        .do_send(RecognizerEvent::Partial(text, confidence));
                }
            }
            AsrUpdate::Final(text, confidence) => {
                let (net, ended_at) = self
                    .settle(n, Outcome::Ok, ctx)
                    .unwrap_or_else(|| (NetReport::default(), Instant::now()));
                if let Some(text) = text.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()) {
                    let latency = ended_at.elapsed();
                    self.span.in_scope(|| {
                        tracing::info!(
                            text = %shown(&text),
                            final_ms = latency.as_millis() as u64,
                            "heard"
                        )
                    });
                    self.parent.do_send(RecognizerEvent::Final {
                        text,
                        confidence,
                        net,
                        latency,
                    });
                } else {
                    self.parent.do_send(RecognizerEvent::Unheard);
                }
            }
            AsrUpdate::Error(error) => {
                let outcome = if error.refused() {
                    Outcome::Refused
                } else if error.stalled() {
                    Outcome::Timeout
                } else {
                    Outcome::Error
                };
                self.settle(n, outcome, ctx);
                // The engines' own limits are counted here: the engines keep no metrics.
                if let Some(limit) = error.limit() {
                    metrics().limit_hit(match limit {
                        AsrLimit::StreamIdle => Limit::AsrStreamIdle,
                        AsrLimit::QueueFull => Limit::AsrQueueFull,
                        AsrLimit::AudioGap => Limit::AsrAudioGap,
                        AsrLimit::ReplyBytes => Limit::AsrReplyBytes,
                        AsrLimit::MessageBytes => Limit::AsrMessageBytes,
                    });
                }
                let (message, fatal) = (error.to_string(), error.is_fatal());
                self.span.in_scope(
                    || tracing::warn!(error = %shown(&message), fatal, "speech recognition failed"),
                );
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};
    use tokio::sync::oneshot;

    /// An engine whose first utterance never gets a result and whose later ones get "later".
    struct Engine {
        /// Utterances started.
        started: Cell<u32>,
        /// Sessions dropped (aborted or done).
        dropped: Rc<Cell<u32>>,
    }

    struct Sink(oneshot::Sender<()>);

    impl UtteranceSink for Sink {
        fn push(&mut self, _pcm: &[i16]) {}
        fn finish(self: Box<Self>) {
            let _ = self.0.send(());
        }
    }

    /// Counts its drop.
    struct Guard(Rc<Cell<u32>>);

    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }

    impl AsrEngine for Engine {
        fn name(&self) -> &'static str {
            "test"
        }

        fn utterance(&self) -> (Box<dyn UtteranceSink>, voicegate_engines::asr::AsrStream) {
            let (tx, rx) = oneshot::channel();
            self.started.set(self.started.get() + 1);
            let answers = self.started.get() > 1;
            let guard = Guard(self.dropped.clone());
            let stream = futures_util::stream::once(async move {
                let _guard = guard;
                let _ = rx.await;
                if !answers {
                    std::future::pending::<()>().await;
                }
                AsrUpdate::Final(Some("later".into()), None)
            });
            (Box::new(Sink(tx)), Box::pin(stream))
        }
    }

    /// What the call would hear, as text.
    struct Collect(Rc<RefCell<Vec<String>>>);

    impl Actor for Collect {
        type Context = Context<Self>;
    }

    impl Handler<RecognizerEvent> for Collect {
        type Result = ();

        fn handle(&mut self, msg: RecognizerEvent, _ctx: &mut Self::Context) {
            self.0.borrow_mut().push(match msg {
                RecognizerEvent::Partial(t, _) => format!("partial {t}"),
                RecognizerEvent::Final { text, .. } => format!("final {text}"),
                // What endpointing listens to; these tests look at what the app gets.
                RecognizerEvent::Hypothesis(..)
                | RecognizerEvent::SpeechStarted
                | RecognizerEvent::SpeechEnded
                | RecognizerEvent::Unheard => return,
                RecognizerEvent::Error { message, fatal } => format!("error {fatal} {message}"),
            });
        }
    }

    fn utterance(r: &Addr<Recognizer>) {
        r.do_send(Heard::Start(
            vec![0; voicegate_core::frame::SPEECH_FRAME_SAMPLES],
        ));
        r.do_send(Heard::End {
            net: UtteranceNetStats::default(),
            lost_frames: 0,
            duration: Duration::from_millis(20),
            trailing: Duration::ZERO,
        });
    }

    #[actix_rt::test]
    async fn an_utterance_without_a_result_times_out_and_the_next_one_is_heard() {
        tokio::time::pause();
        let heard = Rc::new(RefCell::new(Vec::new()));
        let dropped = Rc::new(Cell::new(0));
        let engine = Rc::new(Engine {
            started: Cell::new(0),
            dropped: dropped.clone(),
        });
        let settings = RecognizerSettings {
            partial_interval: Duration::from_millis(300),
            utterance_deadline: Duration::from_millis(1000),
        };
        let deadlines_before = metrics().limit_hits(Limit::AsrDeadline);
        let counted = |o| metrics().engine_requests[EngineLabel::Other][o].get();
        let (ok_before, timeouts_before) = (counted(Outcome::Ok), counted(Outcome::Timeout));
        let firsts = || metrics().engine_first_result[EngineLabel::Other].0.count();
        let firsts_before = firsts();
        let parent = Collect(heard.clone()).start().recipient();
        let span = tracing::Span::none();
        let call_id = CallId::parse("test-00000000000000000000000000000001").unwrap();
        let r = Recognizer::new(call_id, span, engine, settings, parent).start();
        utterance(&r);
        utterance(&r);
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert_eq!(
            *heard.borrow(),
            ["final later"],
            "the second is heard at once"
        );
        assert_eq!(
            dropped.get(),
            1,
            "the second session is done; the first still runs"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            *heard.borrow(),
            [
                "final later",
                "error false recognition timed out: no result 1000 ms after the utterance ended"
            ]
        );
        assert_eq!(
            dropped.get(),
            2,
            "the timed-out session was dropped (aborted)"
        );
        assert_eq!(
            metrics().limit_hits(Limit::AsrDeadline) - deadlines_before,
            1
        );
        // Per engine: one utterance answered, one timed out; the one answered had a first
        // result, the timed-out one none.
        assert_eq!(counted(Outcome::Ok) - ok_before, 1);
        assert_eq!(counted(Outcome::Timeout) - timeouts_before, 1);
        assert_eq!(firsts() - firsts_before, 1);
        // The recognizer keeps working after a timeout.
        utterance(&r);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(heard.borrow().last().unwrap(), "final later");
        assert!(r.connected());
    }
}
