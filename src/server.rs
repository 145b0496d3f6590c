//! Startup: bind the media port, start the supervisor and its workers, serve HTTP.
//!
//! Used by `main` and by the integration tests, so tests run the real service on free ports.

use crate::demo::DemoConfig;
use crate::http::{self, HttpState};
use crate::settings::{AsrChoice, DialogTarget, TtsChoice, Validated};
use actix::{Actor, Addr};
use actix_web::{App, HttpServer, web};
use std::net::SocketAddr;
use std::sync::Arc;
use voicegate_actors::call::{CallServices, EngineProfiles};
use voicegate_actors::recorder::Recorder;
use voicegate_actors::supervisor::Supervisor;
use voicegate_actors::workers::Workers;
use voicegate_core::admission::RateLimiter;
use voicegate_core::call_id::CallId;
use voicegate_engines::asr::AsrFactory;
use voicegate_engines::asr::deepgram::Deepgram;
use voicegate_engines::asr::openai::OpenAiAsr;
use voicegate_engines::asr::pocketsphinx::Pocketsphinx;
use voicegate_engines::tts::TtsFactory;
use voicegate_engines::tts::cartesia::CartesiaTts;
use voicegate_engines::tts::elevenlabs::ElevenLabsTts;
use voicegate_engines::tts::espeak::Espeak;
use voicegate_engines::tts::openai::OpenAiTts;
use voicegate_media::MediaPlane;

