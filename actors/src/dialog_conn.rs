//! How the dialog app is reached: the extra headers sent on every dial (`dialog.headers`); the
//! TLS client configuration for `wss://` (`dialog.ca_file`, `dialog.public_roots`) is a
//! [`ClientTls`](voicegate_engines::tls::ClientTls).
//!
//! Both are checked and built once, at startup, so a header that cannot be sent or a CA file
//! that cannot be read is a startup error naming the key, not a failed dial in every call.
//! Every call shares the one `ClientTls`; [`DialogClient`](crate::dialog::DialogClient) only
//! clones its `Arc`.
//!
//! Header values are secrets (typically `Authorization: Bearer ...`): they are kept as
//! [`SecretString`]s, so no `Debug` shows them, and [`DialHeaders`]'s `Display` (what logs show)
//! gives their names with `***` for every value.

use awc::http::header::{HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use std::fmt;

/// Why a configured header is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    /// The name is not an HTTP token (RFC 9110 §5.1).
    #[error("{0:?} is not a valid header name")]
    Name(String),
    /// The value holds a character a header may not carry (a line break, a control character).
    #[error("the value of {0:?} is not a valid header value")]
    Value(String),
    /// The name is one the WebSocket handshake or HTTP/1.1 framing sets itself.
    #[error("{0:?} is set by the WebSocket handshake itself and cannot be configured")]
    Reserved(String),
    /// Two keys name the same header (names are case-insensitive, `_` is `-`).
    #[error("{0:?} is configured twice")]
    Duplicate(String),
}

/// Header names the client's handshake writes itself (RFC 6455 §4.1), or that change how HTTP/1.1
/// frames and routes the request (hop-by-hop headers, RFC 9110 §7.6.1): one configured by hand
/// would be sent twice or contradict the handshake. Any `sec-websocket-*` is refused too.
const RESERVED: [&str; 10] = [
    "host",
    "connection",
    "upgrade",
    "content-length",
    "transfer-encoding",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
    "expect",
];

/// Whether `name` (lower case) is one the handshake owns.
fn reserved(name: &str) -> bool {
    name.starts_with("sec-websocket-") || RESERVED.contains(&name)
}

/// The header a configured key names: trimmed, lower case, `_` read as `-` (see
/// [`DialHeader::new`]). Two keys with the same result name the same header.
pub fn header_name(key: &str) -> String {
    key.trim().replace('_', "-").to_ascii_lowercase()
}

/// One header sent on every dial. The value is never shown (its `Debug` is `SecretString`'s).
#[derive(Clone, Debug)]
pub struct DialHeader {
    /// The name, lower case (HTTP names are case-insensitive).
    name: HeaderName,
    /// The value, checked to be a valid header value.
    value: SecretString,
}

impl DialHeader {
    /// Checks one configured header. `_` in the name is read as `-`: environment variable names
    /// cannot hold a hyphen, and servers drop or conflate underscored names anyway (nginx's
    /// `underscores_in_headers` is off by default; CGI-style frameworks map both to `_`).
    pub fn new(name: &str, value: SecretString) -> Result<DialHeader, HeaderError> {
        let parsed = HeaderName::from_bytes(header_name(name).as_bytes())
            .map_err(|_| HeaderError::Name(name.into()))?;
        if reserved(parsed.as_str()) {
            return Err(HeaderError::Reserved(parsed.as_str().into()));
        }
        HeaderValue::from_str(value.expose_secret())
            .map_err(|_| HeaderError::Value(parsed.as_str().into()))?;
        Ok(DialHeader {
            name: parsed,
            value,
        })
    }

    /// The header's name (lower case).
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// The name and the value as sent, the value marked sensitive.
    pub fn to_header(&self) -> (HeaderName, HeaderValue) {
        let mut value = HeaderValue::from_str(self.value.expose_secret())
            .expect("DialHeader::new checked that the value is a valid header value");
        value.set_sensitive(true);
        (self.name.clone(), value)
    }
}

