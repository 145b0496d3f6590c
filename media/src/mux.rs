//! One UDP port for every call: a socket shared by all peer connections.
//!
//! webrtc 0.21 has no UDP mux and binds a socket per connection. We plug a per-connection
//! [`MuxRuntime`] into `PeerConnectionBuilder::with_runtime`: everything is delegated to the
//! stock `TokioRuntime` except `wrap_udp_socket`, which drops the placeholder socket the driver
//! just bound and hands back a [`VirtualSocket`] that
//! - sends through the one shared socket, and
//! - receives from a per-connection queue filled by the single receive loop, which routes every
//!   datagram:
//!   - a STUN Binding request by the local ufrag in its USERNAME attribute (RFC 8445 §7.2.2;
//!     the ufrag is ours, set per connection), and only once its MESSAGE-INTEGRITY verifies
//!     with that connection's ICE password ([`voicegate_core::stun`]). Only such a request
//!     binds the sender's address to the connection, and only an address no other connection
//!     holds: an address belongs to at most one call, and a stranger who knows a ufrag (or
//!     spoofs a victim's address) can neither take a route nor be let in;
//!   - a STUN response by its transaction id, recorded when the connection sent the request.
//!     webrtc 0.21.1 sends every server-reflexive Binding request with the same all-zero
//!     transaction id, so concurrent calls gathering through one STUN server share it; their
//!     requests leave the same socket, so the one answer (the shared port as the server saw it)
//!     is true for each of them, and a response goes to every connection that sent that id to
//!     that address;
//!   - anything else (DTLS, SRTP) by source address, from the routes bound above. Our own sends
//!     never bind a route.
//!
//! Sends are policed too: a connection's connectivity checks to addresses that have not proven
//! themselves (by an authenticated request) draw on a budget
//! ([`MuxLimits::unconfirmed_checks`]), so an offer full of third parties' addresses cannot
//! turn the server into a STUN reflector.
//!
//! The driver keys its sockets, and the host candidate it gathers, by the placeholder's address
//! (`127.0.0.1:<ephemeral>`), never by the virtual socket's; the answer's candidates are
//! therefore rewritten to the shared port ([`crate::peer`]). The ICE core only ever sees the
//! placeholder as the local half of its pairs, consistently, so connectivity checks, consent and
//! DTLS work unchanged. This leans on how the driver binds sockets in 0.21.1; the integration
//! tests pin it (concurrent calls over one port, mappings released on close).
//!
//! Failure: the receive loop (on a media worker in the server, see [`Receiver`]) survives
//! transient socket errors (an ICMP unreachable from a vanished browser surfaces as
//! `ConnectionRefused`). A full per-connection queue drops the datagram and counts it, like a
//! congested network would.

use bytes::Bytes;
use secrecy::{ExposeSecret, SecretSlice};
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
use voicegate_core::stun::{self, BindingRequest, TransactionId};
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, RecvMeta, Runtime,
    TokioRuntime, Transmit,
};

