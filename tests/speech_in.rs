//! Speech in end to end: a real WebRTC client peer says espeak-ng sentences as Opus, in real
//! time; pocketsphinx with a JSGF grammar recognizes them; a test dialog app records the events.

mod common;

use common::{TestServer, eventually, speech_pcm, spoken};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use voicegate_testkit::ClientPeer;
use voicegate_testkit::dialog_app::TestDialogApp;
use voicegate_testkit::speech_server::{Behaviour, Form, SpeechServer};

const SECOND: Duration = Duration::from_secs(1);

fn grammar() -> String {
    format!("{}/tests/fixtures/test.gram", env!("CARGO_MANIFEST_DIR"))
}

fn server(app: &TestDialogApp, extra: &[(&str, &str)]) -> TestServer {
    let url = app.url();
    let grammar = grammar();
    let mut s = vec![
        ("dialog.url", url.as_str()),
        ("asr.pocketsphinx.grammar", grammar.as_str()),
    ];
    s.extend_from_slice(extra);
    TestServer::start(&s)
}

async fn started(server: &TestServer, app: &TestDialogApp) -> ClientPeer {
    let peer = ClientPeer::call(server.http, "/webrtc/v1/offer")
        .await
        .unwrap();
    peer.wait_connected(5 * SECOND).await.unwrap();
    app.wait_type(5 * SECOND, "call.started", None)
        .await
        .expect("call.started");
    peer
}

/// Checks `wav` is a valid 16 kHz (the speech rate) mono 16-bit WAV and returns its length in
/// seconds: the utterance, with its pre-roll and end-of-utterance silence.
fn utterance_wav_seconds(wav: &[u8]) -> f64 {
    assert_eq!(&wav[..4], b"RIFF");
    assert_eq!(&wav[8..16], b"WAVEfmt ");
    assert_eq!(u16::from_le_bytes([wav[22], wav[23]]), 1, "mono");
    let rate = u32::from_le_bytes([wav[24], wav[25], wav[26], wav[27]]);
    assert_eq!(rate, voicegate_core::frame::SPEECH_RATE);
    assert_eq!(u16::from_le_bytes([wav[34], wav[35]]), 16, "16-bit");
    let data_len = u32::from_le_bytes([wav[40], wav[41], wav[42], wav[43]]) as usize;
    assert_eq!(data_len, wav.len() - 44);
    data_len as f64 / (2 * rate) as f64
}

/// Says "hello world" with a second of silence after it, waits for the `asr.final` carrying
/// `expected` (the stand-in recognizer's reply), and returns the form the recognizer received;
/// its WAV must hold the utterance, about a second and a half long.
async fn hello_to_the_recognizer(
    peer: &ClientPeer,
    app: &TestDialogApp,
    stt: &SpeechServer,
    expected: &str,
) -> Form {
    let speech = spoken("hello world", Duration::from_millis(1000)).await;
    peer.send_paced(&speech).await.unwrap();
    let f = app
        .wait_type(5 * SECOND, "asr.final", None)
        .await
        .expect("asr.final");
    assert_eq!(f["text"], expected);
    let form = stt.requests()[0].form.clone().expect("a multipart form");
    let secs = utterance_wav_seconds(&form.file);
    assert!((1.0..2.6).contains(&secs), "the utterance is {secs} s");
    form
}

