//! The OpenAI-compatible engines keep their connections to the speech server: a request after
//! the first (the same call's or another call's on the same worker) goes out on the connection
//! the first opened, a connection the server closed while idle is replaced without failing a
//! request, and a request dropped mid-answer does not leave its connection to the next one.
//! Against the local stand-in for a vendor's API, which keeps connections alive like one.

use futures_util::StreamExt;
use secrecy::SecretString;
use std::rc::Rc;
use std::time::Duration;
use voicegate_engines::asr::openai::{OpenAiAsr, OpenAiAsrSettings};
use voicegate_engines::asr::{AsrEngine, AsrFactory, AsrUpdate};
use voicegate_engines::tls::ClientTls;
use voicegate_engines::tts::openai::{OpenAiTts, OpenAiTtsSettings};
use voicegate_engines::tts::{TtsEngine, TtsFactory};
use voicegate_testkit::speech_server::{Behaviour, SpeechServer};

fn tts(server: &SpeechServer) -> OpenAiTts {
    OpenAiTts::new(tts_settings(server))
}

fn tts_settings(server: &SpeechServer) -> OpenAiTtsSettings {
    OpenAiTtsSettings {
        base_url: server.base_url(),
        tls: ClientTls::public(),
        api_key: SecretString::from("test-key"),
        model: "tts-test".into(),
        voice: "alloy".into(),
        sample_rate: 24_000,
        timeout: Duration::from_secs(2),
        stream_idle: Duration::from_secs(2),
    }
}

fn asr(server: &SpeechServer) -> OpenAiAsr {
    OpenAiAsr::new(OpenAiAsrSettings {
        base_url: server.base_url(),
        tls: ClientTls::public(),
        api_key: SecretString::from(""),
        model: "whisper-test".into(),
        language: String::new(),
        timeout: Duration::from_secs(2),
        stream_idle: Duration::from_secs(2),
        max_reply_bytes: 1 << 20,
        stream: false,
        logprobs: false,
    })
}

/// 0.1 s of audio at 24 kHz, streamed in four pieces.
fn speech() -> Behaviour {
    Behaviour::Stream {
        pcm: vec![1000; 2400],
        chunk: 1200,
        gap: Duration::from_millis(5),
    }
}

/// Synthesizes `text` to the end: the samples, or the error's text.
async fn synthesize(engine: &Rc<dyn TtsEngine>, text: &str) -> Result<usize, String> {
    let mut stream = engine.synthesize(text);
    let mut samples = 0;
    while let Some(chunk) = stream.next().await {
        samples += chunk.map_err(|e| e.to_string())?.len();
    }
    Ok(samples)
}

/// Recognizes 0.3 s of audio: the final text, or the error's text.
async fn recognize(engine: &Rc<dyn AsrEngine>) -> Result<String, String> {
    let (mut sink, mut updates) = engine.utterance();
    sink.push(&[500; 4800]);
    sink.finish();
    while let Some(update) = updates.next().await {
        match update {
            AsrUpdate::Final(text, _) => return Ok(text.unwrap_or_default()),
            AsrUpdate::Error(e) => return Err(e.to_string()),
            AsrUpdate::Partial(..) => {}
        }
    }
    Err("the stream ended without a result".into())
}

#[actix_rt::test]
async fn sentences_of_two_calls_share_one_connection() {
    let server = SpeechServer::start(speech()).await;
    let factory = tts(&server);
    let (first, second) = (factory.for_call(), factory.for_call());
    for engine in [&first, &second, &first] {
        assert_eq!(synthesize(engine, "hello").await, Ok(2400));
    }
    assert_eq!(server.requests().len(), 3);
    assert_eq!(
        server.connections(),
        1,
        "the second and third reused the first's"
    );
    // Every request still carries its own key.
    assert!(server.requests().iter().all(|r| {
        r.headers
            .iter()
            .any(|(k, v)| k == "authorization" && v == "Bearer test-key")
    }));
}

#[actix_rt::test]
async fn utterances_share_one_connection_and_an_error_answer_keeps_it() {
    let server = SpeechServer::start(Behaviour::Script(vec![
        Behaviour::Transcribe("one".into()),
        Behaviour::Fail(500),
        Behaviour::Transcribe("three".into()),
    ]))
    .await;
    let engine = asr(&server).for_call();
    assert_eq!(recognize(&engine).await, Ok("one".into()));
    let failed = recognize(&engine)
        .await
        .expect_err("the server answered 500");
    assert!(failed.contains("500"), "{failed}");
    assert_eq!(recognize(&engine).await, Ok("three".into()));
    assert_eq!(server.connections(), 1);
}

