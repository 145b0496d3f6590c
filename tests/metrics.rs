//! `GET /metrics`: every listed series is exposed in valid Prometheus text, none is labelled by a
//! call, and they move when real calls happen. A binary of its own, because metrics are
//! process-wide and other tests' calls would move them too.

mod common;

use common::{TestServer, eventually, spoken};
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use voicegate_testkit::dialog_app::TestDialogApp;
use voicegate_testkit::{ClientPeer, http};

const SECOND: Duration = Duration::from_secs(1);

/// The exposition as `series{labels}` → value; panics on a line that is not valid text format.
async fn scrape(addr: SocketAddr) -> (String, HashMap<String, f64>) {
    let res = http::request(addr, "GET", "/metrics", &[], b"")
        .await
        .unwrap();
    assert_eq!(res.status, 200);
    assert!(
        res.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        res.header("content-type")
    );
    let text = voicegate_testkit::without_node_label(&res.text());
    let mut values = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(series.starts_with("voicegate_"), "{line}");
        assert!(
            values.insert(series.to_string(), v).is_none(),
            "duplicate series {series}"
        );
    }
    (text, values)
}

/// Datagrams the server must at least have received: the RTP packets the caller sent.
fn rtp_in_min(speech: &[bytes::Bytes]) -> f64 {
    speech.len() as f64 - 1.0
}

