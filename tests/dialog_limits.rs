//! A hostile dialog app against the real server: a frame that declares 150 MB, 100 MB frames on
//! every reconnect, an app that accepts and drops at once, again and again, and one that drops
//! every connection after a while. The server's memory must stay bounded by the message limit,
//! its redials by `dialog.reconnect_attempts`, and its sockets must be closed, not left half
//! open. A binary of its own, because it reads process-wide figures (RSS, file descriptors); its
//! tests take turns for the same reason.

mod common;

use common::{TestServer, eventually};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use voicegate_actors::metrics::{Limit, metrics};
use voicegate_core::ws_frame::peek_header;
use voicegate_testkit::ClientPeer;

const SECOND: Duration = Duration::from_secs(1);
/// The default `dialog.max_message_bytes`.
const LIMIT: u64 = 1 << 20;
/// RFC 6455 §7.4.1: message too big.
const MESSAGE_TOO_BIG: u16 = 1009;

/// The tests read process-wide figures, so they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What the app does with a connection once the WebSocket handshake is done.
#[derive(Debug, Clone, Copy)]
enum Conduct {
    /// Once armed, sends a binary frame header declaring this many bytes, then zeros as fast as
    /// the server takes them, until the server closes the connection.
    HugeFrame(u64),
    /// Closes the TCP connection at once, without a close frame.
    Drop,
    /// Keeps the connection this long (reading what comes), then drops it.
    HoldThenDrop(Duration),
    /// Keeps the connection, reading what comes.
    Hold,
}

/// What the app saw.
#[derive(Default)]
struct Seen {
    /// WebSocket handshakes completed.
    dials: AtomicUsize,
    /// Connections the server closed (the app read the end of the stream, or a reset).
    closed_by_server: AtomicUsize,
    /// Close codes the server sent.
    close_codes: Mutex<Vec<u16>>,
}

/// A WebSocket dialog app on 127.0.0.1, port 0, written on raw TCP so that it can send what no
/// WebSocket library would.
struct HostileApp {
    port: u16,
    seen: Arc<Seen>,
    armed: watch::Sender<bool>,
}

impl HostileApp {
    /// Connection `i` (from 0) is handled by `conduct[i]`, or by the last one.
    async fn start(conduct: Vec<Conduct>) -> HostileApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Seen::default());
        let (armed, _) = watch::channel(false);
        let (s, a) = (seen.clone(), armed.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while let Ok((tcp, _)) = listener.accept().await {
                let c = conduct[i.min(conduct.len() - 1)];
                i += 1;
                tokio::spawn(serve(tcp, c, s.clone(), a.subscribe()));
            }
        });
        HostileApp { port, seen, armed }
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/dialog", self.port)
    }

    /// Lets `HugeFrame` connections send.
    fn arm(&self) {
        self.armed.send_replace(true);
    }

    fn dials(&self) -> usize {
        self.seen.dials.load(Ordering::SeqCst)
    }

    fn closed_by_server(&self) -> usize {
        self.seen.closed_by_server.load(Ordering::SeqCst)
    }

    fn close_codes(&self) -> Vec<u16> {
        self.seen.close_codes.lock().unwrap().clone()
    }

    /// The server's sockets to this app that the app closed and the server did not
    /// (CLOSE_WAIT), from the network namespace's TCP table.
    fn half_open(&self) -> usize {
        let table = std::fs::read_to_string("/proc/self/net/tcp").unwrap();
        let port = format!(":{:04X}", self.port);
        table
            .lines()
            .skip(1)
            .filter(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                // rem_address ends with the app's port; st 08 is CLOSE_WAIT.
                cols.len() > 3 && cols[2].ends_with(&port) && cols[3] == "08"
            })
            .count()
    }
}

/// Answers the server's WebSocket upgrade (RFC 6455 §4.2.2).
async fn handshake(mut tcp: TcpStream) -> Option<TcpStream> {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut buf).await.ok()?;
        if n == 0 || request.len() > 16 * 1024 {
            return None;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&request);
    let key = text.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| value.trim().to_owned())
    })?;
    let accept = derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    tcp.write_all(response.as_bytes()).await.ok()?;
    Some(tcp)
}

