//! A local stand-in for an OpenAI-compatible chat API: `POST /v1/chat/completions` with
//! `stream: true`, answered with server-sent events (one `chat.completion.chunk` per token) with a
//! pause before the first token and between tokens, the way a real model streams. It records each
//! request (its JSON body, headers and arrival time) and notices when the client closes the
//! connection before the answer was complete (a cancelled request), so tests can check what a
//! dialog app sent, when tokens left, and that a barge-in really stopped the request.
//!
//! It is a separate place from `speech_server` because the wire format (SSE) and what a test asks
//! of it (timings per token, cancellation) differ; both are plain HTTP/1.1 over tokio.

use serde_json::Value;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the stand-in answers.
#[derive(Debug, Clone)]
pub enum ChatBehaviour {
    /// 200 with SSE: each reply (request `n` gets `replies[n]`, the last one repeats) is cut into
    /// tokens at spaces (" word"), the first sent `first_after` after the request arrived, the rest
    /// `gap` apart, then `data: [DONE]`.
    Stream {
        /// The answers, one per request.
        replies: Vec<String>,
        /// Time to the first token.
        first_after: Duration,
        /// Time between tokens.
        gap: Duration,
    },
    /// This status with a short JSON error body, as OpenAI answers a bad key or an overload.
    Fail(u16),
    /// 200 with SSE headers, then nothing, holding the connection until the client closes it.
    Stall,
    /// 200 with SSE, one token of `bytes` characters after another, with no end.
    Flood {
        /// Characters per token.
        bytes: usize,
    },
}

/// One request as received, and what happened to its answer.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// Request line path.
    pub path: String,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The JSON body (Null if it was not JSON).
    pub body: Value,
    /// When the request had fully arrived.
    pub arrived: Instant,
    /// When each token left, in order.
    pub tokens_sent: Vec<Instant>,
    /// The whole answer, including `[DONE]`, was sent.
    pub completed: bool,
    /// The client closed the connection before the answer was complete.
    pub cancelled: bool,
}

impl ChatRequest {
    /// The `messages` of the body as (role, content) pairs.
    pub fn messages(&self) -> Vec<(String, String)> {
        self.body["messages"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|m| {
                        (
                            m["role"].as_str().unwrap_or("").to_owned(),
                            m["content"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A running chat stand-in.
#[derive(Clone)]
pub struct ChatServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<ChatRequest>>>,
}

impl ChatServer {
    /// Starts on 127.0.0.1, port 0.
    pub async fn start(behaviour: ChatBehaviour) -> ChatServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        Self::serve_on(listener, behaviour)
    }

    /// Starts on a listener that is already bound (for a stand-in in a process of its own).
    pub fn serve_on(listener: TcpListener, behaviour: ChatBehaviour) -> ChatServer {
        let addr = listener.local_addr().expect("bound");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let r = requests.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve(tcp, behaviour.clone(), r.clone()));
            }
        });
        ChatServer { addr, requests }
    }

    /// The base URL for `demo.llm.base_url` (the client appends `/v1/chat/completions`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests so far, with what happened to their answers.
    pub fn requests(&self) -> Vec<ChatRequest> {
        self.requests
            .lock()
            .expect("no panics while holding")
            .clone()
    }

    /// Waits until `pred` holds for the requests, or `within` passes; returns the last look.
    pub async fn wait_for(
        &self,
        within: Duration,
        pred: impl Fn(&[ChatRequest]) -> bool,
    ) -> Option<Vec<ChatRequest>> {
        let t0 = Instant::now();
        loop {
            let now = self.requests();
            if pred(&now) {
                return Some(now);
            }
            if t0.elapsed() > within {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The SSE event for one token, as OpenAI streams it.
pub fn chunk_event(token: &str) -> String {
    let chunk = serde_json::json!({
        "id": "chatcmpl-standin",
        "object": "chat.completion.chunk",
        "model": "standin",
        "choices": [{"index": 0, "delta": {"content": token}, "finish_reason": null}],
    });
    format!("data: {chunk}\n\n")
}

/// Cuts `reply` into tokens the way a model's tokenizer roughly does: words with their leading
/// space.
pub fn tokens(reply: &str) -> Vec<String> {
    reply
        .split_inclusive(' ')
        .map(|w| w.to_owned())
        .filter(|w| !w.is_empty())
        .collect()
}

async fn serve(
    mut tcp: TcpStream,
    behaviour: ChatBehaviour,
    requests: Arc<Mutex<Vec<ChatRequest>>>,
) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let header_end = loop {
        let Ok(n) = tcp.read(&mut tmp).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let mut lines = head.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("")
        .to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[header_end + 4..].to_vec();
    while body.len() < length {
        let Ok(n) = tcp.read(&mut tmp).await else {
            return;
        };
        if n == 0 {
            break;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let n = {
        let mut requests = requests.lock().expect("no panics while holding");
        requests.push(ChatRequest {
            path,
            headers,
            body: json,
            arrived: Instant::now(),
            tokens_sent: Vec::new(),
            completed: false,
            cancelled: false,
        });
        requests.len() - 1
    };
    let record = |f: &dyn Fn(&mut ChatRequest)| {
        let mut requests = requests.lock().expect("no panics while holding");
        f(&mut requests[n]);
    };
    let sse_head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    match behaviour {
        ChatBehaviour::Fail(status) => {
            let body = r#"{"error":{"message":"stand-in failure","type":"server_error"}}"#;
            let res = format!(
                "HTTP/1.1 {status} Test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tcp.write_all(res.as_bytes()).await;
            record(&|r| r.completed = true);
        }
        ChatBehaviour::Stall => {
            if tcp.write_all(sse_head.as_bytes()).await.is_ok() {
                closed(&mut tcp).await;
            }
            record(&|r| r.cancelled = true);
        }
        ChatBehaviour::Flood { bytes } => {
            if tcp.write_all(sse_head.as_bytes()).await.is_err() {
                return;
            }
            let event = chunked(&chunk_event(&"a ".repeat(bytes.max(2) / 2)));
            while tcp.write_all(&event).await.is_ok() {
                record(&|r| r.tokens_sent.push(Instant::now()));
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            record(&|r| r.cancelled = true);
        }
        ChatBehaviour::Stream {
            replies,
            first_after,
            gap,
        } => {
            let reply = replies
                .get(n.min(replies.len().saturating_sub(1)))
                .cloned()
                .unwrap_or_default();
            if tcp.write_all(sse_head.as_bytes()).await.is_err() {
                return;
            }
            let mut wait = first_after;
            for token in tokens(&reply) {
                // Wait, but notice a client that gives up meanwhile.
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = closed(&mut tcp) => {
                        record(&|r| r.cancelled = true);
                        return;
                    }
                }
                if tcp.write_all(&chunked(&chunk_event(&token))).await.is_err() {
                    record(&|r| r.cancelled = true);
                    return;
                }
                record(&|r| r.tokens_sent.push(Instant::now()));
                wait = gap;
            }
            let end = "data: {\"id\":\"chatcmpl-standin\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
            let mut end = chunked(end);
            end.extend_from_slice(b"0\r\n\r\n");
            if tcp.write_all(&end).await.is_ok() {
                record(&|r| r.completed = true);
            } else {
                record(&|r| r.cancelled = true);
            }
        }
    }
}

/// `data` as one chunk of a chunked body (RFC 9112 section 7.1), as real servers stream SSE.
fn chunked(data: &str) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\r\n");
    out
}

/// Resolves when the client closes its side (or the connection fails).
async fn closed(tcp: &mut TcpStream) {
    let mut sink = [0u8; 1024];
    while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
}
