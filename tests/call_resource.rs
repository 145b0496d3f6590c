//! The call as a resource (WHIP-style, RFC 9725): offers as bare SDP get `201 Created` with
//! `Location`, JSON offers carry `Location` too, `DELETE` on that URL ends the call like the
//! hangup endpoint, and all of it works for a page on another origin. Real server, real client
//! peers.

mod common;

use common::{TestServer, eventually};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use voicegate_core::token::{Claims, mint};
use voicegate_testkit::{ClientPeer, http};

const OFFER: &str = "/webrtc/v1/offer";
const ECHO: &str = "/webrtc/v1/offer?mode=echo";
const SECOND: Duration = Duration::from_secs(1);
/// A well-formed call id that no server issued.
const UNKNOWN: &str = "wrtc-0123456789abcdef0123456789abcdef";

fn location_of(call_id: &str) -> String {
    format!("/webrtc/v1/calls/{call_id}")
}

async fn delete(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> http::Response {
    http::request(server.http, "DELETE", path, headers, b"")
        .await
        .expect("request")
}

async fn post_sdp(
    server: &TestServer,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> http::Response {
    http::request(
        server.http,
        "POST",
        path,
        &[("Content-Type", content_type)],
        body,
    )
    .await
    .expect("request")
}

fn error_of(res: &http::Response) -> String {
    res.json()["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message in {}", res.text()))
        .to_owned()
}

/// A real, gathered offer SDP (its peer closed).
async fn offer_sdp() -> String {
    let (pc, _, _, _, _, sdp) = ClientPeer::offer().await.expect("offer");
    let _ = pc.close().await;
    sdp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdp_offer_gets_201_with_location_and_an_answer_that_carries_the_call() {
    let server = TestServer::start(&[]);
    let peer = ClientPeer::call_sdp(server.http, ECHO, &[])
        .await
        .expect("201 with the answer SDP and a Location");
    assert_eq!(peer.location.as_deref(), Some(&*location_of(&peer.call_id)));
    assert!(peer.answer.starts_with("v=0"), "{}", peer.answer);
    assert!(
        server
            .snapshot()
            .await
            .calls
            .iter()
            .any(|c| c.as_str() == peer.call_id),
        "the Location names the live call"
    );
    peer.wait_connected(5 * SECOND).await.expect("media");
    // `?mode=echo` applied: what we send comes back.
    peer.send_tone(440.0, 50).await.expect("tone sent");
    assert!(
        eventually(2 * SECOND, || peer.received_count() >= 40).await,
        "echo heard: {} frames",
        peer.received_count()
    );
    peer.close().await;
    assert_eq!(
        server
            .end_reason(&peer.call_id, 5 * SECOND)
            .await
            .as_deref(),
        Some("peer-closed")
    );
    server.wait_released(5 * SECOND).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_offers_keep_their_body_and_carry_location() {
    let server = TestServer::start(&[]);
    let peer = ClientPeer::call(server.http, ECHO).await.expect("call");
    assert!(peer.call_id.starts_with("wrtc-"), "{}", peer.call_id);
    assert_eq!(peer.location.as_deref(), Some(&*location_of(&peer.call_id)));
    peer.wait_connected(5 * SECOND).await.expect("media");
    peer.close().await;
    server.wait_released(5 * SECOND).await.unwrap();
}

/// Behind a proxy that mounts voicegate under a path (`X-Forwarded-Prefix: /voice`), the
/// `Location` leads back through it: `/voice/webrtc/v1/calls/<id>`. Only a trusted proxy is
/// believed, and only a plain absolute path (never `//host`, which a browser reads as another
/// host); otherwise the `Location` is the usual one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxys_path_prefix_leads_the_location_back_through_it() {
    let sdp = offer_sdp().await;
    let location = |server: &TestServer, prefix: &'static str| {
        let sdp = sdp.clone();
        let addr = server.http;
        async move {
            let res = http::request(
                addr,
                "POST",
                ECHO,
                &[
                    ("Content-Type", "application/sdp"),
                    ("X-Forwarded-Prefix", prefix),
                ],
                sdp.as_bytes(),
            )
            .await
            .expect("request");
            assert_eq!(res.status, 201, "{}", res.text());
            let location = res.header("location").expect("Location").to_owned();
            let id = location.rsplit('/').next().unwrap().to_owned();
            (location, id)
        }
    };
    let proxied = TestServer::start(&[("http.trusted_proxies", "127.0.0.1")]);
    let (loc, id) = location(&proxied, "/voice/").await;
    assert_eq!(loc, format!("/voice{}", location_of(&id)));
    // The proxy strips its prefix: the call's own path is where it lives here.
    let res = delete(&proxied, &location_of(&id), &[]).await;
    assert_eq!(res.status, 204, "{}", res.text());
    for bad in [
        "//evil.example",
        "/a/../b",
        "voice",
        "https://evil.example/x",
    ] {
        let (loc, id) = location(&proxied, bad).await;
        assert_eq!(loc, location_of(&id), "{bad:?} is not a path prefix");
        delete(&proxied, &loc, &[]).await;
    }
    // From anyone but a trusted proxy the header is the caller's own text: ignored.
    let direct = TestServer::start(&[]);
    let (loc, id) = location(&direct, "/voice").await;
    assert_eq!(loc, location_of(&id));
    delete(&direct, &loc, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_ends_the_call_as_a_client_hangup_and_is_idempotent() {
    let server = TestServer::start(&[]);
    let peer = ClientPeer::call_sdp(server.http, ECHO, &[])
        .await
        .expect("call");
    peer.wait_connected(5 * SECOND).await.expect("media");
    let location = peer.location.clone().expect("Location");

    let res = delete(&server, &location, &[]).await;
    assert_eq!(res.status, 204, "{}", res.text());
    assert!(res.body.is_empty());
    assert_eq!(
        server
            .end_reason(&peer.call_id, 5 * SECOND)
            .await
            .as_deref(),
        Some("client-hangup")
    );
    // The reply comes once the call is released; its routes go with it.
    server.wait_released(2 * SECOND).await.unwrap();

    // Again, and for a call that never existed: nothing to do, still 204.
    assert_eq!(delete(&server, &location, &[]).await.status, 204);
    assert_eq!(
        delete(&server, &location_of(UNKNOWN), &[]).await.status,
        204
    );

    // Not a call id at all: the client's bug, said plainly.
    for bad in ["nope", "wrtc-XYZ", "wrtc-0123456789abcdef0123456789abcdeg"] {
        let res = delete(&server, &location_of(bad), &[]).await;
        assert_eq!(res.status, 400, "{bad}: {}", res.text());
        assert!(
            error_of(&res).contains("is not a call id"),
            "{}",
            res.text()
        );
    }
    // Other methods: 405 naming what the resource supports.
    for method in ["GET", "POST", "PUT"] {
        let res = http::request(server.http, method, &location_of(UNKNOWN), &[], b"")
            .await
            .unwrap();
        assert_eq!(res.status, 405, "{method}");
        assert_eq!(
            res.header("allow"),
            Some("PATCH, DELETE, OPTIONS"),
            "{method}"
        );
        assert_eq!(error_of(&res), "method not allowed");
    }
    // The offer endpoint still names its own.
    let res = delete(&server, OFFER, &[]).await;
    assert_eq!(res.status, 405);
    assert_eq!(res.header("allow"), Some("POST, OPTIONS"));
    server.wait_released(2 * SECOND).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdp_offers_pass_the_same_checks() {
    let server = TestServer::start(&[("http.max_body_bytes", "16384")]);
    let offer = offer_sdp().await;

    // From a web page (it sends `Origin`): another type is refused.
    let res = http::request(
        server.http,
        "POST",
        ECHO,
        &[
            ("Content-Type", "text/plain"),
            ("Origin", "https://app.example"),
        ],
        offer.as_bytes(),
    )
    .await
    .expect("request");
    assert_eq!(res.status, 415);
    let msg = error_of(&res);
    assert!(
        msg.contains("application/json") && msg.contains("application/sdp"),
        "the 415 names both accepted types: {msg}"
    );

    let no_opus = offer.replace("opus/48000/2", "L16/48000/2");
    let cases: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        ("empty", ECHO, b"  \r\n".to_vec(), "expected the offer SDP"),
        ("not utf-8", ECHO, vec![0xff, 0xfe, 0x00], "not UTF-8"),
        (
            "not sdp",
            ECHO,
            b"hello".to_vec(),
            "not a session description",
        ),
        ("no opus", ECHO, no_opus.into_bytes(), "offers no Opus"),
        ("oversized", ECHO, vec![b'v'; 20_000], "too large"),
        (
            "unknown mode",
            "/webrtc/v1/offer?mode=karaoke",
            offer.clone().into_bytes(),
            "unknown mode",
        ),
    ];
    for (name, path, body, want) in cases {
        let res = post_sdp(&server, path, "application/sdp", &body).await;
        assert_eq!(res.status, 400, "{name}: {}", res.text());
        assert_eq!(res.header("location"), None, "{name}");
        let msg = error_of(&res);
        assert!(msg.contains(want), "{name}: {msg:?} does not say {want:?}");
    }
    // Media type parameters are allowed, as for JSON.
    let res = post_sdp(
        &server,
        ECHO,
        "application/SDP; charset=utf-8",
        offer.as_bytes(),
    )
    .await;
    assert_eq!(res.status, 201, "{}", res.text());
    let location = res.header("location").expect("Location").to_owned();
    assert_eq!(delete(&server, &location, &[]).await.status, 204);
    server.wait_released(2 * SECOND).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_the_offer_needs_one_and_the_resource_url_is_the_capability() {
    const SECRET: &str = "a test secret that is long enough for HS256";
    let server = TestServer::start(&[("auth.mode", "token"), ("auth.secrets", SECRET)]);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let bearer = format!(
        "Bearer {}",
        mint(
            SECRET.as_bytes(),
            &Claims {
                exp: now + 120,
                ..Claims::default()
            }
        )
    );

    // An SDP offer without a token: 401, nothing set up.
    let res = post_sdp(
        &server,
        ECHO,
        "application/sdp",
        offer_sdp().await.as_bytes(),
    )
    .await;
    assert_eq!(res.status, 401, "{}", res.text());
    assert!(res.header("www-authenticate").is_some());
    assert_eq!(res.header("location"), None);
    server.wait_released(SECOND).await.unwrap();

    let peer = ClientPeer::call_sdp(server.http, ECHO, &[("Authorization", &bearer)])
        .await
        .expect("a token places an SDP offer");
    peer.wait_connected(5 * SECOND).await.expect("media");
    // Nor does an ICE restart (PATCH): the URL is enough.
    peer.restart_ice(server.http)
        .await
        .expect("a restart without a token");
    peer.wait_connected(5 * SECOND)
        .await
        .expect("media after the restart");
    // DELETE carries no token: the URL is enough.
    let res = delete(&server, peer.location.as_deref().expect("Location"), &[]).await;
    assert_eq!(res.status, 204, "{}", res.text());
    assert_eq!(
        server
            .end_reason(&peer.call_id, 5 * SECOND)
            .await
            .as_deref(),
        Some("client-hangup")
    );
    server.wait_released(2 * SECOND).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_an_allowed_origin_may_delete_the_call_and_read_its_location() {
    let server = TestServer::start(&[("http.allowed_origins", "https://app.example")]);
    let resource = location_of(UNKNOWN);

    // The preflight a browser sends before the DELETE.
    let res = http::request(
        server.http,
        "OPTIONS",
        &resource,
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "DELETE"),
        ],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(res.status, 204);
    assert_eq!(
        res.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let methods = res.header("access-control-allow-methods").unwrap_or("");
    assert!(
        methods.split(", ").any(|m| m == "DELETE"),
        "DELETE allowed: {methods}"
    );
    assert!(
        res.headers_named("vary")
            .iter()
            .any(|v| v.contains("Origin"))
    );

    // The offer's reply lets the page read Location.
    let offer = offer_sdp().await;
    let res = http::request(
        server.http,
        "POST",
        ECHO,
        &[
            ("Origin", "https://app.example"),
            ("Content-Type", "application/sdp"),
        ],
        offer.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(res.status, 201, "{}", res.text());
    assert_eq!(
        res.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let exposed = res.header("access-control-expose-headers").unwrap_or("");
    assert!(
        exposed.split(", ").any(|h| h == "Location"),
        "Location exposed: {exposed}"
    );
    let location = res.header("location").expect("Location").to_owned();

    // The DELETE itself, from the page's origin, carries the headers too.
    let res = delete(&server, &location, &[("Origin", "https://app.example")]).await;
    assert_eq!(res.status, 204);
    assert_eq!(
        res.header("access-control-allow-origin"),
        Some("https://app.example")
    );

    // An origin not on the list gets no CORS headers, so its browser blocks the DELETE.
    let res = http::request(
        server.http,
        "OPTIONS",
        &resource,
        &[
            ("Origin", "https://evil.example"),
            ("Access-Control-Request-Method", "DELETE"),
        ],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(res.header("access-control-allow-origin"), None);
    server.wait_released(2 * SECOND).await.unwrap();
}

const SDPFRAG: &str = "application/trickle-ice-sdpfrag";

async fn patch(
    server: &TestServer,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> http::Response {
    http::request(server.http, "PATCH", path, headers, body.as_bytes())
        .await
        .expect("request")
}

/// An offer without candidates (a trickling client's), posted as bare SDP: its Location and
/// ETag.
async fn trickling_call(server: &TestServer) -> (String, String) {
    let offer: String = offer_sdp()
        .await
        .lines()
        .filter(|l| !l.starts_with("a=candidate:") && *l != "a=end-of-candidates")
        .map(|l| format!("{l}\r\n"))
        .collect();
    let res = post_sdp(server, ECHO, "application/sdp", offer.as_bytes()).await;
    assert_eq!(res.status, 201, "{}", res.text());
    let etag = res.header("etag").expect("the offer's reply has an ETag");
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    (
        res.header("location").expect("Location").to_owned(),
        etag.to_owned(),
    )
}

/// A trickled candidate is one the server checks: `PATCH` with it (no credentials) gets `204`
/// and the server's connectivity checks arrive at that address, naming the call's ufrags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_candidate_is_checked() {
    let server = TestServer::start(&[]);
    let (location, etag) = trickling_call(&server).await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = socket.local_addr().unwrap().port();
    let frag = format!("a=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 {port} typ host\r\n");
    let res = patch(
        &server,
        &location,
        &[("Content-Type", SDPFRAG), ("If-Match", &etag)],
        &frag,
    )
    .await;
    assert_eq!(res.status, 204, "{}", res.text());
    assert_eq!(
        res.header("etag"),
        Some(etag.as_str()),
        "trickle keeps the session"
    );
    let mut buf = [0u8; 1500];
    let (n, from) = tokio::time::timeout(2 * SECOND, socket.recv_from(&mut buf))
        .await
        .expect("a connectivity check reaches the trickled candidate")
        .unwrap();
    assert_eq!(from, server.media, "from the shared port");
    assert_eq!(
        voicegate_core::stun::classify(&buf[..n]),
        voicegate_core::stun::Kind::BindingRequest
    );
    let _ = delete(&server, &location, &[]).await;
    server.wait_released(2 * SECOND).await.unwrap();
}

/// The candidates a caller trickles into one ICE session are bounded together, not only per
/// `PATCH` (the stack keeps, pairs and checks every one): past `media.max_remote_candidates` a
/// fragment gets `400` naming the key, counted as a limit hit; an ICE restart starts a new
/// session with a new allowance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_candidates_are_bounded_per_ice_session() {
    let server = TestServer::start(&[("media.max_remote_candidates", "2")]);
    let (location, _) = trickling_call(&server).await;
    let candidate = |port: u16| {
        format!("a=mid:0\r\na=candidate:{port} 1 udp 2130706431 127.0.0.1 {port} typ host\r\n")
    };
    for port in [9, 10] {
        let res = patch(
            &server,
            &location,
            &[("Content-Type", SDPFRAG)],
            &candidate(port),
        )
        .await;
        assert_eq!(res.status, 204, "{port}: {}", res.text());
    }
    let hits = |text: String| {
        text.lines()
            .find(|l| {
                l.starts_with("voicegate_limit_hits_total{")
                    && l.contains("limit=\"remote_candidates\"")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let metrics = || async {
        http::request(server.http, "GET", "/metrics", &[], b"")
            .await
            .unwrap()
            .text()
    };
    let before = hits(metrics().await);
    let res = patch(
        &server,
        &location,
        &[("Content-Type", SDPFRAG)],
        &candidate(11),
    )
    .await;
    assert_eq!(res.status, 400, "{}", res.text());
    assert!(
        error_of(&res).contains("media.max_remote_candidates"),
        "{}",
        res.text()
    );
    assert!(hits(metrics().await) > before, "counted as a limit hit");

    // A restart is a new session: it may be trickled again.
    let restart = "a=mid:0\r\na=ice-ufrag:newU\r\na=ice-pwd:aNewPasswordOfEnoughLength\r\n";
    let res = patch(&server, &location, &[("Content-Type", SDPFRAG)], restart).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let res = patch(
        &server,
        &location,
        &[("Content-Type", SDPFRAG)],
        &candidate(12),
    )
    .await;
    assert_eq!(res.status, 204, "{}", res.text());

    let _ = delete(&server, &location, &[]).await;
    server.wait_released(2 * SECOND).await.unwrap();
}

/// What a PATCH cannot do gets a status and a reason: a wrong media type (415), a fragment that
/// is not one (400, and too many candidates is counted as a limit hit), an If-Match naming
/// another ICE session (412, with the current ETag), an unknown call (404).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patches_that_cannot_apply_are_refused_with_a_reason() {
    let server = TestServer::start(&[("media.max_remote_candidates", "2")]);
    let (location, etag) = trickling_call(&server).await;
    let candidate = "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n";

    let res = patch(
        &server,
        &location,
        &[("Content-Type", "text/plain")],
        candidate,
    )
    .await;
    assert_eq!(res.status, 415, "{}", res.text());
    assert!(error_of(&res).contains(SDPFRAG), "{}", res.text());

    for (body, reason) in [
        ("v=0\r\n", "not an a= or m= line"),
        ("a=ice-ufrag:abcd\r\n", "without a=ice-pwd"),
        ("a=mid:0\r\n", "neither ICE credentials nor candidates"),
        (
            &*candidate.repeat(3).replace("1 1 udp", "7 1 udp"),
            "at most 2",
        ),
    ] {
        let res = patch(&server, &location, &[("Content-Type", SDPFRAG)], body).await;
        assert_eq!(res.status, 400, "{body:?}: {}", res.text());
        assert!(error_of(&res).contains(reason), "{body:?}: {}", res.text());
    }

    let res = patch(
        &server,
        &location,
        &[("Content-Type", SDPFRAG), ("If-Match", "\"another\"")],
        candidate,
    )
    .await;
    assert_eq!(res.status, 412, "{}", res.text());
    assert_eq!(res.header("etag"), Some(etag.as_str()));

    let res = patch(
        &server,
        &location_of(UNKNOWN),
        &[("Content-Type", SDPFRAG)],
        candidate,
    )
    .await;
    assert_eq!(res.status, 404, "{}", res.text());
    assert!(error_of(&res).contains("no such call"), "{}", res.text());

    let _ = delete(&server, &location, &[]).await;
    server.wait_released(2 * SECOND).await.unwrap();
}

/// A page on an allowed origin may PATCH (its preflight allows the method and If-Match) and read
/// the ETag of the offer's reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_an_allowed_origin_may_patch_with_if_match_and_read_the_etag() {
    let server = TestServer::start(&[("http.allowed_origins", "https://app.example")]);
    let res = http::request(
        server.http,
        "OPTIONS",
        &location_of(UNKNOWN),
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "PATCH"),
            ("Access-Control-Request-Headers", "content-type, if-match"),
        ],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(res.status, 204);
    let methods = res.header("access-control-allow-methods").unwrap_or("");
    assert!(methods.split(", ").any(|m| m == "PATCH"), "{methods}");
    let headers = res.header("access-control-allow-headers").unwrap_or("");
    assert!(headers.split(", ").any(|h| h == "If-Match"), "{headers}");
    // Kept for a while, so the restart PATCH of a changing network needs no preflight first.
    assert_eq!(res.header("access-control-max-age"), Some("600"));
    let exposed = res.header("access-control-expose-headers").unwrap_or("");
    assert!(exposed.split(", ").any(|h| h == "ETag"), "{exposed}");
    server.wait_released(2 * SECOND).await.unwrap();
}
