//! One UDP port for every call: a socket shared by all peer connections.
//!
//! webrtc 0.21 has no UDP mux and binds a socket per connection. We plug a per-connection
//! [`MuxRuntime`] into `PeerConnectionBuilder::with_runtime`: everything is delegated to the
//! stock `TokioRuntime` except `wrap_udp_socket`, which drops the placeholder socket the driver
//! just bound and hands back a [`VirtualSocket`] that
//! - sends through the one shared socket, and
//! - receives from a per-connection queue filled by the single receive loop, which routes every
//!   datagram: a STUN Binding request by the local ufrag in its USERNAME attribute (RFC 8445
//!   §7.2.2; the ufrag is ours, set per connection), which also binds the sender's address to
//!   that connection; anything else (DTLS, SRTP, STUN responses) by source address, learnt from
//!   those requests and from our own sends.
//!
//! The driver keys its sockets, and the host candidate it gathers, by the placeholder's address
//! (`127.0.0.1:<ephemeral>`), never by the virtual socket's; the answer's candidates are
//! therefore rewritten to the shared port ([`crate::peer`]). The ICE core only ever sees the
//! placeholder as the local half of its pairs, consistently, so connectivity checks, consent and
//! DTLS work unchanged. This leans on how the driver binds sockets in 0.21.1; the integration
//! tests pin it (concurrent calls over one port, mappings released on close).
//!
//! Failure: the receive loop runs on its own thread and survives transient socket errors (an
//! ICMP unreachable from a vanished browser surfaces as `ConnectionRefused`). A full
//! per-connection queue drops the datagram and counts it, like a congested network would.

use bytes::Bytes;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, RecvMeta, Runtime,
    TokioRuntime, Transmit,
};

/// Datagrams queued per connection before the newest are dropped: over 5 s of 20 ms audio.
const CONN_QUEUE: usize = 256;

/// Kernel buffers for the shared socket: hundreds of calls share it.
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Largest datagram we accept (above any path MTU).
const MAX_DATAGRAM: usize = 2048;

struct Datagram {
    data: Bytes,
    from: SocketAddr,
}

/// Routing state, shared by the receive loop and the connections.
#[derive(Default)]
struct Table {
    /// Connection id → (socket token, its queue).
    conns: HashMap<u64, (u64, mpsc::Sender<Datagram>)>,
    /// Local ICE ufrag → connection id.
    by_ufrag: HashMap<String, u64>,
    /// Remote address → connection id.
    by_addr: HashMap<SocketAddr, u64>,
}

/// Counters of the shared socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MuxStats {
    /// Datagrams received.
    pub rx: u64,
    /// Received datagrams that matched no connection.
    pub rx_unroutable: u64,
    /// Received datagrams dropped because a connection's queue was full.
    pub rx_queue_full: u64,
    /// Datagrams sent.
    pub tx: u64,
    /// Datagrams dropped because the socket's send buffer was full.
    pub tx_dropped: u64,
}

/// Sizes of the routing tables: all zero when no call is alive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MuxTables {
    /// Connections attached.
    pub conns: usize,
    /// Ufrag routes.
    pub ufrags: usize,
    /// Address routes.
    pub addrs: usize,
}

/// The shared socket and its routing.
pub struct UdpMux {
    /// Sending side (non-blocking).
    socket: UdpSocket,
    local_addr: SocketAddr,
    table: Mutex<Table>,
    next_id: AtomicU64,
    next_token: AtomicU64,
    rx: AtomicU64,
    rx_unroutable: AtomicU64,
    rx_queue_full: AtomicU64,
    tx: AtomicU64,
    tx_dropped: AtomicU64,
}

impl fmt::Debug for UdpMux {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UdpMux({})", self.local_addr)
    }
}

