//! Test and benchmark equipment: a real WebRTC client peer (the browser's stand-in), a minimal
//! HTTP client for the signaling API, and audio measurement. No mocks: the peer speaks real
//! ICE/DTLS/SRTP and Opus to the server under test.

pub mod chat_server;
pub mod cut;
pub mod deepgram_server;
pub mod dialog_app;
pub mod endings;
pub mod http;
pub mod peer;
pub mod speech_server;
pub mod tls;
pub mod tts_ws_server;

pub use peer::{ClientPeer, PageChannel, Received};

/// A node's `/metrics` text with its `node` label taken off every sample (and without
/// `voicegate_node_info`), so a test reads series by their other labels whatever node served
/// them: `voicegate_calls_total{node="a",reason="x"} 1` reads `voicegate_calls_total{reason="x"} 1`.
pub fn without_node_label(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.starts_with("voicegate_node_info")
            || line.starts_with("# HELP voicegate_node_info")
            || line.starts_with("# TYPE voicegate_node_info")
        {
            continue;
        }
        let plain = match (line.find("{node=\""), line.starts_with('#')) {
            (Some(at), false) => {
                let rest = &line[at + "{node=\"".len()..];
                match rest.find('"') {
                    Some(end) => {
                        let after = &rest[end + 1..];
                        match after.strip_prefix(',') {
                            Some(more) => format!("{}{{{more}", &line[..at]),
                            None => format!("{}{}", &line[..at], after.trim_start_matches('}')),
                        }
                    }
                    None => line.to_owned(),
                }
            }
            _ => line.to_owned(),
        };
        out.push_str(&plain);
        out.push('\n');
    }
    out
}

/// A stand-in's connection, plain TCP or TLS over it.
pub(crate) trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

#[cfg(test)]
mod tests {
    use super::without_node_label;

    #[test]
    fn the_node_label_comes_off() {
        let text = "# HELP voicegate_node_info x\n# TYPE voicegate_node_info gauge\nvoicegate_node_info{node=\"a\"} 1\n# HELP c x\nvoicegate_calls_active{node=\"a\"} 3\nvoicegate_calls_total{node=\"a\",reason=\"x\"} 1\n";
        assert_eq!(
            without_node_label(text),
            "# HELP c x\nvoicegate_calls_active 3\nvoicegate_calls_total{reason=\"x\"} 1\n"
        );
    }
}
