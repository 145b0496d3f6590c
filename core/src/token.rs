//! Call tokens: who may place a call, and what the team's backend decided about it.
//!
//! A call token is a JSON Web Token (RFC 7519) signed with HS256 (RFC 7518 §3.2) by the team's
//! backend, with a secret it shares with voicegate. The browser gets it from that backend and
//! sends it as `Authorization: Bearer <token>` (RFC 6750 §2.1) with its offer, the way LiveKit
//! and hosted realtime APIs admit callers. The signature is checked by the `jsonwebtoken` crate
//! (constant-time HMAC, the algorithm pinned to HS256 so `alg: none` and algorithm confusion are
//! refused); the time claims are checked here against a time the caller passes in, so this stays
//! a pure function of its inputs.
//!
//! Several secrets may be configured, so a team can rotate its key: a token signed with any of
//! them is accepted. A token that carries `jti` is single-use ([`UsedTokens`]); one without `jti`
//! can place calls until it expires, which is why `exp` is required and its distance from now
//! bounded (`max_ttl`).

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

/// Longest token accepted, in bytes. A call token is a few hundred bytes; the bound keeps a
/// hostile header from costing more than a quick refusal.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Longest `jti` accepted, in bytes (they are kept until they expire).
pub const MAX_JTI_BYTES: usize = 128;
/// Longest `sub` accepted, in bytes (it is logged and sent to the dialog app).
pub const MAX_SUB_BYTES: usize = 256;

/// The claims of a call token, as the team's backend writes them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// Expiry, seconds since the Unix epoch (required).
    pub exp: u64,
    /// Not before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, seconds since the Unix epoch (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Who places the call: logged and sent to the dialog app in `call.started`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The most the call may be: `echo` (an echo test only) or `dialog` (either).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The dial payload. When present it replaces what the offer's body says (payload and
    /// credentials), so a browser cannot change what the backend decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    /// The call ends with reason `max-duration` after this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration_s: Option<u64>,
    /// A unique id: the token is then single-use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

/// What a token allows the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenMode {
    /// An echo test only.
    Echo,
    /// A call with the dialog app (or an echo test, which costs less).
    Dialog,
}

impl TokenMode {
    /// Whether a token of this mode allows a call of mode `wanted`.
    pub fn allows(self, wanted: TokenMode) -> bool {
        self == TokenMode::Dialog || wanted == TokenMode::Echo
    }
}

/// A verified token: what the call may be and what it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    /// Who places the call.
    pub sub: Option<String>,
    /// The most the call may be (`None`: anything).
    pub mode: Option<TokenMode>,
    /// The dial payload as JSON text, replacing the body's.
    pub payload: Option<String>,
    /// The call's longest duration.
    pub max_duration: Option<Duration>,
    /// The single-use id, with the token's expiry (for [`UsedTokens::claim`]).
    pub jti: Option<(String, u64)>,
}

/// Why a token was refused. The text is the JSON reason of the `401`/`403`; it never quotes the
/// token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No `Authorization` header.
    #[error("a call token is required: send Authorization: Bearer <token>")]
    Missing,
    /// The header is not `Bearer <token>`.
    #[error("the Authorization header must be Bearer <token>")]
    NotBearer,
    /// Longer than [`MAX_TOKEN_BYTES`].
    #[error("the token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    /// Not a JWT, not JSON, or a claim of the wrong type or size.
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    /// Signed with another algorithm than HS256 (`none` included).
    #[error("the token must be signed with HS256")]
    WrongAlgorithm,
    /// No configured secret verifies the signature.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// `exp` is past.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `exp` is further away than the configured maximum lifetime.
    #[error("the token's lifetime exceeds the server's maximum of {0} s")]
    TooLongLived(u64),
    /// A single-use token (`jti`) was already used.
    #[error("the token was already used")]
    Reused,
    /// The server holds as many unexpired single-use tokens as it may.
    #[error("too many single-use tokens are outstanding; try again later")]
    UsedTokensFull,
}

/// The `Authorization` header's value → the bearer token (RFC 6750 §2.1; the scheme is
/// case-insensitive, RFC 9110 §11.1).
pub fn bearer(header: Option<&str>) -> Result<&str, TokenError> {
    let header = header.ok_or(TokenError::Missing)?.trim();
    let (scheme, token) = header.split_once(' ').ok_or(TokenError::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(TokenError::NotBearer);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(TokenError::NotBearer);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLong);
    }
    Ok(token)
}

/// Checks call tokens against the configured secrets.
pub struct Verifier {
    keys: Vec<DecodingKey>,
    leeway_s: u64,
    max_ttl_s: u64,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keys are secrets: only their number shows.
        f.debug_struct("Verifier")
            .field("keys", &self.keys.len())
            .field("leeway_s", &self.leeway_s)
            .field("max_ttl_s", &self.max_ttl_s)
            .finish()
    }
}

