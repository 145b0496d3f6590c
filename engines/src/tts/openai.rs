//! An OpenAI-compatible speech engine: `POST {base_url}/v1/audio/speech`, streamed PCM.
//!
//! The request asks for `response_format: "pcm"` (16-bit little-endian mono at the server's rate,
//! 24 kHz for OpenAI) and the body is read as it arrives, so audio plays while the server is
//! still producing it. Many self-hosted servers speak the same API. Dropping the stream aborts the
//! request. A non-2xx status or a transport error ends the stream with an error.
//!
//! Deadlines: `timeout` bounds the wait for the response head; after it, the body must keep
//! moving: no bytes for `stream_idle` ends the synthesis as failed
//! ([`OpenAiTtsError::Stalled`], which the speaker counts as `Limit::TtsStreamIdle`), so a server
//! that stalls mid-answer costs one utterance (`tts.ended ok:false`), not the rest of the call.

use super::{SynthStream, TtsEngine, TtsError, TtsFactory};
use crate::idle::{Stalled, idle_timeout};
use awc::error::{PayloadError, SendRequestError};
use awc::http::StatusCode;
use bytes::Bytes;
use futures_util::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use std::rc::Rc;
use std::time::Duration;
use voicegate_core::session::{InvalidOption, TtsOptions};

/// The engine's name, for logs and errors.
pub(super) const ENGINE: &str = "openai";

/// Settings of the HTTP engine. `Debug` shows everything but the key.
#[derive(Debug, Clone)]
pub struct OpenAiTtsSettings {
    /// Base URL, e.g. `https://api.openai.com`.
    pub base_url: String,
    /// Bearer token; empty sends no Authorization header.
    pub api_key: SecretString,
    /// Model, e.g. `gpt-4o-mini-tts`.
    pub model: String,
    /// Voice, e.g. `alloy`.
    pub voice: String,
    /// The rate the server's PCM comes at.
    pub sample_rate: u32,
    /// Longest wait for the response to start.
    pub timeout: Duration,
    /// Longest wait for the next bytes of the audio once it started (`tts.stream_idle_timeout_ms`).
    pub stream_idle: Duration,
    /// What the connection to the server trusts (`vendor_tls`).
    pub tls: crate::tls::ClientTls,
}

/// Why a synthesis over HTTP failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenAiTtsError {
    /// The request could not be sent, or no response head came within `timeout`.
    #[error("{url}: {source}")]
    Send {
        /// The endpoint.
        url: String,
        /// The client's error.
        #[source]
        source: SendRequestError,
    },
    /// The server answered with an error status.
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        /// The endpoint.
        url: String,
        /// The status.
        status: StatusCode,
        /// The start of the error body (a hint only; it is the server's text).
        body: String,
    },
    /// The audio stream broke off.
    #[error("reading audio: {0}")]
    Read(#[source] PayloadError),
    /// The audio stream sent nothing for `stream_idle`.
    #[error("the audio stream stalled: {0}")]
    Stalled(#[source] Stalled),
}

/// The factory.
pub struct OpenAiTts {
    settings: OpenAiTtsSettings,
}

impl OpenAiTts {
    /// A factory for `settings`.
    pub fn new(settings: OpenAiTtsSettings) -> Self {
        OpenAiTts { settings }
    }
}

impl TtsFactory for OpenAiTts {
    fn for_call(&self) -> Rc<dyn TtsEngine> {
        Rc::new(OpenAiEngine {
            settings: self.settings.clone(),
            speed: None,
        })
    }

    /// `voice`: a name the server knows (letters, digits, `-`, `_`, `.`; the server refuses an
    /// unknown one, and that utterance ends with `tts.ended ok:false`); `speed`: sent as the
    /// request's `speed`.
    fn with_options(&self, o: &TtsOptions) -> Result<Rc<dyn TtsEngine>, InvalidOption> {
        let mut s = self.settings.clone();
        if let Some(v) = &o.voice {
            let ok = !v.is_empty()
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !ok {
                return Err(InvalidOption::new(
                    "voice",
                    "want a voice name (letters, digits, -, _ and .)",
                ));
            }
            s.voice.clone_from(v);
        }
        Ok(Rc::new(OpenAiEngine {
            settings: s,
            speed: o.speed,
        }))
    }
}

/// The body of `POST /v1/audio/speech` (OpenAI's speech API; compatible servers take the same).
#[derive(serde::Serialize)]
struct SpeechRequest<'a> {
    model: &'a str,
    input: &'a str,
    voice: &'a str,
    /// Raw 16-bit little-endian mono PCM at the engine's sample rate.
    response_format: &'a str,
    /// 0.25 to 4.0; the server's default (1.0) when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    speed: Option<f32>,
}

struct OpenAiEngine {
    settings: OpenAiTtsSettings,
    /// A session's speed, if it chose one.
    speed: Option<f32>,
}

