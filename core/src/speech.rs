//! Utterance semantics: what to synthesize, what to play, and which `tts.*` events to report.
//!
//! [`Player`] is the per-call state machine behind `tts.speak`, `tts.stream` and
//! `tts.interrupt`. It is pure: the actor feeds it [`Input`]s (commands, synthesized audio,
//! playback progress from the codec) and carries out the [`Output`]s (start or cancel a
//! synthesis, hand audio to the codec, report an event). Its promises:
//!
//! - Utterances play in the order they were queued; segments within one in order.
//! - `tts.started` goes out when an utterance's first audio frame leaves voicegate (the codec
//!   reports that), once per utterance, however often a slow stream runs dry and resumes.
//! - `tts.ended` goes out exactly once for every utterance that was queued or started: `ok:
//!   true` after its last frame, `ok: false` when it was interrupted, replaced by a new stream,
//!   failed to synthesize, or the call ended. Text with nothing speakable ends `ok: true`
//!   without a `tts.started`.
//! - An interrupt stops playback (the codec flushes its queue), cancels every synthesis in
//!   flight (so nothing can block behind it, unlike the original), and drops the queue.
//! - Synthesis runs ahead of playback by at most `prefetch` segments, so a long answer plays
//!   without gaps and memory stays bounded.
//!
//! Audio is tagged by segment id; late audio or progress for a segment that was dropped is
//! ignored, so cancellation races are harmless.

use crate::text::{SegmentLimits, Segmenter, sanitize};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A segment's id: unique for the call, increasing in play order.
pub type SegmentId = u64;

/// Settings of the player.
#[derive(Debug, Clone, Copy)]
pub struct PlayerSettings {
    /// How `tts.stream` text is cut.
    pub limits: SegmentLimits,
    /// Segments synthesized ahead of the one being handed to the codec (at least 1).
    pub prefetch: usize,
}

/// A segment as far as the caller heard it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlayedSegment {
    /// Its text.
    pub text: String,
    /// Audio sent, ms.
    pub played_ms: u32,
    /// Sent completely (false: interrupted in the middle).
    pub complete: bool,
}

impl PlayedSegment {
    /// The caller-heard text of `segments`: complete segments, then the interrupted one with a
    /// trailing `…` to mark that only part of it was heard.
    pub fn join(segments: &[PlayedSegment]) -> String {
        let parts: Vec<String> = segments
            .iter()
            .map(|s| {
                if s.complete {
                    s.text.clone()
                } else {
                    format!("{}…", s.text)
                }
            })
            .collect();
        parts.join(" ")
    }
}

/// Frames are 20 ms.
const FRAME_MS: u32 = 20;

/// What happened, for the player.
#[derive(Debug)]
pub enum Input<'a> {
    /// `tts.speak`.
    Speak {
        /// Utterance id (may be empty).
        id: &'a str,
        /// Text.
        text: &'a str,
        /// Whether events for it are reported (internal prompts are not).
        report: bool,
    },
    /// `tts.stream` / `tts.stream.end`.
    Stream {
        /// Utterance id.
        id: &'a str,
        /// Chunk.
        text: &'a str,
        /// Last chunk.
        end: bool,
    },
    /// `tts.interrupt`, or a barge-in.
    Interrupt,
    /// PCM from a segment's synthesis.
    Audio {
        /// Which segment.
        segment: SegmentId,
        /// Samples at the call's rate.
        pcm: Vec<i16>,
    },
    /// A segment's synthesis finished: all its audio was delivered, or it failed.
    Synthesized {
        /// Which segment.
        segment: SegmentId,
        /// Whether it succeeded.
        ok: bool,
    },
    /// The codec sent a segment's first frame.
    PlaybackStarted {
        /// Which segment.
        segment: SegmentId,
    },
    /// The codec sent a segment's last frame.
    PlaybackFinished {
        /// Which segment.
        segment: SegmentId,
        /// Frames of it that were sent.
        frames: u32,
    },
    /// The caller talked over us (the codec already stopped playback): `segment` was playing,
    /// `frames` of it had been sent.
    BargeIn {
        /// The segment in progress, if one was.
        segment: Option<SegmentId>,
        /// Its frames sent.
        frames: u32,
    },
    /// A final transcript arrived (the anchor for end-to-end latency).
    AsrFinal,
    /// The call is ending: everything still queued ends.
    CallEnding,
}

