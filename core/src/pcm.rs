//! The downlink's playout queue: PCM waiting for the pacer, in whole frames, tagged by segment.
//!
//! Producers push PCM of any length under a [`Tag`] (a speech segment, or the echo path's one
//! never-ending stream); the pacer pops exactly one frame per slot. Samples live in one ring buffer
//! that grows to the largest backlog and is then reused, so the per-frame path does not
//! allocate. Ending a tag pads its last frame with silence, so a frame never holds two tags, and
//! [`Playout::pop`] says when a tag's first and last frames go out: that is how speech events
//! are tied to the audio that actually left.
//!
//! The queue starts a talkspurt only once `prebuffer` frames are waiting (or the front tag has
//! ended), which absorbs the jitter of a real-time producer such as the echo path. `max_frames`
//! bounds latency for such producers: the oldest audio of an open tag is dropped and counted
//! rather than letting delay grow. Ended tags are never dropped (their end must be reported):
//! when the front has ended, what comes beyond the bound is dropped and counted instead, so
//! the bound holds whatever the producer does. Speech is bounded upstream, and this is only its
//! safety net: the player keeps at most `2 * prefetch` segments handed over and synthesizing
//! ahead of playback, each at most `max_segment_samples` long (`core::speech`).

use crate::speech::SegmentId;
use std::collections::VecDeque;

/// Whose audio a stretch of the queue is. The echo path and speech never share a number: the
/// echo stream is its own variant, so a segment id can take any value and playback reports are
/// only ever about segments. `Copy` and two words wide, so tagging every push and frame costs
/// no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tag {
    /// The caller's own audio in an echo call: one tag for the whole call, never ended.
    Echo,
    /// One speech segment of the call's `Player`.
    Segment(SegmentId),
}

impl Tag {
    /// The segment, for a speech tag.
    pub fn segment(self) -> Option<SegmentId> {
        match self {
            Tag::Segment(id) => Some(id),
            Tag::Echo => None,
        }
    }
}

impl std::fmt::Display for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tag::Echo => f.write_str("echo"),
            Tag::Segment(id) => write!(f, "segment {id}"),
        }
    }
}

#[derive(Debug)]
struct Span {
    tag: Tag,
    /// Samples of this tag still queued.
    len: usize,
    /// No more audio will come for it.
    ended: bool,
    /// Its first frame went out.
    started: bool,
}

/// What a popped frame was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Whose audio it is.
    pub tag: Tag,
    /// The tag's first frame.
    pub first: bool,
    /// The tag's last frame (the tag had ended).
    pub last: bool,
}

/// PCM queued for playout.
#[derive(Debug)]
pub struct Playout {
    samples: VecDeque<i16>,
    spans: VecDeque<Span>,
    frame: usize,
    prebuffer: usize,
    max_frames: usize,
    /// Samples dropped because the queue was full (whole frames from an open front, or the
    /// newest audio beyond the bound).
    dropped: u64,
}

impl Playout {
    /// A queue of `frame`-sample frames that starts after `prebuffer` frames and holds at most
    /// `max_frames` of open audio.
    pub fn new(frame: usize, prebuffer: usize, max_frames: usize) -> Self {
        let max_frames = max_frames.max(prebuffer).max(1);
        Playout {
            samples: VecDeque::with_capacity(frame * (prebuffer.max(1) + 1)),
            spans: VecDeque::new(),
            frame,
            prebuffer: prebuffer.max(1),
            max_frames,
            dropped: 0,
        }
    }

    /// Appends PCM for `tag`. When over capacity the oldest whole frames of an open front tag
    /// are dropped; when the front cannot lose any (it has ended, or holds less than a frame),
    /// what this push brings beyond the bound is dropped instead, so the bound always holds
    /// (give or take the padding of ended tags' last frames).
    pub fn push(&mut self, tag: Tag, pcm: &[i16]) {
        if pcm.is_empty() {
            return;
        }
        match self.spans.back_mut() {
            Some(s) if s.tag == tag && !s.ended => s.len += pcm.len(),
            _ => self.spans.push_back(Span {
                tag,
                len: pcm.len(),
                ended: false,
                started: false,
            }),
        }
        self.samples.extend(pcm.iter().copied());
        let cap = self.frame * self.max_frames;
        while self.samples.len() > cap {
            let Some(front) = self.spans.front_mut() else {
                break;
            };
            if front.ended || front.len < self.frame {
                break;
            }
            front.len -= self.frame;
            self.samples.drain(..self.frame);
            self.dropped += self.frame as u64;
        }
        if self.samples.len() > cap {
            // The front's end must be reported, so it keeps its audio: the newest goes. It is
            // all at the back, in the span this push grew (which is not the front: an open
            // front that could not lose a frame holds less than one, so less than the bound).
            let back = self
                .spans
                .back_mut()
                .expect("this push left a span at the back");
            let excess = (self.samples.len() - cap).min(pcm.len()).min(back.len);
            back.len -= excess;
            self.samples.truncate(self.samples.len() - excess);
            self.dropped += excess as u64;
        }
    }

