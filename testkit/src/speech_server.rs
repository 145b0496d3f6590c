//! A local stand-in for an OpenAI-compatible speech API: `POST /v1/audio/speech` answered with
//! PCM streamed in chunked transfer encoding, or with an error status. It records each request
//! (path, headers, JSON body) so tests can check what the engine sent. It can also misbehave the
//! way a broken server does: start a reply and then stall, trickle it forever, or send audio
//! forever.
//!
//! Like a vendor's server it keeps connections alive: a complete answer leaves the connection
//! open for the client's next request (unless the request said `Connection: close`), and it
//! counts the connections it accepted, so tests can see a client reuse them. It can close
//! connections that sat idle for a while, as many servers do after a few seconds.

use crate::Io;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The log probability of every token of a transcription asked for with `include[]=logprobs`:
/// ln 0.8, so the text's confidence is 0.8.
pub const TOKEN_LOGPROB: f64 = -0.223_143_551_314_209_7;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Request line path.
    pub path: String,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The JSON body (Null for other bodies).
    pub body: Value,
    /// The multipart form, for multipart bodies.
    pub form: Option<Form>,
}

/// A parsed `multipart/form-data` body.
#[derive(Debug, Clone, Default)]
pub struct Form {
    /// Text fields.
    pub fields: std::collections::HashMap<String, String>,
    /// The `file` part's bytes.
    pub file: Vec<u8>,
}

fn parse_form(content_type: &str, body: &[u8]) -> Option<Form> {
    let boundary = content_type
        .split("boundary=")
        .nth(1)?
        .trim()
        .trim_matches('"');
    let delim = format!("--{boundary}");
    let mut form = Form::default();
    let mut rest = body;
    while let Some(start) = find(rest, delim.as_bytes()) {
        rest = &rest[start + delim.len()..];
        if rest.starts_with(b"--") {
            break;
        }
        let head_end = find(rest, b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&rest[..head_end]).to_string();
        let content = &rest[head_end + 4..];
        let end = find(content, delim.as_bytes())?;
        let value = &content[..end.saturating_sub(2)]; // strip the CRLF before the delimiter
        let name = head.split("name=\"").nth(1)?.split('"').next()?.to_owned();
        if name == "file" {
            form.file = value.to_vec();
        } else {
            form.fields
                .insert(name, String::from_utf8_lossy(value).to_string());
        }
        rest = &content[end..];
    }
    Some(form)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// How the server answers.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// 200 with `pcm` (s16le) streamed in `chunk`-byte pieces, `gap` apart.
    Stream {
        /// The audio.
        pcm: Vec<i16>,
        /// Bytes per chunk.
        chunk: usize,
        /// Pause between chunks.
        gap: Duration,
    },
    /// This status with a short JSON error body.
    Fail(u16),
    /// 200 with `{"text": ...}` (a transcription; with `include[]=logprobs` in the form, each
    /// word's `logprobs` too, [`TOKEN_LOGPROB`] each, as every transcription answer has).
    Transcribe(String),
    /// A streaming transcription server (OpenAI's gpt-4o models): with `stream=true` in the
    /// form, server-sent events, a `transcript.text.delta` per word `gap` apart, then
    /// `transcript.text.done`; without it, `{"text": ...}`.
    TranscribeStream {
        /// The transcript.
        text: String,
        /// Time between deltas.
        gap: Duration,
    },
    /// A server that does not stream (whisper-1): `400` when the form asks for `stream` or
    /// `include[]=logprobs`, `{"text": ...}` otherwise.
    RefuseStream(String),
    /// A server that does not know one language: `400` when the form's `language` is this one
    /// (whatever else it asks for), the other behaviour otherwise.
    RefuseLanguage(String, Box<Behaviour>),
    /// As `Transcribe`, answered after a fixed delay (a vendor's processing time).
    TranscribeAfter(String, Duration),
    /// 200 with the head and `pcm` (s16le) as one chunk, then nothing more, without closing
    /// (a server that hangs mid-answer). Holds the connection until the client closes it.
    Stall {
        /// What is sent before the stall.
        pcm: Vec<i16>,
    },
    /// 200 with the head, then one byte every `every`, forever (never quiet long enough for an
    /// idle timeout). Holds the connection until the client closes it.
    Trickle {
        /// Time between bytes.
        every: Duration,
    },
    /// 200 with the head, then `pcm` (s16le) as one chunk every `every`, forever: a server
    /// that never ends a segment's audio, and is never quiet long enough for an idle timeout.
    /// Holds the connection until the client closes it.
    Flood {
        /// What each chunk holds (not empty: an empty chunk would end the body).
        pcm: Vec<i16>,
        /// Time between chunks.
        every: Duration,
    },
    /// The behaviour, after a fixed delay (a vendor's time to its first byte).
    After(Duration, Box<Behaviour>),
    /// Request `n` gets the `n`-th behaviour; requests past the end get the last one.
    Script(Vec<Behaviour>),
}

