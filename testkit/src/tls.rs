//! A certificate authority made for one test: its CA certificate (for the client to trust) and a
//! server configuration whose certificate it signed, for local TLS servers such as a `wss://`
//! [`TestDialogApp`](crate::dialog_app::TestDialogApp).
//!
//! Generated at run time (rcgen, ring: the crypto the WebRTC stack already links), so no key or
//! certificate is checked in and none can expire.

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;

/// A fresh CA and a server certificate it signed.
pub struct TestCa {
    /// The CA certificate, PEM: what `dialog.ca_file` holds.
    pub ca_pem: String,
    /// A server configuration presenting a certificate for `localhost` and `127.0.0.1`, signed by
    /// the CA. It offers ALPN `h2` and `http/1.1`, as public servers do, so a client that offers
    /// `h2` for a WebSocket gets it (and cannot upgrade).
    pub server: Arc<ServerConfig>,
}

impl TestCa {
    /// Makes the CA and the server's certificate.
    pub fn new() -> TestCa {
        let ca_key = rcgen::KeyPair::generate().expect("ring generates an ECDSA key");
        let mut ca_params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("no names to check");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "voicegate test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .expect("a CA certificate signs");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let key = rcgen::KeyPair::generate().expect("ring generates an ECDSA key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("valid names");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &issuer)
            .expect("the CA signs the server certificate");

        let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .expect("the key matches the certificate");
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        TestCa {
            ca_pem: ca_cert.pem(),
            server: Arc::new(server),
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}
