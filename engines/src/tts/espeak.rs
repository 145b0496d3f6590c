//! The embedded espeak-ng engine (Debian `libespeak-ng`), offline.
//!
//! libespeak-ng keeps global state and synthesizes one text at a time, so one worker thread owns
//! it and takes jobs from a queue; calls share it. It runs in synchronous mode with short
//! buffers: the callback receives audio every few tens of milliseconds and hands each chunk to
//! the requesting call at once, so the first frame can be on the wire before the sentence is
//! done. The callback returns "abort" as soon as the requester dropped its stream (an interrupt),
//! so a cancelled synthesis stops within one chunk. espeak-ng runs tens of times faster than
//! real time; a long segment holds the queue for a fraction of its playing time.

use super::{SynthStream, TtsEngine, TtsFactory};
use std::collections::HashSet;
use std::ffi::{CString, c_char, c_int, c_uint, c_void};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use tokio::sync::mpsc;
use voicegate_core::session::{InvalidOption, TtsOptions};

/// The engine's name, for logs and errors.
pub(super) const ENGINE: &str = "espeak";
/// Milliseconds of audio per callback: small, so audio streams out as it is made.
const BUFFER_MS: c_int = 40;

mod ffi {
    use super::*;

    pub const AUDIO_OUTPUT_SYNCHRONOUS: c_int = 2;
    pub const INITIALIZE_DONT_EXIT: c_int = 0x8000;
    pub const CHARS_UTF8: c_uint = 1;
    pub const POS_CHARACTER: c_int = 1;
    pub const RATE: c_int = 1;
    pub const EE_OK: c_int = 0;

    /// `espeak_VOICE`.
    #[repr(C)]
    pub struct Voice {
        pub name: *const c_char,
        /// Pairs of a priority byte and a NUL-terminated language name, then a zero byte (in
        /// a search for `espeak_SetVoiceByProperties`: just the language).
        pub languages: *const c_char,
        pub identifier: *const c_char,
        pub gender: u8,
        pub age: u8,
        pub variant: u8,
        pub xx1: u8,
        pub score: c_int,
        pub spare: *mut c_void,
    }

    pub type SynthCallback = unsafe extern "C" fn(*mut i16, c_int, *mut c_void) -> c_int;

    #[link(name = "espeak-ng")]
    unsafe extern "C" {
        pub fn espeak_Initialize(
            output: c_int,
            buflength: c_int,
            path: *const c_char,
            options: c_int,
        ) -> c_int;
        pub fn espeak_SetSynthCallback(cb: SynthCallback);
        pub fn espeak_SetVoiceByName(name: *const c_char) -> c_int;
        pub fn espeak_SetParameter(parameter: c_int, value: c_int, relative: c_int) -> c_int;
        pub fn espeak_ListVoices(spec: *const Voice) -> *const *const Voice;
        pub fn espeak_SetVoiceByProperties(spec: *const Voice) -> c_int;
        pub fn espeak_Synth(
            text: *const c_void,
            size: usize,
            position: c_uint,
            position_type: c_int,
            end_position: c_uint,
            flags: c_uint,
            unique_identifier: *mut c_uint,
            user_data: *mut c_void,
        ) -> c_int;
    }
}

/// Why the engine could not start, or a synthesis failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EspeakError {
    /// The worker thread could not be spawned (the process is out of threads or memory).
    #[error("cannot start the espeak-ng thread: {0}")]
    Spawn(#[source] Arc<std::io::Error>),
    /// `espeak_Initialize` failed: the library found no data directory.
    #[error("espeak-ng could not initialize (is espeak-ng-data installed?)")]
    Init,
    /// The worker thread ended (it panicked) before it answered.
    #[error("the espeak-ng thread died")]
    ThreadDied,
    /// The configured voice has a NUL byte, which no C string can carry.
    #[error("voice name has a NUL byte")]
    VoiceNul,
    /// The library has no voice of that name.
    #[error("espeak-ng has no voice {0:?}")]
    NoVoice(String),
    /// A synthesis was asked for after the worker ended.
    #[error("the espeak-ng worker is gone")]
    WorkerGone,
    /// `espeak_Synth` returned an error code (not `EE_OK`).
    #[error("espeak_Synth failed with code {0}")]
    Synth(c_int),
}

