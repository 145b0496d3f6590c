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

    fn dial(&mut self, attempt: u32, ctx: &mut Context<Self>) {
        if matches!(self.state, State::Closing | State::LastDial) {
            return;
        }
        self.state = State::Dialing;
        self.connect(attempt, ctx);
    }

    /// Dials the app; the outcome is handled by the state the client is in when it comes.
    /// `attempt` only names the dial in logs (0: the last dial).
    fn connect(&mut self, attempt: u32, ctx: &mut Context<Self>) {
        if let Some(old) = self.retiring.take() {
            ctx.cancel_future(old);
        }
        let url = dial_url(&self.settings.url, self.call_id.as_str(), &self.params);
        let shown = redact(&url);
        let timeout = self.settings.connect_timeout;
        let max_message = self.settings.max_message_bytes;
        let mut request = awc::Client::builder()
            .connector(awc::Connector::new().rustls_0_23(self.settings.tls.config()))
            .timeout(timeout)
            .finish()
            .ws(url.as_str())
            .max_frame_size(max_message);
        for header in self.settings.headers.iter() {
            let (name, value) = header.to_header();
            request = request.header(name, value);
        }
        let fut = request.connect();
        let handle = ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            act.dialing = None;
            let _e = act.span.clone().entered();
            match (act.state, res) {
                (State::Closing | State::Open, _) => {}
                (State::LastDial, Ok((_, framed))) => {
                    act.attach(framed, ctx);
                    act.deliver_and_close();
                }
                (State::LastDial, Err(e)) => {
                    let dropped = act.pending.len();
                    tracing::warn!(url = %shown, error = %e, dropped, "dialog app unreachable for the call's last events; they are dropped");
                    ctx.stop();
                }
                (State::Dialing, Ok((_, framed))) => {
                    act.attach(framed, ctx);
                    act.state = State::Open;
                    act.last_heard = Instant::now();
                    act.redials.connected(act.last_heard);
                    let reconnect = act.ever_connected;
                    act.ever_connected = true;
                    tracing::info!(url = %shown, attempt, reconnect, "dialog app connected");
                    while let Some(text) = act.pending.pop_front() {
                        act.write(text);
                    }
                    act.parent.do_send(DialogEvent::Connected { reconnect });
                }
                (State::Dialing, Err(e)) => {
                    let status = match &e {
                        awc::error::WsClientError::InvalidResponseStatus(s) => s.as_u16(),
                        _ => 0,
                    };
                    let detail = DialogFailure::Dial {
                        url: shown.clone(),
                        status,
                        detail: e.to_string(),
                    };
                    let headers = &act.settings.headers;
                    tracing::warn!(url = %shown, %headers, http = status, error = %e, attempt, "dialog app dial failed");
                    if act.ever_connected {
                        act.reconnect(detail, ctx);
                    } else {
                        act.given_up = true;
                        act.parent.do_send(DialogEvent::Unreachable(detail));
                    }
                }
            }
        }));
        self.dialing = Some(handle);
    }

    /// Takes a new connection: its read half feeds the actor, its write half is `sink`.
    fn attach(
        &mut self,
        framed: actix_codec::Framed<BoxedSocket, awc::ws::Codec>,
        ctx: &mut Context<Self>,
    ) {
        // awc's own codec would buffer a whole declared frame before checking it.
        let framed = framed.replace_codec(dialog_codec(self.settings.max_message_bytes));
        let (sink, stream) = framed.split();
        self.reader = Some(ctx.add_stream(stream));
        let sink = SinkWrite::new(FlushThenClose(sink), ctx);
        self.writer = Some(sink.handle());
        self.sink = Some(sink);
    }

    /// The call ended while reconnecting: dials once more, at once (or lets the dial in flight
    /// finish), to deliver the pending events and close with `reason`. Bounded: the actor stops
    /// `connect_timeout + CLOSE_GRACE` from now whatever happened (a dial that hangs past its
    /// timeout, a close frame that never flushes).
    fn last_dial(&mut self, reason: String, ctx: &mut Context<Self>) {
        self.state = State::LastDial;
        self.last_reason = reason;
        self.span.in_scope(|| {
            tracing::info!(
                events = self.pending.len(),
                "call ended while reconnecting; dialling once more for its last events"
            )
        });
        if self.dialing.is_none() {
            self.connect(0, ctx);
        }
        ctx.run_later(self.settings.connect_timeout + CLOSE_GRACE, |act, ctx| {
            if act.state == State::LastDial {
                act.span.in_scope(|| {
                    tracing::warn!(
                        dropped = act.pending.len(),
                        "dialog app not reached for the call's last events; they are dropped"
                    )
                });
            }
            ctx.stop();
        });
    }

    /// The last dial connected: the pending events go out in order, then a normal close. The
    /// actor stops once that is flushed (`WriteHandler::finished`) or at the last dial's bound.
    fn deliver_and_close(&mut self) {
        self.state = State::Closing;
        let events = self.pending.len();
        tracing::info!(events, "dialog app reached for the call's last events");
        let reason = std::mem::take(&mut self.last_reason);
        if let Some(sink) = self.sink.as_mut() {
            for text in self.pending.drain(..) {
                let _ = sink.write(WsMessage::Text(text.into()));
            }
            close_normally(sink, &reason);
        }
    }

    /// Schedules the next reconnect attempt, or gives up when the budget is spent.
    fn reconnect(&mut self, detail: DialogFailure, ctx: &mut Context<Self>) {
        if matches!(self.state, State::Closing | State::LastDial) {
            return;
        }
        self.state = State::Dialing;
        let Some(attempt) = self.redials.next_attempt(Instant::now()) else {
            self.given_up = true;
            self.span
                .in_scope(|| tracing::warn!(%detail, "dialog app lost; giving up"));
            self.parent.do_send(DialogEvent::Lost(detail));
            return;
        };
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        let delay = self
            .settings
            .reconnect_initial
            .saturating_mul(factor)
            .min(self.settings.reconnect_max);
        self.span.in_scope(|| tracing::info!(attempt, delay_ms = delay.as_millis() as u64, %detail, "dialog app lost; reconnecting"));
        self.parent.do_send(DialogEvent::Reconnecting { attempt });
        ctx.run_later(delay, move |act, ctx| act.dial(attempt, ctx));
    }

    /// The connection broke: let go of it and reconnect. `close`: a close frame to send first,
    /// best effort.
    fn lost(&mut self, detail: DialogFailure, close: Option<CloseCode>, ctx: &mut Context<Self>) {
        if self.state != State::Open {
            return;
        }
        self.release(close, ctx);
        self.reconnect(detail, ctx);
    }

    /// Lets go of the connection, so its socket is closed. Dropping the `SinkWrite` is not
    /// enough: the write half lives on in the future it spawned (and with it the socket, half
    /// open, until the call ends), so that future is cancelled too: at once, or after
    /// `CLOSE_GRACE` when a close frame is to be flushed first.
    fn release(&mut self, close: Option<CloseCode>, ctx: &mut Context<Self>) {
        if let Some(reader) = self.reader.take() {
            ctx.cancel_future(reader);
        }
        let (Some(mut sink), Some(writer)) = (self.sink.take(), self.writer.take()) else {
            return;
        };
        // A close frame is only asked for on a read error, never from the writer's callbacks.
        let flushing = close.is_some_and(|code| {
            sink.write(WsMessage::Close(Some(CloseReason {
                code,
                description: None,
            })))
            .is_ok()
        });
        if !flushing {
            ctx.cancel_future(writer);
            return;
        }
        if let Some(older) = self.retiring.replace(writer) {
            ctx.cancel_future(older);
        }
        ctx.run_later(CLOSE_GRACE, move |act, ctx| {
            if act.retiring == Some(writer) {
                act.retiring = None;
                ctx.cancel_future(writer);
            }
        });
    }

    fn write(&mut self, text: String) {
        match self.sink.as_mut() {
            Some(sink) if self.state == State::Open => {
                if sink.write(WsMessage::Text(text.into())).is_err() {
                    tracing::debug!("dialog write after close");
                }
            }
            _ => self.buffer(text),
        }
    }

    fn buffer(&mut self, text: String) {
        if self.pending.len() >= self.settings.event_buffer.max(1) {
            self.pending.pop_front();
            self.dropped += 1;
            crate::metrics::metrics().limit_hit(crate::metrics::Limit::DialogEventBuffer);
            if self.dropped == 1 || self.dropped.is_power_of_two() {
                self.span.in_scope(|| {
                    tracing::warn!(
                        dropped = self.dropped,
                        "dialog event buffer full; oldest events dropped"
                    )
                });
            }
        }
        self.pending.push_back(text);
    }

    fn on_text(&mut self, text: &str) {
        // Once closing, the call has ended (or is ending): a command has nothing to act on.
        if self.state != State::Open {
            return;
        }
        match parse_command(text, self.call_id.as_str()) {
            Ok(cmd) => {
                trace_msg!(self.call_id, "dialog" => "call", "DialogEvent::Command", "{}", cmd.kind());
                self.parent.do_send(DialogEvent::Command(cmd));
            }
            Err(e @ (CommandError::Unknown(_) | CommandError::OtherCall(_))) => {
                self.span
                    .in_scope(|| tracing::debug!(error = %e, "dialog message ignored"));
            }
            Err(e) => self
                .span
                .in_scope(|| tracing::warn!(error = %e, "dialog message ignored")),
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

/// A fragmented message being put together (RFC 6455 §5.4).
#[derive(Debug, Default)]
struct Fragments {
    /// The message so far; `None` between messages.
    so_far: Option<bytes::BytesMut>,
}

impl Fragments {
    /// Takes one fragment; the whole message once its last fragment came.
    fn push(&mut self, item: actix_http::ws::Item) -> Option<bytes::Bytes> {
        use actix_http::ws::Item;
        match item {
            Item::FirstText(b) | Item::FirstBinary(b) => {
                self.so_far = Some(bytes::BytesMut::from(&b[..]));
                None
            }
            Item::Continue(b) => {
                if let Some(m) = self.so_far.as_mut() {
                    m.extend_from_slice(&b);
                }
                None
            }
            Item::Last(b) => {
                let mut m = self.so_far.take()?;
                m.extend_from_slice(&b);
                Some(m.freeze())
            }
        }
    }
}

impl StreamHandler<Result<Frame, ReadError>> for DialogClient {
    fn handle(&mut self, item: Result<Frame, ReadError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        match item {
            Ok(Frame::Text(bytes)) | Ok(Frame::Binary(bytes)) => {
                match std::str::from_utf8(&bytes) {
                    Ok(text) => self.on_text(text),
                    Err(_) => self
                        .span
                        .in_scope(|| tracing::warn!("dialog frame is not UTF-8; ignored")),
                }
            }
            Ok(Frame::Ping(p)) => {
                if let Some(sink) = self.sink.as_mut() {
                    let _ = sink.write(WsMessage::Pong(p));
                }
            }
            // A message sent in fragments is put together (the codec has already limited their
            // total to `dialog.max_message_bytes`) and read as one.
            Ok(Frame::Continuation(item)) => {
                if let Some(whole) = self.fragments.push(item) {
                    match std::str::from_utf8(&whole) {
                        Ok(text) => self.on_text(text),
                        Err(_) => self.span.in_scope(|| {
                            tracing::warn!("fragmented dialog message is not UTF-8; ignored")
                        }),
                    }
                }
            }
            Ok(Frame::Pong(_)) => {}
            Ok(Frame::Close(reason)) => {
                let code: u16 = reason.as_ref().map_or(1005, |r| r.code.into());
                if self.state != State::Open {
                    return;
                }
                if matches!(code, 1000 | 1001) {
                    self.span
                        .in_scope(|| tracing::info!(code, "dialog app closed the connection"));
                    self.state = State::Closing;
                    // RFC 6455 §5.5.1: a close frame is answered with one, echoing its code;
                    // then the socket is closed. Nothing more is sent: the events of the call's
                    // end stay unsent, the app having left. The actor stops once the answer is
                    // flushed (`WriteHandler::finished`), or when the call's `Close` comes.
                    if let Some(sink) = self.sink.as_mut() {
                        let _ = sink.write(WsMessage::Close(Some(CloseReason {
                            code: CloseCode::from(code),
                            description: None,
                        })));
                        sink.close();
                    }
                    self.parent.do_send(DialogEvent::Closed { code });
                } else {
                    self.lost(DialogFailure::Closed(code), None, ctx);
                }
            }
            Err(ReadError::TooBig(e)) => {
                if self.state == State::Open {
                    self.span.in_scope(|| {
                        tracing::warn!(
                            declared = e.declared,
                            limit = e.limit,
                            "dialog message too big; closing the connection"
                        )
                    });
                }
                self.lost(DialogFailure::TooBig(e), Some(CloseCode::Size), ctx);
            }
            Err(ReadError::Protocol(e)) => self.lost(DialogFailure::Protocol(e), None, ctx),
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // The TCP connection ended without a close frame.
        self.lost(DialogFailure::Ended, None, ctx);
    }
}

impl actix::io::WriteHandler<awc::error::WsProtocolError> for DialogClient {
    fn error(&mut self, err: awc::error::WsProtocolError, ctx: &mut Self::Context) -> Running {
        self.lost(DialogFailure::Write(err), None, ctx);
        Running::Continue
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        if self.state == State::Closing {
            self.stopped_cleanly = true;
            ctx.stop();
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