/// What the actor must do, in order.
#[derive(Debug, PartialEq)]
pub enum Output {
    /// Start synthesizing `text` for `segment`.
    Synthesize {
        /// Segment.
        segment: SegmentId,
        /// Sanitized text.
        text: String,
    },
    /// Stop synthesizing `segment` and discard what it produces.
    Cancel {
        /// Segment.
        segment: SegmentId,
    },
    /// Hand `pcm` to the codec's playout, tagged with `segment`.
    Play {
        /// Segment.
        segment: SegmentId,
        /// Samples.
        pcm: Vec<i16>,
    },
    /// No more audio for `segment` follows: the codec pads its last frame and reports when it
    /// has been sent.
    EndOfSegment {
        /// Segment.
        segment: SegmentId,
    },
    /// Drop everything queued in the codec now.
    FlushPlayback,
    /// `tts.started`.
    Started {
        /// Utterance id.
        id: String,
    },
    /// `tts.ended`.
    Ended {
        /// Utterance id.
        id: String,
        /// Played completely.
        ok: bool,
    },
    /// A segment's first frame left (the text the caller is hearing now).
    SegmentStarted {
        /// Utterance id.
        id: String,
        /// The segment's text.
        text: String,
    },
    /// `tts.interrupt`: the caller barged in on this utterance. What they heard: `played_ms` of
    /// audio, the segments sent completely, and the one in progress.
    Interrupted {
        /// Utterance id.
        id: String,
        /// Audio sent for it, in ms.
        played_ms: u32,
        /// Its segments, in order, up to the one in progress.
        segments: Vec<PlayedSegment>,
    },
    /// First audio of an utterance left: latencies to log and keep.
    FirstAudio {
        /// Utterance id.
        id: String,
        /// From the command to the first frame.
        tts_first: Duration,
        /// From the last `asr.final` to the first frame, for the first utterance after it.
        since_asr_final: Option<Duration>,
    },
}

#[derive(Debug)]
struct Utterance {
    id: String,
    /// Events are reported for it.
    report: bool,
    /// `Some` while a stream is open.
    segmenter: Option<Segmenter>,
    /// No more text will come.
    closed: bool,
    /// Failed: remaining text is dropped, it ends with `ok: false`.
    failed: bool,
    /// `tts.started` was reported.
    started: bool,
    /// Segments not yet finished playing, in order.
    segments: VecDeque<SegmentId>,
    /// Segments played completely, with their text and length.
    played: Vec<PlayedSegment>,
    /// When the command that created it arrived.
    received: Instant,
}

#[derive(Debug)]
struct Segment {
    id: SegmentId,
    text: String,
    /// Synthesis was started.
    synthesizing: bool,
    /// Synthesis delivered everything.
    synthesized: bool,
    /// Audio waiting for its turn to be handed to the codec.
    pending: Vec<i16>,
    /// Samples handed to the codec so far.
    fed: usize,
    /// `EndOfSegment` was issued.
    ended: bool,
}

/// The per-call player.
#[derive(Debug)]
pub struct Player {
    settings: PlayerSettings,
    /// Utterances in play order; the front one is playing (or next).
    utterances: VecDeque<Utterance>,
    /// Segments not yet finished playing, in play order.
    segments: VecDeque<Segment>,
    next_segment: SegmentId,
    /// When the last `asr.final` arrived, until an utterance's first audio consumes it.
    asr_anchor: Option<Instant>,
    /// Ids of streams that were interrupted or replaced: their late chunks are dropped, so an
    /// LLM stream still in flight cannot start speaking again after a barge-in.
    cut_streams: VecDeque<String>,
}

/// How many interrupted stream ids are remembered.
const CUT_STREAMS: usize = 64;

impl Player {
    /// An idle player.
    pub fn new(settings: PlayerSettings) -> Self {
        Player {
            settings: PlayerSettings {
                prefetch: settings.prefetch.max(1),
                ..settings
            },
            utterances: VecDeque::new(),
            segments: VecDeque::new(),
            next_segment: 1,
            asr_anchor: None,
            cut_streams: VecDeque::new(),
        }
    }

    /// Whether anything is queued or playing.
    pub fn is_idle(&self) -> bool {
        self.utterances.is_empty()
    }

    /// The utterance currently playing or next, if any.
    pub fn current(&self) -> Option<&str> {
        self.utterances.front().map(|u| u.id.as_str())
    }

