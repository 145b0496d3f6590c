//! Attacks on the HTTP edge, kept as regression tests against the real server on 127.0.0.1:
//! cross-site call creation, slow bodies, forged `X-Forwarded-For`, offer floods from one
//! source, and attacker text echoed back.

mod common;

use common::TestServer;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use voicegate_testkit::{ClientPeer, http};

const ECHO: &str = "/webrtc/v1/offer?mode=echo";

/// A real offer from a peer that is closed again (nobody will answer our checks).
async fn offer_sdp() -> String {
    let (pc, _, _, _, _, sdp) = ClientPeer::offer().await.expect("offer");
    pc.close().await.expect("close");
    sdp
}

fn body(sdp: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"type": "offer", "sdp": sdp})).unwrap()
}

/// Posts the offer as JSON with `X-Forwarded-For: xff`.
async fn post_as(addr: std::net::SocketAddr, sdp: &str, xff: &str) -> http::Response {
    http::request(
        addr,
        "POST",
        ECHO,
        &[
            ("Content-Type", "application/json"),
            ("X-Forwarded-For", xff),
        ],
        &body(sdp),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simple_cross_site_post_cannot_create_a_call() {
    let server = TestServer::start(&[]);
    let sdp = offer_sdp().await;
    // What any web page can send without a CORS preflight: text/plain (or form) content.
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut headers = vec![("Origin", "https://evil.example")];
        if let Some(ct) = ct {
            headers.push(("Content-Type", ct));
        }
        let res = http::request(server.http, "POST", ECHO, &headers, &body(&sdp))
            .await
            .unwrap();
        assert_eq!(res.status, 415, "{ct:?}: {}", res.text());
        assert!(res.text().contains("application/json"), "{}", res.text());
    }
    assert!(
        server.snapshot().await.calls.is_empty(),
        "no call was set up"
    );
    // Without `Origin` it is no web page's request: read as JSON whatever its type, as the
    // original read every offer (`curl -d`, a script that sets no type).
    for ct in [Some("application/x-www-form-urlencoded"), None] {
        let headers: Vec<(&str, &str)> = ct.map(|ct| ("Content-Type", ct)).into_iter().collect();
        let res = http::request(server.http, "POST", ECHO, &headers, &body(&sdp))
            .await
            .unwrap();
        assert_eq!(res.status, 200, "{ct:?}: {}", res.text());
    }
    // JSON with parameters is JSON.
    let res = http::request(
        server.http,
        "POST",
        ECHO,
        &[("Content-Type", "application/json; charset=utf-8")],
        &body(&sdp),
    )
    .await
    .unwrap();
    assert_eq!(res.status, 200, "{}", res.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_opaque_origin_is_never_reflected_unless_listed() {
    let server = TestServer::start(&[]);
    for method in ["OPTIONS", "POST"] {
        let res = http::request(
            server.http,
            method,
            ECHO,
            &[("Origin", "null"), ("Content-Type", "application/json")],
            b"{}",
        )
        .await
        .unwrap();
        assert_eq!(
            res.header("access-control-allow-origin"),
            None,
            "{method} from Origin: null"
        );
    }
    let listed = TestServer::start(&[("http.allowed_origins", "null")]);
    let res = http::request(listed.http, "OPTIONS", ECHO, &[("Origin", "null")], b"")
        .await
        .unwrap();
    assert_eq!(res.header("access-control-allow-origin"), Some("null"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickled_byte_by_byte_is_cut_off() {
    let server = TestServer::start(&[("http.body_timeout_ms", "1000")]);
    let mut s = tokio::net::TcpStream::connect(server.http).await.unwrap();
    s.write_all(
        format!(
            "POST {ECHO} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let t0 = Instant::now();
    // One byte every 100 ms: the request would take 500 s.
    let mut reply = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let _ = s.write_all(b" ").await;
        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => reply.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "still reading after 5 s"
        );
        if reply.windows(4).any(|w| w == b"\r\n\r\n") && t0.elapsed() > Duration::from_secs(1) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    // Untrusted: one source (127.0.0.1) whatever the header says.
    let server = TestServer::start(&[("admission.calls_per_ip", "1")]);
    let sdp = offer_sdp().await;
    let post = |xff: &'static str| post_as(server.http, &sdp, xff);
    assert_eq!(post("198.51.100.1").await.status, 200);
    let res = post("198.51.100.2").await;
    assert_eq!(
        res.status,
        429,
        "a forged header gave a new source: {}",
        res.text()
    );
    assert!(res.header("retry-after").is_some());

    // Behind a trusted proxy: the client it names is the source.
    let proxied = TestServer::start(&[
        ("admission.calls_per_ip", "1"),
        ("http.trusted_proxies", "127.0.0.1/32"),
    ]);
    let post = |xff: &'static str| post_as(proxied.http, &sdp, xff);
    assert_eq!(post("198.51.100.1").await.status, 200);
    assert_eq!(post("198.51.100.2").await.status, 200);
    // The client cannot pick its address by prepending one: the proxy appended the real one.
    let res = post("203.0.113.77, 198.51.100.1").await;
    assert_eq!(res.status, 429, "{}", res.text());
    // Nor by sending a header line of its own, which a proxy keeps and follows with its own
    // line (HAProxy's `option forwardfor` appends a header rather than extending the list).
    let res = http::request(
        proxied.http,
        "POST",
        ECHO,
        &[
            ("Content-Type", "application/json"),
            ("X-Forwarded-For", "203.0.113.78"),
            ("X-Forwarded-For", "198.51.100.2"),
        ],
        &body(&sdp),
    )
    .await
    .unwrap();
    assert_eq!(
        res.status,
        429,
        "the client's own header line chose its source: {}",
        res.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_flood_from_one_source_leaves_room_for_others() {
    let server = TestServer::start(&[
        ("calls.max", "10"),
        ("admission.calls_per_ip", "3"),
        ("admission.offers_per_ip_per_s", "2"),
        ("admission.offer_burst", "5"),
        ("http.trusted_proxies", "127.0.0.1"),
        // The flood's calls never authenticate; keep them for the whole test, so the count
        // of admitted calls does not depend on how fast this machine answers 40 offers.
        ("calls.auth_timeout_ms", "60000"),
        ("calls.connect_timeout_ms", "60000"),
    ]);
    let sdp = offer_sdp().await;
    let flood = |xff: &'static str| post_as(server.http, &sdp, xff);
    // 40 offers at once from one source: 3 calls, the rest refused (calls or rate).
    let mut statuses = Vec::new();
    for _ in 0..40 {
        statuses.push(flood("198.51.100.9").await.status);
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(ok, 3, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    // Someone else still gets through and really connects (the server had room: 3 of 10).
    let mut other = None;
    for _ in 0..3 {
        let peer = ClientPeer::call(server.http, ECHO).await;
        if let Ok(p) = peer {
            other = Some(p);
            break;
        }
    }
    let other = other.expect("another source placed a call");
    other
        .wait_connected(Duration::from_secs(5))
        .await
        .expect("connected");
    other.close().await;
    let metrics = voicegate_testkit::without_node_label(
        &http::request(server.http, "GET", "/metrics", &[], b"")
            .await
            .unwrap()
            .text(),
    );
    for limit in ["calls_per_ip", "offers_per_ip"] {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("voicegate_limit_hits_total{{limit=\"{limit}\"}}")))
            .unwrap_or_else(|| panic!("no {limit} series"));
        let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(n > 0, "{line}");
    }
}

/// An IPv6 /48 holds 65 536 /64s, each a source of its own: offers from many /64s of one /48
/// fill at most `admission.calls_per_prefix` calls and post at most
/// `admission.offers_per_prefix_per_s` offers together, while another /48 still gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sources_of_one_ipv6_48_cannot_fill_the_server() {
    let server = TestServer::start(&[
        ("calls.max", "20"),
        ("admission.calls_per_ip", "3"),
        ("admission.calls_per_prefix", "5"),
        ("admission.offers_per_ip_per_s", "2"),
        ("admission.offer_burst", "5"),
        ("admission.offers_per_prefix_per_s", "100"),
        ("admission.prefix_offer_burst", "100"),
        ("http.trusted_proxies", "127.0.0.1"),
        // The flood's calls never authenticate; keep them for the whole test.
        ("calls.auth_timeout_ms", "60000"),
        ("calls.connect_timeout_ms", "60000"),
    ]);
    let sdp = offer_sdp().await;
    // 30 offers, each from its own /64 of 2001:db8:7::/48: one call per /64 would be within
    // every per-source limit, and 20 of them would fill the server.
    let mut statuses = Vec::new();
    for n in 1..=30 {
        let res = post_as(server.http, &sdp, &format!("2001:db8:7:{n:x}::1")).await;
        if res.status == 429 {
            assert!(
                res.text().contains("admission.calls_per_prefix"),
                "{}",
                res.text()
            );
        }
        statuses.push(res.status);
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(ok, 5, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    // Another /48 still gets a call, as does an IPv4 caller.
    assert_eq!(
        post_as(server.http, &sdp, "2001:db8:8:1::1").await.status,
        200
    );
    assert_eq!(post_as(server.http, &sdp, "198.51.100.7").await.status, 200);
    assert!(
        common::metric(
            &server,
            r#"voicegate_limit_hits_total{limit="calls_per_prefix"}"#
        )
        .await
            >= 25.0
    );

    // The offer rate, counted by /48 (no calls limit in the way: the offers are refused before
    // their bodies are read, so whatever else they would meet is not reached).
    let server = TestServer::start(&[
        ("admission.offers_per_ip_per_s", "2"),
        ("admission.offer_burst", "5"),
        ("admission.offers_per_prefix_per_s", "0.1"),
        ("admission.prefix_offer_burst", "3"),
        ("http.trusted_proxies", "127.0.0.1"),
    ]);
    let mut refused = Vec::new();
    for n in 1..=6 {
        let res = post_as(server.http, "v=0", &format!("2001:db8:9:{n:x}::1")).await;
        refused.push(res.status == 429);
        if res.status == 429 {
            assert!(
                res.text().contains("admission.offers_per_prefix_per_s"),
                "{}",
                res.text()
            );
            assert!(res.header("retry-after").is_some(), "Retry-After");
        }
    }
    assert_eq!(refused, [false, false, false, true, true, true]);
    assert_ne!(
        post_as(server.http, "v=0", "2001:db8:a:1::1").await.status,
        429
    );
    assert!(
        common::metric(
            &server,
            r#"voicegate_limit_hits_total{limit="offers_per_prefix"}"#
        )
        .await
            >= 3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_never_checks_in_frees_its_slot_soon() {
    let server = TestServer::start(&[("calls.auth_timeout_ms", "1000")]);
    let res = http::post_offer(server.http, ECHO, &offer_sdp().await)
        .await
        .unwrap();
    assert_eq!(res.status, 200);
    let t0 = Instant::now();
    server
        .wait_released(Duration::from_secs(4))
        .await
        .expect("released");
    // The connect timeout (15 s) would have held it far longer.
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacker_text_is_not_echoed_at_length() {
    let server = TestServer::start(&[]);
    let long = format!("{}\n\u{1b}[2J", "x".repeat(20_000));
    for (path, payload) in [
        (
            ECHO.to_owned(),
            serde_json::json!({"type": long.clone(), "sdp": "v=0"}),
        ),
        (
            format!("/webrtc/v1/offer?mode={}", "m".repeat(5000)),
            serde_json::json!({"type": "offer", "sdp": "v=0"}),
        ),
        (
            ECHO.to_owned(),
            serde_json::json!({"type": "offer", "sdp": 7, "x": long}),
        ),
    ] {
        let res = http::post_json(server.http, &path, &payload).await.unwrap();
        assert_eq!(res.status, 400, "{}", res.text());
        let text = res.text();
        assert!(text.len() < 1200, "{} bytes echoed: {text}", text.len());
        assert!(!text.contains('\u{1b}'), "{text}");
    }
}
