//! Operating voicegate: the admission limit, and draining on SIGTERM (against the real binary).

mod common;

use common::TestServer;
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use voicegate_actors::supervisor::Shutdown;
use voicegate_testkit::dialog_app::TestDialogApp;
use voicegate_testkit::{ClientPeer, http};

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_max_refuses_with_503_and_retry_after_before_taking_anything() {
    let server = TestServer::start(&[("calls.max", "2"), ("calls.retry_after_s", "7")]);
    let a = ClientPeer::call(server.http, "/webrtc/v1/offer?mode=echo")
        .await
        .unwrap();
    let b = ClientPeer::call(server.http, "/webrtc/v1/offer?mode=echo")
        .await
        .unwrap();
    a.wait_connected(5 * SECOND).await.unwrap();
    b.wait_connected(5 * SECOND).await.unwrap();
    let routes_before = server.plane.mux().tables();
    let (pc, _t, _s, _st, _rx, offer) = ClientPeer::offer().await.unwrap();
    let res = http::post_json(
        server.http,
        "/webrtc/v1/offer?mode=echo",
        &json!({"type": "offer", "sdp": offer}),
    )
    .await
    .unwrap();
    assert_eq!(res.status, 503, "{}", res.text());
    assert_eq!(res.header("retry-after"), Some("7"));
    assert!(res.json()["error"].as_str().unwrap().contains("capacity"));
    // Nothing was built for it.
    assert_eq!(server.snapshot().await.calls.len(), 2);
    assert_eq!(server.plane.mux().tables(), routes_before);
    // A slot frees up: the next offer is taken.
    http::request(
        server.http,
        "POST",
        &format!("/webrtc/v1/hangup?call_id={}", a.call_id),
        &[],
        b"",
    )
    .await
    .unwrap();
    server.wait_until_calls(1, 2 * SECOND).await;
    let c = ClientPeer::call(server.http, "/webrtc/v1/offer?mode=echo")
        .await
        .expect("taken once a slot is free");
    let _ = pc.close().await;
    for p in [a, b, c] {
        p.close().await;
    }
}

/// A draining supervisor waits for its own calls (its registry), not for every call in the
/// process: another server's live call does not hold it up, and its own call ending lets it
/// finish long before the grace period is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_its_own_calls_until_they_end() {
    let other = TestServer::start(&[]);
    let server = TestServer::start(&[]);
    let peer = ClientPeer::call(other.http, "/webrtc/v1/offer?mode=echo")
        .await
        .unwrap();
    peer.wait_connected(5 * SECOND).await.unwrap();

    let t = Instant::now();
    server
        .supervisor
        .send(Shutdown { grace: 30 * SECOND })
        .await
        .unwrap();
    assert!(
        t.elapsed() < 2 * SECOND,
        "a server without calls waited {:?} for another server's call",
        t.elapsed()
    );

    let t = Instant::now();
    let hang_up = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        http::request(
            other.http,
            "POST",
            &format!("/webrtc/v1/hangup?call_id={}", peer.call_id),
            &[],
            b"",
        )
        .await
        .unwrap()
    };
    let (drained, hung_up) = tokio::join!(
        other.supervisor.send(Shutdown { grace: 30 * SECOND }),
        hang_up
    );
    drained.unwrap();
    assert_eq!(hung_up.status, 204, "{}", hung_up.text());
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < 5 * SECOND,
        "drained in {took:?}: it must wait for the call, and only until it ends"
    );
    assert_eq!(
        other.end_reason(&peer.call_id, SECOND).await.as_deref(),
        Some("client-hangup"),
        "the call ended its own way, not with shutdown"
    );
    peer.close().await;
}

