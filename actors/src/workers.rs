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
            .map(|_| {
                let arbiter = Arbiter::new();
                // Each worker's pacer clock (and its timerfd) exists from the start.
                arbiter.spawn_fn(crate::clock::start_here);
                (arbiter, Arc::new(AtomicUsize::new(0)))
            })
            .collect();
        Workers { workers }
    }

    /// How many workers there are (at least one).
    pub fn count(&self) -> usize {
        self.workers.len()
    }

    /// Runs the shared port's receive loop on the first worker: a datagram for a call on that
    /// worker reaches its connection without a cross-thread wake-up (with one worker, none
    /// crosses), and the others get one hop each, as from a receive thread of its own. (Every
    /// worker polling the socket would wake them all for each datagram.) Waits until the socket
    /// is registered there, so a failure is the caller's error.
    pub fn receive(
        &self,
        receiver: voicegate_media::Receiver,
    ) -> Result<(), voicegate_media::MuxError> {
        let gone = || {
            voicegate_media::MuxError::ReceiveLoop(std::io::Error::other(
                "the media worker stopped",
            ))
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (arbiter, _) = &self.workers[0];
        let sent = arbiter.spawn_fn(move || {
            let started = receiver.register().map(|receive| {
                actix::spawn(receive);
            });
            let _ = tx.send(started);
        });
        if !sent {
            return Err(gone());
        }
        rx.recv().unwrap_or_else(|_| Err(gone()))
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

/// The names of this process's threads, for tests that check which threads a server started
/// (Linux: `/proc/self/task`).
#[cfg(any(test, feature = "test-hooks"))]
pub fn thread_names() -> Vec<String> {
    // No list would make "no such thread" pass without looking: a test must see the threads.
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task lists this process's threads")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    //! The isolation the call design rests on: a panic inside one actor's handler ends that
    //! actor only; the worker thread and the other actors on it carry on, and a drop guard in
    //! the actor sees the panic (this is how `AudioCodec` reports one to its call).
    use super::*;
    use std::sync::Mutex;

    struct Fragile {
        log: Arc<Mutex<Vec<String>>>,
        name: &'static str,
    }

    impl Actor for Fragile {
        type Context = Context<Self>;
    }

    impl Drop for Fragile {
        fn drop(&mut self) {
            let how = if std::thread::panicking() {
                "panicked"
            } else {
                "dropped"
            };
            self.log
                .lock()
                .unwrap()
                .push(format!("{} {how}", self.name));
        }
    }

    #[derive(Message)]
    #[rtype(result = "String")]
    struct Poke {
        explode: bool,
    }

    impl Handler<Poke> for Fragile {
        type Result = String;
        fn handle(&mut self, msg: Poke, _: &mut Self::Context) -> String {
            assert!(!msg.explode, "test-induced panic");
            self.name.to_owned()
        }
    }

    #[actix_rt::test]
    async fn a_panicking_actor_does_not_take_its_worker_down() {
        let workers = Workers::start(1);
        let log = Arc::new(Mutex::new(Vec::new()));
        let (arbiter, _lease) = workers.pick();
        let (l1, l2) = (log.clone(), log.clone());
        let a = Fragile::start_in_arbiter(&arbiter, move |_| Fragile { log: l1, name: "a" });
        let b = Fragile::start_in_arbiter(&arbiter, move |_| Fragile { log: l2, name: "b" });
        assert_eq!(a.send(Poke { explode: false }).await.unwrap(), "a");
        assert!(
            a.send(Poke { explode: true }).await.is_err(),
            "the panicking actor is gone"
        );
        // Same thread, other actor: still served.
        assert_eq!(b.send(Poke { explode: false }).await.unwrap(), "b");
        assert!(!a.connected());
        assert_eq!(log.lock().unwrap().as_slice(), ["a panicked"]);
        workers.stop();
    }

    /// The shared port is read on the first worker: a datagram sent to it is received there,
    /// and no thread of its own is started for it.
    #[actix_rt::test]
    async fn the_shared_port_is_read_on_a_worker() {
        use voicegate_media::mux::{MuxLimits, UdpMux};
        let workers = Workers::start(2);
        let mux = UdpMux::bind_with(
            "127.0.0.1:0".parse().unwrap(),
            MuxLimits::default(),
            |receiver| workers.receive(receiver),
        )
        .expect("binds");
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.send_to(b"not stun", mux.local_addr()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while mux.stats().rx == 0 {
            assert!(std::time::Instant::now() < deadline, "nothing was received");
            actix_rt::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let threads = thread_names();
        assert!(
            !threads.iter().any(|n| n == "vg-udp-recv"),
            "a receive thread was started: {threads:?}"
        );
        workers.stop();
    }
}
