//! A test dialog app: a real WebSocket server on port 0 that records every event voicegate sends
//! (and each dial's request headers) and sends the commands a test tells it to. It can also
//! misbehave on purpose: drop the connection without a close frame, close normally, or stay
//! silent. [`TestDialogApp::start_tls`] serves `wss://` with a test CA's certificate.

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// What the app saw and can do.
#[derive(Default)]
struct Shared {
    /// Every event received, with its arrival time.
    events: Vec<(Instant, Value)>,
    /// The request URI of every connection, in order.
    dials: Vec<String>,
    /// The request headers of every connection (names lower case), in order.
    dial_headers: Vec<Vec<(String, String)>>,
    /// The live connection's outbox.
    outbox: Option<mpsc::UnboundedSender<Outgoing>>,
}

enum Outgoing {
    Text(String),
    /// One text message sent as these fragments (RFC 6455 §5.4).
    Fragments(Vec<String>),
    Close(u16),
    Drop,
}

/// A running test dialog app.
#[derive(Clone)]
pub struct TestDialogApp {
    addr: SocketAddr,
    /// Served over TLS (`wss://`).
    tls: bool,
    shared: Arc<Mutex<Shared>>,
}

impl TestDialogApp {
    /// Starts on 127.0.0.1, port 0.
    pub async fn start() -> TestDialogApp {
        Self::start_on("127.0.0.1:0".parse().expect("a constant address")).await
    }

