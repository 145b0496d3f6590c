//! The call's recording: when it starts and stops, and handing its audio to the recorder.
//!
//! Only dialog calls are recorded: the dialog app is who starts and stops a recording and who
//! learns its file name (`call.ended`); an echo test has neither, and recording the microphone
//! checks of whoever reaches the endpoint would only fill the disk.
//!
//! The [`Tape`] is shared with the codec (same worker, like the RTP [`Timeline`]): the codec
//! places the caller's decoded audio and every frame it sends as they pass, the call hands the
//! settled stretches to the [`Recorder`] on its periodic watch, and a restarted codec goes on
//! with the same tape. With `recording.mode = "all"` the recording begins when the call's media
//! is up; with `"on-request"` at the dialog app's `recording.start`. `recording.stop` pauses it
//! and a later `recording.start` resumes it in the same file, the pause being silence, so the
//! file keeps the call's clock. A recording that reaches `recording.max_duration_s` is closed
//! and the call goes on.
//!
//! [`Timeline`]: voicegate_core::timeline::Timeline

use super::CallActor;
use crate::metrics::{Limit, metrics};
use crate::recorder::{Handed, Recorder, RecordingFile, RecordingMode};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};
use voicegate_core::dialog::Event;
use voicegate_core::frame;
use voicegate_core::recording::{Chunk, Started, Tape};
use voicegate_core::wav::WavFormat;

/// The shortest stretch handed to the recorder (the watch runs every 200 ms): a killed process
/// loses at most this, the tape's hold and a watch interval, well under a second.
const MIN_CHUNK: Duration = Duration::from_millis(400);

/// A dialog call's recording (when `recording.mode` is not `off`).
pub(super) struct CallRecording {
    /// The audio on the call's clock; shared with the codec.
    pub(super) tape: Rc<RefCell<Tape>>,
    /// Which calls are recorded.
    mode: RecordingMode,
    /// The writer thread.
    recorder: Recorder,
    /// The file, from the recording's start until its end.
    file: Option<RecordingFile>,
    /// The file's name, once there is one (it outlives the file handle for `call.ended`).
    name: Option<String>,
    /// Chunks the recorder's queue refused.
    refused: u64,
}

impl CallRecording {
    /// A call's recording, not yet started.
    pub(super) fn new(
        mode: RecordingMode,
        recorder: Recorder,
        rate: u32,
        max_duration: Duration,
    ) -> Self {
        CallRecording {
            tape: Rc::new(RefCell::new(Tape::new(rate, max_duration))),
            mode,
            recorder,
            file: None,
            name: None,
            refused: 0,
        }
    }
}

/// Why a recording command was not carried out (the `error` event's message).
const OFF: &str = "recording is off on this server (recording.mode = \"off\")";
/// The file could not be created or written.
const FAILED: &str = "the recording could not be written (see voicegate's log)";
/// The longest duration was reached.
const FULL: &str = "the recording reached its longest duration (recording.max_duration_s)";

impl CallActor {
    /// The call's media is up: with `recording.mode = "all"` the recording begins.
    pub(super) fn media_up_for_recording(&mut self) {
        if self
            .recording
            .as_ref()
            .is_some_and(|r| r.mode == RecordingMode::All)
        {
            let _ = self.start_recording(Instant::now());
        }
    }

    /// `recording.start` (`start`) or `recording.stop` from the dialog app; an `error` event
    /// says why one cannot be carried out.
    pub(super) fn recording_command(&mut self, start: bool) {
        let now = Instant::now();
        let command = if start {
            "recording.start"
        } else {
            "recording.stop"
        };
        let result = if start {
            self.start_recording(now)
        } else {
            self.stop_recording(now)
        };
        if let Err(message) = result {
            self.span
                .in_scope(|| tracing::info!(command, "recording command refused: {message}"));
            self.send_event(Event::Error {
                message: message.to_owned(),
                command,
                errors: Vec::new(),
            });
        }
    }

