//! Noise suppression of the caller's speech (`listen.denoise`): RNNoise, through `nnnoiseless`,
//! a pure-Rust port of Xiph's recurrent-network denoiser.
//!
//! RNNoise works on 10 ms frames of 48 kHz audio (480 samples, on the i16 scale in `f32`); its
//! bands and its pitch filter are laid out for that rate, so 16 kHz audio cannot be handed to it
//! as it is. [`Denoiser`] takes the speech path's 16 kHz audio, resamples it to 48 kHz
//! (band-limited: nothing above 8 kHz is made up), denoises it frame by frame and resamples it
//! back. Both resamplers convert one 10 ms piece at a time (160 samples in, 480 out; 480 in,
//! 160 out), so nothing waits for a larger chunk.
//!
//! What it costs: the two resamplers' filters and RNNoise's own overlap-add window hold audio
//! back, [`LATENCY_MS`] in all (measured in the tests), so with denoising on, the VAD, the
//! endpointer and barge-in hear the caller that much later. The CPU per second of audio is in
//! BENCHMARKS.md. The state is per call and built only when denoising is on; after the first few
//! frames the per-frame work allocates nothing (every buffer is kept and reused, and the FFT
//! scratch `nnnoiseless` uses is kept per thread).
//!
//! The echo test never goes through here: it returns what the caller sent, noise included.

use crate::frame::SPEECH_RATE;
use crate::resample::{ResampleError, StreamResampler};
use nnnoiseless::DenoiseState;

/// RNNoise's rate: it denoises 48 kHz audio only.
const RNNOISE_RATE: u32 = 48_000;

/// RNNoise's frame: 10 ms at [`RNNOISE_RATE`].
const RNNOISE_FRAME: usize = DenoiseState::FRAME_SIZE;

/// 10 ms at [`SPEECH_RATE`]: the resamplers' chunk on the speech side.
const SPEECH_PIECE: usize = (SPEECH_RATE / 100) as usize;

// One RNNoise frame is one speech-rate piece, resampled.
const _: () = assert!(RNNOISE_FRAME == SPEECH_PIECE * (RNNOISE_RATE / SPEECH_RATE) as usize);

/// How much later the speech path hears the caller with denoising on, in milliseconds: the
/// 16 → 48 kHz and 48 → 16 kHz filters' delays and RNNoise's 10 ms window overlap, with the
/// 10 ms pieces audio is gathered in. `delay_is_what_latency_ms_says` measures it.
pub const LATENCY_MS: u32 = 30;

/// Whether the caller's speech is denoised before the speech path hears it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Denoise {
    /// The speech path hears the decoded audio as it is.
    #[default]
    Off,
    /// RNNoise ([`Denoiser`]).
    Rnnoise,
}

impl Denoise {
    /// Every choice, for validation messages.
    pub const ALL: [Denoise; 2] = [Denoise::Off, Denoise::Rnnoise];

    /// The choice's name in the configuration (`listen.denoise`).
    pub fn label(self) -> &'static str {
        match self {
            Denoise::Off => "off",
            Denoise::Rnnoise => "rnnoise",
        }
    }

    /// The choice named `label`, if any.
    pub fn from_label(label: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.label() == label)
    }
}

/// RNNoise for one call's 16 kHz speech audio.
pub struct Denoiser {
    /// 16 kHz to 48 kHz, one 10 ms piece at a time.
    up: StreamResampler,
    /// 48 kHz to 16 kHz, one RNNoise frame at a time.
    down: StreamResampler,
    /// RNNoise's state: its recurrent network's memory and its window.
    state: Box<DenoiseState<'static>>,
    /// 48 kHz audio not yet denoised (less than a frame between calls).
    wide: Vec<i16>,
    /// Denoised 48 kHz audio on its way back down.
    cleaned: Vec<i16>,
    /// One RNNoise frame in, and out.
    frame_in: [f32; RNNOISE_FRAME],
    frame_out: [f32; RNNOISE_FRAME],
}

impl Denoiser {
    /// A denoiser with a fresh state. Fails only if the resampler cannot convert between 16 and
    /// 48 kHz (it can: settings validation builds one at startup, so a call never sees it).
    pub fn new() -> Result<Self, ResampleError> {
        Ok(Denoiser {
            up: StreamResampler::with_chunk(SPEECH_RATE, RNNOISE_RATE, SPEECH_PIECE)?,
            down: StreamResampler::with_chunk(RNNOISE_RATE, SPEECH_RATE, RNNOISE_FRAME)?,
            state: DenoiseState::new(),
            wide: Vec::with_capacity(RNNOISE_FRAME * 4),
            cleaned: Vec::with_capacity(RNNOISE_FRAME * 4),
            frame_in: [0.0; RNNOISE_FRAME],
            frame_out: [0.0; RNNOISE_FRAME],
        })
    }

