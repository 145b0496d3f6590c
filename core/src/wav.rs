//! WAV files (RIFF, 16-bit PCM) written as they grow, so a file cut off at any moment is valid.
//!
//! A call's recording is written while the call goes on. A canonical WAV header holds two sizes
//! (the RIFF chunk's and the `data` chunk's) that are only known at the end; [`WavWriter`]
//! writes the header first with the sizes of what is there, appends samples, and rewrites the
//! sizes on [`WavWriter::update_header`] (the recorder calls it after every chunk it appends, so
//! about twice a second). Samples always reach the file before the sizes that count them: a
//! process killed at any point leaves a file whose header describes a prefix of what is on disk,
//! which every reader plays up to the last update.
//!
//! Generic over `Write + Seek`, with no clock and no file system of its own: the tests write to
//! memory. [`Wav::parse`] reads such a file back (tests, and tools that check recordings).

use std::io::{self, Seek, SeekFrom, Write};

/// Bytes of the canonical header (RIFF, `fmt `, `data` chunk headers).
pub const HEADER_BYTES: u64 = 44;
/// Bytes per sample: 16-bit PCM only.
const SAMPLE_BYTES: u16 = 2;
/// The most sample bytes a WAV file can describe: its sizes are 32-bit, and the RIFF size counts
/// the header's 36 bytes after it too.
pub const MAX_DATA_BYTES: u64 = u32::MAX as u64 - (HEADER_BYTES - 8);

/// Rate and channel count of a 16-bit PCM WAV file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavFormat {
    /// Samples per second (per channel).
    pub rate: u32,
    /// Interleaved channels (a call's recording has two: caller left, voicegate right).
    pub channels: u16,
}

impl WavFormat {
    /// Bytes of one sample frame (one sample of every channel).
    pub fn frame_bytes(self) -> u64 {
        u64::from(self.channels) * u64::from(SAMPLE_BYTES)
    }

    /// Sample bytes per second.
    pub fn bytes_per_second(self) -> u64 {
        u64::from(self.rate) * self.frame_bytes()
    }
}

/// The canonical 44-byte header for `data_bytes` of samples in `format`.
pub fn header(format: WavFormat, data_bytes: u32) -> [u8; HEADER_BYTES as usize] {
    let mut h = [0u8; HEADER_BYTES as usize];
    let block_align = format.channels * SAMPLE_BYTES;
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&data_bytes.saturating_add(36).to_le_bytes());
    h[8..12].copy_from_slice(b"WAVE");
    h[12..16].copy_from_slice(b"fmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes()); // PCM
    h[22..24].copy_from_slice(&format.channels.to_le_bytes());
    h[24..28].copy_from_slice(&format.rate.to_le_bytes());
    h[28..32].copy_from_slice(&(format.rate * u32::from(block_align)).to_le_bytes());
    h[32..34].copy_from_slice(&block_align.to_le_bytes());
    h[34..36].copy_from_slice(&(SAMPLE_BYTES * 8).to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_bytes.to_le_bytes());
    h
}

/// Why samples were not appended.
#[derive(Debug, thiserror::Error)]
pub enum WavError {
    /// The file would grow past what a WAV header can describe ([`MAX_DATA_BYTES`]).
    #[error("a WAV file holds at most {MAX_DATA_BYTES} bytes of samples")]
    Full,
    /// The output failed (disk full, I/O error).
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A 16-bit PCM WAV file being written.
#[derive(Debug)]
pub struct WavWriter<W: Write + Seek> {
    /// Where the file goes; positioned at its end between calls.
    out: W,
    /// Its rate and channels.
    format: WavFormat,
    /// Sample bytes appended.
    data_bytes: u64,
    /// Sample bytes the header on disk counts.
    counted: u64,
    /// Scratch for the little-endian bytes of a write.
    bytes: Vec<u8>,
}

impl<W: Write + Seek> WavWriter<W> {
    /// Starts a file: writes the header of an empty one.
    pub fn new(mut out: W, format: WavFormat) -> io::Result<Self> {
        out.write_all(&header(format, 0))?;
        Ok(WavWriter {
            out,
            format,
            data_bytes: 0,
            counted: 0,
            bytes: Vec::new(),
        })
    }

    /// Appends interleaved samples (a whole number of sample frames).
    pub fn write(&mut self, samples: &[i16]) -> Result<(), WavError> {
        let len = samples.len() as u64 * u64::from(SAMPLE_BYTES);
        if self.data_bytes + len > MAX_DATA_BYTES {
            return Err(WavError::Full);
        }
        self.bytes.clear();
        self.bytes.reserve(samples.len() * 2);
        for s in samples {
            self.bytes.extend_from_slice(&s.to_le_bytes());
        }
        self.out.write_all(&self.bytes)?;
        self.data_bytes += len;
        Ok(())
    }