/// Why the shared port could not be opened. The HTTP edge adds the address and the keys that
/// chose it.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    /// The UDP socket could not be created, configured or bound at `step` (the address is in
    /// use, not one of this host's, or not permitted).
    #[error("{step}: {source}")]
    Socket {
        /// What was being done: `socket`, `bind`, `nonblocking`, `local address`, `clone`.
        step: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The receive loop could not start (its runtime, its socket registration or its thread:
    /// the process is out of threads or file descriptors). Without it nothing is ever received,
    /// so the port is not opened at all rather than opened deaf.
    #[error("receive loop: {0}")]
    ReceiveLoop(#[source] io::Error),
}

/// Datagrams queued per connection before the newest are dropped: over 5 s of 20 ms audio.
const CONN_QUEUE: usize = 256;

/// Kernel buffers for the shared socket: hundreds of calls share it.
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Largest datagram we accept (above any path MTU).
const MAX_DATAGRAM: usize = 2048;

/// How long a check we sent waits for its response's route (STUN gives up after ~8 s,
/// RFC 8489 §6.2.1; ICE checks much sooner).
const TRANSACTION_TTL: Duration = Duration::from_secs(10);

/// Limits of the shared port.
#[derive(Debug, Clone, Copy)]
pub struct MuxLimits {
    /// Connectivity checks one connection may send to addresses that have not sent it an
    /// authenticated check (its candidates from the offer); beyond it, checks are dropped.
    pub unconfirmed_checks: u32,
}

impl Default for MuxLimits {
    fn default() -> Self {
        MuxLimits {
            unconfirmed_checks: 100,
        }
    }
}

struct Datagram {
    data: Bytes,
    from: SocketAddr,
    /// An authenticated check that nominates its pair (see [`ConnShared::kick`]).
    nominates: bool,
}

/// One attached connection, as the receive loop sees it.
struct Attached {
    /// The virtual socket's token (a rebound socket replaces the entry).
    token: u64,
    /// Its receive queue.
    queue: mpsc::Sender<Datagram>,
    /// Its local ICE password, the key of the checks sent to it.
    password: Arc<SecretSlice<u8>>,
    /// What the connection shares with its runtime (authentication seen).
    shared: Arc<ConnShared>,
}

/// Routing state, shared by the receive loop and the connections.
#[derive(Default)]
struct Table {
    /// Connection id → the connection.
    conns: HashMap<u64, Attached>,
    /// Local ICE ufrag → connection id.
    by_ufrag: HashMap<String, u64>,
    /// Remote address → connection id: bound by authenticated checks only.
    by_addr: HashMap<SocketAddr, u64>,
    /// Transaction id of a request we sent → who waits for its response.
    by_transaction: HashMap<TransactionId, Waiters>,
    /// Prune `by_transaction` when it grows past this.
    prune_at: usize,
}

/// The connections waiting for the response to one transaction id, sent to one address.
/// Almost always one; more only when a stack reuses an id (see the module's notes).
struct Waiters {
    to: SocketAddr,
    /// The latest send.
    at: Instant,
    first: u64,
    /// Further connections that sent the same id to the same address (empty: no allocation).
    more: Vec<u64>,
}

impl Waiters {
    fn includes(&self, conn: u64) -> bool {
        self.first == conn || self.more.contains(&conn)
    }

    /// Drops `conn`; whether anyone is left.
    fn forget(&mut self, conn: u64) -> bool {
        self.more.retain(|c| *c != conn);
        if self.first == conn {
            match self.more.pop() {
                Some(next) => self.first = next,
                None => return false,
            }
        }
        true
    }
}

impl Table {
    fn remember_transaction(&mut self, id: TransactionId, conn: u64, to: SocketAddr, now: Instant) {
        if self.by_transaction.len() >= self.prune_at.max(1024) {
            self.by_transaction
                .retain(|_, w| now.duration_since(w.at) < TRANSACTION_TTL);
            // Amortised: the next pass comes after as many inserts as entries survived.
            self.prune_at = self.by_transaction.len() * 2;
        }
        match self.by_transaction.get_mut(&id) {
            Some(w) if w.to == to && now.duration_since(w.at) < TRANSACTION_TTL => {
                w.at = now;
                if !w.includes(conn) {
                    w.more.push(conn);
                }
            }
            _ => {
                self.by_transaction.insert(
                    id,
                    Waiters {
                        to,
                        at: now,
                        first: conn,
                        more: Vec::new(),
                    },
                );
            }
        }
    }

    /// Who gets a response with this id from `from`: the waiters, taken out of the table.
    fn take_waiters(&mut self, id: &TransactionId, from: SocketAddr) -> Option<Waiters> {
        match self.by_transaction.get(id) {
            Some(w) if w.to == from => self.by_transaction.remove(id),
            _ => None,
        }
    }
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
    /// Binding requests naming a call whose MESSAGE-INTEGRITY did not verify (or was missing).
    pub rx_stun_unauthenticated: u64,
    /// Authenticated requests from an address another call holds (refused).
    pub rx_addr_conflicts: u64,
    /// Connectivity checks not sent because a call's budget for unconfirmed addresses ran out.
    pub tx_checks_over_budget: u64,
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
    /// Checks in flight whose responses are routed by transaction id.
    pub transactions: usize,
}

/// The shared socket and its routing.
pub struct UdpMux {
    /// Sending side (non-blocking).
    socket: UdpSocket,
    local_addr: SocketAddr,
    /// The kernel's receive and send buffers for the socket as it reports them (Linux doubles
    /// what it grants, up to `net.core.rmem_max` / `wmem_max`).
    buffers: (usize, usize),
    table: Mutex<Table>,
    limits: MuxLimits,
    next_id: AtomicU64,
    next_token: AtomicU64,
    rx: AtomicU64,
    rx_unroutable: AtomicU64,
    rx_queue_full: AtomicU64,
    tx: AtomicU64,
    tx_dropped: AtomicU64,
    rx_stun_unauthenticated: AtomicU64,
    rx_addr_conflicts: AtomicU64,
    tx_checks_over_budget: AtomicU64,
}

impl fmt::Debug for UdpMux {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UdpMux({})", self.local_addr)
    }
}

impl UdpMux {
    /// Binds the shared socket and starts the receive loop on its own thread.
    pub fn bind(addr: SocketAddr, limits: MuxLimits) -> Result<Arc<Self>, MuxError> {
        Self::bind_with(addr, limits, Receiver::on_own_thread)
    }

    /// Binds the shared socket and hands its receive side to `receive`, which starts the loop
    /// where the caller wants it (the server runs it on a media worker; see [`Receiver`]). An
    /// error from `receive` is an error of the bind: the port is not opened deaf.
    pub fn bind_with(
        addr: SocketAddr,
        limits: MuxLimits,
        receive: impl FnOnce(Receiver) -> Result<(), MuxError>,
    ) -> Result<Arc<Self>, MuxError> {
        use socket2::{Domain, Protocol, Socket, Type};
        let at = |step| move |source| MuxError::Socket { step, source };
        let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
            .map_err(at("socket"))?;
        // Best effort: the kernel caps these at its configured maximum.
        let _ = sock.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
        let _ = sock.set_send_buffer_size(SOCKET_BUFFER_BYTES);
        let buffers = (
            sock.recv_buffer_size().unwrap_or(0),
            sock.send_buffer_size().unwrap_or(0),
        );
        sock.bind(&addr.into()).map_err(at("bind"))?;
        sock.set_nonblocking(true).map_err(at("nonblocking"))?;
        let socket: UdpSocket = sock.into();
        let local_addr = socket.local_addr().map_err(at("local address"))?;
        let recv_socket = socket.try_clone().map_err(at("clone"))?;
        let mux = Arc::new(UdpMux {
            socket,
            local_addr,
            buffers,
            table: Mutex::new(Table::default()),
            limits,
            next_id: AtomicU64::new(1),
            next_token: AtomicU64::new(1),
            rx: AtomicU64::new(0),
            rx_unroutable: AtomicU64::new(0),
            rx_queue_full: AtomicU64::new(0),
            tx: AtomicU64::new(0),
            tx_dropped: AtomicU64::new(0),
            rx_stun_unauthenticated: AtomicU64::new(0),
            rx_addr_conflicts: AtomicU64::new(0),
            tx_checks_over_budget: AtomicU64::new(0),
        });
        receive(Receiver {
            mux: Arc::downgrade(&mux),
            socket: recv_socket,
        })?;
        Ok(mux)
    }

    /// The address the shared socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The socket's receive and send buffers as the kernel reports them, and whether the kernel
    /// granted less than asked for ([`SOCKET_BUFFER_BYTES`] each): its `net.core.rmem_max` /
    /// `wmem_max` cap them, and a burst across hundreds of calls then overflows a small one,
    /// dropping datagrams before any counter of ours sees them.
    pub fn socket_buffers(&self) -> (usize, usize, bool) {
        let (rx, tx) = self.buffers;
        // Linux reports twice what it granted (the rest is its bookkeeping).
        (
            rx,
            tx,
            rx / 2 < SOCKET_BUFFER_BYTES || tx / 2 < SOCKET_BUFFER_BYTES,
        )
    }

    /// Counters so far.
    pub fn stats(&self) -> MuxStats {
        MuxStats {
            rx: self.rx.load(Ordering::Relaxed),
            rx_unroutable: self.rx_unroutable.load(Ordering::Relaxed),
            rx_queue_full: self.rx_queue_full.load(Ordering::Relaxed),
            tx: self.tx.load(Ordering::Relaxed),
            tx_dropped: self.tx_dropped.load(Ordering::Relaxed),
            rx_stun_unauthenticated: self.rx_stun_unauthenticated.load(Ordering::Relaxed),
            rx_addr_conflicts: self.rx_addr_conflicts.load(Ordering::Relaxed),
            tx_checks_over_budget: self.tx_checks_over_budget.load(Ordering::Relaxed),
        }
    }

    /// How many routes exist; all zero once every call is released.
    pub fn tables(&self) -> MuxTables {
        let t = self.lock();
        MuxTables {
            conns: t.conns.len(),
            ufrags: t.by_ufrag.len(),
            addrs: t.by_addr.len(),
            transactions: t.by_transaction.len(),
        }
    }

    /// A runtime for one connection. Checks reach it once its local ICE credentials are known
    /// ([`MuxRuntime::set_credentials`]): the stack makes them with the answer, and new ones at
    /// each ICE restart.
    pub fn connection_runtime(self: &Arc<Self>) -> Arc<MuxRuntime> {
        Arc::new(MuxRuntime {
            mux: self.clone(),
            conn: Arc::new(ConnShared {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                credentials: Mutex::new(Credentials::default()),
                placeholder: Mutex::new(None),
                authenticated: std::sync::atomic::AtomicBool::new(false),
                kick: std::sync::atomic::AtomicBool::new(false),
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
        let kind = stun::classify(packet);
        // A check is authenticated before the routing lock is taken for delivery.
        let checked = match kind {
            stun::Kind::BindingRequest => self.route_check(packet, from),
            _ => None,
        };
        let nominates = checked.is_some_and(|(_, n)| n);
        let checked = checked.map(|(id, _)| id);
        let mut t = self.lock();
        let (target, shared) = match kind {
            stun::Kind::BindingRequest => (checked, None),
            stun::Kind::Response(txid) => match t.take_waiters(&txid, from) {
                Some(w) => (Some(w.first), Some(w.more)),
                None => (t.by_addr.get(&from).copied(), None),
            },
            stun::Kind::OtherStun | stun::Kind::NotStun => (t.by_addr.get(&from).copied(), None),
        };
        let Some(conn) = target.and_then(|id| t.conns.get(&id)) else {
            self.rx_unroutable.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(%from, len = packet.len(), "datagram matches no call");
            return;
        };
        let data = Bytes::copy_from_slice(packet);
        for id in shared.into_iter().flatten() {
            if let Some(other) = t.conns.get(&id) {
                self.deliver(other, data.clone(), from, false);
            }
        }
        self.deliver(conn, data, from, nominates);
    }

    fn deliver(&self, conn: &Attached, data: Bytes, from: SocketAddr, nominates: bool) {
        let datagram = Datagram {
            data,
            from,
            nominates,
        };
        if conn.queue.try_send(datagram).is_err() {
            self.rx_queue_full.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Routes a connectivity check: to the connection its USERNAME names, only if its
    /// MESSAGE-INTEGRITY verifies with that connection's password; binds `from` to the
    /// connection unless another one holds it. Returns the connection and whether the check
    /// nominates its pair.
    fn route_check(&self, packet: &[u8], from: SocketAddr) -> Option<(u64, bool)> {
        let request = BindingRequest::parse(packet)?;
        let (id, password, shared) = {
            let t = self.lock();
            let id = *t.by_ufrag.get(request.local_ufrag)?;
            let conn = t.conns.get(&id)?;
            (id, conn.password.clone(), conn.shared.clone())
        };
        // The HMAC runs outside the lock: sends and other calls' datagrams do not wait on it.
        if !request.verify(password.expose_secret()) {
            self.rx_stun_unauthenticated.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%from, "connectivity check with a wrong or missing MESSAGE-INTEGRITY dropped");
            return None;
        }
        let mut t = self.lock();
        match t.by_addr.get(&from) {
            Some(owner) if *owner == id => {}
            Some(_) => {
                self.rx_addr_conflicts.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%from, "authenticated check from an address another call holds dropped");
                return None;
            }
            None => {
                // Only a live connection gets a route (it may have detached meanwhile).
                if !t.conns.contains_key(&id) {
                    return None;
                }
                t.by_addr.insert(from, id);
            }
        }
        shared.authenticated.store(true, Ordering::Relaxed);
        Some((id, request.nominates))
    }

    /// Called for every datagram a connection sends: a connectivity check's transaction is
    /// remembered (its response routes by it), and checks to addresses that have not proven
    /// themselves draw on the connection's budget. Returns whether to send.
    fn before_send(&self, id: u64, budget: &AtomicU64, packet: &[u8], to: SocketAddr) -> bool {
        if stun::classify(packet) != stun::Kind::BindingRequest {
            return true;
        }
        let mut t = self.lock();
        if t.by_addr.get(&to) != Some(&id) {
            let left =
                budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1));
            if left.is_err() {
                self.tx_checks_over_budget.fetch_add(1, Ordering::Relaxed);
                return false;
            }
        }
        let mut txid = [0u8; 12];
        txid.copy_from_slice(&packet[8..20]);
        t.remember_transaction(txid, id, to, Instant::now());
        true
    }

    fn attach(&self, conn: &Arc<ConnShared>, token: u64, queue: mpsc::Sender<Datagram>) {
        let mut t = self.lock();
        let credentials = conn.credentials();
        t.conns.insert(
            conn.id,
            Attached {
                token,
                queue,
                password: credentials.password,
                shared: conn.clone(),
            },
        );
        if !credentials.ufrag.is_empty() {
            t.by_ufrag.insert(credentials.ufrag, conn.id);
        }
    }

    /// Gives connection `conn` new local ICE credentials: checks naming its previous ufrag are
    /// no longer routed, checks naming the new one are verified with the new password.
    fn rekey(&self, conn: &ConnShared, ufrag: &str, password: &str) {
        let credentials = Credentials {
            ufrag: ufrag.to_owned(),
            password: Arc::new(SecretSlice::from(password.as_bytes().to_vec())),
        };
        let mut t = self.lock();
        *conn.credentials.lock().unwrap_or_else(|p| p.into_inner()) = credentials.clone();
        let Some(attached) = t.conns.get_mut(&conn.id) else {
            // Not attached yet: attach() reads the new credentials.
            return;
        };
        attached.password = credentials.password;
        t.by_ufrag.retain(|_, v| *v != conn.id);
        t.by_ufrag.insert(credentials.ufrag, conn.id);
        // An ICE restart: the caller's addresses are proven again by the new generation's
        // checks (a caller that moved must not leave its old address routed to the call).
        t.by_addr.retain(|_, v| *v != conn.id);
    }

    /// Called when a virtual socket is dropped (the driver ended or rebound).
    fn detach(&self, id: u64, token: u64) {
        let mut t = self.lock();
        if t.conns.get(&id).map(|c| c.token) != Some(token) {
            // A newer socket of the same connection replaced this one.
            return;
        }
        t.conns.remove(&id);
        t.by_ufrag.retain(|_, v| *v != id);
        t.by_addr.retain(|_, v| *v != id);
        t.by_transaction.retain(|_, w| w.forget(id));
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

/// The shared socket's receive side, not yet running. The loop reads every datagram and routes
/// it to its connection's queue; a connection whose driver runs on the same thread as the loop
/// gets it without a cross-thread wake-up.
pub struct Receiver {
    mux: Weak<UdpMux>,
    socket: UdpSocket,
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Receiver")
    }
}

impl Receiver {
    /// Registers the socket with the tokio runtime this is called in and returns the loop, to be
    /// spawned on that same runtime. It ends when the mux is dropped.
    pub fn register(self) -> Result<impl Future<Output = ()> + Send + 'static, MuxError> {
        let socket = tokio::net::UdpSocket::from_std(self.socket).map_err(MuxError::ReceiveLoop)?;
        Ok(receive_loop(self.mux, socket))
    }

    /// Runs the loop on a thread of its own, with its own runtime.
    pub fn on_own_thread(self) -> Result<(), MuxError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(MuxError::ReceiveLoop)?;
        let receive = {
            let _in_runtime = rt.enter();
            self.register()?
        };
        std::thread::Builder::new()
            .name("vg-udp-recv".into())
            .spawn(move || rt.block_on(receive))
            .map_err(MuxError::ReceiveLoop)?;
        Ok(())
    }
}

async fn receive_loop(mux: Weak<UdpMux>, socket: tokio::net::UdpSocket) {
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

/// What a connection's runtime and its virtual socket share.
#[derive(Debug)]
struct ConnShared {
    id: u64,
    /// Its local ICE credentials (empty until the answer is made).
    credentials: Mutex<Credentials>,
    /// Set by the first connectivity check that verified: the caller holds our answer.
    authenticated: std::sync::atomic::AtomicBool,
    /// The address of the placeholder socket the driver bound: what its host candidate names.
    placeholder: Mutex<Option<SocketAddr>>,
    /// Set when the driver reads an authenticated check that nominates a pair; the driver's
    /// next timer then fires at once. Working around rtc 0.21.1: when ICE selects the pair, its
    /// DTLS handler starts the handshake (we answer `a=setup:active`, so we send the
    /// ClientHello) but leaves the ClientHello in the DTLS endpoint's queue, which only the
    /// connection's timer drains (`handle_timeout`), so the handshake waited for the next ICE
    /// check, 50 ms later. The driver's timer is this runtime's [`Runtime::sleep`]: the one
    /// made right after the nominating check was handled (the driver reads, handles what it
    /// read, then sleeps, all on its one task) returns at once. Costs one wake-up per
    /// nomination.
    kick: std::sync::atomic::AtomicBool,
}

/// A connection's local ICE credentials.
#[derive(Debug, Clone)]
struct Credentials {
    /// What checks sent to it name first in USERNAME.
    ufrag: String,
    /// The key of checks sent to it.
    password: Arc<SecretSlice<u8>>,
}

impl Default for Credentials {
    fn default() -> Self {
        Credentials {
            ufrag: String::new(),
            password: Arc::new(SecretSlice::from(Vec::new())),
        }
    }
}

impl ConnShared {
    fn credentials(&self) -> Credentials {
        self.credentials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A connection's runtime: tokio for everything, the shared socket for UDP.
#[derive(Debug)]
pub struct MuxRuntime {
    mux: Arc<UdpMux>,
    conn: Arc<ConnShared>,
    inner: TokioRuntime,
}

impl MuxRuntime {
    /// Makes `ufrag` and `password` the connection's local ICE credentials, as its latest
    /// answer gives them (the first answer, or an ICE restart's): only checks naming `ufrag` and
    /// signed with `password` reach it from now on.
    pub fn set_credentials(&self, ufrag: &str, password: &str) {
        self.mux.rekey(&self.conn, ufrag, password);
    }

    /// Whether an authenticated connectivity check has reached this connection: a caller that
    /// never sends one never received our answer (or is not a WebRTC peer at all).
    pub fn authenticated(&self) -> bool {
        self.conn.authenticated.load(Ordering::Relaxed)
    }

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
            conn: self.conn.clone(),
            id: self.conn.id,
            token,
            rx: Mutex::new(rx),
            check_budget: AtomicU64::new(u64::from(self.mux.limits.unconfirmed_checks)),
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
        if self.conn.kick.swap(false, Ordering::AcqRel) {
            return self.inner.sleep(Duration::ZERO);
        }
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
    /// What it shares with its connection's runtime (the kick).
    conn: Arc<ConnShared>,
    id: u64,
    token: u64,
    rx: Mutex<mpsc::Receiver<Datagram>>,
    /// Connectivity checks left for addresses that have not proven themselves.
    check_budget: AtomicU64,
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
        let contents = transmit.contents;
        if !self
            .mux
            .before_send(self.id, &self.check_budget, contents, to)
        {
            // Dropped like a congested network would: the stack retries or gives up.
            return Poll::Ready(Ok(contents.len()));
        }
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
            if d.nominates {
                self.conn.kick.store(true, Ordering::Release);
            }
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

    #[test]
    fn transactions_are_pruned_by_age() {
        let mut t = Table::default();
        let t0 = Instant::now();
        for i in 0..1024u32 {
            let mut id = [0u8; 12];
            id[..4].copy_from_slice(&i.to_be_bytes());
            t.remember_transaction(id, 1, SERVER, t0);
        }
        assert_eq!(t.by_transaction.len(), 1024);
        // The next insert, long after, prunes the stale ones.
        t.remember_transaction(
            [9; 12],
            2,
            SERVER,
            t0 + TRANSACTION_TTL + Duration::from_secs(1),
        );
        assert_eq!(t.by_transaction.len(), 1);
    }

    const SERVER: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 3478);

    fn waiting(t: &mut Table, id: &TransactionId, from: SocketAddr) -> Vec<u64> {
        let mut all: Vec<u64> = t
            .take_waiters(id, from)
            .map(|w| std::iter::once(w.first).chain(w.more).collect())
            .unwrap_or_default();
        all.sort_unstable();
        all
    }

    /// webrtc 0.21.1 gathers with an all-zero transaction id: calls gathering at once through
    /// one STUN server all get the (identical) response; it comes once, so nobody waits again.
    #[test]
    fn a_transaction_id_sent_by_several_connections_answers_them_all() {
        let mut t = Table::default();
        let now = Instant::now();
        for conn in [3, 1, 2, 1] {
            t.remember_transaction([0; 12], conn, SERVER, now);
        }
        assert_eq!(t.by_transaction.len(), 1);
        let elsewhere = SocketAddr::new(SERVER.ip(), 9);
        assert!(
            waiting(&mut t, &[0; 12], elsewhere).is_empty(),
            "wrong sender"
        );
        assert_eq!(waiting(&mut t, &[0; 12], SERVER), [1, 2, 3]);
        assert!(
            waiting(&mut t, &[0; 12], SERVER).is_empty(),
            "answered once"
        );
    }

    #[test]
    fn a_detached_connection_stops_waiting_and_the_others_still_do() {
        let mut t = Table::default();
        let now = Instant::now();
        for conn in [1, 2] {
            t.remember_transaction([0; 12], conn, SERVER, now);
        }
        t.remember_transaction([7; 12], 1, SERVER, now);
        t.by_transaction.retain(|_, w| w.forget(1));
        assert_eq!(
            t.by_transaction.len(),
            1,
            "conn 1's own transaction is gone"
        );
        assert_eq!(waiting(&mut t, &[0; 12], SERVER), [2]);
    }

    #[test]
    fn a_port_in_use_is_a_bind_error_with_its_cause() {
        let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = UdpMux::bind(addr, MuxLimits::default()).unwrap_err();
        assert!(
            matches!(&err, MuxError::Socket { step: "bind", source } if source.kind() == io::ErrorKind::AddrInUse),
            "{err:?}"
        );
        assert!(err.to_string().starts_with("bind: "), "{err}");
        assert!(std::error::Error::source(&err).is_some());
    }

    /// The workaround for the DTLS handshake that waited for the next ICE check: the driver's
    /// first timer after it read a nominating check fires at once, and only that one.
    #[tokio::test]
    async fn a_nominating_check_makes_the_next_timer_fire_at_once() {
        const PASSWORD: &[u8] = b"the-servers-ice-password";
        let mux = UdpMux::bind("127.0.0.1:0".parse().unwrap(), MuxLimits::default()).unwrap();
        let rt = mux.connection_runtime();
        let socket = rt
            .wrap_udp_socket(UdpSocket::bind("127.0.0.1:0").unwrap())
            .unwrap();
        rt.set_credentials("srvu", std::str::from_utf8(PASSWORD).unwrap());
        let caller = UdpSocket::bind("127.0.0.1:0").unwrap();
        let read_one = || {
            std::future::poll_fn(|cx| {
                let mut buf = [0u8; MAX_DATAGRAM];
                let mut bufs = [IoSliceMut::new(&mut buf)];
                let mut meta = [RecvMeta::default()];
                socket.poll_recv(cx, &mut bufs, &mut meta)
            })
        };
        let fires_at_once = |rt: &Arc<MuxRuntime>| {
            let sleep = rt.sleep(Duration::from_secs(3600));
            async move {
                tokio::time::timeout(Duration::from_millis(100), sleep)
                    .await
                    .is_ok()
            }
        };
        let check = stun::binding_request([1; 12], "srvu:caller", Some(PASSWORD));
        caller.send_to(&check, mux.local_addr()).unwrap();
        assert_eq!(read_one().await.unwrap(), 1);
        assert!(!fires_at_once(&rt).await, "a plain check changes nothing");
        let nominating = stun::nominating_request([2; 12], "srvu:caller", PASSWORD);
        caller.send_to(&nominating, mux.local_addr()).unwrap();
        // Not before the driver has read it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!fires_at_once(&rt).await, "the driver has not read it yet");
        assert_eq!(read_one().await.unwrap(), 1);
        assert!(fires_at_once(&rt).await, "the timer after the nomination");
        assert!(!fires_at_once(&rt).await, "only that one");
        // A nomination that does not authenticate is not delivered at all.
        let forged = stun::nominating_request([3; 12], "srvu:caller", b"a-guessed-password");
        caller.send_to(&forged, mux.local_addr()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while mux.stats().rx_stun_unauthenticated == 0 {
            assert!(Instant::now() < deadline, "the forged check was never seen");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!fires_at_once(&rt).await, "a forged nomination");
    }

    #[test]
    fn a_free_port_binds_and_receives() {
        let mux = UdpMux::bind("127.0.0.1:0".parse().unwrap(), MuxLimits::default()).unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.send_to(b"not stun", mux.local_addr()).unwrap();
        // The receive loop counts the datagram (unroutable: no connection claims it).
        let deadline = Instant::now() + Duration::from_secs(5);
        while mux.rx.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "the receive loop never ran");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