    /// Denoises `pcm` (16 kHz), appending the denoised audio that is ready to `out` (16 kHz,
    /// [`LATENCY_MS`] behind; about as many samples as came in, in 10 ms pieces).
    pub fn process(&mut self, pcm: &[i16], out: &mut Vec<i16>) {
        self.up.push(pcm, &mut self.wide);
        let mut at = 0;
        while let Some(frame) = self.wide.get(at..at + RNNOISE_FRAME) {
            for (x, &s) in self.frame_in.iter_mut().zip(frame) {
                *x = f32::from(s);
            }
            self.state
                .process_frame(&mut self.frame_out, &self.frame_in);
            self.cleaned.extend(
                self.frame_out
                    .iter()
                    .map(|&x| x.round().clamp(-32768.0, 32767.0) as i16),
            );
            at += RNNOISE_FRAME;
        }
        self.wide.drain(..at);
        self.down.push(&self.cleaned, out);
        self.cleaned.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{SPEECH_FRAME_SAMPLES, SpeechFrames};
    use crate::listen::rms;
    use crate::noise::{fan, mix_at_snr};

    /// Counts this thread's allocations, so a test can check a stretch of work makes none (the
    /// other tests' threads do not disturb the count).
    struct CountingAlloc;

    thread_local! {
        static ALLOCATIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    // SAFETY: every call is passed on to the system allocator unchanged; counting touches only
    // a const-initialized thread-local `Cell`, which never allocates.
    unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
        unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
            ALLOCATIONS.with(|a| a.set(a.get() + 1));
            // SAFETY: the caller's contract is the system allocator's.
            unsafe { std::alloc::System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
            // SAFETY: as above.
            unsafe { std::alloc::System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(
            &self,
            ptr: *mut u8,
            layout: std::alloc::Layout,
            new_size: usize,
        ) -> *mut u8 {
            ALLOCATIONS.with(|a| a.set(a.get() + 1));
            // SAFETY: as above.
            unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static COUNTING: CountingAlloc = CountingAlloc;

    #[test]
    fn after_the_first_frames_denoising_allocates_nothing() {
        let speech = speech();
        let noisy = mix_at_snr(&speech, &fan(SPEECH_RATE, speech.len(), 4), 5.0);
        let mut frames = SpeechFrames::new(SPEECH_RATE, Denoise::Rnnoise).unwrap();
        let mut heard = 0;
        let mut run = |pcm: &[i16]| {
            for piece in pcm.chunks_exact(SPEECH_FRAME_SAMPLES) {
                frames.push(piece);
                while frames.next_frame().is_some() {
                    heard += 1;
                }
            }
        };
        // Warm-up: the buffers reach their working size, the FFT keeps its scratch.
        run(&noisy[..SPEECH_FRAME_SAMPLES * 10]);
        let before = ALLOCATIONS.with(|a| a.get());
        run(&noisy[SPEECH_FRAME_SAMPLES * 10..]);
        let allocations = ALLOCATIONS.with(|a| a.get()) - before;
        assert!(heard > 50, "{heard} frames");
        assert_eq!(allocations, 0, "allocations while denoising {heard} frames");
    }

    #[test]
    fn labels_round_trip() {
        for d in Denoise::ALL {
            assert_eq!(Denoise::from_label(d.label()), Some(d));
        }
        assert_eq!(Denoise::from_label("simple"), None);
        assert_eq!(Denoise::default(), Denoise::Off);
    }

    /// Runs `pcm` through a fresh denoiser in 20 ms speech frames, then enough silence to get
    /// the held-back audio out; returns as many samples as went in, aligned with the input.
    fn denoised(pcm: &[i16]) -> Vec<i16> {
        let mut d = Denoiser::new().unwrap();
        let mut out = Vec::new();
        for frame in pcm.chunks(SPEECH_FRAME_SAMPLES) {
            d.process(frame, &mut out);
        }
        d.process(&[0; SPEECH_FRAME_SAMPLES * 4], &mut out);
        let delay = (LATENCY_MS * SPEECH_RATE / 1000) as usize;
        out.drain(..delay);
        out.truncate(pcm.len());
        out
    }

    /// The fixture's speech ("turn on the kitchen lights", espeak-ng) at the speech rate.
    fn speech() -> Vec<i16> {
        let wav: &[u8] = include_bytes!("../fixtures/kitchen-lights.wav");
        // espeak-ng writes the plain 44-byte header: mono 16-bit PCM at 22 050 Hz.
        assert_eq!((&wav[..4], &wav[36..40]), (&b"RIFF"[..], &b"data"[..]));
        let rate = u32::from_le_bytes(wav[24..28].try_into().unwrap());
        let pcm: Vec<i16> = wav[44..]
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        let mut r = StreamResampler::new(rate, SPEECH_RATE).unwrap();
        let mut out = Vec::new();
        r.push(&pcm, &mut out);
        r.finish(&mut out);
        out
    }

    /// Mean energy (mean square) of the frames in `range`, in dB.
    fn energy_db(pcm: &[i16], frames: std::ops::Range<usize>) -> f64 {
        let e: f64 = frames
            .clone()
            .map(|i| rms(&pcm[i * SPEECH_FRAME_SAMPLES..(i + 1) * SPEECH_FRAME_SAMPLES]).powi(2))
            .sum::<f64>()
            / frames.len() as f64;
        10.0 * e.max(1e-9).log10()
    }

    #[test]
    fn delay_is_what_latency_ms_says() {
        // Half a second of silence, the speech, half a second of silence, in whole frames.
        let mut pcm = vec![0i16; SPEECH_RATE as usize / 2];
        pcm.extend_from_slice(&speech());
        pcm.resize(pcm.len().next_multiple_of(SPEECH_FRAME_SAMPLES) + 8000, 0);
        let mut frames = SpeechFrames::new(SPEECH_RATE, Denoise::Rnnoise).unwrap();
        let mut out = Vec::new();
        for frame in pcm.chunks(SPEECH_FRAME_SAMPLES) {
            frames.push(frame);
            while let Some(f) = frames.next_frame() {
                out.extend_from_slice(f);
            }
        }
        // Where the speech sits in the output against the input: the lag that lines them up.
        let score = |lag: usize| -> f64 {
            (0..pcm.len() - 1600)
                .map(|i| f64::from(pcm[i]) * f64::from(out.get(i + lag).copied().unwrap_or(0)))
                .sum()
        };
        let offset = (0..1600)
            .max_by(|&a, &b| score(a).total_cmp(&score(b)))
            .unwrap();
        // A frame that comes out holds input `offset` older than the newest, and frames are
        // still held back: together, how long after it went in the audio is heard.
        let held = pcm.len() - out.len();
        let ms = (offset + held) as f64 * 1000.0 / f64::from(SPEECH_RATE);
        assert!(
            (ms - f64::from(LATENCY_MS)).abs() <= 1.0,
            "the denoiser delays by {ms} ms"
        );
    }

    /// The noisy fixture: a second of fan noise (brown noise with a 100 Hz hum), the speech
    /// with the noise under it at 5 dB SNR, another second of noise. The noise-only frames must
    /// lose at least 30 dB of their energy (measured: 53.5 dB), the speech frames keep theirs
    /// within 1.5 dB of the clean speech's (measured: +0.1 dB).
    #[test]
    fn fan_noise_drops_and_speech_stays() {
        let speech = speech();
        let second = SPEECH_RATE as usize;
        let mut clean = vec![0i16; second];
        clean.extend_from_slice(&speech);
        clean.resize(clean.len() + second, 0);
        let noisy = mix_at_snr(&clean, &fan(SPEECH_RATE, clean.len(), 1), 5.0);
        let out = denoised(&noisy);
        let frames = clean.len() / SPEECH_FRAME_SAMPLES;
        let speech_start = second / SPEECH_FRAME_SAMPLES;
        let speech_end = speech_start + speech.len() / SPEECH_FRAME_SAMPLES;
        // Noise only: before the speech, and from 100 ms after it (the speech's last sounds
        // fade out into the first frames after it).
        let noise_only = |pcm: &[i16]| {
            let before = energy_db(pcm, 0..speech_start);
            let after = energy_db(pcm, speech_end + 5..frames);
            10.0 * ((10f64.powf(before / 10.0) + 10f64.powf(after / 10.0)) / 2.0).log10()
        };
        let drop = noise_only(&noisy) - noise_only(&out);
        assert!(drop >= 30.0, "noise-only frames dropped by {drop:.1} dB");
        let kept =
            energy_db(&out, speech_start..speech_end) - energy_db(&clean, speech_start..speech_end);
        assert!(kept.abs() <= 1.5, "speech frames changed by {kept:.1} dB");
    }
}
