//! A misbehaving dialog app: a WebSocket server on loopback that attacks every call dialling
//! it, the way a buggy or hostile app could, to show that the gateway bounds what an app can
//! make it do and that none of it reaches other calls.
//!
//! On a call's first connection it sends, in order: one `tts.speak` whose text is 200 000 `[`
//! and a full stop (markup the text cleaner must get through in linear time); a burst of 10 000
//! `tts.speak` commands; malformed JSON (truncated, wrong types, nesting deeper than any parser
//! should follow, a binary frame) and unknown commands; utterance ids and text holding newlines
//! and terminal escapes (ESC); then, written straight onto the TCP stream, the header of a text
//! frame declaring 150 MB, a little of its payload trickled after it, and silence (it never
//! answers another ping). Every later connection for the same call (a reconnect) is accepted
//! and dropped at once.
//!
//! It counts what it sent and the events it read before the oversized frame, and how soon the
//! server gave up on a connection after that frame's header.

use super::Stop;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// `[` characters in the first `tts.speak`.
const BRACKETS: usize = 200_000;
/// `tts.speak` commands in the burst.
const BURST: usize = 10_000;
/// The payload length the oversized frame's header declares.
const OVERSIZE_DECLARED: u64 = 150_000_000;
/// Payload trickled after that header: this many chunks of [`TRICKLE_CHUNK`] bytes, one per
/// [`TRICKLE_EVERY`], then nothing.
const TRICKLE_CHUNKS: usize = 20;
const TRICKLE_CHUNK: usize = 1024;
const TRICKLE_EVERY: Duration = Duration::from_millis(100);
/// Time the server gets to work through the commands before the oversized frame.
const SETTLE: Duration = Duration::from_secs(2);

/// What the app did and saw, over all calls.
#[derive(Debug, Default)]
struct Counts {
    /// First connections of a call (each attacked).
    connections: AtomicU64,
    /// Reconnects accepted and dropped at once.
    reconnects_dropped: AtomicU64,
    /// Commands and malformed messages sent, all kinds together.
    messages_sent: AtomicU64,
    /// Oversized frame headers written.
    oversize_headers: AtomicU64,
    /// Bytes of the oversized frame's payload written.
    trickled_bytes: AtomicU64,
    /// Connections that ended (the server closed them, or the step ended) before the attack
    /// sequence was complete.
    cut_short: AtomicU64,
    /// Times from an oversized frame's header to the server closing that connection, ms.
    closed_after_oversize_ms: Mutex<Vec<f64>>,
    /// Events read, by type (`tts.ended` split by `ok`).
    events: Mutex<BTreeMap<String, u64>>,
}

/// The running app.
pub struct RogueApp {
    addr: SocketAddr,
    counts: Arc<Counts>,
}

impl RogueApp {
    /// Starts on 127.0.0.1, port 0; it serves until `stop`.
    pub async fn start(stop: Stop) -> anyhow::Result<RogueApp> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let seen = Arc::new(Mutex::new(HashSet::new()));
        let c = counts.clone();
        tokio::spawn(async move {
            loop {
                let mut s = stop.clone();
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = s.wait() => return,
                };
                let Ok((tcp, _)) = accepted else { return };
                tokio::spawn(serve(tcp, c.clone(), seen.clone(), stop.clone()));
            }
        });
        Ok(RogueApp { addr, counts })
    }

    /// The URL for `dialog.url`.
    pub fn url(&self) -> String {
        format!("ws://{}/dialog", self.addr)
    }

    /// Its counts.
    pub fn report(&self) -> Value {
        let c = &self.counts;
        let mut closed = c
            .closed_after_oversize_ms
            .lock()
            .expect("no panics while holding")
            .clone();
        closed.sort_by(f64::total_cmp);
        json!({
            "calls_attacked": c.connections.load(Relaxed),
            "reconnects_dropped": c.reconnects_dropped.load(Relaxed),
            "messages_sent": c.messages_sent.load(Relaxed),
            "oversize_headers_sent": c.oversize_headers.load(Relaxed),
            "oversize_bytes_trickled": c.trickled_bytes.load(Relaxed),
            "connections_cut_short": c.cut_short.load(Relaxed),
            "closed_by_server_after_oversize_ms": closed,
            "events_read": *c.events.lock().expect("no panics while holding"),
        })
    }
}

