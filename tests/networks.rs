//! Callers on real networks: a caller whose network drops for longer than the old ICE limit
//! and comes back keeps its call, and the server's own STUN gathering works for many calls at
//! once on the shared port (through a real coturn). The real server on free ports, real WebRTC
//! client peers.

mod common;

use common::{TestServer, eventually};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use voicegate_core::frame::SPEECH_RATE;
use voicegate_core::tone;
use voicegate_testkit::ClientPeer;
use voicegate_testkit::peer::decode;

const ECHO: &str = "/webrtc/v1/offer?mode=echo";

/// Longer than the 12 s the hard-coded ICE timers (4 s + 8 s) allowed, shorter than the
/// defaults' 30 s window; as short as that allows, since the test waits it out.
const OUTAGE: Duration = Duration::from_secs(14);

/// A caller whose network is cut for 14 s, with the default settings, then restored: the call
/// is still there (same id, no end), and its audio is echoed again within 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_back_after_a_14_s_outage_keeps_its_call() {
    let server = TestServer::start(&[]);
    let peer = ClientPeer::call(server.http, ECHO).await.unwrap();
    peer.wait_connected(Duration::from_secs(5)).await.unwrap();
    peer.send_tone(440.0, 25).await.unwrap();
    assert!(
        eventually(Duration::from_secs(2), || peer.received_count() >= 10).await,
        "no echo before the outage: {} packets",
        peer.received_count()
    );

    peer.cut_network();
    let cut_at = Instant::now();
    // The caller keeps talking into the void, as a browser does; none of it arrives.
    while cut_at.elapsed() < OUTAGE {
        peer.send_tone(440.0, 50).await.unwrap();
    }
    let snap = server.snapshot().await;
    assert!(
        snap.calls.iter().any(|id| id.as_str() == peer.call_id),
        "the call ended during a {OUTAGE:?} outage: {:?}",
        snap.recent_ends
    );

    peer.restore_network();
    let restored = Instant::now();
    // A new tone after the restore, so what comes back is this audio's echo, nothing older.
    peer.send_tone(660.0, 125).await.unwrap();
    let back: Vec<_> = peer
        .received()
        .into_iter()
        .filter(|p| p.at > restored)
        .collect();
    let first = back
        .first()
        .map(|p| p.at - restored)
        .expect("no audio came back after the restore");
    assert!(first < Duration::from_secs(2), "first echo after {first:?}");
    let in_two_s = back
        .iter()
        .filter(|p| p.at - restored <= Duration::from_secs(2))
        .count();
    assert!(
        in_two_s >= 25,
        "only {in_two_s} packets within 2 s of the restore"
    );
    let pcm = decode(&back);
    let freq = tone::dominant_frequency(&pcm[pcm.len().min(3200)..], SPEECH_RATE, 100.0, 2000.0);
    assert!(
        (freq - 660.0).abs() <= 10.0,
        "after the restore the echo measured {freq} Hz, sent 660 Hz"
    );

    // Still the same call, never ended.
    let snap = server.snapshot().await;
    assert!(snap.calls.iter().any(|id| id.as_str() == peer.call_id));
    assert!(
        !snap
            .recent_ends
            .iter()
            .any(|(id, _)| id.as_str() == peer.call_id),
        "the call has an end reason: {:?}",
        snap.recent_ends
    );
    peer.close().await;
    server.wait_released(Duration::from_secs(2)).await.unwrap();
}

