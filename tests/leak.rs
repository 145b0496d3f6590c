//! 500 echo calls placed and ended one after another, ended in every way a call ends (hang-up by
//! `POST` or `DELETE`, the client closing, the client vanishing without a word, a client that
//! never connects, a silent client; the mix is the test kit's, shared with the 10 000-call
//! bench); afterwards file descriptors, threads, live calls, actors, driver tasks and routes on
//! the shared port must all be back where they were. A binary of its own, because it reads
//! process-wide figures.

mod common;

use common::TestServer;
use std::time::{Duration, Instant};
use voicegate_actors::metrics::{LabelSet, metrics};
use voicegate_testkit::endings::place_and_end;
use voicegate_testkit::peer::opus_tone;

const SECOND: Duration = Duration::from_secs(1);
const CALLS: usize = 500;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Threads:")).unwrap();
    line[8..].trim().parse().unwrap()
}

fn ended_total() -> u64 {
    metrics().calls_ended.iter().map(|(_, c)| c.get()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_calls_leave_nothing_behind() {
    let server = TestServer::start(&[
        // Timeouts short enough for 500 calls: the RTP timeout may be no shorter than ICE's
        // failure window (disconnected + failed), so that is shortened too.
        ("calls.rtp_timeout_ms", "1000"),
        ("media.ice_disconnected_timeout_ms", "400"),
        ("media.ice_failed_timeout_ms", "600"),
        ("media.ice_keepalive_ms", "200"),
        ("calls.connect_timeout_ms", "1000"),
    ]);
    let frames = opus_tone(440.0, 5);
    let mut lingering = vec![];
    // Warm up every path once, so lazily created pools and threads are part of the baseline.
    for i in 0..10 {
        place_and_end(server.http, i, &frames, &mut lingering)
            .await
            .unwrap();
    }
    server.wait_released(10 * SECOND).await.unwrap();
    for p in lingering.drain(..) {
        p.close().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (fds0, threads0, ended0) = (open_fds(), threads(), ended_total());
    let t0 = Instant::now();

    for i in 0..CALLS {
        place_and_end(server.http, i, &frames, &mut lingering)
            .await
            .unwrap();
        if lingering.len() > 8 {
            // Silent callers end by rtp-timeout; close the client side once they have.
            server.wait_until_calls(0, 5 * SECOND).await;
            for p in lingering.drain(..) {
                p.close().await;
            }
        }
    }
    server.wait_released(10 * SECOND).await.unwrap();
    for p in lingering.drain(..) {
        p.close().await;
    }
    let took = t0.elapsed();

    // Every call ended exactly once, each the way it was ended.
    let deadline = Instant::now() + 5 * SECOND;
    while ended_total() - ended0 < CALLS as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ended_total() - ended0, CALLS as u64);
    let by_reason: Vec<String> = metrics()
        .calls_ended
        .iter()
        .filter(|(_, c)| c.get() > 0)
        .map(|(r, c)| format!("{} {}", r.label(), c.get()))
        .collect();
    println!("500 calls in {took:?}; ended (with warm-up): {by_reason:?}");

    // Nothing left: calls, routes (wait_released), actors, driver tasks, threads, descriptors.
    assert!(server.snapshot().await.calls.is_empty());
    let deadline = Instant::now() + 5 * SECOND;
    loop {
        let actors: Vec<(&str, u64)> = metrics()
            .actors_live
            .iter()
            .map(|(k, g)| (k.label(), g.get()))
            .collect();
        let tasks = voicegate_media::mux::live_tasks();
        let (fds, threads) = (open_fds(), threads());
        if actors.iter().all(|(_, n)| *n == 0)
            && tasks == 0
            && fds <= fds0 + 2
            && threads <= threads0
        {
            println!("fds {fds0} -> {fds}, threads {threads0} -> {threads}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: actors {actors:?}, driver tasks {tasks}, fds {fds0} -> {fds}, threads {threads0} -> {threads}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
