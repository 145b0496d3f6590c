//! `CallActor`: one call, from offer to teardown.
//!
//! Spawned by the supervisor on a media worker. It answers the offer (building the peer
//! connection on the shared port); for a dialog call it dials the dialog app at once (in parallel
//! with ICE) and starts the call's [`Speaker`]; when media connects it starts the
//! [`AudioCodec`]. Once both media and the dialog socket are up it sends `call.started`; events
//! for the app from before then (a key press, the caller's words) wait for it. It routes
//! between its children: dialog commands to the speaker (or `hangup` to itself), speaker and
//! recognizer events to the dialog app and the page, key presses from the codec likewise. The
//! codec reports playback and barge-ins to the speaker itself. It watches the call (connect
//! deadline, RTP silence, the browser closing its side) and ends it exactly once, with a reason.
//!
//! This file is the story of a call: its state, and what each event does to it. The rest is
//! told apart: starting and restarting the children (`children.rs`: a child that dies,
//! [`CodecEvent::Failed`] or [`DialogEvent::Crashed`], is restarted while the budget allows),
//! the periodic deadlines (`watch.rs`), the end of the call (`teardown.rs`), the page's data
//! channel (`page.rs`), the prompts while the dialog app is away (`hold.rs`), the domain types
//! (`types.rs`) and the test hooks (`faults.rs`). Nothing here touches another call.

mod children;
#[cfg(feature = "test-hooks")]
mod faults;
mod hold;
mod page;
mod recording;
mod session;
mod teardown;
mod types;
mod watch;

#[cfg(feature = "test-hooks")]
pub use faults::{Fault, InjectFault};
pub use types::*;

use crate::codec::{AttachTrack, AudioCodec, CodecEvent, HoldPlayout};
use crate::dialog::{DialogClient, DialogEvent, Send as SendEvent};
use crate::metrics::{ActorKind, Limit, Live, metrics};
use crate::recognizer::{Recognizer, RecognizerEvent};
use crate::recorder::RecordingMode;
use crate::speaker::{self, Speaker, SpeakerEvent};
use crate::trace_msg;
use actix::prelude::*;
use page::{Page, PageSaid};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;
use voicegate_core::call_id::CallId;
use voicegate_core::dialog::{Command, Event, MediaState, TurnReport};
use voicegate_core::page::{PageInbox, PageMessage};
use voicegate_core::random;
use voicegate_core::restart::RestartBudget;
use voicegate_core::sdpfrag::IceFragment;
use voicegate_core::session::Session;
use voicegate_core::timeline::Timeline;
use voicegate_core::untrusted::shown;
use voicegate_media::{
    IcePatch, PatchError, Peer, PeerError, PeerEvent, PeerState, RtpWriter, TrackRemote,
};

/// Notifications from a call to the supervisor.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub enum CallEvent {
    /// The call is over and released.
    Ended {
        /// Which call.
        call_id: CallId,
        /// Why.
        reason: EndReason,
    },
}

/// Answer the offer. Result: the answer SDP.
#[derive(Message)]
#[rtype(result = "Result<String, PeerError>")]
pub struct Negotiate {
    /// The offer.
    pub offer: Offer,
}

/// End the call. Resolves once it handled the request (or was already ending).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct End {
    /// Why.
    pub reason: EndReason,
}

/// Apply a caller's `PATCH` fragment: trickled candidates, or an ICE restart.
#[derive(Debug, Message)]
#[rtype(result = "Result<PatchReply, PatchError>")]
pub struct PatchIce {
    /// The fragment.
    pub frag: IceFragment,
    /// The request's `If-Match`.
    pub if_match: Option<String>,
}

/// What a `PATCH` did, and the ICE session's entity tag after it.
#[derive(Debug, Clone)]
pub struct PatchReply {
    /// Trickled, or restarted with our new fragment.
    pub outcome: IcePatch,
    /// The `ETag` now.
    pub etag: String,
}

/// An event from the peer connection's driver.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct FromPeer(PeerEvent);

/// Where the call is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Building the answer.
    Negotiating,
    /// Answer sent at the instant; waiting for media.
    Answered(Instant),
    /// Media connected.
    Connected,
    /// Tearing down.
    Ending,
}

