//! The streaming speech engines (`tts.engine = "elevenlabs"` / `"cartesia"`) end to end: the real
//! server, a real WebRTC client peer, a test dialog app, and a local stand-in that speaks the
//! vendor's WebSocket protocol and returns PCM for the text it receives, chunk by chunk.
//!
//! Each scenario runs for both vendors: a `tts.stream` plays before its last chunk was sent; a
//! `tts.interrupt` stops the audio at once and cancels (Cartesia) or closes (ElevenLabs) the
//! vendor stream in flight; a vendor that drops the connection mid-utterance ends that utterance
//! `ok: false` and the call goes on.

mod common;

use common::{TestServer, eventually, metric, started_dialog_call};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use voicegate_core::frame::SPEECH_FRAME_SAMPLES;
use voicegate_core::listen::rms;
use voicegate_testkit::dialog_app::TestDialogApp;
use voicegate_testkit::peer::decode;
use voicegate_testkit::tts_ws_server::{Behaviour, Ending, MS_PER_CHAR, TtsWsServer, Vendor};

const SECOND: Duration = Duration::from_secs(1);

fn engine(vendor: Vendor) -> &'static str {
    match vendor {
        Vendor::ElevenLabs => "elevenlabs",
        Vendor::Cartesia => "cartesia",
    }
}

/// A server whose speech engine is `vendor`'s stand-in.
async fn setup(vendor: Vendor, behaviour: Behaviour) -> (TtsWsServer, TestDialogApp, TestServer) {
    setup_with(vendor, behaviour, &[]).await
}

/// The same, with more settings.
async fn setup_with(
    vendor: Vendor,
    behaviour: Behaviour,
    more: &[(&str, &str)],
) -> (TtsWsServer, TestDialogApp, TestServer) {
    let tts = TtsWsServer::start(vendor, behaviour).await;
    let app = TestDialogApp::start().await;
    let name = engine(vendor);
    let (url, base) = (app.url(), tts.base_url());
    let (base_key, key_key) = (
        format!("tts.{name}.base_url"),
        format!("tts.{name}.api_key"),
    );
    let mut settings = vec![
        ("dialog.url", url.as_str()),
        ("tts.engine", name),
        (&base_key, &base),
        (&key_key, "test-key-123"),
    ];
    settings.extend_from_slice(more);
    let server = TestServer::start(&settings);
    (tts, app, server)
}

/// The stand-in sends its audio at real-time pace (one 100 ms chunk every 100 ms).
fn real_time() -> Behaviour {
    Behaviour {
        chunk_gap: Duration::from_millis(100),
        ..Behaviour::default()
    }
}

/// The streams that were given text. A call also holds one connection opened ahead for its
/// next utterance ([`the_answer_takes_the_connection_opened_ahead`]), which has none.
fn spoke(tts: &TtsWsServer) -> Vec<voicegate_testkit::tts_ws_server::Stream> {
    tts.streams()
        .into_iter()
        .filter(|s| !s.messages.is_empty())
        .collect()
}

/// `tts.*` events of the call as "type id [ok]".
fn tts_log(app: &TestDialogApp) -> Vec<String> {
    app.events()
        .iter()
        .filter(|e| e["type"].as_str().is_some_and(|t| t.starts_with("tts.")))
        .map(|e: &Value| {
            let mut s = format!(
                "{} {}",
                e["type"].as_str().unwrap_or(""),
                e["utterance_id"].as_str().unwrap_or("")
            );
            if let Some(ok) = e["ok"].as_bool() {
                s.push_str(&format!(" {ok}"));
            }
            s
        })
        .collect()
}

