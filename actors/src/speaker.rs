//! `Speaker`: a call's speech out — the shell around the [`Player`] state machine.
//!
//! It takes the dialog app's speech commands (through its `CallActor`), runs the syntheses the
//! player asks for on the call's engine, resamples their audio to the call's rate and hands it to
//! the `AudioCodec` tagged by segment. The codec reports each segment's first and last frame, and
//! barge-ins, straight back here ([`PlaybackEvent`]); they become `tts.started` / `tts.ended` /
//! `tts.interrupt`. Cancelling a synthesis drops its stream, which aborts it at the engine.
//!
//! voicegate's own prompts (what the caller hears while the dialog app reconnects, and the
//! give-up prompt) are spoken with `report: false`: the player reports nothing for them, so they never
//! reach the dialog app or the page and never count in the latency metrics; only their end is
//! told ([`SpeakerEvent::PromptEnded`]).
//!
//! Limits: the player refuses or cuts short what is beyond `tts.max_text_bytes` and
//! `tts.max_queued_utterances`, and cuts a segment whose synthesized audio, resampled to the
//! call's rate, reaches `tts.max_segment_audio_ms` (its `Cancel` stops the synthesis here); each
//! hit is counted in `voicegate_limit_hits_total` here, and the utterance's `tts.ended` carries
//! the reason.
//!
//! Failure: a synthesis error ends that utterance with `ok: false` (the player decides); a stalled
//! audio stream is also counted here (`Limit::TtsStreamIdle`: the engines keep no metrics); the
//! call goes on. If the codec is replaced after a failure, whatever it had queued is lost, so the
//! utterances in progress end with `ok: false` ([`PlayoutLost`]; likewise audio held too long
//! through a media interruption).

use crate::codec::{AudioCodec, EndSegment, Flush, Play};
use crate::metrics::{EngineLabel, Limit, Outcome, metrics};
use crate::trace_msg;
use actix::prelude::*;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use voicegate_core::call_id::CallId;
use voicegate_core::dialog::Event;
use voicegate_core::resample::StreamResampler;
use voicegate_core::session::TtsOptions;
use voicegate_core::speech::{Input, Output, Player, PlayerSettings, SegmentId, TtsLimit};
use voicegate_core::untrusted::shown;
use voicegate_engines::tts::{TtsEngine, TtsError, TtsFactory, UtteranceSynth};

/// Reports to the call.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub enum SpeakerEvent {
    /// A `tts.started` or `tts.ended` for the dialog app.
    Tts(Event),
    /// A segment began playing: the text the caller hears now.
    Segment {
        /// Utterance.
        id: String,
        /// Text.
        text: String,
    },
    /// An internal prompt (spoken with `report: false`) is over: played, cut short, or dropped.
    PromptEnded {
        /// The prompt's id, as the call named it.
        id: String,
    },
    /// An utterance's first audio left: its latencies.
    FirstAudio {
        /// Utterance.
        id: String,
        /// Command to first frame.
        tts_first: Duration,
        /// Last `asr.final` to first frame, when there was one.
        since_asr_final: Option<Duration>,
    },
}

/// `tts.speak`, or one of voicegate's own prompts.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Speak {
    /// Utterance id.
    pub id: String,
    /// Text.
    pub text: String,
    /// The dialog app's utterance: its `tts.*` events are reported and the limits apply. False
    /// for voicegate's own prompts, whose only report is [`SpeakerEvent::PromptEnded`].
    pub report: bool,
}

/// `tts.stream` / `tts.stream.end`.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StreamText {
    /// Utterance id.
    pub id: String,
    /// Chunk.
    pub text: String,
    /// Last chunk.
    pub end: bool,
}

/// `tts.interrupt`.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Interrupt;

/// A final transcript arrived (latency anchor).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct AsrFinal;

/// An utterance is likely soon (the caller started or stopped speaking): the engine readies what
/// it can ([`voicegate_engines::tts::TtsEngine::prepare`]).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Prepare;

