//! `FairQueue`: utterances waiting for a decoder thread, bounded and served in turn by call.
//!
//! The decoder threads are shared by every call, and an utterance holds one for as long as the
//! caller speaks. Without a bound, callers who talk continuously pile up utterances faster than
//! the decoders free up, and everyone's recognition falls further behind for the rest of their
//! calls. So the queue is bounded twice: at most `max` utterances wait across all calls (beyond
//! that an utterance is refused at once, which the caller's dialog app hears as `asr.error`),
//! and one call may hold at most half of those places (and never more than
//! [`MAX_WAITING_PER_CALL`]), so a single call cannot fill the queue.
//!
//! Service is round-robin by call: each call with waiting utterances has one place in line; when
//! its oldest utterance gets a decoder, the call goes to the back of the line if it has more.
//! A call's own utterances are served in the order they were spoken (a newer one queues behind
//! its own, never replaces it: the endpointer may cut one sentence at a pause, and both halves
//! matter).
//!
//! Pure: no locks, no threads, no clock. The engine wraps it in a mutex and a condition variable.

use std::collections::{HashMap, VecDeque};

/// Most utterances one call may have waiting: one it finished and the next it is speaking.
pub const MAX_WAITING_PER_CALL: usize = 2;

/// Why an utterance was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `max` utterances are already waiting, across all calls.
    #[error("recognition refused: the server is busy ({max} utterances are waiting for a decoder)")]
    Full {
        /// The bound.
        max: usize,
    },
    /// This call already has its share of the queue waiting.
    #[error(
        "recognition refused: this call already has {per_call} utterances waiting for a decoder"
    )]
    CallFull {
        /// The call's share.
        per_call: usize,
    },
}

/// Waiting jobs, keyed by call (any `u64` the engine gives each call).
#[derive(Debug)]
pub struct FairQueue<T> {
    /// Calls with waiting jobs, in the order they get their next turn; each appears once.
    turns: VecDeque<u64>,
    /// Each call's waiting jobs, oldest first; never empty.
    waiting: HashMap<u64, VecDeque<T>>,
    /// Jobs waiting, all calls together.
    len: usize,
    /// Most jobs waiting.
    max: usize,
    /// Most jobs waiting for one call.
    per_call: usize,
}

