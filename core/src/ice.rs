//! The `media.ice_servers` spec string: STUN and TURN servers for the server's own gathering.
//!
//! The format is the original's: comma-separated entries `scheme:host[:port][?k=v&k=v]` with
//! `stun:`, `turn:` or `turns:` (lowercase), whitespace and empty entries ignored, `username` and
//! `credential` taken from the query (keys case-insensitive, last one wins, values verbatim).
//! Two deliberate differences: `?transport=udp|tcp` is kept on TURN entries (the original dropped
//! it, so TURN over TCP could not be configured), and an entry that can never work is refused at
//! startup with its text (credentials redacted) instead of failing later at gathering time:
//! a missing host, a bad port, an unknown transport, or a TURN entry without credentials.
//! Credentials on a `stun:` entry are ignored, since STUN binding needs none.
//!
//! Parsing accepts TURN entries (so their mistakes are named precisely), but the server's own
//! gathering refuses them ([`refuse_turn`]): every call shares one UDP socket, and a TURN server
//! keys an allocation by the client's address and port (RFC 8656 §2.2), so the calls would all
//! share, and tear down, one relay. Callers behind restrictive NATs get TURN through the
//! browser's own `iceServers` instead.
//!
//! Also here: [`IceTimers`], the ICE agent's liveness timers, and the bounds they are checked
//! against.

use secrecy::SecretString;
use std::time::Duration;

/// How to reach a TURN server, from `?transport=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IceTransport {
    /// `transport=udp`.
    Udp,
    /// `transport=tcp`.
    Tcp,
}

/// One STUN or TURN server, ready to hand to the WebRTC stack. The username and the credential
/// are [`SecretString`]s, so they never reach a log line, even through `{:?}`; the username is
/// kept as secret as the credential, as it names the account.
#[derive(Debug, Clone)]
pub struct IceServer {
    /// The URL without credentials, e.g. `turn:turn.example.com:3478?transport=tcp`.
    pub url: String,
    /// TURN username; empty for STUN.
    pub username: SecretString,
    /// TURN credential; empty for STUN.
    pub credential: SecretString,
    /// The transport asked for, if any.
    pub transport: Option<IceTransport>,
}

/// Why an entry was refused. Each variant carries the entry with its query redacted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IceSpecError {
    /// The entry does not start with `stun:`, `turn:` or `turns:`.
    #[error("ice server {0:?}: scheme must be stun:/turn:/turns:")]
    Scheme(String),
    /// Nothing after the scheme.
    #[error("ice server {0:?}: missing host")]
    Host(String),
    /// The port is not a number from 1 to 65535.
    #[error("ice server {0:?}: port must be a number from 1 to 65535")]
    Port(String),
    /// `transport` is something other than `udp` or `tcp`, or was given on a STUN entry.
    #[error("ice server {0:?}: transport must be udp or tcp, and only on turn:/turns:")]
    Transport(String),
    /// A TURN entry without `username` and `credential`.
    #[error("ice server {0:?}: turn:/turns: needs ?username=...&credential=...")]
    Credentials(String),
    /// A TURN entry for the server's own gathering, which the shared port cannot carry.
    #[error(
        "ice server {0:?}: TURN is not supported for the server's own gathering: all calls share \
         one UDP socket, and a TURN server holds one allocation per client address, so the calls \
         would share and tear down one relay; use stun: entries here, and give callers behind \
         restrictive NATs a TURN server in the browser's iceServers"
    )]
    TurnOnSharedPort(String),
}

/// Parses the spec string. Empty or blank means no servers.
pub fn parse_ice_servers(spec: &str) -> Result<Vec<IceServer>, IceSpecError> {
    spec.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(parse_entry)
        .collect()
}

/// Refuses TURN entries for the server's own gathering (see the module doc): the first one
/// found is named, without its credentials.
pub fn refuse_turn(servers: &[IceServer]) -> Result<(), IceSpecError> {
    match servers.iter().find(|s| s.is_turn()) {
        Some(s) => Err(IceSpecError::TurnOnSharedPort(s.url.clone())),
        None => Ok(()),
    }
}

