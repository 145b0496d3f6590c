//! How a dialog connection ends: the app hears `call.ended` even when the call ends while the
//! socket is reconnecting (one last dial, bounded by `dialog.connect_timeout_ms`), and every
//! close voicegate sends is a valid close frame (RFC 6455 §5.5), whether it closes first or
//! answers the app's own close (§5.5.1).
//!
//! The real server on free ports, a real WebRTC client peer, and a real WebSocket dialog app on
//! port 0: the testkit's [`TestDialogApp`], or, where the test must see the frames themselves
//! (a close frame, a protocol error, a dial left unanswered), a tokio-tungstenite server the
//! test drives by hand.

mod common;

use common::{TestServer, metric};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use voicegate_testkit::dialog_app::TestDialogApp;
use voicegate_testkit::{ClientPeer, http};

const SECOND: Duration = Duration::from_secs(1);

/// Reconnect attempts counted by the process's metrics.
const RECONNECTS: &str = "voicegate_dialog_reconnects_total";
/// Dialog clients alive in the process.
const LIVE_DIALOGS: &str = "voicegate_actors_live{kind=\"dialog\"}";

/// The tests read process-wide metrics (reconnect attempts, live dialog clients) that every
/// test's server in this binary moves, so they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A server whose dialog app is at `url`, plus `extra` settings.
fn server_for(url: &str, extra: &[(&str, &str)]) -> TestServer {
    let mut settings = vec![("dialog.url", url)];
    settings.extend_from_slice(extra);
    TestServer::start(&settings)
}

