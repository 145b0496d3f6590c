//! `voicegate-bench hostile`: N legitimate echo calls, measured as `load` measures them, while
//! attackers run against the same server for the whole step:
//!
//! - [`garbage`]: garbage UDP on the shared media port from a few sockets;
//! - [`flood`]: an offer flood from one address (127.0.0.2, not a trusted proxy);
//! - [`rogue_app`]: a misbehaving dialog app, which a few dialog calls ([`callers`]) bring in.
//!
//! The server runs with the configuration's default limits, so the flood meets the real
//! per-source admission. The legitimate callers are all on this machine, so the server trusts
//! 127.0.0.1 as a proxy and each call names its own source in `X-Forwarded-For`; each source
//! places one offer, well within its rate.
//!
//! `--attacks` runs only some of them (to find out which one hurts); the record runs all.
//!
//! The step holds when every echo call connected, the worst call got back at least
//! [`ECHO_MIN`] of what it sent, and the server lost no uplink frame; it exits non-zero when it
//! does not, or when an attacker did not actually run (no garbage sent, no flood offer refused,
//! no call attacked by the app), so a passing figure is of a step that really was hostile.

mod callers;
mod flood;
mod garbage;
mod rogue_app;

use crate::load::{self, Profile, StepPlan};
use crate::target::{Limits, Source, Target};
use anyhow::{Context as _, bail};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Legitimate echo calls when `--calls` is not given.
pub const DEFAULT_CALLS: usize = 40;
/// Garbage datagrams a second on the media port, all sockets together.
pub const GARBAGE_PER_S: u32 = 2000;
/// Offers a second in the flood from one address.
pub const FLOOD_PER_S: u32 = 50;
/// Dialog calls kept up with the misbehaving app.
pub const DIALOG_CALLS: usize = 3;
/// The least share of its own audio every echo call must get back.
pub const ECHO_MIN: f64 = 0.99;
/// The flood's source: another loopback address, so the server sees another peer.
const FLOOD_FROM: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// How long the attackers run before the first echo call, so every attack is in full swing.
const LEAD: Duration = Duration::from_secs(3);
/// The attackers' hard deadline after the echo calls should have ended, in case the step hangs.
const OVERRUN: Duration = Duration::from_secs(30);

/// What the step runs.
#[derive(Debug, Clone)]
pub struct HostilePlan {
    /// Legitimate echo calls.
    pub calls: usize,
    /// How long each echo call streams.
    pub duration: Duration,
    /// Delay between echo call set-ups.
    pub stagger: Duration,
    /// Garbage datagrams a second, all sockets together.
    pub garbage_per_s: u32,
    /// Flood offers a second.
    pub flood_per_s: u32,
    /// Dialog calls kept up with the misbehaving app.
    pub dialog_calls: usize,
    /// Which attackers run.
    pub attacks: Attacks,
}

/// Which attackers run: all of them for the record; fewer to find out which one hurts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attacks {
    /// Garbage UDP on the media port.
    pub garbage: bool,
    /// The offer flood from one address.
    pub flood: bool,
    /// The misbehaving dialog app (and the dialog calls that bring it in).
    pub app: bool,
}

impl Attacks {
    /// Every attacker.
    pub const ALL: Attacks = Attacks {
        garbage: true,
        flood: true,
        app: true,
    };

    /// Parses a comma-separated list of `garbage`, `flood`, `app`.
    pub fn parse(list: &str) -> anyhow::Result<Attacks> {
        let mut a = Attacks {
            garbage: false,
            flood: false,
            app: false,
        };
        for name in list.split(',').map(str::trim) {
            match name {
                "garbage" => a.garbage = true,
                "flood" => a.flood = true,
                "app" => a.app = true,
                other => bail!("--attacks {other}: want a list of garbage, flood, app"),
            }
        }
        Ok(a)
    }

