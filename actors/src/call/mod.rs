//! `CallActor`: one call, from offer to teardown.
//!
//! Spawned by the supervisor on a media worker. It answers the offer (building the peer
//! connection on the shared port); for a dialog call it dials the dialog app at once (in parallel
//! with ICE) and starts the call's [`Speaker`]; when media connects it starts the
//! [`AudioCodec`]. Once both media and the dialog socket are up it sends `call.started`. It routes
//! between its children: dialog commands to the speaker (or `hangup` to itself), speaker events
//! to the dialog app, the codec's playback reports to the speaker. It watches the call (connect
//! deadline, RTP silence, the browser closing its side) and ends it exactly once, with a reason.
//!
//! Supervision: a child that dies ([`CodecEvent::Failed`], [`DialogEvent::Crashed`]) is restarted
//! on the same worker while the restart budget allows (`supervision.max_restarts` within
//! `supervision.window_ms`), else the call ends with `internal-error`. A new codec continues the
//! RTP numbering (the browser sees no jump) and re-attaches the caller's track; what the old one
//! had queued is lost, so utterances in progress end with `ok: false`. A new dialog client
//! redials without a second `call.started`. Nothing here touches another call.
//!
//! Teardown ([`CallActor::end`]): the speaker ends what is queued (`tts.ended ok:false`), the
//! dialog app gets `call.ended` and a normal close, the codec stops, the peer connection is
//! closed (its driver task ends, its routes on the shared port go), the supervisor hears
//! [`CallEvent::Ended`] and the actor stops. The mailbox is paused meanwhile.

mod types;

pub use types::*;

use crate::codec::{
    AttachTrack, AudioCodec, CodecEvent, CodecSettings, CodecSetup, DownlinkLoss, Stop,
};
use crate::dialog::{Close, DialogClient, DialogEvent, Send as SendEvent};
use crate::metrics::{ActorKind, Child, Limit, Live, metrics};
use crate::recognizer::{Recognizer, RecognizerEvent};
use crate::speaker::{self, Speaker, SpeakerEvent};
use crate::trace_msg;
use actix::prelude::*;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;
use voicegate_core::call_id::CallId;
use voicegate_core::dialog::{Command, Event};
use voicegate_core::random;
use voicegate_core::restart::RestartBudget;
use voicegate_core::timeline::Timeline;
use voicegate_core::untrusted::shown;
use voicegate_media::{DataChannel, Peer, PeerError, PeerEvent, PeerState, RtpWriter, TrackRemote};

/// How often the call checks its deadlines and whether the browser closed its side.
const WATCH_INTERVAL: Duration = Duration::from_millis(200);
/// The browser's loss report for our audio is read every this many watch ticks (2 s; browsers
/// send receiver reports every second or so).
const LOSS_EVERY: u32 = 10;
/// Utterance ids of voicegate's own prompts; never reported to the dialog app.
const INTERNAL_PREFIX: &str = "voicegate-";
/// The give-up prompt's utterance id.
const GIVE_UP_ID: &str = "voicegate-hold-give-up";
/// Longest wait for the give-up prompt before the call ends anyway.
const GIVE_UP_MAX: Duration = Duration::from_secs(15);

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

/// An event from the peer connection's driver.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct FromPeer(PeerEvent);

/// Most messages queued for the page's data channel, at each stage: before the browser opens it
/// (the oldest go), on their way to the sending task (the newest go), and held by it until the
/// channel reports itself open (the oldest go).
const PAGE_BACKLOG: usize = 64;
/// Most bytes sent on the page's data channel and not yet acknowledged by the browser. A page
/// that keeps up acknowledges within a round trip; one that stopped reading would otherwise
/// have SCTP buffer everything for the rest of the call, so past this its messages are dropped.
const PAGE_MAX_UNACKED_BYTES: usize = 64 * 1024;

/// The page's data channel, from the call's side.
enum Page {
    /// Not a dialog call, or the call is ending.
    Off,
    /// The browser has not opened it (yet): the latest messages wait.
    Waiting(std::collections::VecDeque<String>),
    /// Open: one task sends, in order.
    Open(tokio::sync::mpsc::Sender<String>),
}

