//! The server under test: one already running (`--server`, `--pid`), or one the bench starts
//! itself (`--spawn <binary>`) on free loopback ports, optionally pinned to some cores, and
//! stops again after each step, so every step starts from a fresh process.

use anyhow::{Context as _, bail};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use voicegate_testkit::http;

/// A server to place calls against.
pub struct Target {
    /// Its HTTP address.
    pub http: SocketAddr,
    /// Its shared media (UDP) port, when the bench chose it.
    pub udp: Option<SocketAddr>,
    /// Its process, when known (for CPU and memory).
    pub pid: Option<u32>,
    child: Option<Child>,
}

/// How to get a server.
#[derive(Debug, Clone)]
pub enum Source {
    /// Already running.
    Running {
        /// HTTP address.
        http: SocketAddr,
        /// Its pid, if given.
        pid: Option<u32>,
    },
    /// Started by the bench.
    Spawn {
        /// The voicegate binary.
        binary: String,
        /// `taskset -c` CPU list for it.
        cpus: Option<String>,
        /// Extra `VOICEGATE__…` settings.
        env: Vec<(String, String)>,
        /// Which capacity and per-source limits it runs with.
        limits: Limits,
    },
}

/// The limits a spawned server runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limits {
    /// For the load generator, which places every call from one address: no per-source
    /// admission and no practical `calls.max`, so the figures are of the gateway's own work.
    Generator,
    /// The configuration's defaults, as a deployment runs them (the hostile step).
    Defaults,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Target {
    /// Connects to or starts the server and waits until it is ready.
    pub async fn start(source: &Source) -> anyhow::Result<Target> {
        match source {
            Source::Running { http, pid } => Ok(Target {
                http: *http,
                udp: None,
                pid: *pid,
                child: None,
            }),
            Source::Spawn {
                binary,
                cpus,
                env,
                limits,
            } => {
                let (http_port, udp_port) = (free_port()?, free_port()?);
                let mut cmd = match cpus {
                    Some(c) => {
                        let mut cmd = Command::new("taskset");
                        cmd.arg("-c").arg(c).arg(binary);
                        cmd
                    }
                    None => Command::new(binary),
                };
                cmd.env("VOICEGATE__HTTP__BIND", format!("127.0.0.1:{http_port}"))
                    .env("VOICEGATE__MEDIA__BIND_IP", "127.0.0.1")
                    .env("VOICEGATE__MEDIA__UDP_PORT", udp_port.to_string())
                    .env("VOICEGATE__CALLS__SHUTDOWN_GRACE_MS", "0")
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit());
                if *limits == Limits::Generator {
                    // The load generator is one source placing every call.
                    cmd.env("VOICEGATE__CALLS__MAX", "100000")
                        .env("VOICEGATE__ADMISSION__OFFERS_PER_IP_PER_S", "0")
                        .env("VOICEGATE__ADMISSION__CALLS_PER_IP", "0");
                }
                for (k, v) in env {
                    cmd.env(k, v);
                }
                let child = cmd.spawn().with_context(|| format!("starting {binary}"))?;
                let mut target = Target {
                    http: format!("127.0.0.1:{http_port}").parse()?,
                    udp: Some(format!("127.0.0.1:{udp_port}").parse()?),
                    pid: Some(child.id()),
                    child: Some(child),
                };
                let t0 = Instant::now();
                loop {
                    let ready = http::request(target.http, "GET", "/ready", &[], b"")
                        .await
                        .map(|r| r.status == 200)
                        .unwrap_or(false);
                    if ready {
                        break;
                    }
                    if let Some(status) = target
                        .child
                        .as_mut()
                        .and_then(|c| c.try_wait().ok().flatten())
                    {
                        bail!("{binary} exited at start: {status}");
                    }
                    if t0.elapsed() > Duration::from_secs(30) {
                        bail!("{binary} did not become ready in 30 s");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                // Let start-up work (engine threads, allocator warm-up) settle before idle figures.
                tokio::time::sleep(Duration::from_millis(500)).await;
                Ok(target)
            }
        }
    }

    /// CPU time (user + system, seconds) and resident memory (bytes), if the pid is known.
    pub fn usage(&self) -> anyhow::Result<Option<(f64, u64)>> {
        self.pid.map(proc_usage).transpose()
    }

    /// `/metrics` as series → value.
    pub async fn metrics(&self) -> anyhow::Result<HashMap<String, f64>> {
        let res = http::request(self.http, "GET", "/metrics", &[], b"").await?;
        if res.status != 200 {
            bail!("/metrics answered {}", res.status);
        }
        Ok(voicegate_testkit::without_node_label(&res.text())
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect())
    }

    /// Stops a spawned server (SIGTERM, then waits).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let t0 = Instant::now();
            while child.try_wait()?.is_none() {
                if t0.elapsed() > Duration::from_secs(10) {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("server did not stop within 10 s of SIGTERM");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// CPU time (user + system) in seconds and resident memory in bytes of a process.
pub fn proc_usage(pid: u32) -> anyhow::Result<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').context("bad /proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f[11].parse()?;
    let stime: u64 = f[12].parse()?;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm"))?;
    let rss_pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .context("bad statm")?
        .parse()?;
    let ticks = 100.0; // USER_HZ on Linux
    Ok(((utime + stime) as f64 / ticks, rss_pages * 4096))
}

/// Restricts this process (and the threads it starts afterwards) to `cpus` ("1", "0,2", "2-3").
pub fn pin_self(cpus: &str) -> anyhow::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set, filled with CPU_SET below.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for part in cpus.split(',') {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<usize>()?, b.trim().parse::<usize>()?),
            None => {
                let c = part.trim().parse::<usize>()?;
                (c, c)
            }
        };
        for c in a..=b {
            // SAFETY: c is checked against the set's capacity by the libc macro equivalent.
            unsafe { libc::CPU_SET(c, &mut set) };
        }
    }
    // SAFETY: pid 0 is this thread; set is a valid cpu_set_t of the size passed.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        bail!(
            "sched_setaffinity({cpus}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
