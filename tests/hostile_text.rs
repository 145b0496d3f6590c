//! A dialog app that sends hostile speech commands: text bombs that made the text handling
//! quadratic, a burst of ten thousand `tts.speak`, and ids that try to forge log lines.
//!
//! The real server runs with one media worker, so the dialog call under attack and an innocent
//! echo call share it: the echo must keep its audio, which it cannot if text work holds the
//! worker (the original took 10.7 s on one bomb, and both calls ended with `rtp-timeout`).

mod common;

use common::{TestServer, eventually, started_dialog_call};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::Write;
use std::sync::{LazyLock, Mutex, Once};
use std::time::{Duration, Instant};
use voicegate_actors::metrics::{Limit, metrics};
use voicegate_testkit::dialog_app::TestDialogApp;
use voicegate_testkit::{ClientPeer, Received};

const SECOND: Duration = Duration::from_secs(1);
/// How often a short wait checks.
const FINE: Duration = Duration::from_millis(2);
const ECHO: &str = "/webrtc/v1/offer?mode=echo";
/// The text limit of the attack's server: a 200 000-character bomb is under it and must be
/// handled (in linear time), a 300 000-character one is over it and must be refused.
const TEXT_LIMIT: &str = "262144";

/// The `tts.ended` events so far, by utterance id (with how many each got).
fn endings(app: &TestDialogApp) -> HashMap<String, Vec<Value>> {
    let mut by_id: HashMap<String, Vec<Value>> = HashMap::new();
    for e in app.events() {
        if e["type"] == "tts.ended" {
            let id = e["utterance_id"].as_str().unwrap_or("").to_owned();
            by_id.entry(id).or_default().push(e);
        }
    }
    by_id
}

/// Waits until `pred` holds, checking every `every` (gently once the app's event list is
/// long: each check copies it).
async fn wait_until(
    within: Duration,
    every: Duration,
    mut pred: impl FnMut() -> bool,
) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if pred() {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(every).await;
    }
    pred().then(|| t0.elapsed())
}

/// The longest time between two packets the echo call received after `from`.
fn longest_gap(rx: &[Received], from: Instant) -> Duration {
    rx.windows(2)
        .filter(|w| w[0].at >= from)
        .map(|w| w[1].at.duration_since(w[0].at))
        .max()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_bombs_and_a_speak_burst_neither_stall_the_worker_nor_go_unanswered() {
    capture_logs();
    let app = TestDialogApp::start().await;
    let url = app.url();
    let server = TestServer::start(&[
        ("dialog.url", url.as_str()),
        ("media.workers", "1"),
        ("tts.max_text_bytes", TEXT_LIMIT),
    ]);
    let echo = ClientPeer::call(server.http, ECHO)
        .await
        .expect("echo call placed");
    echo.wait_connected(5 * SECOND)
        .await
        .expect("echo connected");
    let dialog = started_dialog_call(&server, &app).await.0;
    // The metrics are the process's; no other test here hits these limits.
    let hits = || {
        (
            metrics().limit_hits(Limit::TtsTextBytes),
            metrics().limit_hits(Limit::TtsQueuedUtterances),
        )
    };
    let hits_before = hits();

    // The innocent caller talks for 8 s; the attack starts 0.5 s in.
    let frames = 400;
    let tone = echo.send_tone(440.0, frames);
    let attack = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let attack_start = Instant::now();

        // (a) Text bombs: 200 000 `[` and a `.` is under this server's limit (and has nothing
        // speakable); 300 000 is over it.
        let under = "[".repeat(200_000) + ".";
        let over = "[".repeat(300_000) + ".";
        let t = Instant::now();
        assert!(
            app.send(json!({"type": "tts.speak", "utterance_id": "bomb-under", "text": under}))
        );
        let under_took = wait_until(10 * SECOND, FINE, || {
            endings(&app).contains_key("bomb-under")
        })
        .await
        .expect("the bomb under the limit ends");
        let t2 = Instant::now();
        assert!(app.send(json!({"type": "tts.speak", "utterance_id": "bomb-over", "text": over})));
        wait_until(10 * SECOND, FINE, || {
            endings(&app).contains_key("bomb-over")
        })
        .await
        .expect("the bomb over the limit ends");
        let over_took = t2.elapsed();
        let bombs_took = t.elapsed();

        // (b) Ten thousand speaks in a burst, then an interrupt for those that were queued.
        let t = Instant::now();
        for n in 0..10_000 {
            assert!(app.send(json!({"type": "tts.speak", "utterance_id": format!("burst-{n}"), "text": "Hello there."})));
        }
        assert!(app.send(json!({"type": "tts.interrupt"})));
        let burst_took = wait_until(30 * SECOND, Duration::from_millis(50), || {
            endings(&app)
                .keys()
                .filter(|id| id.starts_with("burst-"))
                .count()
                == 10_000
        })
        .await
        .expect("every speak of the burst ends");
        eprintln!(
            "bomb under the limit answered in {under_took:?}, over it in {over_took:?}; \
             10 000 speaks answered in {burst_took:?} (sending included: {:?})",
            t.elapsed()
        );
        (attack_start, bombs_took, burst_took)
    };
    let (sent, (attack_start, bombs_took, burst_took)) = tokio::join!(tone, attack);
    sent.expect("tone sent");
    eventually(2 * SECOND, || echo.received_count() >= frames).await;

    // The attack was answered in bounded time.
    assert!(bombs_took < 5 * SECOND, "bombs took {bombs_took:?}");
    assert!(burst_took < 20 * SECOND, "burst took {burst_took:?}");
    let ends = endings(&app);
    let under = &ends["bomb-under"];
    assert_eq!(under.len(), 1, "{under:?}");
    assert_eq!(under[0]["ok"], true, "nothing speakable, but handled");
    assert!(under[0].get("reason").is_none(), "{under:?}");
    let over = &ends["bomb-over"];
    assert_eq!(over.len(), 1, "{over:?}");
    assert_eq!(over[0]["ok"], false);
    assert_eq!(over[0]["reason"], "text-too-long");
    // Every speak of the burst ended exactly once: most refused for a full queue, the rest
    // (the queue's worth) played or interrupted.
    let mut refused = 0u64;
    for n in 0..10_000 {
        let e = &ends[&format!("burst-{n}")];
        assert_eq!(e.len(), 1, "burst-{n}: {e:?}");
        if e[0]["ok"] == false && e[0]["reason"] == "queue-full" {
            refused += 1;
        } else {
            assert!(e[0].get("reason").is_none(), "burst-{n}: {e:?}");
        }
    }
    assert!(
        (9_900..=9_936).contains(&refused),
        "{refused} refused for a full queue"
    );
    // Each refusal was counted under its limit.
    let hits_after = hits();
    assert_eq!(hits_after.0 - hits_before.0, 1, "text-too-long hits");
    assert_eq!(hits_after.1 - hits_before.1, refused, "queue-full hits");

    // The echo call on the same worker kept its audio and is still up.
    let rx = echo.received();
    let gap = longest_gap(&rx, attack_start);
    eprintln!(
        "echo: {} of {frames} frames back, longest gap after the attack began {gap:?}",
        rx.len()
    );
    assert!(
        rx.len() * 100 >= frames * 95,
        "the echo call lost audio: {} of {frames} frames",
        rx.len()
    );
    let calls = server.snapshot().await.calls;
    assert_eq!(calls.len(), 2, "both calls are up");
    echo.close().await;
    dialog.close().await;
}

