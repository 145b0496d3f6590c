//! The codec's ears in a dialog call: voice activity, utterances for the recognizer, barge-in
//! and DTMF, run on the decoded uplink inside the codec, next to the playout queue.
//!
//! It lives in the codec (not in a separate actor) because barge-in must stop playback within a
//! frame: the decision and the flush happen in the same handler, with no message in between.
//! Utterance audio leaves in batches of 100 ms, so the recognizer gets five messages per second
//! of speech rather than fifty.

use super::CodecEvent;
use crate::recognizer::Heard;
use actix::Recipient;
use std::time::Instant;
use voicegate_core::codec::Origin;
use voicegate_core::dtmf::DtmfReceiver;
use voicegate_core::listen::{
    BargeIn, BargeInSettings, Endpoint, EndpointSettings, Endpointer, Vad, rms,
};
use voicegate_core::pcm::Playout;

/// Samples per 20 ms frame at 16 kHz (the VAD's rate).
const FRAME: usize = 320;
/// Frames per batch sent to the recognizer.
const BATCH_FRAMES: usize = 5;

/// Settings of listening.
#[derive(Debug, Clone, Copy)]
pub struct ListenSettings {
    /// Endpointing.
    pub endpoint: EndpointSettings,
    /// Barge-in.
    pub barge_in: BargeInSettings,
}

/// Per-call listening state.
pub struct Listening {
    vad: Vad,
    endpointer: Endpointer,
    barge_in: BargeIn,
    dtmf: DtmfReceiver,
    /// Where utterances go.
    recognizer: Recipient<Heard>,
    /// Decoded audio waiting to make a whole frame.
    pending: Vec<i16>,
    /// Utterance audio waiting to be sent.
    batch: Vec<i16>,
    /// The uplink's lost-packet count when the current utterance started.
    lost_at_start: u64,
}

impl Listening {
    /// Listening that sends utterances to `recognizer`.
    pub fn new(s: ListenSettings, recognizer: Recipient<Heard>) -> Self {
        Listening {
            vad: Vad::new(),
            endpointer: Endpointer::new(s.endpoint),
            barge_in: BargeIn::new(s.barge_in),
            dtmf: DtmfReceiver::new(),
            recognizer,
            pending: Vec::with_capacity(FRAME * 2),
            batch: Vec::with_capacity(FRAME * BATCH_FRAMES),
            lost_at_start: 0,
        }
    }

    /// Decoded caller audio. Returns true when the caller barged in (playback was cleared).
    pub fn heard(
        &mut self,
        pcm: &[i16],
        origin: Origin,
        lost_total: u64,
        now: Instant,
        playout: &mut Playout,
    ) -> bool {
        let mut barged = false;
        self.pending.extend_from_slice(pcm);
        let mut offset = 0;
        while self.pending.len() - offset >= FRAME {
            let frame = &self.pending[offset..offset + FRAME];
            offset += FRAME;
            let speech = self.vad.is_speech(frame);
            let level = rms(frame);
            let Listening {
                endpointer,
                recognizer,
                batch,
                lost_at_start,
                ..
            } = self;
            endpointer.push(frame, speech, origin, &mut |ev| match ev {
                Endpoint::Start { audio } => {
                    *lost_at_start = lost_total;
                    batch.clear();
                    recognizer.do_send(Heard::Start(audio.to_vec()));
                }
                Endpoint::Audio(a) => {
                    batch.extend_from_slice(a);
                    if batch.len() >= FRAME * BATCH_FRAMES {
                        recognizer.do_send(Heard::Audio(std::mem::take(batch)));
                        batch.reserve(FRAME * BATCH_FRAMES);
                    }
                }
                Endpoint::End { net, duration } => {
                    if !batch.is_empty() {
                        recognizer.do_send(Heard::Audio(std::mem::take(batch)));
                    }
                    recognizer.do_send(Heard::End {
                        net,
                        lost_frames: lost_total.saturating_sub(*lost_at_start),
                        duration,
                    });
                }
            });
            if self.barge_in.caller_frame(speech, level, now) {
                playout.clear();
                barged = true;
            }
        }
        self.pending.drain(..offset);
        barged
    }

    /// Playback started or stopped.
    pub fn playing(&mut self, playing: bool, now: Instant) {
        self.barge_in.playing(playing, now);
    }

    /// A frame we played.
    pub fn played(&mut self, frame: &[i16]) {
        self.barge_in.played_level(rms(frame));
    }

    /// A telephone-event packet.
    pub fn dtmf(&mut self, timestamp: u32, payload: &[u8], parent: &Recipient<CodecEvent>) {
        for d in self.dtmf.push(timestamp, payload) {
            parent.do_send(CodecEvent::Dtmf(d));
        }
    }
}