/// The actor.
pub struct CallActor {
    /// The call's id.
    call_id: CallId,
    /// The call's span; every log line of the call is inside it.
    span: tracing::Span,
    /// Settings.
    settings: Arc<CallSettings>,
    /// Shared services.
    services: CallServices,
    /// The supervisor.
    parent: Recipient<CallEvent>,
    /// The validated offer (its SDP is dropped after answering).
    offer: Offer,
    /// The peer connection, once answered.
    peer: Option<Arc<Peer>>,
    /// Our RTP writer, once media connected (kept for codec restarts).
    writer: Option<RtpWriter>,
    /// The caller's track, once it arrived (kept for codec restarts).
    track: Option<Arc<dyn TrackRemote>>,
    /// RTP numbering of our stream; survives codec restarts.
    timeline: Rc<RefCell<Timeline>>,
    /// The codec child.
    codec: Option<Addr<AudioCodec>>,
    /// The speech child (dialog calls).
    speaker: Option<Addr<Speaker>>,
    /// The dialog client child (dialog calls).
    dialog: Option<Addr<DialogClient>>,
    /// The recognizer child (dialog calls).
    recognizer: Option<Addr<Recognizer>>,
    /// Messages for the page's data channel, in order.
    page: Page,
    /// The call's recording (dialog calls, when `recording.mode` is not `off`).
    recording: Option<recording::CallRecording>,
    /// The dialog socket is up.
    dialog_up: bool,
    /// `call.started` went out.
    started_sent: bool,
    /// Events for the dialog app from before `call.started` went out, in order: the app hears
    /// of the call first, then of these (key presses and words of a caller whose media came up
    /// before the dialog socket, what the page sent meanwhile). At most `dialog.event_buffer`,
    /// oldest dropped first, as the dialog client keeps events while it reconnects.
    early_events: VecDeque<Event>,
    /// The page's messages among `early_events`: at most `page.message_burst`.
    early_client_messages: u32,
    /// Events dropped from `early_events` because it was full.
    early_dropped: u64,
    /// Media stopped arriving at this instant (ICE disconnected) and has not come back.
    interrupted: Option<Instant>,
    /// ICE restarts the caller made.
    ice_restarts: u32,
    /// Drops the audio held through the interruption when it lasts too long.
    hold_expiry: Option<SpawnHandle>,
    /// Children restarts allowed.
    restarts: RestartBudget,
    /// Waiting for the give-up prompt before ending with `dialog-lost`.
    giving_up: bool,
    /// Per utterance: time from the command to its first audio, in ms (summarised at the end).
    first_audio_ms: Vec<u64>,
    /// Life phase.
    phase: Phase,
    /// When the offer arrived, for the connect time.
    created: Instant,
    /// A transport check is in flight (they are async; never run two).
    checking_transport: bool,
    /// Watch ticks so far (the downlink loss is read every few of them).
    watches: u32,
    /// What the dialog app chose with `session.update` (engines, endpointing, barge-in).
    session: Session,
    /// The caller's voice paused our speech during their current utterance (its final may be
    /// a backchannel).
    paused_this_turn: bool,
    /// Keeps the worker's load count right.
    _lease: crate::workers::Lease,
    /// Counts this call in `voicegate_calls_active` while it exists.
    _live: Live,
}

