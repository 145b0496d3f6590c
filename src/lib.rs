//! voicegate: terminates one-to-one WebRTC voice calls between a browser and an AI.
//!
//! This crate is the service's edge: configuration ([`settings`]), the HTTP API and page
//! ([`http`]), and startup ([`server`]). The supervision tree lives in `voicegate-actors`, the
//! WebRTC shell in `voicegate-media`, and the pure cores in `voicegate-core`.

pub mod demo;
pub mod http;
pub mod llm;
pub mod logging;
pub mod server;
pub mod settings;
