//! `idle_timeout`: a stream from a remote server that must keep moving.
//!
//! The HTTP speech engines read response bodies as they arrive. A server that sends its headers
//! and then stops sending, without closing, would otherwise hold a synthesis (and with it every
//! utterance queued behind it) or a transcription for as long as the connection lives: the HTTP
//! client's own timeout ends when the response head arrives. [`IdleTimeout`] ends such a
//! stream with [`Stalled`] once no item arrived for the idle limit; every item restarts the
//! clock, so a slow but steady server is never cut off.
//!
//! This is a thin shell around a timer; the engines decide what a stall means (a failed
//! synthesis, an `asr.error`) and count it.

use futures_util::Stream;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The source sent nothing for the idle limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("nothing received for {} ms", .0.as_millis())]
pub struct Stalled(pub Duration);

/// `inner`, ended with [`Stalled`] when no item arrives for `limit`.
pub fn idle_timeout<S: Stream + Unpin>(inner: S, limit: Duration) -> IdleTimeout<S> {
    IdleTimeout {
        inner,
        limit,
        timer: Box::pin(tokio::time::sleep(limit)),
        done: false,
    }
}

/// See [`idle_timeout`].
pub struct IdleTimeout<S> {
    /// The source.
    inner: S,
    /// Longest quiet time.
    limit: Duration,
    /// Fires `limit` after the last item (or the start).
    timer: Pin<Box<Sleep>>,
    /// The source ended or stalled: nothing more is polled.
    done: bool,
}

impl<S: Stream + Unpin> Stream for IdleTimeout<S> {
    type Item = Result<S::Item, Stalled>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(item)) => {
                this.timer.as_mut().reset(Instant::now() + this.limit);
                Poll::Ready(Some(Ok(item)))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.done = true;
                    Poll::Ready(Some(Err(Stalled(this.limit))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    /// Items at these offsets (ms) from the start, then a source that never ends.
    fn paced(offsets: &'static [u64]) -> impl Stream<Item = u64> + Unpin {
        let start = Instant::now();
        Box::pin(
            futures_util::stream::iter(offsets)
                .then(move |&ms| async move {
                    tokio::time::sleep_until(start + Duration::from_millis(ms)).await;
                    ms
                })
                .chain(futures_util::stream::pending()),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_source_is_never_cut_and_a_stall_ends_it_once() {
        let limit = Duration::from_millis(1000);
        let t0 = Instant::now();
        // Gaps of 900 ms each: under the limit every time, though the total is far above it.
        let got: Vec<_> = idle_timeout(paced(&[900, 1800, 2700, 3600]), limit)
            .collect()
            .await;
        assert_eq!(
            got,
            [Ok(900), Ok(1800), Ok(2700), Ok(3600), Err(Stalled(limit))]
        );
        // The stall is reported one limit after the last item, not earlier or later.
        assert_eq!(t0.elapsed(), Duration::from_millis(4600));
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_that_never_starts_stalls_and_one_that_ends_just_ends() {
        let limit = Duration::from_millis(500);
        let got: Vec<_> = idle_timeout(paced(&[]), limit).collect().await;
        assert_eq!(got, [Err(Stalled(limit))]);
        let got: Vec<_> = idle_timeout(futures_util::stream::iter([1, 2]), limit)
            .collect()
            .await;
        assert_eq!(got, [Ok(1), Ok(2)]);
        assert_eq!(Stalled(limit).to_string(), "nothing received for 500 ms");
    }
}
