//! `AudioCodec`: a call's audio, both ways, on the call's media worker.
//!
//! Uplink: it drains the caller's remote track continuously (the track's queue drops RTP when
//! nobody reads it), puts packets in order, decodes Opus to PCM at the call's rate with FEC
//! recovery and concealment ([`voicegate_core::codec::UplinkDecoder`]). In echo mode the PCM goes
//! straight to the playout queue.
//!
//! Downlink: the playout queue ([`voicegate_core::pcm::Playout`]) is drained one 20 ms frame per
//! slot of the self-correcting pacer ([`voicegate_core::pacer::Pacer`]), encoded to Opus and
//! written as RTP with our own sequence numbers and timestamps
//! ([`voicegate_core::timeline::Timeline`]): silence is not sent, and the next talkspurt starts
//! with the marker bit and a timestamp that covers the gap. The pacer only runs while audio is
//! queued, so an idle call costs no wake-ups.
//!
//! Recording: when the call records, the codec lays both directions on the call's
//! [`Tape`] as they pass: the caller's audio as it is decoded, and each frame as it is sent (a
//! frame not sent, because nothing plays or the playout is held, is silence there). Placing is a
//! copy into memory; the call hands the tape's audio to the recorder thread.
//!
//! Speech reports: in a dialog call the codec tells the call's `Speaker` directly when a
//! segment's first and last frames leave and when the caller barges in
//! ([`crate::speaker::PlaybackEvent`]): the speaker feeds the codec, so the codec answers it,
//! and the call does not relay one message into another.
//!
//! Failure: a codec error or a panic in here ends this actor only; its drop guard reports
//! [`CodecEvent::Failed`] to the call, which decides what to do. RTP silence longer than the
//! configured timeout is reported as [`CodecEvent::RtpTimeout`].

mod listening;
mod settings;

pub use listening::ListenSettings;
pub use settings::CodecSettings;

use crate::error::{CodecFailure, Exit};
use crate::metrics::metrics;
use crate::recognizer::Heard;
use crate::speaker::PlaybackEvent;
use crate::trace_msg;
use actix::prelude::*;
use bytes::Bytes;
use listening::{Barge, Listening};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use voicegate_core::call_id::CallId;
use voicegate_core::codec::{
    DownlinkEncoder, EncoderSettings, UplinkDecoder, UplinkSettings, UplinkStats,
};
use voicegate_core::frame;
use voicegate_core::pacer::Pacer;
use voicegate_core::pcm::{Playout, Tag};
use voicegate_core::recording::{Channel, Tape};
use voicegate_core::speech::SegmentId;
use voicegate_core::timeline::Timeline;
use voicegate_media::{RtpWriter, TrackRemote, TrackRemoteEvent};

/// How often RTP silence is checked.
const RTP_WATCH: Duration = Duration::from_millis(500);

/// Reports to the call.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub enum CodecEvent {
    /// The codec stopped working; the failure says how.
    Failed(CodecFailure),
    /// No RTP from the caller for the configured time.
    RtpTimeout,
    /// A key press.
    Dtmf(voicegate_core::dtmf::Dtmf),
}

/// Queue a speech segment's PCM for playout.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Play {
    /// The segment.
    pub segment: SegmentId,
    /// Samples at the call's PCM rate.
    pub pcm: Vec<i16>,
}

/// No more audio for `segment`: its last frame is padded, and its end reported once sent.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct EndSegment {
    /// The segment.
    pub segment: SegmentId,
}

/// Drop everything queued for playout now (an interrupt).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Flush;

/// Hold the playout (`true`: the caller's media is interrupted, so nothing is sent and what is
/// queued keeps its place) or let it play again (`false`).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct HoldPlayout(pub bool);

/// Start draining the caller's track (it may arrive after the codec started).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AttachTrack(pub Arc<dyn TrackRemote>);

/// The fraction of our packets the browser reports lost (0.0 to 1.0): the downlink FEC is sized
/// for it.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct DownlinkLoss(pub f64);

/// Stop now (the call is ending).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Stop;

