//! The TLS client configurations voicegate dials out with ([`ClientTls`]): what is trusted,
//! built once at startup from a config section's `public_roots` and `ca_file`, and shared by
//! every connection made for that purpose.
//!
//! - **HTTP/1.1 only** (ALPN). A WebSocket is an HTTP/1.1 upgrade and awc cannot open one over
//!   HTTP/2 (RFC 8441 is not supported); a public server offered `h2` picks it, and the upgrade
//!   then fails. The OpenAI-compatible pool wants HTTP/1.1 as well (see [`crate::http`]).
//! - **Shared.** awc's default builds a configuration per client, so every vendor connection
//!   would start with an empty session cache and its own copy of the roots. One configuration
//!   per purpose lets a connection resume a TLS session that an earlier one (any call's) made
//!   with the same server, which skips the certificate chain and its verification.
//! - TLS 1.3, on ring: the crypto provider the WebRTC stack already links, named so no second
//!   one is pulled in.
//!
//! The dialog connection has its own (`dialog.ca_file`, `dialog.public_roots`); the vendor
//! engines and the demo agent's model share another (`vendor_tls.ca_file`,
//! `vendor_tls.public_roots`), which each engine's settings carry.

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};
use std::fmt;
use std::sync::Arc;

/// Why a TLS configuration cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file is not PEM.
    #[error("not a PEM file: {0}")]
    Pem(String),
    /// The CA file holds no `CERTIFICATE` block.
    #[error("holds no PEM CERTIFICATE block")]
    NoCertificates,
    /// A certificate in the CA file cannot be a trust anchor.
    #[error("certificate {index} cannot be trusted: {reason}")]
    BadCertificate {
        /// 1-based, in the file's order.
        index: usize,
        /// rustls's reason.
        reason: String,
    },
    /// Nothing would be trusted: no public roots and no CA file.
    #[error("no certificate authority is trusted (public_roots = false needs a ca_file)")]
    NoRoots,
    /// The crypto provider refused the protocol versions (a build without TLS 1.3/1.2 suites).
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// A TLS client configuration, built once and shared, with what it trusts.
#[derive(Clone)]
pub struct ClientTls {
    /// The rustls configuration awc's connector uses.
    config: Arc<ClientConfig>,
    /// What is trusted, for the startup log: "public roots + 1 from dialog.ca_file".
    summary: Arc<str>,
}

impl ClientTls {
    /// The public web roots (webpki-roots, compiled in) when `public_roots`, plus every
    /// certificate in `ca_pem` (the contents of the file the key `ca_key` names, which the
    /// summary shows).
    pub fn new(
        public_roots: bool,
        ca_pem: Option<&[u8]>,
        ca_key: &str,
    ) -> Result<ClientTls, TlsError> {
        let mut roots = RootCertStore::empty();
        let mut parts = Vec::new();
        if public_roots {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            parts.push("public roots".to_owned());
        }
        if let Some(pem) = ca_pem {
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsError::Pem(e.to_string()))?;
            if certs.is_empty() {
                return Err(TlsError::NoCertificates);
            }
            for (i, cert) in certs.iter().enumerate() {
                roots
                    .add(cert.clone())
                    .map_err(|e| TlsError::BadCertificate {
                        index: i + 1,
                        reason: e.to_string(),
                    })?;
            }
            parts.push(format!("{} from {ca_key}", certs.len()));
        }
        if roots.is_empty() {
            return Err(TlsError::NoRoots);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ClientTls {
            config: Arc::new(config),
            summary: parts.join(" + ").into(),
        })
    }

    /// The public web roots alone (what `vendor_tls` and `dialog` trust by default).
    pub fn public() -> ClientTls {
        ClientTls::new(true, None, "").expect("the public roots build a configuration")
    }

    /// The shared rustls configuration (a handle: clones share the session cache).
    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientTls({})", self.summary)
    }
}

/// What is trusted, as the startup log shows it.
impl fmt::Display for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_needs_something_to_trust_and_a_ca_file_with_certificates() {
        let public = ClientTls::public();
        assert_eq!(public.to_string(), "public roots");
        assert_eq!(public.config().alpn_protocols, vec![b"http/1.1".to_vec()]);
        let new = |public_roots, pem: Option<&[u8]>| ClientTls::new(public_roots, pem, "x.ca_file");
        assert!(matches!(new(false, None), Err(TlsError::NoRoots)));
        assert!(matches!(
            new(true, Some(b"just text\n")),
            Err(TlsError::NoCertificates)
        ));
        let key =
            b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIE\n-----END PRIVATE KEY-----\n";
        assert!(matches!(
            new(true, Some(key)),
            Err(TlsError::NoCertificates)
        ));
        let broken = b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n";
        assert!(matches!(new(true, Some(broken)), Err(TlsError::Pem(_))));
        let garbage = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            new(false, Some(garbage)),
            Err(TlsError::BadCertificate { index: 1, .. })
        ));
    }

    #[test]
    fn a_ca_file_alone_or_with_the_public_roots() {
        let ca = voicegate_testkit::tls::TestCa::new().ca_pem;
        let two = format!("{ca}{ca}");
        let only = ClientTls::new(false, Some(two.as_bytes()), "dialog.ca_file").unwrap();
        assert_eq!(only.to_string(), "2 from dialog.ca_file");
        let both = ClientTls::new(true, Some(ca.as_bytes()), "vendor_tls.ca_file").unwrap();
        assert_eq!(both.to_string(), "public roots + 1 from vendor_tls.ca_file");
        assert_eq!(
            format!("{both:?}"),
            "ClientTls(public roots + 1 from vendor_tls.ca_file)"
        );
        assert_eq!(both.config().alpn_protocols, vec![b"http/1.1".to_vec()]);
    }
}
