//! Test signals and their measurement: a sine generator and the dominant frequency. (The RMS
//! level lives in [`crate::listen`], where barge-in compares levels.)
//!
//! Used by the integration tests, the browser test's expectations and the load generator, so the
//! same arithmetic judges every "did the audio come back" question.

/// A continuous sine wave, phase kept across calls.
#[derive(Debug, Clone)]
pub struct Tone {
    /// Phase advance per sample, in radians.
    step: f64,
    /// Current phase.
    phase: f64,
    /// Peak amplitude on the i16 scale.
    amplitude: f64,
}

impl Tone {
    /// A `freq` Hz sine at `rate`, peaking at `amplitude`.
    pub fn new(rate: u32, freq: f64, amplitude: f64) -> Self {
        Tone {
            step: std::f64::consts::TAU * freq / f64::from(rate),
            phase: 0.0,
            amplitude,
        }
    }

    /// Fills `out` with the next samples.
    pub fn fill(&mut self, out: &mut [i16]) {
        for s in out {
            *s = (self.phase.sin() * self.amplitude) as i16;
            self.phase = (self.phase + self.step) % std::f64::consts::TAU;
        }
    }
}

/// The frequency between `lo` and `hi` Hz with the most energy in `pcm`, to 1 Hz, by the
/// Goertzel algorithm (a coarse 5 Hz scan, then 1 Hz around the best).
pub fn dominant_frequency(pcm: &[i16], rate: u32, lo: f64, hi: f64) -> f64 {
    let power = |f: f64| {
        let w = std::f64::consts::TAU * f / f64::from(rate);
        let coeff = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for &x in pcm {
            let s0 = f64::from(x) + coeff * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        s1 * s1 + s2 * s2 - coeff * s1 * s2
    };
    let best = |from: f64, to: f64, step: f64| {
        let mut f = from;
        let (mut best_f, mut best_p) = (from, f64::MIN);
        while f <= to {
            let p = power(f);
            if p > best_p {
                best_p = p;
                best_f = f;
            }
            f += step;
        }
        best_f
    };
    let coarse = best(lo, hi, 5.0);
    best((coarse - 5.0).max(lo), (coarse + 5.0).min(hi), 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listen::rms;

    #[test]
    fn tone_has_its_frequency_and_level() {
        let mut t = Tone::new(16_000, 440.0, 10_000.0);
        let mut pcm = vec![0; 16_000];
        t.fill(&mut pcm);
        let f = dominant_frequency(&pcm, 16_000, 100.0, 2000.0);
        assert!((f - 440.0).abs() <= 1.0, "{f}");
        let level = rms(&pcm);
        assert!((level - 10_000.0 / 2f64.sqrt()).abs() < 50.0, "{level}");
    }

    #[test]
    fn phase_is_continuous_across_calls() {
        let mut a = Tone::new(16_000, 1000.0, 1000.0);
        let mut b = Tone::new(16_000, 1000.0, 1000.0);
        let mut one = vec![0; 640];
        a.fill(&mut one);
        let mut two = vec![0; 640];
        b.fill(&mut two[..320]);
        b.fill(&mut two[320..]);
        assert_eq!(one, two);
    }
}
