//! With message tracing on, every message between a call's actors is logged at trace level with
//! the call id, sender, receiver, message name and a summary.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use voicegate_testkit::{ClientPeer, http};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_actor_message_is_traced_with_call_id_sender_and_receiver() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_env_filter("warn,voicegate::messages=trace")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    let server = common::TestServer::start(&[]);
    let peer = ClientPeer::call(server.http, "/webrtc/v1/offer?mode=echo")
        .await
        .unwrap();
    peer.wait_connected(Duration::from_secs(5)).await.unwrap();
    peer.send_tone(440.0, 10).await.unwrap();
    let path = format!("/webrtc/v1/hangup?call_id={}", peer.call_id);
    http::request(server.http, "POST", &path, &[], b"")
        .await
        .unwrap();
    server.wait_released(Duration::from_secs(3)).await.unwrap();
    peer.close().await;

    let log = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("voicegate::messages"))
        .collect();
    for (from, to, msg) in [
        ("supervisor", "call", "Negotiate"),
        ("peer", "call", "PeerEvent"),
        ("supervisor", "call", "End"),
        ("call", "codec", "Stop"),
        ("call", "supervisor", "CallEvent::Ended"),
    ] {
        let found = lines.iter().any(|l| {
            l.contains(&format!("call_id={}", peer.call_id))
                && l.contains(&format!("from=\"{from}\""))
                && l.contains(&format!("to=\"{to}\""))
                && l.contains(&format!("msg=\"{msg}\""))
        });
        assert!(
            found,
            "no trace of {from} -> {to} {msg} in:\n{}",
            lines.join("\n")
        );
    }
    assert!(!log.contains("payload"), "no payloads in message traces");
}
