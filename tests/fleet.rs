//! A fleet on loopback: three voicegate processes (node ids a, b, c, each with its own HTTP and
//! UDP port) behind a real HAProxy running the shipped `deploy/haproxy/haproxy.cfg`, and real
//! WebRTC callers whose signaling goes through HAProxy while their media goes straight to the
//! node that answered.
//!
//! One story, in order: 30 echo calls spread over the nodes and are hung up through HAProxy on
//! their own nodes (a hangup sent straight to the wrong node gets 421); node c drains on SIGTERM
//! while offers keep coming (all of them land on a and b); node b is killed (its callers lose
//! media, the others do not notice, new offers still succeed). The figures it prints (offers/s
//! and answer latency through HAProxy vs straight to a node) are in BENCHMARKS.md.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use voicegate_core::call_id::CallId;
use voicegate_testkit::{ClientPeer, http};

const ECHO: &str = "/webrtc/v1/offer?mode=echo";
const HAPROXY: [&str; 2] = ["/usr/sbin/haproxy", "/usr/bin/haproxy"];
const SECOND: Duration = Duration::from_secs(1);
/// How long a draining node lets its calls go on.
const GRACE: Duration = Duration::from_secs(3);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Collects a child's output lines.
fn capture(child: &mut Child) -> Arc<Mutex<String>> {
    let log = Arc::new(Mutex::new(String::new()));
    for out in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
    }
    log
}

