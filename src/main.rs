//! The voicegate binary: parse arguments, load configuration, run until a signal.

use anyhow::Context as _;
use voicegate::server;
use voicegate::settings::{LogFormat, Settings};
use voicegate_actors::supervisor::Shutdown;

const USAGE: &str = "\
voicegate: WebRTC voice calls between browsers and an AI dialog app

USAGE:
    voicegate [--config <file>]

OPTIONS:
    -c, --config <file>   TOML file overriding config/default.toml (only the keys you change)
    -h, --help            print this help
    -V, --version         print the version

Environment variables VOICEGATE__<SECTION>__<KEY> override both, e.g.
VOICEGATE__HTTP__BIND=0.0.0.0:8080. RUST_LOG overrides log.filter.";

fn main() -> anyhow::Result<()> {
    let mut config = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-c" | "--config" => config = Some(args.next().context("--config needs a file path")?),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            "-V" | "--version" => {
                println!("voicegate {}", env!("CARGO_PKG_VERSION"));
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    let cfg = Settings::load(config.as_deref())?.validate()?;
    let mut filter = cfg.log.filter.clone();
    if cfg.trace_messages {
        filter.push_str(",voicegate::messages=trace");
    }
    init_tracing(&filter, cfg.log.format);

    actix::System::new().block_on(async move {
        let running = server::start(&cfg)?;
        let handle = running.server.handle();
        let supervisor = running.supervisor.clone();
        let ready = running.ready.clone();
        let grace = cfg.shutdown_grace;
        actix::spawn(async move {
            shutdown_signal().await;
            tracing::info!(
                grace_ms = grace.as_millis() as u64,
                "shutting down: draining calls"
            );
            ready.store(false, std::sync::atomic::Ordering::Relaxed);
            let _ = supervisor.send(Shutdown { grace }).await;
            handle.stop(true).await;
        });
        running.server.await.context("http server")?;
        tracing::info!("stopped");
        Ok(())
    })
}

fn init_tracing(filter: &str, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers, run until killed.
            std::future::pending::<()>().await;
        }
    }
}
