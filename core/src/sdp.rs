//! Checks on the caller's SDP offer, and the one edit we make to our answer.
//!
//! The offer is checked before any actor or WebRTC object sees it, so a developer gets a `400`
//! that says what is wrong ("no audio section", "audio offers no Opus") instead of an opaque
//! negotiation failure. Only what we rely on is checked (RFC 8866 line syntax, RFC 8829 shape):
//! a session description, ICE credentials and a DTLS fingerprint, and an active audio section
//! whose payload list includes Opus at 48 kHz (RFC 7587). Everything else is the WebRTC stack's
//! business.
//!
//! The offer's candidates are where our connectivity checks go, so they are attacker-chosen
//! destinations: [`check_offer`] counts only the usable ones (UDP, RTP component, a unicast
//! address and a port) of the audio section that will carry the call, and
//! [`keep_audio_candidates`] removes every other candidate line before the WebRTC stack sees
//! the offer (with BUNDLE, browsers repeat the same candidates in every section; the stack
//! would check each copy). The HTTP edge refuses offers with more than a configured number.
//!
//! [`rewrite_host_candidates`] points our answer's host candidates at the shared media port and
//! the advertised addresses (see the media crate's mux for why the stack cannot do it itself).

use std::net::{IpAddr, SocketAddr};

/// What the offer turned out to contain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferSummary {
    /// Payload type the caller uses for Opus.
    pub opus_pt: u8,
    /// Payload type of `telephone-event/8000` (RFC 4733 DTMF), if offered.
    pub telephone_event_pt: Option<u8>,
    /// How many usable candidates the audio section carries (0 for a trickle-style offer): the
    /// destinations of our connectivity checks.
    pub candidates: usize,
    /// Index (0-based, among the m-sections) of the audio section that carries the call.
    pub audio_section: usize,
}

/// Why an offer cannot be negotiated. The text is what the developer reads in the `400`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SdpError {
    /// Does not start with `v=0`.
    #[error("sdp is not a session description (it must start with \"v=0\")")]
    NotSdp,
    /// No `m=audio` section, or only rejected ones (port 0).
    #[error("sdp has no active audio section (m=audio); add an audio track or transceiver")]
    NoAudio,
    /// Audio is there but Opus/48000 is not among its payload types.
    #[error(
        "the audio section offers no Opus (a=rtpmap:<pt> opus/48000/2); voicegate speaks Opus only"
    )]
    NoOpus,
    /// No `a=ice-ufrag` / `a=ice-pwd`.
    #[error(
        "sdp has no ICE credentials (a=ice-ufrag, a=ice-pwd); it must come from RTCPeerConnection.createOffer"
    )]
    NoIce,
    /// No `a=fingerprint`.
    #[error(
        "sdp has no DTLS fingerprint (a=fingerprint); it must come from RTCPeerConnection.createOffer"
    )]
    NoFingerprint,
    /// ICE credentials of the wrong length or alphabet (RFC 8839 §5.4).
    #[error(
        "sdp has malformed ICE credentials (ice-ufrag must be 4-256 and ice-pwd 22-256 ice-chars)"
    )]
    BadIce,
    /// A fingerprint that no DTLS handshake can match (RFC 8122 §5).
    #[error(
        "sdp has a malformed DTLS fingerprint (want a=fingerprint:sha-256 AB:CD:... with a known hash)"
    )]
    BadFingerprint,
}