/// Waits until `series` satisfies `ok`; its last value.
async fn wait_metric(
    server: &TestServer,
    series: &str,
    within: Duration,
    ok: impl Fn(f64) -> bool,
) -> f64 {
    let t0 = Instant::now();
    loop {
        let v = metric(server, series).await;
        if ok(v) || t0.elapsed() > within {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the dialog client has noticed a loss and waits to redial (the call counts each
/// `Reconnecting` it hears), so the hang-up that follows finds it disconnected.
async fn wait_reconnecting(server: &TestServer, before: f64) {
    let now = wait_metric(server, RECONNECTS, 5 * SECOND, |v| v > before).await;
    assert!(now > before, "the dialog client never started reconnecting");
}

/// `POST /webrtc/v1/hangup` for `call_id`.
async fn hang_up(server: &TestServer, call_id: &str) {
    let path = format!("/webrtc/v1/hangup?call_id={call_id}");
    let res = http::request(server.http, "POST", &path, &[], b"")
        .await
        .unwrap();
    assert_eq!(res.status, 204, "{}", res.text());
}

/// The next connection to `listener`, as a WebSocket.
async fn accept_ws(listener: &TcpListener) -> WebSocketStream<TcpStream> {
    let (tcp, _) = tokio::time::timeout(5 * SECOND, listener.accept())
        .await
        .expect("voicegate dials the app")
        .unwrap();
    tokio_tungstenite::accept_async(tcp)
        .await
        .expect("WebSocket handshake")
}

/// Places a call whose dialog app is the hand-driven one behind `listener`; returns the peer and
/// the app's side of the socket once `call.started` came.
async fn started_raw_call(
    server: &TestServer,
    listener: &TcpListener,
) -> (ClientPeer, WebSocketStream<TcpStream>) {
    let peer = ClientPeer::call(server.http, "/webrtc/v1/offer")
        .await
        .expect("call placed");
    let mut ws = accept_ws(listener).await;
    peer.wait_connected(5 * SECOND)
        .await
        .expect("media connected");
    let (events, end) = read_until(&mut ws, 5 * SECOND, |e| e["type"] == "call.started").await;
    assert!(
        matches!(end, Ending::Matched),
        "no call.started: {events:?}, {end:?}"
    );
    (peer, ws)
}

/// How reading the app's side of a socket stopped.
#[derive(Debug)]
enum Ending {
    /// An event matched.
    Matched,
    /// A close frame came (`None`: one without a status code).
    Close(Option<CloseFrame>),
    /// The socket failed (a protocol error, a reset without a close frame) or ended; why, for
    /// the assertion messages (which show it through `Debug`, which dead-code analysis ignores).
    Failed(#[allow(dead_code)] String),
    /// Nothing decisive came in time.
    TimedOut,
}

/// Reads events until one matches `stop`, a close frame comes, the socket fails or `within`
/// passes; the events read, and how it stopped.
async fn read_until(
    ws: &mut WebSocketStream<TcpStream>,
    within: Duration,
    stop: impl Fn(&Value) -> bool,
) -> (Vec<Value>, Ending) {
    let deadline = tokio::time::Instant::now() + within;
    let mut events = Vec::new();
    loop {
        let next = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return (events, Ending::TimedOut),
            Ok(next) => next,
        };
        match next {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).expect("events are JSON");
                let done = stop(&v);
                events.push(v);
                if done {
                    return (events, Ending::Matched);
                }
            }
            Some(Ok(Message::Close(frame))) => return (events, Ending::Close(frame)),
            Some(Ok(_)) => {}
            Some(Err(e)) => return (events, Ending::Failed(e.to_string())),
            None => return (events, Ending::Failed("ended".into())),
        }
    }
}

/// Bug: a call that ended while its dialog socket was reconnecting dropped what it had buffered
/// for the app, `call.ended` and the last `tts.ended`s with it, although the protocol promises
/// `call.ended` whatever ended the call and delivers what a reconnect held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_ended_while_reconnecting_still_tells_the_app_on_a_last_connection() {
    let _serial = SERIAL.lock().await;
    let app = TestDialogApp::start().await;
    // The redial would come a minute after the loss: the call ends long before.
    let server = server_for(&app.url(), &[("dialog.reconnect_initial_ms", "60000")]);
    let live_before = metric(&server, LIVE_DIALOGS).await;
    let (peer, _) = common::started_dialog_call(&server, &app).await;
    // Long enough to be still playing at the hang-up, so it ends with the call.
    assert!(app.send(json!({
        "type": "tts.speak",
        "utterance_id": "long",
        "text": "This answer goes on for a while. It has several sentences in it. \
                 The caller will hang up before it is over, so it never ends by itself."
    })));
    app.wait_type(5 * SECOND, "tts.started", Some("long"))
        .await
        .expect("the utterance started");
    let before = metric(&server, RECONNECTS).await;
    assert!(app.drop_connection());
    wait_reconnecting(&server, before).await;
    assert_eq!(app.dials().len(), 1, "the redial is a minute away");

    let hung_up = Instant::now();
    hang_up(&server, &peer.call_id).await;
    let ended = app
        .wait_type(5 * SECOND, "call.ended", None)
        .await
        .unwrap_or_else(|| panic!("call.ended never came: {:?}", app.types()));
    assert!(hung_up.elapsed() < 5 * SECOND, "not after the backoff");
    assert_eq!(ended["reason"], "client-hangup");
    assert_eq!(ended["call_id"], peer.call_id.as_str());
    assert_eq!(app.dials().len(), 2, "one last dial delivered it");
    assert!(app.dials()[1].contains(&format!("call_id={}", peer.call_id)));
    // The utterance cut short by the hang-up ended first, not ok, as on any other call's end.
    let types = app.types();
    let long_ended = app
        .events()
        .iter()
        .position(|e| e["type"] == "tts.ended" && e["utterance_id"] == "long")
        .expect("the utterance got its tts.ended");
    assert_eq!(app.events()[long_ended]["ok"], false);
    let call_ended = types.iter().position(|t| t == "call.ended").unwrap();
    assert!(long_ended < call_ended, "{types:?}");
    assert_eq!(types.iter().filter(|t| *t == "call.ended").count(), 1);

    server.wait_released(3 * SECOND).await.unwrap();
    // The last connection is closed normally and the client stops.
    assert!(
        common::eventually(3 * SECOND, || !app.connected()).await,
        "the last connection is closed"
    );
    let live = wait_metric(&server, LIVE_DIALOGS, 3 * SECOND, |v| v <= live_before).await;
    assert_eq!(live, live_before, "the dialog client stopped");
    peer.close().await;
}

/// The last dial is bounded: an app that is gone for good (here: it takes the TCP connection
/// and never answers the handshake) costs the call's dialog client at most the connect timeout,
/// and the call's teardown does not wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_ended_while_its_app_stays_away_gives_up_within_the_connect_timeout() {
    let _serial = SERIAL.lock().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let connect_timeout = 3 * SECOND;
    let server = server_for(
        &dialog_url(&listener),
        &[
            ("dialog.reconnect_initial_ms", "60000"),
            ("dialog.connect_timeout_ms", "3000"),
        ],
    );
    let live_before = metric(&server, LIVE_DIALOGS).await;
    let (peer, ws) = started_raw_call(&server, &listener).await;
    let before = metric(&server, RECONNECTS).await;
    // Gone without a close frame.
    drop(ws);
    wait_reconnecting(&server, before).await;

    hang_up(&server, &peer.call_id).await;
    let released = server.wait_released(3 * SECOND).await.unwrap();
    assert!(
        released < connect_timeout,
        "teardown waited for the last dial: {released:?}"
    );
    // The last dial comes at once, and is left unanswered.
    let (tcp, _) = tokio::time::timeout(2 * SECOND, listener.accept())
        .await
        .expect("one last dial")
        .unwrap();
    let dialled = Instant::now();
    let closed = tokio::time::timeout(connect_timeout + 2 * SECOND, closed_by_peer(&tcp)).await;
    assert!(
        closed.is_ok(),
        "the last dial is given up within the connect timeout"
    );
    assert!(dialled.elapsed() < connect_timeout + 2 * SECOND);
    let live = wait_metric(&server, LIVE_DIALOGS, 2 * SECOND, |v| v <= live_before).await;
    assert_eq!(live, live_before, "the dialog client stopped");
    assert!(
        tokio::time::timeout(SECOND, listener.accept())
            .await
            .is_err(),
        "no dial after the last"
    );
    peer.close().await;
}