impl CallActor {
    /// A call actor; start it on the worker the lease is for.
    pub fn new(
        call_id: CallId,
        span: tracing::Span,
        settings: Arc<CallSettings>,
        services: CallServices,
        parent: Recipient<CallEvent>,
        offer: Offer,
        lease: crate::workers::Lease,
    ) -> Self {
        let restarts = RestartBudget::new(settings.max_restarts, settings.restart_window);
        let session = Session::new(
            settings.listen.endpoint.end_silence_ms,
            settings.listen.barge_in.enabled,
        );
        let recording = match (&services.recorder, settings.recording.mode, offer.mode) {
            (Some(recorder), mode, CallMode::Dialog) if mode != RecordingMode::Off => {
                Some(recording::CallRecording::new(
                    mode,
                    recorder.clone(),
                    settings.pcm_rate,
                    settings.recording.max_duration,
                ))
            }
            _ => None,
        };
        CallActor {
            session,
            paused_this_turn: false,
            call_id,
            span,
            settings,
            services,
            parent,
            offer,
            peer: None,
            writer: None,
            track: None,
            timeline: Rc::new(RefCell::new(Timeline::new(
                voicegate_core::frame::FRAME,
                voicegate_core::frame::RTP_CLOCK,
                random::u16(),
                random::u32(),
            ))),
            codec: None,
            speaker: None,
            dialog: None,
            recognizer: None,
            page: Page::Off,
            recording,
            dialog_up: false,
            started_sent: false,
            early_events: VecDeque::new(),
            early_client_messages: 0,
            early_dropped: 0,
            interrupted: None,
            ice_restarts: 0,
            hold_expiry: None,
            restarts,
            giving_up: false,
            first_audio_ms: Vec::new(),
            phase: Phase::Negotiating,
            created: Instant::now(),
            checking_transport: false,
            watches: 0,
            _lease: lease,
            _live: Live::new(ActorKind::Call),
        }
    }
}

impl Actor for CallActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(watch::WATCH_INTERVAL, |act, ctx| act.watch(ctx));
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        // Normally `end` ran. If the actor stops any other way, still release the connection.
        if self.phase != Phase::Ending
            && let Some(peer) = self.peer.take()
        {
            actix::spawn(async move { peer.close().await });
        }
    }
}

impl Handler<Negotiate> for CallActor {
    type Result = ResponseActFuture<Self, Result<String, PeerError>>;

    fn handle(&mut self, msg: Negotiate, ctx: &mut Self::Context) -> Self::Result {
        trace_msg!(self.call_id, "supervisor" => "call", "Negotiate", "{} bytes of sdp", msg.offer.sdp.len());
        let addr = ctx.address();
        let events: voicegate_media::PeerEvents = Arc::new(move |e| addr.do_send(FromPeer(e)));
        let plane = self.services.plane.clone();
        let fut = async move { Peer::answer(&plane, &msg.offer.sdp, events).await }
            .instrument(self.span.clone());
        Box::pin(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok((peer, answer)) => {
                act.peer = Some(Arc::new(peer));
                if act.phase == Phase::Negotiating {
                    act.phase = Phase::Answered(Instant::now());
                }
                act.span.in_scope(|| {
                    tracing::debug!(
                        answer_ms = act.created.elapsed().as_secs_f64() * 1e3,
                        "answered"
                    )
                });
                if act.offer.mode == CallMode::Dialog {
                    act.start_dialog_plane(ctx);
                }
                // The token's limit on the call's length counts from the answer.
                if let Some(limit) = act.offer.max_duration {
                    ctx.run_later(limit, |act, ctx| act.end(EndReason::MaxDuration, ctx));
                }
                Ok(answer)
            }
            Err(e) => {
                act.span
                    .in_scope(|| tracing::info!(error = %e, "offer could not be answered"));
                act.end(EndReason::NegotiationFailed, ctx);
                Err(e)
            }
        }))
    }
}

impl Handler<PatchIce> for CallActor {
    type Result = ResponseActFuture<Self, Result<PatchReply, PatchError>>;

    fn handle(&mut self, msg: PatchIce, _ctx: &mut Self::Context) -> Self::Result {
        let Some(peer) = self.peer.clone().filter(|_| self.phase != Phase::Ending) else {
            return Box::pin(fut::ready(Err(PatchError::Peer(
                PeerError::NoLocalDescription,
            ))));
        };
        let plane = self.services.plane.clone();
        let may_restart = self.ice_restarts < self.settings.max_ice_restarts;
        let work = async move {
            let outcome = peer
                .patch_ice(&plane, &msg.frag, msg.if_match.as_deref(), may_restart)
                .await?;
            let etag = peer.ice_etag().await.unwrap_or_default();
            Ok(PatchReply { outcome, etag })
        }
        .instrument(self.span.clone());
        Box::pin(work.into_actor(self).map(|res, act, _ctx| {
            let _e = act.span.clone().entered();
            match &res {
                Ok(PatchReply {
                    outcome: IcePatch::Restarted(_),
                    ..
                }) => {
                    act.ice_restarts += 1;
                    metrics().ice_restarts.inc();
                    tracing::info!(restarts = act.ice_restarts, "ICE restarted by the caller");
                }
                Ok(_) => tracing::debug!("candidates trickled"),
                Err(PatchError::RestartRefused) => {
                    metrics().limit_hit(Limit::IceRestarts);
                    tracing::info!(
                        max = act.settings.max_ice_restarts,
                        "an ICE restart beyond calls.max_ice_restarts refused"
                    );
                }
                Err(e) => tracing::info!(error = %e, "a PATCH was not applied"),
            }
            res
        }))
    }
}