impl<T> FairQueue<T> {
    /// A queue of at most `max` jobs (at least 1); a call may hold at most half of them, at least
    /// one and at most [`MAX_WAITING_PER_CALL`].
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        FairQueue {
            turns: VecDeque::new(),
            waiting: HashMap::new(),
            len: 0,
            max,
            per_call: (max / 2).clamp(1, MAX_WAITING_PER_CALL),
        }
    }

    /// Jobs waiting.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no job waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues `job` for `call`, or hands it back with the reason it was refused.
    pub fn push(&mut self, call: u64, job: T) -> Result<(), (Refused, T)> {
        let mine = self.waiting.get(&call).map_or(0, VecDeque::len);
        if mine >= self.per_call {
            return Err((
                Refused::CallFull {
                    per_call: self.per_call,
                },
                job,
            ));
        }
        if self.len >= self.max {
            return Err((Refused::Full { max: self.max }, job));
        }
        let jobs = self.waiting.entry(call).or_default();
        if jobs.is_empty() {
            self.turns.push_back(call);
        }
        jobs.push_back(job);
        self.len += 1;
        Ok(())
    }

    /// The next job: the oldest of the call whose turn it is.
    pub fn pop(&mut self) -> Option<(u64, T)> {
        let call = self.turns.pop_front()?;
        let jobs = self
            .waiting
            .get_mut(&call)
            .expect("every call in line has waiting jobs");
        let job = jobs
            .pop_front()
            .expect("a call's waiting jobs are never empty");
        self.len -= 1;
        if jobs.is_empty() {
            self.waiting.remove(&call);
        } else {
            self.turns.push_back(call);
        }
        Some((call, job))
    }

    /// Drops the jobs `keep` says no to (abandoned ones); returns how many went. Calls left with
    /// nothing waiting leave the line.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) -> usize {
        let before = self.len;
        for jobs in self.waiting.values_mut() {
            jobs.retain(&mut keep);
        }
        self.waiting.retain(|_, jobs| !jobs.is_empty());
        let waiting = &self.waiting;
        self.turns.retain(|call| waiting.contains_key(call));
        self.len = self.waiting.values().map(VecDeque::len).sum();
        before - self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pops everything: (call, job) in service order.
    fn drain(q: &mut FairQueue<&'static str>) -> Vec<(u64, &'static str)> {
        std::iter::from_fn(|| q.pop()).collect()
    }

    #[test]
    fn calls_are_served_in_turn_and_each_in_its_own_order() {
        let mut q = FairQueue::new(16);
        for (call, job) in [(1, "a1"), (1, "a2"), (2, "b1"), (3, "c1"), (2, "b2")] {
            q.push(call, job).unwrap();
        }
        assert_eq!(q.len(), 5);
        assert_eq!(
            drain(&mut q),
            [(1, "a1"), (2, "b1"), (3, "c1"), (1, "a2"), (2, "b2")]
        );
        assert_eq!(q.len(), 0);
        assert!(q.pop().is_none());
    }

    #[test]
    fn a_call_that_was_served_goes_to_the_back_of_the_line() {
        let mut q = FairQueue::new(16);
        q.push(1, "a1").unwrap();
        assert_eq!(q.pop(), Some((1, "a1")));
        // Call 1 speaks again while call 2 is already waiting: 2 goes first.
        q.push(2, "b1").unwrap();
        q.push(1, "a2").unwrap();
        assert_eq!(drain(&mut q), [(2, "b1"), (1, "a2")]);
    }

    #[test]
    fn one_call_cannot_fill_the_queue_and_a_full_queue_refuses() {
        /// The queue's bound, jobs pushed as (call, job), the refusals expected in push order.
        type Case = (
            usize,
            &'static [(u64, &'static str)],
            &'static [Option<Refused>],
        );
        let cases: &[Case] = &[
            // A call holds at most two places, however large the queue.
            (
                16,
                &[(1, "a1"), (1, "a2"), (1, "a3")],
                &[None, None, Some(Refused::CallFull { per_call: 2 })],
            ),
            // ...and at most half of a small one.
            (
                2,
                &[(1, "a1"), (1, "a2"), (2, "b1"), (3, "c1")],
                &[
                    None,
                    Some(Refused::CallFull { per_call: 1 }),
                    None,
                    Some(Refused::Full { max: 2 }),
                ],
            ),
            // A queue of one still queues (a decoder takes jobs from it).
            (
                1,
                &[(1, "a1"), (2, "b1")],
                &[None, Some(Refused::Full { max: 1 })],
            ),
        ];
        for (max, pushes, expected) in cases {
            let mut q = FairQueue::new(*max);
            let got: Vec<Option<Refused>> = pushes
                .iter()
                .map(|&(call, job)| q.push(call, job).err().map(|(why, _)| why))
                .collect();
            assert_eq!(&got, expected, "max {max}");
        }
    }

    #[test]
    fn abandoned_jobs_free_their_places_and_their_turns() {
        let mut q = FairQueue::new(4);
        q.push(1, "a1").unwrap();
        q.push(2, "b1").unwrap();
        q.push(2, "b2").unwrap();
        q.push(4, "d1").unwrap();
        assert_eq!(
            q.push(3, "c1").err().map(|(why, _)| why),
            Some(Refused::Full { max: 4 })
        );
        // Call 1 hung up and call 2's first utterance passed its deadline.
        assert_eq!(q.retain(|j| !matches!(*j, "a1" | "b1")), 2);
        assert_eq!(q.len(), 2);
        q.push(3, "c1").unwrap();
        assert_eq!(drain(&mut q), [(2, "b2"), (4, "d1"), (3, "c1")]);
    }

    #[test]
    fn refusals_read_as_sentences() {
        assert_eq!(
            Refused::Full { max: 8 }.to_string(),
            "recognition refused: the server is busy (8 utterances are waiting for a decoder)"
        );
        assert!(
            Refused::CallFull { per_call: 2 }
                .to_string()
                .contains("this call already has 2")
        );
    }
}
