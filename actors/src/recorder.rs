//! `Recorder`: the one thread that writes call recordings, fed by a bounded queue.
//!
//! A call lays its audio on a [`Tape`](voicegate_core::recording::Tape) in memory, on its own
//! worker, and hands settled stretches ([`Chunk`]s, about half a second each) to this thread
//! through [`RecordingFile::write`], which never blocks: the queue is bounded by the bytes of
//! audio it holds (`recording.queue_max_bytes`), and a chunk that does not fit is refused. The
//! call then counts it (`voicegate_recording_frames_dropped_total`, and a hit of the
//! `recording_queue` limit) and writes its length as silence at the start of the next chunk, so
//! a stalled disk costs audio, never the call's clock and never a media worker's time.
//!
//! Each chunk is appended and the file's header rewritten at once ([`WavWriter`]), so a process
//! killed at any moment leaves a valid file that ends at the last chunk written. Closing a file
//! (the call ended) updates the header a last time and syncs the file to disk.
//!
//! Failure: a file that cannot be created or written (the directory went away, the disk is full)
//! is logged once in its call's span, counted in `voicegate_recording_errors_total` and given up:
//! what was written stays valid, the call learns it from [`RecordingFile::failed`] and goes on
//! without recording. Files are created new (`create_new`), never overwritten, readable by their
//! owner and group only.

use crate::metrics::metrics;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, mpsc};
use std::time::Duration;
use voicegate_core::recording::Chunk;
use voicegate_core::wav::{WavFormat, WavWriter};

/// What a queued chunk costs besides its samples: the queue holds messages too, so a dialog app
/// that sends `recording.stop` in a loop (each a chunk with next to no audio) still fills it.
const CHUNK_OVERHEAD: usize = 64;

/// Which calls are recorded (`recording.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecordingMode {
    /// None; `recording.start` gets an `error` event.
    #[default]
    Off,
    /// Every dialog call, from the moment its media is up; `recording.stop` and
    /// `recording.start` pause and resume.
    All,
    /// Only between the dialog app's `recording.start` and `recording.stop`.
    OnRequest,
}

/// What each call needs to know about recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordingSettings {
    /// Which calls are recorded.
    pub mode: RecordingMode,
    /// The longest a recording runs (`recording.max_duration_s`); then it stops and the call
    /// goes on.
    pub max_duration: Duration,
}

impl Default for RecordingSettings {
    fn default() -> Self {
        RecordingSettings {
            mode: RecordingMode::Off,
            max_duration: Duration::from_secs(4 * 3600),
        }
    }
}

/// Why the recorder could not start.
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    /// `recording.dir` is not a directory this process can write in.
    #[error("recording.dir {dir:?} is not a directory voicegate can write in: {source}")]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// What the check met.
        source: std::io::Error,
    },
    /// The writer thread could not be spawned.
    #[error("the recording writer thread did not start: {0}")]
    Thread(std::io::Error),
}

/// What the writer thread is asked to do, in order.
enum Job {
    /// Create the file `path` for recording `id`.
    Open {
        id: u64,
        path: PathBuf,
        format: WavFormat,
        state: Arc<FileState>,
        span: tracing::Span,
    },
    /// Append a chunk to recording `id`.
    Write { id: u64, chunk: Chunk },
    /// Recording `id` is over.
    Close { id: u64 },
    /// Answer once everything queued before is done.
    Sync(mpsc::Sender<()>),
}

/// A file's state, as the writer thread tells its call.
#[derive(Debug, Default)]
struct FileState {
    /// The file was created.
    created: AtomicBool,
    /// It could not be created or written: the recording is over.
    failed: AtomicBool,
}

/// What the calls and the writer thread share.
#[derive(Debug)]
struct Shared {
    /// Where files go.
    dir: PathBuf,
    /// Bytes of audio queued for the writer.
    queued: AtomicUsize,
    /// The most bytes of audio queued at once.
    max_queued: usize,
    /// The next recording's id.
    next_id: AtomicU64,
}