impl IceServer {
    /// Whether this is a `turn:` or `turns:` entry (its URL never carries credentials).
    pub fn is_turn(&self) -> bool {
        self.url.starts_with("turn:") || self.url.starts_with("turns:")
    }
}

/// Shortest ICE timeout accepted: below it a single late packet would count as an outage.
pub const MIN_ICE_TIMEOUT: Duration = Duration::from_millis(100);
/// Longest `disconnected` timeout accepted: a caller silent this long is not on a blip.
pub const MAX_ICE_DISCONNECTED: Duration = Duration::from_secs(60);
/// Longest `failed` timeout accepted: a dead call holds its slot at most this long after
/// `disconnected`.
pub const MAX_ICE_FAILED: Duration = Duration::from_secs(300);
/// Shortest keepalive interval accepted (checks are cheap, but not free for a thousand calls).
pub const MIN_ICE_KEEPALIVE: Duration = Duration::from_millis(50);
/// Longest keepalive interval accepted (RFC 7675 §5.1 sends consent checks every ~5 s).
pub const MAX_ICE_KEEPALIVE: Duration = Duration::from_secs(10);

/// The ICE agent's liveness timers, checked against each other and the bounds above.
///
/// The agent (rtc-ice 0.21, `validate_selected_pair`) measures both timeouts from the last
/// packet received on the selected pair (a check, a response, DTLS or RTP): the connection is
/// `disconnected` after [`IceTimers::disconnected`] of silence and `failed`, which ends the
/// call, after `disconnected + failed` of silence ([`IceTimers::failure_after`]). Traffic that
/// comes back before then makes it `connected` again. The keepalive is our own consent check on
/// the selected pair; its response is what keeps a caller that sends no media alive, so at
/// least two must fit in the `disconnected` window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IceTimers {
    disconnected: Duration,
    failed: Duration,
    keepalive: Duration,
}

/// Which timer is wrong, and why.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum IceTimerError {
    /// The `disconnected` timeout is out of bounds.
    #[error("must be {min} to {max} ms", min = MIN_ICE_TIMEOUT.as_millis(), max = MAX_ICE_DISCONNECTED.as_millis())]
    Disconnected,
    /// The `failed` timeout is out of bounds.
    #[error("must be {min} to {max} ms", min = MIN_ICE_TIMEOUT.as_millis(), max = MAX_ICE_FAILED.as_millis())]
    Failed,
    /// The keepalive interval is out of bounds, or too long for the `disconnected` timeout.
    #[error(
        "must be {min} to {max} ms and at most half the disconnected timeout ({half} ms), so one \
         lost keepalive is not an outage",
        min = MIN_ICE_KEEPALIVE.as_millis(),
        max = MAX_ICE_KEEPALIVE.as_millis()
    )]
    Keepalive {
        /// Half the `disconnected` timeout, in ms.
        half: u128,
    },
}

impl IceTimers {
    /// Checks the timers: each within its bounds, and the keepalive at most half the
    /// `disconnected` timeout.
    pub fn new(
        disconnected: Duration,
        failed: Duration,
        keepalive: Duration,
    ) -> Result<Self, IceTimerError> {
        if !(MIN_ICE_TIMEOUT..=MAX_ICE_DISCONNECTED).contains(&disconnected) {
            return Err(IceTimerError::Disconnected);
        }
        if !(MIN_ICE_TIMEOUT..=MAX_ICE_FAILED).contains(&failed) {
            return Err(IceTimerError::Failed);
        }
        if !(MIN_ICE_KEEPALIVE..=MAX_ICE_KEEPALIVE).contains(&keepalive)
            || keepalive > disconnected / 2
        {
            return Err(IceTimerError::Keepalive {
                half: (disconnected / 2).as_millis(),
            });
        }
        Ok(IceTimers {
            disconnected,
            failed,
            keepalive,
        })
    }

