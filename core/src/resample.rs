//! Streaming sample-rate conversion for speech engines whose native rate is not the call's.
//!
//! Wraps rubato's FFT resampler (a band-limited, anti-aliased synchronous resampler) for mono
//! i16 audio that arrives in chunks of any size: input is collected into the resampler's fixed
//! chunk, the filter's start-up delay is trimmed so audio is not shifted, and [`finish`] flushes
//! the tail. The chunk is small (256 frames by default) so the first audio is not held back long;
//! a stream that arrives in fixed pieces can choose a chunk that matches them
//! ([`StreamResampler::with_chunk`]). The original resampled each chunk on its own without a
//! filter, which aliased and clicked.
//!
//! [`finish`]: StreamResampler::finish

use audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Indexing, Resampler};

/// Input frames per resampler call, unless the stream chooses another.
const CHUNK: usize = 256;

/// Why a resampler could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot resample {from} Hz to {to} Hz: {detail}")]
pub struct ResampleError {
    from: u32,
    to: u32,
    detail: String,
}

/// Converts one stream of mono PCM from one rate to another.
pub struct StreamResampler {
    /// `None` when the rates are equal (samples pass through).
    inner: Option<Fft<f32>>,
    /// Input frames per resampler call.
    chunk: usize,
    ratio: f64,
    /// Input waiting for a whole chunk.
    pending: Vec<f32>,
    /// Output scratch.
    out: Vec<f32>,
    /// Output samples still to drop for the filter delay.
    delay_left: usize,
    /// Input samples taken, output samples given: to size the tail.
    taken: usize,
    given: usize,
}

impl StreamResampler {
    /// A resampler from `from` Hz to `to` Hz.
    pub fn new(from: u32, to: u32) -> Result<Self, ResampleError> {
        Self::with_chunk(from, to, CHUNK)
    }

    /// A resampler from `from` Hz to `to` Hz that converts `chunk` input samples at a time: audio
    /// comes out only in whole chunks, so a chunk that matches how the input arrives holds
    /// nothing back beyond the filter's own delay.
    pub fn with_chunk(from: u32, to: u32, chunk: usize) -> Result<Self, ResampleError> {
        if from == to {
            return Ok(StreamResampler {
                inner: None,
                chunk,
                ratio: 1.0,
                pending: Vec::new(),
                out: Vec::new(),
                delay_left: 0,
                taken: 0,
                given: 0,
            });
        }
        let inner = Fft::<f32>::new(from as usize, to as usize, chunk, 1, FixedSync::Input)
            .map_err(|e| ResampleError {
                from,
                to,
                detail: e.to_string(),
            })?;
        let delay = inner.output_delay();
        let max_out = inner.output_frames_max();
        Ok(StreamResampler {
            inner: Some(inner),
            chunk,
            ratio: f64::from(to) / f64::from(from),
            pending: Vec::with_capacity(chunk),
            out: vec![0.0; max_out],
            delay_left: delay,
            taken: 0,
            given: 0,
        })
    }

    /// Converts `pcm`, appending what is ready to `out`.
    pub fn push(&mut self, pcm: &[i16], out: &mut Vec<i16>) {
        if self.inner.is_none() {
            out.extend_from_slice(pcm);
            return;
        }
        self.taken += pcm.len();
        for &s in pcm {
            self.pending.push(f32::from(s) / 32768.0);
            if self.pending.len() == self.chunk {
                self.run(self.chunk, out);
                self.pending.clear();
            }
        }
    }

    /// Flushes the tail: everything pushed comes out (at the output rate).
    pub fn finish(&mut self, out: &mut Vec<i16>) {
        if self.inner.is_none() {
            return;
        }
        let want = (self.taken as f64 * self.ratio).round() as usize;
        // Feed silence until the output covers all the input (the filter holds some back).
        let mut guard = 0;
        while self.given < want && guard < 16 {
            let partial = self.pending.len();
            self.pending.resize(self.chunk, 0.0);
            self.run(partial.max(1), out);
            self.pending.clear();
            guard += 1;
        }
        if self.given > want {
            let extra = self.given - want;
            out.truncate(out.len().saturating_sub(extra));
            self.given = want;
        }
    }

    fn run(&mut self, partial: usize, out: &mut Vec<i16>) {
        let Some(inner) = self.inner.as_mut() else {
            return;
        };
        let Ok(input) = InterleavedSlice::new(&self.pending[..], 1, self.chunk) else {
            return;
        };
        let frames_out = self.out.len();
        let Ok(mut output) = InterleavedSlice::new_mut(&mut self.out[..], 1, frames_out) else {
            return;
        };
        let indexing = Indexing {
            input_offset: 0,
            output_offset: 0,
            partial_len: (partial < self.chunk).then_some(partial),
            active_channels_mask: None,
        };
        let Ok((_, produced)) = inner.process_into_buffer(&input, &mut output, Some(&indexing))
        else {
            return;
        };
        let skip = self.delay_left.min(produced);
        self.delay_left -= skip;
        for &s in &self.out[skip..produced] {
            out.push((s * 32768.0).round().clamp(-32768.0, 32767.0) as i16);
        }
        self.given += produced - skip;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listen::rms;
    use crate::tone::{Tone, dominant_frequency};

    fn convert(from: u32, to: u32, input: &[i16], chunk: usize) -> Vec<i16> {
        let mut r = StreamResampler::new(from, to).unwrap();
        let mut out = Vec::new();
        for c in input.chunks(chunk) {
            r.push(c, &mut out);
        }
        r.finish(&mut out);
        out
    }

    #[test]
    fn keeps_duration_and_pitch() {
        for (from, to) in [
            (22_050, 16_000),
            (24_000, 16_000),
            (16_000, 48_000),
            (8_000, 16_000),
        ] {
            let mut t = Tone::new(from, 440.0, 8000.0);
            let mut input = vec![0; from as usize]; // one second
            t.fill(&mut input);
            let out = convert(from, to, &input, 333);
            assert_eq!(
                out.len(),
                to as usize,
                "{from}->{to}: one second stays one second"
            );
            let f = dominant_frequency(&out[to as usize / 10..], to, 100.0, 2000.0);
            assert!((f - 440.0).abs() <= 2.0, "{from}->{to}: {f} Hz");
            let level = rms(&out[to as usize / 10..to as usize * 9 / 10]);
            assert!(
                (level - 8000.0 / 2f64.sqrt()).abs() < 300.0,
                "{from}->{to}: level {level}"
            );
        }
    }

    #[test]
    fn filters_what_the_new_rate_cannot_hold() {
        // 10 kHz at 24 kHz input is above the 8 kHz Nyquist of 16 kHz output: it must be
        // removed, not folded down to 6 kHz.
        let mut t = Tone::new(24_000, 10_000.0, 8000.0);
        let mut input = vec![0; 24_000];
        t.fill(&mut input);
        let out = convert(24_000, 16_000, &input, 480);
        let level = rms(&out[1600..14_400]);
        assert!(level < 100.0, "aliased energy left: rms {level}");
    }

    #[test]
    fn same_rate_passes_through() {
        let input: Vec<i16> = (0..1000).map(|i| i as i16).collect();
        assert_eq!(convert(16_000, 16_000, &input, 77), input);
    }

    #[test]
    fn streaming_matches_one_shot() {
        let mut t = Tone::new(22_050, 300.0, 5000.0);
        let mut input = vec![0; 22_050];
        t.fill(&mut input);
        let a = convert(22_050, 16_000, &input, 22_050);
        let b = convert(22_050, 16_000, &input, 100);
        assert_eq!(a, b, "chunking must not change the result");
    }
}