impl TtsEngine for OpenAiEngine {
    fn name(&self) -> &'static str {
        ENGINE
    }

    /// Each segment alone: the engine has no context to carry.
    fn utterance(self: Rc<Self>) -> Box<dyn super::UtteranceSynth> {
        Box::new(super::EachSegment(self))
    }

    fn sample_rate(&self) -> u32 {
        self.settings.sample_rate
    }

    fn synthesize(&self, text: &str) -> SynthStream {
        let s = &self.settings;
        let url = format!("{}/v1/audio/speech", s.base_url.trim_end_matches('/'));
        // The worker's pool (`crate::http`): a sentence after the first skips the handshakes.
        let mut req = crate::http::client(&s.tls)
            .post(url.clone())
            .timeout(s.timeout)
            .insert_header(("Accept", "audio/pcm"));
        let key = s.api_key.expose_secret();
        if !key.is_empty() {
            req = req.bearer_auth(key);
        }
        let body = SpeechRequest {
            model: &s.model,
            input: text,
            voice: &s.voice,
            response_format: "pcm",
            speed: self.speed,
        };
        let send = crate::http::send_json(req, &body);
        let stream_idle = s.stream_idle;
        Box::pin(
            futures_util::stream::once(async move {
                let res = match send.await {
                    Ok(res) => res,
                    Err(source) => return Err(OpenAiTtsError::Send { url, source }.into()),
                };
                let status = res.status();
                if !status.is_success() {
                    // The error's body is only a hint: it gets as long as the audio would.
                    let mut res = res;
                    let body = tokio::time::timeout(stream_idle, res.body().limit(512))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .unwrap_or_default();
                    return Err(OpenAiTtsError::Status {
                        url,
                        status,
                        body: String::from_utf8_lossy(&body).trim().to_owned(),
                    }
                    .into());
                }
                Ok(res)
            })
            .map(move |res| match res {
                Ok(res) => pcm_chunks(idle_timeout(res, stream_idle)).boxed_local(),
                Err(e) => futures_util::stream::iter([Err(e)]).boxed_local(),
            })
            .flatten(),
        )
    }
}

/// The response body (behind its idle timeout) as i16 chunks, carrying an odd byte over to the
/// next chunk.
fn pcm_chunks<S>(body: S) -> impl futures_util::Stream<Item = Result<Vec<i16>, TtsError>>
where
    S: futures_util::Stream<Item = Result<Result<Bytes, PayloadError>, Stalled>> + Unpin,
{
    futures_util::stream::unfold(
        (body, None::<u8>, false),
        |(mut body, carry, done)| async move {
            if done {
                return None;
            }
            let failed = match body.next().await {
                None => return None,
                Some(Err(stalled)) => OpenAiTtsError::Stalled(stalled),
                Some(Ok(Err(e))) => OpenAiTtsError::Read(e),
                Some(Ok(Ok(bytes))) => {
                    let mut data: Vec<u8> = Vec::with_capacity(bytes.len() + 1);
                    data.extend(carry);
                    data.extend_from_slice(&bytes);
                    let next_carry = (data.len() % 2 == 1).then(|| data[data.len() - 1]);
                    // A lone byte yields an empty chunk and waits in `carry` for its partner.
                    let samples: Vec<i16> = data
                        .chunks_exact(2)
                        .map(|b| i16::from_le_bytes([b[0], b[1]]))
                        .collect();
                    return Some((Ok(samples), (body, next_carry, false)));
                }
            };
            Some((Err(failed.into()), (body, None, true)))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn odd_byte_chunks_reassemble() {
        let chunks: Vec<Result<Result<Bytes, PayloadError>, Stalled>> = vec![
            Ok(Ok(Bytes::from_static(&[1, 0, 2]))),
            Ok(Ok(Bytes::from_static(&[0, 3]))),
            Ok(Ok(Bytes::from_static(&[0]))),
        ];
        let out: Vec<i16> = pcm_chunks(futures_util::stream::iter(chunks))
            .map(|r| r.unwrap())
            .collect::<Vec<_>>()
            .await
            .concat();
        assert_eq!(out, vec![1, 2, 3]);
    }

    #[test]
    fn debug_hides_the_key() {
        let s = OpenAiTtsSettings {
            base_url: "http://x".into(),
            tls: crate::tls::ClientTls::public(),
            api_key: "sk-secret".into(),
            model: "m".into(),
            voice: "v".into(),
            sample_rate: 24_000,
            timeout: Duration::from_secs(1),
            stream_idle: Duration::from_secs(1),
        };
        assert!(!format!("{s:?}").contains("sk-secret"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_plays_what_came_then_fails_as_a_stall() {
        let body =
            futures_util::stream::iter([Ok::<_, PayloadError>(Bytes::from_static(&[1, 0, 2, 0]))])
                .chain(futures_util::stream::pending());
        let out: Vec<_> = pcm_chunks(idle_timeout(Box::pin(body), Duration::from_millis(300)))
            .collect()
            .await;
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].as_ref().ok(), Some(&vec![1, 2]));
        let e = out[1].as_ref().expect_err("the stall ends it as failed");
        assert!(e.to_string().contains("stalled"), "{e}");
        // The speaker counts it as a limit hit.
        assert!(e.stalled(), "{e:?}");
    }
}
