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
mod worker;

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
use worker::*;

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
mod tests;
