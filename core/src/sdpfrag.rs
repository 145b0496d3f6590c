//! SDP fragments (`application/trickle-ice-sdpfrag`, RFC 8840) for `PATCH` on a call resource,
//! as WHIP uses them (RFC 9725 §4.3): trickled candidates, and ICE restarts.
//!
//! A fragment carries ICE credentials (`a=ice-ufrag`, `a=ice-pwd`; at session level or in a
//! media section), candidates (`a=candidate`, inside an `m=` section with its `a=mid`) and maybe
//! `a=end-of-candidates`. New credentials mean an ICE restart; the same ones (or none) mean
//! trickle. The candidates are destinations of our connectivity checks, so they are
//! attacker-chosen: only usable ones are kept ([`crate::sdp::usable_candidate`]) and a fragment
//! with more than the caller's limit is refused, as an offer is.
//!
//! The WebRTC stack only takes whole descriptions, so a restart is applied by editing the
//! description it already has: [`with_ice`] swaps the credentials and the candidates of a
//! description for a fragment's. [`IceFragment::from_sdp`] reads our answer back into the
//! fragment we reply with.

use crate::sdp::{ice_chars, usable_candidate};

/// What a fragment says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IceFragment {
    /// New or current ICE username fragment.
    pub ufrag: Option<String>,
    /// New or current ICE password.
    pub pwd: Option<String>,
    /// The `a=mid` of the section the candidates came in.
    pub mid: Option<String>,
    /// Candidates: the values after `a=candidate:`.
    pub candidates: Vec<String>,
    /// `a=end-of-candidates` was there.
    pub end_of_candidates: bool,
}

/// Why a fragment was refused. The text is what the developer reads in the `400`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FragError {
    /// A line that is neither an attribute nor a media line.
    #[error("line {0} of the fragment is not an a= or m= line (RFC 8840)")]
    BadLine(usize),
    /// Only one of ufrag and pwd.
    #[error("the fragment has a=ice-ufrag without a=ice-pwd or the other way round")]
    HalfCredentials,
    /// Two different ufrags (or pwds).
    #[error("the fragment names two different sets of ICE credentials")]
    MixedCredentials,
    /// Credentials of the wrong length or alphabet (RFC 8839 §5.4).
    #[error("malformed ICE credentials (ice-ufrag must be 4-256 and ice-pwd 22-256 ice-chars)")]
    BadIce,
    /// More usable candidates than allowed.
    #[error("the fragment has {found} usable candidates; at most {limit} are accepted")]
    TooManyCandidates {
        /// Usable candidates found.
        found: usize,
        /// The limit.
        limit: usize,
    },
    /// Nothing to do.
    #[error("the fragment has neither ICE credentials nor candidates")]
    Empty,
}

