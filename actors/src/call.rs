//! `CallActor`: one call, from offer to teardown.
//!
//! Spawned by the supervisor on a media worker. It answers the offer (building the peer
//! connection on the shared port), starts the [`AudioCodec`] child when the caller's track
//! arrives, watches the call (connect deadline, RTP silence, the browser closing its side) and
//! ends it exactly once, with a reason.
//!
//! Teardown ([`CallActor::end`]) stops the codec, closes the peer connection (its driver task
//! ends and its route on the shared port is removed), reports [`CallEvent::Ended`] to the
//! supervisor and stops the actor. While it runs the mailbox is paused, so nothing else happens
//! to a call that is ending.
//!
//! Failure: if the codec child dies (an error, or a panic inside it) the call ends with
//! `internal-error`; the worker thread and every other call carry on (a panic ends only the
//! task it happened in). The browser sees its connection closed; the supervisor sees `Ended`.

use crate::codec::{AudioCodec, CodecEvent, CodecSettings};
use crate::trace_msg;
use actix::prelude::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;
use voicegate_core::call_id::CallId;
use voicegate_core::codec::EncoderSettings;
use voicegate_core::sdp::OfferSummary;
use voicegate_media::{MediaPlane, Peer, PeerError, PeerEvent, PeerState};

/// How often the call checks its deadlines and whether the browser closed its side.
const WATCH_INTERVAL: Duration = Duration::from_millis(200);

/// Per-call settings, from configuration.
#[derive(Debug, Clone)]
pub struct CallSettings {
    /// Call id prefix.
    pub id_prefix: String,
    /// Media must connect within this after the answer.
    pub connect_timeout: Duration,
    /// A connected call ends after this long without RTP.
    pub rtp_timeout: Duration,
    /// PCM rate between codec and the rest of the call.
    pub pcm_rate: u32,
    /// Uplink reorder depth.
    pub reorder_depth: usize,
    /// Uplink reorder wait.
    pub reorder_wait: Duration,
    /// PLC limit.
    pub max_conceal: u64,
    /// Pacer catch-up limit.
    pub max_catch_up: u32,
    /// Playout queue bound, frames.
    pub max_queue_frames: usize,
    /// Downlink encoder.
    pub encoder: EncoderSettings,
    /// Echo mode's added delay, frames.
    pub echo_delay_frames: usize,
}

/// What kind of call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallMode {
    /// The caller hears their own audio back through the whole media path.
    Echo,
}

/// Who is calling, for logs and the dialog app.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    /// `X-Forwarded-For` or the peer address.
    pub addr: String,
    /// The browser's user agent.
    pub user_agent: Option<String>,
}

/// A validated offer.
#[derive(Debug, Clone)]
pub struct Offer {
    /// The SDP as received.
    pub sdp: String,
    /// What the SDP check found.
    pub summary: OfferSummary,
    /// Call kind.
    pub mode: CallMode,
    /// Caller.
    pub client: ClientInfo,
}

/// Why a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// `POST /webrtc/v1/hangup`.
    ClientHangup,
    /// The browser closed its peer connection.
    PeerClosed,
    /// ICE lost the browser for good.
    IceFailed,
    /// Connected, then no RTP for `rtp_timeout`.
    RtpTimeout,
    /// Answered, but media never connected within `connect_timeout`.
    ConnectTimeout,
    /// The service is shutting down.
    Shutdown,
    /// The offer could not be answered (the call never started).
    NegotiationFailed,
    /// Something inside the call failed; the detail is logged.
    Internal,
}

impl EndReason {
    /// The reason as it appears in logs and events.
    pub fn as_str(&self) -> &'static str {
        match self {
            EndReason::ClientHangup => "client-hangup",
            EndReason::PeerClosed => "peer-closed",
            EndReason::IceFailed => "ice-failed",
            EndReason::RtpTimeout => "rtp-timeout",
            EndReason::ConnectTimeout => "connect-timeout",
            EndReason::Shutdown => "shutdown",
            EndReason::NegotiationFailed => "negotiation-failed",
            EndReason::Internal => "internal-error",
        }
    }
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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
    /// The shared media plane.
    plane: Arc<MediaPlane>,
    /// The supervisor.
    parent: Recipient<CallEvent>,
    /// Call kind.
    mode: CallMode,
    /// The peer connection, once answered.
    peer: Option<Arc<Peer>>,
    /// The codec child, once the caller's track arrived.
    codec: Option<Addr<AudioCodec>>,
    /// Life phase.
    phase: Phase,
    /// When the offer arrived, for the connect time.
    created: Instant,
    /// A transport check is in flight (they are async; never run two).
    checking_transport: bool,
    /// Keeps the worker's load count right.
    _lease: crate::workers::Lease,
}

impl CallActor {
    /// A call actor; start it on the worker the lease is for.
    pub fn new(
        call_id: CallId,
        span: tracing::Span,
        settings: Arc<CallSettings>,
        plane: Arc<MediaPlane>,
        parent: Recipient<CallEvent>,
        mode: CallMode,
        lease: crate::workers::Lease,
    ) -> Self {
        CallActor {
            call_id,
            span,
            settings,
            plane,
            parent,
            mode,
            peer: None,
            codec: None,
            phase: Phase::Negotiating,
            created: Instant::now(),
            checking_transport: false,
            _lease: lease,
        }
    }
}