/// Reads (and discards) what `tcp` receives until the other side closes it.
async fn closed_by_peer(tcp: &TcpStream) {
    let mut buf = [0u8; 4096];
    loop {
        if tcp.readable().await.is_err() {
            return;
        }
        match tcp.try_read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// Bug: a `hangup` reason of any length went into the close frame, whose payload may be at most
/// 125 bytes (RFC 6455 §5.5): the app's library saw a protocol error, not a close. The reason
/// voicegate keeps (and sends in `call.ended`) is cut to 256 bytes; the close frame carries its
/// first 123.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_hangup_reason_is_cut_to_fit_and_the_close_is_clean() {
    let _serial = SERIAL.lock().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = server_for(&dialog_url(&listener), &[]);
    let (peer, mut ws) = started_raw_call(&server, &listener).await;
    let hangup = json!({"type": "hangup", "reason": "x".repeat(300)});
    ws.send(Message::Text(hangup.to_string().into()))
        .await
        .unwrap();
    let (events, end) = read_until(&mut ws, 5 * SECOND, |_| false).await;
    let kept = "x".repeat(256);
    let ended: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "call.ended")
        .collect();
    assert_eq!(ended.len(), 1, "{events:?}");
    assert_eq!(ended[0]["reason"], kept.as_str());
    match end {
        Ending::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 1000);
            assert_eq!(frame.reason.as_str(), &kept[..123]);
        }
        other => panic!("no valid close frame: {other:?}"),
    }
    assert_eq!(
        server.end_reason(&peer.call_id, 3 * SECOND).await,
        Some(kept),
        "the server keeps the cut reason"
    );
    peer.close().await;
}

/// Bug: the app closing normally (1000, 1001) got no close frame back, only the TCP connection
/// dropped, so it saw an abnormal closure (1006). RFC 6455 §5.5.1: answer with a close frame,
/// echoing the status code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_normal_close_is_answered_with_a_close_frame() {
    let _serial = SERIAL.lock().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = server_for(&dialog_url(&listener), &[]);
    for code in [1000u16, 1001] {
        let (peer, mut ws) = started_raw_call(&server, &listener).await;
        let close = CloseFrame {
            code: code.into(),
            reason: "done".into(),
        };
        ws.send(Message::Close(Some(close))).await.unwrap();
        let (events, end) = read_until(&mut ws, 5 * SECOND, |_| false).await;
        match end {
            Ending::Close(Some(frame)) => assert_eq!(u16::from(frame.code), code),
            other => panic!("{code}: no close frame back: {other:?} after {events:?}"),
        }
        // After the close handshake the socket ends cleanly.
        let after = tokio::time::timeout(5 * SECOND, ws.next()).await;
        assert!(
            matches!(after, Ok(None) | Ok(Some(Err(_)))),
            "{code}: the socket ends: {after:?}"
        );
        assert_eq!(
            server
                .end_reason(&peer.call_id, 3 * SECOND)
                .await
                .as_deref(),
            Some("dialog-closed")
        );
        peer.close().await;
    }
}

