//! Who is calling, and whether one source may place another call now.
//!
//! An unauthenticated caller can post offers as fast as its network allows; each costs a peer
//! connection and a call slot until it connects or times out. Admission bounds what one source
//! can take, so a flood from one address cannot fill `calls.max` for everyone:
//! - [`client_ip`]: the caller's address. `X-Forwarded-For` is honoured only when the request
//!   came from a configured trusted proxy (anyone else could write any address there), and
//!   then the rightmost address that is not itself a trusted proxy is the client
//!   (the entries to its left were written by the client and prove nothing).
//! - [`SourceKey`]: what limits count by: an IPv4 address, or an IPv6 /64 (one subscriber
//!   usually holds a whole /64, so counting single IPv6 addresses would let one host rotate
//!   through 2^64 of them).
//! - [`SourceKey::prefix`]: the wider network an IPv6 source belongs to, its /48. A /48 is
//!   what a site or a tunnel broker hands out (often for free), and it holds 65 536 /64s: each
//!   per-source limit alone would let its holder fill `calls.max` from a few dozen of them. So
//!   the limits also count by /48, with larger allowances. IPv4 sources have no wider tier:
//!   addresses are scarce, and a /24 is often a carrier's NAT pool shared by many callers.
//! - [`RateLimiter`]: a token bucket per key for offers per second, in bounded memory.
//! - [`forwarded_prefix`]: the path a trusted proxy mounts voicegate under
//!   (`X-Forwarded-Prefix`), so the call's `Location` leads back through it.
//!
//! Time is passed in; nothing here reads a clock.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// An address range: an address and a prefix length (`10.0.0.0/8`, `::1/128`, or a bare
/// address for one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

/// A malformed range in the configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not an address or a range (want e.g. 10.0.0.0/8, 192.0.2.7 or fd00::/8)")]
pub struct IpNetError(pub String);

impl std::str::FromStr for IpNet {
    type Err = IpNetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IpNetError(s.to_owned());
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(IpNet { addr, prefix })
    }
}

impl IpNet {
    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack listener reports) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client's address: `peer` (the TCP peer) unless it is a trusted proxy, in which case the
/// rightmost `X-Forwarded-For` entry that is not a trusted proxy (or `peer` when there is
/// none, or an entry is unreadable: a proxy we trust wrote garbage, so we stop trusting the
/// header there).
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let Some(header) = forwarded_for else {
        return peer;
    };
    let mut client = peer;
    // Bounded: a header is at most a few KB, and we stop at the first untrusted entry.
    for entry in header.rsplit(',') {
        let Some(ip) = parse_forwarded_entry(entry) else {
            break;
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_forwarded_entry(entry: &str) -> Option<IpAddr> {
    let e = entry.trim();
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = e.parse::<std::net::SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    e.strip_prefix('[')
        .and_then(|r| r.split_once(']'))
        .and_then(|(a, _)| a.parse::<Ipv6Addr>().ok())
        .map(|a| canonical(IpAddr::V6(a)))
}

/// Longest path prefix taken from `X-Forwarded-Prefix`.
pub const MAX_PREFIX_BYTES: usize = 256;

/// The path prefix in a trusted proxy's `X-Forwarded-Prefix` (the caller must check the
/// request came from one), without its trailing `/`; `None` when there is none or it is not a
/// plain absolute path: it must start with one `/` (never `//`, which a browser would read as
/// another host), hold only unreserved characters and `/`, no `.` or `..` segment, and fit
/// [`MAX_PREFIX_BYTES`].
pub fn forwarded_prefix(value: &str) -> Option<&str> {
    let p = value.trim().trim_end_matches('/');
    let plain = p.len() <= MAX_PREFIX_BYTES
        && p.starts_with('/')
        && !p.starts_with("//")
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~/".contains(&b))
        && p.split('/').all(|seg| seg != "." && seg != "..");
    (plain && !p.is_empty()).then_some(p)
}

/// What per-source limits count by (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKey {
    /// An IPv4 address.
    V4(u32),
    /// The upper 64 bits of an IPv6 address.
    V6(u64),
    /// The upper 48 bits of an IPv6 address (a [`SourceKey::prefix`]), in the upper 48 bits.
    V6Prefix(u64),
}

impl SourceKey {
    /// The key of `ip`: the address for IPv4, the /64 for IPv6.
    pub fn of(ip: IpAddr) -> SourceKey {
        match canonical(ip) {
            IpAddr::V4(v4) => SourceKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => SourceKey::V6((u128::from(v6) >> 64) as u64),
        }
    }

    /// The IPv6 /48 this source belongs to; `None` for IPv4 (see the module doc).
    pub fn prefix(self) -> Option<SourceKey> {
        match self {
            SourceKey::V4(_) => None,
            SourceKey::V6(net) | SourceKey::V6Prefix(net) => {
                Some(SourceKey::V6Prefix(net & !0xffff))
            }
        }
    }
}

/// Offers per second per source, as a token bucket: `burst` offers at once, refilled at
/// `per_second`. At most `max_sources` sources are tracked; past that, the sources whose bucket
/// is full again (idle long enough to have forgotten them) are dropped first, then the whole
/// table (which lets some sources start afresh; it never refuses a source it does not know).
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    max_sources: usize,
    buckets: HashMap<SourceKey, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Seconds since it was last counted.
    fn since(&self, now: Instant) -> f64 {
        now.saturating_duration_since(self.at).as_secs_f64()
    }

    /// Its tokens at `now`, refilled at `per_second` up to `burst`.
    fn refilled(&self, now: Instant, per_second: f64, burst: f64) -> f64 {
        (self.tokens + self.since(now) * per_second).min(burst)
    }
}