    /// Takes one input at `now`; returns what to do.
    pub fn handle(&mut self, input: Input<'_>, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Speak { id, text, report } => {
                let mut u = Utterance::new(id, report, now);
                u.closed = true;
                self.utterances.push_back(u);
                let mut seg = Segmenter::new(self.settings.limits);
                let mut parts = seg.push(text);
                parts.extend(seg.finish());
                self.add_segments(self.utterances.len() - 1, parts);
            }
            Input::Stream { id, text, end } => {
                let open = self.utterances.iter().position(|u| u.segmenter.is_some());
                let idx = match open {
                    Some(i) if self.utterances[i].id == id => Some(i),
                    Some(_) => {
                        // A new stream replaces the open one: everything stops, as on interrupt.
                        self.interrupt(&mut out);
                        None
                    }
                    None => None,
                };
                let idx = match idx {
                    Some(i) => i,
                    None => {
                        if self.utterances.iter().any(|u| u.id == id)
                            || self.cut_streams.iter().any(|c| c == id)
                        {
                            // More text for a stream that ended, failed or was cut off.
                            return out;
                        }
                        let mut u = Utterance::new(id, true, now);
                        u.segmenter = Some(Segmenter::new(self.settings.limits));
                        self.utterances.push_back(u);
                        self.utterances.len() - 1
                    }
                };
                let u = &mut self.utterances[idx];
                let Some(seg) = u.segmenter.as_mut() else {
                    return out;
                };
                let mut parts = seg.push(text);
                if end {
                    parts.extend(seg.finish());
                    u.segmenter = None;
                    u.closed = true;
                }
                self.add_segments(idx, parts);
            }
            Input::Interrupt => self.interrupt(&mut out),
            Input::CallEnding => {
                for s in self.segments.drain(..) {
                    if s.synthesizing && !s.synthesized {
                        out.push(Output::Cancel { segment: s.id });
                    }
                }
                for u in self.utterances.drain(..) {
                    if u.report {
                        out.push(Output::Ended {
                            id: u.id,
                            ok: false,
                        });
                    }
                }
                return out;
            }
            Input::Audio { segment, pcm } => {
                if let Some(s) = self.segments.iter_mut().find(|s| s.id == segment)
                    && !s.ended
                {
                    s.pending.extend_from_slice(&pcm);
                }
            }
            Input::Synthesized { segment, ok } => {
                if let Some(i) = self.segments.iter().position(|s| s.id == segment) {
                    if ok {
                        self.segments[i].synthesized = true;
                    } else {
                        self.fail_utterance_of(segment, &mut out);
                    }
                }
            }
            Input::PlaybackStarted { segment } => {
                let text = self
                    .segments
                    .iter()
                    .find(|s| s.id == segment)
                    .map(|s| s.text.clone());
                if let (Some(text), Some(u)) = (text, self.utterance_of(segment))
                    && u.report
                {
                    let id = u.id.clone();
                    out.push(Output::SegmentStarted { id, text });
                }
                if let Some(u) = self.utterance_of(segment)
                    && !u.started
                {
                    u.started = true;
                    let (id, report, received) = (u.id.clone(), u.report, u.received);
                    if report {
                        out.push(Output::Started { id: id.clone() });
                        out.push(Output::FirstAudio {
                            id,
                            tts_first: now.saturating_duration_since(received),
                            since_asr_final: self
                                .asr_anchor
                                .take()
                                .map(|a| now.saturating_duration_since(a)),
                        });
                    }
                }
            }
            Input::PlaybackFinished { segment, frames } => {
                let text = self
                    .segments
                    .iter()
                    .find(|s| s.id == segment)
                    .map(|s| s.text.clone());
                if let (Some(text), Some(u)) = (text, self.utterance_of(segment)) {
                    u.played.push(PlayedSegment {
                        text,
                        played_ms: frames * FRAME_MS,
                        complete: true,
                    });
                }
                self.finish_segment(segment);
            }
            Input::BargeIn { segment, frames } => {
                // The utterance the caller talked over is the one playing: the front one, if it
                // has started.
                if let Some(u) = self.utterances.front()
                    && u.started
                    && u.report
                {
                    let mut segments = u.played.clone();
                    if let Some(seg) = segment
                        && u.segments.contains(&seg)
                        && let Some(s) = self.segments.iter().find(|s| s.id == seg)
                        && frames > 0
                    {
                        segments.push(PlayedSegment {
                            text: s.text.clone(),
                            played_ms: frames * FRAME_MS,
                            complete: false,
                        });
                    }
                    out.push(Output::Interrupted {
                        id: u.id.clone(),
                        played_ms: segments.iter().map(|s| s.played_ms).sum(),
                        segments,
                    });
                }
                self.interrupt(&mut out);
            }
            Input::AsrFinal => self.asr_anchor = Some(now),
        }
        self.pump(&mut out);
        out
    }

    fn add_segments(&mut self, utterance: usize, parts: Vec<String>) {
        for text in parts {
            let text = sanitize(&text);
            if text.is_empty() {
                continue;
            }
            let id = self.next_segment;
            self.next_segment += 1;
            self.utterances[utterance].segments.push_back(id);
            self.segments.push_back(Segment {
                id,
                text,
                synthesizing: false,
                synthesized: false,
                pending: Vec::new(),
                fed: 0,
                ended: false,
            });
        }
    }

    /// Segment ids in play order: utterance by utterance. An utterance whose stream is still
    /// open holds back everything queued after it.
    fn play_order(&self) -> Vec<SegmentId> {
        let mut order = Vec::new();
        for u in &self.utterances {
            order.extend(u.segments.iter().copied());
            if !u.closed {
                break;
            }
        }
        order
    }

    /// Moves things along: feed audio in order, end segments, start syntheses, end utterances.
    fn pump(&mut self, out: &mut Vec<Output>) {
        let order = self.play_order();
        // Hand audio to the codec in play order, up to the first segment still synthesizing.
        for id in &order {
            let Some(s) = self.segments.iter_mut().find(|s| s.id == *id) else {
                continue;
            };
            if s.ended {
                continue;
            }
            if !s.pending.is_empty() {
                s.fed += s.pending.len();
                out.push(Output::Play {
                    segment: s.id,
                    pcm: std::mem::take(&mut s.pending),
                });
            }
            if s.synthesized {
                s.ended = true;
                out.push(Output::EndOfSegment { segment: s.id });
                continue;
            }
            break;
        }
        // A segment that produced no audio at all finishes without the codec's help.
        while let Some(s) = self.segments.iter().find(|s| s.ended && s.fed == 0) {
            let id = s.id;
            self.finish_segment(id);
        }
        // Keep `prefetch` segments synthesizing beyond those already handed over completely.
        // Segments behind an open stream may synthesize ahead; they just wait to be played.
        let mut ahead = 0;
        let all: Vec<SegmentId> = self
            .utterances
            .iter()
            .flat_map(|u| u.segments.iter().copied())
            .collect();
        for id in all {
            if ahead == self.settings.prefetch {
                break;
            }
            let Some(s) = self.segments.iter_mut().find(|s| s.id == id) else {
                continue;
            };
            if s.ended {
                continue;
            }
            if !s.synthesizing {
                s.synthesizing = true;
                out.push(Output::Synthesize {
                    segment: s.id,
                    text: s.text.clone(),
                });
            }
            ahead += 1;
        }
        // Utterances at the front that have nothing left end now, in order.
        while let Some(u) = self.utterances.front() {
            if !(u.closed && u.segments.is_empty()) {
                break;
            }
            let u = self.utterances.pop_front().expect("front exists");
            if u.report {
                // Nothing speakable, or all of it played: ok unless it failed.
                out.push(Output::Ended {
                    id: u.id,
                    ok: !u.failed,
                });
            }
        }
    }

    fn finish_segment(&mut self, segment: SegmentId) {
        if let Some(i) = self.segments.iter().position(|s| s.id == segment) {
            self.segments.remove(i);
        }
        for u in self.utterances.iter_mut() {
            if let Some(p) = u.segments.iter().position(|s| *s == segment) {
                u.segments.remove(p);
                break;
            }
        }
    }

    fn interrupt(&mut self, out: &mut Vec<Output>) {
        if self.utterances.is_empty() {
            return;
        }
        out.push(Output::FlushPlayback);
        for s in self.segments.drain(..) {
            if s.synthesizing && !s.synthesized {
                out.push(Output::Cancel { segment: s.id });
            }
        }
        for u in self.utterances.drain(..) {
            if u.segmenter.is_some() {
                if self.cut_streams.len() == CUT_STREAMS {
                    self.cut_streams.pop_front();
                }
                self.cut_streams.push_back(u.id.clone());
            }
            if u.report {
                out.push(Output::Ended {
                    id: u.id,
                    ok: false,
                });
            }
        }
    }

    /// A synthesis failed: the utterance keeps what was already handed to the codec, drops the
    /// rest, takes no more text, and ends `ok: false` once what was handed over has played.
    fn fail_utterance_of(&mut self, segment: SegmentId, out: &mut Vec<Output>) {
        let Some(ui) = self.utterance_index_of(segment) else {
            return;
        };
        let u = &mut self.utterances[ui];
        u.failed = true;
        u.closed = true;
        u.segmenter = None;
        let mine: Vec<SegmentId> = u.segments.iter().copied().collect();
        let mut keep = Vec::new();
        for id in mine {
            let Some(i) = self.segments.iter().position(|s| s.id == id) else {
                continue;
            };
            let s = &mut self.segments[i];
            if s.id == segment && (s.fed > 0 || !s.pending.is_empty()) {
                // Play what arrived of the failed segment, then stop.
                s.synthesized = true;
                keep.push(id);
            } else if s.ended {
                keep.push(id);
            } else {
                if s.synthesizing && !s.synthesized && s.id != segment {
                    out.push(Output::Cancel { segment: s.id });
                }
                self.segments.remove(i);
            }
        }
        self.utterances[ui].segments = keep.into();
    }

    fn utterance_index_of(&self, segment: SegmentId) -> Option<usize> {
        self.utterances
            .iter()
            .position(|u| u.segments.contains(&segment))
    }

    fn utterance_of(&mut self, segment: SegmentId) -> Option<&mut Utterance> {
        self.utterances
            .iter_mut()
            .find(|u| u.segments.contains(&segment))
    }
}

