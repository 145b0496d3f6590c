//! Every metric voicegate exports, in one place, rendered in the Prometheus text format.
//!
//! Counters and gauges are process-wide atomics; a [`Histogram`] has the fixed buckets it was
//! made with. Labels take few values: each label set is an enum with one `label()` ([`LabelSet`]:
//! limits, actor kinds, restarted children, and the end reasons of `call::EndLabel`, where a
//! dialog app's free-form `hangup` reason counts as `dialog-hangup`), and its series are indexed
//! by the enum ([`PerLabel`]); a call id is never a label. Per-packet counts are kept per call and
//! added here in batches (every half second and at the end), so the media path does not touch
//! shared cache lines per packet.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

pub use crate::call::EndLabel;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    /// Subtracts one (never below zero).
    pub fn dec(&self) {
        let _ = self
            .0
            .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(1)));
    }
    /// The value.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A closed set of label values: an enum that lists each value once, with its text.
///
/// Series labelled by a set are stored in a [`PerLabel`] indexed by the enum (never by a bare
/// number) and rendered by iterating [`LabelSet::ALL`], so adding a value is one edit here.
pub trait LabelSet: Copy + std::fmt::Debug + 'static {
    /// Every value, in the order they are rendered; a value's position is its [`index`].
    ///
    /// [`index`]: LabelSet::index
    const ALL: &'static [Self];
    /// The label value as exported.
    fn label(self) -> &'static str;
    /// The value's position in [`LabelSet::ALL`] (its discriminant).
    fn index(self) -> usize;
}

/// One `T` per value of the label set `L`, indexed by the value. `N` is `L::ALL.len()`; a
/// mismatch fails to compile where the table is built.
#[derive(Debug)]
pub struct PerLabel<L, T, const N: usize> {
    values: [T; N],
    set: std::marker::PhantomData<fn() -> L>,
}

impl<L: LabelSet, T: Default, const N: usize> Default for PerLabel<L, T, N> {
    fn default() -> Self {
        const { assert!(N == L::ALL.len(), "one value per label") };
        PerLabel {
            values: std::array::from_fn(|_| T::default()),
            set: std::marker::PhantomData,
        }
    }
}

impl<L: LabelSet, T, const N: usize> std::ops::Index<L> for PerLabel<L, T, N> {
    type Output = T;
    fn index(&self, label: L) -> &T {
        &self.values[label.index()]
    }
}

impl<L: LabelSet, T, const N: usize> PerLabel<L, T, N> {
    /// Every label value with its `T`, in rendering order.
    pub fn iter(&self) -> impl Iterator<Item = (L, &T)> {
        L::ALL.iter().map(|l| (*l, &self[*l]))
    }
}

/// Bucket upper bounds of latency histograms, in seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Bucket upper bounds of the pacer's lateness, in seconds: finer than the latency buckets,
/// around what a browser's jitter buffer absorbs.
pub const LATENESS_BUCKETS: [f64; 7] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05];