/// `Ok` when `tokens` hold a whole one; else how long until they do at `per_second`.
fn due(tokens: f64, per_second: f64) -> Result<(), Duration> {
    if tokens >= 1.0 {
        Ok(())
    } else {
        Err(Duration::from_secs_f64((1.0 - tokens) / per_second))
    }
}

impl RateLimiter {
    /// A limiter; `per_second == 0` disables it.
    pub fn new(per_second: f64, burst: u32, max_sources: usize) -> RateLimiter {
        RateLimiter {
            per_second,
            burst: f64::from(burst.max(1)),
            max_sources: max_sources.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `source` at `now`; `Err(wait)` says when the next one is due.
    pub fn check(&mut self, source: SourceKey, now: Instant) -> Result<(), Duration> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        if self.buckets.len() >= self.max_sources && !self.buckets.contains_key(&source) {
            self.evict(now);
        }
        let (per_second, burst) = (self.per_second, self.burst);
        let b = self.buckets.entry(source).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = b.refilled(now, per_second, burst);
        b.at = now;
        let verdict = due(b.tokens, per_second);
        if verdict.is_ok() {
            b.tokens -= 1.0;
        }
        verdict
    }

    /// Whether [`check`](Self::check) would let `source` through at `now`, without taking a
    /// token or tracking it: an offer refused by a wider limit then leaves no entry behind,
    /// so a holder of many sources cannot fill the table through it.
    pub fn would_allow(&self, source: SourceKey, now: Instant) -> Result<(), Duration> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        let Some(b) = self.buckets.get(&source) else {
            return Ok(());
        };
        due(
            b.refilled(now, self.per_second, self.burst),
            self.per_second,
        )
    }

    /// Sources tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }

    fn evict(&mut self, now: Instant) {
        let (per_second, burst) = (self.per_second, self.burst);
        self.buckets
            .retain(|_, b| b.tokens + b.since(now) * per_second < burst);
        if self.buckets.len() >= self.max_sources {
            self.buckets.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn ranges() {
        let n: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(n.contains(ip("10.1.2.3")));
        assert!(!n.contains(ip("11.0.0.1")));
        assert!(n.contains(ip("::ffff:10.9.9.9")), "v4-mapped counts as v4");
        let host: IpNet = "192.0.2.7".parse().unwrap();
        assert!(host.contains(ip("192.0.2.7")) && !host.contains(ip("192.0.2.8")));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.1")));
        let v6: IpNet = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        for bad in ["10.0.0.0/33", "nope", "::/129", "1.2.3.4/x", ""] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let trusted = nets(&["10.0.0.0/8"]);
        // A stranger's header is ignored: it could say anything.
        assert_eq!(
            client_ip(ip("203.0.113.9"), Some("1.1.1.1"), &trusted),
            ip("203.0.113.9")
        );
        // From our proxy: the rightmost untrusted entry.
        assert_eq!(
            client_ip(ip("10.0.0.2"), Some("6.6.6.6, 198.51.100.4"), &trusted),
            ip("198.51.100.4"),
            "the left entries were written by the client"
        );
        // Through two proxies of ours.
        assert_eq!(
            client_ip(ip("10.0.0.2"), Some("198.51.100.4, 10.0.0.3"), &trusted),
            ip("198.51.100.4")
        );
        // With ports, v6 in brackets.
        assert_eq!(
            client_ip(ip("10.0.0.2"), Some("[2001:db8::1]:443"), &trusted),
            ip("2001:db8::1")
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), Some("198.51.100.4:5000"), &trusted),
            ip("198.51.100.4")
        );
        // Garbage stops the walk at the last good entry.
        assert_eq!(
            client_ip(ip("10.0.0.2"), Some("<script>, 10.0.0.3"), &trusted),
            ip("10.0.0.3")
        );
        assert_eq!(client_ip(ip("10.0.0.2"), None, &trusted), ip("10.0.0.2"));
        // Nothing trusted: the peer, always.
        assert_eq!(
            client_ip(ip("10.0.0.2"), Some("1.1.1.1"), &[]),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn ipv6_counts_by_64() {
        assert_eq!(
            SourceKey::of(ip("2001:db8:1:2::1")),
            SourceKey::of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            SourceKey::of(ip("2001:db8:1:2::1")),
            SourceKey::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            SourceKey::of(ip("::ffff:192.0.2.1")),
            SourceKey::of(ip("192.0.2.1"))
        );
        assert_ne!(SourceKey::of(ip("0.0.0.1")), SourceKey::of(ip("::1")));
    }

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(2.0, 3, 100);
        let a = SourceKey::of(ip("192.0.2.1"));
        let b = SourceKey::of(ip("192.0.2.2"));
        for _ in 0..3 {
            assert!(r.check(a, t0).is_ok());
        }
        let wait = r.check(a, t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        // Another source is not affected.
        assert!(r.check(b, t0).is_ok());
        // Half a second later one more token.
        assert!(r.check(a, t0 + Duration::from_millis(500)).is_ok());
        assert!(r.check(a, t0 + Duration::from_millis(500)).is_err());
        // Disabled.
        let mut off = RateLimiter::new(0.0, 1, 1);
        for _ in 0..100 {
            assert!(off.check(a, t0).is_ok());
        }
    }

    #[test]
    fn ipv6_sources_also_count_by_48() {
        let key = |s| SourceKey::of(ip(s));
        assert_eq!(
            key("2001:db8:7:1::1").prefix(),
            key("2001:db8:7:ffff:9::").prefix()
        );
        assert_ne!(key("2001:db8:7:1::1"), key("2001:db8:7:2::1"));
        assert_ne!(
            key("2001:db8:7:1::1").prefix(),
            key("2001:db8:8:1::1").prefix()
        );
        // A prefix is never a source: the two tiers' keys cannot meet in one table.
        assert_ne!(key("2001:db8:7::").prefix(), Some(key("2001:db8:7::")));
        assert_eq!(
            key("2001:db8:7::").prefix().unwrap().prefix(),
            key("2001:db8:7::").prefix()
        );
        assert_eq!(key("192.0.2.1").prefix(), None);
        assert_eq!(key("::ffff:192.0.2.1").prefix(), None);
    }

    #[test]
    fn asking_takes_nothing_and_tracks_nothing() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(1.0, 2, 10);
        let a = SourceKey::of(IpAddr::from([192, 0, 2, 1]));
        assert!(r.would_allow(a, t0).is_ok());
        assert_eq!(r.tracked(), 0, "an unknown source is not added by asking");
        assert!(r.check(a, t0).is_ok());
        assert!(r.check(a, t0).is_ok());
        assert_eq!(
            r.would_allow(a, t0),
            r.check(a, t0).map(|_| ()),
            "asking agrees with taking"
        );
        assert!(r.would_allow(a, t0 + Duration::from_secs(1)).is_ok());
        assert!(
            r.would_allow(a, t0 + Duration::from_secs(1)).is_ok(),
            "nothing taken"
        );
    }

    #[test]
    fn a_forwarded_prefix_is_a_plain_absolute_path_or_nothing() {
        assert_eq!(forwarded_prefix("/voice"), Some("/voice"));
        assert_eq!(forwarded_prefix(" /voice/v1/ "), Some("/voice/v1"));
        assert_eq!(forwarded_prefix("/a.b~c-d_e"), Some("/a.b~c-d_e"));
        for bad in [
            "",
            "/",
            "voice",
            "//evil.example",
            "//evil.example/voice",
            "/a/../b",
            "/a/./b",
            "/..",
            "https://evil.example",
            "/a b",
            "/a?b",
            "/a#b",
            "/a%2F..",
            "/a\\b",
        ] {
            assert_eq!(forwarded_prefix(bad), None, "{bad:?}");
        }
        assert_eq!(
            forwarded_prefix(&format!("/{}", "a".repeat(255))).map(str::len),
            Some(256)
        );
        assert_eq!(forwarded_prefix(&format!("/{}", "a".repeat(256))), None);
    }

    #[test]
    fn memory_is_bounded() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(1.0, 2, 1000);
        for i in 0..100_000u32 {
            let _ = r.check(SourceKey::of(IpAddr::from(i.to_be_bytes())), t0);
            assert!(r.tracked() <= 1000);
        }
    }

    proptest! {
        #[test]
        fn forwarded_for_never_panics(peer in any::<[u8; 4]>(), header in ".{0,200}") {
            let trusted = nets(&["0.0.0.0/0", "::/0"]);
            let _ = client_ip(IpAddr::from(peer), Some(&header), &trusted);
        }

        #[test]
        fn a_source_never_gets_more_than_burst_plus_rate(
            steps in proptest::collection::vec(0u64..500, 1..200),
        ) {
            let t0 = Instant::now();
            let mut r = RateLimiter::new(4.0, 5, 10);
            let a = SourceKey::of(IpAddr::from([192, 0, 2, 1]));
            let mut now = t0;
            let mut ok = 0u64;
            for ms in steps {
                now += Duration::from_millis(ms);
                if r.check(a, now).is_ok() {
                    ok += 1;
                }
            }
            let allowed = 5.0 + now.duration_since(t0).as_secs_f64() * 4.0;
            prop_assert!(ok as f64 <= allowed + 1e-9, "{} > {}", ok, allowed);
        }
    }
}
