//! A decoder thread's work: load its decoder on first need, decode one utterance at a time
//! (partials, the final and its confidence, an utterance failed when its audio stops), unload
//! it when idle. The loop and its pure parts, apart from the engine's queue and streams.

use super::*;

/// A decoder thread: builds its decoder on first need, then one utterance at a time (each
/// failed once its audio stops for `audio_gap_max`); drops it after `unload_idle` without work.
pub(super) fn run(
    model: &Model,
    shared: &Shared,
    unload_idle: Option<Duration>,
    audio_gap_max: Duration,
) {
    let mut decoder: Option<Loaded> = None;
    while let Some(work) = shared.next_work(decoder.is_some(), unload_idle) {
        let job = match work {
            Work::Warm => {
                match model.build() {
                    Ok(d) => decoder = Some(loaded(d)),
                    // The first utterance tries again and reports the error.
                    Err(_) => shared.build_failed(true),
                }
                continue;
            }
            Work::Unload => {
                unload(&mut decoder);
                continue;
            }
            Work::Job(job) => job,
        };
        let d = match &mut decoder {
            Some(d) => d,
            None => match model.build() {
                Ok(d) => decoder.insert(loaded(d)),
                Err(e) => {
                    shared.build_failed(false);
                    let _ = job.results.send(Decoded::Failed(e));
                    continue;
                }
            },
        };
        let last = decode(&mut d.d, d.phones.as_mut(), &job, audio_gap_max);
        // Free for the next job before the result goes out, so the next utterance (which its
        // call may send as soon as it has this one's result) finds this decoder spare.
        shared.done();
        if let Some(last) = last {
            let _ = job.results.send(last);
        }
    }
    unload(&mut decoder);
}

/// Counts a decoder just built.
pub(super) fn loaded(d: Loaded) -> Loaded {
    LOADED.fetch_add(1, Ordering::Relaxed);
    tracing::debug!("pocketsphinx decoder loaded");
    d
}

/// Drops the thread's decoder, if any, and hands the freed memory back to the system: most of
/// a decoder is many small allocations, which glibc would otherwise keep for the process.
pub(super) fn unload(decoder: &mut Option<Loaded>) {
    if decoder.take().is_some() {
        LOADED.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: malloc_trim only releases free heap memory; it has no preconditions.
        unsafe {
            libc::malloc_trim(0);
        }
        tracing::debug!("pocketsphinx decoder unloaded (idle)");
    }
}

/// How well a grammar's hypothesis matches the audio, from 0 to 1, against the best free
/// phone sequence over the same audio ([`Decoder::phone_loop`]): the likelihood ratio of the
/// two, as a geometric mean per frame of the words, capped at 1. `None` when the hypothesis
/// has no word.
///
/// A grammar has no garbage model: noise, or words it does not list, still come out as its
/// closest phrase, which then fits worse than free phones do, either where the phrase lies or
/// in the silence the grammar put around it to hide the rest of the sound (espeak-ng's
/// "uh huh" became "stop" with the "uh" taken as silence). So the words' frames and the
/// silences' frames are compared with the phones over the same frames (a phone straddling an
/// edge shares its score out by frame), and each part counts only where it fits worse: where
/// the grammar's path scores better than the loop (which is pruned, and does poorly on digital
/// silence), that does not make up for the other part.
pub(super) fn confidence(hypothesis: &[Segment], phones: &[Segment]) -> Option<f32> {
    let on_phones = |s: &Segment| -> f64 {
        phones
            .iter()
            .filter(|p| p.end >= p.start)
            .map(|p| {
                let overlap = (s.end.min(p.end) - s.start.max(p.start) + 1).max(0);
                f64::from(p.ascr) * f64::from(overlap) / f64::from(p.end - p.start + 1)
            })
            .sum()
    };
    let (mut frames, mut words, mut fillers) = (0i64, 0f64, 0f64);
    for s in hypothesis.iter().filter(|s| s.end >= s.start) {
        let worse = f64::from(s.ascr) - on_phones(s);
        if s.filler {
            fillers += worse;
        } else {
            frames += i64::from(s.end - s.start + 1);
            words += worse;
        }
    }
    if frames == 0 {
        return None;
    }
    let per_frame = (words.min(0.0) + fillers.min(0.0)) / frames as f64 * SCORE_NATS;
    Some(per_frame.exp() as f32)
}

/// What [`decode`] asks of a decoder: [`Decoder`]'s utterance operations, behind a trait so
/// the tests can drive [`decode`] with a decoder that fails on cue (a real one cannot be made
/// to fail mid-utterance).
pub(super) trait Decodes {
    fn use_search(&mut self, grammar: Option<&str>) -> Result<(), DecoderError>;
    fn reset_cmn(&mut self) -> Result<(), DecoderError>;
    fn start(&mut self) -> Result<(), DecoderError>;
    fn process(&mut self, pcm: &[i16]) -> Result<(), DecoderError>;
    fn partial(&mut self) -> Option<String>;
    fn finish(&mut self) -> Result<Option<String>, DecoderError>;
    fn grammar_active(&self) -> bool;
    fn segments(&mut self) -> Vec<Segment>;
}