/// A STUN server (coturn's `turnserver`, STUN only, no TLS, no auth) on a free loopback port,
/// killed when dropped.
struct Coturn {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

/// A directory of our own for coturn's database and pid file, removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Coturn {
    /// Starts it and waits until it answers a Binding request; `None` when the binary is not
    /// installed (`scripts/setup.sh --test` installs it).
    fn start() -> Option<Coturn> {
        let binary = ["/usr/bin/turnserver", "/usr/sbin/turnserver"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let port = UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("a free loopback port")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let dir = std::env::temp_dir().join(format!("vg-coturn-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("coturn's directory");
        let child = Command::new(binary)
            .args([
                "-n",
                "--stun-only",
                "--no-auth",
                "--no-tls",
                "--no-dtls",
                "--no-cli",
            ])
            .args([
                "--listening-ip",
                "127.0.0.1",
                "--listening-port",
                &port.to_string(),
            ])
            .arg(format!("--db={}", dir.join("turndb").display()))
            .arg(format!(
                "--pidfile={}",
                dir.join("turnserver.pid").display()
            ))
            .args(["--no-stdout-log", "--log-file", "/dev/null"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnserver starts");
        let coturn = Coturn {
            child,
            addr,
            _dir: TempDir(dir),
        };
        coturn.wait_ready(Duration::from_secs(5));
        Some(coturn)
    }

    /// Sends Binding requests (RFC 8489 §6) until one is answered.
    fn wait_ready(&self, within: Duration) {
        let probe = UdpSocket::bind("127.0.0.1:0").expect("probe socket");
        probe
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        request.extend_from_slice(b"vg-probe-001");
        let t0 = Instant::now();
        let mut buf = [0u8; 512];
        while t0.elapsed() < within {
            let _ = probe.send_to(&request, self.addr);
            if let Ok((n, _)) = probe.recv_from(&mut buf)
                && n >= 20
                && buf[8..20] == request[8..20]
            {
                return;
            }
        }
        panic!(
            "turnserver on {} did not answer within {within:?}",
            self.addr
        );
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server-reflexive candidates of an answer's RTP component: (address, port).
fn srflx_candidates(sdp: &str) -> Vec<(String, u16)> {
    sdp.lines()
        .filter_map(|l| l.strip_prefix("a=candidate:"))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.get(1) != Some(&"1") || f.get(6..8) != Some(&["typ", "srflx"][..]) {
                return None;
            }
            Some((f[4].to_owned(), f[5].parse().ok()?))
        })
        .collect()
}

const CONCURRENT: usize = 20;

/// 20 calls gather through one STUN server at once, all from the shared port: each answer
/// carries the shared port as its server-reflexive candidate (each call got its own STUN
/// response, routed by transaction id), and all connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_gather_through_one_stun_server() {
    let Some(coturn) = Coturn::start() else {
        eprintln!(
            "SKIPPED: coturn's turnserver is not installed; scripts/setup.sh --test installs it"
        );
        return;
    };
    let stun = format!("stun:{}", coturn.addr);
    let server = TestServer::start(&[("media.ice_servers", &stun), ("calls.max", "100")]);
    let calls = futures_util::future::join_all(
        (0..CONCURRENT).map(|_| ClientPeer::call(server.http, ECHO)),
    )
    .await;
    let peers: Vec<ClientPeer> = calls
        .into_iter()
        .enumerate()
        .map(|(i, c)| c.unwrap_or_else(|e| panic!("call {i}: {e}")))
        .collect();
    for (i, peer) in peers.iter().enumerate() {
        // On loopback the reflexive address equals the host candidate's (the stack keeps both),
        // so what shows the response reached this call is that its gathering completed with it.
        let srflx = srflx_candidates(&peer.answer);
        assert_eq!(
            srflx,
            [("127.0.0.1".to_owned(), server.media.port())],
            "call {i}: the answer's srflx candidates, want the shared port as STUN saw it \
             (shared socket: {:?}):\n{}",
            server.plane.mux().stats(),
            peer.answer
        );
    }
    for (i, peer) in peers.iter().enumerate() {
        peer.wait_connected(Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("call {i}: {e}"));
    }
    for peer in &peers {
        peer.close().await;
    }
    // Each close reaches the server as one DTLS alert over UDP; on a loaded machine the 20
    // teardowns take a while (typically 0.15 s here).
    server.wait_released(Duration::from_secs(10)).await.unwrap();
    drop(coturn);
}

/// Short ICE timers for the interruption tests: media counts as interrupted after 1 s of
/// silence, and the call would fail only after 15 s.
const SHORT_ICE: [(&str, &str); 4] = [
    ("media.ice_disconnected_timeout_ms", "1000"),
    ("media.ice_failed_timeout_ms", "14000"),
    ("media.ice_keepalive_ms", "200"),
    ("calls.rtp_timeout_ms", "15000"),
];

/// A started dialog call with the short ICE timers (plus `extra`), its dialog app and its
/// caller. The caller sends no audio: ICE keepalives alone keep a healthy call connected.
async fn dialog_call(
    extra: &[(&str, &str)],
) -> (
    TestServer,
    voicegate_testkit::dialog_app::TestDialogApp,
    ClientPeer,
) {
    let app = voicegate_testkit::dialog_app::TestDialogApp::start().await;
    let url = app.url();
    let mut settings: Vec<(&str, &str)> = SHORT_ICE.to_vec();
    settings.push(("dialog.url", &url));
    settings.extend_from_slice(extra);
    let server = TestServer::start(&settings);
    let (peer, _started) = common::started_dialog_call(&server, &app).await;
    (server, app, peer)
}

/// The dialog app hears `call.media` `interrupted` when the caller's network goes, an answer it
/// sends meanwhile is held (nothing of it is sent into the void), and when the network comes
/// back it hears `restored` and the answer plays whole: `tts.started`, then `tts.ended ok:true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_sent_during_an_interruption_plays_when_media_returns() {
    let (server, app, peer) = dialog_call(&[]).await;
    let wait = Duration::from_secs(5);
    peer.cut_network();
    let interrupted = app
        .wait_for(wait, |e| {
            e["type"] == "call.media" && e["state"] == "interrupted"
        })
        .await
        .expect("call.media interrupted");
    assert_eq!(interrupted["call_id"], peer.call_id.as_str());
    app.send(serde_json::json!({"type": "tts.speak", "utterance_id": "held", "text": "This answer waits for you to come back."}));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !app.types().iter().any(|t| t.starts_with("tts.")),
        "nothing of the answer left while the caller was away: {:?}",
        app.types()
    );
    let before = peer.received_count();
    peer.restore_network();
    app.wait_for(wait, |e| {
        e["type"] == "call.media" && e["state"] == "restored"
    })
    .await
    .expect("call.media restored");
    app.wait_type(wait, "tts.started", Some("held"))
        .await
        .expect("the held answer starts once media is back");
    let ended = app
        .wait_type(Duration::from_secs(10), "tts.ended", Some("held"))
        .await
        .expect("tts.ended");
    assert_eq!(ended["ok"], true, "{ended}");
    let after: Vec<_> = peer.received()[before..].to_vec();
    let loud = decode(&after)
        .chunks(voicegate_core::frame::SPEECH_FRAME_SAMPLES)
        .filter(|f| voicegate_core::listen::rms(f) > 200.0)
        .count();
    assert!(loud > 25, "the caller heard the answer: {loud} loud frames");
    assert!(server.snapshot().await.calls.len() == 1, "the call goes on");
    peer.close().await;
}

/// Held longer than `calls.interrupted_hold_ms`, the answer is dropped: `tts.ended ok:false`
/// while the caller is still away, and nothing of it plays when media returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_held_past_the_bound_is_dropped_with_ok_false() {
    let (_server, app, peer) = dialog_call(&[("calls.interrupted_hold_ms", "1500")]).await;
    let wait = Duration::from_secs(5);
    peer.cut_network();
    app.wait_for(wait, |e| {
        e["type"] == "call.media" && e["state"] == "interrupted"
    })
    .await
    .expect("call.media interrupted");
    app.send(serde_json::json!({"type": "tts.speak", "utterance_id": "late", "text": "Nobody hears this one."}));
    let ended = app
        .wait_type(wait, "tts.ended", Some("late"))
        .await
        .expect("dropped after the hold bound");
    assert_eq!(ended["ok"], false, "{ended}");
    assert!(
        !app.types().iter().any(|t| t == "tts.started"),
        "it never played"
    );
    peer.restore_network();
    app.wait_for(wait, |e| {
        e["type"] == "call.media" && e["state"] == "restored"
    })
    .await
    .expect("call.media restored: the call goes on");
    peer.close().await;
}

/// Media that drops before the dialog app knows of the call (its socket is slow to open) is
/// told right after `call.started`: the app hears `interrupted` before the `restored` that
/// follows, never a `restored` alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_lost_before_call_started_is_told_after_it() {
    let app = voicegate_testkit::dialog_app::TestDialogApp::start().await;
    // The app's socket opens 3 s after the dial: a TCP relay that waits before it connects.
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let relay_addr = relay.local_addr().expect("bound");
    let app_addr: SocketAddr = app.url()["ws://".len()..]
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .expect("the app's address");
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = relay.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(app_addr).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    let url = app
        .url()
        .replace(&app_addr.to_string(), &relay_addr.to_string());
    let mut settings: Vec<(&str, &str)> = SHORT_ICE.to_vec();
    settings.push(("dialog.url", &url));
    settings.push(("dialog.connect_timeout_ms", "10000"));
    let server = TestServer::start(&settings);
    let peer = ClientPeer::call(server.http, "/webrtc/v1/offer")
        .await
        .expect("call placed");
    peer.wait_connected(Duration::from_secs(5))
        .await
        .expect("media connected");
    peer.cut_network();
    let id = peer.call_id.clone();
    app.wait_for(Duration::from_secs(8), |e| {
        e["type"] == "call.started" && e["call_id"] == id
    })
    .await
    .expect("call.started once the app's socket opens");
    app.wait_for(Duration::from_secs(2), |e| {
        e["type"] == "call.media" && e["state"] == "interrupted"
    })
    .await
    .expect("the interruption that began before call.started is told after it");
    peer.restore_network();
    app.wait_for(Duration::from_secs(5), |e| {
        e["type"] == "call.media" && e["state"] == "restored"
    })
    .await
    .expect("call.media restored");
    let order: Vec<String> = app
        .events()
        .iter()
        .filter(|e| e["type"] == "call.started" || e["type"] == "call.media")
        .map(|e| format!("{} {}", e["type"], e["state"]))
        .collect();
    assert_eq!(
        order,
        [
            "\"call.started\" null",
            "\"call.media\" \"interrupted\"",
            "\"call.media\" \"restored\""
        ],
        "in order, each once"
    );
    peer.close().await;
}