impl Handler<End> for CallActor {
    type Result = ();

    fn handle(&mut self, msg: End, ctx: &mut Self::Context) {
        trace_msg!(self.call_id, "supervisor" => "call", "End", "{}", msg.reason);
        self.end(msg.reason, ctx);
    }
}

impl Handler<FromPeer> for CallActor {
    type Result = ();

    fn handle(&mut self, FromPeer(event): FromPeer, ctx: &mut Self::Context) {
        trace_msg!(self.call_id, "peer" => "call", "PeerEvent", "{event:?}");
        if self.phase == Phase::Ending {
            return;
        }
        let _e = self.span.clone().entered();
        match event {
            PeerEvent::State(PeerState::Connected) => {
                if matches!(self.phase, Phase::Answered(_) | Phase::Negotiating) {
                    self.phase = Phase::Connected;
                    tracing::info!(
                        connect_ms = self.created.elapsed().as_secs_f64() * 1e3,
                        "media connected"
                    );
                    metrics().offer_connected.observe(self.created.elapsed());
                    self.media_connected(ctx);
                } else if let Some(since) = self.interrupted.take() {
                    tracing::info!(
                        outage_ms = since.elapsed().as_millis() as u64,
                        "media restored"
                    );
                    self.hold_playout(false, ctx);
                    if self.started_sent {
                        self.send_event(Event::CallMedia {
                            state: MediaState::Restored,
                        });
                    }
                }
            }
            PeerEvent::State(PeerState::Disconnected) => {
                tracing::warn!("media disconnected; waiting for it to recover");
                if self.phase == Phase::Connected && self.interrupted.is_none() {
                    self.interrupted = Some(Instant::now());
                    self.hold_playout(true, ctx);
                    // Only after `call.started`: the app hears of an interruption of a call it
                    // knows, and of its end in `call.ended` if it never recovers.
                    if self.started_sent {
                        self.send_event(Event::CallMedia {
                            state: MediaState::Interrupted,
                        });
                    }
                }
            }
            PeerEvent::State(PeerState::Failed) => self.end(EndReason::IceFailed, ctx),
            PeerEvent::State(PeerState::Closed) => self.end(EndReason::PeerClosed, ctx),
            PeerEvent::State(PeerState::Connecting) => {}
            PeerEvent::DataChannel(channel) => self.page.open(
                channel,
                PageInbox::new(self.settings.page),
                ctx.address().recipient(),
                &self.span,
            ),
            PeerEvent::Track(track) => {
                if self.track.is_some() {
                    tracing::debug!("a second remote track is ignored");
                    return;
                }
                self.track = Some(track.clone());
                if let Some(codec) = &self.codec {
                    codec.do_send(AttachTrack(track));
                }
            }
        }
    }
}

impl Handler<CodecEvent> for CallActor {
    type Result = ();

    fn handle(&mut self, msg: CodecEvent, ctx: &mut Self::Context) {
        if self.phase == Phase::Ending {
            return;
        }
        match msg {
            CodecEvent::Dtmf(d) => {
                // The caller sets this rate, but it is bounded: at most one key press per
                // telephone-event packet, which the codec takes from the track's bounded queue
                // (the connection drops packets past it) on this same worker, so this mailbox
                // empties as fast as it fills.
                trace_msg!(self.call_id, "codec" => "call", "CodecEvent::Dtmf", "{}", d.digit);
                self.send_event(Event::Dtmf {
                    digit: d.digit,
                    end: d.end,
                });
            }
            CodecEvent::Failed(detail) => {
                trace_msg!(self.call_id, "codec" => "call", "CodecEvent::Failed", "{detail}");
                self.span
                    .in_scope(|| tracing::error!(%detail, "audio codec failed"));
                self.codec = None;
                self.restart_codec(ctx);
            }
            CodecEvent::RtpTimeout => {
                trace_msg!(self.call_id, "codec" => "call", "CodecEvent::RtpTimeout");
                self.end(EndReason::RtpTimeout, ctx);
            }
        }
    }
}

