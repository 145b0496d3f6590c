//! Message tracing: every message between actors, logged at `trace` on one target.
//!
//! Enable with `RUST_LOG=voicegate::messages=trace` (or `log.filter`). Each line carries the
//! call id, sender, receiver, message name and a short summary; never audio.

/// The tracing target of message logs.
pub const TARGET: &str = "voicegate::messages";

/// Logs one message between actors.
#[macro_export]
macro_rules! trace_msg {
    ($call_id:expr, $from:expr => $to:expr, $msg:expr) => {
        tracing::trace!(target: $crate::trace::TARGET, call_id = %$call_id, from = $from, to = $to, msg = $msg)
    };
    ($call_id:expr, $from:expr => $to:expr, $msg:expr, $($summary:tt)+) => {
        tracing::trace!(target: $crate::trace::TARGET, call_id = %$call_id, from = $from, to = $to, msg = $msg, summary = %format_args!($($summary)+))
    };
}
