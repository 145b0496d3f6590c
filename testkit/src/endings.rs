//! Calls placed and ended in every way a call can end, for the leak test (`tests/leak.rs`) and
//! the 10 000-call bench (`voicegate-bench sequential`): both must see the same mix, so the mix
//! and the way each call is ended live here once.

use crate::{ClientPeer, http};
use anyhow::Context as _;
use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Duration;

/// The echo offer path.
pub const ECHO: &str = "/webrtc/v1/offer?mode=echo";

/// How a call ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// `POST /webrtc/v1/hangup`.
    HangUp,
    /// `DELETE` on the call's resource URL.
    Delete,
    /// The browser's `pc.close()`.
    Close,
    /// The network goes away mid-call: no close, no consent checks, nothing.
    Vanish,
    /// Offers, takes the answer, never connects.
    NeverConnect,
    /// Connected, then stops sending RTP while the connection stays up (ends by RTP timeout).
    Silent,
}

/// How call `i` ends: in every 20 calls, 2 vanish, 2 close, 1 never connects, 1 goes silent,
/// and the rest hang up, half by `POST hangup` and half by `DELETE`.
pub fn ending(i: usize) -> Ending {
    match i % 10 {
        3 => Ending::Vanish,
        6 => Ending::Close,
        9 if i % 20 == 9 => Ending::NeverConnect,
        9 => Ending::Silent,
        n if n % 2 == 0 => Ending::HangUp,
        _ => Ending::Delete,
    }
}

/// Places echo call `i` on the server at `http`, sends `frames`, and ends it its way
/// ([`ending`]). Returns its offer → connected time, if it connected. A silent caller is left
/// in `lingering`: its call ends by the server's RTP timeout while the next one starts.
pub async fn place_and_end(
    http: SocketAddr,
    i: usize,
    frames: &[Bytes],
    lingering: &mut Vec<ClientPeer>,
) -> anyhow::Result<Option<Duration>> {
    let how = ending(i);
    if how == Ending::NeverConnect {
        let (pc, _track, _ssrc, _state, _rx, offer) = ClientPeer::offer().await?;
        let res = http::post_offer(http, ECHO, &offer).await?;
        // Gone before applying the answer.
        let _ = pc.close().await;
        anyhow::ensure!(res.status == 200, "call {i}: offer answered {}", res.status);
        return Ok(None);
    }
    let peer = ClientPeer::call(http, ECHO)
        .await
        .with_context(|| format!("call {i}"))?;
    let connected = match peer.wait_connected(Duration::from_secs(5)).await {
        Ok(t) => t,
        Err(e) => {
            peer.close().await;
            return Err(e.context(format!("call {i}")));
        }
    };
    peer.send_paced(frames).await?;
    let end = |method: &'static str, path: String| async move {
        let res = http::request(http, method, &path, &[], b"").await?;
        anyhow::ensure!(
            res.status == 204,
            "call {i}: {method} {path} answered {}",
            res.status
        );
        Ok(())
    };
    match how {
        Ending::HangUp => {
            let res = end(
                "POST",
                format!("/webrtc/v1/hangup?call_id={}", peer.call_id),
            )
            .await;
            peer.close().await;
            res?;
        }
        Ending::Delete => {
            let location = peer.location.clone().context("no Location")?;
            let res = end("DELETE", location).await;
            peer.close().await;
            res?;
        }
        Ending::Close => peer.close().await,
        Ending::Vanish => peer.vanish().await,
        Ending::Silent => lingering.push(peer),
        Ending::NeverConnect => unreachable!("handled above"),
    }
    Ok(Some(connected))
}
