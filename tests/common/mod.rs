//! The real service on free ports, in a thread of its own, for integration tests.

#![allow(dead_code)]

use actix::Addr;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use voicegate::server;
use voicegate::settings::Settings;
use voicegate_actors::supervisor::{GetSnapshot, Snapshot, Supervisor};
use voicegate_media::MediaPlane;

/// A running voicegate.
pub struct TestServer {
    /// HTTP address.
    pub http: SocketAddr,
    /// Media socket address.
    pub media: SocketAddr,
    /// The supervisor, to inspect the registry.
    pub supervisor: Addr<Supervisor>,
    /// The media plane, to inspect the shared port's routes.
    pub plane: Arc<MediaPlane>,
    /// The embedded demo app's URL, with its key.
    pub demo_url: String,
    system: actix::System,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    /// Starts with the defaults plus `overrides` (dotted keys), on 127.0.0.1 and free ports.
    pub fn start(overrides: &[(&str, &str)]) -> TestServer {
        let env: HashMap<String, String> = [
            ("http.bind", "127.0.0.1:0"),
            ("media.bind_ip", "127.0.0.1"),
            ("media.udp_port", "0"),
            ("media.workers", "2"),
            // One decoder is enough for a test, and each costs memory and startup time.
            ("asr.pocketsphinx.decoders", "1"),
            // Every test call comes from 127.0.0.1: per-source admission would count them all
            // as one caller. The admission tests turn it back on.
            ("admission.offers_per_ip_per_s", "0"),
            ("admission.calls_per_ip", "0"),
            ("log.filter", "warn"),
        ]
        .iter()
        .chain(overrides.iter())
        .map(|(k, v)| {
            (
                format!("VOICEGATE__{}", k.to_uppercase().replace('.', "__")),
                v.to_string(),
            )
        })
        .collect();
        let cfg = Settings::load_with_env(None, Some(env))
            .expect("test settings load")
            .validate()
            .expect("test settings are valid");
        init_logs();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let system = actix::System::new();
            system.block_on(async move {
                let running = server::start(&cfg).expect("test server starts");
                tx.send((
                    running.http_addr,
                    running.media_addr,
                    running.supervisor.clone(),
                    running.plane.clone(),
                    running.demo_url.to_string(),
                    actix::System::current(),
                ))
                .expect("test is waiting");
                actix::spawn(running.server);
            });
            // Runs until the test's drop stops the system.
            let _ = system.run();
        });
        let (http, media, supervisor, plane, demo_url, system) =
            rx.recv().expect("server thread reports its addresses");
        TestServer {
            http,
            media,
            supervisor,
            plane,
            demo_url,
            system,
            thread: Some(thread),
        }
    }

    /// What the supervisor holds now.
    pub async fn snapshot(&self) -> Snapshot {
        self.supervisor
            .send(GetSnapshot)
            .await
            .expect("supervisor alive")
    }

    /// Waits until no call is registered and no route is left on the shared port.
    pub async fn wait_released(&self, within: Duration) -> Result<Duration, String> {
        let t0 = Instant::now();
        loop {
            let snap = self.snapshot().await;
            let tables = self.plane.mux().tables();
            if snap.calls.is_empty()
                && tables.conns == 0
                && tables.ufrags == 0
                && tables.addrs == 0
                && tables.transactions == 0
            {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > within {
                return Err(format!(
                    "not released after {within:?}: calls {:?}, routes {tables:?}",
                    snap.calls
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until exactly `n` calls are registered.
    pub async fn wait_until_calls(&self, n: usize, within: Duration) {
        let t0 = Instant::now();
        while self.snapshot().await.calls.len() != n {
            assert!(
                t0.elapsed() < within,
                "still {} calls",
                self.snapshot().await.calls.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The end reason recorded for `call_id`, waiting for it to end.
    pub async fn end_reason(&self, call_id: &str, within: Duration) -> Option<String> {
        let t0 = Instant::now();
        while t0.elapsed() < within {
            let snap = self.snapshot().await;
            if let Some((_, r)) = snap
                .recent_ends
                .iter()
                .find(|(id, _)| id.as_str() == call_id)
            {
                return Some(r.clone());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.system.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn init_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    });
}

/// A series' value in the server's `/metrics` (process-wide: other tests' calls move it too).
pub async fn metric(server: &TestServer, series: &str) -> f64 {
    let res = voicegate_testkit::http::request(server.http, "GET", "/metrics", &[], b"")
        .await
        .unwrap();
    let text = voicegate_testkit::without_node_label(&res.text());
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} is not exposed"))
}

/// Polls `f` until it returns true or `within` passes.
pub async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

/// Places a dialog call through `server`, waits for its media and for the `call.started` that
/// `app` receives for it; returns the peer and that event.
pub async fn started_dialog_call(
    server: &TestServer,
    app: &voicegate_testkit::dialog_app::TestDialogApp,
) -> (voicegate_testkit::ClientPeer, serde_json::Value) {
    let within = Duration::from_secs(5);
    let peer = voicegate_testkit::ClientPeer::call(server.http, "/webrtc/v1/offer")
        .await
        .expect("call placed");
    peer.wait_connected(within).await.expect("media connected");
    let id = peer.call_id.clone();
    let started = app
        .wait_for(within, |e| {
            e["type"] == "call.started" && e["call_id"] == id
        })
        .await
        .expect("call.started");
    (peer, started)
}

/// `text` spoken by espeak-ng, as Opus packets with 300 ms of silence before and `tail` after.
pub async fn spoken(text: &str, tail: Duration) -> Vec<bytes::Bytes> {
    let (pcm, rate) = speech_pcm(text).await;
    voicegate_testkit::peer::opus_speech(&pcm, rate, Duration::from_millis(300), tail)
}

/// `text` spoken by espeak-ng: mono PCM and its rate.
pub async fn speech_pcm(text: &str) -> (Vec<i16>, u32) {
    use futures_util::StreamExt;
    use voicegate_engines::tts::TtsFactory;
    use voicegate_engines::tts::espeak::{Espeak, EspeakSettings};
    let espeak = Espeak::start(&EspeakSettings {
        voice: "en-us".into(),
        rate_wpm: 160,
    })
    .unwrap();
    let engine = espeak.for_call();
    let pcm: Vec<i16> = engine
        .synthesize(text)
        .map(|c| c.unwrap_or_default())
        .collect::<Vec<_>>()
        .await
        .concat();
    (pcm, engine.sample_rate())
}

/// The embedded demo's socket refuses a dial without the server's `demo_key`, or with another
/// key, and the server's own dial URL carries one.
pub async fn assert_demo_refuses_strangers(server: &TestServer) {
    for url in [
        format!("ws://{}/dialog/demo?call_id=wrtc-x", server.http),
        format!(
            "ws://{}/dialog/demo?call_id=wrtc-x&demo_key=demo-0000",
            server.http
        ),
    ] {
        let err = tokio_tungstenite::connect_async(url).await.unwrap_err();
        assert!(err.to_string().contains("403"), "{err}");
    }
    assert!(server.demo_url.contains("demo_key=demo-"));
}