impl IceFragment {
    /// Parses a fragment, keeping at most `max_candidates` usable candidates (more is an error;
    /// unusable ones are dropped, as in offers).
    pub fn parse(text: &str, max_candidates: usize) -> Result<IceFragment, FragError> {
        let mut frag = IceFragment::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.is_empty() || line.starts_with("m=") {
                continue;
            }
            let Some(attr) = line.strip_prefix("a=") else {
                return Err(FragError::BadLine(i + 1));
            };
            if let Some(v) = attr.strip_prefix("ice-ufrag:") {
                set_once(&mut frag.ufrag, v)?;
            } else if let Some(v) = attr.strip_prefix("ice-pwd:") {
                set_once(&mut frag.pwd, v)?;
            } else if let Some(v) = attr.strip_prefix("mid:") {
                frag.mid.get_or_insert_with(|| v.trim().to_owned());
            } else if let Some(v) = attr.strip_prefix("candidate:") {
                if usable_candidate(v) {
                    frag.candidates.push(v.trim().to_owned());
                }
            } else if attr == "end-of-candidates" {
                frag.end_of_candidates = true;
            }
            // Anything else (ice-options, group) is not ours to act on.
        }
        match (&frag.ufrag, &frag.pwd) {
            (Some(u), Some(p)) if !ice_chars(u, 4) || !ice_chars(p, 22) => {
                return Err(FragError::BadIce);
            }
            (Some(_), None) | (None, Some(_)) => return Err(FragError::HalfCredentials),
            _ => {}
        }
        if frag.candidates.len() > max_candidates {
            return Err(FragError::TooManyCandidates {
                found: frag.candidates.len(),
                limit: max_candidates,
            });
        }
        if frag.ufrag.is_none() && frag.candidates.is_empty() && !frag.end_of_candidates {
            return Err(FragError::Empty);
        }
        Ok(frag)
    }

    /// The credentials and candidates of a whole description (our answer), as a fragment for
    /// the first media section.
    pub fn from_sdp(sdp: &str) -> IceFragment {
        let mut frag = IceFragment::default();
        for line in sdp.lines() {
            let line = line.trim_end_matches('\r');
            let Some(attr) = line.strip_prefix("a=") else {
                continue;
            };
            if let Some(v) = attr.strip_prefix("ice-ufrag:") {
                frag.ufrag.get_or_insert_with(|| v.to_owned());
            } else if let Some(v) = attr.strip_prefix("ice-pwd:") {
                frag.pwd.get_or_insert_with(|| v.to_owned());
            } else if let Some(v) = attr.strip_prefix("mid:") {
                frag.mid.get_or_insert_with(|| v.to_owned());
            } else if let Some(v) = attr.strip_prefix("candidate:") {
                if !frag.candidates.iter().any(|c| c == v) {
                    frag.candidates.push(v.to_owned());
                }
            } else if attr == "end-of-candidates" {
                frag.end_of_candidates = true;
            }
        }
        frag
    }

    /// Whether this fragment restarts ICE for a peer whose credentials are now `current_ufrag`
    /// and `current_pwd`.
    pub fn is_restart(&self, current_ufrag: &str, current_pwd: &str) -> bool {
        match (&self.ufrag, &self.pwd) {
            (Some(u), Some(p)) => u != current_ufrag || p != current_pwd,
            _ => false,
        }
    }

    /// The fragment as `application/trickle-ice-sdpfrag` text (RFC 8840 §4): credentials at
    /// session level, then one audio section with its mid and candidates.
    pub fn to_sdpfrag(&self) -> String {
        let mut out = String::with_capacity(128 + 96 * self.candidates.len());
        if let (Some(u), Some(p)) = (&self.ufrag, &self.pwd) {
            out.push_str(&format!("a=ice-ufrag:{u}\r\na=ice-pwd:{p}\r\n"));
        }
        out.push_str("m=audio 9 UDP/TLS/RTP/SAVPF 0\r\n");
        if let Some(mid) = &self.mid {
            out.push_str(&format!("a=mid:{mid}\r\n"));
        }
        for c in &self.candidates {
            out.push_str(&format!("a=candidate:{c}\r\n"));
        }
        if self.end_of_candidates {
            out.push_str("a=end-of-candidates\r\n");
        }
        out
    }
}

fn set_once(slot: &mut Option<String>, v: &str) -> Result<(), FragError> {
    let v = v.trim();
    match slot {
        Some(old) if old != v => Err(FragError::MixedCredentials),
        Some(_) => Ok(()),
        None => {
            *slot = Some(v.to_owned());
            Ok(())
        }
    }
}

