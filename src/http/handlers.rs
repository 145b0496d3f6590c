//! Request handlers: validate, convert to domain types, ask the supervisor, answer.

use super::HttpState;
use super::api::{OfferRequest, OfferResponse, SignalQuery};
use super::auth;
use super::error::ApiError;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use std::time::Instant;
use voicegate_actors::call::{CallMode, ClientInfo, EndReason, Offer, PatchIce};
use voicegate_actors::metrics::{Limit, metrics as counters};
use voicegate_actors::supervisor::{HangUp, Patch, PlaceCall};
use voicegate_core::admission::{self, IpNet, SourceKey};
use voicegate_core::call_id::CallId;
use voicegate_core::dialog::DialParams;
use voicegate_core::json_keys::fold_keys;
use voicegate_core::sdp;
use voicegate_core::sdpfrag::{FragError, IceFragment};
use voicegate_core::token::{Grant, TokenMode};
use voicegate_core::untrusted::shown;
use voicegate_media::{IcePatch, PatchError};

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
        .body(voicegate_actors::metrics::metrics().render_for_node(Some(media), &state.node_id))
}

/// `OPTIONS` on the signaling endpoints (CORS preflight).
pub async fn preflight() -> HttpResponse {
    HttpResponse::NoContent().finish()
}

/// What `/webrtc/v1/offer` and `/webrtc/v1/hangup` allow.
const SIGNAL_ALLOW: &str = "POST, OPTIONS";

/// What a call's resource URL allows.
const CALL_ALLOW: &str = "PATCH, DELETE, OPTIONS";

/// Any other method on `/webrtc/v1/offer` or `/webrtc/v1/hangup`.
pub async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed(SIGNAL_ALLOW))
}

/// Any other method on a call's resource URL.
pub async fn call_method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed(CALL_ALLOW))
}

/// Any unknown path.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