    /// Appends `frames` sample frames of silence.
    pub fn write_silence(&mut self, frames: u64) -> Result<(), WavError> {
        let len = frames * self.format.frame_bytes();
        if self.data_bytes + len > MAX_DATA_BYTES {
            return Err(WavError::Full);
        }
        // In pieces of at most 64 KiB, so a long gap costs no large buffer.
        const PIECE: u64 = 64 * 1024;
        let zeros = [0u8; PIECE as usize];
        let mut left = len;
        while left > 0 {
            let n = left.min(PIECE);
            self.out.write_all(&zeros[..n as usize])?;
            left -= n;
        }
        self.data_bytes += len;
        Ok(())
    }

    /// Rewrites the header's sizes to count everything appended so far (nothing to do if they
    /// already do). The samples are flushed first, so the sizes never count bytes that are not
    /// in the file.
    pub fn update_header(&mut self) -> io::Result<()> {
        if self.counted == self.data_bytes {
            return Ok(());
        }
        self.out.flush()?;
        let data = self.data_bytes as u32;
        self.out.seek(SeekFrom::Start(4))?;
        self.out.write_all(&data.saturating_add(36).to_le_bytes())?;
        self.out.seek(SeekFrom::Start(40))?;
        self.out.write_all(&data.to_le_bytes())?;
        self.out.seek(SeekFrom::End(0))?;
        self.out.flush()?;
        self.counted = self.data_bytes;
        Ok(())
    }

    /// Sample bytes appended so far.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Sample frames appended so far.
    pub fn frames(&self) -> u64 {
        self.data_bytes / self.format.frame_bytes()
    }

    /// The output, for what the caller does at the end (a file's `sync_all`).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// Updates the header and hands the output back.
    pub fn finish(mut self) -> io::Result<W> {
        self.update_header()?;
        Ok(self.out)
    }
}

/// A 16-bit PCM WAV file read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wav {
    /// Rate and channels.
    pub format: WavFormat,
    /// The interleaved samples the header counts.
    pub samples: Vec<i16>,
    /// Bytes in the file after the samples the header counts (written after its last update).
    pub uncounted_bytes: u64,
}

/// Why a file is not a WAV file [`Wav::parse`] reads.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WavParseError {
    /// Not `RIFF`/`WAVE`, or cut inside the header.
    #[error("not a RIFF/WAVE file")]
    NotWav,
    /// Not 16-bit PCM, or no channels.
    #[error("not 16-bit PCM")]
    Format,
    /// The header counts more sample bytes than the file has: a file no reader can trust.
    #[error("the header counts {counted} bytes of samples, the file has {present}")]
    Truncated {
        /// What the header says.
        counted: u64,
        /// What is there.
        present: u64,
    },
}

impl Wav {
    /// Reads a canonical 16-bit PCM WAV file (as [`WavWriter`] writes them).
    pub fn parse(bytes: &[u8]) -> Result<Wav, WavParseError> {
        let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
        let u32_at =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        if bytes.len() < HEADER_BYTES as usize
            || &bytes[0..4] != b"RIFF"
            || &bytes[8..12] != b"WAVE"
            || &bytes[12..16] != b"fmt "
            || &bytes[36..40] != b"data"
        {
            return Err(WavParseError::NotWav);
        }
        let channels = u16_at(22);
        if u16_at(20) != 1 || u16_at(34) != 16 || channels == 0 {
            return Err(WavParseError::Format);
        }
        let format = WavFormat {
            rate: u32_at(24),
            channels,
        };
        let counted = u64::from(u32_at(40));
        let present = bytes.len() as u64 - HEADER_BYTES;
        if counted > present || u64::from(u32_at(4)) != counted + 36 {
            return Err(WavParseError::Truncated { counted, present });
        }
        let data = &bytes[HEADER_BYTES as usize..(HEADER_BYTES + counted) as usize];
        Ok(Wav {
            format,
            samples: data
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect(),
            uncounted_bytes: present - counted,
        })
    }

    /// Sample frames the header counts.
    pub fn frames(&self) -> usize {
        self.samples.len() / usize::from(self.format.channels)
    }

    /// One channel's samples (0 is the left).
    pub fn channel(&self, index: u16) -> Vec<i16> {
        self.samples
            .iter()
            .skip(usize::from(index))
            .step_by(usize::from(self.format.channels))
            .copied()
            .collect()
    }