/// Counters of the call's audio.
#[derive(Debug, Clone, Copy, Default)]
pub struct CodecStats {
    /// The uplink's counters.
    pub uplink: UplinkStats,
    /// RTP packets written to the browser.
    pub sent: u64,
    /// Writes the connection refused.
    pub write_errors: u64,
    /// Playout frames dropped for capacity.
    pub dropped: u64,
}

/// Ask for the counters.
#[derive(Debug, Message)]
#[rtype(result = "CodecStats")]
pub struct GetStats;

/// What a codec is built from.
pub struct CodecSetup {
    /// The call's id.
    pub call_id: CallId,
    /// The call's span.
    pub span: tracing::Span,
    /// Settings.
    pub settings: CodecSettings,
    /// The caller's track, if it already arrived.
    pub track: Option<Arc<dyn TrackRemote>>,
    /// Where our RTP goes.
    pub writer: RtpWriter,
    /// Our RTP numbering, shared with the call.
    pub timeline: Rc<RefCell<Timeline>>,
    /// The call's recording, shared with the call (when it records).
    pub tape: Option<Rc<RefCell<Tape>>>,
    /// The call actor.
    pub parent: Recipient<CodecEvent>,
    /// Dialog calls: where utterances go.
    pub recognizer: Option<Recipient<Heard>>,
    /// Dialog calls: the speaker whose segments this codec plays, told of their progress and
    /// of barge-ins.
    pub speaker: Option<Recipient<PlaybackEvent>>,
}

/// The actor.
pub struct AudioCodec {
    /// The call's id, for message tracing.
    call_id: CallId,
    /// The call's span.
    span: tracing::Span,
    /// Reorder, decode, FEC, PLC.
    uplink: UplinkDecoder<Bytes>,
    /// Opus encoder for the downlink.
    encoder: DownlinkEncoder,
    /// PCM waiting for the pacer.
    playout: Playout,
    /// The 20 ms clock.
    pacer: Pacer,
    /// Sequence numbers and timestamps; shared with the call so a restarted codec continues them.
    timeline: Rc<RefCell<Timeline>>,
    /// Where packets go.
    writer: RtpWriter,
    /// The call's recording: both directions are placed on it as they pass.
    tape: Option<Rc<RefCell<Tape>>>,
    /// The call actor.
    parent: Recipient<CodecEvent>,
    /// Dialog calls: the speaker, told when its segments start and end playing and of barge-ins.
    speaker: Option<Recipient<PlaybackEvent>>,
    /// Scratch frame for the downlink.
    frame: Vec<i16>,
    /// Echo mode.
    echo: bool,
    /// When the last RTP packet arrived; `None` before the first (a caller without a microphone
    /// sends none, and is not timed out for it: ICE and DTLS notice a browser that is gone).
    last_rtp: Option<Instant>,
    /// RTP silence limit.
    rtp_timeout: Duration,
    /// The silence was reported already.
    rtp_timeout_reported: bool,
    /// The pending pacer wake-up.
    tick: Option<SpawnHandle>,
    /// The caller's media is interrupted: nothing is sent, the playout keeps what it has.
    held: bool,
    /// The caller's voice paused playback (confirmed barge-in) until their words decide.
    barge_paused: bool,
    /// Ends a barge-in pause that no words confirmed (caller media may stop meanwhile).
    pause_timer: Option<SpawnHandle>,
    /// The pending reorder-release wake-up.
    release: Option<SpawnHandle>,
    /// Packets written.
    sent: u64,
    /// Writes refused.
    write_errors: u64,
    /// Set when stopped on purpose; the drop guard reports anything else.
    stopped_cleanly: bool,
    /// The caller's Opus payload type.
    opus_pt: u8,
    /// The caller's telephone-event payload type.
    dtmf_pt: Option<u8>,
    /// Dialog calls: VAD, endpointing, barge-in, DTMF.
    listening: Option<Listening>,
    /// The tag whose frames are going out, and how many have.
    sending: Option<(Tag, u32)>,
    /// Counts already added to the process metrics (they are added in batches).
    reported: CodecStats,
    /// Pacer lateness since the last report.
    late: crate::metrics::LateCounts,
    /// Counted in `voicegate_actors_live` while it exists.
    _live: crate::metrics::Live,
}

