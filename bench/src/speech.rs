//! `voicegate-bench speech`: speech-out latencies against a running voicegate whose `dialog.url`
//! points at the bench's own dialog app (`--dialog-listen`).
//!
//! Per run it sends `tts.speak` and measures, at the client, the time from the command to the
//! first RTP packet of the answer (the TTS first byte as the caller hears it); then it starts a
//! long utterance, sends `tts.interrupt` and measures the time from the command to the last
//! packet that still arrived (interrupt to silence).

use anyhow::{Context as _, bail};
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use voicegate_testkit::ClientPeer;
use voicegate_testkit::dialog_app::TestDialogApp;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Waits until the client has received more than `n` packets; returns the arrival time of
/// packet `n`.
async fn packet_after(peer: &ClientPeer, n: usize, within: Duration) -> anyhow::Result<Instant> {
    let t0 = Instant::now();
    loop {
        let rx = peer.received();
        if rx.len() > n {
            return Ok(rx[n].at);
        }
        if t0.elapsed() > within {
            bail!("no audio arrived");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Runs the speech benchmark.
pub async fn run(server: SocketAddr, dialog_listen: SocketAddr, runs: usize) -> anyhow::Result<()> {
    let app = TestDialogApp::start_on(dialog_listen).await;
    let peer = ClientPeer::call(server, "/webrtc/v1/offer").await?;
    peer.wait_connected(Duration::from_secs(10)).await?;
    app.wait_type(Duration::from_secs(5), "call.started", None)
        .await
        .context("no call.started: is the server's dialog.url ws://<--dialog-listen>/dialog?")?;
    let mut first_byte = Vec::new();
    let mut silence = Vec::new();
    for i in 0..runs {
        // First byte.
        let before = peer.received_count();
        let id = format!("fb-{i}");
        let sent = Instant::now();
        app.send(json!({"type": "tts.speak", "utterance_id": id, "text": "Hello there, how are you today?"}));
        let first = packet_after(&peer, before, Duration::from_secs(5)).await?;
        first_byte.push(first.duration_since(sent).as_secs_f64() * 1e3);
        app.wait_type(Duration::from_secs(10), "tts.ended", Some(&id))
            .await
            .context("tts.ended")?;
        // Interrupt to silence.
        let id = format!("int-{i}");
        app.send(json!({"type": "tts.speak", "utterance_id": id, "text": "This is a long answer that goes on for a while. ".repeat(6)}));
        app.wait_type(Duration::from_secs(5), "tts.started", Some(&id))
            .await
            .context("tts.started")?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let sent = Instant::now();
        app.send(json!({"type": "tts.interrupt"}));
        app.wait_type(Duration::from_secs(5), "tts.ended", Some(&id))
            .await
            .context("tts.ended")?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let last = peer
            .received()
            .iter()
            .map(|p| p.at)
            .max()
            .context("no packets")?;
        silence.push(last.saturating_duration_since(sent).as_secs_f64() * 1e3);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    peer.close().await;
    let n = first_byte.len();
    println!(
        "speech, {n} runs: command -> first RTP packet at the client p50 {:.1} ms p95 {:.1} ms max {:.1} ms",
        pct(&mut first_byte, 0.5),
        pct(&mut first_byte, 0.95),
        pct(&mut first_byte, 1.0)
    );
    println!(
        "speech, {n} runs: tts.interrupt -> last packet at the client p50 {:.1} ms p95 {:.1} ms max {:.1} ms",
        pct(&mut silence, 0.5),
        pct(&mut silence, 0.95),
        pct(&mut silence, 1.0)
    );
    Ok(())
}
