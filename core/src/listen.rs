//! Listening: voice activity, utterance endpointing and barge-in, as state machines fed one
//! 20 ms frame at a time.
//!
//! [`Vad`] wraps the WebRTC voice activity detector (the `webrtc-vad` crate, Google's GMM-based
//! detector from libwebrtc): a real speech/non-speech classifier, far more robust than an energy
//! threshold to breathing, hum and keyboard noise.
//!
//! [`Endpointer`] cuts the caller's audio into utterances: an utterance starts after
//! `speech_start_ms` of speech and includes `preroll_ms` of audio before that, so the first
//! syllable is never cut; it ends after `end_silence_ms` of non-speech (or at `max_utterance_ms`).
//! Each utterance starts from a clean state: nothing of the previous one carries over (the
//! original never reset its sentence filter between turns and lost words).
//!
//! [`BargeIn`] decides when the caller is talking over voicegate: while playback runs, speech for
//! at least `min_speech_ms`, once per talkspurt. When the browser cancels echo (the normal case)
//! the microphone does not carry our own speech; when it does not, two optional gates keep our
//! echo from interrupting us: a warm-up after playback starts, and a level margin the caller must
//! exceed over what we are playing.

use crate::codec::Origin;
use crate::frame::{FRAME_MS, SPEECH_FRAME_SAMPLES};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The WebRTC voice activity detector at 16 kHz.
pub struct Vad {
    inner: webrtc_vad::Vad,
}

impl Vad {
    /// A detector in "aggressive" mode (fewer false positives on noise).
    pub fn new() -> Self {
        Vad {
            inner: webrtc_vad::Vad::new_with_rate_and_mode(
                webrtc_vad::SampleRate::Rate16kHz,
                webrtc_vad::VadMode::Aggressive,
            ),
        }
    }

    /// Whether one speech frame (20 ms at 16 kHz, [`SPEECH_FRAME_SAMPLES`] samples; see
    /// [`crate::frame`]) holds speech. Frames of another size count as non-speech.
    pub fn is_speech(&mut self, frame: &[i16]) -> bool {
        frame.len() == SPEECH_FRAME_SAMPLES && self.inner.is_voice_segment(frame).unwrap_or(false)
    }
}

impl Default for Vad {
    fn default() -> Self {
        Vad::new()
    }
}

/// Endpointing settings.
#[derive(Debug, Clone, Copy)]
pub struct EndpointSettings {
    /// Speech needed to start an utterance.
    pub speech_start_ms: u32,
    /// Silence that ends an utterance: the most, when the recognizer's hypothesis looks
    /// unfinished or there is none.
    pub end_silence_ms: u32,
    /// Silence that ends an utterance whose hypothesis looks finished and has been stable for
    /// `stable_ms` (`listen.end_silence_min_ms`; equal to `end_silence_ms`: fixed endpointing).
    pub end_silence_min_ms: u32,
    /// How long a hypothesis must stay unchanged to count as stable.
    pub stable_ms: u32,
    /// Audio kept from before the speech started.
    pub preroll_ms: u32,
    /// Longest utterance; it is cut here.
    pub max_utterance_ms: u32,
}

/// What the network did to an utterance's audio.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UtteranceNetStats {
    /// Frames rebuilt from in-band FEC.
    pub recovered: u32,
    /// Frames concealed by PLC.
    pub concealed: u32,
}

/// What the endpointer reports.
#[derive(Debug, PartialEq)]
pub enum Endpoint<'a> {
    /// An utterance started; `audio` is the pre-roll plus the speech that started it.
    Start {
        /// Samples, oldest first.
        audio: &'a [i16],
    },
    /// More audio of the current utterance.
    Audio(&'a [i16]),
    /// The utterance ended.
    End {
        /// Frame origins within it.
        net: UtteranceNetStats,
        /// Its length.
        duration: Duration,
        /// The silence at its end that ended it (its last voiced frame was this long ago).
        trailing: Duration,
    },
}

/// Cuts the caller's audio into utterances.
pub struct Endpointer {
    s: EndpointSettings,
    /// Recent frames while idle (pre-roll plus the speech run), with their origins.
    recent: VecDeque<(Vec<i16>, Origin)>,
    /// Consecutive speech frames while idle.
    speech_run: u32,
    /// In an utterance: consecutive non-speech frames, frames so far, stats.
    in_utterance: Option<(u32, u32, UtteranceNetStats)>,
    /// The recognizer's latest hypothesis in this utterance: whether it looks finished, and the
    /// utterance's length in frames when it last changed.
    hypothesis: Option<(bool, u32)>,
    /// Scratch for the start audio.
    start_buf: Vec<i16>,
}

