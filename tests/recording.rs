//! Call recording end to end: the real server (and, for a crash, the real binary), a real WebRTC
//! client peer that speaks and listens, and a test dialog app that starts and stops recordings.
//!
//! Alignment is measured, not assumed: the caller's audio is placed on a reference timeline at
//! the instants the client sent its packets, what the client heard at the instants its packets
//! arrived, and each is cross-correlated (by 1 ms energy envelopes) with its channel of the file.

mod common;

use common::{TestServer, spoken};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use voicegate_core::codec::{UplinkDecoder, UplinkSettings};
use voicegate_core::frame::{FRAME, SPEECH_RATE};
use voicegate_core::wav::Wav;
use voicegate_testkit::dialog_app::TestDialogApp;
use voicegate_testkit::{ClientPeer, http};

const SECOND: Duration = Duration::from_secs(1);
/// Samples per ms at the call's (default) rate.
const PER_MS: usize = (SPEECH_RATE / 1000) as usize;

/// A fresh directory for one test's recordings.
fn recording_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "voicegate-recording-{name}-{}",
        voicegate_core::random::u32()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn server(app: &TestDialogApp, mode: &str, dir: &Path) -> TestServer {
    let url = app.url();
    let dir = dir.to_str().unwrap().to_owned();
    TestServer::start(&[
        ("dialog.url", url.as_str()),
        ("recording.mode", mode),
        ("recording.dir", dir.as_str()),
    ])
}

/// Places a dialog call and waits for `call.started`; returns the peer and when its media
/// connected.
async fn call(addr: std::net::SocketAddr, app: &TestDialogApp) -> (ClientPeer, Instant) {
    let peer = ClientPeer::call(addr, "/webrtc/v1/offer").await.unwrap();
    peer.wait_connected(5 * SECOND).await.unwrap();
    let connected = Instant::now();
    let id = peer.call_id.clone();
    app.wait_for(5 * SECOND, |e| {
        e["type"] == "call.started" && e["call_id"] == id
    })
    .await
    .expect("call.started");
    (peer, connected)
}

