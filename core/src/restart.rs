//! Restart budgets: how often a failing child may be restarted, or a lost connection redialled,
//! before its call gives up.
//!
//! A child (a call's codec or dialog client) that fails is restarted while fewer than `max`
//! failures happened within the last `window`; past that the failure is persistent and the call
//! ends with a reason instead of restarting forever ([`RestartBudget`]).
//!
//! A lost dialog connection is redialled at most `max` times in a row ([`RedialBudget`]). A
//! connection that drops soon after it came up does not end the row: only one that stayed up for
//! `stable_after` gives the budget back, so an app that accepts and drops again and again is
//! dialled at most `max + 1` times.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Failures within a sliding window.
#[derive(Debug, Clone)]
pub struct RestartBudget {
    max: usize,
    window: Duration,
    failures: VecDeque<Instant>,
}

impl RestartBudget {
    /// At most `max` restarts within any `window`.
    pub fn new(max: usize, window: Duration) -> Self {
        RestartBudget {
            max,
            window,
            failures: VecDeque::new(),
        }
    }

    /// Records a failure at `now`; true if a restart is allowed.
    pub fn allow(&mut self, now: Instant) -> bool {
        while let Some(&t) = self.failures.front() {
            if now.saturating_duration_since(t) >= self.window {
                self.failures.pop_front();
            } else {
                break;
            }
        }
        self.failures.push_back(now);
        self.failures.len() <= self.max
    }
}

/// Redials of a connection that may come up and drop again at once (see the module doc).
#[derive(Debug, Clone)]
pub struct RedialBudget {
    /// Most attempts in a row.
    max: u32,
    /// How long a connection must stay up to give the budget back.
    stable_after: Duration,
    /// Attempts made since the last stable connection.
    used: u32,
    /// When the current connection came up, while it is up.
    up_since: Option<Instant>,
}

impl RedialBudget {
    /// At most `max` attempts in a row; a connection up for `stable_after` resets the count.
    pub fn new(max: u32, stable_after: Duration) -> Self {
        RedialBudget {
            max,
            stable_after,
            used: 0,
            up_since: None,
        }
    }

    /// The connection came up at `now`.
    pub fn connected(&mut self, now: Instant) {
        self.up_since = Some(now);
    }

    /// The connection was lost, or an attempt failed, at `now`: the number of the next attempt
    /// (from 1), or `None` when the budget is spent.
    pub fn next_attempt(&mut self, now: Instant) -> Option<u32> {
        if let Some(up) = self.up_since.take()
            && now.saturating_duration_since(up) >= self.stable_after
        {
            self.used = 0;
        }
        if self.used >= self.max {
            return None;
        }
        self.used += 1;
        Some(self.used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_max_within_the_window_then_refuses() {
        let t = Instant::now();
        let mut b = RestartBudget::new(2, Duration::from_secs(60));
        assert!(b.allow(t));
        assert!(b.allow(t + Duration::from_secs(1)));
        assert!(!b.allow(t + Duration::from_secs(2)));
    }

    #[test]
    fn old_failures_age_out() {
        let t = Instant::now();
        let mut b = RestartBudget::new(1, Duration::from_secs(10));
        assert!(b.allow(t));
        assert!(!b.allow(t + Duration::from_secs(5)));
        assert!(b.allow(t + Duration::from_secs(16)));
    }

    #[test]
    fn zero_means_never_restart() {
        let mut b = RestartBudget::new(0, Duration::from_secs(10));
        assert!(!b.allow(Instant::now()));
    }

    #[test]
    fn a_connection_that_drops_at_once_is_a_failed_attempt() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut b = RedialBudget::new(3, Duration::from_secs(10));
        b.connected(t);
        let mut attempts = Vec::new();
        let mut now = t;
        while let Some(n) = b.next_attempt(now) {
            attempts.push(n);
            // Each redial is accepted and dropped again 50 ms later.
            now += ms(100);
            b.connected(now);
            now += ms(50);
        }
        assert_eq!(attempts, [1, 2, 3]);
    }

    #[test]
    fn a_stable_connection_gives_the_budget_back() {
        let t = Instant::now();
        let mut b = RedialBudget::new(2, Duration::from_secs(10));
        assert_eq!(b.next_attempt(t), Some(1));
        assert_eq!(b.next_attempt(t), Some(2), "a failed dial counts");
        b.connected(t);
        assert_eq!(b.next_attempt(t + Duration::from_secs(10)), Some(1));
        b.connected(t + Duration::from_secs(11));
        assert_eq!(b.next_attempt(t + Duration::from_secs(12)), Some(2));
        assert_eq!(b.next_attempt(t + Duration::from_secs(13)), None);
    }

    #[test]
    fn zero_attempts_means_never_redial() {
        let mut b = RedialBudget::new(0, Duration::ZERO);
        b.connected(Instant::now());
        assert_eq!(b.next_attempt(Instant::now()), None);
    }
}
