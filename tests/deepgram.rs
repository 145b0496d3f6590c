//! The Deepgram streaming engine against a local stand-in that speaks Deepgram's listen protocol
//! (testkit `deepgram_server`): first the engine alone (what goes over the wire, partials and the
//! final, keep-alives, every failure mode), then whole calls with a real WebRTC client peer whose
//! utterances reach the dialog app as partials and one final each, and a vendor that drops the
//! connection mid-utterance costs one `asr.error` while the call goes on.

mod common;

use common::{TestServer, eventually, metric, spoken};
use futures_util::StreamExt;
use serde_json::Value;
use std::time::{Duration, Instant};
use voicegate_engines::asr::deepgram::{Deepgram, DeepgramSettings};
use voicegate_engines::asr::{AsrFactory, AsrStream, AsrUpdate, UtteranceSink};
use voicegate_testkit::ClientPeer;
use voicegate_testkit::deepgram_server::{Behaviour, DeepgramStandIn};
use voicegate_testkit::dialog_app::TestDialogApp;

const SECOND: Duration = Duration::from_secs(1);

fn settings(base_url: String) -> DeepgramSettings {
    DeepgramSettings {
        base_url,
        api_key: "test-key".into(),
        model: "nova-3".into(),
        language: "en-US".into(),
        keywords: vec!["kitchen:2".into()],
        endpointing_ms: 300,
        connect_timeout: SECOND,
        stream_idle: Duration::from_millis(500),
        keepalive: Duration::from_secs(5),
        max_buffered_ms: 5000,
        max_message_bytes: 256 * 1024,
        tls: voicegate_engines::tls::ClientTls::public(),
    }
}

