//! The embedded pocketsphinx engine (Debian `libpocketsphinx` with `pocketsphinx-en-us`), offline.
//!
//! Decoding is blocking CPU work, so it never runs on a call's worker: a fixed pool of decoder
//! threads (`asr.pocketsphinx.decoders`) each owns one decoder, and an utterance takes one
//! thread for as long as it lasts. Audio streams to it through a channel; the thread reports the
//! hypothesis as it grows (partials) and the final result when the utterance ends. Every
//! utterance starts from a fresh cepstral mean: pocketsphinx otherwise carries its audio
//! normalisation across utterances, and one noisy utterance spoils the next few.
//!
//! Models load on first need, on the decoder threads: a decoder with the general language
//! model holds about 95 MB, and a server that never recognizes anything should not pay it. At
//! startup only what can be checked without loading is checked (`decoder::validate`: the
//! files, the grammars and their words), so a bad configuration still fails fast. The first
//! call that may need recognition (its engine is made) has one decoder built in the background;
//! further decoders are built only when utterances overlap (an idle thread with a decoder is
//! always preferred), so the pool grows to `decoders` with the load. An utterance that arrives
//! before its decoder is built waits for it (well under a second). A decoder that has had no
//! utterance for `unload_idle` is dropped and its memory handed back to the system (a burst of
//! calls should not hold its peak for good); the next call that may need recognition has one
//! built again in the background, as the first did. Decoders do not share the
//! language model: pocketsphinx can attach one `ngram_model_t` to several decoders
//! (`ps_set_lm`), but sphinxbase 5prealpha's trie keeps scoring caches inside the model
//! (`lm_trie_t`'s `hist_cache` and `backoff_cache`), so decoders running at the same time on
//! different threads would race on them.
//!
//! With a JSGF grammar (`asr.pocketsphinx.grammar`) recognition is constrained to the phrases it
//! lists, which is exact for menus and commands; without one the general English language model
//! is used (slower at the end of an utterance, and approximate).
//!
//! Utterances wait for a free decoder in a [`FairQueue`]: bounded (`asr.pocketsphinx.queue_max`
//! across all calls, a share of it per call) and served in turn by call, so callers who talk
//! continuously cannot starve everyone else's recognition. An utterance beyond the bound is
//! refused at once (`asr.error`: [`PocketsphinxError::Refused`], which the recognizer counts as
//! `Limit::AsrQueueFull`). An utterance whose results
//! nobody awaits any more (its call ended, or the recognizer's deadline passed and it dropped
//! the stream) leaves the queue, or, if it already holds a decoder, is abandoned at its next
//! chunk of audio: the decoder ends it and takes the next job.
//!
//! Failure: a decoder error fails that utterance (`asr.error`, not fatal), and only that: no
//! final follows it. An utterance whose audio stops coming mid-utterance for `audio_gap_max`
//! (`asr.pocketsphinx.audio_gap_max_ms`; the caller's network dropped, so the endpointer, which
//! hears no packets, never ends it) fails the same way ([`PocketsphinxError::AudioStopped`],
//! which the recognizer counts as `Limit::AsrAudioGap`) and frees its decoder: a caller who
//! drops while speaking holds a decoder for seconds, not until their call times out. If the
//! decoder threads are gone (the engine was dropped), every utterance fails fatally.

mod decoder;
mod queue;

use super::{AsrEngine, AsrFactory, AsrStream, AsrUpdate, UtteranceSink};
pub use decoder::DecoderError;
use decoder::{Decoder, SCORE_NATS, Segment};
use queue::FairQueue;
pub use queue::Refused;
use std::collections::HashSet;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use voicegate_core::session::{AsrOptions, InvalidOption};

/// Audio between partial hypotheses (samples at 16 kHz): 200 ms.
const PARTIAL_EVERY: usize = 3200;

/// Settings of the engine.
#[derive(Debug, Clone)]
pub struct PocketsphinxSettings {
    /// Acoustic model directory.
    pub hmm: PathBuf,
    /// Pronunciation dictionary.
    pub dict: PathBuf,
    /// Language model (used when there is no grammar).
    pub lm: Option<PathBuf>,
    /// JSGF grammar text.
    pub grammar: Option<String>,
    /// Named JSGF grammars (name, text) a session may choose (`asr.grammar` of
    /// `session.update`); each decoder holds them all.
    pub grammars: Vec<(String, String)>,
    /// Decoder threads.
    pub decoders: usize,
    /// Most utterances waiting for a decoder, across all calls.
    pub queue_max: usize,
    /// A decoder idle this long is unloaded (`None`: decoders stay loaded).
    pub unload_idle: Option<Duration>,
    /// Longest wait for an utterance's next audio on its decoder
    /// (`asr.pocketsphinx.audio_gap_max_ms`). While the endpointer hears a caller, audio comes
    /// every 100 ms (the codec's batches); when the caller's packets stop (their network
    /// dropped), the endpointer stops too and the utterance would never end. Past this the
    /// utterance fails (`asr.error`: [`PocketsphinxError::AudioStopped`]) and its decoder takes
    /// the next job, so one caller's drop holds a decoder for at most this long, not until
    /// their call ends.
    pub audio_gap_max: Duration,
}

/// Decoders loaded in this process, by every engine (a gauge for the metrics).
static LOADED: AtomicUsize = AtomicUsize::new(0);

