//! DTMF from the browser: RFC 4733 `telephone-event` payloads, one event per key press.
//!
//! `RTCDTMFSender.insertDTMF` sends, per key, a run of packets that share one RTP timestamp (the
//! event's start), with a growing duration; the last one has the E (end) bit and is sent three
//! times (RFC 4733 §2.5.1.4). [`DtmfReceiver`] reports each key press exactly once, when its first
//! end packet arrives; a press whose end packets were all lost is reported (with `end: false`)
//! when the next press begins. Malformed packets are counted and dropped.
//!
//! [`PressRate`] bounds how many presses a call reports per second: the packets are the
//! caller's to craft, and each press is an event for the dialog app (the demo agent starts a
//! model request on each).

use std::time::Instant;

/// A key press.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dtmf {
    /// `0`-`9`, `*`, `#`, `A`-`D`.
    pub digit: char,
    /// The end of the press was seen (false: reported because the next press began).
    pub end: bool,
    /// Duration in timestamp units of the 8 kHz telephone-event clock.
    pub duration: u16,
}

/// Per-call DTMF state.
#[derive(Debug, Default)]
pub struct DtmfReceiver {
    /// The press in progress: its RTP timestamp, digit, last duration, and whether reported.
    current: Option<(u32, char, u16, bool)>,
    /// Malformed packets dropped.
    malformed: u64,
}

/// At most `per_second` key presses per second on average and `per_second` at once, as a token
/// bucket; `0` lets every press through. A person presses a few keys a second at most, and a
/// sender that keeps to RFC 4733's shortest tones and gaps (40 ms each) about 12.
#[derive(Debug)]
pub struct PressRate {
    per_second: f64,
    tokens: f64,
    at: Option<Instant>,
}

impl PressRate {
    /// The bucket, full.
    pub fn new(per_second: u32) -> Self {
        PressRate {
            per_second: f64::from(per_second),
            tokens: f64::from(per_second),
            at: None,
        }
    }

