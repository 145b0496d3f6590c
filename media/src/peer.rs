//! One call's peer connection: built on the shared port, answered non-trickle, closed for sure.
//!
//! The answer flow is the one that works with webrtc 0.21: set the remote offer, add our local
//! track, create and set the answer, wait for gathering with a bounded timeout, then read the
//! local description and rewrite its host candidates to the shared port and the advertised
//! addresses. Only Opus is registered (PT 111, 48000/2, `minptime=10;useinbandfec=1`, with
//! `transport-cc` and `nack` feedback), with RTCP reports, NACK and TWCC interceptors; mDNS is
//! off (a server has real addresses; browsers' `.local` candidates still connect as
//! peer-reflexive).
//!
//! Events from the connection's driver (state changes, the remote track) leave through the
//! [`PeerEvents`] callback, which must not block: it runs on the driver task.

use crate::loss::{LossWatch, ReportedLoss};
use crate::mux::{MuxError, MuxRuntime, UdpMux};
use bytes::Bytes;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::{Registry, Slot};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_nack, configure_rtcp_reports, configure_twcc,
};
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_TELEPHONE_EVENT, MediaEngine,
};
use rtc::peer_connection::transport::RTCDtlsTransportState;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use secrecy::ExposeSecret;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use voicegate_core::ice::IceTimers;
use voicegate_core::random;
use voicegate_core::sdpfrag::IceFragment;
use voicegate_core::timeline::Stamp;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateInit, RTCIceGatheringState, RTCIceServer, RTCPeerConnectionState,
    RTCSessionDescription, SettingEngineBuilder,
};
use webrtc::rtp_transceiver::RtpSender;

/// The payload type we register for Opus; browsers offer 111 too.
pub const OPUS_PT: u8 = 111;
/// The payload type we register for telephone-event/8000 (RFC 4733); Chrome offers 126.
pub const DTMF_PT: u8 = 126;

/// ICE: pause between connectivity checks (the 200 ms default alone made connects take 210 ms).
const ICE_CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// ICE: checks per candidate pair, keeping the default 1.4 s of trying.
const ICE_MAX_CHECKS: u16 = 28;
/// The placeholder the driver binds; the mux replaces the socket (see [`crate::mux`]).
const PLACEHOLDER_BIND: &str = "127.0.0.1:0";
/// Where the loss watch sits in the interceptor chain: after the stock ones (it only looks).
const LOSS_WATCH_SLOT: Slot = Slot::Custom(14_000);

/// What a peer connection reports to its owner.
#[derive(Clone)]
pub enum PeerEvent {
    /// The connection state changed.
    State(PeerState),
    /// The caller's audio track arrived; drain it with [`TrackRemote::poll`].
    Track(Arc<dyn TrackRemote>),
    /// The browser opened a data channel.
    DataChannel(Arc<dyn webrtc::data_channel::DataChannel>),
}

impl std::fmt::Debug for PeerEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerEvent::State(s) => write!(f, "State({s:?})"),
            PeerEvent::Track(_) => f.write_str("Track"),
            PeerEvent::DataChannel(_) => f.write_str("DataChannel"),
        }
    }
}

/// The connection states we act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// ICE/DTLS in progress.
    Connecting,
    /// Media can flow.
    Connected,
    /// No traffic for a while; may recover.
    Disconnected,
    /// Gave up; the call must end.
    Failed,
    /// Closed.
    Closed,
}

/// The callback that receives [`PeerEvent`]s; called on the driver task, must not block.
pub type PeerEvents = Arc<dyn Fn(PeerEvent) + Send + Sync>;