/// An utterance id, an unknown field value and a hangup reason that each try to forge a log
/// line (a newline, a fake timestamp and level) and repaint the terminal (an escape sequence).
const FORGED: &str = "\n2026-12-06T00:00:00.000000Z  INFO voicegate: FORGED call ended\u{1b}[2J";

/// Log lines (one `write` per event) that mention `FORGED`, as the log's writer got them.
static CAPTURED: LazyLock<Mutex<Vec<String>>> = LazyLock::new(|| Mutex::new(Vec::new()));

/// The log's writer in this test binary: keeps what concerns the forged strings.
struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let line = String::from_utf8_lossy(buf);
        if line.contains("FORGED") {
            CAPTURED
                .lock()
                .expect("no panics while holding")
                .push(line.into_owned());
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs this binary's log subscriber (before any server, whose own attempt then does
/// nothing), at the levels the service logs at by default.
fn capture_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "warn,voicegate=info,voicegate_actors=info",
            ))
            .with_ansi(false)
            .with_writer(|| Capture)
            .init();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_strings_with_a_newline_and_an_escape_are_logged_as_one_line() {
    capture_logs();
    let app = TestDialogApp::start().await;
    let url = app.url();
    let server = TestServer::start(&[("dialog.url", url.as_str())]);
    let peer = started_dialog_call(&server, &app).await.0;
    // An utterance id: logged with the utterance's first audio.
    let id = format!("u1{FORGED}");
    assert!(app.send(json!({"type": "tts.speak", "utterance_id": id, "text": "Hello."})));
    let ended = app
        .wait_type(10 * SECOND, "tts.ended", Some(&id))
        .await
        .expect("the utterance ends, its id intact on the wire");
    assert_eq!(ended["ok"], true);
    // A malformed command whose error repeats the app's value.
    assert!(app.send(json!({"type": "tts.speak", "stream_end": FORGED})));
    // A hangup reason: logged when the call ends.
    assert!(app.send(json!({"type": "hangup", "reason": format!("bye{FORGED}")})));
    let reason = server.end_reason(&peer.call_id, 5 * SECOND).await;
    assert_eq!(reason.as_deref(), Some(format!("bye{FORGED}").as_str()));
    assert!(
        eventually(2 * SECOND, || CAPTURED.lock().unwrap().len() >= 3).await,
        "first audio, the ignored command and the call's end are logged: {:?}",
        CAPTURED.lock().unwrap()
    );
    for line in CAPTURED.lock().unwrap().iter() {
        assert_eq!(line.matches('\n').count(), 1, "one line: {line:?}");
        assert!(line.ends_with('\n'), "{line:?}");
        assert!(!line.contains('\u{1b}'), "no escape sequence: {line:?}");
        assert!(line.contains("\\n2026-12-06"), "shown escaped: {line:?}");
    }
    peer.close().await;
}