/// Where audio goes (the codec starts after the speaker, and may be replaced).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct SetCodec(pub Option<Addr<AudioCodec>>);

/// What the codec had queued is gone: it was replaced after a failure, or the call dropped audio
/// held through a media interruption longer than `calls.interrupted_hold_ms`. The utterances in
/// progress end with `ok: false`.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct PlayoutLost;

/// The codec's reports on the speech it plays, sent straight from the codec.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub enum PlaybackEvent {
    /// A segment's first or last frame left voicegate.
    Played {
        /// The segment.
        segment: SegmentId,
        /// Its first frame went out.
        first: bool,
        /// Its last frame went out.
        last: bool,
        /// Frames of it sent so far.
        frames: u32,
    },
    /// The caller talked over our playback; the codec already cleared it. `segment` was in
    /// progress with `frames` of it sent.
    BargedIn {
        /// The segment in progress, if one was.
        segment: Option<SegmentId>,
        /// Its frames sent.
        frames: u32,
    },
    /// The caller's voice paused playback (confirmed barge-in); nothing was cleared.
    Paused {
        /// The segment in progress, if one was.
        segment: Option<SegmentId>,
        /// Its frames sent.
        frames: u32,
    },
    /// The pause was not an interruption: playback goes on.
    Resumed,
}

/// The call is ending: returns the `tts.ended` events of everything still queued, then stops.
#[derive(Debug, Message)]
#[rtype(result = "Vec<Event>")]
pub struct Finish;

/// One item from a synthesis stream.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct SynthItem {
    segment: SegmentId,
    /// `None`: the stream ended.
    item: Option<Result<Vec<i16>, TtsError>>,
}

/// A synthesis in flight.
struct Synthesis {
    handle: SpawnHandle,
    /// From the rate of the engine that speaks it (its utterance's [`Voice`]) to the call's.
    resampler: StreamResampler,
    /// That engine's rate.
    rate: u32,
    failed: bool,
    /// Its engine, for the per-engine metrics.
    engine: EngineLabel,
    /// When it was asked for; `None` once its first audio came.
    started: Option<Instant>,
}

impl Synthesis {
    /// Dropped before it ended (a barge-in, a cut, the call's end): counted as cancelled.
    fn cancel(self, ctx: &mut Context<Speaker>) {
        ctx.cancel_future(self.handle);
        metrics().engine_request(self.engine, Outcome::Cancelled);
    }
}

/// An utterance at the engine that spoke its first segment: the rest of it is spoken there too,
/// even after a [`SetEngine`] (a streaming engine speaks an utterance in one vendor context), so
/// its audio is resampled from that engine's rate, not the new engine's (which would play it at
/// the wrong speed and pitch).
struct Voice {
    /// The engine's handle for the utterance.
    synth: Box<dyn UtteranceSynth>,
    /// The rate of the PCM it produces.
    rate: u32,
    /// Its engine, for the per-engine metrics.
    engine: EngineLabel,
}

/// The actor.
pub struct Speaker {
    /// The call's id.
    call_id: CallId,
    /// The call's span.
    span: tracing::Span,
    /// The state machine.
    player: Player,
    /// The call's speech engine.
    engine: Rc<dyn TtsEngine>,
    /// The call's PCM rate.
    pcm_rate: u32,
    /// The call actor.
    parent: Recipient<SpeakerEvent>,
    /// Where audio goes; `None` until the codec runs.
    codec: Option<Addr<AudioCodec>>,
    /// Codec messages waiting for a codec.
    waiting: Vec<Output>,
    /// Syntheses in flight.
    synths: HashMap<SegmentId, Synthesis>,
    /// The engine's handle for each utterance with segments synthesized, by serial: a
    /// streaming engine speaks an utterance in one vendor context.
    voices: HashMap<u64, Voice>,
    /// Counted in `voicegate_actors_live` while it exists.
    _live: crate::metrics::Live,
}