    fn names(self) -> Vec<&'static str> {
        [
            (self.garbage, "garbage"),
            (self.flood, "flood"),
            (self.app, "app"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }
}

/// Answer SDPs seen so far (the garbage names their ICE ufrags).
pub(crate) type Answers = Arc<Mutex<Vec<String>>>;

/// The ICE ufrags (`a=ice-ufrag:`) of the answers seen so far.
pub(crate) fn ice_ufrags(answers: &Answers) -> Vec<String> {
    let answers = answers.lock().expect("no panics while holding");
    answers
        .iter()
        .filter_map(|sdp| {
            sdp.lines()
                .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
                .map(|u| u.trim().to_owned())
        })
        .collect()
}

/// When the attackers stop: on the signal, or at the deadline at the latest.
#[derive(Clone)]
pub(crate) struct Stop {
    signal: watch::Receiver<bool>,
    deadline: tokio::time::Instant,
}

impl Stop {
    /// Whether it is time to stop.
    pub fn now(&self) -> bool {
        *self.signal.borrow() || tokio::time::Instant::now() >= self.deadline
    }

    /// Waits until it is time to stop.
    pub async fn wait(&mut self) {
        let _ = tokio::time::timeout_at(self.deadline, self.signal.wait_for(|s| *s)).await;
    }
}

/// Each legitimate echo call's own source: 10.77.x.y by call index.
fn echo_source(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 77, (i / 256) as u8, (i % 256) as u8))
}

/// Runs the step against a fresh server from `binary`; prints (or `json`s) the report and
/// fails when the step did not hold or was not hostile.
pub async fn run(binary: &str, plan: HostilePlan, json: bool) -> anyhow::Result<()> {
    let (pcm, rate) = crate::speech::espeak_pcm(crate::dialog::ANSWER)
        .await
        .context("rendering the stand-in engine's answer")?;
    let engines = crate::dialog::StandInEngines::start(pcm, rate).await;
    let uplink = Arc::new(load::echo_uplink().await?);

    let (stop_tx, stop_rx) = watch::channel(false);
    let stop = Stop {
        signal: stop_rx,
        deadline: tokio::time::Instant::now()
            + LEAD
            + plan.stagger * plan.calls as u32
            + plan.duration
            + OVERRUN,
    };
    let app = rogue_app::RogueApp::start(stop.clone()).await?;
    let mut env = engines.env.clone();
    env.push(("VOICEGATE__DIALOG__URL".into(), app.url()));
    env.push((
        "VOICEGATE__HTTP__TRUSTED_PROXIES".into(),
        "127.0.0.1/32".into(),
    ));
    let source = Source::Spawn {
        binary: binary.to_owned(),
        cpus: None,
        env,
        limits: Limits::Defaults,
    };
    let target = Target::start(&source).await?;
    let media = target
        .udp
        .context("a spawned server has a known media port")?;
    let m0 = target.metrics().await?;

    let answers: Answers = Arc::default();
    let on = plan.attacks;
    let t_garbage = on.garbage.then(|| {
        tokio::spawn(garbage::run(
            media,
            plan.garbage_per_s,
            answers.clone(),
            stop.clone(),
        ))
    });
    let t_flood = on.flood.then(|| {
        tokio::spawn(flood::run(
            target.http,
            FLOOD_FROM,
            plan.flood_per_s,
            answers.clone(),
            stop.clone(),
        ))
    });
    let t_callers = on.app.then(|| {
        tokio::spawn(callers::run(
            plan.dialog_calls,
            target.http,
            answers.clone(),
            stop.clone(),
        ))
    });
    tokio::time::sleep(LEAD).await;

    let step = StepPlan {
        forwarded_for: Some(echo_source),
        answers: Some(answers.clone()),
        ..StepPlan::new(plan.calls, plan.duration, plan.stagger)
    };
    let echo = load::measure(&target, Profile::Echo, uplink, None, &step).await;
    let _ = stop_tx.send(true);
    let garbage = finished(t_garbage).await;
    let flood = finished(t_flood).await;
    let callers = finished(t_callers).await;
    let app = if on.app { app.report() } else { Value::Null };
    let m1 = target.metrics().await;
    let stopped = target.stop().await;
    let mut echo = echo?;
    let m1 = m1.context("the server's /metrics after the step (did it survive?)")?;
    // The load bar includes jitter; this step's bar does not, so its figure is renamed to
    // keep the two apart.
    if let Some(e) = echo.as_object_mut() {
        let load_bar = e.remove("quality_ok").unwrap_or(Value::Null);
        e.insert("load_bar_with_jitter_ok".into(), load_bar);
    }
    let mut report = report(&plan, echo, garbage, flood, app, callers, &m0, &m1);
    report["server_stopped_on_sigterm"] = json!(stopped.is_ok());
    if let Err(e) = &stopped {
        report["server_stop_error"] = json!(e.to_string());
    }
    if json {
        println!("{report}");
    } else {
        print(&report);
    }
    let mut failed = vec![];
    if report["quality_ok"] != true {
        failed.push("the echo calls' quality did not hold");
    }
    if report["attackers_ran"] != true {
        failed.push("an attacker did not run");
    }
    if stopped.is_err() {
        failed.push("the server did not stop on SIGTERM");
    }
    if !failed.is_empty() {
        bail!("hostile step failed: {}", failed.join("; "));
    }
    Ok(())
}

