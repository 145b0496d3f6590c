//! The dialog plane end to end: the real server, a real WebRTC client peer, and a test dialog
//! app (a real WebSocket server on port 0) that records every event and sends commands.

mod common;

use common::{TestServer, eventually, started_dialog_call};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use voicegate_core::frame::{SPEECH_FRAME_SAMPLES, SPEECH_RATE};
use voicegate_core::listen::rms;
use voicegate_core::tone;
use voicegate_testkit::dialog_app::TestDialogApp;
use voicegate_testkit::peer::decode;
use voicegate_testkit::{ClientPeer, Received, http};

const SECOND: Duration = Duration::from_secs(1);

/// A server whose dialog app is `app`, plus `extra` settings.
fn server_for(app: &TestDialogApp, extra: &[(&str, &str)]) -> TestServer {
    let url = app.url();
    let mut settings = vec![("dialog.url", url.as_str())];
    settings.extend_from_slice(extra);
    TestServer::start(&settings)
}

fn speak(app: &TestDialogApp, id: &str, text: &str) {
    assert!(app.send(json!({"type": "tts.speak", "utterance_id": id, "text": text})));
}

/// The tts.* events so far, as "started u1" / "ended u1 true".
fn tts_log(app: &TestDialogApp) -> Vec<String> {
    app.events()
        .iter()
        .filter_map(|e| match e["type"].as_str()? {
            "tts.started" => Some(format!("started {}", e["utterance_id"].as_str()?)),
            "tts.ended" => Some(format!("ended {} {}", e["utterance_id"].as_str()?, e["ok"])),
            _ => None,
        })
        .collect()
}

/// Received audio that carries sound (decoded RMS above a speech floor), in packets.
fn loud_packets(rx: &[Received]) -> usize {
    let pcm = decode(rx);
    pcm.chunks(SPEECH_FRAME_SAMPLES)
        .filter(|f| rms(f) > 200.0)
        .count()
}