/// Pushes `ms` of audio in 20 ms frames, letting the session run between them.
async fn speak(sink: &mut Box<dyn UtteranceSink>, ms: u32) {
    for _ in 0..ms / 20 {
        sink.push(&[100; 320]);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Every update until the stream ends, as text.
async fn drain(results: AsrStream) -> Vec<String> {
    results
        .map(|u| match u {
            AsrUpdate::Partial(t, _) => format!("partial {t}"),
            AsrUpdate::Final(t, _) => format!("final {}", t.unwrap_or_default()),
            AsrUpdate::Error(e) => {
                format!("error{} {e}", if e.stalled() { " (stalled)" } else { "" })
            }
        })
        .collect()
        .await
}

#[actix_web::test]
async fn audio_streams_out_and_results_come_back_as_partials_then_one_final() {
    let dg = DeepgramStandIn::start(Behaviour::hears("turn on the kitchen lights")).await;
    let engine = Deepgram::new(settings(dg.base_url())).for_call();
    let (mut sink, results) = engine.utterance();
    speak(&mut sink, 1200).await;
    sink.finish();
    let got = drain(results).await;
    assert_eq!(
        got,
        [
            "partial turn",
            "partial turn on",
            "partial turn on the",
            "partial turn on the kitchen",
            "partial turn on the kitchen lights",
            "final turn on the kitchen lights",
        ]
    );
    let [c] = &dg.connections()[..] else {
        panic!("{:?}", dg.connections());
    };
    assert_eq!(
        c.uri,
        "/v1/listen?encoding=linear16&sample_rate=16000&channels=1&interim_results=true\
         &model=nova-3&language=en-US&endpointing=300&keywords=kitchen:2"
    );
    assert_eq!(c.header("authorization"), Some("Token test-key"));
    assert_eq!(c.audio_bytes, 1200 * 32, "every sample, as 16-bit");
    assert_eq!(c.controls, [r#"{"type":"CloseStream"}"#]);
}

#[actix_web::test]
async fn results_carry_the_servers_confidence_averaged_over_the_words() {
    // Every partial and the final carry the server's confidence; without one in the results,
    // none.
    for confidence in [Some(0.42), None] {
        let dg = DeepgramStandIn::start(Behaviour {
            confidence,
            ..Behaviour::hears("turn on the lights")
        })
        .await;
        let engine = Deepgram::new(settings(dg.base_url())).for_call();
        let (mut sink, results) = engine.utterance();
        speak(&mut sink, 1000).await;
        sink.finish();
        let got: Vec<(String, Option<f32>)> = results
            .filter_map(|u| async move {
                match u {
                    AsrUpdate::Partial(t, c) => Some((format!("partial {t}"), c)),
                    AsrUpdate::Final(t, c) => Some((format!("final {}", t.unwrap_or_default()), c)),
                    AsrUpdate::Error(e) => panic!("{e}"),
                }
            })
            .collect()
            .await;
        assert_eq!(got.len(), 5, "{got:?}");
        assert_eq!(got[4].0, "final turn on the lights");
        assert!(got.iter().all(|(_, c)| *c == confidence), "{got:?}");
    }
}

#[actix_web::test]
async fn a_quiet_stream_gets_keepalives_and_each_utterance_its_own_connection() {
    let dg = DeepgramStandIn::start(Behaviour::hears("yes")).await;
    let mut s = settings(dg.base_url());
    s.keepalive = Duration::from_millis(100);
    let engine = Deepgram::new(s).for_call();
    for _ in 0..2 {
        let (mut sink, results) = engine.utterance();
        speak(&mut sink, 200).await;
        tokio::time::sleep(Duration::from_millis(350)).await;
        sink.finish();
        assert_eq!(drain(results).await.last().unwrap(), "final yes");
    }
    let connections = dg.connections();
    assert_eq!(connections.len(), 2);
    let keepalives = connections[0]
        .controls
        .iter()
        .filter(|c| c.as_str() == r#"{"type":"KeepAlive"}"#)
        .count();
    assert!(
        (2..=4).contains(&keepalives),
        "{:?}",
        connections[0].controls
    );
    assert_eq!(
        connections[0].controls.last().unwrap(),
        r#"{"type":"CloseStream"}"#
    );
}

#[actix_web::test]
async fn a_vendor_that_drops_mid_utterance_fails_it() {
    let dg = DeepgramStandIn::start(Behaviour {
        drop_after_bytes: Some(6400),
        ..Behaviour::hears("never finished")
    })
    .await;
    let engine = Deepgram::new(settings(dg.base_url())).for_call();
    let (mut sink, results) = engine.utterance();
    speak(&mut sink, 600).await;
    sink.finish();
    let got = drain(results).await;
    // The TCP connection ends without a close frame.
    assert_eq!(
        got.last().unwrap(),
        "error deepgram: the server closed the stream mid-utterance",
        "{got:?}"
    );
    assert!(!got.iter().any(|u| u.starts_with("final")), "{got:?}");
}

#[actix_web::test]
async fn a_vendor_that_never_answers_close_stream_stalls() {
    let dg = DeepgramStandIn::start(Behaviour {
        ignore_close_stream: true,
        ..Behaviour::hears("hello")
    })
    .await;
    let engine = Deepgram::new(settings(dg.base_url())).for_call();
    let (mut sink, results) = engine.utterance();
    speak(&mut sink, 300).await;
    sink.finish();
    let got = drain(results).await;
    assert_eq!(
        got.last().unwrap(),
        "error (stalled) deepgram: the stream stalled: nothing received for 500 ms",
        "{got:?}"
    );
}

#[actix_web::test]
async fn no_connection_in_time_or_too_much_audio_waiting_fails_the_utterance() {
    // A listener that never completes the upgrade.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut s = settings(format!("ws://{}", silent.local_addr().unwrap()));
    s.connect_timeout = Duration::from_millis(300);
    let (mut sink, results) = Deepgram::new(s).for_call().utterance();
    sink.push(&[0; 320]);
    sink.finish();
    assert_eq!(
        drain(results).await,
        ["error deepgram: no connection within 300 ms"]
    );

    let dg = DeepgramStandIn::start(Behaviour::hears("lost")).await;
    let mut s = settings(dg.base_url());
    s.max_buffered_ms = 100;
    let (mut sink, results) = Deepgram::new(s).for_call().utterance();
    // 200 ms before the connection can have opened.
    sink.push(&[0; 3200]);
    sink.finish();
    assert_eq!(
        drain(results).await,
        ["error deepgram: more than 100 ms of audio waiting to be sent"]
    );
    drop(silent);
}

fn server(app: &TestDialogApp, dg: &DeepgramStandIn) -> TestServer {
    server_with(app, dg, &[])
}

/// [`server`] with `extra` settings.
fn server_with(app: &TestDialogApp, dg: &DeepgramStandIn, extra: &[(&str, &str)]) -> TestServer {
    let url = app.url();
    let base = dg.base_url();
    let mut s = vec![
        ("dialog.url", url.as_str()),
        ("asr.engine", "deepgram"),
        ("asr.deepgram.base_url", base.as_str()),
        ("asr.deepgram.api_key", "call-key"),
    ];
    s.extend_from_slice(extra);
    TestServer::start(&s)
}

async fn started(server: &TestServer, app: &TestDialogApp) -> ClientPeer {
    let (peer, _) = common::started_dialog_call(server, app).await;
    peer
}

const OK: &str = r#"voicegate_engine_requests_total{engine="deepgram",outcome="ok"}"#;
const STALLS: &str = r#"voicegate_limit_hits_total{limit="asr_stream_idle"}"#;
const TOO_BIG: &str = r#"voicegate_limit_hits_total{limit="asr_message_bytes"}"#;
const ERRORS: &str = r#"voicegate_engine_requests_total{engine="deepgram",outcome="error"}"#;
const FIRSTS: &str = r#"voicegate_engine_first_result_seconds_count{engine="deepgram"}"#;

fn of_type(app: &TestDialogApp, kind: &str) -> Vec<Value> {
    app.events()
        .into_iter()
        .filter(|e| e["type"] == kind)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_utterances_reach_the_dialog_app_as_partials_then_one_final_each() {
    let dg = DeepgramStandIn::start(Behaviour::hears("hello world")).await;
    let app = TestDialogApp::start().await;
    let server = server(&app, &dg);
    let peer = started(&server, &app).await;
    let (ok, firsts) = (metric(&server, OK).await, metric(&server, FIRSTS).await);
    for n in 1..=2 {
        peer.send_paced(&spoken("hello world", SECOND).await)
            .await
            .unwrap();
        assert!(
            eventually(5 * SECOND, || of_type(&app, "asr.final").len() == n).await,
            "no final {n}: {:?}",
            app.types()
        );
    }
    let kinds: Vec<String> = app
        .types()
        .into_iter()
        .filter(|t| t.starts_with("asr."))
        .collect();
    // Each utterance: partials, then its one final.
    let first_final = kinds.iter().position(|k| k == "asr.final").unwrap();
    assert!(
        first_final > 0,
        "a partial before the first final: {kinds:?}"
    );
    assert!(kinds[..first_final].iter().all(|k| k == "asr.partial"));
    assert!(kinds[first_final + 1] == "asr.partial", "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| *k == "asr.final").count(), 2);
    for f in of_type(&app, "asr.final") {
        assert_eq!(f["text"], "hello world");
        assert_eq!(f["confidence"], 0.99, "{f}");
    }
    assert!(
        of_type(&app, "asr.partial")
            .iter()
            .all(|p| "hello world".starts_with(p["text"].as_str().unwrap())),
        "{:?}",
        of_type(&app, "asr.partial")
    );
    let connections = dg.connections();
    assert_eq!(connections.len(), 2, "one connection per utterance");
    assert_eq!(
        connections[0].header("authorization"),
        Some("Token call-key")
    );
    assert!(connections[0].audio_bytes > 32_000, "the utterance's audio");
    assert!(metric(&server, OK).await - ok >= 2.0);
    assert!(metric(&server, FIRSTS).await - firsts >= 2.0);

    // session.update: a grammar is refused; language, model and prompt words reach the next
    // utterance's request.
    assert!(app.send(
        serde_json::json!({"type": "session.update", "session": {"asr": {"grammar": "menu"}}})
    ));
    let refused = app
        .wait_type(5 * SECOND, "error", None)
        .await
        .expect("the grammar is refused");
    assert_eq!(refused["errors"][0]["option"], "asr.grammar", "{refused}");
    assert!(app.send(
        serde_json::json!({"type": "session.update", "session": {"asr": {
        "language": "de", "model": "nova-2", "prompt": "Küche, Licht"}}})
    ));
    app.wait_type(5 * SECOND, "session.updated", None)
        .await
        .expect("session.updated");
    peer.send_paced(&spoken("hello world", SECOND).await)
        .await
        .unwrap();
    assert!(eventually(5 * SECOND, || of_type(&app, "asr.final").len() == 3).await);
    let uri = &dg.connections()[2].uri;
    assert!(
        uri.contains(
            "&model=nova-2&language=de&endpointing=300&keywords=K%C3%BCche&keywords=Licht"
        ),
        "{uri}"
    );
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_dropping_mid_utterance_gives_asr_error_and_the_call_goes_on() {
    let dg = DeepgramStandIn::start(Behaviour {
        drop_after_bytes: Some(8000),
        ..Behaviour::hears("hello world")
    })
    .await;
    let app = TestDialogApp::start().await;
    let server = server(&app, &dg);
    let peer = started(&server, &app).await;
    let errors = metric(&server, ERRORS).await;
    peer.send_paced(&spoken("hello world", SECOND).await)
        .await
        .unwrap();
    let e = app
        .wait_type(5 * SECOND, "asr.error", None)
        .await
        .expect("asr.error");
    assert_eq!(e["fatal"], false);
    assert_eq!(
        e["message"],
        "deepgram: the server closed the stream mid-utterance"
    );
    assert!(of_type(&app, "asr.final").is_empty());
    assert!(metric(&server, ERRORS).await - errors >= 1.0);
    // The vendor recovers; the next utterance is heard on a new connection.
    dg.set_behaviour(Behaviour::hears("hello world"));
    peer.send_paced(&spoken("hello world", SECOND).await)
        .await
        .unwrap();
    let f = app
        .wait_type(5 * SECOND, "asr.final", None)
        .await
        .expect("the call goes on");
    assert_eq!(f["text"], "hello world");
    assert_eq!(server.snapshot().await.calls.len(), 1);
    peer.close().await;
}

/// A vendor whose recognition is stuck once the utterance ended while its connection keeps
/// pinging: pings are not its answer, so the utterance still fails at
/// `asr.stream_idle_timeout_ms`, counted as a stall (when they reset the idle timer, only
/// `asr.utterance_deadline_ms`, 15 s, ended it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_do_not_keep_a_stream_stalled_after_the_utterance_alive() {
    let dg = DeepgramStandIn::start(Behaviour {
        stall_with_pings: Some(Duration::from_millis(200)),
        ..Behaviour::hears("hello world")
    })
    .await;
    let app = TestDialogApp::start().await;
    let server = server_with(&app, &dg, &[("asr.stream_idle_timeout_ms", "1000")]);
    let peer = started(&server, &app).await;
    let stalls = metric(&server, STALLS).await;
    peer.send_paced(&spoken("hello world", SECOND).await)
        .await
        .unwrap();
    // The utterance ended 600 ms (listen.end_silence_ms) into the 1 s tail.
    let sent = Instant::now();
    let e = app
        .wait_type(5 * SECOND, "asr.error", None)
        .await
        .expect("asr.error");
    let took = sent.elapsed();
    assert_eq!(
        e["message"],
        "deepgram: the stream stalled: nothing received for 1000 ms"
    );
    assert_eq!(e["fatal"], false);
    assert!(took < 2 * SECOND, "asr.error {took:?} after the audio");
    assert!(of_type(&app, "asr.final").is_empty());
    assert!(metric(&server, STALLS).await - stalls >= 1.0);
    println!("a pinging, stalled stream failed {took:?} after the audio");
    peer.close().await;
}

/// `asr.deepgram.max_message_bytes` is the bound enforced: a final result padded past a small
/// configured limit (far under the default) fails its utterance with one `asr.error`, counted
/// as `asr_message_bytes`; the call goes on and a result within the limit is heard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_configured_limit_fails_its_utterance_and_is_counted() {
    let dg = DeepgramStandIn::start(Behaviour {
        final_padding: 8192,
        ..Behaviour::hears("hello world")
    })
    .await;
    let app = TestDialogApp::start().await;
    let server = server_with(&app, &dg, &[("asr.deepgram.max_message_bytes", "4096")]);
    let peer = started(&server, &app).await;
    let too_big = metric(&server, TOO_BIG).await;
    peer.send_paced(&spoken("hello world", SECOND).await)
        .await
        .unwrap();
    let e = app
        .wait_type(5 * SECOND, "asr.error", None)
        .await
        .expect("asr.error");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.starts_with("deepgram: message of at least") && message.ends_with("(limit 4096)"),
        "{message}"
    );
    assert_eq!(e["fatal"], false);
    assert!(of_type(&app, "asr.final").is_empty());
    assert!(metric(&server, TOO_BIG).await - too_big >= 1.0);
    // The partials, each well under the limit, came through; so does an unpadded final.
    assert!(!of_type(&app, "asr.partial").is_empty());
    dg.set_behaviour(Behaviour::hears("hello world"));
    peer.send_paced(&spoken("hello world", SECOND).await)
        .await
        .unwrap();
    let f = app
        .wait_type(5 * SECOND, "asr.final", None)
        .await
        .expect("the call goes on");
    assert_eq!(f["text"], "hello world");
    peer.close().await;
}

const LONG: &str = "This is a long answer that keeps going for a while, so that the caller \
                    has time to say something over it before it ends.";

/// The dialog app's `tts.*` events, in order, after `tts.started`.
fn tts_after_start(app: &TestDialogApp) -> Vec<String> {
    app.types()
        .into_iter()
        .filter(|t| t.starts_with("tts.") && t != "tts.started")
        .collect()
}

/// The caller says "hello world" over a long answer; returns the answer's `tts.*` events and
/// the utterance's final.
async fn words_over_an_answer(confidence: f32) -> (Vec<String>, Value) {
    let dg = DeepgramStandIn::start(Behaviour {
        confidence: Some(confidence),
        ..Behaviour::hears("hello world")
    })
    .await;
    let app = TestDialogApp::start().await;
    let server = server(&app, &dg);
    let peer = started(&server, &app).await;
    assert!(app.send(serde_json::json!({"type": "tts.speak", "utterance_id": "a", "text": LONG})));
    app.wait_type(5 * SECOND, "tts.started", Some("a"))
        .await
        .expect("tts.started");
    tokio::time::sleep(Duration::from_millis(800)).await;
    peer.send_paced(&spoken("hello world", Duration::from_millis(900)).await)
        .await
        .unwrap();
    app.wait_type(20 * SECOND, "tts.ended", Some("a"))
        .await
        .expect("tts.ended");
    let fin = app
        .wait_type(3 * SECOND, "asr.final", None)
        .await
        .expect("asr.final");
    peer.close().await;
    (tts_after_start(&app), fin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn words_the_vendor_is_unsure_of_pause_the_answer_and_only_sure_ones_interrupt_it() {
    // Two words, not a backchannel: the vendor's confidence decides (barge_in.min_confidence,
    // 0.6 by default).
    let (sure, fin) = words_over_an_answer(0.95).await;
    assert_eq!(sure[0], "tts.paused", "{sure:?}");
    assert!(sure.contains(&"tts.interrupt".to_owned()), "{sure:?}");
    assert_eq!(fin["text"], "hello world");
    assert_eq!(fin["confidence"], 0.95, "{fin}");
    assert!(fin.get("backchannel").is_none(), "{fin}");

    let (unsure, fin) = words_over_an_answer(0.3).await;
    assert_eq!(
        unsure,
        ["tts.paused", "tts.resumed", "tts.ended"],
        "the answer plays to its end"
    );
    assert_eq!(fin["text"], "hello world");
    assert_eq!(fin["confidence"], 0.3, "{fin}");
    assert_eq!(fin["backchannel"], true, "{fin}");
}
