//! Messages between the browser page and the dialog app over the page's data channel: the
//! page's `call.send` reaches the app as `client.message`, the app's `client.send` reaches the
//! page as a `message`, and what crosses is held to `[page]`'s limits (size, rate, JSON only),
//! each drop counted in `voicegate_limit_hits_total`.

mod common;

use common::{TestServer, eventually};
use serde_json::{Value, json};
use std::time::Duration;
use voicegate_actors::metrics::{Limit, metrics};
use voicegate_testkit::ClientPeer;
use voicegate_testkit::dialog_app::TestDialogApp;

const SECOND: Duration = Duration::from_secs(1);

/// A dialog call with the page's channel open and `call.started` received by `app`.
async fn call_with_page(server: &TestServer, app: &TestDialogApp) -> ClientPeer {
    let peer = ClientPeer::call_with_page(server.http, "/webrtc/v1/offer")
        .await
        .expect("call placed");
    peer.wait_connected(5 * SECOND)
        .await
        .expect("media connected");
    peer.page()
        .expect("placed with a page")
        .wait_open(5 * SECOND)
        .await
        .expect("the page channel opens");
    let id = peer.call_id.clone();
    app.wait_for(5 * SECOND, |e| {
        e["type"] == "call.started" && e["call_id"] == id
    })
    .await
    .expect("call.started");
    peer
}

/// The `data` of every `client.message` the app got.
fn client_messages(app: &TestDialogApp) -> Vec<Value> {
    app.events()
        .into_iter()
        .filter(|e| e["type"] == "client.message")
        .map(|e| e["data"].clone())
        .collect()
}

/// The `data` of every `message` the page got.
fn page_messages(peer: &ClientPeer) -> Vec<Value> {
    peer.page()
        .expect("placed with a page")
        .received()
        .iter()
        .filter_map(|t| serde_json::from_str::<Value>(t).ok())
        .filter(|m| m["type"] == "message")
        .map(|m| m["data"].clone())
        .collect()
}

fn from_page(data: Value) -> String {
    json!({"type": "message", "data": data}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_the_dialog_app_message_each_other() {
    let app = TestDialogApp::start().await;
    let server = TestServer::start(&[("dialog.url", app.url().as_str())]);
    let peer = call_with_page(&server, &app).await;
    let page = peer.page().unwrap();

    page.send_text(&from_page(json!({"clicked": "pay", "n": [1, 2]})))
        .await
        .unwrap();
    let got = app
        .wait_type(5 * SECOND, "client.message", None)
        .await
        .expect("the app gets the page's message");
    assert_eq!(got["call_id"], peer.call_id.as_str());
    assert_eq!(got["data"], json!({"clicked": "pay", "n": [1, 2]}));

    assert!(app.send(
        json!({"type": "client.send", "call_id": peer.call_id, "data": {"show": "receipt"}})
    ));
    assert!(
        eventually(5 * SECOND, || page_messages(&peer)
            == vec![json!({"show": "receipt"})])
        .await,
        "the page gets the app's message: {:?}",
        page.received()
    );
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_crosses_is_held_to_the_size_rate_and_json_limits() {
    let app = TestDialogApp::start().await;
    // A burst of 3 and a rate so slow that nothing refills during the test.
    let server = TestServer::start(&[
        ("dialog.url", app.url().as_str()),
        ("page.max_message_bytes", "200"),
        ("page.messages_per_s", "0.001"),
        ("page.message_burst", "3"),
    ]);
    let peer = call_with_page(&server, &app).await;
    let page = peer.page().unwrap();
    let m = metrics();
    let (bytes, rate, not_json) = (
        m.limit_hits(Limit::ClientMessageBytes),
        m.limit_hits(Limit::ClientMessageRate),
        m.limit_hits(Limit::ClientMessageNotJson),
    );

    // Too large: dropped unread, so it takes nothing from the rate.
    page.send_text(&from_page(json!("x".repeat(300))))
        .await
        .unwrap();
    // Not JSON, and binary: dropped, and each counts against the rate.
    page.send_text("not json").await.unwrap();
    page.send_binary(b"\x00\x01").await.unwrap();
    // The third of the burst goes through.
    page.send_text(&from_page(json!("third"))).await.unwrap();
    // Past the burst.
    page.send_text(&from_page(json!("fourth"))).await.unwrap();

    assert!(
        eventually(5 * SECOND, || {
            m.limit_hits(Limit::ClientMessageRate) > rate
                && m.limit_hits(Limit::ClientMessageNotJson) >= not_json + 2
                && m.limit_hits(Limit::ClientMessageBytes) > bytes
        })
        .await,
        "every drop is counted under its limit"
    );
    app.wait_type(5 * SECOND, "client.message", None)
        .await
        .expect("the message within the limits arrives");
    // The later one was dropped: the channel is ordered, so it would have come by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(client_messages(&app), vec![json!("third")]);

    // The app's messages are held to the size limit too.
    let bytes = m.limit_hits(Limit::ClientMessageBytes);
    assert!(app.send(json!({"type": "client.send", "data": "y".repeat(300)})));
    assert!(app.send(json!({"type": "client.send", "data": "small"})));
    assert!(
        eventually(5 * SECOND, || page_messages(&peer) == vec![json!("small")]).await,
        "only the message within the limit reaches the page: {:?}",
        page.received()
    );
    assert!(m.limit_hits(Limit::ClientMessageBytes) > bytes);
    // The call carries on.
    assert!(
        server
            .snapshot()
            .await
            .calls
            .iter()
            .any(|c| c.as_str() == peer.call_id)
    );
    peer.close().await;
}
