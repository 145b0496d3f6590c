//! A call's domain types: what a validated offer carries, call settings, end reasons.

use crate::codec::ListenSettings;
use crate::dialog::DialogSettings;
use crate::metrics::LabelSet;
use crate::recognizer::RecognizerSettings;
use crate::recorder::{Recorder, RecordingSettings};
use std::sync::Arc;
use std::time::Duration;
use voicegate_core::codec::EncoderSettings;
use voicegate_core::dialog::DialParams;
use voicegate_core::page::PageLimits;
use voicegate_core::sdp::OfferSummary;
use voicegate_core::speech::PlayerSettings;
use voicegate_engines::asr::AsrFactory;
use voicegate_engines::tts::TtsFactory;
use voicegate_media::MediaPlane;

/// Per-call settings, from configuration.
#[derive(Debug, Clone)]
pub struct CallSettings {
    /// Call id prefix.
    pub id_prefix: String,
    /// This node's id, in every call id.
    pub node_id: String,
    /// Media must connect within this after the answer.
    pub connect_timeout: Duration,
    /// A call with no authenticated connectivity check this long after its answer ends.
    pub auth_timeout: Duration,
    /// A connected call ends after this long without RTP.
    pub rtp_timeout: Duration,
    /// Audio for a caller whose media is interrupted is held at most this long, then dropped.
    pub interrupted_hold: Duration,
    /// ICE restarts a call may make (`PATCH` with new credentials); 0: none.
    pub max_ice_restarts: u32,
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
    /// Playout queue bound for the echo path, frames.
    pub max_queue_frames: usize,
    /// Downlink encoder.
    pub encoder: EncoderSettings,
    /// Echo mode's added delay, frames.
    pub echo_delay_frames: usize,
    /// Speech out.
    pub player: PlayerSettings,
    /// Restarts of a failing child allowed within `restart_window`.
    pub max_restarts: usize,
    /// The window of `max_restarts`.
    pub restart_window: Duration,
    /// Prompts spoken while the dialog app is away.
    pub hold: HoldPrompts,
    /// Endpointing and barge-in.
    pub listen: ListenSettings,
    /// The recognizer's partial rate and result deadline.
    pub recognizer: RecognizerSettings,
    /// How `call.ended` spells its reason (`compat.call_ended_reasons`).
    pub end_reasons: EndReasonStyle,
    /// What the page and the dialog app may send each other (`[page]`).
    pub page: PageLimits,
    /// Which calls are recorded, and for how long at most (`[recording]`).
    pub recording: RecordingSettings,
}

/// How `call.ended` (and the dialog WebSocket's close frame) spells the reason a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EndReasonStyle {
    /// voicegate's own reasons ([`EndReason::as_str`]).
    #[default]
    Ours,
    /// The original service's strings ([`EndReason::original`]), for dialog apps that parse
    /// them.
    Original,
}

/// What the caller hears while the dialog connection is being re-established (empty: silence).
#[derive(Debug, Clone, Default)]
pub struct HoldPrompts {
    /// When the connection is first lost.
    pub first: String,
    /// Before each further attempt.
    pub retry: String,
    /// When voicegate gives up (played before the call ends).
    pub give_up: String,
}

/// The engines of `[tts.profiles.<name>]` and `[asr.profiles.<name>]`, by name.
#[derive(Default)]
pub struct EngineProfiles {
    /// Speech engines.
    pub tts: std::collections::BTreeMap<String, Arc<dyn TtsFactory>>,
    /// Recognizers.
    pub asr: std::collections::BTreeMap<String, Arc<dyn AsrFactory>>,
}

/// What every call shares: the media plane and the engines.
#[derive(Clone)]
pub struct CallServices {
    /// The shared UDP port and ICE configuration.
    pub plane: Arc<MediaPlane>,
    /// Makes each call's speech engine.
    pub tts: Arc<dyn TtsFactory>,
    /// Makes each call's recognizer.
    pub asr: Arc<dyn AsrFactory>,
    /// The named engine profiles a session may choose (`session.update`).
    pub profiles: Arc<EngineProfiles>,
    /// The dialog connection's settings.
    pub dialog: Arc<DialogSettings>,
    /// The recordings' writer (`None`: `recording.mode = "off"`).
    pub recorder: Option<Recorder>,
}

/// What kind of call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallMode {
    /// The caller hears their own audio back through the whole media path.
    Echo,
    /// The caller talks with the dialog app.
    Dialog,
}

