//! Attacks on the shared media port, kept as regression tests: the real server on 127.0.0.1,
//! a real WebRTC victim, and an attacker with nothing but offers and UDP datagrams.
//!
//! - Route takeover without spoofing: offers naming the victim's address as their candidate.
//! - Route takeover by spoofed STUN: checks from the victim's address and port (a raw socket
//!   writes the UDP header, so this test needs CAP_NET_RAW: the test command runs as root).
//! - STUN reflection: offers full of third parties' addresses.

mod common;

use common::{TestServer, eventually};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use voicegate_core::stun;
use voicegate_testkit::{ClientPeer, http};

const ECHO: &str = "/webrtc/v1/offer?mode=echo";

/// The address in the offer's first host candidate: where the peer's socket is.
fn host_candidate(sdp: &str) -> SocketAddr {
    let line = sdp
        .lines()
        .find(|l| l.starts_with("a=candidate:") && l.contains("typ host"))
        .expect("a host candidate");
    let f: Vec<&str> = line.split_ascii_whitespace().collect();
    format!("{}:{}", f[4], f[5]).parse().expect("ip:port")
}

/// The value of `a=<name>:` in an SDP.
fn attribute<'a>(sdp: &'a str, name: &str) -> &'a str {
    let prefix = format!("a={name}:");
    sdp.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .expect("attribute present")
        .trim()
}

/// An offer (a real one, from a peer that is closed again) whose candidates are replaced by
/// `candidates` (as `ip:port`).
async fn offer_with_candidates(candidates: &[SocketAddr]) -> String {
    let (pc, _, _, _, _, sdp) = ClientPeer::offer().await.expect("offer");
    pc.close().await.expect("close");
    let lines: String = candidates
        .iter()
        .enumerate()
        .map(|(i, a)| {
            format!(
                "a=candidate:{i} 1 udp 2130706431 {} {} typ host\r\n",
                a.ip(),
                a.port()
            )
        })
        .collect();
    let mut out = String::new();
    for line in sdp.split_inclusive('\n') {
        if line.starts_with("a=candidate:") {
            continue;
        }
        out.push_str(line);
        if line.starts_with("m=audio") {
            out.push_str(&lines);
        }
    }
    out
}

