//! Test hooks (feature `test-hooks`): make one of a call's children panic, as a bug would, so
//! integration tests can watch the call restart it or end with `internal-error`; or end a call
//! while its speaker's report is on its way, a race too narrow to hit from outside.

use super::CallActor;
use actix::prelude::*;

/// Which child a test makes fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The audio codec panics.
    Codec,
    /// The dialog client panics.
    Dialog,
    /// The speaker is handed a `tts.speak` it refuses at once (its text is over any
    /// `tts.max_text_bytes`), and the call ends (`client-hangup`) before that refusal's
    /// `tts.ended` arrives here.
    EndWhileSpeakerReports,
}

/// Test-only: make a child panic. Resolves to whether the child was there to receive it.
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub struct InjectFault(pub Fault);

impl Handler<InjectFault> for CallActor {
    type Result = bool;

    fn handle(&mut self, InjectFault(fault): InjectFault, ctx: &mut Self::Context) -> bool {
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
            Fault::EndWhileSpeakerReports => {
                let Some(s) = &self.speaker else {
                    return false;
                };
                s.do_send(crate::speaker::Speak {
                    id: "refused".into(),
                    text: "a".repeat(2 << 20),
                    report: true,
                });
                self.end(super::EndReason::ClientHangup, ctx);
                true
            }
        }
    }
}