/// Who is calling, for logs and the dialog app.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    /// The caller's address: the TCP peer, or what a trusted proxy forwarded.
    pub addr: String,
    /// The same, parsed: what per-source limits count by (absent only in tests that build
    /// offers by hand).
    pub ip: Option<std::net::IpAddr>,
    /// The browser's user agent.
    pub user_agent: Option<String>,
}

impl ClientInfo {
    /// The `from` of `call.started`: the address, then ` ua="<agent>"` (as the original).
    pub fn describe(&self) -> String {
        match &self.user_agent {
            Some(ua) => format!("{} ua={ua:?}", self.addr),
            None => self.addr.clone(),
        }
    }
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
    /// What the offer adds to the dialog URL (from the call token when it carries a payload).
    pub dialog: DialParams,
    /// Who is calling, as the call token's `sub` says: logged, and sent in `call.started`.
    pub caller: Option<String>,
    /// The call ends with `max-duration` this long after it was answered (the token's
    /// `max_duration_s`).
    pub max_duration: Option<Duration>,
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
    /// The dialog app sent `hangup` (with this reason, default `dialog-hangup`).
    DialogHangup(String),
    /// The dialog app closed its WebSocket normally.
    DialogClosed,
    /// The dialog app could not be reached at call start.
    DialogUnreachable,
    /// The dialog connection was lost and not recovered.
    DialogLost,
    /// The service is shutting down.
    Shutdown,
    /// The offer could not be answered (the call never started).
    NegotiationFailed,
    /// Something inside the call failed; the detail is logged.
    Internal,
    /// The call reached the longest duration its token allowed (`max_duration_s`).
    MaxDuration,
}

impl EndReason {
    /// The reason as it appears in `call.ended`: its label, except that a `hangup` carries the
    /// dialog app's own reason. Logs use `Display`, which escapes it.
    pub fn as_str(&self) -> &str {
        match self {
            EndReason::DialogHangup(reason) => reason,
            other => other.label().label(),
        }
    }

    /// The reason as the original service spelled it (its teardown reasons), for
    /// `compat.call_ended_reasons = "original"`. The original had fewer reasons, so several of
    /// ours fold into one of its: a peer connection that never connected or lost ICE for good
    /// is `pc-state:failed`; every way of losing the dialog app after the call started is
    /// `dialog-hangup:dialog-ws-closed`; a call the dialog app never answered, or that failed
    /// inside, is `pipeline-error`. Two have no counterpart and keep our spelling: `shutdown`
    /// (the original dropped its calls without a reason) and `max-duration` (it had no call
    /// tokens).
    pub fn original(&self) -> std::borrow::Cow<'_, str> {
        use std::borrow::Cow::{Borrowed, Owned};
        match self {
            EndReason::ClientHangup => Borrowed("client-hangup"),
            EndReason::PeerClosed => Borrowed("pc-state:closed"),
            EndReason::IceFailed | EndReason::ConnectTimeout => Borrowed("pc-state:failed"),
            EndReason::RtpTimeout => Borrowed("rtp-read-end"),
            EndReason::DialogHangup(reason) => Owned(format!("dialog-hangup:{reason}")),
            EndReason::DialogClosed | EndReason::DialogLost => {
                Borrowed("dialog-hangup:dialog-ws-closed")
            }
            EndReason::DialogUnreachable | EndReason::NegotiationFailed | EndReason::Internal => {
                Borrowed("pipeline-error")
            }
            EndReason::Shutdown | EndReason::MaxDuration => Borrowed(self.as_str()),
        }
    }

    /// The reason as `call.ended` spells it in `style`.
    pub fn wire(&self, style: EndReasonStyle) -> std::borrow::Cow<'_, str> {
        match style {
            EndReasonStyle::Ours => std::borrow::Cow::Borrowed(self.as_str()),
            EndReasonStyle::Original => self.original(),
        }
    }

    /// The reason's label in the metrics: a `hangup` counts as `dialog-hangup`, whatever its
    /// reason.
    pub fn label(&self) -> EndLabel {
        match self {
            EndReason::ClientHangup => EndLabel::ClientHangup,
            EndReason::PeerClosed => EndLabel::PeerClosed,
            EndReason::IceFailed => EndLabel::IceFailed,
            EndReason::RtpTimeout => EndLabel::RtpTimeout,
            EndReason::ConnectTimeout => EndLabel::ConnectTimeout,
            EndReason::DialogHangup(_) => EndLabel::DialogHangup,
            EndReason::DialogClosed => EndLabel::DialogClosed,
            EndReason::DialogUnreachable => EndLabel::DialogUnreachable,
            EndReason::DialogLost => EndLabel::DialogLost,
            EndReason::Shutdown => EndLabel::Shutdown,
            EndReason::NegotiationFailed => EndLabel::NegotiationFailed,
            EndReason::Internal => EndLabel::Internal,
            EndReason::MaxDuration => EndLabel::MaxDuration,
        }
    }
}

