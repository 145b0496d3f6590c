//! The frame a call's audio moves in, and the rate the speech path listens at: the one home of
//! "20 ms", "16 kHz", "320 samples", "48 kHz RTP clock" and "960 ticks".
//!
//! Every part of a call counts in the same 20 ms frames: the codec encodes and decodes them, the
//! pacer sends one per slot, the playout queue holds whole ones, the VAD judges one at a time,
//! the endpointer and the player count durations in them. 20 ms is the packet time browsers send
//! Opus at, and one of the three frame lengths (10, 20, 30 ms) the WebRTC VAD accepts.
//!
//! The speech path (VAD, endpointer, barge-in's speech decision, recognizers) runs at 16 kHz,
//! whatever `media.pcm_rate` the call's codec uses: the WebRTC VAD takes 8, 16, 32 or 48 kHz,
//! the pocketsphinx acoustic models are trained on 16 kHz audio, and 16 kHz is what speech
//! recognition APIs expect for telephony-grade speech. When the call's rate is another,
//! [`SpeechFrames`] resamples the caller's audio to it; at the default rate it only cuts frames.
//! It is also where the caller's speech is denoised when `listen.denoise` asks for it
//! ([`crate::denoise`]), so everything that listens hears the same, denoised audio.
//!
//! The RTP side counts in Opus's clock: 48 kHz for every Opus mode and every audio bandwidth
//! (RFC 7587 §4.1), so one 20 ms frame advances the RTP timestamp by 960 whatever the PCM rate.

use crate::denoise::{Denoise, Denoiser};
use crate::resample::{ResampleError, StreamResampler};
use std::time::Duration;

/// Length of one frame, everywhere in a call.
pub const FRAME: Duration = Duration::from_millis(FRAME_MS as u64);

/// [`FRAME`] in milliseconds, for the state machines that count durations in frames.
pub const FRAME_MS: u32 = 20;

/// Frames per second (1000 / [`FRAME_MS`]).
pub const FRAMES_PER_SECOND: u32 = 1000 / FRAME_MS;

/// The speech path's sample rate in Hz: the VAD, the endpointer and the recognizers take PCM at
/// this rate.
pub const SPEECH_RATE: u32 = 16_000;

/// Samples in one frame at [`SPEECH_RATE`]: what [`crate::listen::Vad`] judges at once.
pub const SPEECH_FRAME_SAMPLES: usize = samples_per_frame(SPEECH_RATE);

/// The RTP clock of Opus, in Hz, whatever the PCM rate (RFC 7587 §4.1).
pub const RTP_CLOCK: u32 = 48_000;

/// RTP timestamp ticks per frame: 960 at 48 kHz.
pub const RTP_TICKS_PER_FRAME: u32 = RTP_CLOCK / FRAMES_PER_SECOND;

/// Samples in one frame of mono PCM at `rate` Hz (320 at 16 kHz, 960 at 48 kHz).
pub const fn samples_per_frame(rate: u32) -> usize {
    (rate / FRAMES_PER_SECOND) as usize
}

// The facts above agree with each other; a change to one that breaks another fails the build.
const _: () = assert!(FRAME_MS * FRAMES_PER_SECOND == 1000);
const _: () = assert!(SPEECH_FRAME_SAMPLES == 320);
const _: () = assert!(RTP_TICKS_PER_FRAME == 960);

/// Cuts the caller's PCM, at the call's rate, into speech frames: [`SPEECH_FRAME_SAMPLES`]
/// samples at [`SPEECH_RATE`], resampled first when the call's rate is another.
///
/// At 16 kHz nothing is resampled and a frame is exactly the samples that came in. At any other
/// rate the resampler holds audio back (its 256-sample chunk and its filter: about 20 ms at
/// 48 kHz, up to about 60 ms at 8 and 12 kHz), so speech is judged that much later than at
/// 16 kHz; endpointing and barge-in count speech in hundreds of milliseconds, so they work the
/// same, only later by that lag. Audio pushed in pieces of any size comes out in whole frames;
/// the rest waits for the next push.
///
/// With [`Denoise::Rnnoise`] the speech-rate audio goes through a [`Denoiser`] before it is cut
/// into frames, which holds it back by another [`crate::denoise::LATENCY_MS`].
pub struct SpeechFrames {
    /// `None` when the call's rate is [`SPEECH_RATE`].
    resampler: Option<StreamResampler>,
    /// `None` when the call's speech is not denoised.
    denoiser: Option<Box<Denoiser>>,
    /// Speech-rate audio on its way from the resampler to the denoiser, when both run.
    between: Vec<i16>,
    /// Speech-rate audio not yet handed out as a frame, from `read` on.
    pending: Vec<i16>,
    /// Where the next frame starts in `pending`.
    read: usize,
}

impl SpeechFrames {
    /// Frames out of PCM at `rate` Hz, denoised or not. Fails only for a rate the resampler
    /// cannot convert from (none of the Opus rates); settings validation calls this, so a call
    /// never sees the error.
    pub fn new(rate: u32, denoise: Denoise) -> Result<Self, ResampleError> {
        let resampler = if rate == SPEECH_RATE {
            None
        } else {
            Some(StreamResampler::new(rate, SPEECH_RATE)?)
        };
        let denoiser = match denoise {
            Denoise::Off => None,
            Denoise::Rnnoise => Some(Box::new(Denoiser::new()?)),
        };
        Ok(SpeechFrames {
            resampler,
            denoiser,
            between: Vec::with_capacity(SPEECH_FRAME_SAMPLES * 2),
            pending: Vec::with_capacity(SPEECH_FRAME_SAMPLES * 2),
            read: 0,
        })
    }