impl Endpointer {
    /// An idle endpointer.
    pub fn new(s: EndpointSettings) -> Self {
        Endpointer {
            s,
            recent: VecDeque::new(),
            speech_run: 0,
            in_utterance: None,
            hypothesis: None,
            start_buf: Vec::new(),
        }
    }

    /// The recognizer's hypothesis for the utterance in progress changed to `text`: a
    /// finished-looking one ([`crate::turn::looks_complete`]) that then stays unchanged for
    /// `stable_ms` lets `end_silence_min_ms` of silence end the utterance; an unfinished one
    /// ("... and") waits the full `end_silence_ms`.
    pub fn hypothesis(&mut self, text: &str) {
        if let Some((_, length, _)) = self.in_utterance {
            self.hypothesis = Some((crate::turn::looks_complete(text), length));
        }
    }

    /// Frames of silence that end the utterance now.
    fn end_silence_frames(&self, length: u32) -> u32 {
        let frames = |ms: u32| ms.div_ceil(FRAME_MS).max(1);
        match self.hypothesis {
            Some((true, at)) if (length - at.min(length)) * FRAME_MS >= self.s.stable_ms => {
                frames(self.s.end_silence_min_ms.min(self.s.end_silence_ms))
            }
            _ => frames(self.s.end_silence_ms),
        }
    }

    /// A session changed the silence that ends an utterance (`listen.end_silence_ms`); the
    /// utterance in progress, if any, ends by the new value.
    pub fn set_end_silence_ms(&mut self, ms: u32) {
        self.s.end_silence_ms = ms;
    }

    /// Whether an utterance is in progress.
    pub fn in_utterance(&self) -> bool {
        self.in_utterance.is_some()
    }

    /// Takes one 20 ms frame with its VAD decision and origin.
    pub fn push(
        &mut self,
        frame: &[i16],
        speech: bool,
        origin: Origin,
        out: &mut impl FnMut(Endpoint<'_>),
    ) {
        let frames = |ms: u32| ms.div_ceil(FRAME_MS).max(1);
        match self.in_utterance.as_mut() {
            None => {
                // Reuse the oldest buffer when the ring is full: no allocation in steady state.
                let keep = (frames(self.s.preroll_ms) + frames(self.s.speech_start_ms)) as usize;
                let mut buf = if self.recent.len() >= keep {
                    self.recent.pop_front().map(|(b, _)| b).unwrap_or_default()
                } else {
                    Vec::with_capacity(frame.len())
                };
                buf.clear();
                buf.extend_from_slice(frame);
                self.recent.push_back((buf, origin));
                self.speech_run = if speech { self.speech_run + 1 } else { 0 };
                if self.speech_run >= frames(self.s.speech_start_ms) {
                    let mut net = UtteranceNetStats::default();
                    self.start_buf.clear();
                    for (f, o) in &self.recent {
                        self.start_buf.extend_from_slice(f);
                        count(&mut net, *o);
                    }
                    let n = self.recent.len() as u32;
                    self.recent.clear();
                    self.speech_run = 0;
                    self.in_utterance = Some((0, n, net));
                    self.hypothesis = None;
                    out(Endpoint::Start {
                        audio: &self.start_buf,
                    });
                }
            }
            Some((silence, length, net)) => {
                count(net, origin);
                *length += 1;
                *silence = if speech { 0 } else { *silence + 1 };
                out(Endpoint::Audio(frame));
                let (silent, len, net) = (*silence, *length, *net);
                if silent >= self.end_silence_frames(len) || len >= frames(self.s.max_utterance_ms)
                {
                    self.in_utterance = None;
                    self.hypothesis = None;
                    out(Endpoint::End {
                        net,
                        duration: Duration::from_millis(u64::from(len * FRAME_MS)),
                        trailing: Duration::from_millis(u64::from(silent * FRAME_MS)),
                    });
                }
            }
        }
    }

    /// Forgets everything (a new turn begins without any carried-over state).
    pub fn reset(&mut self) {
        self.recent.clear();
        self.speech_run = 0;
        self.in_utterance = None;
        self.hypothesis = None;
    }
}

fn count(net: &mut UtteranceNetStats, origin: Origin) {
    match origin {
        Origin::Decoded => {}
        Origin::Recovered => net.recovered += 1,
        Origin::Concealed => net.concealed += 1,
    }
}

/// Root mean square of `pcm` on the i16 scale: the level [`BargeIn`]'s level margin compares
/// (the caller's frame against what we played), and what tests call "not silence".
pub fn rms(pcm: &[i16]) -> f64 {
    if pcm.is_empty() {
        return 0.0;
    }
    let sum: f64 = pcm.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (sum / pcm.len() as f64).sqrt()
}

/// Barge-in settings.
#[derive(Debug, Clone, Copy)]
pub struct BargeInSettings {
    /// Barge-in is on.
    pub enabled: bool,
    /// Whether voice interrupts at once or pauses until words confirm it.
    pub mode: crate::turn::BargeMode,
    /// Confirmed mode: voice that pauses playout.
    pub pause_after_ms: u32,
    /// Speech needed while playing.
    pub min_speech_ms: u32,
    /// Speech is ignored this long after playback starts (0: off).
    pub warmup_ms: u32,
    /// The caller's level must exceed what we play by this many dB (`None`: off).
    pub level_margin_db: Option<f32>,
}

/// Decides when the caller talks over voicegate.
pub struct BargeIn {
    s: BargeInSettings,
    /// When the current playback began.
    playing_since: Option<Instant>,
    /// Level of what we played recently (decaying peak, i16 RMS scale).
    out_level: f64,
    /// Consecutive qualifying speech frames.
    run: u32,
    /// Fired already in this playback.
    fired: bool,
}

impl BargeIn {
    /// A detector.
    pub fn new(s: BargeInSettings) -> Self {
        BargeIn {
            s,
            playing_since: None,
            out_level: 0.0,
            run: 0,
            fired: false,
        }
    }

