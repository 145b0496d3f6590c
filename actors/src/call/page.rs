//! The page's data channel, from the call's side: the queue in front of it and the task that
//! sends on it.
//!
//! A dialog call's browser page may open one data channel to show a transcript; what goes on it,
//! and its JSON, is `voicegate_core::page`. The page is a view, never the dialog app: nothing
//! here may slow the call down or grow without bound. So every stage is bounded and drops what
//! does not fit ([`PAGE_BACKLOG`], [`PAGE_MAX_UNACKED_BYTES`]), each drop is counted in
//! `voicegate_limit_hits_total` and logged at debug, and the dialog app still gets every event.
//! The sending task ends when the channel closes or the call drops its [`Page`].
//!
//! The same task reads what the page sends (`call.send`): each message goes through the call's
//! [`PageInbox`] (size, rate, JSON only; a message that fails is dropped, counted under its
//! limit and logged at debug) and its `data` to the call as [`PageSaid`], for the dialog app.

use crate::metrics::{Limit, metrics};
use actix::prelude::*;
use std::collections::VecDeque;
use std::sync::Arc;
use tracing::Instrument;
use voicegate_core::page::{PageInbox, PageInputError, PageMessage};
use voicegate_media::{DataChannel, DataChannelEvent, DataChannelState};

/// Most messages queued for the page's data channel, at each stage: before the browser opens it
/// (the oldest go), on their way to the sending task (the newest go), and held by it until the
/// channel reports itself open (the oldest go).
const PAGE_BACKLOG: usize = 64;
/// Most bytes sent on the page's data channel and not yet acknowledged by the browser. A page
/// that keeps up acknowledges within a round trip; one that stopped reading would otherwise
/// have SCTP buffer everything for the rest of the call, so past this its messages are dropped.
const PAGE_MAX_UNACKED_BYTES: usize = 64 * 1024;

/// The page sent the dialog app this `data` (`call.send`), within its limits.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct PageSaid(pub(super) serde_json::Value);

/// The page's data channel, from the call's side.
pub(super) enum Page {
    /// Not a dialog call, or the call is ending.
    Off,
    /// The browser has not opened it (yet): the latest messages wait.
    Waiting(VecDeque<String>),
    /// Open: one task sends, in order.
    Open(tokio::sync::mpsc::Sender<String>),
}

impl Page {
    /// A dialog call's page, before the browser opened its channel.
    pub(super) fn waiting() -> Self {
        Page::Waiting(VecDeque::new())
    }

    /// Queues `message` for the page. Never waits: the call must not slow down for its page.
    pub(super) fn send(&mut self, message: PageMessage<'_>, span: &tracing::Span) {
        self.send_text(message.to_json(), span);
    }

    /// Queues a message's JSON text for the page, as [`Page::send`].
    pub(super) fn send_text(&mut self, text: String, span: &tracing::Span) {
        match self {
            Page::Off => {}
            Page::Waiting(backlog) => {
                // Not counted as a limit hit: a client without the page (an API client, a
                // phone bridge) never opens the channel, and only the latest messages matter
                // to a page that opens it late.
                if backlog.len() == PAGE_BACKLOG {
                    backlog.pop_front();
                }
                backlog.push_back(text);
            }
            Page::Open(tx) => {
                if let Err(tokio::sync::mpsc::error::TrySendError::Full(_)) = tx.try_send(text) {
                    span.in_scope(|| page_message_dropped("the page channel's queue is full"));
                }
            }
        }
    }

    /// The browser opened a data channel: the first one becomes the page's, and what waited is
    /// sent on it in order; what the page sends on it goes through `inbox` to `to_call`. Any
    /// other is closed, so what the page sends on it does not pile up in the connection (which
    /// holds up to 256 events for a channel nobody reads).
    pub(super) fn open(
        &mut self,
        channel: Arc<dyn DataChannel>,
        inbox: PageInbox,
        to_call: Recipient<PageSaid>,
        span: &tracing::Span,
    ) {
        let Page::Waiting(backlog) = std::mem::replace(self, Page::Off) else {
            actix::spawn(async move {
                let _ = channel.close().await;
            });
            return;
        };
        // The backlog (at most PAGE_BACKLOG) fits the channel.
        let (tx, rx) = tokio::sync::mpsc::channel::<String>(PAGE_BACKLOG);
        for text in backlog {
            let _ = tx.try_send(text);
        }
        *self = Page::Open(tx);
        actix::spawn(send_in_order(channel, rx, inbox, to_call).instrument(span.clone()));
    }
}

/// The page channel's one sender, so messages keep their order. It holds them until the channel
/// is open, and reads what the page sends (the connection's driver hands a channel's incoming
/// messages over through a bounded queue, and this loop takes them as fast as they come: each
/// is checked by `inbox` at once and passed on or dropped, so the page cannot pile them up
/// here). Ends when the channel closes or the call drops its sender.
async fn send_in_order(
    channel: Arc<dyn DataChannel>,
    mut rx: tokio::sync::mpsc::Receiver<String>,
    mut inbox: PageInbox,
    to_call: Recipient<PageSaid>,
) {
    let mut open = matches!(channel.ready_state().await, Ok(DataChannelState::Open));
    let mut held = VecDeque::new();
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(text) if open => send_on_page_channel(&*channel, &text).await,
                Some(text) => {
                    if held.len() == PAGE_BACKLOG {
                        held.pop_front();
                        page_message_dropped("the page has not opened its channel");
                    }
                    held.push_back(text);
                }
                None => break,
            },
            ev = channel.poll() => match ev {
                Some(DataChannelEvent::OnOpen) => {
                    open = true;
                    for text in held.drain(..) {
                        send_on_page_channel(&*channel, &text).await;
                    }
                }
                Some(DataChannelEvent::OnClose) | None => break,
                Some(DataChannelEvent::OnMessage(msg)) => {
                    let text = if msg.is_string {
                        std::str::from_utf8(&msg.data).ok()
                    } else {
                        None
                    };
                    match inbox.accept(text, msg.data.len(), std::time::Instant::now()) {
                        Ok(data) => to_call.do_send(PageSaid(data)),
                        Err(e) => page_input_dropped(&e),
                    }
                }
                Some(_) => {}
            },
        }
    }
}

/// Sends `text` on the open page channel, unless the browser has not acknowledged
/// [`PAGE_MAX_UNACKED_BYTES`] already.
async fn send_on_page_channel(channel: &dyn DataChannel, text: &str) {
    if channel.outstanding_bytes().await.unwrap_or(0) > PAGE_MAX_UNACKED_BYTES {
        return page_message_dropped("the page does not acknowledge what it was sent");
    }
    if let Err(e) = channel.send_text(text).await {
        tracing::debug!(error = %e, "page channel send failed");
    }
}

/// A message from the page was dropped for `why`: counted under its limit, and logged at debug
/// (the page is the caller's browser; what it sends is its business until it breaks a limit).
fn page_input_dropped(why: &PageInputError) {
    metrics().limit_hit(match why {
        PageInputError::TooLarge(..) => Limit::ClientMessageBytes,
        PageInputError::TooFast => Limit::ClientMessageRate,
        PageInputError::NotJson(_) => Limit::ClientMessageNotJson,
    });
    tracing::debug!(why = %why, "a message from the page was dropped");
}

/// A message for the page was dropped (`why`): counted, and logged at debug (the page is a
/// transcript view; the dialog app still gets every event).
fn page_message_dropped(why: &'static str) {
    metrics().limit_hit(Limit::PageQueue);
    tracing::debug!(why, "a message for the page's data channel was dropped");
}