/// A running speech server.
#[derive(Clone)]
pub struct SpeechServer {
    addr: SocketAddr,
    /// Serving `https://`.
    tls: bool,
    requests: Arc<Mutex<Vec<Recorded>>>,
    /// Stalled, trickled or flooded replies whose client gave up (closed the connection).
    abandoned: Arc<AtomicUsize>,
    /// Connections accepted.
    connections: Arc<AtomicUsize>,
}

/// What a connection shares with the server.
#[derive(Clone)]
struct Shared {
    behaviour: Behaviour,
    requests: Arc<Mutex<Vec<Recorded>>>,
    abandoned: Arc<AtomicUsize>,
    options: Options,
}

/// How the server treats connections.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Close a kept-alive connection after this long without a request.
    pub idle_close: Option<Duration>,
    /// How long a new connection waits before its first request is read: what opening one
    /// costs a client over a network (the TCP and TLS handshakes, two to three round trips).
    pub setup: Duration,
    /// Keep connections for the next request (`false`: every answer says `Connection: close`).
    pub keep_alive: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            idle_close: None,
            setup: Duration::ZERO,
            keep_alive: true,
        }
    }
}

impl SpeechServer {
    /// Starts on 127.0.0.1, port 0.
    pub async fn start(behaviour: Behaviour) -> SpeechServer {
        Self::start_on(
            "127.0.0.1:0".parse().expect("a constant address"),
            behaviour,
        )
        .await
    }

    /// Starts on `addr`.
    pub async fn start_on(addr: SocketAddr, behaviour: Behaviour) -> SpeechServer {
        Self::start_with(addr, behaviour, Options::default()).await
    }

    /// Starts on 127.0.0.1, port 0, closing a kept-alive connection once it has had no request
    /// for `idle` (as a server with a keep-alive timeout does).
    pub async fn start_closing_idle(behaviour: Behaviour, idle: Duration) -> SpeechServer {
        Self::start_with(
            "127.0.0.1:0".parse().expect("a constant address"),
            behaviour,
            Options {
                idle_close: Some(idle),
                ..Options::default()
            },
        )
        .await
    }

    /// Starts on `addr` with `options`.
    pub async fn start_with(
        addr: SocketAddr,
        behaviour: Behaviour,
        options: Options,
    ) -> SpeechServer {
        Self::start_inner(addr, behaviour, options, None).await
    }

    /// Starts on 127.0.0.1, port 0, serving `https://` with `tls` (e.g. a
    /// [`TestCa`](crate::tls::TestCa)'s server configuration). A connection whose TLS handshake
    /// fails is dropped (it still counts as accepted).
    pub async fn start_tls(behaviour: Behaviour, tls: Arc<rustls::ServerConfig>) -> SpeechServer {
        let addr = "127.0.0.1:0".parse().expect("a constant address");
        Self::start_inner(addr, behaviour, Options::default(), Some(tls)).await
    }

    async fn start_inner(
        addr: SocketAddr,
        behaviour: Behaviour,
        options: Options,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> SpeechServer {
        let listener = TcpListener::bind(addr)
            .await
            .expect("bind the speech server");
        let addr = listener.local_addr().expect("bound");
        let shared = Shared {
            behaviour,
            requests: Arc::new(Mutex::new(Vec::new())),
            abandoned: Arc::new(AtomicUsize::new(0)),
            options,
        };
        let connections = Arc::new(AtomicUsize::new(0));
        let server = SpeechServer {
            addr,
            tls: tls.is_some(),
            requests: shared.requests.clone(),
            abandoned: shared.abandoned.clone(),
            connections: connections.clone(),
        };
        tokio::spawn(async move {
            let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
            while let Ok((tcp, _)) = listener.accept().await {
                connections.fetch_add(1, Ordering::SeqCst);
                let (acceptor, shared) = (acceptor.clone(), shared.clone());
                tokio::spawn(async move {
                    let conn: Box<dyn Io> = match acceptor {
                        None => Box::new(tcp),
                        Some(acceptor) => match acceptor.accept(tcp).await {
                            Ok(stream) => Box::new(stream),
                            Err(_) => return,
                        },
                    };
                    serve(conn, shared).await;
                });
            }
        });
        server
    }

    /// The base URL for `tts.openai.base_url`.
    pub fn base_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Requests so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests
            .lock()
            .expect("no panics while holding")
            .clone()
    }

