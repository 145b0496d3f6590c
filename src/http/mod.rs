//! The HTTP edge: signaling (`/webrtc/v1/offer`, `/webrtc/v1/hangup`, the call resource
//! `/webrtc/v1/calls/<id>`), health, and the page.
//!
//! Only this module knows the JSON of the HTTP API. Requests are validated here (body size, JSON
//! shape, `type`, an SDP with Opus audio) and turned into domain types before any actor sees
//! them; actor errors come back as [`error::ApiError`], which picks the status code and the
//! short JSON body. [`routes`] is the one route table, used by `main` and by the tests.

pub mod api;
pub mod auth;
pub mod error;
mod handlers;
mod web_page;

use actix::Addr;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::{Next, from_fn};
use actix_web::{Error, web};
use std::sync::Arc;
use voicegate_actors::supervisor::Supervisor;
use voicegate_core::admission::IpNet;
use voicegate_core::call_id::CallId;
use voicegate_core::cors;

/// Where the signaling API lives.
const API: &str = "/webrtc/v1";

/// A call's resource URL, `/webrtc/v1/calls/<id>`: the offer's `Location`, and what `DELETE`
/// and `PATCH` act on, as a WHIP session URL does (RFC 9725). The id's 128 random bits
/// make the URL the capability to end the call, so it needs no call token.
pub fn call_location(call_id: &CallId) -> String {
    format!("{API}/calls/{call_id}")
}

/// The offer reply's `Location`: [`call_location`], under the path a trusted proxy says it
/// mounts voicegate at (`X-Forwarded-Prefix`, from a peer in `http.trusted_proxies` only), so
/// the `PATCH`/`DELETE` a client sends to it goes back through that proxy.
pub fn offer_location(req: &actix_web::HttpRequest, trusted: &[IpNet], call_id: &CallId) -> String {
    let from_proxy = req
        .peer_addr()
        .is_some_and(|p| trusted.iter().any(|n| n.contains(p.ip())));
    let mut lines = req.headers().get_all("x-forwarded-prefix");
    let prefix = match (from_proxy, lines.next(), lines.next()) {
        (true, Some(v), None) => v
            .to_str()
            .ok()
            .and_then(voicegate_core::admission::forwarded_prefix),
        _ => None,
    };
    format!("{}{}", prefix.unwrap_or(""), call_location(call_id))
}

/// What the handlers share.
pub struct HttpState {
    /// The call supervisor.
    pub supervisor: Addr<Supervisor>,
    /// CORS allowlist (empty: reflect every origin).
    pub allowed_origins: Arc<Vec<String>>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// False once the service is draining.
    pub ready: Arc<std::sync::atomic::AtomicBool>,
    /// Retry-After of a full server's 503, seconds.
    pub retry_after_s: u32,
    /// The media plane, for its figures on `/metrics`.
    pub plane: Arc<voicegate_media::MediaPlane>,
    /// Longest a request body may take to arrive.
    pub body_timeout: std::time::Duration,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Arc<Vec<voicegate_core::admission::IpNet>>,
    /// Offers per second per source.
    pub offer_rate: Arc<std::sync::Mutex<voicegate_core::admission::RateLimiter>>,
    /// Offers per second per IPv6 /48, all its sources together.
    pub prefix_offer_rate: Arc<std::sync::Mutex<voicegate_core::admission::RateLimiter>>,
    /// Most usable remote candidates in an offer.
    pub max_remote_candidates: usize,
    /// Longest dial `payload` (`dialog.max_payload_bytes`), from the offer or a call token.
    pub max_payload_bytes: usize,
    /// Longest a call may last (`calls.max_duration_s`; `None`: no limit).
    pub max_call_duration: Option<std::time::Duration>,
    /// Call tokens (`None`: `auth.mode = "none"`).
    pub auth: Option<Arc<auth::Auth>>,
    /// This node's id, and the fleet's call id prefix: a request for a call id naming another
    /// node is misdirected (`421`).
    pub node_id: Arc<str>,
    /// See `node_id`.
    pub id_prefix: Arc<str>,
}

/// The route table.
pub fn routes(cfg: &mut web::ServiceConfig) {
    use actix_web::http::Method;
    // A query string that does not parse (`?mode=echo&mode=echo`) is a `400` with the JSON
    // error body like every other refusal, not actix's plain text.
    cfg.app_data(
        web::QueryConfig::default()
            .error_handler(|e, _| error::ApiError::BadRequest(format!("query string: {e}")).into()),
    )
    .service(web::resource("/health").route(web::get().to(handlers::health)))
    .service(web::resource("/ready").route(web::get().to(handlers::ready)))
    .service(web::resource("/metrics").route(web::get().to(handlers::metrics)))
    .service(
        web::scope(API)
            .wrap(from_fn(cors_headers))
            .service(
                web::resource("/offer")
                    .route(web::post().to(handlers::offer))
                    .route(web::method(Method::OPTIONS).to(handlers::preflight))
                    .default_service(web::to(handlers::method_not_allowed)),
            )
            .service(
                web::resource("/hangup")
                    .route(web::post().to(handlers::hangup))
                    .route(web::method(Method::OPTIONS).to(handlers::preflight))
                    .default_service(web::to(handlers::method_not_allowed)),
            )
            // The call as a resource. A method added here goes into
            // `handlers::CALL_ALLOW` and `cors::ALLOW_METHODS` too.
            .service(
                web::resource("/calls/{call_id}")
                    .route(web::patch().to(handlers::patch_call))
                    .route(web::delete().to(handlers::end_call))
                    .route(web::method(Method::OPTIONS).to(handlers::preflight))
                    .default_service(web::to(handlers::call_method_not_allowed)),
            )
            .default_service(web::to(handlers::not_found)),
    )
    .service(web::resource("/dialog/demo").route(web::get().to(crate::demo::connect)))
    .service(web::resource("/").route(web::get().to(web_page::index)))
    .service(web::resource("/voicegate.js").route(web::get().to(web_page::client_js)))
    .default_service(web::to(handlers::not_found));
}

/// Adds the CORS headers the original sends, when the request's origin is allowed
/// ([`cors::origin_allowed`]). A refused origin gets no headers; the request is still served.
async fn cors_headers(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_owned);
    let allowed = match (&origin, req.app_data::<web::Data<HttpState>>()) {
        (Some(o), Some(state)) => cors::origin_allowed(o, &state.allowed_origins),
        _ => false,
    };
    let mut res = next.call(req).await?;
    if allowed && let Some(origin) = origin.and_then(|o| HeaderValue::from_str(&o).ok()) {
        let h = res.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(cors::ALLOW_METHODS),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(cors::ALLOW_HEADERS),
        );
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(cors::EXPOSE_HEADERS),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(cors::MAX_AGE),
        );
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    Ok(res)
}
