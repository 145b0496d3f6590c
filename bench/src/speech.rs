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

/// `sentence` rendered by espeak-ng: mono PCM and its rate.
pub async fn espeak_pcm(sentence: &str) -> anyhow::Result<(Vec<i16>, u32)> {
    espeak_voice_pcm("en-us", 160, sentence).await
}

/// `sentence` rendered by espeak-ng with `voice` (a voice name, optionally with a `+variant`)
/// at `rate_wpm` words a minute: mono PCM and its rate.
pub async fn espeak_voice_pcm(
    voice: &str,
    rate_wpm: u32,
    sentence: &str,
) -> anyhow::Result<(Vec<i16>, u32)> {
    use futures_util::StreamExt;
    use voicegate_engines::tts::TtsFactory;
    let espeak = voicegate_engines::tts::espeak::Espeak::start(
        &voicegate_engines::tts::espeak::EspeakSettings {
            voice: voice.into(),
            rate_wpm,
        },
    )?;
    let engine = espeak.for_call();
    let pcm: Vec<i16> = engine
        .synthesize(sentence)
        .map(|c| c.unwrap_or_default())
        .collect::<Vec<_>>()
        .await
        .concat();
    Ok((pcm, engine.sample_rate()))
}

/// `sentence` spoken by espeak-ng as 20 ms Opus packets, 300 ms of silence before it; returns
/// the packets and how many of them carry the sentence (silence follows).
async fn spoken(sentence: &str) -> anyhow::Result<(Vec<bytes::Bytes>, usize)> {
    let (pcm, rate) = espeak_pcm(sentence).await?;
    let per_second = u64::from(voicegate_core::frame::FRAMES_PER_SECOND);
    let speech_frames = 15 + (pcm.len() as u64 * per_second).div_ceil(rate as u64) as usize; // 300 ms lead + the speech, in 20 ms frames
    let packets = voicegate_testkit::peer::opus_speech(
        &pcm,
        rate,
        Duration::from_millis(300),
        Duration::from_millis(1500),
    );
    Ok((packets, speech_frames))
}

