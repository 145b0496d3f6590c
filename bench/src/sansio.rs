//! `voicegate-bench sansio`: what an echo call's WebRTC transport costs per packet when the
//! sans-IO core of webrtc-rs (`rtc`, the protocol stack under the `webrtc` crate's async
//! `PeerConnection`) is driven directly, with no driver task, channels or boxed futures in
//! between: the "bypass" BENCHMARKS.md names as what issue 15's CPU goal would take.
//!
//! N pairs of `rtc` peers on one thread: a server peer built like the server's (Opus and
//! telephone-event, the RTCP report, NACK and TWCC interceptors, ICE, DTLS, SRTP) and a client
//! peer offering to it. Once every pair is connected, a clock advanced 20 ms per slot (so the
//! time-driven work, RTCP reports, TWCC feedback and ICE keep-alives, comes at its real rate per
//! packet) drives each call: the client sends one Opus-sized packet; the server reads it,
//! takes the packet out and sends one back, and reads whatever RTCP the client sent. Only the
//! server peer's work is timed, by this thread's CPU clock: every call into its `rtc` core and,
//! with `--udp`, its socket calls (one shared server socket, demultiplexed by the sender's
//! address, as the server's port is). Without `--udp` the datagrams are handed across in memory,
//! so the figure is the core alone.

use anyhow::{Context as _, bail, ensure};
use bytes::{Bytes, BytesMut};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp;
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct SansIoPlan {
    /// Calls (pairs of peers).
    pub calls: usize,
    /// Seconds of media per call (slots of 20 ms on the advanced clock).
    pub seconds: u64,
    /// Datagrams through loopback sockets (the server's one shared socket) instead of memory.
    pub udp: bool,
}

/// An Opus packet of speech at the server's 24 kbit/s is about 60 bytes; browsers send more.
const PAYLOAD: usize = 80;
const SLOT: Duration = Duration::from_millis(20);

struct Peer {
    pc: RTCPeerConnection,
    addr: SocketAddr,
    sender: Option<RTCRtpSenderId>,
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    connected: bool,
}

impl Peer {
    fn new(addr: SocketAddr, server: bool) -> anyhow::Result<Self> {
        let (media, registry) = voicegate_media::peer::media_engine()?;
        let settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
            .build();
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_setting_engine(settings)
            .build(Instant::now())?;
        let ssrc = voicegate_core::random::u32();
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: addr.ip().to_string(),
                port: addr.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()?;
        pc.add_local_candidate(RTCIceCandidate::from(&candidate).to_json()?)?;
        // The client adds its track before its offer; the server after the offer is set, as
        // the server does (`add_track`).
        let mut peer = Peer {
            pc,
            addr,
            sender: None,
            ssrc,
            seq: 0,
            timestamp: 0,
            connected: false,
        };
        if !server {
            peer.add_track()?;
        }
        Ok(peer)
    }

    fn add_track(&mut self) -> anyhow::Result<()> {
        let track = self.track();
        self.sender = Some(self.pc.add_track(track)?);
        Ok(())
    }

    fn track(&self) -> MediaStreamTrack {
        MediaStreamTrack::new(
            "bench".to_owned(),
            format!("bench-audio-{:08x}", self.ssrc),
            "bench-audio".to_owned(),
            RtpCodecKind::Audio,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(self.ssrc),
                    ..Default::default()
                },
                codec: voicegate_media::peer::opus_codec(),
                ..Default::default()
            }],
        )
    }

    /// One Opus-sized packet out, through the sender's interceptors and SRTP.
    fn send(&mut self, now: Instant, payload: &Bytes) -> anyhow::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(960);
        let packet = rtp::Packet {
            header: rtp::header::Header {
                version: 2,
                payload_type: voicegate_media::peer::OPUS_PT,
                sequence_number: self.seq,
                timestamp: self.timestamp,
                ssrc: self.ssrc,
                ..Default::default()
            },
            payload: payload.clone(),
        };
        let mut sender = self
            .pc
            .rtp_sender(self.sender.context("the peer has no track")?)
            .context("the peer's sender is gone")?;
        sender.write_rtp(now, packet)?;
        Ok(())
    }

    /// Takes out what the core has read; returns the RTP payload bytes.
    fn read(&mut self) -> usize {
        let mut bytes = 0;
        while let Some(TaggedRTCMessage { message, .. }) = self.pc.poll_read() {
            if let RTCMessage::RtpPacket(_, packet) = message {
                bytes += packet.payload.len();
            }
        }
        while let Some(event) = self.pc.poll_event() {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) = event {
                self.connected = state == RTCPeerConnectionState::Connected;
            }
        }
        bytes
    }

    fn timeouts(&mut self, now: Instant) -> anyhow::Result<()> {
        if self.pc.poll_timeout().is_some_and(|t| t <= now) {
            self.pc.handle_timeout(now)?;
        }
        Ok(())
    }

    fn datagram(&self, now: Instant, from: SocketAddr, data: &[u8]) -> TaggedBytesMut {
        TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: self.addr,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(data),
        }
    }
}

