//! The embedded demo dialog app, spoken to directly over its WebSocket, and a real call that
//! uses it (the default `dialog.url`).

mod common;

use common::TestServer;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use voicegate_testkit::ClientPeer;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_command(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(3), ws.next())
            .await
            .expect("a command in time");
        if let Some(Ok(Message::Text(t))) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_greets_repeats_what_it_heard_and_hangs_up_on_goodbye() {
    let server = TestServer::start(&[]);
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("{}&call_id=wrtc-x", server.demo_url))
            .await
            .unwrap();

    send(
        &mut ws,
        json!({"type": "call.started", "call_id": "wrtc-x"}),
    )
    .await;
    let greet = next_command(&mut ws).await;
    assert_eq!(greet["type"], "tts.speak");
    assert_eq!(greet["call_id"], "wrtc-x");
    assert_eq!(greet["text"], "Hello! Say something and I will repeat it.");

    send(
        &mut ws,
        json!({"type": "asr.final", "call_id": "wrtc-x", "text": "the weather is nice today"}),
    )
    .await;
    let mut said = String::new();
    let id = loop {
        let c = next_command(&mut ws).await;
        assert_eq!(c["type"], "tts.stream");
        said.push_str(c["text"].as_str().unwrap());
        if c["stream_end"] == true {
            break c["utterance_id"].as_str().unwrap().to_owned();
        }
    };
    assert_eq!(said, "You said: the weather is nice today.");
    assert!(id.starts_with("turn-"));

    send(
        &mut ws,
        json!({"type": "asr.final", "call_id": "wrtc-x", "text": "okay goodbye"}),
    )
    .await;
    let bye = next_command(&mut ws).await;
    assert_eq!(bye["type"], "tts.speak");
    assert_eq!(bye["text"], "Goodbye! Thanks for calling.");
    // It hangs up only once the farewell has played.
    send(&mut ws, json!({"type": "tts.ended", "call_id": "wrtc-x", "utterance_id": bye["utterance_id"], "ok": true})).await;
    let hangup = next_command(&mut ws).await;
    assert_eq!(hangup["type"], "hangup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_call_hears_the_demo_greeting() {
    let server = TestServer::start(&[]);
    let peer = ClientPeer::call(server.http, "/webrtc/v1/offer")
        .await
        .unwrap();
    peer.wait_connected(Duration::from_secs(5)).await.unwrap();
    // The greeting is about 2.5 s of speech.
    assert!(
        common::eventually(Duration::from_secs(8), || peer.received_count() >= 100).await,
        "greeting audio: {} packets",
        peer.received_count()
    );
    let pcm = voicegate_testkit::peer::decode(&peer.received());
    let loud = pcm
        .chunks(voicegate_core::frame::SPEECH_FRAME_SAMPLES)
        .filter(|f| voicegate_core::listen::rms(f) > 200.0)
        .count();
    assert!(loud >= 50, "only {loud} loud frames");
    peer.close().await;
}

/// The demo's socket is on the public HTTP port but answers only voicegate's own dials, which
/// carry the per-process `demo_key`, with or without a model behind it: a WebSocket anyone may
/// open is memory and a mailbox anyone may fill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_voicegate_may_dial_the_demo() {
    let server = TestServer::start(&[]);
    common::assert_demo_refuses_strangers(&server).await;
}
