//! voicegate's WebRTC shell.
//!
//! The thin layer between the pure cores and webrtc-rs 0.21: the one UDP port all calls share
//! ([`mux`]), and a call's peer connection with its RTP in and out ([`peer`]). It knows nothing of
//! actors: events leave through a callback, and every method is a plain future the actor layer
//! runs on a call's media worker.

mod loss;
pub mod mux;
pub mod peer;

pub use mux::{MuxError, Receiver};
pub use peer::{
    IcePatch, MediaPlane, PatchError, Peer, PeerError, PeerEvent, PeerEvents, PeerState, RtpWriter,
};
pub use rtc::data_channel::RTCDataChannelState as DataChannelState;
pub use webrtc::data_channel::{DataChannel, DataChannelEvent};
pub use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use voicegate_core::ice::{IceServer, IceTimers};

/// Settings of the media plane, validated.
#[derive(Debug, Clone)]
pub struct MediaSettings {
    /// Address of the shared UDP socket.
    pub bind: SocketAddr,
    /// Addresses advertised instead of the bound one (NAT 1:1).
    pub public_ips: Vec<IpAddr>,
    /// STUN/TURN servers for our own gathering.
    pub ice_servers: Vec<IceServer>,
    /// Media worker threads.
    pub workers: usize,
    /// Longest wait for ICE gathering.
    pub gather_timeout: Duration,
    /// ICE liveness: when a silent caller is `disconnected`, when it has `failed`, and how
    /// often we check consent.
    pub ice_timers: IceTimers,
    /// Limits of the shared port.
    pub limits: mux::MuxLimits,
    /// Candidates a caller may trickle into one ICE session (`PATCH`es between restarts,
    /// together): `media.max_remote_candidates`, as for an offer.
    pub max_trickled_candidates: usize,
}