/// Checks an offer and summarises what we need from it.
pub fn check_offer(sdp: &str) -> Result<OfferSummary, SdpError> {
    let mut lines = sdp.lines().map(|l| l.trim_end_matches('\r'));
    if lines.next().map(str::trim) != Some("v=0") {
        return Err(SdpError::NotSdp);
    }

    let mut ufrag = false;
    let mut pwd = false;
    let mut fingerprint = false;
    let mut saw_audio = false;
    // The first active audio section decides; later ones are the stack's business.
    // (payload types, its index, its usable candidates)
    let mut audio: Option<((u8, Option<u8>), usize, usize)> = None;
    let mut current: Option<AudioSection> = None;
    // Index of the m-section being read (None before the first m-line).
    let mut section: Option<usize> = None;
    let mut candidates = 0;

    for line in lines {
        if let Some(m) = line.strip_prefix("m=") {
            if let (Some(done), Some(i)) = (current.take(), section) {
                audio = audio.or(done.finish().map(|f| (f, i, candidates)));
            }
            section = Some(section.map_or(0, |i| i + 1));
            candidates = 0;
            current = AudioSection::start(m);
            saw_audio |= current.is_some();
            continue;
        }
        let Some(attr) = line.strip_prefix("a=") else {
            continue;
        };
        if let Some(v) = attr.strip_prefix("ice-ufrag:") {
            if !ice_chars(v.trim(), 4) {
                return Err(SdpError::BadIce);
            }
            ufrag = true;
        } else if let Some(v) = attr.strip_prefix("ice-pwd:") {
            if !ice_chars(v.trim(), 22) {
                return Err(SdpError::BadIce);
            }
            pwd = true;
        } else if let Some(v) = attr.strip_prefix("fingerprint:") {
            if !fingerprint_ok(v.trim()) {
                return Err(SdpError::BadFingerprint);
            }
            fingerprint = true;
        } else if let Some(c) = attr.strip_prefix("candidate:") {
            if usable_candidate(c) {
                candidates += 1;
            }
        } else if let (Some(sec), Some(map)) = (current.as_mut(), attr.strip_prefix("rtpmap:")) {
            sec.rtpmap(map);
        }
    }
    if let (Some(done), Some(i)) = (current.take(), section) {
        audio = audio.or(done.finish().map(|f| (f, i, candidates)));
    }

    let ((opus_pt, telephone_event_pt), audio_section, candidates) = match audio {
        Some(found) => found,
        None if saw_audio => return Err(SdpError::NoOpus),
        None => return Err(SdpError::NoAudio),
    };
    if !(ufrag && pwd) {
        return Err(SdpError::NoIce);
    }
    if !fingerprint {
        return Err(SdpError::NoFingerprint);
    }
    Ok(OfferSummary {
        opus_pt,
        telephone_event_pt,
        candidates,
        audio_section,
    })
}

/// Whether a candidate (the value after `a=candidate:`) is one we would check:
/// `<foundation> <component> <transport> <priority> <address> <port> typ <type> ...`
/// (RFC 8839 §5.1) with component 1 (RTP; WebRTC multiplexes RTCP), UDP (our only transport),
/// a unicast IP address (a `.local` mDNS name cannot be resolved here: such a browser connects
/// as peer-reflexive) and a port.
pub fn usable_candidate(value: &str) -> bool {
    let mut f = value.split_ascii_whitespace();
    let (Some(_foundation), Some(component), Some(transport), Some(_priority)) =
        (f.next(), f.next(), f.next(), f.next())
    else {
        return false;
    };
    let (Some(address), Some(port)) = (f.next(), f.next()) else {
        return false;
    };
    if component != "1" || !transport.eq_ignore_ascii_case("udp") {
        return false;
    }
    let Ok(ip) = address.parse::<IpAddr>() else {
        return false;
    };
    let unicast = match ip {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast()),
    };
    unicast && port.parse::<u16>().is_ok_and(|p| p != 0)
}

/// The offer with only the usable candidates of section `audio_section` (see
/// [`OfferSummary::audio_section`]); every other `a=candidate` line is removed. Other lines
/// are kept as they are.
pub fn keep_audio_candidates(sdp: &str, audio_section: usize) -> String {
    let mut out = String::with_capacity(sdp.len());
    let mut section: Option<usize> = None;
    for line in sdp.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        if body.starts_with("m=") {
            section = Some(section.map_or(0, |i| i + 1));
        } else if let Some(c) = body.strip_prefix("a=candidate:")
            && (section != Some(audio_section) || !usable_candidate(c))
        {
            continue;
        }
        out.push_str(line);
    }
    out
}

