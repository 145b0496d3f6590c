//! How a `DialogClient` reaches the app: dialing, the last dial at the call's end,
//! reconnecting with backoff, letting a lost socket go, and writing or holding events.

use super::*;

impl DialogClient {
    pub(super) fn dial(&mut self, attempt: u32, ctx: &mut Context<Self>) {
        if matches!(self.state, State::Closing | State::LastDial) {
            return;
        }
        self.state = State::Dialing;
        self.connect(attempt, ctx);
    }

    /// Dials the app; the outcome is handled by the state the client is in when it comes.
    /// `attempt` only names the dial in logs (0: the last dial).
    pub(super) fn connect(&mut self, attempt: u32, ctx: &mut Context<Self>) {
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
    pub(super) fn attach(
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
    pub(super) fn last_dial(&mut self, reason: String, ctx: &mut Context<Self>) {
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
    pub(super) fn deliver_and_close(&mut self) {
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
    pub(super) fn reconnect(&mut self, detail: DialogFailure, ctx: &mut Context<Self>) {
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
    pub(super) fn lost(
        &mut self,
        detail: DialogFailure,
        close: Option<CloseCode>,
        ctx: &mut Context<Self>,
    ) {
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
    pub(super) fn release(&mut self, close: Option<CloseCode>, ctx: &mut Context<Self>) {
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

    pub(super) fn write(&mut self, text: String) {
        match self.sink.as_mut() {
            Some(sink) if self.state == State::Open => {
                if sink.write(WsMessage::Text(text.into())).is_err() {
                    tracing::debug!("dialog write after close");
                }
            }
            _ => self.buffer(text),
        }
    }

    pub(super) fn buffer(&mut self, text: String) {
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

    pub(super) fn on_text(&mut self, text: &str) {
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
