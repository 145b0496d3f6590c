//! The uplink's small reorder buffer and its loss decisions.
//!
//! RTP arrives in arrival order (the WebRTC stack does not reorder). Packets are released in
//! sequence order; a packet that arrives early waits behind a gap for at most `depth` packets or
//! `max_wait`, whichever comes first, so a reordered packet still finds its place while a lost
//! one costs at most a few tens of milliseconds of extra delay. When a gap is given up, the
//! packet after it is released as [`Release::AfterGap`]; the decoder then recovers the last
//! missing frame from that packet's in-band FEC (RFC 7587 §3.2; Opus carries the previous frame
//! at lower quality) and conceals the ones before it. Late packets (their slot was already given
//! up) and duplicates are dropped and counted.
//!
//! Sequence numbers are unwrapped to 64 bits (RFC 3550 appendix A.1) so wrap-around is a
//! non-event.

use std::time::{Duration, Instant};

/// What the decoder should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Release<P> {
    /// The next packet in order: decode it.
    InOrder(P),
    /// `lost` packets were given up right before this one.
    AfterGap {
        /// How many consecutive packets are missing (at least 1).
        lost: u64,
        /// The packet that follows the gap.
        next: P,
    },
}

/// Counters of what the buffer saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReorderStats {
    /// Packets accepted into the buffer.
    pub received: u64,
    /// Packets that never arrived in time (given up).
    pub lost: u64,
    /// Packets that arrived after their slot was given up.
    pub late: u64,
    /// Packets already received.
    pub duplicate: u64,
}

struct Slot<P> {
    ext_seq: u64,
    arrived: Instant,
    packet: P,
}

/// A fixed-capacity reorder buffer keyed by RTP sequence number.
pub struct Reorder<P> {
    /// Most packets held behind a gap before it is given up.
    depth: usize,
    /// Longest a packet waits behind a gap.
    max_wait: Duration,
    /// Ring of held packets, indexed by extended sequence number modulo its length.
    slots: Vec<Option<Slot<P>>>,
    /// How many slots are occupied.
    held: usize,
    /// Extended sequence number of the next packet to release; `None` before the first.
    expected: Option<u64>,
    /// Highest extended sequence number seen, for unwrapping.
    highest: Option<u64>,
    /// A packet too far ahead for the ring, waiting for the gaps before it to be given up.
    overflow: Option<Slot<P>>,
    /// Counters.
    stats: ReorderStats,
}

/// Packets further ahead than this are a stream restart, not a gap.
const RESYNC_DISTANCE: u64 = 3000;

