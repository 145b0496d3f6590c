//! Startup: bind the media port, start the supervisor and its workers, serve HTTP.
//!
//! Used by `main` and by the integration tests, so tests run the real service on free ports.

use crate::http::{self, HttpState};
use crate::settings::Validated;
use actix::{Actor, Addr};
use actix_web::{App, HttpServer, web};
use std::net::SocketAddr;
use std::sync::Arc;
use voicegate_actors::supervisor::Supervisor;
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
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The media UDP port could not be bound.
    #[error("media.bind_ip/media.udp_port: cannot bind {addr}: {source}")]
    Media {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The HTTP address could not be bound.
    #[error("http.bind: cannot bind {addr}: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Starts everything. Must run inside an actix system.
pub fn start(cfg: &Validated) -> Result<Running, StartError> {
    let plane = MediaPlane::start(&cfg.media).map_err(|source| StartError::Media {
        addr: cfg.media.bind,
        source,
    })?;
    let media_addr = plane.mux().local_addr();
    let supervisor = Supervisor::new(cfg.calls.clone(), plane.clone(), cfg.media.workers).start();
    let state = web::Data::new(HttpState {
        supervisor: supervisor.clone(),
        allowed_origins: Arc::new(cfg.allowed_origins.clone()),
        max_body_bytes: cfg.max_body_bytes,
    });
    let server =
        HttpServer::new(move || App::new().app_data(state.clone()).configure(http::routes))
            .workers(cfg.http_workers)
            // Signals are handled by main, which ends the calls before stopping HTTP.
            .disable_signals()
            .shutdown_timeout(5)
            .bind(cfg.http_bind)
            .map_err(|source| StartError::Http {
                addr: cfg.http_bind,
                source,
            })?;
    let http_addr = server.addrs().first().copied().unwrap_or(cfg.http_bind);
    let server = server.run();
    tracing::info!(
        media = %media_addr,
        advertised = ?plane.candidate_addresses(),
        media_workers = cfg.media.workers,
        "listening on {http_addr}"
    );
    Ok(Running {
        http_addr,
        media_addr,
        supervisor,
        plane,
        server,
    })
}
