//! `voicegate-bench stand-ins`: local speech vendors for comparing the engines with the
//! `speech` probe, each holding its first result back by a fixed delay (a vendor's processing
//! time), until the process is stopped: the test kit's Deepgram listen stand-in and its
//! OpenAI-compatible transcription stand-in (both "hear" the same fixed sentence), and its
//! OpenAI-compatible speech, ElevenLabs and Cartesia stand-ins (a tone for the text received).

use std::net::SocketAddr;
use std::time::Duration;
use voicegate_testkit::deepgram_server::{self, DeepgramStandIn};
use voicegate_testkit::speech_server::{self, SpeechServer};
use voicegate_testkit::tts_ws_server::{self, TtsWsServer};

/// What both stand-ins say they heard.
const HEARD: &str = "what is the weather like today";

/// Where the stand-ins listen and how long they hold their first result.
pub struct Args {
    /// First-result delay.
    pub delay: Duration,
    /// How the OpenAI-compatible stand-ins treat connections: what a new one costs (the
    /// handshakes' round trips over a network) and whether they keep them. The ElevenLabs and
    /// Cartesia stand-ins hold each upgrade as long.
    pub connections: speech_server::Options,
    /// The Deepgram stand-in (`asr.deepgram.base_url = ws://<this>`).
    pub deepgram: SocketAddr,
    /// The OpenAI-compatible stand-in (`asr.openai.base_url = http://<this>`).
    pub openai: SocketAddr,
    /// The OpenAI-compatible speech stand-in (`tts.openai.base_url = http://<this>`).
    pub openai_tts: SocketAddr,
    /// The ElevenLabs stand-in (`tts.elevenlabs.base_url = ws://<this>`).
    pub elevenlabs: SocketAddr,
    /// The Cartesia stand-in (`tts.cartesia.base_url = ws://<this>`).
    pub cartesia: SocketAddr,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            delay: Duration::from_millis(100),
            connections: speech_server::Options::default(),
            deepgram: ([127, 0, 0, 1], 18201).into(),
            openai: ([127, 0, 0, 1], 18202).into(),
            openai_tts: ([127, 0, 0, 1], 18203).into(),
            elevenlabs: ([127, 0, 0, 1], 18204).into(),
            cartesia: ([127, 0, 0, 1], 18205).into(),
        }
    }
}

/// Runs the stand-ins until the process is stopped.
pub async fn run(a: Args) -> anyhow::Result<()> {
    let dg = DeepgramStandIn::start_on(
        a.deepgram,
        deepgram_server::Behaviour {
            first_result_delay: a.delay,
            ..deepgram_server::Behaviour::hears(HEARD)
        },
    )
    .await;
    let oa = SpeechServer::start_with(
        a.openai,
        speech_server::Behaviour::TranscribeAfter(HEARD.into(), a.delay),
        a.connections,
    )
    .await;
    // Two seconds of a 440 Hz tone at 24 kHz, streamed in 100 ms chunks.
    let mut tone = vec![0i16; 48_000];
    voicegate_core::tone::Tone::new(24_000, 440.0, 8000.0).fill(&mut tone);
    let speech = speech_server::Behaviour::Stream {
        pcm: tone,
        chunk: 4800,
        gap: Duration::from_millis(20),
    };
    let tts = SpeechServer::start_with(
        a.openai_tts,
        speech_server::Behaviour::After(a.delay, Box::new(speech)),
        a.connections,
    )
    .await;
    let ws = tts_ws_server::Behaviour {
        first_delay: a.delay,
        handshake_delay: a.connections.setup,
        ..Default::default()
    };
    let el = TtsWsServer::start_on(a.elevenlabs, tts_ws_server::Vendor::ElevenLabs, ws).await;
    let ca = TtsWsServer::start_on(a.cartesia, tts_ws_server::Vendor::Cartesia, ws).await;
    println!(
        "stand-ins (first result after {} ms): asr.deepgram.base_url = {}, asr.openai.base_url = {}, \
         tts.openai.base_url = {}, tts.elevenlabs.base_url = {}, tts.cartesia.base_url = {}",
        a.delay.as_millis(),
        dg.base_url(),
        oa.base_url(),
        tts.base_url(),
        el.base_url(),
        ca.base_url()
    );
    // What the OpenAI-compatible stand-ins saw, every 10 s: requests against connections.
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        println!(
            "openai stand-ins: transcription {} requests on {} connections, speech {} on {}",
            oa.requests().len(),
            oa.connections(),
            tts.requests().len(),
            tts.connections()
        );
    }
}