impl Handler<DialogEvent> for CallActor {
    type Result = ();

    fn handle(&mut self, msg: DialogEvent, ctx: &mut Self::Context) {
        // Never the text of a command, and the app's strings escaped.
        trace_msg!(self.call_id, "dialog" => "call", "DialogEvent", "{}", match &msg {
            DialogEvent::Command(cmd) => cmd.summary(),
            other => shown(&format!("{other:?}")).to_string(),
        });
        if self.phase == Phase::Ending {
            return;
        }
        let _e = self.span.clone().entered();
        match msg {
            DialogEvent::Connected { reconnect } => {
                self.dialog_up = true;
                if reconnect {
                    tracing::info!("dialog app reconnected");
                }
                // Sent once: not again after a reconnect, but still if the socket was lost
                // before media came up.
                self.maybe_call_started();
            }
            DialogEvent::Command(cmd) => self.command(cmd, ctx),
            DialogEvent::Reconnecting { attempt } => {
                metrics().dialog_reconnects.inc();
                self.dialog_up = false;
                self.hold_while_reconnecting(attempt);
            }
            DialogEvent::Unreachable(detail) => {
                tracing::warn!(%detail, "dialog app unreachable");
                self.end(EndReason::DialogUnreachable, ctx);
            }
            DialogEvent::Lost(detail) => {
                tracing::warn!(%detail, "dialog app lost");
                self.give_up(ctx);
            }
            DialogEvent::Closed { code } => {
                tracing::info!(code, "dialog app ended the call");
                self.end(EndReason::DialogClosed, ctx);
            }
            DialogEvent::Crashed(exit) => {
                tracing::error!(detail = %format!("dialog client {exit}"), "dialog client failed");
                self.dialog = None;
                self.dialog_up = false;
                self.restart_dialog(ctx);
            }
        }
    }
}

impl Handler<RecognizerEvent> for CallActor {
    type Result = ();

    fn handle(&mut self, msg: RecognizerEvent, _ctx: &mut Self::Context) {
        if self.phase == Phase::Ending {
            return;
        }
        match msg {
            RecognizerEvent::Partial(text, confidence) => {
                self.send_event(Event::AsrPartial { text, confidence })
            }
            RecognizerEvent::Hypothesis(text, confidence) => {
                self.tell_codec_heard(text, confidence, false)
            }
            RecognizerEvent::SpeechStarted | RecognizerEvent::SpeechEnded => {
                trace_msg!(self.call_id, "recognizer" => "call", "RecognizerEvent", "{msg:?}");
                // An answer may follow: the speaker readies its engine while the caller speaks,
                // the utterance is recognized and the app thinks (again at the end: a long
                // utterance may outlast what was readied at its start).
                if let Some(s) = &self.speaker {
                    s.do_send(speaker::Prepare);
                }
            }
            RecognizerEvent::Unheard => {
                self.tell_codec_heard(String::new(), None, true);
                self.paused_this_turn = false;
            }
            RecognizerEvent::Final {
                text,
                confidence,
                net,
                latency,
            } => {
                trace_msg!(self.call_id, "recognizer" => "call", "RecognizerEvent::Final", "{} chars after {} ms", text.chars().count(), latency.as_millis());
                self.tell_codec_heard(text.clone(), confidence, true);
                // Said over our speech and not an interruption (only a backchannel, or words
                // the recognizer is unsure of): the app sees it is not a turn.
                let backchannel = std::mem::take(&mut self.paused_this_turn)
                    && !self
                        .settings
                        .listen
                        .backchannels
                        .confirms(&text, confidence);
                if let Some(s) = &self.speaker
                    && !backchannel
                {
                    s.do_send(speaker::AsrFinal);
                }
                self.send_event(Event::AsrFinal {
                    text,
                    confidence,
                    net: Some(net),
                    turn: Some(TurnReport {
                        end_of_speech_ms: latency.as_millis() as u64,
                        backchannel,
                    }),
                });
            }
            RecognizerEvent::Error { message, fatal } => {
                self.send_event(Event::AsrError { message, fatal })
            }
        }
    }
}