impl Verifier {
    /// A verifier for tokens signed with any of `secrets`, allowing `leeway_s` of clock skew
    /// and tokens that expire at most `max_ttl_s` from now.
    pub fn new<S: AsRef<[u8]>>(secrets: &[S], leeway_s: u64, max_ttl_s: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // Time is checked in `verify`, against the time passed in.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        Verifier {
            keys: secrets
                .iter()
                .map(|s| DecodingKey::from_secret(s.as_ref()))
                .collect(),
            leeway_s,
            max_ttl_s,
            validation,
        }
    }

    /// Verifies `token` at `now_unix` (seconds since the Unix epoch).
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Grant, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong);
        }
        let mut claims = None;
        for key in &self.keys {
            match jsonwebtoken::decode::<Claims>(token, key, &self.validation) {
                Ok(data) => {
                    claims = Some(data.claims);
                    break;
                }
                Err(e) => match e.kind() {
                    ErrorKind::InvalidSignature => continue,
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        return Err(TokenError::WrongAlgorithm);
                    }
                    ErrorKind::Json(_) | ErrorKind::MissingRequiredClaim(_) => {
                        return Err(TokenError::Malformed("its claims are not as documented"));
                    }
                    _ => return Err(TokenError::Malformed("not a signed JWT")),
                },
            }
        }
        let claims = claims.ok_or(TokenError::BadSignature)?;
        if claims.exp.saturating_add(self.leeway_s) <= now_unix {
            return Err(TokenError::Expired);
        }
        if claims.exp > now_unix.saturating_add(self.max_ttl_s) {
            return Err(TokenError::TooLongLived(self.max_ttl_s));
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now_unix.saturating_add(self.leeway_s))
        {
            return Err(TokenError::NotYetValid);
        }
        let mode = match claims.mode.as_deref() {
            None => None,
            Some("echo") => Some(TokenMode::Echo),
            Some("dialog") => Some(TokenMode::Dialog),
            Some(_) => return Err(TokenError::Malformed("mode must be \"echo\" or \"dialog\"")),
        };
        if claims.sub.as_ref().is_some_and(|s| s.len() > MAX_SUB_BYTES) {
            return Err(TokenError::Malformed("sub is too long"));
        }
        let jti = match claims.jti {
            Some(j) if j.is_empty() || j.len() > MAX_JTI_BYTES => {
                return Err(TokenError::Malformed("jti is empty or too long"));
            }
            Some(j) => Some((j, claims.exp)),
            None => None,
        };
        Ok(Grant {
            sub: claims.sub,
            mode,
            payload: claims.payload.map(|p| p.to_string()),
            max_duration: claims
                .max_duration_s
                .filter(|&s| s > 0)
                .map(Duration::from_secs),
            jti,
        })
    }
}

/// Signs `claims` with `secret` (HS256): what `voicegate token` prints and what a team's backend
/// does with its own JWT library.
pub fn mint(secret: &[u8], claims: &Claims) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("HS256 signing of serializable claims cannot fail")
}

/// Single-use tokens seen and not yet expired: a `jti` is refused the second time. Bounded: when
/// `max` are held, new single-use tokens are refused until some expire (failing closed keeps the
/// promise; a token without `jti` still works).
#[derive(Debug)]
pub struct UsedTokens {
    seen: HashMap<String, u64>,
    max: usize,
}

impl UsedTokens {
    /// At most `max` unexpired single-use tokens remembered.
    pub fn new(max: usize) -> Self {
        UsedTokens {
            seen: HashMap::new(),
            max,
        }
    }

    /// Records the use of `jti` (expiring at `exp`) at `now_unix`; refuses a second use.
    pub fn claim(&mut self, jti: &str, exp: u64, now_unix: u64) -> Result<(), TokenError> {
        if self.seen.contains_key(jti) {
            return Err(TokenError::Reused);
        }
        if self.seen.len() >= self.max {
            self.seen.retain(|_, &mut e| e > now_unix);
            if self.seen.len() >= self.max {
                return Err(TokenError::UsedTokensFull);
            }
        }
        self.seen.insert(jti.to_owned(), exp);
        Ok(())
    }

    /// Forgets a use of `jti` recorded by [`claim`](Self::claim): the offer it was spent on did
    /// not become a call (the server was full, the caller's address had its calls, the stack
    /// could not negotiate it), so the token is the caller's to use again.
    pub fn release(&mut self, jti: &str) {
        self.seen.remove(jti);
    }

    /// How many are held.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// None are held.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    const NOW: u64 = 1_800_000_000;
    const SECRET: &[u8] = b"a secret of thirty-two bytes....";
    const OLD_SECRET: &[u8] = b"the secret before the rotation..";

