//! The callers of the dialog calls that bring the misbehaving dialog app in: real client peers,
//! each from its own forwarded source, that keep a call up for the whole step and place a new
//! one whenever the server ends theirs (a server that gives up on a hostile app ends the call),
//! so the app's attacks go on from start to end.
//!
//! They send Opus silence: a caller who spoke would barge in, and a barge-in drops the queue the
//! app filled, which would end that attack early.

use super::{Answers, Stop};
use bytes::Bytes;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use voicegate_testkit::ClientPeer;

/// The path of a dialog call.
const PATH: &str = "/webrtc/v1/offer";
/// How long a call may take to connect.
const CONNECT_WITHIN: Duration = Duration::from_secs(10);
/// Pause before placing the next call after one ended or failed.
const REDIAL_AFTER: Duration = Duration::from_millis(500);

/// One caller's tally.
#[derive(Debug, Default)]
struct Tally {
    placed: u64,
    refused: u64,
    connected: u64,
    not_connected: u64,
    ended_by_server: u64,
    downlink_packets: u64,
}

/// Runs caller `k` (source `10.78.0.k`) until `stop`; returns its tally.
async fn caller(k: usize, http: SocketAddr, answers: Answers, stop: Stop) -> Tally {
    let source = format!("10.78.0.{}", k % 256);
    let silence = Arc::new(voicegate_testkit::peer::opus_speech(
        &[],
        16_000,
        Duration::ZERO,
        Duration::from_secs(1),
    ));
    let mut t = Tally::default();
    while !stop.now() {
        t.placed += 1;
        let peer = match ClientPeer::call_with_headers(http, PATH, &[("X-Forwarded-For", &source)])
            .await
        {
            Ok(p) => p,
            Err(_) => {
                t.refused += 1;
                tokio::time::sleep(REDIAL_AFTER).await;
                continue;
            }
        };
        answers
            .lock()
            .expect("no panics while holding")
            .push(peer.answer.clone());
        if peer.wait_connected(CONNECT_WITHIN).await.is_err() {
            t.not_connected += 1;
            peer.close().await;
            continue;
        }
        t.connected += 1;
        let mut tick = tokio::time::interval(voicegate_core::frame::FRAME);
        let mut i = 0;
        while !stop.now() && peer.is_connected() {
            tick.tick().await;
            let frame: Bytes = silence[i % silence.len()].clone();
            if peer.send(frame).await.is_err() {
                break;
            }
            i += 1;
        }
        if !stop.now() {
            t.ended_by_server += 1;
        }
        t.downlink_packets += peer.received_count() as u64;
        peer.close().await;
        if !stop.now() {
            tokio::time::sleep(REDIAL_AFTER).await;
        }
    }
    t
}

/// Runs `n` callers until `stop`; returns their summed tally.
pub async fn run(n: usize, http: SocketAddr, answers: Answers, stop: Stop) -> Value {
    let tasks: Vec<_> = (0..n)
        .map(|k| tokio::spawn(caller(k, http, answers.clone(), stop.clone())))
        .collect();
    let mut sum = Tally::default();
    for t in tasks {
        let Ok(t) = t.await else { continue };
        sum.placed += t.placed;
        sum.refused += t.refused;
        sum.connected += t.connected;
        sum.not_connected += t.not_connected;
        sum.ended_by_server += t.ended_by_server;
        sum.downlink_packets += t.downlink_packets;
    }
    json!({
        "callers": n,
        "calls_placed": sum.placed,
        "offers_refused": sum.refused,
        "calls_connected": sum.connected,
        "calls_not_connected": sum.not_connected,
        "calls_ended_by_server": sum.ended_by_server,
        "downlink_packets": sum.downlink_packets,
    })
}