impl Handler<SpeakerEvent> for CallActor {
    type Result = ();

    fn handle(&mut self, msg: SpeakerEvent, ctx: &mut Self::Context) {
        // voicegate's own prompts report nothing but their end (see `hold.rs`): everything
        // else here is the dialog app's speech.
        match msg {
            SpeakerEvent::Segment { id, text } => self.page.send(
                PageMessage::Assistant {
                    utterance_id: &id,
                    text: &text,
                },
                &self.span,
            ),
            SpeakerEvent::Tts(event) => {
                if matches!(event, Event::TtsPaused { .. }) {
                    self.paused_this_turn = true;
                }
                self.send_event(event)
            }
            SpeakerEvent::PromptEnded { id } => self.prompt_ended(&id, ctx),
            SpeakerEvent::FirstAudio {
                id,
                tts_first,
                since_asr_final,
            } => {
                self.first_audio_ms.push(tts_first.as_millis() as u64);
                metrics().tts_first_audio.observe(tts_first);
                if let Some(d) = since_asr_final {
                    metrics().asr_final_to_audio.observe(d);
                }
                self.span.in_scope(|| {
                    tracing::info!(
                        utterance_id = %shown(&id),
                        tts_first_ms = tts_first.as_millis() as u64,
                        asr_final_to_audio_ms = since_asr_final.map(|d| d.as_millis() as u64),
                        "first audio"
                    )
                });
            }
        }
    }
}