impl Utterance {
    fn new(id: &str, report: bool, received: Instant) -> Self {
        Utterance {
            id: id.to_owned(),
            report,
            segmenter: None,
            closed: false,
            failed: false,
            started: false,
            segments: VecDeque::new(),
            played: Vec::new(),
            received,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a player like the actor does, with a fake engine and codec that obey `Output`s,
    /// and records the events.
    struct Rig {
        p: Player,
        t: Instant,
        /// Segments being synthesized, in start order.
        synthesizing: Vec<SegmentId>,
        cancelled: Vec<SegmentId>,
        /// Segments in the codec's queue, with their audio and whether they were ended.
        codec: Vec<(SegmentId, usize, bool)>,
        flushes: usize,
        events: Vec<String>,
        latencies: Vec<(String, Duration, Option<Duration>)>,
        heard: Vec<String>,
    }

    fn settings() -> PlayerSettings {
        PlayerSettings {
            limits: SegmentLimits {
                first_min_chars: 6,
                first_max_chars: 40,
                max_chars: 120,
            },
            prefetch: 2,
        }
    }

    impl Rig {
        fn new() -> Rig {
            Rig {
                p: Player::new(settings()),
                t: Instant::now(),
                synthesizing: vec![],
                cancelled: vec![],
                codec: vec![],
                flushes: 0,
                events: vec![],
                latencies: vec![],
                heard: vec![],
            }
        }

        fn input(&mut self, i: Input<'_>) {
            let outs = self.p.handle(i, self.t);
            for o in outs {
                match o {
                    Output::Synthesize { segment, .. } => self.synthesizing.push(segment),
                    Output::Cancel { segment } => {
                        self.synthesizing.retain(|s| *s != segment);
                        self.cancelled.push(segment);
                    }
                    Output::Play { segment, pcm } => {
                        match self.codec.iter_mut().find(|c| c.0 == segment) {
                            Some(c) => c.1 += pcm.len(),
                            None => self.codec.push((segment, pcm.len(), false)),
                        }
                    }
                    Output::EndOfSegment { segment } => {
                        if let Some(c) = self.codec.iter_mut().find(|c| c.0 == segment) {
                            c.2 = true;
                        }
                    }
                    Output::FlushPlayback => {
                        self.flushes += 1;
                        self.codec.clear();
                    }
                    Output::Started { id } => self.events.push(format!("started {id}")),
                    Output::Ended { id, ok } => self.events.push(format!("ended {id} {ok}")),
                    Output::FirstAudio {
                        id,
                        tts_first,
                        since_asr_final,
                    } => self.latencies.push((id, tts_first, since_asr_final)),
                    Output::SegmentStarted { id, text } => self.heard.push(format!("{id}: {text}")),
                    Output::Interrupted {
                        id,
                        played_ms,
                        segments,
                    } => self.events.push(format!(
                        "interrupted {id} {played_ms}ms {:?}",
                        PlayedSegment::join(&segments)
                    )),
                }
            }
        }

        fn speak(&mut self, id: &str, text: &str) {
            self.input(Input::Speak {
                id,
                text,
                report: true,
            });
        }

        fn stream(&mut self, id: &str, text: &str, end: bool) {
            self.input(Input::Stream { id, text, end });
        }

        /// The engine delivers the oldest synthesis in full (`samples` of audio) and finishes.
        fn synth_one(&mut self, samples: usize) -> SegmentId {
            let seg = self.synthesizing.remove(0);
            self.input(Input::Audio {
                segment: seg,
                pcm: vec![1; samples],
            });
            self.input(Input::Synthesized {
                segment: seg,
                ok: true,
            });
            seg
        }

        fn fail_one(&mut self) -> SegmentId {
            let seg = self.synthesizing.remove(0);
            self.input(Input::Synthesized {
                segment: seg,
                ok: false,
            });
            seg
        }

        /// The codec plays out everything queued that is complete, front first.
        fn play_all(&mut self) {
            while let Some(&(seg, samples, ended)) = self.codec.first() {
                if samples > 0 {
                    self.input(Input::PlaybackStarted { segment: seg });
                }
                if !ended {
                    break;
                }
                self.codec.remove(0);
                self.input(Input::PlaybackFinished {
                    segment: seg,
                    frames: (samples / 320) as u32,
                });
            }
        }

        /// Synthesizes and plays until nothing is left.
        fn run(&mut self) {
            for _ in 0..100 {
                if self.synthesizing.is_empty() {
                    self.play_all();
                    if self.synthesizing.is_empty() {
                        return;
                    }
                }
                self.synth_one(320);
                self.play_all();
            }
        }

        fn advance(&mut self, ms: u64) {
            self.t += Duration::from_millis(ms);
        }
    }

    #[test]
    fn one_speak_starts_and_ends() {
        let mut r = Rig::new();
        r.speak("u1", "Hello there. How are you?");
        assert_eq!(r.synthesizing.len(), 2, "both sentences synthesize ahead");
        r.run();
        assert_eq!(r.events, ["started u1", "ended u1 true"]);
        assert!(r.p.is_idle());
    }

    #[test]
    fn back_to_back_speaks_each_get_their_pair_in_order() {
        let mut r = Rig::new();
        r.speak("u1", "First.");
        r.speak("u2", "Second.");
        r.speak("u3", "Third.");
        r.run();
        assert_eq!(
            r.events,
            [
                "started u1",
                "ended u1 true",
                "started u2",
                "ended u2 true",
                "started u3",
                "ended u3 true"
            ]
        );
    }

    #[test]
    fn a_stream_in_chunks_is_one_utterance() {
        let mut r = Rig::new();
        r.stream("s1", "Sure, let me", false);
        r.stream("s1", " check that for you. It", false);
        r.stream("s1", " will take a moment.", false);
        r.stream("s1", "", true);
        r.run();
        assert_eq!(r.events, ["started s1", "ended s1 true"]);
    }

    #[test]
    fn a_slow_stream_that_runs_dry_and_resumes_stays_one_utterance() {
        let mut r = Rig::new();
        r.stream("s1", "Hello there. ", false);
        r.run();
        // Everything so far has played; the stream is still open: no tts.ended yet.
        assert_eq!(r.events, ["started s1"]);
        r.advance(2000);
        r.stream("s1", "Here is more. ", false);
        r.run();
        assert_eq!(
            r.events,
            ["started s1"],
            "no second tts.started for the same utterance"
        );
        r.stream("s1", "", true);
        r.run();
        assert_eq!(r.events, ["started s1", "ended s1 true"]);
    }

    #[test]
    fn interrupt_mid_utterance_stops_cancels_and_drops_the_queue() {
        let mut r = Rig::new();
        r.speak("u1", "One sentence here. Another sentence. A third one.");
        r.speak("u2", "Queued behind.");
        r.synth_one(320);
        r.play_all();
        assert_eq!(r.events, ["started u1"]);
        // Synthesis of the second sentence is in flight when the interrupt comes.
        let in_flight = r.synthesizing.clone();
        assert!(!in_flight.is_empty());
        r.input(Input::Interrupt);
        assert_eq!(r.flushes, 1);
        assert_eq!(r.cancelled, in_flight, "in-flight synthesis is cancelled");
        assert_eq!(r.events, ["started u1", "ended u1 false", "ended u2 false"]);
        // Late audio from a cancelled synthesis is ignored.
        r.input(Input::Audio {
            segment: in_flight[0],
            pcm: vec![1; 320],
        });
        r.input(Input::Synthesized {
            segment: in_flight[0],
            ok: true,
        });
        assert!(r.codec.is_empty());
        // The next speak plays normally.
        r.speak("u3", "After the interrupt.");
        r.run();
        assert_eq!(&r.events[3..], ["started u3", "ended u3 true"]);
    }

    #[test]
    fn interrupt_with_nothing_playing_does_nothing() {
        let mut r = Rig::new();
        r.input(Input::Interrupt);
        assert_eq!(r.flushes, 0);
        assert!(r.events.is_empty());
    }

    #[test]
    fn a_new_stream_id_replaces_the_open_stream() {
        let mut r = Rig::new();
        r.stream("s1", "Thinking about it. ", false);
        r.run();
        r.stream("s2", "Actually, something else.", true);
        assert_eq!(r.events, ["started s1", "ended s1 false"]);
        r.run();
        assert_eq!(
            r.events,
            [
                "started s1",
                "ended s1 false",
                "started s2",
                "ended s2 true"
            ]
        );
        // Late chunks for the replaced stream do nothing.
        r.stream("s1", "More old text.", true);
        r.run();
        assert_eq!(r.events.len(), 4);
    }

    #[test]
    fn a_completed_stream_id_may_be_used_again() {
        let mut r = Rig::new();
        r.stream("turn", "First answer.", true);
        r.run();
        r.stream("turn", "Second answer.", true);
        r.run();
        assert_eq!(
            r.events,
            [
                "started turn",
                "ended turn true",
                "started turn",
                "ended turn true"
            ]
        );
    }

    #[test]
    fn speak_queued_behind_an_open_stream_waits_for_it() {
        let mut r = Rig::new();
        r.stream("s1", "Part one. ", false);
        r.speak("u1", "Spoken later.");
        r.run();
        assert_eq!(r.events, ["started s1"]);
        r.stream("s1", "Part two.", true);
        r.run();
        assert_eq!(
            r.events,
            ["started s1", "ended s1 true", "started u1", "ended u1 true"]
        );
    }

    #[test]
    fn nothing_speakable_ends_ok_without_started_and_in_order() {
        let mut r = Rig::new();
        r.speak("u1", "Real words.");
        r.speak("u2", "😊 ---");
        r.speak("u3", "More words.");
        r.run();
        assert_eq!(
            r.events,
            [
                "started u1",
                "ended u1 true",
                "ended u2 true",
                "started u3",
                "ended u3 true"
            ]
        );
        let mut r = Rig::new();
        r.speak("e", "**");
        assert_eq!(r.events, ["ended e true"]);
    }

    #[test]
    fn synthesis_error_ends_the_utterance_not_ok_and_the_next_plays() {
        let mut r = Rig::new();
        r.speak("u1", "This will fail. So will this.");
        r.speak("u2", "This plays.");
        r.fail_one();
        assert_eq!(r.events, ["ended u1 false"]);
        assert_eq!(
            r.cancelled.len(),
            1,
            "the other segment's synthesis is cancelled"
        );
        r.run();
        assert_eq!(r.events, ["ended u1 false", "started u2", "ended u2 true"]);
    }

    #[test]
    fn failure_after_some_audio_plays_what_arrived_then_ends_not_ok() {
        let mut r = Rig::new();
        r.speak("u1", "Partial audio here.");
        let seg = r.synthesizing[0];
        r.input(Input::Audio {
            segment: seg,
            pcm: vec![1; 640],
        });
        r.input(Input::Synthesized {
            segment: seg,
            ok: false,
        });
        r.synthesizing.clear();
        r.play_all();
        assert_eq!(r.events, ["started u1", "ended u1 false"]);
    }

    #[test]
    fn call_end_ends_everything_once() {
        let mut r = Rig::new();
        r.speak("u1", "Playing now.");
        r.speak("u2", "Queued.");
        // Some audio of u1 arrived and started playing; its synthesis is still running.
        let seg = r.synthesizing[0];
        r.input(Input::Audio {
            segment: seg,
            pcm: vec![1; 320],
        });
        r.play_all();
        r.input(Input::CallEnding);
        assert_eq!(r.events, ["started u1", "ended u1 false", "ended u2 false"]);
        r.input(Input::CallEnding);
        assert_eq!(r.events.len(), 3);
    }

    #[test]
    fn internal_prompts_report_nothing() {
        let mut r = Rig::new();
        r.input(Input::Speak {
            id: "hold",
            text: "Please hold.",
            report: false,
        });
        r.run();
        assert!(r.events.is_empty());
        assert!(r.p.is_idle());
    }

    #[test]
    fn prefetch_is_bounded_and_audio_is_fed_in_order() {
        let mut r = Rig::new();
        r.speak("u1", "One. Two. Three. Four. Five.");
        assert_eq!(
            r.synthesizing.len(),
            2,
            "only two segments synthesize ahead"
        );
        // The second synthesis finishes first: its audio must wait for the first.
        let second = r.synthesizing.remove(1);
        r.input(Input::Audio {
            segment: second,
            pcm: vec![2; 100],
        });
        r.input(Input::Synthesized {
            segment: second,
            ok: true,
        });
        assert!(r.codec.is_empty(), "nothing is played out of order");
        r.synth_one(50);
        assert_eq!(
            r.codec.iter().map(|c| (c.1, c.2)).collect::<Vec<_>>(),
            vec![(50, true), (100, true)]
        );
        assert_eq!(r.synthesizing.len(), 2, "the next two started");
        r.run();
        assert_eq!(r.events, ["started u1", "ended u1 true"]);
    }

    #[test]
    fn first_audio_latencies_are_measured() {
        let mut r = Rig::new();
        r.input(Input::AsrFinal);
        r.advance(100);
        r.speak("u1", "Answer.");
        r.advance(250);
        r.run();
        r.speak("u2", "Second.");
        r.advance(80);
        r.run();
        assert_eq!(r.latencies.len(), 2);
        assert_eq!(
            r.latencies[0],
            (
                "u1".into(),
                Duration::from_millis(250),
                Some(Duration::from_millis(350))
            )
        );
        assert_eq!(
            r.latencies[1],
            ("u2".into(), Duration::from_millis(80), None),
            "the anchor is used once"
        );
    }
}

#[cfg(test)]
mod barge_in_tests {
    //! `played_text` bookkeeping: what the caller heard when they interrupted.
    use super::*;

    fn settings() -> PlayerSettings {
        PlayerSettings {
            limits: SegmentLimits {
                first_min_chars: 6,
                first_max_chars: 40,
                max_chars: 120,
            },
            prefetch: 3,
        }
    }

    #[test]
    fn barge_in_reports_complete_segments_and_the_one_in_progress() {
        let t = Instant::now();
        let mut p = Player::new(settings());
        let outs = p.handle(
            Input::Speak {
                id: "u1",
                text: "First sentence here. Second one now. Third never heard.",
                report: true,
            },
            t,
        );
        let segs: Vec<SegmentId> = outs
            .iter()
            .filter_map(|o| {
                if let Output::Synthesize { segment, .. } = o {
                    Some(*segment)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(segs.len(), 3);
        for &s in &segs {
            p.handle(
                Input::Audio {
                    segment: s,
                    pcm: vec![1; 320 * 50],
                },
                t,
            );
            p.handle(
                Input::Synthesized {
                    segment: s,
                    ok: true,
                },
                t,
            );
        }
        // Segment 1 played completely (50 frames), segment 2 started and 12 frames went out.
        let heard = p.handle(Input::PlaybackStarted { segment: segs[0] }, t);
        assert!(heard.contains(&Output::SegmentStarted {
            id: "u1".into(),
            text: "First sentence here.".into()
        }));
        p.handle(
            Input::PlaybackFinished {
                segment: segs[0],
                frames: 50,
            },
            t,
        );
        p.handle(Input::PlaybackStarted { segment: segs[1] }, t);
        let outs = p.handle(
            Input::BargeIn {
                segment: Some(segs[1]),
                frames: 12,
            },
            t,
        );
        let report = outs.iter().find_map(|o| {
            if let Output::Interrupted {
                id,
                played_ms,
                segments,
            } = o
            {
                Some((id.clone(), *played_ms, segments.clone()))
            } else {
                None
            }
        });
        let (id, played_ms, segments) = report.expect("a tts.interrupt report");
        assert_eq!(id, "u1");
        assert_eq!(played_ms, 50 * 20 + 12 * 20);
        assert_eq!(
            segments,
            vec![
                PlayedSegment {
                    text: "First sentence here.".into(),
                    played_ms: 1000,
                    complete: true
                },
                PlayedSegment {
                    text: "Second one now.".into(),
                    played_ms: 240,
                    complete: false
                },
            ]
        );
        assert_eq!(
            PlayedSegment::join(&segments),
            "First sentence here. Second one now.…"
        );
        // The report comes first, then the utterance ends not ok; syntheses in flight are gone.
        let kinds: Vec<&str> = outs
            .iter()
            .map(|o| match o {
                Output::Interrupted { .. } => "interrupted",
                Output::FlushPlayback => "flush",
                Output::Ended { ok: false, .. } => "ended",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["interrupted", "flush", "ended"]);
        assert!(p.is_idle());
    }

    #[test]
    fn barge_in_between_segments_counts_only_complete_ones() {
        let t = Instant::now();
        let mut p = Player::new(settings());
        let outs = p.handle(
            Input::Speak {
                id: "u",
                text: "One here. Two here.",
                report: true,
            },
            t,
        );
        let first = outs
            .iter()
            .find_map(|o| {
                if let Output::Synthesize { segment, .. } = o {
                    Some(*segment)
                } else {
                    None
                }
            })
            .unwrap();
        p.handle(
            Input::Audio {
                segment: first,
                pcm: vec![1; 320 * 10],
            },
            t,
        );
        p.handle(
            Input::Synthesized {
                segment: first,
                ok: true,
            },
            t,
        );
        p.handle(Input::PlaybackStarted { segment: first }, t);
        p.handle(
            Input::PlaybackFinished {
                segment: first,
                frames: 10,
            },
            t,
        );
        let outs = p.handle(
            Input::BargeIn {
                segment: None,
                frames: 0,
            },
            t,
        );
        assert!(outs.contains(&Output::Interrupted {
            id: "u".into(),
            played_ms: 200,
            segments: vec![PlayedSegment {
                text: "One here.".into(),
                played_ms: 200,
                complete: true
            }],
        }));
    }

    #[test]
    fn barge_in_before_anything_played_reports_nothing_but_still_stops() {
        let t = Instant::now();
        let mut p = Player::new(settings());
        p.handle(
            Input::Speak {
                id: "u",
                text: "Not yet playing.",
                report: true,
            },
            t,
        );
        let outs = p.handle(
            Input::BargeIn {
                segment: None,
                frames: 0,
            },
            t,
        );
        assert!(!outs.iter().any(|o| matches!(o, Output::Interrupted { .. })));
        assert!(outs.contains(&Output::Ended {
            id: "u".into(),
            ok: false
        }));
    }
}