    /// Silence after which the connection is `disconnected` (it may still recover).
    pub fn disconnected(&self) -> Duration {
        self.disconnected
    }

    /// Time in `disconnected` after which the connection is `failed`.
    pub fn failed(&self) -> Duration {
        self.failed
    }

    /// Interval of our consent checks on the selected pair.
    pub fn keepalive(&self) -> Duration {
        self.keepalive
    }

    /// Silence after which the connection fails and the call ends: `disconnected + failed`.
    /// An outage shorter than this is survived.
    pub fn failure_after(&self) -> Duration {
        self.disconnected + self.failed
    }
}

fn parse_entry(raw: &str) -> Result<IceServer, IceSpecError> {
    let (url_part, query) = match raw.split_once('?') {
        Some((u, q)) => (u, Some(q)),
        None => (raw, None),
    };
    // The entry as it may appear in an error: never the credentials.
    let shown = || match query {
        Some(_) => format!("{url_part}?***"),
        None => url_part.to_owned(),
    };

    let (scheme, rest) = if let Some(r) = url_part.strip_prefix("stun:") {
        ("stun", r)
    } else if let Some(r) = url_part.strip_prefix("turns:") {
        ("turns", r)
    } else if let Some(r) = url_part.strip_prefix("turn:") {
        ("turn", r)
    } else {
        return Err(IceSpecError::Scheme(shown()));
    };
    check_host_port(rest).map_err(|e| match e {
        HostPort::Host => IceSpecError::Host(shown()),
        HostPort::Port => IceSpecError::Port(shown()),
    })?;

    let mut username = String::new();
    let mut credential = String::new();
    let mut transport = None;
    for pair in query.unwrap_or("").split('&') {
        let Some((key, value)) = pair.split_once('=') else {
            continue;
        };
        if key.eq_ignore_ascii_case("username") {
            username = value.to_owned();
        } else if key.eq_ignore_ascii_case("credential") {
            credential = value.to_owned();
        } else if key.eq_ignore_ascii_case("transport") {
            transport = Some(match value.to_ascii_lowercase().as_str() {
                "udp" => IceTransport::Udp,
                "tcp" => IceTransport::Tcp,
                _ => return Err(IceSpecError::Transport(shown())),
            });
        }
    }

    let mut url = format!("{scheme}:{rest}");
    if scheme == "stun" {
        if transport.is_some() {
            return Err(IceSpecError::Transport(shown()));
        }
        username.clear();
        credential.clear();
    } else {
        if username.is_empty() || credential.is_empty() {
            return Err(IceSpecError::Credentials(shown()));
        }
        if let Some(t) = transport {
            url.push_str(match t {
                IceTransport::Udp => "?transport=udp",
                IceTransport::Tcp => "?transport=tcp",
            });
        }
    }
    Ok(IceServer {
        url,
        username: username.into(),
        credential: credential.into(),
        transport,
    })
}

enum HostPort {
    Host,
    Port,
}