/// A message for the page was dropped (`why`): counted, and logged at debug (the page is a
/// transcript view; the dialog app still gets every event).
fn page_message_dropped(why: &'static str) {
    metrics().limit_hit(crate::metrics::Limit::PageQueue);
    tracing::debug!(why, "a message for the page's data channel was dropped");
}

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
    /// The dialog socket is up.
    dialog_up: bool,
    /// `call.started` went out.
    started_sent: bool,
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
    /// Watch ticks so far (the downlink loss is read every [`LOSS_EVERY`] of them).
    watches: u32,
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
        CallActor {
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
            dialog_up: false,
            started_sent: false,
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
        ctx.run_interval(WATCH_INTERVAL, |act, ctx| act.watch(ctx));
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
                }
            }
            PeerEvent::State(PeerState::Disconnected) => {
                tracing::warn!("media disconnected; waiting for it to recover");
            }
            PeerEvent::State(PeerState::Failed) => self.end(EndReason::IceFailed, ctx),
            PeerEvent::State(PeerState::Closed) => self.end(EndReason::PeerClosed, ctx),
            PeerEvent::State(PeerState::Connecting) => {}
            PeerEvent::DataChannel(channel) => self.open_page_channel(channel),
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
            CodecEvent::Playback {
                tag,
                first,
                last,
                frames,
            } => {
                if let Some(s) = &self.speaker {
                    s.do_send(speaker::Playback {
                        segment: tag,
                        first,
                        last,
                        frames,
                    });
                }
            }
            CodecEvent::BargeIn { tag, frames } => {
                metrics().barge_ins.inc();
                self.span
                    .in_scope(|| tracing::info!(played_frames = frames, "caller barged in"));
                if let Some(s) = &self.speaker {
                    s.do_send(speaker::BargeIn {
                        segment: tag,
                        frames,
                    });
                }
            }
            CodecEvent::Dtmf(d) => {
                // The caller sets this rate, but it is bounded: at most one key press per
                // telephone-event packet, which the codec takes from the track's bounded queue
                // (the connection drops packets past it) on this same worker, so this mailbox
                // empties as fast as it fills.
                trace_msg!(self.call_id, "codec" => "call", "CodecEvent::Dtmf", "{}", d.digit);
                self.send_to_dialog_and_page(Event::Dtmf {
                    digit: d.digit,
                    end: d.end,
                });
            }
            CodecEvent::Failed(detail) => {
                trace_msg!(self.call_id, "codec" => "call", "CodecEvent::Failed", "{detail}");
                self.span
                    .in_scope(|| tracing::error!(%detail, "audio codec failed"));
                self.codec = None;
                if self.restarts.allow(Instant::now()) {
                    self.span
                        .in_scope(|| tracing::warn!("restarting the audio codec"));
                    metrics().restarts[Child::Codec].inc();
                    self.start_codec(ctx);
                    if let Some(s) = &self.speaker {
                        s.do_send(speaker::CodecReplaced);
                    }
                } else {
                    self.end(EndReason::Internal, ctx);
                }
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
                let hold = &self.settings.hold;
                let text = if attempt == 1 {
                    &hold.first
                } else {
                    &hold.retry
                };
                if !text.is_empty() {
                    let text = text.clone();
                    self.speak_internal(format!("{INTERNAL_PREFIX}hold-{attempt}"), text);
                }
            }
            DialogEvent::Unreachable(detail) => {
                tracing::warn!(%detail, "dialog app unreachable");
                self.end(EndReason::DialogUnreachable, ctx);
            }
            DialogEvent::Lost(detail) => {
                tracing::warn!(%detail, "dialog app lost");
                let give_up = self.settings.hold.give_up.clone();
                if give_up.is_empty() || self.speaker.is_none() {
                    self.end(EndReason::DialogLost, ctx);
                } else {
                    // Let the caller hear why the call ends, then end it.
                    self.giving_up = true;
                    self.speak_internal(GIVE_UP_ID.to_owned(), give_up);
                    ctx.run_later(GIVE_UP_MAX, |act, ctx| act.end(EndReason::DialogLost, ctx));
                }
            }
            DialogEvent::Closed { code } => {
                tracing::info!(code, "dialog app ended the call");
                self.end(EndReason::DialogClosed, ctx);
            }
            DialogEvent::Crashed(exit) => {
                tracing::error!(detail = %format!("dialog client {exit}"), "dialog client failed");
                self.dialog = None;
                self.dialog_up = false;
                if self.restarts.allow(Instant::now()) {
                    tracing::warn!("restarting the dialog client");
                    metrics().restarts[Child::Dialog].inc();
                    self.start_dialog(true, ctx);
                } else {
                    self.end(EndReason::Internal, ctx);
                }
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
            RecognizerEvent::Partial(text) => {
                self.send_to_dialog_and_page(Event::AsrPartial { text })
            }
            RecognizerEvent::Final { text, net, latency } => {
                trace_msg!(self.call_id, "recognizer" => "call", "RecognizerEvent::Final", "{} chars after {} ms", text.chars().count(), latency.as_millis());
                if let Some(s) = &self.speaker {
                    s.do_send(speaker::AsrFinal);
                }
                self.send_to_dialog_and_page(Event::AsrFinal {
                    text,
                    net: Some(net),
                });
            }
            RecognizerEvent::Error { message, fatal } => {
                self.to_dialog(Event::AsrError { message, fatal })
            }
        }
    }
}

