//! A WebRTC client peer that behaves like a browser towards voicegate: it offers Opus (PT 111,
//! with in-band FEC, plus `telephone-event` as Chrome does), waits for its ICE gathering, posts
//! the offer to the real HTTP API, applies the answer and then sends and receives real Opus RTP.
//! Every received packet is recorded with its arrival time, so tests can count frames, decode the
//! audio and measure timing.

use crate::cut::CuttableRuntime;
use crate::http;
use anyhow::{Context as _, bail};
use bytes::Bytes;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_rtcp_reports, configure_twcc,
};
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_TELEPHONE_EVENT, MediaEngine,
};
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use voicegate_core::codec::{DownlinkEncoder, EncoderSettings, UplinkDecoder, UplinkSettings};
use voicegate_core::frame::{self, RTP_CLOCK, RTP_TICKS_PER_FRAME, SPEECH_RATE};
use voicegate_core::random;
use voicegate_core::sdpfrag::IceFragment;
use voicegate_core::tone::Tone;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription, SettingEngineBuilder,
};

/// One received RTP packet.
#[derive(Debug, Clone)]
pub struct Received {
    /// When it arrived.
    pub at: Instant,
    /// When the kernel received it, where the socket could say (without the time the client's
    /// own WebRTC stack and tasks took to hand it over).
    pub kernel_at: Option<Instant>,
    /// Sequence number.
    pub seq: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// Marker bit.
    pub marker: bool,
    /// Payload type.
    pub payload_type: u8,
    /// Opus payload.
    pub payload: Bytes,
}

/// The page's data channel of a call placed with [`ClientPeer::call_with_page`], as
/// `web/voicegate.js` opens it (`voicegate`, ordered): what the server sent on it, in order.
pub struct PageChannel {
    channel: Arc<dyn DataChannel>,
    open: watch::Receiver<bool>,
    received: Arc<Mutex<Vec<String>>>,
}

impl PageChannel {
    /// Opens the channel on `pc` (before the offer) and starts reading it.
    async fn create(pc: &Arc<dyn PeerConnection>) -> anyhow::Result<PageChannel> {
        let channel = pc.create_data_channel("voicegate", None).await?;
        let (open_tx, open) = watch::channel(false);
        let received = Arc::new(Mutex::new(Vec::new()));
        let (ch, rx) = (channel.clone(), received.clone());
        tokio::spawn(async move {
            while let Some(ev) = ch.poll().await {
                match ev {
                    DataChannelEvent::OnOpen => {
                        let _ = open_tx.send(true);
                    }
                    DataChannelEvent::OnMessage(m) => rx
                        .lock()
                        .expect("no panic while holding the lock")
                        .push(String::from_utf8_lossy(&m.data).into_owned()),
                    DataChannelEvent::OnClose => break,
                    _ => {}
                }
            }
        });
        Ok(PageChannel {
            channel,
            open,
            received,
        })
    }

    /// Waits until the channel is open.
    pub async fn wait_open(&self, within: Duration) -> anyhow::Result<()> {
        let mut open = self.open.clone();
        tokio::time::timeout(within, open.wait_for(|o| *o))
            .await
            .context("the page channel did not open")??;
        Ok(())
    }

    /// Sends a text message.
    pub async fn send_text(&self, text: &str) -> anyhow::Result<()> {
        self.channel.send_text(text).await?;
        Ok(())
    }

    /// Sends a binary message.
    pub async fn send_binary(&self, data: &[u8]) -> anyhow::Result<()> {
        self.channel.send(bytes::BytesMut::from(data)).await?;
        Ok(())
    }

    /// Every text the server sent so far, in order.
    pub fn received(&self) -> Vec<String> {
        self.received
            .lock()
            .expect("no panic while holding the lock")
            .clone()
    }
}