async fn stream_plays_before_its_last_chunk(vendor: Vendor) {
    let (tts, app, server) = setup(vendor, Behaviour::default()).await;
    let peer = started_dialog_call(&server, &app).await.0;
    let first = "Hello there, this is the first part";
    let rest = [" of a streamed answer.", " And here is one more sentence."];
    let before = peer.received_count();
    let sent = Instant::now();
    assert!(app.send(json!({"type": "tts.stream", "utterance_id": "s", "text": first})));
    // The last chunk waits until the caller hears the first one (the stand-in's tone).
    let loud = |rx: &[voicegate_testkit::Received]| {
        decode(rx)
            .chunks(SPEECH_FRAME_SAMPLES)
            .position(|f| rms(f) > 200.0)
    };
    assert!(
        eventually(5 * SECOND, || loud(&peer.received()[before..]).is_some()).await,
        "no audio before the stream's last chunk"
    );
    let rx = peer.received();
    let first_loud = before + loud(&rx[before..]).expect("found above");
    let first_audio = rx[first_loud].at.saturating_duration_since(sent);
    finish_stream(&app, &rest, 10 * SECOND).await;
    assert_eq!(tts_log(&app), ["tts.started s", "tts.ended s true"]);

    // The vendor got the whole text on one connection, segment by segment, each flushed as it
    // came, and the stream ended normally.
    let streams = spoke(&tts);
    assert_eq!(
        streams.len(),
        1,
        "one stream for the utterance: {streams:?}"
    );
    let s = &streams[0];
    assert_eq!(s.ending, Ending::Done, "{s:?}");
    let whole = format!("{first}{}{}", rest[0], rest[1]);
    let words = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
    assert_eq!(words(&s.text), whole);
    let flushes = s.messages.iter().filter(|m| m["flush"] == true).count();
    assert!(flushes >= 2, "each segment is flushed: {:?}", s.messages);
    match vendor {
        Vendor::ElevenLabs => {
            assert!(s.uri.contains("/stream-input?"), "{}", s.uri);
            assert!(s.uri.contains("output_format=pcm_16000"), "{}", s.uri);
            assert!(s.uri.contains("sync_alignment=true"), "{}", s.uri);
            assert!(
                s.headers
                    .contains(&("xi-api-key".into(), "test-key-123".into()))
            );
            assert_eq!(s.messages[0]["text"], " ", "the opening message");
            assert_eq!(
                s.messages.last().unwrap()["text"],
                "",
                "the end of the input"
            );
        }
        Vendor::Cartesia => {
            assert_eq!(s.uri, "/tts/websocket");
            assert!(
                s.headers
                    .contains(&("x-api-key".into(), "test-key-123".into()))
            );
            assert!(s.headers.iter().any(|(k, _)| k == "cartesia-version"));
            let m = &s.messages[0];
            assert_eq!(m["output_format"]["encoding"], "pcm_s16le");
            assert_eq!(m["continue"], true, "more text follows on the context");
            assert!(m["context_id"].as_str().is_some_and(|c| !c.is_empty()));
            assert_eq!(s.messages.last().unwrap()["continue"], false);
        }
    }
    let heard = [s.text.trim().to_owned()];
    // The audio the vendor sent reached the client: 30 ms per character, give or take padding.
    let chars: usize = s
        .messages
        .iter()
        .filter_map(|m| m["text"].as_str().or(m["transcript"].as_str()))
        .map(|t| t.trim().chars().count())
        .sum();
    let _ = heard;
    let want = chars * 30 / 20;
    assert!(
        eventually(2 * SECOND, || peer.received_count() >= want).await,
        "{} packets for {want} frames of audio",
        peer.received_count()
    );
    println!(
        "{}: first audio {} ms after the stream's first chunk",
        engine(vendor),
        first_audio.as_millis()
    );
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elevenlabs_stream_plays_before_its_last_chunk() {
    stream_plays_before_its_last_chunk(Vendor::ElevenLabs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cartesia_stream_plays_before_its_last_chunk() {
    stream_plays_before_its_last_chunk(Vendor::Cartesia).await;
}

/// Sends the rest of stream `s` (`chunks`, then its end) and waits `within` for its
/// `tts.ended`, which must be `ok`.
async fn finish_stream(app: &TestDialogApp, chunks: &[&str], within: Duration) -> Value {
    for text in chunks {
        assert!(app.send(json!({"type": "tts.stream", "utterance_id": "s", "text": text})));
    }
    assert!(app.send(json!({"type": "tts.stream.end", "utterance_id": "s"})));
    let ended = app
        .wait_type(within, "tts.ended", Some("s"))
        .await
        .expect("the stream ends");
    assert_eq!(ended["ok"], true, "{ended}");
    ended
}

async fn interrupt_stops_audio_and_the_vendor_stream(vendor: Vendor) {
    // A synthesis is still in flight when the interrupt comes.
    let (tts, app, server) = setup(vendor, real_time()).await;
    let peer = started_dialog_call(&server, &app).await.0;
    let long = "This is a long answer that keeps going for a while. ".repeat(6);
    assert!(app.send(json!({"type": "tts.stream", "utterance_id": "long", "text": long})));
    assert!(app.send(json!({"type": "tts.stream.end", "utterance_id": "long"})));
    app.wait_type(5 * SECOND, "tts.started", Some("long"))
        .await
        .expect("started");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent_at = Instant::now();
    assert!(app.send(json!({"type": "tts.interrupt"})));
    let ended = app
        .wait_type(5 * SECOND, "tts.ended", Some("long"))
        .await
        .expect("ended");
    assert_eq!(ended["ok"], false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let last = peer.received().iter().map(|p| p.at).max().unwrap();
    let after = last.saturating_duration_since(sent_at);
    assert!(
        after <= Duration::from_millis(60),
        "audio went on {after:?} after the interrupt"
    );
    // The vendor saw the stream in flight stop: a cancel for its context (Cartesia), or the
    // socket closed before the end (ElevenLabs).
    let want = match vendor {
        Vendor::ElevenLabs => Ending::ClosedEarly,
        Vendor::Cartesia => Ending::Cancelled,
    };
    assert!(
        eventually(2 * SECOND, || tts
            .streams()
            .iter()
            .any(|s| s.ending == want))
        .await,
        "{:?}",
        tts.streams()
    );
    assert!(
        spoke(&tts).iter().all(|s| s.ending != Ending::Open),
        "nothing that spoke is left open: {:?}",
        tts.streams()
    );
    println!(
        "{}: interrupt to last packet at the client {} ms",
        engine(vendor),
        after.as_millis()
    );
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elevenlabs_interrupt_stops_audio_and_closes_the_vendor_stream() {
    interrupt_stops_audio_and_the_vendor_stream(Vendor::ElevenLabs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cartesia_interrupt_stops_audio_and_cancels_the_vendor_context() {
    interrupt_stops_audio_and_the_vendor_stream(Vendor::Cartesia).await;
}

/// A segment whose vendor audio runs past `tts.max_segment_audio_ms` is cut there: the
/// vendor's stream stops (Cartesia's context cancelled, ElevenLabs' socket closed), the
/// utterance ends `ok: false` with `reason: "audio-too-long"`, counted, and the next one plays.
async fn a_segment_over_the_audio_bound_is_cut_at_the_vendor(vendor: Vendor) {
    const CUT: &str = r#"voicegate_limit_hits_total{limit="tts_segment_audio"}"#;
    let (tts, app, server) =
        setup_with(vendor, real_time(), &[("tts.max_segment_audio_ms", "1000")]).await;
    let peer = started_dialog_call(&server, &app).await.0;
    let cut = metric(&server, CUT).await;
    // One sentence of 120 characters: 3.6 s of the stand-in's audio, in one segment.
    let long = format!("{} end.", "word ".repeat(23));
    assert!(app.send(json!({"type": "tts.speak", "utterance_id": "long", "text": long})));
    let ended = app
        .wait_type(5 * SECOND, "tts.ended", Some("long"))
        .await
        .expect("ended at the bound");
    assert_eq!(ended["ok"], false, "{ended}");
    assert_eq!(ended["reason"], "audio-too-long", "{ended}");
    let want = match vendor {
        Vendor::ElevenLabs => Ending::ClosedEarly,
        Vendor::Cartesia => Ending::Cancelled,
    };
    assert!(
        eventually(2 * SECOND, || spoke(&tts)
            .first()
            .is_some_and(|s| s.ending == want))
        .await,
        "the vendor's stream stopped: {:?}",
        tts.streams()
    );
    assert!(metric(&server, CUT).await - cut >= 1.0);
    assert!(app.send(json!({"type": "tts.speak", "utterance_id": "next", "text": "Fine."})));
    let next = app
        .wait_type(5 * SECOND, "tts.ended", Some("next"))
        .await
        .expect("the next one");
    assert_eq!(next["ok"], true, "{next}");
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elevenlabs_a_segment_over_the_audio_bound_is_cut_at_the_vendor() {
    a_segment_over_the_audio_bound_is_cut_at_the_vendor(Vendor::ElevenLabs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cartesia_a_segment_over_the_audio_bound_is_cut_at_the_vendor() {
    a_segment_over_the_audio_bound_is_cut_at_the_vendor(Vendor::Cartesia).await;
}

async fn a_dropped_connection_fails_one_utterance(vendor: Vendor) {
    let (tts, app, server) = setup(
        vendor,
        Behaviour {
            drop_first_after: Some(2),
            ..Behaviour::default()
        },
    )
    .await;
    let peer = started_dialog_call(&server, &app).await.0;
    assert!(app.send(
        json!({"type": "tts.speak", "utterance_id": "a", "text": "The vendor drops this one."})
    ));
    let ended = app
        .wait_type(5 * SECOND, "tts.ended", Some("a"))
        .await
        .expect("ended");
    assert_eq!(ended["ok"], false, "{ended}");
    let a = spoke(&tts)
        .into_iter()
        .find(|s| s.text.contains("drops this one"))
        .expect("the stream that spoke it");
    assert_eq!(a.ending, Ending::Dropped, "{a:?}");
    assert!(app.send(json!({"type": "tts.speak", "utterance_id": "b", "text": "This one plays."})));
    let ended = app
        .wait_type(5 * SECOND, "tts.ended", Some("b"))
        .await
        .expect("ended");
    assert_eq!(ended["ok"], true, "{ended}");
    assert_eq!(server.snapshot().await.calls.len(), 1, "the call goes on");
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elevenlabs_dropped_connection_fails_one_utterance_and_the_call_goes_on() {
    a_dropped_connection_fails_one_utterance(Vendor::ElevenLabs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cartesia_dropped_connection_fails_one_utterance_and_the_call_goes_on() {
    a_dropped_connection_fails_one_utterance(Vendor::Cartesia).await;
}

/// The caller barges in on the second segment of an utterance spoken in one vendor stream: the
/// audio was cut into segments where the vendor said (Cartesia's `flush_done`, ElevenLabs'
/// alignment), so `tts.interrupt` reports the first segment complete, at its length, and the
/// second in progress.
async fn barge_in_reports_each_segment_of_one_stream(vendor: Vendor) {
    // The second segment is still arriving when the caller speaks.
    let (tts, app, server) = setup(vendor, real_time()).await;
    let peer = started_dialog_call(&server, &app).await.0;
    // 24 characters: 720 ms of the stand-in's audio.
    let first = "First sentence is short.";
    let second = "The second sentence is a good deal longer, it goes on for a while.";
    let text = format!("{first} {second}");
    assert!(app.send(json!({"type": "tts.speak", "utterance_id": "u", "text": text})));
    app.wait_type(5 * SECOND, "tts.started", Some("u"))
        .await
        .expect("started");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let speech = common::spoken("stop talking please", Duration::from_millis(1000)).await;
    peer.send_paced(&speech).await.unwrap();
    let interrupt = app
        .wait_type(4 * SECOND, "tts.interrupt", Some("u"))
        .await
        .expect("tts.interrupt");
    let segments = interrupt["played_segments"].as_array().expect("segments");
    assert_eq!(segments.len(), 2, "{interrupt}");
    assert_eq!(segments[0]["text"], first, "{interrupt}");
    assert_eq!(segments[0]["complete"], true, "{interrupt}");
    let first_ms = segments[0]["played_ms"].as_i64().unwrap();
    assert!(
        (first_ms - 720).abs() <= 40,
        "the first segment is its own audio: {first_ms} ms of 720"
    );
    assert_eq!(segments[1]["text"], second, "{interrupt}");
    assert_eq!(segments[1]["complete"], false, "{interrupt}");
    assert!(
        segments[1]["played_ms"].as_i64().unwrap() > 0,
        "{interrupt}"
    );
    // One vendor stream spoke both, and it was stopped. (The caller's words were a turn, so
    // another connection may have been opened ahead for the answer; it has no text.)
    // (The stand-in lists streams as their upgrades complete, so the one opened ahead may come
    // first.)
    let streams = tts.streams();
    assert_eq!(spoke(&tts).len(), 1, "{streams:?}");
    let i = streams
        .iter()
        .position(|s| !s.messages.is_empty())
        .expect("the stream that spoke");
    assert!(
        eventually(2 * SECOND, || tts.streams()[i].ending != Ending::Open).await,
        "{:?}",
        tts.streams()
    );
    println!(
        "{}: barge-in on the second segment: {interrupt}",
        engine(vendor)
    );
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elevenlabs_barge_in_reports_each_segment_of_one_stream() {
    barge_in_reports_each_segment_of_one_stream(Vendor::ElevenLabs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cartesia_barge_in_reports_each_segment_of_one_stream() {
    barge_in_reports_each_segment_of_one_stream(Vendor::Cartesia).await;
}

/// A stream that pauses longer than a Cartesia context lives (a second after its last audio):
/// the idle context is ended and the rest is spoken in a new one, on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cartesia_a_long_pause_in_a_stream_starts_a_new_context() {
    let (tts, app, server) = setup(Vendor::Cartesia, Behaviour::default()).await;
    let peer = started_dialog_call(&server, &app).await.0;
    assert!(app.send(json!({"type": "tts.stream", "utterance_id": "s", "text": "Let me think. "})));
    app.wait_type(5 * SECOND, "tts.started", Some("s"))
        .await
        .expect("started");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    finish_stream(&app, &["Here it is."], 5 * SECOND).await;
    let streams = spoke(&tts);
    assert_eq!(streams.len(), 1, "{streams:?}");
    let m = &streams[0].messages;
    let contexts: Vec<&str> = m.iter().filter_map(|m| m["context_id"].as_str()).collect();
    let first = contexts[0];
    let second = *contexts.last().unwrap();
    assert_ne!(first, second, "{m:?}");
    // The first context was ended with `continue: false` before the second began.
    let end_of_first = m
        .iter()
        .position(|m| m["context_id"] == first && m["continue"] == false)
        .expect("the first context is ended");
    let start_of_second = m.iter().position(|m| m["context_id"] == second).unwrap();
    assert!(end_of_first < start_of_second, "{m:?}");
    assert_eq!(streams[0].ending, Ending::Done);
    peer.close().await;
}

/// A vendor that marks no segment's end (no `flush_done`, no alignment): a one-segment utterance
/// still ends, and at once, because voicegate ends the input as soon as the utterance's last
/// segment was asked for, and the vendor's end marker closes it.
async fn an_unmarked_last_segment_ends_with_the_stream(vendor: Vendor) {
    let (tts, app, server) = setup(
        vendor,
        Behaviour {
            no_segment_marks: true,
            ..Behaviour::default()
        },
    )
    .await;
    let peer = started_dialog_call(&server, &app).await.0;
    assert!(
        app.send(json!({"type": "tts.speak", "utterance_id": "u", "text": "Just one sentence."}))
    );
    let ended = app
        .wait_type(5 * SECOND, "tts.ended", Some("u"))
        .await
        .expect("ended");
    assert_eq!(ended["ok"], true, "{ended}");
    let streams = spoke(&tts);
    assert_eq!(streams.len(), 1, "{streams:?}");
    assert_eq!(streams[0].ending, Ending::Done);
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elevenlabs_an_unmarked_last_segment_ends_with_the_stream() {
    an_unmarked_last_segment_ends_with_the_stream(Vendor::ElevenLabs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cartesia_an_unmarked_last_segment_ends_with_the_stream() {
    an_unmarked_last_segment_ends_with_the_stream(Vendor::Cartesia).await;
}

/// The end of an utterance's last word is heard. ElevenLabs places each character where it
/// starts, so the chunks after the one in which a segment's last letter starts (the rest of that
/// sound, the trailing punctuation) still belong to that segment, even when no segment follows:
/// the stand-in speaks "abcd." as 150 ms of tone, a 100 ms chunk ("a b c d") and a 50 ms one
/// ("."), and all 150 ms are played.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elevenlabs_the_audio_after_the_last_letter_is_played() {
    let (tts, app, server) = setup(Vendor::ElevenLabs, Behaviour::default()).await;
    let peer = started_dialog_call(&server, &app).await.0;
    let text = "abcd.";
    let before = peer.received_count();
    assert!(app.send(json!({"type": "tts.speak", "utterance_id": "u", "text": text})));
    let ended = app
        .wait_type(5 * SECOND, "tts.ended", Some("u"))
        .await
        .expect("ended");
    assert_eq!(ended["ok"], true, "{ended}");
    let streams = spoke(&tts);
    assert_eq!(streams.len(), 1, "{streams:?}");
    assert_eq!(streams[0].chunks_sent, 2, "{streams:?}");
    // Silence is not sent: one packet per 20 ms frame of the utterance, the last one padded.
    let ms = text.chars().count() * MS_PER_CHAR;
    let want = ms.div_ceil(20);
    let played = || peer.received_count() - before;
    assert!(
        eventually(2 * SECOND, || played() >= want).await,
        "{} packets for {ms} ms of audio ({want} frames)",
        played()
    );
    assert_eq!(played(), want, "{ms} ms of audio");
    peer.close().await;
}

/// A streamed segment whose text was all spoken ends when ElevenLabs goes quiet, though no later
/// segment's audio has come to mark its end: with one segment of prefetch, the next segment is
/// only sent once it has ended, so waiting for that would stall the utterance until the idle
/// limit failed it. Every segment's audio is played, the end of each last word included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elevenlabs_a_streamed_segment_ends_without_the_next_one() {
    let (tts, app, server) = setup_with(
        Vendor::ElevenLabs,
        Behaviour::default(),
        &[
            ("tts.prefetch_segments", "1"),
            ("tts.stream_idle_timeout_ms", "3000"),
        ],
    )
    .await;
    let peer = started_dialog_call(&server, &app).await.0;
    let before = peer.received_count();
    let sent = Instant::now();
    let chunks = ["First one here.", " And the second."];
    finish_stream(&app, &chunks, 5 * SECOND).await;
    assert!(
        sent.elapsed() < 3 * SECOND,
        "ended {} ms after the text: it waited for the idle limit",
        sent.elapsed().as_millis()
    );
    let streams = spoke(&tts);
    assert_eq!(streams.len(), 1, "{streams:?}");
    assert_eq!(streams[0].ending, Ending::Done, "{streams:?}");
    // Each segment's audio, its last frame padded.
    let want: usize = chunks
        .iter()
        .map(|t| (t.trim().chars().count() * MS_PER_CHAR).div_ceil(20))
        .sum();
    let played = || peer.received_count() - before;
    assert!(
        eventually(2 * SECOND, || played() >= want).await,
        "{} packets for {want} frames",
        played()
    );
    assert_eq!(played(), want);
    peer.close().await;
}

const PRECONNECTS_USED: &str = r#"voicegate_tts_preconnects_total{outcome="used"}"#;
const PRECONNECTS_UNUSED: &str = r#"voicegate_tts_preconnects_total{outcome="unused"}"#;
const PRECONNECTS_FAILED: &str = r#"voicegate_tts_preconnects_total{outcome="failed"}"#;

/// The call opens its vendor connection when its media connects, so the greeting does not wait
/// for the vendor's handshake (300 ms here); the greeting's stream opens the next one, which the
/// answer after the caller's turn takes.
async fn the_answer_takes_the_connection_opened_ahead(vendor: Vendor) {
    let handshake = Duration::from_millis(300);
    // The vendor pings each connection first: a keep-alive leaves it usable.
    let (tts, app, server) = setup(
        vendor,
        Behaviour {
            handshake_delay: handshake,
            ping_first: true,
            ..Behaviour::default()
        },
    )
    .await;
    let used = metric(&server, PRECONNECTS_USED).await;
    let peer = started_dialog_call(&server, &app).await.0;
    assert!(
        eventually(3 * SECOND, || tts.streams().len() == 1).await,
        "a connection opened once media connected: {:?}",
        tts.streams()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = Instant::now();
    assert!(app.send(
        json!({"type": "tts.speak", "utterance_id": "hi", "text": "Hello, how can I help?"})
    ));
    let ended = app
        .wait_type(10 * SECOND, "tts.ended", Some("hi"))
        .await
        .expect("the greeting ends");
    assert_eq!(ended["ok"], true, "{ended}");
    // It spoke the greeting; the greeting's stream opened the next one ahead.
    let streams = tts.streams();
    assert_eq!(spoke(&tts).len(), 1, "{streams:?}");
    let s = &streams[0];
    assert!(s.opened < sent, "opened before the greeting was asked for");
    let first = s.first_message.expect("the greeting's text");
    assert!(first >= sent, "its first text came with the greeting");
    // Once the speech starts the greeting needs no handshake: its text leaves at once.
    assert!(
        first.duration_since(sent) < handshake,
        "the text waited {:?} for a connection",
        first.duration_since(sent)
    );
    assert_eq!(s.ending, Ending::Done, "{s:?}");
    assert!(metric(&server, PRECONNECTS_USED).await - used >= 1.0);

    assert!(
        eventually(3 * SECOND, || tts.streams().len() == 2).await,
        "one opened for the next utterance: {:?}",
        tts.streams()
    );

    // The caller takes a turn; the answer takes the connection waiting, without a handshake.
    peer.send_paced(&common::spoken("hello there", Duration::from_millis(800)).await)
        .await
        .unwrap();
    app.wait_type(5 * SECOND, "asr.final", None)
        .await
        .expect("asr.final");
    let sent = Instant::now();
    assert!(app.send(json!({"type": "tts.speak", "utterance_id": "a", "text": "Sure."})));
    let ended = app
        .wait_type(10 * SECOND, "tts.ended", Some("a"))
        .await
        .expect("the answer ends");
    assert_eq!(ended["ok"], true, "{ended}");
    let streams = tts.streams();
    assert_eq!(spoke(&tts).len(), 2, "{streams:?}");
    let s = &streams[1];
    assert!(s.opened < sent && s.first_message.expect("the answer") >= sent);
    assert!(s.first_message.unwrap().duration_since(sent) < handshake);
    assert_eq!(s.ending, Ending::Done, "{streams:?}");
    assert!(metric(&server, PRECONNECTS_USED).await - used >= 2.0);
    // At most one waits for the next utterance; it closes with the call.
    assert!(
        eventually(3 * SECOND, || tts
            .streams()
            .iter()
            .filter(|s| s.ending == Ending::Open)
            .count()
            == 1)
        .await,
        "{:?}",
        tts.streams()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        tts.streams()
            .iter()
            .filter(|s| s.ending == Ending::Open)
            .count(),
        1
    );
    // The caller's speech started and ended while the greeting's spare was young: it was kept,
    // not replaced, so three connections in all (greeting, answer, the next spare).
    assert_eq!(tts.streams().len(), 3, "{:?}", tts.streams());
    peer.close().await;
    assert!(
        eventually(5 * SECOND, || tts
            .streams()
            .iter()
            .all(|s| s.ending != Ending::Open))
        .await,
        "closed with the call: {:?}",
        tts.streams()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elevenlabs_the_answer_takes_the_connection_opened_ahead() {
    the_answer_takes_the_connection_opened_ahead(Vendor::ElevenLabs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cartesia_the_answer_takes_the_connection_opened_ahead() {
    the_answer_takes_the_connection_opened_ahead(Vendor::Cartesia).await;
}

/// A connection opened ahead that no utterance takes within `tts.preconnect_ms` is closed, and
/// the next utterance connects as usual; with 0 none is opened.
async fn an_unused_connection_is_closed(vendor: Vendor) {
    let (tts, app, server) = setup_with(
        vendor,
        Behaviour::default(),
        &[("tts.preconnect_ms", "300")],
    )
    .await;
    let unused = metric(&server, PRECONNECTS_UNUSED).await;
    let peer = started_dialog_call(&server, &app).await.0;
    assert!(
        eventually(3 * SECOND, || tts
            .streams()
            .first()
            .is_some_and(|s| s.ending == Ending::ClosedEarly))
        .await,
        "closed unused: {:?}",
        tts.streams()
    );
    assert!(tts.streams()[0].messages.is_empty());
    assert!(metric(&server, PRECONNECTS_UNUSED).await - unused >= 1.0);
    assert!(app.send(json!({"type": "tts.speak", "utterance_id": "u", "text": "Still here."})));
    let ended = app
        .wait_type(10 * SECOND, "tts.ended", Some("u"))
        .await
        .expect("ended");
    assert_eq!(ended["ok"], true, "{ended}");
    assert_eq!(spoke(&tts).len(), 1, "{:?}", tts.streams());
    peer.close().await;

    let (tts, app, server) =
        setup_with(vendor, Behaviour::default(), &[("tts.preconnect_ms", "0")]).await;
    let peer = started_dialog_call(&server, &app).await.0;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        tts.streams().is_empty(),
        "none opened ahead: {:?}",
        tts.streams()
    );
    assert!(app.send(json!({"type": "tts.speak", "utterance_id": "u", "text": "Still here."})));
    let ended = app
        .wait_type(10 * SECOND, "tts.ended", Some("u"))
        .await
        .expect("ended");
    assert_eq!(ended["ok"], true, "{ended}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        tts.streams().len(),
        1,
        "none opened ahead: {:?}",
        tts.streams()
    );
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elevenlabs_an_unused_connection_opened_ahead_is_closed() {
    an_unused_connection_is_closed(Vendor::ElevenLabs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cartesia_an_unused_connection_opened_ahead_is_closed() {
    an_unused_connection_is_closed(Vendor::Cartesia).await;
}

/// Asks for an utterance that cannot be spoken and waits for its `tts.ended`, `ok: false`.
async fn speak_and_fail(app: &TestDialogApp) {
    assert!(
        app.send(json!({"type": "tts.speak", "utterance_id": "u", "text": "Nobody hears this."}))
    );
    let ended = app
        .wait_type(10 * SECOND, "tts.ended", Some("u"))
        .await
        .expect("ended");
    assert_eq!(ended["ok"], false, "{ended}");
}

/// A vendor that never answers: the connection opened ahead fails at its deadline (counted), the
/// utterance tries on its own and fails, and the call goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_opened_ahead_that_fails_costs_nothing_more() {
    // A vendor that takes the TCP connection and never answers the upgrade (the listener is
    // held, never accepted from): every connection times out.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let app = TestDialogApp::start().await;
    let (url, base) = (app.url(), format!("ws://{}", silent.local_addr().unwrap()));
    let server = TestServer::start(&[
        ("dialog.url", url.as_str()),
        ("tts.engine", "cartesia"),
        ("tts.cartesia.base_url", base.as_str()),
        ("tts.cartesia.timeout_ms", "300"),
    ]);
    let failed = metric(&server, PRECONNECTS_FAILED).await;
    let peer = started_dialog_call(&server, &app).await.0;
    let mut counted = false;
    for _ in 0..250 {
        if metric(&server, PRECONNECTS_FAILED).await - failed >= 1.0 {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(counted, "the failed connection is counted");
    speak_and_fail(&app).await;
    assert_eq!(server.snapshot().await.calls.len(), 1, "the call goes on");
    peer.close().await;
    drop(silent);
}

/// An utterance that waits for a connection still being opened ahead, which then fails, waits at
/// most the engine's `timeout_ms` in all: its own attempt gets only the time left, not a second
/// full timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_failing_connection_opened_ahead_stays_within_the_timeout() {
    const TIMEOUT: Duration = Duration::from_millis(1500);
    // A vendor that accepts the TCP connection and never answers the upgrade; it notes when
    // each connection came.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("ws://{}", silent.local_addr().unwrap());
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let vendor = tokio::spawn({
        let accepted = accepted.clone();
        async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                accepted.lock().unwrap().push(Instant::now());
                held.push(socket);
            }
        }
    });
    let app = TestDialogApp::start().await;
    let url = app.url();
    let timeout_ms = TIMEOUT.as_millis().to_string();
    let server = TestServer::start(&[
        ("dialog.url", url.as_str()),
        ("tts.engine", "elevenlabs"),
        ("tts.elevenlabs.base_url", base.as_str()),
        ("tts.elevenlabs.timeout_ms", timeout_ms.as_str()),
    ]);
    let peer = started_dialog_call(&server, &app).await.0;
    // The connection opened when the media connected is in its handshake (it never ends).
    assert!(
        eventually(5 * SECOND, || !accepted.lock().unwrap().is_empty()).await,
        "a connection was opened ahead"
    );
    let opened = accepted.lock().unwrap()[0];
    assert!(opened.elapsed() < TIMEOUT / 2, "still connecting");
    speak_and_fail(&app).await;
    let waited = opened.elapsed();
    // At the connection's own deadline, plus scheduling: well under a second full timeout.
    assert!(
        waited < TIMEOUT * 3 / 2,
        "the utterance ended {waited:?} after its connection was opened, timeout {TIMEOUT:?}"
    );
    assert_eq!(server.snapshot().await.calls.len(), 1, "the call goes on");
    peer.close().await;
    vendor.abort();
}

/// A stand-in over TLS whose certificate a test CA issued, the CA's PEM file, and the directory
/// that holds it (removed by the caller).
async fn tls_stand_in(vendor: Vendor) -> (TtsWsServer, std::path::PathBuf, std::path::PathBuf) {
    let ca = voicegate_testkit::tls::TestCa::new();
    // A directory of its own: tests run side by side, each with its own CA.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "vg-vendor-ca-{}-{}-{n}",
        std::process::id(),
        engine(vendor)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let pem = dir.join("ca.pem");
    std::fs::write(&pem, &ca.ca_pem).unwrap();
    let tts = TtsWsServer::start_tls(vendor, Behaviour::default(), ca.server.clone()).await;
    (tts, pem, dir)
}

/// Over TLS, against a server that offers HTTP/2 as the vendors' servers do: the engine upgrades
/// over HTTP/1.1, trusts the private CA in `vendor_tls.ca_file` (and only it, with
/// `public_roots = false`), and a later connection resumes the TLS session of an earlier one.
async fn speaks_over_tls_with_a_private_ca(vendor: Vendor) {
    let (tts, pem, dir) = tls_stand_in(vendor).await;
    let app = TestDialogApp::start().await;
    let name = engine(vendor);
    let (url, base, ca) = (app.url(), tts.base_url(), pem.to_str().unwrap().to_owned());
    assert!(base.starts_with("wss://"), "{base}");
    let base_key = format!("tts.{name}.base_url");
    let server = TestServer::start(&[
        ("dialog.url", url.as_str()),
        ("tts.engine", name),
        (&base_key, &base),
        ("vendor_tls.ca_file", &ca),
        ("vendor_tls.public_roots", "false"),
    ]);
    let peer = started_dialog_call(&server, &app).await.0;
    for id in ["one", "two"] {
        assert!(
            app.send(json!({"type": "tts.speak", "utterance_id": id, "text": "Hello over TLS."}))
        );
        let ended = app
            .wait_type(10 * SECOND, "tts.ended", Some(id))
            .await
            .expect("the utterance ends");
        assert_eq!(ended["ok"], true, "{id}: {ended}");
    }
    let streams = tts.streams();
    assert_eq!(spoke(&tts).len(), 2, "{streams:?}");
    assert!(
        spoke(&tts).iter().all(|s| s.ending == Ending::Done),
        "{streams:?}"
    );
    // In the order they were opened (the list has them as their upgrades completed).
    let mut by_opening = streams.clone();
    by_opening.sort_by_key(|s| s.opened);
    let resumed: Vec<_> = by_opening.iter().map(|s| s.tls_resumed).collect();
    assert_eq!(resumed[0], Some(false), "the first is a full handshake");
    // One opened while the first was still in its handshake cannot resume (no ticket yet); the
    // one the second utterance opened ahead came long after.
    assert_eq!(
        resumed.last().copied().flatten(),
        Some(true),
        "a later connection resumes: {resumed:?}"
    );
    peer.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elevenlabs_speaks_over_tls_with_a_private_ca() {
    speaks_over_tls_with_a_private_ca(Vendor::ElevenLabs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cartesia_speaks_over_tls_with_a_private_ca() {
    speaks_over_tls_with_a_private_ca(Vendor::Cartesia).await;
}

/// The vendor's certificate is checked: one from a CA that is not trusted (the default, public
/// roots only) fails the utterance, and the call goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_certificate_from_an_untrusted_ca_fails_the_utterance() {
    let (tts, _pem, dir) = tls_stand_in(Vendor::Cartesia).await;
    let app = TestDialogApp::start().await;
    let (url, base) = (app.url(), tts.base_url());
    let server = TestServer::start(&[
        ("dialog.url", url.as_str()),
        ("tts.engine", "cartesia"),
        ("tts.cartesia.base_url", base.as_str()),
    ]);
    let peer = started_dialog_call(&server, &app).await.0;
    speak_and_fail(&app).await;
    assert!(tts.streams().is_empty(), "no handshake completed");
    assert_eq!(server.snapshot().await.calls.len(), 1, "the call goes on");
    peer.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A vendor whose generation is stuck while its connection keeps pinging: the pings are not
/// its answer, so the utterance still ends at `tts.stream_idle_timeout_ms` (they kept it alive
/// for ever).
async fn pings_do_not_keep_a_stalled_synthesis_alive(vendor: Vendor) {
    let (_tts, app, server) = setup_with(
        vendor,
        Behaviour {
            stall_with_pings: Some(Duration::from_millis(200)),
            ..Behaviour::default()
        },
        &[("tts.stream_idle_timeout_ms", "1000")],
    )
    .await;
    let peer = started_dialog_call(&server, &app).await.0;
    let sent = Instant::now();
    assert!(
        app.send(json!({"type": "tts.speak", "utterance_id": "stuck", "text": "Hello there."}))
    );
    let ended = app
        .wait_type(5 * SECOND, "tts.ended", Some("stuck"))
        .await
        .expect("the stalled utterance ends");
    assert_eq!(ended["ok"], false, "{ended}");
    assert!(
        sent.elapsed() < 3 * SECOND,
        "ended {} ms after the text",
        sent.elapsed().as_millis()
    );
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elevenlabs_pings_do_not_keep_a_stalled_synthesis_alive() {
    pings_do_not_keep_a_stalled_synthesis_alive(Vendor::ElevenLabs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cartesia_pings_do_not_keep_a_stalled_synthesis_alive() {
    pings_do_not_keep_a_stalled_synthesis_alive(Vendor::Cartesia).await;
}
