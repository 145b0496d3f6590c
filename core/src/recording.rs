//! `Tape`: a call's two audio streams laid on the call's clock, as a stereo recording.
//!
//! The caller's audio (left) and voicegate's (right) arrive at their own pace: 20 ms chunks as
//! packets are decoded, frames as the pacer sends them, and nothing at all while nobody speaks
//! (a silent caller may send no packets; the pacer only runs while something plays). A recording
//! must still line up with the wall clock, so each chunk is placed by *when* it passed voicegate:
//! at the sample position of that instant since the recording began, continuing right after the
//! channel's previous chunk while the stream flows (so jitter does not chop it up), and jumping to
//! the instant's position when the stream was away longer than [`RESYNC_BEHIND`] (the gap is
//! silence) or ran more than [`RESYNC_AHEAD`] ahead of the clock. Positions nothing was placed
//! at are silence.
//!
//! [`Tape::take`] hands out the stretch that is settled (older than [`HOLD`], so no late chunk
//! can still land in it) as one interleaved [`Chunk`], for a writer elsewhere; a chunk the
//! writer could not take is [`Tape::refused`], and its length becomes silence at the start of the
//! next one, so the file keeps the call's clock. [`Tape::stop`] pauses (everything up to now is
//! handed out); [`Tape::start`] again resumes on the same clock, the pause being silence. The
//! recording never grows past its `max_frames`.
//!
//! Pure: time is passed in, no I/O; the call's codec places audio, the call hands chunks to the
//! recorder thread.

use std::time::{Duration, Instant};

/// A channel that stopped for longer than this behind the clock starts again at the clock (the
/// gap is silence); less is jitter, and the channel continues where it was.
pub const RESYNC_BEHIND: Duration = Duration::from_millis(60);
/// A channel that ran more than this ahead of the clock (a burst of late packets, a sender
/// whose clock runs fast) is put back on the clock, overwriting what it had placed ahead.
pub const RESYNC_AHEAD: Duration = Duration::from_millis(200);
/// What is handed out is at least this old: a chunk is placed at most [`RESYNC_BEHIND`] plus a
/// frame before the clock, so nothing lands in a stretch already handed out.
pub const HOLD: Duration = Duration::from_millis(120);

/// The recording's two channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// The caller (left).
    Caller,
    /// voicegate (right).
    Voicegate,
}

/// A settled stretch of the recording, for the writer: `silence_before` sample frames of silence
/// (a pause, or chunks the writer could not take), then `samples`, interleaved left/right.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chunk {
    /// Silent sample frames before `samples`.
    pub silence_before: u64,
    /// Interleaved samples: caller, voicegate, caller, ...
    pub samples: Vec<i16>,
}

impl Chunk {
    /// Sample frames it covers, silence included.
    pub fn frames(&self) -> u64 {
        self.silence_before + self.samples.len() as u64 / 2
    }

    /// Bytes it takes in memory and in the file (16-bit samples; silence costs no memory).
    pub fn sample_bytes(&self) -> usize {
        self.samples.len() * 2
    }
}

/// What [`Tape::start`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// The recording began: its clock starts now.
    Began,
    /// A paused recording goes on.
    Resumed,
    /// It was recording already.
    Already,
    /// It reached its longest duration; nothing more is recorded.
    Full,
}

/// One channel's audio not yet handed out.
#[derive(Debug, Default)]
struct Track {
    /// Samples from the tape's `base` on (silence where nothing was placed).
    pcm: Vec<i16>,
    /// Where the channel's next chunk goes when its stream flows on; `None` after a pause.
    cursor: Option<u64>,
}

/// A call's stereo recording on the call's clock.
#[derive(Debug)]
pub struct Tape {
    /// Sample rate of both channels.
    rate: u32,
    /// The longest recording, in sample frames.
    max_frames: u64,
    /// Position 0: when the recording began.
    origin: Option<Instant>,
    /// Recording now (not paused, not full).
    recording: bool,
    /// Position of the first sample not yet handed out (index 0 of the tracks' `pcm`).
    base: u64,
    /// Silent sample frames owed to the writer before the next chunk (a pause, refused chunks):
    /// stretches before `base` the file does not have yet.
    owed: u64,
    /// The caller.
    left: Track,
    /// voicegate.
    right: Track,
}

impl Tape {
    /// A tape at `rate` that records at most `max_duration`; it records nothing until
    /// [`Tape::start`].
    pub fn new(rate: u32, max_duration: Duration) -> Tape {
        Tape {
            rate,
            max_frames: (max_duration.as_secs_f64() * f64::from(rate)) as u64,
            origin: None,
            recording: false,
            base: 0,
            owed: 0,
            left: Track::default(),
            right: Track::default(),
        }
    }

