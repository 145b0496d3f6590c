//! Garbage on the shared media port: datagrams from a few sockets that belong to no call, at a
//! fixed total rate, shaped like everything the port's receive loop must classify and drop.
//!
//! Random bytes, STUN Binding requests with invented USERNAMEs, requests naming live calls'
//! real ufrags (read from the answers the bench saw) with a wrong or missing
//! MESSAGE-INTEGRITY, truncated and garbled requests, stray STUN responses, and DTLS-, RTP- and
//! RTCP-looking datagrams. None comes from an address a call has proven, so the server must
//! count each as unroutable or unauthenticated and no call may notice.

use super::{Answers, Stop, ice_ufrags};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use voicegate_core::{random, stun};

/// Sockets the garbage comes from (each its own source address and port on 127.0.0.1).
const SOCKETS: usize = 4;
/// How often the sender wakes to catch up with its rate.
const TICK: Duration = Duration::from_millis(5);
/// Most datagrams sent in one wake-up, so a stalled sender does not burst without bound.
const MAX_BURST: u64 = 200;

/// The shapes of garbage, sent in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// 1 to 1200 random bytes.
    RandomBytes,
    /// A Binding request with an invented USERNAME and MESSAGE-INTEGRITY.
    StunInventedUser,
    /// A Binding request naming a live call's ufrag, without or with a guessed
    /// MESSAGE-INTEGRITY.
    StunRealUser,
    /// A Binding request cut short at a random length.
    StunTruncated,
    /// A Binding request with a few random bytes of its attributes or length overwritten.
    StunGarbled,
    /// A Binding success response to a transaction nobody started.
    StunStrayResponse,
    /// A DTLS 1.2 handshake record with a random body.
    Dtls,
    /// An RTP packet (Opus payload type, random SSRC) with a random payload, as SRTP looks.
    Rtp,
    /// An RTCP sender report with a random body.
    Rtcp,
}

impl Kind {
    const ALL: [Kind; 9] = [
        Kind::RandomBytes,
        Kind::StunInventedUser,
        Kind::StunRealUser,
        Kind::StunTruncated,
        Kind::StunGarbled,
        Kind::StunStrayResponse,
        Kind::Dtls,
        Kind::Rtp,
        Kind::Rtcp,
    ];

    fn label(self) -> &'static str {
        match self {
            Kind::RandomBytes => "random_bytes",
            Kind::StunInventedUser => "stun_invented_user",
            Kind::StunRealUser => "stun_real_ufrag_bad_integrity",
            Kind::StunTruncated => "stun_truncated",
            Kind::StunGarbled => "stun_garbled",
            Kind::StunStrayResponse => "stun_stray_response",
            Kind::Dtls => "dtls",
            Kind::Rtp => "rtp",
            Kind::Rtcp => "rtcp",
        }
    }
}

fn bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    random::fill(&mut b);
    b
}

/// A random number in `lo..hi`.
fn between(lo: usize, hi: usize) -> usize {
    lo + random::u32() as usize % (hi - lo)
}

fn txid() -> stun::TransactionId {
    let mut t = [0u8; 12];
    random::fill(&mut t);
    t
}

/// A Binding request naming one of `ufrags` (an invented one while none is known), with a
/// guessed MESSAGE-INTEGRITY on every other one and none on the rest.
fn real_user_request(ufrags: &[String], n: u64) -> Vec<u8> {
    let local = match ufrags {
        [] => random::alphanumeric(8),
        u => u[random::u32() as usize % u.len()].clone(),
    };
    let username = format!("{local}:{}", random::alphanumeric(4));
    let guess = random::alphanumeric(22);
    let password = n.is_multiple_of(2).then_some(guess.as_bytes());
    stun::binding_request(txid(), &username, password)
}

