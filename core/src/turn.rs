//! Turn-taking: whether the caller's words over voicegate's speech are a real interruption or
//! a backchannel ("mm-hmm", "yeah"), and the two-stage barge-in built on it.
//!
//! In `confirmed` mode ([`BargeMode::Confirmed`]) voice while voicegate speaks first *pauses*
//! playout (the utterance keeps its place); the recognizer's words then decide
//! ([`BargeConfirm`]): words that are not a backchannel ([`Backchannels::confirms`]) make it a
//! real interrupt; a final result that is only a backchannel, no words at all (a cough, a
//! keyboard), or no confirmation within `confirm` resumes playout where it paused. In
//! `immediate` mode voice interrupts at once, as before.
//!
//! Time is passed in; nothing here reads a clock.

use std::time::{Duration, Instant};

/// How the caller's voice over voicegate's speech is taken (`barge_in.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BargeMode {
    /// Voice pauses playout; only confirmed words interrupt (the default).
    Confirmed,
    /// Voice interrupts at once.
    Immediate,
}

impl BargeMode {
    /// `confirmed` or `immediate`.
    pub fn parse(s: &str) -> Option<BargeMode> {
        match s.trim() {
            "confirmed" => Some(BargeMode::Confirmed),
            "immediate" => Some(BargeMode::Immediate),
            _ => None,
        }
    }
}