impl<P> Reorder<P> {
    /// A buffer that holds at most `depth` packets behind a gap, for at most `max_wait`.
    pub fn new(depth: usize, max_wait: Duration) -> Self {
        let depth = depth.max(1);
        // The ring must hold the gap plus everything waiting behind it.
        let capacity = (depth * 2 + 2).next_power_of_two();
        Reorder {
            depth,
            max_wait,
            slots: (0..capacity).map(|_| None).collect(),
            held: 0,
            expected: None,
            highest: None,
            overflow: None,
            stats: ReorderStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> ReorderStats {
        self.stats
    }

    /// Takes a packet with RTP sequence number `seq` that arrived at `now`.
    /// Call [`pop`](Self::pop) until it returns `None` afterwards.
    pub fn push(&mut self, seq: u16, packet: P, now: Instant) {
        let ext = self.unwrap(seq);
        let expected = *self.expected.get_or_insert(ext);
        if expected.abs_diff(ext) > RESYNC_DISTANCE {
            // The sender restarted its numbering; follow it rather than count a huge gap.
            self.resync(ext);
        } else if ext < expected {
            self.stats.late += 1;
            return;
        }
        let slot = Slot {
            ext_seq: ext,
            arrived: now,
            packet,
        };
        if ext >= self.expected.unwrap_or(ext) + self.slots.len() as u64 {
            // Beyond the ring: park it; `pop` gives up the gaps before it until it fits.
            if self.overflow.is_some() {
                // Only reachable if the caller does not pop after each push.
                self.stats.late += 1;
                return;
            }
            self.overflow = Some(slot);
            self.stats.received += 1;
            return;
        }
        self.insert(slot);
    }

    /// Releases the next packet that is ready at `now`, if any.
    pub fn pop(&mut self, now: Instant) -> Option<Release<P>> {
        let expected = self.expected?;
        let released = if let Some(slot) = self.take(expected) {
            self.expected = Some(expected + 1);
            Some(Release::InOrder(slot.packet))
        } else if self.held > 0
            && let Some((first, arrived)) = self.first_held()
        {
            // A gap at `expected`: wait unless too many are held, the oldest waited too long,
            // or a parked packet needs the room.
            let give_up = self.overflow.is_some()
                || self.held >= self.depth
                || now.saturating_duration_since(arrived) >= self.max_wait;
            if !give_up {
                return None;
            }
            let slot = self.take(first)?;
            Some(self.after_gap(expected, first, slot.packet))
        } else if let Some(slot) = self.overflow.take() {
            Some(self.after_gap(expected, slot.ext_seq, slot.packet))
        } else {
            None
        };
        // Move the parked packet into the ring once it fits.
        if let Some(ov) = &self.overflow
            && ov.ext_seq < self.expected.unwrap_or(0) + self.slots.len() as u64
            && let Some(slot) = self.overflow.take()
        {
            self.insert(slot);
        }
        released
    }

    /// When a held packet's wait runs out, if one is waiting behind a gap.
    pub fn next_deadline(&self) -> Option<Instant> {
        let expected = self.expected?;
        if self.held == 0 || self.peek(expected) {
            return None;
        }
        self.first_held()
            .map(|(_, arrived)| arrived + self.max_wait)
    }

    fn after_gap(&mut self, expected: u64, seq: u64, packet: P) -> Release<P> {
        let lost = seq - expected;
        self.stats.lost += lost;
        self.expected = Some(seq + 1);
        Release::AfterGap { lost, next: packet }
    }

    fn insert(&mut self, slot: Slot<P>) {
        let idx = (slot.ext_seq % self.slots.len() as u64) as usize;
        if matches!(&self.slots[idx], Some(s) if s.ext_seq == slot.ext_seq) {
            self.stats.duplicate += 1;
            return;
        }
        debug_assert!(self.slots[idx].is_none(), "ring slot reused while occupied");
        if self.slots[idx].is_none() {
            self.held += 1;
        }
        self.slots[idx] = Some(slot);
        self.stats.received += 1;
    }

    fn resync(&mut self, ext: u64) {
        for s in self.slots.iter_mut() {
            *s = None;
        }
        self.held = 0;
        self.overflow = None;
        self.expected = Some(ext);
        self.highest = Some(ext);
    }

    fn take(&mut self, ext: u64) -> Option<Slot<P>> {
        let cap = self.slots.len() as u64;
        let idx = (ext % cap) as usize;
        match &self.slots[idx] {
            Some(s) if s.ext_seq == ext => {
                self.held -= 1;
                self.slots[idx].take()
            }
            _ => None,
        }
    }

    fn peek(&self, ext: u64) -> bool {
        let cap = self.slots.len() as u64;
        matches!(&self.slots[(ext % cap) as usize], Some(s) if s.ext_seq == ext)
    }

    /// The lowest held sequence number and its arrival time.
    fn first_held(&self) -> Option<(u64, Instant)> {
        self.slots
            .iter()
            .flatten()
            .map(|s| (s.ext_seq, s.arrived))
            .min_by_key(|(seq, _)| *seq)
    }

    /// Unwraps a 16-bit sequence number next to the highest seen (RFC 3550 A.1).
    fn unwrap(&mut self, seq: u16) -> u64 {
        let Some(highest) = self.highest else {
            // Start well above zero so a slightly older first packet does not underflow: more
            // than one wrap above, so a first packet numbered just after a wrap (0, 1, ...)
            // followed by one from before it (65535) unwraps to one less, not to a jump of
            // 65535 that would look like a restart (found by the property test below).
            let ext = (1u64 << 32) + u64::from(seq);
            self.highest = Some(ext);
            return ext;
        };
        let base = highest & !0xffff;
        let candidates = [
            base.wrapping_sub(0x1_0000) | u64::from(seq),
            base | u64::from(seq),
            (base + 0x1_0000) | u64::from(seq),
        ];
        let ext = candidates
            .into_iter()
            .filter(|c| *c >= 0x1_0000)
            .min_by_key(|c| c.abs_diff(highest))
            .unwrap_or(base | u64::from(seq));
        if ext > highest {
            self.highest = Some(ext);
        }
        ext
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_millis(60);

    fn drain(r: &mut Reorder<u16>, now: Instant) -> Vec<Release<u16>> {
        std::iter::from_fn(|| r.pop(now)).collect()
    }

    fn play(r: &mut Reorder<u16>, seqs: &[u16], now: Instant) -> Vec<Release<u16>> {
        let mut out = vec![];
        for &s in seqs {
            r.push(s, s, now);
            out.extend(drain(r, now));
        }
        out
    }

    use Release::*;

    #[test]
    fn in_order_passes_straight_through() {
        let t = Instant::now();
        let mut r = Reorder::new(3, WAIT);
        let got = play(&mut r, &[10, 11, 12], t);
        assert_eq!(got, vec![InOrder(10), InOrder(11), InOrder(12)]);
        assert_eq!(
            r.stats(),
            ReorderStats {
                received: 3,
                ..Default::default()
            }
        );
    }

    #[test]
    fn swapped_pair_is_reordered() {
        let t = Instant::now();
        let mut r = Reorder::new(3, WAIT);
        let got = play(&mut r, &[1, 3, 2, 4], t);
        assert_eq!(got, vec![InOrder(1), InOrder(2), InOrder(3), InOrder(4)]);
        assert_eq!(r.stats().lost, 0);
    }

    #[test]
    fn single_loss_is_given_up_after_depth_packets() {
        let t = Instant::now();
        let mut r = Reorder::new(3, WAIT);
        // 2 is lost: 3 and 4 wait; 5 makes three held -> give up 2, release 3 after the gap.
        assert_eq!(play(&mut r, &[1, 3, 4], t), vec![InOrder(1)]);
        let got = play(&mut r, &[5], t);
        assert_eq!(
            got,
            vec![AfterGap { lost: 1, next: 3 }, InOrder(4), InOrder(5)]
        );
        assert_eq!(r.stats().lost, 1);
        // The lost packet turning up now is late.
        assert_eq!(play(&mut r, &[2], t), vec![]);
        assert_eq!(r.stats().late, 1);
    }

    #[test]
    fn loss_is_given_up_after_max_wait() {
        let t = Instant::now();
        let mut r = Reorder::new(10, WAIT);
        assert_eq!(play(&mut r, &[1, 3], t), vec![InOrder(1)]);
        assert_eq!(r.next_deadline(), Some(t + WAIT));
        assert_eq!(drain(&mut r, t + WAIT - Duration::from_millis(1)), vec![]);
        assert_eq!(drain(&mut r, t + WAIT), vec![AfterGap { lost: 1, next: 3 }]);
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn burst_loss_reports_its_length() {
        let t = Instant::now();
        let mut r = Reorder::new(2, WAIT);
        let got = play(&mut r, &[1, 5, 6], t);
        assert_eq!(
            got,
            vec![InOrder(1), AfterGap { lost: 3, next: 5 }, InOrder(6)]
        );
        assert_eq!(r.stats().lost, 3);
    }

    #[test]
    fn duplicates_are_dropped() {
        let t = Instant::now();
        let mut r = Reorder::new(3, WAIT);
        let got = play(&mut r, &[1, 3, 3, 2, 2], t);
        assert_eq!(got, vec![InOrder(1), InOrder(2), InOrder(3)]);
        // The second 3 is held-duplicate, the second 2 is behind `expected`: late.
        assert_eq!(r.stats().duplicate, 1);
        assert_eq!(r.stats().late, 1);
    }

    #[test]
    fn wraps_around_u16() {
        let t = Instant::now();
        let mut r = Reorder::new(3, WAIT);
        let got = play(&mut r, &[65534, 0, 65535, 1], t);
        assert_eq!(
            got,
            vec![InOrder(65534), InOrder(65535), InOrder(0), InOrder(1)]
        );
        assert_eq!(r.stats().lost, 0);
    }

    #[test]
    fn long_run_across_many_wraps() {
        let t = Instant::now();
        let mut r = Reorder::new(3, WAIT);
        let mut seq: u16 = 60_000;
        for _ in 0..200_000 {
            r.push(seq, seq, t);
            assert_eq!(drain(&mut r, t), vec![InOrder(seq)]);
            seq = seq.wrapping_add(1);
        }
        assert_eq!(r.stats().received, 200_000);
    }

    #[test]
    fn huge_jump_resyncs_instead_of_counting_loss() {
        let t = Instant::now();
        let mut r = Reorder::new(3, WAIT);
        play(&mut r, &[100, 101], t);
        let got = play(&mut r, &[30_000, 30_001], t);
        assert_eq!(got, vec![InOrder(30_000), InOrder(30_001)]);
        assert_eq!(r.stats().lost, 0);
    }

    #[test]
    fn gap_wider_than_the_ring_counts_all_lost() {
        let t = Instant::now();
        let mut r = Reorder::new(3, WAIT);
        play(&mut r, &[1], t);
        let got = play(&mut r, &[200, 201], t);
        assert_eq!(
            got,
            vec![
                AfterGap {
                    lost: 198,
                    next: 200
                },
                InOrder(201)
            ]
        );
        assert_eq!(r.stats().lost, 198);
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever order, duplicates, gaps, restarts and timing the network produces: no
            /// panic, packets leave in order and at most once, and the buffer holds at most its
            /// ring.
            #[test]
            fn releases_in_order_at_most_once(
                start in any::<u16>(),
                steps in proptest::collection::vec((-8i32..40, 0u64..100), 1..300),
                depth in 1usize..8,
            ) {
                let t0 = Instant::now();
                let mut r: Reorder<u64> = Reorder::new(depth, Duration::from_millis(60));
                let mut now = t0;
                let mut ext = 100_000u64 + u64::from(start);
                let mut last: Option<u64> = None;
                let mut released = 0u64;
                let take = |rel: Release<u64>, last: &mut Option<u64>| {
                    let p = match rel {
                        Release::InOrder(p) => p,
                        Release::AfterGap { lost, next } => {
                            assert!(lost >= 1);
                            next
                        }
                    };
                    if let Some(l) = *last {
                        // A restart (far jump) may go backwards; otherwise strictly forward.
                        assert!(p > l || l.abs_diff(p) > RESYNC_DISTANCE, "{p} after {l}");
                    }
                    *last = Some(p);
                };
                for (delta, ms) in steps {
                    ext = ext.saturating_add_signed(i64::from(delta));
                    now += Duration::from_millis(ms);
                    r.push(ext as u16, ext, now);
                    while let Some(rel) = r.pop(now) {
                        take(rel, &mut last);
                        released += 1;
                    }
                    prop_assert!(r.held <= r.slots.len());
                }
                let later = now + Duration::from_secs(10);
                while let Some(rel) = r.pop(later) {
                    take(rel, &mut last);
                    released += 1;
                }
                prop_assert_eq!(r.held, 0);
                prop_assert!(released <= r.stats().received);
            }
        }
    }
}
