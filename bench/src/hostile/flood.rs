//! An offer flood from one address: real offers posted at a fixed rate from another loopback
//! source, which the server's per-source admission must refuse beyond its limits while every
//! other source goes on placing calls.
//!
//! The offer is a real one, made once by a client peer that is closed again, so no check of
//! the calls it gets is ever answered: each accepted offer holds a slot until the server's
//! authentication timeout frees it. Each request claims, in `X-Forwarded-For`, the address of
//! one of the legitimate callers; the flood's source is not a trusted proxy, so the server must
//! ignore the claim and count the flood by its real address.

use super::{Answers, Stop};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use voicegate_testkit::{ClientPeer, http};

/// Requests in flight at most; a tick that finds this many is skipped (and counted).
const MAX_IN_FLIGHT: usize = 64;
/// How long requests still in flight at the end may take before they are abandoned.
const DRAIN: Duration = Duration::from_secs(3);
/// Where the flood posts: echo calls, the cheapest kind to hold a slot with.
const PATH: &str = "/webrtc/v1/offer?mode=echo";
/// The address the flood claims to forward for: one the legitimate callers use.
const CLAIMED: &str = "10.77.0.1";

/// What one request came to: a status (with the answer's SDP on 200), or an I/O error.
type Outcome = std::io::Result<(u16, Option<String>)>;

/// Posts offers to `http` from `from` at `per_s` a second until `stop`; returns its counts.
pub async fn run(
    http: SocketAddr,
    from: IpAddr,
    per_s: u32,
    answers: Answers,
    stop: Stop,
) -> Value {
    let sdp = match template_offer().await {
        Ok(s) => s,
        Err(e) => return json!({"error": format!("making the offer: {e:#}")}),
    };
    let body = serde_json::to_vec(&json!({"type": "offer", "sdp": sdp}))
        .expect("a Value always serializes");
    let mut in_flight: JoinSet<Outcome> = JoinSet::new();
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    let (mut posted, mut errors, mut skipped) = (0u64, 0u64, 0u64);
    let mut tally = |outcome: Outcome, statuses: &mut BTreeMap<u16, u64>| match outcome {
        Ok((status, answer)) => {
            *statuses.entry(status).or_default() += 1;
            if let Some(a) = answer {
                answers.lock().expect("no panics while holding").push(a);
            }
        }
        Err(_) => errors += 1,
    };
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(per_s.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let t0 = Instant::now();
    while !stop.now() {
        tick.tick().await;
        while let Some(done) = in_flight.try_join_next() {
            if let Ok(outcome) = done {
                tally(outcome, &mut statuses);
            }
        }
        if in_flight.len() >= MAX_IN_FLIGHT {
            skipped += 1;
            continue;
        }
        let body = body.clone();
        in_flight.spawn(async move { post(http, from, &body).await });
        posted += 1;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let _ = tokio::time::timeout(DRAIN, async {
        while let Some(done) = in_flight.join_next().await {
            if let Ok(outcome) = done {
                tally(outcome, &mut statuses);
            }
        }
    })
    .await;
    let abandoned = in_flight.len();
    in_flight.abort_all();
    let count = |s: u16| statuses.get(&s).copied().unwrap_or(0);
    let other: BTreeMap<String, u64> = statuses
        .iter()
        .filter(|(s, _)| **s != 200 && **s != 429)
        .map(|(s, n)| (s.to_string(), *n))
        .collect();
    json!({
        "source": from.to_string(),
        "claimed_forwarded_for": CLAIMED,
        "posted": posted,
        "seconds": seconds,
        "per_s": posted as f64 / seconds.max(1e-9),
        "accepted_200": count(200),
        "refused_429": count(429),
        "other_status": other,
        "errors": errors,
        "skipped_in_flight_cap": skipped,
        "abandoned_at_end": abandoned,
    })
}

/// A real offer from a client peer that is closed at once.
async fn template_offer() -> anyhow::Result<String> {
    let (pc, _, _, _, _, sdp) = ClientPeer::offer().await?;
    pc.close().await?;
    Ok(sdp)
}

async fn post(http: SocketAddr, from: IpAddr, body: &[u8]) -> Outcome {
    let headers = [
        ("Content-Type", "application/json"),
        ("X-Forwarded-For", CLAIMED),
    ];
    let res = http::request_from(from, http, "POST", PATH, &headers, body).await?;
    let answer = (res.status == 200)
        .then(|| res.json()["sdp"].as_str().map(str::to_owned))
        .flatten();
    Ok((res.status, answer))
}
