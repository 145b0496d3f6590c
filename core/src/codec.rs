//! Opus both ways, with loss recovery on the way in (RFC 6716, RFC 7587).
//!
//! [`UplinkDecoder`] takes the caller's RTP payloads in arrival order, puts them in order
//! ([`crate::jitter`]), and decodes straight to the call's PCM rate (libopus resamples
//! internally, so no resampler runs on the uplink). A lost packet is recovered from the next
//! packet's in-band FEC when that packet carries it, and concealed (PLC) otherwise; each PCM chunk
//! says which it was, so later stages can tell the dialog app what the network did.
//!
//! [`DownlinkEncoder`] encodes 20 ms frames of PCM at the call's rate to Opus, mono, for a 48 kHz
//! RTP stream. Browsers decode mono Opus into their stereo `opus/48000/2` output; mono halves the
//! encoder's work for speech that has no stereo image.

use crate::frame;
use crate::jitter::{Release, Reorder, ReorderStats};
use std::time::{Duration, Instant};

/// Where a chunk of uplink PCM came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Decoded from the packet that carried it.
    Decoded,
    /// A lost packet, rebuilt from the next packet's in-band FEC.
    Recovered,
    /// A lost packet, concealed by the decoder (PLC).
    Concealed,
}

/// Errors creating or running a codec. Decoding errors on single packets are not errors: the
/// packet is concealed and counted as corrupt.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// libopus refused a setting or failed.
    #[error("opus: {0}")]
    Opus(#[from] opus::Error),
    /// The PCM rate is not one libopus supports.
    #[error("pcm rate {0} Hz is not supported by Opus (it takes {OPUS_PCM_RATES:?} Hz)")]
    Rate(u32),
    /// A frame had the wrong length.
    #[error("frame has {got} samples, expected {want}")]
    FrameLength {
        /// Samples given.
        got: usize,
        /// Samples expected.
        want: usize,
    },
}

/// Counters of the uplink: the reorder buffer's plus what the decoder did about losses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UplinkStats {
    /// Arrival-side counters.
    pub reorder: ReorderStats,
    /// Packets decoded.
    pub decoded: u64,
    /// Lost packets rebuilt from in-band FEC.
    pub recovered: u64,
    /// Lost packets concealed by PLC.
    pub concealed: u64,
    /// Packets libopus could not decode (concealed instead).
    pub corrupt: u64,
}

/// Settings for the uplink.
#[derive(Debug, Clone, Copy)]
pub struct UplinkSettings {
    /// PCM rate out of the decoder.
    pub pcm_rate: u32,
    /// Packets held behind a gap before it is given up.
    pub reorder_depth: usize,
    /// Longest a packet waits behind a gap.
    pub reorder_wait: Duration,
    /// Most consecutive lost frames concealed; beyond this a gap is left silent-less (skipped),
    /// as PLC over long gaps only produces a decaying buzz.
    pub max_conceal: u64,
}

/// The PCM rates libopus encodes and decodes, in Hz (RFC 6716 §2: Opus's audio bandwidths).
/// `media.pcm_rate` takes exactly these.
pub const OPUS_PCM_RATES: [u32; 5] = [8000, 12_000, 16_000, 24_000, 48_000];

/// The longest Opus packet (120 ms) at 48 kHz, in samples.
const MAX_PACKET_SAMPLES: usize = 5760;

/// Reorders and decodes one call's uplink.
pub struct UplinkDecoder<P> {
    decoder: opus::Decoder,
    reorder: Reorder<P>,
    /// Scratch PCM, large enough for the longest packet.
    pcm: Vec<i16>,
    /// Samples in the last decoded packet; the size of a frame to conceal or recover.
    last_samples: usize,
    max_conceal: u64,
    stats: UplinkStats,
}

