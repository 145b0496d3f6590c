//! `voicegate-bench load` and `soak`: N concurrent calls through the real HTTP offer API and
//! real WebRTC, pre-encoded Opus uplink paced in real time, one step per N (ramp) or one long
//! step sampled over time (soak).
//!
//! Per step it measures setup latency, packets and loss both ways, downlink timing at the
//! client, and the server's CPU and RSS over a steady window; the quality bar a step must hold
//! is: every call connected, zero uplink frames lost at the server, downlink inter-arrival
//! jitter p99 ≤ 2 ms at the client. The same bar is also judged on the kernel's receive times
//! of the client's packets (`kernel_quality_ok`), which leave out the generator's own
//! scheduling.

use crate::dialog::BenchDialog;
use crate::target::{Source, Target, proc_usage};
use anyhow::{Context as _, bail};
use bytes::Bytes;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use voicegate_testkit::ClientPeer;

/// Downlink jitter allowed by the quality bar, ms (p99 of |inter-arrival − 20 ms|).
pub const JITTER_P99_MAX_MS: f64 = 2.0;

/// Which kind of calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Echo mode: continuous uplink, everything sent back.
    Echo,
    /// Dialog calls: the caller talks, the bench's dialog app answers each `asr.final`.
    Dialog,
}

impl Profile {
    fn path(self) -> &'static str {
        match self {
            Profile::Echo => "/webrtc/v1/offer?mode=echo",
            Profile::Dialog => "/webrtc/v1/offer",
        }
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Echo => "echo",
            Profile::Dialog => "dialog",
        }
    }
}

/// What one step runs.
#[derive(Debug, Clone)]
pub struct StepPlan {
    /// Concurrent calls.
    pub calls: usize,
    /// How long each call streams.
    pub duration: Duration,
    /// Delay between call set-ups.
    pub stagger: Duration,
    /// Sample the server's RSS this often during the window (soak).
    pub sample_every: Option<Duration>,
    /// Each call's own source address, sent as `X-Forwarded-For` (by call index), for a server
    /// that trusts the generator as a proxy and applies its per-source limits; `None` sends none.
    pub forwarded_for: Option<fn(usize) -> IpAddr>,
    /// Every answer's SDP is appended here once it arrives (the hostile step's attackers use the
    /// calls' ICE ufrags).
    pub answers: Option<Arc<Mutex<Vec<String>>>>,
}

impl StepPlan {
    /// `calls` calls streaming for `duration`, set up `stagger` apart, from one source.
    pub fn new(calls: usize, duration: Duration, stagger: Duration) -> StepPlan {
        StepPlan {
            calls,
            duration,
            stagger,
            sample_every: None,
            forwarded_for: None,
            answers: None,
        }
    }
}

struct CallResult {
    answer_ms: f64,
    connect_ms: f64,
    sent: usize,
    received: usize,
    /// Downlink packets missing from the sequence numbers received.
    down_lost: usize,
    /// |inter-arrival − 20 ms| of downlink packets inside talkspurts, ms.
    jitter_ms: Vec<f64>,
    /// The same from the kernel's receive times, for the pairs that have both.
    kernel_jitter_ms: Vec<f64>,
}