    /// No more audio for `tag`: its last frame is padded with silence. Returns the tag's last
    /// frame event at once when none of its audio is left to play (it never had any, or all of
    /// it was already sent).
    pub fn end(&mut self, tag: Tag) -> Option<Frame> {
        let Some(i) = self.spans.iter().position(|s| s.tag == tag && !s.ended) else {
            return Some(Frame {
                tag,
                first: false,
                last: true,
            });
        };
        let pad = (self.frame - self.spans[i].len % self.frame) % self.frame;
        if pad > 0 {
            let at: usize = self.spans.iter().take(i + 1).map(|s| s.len).sum();
            if at == self.samples.len() {
                self.samples.extend(std::iter::repeat_n(0, pad));
            } else {
                for _ in 0..pad {
                    self.samples.insert(at, 0);
                }
            }
            self.spans[i].len += pad;
        }
        self.spans[i].ended = true;
        if self.spans[i].len == 0 {
            self.spans.remove(i);
            return Some(Frame {
                tag,
                first: false,
                last: true,
            });
        }
        None
    }

    /// Drops everything queued (an interrupt).
    pub fn clear(&mut self) {
        self.samples.clear();
        self.spans.clear();
    }

    /// Whether a stopped pacer should start a talkspurt now.
    pub fn ready_to_start(&self) -> bool {
        self.samples.len() >= self.prebuffer * self.frame
            || self.spans.front().is_some_and(|s| s.ended && s.len > 0)
    }

    /// Moves the next frame into `out` (one frame long). `None` when no whole frame is ready.
    pub fn pop(&mut self, out: &mut [i16]) -> Option<Frame> {
        debug_assert_eq!(out.len(), self.frame);
        // Skip spans that hold nothing and are still open (their producer paused).
        while let Some(s) = self.spans.front() {
            if s.len == 0 && !s.ended && self.spans.len() > 1 {
                self.spans.pop_front();
            } else {
                break;
            }
        }
        let front = self.spans.front_mut()?;
        if front.len < self.frame {
            return None;
        }
        for (o, s) in out.iter_mut().zip(self.samples.drain(..self.frame)) {
            *o = s;
        }
        front.len -= self.frame;
        let first = !front.started;
        front.started = true;
        let last = front.ended && front.len == 0;
        let tag = front.tag;
        if last {
            self.spans.pop_front();
        }
        Some(Frame { tag, first, last })
    }

    /// Whole frames waiting.
    pub fn frames(&self) -> usize {
        self.samples.len() / self.frame
    }