impl Speaker {
    /// A speaker for one call.
    pub fn new(
        call_id: CallId,
        span: tracing::Span,
        settings: PlayerSettings,
        engine: Rc<dyn TtsEngine>,
        pcm_rate: u32,
        parent: Recipient<SpeakerEvent>,
    ) -> Self {
        Speaker {
            call_id,
            span,
            player: Player::new(settings),
            engine,
            pcm_rate,
            parent,
            codec: None,
            waiting: Vec::new(),
            synths: HashMap::new(),
            voices: HashMap::new(),
            _live: crate::metrics::Live::new(crate::metrics::ActorKind::Speaker),
        }
    }

    fn input(&mut self, input: Input<'_>, ctx: &mut Context<Self>) {
        let outputs = self.player.handle(input, Instant::now());
        for o in outputs {
            self.execute(o, ctx);
        }
    }

    fn execute(&mut self, output: Output, ctx: &mut Context<Self>) {
        match output {
            Output::Synthesize {
                segment,
                utterance,
                text,
            } => self.synthesize(segment, utterance, &text, ctx),
            Output::UtteranceDone { utterance } => {
                // Its vendor context ends (or is cancelled, if segments were in flight).
                self.voices.remove(&utterance);
            }
            Output::Cancel { segment } => {
                if let Some(s) = self.synths.remove(&segment) {
                    s.cancel(ctx);
                }
            }
            o @ (Output::Play { .. } | Output::EndOfSegment { .. } | Output::FlushPlayback) => {
                self.send_to_codec(o)
            }
            Output::Started { id } => self.report(Event::TtsStarted { utterance_id: id }),
            Output::Ended { id, ok, reason } => self.report(Event::TtsEnded {
                utterance_id: id,
                ok,
                reason,
            }),
            Output::LimitHit { id, limit } => {
                metrics().limit_hit(match limit {
                    TtsLimit::TextTooLong => Limit::TtsTextBytes,
                    TtsLimit::QueueFull => Limit::TtsQueuedUtterances,
                    TtsLimit::AudioTooLong => Limit::TtsSegmentAudio,
                });
                if limit == TtsLimit::AudioTooLong {
                    // The engine misbehaved, not the app: worth a warning, and there is at most
                    // one per segment asked for (the player's `Cancel` for it follows).
                    self.span.in_scope(|| {
                        tracing::warn!(
                            utterance_id = %shown(&id),
                            reason = limit.label(),
                            "synthesis cut: a segment's audio reached tts.max_segment_audio_ms"
                        )
                    });
                } else {
                    // Debug only: a burst of refusals must not flood the log (the metric counts
                    // them).
                    self.span.in_scope(|| {
                        tracing::debug!(
                            utterance_id = %shown(&id),
                            reason = limit.label(),
                            "utterance refused or cut short by a limit"
                        )
                    });
                }
            }
            Output::Interrupted {
                id,
                played_ms,
                segments,
            } => self.report(Event::TtsInterrupt {
                utterance_id: id,
                played_ms,
                segments,
            }),
            Output::Paused { id, played_ms } => self.report(Event::TtsPaused {
                utterance_id: id,
                played_ms,
            }),
            Output::Resumed { id } => self.report(Event::TtsResumed { utterance_id: id }),
            Output::SegmentStarted { id, text } => {
                self.parent.do_send(SpeakerEvent::Segment { id, text })
            }
            Output::PromptEnded { id } => {
                trace_msg!(self.call_id, "speaker" => "call", "SpeakerEvent::PromptEnded");
                self.parent.do_send(SpeakerEvent::PromptEnded { id });
            }
            Output::FirstAudio {
                id,
                tts_first,
                since_asr_final,
            } => {
                self.parent.do_send(SpeakerEvent::FirstAudio {
                    id,
                    tts_first,
                    since_asr_final,
                });
            }
        }
    }

