//! The order of the dialog app's events end to end: the real server, a real WebRTC client peer
//! and a test dialog app on port 0.
//!
//! `call.started` is the first event of a call, even when the caller's media is up before the
//! app accepted its WebSocket and the caller already pressed a key; and a `tts.stream` id used
//! again while the answer streamed under it still plays is a second utterance, with events of
//! its own after the first one's.

mod common;

use common::{TestServer, started_dialog_call};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use voicegate_testkit::ClientPeer;
use voicegate_testkit::dialog_app::TestDialogApp;

const SECOND: Duration = Duration::from_secs(1);

/// A relay in front of `app` that holds every connection, unanswered, until `gate` opens: the
/// app then seems slow to accept the WebSocket upgrade. Returns the dial URL through it.
async fn slow_to_accept(app: &TestDialogApp, gate: watch::Receiver<bool>) -> String {
    let url = app.url();
    let target: SocketAddr = url
        .strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
        .and_then(|host| host.parse().ok())
        .expect("the test app's URL is ws://<ip:port>/...");
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the relay");
    let relay = listener.local_addr().expect("bound");
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let mut gate = gate.clone();
            tokio::spawn(async move {
                if gate.wait_for(|open| *open).await.is_err() {
                    return;
                }
                if let Ok(mut outbound) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    url.replacen(&target.to_string(), &relay.to_string(), 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_pressed_before_the_app_accepted_comes_after_call_started() {
    let app = TestDialogApp::start().await;
    let (open, gate) = watch::channel(false);
    let url = slow_to_accept(&app, gate).await;
    let server = TestServer::start(&[
        ("dialog.url", url.as_str()),
        // Room for a slow machine: the dial waits for the gate.
        ("dialog.connect_timeout_ms", "15000"),
    ]);
    // The page shows key presses as they happen: how the test knows the call has this one.
    let peer = ClientPeer::call_with_page(server.http, "/webrtc/v1/offer")
        .await
        .expect("call placed");
    peer.wait_connected(5 * SECOND)
        .await
        .expect("media connected");
    let page = peer.page().expect("the call has its page");
    page.wait_open(5 * SECOND).await.expect("the page opened");
    let pt = voicegate_core::sdp::check_offer(&peer.offer)
        .expect("the client's offer is valid")
        .telephone_event_pt
        .expect("the client offers DTMF");
    // The codec may start a moment after media connects: press until the call has a key.
    let mut pressed = false;
    for _ in 0..20 {
        peer.send_dtmf(pt, '5').await.expect("key press sent");
        let t0 = std::time::Instant::now();
        while !pressed && t0.elapsed() < Duration::from_millis(300) {
            pressed = page.received().iter().any(|m| m.contains(r#""dtmf""#));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if pressed {
            break;
        }
    }
    assert!(pressed, "the call never saw the key press");
    assert!(
        app.dials().is_empty(),
        "the app accepted before the gate opened"
    );
    open.send(true).expect("the relay is waiting");
    let key = app
        .wait_type(10 * SECOND, "dtmf", None)
        .await
        .expect("the key press reaches the app");
    assert_eq!(key["digit"], "5");
    let types = app.types();
    assert_eq!(
        types.first().map(String::as_str),
        Some("call.started"),
        "the app heard of the call first: {types:?}"
    );
    assert_eq!(
        types.iter().filter(|t| *t == "call.started").count(),
        1,
        "{types:?}"
    );
    peer.close().await;
}

/// `tts.*` events as "started <id>" / "ended <id> <ok>".
fn tts_log(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e["type"].as_str()? {
            "tts.started" => Some(format!("started {}", e["utterance_id"].as_str()?)),
            "tts.ended" => Some(format!("ended {} {}", e["utterance_id"].as_str()?, e["ok"])),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_id_used_again_while_its_first_answer_plays_speaks_both() {
    let app = TestDialogApp::start().await;
    let url = app.url();
    let server = TestServer::start(&[("dialog.url", url.as_str())]);
    let (peer, _) = started_dialog_call(&server, &app).await;
    // An app that streams every answer as "turn", faster than they play.
    for text in ["This is the first answer.", "And this is the second one."] {
        assert!(app.send(json!({
            "type": "tts.stream", "utterance_id": "turn", "text": text, "stream_end": true
        })));
    }
    let two_ends =
        |events: &[Value]| events.iter().filter(|e| e["type"] == "tts.ended").count() >= 2;
    assert!(
        common::eventually(15 * SECOND, || two_ends(&app.events())).await,
        "{:?}",
        tts_log(&app.events())
    );
    assert_eq!(
        tts_log(&app.events()),
        [
            "started turn",
            "ended turn true",
            "started turn",
            "ended turn true"
        ]
    );
    peer.close().await;
}

/// A call that ends before `call.started` (its media never connected) still gives the app what
/// it caused meanwhile: a `tts.speak` refused while the call waited for media ends with its
/// `tts.ended`, before `call.ended`, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_call_that_never_started_caused_reaches_the_app_before_call_ended() {
    let app = TestDialogApp::start().await;
    let server = TestServer::start(&[
        ("dialog.url", &app.url()),
        ("calls.auth_timeout_ms", "1500"),
        ("tts.max_text_bytes", "64"),
    ]);
    // An offer from a peer that is gone at once: no connectivity check will ever come.
    let (pc, _, _, _, _, sdp) = ClientPeer::offer().await.expect("offer");
    pc.close().await.expect("close");
    let res = voicegate_testkit::http::post_json(
        server.http,
        "/webrtc/v1/offer",
        &json!({"type": "offer", "sdp": sdp}),
    )
    .await
    .expect("offer");
    assert_eq!(res.status, 200, "{}", res.text());
    let call_id = res.json()["call_id"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + 5 * SECOND;
    while !app.connected() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the app was dialled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.send(json!({
        "type": "tts.speak",
        "call_id": call_id,
        "utterance_id": "too-long",
        "text": "x".repeat(100),
    }));
    let ended = app
        .wait_type(5 * SECOND, "call.ended", None)
        .await
        .expect("call.ended");
    assert_eq!(ended["reason"], "connect-timeout");
    let types = app.types();
    assert!(!types.iter().any(|t| t == "call.started"), "{types:?}");
    let tts_ended: Vec<Value> = app
        .events()
        .into_iter()
        .filter(|e| e["type"] == "tts.ended")
        .collect();
    assert_eq!(tts_ended.len(), 1, "{types:?}");
    assert_eq!(tts_ended[0]["utterance_id"], "too-long");
    assert_eq!(tts_ended[0]["reason"], "text-too-long");
    assert_eq!(
        types.last().map(String::as_str),
        Some("call.ended"),
        "the tts.ended came first: {types:?}"
    );
}
