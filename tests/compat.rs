//! Clients written for the original service work unchanged: offer keys and dialog command keys
//! in any case (as the original's decoder matched them), a configurable dial payload limit, and
//! `call.ended` reasons in the original's spelling when `compat.call_ended_reasons = "original"`.

mod common;

use common::TestServer;
use serde_json::json;
use std::time::Duration;
use voicegate_testkit::dialog_app::TestDialogApp;
use voicegate_testkit::{ClientPeer, http};
use webrtc::peer_connection::{RTCPeerConnectionState, RTCSessionDescription};

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_with_the_originals_key_spelling_is_answered_and_dials_with_its_key() {
    let app = TestDialogApp::start().await;
    let server = TestServer::start(&[("dialog.url", app.url().as_str())]);
    let (pc, _t, _s, mut state, _rx, offer) = ClientPeer::offer().await.unwrap();
    let body = json!({"SDP": offer, "Type": "offer", "apikey": "key-123", "AgentID": "agent-7"});
    let res = http::post_json(server.http, "/webrtc/v1/offer", &body)
        .await
        .unwrap();
    assert_eq!(res.status, 200, "{}", res.text());
    let call_id = res.json()["call_id"].as_str().unwrap().to_owned();
    pc.set_remote_description(
        RTCSessionDescription::answer(res.json()["sdp"].as_str().unwrap().to_owned()).unwrap(),
    )
    .await
    .unwrap();
    tokio::time::timeout(
        5 * SECOND,
        state.wait_for(|s| *s == RTCPeerConnectionState::Connected),
    )
    .await
    .unwrap()
    .unwrap();
    app.wait_type(5 * SECOND, "call.started", None)
        .await
        .expect("call.started");
    let dial = &app.dials()[0];
    assert!(dial.contains(&format!("call_id={call_id}")), "{dial}");
    assert!(dial.contains("apiKey=key-123"), "{dial}");
    assert!(dial.contains("agentId=agent-7"), "{dial}");
    let _ = pc.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dial_payload_limit_is_configurable() {
    let app = TestDialogApp::start().await;
    let server = TestServer::start(&[
        ("dialog.url", app.url().as_str()),
        ("dialog.max_payload_bytes", "8192"),
    ]);
    let (pc, _t, _s, _st, _rx, offer) = ClientPeer::offer().await.unwrap();
    // Refused by the default of 4096, within this server's 8192.
    let payload = json!({"notes": "n".repeat(5000)});
    let res = http::post_json(
        server.http,
        "/webrtc/v1/offer",
        &json!({"type": "offer", "sdp": offer, "payload": payload}),
    )
    .await
    .unwrap();
    assert_eq!(res.status, 200, "{}", res.text());
    let _ = pc.close().await;

    let (pc, _t, _s, _st, _rx, offer) = ClientPeer::offer().await.unwrap();
    let res = http::post_json(
        server.http,
        "/webrtc/v1/offer",
        &json!({"type": "offer", "sdp": offer, "payload": "p".repeat(9000)}),
    )
    .await
    .unwrap();
    assert_eq!(res.status, 400);
    let error = res.json()["error"].as_str().unwrap().to_owned();
    assert!(error.contains("the limit is 8192"), "{error}");
    let _ = pc.close().await;
}

/// A dialog call whose app hangs up with a command in the original's key spelling; the reason
/// `call.ended` carries.
async fn hangup_reason(compat: &str) -> String {
    let app = TestDialogApp::start().await;
    let server = TestServer::start(&[
        ("dialog.url", app.url().as_str()),
        ("compat.call_ended_reasons", compat),
    ]);
    let (peer, _) = common::started_dialog_call(&server, &app).await;
    assert!(app.send(json!({"Type": "hangup", "Call_ID": peer.call_id, "Reason": "bye"})));
    let ended = app
        .wait_type(5 * SECOND, "call.ended", None)
        .await
        .expect("the command is carried out: call.ended");
    peer.close().await;
    ended["reason"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_ended_reasons_are_ours_by_default_and_the_originals_when_asked() {
    assert_eq!(hangup_reason("ours").await, "bye");
    assert_eq!(hangup_reason("original").await, "dialog-hangup:bye");
}
