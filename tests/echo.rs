//! Echo calls end to end: the real server on free ports, real WebRTC client peers sending real
//! Opus over the one shared UDP port, and the audio that comes back measured.

mod common;

use common::{TestServer, eventually};
use std::time::Duration;
use voicegate_core::frame::{RTP_TICKS_PER_FRAME, SPEECH_RATE};
use voicegate_core::tone;
use voicegate_testkit::peer::decode;
use voicegate_testkit::{ClientPeer, http};

const ECHO: &str = "/webrtc/v1/offer?mode=echo";

/// Sends `frames` of a `freq` tone and checks that at least 95 % come back at that frequency.
async fn echo_round_trip(server: &TestServer, freq: f64, frames: usize) -> (usize, f64) {
    let peer = ClientPeer::call(server.http, ECHO)
        .await
        .expect("call placed");
    peer.wait_connected(Duration::from_secs(5))
        .await
        .expect("connected");
    peer.send_tone(freq, frames).await.expect("tone sent");
    // Let the last frames come back (40 ms prebuffer plus pacing).
    eventually(Duration::from_secs(2), || peer.received_count() >= frames).await;
    let received = peer.received();
    let pcm = decode(&received);
    // Skip the first 200 ms: the codec's start-up and the first talkspurt's prebuffer.
    let measured =
        tone::dominant_frequency(&pcm[pcm.len().min(3200)..], SPEECH_RATE, 100.0, 2000.0);
    peer.close().await;
    (received.len(), measured)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_returns_what_was_sent() {
    let server = TestServer::start(&[]);
    let frames = 150;
    let (got, freq) = echo_round_trip(&server, 440.0, frames).await;
    assert!(
        got * 100 >= frames * 95,
        "only {got} of {frames} frames came back"
    );
    assert!(
        (freq - 440.0).abs() <= 10.0,
        "echo measured {freq} Hz, sent 440 Hz"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_packets_are_paced_and_numbered() {
    let server = TestServer::start(&[]);
    let peer = ClientPeer::call(server.http, ECHO).await.unwrap();
    peer.wait_connected(Duration::from_secs(5)).await.unwrap();
    peer.send_tone(440.0, 100).await.unwrap();
    eventually(Duration::from_secs(2), || peer.received_count() >= 100).await;
    let rx = peer.received();
    assert!(rx.len() >= 95, "{} packets", rx.len());
    // One talkspurt: the first packet is marked, sequence numbers are contiguous and the
    // timestamp advances one frame (960 at 48 kHz) per packet.
    assert!(
        rx[0].marker,
        "first packet of the talkspurt carries the marker bit"
    );
    for w in rx.windows(2) {
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1), "sequence gap");
        let dts = w[1].timestamp.wrapping_sub(w[0].timestamp);
        assert!(
            dts == RTP_TICKS_PER_FRAME || w[1].marker,
            "timestamp step {dts} without a marker"
        );
    }
    // Paced: 100 packets spread over about 2 s, not a burst.
    let span = rx[rx.len() - 1].at.duration_since(rx[0].at);
    assert!(
        span >= Duration::from_millis(1700),
        "packets arrived within {span:?}"
    );
    peer.close().await;
}

/// Places `calls` concurrent echo calls, each sending its own frequency (an echo that lands in
/// the wrong call fails the check), and checks each hears itself back.
async fn concurrent_echo_calls(server: &TestServer, calls: u32, frames: usize) {
    let tasks: Vec<_> = (0..calls)
        .map(|i| {
            let http = server.http;
            tokio::spawn(async move {
                let freq = 300.0 + 40.0 * f64::from(i);
                let peer = ClientPeer::call(http, ECHO).await.expect("call placed");
                peer.wait_connected(Duration::from_secs(10))
                    .await
                    .expect("connected");
                peer.send_tone(freq, frames).await.expect("tone sent");
                eventually(Duration::from_secs(3), || peer.received_count() >= frames).await;
                let rx = peer.received();
                let pcm = decode(&rx);
                let measured = tone::dominant_frequency(
                    &pcm[pcm.len().min(3200)..],
                    SPEECH_RATE,
                    100.0,
                    2000.0,
                );
                let snapshot_id = peer.call_id.clone();
                peer.close().await;
                (freq, rx.len(), measured, snapshot_id)
            })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let (freq, got, measured, id) = t.await.unwrap();
        assert!(
            got * 100 >= frames * 95,
            "{freq} Hz call: only {got} of {frames} frames came back"
        );
        assert!(
            (measured - freq).abs() <= 10.0,
            "{freq} Hz call measured {measured} Hz"
        );
        assert!(ids.insert(id));
    }
}

/// Timers for tests whose many callers hang up together. A client's close reaches the server
/// as one datagram (the DTLS `close_notify`), and the test client's WebRTC stack drops it when
/// its connection's task is not scheduled within 100 ms of `close()` (webrtc 0.21 then aborts
/// the task, whose exit path sends it): with twenty calls closing at once on a loaded machine
/// that happens. The server then ends the call when ICE fails, as for a caller whose last
/// datagram was lost on a real network; these settings make that take 3 s instead of 30.
const QUICK_ICE_FAILURE: [(&str, &str); 4] = [
    ("media.ice_disconnected_timeout_ms", "1500"),
    ("media.ice_failed_timeout_ms", "1500"),
    ("media.ice_keepalive_ms", "500"),
    ("calls.rtp_timeout_ms", "3000"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_echo_calls_share_one_port() {
    // Two media workers (the test servers' default): the first reads the shared port.
    let server = TestServer::start(&QUICK_ICE_FAILURE);
    let frames = 100;
    concurrent_echo_calls(&server, 20, frames).await;
    // All of it went through the one port, and everything is released afterwards.
    let stats = server.plane.mux().stats();
    assert!(stats.rx > 20 * frames as u64, "{stats:?}");
    assert_eq!(stats.rx_queue_full, 0, "{stats:?}");
    server.wait_released(Duration::from_secs(10)).await.unwrap();
}

/// With more than two media workers the shared port is read by a thread of its own, and every
/// worker's calls get their datagrams from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_three_workers_a_receive_thread_serves_every_worker() {
    let mut settings = vec![("media.workers", "3")];
    settings.extend(QUICK_ICE_FAILURE);
    let server = TestServer::start(&settings);
    let threads = voicegate_actors::workers::thread_names();
    assert!(
        threads.iter().any(|n| n == "vg-udp-recv"),
        "no receive thread: {threads:?}"
    );
    // Six calls: two on each worker.
    concurrent_echo_calls(&server, 6, 100).await;
    let stats = server.plane.mux().stats();
    assert_eq!(stats.rx_queue_full, 0, "{stats:?}");
    server.wait_released(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangup_ends_and_releases_the_call() {
    let server = TestServer::start(&[]);
    let peer = ClientPeer::call(server.http, ECHO).await.unwrap();
    peer.wait_connected(Duration::from_secs(5)).await.unwrap();
    peer.send_tone(440.0, 10).await.unwrap();
    assert_eq!(server.snapshot().await.calls.len(), 1);
    assert_eq!(server.plane.mux().tables().conns, 1);

    let path = format!("/webrtc/v1/hangup?call_id={}", peer.call_id);
    let res = http::request(server.http, "POST", &path, &[], b"")
        .await
        .unwrap();
    assert_eq!(res.status, 204);
    // Gone from the registry, its connection closed (its route on the shared port removed).
    server.wait_released(Duration::from_secs(2)).await.unwrap();
    assert_eq!(
        server
            .end_reason(&peer.call_id, Duration::from_secs(1))
            .await
            .as_deref(),
        Some("client-hangup")
    );
    // Idempotent: the same hangup again, and an unknown id, are 204 too.
    let again = http::request(server.http, "POST", &path, &[], b"")
        .await
        .unwrap();
    assert_eq!(again.status, 204);
    let unknown = http::request(
        server.http,
        "POST",
        "/webrtc/v1/hangup?call_id=wrtc-0123456789abcdef0123456789abcdef",
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(unknown.status, 204);
    let garbage = http::request(
        server.http,
        "POST",
        "/webrtc/v1/hangup?call_id=nonsense",
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(garbage.status, 204);
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_closing_its_connection_ends_the_call_within_2s() {
    let server = TestServer::start(&[]);
    let peer = ClientPeer::call(server.http, ECHO).await.unwrap();
    peer.wait_connected(Duration::from_secs(5)).await.unwrap();
    peer.send_tone(440.0, 10).await.unwrap();
    let closed_at = std::time::Instant::now();
    peer.close().await;
    server.wait_released(Duration::from_secs(2)).await.unwrap();
    let took = closed_at.elapsed();
    assert!(took < Duration::from_secs(2), "noticed after {took:?}");
    assert_eq!(
        server
            .end_reason(&peer.call_id, Duration::from_secs(1))
            .await
            .as_deref(),
        Some("peer-closed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_caller_ends_with_rtp_timeout() {
    // ICE stays up (our keepalives are answered) while no RTP arrives; the RTP timeout may be
    // no shorter than ICE's failure window, so that is shortened too.
    let server = TestServer::start(&[
        ("calls.rtp_timeout_ms", "1000"),
        ("media.ice_disconnected_timeout_ms", "400"),
        ("media.ice_failed_timeout_ms", "600"),
        ("media.ice_keepalive_ms", "100"),
    ]);
    let peer = ClientPeer::call(server.http, ECHO).await.unwrap();
    peer.wait_connected(Duration::from_secs(5)).await.unwrap();
    peer.send_tone(440.0, 10).await.unwrap();
    // The connection stays open, but no more RTP.
    assert_eq!(
        server
            .end_reason(&peer.call_id, Duration::from_secs(4))
            .await
            .as_deref(),
        Some("rtp-timeout")
    );
    server.wait_released(Duration::from_secs(2)).await.unwrap();
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_but_never_connected_ends_with_connect_timeout() {
    let server = TestServer::start(&[("calls.connect_timeout_ms", "800")]);
    // An offer whose peer never applies the answer: ICE never completes.
    let (pc, _track, _ssrc, _state, _rx, offer) = ClientPeer::offer().await.unwrap();
    let res = http::post_offer(server.http, ECHO, &offer).await.unwrap();
    assert_eq!(res.status, 200, "{}", res.text());
    let call_id = res.json()["call_id"].as_str().unwrap().to_owned();
    assert_eq!(
        server
            .end_reason(&call_id, Duration::from_secs(4))
            .await
            .as_deref(),
        Some("connect-timeout")
    );
    server.wait_released(Duration::from_secs(2)).await.unwrap();
    let _ = pc.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_ips_are_advertised_and_connect() {
    // Bound to every interface, advertised as 127.0.0.1: the client (on loopback) can only use
    // the rewritten candidate.
    let server = TestServer::start(&[
        ("media.bind_ip", "0.0.0.0"),
        ("media.public_ips", "127.0.0.1"),
    ]);
    let peer = ClientPeer::call(server.http, ECHO).await.unwrap();
    let port = server.media.port();
    let hosts: Vec<&str> = peer
        .answer
        .lines()
        .filter(|l| l.contains("typ host"))
        .collect();
    assert!(!hosts.is_empty(), "{}", peer.answer);
    for h in &hosts {
        assert!(h.contains(&format!(" 127.0.0.1 {port} typ host")), "{h}");
    }
    peer.wait_connected(Duration::from_secs(5)).await.unwrap();
    peer.send_tone(440.0, 50).await.unwrap();
    assert!(eventually(Duration::from_secs(2), || peer.received_count() >= 45).await);
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_advertises_opus_with_fec_on_the_shared_port() {
    let server = TestServer::start(&[]);
    let peer = ClientPeer::call(server.http, ECHO).await.unwrap();
    let a = &peer.answer;
    assert!(a.contains("a=rtpmap:111 opus/48000/2"), "{a}");
    assert!(a.contains("useinbandfec=1"), "{a}");
    assert!(a.contains("transport-cc"), "{a}");
    assert!(!a.contains(".local"), "no mDNS candidates: {a}");
    let port = server.media.port();
    assert!(
        a.lines()
            .filter(|l| l.contains("typ host"))
            .all(|l| l.contains(&format!(" {port} typ host"))),
        "{a}"
    );
    // <prefix>-<node>-<32 hex>, the node made from the host name by default.
    let id = voicegate_core::call_id::CallId::parse(&peer.call_id).expect("one of our ids");
    let node = id.node("wrtc").expect("the call id names the node");
    assert!(voicegate_core::call_id::validate_node_id(node).is_ok());
    assert_eq!(
        peer.call_id.len(),
        "wrtc-".len() + node.len() + 1 + 32,
        "{id}"
    );
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_delay_holds_the_audio_back() {
    let server = TestServer::start(&[("echo.delay_ms", "400")]);
    let peer = ClientPeer::call(server.http, ECHO).await.unwrap();
    peer.wait_connected(Duration::from_secs(5)).await.unwrap();
    let started = std::time::Instant::now();
    peer.send_tone(440.0, 50).await.unwrap();
    assert!(eventually(Duration::from_secs(2), || peer.received_count() >= 45).await);
    let first = peer.received()[0].at.duration_since(started);
    // 400 ms configured plus the 40 ms jitter margin, less a frame of timer slack.
    assert!(
        first >= Duration::from_millis(420),
        "first echo after {first:?}"
    );
    assert!(
        first < Duration::from_millis(700),
        "first echo after {first:?}"
    );
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downlink_fec_follows_the_loss_the_browser_reports() {
    use voicegate_core::codec::packet_has_fec;
    let server = TestServer::start(&[]);
    let speech = common::spoken(
        "Thank you for calling. Your order left our warehouse this morning and should arrive \
         tomorrow before noon. Is there anything else I can help you with today?",
        Duration::ZERO,
    )
    .await;
    let clean = ClientPeer::call(server.http, ECHO).await.unwrap();
    let lossy = ClientPeer::call(server.http, ECHO).await.unwrap();
    clean.wait_connected(Duration::from_secs(5)).await.unwrap();
    lossy.wait_connected(Duration::from_secs(5)).await.unwrap();
    // One packet in five of ours never reaches this caller; its receiver reports say so.
    lossy.lose_downlink_every(5);
    let started = std::time::Instant::now();
    let (a, b) = tokio::join!(clean.send_paced(&speech), lossy.send_paced(&speech));
    a.unwrap();
    b.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // After the first reports (about a second) and the server's next read (every 2 s).
    let settled = started + Duration::from_secs(4);
    let fec_share = |peer: &ClientPeer| {
        let rx: Vec<_> = peer
            .received()
            .into_iter()
            .filter(|p| p.payload_type == 111)
            .collect();
        let later: Vec<_> = rx.iter().filter(|p| p.at > settled).collect();
        let with_fec = |ps: &[&voicegate_testkit::peer::Received]| {
            ps.iter().filter(|p| packet_has_fec(&p.payload)).count()
        };
        (
            rx.len(),
            with_fec(&rx.iter().collect::<Vec<_>>()),
            later.len(),
            with_fec(&later),
        )
    };
    let (clean_all, clean_fec, _, _) = fec_share(&clean);
    let (lossy_all, _, lossy_later, lossy_later_fec) = fec_share(&lossy);
    assert!(
        clean_all > 200 && lossy_all > 150,
        "echo flowed: {clean_all} clean, {lossy_all} lossy packets"
    );
    // A clean path spends nothing on FEC.
    assert_eq!(
        clean_fec, 0,
        "FEC on a clean path: {clean_fec} of {clean_all}"
    );
    // A lossy one gets it, on the speech frames (SILK adds FEC to frames its VAD calls active).
    assert!(
        lossy_later > 50 && lossy_later_fec * 2 >= lossy_later,
        "FEC after the reports: {lossy_later_fec} of {lossy_later} packets"
    );
    clean.close().await;
    lossy.close().await;
}
