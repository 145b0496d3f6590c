//! API errors: one status code and one short JSON body each; details are logged once, here.

use super::api::ErrorBody;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use voicegate_actors::supervisor::PlaceCallError;

/// Everything the HTTP API can answer with besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is unusable; the text says why.
    #[error("{0}")]
    BadRequest(String),
    /// Wrong method for the path; the methods it does allow, for the `Allow` header.
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    /// No such path.
    #[error("not found")]
    NotFound,
    /// We cannot take calls now (shutting down).
    #[error("{0}")]
    Unavailable(String),
    /// `calls.max` reached: try again after this many seconds.
    #[error("server is at capacity (calls.max); retry later")]
    Full(u32),
    /// The body is not of a type we read (`Content-Type` is neither JSON nor SDP).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The body did not arrive in time.
    #[error("request body did not arrive within {0} ms")]
    BodyTimeout(u64),
    /// The caller's source is over a limit; retry after this many seconds.
    #[error("{reason}; retry later")]
    TooManyRequests {
        /// Which limit.
        reason: &'static str,
        /// Retry-After, seconds.
        retry_after_s: u32,
    },
    /// No valid call token (`auth.mode = "token"`): `401` with `WWW-Authenticate: Bearer`.
    #[error("{0}")]
    Unauthorized(voicegate_core::token::TokenError),
    /// The call token does not allow what was asked.
    #[error("{0}")]
    Forbidden(String),
    /// `If-Match` names another ICE session than the call's current one (its tag is here).
    #[error("If-Match does not name the call's current ICE session; its ETag is {0}")]
    PreconditionFailed(String),
    /// The call id names another node: the router in front sent it to the wrong one.
    #[error(
        "call {call_id} is held by node {owner}, not by this node ({this}); route requests by the node in the call id"
    )]
    Misdirected {
        /// The id asked for.
        call_id: String,
        /// The node it names.
        owner: String,
        /// This node.
        this: String,
    },
    /// No such call (a `PATCH` to an ended or unknown call).
    #[error("no such call: it ended, or it was never placed here")]
    NoSuchCall,
    /// Our fault; the detail is logged, not sent.
    #[error("internal error")]
    Internal(String),
}

impl From<PlaceCallError> for ApiError {
    fn from(e: PlaceCallError) -> Self {
        match e {
            PlaceCallError::Negotiation(reason) => {
                ApiError::BadRequest(format!("offer cannot be negotiated: {reason}"))
            }
            PlaceCallError::ShuttingDown => ApiError::Unavailable("server is shutting down".into()),
            PlaceCallError::Full => ApiError::Full(1),
            PlaceCallError::SourceBusy => ApiError::TooManyRequests {
                reason: "too many calls in progress from this address (admission.calls_per_ip)",
                retry_after_s: 5,
            },
            PlaceCallError::PrefixBusy => ApiError::TooManyRequests {
                reason: "too many calls in progress from this network (admission.calls_per_prefix)",
                retry_after_s: 5,
            },
            PlaceCallError::Internal(detail) => ApiError::Internal(detail.to_string()),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotFound | ApiError::NoSuchCall => StatusCode::NOT_FOUND,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            ApiError::Unavailable(_) | ApiError::Full(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            ApiError::Internal(detail) => tracing::error!(%detail, "request failed"),
            ApiError::BadRequest(reason) => tracing::info!(%reason, "request refused"),
            _ => {}
        }
        let mut res = HttpResponse::build(self.status_code());
        if let ApiError::MethodNotAllowed(allow) = self {
            // RFC 9110 §15.5.6: a 405 lists the methods the resource supports.
            res.insert_header((actix_web::http::header::ALLOW, *allow));
        }
        if let ApiError::Full(secs)
        | ApiError::TooManyRequests {
            retry_after_s: secs,
            ..
        } = self
        {
            res.insert_header((actix_web::http::header::RETRY_AFTER, secs.to_string()));
        }
        if let ApiError::Unauthorized(e) = self {
            // RFC 6750 §3: a request without credentials gets the bare challenge; one with a bad
            // token is told `invalid_token` (the JSON body says why).
            let challenge = match e {
                voicegate_core::token::TokenError::Missing => "Bearer realm=\"voicegate\"",
                _ => "Bearer realm=\"voicegate\", error=\"invalid_token\"",
            };
            res.insert_header((actix_web::http::header::WWW_AUTHENTICATE, challenge));
        }
        if let ApiError::PreconditionFailed(etag) = self {
            res.insert_header((actix_web::http::header::ETAG, etag.as_str()));
        }
        if matches!(self, ApiError::BodyTimeout(_)) {
            // The rest of the body may still be on its way; do not keep reading it.
            res.insert_header((actix_web::http::header::CONNECTION, "close"));
        }
        res.json(ErrorBody {
            error: &self.to_string(),
        })
    }
}