/// Loud frames the peer received after `since`, among the packets from index `from` on.
fn loud_since(peer: &ClientPeer, from: usize, since: Instant) -> usize {
    let after: Vec<Received> = peer.received()[from..]
        .iter()
        .filter(|p| p.at > since)
        .cloned()
        .collect();
    loud_packets(&after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_started_carries_the_original_fields_and_the_dial_url_its_params() {
    let app = TestDialogApp::start().await;
    let server = server_for(&app, &[]);
    let (pc, _t, _s, state, _rx, offer) = ClientPeer::offer().await.unwrap();
    let body = json!({"type": "offer", "sdp": offer, "payload": {"user": "ada", "plan": 2}, "apiKey": "ignored-when-payload"});
    let res = http::request(
        server.http,
        "POST",
        "/webrtc/v1/offer",
        &[
            ("Content-Type", "application/json"),
            ("User-Agent", "TestAgent/1.0"),
        ],
        &serde_json::to_vec(&body).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(res.status, 200, "{}", res.text());
    let call_id = res.json()["call_id"].as_str().unwrap().to_owned();
    pc.set_remote_description(
        webrtc::peer_connection::RTCSessionDescription::answer(
            res.json()["sdp"].as_str().unwrap().to_owned(),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    let mut state = state;
    tokio::time::timeout(
        5 * SECOND,
        state.wait_for(|s| *s == webrtc::peer_connection::RTCPeerConnectionState::Connected),
    )
    .await
    .unwrap()
    .unwrap();
    let started = app
        .wait_type(5 * SECOND, "call.started", None)
        .await
        .expect("call.started");
    assert_eq!(started["call_id"], call_id.as_str());
    assert_eq!(started["to"], "webrtc");
    assert_eq!(started["codec"], "opus");
    assert_eq!(started["pcm_hz"], 16000);
    let from = started["from"].as_str().unwrap();
    assert!(
        from.starts_with("127.0.0.1:") && from.ends_with("ua=\"TestAgent/1.0\""),
        "{from}"
    );
    let dial = &app.dials()[0];
    assert!(dial.contains(&format!("call_id={call_id}")), "{dial}");
    assert!(dial.contains("payload="), "{dial}");
    let node = voicegate_core::call_id::CallId::parse(&call_id)
        .and_then(|id| id.node("wrtc").map(str::to_owned))
        .expect("the call id names its node");
    assert!(
        dial.contains(&format!("node={node}")),
        "the dial names the node, as the call id does: {dial}"
    );
    assert!(
        dial.contains("existing=1"),
        "other parameters are kept: {dial}"
    );
    assert!(
        !dial.contains("apiKey"),
        "payload wins over credentials: {dial}"
    );
    let _ = pc.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_payload_is_a_400_before_any_media() {
    let app = TestDialogApp::start().await;
    let server = server_for(&app, &[]);
    let (pc, _t, _s, _st, _rx, offer) = ClientPeer::offer().await.unwrap();
    let huge = "x".repeat(5000);
    let res = http::post_json(
        server.http,
        "/webrtc/v1/offer",
        &json!({"type": "offer", "sdp": offer, "payload": huge}),
    )
    .await
    .unwrap();
    assert_eq!(res.status, 400);
    assert!(
        res.json()["error"].as_str().unwrap().contains("payload"),
        "{}",
        res.text()
    );
    server.wait_released(SECOND).await.unwrap();
    assert!(app.dials().is_empty(), "no dial for a refused offer");
    let _ = pc.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speak_plays_speech_for_about_its_length_between_started_and_ended() {
    let app = TestDialogApp::start().await;
    let server = server_for(&app, &[]);
    let (peer, _) = started_dialog_call(&server, &app).await;
    let text = "Hello there. This is a test of the speech engine, speaking a few words.";
    // The engine's own length for this text.
    let engine = voicegate_engines::tts::espeak::Espeak::start(
        &voicegate_engines::tts::espeak::EspeakSettings {
            voice: "en-us".into(),
            rate_wpm: 175,
        },
    )
    .unwrap();
    let expected = {
        use futures_util::StreamExt;
        use voicegate_engines::tts::TtsFactory;
        let e = engine.for_call();
        let n: usize = e
            .synthesize("Hello there.")
            .map(|c| c.map_or(0, |c| c.len()))
            .collect::<Vec<_>>()
            .await
            .iter()
            .sum::<usize>()
            + e.synthesize("This is a test of the speech engine, speaking a few words.")
                .map(|c| c.map_or(0, |c| c.len()))
                .collect::<Vec<_>>()
                .await
                .iter()
                .sum::<usize>();
        Duration::from_secs_f64(n as f64 / 22_050.0)
    };
    let before = peer.received_count();
    speak(&app, "u1", text);
    let started = app
        .wait_type(5 * SECOND, "tts.started", Some("u1"))
        .await
        .expect("tts.started");
    let ended = app
        .wait_type(20 * SECOND, "tts.ended", Some("u1"))
        .await
        .expect("tts.ended");
    assert_eq!(ended["ok"], true);
    assert_eq!(started["call_id"], ended["call_id"]);
    let rx: Vec<Received> = peer.received()[before..].to_vec();
    let audio = Duration::from_millis(20 * rx.len() as u64);
    let diff = audio.as_secs_f64() - expected.as_secs_f64();
    assert!(
        diff.abs() < 0.25,
        "received {audio:?} of audio, the engine makes {expected:?}"
    );
    assert!(
        loud_packets(&rx) * 2 > rx.len(),
        "speech, not silence: {} of {} loud",
        loud_packets(&rx),
        rx.len()
    );
    assert_eq!(tts_log(&app), ["started u1", "ended u1 true"]);
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_speaks_and_a_chunked_stream_each_get_one_pair() {
    let app = TestDialogApp::start().await;
    let server = server_for(&app, &[]);
    let (peer, _) = started_dialog_call(&server, &app).await;
    speak(&app, "a", "First one.");
    speak(&app, "b", "Second one.");
    for chunk in [
        "Streaming, ",
        "in a few ",
        "chunks. And more",
        " text here.",
    ] {
        app.send(json!({"type": "tts.stream", "utterance_id": "s", "text": chunk}));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    app.send(json!({"type": "tts.stream.end", "utterance_id": "s"}));
    app.wait_type(20 * SECOND, "tts.ended", Some("s"))
        .await
        .expect("stream ended");
    assert_eq!(
        tts_log(&app),
        [
            "started a",
            "ended a true",
            "started b",
            "ended b true",
            "started s",
            "ended s true"
        ]
    );
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_silences_the_client_within_60ms_and_the_next_speak_plays() {
    let app = TestDialogApp::start().await;
    let server = server_for(&app, &[]);
    let (peer, _) = started_dialog_call(&server, &app).await;
    let long = "This is a long answer that keeps going. ".repeat(8);
    speak(&app, "long", &long);
    app.wait_type(5 * SECOND, "tts.started", Some("long"))
        .await
        .expect("started");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let sent_at = Instant::now();
    app.send(json!({"type": "tts.interrupt"}));
    let ended = app
        .wait_type(5 * SECOND, "tts.ended", Some("long"))
        .await
        .expect("ended");
    assert_eq!(ended["ok"], false);
    // Let anything still in flight arrive, then find the last packet of the utterance.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rx = peer.received();
    let last = rx.iter().map(|p| p.at).max().unwrap();
    let after = last.saturating_duration_since(sent_at);
    assert!(
        after <= Duration::from_millis(60),
        "audio went on {after:?} after the interrupt"
    );
    // The next speak plays normally.
    speak(&app, "next", "After the interrupt.");
    let next = app
        .wait_type(10 * SECOND, "tts.ended", Some("next"))
        .await
        .expect("next ended");
    assert_eq!(next["ok"], true);
    assert_eq!(
        tts_log(&app),
        [
            "started long",
            "ended long false",
            "started next",
            "ended next true"
        ]
    );
    println!("interrupt to last packet at the client: {after:?}");
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangup_command_ends_the_call_with_exactly_one_call_ended() {
    let app = TestDialogApp::start().await;
    let server = server_for(&app, &[]);
    let (peer, _) = started_dialog_call(&server, &app).await;
    speak(&app, "queued", "Something that will not finish.");
    app.send(json!({"type": "hangup", "reason": "done-here"}));
    server.wait_released(3 * SECOND).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ended: Vec<Value> = app
        .events()
        .into_iter()
        .filter(|e| e["type"] == "call.ended")
        .collect();
    assert_eq!(ended.len(), 1, "{:?}", app.types());
    assert_eq!(ended[0]["reason"], "done-here");
    // The utterance in progress ended before the call did.
    let types = app.types();
    let tts_end = types
        .iter()
        .position(|t| t == "tts.ended")
        .expect("the speak got its tts.ended");
    assert!(tts_end < types.iter().position(|t| t == "call.ended").unwrap());
    assert!(
        eventually(2 * SECOND, || !app.connected()).await,
        "the dialog socket is closed"
    );
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_hangup_gives_exactly_one_call_ended() {
    let app = TestDialogApp::start().await;
    let server = server_for(&app, &[]);
    let (peer, _) = started_dialog_call(&server, &app).await;
    let path = format!("/webrtc/v1/hangup?call_id={}", peer.call_id);
    assert_eq!(
        http::request(server.http, "POST", &path, &[], b"")
            .await
            .unwrap()
            .status,
        204
    );
    server.wait_released(3 * SECOND).await.unwrap();
    peer.close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ended: Vec<Value> = app
        .events()
        .into_iter()
        .filter(|e| e["type"] == "call.ended")
        .collect();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0]["reason"], "client-hangup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_dialog_socket_reconnects_keeps_events_and_commands_work_again() {
    let app = TestDialogApp::start().await;
    let server = server_for(&app, &[("dialog.reconnect_initial_ms", "100")]);
    let (peer, _) = started_dialog_call(&server, &app).await;
    speak(&app, "before", "Before the drop.");
    app.wait_type(5 * SECOND, "tts.started", Some("before"))
        .await
        .expect("started");
    assert!(app.drop_connection());
    // The utterance ends while the socket is down; its tts.ended is delivered after the reconnect.
    assert!(
        eventually(5 * SECOND, || app.dials().len() == 2 && app.connected()).await,
        "redialled"
    );
    let ended = app
        .wait_type(10 * SECOND, "tts.ended", Some("before"))
        .await
        .expect("buffered tts.ended delivered");
    assert_eq!(ended["ok"], true);
    speak(&app, "after", "After the reconnect.");
    let after = app
        .wait_type(10 * SECOND, "tts.ended", Some("after"))
        .await
        .expect("commands work again");
    assert_eq!(after["ok"], true);
    assert_eq!(
        app.types().iter().filter(|t| *t == "call.started").count(),
        1,
        "call.started is not repeated"
    );
    assert!(app.dials()[1].contains(&format!("call_id={}", peer.call_id)));
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giving_up_on_the_dialog_app_ends_the_call_as_dialog_lost() {
    let app = TestDialogApp::start().await;
    let server = server_for(&app, &[("dialog.reconnect_attempts", "0")]);
    let (peer, _) = started_dialog_call(&server, &app).await;
    app.drop_connection();
    assert_eq!(
        server
            .end_reason(&peer.call_id, 5 * SECOND)
            .await
            .as_deref(),
        Some("dialog-lost")
    );
    server.wait_released(2 * SECOND).await.unwrap();
    peer.close().await;
}

/// The call ends when the give-up prompt has played (the speaker tells the call that its own
/// prompt ended), not after the longest wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_give_up_prompt_plays_then_the_call_ends_as_dialog_lost() {
    let app = TestDialogApp::start().await;
    let server = server_for(
        &app,
        &[
            ("dialog.reconnect_attempts", "0"),
            (
                "dialog.hold_give_up",
                "Sorry, the assistant is gone. Goodbye.",
            ),
        ],
    );
    let (peer, _) = started_dialog_call(&server, &app).await;
    let before = peer.received_count();
    let dropped_at = Instant::now();
    app.drop_connection();
    assert_eq!(
        server
            .end_reason(&peer.call_id, 10 * SECOND)
            .await
            .as_deref(),
        Some("dialog-lost"),
        "ended after the prompt, well within the 15 s it may wait for it"
    );
    let loud = loud_since(&peer, before, dropped_at);
    assert!(
        loud > 25,
        "the caller heard the give-up prompt: {loud} loud frames"
    );
    server.wait_released(2 * SECOND).await.unwrap();
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_closing_normally_ends_the_call() {
    let app = TestDialogApp::start().await;
    let server = server_for(&app, &[]);
    let (peer, _) = started_dialog_call(&server, &app).await;
    app.close(1000);
    assert_eq!(
        server
            .end_reason(&peer.call_id, 5 * SECOND)
            .await
            .as_deref(),
        Some("dialog-closed")
    );
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_dialog_app_ends_the_call_with_that_reason() {
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("ws://{dead}/dialog");
    let server = TestServer::start(&[("dialog.url", url.as_str())]);
    let peer = ClientPeer::call(server.http, "/webrtc/v1/offer")
        .await
        .unwrap();
    assert_eq!(
        server
            .end_reason(&peer.call_id, 8 * SECOND)
            .await
            .as_deref(),
        Some("dialog-unreachable")
    );
    server.wait_released(2 * SECOND).await.unwrap();
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_dialog_app_keeps_its_call_thanks_to_pings() {
    let app = TestDialogApp::start().await;
    // Pings every 100 ms; no sign of life for 250 ms would count as lost. The app sends nothing,
    // but answers pings (as every WebSocket server does).
    let server = server_for(
        &app,
        &[
            ("dialog.ping_interval_ms", "100"),
            ("dialog.pong_timeout_ms", "150"),
            ("dialog.reconnect_attempts", "0"),
        ],
    );
    let (peer, _) = started_dialog_call(&server, &app).await;
    tokio::time::sleep(2 * SECOND).await;
    assert_eq!(
        server.snapshot().await.calls.len(),
        1,
        "the call is still up"
    );
    assert_eq!(app.dials().len(), 1, "no reconnect was needed");
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commands_are_ignored_and_the_call_goes_on() {
    let app = TestDialogApp::start().await;
    let server = server_for(&app, &[]);
    let (peer, _) = started_dialog_call(&server, &app).await;
    app.send_raw("this is not json");
    app.send_raw(r#"{"type": "tts.speak", "text": 42}"#);
    app.send(json!({"type": "transfer", "target": "sip:x"}));
    app.send(json!({"type": "hangup", "call_id": "wrtc-someone-else"}));
    app.send(json!({"type": "tts.stream", "text": "no id"}));
    speak(&app, "ok", "Still here.");
    let ended = app
        .wait_type(10 * SECOND, "tts.ended", Some("ok"))
        .await
        .expect("still working");
    assert_eq!(ended["ok"], true);
    assert_eq!(server.snapshot().await.calls.len(), 1);
    peer.close().await;
}

/// A command sent as a fragmented WebSocket message (a text frame and continuation frames, as
/// some libraries send long messages) is put together and executed; two in a row work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragmented_command_is_put_together_and_executed() {
    let app = TestDialogApp::start().await;
    let server = server_for(&app, &[]);
    let (peer, _) = started_dialog_call(&server, &app).await;
    for id in ["frag-1", "frag-2"] {
        assert!(app.send_fragmented(
            json!({"type": "tts.speak", "utterance_id": id, "text": "This arrived in pieces."}),
            4
        ));
        let ended = app
            .wait_type(10 * SECOND, "tts.ended", Some(id))
            .await
            .unwrap_or_else(|| panic!("{id} executed: {:?}", app.types()));
        assert_eq!(ended["ok"], true, "{ended}");
    }
    assert!(app.types().iter().any(|t| t == "tts.started"));
    assert_eq!(server.snapshot().await.calls.len(), 1);
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_speakable_still_gets_tts_ended() {
    let app = TestDialogApp::start().await;
    let server = server_for(&app, &[]);
    let (peer, _) = started_dialog_call(&server, &app).await;
    speak(&app, "emoji", "😊 **");
    let ended = app
        .wait_type(5 * SECOND, "tts.ended", Some("emoji"))
        .await
        .expect("tts.ended");
    assert_eq!(ended["ok"], true);
    assert!(!app.types().contains(&"tts.started".to_owned()));
    peer.close().await;
}

mod engines {
    //! The OpenAI-compatible engine against a local HTTP server.
    use super::*;
    use voicegate_testkit::speech_server::{Behaviour, SpeechServer};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn openai_engine_streams_24k_pcm_that_arrives_resampled_at_the_right_length() {
        // 1.5 s of a 440 Hz tone at 24 kHz, streamed in 100 ms chunks.
        let mut pcm = vec![0i16; 36_000];
        tone::Tone::new(24_000, 440.0, 8000.0).fill(&mut pcm);
        let tts = SpeechServer::start(Behaviour::Stream {
            pcm,
            chunk: 4800,
            gap: Duration::from_millis(20),
        })
        .await;
        let app = TestDialogApp::start().await;
        let base = tts.base_url();
        let server = server_for(
            &app,
            &[
                ("tts.engine", "openai"),
                ("tts.openai.base_url", &base),
                ("tts.openai.api_key", "sk-test-key"),
                ("tts.openai.voice", "nova"),
            ],
        );
        let (peer, _) = started_dialog_call(&server, &app).await;
        let before = peer.received_count();
        speak(&app, "tone", "Play the tone.");
        let ended = app
            .wait_type(10 * SECOND, "tts.ended", Some("tone"))
            .await
            .expect("ended");
        assert_eq!(ended["ok"], true);
        // tts.ended follows the last frame's send; let it cross loopback before counting.
        eventually(SECOND, || peer.received_count() - before >= 75).await;
        let rx = peer.received()[before..].to_vec();
        // 1.5 s: 75 frames (plus at most one padded frame).
        assert!(
            (75..=77).contains(&rx.len()),
            "{} frames for 1.5 s of audio",
            rx.len()
        );
        let pcm = decode(&rx);
        let f = tone::dominant_frequency(&pcm[1600..pcm.len() - 1600], SPEECH_RATE, 100.0, 2000.0);
        assert!(
            (f - 440.0).abs() <= 5.0,
            "played at the wrong speed: {f} Hz"
        );
        let req = &tts.requests()[0];
        assert_eq!(req.path, "/v1/audio/speech");
        assert_eq!(req.body["response_format"], "pcm");
        assert_eq!(req.body["voice"], "nova");
        assert_eq!(req.body["input"], "Play the tone.");
        assert!(
            req.headers
                .iter()
                .any(|(k, v)| k == "authorization" && v == "Bearer sk-test-key")
        );
        peer.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_engine_ends_the_utterance_not_ok_and_the_call_goes_on() {
        let tts = SpeechServer::start(Behaviour::Fail(500)).await;
        let app = TestDialogApp::start().await;
        let base = tts.base_url();
        let server = server_for(
            &app,
            &[("tts.engine", "openai"), ("tts.openai.base_url", &base)],
        );
        let (peer, _) = started_dialog_call(&server, &app).await;
        speak(&app, "x", "This will fail.");
        let ended = app
            .wait_type(10 * SECOND, "tts.ended", Some("x"))
            .await
            .expect("ended");
        assert_eq!(ended["ok"], false);
        speak(&app, "y", "So will this, and the call stays up.");
        let ended = app
            .wait_type(10 * SECOND, "tts.ended", Some("y"))
            .await
            .expect("ended");
        assert_eq!(ended["ok"], false);
        assert_eq!(server.snapshot().await.calls.len(), 1, "the call continues");
        assert!(!app.types().contains(&"call.ended".to_owned()));
        peer.close().await;
    }
}

mod supervision {
    //! A child that panics is restarted for its call only.
    use super::*;
    use voicegate_actors::call::Fault;
    use voicegate_actors::supervisor::InjectFault;
    use voicegate_core::call_id::CallId;

    /// Injects `fault` into `call`, retrying while the child does not exist yet (the codec
    /// starts shortly after media connects).
    async fn inject(server: &TestServer, call: &str, fault: Fault) -> Instant {
        let id = CallId::parse(call).unwrap();
        let t0 = Instant::now();
        loop {
            if server
                .supervisor
                .send(InjectFault {
                    call_id: id.clone(),
                    fault,
                })
                .await
                .unwrap()
            {
                return Instant::now();
            }
            assert!(t0.elapsed() < 3 * SECOND, "no {fault:?} to fail");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_codec_recovers_and_a_concurrent_call_keeps_its_audio() {
        let server = TestServer::start(&[]);
        let a = ClientPeer::call(server.http, "/webrtc/v1/offer?mode=echo")
            .await
            .unwrap();
        let b = ClientPeer::call(server.http, "/webrtc/v1/offer?mode=echo")
            .await
            .unwrap();
        a.wait_connected(5 * SECOND).await.unwrap();
        b.wait_connected(5 * SECOND).await.unwrap();
        let (ta, tb) = (a.send_tone(440.0, 150), b.send_tone(660.0, 150));
        let fault = async {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            inject(&server, &a.call_id, Fault::Codec).await
        };
        let (ra, rb, fault_at) = tokio::join!(ta, tb, fault);
        ra.unwrap();
        rb.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Call B never noticed: its echo is complete.
        let rb = b.received();
        assert!(
            rb.len() >= 142,
            "the other call lost audio: {} of 150",
            rb.len()
        );
        // Call A is still up and its echo resumed after the fault.
        let snap = server.snapshot().await;
        assert_eq!(
            snap.calls.len(),
            2,
            "both calls are up: {:?}",
            snap.recent_ends
        );
        let ra = a.received();
        let after = ra
            .iter()
            .filter(|p| p.at > fault_at + Duration::from_millis(200))
            .count();
        assert!(
            after > 20,
            "call A's audio did not resume: {after} packets after the fault"
        );
        // Its RTP numbering continued: no sequence jump across the restart.
        let jumps = ra
            .windows(2)
            .filter(|w| w[1].seq.wrapping_sub(w[0].seq) != 1)
            .count();
        assert_eq!(jumps, 0, "sequence numbers jumped");
        a.close().await;
        b.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_codec_that_keeps_failing_ends_its_call_with_a_reason() {
        let server = TestServer::start(&[("supervision.max_restarts", "1")]);
        let a = ClientPeer::call(server.http, "/webrtc/v1/offer?mode=echo")
            .await
            .unwrap();
        a.wait_connected(5 * SECOND).await.unwrap();
        for _ in 0..2 {
            inject(&server, &a.call_id, Fault::Codec).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            server.end_reason(&a.call_id, 3 * SECOND).await.as_deref(),
            Some("internal-error")
        );
        server.wait_released(2 * SECOND).await.unwrap();
        a.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_dialog_client_is_restarted_without_a_second_call_started() {
        let app = TestDialogApp::start().await;
        let server = server_for(&app, &[]);
        let (peer, _) = started_dialog_call(&server, &app).await;
        inject(&server, &peer.call_id, Fault::Dialog).await;
        assert!(
            eventually(5 * SECOND, || app.dials().len() == 2 && app.connected()).await,
            "redialled"
        );
        speak(&app, "after", "Still talking.");
        let ended = app
            .wait_type(10 * SECOND, "tts.ended", Some("after"))
            .await
            .expect("works after restart");
        assert_eq!(ended["ok"], true);
        assert_eq!(
            app.types().iter().filter(|t| *t == "call.started").count(),
            1
        );
        peer.close().await;
    }

    /// A `tts.ended` the speaker sends just as the call ends (here a refusal, racing a hangup)
    /// still reaches the app, before `call.ended`: exactly once per utterance holds at the end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_report_on_its_way_when_the_call_ends_reaches_the_app_before_call_ended() {
        let app = TestDialogApp::start().await;
        let server = server_for(&app, &[]);
        let (peer, _) = started_dialog_call(&server, &app).await;
        inject(&server, &peer.call_id, Fault::EndWhileSpeakerReports).await;
        app.wait_type(5 * SECOND, "call.ended", None)
            .await
            .expect("call.ended");
        let last: Vec<String> = app
            .events()
            .iter()
            .filter(|e| e["type"] == "tts.ended" || e["type"] == "call.ended")
            .map(|e| format!("{} {} {}", e["type"], e["utterance_id"], e["reason"]))
            .collect();
        assert_eq!(
            last,
            [
                "\"tts.ended\" \"refused\" \"text-too-long\"",
                "\"call.ended\" null \"client-hangup\""
            ],
            "the refusal, once, then the end"
        );
        peer.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_prompts_play_while_reconnecting_and_stay_internal() {
    let app = TestDialogApp::start().await;
    // The first reconnect attempt comes after 1.5 s: the hold prompt fills the gap.
    let server = server_for(
        &app,
        &[
            ("dialog.reconnect_initial_ms", "1500"),
            ("dialog.hold_first", "Please hold while we reconnect."),
        ],
    );
    let (peer, _) = started_dialog_call(&server, &app).await;
    let before = peer.received_count();
    let dropped_at = Instant::now();
    assert!(app.drop_connection());
    assert!(
        eventually(5 * SECOND, || app.dials().len() == 2 && app.connected()).await,
        "redialled"
    );
    let loud = loud_since(&peer, before, dropped_at);
    assert!(
        loud > 25,
        "the caller heard the hold prompt: {loud} loud frames"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        app.events().iter().all(|e| !e["utterance_id"]
            .as_str()
            .unwrap_or("")
            .starts_with("voicegate-")),
        "voicegate's own prompts are not reported: {:?}",
        app.events()
    );
    peer.close().await;
}
