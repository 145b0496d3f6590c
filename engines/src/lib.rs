//! voicegate's speech engines: speech in ([`asr`]) and speech out ([`tts`]).
//!
//! An engine turns audio into text or text into audio for one call at a time; the actors
//! (`voicegate-actors`: the recognizer and the speaker) drive them and own everything around
//! them (deadlines per utterance, the player's order, metrics). This crate holds no actor: the
//! embedded engines (pocketsphinx, espeak-ng) are FFI to Debian's C libraries on threads of their
//! own, the HTTP engines are awc clients that run on the calling call's worker. The bench uses
//! the engines directly, without a server.
//!
//! Failures are typed ([`asr::AsrError`], [`tts::TtsError`], and each engine's startup error).
//! An engine enforces some protective limits itself (a stalled HTTP body, the decoder queue's
//! bound) and says so in its error ([`asr::AsrError::stalled`], [`asr::AsrError::refused`],
//! [`tts::TtsError::stalled`]): the caller counts them, since the metrics live with the actors.
//! API keys are [`secrecy::SecretString`]s, so no `Debug` output or log line can show one.

pub mod asr;
pub mod http;
pub mod idle;
pub mod tls;
pub mod tts;
pub mod ws_codec;