fn get(m: &HashMap<String, f64>, series: &str) -> f64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("{series} is not exposed"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_are_exposed_and_move_with_real_calls() {
    let app = TestDialogApp::start().await;
    let url = app.url();
    let server = TestServer::start(&[
        ("dialog.url", url.as_str()),
        ("dialog.reconnect_initial_ms", "100"),
    ]);
    let (_, before) = scrape(server.http).await;
    for series in [
        "voicegate_calls_active",
        "voicegate_actors_live{kind=\"call\"}",
        "voicegate_calls_total{reason=\"client-hangup\"}",
        "voicegate_calls_total{reason=\"shutdown\"}",
        "voicegate_calls_refused_full_total",
        "voicegate_offer_answer_seconds_count",
        "voicegate_offer_answer_seconds_bucket{le=\"+Inf\"}",
        "voicegate_offer_connected_seconds_count",
        "voicegate_rtp_packets_in_total",
        "voicegate_rtp_packets_out_total",
        "voicegate_uplink_frames_lost_total",
        "voicegate_uplink_frames_recovered_total",
        "voicegate_uplink_frames_concealed_total",
        "voicegate_tts_first_audio_seconds_count",
        "voicegate_asr_final_to_audio_seconds_count",
        "voicegate_barge_ins_total",
        "voicegate_dialog_reconnects_total",
        "voicegate_pacer_lateness_seconds_count",
        "voicegate_pacer_lateness_seconds_bucket{le=\"0.002\"}",
        "voicegate_actor_restarts_total{child=\"codec\"}",
        "voicegate_actor_restarts_total{child=\"dialog\"}",
        "voicegate_asr_decoders_loaded",
        "voicegate_tts_preconnects_total{outcome=\"used\"}",
        "voicegate_tts_preconnects_total{outcome=\"unused\"}",
        "voicegate_tts_preconnects_total{outcome=\"failed\"}",
    ] {
        get(&before, series);
    }
    assert_eq!(get(&before, "voicegate_calls_active"), 0.0);

    // A dialog call: speech out, the caller talks over it (barge-in) with a lost packet in it,
    // the dialog socket drops once, then the caller hangs up.
    let peer = ClientPeer::call(server.http, "/webrtc/v1/offer")
        .await
        .unwrap();
    peer.wait_connected(5 * SECOND).await.unwrap();
    app.wait_type(5 * SECOND, "call.started", None)
        .await
        .expect("call.started");
    let (text, during) = scrape(server.http).await;
    assert_eq!(get(&during, "voicegate_calls_active"), 1.0);
    for kind in ["call", "codec", "speaker", "dialog", "recognizer"] {
        assert_eq!(
            get(
                &during,
                &format!("voicegate_actors_live{{kind=\"{kind}\"}}")
            ),
            1.0,
            "{kind}"
        );
    }
    assert!(get(&during, "voicegate_media_tasks_live") > 0.0);
    assert_eq!(
        get(&during, "voicegate_media_routes{table=\"connections\"}"),
        1.0
    );
    assert!(!text.contains(&peer.call_id), "no call id in any label");
    assert!(!text.contains("wrtc-"));

    let long = "This is a long answer that keeps going for a while. ".repeat(4);
    app.send(json!({"type": "tts.speak", "utterance_id": "long", "text": long}));
    app.wait_type(5 * SECOND, "tts.started", Some("long"))
        .await
        .expect("tts.started");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let speech = spoken("stop talking please", Duration::from_millis(800)).await;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for (i, p) in speech.iter().enumerate() {
        tick.tick().await;
        if i == 30 {
            peer.skip_frame();
            continue;
        }
        peer.send(p.clone()).await.unwrap();
    }
    app.wait_type(3 * SECOND, "tts.interrupt", Some("long"))
        .await
        .expect("barge-in");
    app.wait_type(5 * SECOND, "asr.final", None)
        .await
        .expect("asr.final");
    // The recognizer's decoder is loaded (and stays so: the idle time is minutes).
    assert!(
        get(
            &scrape(server.http).await.1,
            "voicegate_asr_decoders_loaded"
        ) >= 1.0
    );
    assert!(app.drop_connection());
    assert!(
        eventually(5 * SECOND, || app.dials().len() == 2 && app.connected()).await,
        "redialled"
    );
    let path = format!("/webrtc/v1/hangup?call_id={}", peer.call_id);
    assert_eq!(
        http::request(server.http, "POST", &path, &[], b"")
            .await
            .unwrap()
            .status,
        204
    );
    app.wait_type(5 * SECOND, "call.ended", None)
        .await
        .expect("call.ended");
    server.wait_released(5 * SECOND).await.unwrap();
    // Codec counters are flushed when the codec stops, and driver tasks wind down after the
    // connection closes: give both a moment.
    let mut after = scrape(server.http).await.1;
    for _ in 0..50 {
        if get(&after, "voicegate_actors_live{kind=\"codec\"}") == 0.0
            && get(&after, "voicegate_media_tasks_live") == 0.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        after = scrape(server.http).await.1;
    }

    let delta = |s: &str| get(&after, s) - get(&before, s);
    assert_eq!(get(&after, "voicegate_calls_active"), 0.0);
    for kind in ["call", "codec", "speaker", "dialog", "recognizer"] {
        assert_eq!(
            get(&after, &format!("voicegate_actors_live{{kind=\"{kind}\"}}")),
            0.0,
            "{kind}"
        );
    }
    assert_eq!(get(&after, "voicegate_media_tasks_live"), 0.0);
    for table in ["connections", "ufrags", "addresses"] {
        assert_eq!(
            get(
                &after,
                &format!("voicegate_media_routes{{table=\"{table}\"}}")
            ),
            0.0
        );
    }
    assert!(delta("voicegate_media_datagrams_in_total") >= rtp_in_min(&speech));
    assert_eq!(
        delta("voicegate_calls_total{reason=\"client-hangup\"}"),
        1.0
    );
    assert_eq!(delta("voicegate_offer_answer_seconds_count"), 1.0);
    assert!(delta("voicegate_offer_answer_seconds_sum") > 0.0);
    assert_eq!(delta("voicegate_offer_connected_seconds_count"), 1.0);
    let sent = speech.len() as f64 - 1.0;
    let rtp_in = delta("voicegate_rtp_packets_in_total");
    assert!(
        rtp_in >= sent && rtp_in < sent + 5.0,
        "rtp in {rtp_in}, sent {sent}"
    );
    let heard = peer.received_count() as f64;
    let rtp_out = delta("voicegate_rtp_packets_out_total");
    assert!(
        rtp_out >= heard && rtp_out > 20.0,
        "rtp out {rtp_out}, client received {heard}"
    );
    // One lateness sample per pacer wake-up that sent (one to three frames each).
    let late = delta("voicegate_pacer_lateness_seconds_count");
    assert!(
        late >= rtp_out / 3.0 && late <= rtp_out,
        "pacer wake-ups {late}, packets out {rtp_out}"
    );
    assert_eq!(delta("voicegate_uplink_frames_lost_total"), 1.0);
    assert_eq!(
        delta("voicegate_uplink_frames_recovered_total")
            + delta("voicegate_uplink_frames_concealed_total"),
        1.0
    );
    assert_eq!(delta("voicegate_tts_first_audio_seconds_count"), 1.0);
    assert_eq!(delta("voicegate_barge_ins_total"), 1.0);
    assert!(delta("voicegate_dialog_reconnects_total") >= 1.0);
    assert_eq!(
        delta("voicegate_actor_restarts_total{child=\"codec\"}"),
        0.0
    );
    peer.close().await;
}