/// Turn latency: the caller says a sentence; the bench's dialog app answers each `asr.final`
/// with `tts.stream` at once. Measures end of speech -> `asr.final` at the dialog app, and
/// `asr.final` -> the answer's first RTP packet at the client.
async fn turns(app: &TestDialogApp, peer: &ClientPeer, runs: usize) -> anyhow::Result<()> {
    let sentences = [
        "what is the weather like today",
        "please call me back tomorrow",
        "turn on the kitchen lights",
    ];
    let mut to_final = Vec::new();
    let mut to_audio = Vec::new();
    for i in 0..runs {
        let sentence = sentences[i % sentences.len()];
        let (packets, speech_frames) = spoken(sentence).await?;
        let finals_before = app
            .events()
            .iter()
            .filter(|e| e["type"] == "asr.final")
            .count();
        let mut tick = tokio::time::interval(voicegate_core::frame::FRAME);
        let mut speech_end = Instant::now();
        for (k, p) in packets.iter().enumerate() {
            tick.tick().await;
            peer.send(p.clone()).await?;
            if k + 1 == speech_frames {
                speech_end = Instant::now();
            }
            if app
                .events()
                .iter()
                .filter(|e| e["type"] == "asr.final")
                .count()
                > finals_before
            {
                break;
            }
        }
        let t0 = Instant::now();
        let fin = loop {
            if let Some((at, e)) = app
                .timed_events()
                .into_iter()
                .filter(|(_, e)| e["type"] == "asr.final")
                .nth(finals_before)
            {
                break (at, e);
            }
            if t0.elapsed() > Duration::from_secs(5) {
                bail!("no asr.final for {sentence:?}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let before = peer.received().iter().filter(|p| p.at < fin.0).count();
        let id = format!("answer-{i}");
        // The dialog app's own reaction time is not the gateway's: measure from the command.
        let sent = Instant::now();
        app.send(json!({"type": "tts.stream", "utterance_id": id, "text": format!("You said: {}.", fin.1["text"].as_str().unwrap_or("")), "stream_end": true}));
        let first = packet_after(peer, before, Duration::from_secs(5)).await?;
        to_final.push(fin.0.saturating_duration_since(speech_end).as_secs_f64() * 1e3);
        to_audio.push(first.saturating_duration_since(sent).as_secs_f64() * 1e3);
        app.wait_type(Duration::from_secs(10), "tts.ended", Some(&id))
            .await
            .context("answer ended")?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let n = to_final.len();
    println!(
        "turns, {n} runs: end of caller speech -> asr.final p50 {:.0} ms p95 {:.0} ms (includes the end-of-utterance silence)",
        pct(&mut to_final, 0.5),
        pct(&mut to_final, 0.95)
    );
    println!(
        "turns, {n} runs: answer command (sent on asr.final) -> first answer RTP at the client p50 {:.1} ms p95 {:.1} ms",
        pct(&mut to_audio, 0.5),
        pct(&mut to_audio, 0.95)
    );
    Ok(())
}

/// A noise over voicegate's speech: a cough (a short noise burst with a fast decay), a keyboard
/// burst (clicks), a door knock (three low thumps). Deterministic, at 48 kHz.
fn noise(kind: &str) -> Vec<i16> {
    let rate = 48_000usize;
    let mut seed: u32 = 0x9e37_79b9;
    let mut rnd = move || {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        f64::from((seed >> 8) as i32 - (1 << 23)) / f64::from(1 << 23)
    };
    let mut out = vec![0i16; rate * 6 / 10];
    match kind {
        "cough" => {
            for (i, s) in out.iter_mut().enumerate().take(rate * 3 / 10) {
                let env = (-(i as f64) / (rate as f64 * 0.08)).exp();
                *s = (rnd() * 14_000.0 * env) as i16;
            }
        }
        "keyboard" => {
            for k in 0..8 {
                let at = k * rate * 6 / 100;
                for i in 0..rate / 200 {
                    let env = (-(i as f64) / (rate as f64 * 0.001)).exp();
                    out[at + i] = (rnd() * 16_000.0 * env) as i16;
                }
            }
        }
        _ => {
            // A door knock: three 120 Hz thumps.
            for k in 0..3 {
                let at = k * rate * 18 / 100;
                for i in 0..rate * 6 / 100 {
                    let t = i as f64 / rate as f64;
                    let env = (-t / 0.015).exp();
                    out[at + i] =
                        ((2.0 * std::f64::consts::PI * 120.0 * t).sin() * 20_000.0 * env) as i16;
                }
            }
        }
    }
    out
}

/// Two-stage barge-in: backchannels and noises played over voicegate's speech must not
/// interrupt it, real interruptions must; for each, the time from the caller's voice onset to
/// the last packet of the answer before the pause (or the interrupt) at the client.
async fn barge(app: &TestDialogApp, peer: &ClientPeer, rounds: usize) -> anyhow::Result<()> {
    let backchannels = ["mm hmm", "yeah", "uh huh", "okay"];
    let noises = ["cough", "keyboard", "knock"];
    let interruptions = ["stop", "wait a second", "no I meant Tuesday"];
    let mut cases: Vec<(String, bool, Vec<bytes::Bytes>)> = Vec::new();
    for b in backchannels {
        let (pcm, rate) = espeak_pcm(b).await?;
        let p = voicegate_testkit::peer::opus_speech(
            &pcm,
            rate,
            Duration::from_millis(300),
            Duration::from_millis(1500),
        );
        cases.push((b.to_owned(), false, p));
    }
    for n in noises {
        let p = voicegate_testkit::peer::opus_speech(
            &noise(n),
            48_000,
            Duration::from_millis(300),
            Duration::from_millis(1500),
        );
        cases.push((n.to_owned(), false, p));
    }
    for i in interruptions {
        let (pcm, rate) = espeak_pcm(i).await?;
        let p = voicegate_testkit::peer::opus_speech(
            &pcm,
            rate,
            Duration::from_millis(300),
            Duration::from_millis(1500),
        );
        cases.push((i.to_owned(), true, p));
    }
    let long = "This is a long answer that goes on for quite a while, so that there is time to talk over it. ".repeat(3);
    let mut wrong = Vec::new();
    let mut onset_to_stop = Vec::new();
    let (mut false_n, mut false_total, mut true_n, mut true_total) = (0, 0, 0, 0);
    let mut k = 0;
    for _ in 0..rounds {
        for (label, real, packets) in &cases {
            k += 1;
            let id = format!("barge-{k}");
            app.send(json!({"type": "tts.speak", "utterance_id": id, "text": long}));
            app.wait_type(Duration::from_secs(5), "tts.started", Some(&id))
                .await
                .context("tts.started")?;
            tokio::time::sleep(Duration::from_millis(800)).await;
            // 300 ms of silence lead, then the voice: onset is the 16th packet's send.
            let mut tick = tokio::time::interval(voicegate_core::frame::FRAME);
            let mut onset = Instant::now();
            for (i, p) in packets.iter().enumerate() {
                tick.tick().await;
                if i == 15 {
                    onset = Instant::now();
                }
                peer.send(p.clone()).await?;
            }
            let finals_before = app
                .events()
                .iter()
                .filter(|e| e["type"] == "asr.final")
                .count();
            let interrupted = app
                .events()
                .iter()
                .any(|e| e["type"] == "tts.interrupt" && e["utterance_id"] == id.as_str());
            if std::env::var_os("BENCH_VERBOSE").is_some() {
                let heard: Vec<String> = app
                    .events()
                    .iter()
                    .filter(|e| {
                        e["type"] == "asr.final"
                            || e["type"] == "asr.partial"
                            || e["type"].as_str().is_some_and(|t| {
                                t.starts_with("tts.p")
                                    || t.starts_with("tts.r")
                                    || t == "tts.interrupt"
                            })
                    })
                    .map(|e| {
                        let confidence = e["confidence"]
                            .as_f64()
                            .map(|c| format!(" ({c})"))
                            .unwrap_or_default();
                        format!(
                            "{} {}{confidence}",
                            e["type"].as_str().unwrap_or(""),
                            e["text"]
                                .as_str()
                                .or(e["utterance_id"].as_str())
                                .unwrap_or("")
                        )
                    })
                    .collect();
                let _ = finals_before;
                println!(
                    "case {label:?}: interrupted {interrupted}; last events {:?}",
                    &heard[heard.len().saturating_sub(6)..]
                );
            }
            if *real {
                true_total += 1;
                true_n += usize::from(interrupted);
            } else {
                false_total += 1;
                false_n += usize::from(interrupted);
                if interrupted {
                    wrong.push(label.clone());
                }
            }
            // The answer's audio stopped (paused or interrupted) at the last packet before the
            // longest gap after the onset.
            let rx: Vec<Instant> = peer
                .received()
                .iter()
                .map(|p| p.at)
                .filter(|t| *t >= onset - Duration::from_millis(200))
                .collect();
            if let Some(w) = rx
                .windows(2)
                .find(|w| w[1].duration_since(w[0]) > Duration::from_millis(60))
            {
                onset_to_stop.push(w[0].saturating_duration_since(onset).as_secs_f64() * 1e3);
            }
            app.send(json!({"type": "tts.interrupt"}));
            app.wait_type(Duration::from_secs(5), "tts.ended", Some(&id))
                .await
                .context("tts.ended")?;
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    }
    println!(
        "barge-in: backchannels and noises that interrupted: {false_n} of {false_total} {wrong:?}; real interruptions that interrupted: {true_n} of {true_total}"
    );
    let n = onset_to_stop.len();
    println!(
        "barge-in, {n} pauses: caller voice onset -> the answer's last packet before it stopped, at the client p50 {:.0} ms p95 {:.0} ms",
        pct(&mut onset_to_stop, 0.5),
        pct(&mut onset_to_stop, 0.95)
    );
    Ok(())
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
    turns(&app, &peer, runs).await?;
    barge(&app, &peer, runs.div_ceil(10).max(1)).await?;
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