async fn hang_up(addr: std::net::SocketAddr, peer: &ClientPeer) {
    let res = http::request(
        addr,
        "POST",
        &format!("/webrtc/v1/hangup?call_id={}", peer.call_id),
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(res.status, 204);
}

/// A 16 kHz decoder for 48 kHz Opus packets, one 20 ms frame per packet in order.
fn decoder() -> UplinkDecoder<bytes::Bytes> {
    UplinkDecoder::new(UplinkSettings {
        pcm_rate: SPEECH_RATE,
        reorder_depth: 3,
        reorder_wait: Duration::from_millis(60),
        max_conceal: 5,
    })
    .unwrap()
}

/// `frames` laid on a timeline from `origin` at their instants (16 kHz; silence elsewhere).
fn timeline(origin: Instant, frames: &[(Instant, Vec<i16>)]) -> Vec<i16> {
    let mut out = Vec::new();
    for (at, pcm) in frames {
        let pos = at.saturating_duration_since(origin).as_micros() as usize * PER_MS / 1000;
        if out.len() < pos + pcm.len() {
            out.resize(pos + pcm.len(), 0);
        }
        out[pos..pos + pcm.len()].copy_from_slice(pcm);
    }
    out
}

/// 1 ms energy envelope.
fn envelope(pcm: &[i16]) -> Vec<f64> {
    pcm.chunks(PER_MS)
        .map(|c| c.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>().sqrt())
        .collect()
}

/// The lag (ms; positive: later in `file`) at which `file`'s envelope best matches
/// `reference`'s within ±`range` ms, and the normalized correlation there.
fn best_lag(file: &[i16], reference: &[i16], range: i64) -> (i64, f64) {
    let (f, r) = (envelope(file), envelope(reference));
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let (nf, nr) = (norm(&f), norm(&r));
    let mut best = (0, f64::MIN);
    for lag in -range..=range {
        let mut sum = 0.0;
        for (i, x) in r.iter().enumerate() {
            let j = i as i64 + lag;
            if j >= 0 && (j as usize) < f.len() {
                sum += x * f[j as usize];
            }
        }
        if sum > best.1 {
            best = (lag, sum);
        }
    }
    (best.0, best.1 / (nf * nr).max(1e-9))
}

/// A dialog call with a known caller utterance and a known reply: the left channel is what the
/// caller sent and the right what the caller heard, both where they happened on the call's
/// clock, and the file lasts as long as the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_call_has_the_caller_left_and_voicegate_right_on_the_calls_clock() {
    let dir = recording_dir("aligned");
    let app = TestDialogApp::start().await;
    let server = server(&app, "all", &dir);
    let (peer, connected) = call(server.http, &app).await;

    // The caller says something (sent in real time, each packet's instant noted)...
    let packets = spoken("hello world", Duration::from_millis(200)).await;
    let mut dec = decoder();
    let mut sent = Vec::new();
    let mut tick = tokio::time::interval(FRAME);
    for (k, p) in packets.iter().enumerate() {
        tick.tick().await;
        peer.send(p.clone()).await.unwrap();
        let at = Instant::now();
        let mut pcm = Vec::new();
        dec.push(k as u16, p.clone(), at, &mut |c: &[i16], _| {
            pcm.extend_from_slice(c)
        });
        sent.push((at, pcm));
    }
    // ...then the app answers, after the caller is done (no barge-in).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        app.send(json!({"type": "tts.speak", "utterance_id": "reply",
        "text": "The quick brown fox jumps over the lazy dog."}))
    );
    let ended = app
        .wait_type(10 * SECOND, "tts.ended", Some("reply"))
        .await
        .expect("the reply played");
    assert_eq!(ended["ok"], true, "{ended}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    hang_up(server.http, &peer).await;
    let hung_up = Instant::now();
    let ended = app
        .wait_type(5 * SECOND, "call.ended", None)
        .await
        .expect("call.ended");
    let name = format!("{}.wav", peer.call_id);
    assert_eq!(ended["recording"], name.as_str(), "{ended}");

    // What the caller heard, at the instants it arrived.
    let mut dec = decoder();
    let mut heard = Vec::new();
    for p in peer.received().iter().filter(|p| p.payload_type == 111) {
        let mut pcm = Vec::new();
        dec.push(p.seq, p.payload.clone(), p.at, &mut |c: &[i16], _| {
            pcm.extend_from_slice(c)
        });
        heard.push((p.at, pcm));
    }
    assert!(
        heard.len() > 50,
        "the reply was heard: {} packets",
        heard.len()
    );
    peer.close().await;

    // The file is complete once the recorder has it (the call ended before call.ended).
    let path = dir.join(&name);
    let mut wav = None;
    assert!(
        common::eventually(5 * SECOND, || {
            wav = std::fs::read(&path).ok().and_then(|b| Wav::parse(&b).ok());
            wav.as_ref()
                .is_some_and(|w| w.duration() + SECOND > hung_up - connected)
        })
        .await,
        "no complete recording at {path:?}"
    );
    let wav = wav.unwrap();
    assert_eq!(wav.format.channels, 2);
    assert_eq!(wav.format.rate, SPEECH_RATE);
    let call_ms = (hung_up - connected).as_millis() as i64;
    let file_ms = wav.duration().as_millis() as i64;
    println!("call {call_ms} ms, recording {file_ms} ms");
    assert!(
        (file_ms - call_ms).abs() <= 100,
        "the recording lasts {file_ms} ms, the call {call_ms} ms"
    );

    let (left, right) = (wav.channel(0), wav.channel(1));
    // The caller's packets are one stream paced at 20 ms from the first: laid out so from its
    // instant (the test's own timer jitter is not the server's doing).
    let first = sent[0].0;
    let sent: Vec<_> = sent
        .into_iter()
        .enumerate()
        .map(|(k, (_, pcm))| (first + FRAME * k as u32, pcm))
        .collect();
    let (sent, heard) = (timeline(connected, &sent), timeline(connected, &heard));
    let (left_lag, left_corr) = best_lag(&left, &sent, 500);
    let (right_lag, right_corr) = best_lag(&right, &heard, 500);
    println!(
        "left: lag {left_lag} ms, correlation {left_corr:.3}; right: lag {right_lag} ms, correlation {right_corr:.3}"
    );
    assert!(left_corr > 0.8, "left is what the caller sent: {left_corr}");
    assert!(
        right_corr > 0.8,
        "right is what the caller heard: {right_corr}"
    );
    for (side, lag) in [("left", left_lag), ("right", right_lag)] {
        assert!(
            lag.abs() <= 40,
            "the {side} channel is {lag} ms off the call's clock"
        );
    }
    assert!(
        (left_lag - right_lag).abs() <= 40,
        "the channels are {} ms apart",
        left_lag - right_lag
    );
    // Each channel holds its own side only: the reply is not on the left, the caller not on
    // the right.
    let (_, cross) = best_lag(&left, &heard, 0);
    assert!(cross < 0.3, "the reply is on the left: {cross}");
    let (_, cross) = best_lag(&right, &sent, 0);
    assert!(cross < 0.3, "the caller is on the right: {cross}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Energy of `pcm` between `from` and `to` ms, as RMS.
fn rms_between(pcm: &[i16], from: u64, to: u64) -> f64 {
    let (a, b) = (
        from as usize * PER_MS,
        (to as usize * PER_MS).min(pcm.len()),
    );
    assert!(
        a < b,
        "{from}..{to} ms is beyond the file ({} ms)",
        pcm.len() / PER_MS
    );
    voicegate_core::listen::rms(&pcm[a..b])
}

/// `on-request` records only between `recording.start` and `recording.stop`; a second start
/// goes on in the same file, the pause in between silent, on the call's clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_request_records_only_between_start_and_stop() {
    let dir = recording_dir("on-request");
    let app = TestDialogApp::start().await;
    let server = server(&app, "on-request", &dir);
    let (peer, _) = call(server.http, &app).await;
    let tone = |frames| peer.send_tone(440.0, frames);
    let pause = || tokio::time::sleep(Duration::from_millis(200));

    tone(20).await.unwrap(); // before: not recorded
    pause().await;
    assert!(app.send(json!({"type": "recording.start"})));
    let started = Instant::now();
    pause().await;
    tone(30).await.unwrap(); // recorded, from about 200 ms
    pause().await;
    assert!(app.send(json!({"type": "recording.stop"})));
    let stopped = started.elapsed();
    pause().await;
    tone(30).await.unwrap(); // paused: silence in the file
    pause().await;
    assert!(app.send(json!({"type": "recording.start"})));
    let resumed = started.elapsed();
    pause().await;
    tone(30).await.unwrap(); // recorded again
    pause().await;
    assert!(app.send(json!({"type": "recording.stop"})));
    let end = started.elapsed();
    pause().await;
    tone(20).await.unwrap(); // after: not recorded
    hang_up(server.http, &peer).await;
    let ended = app
        .wait_type(5 * SECOND, "call.ended", None)
        .await
        .expect("call.ended");
    let name = format!("{}.wav", peer.call_id);
    assert_eq!(ended["recording"], name.as_str(), "{ended}");
    assert!(
        !app.types().iter().any(|t| t == "error"),
        "{:?}",
        app.events()
    );
    peer.close().await;

    let path = dir.join(&name);
    let mut wav = None;
    assert!(
        common::eventually(5 * SECOND, || {
            wav = std::fs::read(&path).ok().and_then(|b| Wav::parse(&b).ok());
            wav.as_ref().is_some_and(|w| w.duration() + SECOND > end)
        })
        .await
    );
    let left = wav.unwrap().channel(0);
    let file_ms = (left.len() / PER_MS) as i64;
    let end_ms = end.as_millis() as i64;
    println!("recorded {file_ms} ms, from the first start to the last stop {end_ms} ms");
    assert!(
        (file_ms - end_ms).abs() <= 100,
        "the file ends at the last stop: {file_ms} ms, want {end_ms}"
    );
    let (stopped, resumed) = (stopped.as_millis() as u64, resumed.as_millis() as u64);
    let loud = |from, to| rms_between(&left, from, to) > 500.0;
    let quiet = |from, to| rms_between(&left, from, to) < 50.0;
    assert!(quiet(0, 150), "nothing from before the start");
    assert!(loud(300, stopped - 300), "recording between start and stop");
    assert!(
        quiet(stopped + 50, resumed - 50),
        "silence while stopped ({stopped}..{resumed} ms)"
    );
    assert!(
        loud(resumed + 300, end.as_millis() as u64 - 300),
        "recording again"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// With recording off, the commands get an `error` event and no file is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_recording_off_the_commands_get_an_error_and_nothing_is_written() {
    let dir = recording_dir("off");
    let app = TestDialogApp::start().await;
    let server = server(&app, "off", &dir);
    let (peer, _) = call(server.http, &app).await;
    assert!(app.send(json!({"TYPE": "recording.start"})));
    let error = app
        .wait_type(5 * SECOND, "error", None)
        .await
        .expect("an error event");
    assert_eq!(error["command"], "recording.start", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("off"),
        "{error}"
    );
    assert_eq!(error["call_id"], peer.call_id.as_str());
    hang_up(server.http, &peer).await;
    let ended = app
        .wait_type(5 * SECOND, "call.ended", None)
        .await
        .expect("call.ended");
    assert!(ended.get("recording").is_none(), "{ended}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    peer.close().await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// A free TCP port on loopback (UDP ports of the same number are free in practice).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real binary killed in the middle of a call leaves a valid file, which ends at most about
/// a second before the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_mid_call_leaves_a_valid_recording() {
    let dir = recording_dir("killed");
    let app = TestDialogApp::start().await;
    let (http_port, udp_port) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_voicegate"))
        .env("VOICEGATE__HTTP__BIND", format!("127.0.0.1:{http_port}"))
        .env("VOICEGATE__MEDIA__BIND_IP", "127.0.0.1")
        .env("VOICEGATE__MEDIA__UDP_PORT", udp_port.to_string())
        .env("VOICEGATE__DIALOG__URL", app.url())
        .env("VOICEGATE__ASR__POCKETSPHINX__DECODERS", "1")
        .env("VOICEGATE__RECORDING__MODE", "all")
        .env("VOICEGATE__RECORDING__DIR", &dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    let t0 = Instant::now();
    while http::request(addr, "GET", "/ready", &[], b"")
        .await
        .map(|r| r.status)
        .unwrap_or(0)
        != 200
    {
        assert!(t0.elapsed() < 20 * SECOND, "the service did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (peer, connected) = call(addr, &app).await;
    assert!(app.send(json!({"type": "tts.speak", "utterance_id": "u",
        "text": "This call is recorded, and the recording survives a crash."})));
    peer.send_tone(440.0, 100).await.unwrap();
    child.kill().unwrap();
    let killed = connected.elapsed();
    let _ = child.wait();
    peer.close().await;

    let bytes = std::fs::read(dir.join(format!("{}.wav", peer.call_id))).unwrap();
    let wav = Wav::parse(&bytes).expect("a valid WAV file");
    println!(
        "killed {} ms into the call; the file has {} ms ({} bytes after its last header update)",
        killed.as_millis(),
        wav.duration().as_millis(),
        wav.uncounted_bytes
    );
    assert!(
        wav.duration() + SECOND >= killed && wav.duration() <= killed,
        "{:?} recorded of {killed:?}",
        wav.duration()
    );
    assert!(
        rms_between(&wav.channel(0), 200, 1500) > 500.0,
        "the caller's tone is there"
    );
    assert!(wav.channel(1).iter().any(|s| *s != 0), "the reply is there");
    std::fs::remove_dir_all(dir).unwrap();
}
