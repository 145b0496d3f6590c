//! Configuration: the serde shape of `config/default.toml`, loaded in layers and validated once.
//!
//! Layers, later wins: the built-in `config/default.toml`, an optional `--config <file>`, then
//! `VOICEGATE__<SECTION>__<KEY>` environment variables. Unknown keys are refused, so a typo is a
//! startup error rather than a silently ignored setting. [`Settings::load`] returns raw values;
//! [`Settings::validate`] turns them into the domain types the rest of the service uses, and
//! names the key at fault when one cannot work.

use crate::llm::LlmSettings;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use voicegate_actors::call::{CallSettings, EndReasonStyle, HoldPrompts};
use voicegate_actors::codec::ListenSettings;
use voicegate_actors::dialog::DialogSettings;
use voicegate_actors::dialog_conn::{DialHeaders, header_name};
use voicegate_actors::recognizer::RecognizerSettings;
use voicegate_actors::recorder::{RecordingMode, RecordingSettings};
use voicegate_core::admission::IpNet;
use voicegate_core::call_id;
use voicegate_core::codec::{EncoderSettings, OPUS_PCM_RATES};
use voicegate_core::denoise::Denoise;
use voicegate_core::frame::{FRAME_MS, SPEECH_RATE, SpeechFrames};
use voicegate_core::ice::{self, IceServer, IceTimerError, IceTimers};
use voicegate_core::listen::{BargeInSettings, EndpointSettings};
use voicegate_core::page::PageLimits;
use voicegate_core::speech::PlayerSettings;
use voicegate_core::text::SegmentLimits;
use voicegate_core::turn::{Backchannels, BargeMode};
use voicegate_core::wav::{MAX_DATA_BYTES, WavFormat};
use voicegate_engines::asr::deepgram::{DeepgramSettings, MAX_KEYWORDS};
use voicegate_engines::asr::openai::OpenAiAsrSettings;
use voicegate_engines::asr::pocketsphinx::PocketsphinxSettings;
use voicegate_engines::tls::{ClientTls, TlsError};
use voicegate_engines::tts::cartesia::CartesiaSettings;
use voicegate_engines::tts::elevenlabs::{self, ElevenLabsSettings};
use voicegate_engines::tts::espeak::EspeakSettings;
use voicegate_engines::tts::openai::OpenAiTtsSettings;
use voicegate_media::MediaSettings;
use voicegate_media::mux::MuxLimits;

/// The built-in defaults; also the documentation of every key.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// The shortest idle timeout accepted for a streamed engine reply: below it, ordinary network
/// jitter between two chunks would fail a healthy stream.
const MIN_STREAM_IDLE_MS: u64 = 100;
/// Longest `tts.preconnect_ms`: below ElevenLabs' 20 s idle limit, with room for the connect.
const MAX_PRECONNECT_MS: u64 = 15_000;
/// The shortest result deadline accepted for an utterance: below it, even an idle pocketsphinx
/// decoder cannot finish a long utterance's search in time.
const MIN_UTTERANCE_DEADLINE_MS: u64 = 1000;

/// The environment's prefix of one `dialog.headers` entry: `VOICEGATE__DIALOG__HEADERS__<NAME>`.
const HEADER_ENV_PREFIX: &str = "VOICEGATE__DIALOG__HEADERS__";

/// The header name an environment variable sets (lower case, as the general source reads keys),
/// if it is a `dialog.headers` entry.
fn header_env_name(var: &str) -> Option<String> {
    let head = var.get(..HEADER_ENV_PREFIX.len())?;
    let name = &var[HEADER_ENV_PREFIX.len()..];
    (head.eq_ignore_ascii_case(HEADER_ENV_PREFIX) && !name.is_empty())
        .then(|| name.to_ascii_lowercase())
}

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: &[&str] = &[
    "asr.deepgram.keywords",
    "auth.secrets",
    "http.allowed_origins",
    "http.trusted_proxies",
    "media.public_ips",
    "barge_in.backchannels",
];

/// Everything in the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `[http]`
    pub http: Http,
    /// `[media]`
    pub media: Media,
    /// `[calls]`
    pub calls: Calls,
    /// `[admission]`
    pub admission: Admission,
    /// `[auth]`
    pub auth: AuthConfig,
    /// `[dialog]`
    pub dialog: Dialog,
    /// `[demo]`
    pub demo: Demo,
    /// `[vendor_tls]`
    pub vendor_tls: VendorTls,
    /// `[tts]`
    pub tts: Tts,
    /// `[asr]`
    pub asr: Asr,
    /// `[listen]`
    pub listen: Listen,
    /// `[barge_in]`
    pub barge_in: BargeInConfig,
    /// `[supervision]`
    pub supervision: Supervision,
    /// `[echo]`
    pub echo: Echo,
    /// `[node]`
    pub node: NodeConfig,
    /// `[compat]`
    pub compat: Compat,
    /// `[page]`
    pub page: PageConfig,
    /// `[recording]`
    pub recording: RecordingConfig,
    /// `[log]`
    pub log: Log,
    /// `[tracing]`
    pub tracing: Tracing,
}

/// `[dialog]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dialog {
    /// URL or `demo`.
    pub url: String,
    /// Dial timeout.
    pub connect_timeout_ms: u64,
    /// Ping interval.
    pub ping_interval_ms: u64,
    /// Silence tolerated after a ping.
    pub pong_timeout_ms: u64,
    /// Reconnect attempts.
    pub reconnect_attempts: u32,
    /// First reconnect delay.
    pub reconnect_initial_ms: u64,
    /// Reconnect delay cap.
    pub reconnect_max_ms: u64,
    /// Events kept while disconnected.
    pub event_buffer: usize,
    /// Largest message from the app.
    pub max_message_bytes: usize,
    /// Longest dial `payload` (it travels in the dial URL).
    pub max_payload_bytes: usize,
    /// Uptime after which a lost connection gets the full reconnect budget again.
    pub stable_after_ms: u64,
    /// Hold prompt on loss.
    pub hold_first: String,
    /// Hold prompt per retry.
    pub hold_retry: String,
    /// Prompt when giving up.
    pub hold_give_up: String,
    /// Headers sent on every dial, name to value (values are secrets).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, SecretString>,
    /// PEM file of certificate authorities trusted for `wss://`; empty: none.
    pub ca_file: String,
    /// Trust the public web roots for `wss://` (besides `ca_file`).
    pub public_roots: bool,
}

/// `[vendor_tls]`: what the connections to the speech vendors and the demo agent's model trust.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VendorTls {
    /// PEM file of certificate authorities trusted for `https://` and `wss://`; empty: none.
    pub ca_file: String,
    /// Trust the public web roots (besides `ca_file`).
    pub public_roots: bool,
}

/// The TLS client configuration a section's `ca_file` and `public_roots` describe, read and
/// checked now; an error names the key at fault (`<section>.ca_file` or `.public_roots`).
fn client_tls(
    section: &str,
    ca_file: &str,
    public_roots: bool,
) -> Result<ClientTls, SettingsError> {
    let ca_key = format!("{section}.ca_file");
    let ca_pem = match ca_file.trim() {
        "" => None,
        path => Some(std::fs::read(path).map_err(|e| invalid(&ca_key, format!("{path}: {e}")))?),
    };
    ClientTls::new(public_roots, ca_pem.as_deref(), &ca_key).map_err(|e| match e {
        TlsError::NoRoots => invalid(format!("{section}.public_roots"), e),
        e => invalid(&ca_key, format!("{}: {e}", ca_file.trim())),
    })
}

/// `[demo]`: the embedded demo dialog app.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Demo {
    /// `[demo.llm]`
    pub llm: DemoLlm,
}

/// `[demo.llm]`: the demo as an LLM agent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoLlm {
    /// Base URL of the OpenAI-compatible server; empty: the demo repeats what it heard.
    pub base_url: String,
    /// Model name.
    pub model: String,
    /// API key; `Debug` never shows it.
    #[serde(serialize_with = "serialize_secret")]
    pub api_key: SecretString,
    /// System prompt.
    pub system_prompt: String,
    /// Longest answer, request to last token.
    pub timeout_ms: u64,
    /// Most response bytes per answer.
    pub max_response_bytes: usize,
    /// Most history messages besides the system prompt.
    pub max_history_messages: usize,
}

/// `[tts]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tts {
    /// `espeak`, `openai`, `elevenlabs` or `cartesia`.
    pub engine: String,
    /// Synthesis prefetch.
    pub prefetch_segments: usize,
    /// Longest quiet time within a streamed synthesis.
    pub stream_idle_timeout_ms: u64,
    /// Longest a WebSocket engine's connection opened ahead waits for an utterance (0: off).
    pub preconnect_ms: u64,
    /// Most bytes of text per utterance.
    pub max_text_bytes: usize,
    /// Most utterances queued per call.
    pub max_queued_utterances: usize,
    /// Most synthesized audio of one segment, in ms.
    pub max_segment_audio_ms: u64,
    /// `[tts.segment]`
    pub segment: TtsSegment,
    /// `[tts.espeak]`
    pub espeak: TtsEspeak,
    /// `[tts.openai]`
    pub openai: TtsOpenAi,
    /// `[tts.elevenlabs]`
    pub elevenlabs: TtsElevenLabs,
    /// `[tts.cartesia]`
    pub cartesia: TtsCartesia,
    /// `[tts.profiles.<name>]`: `engine` and that engine's keys over `[tts.<engine>]`.
    #[serde(default)]
    pub profiles: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
}

/// `[tts.segment]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtsSegment {
    /// First segment minimum before a pause mark.
    pub first_min_chars: usize,
    /// First segment maximum.
    pub first_max_chars: usize,
    /// Later segment maximum.
    pub max_chars: usize,
}

/// `[tts.espeak]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TtsEspeak {
    /// Voice.
    pub voice: String,
    /// Words per minute.
    pub rate_wpm: u32,
}

/// `[tts.openai]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TtsOpenAi {
    /// Base URL.
    pub base_url: String,
    /// API key; `Debug` never shows it.
    #[serde(serialize_with = "serialize_secret")]
    pub api_key: SecretString,
    /// Model.
    pub model: String,
    /// Voice.
    pub voice: String,
    /// PCM rate of the responses.
    pub sample_rate: u32,
    /// Response timeout.
    pub timeout_ms: u64,
}

/// `[tts.elevenlabs]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TtsElevenLabs {
    /// Base URL.
    pub base_url: String,
    /// API key; `Debug` never shows it.
    #[serde(serialize_with = "serialize_secret")]
    pub api_key: SecretString,
    /// Voice id.
    pub voice_id: String,
    /// Model id.
    pub model_id: String,
    /// PCM rate asked for.
    pub sample_rate: u32,
    /// Connect timeout.
    pub timeout_ms: u64,
    /// Largest vendor message.
    pub max_message_bytes: usize,
}

/// `[tts.cartesia]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TtsCartesia {
    /// Base URL.
    pub base_url: String,
    /// API key; `Debug` never shows it.
    #[serde(serialize_with = "serialize_secret")]
    pub api_key: SecretString,
    /// `Cartesia-Version`.
    pub version: String,
    /// Model id.
    pub model_id: String,
    /// Voice id.
    pub voice_id: String,
    /// Language.
    pub language: String,
    /// PCM rate asked for.
    pub sample_rate: u32,
    /// Connect timeout.
    pub timeout_ms: u64,
    /// Largest vendor message.
    pub max_message_bytes: usize,
}

/// `[asr]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Asr {
    /// `pocketsphinx`, `openai` or `deepgram`.
    pub engine: String,
    /// Partial rate limit.
    pub partial_interval_ms: u64,
    /// Longest quiet time within a streamed transcription reply.
    pub stream_idle_timeout_ms: u64,
    /// Longest wait for an utterance's result after it ended.
    pub utterance_deadline_ms: u64,
    /// `[asr.pocketsphinx]`
    pub pocketsphinx: AsrPocketsphinx,
    /// `[asr.openai]`
    pub openai: AsrOpenAi,
    /// `[asr.deepgram]`
    pub deepgram: AsrDeepgram,
    /// `[asr.profiles.<name>]`: `engine` and that engine's keys over `[asr.<engine>]`.
    #[serde(default)]
    pub profiles: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
}

/// `[asr.pocketsphinx]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AsrPocketsphinx {
    /// Acoustic model.
    pub hmm: String,
    /// Dictionary.
    pub dict: String,
    /// Language model.
    pub lm: String,
    /// JSGF grammar file.
    pub grammar: String,
    /// Named JSGF grammar files a session may choose.
    #[serde(default)]
    pub grammars: BTreeMap<String, String>,
    /// Decoder threads.
    pub decoders: usize,
    /// Most utterances waiting for a decoder, across all calls.
    pub queue_max: usize,
    /// A decoder with no utterance for this long is unloaded; 0 keeps decoders loaded.
    pub unload_idle_ms: u64,
    /// An utterance whose audio stops this long mid-utterance fails and frees its decoder.
    pub audio_gap_max_ms: u64,
}

/// `[asr.openai]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AsrOpenAi {
    /// Base URL.
    pub base_url: String,
    /// API key; `Debug` never shows it.
    #[serde(serialize_with = "serialize_secret")]
    pub api_key: SecretString,
    /// Model.
    pub model: String,
    /// Language hint.
    pub language: String,
    /// Timeout.
    pub timeout_ms: u64,
    /// Ask for streamed transcriptions.
    pub stream: bool,
    /// Ask for the tokens' log probabilities (a result's confidence).
    pub logprobs: bool,
    /// Largest transcription reply.
    pub max_reply_bytes: usize,
}

/// `[asr.deepgram]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AsrDeepgram {
    /// Base URL (`wss://` or `ws://`).
    pub base_url: String,
    /// API key; `Debug` never shows it.
    #[serde(serialize_with = "serialize_secret")]
    pub api_key: SecretString,
    /// Model.
    pub model: String,
    /// Language.
    pub language: String,
    /// Words to boost.
    pub keywords: Vec<String>,
    /// Deepgram's endpointing silence; 0: off.
    pub endpointing_ms: u32,
    /// Connection deadline.
    pub connect_timeout_ms: u64,
    /// `KeepAlive` interval without audio.
    pub keepalive_ms: u64,
    /// Most audio held for the connection.
    pub max_buffered_ms: u32,
    /// Largest message from the server.
    pub max_message_bytes: usize,
}

/// `[listen]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// Speech to start.
    pub speech_start_ms: u32,
    /// Silence to end.
    pub end_silence_ms: u32,
    /// Pre-roll.
    pub preroll_ms: u32,
    /// Longest utterance.
    pub max_utterance_ms: u32,
    /// Noise suppression of the caller's speech: "off" or "rnnoise".
    pub denoise: String,
    /// Silence that ends a turn whose hypothesis looks finished and stable.
    pub end_silence_min_ms: u32,
    /// How long a hypothesis must stay unchanged to count as stable.
    pub stable_ms: u32,
    /// Key presses reported per second, at most (0: no limit).
    pub max_key_presses_per_s: u32,
}

