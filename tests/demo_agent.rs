//! The embedded demo app as an LLM agent (`demo.llm.*`), against the chat stand-in that streams
//! SSE tokens with a pause between them: tokens are spoken as they arrive, the history carries
//! the conversation, a barge-in cancels the request and cuts the assistant's turn to what was
//! heard, key presses reach the model, and a failing or misbehaving model ends in something the
//! caller hears, within the configured limits.

mod common;

use common::TestServer;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use voicegate_actors::metrics::{Limit, metrics};
use voicegate_testkit::chat_server::{ChatBehaviour, ChatServer};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const ANSWER: &str = "It is sunny and warm today. Enjoy the weather!";
const SECOND: Duration = Duration::from_secs(1);

fn stand_in(replies: &[&str], first_after_ms: u64, gap_ms: u64) -> ChatBehaviour {
    ChatBehaviour::Stream {
        replies: replies.iter().map(|r| r.to_string()).collect(),
        first_after: Duration::from_millis(first_after_ms),
        gap: Duration::from_millis(gap_ms),
    }
}

fn server(chat: &ChatServer, extra: &[(&str, &str)]) -> TestServer {
    let base = chat.base_url();
    let mut s = vec![
        ("demo.llm.base_url", base.as_str()),
        ("demo.llm.model", "standin-1"),
        ("demo.llm.api_key", "sk-test-not-a-real-key"),
        ("demo.llm.system_prompt", "Be brief."),
    ];
    s.extend_from_slice(extra);
    TestServer::start(&s)
}

async fn connect(server: &TestServer) -> Ws {
    let url = format!("{}&call_id=wrtc-x", server.demo_url);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    send(
        &mut ws,
        json!({"type": "call.started", "call_id": "wrtc-x"}),
    )
    .await;
    let greet = next_command(&mut ws).await;
    assert_eq!(
        greet["text"],
        "Hello! I am an AI assistant. How can I help you?"
    );
    ws
}