#[allow(clippy::result_large_err)] // the handshake callback's error type is tungstenite's
async fn serve(tcp: TcpStream, counts: Arc<Counts>, seen: Arc<Mutex<HashSet<String>>>, stop: Stop) {
    let uri = Arc::new(Mutex::new(String::new()));
    let u = uri.clone();
    let callback = move |req: &Request, res: Response| {
        *u.lock().expect("no panics while holding") = req.uri().to_string();
        Ok(res)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
        return;
    };
    let call_id = call_id(&uri.lock().expect("no panics while holding"));
    let first = seen
        .lock()
        .expect("no panics while holding")
        .insert(call_id);
    if !first {
        counts.reconnects_dropped.fetch_add(1, Relaxed);
        return; // dropping the stream closes the TCP connection without a close frame
    }
    counts.connections.fetch_add(1, Relaxed);
    attack(ws, counts, stop).await;
}

/// The `call_id` query parameter of a request URI (empty when absent).
fn call_id(uri: &str) -> String {
    uri.split_once('?')
        .map(|(_, q)| q)
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("call_id="))
        .unwrap_or_default()
        .to_owned()
}

async fn attack(ws: WebSocketStream<TcpStream>, counts: Arc<Counts>, stop: Stop) {
    let (mut sink, stream) = ws.split();
    let (stop_reading, stopped) = oneshot::channel();
    let reader = tokio::spawn(read_events(stream, counts.clone(), stopped));
    // A server that stops reading leaves a send waiting for room: the step's end ends it.
    let mut s = stop.clone();
    let sent = tokio::select! {
        r = send_commands(&mut sink, &counts, &stop) => r,
        _ = s.wait() => Err(()),
    };
    let _ = stop_reading.send(());
    let Ok(stream) = reader.await else { return };
    if sent.is_err() {
        counts.cut_short.fetch_add(1, Relaxed);
        return;
    }
    let Ok(mut ws) = stream.reunite(sink) else {
        return;
    };
    oversized_frame(ws.get_mut(), &counts, stop).await;
}

type Sink = futures_util::stream::SplitSink<WebSocketStream<TcpStream>, Message>;
type Stream = futures_util::stream::SplitStream<WebSocketStream<TcpStream>>;

/// Counts events until told to stop or the connection ends; hands the stream back.
async fn read_events(
    mut stream: Stream,
    counts: Arc<Counts>,
    mut stop: oneshot::Receiver<()>,
) -> Stream {
    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = &mut stop => return stream,
        };
        let Some(Ok(msg)) = msg else { return stream };
        let Message::Text(text) = msg else { continue };
        let Ok(event) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let mut kind = event["type"].as_str().unwrap_or("?").to_owned();
        if kind == "tts.ended" {
            kind.push_str(if event["ok"] == true {
                " ok"
            } else {
                " failed"
            });
        }
        if kind == "call.ended" {
            kind = format!("call.ended {}", event["reason"].as_str().unwrap_or("?"));
        }
        *counts
            .events
            .lock()
            .expect("no panics while holding")
            .entry(kind)
            .or_default() += 1;
    }
}

fn speak(id: &str, text: &str) -> Message {
    Message::text(json!({"type": "tts.speak", "utterance_id": id, "text": text}).to_string())
}