/// `POST /webrtc/v1/offer[?mode=echo]`, with the offer as JSON (`{"type": "offer", "sdp": ...}`,
/// answered `200` with JSON) or as the bare SDP (`Content-Type: application/sdp`, answered `201
/// Created` with the answer SDP, as a WHIP endpoint does, RFC 9725). Either reply names the
/// call's resource URL in `Location`.
pub async fn offer(
    req: HttpRequest,
    query: web::Query<SignalQuery>,
    body: web::Payload,
    state: web::Data<HttpState>,
) -> Result<HttpResponse, ApiError> {
    if !state.ready.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(ApiError::Unavailable("server is shutting down".into()));
    }
    let client = client_info(&req, &state.trusted_proxies);
    // Cheap refusals first, before a byte of the body is read.
    if let Some(ip) = client.ip {
        let source = SourceKey::of(ip);
        let per_source = || state.offer_rate.lock().unwrap_or_else(|p| p.into_inner());
        // The source's own limit first, without taking from it yet: one noisy source cannot
        // spend its /48's allowance, and a source its /48 refuses is not tracked at all (a
        // holder of 65 536 /64s cannot fill the per-source table past the /48's limit).
        let mut verdict = per_source().would_allow(source, Instant::now());
        if verdict.is_ok()
            && let Some(prefix) = source.prefix()
        {
            let wider = state
                .prefix_offer_rate
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .check(prefix, Instant::now());
            if let Err(wait) = wider {
                counters().limit_hit(Limit::OffersPerPrefix);
                return Err(ApiError::TooManyRequests {
                    reason: "too many offers from this network (admission.offers_per_prefix_per_s)",
                    retry_after_s: wait.as_secs_f64().ceil().max(1.0) as u32,
                });
            }
        }
        if verdict.is_ok() {
            verdict = per_source().check(source, Instant::now());
        }
        if let Err(wait) = verdict {
            counters().limit_hit(Limit::OffersPerIp);
            return Err(ApiError::TooManyRequests {
                reason: "too many offers from this address (admission.offers_per_ip_per_s)",
                retry_after_s: wait.as_secs_f64().ceil().max(1.0) as u32,
            });
        }
    }
    // A call token, when the server requires one: before the body, so a caller without one
    // costs a header parse.
    let grant = match &state.auth {
        Some(auth) => Some(auth.verify(&req)?),
        None => None,
    };
    let format = offer_format(&req)?;
    let bytes = read_body_in_time(&req, body, &state).await?;
    let body = match format {
        OfferFormat::Json => json_offer(&bytes, state.max_payload_bytes)?,
        OfferFormat::Sdp => sdp_offer(&bytes)?,
    };
    let mut offer = validate_offer(
        body,
        query.mode.as_deref(),
        client,
        state.max_remote_candidates,
    )?;
    let mut spent = None;
    if let (Some(auth), Some(grant)) = (&state.auth, grant) {
        apply_grant(
            &mut offer,
            &grant,
            query.mode.is_some(),
            state.max_payload_bytes,
        )?;
        // Spent last: a token is not burnt by an offer refused for its body.
        auth.redeem(&grant)?;
        spent = Some((auth, grant));
    }
    // The server's own bound on a call's length; a token's may only shorten it.
    offer.max_duration = match (offer.max_duration, state.max_call_duration) {
        (Some(token), Some(server)) => Some(token.min(server)),
        (token, server) => token.or(server),
    };

    let placed = state
        .supervisor
        .send(PlaceCall { offer })
        .await
        .map_err(|e| ApiError::Internal(format!("supervisor unreachable: {e}")))
        .and_then(|placed| {
            placed.map_err(|e| match e {
                voicegate_actors::supervisor::PlaceCallError::Full => {
                    ApiError::Full(state.retry_after_s)
                }
                e => e.into(),
            })
        });
    let answer = match placed {
        Ok(answer) => answer,
        Err(e) => {
            // No call: the token was not used up.
            if let Some((auth, grant)) = spent {
                auth.refund(&grant);
            }
            return Err(e);
        }
    };
    let location = (
        header::LOCATION,
        super::offer_location(&req, &state.trusted_proxies, &answer.call_id),
    );
    // The ICE session's tag, for `If-Match` on a later PATCH (RFC 9725 §4.3.1).
    let etag = (header::ETAG, ice_etag(&answer.sdp));
    Ok(match format {
        OfferFormat::Json => HttpResponse::Ok()
            .insert_header(location)
            .insert_header(etag)
            .json(OfferResponse {
                sdp: &answer.sdp,
                kind: "answer",
                call_id: answer.call_id.as_str(),
            }),
        OfferFormat::Sdp => HttpResponse::Created()
            .insert_header(location)
            .insert_header(etag)
            .content_type(SDP)
            .body(answer.sdp),
    })
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
        ours(&state, &call_id)?;
        hang_up(&state, call_id).await?;
    }
    Ok(HttpResponse::NoContent().finish())
}

/// `DELETE /webrtc/v1/calls/<id>`: ends the call as `POST /webrtc/v1/hangup` does
/// (`client-hangup`), and like it always `204` for a call that is unknown or already ended, so
/// a repeated DELETE is harmless. Unlike the hangup's query, the id here comes from a `Location`
/// we issued, so one that could never be a call id is the client's bug: `400`. No call token is
/// asked for: knowing the URL (128 random bits) is the capability.
pub async fn end_call(
    path: web::Path<String>,
    state: web::Data<HttpState>,
) -> Result<HttpResponse, ApiError> {
    let call_id = resource_call_id(&path.into_inner())?;
    ours(&state, &call_id)?;
    hang_up(&state, call_id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The call id in a call resource's URL. It comes from a `Location` we issued, so one that could
/// never be a call id is the client's bug: `400`.
fn resource_call_id(raw: &str) -> Result<CallId, ApiError> {
    CallId::parse(raw).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "{:?} is not a call id: use the Location of the offer's reply",
            shown(raw)
        ))
    })
}

/// `Ok` when `call_id` names this node (or no node); `421` when it names another, so a router
/// that sends a call's requests to the wrong node shows up at once instead of a silent `204`.
fn ours(state: &HttpState, call_id: &CallId) -> Result<(), ApiError> {
    match call_id.node(&state.id_prefix) {
        Some(owner) if owner != &*state.node_id => Err(ApiError::Misdirected {
            call_id: call_id.to_string(),
            owner: owner.to_owned(),
            this: state.node_id.to_string(),
        }),
        _ => Ok(()),
    }
}

