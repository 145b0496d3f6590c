//! CORS decisions for the signaling endpoints, as the original makes them.
//!
//! Only the decision lives here; the HTTP layer turns a yes into headers. A request without an
//! `Origin` header is not a CORS request and gets no headers. An empty allowlist reflects every
//! origin (the original's default, so a page on any origin can place calls); otherwise the origin
//! must be listed exactly, or the list must hold `*`. The opaque origin `null` (sandboxed
//! frames, `data:` and `file:` pages: anyone can make one) is the exception: it is allowed only
//! when listed as `null` itself, never by an empty list or `*`. The allowed origin is always echoed, never a
//! literal `*`. A refused origin gets no CORS headers, so the browser blocks the page from reading
//! the response; the server does not answer 403, as the original does not.

/// Decides whether `origin` may read responses, given the configured allowlist.
pub fn origin_allowed(origin: &str, allowlist: &[String]) -> bool {
    if origin.is_empty() {
        return false;
    }
    if origin == "null" {
        return allowlist.iter().any(|a| a == "null");
    }
    allowlist.is_empty() || allowlist.iter().any(|a| a == "*" || a == origin)
}

/// `Access-Control-Allow-Methods` for the signaling endpoints: the union over them (`POST` for
/// the offer and the hangup, `PATCH` and `DELETE` for a call's resource URL), so one preflight
/// answer fits every path; what each path supports is its own `Allow` on a `405`.
pub const ALLOW_METHODS: &str = "POST, PATCH, DELETE, OPTIONS";

/// `Access-Control-Allow-Headers` for the signaling endpoints.
/// (`Authorization` carries the call token when `auth.mode = "token"`; `If-Match` names the ICE
/// session a `PATCH` applies to.)
pub const ALLOW_HEADERS: &str = "Content-Type, Authorization, If-Match";

/// `Access-Control-Expose-Headers`: the response headers a page on another origin may read
/// (where its call's resource is, its ICE session's tag, why it was refused, and when to retry).
pub const EXPOSE_HEADERS: &str = "Location, ETag, WWW-Authenticate, Retry-After";

/// `Access-Control-Max-Age`: how long a browser may keep a preflight's answer, seconds. Without
/// it Chromium keeps one 5 s, so the ICE-restart `PATCH` (sent while the caller's network is
/// changing) and the hangup `DELETE` would each wait for a preflight round trip first. Browsers
/// cap it (Chromium at 7200).
pub const MAX_AGE: &str = "600";

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn decisions() {
        let cases: &[(&str, &[&str], bool)] = &[
            // Empty allowlist reflects any origin.
            ("https://a.example", &[], true),
            // Except the opaque origin, unless listed by name.
            ("null", &[], false),
            ("null", &["*"], false),
            ("null", &["null"], true),
            // Exact match only: scheme, host and port all count.
            ("https://a.example", &["https://a.example"], true),
            ("http://a.example", &["https://a.example"], false),
            ("https://a.example:8443", &["https://a.example"], false),
            (
                "https://evil.example",
                &["https://a.example", "https://b.example"],
                false,
            ),
            (
                "https://b.example",
                &["https://a.example", "https://b.example"],
                true,
            ),
            // A `*` entry allows everyone.
            ("https://evil.example", &["https://a.example", "*"], true),
            // No Origin header means no CORS at all.
            ("", &[], false),
            ("", &["*"], false),
        ];
        for (origin, allow, want) in cases {
            assert_eq!(
                origin_allowed(origin, &list(allow)),
                *want,
                "{origin:?} vs {allow:?}"
            );
        }
    }
}
