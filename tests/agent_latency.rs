//! A measurement, and a guard on it: how long after `asr.final` the caller hears the demo
//! agent's answer, when the model (the chat stand-in) sends its first token 200 ms after the
//! request. BENCHMARKS.md reports the figures this prints (`--nocapture`).
//!
//! The embedded demo is reached through a small WebSocket relay between voicegate and the demo,
//! which stamps each `asr.final` going to the demo and the demo's first `tts.stream` coming back
//! on the same clock as the WebRTC client peer's packets, so each turn splits into: the demo's
//! share (`asr.final` → request at the model), the model's (request → first token, 200 ms), the
//! demo's relay of the token (first token → first `tts.stream`) and the gateway's (first
//! `tts.stream` → first RTP packet of the answer at the client: segmenting, synthesis, encoding,
//! pacing). The relay adds one loopback hop each way.

mod common;

use common::{TestServer, eventually, spoken};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use voicegate_testkit::ClientPeer;
use voicegate_testkit::chat_server::{ChatBehaviour, ChatServer};

const SECOND: Duration = Duration::from_secs(1);
/// The model's time to its first token.
const FIRST_TOKEN: Duration = Duration::from_millis(200);
/// Turns measured, alternating between the two answers.
const RUNS: usize = 6;
/// An answer whose first sentence ends early: the segmenter's first segment is ready with the
/// first token.
const EARLY_END: &str = "Sure. The quick brown fox jumps over the lazy dog, as always.";
/// An answer with no pause mark in its first 40 characters: the first segment is cut at a word
/// boundary past `tts.segment.first_max_chars` (40), so it waits for that much text.
const NO_EARLY_END: &str =
    "The quick brown fox jumps over the lazy dog and runs far into the quiet woods.";

#[derive(Default)]
struct Stamps {
    finals: Vec<Instant>,
    first_streams: Vec<Instant>,
}