impl UdpMux {
    /// Binds the shared socket and starts the receive loop on its own thread.
    pub fn bind(addr: SocketAddr) -> io::Result<Arc<Self>> {
        use socket2::{Domain, Protocol, Socket, Type};
        let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        // Best effort: the kernel caps these at its configured maximum.
        let _ = sock.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
        let _ = sock.set_send_buffer_size(SOCKET_BUFFER_BYTES);
        sock.bind(&addr.into())?;
        sock.set_nonblocking(true)?;
        let socket: UdpSocket = sock.into();
        let local_addr = socket.local_addr()?;
        let recv_socket = socket.try_clone()?;
        let mux = Arc::new(UdpMux {
            socket,
            local_addr,
            table: Mutex::new(Table::default()),
            next_id: AtomicU64::new(1),
            next_token: AtomicU64::new(1),
            rx: AtomicU64::new(0),
            rx_unroutable: AtomicU64::new(0),
            rx_queue_full: AtomicU64::new(0),
            tx: AtomicU64::new(0),
            tx_dropped: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&mux);
        std::thread::Builder::new()
            .name("vg-udp-recv".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "media receive loop could not start");
                        return;
                    }
                };
                rt.block_on(receive_loop(weak, recv_socket));
            })?;
        Ok(mux)
    }

    /// The address the shared socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Counters so far.
    pub fn stats(&self) -> MuxStats {
        MuxStats {
            rx: self.rx.load(Ordering::Relaxed),
            rx_unroutable: self.rx_unroutable.load(Ordering::Relaxed),
            rx_queue_full: self.rx_queue_full.load(Ordering::Relaxed),
            tx: self.tx.load(Ordering::Relaxed),
            tx_dropped: self.tx_dropped.load(Ordering::Relaxed),
        }
    }

    /// How many routes exist; all zero once every call is released.
    pub fn tables(&self) -> MuxTables {
        let t = self.lock();
        MuxTables {
            conns: t.conns.len(),
            ufrags: t.by_ufrag.len(),
            addrs: t.by_addr.len(),
        }
    }

    /// A runtime for one connection whose local ICE ufrag is `ufrag` (set on the connection with
    /// `SettingEngineBuilder::with_ice_credentials`).
    pub fn connection_runtime(self: &Arc<Self>, ufrag: &str) -> Arc<MuxRuntime> {
        Arc::new(MuxRuntime {
            mux: self.clone(),
            conn: Arc::new(ConnShared {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                ufrag: ufrag.to_owned(),
                placeholder: Mutex::new(None),
            }),
            inner: TokioRuntime,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // The table holds plain maps; a panic while holding the lock cannot leave them
        // half-updated in a way that matters, so keep routing after one.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn dispatch(&self, packet: &[u8], from: SocketAddr) {
        self.rx.fetch_add(1, Ordering::Relaxed);
        let mut t = self.lock();
        let mut target = None;
        if let Some(ufrag) = binding_request_local_ufrag(packet)
            && let Some(&id) = t.by_ufrag.get(ufrag)
        {
            target = Some(id);
            if t.by_addr.get(&from) != Some(&id) {
                t.by_addr.insert(from, id);
            }
        }
        let target = target.or_else(|| t.by_addr.get(&from).copied());
        let Some((_, queue)) = target.and_then(|id| t.conns.get(&id)) else {
            self.rx_unroutable.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(%from, len = packet.len(), "datagram matches no call");
            return;
        };
        let datagram = Datagram {
            data: Bytes::copy_from_slice(packet),
            from,
        };
        if queue.try_send(datagram).is_err() {
            self.rx_queue_full.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn learn(&self, id: u64, addr: SocketAddr) {
        let mut t = self.lock();
        if t.conns.contains_key(&id) && t.by_addr.get(&addr) != Some(&id) {
            t.by_addr.insert(addr, id);
        }
    }

    fn attach(&self, conn: &ConnShared, token: u64, queue: mpsc::Sender<Datagram>) {
        let mut t = self.lock();
        t.conns.insert(conn.id, (token, queue));
        t.by_ufrag.insert(conn.ufrag.clone(), conn.id);
    }

    /// Called when a virtual socket is dropped (the driver ended or rebound).
    fn detach(&self, id: u64, token: u64) {
        let mut t = self.lock();
        if t.conns.get(&id).map(|(tok, _)| *tok) != Some(token) {
            // A newer socket of the same connection replaced this one.
            return;
        }
        t.conns.remove(&id);
        t.by_ufrag.retain(|_, v| *v != id);
        t.by_addr.retain(|_, v| *v != id);
    }

    fn send(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        match self.socket.send_to(buf, to) {
            Ok(n) => {
                self.tx.fetch_add(1, Ordering::Relaxed);
                Ok(n)
            }
            // UDP semantics: a full send buffer loses the datagram, the caller carries on.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.tx_dropped.fetch_add(1, Ordering::Relaxed);
                Ok(buf.len())
            }
            Err(e) => Err(e),
        }
    }
}

async fn receive_loop(mux: Weak<UdpMux>, socket: UdpSocket) {
    let socket = match tokio::net::UdpSocket::from_std(socket) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "media socket could not be registered");
            return;
        }
    };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(v) => v,
            Err(e) if is_transient(&e) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "media socket receive failed; retrying");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(mux) = mux.upgrade() else {
            return;
        };
        mux.dispatch(&buf[..n], from);
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// The local ufrag (before the colon) of a STUN Binding request's USERNAME (RFC 8489 §14.3).
pub fn binding_request_local_ufrag(b: &[u8]) -> Option<&str> {
    // Header: type(2) length(2) magic cookie(4) transaction id(12); Binding request = 0x0001.
    if b.len() < 20 || b[0] != 0x00 || b[1] != 0x01 || b[4..8] != [0x21, 0x12, 0xA4, 0x42] {
        return None;
    }
    let msg_len = usize::from(u16::from_be_bytes([b[2], b[3]]));
    let end = (20 + msg_len).min(b.len());
    let mut i = 20;
    while i + 4 <= end {
        let typ = u16::from_be_bytes([b[i], b[i + 1]]);
        let len = usize::from(u16::from_be_bytes([b[i + 2], b[i + 3]]));
        let value = b.get(i + 4..i + 4 + len)?;
        if typ == 0x0006 {
            let s = std::str::from_utf8(value).ok()?;
            return s.split(':').next();
        }
        i += 4 + ((len + 3) & !3);
    }
    None
}