/// The end reasons as a fixed set: the `reason` label of `voicegate_calls_total`, and the text
/// of every [`EndReason`] but a dialog app's `hangup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndLabel {
    /// `client-hangup`.
    ClientHangup,
    /// `peer-closed`.
    PeerClosed,
    /// `ice-failed`.
    IceFailed,
    /// `rtp-timeout`.
    RtpTimeout,
    /// `connect-timeout`.
    ConnectTimeout,
    /// `dialog-hangup`: every `hangup` from the dialog app, whatever its reason.
    DialogHangup,
    /// `dialog-closed`.
    DialogClosed,
    /// `dialog-unreachable`.
    DialogUnreachable,
    /// `dialog-lost`.
    DialogLost,
    /// `shutdown`.
    Shutdown,
    /// `negotiation-failed`.
    NegotiationFailed,
    /// `internal-error`.
    Internal,
    /// `max-duration`.
    MaxDuration,
}

impl LabelSet for EndLabel {
    const ALL: &'static [EndLabel] = &[
        EndLabel::ClientHangup,
        EndLabel::PeerClosed,
        EndLabel::IceFailed,
        EndLabel::RtpTimeout,
        EndLabel::ConnectTimeout,
        EndLabel::DialogHangup,
        EndLabel::DialogClosed,
        EndLabel::DialogUnreachable,
        EndLabel::DialogLost,
        EndLabel::Shutdown,
        EndLabel::NegotiationFailed,
        EndLabel::Internal,
        EndLabel::MaxDuration,
    ];

    fn label(self) -> &'static str {
        match self {
            EndLabel::ClientHangup => "client-hangup",
            EndLabel::PeerClosed => "peer-closed",
            EndLabel::IceFailed => "ice-failed",
            EndLabel::RtpTimeout => "rtp-timeout",
            EndLabel::ConnectTimeout => "connect-timeout",
            EndLabel::DialogHangup => "dialog-hangup",
            EndLabel::DialogClosed => "dialog-closed",
            EndLabel::DialogUnreachable => "dialog-unreachable",
            EndLabel::DialogLost => "dialog-lost",
            EndLabel::Shutdown => "shutdown",
            EndLabel::NegotiationFailed => "negotiation-failed",
            EndLabel::Internal => "internal-error",
            EndLabel::MaxDuration => "max-duration",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The reason as it appears in logs: a `hangup` reason is the dialog app's own text, so it is
/// escaped and capped (see `voicegate_core::untrusted`); the others read as they are.
impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&voicegate_core::untrusted::shown(self.as_str()), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_reasons_are_the_originals_teardown_strings() {
        let table = [
            (EndReason::ClientHangup, "client-hangup", "client-hangup"),
            (EndReason::PeerClosed, "peer-closed", "pc-state:closed"),
            (EndReason::IceFailed, "ice-failed", "pc-state:failed"),
            (
                EndReason::ConnectTimeout,
                "connect-timeout",
                "pc-state:failed",
            ),
            (EndReason::RtpTimeout, "rtp-timeout", "rtp-read-end"),
            (
                EndReason::DialogHangup("bye".into()),
                "bye",
                "dialog-hangup:bye",
            ),
            (
                EndReason::DialogHangup("dialog-hangup".into()),
                "dialog-hangup",
                "dialog-hangup:dialog-hangup",
            ),
            (
                EndReason::DialogClosed,
                "dialog-closed",
                "dialog-hangup:dialog-ws-closed",
            ),
            (
                EndReason::DialogLost,
                "dialog-lost",
                "dialog-hangup:dialog-ws-closed",
            ),
            (
                EndReason::DialogUnreachable,
                "dialog-unreachable",
                "pipeline-error",
            ),
            (
                EndReason::NegotiationFailed,
                "negotiation-failed",
                "pipeline-error",
            ),
            (EndReason::Internal, "internal-error", "pipeline-error"),
            (EndReason::Shutdown, "shutdown", "shutdown"),
            (EndReason::MaxDuration, "max-duration", "max-duration"),
        ];
        for (reason, ours, original) in table {
            assert_eq!(reason.wire(EndReasonStyle::Ours), ours, "{reason:?}");
            assert_eq!(
                reason.wire(EndReasonStyle::Original),
                original,
                "{reason:?}"
            );
        }
    }
}