/// The recorder: a handle every call holds (cheap to clone).
#[derive(Debug, Clone)]
pub struct Recorder {
    /// To the writer thread.
    tx: mpsc::Sender<Job>,
    /// The queue's accounting and the directory.
    shared: Arc<Shared>,
}

impl Recorder {
    /// Checks that `dir` is a directory this process can create files in, then starts the
    /// writer thread. `max_queued_bytes` bounds the audio waiting for it.
    pub fn start(dir: &Path, max_queued_bytes: usize) -> Result<Recorder, RecorderError> {
        check_dir(dir).map_err(|source| RecorderError::Dir {
            dir: dir.to_owned(),
            source,
        })?;
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            queued: AtomicUsize::new(0),
            max_queued: max_queued_bytes,
            next_id: AtomicU64::new(1),
        });
        let writer_shared = shared.clone();
        std::thread::Builder::new()
            .name("recorder".into())
            .spawn(move || write_loop(&rx, &writer_shared))
            .map_err(RecorderError::Thread)?;
        Ok(Recorder { tx, shared })
    }

    /// Starts a recording in the file `name` (in the directory) in `format`; the file is
    /// created by the writer thread, and failures are logged in `span`.
    pub fn open(&self, name: String, format: WavFormat, span: tracing::Span) -> RecordingFile {
        let id = self.shared.next_id.fetch_add(1, Relaxed);
        let state = Arc::new(FileState::default());
        let path = self.shared.dir.join(&name);
        if self
            .tx
            .send(Job::Open {
                id,
                path,
                format,
                state: state.clone(),
                span,
            })
            .is_err()
        {
            // The writer is gone (a panic in it): no file.
            state.failed.store(true, Relaxed);
        }
        RecordingFile {
            id,
            name,
            state,
            recorder: self.clone(),
        }
    }

    /// Waits (at most `within`) until everything queued so far is written; false if it was not.
    /// For the end of the process: files are complete before it exits.
    pub fn sync(&self, within: Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        self.tx.send(Job::Sync(tx)).is_ok() && rx.recv_timeout(within).is_ok()
    }

    /// Bytes of audio waiting for the writer.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued.load(Relaxed)
    }
}

/// What became of a chunk handed to [`RecordingFile::write`].
#[derive(Debug, PartialEq, Eq)]
pub enum Handed {
    /// Queued for the file.
    Queued,
    /// The queue was full: the chunk is handed back.
    Refused(Chunk),
    /// The file failed; the recording is over.
    Failed,
}

/// One call's recording file, as the call holds it. Dropping it closes the file.
#[derive(Debug)]
pub struct RecordingFile {
    /// Its id for the writer thread.
    id: u64,
    /// Its file name (in the directory).
    name: String,
    /// Whether the writer created it, and whether it failed.
    state: Arc<FileState>,
    /// The recorder.
    recorder: Recorder,
}

impl RecordingFile {
    /// Its file name, as `call.ended` reports it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it could not be created or written (the recording is over).
    pub fn failed(&self) -> bool {
        self.state.failed.load(Relaxed)
    }

    /// Whether there is (or is about to be) a file: created, or not failed yet. A file that
    /// failed after it was created keeps what was written, valid.
    pub fn exists(&self) -> bool {
        self.state.created.load(Relaxed) || !self.failed()
    }

    /// Queues `chunk` for the file without waiting: refused when the queue already holds
    /// `recording.queue_max_bytes` of audio.
    pub fn write(&self, chunk: Chunk) -> Handed {
        if self.failed() {
            return Handed::Failed;
        }
        let bytes = chunk.sample_bytes() + CHUNK_OVERHEAD;
        let shared = &self.recorder.shared;
        let admitted = shared
            .queued
            .fetch_update(Relaxed, Relaxed, |q| {
                (q + bytes <= shared.max_queued).then_some(q + bytes)
            })
            .is_ok();
        if !admitted {
            return Handed::Refused(chunk);
        }
        match self.recorder.tx.send(Job::Write { id: self.id, chunk }) {
            Ok(()) => Handed::Queued,
            Err(_) => {
                shared.queued.fetch_sub(bytes, Relaxed);
                self.state.failed.store(true, Relaxed);
                Handed::Failed
            }
        }
    }
}