/// Where a peer's datagrams go: a socket, or the other peer's inbox in memory.
enum Wire {
    Memory,
    Udp {
        server: UdpSocket,
        clients: Vec<UdpSocket>,
        by_addr: HashMap<SocketAddr, usize>,
    },
}

struct Calls {
    servers: Vec<Peer>,
    clients: Vec<Peer>,
    wire: Wire,
    buf: Vec<u8>,
    /// Datagrams in memory, per call, to the server and to the client.
    to_server: Vec<Vec<(SocketAddr, BytesMut)>>,
    to_client: Vec<Vec<(SocketAddr, BytesMut)>>,
    received: usize,
}

impl Calls {
    /// The server peers' writes onto the wire.
    fn server_writes(&mut self) -> anyhow::Result<()> {
        for (i, peer) in self.servers.iter_mut().enumerate() {
            while let Some(out) = peer.pc.poll_write() {
                match &self.wire {
                    Wire::Memory => self.to_client[i].push((peer.addr, out.message)),
                    Wire::Udp { server, .. } => {
                        server.send_to(&out.message, out.transport.peer_addr)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Everything waiting for the server peers, read into their cores.
    fn server_reads(&mut self, now: Instant) -> anyhow::Result<()> {
        match &self.wire {
            Wire::Memory => {
                for (i, peer) in self.servers.iter_mut().enumerate() {
                    for (from, data) in self.to_server[i].drain(..) {
                        peer.pc.handle_read(TaggedBytesMut {
                            now,
                            transport: TransportContext {
                                local_addr: peer.addr,
                                peer_addr: from,
                                ecn: None,
                                transport_protocol: TransportProtocol::UDP,
                            },
                            message: data,
                        })?;
                    }
                }
            }
            Wire::Udp {
                server, by_addr, ..
            } => loop {
                match server.recv_from(&mut self.buf) {
                    Ok((n, from)) => {
                        let Some(&i) = by_addr.get(&from) else {
                            continue;
                        };
                        let peer = &mut self.servers[i];
                        let datagram = peer.datagram(now, from, &self.buf[..n]);
                        peer.pc.handle_read(datagram)?;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.into()),
                }
            },
        }
        for peer in &mut self.servers {
            self.received += peer.read();
        }
        Ok(())
    }

    fn client_writes(&mut self) -> anyhow::Result<()> {
        for (i, peer) in self.clients.iter_mut().enumerate() {
            while let Some(out) = peer.pc.poll_write() {
                match &self.wire {
                    Wire::Memory => self.to_server[i].push((peer.addr, out.message)),
                    Wire::Udp { clients, .. } => {
                        clients[i].send_to(&out.message, out.transport.peer_addr)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn client_reads(&mut self, now: Instant) -> anyhow::Result<()> {
        for (i, peer) in self.clients.iter_mut().enumerate() {
            match &self.wire {
                Wire::Memory => {
                    for (from, data) in self.to_client[i].drain(..) {
                        let mut datagram = peer.datagram(now, from, &[]);
                        datagram.message = data;
                        peer.pc.handle_read(datagram)?;
                    }
                }
                Wire::Udp { clients, .. } => loop {
                    match clients[i].recv_from(&mut self.buf) {
                        Ok((n, from)) => {
                            let datagram = peer.datagram(now, from, &self.buf[..n]);
                            peer.pc.handle_read(datagram)?;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e.into()),
                    }
                },
            }
            peer.read();
        }
        Ok(())
    }
}

/// Runs it and prints the result (JSON when asked).
pub fn run(plan: SansIoPlan, json: bool) -> anyhow::Result<()> {
    ensure!(
        plan.calls > 0 && plan.seconds > 0,
        "want --calls and --seconds above 0"
    );
    let mut calls = connect(plan)?;
    let payload = Bytes::from(vec![0x5a; PAYLOAD]);
    let slots = plan.seconds * 50;
    let mut now = Instant::now();
    // The server peers' share of this thread's CPU time (a clock that stops while another
    // process has the core), seconds.
    let mut server_cpu = 0.0;
    let cpu0 = crate::floor::thread_cpu();
    let wall0 = Instant::now();
    for _ in 0..slots {
        now += SLOT;
        // The callers: one packet each, and whatever feedback they owe.
        for peer in &mut calls.clients {
            peer.timeouts(now)?;
            peer.send(now, &payload)?;
        }
        calls.client_writes()?;
        // The server: read, echo, time-driven work, write. Timed.
        let t0 = crate::floor::thread_cpu();
        calls.server_reads(now)?;
        for peer in &mut calls.servers {
            peer.send(now, &payload)?;
            peer.timeouts(now)?;
        }
        calls.server_writes()?;
        server_cpu += crate::floor::thread_cpu() - t0;
        calls.client_reads(now)?;
    }
    let cpu_s = crate::floor::thread_cpu() - cpu0;
    let wall_s = wall0.elapsed().as_secs_f64();
    let expected = plan.calls * slots as usize * PAYLOAD;
    ensure!(
        calls.received * 10 >= expected * 9,
        "the servers read {} payload bytes of {expected} sent: the calls did not carry media",
        calls.received
    );
    let media_s = (plan.calls as u64 * plan.seconds) as f64;
    let per_call_pct = server_cpu / media_s * 100.0;
    let per_slot_us = server_cpu * 1e6 / (plan.calls as f64 * slots as f64);
    let wire = if plan.udp { "udp" } else { "memory" };
    let report = serde_json::json!({
        "calls": plan.calls,
        "media_seconds_per_call": plan.seconds,
        "wire": wire,
        "server_cpu_s": server_cpu,
        "thread_cpu_s": cpu_s,
        "wall_s": wall_s,
        "server_cpu_percent_of_one_core_per_call": per_call_pct,
        "server_us_per_slot": per_slot_us,
        "payload_bytes_received": calls.received,
    });
    if json {
        println!("{report}");
    } else {
        println!(
            "sans-IO core: {} calls x {} s, wire {wire}: the server peers' work {:.3} % of a core per call \
             ({:.1} us per call per 20 ms slot: one packet in, one out, and the timed work); \
             both sides together {cpu_s:.2} s of CPU in {wall_s:.2} s",
            plan.calls, plan.seconds, per_call_pct, per_slot_us,
        );
    }
    Ok(())
}

/// Builds every pair and runs the handshakes (ICE, DTLS) on the real clock until all connect.
fn connect(plan: SansIoPlan) -> anyhow::Result<Calls> {
    let mut servers = Vec::with_capacity(plan.calls);
    let mut clients = Vec::with_capacity(plan.calls);
    let mut wire = Wire::Memory;
    let mut client_addrs = Vec::with_capacity(plan.calls);
    let server_addr: SocketAddr;
    if plan.udp {
        let server = UdpSocket::bind("127.0.0.1:0")?;
        server.set_nonblocking(true)?;
        server_addr = server.local_addr()?;
        let mut sockets = Vec::with_capacity(plan.calls);
        let mut by_addr = HashMap::new();
        for i in 0..plan.calls {
            let s = UdpSocket::bind("127.0.0.1:0")?;
            s.set_nonblocking(true)?;
            let a = s.local_addr()?;
            by_addr.insert(a, i);
            client_addrs.push(a);
            sockets.push(s);
        }
        wire = Wire::Udp {
            server,
            clients: sockets,
            by_addr,
        };
    } else {
        server_addr = "127.0.0.1:40000".parse()?;
        for i in 0..plan.calls {
            client_addrs.push(SocketAddr::from(([127, 0, 0, 2], 20000 + i as u16)));
        }
    }
    for &client_addr in &client_addrs {
        let mut client = Peer::new(client_addr, false)?;
        let mut server = Peer::new(server_addr, true)?;
        let offer = client.pc.create_offer(None)?;
        client
            .pc
            .set_local_description(Instant::now(), offer.clone())?;
        server.pc.set_remote_description(Instant::now(), offer)?;
        server.add_track()?;
        let answer = server.pc.create_answer(None)?;
        server
            .pc
            .set_local_description(Instant::now(), answer.clone())?;
        client.pc.set_remote_description(Instant::now(), answer)?;
        servers.push(server);
        clients.push(client);
    }
    let n = plan.calls;
    let mut calls = Calls {
        servers,
        clients,
        wire,
        buf: vec![0; 2048],
        to_server: vec![Vec::new(); n],
        to_client: vec![Vec::new(); n],
        received: 0,
    };
    let deadline = Instant::now() + Duration::from_secs(10 + n as u64 / 10);
    loop {
        let now = Instant::now();
        for peer in calls.clients.iter_mut().chain(calls.servers.iter_mut()) {
            peer.timeouts(now)?;
        }
        calls.client_writes()?;
        calls.server_reads(now)?;
        calls.server_writes()?;
        calls.client_reads(now)?;
        let up = calls
            .servers
            .iter()
            .chain(&calls.clients)
            .filter(|p| p.connected)
            .count();
        if up == 2 * n {
            break;
        }
        if Instant::now() > deadline {
            bail!("{} of {} peers connected in time", up, 2 * n);
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    // What the handshakes left behind is not the steady state's.
    calls.received = 0;
    Ok(calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both wires connect every pair and carry the calls' packets both ways (`run` fails when
    /// the servers read under 90 % of what was sent).
    #[test]
    fn a_short_run_connects_and_carries_media_on_both_wires() {
        for udp in [false, true] {
            run(
                SansIoPlan {
                    calls: 3,
                    seconds: 1,
                    udp,
                },
                true,
            )
            .unwrap_or_else(|e| panic!("udp {udp}: {e:#}"));
        }
    }
}
