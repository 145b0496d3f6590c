//! `DialogClient`: the call's WebSocket to the dialog app (voicegate is the client).
//!
//! It dials `dialog.url` with `call_id` and the offer's parameters in the query and the configured
//! `dialog.headers`, over the TLS configuration built at startup ([`crate::dialog_conn`]), sends
//! events as JSON text frames and turns the app's frames into [`Command`]s for its `CallActor`.
//! Malformed, unknown and misaddressed commands are logged and ignored. A dial refused by the
//! certificate check is a failed dial like any other (its log line names the certificate problem).
//!
//! Keep-alive: a WebSocket ping every `ping_interval`; any frame from the app counts as a sign of
//! life, so an app that is silent for hours keeps its call (the original hung up after five
//! minutes). No sign of life for `ping_interval + pong_timeout` means the connection is lost:
//! each ping is followed by a check when that much silence would be reached, so a silent peer is
//! noticed then, not at a later ping's tick (up to a whole interval later, with events written
//! into a dead socket meanwhile).
//!
//! Losing the connection (an error, an abnormal close, a silent peer) starts reconnecting with
//! exponential backoff; events produced meanwhile are kept (bounded, oldest dropped first) and
//! delivered after the reconnect. The app closing normally (1000/1001) is answered with a close
//! frame echoing its code (RFC 6455 §5.5.1), reported as [`DialogEvent::Closed`] and ends the
//! call. A failed first dial is [`DialogEvent::Unreachable`]; running out of reconnect attempts is
//! [`DialogEvent::Lost`].
//!
//! Closing ([`Close`], the call's end): when connected, what was sent is flushed, then a normal
//! close (1000) carries the end reason, cut to fit a close frame ([`close_reason`]). When the call
//! ends while the client is reconnecting, the events it holds (the last `tts.ended`s and
//! `call.ended`) would be lost with it, so it makes one last dial at once (or lets the dial in
//! flight finish), delivers them and closes normally. That dial is bounded by `connect_timeout`,
//! and the actor stops `connect_timeout + CLOSE_GRACE` after the `Close` whatever happened; the
//! call's teardown does not wait for it. No last dial follows a first dial that failed or a
//! reconnect budget that ran out: the app is gone, and the call ended for that reason.
//!
//! Reconnect attempts are counted in a row (`RedialBudget`): a connection that drops within
//! `stable_after` of coming up is one more failed attempt, and only a connection that stayed up
//! that long gives the full `reconnect_attempts` back. An app that accepts and drops again and
//! again is therefore dialled at most `reconnect_attempts + 1` times before the call ends.
//!
//! A lost connection is let go of at once, both halves, so its socket is closed rather than left
//! half-open until the call ends. A message larger than `max_message_bytes` is refused by the
//! length its frame header declares, before its payload is read (`dialog_wire`); the connection
//! is then closed with 1009 (message too big, RFC 6455 §7.4.1) and counts as lost.
//!
//! Failure: if the actor dies (a panic), its drop guard reports [`DialogEvent::Crashed`] and the
//! call restarts it, which then redials like a reconnect (no second `call.started`).

use crate::dialog_conn::DialHeaders;
use crate::dialog_wire::{FlushThenClose, LimitedCodec, ReadError, dialog_codec};
use crate::error::{DialogFailure, Exit};
use crate::trace_msg;
use actix::io::SinkWrite;
use actix::prelude::*;
use awc::BoxedSocket;
use awc::ws::{CloseCode, CloseReason, Frame, Message as WsMessage};
use futures_util::StreamExt;
use futures_util::stream::SplitSink;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use url::Url;
use voicegate_core::call_id::CallId;
use voicegate_core::dialog::{
    Command, CommandError, DialParams, Event, close_reason, dial_url, parse_command, redact,
};
use voicegate_core::restart::RedialBudget;
use voicegate_core::untrusted::shown;
use voicegate_engines::tls::ClientTls;

mod connection;
mod frames;

use frames::Fragments;