/// `[barge_in]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BargeInConfig {
    /// On.
    pub enabled: bool,
    /// Speech needed.
    pub min_speech_ms: u32,
    /// Warm-up.
    pub warmup_ms: u32,
    /// Level margin (0: off).
    pub level_margin_db: f32,
    /// "confirmed" or "immediate".
    pub mode: String,
    /// Confirmed mode: voice that pauses playback.
    pub pause_after_ms: u32,
    /// Confirmed mode: longest pause waiting for confirming words.
    pub confirm_ms: u32,
    /// Confirmed mode: how long a confirming partial result must stand.
    pub confirm_stable_ms: u32,
    /// Words that always make a real interruption.
    pub min_words: usize,
    /// The least confidence (0 to 1) of words that interrupt, for recognizers that give one.
    pub min_confidence: f32,
    /// What is only a backchannel.
    pub backchannels: Vec<String>,
}

/// Which recognizer, validated.
#[derive(Debug, Clone)]
pub enum AsrChoice {
    /// Embedded pocketsphinx.
    Pocketsphinx(PocketsphinxSettings),
    /// OpenAI-compatible HTTP.
    OpenAi(OpenAiAsrSettings),
    /// Deepgram's streaming WebSocket.
    Deepgram(DeepgramSettings),
}

/// `[supervision]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Supervision {
    /// Restarts allowed in the window.
    pub max_restarts: usize,
    /// The window.
    pub window_ms: u64,
}

/// `[tracing]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    /// Log every actor message.
    pub messages: bool,
}

/// Which speech engine, validated.
#[derive(Debug, Clone)]
pub enum TtsChoice {
    /// Embedded espeak-ng.
    Espeak(EspeakSettings),
    /// OpenAI-compatible HTTP.
    OpenAi(OpenAiTtsSettings),
    /// ElevenLabs' stream-input WebSocket.
    ElevenLabs(ElevenLabsSettings),
    /// Cartesia's WebSocket.
    Cartesia(CartesiaSettings),
}

/// Where the dialog app is.
#[derive(Debug, Clone)]
pub enum DialogTarget {
    /// The embedded demo app on this server's HTTP address.
    Demo,
    /// An external app.
    Url(url::Url),
}

/// `[http]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// Listen address.
    pub bind: String,
    /// CORS allowlist.
    pub allowed_origins: Vec<String>,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Longest a request body may take to arrive.
    pub body_timeout_ms: u64,
    /// Proxies whose `X-Forwarded-For` is honoured.
    pub trusted_proxies: Vec<String>,
    /// Worker threads (0 = cores).
    pub workers: usize,
}

/// `[media]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Media {
    /// IP of the shared UDP socket.
    pub bind_ip: String,
    /// Port of the shared UDP socket.
    pub udp_port: u16,
    /// NAT 1:1 addresses.
    pub public_ips: Vec<String>,
    /// STUN/TURN spec string.
    pub ice_servers: String,
    /// Media worker threads (0 = cores).
    pub workers: usize,
    /// Gathering wait.
    pub gather_timeout_ms: u64,
    /// Silence after which a caller's ICE is `disconnected` (it may still recover).
    pub ice_disconnected_timeout_ms: u64,
    /// Time in `disconnected` after which ICE has `failed` and the call ends.
    pub ice_failed_timeout_ms: u64,
    /// Interval of our consent checks to the caller.
    pub ice_keepalive_ms: u64,
    /// Most usable remote candidates in an offer.
    pub max_remote_candidates: usize,
    /// Checks per call to addresses that have not authenticated.
    pub unconfirmed_check_budget: u32,
    /// PCM rate of the codec, in Hz: one of the Opus rates. The echo path and the downlink run
    /// at it; the speech path resamples the caller's audio to 16 kHz when it differs, and speech
    /// synthesis is resampled to it.
    pub pcm_rate: u32,
    /// Reorder depth.
    pub reorder_depth: usize,
    /// Reorder wait.
    pub reorder_wait_ms: u64,
    /// PLC limit.
    pub max_conceal_frames: u64,
    /// Pacer catch-up limit.
    pub max_catch_up_frames: u32,
    /// Playout queue bound.
    pub max_queue_frames: usize,
    /// `[media.opus]`
    pub opus: Opus,
}

/// `[media.opus]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Opus {
    /// Encoder complexity.
    pub complexity: i32,
    /// Bitrate.
    pub bitrate: i32,
    /// In-band FEC.
    pub fec: bool,
    /// The least loss the FEC is sized for; the browser's reports raise it.
    pub expected_loss_percent: i32,
}

/// `[calls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calls {
    /// Call id prefix.
    pub id_prefix: String,
    /// Connect deadline.
    pub connect_timeout_ms: u64,
    /// Deadline for the first authenticated connectivity check.
    pub auth_timeout_ms: u64,
    /// RTP silence deadline.
    pub rtp_timeout_ms: u64,
    /// Longest audio is held for a caller whose media is interrupted.
    pub interrupted_hold_ms: u64,
    /// ICE restarts per call (0: none).
    pub max_ice_restarts: u32,
    /// Most calls at once (0: no limit).
    pub max: usize,
    /// Retry-After of a full server's 503.
    pub retry_after_s: u32,
    /// Drain grace period.
    pub shutdown_grace_ms: u64,
    /// Longest a call may last from its answer, seconds (0: no limit).
    pub max_duration_s: u64,
}

/// `[admission]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admission {
    /// Offers per second per source (0: no limit).
    pub offers_per_ip_per_s: f64,
    /// Offers a source may send at once.
    pub offer_burst: u32,
    /// Calls in progress per source (0: no limit).
    pub calls_per_ip: usize,
    /// Offers per second from one IPv6 /48, all its sources together (0: no limit).
    pub offers_per_prefix_per_s: f64,
    /// Offers one IPv6 /48 may send at once.
    pub prefix_offer_burst: u32,
    /// Calls in progress from one IPv6 /48 (0: no limit).
    pub calls_per_prefix: usize,
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `none` or `token`.
    pub mode: String,
    /// HS256 secrets; the first signs `voicegate token`'s tokens, any verifies.
    pub secrets: Vec<SecretString>,
    /// Clock skew allowed on `exp` and `nbf`, seconds.
    pub leeway_s: u64,
    /// Longest a token may still be valid when it arrives, seconds.
    pub max_ttl_s: u64,
    /// Most unexpired single-use tokens (`jti`) remembered.
    pub max_single_use_tokens: usize,
}

/// Call tokens, when `auth.mode = "token"`.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// The secrets, the signing one first.
    pub secrets: Vec<SecretString>,
    /// Clock skew allowed, seconds.
    pub leeway_s: u64,
    /// Longest remaining validity accepted, seconds.
    pub max_ttl_s: u64,
    /// Most unexpired single-use tokens remembered.
    pub max_single_use_tokens: usize,
}

/// The shortest HS256 secret accepted: RFC 7518 §3.2 asks for a key at least as long as the
/// hash (256 bits); a short one can be guessed offline from any token.
pub const MIN_SECRET_BYTES: usize = 32;

/// `[echo]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Echo {
    /// Extra echo delay.
    pub delay_ms: u64,
}

/// `[page]`: messages between the browser page and the dialog app.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageConfig {
    /// Longest message either way, bytes of JSON text.
    pub max_message_bytes: usize,
    /// Messages per second a page may send, on average.
    pub messages_per_s: f64,
    /// Messages a page may send at once.
    pub message_burst: u32,
}

/// `[recording]`: call recordings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingConfig {
    /// `off`, `all` or `on-request`.
    pub mode: String,
    /// Where the files go.
    pub dir: String,
    /// The longest recording, seconds.
    pub max_duration_s: u64,
    /// The most audio waiting for the writer, bytes.
    pub queue_max_bytes: usize,
}

/// Bounds of `recording.queue_max_bytes`: at least a few chunks of one call at 48 kHz; at most
/// what a stalled disk may hold in memory.
const RECORDING_QUEUE_BYTES: std::ops::RangeInclusive<usize> = (1 << 20)..=(1 << 30);

impl RecordingConfig {
    /// The calls' recording settings, and where the files go (`None`: recording is off).
    fn validate(
        &self,
        pcm_rate: u32,
    ) -> Result<(RecordingSettings, Option<Recording>), SettingsError> {
        let mode = match self.mode.trim() {
            "off" => RecordingMode::Off,
            "all" => RecordingMode::All,
            "on-request" => RecordingMode::OnRequest,
            other => {
                return Err(invalid(
                    "recording.mode",
                    format!("{other:?}: want \"off\", \"all\" or \"on-request\""),
                ));
            }
        };
        // A WAV file counts its bytes in 32 bits: the longest recording must fit in one at the
        // call's rate (stereo, 16-bit).
        let per_s = WavFormat {
            rate: pcm_rate,
            channels: 2,
        }
        .bytes_per_second();
        let max_s = MAX_DATA_BYTES / per_s;
        if !(1..=max_s).contains(&self.max_duration_s) {
            return Err(invalid(
                "recording.max_duration_s",
                format!(
                    "must be 1 to {max_s} (a WAV file holds 4 GiB: {max_s} s of stereo at media.pcm_rate {pcm_rate})"
                ),
            ));
        }
        if !RECORDING_QUEUE_BYTES.contains(&self.queue_max_bytes) {
            return Err(invalid(
                "recording.queue_max_bytes",
                format!(
                    "must be {} to {}",
                    RECORDING_QUEUE_BYTES.start(),
                    RECORDING_QUEUE_BYTES.end()
                ),
            ));
        }
        let settings = RecordingSettings {
            mode,
            max_duration: Duration::from_secs(self.max_duration_s),
        };
        if mode == RecordingMode::Off {
            return Ok((settings, None));
        }
        let dir = self.dir.trim();
        if dir.is_empty() {
            return Err(invalid(
                "recording.dir",
                "must name a directory when recording.mode is not \"off\"",
            ));
        }
        Ok((
            settings,
            Some(Recording {
                dir: dir.into(),
                queue_max_bytes: self.queue_max_bytes,
            }),
        ))
    }
}

/// Where recordings go and the writer's queue bound (checked on the disk at startup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recording {
    /// The directory.
    pub dir: std::path::PathBuf,
    /// The most audio waiting for the writer, bytes.
    pub queue_max_bytes: usize,
}

/// `[compat]`: behaviour of the original service, for dialog apps written for it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compat {
    /// How `call.ended` spells its reason.
    pub call_ended_reasons: EndReasonsConfig,
}

/// `compat.call_ended_reasons`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EndReasonsConfig {
    /// voicegate's reasons.
    Ours,
    /// The original's strings.
    Original,
}

/// `[node]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id in a fleet; empty: derived from the host name.
    pub id: String,
}

/// This machine's host name, for the default node id (`/proc`, else `$HOSTNAME`).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default()
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// Filter directives.
    pub filter: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A configuration that cannot work, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The layers could not be read or merged, or a value has the wrong type.
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A value has the right type but cannot work.
    #[error("configuration key {key}: {reason}")]
    Invalid {
        /// Dotted key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

impl AuthConfig {
    /// `None` for `mode = "none"`; the checked token settings for `"token"`.
    pub fn validate(&self) -> Result<Option<AuthSettings>, SettingsError> {
        match self.mode.trim() {
            "none" => return Ok(None),
            "token" => {}
            other => {
                return Err(invalid(
                    "auth.mode",
                    format!("{other:?}: want \"none\" or \"token\""),
                ));
            }
        }
        let secrets: Vec<SecretString> = self
            .secrets
            .iter()
            .filter(|s| !s.expose_secret().trim().is_empty())
            .cloned()
            .collect();
        if secrets.is_empty() {
            return Err(invalid(
                "auth.secrets",
                "auth.mode = \"token\" needs at least one secret (VOICEGATE__AUTH__SECRETS)",
            ));
        }
        if let Some(i) = secrets
            .iter()
            .position(|s| s.expose_secret().len() < MIN_SECRET_BYTES)
        {
            return Err(invalid(
                "auth.secrets",
                format!("secret #{} is shorter than {MIN_SECRET_BYTES} bytes", i + 1),
            ));
        }
        if self.max_ttl_s == 0 {
            return Err(invalid("auth.max_ttl_s", "must be above 0"));
        }
        if self.max_single_use_tokens == 0 {
            return Err(invalid("auth.max_single_use_tokens", "must be at least 1"));
        }
        Ok(Some(AuthSettings {
            secrets,
            leeway_s: self.leeway_s,
            max_ttl_s: self.max_ttl_s,
            max_single_use_tokens: self.max_single_use_tokens,
        }))
    }
}

/// Smallest `dialog.max_message_bytes`: room for any control frame (125 bytes) and a command.
const MIN_DIALOG_MESSAGE_BYTES: usize = 1024;
/// Largest `dialog.max_message_bytes`: each call may hold about twice the limit while a message
/// arrives, so a larger value would let one dialog app take hundreds of megabytes per call.
const MAX_DIALOG_MESSAGE_BYTES: usize = 64 << 20;
/// Smallest `calls.connect_timeout_ms`.
const MIN_CONNECT_TIMEOUT_MS: u64 = 500;

/// Largest `dialog.max_payload_bytes`: URL-encoded, such a payload is up to 3 MiB, past what
/// any common WebSocket server takes in a request line (Go's net/http takes 1 MiB of headers).
const MAX_DIALOG_PAYLOAD_BYTES: usize = 1 << 20;
/// Largest `page.max_message_bytes`: the WebRTC stack hands over data channel messages of at
/// most 16 KiB (larger ones need its detached streams), so a larger limit would promise what the
/// page cannot send.
const MAX_PAGE_MESSAGE_BYTES: usize = 16 * 1024;
/// Smallest `dialog.stable_after_ms`: below it, an app that accepts and drops at once would
/// get a fresh reconnect budget every time and be redialled without end.
const MIN_DIALOG_STABLE_AFTER_MS: u64 = 100;

fn invalid(key: impl Into<String>, reason: impl ToString) -> SettingsError {
    SettingsError::Invalid {
        key: key.into(),
        reason: reason.to_string(),
    }
}

/// Only for [`overlay`], which reads a table back at once: nothing serialized leaves memory.
fn serialize_secret<S: serde::Serializer>(s: &SecretString, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s.expose_secret())
}

/// A profile's or grammar's name: what `session.update` can name.
fn profile_name(at: &str, name: &str) -> Result<(), SettingsError> {
    if name == voicegate_core::session::DEFAULT_PROFILE {
        return Err(invalid(
            at,
            "\"default\" names the top-level engine; choose another name",
        ));
    }
    if !voicegate_core::session::valid_profile_name(name) {
        return Err(invalid(
            at,
            "a name of letters, digits, - and _ (at most 64)",
        ));
    }
    Ok(())
}

/// A profile's `engine`.
fn profile_engine(
    at: &str,
    keys: &BTreeMap<String, serde_json::Value>,
) -> Result<String, SettingsError> {
    match keys.get("engine") {
        Some(serde_json::Value::String(e)) => Ok(e.trim().to_owned()),
        _ => Err(invalid(
            format!("{at}.engine"),
            "missing: name the profile's engine",
        )),
    }
}

/// A streaming engine's `base_url`: a `ws://` or `wss://` URL.
fn ws_url(at: &str, url: &str) -> Result<(), SettingsError> {
    let u = url::Url::parse(url).map_err(|e| invalid(format!("{at}.base_url"), e))?;
    if !matches!(u.scheme(), "ws" | "wss") {
        return Err(invalid(
            format!("{at}.base_url"),
            "want a ws:// or wss:// URL",
        ));
    }
    Ok(())
}