/// Settings of the espeak-ng engine.
#[derive(Debug, Clone)]
pub struct EspeakSettings {
    /// Voice name, e.g. `en-us`.
    pub voice: String,
    /// Speaking rate in words per minute (80-450).
    pub rate_wpm: u32,
}

/// A request for the worker.
enum Job {
    /// Synthesize `text` with `voice` at `wpm`, streaming audio to `out`.
    Synth {
        text: CString,
        voice: CString,
        wpm: c_int,
        out: mpsc::UnboundedSender<Vec<i16>>,
        done: mpsc::UnboundedSender<Result<(), EspeakError>>,
    },
    /// Check that `voice` exists.
    Check {
        voice: CString,
        reply: std_mpsc::Sender<bool>,
    },
    /// Every voice name the library lists: each voice's name, identifier and languages,
    /// lowercased.
    Voices {
        reply: std_mpsc::Sender<HashSet<String>>,
    },
}

thread_local! {
    /// The job the worker is synthesizing; read by the callback on the same thread.
    static CURRENT: std::cell::RefCell<Option<mpsc::UnboundedSender<Vec<i16>>>> = const { std::cell::RefCell::new(None) };
}

/// Called by libespeak-ng on the worker thread with each chunk of audio.
unsafe extern "C" fn on_audio(wav: *mut i16, samples: c_int, _events: *mut c_void) -> c_int {
    CURRENT.with(|cur| {
        let cur = cur.borrow();
        let Some(out) = cur.as_ref() else {
            return 1;
        };
        if out.is_closed() {
            // The call dropped its stream: abort this synthesis.
            return 1;
        }
        if !wav.is_null() && samples > 0 {
            // SAFETY: libespeak-ng passes `samples` valid samples at `wav` for this call only;
            // they are copied out before returning.
            let chunk = unsafe { std::slice::from_raw_parts(wav, samples as usize) }.to_vec();
            if out.send(chunk).is_err() {
                return 1;
            }
        }
        0
    })
}

/// The process's one espeak-ng worker: its queue and the library's sample rate, or why it could
/// not start (kept: the library's global state allows one attempt per process).
static WORKER: std::sync::OnceLock<Result<(std_mpsc::Sender<Job>, u32), EspeakError>> =
    std::sync::OnceLock::new();

/// Starts the worker thread (once per process: libespeak-ng has global state).
fn worker() -> Result<(std_mpsc::Sender<Job>, u32), EspeakError> {
    WORKER
        .get_or_init(|| {
            let (jobs_tx, jobs_rx) = std_mpsc::channel::<Job>();
            let (ready_tx, ready_rx) = std_mpsc::channel::<Result<u32, EspeakError>>();
            std::thread::Builder::new()
                .name("vg-espeak".into())
                .spawn(move || run_worker(jobs_rx, ready_tx))
                .map_err(|e| EspeakError::Spawn(Arc::new(e)))?;
            let rate = ready_rx.recv().map_err(|_| EspeakError::ThreadDied)??;
            Ok((jobs_tx, rate))
        })
        .clone()
}

fn run_worker(jobs: std_mpsc::Receiver<Job>, ready: std_mpsc::Sender<Result<u32, EspeakError>>) {
    // SAFETY: libespeak-ng is initialized and used only on this thread.
    let rate = unsafe {
        ffi::espeak_Initialize(
            ffi::AUDIO_OUTPUT_SYNCHRONOUS,
            BUFFER_MS,
            std::ptr::null(),
            ffi::INITIALIZE_DONT_EXIT,
        )
    };
    if rate <= 0 {
        let _ = ready.send(Err(EspeakError::Init));
        return;
    }
    // SAFETY: as above.
    unsafe { ffi::espeak_SetSynthCallback(on_audio) };
    list_voices();
    let _ = ready.send(Ok(rate as u32));
    let mut current: Option<(CString, c_int)> = None;
    for job in jobs {
        match job {
            Job::Check { voice, reply } => {
                let ok = set_voice(&voice);
                current = None;
                let _ = reply.send(ok);
            }
            Job::Voices { reply } => {
                current = None;
                let _ = reply.send(voice_names());
            }
            Job::Synth {
                text,
                voice,
                wpm,
                out,
                done,
            } => {
                if out.is_closed() {
                    continue; // cancelled while queued
                }
                if current.as_ref() != Some(&(voice.clone(), wpm)) {
                    set_voice(&voice);
                    // SAFETY: as above.
                    unsafe { ffi::espeak_SetParameter(ffi::RATE, wpm, 0) };
                    current = Some((voice, wpm));
                }
                CURRENT.with(|c| *c.borrow_mut() = Some(out));
                let bytes = text.as_bytes_with_nul();
                // SAFETY: `bytes` is a NUL-terminated UTF-8 string alive for the call; in
                // synchronous mode espeak_Synth returns when synthesis finished or the callback
                // aborted it.
                let code = unsafe {
                    ffi::espeak_Synth(
                        bytes.as_ptr().cast(),
                        bytes.len(),
                        0,
                        ffi::POS_CHARACTER,
                        0,
                        ffi::CHARS_UTF8,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                    )
                };
                CURRENT.with(|c| *c.borrow_mut() = None);
                let result = if code == ffi::EE_OK {
                    Ok(())
                } else {
                    Err(EspeakError::Synth(code))
                };
                let _ = done.send(result);
            }
        }
    }
}