    fn report(&self, event: Event) {
        trace_msg!(self.call_id, "speaker" => "call", "SpeakerEvent::Tts", "{}", event.kind());
        self.parent.do_send(SpeakerEvent::Tts(event));
    }

    fn send_to_codec(&mut self, output: Output) {
        let Some(codec) = &self.codec else {
            if matches!(output, Output::FlushPlayback) {
                self.waiting.clear();
            } else {
                self.waiting.push(output);
            }
            return;
        };
        match output {
            Output::Play { segment, pcm } => codec.do_send(Play { segment, pcm }),
            Output::EndOfSegment { segment } => codec.do_send(EndSegment { segment }),
            Output::FlushPlayback => codec.do_send(Flush),
            _ => {}
        }
    }

    fn synthesize(
        &mut self,
        segment: SegmentId,
        utterance: u64,
        text: &str,
        ctx: &mut Context<Self>,
    ) {
        let engine = &self.engine;
        let voice = self.voices.entry(utterance).or_insert_with(|| Voice {
            synth: engine.clone().utterance(),
            rate: engine.sample_rate(),
            engine: EngineLabel::tts(engine.name()),
        });
        let (rate, label) = (voice.rate, voice.engine);
        let resampler = match StreamResampler::new(rate, self.pcm_rate) {
            Ok(r) => r,
            Err(e) => {
                self.span
                    .in_scope(|| tracing::error!(error = %e, "no resampler for the engine's rate"));
                return self.input(Input::Synthesized { segment, ok: false }, ctx);
            }
        };
        trace_msg!(self.call_id, "speaker" => "engine", "Synthesize", "segment {segment}, {} chars", text.chars().count());
        let stream = voice
            .synth
            .segment(text)
            .map(move |r| SynthItem {
                segment,
                item: Some(r),
            })
            .chain(futures_util::stream::once(async move {
                SynthItem {
                    segment,
                    item: None,
                }
            }));
        let handle = ctx.add_stream(stream);
        self.synths.insert(
            segment,
            Synthesis {
                handle,
                resampler,
                rate,
                failed: false,
                engine: label,
                started: Some(Instant::now()),
            },
        );
    }
}

impl Actor for Speaker {
    type Context = Context<Self>;
}

impl StreamHandler<SynthItem> for Speaker {
    fn handle(&mut self, msg: SynthItem, ctx: &mut Self::Context) {
        let Some(s) = self.synths.get_mut(&msg.segment) else {
            return; // cancelled
        };
        if s.failed {
            return;
        }
        match msg.item {
            Some(Ok(pcm)) => {
                if !pcm.is_empty()
                    && let Some(started) = s.started.take()
                {
                    metrics().engine_first_result(s.engine, started.elapsed());
                }
                let mut out = Vec::with_capacity(
                    pcm.len() * self.pcm_rate as usize / s.rate.max(1) as usize + 16,
                );
                s.resampler.push(&pcm, &mut out);
                if !out.is_empty() {
                    self.input(
                        Input::Audio {
                            segment: msg.segment,
                            pcm: out,
                        },
                        ctx,
                    );
                }
            }
            Some(Err(e)) => {
                s.failed = true;
                if e.stalled() {
                    metrics().limit_hit(Limit::TtsStreamIdle);
                }
                metrics().engine_request(
                    s.engine,
                    if e.stalled() {
                        Outcome::Timeout
                    } else {
                        Outcome::Error
                    },
                );
                // The detail may quote the engine's server (an error body).
                let error = e.to_string();
                self.span.in_scope(|| {
                    tracing::warn!(segment = msg.segment, error = %shown(&error), "synthesis failed")
                });
                self.synths.remove(&msg.segment);
                self.input(
                    Input::Synthesized {
                        segment: msg.segment,
                        ok: false,
                    },
                    ctx,
                );
            }
            None => {
                let mut tail = Vec::new();
                s.resampler.finish(&mut tail);
                metrics().engine_request(s.engine, Outcome::Ok);
                self.synths.remove(&msg.segment);
                if !tail.is_empty() {
                    self.input(
                        Input::Audio {
                            segment: msg.segment,
                            pcm: tail,
                        },
                        ctx,
                    );
                }
                self.input(
                    Input::Synthesized {
                        segment: msg.segment,
                        ok: true,
                    },
                    ctx,
                );
            }
        }
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {
        // One synthesis stream ended; the speaker lives on.
    }
}

impl Handler<Speak> for Speaker {
    type Result = ();

