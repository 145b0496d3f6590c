//! Test and benchmark equipment: a real WebRTC client peer (the browser's stand-in), a minimal
//! HTTP client for the signaling API, and audio measurement. No mocks: the peer speaks real
//! ICE/DTLS/SRTP and Opus to the server under test.

pub mod chat_server;
pub mod cut;
pub mod dialog_app;
pub mod http;
pub mod peer;
pub mod speech_server;

pub use peer::{ClientPeer, Received};
