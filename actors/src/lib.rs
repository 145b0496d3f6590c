//! voicegate's supervision tree.
//!
//! A [`supervisor::Supervisor`] owns the call registry and spawns one [`call::CallActor`] per
//! call on a media worker ([`workers`]); the call actor owns the peer connection and an
//! [`codec::AudioCodec`] child. Actors exchange typed messages; children report to parents
//! through `Recipient`s. A failure inside one call ends (or, later, restarts) that call only.
//! Every message between actors can be traced ([`trace`]). The speech engines the speaker and
//! the recognizer drive live in `voicegate-engines`.

pub mod call;
pub mod clock;
pub mod codec;
pub mod dialog;
pub mod dialog_conn;
pub mod dialog_wire;
pub mod error;
pub mod metrics;
pub mod recognizer;
pub mod recorder;
pub mod speaker;
pub mod supervisor;
pub mod trace;
pub mod workers;
