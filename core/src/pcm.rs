//! The downlink's playout queue: PCM waiting for the pacer, in whole frames.
//!
//! Producers (the echo path now, speech synthesis later) push PCM of any length; the pacer pops
//! exactly one frame per slot. Samples live in one ring buffer that is allocated once, so the
//! per-frame path does not allocate. The queue starts a talkspurt only once `prebuffer` frames
//! are waiting, which absorbs the jitter of a real-time producer (the echo path is fed at the
//! caller's packet rate); a producer that runs ahead of real time fills it at once. `max_frames`
//! bounds latency: when a real-time producer runs slightly faster than our clock, the oldest
//! audio is dropped and counted rather than letting delay grow for the whole call.

use std::collections::VecDeque;

/// PCM queued for playout.
#[derive(Debug)]
pub struct Playout {
    samples: VecDeque<i16>,
    frame: usize,
    prebuffer: usize,
    max_frames: usize,
    /// Frames dropped because the queue was full.
    dropped: u64,
    /// The producer said no more audio follows for now: a short last frame may be padded.
    ending: bool,
}

impl Playout {
    /// A queue of `frame`-sample frames that starts after `prebuffer` frames and holds at most
    /// `max_frames`.
    pub fn new(frame: usize, prebuffer: usize, max_frames: usize) -> Self {
        let max_frames = max_frames.max(prebuffer).max(1);
        Playout {
            samples: VecDeque::with_capacity(frame * (max_frames + 1)),
            frame,
            prebuffer: prebuffer.max(1),
            max_frames,
            dropped: 0,
            ending: false,
        }
    }

    /// Appends PCM. When over capacity the oldest whole frames are dropped.
    pub fn push(&mut self, pcm: &[i16]) {
        self.ending = false;
        self.samples.extend(pcm.iter().copied());
        let cap = self.frame * self.max_frames;
        if self.samples.len() > cap {
            let excess = self.samples.len() - cap;
            let frames = excess.div_ceil(self.frame);
            let drop = (frames * self.frame).min(self.samples.len());
            self.samples.drain(..drop);
            self.dropped += frames as u64;
        }
    }

    /// Marks the end of the current stream of audio: a trailing partial frame is played,
    /// padded with silence, instead of waiting for more.
    pub fn finish(&mut self) {
        self.ending = true;
    }

    /// Drops everything queued (an interrupt).
    pub fn clear(&mut self) {
        self.samples.clear();
        self.ending = false;
    }

    /// Whether a stopped pacer should start a talkspurt now.
    pub fn ready_to_start(&self) -> bool {
        self.samples.len() >= self.prebuffer * self.frame
            || (self.ending && !self.samples.is_empty())
    }

    /// Moves the next frame into `out` (which must be one frame long). Returns false when there
    /// is not a whole frame (or, after [`finish`](Self::finish), nothing at all).
    pub fn pop(&mut self, out: &mut [i16]) -> bool {
        debug_assert_eq!(out.len(), self.frame);
        let n = self.samples.len();
        if n >= self.frame {
            for (o, s) in out.iter_mut().zip(self.samples.drain(..self.frame)) {
                *o = s;
            }
            true
        } else if self.ending && n > 0 {
            for (i, o) in out.iter_mut().enumerate() {
                *o = if i < n { self.samples[i] } else { 0 };
            }
            self.samples.clear();
            true
        } else {
            false
        }
    }

    /// Whole frames waiting.
    pub fn frames(&self) -> usize {
        self.samples.len() / self.frame
    }

    /// Frames dropped for capacity so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reframes_any_chunk_sizes() {
        let mut q = Playout::new(4, 1, 100);
        q.push(&[1, 2, 3]);
        let mut f = [0; 4];
        assert!(!q.ready_to_start());
        assert!(!q.pop(&mut f));
        q.push(&[4, 5, 6, 7, 8, 9]);
        assert!(q.pop(&mut f));
        assert_eq!(f, [1, 2, 3, 4]);
        assert!(q.pop(&mut f));
        assert_eq!(f, [5, 6, 7, 8]);
        assert!(!q.pop(&mut f));
        assert_eq!(q.frames(), 0);
    }

    #[test]
    fn prebuffer_delays_the_start() {
        let mut q = Playout::new(2, 3, 100);
        q.push(&[1, 1, 2, 2]);
        assert!(!q.ready_to_start());
        q.push(&[3, 3]);
        assert!(q.ready_to_start());
    }

    #[test]
    fn finish_pads_the_last_partial_frame() {
        let mut q = Playout::new(4, 5, 100);
        q.push(&[1, 2, 3, 4, 5]);
        q.finish();
        assert!(q.ready_to_start());
        let mut f = [9; 4];
        assert!(q.pop(&mut f));
        assert_eq!(f, [1, 2, 3, 4]);
        assert!(q.pop(&mut f));
        assert_eq!(f, [5, 0, 0, 0]);
        assert!(!q.pop(&mut f));
    }

    #[test]
    fn overflow_drops_the_oldest_frames() {
        let mut q = Playout::new(2, 1, 2);
        q.push(&[1, 1, 2, 2, 3, 3]);
        assert_eq!(q.dropped(), 1);
        let mut f = [0; 2];
        assert!(q.pop(&mut f));
        assert_eq!(f, [2, 2]);
    }

    #[test]
    fn clear_empties() {
        let mut q = Playout::new(2, 1, 10);
        q.push(&[1, 1, 2, 2]);
        q.clear();
        assert_eq!(q.frames(), 0);
        let mut f = [0; 2];
        assert!(!q.pop(&mut f));
    }
}
