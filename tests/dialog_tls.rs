//! The dialog connection's options end to end: a `wss://` dialog app whose certificate comes from a
//! CA made for the test (`dialog.ca_file`), reached with `dialog.headers` on the dial, and the
//! service's own log output read back to check the header's value never appears in it.

mod common;

use common::{TestServer, started_dialog_call};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use voicegate_testkit::ClientPeer;
use voicegate_testkit::dialog_app::TestDialogApp;
use voicegate_testkit::tls::TestCa;

const SECOND: Duration = Duration::from_secs(1);

/// The secret part of the configured `Authorization` value: it must reach the app and no log.
const SECRET: &str = "s3cret-7f1c9a";

/// Everything the service logs in this test binary (one subscriber per process).
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

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Installs the capturing subscriber once: voicegate's own lines from `info` (the startup line
/// shows the dial URL and headers), everything else from `warn`.
fn logs() -> Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let capture = Capture::default();
            let writer = capture.clone();
            tracing_subscriber::fmt()
                .with_env_filter("warn,voicegate=info,voicegate_actors=info")
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .init();
            capture
        })
        .clone()
}

/// The test CA's certificate in a file, removed when dropped.
struct CaFile(PathBuf);

impl CaFile {
    fn new(ca: &TestCa, name: &str) -> CaFile {
        let path = std::env::temp_dir().join(format!(
            "voicegate-dialog-tls-{}-{name}.pem",
            std::process::id()
        ));
        std::fs::write(&path, &ca.ca_pem).unwrap();
        CaFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for CaFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The log lines that mention `needle`.
fn lines_with(log: &str, needle: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wss_dial_trusts_the_ca_file_sends_the_headers_and_logs_never_show_their_values() {
    let log = logs();
    let ca = TestCa::new();
    let app = TestDialogApp::start_tls(ca.server.clone()).await;
    let ca_file = CaFile::new(&ca, "trusted");
    let url = app.url();
    assert!(url.starts_with("wss://127.0.0.1:"), "{url}");
    let bearer = format!("Bearer {SECRET}");
    let server = TestServer::start(&[
        ("dialog.url", url.as_str()),
        ("dialog.ca_file", ca_file.path()),
        // Only the CA file: the dial must succeed on it alone.
        ("dialog.public_roots", "false"),
        ("dialog.headers.Authorization", bearer.as_str()),
        ("dialog.headers.X_Team", "blue-7"),
    ]);

    // The test CA's server offers ALPN h2 first, as public servers do: a client that offered h2
    // too would get it and could not upgrade to a WebSocket.
    let (peer, started) = started_dialog_call(&server, &app).await;
    assert_eq!(started["call_id"], peer.call_id.as_str());
    let dials = app.dial_headers();
    assert_eq!(dials.len(), 1, "one dial");
    let header = |name: &str| {
        dials[0]
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(header("authorization"), [bearer.as_str()]);
    assert_eq!(header("x-team"), ["blue-7"]);
    assert_eq!(
        header("upgrade"),
        ["websocket"],
        "still a WebSocket handshake"
    );

    server.wait_until_calls(1, 2 * SECOND).await;
    drop(server);
    peer.close().await;

    let text = log.text();
    let startup = lines_with(&text, "listening on");
    assert!(
        startup
            .iter()
            .any(|l| l.contains("authorization: ***, x-team: ***")
                && l.contains("1 from dialog.ca_file")
                && l.contains("wss://127.0.0.1:")),
        "the startup line shows the dial with its headers redacted:\n{}",
        startup.join("\n")
    );
    assert!(
        !text.contains(SECRET),
        "the secret leaked into the log:\n{text}"
    );
    assert!(
        !text.contains("blue-7"),
        "a header value leaked into the log:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_ca_file_the_dial_fails_the_certificate_check_and_the_call_ends_unreachable() {
    let log = logs();
    let ca = TestCa::new();
    let app = TestDialogApp::start_tls(ca.server.clone()).await;
    let url = app.url();
    let bearer = format!("Bearer {SECRET}");
    let server = TestServer::start(&[
        ("dialog.url", url.as_str()),
        ("dialog.headers.Authorization", bearer.as_str()),
    ]);
    let peer = ClientPeer::call(server.http, "/webrtc/v1/offer")
        .await
        .unwrap();
    assert_eq!(
        server
            .end_reason(&peer.call_id, 8 * SECOND)
            .await
            .as_deref(),
        Some("dialog-unreachable"),
        "a dial the certificate check refuses is a dialog app that cannot be reached"
    );
    assert!(
        app.dial_headers().is_empty(),
        "no WebSocket handshake happened, so the header was never sent"
    );
    server.wait_released(2 * SECOND).await.unwrap();
    drop(server);
    peer.close().await;

    let text = log.text();
    let failed: Vec<String> = lines_with(&text, "dialog app dial failed")
        .into_iter()
        .filter(|l| l.contains(url.split('?').next().unwrap()))
        .collect();
    assert!(
        failed.iter().any(|l| l.contains("UnknownIssuer")),
        "the dial failure names the certificate problem:\n{}",
        failed.join("\n")
    );
    assert!(
        failed.iter().all(|l| l.contains("authorization: ***")),
        "the failed dial's line shows the header redacted:\n{}",
        failed.join("\n")
    );
    assert!(
        !text.contains(SECRET),
        "the secret leaked into the log:\n{text}"
    );
}
