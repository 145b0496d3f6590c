//! Speech synthesis engines behind one trait, chosen per call by configuration.
//!
//! An engine turns one segment of text into a stream of PCM chunks at its native rate; dropping
//! the stream cancels the synthesis (the espeak-ng worker stops at its next chunk, an HTTP
//! request is aborted). An utterance's segments are asked for in order through
//! [`TtsEngine::utterance`]: the streaming engines speak them in one vendor context, fed as the
//! text arrives, so prosody carries across segments; the others synthesize each on its own. Engines live on the call's media worker, so they need not be `Send`.
//! The [`TtsFactory`] is built once at startup (that is where a missing library or a bad
//! setting is reported) and hands each call its engine.
//!
//! Engines (`tts.engine`): `espeak` (embedded espeak-ng, offline, the default), `openai` (an
//! OpenAI-compatible `POST /v1/audio/speech`, streamed PCM), and two streaming WebSocket APIs,
//! `elevenlabs` (stream-input) and `cartesia`, which share their plumbing in [`ws`].

pub mod cartesia;
pub mod elevenlabs;
pub mod espeak;
pub mod openai;
pub mod ws;

use futures_util::Stream;
use std::pin::Pin;
use std::rc::Rc;
use voicegate_core::session::{InvalidOption, TtsOptions};

/// A synthesis in progress: PCM chunks (mono i16 at the engine's rate), then the end of the
/// stream; an `Err` item ends it as failed.
pub type SynthStream = Pin<Box<dyn Stream<Item = Result<Vec<i16>, TtsError>>>>;

/// Why a synthesis failed, by engine. The text names the engine first (`espeak: ...`,
/// `openai: ...`) and may quote the engine's server (an HTTP error body), so it is logged through
/// `untrusted::shown`.
#[derive(Debug, thiserror::Error)]
pub enum TtsError {
    /// The espeak-ng worker failed or is gone.
    #[error("espeak: {0}")]
    Espeak(#[from] espeak::EspeakError),
    /// The HTTP request failed, was refused, or its audio stream broke or stalled.
    #[error("openai: {0}")]
    OpenAi(#[from] openai::OpenAiTtsError),
    /// The ElevenLabs stream failed to connect, was refused, broke, or stalled.
    #[error("elevenlabs: {0}")]
    ElevenLabs(ws::WsTtsError),
    /// The Cartesia stream failed to connect, was refused, broke, or stalled.
    #[error("cartesia: {0}")]
    Cartesia(ws::WsTtsError),
}

impl TtsError {
    /// The engine's name, for logs.
    pub fn engine(&self) -> &'static str {
        match self {
            TtsError::Espeak(_) => espeak::ENGINE,
            TtsError::OpenAi(_) => openai::ENGINE,
            TtsError::ElevenLabs(_) => elevenlabs::ENGINE,
            TtsError::Cartesia(_) => cartesia::ENGINE,
        }
    }

    /// The audio stream went quiet past its idle limit (`tts.stream_idle_timeout_ms`): a
    /// protective limit the engine enforced, which the caller counts (the engines keep no
    /// metrics).
    pub fn stalled(&self) -> bool {
        matches!(
            self,
            TtsError::OpenAi(openai::OpenAiTtsError::Stalled(_))
                | TtsError::ElevenLabs(ws::WsTtsError::Stalled(_))
                | TtsError::Cartesia(ws::WsTtsError::Stalled(_))
        )
    }
}

/// Whether `v` can be a vendor's voice id: letters, digits, `-` and `_`, at most 64 bytes. It
/// goes into a URL path (ElevenLabs) or a JSON string (Cartesia).
fn is_voice_id(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// One call's speech engine.
pub trait TtsEngine {
    /// The engine's name, for logs.
    fn name(&self) -> &'static str;
    /// The rate of the PCM it produces.
    fn sample_rate(&self) -> u32;
    /// Starts synthesizing `text` on its own.
    fn synthesize(&self, text: &str) -> SynthStream;
    /// Starts an utterance: its segments, asked for in order, are synthesized through the
    /// returned handle, and dropping it says no segment follows. The streaming engines speak
    /// them in one vendor context ([`ws`]); the others synthesize each alone ([`EachSegment`]).
    fn utterance(self: Rc<Self>) -> Box<dyn UtteranceSynth>;
    /// An utterance is likely soon (the call started, the caller finished a turn): the
    /// streaming engines open their vendor connection ahead ([`ws::Preconnect`]), so the
    /// utterance does not wait for it; the others have nothing to prepare. Never blocks.
    fn prepare(&self) {}
}

/// One utterance's segments, synthesized in order.
pub trait UtteranceSynth {
    /// Starts synthesizing the utterance's next segment; its audio only.
    fn segment(&mut self, text: &str) -> SynthStream;
}

/// Each segment synthesized on its own, for the engines without vendor contexts.
pub struct EachSegment(pub Rc<dyn TtsEngine>);

impl UtteranceSynth for EachSegment {
    fn segment(&mut self, text: &str) -> SynthStream {
        self.0.synthesize(text)
    }
}

/// Makes each call's engine.
pub trait TtsFactory: Send + Sync {
    /// The engine for a new call; runs on the call's worker.
    fn for_call(&self) -> Rc<dyn TtsEngine>;
    /// The engine with a session's options over the configured ones (`session.update`), or the
    /// first option it cannot take. Runs on the call's worker and never blocks: an engine
    /// checks what it can know locally (a local engine's voices), a remote server the rest.
    fn with_options(&self, options: &TtsOptions) -> Result<Rc<dyn TtsEngine>, InvalidOption>;
}
