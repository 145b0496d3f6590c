//! voicegate's pure cores.
//!
//! Everything that can be computed without a socket or a clock lives here, as plain functions
//! and state machines that take time as an argument. The actor layer owns the I/O and calls in.
//! This crate depends on neither tokio, actix nor webrtc; keep it that way, so every rule here is
//! tested deterministically and fast, and can run under `catch_unwind`.

pub mod admission;
pub mod call_id;
pub mod codec;
pub mod cors;
pub mod denoise;
pub mod dialog;
pub mod dtmf;
pub mod frame;
pub mod ice;
pub mod jitter;
pub mod json_keys;
pub mod listen;
pub mod noise;
pub mod pacer;
pub mod page;
pub mod pcm;
pub mod random;
pub mod recording;
pub mod resample;
pub mod restart;
pub mod sdp;
pub mod sdpfrag;
pub mod session;
pub mod speech;
pub mod stun;
pub mod text;
pub mod timeline;
pub mod token;
pub mod tone;
pub mod turn;
pub mod untrusted;
pub mod wav;
pub mod ws_frame;