impl Handler<SpeakerEvent> for CallActor {
    type Result = ();

    fn handle(&mut self, msg: SpeakerEvent, ctx: &mut Self::Context) {
        match msg {
            SpeakerEvent::Segment { id, text } => {
                if !id.starts_with(INTERNAL_PREFIX) {
                    self.send_to_page(
                        serde_json::json!({"type": "assistant", "utterance_id": id, "text": text})
                            .to_string(),
                    );
                }
            }
            SpeakerEvent::Tts(event) => {
                let internal = match &event {
                    Event::TtsStarted { utterance_id }
                    | Event::TtsEnded { utterance_id, .. }
                    | Event::TtsInterrupt { utterance_id, .. } => {
                        utterance_id.starts_with(INTERNAL_PREFIX)
                    }
                    _ => false,
                };
                if internal {
                    if self.giving_up
                        && matches!(&event, Event::TtsEnded { utterance_id, .. } if utterance_id == GIVE_UP_ID)
                    {
                        self.end(EndReason::DialogLost, ctx);
                    }
                    return;
                }
                self.to_dialog(event);
            }
            SpeakerEvent::FirstAudio {
                id,
                tts_first,
                since_asr_final,
            } => {
                if !id.starts_with(INTERNAL_PREFIX) {
                    self.first_audio_ms.push(tts_first.as_millis() as u64);
                    metrics().tts_first_audio.observe(tts_first);
                    if let Some(d) = since_asr_final {
                        metrics().asr_final_to_audio.observe(d);
                    }
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
    /// Dialog calls: the speaker and the dialog client start right after the answer.
    fn start_dialog_plane(&mut self, ctx: &mut Context<Self>) {
        let engine = self.services.tts.for_call();
        let parent = ctx.address().recipient();
        let (call_id, span) = (self.call_id.clone(), self.span.clone());
        let (player, rate) = (self.settings.player, self.settings.pcm_rate);
        self.speaker = Some(Speaker::new(call_id, span, player, engine, rate, parent).start());
        let asr = self.services.asr.for_call();
        let parent = ctx.address().recipient();
        let (call_id, span) = (self.call_id.clone(), self.span.clone());
        self.recognizer =
            Some(Recognizer::new(call_id, span, asr, self.settings.recognizer, parent).start());
        self.page = Page::Waiting(std::collections::VecDeque::new());
        self.start_dialog(false, ctx);
    }

    fn start_dialog(&mut self, restart: bool, ctx: &mut Context<Self>) {
        let client = DialogClient::new(
            self.call_id.clone(),
            self.span.clone(),
            self.services.dialog.clone(),
            self.offer.dialog.clone(),
            ctx.address().recipient(),
            restart,
        );
        self.dialog = Some(client.start());
    }

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

    /// Starts (or restarts) the codec on this worker.
    fn start_codec(&mut self, ctx: &mut Context<Self>) {
        let Some(writer) = self.writer.clone() else {
            return;
        };
        let settings = CodecSettings::from_call(&self.settings, &self.offer);
        let parent = ctx.address().recipient();
        let (call_id, span) = (self.call_id.clone(), self.span.clone());
        let track = self.track.clone();
        let timeline = self.timeline.clone();
        let setup = CodecSetup {
            call_id,
            span,
            settings,
            track,
            writer,
            timeline,
            parent,
            recognizer: self.recognizer.as_ref().map(|r| r.clone().recipient()),
        };
        let codec = AudioCodec::create(move |c| AudioCodec::new(setup, c));
        if let Some(s) = &self.speaker {
            s.do_send(speaker::SetCodec(Some(codec.clone())));
        }
        self.codec = Some(codec);
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
        self.to_dialog(Event::CallStarted {
            from: self.offer.client.describe(),
            pcm_hz: self.settings.pcm_rate,
        });
    }

    /// The page's data channel (the browser opened it): transcript and speech state go there.
    fn open_page_channel(&mut self, channel: std::sync::Arc<dyn DataChannel>) {
        let Page::Waiting(backlog) = std::mem::replace(&mut self.page, Page::Off) else {
            // One page channel per call. Any other is closed, so what the page sends on it does
            // not pile up in the connection (which holds up to 256 events for a channel nobody
            // reads).
            actix::spawn(async move {
                let _ = channel.close().await;
            });
            return;
        };
        // The backlog (at most PAGE_BACKLOG) fits the channel.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(PAGE_BACKLOG);
        for text in backlog {
            let _ = tx.try_send(text);
        }
        self.page = Page::Open(tx);
        let span = self.span.clone();
        // One task sends, so messages keep their order. It holds them until the channel is open,
        // and drains what the page sends (nothing is expected; the connection's driver hands a
        // channel's incoming messages over through a bounded queue, and this loop reads them
        // as fast as they come, so the page cannot pile them up here).
        actix::spawn(
            async move {
                use voicegate_media::DataChannelEvent;
                let mut open = matches!(
                    channel.ready_state().await,
                    Ok(voicegate_media::DataChannelState::Open)
                );
                let mut held = std::collections::VecDeque::new();
                loop {
                    tokio::select! {
                        msg = rx.recv() => match msg {
                            Some(text) if open => send_on_page_channel(&*channel, &text).await,
                            Some(text) => {
                                if held.len() == PAGE_BACKLOG {
                                    held.pop_front();
                                    page_message_dropped("the page has not opened its channel");
                                }
                                held.push_back(text);
                            }
                            None => break,
                        },
                        ev = channel.poll() => match ev {
                            Some(DataChannelEvent::OnOpen) => {
                                open = true;
                                for text in held.drain(..) {
                                    send_on_page_channel(&*channel, &text).await;
                                }
                            }
                            Some(DataChannelEvent::OnClose) | None => break,
                            Some(_) => {}
                        },
                    }
                }
            }
            .instrument(span),
        );
    }

    fn send_to_page(&mut self, text: String) {
        match &mut self.page {
            Page::Off => {}
            Page::Waiting(backlog) => {
                // Not counted as a limit hit: a client without the page (an API client, a
                // phone bridge) never opens the channel, and only the latest messages matter
                // to a page that opens it late.
                if backlog.len() == PAGE_BACKLOG {
                    backlog.pop_front();
                }
                backlog.push_back(text);
            }
            Page::Open(tx) => {
                // Never waits: the call must not slow down for its page.
                if let Err(tokio::sync::mpsc::error::TrySendError::Full(_)) = tx.try_send(text) {
                    self.span
                        .in_scope(|| page_message_dropped("the page channel's queue is full"));
                }
            }
        }
    }

    fn send_to_dialog_and_page(&mut self, event: Event) {
        if !matches!(self.page, Page::Off) {
            let text = event.to_json(self.call_id.as_str());
            self.send_to_page(text);
        }
        self.to_dialog(event);
    }

    fn to_dialog(&self, event: Event) {
        if let Some(d) = &self.dialog {
            trace_msg!(self.call_id, "call" => "dialog", "Send", "{}", event.kind());
            d.do_send(SendEvent(event));
        }
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
        }
    }

    fn speak_internal(&self, id: String, text: String) {
        if let Some(s) = &self.speaker {
            s.do_send(speaker::Speak { id, text });
        }
    }

    /// Periodic checks: deadlines, and whether the browser closed its side.
    fn watch(&mut self, ctx: &mut Context<Self>) {
        let deadline_from = match self.phase {
            Phase::Answered(at) => Some(at),
            Phase::Negotiating => Some(self.created),
            _ => None,
        };
        if deadline_from.is_some_and(|at| at.elapsed() > self.settings.connect_timeout) {
            return self.end(EndReason::ConnectTimeout, ctx);
        }
        // A caller that never proves it holds our answer frees its slot sooner: an offer costs
        // nothing to send, a slot held for the whole connect timeout would let a flood of
        // them fill the server.
        if let (Phase::Answered(at), Some(peer)) = (self.phase, &self.peer)
            && at.elapsed() > self.settings.auth_timeout
            && !peer.authenticated()
        {
            metrics().limit_hit(Limit::IceAuthTimeout);
            tracing::info!(
                timeout_ms = self.settings.auth_timeout.as_millis() as u64,
                "no authenticated connectivity check from the caller; ending the call"
            );
            return self.end(EndReason::ConnectTimeout, ctx);
        }
        if matches!(self.phase, Phase::Connected | Phase::Answered(_))
            && !self.checking_transport
            && let Some(peer) = self.peer.clone()
        {
            self.checking_transport = true;
            let fut = async move { peer.transport_closed().await };
            ctx.spawn(fut.into_actor(self).map(|closed, act, ctx| {
                act.checking_transport = false;
                if closed {
                    act.end(EndReason::PeerClosed, ctx);
                }
            }));
        }
        self.watches = self.watches.wrapping_add(1);
        // Downlink FEC follows the loss the browser reports: none spent on a clean path.
        if self.phase == Phase::Connected
            && self.watches.is_multiple_of(LOSS_EVERY)
            && let (Some(peer), Some(codec)) = (&self.peer, &self.codec)
            && let Some(fraction) = peer.downlink_loss()
        {
            codec.do_send(DownlinkLoss(fraction));
        }
    }

    /// Ends the call once: speech ends, the dialog app hears `call.ended`, the codec stops, the
    /// connection closes, the supervisor is told.
    fn end(&mut self, reason: EndReason, ctx: &mut Context<Self>) {
        if self.phase == Phase::Ending {
            return;
        }
        self.phase = Phase::Ending;
        let _e = self.span.clone().entered();
        tracing::info!(%reason, duration_ms = self.created.elapsed().as_millis() as u64, "call ending");
        metrics().call_ended(reason.label());
        if !self.first_audio_ms.is_empty() {
            let mut v = self.first_audio_ms.clone();
            v.sort_unstable();
            tracing::info!(
                utterances = v.len(),
                tts_first_ms_p50 = v[v.len() / 2],
                tts_first_ms_max = v[v.len() - 1],
                "speech summary"
            );
        }
        if let Some(codec) = self.codec.take() {
            trace_msg!(self.call_id, "call" => "codec", "Stop");
            codec.do_send(Stop);
        }
        if let Some(r) = self.recognizer.take() {
            r.do_send(crate::recognizer::Stop);
        }
        self.page = Page::Off;
        let speaker = self.speaker.take();
        let dialog = self.dialog.take();
        let peer = self.peer.take();
        let call_id = self.call_id.clone();
        let ended = reason.as_str().to_owned();
        let fut = async move {
            // Utterances still queued end before the call does, in order.
            let leftovers = match speaker {
                Some(s) => s.send(speaker::Finish).await.unwrap_or_default(),
                None => Vec::new(),
            };
            if let Some(d) = dialog {
                for e in leftovers {
                    if let Event::TtsEnded { utterance_id, .. } = &e
                        && utterance_id.starts_with(INTERNAL_PREFIX)
                    {
                        continue;
                    }
                    let _ = d.send(SendEvent(e)).await;
                }
                trace_msg!(call_id, "call" => "dialog", "Send", "call.ended");
                let _ = d
                    .send(SendEvent(Event::CallEnded {
                        reason: ended.clone(),
                    }))
                    .await;
                let _ = d.send(Close { reason: ended }).await;
            }
            if let Some(peer) = peer {
                peer.close().await;
            }
        }
        .instrument(self.span.clone());
        // `wait` pauses the mailbox: nothing else happens to a call that is ending.
        ctx.wait(fut.into_actor(self).map(move |(), act, ctx| {
            trace_msg!(act.call_id, "call" => "supervisor", "CallEvent::Ended", "{reason}");
            act.parent.do_send(CallEvent::Ended {
                call_id: act.call_id.clone(),
                reason,
            });
            ctx.stop();
        }));
    }
}

/// Sends `text` on the open page channel, unless the browser has not acknowledged
/// [`PAGE_MAX_UNACKED_BYTES`] already.
async fn send_on_page_channel(channel: &dyn DataChannel, text: &str) {
    if channel.outstanding_bytes().await.unwrap_or(0) > PAGE_MAX_UNACKED_BYTES {
        return page_message_dropped("the page does not acknowledge what it was sent");
    }
    if let Err(e) = channel.send_text(text).await {
        tracing::debug!(error = %e, "page channel send failed");
    }
}

impl CodecSettings {
    /// The codec's settings for a call of this offer.
    pub fn from_call(s: &CallSettings, offer: &Offer) -> Self {
        let mode = offer.mode;
        CodecSettings {
            uplink: voicegate_core::codec::UplinkSettings {
                pcm_rate: s.pcm_rate,
                reorder_depth: s.reorder_depth,
                reorder_wait: s.reorder_wait,
                max_conceal: s.max_conceal,
            },
            encoder: s.encoder,
            max_catch_up: s.max_catch_up,
            // Speech is bounded by synthesis prefetch; the bound is only a safety net there.
            max_queue_frames: match mode {
                CallMode::Echo => s.max_queue_frames,
                CallMode::Dialog => 30_000,
            },
            // Echo: a 40 ms jitter margin for the caller's packet timing, plus the configured
            // delay. Speech starts with its first frame.
            prebuffer_frames: match mode {
                CallMode::Echo => 2 + s.echo_delay_frames,
                CallMode::Dialog => 1,
            },
            echo: mode == CallMode::Echo,
            rtp_timeout: s.rtp_timeout,
            opus_pt: offer.summary.opus_pt,
            dtmf_pt: offer.summary.telephone_event_pt,
            listen: (mode == CallMode::Dialog).then_some(s.listen),
        }
    }
}

/// Which child a test makes fail.
#[cfg(feature = "test-hooks")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The audio codec panics.
    Codec,
    /// The dialog client panics.
    Dialog,
}

/// Test-only: make a child panic.
#[cfg(feature = "test-hooks")]
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub struct InjectFault(pub Fault);

#[cfg(feature = "test-hooks")]
impl Handler<InjectFault> for CallActor {
    type Result = bool;

    fn handle(&mut self, InjectFault(fault): InjectFault, _ctx: &mut Self::Context) -> bool {
        match fault {
            // Taken out, so a second fault waits for the restarted codec instead of landing in
            // the mailbox of the one that is already failing.
            Fault::Codec => self
                .codec
                .take()
                .map(|c| c.do_send(crate::codec::InjectPanic))
                .is_some(),
            Fault::Dialog => self
                .dialog
                .as_ref()
                .map(|d| d.do_send(crate::dialog::InjectPanic))
                .is_some(),
        }
    }
}