/// Sends `frames` of tone from `peer`, paced, and returns how many came back.
async fn echo_frames(peer: &ClientPeer, frames: usize) -> usize {
    let before = peer.received_count();
    peer.send_tone(440.0, frames).await.expect("tone sent");
    eventually(Duration::from_secs(2), || {
        peer.received_count() - before >= frames
    })
    .await;
    peer.received_count() - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_naming_the_victims_address_cannot_take_its_route() {
    let server = TestServer::start(&[]);
    let victim = ClientPeer::call(server.http, ECHO).await.unwrap();
    victim.wait_connected(Duration::from_secs(5)).await.unwrap();
    let victim_addr = host_candidate(&victim.offer);
    let decoy = UdpSocket::bind("127.0.0.1:0").unwrap();

    // The attacker posts an offer naming the victim's address (and another port) once a
    // second while the victim talks for 5 s.
    let http_addr = server.http;
    let candidates = [victim_addr, decoy.local_addr().unwrap()];
    let attack = tokio::spawn(async move {
        let mut placed = 0;
        for _ in 0..5 {
            let offer = offer_with_candidates(&candidates).await;
            let res = http::post_json(
                http_addr,
                ECHO,
                &serde_json::json!({"type": "offer", "sdp": offer}),
            )
            .await
            .unwrap();
            assert_eq!(res.status, 200, "{}", res.text());
            placed += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        placed
    });
    let frames = 250;
    let got = echo_frames(&victim, frames).await;
    assert_eq!(attack.await.unwrap(), 5);
    assert!(
        got * 100 >= frames * 95,
        "the victim got back only {got} of {frames} frames while offers named its address"
    );
    let snap = server.snapshot().await;
    assert!(
        snap.calls.iter().any(|c| c.as_str() == victim.call_id),
        "the victim's call ended: {:?}",
        snap.recent_ends
    );
    victim.close().await;
}

/// A raw IPv4 UDP socket that writes its own UDP header: datagrams from any source port.
struct Spoofer(socket2::Socket);

impl Spoofer {
    fn new() -> Spoofer {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP)).expect(
            "a raw socket (CAP_NET_RAW): the spoofing test runs as root, as the test command does",
        );
        Spoofer(s)
    }

    /// Sends `payload` to `to` as if from `from` (both on 127.0.0.1).
    fn send(&self, from: SocketAddr, to: SocketAddr, payload: &[u8]) {
        let mut d = Vec::with_capacity(8 + payload.len());
        d.extend_from_slice(&from.port().to_be_bytes());
        d.extend_from_slice(&to.port().to_be_bytes());
        d.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        d.extend_from_slice(&[0, 0]); // no checksum (RFC 768: allowed over IPv4)
        d.extend_from_slice(payload);
        self.0.send_to(&d, &to.into()).expect("raw send");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_checks_from_the_victims_address_cannot_move_its_route() {
    let server = TestServer::start(&[]);
    let victim = ClientPeer::call(server.http, ECHO).await.unwrap();
    victim.wait_connected(Duration::from_secs(5)).await.unwrap();
    // The attacker has a call of its own, so it knows one valid password: its own.
    let own = ClientPeer::call(server.http, ECHO).await.unwrap();
    own.wait_connected(Duration::from_secs(5)).await.unwrap();
    let victim_addr = host_candidate(&victim.offer);
    let victim_ufrag = attribute(&victim.answer, "ice-ufrag").to_owned();
    let own_username = format!(
        "{}:{}",
        attribute(&own.answer, "ice-ufrag"),
        attribute(&own.offer, "ice-ufrag")
    );
    let own_pwd = attribute(&own.answer, "ice-pwd").as_bytes().to_vec();
    let media = server.media;
    let before = server.plane.mux().stats();

    let spoofing = std::thread::spawn(move || {
        let raw = Spoofer::new();
        let t0 = Instant::now();
        let mut n = 0u32;
        while t0.elapsed() < Duration::from_secs(4) {
            let mut txid = [0u8; 12];
            txid[..4].copy_from_slice(&n.to_be_bytes());
            // The victim's ufrag without the password (the attack the issue describes)...
            let forged = stun::binding_request(txid, &format!("{victim_ufrag}:x1y2"), None);
            raw.send(victim_addr, media, &forged);
            let bad_mi = stun::binding_request(
                txid,
                &format!("{victim_ufrag}:x1y2"),
                Some(b"a guessed password"),
            );
            raw.send(victim_addr, media, &bad_mi);
            // ...and a check that does verify, for the attacker's own call, from the victim's
            // address: it must not move the victim's address to the attacker's call either.
            txid[4] = 1;
            let valid = stun::binding_request(txid, &own_username, Some(&own_pwd));
            raw.send(victim_addr, media, &valid);
            n += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        n
    });
    let frames = 200;
    let got = echo_frames(&victim, frames).await;
    let sent = spoofing.join().unwrap();
    assert!(sent > 100, "only {sent} rounds of spoofed checks went out");
    assert!(
        got * 100 >= frames * 95,
        "the victim got back only {got} of {frames} frames under spoofed checks"
    );
    let after = server.plane.mux().stats();
    assert!(
        after.rx_stun_unauthenticated - before.rx_stun_unauthenticated >= u64::from(sent),
        "forged checks were not refused as unauthenticated: {before:?} → {after:?}"
    );
    assert!(
        after.rx_addr_conflicts - before.rx_addr_conflicts >= u64::from(sent) / 2,
        "the attacker's valid check from the victim's address was not refused: {before:?} → {after:?}"
    );
    // Both calls are still up; the attacker's own call kept its own route too.
    let snap = server.snapshot().await;
    for c in [&victim.call_id, &own.call_id] {
        assert!(
            snap.calls.iter().any(|id| id.as_str() == c.as_str()),
            "{c} ended"
        );
    }
    victim.close().await;
    own.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_full_of_candidates_is_refused_and_sends_nothing() {
    let server = TestServer::start(&[]);
    // Listening sockets stand in for the third parties the offer names.
    let targets: Vec<UdpSocket> = (0..8)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let mut candidates: Vec<SocketAddr> = targets.iter().map(|s| s.local_addr().unwrap()).collect();
    for i in 0..992u16 {
        candidates.push(SocketAddr::from(([127, 0, 0, 1], 20_000 + i)));
    }
    let offer = offer_with_candidates(&candidates).await;
    assert!(offer.len() > 50_000, "a large offer: {} bytes", offer.len());
    let tx_before = server.plane.mux().stats().tx;
    let res = http::post_offer(server.http, ECHO, &offer).await.unwrap();
    assert_eq!(res.status, 400, "{}", res.text());
    assert!(
        res.json()["error"]
            .as_str()
            .unwrap()
            .contains("1000 candidates"),
        "{}",
        res.text()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(server.plane.mux().stats().tx, tx_before, "nothing was sent");
    for s in &targets {
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 1500];
        assert!(s.recv_from(&mut buf).is_err(), "a target got a datagram");
    }
    assert!(server.snapshot().await.calls.is_empty());
    let tables = server.plane.mux().tables();
    assert_eq!((tables.conns, tables.addrs), (0, 0), "{tables:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_to_unconfirmed_candidates_are_budgeted_and_the_call_is_released() {
    let budget = 40;
    let server = TestServer::start(&[
        ("media.unconfirmed_check_budget", &budget.to_string()),
        ("calls.auth_timeout_ms", "2000"),
    ]);
    // The most candidates an offer may carry, all silent third parties.
    let targets: Vec<UdpSocket> = (0..16)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let candidates: Vec<SocketAddr> = targets.iter().map(|s| s.local_addr().unwrap()).collect();
    let offer = offer_with_candidates(&candidates).await;
    let res = http::post_offer(server.http, ECHO, &offer).await.unwrap();
    assert_eq!(res.status, 200, "{}", res.text());
    let call_id = res.json()["call_id"].as_str().unwrap().to_owned();
    // Nobody answers: the call ends once the authentication deadline passes.
    let released = server.wait_released(Duration::from_secs(5)).await;
    assert!(released.is_ok(), "{released:?}");
    let snap = server.snapshot().await;
    assert!(
        snap.recent_ends
            .iter()
            .any(|(id, r)| id.as_str() == call_id && r == "connect-timeout"),
        "{:?}",
        snap.recent_ends
    );
    let mut received = 0;
    let mut buf = [0u8; 1500];
    for s in &targets {
        s.set_nonblocking(true).unwrap();
        while s.recv_from(&mut buf).is_ok() {
            received += 1;
        }
    }
    assert!(received > 0, "checks go to the offer's candidates");
    assert!(
        received <= budget,
        "{received} checks reached third parties; the budget is {budget}"
    );
    assert!(server.plane.mux().stats().tx_checks_over_budget > 0);
}