/// A vendor's voice or model id: it goes into a URL path or query.
fn voice_id(at: &str, id: &str) -> Result<(), SettingsError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(at, "want 1 to 64 letters, digits, -, _ or ."))
    }
}

/// A streaming engine's `max_message_bytes`.
fn max_message(at: &str, bytes: usize) -> Result<(), SettingsError> {
    if (4096..=16_777_216).contains(&bytes) {
        Ok(())
    } else {
        Err(invalid(
            format!("{at}.max_message_bytes"),
            "must be 4096 to 16777216",
        ))
    }
}

/// The `[tts.<name>]` / `[asr.<name>]` table `base` with a profile's keys over it when the
/// profile's engine is `name` (else `base` as it is). The profile's keys other than `engine`
/// must be keys of its engine's table.
fn overlay<T>(
    at: &str,
    keys: &BTreeMap<String, serde_json::Value>,
    engine: &str,
    name: &str,
    base: &T,
) -> Result<T, SettingsError>
where
    T: Serialize + serde::de::DeserializeOwned + Clone,
{
    if name != engine {
        return Ok(base.clone());
    }
    let mut table = serde_json::to_value(base).map_err(|e| invalid(at, e))?;
    for (k, v) in keys.iter().filter(|(k, _)| k.as_str() != "engine") {
        let Some(slot) = table.get_mut(k) else {
            return Err(invalid(
                format!("{at}.{k}"),
                format!("unknown key for the {engine} engine"),
            ));
        };
        // The configuration's environment layer reads numbers as text.
        *slot = match (&*slot, v) {
            (serde_json::Value::Number(_), serde_json::Value::String(t)) => {
                serde_json::from_str(t).unwrap_or_else(|_| v.clone())
            }
            _ => v.clone(),
        };
    }
    serde_json::from_value(table).map_err(|e| invalid(at, e))
}

/// The validated configuration, in the types the service runs on.
#[derive(Debug, Clone)]
pub struct Validated {
    /// HTTP listen address.
    pub http_bind: SocketAddr,
    /// CORS allowlist.
    pub allowed_origins: Vec<String>,
    /// Body limit.
    pub max_body_bytes: usize,
    /// Body read deadline.
    pub body_timeout: Duration,
    /// Proxies whose `X-Forwarded-For` is honoured.
    pub trusted_proxies: Vec<IpNet>,
    /// Most usable remote candidates in an offer.
    pub max_remote_candidates: usize,
    /// Longest dial `payload`, bytes.
    pub max_payload_bytes: usize,
    /// Longest a call may last from its answer (`None`: no limit); a call token's
    /// `max_duration_s` may only shorten it.
    pub max_call_duration: Option<Duration>,
    /// Offers per second per source (0: no limit) and the burst.
    pub offers_per_source: (f64, u32),
    /// Calls in progress per source (0: no limit).
    pub calls_per_source: usize,
    /// Offers per second per IPv6 /48 (0: no limit) and the burst.
    pub offers_per_prefix: (f64, u32),
    /// Calls in progress per IPv6 /48 (0: no limit).
    pub calls_per_prefix: usize,
    /// Call tokens (`None`: `auth.mode = "none"`, anyone may call).
    pub auth: Option<AuthSettings>,
    /// HTTP workers (resolved, at least 1).
    pub http_workers: usize,
    /// Media plane settings.
    pub media: MediaSettings,
    /// Per-call settings.
    pub calls: CallSettings,
    /// The speech engine.
    pub tts: TtsChoice,
    /// `[tts.profiles.<name>]`, validated.
    pub tts_profiles: Vec<(String, TtsChoice)>,
    /// The recognizer.
    pub asr: AsrChoice,
    /// `[asr.profiles.<name>]`, validated.
    pub asr_profiles: Vec<(String, AsrChoice)>,
    /// The dialog app.
    pub dialog_target: DialogTarget,
    /// The dialog connection (its URL is set once the target is resolved).
    pub dialog: DialogSettings,
    /// The embedded demo's model (`None`: the demo repeats what it heard).
    pub demo_llm: Option<LlmSettings>,
    /// What the vendor engines and the demo's model trust (their settings carry it; for the log).
    pub vendor_tls: ClientTls,
    /// Log settings.
    pub log: Log,
    /// Log every actor message.
    pub trace_messages: bool,
    /// Most calls at once (0: no limit).
    pub max_calls: usize,
    /// Retry-After of a full server's 503, seconds.
    pub retry_after_s: u32,
    /// How long live calls may continue after a shutdown signal.
    pub shutdown_grace: Duration,
    /// This node's id (`node.id`, or made from the host name): in call ids, the dial URL, every
    /// log line and metric.
    pub node_id: String,
    /// Where recordings go (`None`: `recording.mode = "off"`).
    pub recording: Option<Recording>,
}

/// An `http.allowed_origins` entry as browsers send `Origin`: `scheme://host[:port]`, the scheme
/// and host in lower case, no default port (`https://App.example:443/` is
/// `https://app.example`); `*` and `null` as they are. CORS compares origins byte for byte, so an
/// entry written any other way would never match and every cross-origin call would fail with no
/// word why; one that is not an origin at all (a path, a query) is refused.
fn origin(entry: &str) -> Result<String, String> {
    if entry == "*" || entry == "null" {
        return Ok(entry.to_owned());
    }
    let url = url::Url::parse(entry).map_err(|e| format!("{e} (want scheme://host[:port])"))?;
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        return Err("no host (want scheme://host[:port])".to_owned());
    };
    if !matches!(url.path(), "" | "/")
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err("not an origin (want scheme://host[:port], no path)".to_owned());
    }
    Ok(match url.origin() {
        url::Origin::Tuple(..) => url.origin().ascii_serialization(),
        // A scheme the URL standard gives no tuple origin (`chrome-extension://<id>`): browsers
        // still send it as scheme, host and port.
        url::Origin::Opaque(_) => match url.port() {
            Some(port) => format!("{}://{host}:{port}", url.scheme()),
            None => format!("{}://{host}", url.scheme()),
        },
    })
}

impl Settings {
    /// The speech engine `engine` with these settings; `at` names its keys in errors.
    fn tts_choice(
        &self,
        vendor_tls: &ClientTls,
        at: &str,
        engine: &str,
        (espeak, openai, elevenlabs, cartesia): (
            &TtsEspeak,
            &TtsOpenAi,
            &TtsElevenLabs,
            &TtsCartesia,
        ),
    ) -> Result<TtsChoice, SettingsError> {
        Ok(match engine.trim() {
            "espeak" => {
                // espeak-ng's own range; a value outside it was clamped without a word.
                if !(80..=450).contains(&espeak.rate_wpm) {
                    return Err(invalid(
                        format!("{at}.espeak.rate_wpm"),
                        "must be 80 to 450 (words per minute)",
                    ));
                }
                TtsChoice::Espeak(EspeakSettings {
                    voice: espeak.voice.clone(),
                    rate_wpm: espeak.rate_wpm,
                })
            }
            "openai" => {
                let o = openai;
                url::Url::parse(&o.base_url)
                    .map_err(|e| invalid(format!("{at}.openai.base_url"), e))?;
                if !matches!(o.sample_rate, 8000..=48000) {
                    return Err(invalid(
                        format!("{at}.openai.sample_rate"),
                        "must be 8000 to 48000",
                    ));
                }
                TtsChoice::OpenAi(OpenAiTtsSettings {
                    base_url: o.base_url.clone(),
                    tls: vendor_tls.clone(),
                    api_key: o.api_key.clone(),
                    model: o.model.clone(),
                    voice: o.voice.clone(),
                    sample_rate: o.sample_rate,
                    timeout: Duration::from_millis(o.timeout_ms.max(1)),
                    stream_idle: Duration::from_millis(self.tts.stream_idle_timeout_ms),
                })
            }
            "elevenlabs" => {
                let e = elevenlabs;
                let at = format!("{at}.elevenlabs");
                ws_url(&at, &e.base_url)?;
                if !elevenlabs::SAMPLE_RATES.contains(&e.sample_rate) {
                    return Err(invalid(
                        format!("{at}.sample_rate"),
                        "must be 8000, 16000, 22050, 24000, 44100 or 48000",
                    ));
                }
                voice_id(&format!("{at}.voice_id"), &e.voice_id)?;
                voice_id(&format!("{at}.model_id"), &e.model_id)?;
                max_message(&at, e.max_message_bytes)?;
                TtsChoice::ElevenLabs(ElevenLabsSettings {
                    base_url: e.base_url.clone(),
                    tls: vendor_tls.clone(),
                    api_key: e.api_key.clone(),
                    voice_id: e.voice_id.clone(),
                    model_id: e.model_id.clone(),
                    sample_rate: e.sample_rate,
                    timeout: Duration::from_millis(e.timeout_ms.max(1)),
                    stream_idle: Duration::from_millis(self.tts.stream_idle_timeout_ms),
                    max_message_bytes: e.max_message_bytes,
                    preconnect: Duration::from_millis(self.tts.preconnect_ms),
                })
            }
            "cartesia" => {
                let c = cartesia;
                let at = format!("{at}.cartesia");
                ws_url(&at, &c.base_url)?;
                if !matches!(c.sample_rate, 8000..=48000) {
                    return Err(invalid(
                        format!("{at}.sample_rate"),
                        "must be 8000 to 48000",
                    ));
                }
                voice_id(&format!("{at}.voice_id"), &c.voice_id)?;
                max_message(&at, c.max_message_bytes)?;
                TtsChoice::Cartesia(CartesiaSettings {
                    base_url: c.base_url.clone(),
                    tls: vendor_tls.clone(),
                    api_key: c.api_key.clone(),
                    version: c.version.clone(),
                    model_id: c.model_id.clone(),
                    voice_id: c.voice_id.clone(),
                    language: c.language.clone(),
                    sample_rate: c.sample_rate,
                    timeout: Duration::from_millis(c.timeout_ms.max(1)),
                    stream_idle: Duration::from_millis(self.tts.stream_idle_timeout_ms),
                    max_message_bytes: c.max_message_bytes,
                    preconnect: Duration::from_millis(self.tts.preconnect_ms),
                })
            }
            other => {
                return Err(invalid(
                    format!("{at}.engine"),
                    format!(
                        "{other:?}: want \"espeak\", \"openai\", \"elevenlabs\" or \"cartesia\""
                    ),
                ));
            }
        })
    }

    /// The recognizer `engine` with these settings; `at` names its keys in errors.
    fn asr_choice(
        &self,
        vendor_tls: &ClientTls,
        at: &str,
        engine: &str,
        pocketsphinx: &AsrPocketsphinx,
        openai: &AsrOpenAi,
        deepgram: &AsrDeepgram,
    ) -> Result<AsrChoice, SettingsError> {
        let read = |key: String, path: &str| {
            std::fs::read_to_string(path).map_err(|e| invalid(key, format!("{path}: {e}")))
        };
        Ok(match engine.trim() {
            "pocketsphinx" => {
                let p = pocketsphinx;
                let grammar = match p.grammar.trim() {
                    "" => None,
                    path => Some(read(format!("{at}.pocketsphinx.grammar"), path)?),
                };
                let mut grammars = Vec::new();
                for (name, path) in &p.grammars {
                    let key = format!("{at}.pocketsphinx.grammars.{name}");
                    profile_name(&key, name)?;
                    grammars.push((name.clone(), read(key, path.trim())?));
                }
                if !(1..=64).contains(&p.decoders) {
                    return Err(invalid(
                        format!("{at}.pocketsphinx.decoders"),
                        "must be 1 to 64 (decoder threads; each holds its models in memory)",
                    ));
                }
                // Audio comes every 100 ms while a caller speaks: below half a second a short
                // network hiccup would fail a live utterance; above a minute a dropped caller
                // holds a decoder for longer than any utterance lasts.
                if !(500..=60_000).contains(&p.audio_gap_max_ms) {
                    return Err(invalid(
                        format!("{at}.pocketsphinx.audio_gap_max_ms"),
                        "must be 500 to 60000",
                    ));
                }
                AsrChoice::Pocketsphinx(PocketsphinxSettings {
                    hmm: p.hmm.clone().into(),
                    dict: p.dict.clone().into(),
                    lm: (!p.lm.trim().is_empty()).then(|| p.lm.clone().into()),
                    grammar,
                    grammars,
                    decoders: p.decoders,
                    queue_max: p.queue_max,
                    unload_idle: (p.unload_idle_ms > 0)
                        .then(|| Duration::from_millis(p.unload_idle_ms)),
                    audio_gap_max: Duration::from_millis(p.audio_gap_max_ms),
                })
            }
            "openai" => {
                let o = openai;
                url::Url::parse(&o.base_url)
                    .map_err(|e| invalid(format!("{at}.openai.base_url"), e))?;
                // The bounds of a streaming engine's message (`max_message`): a reply holds one
                // utterance's transcription, a few kilobytes, and a call reads one at a time.
                if !(4096..=16_777_216).contains(&o.max_reply_bytes) {
                    return Err(invalid(
                        format!("{at}.openai.max_reply_bytes"),
                        "must be 4096 to 16777216",
                    ));
                }
                AsrChoice::OpenAi(OpenAiAsrSettings {
                    base_url: o.base_url.clone(),
                    tls: vendor_tls.clone(),
                    api_key: o.api_key.clone(),
                    model: o.model.clone(),
                    language: o.language.clone(),
                    timeout: Duration::from_millis(o.timeout_ms.max(1)),
                    stream_idle: Duration::from_millis(self.asr.stream_idle_timeout_ms),
                    max_reply_bytes: o.max_reply_bytes,
                    stream: o.stream,
                    logprobs: o.logprobs,
                })
            }
            "deepgram" => {
                let d = deepgram;
                let key = |k: &str| format!("{at}.deepgram.{k}");
                let url = url::Url::parse(&d.base_url).map_err(|e| invalid(key("base_url"), e))?;
                if !matches!(url.scheme(), "wss" | "ws") {
                    return Err(invalid(
                        key("base_url"),
                        "want wss:// (or ws://), e.g. wss://api.deepgram.com",
                    ));
                }
                if d.keywords.len() > MAX_KEYWORDS {
                    return Err(invalid(key("keywords"), format!("at most {MAX_KEYWORDS}")));
                }
                if d.connect_timeout_ms < 100 {
                    return Err(invalid(key("connect_timeout_ms"), "at least 100"));
                }
                if !(1000..=9000).contains(&d.keepalive_ms) {
                    return Err(invalid(
                        key("keepalive_ms"),
                        "want 1000 to 9000 (the server closes a stream without audio for 10 s)",
                    ));
                }
                if !(500..=60_000).contains(&d.max_buffered_ms) {
                    return Err(invalid(key("max_buffered_ms"), "want 500 to 60000"));
                }
                if d.endpointing_ms > 10_000 {
                    return Err(invalid(key("endpointing_ms"), "at most 10000 (0: off)"));
                }
                max_message(&format!("{at}.deepgram"), d.max_message_bytes)?;
                AsrChoice::Deepgram(DeepgramSettings {
                    base_url: d.base_url.clone(),
                    tls: vendor_tls.clone(),
                    api_key: d.api_key.clone(),
                    model: d.model.clone(),
                    language: d.language.clone(),
                    keywords: d.keywords.clone(),
                    endpointing_ms: d.endpointing_ms,
                    connect_timeout: Duration::from_millis(d.connect_timeout_ms),
                    stream_idle: Duration::from_millis(self.asr.stream_idle_timeout_ms),
                    keepalive: Duration::from_millis(d.keepalive_ms),
                    max_buffered_ms: d.max_buffered_ms,
                    max_message_bytes: d.max_message_bytes,
                })
            }
            other => {
                return Err(invalid(
                    format!("{at}.engine"),
                    format!("{other:?}: want \"pocketsphinx\", \"openai\" or \"deepgram\""),
                ));
            }
        })
    }

