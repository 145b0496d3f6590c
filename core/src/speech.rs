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
//! - `tts.ended` goes out exactly once for every utterance that was queued, started or refused:
//!   `ok: true` after its last frame, `ok: false` when it was interrupted, replaced by a new
//!   stream, failed to synthesize, hit a limit, or the call ended. Text with nothing speakable
//!   ends `ok: true` without a `tts.started`.
//! - Limits ([`TtsLimit`]): an utterance whose text (a `tts.speak`, or a stream's chunks
//!   together) is longer than `max_text_bytes`, or that would make more than `max_queued`
//!   utterances, ends `ok: false` with the limit as its `reason`. A speak or a new stream is
//!   refused at once, before any of its text is looked at; a stream that grows too long stops
//!   taking text, plays what it had, then ends. The dialog app's utterances are limited, the
//!   service's own prompts are not.
//! - A segment's audio is at most `max_segment_samples`, whoever's utterance it is: that bounds
//!   the engine, not the app. A synthesis that sends more (a broken vendor that never ends a
//!   segment) is cancelled at the bound; the audio up to it plays, the segments before it play,
//!   and the utterance ends there like a stream that grew too long ([`TtsLimit::AudioTooLong`]).
//! - An interrupt stops playback (the codec flushes its queue), cancels every synthesis in
//!   flight (so nothing can block behind it, unlike the original), and drops the queue.
//! - Late chunks of a stream that was cut off (interrupted, replaced, failed, refused or cut by
//!   a limit) are dropped until its last chunk, so an LLM stream still in flight can neither
//!   start speaking again nor replace the stream that followed it.
//! - Ids need not be unique: text for the id of a stream that has completed (its last chunk
//!   came) starts a new utterance, queued behind the earlier one even while that one is still
//!   queued or playing, and a `tts.speak` may repeat any id. Since utterances play and end in
//!   queue order, one id's events never interleave: the earlier utterance's `tts.ended` comes
//!   before the later one's `tts.started` (only a refusal ends at once, with its `reason`).
//! - At most `prefetch` segments synthesize ahead of the audio already handed to the codec, so
//!   a long answer plays without gaps, and no more than `2 * prefetch` segments are handed
//!   over (waiting to play) and synthesizing together, so the audio a call holds is bounded by
//!   `2 * prefetch * max_segment_samples`, whatever the engine's speed and however much is
//!   queued.
//!
//! Audio is tagged by segment id; late audio or progress for a segment that was dropped is
//! ignored, so cancellation races are harmless.
//!
//! Cost: every input does work in proportion to what it changes (a few segments and the
//! prefetch window), never to the length of the queue: segments are found by id in a map, each
//! utterance keeps the segments it handed over apart from those still to come, and the
//! utterances at the front whose segments were all handed over are skipped by a cursor. The
//! original rebuilt the whole play order on every input, which took seconds with a long queue.

use crate::frame::FRAME_MS;
use crate::text::{SegmentLimits, Segmenter, sanitize};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// A segment's id: unique for the call, increasing within an utterance.
pub type SegmentId = u64;

/// Settings of the player.
#[derive(Debug, Clone, Copy)]
pub struct PlayerSettings {
    /// How `tts.stream` text is cut.
    pub limits: SegmentLimits,
    /// Segments synthesized ahead of the one being handed to the codec (at least 1).
    pub prefetch: usize,
    /// Most bytes of text in one utterance of the dialog app: a `tts.speak`, or a stream's
    /// chunks together ([`TtsLimit::TextTooLong`] beyond).
    pub max_text_bytes: usize,
    /// Most utterances queued at once, the one playing included; a new utterance of the dialog
    /// app beyond is refused ([`TtsLimit::QueueFull`]).
    pub max_queued: usize,
    /// Most audio of one segment, in samples at the call's rate (`tts.max_segment_audio_ms`);
    /// a synthesis that sends more is cut there ([`TtsLimit::AudioTooLong`]).
    pub max_segment_samples: usize,
}

/// A limit that refused an utterance or cut it short: the `reason` of its `tts.ended`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtsLimit {
    /// Its text was longer than `max_text_bytes`.
    TextTooLong,
    /// `max_queued` utterances were already queued.
    QueueFull,
    /// A segment's synthesis sent more than `max_segment_samples` of audio: it was cut there,
    /// and the utterance ended after it.
    AudioTooLong,
}

impl TtsLimit {
    /// The `reason` on the wire.
    pub fn label(self) -> &'static str {
        match self {
            TtsLimit::TextTooLong => "text-too-long",
            TtsLimit::QueueFull => "queue-full",
            TtsLimit::AudioTooLong => "audio-too-long",
        }
    }
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
    /// The caller's voice paused playback (a confirmed barge-in's first stage): `segment` was
    /// playing with `frames` of it sent. Nothing is dropped.
    Paused {
        /// The segment in progress, if one was.
        segment: Option<SegmentId>,
        /// Its frames sent.
        frames: u32,
    },
    /// The pause was not an interruption: playback goes on where it paused.
    Resumed,
    /// A final transcript arrived (the anchor for end-to-end latency).
    AsrFinal,
    /// The call is ending: everything still queued ends.
    CallEnding,
}

