//! Callers on real networks: a caller whose network drops for longer than the old ICE limit
//! and comes back keeps its call, and the server's own STUN gathering works for many calls at
//! once on the shared port. The real server on free ports, real WebRTC client peers.

mod common;

use common::{TestServer, eventually};
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
