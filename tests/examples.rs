//! The examples in `examples/` (the Python and Node agents, the IVR menu) run as their own
//! processes, exactly as a team would run them, against the real voicegate, the chat stand-in
//! and a real WebRTC client peer that speaks (espeak-ng as Opus, recognized by pocketsphinx
//! with a grammar). Their packages come from `scripts/setup.sh --test`.

mod common;

use common::{TestServer, eventually, spoken};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use voicegate_testkit::ClientPeer;
use voicegate_testkit::chat_server::{ChatBehaviour, ChatServer};

const SECOND: Duration = Duration::from_secs(1);

/// What the stand-in answers first: long enough (about 15 s of speech, streamed over 8 s) that
/// the caller can talk over it while the model is still streaming.
const LONG: &str = "The weather today is sunny with a light breeze from the west. In the \
    afternoon it will be warm, around twenty four degrees, and the evening will stay dry and \
    clear. Tomorrow brings a few clouds in the morning and a chance of rain later in the day, so \
    take an umbrella if you go out.";
const SHORT: &str = "Sure, I will stop here.";

fn repo(path: &str) -> String {
    format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))
}

/// An example's process, killed when dropped; its stderr is kept for failure messages.
struct Example {
    child: Child,
    port: u16,
    log: Arc<Mutex<String>>,
}

