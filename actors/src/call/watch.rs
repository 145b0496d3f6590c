//! The call's periodic watch: its deadlines, whether the browser closed its side, and the
//! browser's loss report for our audio.
//!
//! Every [`WATCH_INTERVAL`] while the call lives: a call not connected within
//! `calls.connect_timeout_ms`, or whose caller sent no authenticated connectivity check within
//! `calls.auth_timeout_ms`, ends with `connect-timeout`; a DTLS transport the browser closed ends
//! it with `peer-closed` (read within one interval, faster than ICE notices). RTP silence is the
//! codec's to watch (`CodecEvent::RtpTimeout`).

use super::{CallActor, EndReason, Phase};
use crate::codec::DownlinkLoss;
use crate::metrics::{Limit, metrics};
use actix::prelude::*;
use std::time::Duration;

/// How often the call checks its deadlines and whether the browser closed its side.
pub(super) const WATCH_INTERVAL: Duration = Duration::from_millis(200);
/// The browser's loss report for our audio is read every this many watch ticks (2 s; browsers
/// send receiver reports every second or so).
const LOSS_EVERY: u32 = 10;

impl CallActor {
    /// Periodic checks: deadlines, and whether the browser closed its side.
    pub(super) fn watch(&mut self, ctx: &mut Context<Self>) {
        self.recording_tick();
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
}
