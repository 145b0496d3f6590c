//! Request handlers: validate, convert to domain types, ask the supervisor, answer.

use super::HttpState;
use super::api::{OfferRequest, OfferResponse, SignalQuery};
use super::error::ApiError;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use voicegate_actors::call::{CallMode, ClientInfo, EndReason, Offer};
use voicegate_actors::supervisor::{HangUp, PlaceCall};
use voicegate_core::call_id::CallId;
use voicegate_core::dialog::DialParams;
use voicegate_core::sdp;

/// `GET /health`
pub async fn health() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("ok")
}

/// `GET /ready`: 200 while taking calls, 503 while draining.
pub async fn ready(state: web::Data<HttpState>) -> HttpResponse {
    if state.ready.load(std::sync::atomic::Ordering::Relaxed) {
        HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .body("ready")
    } else {
        HttpResponse::ServiceUnavailable()
            .content_type("text/plain; charset=utf-8")
            .body("draining")
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(state: web::Data<HttpState>) -> HttpResponse {
    let media = state.plane.mux();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(voicegate_actors::metrics::metrics().render(Some(media)))
}

/// `OPTIONS` on the signaling endpoints (CORS preflight).
pub async fn preflight() -> HttpResponse {
    HttpResponse::NoContent().finish()
}

/// Any other method on the signaling endpoints.
pub async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed)
}

/// Any unknown path.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

/// `POST /webrtc/v1/offer[?mode=echo]`
pub async fn offer(
    req: HttpRequest,
    query: web::Query<SignalQuery>,
    body: web::Payload,
    state: web::Data<HttpState>,
) -> Result<HttpResponse, ApiError> {
    if !state.ready.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(ApiError::Unavailable("server is shutting down".into()));
    }
    let bytes = read_body(&req, body, state.max_body_bytes).await?;
    let parsed: OfferRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("body is not valid JSON for an offer: {e}")))?;
    let offer = validate_offer(parsed, query.mode.as_deref(), client_info(&req))?;

    let answer = state
        .supervisor
        .send(PlaceCall { offer })
        .await
        .map_err(|e| ApiError::Internal(format!("supervisor unreachable: {e}")))?
        .map_err(|e| match e {
            voicegate_actors::supervisor::PlaceCallError::Full => {
                ApiError::Full(state.retry_after_s)
            }
            e => e.into(),
        })?;
    Ok(HttpResponse::Ok().json(OfferResponse {
        sdp: &answer.sdp,
        kind: "answer",
        call_id: answer.call_id.as_str(),
    }))
}

/// `POST /webrtc/v1/hangup?call_id=<id>`: always 204 for a well-formed request; an unknown or
/// already-ended call is not an error (the original's contract).
pub async fn hangup(
    query: web::Query<SignalQuery>,
    state: web::Data<HttpState>,
) -> Result<HttpResponse, ApiError> {
    let raw = query.call_id.as_deref().map(str::trim).unwrap_or("");
    if raw.is_empty() {
        return Err(ApiError::BadRequest(
            "missing call_id query parameter".into(),
        ));
    }
    // An id we could never have issued names no call.
    if let Some(call_id) = CallId::parse(raw) {
        state
            .supervisor
            .send(HangUp {
                call_id,
                reason: EndReason::ClientHangup,
            })
            .await
            .map_err(|e| ApiError::Internal(format!("supervisor unreachable: {e}")))?;
    }
    Ok(HttpResponse::NoContent().finish())
}

/// Reads the body, refusing more than `limit` bytes (before reading, when Content-Length says
/// so).
async fn read_body(
    req: &HttpRequest,
    mut body: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, ApiError> {
    let too_large =
        || ApiError::BadRequest(format!("request body too large (limit {limit} bytes)"));
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut buf = web::BytesMut::with_capacity(declared.unwrap_or(8192).min(limit));
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("could not read body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// Checks the offer's fields and SDP and builds the domain [`Offer`].
fn validate_offer(
    mut req: OfferRequest,
    mode: Option<&str>,
    client: ClientInfo,
) -> Result<Offer, ApiError> {
    let sdp = req.sdp.take().unwrap_or_default();
    if sdp.trim().is_empty() {
        return Err(ApiError::BadRequest(
            "sdp is missing or empty: expected {\"sdp\": \"v=0...\", \"type\": \"offer\"}".into(),
        ));
    }
    match req.kind.as_deref() {
        Some("offer") => {}
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "type must be \"offer\", got {other:?}"
            )));
        }
        None => {
            return Err(ApiError::BadRequest(
                "type is missing: expected \"offer\"".into(),
            ));
        }
    }
    let mode = match mode.map(str::trim) {
        None | Some("") => CallMode::Dialog,
        Some("echo") => CallMode::Echo,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unknown mode {other:?}: use mode=echo, or leave it out for a call with the dialog app"
            )));
        }
    };
    let summary = sdp::check_offer(&sdp).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    // Checked now, before any media is set up.
    let dialog = DialParams::from_offer(
        req.payload.as_deref().map(|p| p.get()),
        req.api_key.as_deref(),
        req.api_secret.as_deref(),
        req.agent_id.as_deref(),
    )
    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(Offer {
        sdp,
        summary,
        mode,
        client,
        dialog,
    })
}

/// Who is calling, for logs and (later) the dialog app: the raw `X-Forwarded-For` if present,
/// else the peer address, plus the user agent.
fn client_info(req: &HttpRequest) -> ClientInfo {
    let forwarded = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let addr = forwarded
        .or_else(|| req.peer_addr().map(|a| a.to_string()))
        .unwrap_or_default();
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    ClientInfo { addr, user_agent }
}
