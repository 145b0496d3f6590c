//! What the caller hears while the dialog app is away: the hold prompts while the dialog client
//! reconnects, and the give-up prompt before a call ends with `dialog-lost`.
//!
//! The prompts are voicegate's own (`dialog.hold_*`; empty means silence). They are spoken with
//! `report: false`, so the player reports nothing for them: no `tts.*` to the dialog app, nothing
//! on the page, nothing in the first-audio metrics. Their ids (`voicegate-hold-<attempt>`,
//! `voicegate-hold-give-up`) only name them in logs and traces.
//!
//! Giving up: the call waits for the give-up prompt to end (played, cut short by a barge-in, or
//! failed to synthesize: the speaker reports [`SpeakerEvent::PromptEnded`] either way), and at
//! most [`GIVE_UP_MAX`], so an engine that never answers cannot keep a lost call alive.
//!
//! [`SpeakerEvent::PromptEnded`]: crate::speaker::SpeakerEvent::PromptEnded

use super::{CallActor, EndReason};
use crate::speaker;
use actix::prelude::*;
use std::time::Duration;

/// The give-up prompt's utterance id.
const GIVE_UP_ID: &str = "voicegate-hold-give-up";
/// Longest wait for the give-up prompt before the call ends anyway.
const GIVE_UP_MAX: Duration = Duration::from_secs(15);

impl CallActor {
    /// The dialog client lost its socket and tries again (`attempt` from 1): the caller hears
    /// the first hold prompt, then the retry prompt before each further attempt.
    pub(super) fn hold_while_reconnecting(&mut self, attempt: u32) {
        let hold = &self.settings.hold;
        let text = if attempt == 1 {
            &hold.first
        } else {
            &hold.retry
        };
        if !text.is_empty() {
            let text = text.clone();
            self.speak_prompt(format!("voicegate-hold-{attempt}"), text);
        }
    }

    /// The dialog app is gone for good: the caller hears why, then the call ends with
    /// `dialog-lost` (at once when there is no give-up prompt).
    pub(super) fn give_up(&mut self, ctx: &mut Context<Self>) {
        let give_up = self.settings.hold.give_up.clone();
        if give_up.is_empty() || self.speaker.is_none() {
            return self.end(EndReason::DialogLost, ctx);
        }
        self.giving_up = true;
        self.speak_prompt(GIVE_UP_ID.to_owned(), give_up);
        ctx.run_later(GIVE_UP_MAX, |act, ctx| act.end(EndReason::DialogLost, ctx));
    }

    /// One of our prompts ended: after the give-up prompt, so does the call.
    pub(super) fn prompt_ended(&mut self, id: &str, ctx: &mut Context<Self>) {
        if self.giving_up && id == GIVE_UP_ID {
            self.end(EndReason::DialogLost, ctx);
        }
    }

    /// Queues one of voicegate's own prompts behind whatever is playing.
    fn speak_prompt(&self, id: String, text: String) {
        if let Some(s) = &self.speaker {
            s.do_send(speaker::Speak {
                id,
                text,
                report: false,
            });
        }
    }
}
