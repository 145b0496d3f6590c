//! Speech in end to end: a real WebRTC client peer says espeak-ng sentences as Opus, in real
//! time; pocketsphinx with a JSGF grammar recognizes them; a test dialog app records the events.

mod common;

use common::{TestServer, eventually, speech_pcm, spoken, started_dialog_call};
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

/// Key presses beyond `listen.max_key_presses_per_s` are not reported (each is an event for the
/// app, and the packets are the caller's to craft): six presses in 0.84 s with 2 per second let
/// the burst of 2 and what refilled meanwhile through, and the rest are counted as a limit hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_presses_beyond_the_rate_are_dropped_and_counted() {
    let app = TestDialogApp::start().await;
    let server = server(&app, &[("listen.max_key_presses_per_s", "2")]);
    let peer = started(&server, &app).await;
    let pt = voicegate_core::sdp::check_offer(&peer.offer)
        .unwrap()
        .telephone_event_pt
        .expect("the client offers DTMF");
    let hits = || {
        voicegate_actors::metrics::metrics()
            .limit_hits(voicegate_actors::metrics::Limit::KeyPresses)
    };
    let before = hits();
    for digit in ['1', '2', '3', '4', '5', '6'] {
        peer.send_dtmf(pt, digit).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let digits: Vec<String> = of_type(&app, "dtmf")
        .iter()
        .map(|e| e["digit"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        (2..=4).contains(&digits.len()),
        "2 at once and about 2 per second after: {digits:?}"
    );
    assert_eq!(digits[..2], ["1", "2"]);
    assert!(hits() - before >= 2, "the dropped presses were counted");
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

/// The streaming stand-in's transcription: five words, 120 ms apart.
const FIVE_WORDS: &str = "one two three four five";

/// A streaming OpenAI-compatible recognizer (`behaviour` around it, `None`: as it is) saying
/// [`FIVE_WORDS`], a dialog app, and a server whose recognizer it is, with partials every 100 ms
/// and `extra` settings.
async fn streaming_recognizer(
    around: impl FnOnce(Behaviour) -> Behaviour,
    extra: &[(&str, &str)],
) -> (SpeechServer, TestDialogApp, TestServer) {
    let stt = SpeechServer::start(around(Behaviour::TranscribeStream {
        text: FIVE_WORDS.into(),
        gap: Duration::from_millis(120),
    }))
    .await;
    let app = TestDialogApp::start().await;
    let base = stt.base_url();
    let mut settings = vec![
        ("asr.engine", "openai"),
        ("asr.openai.base_url", base.as_str()),
        ("asr.partial_interval_ms", "100"),
    ];
    settings.extend_from_slice(extra);
    let server = server(&app, &settings);
    (stt, app, server)
}

/// A server that streams its transcription gives partials before the final; one that refuses
/// `stream` (whisper-1) is asked again without it, and not asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_asr_streams_partials_when_the_server_can_and_falls_back_once_when_not() {
    let (stt, app, first) = streaming_recognizer(|b| b, &[]).await;
    let peer = started(&first, &app).await;
    let form = hello_to_the_recognizer(&peer, &app, &stt, FIVE_WORDS).await;
    assert_eq!(form.fields.get("stream").map(String::as_str), Some("true"));
    let partials: Vec<String> = of_type(&app, "asr.partial")
        .iter()
        .map(|e| e["text"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        partials.len() >= 2 && partials.iter().all(|p| FIVE_WORDS.starts_with(p.as_str())),
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
    let (stt, app, first) = streaming_recognizer(|b| b, &[("asr.openai.logprobs", "true")]).await;
    let peer = started(&first, &app).await;
    let form = hello_to_the_recognizer(&peer, &app, &stt, FIVE_WORDS).await;
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

/// The `asr.final` / `asr.error` events of `call`, as "final <text>" / "error <message>".
fn results_of(app: &TestDialogApp, call: &str) -> Vec<String> {
    app.events()
        .into_iter()
        .filter(|e| e["call_id"] == call)
        .filter_map(|e| match e["type"].as_str()? {
            "asr.final" => Some(format!("final {}", e["text"].as_str()?)),
            "asr.error" => Some(format!("error {}", e["message"].as_str()?)),
            _ => None,
        })
        .collect()
}

/// A caller whose network drops while they speak (their packets stop mid-utterance, so the
/// endpointer never ends it; their call is still up) holds the only decoder for seconds, not
/// until their call times out: another caller's utterance, waiting for that decoder, is still
/// recognized within its deadline, and the first caller's utterance gets one `asr.error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_who_drops_mid_utterance_does_not_hold_up_another_calls_recognition() {
    let app = TestDialogApp::start().await;
    // One decoder (the tests' default), and the default deadline (`asr.utterance_deadline_ms`,
    // 15 s): a result later than that is an `asr.error` ("recognition timed out").
    let server = server(&app, &[]);
    let (dropped, _) = started_dialog_call(&server, &app).await;
    let (other, _) = started_dialog_call(&server, &app).await;
    let sentence = spoken("what is the weather like today", Duration::ZERO).await;
    dropped
        .send_paced(&sentence[..sentence.len() / 2])
        .await
        .unwrap();
    // Nothing more from the first caller. The other speaks right after.
    other
        .send_paced(&spoken("turn on the kitchen lights", Duration::from_millis(1000)).await)
        .await
        .unwrap();
    let ended = Instant::now();
    assert!(
        eventually(20 * SECOND, || !results_of(&app, &other.call_id).is_empty()).await,
        "the other caller hears back"
    );
    println!(
        "the other caller's result came {:?} after its audio",
        ended.elapsed()
    );
    assert_eq!(
        results_of(&app, &other.call_id),
        ["final turn on the kitchen lights"],
        "recognized within its deadline"
    );
    // The first caller's utterance failed, once, saying why.
    assert!(
        eventually(5 * SECOND, || !results_of(&app, &dropped.call_id)
            .is_empty())
        .await,
        "the dropped caller's utterance ends"
    );
    // And nothing after it: a final would have followed at once.
    tokio::time::sleep(SECOND).await;
    assert_eq!(
        results_of(&app, &dropped.call_id),
        ["error pocketsphinx: no audio for 3000 ms mid-utterance (the caller's audio stopped)"]
    );
    dropped.close().await;
    other.close().await;
}

/// `asr.pocketsphinx.audio_gap_max_ms` is the gap enforced: set to 1 s, a caller whose packets
/// stop mid-utterance gets its one `asr.error` about a second after their last audio, not after
/// the default 3 s, counted as `asr_audio_gap`; the decoder (the only one) is free at once for
/// another call's utterance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_audio_gap_ends_a_dropped_callers_utterance_and_frees_the_decoder() {
    const GAPS: &str = r#"voicegate_limit_hits_total{limit="asr_audio_gap"}"#;
    let app = TestDialogApp::start().await;
    let server = server(&app, &[("asr.pocketsphinx.audio_gap_max_ms", "1000")]);
    let (dropped, _) = started_dialog_call(&server, &app).await;
    let gaps = common::metric(&server, GAPS).await;
    let sentence = spoken("what is the weather like today", Duration::ZERO).await;
    dropped
        .send_paced(&sentence[..sentence.len() / 2])
        .await
        .unwrap();
    // Nothing more from this caller, whose call is still up.
    let stopped = Instant::now();
    assert!(
        eventually(5 * SECOND, || !results_of(&app, &dropped.call_id)
            .is_empty())
        .await,
        "the dropped caller's utterance ends"
    );
    let took = stopped.elapsed();
    assert_eq!(
        results_of(&app, &dropped.call_id),
        ["error pocketsphinx: no audio for 1000 ms mid-utterance (the caller's audio stopped)"]
    );
    // The codec hands audio over in 100 ms batches, so the decoder's last may be a little
    // older than the last packet.
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_millis(2500),
        "asr.error {took:?} after the last audio"
    );
    assert!(common::metric(&server, GAPS).await - gaps >= 1.0);
    // The decoder is free: another call's utterance is recognized.
    let (other, _) = started_dialog_call(&server, &app).await;
    other
        .send_paced(&spoken("turn on the kitchen lights", Duration::from_millis(1000)).await)
        .await
        .unwrap();
    assert!(
        eventually(5 * SECOND, || !results_of(&app, &other.call_id).is_empty()).await,
        "the other caller hears back"
    );
    assert_eq!(
        results_of(&app, &other.call_id),
        ["final turn on the kitchen lights"]
    );
    println!("the dropped caller's utterance failed {took:?} after their last audio");
    dropped.close().await;
    other.close().await;
}

/// A `400` about something other than the optional parts (a language the server does not know,
/// set by the dialog app's `session.update`) fails that utterance only: the server is still
/// asked for streamed transcriptions and their log probabilities for every other utterance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_asr_a_request_the_server_refuses_for_its_language_fails_that_utterance_only() {
    let want = voicegate_testkit::speech_server::TOKEN_LOGPROB.exp();
    let (stt, app, server) = streaming_recognizer(
        |b| Behaviour::RefuseLanguage("xx".into(), Box::new(b)),
        &[("asr.openai.logprobs", "true")],
    )
    .await;
    let (bad, _) = started_dialog_call(&server, &app).await;
    assert!(app.send(json!({"type": "session.update", "session": {"asr": {"language": "xx"}}})));
    app.wait_type(5 * SECOND, "session.updated", None)
        .await
        .expect("session.updated");
    let speech = spoken("hello world", Duration::from_millis(1000)).await;
    bad.send_paced(&speech).await.unwrap();
    assert!(
        eventually(5 * SECOND, || !results_of(&app, &bad.call_id).is_empty()).await,
        "{:?}",
        app.types()
    );
    let failed = results_of(&app, &bad.call_id);
    assert!(
        failed.len() == 1 && failed[0].starts_with("error ") && failed[0].contains("HTTP 400"),
        "{failed:?}"
    );
    // Asked again without each optional part, and refused all the same.
    let asked = |r: &voicegate_testkit::speech_server::Recorded| {
        let f = &r.form.as_ref().expect("a multipart form").fields;
        (
            f.contains_key("include[]"),
            f.contains_key("stream"),
            f.get("language").cloned().unwrap_or_default(),
        )
    };
    let xx = || "xx".to_owned();
    assert_eq!(
        stt.requests().iter().map(asked).collect::<Vec<_>>(),
        [
            (true, true, xx()),
            (false, true, xx()),
            (false, false, xx())
        ]
    );

    // Another call, in the configured language: still streamed, with the tokens' confidence.
    let (good, _) = started_dialog_call(&server, &app).await;
    good.send_paced(&speech).await.unwrap();
    assert!(
        eventually(5 * SECOND, || !results_of(&app, &good.call_id).is_empty()).await,
        "{:?}",
        app.types()
    );
    assert_eq!(
        results_of(&app, &good.call_id),
        ["final one two three four five"]
    );
    let last = stt.requests().last().map(asked);
    assert!(
        matches!(&last, Some((true, true, l)) if l != "xx"),
        "{last:?}"
    );
    let of_call = |kind: &str| -> Vec<Value> {
        of_type(&app, kind)
            .into_iter()
            .filter(|e| e["call_id"] == good.call_id)
            .collect()
    };
    let close = |e: &Value| {
        e["confidence"]
            .as_f64()
            .is_some_and(|c| (c - want).abs() < 0.01)
    };
    let partials = of_call("asr.partial");
    assert!(
        !partials.is_empty() && partials.iter().all(close),
        "{partials:?}"
    );
    let finals = of_call("asr.final");
    assert!(finals.len() == 1 && close(&finals[0]), "{finals:?}");
    bad.close().await;
    good.close().await;
}