/// A histogram of durations over `N` buckets, whose upper bounds (seconds, ascending) are given
/// when it is made. Bucket counts are cumulative, as the exposition format wants them.
///
/// Observations go in one at a time ([`Histogram::observe`], for events that are rare enough)
/// or as a [`HistogramBatch`] kept by one call and added now and then ([`Histogram::add`], for
/// per-frame events: no shared cache line per frame).
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    /// Upper bounds, in seconds.
    bounds: &'static [f64; N],
    /// Observations at or below each bound.
    buckets: [AtomicU64; N],
    /// All observations.
    count: AtomicU64,
    /// Sum in microseconds.
    sum_us: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    /// An empty histogram over `bounds`.
    pub fn new(bounds: &'static [f64; N]) -> Self {
        Histogram {
            bounds,
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let mut one = self.batch();
        one.observe(d);
        self.add(&one);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// An empty batch over this histogram's buckets, to be filled elsewhere and [`add`]ed.
    ///
    /// [`add`]: Histogram::add
    pub fn batch(&self) -> HistogramBatch<N> {
        HistogramBatch::new(self.bounds)
    }

    /// Adds a batch of observations.
    pub fn add(&self, batch: &HistogramBatch<N>) {
        debug_assert_eq!(self.bounds, batch.bounds, "a batch of another histogram");
        if batch.count == 0 {
            return;
        }
        for (b, n) in self.buckets.iter().zip(batch.buckets) {
            if n > 0 {
                b.fetch_add(n, Relaxed);
            }
        }
        self.count.fetch_add(batch.count, Relaxed);
        self.sum_us.fetch_add(batch.sum_us, Relaxed);
    }

    /// Writes the histogram as the series `name` (`_bucket`, `_sum`, `_count`).
    fn render(&self, o: &mut String, name: &str, help: &str) {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} histogram");
        self.render_series(o, name, "");
    }

    /// Writes the histogram's samples (no HELP/TYPE) with `labels` (`engine="x",` — each
    /// followed by a comma) before `le`.
    fn render_series(&self, o: &mut String, name: &str, labels: &str) {
        for (b, le) in self.buckets.iter().zip(self.bounds) {
            let _ = writeln!(
                o,
                "{name}_bucket{{{labels}le=\"{le}\"}} {}",
                b.load(Relaxed)
            );
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(o, "{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
        let plain = labels.trim_end_matches(',');
        let braces = if plain.is_empty() {
            String::new()
        } else {
            format!("{{{plain}}}")
        };
        let _ = writeln!(
            o,
            "{name}_sum{braces} {}",
            self.sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(o, "{name}_count{braces} {count}");
    }
}

/// Observations not yet added to a [`Histogram`]: plain numbers, kept by one owner (a call's
/// codec keeps its pacer lateness in one) and added in one go.
#[derive(Debug, Clone, Copy)]
pub struct HistogramBatch<const N: usize> {
    /// Upper bounds, in seconds (the histogram's).
    bounds: &'static [f64; N],
    /// Observations at or below each bound.
    buckets: [u64; N],
    /// All observations.
    count: u64,
    /// Sum in microseconds.
    sum_us: u64,
}

impl<const N: usize> HistogramBatch<N> {
    /// An empty batch over `bounds`.
    pub const fn new(bounds: &'static [f64; N]) -> Self {
        HistogramBatch {
            bounds,
            buckets: [0; N],
            count: 0,
            sum_us: 0,
        }
    }

    /// Records one observation.
    pub fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        for (b, le) in self.buckets.iter_mut().zip(self.bounds) {
            if secs <= *le {
                *b += 1;
            }
        }
        self.count += 1;
        self.sum_us += d.as_micros() as u64;
    }

    /// Takes the observations so far, leaving the batch empty.
    pub fn take(&mut self) -> Self {
        std::mem::replace(self, HistogramBatch::new(self.bounds))
    }
}

/// A latency histogram ([`LATENCY_BUCKETS`]).
pub type LatencyHistogram = Histogram<{ LATENCY_BUCKETS.len() }>;

/// The pacer's lateness ([`LATENESS_BUCKETS`]).
pub type LatenessHistogram = Histogram<{ LATENESS_BUCKETS.len() }>;

/// One call's pacer lateness since its last report, kept in the codec and added to
/// [`Metrics::pacer_late`] in batches (made by its [`Histogram::batch`]).
pub type LateCounts = HistogramBatch<{ LATENESS_BUCKETS.len() }>;

/// Per-call actors, as the `kind` label of `voicegate_actors_live`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorKind {
    /// The `CallActor`; its count is also `voicegate_calls_active`.
    Call,
    /// The `AudioCodec`.
    Codec,
    /// The `Speaker`.
    Speaker,
    /// The `DialogClient`.
    Dialog,
    /// The `Recognizer`.
    Recognizer,
}

impl LabelSet for ActorKind {
    const ALL: &'static [ActorKind] = &[
        ActorKind::Call,
        ActorKind::Codec,
        ActorKind::Speaker,
        ActorKind::Dialog,
        ActorKind::Recognizer,
    ];

    fn label(self) -> &'static str {
        match self {
            ActorKind::Call => "call",
            ActorKind::Codec => "codec",
            ActorKind::Speaker => "speaker",
            ActorKind::Dialog => "dialog",
            ActorKind::Recognizer => "recognizer",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The children a call restarts when they fail, as the `child` label of
/// `voicegate_actor_restarts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Child {
    /// The `AudioCodec`.
    Codec,
    /// The `DialogClient`.
    Dialog,
}

impl LabelSet for Child {
    const ALL: &'static [Child] = &[Child::Codec, Child::Dialog];

    fn label(self) -> &'static str {
        match self {
            Child::Codec => "codec",
            Child::Dialog => "dialog",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A limit that protects the service from hostile or runaway input (each has a config key and a
/// default; SECURITY.md lists them). Every time one refuses or cuts something, it is counted
/// under its label in `voicegate_limit_hits_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// An offer carried more remote candidates than `media.max_remote_candidates`.
    RemoteCandidates,
    /// A call's connectivity checks to unconfirmed addresses ran out of budget.
    IceCheckBudget,
    /// A call never received an authenticated connectivity check in time.
    IceAuthTimeout,
    /// Offers from one source address came faster than `admission.offers_per_ip_per_s`.
    OffersPerIp,
    /// One source address already had `admission.calls_per_ip` calls in progress.
    CallsPerIp,
    /// Offers from one IPv6 /48 came faster than `admission.offers_per_prefix_per_s`.
    OffersPerPrefix,
    /// One IPv6 /48 already had `admission.calls_per_prefix` calls in progress.
    CallsPerPrefix,
    /// A request body did not arrive within `http.body_timeout_ms`.
    HttpBodyDeadline,
    /// A dialog message declared more than `dialog.max_message_bytes`.
    DialogMessageBytes,
    /// Events for the dialog app waiting for its socket (reconnecting, or not yet `call.started`)
    /// were over `dialog.event_buffer`: the oldest was dropped.
    DialogEventBuffer,
    /// A speech command's text exceeded `tts.max_text_bytes`.
    TtsTextBytes,
    /// More than `tts.max_queued_utterances` utterances were waiting.
    TtsQueuedUtterances,
    /// A synthesis stream stalled longer than its idle timeout.
    TtsStreamIdle,
    /// A synthesis sent more than `tts.max_segment_audio_ms` of audio for one segment: it was
    /// stopped there.
    TtsSegmentAudio,
    /// A transcription stream stalled longer than its idle timeout.
    AsrStreamIdle,
    /// The recognizer's queue was full and an utterance was refused.
    AsrQueueFull,
    /// An utterance waited or ran past its recognition deadline.
    AsrDeadline,
    /// An utterance's audio stopped coming mid-utterance for `asr.pocketsphinx.audio_gap_max_ms`
    /// (the caller's network dropped): it failed and its decoder was freed.
    AsrAudioGap,
    /// A transcription reply was larger than `asr.openai.max_reply_bytes`.
    AsrReplyBytes,
    /// A Deepgram message declared more than `asr.deepgram.max_message_bytes`.
    AsrMessageBytes,
    /// A message for the page's data channel was dropped because its queue was full.
    PageQueue,
    /// A message between the page and the dialog app (`call.send`, `client.send`) was longer
    /// than `page.max_message_bytes`.
    ClientMessageBytes,
    /// The page sent messages faster than `page.messages_per_s` (and `page.message_burst`).
    ClientMessageRate,
    /// The caller pressed keys (DTMF) faster than `listen.max_key_presses_per_s`: a press was
    /// not reported.
    KeyPresses,
    /// The page sent a message that was binary, not JSON, or not `{"type": "message", "data"}`.
    ClientMessageNotJson,
    /// `auth.max_single_use_tokens` unexpired single-use tokens were held: a new one was refused.
    SingleUseTokens,
    /// A call had restarted ICE `calls.max_ice_restarts` times: a further restart was refused.
    IceRestarts,
    /// The demo agent's model did not finish an answer within `demo.llm.timeout_ms`.
    DemoLlmTimeout,
    /// The demo agent's model sent more than `demo.llm.max_response_bytes` for one answer.
    DemoLlmResponseBytes,
    /// The recording writer's queue held `recording.queue_max_bytes` of audio: a chunk of a
    /// recording was dropped (silence in its place).
    RecordingQueue,
    /// A recording reached `recording.max_duration_s` and stopped (the call goes on).
    RecordingDuration,
}

impl LabelSet for Limit {
    const ALL: &'static [Limit] = &[
        Limit::RemoteCandidates,
        Limit::IceCheckBudget,
        Limit::IceAuthTimeout,
        Limit::OffersPerIp,
        Limit::CallsPerIp,
        Limit::OffersPerPrefix,
        Limit::CallsPerPrefix,
        Limit::HttpBodyDeadline,
        Limit::DialogMessageBytes,
        Limit::DialogEventBuffer,
        Limit::TtsTextBytes,
        Limit::TtsQueuedUtterances,
        Limit::TtsStreamIdle,
        Limit::TtsSegmentAudio,
        Limit::AsrStreamIdle,
        Limit::AsrQueueFull,
        Limit::AsrDeadline,
        Limit::AsrAudioGap,
        Limit::AsrReplyBytes,
        Limit::AsrMessageBytes,
        Limit::PageQueue,
        Limit::ClientMessageBytes,
        Limit::ClientMessageRate,
        Limit::KeyPresses,
        Limit::ClientMessageNotJson,
        Limit::SingleUseTokens,
        Limit::IceRestarts,
        Limit::DemoLlmTimeout,
        Limit::DemoLlmResponseBytes,
        Limit::RecordingQueue,
        Limit::RecordingDuration,
    ];

    fn label(self) -> &'static str {
        match self {
            Limit::RemoteCandidates => "remote_candidates",
            Limit::IceCheckBudget => "ice_check_budget",
            Limit::IceAuthTimeout => "ice_auth_timeout",
            Limit::OffersPerIp => "offers_per_ip",
            Limit::CallsPerIp => "calls_per_ip",
            Limit::OffersPerPrefix => "offers_per_prefix",
            Limit::CallsPerPrefix => "calls_per_prefix",
            Limit::HttpBodyDeadline => "http_body_deadline",
            Limit::DialogMessageBytes => "dialog_message_bytes",
            Limit::DialogEventBuffer => "dialog_event_buffer",
            Limit::TtsTextBytes => "tts_text_bytes",
            Limit::TtsQueuedUtterances => "tts_queued_utterances",
            Limit::TtsStreamIdle => "tts_stream_idle",
            Limit::TtsSegmentAudio => "tts_segment_audio",
            Limit::AsrStreamIdle => "asr_stream_idle",
            Limit::AsrQueueFull => "asr_queue_full",
            Limit::AsrDeadline => "asr_deadline",
            Limit::AsrAudioGap => "asr_audio_gap",
            Limit::AsrReplyBytes => "asr_reply_bytes",
            Limit::AsrMessageBytes => "asr_message_bytes",
            Limit::PageQueue => "page_queue",
            Limit::ClientMessageBytes => "client_message_bytes",
            Limit::ClientMessageRate => "client_message_rate",
            Limit::KeyPresses => "key_presses",
            Limit::ClientMessageNotJson => "client_message_not_json",
            Limit::SingleUseTokens => "single_use_tokens",
            Limit::IceRestarts => "ice_restarts",
            Limit::DemoLlmTimeout => "demo_llm_timeout",
            Limit::DemoLlmResponseBytes => "demo_llm_response_bytes",
            Limit::RecordingQueue => "recording_queue",
            Limit::RecordingDuration => "recording_duration",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Speech engines, as the `engine` label of the per-engine metrics
/// (`voicegate_engine_requests_total`, `voicegate_engine_first_result_seconds`). An engine is
/// known by its `name()`; recognition and synthesis engines of one vendor get labels of their
/// own (`openai-asr`, `openai-tts`), and a name not listed here counts as `other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineLabel {
    /// Embedded recognition (`asr.engine = "pocketsphinx"`).
    Pocketsphinx,
    /// OpenAI-compatible transcription over HTTP (`asr.engine = "openai"`).
    OpenAiAsr,
    /// Deepgram's streaming recognition over a WebSocket (`asr.engine = "deepgram"`).
    Deepgram,
    /// Embedded synthesis (`tts.engine = "espeak"`).
    Espeak,
    /// OpenAI-compatible speech over HTTP (`tts.engine = "openai"`).
    OpenAiTts,
    /// ElevenLabs synthesis (`tts.engine = "elevenlabs"`).
    ElevenLabs,
    /// Cartesia synthesis (`tts.engine = "cartesia"`).
    Cartesia,
    /// An engine whose name is not listed (a test's engine).
    Other,
}

impl EngineLabel {
    /// The label of the recognition engine called `name` (its `AsrEngine::name`).
    pub fn asr(name: &str) -> EngineLabel {
        match name {
            "pocketsphinx" => EngineLabel::Pocketsphinx,
            "openai" => EngineLabel::OpenAiAsr,
            "deepgram" => EngineLabel::Deepgram,
            _ => EngineLabel::Other,
        }
    }

    /// The label of the synthesis engine called `name` (its `TtsEngine::name`).
    pub fn tts(name: &str) -> EngineLabel {
        match name {
            "espeak" => EngineLabel::Espeak,
            "openai" => EngineLabel::OpenAiTts,
            "elevenlabs" => EngineLabel::ElevenLabs,
            "cartesia" => EngineLabel::Cartesia,
            _ => EngineLabel::Other,
        }
    }
}

impl LabelSet for EngineLabel {
    const ALL: &'static [EngineLabel] = &[
        EngineLabel::Pocketsphinx,
        EngineLabel::OpenAiAsr,
        EngineLabel::Deepgram,
        EngineLabel::Espeak,
        EngineLabel::OpenAiTts,
        EngineLabel::ElevenLabs,
        EngineLabel::Cartesia,
        EngineLabel::Other,
    ];

    fn label(self) -> &'static str {
        match self {
            EngineLabel::Pocketsphinx => "pocketsphinx",
            EngineLabel::OpenAiAsr => "openai-asr",
            EngineLabel::Deepgram => "deepgram",
            EngineLabel::Espeak => "espeak",
            EngineLabel::OpenAiTts => "openai-tts",
            EngineLabel::ElevenLabs => "elevenlabs",
            EngineLabel::Cartesia => "cartesia",
            EngineLabel::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How one engine request ended (an utterance recognized, a synthesis), as the `outcome` label
/// of `voicegate_engine_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It gave its result (a recognition with nothing heard counts too).
    Ok,
    /// The engine failed it.
    Error,
    /// A deadline or an idle limit cut it (`asr.utterance_deadline_ms`, a stalled reply).
    Timeout,
    /// A bound refused it before it ran (a full decoder queue).
    Refused,
    /// voicegate dropped it before it ended (a barge-in, the call's end).
    Cancelled,
}

impl LabelSet for Outcome {
    const ALL: &'static [Outcome] = &[
        Outcome::Ok,
        Outcome::Error,
        Outcome::Timeout,
        Outcome::Refused,
        Outcome::Cancelled,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
            Outcome::Refused => "refused",
            Outcome::Cancelled => "cancelled",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A [`LatencyHistogram`] that can be made by `Default` (for [`PerLabel`] tables).
#[derive(Debug)]
pub struct Latency(pub LatencyHistogram);

impl Default for Latency {
    fn default() -> Self {
        Latency(Histogram::new(&LATENCY_BUCKETS))
    }
}

/// Counts one live actor of a kind for as long as it exists (drop included, so an actor that
/// dies in a panic is still counted out).
#[derive(Debug)]
pub struct Live(ActorKind);

impl Live {
    /// A live actor of `kind`.
    pub fn new(kind: ActorKind) -> Live {
        metrics().actors_live[kind].inc();
        Live(kind)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        metrics().actors_live[self.0].dec();
    }
}

/// All metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Calls ended, by reason.
    pub calls_ended: PerLabel<EndLabel, Counter, { EndLabel::ALL.len() }>,
    /// Offers refused because the server was full.
    pub calls_refused_full: Counter,
    /// Offers refused for their call token (missing, invalid, expired, reused, or not allowing
    /// the call asked for).
    pub offers_unauthorized: Counter,
    /// ICE restarts callers asked for (`PATCH` with new credentials) and got.
    pub ice_restarts: Counter,
    /// Offer received → answer sent.
    pub offer_answer: LatencyHistogram,
    /// Offer received → media connected.
    pub offer_connected: LatencyHistogram,
    /// RTP packets received from callers.
    pub rtp_in: Counter,
    /// RTP packets sent to callers.
    pub rtp_out: Counter,
    /// Uplink packets lost.
    pub frames_lost: Counter,
    /// Lost uplink frames rebuilt from FEC.
    pub frames_recovered: Counter,
    /// Lost uplink frames concealed.
    pub frames_concealed: Counter,
    /// Command → first audio of an utterance.
    pub tts_first_audio: LatencyHistogram,
    /// `asr.final` → first audio of the answer.
    pub asr_final_to_audio: LatencyHistogram,
    /// Barge-ins.
    pub barge_ins: Counter,
    /// Dialog reconnect attempts.
    pub dialog_reconnects: Counter,
    /// Child restarts, by child.
    pub restarts: PerLabel<Child, Counter, { Child::ALL.len() }>,
    /// Live per-call actors, by kind. A gauge to read, never a signal to act on: the supervisor
    /// counts its own calls.
    pub actors_live: PerLabel<ActorKind, Gauge, { ActorKind::ALL.len() }>,
    /// How late the downlink pacer woke for its 20 ms slots.
    pub pacer_late: LatenessHistogram,
    /// 20 ms frames of call recordings dropped because the writer's queue was full.
    pub recording_frames_dropped: Counter,
    /// Recording files that could not be created, written or completed.
    pub recording_errors: Counter,
    /// Speech engine requests (utterances recognized, syntheses), by engine and outcome.
    pub engine_requests: PerLabel<
        EngineLabel,
        PerLabel<Outcome, Counter, { Outcome::ALL.len() }>,
        { EngineLabel::ALL.len() },
    >,
    /// Time to an engine request's first result, by engine: for recognition, from the
    /// utterance's first audio handed to the engine to its first partial or final; for
    /// synthesis, from the request to its first audio.
    pub engine_first_result: PerLabel<EngineLabel, Latency, { EngineLabel::ALL.len() }>,
    /// Hits of each protective limit.
    limit_hits: PerLabel<Limit, Counter, { Limit::ALL.len() }>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            calls_ended: PerLabel::default(),
            calls_refused_full: Counter::default(),
            offers_unauthorized: Counter::default(),
            ice_restarts: Counter::default(),
            offer_answer: Histogram::new(&LATENCY_BUCKETS),
            offer_connected: Histogram::new(&LATENCY_BUCKETS),
            rtp_in: Counter::default(),
            rtp_out: Counter::default(),
            frames_lost: Counter::default(),
            frames_recovered: Counter::default(),
            frames_concealed: Counter::default(),
            tts_first_audio: Histogram::new(&LATENCY_BUCKETS),
            asr_final_to_audio: Histogram::new(&LATENCY_BUCKETS),
            barge_ins: Counter::default(),
            dialog_reconnects: Counter::default(),
            restarts: PerLabel::default(),
            actors_live: PerLabel::default(),
            pacer_late: Histogram::new(&LATENESS_BUCKETS),
            recording_frames_dropped: Counter::default(),
            recording_errors: Counter::default(),
            engine_requests: PerLabel::default(),
            engine_first_result: PerLabel::default(),
            limit_hits: PerLabel::default(),
        }
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static M: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();
    M.get_or_init(Metrics::default)
}

impl Metrics {
    /// Counts a call's end under its reason's label (see [`EndReason::label`]).
    ///
    /// [`EndReason::label`]: crate::call::EndReason::label
    pub fn call_ended(&self, reason: EndLabel) {
        self.calls_ended[reason].inc();
    }

    /// Counts one hit of `limit`.
    pub fn limit_hit(&self, limit: Limit) {
        self.limit_hits[limit].inc();
    }

    /// Counts one engine request's end.
    pub fn engine_request(&self, engine: EngineLabel, outcome: Outcome) {
        self.engine_requests[engine][outcome].inc();
    }

    /// Records the time to an engine request's first result.
    pub fn engine_first_result(&self, engine: EngineLabel, d: Duration) {
        self.engine_first_result[engine].0.observe(d);
    }

    /// Hits of `limit` so far.
    pub fn limit_hits(&self, limit: Limit) -> u64 {
        self.limit_hits[limit].get()
    }

    /// The Prometheus text exposition, with the shared media socket's figures when given.
    /// The exposition as a node of a fleet serves it: `voicegate_node_info{node=...} 1` first,
    /// and every sample labelled with `node`, so series from many nodes never collide however
    /// they are scraped.
    pub fn render_for_node(
        &self,
        media: Option<&voicegate_media::mux::UdpMux>,
        node: &str,
    ) -> String {
        let plain = self.render(media);
        let mut o = String::with_capacity(plain.len() + plain.len() / 3);
        let _ = writeln!(
            o,
            "# HELP voicegate_node_info This node's id (node.id), as on its call ids and log lines.\n# TYPE voicegate_node_info gauge\nvoicegate_node_info{{node=\"{node}\"}} 1"
        );
        for line in plain.lines() {
            if line.starts_with('#') {
                o.push_str(line);
            } else if let Some(brace) = line.find('{') {
                o.push_str(&line[..=brace]);
                let _ = write!(o, "node=\"{node}\",");
                o.push_str(&line[brace + 1..]);
            } else if let Some(space) = line.find(' ') {
                o.push_str(&line[..space]);
                let _ = write!(o, "{{node=\"{node}\"}}");
                o.push_str(&line[space..]);
            } else {
                o.push_str(line);
            }
            o.push('\n');
        }
        o
    }

    /// The Prometheus exposition (without node labels; see [`Metrics::render_for_node`]).
    pub fn render(&self, media: Option<&voicegate_media::mux::UdpMux>) -> String {
        let mut o = String::with_capacity(4096);
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let _ = writeln!(
            o,
            "# HELP voicegate_calls_active Calls in progress.\n# TYPE voicegate_calls_active gauge\nvoicegate_calls_active {}",
            self.actors_live[ActorKind::Call].get()
        );
        let _ = writeln!(
            o,
            "# HELP voicegate_actors_live Live per-call actors, by kind.\n# TYPE voicegate_actors_live gauge"
        );
        for (k, g) in self.actors_live.iter() {
            let _ = writeln!(
                o,
                "voicegate_actors_live{{kind=\"{}\"}} {}",
                k.label(),
                g.get()
            );
        }
        let _ = writeln!(
            o,
            "# HELP voicegate_calls_total Calls ended, by reason.\n# TYPE voicegate_calls_total counter"
        );
        for (r, c) in self.calls_ended.iter() {
            let _ = writeln!(
                o,
                "voicegate_calls_total{{reason=\"{}\"}} {}",
                r.label(),
                c.get()
            );
        }
        counter(
            &mut o,
            "voicegate_calls_refused_full_total",
            "Offers refused because calls.max was reached.",
            self.calls_refused_full.get(),
        );
        counter(
            &mut o,
            "voicegate_offers_unauthorized_total",
            "Offers refused for their call token (auth.mode = token): missing, invalid, expired, reused or not allowing the call.",
            self.offers_unauthorized.get(),
        );
        counter(
            &mut o,
            "voicegate_ice_restarts_total",
            "ICE restarts callers made on live calls (PATCH with new ICE credentials), after a network change.",
            self.ice_restarts.get(),
        );
        self.offer_answer.render(
            &mut o,
            "voicegate_offer_answer_seconds",
            "From an offer's arrival to its answer.",
        );
        self.offer_connected.render(
            &mut o,
            "voicegate_offer_connected_seconds",
            "From an offer's arrival to connected media.",
        );
        counter(
            &mut o,
            "voicegate_rtp_packets_in_total",
            "RTP packets received from callers.",
            self.rtp_in.get(),
        );
        counter(
            &mut o,
            "voicegate_rtp_packets_out_total",
            "RTP packets sent to callers.",
            self.rtp_out.get(),
        );
        counter(
            &mut o,
            "voicegate_uplink_frames_lost_total",
            "Caller packets that never arrived in time.",
            self.frames_lost.get(),
        );
        counter(
            &mut o,
            "voicegate_uplink_frames_recovered_total",
            "Lost caller frames rebuilt from in-band FEC.",
            self.frames_recovered.get(),
        );
        counter(
            &mut o,
            "voicegate_uplink_frames_concealed_total",
            "Lost caller frames concealed.",
            self.frames_concealed.get(),
        );
        self.tts_first_audio.render(
            &mut o,
            "voicegate_tts_first_audio_seconds",
            "From a speech command to its first audio frame.",
        );
        self.asr_final_to_audio.render(
            &mut o,
            "voicegate_asr_final_to_audio_seconds",
            "From an asr.final to the first audio of the answer.",
        );
        self.pacer_late.render(
            &mut o,
            "voicegate_pacer_lateness_seconds",
            "How long after its 20 ms slot the downlink pacer woke (the server's share of downlink jitter).",
        );
        counter(
            &mut o,
            "voicegate_barge_ins_total",
            "Callers talking over voicegate.",
            self.barge_ins.get(),
        );
        counter(
            &mut o,
            "voicegate_dialog_reconnects_total",
            "Dialog connection reconnect attempts.",
            self.dialog_reconnects.get(),
        );
        let _ = writeln!(
            o,
            "# HELP voicegate_actor_restarts_total Restarts of a call's failed child actor.\n# TYPE voicegate_actor_restarts_total counter"
        );
        for (c, n) in self.restarts.iter() {
            let _ = writeln!(
                o,
                "voicegate_actor_restarts_total{{child=\"{}\"}} {}",
                c.label(),
                n.get()
            );
        }
        let _ = writeln!(
            o,
            "# HELP voicegate_limit_hits_total Inputs refused or cut by a protective limit, by limit (SECURITY.md lists them).\n# TYPE voicegate_limit_hits_total counter"
        );
        let over_budget = media.map_or(0, |m| m.stats().tx_checks_over_budget);
        for &l in Limit::ALL {
            // The shared port counts its own limit (it lives below the actors).
            let extra = if l == Limit::IceCheckBudget {
                over_budget
            } else {
                0
            };
            let _ = writeln!(
                o,
                "voicegate_limit_hits_total{{limit=\"{}\"}} {}",
                l.label(),
                self.limit_hits(l) + extra
            );
        }
        counter(
            &mut o,
            "voicegate_recording_frames_dropped_total",
            "20 ms frames of call recordings dropped (silence in their place) because the recording writer's queue was full: the disk is slower than the calls.",
            self.recording_frames_dropped.get(),
        );
        counter(
            &mut o,
            "voicegate_recording_errors_total",
            "Recording files that could not be created, written or completed (the calls went on without them).",
            self.recording_errors.get(),
        );
        let _ = writeln!(
            o,
            "# HELP voicegate_engine_requests_total Speech engine requests (utterances recognized, syntheses), by engine and outcome.\n# TYPE voicegate_engine_requests_total counter"
        );
        for (e, per) in self.engine_requests.iter() {
            for (r, c) in per.iter() {
                let _ = writeln!(
                    o,
                    "voicegate_engine_requests_total{{engine=\"{}\",outcome=\"{}\"}} {}",
                    e.label(),
                    r.label(),
                    c.get()
                );
            }
        }
        let name = "voicegate_engine_first_result_seconds";
        let _ = writeln!(
            o,
            "# HELP {name} Time to a speech engine's first result, by engine: recognition from an utterance's first audio to its first partial or final, synthesis from the request to its first audio.\n# TYPE {name} histogram"
        );
        for (e, h) in self.engine_first_result.iter() {
            h.0.render_series(&mut o, name, &format!("engine=\"{}\",", e.label()));
        }
        if let Some(mux) = media {
            let s = mux.stats();
            counter(
                &mut o,
                "voicegate_media_datagrams_in_total",
                "Datagrams received on the media port.",
                s.rx,
            );
            counter(
                &mut o,
                "voicegate_media_datagrams_unroutable_total",
                "Received datagrams that matched no call.",
                s.rx_unroutable,
            );
            counter(
                &mut o,
                "voicegate_media_datagrams_queue_full_total",
                "Received datagrams dropped because a call's queue was full.",
                s.rx_queue_full,
            );
            counter(
                &mut o,
                "voicegate_media_stun_unauthenticated_total",
                "Connectivity checks naming a call whose MESSAGE-INTEGRITY did not verify (dropped).",
                s.rx_stun_unauthenticated,
            );
            counter(
                &mut o,
                "voicegate_media_address_conflicts_total",
                "Authenticated checks from an address another call holds (dropped).",
                s.rx_addr_conflicts,
            );
            counter(
                &mut o,
                "voicegate_media_datagrams_out_total",
                "Datagrams sent from the media port.",
                s.tx,
            );
            counter(
                &mut o,
                "voicegate_media_datagrams_send_dropped_total",
                "Datagrams dropped because the socket's send buffer was full.",
                s.tx_dropped,
            );
            let t = mux.tables();
            let _ = writeln!(
                o,
                "# HELP voicegate_media_routes Routing entries on the shared media port, by table.\n# TYPE voicegate_media_routes gauge"
            );
            for (table, n) in [
                ("connections", t.conns),
                ("ufrags", t.ufrags),
                ("addresses", t.addrs),
                ("transactions", t.transactions),
            ] {
                let _ = writeln!(o, "voicegate_media_routes{{table=\"{table}\"}} {n}");
            }
        }
        let _ = writeln!(
            o,
            "# HELP voicegate_media_tasks_live WebRTC driver tasks alive.\n# TYPE voicegate_media_tasks_live gauge\nvoicegate_media_tasks_live {}",
            voicegate_media::mux::live_tasks()
        );
        let _ = writeln!(
            o,
            "# HELP voicegate_asr_decoders_loaded pocketsphinx decoders loaded (built on first need, unloaded after asr.pocketsphinx.unload_idle_ms idle).\n# TYPE voicegate_asr_decoders_loaded gauge\nvoicegate_asr_decoders_loaded {}",
            voicegate_engines::asr::pocketsphinx::decoders_loaded()
        );
        let p = voicegate_engines::tts::ws::preconnects();
        let _ = writeln!(
            o,
            "# HELP voicegate_tts_preconnects_total Speech vendor connections opened ahead of an utterance (tts.preconnect_ms), by how they ended: used by an utterance, closed unused, or failed to connect.\n# TYPE voicegate_tts_preconnects_total counter"
        );
        for (outcome, n) in [("used", p.used), ("unused", p.unused), ("failed", p.failed)] {
            let _ = writeln!(
                o,
                "voicegate_tts_preconnects_total{{outcome=\"{outcome}\"}} {n}"
            );
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed_in_index_order<L: LabelSet + PartialEq>() {
        for (i, l) in L::ALL.iter().enumerate() {
            assert_eq!(l.index(), i, "{l:?}");
            assert_eq!(L::ALL.iter().filter(|o| o.label() == l.label()).count(), 1);
        }
    }

    #[test]
    fn label_sets_are_listed_in_index_order_with_distinct_labels() {
        listed_in_index_order::<Limit>();
        listed_in_index_order::<ActorKind>();
        listed_in_index_order::<Child>();
        listed_in_index_order::<EndLabel>();
        listed_in_index_order::<EngineLabel>();
        listed_in_index_order::<Outcome>();
    }

    /// `call.ended` and the logs read as they always did; the metrics count every `hangup` as
    /// `dialog-hangup`, even one whose reason is another label's text.
    #[test]
    fn end_reasons_read_and_count_as_before() {
        use crate::call::EndReason as R;
        for (reason, text, label) in [
            (R::ClientHangup, "client-hangup", EndLabel::ClientHangup),
            (R::PeerClosed, "peer-closed", EndLabel::PeerClosed),
            (R::IceFailed, "ice-failed", EndLabel::IceFailed),
            (R::RtpTimeout, "rtp-timeout", EndLabel::RtpTimeout),
            (
                R::ConnectTimeout,
                "connect-timeout",
                EndLabel::ConnectTimeout,
            ),
            (R::DialogClosed, "dialog-closed", EndLabel::DialogClosed),
            (
                R::DialogUnreachable,
                "dialog-unreachable",
                EndLabel::DialogUnreachable,
            ),
            (R::DialogLost, "dialog-lost", EndLabel::DialogLost),
            (R::Shutdown, "shutdown", EndLabel::Shutdown),
            (
                R::NegotiationFailed,
                "negotiation-failed",
                EndLabel::NegotiationFailed,
            ),
            (R::Internal, "internal-error", EndLabel::Internal),
            (
                R::DialogHangup("done-here".into()),
                "done-here",
                EndLabel::DialogHangup,
            ),
            (
                R::DialogHangup("shutdown".into()),
                "shutdown",
                EndLabel::DialogHangup,
            ),
        ] {
            assert_eq!(reason.as_str(), text);
            assert_eq!(reason.label(), label, "{reason:?}");
        }
        assert_eq!(
            R::DialogHangup("bye\n".into()).to_string(),
            "bye\\n",
            "logs escape the app's text"
        );
    }

    /// The exposition of fixed observations, byte for byte: what scrapers and dashboards read
    /// (series, label values and their order, bucket bounds, sums) stays put.
    #[test]
    fn a_fleet_node_labels_every_sample_with_its_id() {
        let m = Metrics::default();
        m.calls_ended[EndLabel::ClientHangup].inc();
        let out = m.render_for_node(None, "b7");
        assert!(out.starts_with("# HELP voicegate_node_info"), "{out}");
        assert!(
            out.contains("\nvoicegate_node_info{node=\"b7\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("\nvoicegate_calls_active{node=\"b7\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("\nvoicegate_calls_total{node=\"b7\",reason=\"client-hangup\"} 1\n"),
            "{out}"
        );
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.contains("node=\"b7\""), "unlabelled: {line}");
        }
        // Everything else is as the plain exposition has it.
        let strip = |s: &str| s.replace("node=\"b7\",", "").replace("{node=\"b7\"}", "");
        assert!(strip(&out).ends_with(&m.render(None)));
    }

    #[test]
    fn renders_the_pinned_exposition() {
        let m = Metrics::default();
        m.actors_live[ActorKind::Call].inc();
        m.actors_live[ActorKind::Speaker].inc();
        m.call_ended(EndLabel::ClientHangup);
        m.call_ended(crate::call::EndReason::DialogHangup("some app reason".into()).label());
        m.call_ended(EndLabel::Shutdown);
        m.offer_answer.observe(Duration::from_millis(3));
        m.offer_answer.observe(Duration::from_millis(300));
        m.offer_answer.observe(Duration::from_secs(7));
        m.tts_first_audio.observe(Duration::from_micros(1000));
        let mut late = m.pacer_late.batch();
        late.observe(Duration::from_micros(300));
        late.observe(Duration::from_micros(1500));
        late.observe(Duration::from_millis(80));
        m.pacer_late.add(&late.take());
        m.pacer_late.add(&late);
        m.restarts[Child::Dialog].inc();
        m.limit_hit(Limit::PageQueue);
        m.limit_hit(Limit::IceCheckBudget);
        m.engine_request(EngineLabel::asr("deepgram"), Outcome::Ok);
        m.engine_request(EngineLabel::tts("openai"), Outcome::Cancelled);
        m.engine_request(EngineLabel::asr("a test's engine"), Outcome::Timeout);
        m.engine_first_result(EngineLabel::asr("deepgram"), Duration::from_millis(40));
        m.engine_first_result(EngineLabel::tts("elevenlabs"), Duration::from_millis(3));
        let text = m.render(None);
        // The driver task count is process-wide (other tests' peers move it).
        let end = text.find("# HELP voicegate_media_tasks_live").unwrap();
        assert_eq!(&text[..end], PINNED);
    }

    /// Captured from the rendering before histograms and label sets became types.
    const PINNED: &str = r#"# HELP voicegate_calls_active Calls in progress.
# TYPE voicegate_calls_active gauge
voicegate_calls_active 1
# HELP voicegate_actors_live Live per-call actors, by kind.
# TYPE voicegate_actors_live gauge
voicegate_actors_live{kind="call"} 1
voicegate_actors_live{kind="codec"} 0
voicegate_actors_live{kind="speaker"} 1
voicegate_actors_live{kind="dialog"} 0
voicegate_actors_live{kind="recognizer"} 0
# HELP voicegate_calls_total Calls ended, by reason.
# TYPE voicegate_calls_total counter
voicegate_calls_total{reason="client-hangup"} 1
voicegate_calls_total{reason="peer-closed"} 0
voicegate_calls_total{reason="ice-failed"} 0
voicegate_calls_total{reason="rtp-timeout"} 0
voicegate_calls_total{reason="connect-timeout"} 0
voicegate_calls_total{reason="dialog-hangup"} 1
voicegate_calls_total{reason="dialog-closed"} 0
voicegate_calls_total{reason="dialog-unreachable"} 0
voicegate_calls_total{reason="dialog-lost"} 0
voicegate_calls_total{reason="shutdown"} 1
voicegate_calls_total{reason="negotiation-failed"} 0
voicegate_calls_total{reason="internal-error"} 0
voicegate_calls_total{reason="max-duration"} 0
# HELP voicegate_calls_refused_full_total Offers refused because calls.max was reached.
# TYPE voicegate_calls_refused_full_total counter
voicegate_calls_refused_full_total 0
# HELP voicegate_offers_unauthorized_total Offers refused for their call token (auth.mode = token): missing, invalid, expired, reused or not allowing the call.
# TYPE voicegate_offers_unauthorized_total counter
voicegate_offers_unauthorized_total 0
# HELP voicegate_ice_restarts_total ICE restarts callers made on live calls (PATCH with new ICE credentials), after a network change.
# TYPE voicegate_ice_restarts_total counter
voicegate_ice_restarts_total 0
# HELP voicegate_offer_answer_seconds From an offer's arrival to its answer.
# TYPE voicegate_offer_answer_seconds histogram
voicegate_offer_answer_seconds_bucket{le="0.001"} 0
voicegate_offer_answer_seconds_bucket{le="0.0025"} 0
voicegate_offer_answer_seconds_bucket{le="0.005"} 1
voicegate_offer_answer_seconds_bucket{le="0.01"} 1
voicegate_offer_answer_seconds_bucket{le="0.025"} 1
voicegate_offer_answer_seconds_bucket{le="0.05"} 1
voicegate_offer_answer_seconds_bucket{le="0.1"} 1
voicegate_offer_answer_seconds_bucket{le="0.25"} 1
voicegate_offer_answer_seconds_bucket{le="0.5"} 2
voicegate_offer_answer_seconds_bucket{le="1"} 2
voicegate_offer_answer_seconds_bucket{le="2.5"} 2
voicegate_offer_answer_seconds_bucket{le="5"} 2
voicegate_offer_answer_seconds_bucket{le="+Inf"} 3
voicegate_offer_answer_seconds_sum 7.303
voicegate_offer_answer_seconds_count 3
# HELP voicegate_offer_connected_seconds From an offer's arrival to connected media.
# TYPE voicegate_offer_connected_seconds histogram
voicegate_offer_connected_seconds_bucket{le="0.001"} 0
voicegate_offer_connected_seconds_bucket{le="0.0025"} 0
voicegate_offer_connected_seconds_bucket{le="0.005"} 0
voicegate_offer_connected_seconds_bucket{le="0.01"} 0
voicegate_offer_connected_seconds_bucket{le="0.025"} 0
voicegate_offer_connected_seconds_bucket{le="0.05"} 0
voicegate_offer_connected_seconds_bucket{le="0.1"} 0
voicegate_offer_connected_seconds_bucket{le="0.25"} 0
voicegate_offer_connected_seconds_bucket{le="0.5"} 0
voicegate_offer_connected_seconds_bucket{le="1"} 0
voicegate_offer_connected_seconds_bucket{le="2.5"} 0
voicegate_offer_connected_seconds_bucket{le="5"} 0
voicegate_offer_connected_seconds_bucket{le="+Inf"} 0
voicegate_offer_connected_seconds_sum 0
voicegate_offer_connected_seconds_count 0
# HELP voicegate_rtp_packets_in_total RTP packets received from callers.
# TYPE voicegate_rtp_packets_in_total counter
voicegate_rtp_packets_in_total 0
# HELP voicegate_rtp_packets_out_total RTP packets sent to callers.
# TYPE voicegate_rtp_packets_out_total counter
voicegate_rtp_packets_out_total 0
# HELP voicegate_uplink_frames_lost_total Caller packets that never arrived in time.
# TYPE voicegate_uplink_frames_lost_total counter
voicegate_uplink_frames_lost_total 0
# HELP voicegate_uplink_frames_recovered_total Lost caller frames rebuilt from in-band FEC.
# TYPE voicegate_uplink_frames_recovered_total counter
voicegate_uplink_frames_recovered_total 0
# HELP voicegate_uplink_frames_concealed_total Lost caller frames concealed.
# TYPE voicegate_uplink_frames_concealed_total counter
voicegate_uplink_frames_concealed_total 0
# HELP voicegate_tts_first_audio_seconds From a speech command to its first audio frame.
# TYPE voicegate_tts_first_audio_seconds histogram
voicegate_tts_first_audio_seconds_bucket{le="0.001"} 1
voicegate_tts_first_audio_seconds_bucket{le="0.0025"} 1
voicegate_tts_first_audio_seconds_bucket{le="0.005"} 1
voicegate_tts_first_audio_seconds_bucket{le="0.01"} 1
voicegate_tts_first_audio_seconds_bucket{le="0.025"} 1
voicegate_tts_first_audio_seconds_bucket{le="0.05"} 1
voicegate_tts_first_audio_seconds_bucket{le="0.1"} 1
voicegate_tts_first_audio_seconds_bucket{le="0.25"} 1
voicegate_tts_first_audio_seconds_bucket{le="0.5"} 1
voicegate_tts_first_audio_seconds_bucket{le="1"} 1
voicegate_tts_first_audio_seconds_bucket{le="2.5"} 1
voicegate_tts_first_audio_seconds_bucket{le="5"} 1
voicegate_tts_first_audio_seconds_bucket{le="+Inf"} 1
voicegate_tts_first_audio_seconds_sum 0.001
voicegate_tts_first_audio_seconds_count 1
# HELP voicegate_asr_final_to_audio_seconds From an asr.final to the first audio of the answer.
# TYPE voicegate_asr_final_to_audio_seconds histogram
voicegate_asr_final_to_audio_seconds_bucket{le="0.001"} 0
voicegate_asr_final_to_audio_seconds_bucket{le="0.0025"} 0
voicegate_asr_final_to_audio_seconds_bucket{le="0.005"} 0
voicegate_asr_final_to_audio_seconds_bucket{le="0.01"} 0
voicegate_asr_final_to_audio_seconds_bucket{le="0.025"} 0
voicegate_asr_final_to_audio_seconds_bucket{le="0.05"} 0
voicegate_asr_final_to_audio_seconds_bucket{le="0.1"} 0
voicegate_asr_final_to_audio_seconds_bucket{le="0.25"} 0
voicegate_asr_final_to_audio_seconds_bucket{le="0.5"} 0
voicegate_asr_final_to_audio_seconds_bucket{le="1"} 0
voicegate_asr_final_to_audio_seconds_bucket{le="2.5"} 0
voicegate_asr_final_to_audio_seconds_bucket{le="5"} 0
voicegate_asr_final_to_audio_seconds_bucket{le="+Inf"} 0
voicegate_asr_final_to_audio_seconds_sum 0
voicegate_asr_final_to_audio_seconds_count 0
# HELP voicegate_pacer_lateness_seconds How long after its 20 ms slot the downlink pacer woke (the server's share of downlink jitter).
# TYPE voicegate_pacer_lateness_seconds histogram
voicegate_pacer_lateness_seconds_bucket{le="0.0005"} 1
voicegate_pacer_lateness_seconds_bucket{le="0.001"} 1
voicegate_pacer_lateness_seconds_bucket{le="0.002"} 2
voicegate_pacer_lateness_seconds_bucket{le="0.005"} 2
voicegate_pacer_lateness_seconds_bucket{le="0.01"} 2
voicegate_pacer_lateness_seconds_bucket{le="0.02"} 2
voicegate_pacer_lateness_seconds_bucket{le="0.05"} 2
voicegate_pacer_lateness_seconds_bucket{le="+Inf"} 3
voicegate_pacer_lateness_seconds_sum 0.0818
voicegate_pacer_lateness_seconds_count 3
# HELP voicegate_barge_ins_total Callers talking over voicegate.
# TYPE voicegate_barge_ins_total counter
voicegate_barge_ins_total 0
# HELP voicegate_dialog_reconnects_total Dialog connection reconnect attempts.
# TYPE voicegate_dialog_reconnects_total counter
voicegate_dialog_reconnects_total 0
# HELP voicegate_actor_restarts_total Restarts of a call's failed child actor.
# TYPE voicegate_actor_restarts_total counter
voicegate_actor_restarts_total{child="codec"} 0
voicegate_actor_restarts_total{child="dialog"} 1
# HELP voicegate_limit_hits_total Inputs refused or cut by a protective limit, by limit (SECURITY.md lists them).
# TYPE voicegate_limit_hits_total counter
voicegate_limit_hits_total{limit="remote_candidates"} 0
voicegate_limit_hits_total{limit="ice_check_budget"} 1
voicegate_limit_hits_total{limit="ice_auth_timeout"} 0
voicegate_limit_hits_total{limit="offers_per_ip"} 0
voicegate_limit_hits_total{limit="calls_per_ip"} 0
voicegate_limit_hits_total{limit="offers_per_prefix"} 0
voicegate_limit_hits_total{limit="calls_per_prefix"} 0
voicegate_limit_hits_total{limit="http_body_deadline"} 0
voicegate_limit_hits_total{limit="dialog_message_bytes"} 0
voicegate_limit_hits_total{limit="dialog_event_buffer"} 0
voicegate_limit_hits_total{limit="tts_text_bytes"} 0
voicegate_limit_hits_total{limit="tts_queued_utterances"} 0
voicegate_limit_hits_total{limit="tts_stream_idle"} 0
voicegate_limit_hits_total{limit="tts_segment_audio"} 0
voicegate_limit_hits_total{limit="asr_stream_idle"} 0
voicegate_limit_hits_total{limit="asr_queue_full"} 0
voicegate_limit_hits_total{limit="asr_deadline"} 0
voicegate_limit_hits_total{limit="asr_audio_gap"} 0
voicegate_limit_hits_total{limit="asr_reply_bytes"} 0
voicegate_limit_hits_total{limit="asr_message_bytes"} 0
voicegate_limit_hits_total{limit="page_queue"} 1
voicegate_limit_hits_total{limit="client_message_bytes"} 0
voicegate_limit_hits_total{limit="client_message_rate"} 0
voicegate_limit_hits_total{limit="key_presses"} 0
voicegate_limit_hits_total{limit="client_message_not_json"} 0
voicegate_limit_hits_total{limit="single_use_tokens"} 0
voicegate_limit_hits_total{limit="ice_restarts"} 0
voicegate_limit_hits_total{limit="demo_llm_timeout"} 0
voicegate_limit_hits_total{limit="demo_llm_response_bytes"} 0
voicegate_limit_hits_total{limit="recording_queue"} 0
voicegate_limit_hits_total{limit="recording_duration"} 0
# HELP voicegate_recording_frames_dropped_total 20 ms frames of call recordings dropped (silence in their place) because the recording writer's queue was full: the disk is slower than the calls.
# TYPE voicegate_recording_frames_dropped_total counter
voicegate_recording_frames_dropped_total 0
# HELP voicegate_recording_errors_total Recording files that could not be created, written or completed (the calls went on without them).
# TYPE voicegate_recording_errors_total counter
voicegate_recording_errors_total 0
# HELP voicegate_engine_requests_total Speech engine requests (utterances recognized, syntheses), by engine and outcome.
# TYPE voicegate_engine_requests_total counter
voicegate_engine_requests_total{engine="pocketsphinx",outcome="ok"} 0
voicegate_engine_requests_total{engine="pocketsphinx",outcome="error"} 0
voicegate_engine_requests_total{engine="pocketsphinx",outcome="timeout"} 0
voicegate_engine_requests_total{engine="pocketsphinx",outcome="refused"} 0
voicegate_engine_requests_total{engine="pocketsphinx",outcome="cancelled"} 0
voicegate_engine_requests_total{engine="openai-asr",outcome="ok"} 0
voicegate_engine_requests_total{engine="openai-asr",outcome="error"} 0
voicegate_engine_requests_total{engine="openai-asr",outcome="timeout"} 0
voicegate_engine_requests_total{engine="openai-asr",outcome="refused"} 0
voicegate_engine_requests_total{engine="openai-asr",outcome="cancelled"} 0
voicegate_engine_requests_total{engine="deepgram",outcome="ok"} 1
voicegate_engine_requests_total{engine="deepgram",outcome="error"} 0
voicegate_engine_requests_total{engine="deepgram",outcome="timeout"} 0
voicegate_engine_requests_total{engine="deepgram",outcome="refused"} 0
voicegate_engine_requests_total{engine="deepgram",outcome="cancelled"} 0
voicegate_engine_requests_total{engine="espeak",outcome="ok"} 0
voicegate_engine_requests_total{engine="espeak",outcome="error"} 0
voicegate_engine_requests_total{engine="espeak",outcome="timeout"} 0
voicegate_engine_requests_total{engine="espeak",outcome="refused"} 0
voicegate_engine_requests_total{engine="espeak",outcome="cancelled"} 0
voicegate_engine_requests_total{engine="openai-tts",outcome="ok"} 0
voicegate_engine_requests_total{engine="openai-tts",outcome="error"} 0
voicegate_engine_requests_total{engine="openai-tts",outcome="timeout"} 0
voicegate_engine_requests_total{engine="openai-tts",outcome="refused"} 0
voicegate_engine_requests_total{engine="openai-tts",outcome="cancelled"} 1
voicegate_engine_requests_total{engine="elevenlabs",outcome="ok"} 0
voicegate_engine_requests_total{engine="elevenlabs",outcome="error"} 0
voicegate_engine_requests_total{engine="elevenlabs",outcome="timeout"} 0
voicegate_engine_requests_total{engine="elevenlabs",outcome="refused"} 0
voicegate_engine_requests_total{engine="elevenlabs",outcome="cancelled"} 0
voicegate_engine_requests_total{engine="cartesia",outcome="ok"} 0
voicegate_engine_requests_total{engine="cartesia",outcome="error"} 0
voicegate_engine_requests_total{engine="cartesia",outcome="timeout"} 0
voicegate_engine_requests_total{engine="cartesia",outcome="refused"} 0
voicegate_engine_requests_total{engine="cartesia",outcome="cancelled"} 0
voicegate_engine_requests_total{engine="other",outcome="ok"} 0
voicegate_engine_requests_total{engine="other",outcome="error"} 0
voicegate_engine_requests_total{engine="other",outcome="timeout"} 1
voicegate_engine_requests_total{engine="other",outcome="refused"} 0
voicegate_engine_requests_total{engine="other",outcome="cancelled"} 0
# HELP voicegate_engine_first_result_seconds Time to a speech engine's first result, by engine: recognition from an utterance's first audio to its first partial or final, synthesis from the request to its first audio.
# TYPE voicegate_engine_first_result_seconds histogram
voicegate_engine_first_result_seconds_bucket{engine="pocketsphinx",le="0.001"} 0
voicegate_engine_first_result_seconds_bucket{engine="pocketsphinx",le="0.0025"} 0
voicegate_engine_first_result_seconds_bucket{engine="pocketsphinx",le="0.005"} 0
voicegate_engine_first_result_seconds_bucket{engine="pocketsphinx",le="0.01"} 0
voicegate_engine_first_result_seconds_bucket{engine="pocketsphinx",le="0.025"} 0
voicegate_engine_first_result_seconds_bucket{engine="pocketsphinx",le="0.05"} 0
voicegate_engine_first_result_seconds_bucket{engine="pocketsphinx",le="0.1"} 0
voicegate_engine_first_result_seconds_bucket{engine="pocketsphinx",le="0.25"} 0
voicegate_engine_first_result_seconds_bucket{engine="pocketsphinx",le="0.5"} 0
voicegate_engine_first_result_seconds_bucket{engine="pocketsphinx",le="1"} 0
voicegate_engine_first_result_seconds_bucket{engine="pocketsphinx",le="2.5"} 0
voicegate_engine_first_result_seconds_bucket{engine="pocketsphinx",le="5"} 0
voicegate_engine_first_result_seconds_bucket{engine="pocketsphinx",le="+Inf"} 0
voicegate_engine_first_result_seconds_sum{engine="pocketsphinx"} 0
voicegate_engine_first_result_seconds_count{engine="pocketsphinx"} 0
voicegate_engine_first_result_seconds_bucket{engine="openai-asr",le="0.001"} 0
voicegate_engine_first_result_seconds_bucket{engine="openai-asr",le="0.0025"} 0
voicegate_engine_first_result_seconds_bucket{engine="openai-asr",le="0.005"} 0
voicegate_engine_first_result_seconds_bucket{engine="openai-asr",le="0.01"} 0
voicegate_engine_first_result_seconds_bucket{engine="openai-asr",le="0.025"} 0
voicegate_engine_first_result_seconds_bucket{engine="openai-asr",le="0.05"} 0
voicegate_engine_first_result_seconds_bucket{engine="openai-asr",le="0.1"} 0
voicegate_engine_first_result_seconds_bucket{engine="openai-asr",le="0.25"} 0
voicegate_engine_first_result_seconds_bucket{engine="openai-asr",le="0.5"} 0
voicegate_engine_first_result_seconds_bucket{engine="openai-asr",le="1"} 0
voicegate_engine_first_result_seconds_bucket{engine="openai-asr",le="2.5"} 0
voicegate_engine_first_result_seconds_bucket{engine="openai-asr",le="5"} 0
voicegate_engine_first_result_seconds_bucket{engine="openai-asr",le="+Inf"} 0
voicegate_engine_first_result_seconds_sum{engine="openai-asr"} 0
voicegate_engine_first_result_seconds_count{engine="openai-asr"} 0
voicegate_engine_first_result_seconds_bucket{engine="deepgram",le="0.001"} 0
voicegate_engine_first_result_seconds_bucket{engine="deepgram",le="0.0025"} 0
voicegate_engine_first_result_seconds_bucket{engine="deepgram",le="0.005"} 0
voicegate_engine_first_result_seconds_bucket{engine="deepgram",le="0.01"} 0
voicegate_engine_first_result_seconds_bucket{engine="deepgram",le="0.025"} 0
voicegate_engine_first_result_seconds_bucket{engine="deepgram",le="0.05"} 1
voicegate_engine_first_result_seconds_bucket{engine="deepgram",le="0.1"} 1
voicegate_engine_first_result_seconds_bucket{engine="deepgram",le="0.25"} 1
voicegate_engine_first_result_seconds_bucket{engine="deepgram",le="0.5"} 1
voicegate_engine_first_result_seconds_bucket{engine="deepgram",le="1"} 1
voicegate_engine_first_result_seconds_bucket{engine="deepgram",le="2.5"} 1
voicegate_engine_first_result_seconds_bucket{engine="deepgram",le="5"} 1
voicegate_engine_first_result_seconds_bucket{engine="deepgram",le="+Inf"} 1
voicegate_engine_first_result_seconds_sum{engine="deepgram"} 0.04
voicegate_engine_first_result_seconds_count{engine="deepgram"} 1
voicegate_engine_first_result_seconds_bucket{engine="espeak",le="0.001"} 0
voicegate_engine_first_result_seconds_bucket{engine="espeak",le="0.0025"} 0
voicegate_engine_first_result_seconds_bucket{engine="espeak",le="0.005"} 0
voicegate_engine_first_result_seconds_bucket{engine="espeak",le="0.01"} 0
voicegate_engine_first_result_seconds_bucket{engine="espeak",le="0.025"} 0
voicegate_engine_first_result_seconds_bucket{engine="espeak",le="0.05"} 0
voicegate_engine_first_result_seconds_bucket{engine="espeak",le="0.1"} 0
voicegate_engine_first_result_seconds_bucket{engine="espeak",le="0.25"} 0
voicegate_engine_first_result_seconds_bucket{engine="espeak",le="0.5"} 0
voicegate_engine_first_result_seconds_bucket{engine="espeak",le="1"} 0
voicegate_engine_first_result_seconds_bucket{engine="espeak",le="2.5"} 0
voicegate_engine_first_result_seconds_bucket{engine="espeak",le="5"} 0
voicegate_engine_first_result_seconds_bucket{engine="espeak",le="+Inf"} 0
voicegate_engine_first_result_seconds_sum{engine="espeak"} 0
voicegate_engine_first_result_seconds_count{engine="espeak"} 0
voicegate_engine_first_result_seconds_bucket{engine="openai-tts",le="0.001"} 0
voicegate_engine_first_result_seconds_bucket{engine="openai-tts",le="0.0025"} 0
voicegate_engine_first_result_seconds_bucket{engine="openai-tts",le="0.005"} 0
voicegate_engine_first_result_seconds_bucket{engine="openai-tts",le="0.01"} 0
voicegate_engine_first_result_seconds_bucket{engine="openai-tts",le="0.025"} 0
voicegate_engine_first_result_seconds_bucket{engine="openai-tts",le="0.05"} 0
voicegate_engine_first_result_seconds_bucket{engine="openai-tts",le="0.1"} 0
voicegate_engine_first_result_seconds_bucket{engine="openai-tts",le="0.25"} 0
voicegate_engine_first_result_seconds_bucket{engine="openai-tts",le="0.5"} 0
voicegate_engine_first_result_seconds_bucket{engine="openai-tts",le="1"} 0
voicegate_engine_first_result_seconds_bucket{engine="openai-tts",le="2.5"} 0
voicegate_engine_first_result_seconds_bucket{engine="openai-tts",le="5"} 0
voicegate_engine_first_result_seconds_bucket{engine="openai-tts",le="+Inf"} 0
voicegate_engine_first_result_seconds_sum{engine="openai-tts"} 0
voicegate_engine_first_result_seconds_count{engine="openai-tts"} 0
voicegate_engine_first_result_seconds_bucket{engine="elevenlabs",le="0.001"} 0
voicegate_engine_first_result_seconds_bucket{engine="elevenlabs",le="0.0025"} 0
voicegate_engine_first_result_seconds_bucket{engine="elevenlabs",le="0.005"} 1
voicegate_engine_first_result_seconds_bucket{engine="elevenlabs",le="0.01"} 1
voicegate_engine_first_result_seconds_bucket{engine="elevenlabs",le="0.025"} 1
voicegate_engine_first_result_seconds_bucket{engine="elevenlabs",le="0.05"} 1
voicegate_engine_first_result_seconds_bucket{engine="elevenlabs",le="0.1"} 1
voicegate_engine_first_result_seconds_bucket{engine="elevenlabs",le="0.25"} 1
voicegate_engine_first_result_seconds_bucket{engine="elevenlabs",le="0.5"} 1
voicegate_engine_first_result_seconds_bucket{engine="elevenlabs",le="1"} 1
voicegate_engine_first_result_seconds_bucket{engine="elevenlabs",le="2.5"} 1
voicegate_engine_first_result_seconds_bucket{engine="elevenlabs",le="5"} 1
voicegate_engine_first_result_seconds_bucket{engine="elevenlabs",le="+Inf"} 1
voicegate_engine_first_result_seconds_sum{engine="elevenlabs"} 0.003
voicegate_engine_first_result_seconds_count{engine="elevenlabs"} 1
voicegate_engine_first_result_seconds_bucket{engine="cartesia",le="0.001"} 0
voicegate_engine_first_result_seconds_bucket{engine="cartesia",le="0.0025"} 0
voicegate_engine_first_result_seconds_bucket{engine="cartesia",le="0.005"} 0
voicegate_engine_first_result_seconds_bucket{engine="cartesia",le="0.01"} 0
voicegate_engine_first_result_seconds_bucket{engine="cartesia",le="0.025"} 0
voicegate_engine_first_result_seconds_bucket{engine="cartesia",le="0.05"} 0
voicegate_engine_first_result_seconds_bucket{engine="cartesia",le="0.1"} 0
voicegate_engine_first_result_seconds_bucket{engine="cartesia",le="0.25"} 0
voicegate_engine_first_result_seconds_bucket{engine="cartesia",le="0.5"} 0
voicegate_engine_first_result_seconds_bucket{engine="cartesia",le="1"} 0
voicegate_engine_first_result_seconds_bucket{engine="cartesia",le="2.5"} 0
voicegate_engine_first_result_seconds_bucket{engine="cartesia",le="5"} 0
voicegate_engine_first_result_seconds_bucket{engine="cartesia",le="+Inf"} 0
voicegate_engine_first_result_seconds_sum{engine="cartesia"} 0
voicegate_engine_first_result_seconds_count{engine="cartesia"} 0
voicegate_engine_first_result_seconds_bucket{engine="other",le="0.001"} 0
voicegate_engine_first_result_seconds_bucket{engine="other",le="0.0025"} 0
voicegate_engine_first_result_seconds_bucket{engine="other",le="0.005"} 0
voicegate_engine_first_result_seconds_bucket{engine="other",le="0.01"} 0
voicegate_engine_first_result_seconds_bucket{engine="other",le="0.025"} 0
voicegate_engine_first_result_seconds_bucket{engine="other",le="0.05"} 0
voicegate_engine_first_result_seconds_bucket{engine="other",le="0.1"} 0
voicegate_engine_first_result_seconds_bucket{engine="other",le="0.25"} 0
voicegate_engine_first_result_seconds_bucket{engine="other",le="0.5"} 0
voicegate_engine_first_result_seconds_bucket{engine="other",le="1"} 0
voicegate_engine_first_result_seconds_bucket{engine="other",le="2.5"} 0
voicegate_engine_first_result_seconds_bucket{engine="other",le="5"} 0
voicegate_engine_first_result_seconds_bucket{engine="other",le="+Inf"} 0
voicegate_engine_first_result_seconds_sum{engine="other"} 0
voicegate_engine_first_result_seconds_count{engine="other"} 0
"#;

    #[test]
    fn renders_valid_exposition_and_gauges_stay_non_negative() {
        let m = Metrics::default();
        let text = m.render(None);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(name.starts_with("voicegate_"), "{line}");
        }
        m.actors_live[ActorKind::Call].inc();
        m.actors_live[ActorKind::Call].dec();
        m.actors_live[ActorKind::Call].dec();
        assert_eq!(m.actors_live[ActorKind::Call].get(), 0, "never below zero");
    }
}
