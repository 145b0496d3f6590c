//! The downlink's 20 ms clock, as arithmetic.
//!
//! Slot `n` of a talkspurt is due at `anchor + n × frame`: deadlines are computed from the anchor,
//! never by adding 20 ms to the time the last wake-up happened, so timer lateness does not
//! accumulate and the clock does not drift over minutes. After a stall (a busy worker, a
//! suspended VM) the pacer sends the slots it missed, but at most `max_catch_up` extra at once;
//! beyond that it slips the anchor forward and the missed slots are skipped, so the browser gets
//! a short catch-up instead of a burst of seconds of audio. The caller reads the skipped count
//! to advance the RTP timestamp over the gap ([`crate::timeline`]).
//!
//! The pacer only runs while there is audio to send: [`Pacer::stop`] when the queue runs dry,
//! [`Pacer::start`] when audio arrives again. An idle call costs no wake-ups.

use std::time::{Duration, Instant};

/// What is due when the pacer is woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Due {
    /// Frames to send now (0 when woken early).
    pub send: u32,
    /// Slots given up because they were more than `max_catch_up` behind.
    pub skipped: u64,
}

/// A self-correcting periodic schedule.
#[derive(Debug, Clone)]
pub struct Pacer {
    /// Length of one slot.
    frame: Duration,
    /// Most extra slots sent at once after a stall.
    max_catch_up: u32,
    /// `Some` while running: when slot 0 was due, and how many slots have been consumed.
    running: Option<(Instant, u64)>,
}

impl Pacer {
    /// A stopped pacer with `frame`-long slots.
    pub fn new(frame: Duration, max_catch_up: u32) -> Self {
        assert!(!frame.is_zero(), "a pacer needs a non-zero frame");
        Pacer {
            frame,
            max_catch_up,
            running: None,
        }
    }

    /// Starts a talkspurt: slot 0 is due at `now`.
    pub fn start(&mut self, now: Instant) {
        self.running = Some((now, 0));
    }

    /// Stops until the next [`start`](Self::start).
    pub fn stop(&mut self) {
        self.running = None;
    }

    /// Whether a talkspurt is running.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// When the next slot is due, while running.
    pub fn next_due(&self) -> Option<Instant> {
        self.running
            .map(|(anchor, consumed)| anchor + self.frame_times(consumed))
    }

    /// Consumes the slots due at `now`.
    pub fn poll(&mut self, now: Instant) -> Due {
        let frame = self.frame;
        let max_catch_up = self.max_catch_up;
        let Some((anchor, consumed)) = self.running.as_mut() else {
            return Due::default();
        };
        let elapsed = now.saturating_duration_since(*anchor);
        // Slots 0..=k are due, where k = floor(elapsed / frame).
        let due_total = (elapsed.as_nanos() / frame.as_nanos()) as u64 + 1;
        if due_total <= *consumed {
            return Due::default();
        }
        let behind = due_total - *consumed;
        let limit = u64::from(max_catch_up) + 1;
        if behind <= limit {
            *consumed = due_total;
            return Due {
                send: behind as u32,
                skipped: 0,
            };
        }
        // Too far behind: skip the oldest slots by moving the anchor, keep the phase.
        let skipped = behind - limit;
        *anchor += frame_times(frame, skipped);
        *consumed = due_total - skipped;
        Due {
            send: limit as u32,
            skipped,
        }
    }

    fn frame_times(&self, n: u64) -> Duration {
        frame_times(self.frame, n)
    }
}

fn frame_times(frame: Duration, n: u64) -> Duration {
    Duration::from_nanos((frame.as_nanos() as u64).saturating_mul(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: Duration = Duration::from_millis(20);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn stopped_pacer_sends_nothing() {
        let mut p = Pacer::new(F, 2);
        assert_eq!(p.next_due(), None);
        assert_eq!(p.poll(Instant::now()), Due::default());
    }

    #[test]
    fn first_slot_is_due_at_start_then_every_frame() {
        let t0 = Instant::now();
        let mut p = Pacer::new(F, 2);
        p.start(t0);
        assert_eq!(p.next_due(), Some(t0));
        assert_eq!(p.poll(t0).send, 1);
        assert_eq!(p.next_due(), Some(t0 + ms(20)));
        // Woken early: nothing.
        assert_eq!(p.poll(t0 + ms(19)).send, 0);
        assert_eq!(p.poll(t0 + ms(20)).send, 1);
        assert_eq!(p.next_due(), Some(t0 + ms(40)));
    }

    #[test]
    fn late_wakeups_do_not_accumulate_drift() {
        // Every wake-up is 3 ms late, for 10 minutes of frames. Deadlines stay on the 20 ms grid
        // and exactly one frame goes out per wake-up.
        let t0 = Instant::now();
        let mut p = Pacer::new(F, 2);
        p.start(t0);
        let frames = 10 * 60 * 50;
        for i in 0..frames {
            let due = p.next_due().unwrap();
            assert_eq!(due, t0 + ms(20 * i), "slot {i} drifted");
            assert_eq!(p.poll(due + ms(3)).send, 1);
        }
        assert_eq!(p.next_due(), Some(t0 + ms(20 * frames)));
    }

    #[test]
    fn short_stall_is_caught_up_in_a_small_burst() {
        let t0 = Instant::now();
        let mut p = Pacer::new(F, 2);
        p.start(t0);
        assert_eq!(p.poll(t0).send, 1);
        // Woken 45 ms late for slot 1 (due at 20): slots 1, 2, 3 are due -> 3 frames, no skip.
        assert_eq!(
            p.poll(t0 + ms(65)),
            Due {
                send: 3,
                skipped: 0
            }
        );
        assert_eq!(p.next_due(), Some(t0 + ms(80)));
    }

    #[test]
    fn long_stall_skips_instead_of_bursting() {
        let t0 = Instant::now();
        let mut p = Pacer::new(F, 2);
        p.start(t0);
        assert_eq!(p.poll(t0).send, 1);
        // A 1 s stall: 50 slots are due (1..=50); send 3, skip 47, keep the 20 ms phase.
        let due = p.poll(t0 + ms(1000));
        assert_eq!(
            due,
            Due {
                send: 3,
                skipped: 47
            }
        );
        assert_eq!(p.next_due(), Some(t0 + ms(1020)));
        assert_eq!(p.poll(t0 + ms(1020)).send, 1);
    }

    #[test]
    fn restart_rephases_to_now() {
        let t0 = Instant::now();
        let mut p = Pacer::new(F, 2);
        p.start(t0);
        p.poll(t0);
        p.stop();
        assert!(!p.is_running());
        let t1 = t0 + ms(537);
        p.start(t1);
        assert_eq!(p.next_due(), Some(t1));
        assert_eq!(p.poll(t1).send, 1);
    }
}