struct Handler {
    gathering: watch::Sender<bool>,
    state: watch::Sender<RTCPeerConnectionState>,
    received: Arc<Mutex<Vec<Received>>>,
    arrivals: Arc<crate::cut::Arrivals>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, s: RTCIceGatheringState) {
        if s == RTCIceGatheringState::Complete {
            let _ = self.gathering.send(true);
        }
    }

    async fn on_connection_state_change(&self, s: RTCPeerConnectionState) {
        let _ = self.state.send(s);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let received = self.received.clone();
        let arrivals = self.arrivals.clone();
        // Drain continuously on a task of its own; the callback must not block the driver.
        tokio::spawn(async move {
            while let Some(ev) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(p) = ev {
                    received
                        .lock()
                        .expect("no panics while holding")
                        .push(Received {
                            at: Instant::now(),
                            kernel_at: arrivals.take(p.header.sequence_number),
                            seq: p.header.sequence_number,
                            timestamp: p.header.timestamp,
                            marker: p.header.marker,
                            payload_type: p.header.payload_type,
                            payload: p.payload,
                        });
                }
            }
        });
    }
}

/// The client side of one call.
pub struct ClientPeer {
    pc: Arc<dyn PeerConnection>,
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    state: watch::Receiver<RTCPeerConnectionState>,
    received: Arc<Mutex<Vec<Received>>>,
    /// Next (sequence number, timestamp) to send; continuous for the whole call.
    next: Mutex<(u16, u32)>,
    /// The offer we made.
    pub offer: String,
    /// The call id the server gave us.
    pub call_id: String,
    /// The call's resource URL from the reply's `Location` (a path on the server).
    pub location: Option<String>,
    /// The server's answer.
    pub answer: String,
    /// Time from the offer POST to its reply.
    pub answer_time: Duration,
    /// When the offer was posted.
    pub offered_at: Instant,
    /// The ICE session's entity tag, from the last reply that gave one (`ETag`).
    pub etag: Mutex<Option<String>>,
    network: Arc<CuttableRuntime>,
    /// The page's data channel, when the call was placed with one.
    page: Option<PageChannel>,
}

impl ClientPeer {
    /// Builds a peer bound to 127.0.0.1 and makes a gathered offer (not yet sent).
    pub async fn offer() -> anyhow::Result<(
        Arc<dyn PeerConnection>,
        Arc<TrackLocalStaticRTP>,
        u32,
        watch::Receiver<RTCPeerConnectionState>,
        Arc<Mutex<Vec<Received>>>,
        String,
    )> {
        let (pc, track, ssrc, state, received, offer, _) =
            Self::offer_on(Arc::new(CuttableRuntime::default()), false).await?;
        Ok((pc, track, ssrc, state, received, offer))
    }

