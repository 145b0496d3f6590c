//! The media worker's precise clock: the pacers' deadlines on one timerfd per worker.
//!
//! tokio's timers have millisecond resolution: a deadline is rounded up to the next tick of the
//! timer wheel and fires when the worker next looks at the wheel, which, with packets arriving in
//! between, is anywhere in the millisecond after the tick. For a pacer sending every 20 ms that
//! is up to a millisecond of jitter on every packet before there is any load at all.
//!
//! [`sleep_until`] keeps every pending deadline of the worker it runs on in one heap and arms one
//! timerfd (nanosecond resolution) for the earliest. The worker's clock task, spawned on the
//! worker with its first deadline, waits for that timerfd, wakes every sleep that is due and
//! arms it for the next; it fires [`GATHER`] after the earliest deadline, so deadlines that
//! fall within that of each other wake the worker once. A sleep never ends before its deadline.
//!
//! Must be used from a single-threaded worker (an actix arbiter): the state is per thread.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;
use tokio::io::unix::AsyncFd;

/// How far after the earliest pending deadline the clock fires, serving every deadline up to
/// then with one wake-up. The periodic deadlines of running pacers repeat their phases every
/// slot, so each pacer's wait is the same from slot to slot (no jitter), and a worker wakes at
/// most once per this much time for its pacers.
const GATHER: std::time::Duration = std::time::Duration::from_micros(500);

/// A timerfd on `CLOCK_MONOTONIC`, the clock `Instant` reads.
struct TimerFd(OwnedFd);

impl AsRawFd for TimerFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl TimerFd {
    fn new() -> io::Result<TimerFd> {
        // SAFETY: plain syscall; the result is checked before it is owned.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor nothing else owns.
        Ok(TimerFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Fires once at `deadline` (at once if it has passed).
    fn arm(&self, deadline: Instant) -> io::Result<()> {
        let wait = deadline.saturating_duration_since(Instant::now());
        // A zero value would disarm the timer: fire after a nanosecond instead.
        let nanos = wait.as_nanos().max(1);
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (nanos / 1_000_000_000) as libc::time_t,
                tv_nsec: (nanos % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: valid descriptor and a valid spec; the old value is not asked for.
        let r =
            unsafe { libc::timerfd_settime(self.0.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Clears the expiry count so the descriptor reads as not ready again.
    fn drain(&self) {
        let mut count = [0u8; 8];
        // SAFETY: reads at most 8 bytes into an 8-byte buffer; EAGAIN (nothing) is fine.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
    }
}

/// One worker's pending deadlines.
struct Clock {
    /// Deadlines with the sleep's id, earliest first.
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    /// The waker of each pending sleep, by id (a dropped sleep removes its own).
    wakers: std::collections::HashMap<u64, Waker>,
    next_id: u64,
    /// What the timerfd is armed for.
    armed: Option<Instant>,
    /// The timerfd, shared with the clock task.
    fd: Rc<AsyncFd<TimerFd>>,
}

thread_local! {
    static CLOCK: RefCell<Option<Clock>> = const { RefCell::new(None) };
}

impl Clock {
    /// Makes this worker's clock and spawns its task.
    fn start() -> io::Result<Clock> {
        // SAFETY: the TimerFd owns its descriptor, which stays open and the same until the
        // AsyncFd (its only owner) drops it.
        let fd = unsafe {
            AsyncFd::register_with_interest(TimerFd::new()?, tokio::io::Interest::READABLE)
        }?;
        let fd = Rc::new(fd);
        actix::spawn(run(fd.clone()));
        Ok(Clock {
            heap: BinaryHeap::new(),
            wakers: std::collections::HashMap::new(),
            next_id: 0,
            armed: None,
            fd,
        })
    }

    /// Arms the timerfd for the earliest pending deadline, if it is not armed for it already.
    fn rearm(&mut self) {
        // Deadlines whose sleep was dropped are skipped here.
        while let Some(Reverse((_, id))) = self.heap.peek() {
            if self.wakers.contains_key(id) {
                break;
            }
            self.heap.pop();
        }
        let Some(Reverse((earliest, _))) = self.heap.peek().copied() else {
            return;
        };
        // The clock fires GATHER after the earliest deadline and serves every deadline due by
        // then: one wake-up for all of them, none early.
        let fire_at = earliest + GATHER;
        if self.armed.is_some_and(|a| a <= fire_at) {
            return;
        }
        if let Err(e) = self.fd.get_ref().arm(fire_at) {
            tracing::error!(error = %e, "the worker clock's timerfd could not be armed");
            return;
        }
        self.armed = Some(fire_at);
    }

    /// Wakes every sleep due at `now` and arms for the next.
    fn fire(&mut self, now: Instant) {
        self.armed = None;
        while let Some(Reverse((deadline, id))) = self.heap.peek().copied() {
            if deadline > now {
                break;
            }
            self.heap.pop();
            if let Some(w) = self.wakers.remove(&id) {
                w.wake();
            }
        }
        self.rearm();
    }
}

/// The clock task: waits for the timerfd and fires what is due.
async fn run(fd: Rc<AsyncFd<TimerFd>>) {
    loop {
        let mut guard = match fd.readable().await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "the worker clock stopped");
                return;
            }
        };
        fd.get_ref().drain();
        guard.clear_ready();
        CLOCK.with_borrow_mut(|c| {
            if let Some(c) = c.as_mut() {
                c.fire(Instant::now());
            }
        });
    }
}

/// Starts this worker's clock, so its timerfd is part of the worker from the start (a clock is
/// otherwise started by the first sleep). Must run on the worker.
pub fn start_here() {
    CLOCK.with_borrow_mut(|slot| {
        if slot.is_none() {
            match Clock::start() {
                Ok(c) => *slot = Some(c),
                Err(e) => tracing::error!(error = %e, "the worker clock could not start"),
            }
        }
    });
}

/// A future that ends at `deadline`, on this worker's precise clock.
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep { deadline, id: None }
}

/// See [`sleep_until`].
#[must_use = "a sleep does nothing unless awaited"]
pub struct Sleep {
    deadline: Instant,
    /// Set once registered with the clock.
    id: Option<u64>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            self.forget();
            return Poll::Ready(());
        }
        let deadline = self.deadline;
        let known = self.id;
        let registered = CLOCK.with_borrow_mut(|slot| {
            if slot.is_none() {
                *slot = Some(Clock::start()?);
            }
            let c = slot.as_mut().expect("made above");
            let id = match known {
                Some(id) => id,
                None => {
                    let id = c.next_id;
                    c.next_id += 1;
                    c.heap.push(Reverse((deadline, id)));
                    id
                }
            };
            c.wakers.insert(id, cx.waker().clone());
            c.rearm();
            Ok::<u64, io::Error>(id)
        });
        match registered {
            Ok(id) => {
                self.id = Some(id);
                Poll::Pending
            }
            Err(e) => {
                // No timerfd (out of descriptors): end now rather than never; the pacer
                // finds nothing due and asks again.
                tracing::error!(error = %e, "the worker clock could not start");
                Poll::Ready(())
            }
        }
    }
}