    /// Whether audio placed now is recorded.
    pub fn is_recording(&self) -> bool {
        self.recording
    }

    /// Whether the recording began at some point (so there is a file).
    pub fn began(&self) -> bool {
        self.origin.is_some()
    }

    /// Whether it reached its longest duration.
    pub fn is_full(&self) -> bool {
        self.origin.is_some() && self.base >= self.max_frames
    }

    /// The sample rate.
    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Starts recording, or resumes after [`Tape::stop`]: the pause is silence, so the
    /// recording stays on the call's clock.
    pub fn start(&mut self, now: Instant) -> Started {
        if self.is_full() {
            self.recording = false;
            return Started::Full;
        }
        if self.recording {
            return Started::Already;
        }
        self.recording = true;
        if self.origin.is_none() {
            self.origin = Some(now);
            return Started::Began;
        }
        let clock = self.clock(now).min(self.max_frames);
        self.owed += clock.saturating_sub(self.base);
        self.base = self.base.max(clock);
        Started::Resumed
    }

    /// Pauses: everything up to `now` is handed out; nothing more is recorded until
    /// [`Tape::start`]. `None` if it was not recording.
    pub fn stop(&mut self, now: Instant) -> Option<Chunk> {
        if !self.recording {
            return None;
        }
        let end = self.clock(now);
        let chunk = self.cut(end);
        self.recording = false;
        self.left = Track::default();
        self.right = Track::default();
        Some(chunk)
    }

    /// Places `pcm` of `channel` that passed voicegate at `now`.
    pub fn place(&mut self, channel: Channel, now: Instant, pcm: &[i16]) {
        if !self.recording || pcm.is_empty() {
            return;
        }
        let clock = self.clock(now);
        let behind = self.frames_of(RESYNC_BEHIND);
        let ahead = self.frames_of(RESYNC_AHEAD);
        let origin = self.base;
        let track = match channel {
            Channel::Caller => &mut self.left,
            Channel::Voicegate => &mut self.right,
        };
        let start = match track.cursor {
            Some(c) if c + behind >= clock && c <= clock + ahead => c,
            _ => clock,
        };
        track.cursor = Some(start + pcm.len() as u64);
        // What falls before the pending stretch was handed out already (a chunk placed after a
        // long stall of this actor), what falls too far ahead is cut: the pending buffer stays
        // bounded by the time between two `take`s plus `RESYNC_AHEAD`.
        let limit = clock + ahead + pcm.len() as u64;
        let from = start.max(origin);
        let to = (start + pcm.len() as u64).min(limit);
        if to <= from {
            return;
        }
        let skip = (from - start) as usize;
        let (at, len) = ((from - origin) as usize, (to - from) as usize);
        if track.pcm.len() < at + len {
            track.pcm.resize(at + len, 0);
        }
        track.pcm[at..at + len].copy_from_slice(&pcm[skip..skip + len]);
    }

    /// The settled stretch (older than [`HOLD`]), if it is at least `min` long or the
    /// recording reached its longest duration.
    pub fn take(&mut self, now: Instant, min: Duration) -> Option<Chunk> {
        if !self.recording {
            return None;
        }
        let end = self
            .clock(now)
            .saturating_sub(self.frames_of(HOLD))
            .min(self.max_frames);
        let ready = end.saturating_sub(self.base);
        if ready == 0 || (ready < self.frames_of(min) && end < self.max_frames) {
            return None;
        }
        let chunk = self.cut(end);
        if self.is_full() {
            self.recording = false;
        }
        Some(chunk)
    }

    /// The writer could not take `chunk`: it becomes silence at the start of the next one.
    pub fn refused(&mut self, chunk: &Chunk) {
        self.owed += chunk.frames();
    }

    /// Hands out everything before position `end` (at most `max_frames`).
    fn cut(&mut self, end: u64) -> Chunk {
        let n = end.min(self.max_frames).saturating_sub(self.base) as usize;
        let mut samples = Vec::with_capacity(n * 2);
        for i in 0..n {
            samples.push(self.left.pcm.get(i).copied().unwrap_or(0));
            samples.push(self.right.pcm.get(i).copied().unwrap_or(0));
        }
        for t in [&mut self.left, &mut self.right] {
            t.pcm.drain(..n.min(t.pcm.len()));
        }
        let chunk = Chunk {
            silence_before: self.owed,
            samples,
        };
        self.base += n as u64;
        self.owed = 0;
        chunk
    }

    /// Sample position of `now` on the recording's clock.
    fn clock(&self, now: Instant) -> u64 {
        let Some(origin) = self.origin else {
            return 0;
        };
        self.frames_of(now.saturating_duration_since(origin))
    }