/// The headers sent on every dial, in the order configured.
#[derive(Clone, Debug, Default)]
pub struct DialHeaders(Vec<DialHeader>);

impl DialHeaders {
    /// Checks each `(name, value)`; refuses two keys for the same header.
    pub fn new(
        headers: impl IntoIterator<Item = (String, SecretString)>,
    ) -> Result<DialHeaders, HeaderError> {
        let mut out: Vec<DialHeader> = Vec::new();
        for (name, value) in headers {
            let h = DialHeader::new(&name, value)?;
            if out.iter().any(|o| o.name == h.name) {
                return Err(HeaderError::Duplicate(h.name().into()));
            }
            out.push(h);
        }
        Ok(DialHeaders(out))
    }

    /// The headers.
    pub fn iter(&self) -> impl Iterator<Item = &DialHeader> {
        self.0.iter()
    }

    /// Whether none are configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// As logs show them: `authorization: ***, x-team: ***` (empty when there are none).
impl fmt::Display for DialHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, h) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}: ***", h.name)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, value: &str) -> Result<DialHeader, HeaderError> {
        DialHeader::new(name, value.into())
    }

    #[test]
    fn headers_are_checked_by_name_and_value() {
        for (name, value, want) in [
            ("Authorization", "Bearer abc", Ok("authorization")),
            ("X_Api_Key", "007", Ok("x-api-key")),
            ("x-team", "a, b; c=\"d\"", Ok("x-team")),
            ("Origin", "https://example.com", Ok("origin")),
            ("bad name", "v", Err(HeaderError::Name("bad name".into()))),
            ("", "v", Err(HeaderError::Name("".into()))),
            ("x:y", "v", Err(HeaderError::Name("x:y".into()))),
            (
                "x-a",
                "one\r\nInjected: yes",
                Err(HeaderError::Value("x-a".into())),
            ),
            ("x-a", "nul\0", Err(HeaderError::Value("x-a".into()))),
            ("Host", "evil", Err(HeaderError::Reserved("host".into()))),
            (
                "CONNECTION",
                "close",
                Err(HeaderError::Reserved("connection".into())),
            ),
            (
                "upgrade",
                "h2c",
                Err(HeaderError::Reserved("upgrade".into())),
            ),
            (
                "Content-Length",
                "0",
                Err(HeaderError::Reserved("content-length".into())),
            ),
            (
                "transfer_encoding",
                "chunked",
                Err(HeaderError::Reserved("transfer-encoding".into())),
            ),
            (
                "Sec-WebSocket-Key",
                "x",
                Err(HeaderError::Reserved("sec-websocket-key".into())),
            ),
            (
                "sec_websocket_protocol",
                "x",
                Err(HeaderError::Reserved("sec-websocket-protocol".into())),
            ),
        ] {
            let got = header(name, value);
            assert_eq!(
                got.as_ref().map(|h| h.name()),
                want.as_ref().map(|n| *n),
                "{name:?}"
            );
        }
    }

    #[test]
    fn a_header_configured_twice_is_refused() {
        let e = DialHeaders::new([
            ("Authorization".to_owned(), "a".into()),
            ("authorization".to_owned(), "b".into()),
        ])
        .unwrap_err();
        assert_eq!(e, HeaderError::Duplicate("authorization".into()));
    }

    #[test]
    fn values_never_show_in_debug_or_display() {
        let h = DialHeaders::new([
            ("Authorization".to_owned(), "Bearer s3cret".into()),
            ("x_team".to_owned(), "blue".into()),
        ])
        .unwrap();
        assert_eq!(h.to_string(), "authorization: ***, x-team: ***");
        let debug = format!("{h:?}");
        assert!(
            !debug.contains("s3cret") && !debug.contains("blue"),
            "{debug}"
        );
        let (name, value) = h.iter().next().unwrap().to_header();
        assert_eq!(
            (name.as_str(), value.to_str().unwrap()),
            ("authorization", "Bearer s3cret")
        );
        assert!(value.is_sensitive());
        assert_eq!(DialHeaders::default().to_string(), "");
    }
}