async fn serve(
    tcp: TcpStream,
    conduct: Conduct,
    seen: Arc<Seen>,
    mut armed: watch::Receiver<bool>,
) {
    let Some(tcp) = handshake(tcp).await else {
        return;
    };
    seen.dials.fetch_add(1, Ordering::SeqCst);
    let (mut rd, mut wr) = tcp.into_split();
    match conduct {
        Conduct::Drop => {}
        Conduct::HoldThenDrop(d) => {
            let _ = tokio::time::timeout(d, read_until_closed(&mut rd, &seen)).await;
        }
        Conduct::Hold => read_until_closed(&mut rd, &seen).await,
        Conduct::HugeFrame(declared) => {
            let _ = armed.wait_for(|a| *a).await;
            let mut header = vec![0x82, 127];
            header.extend_from_slice(&declared.to_be_bytes());
            let reader = read_until_closed(&mut rd, &seen);
            let writer = async {
                if wr.write_all(&header).await.is_err() {
                    return;
                }
                let chunk = vec![0u8; 64 * 1024];
                let mut sent = 0u64;
                while sent < declared {
                    let n = chunk.len().min((declared - sent) as usize);
                    if wr.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    sent += n as u64;
                }
                // All sent: keep the connection until the server ends it.
                std::future::pending::<()>().await;
            };
            // The reader ends when the server closes the connection. The writer may notice
            // first (a reset); the reader then reads what is left and the end.
            tokio::pin!(reader);
            tokio::select! {
                _ = &mut reader => {}
                _ = writer => reader.await,
            }
        }
    }
}

/// Reads the server's frames until it closes the connection; records its close codes.
async fn read_until_closed(rd: &mut tokio::net::tcp::OwnedReadHalf, seen: &Seen) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        // The server is a client: its frames are masked (RFC 6455 §5.3).
        while let Some(h) = peek_header(&buf) {
            let end = h.header_len + h.payload_len as usize;
            if buf.len() < end {
                break;
            }
            if h.opcode == 0x8 && h.payload_len >= 2 && h.masked {
                let key = &buf[h.header_len - 4..h.header_len];
                let p = &buf[h.header_len..];
                let code = u16::from_be_bytes([p[0] ^ key[0], p[1] ^ key[1]]);
                seen.close_codes.lock().unwrap().push(code);
            }
            buf.drain(..end);
        }
    }
    seen.closed_by_server.fetch_add(1, Ordering::SeqCst);
}

/// The process's resident memory, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line[6..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