impl CallActor {
    /// Media is up: start the codec (it needs the negotiated writer), maybe `call.started`.
    fn media_connected(&mut self, ctx: &mut Context<Self>) {
        let Some(peer) = self.peer.clone() else {
            return;
        };
        let fut = async move { peer.writer().await };
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| {
            if act.phase == Phase::Ending {
                return;
            }
            match res {
                Ok(writer) => {
                    act.writer = Some(writer);
                    act.media_up_for_recording();
                    act.start_codec(ctx);
                    act.maybe_call_started();
                }
                Err(e) => {
                    act.span
                        .in_scope(|| tracing::error!(error = %e, "no RTP writer for the call"));
                    act.end(EndReason::Internal, ctx);
                }
            }
        }));
    }

    /// While the caller's media is interrupted, the codec holds what it has queued instead of
    /// sending it into the void; held longer than `calls.interrupted_hold_ms`, it is dropped (the
    /// speaker ends those utterances `ok: false`), and so is what piles up in each further period.
    fn hold_playout(&mut self, hold: bool, ctx: &mut Context<Self>) {
        if let Some(h) = self.hold_expiry.take() {
            ctx.cancel_future(h);
        }
        if let Some(codec) = &self.codec {
            codec.do_send(HoldPlayout(hold));
        }
        if hold {
            self.hold_expiry = Some(ctx.run_interval(
                self.settings.interrupted_hold,
                |act, _ctx| {
                    act.span.in_scope(|| {
                        tracing::info!(
                            "media still interrupted: dropping the audio held for the caller"
                        )
                    });
                    if let Some(s) = &act.speaker {
                        s.do_send(speaker::PlayoutLost);
                    }
                },
            ));
        }
    }

    /// The recognizer's words for the caller's utterance, for the codec's endpointing and a
    /// paused playback's verdict.
    fn tell_codec_heard(&self, text: String, confidence: Option<f32>, last: bool) {
        if let Some(c) = &self.codec {
            c.do_send(crate::codec::Hypothesis {
                text,
                confidence,
                last,
            });
        }
    }

    fn maybe_call_started(&mut self) {
        if self.started_sent
            || !self.dialog_up
            || self.phase != Phase::Connected
            || self.codec.is_none()
        {
            return;
        }
        self.started_sent = true;
        self.span.in_scope(|| tracing::info!("call started"));
        self.send_event(Event::CallStarted {
            from: self.offer.client.describe(),
            pcm_hz: self.settings.pcm_rate,
            sub: self.offer.caller.clone(),
        });
        // The page already had its copies, when they happened.
        for event in std::mem::take(&mut self.early_events) {
            self.to_dialog(event);
        }
        self.early_client_messages = 0;
        // Media that dropped before the app knew of the call: it hears of the interruption now,
        // so the `restored` that may follow has its `interrupted` before it.
        if self.interrupted.is_some() {
            self.send_event(Event::CallMedia {
                state: MediaState::Interrupted,
            });
        }
    }

    /// An event for the dialog app; the page gets its copy of the kinds it shows
    /// (`voicegate_core::page`). Before `call.started` the app's copy waits for it.
    fn send_event(&mut self, event: Event) {
        if let Some(message) = PageMessage::mirror(&event, self.call_id.as_str()) {
            self.page.send(message, &self.span);
        }
        if self.started_sent {
            self.to_dialog(event);
        } else if self.offer.mode == CallMode::Dialog {
            self.hold_until_started(event);
        }
    }

    /// Sends `event` to the dialog client now (it buffers while it reconnects).
    fn to_dialog(&self, event: Event) {
        if let Some(d) = &self.dialog {
            trace_msg!(self.call_id, "call" => "dialog", "Send", "{}", event.kind());
            d.do_send(SendEvent(event));
        }
    }

    /// Keeps `event` for right after `call.started`. The dialog client must not buffer it: on
    /// its first connect it writes its buffer before it reports the connection, which is what
    /// sends `call.started`.
    fn hold_until_started(&mut self, event: Event) {
        if self.early_events.len() >= self.services.dialog.event_buffer.max(1) {
            if let Some(Event::ClientMessage { .. }) = self.early_events.pop_front() {
                self.early_client_messages = self.early_client_messages.saturating_sub(1);
            }
            self.early_dropped += 1;
            metrics().limit_hit(Limit::DialogEventBuffer);
            if self.early_dropped.is_power_of_two() {
                let _e = self.span.enter();
                tracing::warn!(
                    dropped = self.early_dropped,
                    max = self.services.dialog.event_buffer,
                    "events before call.started over dialog.event_buffer; oldest dropped"
                );
            }
        }
        self.early_events.push_back(event);
    }

    fn command(&mut self, cmd: Command, ctx: &mut Context<Self>) {
        let Some(speaker) = &self.speaker else {
            return;
        };
        match cmd {
            Command::Speak {
                utterance_id, text, ..
            } => speaker.do_send(speaker::Speak {
                id: utterance_id,
                text,
                report: true,
            }),
            Command::Stream {
                utterance_id,
                text,
                end,
                ..
            } => speaker.do_send(speaker::StreamText {
                id: utterance_id,
                text,
                end,
            }),
            Command::Interrupt => speaker.do_send(speaker::Interrupt),
            Command::Hangup { reason } => self.end(EndReason::DialogHangup(reason), ctx),
            Command::SessionUpdate { update, errors } => self.update_session(&update, errors),
            Command::RecordingStart => self.recording_command(true),
            Command::RecordingStop => self.recording_command(false),
            Command::ClientSend { data } => {
                let text = PageMessage::Client { data: &data }.to_json();
                let max = self.settings.page.max_message_bytes;
                if text.len() > max {
                    metrics().limit_hit(Limit::ClientMessageBytes);
                    let _e = self.span.enter();
                    tracing::debug!(
                        bytes = text.len(),
                        max,
                        "client.send dropped: longer than page.max_message_bytes"
                    );
                } else {
                    self.page.send_text(text, &self.span);
                }
            }
        }
    }
}

/// The page sent the dialog app a message (`call.send`); its `data`, within the page's limits.
impl Handler<PageSaid> for CallActor {
    type Result = ();

    fn handle(&mut self, msg: PageSaid, _: &mut Context<Self>) {
        if self.phase == Phase::Ending {
            return;
        }
        if !self.started_sent {
            if self.early_client_messages < self.settings.page.burst {
                self.early_client_messages += 1;
                self.hold_until_started(Event::ClientMessage { data: msg.0 });
            } else {
                metrics().limit_hit(Limit::ClientMessageRate);
                let _e = self.span.enter();
                tracing::debug!("a page message dropped: too many before call.started");
            }
            return;
        }
        self.send_event(Event::ClientMessage { data: msg.0 });
    }
}