    /// Frames dropped for capacity so far (whole frames' worth of the samples dropped).
    pub fn dropped(&self) -> u64 {
        self.dropped / self.frame as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shorthand for a segment's tag.
    fn seg(id: SegmentId) -> Tag {
        Tag::Segment(id)
    }

    fn pop(q: &mut Playout, n: usize) -> Option<(Vec<i16>, Frame)> {
        let mut f = vec![0; n];
        q.pop(&mut f).map(|fr| (f, fr))
    }

    #[test]
    fn reframes_any_chunk_sizes() {
        let mut q = Playout::new(4, 1, 100);
        q.push(Tag::Echo, &[1, 2, 3]);
        assert!(!q.ready_to_start());
        assert!(pop(&mut q, 4).is_none());
        q.push(Tag::Echo, &[4, 5, 6, 7, 8, 9]);
        let (f, fr) = pop(&mut q, 4).unwrap();
        assert_eq!(f, [1, 2, 3, 4]);
        assert_eq!(
            fr,
            Frame {
                tag: Tag::Echo,
                first: true,
                last: false
            }
        );
        let (f, fr) = pop(&mut q, 4).unwrap();
        assert_eq!(f, [5, 6, 7, 8]);
        assert!(!fr.first);
        assert!(pop(&mut q, 4).is_none());
        assert_eq!(q.frames(), 0);
    }

    #[test]
    fn prebuffer_delays_the_start() {
        let mut q = Playout::new(2, 3, 100);
        q.push(Tag::Echo, &[1, 1, 2, 2]);
        assert!(!q.ready_to_start());
        q.push(Tag::Echo, &[3, 3]);
        assert!(q.ready_to_start());
    }

    #[test]
    fn ending_a_tag_pads_and_reports_first_and_last_frames() {
        let mut q = Playout::new(4, 5, 100);
        q.push(seg(7), &[1, 2, 3, 4, 5]);
        assert!(!q.ready_to_start());
        assert_eq!(q.end(seg(7)), None);
        assert!(
            q.ready_to_start(),
            "an ended tag plays without waiting for the prebuffer"
        );
        q.push(seg(8), &[6, 6]);
        assert_eq!(q.end(seg(8)), None);
        let (f, fr) = pop(&mut q, 4).unwrap();
        assert_eq!(
            (f, fr),
            (
                vec![1, 2, 3, 4],
                Frame {
                    tag: seg(7),
                    first: true,
                    last: false
                }
            )
        );
        let (f, fr) = pop(&mut q, 4).unwrap();
        assert_eq!(
            (f, fr),
            (
                vec![5, 0, 0, 0],
                Frame {
                    tag: seg(7),
                    first: false,
                    last: true
                }
            )
        );
        let (f, fr) = pop(&mut q, 4).unwrap();
        assert_eq!(
            (f, fr),
            (
                vec![6, 6, 0, 0],
                Frame {
                    tag: seg(8),
                    first: true,
                    last: true
                }
            )
        );
        assert!(pop(&mut q, 4).is_none());
    }

    #[test]
    fn ending_a_tag_with_nothing_left_reports_at_once() {
        let mut q = Playout::new(2, 1, 100);
        assert_eq!(
            q.end(seg(3)),
            Some(Frame {
                tag: seg(3),
                first: false,
                last: true
            }),
            "never had audio"
        );
        q.push(seg(4), &[1, 1]);
        assert!(pop(&mut q, 2).unwrap().1.first);
        assert_eq!(
            q.end(seg(4)),
            Some(Frame {
                tag: seg(4),
                first: false,
                last: true
            }),
            "all of it already sent"
        );
    }

    #[test]
    fn a_producer_that_pauses_resumes_in_the_same_tag() {
        let mut q = Playout::new(2, 1, 100);
        q.push(seg(1), &[1, 1]);
        assert!(pop(&mut q, 2).unwrap().1.first);
        assert!(pop(&mut q, 2).is_none());
        q.push(seg(1), &[2, 2]);
        let (_, fr) = pop(&mut q, 2).unwrap();
        assert_eq!(
            fr,
            Frame {
                tag: seg(1),
                first: false,
                last: false
            }
        );
    }

    #[test]
    fn overflow_drops_the_oldest_open_audio_only() {
        let mut q = Playout::new(2, 1, 2);
        q.push(Tag::Echo, &[1, 1, 2, 2, 3, 3]);
        assert_eq!(q.dropped(), 1);
        assert_eq!(pop(&mut q, 2).unwrap().0, [2, 2]);
        // Ended audio is never dropped, even over capacity: the newest is.
        let mut q = Playout::new(2, 1, 1);
        q.push(seg(5), &[1, 1]);
        q.end(seg(5));
        q.push(seg(6), &[2, 2, 3, 3]);
        assert_eq!(q.dropped(), 2);
        assert_eq!(
            pop(&mut q, 2).unwrap().1,
            Frame {
                tag: seg(5),
                first: true,
                last: true
            }
        );
        assert!(pop(&mut q, 2).is_none());
    }

    #[test]
    fn the_bound_holds_when_the_front_cannot_lose_frames() {
        // The front has ended: it is kept whole, and what comes beyond the bound is dropped
        // instead, however long the producer goes on (a vendor that never ends a segment).
        let mut q = Playout::new(2, 1, 3);
        q.push(seg(1), &[1, 1, 2, 2]);
        q.end(seg(1));
        q.push(seg(2), &[3, 3, 4, 4, 5]);
        for _ in 0..1000 {
            q.push(seg(2), &[9; 7]);
        }
        assert_eq!(
            q.frames(),
            3,
            "two frames of the ended front, one of the next"
        );
        // 5 + 7000 samples came for segment 2, 2 were kept: 7003 dropped, whole frames counted.
        assert_eq!(q.dropped(), 7003 / 2);
        assert_eq!(q.end(seg(2)), None);
        let frames: Vec<_> = std::iter::from_fn(|| pop(&mut q, 2)).collect();
        assert_eq!(
            frames.iter().map(|(f, _)| f.clone()).collect::<Vec<_>>(),
            [vec![1, 1], vec![2, 2], vec![3, 3]],
            "the ended front, then the first of what came after it"
        );
        assert_eq!(
            frames
                .iter()
                .map(|(_, fr)| (fr.tag, fr.last))
                .collect::<Vec<_>>(),
            [(seg(1), false), (seg(1), true), (seg(2), true)],
            "both segments' ends are still reported"
        );
        // The front holds less than a frame and is still open: the same.
        let mut q = Playout::new(2, 1, 2);
        q.push(seg(3), &[1]);
        q.push(seg(4), &[2, 2, 3, 3, 4, 4, 5, 5]);
        assert_eq!(q.frames(), 2);
        assert_eq!(q.dropped(), 5 / 2);
        q.end(seg(3));
        q.end(seg(4));
        assert_eq!(pop(&mut q, 2).unwrap().0, [1, 0]);
        assert_eq!(pop(&mut q, 2).unwrap().0, [2, 2]);
        assert_eq!(pop(&mut q, 2).unwrap().0, [3, 0]);
        assert!(pop(&mut q, 2).is_none());
    }

    #[test]
    fn clear_empties() {
        let mut q = Playout::new(2, 1, 10);
        q.push(seg(1), &[1, 1, 2, 2]);
        q.clear();
        assert_eq!(q.frames(), 0);
        assert!(pop(&mut q, 2).is_none());
        assert!(!q.ready_to_start());
    }
}
