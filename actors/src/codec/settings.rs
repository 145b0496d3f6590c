//! `CodecSettings`: what one call's codec is built with, and how a call's settings and offer
//! become them.
//!
//! Kept apart from the actor because it is the one place where the call's mode shapes the audio
//! path (echo or speech: queue bound, prebuffer, listening), and it reads on its own.

use crate::call::{CallMode, CallSettings, Offer};
use crate::codec::ListenSettings;
use std::time::Duration;
use voicegate_core::codec::{EncoderSettings, UplinkSettings};

/// What the codec needs to know.
#[derive(Debug, Clone)]
pub struct CodecSettings {
    /// Decoder side.
    pub uplink: UplinkSettings,
    /// Encoder side.
    pub encoder: EncoderSettings,
    /// Pacer catch-up limit.
    pub max_catch_up: u32,
    /// Playout queue bound.
    pub max_queue_frames: usize,
    /// Frames queued before a talkspurt starts.
    pub prebuffer_frames: usize,
    /// Send the caller's audio back.
    pub echo: bool,
    /// Report when no RTP arrived for this long.
    pub rtp_timeout: Duration,
    /// The caller's payload type for Opus (from the offer).
    pub opus_pt: u8,
    /// The caller's payload type for telephone-event/8000, if offered.
    pub dtmf_pt: Option<u8>,
    /// Dialog calls: endpointing and barge-in.
    pub listen: Option<ListenSettings>,
}

impl CodecSettings {
    /// The codec's settings for a call of this offer.
    pub fn from_call(s: &CallSettings, offer: &Offer) -> Self {
        let mode = offer.mode;
        CodecSettings {
            uplink: UplinkSettings {
                pcm_rate: s.pcm_rate,
                reorder_depth: s.reorder_depth,
                reorder_wait: s.reorder_wait,
                max_conceal: s.max_conceal,
            },
            encoder: s.encoder,
            max_catch_up: s.max_catch_up,
            // Speech is bounded by the player (`2 * tts.prefetch_segments` segments, each at most
            // `tts.max_segment_audio_ms`); this bound (10 minutes) is only a safety net there.
            max_queue_frames: match mode {
                CallMode::Echo => s.max_queue_frames,
                CallMode::Dialog => 30_000,
            },
            // Echo: a 40 ms jitter margin for the caller's packet timing, plus the configured
            // delay. Speech starts with its first frame.
            prebuffer_frames: match mode {
                CallMode::Echo => 2 + s.echo_delay_frames,
                CallMode::Dialog => 1,
            },
            echo: mode == CallMode::Echo,
            rtp_timeout: s.rtp_timeout,
            opus_pt: offer.summary.opus_pt,
            dtmf_pt: offer.summary.telephone_event_pt,
            listen: (mode == CallMode::Dialog).then(|| s.listen.clone()),
        }
    }
}
