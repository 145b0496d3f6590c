//! Turn-taking end to end: the caller's voice over voicegate's speech pauses it; a backchannel
//! or a noise resumes it where it paused, real words interrupt it. A real client peer speaks
//! espeak-ng audio as Opus in real time; pocketsphinx with a grammar recognizes it.

mod common;

use common::{TestServer, spoken, started_dialog_call};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use voicegate_testkit::dialog_app::TestDialogApp;

const SECOND: Duration = Duration::from_secs(1);

const LONG: &str = "This is a long answer that keeps going for a while, so that the caller \
                    has time to say something over it before it ends.";

fn grammar_file() -> String {
    let path = std::env::temp_dir().join(format!("voicegate-turns-{}.gram", std::process::id()));
    std::fs::write(
        &path,
        "#JSGF V1.0;\ngrammar turns;\n\
         public <u> = okay | yeah | right | stop | wait a second | no i meant tuesday ;\n",
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

fn server(app: &TestDialogApp, grammar: &str) -> TestServer {
    let url = app.url();
    TestServer::start(&[
        ("dialog.url", url.as_str()),
        ("asr.pocketsphinx.grammar", grammar),
    ])
}

fn event_at(app: &TestDialogApp, kind: &str) -> Option<(Instant, Value)> {
    app.timed_events()
        .into_iter()
        .find(|(_, e)| e["type"] == kind)
}

/// The longest silence between consecutive audio packets the client received after `from`.
fn longest_gap(peer: &voicegate_testkit::ClientPeer, from: Instant, to: Instant) -> Duration {
    let mut at: Vec<Instant> = peer
        .received()
        .iter()
        .map(|p| p.at)
        .filter(|t| *t >= from && *t <= to)
        .collect();
    at.sort();
    at.windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backchannel_pauses_and_resumes_the_answer_which_plays_to_its_end() {
    let grammar = grammar_file();
    let app = TestDialogApp::start().await;
    let server = server(&app, &grammar);
    let (peer, _) = started_dialog_call(&server, &app).await;
    assert!(app.send(json!({"type": "tts.speak", "utterance_id": "long", "text": LONG})));
    app.wait_type(5 * SECOND, "tts.started", Some("long"))
        .await
        .expect("tts.started");
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    peer.send_paced(&spoken("okay", Duration::from_millis(900)).await)
        .await
        .unwrap();
    let ended = app
        .wait_type(20 * SECOND, "tts.ended", Some("long"))
        .await
        .expect("tts.ended");
    assert_eq!(ended["ok"], true, "{:?}", app.types());
    let (paused_at, paused) = event_at(&app, "tts.paused").expect("tts.paused");
    let (resumed_at, _) = event_at(&app, "tts.resumed").expect("tts.resumed");
    assert_eq!(paused["utterance_id"], "long");
    assert!(paused["played_ms"].as_u64().unwrap() >= 1000, "{paused}");
    assert!(event_at(&app, "tts.interrupt").is_none());
    let fin = app
        .wait_type(3 * SECOND, "asr.final", None)
        .await
        .expect("asr.final");
    assert_eq!(fin["text"], "okay");
    assert_eq!(fin["backchannel"], true, "{fin}");
    assert!(fin["end_of_speech_ms"].as_u64().is_some(), "{fin}");
    // No audio was lost: the gap the client heard is the pause, nothing longer.
    let pause = resumed_at.duration_since(paused_at);
    let (ended_at, _) = event_at(&app, "tts.ended").unwrap();
    let gap = longest_gap(&peer, t0, ended_at);
    assert!(
        gap <= pause + Duration::from_millis(120),
        "the client heard a {gap:?} gap for a {pause:?} pause"
    );
    println!("backchannel: paused {pause:?}, longest gap at the client {gap:?}");
    peer.close().await;
    let _ = std::fs::remove_file(grammar);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_words_interrupt_with_what_was_heard_and_a_noise_only_pauses() {
    let grammar = grammar_file();
    let app = TestDialogApp::start().await;
    let server = server(&app, &grammar);
    let (peer, _) = started_dialog_call(&server, &app).await;

    // A noise burst (no words) over the answer: paused, then resumed.
    assert!(app.send(json!({"type": "tts.speak", "utterance_id": "n", "text": LONG})));
    app.wait_type(5 * SECOND, "tts.started", Some("n"))
        .await
        .expect("tts.started");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut noise = vec![0i16; 48_000 * 4 / 10];
    let mut x: u32 = 12345;
    for s in noise.iter_mut() {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        *s = ((x >> 16) as i16) / 3;
    }
    let packets = voicegate_testkit::peer::opus_speech(
        &noise,
        48_000,
        Duration::from_millis(100),
        Duration::from_millis(800),
    );
    peer.send_paced(&packets).await.unwrap();
    let ended = app
        .wait_type(20 * SECOND, "tts.ended", Some("n"))
        .await
        .expect("tts.ended");
    assert_eq!(ended["ok"], true, "{:?}", app.types());
    if event_at(&app, "tts.paused").is_some() {
        assert!(event_at(&app, "tts.resumed").is_some(), "{:?}", app.types());
    }

    // Real words: paused at once, then interrupted with exactly what the client heard (after
    // a quiet moment, so the count below holds only this answer's audio).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(app.send(json!({"type": "tts.speak", "utterance_id": "w", "text": LONG})));
    app.wait_type(5 * SECOND, "tts.started", Some("w"))
        .await
        .expect("tts.started");
    let speak_started = Instant::now();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    peer.send_paced(&spoken("wait a second", Duration::from_millis(900)).await)
        .await
        .unwrap();
    let interrupt = app
        .wait_type(5 * SECOND, "tts.interrupt", Some("w"))
        .await
        .expect("tts.interrupt");
    let ended = app
        .wait_type(2 * SECOND, "tts.ended", Some("w"))
        .await
        .expect("tts.ended");
    assert_eq!(ended["ok"], false);
    let paused: Vec<Value> = app
        .events()
        .into_iter()
        .filter(|e| e["type"] == "tts.paused" && e["utterance_id"] == "w")
        .collect();
    assert_eq!(paused.len(), 1, "paused first: {:?}", app.types());
    // tts.interrupt follows the last frame's send; let it cross loopback before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let heard = peer
        .received()
        .iter()
        .filter(|p| p.at >= speak_started - Duration::from_millis(200))
        .count() as i64
        * 20;
    let played = interrupt["played_ms"].as_i64().unwrap();
    assert!(
        (played - heard).abs() <= 40,
        "played_ms {played}, the client received {heard} ms"
    );
    assert_eq!(
        paused[0]["played_ms"].as_i64().unwrap(),
        played,
        "nothing played after the pause"
    );
    let fin = app
        .wait_for(3 * SECOND, |e| {
            e["type"] == "asr.final" && e["text"] == "wait a second"
        })
        .await
        .expect("the words are the next final");
    assert!(fin.get("backchannel").is_none(), "{fin}");
    peer.close().await;
    let _ = std::fs::remove_file(grammar);
}

/// A cough-like noise burst at 48 kHz: 300 ms of noise that decays fast, no words in it.
fn cough() -> Vec<i16> {
    let mut x: u32 = 0x2545_f491;
    (0..48_000 * 3 / 10)
        .map(|i| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let noise = f64::from((x >> 16) as i16) / 32768.0;
            let envelope = (-(i as f64) / (48_000.0 * 0.07)).exp();
            (noise * envelope * 15_000.0) as i16
        })
        .collect()
}

/// Plays a cough over a long answer with `barge_in.min_confidence` at `min_confidence` (or
/// its default); returns the app's events once the answer ended.
async fn cough_over_an_answer(grammar: &str, min_confidence: Option<&str>) -> Vec<Value> {
    let app = TestDialogApp::start().await;
    let url = app.url();
    let mut overrides = vec![
        ("dialog.url", url.as_str()),
        ("asr.pocketsphinx.grammar", grammar),
    ];
    if let Some(c) = min_confidence {
        overrides.push(("barge_in.min_confidence", c));
    }
    let server = TestServer::start(&overrides);
    let (peer, _) = started_dialog_call(&server, &app).await;
    assert!(app.send(json!({"type": "tts.speak", "utterance_id": "c", "text": LONG})));
    app.wait_type(5 * SECOND, "tts.started", Some("c"))
        .await
        .expect("tts.started");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let packets = voicegate_testkit::peer::opus_speech(
        &cough(),
        48_000,
        Duration::from_millis(300),
        Duration::from_millis(1500),
    );
    peer.send_paced(&packets).await.unwrap();
    app.wait_type(20 * SECOND, "tts.ended", Some("c"))
        .await
        .expect("tts.ended");
    // The cough's final, if any, follows its end of speech.
    let _ = app.wait_type(3 * SECOND, "asr.final", None).await;
    peer.close().await;
    app.events()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cough_the_grammar_forces_onto_a_phrase_is_too_unsure_to_interrupt() {
    let grammar = grammar_file();
    let kinds = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .filter_map(|e| e["type"].as_str())
            .filter(|t| t.starts_with("tts.") || t.starts_with("asr.final"))
            .map(str::to_owned)
            .collect()
    };
    let final_of = |events: &[Value]| {
        events
            .iter()
            .find(|e| e["type"] == "asr.final")
            .cloned()
            .expect("the grammar turned the cough into words")
    };
    // Without the confidence rule (0: off), the grammar, which has no "none of these", turns
    // the cough into one of its phrases, and that interrupts the answer.
    let off = cough_over_an_answer(&grammar, Some("0")).await;
    assert!(
        kinds(&off).contains(&"tts.interrupt".to_owned()),
        "{:?}",
        kinds(&off)
    );
    let forced = final_of(&off);
    assert!(forced.get("backchannel").is_none(), "{forced}");
    // With the default rule, those words fit the cough too badly: paused, resumed, and the
    // answer plays to its end; the words reach the app as not taking the turn.
    let on = cough_over_an_answer(&grammar, None).await;
    assert_eq!(
        kinds(&on)
            .iter()
            .filter(|k| k.starts_with("tts.") && *k != "tts.started")
            .collect::<Vec<_>>(),
        ["tts.paused", "tts.resumed", "tts.ended"],
        "{on:?}"
    );
    let ended = on.iter().find(|e| e["type"] == "tts.ended").unwrap();
    assert_eq!(ended["ok"], true, "{ended}");
    let unsure = final_of(&on);
    assert_eq!(unsure["text"], forced["text"], "{unsure}");
    assert_eq!(unsure["backchannel"], true, "{unsure}");
    let c = unsure["confidence"]
        .as_f64()
        .expect("a grammar result's confidence");
    assert!(c < 0.6, "{unsure}");
    println!("cough: heard {:?} with confidence {c}", unsure["text"]);
    let _ = std::fs::remove_file(grammar);
}