impl AudioCodec {
    /// Builds the codec and starts draining the caller's track. Runs inside
    /// `AudioCodec::create`, so the actor lives on the caller's worker.
    pub fn new(setup: CodecSetup, ctx: &mut Context<Self>) -> Self {
        let CodecSetup {
            call_id,
            span,
            settings,
            track,
            writer,
            timeline,
            tape,
            parent,
            recognizer,
            speaker,
        } = setup;
        if let Some(track) = track {
            attach(track, ctx);
        }
        let rate = settings.uplink.pcm_rate;
        let frame_samples = frame::samples_per_frame(rate);
        let (uplink, encoder) = match (
            UplinkDecoder::new(settings.uplink),
            DownlinkEncoder::new(settings.encoder),
        ) {
            (Ok(u), Ok(e)) => (u, e),
            (Err(e), _) | (_, Err(e)) => {
                // Settings were validated at startup; libopus refusing them is a bug. Report it
                // and stop; the call ends with a reason.
                parent.do_send(CodecEvent::Failed(CodecFailure::Setup(e)));
                ctx.stop();
                // A placeholder that never runs: build with the safest settings there are.
                let u = UplinkDecoder::new(UplinkSettings {
                    pcm_rate: frame::SPEECH_RATE,
                    ..settings.uplink
                })
                .expect("libopus accepts a 16 kHz mono decoder");
                let e = DownlinkEncoder::new(EncoderSettings {
                    pcm_rate: frame::SPEECH_RATE,
                    ..settings.encoder
                })
                .expect("libopus accepts a 16 kHz mono encoder");
                (u, e)
            }
        };
        AudioCodec {
            call_id,
            span,
            uplink,
            encoder,
            playout: Playout::new(
                frame_samples,
                settings.prebuffer_frames,
                settings.max_queue_frames,
            ),
            pacer: Pacer::new(frame::FRAME, settings.max_catch_up),
            timeline,
            writer,
            tape,
            parent,
            speaker,
            frame: vec![0; frame_samples],
            echo: settings.echo,
            last_rtp: None,
            rtp_timeout: settings.rtp_timeout,
            rtp_timeout_reported: false,
            opus_pt: settings.opus_pt,
            dtmf_pt: settings.dtmf_pt,
            listening: match (settings.listen.clone(), recognizer) {
                (Some(l), Some(r)) => Some(Listening::new(l, rate, r)),
                _ => None,
            },
            sending: None,
            reported: CodecStats::default(),
            late: crate::metrics::metrics().pacer_late.batch(),
            _live: crate::metrics::Live::new(crate::metrics::ActorKind::Codec),
            tick: None,
            held: false,
            barge_paused: false,
            pause_timer: None,
            release: None,
            sent: 0,
            write_errors: 0,
            stopped_cleanly: false,
        }
    }

    fn stats(&self) -> CodecStats {
        CodecStats {
            uplink: self.uplink.stats(),
            sent: self.sent,
            write_errors: self.write_errors,
            dropped: self.playout.dropped(),
        }
    }
}

