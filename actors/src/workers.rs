//! Media workers: a fixed pool of single-threaded arbiters that run the calls.
//!
//! A call's actors, its peer connection's driver task and its codec state all live on one
//! worker for the call's whole life, so per-call work runs in order without locks and without
//! crossing threads per packet; calls are spread over the workers (least loaded first), so
//! they use every core. There is no thread per call.

use actix::prelude::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The pool.
pub struct Workers {
    workers: Vec<(Arbiter, Arc<AtomicUsize>)>,
}

/// A call's place on a worker; the worker's load drops when this is dropped.
pub struct Lease {
    load: Arc<AtomicUsize>,
    /// Index of the worker, for logs.
    pub index: usize,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.load.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// Starts `n` worker threads (at least one). Must run inside an actix system.
    pub fn start(n: usize) -> Self {
        let workers = (0..n.max(1))
            .map(|_| (Arbiter::new(), Arc::new(AtomicUsize::new(0))))
            .collect();
        Workers { workers }
    }

    /// The least loaded worker and a lease on it.
    pub fn pick(&self) -> (ArbiterHandle, Lease) {
        let (index, (arbiter, load)) = self
            .workers
            .iter()
            .enumerate()
            .min_by_key(|(_, (_, load))| load.load(Ordering::Relaxed))
            .expect("the pool has at least one worker");
        load.fetch_add(1, Ordering::Relaxed);
        (
            arbiter.handle(),
            Lease {
                load: load.clone(),
                index,
            },
        )
    }

    /// Calls per worker.
    pub fn loads(&self) -> Vec<usize> {
        self.workers
            .iter()
            .map(|(_, l)| l.load(Ordering::Relaxed))
            .collect()
    }

    /// Stops the worker threads (after their calls ended).
    pub fn stop(&self) {
        for (arbiter, _) in &self.workers {
            arbiter.stop();
        }
    }
}