/// The media type of a `PATCH` body (RFC 8840).
const SDPFRAG: &str = "application/trickle-ice-sdpfrag";

/// `PATCH /webrtc/v1/calls/<id>` with an `application/trickle-ice-sdpfrag` body (RFC 9725
/// §4.3): candidates the caller trickles (`204`), or an ICE restart when the fragment carries
/// new ICE credentials (`200` with our new credentials and candidates as a fragment). Either
/// reply carries the ICE session's `ETag`; an `If-Match` naming another session gets `412`.
/// The call, its dialog connection and its playout carry on through a restart. Like DELETE, it
/// needs no call token: the URL is the capability.
pub async fn patch_call(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
    state: web::Data<HttpState>,
) -> Result<HttpResponse, ApiError> {
    let call_id = resource_call_id(&path.into_inner())?;
    ours(&state, &call_id)?;
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case(SDPFRAG)
    {
        return Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type must be {SDPFRAG}, got {}",
            if ct.is_empty() {
                "none".to_owned()
            } else {
                format!("{:?}", shown(ct))
            }
        )));
    }
    let if_match = match req.headers().get(header::IF_MATCH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::BadRequest("If-Match is not ASCII".into()))?
                .to_owned(),
        ),
    };
    let bytes = read_body_in_time(&req, body, &state).await?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| ApiError::BadRequest("the fragment is not UTF-8".into()))?;
    let frag = IceFragment::parse(text, state.max_remote_candidates).map_err(|e| {
        if matches!(e, FragError::TooManyCandidates { .. }) {
            counters().limit_hit(Limit::RemoteCandidates);
        }
        ApiError::BadRequest(e.to_string())
    })?;
    let reply = state
        .supervisor
        .send(Patch {
            call_id,
            patch: PatchIce { frag, if_match },
        })
        .await
        .map_err(|e| ApiError::Internal(format!("supervisor unreachable: {e}")))?
        .ok_or(ApiError::NoSuchCall)?
        .map_err(|e| match e {
            PatchError::PreconditionFailed { current } => ApiError::PreconditionFailed(current),
            e @ PatchError::TooManyCandidates { .. } => {
                counters().limit_hit(Limit::RemoteCandidates);
                ApiError::BadRequest(e.to_string())
            }
            PatchError::RestartRefused => ApiError::Forbidden(
                "this call may not restart ICE again (calls.max_ice_restarts)".into(),
            ),
            PatchError::Peer(e) if e.is_negotiation() => {
                ApiError::BadRequest(format!("the fragment could not be applied: {e}"))
            }
            PatchError::Peer(e) => ApiError::Internal(e.to_string()),
        })?;
    let etag = (header::ETAG, reply.etag);
    Ok(match reply.outcome {
        IcePatch::Trickled => HttpResponse::NoContent().insert_header(etag).finish(),
        IcePatch::Restarted(ours) => HttpResponse::Ok()
            .insert_header(etag)
            .content_type(SDPFRAG)
            .body(ours.to_sdpfrag()),
    })
}

/// The `ETag` of the ICE session an answer starts: its ufrag, which each restart changes.
fn ice_etag(answer_sdp: &str) -> String {
    format!(
        "\"{}\"",
        IceFragment::from_sdp(answer_sdp).ufrag.unwrap_or_default()
    )
}

/// Asks the supervisor to end `call_id` as a client hangup; resolves once the call is released
/// (at once when there is no such call).
async fn hang_up(state: &HttpState, call_id: CallId) -> Result<(), ApiError> {
    state
        .supervisor
        .send(HangUp {
            call_id,
            reason: EndReason::ClientHangup,
        })
        .await
        .map_err(|e| ApiError::Internal(format!("supervisor unreachable: {e}")))
}

