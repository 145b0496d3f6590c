//! The TLS client configuration every vendor engine shares: one per process.
//!
//! - **HTTP/1.1 only** (ALPN). A WebSocket is an HTTP/1.1 upgrade and awc cannot open one over
//!   HTTP/2 (RFC 8441 is not supported); a public server offered `h2` picks it, and the
//!   upgrade then fails. The OpenAI-compatible pool wants HTTP/1.1 as well (see [`crate::http`]).
//! - **Shared.** awc's default builds a configuration per client, so every utterance's vendor
//!   connection started with an empty session cache and a fresh copy of the roots; one
//!   configuration lets a connection resume a TLS session an earlier one (any call's) made with
//!   the same server, skipping the certificate chain and its verification.
//! - The public web roots (webpki-roots, compiled in), TLS 1.3, on ring: the crypto provider
//!   the WebRTC stack and the dialog connection already use, named so no second one is linked.

use rustls::{ClientConfig, RootCertStore};
use std::sync::{Arc, LazyLock};

static CONFIG: LazyLock<Arc<ClientConfig>> = LazyLock::new(|| {
    let roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
});

/// The shared configuration (a handle: clones share the session cache).
pub fn config() -> Arc<ClientConfig> {
    CONFIG.clone()
}
