//! Every metric voicegate exports, in one place, rendered in the Prometheus text format.
//!
//! Counters and gauges are process-wide atomics; histograms have fixed buckets. Labels take few
//! values (end reasons are mapped to their fixed names; a dialog app's free-form `hangup` reason
//! counts as `dialog-hangup`); a call id is never a label. Per-packet counts are kept per call
//! and added here in batches (every half second and at the end), so the media path does not
//! touch shared cache lines per packet.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

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

/// Bucket upper bounds of latency histograms, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Sum in microseconds.
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (b, le) in self.buckets.iter().zip(BUCKETS) {
            if secs <= le {
                b.fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }
}

/// End reasons, as labels (a fixed set).
pub const END_REASONS: [&str; 12] = [
    "client-hangup",
    "peer-closed",
    "ice-failed",
    "rtp-timeout",
    "connect-timeout",
    "dialog-hangup",
    "dialog-closed",
    "dialog-unreachable",
    "dialog-lost",
    "shutdown",
    "negotiation-failed",
    "internal-error",
];

/// Children that can be restarted, as labels.
pub const CHILDREN: [&str; 2] = ["codec", "dialog"];

/// Bucket upper bounds of the pacer's lateness, in seconds: finer than the latency buckets,
/// around what a browser's jitter buffer absorbs.
const LATE_BUCKETS: [f64; 7] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05];

/// One call's pacer lateness since its last report, kept in the codec (no shared cache line
/// per frame) and added to [`Metrics::pacer_late`] in batches.
#[derive(Debug, Default, Clone, Copy)]
pub struct LateCounts {
    buckets: [u64; LATE_BUCKETS.len()],
    count: u64,
    sum_us: u64,
}

impl LateCounts {
    /// Records one pacer wake-up that came `d` after its slot.
    pub fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        for (b, le) in self.buckets.iter_mut().zip(LATE_BUCKETS) {
            if secs <= le {
                *b += 1;
            }
        }
        self.count += 1;
        self.sum_us += d.as_micros() as u64;
    }
}