    #[allow(clippy::type_complexity)]
    async fn offer_on(
        runtime: Arc<CuttableRuntime>,
        with_page: bool,
    ) -> anyhow::Result<(
        Arc<dyn PeerConnection>,
        Arc<TrackLocalStaticRTP>,
        u32,
        watch::Receiver<RTCPeerConnectionState>,
        Arc<Mutex<Vec<Received>>>,
        String,
        Option<PageChannel>,
    )> {
        let (media, registry) = media_engine()?;
        let settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .with_ice_connection_attempts(Some(Duration::from_millis(50)), Some(28))
            // An ICE restart binds a new socket, so the caller comes back from a new address,
            // as after a change of network.
            .with_discard_local_candidates_during_ice_restart(true)
            .build();
        let (gathering_tx, mut gathering_rx) = watch::channel(false);
        let (state_tx, state_rx) = watch::channel(RTCPeerConnectionState::New);
        let received = Arc::new(Mutex::new(Vec::new()));
        let pc = PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_setting_engine(settings)
            .with_handler(Arc::new(Handler {
                gathering: gathering_tx,
                state: state_tx,
                received: received.clone(),
                arrivals: runtime.arrivals(),
            }))
            .with_udp_addrs(vec!["127.0.0.1:0"])
            .with_runtime(runtime)
            .build()
            .await?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let ssrc = random::u32();
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            "client".into(),
            format!("client-audio-{ssrc:08x}"),
            "client-audio".into(),
            RtpCodecKind::Audio,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                // No codec here: it would become a codec preference and strip telephone-event.
                ..Default::default()
            }],
        )));
        pc.add_track(track.clone() as Arc<dyn TrackLocal>).await?;
        let page = if with_page {
            Some(PageChannel::create(&pc).await?)
        } else {
            None
        };
        let offer = pc.create_offer(None).await?;
        pc.set_local_description(offer).await?;
        tokio::time::timeout(Duration::from_secs(5), gathering_rx.wait_for(|d| *d))
            .await
            .context("client ICE gathering timed out")??;
        let offer = pc
            .local_description()
            .await
            .context("no local description")?
            .sdp;
        Ok((pc, track, ssrc, state_rx, received, offer, page))
    }

    /// Places a call against the server at `addr` through `POST {path}` (e.g.
    /// `/webrtc/v1/offer?mode=echo`), applies the answer and returns the peer (not yet
    /// necessarily connected).
    pub async fn call(addr: SocketAddr, path: &str) -> anyhow::Result<ClientPeer> {
        Self::call_with_headers(addr, path, &[]).await
    }

    /// Places a call like [`ClientPeer::call`], sending extra `headers` with the offer (e.g.
    /// `X-Forwarded-For`, for a server that trusts this machine as a proxy).
    pub async fn call_with_headers(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<ClientPeer> {
        Self::place(addr, path, headers, OfferForm::Json, false).await
    }

    /// Places a call like [`ClientPeer::call`], with the page's data channel open as
    /// `web/voicegate.js` opens it ([`ClientPeer::page`]).
    pub async fn call_with_page(addr: SocketAddr, path: &str) -> anyhow::Result<ClientPeer> {
        Self::place(addr, path, &[], OfferForm::Json, true).await
    }

    /// The page's data channel of a call placed with [`ClientPeer::call_with_page`].
    pub fn page(&self) -> Option<&PageChannel> {
        self.page.as_ref()
    }

    /// Places a call the way a WHIP client does: `POST {path}` with `Content-Type:
    /// application/sdp` and the bare offer SDP (plus `headers`), expecting `201 Created`, the
    /// answer SDP as the body and the call's resource URL in `Location`. The call id is the
    /// last segment of that URL.
    pub async fn call_sdp(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<ClientPeer> {
        Self::place(addr, path, headers, OfferForm::Sdp, false).await
    }

    /// Offers, posts the offer in `form`, applies the answer.
    async fn place(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        form: OfferForm,
        with_page: bool,
    ) -> anyhow::Result<ClientPeer> {
        let network = Arc::new(CuttableRuntime::default());
        let (pc, track, ssrc, state, received, offer, page) =
            Self::offer_on(network.clone(), with_page).await?;
        let offered_at = Instant::now();
        let res = match form {
            OfferForm::Json => {
                let body = serde_json::json!({"type": "offer", "sdp": offer});
                http::post_json_with(addr, path, headers, &body).await?
            }
            OfferForm::Sdp => {
                let mut all = vec![("Content-Type", "application/sdp")];
                all.extend_from_slice(headers);
                http::request(addr, "POST", path, &all, offer.as_bytes()).await?
            }
        };
        let answer_time = offered_at.elapsed();
        let expected = match form {
            OfferForm::Json => 200,
            OfferForm::Sdp => 201,
        };
        if res.status != expected {
            let _ = pc.close().await;
            bail!("offer refused: {} {}", res.status, res.text());
        }
        let (answer, call_id, location) = match form {
            OfferForm::Json => json_reply(&res)?,
            OfferForm::Sdp => sdp_reply(&res)?,
        };
        pc.set_remote_description(RTCSessionDescription::answer(answer.clone())?)
            .await?;
        Ok(ClientPeer {
            pc,
            track,
            ssrc,
            state,
            received,
            next: Mutex::new((random::u16(), random::u32())),
            offer,
            call_id,
            location,
            answer,
            answer_time,
            offered_at,
            etag: Mutex::new(res.header("etag").map(str::to_owned)),
            network,
            page,
        })
    }

    /// Restarts ICE as a browser does after a network change (`restartIce()`): a new offer with
    /// new credentials, from a new socket (a new address to the server), its fragment sent with
    /// `PATCH` to the call's `Location` on the server at `addr` with `If-Match` (the last ETag),
    /// and the server's fragment applied. Returns the server's fragment.
    pub async fn restart_ice(&self, addr: SocketAddr) -> anyhow::Result<String> {
        let location = self.location.clone().context("the call has no Location")?;
        let old_ufrag = IceFragment::from_sdp(&self.local_sdp().await?).ufrag;
        self.pc.restart_ice().await?;
        let offer = self.pc.create_offer(None).await?;
        self.pc.set_local_description(offer).await?;
        // Gathered when the new generation's credentials and a candidate are in place.
        let t0 = Instant::now();
        let ours = loop {
            let frag = IceFragment::from_sdp(&self.local_sdp().await?);
            if frag.ufrag != old_ufrag && !frag.candidates.is_empty() {
                break frag;
            }
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(5),
                "restart offer never gathered"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let if_match = self
            .etag
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "*".to_owned());
        let res = http::request(
            addr,
            "PATCH",
            &location,
            &[
                ("Content-Type", "application/trickle-ice-sdpfrag"),
                ("If-Match", &if_match),
            ],
            ours.to_sdpfrag().as_bytes(),
        )
        .await?;
        anyhow::ensure!(
            res.status == 200,
            "ICE restart refused: {} {}",
            res.status,
            res.text()
        );
        *self.etag.lock().unwrap_or_else(|p| p.into_inner()) =
            res.header("etag").map(str::to_owned);
        let theirs = IceFragment::parse(&res.text(), 64)?;
        let remote = self
            .pc
            .remote_description()
            .await
            .context("no remote description")?;
        let answer = voicegate_core::sdpfrag::with_ice(&remote.sdp, &theirs);
        self.pc
            .set_remote_description(RTCSessionDescription::answer(answer)?)
            .await?;
        Ok(res.text())
    }

    /// Our current local description (after [`ClientPeer::restart_ice`], the restart offer).
    pub async fn local_sdp(&self) -> anyhow::Result<String> {
        Ok(self
            .pc
            .local_description()
            .await
            .context("no local description")?
            .sdp)
    }

    /// Waits until connected; returns the time from the offer POST.
    pub async fn wait_connected(&self, within: Duration) -> anyhow::Result<Duration> {
        let mut state = self.state.clone();
        tokio::time::timeout(
            within,
            state.wait_for(|s| *s == RTCPeerConnectionState::Connected),
        )
        .await
        .context("client did not connect in time")??;
        Ok(self.offered_at.elapsed())
    }

    /// The connection state now.
    pub fn state(&self) -> RTCPeerConnectionState {
        *self.state.borrow()
    }

    /// Whether the connection is up now.
    pub fn is_connected(&self) -> bool {
        self.state() == RTCPeerConnectionState::Connected
    }

    /// Sends one Opus packet as the next 20 ms frame.
    pub async fn send(&self, payload: Bytes) -> anyhow::Result<()> {
        let (seq, ts) = {
            let mut n = self.next.lock().expect("no panics while holding");
            let cur = *n;
            *n = (
                cur.0.wrapping_add(1),
                cur.1.wrapping_add(RTP_TICKS_PER_FRAME),
            );
            cur
        };
        self.send_raw(seq, ts, payload).await
    }

    /// From now on every `every`-th RTP packet from the server is lost on the way (0: none), as
    /// on a lossy path; this peer's receiver reports tell the server.
    pub fn lose_downlink_every(&self, every: u32) {
        self.network.lose_every(every);
    }

    /// Lets one 20 ms frame go unsent, as if the network lost it (numbering moves on).
    pub fn skip_frame(&self) {
        let mut n = self.next.lock().expect("no panics while holding");
        *n = (n.0.wrapping_add(1), n.1.wrapping_add(RTP_TICKS_PER_FRAME));
    }

    /// Sends one packet with explicit numbering (for reordering and loss tests).
    pub async fn send_raw(&self, seq: u16, timestamp: u32, payload: Bytes) -> anyhow::Result<()> {
        let packet = rtp::Packet {
            header: rtp::header::Header {
                version: 2,
                payload_type: 111,
                sequence_number: seq,
                timestamp,
                ssrc: self.ssrc,
                ..Default::default()
            },
            payload,
        };
        self.track.write_rtp(packet).await?;
        Ok(())
    }

    /// Sends `frames` 20 ms frames of a `freq` Hz tone, Opus-encoded, paced in real time.
    pub async fn send_tone(&self, freq: f64, frames: usize) -> anyhow::Result<()> {
        let packets = opus_tone(freq, frames);
        let mut tick = tokio::time::interval(frame::FRAME);
        for p in packets {
            tick.tick().await;
            self.send(p).await?;
        }
        Ok(())
    }

    /// Sends `packets` as consecutive 20 ms frames, paced in real time.
    pub async fn send_paced(&self, packets: &[Bytes]) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(frame::FRAME);
        for p in packets {
            tick.tick().await;
            self.send(p.clone()).await?;
        }
        Ok(())
    }

    /// Sends one key press as RFC 4733 telephone-event packets (payload type `pt`) the way
    /// `insertDTMF` does: a few packets with a growing duration, then the end packet three times.
    pub async fn send_dtmf(&self, pt: u8, digit: char) -> anyhow::Result<()> {
        let code = match digit {
            '0'..='9' => digit as u8 - b'0',
            '*' => 10,
            '#' => 11,
            'A'..='D' => digit as u8 - b'A' + 12,
            other => anyhow::bail!("{other:?} is not a DTMF digit"),
        };
        let event_ts = { self.next.lock().expect("no panics while holding").1 };
        let mut tick = tokio::time::interval(frame::FRAME);
        for (i, end) in [false, false, false, false, true, true, true]
            .into_iter()
            .enumerate()
        {
            tick.tick().await;
            let duration = (160 * (i as u16 + 1).min(5)).to_be_bytes();
            let payload = Bytes::copy_from_slice(&[
                code,
                if end { 0x80 | 10 } else { 10 },
                duration[0],
                duration[1],
            ]);
            let seq = {
                let mut n = self.next.lock().expect("no panics while holding");
                let s = n.0;
                n.0 = s.wrapping_add(1);
                s
            };
            let packet = rtp::Packet {
                header: rtp::header::Header {
                    version: 2,
                    payload_type: pt,
                    marker: i == 0,
                    sequence_number: seq,
                    timestamp: event_ts,
                    ssrc: self.ssrc,
                    ..Default::default()
                },
                payload,
            };
            self.track.write_rtp(packet).await?;
        }
        // The audio clock moved on meanwhile.
        self.next.lock().expect("no panics while holding").1 =
            event_ts.wrapping_add(RTP_TICKS_PER_FRAME * 7);
        Ok(())
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .expect("no panics while holding")
            .clone()
    }

    /// How many packets were received so far.
    pub fn received_count(&self) -> usize {
        self.received.lock().expect("no panics while holding").len()
    }

    /// Closes the connection (the browser's `pc.close()`).
    pub async fn close(&self) {
        let _ = self.pc.close().await;
    }

    /// Cuts this peer's network without closing anything: from now on nothing it sends leaves
    /// and nothing sent to it arrives, as when its Wi-Fi drops.
    pub fn cut_network(&self) {
        self.network.cut();
    }

    /// Restores the network [`ClientPeer::cut_network`] cut, with the same address: the
    /// connection's checks and media flow again if both sides are still waiting for them.
    pub fn restore_network(&self) {
        self.network.restore();
    }

    /// Vanishes: the network is cut first, so the server hears nothing more, not even the
    /// close (a browser whose machine went to sleep); then the client side is cleaned up.
    pub async fn vanish(&self) {
        self.network.cut();
        let _ = self.pc.close().await;
    }
}