/// Reads the body within `http.body_timeout_ms` (`408`, counted as a limit hit) and
/// `http.max_body_bytes` (`400`).
async fn read_body_in_time(
    req: &HttpRequest,
    body: web::Payload,
    state: &HttpState,
) -> Result<web::BytesMut, ApiError> {
    tokio::time::timeout(
        state.body_timeout,
        read_body(req, body, state.max_body_bytes),
    )
    .await
    .map_err(|_| {
        counters().limit_hit(Limit::HttpBodyDeadline);
        ApiError::BodyTimeout(state.body_timeout.as_millis() as u64)
    })?
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
        let chunk = chunk.map_err(|e| {
            ApiError::BadRequest(format!("could not read body: {}", shown(&e.to_string())))
        })?;
        if buf.len() + chunk.len() > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// The media type of an offer or answer as bare SDP (RFC 4566 §8.1).
const SDP: &str = "application/sdp";

/// How an offer arrives, and so how it is answered.
#[derive(Debug, Clone, Copy)]
enum OfferFormat {
    /// `application/json`: the seed's `{"type": "offer", "sdp": ...}`, answered with JSON.
    Json,
    /// `application/sdp`: the offer SDP itself, answered `201` with the answer SDP (WHIP).
    Sdp,
}

/// `Content-Type: application/json` or `application/sdp` (any parameters), else `415` when the
/// request comes from a web page (it carries `Origin`). Requiring one of them is what keeps a
/// page on another origin from creating calls through its visitors' browsers with a "simple"
/// `text/plain` POST, which needs no CORS preflight; neither type is CORS-safelisted, so a POST
/// of either from another origin is preflighted. Browsers send `Origin` with every POST, so a
/// request without one is not a page's: it is read as JSON whatever its type, as the original
/// read every offer (`curl -d`, a script that sets no type).
fn offer_format(req: &HttpRequest) -> Result<OfferFormat, ApiError> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(OfferFormat::Json)
    } else if essence.eq_ignore_ascii_case(SDP) {
        Ok(OfferFormat::Sdp)
    } else if !req.headers().contains_key(header::ORIGIN) {
        Ok(OfferFormat::Json)
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type must be application/json or application/sdp, got {}",
            if ct.is_empty() {
                "none".to_owned()
            } else {
                format!("{:?}", shown(ct))
            }
        )))
    }
}

/// What an offer's body carries, whichever its format.
struct OfferBody {
    /// The offer SDP, not yet checked.
    sdp: String,
    /// What to dial the dialog app with.
    dialog: DialParams,
}

/// A JSON offer: the SDP, `type: "offer"`, and the dial parameters. Its keys are matched
/// case-insensitively, as the original's decoder did (`SDP`, `Type`, `apikey`, `AgentID`).
fn json_offer(bytes: &[u8], max_payload_bytes: usize) -> Result<OfferBody, ApiError> {
    let not_json = |e: &dyn std::fmt::Display| {
        ApiError::BadRequest(format!(
            "body is not valid JSON for an offer: {}",
            shown(&e.to_string())
        ))
    };
    let text = std::str::from_utf8(bytes).map_err(|e| not_json(&e))?;
    let folded = fold_keys(text, &OfferRequest::FIELDS).map_err(|e| not_json(&e))?;
    let mut req: OfferRequest = serde_json::from_str(&folded).map_err(|e| not_json(&e))?;
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
                "type must be \"offer\", got {:?}",
                shown(other)
            )));
        }
        None => {
            return Err(ApiError::BadRequest(
                "type is missing: expected \"offer\"".into(),
            ));
        }
    }
    // Checked now, before any media is set up.
    let dialog = DialParams::from_offer(
        max_payload_bytes,
        req.payload.as_deref().map(|p| p.get()),
        req.api_key.as_deref(),
        req.api_secret.as_deref(),
        req.agent_id.as_deref(),
    )
    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(OfferBody { sdp, dialog })
}

/// An `application/sdp` offer: the body is the SDP. It has no room for a dial payload; the
/// dialog app gets the call token's, if any.
fn sdp_offer(bytes: &[u8]) -> Result<OfferBody, ApiError> {
    let sdp = std::str::from_utf8(bytes)
        .map_err(|_| ApiError::BadRequest("the offer SDP is not UTF-8 text".into()))?;
    if sdp.trim().is_empty() {
        return Err(ApiError::BadRequest(
            "the body is empty: expected the offer SDP (v=0...)".into(),
        ));
    }
    Ok(OfferBody {
        sdp: sdp.to_owned(),
        dialog: DialParams::default(),
    })
}