    /// Stalled, trickled or flooded replies the client gave up on (it closed the connection).
    pub fn abandoned(&self) -> usize {
        self.abandoned.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Serves requests on one connection until either side closes it.
async fn serve(mut tcp: Box<dyn Io>, shared: Shared) {
    tokio::time::sleep(shared.options.setup).await;
    let mut buf = Vec::new();
    let mut first = true;
    loop {
        let idle = if first {
            None
        } else {
            shared.options.idle_close
        };
        first = false;
        let read = read_request(&mut tcp, &mut buf);
        let request = match idle {
            Some(idle) => match tokio::time::timeout(idle, read).await {
                Ok(r) => r,
                Err(_) => return, // idle too long: close, as a keep-alive timeout does
            },
            None => read.await,
        };
        let Some(request) = request else {
            return;
        };
        if !answer(&mut tcp, request, &shared).await {
            return;
        }
    }
}

/// Reads one request (head and `Content-Length` body) from `buf` and then the connection;
/// leaves what follows it in `buf`. `None` when the connection ends first.
async fn read_request(tcp: &mut Box<dyn Io>, buf: &mut Vec<u8>) -> Option<Request> {
    let mut tmp = [0u8; 4096];
    let header_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = tcp.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
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
    let start = header_end + 4;
    while buf.len() < start + length {
        let n = tcp.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let body = buf[start..start + length].to_vec();
    buf.drain(..start + length);
    Some(Request {
        path,
        headers,
        body,
    })
}

/// A request as read.
struct Request {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Answers one request; whether the connection stays open for the next.
async fn answer(tcp: &mut Box<dyn Io>, request: Request, shared: &Shared) -> bool {
    let Request {
        path,
        headers,
        body,
    } = request;
    let keep = shared.options.keep_alive
        && !headers
            .iter()
            .any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"));
    let connection = if keep { "keep-alive" } else { "close" };
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let form = headers
        .iter()
        .find(|(k, v)| k == "content-type" && v.starts_with("multipart/form-data"))
        .and_then(|(_, v)| parse_form(v, &body));
    let stream_asked = form
        .as_ref()
        .is_some_and(|f| f.fields.get("stream").is_some_and(|v| v == "true"));
    let logprobs_asked = form
        .as_ref()
        .is_some_and(|f| f.fields.get("include[]").is_some_and(|v| v == "logprobs"));
    let language = form
        .as_ref()
        .and_then(|f| f.fields.get("language").cloned());
    // Like OpenAI's gpt-4o models: with `include[]=logprobs`, each token's (a word here).
    let logprobs = |text: &str| -> Option<Value> {
        logprobs_asked.then(|| {
            text.split_whitespace()
                .map(|t| serde_json::json!({"token": t, "logprob": TOKEN_LOGPROB, "bytes": []}))
                .collect()
        })
    };
    let n = {
        let mut requests = shared.requests.lock().expect("no panics while holding");
        requests.push(Recorded {
            path,
            headers,
            body: json,
            form,
        });
        requests.len() - 1
    };
    let behaviour = match shared.behaviour.clone() {
        Behaviour::Script(mut steps) if !steps.is_empty() => {
            let last = steps.len() - 1;
            steps.swap_remove(n.min(last))
        }
        other => other,
    };
    let behaviour = match behaviour {
        Behaviour::RefuseLanguage(refused, _) if language.as_ref() == Some(&refused) => {
            Behaviour::Fail(400)
        }
        Behaviour::RefuseLanguage(_, otherwise) => *otherwise,
        other => other,
    };
    let behaviour = match behaviour {
        Behaviour::RefuseStream(_) if stream_asked || logprobs_asked => Behaviour::Fail(400),
        Behaviour::RefuseStream(text) => Behaviour::Transcribe(text),
        Behaviour::TranscribeStream { text, .. } if !stream_asked => Behaviour::Transcribe(text),
        other => other,
    };
    if let Behaviour::TranscribeAfter(_, delay) = &behaviour {
        tokio::time::sleep(*delay).await;
    }
    let behaviour = match behaviour {
        Behaviour::After(delay, then) => {
            tokio::time::sleep(delay).await;
            *then
        }
        other => other,
    };
    // Complete answers keep the connection for the next request unless the client asked to
    // close it; the misbehaving ones close it.
    let complete = |head: &str| format!("{head}Connection: {connection}\r\n\r\n");
    let sent = match behaviour {
        Behaviour::TranscribeStream { text, gap } => {
            let head = complete(
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n",
            );
            if tcp.write_all(head.as_bytes()).await.is_err() {
                return false;
            }
            let chunk = |data: String| {
                let event = format!("data: {data}\n\n");
                format!("{:x}\r\n{event}\r\n", event.len())
            };
            for (i, word) in text.split(' ').enumerate() {
                let delta = if i == 0 {
                    word.to_owned()
                } else {
                    format!(" {word}")
                };
                let mut data = serde_json::json!({"type": "transcript.text.delta", "delta": delta});
                if let Some(l) = logprobs(&delta) {
                    data["logprobs"] = l;
                }
                if tcp
                    .write_all(chunk(data.to_string()).as_bytes())
                    .await
                    .is_err()
                {
                    return false;
                }
                tokio::time::sleep(gap).await;
            }
            let mut done = serde_json::json!({"type": "transcript.text.done", "text": text});
            if let Some(l) = logprobs(&text) {
                done["logprobs"] = l;
            }
            let mut end = chunk(done.to_string()).into_bytes();
            end.extend_from_slice(b"0\r\n\r\n");
            tcp.write_all(&end).await.is_ok()
        }
        Behaviour::RefuseStream(_) | Behaviour::RefuseLanguage(..) => unreachable!("mapped above"),
        Behaviour::Transcribe(text) | Behaviour::TranscribeAfter(text, _) => {
            let mut body = serde_json::json!({ "text": text });
            if let Some(l) = logprobs(&text) {
                body["logprobs"] = l;
            }
            let body = body.to_string();
            let head = complete(&format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
            tcp.write_all(format!("{head}{body}").as_bytes())
                .await
                .is_ok()
        }
        Behaviour::Fail(status) => {
            let body = r#"{"error":{"message":"test failure"}}"#;
            let head = complete(&format!(
                "HTTP/1.1 {status} Test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
            tcp.write_all(format!("{head}{body}").as_bytes())
                .await
                .is_ok()
        }
        Behaviour::Stream { pcm, chunk, gap } => {
            let head = complete(
                "HTTP/1.1 200 OK\r\nContent-Type: audio/pcm\r\nTransfer-Encoding: chunked\r\n",
            );
            if tcp.write_all(head.as_bytes()).await.is_err() {
                return false;
            }
            let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
            for piece in bytes.chunks(chunk.max(1)) {
                let mut frame = format!("{:x}\r\n", piece.len()).into_bytes();
                frame.extend_from_slice(piece);
                frame.extend_from_slice(b"\r\n");
                if tcp.write_all(&frame).await.is_err() {
                    return false; // the engine cancelled
                }
                tokio::time::sleep(gap).await;
            }
            tcp.write_all(b"0\r\n\r\n").await.is_ok()
        }
        Behaviour::Stall { pcm } => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: audio/pcm\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
            let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
            let mut out = head.as_bytes().to_vec();
            // An empty chunk would end the body; with no audio only the head goes out.
            if !bytes.is_empty() {
                out.extend_from_slice(format!("{:x}\r\n", bytes.len()).as_bytes());
                out.extend_from_slice(&bytes);
                out.extend_from_slice(b"\r\n");
            }
            if tcp.write_all(&out).await.is_err() {
                return false;
            }
            // Nothing more: wait for the client to give up.
            let mut sink = [0u8; 1024];
            while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
            shared.abandoned.fetch_add(1, Ordering::SeqCst);
            false
        }
        Behaviour::Trickle { every } => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
            if tcp.write_all(head.as_bytes()).await.is_err() {
                return false;
            }
            // One space at a time (JSON allows leading whitespace), until the client gives up.
            while tcp.write_all(b"1\r\n \r\n").await.is_ok() {
                tokio::time::sleep(every).await;
            }
            shared.abandoned.fetch_add(1, Ordering::SeqCst);
            false
        }
        Behaviour::Flood { pcm, every } => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: audio/pcm\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
            if tcp.write_all(head.as_bytes()).await.is_err() {
                return false;
            }
            let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
            let mut frame = format!("{:x}\r\n", bytes.len()).into_bytes();
            frame.extend_from_slice(&bytes);
            frame.extend_from_slice(b"\r\n");
            // Never the empty chunk that would end the body: until the client gives up.
            while !bytes.is_empty() && tcp.write_all(&frame).await.is_ok() {
                tokio::time::sleep(every).await;
            }
            shared.abandoned.fetch_add(1, Ordering::SeqCst);
            false
        }
        // An empty script: no answer; the connection closes.
        Behaviour::Script(_) => false,
        Behaviour::After(..) => unreachable!("unwrapped above"),
    };
    sent && keep
}