    fn frames_of(&self, d: Duration) -> u64 {
        (d.as_nanos() * u128::from(self.rate) / 1_000_000_000) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u32 = 16_000;
    /// Samples per ms at [`RATE`].
    const MS: usize = 16;
    const FRAME: usize = 20 * MS;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn tape() -> Tape {
        Tape::new(RATE, Duration::from_secs(3600))
    }

    /// Everything the tape hands out from `t0` to `end`, as one (left, right) pair.
    fn drain(tape: &mut Tape, t0: Instant, end: Duration) -> (Vec<i16>, Vec<i16>) {
        let chunk = tape.stop(t0 + end).unwrap();
        split(&chunk)
    }

    fn split(chunk: &Chunk) -> (Vec<i16>, Vec<i16>) {
        let mut l = vec![0; chunk.silence_before as usize];
        let mut r = l.clone();
        for p in chunk.samples.chunks(2) {
            l.push(p[0]);
            r.push(p[1]);
        }
        (l, r)
    }

    /// Where the first sample of value `v` sits, in ms.
    fn at_ms(pcm: &[i16], v: i16) -> Option<usize> {
        pcm.iter().position(|s| *s == v).map(|i| i / MS)
    }

    #[test]
    fn chunks_land_at_the_instant_they_passed_and_silence_fills_the_rest() {
        let t0 = Instant::now();
        let mut t = tape();
        assert_eq!(t.start(t0), Started::Began);
        // The caller talks from 100 ms for 200 ms; voicegate answers at 500 ms for 100 ms.
        for k in 0..10 {
            t.place(Channel::Caller, t0 + ms(100 + 20 * k), &[1; FRAME]);
        }
        for k in 0..5 {
            t.place(Channel::Voicegate, t0 + ms(500 + 20 * k), &[2; FRAME]);
        }
        let (l, r) = drain(&mut t, t0, ms(1000));
        assert_eq!(l.len(), 1000 * MS, "the recording is as long as the call");
        assert_eq!(r.len(), 1000 * MS);
        assert_eq!(at_ms(&l, 1), Some(100));
        assert_eq!(l.iter().filter(|s| **s == 1).count(), 200 * MS);
        assert_eq!(at_ms(&r, 2), Some(500));
        assert_eq!(r.iter().filter(|s| **s == 2).count(), 100 * MS);
        assert!(l[300 * MS..].iter().all(|s| *s == 0));
    }

    #[test]
    fn jitter_does_not_chop_a_stream_and_a_gap_resyncs_it() {
        let t0 = Instant::now();
        let mut t = tape();
        t.start(t0);
        // Packets 0..10 arrive with up to 15 ms of jitter, in a burst for some: the stream stays
        // contiguous from the first one.
        let jitter = [0, 15, 3, 12, 0, 0, 14, 7, 2, 9];
        for (k, j) in jitter.iter().enumerate() {
            t.place(
                Channel::Caller,
                t0 + ms(20 * k as u64 + j),
                &[k as i16 + 1; FRAME],
            );
        }
        // Then nothing for a second (the caller's mute), and one more frame.
        t.place(Channel::Caller, t0 + ms(1200), &[50; FRAME]);
        let (l, _) = drain(&mut t, t0, ms(1500));
        for k in 0..10 {
            assert_eq!(at_ms(&l, k + 1), Some(20 * k as usize), "frame {k}");
        }
        assert_eq!(at_ms(&l, 50), Some(1200), "after a gap, back on the clock");
        assert!(l[200 * MS..1200 * MS].iter().all(|s| *s == 0));
    }

    #[test]
    fn a_stream_far_ahead_of_the_clock_is_put_back_on_it() {
        let t0 = Instant::now();
        let mut t = tape();
        t.start(t0);
        // Twenty frames at once (400 ms of audio at one instant): the first eleven run ahead
        // within bounds (up to 200 ms past the clock), the twelfth goes back to the clock and
        // the rest follow it, over what was placed there.
        for k in 0..20 {
            t.place(Channel::Caller, t0 + ms(100), &[k + 1; FRAME]);
        }
        let (l, _) = drain(&mut t, t0, ms(1000));
        assert_eq!(at_ms(&l, 11), Some(300));
        assert_eq!(at_ms(&l, 12), Some(100), "put back on the clock");
        assert_eq!(at_ms(&l, 20), Some(260));
        assert_eq!(at_ms(&l, 1), None, "overwritten");
        assert!(l[320 * MS..].iter().all(|s| *s == 0));
    }

    #[test]
    fn take_hands_out_settled_audio_in_order_and_none_is_lost_or_doubled() {
        let t0 = Instant::now();
        let mut t = tape();
        t.start(t0);
        let mut out = Vec::new();
        for k in 0..100u64 {
            let now = t0 + ms(20 * k);
            t.place(Channel::Caller, now, &[k as i16 + 1; FRAME]);
            t.place(Channel::Voicegate, now, &[-(k as i16) - 1; FRAME]);
            if let Some(c) = t.take(now, ms(300)) {
                assert!(c.frames() >= 300 * MS as u64);
                out.push(c);
            }
        }
        out.push(t.stop(t0 + ms(2000)).unwrap());
        let (mut l, mut r) = (Vec::new(), Vec::new());
        for c in &out {
            let (a, b) = split(c);
            l.extend(a);
            r.extend(b);
        }
        assert_eq!(l.len(), 2000 * MS);
        for k in 0..100 {
            let i = k * FRAME;
            assert!(l[i..i + FRAME].iter().all(|s| *s == k as i16 + 1), "{k}");
            assert!(r[i..i + FRAME].iter().all(|s| *s == -(k as i16) - 1), "{k}");
        }
    }

    #[test]
    fn nothing_is_taken_while_younger_than_the_hold() {
        let t0 = Instant::now();
        let mut t = tape();
        t.start(t0);
        assert_eq!(t.take(t0 + HOLD, Duration::ZERO), None);
        let c = t.take(t0 + HOLD + ms(20), Duration::ZERO).unwrap();
        assert_eq!(c.frames(), 20 * MS as u64);
    }

    #[test]
    fn a_refused_chunk_becomes_silence_so_the_clock_holds() {
        let t0 = Instant::now();
        let mut t = tape();
        t.start(t0);
        for k in 0..50u64 {
            t.place(Channel::Caller, t0 + ms(20 * k), &[7; FRAME]);
        }
        let lost = t.take(t0 + ms(620), ms(100)).unwrap();
        assert_eq!(lost.frames(), 500 * MS as u64);
        t.refused(&lost);
        let next = t.take(t0 + ms(1120), ms(100)).unwrap();
        assert_eq!(next.silence_before, 500 * MS as u64);
        assert_eq!(next.samples.len(), 500 * MS * 2);
        assert!(next.samples.chunks(2).all(|p| p[0] == 7));
    }

    #[test]
    fn a_pause_records_nothing_and_is_silence_on_resume() {
        let t0 = Instant::now();
        let mut t = tape();
        assert_eq!(t.take(t0, Duration::ZERO), None, "not started");
        t.place(Channel::Caller, t0, &[9; FRAME]);
        assert_eq!(t.start(t0), Started::Began);
        assert_eq!(t.start(t0 + ms(10)), Started::Already);
        t.place(Channel::Caller, t0 + ms(100), &[1; FRAME]);
        let first = t.stop(t0 + ms(500)).unwrap();
        assert_eq!(first.frames(), 500 * MS as u64);
        assert_eq!(t.stop(t0 + ms(600)), None, "stopped already");
        // Said during the pause: not recorded.
        t.place(Channel::Caller, t0 + ms(700), &[3; FRAME]);
        assert_eq!(t.start(t0 + ms(1000)), Started::Resumed);
        t.place(Channel::Caller, t0 + ms(1100), &[4; FRAME]);
        let second = t.stop(t0 + ms(1500)).unwrap();
        assert_eq!(second.silence_before, 500 * MS as u64);
        let (l, _) = split(&second);
        assert_eq!(at_ms(&l, 4), Some(600), "1100 ms on the call's clock");
        assert_eq!(at_ms(&l, 3), None);
        let (l, _) = split(&first);
        assert_eq!(at_ms(&l, 9), None, "nothing before the start");
        assert_eq!(at_ms(&l, 1), Some(100));
    }

    #[test]
    fn the_recording_stops_at_its_longest_duration() {
        let t0 = Instant::now();
        let mut t = Tape::new(RATE, Duration::from_secs(1));
        t.start(t0);
        let mut frames = 0;
        for k in 0..100u64 {
            let now = t0 + ms(20 * k);
            t.place(Channel::Caller, now, &[1; FRAME]);
            if let Some(c) = t.take(now, ms(400)) {
                frames += c.frames();
            }
        }
        assert_eq!(frames, RATE as u64, "exactly one second");
        assert!(t.is_full() && !t.is_recording());
        assert_eq!(t.take(t0 + ms(3000), Duration::ZERO), None);
        assert_eq!(t.start(t0 + ms(3000)), Started::Full);
        assert_eq!(t.stop(t0 + ms(3000)), None);
    }

    #[test]
    fn a_long_pause_counts_toward_the_longest_duration() {
        let t0 = Instant::now();
        let mut t = Tape::new(RATE, Duration::from_secs(1));
        t.start(t0);
        t.stop(t0 + ms(200)).unwrap();
        t.start(t0 + ms(5000));
        let c = t.stop(t0 + ms(6000)).unwrap();
        assert_eq!(c.frames(), 800 * MS as u64, "the file ends at one second");
        assert!(c.samples.is_empty());
        assert!(t.is_full());
    }
}