/// What a connection's runtime and its virtual socket share.
#[derive(Debug)]
struct ConnShared {
    id: u64,
    ufrag: String,
    /// The address of the placeholder socket the driver bound: what its host candidate names.
    placeholder: Mutex<Option<SocketAddr>>,
}

/// A connection's runtime: tokio for everything, the shared socket for UDP.
#[derive(Debug)]
pub struct MuxRuntime {
    mux: Arc<UdpMux>,
    conn: Arc<ConnShared>,
    inner: TokioRuntime,
}

impl MuxRuntime {
    /// The placeholder address the driver bound, once it has.
    pub fn placeholder_addr(&self) -> Option<SocketAddr> {
        *self
            .conn
            .placeholder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// Tasks the WebRTC driver spawned for connections on the shared socket that have not finished
/// (counted out when the task completes or is dropped). Zero once every call is released.
static LIVE_TASKS: AtomicU64 = AtomicU64::new(0);

/// Driver tasks alive now (see [`LIVE_TASKS`]).
pub fn live_tasks() -> u64 {
    LIVE_TASKS.load(Ordering::Relaxed)
}

struct TaskCount;

impl TaskCount {
    fn new() -> TaskCount {
        LIVE_TASKS.fetch_add(1, Ordering::Relaxed);
        TaskCount
    }
}

impl Drop for TaskCount {
    fn drop(&mut self) {
        LIVE_TASKS.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Runtime for MuxRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        let count = TaskCount::new();
        self.inner.spawn(Box::pin(async move {
            let _count = count;
            future.await
        }))
    }

    fn spawn_reactor(
        &self,
        reactor_pool_size: usize,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn JoinHandle> {
        self.inner.spawn_reactor(reactor_pool_size, future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let placeholder = socket.local_addr()?;
        // Only the address matters to the driver from here on.
        drop(socket);
        *self
            .conn
            .placeholder
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(placeholder);
        let (tx, rx) = mpsc::channel(CONN_QUEUE);
        let token = self.mux.next_token.fetch_add(1, Ordering::Relaxed);
        self.mux.attach(&self.conn, token, tx);
        Ok(Arc::new(VirtualSocket {
            mux: self.mux.clone(),
            id: self.conn.id,
            token,
            rx: Mutex::new(rx),
            last_destination: Mutex::new(None),
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
        "voicegate-udp-mux"
    }
}

/// What the driver gets instead of a socket of its own.
struct VirtualSocket {
    mux: Arc<UdpMux>,
    id: u64,
    token: u64,
    rx: Mutex<mpsc::Receiver<Datagram>>,
    /// The last address we sent to, so the route is learnt once, not per packet.
    last_destination: Mutex<Option<SocketAddr>>,
}

impl fmt::Debug for VirtualSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "VirtualSocket(conn {} via {})",
            self.id, self.mux.local_addr
        )
    }
}

impl Drop for VirtualSocket {
    fn drop(&mut self) {
        self.mux.detach(self.id, self.token);
    }
}

impl AsyncUdpSocket for VirtualSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.mux.local_addr)
    }

    fn poll_send(&self, _cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        let to = transmit.destination;
        {
            let mut last = self
                .last_destination
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if *last != Some(to) {
                *last = Some(to);
                // Replies from `to` (DTLS, SRTP, STUN responses) route back to us.
                self.mux.learn(self.id, to);
            }
        }
        let contents = transmit.contents;
        // max_gso_segments() is 1, so the driver never asks for GSO; split defensively anyway.
        match transmit
            .segment_size
            .filter(|s| *s > 0 && *s < contents.len())
        {
            None => Poll::Ready(self.mux.send(contents, to)),
            Some(seg) => {
                for chunk in contents.chunks(seg) {
                    if let Err(e) = self.mux.send(chunk, to) {
                        return Poll::Ready(Err(e));
                    }
                }
                Poll::Ready(Ok(contents.len()))
            }
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut rx = self.rx.lock().unwrap_or_else(|p| p.into_inner());
        let max = bufs.len().min(meta.len());
        let mut n = 0;
        while n < max {
            let d = if n == 0 {
                match rx.poll_recv(cx) {
                    Poll::Ready(Some(d)) => d,
                    Poll::Ready(None) => {
                        return Poll::Ready(Err(io::Error::other("udp mux detached")));
                    }
                    Poll::Pending => return Poll::Pending,
                }
            } else {
                match rx.try_recv() {
                    Ok(d) => d,
                    Err(_) => break,
                }
            };
            let len = d.data.len().min(bufs[n].len());
            bufs[n][..len].copy_from_slice(&d.data[..len]);
            let mut m = RecvMeta::default();
            m.len = len;
            m.stride = len.max(1);
            m.addr = d.from;
            meta[n] = m;
            n += 1;
        }
        Poll::Ready(Ok(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A STUN Binding request with USERNAME "abcd:wxyz" and a trailing attribute.
    fn binding_request(username: &[u8]) -> Vec<u8> {
        let mut attrs = vec![];
        attrs.extend_from_slice(&0x0024u16.to_be_bytes()); // PRIORITY
        attrs.extend_from_slice(&4u16.to_be_bytes());
        attrs.extend_from_slice(&[0, 0, 0, 1]);
        attrs.extend_from_slice(&0x0006u16.to_be_bytes());
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username);
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attrs);
        m
    }

    #[test]
    fn reads_the_local_ufrag() {
        assert_eq!(
            binding_request_local_ufrag(&binding_request(b"abcd:wxyz")),
            Some("abcd")
        );
        assert_eq!(
            binding_request_local_ufrag(&binding_request(b"nocolon")),
            Some("nocolon")
        );
    }

    #[test]
    fn ignores_everything_else() {
        let mut response = binding_request(b"abcd:wxyz");
        response[0] = 0x01; // Binding success response
        assert_eq!(binding_request_local_ufrag(&response), None);
        let mut no_cookie = binding_request(b"abcd:wxyz");
        no_cookie[4] = 0;
        assert_eq!(binding_request_local_ufrag(&no_cookie), None);
        assert_eq!(binding_request_local_ufrag(&[0x16, 0xfe, 0xfd]), None); // DTLS
        assert_eq!(binding_request_local_ufrag(&[0x80; 40]), None); // RTP
        // Truncated attribute: no panic, no answer.
        let full = binding_request(b"abcd:wxyz");
        assert_eq!(binding_request_local_ufrag(&full[..30]), None);
    }
}
