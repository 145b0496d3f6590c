//! Speech recognition engines behind one trait, chosen per call by configuration.
//!
//! An engine recognizes one utterance at a time, as cut by the endpointer: audio goes into an
//! [`UtteranceSink`] (16 kHz mono) and results come out of a stream: partial hypotheses while the
//! caller speaks (if the engine has them), then exactly one `Final`. Engines do their blocking
//! work off the call's worker (pocketsphinx on decoder threads, HTTP asynchronously).
//!
//! Engines (`asr.engine`): `pocketsphinx` (embedded, offline, the default), `openai` (an
//! OpenAI-compatible `POST /v1/audio/transcriptions` per utterance) and `deepgram` (Deepgram's
//! streaming listen API over a WebSocket per utterance, with partials as the caller speaks).
//! A streaming engine needs nothing more from the trait: the sink takes audio as it comes and
//! the stream gives partials before the final.

pub mod deepgram;
pub mod openai;
pub mod pocketsphinx;

use futures_util::Stream;
use std::pin::Pin;
use std::rc::Rc;
use voicegate_core::session::{AsrOptions, InvalidOption};

/// A result from the engine.
#[derive(Debug)]
pub enum AsrUpdate {
    /// The hypothesis so far, and how confident the engine is of it (0 to 1), if it says.
    Partial(String, Option<f32>),
    /// The utterance's final text (`None` when nothing was recognized: noise) and how
    /// confident the engine is of it (0 to 1), if it says.
    Final(Option<String>, Option<f32>),
    /// The engine failed for this utterance, or for the rest of the call
    /// ([`AsrError::is_fatal`]).
    Error(AsrError),
}

/// Why an utterance was not recognized, by engine. The text names the engine first
/// (`pocketsphinx: ...`, `openai asr: ...`); it reaches the dialog app as `asr.error` and may quote
/// the engine's server (an HTTP error body).
#[derive(Debug, thiserror::Error)]
pub enum AsrError {
    /// The embedded decoder failed, refused the utterance, or is gone.
    #[error("pocketsphinx: {0}")]
    Pocketsphinx(#[from] pocketsphinx::PocketsphinxError),
    /// The transcription request failed, was refused, or its reply broke, stalled or made no
    /// sense.
    #[error("openai asr: {0}")]
    OpenAi(#[from] openai::OpenAiAsrError),
    /// The streaming session failed to open, broke, stalled, overflowed, or the server
    /// reported an error or closed it mid-utterance.
    #[error("deepgram: {0}")]
    Deepgram(#[from] deepgram::DeepgramError),
}

impl AsrError {
    /// Recognition will not work for the rest of the call (the engine is gone); otherwise only
    /// this utterance is lost.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            AsrError::Pocketsphinx(pocketsphinx::PocketsphinxError::Gone)
        )
    }

    /// The protective limit the engine enforced to fail this utterance, if it was one; the
    /// caller counts it (the engines keep no metrics).
    pub fn limit(&self) -> Option<AsrLimit> {
        use deepgram::DeepgramError as D;
        use openai::OpenAiAsrError as O;
        use pocketsphinx::PocketsphinxError as P;
        match self {
            AsrError::OpenAi(O::Stalled(_)) | AsrError::Deepgram(D::Stalled(_)) => {
                Some(AsrLimit::StreamIdle)
            }
            AsrError::Pocketsphinx(P::Refused(_)) => Some(AsrLimit::QueueFull),
            AsrError::Pocketsphinx(P::AudioStopped(_)) => Some(AsrLimit::AudioGap),
            AsrError::OpenAi(O::TooLarge(_)) => Some(AsrLimit::ReplyBytes),
            AsrError::Deepgram(D::TooBig(_)) => Some(AsrLimit::MessageBytes),
            _ => None,
        }
    }

    /// The reply went quiet past its idle limit ([`AsrLimit::StreamIdle`]).
    pub fn stalled(&self) -> bool {
        self.limit() == Some(AsrLimit::StreamIdle)
    }

    /// The decoder queue's bound refused the utterance ([`AsrLimit::QueueFull`]).
    pub fn refused(&self) -> bool {
        self.limit() == Some(AsrLimit::QueueFull)
    }
}

/// A protective limit an engine enforces on an utterance (failing it with `asr.error`), by the
/// key that sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsrLimit {
    /// The reply went quiet past `asr.stream_idle_timeout_ms` (the HTTP engine's body, the
    /// Deepgram stream once the utterance ended).
    StreamIdle,
    /// The decoder queue was full (`asr.pocketsphinx.queue_max`): refused at once.
    QueueFull,
    /// The utterance's audio stopped coming for `asr.pocketsphinx.audio_gap_max_ms` (the
    /// caller's network dropped mid-utterance): its decoder was freed.
    AudioGap,
    /// The transcription reply was larger than `asr.openai.max_reply_bytes`.
    ReplyBytes,
    /// A Deepgram message declared more than `asr.deepgram.max_message_bytes`.
    MessageBytes,
}

/// Results of one utterance.
pub type AsrStream = Pin<Box<dyn Stream<Item = AsrUpdate>>>;

/// Where an utterance's audio goes.
pub trait UtteranceSink {
    /// More audio (16 kHz mono).
    fn push(&mut self, pcm: &[i16]);
    /// The utterance ended; the final result follows on the stream.
    fn finish(self: Box<Self>);
}

/// One call's recognizer.
pub trait AsrEngine {
    /// The engine's name, for logs.
    fn name(&self) -> &'static str;
    /// Starts recognizing one utterance.
    fn utterance(&self) -> (Box<dyn UtteranceSink>, AsrStream);
}

/// Makes each call's engine.
pub trait AsrFactory: Send + Sync {
    /// The engine for a new call; runs on the call's worker.
    fn for_call(&self) -> Rc<dyn AsrEngine>;
    /// The engine with a session's options over the configured ones (`session.update`), or the
    /// first option it cannot take. Runs on the call's worker and never blocks.
    fn with_options(&self, options: &AsrOptions) -> Result<Rc<dyn AsrEngine>, InvalidOption>;
}

/// A WAV file (RIFF, 16-bit PCM mono) of `pcm` at `rate`.
pub fn wav(pcm: &[i16], rate: u32) -> Vec<u8> {
    let data_len = (pcm.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + pcm.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in pcm {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn wav_header_is_canonical() {
        let w = super::wav(&[1, -1, 300], 16_000);
        assert_eq!(w.len(), 44 + 6);
        assert_eq!(&w[..4], b"RIFF");
        assert_eq!(u32::from_le_bytes([w[4], w[5], w[6], w[7]]), 36 + 6);
        assert_eq!(&w[8..16], b"WAVEfmt ");
        assert_eq!(u32::from_le_bytes([w[24], w[25], w[26], w[27]]), 16_000);
        assert_eq!(&w[36..40], b"data");
        assert_eq!(i16::from_le_bytes([w[48], w[49]]), 300);
    }
}
