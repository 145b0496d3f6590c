//! The voicegate binary: parse arguments, load configuration, run until a signal.

use anyhow::Context as _;
use voicegate::server;
use voicegate::settings::{LogFormat, Settings};
use voicegate_actors::supervisor::Shutdown;

const USAGE: &str = "\
voicegate: WebRTC voice calls between browsers and an AI dialog app

USAGE:
    voicegate [--config <file>]
    voicegate token [--config <file>] [--ttl <seconds>] [--sub <who>] [--mode echo|dialog]
                    [--payload <json>] [--max-duration <seconds>] [--jti <id>]

OPTIONS:
    -c, --config <file>   TOML file overriding config/default.toml (only the keys you change)
    -h, --help            print this help
    -V, --version         print the version

`voicegate token` prints a call token signed with the first of auth.secrets (HS256), valid for
--ttl seconds (default 300): for tests, and to compare with what your backend mints.

Environment variables VOICEGATE__<SECTION>__<KEY> override both, e.g.
VOICEGATE__HTTP__BIND=0.0.0.0:8080. RUST_LOG overrides log.filter.";

fn main() -> anyhow::Result<()> {
    let mut config = None;
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("token") {
        args.next();
        return print_token(args);
    }
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
    init_tracing(&filter, cfg.log.format, &cfg.node_id);
    raise_open_files_limit();

    actix::System::new().block_on(async move {
        let running = server::start(&cfg)?;
        let handle = running.server.handle();
        let supervisor = running.supervisor.clone();
        let ready = running.ready.clone();
        let recorder = running.recorder.clone();
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
        // The calls are over; their recordings' last chunks are written before the exit.
        if let Some(recorder) = recorder
            && !recorder.sync(std::time::Duration::from_secs(5))
        {
            tracing::warn!("recordings still being written at exit");
        }
        tracing::info!("stopped");
        Ok(())
    })
}

/// `voicegate token ...`: prints a call token signed with the configured secret.
fn print_token(mut args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    use voicegate_core::token::{Claims, mint};
    let mut config = None;
    let mut ttl: u64 = 300;
    let mut claims = Claims::default();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "-c" | "--config" => config = Some(value("--config")?),
            "--ttl" => ttl = value("--ttl")?.parse().context("--ttl takes seconds")?,
            "--sub" => claims.sub = Some(value("--sub")?),
            "--jti" => claims.jti = Some(value("--jti")?),
            "--mode" => {
                let mode = value("--mode")?;
                anyhow::ensure!(
                    mode == "echo" || mode == "dialog",
                    "--mode is echo or dialog"
                );
                claims.mode = Some(mode);
            }
            "--payload" => {
                let json = value("--payload")?;
                claims.payload = Some(serde_json::from_str(&json).context("--payload takes JSON")?);
            }
            "--max-duration" => {
                claims.max_duration_s = Some(
                    value("--max-duration")?
                        .parse()
                        .context("--max-duration takes seconds")?,
                );
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    let settings = Settings::load(config.as_deref())?;
    let secret = settings
        .auth
        .secrets
        .first()
        .context("no auth.secrets configured: set VOICEGATE__AUTH__SECRETS")?;
    anyhow::ensure!(
        secrecy::ExposeSecret::expose_secret(secret).len() >= voicegate::settings::MIN_SECRET_BYTES,
        "the first of auth.secrets is shorter than {} bytes",
        voicegate::settings::MIN_SECRET_BYTES
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    claims.iat = Some(now);
    claims.exp = now + ttl;
    println!(
        "{}",
        mint(
            secrecy::ExposeSecret::expose_secret(secret).as_bytes(),
            &claims
        )
    );
    Ok(())
}

fn init_tracing(filter: &str, format: LogFormat, node: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    let json = matches!(format, LogFormat::Json);
    let builder = builder.with_writer(voicegate::logging::NodeTagged::new(node, json));
    if json {
        builder.json().init();
    } else {
        builder.init();
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

/// Raises the soft limit on open files to the hard one and logs both: a login shell's soft limit
/// is often 1024, and `calls.max` (1000 by default) dialog calls hold a WebSocket each, next to
/// the HTTP connections and the engines' sockets. A limit that cannot be raised is kept.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            limit.rlim_cur = before;
        }
    }
    tracing::info!(
        open_files = limit.rlim_cur,
        was = before,
        "open-files limit"
    );
}