impl Actor for AudioCodec {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(RTP_WATCH, |act, _ctx| {
            act.report_metrics();
            if !act.rtp_timeout_reported
                && act.last_rtp.is_some_and(|t| t.elapsed() > act.rtp_timeout)
            {
                trace_msg!(act.call_id, "codec" => "call", "CodecEvent::RtpTimeout");
                act.parent.do_send(CodecEvent::RtpTimeout);
                // Report once; the call ends this actor.
                act.rtp_timeout_reported = true;
            }
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.report_metrics();
        let s = self.stats();
        let _e = self.span.enter();
        tracing::info!(
            received = s.uplink.reorder.received,
            lost = s.uplink.reorder.lost,
            late = s.uplink.reorder.late,
            recovered = s.uplink.recovered,
            concealed = s.uplink.concealed,
            corrupt = s.uplink.corrupt,
            sent = s.sent,
            write_errors = s.write_errors,
            dropped = s.dropped,
            "call audio"
        );
    }
}

impl Drop for AudioCodec {
    fn drop(&mut self) {
        if !self.stopped_cleanly {
            self.parent
                .do_send(CodecEvent::Failed(CodecFailure::Exited(Exit::now())));
        }
    }
}

impl StreamHandler<TrackRemoteEvent> for AudioCodec {
    fn handle(&mut self, event: TrackRemoteEvent, ctx: &mut Self::Context) {
        let TrackRemoteEvent::OnRtpPacket(p) = event else {
            return;
        };
        let now = Instant::now();
        self.last_rtp = Some(now);
        let pt = p.header.payload_type;
        if Some(pt) == self.dtmf_pt {
            if let Some(l) = self.listening.as_mut() {
                l.dtmf(p.header.timestamp, &p.payload, &self.parent);
            }
            return;
        }
        if pt != self.opus_pt {
            return;
        }
        let lost = self.uplink.stats().reorder.lost;
        let AudioCodec {
            uplink,
            playout,
            echo,
            listening,
            tape,
            ..
        } = self;
        let mut barged = Barge::None;
        uplink.push(
            p.header.sequence_number,
            p.payload,
            now,
            &mut |pcm: &[i16], origin| {
                if let Some(t) = tape {
                    t.borrow_mut().place(Channel::Caller, now, pcm);
                }
                if *echo {
                    playout.push(Tag::Echo, pcm);
                }
                if let Some(l) = listening.as_mut() {
                    let b = l.heard(pcm, origin, lost, now, playout);
                    if b != Barge::None {
                        barged = b;
                    }
                }
            },
        );
        self.barge(barged, now, ctx);
        self.after_uplink(now, ctx);
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {
        // The track ended with the connection; the call actor learns that from the connection.
        let _e = self.span.enter();
        tracing::debug!("caller's track ended");
    }
}

impl Handler<Stop> for AudioCodec {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        trace_msg!(self.call_id, "call" => "codec", "Stop");
        self.stopped_cleanly = true;
        ctx.stop();
    }
}

impl Handler<Play> for AudioCodec {
    type Result = ();

    fn handle(&mut self, msg: Play, ctx: &mut Self::Context) {
        trace_msg!(self.call_id, "speaker" => "codec", "Play", "segment {} {} samples", msg.segment, msg.pcm.len());
        self.playout.push(Tag::Segment(msg.segment), &msg.pcm);
        self.maybe_start(Instant::now(), ctx);
    }
}

impl Handler<EndSegment> for AudioCodec {
    type Result = ();

    fn handle(&mut self, msg: EndSegment, ctx: &mut Self::Context) {
        trace_msg!(self.call_id, "speaker" => "codec", "EndSegment", "segment {}", msg.segment);
        let tag = Tag::Segment(msg.segment);
        if self.playout.end(tag).is_some() {
            // Nothing of it is left to play: it ended with the frames already sent.
            let frames = match self.sending {
                Some((sending, n)) if sending == tag => n,
                _ => 0,
            };
            if self.sending.is_some_and(|(sending, _)| sending == tag) {
                self.sending = None;
            }
            self.tell_speaker(PlaybackEvent::Played {
                segment: msg.segment,
                first: false,
                last: true,
                frames,
            });
        }
        self.maybe_start(Instant::now(), ctx);
    }
}

/// The recognizer's hypothesis for the caller's utterance (`last`: its final result, empty
/// when nothing was recognized), from the call: endpointing's hint, and a paused playback's
/// verdict.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Hypothesis {
    /// The words so far.
    pub text: String,
    /// The recognizer's confidence in them (0 to 1), if it gives one.
    pub confidence: Option<f32>,
    /// The utterance's final result.
    pub last: bool,
}

impl Handler<Hypothesis> for AudioCodec {
    type Result = ();

    fn handle(&mut self, msg: Hypothesis, ctx: &mut Self::Context) {
        trace_msg!(self.call_id, "call" => "codec", "Hypothesis", "{} chars, last {}", msg.text.len(), msg.last);
        let AudioCodec {
            listening, playout, ..
        } = self;
        let now = Instant::now();
        let b = listening.as_mut().map_or(Barge::None, |l| {
            l.hypothesis(&msg.text, msg.confidence, msg.last, now, playout)
        });
        self.barge(b, now, ctx);
        if self.barge_paused {
            self.arm_pause_timer(now, ctx);
        }
    }
}

impl Handler<Flush> for AudioCodec {
    type Result = ();