    /// Whether a press at `now` may be reported (it takes a token if so).
    pub fn allow(&mut self, now: Instant) -> bool {
        if self.per_second <= 0.0 {
            return true;
        }
        if let Some(at) = self.at {
            let refill = now.saturating_duration_since(at).as_secs_f64() * self.per_second;
            self.tokens = (self.tokens + refill).min(self.per_second);
        }
        self.at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The digit of an RFC 4733 event code (§3.2), if it is one.
fn digit(code: u8) -> Option<char> {
    match code {
        0..=9 => Some((b'0' + code) as char),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some((b'A' + code - 12) as char),
        _ => None,
    }
}

impl DtmfReceiver {
    /// A receiver with no press in progress.
    pub fn new() -> Self {
        Self::default()
    }

    /// Malformed packets dropped so far.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// Takes one telephone-event packet: its RTP timestamp and payload. Returns the presses to
    /// report (at most two: an unfinished previous one, and this one if it just ended).
    pub fn push(&mut self, timestamp: u32, payload: &[u8]) -> Vec<Dtmf> {
        let mut out = Vec::new();
        // event (8) | E (1) R (1) volume (6) | duration (16)
        let Some(&[code, flags, d0, d1]) = payload
            .get(..4)
            .map(|p| <&[u8; 4]>::try_from(p).expect("four bytes"))
        else {
            self.malformed += 1;
            return out;
        };
        let Some(digit) = digit(code) else {
            // Not a digit (flash, tones): not ours to report.
            self.malformed += u64::from(code > 16);
            return out;
        };
        let end = flags & 0x80 != 0;
        let duration = u16::from_be_bytes([d0, d1]);
        match self.current {
            Some((ts, _, _, reported)) if ts == timestamp => {
                if end && !reported {
                    out.push(Dtmf {
                        digit,
                        end: true,
                        duration,
                    });
                }
                self.current = Some((ts, digit, duration, reported || end));
            }
            previous => {
                if let Some((_, d, dur, false)) = previous {
                    out.push(Dtmf {
                        digit: d,
                        end: false,
                        duration: dur,
                    });
                }
                self.current = Some((timestamp, digit, duration, end));
                if end {
                    out.push(Dtmf {
                        digit,
                        end: true,
                        duration,
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn press_rate_lets_a_burst_through_then_refills() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + std::time::Duration::from_millis(n);
        let mut r = PressRate::new(2);
        assert!(r.allow(ms(0)));
        assert!(r.allow(ms(10)));
        assert!(!r.allow(ms(20)), "the burst is spent");
        assert!(!r.allow(ms(400)), "0.78 of a token");
        assert!(r.allow(ms(520)), "a token refilled in half a second");
        assert!(!r.allow(ms(530)));
        // A long pause refills no more than the burst.
        assert!(r.allow(ms(60_000)));
        assert!(r.allow(ms(60_000)));
        assert!(!r.allow(ms(60_000)));
        let mut off = PressRate::new(0);
        assert!((0..1000).all(|_| off.allow(t0)));
    }

    fn pkt(code: u8, end: bool, volume: u8, duration: u16) -> Vec<u8> {
        let d = duration.to_be_bytes();
        vec![
            code,
            (if end { 0x80 } else { 0 }) | (volume & 0x3f),
            d[0],
            d[1],
        ]
    }

    /// The packets insertDTMF sends for one key: three progress packets, three end packets.
    fn press(r: &mut DtmfReceiver, ts: u32, code: u8) -> Vec<Dtmf> {
        let mut out = vec![];
        for (i, end) in [false, false, false, true, true, true]
            .into_iter()
            .enumerate()
        {
            out.extend(r.push(ts, &pkt(code, end, 10, 160 * (i as u16 + 1))));
        }
        out
    }

    #[test]
    fn every_digit_once_per_press() {
        let mut r = DtmfReceiver::new();
        let mut got = String::new();
        for (i, code) in (0u8..16).enumerate() {
            let events = press(&mut r, 1000 + 800 * i as u32, code);
            assert_eq!(events.len(), 1, "code {code}: {events:?}");
            assert!(events[0].end);
            got.push(events[0].digit);
        }
        assert_eq!(got, "0123456789*#ABCD");
    }

    #[test]
    fn repeated_end_packets_are_reported_once_with_the_final_duration() {
        let mut r = DtmfReceiver::new();
        let e = press(&mut r, 5, 1);
        assert_eq!(
            e,
            vec![Dtmf {
                digit: '1',
                end: true,
                duration: 640
            }]
        );
    }

    #[test]
    fn a_press_whose_end_was_lost_is_reported_when_the_next_begins() {
        let mut r = DtmfReceiver::new();
        assert!(r.push(100, &pkt(5, false, 10, 160)).is_empty());
        assert!(r.push(100, &pkt(5, false, 10, 320)).is_empty());
        let e = r.push(900, &pkt(11, false, 10, 160));
        assert_eq!(
            e,
            vec![Dtmf {
                digit: '5',
                end: false,
                duration: 320
            }]
        );
        let e = r.push(900, &pkt(11, true, 10, 480));
        assert_eq!(
            e,
            vec![Dtmf {
                digit: '#',
                end: true,
                duration: 480
            }]
        );
    }

    #[test]
    fn the_same_key_twice_is_two_presses() {
        let mut r = DtmfReceiver::new();
        assert_eq!(press(&mut r, 100, 7).len(), 1);
        assert_eq!(press(&mut r, 900, 7).len(), 1);
    }

    #[test]
    fn malformed_packets_are_counted_and_dropped() {
        let mut r = DtmfReceiver::new();
        assert!(r.push(1, &[]).is_empty());
        assert!(r.push(1, &[1, 0x80, 0]).is_empty());
        assert!(r.push(1, &pkt(200, true, 0, 160)).is_empty());
        assert_eq!(r.malformed(), 3);
        // Flash (16) is legal but not a digit: dropped without counting as malformed.
        assert!(r.push(2, &pkt(16, true, 0, 160)).is_empty());
        assert_eq!(r.malformed(), 3);
        // Volume bits and the reserved bit do not matter.
        assert_eq!(
            r.push(3, &[9, 0xff, 0, 160]),
            vec![Dtmf {
                digit: '9',
                end: true,
                duration: 160
            }]
        );
    }

    mod props {
        use super::super::*;
        use super::pkt;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn never_panics_and_reports_at_most_two(
                packets in proptest::collection::vec((any::<u32>(), proptest::collection::vec(any::<u8>(), 0..8)), 0..64),
            ) {
                let mut r = DtmfReceiver::new();
                for (ts, p) in packets {
                    prop_assert!(r.push(ts, &p).len() <= 2);
                }
            }

            /// Presses as `insertDTMF` sends them (progress packets, then 0 to 3 end packets,
            /// each press at a new timestamp) are each reported exactly once, in order.
            #[test]
            fn every_press_is_reported_once(
                presses in proptest::collection::vec((0u8..16, 1usize..6, 0usize..4), 1..20),
            ) {
                let mut r = DtmfReceiver::new();
                let mut got = vec![];
                for (i, (code, progress, ends)) in presses.iter().enumerate() {
                    let ts = 1000 + 160 * i as u32 * 10;
                    for k in 0..*progress {
                        got.extend(r.push(ts, &pkt(*code, false, 10, 160 * (k as u16 + 1))));
                    }
                    for _ in 0..*ends {
                        got.extend(r.push(ts, &pkt(*code, true, 10, 160 * (*progress as u16 + 1))));
                    }
                }
                // A final press without an end is reported when the next one begins.
                got.extend(r.push(u32::MAX, &pkt(1, true, 10, 800)));
                got.pop();
                let want: Vec<(char, bool)> = presses
                    .iter()
                    .map(|(c, _, e)| (digit(*c).unwrap(), *e > 0))
                    .collect();
                let seen: Vec<(char, bool)> = got.iter().map(|d| (d.digit, d.end)).collect();
                prop_assert_eq!(seen, want);
            }
        }
    }
}