/// One voicegate node.
struct Node {
    id: &'static str,
    http: SocketAddr,
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Node {
    fn start(id: &'static str) -> Node {
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_voicegate"))
            .env("VOICEGATE__NODE__ID", id)
            .env("VOICEGATE__HTTP__BIND", http.to_string())
            .env("VOICEGATE__MEDIA__BIND_IP", "127.0.0.1")
            .env("VOICEGATE__MEDIA__UDP_PORT", free_port().to_string())
            .env("VOICEGATE__MEDIA__WORKERS", "1")
            .env("VOICEGATE__ASR__POCKETSPHINX__DECODERS", "1")
            .env(
                "VOICEGATE__CALLS__SHUTDOWN_GRACE_MS",
                GRACE.as_millis().to_string(),
            )
            // HAProxy forwards the caller's address; every caller here is 127.0.0.1, so the
            // per-source limits are off (they are the nodes' business, tested elsewhere).
            .env("VOICEGATE__HTTP__TRUSTED_PROXIES", "127.0.0.1")
            .env("VOICEGATE__ADMISSION__OFFERS_PER_IP_PER_S", "0")
            .env("VOICEGATE__ADMISSION__CALLS_PER_IP", "0")
            .env("VOICEGATE__LOG__FORMAT", "text")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("voicegate starts");
        let log = capture(&mut child);
        let t0 = Instant::now();
        while !log.lock().unwrap().contains("listening on") {
            assert!(
                t0.elapsed() < 30 * SECOND,
                "node {id} did not start:\n{}",
                log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Node {
            id,
            http,
            child,
            log,
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} node {}", self.id);
    }

    /// Waits for the process to exit; its exit code (None: killed by a signal).
    fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                t0.elapsed() < within,
                "node {} still running after {within:?}",
                self.id
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `/metrics` series (without the node label) → value.
    async fn metrics(&self) -> HashMap<String, f64> {
        let res = http::request(self.http, "GET", "/metrics", &[], b"")
            .await
            .unwrap();
        assert!(
            res.text()
                .contains(&format!("voicegate_node_info{{node=\"{}\"}} 1", self.id)),
            "node {} names itself on /metrics",
            self.id
        );
        voicegate_testkit::without_node_label(&res.text())
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect()
    }

    async fn hangups(&self) -> f64 {
        self.metrics()
            .await
            .get("voicegate_calls_total{reason=\"client-hangup\"}")
            .copied()
            .unwrap_or(0.0)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HAProxy with the shipped configuration, the nodes' addresses filled in.
struct Haproxy {
    addr: SocketAddr,
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Haproxy {
    fn start(binary: &str, nodes: &[&Node]) -> Haproxy {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/haproxy/haproxy.cfg");
        let mut cmd = Command::new(binary);
        cmd.args(["-db", "-f", config])
            .env("VG_LISTEN", addr.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for n in nodes {
            cmd.env(
                format!("VG_NODE_{}", n.id.to_ascii_uppercase()),
                n.http.to_string(),
            );
        }
        let mut child = cmd.spawn().expect("haproxy starts");
        let log = capture(&mut child);
        let t0 = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                t0.elapsed() < 10 * SECOND,
                "haproxy did not listen:\n{}",
                log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Haproxy { addr, child, log }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node_of(peer: &ClientPeer) -> String {
    CallId::parse(&peer.call_id)
        .and_then(|id| id.node("wrtc").map(str::to_owned))
        .unwrap_or_else(|| panic!("call id without a node: {}", peer.call_id))
}

/// Places `n` echo calls at `addr`, `at_once` at a time; each connects. Returns them and how
/// long placing them took.
async fn place(addr: SocketAddr, n: usize, at_once: usize) -> (Vec<ClientPeer>, Duration) {
    let t0 = Instant::now();
    let mut peers = Vec::with_capacity(n);
    while peers.len() < n {
        let batch = at_once.min(n - peers.len());
        let placed =
            futures_util::future::join_all((0..batch).map(|_| ClientPeer::call(addr, ECHO))).await;
        for p in placed {
            peers.push(p.expect("the offer is answered"));
        }
    }
    let took = t0.elapsed();
    for p in &peers {
        p.wait_connected(10 * SECOND)
            .await
            .unwrap_or_else(|e| panic!("call {} did not connect: {e}", p.call_id));
    }
    (peers, took)
}

/// Each peer sends a tone and hears it back.
async fn echo_all(peers: &[&ClientPeer]) {
    let before: Vec<usize> = peers.iter().map(|p| p.received_count()).collect();
    futures_util::future::join_all(peers.iter().map(|p| p.send_tone(440.0, 15))).await;
    let t0 = Instant::now();
    loop {
        let silent: Vec<&str> = peers
            .iter()
            .zip(&before)
            .filter(|(p, b)| p.received_count() <= **b)
            .map(|(p, _)| p.call_id.as_str())
            .collect();
        if silent.is_empty() {
            return;
        }
        assert!(t0.elapsed() < 5 * SECOND, "no echo for {silent:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_behind_haproxy_routes_calls_to_their_nodes_drains_and_survives_a_lost_node() {
    let Some(binary) = HAPROXY
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        eprintln!("SKIPPED: haproxy is not installed; scripts/setup.sh --test installs it");
        return;
    };
    let a = Node::start("a");
    let mut b = Node::start("b");
    let mut c = Node::start("c");
    let proxy = Haproxy::start(binary, &[&a, &b, &c]);

    // 1. Thirty calls through HAProxy spread over the nodes, connect straight to them and echo.
    let (calls, took) = place(proxy.addr, 30, 10).await;
    let mut per_node: HashMap<String, Vec<&ClientPeer>> = HashMap::new();
    for p in &calls {
        per_node.entry(node_of(p)).or_default().push(p);
    }
    for n in ["a", "b", "c"] {
        let held = per_node.get(n).map_or(0, Vec::len);
        let spread: Vec<(&String, usize)> = per_node.iter().map(|(k, v)| (k, v.len())).collect();
        assert!(held >= 5, "node {n} took {held} of 30: {spread:?}");
    }
    echo_all(&calls.iter().collect::<Vec<_>>()).await;
    // Answer latency, one offer at a time: through HAProxy, and straight to a node.
    let mut through = Vec::new();
    let mut straight = Vec::new();
    for _ in 0..10 {
        for (addr, into) in [(proxy.addr, &mut through), (a.http, &mut straight)] {
            let (one, _) = place(addr, 1, 1).await;
            into.push(one[0].answer_time);
            let location = one[0].location.clone().expect("Location");
            let _ = http::request(addr, "DELETE", &location, &[], b"").await;
            one[0].close().await;
        }
    }
    eprintln!(
        "fleet: 30 offers through haproxy (10 at a time) in {:.2} s = {:.1} offers/s; answer p50 \
         one at a time: through haproxy {:.1} ms, straight to a node {:.1} ms",
        took.as_secs_f64(),
        30.0 / took.as_secs_f64(),
        median(through).as_secs_f64() * 1e3,
        median(straight).as_secs_f64() * 1e3
    );

    // A hangup sent straight to a node that does not hold the call: 421, and the call goes on.
    let victim = per_node["a"][0];
    let location = victim.location.clone().expect("Location");
    let wrong = http::request(b.http, "DELETE", &location, &[], b"")
        .await
        .unwrap();
    assert_eq!(wrong.status, 421, "{}", wrong.text());
    assert!(wrong.text().contains("node a"), "{}", wrong.text());
    let hangup = http::request(
        c.http,
        "POST",
        &format!("/webrtc/v1/hangup?call_id={}", victim.call_id),
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(
        hangup.status,
        421,
        "the hangup endpoint too: {}",
        hangup.text()
    );
    echo_all(&[victim]).await;
    // An id of the node's own that it does not hold: 204, as a repeated hangup is.
    let unknown = format!("/webrtc/v1/calls/wrtc-a-{}", "0".repeat(32));
    let res = http::request(proxy.addr, "DELETE", &unknown, &[], b"")
        .await
        .unwrap();
    assert_eq!(res.status, 204, "{}", res.text());

    // Every hangup through HAProxy ends the call on its own node.
    let before: HashMap<&str, f64> = HashMap::from([
        ("a", a.hangups().await),
        ("b", b.hangups().await),
        ("c", c.hangups().await),
    ]);
    for (i, p) in calls.iter().enumerate() {
        let location = p.location.clone().expect("Location");
        let res = if i % 2 == 0 {
            http::request(proxy.addr, "DELETE", &location, &[], b"").await
        } else {
            let path = format!("/webrtc/v1/hangup?call_id={}", p.call_id);
            http::request(proxy.addr, "POST", &path, &[], b"").await
        }
        .unwrap();
        assert_eq!(res.status, 204, "{}: {}", p.call_id, res.text());
    }
    for node in [&a, &b, &c] {
        let want = before[node.id] + per_node[node.id].len() as f64;
        let got = node.hangups().await;
        assert_eq!(got, want, "node {}: client hangups", node.id);
    }
    for p in &calls {
        p.close().await;
    }

    // 2. Drain: node c gets SIGTERM while its calls run; offers meanwhile all land on a and b.
    let (calls, _) = place(proxy.addr, 9, 9).await;
    let on = |n: &str| calls.iter().filter(|p| node_of(p) == n).collect::<Vec<_>>();
    let (on_a, on_b, on_c) = (on("a"), on("b"), on("c"));
    assert!(!on_c.is_empty(), "c holds calls before its drain");
    let drain_started = Instant::now();
    c.signal("-TERM");
    let mut during = Vec::new();
    while drain_started.elapsed() < GRACE {
        let p = ClientPeer::call(proxy.addr, ECHO)
            .await
            .expect("an offer during the drain succeeds");
        assert_ne!(
            node_of(&p),
            "c",
            "the draining node got an offer {:?} into its drain",
            drain_started.elapsed()
        );
        during.push(p);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        during.len() >= 5,
        "offers during the drain: {}",
        during.len()
    );
    assert!(
        proxy.log.lock().unwrap().contains("offers/c is DOWN"),
        "the health check took the draining node out:\n{}",
        proxy.log.lock().unwrap()
    );
    let code = c.wait_exit(GRACE + 10 * SECOND);
    assert_eq!(code, Some(0), "c exits cleanly:\n{}", c.log.lock().unwrap());
    let drained = c.log.lock().unwrap().clone();
    for p in &on_c {
        assert!(
            drained
                .lines()
                .any(|l| l.contains(&p.call_id) && l.contains("reason=shutdown")),
            "{} ended by the drain:\n{drained}",
            p.call_id
        );
    }
    let others: Vec<&ClientPeer> = on_a.iter().chain(&on_b).copied().chain(&during).collect();
    for p in &others {
        assert!(p.is_connected(), "{} untouched by c's drain", p.call_id);
    }
    echo_all(&others).await;

    // 3. Node loss: b is killed. Its callers lose media; a's calls go on; new offers succeed.
    b.signal("-KILL");
    assert_eq!(b.wait_exit(5 * SECOND), None, "killed by the signal");
    let lost: Vec<&ClientPeer> = others
        .iter()
        .copied()
        .filter(|p| node_of(p) == "b")
        .collect();
    let kept: Vec<&ClientPeer> = others
        .iter()
        .copied()
        .filter(|p| node_of(p) == "a")
        .collect();
    assert!(!lost.is_empty() && !kept.is_empty());
    let t0 = Instant::now();
    while lost.iter().any(|p| p.is_connected()) {
        assert!(
            t0.elapsed() < 15 * SECOND,
            "b's callers still see a connection"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for p in &kept {
        assert!(p.is_connected(), "{} untouched by b's loss", p.call_id);
    }
    echo_all(&kept).await;
    let (after, _) = place(proxy.addr, 3, 1).await;
    for p in &after {
        assert_eq!(node_of(p), "a", "only a is left");
    }
    echo_all(&after.iter().collect::<Vec<_>>()).await;
    for p in others.iter().copied().chain(&after) {
        p.close().await;
    }
    // Every line a node logged names it.
    let log = a.log.lock().unwrap().clone();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        assert!(line.ends_with(" node=a"), "a line without the node: {line}");
    }
}
