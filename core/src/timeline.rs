//! Sequence numbers, timestamps and the marker bit of the RTP packets we send (RFC 3550 §5.1,
//! RFC 7587 §4.1).
//!
//! Silence between utterances is not sent: when the downlink queue runs dry the talkspurt ends,
//! and the first packet of the next talkspurt has the marker bit set and a timestamp advanced by
//! the wall-clock time that passed, rounded to whole frames. The sequence number stays contiguous
//! so the receiver sees no loss. This is what RFC 3551 §4.1 prescribes for senders that suppress
//! silence, what browsers' jitter buffers expect (it is how Opus DTX looks), and it costs neither
//! CPU nor bandwidth on an idle call. Inside a talkspurt the timestamp advances by exactly one
//! frame per packet, plus any slots the pacer skipped after a stall.

use std::time::{Duration, Instant};

/// Header fields for one outgoing packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// RTP sequence number.
    pub seq: u16,
    /// RTP timestamp in clock-rate units.
    pub timestamp: u32,
    /// Set on the first packet of a talkspurt.
    pub marker: bool,
}

/// The outgoing stream's numbering state.
#[derive(Debug, Clone)]
pub struct Timeline {
    /// Timestamp units per frame (960 for 20 ms at 48 kHz).
    frame_units: u32,
    /// Length of one frame.
    frame: Duration,
    /// Sequence number of the next packet.
    next_seq: u16,
    /// Timestamp of the next packet, before any gap is added.
    next_ts: u32,
    /// When the last packet went out; `None` before the first.
    last_sent: Option<Instant>,
    /// The next packet starts a talkspurt.
    talkspurt_start: bool,
    /// The talkspurt ended with the queue running dry: add the wall-clock gap to the timestamp.
    measure_gap: bool,
}

impl Timeline {
    /// A timeline starting at `seq` and `timestamp` (random per RFC 3550 §5.1).
    pub fn new(frame: Duration, clock_rate: u32, seq: u16, timestamp: u32) -> Self {
        let frame_units = (u64::from(clock_rate) * frame.as_micros() as u64 / 1_000_000) as u32;
        Timeline {
            frame_units,
            frame,
            next_seq: seq,
            next_ts: timestamp,
            last_sent: None,
            talkspurt_start: true,
            measure_gap: false,
        }
    }

    /// Marks the end of a talkspurt: the next packet gets the marker bit and the gap.
    pub fn end_talkspurt(&mut self) {
        self.talkspurt_start = true;
        self.measure_gap = true;
    }

    /// Accounts for `n` slots that the pacer skipped: the timestamp jumps over them and the
    /// next packet carries the marker bit, as after any gap.
    pub fn skip(&mut self, n: u64) {
        if n > 0 {
            self.next_ts = self
                .next_ts
                .wrapping_add((n as u32).wrapping_mul(self.frame_units));
            self.talkspurt_start = true;
        }
    }

    /// Stamps a packet sent at `now`.
    pub fn stamp(&mut self, now: Instant) -> Stamp {
        let marker = self.talkspurt_start;
        if self.measure_gap
            && let Some(last) = self.last_sent
        {
            // The packet after `last` would have had `next_ts`; add the frames of silence that
            // passed beyond that slot, to the nearest frame (wake-ups jitter by a millisecond).
            let idle = now.saturating_duration_since(last + self.frame);
            let frames =
                ((idle.as_nanos() + self.frame.as_nanos() / 2) / self.frame.as_nanos()) as u32;
            self.next_ts = self
                .next_ts
                .wrapping_add(frames.wrapping_mul(self.frame_units));
        }
        let stamp = Stamp {
            seq: self.next_seq,
            timestamp: self.next_ts,
            marker,
        };
        self.next_seq = self.next_seq.wrapping_add(1);
        self.next_ts = self.next_ts.wrapping_add(self.frame_units);
        self.last_sent = Some(now);
        self.talkspurt_start = false;
        self.measure_gap = false;
        stamp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: Duration = Duration::from_millis(20);

    #[test]
    fn talkspurt_is_contiguous_and_first_packet_is_marked() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(F, 48_000, 100, 5000);
        let a = tl.stamp(t0);
        let b = tl.stamp(t0 + F);
        let c = tl.stamp(t0 + 2 * F);
        assert_eq!(
            a,
            Stamp {
                seq: 100,
                timestamp: 5000,
                marker: true
            }
        );
        assert_eq!(
            b,
            Stamp {
                seq: 101,
                timestamp: 5960,
                marker: false
            }
        );
        assert_eq!(
            c,
            Stamp {
                seq: 102,
                timestamp: 6920,
                marker: false
            }
        );
    }

    #[test]
    fn silence_advances_timestamp_by_wall_clock_not_sequence() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(F, 48_000, 0, 0);
        tl.stamp(t0);
        tl.stamp(t0 + F);
        tl.end_talkspurt();
        // 1 s after the last packet: the slot right after it was at t0+40ms, so 960 ms (48
        // frames) of silence passed beyond it.
        let s = tl.stamp(t0 + F + Duration::from_millis(1000));
        assert_eq!(s.seq, 2);
        assert!(s.marker);
        assert_eq!(s.timestamp, 960 * 2 + 960 * 49);
        let next = tl.stamp(t0 + F + Duration::from_millis(1020));
        assert_eq!(next.timestamp, s.timestamp + 960);
        assert!(!next.marker);
    }

    #[test]
    fn restart_right_away_has_no_gap() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(F, 48_000, 0, 0);
        tl.stamp(t0);
        tl.end_talkspurt();
        let s = tl.stamp(t0 + F);
        assert_eq!(s.timestamp, 960);
        assert!(s.marker);
    }

    #[test]
    fn skipped_slots_jump_the_timestamp() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(F, 48_000, 0, 0);
        tl.stamp(t0);
        tl.skip(47);
        let s = tl.stamp(t0 + Duration::from_millis(960));
        assert_eq!(s.timestamp, 960 + 47 * 960);
        assert!(s.marker);
        assert_eq!(s.seq, 1);
    }

    #[test]
    fn numbers_wrap() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(F, 48_000, u16::MAX, u32::MAX - 100);
        let a = tl.stamp(t0);
        let b = tl.stamp(t0 + F);
        assert_eq!((a.seq, b.seq), (u16::MAX, 0));
        assert_eq!(b.timestamp, (u32::MAX - 100).wrapping_add(960));
    }

    #[test]
    fn other_frame_lengths() {
        let tl = Timeline::new(Duration::from_millis(10), 48_000, 0, 0);
        assert_eq!(tl.frame_units, 480);
        let tl = Timeline::new(Duration::from_millis(20), 8_000, 0, 0);
        assert_eq!(tl.frame_units, 160);
    }
}
