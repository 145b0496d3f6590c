//! Deterministic background noise for tests and benchmarks, and mixing at a chosen
//! signal-to-noise ratio: what the denoiser's tests and the load generator's `denoise` mode put
//! under the caller's speech.
//!
//! Every generator takes a seed, so a test or a benchmark hears the same noise on every run and
//! every machine. Babble (other people talking) needs a speech synthesizer and is made by the
//! load generator from several voices; the rest is here.

use crate::frame::SPEECH_FRAME_SAMPLES;
use crate::listen::rms;

/// A small fast generator (xorshift64*): the same numbers for the same seed everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator started from `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// The next number in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The next number in [-1, 1).
    pub fn next_signed(&mut self) -> f64 {
        self.next_f64() * 2.0 - 1.0
    }
}

/// A fan: brown (1/f²) noise, gently low-passed, with a mains hum at 100 Hz and its harmonics
/// riding on it; `samples` at `rate`, about 3000 RMS on the i16 scale (mix it at an SNR with
/// [`mix_at_snr`]).
pub fn fan(rate: u32, samples: usize, seed: u64) -> Vec<i16> {
    let mut rng = Rng::new(seed);
    let dt = 1.0 / f64::from(rate);
    let (mut brown, mut low) = (0.0f64, 0.0f64);
    // A one-pole low-pass at about 2 kHz: a fan's rush, not a hiss.
    let a = 1.0 - (-std::f64::consts::TAU * 2000.0 * dt).exp();
    let out: Vec<f64> = (0..samples)
        .map(|i| {
            // A leaky integrator of white noise: brown noise that does not wander off.
            brown = brown * 0.995 + rng.next_signed() * 0.1;
            low += a * (brown - low);
            let t = i as f64 * dt;
            let hum: f64 = [(100.0, 0.25), (200.0, 0.12), (300.0, 0.06)]
                .iter()
                .map(|&(f, g)| g * (std::f64::consts::TAU * f * t).sin())
                .sum();
            low + hum
        })
        .collect();
    normalized(&out, 3000.0)
}

/// Typing: key clicks (a few milliseconds of decaying, high-passed noise each) at irregular
/// intervals, about eight a second, with silence between them; `samples` at `rate`, about 1000
/// RMS on the i16 scale (the clicks peak about twenty times higher).
pub fn keyboard(rate: u32, samples: usize, seed: u64) -> Vec<i16> {
    let mut rng = Rng::new(seed);
    let mut out = vec![0.0f64; samples];
    let per_ms = f64::from(rate) / 1000.0;
    let mut at = (rng.next_f64() * 100.0 * per_ms) as usize;
    while at < samples {
        // A press and, about 80 ms later, a softer release.
        for (offset_ms, gain) in [(0.0, 1.0), (60.0 + rng.next_f64() * 40.0, 0.5)] {
            let start = at + (offset_ms * per_ms) as usize;
            let len = (6.0 * per_ms) as usize;
            let mut prev = 0.0;
            for k in 0..len {
                let Some(s) = out.get_mut(start + k) else {
                    break;
                };
                let white = rng.next_signed();
                // A first difference: the click's energy sits high, as a real key's does.
                let click = white - prev;
                prev = white;
                *s += gain * click * (-(k as f64) / (1.5 * per_ms)).exp();
            }
        }
        at += ((70.0 + rng.next_f64() * 110.0) * per_ms) as usize;
    }
    normalized(&out, 1000.0)
}

/// The level of speech while it is active: the RMS of the 20 ms frames (at the speech rate's
/// frame length) within 30 dB of the loudest, so pauses do not make speech look quieter than
/// it is. Zero for silence.
pub fn active_level(speech: &[i16]) -> f64 {
    let levels: Vec<f64> = speech.chunks(SPEECH_FRAME_SAMPLES).map(rms).collect();
    let loudest = levels.iter().copied().fold(0.0, f64::max);
    let active: Vec<f64> = levels
        .into_iter()
        .filter(|&l| l > 0.0 && l >= loudest / 31.6)
        .collect();
    if active.is_empty() {
        return 0.0;
    }
    (active.iter().map(|l| l * l).sum::<f64>() / active.len() as f64).sqrt()
}

/// `speech` with `noise` under it, the noise scaled so that the speech's [`active_level`] is
/// `snr_db` above the noise's RMS. The result is as long as `speech`; `noise` repeats if it is
/// shorter. Samples that would overflow are clipped.
pub fn mix_at_snr(speech: &[i16], noise: &[i16], snr_db: f64) -> Vec<i16> {
    let noise_level = rms(noise);
    let gain = if noise_level > 0.0 {
        active_level(speech) / noise_level / 10f64.powf(snr_db / 20.0)
    } else {
        0.0
    };
    speech
        .iter()
        .zip(noise.iter().cycle())
        .map(|(&s, &n)| {
            (f64::from(s) + gain * f64::from(n))
                .round()
                .clamp(-32768.0, 32767.0) as i16
        })
        .collect()
}

/// `x` scaled to `level` RMS, on the i16 scale.
fn normalized(x: &[f64], level: f64) -> Vec<i16> {
    let r = (x.iter().map(|v| v * v).sum::<f64>() / x.len().max(1) as f64).sqrt();
    let g = if r > 0.0 { level / r } else { 0.0 };
    x.iter()
        .map(|v| (v * g).round().clamp(-32768.0, 32767.0) as i16)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_makes_the_same_noise() {
        assert_eq!(fan(16_000, 4000, 7), fan(16_000, 4000, 7));
        assert_ne!(fan(16_000, 4000, 7), fan(16_000, 4000, 8));
        assert_eq!(keyboard(16_000, 4000, 7), keyboard(16_000, 4000, 7));
    }

    #[test]
    fn levels_are_as_documented() {
        let f = fan(16_000, 32_000, 1);
        assert!((rms(&f) - 3000.0).abs() < 30.0, "{}", rms(&f));
        let k = keyboard(16_000, 32_000, 1);
        assert!((rms(&k) - 1000.0).abs() < 10.0, "{}", rms(&k));
        // Typing is mostly silence between clicks.
        let quiet = k.chunks(320).filter(|c| rms(c) < 10.0).count();
        assert!(quiet > 100 / 3, "{quiet} of 100 frames quiet");
    }

    #[test]
    fn mixing_hits_the_snr() {
        // "Speech": a tone in half of the frames, silence in the others.
        let mut speech = vec![0i16; 32_000];
        for (i, frame) in speech.chunks_mut(320).enumerate() {
            if i % 2 == 0 {
                crate::tone::Tone::new(16_000, 300.0, 10_000.0).fill(frame);
            }
        }
        let noise = fan(16_000, 16_000, 3);
        let mixed = mix_at_snr(&speech, &noise, 10.0);
        assert_eq!(mixed.len(), speech.len());
        let added: Vec<i16> = mixed.iter().zip(&speech).map(|(m, s)| m - s).collect();
        let snr = 20.0 * (active_level(&speech) / rms(&added)).log10();
        assert!((snr - 10.0).abs() < 0.1, "{snr} dB");
    }
}
