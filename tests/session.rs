//! Session control end to end: a dialog app changes its call's speech engine, voice and speed,
//! its recognizer's grammar, profile and language, and barge-in, with `session.update`; real
//! client peer, real espeak-ng and pocketsphinx, local OpenAI-compatible stand-ins that record
//! what voicegate asked them for.

mod common;

use common::{TestServer, eventually, spoken, started_dialog_call};
use serde_json::{Value, json};
use std::time::Duration;
use voicegate_core::tone;
use voicegate_testkit::dialog_app::TestDialogApp;
use voicegate_testkit::speech_server::{Behaviour, SpeechServer};

const SECOND: Duration = Duration::from_secs(1);

fn of_type(app: &TestDialogApp, kind: &str) -> Vec<Value> {
    app.events()
        .into_iter()
        .filter(|e| e["type"] == kind)
        .collect()
}

/// Sends `session` as a `session.update` and waits for its answer: the `session.updated` or
/// `error` event after the ones already there.
async fn update(app: &TestDialogApp, session: Value) -> Value {
    let before = of_type(app, "session.updated").len() + of_type(app, "error").len();
    assert!(app.send(json!({"type": "session.update", "session": session})));
    assert!(
        eventually(5 * SECOND, || {
            of_type(app, "session.updated").len() + of_type(app, "error").len() > before
        })
        .await,
        "no answer to session.update: {:?}",
        app.types()
    );
    app.events()
        .into_iter()
        .filter(|e| e["type"] == "session.updated" || e["type"] == "error")
        .nth(before)
        .expect("the answer")
}

/// Says `text` (an utterance) and waits for it to end.
async fn say(app: &TestDialogApp, id: &str, text: &str) -> Value {
    assert!(app.send(json!({"type": "tts.speak", "utterance_id": id, "text": text})));
    app.wait_type(10 * SECOND, "tts.ended", Some(id))
        .await
        .unwrap_or_else(|| panic!("tts.ended for {id}: {:?}", app.types()))
}