/// Why a peer connection could not be set up, or could not send.
///
/// Two kinds, told apart by [`PeerError::is_negotiation`]: the caller's offer was refused (the
/// HTTP edge answers 400 with the text), or our side failed (a 500; the text is logged, never
/// sent). Each variant names the step that failed; the WebRTC stack's error is its source and
/// is also shown after the step, as the edge logs only the top-level text.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The WebRTC stack could not parse or apply the offer (a malformed or unsupported offer).
    #[error("offer: {0}")]
    Offer(#[source] webrtc::error::Error),
    /// The WebRTC stack could not answer the offer (nothing in it we can take).
    #[error("answer: {0}")]
    Answer(#[source] webrtc::error::Error),
    /// Registering our codecs or interceptors failed: a bug in our setup.
    #[error("media engine: {0}")]
    MediaEngine(#[source] webrtc::error::Error),
    /// The peer connection could not be built (its driver or sockets did not start).
    #[error("build peer connection: {0}")]
    Build(#[source] webrtc::error::Error),
    /// Our audio track could not be added.
    #[error("add track: {0}")]
    AddTrack(#[source] webrtc::error::Error),
    /// Our answer could not be applied.
    #[error("set local description: {0}")]
    SetLocalDescription(#[source] webrtc::error::Error),
    /// The stack applied our answer but returned none: a bug in the stack.
    #[error("no local description after answering")]
    NoLocalDescription,
    /// The connection's driver bound no socket through our runtime, so there is nothing to
    /// rewrite the candidates to (see [`crate::mux`]).
    #[error("the connection bound no UDP socket")]
    NoSocket,
    /// The negotiated send parameters could not be read.
    #[error("sender parameters: {0}")]
    SenderParameters(#[source] webrtc::error::Error),
    /// A packet could not be written to our track (the connection is closing or closed).
    #[error("write rtp: {0}")]
    WriteRtp(#[source] webrtc::error::Error),
}

impl PeerError {
    /// Whether the caller's offer was refused (its fault), as opposed to our side failing.
    pub fn is_negotiation(&self) -> bool {
        matches!(self, PeerError::Offer(_) | PeerError::Answer(_))
    }
}

/// Everything a call's peer connections share: the port, the advertised addresses, ICE servers.
pub struct MediaPlane {
    mux: Arc<UdpMux>,
    /// Addresses put into our host candidates.
    advertised: Vec<IpAddr>,
    ice_servers: Vec<RTCIceServer>,
    gather_timeout: Duration,
    /// When a silent caller counts as disconnected and as gone (see [`IceTimers`]).
    ice_timers: IceTimers,
    /// Candidates one ICE session may be trickled.
    max_trickled: usize,
}

impl MediaPlane {
    /// Binds the shared port, hands its receive side to `receive` (which starts the loop where
    /// it should run) and works out which addresses to advertise.
    pub fn start(
        settings: &crate::MediaSettings,
        receive: impl FnOnce(crate::Receiver) -> Result<(), MuxError>,
    ) -> Result<Arc<Self>, MuxError> {
        let mux = UdpMux::bind_with(settings.bind, settings.limits, receive)?;
        let advertised = advertised_addresses(settings.bind.ip(), &settings.public_ips);
        let ice_servers = settings
            .ice_servers
            .iter()
            .map(|s| RTCIceServer {
                urls: vec![s.url.clone()],
                username: s.username.expose_secret().to_owned(),
                credential: s.credential.expose_secret().to_owned(),
            })
            .collect();
        Ok(Arc::new(MediaPlane {
            mux,
            advertised,
            ice_servers,
            gather_timeout: settings.gather_timeout,
            ice_timers: settings.ice_timers,
            max_trickled: settings.max_trickled_candidates,
        }))
    }

    /// The shared UDP socket.
    pub fn mux(&self) -> &Arc<UdpMux> {
        &self.mux
    }

    /// Where the host candidates point: the advertised addresses with the shared port.
    pub fn candidate_addresses(&self) -> Vec<SocketAddr> {
        let port = self.mux.local_addr().port();
        self.advertised
            .iter()
            .map(|ip| SocketAddr::new(*ip, port))
            .collect()
    }
}

/// `public_ips` if given; else the bound address, or every usable interface for a wildcard
/// bind (loopback when nothing else is up).
fn advertised_addresses(bind: IpAddr, public_ips: &[IpAddr]) -> Vec<IpAddr> {
    if !public_ips.is_empty() {
        return public_ips.to_vec();
    }
    if !bind.is_unspecified() {
        return vec![bind];
    }
    let mut out: Vec<IpAddr> = rtc::shared::ifaces::ifaces()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| i.addr.map(|a| a.ip()))
        .filter(|ip| ip.is_ipv4() == bind.is_ipv4())
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified() && !is_link_local(ip))
        .collect();
    out.dedup();
    if out.is_empty() {
        out.push(if bind.is_ipv4() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
        });
    }
    out
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// One call's connection, answered and ready for media.
pub struct Peer {
    pc: Arc<dyn PeerConnection>,
    sender: Arc<dyn RtpSender>,
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    /// What the browser reports of our audio's loss.
    loss: ReportedLoss,
    /// Held while a `PATCH` (trickle or ICE restart) changes the descriptions: one at a time.
    /// It holds the candidates trickled into the current ICE session: the stack keeps every one
    /// (and pairs and checks each), so a caller may not add them without end.
    renegotiation: tokio::sync::Mutex<usize>,
    /// Keeps the connection's mux route alive with the connection.
    _runtime: Arc<MuxRuntime>,
}

/// What a `PATCH` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IcePatch {
    /// Candidates were added (trickle); the ICE session is unchanged.
    Trickled,
    /// ICE restarted: our new credentials and candidates, for the reply.
    Restarted(IceFragment),
}

/// Why a `PATCH` was not applied.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// `If-Match` names another ICE session (RFC 9725 §4.3.1).
    #[error("If-Match does not name the call's current ICE session ({current})")]
    PreconditionFailed {
        /// The current entity tag.
        current: String,
    },
    /// The fragment restarts ICE, and the call may not restart again.
    #[error("the call may not restart ICE again")]
    RestartRefused,
    /// The fragment's candidates would take the ICE session past its limit.
    #[error(
        "{given} more candidates would make {total} in this ICE session, over {limit} (media.max_remote_candidates); restart ICE for a new session"
    )]
    TooManyCandidates {
        /// Candidates in the fragment.
        given: usize,
        /// What the session would hold with them.
        total: usize,
        /// The limit.
        limit: usize,
    },
    /// The stack refused the change.
    #[error(transparent)]
    Peer(#[from] PeerError),
}

/// The driver's callbacks, forwarded.
struct Handler {
    events: PeerEvents,
    gathering: watch::Sender<bool>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathering.send(true);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let s = match state {
            RTCPeerConnectionState::Connected => PeerState::Connected,
            RTCPeerConnectionState::Disconnected => PeerState::Disconnected,
            RTCPeerConnectionState::Failed => PeerState::Failed,
            RTCPeerConnectionState::Closed => PeerState::Closed,
            _ => PeerState::Connecting,
        };
        (self.events)(PeerEvent::State(s));
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        (self.events)(PeerEvent::Track(track));
    }

    async fn on_data_channel(&self, channel: Arc<dyn webrtc::data_channel::DataChannel>) {
        (self.events)(PeerEvent::DataChannel(channel));
    }
}

impl Peer {
    /// Answers `offer_sdp`. Returns the connection and the answer SDP with its candidates.
    pub async fn answer(
        engine: &MediaPlane,
        offer_sdp: &str,
        events: PeerEvents,
    ) -> Result<(Peer, String), PeerError> {
        let runtime = engine.mux.connection_runtime();
        let (media, registry) = media_engine().map_err(PeerError::MediaEngine)?;
        let ssrc = random::u32();
        let loss = ReportedLoss::default();
        let registry = registry.with(LOSS_WATCH_SLOT, LossWatch::new(ssrc, loss.clone()));
        let settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .with_ice_timeouts(
                Some(engine.ice_timers.disconnected()),
                Some(engine.ice_timers.failed()),
                Some(engine.ice_timers.keepalive()),
            )
            .with_ice_connection_attempts(Some(ICE_CHECK_INTERVAL), Some(ICE_MAX_CHECKS))
            // No pinned credentials: the stack makes them, and new ones at each ICE restart
            // (pinned ones would be reused by a restart); the mux learns them from each answer.
            .build();
        let (gathering_tx, mut gathering_rx) = watch::channel(false);
        let handler = Arc::new(Handler {
            events,
            gathering: gathering_tx,
        });
        let pc = PeerConnectionBuilder::new()
            .with_configuration(
                RTCConfigurationBuilder::new()
                    .with_ice_servers(engine.ice_servers.clone())
                    .build(),
            )
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_setting_engine(settings)
            .with_handler(handler)
            .with_udp_addrs(vec![PLACEHOLDER_BIND])
            .with_runtime(runtime.clone())
            .build()
            .await
            .map_err(PeerError::Build)?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);

        // From here on, every failure closes the connection before returning.
        let result = async {
            // rtc 0.21.1 matches codecs without looking at the clock rate: an offer with both
            // telephone-event/48000 and /8000 (Chrome's) would map both to our one
            // registration and answer a duplicate payload type. Only the 8 kHz one is kept.
            let offer_sdp = voicegate_core::sdp::drop_payload_types(offer_sdp, |name, clock| {
                name.eq_ignore_ascii_case("telephone-event") && clock != 8000
            });
            let offer = RTCSessionDescription::offer(offer_sdp).map_err(PeerError::Offer)?;
            pc.set_remote_description(offer)
                .await
                .map_err(PeerError::Offer)?;

            let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                "voicegate".to_owned(),
                format!("voicegate-audio-{ssrc:08x}"),
                "voicegate-audio".to_owned(),
                RtpCodecKind::Audio,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    codec: opus_codec(),
                    ..Default::default()
                }],
            )));
            let sender = pc
                .add_track(track.clone() as Arc<dyn TrackLocal>)
                .await
                .map_err(PeerError::AddTrack)?;
            let answer = pc.create_answer(None).await.map_err(PeerError::Answer)?;
            pc.set_local_description(answer)
                .await
                .map_err(PeerError::SetLocalDescription)?;

            // Non-trickle: the answer carries every candidate, so wait for gathering, bounded
            // (an unreachable STUN server must not hold the offer for 10 s).
            let gathered =
                tokio::time::timeout(engine.gather_timeout, gathering_rx.wait_for(|done| *done))
                    .await
                    .is_ok();
            if !gathered {
                tracing::warn!(
                    timeout_ms = engine.gather_timeout.as_millis() as u64,
                    "ICE gathering incomplete; answering with the candidates found so far"
                );
            }
            let answer = local_answer(engine, pc.as_ref(), &runtime).await?;
            Ok((sender, track, ssrc, answer))
        }
        .await;

        match result {
            Ok((sender, track, ssrc, answer)) => Ok((
                Peer {
                    pc,
                    sender,
                    track,
                    ssrc,
                    loss,
                    renegotiation: tokio::sync::Mutex::new(0),
                    _runtime: runtime,
                },
                answer,
            )),
            Err(e) => {
                let _ = pc.close().await;
                Err(e)
            }
        }
    }

    /// The entity tag of the current ICE session, for `ETag` (changes at each ICE restart).
    pub async fn ice_etag(&self) -> Option<String> {
        Some(entity_tag(&self.pc.local_description().await?.sdp))
    }

    /// Applies a `PATCH` fragment from the caller (RFC 9725 §4.3): new credentials restart ICE
    /// (the connection, its DTLS session and its tracks carry on; our answer has new
    /// credentials, which the mux now routes by); otherwise its candidates are added.
    /// `if_match` is the request's `If-Match`, checked against the current session; a restart
    /// is refused when `may_restart` is false.
    pub async fn patch_ice(
        &self,
        engine: &MediaPlane,
        frag: &IceFragment,
        if_match: Option<&str>,
        may_restart: bool,
    ) -> Result<IcePatch, PatchError> {
        let mut trickled = self.renegotiation.lock().await;
        let local = self
            .pc
            .local_description()
            .await
            .ok_or(PeerError::NoLocalDescription)?;
        let current = entity_tag(&local.sdp);
        if let Some(condition) = if_match
            && !voicegate_core::sdpfrag::if_match_allows(condition, &current)
        {
            return Err(PatchError::PreconditionFailed { current });
        }
        let remote = self
            .pc
            .remote_description()
            .await
            .ok_or(PeerError::NoLocalDescription)?;
        let theirs = IceFragment::from_sdp(&remote.sdp);
        let restart = frag.is_restart(
            theirs.ufrag.as_deref().unwrap_or(""),
            theirs.pwd.as_deref().unwrap_or(""),
        );
        if !restart {
            let total = *trickled + frag.candidates.len();
            if total > engine.max_trickled {
                return Err(PatchError::TooManyCandidates {
                    given: frag.candidates.len(),
                    total,
                    limit: engine.max_trickled,
                });
            }
            let mid = frag.mid.clone().or(theirs.mid);
            for c in &frag.candidates {
                let candidate = RTCIceCandidateInit {
                    candidate: format!("candidate:{c}"),
                    sdp_mid: mid.clone(),
                    sdp_mline_index: Some(0),
                    ..Default::default()
                };
                self.pc
                    .add_ice_candidate(candidate)
                    .await
                    .map_err(PeerError::Offer)?;
                *trickled += 1;
            }
            return Ok(IcePatch::Trickled);
        }
        if !may_restart {
            return Err(PatchError::RestartRefused);
        }
        let offer =
            RTCSessionDescription::offer(voicegate_core::sdpfrag::with_ice(&remote.sdp, frag))
                .map_err(PeerError::Offer)?;
        self.pc
            .set_remote_description(offer)
            .await
            .map_err(PeerError::Offer)?;
        let answer = self
            .pc
            .create_answer(None)
            .await
            .map_err(PeerError::Answer)?;
        self.pc
            .set_local_description(answer)
            .await
            .map_err(PeerError::SetLocalDescription)?;
        let answer = local_answer(engine, self.pc.as_ref(), &self._runtime).await?;
        // A new session: its trickle starts from nothing.
        *trickled = 0;
        Ok(IcePatch::Restarted(IceFragment::from_sdp(&answer)))
    }

    /// The RTP writer for our audio, once negotiation has bound the track.
    pub async fn writer(&self) -> Result<RtpWriter, PeerError> {
        let params = self
            .sender
            .get_parameters()
            .await
            .map_err(PeerError::SenderParameters)?;
        let pt = params
            .rtp_parameters
            .codecs
            .iter()
            .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(MIME_TYPE_OPUS))
            .map(|c| c.payload_type)
            .unwrap_or(OPUS_PT);
        Ok(RtpWriter {
            track: self.track.clone(),
            ssrc: self.ssrc,
            payload_type: pt,
        })
    }

    /// Whether the browser closed the connection (DTLS close_notify). The connection state does
    /// not change on close_notify, and ICE would take seconds to notice; this reads within ~10 ms
    /// of the browser's `close()`.
    pub async fn transport_closed(&self) -> bool {
        match self.sender.transport().await {
            Ok(Some(t)) => matches!(
                t.state().await,
                Ok(RTCDtlsTransportState::Closed | RTCDtlsTransportState::Failed)
            ),
            _ => false,
        }
    }

    /// Whether an authenticated connectivity check from the caller has arrived (see
    /// [`MuxRuntime::authenticated`]).
    pub fn authenticated(&self) -> bool {
        self._runtime.authenticated()
    }

    /// The fraction (0.0 to 1.0) of our audio packets the browser last reported lost (RTCP
    /// receiver reports); `None` before its first report.
    pub fn downlink_loss(&self) -> Option<f64> {
        self.loss.get()
    }

    /// Closes the connection: its driver task ends and its mux route is removed.
    pub async fn close(&self) {
        if let Err(e) = self.pc.close().await {
            tracing::debug!(error = %e, "peer connection close reported an error");
        }
    }
}