thread_local! {
    /// The languages the library's voices list, lowercased (on the worker thread).
    static LANGUAGES: std::cell::RefCell<HashSet<String>> = std::cell::RefCell::new(HashSet::new());
}

/// Selects `voice` as the `espeak-ng -v` command does: by name or file, else, if it is one of
/// the listed languages (`en-gb` is only a language), the best voice for it. On the worker
/// thread.
fn set_voice(voice: &std::ffi::CStr) -> bool {
    // SAFETY: on the worker thread, after initialization.
    if unsafe { ffi::espeak_SetVoiceByName(voice.as_ptr()) } == ffi::EE_OK {
        return true;
    }
    let lower = voice.to_string_lossy().to_ascii_lowercase();
    if !LANGUAGES.with(|l| l.borrow().contains(&lower)) {
        return false;
    }
    let search = ffi::Voice {
        name: std::ptr::null(),
        languages: voice.as_ptr(),
        identifier: std::ptr::null(),
        gender: 0,
        age: 0,
        variant: 0,
        xx1: 0,
        score: 0,
        spare: std::ptr::null_mut(),
    };
    // SAFETY: as above; the search and its string live through the call.
    unsafe { ffi::espeak_SetVoiceByProperties(&search) == ffi::EE_OK }
}

/// Lists the library's voices: their names and files, and (kept in [`LANGUAGES`]) their
/// languages. On the worker thread, once.
fn list_voices() -> Vec<CString> {
    let mut names = Vec::new();
    let mut languages = HashSet::new();
    // SAFETY: on the worker thread, after initialization; the list and its strings are the
    // library's static data, read before any other call into it.
    unsafe {
        let list = ffi::espeak_ListVoices(std::ptr::null());
        let mut i = 0;
        while !list.is_null() && !(*list.add(i)).is_null() {
            let v = &**list.add(i);
            for p in [v.name, v.identifier] {
                if !p.is_null() {
                    names.push(std::ffi::CStr::from_ptr(p).to_owned());
                }
            }
            // Priority byte, name, NUL; until a zero priority byte.
            let mut l = v.languages;
            while !l.is_null() && *l != 0 {
                let name = std::ffi::CStr::from_ptr(l.add(1));
                l = l.add(2 + name.to_bytes().len());
                languages.insert(name.to_string_lossy().to_ascii_lowercase());
            }
            i += 1;
        }
    }
    for l in &languages {
        if let Ok(c) = CString::new(l.as_str()) {
            names.push(c);
        }
    }
    LANGUAGES.with(|l| *l.borrow_mut() = languages);
    names
}