#[actix_rt::test]
async fn a_connection_the_server_closed_while_idle_is_replaced_without_a_failure() {
    // Servers close idle connections after a few seconds (uvicorn after 5); here after 0.2 s.
    let server = SpeechServer::start_closing_idle(speech(), Duration::from_millis(200)).await;
    let tts = tts(&server).for_call();
    let stt_server = SpeechServer::start_closing_idle(
        Behaviour::Transcribe("again".into()),
        Duration::from_millis(200),
    )
    .await;
    let stt = asr(&stt_server).for_call();
    assert_eq!(synthesize(&tts, "first").await, Ok(2400));
    assert_eq!(recognize(&stt).await, Ok("again".into()));
    // Well past the server's idle time, even on a loaded machine.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(synthesize(&tts, "after the close").await, Ok(2400));
    assert_eq!(recognize(&stt).await, Ok("again".into()));
    assert_eq!(server.connections(), 2, "the closed one was not used");
    assert_eq!(stt_server.connections(), 2);
}

#[actix_rt::test]
async fn a_synthesis_dropped_mid_answer_does_not_hand_its_connection_on() {
    // A long answer the engine stops reading (a barge-in), then a whole one.
    let server = SpeechServer::start(Behaviour::Script(vec![
        Behaviour::Stream {
            pcm: vec![1000; 24_000],
            chunk: 480,
            gap: Duration::from_millis(10),
        },
        speech(),
    ]))
    .await;
    let engine = tts(&server).for_call();
    let mut stream = engine.synthesize("a long answer");
    let first = stream.next().await.expect("audio").expect("no error");
    assert!(!first.is_empty());
    drop(stream);
    // The next answer is whole: none of the first's remaining audio reaches it.
    assert_eq!(synthesize(&engine, "the next one").await, Ok(2400));
    assert_eq!(server.connections(), 2);
}

#[actix_rt::test]
async fn a_request_whose_connection_closes_unanswered_is_sent_once_more_on_a_new_one() {
    // The second request finds the server closing the connection without an answer (the race a
    // keep-alive timeout leaves: the server closed just as the request went out).
    let server = SpeechServer::start(Behaviour::Script(vec![
        speech(),
        Behaviour::Script(vec![]),
        speech(),
        Behaviour::Script(vec![]),
        Behaviour::Script(vec![]),
    ]))
    .await;
    let engine = tts(&server).for_call();
    assert_eq!(synthesize(&engine, "one").await, Ok(2400));
    assert_eq!(
        synthesize(&engine, "two").await,
        Ok(2400),
        "answered on the retry"
    );
    let inputs: Vec<_> = server
        .requests()
        .iter()
        .map(|r| r.body["input"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(inputs, ["one", "two", "two"]);
    assert_eq!(server.connections(), 2);
    // Once only: a server that drops it again fails the sentence.
    let failed = synthesize(&engine, "three")
        .await
        .expect_err("dropped twice");
    assert!(failed.contains("disconnected"), "{failed}");
    assert_eq!(server.requests().len(), 5);

    // The recognizer's uploads likewise.
    let server = SpeechServer::start(Behaviour::Script(vec![
        Behaviour::Transcribe("one".into()),
        Behaviour::Script(vec![]),
        Behaviour::Transcribe("two".into()),
    ]))
    .await;
    let engine = asr(&server).for_call();
    assert_eq!(recognize(&engine).await, Ok("one".into()));
    assert_eq!(recognize(&engine).await, Ok("two".into()));
    let forms = server.requests();
    assert_eq!(forms.len(), 3);
    let file = |i: usize| forms[i].form.as_ref().expect("a form").file.len();
    assert!(
        file(1) > 9000 && file(1) == file(2),
        "the same upload, whole, twice"
    );
}

#[actix_rt::test]
async fn over_tls_the_pool_trusts_what_it_is_given_and_keeps_each_trust_apart() {
    // A self-hosted speech server behind a private CA (`vendor_tls.ca_file`).
    let ca = voicegate_testkit::tls::TestCa::new();
    let server = SpeechServer::start_tls(speech(), ca.server.clone()).await;
    assert!(server.base_url().starts_with("https://"));
    let trusting = ClientTls::new(false, Some(ca.ca_pem.as_bytes()), "vendor_tls.ca_file").unwrap();
    let engine = |tls: &ClientTls| {
        OpenAiTts::new(OpenAiTtsSettings {
            tls: tls.clone(),
            ..tts_settings(&server)
        })
        .for_call()
    };
    let private = engine(&trusting);
    assert_eq!(synthesize(&private, "one").await, Ok(2400));
    assert_eq!(synthesize(&private, "two").await, Ok(2400));
    assert_eq!(
        server.connections(),
        1,
        "both sentences on one TLS connection"
    );
    // The public roots alone do not trust it, and that pool does not borrow the other's
    // connection.
    let public = engine(&ClientTls::public());
    let refused = synthesize(&public, "three").await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(server.connections(), 2);
    assert_eq!(synthesize(&private, "four").await, Ok(2400));
    assert_eq!(
        server.connections(),
        2,
        "the trusted pool kept its connection"
    );
}