/// `ice-char` = ALPHA / DIGIT / "+" / "/" (RFC 8839 §5.4), `min..=256` of them.
pub(crate) fn ice_chars(v: &str, min: usize) -> bool {
    (min..=256).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// `<hash-func> <HEX:HEX:...>` with as many bytes as the hash has (RFC 8122 §5).
fn fingerprint_ok(v: &str) -> bool {
    let Some((hash, value)) = v.split_once(' ') else {
        return false;
    };
    let bytes = match hash.to_ascii_lowercase().as_str() {
        "sha-1" => 20,
        "sha-224" => 28,
        "sha-256" => 32,
        "sha-384" => 48,
        "sha-512" => 64,
        _ => return false,
    };
    let parts: Vec<&str> = value.trim().split(':').collect();
    parts.len() == bytes
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// An active `m=audio` section being read.
struct AudioSection {
    /// Payload types listed on the m-line (a set: lookups stay constant-time whatever the
    /// offer lists).
    formats: [bool; 256],
    opus: Option<u8>,
    telephone_event: Option<u8>,
}

impl AudioSection {
    /// Starts a section from the text after `m=`; `None` unless it is active audio over RTP.
    fn start(m: &str) -> Option<Self> {
        let mut parts = m.split_ascii_whitespace();
        if parts.next()? != "audio" {
            return None;
        }
        let port = parts.next()?.split('/').next()?;
        let proto = parts.next()?;
        if port == "0" || !proto.contains("RTP/") {
            return None;
        }
        let mut formats = [false; 256];
        for pt in parts.filter_map(|f| f.parse::<u8>().ok()) {
            formats[usize::from(pt)] = true;
        }
        Some(AudioSection {
            formats,
            opus: None,
            telephone_event: None,
        })
    }

    /// Reads `<pt> <encoding>/<clock>[/<channels>]`.
    fn rtpmap(&mut self, map: &str) {
        let Some((pt, encoding)) = map.split_once(' ') else {
            return;
        };
        let Ok(pt) = pt.parse::<u8>() else {
            return;
        };
        if !self.formats[usize::from(pt)] {
            return;
        }
        let mut enc = encoding.trim().split('/');
        let name = enc.next().unwrap_or("");
        let clock = enc.next().unwrap_or("");
        if name.eq_ignore_ascii_case("opus") && clock == "48000" {
            self.opus.get_or_insert(pt);
        } else if name.eq_ignore_ascii_case("telephone-event") && clock == "8000" {
            self.telephone_event.get_or_insert(pt);
        }
    }

    fn finish(self) -> Option<(u8, Option<u8>)> {
        Some((self.opus?, self.telephone_event))
    }
}

/// Rewrites our answer's host candidates that name `placeholder` (the address the WebRTC stack
/// believes it is bound to) so they name the shared media port on each address in `to` (the
/// bound address, every interface, or the configured public addresses for NAT 1:1).
///
/// Each matching candidate becomes one candidate per address, in order, with the priority lowered
/// by one and the foundation suffixed per copy so the copies stay distinct (RFC 8445 §5.1.1.3).
/// Other lines are kept byte for byte.
pub fn rewrite_host_candidates(answer: &str, placeholder: SocketAddr, to: &[SocketAddr]) -> String {
    let mut out = String::with_capacity(answer.len() + 96 * to.len());
    for line in answer.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        let eol = if line.len() > body.len() {
            &line[body.len()..]
        } else {
            "\r\n"
        };
        match body
            .strip_prefix("a=candidate:")
            .and_then(|c| rewrite_candidate(c, placeholder, to))
        {
            Some(copies) => {
                for c in copies {
                    out.push_str("a=candidate:");
                    out.push_str(&c);
                    out.push_str(eol);
                }
            }
            None => out.push_str(line),
        }
    }
    out
}

/// `foundation component transport priority address port typ host ...` naming `placeholder`
/// → the copies, or `None` to keep the line.
fn rewrite_candidate(c: &str, placeholder: SocketAddr, to: &[SocketAddr]) -> Option<Vec<String>> {
    let fields: Vec<&str> = c.split(' ').collect();
    if fields.len() < 8 || fields[6] != "typ" || fields[7] != "host" || to.is_empty() {
        return None;
    }
    let addr: IpAddr = fields[4].parse().ok()?;
    let port: u16 = fields[5].parse().ok()?;
    if SocketAddr::new(addr, port) != placeholder {
        return None;
    }
    let priority: u32 = fields[3].parse().ok()?;
    Some(
        to.iter()
            .enumerate()
            .map(|(i, target)| {
                let mut f: Vec<String> = fields.iter().map(|s| s.to_string()).collect();
                if i > 0 {
                    f[0] = format!("{}{i}", fields[0]);
                }
                f[3] = priority.saturating_sub(i as u32).to_string();
                f[4] = target.ip().to_string();
                f[5] = target.port().to_string();
                f.join(" ")
            })
            .collect(),
    )
}

/// Removes from `sdp` every payload type whose `a=rtpmap` matches `drop(encoding, clock)`: out
/// of its m-line, and its `rtpmap`, `fmtp` and `rtcp-fb` lines. Other lines are kept as they are.
pub fn drop_payload_types(sdp: &str, drop: impl Fn(&str, u32) -> bool) -> String {
    let mut doomed: Vec<(usize, String)> = Vec::new(); // (section index, payload type)
    let mut section = 0;
    for line in sdp.lines() {
        if line.starts_with("m=") {
            section += 1;
        } else if let Some(map) = line.trim_end().strip_prefix("a=rtpmap:")
            && let Some((pt, enc)) = map.split_once(' ')
        {
            let mut e = enc.split('/');
            let name = e.next().unwrap_or("");
            let clock = e.next().and_then(|c| c.parse().ok()).unwrap_or(0);
            if drop(name, clock) {
                doomed.push((section, pt.to_owned()));
            }
        }
    }
    if doomed.is_empty() {
        return sdp.to_owned();
    }
    let mut out = String::with_capacity(sdp.len());
    let mut section = 0;
    for line in sdp.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        let eol = &line[body.len()..];
        if body.starts_with("m=") {
            section += 1;
            let mut fields: Vec<&str> = body.split(' ').collect();
            if fields.len() > 3 {
                let keep: Vec<&str> = fields
                    .split_off(3)
                    .into_iter()
                    .filter(|pt| !doomed.iter().any(|(s, d)| *s == section && d == pt))
                    .collect();
                fields.extend(keep);
            }
            out.push_str(&fields.join(" "));
            out.push_str(eol);
            continue;
        }
        let names_doomed = ["a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"].iter().any(|p| {
            body.strip_prefix(p)
                .and_then(|r| r.split(' ').next())
                .is_some_and(|pt| doomed.iter().any(|(s, d)| *s == section && d == pt))
        });
        if !names_doomed {
            out.push_str(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trimmed Chrome offer: audio with Opus 111, red, G.722, PCMU, telephone-event.
    const CHROME: &str = "v=0\r\n\
o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\n\
c=IN IP4 0.0.0.0\r\n\
a=candidate:1 1 udp 2113937151 127.0.0.1 54321 typ host generation 0\r\n\
a=ice-ufrag:abcd\r\n\
a=ice-pwd:aaaaaaaaaaaaaaaaaaaaaaaa\r\n\
a=fingerprint:sha-256 D1:22:F7:0F:B0:14:ED:8B:D2:B5:E0:9F:AD:4A:85:0D:30:39:B3:75:3A:80:35:69:0E:B8:26:66:BA:65:A2:4B\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=sendrecv\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=rtpmap:63 red/48000/2\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:13 CN/8000\r\n\
a=rtpmap:110 telephone-event/48000\r\n\
a=rtpmap:126 telephone-event/8000\r\n";

    #[test]
    fn chrome_offer_is_accepted() {
        let s = check_offer(CHROME).unwrap();
        assert_eq!(s.opus_pt, 111);
        assert_eq!(s.telephone_event_pt, Some(126));
        assert_eq!(s.candidates, 1);
    }

    #[test]
    fn lf_only_line_endings_work() {
        let lf = CHROME.replace("\r\n", "\n");
        assert_eq!(check_offer(&lf).unwrap().opus_pt, 111);
    }

    #[test]
    fn refusals() {
        let video_only = CHROME
            .replace(
                "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
                "m=video 9 UDP/TLS/RTP/SAVPF 96",
            )
            .replace("a=rtpmap:111 opus/48000/2\r\n", "a=rtpmap:96 VP8/90000\r\n");
        let rejected_audio = CHROME.replace("m=audio 9 ", "m=audio 0 ");
        let no_opus = CHROME.replace("a=rtpmap:111 opus/48000/2", "a=rtpmap:111 L16/48000/2");
        let opus_not_listed = CHROME.replace("SAVPF 111 63", "SAVPF 63");
        let opus_wrong_clock = CHROME.replace("opus/48000/2", "opus/16000");
        let no_ice = CHROME.replace("a=ice-pwd:aaaaaaaaaaaaaaaaaaaaaaaa\r\n", "");
        let fp_line = CHROME
            .lines()
            .find(|l| l.starts_with("a=fingerprint:"))
            .unwrap();
        let no_fp = CHROME.replace(&format!("{fp_line}\r\n"), "");
        let fp_short = CHROME.replace(fp_line, "a=fingerprint:sha-256 D1:22:F7");
        let fp_hash = CHROME.replace("a=fingerprint:sha-256", "a=fingerprint:md5");
        let fp_hex = CHROME.replace("a=fingerprint:sha-256 D1", "a=fingerprint:sha-256 ZZ");
        let ufrag_short = CHROME.replace("a=ice-ufrag:abcd", "a=ice-ufrag:ab");
        let pwd_bad = CHROME.replace(
            "a=ice-pwd:aaaaaaaaaaaaaaaaaaaaaaaa",
            "a=ice-pwd:aaaaaaaaaaaaaaaaaaaaaa!a",
        );
        let cases: Vec<(&str, &str, SdpError)> = vec![
            ("empty", "", SdpError::NotSdp),
            ("json", "{\"sdp\":1}", SdpError::NotSdp),
            (
                "session only",
                "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\n",
                SdpError::NoAudio,
            ),
            ("video only", &video_only, SdpError::NoAudio),
            ("audio rejected", &rejected_audio, SdpError::NoAudio),
            ("no opus", &no_opus, SdpError::NoOpus),
            ("opus not in m-line", &opus_not_listed, SdpError::NoOpus),
            ("opus wrong clock", &opus_wrong_clock, SdpError::NoOpus),
            ("no ice", &no_ice, SdpError::NoIce),
            ("no fingerprint", &no_fp, SdpError::NoFingerprint),
            ("short fingerprint", &fp_short, SdpError::BadFingerprint),
            ("unknown hash", &fp_hash, SdpError::BadFingerprint),
            ("non-hex fingerprint", &fp_hex, SdpError::BadFingerprint),
            ("short ufrag", &ufrag_short, SdpError::BadIce),
            ("bad pwd char", &pwd_bad, SdpError::BadIce),
        ];
        for (name, sdp, want) in cases {
            assert_eq!(check_offer(sdp), Err(want), "{name}");
        }
    }

    #[test]
    fn a_second_audio_section_with_opus_is_enough() {
        let two = CHROME.replacen(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
            "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=rtpmap:0 PCMU/8000\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
            1,
        );
        assert_eq!(check_offer(&two).unwrap().opus_pt, 111);
    }

    #[test]
    fn dropping_the_48k_telephone_event_keeps_the_rest() {
        let out = drop_payload_types(CHROME, |name, clock| {
            name.eq_ignore_ascii_case("telephone-event") && clock != 8000
        });
        assert!(
            out.contains("m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 126\r\n"),
            "{out}"
        );
        assert!(!out.contains("a=rtpmap:110"));
        assert!(out.contains("a=rtpmap:126 telephone-event/8000\r\n"));
        assert!(out.contains("a=fmtp:111 minptime=10;useinbandfec=1\r\n"));
        assert_eq!(check_offer(&out).unwrap().telephone_event_pt, Some(126));
        // Nothing to drop: unchanged.
        assert_eq!(drop_payload_types(CHROME, |_, _| false), CHROME);
    }

    #[test]
    fn garbage_never_panics() {
        for s in [
            "v=0\r\nm=",
            "v=0\r\nm=audio",
            "v=0\r\nm=audio x",
            "v=0\r\nm=audio 9 RTP/AVP 300\r\na=rtpmap:300 opus/48000",
            "v=0\r\nm=audio 9 RTP/AVP 1\r\na=rtpmap:",
            "v=0\r\nm=audio 9 RTP/AVP 1\r\na=rtpmap:1",
            "v=0\r\nm=audio 9 RTP/AVP 1\r\na=rtpmap:1 ",
            "v=0\r\n\u{0}\u{ffff}",
        ] {
            let _ = check_offer(s);
        }
    }

    const ANSWER: &str = "v=0\r\n\
c=IN IP4 0.0.0.0\r\n\
a=candidate:2693830880 1 udp 2130706431 127.0.0.1 45762 typ host\r\n\
a=candidate:2693830880 2 udp 2130706431 127.0.0.1 45762 typ host\r\n\
a=candidate:77 1 udp 1694498815 198.51.100.7 45762 typ srflx raddr 127.0.0.1 rport 45762\r\n\
a=end-of-candidates\r\n";

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn placeholder_candidates_point_at_the_shared_port() {
        let out = rewrite_host_candidates(ANSWER, sa("127.0.0.1:45762"), &[sa("10.0.0.5:50000")]);
        assert!(
            out.contains("a=candidate:2693830880 1 udp 2130706431 10.0.0.5 50000 typ host\r\n")
        );
        assert!(
            out.contains("a=candidate:2693830880 2 udp 2130706431 10.0.0.5 50000 typ host\r\n")
        );
        assert!(!out.contains("45762 typ host"));
        // Other candidates and lines are untouched.
        assert!(out.contains("198.51.100.7 45762 typ srflx raddr 127.0.0.1 rport 45762"));
        assert!(out.starts_with("v=0\r\nc=IN IP4 0.0.0.0\r\n"));
        assert!(out.ends_with("a=end-of-candidates\r\n"));
    }

    #[test]
    fn several_addresses_give_distinct_copies() {
        let to = [sa("203.0.113.9:50000"), sa("203.0.113.10:50000")];
        let out = rewrite_host_candidates(ANSWER, sa("127.0.0.1:45762"), &to);
        assert!(
            out.contains("a=candidate:2693830880 1 udp 2130706431 203.0.113.9 50000 typ host\r\n")
        );
        assert!(
            out.contains(
                "a=candidate:26938308801 1 udp 2130706430 203.0.113.10 50000 typ host\r\n"
            )
        );
        assert_eq!(out.matches("typ host").count(), 4);
    }

    #[test]
    fn other_addresses_are_left_alone() {
        assert_eq!(
            rewrite_host_candidates(ANSWER, sa("127.0.0.1:1"), &[sa("10.0.0.5:50000")]),
            ANSWER
        );
        assert_eq!(
            rewrite_host_candidates(ANSWER, sa("127.0.0.1:45762"), &[]),
            ANSWER
        );
    }

    /// The CHROME offer with a data channel section (BUNDLE) that repeats the candidates, plus
    /// unusable candidates in the audio section.
    fn with_data_section() -> String {
        let audio = CHROME
            .replace("a=group:BUNDLE 0", "a=group:BUNDLE 0 1")
            .replace(
                "a=candidate:1 1 udp 2113937151 127.0.0.1 54321 typ host generation 0\r\n",
                "a=candidate:1 1 udp 2113937151 127.0.0.1 54321 typ host generation 0\r\n\
a=candidate:2 1 tcp 1518280447 127.0.0.1 9 typ host tcptype active\r\n\
a=candidate:3 2 udp 2113937150 127.0.0.1 54322 typ host\r\n\
a=candidate:4 1 udp 2113937151 3f1b1c9e-1111.local 54323 typ host\r\n\
a=candidate:5 1 udp 2113937151 224.0.0.1 54324 typ host\r\n\
a=candidate:6 1 udp 2113937151 0.0.0.0 54325 typ host\r\n\
a=candidate:7 1 udp 2113937151 127.0.0.1 0 typ host\r\n\
a=candidate:8 1 udp 1677729535 203.0.113.9 61000 typ srflx raddr 0.0.0.0 rport 0\r\n",
            );
        format!(
            "{audio}m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
c=IN IP4 0.0.0.0\r\n\
a=candidate:1 1 udp 2113937151 127.0.0.1 54321 typ host generation 0\r\n\
a=candidate:9 1 udp 2113937151 198.51.100.1 1234 typ host\r\n\
a=mid:1\r\n\
a=sctp-port:5000\r\n"
        )
    }

    #[test]
    fn only_usable_audio_candidates_count() {
        let s = check_offer(&with_data_section()).unwrap();
        assert_eq!(s.audio_section, 0);
        assert_eq!(s.candidates, 2, "the UDP RTP host and the srflx");
    }

    #[test]
    fn other_candidates_are_removed() {
        let offer = with_data_section();
        let kept = keep_audio_candidates(&offer, 0);
        let cands: Vec<&str> = kept
            .lines()
            .filter(|l| l.starts_with("a=candidate:"))
            .collect();
        assert_eq!(
            cands,
            [
                "a=candidate:1 1 udp 2113937151 127.0.0.1 54321 typ host generation 0",
                "a=candidate:8 1 udp 1677729535 203.0.113.9 61000 typ srflx raddr 0.0.0.0 rport 0",
            ]
        );
        // Everything else is untouched, and the result still checks the same.
        let without = |s: &str| -> String {
            s.lines()
                .filter(|l| !l.starts_with("a=candidate:"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(without(&kept), without(&offer));
        assert_eq!(check_offer(&kept).unwrap().candidates, 2);
        // The audio section need not be the first.
        let second = format!(
            "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=candidate:1 1 udp 1 192.0.2.1 5 typ host\r\n{}",
            CHROME.trim_start_matches("v=0\r\n")
        );
        let s = check_offer(&second).unwrap();
        assert_eq!((s.audio_section, s.candidates), (1, 1));
        let kept = keep_audio_candidates(&second, 1);
        assert!(!kept.contains("192.0.2.1"));
        assert!(kept.contains("127.0.0.1 54321"));
    }

    #[test]
    fn a_thousand_candidates_are_counted() {
        let many: String = (0..1000)
            .map(|i| {
                format!(
                    "a=candidate:{i} 1 udp 1 10.{}.{}.1 {} typ host\r\n",
                    i / 256,
                    i % 256,
                    1000 + i
                )
            })
            .collect();
        let offer = CHROME.replace(
            "a=ice-ufrag:abcd\r\n",
            &format!("{many}a=ice-ufrag:abcd\r\n"),
        );
        assert_eq!(check_offer(&offer).unwrap().candidates, 1001);
    }

    mod props {
        use super::super::*;
        use super::CHROME;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn check_offer_never_panics(s in "(v=0\r\n)?([a-z]=[ -~]{0,40}\r?\n){0,30}") {
                let _ = check_offer(&s);
            }

            #[test]
            fn mutated_offers_never_panic(
                cut in 0usize..2000,
                junk in "[ -~\r\n]{0,80}",
                at in 0usize..2000,
            ) {
                let mut s: String = CHROME.chars().take(cut).collect();
                let at = s.char_indices().map(|(i, _)| i).nth(at).unwrap_or(s.len());
                s.insert_str(at, &junk);
                if let Ok(sum) = check_offer(&s) {
                    let kept = keep_audio_candidates(&s, sum.audio_section);
                    // Restricting is idempotent and keeps the offer valid.
                    prop_assert_eq!(check_offer(&kept).map(|k| k.candidates), Ok(sum.candidates));
                    prop_assert_eq!(keep_audio_candidates(&kept, sum.audio_section), kept.clone());
                }
                let _ = drop_payload_types(&s, |n, _| n == "opus");
            }

            #[test]
            fn usable_candidate_never_panics(v in "[ -~]{0,120}") {
                let _ = usable_candidate(&v);
            }
        }
    }
}