/// How long a closing connection may take to flush its close frame.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// Settings of the dialog connection.
#[derive(Debug, Clone)]
pub struct DialogSettings {
    /// The dialog app's URL (`ws://` or `wss://`).
    pub url: Url,
    /// Longest wait for a dial.
    pub connect_timeout: Duration,
    /// Interval of WebSocket pings.
    pub ping_interval: Duration,
    /// Extra silence tolerated after a ping before the connection counts as lost.
    pub pong_timeout: Duration,
    /// Reconnect attempts after a loss (0: none).
    pub reconnect_attempts: u32,
    /// Delay before the first reconnect attempt; doubles per attempt.
    pub reconnect_initial: Duration,
    /// Longest delay between attempts.
    pub reconnect_max: Duration,
    /// Events kept while disconnected.
    pub event_buffer: usize,
    /// Largest message accepted from the app, in bytes (fragments of one message together).
    pub max_message_bytes: usize,
    /// How long a connection must stay up before its loss starts a fresh row of attempts.
    pub stable_after: Duration,
    /// Headers sent on every dial (values never shown).
    pub headers: DialHeaders,
    /// The TLS configuration of `wss://` dials, shared by every call.
    pub tls: ClientTls,
}

/// Reports to the call.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub enum DialogEvent {
    /// Connected (`reconnect`: not the first time).
    Connected {
        /// After a loss or a restart.
        reconnect: bool,
    },
    /// A command from the app.
    Command(Command),
    /// The connection was lost; attempt `attempt` will follow.
    Reconnecting {
        /// 1-based attempt number.
        attempt: u32,
    },
    /// The first dial failed.
    Unreachable(DialogFailure),
    /// The connection was lost and not recovered; the last failure.
    Lost(DialogFailure),
    /// The app closed the connection normally.
    Closed {
        /// The close code.
        code: u16,
    },
    /// The client actor died unexpectedly.
    Crashed(Exit),
}

/// Send an event to the app (buffered while disconnected).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Send(pub Event);

/// Close the connection (normal closure, `reason` in the close frame, cut to fit) and stop. While
/// reconnecting, one last bounded dial delivers the events held back first (see the module doc).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Close {
    /// Why.
    pub reason: String,
}

type WsSink = SinkWrite<
    WsMessage,
    FlushThenClose<SplitSink<actix_codec::Framed<BoxedSocket, LimitedCodec>, WsMessage>>,
>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Dialing or waiting to redial.
    Dialing,
    /// Connected.
    Open,
    /// The call ended while reconnecting: one last dial is to deliver the pending events.
    LastDial,
    /// Closing for good.
    Closing,
}

/// The actor.
pub struct DialogClient {
    /// The call's id.
    call_id: CallId,
    /// The call's span.
    span: tracing::Span,
    /// Settings.
    settings: Arc<DialogSettings>,
    /// The offer's parameters for the URL.
    params: DialParams,
    /// The call actor.
    parent: Recipient<DialogEvent>,
    /// The write half, while connected.
    sink: Option<WsSink>,
    /// The read half's stream.
    reader: Option<SpawnHandle>,
    /// The future that writes `sink` out. Kept here because `SinkWrite::handle` cannot be
    /// asked from inside that future's own callbacks (a write error), which hold its state.
    writer: Option<SpawnHandle>,
    /// The write half of a lost connection, flushing its close frame until the grace period
    /// ends or the next dial starts.
    retiring: Option<SpawnHandle>,
    /// The dial in flight, if any.
    dialing: Option<SpawnHandle>,
    /// The app is gone for good: `Unreachable` or `Lost` was reported, so no last dial.
    given_up: bool,
    /// The close frame's reason after the last dial (the call's end reason).
    last_reason: String,
    /// Reconnect attempts left in a row.
    redials: RedialBudget,
    /// Events waiting for a connection.
    pending: VecDeque<String>,
    /// Events dropped because the buffer was full.
    dropped: u64,
    /// Connection state.
    state: State,
    /// Connected at least once (or started as a restart).
    ever_connected: bool,
    /// When the app was last heard from.
    last_heard: Instant,
    /// A fragmented message from the app, being put together.
    fragments: Fragments,
    /// Set when stopped on purpose; the drop guard reports anything else.
    stopped_cleanly: bool,
    /// Counted in `voicegate_actors_live` while it exists.
    _live: crate::metrics::Live,
}

