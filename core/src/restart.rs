//! Restart budgets: how often a failing child may be restarted before its call gives up.
//!
//! A child (a call's codec or dialog client) that fails is restarted while fewer than `max`
//! failures happened within the last `window`; past that the failure is persistent and the call
//! ends with a reason instead of restarting forever.

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
}
