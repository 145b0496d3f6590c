//! The end of a call: exactly once, with a reason, in an order that loses no report.
//!
//! The speaker ends what is queued (`tts.ended ok:false`, in order), the dialog app gets
//! `call.ended` and a normal close, the codec and the recognizer stop, the peer connection is
//! closed (its driver task ends, its routes on the shared port go), the supervisor hears
//! [`CallEvent::Ended`] and the actor stops. The mailbox is paused meanwhile, so nothing else
//! happens to a call that is ending, with one gap: the speaker's answer to `Finish` comes back
//! through the mailbox ([`Teardown`]), so reports it sent just before (a `tts.ended` racing the
//! end) are handled first and reach the app before `call.ended`; the other handlers ignore a
//! call that is ending (`Negotiate` is always a call's first message).
//!
//! A dialog socket that is reconnecting when the call ends still gets its events: on `Close` the
//! dialog client dials once more to deliver them (bounded by `dialog.connect_timeout_ms`, see
//! [`crate::dialog`]). `Close` is answered at once, so the teardown does not wait for that dial.

use super::{CallActor, CallEvent, EndReason, Phase, page::Page};
use crate::codec::Stop;
use crate::dialog::{Close, Send as SendEvent};
use crate::metrics::metrics;
use crate::speaker;
use crate::trace_msg;
use actix::prelude::*;
use tracing::Instrument;
use voicegate_core::dialog::Event;

impl CallActor {
    /// Ends the call once: speech ends, the dialog app hears `call.ended`, the codec stops, the
    /// connection closes, the supervisor is told.
    pub(super) fn end(&mut self, reason: EndReason, ctx: &mut Context<Self>) {
        if self.phase == Phase::Ending {
            return;
        }
        self.phase = Phase::Ending;
        let _e = self.span.clone().entered();
        tracing::info!(%reason, duration_ms = self.created.elapsed().as_millis() as u64, "call ending");
        metrics().call_ended(reason.label());
        let recording = self.finish_recording();
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
        let teardown = Teardown {
            reason,
            recording,
            leftovers: Vec::new(),
        };
        // Utterances still queued end before the call does, in order. The speaker's reports
        // sent before it took `Finish` are already in this mailbox: its answer comes back
        // through the mailbox too (as `Teardown`), behind them, so they reach the app first.
        match self.speaker.take() {
            Some(s) => {
                let me = ctx.address();
                ctx.wait(s.send(speaker::Finish).into_actor(self).map(
                    move |leftovers, _act, _ctx| {
                        me.do_send(Teardown {
                            leftovers: leftovers.unwrap_or_default(),
                            ..teardown
                        });
                    },
                ));
            }
            None => self.close_all(teardown, ctx),
        }
    }

    /// The rest of the end, once the speaker's reports are in: the dialog app hears what was
    /// held for it, the leftovers and `call.ended`, the connection closes, the supervisor is told.
    fn close_all(&mut self, teardown: Teardown, ctx: &mut Context<Self>) {
        let Teardown {
            reason,
            recording,
            leftovers,
        } = teardown;
        let dialog = self.dialog.take();
        let peer = self.peer.take();
        let call_id = self.call_id.clone();
        // Events held for `call.started` when it never went out (media never connected): the
        // app still hears them, before what the end adds (a refused `tts.speak`'s `tts.ended`
        // keeps its exactly-once).
        let early = std::mem::take(&mut self.early_events);
        let ended = reason.wire(self.settings.end_reasons).into_owned();
        let fut = async move {
            if let Some(d) = dialog {
                // Only the dialog app's utterances: the player reports nothing for our prompts.
                for e in early.into_iter().chain(leftovers) {
                    let _ = d.send(SendEvent(e)).await;
                }
                trace_msg!(call_id, "call" => "dialog", "Send", "call.ended");
                let _ = d
                    .send(SendEvent(Event::CallEnded {
                        reason: ended.clone(),
                        recording,
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

/// The end, continued once the speaker has answered `Finish` (see [`CallActor::end`]).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(super) struct Teardown {
    reason: EndReason,
    recording: Option<String>,
    /// The `tts.ended` of what was still queued.
    leftovers: Vec<Event>,
}

impl Handler<Teardown> for CallActor {
    type Result = ();

    fn handle(&mut self, teardown: Teardown, ctx: &mut Self::Context) {
        self.close_all(teardown, ctx);
    }
}