impl Drop for RecordingFile {
    fn drop(&mut self) {
        let _ = self.recorder.tx.send(Job::Close { id: self.id });
    }
}

/// Creates and removes a probe file in `dir`: the directory exists and we may write there.
fn check_dir(dir: &Path) -> std::io::Result<()> {
    if !std::fs::metadata(dir)?.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "not a directory",
        ));
    }
    let probe = dir.join(format!(".voicegate-probe-{}", std::process::id()));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe)?;
    let written = std::io::Write::write_all(&mut f, b"probe");
    drop(f);
    let removed = std::fs::remove_file(&probe);
    written.and(removed)
}

/// A file being written.
struct Open {
    /// The writer, until the file fails.
    wav: Option<WavWriter<File>>,
    /// Shared with the call.
    state: Arc<FileState>,
    /// The call's span, for its log lines.
    span: tracing::Span,
}

impl Open {
    /// The file failed: log once, count, tell the call, keep what was written valid.
    fn fail(&mut self, what: &str, error: &dyn std::fmt::Display) {
        self.state.failed.store(true, Relaxed);
        metrics().recording_errors.inc();
        let _e = self.span.enter();
        tracing::warn!(%error, "recording stopped: {what}; the call goes on without it");
        if let Some(mut wav) = self.wav.take() {
            // The samples the header counts are on disk; this only counts more of them.
            let _ = wav.update_header();
        }
    }
}

/// The writer thread: one job at a time, until every handle is gone.
fn write_loop(rx: &mpsc::Receiver<Job>, shared: &Shared) {
    let mut files: HashMap<u64, Open> = HashMap::new();
    while let Ok(job) = rx.recv() {
        match job {
            Job::Open {
                id,
                path,
                format,
                state,
                span,
            } => {
                let mut open = Open {
                    wav: None,
                    state,
                    span,
                };
                match create(&path).and_then(|f| WavWriter::new(f, format)) {
                    Ok(wav) => {
                        open.state.created.store(true, Relaxed);
                        open.wav = Some(wav);
                    }
                    Err(e) => open.fail("its file could not be created", &e),
                }
                files.insert(id, open);
            }
            Job::Write { id, chunk } => {
                shared
                    .queued
                    .fetch_sub(chunk.sample_bytes() + CHUNK_OVERHEAD, Relaxed);
                let Some(open) = files.get_mut(&id) else {
                    continue;
                };
                let Some(wav) = open.wav.as_mut() else {
                    continue;
                };
                let res = wav
                    .write_silence(chunk.silence_before)
                    .and_then(|()| wav.write(&chunk.samples))
                    .and_then(|()| wav.update_header().map_err(Into::into));
                if let Err(e) = res {
                    open.fail("its file could not be written", &e);
                }
            }
            Job::Close { id } => {
                if let Some(Open {
                    wav: Some(wav),
                    span,
                    state,
                }) = files.remove(&id)
                {
                    let frames = wav.frames();
                    let res = wav.finish().and_then(|f| f.sync_all());
                    let _e = span.enter();
                    match res {
                        Ok(()) => tracing::debug!(frames, "recording closed"),
                        Err(e) => {
                            state.failed.store(true, Relaxed);
                            metrics().recording_errors.inc();
                            tracing::warn!(error = %e, "recording could not be completed");
                        }
                    }
                }
            }
            Job::Sync(done) => {
                let _ = done.send(());
            }
        }
    }
    // Every handle is gone (the process is ending): complete what is open.
    for (_, open) in files {
        if let Some(wav) = open.wav {
            let _ = wav.finish().and_then(|f| f.sync_all());
        }
    }
}