impl<P: AsRef<[u8]>> UplinkDecoder<P> {
    /// A decoder producing mono PCM at `settings.pcm_rate`.
    pub fn new(settings: UplinkSettings) -> Result<Self, CodecError> {
        check_rate(settings.pcm_rate)?;
        let decoder = opus::Decoder::new(settings.pcm_rate, opus::Channels::Mono)?;
        let max = MAX_PACKET_SAMPLES * settings.pcm_rate as usize / frame::RTP_CLOCK as usize;
        Ok(UplinkDecoder {
            decoder,
            reorder: Reorder::new(settings.reorder_depth, settings.reorder_wait),
            pcm: vec![0; max],
            last_samples: frame::samples_per_frame(settings.pcm_rate),
            max_conceal: settings.max_conceal,
            stats: UplinkStats::default(),
        })
    }

    /// Counters so far.
    pub fn stats(&self) -> UplinkStats {
        UplinkStats {
            reorder: self.reorder.stats(),
            ..self.stats
        }
    }

    /// When packets held behind a gap must be released even if nothing else arrives.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.reorder.next_deadline()
    }

    /// Takes one RTP payload and emits the PCM that is ready, in order.
    pub fn push(
        &mut self,
        seq: u16,
        payload: P,
        now: Instant,
        out: &mut impl FnMut(&[i16], Origin),
    ) {
        self.reorder.push(seq, payload, now);
        self.release(now, out);
    }

    /// Emits what became ready by `now` without a new packet (call at [`next_deadline`](Self::next_deadline)).
    pub fn release(&mut self, now: Instant, out: &mut impl FnMut(&[i16], Origin)) {
        while let Some(r) = self.reorder.pop(now) {
            match r {
                Release::InOrder(p) => self.decode(p.as_ref(), out),
                Release::AfterGap { lost, next } => {
                    let next = next.as_ref();
                    let conceal = lost.min(self.max_conceal);
                    // All but the last missing frame: PLC. The last one: FEC from `next` if it
                    // carries it.
                    for _ in 1..conceal {
                        self.conceal(out);
                    }
                    if conceal > 0 {
                        if packet_has_fec(next) {
                            self.recover(next, out);
                        } else {
                            self.conceal(out);
                        }
                    }
                    self.decode(next, out);
                }
            }
        }
    }

    fn decode(&mut self, payload: &[u8], out: &mut impl FnMut(&[i16], Origin)) {
        if payload.is_empty() {
            self.stats.corrupt += 1;
            return self.conceal(out);
        }
        match self.decoder.decode(payload, &mut self.pcm, false) {
            Ok(n) if n > 0 => {
                self.last_samples = n;
                self.stats.decoded += 1;
                out(&self.pcm[..n], Origin::Decoded);
            }
            _ => {
                self.stats.corrupt += 1;
                self.conceal(out);
            }
        }
    }

    fn recover(&mut self, next: &[u8], out: &mut impl FnMut(&[i16], Origin)) {
        let n = self.last_samples.min(self.pcm.len());
        match self.decoder.decode(next, &mut self.pcm[..n], true) {
            Ok(got) if got > 0 => {
                self.stats.recovered += 1;
                out(&self.pcm[..got], Origin::Recovered);
            }
            _ => self.conceal(out),
        }
    }

    fn conceal(&mut self, out: &mut impl FnMut(&[i16], Origin)) {
        let n = self.last_samples.min(self.pcm.len());
        if let Ok(got) = self.decoder.decode(&[], &mut self.pcm[..n], false)
            && got > 0
        {
            self.stats.concealed += 1;
            out(&self.pcm[..got], Origin::Concealed);
        }
    }
}