/// An attacker's report: null when it did not run.
async fn finished(task: Option<tokio::task::JoinHandle<Value>>) -> Value {
    match task {
        Some(t) => t.await.unwrap_or_else(|e| json!({"error": e.to_string()})),
        None => Value::Null,
    }
}

/// The change of every `/metrics` series starting with `prefix`, by its label value (or the
/// whole series name when it has no labels).
fn deltas(
    m0: &HashMap<String, f64>,
    m1: &HashMap<String, f64>,
    prefix: &str,
) -> Map<String, Value> {
    let mut out: Vec<(String, f64)> = m1
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| {
            let label = k
                .split_once("=\"")
                .and_then(|(_, rest)| rest.split_once('"'))
                .map_or(k.as_str(), |(l, _)| l);
            (label.to_owned(), v - m0.get(k).copied().unwrap_or(0.0))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.into_iter().map(|(k, v)| (k, json!(v))).collect()
}

fn nonzero(m: Map<String, Value>) -> Map<String, Value> {
    m.into_iter()
        .filter(|(_, v)| v.as_f64() != Some(0.0))
        .collect()
}

#[allow(clippy::too_many_arguments)] // one report from each part of the step
fn report(
    plan: &HostilePlan,
    echo: Value,
    garbage: Value,
    flood: Value,
    app: Value,
    callers: Value,
    m0: &HashMap<String, f64>,
    m1: &HashMap<String, f64>,
) -> Value {
    let one = |name: &str| {
        m1.get(name).copied().unwrap_or(f64::NAN) - m0.get(name).copied().unwrap_or(0.0)
    };
    let server = json!({
        "limit_hits": deltas(m0, m1, "voicegate_limit_hits_total{"),
        "stun_unauthenticated": one("voicegate_media_stun_unauthenticated_total"),
        "datagrams_unroutable": one("voicegate_media_datagrams_unroutable_total"),
        "datagrams_in": one("voicegate_media_datagrams_in_total"),
        "address_conflicts": one("voicegate_media_address_conflicts_total"),
        "queue_full_drops": one("voicegate_media_datagrams_queue_full_total"),
        "dialog_reconnects": one("voicegate_dialog_reconnects_total"),
        "actor_restarts": nonzero(deltas(m0, m1, "voicegate_actor_restarts_total{")),
        "calls_ended_by_reason": nonzero(deltas(m0, m1, "voicegate_calls_total{")),
    });
    let connected = echo["connected"].as_u64().unwrap_or(0);
    let echo_worst = echo["echo_ratio"]["worst_call"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let up_lost = echo["uplink"]["lost_at_server"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let quality_ok = connected == plan.calls as u64
        && echo["failed"].as_u64() == Some(0)
        && echo_worst >= ECHO_MIN
        && up_lost == 0.0;
    let on = plan.attacks;
    let attackers_ran = (!on.garbage
        || (garbage["sent"].as_u64().unwrap_or(0) > 0
            && server["datagrams_unroutable"].as_f64().unwrap_or(0.0) > 0.0))
        && (!on.flood || flood["refused_429"].as_u64().unwrap_or(0) > 0)
        && (!on.app || app["calls_attacked"].as_u64().unwrap_or(0) > 0);
    json!({
        "step": "hostile",
        "calls": plan.calls,
        "seconds": plan.duration.as_secs(),
        "attacks": on.names(),
        "echo": echo,
        "attackers": {
            "garbage_udp": garbage,
            "offer_flood": flood,
            "dialog_app": app,
            "dialog_callers": callers,
        },
        "server_counters": server,
        "quality_bar": {"all_connected": true, "echo_worst_call_at_least": ECHO_MIN, "uplink_lost": 0},
        "quality_ok": quality_ok,
        "attackers_ran": attackers_ran,
    })
}

fn print(r: &Value) {
    let e = &r["echo"];
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    println!(
        "hostile step: {} echo calls for {} s, default limits; attacks alongside: {}",
        r["calls"], r["seconds"], r["attacks"]
    );
    println!(
        "echo calls: connected {}/{}, echo worst call {:.2} % (all calls {:.2} %), uplink lost {}, downlink lost {}, \
         jitter p50/p99 {:.2}/{:.2} ms, answer p50/p99 {:.1}/{:.1} ms, connect p50/p99 {:.1}/{:.1} ms",
        e["connected"],
        r["calls"],
        f(&e["echo_ratio"]["worst_call"]) * 100.0,
        f(&e["echo_ratio"]["overall"]) * 100.0,
        e["uplink"]["lost_at_server"],
        e["downlink"]["lost"],
        f(&e["downlink_jitter_ms"]["p50"]),
        f(&e["downlink_jitter_ms"]["p99"]),
        f(&e["answer_ms"]["p50"]),
        f(&e["answer_ms"]["p99"]),
        f(&e["connect_ms"]["p50"]),
        f(&e["connect_ms"]["p99"]),
    );
    println!(
        "server: CPU {:.1} % of a core, RSS {:.1} MB (idle {:.1} MB), pacer wake-ups late > 2 ms {:.2} %; generator CPU {:.1} %",
        f(&e["server"]["cpu_percent_of_one_core"]),
        f(&e["server"]["rss_mb"]),
        f(&e["server"]["idle_rss_mb"]),
        f(&e["server"]["pacer_late_over_2ms_share"]) * 100.0,
        f(&e["generator_cpu_percent_of_one_core"]),
    );
    for f in e["failures"].as_array().into_iter().flatten() {
        eprintln!("  echo call failed: {f}");
    }
    let a = &r["attackers"];
    println!("garbage UDP: {}", a["garbage_udp"]);
    println!("offer flood: {}", a["offer_flood"]);
    println!("dialog app:  {}", a["dialog_app"]);
    println!("dialog callers: {}", a["dialog_callers"]);
    println!(
        "server counters (change over the step): {}",
        r["server_counters"]
    );
    if let Some(e) = r["server_stop_error"].as_str() {
        println!("server stop: {e}");
    }
    println!(
        "quality (all connected, worst echo >= {:.0} %, no uplink loss): {}; attackers ran: {}",
        ECHO_MIN * 100.0,
        if r["quality_ok"] == true {
            "ok"
        } else {
            "FAIL"
        },
        if r["attackers_ran"] == true {
            "yes"
        } else {
            "NO"
        },
    );
}