/// Creates a new recording file: never over an existing one, owner and group only.
fn create(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use voicegate_core::wav::Wav;

    const FORMAT: WavFormat = WavFormat {
        rate: 16_000,
        channels: 2,
    };

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "voicegate-recorder-{name}-{}",
            voicegate_core::random::u32()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn chunk(silence: u64, frames: usize, v: i16) -> Chunk {
        Chunk {
            silence_before: silence,
            samples: vec![v; frames * 2],
        }
    }

    #[test]
    fn chunks_are_written_in_order_and_the_file_is_valid_before_it_closes() {
        let dir = temp_dir("order");
        let rec = Recorder::start(&dir, 1 << 20).unwrap();
        let file = rec.open("a.wav".into(), FORMAT, tracing::Span::none());
        assert_eq!(file.write(chunk(0, 100, 1)), Handed::Queued);
        assert_eq!(file.write(chunk(50, 100, 2)), Handed::Queued);
        assert!(rec.sync(Duration::from_secs(5)));
        // Still open, and already readable to the last chunk.
        let wav = Wav::parse(&std::fs::read(dir.join("a.wav")).unwrap()).unwrap();
        assert_eq!(wav.frames(), 250);
        assert_eq!(wav.channel(0)[..100], [1; 100]);
        assert_eq!(wav.channel(0)[100..150], [0; 50]);
        assert_eq!(wav.channel(1)[150..], [2; 100]);
        drop(file);
        assert!(rec.sync(Duration::from_secs(5)));
        assert_eq!(rec.queued_bytes(), 0);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.join("a.wav")).unwrap().permissions(),
        );
        assert_eq!(mode & 0o007, 0, "no access for others: {mode:o}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_full_queue_refuses_chunks_and_gives_them_back() {
        // A writer that never gets to work (a stalled disk): the test holds its queue.
        let (tx, rx) = mpsc::channel();
        let rec = Recorder {
            tx,
            shared: Arc::new(Shared {
                dir: std::env::temp_dir(),
                queued: AtomicUsize::new(0),
                max_queued: 1000,
                next_id: AtomicU64::new(1),
            }),
        };
        let file = rec.open("b.wav".into(), FORMAT, tracing::Span::none());
        let mut refused = 0;
        for _ in 0..10 {
            if let Handed::Refused(c) = file.write(chunk(0, 100, 1)) {
                assert_eq!(c.samples.len(), 200, "handed back whole");
                refused += 1;
            }
        }
        assert_eq!(
            refused, 8,
            "room for two chunks of 400 bytes (and their overhead)"
        );
        assert_eq!(rec.queued_bytes(), 2 * (400 + CHUNK_OVERHEAD));
        // Silence costs no room but the message's.
        assert_eq!(file.write(chunk(1_000_000, 0, 0)), Handed::Queued);
        assert_eq!(
            file.write(chunk(0, 0, 0)),
            Handed::Refused(chunk(0, 0, 0)),
            "even empty chunks are bounded"
        );
        assert_eq!(rx.try_iter().count(), 4, "open, two chunks, the silence");
    }

    #[test]
    fn a_file_that_cannot_be_created_fails_and_refuses_what_follows() {
        let dir = temp_dir("exists");
        std::fs::write(dir.join("c.wav"), b"an older recording").unwrap();
        let rec = Recorder::start(&dir, 1 << 20).unwrap();
        let file = rec.open("c.wav".into(), FORMAT, tracing::Span::none());
        assert!(rec.sync(Duration::from_secs(5)));
        assert!(file.failed() && !file.exists());
        assert_eq!(file.write(chunk(0, 10, 1)), Handed::Failed);
        assert_eq!(
            std::fs::read(dir.join("c.wav")).unwrap(),
            b"an older recording",
            "never overwritten"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_directory_must_exist_and_take_files() {
        let dir = temp_dir("check");
        let missing = dir.join("missing");
        let err = Recorder::start(&missing, 1000).unwrap_err();
        assert!(err.to_string().contains("recording.dir"), "{err}");
        let file = dir.join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(Recorder::start(&file, 1000).is_err());
        assert!(Recorder::start(&dir, 1000).is_ok());
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "the probe is removed"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