/// The rate browsers encode Opus from: full band, the RTP clock's 48 kHz.
const BROWSER_RATE: u32 = RTP_CLOCK;
/// Samples in one 20 ms frame at [`BROWSER_RATE`].
const BROWSER_FRAME: usize = frame::samples_per_frame(BROWSER_RATE);

/// How a test client posts its offer.
#[derive(Clone, Copy)]
enum OfferForm {
    /// `{"type": "offer", "sdp": ...}`, answered `200` with JSON.
    Json,
    /// The bare SDP (`application/sdp`), answered `201` with the bare answer (WHIP).
    Sdp,
}

/// The answer SDP, call id and `Location` of a JSON offer reply.
fn json_reply(res: &http::Response) -> anyhow::Result<(String, String, Option<String>)> {
    let body = res.json();
    let answer = body["sdp"]
        .as_str()
        .context("answer without sdp")?
        .to_owned();
    let call_id = body["call_id"]
        .as_str()
        .context("answer without call_id")?
        .to_owned();
    anyhow::ensure!(body["type"] == "answer", "reply type is {}", body["type"]);
    Ok((answer, call_id, res.header("location").map(str::to_owned)))
}

/// The answer SDP, call id (the last segment of `Location`) and `Location` of an SDP offer
/// reply.
fn sdp_reply(res: &http::Response) -> anyhow::Result<(String, String, Option<String>)> {
    anyhow::ensure!(
        res.header("content-type") == Some("application/sdp"),
        "answer content type is {:?}",
        res.header("content-type")
    );
    let location = res
        .header("location")
        .context("201 without Location")?
        .to_owned();
    let call_id = location
        .rsplit_once('/')
        .map(|(_, id)| id.to_owned())
        .context("Location without a call id")?;
    Ok((res.text(), call_id, Some(location)))
}