    /// Begins or resumes the recording.
    fn start_recording(&mut self, now: Instant) -> Result<(), &'static str> {
        let Some(rec) = self.recording.as_mut() else {
            return Err(OFF);
        };
        if rec.file.as_ref().is_some_and(RecordingFile::failed) {
            return Err(FAILED);
        }
        let started = rec.tape.borrow_mut().start(now);
        let _e = self.span.enter();
        match started {
            Started::Began => {
                let name = format!("{}.wav", self.call_id.as_str());
                let format = WavFormat {
                    rate: self.settings.pcm_rate,
                    channels: 2,
                };
                tracing::info!(file = %name, "recording started");
                rec.file = Some(rec.recorder.open(name.clone(), format, self.span.clone()));
                rec.name = Some(name);
            }
            Started::Resumed => tracing::info!("recording resumed"),
            Started::Already => {}
            Started::Full => return Err(FULL),
        }
        Ok(())
    }

    /// Pauses the recording: what was recorded so far goes to the file.
    fn stop_recording(&mut self, now: Instant) -> Result<(), &'static str> {
        let Some(rec) = self.recording.as_mut() else {
            return Err(OFF);
        };
        let chunk = rec.tape.borrow_mut().stop(now);
        if let Some(chunk) = chunk {
            self.span.in_scope(|| tracing::info!("recording paused"));
            self.hand_to_recorder(chunk);
        }
        Ok(())
    }

    /// On the call's watch: the settled audio goes to the recorder.
    pub(super) fn recording_tick(&mut self) {
        let Some(rec) = self.recording.as_mut() else {
            return;
        };
        let chunk = rec.tape.borrow_mut().take(Instant::now(), MIN_CHUNK);
        if let Some(chunk) = chunk {
            self.hand_to_recorder(chunk);
        }
    }

    /// The call is ending: the rest of the recording goes to the file, which is closed.
    /// Returns the file's name for `call.ended`, when there is a file.
    pub(super) fn finish_recording(&mut self) -> Option<String> {
        let chunk = self
            .recording
            .as_ref()?
            .tape
            .borrow_mut()
            .stop(Instant::now());
        if let Some(chunk) = chunk {
            self.hand_to_recorder(chunk);
        }
        let rec = self.recording.as_mut()?;
        let exists = rec.file.as_ref().is_none_or(RecordingFile::exists);
        if rec.refused > 0 {
            self.span.in_scope(|| {
                tracing::warn!(
                    chunks = rec.refused,
                    "the recording has gaps: the recorder's queue was full (recording.queue_max_bytes)"
                )
            });
        }
        // Dropping the handle closes the file.
        rec.file = None;
        rec.name.clone().filter(|_| exists)
    }

    /// Queues a chunk for the file; a refused one is silence in the next, a failed file ends
    /// the recording, a full one is closed.
    fn hand_to_recorder(&mut self, chunk: Chunk) {
        let Some(rec) = self.recording.as_mut() else {
            return;
        };
        let Some(file) = &rec.file else {
            return;
        };
        match file.write(chunk) {
            Handed::Queued => {}
            Handed::Refused(chunk) => {
                rec.refused += 1;
                let frame = frame::samples_per_frame(self.settings.pcm_rate) as u64;
                metrics()
                    .recording_frames_dropped
                    .add(chunk.frames().div_ceil(frame));
                metrics().limit_hit(Limit::RecordingQueue);
                rec.tape.borrow_mut().refused(&chunk);
            }
            Handed::Failed => {
                // The writer logged why; nothing more is recorded.
                let _ = rec.tape.borrow_mut().stop(Instant::now());
                return;
            }
        }
        if rec.tape.borrow().is_full() {
            metrics().limit_hit(Limit::RecordingDuration);
            self.span.in_scope(|| {
                tracing::info!(
                    max_s = self.settings.recording.max_duration.as_secs(),
                    "recording stopped: it reached recording.max_duration_s; the call goes on"
                )
            });
            rec.file = None;
        }
    }
}
