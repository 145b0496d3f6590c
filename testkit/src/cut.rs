//! A client network that can be cut, so a test can make a caller vanish the way a browser does
//! when its laptop lid closes or its Wi-Fi drops: from one packet to the next nothing more
//! arrives, not even the DTLS close alert or the ICE consent checks. It is the default tokio
//! runtime with each UDP socket wrapped; once cut, sends are swallowed and receives discarded.
//! It can also lose a share of the RTP that arrives, as a lossy path would. A cut network can
//! be restored, as when the Wi-Fi comes back or the laptop wakes on the same network.
//!
//! It also keeps each RTP packet's receive time as the kernel stamped it, by sequence number
//! ([`Arrivals`]), so a load test can measure jitter without the client's own scheduling.

use std::collections::HashMap;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, RecvMeta, Runtime,
    TokioRuntime, Transmit,
};

/// The tokio runtime with a switch on its UDP sockets.
#[derive(Debug)]
pub struct CuttableRuntime {
    cut: Arc<AtomicBool>,
    loss: Arc<Loss>,
    arrivals: Arc<Arrivals>,
    inner: TokioRuntime,
}

/// When the kernel received each RTP packet, by sequence number, until the reader takes it.
#[derive(Debug, Default)]
pub struct Arrivals {
    at: Mutex<HashMap<u16, Instant>>,
}

/// Stamps kept at most (a reader that takes none cannot grow it).
const ARRIVALS_KEPT: usize = 4096;

impl Arrivals {
    /// The kernel's receive time of the RTP packet with sequence number `seq`, once.
    pub fn take(&self, seq: u16) -> Option<Instant> {
        self.at.lock().expect("no panic while holding").remove(&seq)
    }

    fn put(&self, seq: u16, at: Instant) {
        let mut m = self.at.lock().expect("no panic while holding");
        if m.len() >= ARRIVALS_KEPT {
            m.clear();
        }
        m.insert(seq, at);
    }
}

/// The kernel's receive time of a datagram (the socket layer reads `SO_TIMESTAMPNS`, as time
/// since the Unix epoch) as an `Instant`.
fn kernel_instant(since_epoch: Duration) -> Option<Instant> {
    let stamped = SystemTime::UNIX_EPOCH + since_epoch;
    let (now, wall) = (Instant::now(), SystemTime::now());
    now.checked_sub(wall.duration_since(stamped).ok()?)
}

/// The sequence number of an RTP packet (SRTP leaves the header in the clear); `None` for
/// anything else (RFC 7983: RTP's first byte is 128-191; RTCP packet types are 192-223).
fn rtp_seq(datagram: &[u8]) -> Option<u16> {
    match datagram {
        [128..=191, b, hi, lo, ..] if !(192..=223).contains(b) => {
            Some(u16::from_be_bytes([*hi, *lo]))
        }
        _ => None,
    }
}

/// Every `every`-th arriving RTP packet is lost (0: none).
#[derive(Debug, Default)]
struct Loss {
    every: AtomicU32,
    seen: AtomicU32,
}

impl Loss {
    fn drops(&self, datagram: &[u8]) -> bool {
        let every = self.every.load(Ordering::Relaxed);
        every > 0
            && rtp_seq(datagram).is_some()
            && self.seen.fetch_add(1, Ordering::Relaxed) % every == every - 1
    }
}

impl Default for CuttableRuntime {
    fn default() -> Self {
        CuttableRuntime {
            cut: Arc::default(),
            loss: Arc::default(),
            arrivals: Arc::default(),
            inner: TokioRuntime,
        }
    }
}

impl CuttableRuntime {
    /// From now on no packet leaves or arrives.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
    }

    /// From now on packets leave and arrive again (what was sent during the cut stays lost).
    pub fn restore(&self) {
        self.cut.store(false, Ordering::Relaxed);
    }

    /// The kernel's receive times of the RTP packets that arrive.
    pub fn arrivals(&self) -> Arc<Arrivals> {
        self.arrivals.clone()
    }

    /// From now on every `every`-th RTP packet that arrives is lost (0: none).
    pub fn lose_every(&self, every: u32) {
        self.loss.every.store(every, Ordering::Relaxed);
    }
}

