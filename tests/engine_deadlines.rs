//! Speech engines that stall, never finish, answer too much or are overloaded cost one
//! utterance, not the call: the real server, real WebRTC client peers, a test dialog app, and a
//! local OpenAI-compatible speech server that misbehaves on purpose (it sends a reply's head and
//! a little audio, then nothing, without closing; or trickles a reply forever; or transcribes
//! past `asr.openai.max_reply_bytes`), or pocketsphinx with one decoder and a tiny queue.
//!
//! The limit counters are process-wide and these tests run in parallel, so each checks only
//! that the counters it moves went up.

mod common;

use common::{TestServer, eventually, spoken, started_dialog_call};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use voicegate_actors::metrics::{Limit, metrics};
use voicegate_core::frame::SPEECH_FRAME_SAMPLES;
use voicegate_core::listen::rms;
use voicegate_core::tone;
use voicegate_testkit::dialog_app::TestDialogApp;
use voicegate_testkit::peer::decode;
use voicegate_testkit::speech_server::{Behaviour, SpeechServer};

const SECOND: Duration = Duration::from_secs(1);

/// The events of `call` so far.
fn events_of(app: &TestDialogApp, call: &str) -> Vec<Value> {
    app.events()
        .into_iter()
        .filter(|e| e["call_id"] == call)
        .collect()
}

/// The `asr.*` events of `call`, as "final <text>" / "error <message>".
fn asr_of(app: &TestDialogApp, call: &str) -> Vec<String> {
    events_of(app, call)
        .iter()
        .filter_map(|e| match e["type"].as_str()? {
            "asr.final" => Some(format!("final {}", e["text"].as_str()?)),
            "asr.error" => Some(format!("error {}", e["message"].as_str()?)),
            _ => None,
        })
        .collect()
}

/// A 440 Hz tone at 24 kHz (the rate the OpenAI-compatible engine is told to expect).
fn tone_24k(ms: usize) -> Vec<i16> {
    let mut pcm = vec![0i16; 24 * ms];
    tone::Tone::new(24_000, 440.0, 8000.0).fill(&mut pcm);
    pcm
}