/// Answer the offer. Result: the answer SDP.
#[derive(Message)]
#[rtype(result = "Result<String, PeerError>")]
pub struct Negotiate {
    /// The offer.
    pub offer: Offer,
}

/// End the call. Resolves once it is released (or was already ending).
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
        let plane = self.plane.clone();
        let fut = async move { Peer::answer(&plane, &msg.offer.sdp, events).await }
            .instrument(self.span.clone());
        Box::pin(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok((peer, answer)) => {
                act.peer = Some(Arc::new(peer));
                if act.phase == Phase::Negotiating {
                    act.phase = Phase::Answered(Instant::now());
                }
                let _e = act.span.enter();
                tracing::debug!(
                    answer_ms = act.created.elapsed().as_secs_f64() * 1e3,
                    "answered"
                );
                Ok(answer)
            }
            Err(e) => {
                act.span
                    .in_scope(|| tracing::info!(error = %e, "offer could not be answered"));
                act.end(EndReason::Internal, ctx);
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
                }
            }
            PeerEvent::State(PeerState::Disconnected) => {
                tracing::warn!("media disconnected; waiting for it to recover");
            }
            PeerEvent::State(PeerState::Failed) => self.end(EndReason::IceFailed, ctx),
            PeerEvent::State(PeerState::Closed) => self.end(EndReason::PeerClosed, ctx),
            PeerEvent::State(PeerState::Connecting) => {}
            PeerEvent::Track(track) => self.start_codec(track, ctx),
        }
    }
}

impl Handler<CodecEvent> for CallActor {
    type Result = ();

    fn handle(&mut self, msg: CodecEvent, ctx: &mut Self::Context) {
        trace_msg!(self.call_id, "codec" => "call", "CodecEvent", "{msg:?}");
        let _e = self.span.clone().entered();
        match msg {
            CodecEvent::Failed(detail) => {
                tracing::error!(%detail, "audio codec failed");
                self.codec = None;
                self.end(EndReason::Internal, ctx);
            }
            CodecEvent::RtpTimeout => self.end(EndReason::RtpTimeout, ctx),
            CodecEvent::Playback { .. } => {}
        }
    }
}

impl CallActor {
    /// Starts the codec child on this worker, once the writer is available.
    fn start_codec(
        &mut self,
        track: Arc<dyn voicegate_media::TrackRemote>,
        ctx: &mut Context<Self>,
    ) {
        if self.codec.is_some() {
            tracing::debug!("a second remote track is ignored");
            return;
        }
        let Some(peer) = self.peer.clone() else {
            return;
        };
        let fut = async move { peer.writer().await };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            if act.phase == Phase::Ending {
                return;
            }
            match res {
                Ok(writer) => {
                    let settings = CodecSettings::from_call(&act.settings, act.mode);
                    let parent = ctx.address().recipient();
                    let call_id = act.call_id.clone();
                    let span = act.span.clone();
                    act.codec = Some(AudioCodec::create(move |c| {
                        AudioCodec::new(call_id, span, settings, Some(track), writer, parent, c)
                    }));
                }
                Err(e) => {
                    act.span
                        .in_scope(|| tracing::error!(error = %e, "no RTP writer for the call"));
                    act.end(EndReason::Internal, ctx);
                }
            }
        }));
    }

    /// Periodic checks: deadlines, and whether the browser closed its side.
    fn watch(&mut self, ctx: &mut Context<Self>) {
        if let Phase::Answered(at) = self.phase
            && at.elapsed() > self.settings.connect_timeout
        {
            return self.end(EndReason::ConnectTimeout, ctx);
        }
        if self.phase == Phase::Negotiating
            && self.created.elapsed() > self.settings.connect_timeout
        {
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
    }

    /// Ends the call once: stops the codec, closes the connection, tells the supervisor.
    fn end(&mut self, reason: EndReason, ctx: &mut Context<Self>) {
        if self.phase == Phase::Ending {
            return;
        }
        self.phase = Phase::Ending;
        let _e = self.span.clone().entered();
        tracing::info!(%reason, duration_ms = self.created.elapsed().as_millis() as u64, "call ending");
        if let Some(codec) = self.codec.take() {
            trace_msg!(self.call_id, "call" => "codec", "Stop");
            codec.do_send(crate::codec::Stop);
        }
        let peer = self.peer.take();
        let fut = async move {
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

impl CodecSettings {
    /// The codec's settings for a call of `mode`.
    pub fn from_call(s: &CallSettings, mode: CallMode) -> Self {
        CodecSettings {
            uplink: voicegate_core::codec::UplinkSettings {
                pcm_rate: s.pcm_rate,
                reorder_depth: s.reorder_depth,
                reorder_wait: s.reorder_wait,
                max_conceal: s.max_conceal,
            },
            encoder: s.encoder,
            max_catch_up: s.max_catch_up,
            max_queue_frames: s.max_queue_frames,
            // Echo: a 40 ms jitter margin for the caller's packet timing, plus the configured delay.
            prebuffer_frames: match mode {
                CallMode::Echo => 2 + s.echo_delay_frames,
            },
            echo: mode == CallMode::Echo,
            rtp_timeout: s.rtp_timeout,
        }
    }
}