    fn handle(&mut self, msg: Speak, ctx: &mut Self::Context) {
        trace_msg!(self.call_id, "call" => "speaker", "Speak", "{:?}, {} bytes, report {}", shown(&msg.id), msg.text.len(), msg.report);
        self.input(
            Input::Speak {
                id: &msg.id,
                text: &msg.text,
                report: msg.report,
            },
            ctx,
        );
    }
}

impl Handler<StreamText> for Speaker {
    type Result = ();

    fn handle(&mut self, msg: StreamText, ctx: &mut Self::Context) {
        trace_msg!(self.call_id, "call" => "speaker", "StreamText", "{:?}, {} bytes, end {}", shown(&msg.id), msg.text.len(), msg.end);
        self.input(
            Input::Stream {
                id: &msg.id,
                text: &msg.text,
                end: msg.end,
            },
            ctx,
        );
    }
}

impl Handler<Interrupt> for Speaker {
    type Result = ();

    fn handle(&mut self, _: Interrupt, ctx: &mut Self::Context) {
        trace_msg!(self.call_id, "call" => "speaker", "Interrupt");
        self.input(Input::Interrupt, ctx);
    }
}

impl Handler<AsrFinal> for Speaker {
    type Result = ();

    fn handle(&mut self, _: AsrFinal, ctx: &mut Self::Context) {
        self.input(Input::AsrFinal, ctx);
    }
}

impl Handler<Prepare> for Speaker {
    type Result = ();

    fn handle(&mut self, _: Prepare, _: &mut Self::Context) {
        trace_msg!(self.call_id, "call" => "speaker", "Prepare");
        self.engine.prepare();
    }
}

impl Handler<SetCodec> for Speaker {
    type Result = ();

    fn handle(&mut self, SetCodec(codec): SetCodec, _ctx: &mut Self::Context) {
        trace_msg!(self.call_id, "call" => "speaker", "SetCodec", "{}", codec.is_some());
        self.codec = codec;
        if self.codec.is_some() {
            // Media is up: a greeting is likely the first thing the dialog app says. (Not
            // before: a caller that never connects opens no vendor connection.)
            self.engine.prepare();
            for o in std::mem::take(&mut self.waiting) {
                self.send_to_codec(o);
            }
        }
    }
}

/// A session chose another speech engine or its options (`session.update`): the utterances
/// begun from now on use it; syntheses already running, and the rest of an utterance already
/// under way, finish on the old one (at its rate: [`Voice`]). The call checked the options with
/// the same factory, so they hold.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetEngine(pub Arc<dyn TtsFactory>, pub TtsOptions);

impl Handler<SetEngine> for Speaker {
    type Result = ();

    fn handle(&mut self, SetEngine(factory, options): SetEngine, _: &mut Self::Context) {
        trace_msg!(self.call_id, "call" => "speaker", "SetEngine", "{options:?}");
        self.engine = factory
            .with_options(&options)
            .unwrap_or_else(|_| factory.for_call());
        // The old engine's connection opened ahead (another voice, another vendor) closed with
        // it.
        self.engine.prepare();
    }
}

impl Handler<PlayoutLost> for Speaker {
    type Result = ();