    fn handle(&mut self, _: Flush, ctx: &mut Self::Context) {
        // The app's interrupt (or the call's): a barge-in pause has nothing left to decide, and
        // its stopped pacer will not find the playout dry: playback ends here.
        if let Some(l) = self.listening.as_mut() {
            l.flushed();
            if self.barge_paused {
                l.playing(false, Instant::now());
            }
        }
        self.end_pause(ctx);
        trace_msg!(self.call_id, "speaker" => "codec", "Flush");
        // The pacer finds nothing at its next slot and ends the talkspurt: silence within a
        // frame.
        self.playout.clear();
        self.sending = None;
    }
}

impl Handler<HoldPlayout> for AudioCodec {
    type Result = ();

    fn handle(&mut self, HoldPlayout(hold): HoldPlayout, ctx: &mut Self::Context) {
        trace_msg!(self.call_id, "call" => "codec", "HoldPlayout", "{hold}");
        self.held = hold;
        let now = Instant::now();
        if !hold {
            return self.maybe_start(now, ctx);
        }
        // The talkspurt ends where it is; the segment in progress resumes with its next frame
        // (its count of frames sent goes on), and the resumed talkspurt is marked.
        if self.pacer.is_running() {
            self.pacer.stop();
            self.timeline.borrow_mut().end_talkspurt();
            if let Some(h) = self.tick.take() {
                ctx.cancel_future(h);
            }
            if let Some(l) = self.listening.as_mut() {
                l.playing(false, now);
            }
        }
    }
}

/// A session changed listening (`session.update`): the endpointing silence and barge-in.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct SetListening {
    /// Silence that ends an utterance, ms.
    pub end_silence_ms: u32,
    /// Caller speech interrupts voicegate's.
    pub barge_in: bool,
}

impl Handler<SetListening> for AudioCodec {
    type Result = ();

    fn handle(&mut self, msg: SetListening, _: &mut Self::Context) {
        trace_msg!(self.call_id, "call" => "codec", "SetListening", "{msg:?}");
        if let Some(l) = self.listening.as_mut() {
            l.set_session(msg.end_silence_ms, msg.barge_in);
        }
    }
}

impl Handler<DownlinkLoss> for AudioCodec {
    type Result = ();

    fn handle(&mut self, DownlinkLoss(fraction): DownlinkLoss, _ctx: &mut Self::Context) {
        let before = self.encoder.fec_loss_percent();
        match self.encoder.set_reported_loss(fraction) {
            Ok(now) if now != before => {
                let _e = self.span.enter();
                tracing::debug!(
                    reported = fraction,
                    fec_loss_percent = now,
                    "downlink FEC resized"
                );
            }
            Ok(_) => {}
            // libopus refusing a percentage in 0..=25 would be a bug; the encoder keeps its
            // previous setting and the call goes on.
            Err(e) => {
                let _e = self.span.enter();
                tracing::warn!(error = %e, "downlink FEC could not be resized");
            }
        }
    }
}

impl Handler<AttachTrack> for AudioCodec {
    type Result = ();

    fn handle(&mut self, AttachTrack(track): AttachTrack, ctx: &mut Self::Context) {
        trace_msg!(self.call_id, "call" => "codec", "AttachTrack");
        attach(track, ctx);
    }
}

/// Drains `track` into this actor as a stream.
fn attach(track: Arc<dyn TrackRemote>, ctx: &mut Context<AudioCodec>) {
    let stream =
        futures_util::stream::unfold(track, |t| async move { t.poll().await.map(|ev| (ev, t)) });
    ctx.add_stream(stream);
}

/// Test-only fault injection: the codec panics in a handler, as a bug would.
#[cfg(feature = "test-hooks")]
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct InjectPanic;

#[cfg(feature = "test-hooks")]
impl Handler<InjectPanic> for AudioCodec {
    type Result = ();

    fn handle(&mut self, _: InjectPanic, _ctx: &mut Self::Context) {
        panic!("injected codec fault (test hook)");
    }
}

impl Handler<GetStats> for AudioCodec {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _: GetStats, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.stats())
    }
}