impl Decodes for Decoder {
    fn use_search(&mut self, grammar: Option<&str>) -> Result<(), DecoderError> {
        Decoder::use_search(self, grammar)
    }
    fn reset_cmn(&mut self) -> Result<(), DecoderError> {
        Decoder::reset_cmn(self)
    }
    fn start(&mut self) -> Result<(), DecoderError> {
        Decoder::start(self)
    }
    fn process(&mut self, pcm: &[i16]) -> Result<(), DecoderError> {
        Decoder::process(self, pcm)
    }
    fn partial(&mut self) -> Option<String> {
        Decoder::partial(self)
    }
    fn finish(&mut self) -> Result<Option<String>, DecoderError> {
        Decoder::finish(self)
    }
    fn grammar_active(&self) -> bool {
        Decoder::grammar_active(self)
    }
    fn segments(&mut self) -> Vec<Segment> {
        Decoder::segments(self)
    }
}

/// The confidence of `d`'s current hypothesis, if it comes from a grammar and the phone loop
/// followed the same audio.
pub(super) fn confidence_of<D: Decodes>(d: &mut D, phones: Option<&mut D>) -> Option<f32> {
    if !d.grammar_active() {
        return None;
    }
    confidence(&d.segments(), &phones?.segments())
}

/// How an utterance's audio stopped coming to its decoder.
pub(super) enum Ended {
    /// Its end came, or its call went away mid-utterance (the channel closed).
    Heard,
    /// Nobody awaits its result any more.
    Abandoned,
    /// The decoder failed on it.
    Failed(DecoderError),
    /// No audio came for `audio_gap_max`.
    Stopped,
}

/// Recognizes one utterance, sending its partial results; returns the last thing to send (the
/// final text or the failure: one of them, once), `None` when nobody awaits it. `phones`, if
/// any, follows a grammar utterance's audio as a free phone loop, for the results' confidence.
/// No audio for `audio_gap_max` mid-utterance fails it.
pub(super) fn decode<D: Decodes>(
    d: &mut D,
    phones: Option<&mut D>,
    job: &Job,
    audio_gap_max: Duration,
) -> Option<Decoded> {
    let ready = d.use_search(job.grammar.as_deref());
    if let Err(e) = ready.and_then(|()| d.reset_cmn()).and_then(|()| d.start()) {
        return Some(Decoded::Failed(e));
    }
    // The phone loop runs only beside a grammar; if it fails, results have no confidence.
    let mut loop_: Option<&mut D> = phones.filter(|_| d.grammar_active());
    if let Some(p) = loop_.as_deref_mut()
        && p.reset_cmn().and_then(|()| p.start()).is_err()
    {
        loop_ = None;
    }
    let mut since_partial = 0;
    let mut last = String::new();
    // Until the end, or the call went away mid-utterance (the channel closed), or nobody
    // awaits the result any more, or the decoder failed, or the caller's audio stopped: the
    // decoder's utterance ends whichever it was, so the decoder is ready for the next job.
    let ended = loop {
        let pcm = match job.audio.recv_timeout(audio_gap_max) {
            Ok(Audio::Chunk(pcm)) => pcm,
            Ok(Audio::End) | Err(std_mpsc::RecvTimeoutError::Disconnected) => break Ended::Heard,
            Err(std_mpsc::RecvTimeoutError::Timeout) => break Ended::Stopped,
        };
        if job.abandoned() {
            break Ended::Abandoned;
        }
        if let Err(e) = d.process(&pcm) {
            break Ended::Failed(e);
        }
        if let Some(p) = loop_.as_deref_mut()
            && p.process(&pcm).is_err()
        {
            let _ = p.finish();
            loop_ = None;
        }
        since_partial += pcm.len();
        if since_partial >= PARTIAL_EVERY {
            since_partial = 0;
            if let Some(h) = d.partial()
                && h != last
            {
                last.clone_from(&h);
                let c = confidence_of(d, loop_.as_deref_mut());
                let _ = job.results.send(Decoded::Partial(h, c));
            }
        }
    };
    let loop_done = loop_.as_deref_mut().map(|p| p.finish().is_ok());
    if loop_done == Some(false) {
        loop_ = None;
    }
    // Ends the decoder's utterance (and, when it was heard to its end, searches for the result).
    let finished = d.finish();
    if job.abandoned() {
        // Nobody will read a result.
        return None;
    }
    match ended {
        // A job once abandoned stays so: returned above.
        Ended::Abandoned => None,
        Ended::Failed(e) => Some(Decoded::Failed(e)),
        Ended::Stopped => Some(Decoded::Stopped(audio_gap_max)),
        Ended::Heard => Some(match finished {
            Ok(text) => {
                let c = text.as_ref().and_then(|_| confidence_of(d, loop_));
                Decoded::Final(text, c)
            }
            Err(e) => Decoded::Failed(e),
        }),
    }
}
