//! The call's children: starting them, and restarting one that died.
//!
//! A dialog call's speaker, recognizer and dialog client start right after the answer (so the
//! dialog app is dialled in parallel with ICE); the codec starts once media connects, because it
//! needs the negotiated RTP writer. All of them run on the call's worker.
//!
//! A child that dies is restarted while the call's restart budget allows
//! (`supervision.max_restarts` within `supervision.window_ms`), else the call ends with
//! `internal-error`. A new codec continues the RTP numbering (the shared [`Timeline`]) and
//! re-attaches the caller's track; what the old one had queued is lost, so the speaker ends the
//! utterances in progress with `ok: false`. A new dialog client redials without a second
//! `call.started`.
//!
//! [`Timeline`]: voicegate_core::timeline::Timeline

use super::{CallActor, EndReason, page::Page};
use crate::codec::{AudioCodec, CodecSettings, CodecSetup};
use crate::dialog::DialogClient;
use crate::metrics::{Child, metrics};
use crate::recognizer::Recognizer;
use crate::speaker::{self, Speaker};
use actix::prelude::*;
use std::time::Instant;

impl CallActor {
    /// Dialog calls: the speaker and the dialog client start right after the answer.
    pub(super) fn start_dialog_plane(&mut self, ctx: &mut Context<Self>) {
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
        self.page = Page::waiting();
        self.start_dialog(false, ctx);
    }

    pub(super) fn start_dialog(&mut self, restart: bool, ctx: &mut Context<Self>) {
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

    /// Starts (or restarts) the codec on this worker.
    pub(super) fn start_codec(&mut self, ctx: &mut Context<Self>) {
        let Some(writer) = self.writer.clone() else {
            return;
        };
        let mut settings = CodecSettings::from_call(&self.settings, &self.offer);
        // A restarted codec listens as the session last said.
        if let Some(l) = settings.listen.as_mut() {
            l.endpoint.end_silence_ms = self.session.end_silence_ms;
            l.barge_in.enabled = self.session.barge_in;
        }
        let parent = ctx.address().recipient();
        let (call_id, span) = (self.call_id.clone(), self.span.clone());
        let track = self.track.clone();
        let timeline = self.timeline.clone();
        let tape = self.recording.as_ref().map(|r| r.tape.clone());
        let setup = CodecSetup {
            call_id,
            span,
            settings,
            track,
            writer,
            timeline,
            tape,
            parent,
            recognizer: self.recognizer.as_ref().map(|r| r.clone().recipient()),
            speaker: self.speaker.as_ref().map(|s| s.clone().recipient()),
        };
        let codec = AudioCodec::create(move |c| AudioCodec::new(setup, c));
        if let Some(s) = &self.speaker {
            s.do_send(speaker::SetCodec(Some(codec.clone())));
        }
        if self.interrupted.is_some() {
            // A codec restarted while the caller's media is away holds its playout too.
            codec.do_send(crate::codec::HoldPlayout(true));
        }
        self.codec = Some(codec);
    }

    /// The codec died: a new one, or the end of the call when the budget is spent.
    pub(super) fn restart_codec(&mut self, ctx: &mut Context<Self>) {
        if !self.restarts.allow(Instant::now()) {
            return self.end(EndReason::Internal, ctx);
        }
        self.span
            .in_scope(|| tracing::warn!("restarting the audio codec"));
        metrics().restarts[Child::Codec].inc();
        self.start_codec(ctx);
        if let Some(s) = &self.speaker {
            s.do_send(speaker::PlayoutLost);
        }
    }

    /// The dialog client died: a new one that redials, or the end of the call when the budget
    /// is spent.
    pub(super) fn restart_dialog(&mut self, ctx: &mut Context<Self>) {
        if !self.restarts.allow(Instant::now()) {
            return self.end(EndReason::Internal, ctx);
        }
        tracing::warn!("restarting the dialog client");
        metrics().restarts[Child::Dialog].inc();
        self.start_dialog(true, ctx);
    }
}
