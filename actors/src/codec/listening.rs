//! The codec's ears in a dialog call: voice activity, utterances for the recognizer, barge-in
//! and DTMF, run on the decoded uplink inside the codec, next to the playout queue.
//!
//! It lives in the codec (not in a separate actor) because barge-in must stop playback within a
//! frame: the decision and the flush happen in the same handler, with no message in between.
//! Utterance audio leaves in batches of 100 ms, so the recognizer gets five messages per second
//! of speech rather than fifty.
//!
//! Everything here hears speech frames ([`voicegate_core::frame`]: 20 ms at 16 kHz), whatever
//! the call's PCM rate: [`SpeechFrames`] resamples the decoded uplink when the rate is another,
//! so the VAD, the endpointer's timing and the recognizer always get the audio they expect.
//! With `listen.denoise` on, [`SpeechFrames`] also denoises them (RNNoise, per call), so the
//! VAD, the endpointer, barge-in's level and the recognizer all hear the denoised audio.

use super::CodecEvent;
use crate::recognizer::Heard;
use actix::Recipient;
use std::sync::Arc;
use std::time::{Duration, Instant};
use voicegate_core::codec::Origin;
use voicegate_core::denoise::Denoise;
use voicegate_core::dtmf::{DtmfReceiver, PressRate};
use voicegate_core::frame::{SPEECH_FRAME_SAMPLES, SpeechFrames};
use voicegate_core::listen::{
    BargeIn, BargeInSettings, Endpoint, EndpointSettings, Endpointer, Vad, rms,
};
use voicegate_core::pcm::Playout;
use voicegate_core::turn::{Backchannels, BargeConfirm, Verdict};

/// What the caller's voice does to playback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Barge {
    /// Nothing.
    None,
    /// Confirmed mode: voice paused playback; words will decide.
    Pause,
    /// The caller interrupted: the playout was cleared.
    Interrupt,
    /// A pause was not an interruption: playback goes on.
    Resume,
}

/// Frames per batch sent to the recognizer.
const BATCH_FRAMES: usize = 5;

/// Settings of listening.
#[derive(Debug, Clone)]
pub struct ListenSettings {
    /// Noise suppression of the caller's speech.
    pub denoise: Denoise,
    /// Endpointing.
    pub endpoint: EndpointSettings,
    /// Barge-in.
    pub barge_in: BargeInSettings,
    /// Confirmed barge-in: what is only a backchannel (`barge_in.backchannels`,
    /// `barge_in.min_words`).
    pub backchannels: Arc<Backchannels>,
    /// Confirmed barge-in: longest pause waiting for confirming words.
    pub confirm: Duration,
    /// Confirmed barge-in: how long a confirming partial result must stand.
    pub confirm_stable: Duration,
    /// Key presses reported per second, at most (`listen.max_key_presses_per_s`; 0: no limit).
    pub max_key_presses_per_s: u32,
}

/// Per-call listening state.
pub struct Listening {
    vad: Vad,
    endpointer: Endpointer,
    barge_in: BargeIn,
    /// A confirmed barge-in's second stage.
    confirm: BargeConfirm,
    dtmf: DtmfReceiver,
    /// Bounds the key presses reported.
    presses: PressRate,
    /// Where utterances go.
    recognizer: Recipient<Heard>,
    /// Decoded audio, as speech frames.
    frames: SpeechFrames,
    /// Utterance audio waiting to be sent.
    batch: Vec<i16>,
    /// The uplink's lost-packet count when the current utterance started.
    lost_at_start: u64,
}

impl Listening {
    /// Listening to PCM at `pcm_rate` Hz that sends utterances to `recognizer`.
    pub fn new(s: ListenSettings, pcm_rate: u32, recognizer: Recipient<Heard>) -> Self {
        let frames = SpeechFrames::new(pcm_rate, s.denoise).expect(
            "settings validation built SpeechFrames at media.pcm_rate, with the denoiser, at startup",
        );
        Listening {
            vad: Vad::new(),
            endpointer: Endpointer::new(s.endpoint),
            barge_in: BargeIn::new(s.barge_in),
            confirm: BargeConfirm::new((*s.backchannels).clone(), s.confirm, s.confirm_stable),
            dtmf: DtmfReceiver::new(),
            presses: PressRate::new(s.max_key_presses_per_s),
            recognizer,
            frames,
            batch: Vec::with_capacity(SPEECH_FRAME_SAMPLES * BATCH_FRAMES),
            lost_at_start: 0,
        }
    }