/// The `n`-th datagram of `kind`.
fn datagram(kind: Kind, ufrags: &[String], n: u64) -> Vec<u8> {
    match kind {
        Kind::RandomBytes => bytes(between(1, 1201)),
        Kind::StunInventedUser => {
            let username = format!(
                "{}:{}",
                random::alphanumeric(between(1, 40)),
                random::alphanumeric(4)
            );
            stun::binding_request(txid(), &username, Some(&bytes(16)))
        }
        Kind::StunRealUser => real_user_request(ufrags, n),
        Kind::StunTruncated => {
            let mut m = real_user_request(ufrags, n);
            m.truncate(between(1, m.len()));
            m
        }
        Kind::StunGarbled => {
            let mut m = real_user_request(ufrags, n);
            // The length field or the attributes: never the type and cookie, so the
            // datagram still reads as a Binding request and reaches the parser.
            for _ in 0..3 {
                let at = match random::u32() % 4 {
                    0 => between(2, 4),
                    _ => between(20, m.len()),
                };
                m[at] = random::u32() as u8;
            }
            m
        }
        Kind::StunStrayResponse => {
            let mut m = vec![0x01, 0x01, 0x00, 0x0c, 0x21, 0x12, 0xA4, 0x42];
            m.extend_from_slice(&txid());
            // XOR-MAPPED-ADDRESS (RFC 8489 §14.2) with a random address.
            m.extend_from_slice(&[0x00, 0x20, 0x00, 0x08, 0x00, 0x01]);
            m.extend_from_slice(&bytes(6));
            m
        }
        Kind::Dtls => {
            // Content type handshake, DTLS 1.2, epoch 0, a random sequence number.
            let body = between(60, 300);
            let mut m = vec![22, 0xfe, 0xfd, 0, 0];
            m.extend_from_slice(&bytes(6));
            m.extend_from_slice(&(body as u16).to_be_bytes());
            m.push(1); // ClientHello
            m.extend_from_slice(&bytes(body - 1));
            m
        }
        Kind::Rtp => {
            let mut m = vec![0x80, 111 | if n.is_multiple_of(50) { 0x80 } else { 0 }];
            m.extend_from_slice(&bytes(10)); // sequence number, timestamp, SSRC
            m.extend_from_slice(&bytes(between(40, 160)));
            m
        }
        Kind::Rtcp => {
            let body = between(5, 15) * 4;
            let mut m = vec![0x80, 200];
            m.extend_from_slice(&((body / 4) as u16).to_be_bytes());
            m.extend_from_slice(&bytes(body));
            m
        }
    }
}

/// Sends garbage to `media` at `per_s` datagrams a second until `stop`; returns its counts.
pub async fn run(media: SocketAddr, per_s: u32, answers: Answers, stop: Stop) -> Value {
    let mut sockets = Vec::with_capacity(SOCKETS);
    for _ in 0..SOCKETS {
        match UdpSocket::bind("127.0.0.1:0").await {
            Ok(s) => sockets.push(s),
            Err(e) => return json!({"error": format!("binding a garbage socket: {e}")}),
        }
    }
    let mut by_kind = [0u64; Kind::ALL.len()];
    let (mut sent, mut errors) = (0u64, 0u64);
    // The index of the next datagram due; a sender that fell far behind skips ahead.
    let mut next = 0u64;
    let mut ufrags = vec![];
    let mut ufrags_read = Instant::now() - Duration::from_secs(1);
    let mut tick = tokio::time::interval(TICK);
    let t0 = Instant::now();
    while !stop.now() {
        tick.tick().await;
        if ufrags_read.elapsed() >= Duration::from_secs(1) {
            ufrags = ice_ufrags(&answers);
            ufrags_read = Instant::now();
        }
        let due = (t0.elapsed().as_secs_f64() * f64::from(per_s)) as u64;
        let from = next.max(due.saturating_sub(MAX_BURST));
        next = next.max(due);
        for i in from..due {
            let k = (i % Kind::ALL.len() as u64) as usize;
            let packet = datagram(Kind::ALL[k], &ufrags, i / Kind::ALL.len() as u64);
            match sockets[i as usize % SOCKETS].send_to(&packet, media).await {
                Ok(_) => {
                    sent += 1;
                    by_kind[k] += 1;
                }
                Err(_) => errors += 1,
            }
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let kinds: serde_json::Map<String, Value> = Kind::ALL
        .iter()
        .zip(by_kind)
        .map(|(k, n)| (k.label().to_owned(), json!(n)))
        .collect();
    json!({
        "sent": sent,
        "send_errors": errors,
        "seconds": seconds,
        "per_s": sent as f64 / seconds.max(1e-9),
        "sockets": SOCKETS,
        "real_ufrags_known_at_end": ufrags.len(),
        "by_kind": kinds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_what_it_claims_to_be() {
        let ufrags = vec!["abcd1234".to_owned()];
        for n in 0..50 {
            for kind in Kind::ALL {
                let d = datagram(kind, &ufrags, n);
                assert!(!d.is_empty(), "{kind:?}");
                let class = stun::classify(&d);
                match kind {
                    Kind::StunInventedUser | Kind::StunRealUser => {
                        let r = stun::BindingRequest::parse(&d).expect("a well-formed request");
                        if kind == Kind::StunRealUser {
                            assert_eq!(r.local_ufrag, "abcd1234");
                            assert!(!r.verify(b"the real password"));
                        }
                    }
                    Kind::StunStrayResponse => {
                        assert!(matches!(class, stun::Kind::Response(_)))
                    }
                    Kind::Dtls | Kind::Rtp | Kind::Rtcp => {
                        assert_eq!(class, stun::Kind::NotStun, "{kind:?}")
                    }
                    Kind::RandomBytes | Kind::StunTruncated | Kind::StunGarbled => {}
                }
            }
        }
    }
}