fn options(e: &Value) -> Vec<String> {
    let mut o: Vec<String> = e["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|x| x["option"].as_str().unwrap().to_owned())
        .collect();
    o.sort();
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voice_speed_and_profile_changes_reach_the_engine_and_a_bad_update_changes_nothing() {
    let mut pcm = vec![0i16; 4800];
    tone::Tone::new(24_000, 440.0, 8000.0).fill(&mut pcm);
    let stream = Behaviour::Stream {
        pcm,
        chunk: 4800,
        gap: Duration::ZERO,
    };
    let main_tts = SpeechServer::start(stream.clone()).await;
    let other_tts = SpeechServer::start(stream).await;
    let app = TestDialogApp::start().await;
    let (url, main_url, other_url) = (app.url(), main_tts.base_url(), other_tts.base_url());
    let server = TestServer::start(&[
        ("dialog.url", url.as_str()),
        ("tts.engine", "openai"),
        ("tts.openai.base_url", main_url.as_str()),
        ("tts.openai.voice", "alloy"),
        ("tts.profiles.other.engine", "openai"),
        ("tts.profiles.other.base_url", other_url.as_str()),
        ("tts.profiles.other.voice", "echo"),
    ]);
    let (peer, _) = started_dialog_call(&server, &app).await;

    assert_eq!(say(&app, "u1", "First.").await["ok"], true);
    let r = &main_tts.requests()[0];
    assert_eq!(r.body["voice"], "alloy");
    assert!(r.body.get("speed").is_none(), "{:?}", r.body);

    let ok = update(&app, json!({"tts": {"voice": "nova", "speed": 1.5}})).await;
    assert_eq!(ok["type"], "session.updated", "{ok}");
    assert_eq!(ok["session"]["tts"]["voice"], "nova");
    assert_eq!(ok["session"]["tts"]["profile"], "default");
    say(&app, "u2", "Second.").await;
    let r = &main_tts.requests()[1];
    assert_eq!(
        (&r.body["voice"], &r.body["speed"]),
        (&json!("nova"), &json!(1.5))
    );

    // Every bad option is named, and nothing of the update happens: not even its valid part.
    let bad = update(
        &app,
        json!({"tts": {"voice": "no voice!", "pitch": 2, "speed": 1.0},
               "listen": {"end_silence_ms": 5}, "asr": {"profile": "nope"}}),
    )
    .await;
    assert_eq!(bad["type"], "error", "{bad}");
    assert_eq!(bad["command"], "session.update");
    assert_eq!(
        options(&bad),
        [
            "asr.profile",
            "listen.end_silence_ms",
            "tts.pitch",
            "tts.voice"
        ]
    );
    say(&app, "u3", "Third.").await;
    let r = &main_tts.requests()[2];
    assert_eq!(
        (&r.body["voice"], &r.body["speed"]),
        (&json!("nova"), &json!(1.5))
    );

    // A profile: another server and its own voice; the options set before are dropped.
    let ok = update(&app, json!({"TTS": {"Profile": "other"}})).await;
    assert_eq!(ok["session"]["tts"], json!({"profile": "other"}), "{ok}");
    say(&app, "u4", "Fourth.").await;
    assert_eq!(main_tts.requests().len(), 3);
    let r = &other_tts.requests()[0];
    assert_eq!(r.body["voice"], "echo");
    assert!(r.body.get("speed").is_none());
    let back = update(&app, json!({"tts": {"profile": "default"}})).await;
    assert_eq!(back["type"], "session.updated");
    say(&app, "u5", "Fifth.").await;
    assert_eq!(main_tts.requests()[3].body["voice"], "alloy");
    peer.close().await;
}

/// A grammar file in the temporary directory.
fn grammar_file(name: &str, body: &str) -> String {
    let path =
        std::env::temp_dir().join(format!("voicegate-test-{}-{name}.gram", std::process::id()));
    std::fs::write(&path, format!("#JSGF V1.0;\ngrammar {name};\n{body}\n")).unwrap();
    path.to_string_lossy().into_owned()
}

fn finals(app: &TestDialogApp) -> Vec<String> {
    of_type(app, "asr.final")
        .iter()
        .map(|e| e["text"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// The caller says `text`; returns the `asr.final`s that came for it.
async fn caller_says(
    peer: &voicegate_testkit::ClientPeer,
    app: &TestDialogApp,
    text: &str,
) -> Vec<String> {
    let before = finals(app).len();
    peer.send_paced(&spoken(text, Duration::from_millis(900)).await)
        .await
        .unwrap();
    eventually(3 * SECOND, || finals(app).len() > before).await;
    finals(app)[before..].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grammar_profile_language_and_barge_in_change_from_the_next_utterance() {
    let test_gram = format!("{}/tests/fixtures/test.gram", env!("CARGO_MANIFEST_DIR"));
    let colors = grammar_file("colors", "public <c> = red | green | blue ;");
    let stt = SpeechServer::start(Behaviour::Transcribe("hallo welt".into())).await;
    let app = TestDialogApp::start().await;
    let (url, stt_url) = (app.url(), stt.base_url());
    let server = TestServer::start(&[
        ("dialog.url", url.as_str()),
        ("asr.pocketsphinx.grammar", test_gram.as_str()),
        ("asr.pocketsphinx.grammars.colors", colors.as_str()),
        ("asr.profiles.remote.engine", "openai"),
        ("asr.profiles.remote.base_url", stt_url.as_str()),
    ]);
    let (peer, _) = started_dialog_call(&server, &app).await;

    assert_eq!(
        caller_says(&peer, &app, "hello world").await,
        ["hello world"]
    );
    let ok = update(&app, json!({"asr": {"grammar": "colors"}})).await;
    assert_eq!(ok["session"]["asr"]["grammar"], "colors", "{ok}");
    let heard = caller_says(&peer, &app, "hello world").await;
    assert!(!heard.contains(&"hello world".to_owned()), "{heard:?}");
    assert_eq!(caller_says(&peer, &app, "green").await, ["green"]);

    // pocketsphinx has one language; the openai engine has no grammars.
    let bad = update(&app, json!({"asr": {"language": "de", "grammar": "nope"}})).await;
    assert_eq!(options(&bad), ["asr.language"], "{bad}");
    let bad = update(
        &app,
        json!({"asr": {"profile": "remote", "grammar": "colors"}}),
    )
    .await;
    assert_eq!(options(&bad), ["asr.grammar"], "{bad}");

    let ok = update(
        &app,
        json!({"asr": {"profile": "remote", "language": "de", "prompt": "Hallo Welt"}}),
    )
    .await;
    assert_eq!(ok["type"], "session.updated", "{ok}");
    assert_eq!(
        caller_says(&peer, &app, "hello world").await,
        ["hallo welt"]
    );
    let form = stt.requests()[0].form.clone().expect("a multipart form");
    assert_eq!(form.fields.get("language").map(String::as_str), Some("de"));
    assert_eq!(
        form.fields.get("prompt").map(String::as_str),
        Some("Hallo Welt")
    );

    // Barge-in: talking over a long answer interrupts it, until the session turns it off.
    let long =
        "This is a long answer that goes on for a while, so that the caller can talk over it.";
    assert!(app.send(json!({"type": "tts.speak", "utterance_id": "b1", "text": long})));
    app.wait_type(5 * SECOND, "tts.started", Some("b1"))
        .await
        .expect("started");
    caller_says(&peer, &app, "hello world").await;
    let ended = app
        .wait_type(10 * SECOND, "tts.ended", Some("b1"))
        .await
        .expect("ended");
    assert_eq!(ended["ok"], false, "barge-in is on by default");
    assert_eq!(of_type(&app, "tts.interrupt").len(), 1);

    let ok = update(
        &app,
        json!({"barge_in": {"enabled": false}, "listen": {"end_silence_ms": 400}}),
    )
    .await;
    assert_eq!(ok["session"]["barge_in"]["enabled"], false, "{ok}");
    assert_eq!(ok["session"]["listen"]["end_silence_ms"], 400);
    assert!(app.send(json!({"type": "tts.speak", "utterance_id": "b2", "text": long})));
    app.wait_type(5 * SECOND, "tts.started", Some("b2"))
        .await
        .expect("started");
    caller_says(&peer, &app, "hello world").await;
    let ended = app
        .wait_type(15 * SECOND, "tts.ended", Some("b2"))
        .await
        .expect("ended");
    assert_eq!(ended["ok"], true, "{:?}", app.types());
    assert_eq!(of_type(&app, "tts.interrupt").len(), 1);
    peer.close().await;
    let _ = std::fs::remove_file(colors);
}
