//! voicegate-bench: places N concurrent echo calls against a running voicegate through the real
//! HTTP API and real WebRTC, streams pre-encoded Opus both ways for a while, and reports setup
//! latency, packet counts, downlink timing and the server's CPU and memory per call (read from
//! `/proc/<pid>` over the steady window).
//!
//!   voicegate-bench --server http://127.0.0.1:8080 --pid <server pid> --calls 20 --seconds 20
//!
//! It fails loudly (exit 1) when calls did not connect or audio did not flow, so a figure it
//! prints is a figure of calls that really happened.

use anyhow::{Context as _, bail};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use voicegate_testkit::ClientPeer;
use voicegate_testkit::peer::opus_tone;

mod recognize;
mod speech;

const USAGE: &str = "usage:
  voicegate-bench [echo] --server <http://host:port> [--pid <server pid>] [--calls N] [--seconds S] [--json]
  voicegate-bench speech --server <http://host:port> --dialog-listen <ip:port> [--runs N]
  voicegate-bench recognize <file.wav> [--grammar <file.gram>]";

struct Args {
    speech: bool,
    dialog_listen: SocketAddr,
    runs: usize,
    server: SocketAddr,
    pid: Option<u32>,
    calls: usize,
    seconds: u64,
    json: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        speech: false,
        dialog_listen: "127.0.0.1:18100".parse()?,
        runs: 20,
        server: "127.0.0.1:8080".parse()?,
        pid: None,
        calls: 20,
        seconds: 20,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || {
            it.next()
                .with_context(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--server" => {
                let v = val()?;
                let hostport = v.trim_start_matches("http://").trim_end_matches('/');
                a.server = hostport
                    .parse()
                    .with_context(|| format!("--server {v}: want http://ip:port"))?;
            }
            "--pid" => a.pid = Some(val()?.parse()?),
            "--calls" => a.calls = val()?.parse()?,
            "--seconds" => a.seconds = val()?.parse()?,
            "--json" => a.json = true,
            "echo" => a.speech = false,
            "speech" => a.speech = true,
            "--dialog-listen" => a.dialog_listen = val()?.parse()?,
            "--runs" => a.runs = val()?.parse()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    Ok(a)
}

/// CPU time (user+system) in clock ticks and resident memory in bytes of a process.
fn proc_usage(pid: u32) -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').context("bad /proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f[11].parse()?;
    let stime: u64 = f[12].parse()?;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm"))?;
    let rss_pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .context("bad statm")?
        .parse()?;
    Ok((utime + stime, rss_pages * 4096))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

struct CallResult {
    answer_ms: f64,
    connect_ms: f64,
    sent: usize,
    received: usize,
    /// |inter-arrival - 20 ms| of downlink packets inside talkspurts, ms.
    jitter_ms: Vec<f64>,
}

async fn one_call(
    server: SocketAddr,
    frames: Arc<Vec<Bytes>>,
    duration: Duration,
) -> anyhow::Result<CallResult> {
    let peer = ClientPeer::call(server, "/webrtc/v1/offer?mode=echo").await?;
    let connect = peer.wait_connected(Duration::from_secs(10)).await?;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let start = Instant::now();
    let mut sent = 0;
    while start.elapsed() < duration {
        tick.tick().await;
        peer.send(frames[sent % frames.len()].clone()).await?;
        sent += 1;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rx = peer.received();
    let jitter_ms = rx
        .windows(2)
        .filter(|w| !w[1].marker)
        .map(|w| (w[1].at.duration_since(w[0].at).as_secs_f64() * 1e3 - 20.0).abs())
        .collect();
    peer.close().await;
    Ok(CallResult {
        answer_ms: peer.answer_time.as_secs_f64() * 1e3,
        connect_ms: connect.as_secs_f64() * 1e3,
        sent,
        received: rx.len(),
        jitter_ms,
    })
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("recognize") {
        let wav = argv.get(2).context(USAGE)?;
        let grammar = argv
            .iter()
            .position(|a| a == "--grammar")
            .and_then(|i| argv.get(i + 1));
        return recognize::run(wav, grammar.map(String::as_str)).await;
    }
    let args = parse_args()?;
    if args.speech {
        return speech::run(args.server, args.dialog_listen, args.runs).await;
    }
    // Pre-encoded: the generator spends its CPU on WebRTC, not on encoding.
    let frames = Arc::new(opus_tone(440.0, 50));
    let duration = Duration::from_secs(args.seconds);
    let baseline = args.pid.map(proc_usage).transpose()?;

    let t0 = Instant::now();
    let tasks: Vec<_> = (0..args.calls)
        .map(|i| {
            let frames = frames.clone();
            let server = args.server;
            tokio::spawn(async move {
                // Spread call set-up over 10 ms steps, as arrivals would be.
                tokio::time::sleep(Duration::from_millis(10 * i as u64)).await;
                one_call(server, frames, duration).await
            })
        })
        .collect();

    // Steady window: from when every call should be up and streaming to shortly before the end.
    let warmup = Duration::from_millis(10 * args.calls as u64 + 2000);
    let window = duration
        .saturating_sub(Duration::from_secs(3))
        .saturating_sub(warmup)
        .max(Duration::from_secs(1));
    tokio::time::sleep(warmup).await;
    let a = args.pid.map(proc_usage).transpose()?;
    let w0 = Instant::now();
    tokio::time::sleep(window).await;
    let b = args.pid.map(proc_usage).transpose()?;
    let window_s = w0.elapsed().as_secs_f64();

    let mut results = vec![];
    let mut failures = vec![];
    for t in tasks {
        match t.await? {
            Ok(r) => results.push(r),
            Err(e) => failures.push(e.to_string()),
        }
    }
    let total_s = t0.elapsed().as_secs_f64();

    let mut answer: Vec<f64> = results.iter().map(|r| r.answer_ms).collect();
    let mut connect: Vec<f64> = results.iter().map(|r| r.connect_ms).collect();
    let mut jitter: Vec<f64> = results
        .iter()
        .flat_map(|r| r.jitter_ms.iter().copied())
        .collect();
    answer.sort_by(f64::total_cmp);
    connect.sort_by(f64::total_cmp);
    jitter.sort_by(f64::total_cmp);
    let sent: usize = results.iter().map(|r| r.sent).sum();
    let received: usize = results.iter().map(|r| r.received).sum();
    let worst = results
        .iter()
        .map(|r| r.received as f64 / r.sent.max(1) as f64)
        .fold(1.0, f64::min);
    let ticks = 100.0; // USER_HZ on Linux
    let (cpu_pct, rss_mb, rss_per_call_mb) = match (baseline, a, b) {
        (Some(base), Some(a), Some(b)) => (
            (b.0 - a.0) as f64 / ticks / window_s * 100.0,
            b.1 as f64 / 1e6,
            (b.1 as f64 - base.1 as f64) / 1e6 / args.calls.max(1) as f64,
        ),
        _ => (f64::NAN, f64::NAN, f64::NAN),
    };
    let n = results.len();
    let report = serde_json::json!({
        "calls": args.calls,
        "connected": n,
        "failed": failures.len(),
        "seconds": args.seconds,
        "answer_ms": {"p50": percentile(&answer, 0.5), "p99": percentile(&answer, 0.99)},
        "connect_ms": {"p50": percentile(&connect, 0.5), "p99": percentile(&connect, 0.99)},
        "uplink_packets": sent,
        "downlink_packets": received,
        "echo_ratio_worst_call": worst,
        "downlink_jitter_ms": {"p50": percentile(&jitter, 0.5), "p99": percentile(&jitter, 0.99)},
        "server_cpu_percent_of_one_core": cpu_pct,
        "server_cpu_percent_per_call": cpu_pct / n.max(1) as f64,
        "server_rss_mb": rss_mb,
        "server_rss_mb_per_call": rss_per_call_mb,
        "steady_window_s": window_s,
        "wall_s": total_s,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "calls {}/{} connected ({} failed), {} s each",
            n,
            args.calls,
            failures.len(),
            args.seconds
        );
        println!(
            "answer    p50 {:7.1} ms   p99 {:7.1} ms",
            percentile(&answer, 0.5),
            percentile(&answer, 0.99)
        );
        println!(
            "connect   p50 {:7.1} ms   p99 {:7.1} ms",
            percentile(&connect, 0.5),
            percentile(&connect, 0.99)
        );
        println!(
            "packets   up {sent}  down {received}  worst call echoed {:.1} %",
            worst * 100.0
        );
        println!(
            "downlink inter-arrival |dt-20ms|  p50 {:.2} ms  p99 {:.2} ms",
            percentile(&jitter, 0.5),
            percentile(&jitter, 0.99)
        );
        println!(
            "server    CPU {cpu_pct:.1} % of a core ({:.2} % per call), RSS {rss_mb:.1} MB ({rss_per_call_mb:.2} MB per call above idle)",
            cpu_pct / n.max(1) as f64
        );
    }
    for f in &failures {
        eprintln!("call failed: {f}");
    }
    if n == 0 || !failures.is_empty() || received == 0 || worst < 0.5 {
        bail!("calls failed or audio did not flow");
    }
    Ok(())
}