/// A free TCP port on loopback (UDP ports of the same number are free in practice).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_ends_calls_with_shutdown_and_exits() {
    let app = TestDialogApp::start().await;
    let (http_port, udp_port) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_voicegate"))
        .env("VOICEGATE__HTTP__BIND", format!("127.0.0.1:{http_port}"))
        .env("VOICEGATE__MEDIA__BIND_IP", "127.0.0.1")
        .env("VOICEGATE__MEDIA__UDP_PORT", udp_port.to_string())
        .env("VOICEGATE__DIALOG__URL", app.url())
        .env("VOICEGATE__ASR__POCKETSPHINX__DECODERS", "1")
        .env("VOICEGATE__CALLS__SHUTDOWN_GRACE_MS", "3000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    let t0 = Instant::now();
    while http::request(addr, "GET", "/ready", &[], b"")
        .await
        .map(|r| r.status)
        .unwrap_or(0)
        != 200
    {
        assert!(t0.elapsed() < 20 * SECOND, "the service did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let peer = ClientPeer::call(addr, "/webrtc/v1/offer").await.unwrap();
    peer.wait_connected(5 * SECOND).await.unwrap();
    app.wait_type(5 * SECOND, "call.started", None)
        .await
        .expect("call.started");

    let term_at = Instant::now();
    assert!(
        Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap()
            .success()
    );
    // Draining: not ready, no new calls, but the live call goes on...
    let t = Instant::now();
    loop {
        let r = http::request(addr, "GET", "/ready", &[], b"")
            .await
            .unwrap();
        if r.status == 503 {
            break;
        }
        assert!(t.elapsed() < SECOND, "/ready stayed 200");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (pc, _t, _s, _st, _rx, offer) = ClientPeer::offer().await.unwrap();
    let refused = http::post_json(
        addr,
        "/webrtc/v1/offer",
        &json!({"type": "offer", "sdp": offer}),
    )
    .await
    .unwrap();
    assert_eq!(refused.status, 503);
    let _ = pc.close().await;
    app.send(json!({"type": "tts.speak", "utterance_id": "during", "text": "Still here."}));
    let ended = app
        .wait_type(5 * SECOND, "tts.ended", Some("during"))
        .await
        .expect("the call still works during the grace period");
    assert_eq!(ended["ok"], true, "{ended}");
    // ...until the grace period ends it with "shutdown".
    let ended = app
        .wait_type(5 * SECOND, "call.ended", None)
        .await
        .expect("call.ended");
    assert_eq!(ended["reason"], "shutdown");
    let after = term_at.elapsed();
    assert!(
        after >= Duration::from_millis(2900),
        "ended after {after:?}, before the grace period"
    );
    // And the process exits cleanly.
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < 10 * SECOND, "voicegate did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    peer.close().await;
}

/// Runs the binary with `env` until it logs "listening on"; returns what it logged by then.
fn startup_log(env: &[(&str, String)]) -> String {
    startup_log_of(Command::new(env!("CARGO_BIN_EXE_voicegate")), env)
}

/// [`startup_log`] of `cmd`, a command that runs the binary.
fn startup_log_of(mut cmd: Command, env: &[(&str, String)]) -> String {
    use std::io::{BufRead, BufReader};
    cmd.env("VOICEGATE__MEDIA__BIND_IP", "127.0.0.1")
        .env("VOICEGATE__MEDIA__UDP_PORT", free_port().to_string())
        .env("VOICEGATE__ASR__POCKETSPHINX__DECODERS", "1")
        .env("VOICEGATE__LOG__FORMAT", "text")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = String::new();
    let deadline = Instant::now() + 20 * SECOND;
    while !log.contains("listening on") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(log.contains("listening on"), "did not start:\n{log}");
    log
}

/// The binary raises its soft open-files limit to the hard one and says so: a login shell's
/// 1024 would cap a server at about that many dialog calls (a WebSocket each).
#[test]
fn the_open_files_limit_is_raised_to_the_hard_one_at_startup() {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let hard: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|h| h.parse().ok())
        .expect("a hard limit on open files");
    assert!(hard > 256, "this machine's hard limit is {hard}");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -Sn 256 && exec \"$0\"")
        .arg(env!("CARGO_BIN_EXE_voicegate"));
    let log = startup_log_of(
        cmd,
        &[(
            "VOICEGATE__HTTP__BIND",
            format!("127.0.0.1:{}", free_port()),
        )],
    );
    assert!(log.contains(&format!("open_files={hard} was=256")), "{log}");
    // The shared port's kernel buffers are in the same log, and a kernel that capped them below
    // what the server asked for (4 MiB) is named with the setting that does it.
    let buffer = |key: &str| {
        log.split(&format!("{key}="))
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {key} in the startup log: {log}"))
    };
    let (rx, tx) = (
        buffer("udp_receive_buffer_bytes"),
        buffer("udp_send_buffer_bytes"),
    );
    assert!(rx > 0 && tx > 0, "{log}");
    assert_eq!(
        log.contains("net.core.rmem_max"),
        rx / 2 < 4 << 20 || tx / 2 < 4 << 20,
        "{log}"
    );
}

#[test]
fn beyond_loopback_without_call_tokens_the_server_warns_at_startup() {
    let open = startup_log(&[("VOICEGATE__HTTP__BIND", format!("0.0.0.0:{}", free_port()))]);
    assert!(open.contains("auth.mode is \"none\""), "{open}");
    let secret = "a".repeat(40);
    let guarded = startup_log(&[
        ("VOICEGATE__HTTP__BIND", format!("0.0.0.0:{}", free_port())),
        ("VOICEGATE__AUTH__MODE", "token".to_owned()),
        ("VOICEGATE__AUTH__SECRETS", secret),
    ]);
    assert!(!guarded.contains("auth.mode is"), "{guarded}");
    let local = startup_log(&[(
        "VOICEGATE__HTTP__BIND",
        format!("127.0.0.1:{}", free_port()),
    )]);
    assert!(
        !local.contains("auth.mode is"),
        "a laptop is not warned: {local}"
    );
}

#[test]
fn voicegate_token_prints_a_token_signed_with_the_first_secret() {
    use voicegate_core::token::{TokenMode, Verifier};
    let (first, second) = ("f".repeat(32), "s".repeat(32));
    let out = Command::new(env!("CARGO_BIN_EXE_voicegate"))
        .args(["token", "--ttl", "60", "--sub", "alice", "--mode", "echo"])
        .args(["--payload", r#"{"plan":"gold"}"#, "--max-duration", "90"])
        .env("VOICEGATE__AUTH__SECRETS", format!("{first},{second}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let grant = Verifier::new(&[first.as_bytes()], 0, 3600)
        .verify(token.trim(), now)
        .expect("signed with the first secret");
    assert_eq!(grant.sub.as_deref(), Some("alice"));
    assert_eq!(grant.mode, Some(TokenMode::Echo));
    assert_eq!(grant.payload.as_deref(), Some(r#"{"plan":"gold"}"#));
    assert_eq!(grant.max_duration, Some(Duration::from_secs(90)));
    assert!(
        Verifier::new(&[second.as_bytes()], 0, 3600)
            .verify(token.trim(), now)
            .is_err(),
        "not with the second"
    );
    // No secret configured: a clear error, no token.
    let out = Command::new(env!("CARGO_BIN_EXE_voicegate"))
        .args(["token"])
        .env_remove("VOICEGATE__AUTH__SECRETS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth.secrets"));
}

/// The recognizer's models load on first need, yet a bad model path or grammar still stops
/// startup at once, naming it.
#[test]
fn a_bad_pocketsphinx_model_path_or_grammar_still_fails_startup() {
    let dir = std::env::temp_dir().join(format!("vg-ops-gram-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let gram = dir.join("bad.gram");
    std::fs::write(
        &gram,
        "#JSGF V1.0; grammar g; public <s> = hello xyzzyplugh ;",
    )
    .unwrap();
    for (key, value, expect) in [
        (
            "VOICEGATE__ASR__POCKETSPHINX__LM",
            "/nonexistent/en-us.lm.bin".to_owned(),
            "language model not found: /nonexistent/en-us.lm.bin",
        ),
        (
            "VOICEGATE__ASR__POCKETSPHINX__HMM",
            "/nonexistent/en-us".to_owned(),
            "no mdef: /nonexistent/en-us",
        ),
        (
            "VOICEGATE__ASR__POCKETSPHINX__GRAMMAR",
            gram.display().to_string(),
            "\"xyzzyplugh\" is not in the dictionary",
        ),
    ] {
        let t0 = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_voicegate"))
            .env(
                "VOICEGATE__HTTP__BIND",
                format!("127.0.0.1:{}", free_port()),
            )
            .env("VOICEGATE__MEDIA__BIND_IP", "127.0.0.1")
            .env("VOICEGATE__MEDIA__UDP_PORT", free_port().to_string())
            .env("VOICEGATE__LOG__FORMAT", "text")
            .env(key, &value)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{key}={value} started:\n{text}");
        assert!(text.contains(expect), "{key}={value}:\n{text}");
        assert!(t0.elapsed() < 10 * SECOND, "{key}: {:?}", t0.elapsed());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