impl AudioCodec {
    /// Adds this call's counts since the last report to the process metrics.
    fn report_metrics(&mut self) {
        let now = self.stats();
        let last = self.reported;
        let m = crate::metrics::metrics();
        m.rtp_in
            .add(now.uplink.reorder.received - last.uplink.reorder.received);
        m.rtp_out.add(now.sent - last.sent);
        m.frames_lost
            .add(now.uplink.reorder.lost - last.uplink.reorder.lost);
        m.frames_recovered
            .add(now.uplink.recovered - last.uplink.recovered);
        m.frames_concealed
            .add(now.uplink.concealed - last.uplink.concealed);
        m.pacer_late.add(&self.late.take());
        self.reported = now;
    }

    /// Carries out what the caller's voice did to playback.
    fn barge(&mut self, b: Barge, now: Instant, ctx: &mut Context<Self>) {
        match b {
            Barge::None => {}
            Barge::Interrupt => {
                if self.barge_paused {
                    // The pacer stopped at the pause, so no tick will find the playout dry:
                    // playback ends here.
                    if let Some(l) = self.listening.as_mut() {
                        l.playing(false, now);
                    }
                }
                self.end_pause(ctx);
                self.barged_in();
            }
            Barge::Pause => {
                self.barge_paused = true;
                // The talkspurt ends where it is; the segment in progress resumes with its next
                // frame (its count of frames sent goes on), as for a held playout.
                if self.pacer.is_running() {
                    self.pacer.stop();
                    self.timeline.borrow_mut().end_talkspurt();
                    if let Some(h) = self.tick.take() {
                        ctx.cancel_future(h);
                    }
                }
                let (segment, frames) = match self.sending {
                    Some((Tag::Segment(segment), n)) => (Some(segment), n),
                    Some((Tag::Echo, _)) | None => (None, 0),
                };
                self.span.in_scope(|| {
                    tracing::debug!(played_frames = frames, "caller's voice paused playback")
                });
                self.tell_speaker(PlaybackEvent::Paused { segment, frames });
                self.arm_pause_timer(now, ctx);
            }
            Barge::Resume => {
                self.end_pause(ctx);
                self.tell_speaker(PlaybackEvent::Resumed);
                self.maybe_start(now, ctx);
            }
        }
    }

    /// Wakes up when the paused barge-in's next decision falls due without new words (the
    /// caller's frames check it too, but their media may stop).
    fn arm_pause_timer(&mut self, now: Instant, ctx: &mut Context<Self>) {
        if let Some(h) = self.pause_timer.take() {
            ctx.cancel_future(h);
        }
        let Some(deadline) = self.listening.as_ref().and_then(Listening::pause_deadline) else {
            return;
        };
        let wait = deadline.saturating_duration_since(now) + Duration::from_millis(1);
        self.pause_timer = Some(ctx.run_later(wait, |act, ctx| {
            act.pause_timer = None;
            let now = Instant::now();
            let AudioCodec {
                listening, playout, ..
            } = act;
            let b = listening
                .as_mut()
                .map_or(Barge::None, |l| l.check_pause(now, playout));
            act.barge(b, now, ctx);
            if act.barge_paused {
                act.arm_pause_timer(now, ctx);
            }
        }));
    }

    /// No barge-in pause is pending any more.
    fn end_pause(&mut self, ctx: &mut Context<Self>) {
        self.barge_paused = false;
        if let Some(h) = self.pause_timer.take() {
            ctx.cancel_future(h);
        }
    }

    /// The caller barged in: playback was already cleared; tell the speaker what was in
    /// progress.
    fn barged_in(&mut self) {
        let (segment, frames) = match self.sending.take() {
            Some((Tag::Segment(segment), n)) => (Some(segment), n),
            // Barge-in listens in dialog calls only, which never play the echo tag.
            Some((Tag::Echo, _)) | None => (None, 0),
        };
        metrics().barge_ins.inc();
        self.span
            .in_scope(|| tracing::info!(played_frames = frames, "caller barged in"));
        self.tell_speaker(PlaybackEvent::BargedIn { segment, frames });
    }

    /// Sends a playback report to the speaker (dialog calls; an echo call has none).
    fn tell_speaker(&self, event: PlaybackEvent) {
        if let Some(speaker) = &self.speaker {
            trace_msg!(self.call_id, "codec" => "speaker", "PlaybackEvent", "{event:?}");
            speaker.do_send(event);
        }
    }