/// Every voice name the library lists (names, files, languages), lowercased. They are not
/// tried one by one: loading a voice prints to the process's stderr for some languages
/// ("Full dictionary is not installed"), and costs startup time. On the worker thread.
fn voice_names() -> HashSet<String> {
    list_voices()
        .into_iter()
        .filter_map(|c| c.into_string().ok())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The engine factory.
pub struct Espeak {
    jobs: std_mpsc::Sender<Job>,
    rate: u32,
    voice: CString,
    wpm: c_int,
    /// Every voice name a session may choose, lowercased.
    voices: Arc<HashSet<String>>,
}

impl Espeak {
    /// Starts (or joins) the espeak-ng worker and checks the voice. Fails if the library, its
    /// data or the voice is missing.
    pub fn start(settings: &EspeakSettings) -> Result<Espeak, EspeakError> {
        let voice = CString::new(settings.voice.clone()).map_err(|_| EspeakError::VoiceNul)?;
        let (jobs, rate) = worker()?;
        let (reply_tx, reply_rx) = std_mpsc::channel();
        jobs.send(Job::Check {
            voice: voice.clone(),
            reply: reply_tx,
        })
        .map_err(|_| EspeakError::ThreadDied)?;
        if !reply_rx.recv().map_err(|_| EspeakError::ThreadDied)? {
            return Err(EspeakError::NoVoice(settings.voice.clone()));
        }
        let voices = VOICES
            .get_or_init(|| {
                let (tx, rx) = std_mpsc::channel();
                jobs.send(Job::Voices { reply: tx }).ok()?;
                rx.recv().ok().map(Arc::new)
            })
            .clone()
            .ok_or(EspeakError::ThreadDied)?;
        Ok(Espeak {
            jobs,
            rate,
            voice,
            wpm: settings.rate_wpm.clamp(80, 450) as c_int,
            voices,
        })
    }
}

/// The voices, listed once per process (the library's voices do not change while it runs).
static VOICES: std::sync::OnceLock<Option<Arc<HashSet<String>>>> = std::sync::OnceLock::new();

/// Slowest and fastest speaking rates espeak-ng takes, words per minute.
const WPM_RANGE: std::ops::RangeInclusive<f32> = 80.0..=450.0;

impl TtsFactory for Espeak {
    fn for_call(&self) -> Rc<dyn TtsEngine> {
        Rc::new(EspeakEngine {
            jobs: self.jobs.clone(),
            rate: self.rate,
            voice: self.voice.clone(),
            wpm: self.wpm,
        })
    }

    /// `voice`: any name espeak-ng lists (`espeak-ng --voices`: a language such as `en-gb`, a
    /// voice name or file); `speed` scales `tts.espeak.rate_wpm`, within 80-450 words per
    /// minute.
    fn with_options(&self, o: &TtsOptions) -> Result<Rc<dyn TtsEngine>, InvalidOption> {
        let voice = match &o.voice {
            None => self.voice.clone(),
            Some(v) if self.voices.contains(&v.to_ascii_lowercase()) => {
                CString::new(v.as_str()).map_err(|_| InvalidOption::new("voice", "NUL byte"))?
            }
            Some(_) => {
                return Err(InvalidOption::new(
                    "voice",
                    "espeak-ng has no such voice (see espeak-ng --voices)",
                ));
            }
        };
        let wpm = match o.speed {
            None => self.wpm,
            Some(f) => (self.wpm as f32 * f).clamp(*WPM_RANGE.start(), *WPM_RANGE.end()) as c_int,
        };
        Ok(Rc::new(EspeakEngine {
            jobs: self.jobs.clone(),
            rate: self.rate,
            voice,
            wpm,
        }))
    }
}

/// A call's handle on the shared worker.
struct EspeakEngine {
    jobs: std_mpsc::Sender<Job>,
    rate: u32,
    voice: CString,
    wpm: c_int,
}

impl TtsEngine for EspeakEngine {
    fn name(&self) -> &'static str {
        ENGINE
    }

    /// Each segment alone: the engine has no context to carry.
    fn utterance(self: Rc<Self>) -> Box<dyn super::UtteranceSynth> {
        Box::new(super::EachSegment(self))
    }

    fn sample_rate(&self) -> u32 {
        self.rate
    }

    fn synthesize(&self, text: &str) -> SynthStream {
        // NUL bytes (which espeak-ng would read as the end of the text) became spaces, so this
        // cannot fail.
        let text = CString::new(text.replace('\0', " ")).expect("no NUL byte is left");
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let job = Job::Synth {
            text,
            voice: self.voice.clone(),
            wpm: self.wpm,
            out: out_tx,
            done: done_tx,
        };
        if self.jobs.send(job).is_err() {
            let gone = Err(EspeakError::WorkerGone.into());
            return Box::pin(futures_util::stream::iter([gone]));
        }
        // Audio chunks first, then the worker's verdict.
        Box::pin(futures_util::stream::unfold(
            (out_rx, Some(done_rx)),
            |(mut out, done)| async move {
                if let Some(chunk) = out.recv().await {
                    return Some((Ok(chunk), (out, done)));
                }
                let mut done = done?;
                match done.recv().await {
                    Some(Ok(())) | None => None,
                    Some(Err(e)) => Some((Err(e.into()), (out, None))),
                }
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[actix_rt::test]
    async fn speaks_a_sentence_in_several_chunks_at_its_rate() {
        let espeak = Espeak::start(&EspeakSettings {
            voice: "en-us".into(),
            rate_wpm: 175,
        })
        .expect("espeak-ng is installed by scripts/setup.sh");
        let engine = espeak.for_call();
        assert_eq!(engine.sample_rate(), 22_050);
        let chunks: Vec<_> = engine
            .synthesize("Hello world, this is a test of the speech engine.")
            .collect()
            .await;
        assert!(chunks.iter().all(|c| c.is_ok()));
        let samples: usize = chunks.iter().map(|c| c.as_ref().map_or(0, Vec::len)).sum();
        let secs = samples as f64 / 22_050.0;
        assert!((1.5..6.0).contains(&secs), "{secs} s of speech");
        assert!(
            chunks.len() > 10,
            "audio streams in chunks, got {}",
            chunks.len()
        );
        let pcm: Vec<i16> = chunks.into_iter().flatten().flatten().collect();
        assert!(
            voicegate_core::listen::rms(&pcm) > 500.0,
            "it is not silence"
        );
    }

    #[actix_rt::test]
    async fn dropping_the_stream_stops_the_worker_for_the_next_job() {
        let espeak = Espeak::start(&EspeakSettings {
            voice: "en-us".into(),
            rate_wpm: 175,
        })
        .unwrap();
        let engine = espeak.for_call();
        let long = "This is a very long sentence that goes on and on. ".repeat(40);
        let mut s = engine.synthesize(&long);
        let first = s.next().await;
        assert!(matches!(first, Some(Ok(_))));
        drop(s);
        // The next job is served promptly: the long one was aborted, not finished.
        let t = std::time::Instant::now();
        let n = engine.synthesize("Next.").count().await;
        assert!(n > 0);
        assert!(
            t.elapsed() < std::time::Duration::from_secs(2),
            "waited {:?}",
            t.elapsed()
        );
    }

    #[test]
    fn unknown_voice_is_a_startup_error() {
        let err = Espeak::start(&EspeakSettings {
            voice: "no-such-voice-xx".into(),
            rate_wpm: 175,
        })
        .err();
        assert!(
            matches!(&err, Some(EspeakError::NoVoice(v)) if v == "no-such-voice-xx"),
            "{err:?}"
        );
        assert!(err.is_some_and(|e| e.to_string().contains("no voice")));
    }

    #[actix_rt::test]
    async fn a_session_may_choose_any_listed_voice_and_a_speed() {
        let espeak = Espeak::start(&EspeakSettings {
            voice: "en-us".into(),
            rate_wpm: 175,
        })
        .unwrap();
        let voices = espeak.voices.clone();
        assert!(voices.len() > 50, "{} voices", voices.len());
        for v in ["en-us", "en-gb", "de", "fr"] {
            assert!(voices.contains(v), "{v} is listed");
        }
        let samples = |engine: Rc<dyn TtsEngine>| async move {
            let chunks: Vec<_> = engine
                .synthesize("One two three four five six.")
                .collect()
                .await;
            chunks.into_iter().flatten().flatten().count()
        };
        let normal = samples(espeak.for_call()).await;
        let fast = samples(
            espeak
                .with_options(&TtsOptions {
                    voice: Some("EN-GB".into()),
                    speed: Some(2.0),
                })
                .unwrap(),
        )
        .await;
        assert!(
            fast * 3 < normal * 2,
            "twice as fast: {fast} samples against {normal}"
        );
        let err = espeak
            .with_options(&TtsOptions {
                voice: Some("no-such-voice".into()),
                speed: None,
            })
            .err();
        assert_eq!(err.map(|e| e.option), Some("voice"));
    }
}