    /// Decoded caller audio. Returns what the caller's voice does to playback: an interrupt
    /// (the playout was cleared), a pause (confirmed mode; nothing cleared), or, when a pause
    /// found no confirming words in time, a resume.
    pub fn heard(
        &mut self,
        pcm: &[i16],
        origin: Origin,
        lost_total: u64,
        now: Instant,
        playout: &mut Playout,
    ) -> Barge {
        let mut barged = self.check_pause(now, playout);
        self.frames.push(pcm);
        while let Some(frame) = self.frames.next_frame() {
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
                    if batch.len() >= SPEECH_FRAME_SAMPLES * BATCH_FRAMES {
                        recognizer.do_send(Heard::Audio(std::mem::take(batch)));
                        batch.reserve(SPEECH_FRAME_SAMPLES * BATCH_FRAMES);
                    }
                }
                Endpoint::End {
                    net,
                    duration,
                    trailing,
                } => {
                    if !batch.is_empty() {
                        recognizer.do_send(Heard::Audio(std::mem::take(batch)));
                    }
                    recognizer.do_send(Heard::End {
                        net,
                        lost_frames: lost_total.saturating_sub(*lost_at_start),
                        duration,
                        trailing,
                    });
                }
            });
            if self.barge_in.caller_frame(speech, level, now) {
                if self.barge_in.confirmed() {
                    self.confirm.pause(now);
                    barged = Barge::Pause;
                } else {
                    playout.clear();
                    barged = Barge::Interrupt;
                }
            }
        }
        barged
    }

    /// The recognizer's hypothesis for the caller's utterance changed (`last`: its final
    /// result, empty when nothing was recognized; `confidence`: the recognizer's, if it gives
    /// one): endpointing takes it as a hint, and a paused playout gets its verdict when the
    /// words decide it.
    pub fn hypothesis(
        &mut self,
        text: &str,
        confidence: Option<f32>,
        last: bool,
        now: Instant,
        playout: &mut Playout,
    ) -> Barge {
        if !last {
            self.endpointer.hypothesis(text);
        }
        let verdict = self.confirm.heard(text, confidence, last, now);
        self.carry_out(verdict, playout)
    }

    fn carry_out(&mut self, verdict: Verdict, playout: &mut Playout) -> Barge {
        match verdict {
            Verdict::Wait => Barge::None,
            Verdict::Interrupt => {
                playout.clear();
                Barge::Interrupt
            }
            Verdict::Resume => {
                self.barge_in.rearm();
                Barge::Resume
            }
        }
    }

    /// Time passed: a confirming partial that stood interrupts; a pause that no words
    /// confirmed in time resumes.
    pub fn check_pause(&mut self, now: Instant, playout: &mut Playout) -> Barge {
        let verdict = self.confirm.tick(now);
        self.carry_out(verdict, playout)
    }

    /// A pause is waiting for its verdict until this instant.
    pub fn pause_deadline(&self) -> Option<Instant> {
        self.confirm.deadline()
    }

    /// Playback was flushed (the app interrupted): no pause is pending any more.
    pub fn flushed(&mut self) {
        self.confirm.clear();
    }

    /// A session changed the endpointing silence or barge-in.
    pub fn set_session(&mut self, end_silence_ms: u32, barge_in: bool) {
        self.endpointer.set_end_silence_ms(end_silence_ms);
        self.barge_in.set_enabled(barge_in);
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
            if self.presses.allow(Instant::now()) {
                parent.do_send(CodecEvent::Dtmf(d));
            } else {
                crate::metrics::metrics().limit_hit(crate::metrics::Limit::KeyPresses);
            }
        }
    }
}