    /// Starts on `addr`.
    pub async fn start_on(addr: SocketAddr) -> TestDialogApp {
        let listener = TcpListener::bind(addr).await.expect("bind the dialog app");
        let addr = listener.local_addr().expect("bound");
        let shared = Arc::new(Mutex::new(Shared::default()));
        let s = shared.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve(tcp, s.clone()));
            }
        });
        TestDialogApp {
            addr,
            tls: false,
            shared,
        }
    }

    /// Starts on 127.0.0.1, port 0, serving `wss://` with `tls` (e.g. a
    /// [`TestCa`](crate::tls::TestCa)'s server configuration). A connection whose TLS handshake
    /// fails is dropped and not counted as a dial.
    pub async fn start_tls(tls: Arc<rustls::ServerConfig>) -> TestDialogApp {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the dialog app");
        let addr = listener.local_addr().expect("bound");
        let shared = Arc::new(Mutex::new(Shared::default()));
        let s = shared.clone();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, s) = (acceptor.clone(), s.clone());
                tokio::spawn(async move {
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        serve(stream, s).await;
                    }
                });
            }
        });
        TestDialogApp {
            addr,
            tls: true,
            shared,
        }
    }

    /// The URL for `dialog.url` (`wss://127.0.0.1:<port>/...` when served over TLS: the test
    /// CA's certificate names 127.0.0.1).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}/dialog?existing=1", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().expect("no panics while holding")
    }

    /// Events received so far.
    pub fn events(&self) -> Vec<Value> {
        self.lock().events.iter().map(|(_, v)| v.clone()).collect()
    }

    /// Events received so far, with arrival times.
    pub fn timed_events(&self) -> Vec<(Instant, Value)> {
        self.lock().events.clone()
    }

    /// The `type`s of the events so far, e.g. `["call.started", "tts.started"]`.
    pub fn types(&self) -> Vec<String> {
        self.events()
            .iter()
            .map(|e| e["type"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    /// The request URIs of the connections so far.
    pub fn dials(&self) -> Vec<String> {
        self.lock().dials.clone()
    }

    /// The request headers of the connections so far (names lower case, in the order sent).
    pub fn dial_headers(&self) -> Vec<Vec<(String, String)>> {
        self.lock().dial_headers.clone()
    }

    /// Waits for an event matching `pred`; returns it.
    pub async fn wait_for(&self, within: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let t0 = Instant::now();
        loop {
            if let Some(e) = self.events().into_iter().find(|e| pred(e)) {
                return Some(e);
            }
            if t0.elapsed() > within {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits for an event of `kind` (and `utterance_id`, if given).
    pub async fn wait_type(
        &self,
        within: Duration,
        kind: &str,
        utterance: Option<&str>,
    ) -> Option<Value> {
        self.wait_for(within, |e| {
            e["type"] == kind && utterance.is_none_or(|u| e["utterance_id"] == u)
        })
        .await
    }

    /// Sends a command on the live connection. False if there is none.
    pub fn send(&self, command: Value) -> bool {
        self.outgoing(Outgoing::Text(command.to_string()))
    }

    /// Sends a command as a message fragmented into `pieces` frames (a text frame, then
    /// continuation frames, the last with FIN), as some WebSocket libraries send long messages.
    pub fn send_fragmented(&self, command: Value, pieces: usize) -> bool {
        let text = command.to_string();
        let size = text.len().div_ceil(pieces.max(1)).max(1);
        let mut parts = Vec::new();
        let mut rest = text.as_str();
        while !rest.is_empty() {
            let mut cut = size.min(rest.len());
            while !rest.is_char_boundary(cut) {
                cut += 1;
            }
            parts.push(rest[..cut].to_owned());
            rest = &rest[cut..];
        }
        self.outgoing(Outgoing::Fragments(parts))
    }

    /// Sends raw text (for malformed-message tests).
    pub fn send_raw(&self, text: &str) -> bool {
        self.outgoing(Outgoing::Text(text.to_owned()))
    }

    /// Drops the TCP connection without a close frame (a crash or a network cut).
    pub fn drop_connection(&self) -> bool {
        self.outgoing(Outgoing::Drop)
    }

    /// Closes the connection with `code`.
    pub fn close(&self, code: u16) -> bool {
        self.outgoing(Outgoing::Close(code))
    }

    /// Whether a connection is live.
    pub fn connected(&self) -> bool {
        self.lock().outbox.as_ref().is_some_and(|o| !o.is_closed())
    }

    fn outgoing(&self, o: Outgoing) -> bool {
        self.lock()
            .outbox
            .as_ref()
            .is_some_and(|tx| tx.send(o).is_ok())
    }
}

#[allow(clippy::result_large_err)] // the handshake callback's error type is tungstenite's
async fn serve<S>(stream: S, shared: Arc<Mutex<Shared>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    type Seen = (String, Vec<(String, String)>);
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let u = seen.clone();
    let callback = move |req: &Request, res: Response| {
        let headers = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        *u.lock().expect("no panics while holding") = (req.uri().to_string(), headers);
        Ok(res)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    {
        let mut s = shared.lock().expect("no panics while holding");
        let (uri, headers) = std::mem::take(&mut *seen.lock().expect("no panics while holding"));
        s.dials.push(uri);
        s.dial_headers.push(headers);
        s.outbox = Some(tx);
    }
    let (mut sink, mut stream) = ws.split();
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&t) {
                        shared.lock().expect("no panics while holding").events.push((Instant::now(), v));
                    }
                }
                Some(Ok(_)) => {}
                _ => break,
            },
            out = rx.recv() => match out {
                Some(Outgoing::Text(t)) => {
                    if sink.send(Message::Text(t.into())).await.is_err() {
                        break;
                    }
                }
                Some(Outgoing::Fragments(parts)) => {
                    use tokio_tungstenite::tungstenite::protocol::frame::{Frame, coding::{Data, OpCode}};
                    let last = parts.len().saturating_sub(1);
                    for (i, part) in parts.into_iter().enumerate() {
                        let op = if i == 0 { Data::Text } else { Data::Continue };
                        let frame = Frame::message(part.into_bytes(), OpCode::Data(op), i == last);
                        if sink.send(Message::Frame(frame)).await.is_err() {
                            break;
                        }
                    }
                }
                Some(Outgoing::Close(code)) => {
                    let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame { code: code.into(), reason: "test".into() };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                }
                Some(Outgoing::Drop) | None => break,
            },
        }
    }
}
