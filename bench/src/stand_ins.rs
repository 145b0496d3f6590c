//! `voicegate-bench stand-ins`: local recognition vendors for comparing the engines with the
//! `speech` probe: the test kit's Deepgram listen stand-in and its OpenAI-compatible
//! transcription stand-in, each holding its first result back by a fixed delay (a vendor's
//! processing time), until the process is stopped. Both "hear" the same fixed sentence.

use std::net::SocketAddr;
use std::time::Duration;
use voicegate_testkit::deepgram_server::{self, DeepgramStandIn};
use voicegate_testkit::speech_server::{self, SpeechServer};

/// What both stand-ins say they heard.
const HEARD: &str = "what is the weather like today";

/// Where the stand-ins listen and how long they hold their first result.
pub struct Args {
    /// First-result delay.
    pub delay: Duration,
    /// The Deepgram stand-in (`asr.deepgram.base_url = ws://<this>`).
    pub deepgram: SocketAddr,
    /// The OpenAI-compatible stand-in (`asr.openai.base_url = http://<this>`).
    pub openai: SocketAddr,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            delay: Duration::from_millis(100),
            deepgram: ([127, 0, 0, 1], 18201).into(),
            openai: ([127, 0, 0, 1], 18202).into(),
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
    let oa = SpeechServer::start_on(
        a.openai,
        speech_server::Behaviour::TranscribeAfter(HEARD.into(), a.delay),
    )
    .await;
    println!(
        "stand-ins (first result after {} ms): asr.deepgram.base_url = {}, asr.openai.base_url = {}",
        a.delay.as_millis(),
        dg.base_url(),
        oa.base_url()
    );
    std::future::pending::<()>().await;
    Ok(())
}
