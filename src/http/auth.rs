//! Call tokens at the HTTP edge: `Authorization: Bearer <JWT>` on `POST /webrtc/v1/offer` when
//! `auth.mode = "token"` (the checks themselves are `voicegate_core::token`'s).
//!
//! The token is checked before a byte of the offer's body is read, so a caller without one costs
//! a header parse. A single-use token (`jti`) is spent only once the offer is otherwise valid and
//! about to become a call, so a malformed body does not burn the caller's token, and it is given
//! back when the call could not be placed after all (the server full, say).

use super::error::ApiError;
use crate::settings::AuthSettings;
use actix_web::HttpRequest;
use actix_web::http::header;
use secrecy::ExposeSecret;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};
use voicegate_actors::metrics::{Limit, metrics};
use voicegate_core::token::{self, Grant, TokenError, UsedTokens, Verifier};

/// The server's token checks and its memory of spent single-use tokens.
#[derive(Debug)]
pub struct Auth {
    verifier: Verifier,
    used: Mutex<UsedTokens>,
}

impl Auth {
    /// From the validated settings.
    pub fn new(s: &AuthSettings) -> Self {
        let secrets: Vec<&[u8]> = s
            .secrets
            .iter()
            .map(|k| k.expose_secret().as_bytes())
            .collect();
        Auth {
            verifier: Verifier::new(&secrets, s.leeway_s, s.max_ttl_s),
            used: Mutex::new(UsedTokens::new(s.max_single_use_tokens)),
        }
    }

    /// The request's token, verified: what the call may be. `401` otherwise.
    pub fn verify(&self, req: &HttpRequest) -> Result<Grant, ApiError> {
        let header = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or("\u{fffd}"));
        token::bearer(header)
            .and_then(|t| self.verifier.verify(t, now_unix()))
            .map_err(unauthorized)
    }

    /// Spends a single-use token (one with `jti`); a second use is refused with `401`.
    pub fn redeem(&self, grant: &Grant) -> Result<(), ApiError> {
        let Some((jti, exp)) = &grant.jti else {
            return Ok(());
        };
        let verdict =
            self.used
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .claim(jti, *exp, now_unix());
        match verdict {
            Ok(()) => Ok(()),
            Err(TokenError::UsedTokensFull) => {
                metrics().limit_hit(Limit::SingleUseTokens);
                Err(ApiError::TooManyRequests {
                    reason: "too many single-use call tokens are outstanding (auth.max_single_use_tokens)",
                    retry_after_s: 5,
                })
            }
            Err(e) => Err(unauthorized(e)),
        }
    }
}

impl Auth {
    /// Gives back a single-use token [`redeem`](Self::redeem) spent on an offer that did not
    /// become a call (`503` full, `429` calls per address, `400` from the stack), so a caller
    /// told to retry can retry with it.
    pub fn refund(&self, grant: &Grant) {
        if let Some((jti, _)) = &grant.jti {
            self.used
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .release(jti);
        }
    }
}

/// A refused token: counted, and answered with `401`.
fn unauthorized(e: TokenError) -> ApiError {
    metrics().offers_unauthorized.inc();
    ApiError::Unauthorized(e)
}

/// A refusal for what the token allows (the mode): counted, and answered with `403`.
pub fn forbidden(reason: String) -> ApiError {
    metrics().offers_unauthorized.inc();
    ApiError::Forbidden(reason)
}

/// Seconds since the Unix epoch (the time claims' clock, RFC 7519 §2 NumericDate).
fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
