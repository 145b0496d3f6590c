//! The embedded pocketsphinx engine (Debian `libpocketsphinx` with `pocketsphinx-en-us`), offline.
//!
//! Decoding is blocking CPU work, so it never runs on a call's worker: a fixed pool of decoder
//! threads (`asr.pocketsphinx.decoders`) each owns one decoder, and an utterance takes one
//! thread for as long as it lasts. Audio streams to it through a channel; the thread reports the
//! hypothesis as it grows (partials) and the final result when the utterance ends. Every
//! utterance starts from a fresh cepstral mean: pocketsphinx otherwise carries its audio
//! normalisation across utterances, and one noisy utterance spoils the next few.
//!
//! With a JSGF grammar (`asr.pocketsphinx.grammar`) recognition is constrained to the phrases it
//! lists, which is exact for menus and commands; without one the general English language model
//! is used (slower at the end of an utterance, and approximate).

mod decoder;

use super::{AsrEngine, AsrFactory, AsrStream, AsrUpdate, UtteranceSink};
use decoder::Decoder;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

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
    /// Decoder threads.
    pub decoders: usize,
}

enum Audio {
    Chunk(Vec<i16>),
    End,
}

/// One utterance for a decoder thread.
struct Job {
    audio: std_mpsc::Receiver<Audio>,
    results: mpsc::UnboundedSender<AsrUpdate>,
}

/// The engine factory: owns the decoder threads.
pub struct Pocketsphinx {
    jobs: std_mpsc::Sender<Job>,
}

impl Pocketsphinx {
    /// Starts the decoder threads; fails if a decoder cannot be built (missing model files, a
    /// grammar that does not parse or uses words the dictionary lacks).
    pub fn start(s: &PocketsphinxSettings) -> Result<Pocketsphinx, String> {
        let (jobs_tx, jobs_rx) = std_mpsc::channel::<Job>();
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let (ready_tx, ready_rx) = std_mpsc::channel::<Result<(), String>>();
        // The grammar is the active search when given; the LM is then not loaded (it costs ~60 MB
        // per decoder).
        let lm = if s.grammar.is_some() {
            None
        } else {
            s.lm.clone()
        };
        for i in 0..s.decoders.max(1) {
            let (hmm, dict, lm, grammar) =
                (s.hmm.clone(), s.dict.clone(), lm.clone(), s.grammar.clone());
            let (jobs, ready) = (jobs_rx.clone(), ready_tx.clone());
            std::thread::Builder::new()
                .name(format!("vg-asr-{i}"))
                .spawn(move || {
                    let decoder = Decoder::new(&hmm, &dict, lm.as_deref(), grammar.as_deref());
                    match decoder {
                        Ok(d) => {
                            let _ = ready.send(Ok(()));
                            run(d, &jobs);
                        }
                        Err(e) => {
                            let _ = ready.send(Err(format!("pocketsphinx: {e}")));
                        }
                    }
                })
                .map_err(|e| format!("cannot start a pocketsphinx thread: {e}"))?;
        }
        drop(ready_tx);
        for _ in 0..s.decoders.max(1) {
            ready_rx
                .recv()
                .map_err(|_| "a pocketsphinx thread died".to_owned())??;
        }
        Ok(Pocketsphinx { jobs: jobs_tx })
    }
}

/// A decoder thread: one utterance at a time.
fn run(mut d: Decoder, jobs: &Mutex<std_mpsc::Receiver<Job>>) {
    loop {
        let job = {
            let rx = jobs.lock().unwrap_or_else(|p| p.into_inner());
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return, // the engine is gone
            }
        };
        let fail = |results: &mpsc::UnboundedSender<AsrUpdate>, message: String| {
            let _ = results.send(AsrUpdate::Error {
                message: format!("pocketsphinx: {message}"),
                fatal: false,
            });
        };
        if let Err(e) = d.reset_cmn().and_then(|()| d.start()) {
            fail(&job.results, e);
            continue;
        }
        let mut since_partial = 0;
        let mut last = String::new();
        // Until the end, or the call went away mid-utterance (the channel closed): finish
        // either way, so the decoder is ready for the next job.
        while let Ok(Audio::Chunk(pcm)) = job.audio.recv() {
            if let Err(e) = d.process(&pcm) {
                fail(&job.results, e);
                break;
            }
            since_partial += pcm.len();
            if since_partial >= PARTIAL_EVERY {
                since_partial = 0;
                if let Some(h) = d.partial()
                    && h != last
                {
                    last.clone_from(&h);
                    let _ = job.results.send(AsrUpdate::Partial(h));
                }
            }
        }
        match d.finish() {
            Ok(text) => {
                let _ = job.results.send(AsrUpdate::Final(text));
            }
            Err(e) => fail(&job.results, e),
        }
    }
}

impl AsrFactory for Pocketsphinx {
    fn for_call(&self) -> Rc<dyn AsrEngine> {
        Rc::new(PocketsphinxEngine {
            jobs: self.jobs.clone(),
        })
    }
}

struct PocketsphinxEngine {
    jobs: std_mpsc::Sender<Job>,
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
        if self
            .jobs
            .send(Job {
                audio: audio_rx,
                results: results_tx,
            })
            .is_err()
        {
            let err = AsrUpdate::Error {
                message: "pocketsphinx: the decoder threads are gone".into(),
                fatal: true,
            };
            return (
                Box::new(Sink { audio: audio_tx }),
                Box::pin(futures_util::stream::iter([err])),
            );
        }
        let stream = futures_util::stream::unfold(results_rx, |mut rx| async move {
            let update = rx.recv().await?;
            Some((update, rx))
        });
        (Box::new(Sink { audio: audio_tx }), Box::pin(stream))
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
            decoders: 1,
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
        assert_eq!(updates.last(), Some(&AsrUpdate::Final(None)), "{updates:?}");

        let bad = Pocketsphinx::start(&settings(Some(
            "#JSGF V1.0; grammar g; public <s> = xyzzyplugh ;",
        )))
        .err();
        assert!(bad.is_some_and(|e| e.contains("dictionary")));
        let missing = Pocketsphinx::start(&PocketsphinxSettings {
            hmm: "/nonexistent".into(),
            ..settings(None)
        })
        .err();
        assert!(missing.is_some_and(|e| e.contains("mdef")));
    }
}