/// Opus packets (20 ms, 48 kHz, as a browser sends them) of mono `pcm` at `rate`, with `lead`
/// and `tail` of silence around it.
pub fn opus_speech(pcm: &[i16], rate: u32, lead: Duration, tail: Duration) -> Vec<Bytes> {
    let mut r = voicegate_core::resample::StreamResampler::new(rate, BROWSER_RATE)
        .expect("any rate resamples to 48 kHz");
    let per_ms = (BROWSER_RATE / 1000) as usize;
    let mut at48 = vec![0i16; (lead.as_millis() as usize) * per_ms];
    r.push(pcm, &mut at48);
    r.finish(&mut at48);
    at48.extend(std::iter::repeat_n(0, (tail.as_millis() as usize) * per_ms));
    let mut enc = DownlinkEncoder::new(EncoderSettings {
        pcm_rate: BROWSER_RATE,
        complexity: 5,
        bitrate: 32_000,
        fec: true,
        expected_loss_percent: 10,
    })
    .expect("a 48 kHz mono encoder is always available");
    at48.chunks(BROWSER_FRAME)
        .map(|c| {
            let mut frame = [0i16; BROWSER_FRAME];
            frame[..c.len()].copy_from_slice(c);
            Bytes::copy_from_slice(enc.encode(&frame).expect("a 20 ms frame encodes"))
        })
        .collect()
}