    /// Playback started or stopped at `now`.
    pub fn playing(&mut self, playing: bool, now: Instant) {
        match (playing, self.playing_since) {
            (true, None) => {
                self.playing_since = Some(now);
                self.fired = false;
                self.run = 0;
            }
            (false, Some(_)) => {
                self.playing_since = None;
                self.run = 0;
                self.out_level = 0.0;
            }
            _ => {}
        }
    }

    /// A session turned barge-in on or off (`barge_in.enabled`).
    pub fn set_enabled(&mut self, on: bool) {
        self.s.enabled = on;
        self.run = 0;
    }

    /// A frame we played had this RMS level.
    pub fn played_level(&mut self, rms: f64) {
        // Peak hold with a decay of ~6 dB per 100 ms, so the echo's tail is covered.
        self.out_level = rms.max(self.out_level * 0.87);
    }

    /// A caller frame at `now`: its VAD decision and RMS level. True when the caller barges in.
    pub fn caller_frame(&mut self, speech: bool, rms: f64, now: Instant) -> bool {
        let Some(since) = self.playing_since else {
            return false;
        };
        if !self.s.enabled || self.fired {
            return false;
        }
        let warm = now.saturating_duration_since(since)
            >= Duration::from_millis(u64::from(self.s.warmup_ms));
        let loud_enough = match self.s.level_margin_db {
            None => true,
            Some(margin) => {
                let db = |x: f64| 20.0 * x.max(1.0).log10();
                db(rms) >= db(self.out_level) + f64::from(margin)
            }
        };
        self.run = if speech && warm && loud_enough {
            self.run + 1
        } else {
            0
        };
        let needed = match self.s.mode {
            crate::turn::BargeMode::Immediate => self.s.min_speech_ms,
            crate::turn::BargeMode::Confirmed => self.s.pause_after_ms,
        };
        if self.run * FRAME_MS >= needed.max(FRAME_MS) {
            self.fired = true;
            return true;
        }
        false
    }

    /// Confirmed mode: the pause was not an interruption and playout resumes; the caller's
    /// voice may pause it again.
    pub fn rearm(&mut self) {
        self.fired = false;
        self.run = 0;
    }