/// A started dialog call on a server whose `side` engine (`"tts"` or `"asr"`) is the
/// OpenAI-compatible one at `base`, plus `extra` settings: its dialog app, server and caller.
async fn openai_call(
    side: &str,
    base: &str,
    extra: &[(&str, &str)],
) -> (TestDialogApp, TestServer, voicegate_testkit::ClientPeer) {
    let app = TestDialogApp::start().await;
    let url = app.url();
    let (engine, base_key) = (format!("{side}.engine"), format!("{side}.openai.base_url"));
    let mut settings = vec![
        ("dialog.url", url.as_str()),
        (engine.as_str(), "openai"),
        (base_key.as_str(), base),
    ];
    settings.extend_from_slice(extra);
    let server = TestServer::start(&settings);
    let peer = started_dialog_call(&server, &app).await.0;
    (app, server, peer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_synthesis_ends_its_utterance_not_ok_and_the_next_one_plays() {
    // The first request gets its head and 0.2 s of audio, then nothing; later ones stream 1 s.
    let tts = SpeechServer::start(Behaviour::Script(vec![
        Behaviour::Stall { pcm: tone_24k(200) },
        Behaviour::Stream {
            pcm: tone_24k(1000),
            chunk: 4800,
            gap: Duration::from_millis(20),
        },
    ]))
    .await;
    let (app, server, peer) = openai_call(
        "tts",
        &tts.base_url(),
        &[("tts.stream_idle_timeout_ms", "1000")],
    )
    .await;
    let stalls_before = metrics().limit_hits(Limit::TtsStreamIdle);

    let spoke = Instant::now();
    assert!(
        app.send(json!({"type": "tts.speak", "utterance_id": "stalls", "text": "This stalls."}))
    );
    assert!(eventually(5 * SECOND, || !tts.requests().is_empty()).await);
    // The next utterance is queued while the first one hangs: it must not hang with it.
    assert!(app.send(json!({"type": "tts.speak", "utterance_id": "next", "text": "Next."})));

    let ended = app
        .wait_type(5 * SECOND, "tts.ended", Some("stalls"))
        .await
        .expect("the stalled utterance ends");
    let stalled_for = spoke.elapsed();
    assert_eq!(ended["ok"], false);
    // The idle timeout (1 s) after its last bytes, plus the 0.2 s that played: not the rest of
    // the call.
    assert!(
        stalled_for < Duration::from_millis(2500),
        "the stalled utterance took {stalled_for:?} to end"
    );
    let before_next = peer.received_count();
    let next = app
        .wait_type(5 * SECOND, "tts.ended", Some("next"))
        .await
        .expect("the next utterance ends");
    assert_eq!(next["ok"], true, "the next utterance plays normally");
    let next_took = spoke.elapsed();
    let types: Vec<String> = events_of(&app, &peer.call_id)
        .iter()
        .filter(|e| e["type"].as_str().is_some_and(|t| t.starts_with("tts.")))
        .map(|e| format!("{} {}", e["type"].as_str().unwrap(), e["utterance_id"]))
        .collect();
    assert_eq!(
        types,
        [
            "tts.started \"stalls\"",
            "tts.ended \"stalls\"",
            "tts.started \"next\"",
            "tts.ended \"next\""
        ]
    );
    // Its second of audio reached the client.
    let rx = peer.received()[before_next..].to_vec();
    let loud = decode(&rx)
        .chunks(SPEECH_FRAME_SAMPLES)
        .filter(|f| rms(f) > 200.0)
        .count();
    assert!(
        (45..=52).contains(&loud),
        "{loud} loud frames for 1 s of audio"
    );
    assert!(metrics().limit_hits(Limit::TtsStreamIdle) > stalls_before);
    // The stalled request was aborted, not left open for the rest of the call.
    assert!(eventually(2 * SECOND, || tts.abandoned() == 1).await);
    assert_eq!(server.snapshot().await.calls.len(), 1, "the call goes on");
    println!(
        "stalled utterance ended after {} ms (idle timeout 1000 ms); the next one ended after {} ms",
        stalled_for.as_millis(),
        next_took.as_millis()
    );
    peer.close().await;
}

/// `tts.max_segment_audio_ms` bounds what a synthesis may send for one segment: a server that
/// sends audio forever (never quiet, so the idle timeout never ends it) is cut at the bound, its
/// request aborted, its utterance ended `ok: false` with `reason: "audio-too-long"`, counted as
/// `tts_segment_audio`; the next utterance plays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_synthesis_is_cut_at_the_segment_audio_bound_and_the_next_one_plays() {
    const CUT: &str = r#"voicegate_limit_hits_total{limit="tts_segment_audio"}"#;
    // The first request's audio never ends: 100 ms of tone every 10 ms, ten times real time.
    // Later ones stream half a second.
    let tts = SpeechServer::start(Behaviour::Script(vec![
        Behaviour::Flood {
            pcm: tone_24k(100),
            every: Duration::from_millis(10),
        },
        Behaviour::Stream {
            pcm: tone_24k(500),
            chunk: 4800,
            gap: Duration::from_millis(20),
        },
    ]))
    .await;
    let (app, server, peer) = openai_call(
        "tts",
        &tts.base_url(),
        &[("tts.max_segment_audio_ms", "1000")],
    )
    .await;
    let cut_before = common::metric(&server, CUT).await;

    let before = peer.received_count();
    let spoke = Instant::now();
    assert!(
        app.send(
            json!({"type": "tts.speak", "utterance_id": "endless", "text": "This never ends."})
        )
    );
    // The bound's second plays, then the utterance ends; without the bound it would play for as
    // long as the server sends.
    let ended = app
        .wait_type(8 * SECOND, "tts.ended", Some("endless"))
        .await
        .expect("the endless utterance ends");
    let took = spoke.elapsed();
    assert_eq!(ended["ok"], false, "{ended}");
    assert_eq!(ended["reason"], "audio-too-long", "{ended}");
    assert!(
        took < Duration::from_millis(3000),
        "the endless utterance took {took:?} to end"
    );
    let loud = decode(&peer.received()[before..])
        .chunks(SPEECH_FRAME_SAMPLES)
        .filter(|f| rms(f) > 200.0)
        .count();
    assert!(
        (45..=52).contains(&loud),
        "{loud} loud frames for the bound's 1 s of audio"
    );
    assert!(common::metric(&server, CUT).await > cut_before);
    // The synthesis was stopped at the engine: its request was aborted, not read forever.
    assert!(eventually(2 * SECOND, || tts.abandoned() == 1).await);

    // The call goes on: the next utterance plays whole.
    assert!(app.send(json!({"type": "tts.speak", "utterance_id": "next", "text": "Next."})));
    let next = app
        .wait_type(5 * SECOND, "tts.ended", Some("next"))
        .await
        .expect("the next utterance ends");
    assert_eq!(next["ok"], true, "{next}");
    assert!(next.get("reason").is_none(), "{next}");
    let types: Vec<String> = events_of(&app, &peer.call_id)
        .iter()
        .filter(|e| e["type"].as_str().is_some_and(|t| t.starts_with("tts.")))
        .map(|e| format!("{} {}", e["type"].as_str().unwrap(), e["utterance_id"]))
        .collect();
    assert_eq!(
        types,
        [
            "tts.started \"endless\"",
            "tts.ended \"endless\"",
            "tts.started \"next\"",
            "tts.ended \"next\""
        ]
    );
    assert_eq!(tts.requests().len(), 2, "one request per utterance");
    assert_eq!(server.snapshot().await.calls.len(), 1, "the call goes on");
    println!(
        "endless synthesis cut at 1000 ms of audio; its utterance ended after {} ms",
        took.as_millis()
    );
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_or_endless_transcription_is_one_asr_error_and_the_call_is_heard_again() {
    // First reply: a head and nothing more. Second: a byte every 300 ms forever (never idle for
    // the 1 s idle timeout; only the 2 s utterance deadline ends it). Third: a real answer.
    let stt = SpeechServer::start(Behaviour::Script(vec![
        Behaviour::Stall { pcm: Vec::new() },
        Behaviour::Trickle {
            every: Duration::from_millis(300),
        },
        Behaviour::Transcribe("third time lucky".into()),
    ]))
    .await;
    let (app, _server, peer) = openai_call(
        "asr",
        &stt.base_url(),
        &[
            ("asr.stream_idle_timeout_ms", "1000"),
            ("asr.utterance_deadline_ms", "2000"),
        ],
    )
    .await;
    let (idle_before, deadline_before) = (
        metrics().limit_hits(Limit::AsrStreamIdle),
        metrics().limit_hits(Limit::AsrDeadline),
    );
    let speech = spoken("hello world", Duration::from_millis(1000)).await;
    let mut took = Vec::new();
    for n in 1..=3 {
        peer.send_paced(&speech).await.unwrap();
        // The utterance ended 600 ms (listen.end_silence_ms) into the 1 s tail.
        let sent = Instant::now();
        assert!(
            eventually(5 * SECOND, || asr_of(&app, &peer.call_id).len() == n).await,
            "utterance {n}: {:?}",
            asr_of(&app, &peer.call_id)
        );
        took.push(sent.elapsed());
    }
    let asr = asr_of(&app, &peer.call_id);
    assert!(
        asr[0].starts_with("error openai asr: the reply stalled"),
        "{asr:?}"
    );
    assert_eq!(
        asr[1],
        "error recognition timed out: no result 2000 ms after the utterance ended"
    );
    assert_eq!(asr[2], "final third time lucky");
    let errors: Vec<Value> = events_of(&app, &peer.call_id)
        .into_iter()
        .filter(|e| e["type"] == "asr.error")
        .collect();
    assert!(errors.iter().all(|e| e["fatal"] == false));
    // From the end of the audio sent (0.4 s after the utterance ended): the idle timeout, the
    // utterance deadline, an answer at once.
    assert!(took[0] < Duration::from_millis(2000), "{took:?}");
    assert!(
        took[1] > Duration::from_millis(1000) && took[1] < Duration::from_millis(3000),
        "{took:?}"
    );
    assert!(took[2] < Duration::from_millis(1500), "{took:?}");
    assert!(metrics().limit_hits(Limit::AsrStreamIdle) > idle_before);
    assert!(metrics().limit_hits(Limit::AsrDeadline) > deadline_before);
    // Both broken requests were aborted.
    assert!(eventually(3 * SECOND, || stt.abandoned() == 2).await);
    println!(
        "after the audio: stalled reply -> asr.error in {} ms, endless reply -> asr.error in {} ms, \
         good reply -> asr.final in {} ms",
        took[0].as_millis(),
        took[1].as_millis(),
        took[2].as_millis()
    );
    peer.close().await;
}

/// `asr.openai.max_reply_bytes` is the bound enforced on a transcription reply, a JSON one
/// whole and a streamed one's events together: replies over a small configured limit (far
/// under the default) fail their utterances with one `asr.error` each, counted as
/// `asr_reply_bytes`, even when each event is small; a reply within it is heard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transcription_reply_over_the_configured_size_is_one_asr_error() {
    const TOO_BIG: &str = r#"voicegate_limit_hits_total{limit="asr_reply_bytes"}"#;
    // About 5 KB of JSON; then about 1.5 KB of text in 300 events of 60 bytes, 18 KB in all.
    let stt = SpeechServer::start(Behaviour::Script(vec![
        Behaviour::Transcribe("word ".repeat(1000)),
        Behaviour::TranscribeStream {
            text: vec!["word"; 300].join(" "),
            gap: Duration::ZERO,
        },
        Behaviour::Transcribe("third time lucky".into()),
    ]))
    .await;
    let (app, server, peer) = openai_call(
        "asr",
        &stt.base_url(),
        &[("asr.openai.max_reply_bytes", "4096")],
    )
    .await;
    let too_big = common::metric(&server, TOO_BIG).await;
    let speech = spoken("hello world", Duration::from_millis(1000)).await;
    for n in 1..=3 {
        peer.send_paced(&speech).await.unwrap();
        assert!(
            eventually(5 * SECOND, || asr_of(&app, &peer.call_id).len() == n).await,
            "utterance {n}: {:?}",
            asr_of(&app, &peer.call_id)
        );
    }
    assert_eq!(
        asr_of(&app, &peer.call_id),
        [
            "error openai asr: the reply is larger than 4096 bytes",
            "error openai asr: the reply is larger than 4096 bytes",
            "final third time lucky"
        ]
    );
    assert_eq!(stt.requests().len(), 3, "each asked once, as a stream");
    assert!(common::metric(&server, TOO_BIG).await - too_big >= 2.0);
    assert_eq!(server.snapshot().await.calls.len(), 1, "the call goes on");
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_recognizer_refuses_or_times_out_and_a_fresh_call_is_still_heard() {
    let app = TestDialogApp::start().await;
    let url = app.url();
    let grammar = format!("{}/tests/fixtures/test.gram", env!("CARGO_MANIFEST_DIR"));
    // One decoder (the test default) and room for two waiting utterances, one per call.
    let server = TestServer::start(&[
        ("dialog.url", &url),
        ("asr.pocketsphinx.grammar", &grammar),
        ("asr.pocketsphinx.queue_max", "2"),
        ("asr.utterance_deadline_ms", "1000"),
    ]);
    let hog = started_dialog_call(&server, &app).await.0;
    let others = [
        started_dialog_call(&server, &app).await.0,
        started_dialog_call(&server, &app).await.0,
        started_dialog_call(&server, &app).await.0,
    ];
    let (full_before, deadline_before) = (
        metrics().limit_hits(Limit::AsrQueueFull),
        metrics().limit_hits(Limit::AsrDeadline),
    );
    // One caller talks without a pause for about 8 s and holds the only decoder meanwhile.
    let long = spoken(
        "the quick brown fox jumps over the lazy dog and the quick brown fox jumps over the lazy \
         dog and please call me back tomorrow",
        Duration::from_millis(1000),
    )
    .await;
    let short = spoken("hello world", Duration::from_millis(1000)).await;
    let t0 = Instant::now();
    let hogging = tokio::spawn({
        let long = long.clone();
        async move {
            hog.send_paced(&long).await.unwrap();
            hog
        }
    });
    tokio::time::sleep(SECOND).await;
    // Three more callers speak at once: two utterances wait (one per call), one is refused.
    let mut talking = Vec::new();
    for peer in others {
        let short = short.clone();
        talking.push(tokio::spawn(async move {
            peer.send_paced(&short).await.unwrap();
            peer
        }));
    }
    let mut others = Vec::new();
    for t in talking {
        others.push(t.await.unwrap());
    }
    let ids: Vec<String> = others.iter().map(|p| p.call_id.clone()).collect();
    assert!(
        eventually(3 * SECOND, || ids
            .iter()
            .all(|id| !asr_of(&app, id).is_empty()))
        .await,
        "every waiting caller hears back: {:?}",
        ids.iter().map(|id| asr_of(&app, id)).collect::<Vec<_>>()
    );
    let answered = t0.elapsed();
    let outcomes: Vec<String> = ids.iter().map(|id| asr_of(&app, id).join("; ")).collect();
    let refused = outcomes
        .iter()
        .filter(|o| o.contains("server is busy"))
        .count();
    let timed_out = outcomes
        .iter()
        .filter(|o| o.contains("recognition timed out"))
        .count();
    assert_eq!((refused, timed_out), (1, 2), "{outcomes:?}");
    assert!(
        answered < long.len() as u32 * Duration::from_millis(20),
        "the waiting callers heard back after {answered:?}, not after the long talker"
    );
    assert!(metrics().limit_hits(Limit::AsrQueueFull) > full_before);
    assert!(metrics().limit_hits(Limit::AsrDeadline) >= deadline_before + 2);

    // Once the long talker is done, a fresh call is recognized exactly.
    let hog = hogging.await.unwrap();
    let fresh = started_dialog_call(&server, &app).await.0;
    fresh
        .send_paced(
            &spoken(
                "what is the weather like today",
                Duration::from_millis(1000),
            )
            .await,
        )
        .await
        .unwrap();
    assert!(
        eventually(5 * SECOND, || !asr_of(&app, &fresh.call_id).is_empty()).await,
        "the fresh call hears back"
    );
    assert_eq!(
        asr_of(&app, &fresh.call_id),
        ["final what is the weather like today"]
    );
    println!(
        "overloaded: {outcomes:?} within {} ms of the start, while the long talker spoke for {} ms",
        answered.as_millis(),
        long.len() * 20
    );
    for p in others.iter().chain([&hog, &fresh]) {
        p.close().await;
    }
}
