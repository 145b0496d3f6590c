//! Test hooks (feature `test-hooks`): make one of a call's children panic, as a bug would, so
//! integration tests can watch the call restart it or end with `internal-error`.

use super::CallActor;
use actix::prelude::*;

/// Which child a test makes fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The audio codec panics.
    Codec,
    /// The dialog client panics.
    Dialog,
}

/// Test-only: make a child panic. Resolves to whether the child was there to receive it.
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub struct InjectFault(pub Fault);

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