impl DialogClient {
    /// A client for one call. `restart`: the call already started once (after a crash).
    pub fn new(
        call_id: CallId,
        span: tracing::Span,
        settings: Arc<DialogSettings>,
        params: DialParams,
        parent: Recipient<DialogEvent>,
        restart: bool,
    ) -> Self {
        let redials = RedialBudget::new(settings.reconnect_attempts, settings.stable_after);
        DialogClient {
            call_id,
            span,
            settings,
            params,
            parent,
            sink: None,
            reader: None,
            writer: None,
            retiring: None,
            dialing: None,
            given_up: false,
            last_reason: String::new(),
            redials,
            pending: VecDeque::new(),
            dropped: 0,
            state: State::Dialing,
            ever_connected: restart,
            last_heard: Instant::now(),
            fragments: Fragments::default(),
            stopped_cleanly: false,
            _live: crate::metrics::Live::new(crate::metrics::ActorKind::Dialog),
        }
    }
}

impl Actor for DialogClient {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.dial(1, ctx);
        let every = self.settings.ping_interval;
        ctx.run_interval(every, |act, ctx| {
            if act.state != State::Open {
                return;
            }
            if act.last_heard.elapsed() > act.settings.ping_interval + act.settings.pong_timeout {
                act.lost(DialogFailure::Silent, None, ctx);
                return;
            }
            if let Some(sink) = act.sink.as_mut() {
                let _ = sink.write(WsMessage::Ping(bytes::Bytes::new()));
                // When the silence would reach the limit if this ping is not answered either.
                let limit = act.settings.ping_interval + act.settings.pong_timeout;
                let due = (act.last_heard + limit)
                    .saturating_duration_since(Instant::now())
                    .max(act.settings.pong_timeout);
                ctx.run_later(due, move |act, ctx| {
                    // Anything heard meanwhile (a reconnect included) moved `last_heard` on.
                    if act.state == State::Open && act.last_heard.elapsed() >= limit {
                        act.lost(DialogFailure::Silent, None, ctx);
                    }
                });
            }
        });
    }
}

impl Drop for DialogClient {
    fn drop(&mut self) {
        if !self.stopped_cleanly {
            self.parent.do_send(DialogEvent::Crashed(Exit::now()));
        }
    }
}

impl Handler<Send> for DialogClient {
    type Result = ();

    fn handle(&mut self, Send(event): Send, _ctx: &mut Self::Context) {
        trace_msg!(self.call_id, "call" => "dialog", "Send", "{}", event.kind());
        let text = event.to_json(self.call_id.as_str());
        self.write(text);
    }
}

impl Handler<Close> for DialogClient {
    type Result = ();

    fn handle(&mut self, msg: Close, ctx: &mut Self::Context) {
        trace_msg!(self.call_id, "call" => "dialog", "Close", "{}", shown(&msg.reason));
        self.stopped_cleanly = true;
        match (self.state, self.sink.as_mut()) {
            (State::Open, Some(sink)) => {
                self.state = State::Closing;
                close_normally(sink, &msg.reason);
                // Stop once flushed (WriteHandler::finished), or after a grace period.
                ctx.run_later(CLOSE_GRACE, |_, ctx| ctx.stop());
            }
            (State::Dialing, _) if !self.given_up && !self.pending.is_empty() => {
                self.last_dial(msg.reason, ctx);
            }
            // The app closed first and our answering close frame is still flushing.
            (State::Closing, Some(_)) => {
                ctx.run_later(CLOSE_GRACE, |_, ctx| ctx.stop());
            }
            _ => {
                self.state = State::Closing;
                ctx.stop();
            }
        }
    }
}

/// Writes a normal close (1000) with `reason`, cut to fit a close frame (RFC 6455 §5.5), and
/// closes the write half once what is buffered, the close frame last, has been flushed.
fn close_normally(sink: &mut WsSink, reason: &str) {
    let _ = sink.write(WsMessage::Close(Some(CloseReason {
        code: CloseCode::Normal,
        description: Some(close_reason(reason).to_owned()),
    })));
    sink.close();
}

/// Test-only fault injection: the client panics in a handler, as a bug would.
#[cfg(feature = "test-hooks")]
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct InjectPanic;

#[cfg(feature = "test-hooks")]
impl Handler<InjectPanic> for DialogClient {
    type Result = ();

    fn handle(&mut self, _: InjectPanic, _ctx: &mut Self::Context) {
        panic!("injected dialog client fault (test hook)");
    }
}