/// What the actor must do, in order.
#[derive(Debug, PartialEq)]
pub enum Output {
    /// Start synthesizing `text` for `segment`. An utterance's segments are asked for in order,
    /// so an engine with vendor contexts can speak them in one ([`Output::UtteranceDone`] ends
    /// it).
    Synthesize {
        /// Segment.
        segment: SegmentId,
        /// Its utterance's serial number: unique for the call.
        utterance: u64,
        /// Sanitized text.
        text: String,
    },
    /// No segment of the utterance with this serial number will be asked for any more: it takes
    /// no more text and every segment it has was asked for, or it is over (played, failed,
    /// interrupted, the call ends; then it follows its `Ended`/`PromptEnded` and its segments'
    /// `Cancel`s). Once per utterance. Syntheses in flight go on (a `Cancel` still stops them).
    UtteranceDone {
        /// Its serial number, as in [`Output::Synthesize`].
        utterance: u64,
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
        /// The limit that refused it or cut it short, if one did.
        reason: Option<TtsLimit>,
    },
    /// A limit refused an utterance or cut it short (counted and logged; its `Ended` follows,
    /// at once for a refusal, after what it had has played for a stream that grew too long or a
    /// segment whose audio did). Once per refusal or cut: an utterance whose segments are cut
    /// twice by the audio bound gives two, and its `Ended` names the first limit.
    LimitHit {
        /// Utterance id.
        id: String,
        /// Which limit.
        limit: TtsLimit,
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
    /// `tts.paused`: the caller's voice paused this utterance after `played_ms` of it.
    Paused {
        /// Utterance id.
        id: String,
        /// Audio sent for it so far, in ms.
        played_ms: u32,
    },
    /// `tts.resumed`: the paused utterance plays on.
    Resumed {
        /// Utterance id.
        id: String,
    },
    /// An internal prompt (queued with `report: false`) is over: played, interrupted, failed or
    /// dropped because the call ends. Nothing is reported for such a prompt, so this is the only
    /// sign of its end; the call waits for it to end a call after its give-up prompt.
    PromptEnded {
        /// Utterance id.
        id: String,
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
    /// Events are reported for it (and limits apply to it): it came from the dialog app.
    report: bool,
    /// `Some` while a stream is open.
    segmenter: Option<Segmenter>,
    /// No more text will come.
    closed: bool,
    /// Failed: remaining text is dropped, it ends with `ok: false`.
    failed: bool,
    /// A limit cut it short: it takes no more text and ends with `ok: false` and this reason.
    limit: Option<TtsLimit>,
    /// Bytes of text received for it.
    text_bytes: usize,
    /// `tts.started` was reported.
    started: bool,
    /// Its segments handed to the codec completely, waiting to finish playing, in order.
    handed: VecDeque<SegmentId>,
    /// Its segments not handed over yet (synthesizing or waiting to), in order.
    queued: VecDeque<SegmentId>,
    /// Segments played completely, with their text and length.
    played: Vec<PlayedSegment>,
    /// When the command that created it arrived.
    received: Instant,
    /// [`Output::UtteranceDone`] was given: it takes no more text and every segment it has was
    /// asked for.
    released: bool,
}

#[derive(Debug)]
struct Segment {
    /// The serial number of its utterance (see [`Player::front_serial`]).
    utterance: u64,
    text: String,
    /// Synthesis was started.
    synthesizing: bool,
    /// Synthesis delivered everything.
    synthesized: bool,
    /// Audio waiting for its turn to be handed to the codec.
    pending: Vec<i16>,
    /// Samples handed to the codec so far.
    fed: usize,
    /// `EndOfSegment` was issued (it is in its utterance's `handed`).
    ended: bool,
}

/// The per-call player.
#[derive(Debug)]
pub struct Player {
    settings: PlayerSettings,
    /// Utterances in play order; the front one is playing (or next).
    utterances: VecDeque<Utterance>,
    /// The serial number of the front utterance. Serial numbers go up by one along the queue
    /// and are never reused, so a segment finds its utterance by subtraction.
    front_serial: u64,
    /// Every segment not finished playing (handed over or still to come), by id.
    segments: HashMap<SegmentId, Segment>,
    /// Segments not handed over yet, over all utterances.
    queued: usize,
    /// The utterances before this index take no more text and have handed every segment over:
    /// feeding audio and prefetching start here.
    settled: usize,
    next_segment: SegmentId,
    /// When the last `asr.final` arrived, until an utterance's first audio consumes it.
    asr_anchor: Option<Instant>,
    /// The utterance reported `tts.paused` and not resumed yet.
    paused: Option<String>,
    /// Ids of streams that were cut off (interrupted, replaced, failed, refused or cut by a
    /// limit) and have not sent their last chunk: their late chunks are dropped, so an LLM
    /// stream still in flight cannot start speaking again after a barge-in.
    cut_streams: VecDeque<String>,
}

/// How many cut-off stream ids are remembered.
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
            front_serial: 0,
            segments: HashMap::new(),
            queued: 0,
            settled: 0,
            next_segment: 1,
            asr_anchor: None,
            paused: None,
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
                if report {
                    // Refused before any of the text is looked at.
                    let refused = if text.len() > self.settings.max_text_bytes {
                        Some(TtsLimit::TextTooLong)
                    } else if self.utterances.len() >= self.settings.max_queued {
                        Some(TtsLimit::QueueFull)
                    } else {
                        None
                    };
                    if let Some(limit) = refused {
                        refuse(id, limit, &mut out);
                        return out;
                    }
                }
                let mut u = Utterance::new(id, report, now);
                u.closed = true;
                u.text_bytes = text.len();
                self.utterances.push_back(u);
                let mut seg = Segmenter::new(self.settings.limits);
                let mut parts = seg.push(text);
                parts.extend(seg.finish());
                self.add_segments(self.utterances.len() - 1, parts);
            }
            Input::Stream { id, text, end } => {
                if !self.stream_chunk(id, text, end, now, &mut out) {
                    return out;
                }
            }
            Input::Interrupt => self.interrupt(&mut out),
            Input::CallEnding => {
                self.cancel_all(&mut out);
                let first = self.front_serial;
                for (serial, u) in (first..).zip(self.take_all()) {
                    u.end(false, serial, &mut out);
                }
                return out;
            }
            Input::Audio { segment, mut pcm } => {
                // Nothing comes after a synthesis finished; what does (it was cut at the bound,
                // and the engine's stream was not stopped yet) is dropped.
                if let Some(s) = self.segments.get_mut(&segment)
                    && !s.ended
                    && !s.synthesized
                {
                    let room = self
                        .settings
                        .max_segment_samples
                        .saturating_sub(s.fed + s.pending.len());
                    let over = pcm.len() > room;
                    pcm.truncate(room);
                    s.pending.extend_from_slice(&pcm);
                    if over {
                        self.cut_at_audio_limit(segment, &mut out);
                    }
                }
            }
            Input::Synthesized { segment, ok } => {
                if let Some(s) = self.segments.get_mut(&segment) {
                    if ok {
                        s.synthesized = true;
                    } else {
                        self.fail_utterance_of(segment, &mut out);
                    }
                }
            }
            Input::PlaybackStarted { segment } => {
                let text = self.segments.get(&segment).map(|s| s.text.clone());
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
                let text = self.segments.get(&segment).map(|s| s.text.clone());
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
                        && let Some(s) = self.segments.get(&seg)
                        && s.utterance == self.front_serial
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
            Input::Paused { segment, frames } => {
                if let Some(u) = self.utterances.front()
                    && u.started
                    && u.report
                {
                    let current = match segment {
                        Some(seg)
                            if self
                                .segments
                                .get(&seg)
                                .is_some_and(|s| s.utterance == self.front_serial) =>
                        {
                            frames * FRAME_MS
                        }
                        _ => 0,
                    };
                    let played: u32 = u.played.iter().map(|s| s.played_ms).sum();
                    self.paused = Some(u.id.clone());
                    out.push(Output::Paused {
                        id: u.id.clone(),
                        played_ms: played + current,
                    });
                }
            }
            Input::Resumed => {
                if let Some(id) = self.paused.take() {
                    out.push(Output::Resumed { id });
                }
            }
            Input::AsrFinal => self.asr_anchor = Some(now),
        }
        self.pump(&mut out);
        out
    }

    /// A `tts.stream` chunk. Returns false when it changed nothing that needs pumping.
    fn stream_chunk(
        &mut self,
        id: &str,
        text: &str,
        end: bool,
        now: Instant,
        out: &mut Vec<Output>,
    ) -> bool {
        let open = self.utterances.iter().position(|u| u.segmenter.is_some());
        let idx = match open {
            Some(i) if self.utterances[i].id == id => i,
            open => {
                if let Some(p) = self.cut_streams.iter().position(|c| c == id) {
                    // A late chunk of a stream that was cut off: dropped, and forgotten with
                    // its last chunk (so the id may be used again). Checked before replacing
                    // the open stream, which a late chunk must not do.
                    if end {
                        self.cut_streams.remove(p);
                    }
                    return false;
                }
                if open.is_some() {
                    // A new stream replaces the open one: everything stops, as on interrupt.
                    self.interrupt(out);
                }
                // Not the open stream and not a cut one: a new utterance, even if an earlier
                // one with this id has completed and is still queued or playing (an app that
                // streams every answer as "reply" may be faster than playback). It queues
                // behind that one, so their events do not interleave.
                let refused = if text.len() > self.settings.max_text_bytes {
                    Some(TtsLimit::TextTooLong)
                } else if self.utterances.len() >= self.settings.max_queued {
                    Some(TtsLimit::QueueFull)
                } else {
                    None
                };
                if let Some(limit) = refused {
                    refuse(id, limit, out);
                    if !end {
                        self.cut(id);
                    }
                    return false;
                }
                let mut u = Utterance::new(id, true, now);
                u.segmenter = Some(Segmenter::new(self.settings.limits));
                self.utterances.push_back(u);
                self.utterances.len() - 1
            }
        };
        let max_text_bytes = self.settings.max_text_bytes;
        let u = &mut self.utterances[idx];
        u.text_bytes = u.text_bytes.saturating_add(text.len());
        if u.text_bytes > max_text_bytes {
            // Too long: the segments it already has play, the rest of the stream is dropped.
            u.segmenter = None;
            u.closed = true;
            u.limit = Some(TtsLimit::TextTooLong);
            out.push(Output::LimitHit {
                id: id.to_owned(),
                limit: TtsLimit::TextTooLong,
            });
            if !end {
                self.cut(id);
            }
            return true;
        }
        let Some(seg) = u.segmenter.as_mut() else {
            return false;
        };
        let mut parts = seg.push(text);
        if end {
            parts.extend(seg.finish());
            u.segmenter = None;
            u.closed = true;
        }
        self.add_segments(idx, parts);
        true
    }

    /// Remembers a stream that was cut off, so its late chunks are dropped.
    fn cut(&mut self, id: &str) {
        if self.cut_streams.len() == CUT_STREAMS {
            self.cut_streams.pop_front();
        }
        self.cut_streams.push_back(id.to_owned());
    }

    fn add_segments(&mut self, utterance: usize, parts: Vec<String>) {
        let serial = self.front_serial + utterance as u64;
        for text in parts {
            let text = sanitize(&text);
            if text.is_empty() {
                continue;
            }
            let id = self.next_segment;
            self.next_segment += 1;
            self.utterances[utterance].queued.push_back(id);
            self.queued += 1;
            self.segments.insert(
                id,
                Segment {
                    utterance: serial,
                    text,
                    synthesizing: false,
                    synthesized: false,
                    pending: Vec::new(),
                    fed: 0,
                    ended: false,
                },
            );
        }
    }

    /// Moves the cursor past utterances that take no more text and handed everything over.
    fn settle(&mut self) {
        while let Some(u) = self.utterances.get(self.settled)
            && u.closed
            && u.queued.is_empty()
        {
            self.settled += 1;
        }
    }

    /// Moves things along: feed audio in order, end segments, start syntheses, end utterances.
    fn pump(&mut self, out: &mut Vec<Output>) {
        // Where this pump's release check starts: an utterance the cursor moves past now may
        // just have been closed.
        let first = self.settled;
        self.settle();
        // Hand audio to the codec in play order (utterance by utterance; an utterance whose
        // stream is still open holds back everything after it), up to the first segment still
        // synthesizing.
        let mut i = self.settled;
        'feed: while let Some(u) = self.utterances.get_mut(i) {
            while let Some(&id) = u.queued.front() {
                let s = self
                    .segments
                    .get_mut(&id)
                    .expect("a queued segment is stored until it is finished or dropped");
                if !s.pending.is_empty() {
                    s.fed += s.pending.len();
                    out.push(Output::Play {
                        segment: id,
                        pcm: std::mem::take(&mut s.pending),
                    });
                }
                if !s.synthesized {
                    break 'feed;
                }
                s.ended = true;
                out.push(Output::EndOfSegment { segment: id });
                u.queued.pop_front();
                self.queued -= 1;
                if s.fed == 0 {
                    // No audio at all: it finishes without the codec's help.
                    self.segments.remove(&id);
                } else {
                    u.handed.push_back(id);
                }
            }
            if !u.closed {
                break;
            }
            i += 1;
        }
        self.settle();
        // Keep `prefetch` segments synthesizing beyond those already handed over completely,
        // but no more than `2 * prefetch` segments handed over and synthesizing together: the
        // codec keeps what it was handed until it has played, so without this an engine faster
        // than real time would move a whole queue of long answers into memory (minutes of
        // audio per utterance). Handed-over segments sit in the utterances up to the cursor,
        // which this same rule keeps short, so the count is cheap.
        // Segments behind an open stream may synthesize ahead; they just wait to be played.
        let handed: usize = self
            .utterances
            .iter()
            .take(self.settled + 1)
            .map(|u| u.handed.len())
            .sum();
        let room = (2 * self.settings.prefetch).saturating_sub(handed);
        let wanted = self.settings.prefetch.min(self.queued).min(room);
        let mut ahead = 0;
        let mut i = self.settled;
        while ahead < wanted
            && let Some(u) = self.utterances.get(i)
        {
            for &id in u.queued.iter().take(wanted - ahead) {
                let s = self
                    .segments
                    .get_mut(&id)
                    .expect("a queued segment is stored until it is finished or dropped");
                if !s.synthesizing {
                    s.synthesizing = true;
                    out.push(Output::Synthesize {
                        segment: id,
                        utterance: s.utterance,
                        text: s.text.clone(),
                    });
                }
                ahead += 1;
            }
            i += 1;
        }
        // An utterance that takes no more text and has asked for every segment it has is done
        // for the engine: a streaming engine ends its input now, so the vendor's end marker
        // closes the last segment (instead of the vendor having to mark it).
        let reach = i.max(self.settled + 1).min(self.utterances.len());
        for ui in first.min(reach)..reach {
            let u = &self.utterances[ui];
            if u.closed && !u.released && u.queued.iter().all(|id| self.segments[id].synthesizing) {
                self.utterances[ui].released = true;
                out.push(Output::UtteranceDone {
                    utterance: self.front_serial + ui as u64,
                });
            }
        }
        // Utterances at the front that have nothing left end now, in order.
        while let Some(u) = self.utterances.front() {
            if !(u.closed && u.queued.is_empty() && u.handed.is_empty()) {
                break;
            }
            let u = self.utterances.pop_front().expect("front exists");
            let serial = self.front_serial;
            self.front_serial += 1;
            self.settled = self.settled.saturating_sub(1);
            // Nothing speakable, or all of it played: ok unless it failed or hit a limit.
            let ok = !u.failed && u.limit.is_none();
            u.end(ok, serial, out);
        }
    }

    fn finish_segment(&mut self, segment: SegmentId) {
        let Some(s) = self.segments.remove(&segment) else {
            return;
        };
        let Some(i) = self.index_of(s.utterance) else {
            return;
        };
        // Both lists are in id order; normally the segment is the first one handed over.
        let u = &mut self.utterances[i];
        if let Ok(p) = u.handed.binary_search(&segment) {
            u.handed.remove(p);
        } else if let Ok(p) = u.queued.binary_search(&segment) {
            u.queued.remove(p);
            self.queued -= 1;
        }
    }

    /// Cancels every synthesis in flight, in the order they were created, and forgets every
    /// segment.
    fn cancel_all(&mut self, out: &mut Vec<Output>) {
        let mut cancel: Vec<SegmentId> = self
            .segments
            .drain()
            .filter(|(_, s)| s.synthesizing && !s.synthesized)
            .map(|(id, _)| id)
            .collect();
        cancel.sort_unstable();
        out.extend(cancel.into_iter().map(|segment| Output::Cancel { segment }));
    }

    /// Empties the queue (the segments must be gone already).
    fn take_all(&mut self) -> VecDeque<Utterance> {
        self.front_serial += self.utterances.len() as u64;
        self.queued = 0;
        self.settled = 0;
        std::mem::take(&mut self.utterances)
    }

    fn interrupt(&mut self, out: &mut Vec<Output>) {
        // A paused utterance that is interrupted ends; it is never resumed.
        self.paused = None;
        if self.utterances.is_empty() {
            return;
        }
        out.push(Output::FlushPlayback);
        self.cancel_all(out);
        let first = self.front_serial;
        for (serial, u) in (first..).zip(self.take_all()) {
            if u.segmenter.is_some() {
                self.cut(&u.id);
            }
            u.end(false, serial, out);
        }
    }

    /// A synthesis failed: the utterance keeps what was already handed to the codec, drops the
    /// rest, takes no more text, and ends `ok: false` once what was handed over has played.
    fn fail_utterance_of(&mut self, segment: SegmentId, out: &mut Vec<Output>) {
        let Some(ui) = self
            .segments
            .get(&segment)
            .and_then(|s| self.index_of(s.utterance))
        else {
            return;
        };
        let u = &mut self.utterances[ui];
        u.failed = true;
        u.closed = true;
        let was_open = u.segmenter.take().is_some();
        let rest = std::mem::take(&mut u.queued);
        self.queued -= rest.len();
        for id in rest {
            let s = self
                .segments
                .get_mut(&id)
                .expect("a queued segment is stored until it is finished or dropped");
            if id == segment && (s.fed > 0 || !s.pending.is_empty()) {
                // Play what arrived of the failed segment, then stop.
                s.synthesized = true;
                u.queued.push_back(id);
                self.queued += 1;
            } else {
                if s.synthesizing && !s.synthesized && id != segment {
                    out.push(Output::Cancel { segment: id });
                }
                self.segments.remove(&id);
            }
        }
        if was_open {
            let id = u.id.clone();
            self.cut(&id);
        }
    }

    /// A segment's synthesis sent more audio than `max_segment_samples` (it holds that much
    /// now): it is cancelled and ends with what it has. Its utterance keeps the segments before
    /// it, drops those after it (cancelling their syntheses), takes no more text, and ends
    /// `ok: false` with [`TtsLimit::AudioTooLong`] (unless a limit already cut it) once what it
    /// kept has played. The utterance ends rather than going on with its next segment because
    /// the streaming engines speak a whole utterance in one vendor context and cut its audio
    /// into segments only where the vendor marks them: a vendor that never ends one segment's
    /// audio would never deliver the next one's either.
    fn cut_at_audio_limit(&mut self, segment: SegmentId, out: &mut Vec<Output>) {
        let Some(s) = self.segments.get_mut(&segment) else {
            return;
        };
        s.synthesized = true;
        let serial = s.utterance;
        let Some(ui) = self.index_of(serial) else {
            return;
        };
        let u = &mut self.utterances[ui];
        out.push(Output::LimitHit {
            id: u.id.clone(),
            limit: TtsLimit::AudioTooLong,
        });
        out.push(Output::Cancel { segment });
        u.limit.get_or_insert(TtsLimit::AudioTooLong);
        u.closed = true;
        let was_open = u.segmenter.take().is_some();
        // `queued` is in id order, and holds `segment` (it has not ended).
        let keep = u.queued.partition_point(|&id| id <= segment);
        let rest: Vec<SegmentId> = u.queued.drain(keep..).collect();
        let id = u.id.clone();
        self.queued -= rest.len();
        for later in rest {
            if let Some(s) = self.segments.remove(&later)
                && s.synthesizing
                && !s.synthesized
            {
                out.push(Output::Cancel { segment: later });
            }
        }
        if was_open {
            self.cut(&id);
        }
    }

    /// The index of the utterance with serial number `serial`, if it is still queued.
    fn index_of(&self, serial: u64) -> Option<usize> {
        let i = usize::try_from(serial.checked_sub(self.front_serial)?).ok()?;
        (i < self.utterances.len()).then_some(i)
    }

    fn utterance_of(&mut self, segment: SegmentId) -> Option<&mut Utterance> {
        let i = self.index_of(self.segments.get(&segment)?.utterance)?;
        self.utterances.get_mut(i)
    }
}

