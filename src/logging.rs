//! Every log line names the node that wrote it (`node.id`), so a fleet's logs can be merged and
//! a call followed across nodes: JSON lines get a `"node"` field first, text lines end with
//! `node=<id>`.
//!
//! The formatter writes each event whole through one writer from [`NodeTagged`]; the writer
//! keeps the event and, when dropped, writes it tagged to stdout in one piece.

use std::io::{self, Write};
use std::sync::Arc;
use tracing_subscriber::fmt::MakeWriter;

/// Makes a writer per log event that tags it with the node id.
#[derive(Debug, Clone)]
pub struct NodeTagged {
    node: Arc<str>,
    json: bool,
}

impl NodeTagged {
    /// For `node`'s lines in JSON (`json`) or text.
    pub fn new(node: &str, json: bool) -> Self {
        NodeTagged {
            node: Arc::from(node),
            json,
        }
    }

    /// `line` (one formatted event) with the node's tag.
    pub fn tag(&self, line: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(line.len() + self.node.len() + 12);
        match (self.json, line.split_first()) {
            (true, Some((b'{', rest))) => {
                out.extend_from_slice(b"{\"node\":\"");
                out.extend_from_slice(self.node.as_bytes());
                out.extend_from_slice(b"\",");
                out.extend_from_slice(rest);
            }
            _ => {
                let body = line.strip_suffix(b"\n").unwrap_or(line);
                out.extend_from_slice(body);
                out.extend_from_slice(b" node=");
                out.extend_from_slice(self.node.as_bytes());
                out.push(b'\n');
            }
        }
        out
    }
}

impl<'a> MakeWriter<'a> for NodeTagged {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> EventWriter {
        EventWriter {
            tagger: self.clone(),
            event: Vec::new(),
        }
    }
}

/// One event's writer: collects it, writes it tagged when dropped.
#[derive(Debug)]
pub struct EventWriter {
    tagger: NodeTagged,
    event: Vec<u8>,
}

impl Write for EventWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.event.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if self.event.is_empty() {
            return;
        }
        let line = self.tagger.tag(&self.event);
        // Logging has nowhere to report its own failure.
        let _ = io::stdout().lock().write_all(&line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_get_a_node_field_and_stay_json() {
        let t = NodeTagged::new("b7", true);
        let line = br#"{"timestamp":"x","level":"INFO","fields":{"message":"hi"}}
"#;
        let out = String::from_utf8(t.tag(line)).unwrap();
        let v: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(v["node"], "b7");
        assert_eq!(v["fields"]["message"], "hi");
        assert!(out.ends_with('\n'));
    }

    #[test]
    fn text_lines_end_with_the_node() {
        let t = NodeTagged::new("a", false);
        assert_eq!(
            t.tag(b"2026-12-06T00:00:00Z  INFO voicegate: listening\n"),
            b"2026-12-06T00:00:00Z  INFO voicegate: listening node=a\n"
        );
    }
}