    /// The file's duration.
    pub fn duration(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.frames() as f64 / f64::from(self.format.rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const STEREO_16K: WavFormat = WavFormat {
        rate: 16_000,
        channels: 2,
    };

    #[test]
    fn an_empty_file_is_a_valid_header() {
        let w = WavWriter::new(Cursor::new(Vec::new()), STEREO_16K).unwrap();
        let bytes = w.finish().unwrap().into_inner();
        assert_eq!(bytes.len(), 44);
        let wav = Wav::parse(&bytes).unwrap();
        assert_eq!(wav.format, STEREO_16K);
        assert!(wav.samples.is_empty());
        // Byte-rate and block alignment, as players read them.
        assert_eq!(
            u32::from_le_bytes(bytes[28..32].try_into().unwrap()),
            64_000
        );
        assert_eq!(u16::from_le_bytes(bytes[32..34].try_into().unwrap()), 4);
    }

    #[test]
    fn samples_and_silence_read_back_in_order() {
        let mut w = WavWriter::new(Cursor::new(Vec::new()), STEREO_16K).unwrap();
        w.write(&[1, -1, 2, -2]).unwrap();
        w.write_silence(3).unwrap();
        w.write(&[i16::MAX, i16::MIN]).unwrap();
        assert_eq!(w.frames(), 6);
        let wav = Wav::parse(&w.finish().unwrap().into_inner()).unwrap();
        assert_eq!(
            wav.samples,
            [1, -1, 2, -2, 0, 0, 0, 0, 0, 0, i16::MAX, i16::MIN]
        );
        assert_eq!(wav.channel(0), [1, 2, 0, 0, 0, i16::MAX]);
        assert_eq!(wav.channel(1), [-1, -2, 0, 0, 0, i16::MIN]);
        assert_eq!(wav.uncounted_bytes, 0);
        assert_eq!(wav.duration(), std::time::Duration::from_micros(375));
    }

    /// A file cut off at any point after its header (a killed process) reads as valid: the
    /// header counts what was there at its last update, never more.
    #[test]
    fn a_file_cut_anywhere_is_valid_up_to_its_last_header_update() {
        let mut w = WavWriter::new(Cursor::new(Vec::new()), STEREO_16K).unwrap();
        w.write(&[7; 200]).unwrap();
        w.update_header().unwrap();
        w.write(&[9; 100]).unwrap();
        // Not yet counted: what a reader of the file sees now.
        let bytes = w.get_mut().get_ref().clone();
        for cut in 44..=bytes.len() {
            let wav = Wav::parse(&bytes[..cut]);
            if cut < 44 + 400 {
                assert!(
                    matches!(wav, Err(WavParseError::Truncated { .. })),
                    "cut at {cut}: {wav:?}"
                );
            } else {
                let wav = wav.unwrap();
                assert_eq!(wav.samples, vec![7; 200], "cut at {cut}");
                assert_eq!(wav.uncounted_bytes, cut as u64 - 444);
            }
        }
        w.update_header().unwrap();
        let wav = Wav::parse(w.get_mut().get_ref()).unwrap();
        assert_eq!(wav.samples.len(), 300);
        assert_eq!(wav.uncounted_bytes, 0);
    }

    #[test]
    fn appending_resumes_at_the_end_after_a_header_update() {
        let mut w = WavWriter::new(Cursor::new(Vec::new()), STEREO_16K).unwrap();
        for i in 0..5 {
            w.write(&[i, -i]).unwrap();
            w.update_header().unwrap();
        }
        let wav = Wav::parse(&w.finish().unwrap().into_inner()).unwrap();
        assert_eq!(wav.channel(0), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn refuses_to_grow_past_what_the_header_can_count() {
        let mut w = WavWriter::new(Cursor::new(Vec::new()), STEREO_16K).unwrap();
        // Pretend most of the file is written, without the memory.
        w.data_bytes = MAX_DATA_BYTES - 4;
        w.write(&[1, 2]).unwrap();
        assert!(matches!(w.write(&[1, 2]), Err(WavError::Full)));
        assert!(matches!(w.write_silence(1), Err(WavError::Full)));
        assert_eq!(w.data_bytes(), MAX_DATA_BYTES);
    }

    #[test]
    fn other_files_are_refused() {
        assert_eq!(Wav::parse(b"RIFF"), Err(WavParseError::NotWav));
        let mut h = header(STEREO_16K, 0);
        h[8..12].copy_from_slice(b"AVI ");
        assert_eq!(Wav::parse(&h), Err(WavParseError::NotWav));
        let mut h = header(STEREO_16K, 0);
        h[34] = 8;
        assert_eq!(Wav::parse(&h), Err(WavParseError::Format));
        let h = header(STEREO_16K, 4);
        assert_eq!(
            Wav::parse(&h),
            Err(WavParseError::Truncated {
                counted: 4,
                present: 0
            })
        );
    }
}