impl Sleep {
    fn forget(&mut self) {
        if let Some(id) = self.id.take() {
            // The thread's clock may be gone when the worker itself is going away.
            let _ = CLOCK.try_with(|c| {
                if let Ok(mut c) = c.try_borrow_mut()
                    && let Some(c) = c.as_mut()
                {
                    c.wakers.remove(&id);
                }
            });
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.forget();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Sleeps end in deadline order, never before their deadline, and a dropped one is
    /// forgotten (the others still fire).
    #[actix_rt::test]
    async fn sleeps_end_at_their_deadlines_in_order() {
        let start = Instant::now();
        let order = Rc::new(RefCell::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, ms) in [(0, 30u64), (1, 10), (2, 20), (3, 10)] {
            let order = order.clone();
            let deadline = start + Duration::from_millis(ms);
            tasks.push(actix_rt::spawn(async move {
                sleep_until(deadline).await;
                let now = Instant::now();
                assert!(now >= deadline, "sleep {i} ended early");
                order.borrow_mut().push(i);
            }));
        }
        // A sleep that is dropped before its deadline, earlier than all the others.
        let dropped = sleep_until(start + Duration::from_millis(5));
        let polled = tokio::time::timeout(Duration::from_millis(1), dropped).await;
        assert!(polled.is_err(), "not due yet");
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.borrow().clone();
        assert_eq!(order.len(), 4);
        assert_eq!(order[3], 0, "the latest deadline ends last: {order:?}");
        assert_eq!(order[2], 2, "{order:?}");
        // A deadline in the past ends at once.
        let before = Instant::now();
        sleep_until(before - Duration::from_millis(1)).await;
        CLOCK.with_borrow(|c| {
            let c = c.as_ref().expect("the clock started");
            assert!(c.wakers.is_empty(), "nothing is left waiting");
        });
    }
}