    /// Voice pauses playout first, and only confirmed words interrupt.
    pub fn confirmed(&self) -> bool {
        self.s.mode == crate::turn::BargeMode::Confirmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: EndpointSettings = EndpointSettings {
        speech_start_ms: 60,
        end_silence_ms: 100,
        end_silence_min_ms: 100,
        stable_ms: 0,
        preroll_ms: 40,
        max_utterance_ms: 1000,
    };

    /// Runs frames described by a pattern ('s' speech, '.' silence, 'r' recovered speech,
    /// 'c' concealed speech); each frame's samples are its index. Returns the events.
    fn run(e: &mut Endpointer, pattern: &str, offset: i16) -> Vec<String> {
        let mut log = vec![];
        for (i, ch) in pattern.chars().enumerate() {
            let frame = vec![offset + i as i16; 2];
            let origin = match ch {
                'r' => Origin::Recovered,
                'c' => Origin::Concealed,
                _ => Origin::Decoded,
            };
            e.push(&frame, ch != '.', origin, &mut |ev| {
                log.push(match ev {
                    Endpoint::Start { audio } => {
                        let frames: Vec<i16> = audio.chunks(2).map(|c| c[0] - offset).collect();
                        format!("start{frames:?}")
                    }
                    Endpoint::Audio(a) => format!("a{}", a[0] - offset),
                    Endpoint::End {
                        net,
                        duration,
                        trailing,
                    } => {
                        format!(
                            "end {}ms r{} c{} t{}",
                            duration.as_millis(),
                            net.recovered,
                            net.concealed,
                            trailing.as_millis()
                        )
                    }
                })
            });
        }
        log
    }

    #[test]
    fn start_needs_the_minimum_and_carries_the_preroll() {
        let mut e = Endpointer::new(S);
        // Two speech frames are not enough; three start it. Pre-roll: 2 frames before the run.
        let log = run(&mut e, "....s.sss", 0);
        assert_eq!(
            log,
            vec!["start[4, 5, 6, 7, 8]"],
            "pre-roll frames 4-5, then the speech run 6-8"
        );
        assert!(e.in_utterance());
    }

    #[test]
    fn end_after_the_silence_and_a_fresh_start_next_time() {
        let mut e = Endpointer::new(S);
        let log = run(&mut e, "sss.s.....", 0);
        assert_eq!(
            log,
            vec![
                "start[0, 1, 2]",
                "a3",
                "a4",
                "a5",
                "a6",
                "a7",
                "a8",
                "a9",
                "end 200ms r0 c0 t100"
            ]
        );
        assert!(!e.in_utterance());
        // The next utterance starts from scratch: its pre-roll is only its own recent audio.
        let log = run(&mut e, "..sss", 100);
        assert_eq!(log[0], "start[0, 1, 2, 3, 4]");
    }

    #[test]
    fn network_damage_is_counted_per_utterance() {
        let mut e = Endpointer::new(S);
        let log = run(&mut e, "srsscc.....", 0);
        assert_eq!(log.last().unwrap(), "end 220ms r1 c2 t100");
        let log = run(&mut e, "sss.....", 50);
        assert_eq!(
            log.last().unwrap(),
            "end 160ms r0 c0 t100",
            "no carry-over between utterances"
        );
    }

    #[test]
    fn long_speech_is_cut_at_the_maximum() {
        let mut e = Endpointer::new(EndpointSettings {
            max_utterance_ms: 200,
            ..S
        });
        let log = run(&mut e, &"s".repeat(20), 0);
        assert!(log.iter().any(|l| l.starts_with("end 200ms")), "{log:?}");
    }

    #[test]
    fn a_finished_stable_hypothesis_ends_the_turn_sooner_and_an_open_one_waits() {
        let adaptive = EndpointSettings {
            end_silence_ms: 600,
            end_silence_min_ms: 200,
            stable_ms: 100,
            ..S
        };
        let ends_after = |hyp: Option<&str>, hyp_at: usize| {
            let mut e = Endpointer::new(adaptive);
            let mut log = run(&mut e, "ssssss", 0);
            // Then silence, frame by frame, with the hypothesis arriving at frame `hyp_at`.
            for i in 0..40 {
                if i == hyp_at
                    && let Some(h) = hyp
                {
                    e.hypothesis(h);
                }
                log.extend(run(&mut e, ".", 0));
                if log.last().is_some_and(|l| l.starts_with("end")) {
                    return (i + 1) * 20;
                }
            }
            panic!("no end: {log:?}");
        };
        // No hypothesis (an engine without partials): the full 600 ms.
        assert_eq!(ends_after(None, 0), 600);
        // A finished-looking one, stable for 100 ms: 200 ms of silence is enough.
        assert_eq!(ends_after(Some("turn on the kitchen lights"), 0), 200);
        // It came late: stable 100 ms after it came (frame 10, 200 ms), so 300 ms.
        assert_eq!(ends_after(Some("turn on the kitchen lights"), 10), 300);
        // "... and" leaves the turn open: the full wait.
        assert_eq!(ends_after(Some("i want to go and"), 0), 600);
        // The trailing silence is reported.
        let mut e = Endpointer::new(S);
        let log = run(&mut e, "sss.....", 0);
        assert_eq!(log.last().unwrap(), "end 160ms r0 c0 t100");
    }

    #[test]
    fn no_double_start_without_an_end() {
        let mut e = Endpointer::new(S);
        let log = run(&mut e, "sssssssss", 0);
        assert_eq!(log.iter().filter(|l| l.starts_with("start")).count(), 1);
    }

    const B: BargeInSettings = BargeInSettings {
        enabled: true,
        mode: crate::turn::BargeMode::Immediate,
        pause_after_ms: 40,
        min_speech_ms: 100,
        warmup_ms: 0,
        level_margin_db: None,
    };

    fn feed(
        b: &mut BargeIn,
        t0: Instant,
        from_frame: u64,
        pattern: &str,
        level: f64,
    ) -> Option<u64> {
        for (i, ch) in pattern.chars().enumerate() {
            let n = from_frame + i as u64;
            if b.caller_frame(ch == 's', level, t0 + Duration::from_millis(20 * n)) {
                return Some(n);
            }
        }
        None
    }

    #[test]
    fn barge_in_needs_playback_and_the_minimum_speech() {
        let t0 = Instant::now();
        let mut b = BargeIn::new(B);
        assert_eq!(
            feed(&mut b, t0, 0, "ssssssss", 3000.0),
            None,
            "not while idle"
        );
        b.playing(true, t0);
        assert_eq!(
            feed(&mut b, t0, 0, "ss.sss..", 3000.0),
            None,
            "runs shorter than 100 ms"
        );
        assert_eq!(
            feed(&mut b, t0, 8, "sssss", 3000.0),
            Some(12),
            "fires on the fifth speech frame"
        );
        assert_eq!(
            feed(&mut b, t0, 13, "ssssssssss", 3000.0),
            None,
            "once per playback"
        );
        b.playing(false, t0 + Duration::from_millis(400));
        b.playing(true, t0 + Duration::from_millis(500));
        assert_eq!(
            feed(&mut b, t0, 25, "sssss", 3000.0),
            Some(29),
            "re-armed by the next playback"
        );
    }

    #[test]
    fn warmup_ignores_speech_right_after_playback_starts() {
        let t0 = Instant::now();
        let mut b = BargeIn::new(BargeInSettings {
            warmup_ms: 200,
            ..B
        });
        b.playing(true, t0);
        // Frames 0-9 are inside the warm-up; speech from frame 10 on counts.
        assert_eq!(feed(&mut b, t0, 0, &"s".repeat(20), 3000.0), Some(14));
    }

    #[test]
    fn level_margin_keeps_our_own_echo_out() {
        let t0 = Instant::now();
        let mut b = BargeIn::new(BargeInSettings {
            level_margin_db: Some(6.0),
            ..B
        });
        b.playing(true, t0);
        for _ in 0..10 {
            b.played_level(4000.0);
        }
        // Our echo, 10 dB quieter than what we play: never a barge-in.
        assert_eq!(feed(&mut b, t0, 0, &"s".repeat(30), 1300.0), None);
        // The caller, louder than our playback by more than the margin: barge-in.
        b.played_level(4000.0);
        assert!(feed(&mut b, t0, 30, &"s".repeat(10), 12000.0).is_some());
    }

    #[test]
    fn disabled_never_fires() {
        let t0 = Instant::now();
        let mut b = BargeIn::new(BargeInSettings {
            enabled: false,
            ..B
        });
        b.playing(true, t0);
        assert_eq!(feed(&mut b, t0, 0, &"s".repeat(50), 9000.0), None);
    }

    #[test]
    fn the_vad_tells_speech_from_silence_and_a_steady_tone() {
        let mut vad = Vad::new();
        assert!(!vad.is_speech(&[0; SPEECH_FRAME_SAMPLES]));
        assert!(
            !vad.is_speech(&[0; 100]),
            "wrong frame sizes are not speech"
        );
    }

    #[test]
    fn rms_of_silence_and_of_a_square_wave() {
        assert_eq!(rms(&[0; SPEECH_FRAME_SAMPLES]), 0.0);
        assert_eq!(rms(&[]), 0.0);
        assert_eq!(rms(&[1000, -1000, 1000, -1000]), 1000.0);
    }
}
