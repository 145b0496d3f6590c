//! `session.update`: the dialog app changes its call's engines, endpointing and barge-in.
//!
//! The update is checked whole before anything changes: the message's own errors (from
//! `voicegate_core::session`), then the profiles it names, then what each chosen engine accepts
//! of the options ([`TtsFactory::with_options`] / [`AsrFactory::with_options`], which never
//! block). Any error: one `error` event naming every option that failed, and the session stays
//! as it was. Otherwise the speaker and the recognizer get their new engines (what is already
//! being synthesized or recognized finishes on the old one), the codec its listening settings,
//! and the app a `session.updated` with the whole session.

use super::CallActor;
use crate::codec::SetListening;
use crate::recognizer;
use crate::speaker;
use std::sync::Arc;
use voicegate_core::dialog::Event;
use voicegate_core::session::{DEFAULT_PROFILE, OptionError, SessionUpdate};
use voicegate_engines::asr::AsrFactory;
use voicegate_engines::tts::TtsFactory;

impl CallActor {
    pub(super) fn update_session(&mut self, update: &SessionUpdate, mut errors: Vec<OptionError>) {
        let next = self.session.updated(update);
        let tts = self.tts_factory(&next.tts_profile);
        let asr = self.asr_factory(&next.asr_profile);
        let tts_changed =
            next.tts_profile != self.session.tts_profile || next.tts != self.session.tts;
        let asr_changed =
            next.asr_profile != self.session.asr_profile || next.asr != self.session.asr;
        match &tts {
            None => errors.push(OptionError::new(
                "tts.profile",
                "no such profile in tts.profiles",
            )),
            Some(f) if tts_changed => {
                if let Err(e) = f.with_options(&next.tts) {
                    errors.push(OptionError::new(format!("tts.{}", e.option), e.reason));
                }
            }
            Some(_) => {}
        }
        match &asr {
            None => errors.push(OptionError::new(
                "asr.profile",
                "no such profile in asr.profiles",
            )),
            Some(f) if asr_changed => {
                if let Err(e) = f.with_options(&next.asr) {
                    errors.push(OptionError::new(format!("asr.{}", e.option), e.reason));
                }
            }
            Some(_) => {}
        }
        if !errors.is_empty() {
            let message = errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            self.span
                .in_scope(|| tracing::info!(errors = %message, "session.update refused"));
            self.send_event(Event::Error {
                message,
                command: "session.update",
                errors,
            });
            return;
        }
        if let (true, Some(f), Some(s)) = (tts_changed, tts, &self.speaker) {
            s.do_send(speaker::SetEngine(f, next.tts.clone()));
        }
        if let (true, Some(f), Some(r)) = (asr_changed, asr, &self.recognizer) {
            r.do_send(recognizer::SetEngine(f, next.asr.clone()));
        }
        if let Some(c) = &self.codec {
            c.do_send(SetListening {
                end_silence_ms: next.end_silence_ms,
                barge_in: next.barge_in,
            });
        }
        self.span.in_scope(|| {
            tracing::info!(
                tts = %next.tts_profile,
                asr = %next.asr_profile,
                end_silence_ms = next.end_silence_ms,
                barge_in = next.barge_in,
                "session updated"
            )
        });
        self.session = next;
        self.send_event(Event::SessionUpdated {
            session: self.session.clone(),
        });
    }

    fn tts_factory(&self, profile: &str) -> Option<Arc<dyn TtsFactory>> {
        if profile == DEFAULT_PROFILE {
            return Some(self.services.tts.clone());
        }
        self.services.profiles.tts.get(profile).cloned()
    }

    fn asr_factory(&self, profile: &str) -> Option<Arc<dyn AsrFactory>> {
        if profile == DEFAULT_PROFILE {
            return Some(self.services.asr.clone());
        }
        self.services.profiles.asr.get(profile).cloned()
    }
}
