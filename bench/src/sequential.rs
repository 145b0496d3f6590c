//! `voicegate-bench sequential`: many echo calls placed one after another against one server,
//! ended in every way a call ends, and the server's resources compared before and after.
//!
//! The server is started with short media timeouts (as `tests/leak.rs` runs it), so the calls
//! that end by the server noticing (a caller that vanished, one that never connected, one that
//! went silent) end within a second or two. A warm-up of calls of every kind first, so pools and
//! threads that are made on first need are part of the baseline; then the calls; then, once
//! every call has ended, the server must be back where it was: open file descriptors and threads
//! (from `/proc/<pid>`) no more than at the baseline, no live call, actor, driver task or route
//! on the shared port (from `/metrics`), and its RSS within `--rss-slack` (5 %) of the baseline.
//! It exits non-zero when any of that does not hold, or a call did not end the way it was ended.

use crate::target::{Limits, Source, Target, proc_usage};
use anyhow::{Context as _, bail};
use bytes::Bytes;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use voicegate_testkit::ClientPeer;
use voicegate_testkit::endings::place_and_end;

const SECOND: Duration = Duration::from_secs(1);

/// What a run does.
#[derive(Debug, Clone)]
pub struct SequentialPlan {
    /// Calls measured.
    pub calls: usize,
    /// Calls placed before the baseline is taken.
    pub warmup: usize,
    /// 20 ms frames each connected caller sends before its call ends.
    pub frames: usize,
    /// Resources are sampled every this many calls.
    pub sample_every: usize,
    /// How much RSS may grow over the baseline, as a fraction (0.05: 5 %).
    pub rss_slack: f64,
}

/// The server settings of the run: the media timeouts `tests/leak.rs` uses, so calls that end by
/// a timeout end within about a second (the RTP timeout may not be shorter than ICE's failure
/// window, so that is shortened too).
pub const SHORT_TIMEOUTS: [(&str, &str); 5] = [
    ("VOICEGATE__CALLS__RTP_TIMEOUT_MS", "1000"),
    ("VOICEGATE__MEDIA__ICE_DISCONNECTED_TIMEOUT_MS", "400"),
    ("VOICEGATE__MEDIA__ICE_FAILED_TIMEOUT_MS", "600"),
    ("VOICEGATE__MEDIA__ICE_KEEPALIVE_MS", "200"),
    ("VOICEGATE__CALLS__CONNECT_TIMEOUT_MS", "1000"),
];

/// What is counted of the server.
#[derive(Debug, Clone, Copy)]
struct Resources {
    fds: usize,
    threads: usize,
    rss: u64,
    calls: f64,
    actors: f64,
    tasks: f64,
    routes: f64,
}

impl Resources {
    fn to_json(self) -> Value {
        json!({
            "fds": self.fds,
            "threads": self.threads,
            "rss_mb": self.rss as f64 / 1e6,
            "calls_active": self.calls,
            "actors_live": self.actors,
            "driver_tasks": self.tasks,
            "routes": self.routes,
        })
    }

    /// Nothing of any call is left.
    fn released(&self) -> bool {
        self.calls == 0.0 && self.actors == 0.0 && self.tasks == 0.0 && self.routes == 0.0
    }
}

fn sum(m: &HashMap<String, f64>, prefix: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.as_str() == prefix || k.starts_with(&format!("{prefix}{{")))
        .map(|(_, v)| v)
        .sum()
}

async fn resources(target: &Target, pid: u32) -> anyhow::Result<Resources> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .context("reading the server's open files")?
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .context("no Threads: in /proc status")?
        .trim()
        .parse()?;
    let (_, rss) = proc_usage(pid)?;
    let m = target.metrics().await?;
    Ok(Resources {
        fds,
        threads,
        rss,
        calls: sum(&m, "voicegate_calls_active"),
        actors: sum(&m, "voicegate_actors_live"),
        tasks: sum(&m, "voicegate_media_tasks_live"),
        routes: sum(&m, "voicegate_media_routes"),
    })
}

