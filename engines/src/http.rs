//! The HTTP client the request-per-utterance engines share: one connection pool per worker (and
//! TLS configuration).
//!
//! A vendor's speech API is a few round trips away, and a new connection to it costs a TCP and
//! a TLS handshake (two to three round trips) before the first byte of the request moves. The
//! OpenAI-compatible recognizer sends a request per utterance and the synthesizer one per
//! sentence, so each worker keeps the connections it opened and reuses them: after a call's
//! first request, the next ones (that call's or another call's on the same worker) go out on a
//! warm connection.
//!
//! awc's client is not `Send`: the pool is per thread, and the engines run on the worker of the
//! call they serve. Each request sets its own deadline (the engines' `timeout` settings differ),
//! so the client has none of its own. How the pool treats a connection:
//! - It is reused only after its response was read to the end; a request dropped mid-answer (a
//!   barge-in, an utterance past its deadline) closes its connection.
//! - An idle connection the server has closed (many servers close after a few idle seconds) is
//!   seen as closed when it is next taken and skipped, so the request opens a new one.
//! - Idle connections are kept [`KEEP_ALIVE`] and none is used past [`LIFETIME`], so a server's
//!   address change (DNS) is followed within that.
//! - A server can close an idle connection just as a request goes out on it (the request and
//!   the server's close cross on the wire). [`send`] sends such a request once more, on a new
//!   connection, when its connection closed before any answer came.
//! - HTTP/1.1 only (the TLS configuration, [`crate::tls`], offers no other), so concurrent requests
//!   each have a connection of their own. Over HTTP/2 awc would multiplex every call's requests on
//!   the worker onto one connection: past the server's limit of concurrent streams they would queue
//!   behind other calls' syntheses (which last seconds), and they would share one flow-control
//!   window. What is saved is the handshakes, which keeping HTTP/1.1 connections saves as well.
//! - There is no bound on connections in the pool: `calls.max` bounds the calls, and each call
//!   has few requests in flight (one transcription, at most `tts.prefetch_segments` syntheses).
//!   awc's default of 100 per worker would queue the requests past it behind the others.

use crate::tls::ClientTls;
use awc::error::{ConnectError, SendRequestError};
use awc::{ClientRequest, ClientResponse};
use bytes::Bytes;
use rustls::ClientConfig;
use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

/// How long an idle connection is kept for the next request.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The longest a connection is used, from its opening.
pub const LIFETIME: Duration = Duration::from_secs(75);

thread_local! {
    /// The worker's clients, one per TLS configuration (a process has one: `vendor_tls`).
    static CLIENTS: RefCell<Vec<(Arc<ClientConfig>, awc::Client)>> = const { RefCell::new(Vec::new()) };
}

/// This worker's client for connections that trust `tls` (a handle: clones share the pool).
/// Must be called on an actix runtime's thread; each request must set its own `timeout`.
pub fn client(tls: &ClientTls) -> awc::Client {
    let config = tls.config();
    CLIENTS.with_borrow_mut(|clients| {
        if let Some((_, client)) = clients.iter().find(|(c, _)| Arc::ptr_eq(c, &config)) {
            return client.clone();
        }
        let client = awc::Client::builder()
            .connector(
                awc::Connector::new()
                    .rustls_0_23(config.clone())
                    .limit(0)
                    .conn_keep_alive(KEEP_ALIVE)
                    .conn_lifetime(LIFETIME),
            )
            .disable_timeout()
            .finish();
        clients.push((config, client.clone()));
        client
    })
}

/// Sends `request` with `body`; if its connection closed before any answer came (a pooled
/// connection the server was closing), once more on a new one. A request that got an answer,
/// even an error status, or ran past its `timeout`, is not sent again.
pub async fn send(request: ClientRequest, body: Bytes) -> Result<ClientResponse, SendRequestError> {
    let request = request.freeze().map_err(SendRequestError::from)?;
    match request.send_body(body.clone()).await {
        Err(e) if closed_unanswered(&e) => {
            tracing::debug!(error = %e, "the connection closed before an answer; sending again");
            request.send_body(body).await
        }
        other => other,
    }
}

/// [`send`] with `body` as JSON (`Content-Type: application/json`). The bodies sent are plain
/// structs of strings and numbers, which always serialize. The body is serialized now, so the
/// future borrows nothing.
pub fn send_json<T: serde::Serialize>(
    request: ClientRequest,
    body: &T,
) -> impl std::future::Future<Output = Result<ClientResponse, SendRequestError>> + 'static {
    let body = serde_json::to_vec(body).expect("a request body of strings and numbers");
    let request = request.insert_header(("Content-Type", "application/json"));
    send(request, body.into())
}

/// The connection ended before a response head: closed (`Disconnected`), or broken while the
/// request was written or the head awaited.
fn closed_unanswered(e: &SendRequestError) -> bool {
    matches!(
        e,
        SendRequestError::Connect(ConnectError::Disconnected)
            | SendRequestError::Send(_)
            | SendRequestError::Response(actix_http::error::ParseError::Io(_))
    )
}