async fn next_command(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(5 * SECOND, ws.next())
            .await
            .expect("a command in time");
        if let Some(Ok(Message::Text(t))) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

async fn say(ws: &mut Ws, text: &str) {
    send(
        ws,
        json!({"type": "asr.final", "call_id": "wrtc-x", "text": text}),
    )
    .await;
}

/// The chunks of one streamed answer, each with when it arrived, up to its end.
async fn answer(ws: &mut Ws) -> (String, Vec<(Instant, String)>) {
    let mut chunks = Vec::new();
    loop {
        let c = next_command(ws).await;
        assert_eq!(c["type"], "tts.stream", "{c}");
        let id = c["utterance_id"].as_str().unwrap().to_owned();
        chunks.push((Instant::now(), c["text"].as_str().unwrap().to_owned()));
        if c["stream_end"] == true {
            return (id, chunks);
        }
    }
}

fn text(chunks: &[(Instant, String)]) -> String {
    chunks.iter().map(|(_, t)| t.as_str()).collect()
}

fn pairs(m: &[(&str, &str)]) -> Vec<(String, String)> {
    m.iter()
        .map(|(r, c)| (r.to_string(), c.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_spoken_as_they_arrive_and_the_history_carries_the_turns() {
    let chat = ChatServer::start(stand_in(&[ANSWER, "Second answer.", "Third."], 50, 150)).await;
    let server = server(&chat, &[]);
    let mut ws = connect(&server).await;

    say(&mut ws, "what is the weather like today").await;
    let (id, chunks) = answer(&mut ws).await;
    assert_eq!(id, "turn-1");
    assert_eq!(text(&chunks), ANSWER);
    let first = chat.requests()[0].clone();
    let last_token = *first.tokens_sent.last().expect("tokens were sent");
    assert!(
        chunks[0].0 < last_token,
        "the first tts.stream left {:?} after the last token",
        chunks[0].0 - last_token
    );
    assert!(chunks.len() >= 8, "one chunk per token: {chunks:?}");
    assert_eq!(first.path, "/v1/chat/completions");
    let auth = first.headers.iter().find(|(k, _)| k == "authorization");
    assert_eq!(
        auth.map(|(_, v)| v.as_str()),
        Some("Bearer sk-test-not-a-real-key")
    );
    assert_eq!(first.body["stream"], true);
    assert_eq!(first.body["model"], "standin-1");
    assert_eq!(
        first.messages(),
        pairs(&[
            ("system", "Be brief."),
            (
                "assistant",
                "Hello! I am an AI assistant. How can I help you?"
            ),
            ("user", "what is the weather like today"),
        ])
    );

    say(&mut ws, "and tomorrow").await;
    let (id, chunks) = answer(&mut ws).await;
    assert_eq!(
        (id.as_str(), text(&chunks).as_str()),
        ("turn-2", "Second answer.")
    );
    let second = chat.requests()[1].messages();
    assert_eq!(
        second[2..],
        pairs(&[
            ("user", "what is the weather like today"),
            ("assistant", ANSWER),
            ("user", "and tomorrow"),
        ])[..]
    );

    // The second answer was complete but still playing when the caller talked over it: the
    // history keeps what was heard.
    send(
        &mut ws,
        json!({"type": "tts.interrupt", "call_id": "wrtc-x", "utterance_id": "turn-2",
        "played_ms": 300, "played_text": "Second…"}),
    )
    .await;
    say(&mut ws, "stop").await;
    let _ = answer(&mut ws).await;
    let third = chat.requests()[2].messages();
    assert_eq!(
        third[third.len() - 3..],
        pairs(&[
            ("user", "and tomorrow"),
            ("assistant", "Second…"),
            ("user", "stop")
        ])[..]
    );
    assert!(chat.requests().iter().all(|r| r.completed && !r.cancelled));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_barge_in_cancels_the_request_and_the_history_ends_where_the_caller_stopped_hearing() {
    let long =
        "Let me tell you a long story about a fox who lived in a quiet forest near the river.";
    let chat = ChatServer::start(stand_in(&[long, "Sure."], 50, 250)).await;
    let server = server(&chat, &[]);
    let mut ws = connect(&server).await;

    say(&mut ws, "tell me a story").await;
    for _ in 0..3 {
        let c = next_command(&mut ws).await;
        assert_eq!(c["type"], "tts.stream");
        assert_ne!(c["stream_end"], true);
    }
    send(
        &mut ws,
        json!({"type": "tts.interrupt", "call_id": "wrtc-x", "utterance_id": "turn-1",
        "played_ms": 900, "played_text": "Let me tell…"}),
    )
    .await;
    let cancelled = chat
        .wait_for(2 * SECOND, |r| r.len() == 1 && r[0].cancelled)
        .await;
    assert!(
        cancelled.is_some(),
        "the stand-in never saw the request closed: {:?}",
        chat.requests()
    );
    // The interrupted stream is closed; no more of its tokens follow.
    loop {
        let c = next_command(&mut ws).await;
        assert_eq!(c["utterance_id"], "turn-1");
        if c["stream_end"] == true {
            assert_eq!(c["text"], "");
            break;
        }
    }
    say(&mut ws, "no thanks").await;
    let (id, chunks) = answer(&mut ws).await;
    assert_eq!((id.as_str(), text(&chunks).as_str()), ("turn-2", "Sure."));
    let second = chat.requests()[1].messages();
    assert_eq!(
        second[second.len() - 3..],
        pairs(&[
            ("user", "tell me a story"),
            ("assistant", "Let me tell…"),
            ("user", "no thanks")
        ])[..]
    );
    assert!(!chat.requests()[0].completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_press_reaches_the_model_as_a_user_message() {
    let chat = ChatServer::start(stand_in(&["You chose sales."], 10, 10)).await;
    let server = server(&chat, &[]);
    let mut ws = connect(&server).await;
    send(
        &mut ws,
        json!({"type": "dtmf", "call_id": "wrtc-x", "digit": "5", "end": true}),
    )
    .await;
    let (_, chunks) = answer(&mut ws).await;
    assert_eq!(text(&chunks), "You chose sales.");
    let m = chat.requests()[0].messages();
    assert_eq!(
        m.last().unwrap(),
        &(
            "user".to_owned(),
            "(The caller pressed the key 5 on the keypad.)".to_owned()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_model_ends_in_an_apology_and_the_call_goes_on() {
    let chat = ChatServer::start(ChatBehaviour::Fail(503)).await;
    let server = server(&chat, &[]);
    let mut ws = connect(&server).await;
    say(&mut ws, "hello").await;
    let (_, chunks) = answer(&mut ws).await;
    assert_eq!(
        text(&chunks),
        "Sorry, I cannot answer right now. Please try again."
    );
    // The next turn asks again; the apology is not in the history.
    say(&mut ws, "hello again").await;
    let _ = answer(&mut ws).await;
    let m = chat.requests()[1].messages();
    assert!(m.iter().all(|(_, c)| !c.contains("Sorry")), "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_never_finishes_is_cut_off_at_the_timeout() {
    let chat = ChatServer::start(ChatBehaviour::Stall).await;
    let server = server(&chat, &[("demo.llm.timeout_ms", "1000")]);
    let hits = metrics().limit_hits(Limit::DemoLlmTimeout);
    let mut ws = connect(&server).await;
    let t0 = Instant::now();
    say(&mut ws, "hello").await;
    let (_, chunks) = answer(&mut ws).await;
    let took = t0.elapsed();
    assert_eq!(
        text(&chunks),
        "Sorry, I cannot answer right now. Please try again."
    );
    assert!(
        (900..3000).contains(&took.as_millis()),
        "cut off after {took:?}"
    );
    assert!(
        chat.wait_for(2 * SECOND, |r| r[0].cancelled)
            .await
            .is_some(),
        "the stalled request was not closed"
    );
    assert!(
        metrics().limit_hits(Limit::DemoLlmTimeout) > hits,
        "counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_answer_is_cut_off_at_the_size_limit() {
    let chat = ChatServer::start(ChatBehaviour::Flood { bytes: 200 }).await;
    let server = server(&chat, &[("demo.llm.max_response_bytes", "8192")]);
    let hits = metrics().limit_hits(Limit::DemoLlmResponseBytes);
    let mut ws = connect(&server).await;
    say(&mut ws, "hello").await;
    let (_, chunks) = answer(&mut ws).await;
    let said = text(&chunks);
    assert!(said.starts_with("a a a"), "what came is kept: {said:?}");
    assert!(said.len() < 8192, "{} bytes spoken", said.len());
    assert!(
        chat.wait_for(2 * SECOND, |r| r[0].cancelled)
            .await
            .is_some(),
        "the flood was not cut off"
    );
    assert!(
        metrics().limit_hits(Limit::DemoLlmResponseBytes) > hits,
        "counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_is_bounded() {
    let chat = ChatServer::start(stand_in(&["Okay."], 1, 1)).await;
    let server = server(&chat, &[("demo.llm.max_history_messages", "4")]);
    let mut ws = connect(&server).await;
    for turn in ["one", "two", "three", "four"] {
        say(&mut ws, turn).await;
        let _ = answer(&mut ws).await;
    }
    let m = chat.requests()[3].messages();
    assert_eq!(
        m,
        pairs(&[
            ("system", "Be brief."),
            ("user", "three"),
            ("assistant", "Okay."),
            ("user", "four"),
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_voicegate_may_dial_the_agent() {
    let chat = ChatServer::start(stand_in(&["x"], 1, 1)).await;
    let server = server(&chat, &[]);
    common::assert_demo_refuses_strangers(&server).await;
    // The key is redacted wherever the dial URL is logged.
    let key = server.demo_url.split("demo_key=").nth(1).unwrap();
    let shown = voicegate_core::dialog::redact(&server.demo_url.parse().unwrap());
    assert!(!shown.contains(key), "{shown}");
}