/// `frames` Opus packets of a `freq` Hz tone at 48 kHz, as a browser would send them.
pub fn opus_tone(freq: f64, frames: usize) -> Vec<Bytes> {
    let mut enc = DownlinkEncoder::new(EncoderSettings {
        pcm_rate: BROWSER_RATE,
        complexity: 5,
        bitrate: 32_000,
        fec: true,
        expected_loss_percent: 10,
    })
    .expect("a 48 kHz mono encoder is always available");
    let mut tone = Tone::new(BROWSER_RATE, freq, 8_000.0);
    let mut pcm = vec![0i16; BROWSER_FRAME];
    (0..frames)
        .map(|_| {
            tone.fill(&mut pcm);
            Bytes::copy_from_slice(enc.encode(&pcm).expect("a 20 ms frame encodes"))
        })
        .collect()
}

/// Decodes received Opus packets to 16 kHz PCM ([`SPEECH_RATE`], the default call rate), in
/// sequence order.
pub fn decode(packets: &[Received]) -> Vec<i16> {
    let mut dec = UplinkDecoder::new(UplinkSettings {
        pcm_rate: SPEECH_RATE,
        reorder_depth: 3,
        reorder_wait: Duration::from_millis(60),
        max_conceal: 5,
    })
    .expect("a 16 kHz decoder is always available");
    let mut pcm = Vec::new();
    for p in packets.iter().filter(|p| p.payload_type == 111) {
        dec.push(p.seq, p.payload.clone(), p.at, &mut |chunk: &[i16], _| {
            pcm.extend_from_slice(chunk)
        });
    }
    pcm
}

fn media_engine() -> anyhow::Result<(MediaEngine, Registry)> {
    let mut media = MediaEngine::default();
    media.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: MIME_TYPE_OPUS.to_owned(),
                clock_rate: RTP_CLOCK,
                channels: 2,
                sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
                rtcp_feedback: vec![RTCPFeedback {
                    typ: "transport-cc".into(),
                    parameter: String::new(),
                }],
            },
            payload_type: 111,
        },
        RtpCodecKind::Audio,
    )?;
    media.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: MIME_TYPE_TELEPHONE_EVENT.to_owned(),
                clock_rate: 8000,
                channels: 0,
                sdp_fmtp_line: "0-16".to_owned(),
                rtcp_feedback: vec![],
            },
            payload_type: 126,
        },
        RtpCodecKind::Audio,
    )?;
    let registry = configure_rtcp_reports(Registry::new());
    let registry = configure_twcc(registry, &mut media)?;
    Ok((media, registry))
}