async fn one_call(
    target: SocketAddr,
    profile: Profile,
    uplink: Arc<Vec<Bytes>>,
    duration: Duration,
    forwarded_for: Option<IpAddr>,
    answers: Option<Arc<Mutex<Vec<String>>>>,
) -> anyhow::Result<CallResult> {
    let xff = forwarded_for.map(|ip| ip.to_string());
    let headers: Vec<(&str, &str)> = xff
        .as_deref()
        .map(|ip| ("X-Forwarded-For", ip))
        .into_iter()
        .collect();
    let peer = ClientPeer::call_with_headers(target, profile.path(), &headers).await?;
    if let Some(answers) = answers {
        answers
            .lock()
            .expect("no panics while holding")
            .push(peer.answer.clone());
    }
    let connected = peer.wait_connected(Duration::from_secs(15)).await;
    let connect = match connected {
        Ok(c) => c,
        Err(e) => {
            peer.close().await;
            return Err(e);
        }
    };
    // Independent callers start talking at independent moments: a random phase within the
    // 20 ms frame, so the load is not bunched onto a few instants of every period.
    tokio::time::sleep(Duration::from_micros(
        voicegate_core::random::u32() as u64 % 20_000,
    ))
    .await;
    // And at an independent point of the looped audio: calls are placed 10 ms apart, so
    // starting every caller at the top of its loop would bunch the dialog profile's questions
    // (and the answers) of all calls into the first seconds of every 5 s cycle.
    let offset = voicegate_core::random::u32() as usize % uplink.len().max(1);
    let mut tick = tokio::time::interval(voicegate_core::frame::FRAME);
    let start = Instant::now();
    let mut sent = 0;
    while start.elapsed() < duration {
        tick.tick().await;
        peer.send(uplink[(offset + sent) % uplink.len()].clone())
            .await?;
        sent += 1;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rx = peer.received();
    peer.close().await;
    let consecutive = || {
        rx.windows(2)
            .filter(|w| !w[1].marker && w[1].seq == w[0].seq.wrapping_add(1))
    };
    let spacing = |a: Instant, b: Instant| (b.duration_since(a).as_secs_f64() * 1e3 - 20.0).abs();
    let jitter_ms = consecutive().map(|w| spacing(w[0].at, w[1].at)).collect();
    let kernel_jitter_ms = consecutive()
        .filter_map(|w| Some(spacing(w[0].kernel_at?, w[1].kernel_at?)))
        .collect();
    let down_lost = match (rx.first(), rx.last()) {
        (Some(a), Some(b)) => (b.seq.wrapping_sub(a.seq) as usize + 1).saturating_sub(rx.len()),
        _ => 0,
    };
    Ok(CallResult {
        answer_ms: peer.answer_time.as_secs_f64() * 1e3,
        connect_ms: connect.as_secs_f64() * 1e3,
        sent,
        received: rx.len(),
        down_lost,
        jitter_ms,
        kernel_jitter_ms,
    })
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn delta(a: &HashMap<String, f64>, b: &HashMap<String, f64>, k: &str) -> f64 {
    b.get(k).copied().unwrap_or(f64::NAN) - a.get(k).copied().unwrap_or(f64::NAN)
}

/// Runs one step against a fresh (or the running) server; returns its report.
pub async fn step(
    source: &Source,
    profile: Profile,
    uplink: Arc<Vec<Bytes>>,
    dialog: Option<&BenchDialog>,
    plan: &StepPlan,
) -> anyhow::Result<Value> {
    let target = Target::start(source).await?;
    let report = measure(&target, profile, uplink, dialog, plan).await;
    target.stop().await?;
    report
}

/// Runs one step's calls against `target` (started and stopped by the caller) and measures them.
pub async fn measure(
    target: &Target,
    profile: Profile,
    uplink: Arc<Vec<Bytes>>,
    dialog: Option<&BenchDialog>,
    plan: &StepPlan,
) -> anyhow::Result<Value> {
    let idle = target.usage()?;
    let m0 = target.metrics().await?;
    let dialog0 = dialog.map(snapshot);
    let me = std::process::id();

    let t0 = Instant::now();
    let tasks: Vec<_> = (0..plan.calls)
        .map(|i| {
            let uplink = uplink.clone();
            let (http, duration, stagger) = (target.http, plan.duration, plan.stagger);
            let forwarded_for = plan.forwarded_for.map(|f| f(i));
            let answers = plan.answers.clone();
            tokio::spawn(async move {
                tokio::time::sleep(stagger * i as u32).await;
                one_call(http, profile, uplink, duration, forwarded_for, answers).await
            })
        })
        .collect();

    // Steady window: from when every call should be up and streaming to shortly before the end.
    let warmup = plan.stagger * plan.calls as u32 + Duration::from_secs(2);
    let window = plan
        .duration
        .saturating_sub(Duration::from_secs(3))
        .saturating_sub(warmup)
        .max(Duration::from_secs(1));
    tokio::time::sleep(warmup).await;
    let (a, gen_a) = (target.usage()?, proc_usage(me)?);
    let w0 = Instant::now();
    let mut samples = vec![];
    match plan.sample_every {
        Some(every) => {
            while w0.elapsed() + every <= window {
                tokio::time::sleep(every).await;
                if let Some((cpu, rss)) = target.usage()? {
                    samples.push(json!({"t_s": w0.elapsed().as_secs_f64().round(), "rss_mb": rss as f64 / 1e6, "cpu_s": cpu}));
                }
            }
            tokio::time::sleep(window.saturating_sub(w0.elapsed())).await;
        }
        None => tokio::time::sleep(window).await,
    }
    let (b, gen_b) = (target.usage()?, proc_usage(me)?);
    let window_s = w0.elapsed().as_secs_f64();

    let mut results = vec![];
    let mut failures = vec![];
    for t in tasks {
        match t.await? {
            Ok(r) => results.push(r),
            Err(e) => failures.push(e.to_string()),
        }
    }
    // The codecs flush their counters when they stop.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let m1 = target.metrics().await?;
    let wall_s = t0.elapsed().as_secs_f64();

    let mut answer: Vec<f64> = results.iter().map(|r| r.answer_ms).collect();
    let mut connect: Vec<f64> = results.iter().map(|r| r.connect_ms).collect();
    let mut jitter: Vec<f64> = results
        .iter()
        .flat_map(|r| r.jitter_ms.iter().copied())
        .collect();
    let mut kernel_jitter: Vec<f64> = results
        .iter()
        .flat_map(|r| r.kernel_jitter_ms.iter().copied())
        .collect();
    kernel_jitter.sort_by(f64::total_cmp);
    answer.sort_by(f64::total_cmp);
    connect.sort_by(f64::total_cmp);
    jitter.sort_by(f64::total_cmp);
    let n = results.len();
    let sent: usize = results.iter().map(|r| r.sent).sum();
    let received: usize = results.iter().map(|r| r.received).sum();
    let down_lost: usize = results.iter().map(|r| r.down_lost).sum();
    let silent_calls = results.iter().filter(|r| r.received == 0).count();
    // What came back of what each caller sent (echo: everything should).
    let echo_worst = results
        .iter()
        .map(|r| r.received as f64 / r.sent.max(1) as f64)
        .fold(f64::NAN, f64::min);
    let echo_overall = received as f64 / sent.max(1) as f64;
    let up_lost = delta(&m0, &m1, "voicegate_uplink_frames_lost_total");
    let rtp_in = delta(&m0, &m1, "voicegate_rtp_packets_in_total");
    let queue_full = delta(&m0, &m1, "voicegate_media_datagrams_queue_full_total");
    let send_dropped = delta(&m0, &m1, "voicegate_media_datagrams_send_dropped_total");
    // The server's own share of downlink jitter: how late its pacer woke for a slot.
    let late_n = delta(&m0, &m1, "voicegate_pacer_lateness_seconds_count");
    let late_le = |le: &str| {
        delta(
            &m0,
            &m1,
            &format!("voicegate_pacer_lateness_seconds_bucket{{le=\"{le}\"}}"),
        )
    };
    let late_over_2ms = if late_n > 0.0 {
        1.0 - late_le("0.002") / late_n
    } else {
        f64::NAN
    };
    let late_p99_at_most_ms = ["0.0005", "0.001", "0.002", "0.005", "0.01", "0.02", "0.05"]
        .iter()
        .find(|le| late_le(le) >= 0.99 * late_n)
        .map_or(f64::INFINITY, |le| {
            le.parse::<f64>().unwrap_or(f64::NAN) * 1e3
        });
    let (cpu_pct, rss_mb, rss_per_call_mb, idle_rss_mb) = match (idle, a, b) {
        (Some(idle), Some(a), Some(b)) => (
            (b.0 - a.0) / window_s * 100.0,
            b.1 as f64 / 1e6,
            (b.1 as f64 - idle.1 as f64) / 1e6 / plan.calls.max(1) as f64,
            idle.1 as f64 / 1e6,
        ),
        _ => (f64::NAN, f64::NAN, f64::NAN, f64::NAN),
    };
    let gen_cpu_pct = (gen_b.0 - gen_a.0) / window_s * 100.0;
    let jitter_p99 = pct(&jitter, 0.99);
    let kernel_jitter_p99 = pct(&kernel_jitter, 0.99);
    let delivered = failures.is_empty() && n == plan.calls && silent_calls == 0 && up_lost == 0.0;
    let quality = delivered && jitter_p99 <= JITTER_P99_MAX_MS;
    // The same bar on the kernel's receive times: the server's delivery without the generator's
    // own scheduling (its WebRTC stack and tasks share one core with every other caller).
    let kernel_quality = delivered
        && kernel_jitter.len() * 10 >= jitter.len() * 9
        && kernel_jitter_p99 <= JITTER_P99_MAX_MS;
    let mut report = json!({
        "profile": profile.name(),
        "calls": plan.calls,
        "connected": n,
        "failed": failures.len(),
        "seconds": plan.duration.as_secs(),
        "answer_ms": {"p50": pct(&answer, 0.5), "p99": pct(&answer, 0.99)},
        "connect_ms": {"p50": pct(&connect, 0.5), "p95": pct(&connect, 0.95), "p99": pct(&connect, 0.99)},
        "uplink": {"sent": sent, "received_at_server": rtp_in, "lost_at_server": up_lost},
        "downlink": {"received": received, "lost": down_lost, "calls_without_audio": silent_calls},
        "echo_ratio": {"worst_call": echo_worst, "overall": echo_overall},
        "downlink_jitter_ms": {"p50": pct(&jitter, 0.5), "p99": jitter_p99},
        "downlink_kernel_jitter_ms": {"p50": pct(&kernel_jitter, 0.5), "p99": kernel_jitter_p99, "pairs": kernel_jitter.len()},
        "server": {
            "cpu_percent_of_one_core": cpu_pct,
            "cpu_percent_per_call": cpu_pct / n.max(1) as f64,
            "rss_mb": rss_mb,
            "idle_rss_mb": idle_rss_mb,
            "rss_mb_per_call": rss_per_call_mb,
            "pacer_wakeups": late_n,
            "pacer_late_over_2ms_share": late_over_2ms,
            "pacer_lateness_p99_ms_at_most": late_p99_at_most_ms,
            "queue_full_drops": queue_full,
            "send_buffer_drops": send_dropped,
        },
        "generator_cpu_percent_of_one_core": gen_cpu_pct,
        "steady_window_s": window_s,
        "wall_s": wall_s,
        "quality_ok": quality,
        "kernel_quality_ok": kernel_quality,
        "failures": failures.iter().take(5).collect::<Vec<_>>(),
    });
    if let (Some(d), Some(before)) = (dialog, dialog0) {
        let after = snapshot(d);
        report["dialog"] = json!({
            "answers_asked": after.0 - before.0,
            "answers_spoken": after.1 - before.1,
            "barge_ins": after.2 - before.2,
            "engine_errors": after.3 - before.3,
        });
    }
    if !samples.is_empty() {
        report["samples"] = json!(samples);
    }
    Ok(report)
}

fn snapshot(d: &BenchDialog) -> (u64, u64, u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &d.counts;
    (
        c.finals.load(Relaxed),
        c.spoken.load(Relaxed),
        c.interrupts.load(Relaxed),
        c.errors.load(Relaxed),
    )
}

/// Fails loudly when the figures are not of calls that really happened.
pub fn check_plausible(r: &Value, profile: Profile) -> anyhow::Result<()> {
    let connected = r["connected"].as_u64().unwrap_or(0);
    if connected == 0 {
        bail!("no call connected: {}", r["failures"]);
    }
    if r["downlink"]["received"].as_u64().unwrap_or(0) == 0 {
        bail!("no audio came back");
    }
    if r["uplink"]["received_at_server"].as_f64().unwrap_or(0.0) <= 0.0 {
        bail!("the server received no RTP");
    }
    if profile == Profile::Dialog && r["dialog"]["answers_spoken"].as_u64().unwrap_or(0) == 0 {
        bail!("no answer was spoken: the dialog profile did not run turns");
    }
    Ok(())
}

/// One table row.
pub fn print_row(r: &Value, header: bool) {
    if header {
        println!(
            "{:>6} {:>9} {:>13} {:>15} {:>9} {:>9} {:>9} {:>13} {:>8} {:>9} {:>8} {:>9} {:>6} {:>12} {:>7} {:>17} {:>9}",
            "calls",
            "connected",
            "answer p50/99",
            "connect p50/99",
            "up lost",
            "down pkts",
            "down lost",
            "jitter p50/99",
            "cpu %",
            "cpu %/call",
            "rss MB",
            "MB/call",
            "gen %",
            "srv late>2ms",
            "quality",
            "kernel jitter p99",
            "k.quality"
        );
    }
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    println!(
        "{:>6} {:>9} {:>6.1}/{:<6.1} {:>7.1}/{:<7.1} {:>9} {:>9} {:>9} {:>6.2}/{:<6.2} {:>8.1} {:>9.3} {:>8.1} {:>9.2} {:>6.0} {:>11.2}% {:>7} {:>17.2} {:>9}",
        r["calls"].as_u64().unwrap_or(0),
        r["connected"].as_u64().unwrap_or(0),
        f(&r["answer_ms"]["p50"]),
        f(&r["answer_ms"]["p99"]),
        f(&r["connect_ms"]["p50"]),
        f(&r["connect_ms"]["p99"]),
        f(&r["uplink"]["lost_at_server"]),
        r["downlink"]["received"].as_u64().unwrap_or(0),
        r["downlink"]["lost"].as_u64().unwrap_or(0),
        f(&r["downlink_jitter_ms"]["p50"]),
        f(&r["downlink_jitter_ms"]["p99"]),
        f(&r["server"]["cpu_percent_of_one_core"]),
        f(&r["server"]["cpu_percent_per_call"]),
        f(&r["server"]["rss_mb"]),
        f(&r["server"]["rss_mb_per_call"]),
        f(&r["generator_cpu_percent_of_one_core"]),
        f(&r["server"]["pacer_late_over_2ms_share"]) * 100.0,
        if r["quality_ok"] == true {
            "ok"
        } else {
            "FAIL"
        },
        f(&r["downlink_kernel_jitter_ms"]["p99"]),
        if r["kernel_quality_ok"] == true {
            "ok"
        } else {
            "FAIL"
        },
    );
}

/// What the echo profile's callers say, on a loop: continuous speech, so the server's encoder
/// works on what it works on in a real call (libopus costs differ a lot between a tone and speech).
const ECHO_SPEECH: &str = "Hello, I would like to check the status of my order. It was placed last \
    Tuesday and should have arrived by now. Could you also tell me about the weather tomorrow?";

/// The echo profile's uplink: [`ECHO_SPEECH`] as a browser would send it, looped by the caller.
pub async fn echo_uplink() -> anyhow::Result<Vec<Bytes>> {
    let (pcm, rate) = crate::speech::espeak_pcm(ECHO_SPEECH)
        .await
        .context("rendering the echo profile's speech")?;
    Ok(voicegate_testkit::peer::opus_speech(
        &pcm,
        rate,
        Duration::ZERO,
        Duration::ZERO,
    ))
}

/// The caller's audio for a profile: continuous speech for echo; for dialog a spoken question
/// then silence, repeating every 5 s (the answer fills about half of the rest).
pub async fn uplink(profile: Profile) -> anyhow::Result<Vec<Bytes>> {
    match profile {
        Profile::Echo => echo_uplink().await,
        Profile::Dialog => {
            let (pcm, rate) = crate::speech::espeak_pcm("What is the weather like today?").await?;
            let speech = Duration::from_secs_f64(pcm.len() as f64 / rate as f64);
            let tail = Duration::from_secs(5).saturating_sub(speech);
            Ok(voicegate_testkit::peer::opus_speech(
                &pcm,
                rate,
                Duration::ZERO,
                tail,
            ))
        }
    }
}

/// Starts the dialog app and cached engines for the dialog profile.
pub async fn bench_dialog() -> anyhow::Result<BenchDialog> {
    let (pcm, rate) = crate::speech::espeak_pcm(crate::dialog::ANSWER)
        .await
        .context("rendering the cached answer")?;
    BenchDialog::start(pcm, rate).await
}