/// A running service.
pub struct Running {
    /// Where HTTP listens (the real port when 0 was asked for).
    pub http_addr: SocketAddr,
    /// Where the media socket is bound.
    pub media_addr: SocketAddr,
    /// The call supervisor.
    pub supervisor: Addr<Supervisor>,
    /// The media plane (for its counters).
    pub plane: Arc<MediaPlane>,
    /// The HTTP server; await it to run until stopped.
    pub server: actix_web::dev::Server,
    /// Cleared when draining (`/ready` turns 503, offers are refused).
    pub ready: Arc<std::sync::atomic::AtomicBool>,
    /// The embedded demo app's URL, with its `demo_key` (tests dial it directly).
    pub demo_url: url::Url,
    /// The recordings' writer (`None`: recording is off); `main` lets it finish before exiting.
    pub recorder: Option<Recorder>,
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The media UDP port could not be bound.
    #[error("media.bind_ip/media.udp_port: cannot bind {addr}: {source}")]
    Media {
        /// The address.
        addr: SocketAddr,
        /// What failed: the socket or the receive loop.
        source: voicegate_media::MuxError,
    },
    /// The HTTP address could not be bound.
    #[error("http.bind: cannot bind {addr}: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The speech engine could not start.
    #[error("tts.engine: {0}")]
    Tts(#[source] voicegate_engines::tts::espeak::EspeakError),
    /// The recognizer could not start.
    #[error("asr.engine: {0}")]
    Asr(#[source] voicegate_engines::asr::pocketsphinx::StartError),
    /// `recording.dir` cannot take recordings.
    #[error(transparent)]
    Recording(#[from] voicegate_actors::recorder::RecorderError),
    /// The operating system supplied no random bytes (for the demo's key).
    #[error("no random bytes for the demo app's key: {0}")]
    Random(String),
}

/// Sources the offer rate limiter tracks at once (a few MB at most; see `RateLimiter`).
const RATE_LIMIT_SOURCES: usize = 65_536;

/// Starts everything. Must run inside an actix system.
pub fn start(cfg: &Validated) -> Result<Running, StartError> {
    // HTTP is bound first: the embedded demo dialog app is reached on the bound address.
    let http_err = |source| StartError::Http {
        addr: cfg.http_bind,
        source,
    };
    let listener = std::net::TcpListener::bind(cfg.http_bind).map_err(http_err)?;
    let http_addr = listener.local_addr().map_err(http_err)?;
    // The media workers first: with one or two workers, the shared port's receive loop runs on
    // the first, so no datagram crosses threads (one worker: about 8 % less CPU per call) or
    // half of them do (two: 5-9 % less than a receive thread, measured in BENCHMARKS.md). With
    // more, a thread of its own keeps the whole machine's receive work off one worker's pacers.
    let workers = Workers::start(cfg.media.workers);
    let receive = |receiver: voicegate_media::Receiver| match workers.count() {
        1 | 2 => workers.receive(receiver),
        _ => receiver.on_own_thread(),
    };
    let plane = MediaPlane::start(&cfg.media, receive).map_err(|source| {
        workers.stop();
        StartError::Media {
            addr: cfg.media.bind,
            source,
        }
    })?;
    let media_addr = plane.mux().local_addr();
    let recorder = cfg
        .recording
        .as_ref()
        .map(|r| Recorder::start(&r.dir, r.queue_max_bytes))
        .transpose()?;
    if let Some(r) = &cfg.recording {
        tracing::info!(mode = ?cfg.calls.recording.mode, dir = %r.dir.display(), "recording calls");
    }
    let tts_engine = |choice: &TtsChoice| -> Result<Arc<dyn TtsFactory>, StartError> {
        Ok(match choice {
            TtsChoice::Espeak(s) => Arc::new(Espeak::start(s).map_err(StartError::Tts)?),
            TtsChoice::OpenAi(s) => Arc::new(OpenAiTts::new(s.clone())),
            TtsChoice::ElevenLabs(s) => Arc::new(ElevenLabsTts::new(s.clone())),
            TtsChoice::Cartesia(s) => Arc::new(CartesiaTts::new(s.clone())),
        })
    };
    let asr_engine = |choice: &AsrChoice| -> Result<Arc<dyn AsrFactory>, StartError> {
        Ok(match choice {
            AsrChoice::Pocketsphinx(s) => {
                Arc::new(Pocketsphinx::start(s).map_err(StartError::Asr)?)
            }
            AsrChoice::OpenAi(s) => Arc::new(OpenAiAsr::new(s.clone())),
            AsrChoice::Deepgram(s) => Arc::new(Deepgram::new(s.clone())),
        })
    };
    let tts = tts_engine(&cfg.tts)?;
    let asr = asr_engine(&cfg.asr)?;
    let mut profiles = EngineProfiles::default();
    for (name, choice) in &cfg.tts_profiles {
        profiles.tts.insert(name.clone(), tts_engine(choice)?);
    }
    for (name, choice) in &cfg.asr_profiles {
        profiles.asr.insert(name.clone(), asr_engine(choice)?);
    }
    // The demo's socket takes only dials that carry this key: the agent spends a model's budget,
    // and a WebSocket on the public port that anyone may open is memory anyone may hold.
    let demo_key = CallId::generate("demo", None)
        .map_err(|e| StartError::Random(e.to_string()))?
        .as_str()
        .to_owned();
    let demo = web::Data::new(DemoConfig {
        llm: cfg.demo_llm.clone().map(Arc::new),
        key: demo_key.as_str().into(),
    });
    let demo_url = demo_url(http_addr, &demo_key);
    let mut dialog = cfg.dialog.clone();
    dialog.url = match &cfg.dialog_target {
        DialogTarget::Demo => demo_url.clone(),
        DialogTarget::Url(u) => u.clone(),
    };
    // The node is in the dial URL, so a dialog app that loses a call's socket without
    // `call.ended` (the node died) can tell which node went.
    dialog.url = with_query(&dialog.url, "node", &cfg.node_id);
    let dialog_shown = voicegate_core::dialog::redact(&dialog.url);
    let services = CallServices {
        plane: plane.clone(),
        tts,
        asr,
        profiles: Arc::new(profiles),
        dialog: Arc::new(dialog),
        recorder: recorder.clone(),
    };
    let supervisor = Supervisor::new(cfg.calls.clone(), services, workers, cfg.max_calls)
        .with_calls_per_source(cfg.calls_per_source)
        .with_calls_per_prefix(cfg.calls_per_prefix)
        .start();
    let (per_second, burst) = cfg.offers_per_source;
    let offer_rate = Arc::new(std::sync::Mutex::new(RateLimiter::new(
        per_second,
        burst,
        RATE_LIMIT_SOURCES,
    )));
    let (per_second, burst) = cfg.offers_per_prefix;
    let prefix_offer_rate = Arc::new(std::sync::Mutex::new(RateLimiter::new(
        per_second,
        burst,
        RATE_LIMIT_SOURCES,
    )));
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let state = web::Data::new(HttpState {
        supervisor: supervisor.clone(),
        allowed_origins: Arc::new(cfg.allowed_origins.clone()),
        max_body_bytes: cfg.max_body_bytes,
        ready: ready.clone(),
        retry_after_s: cfg.retry_after_s,
        plane: plane.clone(),
        body_timeout: cfg.body_timeout,
        trusted_proxies: Arc::new(cfg.trusted_proxies.clone()),
        offer_rate,
        prefix_offer_rate,
        max_remote_candidates: cfg.max_remote_candidates,
        max_payload_bytes: cfg.max_payload_bytes,
        max_call_duration: cfg.max_call_duration,
        auth: cfg
            .auth
            .as_ref()
            .map(|a| Arc::new(http::auth::Auth::new(a))),
        node_id: Arc::from(cfg.node_id.as_str()),
        id_prefix: Arc::from(cfg.calls.id_prefix.as_str()),
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(demo.clone())
            .configure(http::routes)
    })
    .workers(cfg.http_workers)
    // Signals are handled by main, which ends the calls before stopping HTTP.
    .disable_signals()
    .shutdown_timeout(5)
    .listen(listener)
    .map_err(http_err)?
    .run();
    if !http_addr.ip().is_loopback() && cfg.auth.is_none() {
        tracing::warn!(
            "auth.mode is \"none\" on a non-loopback address: anyone who reaches this server can place calls (and spend your speech and LLM budget); set auth.mode = \"token\", see the README"
        );
    }
    if !http_addr.ip().is_loopback() && cfg.allowed_origins.is_empty() {
        tracing::warn!(
            "http.allowed_origins is empty on a non-loopback address: pages on any origin can place calls through their visitors' browsers; see SECURITY.md"
        );
    }
    if let DialogTarget::Url(url) = &cfg.dialog_target
        && url.scheme() == "ws"
        && !cfg.dialog.headers.is_empty()
        && !is_loopback_host(url)
    {
        tracing::warn!(
            dialog = %dialog_shown,
            headers = %cfg.dialog.headers,
            "dialog.headers go to a ws:// URL beyond this machine: they cross the network in clear text; use wss://"
        );
    }
    let (udp_rx, udp_tx, capped) = plane.mux().socket_buffers();
    if capped {
        tracing::warn!(
            udp_receive_buffer_bytes = udp_rx,
            udp_send_buffer_bytes = udp_tx,
            "the kernel gave the shared media port smaller buffers than the 4 MiB asked for: with many calls a burst can overflow them and drop audio unseen; raise net.core.rmem_max and net.core.wmem_max (sysctl) to at least 4194304"
        );
    }
    tracing::info!(
        media = %media_addr,
        udp_receive_buffer_bytes = udp_rx,
        udp_send_buffer_bytes = udp_tx,
        advertised = ?plane.candidate_addresses(),
        media_workers = cfg.media.workers,
        dialog = %dialog_shown,
        dialog_headers = %cfg.dialog.headers,
        dialog_tls = %cfg.dialog.tls,
        vendor_tls = %cfg.vendor_tls,
        "listening on {http_addr}"
    );
    Ok(Running {
        http_addr,
        media_addr,
        supervisor,
        plane,
        server,
        ready,
        demo_url,
        recorder,
    })
}

/// Whether `url`'s host is this machine (`localhost` or a loopback address).
fn is_loopback_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// `url` with the query parameter `name` set to `value` (replacing any there).
fn with_query(url: &url::Url, name: &str, value: &str) -> url::Url {
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut out = url.clone();
    out.query_pairs_mut()
        .clear()
        .extend_pairs(pairs)
        .append_pair(name, value);
    out
}

/// The embedded demo app's URL on this server (loopback when bound to every interface), with
/// `key` as its `demo_key`.
fn demo_url(http: SocketAddr, key: &str) -> url::Url {
    let ip = if http.ip().is_unspecified() {
        if http.is_ipv4() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
        }
    } else {
        http.ip()
    };
    let host = SocketAddr::new(ip, http.port());
    let mut url = url::Url::parse(&format!("ws://{host}/dialog/demo"))
        .expect("a socket address makes a valid URL");
    url.query_pairs_mut().append_pair("demo_key", key);
    url
}