    /// After uplink work: arm the reorder release timer, start a talkspurt if audio is ready.
    fn after_uplink(&mut self, now: Instant, ctx: &mut Context<Self>) {
        if let Some(deadline) = self.uplink.next_deadline() {
            if let Some(h) = self.release.take() {
                ctx.cancel_future(h);
            }
            self.release = Some(ctx.run_later(
                deadline.saturating_duration_since(now),
                |act, ctx| {
                    act.release = None;
                    let now = Instant::now();
                    let AudioCodec {
                        uplink,
                        playout,
                        echo,
                        tape,
                        ..
                    } = act;
                    uplink.release(now, &mut |pcm: &[i16], _| {
                        if let Some(t) = tape {
                            t.borrow_mut().place(Channel::Caller, now, pcm);
                        }
                        if *echo {
                            playout.push(Tag::Echo, pcm);
                        }
                    });
                    act.after_uplink(now, ctx);
                },
            ));
        }
        self.maybe_start(now, ctx);
    }

    /// Starts a talkspurt if the pacer is idle and audio is ready.
    fn maybe_start(&mut self, now: Instant, ctx: &mut Context<Self>) {
        if !self.held
            && !self.barge_paused
            && !self.pacer.is_running()
            && self.playout.ready_to_start()
        {
            self.pacer.start(now);
            self.tick(ctx);
        }
    }

    /// One pacer wake-up: send what is due, then sleep until the next slot.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        self.tick = None;
        let now = Instant::now();
        // The oldest slot this wake-up serves: its lateness is the server's share of jitter.
        let mut slot = self.pacer.next_due();
        let due = self.pacer.poll(now);
        self.timeline.borrow_mut().skip(due.skipped);
        for _ in 0..due.send {
            let Some(frame) = self.playout.pop(&mut self.frame) else {
                // Ran dry: the talkspurt ends; the next one is marked and its timestamp jumps.
                self.pacer.stop();
                self.timeline.borrow_mut().end_talkspurt();
                if let Some(l) = self.listening.as_mut() {
                    l.playing(false, now);
                }
                return;
            };
            if let Some(slot) = slot.take() {
                self.late.observe(now.saturating_duration_since(slot));
            }
            let frames = match self.sending {
                Some((tag, n)) if tag == frame.tag && !frame.first => n + 1,
                _ => 1,
            };
            self.sending = (!frame.last).then_some((frame.tag, frames));
            if let Some(l) = self.listening.as_mut() {
                l.playing(true, now);
                l.played(&self.frame);
            }
            if let Some(t) = &self.tape {
                t.borrow_mut().place(Channel::Voicegate, now, &self.frame);
            }
            if (frame.first || frame.last)
                && let Tag::Segment(segment) = frame.tag
            {
                self.tell_speaker(PlaybackEvent::Played {
                    segment,
                    first: frame.first,
                    last: frame.last,
                    frames,
                });
            }
            let payload = match self.encoder.encode(&self.frame) {
                Ok(p) => Bytes::copy_from_slice(p),
                Err(e) => {
                    self.parent
                        .do_send(CodecEvent::Failed(CodecFailure::Encode(e)));
                    ctx.stop();
                    return;
                }
            };
            let stamp = self.timeline.borrow_mut().stamp(now);
            let writer = self.writer.clone();
            // `wait` keeps packets in order and applies the connection's back-pressure.
            ctx.wait(
                async move { writer.write(stamp, payload).await }
                    .into_actor(self)
                    .map(|res, act, _| match res {
                        Ok(()) => act.sent += 1,
                        Err(e) => {
                            act.write_errors += 1;
                            if act.write_errors == 1 {
                                let _e = act.span.enter();
                                tracing::debug!(error = %e, "RTP write refused");
                            }
                        }
                    }),
            );
        }
        if let Some(next) = self.pacer.next_due() {
            // The worker's precise clock: tokio's timers would round the slot up to a
            // millisecond and fire anywhere in the one after (see `crate::clock`).
            self.tick = Some(
                ctx.spawn(
                    crate::clock::sleep_until(next)
                        .into_actor(self)
                        .map(|(), act, ctx| act.tick(ctx)),
                ),
            );
        }
    }
}