/// The words of `text`, lowercased, punctuation dropped, hyphens splitting words ("uh-huh" is
/// "uh huh", as recognizers tend to write it anyway).
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || c == '-')
        .map(|w| {
            w.chars()
                .filter(|c| c.is_alphanumeric() || *c == '\'')
                .flat_map(char::to_lowercase)
                .collect::<String>()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// What counts as a backchannel (`barge_in.backchannels`, `barge_in.min_words`), and how sure
/// the recognizer must be of words for them to interrupt (`barge_in.min_confidence`).
#[derive(Debug, Clone)]
pub struct Backchannels {
    /// Each entry's words ("mm-hmm" is `["mm", "hmm"]`).
    phrases: Vec<Vec<String>>,
    /// Every word that appears in an entry.
    vocabulary: Vec<String>,
    /// Words that make a real interruption whatever they are.
    min_words: usize,
    /// The least confidence (0 to 1) of words that interrupt, when the recognizer gives one.
    min_confidence: f32,
}

impl Backchannels {
    /// From the configured list, word count and least confidence.
    pub fn new(list: &[String], min_words: usize, min_confidence: f32) -> Backchannels {
        let phrases: Vec<Vec<String>> = list
            .iter()
            .map(|p| words(p))
            .filter(|w| !w.is_empty())
            .collect();
        let mut vocabulary: Vec<String> = phrases.iter().flatten().cloned().collect();
        vocabulary.sort();
        vocabulary.dedup();
        Backchannels {
            phrases,
            vocabulary,
            min_words: min_words.max(1),
            min_confidence,
        }
    }

    /// The caller's words are a backchannel: one of the listed phrases, or fewer than
    /// `min_words` words all from the list. No words at all is not a backchannel (it is not
    /// speech).
    pub fn is_backchannel(&self, text: &str) -> bool {
        let w = words(text);
        if w.is_empty() {
            return false;
        }
        if self.phrases.contains(&w) {
            return true;
        }
        w.len() < self.min_words && w.iter().all(|x| self.vocabulary.binary_search(x).is_ok())
    }

    /// The words make a real interruption: some words, not a backchannel, and, if the
    /// recognizer says how confident it is of them (0 to 1), at least `min_confidence`. A
    /// recognizer forced to choose among a grammar's phrases turns noise or an unlisted
    /// backchannel into the closest phrase ("stop" for a cough), but with a low confidence.
    pub fn confirms(&self, text: &str, confidence: Option<f32>) -> bool {
        !words(text).is_empty()
            && !self.is_backchannel(text)
            && confidence.is_none_or(|c| c >= self.min_confidence)
    }
}

/// What to do with paused playout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep waiting for words.
    Wait,
    /// A real interruption: stop and drop what was playing.
    Interrupt,
    /// Not an interruption: play on from where it paused.
    Resume,
}

/// The second stage of a confirmed barge-in: from the pause to its verdict.
///
/// A final result decides at once. A partial one decides only once it has stood unchanged for
/// `stable`: the first partials of an utterance are the recognizer's early guesses ("no" for
/// the start of "mm-hmm"), revised as more audio comes.
#[derive(Debug)]
pub struct BargeConfirm {
    words: Backchannels,
    /// Longest wait for confirming words after the pause.
    confirm: Duration,
    /// How long a confirming partial must stand.
    stable: Duration,
    /// Paused at this instant, waiting for a verdict.
    paused: Option<Instant>,
    /// The latest partial confirms an interruption, since this instant.
    confirming: Option<Instant>,
}

impl BargeConfirm {
    /// A confirmer with these backchannels, wait and partial stability.
    pub fn new(words: Backchannels, confirm: Duration, stable: Duration) -> BargeConfirm {
        BargeConfirm {
            words,
            confirm,
            stable,
            paused: None,
            confirming: None,
        }
    }

    /// Playout paused at `now` for the caller's voice.
    pub fn pause(&mut self, now: Instant) {
        self.paused = Some(now);
        self.confirming = None;
    }

    /// Waiting for a verdict.
    pub fn is_paused(&self) -> bool {
        self.paused.is_some()
    }

    /// The recognizer's hypothesis at `now` (`last`: the utterance's final result, possibly
    /// empty) with its confidence if the recognizer gives one. A changed partial restarts its
    /// stability wait.
    pub fn heard(
        &mut self,
        text: &str,
        confidence: Option<f32>,
        last: bool,
        now: Instant,
    ) -> Verdict {
        if self.paused.is_none() {
            return Verdict::Wait;
        }
        let confirms = self.words.confirms(text, confidence);
        let verdict = match (last, confirms) {
            (true, true) => Verdict::Interrupt,
            (true, false) => Verdict::Resume,
            (false, true) => {
                self.confirming = Some(now);
                return self.tick(now);
            }
            (false, false) => {
                self.confirming = None;
                Verdict::Wait
            }
        };
        if verdict != Verdict::Wait {
            self.paused = None;
            self.confirming = None;
        }
        verdict
    }

    /// Time passes: a confirming partial that stood for `stable` interrupts; no confirmation
    /// within the wait resumes.
    pub fn tick(&mut self, now: Instant) -> Verdict {
        let Some(at) = self.paused else {
            return Verdict::Wait;
        };
        let verdict = match self.confirming {
            Some(since) if now.saturating_duration_since(since) >= self.stable => {
                Verdict::Interrupt
            }
            _ if now.saturating_duration_since(at) >= self.confirm => Verdict::Resume,
            _ => Verdict::Wait,
        };
        if verdict != Verdict::Wait {
            self.paused = None;
            self.confirming = None;
        }
        verdict
    }

    /// When the next decision falls due without new words, if paused: a confirming partial's
    /// stability, or the end of the wait.
    pub fn deadline(&self) -> Option<Instant> {
        let end = self.paused? + self.confirm;
        Some(match self.confirming {
            Some(since) => end.min(since + self.stable),
            None => end,
        })
    }

    /// Playback ended another way (the app interrupted, the call ends): nothing is pending.
    pub fn clear(&mut self) {
        self.paused = None;
        self.confirming = None;
    }
}

/// Words that leave a sentence open: a hypothesis ending in one of them is not a finished turn.
pub const TRAILING_WORDS: [&str; 14] = [
    "and", "but", "so", "or", "um", "uh", "because", "the", "a", "to", "of", "with", "my", "i",
];

/// Whether a hypothesis looks like a finished phrase: some words, the last not one that leaves
/// the sentence open ([`TRAILING_WORDS`]).
pub fn looks_complete(text: &str) -> bool {
    match words(text).last() {
        None => false,
        Some(last) => !TRAILING_WORDS.contains(&last.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> Backchannels {
        let l: Vec<String> = ["mm-hmm", "uh-huh", "yeah", "right", "okay", "i see", "hmm"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        Backchannels::new(&l, 2, 0.6)
    }

    #[test]
    fn backchannels_and_real_interruptions() {
        let b = list();
        for t in ["mm-hmm", "Uh huh.", "yeah", "OKAY!", "i see", "hmm"] {
            assert!(b.is_backchannel(t), "{t}");
            assert!(!b.confirms(t, None), "{t}");
        }
        for t in [
            "stop",
            "wait a second",
            "no, I meant Tuesday",
            "yeah but",
            "right okay",
        ] {
            assert!(b.confirms(t, None), "{t}");
        }
        // Nothing recognized is neither.
        assert!(!b.is_backchannel("") && !b.confirms("  ", None));
        assert_eq!(words("Uh-huh, I'm here."), ["uh", "huh", "i'm", "here"]);
    }

    #[test]
    fn pause_then_confirm_resume_or_time_out() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut c = BargeConfirm::new(
            list(),
            Duration::from_millis(1500),
            Duration::from_millis(300),
        );
        assert_eq!(
            c.heard("stop", None, true, t0),
            Verdict::Wait,
            "nothing is paused"
        );
        // A backchannel: partials wait, its final resumes.
        c.pause(t0);
        assert_eq!(c.heard("yeah", None, false, ms(100)), Verdict::Wait);
        assert_eq!(c.tick(ms(1000)), Verdict::Wait);
        assert_eq!(c.heard("yeah", None, true, ms(1100)), Verdict::Resume);
        assert!(!c.is_paused());
        // An early guess that is revised in time does not interrupt ("no" for "mm-hmm")...
        c.pause(ms(2000));
        assert_eq!(c.heard("no", None, false, ms(2100)), Verdict::Wait);
        assert_eq!(c.deadline(), Some(ms(2400)));
        assert_eq!(c.tick(ms(2300)), Verdict::Wait);
        assert_eq!(c.heard("mm hmm", None, false, ms(2350)), Verdict::Wait);
        assert_eq!(c.tick(ms(2700)), Verdict::Wait);
        assert_eq!(c.heard("mm hmm", None, true, ms(2800)), Verdict::Resume);
        // ...a confirming partial that stands interrupts, and so does a confirming final.
        c.pause(ms(3000));
        assert_eq!(c.heard("wait", None, false, ms(3100)), Verdict::Wait);
        assert_eq!(c.heard("wait a", None, false, ms(3200)), Verdict::Wait);
        assert_eq!(c.tick(ms(3499)), Verdict::Wait);
        assert_eq!(c.tick(ms(3500)), Verdict::Interrupt);
        c.pause(ms(4000));
        assert_eq!(c.heard("stop", None, true, ms(4300)), Verdict::Interrupt);
        // No words at all (a cough): the empty final resumes.
        c.pause(ms(5000));
        assert_eq!(c.heard("", None, true, ms(5400)), Verdict::Resume);
        // Nothing confirmed in time: resume, and the late final changes nothing.
        c.pause(ms(6000));
        assert_eq!(c.deadline(), Some(ms(7500)));
        assert_eq!(c.tick(ms(7499)), Verdict::Wait);
        assert_eq!(c.tick(ms(7500)), Verdict::Resume);
        assert_eq!(
            c.heard("wait a second", None, true, ms(7600)),
            Verdict::Wait
        );
        // The call ends (or the app interrupts) while paused: nothing is left pending.
        c.pause(ms(8000));
        c.heard("stop", None, false, ms(8100));
        c.clear();
        assert_eq!(c.tick(ms(9000)), Verdict::Wait);
        assert_eq!(c.deadline(), None);
    }

    #[test]
    fn words_the_recognizer_is_unsure_of_do_not_interrupt() {
        let b = list();
        // Confident words interrupt, unsure ones do not; an engine that gives no confidence
        // is taken at its word; a backchannel stays one however sure.
        assert!(b.confirms("stop", Some(0.95)) && b.confirms("stop", Some(0.6)));
        assert!(!b.confirms("stop", Some(0.47)) && !b.confirms("stop", Some(0.0)));
        assert!(b.confirms("stop", None));
        assert!(!b.confirms("yeah", Some(1.0)));
        assert!(Backchannels::new(&[], 2, 0.0).confirms("stop", Some(0.0)));

        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut c = BargeConfirm::new(b, Duration::from_millis(1500), Duration::from_millis(300));
        // A cough forced onto "stop": the unsure partial neither interrupts when it stands nor
        // holds a stability wait; the unsure final resumes.
        c.pause(t0);
        assert_eq!(c.heard("stop", Some(0.22), false, ms(200)), Verdict::Wait);
        assert_eq!(c.deadline(), Some(ms(1500)));
        assert_eq!(c.tick(ms(600)), Verdict::Wait);
        assert_eq!(c.heard("stop", Some(0.47), true, ms(700)), Verdict::Resume);
        // A real "stop": an unsure early partial waits, the sure final interrupts...
        c.pause(ms(2000));
        assert_eq!(c.heard("stop", Some(0.55), false, ms(2200)), Verdict::Wait);
        assert_eq!(c.tick(ms(2600)), Verdict::Wait);
        assert_eq!(
            c.heard("stop", Some(1.0), true, ms(2700)),
            Verdict::Interrupt
        );
        // ...and a sure partial that stands interrupts as before.
        c.pause(ms(3000));
        assert_eq!(
            c.heard("wait a", Some(0.55), false, ms(3100)),
            Verdict::Wait
        );
        assert_eq!(c.heard("wait a", Some(0.9), false, ms(3200)), Verdict::Wait);
        assert_eq!(c.tick(ms(3499)), Verdict::Wait);
        assert_eq!(c.tick(ms(3500)), Verdict::Interrupt);
    }

    #[test]
    fn trailing_words_leave_a_turn_open() {
        assert!(looks_complete("turn on the kitchen lights"));
        assert!(!looks_complete("turn on the"));
        assert!(!looks_complete("I want to go and"));
        assert!(!looks_complete("um"));
        assert!(!looks_complete(""));
    }
}
