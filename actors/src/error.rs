//! The actor layer's errors: why a call's child failed, as its parent hears it.
//!
//! Children report failures to their call as values inside their events
//! (`CodecEvent::Failed`, `DialogEvent::Unreachable`/`Lost`/`Crashed`); the call logs them once
//! and decides (restart, reconnect, end the call with a reason). They keep their cause as a
//! `source` where there is one, and their `Display` reads as the log line always did. Events
//! cross actors through `Recipient`s, so every error here is `Send`; a cause that is not (awc's
//! dial error) is kept as its text.
//!
//! Why an offer did not become a call is the supervisor's `PlaceCallError`, next to the message
//! it answers.

use awc::error::WsProtocolError;
use voicegate_core::ws_frame::TooBig;

/// How a child actor went away without being stopped: what its drop guard reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It panicked (a bug).
    Panicked,
    /// It was dropped without being told to stop (its arbiter went away).
    Stopped,
}

impl Exit {
    /// How the actor being dropped on this thread went away.
    pub fn now() -> Exit {
        if std::thread::panicking() {
            Exit::Panicked
        } else {
            Exit::Stopped
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Exit::Panicked => "panicked",
            Exit::Stopped => "stopped unexpectedly",
        })
    }
}

/// Why the audio codec stopped working. The call restarts it while its budget allows.
#[derive(Debug, thiserror::Error)]
pub enum CodecFailure {
    /// libopus refused the codec's settings. They were validated at startup, so this is a bug.
    #[error("codec setup: {0}")]
    Setup(#[source] voicegate_core::codec::CodecError),
    /// Encoding a downlink frame failed.
    #[error("encode: {0}")]
    Encode(#[source] voicegate_core::codec::CodecError),
    /// The actor went away without being stopped.
    #[error("audio codec {0}")]
    Exited(Exit),
}

/// Why the dialog connection failed: a first dial that did not connect
/// (`DialogEvent::Unreachable`), or the last loss before the reconnect budget ran out
/// (`DialogEvent::Lost`).
#[derive(Debug, thiserror::Error)]
pub enum DialogFailure {
    /// The dial failed (refused, timed out, or answered without upgrading).
    #[error("dial {url} (http={status}): {detail}")]
    Dial {
        /// The URL dialled, credentials redacted.
        url: String,
        /// The app's HTTP status, 0 if none came.
        status: u16,
        /// awc's error, as text: it is not `Send`, so it cannot travel in an event.
        detail: String,
    },
    /// The app closed the connection with a code other than a normal closure.
    #[error("closed with code {0}")]
    Closed(u16),
    /// The app announced a message over `dialog.max_message_bytes`.
    #[error(transparent)]
    TooBig(#[from] TooBig),
    /// The app broke the WebSocket protocol, or reading failed.
    #[error("protocol error: {0}")]
    Protocol(#[source] WsProtocolError),
    /// Writing to the app failed.
    #[error("write failed: {0}")]
    Write(#[source] WsProtocolError),
    /// No sign of life within `ping_interval + pong_timeout`.
    #[error("no answer to pings")]
    Silent,
    /// The TCP connection ended without a close frame.
    #[error("connection ended")]
    Ended,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts the logs have always shown.
    #[test]
    fn failures_read_as_the_logs_did() {
        assert_eq!(
            CodecFailure::Exited(Exit::Panicked).to_string(),
            "audio codec panicked"
        );
        assert_eq!(Exit::now(), Exit::Stopped);
        assert_eq!(
            DialogFailure::Dial {
                url: "ws://app/".into(),
                status: 404,
                detail: "Invalid response status".into(),
            }
            .to_string(),
            "dial ws://app/ (http=404): Invalid response status"
        );
        assert_eq!(
            DialogFailure::Closed(4000).to_string(),
            "closed with code 4000"
        );
        let e = DialogFailure::Protocol(WsProtocolError::MaskedFrame);
        assert_eq!(
            e.to_string(),
            "protocol error: Received a masked frame from server"
        );
        assert!(std::error::Error::source(&e).is_some());
    }
}