/// Relays voicegate's dials to the demo (`demo` holds its URL with the key, known once the
/// server runs), stamping `asr.final` and the first `tts.stream` of each turn; returns the URL
/// for `dialog.url`.
async fn relay(demo: Arc<Mutex<String>>, stamps: Arc<Mutex<Stamps>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (demo, stamps) = (demo.lock().unwrap().clone(), stamps.clone());
            tokio::spawn(async move {
                let query = Arc::new(Mutex::new(String::new()));
                let q = query.clone();
                #[allow(clippy::result_large_err)] // tungstenite's handshake callback type
                let callback = move |req: &Request, res: Response| {
                    *q.lock().unwrap() = req.uri().query().unwrap_or("").to_owned();
                    Ok(res)
                };
                let Ok(up) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
                    return;
                };
                let url = format!("{demo}&{}", query.lock().unwrap());
                let (down, _) = tokio_tungstenite::connect_async(url).await.unwrap();
                let (mut up_tx, mut up_rx) = up.split();
                let (mut down_tx, mut down_rx) = down.split();
                let mut streaming = false;
                loop {
                    tokio::select! {
                        m = up_rx.next() => {
                            let Some(Ok(m)) = m else { break };
                            if let Message::Text(t) = &m {
                                let v: Value = serde_json::from_str(t).unwrap_or_default();
                                if v["type"] == "asr.final" {
                                    stamps.lock().unwrap().finals.push(Instant::now());
                                    streaming = false;
                                }
                            }
                            if down_tx.send(m).await.is_err() { break; }
                        }
                        m = down_rx.next() => {
                            let Some(Ok(m)) = m else { break };
                            if let Message::Text(t) = &m {
                                let v: Value = serde_json::from_str(t).unwrap_or_default();
                                if v["type"] == "tts.stream" && !streaming {
                                    streaming = true;
                                    stamps.lock().unwrap().first_streams.push(Instant::now());
                                }
                            }
                            if up_tx.send(m).await.is_err() { break; }
                        }
                    }
                }
            });
        }
    });
    format!("ws://{addr}/")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asr_final_to_first_audio_with_a_model_answering_after_200_ms() {
    let chat = ChatServer::start(ChatBehaviour::Stream {
        replies: (0..RUNS)
            .map(|i| if i % 2 == 0 { EARLY_END } else { NO_EARLY_END }.to_owned())
            .collect(),
        first_after: FIRST_TOKEN,
        gap: Duration::from_millis(50),
    })
    .await;
    let grammar = format!("{}/tests/fixtures/test.gram", env!("CARGO_MANIFEST_DIR"));
    let base = chat.base_url();
    // The demo is served by the server it is relayed for: the relay listens first, and learns
    // the demo's URL once the server runs.
    let stamps = Arc::new(Mutex::new(Stamps::default()));
    let demo = Arc::new(Mutex::new(String::new()));
    let relay_url = relay(demo.clone(), stamps.clone()).await;
    let server = TestServer::start(&[
        ("dialog.url", relay_url.as_str()),
        ("asr.pocketsphinx.grammar", grammar.as_str()),
        ("demo.llm.base_url", base.as_str()),
        ("demo.llm.model", "standin-1"),
    ]);
    *demo.lock().unwrap() = server.demo_url.clone();

    let peer = ClientPeer::call(server.http, "/webrtc/v1/offer")
        .await
        .unwrap();
    peer.wait_connected(5 * SECOND).await.unwrap();
    // The greeting plays first; measure once it is over.
    assert!(eventually(10 * SECOND, || peer.received_count() >= 100).await);
    let speech = spoken("what is the weather like today", Duration::from_millis(900)).await;
    let mut rows = Vec::new();
    for run in 0..RUNS {
        let idle = Instant::now();
        while peer
            .received()
            .last()
            .is_some_and(|p| p.at.elapsed() < Duration::from_millis(800))
        {
            assert!(idle.elapsed() < 15 * SECOND, "the answer never ended");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peer.send_paced(&speech).await.unwrap();
        assert!(
            eventually(10 * SECOND, || chat.requests().len() > run
                && stamps.lock().unwrap().first_streams.len() > run)
            .await,
            "turn {run}: no request or answer"
        );
        let final_at = stamps.lock().unwrap().finals[run];
        let first_audio = loop {
            if let Some(p) = peer.received().into_iter().find(|p| p.at > final_at) {
                break p.at;
            }
            assert!(
                final_at.elapsed() < 10 * SECOND,
                "turn {run}: no answer audio"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let req = chat.requests()[run].clone();
        let first_token = req.tokens_sent[0];
        let first_stream = stamps.lock().unwrap().first_streams[run];
        let last_token = *chat
            .wait_for(10 * SECOND, |r| r[run].completed)
            .await
            .expect("the answer completes")[run]
            .tokens_sent
            .last()
            .unwrap();
        rows.push([
            ms(first_audio - final_at),
            ms(req.arrived - final_at),
            ms(first_token - req.arrived),
            ms(first_stream - first_token),
            ms(first_audio - first_stream),
            ms(last_token - final_at),
        ]);
    }
    let names = [
        "asr.final -> first answer audio at the client",
        "  asr.final -> request at the model (demo)",
        "  request -> first token (the model)",
        "  first token -> first tts.stream (demo)",
        "  first tts.stream -> first RTP at the client (gateway)",
        "asr.final -> the model's last token",
    ];
    for (kind, parity) in [
        ("first sentence ends early", 0),
        ("no pause mark in the first 40 characters", 1),
    ] {
        let rows: Vec<&[f64; 6]> = rows.iter().skip(parity).step_by(2).collect();
        println!(
            "agent latency, {kind}, {} turns, tokens 50 ms apart (median / max, ms):",
            rows.len()
        );
        for (i, name) in names.iter().enumerate() {
            let col: Vec<f64> = rows.iter().map(|r| r[i]).collect();
            let max = col.iter().cloned().fold(0.0, f64::max);
            println!("{name:<56} {:>7.1} / {:>7.1}", median(col), max);
        }
    }
    // The first audio must not wait for the whole answer: it comes well before the last token
    // (0.6 to 0.7 s after the first), and the gateway plus the demo add to the model's 200 ms at
    // most the wait for a first segment's text (40 characters at 50 ms per word: about 0.4 s).
    for r in &rows {
        assert!(
            r[0] < r[5],
            "the first audio waited for the whole answer: {r:?}"
        );
        assert!(
            r[0] < ms(FIRST_TOKEN) + 800.0,
            "first audio {:.0} ms after asr.final",
            r[0]
        );
    }
    peer.close().await;
}