    /// Loads the layers: built-in defaults, `file` if given, then the environment.
    pub fn load(file: Option<&str>) -> Result<Settings, SettingsError> {
        Self::load_with_env(file, None)
    }

    /// As [`load`](Self::load), with the environment given explicitly (for tests).
    pub fn load_with_env(
        file: Option<&str>,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Settings, SettingsError> {
        use config::{Config, Environment, File, FileFormat};
        let mut b = Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        if let Some(path) = file {
            b = b.add_source(File::new(path, FileFormat::Toml).required(true));
        }
        let mut envsrc = Environment::with_prefix("VOICEGATE")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",");
        for k in LIST_KEYS {
            envsrc = envsrc.with_list_parse_key(k);
        }
        // Dial headers from the environment are taken verbatim: the general source parses
        // numbers and booleans (`007` would be sent as `7`), and a secret must arrive as typed.
        // (A variable that is not Unicode is refused by the general source.)
        let vars: Vec<(String, String)> = match &env {
            Some(map) => map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            None => std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        };
        let mut from_env = Vec::new();
        for (key, value) in vars {
            if let Some(name) = header_env_name(&key) {
                b = b.set_override(format!("dialog.headers.{name}"), value)?;
                from_env.push(name);
            }
        }
        if let Some(map) = env {
            envsrc = envsrc.source(Some(map.into_iter().collect()));
        }
        let mut settings: Settings = b.add_source(envsrc).build()?.try_deserialize()?;
        // A file's keys keep their case and the environment's are lower case, so a file's
        // `Authorization` and the environment's `authorization` are two keys to the layers: the
        // environment's wins, as it does for every other key.
        for name in from_env {
            let header = header_name(&name);
            settings
                .dialog
                .headers
                .retain(|key, _| *key == name || header_name(key) != header);
        }
        Ok(settings)
    }