/// Our local description as the caller gets it: host candidates rewritten to the shared port;
/// the mux learns the (new) local credentials it carries.
async fn local_answer(
    engine: &MediaPlane,
    pc: &dyn PeerConnection,
    runtime: &MuxRuntime,
) -> Result<String, PeerError> {
    let local = pc
        .local_description()
        .await
        .ok_or(PeerError::NoLocalDescription)?;
    let placeholder = runtime.placeholder_addr().ok_or(PeerError::NoSocket)?;
    let ours = IceFragment::from_sdp(&local.sdp);
    let (Some(ufrag), Some(pwd)) = (&ours.ufrag, &ours.pwd) else {
        return Err(PeerError::NoLocalDescription);
    };
    runtime.set_credentials(ufrag, pwd);
    Ok(voicegate_core::sdp::rewrite_host_candidates(
        &local.sdp,
        placeholder,
        &engine.candidate_addresses(),
    ))
}

/// The entity tag of an ICE session (RFC 9725 §4.3.1): our local ufrag, which every restart
/// changes.
fn entity_tag(local_sdp: &str) -> String {
    let ufrag = IceFragment::from_sdp(local_sdp).ufrag.unwrap_or_default();
    format!("\"{ufrag}\"")
}

/// Sends our RTP packets with the negotiated payload type and our SSRC.
#[derive(Clone)]
pub struct RtpWriter {
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    payload_type: u8,
}