impl Runtime for CuttableRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.inner.spawn(future)
    }

    fn spawn_reactor(
        &self,
        reactor_pool_size: usize,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn JoinHandle> {
        self.inner.spawn_reactor(reactor_pool_size, future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        Ok(Arc::new(CuttableSocket {
            inner: self.inner.wrap_udp_socket(socket)?,
            cut: self.cut.clone(),
            loss: self.loss.clone(),
            arrivals: self.arrivals.clone(),
        }))
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Arc<dyn AsyncTcpListener>> {
        self.inner.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        self.inner.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.inner.resolve_host(host)
    }

    fn now(&self) -> Instant {
        self.inner.now()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.inner.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.inner.block_on(future)
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.yield_now()
    }

    fn name(&self) -> &'static str {
        "cuttable-tokio"
    }
}

#[derive(Debug)]
struct CuttableSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    cut: Arc<AtomicBool>,
    loss: Arc<Loss>,
    arrivals: Arc<Arrivals>,
}

impl AsyncUdpSocket for CuttableSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn poll_send(&self, cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        if self.cut.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(transmit.contents.len()));
        }
        self.inner.poll_send(cx, transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.inner.poll_recv(cx, bufs, meta) {
                // Read and dropped: poll again so the waker is registered before Pending.
                Poll::Ready(Ok(_)) if self.cut.load(Ordering::Relaxed) => continue,
                Poll::Ready(Ok(n)) => {
                    // Lost packets are taken out and the rest moved up. A buffer holding several
                    // coalesced datagrams (GRO) is kept whole.
                    let mut kept = 0;
                    for i in 0..n {
                        let m = meta[i];
                        if m.stride >= m.len && self.loss.drops(&bufs[i][..m.len]) {
                            continue;
                        }
                        if kept != i {
                            let (to, from) = bufs.split_at_mut(i);
                            to[kept][..m.len].copy_from_slice(&from[0][..m.len]);
                            meta[kept] = m;
                        }
                        kept += 1;
                    }
                    for i in 0..kept {
                        let m = meta[i];
                        if m.stride >= m.len
                            && let Some(seq) = rtp_seq(&bufs[i][..m.len])
                            && let Some(at) = m.timestamp.and_then(kernel_instant)
                        {
                            self.arrivals.put(seq, at);
                        }
                    }
                    if kept > 0 {
                        return Poll::Ready(Ok(kept));
                    }
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rtp_has_a_sequence_number() {
        // RTP (version 2, payload type 111, sequence 0x1234), with and without the marker bit.
        assert_eq!(rtp_seq(&[0x80, 111, 0x12, 0x34, 0, 0]), Some(0x1234));
        assert_eq!(rtp_seq(&[0x90, 0x80 | 111, 0xff, 0xff]), Some(0xffff));
        // RTCP sender report, STUN, DTLS, and a datagram too short to hold a sequence number.
        assert_eq!(rtp_seq(&[0x80, 200, 0, 6]), None);
        assert_eq!(rtp_seq(&[0x00, 0x01, 0x00, 0x0c]), None);
        assert_eq!(rtp_seq(&[22, 0xfe, 0xfd, 0]), None);
        assert_eq!(rtp_seq(&[0x80, 111, 0x12]), None);
    }

    #[test]
    fn arrivals_are_taken_once_and_stay_bounded() {
        let a = Arrivals::default();
        let t = Instant::now();
        a.put(7, t);
        assert_eq!(a.take(7), Some(t));
        assert_eq!(a.take(7), None, "taken once");
        for seq in 0..(ARRIVALS_KEPT as u16 + 10) {
            a.put(seq, t);
        }
        assert!(a.at.lock().unwrap().len() <= ARRIVALS_KEPT);
    }

    #[test]
    fn a_kernel_stamp_reads_as_the_instant_it_was() {
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        let at = kernel_instant(wall - Duration::from_millis(30)).expect("a past stamp");
        let ago = at.elapsed();
        assert!(
            ago >= Duration::from_millis(30) && ago < Duration::from_secs(1),
            "{ago:?}"
        );
        assert_eq!(
            kernel_instant(wall + Duration::from_secs(60)),
            None,
            "a future stamp"
        );
    }
}