/// Decoders loaded in this process now.
pub fn decoders_loaded() -> usize {
    LOADED.load(Ordering::Relaxed)
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The model files or grammars are unusable (missing files, a grammar that does not parse
    /// or uses words the dictionary lacks).
    #[error("pocketsphinx: {0}")]
    Decoder(#[from] DecoderError),
    /// A decoder thread could not be spawned.
    #[error("cannot start a pocketsphinx thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// Why an utterance was not recognized. The text does not name the engine:
/// [`AsrError`](super::AsrError) adds `pocketsphinx: `.
#[derive(Debug, thiserror::Error)]
pub enum PocketsphinxError {
    /// The decoder failed on this utterance; it takes the next one as usual.
    #[error("{0}")]
    Decoder(#[from] DecoderError),
    /// The utterance was refused at once: the queue for a decoder is full.
    #[error("{0}")]
    Refused(#[from] Refused),
    /// The utterance's audio stopped coming mid-utterance (the caller's network dropped) for
    /// this long (`audio_gap_max`): it is dropped, and its decoder takes the next one.
    #[error("no audio for {} ms mid-utterance (the caller's audio stopped)", .0.as_millis())]
    AudioStopped(Duration),
    /// The decoder threads are gone (the engine was dropped): fatal for the call.
    #[error("the decoder threads are gone")]
    Gone,
}

/// What a decoder thread reports about one utterance. It crosses threads, so it is not an
/// [`AsrUpdate`] (whose errors need not be `Send`: the HTTP engines' are not); the call's side
/// turns it into one.
#[derive(Debug)]
enum Decoded {
    /// The hypothesis so far, and its confidence ([`confidence`]).
    Partial(String, Option<f32>),
    /// The final text (`None` when nothing was recognized) and its confidence.
    Final(Option<String>, Option<f32>),
    /// The decoder failed on this utterance.
    Failed(DecoderError),
    /// The utterance's audio stopped coming for this long (`audio_gap_max`).
    Stopped(Duration),
}

impl From<Decoded> for AsrUpdate {
    fn from(d: Decoded) -> AsrUpdate {
        match d {
            Decoded::Partial(h, c) => AsrUpdate::Partial(h, c),
            Decoded::Final(text, c) => AsrUpdate::Final(text, c),
            Decoded::Failed(e) => AsrUpdate::Error(PocketsphinxError::Decoder(e).into()),
            Decoded::Stopped(gap) => AsrUpdate::Error(PocketsphinxError::AudioStopped(gap).into()),
        }
    }
}

enum Audio {
    Chunk(Vec<i16>),
    End,
}

/// One utterance for a decoder thread.
struct Job {
    /// The utterance's audio, as the caller speaks it.
    audio: std_mpsc::Receiver<Audio>,
    /// Results go here; closed when nobody awaits them any more (the job is abandoned).
    results: mpsc::UnboundedSender<Decoded>,
    /// The named grammar to recognize with; `None`: the default search.
    grammar: Option<Arc<str>>,
}

impl Job {
    /// Nobody awaits this utterance's results any more.
    fn abandoned(&self) -> bool {
        self.results.is_closed()
    }
}

/// What the decoder threads and the calls' engines share.
struct Shared {
    /// Waiting utterances, and whether the engine is gone.
    waiting: Mutex<Waiting>,
    /// Signalled when a job is queued or the engine goes.
    queued: Condvar,
}

struct Waiting {
    /// Utterances no decoder has taken yet.
    jobs: FairQueue<Job>,
    /// The factory was dropped: the decoder threads end.
    closed: bool,
    /// A call that may need recognition started and no decoder is built or being built: a
    /// thread without one should build it now, before the first utterance.
    warm: bool,
    /// Decoders built or being built.
    decoders: usize,
    /// Threads that have a decoder (or are building one ahead of need) and hold no job; while
    /// there is one, threads without a decoder leave the jobs to it rather than build another.
    spare: usize,
}

/// What a decoder thread is asked to do next.
enum Work {
    /// Recognize an utterance.
    Job(Job),
    /// Build the decoder ahead of the first utterance.
    Warm,
    /// Drop the decoder: it had nothing to do for `unload_idle`.
    Unload,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        // Nothing panics while holding the lock (queue operations only), so a poisoned lock
        // still holds a consistent queue.
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next work for a decoder thread (`ready`: it has a decoder), waiting for some;
    /// `None` once the engine is gone. A thread without a decoder takes a job only when no
    /// other thread has a spare one, and a warm-up request only it can serve. A thread with a
    /// decoder that finds nothing to do for `unload_idle` is told to drop it.
    fn next_work(&self, ready: bool, unload_idle: Option<Duration>) -> Option<Work> {
        let unload_at = unload_idle
            .filter(|_| ready)
            .map(|idle| Instant::now() + idle);
        let mut w = self.lock();
        loop {
            if w.closed {
                return None;
            }
            if ready || w.spare == 0 {
                let mut taken = None;
                while let Some((_, job)) = w.jobs.pop() {
                    if !job.abandoned() {
                        taken = Some(job);
                        break;
                    }
                }
                if let Some(job) = taken {
                    if ready {
                        w.spare -= 1;
                        if w.spare == 0 && !w.jobs.is_empty() {
                            // Threads without a decoder left these to a spare one; none is left.
                            self.queued.notify_all();
                        }
                    } else {
                        w.decoders += 1;
                    }
                    return Some(Work::Job(job));
                }
            }
            if !ready && w.warm {
                w.warm = false;
                w.decoders += 1;
                w.spare += 1;
                return Some(Work::Warm);
            }
            w = match unload_at {
                None => self.queued.wait(w).unwrap_or_else(|p| p.into_inner()),
                Some(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        // Idle all along (a job would have been taken above): unload.
                        w.spare -= 1;
                        w.decoders -= 1;
                        return Some(Work::Unload);
                    }
                    self.queued
                        .wait_timeout(w, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }

    /// A thread finished a job: its decoder is spare.
    fn done(&self) {
        self.lock().spare += 1;
    }

    /// A decoder could not be built (`ahead`: for a warm-up): it no longer counts.
    fn build_failed(&self, ahead: bool) {
        let mut w = self.lock();
        w.decoders = w.decoders.saturating_sub(1);
        if ahead {
            w.spare = w.spare.saturating_sub(1);
            drop(w);
            // Jobs left to the thread that was building may be taken by the others now.
            self.queued.notify_all();
        }
    }

    /// A call that may need recognition starts: have a decoder built if there is none.
    fn warm_up(&self) {
        let mut w = self.lock();
        if w.decoders == 0 && !w.warm && !w.closed {
            w.warm = true;
            drop(w);
            self.queued.notify_all();
        }
    }
}

/// What every decoder is built from.
struct Model {
    hmm: PathBuf,
    dict: PathBuf,
    /// `None` with a grammar: the grammar is the active search and the LM is not loaded (it
    /// costs ~60 MB per decoder).
    lm: Option<PathBuf>,
    grammar: Option<String>,
    grammars: Vec<(String, String)>,
}

/// A decoder thread's decoders: the recognizer, and with a grammar the free phone loop that
/// follows each grammar utterance's audio for the results' confidence.
struct Loaded {
    d: Decoder,
    phones: Option<Decoder>,
}

impl Model {
    fn build(&self) -> Result<Loaded, DecoderError> {
        let mut d = Decoder::new(
            &self.hmm,
            &self.dict,
            self.lm.as_deref(),
            self.grammar.as_deref(),
        )?;
        for (name, text) in &self.grammars {
            d.add_grammar(name, text)?;
        }
        // Grammar results get a confidence against a free phone loop. Without one (it cannot
        // fail where the recognizer was built from the same files, but if it did) they have
        // none, and barge-in takes them at their word.
        let rated = self.grammar.is_some() || !self.grammars.is_empty();
        let phones = rated
            .then(|| Decoder::phone_loop(&self.hmm, &self.dict))
            .transpose()
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "no phone loop: grammar results carry no confidence");
                None
            });
        Ok(Loaded { d, phones })
    }
}

/// The engine factory: owns the decoder threads.
pub struct Pocketsphinx {
    shared: Arc<Shared>,
    /// The named grammars' names.
    grammars: Arc<HashSet<String>>,
    /// The key of the next call's engine in the queue.
    next_call: AtomicU64,
}

impl Pocketsphinx {
    /// Checks the model files and grammars and starts the decoder threads, which build their
    /// decoders on first need; fails if a file is missing or a grammar does not parse or uses
    /// words the dictionary lacks.
    pub fn start(s: &PocketsphinxSettings) -> Result<Pocketsphinx, StartError> {
        let model = Arc::new(Model {
            hmm: s.hmm.clone(),
            dict: s.dict.clone(),
            lm: if s.grammar.is_some() {
                None
            } else {
                s.lm.clone()
            },
            grammar: s.grammar.clone(),
            grammars: s.grammars.clone(),
        });
        let named: Vec<&str> = s.grammars.iter().map(|(_, g)| g.as_str()).collect();
        decoder::validate(
            &model.hmm,
            &model.dict,
            model.lm.as_deref(),
            model.grammar.as_deref(),
            &named,
        )?;
        let shared = Arc::new(Shared {
            waiting: Mutex::new(Waiting {
                jobs: FairQueue::new(s.queue_max),
                closed: false,
                warm: false,
                decoders: 0,
                spare: 0,
            }),
            queued: Condvar::new(),
        });
        // Built before the threads, so an early return below still ends the threads it started.
        let engine = Pocketsphinx {
            shared: shared.clone(),
            grammars: Arc::new(s.grammars.iter().map(|(n, _)| n.clone()).collect()),
            next_call: AtomicU64::new(0),
        };
        let (unload_idle, audio_gap_max) = (s.unload_idle, s.audio_gap_max);
        for i in 0..s.decoders.max(1) {
            let (model, shared) = (model.clone(), shared.clone());
            std::thread::Builder::new()
                .name(format!("vg-asr-{i}"))
                .spawn(move || run(&model, &shared, unload_idle, audio_gap_max))
                .map_err(StartError::Spawn)?;
        }
        Ok(engine)
    }

    /// Decoders built or being built (they are built on first need).
    pub fn decoders(&self) -> usize {
        self.shared.lock().decoders
    }
}

impl Drop for Pocketsphinx {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.queued.notify_all();
    }
}

/// A decoder thread: builds its decoder on first need, then one utterance at a time (each
/// failed once its audio stops for `audio_gap_max`); drops it after `unload_idle` without work.
fn run(model: &Model, shared: &Shared, unload_idle: Option<Duration>, audio_gap_max: Duration) {
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
fn loaded(d: Loaded) -> Loaded {
    LOADED.fetch_add(1, Ordering::Relaxed);
    tracing::debug!("pocketsphinx decoder loaded");
    d
}

/// Drops the thread's decoder, if any, and hands the freed memory back to the system: most of
/// a decoder is many small allocations, which glibc would otherwise keep for the process.
fn unload(decoder: &mut Option<Loaded>) {
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
fn confidence(hypothesis: &[Segment], phones: &[Segment]) -> Option<f32> {
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
trait Decodes {
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
fn confidence_of<D: Decodes>(d: &mut D, phones: Option<&mut D>) -> Option<f32> {
    if !d.grammar_active() {
        return None;
    }
    confidence(&d.segments(), &phones?.segments())
}

/// How an utterance's audio stopped coming to its decoder.
enum Ended {
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
fn decode<D: Decodes>(
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

impl AsrFactory for Pocketsphinx {
    fn for_call(&self) -> Rc<dyn AsrEngine> {
        self.shared.warm_up();
        Rc::new(PocketsphinxEngine {
            shared: self.shared.clone(),
            call: self.next_call.fetch_add(1, Ordering::Relaxed),
            grammar: None,
        })
    }

    /// `grammar`: one of `asr.pocketsphinx.grammars` by name (`""`: the default, the
    /// configured grammar or else the language model). The acoustic model fixes the language
    /// and there is one model, so `language`, `model` and `prompt` are refused: an ASR profile
    /// with other model files is how a session changes them.
    fn with_options(&self, o: &AsrOptions) -> Result<Rc<dyn AsrEngine>, InvalidOption> {
        for (option, given) in [
            ("language", &o.language),
            ("model", &o.model),
            ("prompt", &o.prompt),
        ] {
            if given.is_some() {
                return Err(InvalidOption::new(
                    option,
                    "pocketsphinx takes none (choose an asr profile with other model files)",
                ));
            }
        }
        let grammar = match o.grammar.as_deref() {
            None | Some("") => None,
            Some(g) if self.grammars.contains(g) => Some(Arc::from(g)),
            Some(_) => {
                return Err(InvalidOption::new(
                    "grammar",
                    "no such grammar in asr.pocketsphinx.grammars",
                ));
            }
        };
        self.shared.warm_up();
        Ok(Rc::new(PocketsphinxEngine {
            shared: self.shared.clone(),
            call: self.next_call.fetch_add(1, Ordering::Relaxed),
            grammar,
        }))
    }
}

struct PocketsphinxEngine {
    shared: Arc<Shared>,
    /// This call's key in the queue.
    call: u64,
    /// The session's grammar; `None`: the default search.
    grammar: Option<Arc<str>>,
}

struct Sink {
    audio: std_mpsc::Sender<Audio>,
}

impl UtteranceSink for Sink {
    fn push(&mut self, pcm: &[i16]) {
        let _ = self.audio.send(Audio::Chunk(pcm.to_vec()));
    }

    fn finish(self: Box<Self>) {
        let _ = self.audio.send(Audio::End);
    }
}

impl AsrEngine for PocketsphinxEngine {
    fn name(&self) -> &'static str {
        "pocketsphinx"
    }

    fn utterance(&self) -> (Box<dyn UtteranceSink>, AsrStream) {
        let (audio_tx, audio_rx) = std_mpsc::channel();
        let (results_tx, results_rx) = mpsc::unbounded_channel();
        let job = Job {
            audio: audio_rx,
            results: results_tx,
            grammar: self.grammar.clone(),
        };
        let refused = {
            let mut w = self.shared.lock();
            if w.closed {
                Some(PocketsphinxError::Gone)
            } else {
                // Places held by abandoned utterances are free again.
                w.jobs.retain(|j| !j.abandoned());
                match w.jobs.push(self.call, job) {
                    Ok(()) => None,
                    Err((why, _job)) => Some(PocketsphinxError::Refused(why)),
                }
            }
        };
        // The audio of a refused utterance goes nowhere: its receiver went with the job.
        let sink = Box::new(Sink { audio: audio_tx });
        if let Some(err) = refused {
            let update = AsrUpdate::Error(err.into());
            return (sink, Box::pin(futures_util::stream::iter([update])));
        }
        // All: a thread without a decoder leaves the job to an idle one with a decoder.
        self.shared.queued.notify_all();
        // Unbounded, but a decoder sends at most one partial per 200 ms of audio and one final.
        let stream = futures_util::stream::unfold(results_rx, |mut rx| async move {
            let decoded = rx.recv().await?;
            Some((AsrUpdate::from(decoded), rx))
        });
        (sink, Box::pin(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn settings(grammar: Option<&str>) -> PocketsphinxSettings {
        PocketsphinxSettings {
            hmm: "/usr/share/pocketsphinx/model/en-us/en-us".into(),
            dict: "/usr/share/pocketsphinx/model/en-us/cmudict-en-us.dict".into(),
            lm: Some("/usr/share/pocketsphinx/model/en-us/en-us.lm.bin".into()),
            grammar: grammar.map(str::to_owned),
            grammars: Vec::new(),
            decoders: 1,
            queue_max: 8,
            unload_idle: None,
            audio_gap_max: Duration::from_secs(3),
        }
    }

    #[actix_rt::test]
    async fn silence_gives_no_final_and_a_bad_grammar_is_a_startup_error() {
        let ps = Pocketsphinx::start(&settings(Some(
            "#JSGF V1.0; grammar g; public <s> = hello world ;",
        )))
        .expect("pocketsphinx is installed by scripts/setup.sh");
        let engine = ps.for_call();
        let (mut sink, results) = engine.utterance();
        sink.push(&[0; 16_000]);
        sink.finish();
        let updates: Vec<AsrUpdate> = results.collect().await;
        assert!(
            matches!(updates.last(), Some(AsrUpdate::Final(None, _))),
            "{updates:?}"
        );

        let bad = Pocketsphinx::start(&settings(Some(
            "#JSGF V1.0; grammar g; public <s> = xyzzyplugh ;",
        )))
        .err();
        assert!(
            matches!(&bad, Some(StartError::Decoder(DecoderError::GrammarWord(w))) if w == "xyzzyplugh"),
            "{bad:?}"
        );
        assert!(bad.is_some_and(|e| e.to_string().contains("dictionary")));
        // Words are matched as the decoder matches them: case-sensitively.
        let upper = Pocketsphinx::start(&settings(Some(
            "#JSGF V1.0; grammar g; public <s> = HELLO world ;",
        )))
        .err();
        assert!(
            matches!(&upper, Some(StartError::Decoder(DecoderError::GrammarWord(w))) if w == "HELLO"),
            "{upper:?}"
        );
        let unparsable =
            Pocketsphinx::start(&settings(Some("#JSGF V1.0; grammar g; public <s> = ("))).err();
        assert!(
            matches!(
                unparsable,
                Some(StartError::Decoder(DecoderError::GrammarParse))
            ),
            "{unparsable:?}"
        );
        let bad_named = Pocketsphinx::start(&PocketsphinxSettings {
            grammars: vec![(
                "menu".into(),
                "#JSGF V1.0; grammar m; public <m> = one | zorkmid ;".into(),
            )],
            ..settings(None)
        })
        .err();
        assert!(
            matches!(&bad_named, Some(StartError::Decoder(DecoderError::GrammarWord(w))) if w == "zorkmid"),
            "{bad_named:?}"
        );
        let no_lm = Pocketsphinx::start(&PocketsphinxSettings {
            lm: Some("/nonexistent.lm.bin".into()),
            ..settings(None)
        })
        .err();
        assert!(
            matches!(no_lm, Some(StartError::Decoder(DecoderError::NoLm(_)))),
            "{no_lm:?}"
        );
        let missing = Pocketsphinx::start(&PocketsphinxSettings {
            hmm: "/nonexistent".into(),
            ..settings(None)
        })
        .err();
        assert!(
            matches!(&missing, Some(StartError::Decoder(DecoderError::NoMdef(p))) if p.as_os_str() == "/nonexistent"),
            "{missing:?}"
        );
        assert!(missing.is_some_and(|e| e.to_string().contains("mdef")));
    }

    /// Waits until `n` decoders are built or being built.
    async fn decoders(ps: &Pocketsphinx, n: usize) {
        let t0 = std::time::Instant::now();
        while ps.decoders() != n {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(10),
                "{} decoders, want {n}",
                ps.decoders()
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    #[actix_rt::test]
    async fn models_load_on_first_need_and_the_pool_grows_only_when_utterances_overlap() {
        let ps = Pocketsphinx::start(&PocketsphinxSettings {
            decoders: 2,
            ..settings(Some(
                "#JSGF V1.0; grammar c; public <c> = red | green | blue ;",
            ))
        })
        .expect("pocketsphinx is installed by scripts/setup.sh");
        let green = spoken("green").await;
        // Started, checked, nothing loaded.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(ps.decoders(), 0);
        // A call that may need recognition: one decoder is built in the background, and the
        // first utterance, sent at once, waits for it and is recognized.
        let engine = ps.for_call();
        decoders(&ps, 1).await;
        assert_eq!(recognize(&engine, &green).await.as_deref(), Some("green"));
        // More calls, one utterance at a time: still the one decoder.
        for _ in 0..3 {
            let other = ps.for_call();
            assert_eq!(recognize(&other, &green).await.as_deref(), Some("green"));
        }
        assert_eq!(ps.decoders(), 1);
        // Two utterances at once: the second thread builds its decoder.
        let (mut a, a_results) = engine.utterance();
        a.push(&[0; 1600]);
        let other = ps.for_call();
        let (mut b, b_results) = other.utterance();
        decoders(&ps, 2).await;
        for sink in [&mut a, &mut b] {
            sink.push(&green);
        }
        a.finish();
        b.finish();
        for results in [a_results, b_results] {
            let updates: Vec<AsrUpdate> = results.collect().await;
            assert!(
                matches!(updates.last(), Some(AsrUpdate::Final(Some(t), _)) if t == "green"),
                "{updates:?}"
            );
        }
    }

    #[actix_rt::test]
    async fn an_idle_decoder_is_unloaded_and_the_next_call_loads_one_again() {
        let idle = std::time::Duration::from_millis(400);
        let ps = Pocketsphinx::start(&PocketsphinxSettings {
            unload_idle: Some(idle),
            ..settings(Some(
                "#JSGF V1.0; grammar c; public <c> = red | green | blue ;",
            ))
        })
        .expect("pocketsphinx is installed by scripts/setup.sh");
        let green = spoken("green").await;
        let engine = ps.for_call();
        decoders(&ps, 1).await;
        assert_eq!(recognize(&engine, &green).await.as_deref(), Some("green"));
        // An utterance that lasts longer than the idle time keeps its decoder: audio comes in
        // pieces over 0.8 s, and the decoder is still there for the result.
        let (mut sink, results) = engine.utterance();
        for piece in green.chunks(green.len() / 8 + 1) {
            sink.push(piece);
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            assert_eq!(ps.decoders(), 1, "busy, not idle");
        }
        // The decoder's last work comes after this instant (ending the utterance).
        let done = std::time::Instant::now();
        sink.finish();
        let updates: Vec<AsrUpdate> = results.collect().await;
        assert!(
            matches!(updates.last(), Some(AsrUpdate::Final(Some(t), _)) if t == "green"),
            "{updates:?}"
        );
        // Then nothing to do: unloaded once the idle time has passed, not before.
        decoders(&ps, 0).await;
        assert!(
            done.elapsed() >= idle,
            "unloaded after {:?}",
            done.elapsed()
        );
        // The next call has one built in the background, and is recognized.
        let next = ps.for_call();
        decoders(&ps, 1).await;
        assert_eq!(recognize(&next, &green).await.as_deref(), Some("green"));
        // An engine that keeps its decoders does not unload them.
        let kept = Pocketsphinx::start(&settings(Some(
            "#JSGF V1.0; grammar c; public <c> = red | green | blue ;",
        )))
        .expect("started");
        let engine = kept.for_call();
        assert_eq!(recognize(&engine, &green).await.as_deref(), Some("green"));
        tokio::time::sleep(2 * idle).await;
        assert_eq!(kept.decoders(), 1);
    }

    const COLORS: &str = "#JSGF V1.0; grammar c; public <c> = red | green | blue ;";

    #[actix_rt::test]
    async fn a_caller_whose_audio_stops_mid_utterance_holds_the_decoder_only_briefly() {
        // One decoder, as the tests' servers have, freed after a configured second (3 s by
        // default) without audio.
        let ps = Pocketsphinx::start(&PocketsphinxSettings {
            audio_gap_max: Duration::from_secs(1),
            ..settings(Some(COLORS))
        })
        .expect("pocketsphinx is installed by scripts/setup.sh");
        let green = spoken("green").await;
        let a = ps.for_call();
        decoders(&ps, 1).await;
        // A caller starts an utterance, then their network drops: no more audio, and no end
        // (the endpointer hears nothing either). Their call is still up: the sink lives.
        let (mut a_sink, a_results) = a.utterance();
        a_sink.push(&green[..green.len() / 2]);
        waiting(&ps, 0).await;
        // Another call's utterance waits for the one decoder, and is recognized once the
        // configured gap freed it, well within the recognizer's deadline
        // (`asr.utterance_deadline_ms`, 15 s by default).
        let b = ps.for_call();
        let t0 = std::time::Instant::now();
        let heard = tokio::time::timeout(Duration::from_secs(6), recognize(&b, &green))
            .await
            .expect("the other call is recognized while the first caller's call is still up");
        assert_eq!(heard.as_deref(), Some("green"));
        let took = t0.elapsed();
        println!("recognized after {took:?}");
        assert!(took < Duration::from_millis(2500), "{took:?}");
        // The first caller's utterance gets one result, its failure, which says why.
        let a_updates: Vec<AsrUpdate> =
            tokio::time::timeout(std::time::Duration::from_secs(5), a_results.collect())
                .await
                .expect("the first utterance's results end");
        let ends: Vec<&AsrUpdate> = a_updates
            .iter()
            .filter(|u| !matches!(u, AsrUpdate::Partial(..)))
            .collect();
        let [AsrUpdate::Error(e)] = ends.as_slice() else {
            panic!("one failure: {a_updates:?}");
        };
        assert!(!e.is_fatal(), "{e:?}");
        assert_eq!(e.limit(), Some(super::super::AsrLimit::AudioGap));
        assert_eq!(
            e.to_string(),
            "pocketsphinx: no audio for 1000 ms mid-utterance (the caller's audio stopped)"
        );
        drop(a_sink);
    }

    /// A decoder that hears "hello" once it has had audio, and fails on its `fail_at`-th chunk
    /// (from 1; 0: never).
    #[derive(Default)]
    struct Stub {
        fail_at: usize,
        chunks: usize,
        in_utt: bool,
    }

    impl Decodes for Stub {
        fn use_search(&mut self, _: Option<&str>) -> Result<(), DecoderError> {
            Ok(())
        }
        fn reset_cmn(&mut self) -> Result<(), DecoderError> {
            Ok(())
        }
        fn start(&mut self) -> Result<(), DecoderError> {
            self.in_utt = true;
            Ok(())
        }
        fn process(&mut self, _: &[i16]) -> Result<(), DecoderError> {
            self.chunks += 1;
            if self.chunks == self.fail_at {
                return Err(DecoderError::ProcessRaw(-1));
            }
            Ok(())
        }
        fn partial(&mut self) -> Option<String> {
            (self.chunks > 0).then(|| "hello".to_owned())
        }
        fn finish(&mut self) -> Result<Option<String>, DecoderError> {
            self.in_utt = false;
            Ok(self.partial())
        }
        fn grammar_active(&self) -> bool {
            false
        }
        fn segments(&mut self) -> Vec<Segment> {
            Vec::new()
        }
    }

    /// What a decoder thread reports for `audio` decoded by `d`: what [`decode`] sent on the
    /// way, then what it returned (which [`run`] sends).
    fn reported<D: Decodes>(d: &mut D, audio: Vec<Audio>) -> Vec<Decoded> {
        let (tx, rx) = std_mpsc::channel();
        let (results, mut reports) = mpsc::unbounded_channel();
        let job = Job {
            audio: rx,
            results,
            grammar: None,
        };
        for a in audio {
            tx.send(a).expect("the job holds the receiver");
        }
        let last = decode(d, None, &job, Duration::from_secs(3));
        let mut out = Vec::new();
        while let Ok(r) = reports.try_recv() {
            out.push(r);
        }
        out.extend(last);
        out
    }

    #[test]
    fn a_decoder_failure_mid_utterance_is_its_only_result_and_ends_the_utterance() {
        // `ps_process_raw` cannot be made to fail on demand: a stand-in decoder fails instead.
        let chunks = || vec![Audio::Chunk(vec![0; 1600]), Audio::Chunk(vec![0; 1600])];
        let mut fails = Stub {
            fail_at: 2,
            ..Stub::default()
        };
        let mut audio = chunks();
        audio.push(Audio::End);
        let r = reported(&mut fails, audio);
        assert!(
            matches!(
                r.as_slice(),
                [Decoded::Failed(DecoderError::ProcessRaw(-1))]
            ),
            "{r:?}"
        );
        assert!(
            !fails.in_utt,
            "the utterance ended: the decoder can start the next one"
        );
        // Without the failure: a partial, then the final.
        let mut works = Stub::default();
        let mut audio = chunks();
        audio.push(Audio::End);
        let r = reported(&mut works, audio);
        assert!(
            matches!(r.as_slice(), [Decoded::Partial(p, None), Decoded::Final(Some(f), None)] if p == "hello" && f == "hello"),
            "{r:?}"
        );
        assert!(!works.in_utt);
    }

    /// Waits until `n` utterances wait in the queue.
    async fn waiting(ps: &Pocketsphinx, n: usize) {
        let t0 = std::time::Instant::now();
        while ps.shared.lock().jobs.len() != n {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(5),
                "{} waiting, want {n}",
                ps.shared.lock().jobs.len()
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// The first update of `results`, which must come at once.
    async fn first(results: &mut AsrStream) -> AsrUpdate {
        tokio::time::timeout(std::time::Duration::from_secs(5), results.next())
            .await
            .expect("an update in time")
            .expect("an update")
    }

    #[actix_rt::test]
    async fn the_queue_is_bounded_shared_fairly_and_abandoned_work_frees_the_decoder() {
        let ps = Pocketsphinx::start(&PocketsphinxSettings {
            queue_max: 2,
            ..settings(Some("#JSGF V1.0; grammar g; public <s> = hello world ;"))
        })
        .expect("pocketsphinx is installed by scripts/setup.sh");
        let (a, b, c, d) = (ps.for_call(), ps.for_call(), ps.for_call(), ps.for_call());
        // A caller talks and holds the one decoder.
        let (mut a_sink, a_results) = a.utterance();
        a_sink.push(&[0; 1600]);
        waiting(&ps, 0).await;
        // Another call's utterance waits; its next one is refused: a call holds half the queue.
        let (mut b1_sink, mut b1_results) = b.utterance();
        waiting(&ps, 1).await;
        let (_b2_sink, mut b2_results) = b.utterance();
        let AsrUpdate::Error(e) = first(&mut b2_results).await else {
            panic!("b2 is refused");
        };
        assert!(e.refused() && !e.is_fatal(), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("pocketsphinx: recognition refused: this call already has 1"),
            "{e}"
        );
        // A third call takes the last place; a fourth finds the queue full.
        let (_c_sink, c_results) = c.utterance();
        waiting(&ps, 2).await;
        let (_d1_sink, mut d1_results) = d.utterance();
        let AsrUpdate::Error(e) = first(&mut d1_results).await else {
            panic!("d1 is refused");
        };
        assert!(e.refused(), "{e:?}");
        assert!(e.to_string().contains("server is busy"), "{e}");
        // The third call hangs up: its place is free again.
        drop(c_results);
        let (mut d2_sink, mut d2_results) = d.utterance();
        waiting(&ps, 2).await;
        // Nobody awaits the first utterance any more (a deadline passed): the decoder drops it
        // at its next audio, without its end, and serves the waiting calls in turn.
        drop(a_results);
        a_sink.push(&[0; 1600]);
        b1_sink.push(&[0; 16_000]);
        b1_sink.finish();
        let b1 = first(&mut b1_results).await;
        assert!(matches!(b1, AsrUpdate::Final(None, _)), "{b1:?}");
        d2_sink.push(&[0; 16_000]);
        d2_sink.finish();
        let d2 = first(&mut d2_results).await;
        assert!(matches!(d2, AsrUpdate::Final(None, _)), "{d2:?}");
        waiting(&ps, 0).await;
    }

    /// `text` spoken by espeak-ng at 16 kHz, with silence around it.
    async fn spoken(text: &str) -> Vec<i16> {
        use crate::tts::TtsFactory;
        use crate::tts::espeak::{Espeak, EspeakSettings};
        let espeak = Espeak::start(&EspeakSettings {
            voice: "en-us".into(),
            rate_wpm: 150,
        })
        .expect("espeak-ng is installed by scripts/setup.sh");
        let engine = espeak.for_call();
        let rate = engine.sample_rate();
        let pcm: Vec<i16> = engine
            .synthesize(text)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .flatten()
            .flatten()
            .collect();
        let mut r = voicegate_core::resample::StreamResampler::new(rate, 16_000).unwrap();
        let mut out = vec![0; 4800];
        r.push(&pcm, &mut out);
        r.finish(&mut out);
        out.extend([0; 4800]);
        out
    }

    async fn recognize(engine: &Rc<dyn AsrEngine>, pcm: &[i16]) -> Option<String> {
        let (mut sink, results) = engine.utterance();
        sink.push(pcm);
        sink.finish();
        let updates: Vec<AsrUpdate> = results.collect().await;
        match updates.into_iter().last() {
            Some(AsrUpdate::Final(text, _)) => text,
            other => panic!("no final: {other:?}"),
        }
    }

    #[actix_rt::test]
    async fn a_session_chooses_a_named_grammar_per_utterance_and_goes_back_to_the_default() {
        let ps = Pocketsphinx::start(&PocketsphinxSettings {
            grammars: vec![
                (
                    "colors".into(),
                    "#JSGF V1.0; grammar c; public <c> = red | green | blue ;".into(),
                ),
                (
                    "numbers".into(),
                    "#JSGF V1.0; grammar n; public <n> = one | two | three ;".into(),
                ),
            ],
            ..settings(None)
        })
        .expect("pocketsphinx is installed by scripts/setup.sh");
        let green = spoken("green").await;
        let colors = ps
            .with_options(&AsrOptions {
                grammar: Some("colors".into()),
                ..Default::default()
            })
            .unwrap();
        let numbers = ps
            .with_options(&AsrOptions {
                grammar: Some("numbers".into()),
                ..Default::default()
            })
            .unwrap();
        // One decoder serves them all, switching searches per utterance.
        assert_eq!(recognize(&colors, &green).await.as_deref(), Some("green"));
        let n = recognize(&numbers, &green).await;
        assert!(
            matches!(n.as_deref(), None | Some("one" | "two" | "three")),
            "{n:?}"
        );
        let lm = recognize(&ps.for_call(), &green).await;
        assert!(lm.is_some(), "the language model hears something");
        assert_eq!(recognize(&colors, &green).await.as_deref(), Some("green"));

        let refused = |o: AsrOptions| ps.with_options(&o).err().map(|e| e.option);
        assert_eq!(
            refused(AsrOptions {
                grammar: Some("nope".into()),
                ..Default::default()
            }),
            Some("grammar")
        );
        assert_eq!(
            refused(AsrOptions {
                language: Some("de".into()),
                ..Default::default()
            }),
            Some("language")
        );
        assert_eq!(
            refused(AsrOptions {
                grammar: Some(String::new()),
                ..Default::default()
            }),
            None
        );
    }

    #[test]
    fn confidence_compares_words_and_silences_with_free_phones_over_the_same_frames() {
        let seg = |start, end, ascr, filler| Segment {
            start,
            end,
            ascr,
            filler,
        };
        let phones = [
            seg(0, 9, -1000, true),
            seg(10, 29, -200, false),
            seg(30, 49, -300, false),
            seg(50, 59, -900, true),
        ];
        // Words and silences as good as free phones over their frames, or better (the loop is
        // pruned): 1.
        let fits = [
            seg(0, 9, -100, true),
            seg(10, 49, -500, false),
            seg(50, 59, -100, true),
        ];
        assert_eq!(confidence(&fits, &phones), Some(1.0));
        // Words worse by 5 units a frame: exp(-5 * SCORE_NATS), about 0.6. A phone straddling
        // the word's edge counts for its frames inside (frames 20-39 get half of each); the
        // silences fitting better make up for nothing.
        let worse = [
            seg(0, 19, -200, true),
            seg(20, 39, -250 - 100, false),
            seg(40, 59, -500, true),
        ];
        let c = confidence(&worse, &phones).unwrap();
        assert!(
            (f64::from(c) - (-5.0 * SCORE_NATS).exp()).abs() < 1e-6,
            "{c}"
        );
        assert!((0.59..0.61).contains(&c), "{c}");
        // Words that fit, but the sound before them taken as silence fits badly (100 units
        // worse, over 20 word frames): just as unsure.
        let hidden = [
            seg(0, 19, -1100 - 100, true),
            seg(20, 39, -250, false),
            seg(40, 59, -1050, true),
        ];
        assert_eq!(confidence(&hidden, &phones), Some(c));
        // No word: no confidence.
        assert_eq!(confidence(&[seg(0, 59, -10, true)], &phones), None);
        assert_eq!(confidence(&[], &phones), None);
    }

    /// The final and partial results of `pcm`.
    async fn results(engine: &Rc<dyn AsrEngine>, pcm: &[i16]) -> Vec<AsrUpdate> {
        let (mut sink, results) = engine.utterance();
        for chunk in pcm.chunks(1600) {
            sink.push(chunk);
        }
        sink.finish();
        results.collect().await
    }

    #[actix_rt::test]
    async fn grammar_results_say_how_well_the_words_fit_the_audio() {
        let ps = Pocketsphinx::start(&settings(Some(
            "#JSGF V1.0; grammar g; public <s> = stop | wait a second ;",
        )))
        .expect("pocketsphinx is installed by scripts/setup.sh");
        let engine = ps.for_call();
        // Words the grammar lists fit it as well as free phones.
        let updates = results(&engine, &spoken("wait a second").await).await;
        let Some(AsrUpdate::Final(Some(text), Some(c))) = updates.last() else {
            panic!("{updates:?}");
        };
        assert_eq!(text, "wait a second");
        assert!(*c > 0.9, "{updates:?}");
        assert!(
            updates
                .iter()
                .all(|u| matches!(u, AsrUpdate::Partial(_, Some(_)) | AsrUpdate::Final(..))),
            "{updates:?}"
        );
        // Words it does not list are forced onto a phrase, which fits them badly.
        let updates = results(&engine, &spoken("please call me back tomorrow").await).await;
        match updates.last() {
            Some(AsrUpdate::Final(Some(_), Some(c))) => assert!(*c < 0.5, "{updates:?}"),
            Some(AsrUpdate::Final(None, None)) => {}
            _ => panic!("{updates:?}"),
        }
        // The language model's results have none.
        let lm = Pocketsphinx::start(&settings(None)).unwrap();
        let updates = results(&lm.for_call(), &spoken("stop").await).await;
        assert!(
            matches!(updates.last(), Some(AsrUpdate::Final(Some(_), None))),
            "{updates:?}"
        );
    }
}