impl RtpWriter {
    /// Writes one packet. Waits only when the driver's queue is full (back-pressure).
    pub async fn write(&self, stamp: Stamp, payload: Bytes) -> Result<(), PeerError> {
        let packet = rtp::Packet {
            header: rtp::header::Header {
                version: 2,
                marker: stamp.marker,
                payload_type: self.payload_type,
                sequence_number: stamp.seq,
                timestamp: stamp.timestamp,
                ssrc: self.ssrc,
                ..Default::default()
            },
            payload,
        };
        self.track
            .write_rtp(packet)
            .await
            .map_err(PeerError::WriteRtp)
    }
}

/// Opus as we register and send it.
pub fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: voicegate_core::frame::RTP_CLOCK,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        // Feedback goes on the codec itself: configure_nack() only adds nack to video codecs.
        rtcp_feedback: vec![
            RTCPFeedback {
                typ: "transport-cc".into(),
                parameter: String::new(),
            },
            RTCPFeedback {
                typ: "nack".into(),
                parameter: String::new(),
            },
        ],
    }
}

/// The codecs and interceptors every call's connection is built with (`voicegate-bench sansio`
/// builds its sans-IO peers from the same).
pub fn media_engine() -> webrtc::error::Result<(MediaEngine, Registry)> {
    let mut media = MediaEngine::default();
    media.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: opus_codec(),
            payload_type: OPUS_PT,
        },
        RtpCodecKind::Audio,
    )?;
    // Browser DTMF (RTCDTMFSender.insertDTMF).
    media.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: MIME_TYPE_TELEPHONE_EVENT.to_owned(),
                clock_rate: 8000,
                channels: 0,
                sdp_fmtp_line: "0-16".to_owned(),
                rtcp_feedback: vec![],
            },
            payload_type: DTMF_PT,
        },
        RtpCodecKind::Audio,
    )?;
    let registry = Registry::new();
    let registry = configure_nack(registry, &mut media);
    let registry = configure_rtcp_reports(registry);
    let registry = configure_twcc(registry, &mut media)?;
    Ok((media, registry))
}