    fn handle(&mut self, _: PlayoutLost, ctx: &mut Self::Context) {
        trace_msg!(self.call_id, "call" => "speaker", "PlayoutLost");
        // The old codec's queue is gone; end what was in progress like an interrupt.
        self.input(Input::Interrupt, ctx);
    }
}

impl Handler<PlaybackEvent> for Speaker {
    type Result = ();

    fn handle(&mut self, msg: PlaybackEvent, ctx: &mut Self::Context) {
        // Traced by the codec, which sends it.
        match msg {
            PlaybackEvent::Played {
                segment,
                first,
                last,
                frames,
            } => {
                if first {
                    self.input(Input::PlaybackStarted { segment }, ctx);
                }
                if last {
                    self.input(Input::PlaybackFinished { segment, frames }, ctx);
                }
            }
            PlaybackEvent::BargedIn { segment, frames } => {
                self.input(Input::BargeIn { segment, frames }, ctx);
            }
            PlaybackEvent::Paused { segment, frames } => {
                self.input(Input::Paused { segment, frames }, ctx);
            }
            PlaybackEvent::Resumed => self.input(Input::Resumed, ctx),
        }
    }
}

impl Handler<Finish> for Speaker {
    type Result = MessageResult<Finish>;

    fn handle(&mut self, _: Finish, ctx: &mut Self::Context) -> Self::Result {
        trace_msg!(self.call_id, "call" => "speaker", "Finish");
        let mut events = Vec::new();
        for o in self.player.handle(Input::CallEnding, Instant::now()) {
            match o {
                Output::Ended { id, ok, reason } => events.push(Event::TtsEnded {
                    utterance_id: id,
                    ok,
                    reason,
                }),
                Output::Cancel { segment } => {
                    if let Some(s) = self.synths.remove(&segment) {
                        s.cancel(ctx);
                    }
                }
                _ => {}
            }
        }
        ctx.stop();
        MessageResult(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use voicegate_core::session::InvalidOption;
    use voicegate_core::text::SegmentLimits;
    use voicegate_engines::tts::{EachSegment, SynthStream};

    /// An engine that speaks every segment as the same `samples` at `rate`.
    struct Fixed {
        rate: u32,
        samples: usize,
    }

    impl TtsEngine for Fixed {
        fn name(&self) -> &'static str {
            "fixed"
        }

        fn sample_rate(&self) -> u32 {
            self.rate
        }

        fn synthesize(&self, _text: &str) -> SynthStream {
            Box::pin(futures_util::stream::iter([Ok(vec![1000; self.samples])]))
        }

        fn utterance(self: Rc<Self>) -> Box<dyn UtteranceSynth> {
            Box::new(EachSegment(self))
        }
    }

    /// Makes [`Fixed`] engines, for `SetEngine`.
    struct FixedFactory {
        rate: u32,
        samples: usize,
    }

    impl TtsFactory for FixedFactory {
        fn for_call(&self) -> Rc<dyn TtsEngine> {
            Rc::new(Fixed {
                rate: self.rate,
                samples: self.samples,
            })
        }

        fn with_options(&self, _: &TtsOptions) -> Result<Rc<dyn TtsEngine>, InvalidOption> {
            Ok(self.for_call())
        }
    }

    /// The call: takes the reports and drops them.
    struct Ignore;

    impl Actor for Ignore {
        type Context = Context<Self>;
    }

    impl Handler<SpeakerEvent> for Ignore {
        type Result = ();

        fn handle(&mut self, _: SpeakerEvent, _: &mut Self::Context) {}
    }

    /// What the speaker holds for the codec (none runs here): each segment's samples, and
    /// whether its end was handed over too, in order.
    #[derive(Message)]
    #[rtype(result = "Vec<(SegmentId, usize, bool)>")]
    struct Held;

    impl Handler<Held> for Speaker {
        type Result = MessageResult<Held>;

        fn handle(&mut self, _: Held, _: &mut Self::Context) -> Self::Result {
            let mut held: Vec<(SegmentId, usize, bool)> = Vec::new();
            for o in &self.waiting {
                let (segment, samples, end) = match o {
                    Output::Play { segment, pcm } => (*segment, pcm.len(), false),
                    Output::EndOfSegment { segment } => (*segment, 0, true),
                    _ => continue,
                };
                match held.iter_mut().find(|h| h.0 == segment) {
                    Some(h) => {
                        h.1 += samples;
                        h.2 |= end;
                    }
                    None => held.push((segment, samples, end)),
                }
            }
            MessageResult(held)
        }
    }

    /// Asks `speaker` what it holds until `done` says so (within a few seconds).
    async fn held_until(
        speaker: &Addr<Speaker>,
        done: impl Fn(&[(SegmentId, usize, bool)]) -> bool,
    ) -> Vec<(SegmentId, usize, bool)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let held = speaker.send(Held).await.expect("the speaker runs");
            if done(&held) || Instant::now() > deadline {
                return held;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A profile switch in the middle of an utterance: the rest of the utterance is still
    /// spoken by the engine that began it, so its audio is resampled from that engine's rate,
    /// not the new engine's (which would play it fast and high); the next utterance is the new
    /// engine's, at its rate.
    #[actix_rt::test]
    async fn an_utterance_under_way_keeps_its_engine_rate_after_a_switch() {
        const CALL_RATE: u32 = 16000;
        // 100 ms of each engine's audio per segment.
        let (old, new) = (
            Fixed {
                rate: 22050,
                samples: 2205,
            },
            FixedFactory {
                rate: 24000,
                samples: 2400,
            },
        );
        let settings = PlayerSettings {
            limits: SegmentLimits::default(),
            prefetch: 1,
            max_text_bytes: 10_000,
            max_queued: 10,
            max_segment_samples: 16_000,
        };
        let call_id = CallId::parse("test-00000000000000000000000000000001").expect("valid");
        let parent = Ignore.start().recipient();
        let speaker = Speaker::new(
            call_id,
            tracing::Span::none(),
            settings,
            Rc::new(old),
            CALL_RATE,
            parent,
        )
        .start();
        speaker.do_send(Speak {
            id: "u".into(),
            text: "This is the first sentence. This is the second one. And this is the third."
                .into(),
            report: true,
        });
        speaker
            .send(SetEngine(Arc::new(new), TtsOptions::default()))
            .await
            .expect("the speaker runs");
        // With one segment of prefetch, two segments are handed over before any plays.
        let held = held_until(&speaker, |h| h.len() == 2 && h.iter().all(|s| s.2)).await;
        assert_eq!(held.len(), 2, "{held:?}");
        // The first plays: the third is asked for, after the switch.
        speaker.do_send(PlaybackEvent::Played {
            segment: held[0].0,
            first: true,
            last: true,
            frames: 5,
        });
        let held = held_until(&speaker, |h| h.len() == 3 && h.iter().all(|s| s.2)).await;
        assert_eq!(held.len(), 3, "{held:?}");
        // 100 ms at the call's rate, each.
        for (segment, samples, _) in &held {
            assert!(
                samples.abs_diff(1600) <= 2,
                "segment {segment}: {samples} samples for 100 ms at {CALL_RATE} Hz: {held:?}"
            );
        }
        // The next utterance is the new engine's: still 100 ms.
        for s in &held[1..] {
            speaker.do_send(PlaybackEvent::Played {
                segment: s.0,
                first: true,
                last: true,
                frames: 5,
            });
        }
        speaker.do_send(Speak {
            id: "v".into(),
            text: "A new utterance.".into(),
            report: true,
        });
        let held = held_until(&speaker, |h| h.len() == 4 && h.iter().all(|s| s.2)).await;
        assert_eq!(held.len(), 4, "{held:?}");
        assert!(held[3].1.abs_diff(1600) <= 2, "{held:?}");
    }
}