impl Example {
    fn start(program: &str, script: &str, env: &[(&str, &str)]) -> Example {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let program = if program.starts_with('/') || program == "node" {
            PathBuf::from(program)
        } else {
            PathBuf::from(repo(program))
        };
        assert!(
            program == std::path::Path::new("node") || program.exists(),
            "{} is missing: run scripts/setup.sh --test",
            program.display()
        );
        let mut child = Command::new(&program)
            .arg(repo(script))
            .env("PORT", port.to_string())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
                l.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let up = rx.recv_timeout(15 * SECOND).is_ok();
        let example = Example { child, port, log };
        assert!(up, "{script} did not start:\n{}", example.log());
        example
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Frames of the peer's audio from packet `from` on that carry sound.
fn loud_from(peer: &ClientPeer, from: usize) -> usize {
    let rx = peer.received();
    let pcm = voicegate_testkit::peer::decode(&rx[from.min(rx.len())..]);
    pcm.chunks(voicegate_core::frame::SPEECH_FRAME_SAMPLES)
        .filter(|f| voicegate_core::listen::rms(f) > 200.0)
        .count()
}

/// Waits until the peer heard something and then nothing for a while (a prompt has played).
async fn wait_quiet(peer: &ClientPeer, within: Duration) {
    let t0 = std::time::Instant::now();
    let mut last = (0, std::time::Instant::now());
    while t0.elapsed() < within {
        let n = peer.received_count();
        if n != last.0 {
            last = (n, std::time::Instant::now());
        } else if n > 0 && last.1.elapsed() > Duration::from_millis(700) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "the greeting did not play and end: {} packets",
        peer.received_count()
    );
}

fn words(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The agent contract: the caller's phrase reaches the model with the history, the streamed
/// answer arrives as audio, a barge-in cancels the request and the next request's history has
/// the assistant turn cut where the caller stopped hearing it.
async fn agent_talks_and_is_interrupted(program: &str, script: &str) {
    let chat = ChatServer::start(ChatBehaviour::Stream {
        replies: vec![LONG.into(), SHORT.into()],
        first_after: Duration::from_millis(100),
        gap: Duration::from_millis(150),
    })
    .await;
    let base = chat.base_url();
    let agent = Example::start(
        program,
        script,
        &[
            ("LLM_BASE_URL", base.as_str()),
            ("LLM_MODEL", "standin-1"),
            ("LLM_API_KEY", "sk-test-not-a-real-key"),
        ],
    );
    let url = agent.url();
    let grammar = repo("tests/fixtures/test.gram");
    let server = TestServer::start(&[
        ("dialog.url", url.as_str()),
        ("asr.pocketsphinx.grammar", grammar.as_str()),
    ]);
    let peer = ClientPeer::call(server.http, "/webrtc/v1/offer")
        .await
        .unwrap();
    peer.wait_connected(5 * SECOND).await.unwrap();
    wait_quiet(&peer, 15 * SECOND).await;

    let before = peer.received_count();
    peer.send_paced(&spoken("what is the weather like today", Duration::from_millis(800)).await)
        .await
        .unwrap();
    let asked = chat.wait_for(10 * SECOND, |r| !r.is_empty()).await;
    assert!(
        asked.is_some(),
        "no request reached the model:\n{}",
        agent.log()
    );
    let first = chat.requests()[0].clone();
    let m = first.messages();
    assert_eq!(m[0].0, "system");
    assert_eq!(
        m.last().unwrap(),
        &(
            "user".to_owned(),
            "what is the weather like today".to_owned()
        ),
        "{m:?}"
    );
    assert_eq!(first.body["stream"], true);
    assert!(
        first
            .headers
            .iter()
            .any(|(k, v)| k == "authorization" && v == "Bearer sk-test-not-a-real-key")
    );
    // The answer arrives as audio: a second and a half of sound beyond the greeting.
    assert!(
        eventually(10 * SECOND, || loud_from(&peer, before) >= 75).await,
        "the answer was not heard: {} loud frames\n{}",
        loud_from(&peer, before),
        agent.log()
    );
    assert!(
        !chat.requests()[0].completed,
        "the model should still be streaming"
    );

    // The caller talks over the answer.
    peer.send_paced(&spoken("stop talking please", Duration::from_millis(800)).await)
        .await
        .unwrap();
    let second = chat.wait_for(10 * SECOND, |r| r.len() >= 2).await;
    assert!(second.is_some(), "no second request:\n{}", agent.log());
    let requests = chat.requests();
    assert!(
        requests[0].cancelled && !requests[0].completed,
        "the barge-in did not cancel the first request"
    );
    let m = requests[1].messages();
    let n = m.len();
    assert_eq!(
        m[n - 1],
        ("user".to_owned(), "stop talking please".to_owned()),
        "{m:?}"
    );
    let (role, heard) = &m[n - 2];
    assert_eq!(role, "assistant", "{m:?}");
    // `played_text` marks the segment the barge-in cut with a trailing "…"; the text the model
    // had streamed by then is longer (speech is slower than tokens) and has no mark.
    assert!(heard.ends_with('…'), "not cut to played_text: {heard:?}");
    let heard = words(heard.trim_end_matches('…'));
    let streamed = requests[0].tokens_sent.len();
    assert!(
        !heard.is_empty() && heard.split(' ').count() < streamed && words(LONG).starts_with(&heard),
        "the assistant turn should be the start of the answer, cut where the caller stopped \
         hearing it ({streamed} tokens had been streamed): {heard:?}"
    );
    assert_eq!(
        m[n - 3],
        (
            "user".to_owned(),
            "what is the weather like today".to_owned()
        )
    );

    // The second answer is heard too.
    let after = peer.received_count();
    assert!(
        eventually(10 * SECOND, || loud_from(&peer, after) >= 25).await,
        "the second answer was not heard\n{}",
        agent.log()
    );
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_agent_talks_and_is_interrupted() {
    agent_talks_and_is_interrupted(
        "examples/.venv/bin/python",
        "examples/python-agent/agent.py",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_agent_talks_and_is_interrupted() {
    assert!(
        std::path::Path::new(&repo("examples/node-agent/node_modules/ws")).exists(),
        "run scripts/setup.sh --test"
    );
    agent_talks_and_is_interrupted("node", "examples/node-agent/agent.mjs").await;
}

/// The menu: a spoken choice (recognized through the menu's grammar) and a key press each end
/// the call with the reason naming the choice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ivr_menu_takes_a_spoken_choice_and_a_key() {
    let menu = Example::start("examples/.venv/bin/python", "examples/ivr-menu/ivr.py", &[]);
    let url = menu.url();
    let grammar = repo("examples/ivr-menu/menu.gram");
    let server = TestServer::start(&[
        ("dialog.url", url.as_str()),
        ("asr.pocketsphinx.grammar", grammar.as_str()),
    ]);

    let peer = ClientPeer::call(server.http, "/webrtc/v1/offer")
        .await
        .unwrap();
    peer.wait_connected(5 * SECOND).await.unwrap();
    assert!(
        eventually(5 * SECOND, || loud_from(&peer, 0) >= 25).await,
        "no menu prompt"
    );
    // Talking over the menu is fine: the caller need not wait for it.
    peer.send_paced(&spoken("support", Duration::from_millis(800)).await)
        .await
        .unwrap();
    let reason = server.end_reason(&peer.call_id, 15 * SECOND).await;
    assert_eq!(
        reason.as_deref(),
        Some("transfer-support"),
        "{}",
        menu.log()
    );

    let peer = ClientPeer::call(server.http, "/webrtc/v1/offer")
        .await
        .unwrap();
    peer.wait_connected(5 * SECOND).await.unwrap();
    assert!(
        eventually(5 * SECOND, || loud_from(&peer, 0) >= 25).await,
        "no menu prompt"
    );
    let pt = voicegate_core::sdp::check_offer(&peer.offer)
        .unwrap()
        .telephone_event_pt
        .expect("the client offers DTMF");
    peer.send_dtmf(pt, '1').await.unwrap();
    let reason = server.end_reason(&peer.call_id, 15 * SECOND).await;
    assert_eq!(reason.as_deref(), Some("transfer-sales"), "{}", menu.log());
}