fn of_type(app: &TestDialogApp, kind: &str) -> Vec<Value> {
    app.events()
        .into_iter()
        .filter(|e| e["type"] == kind)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoken_sentences_arrive_as_exact_finals_after_partials() {
    let app = TestDialogApp::start().await;
    let server = server(&app, &[]);
    let peer = started(&server, &app).await;
    for (i, sentence) in [
        "what is the weather like today",
        "the quick brown fox jumps over the lazy dog",
    ]
    .iter()
    .enumerate()
    {
        let packets = spoken(sentence, Duration::from_millis(1000)).await;
        peer.send_paced(&packets).await.unwrap();
        assert!(
            eventually(3 * SECOND, || of_type(&app, "asr.final").len() > i).await,
            "no asr.final for {sentence:?}: {:?}",
            app.types()
        );
    }
    let finals: Vec<String> = of_type(&app, "asr.final")
        .iter()
        .map(|e| e["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        finals,
        [
            "what is the weather like today",
            "the quick brown fox jumps over the lazy dog"
        ],
        "exactly, once each"
    );
    // Partials came before each final, and never repeated the same text twice in a row.
    let types = app.types();
    let first_final = types.iter().position(|t| t == "asr.final").unwrap();
    assert!(
        types[..first_final].contains(&"asr.partial".to_owned()),
        "{types:?}"
    );
    let partials: Vec<String> = of_type(&app, "asr.partial")
        .iter()
        .map(|e| e["text"].as_str().unwrap().to_owned())
        .collect();
    assert!(partials.windows(2).all(|w| w[0] != w[1]), "{partials:?}");
    // Each final says what the network did (nothing, on loopback).
    let f = &of_type(&app, "asr.final")[0];
    assert_eq!(
        (
            f["lost_ms"].as_u64(),
            f["recovered_ms"].as_u64(),
            f["concealed_ms"].as_u64()
        ),
        (Some(0), Some(0), Some(0))
    );
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_packets_are_reported_on_the_final() {
    let app = TestDialogApp::start().await;
    let server = server(&app, &[]);
    let peer = started(&server, &app).await;
    let packets = spoken("please call me back tomorrow", Duration::from_millis(1000)).await;
    // Drop every 10th packet of the speech (not of the silence around it).
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut dropped = 0;
    for (i, p) in packets.iter().enumerate() {
        tick.tick().await;
        if (20..packets.len() - 50).contains(&i) && i % 10 == 0 {
            peer.skip_frame();
            dropped += 1;
            continue;
        }
        peer.send(p.clone()).await.unwrap();
    }
    let f = app
        .wait_type(3 * SECOND, "asr.final", None)
        .await
        .expect("asr.final despite the loss");
    assert_eq!(f["text"], "please call me back tomorrow");
    let lost = f["lost_ms"].as_u64().unwrap();
    assert!(
        lost >= 20 * (dropped - 2) && lost <= 20 * dropped,
        "lost_ms {lost}, dropped {dropped} packets"
    );
    assert_eq!(
        f["recovered_ms"].as_u64().unwrap() + f["concealed_ms"].as_u64().unwrap(),
        lost,
        "each lost packet was rebuilt or concealed"
    );
    assert!(
        f["recovered_ms"].as_u64().unwrap() > 0,
        "the browser-like sender uses in-band FEC"
    );
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_stops_playback_reports_what_was_heard_and_keeps_the_words() {
    let app = TestDialogApp::start().await;
    let server = server(&app, &[]);
    let peer = started(&server, &app).await;
    let long = "This is a long answer that keeps going for a while. ".repeat(6);
    assert!(app.send(json!({"type": "tts.speak", "utterance_id": "long", "text": long})));
    app.wait_type(5 * SECOND, "tts.started", Some("long"))
        .await
        .expect("tts.started");
    let speak_started = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let speech = spoken("stop talking please", Duration::from_millis(1000)).await;
    peer.send_paced(&speech).await.unwrap();
    let interrupt = app
        .wait_type(3 * SECOND, "tts.interrupt", Some("long"))
        .await
        .expect("tts.interrupt");
    let interrupt_at = app
        .timed_events()
        .iter()
        .find(|(_, e)| e["type"] == "tts.interrupt")
        .unwrap()
        .0;
    let ended = app
        .wait_type(2 * SECOND, "tts.ended", Some("long"))
        .await
        .expect("tts.ended");
    assert_eq!(ended["ok"], false);
    // Downlink audio stopped at the decision: nothing arrived 100 ms after the event.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rx = peer.received();
    let last = rx.iter().map(|p| p.at).max().unwrap();
    assert!(
        last <= interrupt_at + Duration::from_millis(100),
        "audio went on {:?} after the interrupt",
        last.duration_since(interrupt_at)
    );
    // played_ms matches the audio the client received for the utterance, within 40 ms.
    let heard = rx
        .iter()
        .filter(|p| p.at >= speak_started - Duration::from_millis(200))
        .count() as i64
        * 20;
    let played = interrupt["played_ms"].as_i64().unwrap();
    assert!(
        (played - heard).abs() <= 40,
        "played_ms {played}, the client received {heard} ms"
    );
    let text = interrupt["played_text"].as_str().unwrap();
    assert!(
        text.starts_with("This is a long answer") && text.ends_with('…'),
        "{text}"
    );
    assert!(
        interrupt["played_segments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["complete"] == false)
    );
    // The interrupting words were not lost: they are the next final.
    let f = app
        .wait_type(3 * SECOND, "asr.final", None)
        .await
        .expect("asr.final");
    assert_eq!(f["text"], "stop talking please");
    println!("barge-in: played_ms {played}, client heard {heard} ms");
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtmf_key_presses_arrive_once_each_in_order() {
    let app = TestDialogApp::start().await;
    let server = server(&app, &[]);
    let peer = started(&server, &app).await;
    let pt = voicegate_core::sdp::check_offer(&peer.offer)
        .unwrap()
        .telephone_event_pt
        .expect("the client offers DTMF");
    assert!(
        peer.answer.contains("telephone-event/8000"),
        "the answer accepts DTMF"
    );
    for digit in ['1', '#', '9', '*', 'A'] {
        peer.send_dtmf(pt, digit).await.unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert!(eventually(2 * SECOND, || of_type(&app, "dtmf").len() >= 5).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let digits: Vec<String> = of_type(&app, "dtmf")
        .iter()
        .map(|e| e["digit"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(digits, ["1", "#", "9", "*", "A"]);
    assert!(of_type(&app, "dtmf").iter().all(|e| e["end"] == true));
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_asr_gets_a_wav_of_the_utterance_and_its_text_is_the_final() {
    let stt = SpeechServer::start(Behaviour::Transcribe("the text from the server".into())).await;
    let app = TestDialogApp::start().await;
    let base = stt.base_url();
    let server = server(
        &app,
        &[
            ("asr.engine", "openai"),
            ("asr.openai.base_url", &base),
            ("asr.openai.model", "whisper-test"),
            ("asr.openai.language", "en"),
        ],
    );
    let peer = started(&server, &app).await;
    let form = hello_to_the_recognizer(&peer, &app, &stt, "the text from the server").await;
    assert_eq!(stt.requests()[0].path, "/v1/audio/transcriptions");
    assert_eq!(
        form.fields.get("model").map(String::as_str),
        Some("whisper-test")
    );
    assert_eq!(form.fields.get("language").map(String::as_str), Some("en"));
    peer.close().await;
}

/// A server like whisper-1 (it refuses `stream` and `include[]`), a call whose recognizer is
/// it (with `extra` settings), and two utterances spoken: both finals are its text.
async fn two_utterances_to_a_whisper_server(
    extra: &[(&str, &str)],
) -> (SpeechServer, TestDialogApp, TestServer, ClientPeer) {
    let stt = SpeechServer::start(Behaviour::RefuseStream("not streamed".into())).await;
    let app = TestDialogApp::start().await;
    let base = stt.base_url();
    let mut settings = vec![
        ("asr.engine", "openai"),
        ("asr.openai.base_url", base.as_str()),
    ];
    settings.extend_from_slice(extra);
    let server = server(&app, &settings);
    let peer = started(&server, &app).await;
    let speech = spoken("hello world", Duration::from_millis(1000)).await;
    for n in 1..=2 {
        peer.send_paced(&speech).await.unwrap();
        assert!(
            eventually(5 * SECOND, || of_type(&app, "asr.final").len() == n).await,
            "{:?}",
            app.types()
        );
    }
    let finals = of_type(&app, "asr.final");
    assert!(
        finals.iter().all(|f| f["text"] == "not streamed"),
        "{finals:?}"
    );
    (stt, app, server, peer)
}

/// A server that streams its transcription gives partials before the final; one that refuses
/// `stream` (whisper-1) is asked again without it, and not asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_asr_streams_partials_when_the_server_can_and_falls_back_once_when_not() {
    let stt = SpeechServer::start(Behaviour::TranscribeStream {
        text: "one two three four five".into(),
        gap: Duration::from_millis(120),
    })
    .await;
    let app = TestDialogApp::start().await;
    let base = stt.base_url();
    let first = server(
        &app,
        &[
            ("asr.engine", "openai"),
            ("asr.openai.base_url", &base),
            ("asr.partial_interval_ms", "100"),
        ],
    );
    let peer = started(&first, &app).await;
    let form = hello_to_the_recognizer(&peer, &app, &stt, "one two three four five").await;
    assert_eq!(form.fields.get("stream").map(String::as_str), Some("true"));
    let partials: Vec<String> = of_type(&app, "asr.partial")
        .iter()
        .map(|e| e["text"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        partials.len() >= 2
            && partials
                .iter()
                .all(|p| "one two three four five".starts_with(p.as_str())),
        "{partials:?}"
    );
    peer.close().await;

    drop(first);
    let (stt, app, _second, peer) = two_utterances_to_a_whisper_server(&[]).await;
    let asked: Vec<bool> = stt
        .requests()
        .iter()
        .map(|r| r.form.as_ref().unwrap().fields.contains_key("stream"))
        .collect();
    assert_eq!(asked, [true, false, false], "asked once, then never again");
    // The call's three requests went out on one connection (the worker's pool).
    assert_eq!(stt.connections(), 1);
    assert!(of_type(&app, "asr.error").is_empty());
    peer.close().await;
}

/// With `asr.openai.logprobs`, a server that answers the tokens' log probabilities (gpt-4o
/// models) gives every partial and the final their geometric mean as the confidence; one that
/// refuses them (whisper-1) is asked again without them, then without `stream`, and neither is
/// asked again; its results carry no confidence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_asr_confidence_comes_from_the_tokens_log_probabilities_when_asked() {
    let want = voicegate_testkit::speech_server::TOKEN_LOGPROB.exp();
    let stt = SpeechServer::start(Behaviour::TranscribeStream {
        text: "one two three four five".into(),
        gap: Duration::from_millis(120),
    })
    .await;
    let app = TestDialogApp::start().await;
    let base = stt.base_url();
    let first = server(
        &app,
        &[
            ("asr.engine", "openai"),
            ("asr.openai.base_url", &base),
            ("asr.openai.logprobs", "true"),
            ("asr.partial_interval_ms", "100"),
        ],
    );
    let peer = started(&first, &app).await;
    let form = hello_to_the_recognizer(&peer, &app, &stt, "one two three four five").await;
    assert_eq!(
        form.fields.get("include[]").map(String::as_str),
        Some("logprobs")
    );
    let close = |e: &Value| {
        e["confidence"]
            .as_f64()
            .is_some_and(|c| (c - want).abs() < 0.01)
    };
    let partials = of_type(&app, "asr.partial");
    assert!(
        !partials.is_empty() && partials.iter().all(close),
        "{partials:?}"
    );
    let finals = of_type(&app, "asr.final");
    assert!(finals.len() == 1 && close(&finals[0]), "{finals:?}");
    peer.close().await;

    drop(first);
    let (stt, app, _second, peer) =
        two_utterances_to_a_whisper_server(&[("asr.openai.logprobs", "true")]).await;
    let finals = of_type(&app, "asr.final");
    assert!(
        finals
            .iter()
            .all(|f| f.get("confidence").is_none_or(Value::is_null)),
        "{finals:?}"
    );
    let asked: Vec<(bool, bool)> = stt
        .requests()
        .iter()
        .map(|r| {
            let f = &r.form.as_ref().unwrap().fields;
            (f.contains_key("include[]"), f.contains_key("stream"))
        })
        .collect();
    assert_eq!(
        asked,
        [(true, true), (false, true), (false, false), (false, false)],
        "log probabilities dropped first, then streaming, each once"
    );
    assert!(of_type(&app, "asr.error").is_empty());
    peer.close().await;
}

/// At another `media.pcm_rate` the speech path still hears 16 kHz: the utterance is found, cut
/// at the right length and sent to the recognizer as 16 kHz audio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_a_48_khz_pcm_rate_the_recognizer_still_gets_the_utterance_at_16_khz() {
    let stt = SpeechServer::start(Behaviour::Transcribe("heard at 48 kHz".into())).await;
    let app = TestDialogApp::start().await;
    let base = stt.base_url();
    let server = server(
        &app,
        &[
            ("media.pcm_rate", "48000"),
            ("asr.engine", "openai"),
            ("asr.openai.base_url", &base),
        ],
    );
    let peer = started(&server, &app).await;
    assert_eq!(of_type(&app, "call.started")[0]["pcm_hz"], 48000);
    hello_to_the_recognizer(&peer, &app, &stt, "heard at 48 kHz").await;
    peer.close().await;
}

/// `text` with fan noise (brown noise and a 100 Hz hum, `voicegate_core::noise::fan`) under it
/// at `snr_db`, from a second before the speech to two seconds after it, as Opus packets.
async fn spoken_over_a_fan(text: &str, snr_db: f64) -> Vec<bytes::Bytes> {
    let (speech, rate) = speech_pcm(text).await;
    let mut pcm = vec![0i16; rate as usize];
    pcm.extend_from_slice(&speech);
    pcm.resize(pcm.len() + 2 * rate as usize, 0);
    let noise = voicegate_core::noise::fan(rate, pcm.len(), 13);
    let noisy = voicegate_core::noise::mix_at_snr(&pcm, &noise, snr_db);
    voicegate_testkit::peer::opus_speech(&noisy, rate, Duration::ZERO, Duration::ZERO)
}

/// With `listen.denoise = "rnnoise"` a caller next to a loud fan (5 dB SNR) is still heard
/// exactly: one utterance, recognized as the grammar's phrase, ended by the silence after it
/// (the fan goes on; without the denoiser the detector hears it as speech and the utterance
/// does not end while the fan runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denoised_call_over_fan_noise_recognizes_the_phrase_exactly() {
    let app = TestDialogApp::start().await;
    let server = server(&app, &[("listen.denoise", "rnnoise")]);
    let peer = started(&server, &app).await;
    let packets = spoken_over_a_fan("turn on the kitchen lights", 5.0).await;
    peer.send_paced(&packets).await.unwrap();
    assert!(
        eventually(2 * SECOND, || !of_type(&app, "asr.final").is_empty()).await,
        "no asr.final: {:?}",
        app.types()
    );
    let finals: Vec<Value> = of_type(&app, "asr.final");
    assert_eq!(finals.len(), 1, "{finals:?}");
    assert_eq!(finals[0]["text"], "turn on the kitchen lights");
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_recognizer_reports_asr_error_and_the_call_and_its_speech_go_on() {
    let stt = SpeechServer::start(Behaviour::Fail(503)).await;
    let app = TestDialogApp::start().await;
    let base = stt.base_url();
    let server = server(
        &app,
        &[("asr.engine", "openai"), ("asr.openai.base_url", &base)],
    );
    let peer = started(&server, &app).await;
    peer.send_paced(&spoken("hello world", Duration::from_millis(1000)).await)
        .await
        .unwrap();
    let e = app
        .wait_type(5 * SECOND, "asr.error", None)
        .await
        .expect("asr.error");
    assert_eq!(e["fatal"], false);
    assert!(e["message"].as_str().unwrap().contains("503"), "{e}");
    app.send(json!({"type": "tts.speak", "utterance_id": "still", "text": "Still here."}));
    let ended = app
        .wait_type(10 * SECOND, "tts.ended", Some("still"))
        .await
        .expect("speech still works");
    assert_eq!(ended["ok"], true);
    assert_eq!(server.snapshot().await.calls.len(), 1);
    peer.close().await;
}