/// `sdp` with the fragment's credentials in place of its own (everywhere they appear), its
/// candidate lines removed and the fragment's candidates put into the first media section, and
/// its session version (`o=`) raised by one, as a renegotiated description's is.
pub fn with_ice(sdp: &str, frag: &IceFragment) -> String {
    let mut out = String::with_capacity(sdp.len() + 96 * frag.candidates.len());
    let mut sections = 0usize;
    let mut placed = false;
    let place = |out: &mut String| {
        for c in &frag.candidates {
            out.push_str(&format!("a=candidate:{c}\r\n"));
        }
        if frag.end_of_candidates {
            out.push_str("a=end-of-candidates\r\n");
        }
    };
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("m=") {
            sections += 1;
            if sections == 2 && !placed {
                place(&mut out);
                placed = true;
            }
        }
        if line.starts_with("a=candidate:") || line == "a=end-of-candidates" {
            continue;
        }
        if let (true, Some(u)) = (line.starts_with("a=ice-ufrag:"), &frag.ufrag) {
            out.push_str(&format!("a=ice-ufrag:{u}\r\n"));
        } else if let (true, Some(p)) = (line.starts_with("a=ice-pwd:"), &frag.pwd) {
            out.push_str(&format!("a=ice-pwd:{p}\r\n"));
        } else if let Some(origin) = line.strip_prefix("o=") {
            out.push_str("o=");
            out.push_str(&bump_version(origin));
            out.push_str("\r\n");
        } else {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    if !placed && sections > 0 {
        place(&mut out);
    }
    out
}

/// Whether an `If-Match` header value admits the entity tag `current` (RFC 9110 §13.1.1):
/// `*`, or a list with `current` in it (strong comparison; a weak tag never matches).
pub fn if_match_allows(header: &str, current: &str) -> bool {
    let header = header.trim();
    header == "*" || header.split(',').map(str::trim).any(|tag| tag == current)
}

/// `o=<user> <sess-id> <sess-version> ...` with the version raised by one (RFC 8866 §5.2).
fn bump_version(origin: &str) -> String {
    let mut fields: Vec<String> = origin.split(' ').map(str::to_owned).collect();
    if let Some(v) = fields.get_mut(2)
        && let Ok(n) = v.parse::<u64>()
    {
        *v = n.wrapping_add(1).to_string();
    }
    fields.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const UFRAG: &str = "EsAw";
    const PWD: &str = "P2uYro0UCOQ4zxjKXaWCBui1";

    fn restart_frag() -> String {
        format!(
            "a=ice-options:trickle ice2\r\na=group:BUNDLE 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
             a=mid:0\r\na=ice-ufrag:{UFRAG}\r\na=ice-pwd:{PWD}\r\n\
             a=candidate:1 1 udp 2130706431 198.51.100.7 49203 typ host\r\n\
             a=candidate:2 1 udp 1694498815 192.0.2.3 51000 typ srflx raddr 0.0.0.0 rport 0\r\n\
             a=end-of-candidates\r\n"
        )
    }

    #[test]
    fn a_restart_fragment_is_read_whole() {
        let f = IceFragment::parse(&restart_frag(), 10).unwrap();
        assert_eq!(f.ufrag.as_deref(), Some(UFRAG));
        assert_eq!(f.pwd.as_deref(), Some(PWD));
        assert_eq!(f.mid.as_deref(), Some("0"));
        assert_eq!(f.candidates.len(), 2);
        assert!(f.candidates[0].starts_with("1 1 udp 2130706431 198.51.100.7 49203"));
        assert!(f.end_of_candidates);
        assert!(f.is_restart("old0", "oldpasswordoldpassword00"));
        assert!(!f.is_restart(UFRAG, PWD));
    }

    #[test]
    fn a_trickle_fragment_has_candidates_and_no_credentials() {
        let text = "a=mid:0\na=candidate:1 1 UDP 2130706431 10.0.0.1 5000 typ host\n";
        let f = IceFragment::parse(text, 10).unwrap();
        assert_eq!(f.ufrag, None);
        assert_eq!(f.candidates.len(), 1);
        assert!(!f.is_restart(UFRAG, PWD));
    }

    #[test]
    fn fragments_that_cannot_be_used_are_refused_with_a_reason() {
        let cases: [(&str, FragError); 6] = [
            ("v=0\r\n", FragError::BadLine(1)),
            ("a=ice-ufrag:abcd\r\n", FragError::HalfCredentials),
            (
                "a=ice-ufrag:abcd\r\na=ice-ufrag:efgh\r\n",
                FragError::MixedCredentials,
            ),
            ("a=ice-ufrag:ab\r\na=ice-pwd:short\r\n", FragError::BadIce),
            ("a=mid:0\r\n", FragError::Empty),
            (
                "a=candidate:1 1 udp 1 10.0.0.1 1 typ host\na=candidate:2 1 udp 1 10.0.0.2 1 typ host\n",
                FragError::TooManyCandidates { found: 2, limit: 1 },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(IceFragment::parse(text, 1), Err(want), "{text:?}");
        }
    }

    #[test]
    fn unusable_candidates_are_dropped_not_counted() {
        let text = "a=candidate:1 1 udp 1 abc.local 5000 typ host\n\
                    a=candidate:2 2 udp 1 10.0.0.1 5001 typ host\n\
                    a=candidate:3 1 tcp 1 10.0.0.1 9 typ host tcptype active\n\
                    a=candidate:4 1 udp 1 224.0.0.1 5000 typ host\n\
                    a=end-of-candidates\n";
        let f = IceFragment::parse(text, 0).unwrap();
        assert!(f.candidates.is_empty());
        assert!(f.end_of_candidates);
    }

    #[test]
    fn a_fragment_survives_its_own_text() {
        let f = IceFragment::parse(&restart_frag(), 10).unwrap();
        let again = IceFragment::parse(&f.to_sdpfrag(), 10).unwrap();
        assert_eq!(again, f);
    }

    const OFFER: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        a=group:BUNDLE 0 1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n\
        a=ice-ufrag:oldU\r\na=ice-pwd:oldpasswordoldpassword00\r\na=mid:0\r\n\
        a=candidate:9 1 udp 2130706431 127.0.0.1 40000 typ host\r\na=end-of-candidates\r\n\
        a=rtpmap:111 opus/48000/2\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
        a=ice-ufrag:oldU\r\na=ice-pwd:oldpasswordoldpassword00\r\na=mid:1\r\n\
        a=candidate:9 1 udp 2130706431 127.0.0.1 40000 typ host\r\n";

    #[test]
    fn a_description_takes_the_fragments_credentials_and_candidates() {
        let f = IceFragment::parse(&restart_frag(), 10).unwrap();
        let sdp = with_ice(OFFER, &f);
        assert!(
            !sdp.contains("oldU") && !sdp.contains("oldpassword"),
            "{sdp}"
        );
        assert_eq!(sdp.matches(&format!("a=ice-ufrag:{UFRAG}\r\n")).count(), 2);
        assert_eq!(sdp.matches(&format!("a=ice-pwd:{PWD}\r\n")).count(), 2);
        assert!(!sdp.contains("40000"), "old candidates go: {sdp}");
        // The new candidates sit in the first section, before the second m= line.
        let first = &sdp[..sdp.find("m=application").unwrap()];
        assert_eq!(first.matches("a=candidate:").count(), 2, "{sdp}");
        assert_eq!(sdp.matches("a=candidate:").count(), 2, "{sdp}");
        assert!(first.contains("a=end-of-candidates\r\n"));
        assert!(sdp.contains("o=- 4611731400430051336 3 IN IP4"), "{sdp}");
        // Other lines are kept.
        assert!(sdp.contains("a=rtpmap:111 opus/48000/2\r\n"));
        assert!(sdp.contains("a=group:BUNDLE 0 1\r\n"));
    }

    #[test]
    fn if_match_admits_the_current_tag_or_any() {
        assert!(if_match_allows("*", "\"abc\""));
        assert!(if_match_allows("\"abc\"", "\"abc\""));
        assert!(if_match_allows("\"x\", \"abc\"", "\"abc\""));
        assert!(!if_match_allows("\"abd\"", "\"abc\""));
        assert!(
            !if_match_allows("W/\"abc\"", "\"abc\""),
            "strong comparison"
        );
        assert!(!if_match_allows("", "\"abc\""));
    }

    #[test]
    fn our_answer_reads_back_as_a_fragment() {
        let f = IceFragment::from_sdp(OFFER);
        assert_eq!(f.ufrag.as_deref(), Some("oldU"));
        assert_eq!(f.pwd.as_deref(), Some("oldpasswordoldpassword00"));
        assert_eq!(f.mid.as_deref(), Some("0"));
        assert_eq!(
            f.candidates.len(),
            1,
            "a BUNDLE's repeated candidate counts once"
        );
        assert!(f.end_of_candidates);
    }
}
