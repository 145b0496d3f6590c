//! What every vendor engine asks of a TLS server, read from its TLS hello: HTTP/1.1 only (ALPN).
//!
//! The WebSocket engines (ElevenLabs, Cartesia, Deepgram) upgrade an HTTP/1.1 connection; awc
//! cannot open a WebSocket over HTTP/2 (RFC 8441 is not supported), and a public server offered
//! `h2` picks it, so every utterance would fail. The OpenAI-compatible pool is HTTP/1.1 only too
//! (`engines::http`): over HTTP/2 every call's requests on a worker would share one connection
//! and queue past the server's stream limit.
//!
//! A local listener reads the client's hello and closes: the engine's attempt fails, and the
//! hello says what it offered.

use futures_util::StreamExt;
use secrecy::SecretString;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use voicegate_engines::asr::deepgram::{Deepgram, DeepgramSettings};
use voicegate_engines::asr::{AsrFactory, AsrUpdate};
use voicegate_engines::tls::ClientTls;
use voicegate_engines::tts::TtsFactory;
use voicegate_engines::tts::cartesia::{CartesiaSettings, CartesiaTts};
use voicegate_engines::tts::elevenlabs::{ElevenLabsSettings, ElevenLabsTts};
use voicegate_engines::tts::openai::{OpenAiTts, OpenAiTtsSettings};

const TIMEOUT: Duration = Duration::from_secs(2);

/// A listener on a free port and the first TLS hello it receives (the whole record).
async fn hello_catcher() -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hello = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut n = 0;
        // The record header says how long the hello is.
        while n < 5 || n < 5 + u16::from_be_bytes([buf[3], buf[4]]) as usize {
            let got = tcp.read(&mut buf[n..]).await.unwrap();
            assert!(got > 0, "the client closed before its hello");
            n += got;
        }
        buf.truncate(n);
        buf
    });
    (port, hello)
}

/// The hello is a TLS handshake that offers HTTP/1.1 and not HTTP/2.
fn assert_http_1_1_only(hello: &[u8], engine: &str) {
    assert_eq!(hello[0], 22, "{engine}: a TLS handshake record");
    let has = |needle: &[u8]| hello.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"\x08http/1.1"), "{engine}: HTTP/1.1 offered");
    assert!(!has(b"\x02h2"), "{engine}: HTTP/2 not offered");
}

/// Synthesizes `text` through one utterance of `factory`'s engine: the first result.
async fn first_audio(factory: &dyn TtsFactory) -> Result<Vec<i16>, String> {
    let engine = factory.for_call();
    let mut utterance = engine.utterance();
    let mut stream = utterance.segment("hello");
    drop(utterance);
    match stream.next().await {
        Some(chunk) => chunk.map_err(|e| e.to_string()),
        None => Err("no audio".into()),
    }
}

#[actix_rt::test]
async fn elevenlabs_offers_http_1_1_only() {
    let (port, hello) = hello_catcher().await;
    let factory = ElevenLabsTts::new(ElevenLabsSettings {
        base_url: format!("wss://127.0.0.1:{port}"),
        tls: ClientTls::public(),
        api_key: SecretString::from(""),
        voice_id: "voice".into(),
        model_id: "model".into(),
        sample_rate: 16_000,
        timeout: TIMEOUT,
        stream_idle: TIMEOUT,
        max_message_bytes: 1 << 20,
        preconnect: Duration::ZERO,
    });
    assert!(
        first_audio(&factory).await.is_err(),
        "no TLS server answered"
    );
    assert_http_1_1_only(&hello.await.unwrap(), "elevenlabs");
}

#[actix_rt::test]
async fn cartesia_offers_http_1_1_only() {
    let (port, hello) = hello_catcher().await;
    let factory = CartesiaTts::new(CartesiaSettings {
        base_url: format!("wss://127.0.0.1:{port}"),
        tls: ClientTls::public(),
        api_key: SecretString::from(""),
        version: "2025-04-16".into(),
        model_id: "model".into(),
        voice_id: "voice".into(),
        language: "en".into(),
        sample_rate: 16_000,
        timeout: TIMEOUT,
        stream_idle: TIMEOUT,
        max_message_bytes: 1 << 20,
        preconnect: Duration::ZERO,
    });
    assert!(
        first_audio(&factory).await.is_err(),
        "no TLS server answered"
    );
    assert_http_1_1_only(&hello.await.unwrap(), "cartesia");
}

#[actix_rt::test]
async fn deepgram_offers_http_1_1_only() {
    let (port, hello) = hello_catcher().await;
    let engine = Deepgram::new(DeepgramSettings {
        base_url: format!("wss://127.0.0.1:{port}"),
        tls: ClientTls::public(),
        api_key: SecretString::from(""),
        model: String::new(),
        language: String::new(),
        keywords: Vec::new(),
        endpointing_ms: 300,
        connect_timeout: TIMEOUT,
        stream_idle: TIMEOUT,
        keepalive: Duration::from_secs(5),
        max_buffered_ms: 5000,
        max_message_bytes: 256 * 1024,
    })
    .for_call();
    let (mut sink, mut updates) = engine.utterance();
    sink.push(&[500; 4800]);
    sink.finish();
    let mut failed = false;
    while let Some(update) = updates.next().await {
        if let AsrUpdate::Error(_) = update {
            failed = true;
            break;
        }
    }
    assert!(failed, "no TLS server answered");
    assert_http_1_1_only(&hello.await.unwrap(), "deepgram");
}

#[actix_rt::test]
async fn the_openai_compatible_pool_offers_http_1_1_only() {
    let (port, hello) = hello_catcher().await;
    let factory = OpenAiTts::new(OpenAiTtsSettings {
        base_url: format!("https://127.0.0.1:{port}"),
        tls: ClientTls::public(),
        api_key: SecretString::from(""),
        model: "tts-test".into(),
        voice: "alloy".into(),
        sample_rate: 24_000,
        timeout: TIMEOUT,
        stream_idle: TIMEOUT,
    });
    assert!(
        first_audio(&factory).await.is_err(),
        "no TLS server answered"
    );
    assert_http_1_1_only(&hello.await.unwrap(), "openai");
}