/// Checks `host[:port]`, where host may be a bracketed IPv6 literal.
fn check_host_port(rest: &str) -> Result<(), HostPort> {
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or(HostPort::Host)?;
        match after {
            "" => (h, None),
            p => (h, Some(p.strip_prefix(':').ok_or(HostPort::Port)?)),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_'));
    if !host_ok {
        return Err(HostPort::Host);
    }
    if let Some(p) = port {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => {}
            _ => return Err(HostPort::Port),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn turn_is_refused_for_the_shared_port_without_its_credentials() {
        let servers = parse_ice_servers(
            "stun:s.example:3478, turns:t.example:5349?username=u-secret&credential=c-secret",
        )
        .unwrap();
        let err = refuse_turn(&servers).unwrap_err();
        assert_eq!(
            err,
            IceSpecError::TurnOnSharedPort("turns:t.example:5349".into())
        );
        let shown = err.to_string();
        assert!(shown.contains("one UDP socket"), "{shown}");
        assert!(shown.contains("iceServers"), "{shown}");
        assert!(!shown.contains("secret"), "{shown}");
        let turn = parse_ice_servers("turn:t.example?username=u&credential=c").unwrap();
        assert!(refuse_turn(&turn).is_err());
        let stun = parse_ice_servers("stun:a.example, stun:b.example:19302").unwrap();
        assert_eq!(refuse_turn(&stun), Ok(()));
        assert_eq!(refuse_turn(&[]), Ok(()));
    }

    #[test]
    fn ice_timers_are_bounded_and_consistent() {
        let ms = Duration::from_millis;
        let t = IceTimers::new(ms(5000), ms(25_000), ms(1000)).unwrap();
        assert_eq!(t.failure_after(), ms(30_000));
        assert_eq!(
            (t.disconnected(), t.failed(), t.keepalive()),
            (ms(5000), ms(25_000), ms(1000))
        );
        // The edges are accepted.
        assert!(IceTimers::new(MIN_ICE_TIMEOUT, MIN_ICE_TIMEOUT, MIN_ICE_KEEPALIVE).is_ok());
        assert!(IceTimers::new(MAX_ICE_DISCONNECTED, MAX_ICE_FAILED, MAX_ICE_KEEPALIVE).is_ok());
        let cases = [
            (ms(0), ms(25_000), ms(1000), IceTimerError::Disconnected),
            (ms(99), ms(25_000), ms(40), IceTimerError::Disconnected),
            (
                ms(60_001),
                ms(25_000),
                ms(1000),
                IceTimerError::Disconnected,
            ),
            (ms(5000), ms(0), ms(1000), IceTimerError::Failed),
            (ms(5000), ms(300_001), ms(1000), IceTimerError::Failed),
            (
                ms(5000),
                ms(25_000),
                ms(0),
                IceTimerError::Keepalive { half: 2500 },
            ),
            (
                ms(5000),
                ms(25_000),
                ms(2501),
                IceTimerError::Keepalive { half: 2500 },
            ),
            (
                ms(60_000),
                ms(25_000),
                ms(10_001),
                IceTimerError::Keepalive { half: 30_000 },
            ),
        ];
        for (d, f, k, want) in cases {
            assert_eq!(
                IceTimers::new(d, f, k),
                Err(want.clone()),
                "{d:?} {f:?} {k:?}"
            );
        }
        let shown = IceTimerError::Keepalive { half: 2500 }.to_string();
        assert!(shown.contains("2500 ms"), "{shown}");
    }

    #[test]
    fn stun_only() {
        let got = parse_ice_servers("stun:stun.l.google.com:19302").unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].url, "stun:stun.l.google.com:19302");
        assert_eq!(got[0].username.expose_secret(), "");
        assert_eq!(got[0].credential.expose_secret(), "");
        assert_eq!(got[0].transport, None);
    }

    #[test]
    fn turn_with_credentials() {
        let got = parse_ice_servers("turn:turn.example.com:3478?username=alice&credential=secret")
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].url, "turn:turn.example.com:3478");
        assert_eq!(got[0].username.expose_secret(), "alice");
        assert_eq!(got[0].credential.expose_secret(), "secret");
    }

    #[test]
    fn mixed_with_whitespace_and_empty_entries() {
        let got = parse_ice_servers(
            " stun:s.example:19302 , turns:t.example:5349?username=u&credential=c ,, ",
        )
        .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].url, "stun:s.example:19302");
        assert_eq!(got[1].url, "turns:t.example:5349");
        assert_eq!(
            (
                got[1].username.expose_secret(),
                got[1].credential.expose_secret()
            ),
            ("u", "c")
        );
    }

    #[test]
    fn empty_spec_means_no_servers() {
        assert!(parse_ice_servers("").unwrap().is_empty());
        assert!(parse_ice_servers("   ").unwrap().is_empty());
        assert!(parse_ice_servers(" , ,").unwrap().is_empty());
    }

    #[test]
    fn rejects_bad_scheme_naming_the_entry() {
        let err = parse_ice_servers("stun:ok.example, http://nope").unwrap_err();
        assert_eq!(err, IceSpecError::Scheme("http://nope".into()));
        assert!(err.to_string().contains("http://nope"));
        // Schemes are lowercase only, as in the original.
        assert!(matches!(
            parse_ice_servers("STUN:s.example"),
            Err(IceSpecError::Scheme(_))
        ));
    }

    #[test]
    fn transport_is_kept_on_turn() {
        let got = parse_ice_servers(
            "turn:t.example:3478?transport=tcp&username=u&credential=c, turns:t.example?Transport=UDP&username=u&credential=c",
        )
        .unwrap();
        assert_eq!(got[0].url, "turn:t.example:3478?transport=tcp");
        assert_eq!(got[0].transport, Some(IceTransport::Tcp));
        assert_eq!(got[1].url, "turns:t.example?transport=udp");
        assert_eq!(got[1].transport, Some(IceTransport::Udp));
    }

    #[test]
    fn bad_transport_is_refused() {
        assert!(matches!(
            parse_ice_servers("turn:t.example?transport=sctp&username=u&credential=c"),
            Err(IceSpecError::Transport(_))
        ));
        assert!(matches!(
            parse_ice_servers("stun:s.example?transport=tcp"),
            Err(IceSpecError::Transport(_))
        ));
    }

    #[test]
    fn query_rules_follow_the_original() {
        // Keys are case-insensitive, the last occurrence wins, values keep '=' and are verbatim,
        // pairs without '=' are ignored.
        let got = parse_ice_servers("turn:t.example?USERNAME=a&username=b&flag&credential=x=y%20z")
            .unwrap();
        assert_eq!(got[0].username.expose_secret(), "b");
        assert_eq!(got[0].credential.expose_secret(), "x=y%20z");
    }

    #[test]
    fn stun_credentials_are_dropped() {
        let got = parse_ice_servers("stun:s.example:19302?username=u&credential=c").unwrap();
        assert_eq!(got[0].url, "stun:s.example:19302");
        assert_eq!(got[0].username.expose_secret(), "");
        assert_eq!(got[0].credential.expose_secret(), "");
    }

    #[test]
    fn turn_without_credentials_is_refused() {
        assert!(matches!(
            parse_ice_servers("turn:t.example:3478"),
            Err(IceSpecError::Credentials(_))
        ));
        assert!(matches!(
            parse_ice_servers("turn:t.example:3478?username=u"),
            Err(IceSpecError::Credentials(_))
        ));
    }

    #[test]
    fn host_and_port_are_checked() {
        for bad in ["stun:", "stun::3478", "stun:a b.example"] {
            assert!(
                matches!(parse_ice_servers(bad), Err(IceSpecError::Host(_))),
                "{bad}"
            );
        }
        for bad in [
            "stun:s.example:0",
            "stun:s.example:70000",
            "stun:s.example:x",
            "stun:[::1]x",
        ] {
            assert!(
                matches!(parse_ice_servers(bad), Err(IceSpecError::Port(_))),
                "{bad}"
            );
        }
        assert!(parse_ice_servers("stun:[2001:db8::1]:3478").is_ok());
        assert!(parse_ice_servers("stun:192.0.2.1").is_ok());
    }

    #[test]
    fn errors_and_debug_never_show_credentials() {
        let err = parse_ice_servers("turn:t.example?username=alice&credential=hunter2&transport=x")
            .unwrap_err();
        let text = err.to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("alice"),
            "{text}"
        );
        let ok = parse_ice_servers("turn:t.example?username=alice&credential=hunter2").unwrap();
        let dbg = format!("{ok:?}");
        assert!(!dbg.contains("hunter2") && !dbg.contains("alice"), "{dbg}");
    }
}