    /// Takes `pcm` at the call's rate; the frames it completes come out of [`Self::next_frame`].
    pub fn push(&mut self, pcm: &[i16]) {
        self.pending.drain(..self.read);
        self.read = 0;
        match (self.resampler.as_mut(), self.denoiser.as_mut()) {
            (None, None) => self.pending.extend_from_slice(pcm),
            (Some(r), None) => r.push(pcm, &mut self.pending),
            (None, Some(d)) => d.process(pcm, &mut self.pending),
            (Some(r), Some(d)) => {
                self.between.clear();
                r.push(pcm, &mut self.between);
                d.process(&self.between, &mut self.pending);
            }
        }
    }

    /// The next whole speech frame, if one is ready.
    pub fn next_frame(&mut self) -> Option<&[i16]> {
        let end = self.read + SPEECH_FRAME_SAMPLES;
        let frame = self.pending.get(self.read..end)?;
        self.read = end;
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::OPUS_PCM_RATES;
    use crate::listen::rms;
    use crate::tone::{Tone, dominant_frequency};

    #[test]
    fn frame_sizes_at_every_opus_rate() {
        let want = [
            (8000, 160),
            (12_000, 240),
            (16_000, 320),
            (24_000, 480),
            (48_000, 960),
        ];
        for (rate, samples) in want {
            assert_eq!(samples_per_frame(rate), samples, "{rate} Hz");
        }
        assert_eq!(OPUS_PCM_RATES, want.map(|(rate, _)| rate));
    }

    /// Pushes one second of a 440 Hz tone at `rate` in 20 ms pieces; returns the frames out.
    fn one_second_at(rate: u32) -> Vec<Vec<i16>> {
        let mut frames =
            SpeechFrames::new(rate, Denoise::Off).expect("every Opus rate converts to 16 kHz");
        let mut tone = Tone::new(rate, 440.0, 8000.0);
        let mut piece = vec![0i16; samples_per_frame(rate)];
        let mut out = Vec::new();
        for _ in 0..FRAMES_PER_SECOND {
            tone.fill(&mut piece);
            frames.push(&piece);
            while let Some(f) = frames.next_frame() {
                out.push(f.to_vec());
            }
        }
        out
    }

    #[test]
    fn at_the_speech_rate_frames_are_the_input() {
        let frames = one_second_at(SPEECH_RATE);
        assert_eq!(frames.len(), FRAMES_PER_SECOND as usize);
        let mut tone = Tone::new(SPEECH_RATE, 440.0, 8000.0);
        let mut want = vec![0i16; SPEECH_FRAME_SAMPLES];
        for f in &frames {
            tone.fill(&mut want);
            assert_eq!(f, &want);
        }
    }

    #[test]
    fn other_rates_come_out_as_16_khz_frames_of_the_same_sound() {
        for rate in OPUS_PCM_RATES {
            let frames = one_second_at(rate);
            // The resampler holds audio back: a chunk (256 samples, 21 ms at 12 kHz) and its
            // filter. Nothing is lost, but up to four frames are still inside after a second.
            let n = frames.len() as u32;
            assert!(
                (FRAMES_PER_SECOND - 4..=FRAMES_PER_SECOND).contains(&n),
                "{rate} Hz: {n} frames"
            );
            assert!(frames.iter().all(|f| f.len() == SPEECH_FRAME_SAMPLES));
            let pcm: Vec<i16> = frames.concat();
            let f =
                dominant_frequency(&pcm[SPEECH_FRAME_SAMPLES * 5..], SPEECH_RATE, 100.0, 2000.0);
            assert!((f - 440.0).abs() <= 2.0, "{rate} Hz: heard {f} Hz");
        }
    }

    #[test]
    fn denoised_frames_at_every_opus_rate() {
        // Two seconds of fan noise at the call's rate: whole speech frames come out, fewer by
        // what the resamplers and the denoiser hold back, with the noise taken out.
        for rate in OPUS_PCM_RATES {
            let noise = crate::noise::fan(rate, 2 * rate as usize, 9);
            let mut frames = SpeechFrames::new(rate, Denoise::Rnnoise).unwrap();
            let mut out = Vec::new();
            for piece in noise.chunks(samples_per_frame(rate)) {
                frames.push(piece);
                while let Some(f) = frames.next_frame() {
                    assert_eq!(f.len(), SPEECH_FRAME_SAMPLES);
                    out.extend_from_slice(f);
                }
            }
            let n = out.len() / SPEECH_FRAME_SAMPLES;
            assert!(
                (2 * FRAMES_PER_SECOND as usize - 6..).contains(&n),
                "{rate} Hz: {n} frames"
            );
            let second = &out[out.len() - SPEECH_RATE as usize..];
            let drop = 20.0 * (rms(&noise) / rms(second).max(1.0)).log10();
            assert!(drop >= 30.0, "{rate} Hz: the fan dropped by {drop:.1} dB");
        }
    }

    #[test]
    fn pieces_of_any_size_make_whole_frames() {
        let mut frames = SpeechFrames::new(SPEECH_RATE, Denoise::Off).unwrap();
        frames.push(&[1; 100]);
        assert!(frames.next_frame().is_none());
        frames.push(&[2; 600]);
        let first = frames.next_frame().unwrap().to_vec();
        assert_eq!(&first[..100], &[1; 100]);
        assert_eq!(&first[100..], &[2; 220]);
        assert_eq!(frames.next_frame().unwrap(), &[2; 320]);
        assert!(frames.next_frame().is_none());
        frames.push(&[3; 260]);
        assert_eq!(frames.next_frame().unwrap()[..60], [2; 60]);
    }
}