    /// Checks every value and converts to domain types.
    pub fn validate(&self) -> Result<Validated, SettingsError> {
        let http_bind: SocketAddr = self.http.bind.parse().map_err(|e| {
            invalid(
                "http.bind",
                format!("{:?}: {e} (want ip:port)", self.http.bind),
            )
        })?;
        let allowed_origins = self
            .http
            .allowed_origins
            .iter()
            .map(|o| o.trim())
            .filter(|o| !o.is_empty())
            .map(|o| {
                origin(o).map_err(|why| invalid("http.allowed_origins", format!("{o:?}: {why}")))
            })
            .collect::<Result<Vec<String>, _>>()?;
        if self.http.max_body_bytes < 1024 {
            return Err(invalid("http.max_body_bytes", "must be at least 1024"));
        }
        if self.http.body_timeout_ms == 0 {
            return Err(invalid("http.body_timeout_ms", "must be above 0"));
        }
        let trusted_proxies = self
            .http
            .trusted_proxies
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .map_err(|e| invalid("http.trusted_proxies", e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let a = &self.admission;
        if !(a.offers_per_ip_per_s >= 0.0 && a.offers_per_ip_per_s.is_finite()) {
            return Err(invalid(
                "admission.offers_per_ip_per_s",
                "must be 0 or more",
            ));
        }
        if a.offer_burst == 0 {
            return Err(invalid("admission.offer_burst", "must be at least 1"));
        }
        if !(a.offers_per_prefix_per_s >= 0.0 && a.offers_per_prefix_per_s.is_finite()) {
            return Err(invalid(
                "admission.offers_per_prefix_per_s",
                "must be 0 or more",
            ));
        }
        if a.prefix_offer_burst == 0 {
            return Err(invalid(
                "admission.prefix_offer_burst",
                "must be at least 1",
            ));
        }
        let auth = self.auth.validate()?;
        if self.media.max_remote_candidates == 0 {
            return Err(invalid("media.max_remote_candidates", "must be at least 1"));
        }
        if self.calls.interrupted_hold_ms == 0 {
            return Err(invalid("calls.interrupted_hold_ms", "must be above 0"));
        }
        if self.calls.auth_timeout_ms == 0 {
            return Err(invalid("calls.auth_timeout_ms", "must be above 0"));
        }
        if self.calls.connect_timeout_ms < MIN_CONNECT_TIMEOUT_MS {
            // 0 would end every call "connect-timeout" at the first check, 200 ms in.
            return Err(invalid(
                "calls.connect_timeout_ms",
                format!(
                    "must be at least {MIN_CONNECT_TIMEOUT_MS} (a caller's ICE checks and DTLS handshake take round trips)"
                ),
            ));
        }

        let bind_ip: IpAddr = self
            .media
            .bind_ip
            .parse()
            .map_err(|e| invalid("media.bind_ip", format!("{:?}: {e}", self.media.bind_ip)))?;
        let public_ips = self
            .media
            .public_ips
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpAddr>()
                    .map_err(|e| invalid("media.public_ips", format!("{s:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let ice_servers: Vec<IceServer> = ice::parse_ice_servers(&self.media.ice_servers)
            .and_then(|servers| ice::refuse_turn(&servers).map(|()| servers))
            .map_err(|e| invalid("media.ice_servers", e))?;
        let ice_timers = IceTimers::new(
            Duration::from_millis(self.media.ice_disconnected_timeout_ms),
            Duration::from_millis(self.media.ice_failed_timeout_ms),
            Duration::from_millis(self.media.ice_keepalive_ms),
        )
        .map_err(|e| {
            let key = match e {
                IceTimerError::Disconnected => "media.ice_disconnected_timeout_ms",
                IceTimerError::Failed => "media.ice_failed_timeout_ms",
                IceTimerError::Keepalive { .. } => "media.ice_keepalive_ms",
            };
            invalid(key, e)
        })?;
        // The codec runs at any Opus rate; the speech path (VAD, endpointer, recognizers) runs
        // at 16 kHz and resamples from the others. A rate is accepted only if both can take it.
        if !OPUS_PCM_RATES.contains(&self.media.pcm_rate) {
            let rates: Vec<String> = OPUS_PCM_RATES.iter().map(u32::to_string).collect();
            return Err(invalid(
                "media.pcm_rate",
                format!("must be an Opus rate: {}", rates.join(", ")),
            ));
        }
        // With the denoiser too: it resamples to 48 kHz and back.
        SpeechFrames::new(self.media.pcm_rate, Denoise::Rnnoise).map_err(|e| {
            invalid(
                "media.pcm_rate",
                format!("the speech path cannot resample it to {SPEECH_RATE} Hz: {e}"),
            )
        })?;
        let (recording_settings, recording) = self.recording.validate(self.media.pcm_rate)?;
        if !(1..=32).contains(&self.media.reorder_depth) {
            return Err(invalid("media.reorder_depth", "must be 1 to 32"));
        }
        if !(0..=10).contains(&self.media.opus.complexity) {
            return Err(invalid("media.opus.complexity", "must be 0 to 10"));
        }
        if !(6000..=510_000).contains(&self.media.opus.bitrate) {
            return Err(invalid("media.opus.bitrate", "must be 6000 to 510000"));
        }
        if !(0..=25).contains(&self.media.opus.expected_loss_percent) {
            // The FEC is sized for at most 25 % loss (above it Opus spends the bitrate on
            // redundancy, not speech); a larger value was cut to 25 without a word.
            return Err(invalid(
                "media.opus.expected_loss_percent",
                "must be 0 to 25",
            ));
        }
        call_id::validate_prefix(&self.calls.id_prefix)
            .map_err(|e| invalid("calls.id_prefix", e))?;
        let node_id = match self.node.id.trim() {
            "" => call_id::node_id_from_hostname(&hostname()),
            id => {
                call_id::validate_node_id(id).map_err(|e| invalid("node.id", e))?;
                id.to_owned()
            }
        };
        if self.media.gather_timeout_ms == 0 {
            return Err(invalid("media.gather_timeout_ms", "must be above 0"));
        }
        if self.calls.rtp_timeout_ms < 1000 {
            return Err(invalid("calls.rtp_timeout_ms", "must be at least 1000"));
        }
        // A caller whose network drops sends no RTP either: an RTP timeout shorter than ICE's
        // failure window would end the calls ICE is still waiting for.
        let ice_failure_ms = ice_timers.failure_after().as_millis();
        if u128::from(self.calls.rtp_timeout_ms) < ice_failure_ms {
            return Err(invalid(
                "calls.rtp_timeout_ms",
                format!(
                    "is {}, must be at least media.ice_disconnected_timeout_ms + \
                     media.ice_failed_timeout_ms ({ice_failure_ms}), so a caller whose network \
                     drops keeps the call as long as ICE waits for it",
                    self.calls.rtp_timeout_ms
                ),
            ));
        }

        let d = &self.dialog;
        let dialog_target = match d.url.trim() {
            "demo" => DialogTarget::Demo,
            raw => {
                let url = url::Url::parse(raw).map_err(|e| {
                    invalid(
                        "dialog.url",
                        format!("{e} (want ws://, wss:// or \"demo\")"),
                    )
                })?;
                if !matches!(url.scheme(), "ws" | "wss") {
                    return Err(invalid("dialog.url", "must be ws://, wss:// or \"demo\""));
                }
                DialogTarget::Url(url)
            }
        };
        if d.ping_interval_ms < 100 || d.connect_timeout_ms == 0 {
            return Err(invalid(
                "dialog.ping_interval_ms",
                "must be at least 100 (and connect_timeout_ms above 0)",
            ));
        }
        if !(MIN_DIALOG_MESSAGE_BYTES..=MAX_DIALOG_MESSAGE_BYTES).contains(&d.max_message_bytes) {
            return Err(invalid(
                "dialog.max_message_bytes",
                format!("must be {MIN_DIALOG_MESSAGE_BYTES} to {MAX_DIALOG_MESSAGE_BYTES}"),
            ));
        }
        if !(1..=MAX_PAGE_MESSAGE_BYTES).contains(&self.page.max_message_bytes) {
            return Err(invalid(
                "page.max_message_bytes",
                format!("must be 1 to {MAX_PAGE_MESSAGE_BYTES}"),
            ));
        }
        if !(self.page.messages_per_s.is_finite() && self.page.messages_per_s > 0.0)
            || self.page.message_burst == 0
        {
            return Err(invalid(
                "page.messages_per_s",
                "must be above 0 (and page.message_burst at least 1)",
            ));
        }
        if !(1..=MAX_DIALOG_PAYLOAD_BYTES).contains(&d.max_payload_bytes) {
            return Err(invalid(
                "dialog.max_payload_bytes",
                format!("must be 1 to {MAX_DIALOG_PAYLOAD_BYTES}"),
            ));
        }
        if d.stable_after_ms < MIN_DIALOG_STABLE_AFTER_MS {
            return Err(invalid(
                "dialog.stable_after_ms",
                format!("must be at least {MIN_DIALOG_STABLE_AFTER_MS}"),
            ));
        }
        let headers = DialHeaders::new(
            d.headers
                .iter()
                .map(|(name, value)| (name.clone(), value.clone())),
        )
        .map_err(|e| invalid("dialog.headers", e))?;
        let tls = client_tls("dialog", &d.ca_file, d.public_roots)?;
        let vendor_tls = client_tls(
            "vendor_tls",
            &self.vendor_tls.ca_file,
            self.vendor_tls.public_roots,
        )?;
        let dialog = DialogSettings {
            url: url::Url::parse("ws://127.0.0.1/").expect("a constant URL parses"),
            connect_timeout: Duration::from_millis(d.connect_timeout_ms),
            ping_interval: Duration::from_millis(d.ping_interval_ms),
            pong_timeout: Duration::from_millis(d.pong_timeout_ms),
            reconnect_attempts: d.reconnect_attempts,
            reconnect_initial: Duration::from_millis(d.reconnect_initial_ms.max(1)),
            reconnect_max: Duration::from_millis(
                d.reconnect_max_ms.max(d.reconnect_initial_ms.max(1)),
            ),
            event_buffer: d.event_buffer.max(1),
            max_message_bytes: d.max_message_bytes,
            stable_after: Duration::from_millis(d.stable_after_ms),
            headers,
            tls,
        };
        let demo_llm = self.demo.llm.validate(&vendor_tls)?;
        if self.tts.stream_idle_timeout_ms < MIN_STREAM_IDLE_MS {
            return Err(invalid(
                "tts.stream_idle_timeout_ms",
                format!("must be at least {MIN_STREAM_IDLE_MS}"),
            ));
        }
        if self.tts.preconnect_ms > MAX_PRECONNECT_MS {
            return Err(invalid(
                "tts.preconnect_ms",
                format!("must be 0 to {MAX_PRECONNECT_MS}"),
            ));
        }
        if self.asr.stream_idle_timeout_ms < MIN_STREAM_IDLE_MS {
            return Err(invalid(
                "asr.stream_idle_timeout_ms",
                format!("must be at least {MIN_STREAM_IDLE_MS}"),
            ));
        }
        if self.asr.utterance_deadline_ms < MIN_UTTERANCE_DEADLINE_MS {
            return Err(invalid(
                "asr.utterance_deadline_ms",
                format!("must be at least {MIN_UTTERANCE_DEADLINE_MS}"),
            ));
        }
        if self.asr.pocketsphinx.queue_max == 0 {
            return Err(invalid(
                "asr.pocketsphinx.queue_max",
                "must be at least 1 (an utterance waits there until a decoder takes it)",
            ));
        }
        let t = &self.tts;
        let tts = self.tts_choice(
            &vendor_tls,
            "tts",
            &t.engine,
            (&t.espeak, &t.openai, &t.elevenlabs, &t.cartesia),
        )?;
        let asr = self.asr_choice(
            &vendor_tls,
            "asr",
            &self.asr.engine,
            &self.asr.pocketsphinx,
            &self.asr.openai,
            &self.asr.deepgram,
        )?;
        let mut tts_profiles = Vec::new();
        for (name, keys) in &self.tts.profiles {
            let at = format!("tts.profiles.{name}");
            profile_name(&at, name)?;
            let engine = profile_engine(&at, keys)?;
            let espeak = overlay(&at, keys, &engine, "espeak", &self.tts.espeak)?;
            let openai = overlay(&at, keys, &engine, "openai", &self.tts.openai)?;
            let elevenlabs = overlay(&at, keys, &engine, "elevenlabs", &self.tts.elevenlabs)?;
            let cartesia = overlay(&at, keys, &engine, "cartesia", &self.tts.cartesia)?;
            tts_profiles.push((
                name.clone(),
                self.tts_choice(
                    &vendor_tls,
                    &at,
                    &engine,
                    (&espeak, &openai, &elevenlabs, &cartesia),
                )?,
            ));
        }
        let mut asr_profiles = Vec::new();
        for (name, keys) in &self.asr.profiles {
            let at = format!("asr.profiles.{name}");
            profile_name(&at, name)?;
            let engine = profile_engine(&at, keys)?;
            let pocketsphinx = overlay(&at, keys, &engine, "pocketsphinx", &self.asr.pocketsphinx)?;
            let openai = overlay(&at, keys, &engine, "openai", &self.asr.openai)?;
            let deepgram = overlay(&at, keys, &engine, "deepgram", &self.asr.deepgram)?;
            asr_profiles.push((
                name.clone(),
                self.asr_choice(&vendor_tls, &at, &engine, &pocketsphinx, &openai, &deepgram)?,
            ));
        }
        let l = &self.listen;
        if l.end_silence_ms < 100 || l.speech_start_ms < 20 || l.max_utterance_ms < 1000 {
            return Err(invalid(
                "listen",
                "want speech_start_ms >= 20, end_silence_ms >= 100, max_utterance_ms >= 1000",
            ));
        }
        let denoise = Denoise::from_label(&l.denoise).ok_or_else(|| {
            let choices: Vec<&str> = Denoise::ALL.iter().map(|d| d.label()).collect();
            invalid(
                "listen.denoise",
                format!("{:?}: want one of {}", l.denoise, choices.join(", ")),
            )
        })?;
        if l.end_silence_min_ms < 100 || l.end_silence_min_ms > l.end_silence_ms {
            return Err(invalid(
                "listen.end_silence_min_ms",
                "want 100 to listen.end_silence_ms (equal: fixed endpointing)",
            ));
        }
        if l.stable_ms > 2000 {
            return Err(invalid("listen.stable_ms", "want 0 to 2000"));
        }
        let b = &self.barge_in;
        let barge_mode = BargeMode::parse(&b.mode).ok_or_else(|| {
            invalid(
                "barge_in.mode",
                format!("{:?}: want \"confirmed\" or \"immediate\"", b.mode),
            )
        })?;
        if !(20..=2000).contains(&b.pause_after_ms) {
            return Err(invalid("barge_in.pause_after_ms", "want 20 to 2000"));
        }
        if !(200..=10_000).contains(&b.confirm_ms) {
            return Err(invalid("barge_in.confirm_ms", "want 200 to 10000"));
        }
        if b.confirm_stable_ms > b.confirm_ms {
            return Err(invalid(
                "barge_in.confirm_stable_ms",
                "want at most barge_in.confirm_ms",
            ));
        }
        if !(1..=10).contains(&b.min_words) {
            return Err(invalid("barge_in.min_words", "want 1 to 10"));
        }
        if !(0.0..=1.0).contains(&b.min_confidence) {
            return Err(invalid("barge_in.min_confidence", "want 0 to 1"));
        }
        if b.backchannels.len() > 100 || b.backchannels.iter().any(|p| p.len() > 64) {
            return Err(invalid(
                "barge_in.backchannels",
                "at most 100 phrases of at most 64 bytes",
            ));
        }
        let listen = ListenSettings {
            denoise,
            endpoint: EndpointSettings {
                speech_start_ms: l.speech_start_ms,
                end_silence_ms: l.end_silence_ms,
                end_silence_min_ms: l.end_silence_min_ms,
                stable_ms: l.stable_ms,
                preroll_ms: l.preroll_ms,
                max_utterance_ms: l.max_utterance_ms,
            },
            barge_in: BargeInSettings {
                enabled: self.barge_in.enabled,
                mode: barge_mode,
                pause_after_ms: self.barge_in.pause_after_ms,
                min_speech_ms: self.barge_in.min_speech_ms,
                warmup_ms: self.barge_in.warmup_ms,
                level_margin_db: (self.barge_in.level_margin_db > 0.0)
                    .then_some(self.barge_in.level_margin_db),
            },
            backchannels: std::sync::Arc::new(Backchannels::new(
                &self.barge_in.backchannels,
                self.barge_in.min_words,
                self.barge_in.min_confidence,
            )),
            confirm: Duration::from_millis(u64::from(self.barge_in.confirm_ms)),
            confirm_stable: Duration::from_millis(u64::from(self.barge_in.confirm_stable_ms)),
            max_key_presses_per_s: l.max_key_presses_per_s,
        };
        let seg = &self.tts.segment;
        if seg.first_min_chars == 0
            || seg.first_max_chars < seg.first_min_chars
            || seg.max_chars < 20
        {
            return Err(invalid(
                "tts.segment",
                "want first_min_chars >= 1, first_max_chars >= first_min_chars, max_chars >= 20",
            ));
        }
        // The upper bounds: no dialog message carries more than 1 MiB, and the player's work per
        // command grows with the queue's length only through a few lookups.
        if !(64..=1_048_576).contains(&self.tts.max_text_bytes) {
            return Err(invalid("tts.max_text_bytes", "must be 64 to 1048576"));
        }
        if !(1..=1024).contains(&self.tts.max_queued_utterances) {
            return Err(invalid("tts.max_queued_utterances", "must be 1 to 1024"));
        }
        // A segment is at most `tts.segment.max_chars` of text, under a minute of speech at the
        // slowest voices; below a second even a short one would be cut, and above ten minutes
        // the bound no longer bounds a call's memory (it holds `2 * prefetch_segments` of them).
        if !(1000..=600_000).contains(&self.tts.max_segment_audio_ms) {
            return Err(invalid(
                "tts.max_segment_audio_ms",
                "must be 1000 to 600000",
            ));
        }

        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = |n: usize| if n == 0 { cores } else { n };
        let media = MediaSettings {
            bind: SocketAddr::new(bind_ip, self.media.udp_port),
            public_ips,
            ice_servers,
            workers: workers(self.media.workers),
            gather_timeout: Duration::from_millis(self.media.gather_timeout_ms),
            ice_timers,
            limits: MuxLimits {
                unconfirmed_checks: self.media.unconfirmed_check_budget,
            },
            max_trickled_candidates: self.media.max_remote_candidates,
        };
        let calls = CallSettings {
            node_id: node_id.clone(),
            id_prefix: self.calls.id_prefix.clone(),
            connect_timeout: Duration::from_millis(self.calls.connect_timeout_ms),
            auth_timeout: Duration::from_millis(self.calls.auth_timeout_ms),
            rtp_timeout: Duration::from_millis(self.calls.rtp_timeout_ms),
            interrupted_hold: Duration::from_millis(self.calls.interrupted_hold_ms),
            max_ice_restarts: self.calls.max_ice_restarts,
            pcm_rate: self.media.pcm_rate,
            reorder_depth: self.media.reorder_depth,
            reorder_wait: Duration::from_millis(self.media.reorder_wait_ms),
            max_conceal: self.media.max_conceal_frames,
            max_catch_up: self.media.max_catch_up_frames,
            max_queue_frames: self.media.max_queue_frames,
            encoder: EncoderSettings {
                pcm_rate: self.media.pcm_rate,
                complexity: self.media.opus.complexity,
                bitrate: self.media.opus.bitrate,
                fec: self.media.opus.fec,
                expected_loss_percent: self.media.opus.expected_loss_percent,
            },
            echo_delay_frames: (self.echo.delay_ms / u64::from(FRAME_MS)) as usize,
            player: PlayerSettings {
                limits: SegmentLimits {
                    first_min_chars: seg.first_min_chars,
                    first_max_chars: seg.first_max_chars,
                    max_chars: seg.max_chars,
                },
                prefetch: self.tts.prefetch_segments.max(1),
                max_text_bytes: self.tts.max_text_bytes,
                max_queued: self.tts.max_queued_utterances,
                // Counted at the call's rate, after resampling (600 s at 48 kHz fits easily).
                max_segment_samples: (self.tts.max_segment_audio_ms
                    * u64::from(self.media.pcm_rate)
                    / 1000) as usize,
            },
            max_restarts: self.supervision.max_restarts,
            restart_window: Duration::from_millis(self.supervision.window_ms),
            hold: HoldPrompts {
                first: d.hold_first.clone(),
                retry: d.hold_retry.clone(),
                give_up: d.hold_give_up.clone(),
            },
            listen,
            recognizer: RecognizerSettings {
                partial_interval: Duration::from_millis(self.asr.partial_interval_ms),
                utterance_deadline: Duration::from_millis(self.asr.utterance_deadline_ms),
            },
            page: PageLimits {
                max_message_bytes: self.page.max_message_bytes,
                messages_per_s: self.page.messages_per_s,
                burst: self.page.message_burst,
            },
            end_reasons: match self.compat.call_ended_reasons {
                EndReasonsConfig::Ours => EndReasonStyle::Ours,
                EndReasonsConfig::Original => EndReasonStyle::Original,
            },
            recording: recording_settings,
        };
        Ok(Validated {
            http_bind,
            allowed_origins,
            max_body_bytes: self.http.max_body_bytes,
            body_timeout: Duration::from_millis(self.http.body_timeout_ms),
            trusted_proxies,
            max_remote_candidates: self.media.max_remote_candidates,
            max_payload_bytes: self.dialog.max_payload_bytes,
            max_call_duration: (self.calls.max_duration_s > 0)
                .then(|| Duration::from_secs(self.calls.max_duration_s)),
            offers_per_source: (a.offers_per_ip_per_s, a.offer_burst),
            calls_per_source: a.calls_per_ip,
            offers_per_prefix: (a.offers_per_prefix_per_s, a.prefix_offer_burst),
            calls_per_prefix: a.calls_per_prefix,
            auth,
            http_workers: workers(self.http.workers),
            media,
            calls,
            tts,
            tts_profiles,
            asr,
            asr_profiles,
            dialog_target,
            dialog,
            demo_llm,
            vendor_tls,
            log: self.log.clone(),
            trace_messages: self.tracing.messages,
            max_calls: self.calls.max,
            retry_after_s: self.calls.retry_after_s.max(1),
            shutdown_grace: Duration::from_millis(self.calls.shutdown_grace_ms),
            node_id,
            recording,
        })
    }
}

/// Bounds of `demo.llm.timeout_ms`: below a second no model answers; above ten minutes a stuck
/// server holds a request for no one.
const DEMO_LLM_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 1000..=600_000;
/// Bounds of `demo.llm.max_response_bytes`: a chunk event alone is a few hundred bytes.
const DEMO_LLM_RESPONSE_BYTES: std::ops::RangeInclusive<usize> = 1024..=16 << 20;
/// Bounds of `demo.llm.max_history_messages`: at least one exchange.
const DEMO_LLM_HISTORY: std::ops::RangeInclusive<usize> = 2..=1000;

impl DemoLlm {
    /// `None` when `base_url` is empty (the demo repeats); the settings otherwise.
    fn validate(&self, tls: &ClientTls) -> Result<Option<LlmSettings>, SettingsError> {
        let base = self.base_url.trim();
        if base.is_empty() {
            return Ok(None);
        }
        let url = url::Url::parse(base.trim_end_matches('/')).map_err(|e| {
            invalid(
                "demo.llm.base_url",
                format!("{e} (want http:// or https://, e.g. https://api.openai.com)"),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("demo.llm.base_url", "must be http:// or https://"));
        }
        if !url.username().is_empty() || url.password().is_some() || url.query().is_some() {
            return Err(invalid(
                "demo.llm.base_url",
                "must carry no credentials or query (set demo.llm.api_key)",
            ));
        }
        let path = url.path().trim_end_matches('/');
        if path.ends_with("/v1") || path.ends_with(crate::llm::CHAT_PATH) {
            return Err(invalid(
                "demo.llm.base_url",
                format!(
                    "leave out the path: {}{} is appended",
                    "{base_url}",
                    crate::llm::CHAT_PATH
                ),
            ));
        }
        let endpoint = url::Url::parse(&format!(
            "{}{}",
            url.as_str().trim_end_matches('/'),
            crate::llm::CHAT_PATH
        ))
        .map_err(|e| invalid("demo.llm.base_url", e))?;
        if self.model.trim().is_empty() {
            return Err(invalid(
                "demo.llm.model",
                "must be set when demo.llm.base_url is",
            ));
        }
        if !DEMO_LLM_TIMEOUT_MS.contains(&self.timeout_ms) {
            return Err(invalid(
                "demo.llm.timeout_ms",
                format!(
                    "must be {} to {}",
                    DEMO_LLM_TIMEOUT_MS.start(),
                    DEMO_LLM_TIMEOUT_MS.end()
                ),
            ));
        }
        if !DEMO_LLM_RESPONSE_BYTES.contains(&self.max_response_bytes) {
            return Err(invalid(
                "demo.llm.max_response_bytes",
                format!(
                    "must be {} to {}",
                    DEMO_LLM_RESPONSE_BYTES.start(),
                    DEMO_LLM_RESPONSE_BYTES.end()
                ),
            ));
        }
        if !DEMO_LLM_HISTORY.contains(&self.max_history_messages) {
            return Err(invalid(
                "demo.llm.max_history_messages",
                format!(
                    "must be {} to {}",
                    DEMO_LLM_HISTORY.start(),
                    DEMO_LLM_HISTORY.end()
                ),
            ));
        }
        let key = self.api_key.expose_secret().trim();
        Ok(Some(LlmSettings {
            endpoint,
            model: self.model.trim().to_owned(),
            api_key: (!key.is_empty()).then(|| SecretString::from(key.to_owned())),
            system_prompt: self.system_prompt.clone(),
            timeout: Duration::from_millis(self.timeout_ms),
            max_response_bytes: self.max_response_bytes,
            max_history_messages: self.max_history_messages,
            tls: tls.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn defaults_load_and_validate() {
        let s = Settings::load_with_env(None, env(&[])).unwrap();
        assert_eq!(s.http.bind, "127.0.0.1:8080");
        assert!(s.http.allowed_origins.is_empty());
        assert_eq!(s.media.bind_ip, "0.0.0.0");
        assert_eq!(s.media.udp_port, 50000);
        assert!(s.media.public_ips.is_empty());
        assert_eq!(s.media.ice_servers, "");
        assert_eq!(s.calls.id_prefix, "wrtc");
        assert_eq!(s.dialog.url, "demo");
        assert_eq!(s.tts.engine, "espeak");
        let v = s.validate().unwrap();
        assert!(matches!(v.dialog_target, DialogTarget::Demo));
        assert_eq!(v.dialog.max_message_bytes, 1 << 20);
        assert_eq!(v.dialog.stable_after, Duration::from_secs(10));
        assert!(matches!(v.tts, TtsChoice::Espeak(_)));
        assert_eq!(v.calls.player.max_text_bytes, 16384);
        assert_eq!(v.calls.player.max_queued, 64);
        // A minute at media.pcm_rate's 16 kHz.
        assert_eq!(v.calls.player.max_segment_samples, 960_000);
        assert_eq!(v.media.bind.port(), 50000);
        assert!(v.media.workers >= 1);
        // Engine deadlines: none is off, so a stalled engine always costs a bounded time.
        assert_eq!(s.tts.stream_idle_timeout_ms, 5000);
        assert_eq!(s.tts.preconnect_ms, 10_000);
        assert_eq!(s.asr.stream_idle_timeout_ms, 10_000);
        assert_eq!(
            v.calls.recognizer.utterance_deadline,
            Duration::from_secs(15)
        );
        let AsrChoice::Pocketsphinx(p) = &v.asr else {
            panic!("pocketsphinx is the default recognizer");
        };
        assert_eq!(p.queue_max, 8);
        assert_eq!(p.unload_idle, Some(Duration::from_secs(300)));
    }

    #[test]
    fn call_tokens_need_long_secrets_from_the_environment() {
        let load = |pairs: &[(&str, &str)]| {
            Settings::load_with_env(None, env(pairs))
                .unwrap()
                .validate()
                .map(|v| v.auth)
        };
        assert!(load(&[]).unwrap().is_none(), "auth.mode = none by default");
        let err = load(&[("VOICEGATE__AUTH__MODE", "token")]).unwrap_err();
        assert!(err.to_string().contains("auth.secrets"), "{err}");
        let err = load(&[
            ("VOICEGATE__AUTH__MODE", "token"),
            ("VOICEGATE__AUTH__SECRETS", "short"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("shorter than 32 bytes"), "{err}");
        let err = load(&[("VOICEGATE__AUTH__MODE", "tokens")]).unwrap_err();
        assert!(err.to_string().contains("auth.mode"), "{err}");
        let two = format!("{},{}", "a".repeat(32), "b".repeat(40));
        let auth = load(&[
            ("VOICEGATE__AUTH__MODE", "token"),
            ("VOICEGATE__AUTH__SECRETS", &two),
        ])
        .unwrap()
        .expect("token mode");
        assert_eq!(auth.secrets.len(), 2, "comma-separated, for rotation");
        assert_eq!(auth.secrets[1].expose_secret().len(), 40);
        assert!(!format!("{auth:?}").contains("aaaa"), "secrets never print");
        assert_eq!((auth.leeway_s, auth.max_ttl_s), (30, 3600));
        assert_eq!(auth.max_single_use_tokens, 100_000);
    }

    #[test]
    fn secrets_never_print() {
        let s = Settings::load_with_env(
            None,
            env(&[
                ("VOICEGATE__TTS__ENGINE", "openai"),
                ("VOICEGATE__TTS__OPENAI__API_KEY", "sk-tts-secret"),
                ("VOICEGATE__ASR__ENGINE", "openai"),
                ("VOICEGATE__ASR__OPENAI__API_KEY", "sk-asr-secret"),
            ]),
        )
        .unwrap();
        let raw = format!("{:?} {:?}", s.tts, s.asr);
        let v = s.validate().unwrap();
        let validated = format!("{v:?}");
        for shown in [&raw, &validated] {
            for secret in ["sk-tts-secret", "sk-asr-secret"] {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
        }
        // The keys still reach the engines.
        let (TtsChoice::OpenAi(t), AsrChoice::OpenAi(a)) = (&v.tts, &v.asr) else {
            panic!("both engines are openai");
        };
        use secrecy::ExposeSecret;
        assert_eq!(t.api_key.expose_secret(), "sk-tts-secret");
        assert_eq!(a.api_key.expose_secret(), "sk-asr-secret");
    }

    /// `[demo.llm]`: off by default; on with a base URL and a model, the key from the
    /// environment never shown; every mistake named by its key.
    #[test]
    fn demo_llm_is_checked_and_its_key_never_shown() {
        let v = Settings::load_with_env(None, env(&[]))
            .unwrap()
            .validate()
            .unwrap();
        assert!(v.demo_llm.is_none(), "the demo repeats by default");
        let s = Settings::load_with_env(
            None,
            env(&[
                ("VOICEGATE__DEMO__LLM__BASE_URL", "http://127.0.0.1:8081/"),
                ("VOICEGATE__DEMO__LLM__MODEL", "llama"),
                ("VOICEGATE__DEMO__LLM__API_KEY", "sk-llm-secret"),
            ]),
        )
        .unwrap();
        let v = s.validate().unwrap();
        for shown in [format!("{:?}", s.demo), format!("{v:?}")] {
            assert!(!shown.contains("sk-llm-secret"), "{shown}");
        }
        let llm = v.demo_llm.unwrap();
        assert_eq!(
            llm.endpoint.as_str(),
            "http://127.0.0.1:8081/v1/chat/completions"
        );
        use secrecy::ExposeSecret;
        assert_eq!(llm.api_key.unwrap().expose_secret(), "sk-llm-secret");
        assert_eq!(
            (
                llm.timeout,
                llm.max_response_bytes,
                llm.max_history_messages
            ),
            (Duration::from_secs(30), 262_144, 40)
        );
        for (pairs, key) in [
            (
                vec![("VOICEGATE__DEMO__LLM__BASE_URL", "http://x.example")],
                "demo.llm.model",
            ),
            (
                vec![("VOICEGATE__DEMO__LLM__BASE_URL", "ftp://x.example")],
                "demo.llm.base_url",
            ),
            (
                vec![("VOICEGATE__DEMO__LLM__BASE_URL", "not a url")],
                "demo.llm.base_url",
            ),
            (
                vec![(
                    "VOICEGATE__DEMO__LLM__BASE_URL",
                    "https://api.openai.com/v1",
                )],
                "demo.llm.base_url",
            ),
            (
                vec![("VOICEGATE__DEMO__LLM__BASE_URL", "https://u:p@x.example")],
                "demo.llm.base_url",
            ),
            (
                vec![("VOICEGATE__DEMO__LLM__TIMEOUT_MS", "10")],
                "demo.llm.timeout_ms",
            ),
            (
                vec![("VOICEGATE__DEMO__LLM__MAX_RESPONSE_BYTES", "10")],
                "demo.llm.max_response_bytes",
            ),
            (
                vec![("VOICEGATE__DEMO__LLM__MAX_HISTORY_MESSAGES", "1")],
                "demo.llm.max_history_messages",
            ),
        ] {
            let mut all = vec![
                ("VOICEGATE__DEMO__LLM__BASE_URL", "http://x.example"),
                ("VOICEGATE__DEMO__LLM__MODEL", "m"),
            ];
            if key == "demo.llm.model" {
                all.pop();
            }
            all.extend(pairs);
            let err = Settings::load_with_env(None, env(&all))
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{all:?}: {err}");
        }
    }

    /// Server-side TURN is refused by name (one shared socket holds one allocation per TURN
    /// server), without showing the credentials; STUN entries are kept.
    #[test]
    fn server_side_turn_is_refused_and_stun_kept() {
        for spec in [
            "turn:t.example:3478?username=turn-user&credential=turn-secret",
            "stun:s.example, turns:t.example:5349?username=turn-user&credential=turn-secret",
        ] {
            let err =
                Settings::load_with_env(None, env(&[("VOICEGATE__MEDIA__ICE_SERVERS", spec)]))
                    .unwrap()
                    .validate()
                    .unwrap_err()
                    .to_string();
            assert!(err.contains("media.ice_servers"), "{err}");
            assert!(err.contains("TURN is not supported"), "{err}");
            assert!(err.contains("one UDP socket"), "{err}");
            assert!(
                !err.contains("turn-user") && !err.contains("turn-secret"),
                "{err}"
            );
        }
        let v = Settings::load_with_env(
            None,
            env(&[(
                "VOICEGATE__MEDIA__ICE_SERVERS",
                "stun:a.example:3478, stun:b.example",
            )]),
        )
        .unwrap()
        .validate()
        .unwrap();
        let urls: Vec<&str> = v.media.ice_servers.iter().map(|s| s.url.as_str()).collect();
        assert_eq!(urls, ["stun:a.example:3478", "stun:b.example"]);
    }

    /// The defaults survive a 20 s outage, the RTP timeout never ends a call ICE still waits
    /// for, and each timer out of bounds is refused by its key.
    #[test]
    fn ice_timers_survive_an_outage_and_bound_the_rtp_timeout() {
        let load = |pairs: &[(&str, &str)]| {
            Settings::load_with_env(None, env(pairs))
                .unwrap()
                .validate()
                .map_err(|e| e.to_string())
        };
        let v = load(&[]).unwrap();
        let t = v.media.ice_timers;
        assert_eq!(t.disconnected(), Duration::from_secs(5));
        assert_eq!(t.failed(), Duration::from_secs(25));
        assert_eq!(t.keepalive(), Duration::from_secs(1));
        assert!(t.failure_after() > Duration::from_secs(20));
        assert!(v.calls.rtp_timeout >= t.failure_after());

        // Custom timers reach the media plane.
        let v = load(&[
            ("VOICEGATE__MEDIA__ICE_DISCONNECTED_TIMEOUT_MS", "2000"),
            ("VOICEGATE__MEDIA__ICE_FAILED_TIMEOUT_MS", "3000"),
            ("VOICEGATE__MEDIA__ICE_KEEPALIVE_MS", "500"),
            ("VOICEGATE__CALLS__RTP_TIMEOUT_MS", "5000"),
        ])
        .unwrap();
        assert_eq!(v.media.ice_timers.failure_after(), Duration::from_secs(5));
        assert_eq!(v.calls.rtp_timeout, Duration::from_secs(5));

        // An RTP timeout shorter than the ICE window names both sides.
        let err = load(&[("VOICEGATE__CALLS__RTP_TIMEOUT_MS", "10000")]).unwrap_err();
        for part in [
            "calls.rtp_timeout_ms",
            "media.ice_disconnected_timeout_ms",
            "media.ice_failed_timeout_ms",
            "30000",
        ] {
            assert!(err.contains(part), "{part} missing: {err}");
        }
        let err = load(&[
            ("VOICEGATE__MEDIA__ICE_FAILED_TIMEOUT_MS", "40000"),
            ("VOICEGATE__CALLS__RTP_TIMEOUT_MS", "44999"),
        ])
        .unwrap_err();
        assert!(err.contains("45000"), "{err}");

        let cases: &[(&str, &str, &str)] = &[
            (
                "ICE_DISCONNECTED_TIMEOUT_MS",
                "0",
                "media.ice_disconnected_timeout_ms",
            ),
            (
                "ICE_DISCONNECTED_TIMEOUT_MS",
                "60001",
                "media.ice_disconnected_timeout_ms",
            ),
            ("ICE_FAILED_TIMEOUT_MS", "0", "media.ice_failed_timeout_ms"),
            (
                "ICE_FAILED_TIMEOUT_MS",
                "300001",
                "media.ice_failed_timeout_ms",
            ),
            ("ICE_KEEPALIVE_MS", "0", "media.ice_keepalive_ms"),
            ("ICE_KEEPALIVE_MS", "2501", "media.ice_keepalive_ms"),
            ("ICE_KEEPALIVE_MS", "nope", "ice_keepalive_ms"),
        ];
        for (k, v, key) in cases {
            let var = format!("VOICEGATE__MEDIA__{k}");
            let err = match Settings::load_with_env(None, env(&[(&var, v)])) {
                Ok(s) => s.validate().unwrap_err().to_string(),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(key), "{k}={v}: {err}");
        }
    }

    #[test]
    fn environment_overrides_with_lists_and_nesting() {
        let s = Settings::load_with_env(
            None,
            env(&[
                ("VOICEGATE__HTTP__BIND", "0.0.0.0:9000"),
                (
                    "VOICEGATE__HTTP__ALLOWED_ORIGINS",
                    "https://a.example,https://b.example",
                ),
                ("VOICEGATE__MEDIA__PUBLIC_IPS", "203.0.113.7"),
                ("VOICEGATE__MEDIA__OPUS__COMPLEXITY", "3"),
                ("VOICEGATE__MEDIA__ICE_SERVERS", "stun:s.example:3478"),
                ("VOICEGATE__CALLS__ID_PREFIX", "test"),
            ]),
        )
        .unwrap();
        assert_eq!(s.http.bind, "0.0.0.0:9000");
        assert_eq!(
            s.http.allowed_origins,
            vec!["https://a.example", "https://b.example"]
        );
        assert_eq!(s.media.public_ips, vec!["203.0.113.7"]);
        assert_eq!(s.media.opus.complexity, 3);
        let v = s.validate().unwrap();
        assert_eq!(v.media.ice_servers.len(), 1);
        assert_eq!(v.calls.id_prefix, "test");
    }

    #[test]
    fn a_file_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("vg-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("over.toml");
        std::fs::write(&path, "[echo]\ndelay_ms = 200\n[media]\nudp_port = 50100\n").unwrap();
        let s = Settings::load_with_env(Some(path.to_str().unwrap()), env(&[])).unwrap();
        assert_eq!(s.echo.delay_ms, 200);
        assert_eq!(s.media.udp_port, 50100);
        assert_eq!(s.validate().unwrap().calls.echo_delay_frames, 10);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_node_id_is_checked_or_made_from_the_host_name() {
        let v = Settings::load_with_env(None, env(&[("VOICEGATE__NODE__ID", "b7")]))
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(v.node_id, "b7");
        assert_eq!(v.calls.node_id, "b7", "call ids name it");
        let v = Settings::load_with_env(None, env(&[]))
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(v.node_id, call_id::node_id_from_hostname(&hostname()));
        assert!(call_id::validate_node_id(&v.node_id).is_ok());
    }

    #[test]
    fn streaming_engines_validate_and_take_profiles() {
        let load = |pairs: &[(&str, &str)]| {
            Settings::load_with_env(None, env(pairs))
                .map_err(|e| e.to_string())?
                .validate()
                .map_err(|e| e.to_string())
        };
        let v = load(&[
            ("VOICEGATE__TTS__ENGINE", "elevenlabs"),
            ("VOICEGATE__TTS__ELEVENLABS__API_KEY", "xi-key-secret"),
            ("VOICEGATE__TTS__PROFILES__FAST__ENGINE", "cartesia"),
            ("VOICEGATE__TTS__PROFILES__FAST__VOICE_ID", "abc-123"),
            ("VOICEGATE__TTS__PROFILES__FAST__SAMPLE_RATE", "24000"),
        ])
        .unwrap();
        let TtsChoice::ElevenLabs(e) = &v.tts else {
            panic!("{:?}", v.tts);
        };
        assert_eq!((e.sample_rate, e.max_message_bytes), (16000, 1 << 20));
        assert_eq!(e.api_key.expose_secret(), "xi-key-secret");
        assert_eq!(e.stream_idle, Duration::from_millis(5000));
        assert_eq!(e.preconnect, Duration::from_secs(10));
        assert!(!format!("{v:?}").contains("xi-key-secret"));
        let [(name, TtsChoice::Cartesia(c))] = &v.tts_profiles[..] else {
            panic!("{:?}", v.tts_profiles);
        };
        assert_eq!(
            (name.as_str(), c.voice_id.as_str(), c.sample_rate),
            ("fast", "abc-123", 24000)
        );
        assert_eq!(c.model_id, "sonic-2", "the rest from [tts.cartesia]");
        assert_eq!(c.preconnect, Duration::from_secs(10));

        for (pairs, key) in [
            (
                &[
                    ("VOICEGATE__TTS__ENGINE", "elevenlabs"),
                    ("VOICEGATE__TTS__ELEVENLABS__SAMPLE_RATE", "12000"),
                ][..],
                "tts.elevenlabs.sample_rate",
            ),
            (
                &[
                    ("VOICEGATE__TTS__ENGINE", "elevenlabs"),
                    (
                        "VOICEGATE__TTS__ELEVENLABS__BASE_URL",
                        "https://api.elevenlabs.io",
                    ),
                ][..],
                "tts.elevenlabs.base_url",
            ),
            (
                &[
                    ("VOICEGATE__TTS__ENGINE", "elevenlabs"),
                    ("VOICEGATE__TTS__ELEVENLABS__VOICE_ID", "../x"),
                ][..],
                "tts.elevenlabs.voice_id",
            ),
            (
                &[
                    ("VOICEGATE__TTS__ENGINE", "cartesia"),
                    ("VOICEGATE__TTS__CARTESIA__MAX_MESSAGE_BYTES", "100"),
                ][..],
                "tts.cartesia.max_message_bytes",
            ),
            (
                &[
                    ("VOICEGATE__TTS__ENGINE", "cartesia"),
                    ("VOICEGATE__TTS__CARTESIA__SAMPLE_RATE", "96000"),
                ][..],
                "tts.cartesia.sample_rate",
            ),
            (
                &[
                    ("VOICEGATE__TTS__PROFILES__X__ENGINE", "cartesia"),
                    ("VOICEGATE__TTS__PROFILES__X__MAX_MESSAGE_BYTES", "1"),
                ][..],
                "tts.profiles.x.cartesia.max_message_bytes",
            ),
        ] {
            let err = load(pairs).unwrap_err();
            assert!(err.contains(key), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn engine_profiles_overlay_their_engine_and_bad_ones_name_their_key() {
        let v = Settings::load_with_env(
            None,
            env(&[
                ("VOICEGATE__TTS__PROFILES__SUPPORT__ENGINE", "openai"),
                ("VOICEGATE__TTS__PROFILES__SUPPORT__VOICE", "nova"),
                ("VOICEGATE__TTS__PROFILES__SUPPORT__SAMPLE_RATE", "16000"),
                ("VOICEGATE__TTS__OPENAI__MODEL", "m2"),
                ("VOICEGATE__ASR__PROFILES__REMOTE__ENGINE", "openai"),
                ("VOICEGATE__ASR__PROFILES__REMOTE__LANGUAGE", "de"),
            ]),
        )
        .unwrap()
        .validate()
        .unwrap();
        let [(name, TtsChoice::OpenAi(t))] = &v.tts_profiles[..] else {
            panic!("{:?}", v.tts_profiles);
        };
        assert_eq!(name, "support");
        // The profile's keys over the top-level table, which the profile does not repeat.
        assert_eq!(
            (t.voice.as_str(), t.sample_rate, t.model.as_str()),
            ("nova", 16000, "m2")
        );
        assert!(
            matches!(v.tts, TtsChoice::Espeak(_)),
            "the default engine stays"
        );
        let [(_, AsrChoice::OpenAi(a))] = &v.asr_profiles[..] else {
            panic!("{:?}", v.asr_profiles);
        };
        assert_eq!(a.language, "de");

        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("VOICEGATE__TTS__PROFILES__X__VOICE", "v")],
                "tts.profiles.x.engine",
            ),
            (
                &[
                    ("VOICEGATE__TTS__PROFILES__X__ENGINE", "espeak"),
                    ("VOICEGATE__TTS__PROFILES__X__BASE_URL", "http://a"),
                ],
                "tts.profiles.x.base_url",
            ),
            (
                &[("VOICEGATE__TTS__PROFILES__X__ENGINE", "festival")],
                "tts.profiles.x.engine",
            ),
            (
                &[("VOICEGATE__TTS__PROFILES__DEFAULT__ENGINE", "espeak")],
                "tts.profiles.default",
            ),
            (
                &[
                    ("VOICEGATE__ASR__PROFILES__R__ENGINE", "openai"),
                    ("VOICEGATE__ASR__PROFILES__R__BASE_URL", "not a url"),
                ],
                "asr.profiles.r.openai.base_url",
            ),
            (
                &[(
                    "VOICEGATE__ASR__POCKETSPHINX__GRAMMARS__MENU",
                    "/nonexistent.gram",
                )],
                "asr.pocketsphinx.grammars.menu",
            ),
        ];
        for (pairs, key) in cases {
            let err = Settings::load_with_env(None, env(pairs))
                .and_then(|s| s.validate().map(|_| ()))
                .unwrap_err();
            assert!(err.to_string().contains(key), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn deepgram_is_configured_per_call_or_per_profile_and_its_bounds_name_their_key() {
        let v = Settings::load_with_env(
            None,
            env(&[
                ("VOICEGATE__ASR__ENGINE", "deepgram"),
                ("VOICEGATE__ASR__DEEPGRAM__API_KEY", "dg-key"),
                ("VOICEGATE__ASR__DEEPGRAM__KEYWORDS", "voicegate:2,Opus"),
                ("VOICEGATE__ASR__PROFILES__FAST__ENGINE", "deepgram"),
                ("VOICEGATE__ASR__PROFILES__FAST__ENDPOINTING_MS", "100"),
                ("VOICEGATE__ASR__PROFILES__FAST__LANGUAGE", "de"),
            ]),
        )
        .unwrap()
        .validate()
        .unwrap();
        let AsrChoice::Deepgram(d) = &v.asr else {
            panic!("{:?}", v.asr);
        };
        assert_eq!(d.base_url, "wss://api.deepgram.com");
        assert_eq!(d.keywords, ["voicegate:2", "Opus"]);
        assert_eq!(
            (d.model.as_str(), d.endpointing_ms, d.max_buffered_ms),
            ("nova-3", 300, 10000)
        );
        assert_eq!(d.connect_timeout, Duration::from_secs(5));
        assert_eq!(d.keepalive, Duration::from_secs(5));
        assert!(!format!("{v:?}").contains("dg-key"), "the key never shows");
        let [(name, AsrChoice::Deepgram(p))] = &v.asr_profiles[..] else {
            panic!("{:?}", v.asr_profiles);
        };
        assert_eq!(name, "fast");
        assert_eq!((p.endpointing_ms, p.language.as_str()), (100, "de"));
        assert_eq!(p.keywords, d.keywords, "the rest from [asr.deepgram]");

        let many = vec!["w"; MAX_KEYWORDS + 1].join(",");
        let cases: &[(&str, &str, &str)] = &[
            (
                "BASE_URL",
                "https://api.deepgram.com",
                "asr.deepgram.base_url",
            ),
            ("BASE_URL", "not a url", "asr.deepgram.base_url"),
            ("KEYWORDS", &many, "asr.deepgram.keywords"),
            (
                "CONNECT_TIMEOUT_MS",
                "99",
                "asr.deepgram.connect_timeout_ms",
            ),
            ("KEEPALIVE_MS", "10000", "asr.deepgram.keepalive_ms"),
            ("KEEPALIVE_MS", "999", "asr.deepgram.keepalive_ms"),
            ("MAX_BUFFERED_MS", "499", "asr.deepgram.max_buffered_ms"),
            ("MAX_BUFFERED_MS", "60001", "asr.deepgram.max_buffered_ms"),
            ("ENDPOINTING_MS", "10001", "asr.deepgram.endpointing_ms"),
        ];
        for (k, value, key) in cases {
            let var = format!("VOICEGATE__ASR__DEEPGRAM__{k}");
            let err = Settings::load_with_env(
                None,
                env(&[("VOICEGATE__ASR__ENGINE", "deepgram"), (&var, value)]),
            )
            .and_then(|s| s.validate().map(|_| ()))
            .unwrap_err();
            assert!(err.to_string().contains(key), "{k}={value}: {err}");
        }
    }

    /// The recognizers' own limits: each has a default, reaches its engine as configured
    /// (also through a profile), and a value out of its range stops startup naming the key.
    #[test]
    fn the_recognizers_limits_have_defaults_reach_their_engines_and_name_their_keys() {
        let asr = |pairs: &[(&str, &str)]| {
            let v = Settings::load_with_env(None, env(pairs))
                .unwrap()
                .validate()
                .unwrap();
            (v.asr, v.asr_profiles)
        };
        let (AsrChoice::Pocketsphinx(p), _) = asr(&[]) else {
            panic!("pocketsphinx is the default recognizer");
        };
        assert_eq!(p.audio_gap_max, Duration::from_secs(3));
        let (AsrChoice::OpenAi(o), _) = asr(&[("VOICEGATE__ASR__ENGINE", "openai")]) else {
            panic!("openai");
        };
        assert_eq!(o.max_reply_bytes, 1 << 20);
        let (AsrChoice::Deepgram(d), _) = asr(&[("VOICEGATE__ASR__ENGINE", "deepgram")]) else {
            panic!("deepgram");
        };
        assert_eq!(d.max_message_bytes, 256 * 1024);

        let (AsrChoice::Pocketsphinx(p), profiles) = asr(&[
            ("VOICEGATE__ASR__POCKETSPHINX__AUDIO_GAP_MAX_MS", "500"),
            ("VOICEGATE__ASR__PROFILES__DG__ENGINE", "deepgram"),
            ("VOICEGATE__ASR__PROFILES__DG__MAX_MESSAGE_BYTES", "4096"),
            ("VOICEGATE__ASR__PROFILES__OA__ENGINE", "openai"),
            ("VOICEGATE__ASR__PROFILES__OA__MAX_REPLY_BYTES", "16777216"),
        ]) else {
            panic!("pocketsphinx");
        };
        assert_eq!(p.audio_gap_max, Duration::from_millis(500));
        let [(_, AsrChoice::Deepgram(d)), (_, AsrChoice::OpenAi(o))] = &profiles[..] else {
            panic!("{profiles:?}");
        };
        assert_eq!((d.max_message_bytes, o.max_reply_bytes), (4096, 16_777_216));

        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "pocketsphinx",
                "VOICEGATE__ASR__POCKETSPHINX__AUDIO_GAP_MAX_MS",
                "499",
                "asr.pocketsphinx.audio_gap_max_ms",
            ),
            (
                "pocketsphinx",
                "VOICEGATE__ASR__POCKETSPHINX__AUDIO_GAP_MAX_MS",
                "60001",
                "asr.pocketsphinx.audio_gap_max_ms",
            ),
            (
                "openai",
                "VOICEGATE__ASR__OPENAI__MAX_REPLY_BYTES",
                "4095",
                "asr.openai.max_reply_bytes",
            ),
            (
                "openai",
                "VOICEGATE__ASR__OPENAI__MAX_REPLY_BYTES",
                "16777217",
                "asr.openai.max_reply_bytes",
            ),
            (
                "deepgram",
                "VOICEGATE__ASR__DEEPGRAM__MAX_MESSAGE_BYTES",
                "4095",
                "asr.deepgram.max_message_bytes",
            ),
            (
                "deepgram",
                "VOICEGATE__ASR__DEEPGRAM__MAX_MESSAGE_BYTES",
                "16777217",
                "asr.deepgram.max_message_bytes",
            ),
            (
                "pocketsphinx",
                "VOICEGATE__ASR__PROFILES__X__MAX_MESSAGE_BYTES",
                "0",
                "asr.profiles.x.deepgram.max_message_bytes",
            ),
        ];
        for (engine, var, value, key) in cases {
            let mut pairs = vec![("VOICEGATE__ASR__ENGINE", *engine), (*var, *value)];
            if var.contains("PROFILES") {
                pairs.push(("VOICEGATE__ASR__PROFILES__X__ENGINE", "deepgram"));
            }
            let err = Settings::load_with_env(None, env(&pairs))
                .and_then(|s| s.validate().map(|_| ()))
                .unwrap_err();
            assert!(err.to_string().contains(key), "{var}={value}: {err}");
        }
    }

    #[test]
    fn recording_is_off_by_default_and_its_keys_are_checked() {
        let v = Settings::load_with_env(None, env(&[]))
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(v.calls.recording.mode, RecordingMode::Off);
        assert_eq!(v.calls.recording.max_duration, Duration::from_secs(14400));
        assert_eq!(v.recording, None);
        let load = |pairs: &[(&str, &str)]| {
            Settings::load_with_env(None, env(pairs))
                .unwrap()
                .validate()
        };
        let v = load(&[
            ("VOICEGATE__RECORDING__MODE", "on-request"),
            (
                "VOICEGATE__RECORDING__DIR",
                " /var/lib/voicegate/recordings ",
            ),
        ])
        .unwrap();
        assert_eq!(v.calls.recording.mode, RecordingMode::OnRequest);
        assert_eq!(
            v.recording,
            Some(Recording {
                dir: "/var/lib/voicegate/recordings".into(),
                queue_max_bytes: 33_554_432
            })
        );
        let all = load(&[
            ("VOICEGATE__RECORDING__MODE", "all"),
            ("VOICEGATE__RECORDING__DIR", "rec"),
        ])
        .unwrap();
        assert_eq!(all.calls.recording.mode, RecordingMode::All);
        for (pairs, key) in [
            (
                &[("VOICEGATE__RECORDING__MODE", "some")][..],
                "recording.mode",
            ),
            (
                &[("VOICEGATE__RECORDING__MODE", "all")][..],
                "recording.dir",
            ),
            (
                &[("VOICEGATE__RECORDING__MAX_DURATION_S", "0")][..],
                "recording.max_duration_s",
            ),
            // A WAV file holds 4 GiB: 22369 s of stereo at 48 kHz.
            (
                &[
                    ("VOICEGATE__MEDIA__PCM_RATE", "48000"),
                    ("VOICEGATE__RECORDING__MAX_DURATION_S", "22370"),
                ][..],
                "recording.max_duration_s",
            ),
            (
                &[("VOICEGATE__RECORDING__QUEUE_MAX_BYTES", "1000")][..],
                "recording.queue_max_bytes",
            ),
        ] {
            let err = load(pairs).unwrap_err().to_string();
            assert!(err.contains(key), "{pairs:?}: {err}");
        }
        assert!(
            load(&[
                ("VOICEGATE__MEDIA__PCM_RATE", "48000"),
                ("VOICEGATE__RECORDING__MAX_DURATION_S", "22369"),
            ])
            .is_ok()
        );
    }

    #[test]
    fn typos_and_bad_values_name_the_key() {
        let err =
            Settings::load_with_env(None, env(&[("VOICEGATE__HTTP__BINDD", "x")])).unwrap_err();
        assert!(err.to_string().contains("bindd"), "{err}");

        let cases: &[(&str, &str, &str)] = &[
            ("VOICEGATE__HTTP__BIND", "localhost", "http.bind"),
            ("VOICEGATE__MEDIA__BIND_IP", "nope", "media.bind_ip"),
            (
                "VOICEGATE__MEDIA__PUBLIC_IPS",
                "1.2.3.4,bad",
                "media.public_ips",
            ),
            (
                "VOICEGATE__MEDIA__ICE_SERVERS",
                "http://x",
                "media.ice_servers",
            ),
            ("VOICEGATE__MEDIA__PCM_RATE", "22050", "media.pcm_rate"),
            ("VOICEGATE__CALLS__ID_PREFIX", "a b", "calls.id_prefix"),
            ("VOICEGATE__NODE__ID", "Node-1", "node.id"),
            ("VOICEGATE__NODE__ID", "a234567890abcdefg", "node.id"),
            (
                "VOICEGATE__DIALOG__MAX_MESSAGE_BYTES",
                "100",
                "dialog.max_message_bytes",
            ),
            (
                "VOICEGATE__DIALOG__MAX_MESSAGE_BYTES",
                "1000000000",
                "dialog.max_message_bytes",
            ),
            (
                "VOICEGATE__PAGE__MAX_MESSAGE_BYTES",
                "16385",
                "page.max_message_bytes",
            ),
            (
                "VOICEGATE__PAGE__MESSAGES_PER_S",
                "0",
                "page.messages_per_s",
            ),
            (
                "VOICEGATE__DIALOG__MAX_PAYLOAD_BYTES",
                "0",
                "dialog.max_payload_bytes",
            ),
            (
                "VOICEGATE__DIALOG__STABLE_AFTER_MS",
                "0",
                "dialog.stable_after_ms",
            ),
            (
                "VOICEGATE__MEDIA__OPUS__COMPLEXITY",
                "11",
                "media.opus.complexity",
            ),
            (
                "VOICEGATE__MEDIA__OPUS__EXPECTED_LOSS_PERCENT",
                "26",
                "media.opus.expected_loss_percent",
            ),
            (
                "VOICEGATE__ASR__POCKETSPHINX__DECODERS",
                "0",
                "asr.pocketsphinx.decoders",
            ),
            (
                "VOICEGATE__TTS__ESPEAK__RATE_WPM",
                "500",
                "tts.espeak.rate_wpm",
            ),
            (
                "VOICEGATE__TTS__STREAM_IDLE_TIMEOUT_MS",
                "0",
                "tts.stream_idle_timeout_ms",
            ),
            (
                "VOICEGATE__TTS__PRECONNECT_MS",
                "15001",
                "tts.preconnect_ms",
            ),
            (
                "VOICEGATE__ASR__STREAM_IDLE_TIMEOUT_MS",
                "50",
                "asr.stream_idle_timeout_ms",
            ),
            (
                "VOICEGATE__ASR__UTTERANCE_DEADLINE_MS",
                "999",
                "asr.utterance_deadline_ms",
            ),
            (
                "VOICEGATE__ASR__POCKETSPHINX__QUEUE_MAX",
                "0",
                "asr.pocketsphinx.queue_max",
            ),
            ("VOICEGATE__TTS__MAX_TEXT_BYTES", "0", "tts.max_text_bytes"),
            (
                "VOICEGATE__TTS__MAX_TEXT_BYTES",
                "2000000",
                "tts.max_text_bytes",
            ),
            (
                "VOICEGATE__TTS__MAX_QUEUED_UTTERANCES",
                "0",
                "tts.max_queued_utterances",
            ),
            (
                "VOICEGATE__TTS__MAX_QUEUED_UTTERANCES",
                "5000",
                "tts.max_queued_utterances",
            ),
            (
                "VOICEGATE__TTS__MAX_SEGMENT_AUDIO_MS",
                "999",
                "tts.max_segment_audio_ms",
            ),
            (
                "VOICEGATE__TTS__MAX_SEGMENT_AUDIO_MS",
                "600001",
                "tts.max_segment_audio_ms",
            ),
            (
                "VOICEGATE__BARGE_IN__MIN_CONFIDENCE",
                "1.5",
                "barge_in.min_confidence",
            ),
            (
                "VOICEGATE__BARGE_IN__MIN_CONFIDENCE",
                "-0.1",
                "barge_in.min_confidence",
            ),
        ];
        for (k, v, key) in cases {
            let err = Settings::load_with_env(None, env(&[(k, v)]))
                .unwrap()
                .validate()
                .unwrap_err();
            assert!(err.to_string().contains(key), "{k}={v}: {err}");
        }
        let err =
            Settings::load_with_env(None, env(&[("VOICEGATE__MEDIA__ICE_SERVERS", "http://x")]))
                .unwrap()
                .validate()
                .unwrap_err();
        assert!(err.to_string().contains("http://x"), "{err}");
    }

    /// `barge_in.min_confidence`: 0.6 by default, reaches the calls' backchannel rule.
    #[test]
    fn barge_in_min_confidence_reaches_the_backchannel_rule() {
        let v = Settings::load_with_env(None, env(&[]))
            .unwrap()
            .validate()
            .unwrap();
        let b = &v.calls.listen.backchannels;
        assert!(b.confirms("stop", Some(0.6)) && !b.confirms("stop", Some(0.59)));
        let v = Settings::load_with_env(None, env(&[("VOICEGATE__BARGE_IN__MIN_CONFIDENCE", "0")]))
            .unwrap()
            .validate()
            .unwrap();
        assert!(v.calls.listen.backchannels.confirms("stop", Some(0.0)));
    }

    /// `listen.denoise`: off by default, "rnnoise" reaches the calls' listening, anything else is
    /// refused by name with the choices.
    #[test]
    fn listen_denoise_is_off_by_default_and_checked() {
        let v = Settings::load_with_env(None, env(&[]))
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(v.calls.listen.denoise, Denoise::Off);
        let v = Settings::load_with_env(None, env(&[("VOICEGATE__LISTEN__DENOISE", "rnnoise")]))
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(v.calls.listen.denoise, Denoise::Rnnoise);
        for bad in ["simple", "RNNoise", ""] {
            let err = Settings::load_with_env(None, env(&[("VOICEGATE__LISTEN__DENOISE", bad)]))
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("listen.denoise") && err.contains("off, rnnoise"),
                "{bad:?}: {err}"
            );
        }
    }

    /// The rule for `media.pcm_rate`: every rate the settings accept reaches a working speech
    /// path (resampled to 16 kHz speech frames); every other rate is refused by name.
    #[test]
    fn every_accepted_pcm_rate_reaches_the_speech_path_and_others_are_refused() {
        for rate in OPUS_PCM_RATES {
            let v = Settings::load_with_env(
                None,
                env(&[("VOICEGATE__MEDIA__PCM_RATE", &rate.to_string())]),
            )
            .unwrap()
            .validate()
            .unwrap_or_else(|e| panic!("{rate} Hz: {e}"));
            assert_eq!(v.calls.pcm_rate, rate);
            assert_eq!(v.calls.encoder.pcm_rate, rate);
            // One second of audio at the codec's rate becomes one second of speech frames, less
            // what the resampler still holds (see `SpeechFrames`).
            let mut frames = SpeechFrames::new(v.calls.pcm_rate, Denoise::Off).unwrap();
            frames.push(&vec![100; rate as usize]);
            let mut n = 0;
            while let Some(f) = frames.next_frame() {
                assert_eq!(f.len(), voicegate_core::frame::SPEECH_FRAME_SAMPLES);
                n += 1;
            }
            assert!((46..=50).contains(&n), "{rate} Hz: {n} frames");
        }
        for rate in ["0", "11025", "22050", "44100", "96000"] {
            let err = Settings::load_with_env(None, env(&[("VOICEGATE__MEDIA__PCM_RATE", rate)]))
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("media.pcm_rate") && err.contains("48000"),
                "{rate}: {err}"
            );
        }
    }

    #[test]
    fn missing_config_file_is_an_error() {
        assert!(Settings::load_with_env(Some("/nonexistent/voicegate.toml"), env(&[])).is_err());
    }

    /// The validation error for these variables, as text.
    fn refused(pairs: &[(&str, &str)]) -> String {
        Settings::load_with_env(None, env(pairs))
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn dial_headers_come_from_the_environment_verbatim_and_never_show() {
        let s = Settings::load_with_env(
            None,
            env(&[
                (
                    "VOICEGATE__DIALOG__HEADERS__AUTHORIZATION",
                    "Bearer s3cret, x",
                ),
                // The general source would read these as a number and a boolean.
                ("VOICEGATE__DIALOG__HEADERS__X_API_KEY", "007"),
                ("voicegate__dialog__headers__x_flag", "TRUE"),
            ]),
        )
        .unwrap();
        let v = s.validate().unwrap();
        let sent: Vec<(String, String)> = v
            .dialog
            .headers
            .iter()
            .map(|h| {
                let (n, v) = h.to_header();
                (n.to_string(), v.to_str().unwrap().to_owned())
            })
            .collect();
        assert_eq!(
            sent,
            [
                ("authorization", "Bearer s3cret, x"),
                ("x-api-key", "007"),
                ("x-flag", "TRUE"),
            ]
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
        assert_eq!(
            v.dialog.headers.to_string(),
            "authorization: ***, x-api-key: ***, x-flag: ***"
        );
        for shown in [format!("{s:?}"), format!("{v:?}")] {
            assert!(
                !shown.contains("s3cret") && !shown.contains("007"),
                "{shown}"
            );
        }
        let none = Settings::load_with_env(None, env(&[]))
            .unwrap()
            .validate()
            .unwrap();
        assert!(none.dialog.headers.is_empty());
    }

    #[test]
    fn dial_headers_in_a_file_and_refused_ones_name_the_key() {
        let dir = std::env::temp_dir().join(format!("vg-headers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("headers.toml");
        std::fs::write(&path, "[dialog.headers]\nAuthorization = \"Bearer f\"\n").unwrap();
        let v = Settings::load_with_env(Some(path.to_str().unwrap()), env(&[]))
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(v.dialog.headers.to_string(), "authorization: ***");
        std::fs::write(
            &path,
            "[dialog.headers]\nAuthorization = \"a\"\nauthorization = \"b\"\n",
        )
        .unwrap();
        let err = Settings::load_with_env(Some(path.to_str().unwrap()), env(&[]))
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("dialog.headers") && err.contains("twice"),
            "{err}"
        );
        // The environment overrides a file's header whatever the case of either key.
        std::fs::write(&path, "[dialog.headers]\nX_Team = \"file\"\nkeep = \"k\"\n").unwrap();
        let v = Settings::load_with_env(
            Some(path.to_str().unwrap()),
            env(&[("VOICEGATE__DIALOG__HEADERS__X_TEAM", "env")]),
        )
        .unwrap()
        .validate()
        .unwrap();
        let sent: Vec<String> = v
            .dialog
            .headers
            .iter()
            .map(|h| {
                let (n, v) = h.to_header();
                format!("{n}: {}", v.to_str().unwrap())
            })
            .collect();
        assert_eq!(sent, ["keep: k", "x-team: env"]);
        let _ = std::fs::remove_dir_all(&dir);

        for (var, value, says) in [
            (
                "VOICEGATE__DIALOG__HEADERS__HOST",
                "evil",
                "\"host\" is set by the WebSocket handshake",
            ),
            (
                "VOICEGATE__DIALOG__HEADERS__SEC_WEBSOCKET_KEY",
                "x",
                "\"sec-websocket-key\"",
            ),
            (
                "VOICEGATE__DIALOG__HEADERS__CONNECTION",
                "close",
                "\"connection\"",
            ),
            (
                "VOICEGATE__DIALOG__HEADERS__X_A",
                "line\r\nInjected: 1",
                "value of \"x-a\"",
            ),
        ] {
            let err = refused(&[(var, value)]);
            assert!(
                err.contains("dialog.headers") && err.contains(says),
                "{var}: {err}"
            );
            assert!(
                !err.contains("Injected"),
                "a refused value is not shown: {err}"
            );
        }
    }

    #[test]
    fn the_ca_file_is_read_at_startup_and_refused_with_its_key() {
        let v = Settings::load_with_env(None, env(&[]))
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(v.dialog.tls.to_string(), "public roots");

        let err = refused(&[("VOICEGATE__DIALOG__CA_FILE", "/nonexistent/ca.pem")]);
        assert!(
            err.contains("dialog.ca_file") && err.contains("/nonexistent/ca.pem"),
            "{err}"
        );
        let dir = std::env::temp_dir().join(format!("vg-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("empty.pem");
        std::fs::write(&path, "no certificates here\n").unwrap();
        let err = refused(&[("VOICEGATE__DIALOG__CA_FILE", path.to_str().unwrap())]);
        assert!(
            err.contains("dialog.ca_file") && err.contains("no PEM CERTIFICATE"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);

        let err = refused(&[("VOICEGATE__DIALOG__PUBLIC_ROOTS", "false")]);
        assert!(
            err.contains("dialog.public_roots") && err.contains("ca_file"),
            "{err}"
        );

        // The vendors' own, checked the same way and named by its own keys.
        assert_eq!(v.vendor_tls.to_string(), "public roots");
        let err = refused(&[("VOICEGATE__VENDOR_TLS__CA_FILE", "/nonexistent/vendor.pem")]);
        assert!(
            err.contains("vendor_tls.ca_file") && err.contains("/nonexistent/vendor.pem"),
            "{err}"
        );
        let err = refused(&[("VOICEGATE__VENDOR_TLS__PUBLIC_ROOTS", "false")]);
        assert!(
            err.contains("vendor_tls.public_roots") && err.contains("ca_file"),
            "{err}"
        );
        let ca = dir.join("ca.pem");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&ca, voicegate_testkit::tls::TestCa::new().ca_pem).unwrap();
        let v = Settings::load_with_env(
            None,
            env(&[
                ("VOICEGATE__VENDOR_TLS__CA_FILE", ca.to_str().unwrap()),
                ("VOICEGATE__VENDOR_TLS__PUBLIC_ROOTS", "false"),
            ]),
        )
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(v.vendor_tls.to_string(), "1 from vendor_tls.ca_file");
        assert_eq!(
            v.dialog.tls.to_string(),
            "public roots",
            "the dialog's is apart"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn allowed_origins_are_written_as_browsers_send_them() {
        let mut s = Settings::load_with_env(None, env(&[])).unwrap();
        s.http.allowed_origins = vec![
            "https://App.Example.com:443/".into(),
            "http://localhost:8080".into(),
            "https://b.example:8443".into(),
            "chrome-extension://abcdefgh".into(),
            "*".into(),
            "null".into(),
            " ".into(),
        ];
        assert_eq!(
            s.validate().unwrap().allowed_origins,
            vec![
                "https://app.example.com",
                "http://localhost:8080",
                "https://b.example:8443",
                "chrome-extension://abcdefgh",
                "*",
                "null",
            ]
        );
        for bad in [
            "https://app.example/voice",
            "app.example",
            "https://app.example?x=1",
            "https://user@app.example",
        ] {
            s.http.allowed_origins = vec![bad.into()];
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains("http.allowed_origins"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_connect_timeout_too_short_for_a_handshake_stops_startup() {
        for (ms, ok) in [(0, false), (499, false), (500, true), (15_000, true)] {
            let mut s = Settings::load_with_env(None, env(&[])).unwrap();
            s.calls.connect_timeout_ms = ms;
            match s.validate() {
                Ok(_) => assert!(ok, "{ms} was accepted"),
                Err(e) => {
                    assert!(!ok, "{ms}: {e}");
                    assert!(e.to_string().contains("calls.connect_timeout_ms"), "{e}");
                }
            }
        }
    }

    #[test]
    fn the_per_prefix_limits_have_defaults_and_name_their_keys() {
        let v = Settings::load_with_env(None, env(&[]))
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!((v.offers_per_prefix, v.calls_per_prefix), ((20.0, 40), 200));
        let v = Settings::load_with_env(
            None,
            env(&[
                ("VOICEGATE__ADMISSION__OFFERS_PER_PREFIX_PER_S", "0"),
                ("VOICEGATE__ADMISSION__CALLS_PER_PREFIX", "0"),
            ]),
        )
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!((v.offers_per_prefix.0, v.calls_per_prefix), (0.0, 0));
        for (var, value, key) in [
            (
                "VOICEGATE__ADMISSION__OFFERS_PER_PREFIX_PER_S",
                "-1",
                "admission.offers_per_prefix_per_s",
            ),
            (
                "VOICEGATE__ADMISSION__OFFERS_PER_PREFIX_PER_S",
                "inf",
                "admission.offers_per_prefix_per_s",
            ),
            (
                "VOICEGATE__ADMISSION__PREFIX_OFFER_BURST",
                "0",
                "admission.prefix_offer_burst",
            ),
        ] {
            let err = Settings::load_with_env(None, env(&[(var, value)]))
                .and_then(|s| s.validate().map(|_| ()))
                .unwrap_err();
            assert!(err.to_string().contains(key), "{var}={value}: {err}");
        }
    }
}
