//! `voicegate-bench floor`: the Opus work of N echo calls and nothing else, in one thread, no
//! WebRTC: per call, per 20 ms, decode one browser-like 48 kHz packet of speech to 16 kHz (through the
//! same reorder buffer and decoder the server uses) and encode one 16 kHz frame with the
//! server's default encoder settings. The CPU this takes per call is the floor a gateway's cost
//! per call is compared with.
//!
//! Each call is at its own point of the looped speech (`--phase spread`, the default), as the
//! load generator's callers are: with every call decoding the same packet and encoding the same
//! frame in turn (`--phase lockstep`, how the floor was measured before 2026-12-07's sixth
//! pass) libopus runs the same data-dependent path a hundred times over, and its branches and
//! tables are warmer than in any server, so the floor reads about a fifth cheaper than the
//! codec's real cost (BENCHMARKS.md, issue 15's sixth pass).

use std::time::{Duration, Instant};
use voicegate_core::codec::{DownlinkEncoder, EncoderSettings, UplinkDecoder, UplinkSettings};

/// Encoder settings; the defaults are the server's (`media.opus` in config/default.toml).
#[derive(Debug, Clone, Copy)]
pub struct FloorPlan {
    /// Calls.
    pub calls: usize,
    /// Seconds of audio per call.
    pub seconds: u64,
    /// libopus complexity.
    pub complexity: i32,
    /// In-band FEC in the encoder (the server's default is on).
    pub fec: bool,
    /// Every call on the same packet at once, instead of each at its own point of the audio.
    pub lockstep: bool,
}

/// Runs it and prints the result (JSON when asked).
pub async fn run(plan: FloorPlan, json: bool) -> anyhow::Result<()> {
    // The echo profile's uplink: speech, as the server would receive it.
    let packets = crate::load::echo_uplink().await?;
    let mut calls = (0..plan.calls)
        .map(|_| {
            let dec = UplinkDecoder::<bytes::Bytes>::new(UplinkSettings {
                pcm_rate: voicegate_core::frame::SPEECH_RATE,
                reorder_depth: 4,
                reorder_wait: Duration::from_millis(60),
                max_conceal: 10,
            })?;
            let enc = DownlinkEncoder::new(EncoderSettings {
                pcm_rate: voicegate_core::frame::SPEECH_RATE,
                complexity: plan.complexity,
                bitrate: 24_000,
                fec: plan.fec,
                expected_loss_percent: 10,
            })?;
            Ok((dec, enc))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let frames = plan.seconds as usize * voicegate_core::frame::FRAMES_PER_SECOND as usize;
    let cpu0 = thread_cpu();
    let wall0 = Instant::now();
    let mut bytes_out = 0usize;
    let now = Instant::now();
    let n = calls.len();
    for k in 0..frames {
        for (i, (dec, enc)) in calls.iter_mut().enumerate() {
            // Calls evenly spaced over the loop; the load generator picks its callers' points
            // at random, which spreads them the same on average.
            let start = if plan.lockstep {
                0
            } else {
                i * packets.len() / n
            };
            let packet = &packets[(start + k) % packets.len()];
            dec.push(k as u16, packet.clone(), now, &mut |pcm, _origin| {
                if let Ok(p) = enc.encode(pcm) {
                    bytes_out += p.len();
                }
            });
        }
    }
    let cpu_s = thread_cpu() - cpu0;
    let phase = if plan.lockstep { "lockstep" } else { "spread" };
    let wall_s = wall0.elapsed().as_secs_f64();
    anyhow::ensure!(bytes_out > 0, "nothing was encoded: the floor did not run");
    let audio_s = (plan.calls as u64 * plan.seconds) as f64;
    let per_call_pct = cpu_s / audio_s * 100.0;
    let report = serde_json::json!({
        "calls": plan.calls,
        "audio_seconds_per_call": plan.seconds,
        "complexity": plan.complexity,
        "fec": plan.fec,
        "phase": phase,
        "cpu_s": cpu_s,
        "wall_s": wall_s,
        "cpu_percent_of_one_core_per_call": per_call_pct,
        "calls_per_core_at_100_percent": 100.0 / per_call_pct,
        "us_per_frame_pair": cpu_s * 1e6 / (plan.calls * frames) as f64,
    });
    if json {
        println!("{report}");
    } else {
        println!(
            "opus floor: {} calls x {} s of audio, complexity {}, fec {}, phase {}: {:.3} % of a core \
             per call ({:.1} us per decode+encode of a 20 ms frame; {:.0} calls per core);",
            plan.calls,
            plan.seconds,
            plan.complexity,
            if plan.fec { "on" } else { "off" },
            phase,
            per_call_pct,
            cpu_s * 1e6 / (plan.calls * frames) as f64,
            100.0 / per_call_pct
        );
    }
    Ok(())
}

/// CPU time of this thread, seconds.
pub fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}