/// The dial URL of the hand-driven app behind `listener`.
fn dialog_url(listener: &TcpListener) -> String {
    let addr: SocketAddr = listener.local_addr().unwrap();
    format!("ws://{addr}/dialog")
}

/// While the socket reconnects, events wait in `dialog.event_buffer`; past it the oldest are
/// dropped, and each drop is counted as a limit hit (it was only a log line).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_past_the_buffer_while_reconnecting_are_dropped_oldest_first_and_counted() {
    let _serial = SERIAL.lock().await;
    let app = TestDialogApp::start().await;
    let server = server_for(
        &app.url(),
        &[
            ("dialog.event_buffer", "2"),
            ("dialog.reconnect_initial_ms", "1500"),
        ],
    );
    let (peer, _) = common::started_dialog_call(&server, &app).await;
    let pt = voicegate_core::sdp::check_offer(&peer.offer)
        .unwrap()
        .telephone_event_pt
        .expect("the client offers DTMF");
    const DROPS: &str = "voicegate_limit_hits_total{limit=\"dialog_event_buffer\"}";
    let drops_before = metric(&server, DROPS).await;
    let reconnects = metric(&server, RECONNECTS).await;
    assert!(app.drop_connection());
    wait_reconnecting(&server, reconnects).await;
    for digit in ['1', '2', '3', '4'] {
        peer.send_dtmf(pt, digit).await.unwrap();
    }
    let delivered = app
        .wait_for(5 * SECOND, |e| e["type"] == "dtmf" && e["digit"] == "4")
        .await;
    assert!(
        delivered.is_some(),
        "the newest press came after the redial"
    );
    let digits: Vec<String> = app
        .events()
        .iter()
        .filter(|e| e["type"] == "dtmf")
        .map(|e| e["digit"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(digits, ["3", "4"], "the two newest were kept");
    assert!(
        metric(&server, DROPS).await - drops_before >= 2.0,
        "the two dropped were counted"
    );
    peer.close().await;
}

/// An app that stops answering (its process hangs, its socket stays open) is lost after
/// `ping_interval + pong_timeout` of silence, as documented; the check ran only on the next
/// ping's tick, up to a whole interval later (2 s here instead of 1.2 s), while events went
/// into the dead socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_app_is_lost_after_ping_interval_and_pong_timeout() {
    let _serial = SERIAL.lock().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/dialog", listener.local_addr().unwrap());
    let server = server_for(
        &url,
        &[
            ("dialog.ping_interval_ms", "1000"),
            ("dialog.pong_timeout_ms", "200"),
            ("dialog.reconnect_initial_ms", "60000"),
        ],
    );
    let (peer, mut ws) = started_raw_call(&server, &listener).await;
    // Answer one ping, then nothing more: the last sign of life is that pong.
    let ping = tokio::time::timeout(3 * SECOND, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_))) => break,
                Some(Ok(_)) => continue,
                other => panic!("the socket ended before a ping: {other:?}"),
            }
        }
    })
    .await;
    assert!(ping.is_ok(), "no ping in 3 s");
    ws.flush().await.expect("the pong goes out");
    let silent_since = Instant::now();
    let reconnects = metric(&server, RECONNECTS).await;
    wait_reconnecting(&server, reconnects).await;
    let noticed = silent_since.elapsed();
    assert!(
        noticed < Duration::from_millis(1600),
        "a silent app was noticed {} ms after its last pong (the limit is 1200)",
        noticed.as_millis()
    );
    assert!(noticed >= Duration::from_millis(1100), "{noticed:?}");
    drop(ws);
    peer.close().await;
}