/// Whether an Opus packet carries in-band FEC (LBRR) data for the previous frame.
///
/// Only SILK and hybrid packets can (RFC 6716 §4.2.4). The SILK header bits are range-coded with
/// a uniform binary distribution, so they are the most significant bits of the first frame's
/// first byte (§4.2.3): one VAD flag per SILK frame, then the LBRR flag, for the mid channel, and
/// the same again for the side channel of a stereo packet. Packets with frame-count code 3 are
/// reported as carrying none (WebRTC does not send them).
pub fn packet_has_fec(packet: &[u8]) -> bool {
    let Some(&toc) = packet.first() else {
        return false;
    };
    let config = toc >> 3;
    let stereo = toc & 0x04 != 0;
    let silk_frames = match config {
        0..=11 => [1, 1, 2, 3][usize::from(config % 4)],
        12..=15 => 1,
        _ => return false,
    };
    let first = match toc & 0x03 {
        0 | 1 => 1,
        2 => match packet.get(1) {
            Some(&l) if l < 252 => 2,
            Some(_) => 3,
            None => return false,
        },
        _ => return false,
    };
    let Some(&b) = packet.get(first) else {
        return false;
    };
    let bit = |i: u32| i < 8 && (b >> (7 - i)) & 1 == 1;
    bit(silk_frames) || (stereo && bit(2 * silk_frames + 1))
}

/// Settings for the downlink encoder.
#[derive(Debug, Clone, Copy)]
pub struct EncoderSettings {
    /// PCM rate of the frames given to [`DownlinkEncoder::encode`].
    pub pcm_rate: u32,
    /// libopus complexity, 0 (cheapest) to 10.
    pub complexity: i32,
    /// Target bitrate in bits per second.
    pub bitrate: i32,
    /// Add in-band FEC for the browser to recover our lost packets.
    pub fec: bool,
    /// The least loss the FEC is sized for, in percent; the loss the browser reports
    /// ([`DownlinkEncoder::set_reported_loss`]) raises it. libopus spends no FEC bits, and no FEC
    /// encoding time, while this is 0.
    pub expected_loss_percent: i32,
}

/// The most loss FEC is sized for, percent: beyond it, more redundancy in the next packet does
/// not help (it only covers the one packet before it).
const MAX_FEC_LOSS_PERCENT: i32 = 25;

/// Encodes the downlink, one 20 ms frame at a time.
pub struct DownlinkEncoder {
    encoder: opus::Encoder,
    frame_samples: usize,
    /// FEC on, and its floor.
    fec: bool,
    min_loss: i32,
    /// The loss the encoder is set for now, percent.
    loss: i32,
    /// The browser's reported loss, smoothed (percent, fast up, slow down).
    reported: f64,
    /// Output buffer, reused for every frame.
    out: Vec<u8>,
}

/// Largest Opus packet we produce; 20 ms at our bitrates is far below.
const MAX_OPUS_BYTES: usize = 1275;

impl DownlinkEncoder {
    /// A mono VoIP encoder for 20 ms frames.
    pub fn new(s: EncoderSettings) -> Result<Self, CodecError> {
        check_rate(s.pcm_rate)?;
        let mut encoder =
            opus::Encoder::new(s.pcm_rate, opus::Channels::Mono, opus::Application::Voip)?;
        encoder.set_complexity(s.complexity.clamp(0, 10))?;
        encoder.set_bitrate(opus::Bitrate::Bits(s.bitrate))?;
        encoder.set_inband_fec(s.fec)?;
        let min_loss = s.expected_loss_percent.clamp(0, MAX_FEC_LOSS_PERCENT);
        let loss = if s.fec { min_loss } else { 0 };
        encoder.set_packet_loss_perc(loss)?;
        Ok(DownlinkEncoder {
            encoder,
            frame_samples: frame::samples_per_frame(s.pcm_rate),
            fec: s.fec,
            min_loss,
            loss,
            reported: 0.0,
            out: vec![0; MAX_OPUS_BYTES],
        })
    }

    /// Samples in one 20 ms frame.
    pub fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    /// The loss the browser reports for our packets (RTCP receiver reports), 0.0 to 1.0. With
    /// FEC on, the redundancy follows it: up at once, down by a third per report, never below the
    /// configured floor. Returns the loss percent the encoder is now sized for.
    pub fn set_reported_loss(&mut self, fraction: f64) -> Result<i32, CodecError> {
        if !self.fec {
            return Ok(0);
        }
        let now = (fraction.clamp(0.0, 1.0) * 100.0).min(MAX_FEC_LOSS_PERCENT as f64);
        let decayed = self.reported * (2.0 / 3.0);
        // Below one percent the decay would never reach zero; the report is the truth there.
        self.reported = if decayed < 1.0 { now } else { now.max(decayed) };
        let loss = (self.reported.ceil() as i32).max(self.min_loss);
        if loss != self.loss {
            self.encoder.set_packet_loss_perc(loss)?;
            self.loss = loss;
        }
        Ok(loss)
    }