/// Refuses an utterance of the dialog app: the limit is reported, then its `tts.ended`.
fn refuse(id: &str, limit: TtsLimit, out: &mut Vec<Output>) {
    out.push(Output::LimitHit {
        id: id.to_owned(),
        limit,
    });
    out.push(Output::Ended {
        id: id.to_owned(),
        ok: false,
        reason: Some(limit),
    });
}

impl Utterance {
    fn new(id: &str, report: bool, received: Instant) -> Self {
        Utterance {
            id: id.to_owned(),
            report,
            segmenter: None,
            closed: false,
            failed: false,
            limit: None,
            text_bytes: 0,
            started: false,
            handed: VecDeque::new(),
            queued: VecDeque::new(),
            played: Vec::new(),
            received,
            released: false,
        }
    }

    /// How its end is told: `tts.ended` for the dialog app's utterances, [`Output::PromptEnded`]
    /// for an internal prompt (which is never reported); then [`Output::UtteranceDone`] for the
    /// engine.
    fn end(self, ok: bool, serial: u64, out: &mut Vec<Output>) {
        let released = self.released;
        out.push(if self.report {
            Output::Ended {
                id: self.id,
                ok,
                reason: self.limit,
            }
        } else {
            Output::PromptEnded { id: self.id }
        });
        if !released {
            out.push(Output::UtteranceDone { utterance: serial });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::SPEECH_FRAME_SAMPLES;

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
        /// `LimitHit`s, as "id reason".
        limits: Vec<String>,
        /// Internal prompts that ended, by id.
        prompts_ended: Vec<String>,
        /// Each synthesis's segment and utterance.
        utterance_of: Vec<(SegmentId, u64)>,
        /// Utterances done, in order.
        done: Vec<u64>,
    }

    /// The rig's bound on a segment's audio: a second at 16 kHz.
    const MAX_SEGMENT: usize = 50 * SPEECH_FRAME_SAMPLES;

    fn settings() -> PlayerSettings {
        PlayerSettings {
            limits: SegmentLimits {
                first_min_chars: 6,
                first_max_chars: 40,
                max_chars: 120,
            },
            prefetch: 2,
            max_text_bytes: 1000,
            max_queued: 8,
            max_segment_samples: MAX_SEGMENT,
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
                limits: vec![],
                prompts_ended: vec![],
                utterance_of: vec![],
                done: vec![],
            }
        }

        fn input(&mut self, i: Input<'_>) {
            let outs = self.p.handle(i, self.t);
            for o in outs {
                match o {
                    Output::Synthesize {
                        segment, utterance, ..
                    } => {
                        assert!(
                            !self.done.contains(&utterance),
                            "a segment of a finished utterance"
                        );
                        self.synthesizing.push(segment);
                        self.utterance_of.push((segment, utterance));
                    }
                    Output::UtteranceDone { utterance } => {
                        assert!(!self.done.contains(&utterance), "done twice");
                        self.done.push(utterance);
                    }
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
                    Output::Ended { id, ok, reason } => self.events.push(match reason {
                        Some(r) => format!("ended {id} {ok} {}", r.label()),
                        None => format!("ended {id} {ok}"),
                    }),
                    Output::LimitHit { id, limit } => {
                        self.limits.push(format!("{id} {}", limit.label()))
                    }
                    Output::FirstAudio {
                        id,
                        tts_first,
                        since_asr_final,
                    } => self.latencies.push((id, tts_first, since_asr_final)),
                    Output::SegmentStarted { id, text } => self.heard.push(format!("{id}: {text}")),
                    Output::PromptEnded { id } => self.prompts_ended.push(id),
                    Output::Interrupted {
                        id,
                        played_ms,
                        segments,
                    } => self.events.push(format!(
                        "interrupted {id} {played_ms}ms {:?}",
                        PlayedSegment::join(&segments)
                    )),
                    Output::Paused { id, played_ms } => {
                        self.events.push(format!("paused {id} {played_ms}ms"))
                    }
                    Output::Resumed { id } => self.events.push(format!("resumed {id}")),
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
                    frames: (samples / SPEECH_FRAME_SAMPLES) as u32,
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
                self.synth_one(SPEECH_FRAME_SAMPLES);
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
        r.synth_one(SPEECH_FRAME_SAMPLES);
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
            pcm: vec![1; SPEECH_FRAME_SAMPLES],
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
    fn segments_name_their_utterance_and_each_utterance_is_done_once() {
        let mut r = Rig::new();
        r.speak("u1", "One sentence here. Another sentence. A third one.");
        // Two of its three segments are asked for (prefetch 2): not done for the engine yet.
        let serials = |r: &Rig| r.utterance_of.iter().map(|&(_, u)| u).collect::<Vec<_>>();
        assert_eq!(serials(&r), [0, 0]);
        assert!(r.done.is_empty());
        r.run();
        assert_eq!(serials(&r), [0, 0, 0]);
        assert_eq!(r.done, [0]);
        // An open stream is not done, whatever it has asked for.
        r.stream("s1", "Streamed first part. ", false);
        r.run();
        assert_eq!(serials(&r), [0, 0, 0, 1]);
        assert_eq!(r.done, [0], "the open stream is not done");
        // Its end: its last segment is asked for and it is done at once, before that segment
        // is synthesized (a streaming engine ends its input there).
        r.stream("s1", "And the rest.", true);
        assert_eq!(r.utterance_of.last().map(|&(_, u)| u), Some(1));
        assert_eq!(r.done, [0, 1]);
        assert!(!r.synthesizing.is_empty());
        r.run();
        assert_eq!(r.done, [0, 1], "once each");
        // An interrupt: an utterance not done yet is done after its segments' cancels.
        r.speak(
            "u2",
            "One here. Another one. A third one. A fourth one. A fifth one.",
        );
        r.speak("u3", "Queued behind.");
        r.synth_one(SPEECH_FRAME_SAMPLES);
        assert_eq!(r.done, [0, 1]);
        r.input(Input::Interrupt);
        assert_eq!(r.done, [0, 1, 2, 3]);
        // The call's end does the same for what is queued then.
        r.speak("u4", "Last words. And more words. And even more.");
        r.input(Input::CallEnding);
        assert_eq!(r.done, [0, 1, 2, 3, 4]);
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
    fn a_completed_stream_id_used_again_while_it_still_plays_is_queued_behind_it() {
        // The app streams every answer as "turn", faster than they play: the second answer
        // comes while the first is still queued (nothing synthesized yet) ...
        let mut r = Rig::new();
        r.stream("turn", "First answer.", true);
        r.stream("turn", "Second answer.", true);
        r.run();
        let both = [
            "started turn",
            "ended turn true",
            "started turn",
            "ended turn true",
        ];
        assert_eq!(r.events, both);
        assert_eq!(r.heard, ["turn: First answer.", "turn: Second answer."]);
        assert!(r.p.is_idle());
        // ... or while the first is playing; in chunks, the second is still one utterance.
        let mut r = Rig::new();
        r.stream("turn", "First answer.", true);
        let first = r.synth_one(SPEECH_FRAME_SAMPLES);
        r.input(Input::PlaybackStarted { segment: first });
        r.stream("turn", "Second ", false);
        r.stream("turn", "answer.", false);
        r.stream("turn", "", true);
        assert_eq!(r.events, ["started turn"], "the first is still playing");
        r.codec.retain(|c| c.0 != first);
        r.input(Input::PlaybackFinished {
            segment: first,
            frames: 1,
        });
        r.run();
        assert_eq!(r.events, both);
        assert_eq!(r.heard, ["turn: First answer.", "turn: Second answer."]);
        assert!(r.p.is_idle());
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
            pcm: vec![1; SPEECH_FRAME_SAMPLES],
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
        assert!(r.heard.is_empty() && r.latencies.is_empty());
        assert_eq!(r.prompts_ended, ["hold"], "only its end is told, once");
        assert!(r.p.is_idle());
    }

    #[test]
    fn an_internal_prompt_cut_short_still_tells_its_end() {
        // Interrupted (a barge-in, `tts.interrupt`, a new stream).
        let mut r = Rig::new();
        r.input(Input::Speak {
            id: "give-up",
            text: "Goodbye for now. Please call again.",
            report: false,
        });
        r.synth_one(320);
        r.play_all();
        assert!(
            r.prompts_ended.is_empty(),
            "its second sentence is still to come"
        );
        r.input(Input::Interrupt);
        assert_eq!(r.prompts_ended, ["give-up"]);
        assert!(r.events.is_empty());
        // Dropped because the call ends, behind an utterance of the app.
        let mut r = Rig::new();
        r.speak("u1", "Hello.");
        r.input(Input::Speak {
            id: "hold",
            text: "Please hold.",
            report: false,
        });
        r.input(Input::CallEnding);
        assert_eq!(r.events, ["ended u1 false"]);
        assert_eq!(r.prompts_ended, ["hold"]);
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

    /// An engine far faster than real time and a long queue: the audio handed to the codec
    /// and not yet played stays within a few segments (it used to be the whole queue).
    #[test]
    fn a_fast_engine_cannot_move_the_whole_queue_into_memory() {
        let mut r = Rig::new();
        // As many utterances as the rig's queue takes.
        for i in 0..8 {
            r.speak(&format!("u{i}"), "One. Two. Three. Four. Five.");
        }
        // Synthesize whatever is asked for, instantly, while nothing plays.
        for _ in 0..200 {
            if r.synthesizing.is_empty() {
                break;
            }
            r.synth_one(SPEECH_FRAME_SAMPLES);
        }
        assert!(r.synthesizing.is_empty(), "it waits for playback");
        let waiting = r.codec.iter().filter(|c| c.2).count();
        assert!(
            waiting <= 2 * settings().prefetch,
            "{waiting} segments handed over and waiting to play"
        );
        // Playing them lets the rest through, in order, and everything ends well.
        r.run();
        for _ in 0..50 {
            r.run();
        }
        let ended: Vec<&String> = r.events.iter().filter(|e| e.starts_with("ended")).collect();
        assert_eq!(ended.len(), 8, "{:?}", r.events);
        assert!(ended.iter().all(|e| e.ends_with("true")), "{:?}", r.events);
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
    #[test]
    fn a_speak_over_the_text_limit_is_refused_at_once() {
        let mut r = Rig::new();
        r.speak("u1", "Before.");
        r.speak("big", &"word ".repeat(201)); // 1005 bytes, the limit is 1000
        assert_eq!(r.events, ["ended big false text-too-long"]);
        assert_eq!(r.limits, ["big text-too-long"]);
        r.speak("u2", "After.");
        r.run();
        assert_eq!(
            r.events,
            [
                "ended big false text-too-long",
                "started u1",
                "ended u1 true",
                "started u2",
                "ended u2 true"
            ]
        );
        // Exactly at the limit is fine.
        let mut r = Rig::new();
        r.speak("edge", &"a".repeat(1000));
        r.run();
        assert_eq!(r.events, ["started edge", "ended edge true"]);
    }

    #[test]
    fn speaks_beyond_the_queue_limit_are_refused_and_the_rest_play_in_order() {
        let mut r = Rig::new();
        for n in 0..10 {
            r.speak(&format!("u{n}"), "Hello.");
        }
        // Eight fit (the one playing counts); the last two are refused at once.
        assert_eq!(
            r.events,
            ["ended u8 false queue-full", "ended u9 false queue-full"]
        );
        assert_eq!(r.limits, ["u8 queue-full", "u9 queue-full"]);
        r.run();
        let played: Vec<String> = (0..8)
            .flat_map(|n| [format!("started u{n}"), format!("ended u{n} true")])
            .collect();
        assert_eq!(r.events[2..], played);
        // Once the queue has room again, speaks are taken.
        r.speak("later", "Hello.");
        r.run();
        assert_eq!(r.events[18..], ["started later", "ended later true"]);
    }

    #[test]
    fn internal_prompts_are_not_limited() {
        let mut r = Rig::new();
        for n in 0..8 {
            r.speak(&format!("u{n}"), "Hello.");
        }
        r.input(Input::Speak {
            id: "hold",
            text: &"please hold ".repeat(100), // over the text limit, in a few segments
            report: false,
        });
        assert!(r.events.is_empty() && r.limits.is_empty());
        r.run();
        assert_eq!(r.events.len(), 16);
        assert!(r.p.is_idle());
    }

    #[test]
    fn a_stream_that_grows_too_long_plays_what_it_had_then_ends_with_the_reason() {
        let mut r = Rig::new();
        let chunk = "Some words here. ".repeat(20); // 340 bytes
        r.stream("s", &chunk, false);
        r.stream("s", &chunk, false);
        assert!(r.limits.is_empty());
        r.stream("s", &chunk, false); // 1020 bytes in all
        assert_eq!(r.limits, ["s text-too-long"]);
        // Later chunks, even after it ended, are dropped until the stream's last chunk.
        r.stream("s", "More.", false);
        r.run();
        assert_eq!(r.events, ["started s", "ended s false text-too-long"]);
        // The sentences of the first two chunks played.
        assert_eq!(r.heard.len(), 40, "{:?}", r.heard);
        r.stream("s", "Still more.", false);
        r.stream("s", "", true);
        r.run();
        assert_eq!(r.events.len(), 2, "{:?}", r.events);
        // Its last chunk came: the id may be used again.
        r.stream("s", "A new answer.", true);
        r.run();
        assert_eq!(
            r.events[2..],
            ["started s", "ended s true"],
            "{:?}",
            r.events
        );
    }

    #[test]
    fn a_segment_over_the_audio_bound_is_cut_there_and_its_utterance_ends_with_the_reason() {
        let mut r = Rig::new();
        r.speak("u1", "One sentence here. Another sentence. A third one.");
        r.speak("u2", "Next.");
        let (first, second) = (r.synthesizing[0], r.synthesizing[1]);
        // The engine sends just under the bound, then goes on past it.
        r.input(Input::Audio {
            segment: first,
            pcm: vec![1; MAX_SEGMENT - 100],
        });
        assert!(r.limits.is_empty() && r.cancelled.is_empty());
        r.input(Input::Audio {
            segment: first,
            pcm: vec![1; 500],
        });
        assert_eq!(r.limits, ["u1 audio-too-long"]);
        // Its synthesis stops, and so does the one of the segment after it; the third was not
        // asked for and never is.
        assert_eq!(r.cancelled, [first, second]);
        assert_eq!(r.codec, [(first, MAX_SEGMENT, true)], "exactly the bound");
        // The next utterance's segment synthesizes now.
        assert_eq!(r.synthesizing.len(), 1);
        assert_eq!(r.utterance_of.last().map(|&(_, u)| u), Some(1));
        // More from the stopped stream changes nothing.
        r.input(Input::Audio {
            segment: first,
            pcm: vec![1; 500],
        });
        r.input(Input::Synthesized {
            segment: first,
            ok: true,
        });
        assert_eq!(r.codec, [(first, MAX_SEGMENT, true)]);
        r.run();
        assert_eq!(
            r.events,
            [
                "started u1",
                "ended u1 false audio-too-long",
                "started u2",
                "ended u2 true"
            ]
        );
        assert_eq!(r.heard, ["u1: One sentence here.", "u2: Next."]);
        assert_eq!(r.limits.len(), 1, "one cut, one hit");
        assert!(r.p.is_idle());
        // Exactly the bound, then the end: not over it.
        let mut r = Rig::new();
        r.speak("edge", "Just long enough.");
        r.synth_one(MAX_SEGMENT);
        r.run();
        assert_eq!(r.events, ["started edge", "ended edge true"]);
        assert!(r.limits.is_empty());
    }

    #[test]
    fn a_cut_segment_keeps_the_ones_before_it_and_stops_its_stream() {
        let mut r = Rig::new();
        r.stream(
            "s",
            "The first sentence here. The second sentence here. ",
            false,
        );
        let (first, second) = (r.synthesizing[0], r.synthesizing[1]);
        // The second segment's engine runs away while the first is still synthesizing.
        r.input(Input::Audio {
            segment: second,
            pcm: vec![1; 3 * MAX_SEGMENT],
        });
        assert_eq!(r.limits, ["s audio-too-long"]);
        assert_eq!(r.cancelled, [second], "the first one goes on");
        // The stream takes no more text, until its last chunk.
        r.stream("s", "A third sentence. ", false);
        assert_eq!(r.synthesizing, [first]);
        r.synth_one(SPEECH_FRAME_SAMPLES);
        assert_eq!(
            r.codec,
            [
                (first, SPEECH_FRAME_SAMPLES, true),
                (second, MAX_SEGMENT, true)
            ]
        );
        r.run();
        assert_eq!(r.events, ["started s", "ended s false audio-too-long"]);
        assert_eq!(r.heard.len(), 2, "{:?}", r.heard);
        r.stream("s", "Late text. ", true);
        r.stream("s", "A new answer.", true);
        r.run();
        assert_eq!(
            r.events[2..],
            ["started s", "ended s true"],
            "{:?}",
            r.events
        );
    }

    #[test]
    fn a_stream_refused_for_a_full_queue_drops_its_chunks_until_its_end() {
        let mut r = Rig::new();
        for n in 0..8 {
            r.speak(&format!("u{n}"), "Hello.");
        }
        r.stream("s", "Refused. ", false);
        assert_eq!(r.events, ["ended s false queue-full"]);
        r.run();
        r.stream("s", "Still the refused stream. ", false);
        r.stream("s", "", true);
        r.run();
        assert_eq!(r.events.len(), 17, "nothing of the refused stream plays");
        assert!(r.p.is_idle());
    }

    #[test]
    fn a_late_chunk_of_an_interrupted_stream_does_not_replace_the_next_one() {
        let mut r = Rig::new();
        r.stream("s1", "Thinking about it. ", false);
        r.run();
        r.input(Input::Interrupt);
        r.stream("s2", "The new answer. ", false);
        // The old LLM stream is still sending.
        r.stream("s1", "Old text. ", false);
        r.stream("s1", "", true);
        r.stream("s2", "", true);
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
    }

    #[test]
    fn a_failed_stream_drops_its_late_chunks() {
        let mut r = Rig::new();
        r.stream("s", "This will fail. ", false);
        r.fail_one();
        r.run();
        assert_eq!(r.events, ["ended s false"]);
        r.stream("s", "Late text. ", false);
        r.run();
        assert_eq!(r.events, ["ended s false"], "no second utterance for it");
    }
}

#[cfg(test)]
mod barge_in_tests {
    //! `played_text` bookkeeping: what the caller heard when they interrupted.
    use super::*;
    use crate::frame::SPEECH_FRAME_SAMPLES;

    fn settings() -> PlayerSettings {
        PlayerSettings {
            limits: SegmentLimits {
                first_min_chars: 6,
                first_max_chars: 40,
                max_chars: 120,
            },
            prefetch: 3,
            max_text_bytes: 1000,
            max_queued: 8,
            max_segment_samples: 16_000,
        }
    }

    #[test]
    fn a_pause_reports_what_was_heard_and_resumes_once_or_ends_in_an_interrupt() {
        let t = Instant::now();
        let mut p = Player::new(settings());
        let outs = p.handle(
            Input::Speak {
                id: "u1",
                text: "First sentence here. Second one now.",
                report: true,
            },
            t,
        );
        let segs: Vec<SegmentId> = outs
            .iter()
            .filter_map(|o| match o {
                Output::Synthesize { segment, .. } => Some(*segment),
                _ => None,
            })
            .collect();
        for &s in &segs {
            p.handle(
                Input::Audio {
                    segment: s,
                    pcm: vec![1; SPEECH_FRAME_SAMPLES * 50],
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
        p.handle(Input::PlaybackStarted { segment: segs[0] }, t);
        p.handle(
            Input::PlaybackFinished {
                segment: segs[0],
                frames: 50,
            },
            t,
        );
        p.handle(Input::PlaybackStarted { segment: segs[1] }, t);
        let pause = Input::Paused {
            segment: Some(segs[1]),
            frames: 7,
        };
        let outs = p.handle(pause, t);
        assert_eq!(
            outs,
            vec![Output::Paused {
                id: "u1".into(),
                played_ms: 50 * 20 + 7 * 20
            }]
        );
        // A pause drops nothing: resuming reports once, and nothing is flushed or cancelled.
        let outs = p.handle(Input::Resumed, t);
        assert_eq!(outs, vec![Output::Resumed { id: "u1".into() }]);
        assert_eq!(p.handle(Input::Resumed, t), vec![], "resumed once");
        // Paused again, then confirmed: an interrupt, and no resume after it.
        p.handle(
            Input::Paused {
                segment: Some(segs[1]),
                frames: 9,
            },
            t,
        );
        let outs = p.handle(
            Input::BargeIn {
                segment: Some(segs[1]),
                frames: 9,
            },
            t,
        );
        assert!(
            outs.iter()
                .any(|o| matches!(o, Output::Interrupted { played_ms, .. } if *played_ms == 50 * 20 + 9 * 20)),
            "{outs:?}"
        );
        assert_eq!(p.handle(Input::Resumed, t), vec![]);
        // Nothing playing: a pause reports nothing.
        assert_eq!(
            p.handle(
                Input::Paused {
                    segment: None,
                    frames: 0
                },
                t
            ),
            vec![]
        );
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
                    pcm: vec![1; SPEECH_FRAME_SAMPLES * 50],
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
                Output::UtteranceDone { .. } => "done",
                _ => "other",
            })
            .collect();
        // Both segments were asked for, so the engine was told the utterance was done before.
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
                pcm: vec![1; SPEECH_FRAME_SAMPLES * 10],
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
            ok: false,
            reason: None
        }));
    }
}

#[cfg(test)]
mod properties {
    //! The player under arbitrary sequences of commands, engine results and playback, with
    //! limits: every utterance of the dialog app ends exactly once, and the work per input does
    //! not grow with the queue.
    use super::*;
    use crate::frame::SPEECH_FRAME_SAMPLES;
    use crate::text::properties::{cases, hostile_text};
    use proptest::prelude::*;

    /// Carries out a player's outputs the way the speaker, the engine and the codec do, with
    /// constant work per output, and records what the dialog app would see.
    struct Sim {
        p: Player,
        t: Instant,
        /// Syntheses in flight, oldest first.
        synthesizing: VecDeque<SegmentId>,
        /// The codec's queue: segment, samples, ended, first frame sent.
        codec: VecDeque<(SegmentId, usize, bool, bool)>,
        /// `(id, event)` with event `started` or `ended <ok> [reason]`, in order.
        events: Vec<(String, String)>,
        /// `LimitHit`s of the text and queue limits (one per utterance they refuse or cut).
        limit_hits: usize,
        /// `Ended`s with those limits as their reason.
        ended_with_reason: usize,
        /// `LimitHit`s of the audio bound (one per segment cut), and `Ended`s with it.
        audio_hits: usize,
        ended_audio_too_long: usize,
        /// Syntheses cancelled: the engine sends them nothing more.
        cancelled: std::collections::HashSet<SegmentId>,
        /// Utterances done.
        done: std::collections::HashSet<u64>,
    }

    impl Sim {
        fn new(settings: PlayerSettings) -> Sim {
            Sim {
                p: Player::new(settings),
                t: Instant::now(),
                synthesizing: VecDeque::new(),
                codec: VecDeque::new(),
                events: Vec::new(),
                limit_hits: 0,
                ended_with_reason: 0,
                audio_hits: 0,
                ended_audio_too_long: 0,
                cancelled: std::collections::HashSet::new(),
                done: std::collections::HashSet::new(),
            }
        }

        fn input(&mut self, input: Input<'_>) {
            for o in self.p.handle(input, self.t) {
                match o {
                    Output::Synthesize {
                        segment,
                        text,
                        utterance,
                    } => {
                        assert!(
                            !self.done.contains(&utterance),
                            "a segment of a finished utterance"
                        );
                        assert!(!text.is_empty());
                        assert!(
                            text.chars().all(|c| c == '\n' || !c.is_control()),
                            "{text:?}"
                        );
                        self.synthesizing.push_back(segment);
                    }
                    Output::Cancel { segment } => {
                        self.synthesizing.retain(|s| *s != segment);
                        self.cancelled.insert(segment);
                    }
                    Output::UtteranceDone { utterance } => {
                        assert!(self.done.insert(utterance), "an utterance done twice");
                    }
                    Output::Play { segment, pcm } => match self.codec.back_mut() {
                        Some(c) if c.0 == segment => c.1 += pcm.len(),
                        _ => self.codec.push_back((segment, pcm.len(), false, false)),
                    },
                    Output::EndOfSegment { segment } => {
                        if let Some(c) = self.codec.iter_mut().rev().find(|c| c.0 == segment) {
                            c.2 = true;
                        }
                    }
                    Output::FlushPlayback => self.codec.clear(),
                    Output::Started { id } => self.events.push((id, "started".into())),
                    Output::Ended { id, ok, reason } => {
                        match reason {
                            Some(TtsLimit::AudioTooLong) => self.ended_audio_too_long += 1,
                            Some(_) => self.ended_with_reason += 1,
                            None => {}
                        }
                        let reason = reason.map_or("", TtsLimit::label);
                        self.events.push((id, format!("ended {ok} {reason}")));
                    }
                    Output::LimitHit {
                        limit: TtsLimit::AudioTooLong,
                        ..
                    } => self.audio_hits += 1,
                    Output::LimitHit { .. } => self.limit_hits += 1,
                    Output::SegmentStarted { .. }
                    | Output::Interrupted { .. }
                    | Output::Paused { .. }
                    | Output::Resumed { .. }
                    | Output::FirstAudio { .. }
                    | Output::PromptEnded { .. } => {}
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

        /// The oldest synthesis delivers 40 ms of audio and finishes (or fails), unless the
        /// audio was over the bound and the player stopped it.
        fn synth_one(&mut self, ok: bool) -> bool {
            let Some(segment) = self.synthesizing.pop_front() else {
                return false;
            };
            self.input(Input::Audio {
                segment,
                pcm: vec![1; 640],
            });
            if !self.cancelled.contains(&segment) {
                self.input(Input::Synthesized { segment, ok });
            }
            true
        }

        /// The codec sends the front segment's first frame, and its last once it has ended.
        fn play_one(&mut self) -> bool {
            let Some(&(segment, samples, ended, started)) = self.codec.front() else {
                return false;
            };
            if !started && samples > 0 {
                self.codec[0].3 = true;
                self.input(Input::PlaybackStarted { segment });
            }
            if ended {
                self.codec.pop_front();
                self.input(Input::PlaybackFinished {
                    segment,
                    frames: (samples / SPEECH_FRAME_SAMPLES) as u32,
                });
                return true;
            }
            !started && samples > 0
        }

        /// The caller talks over the front segment; the codec has already stopped.
        fn barge_in(&mut self) {
            let front = self.codec.front().filter(|c| c.3).map(|c| c.0);
            self.codec.clear();
            self.input(Input::BargeIn {
                segment: front,
                frames: u32::from(front.is_some()),
            });
        }

        /// Synthesizes and plays until nothing moves.
        fn drain(&mut self) {
            while self.synth_one(true) || self.play_one() {}
        }
    }

    fn settings(max_text_bytes: usize, max_queued: usize) -> PlayerSettings {
        PlayerSettings {
            limits: SegmentLimits::default(),
            prefetch: 2,
            max_text_bytes,
            max_queued,
            max_segment_samples: 16_000,
        }
    }

    /// 10 000 speaks in a burst, then everything accepted plays: the original took seconds
    /// once thousands were queued (it rebuilt the play order on every input).
    #[test]
    fn a_burst_of_speaks_costs_linear_time() {
        for max_queued in [64, 20_000] {
            let mut sim = Sim::new(settings(16_384, max_queued));
            let t0 = Instant::now();
            for n in 0..10_000 {
                sim.speak(&format!("u{n}"), "One sentence here. And another one.");
            }
            let queued = t0.elapsed();
            sim.drain();
            let took = t0.elapsed();
            assert!(
                took < Duration::from_millis(1000),
                "max_queued {max_queued}: {queued:?} to queue, {took:?} in all"
            );
            assert!(sim.p.is_idle());
            let ended = sim
                .events
                .iter()
                .filter(|e| e.1.starts_with("ended"))
                .count();
            assert_eq!(ended, 10_000, "every one ends exactly once");
            let refused = 10_000 - max_queued.min(10_000);
            assert_eq!(sim.limit_hits, refused);
            assert_eq!(sim.ended_with_reason, refused);
        }
    }

    /// One speak at the text limit, cut into thousands of segments, plays in linear time too.
    #[test]
    fn a_speak_of_many_tiny_sentences_costs_linear_time() {
        let mut sim = Sim::new(settings(16_384, 64));
        let text = "Hi. ".repeat(4096);
        let t0 = Instant::now();
        sim.speak("many", &text);
        sim.drain();
        let took = t0.elapsed();
        assert!(took < Duration::from_millis(1000), "{took:?}");
        assert_eq!(
            sim.events,
            [
                ("many".into(), "started".into()),
                ("many".into(), "ended true ".into())
            ]
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Speak(String),
        Stream(u8, String, bool),
        Interrupt,
        Synth(bool),
        Play,
        BargeIn,
        AsrFinal,
    }

    fn short_text() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => hostile_text().prop_map(|t| t.chars().take(60).collect()),
            1 => (1usize..40).prop_map(|n| "Word. ".repeat(n)),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => short_text().prop_map(Op::Speak),
            3 => (0u8..3, short_text(), prop::bool::weighted(0.3))
                .prop_map(|(k, t, end)| Op::Stream(k, t, end)),
            1 => Just(Op::Interrupt),
            5 => prop::bool::weighted(0.9).prop_map(Op::Synth),
            5 => Just(Op::Play),
            1 => Just(Op::BargeIn),
            1 => Just(Op::AsrFinal),
        ]
    }

    fn any_settings() -> impl Strategy<Value = PlayerSettings> {
        (
            1usize..4,
            0usize..150,
            0usize..6,
            1usize..8,
            1usize..80,
            // Below and above the 640 samples a synthesis sends.
            prop_oneof![400usize..640, 640usize..2000],
        )
            .prop_map(
                |(prefetch, max_text_bytes, max_queued, first_max, max, max_segment_samples)| {
                    PlayerSettings {
                        limits: SegmentLimits {
                            first_min_chars: 3,
                            first_max_chars: first_max,
                            max_chars: max,
                        },
                        prefetch,
                        max_text_bytes,
                        max_queued,
                        max_segment_samples,
                    }
                },
            )
    }

    proptest! {
        #![proptest_config(cases(500))]

        #[test]
        fn every_utterance_ends_exactly_once(
            settings in any_settings(),
            ops in prop::collection::vec(op(), 0..60),
        ) {
            let mut sim = Sim::new(settings);
            let mut speaks = Vec::new();
            for (n, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Speak(text) => {
                        let id = format!("u{n}");
                        sim.speak(&id, &text);
                        speaks.push(id);
                    }
                    Op::Stream(k, text, end) => sim.input(Input::Stream {
                        id: &format!("s{k}"),
                        text: &text,
                        end,
                    }),
                    Op::Interrupt => sim.input(Input::Interrupt),
                    Op::Synth(ok) => {
                        sim.synth_one(ok);
                    }
                    Op::Play => {
                        sim.play_one();
                    }
                    Op::BargeIn => sim.barge_in(),
                    Op::AsrFinal => sim.input(Input::AsrFinal),
                }
                sim.t += Duration::from_millis(20);
            }
            sim.input(Input::CallEnding);
            prop_assert!(sim.p.is_idle());
            // Every speak ended once, after at most one `started`.
            for id in &speaks {
                let mine: Vec<&str> = sim
                    .events
                    .iter()
                    .filter(|e| &e.0 == id)
                    .map(|e| e.1.as_str())
                    .collect();
                let ok = matches!(mine.as_slice(), [e] | ["started", e] if e.starts_with("ended"));
                prop_assert!(ok, "{}: {:?}", id, mine);
            }
            // A stream id never starts twice without ending in between.
            for k in 0..3 {
                let id = format!("s{k}");
                let mut open = false;
                for e in sim.events.iter().filter(|e| e.0 == id) {
                    if e.1 == "started" {
                        prop_assert!(!open, "{} started twice: {:?}", id, sim.events);
                        open = true;
                    } else {
                        open = false;
                    }
                }
                prop_assert!(!open, "{} never ended: {:?}", id, sim.events);
            }
            // Each hit of the text and queue limits is reported in exactly one `tts.ended`; an
            // utterance cut by the audio bound may have had more than one segment cut (or a
            // text limit first, whose reason it keeps).
            prop_assert_eq!(sim.limit_hits, sim.ended_with_reason);
            prop_assert!(sim.ended_audio_too_long <= sim.audio_hits);
            // The call's end ended everything; nothing more comes.
            let n = sim.events.len();
            sim.input(Input::CallEnding);
            prop_assert_eq!(sim.events.len(), n);
        }
    }
}