/// The pacer lateness of all calls.
#[derive(Debug, Default)]
pub struct LateHistogram {
    buckets: [AtomicU64; LATE_BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl LateHistogram {
    /// Adds a call's batch.
    pub fn add(&self, c: &LateCounts) {
        if c.count == 0 {
            return;
        }
        for (b, n) in self.buckets.iter().zip(c.buckets) {
            b.fetch_add(n, Relaxed);
        }
        self.count.fetch_add(c.count, Relaxed);
        self.sum_us.fetch_add(c.sum_us, Relaxed);
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
    /// A request body did not arrive within `http.body_timeout_ms`.
    HttpBodyDeadline,
    /// A dialog message declared more than `dialog.max_message_bytes`.
    DialogMessageBytes,
    /// A speech command's text exceeded `tts.max_text_bytes`.
    TtsTextBytes,
    /// More than `tts.max_queued_utterances` utterances were waiting.
    TtsQueuedUtterances,
    /// A synthesis stream stalled longer than its idle timeout.
    TtsStreamIdle,
    /// A transcription stream stalled longer than its idle timeout.
    AsrStreamIdle,
    /// The recognizer's queue was full and an utterance was refused.
    AsrQueueFull,
    /// An utterance waited or ran past its recognition deadline.
    AsrDeadline,
    /// A message for the page's data channel was dropped because its queue was full.
    PageQueue,
}

impl Limit {
    /// Every limit, in the order they are rendered.
    pub const ALL: [Limit; 14] = [
        Limit::RemoteCandidates,
        Limit::IceCheckBudget,
        Limit::IceAuthTimeout,
        Limit::OffersPerIp,
        Limit::CallsPerIp,
        Limit::HttpBodyDeadline,
        Limit::DialogMessageBytes,
        Limit::TtsTextBytes,
        Limit::TtsQueuedUtterances,
        Limit::TtsStreamIdle,
        Limit::AsrStreamIdle,
        Limit::AsrQueueFull,
        Limit::AsrDeadline,
        Limit::PageQueue,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Limit::RemoteCandidates => "remote_candidates",
            Limit::IceCheckBudget => "ice_check_budget",
            Limit::IceAuthTimeout => "ice_auth_timeout",
            Limit::OffersPerIp => "offers_per_ip",
            Limit::CallsPerIp => "calls_per_ip",
            Limit::HttpBodyDeadline => "http_body_deadline",
            Limit::DialogMessageBytes => "dialog_message_bytes",
            Limit::TtsTextBytes => "tts_text_bytes",
            Limit::TtsQueuedUtterances => "tts_queued_utterances",
            Limit::TtsStreamIdle => "tts_stream_idle",
            Limit::AsrStreamIdle => "asr_stream_idle",
            Limit::AsrQueueFull => "asr_queue_full",
            Limit::AsrDeadline => "asr_deadline",
            Limit::PageQueue => "page_queue",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Kinds of per-call actors, as labels.
pub const ACTORS: [&str; 5] = ["call", "codec", "speaker", "dialog", "recognizer"];

/// Counts one live actor of a kind for as long as it exists (drop included, so an actor that
/// dies in a panic is still counted out).
#[derive(Debug)]
pub struct Live(usize);

impl Live {
    /// A live `kind` (one of [`ACTORS`]).
    pub fn new(kind: &str) -> Live {
        let i = ACTORS
            .iter()
            .position(|k| *k == kind)
            .expect("a known actor kind");
        metrics().actors_live[i].inc();
        Live(i)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        metrics().actors_live[self.0].dec();
    }
}

/// All metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Calls ended, by reason (index into [`END_REASONS`]).
    pub calls_ended: [Counter; END_REASONS.len()],
    /// Offers refused because the server was full.
    pub calls_refused_full: Counter,
    /// Offer received → answer sent.
    pub offer_answer: Histogram,
    /// Offer received → media connected.
    pub offer_connected: Histogram,
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
    pub tts_first_audio: Histogram,
    /// `asr.final` → first audio of the answer.
    pub asr_final_to_audio: Histogram,
    /// Barge-ins.
    pub barge_ins: Counter,
    /// Dialog reconnect attempts.
    pub dialog_reconnects: Counter,
    /// Child restarts, by child (index into [`CHILDREN`]).
    pub restarts: [Counter; CHILDREN.len()],
    /// Live per-call actors, by kind (index into [`ACTORS`]).
    pub actors_live: [Gauge; ACTORS.len()],
    /// How late the downlink pacer woke for its 20 ms slots.
    pub pacer_late: LateHistogram,
    /// Hits of each protective limit (index: [`Limit`]).
    limit_hits: [Counter; Limit::ALL.len()],
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static M: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();
    M.get_or_init(Metrics::default)
}

impl Metrics {
    /// Counts a call's end under `reason`'s label.
    pub fn call_ended(&self, reason: &str) {
        let i = END_REASONS.iter().position(|r| *r == reason).unwrap_or(5); // free-form: dialog-hangup
        self.calls_ended[i].inc();
    }

    /// Counts one hit of `limit`.
    pub fn limit_hit(&self, limit: Limit) {
        self.limit_hits[limit.index()].inc();
    }

    /// Hits of `limit` so far.
    pub fn limit_hits(&self, limit: Limit) -> u64 {
        self.limit_hits[limit.index()].get()
    }

    /// The Prometheus text exposition, with the shared media socket's figures when given.
    pub fn render(&self, media: Option<&voicegate_media::mux::UdpMux>) -> String {
        let mut o = String::with_capacity(4096);
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let _ = writeln!(
            o,
            "# HELP voicegate_calls_active Calls in progress.\n# TYPE voicegate_calls_active gauge\nvoicegate_calls_active {}",
            self.actors_live[0].get()
        );
        let _ = writeln!(
            o,
            "# HELP voicegate_actors_live Live per-call actors, by kind.\n# TYPE voicegate_actors_live gauge"
        );
        for (k, g) in ACTORS.iter().zip(&self.actors_live) {
            let _ = writeln!(o, "voicegate_actors_live{{kind=\"{k}\"}} {}", g.get());
        }
        let _ = writeln!(
            o,
            "# HELP voicegate_calls_total Calls ended, by reason.\n# TYPE voicegate_calls_total counter"
        );
        for (r, c) in END_REASONS.iter().zip(&self.calls_ended) {
            let _ = writeln!(o, "voicegate_calls_total{{reason=\"{r}\"}} {}", c.get());
        }
        counter(
            &mut o,
            "voicegate_calls_refused_full_total",
            "Offers refused because calls.max was reached.",
            self.calls_refused_full.get(),
        );
        histogram(
            &mut o,
            "voicegate_offer_answer_seconds",
            "From an offer's arrival to its answer.",
            &self.offer_answer,
        );
        histogram(
            &mut o,
            "voicegate_offer_connected_seconds",
            "From an offer's arrival to connected media.",
            &self.offer_connected,
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
        histogram(
            &mut o,
            "voicegate_tts_first_audio_seconds",
            "From a speech command to its first audio frame.",
            &self.tts_first_audio,
        );
        histogram(
            &mut o,
            "voicegate_asr_final_to_audio_seconds",
            "From an asr.final to the first audio of the answer.",
            &self.asr_final_to_audio,
        );
        let h = &self.pacer_late;
        let _ = writeln!(
            o,
            "# HELP voicegate_pacer_lateness_seconds How long after its 20 ms slot the downlink pacer woke (the server's share of downlink jitter).\n# TYPE voicegate_pacer_lateness_seconds histogram"
        );
        for (b, le) in h.buckets.iter().zip(LATE_BUCKETS) {
            let _ = writeln!(
                o,
                "voicegate_pacer_lateness_seconds_bucket{{le=\"{le}\"}} {}",
                b.load(Relaxed)
            );
        }
        let count = h.count.load(Relaxed);
        let _ = writeln!(
            o,
            "voicegate_pacer_lateness_seconds_bucket{{le=\"+Inf\"}} {count}\nvoicegate_pacer_lateness_seconds_sum {}\nvoicegate_pacer_lateness_seconds_count {count}",
            h.sum_us.load(Relaxed) as f64 / 1e6
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
        for (c, n) in CHILDREN.iter().zip(&self.restarts) {
            let _ = writeln!(
                o,
                "voicegate_actor_restarts_total{{child=\"{c}\"}} {}",
                n.get()
            );
        }
        let _ = writeln!(
            o,
            "# HELP voicegate_limit_hits_total Inputs refused or cut by a protective limit, by limit (SECURITY.md lists them).\n# TYPE voicegate_limit_hits_total counter"
        );
        let over_budget = media.map_or(0, |m| m.stats().tx_checks_over_budget);
        for l in Limit::ALL {
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
        o
    }
}

fn histogram(o: &mut String, name: &str, help: &str, h: &Histogram) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (b, le) in h.buckets.iter().zip(BUCKETS) {
        let _ = writeln!(o, "{name}_bucket{{le=\"{le}\"}} {}", b.load(Relaxed));
    }
    let count = h.count.load(Relaxed);
    let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(o, "{name}_sum {}", h.sum_us.load(Relaxed) as f64 / 1e6);
    let _ = writeln!(o, "{name}_count {count}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_listed_in_index_order() {
        for (i, l) in Limit::ALL.iter().enumerate() {
            assert_eq!(l.index(), i, "{l:?}");
        }
    }

    #[test]
    fn renders_valid_exposition_with_cumulative_buckets() {
        let m = Metrics::default();
        m.actors_live[0].inc();
        m.call_ended("client-hangup");
        m.call_ended("some app reason");
        m.offer_answer.observe(Duration::from_millis(3));
        m.offer_answer.observe(Duration::from_millis(300));
        let mut late = LateCounts::default();
        late.observe(Duration::from_micros(300));
        late.observe(Duration::from_micros(1500));
        m.pacer_late.add(&late);
        m.limit_hit(Limit::PageQueue);
        let text = m.render(None);
        assert!(text.contains("voicegate_limit_hits_total{limit=\"page_queue\"} 1\n"));
        assert!(text.contains("voicegate_limit_hits_total{limit=\"remote_candidates\"} 0\n"));
        assert!(text.contains("voicegate_pacer_lateness_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(text.contains("voicegate_pacer_lateness_seconds_bucket{le=\"0.002\"} 2\n"));
        assert!(text.contains("voicegate_pacer_lateness_seconds_count 2\n"));
        assert!(text.contains("voicegate_calls_active 1\n"));
        assert!(text.contains("voicegate_calls_total{reason=\"client-hangup\"} 1\n"));
        assert!(
            text.contains("voicegate_calls_total{reason=\"dialog-hangup\"} 1\n"),
            "free-form reasons share a label"
        );
        assert!(text.contains("voicegate_offer_answer_seconds_bucket{le=\"0.0025\"} 0\n"));
        assert!(text.contains("voicegate_offer_answer_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("voicegate_offer_answer_seconds_bucket{le=\"0.5\"} 2\n"));
        assert!(text.contains("voicegate_offer_answer_seconds_count 2\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(name.starts_with("voicegate_"), "{line}");
        }
        m.actors_live[0].dec();
        m.actors_live[0].dec();
        assert_eq!(m.actors_live[0].get(), 0, "never below zero");
    }
}