/// Polls until every call is released (and no more than `within`); returns the last reading.
async fn settle(target: &Target, pid: u32, within: Duration) -> anyhow::Result<Resources> {
    let t0 = Instant::now();
    loop {
        let r = resources(target, pid).await?;
        if r.released() || t0.elapsed() > within {
            return Ok(r);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Places calls `from..to`, closing silent callers once their calls have ended; returns the
/// connect times.
async fn calls(
    target: &Target,
    pid: u32,
    range: std::ops::Range<usize>,
    frames: &[Bytes],
    lingering: &mut Vec<ClientPeer>,
) -> anyhow::Result<Vec<f64>> {
    let mut connect = vec![];
    for i in range {
        if let Some(t) = place_and_end(target.http, i, frames, lingering).await? {
            connect.push(t.as_secs_f64() * 1e3);
        }
        if lingering.len() > 8 {
            // Silent callers end by the RTP timeout; close the client side once they have.
            settle(target, pid, 5 * SECOND).await?;
            for p in lingering.drain(..) {
                p.close().await;
            }
        }
    }
    Ok(connect)
}

fn ended(m: &HashMap<String, f64>) -> HashMap<String, f64> {
    m.iter()
        .filter_map(|(k, v)| {
            let reason = k.strip_prefix("voicegate_calls_total{reason=\"")?;
            Some((reason.trim_end_matches("\"}").to_owned(), *v))
        })
        .collect()
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs the calls against a fresh server from `binary` and checks what it holds afterwards.
pub async fn run(binary: &str, plan: SequentialPlan, as_json: bool) -> anyhow::Result<()> {
    let source = Source::Spawn {
        binary: binary.to_owned(),
        cpus: None,
        env: SHORT_TIMEOUTS
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        limits: Limits::Generator,
    };
    let target = Target::start(&source).await?;
    let pid = target.pid.context("the spawned server has no pid")?;
    let frames = voicegate_testkit::peer::opus_tone(440.0, plan.frames);
    let mut lingering = vec![];

    calls(&target, pid, 0..plan.warmup, &frames, &mut lingering).await?;
    settle(&target, pid, 10 * SECOND).await?;
    for p in lingering.drain(..) {
        p.close().await;
    }
    tokio::time::sleep(SECOND).await;
    let baseline = resources(&target, pid).await?;
    let m0 = target.metrics().await?;
    if !as_json {
        println!(
            "{} sequential echo calls ({} warm-up), {} frames each; baseline: {} fds, {} threads, {:.1} MB",
            plan.calls,
            plan.warmup,
            plan.frames,
            baseline.fds,
            baseline.threads,
            baseline.rss as f64 / 1e6
        );
    }

    let t0 = Instant::now();
    let mut connect = vec![];
    let mut samples = vec![];
    let mut done = 0;
    while done < plan.calls {
        let next = (done + plan.sample_every.max(1)).min(plan.calls);
        connect.extend(calls(&target, pid, done..next, &frames, &mut lingering).await?);
        done = next;
        let r = resources(&target, pid).await?;
        let sample = json!({"calls": done, "t_s": t0.elapsed().as_secs_f64().round(), "resources": r.to_json()});
        if !as_json {
            println!(
                "  after {:>6} calls ({:>5.0} s): rss {:>6.1} MB, fds {:>4}, threads {:>3}, calls live {}",
                done,
                t0.elapsed().as_secs_f64(),
                r.rss as f64 / 1e6,
                r.fds,
                r.threads,
                r.calls
            );
        }
        samples.push(sample);
    }
    let took = t0.elapsed();
    let released = settle(&target, pid, 10 * SECOND).await?;
    for p in lingering.drain(..) {
        p.close().await;
    }
    // Threads and descriptors of the last calls go shortly after their calls.
    let t1 = Instant::now();
    let after = loop {
        let r = resources(&target, pid).await?;
        if (r.fds <= baseline.fds && r.threads <= baseline.threads) || t1.elapsed() > 5 * SECOND {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let m1 = target.metrics().await?;
    target.stop().await?;

    let (e0, e1) = (ended(&m0), ended(&m1));
    let mut by_reason: Vec<(String, f64)> = e1
        .iter()
        .map(|(r, v)| (r.clone(), v - e0.get(r).copied().unwrap_or(0.0)))
        .filter(|(_, n)| *n > 0.0)
        .collect();
    by_reason.sort_by(|a, b| a.0.cmp(&b.0));
    let ended_total: f64 = by_reason.iter().map(|(_, n)| n).sum();
    connect.sort_by(f64::total_cmp);
    let rss_growth = after.rss as f64 / baseline.rss as f64 - 1.0;
    let checks = [
        ("every call ended once", ended_total == plan.calls as f64),
        (
            "calls, actors, driver tasks and routes back to 0",
            released.released() && after.released(),
        ),
        ("open files back to the baseline", after.fds <= baseline.fds),
        (
            "threads back to the baseline",
            after.threads <= baseline.threads,
        ),
        (
            "RSS within the slack of the baseline",
            rss_growth <= plan.rss_slack,
        ),
    ];
    let report = json!({
        "calls": plan.calls,
        "warmup": plan.warmup,
        "frames_per_call": plan.frames,
        "seconds": took.as_secs_f64(),
        "calls_per_second": plan.calls as f64 / took.as_secs_f64(),
        "connect_ms": {"p50": pct(&connect, 0.5), "p95": pct(&connect, 0.95), "p99": pct(&connect, 0.99), "n": connect.len()},
        "ended": by_reason.iter().map(|(r, n)| (r.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "baseline": baseline.to_json(),
        "after": after.to_json(),
        "rss_growth": rss_growth,
        "samples": samples,
        "checks": checks.iter().map(|(what, ok)| (what.to_string(), json!(ok))).collect::<serde_json::Map<_, _>>(),
    });
    if as_json {
        println!("{report}");
    } else {
        println!(
            "{} calls in {:.0} s ({:.1} calls/s); offer → connected p50 {:.1} ms, p95 {:.1} ms ({} connected)",
            plan.calls,
            took.as_secs_f64(),
            plan.calls as f64 / took.as_secs_f64(),
            pct(&connect, 0.5),
            pct(&connect, 0.95),
            connect.len()
        );
        let reasons: Vec<String> = by_reason.iter().map(|(r, n)| format!("{r} {n}")).collect();
        println!("ended: {}", reasons.join(", "));
        println!(
            "baseline: {} fds, {} threads, {:.1} MB; after: {} fds, {} threads, {:.1} MB ({:+.2} %); \
             after: calls {}, actors {}, driver tasks {}, routes {}",
            baseline.fds,
            baseline.threads,
            baseline.rss as f64 / 1e6,
            after.fds,
            after.threads,
            after.rss as f64 / 1e6,
            rss_growth * 100.0,
            after.calls,
            after.actors,
            after.tasks,
            after.routes
        );
        for (what, ok) in checks {
            println!("  {}: {what}", if ok { "ok  " } else { "FAIL" });
        }
    }
    if let Some((what, _)) = checks.iter().find(|(_, ok)| !ok) {
        bail!("sequential calls: {what} does not hold");
    }
    Ok(())
}