/// A caller whose network changed restarts ICE from a new address (`PATCH` with a new
/// fragment, as the browser client does): the call keeps its id and its dialog connection (no
/// second `call.started`), the app hears `interrupted` then `restored`, the server answers with
/// new credentials and a new `ETag` (the old one is refused from then on), and audio reaches
/// the caller again within 2 s of the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ice_restart_from_a_new_address_keeps_the_call() {
    let (server, app, peer) = dialog_call(&[]).await;
    let wait = Duration::from_secs(5);
    let first_etag = peer.etag.lock().unwrap().clone().expect("the offer's ETag");
    let first_ufrag = voicegate_core::sdpfrag::IceFragment::from_sdp(&peer.answer).ufrag;
    peer.cut_network();
    app.wait_for(wait, |e| {
        e["type"] == "call.media" && e["state"] == "interrupted"
    })
    .await
    .expect("call.media interrupted");
    // The network is back, but the caller moved: the restart drops its old socket.
    peer.restore_network();
    let restarted = Instant::now();
    let theirs = peer.restart_ice(server.http).await.expect("ICE restart");
    let frag = voicegate_core::sdpfrag::IceFragment::parse(&theirs, 64).expect("a fragment");
    assert!(
        frag.ufrag.is_some() && frag.ufrag != first_ufrag,
        "new server credentials: {theirs}"
    );
    assert!(
        !frag.candidates.is_empty(),
        "our candidates again: {theirs}"
    );
    let candidates = |sdp: &str| voicegate_core::sdpfrag::IceFragment::from_sdp(sdp).candidates;
    assert_ne!(
        candidates(&peer.local_sdp().await.unwrap()),
        candidates(&peer.offer),
        "the caller comes back from a new address"
    );
    assert_eq!(
        server.plane.mux().tables().ufrags,
        1,
        "the mux routes by the new ufrag only"
    );
    let before = peer.received_count();
    app.send(
        serde_json::json!({"type": "tts.speak", "utterance_id": "back", "text": "Welcome back."}),
    );
    assert!(
        eventually(Duration::from_secs(2), || peer.received_count() > before).await,
        "no audio within 2 s of the restart ({:?} ago)",
        restarted.elapsed()
    );
    app.wait_for(wait, |e| {
        e["type"] == "call.media" && e["state"] == "restored"
    })
    .await
    .expect("call.media restored");
    let ended = app
        .wait_type(Duration::from_secs(10), "tts.ended", Some("back"))
        .await
        .expect("tts.ended");
    assert_eq!(ended["ok"], true, "{ended}");
    let started = app.types().iter().filter(|t| *t == "call.started").count();
    assert_eq!(started, 1, "one dialog connection: {:?}", app.types());
    assert!(!app.types().iter().any(|t| t == "call.ended"));
    let calls = server.snapshot().await.calls;
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].as_str(), peer.call_id, "the same call");
    // The old session's tag no longer applies.
    let location = peer.location.clone().expect("Location");
    let stale = voicegate_testkit::http::request(
        server.http,
        "PATCH",
        &location,
        &[
            ("Content-Type", "application/trickle-ice-sdpfrag"),
            ("If-Match", &first_etag),
        ],
        b"a=candidate:1 1 udp 1 127.0.0.1 9 typ host\r\n",
    )
    .await
    .unwrap();
    assert_eq!(stale.status, 412, "{}", stale.text());
    assert_eq!(
        stale.header("etag"),
        peer.etag.lock().unwrap().as_deref(),
        "a 412 names the current session"
    );
    peer.close().await;
}

/// `calls.max_ice_restarts` bounds the restarts of one call: beyond it a restart gets `403`
/// with the reason, the limit hit is counted, and the call goes on as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_restarts_beyond_the_limit_are_refused_and_the_call_goes_on() {
    use voicegate_actors::metrics::{Limit, metrics};
    let server = TestServer::start(&[("calls.max_ice_restarts", "1")]);
    let peer = ClientPeer::call(server.http, ECHO).await.expect("call");
    peer.wait_connected(Duration::from_secs(5)).await.unwrap();
    peer.restart_ice(server.http)
        .await
        .expect("the first restart");
    peer.wait_connected(Duration::from_secs(5)).await.unwrap();
    let hits = metrics().limit_hits(Limit::IceRestarts);
    let err = peer
        .restart_ice(server.http)
        .await
        .expect_err("the second restart is refused");
    assert!(
        err.to_string().contains("403") && err.to_string().contains("calls.max_ice_restarts"),
        "{err}"
    );
    assert!(metrics().limit_hits(Limit::IceRestarts) > hits);
    assert_eq!(server.snapshot().await.calls.len(), 1, "the call goes on");
    peer.close().await;
}
