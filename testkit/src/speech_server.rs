//! A local stand-in for an OpenAI-compatible speech API: `POST /v1/audio/speech` answered with
//! PCM streamed in chunked transfer encoding, or with an error status. It records each request
//! (path, headers, JSON body) so tests can check what the engine sent.

use serde_json::Value;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Request line path.
    pub path: String,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The JSON body.
    pub body: Value,
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
}

/// A running speech server.
#[derive(Clone)]
pub struct SpeechServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl SpeechServer {
    /// Starts on 127.0.0.1, port 0.
    pub async fn start(behaviour: Behaviour) -> SpeechServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let r = requests.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve(tcp, behaviour.clone(), r.clone()));
            }
        });
        SpeechServer { addr, requests }
    }

    /// The base URL for `tts.openai.base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests
            .lock()
            .expect("no panics while holding")
            .clone()
    }
}

async fn serve(mut tcp: TcpStream, behaviour: Behaviour, requests: Arc<Mutex<Vec<Recorded>>>) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    // Headers.
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
    requests
        .lock()
        .expect("no panics while holding")
        .push(Recorded {
            path,
            headers,
            body: json,
        });
    match behaviour {
        Behaviour::Fail(status) => {
            let body = r#"{"error":{"message":"test failure"}}"#;
            let res = format!(
                "HTTP/1.1 {status} Test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tcp.write_all(res.as_bytes()).await;
        }
        Behaviour::Stream { pcm, chunk, gap } => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: audio/pcm\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
            if tcp.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
            for piece in bytes.chunks(chunk.max(1)) {
                let mut frame = format!("{:x}\r\n", piece.len()).into_bytes();
                frame.extend_from_slice(piece);
                frame.extend_from_slice(b"\r\n");
                if tcp.write_all(&frame).await.is_err() {
                    return; // the engine cancelled
                }
                tokio::time::sleep(gap).await;
            }
            let _ = tcp.write_all(b"0\r\n\r\n").await;
        }
    }
}