/// The highest RSS seen while it runs, sampled every millisecond on a thread of its own: a
/// frame buffered whole is freed again when its connection goes, so the end figure alone would
/// not show it.
struct PeakRss {
    peak: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl PeakRss {
    fn start() -> PeakRss {
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(rss()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                p.fetch_max(rss(), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        PeakRss { peak, stop, thread }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap();
        self.peak.load(Ordering::SeqCst).max(rss())
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn server_for(app: &HostileApp, extra: &[(&str, &str)]) -> TestServer {
    let url = app.url();
    // Nobody speaks in these calls, and the RSS they measure must be the dialog client's:
    // pocketsphinx would load its model in the background when the first call starts (tens of
    // MB), so the recognizer here is an HTTP one that is never asked.
    let mut settings = vec![
        ("dialog.url", url.as_str()),
        ("asr.engine", "openai"),
        ("asr.openai.base_url", "http://127.0.0.1:9"),
    ];
    settings.extend_from_slice(extra);
    TestServer::start(&settings)
}

fn mib(bytes: i64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_declaring_150_mb_is_refused_from_its_header_and_the_call_reconnects() {
    let _turn = SERIAL.lock().await;
    let app = HostileApp::start(vec![Conduct::HugeFrame(150_000_000), Conduct::Hold]).await;
    let server = server_for(&app, &[("dialog.reconnect_initial_ms", "50")]);
    let hits = metrics().limit_hits(Limit::DialogMessageBytes);
    let peer = ClientPeer::call(server.http, "/webrtc/v1/offer")
        .await
        .unwrap();
    peer.wait_connected(5 * SECOND).await.unwrap();
    assert!(eventually(5 * SECOND, || app.dials() == 1).await, "dialled");
    let before = rss();
    let peak = PeakRss::start();
    app.arm();
    assert!(
        eventually(10 * SECOND, || app.closed_by_server() == 1).await,
        "the server closed the hostile connection"
    );
    let growth = peak.stop() as i64 - before as i64;
    eprintln!(
        "peak RSS growth with a 150 MB frame: {:.2} MiB",
        mib(growth)
    );
    assert!(
        growth < 2 * LIMIT as i64,
        "RSS grew by {:.1} MiB",
        mib(growth)
    );
    assert_eq!(app.close_codes(), [MESSAGE_TOO_BIG]);
    assert!(
        eventually(5 * SECOND, || app.dials() == 2).await,
        "redialled after the refusal"
    );
    assert_eq!(metrics().limit_hits(Limit::DialogMessageBytes), hits + 1);
    assert_eq!(server.snapshot().await.calls.len(), 1, "the call goes on");
    peer.close().await;
    server.wait_released(5 * SECOND).await.unwrap();
    assert!(
        eventually(5 * SECOND, || app.close_codes().len() == 2).await,
        "the call's end closes the good connection with a close frame: {:?}",
        app.close_codes()
    );
    assert_eq!(app.close_codes(), [MESSAGE_TOO_BIG, 1000]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_100_mb_frames_across_reconnects_keep_memory_bounded_and_end_the_call() {
    let _turn = SERIAL.lock().await;
    let app = HostileApp::start(vec![Conduct::HugeFrame(100_000_000)]).await;
    let server = server_for(
        &app,
        &[
            ("dialog.reconnect_attempts", "3"),
            ("dialog.reconnect_initial_ms", "50"),
            ("dialog.reconnect_max_ms", "200"),
        ],
    );
    let peer = ClientPeer::call(server.http, "/webrtc/v1/offer")
        .await
        .unwrap();
    peer.wait_connected(5 * SECOND).await.unwrap();
    assert!(eventually(5 * SECOND, || app.dials() == 1).await, "dialled");
    let before = rss();
    let peak = PeakRss::start();
    app.arm();
    assert_eq!(
        server
            .end_reason(&peer.call_id, 20 * SECOND)
            .await
            .as_deref(),
        Some("dialog-lost")
    );
    assert!(
        eventually(5 * SECOND, || app.closed_by_server() == 4).await,
        "every connection closed: {}",
        app.closed_by_server()
    );
    let growth = peak.stop() as i64 - before as i64;
    eprintln!(
        "peak RSS growth with 4 x 100 MB frames: {:.2} MiB",
        mib(growth)
    );
    assert!(
        growth < 2 * LIMIT as i64,
        "RSS grew by {:.1} MiB",
        mib(growth)
    );
    assert_eq!(app.dials(), 4, "the first dial and 3 reconnects");
    assert_eq!(app.close_codes(), [MESSAGE_TOO_BIG; 4]);
    server.wait_released(5 * SECOND).await.unwrap();
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_accepts_and_drops_at_once_is_dialled_at_most_attempts_plus_one_times() {
    let _turn = SERIAL.lock().await;
    let app = HostileApp::start(vec![Conduct::Drop]).await;
    let server = server_for(
        &app,
        &[
            ("dialog.reconnect_attempts", "3"),
            ("dialog.reconnect_initial_ms", "20"),
            ("dialog.reconnect_max_ms", "100"),
        ],
    );
    let peer = ClientPeer::call(server.http, "/webrtc/v1/offer")
        .await
        .unwrap();
    assert_eq!(
        server
            .end_reason(&peer.call_id, 10 * SECOND)
            .await
            .as_deref(),
        Some("dialog-lost")
    );
    // Released: no dialog client is left that could dial again.
    server.wait_released(5 * SECOND).await.unwrap();
    eprintln!("dials by an app that accepts and drops: {}", app.dials());
    assert_eq!(app.dials(), 4, "the first dial and 3 reconnects");
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_lost_one_after_another_leave_no_socket_behind() {
    let _turn = SERIAL.lock().await;
    // Each connection stays up longer than stable_after_ms, so the call reconnects for ever.
    let app = HostileApp::start(vec![Conduct::HoldThenDrop(Duration::from_millis(400))]).await;
    let server = server_for(
        &app,
        &[
            ("dialog.reconnect_attempts", "2"),
            ("dialog.reconnect_initial_ms", "20"),
            ("dialog.stable_after_ms", "200"),
        ],
    );
    let peer = ClientPeer::call(server.http, "/webrtc/v1/offer")
        .await
        .unwrap();
    peer.wait_connected(5 * SECOND).await.unwrap();
    // Sampled while connection 2, and later connection 8, is held: one live connection each time.
    assert!(
        eventually(5 * SECOND, || app.dials() == 2).await,
        "redialled"
    );
    let (fds_before, half_open_before) = (open_fds(), app.half_open());
    assert!(
        eventually(10 * SECOND, || app.dials() == 8).await,
        "redialled 6 more times: {}",
        app.dials()
    );
    let (fds_after, half_open_after) = (open_fds(), app.half_open());
    eprintln!(
        "fds before {fds_before}, after 6 more reconnects {fds_after}; \
         CLOSE_WAIT sockets to the app {half_open_before} -> {half_open_after}"
    );
    assert_eq!(half_open_after, 0, "lost connections are closed");
    assert!(
        fds_after <= fds_before,
        "fds grew from {fds_before} to {fds_after}"
    );
    assert_eq!(server.snapshot().await.calls.len(), 1, "the call goes on");
    peer.close().await;
    server.wait_released(5 * SECOND).await.unwrap();
}