/// Sends the command attacks; `Err` when the connection failed under them.
async fn send_commands(sink: &mut Sink, counts: &Counts, stop: &Stop) -> Result<(), ()> {
    let feed = async |sink: &mut Sink, m: Message| {
        counts.messages_sent.fetch_add(1, Relaxed);
        sink.feed(m).await.map_err(|_| ())
    };
    let brackets = format!("{}.", "[".repeat(BRACKETS));
    feed(sink, speak("brackets", &brackets)).await?;
    sink.flush().await.map_err(|_| ())?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    for i in 0..BURST {
        feed(sink, speak(&format!("burst-{i}"), crate::dialog::ANSWER)).await?;
    }
    sink.flush().await.map_err(|_| ())?;

    let deep = format!("{}{}", "[".repeat(5_000), "]".repeat(5_000));
    let malformed = [
        "{",
        "not json at all",
        r#"{"type":"tts.speak","text":"#,
        "null",
        "[]",
        &deep,
        r#"{"type":42}"#,
        r#"{"type":"tts.speak","utterance_id":7,"text":["a","b"]}"#,
        r#"{"type":"tts.speak","text":"x","call_id":{"nested":true}}"#,
        r#"{"type":"tts.stream","text":"no utterance id"}"#,
        r#"{"type":"tts.sing","text":"la la la"}"#,
        r#"{"type":"call.transfer","to":"+15550100"}"#,
        r#"{"type":""}"#,
        r#"{"type":"TTS.SPEAK","text":"shouting"}"#,
    ];
    for m in malformed {
        feed(sink, Message::text(m)).await?;
    }
    let mut junk = vec![0u8; 4096];
    voicegate_core::random::fill(&mut junk);
    feed(sink, Message::binary(junk)).await?;

    let hostile_ids = [
        "u1\nINFO call ended reason=forged",
        "\u{1b}[2J\u{1b}[31mred\u{1b}[0m",
        "line1\r\nline2\r\n\r\n",
        "\u{1b}]0;window title\u{7}",
    ];
    for id in hostile_ids {
        feed(sink, speak(id, "Hello.\u{1b}[5m Blink.\nNew line.")).await?;
    }
    let stream = json!({"type": "tts.stream", "utterance_id": "s\n\u{1b}[1m", "text": "Partial\u{1b}[K text", "stream_end": true});
    feed(sink, Message::text(stream.to_string())).await?;
    sink.flush().await.map_err(|_| ())?;

    let mut s = stop.clone();
    let _ = tokio::time::timeout(SETTLE, s.wait()).await;
    Ok(())
}

/// Writes the header of a text frame declaring [`OVERSIZE_DECLARED`] bytes, trickles a little
/// of it, then stays silent, reading (and discarding) until the server closes or `stop`.
async fn oversized_frame(tcp: &mut TcpStream, counts: &Counts, mut stop: Stop) {
    // RFC 6455 §5.2: FIN + text, no mask (server to client), 64-bit extended length.
    let mut header = vec![0x81, 127];
    header.extend_from_slice(&OVERSIZE_DECLARED.to_be_bytes());
    if tcp.write_all(&header).await.is_err() {
        return;
    }
    counts.oversize_headers.fetch_add(1, Relaxed);
    let t0 = Instant::now();
    let closed = || {
        counts
            .closed_after_oversize_ms
            .lock()
            .expect("no panics while holding")
            .push(t0.elapsed().as_secs_f64() * 1e3);
    };
    let mut tick = tokio::time::interval(TRICKLE_EVERY);
    let mut trickled = 0;
    let mut buf = vec![0u8; 4096];
    loop {
        tokio::select! {
            r = tcp.read(&mut buf) => match r {
                Ok(0) | Err(_) => return closed(),
                Ok(_) => {}
            },
            _ = tick.tick(), if trickled < TRICKLE_CHUNKS => {
                if tcp.write_all(&[b'x'; TRICKLE_CHUNK]).await.is_err() {
                    return closed();
                }
                trickled += 1;
                counts.trickled_bytes.fetch_add(TRICKLE_CHUNK as u64, Relaxed);
            }
            _ = stop.wait() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_call_id() {
        assert_eq!(super::call_id("/dialog?call_id=wrtc-1&x=2"), "wrtc-1");
        assert_eq!(super::call_id("/dialog?x=2&call_id=wrtc-2"), "wrtc-2");
        assert_eq!(super::call_id("/dialog"), "");
    }
}