    fn verifier() -> Verifier {
        Verifier::new(&[SECRET, OLD_SECRET], 30, 3600)
    }

    fn claims() -> Claims {
        Claims {
            exp: NOW + 300,
            ..Claims::default()
        }
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn the_validation_table() {
        let v = verifier();
        let ok = |c: &Claims| v.verify(&mint(SECRET, c), NOW);
        assert!(ok(&claims()).is_ok(), "a fresh token");
        assert!(
            v.verify(&mint(OLD_SECRET, &claims()), NOW).is_ok(),
            "a rotated secret"
        );
        assert_eq!(
            v.verify(&mint(b"someone else's secret", &claims()), NOW),
            Err(TokenError::BadSignature)
        );
        let expired = Claims {
            exp: NOW - 31,
            ..claims()
        };
        assert_eq!(ok(&expired), Err(TokenError::Expired));
        let within_leeway = Claims {
            exp: NOW - 29,
            ..claims()
        };
        assert!(ok(&within_leeway).is_ok(), "clock skew within the leeway");
        let early = Claims {
            nbf: Some(NOW + 31),
            ..claims()
        };
        assert_eq!(ok(&early), Err(TokenError::NotYetValid));
        let long_lived = Claims {
            exp: NOW + 3601,
            ..claims()
        };
        assert_eq!(ok(&long_lived), Err(TokenError::TooLongLived(3600)));
        let bad_mode = Claims {
            mode: Some("admin".into()),
            ..claims()
        };
        assert!(matches!(ok(&bad_mode), Err(TokenError::Malformed(_))));
        assert!(matches!(
            v.verify("not.a.jwt", NOW),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            v.verify("garbage", NOW),
            Err(TokenError::Malformed(_))
        ));
        assert_eq!(
            v.verify(&"a".repeat(MAX_TOKEN_BYTES + 1), NOW),
            Err(TokenError::TooLong)
        );
    }

    #[test]
    fn exp_is_required() {
        let header = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = b64(br#"{"sub":"x"}"#);
        // Signed properly, but without exp.
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET).unwrap();
        mac.update(format!("{header}.{body}").as_bytes());
        let sig = b64(&mac.finalize().into_bytes());
        assert!(matches!(
            verifier().verify(&format!("{header}.{body}.{sig}"), NOW),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn other_algorithms_are_refused_none_included() {
        let body = b64(&serde_json::to_vec(&claims()).unwrap());
        let none = format!("{}.{body}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
        assert!(verifier().verify(&none, NOW).is_err());
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims(),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(
            verifier().verify(&hs512, NOW),
            Err(TokenError::WrongAlgorithm)
        );
    }

    #[test]
    fn claims_become_the_grant() {
        let c = Claims {
            sub: Some("user-42".into()),
            mode: Some("echo".into()),
            payload: Some(serde_json::json!({"tier": "gold"})),
            max_duration_s: Some(90),
            jti: Some("once".into()),
            ..claims()
        };
        let g = verifier().verify(&mint(SECRET, &c), NOW).unwrap();
        assert_eq!(g.sub.as_deref(), Some("user-42"));
        assert_eq!(g.mode, Some(TokenMode::Echo));
        assert_eq!(g.payload.as_deref(), Some(r#"{"tier":"gold"}"#));
        assert_eq!(g.max_duration, Some(Duration::from_secs(90)));
        assert_eq!(g.jti, Some(("once".into(), NOW + 300)));
        assert!(TokenMode::Dialog.allows(TokenMode::Echo));
        assert!(TokenMode::Echo.allows(TokenMode::Echo));
        assert!(!TokenMode::Echo.allows(TokenMode::Dialog));
    }

    #[test]
    fn a_jti_is_used_once_and_forgotten_when_it_expires() {
        let mut used = UsedTokens::new(2);
        assert_eq!(used.claim("a", NOW + 10, NOW), Ok(()));
        assert_eq!(used.claim("a", NOW + 10, NOW), Err(TokenError::Reused));
        assert_eq!(used.claim("b", NOW + 100, NOW), Ok(()));
        // Full: refused until one expires.
        assert_eq!(
            used.claim("c", NOW + 100, NOW + 5),
            Err(TokenError::UsedTokensFull)
        );
        assert_eq!(used.claim("c", NOW + 100, NOW + 11), Ok(()));
        assert_eq!(used.len(), 2);
    }

    #[test]
    fn bearer_headers() {
        assert_eq!(bearer(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Ok("abc"));
        assert_eq!(bearer(None), Err(TokenError::Missing));
        assert_eq!(bearer(Some("Basic abc")), Err(TokenError::NotBearer));
        assert_eq!(bearer(Some("Bearer ")), Err(TokenError::NotBearer));
        assert_eq!(
            bearer(Some(&format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1)))),
            Err(TokenError::TooLong)
        );
    }
}
