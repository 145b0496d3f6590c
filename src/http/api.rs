//! The JSON of the HTTP API, compatible with the original service.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// `POST /webrtc/v1/offer` body. Unknown fields are ignored, as the original does.
#[derive(Debug, Deserialize)]
pub struct OfferRequest {
    /// The browser's offer, with its candidates (non-trickle).
    #[serde(default)]
    pub sdp: Option<String>,
    /// Must be `"offer"`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Any JSON value for the dialog app; wins over the three fields below when present.
    #[serde(default)]
    pub payload: Option<Box<RawValue>>,
    /// Dialog app credential, used when `payload` is absent.
    #[serde(default, rename = "apiKey")]
    pub api_key: Option<String>,
    /// Dialog app credential, used when `payload` is absent.
    #[serde(default, rename = "apiSecret")]
    pub api_secret: Option<String>,
    /// Dialog app agent, used when `payload` is absent.
    #[serde(default, rename = "agentId")]
    pub agent_id: Option<String>,
}

impl OfferRequest {
    /// The field names as they are spelled on the wire, for matching a client's keys to them
    /// whatever their case (`voicegate_core::json_keys`).
    pub const FIELDS: [&'static str; 6] =
        ["sdp", "type", "payload", "apiKey", "apiSecret", "agentId"];
}

/// `POST /webrtc/v1/offer` reply.
#[derive(Debug, Serialize)]
pub struct OfferResponse<'a> {
    /// The answer, with all our candidates.
    pub sdp: &'a str,
    /// Always `"answer"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The call's id, for hangup.
    pub call_id: &'a str,
}

/// Every error reply: `{"error": "..."}`.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    /// What went wrong, for a developer to act on.
    pub error: &'a str,
}

/// Query of both signaling endpoints.
#[derive(Debug, Deserialize)]
pub struct SignalQuery {
    /// `echo` for an echo test call.
    #[serde(default)]
    pub mode: Option<String>,
    /// The call to hang up.
    #[serde(default)]
    pub call_id: Option<String>,
}