    /// The loss percent the FEC is sized for now (0: no FEC is spent).
    pub fn fec_loss_percent(&self) -> i32 {
        self.loss
    }

    /// Encodes one frame; the packet is valid until the next call.
    pub fn encode(&mut self, pcm: &[i16]) -> Result<&[u8], CodecError> {
        if pcm.len() != self.frame_samples {
            return Err(CodecError::FrameLength {
                got: pcm.len(),
                want: self.frame_samples,
            });
        }
        let n = self.encoder.encode(pcm, &mut self.out)?;
        Ok(&self.out[..n])
    }
}

fn check_rate(rate: u32) -> Result<(), CodecError> {
    if OPUS_PCM_RATES.contains(&rate) {
        Ok(())
    } else {
        Err(CodecError::Rate(rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tone;

    /// The default call rate, and its frame.
    const RATE: u32 = frame::SPEECH_RATE;
    const FRAME: usize = frame::SPEECH_FRAME_SAMPLES;

    fn settings() -> UplinkSettings {
        UplinkSettings {
            pcm_rate: RATE,
            reorder_depth: 3,
            reorder_wait: Duration::from_millis(60),
            max_conceal: 5,
        }
    }

    fn encoder(fec: bool) -> DownlinkEncoder {
        DownlinkEncoder::new(EncoderSettings {
            pcm_rate: RATE,
            complexity: 5,
            bitrate: 24_000,
            fec,
            expected_loss_percent: 20,
        })
        .unwrap()
    }

    impl DownlinkEncoder {
        fn settings_for_test(&self) -> EncoderSettings {
            EncoderSettings {
                pcm_rate: RATE,
                complexity: 5,
                bitrate: 24_000,
                fec: self.fec,
                expected_loss_percent: self.min_loss,
            }
        }
    }

    /// `n` packets of a speech-like signal (a chirpy tone mix) encoded at 16 kHz.
    fn packets(n: usize, fec: bool) -> Vec<Vec<u8>> {
        let mut enc = encoder(fec);
        let mut signal = tone::Tone::new(RATE, 440.0, 8000.0);
        let mut frame = vec![0i16; FRAME];
        (0..n)
            .map(|_| {
                signal.fill(&mut frame);
                enc.encode(&frame).unwrap().to_vec()
            })
            .collect()
    }

    fn run(seqs: &[(u16, usize)], pk: &[Vec<u8>]) -> (Vec<Origin>, UplinkStats, Vec<i16>) {
        let t = Instant::now();
        let mut dec = UplinkDecoder::new(settings()).unwrap();
        let mut origins = vec![];
        let mut pcm = vec![];
        for &(seq, i) in seqs {
            dec.push(seq, pk[i].clone(), t, &mut |chunk: &[i16], o| {
                origins.push(o);
                pcm.extend_from_slice(chunk);
            });
        }
        (origins, dec.stats(), pcm)
    }

    #[test]
    fn clean_stream_decodes_every_packet_to_16k_frames() {
        let pk = packets(50, true);
        let seqs: Vec<_> = (0..50).map(|i| (1000 + i as u16, i)).collect();
        let (origins, stats, pcm) = run(&seqs, &pk);
        assert_eq!(origins, vec![Origin::Decoded; 50]);
        assert_eq!(stats.decoded, 50);
        assert_eq!(pcm.len(), 50 * FRAME);
        // The tone survives the round trip.
        let f = tone::dominant_frequency(&pcm[FRAME * 10..], RATE, 100.0, 2000.0);
        assert!((f - 440.0).abs() < 10.0, "decoded tone at {f} Hz");
    }

    #[test]
    fn fec_follows_the_loss_the_browser_reports() {
        let mut enc = DownlinkEncoder::new(EncoderSettings {
            expected_loss_percent: 0,
            ..encoder(true).settings_for_test()
        })
        .unwrap();
        // Each phase: a pause, then a new tone (SILK codes FEC only for frames its VAD calls
        // active, and a steady tone stops being active after a while).
        let mut phase = 0.0;
        let mut lbrr = |enc: &mut DownlinkEncoder| -> Vec<bool> {
            phase += 1.0;
            let mut signal = tone::Tone::new(RATE, 300.0 + 100.0 * phase, 8000.0);
            let mut frame = vec![0i16; FRAME];
            for _ in 0..10 {
                enc.encode(&[0i16; FRAME]).unwrap();
            }
            (0..8)
                .map(|_| {
                    signal.fill(&mut frame);
                    packet_has_fec(enc.encode(&frame).unwrap())
                })
                .collect()
        };
        // No loss reported: no FEC is spent.
        let clean = lbrr(&mut enc);
        assert!(clean.iter().all(|&b| !b), "clean: {clean:?}");
        // 8 % reported: FEC sized for it.
        assert_eq!(enc.set_reported_loss(0.08).unwrap(), 8);
        let with = lbrr(&mut enc);
        assert!(with[2..].iter().all(|&b| b), "fec packets: {with:?}");
        // Clean reports again: it decays by a third each, then stops.
        let steps: Vec<i32> = (0..8)
            .map(|_| enc.set_reported_loss(0.0).unwrap())
            .collect();
        assert_eq!(steps, vec![6, 4, 3, 2, 2, 0, 0, 0]);
        let after = lbrr(&mut enc);
        assert!(after.iter().all(|&b| !b), "after: {after:?}");
        // A floor holds, and FEC off ignores reports.
        let mut floor = encoder(true);
        assert_eq!(floor.set_reported_loss(0.0).unwrap(), 20);
        let mut off = encoder(false);
        assert_eq!(off.set_reported_loss(0.3).unwrap(), 0);
        assert_eq!(off.fec_loss_percent(), 0);
    }

    #[test]
    fn encoder_with_fec_marks_lbrr_and_without_does_not() {
        let with: Vec<bool> = packets(30, true)
            .iter()
            .map(|p| packet_has_fec(p))
            .collect();
        let without: Vec<bool> = packets(30, false)
            .iter()
            .map(|p| packet_has_fec(p))
            .collect();
        assert!(with[5..].iter().all(|&b| b), "fec packets: {with:?}");
        assert!(without.iter().all(|&b| !b), "non-fec packets: {without:?}");
    }

    #[test]
    fn single_loss_is_recovered_from_fec() {
        let pk = packets(20, true);
        // Packet 10 never arrives.
        let seqs: Vec<_> = (0..20)
            .filter(|&i| i != 10)
            .map(|i| (i as u16, i))
            .collect();
        let (origins, stats, pcm) = run(&seqs, &pk);
        assert_eq!(stats.reorder.lost, 1);
        assert_eq!(stats.recovered, 1);
        assert_eq!(stats.concealed, 0);
        assert_eq!(
            origins.iter().filter(|o| **o == Origin::Recovered).count(),
            1
        );
        // The timeline has no hole: 20 frames of audio for 20 packets sent.
        assert_eq!(pcm.len(), 20 * FRAME);
    }

    #[test]
    fn loss_without_fec_is_concealed() {
        let pk = packets(20, false);
        let seqs: Vec<_> = (0..20)
            .filter(|&i| i != 10)
            .map(|i| (i as u16, i))
            .collect();
        let (_, stats, pcm) = run(&seqs, &pk);
        assert_eq!(stats.recovered, 0);
        assert_eq!(stats.concealed, 1);
        assert_eq!(pcm.len(), 20 * FRAME);
    }

    #[test]
    fn burst_conceals_all_but_the_last_which_fec_recovers() {
        let pk = packets(30, true);
        let seqs: Vec<_> = (0..30)
            .filter(|&i| !(10..13).contains(&i))
            .map(|i| (i as u16, i))
            .collect();
        let (_, stats, pcm) = run(&seqs, &pk);
        assert_eq!(stats.reorder.lost, 3);
        assert_eq!((stats.concealed, stats.recovered), (2, 1));
        assert_eq!(pcm.len(), 30 * FRAME);
    }

    #[test]
    fn long_gap_conceals_at_most_max_conceal() {
        let pk = packets(40, true);
        let seqs: Vec<_> = (0..40)
            .filter(|&i| !(10..30).contains(&i))
            .map(|i| (i as u16, i))
            .collect();
        let (_, stats, _) = run(&seqs, &pk);
        assert_eq!(stats.reorder.lost, 20);
        assert_eq!(stats.concealed + stats.recovered, 5);
    }

    #[test]
    fn reordered_packets_are_not_losses() {
        let pk = packets(10, true);
        let order = [0, 1, 3, 2, 4, 5, 7, 6, 8, 9];
        let seqs: Vec<_> = order.iter().map(|&i| (i as u16, i)).collect();
        let (origins, stats, _) = run(&seqs, &pk);
        assert_eq!(origins, vec![Origin::Decoded; 10]);
        assert_eq!(stats.reorder.lost, 0);
    }

    #[test]
    fn garbage_payload_is_concealed_not_fatal() {
        let mut pk = packets(5, true);
        pk[2] = vec![0xff, 0xff, 0xff];
        pk[3] = vec![];
        let seqs: Vec<_> = (0..5).map(|i| (i as u16, i)).collect();
        let (_, stats, _) = run(&seqs, &pk);
        assert_eq!(stats.corrupt, 2);
        assert_eq!(stats.decoded, 3);
    }

    #[test]
    fn fec_detector_handles_odd_packets() {
        assert!(!packet_has_fec(&[]));
        assert!(!packet_has_fec(&[0x00]));
        assert!(!packet_has_fec(&[0xf8, 0xff])); // CELT-only config 31
        assert!(!packet_has_fec(&[0x0b, 0x01])); // code 3
        assert!(!packet_has_fec(&[0x0a])); // code 2 without a length
    }

    #[test]
    fn encoder_refuses_wrong_frame_and_rate() {
        let mut enc = encoder(false);
        assert!(matches!(
            enc.encode(&[0; 100]),
            Err(CodecError::FrameLength { .. })
        ));
        assert!(matches!(
            DownlinkEncoder::new(EncoderSettings {
                pcm_rate: 22_050,
                complexity: 5,
                bitrate: 24_000,
                fec: false,
                expected_loss_percent: 0
            }),
            Err(CodecError::Rate(22_050))
        ));
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn fec_probe_never_panics(p in proptest::collection::vec(any::<u8>(), 0..64)) {
                let _ = packet_has_fec(&p);
            }

            /// Garbage payloads from a caller: decode errors are counted, never a panic, and
            /// every frame that comes out has the frame's size.
            #[test]
            fn the_uplink_survives_any_payload(
                packets in proptest::collection::vec((any::<u16>(), proptest::collection::vec(any::<u8>(), 0..200)), 1..40),
            ) {
                let mut d: UplinkDecoder<Vec<u8>> = UplinkDecoder::new(UplinkSettings {
                    pcm_rate: super::RATE,
                    reorder_depth: 3,
                    reorder_wait: Duration::from_millis(60),
                    max_conceal: 5,
                })
                .unwrap();
                let t0 = Instant::now();
                let mut out = |pcm: &[i16], _o: Origin| assert!(pcm.len() <= MAX_PACKET_SAMPLES);
                for (i, (seq, p)) in packets.into_iter().enumerate() {
                    d.push(seq, p, t0 + Duration::from_millis(20 * i as u64), &mut out);
                }
                d.release(t0 + Duration::from_secs(10), &mut out);
            }
        }
    }
}