/// What the call token decided overrides what the browser asked for: the dial payload (the
/// body's payload and credentials are dropped), the caller's name, the longest duration, and the
/// mode (a token for an echo test makes a call without `mode` an echo test, and refuses
/// `mode` asking for more with `403`).
fn apply_grant(
    offer: &mut Offer,
    grant: &Grant,
    mode_asked: bool,
    max_payload_bytes: usize,
) -> Result<(), ApiError> {
    if let Some(allowed) = grant.mode {
        let wanted = match offer.mode {
            CallMode::Echo => TokenMode::Echo,
            CallMode::Dialog => TokenMode::Dialog,
        };
        if !allowed.allows(wanted) {
            if mode_asked {
                return Err(auth::forbidden(
                    "the call token allows an echo test only (mode=echo)".into(),
                ));
            }
            offer.mode = CallMode::Echo;
        }
    }
    if let Some(payload) = grant.payload.as_deref() {
        offer.dialog =
            DialParams::from_offer(max_payload_bytes, Some(payload), None, None, None)
                .map_err(|e| ApiError::BadRequest(format!("the call token's payload: {e}")))?;
    }
    offer.caller = grant.sub.clone();
    offer.max_duration = grant.max_duration;
    Ok(())
}

/// Checks the offer's mode and SDP and builds the domain [`Offer`].
fn validate_offer(
    body: OfferBody,
    mode: Option<&str>,
    client: ClientInfo,
    max_candidates: usize,
) -> Result<Offer, ApiError> {
    let OfferBody { sdp, dialog } = body;
    let mode = match mode.map(str::trim) {
        None | Some("") | Some("dialog") => CallMode::Dialog,
        Some("echo") => CallMode::Echo,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unknown mode {:?}: use mode=echo, or mode=dialog (the default) for a call with the dialog app",
                shown(other)
            )));
        }
    };
    let summary = sdp::check_offer(&sdp).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if summary.candidates > max_candidates {
        counters().limit_hit(Limit::RemoteCandidates);
        return Err(ApiError::BadRequest(format!(
            "the offer carries {} candidates; at most {max_candidates} are accepted (media.max_remote_candidates)",
            summary.candidates
        )));
    }
    // Our connectivity checks go only to the audio section's usable candidates.
    let sdp = sdp::keep_audio_candidates(&sdp, summary.audio_section);
    Ok(Offer {
        sdp,
        summary,
        mode,
        client,
        dialog,
        caller: None,
        max_duration: None,
    })
}

/// Who is calling, for logs, limits and the dialog app: the TCP peer, or, when the peer is a
/// trusted proxy, the client it names in `X-Forwarded-For` ([`admission::client_ip`]); plus
/// the user agent (capped: it is the caller's text).
fn client_info(req: &HttpRequest, trusted: &[IpNet]) -> ClientInfo {
    // Every line of the header, in order, as one list: a proxy appends its line after the
    // client's (HAProxy's `option forwardfor` does), so the first line alone is the client's
    // own text. A line that is not text stays in as an entry no address parses from, where
    // trust stops.
    let lines: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .map(|v| v.to_str().unwrap_or("?"))
        .collect();
    let forwarded = (!lines.is_empty()).then(|| lines.join(","));
    let peer = req.peer_addr();
    let ip = peer.map(|peer| admission::client_ip(peer.ip(), forwarded.as_deref(), trusted));
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| ua.chars().take(USER_AGENT_MAX_CHARS).collect());
    // The direct peer is shown with its port, as the original did; a forwarded client has
    // none.
    let addr = match (peer, ip) {
        (Some(p), Some(ip)) if p.ip() == ip => p.to_string(),
        (_, Some(ip)) => ip.to_string(),
        _ => String::new(),
    };
    ClientInfo {
        addr,
        ip,
        user_agent,
    }
}

/// Most characters of a user agent kept (browsers send about 150).
const USER_AGENT_MAX_CHARS: usize = 256;
