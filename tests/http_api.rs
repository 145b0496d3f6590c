//! The signaling API's contract: statuses, error bodies, CORS, and that refused requests leave
//! nothing behind.

mod common;

use common::TestServer;
use std::time::Duration;
use voicegate_testkit::{ClientPeer, http};

const OFFER: &str = "/webrtc/v1/offer";

async fn post(server: &TestServer, path: &str, body: &[u8]) -> http::Response {
    http::request(
        server.http,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body,
    )
    .await
    .expect("request")
}

fn error_of(res: &http::Response) -> String {
    assert_eq!(
        res.header("content-type"),
        Some("application/json"),
        "{}",
        res.text()
    );
    res.json()["error"]
        .as_str()
        .expect("error body has a message")
        .to_owned()
}

/// A real offer from a real peer, to break in controlled ways.
async fn real_offer() -> String {
    let (pc, _t, _s, _st, _rx, offer) = ClientPeer::offer().await.unwrap();
    let _ = pc.close().await;
    offer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_ok() {
    let server = TestServer::start(&[]);
    let res = http::request(server.http, "GET", "/health", &[], b"")
        .await
        .unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_offers_get_400_with_a_reason_and_leak_nothing() {
    let server = TestServer::start(&[("http.max_body_bytes", "16384")]);
    let offer = real_offer().await;
    let json = |v: serde_json::Value| serde_json::to_vec(&v).unwrap();

    let no_audio = offer
        .replace("m=audio", "m=video")
        .replace("opus/48000/2", "VP8/90000");
    let no_opus = offer.replace("opus/48000/2", "L16/48000/2");
    let bad_fingerprint = offer.replace("a=fingerprint:sha-256", "a=fingerprint:bogus-hash");
    // Passes our checks, but the WebRTC stack refuses it (a media section needs a mid).
    let broken = offer.replace("a=mid:0\r\n", "");

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("oversized", vec![b' '; 20_000], "too large"),
        ("not json", b"{\"sdp\": ".to_vec(), "not valid JSON"),
        ("json array", b"[1,2]".to_vec(), "not valid JSON"),
        (
            "missing sdp",
            json(serde_json::json!({"type": "offer"})),
            "sdp is missing",
        ),
        (
            "blank sdp",
            json(serde_json::json!({"type": "offer", "sdp": "  \r\n"})),
            "sdp is missing",
        ),
        (
            "answer type",
            json(serde_json::json!({"type": "answer", "sdp": offer})),
            "type must be \"offer\"",
        ),
        (
            "no type",
            json(serde_json::json!({"sdp": offer})),
            "type is missing",
        ),
        (
            "not sdp",
            json(serde_json::json!({"type": "offer", "sdp": "hello"})),
            "not a session description",
        ),
        (
            "no audio",
            json(serde_json::json!({"type": "offer", "sdp": no_audio})),
            "no active audio",
        ),
        (
            "no opus",
            json(serde_json::json!({"type": "offer", "sdp": no_opus})),
            "offers no Opus",
        ),
        (
            "bad fingerprint",
            json(serde_json::json!({"type": "offer", "sdp": bad_fingerprint})),
            "malformed DTLS fingerprint",
        ),
        (
            "stack refuses",
            json(serde_json::json!({"type": "offer", "sdp": broken})),
            "cannot be negotiated",
        ),
    ];
    for (name, body, want) in cases {
        let res = post(&server, OFFER, &body).await;
        assert_eq!(res.status, 400, "{name}: {}", res.text());
        let msg = error_of(&res);
        assert!(msg.contains(want), "{name}: {msg:?} does not say {want:?}");
    }
    let res = post(
        &server,
        "/webrtc/v1/offer?mode=karaoke",
        &json(serde_json::json!({"type": "offer", "sdp": offer})),
    )
    .await;
    assert_eq!(res.status, 400);
    assert!(error_of(&res).contains("unknown mode"));
    // A query string that does not parse gets the same JSON error body as every refusal.
    let res = post(
        &server,
        "/webrtc/v1/offer?mode=echo&mode=echo",
        &json(serde_json::json!({"type": "offer", "sdp": offer})),
    )
    .await;
    assert_eq!(res.status, 400, "{}", res.text());
    assert!(error_of(&res).contains("duplicate field"), "{}", res.text());

    // Other methods: 405 with Allow.
    for method in ["GET", "PUT", "DELETE"] {
        let res = http::request(server.http, method, OFFER, &[], b"")
            .await
            .unwrap();
        assert_eq!(res.status, 405, "{method}");
        assert_eq!(res.header("allow"), Some("POST, OPTIONS"));
        assert_eq!(error_of(&res), "method not allowed");
    }
    let res = http::request(server.http, "GET", "/webrtc/v1/hangup", &[], b"")
        .await
        .unwrap();
    assert_eq!(res.status, 405);
    let res = http::request(server.http, "POST", "/webrtc/v1/hangup", &[], b"")
        .await
        .unwrap();
    assert_eq!(res.status, 400);
    assert!(error_of(&res).contains("missing call_id"));
    let res = http::request(server.http, "GET", "/nope", &[], b"")
        .await
        .unwrap();
    assert_eq!(res.status, 404);
    assert_eq!(error_of(&res), "not found");

    // Nothing was created, or everything created was released.
    server.wait_released(Duration::from_secs(2)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_is_refused_even_without_content_length_truth() {
    // A body larger than declared limit, sent with an honest length: refused before parsing.
    let server = TestServer::start(&[("http.max_body_bytes", "2048")]);
    let body = format!("{{\"type\":\"offer\",\"sdp\":\"{}\"}}", "v".repeat(4096));
    let res = post(&server, OFFER, body.as_bytes()).await;
    assert_eq!(res.status, 400);
    assert!(error_of(&res).contains("limit 2048 bytes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_reflects_any_origin_by_default() {
    let server = TestServer::start(&[]);
    let res = http::request(
        server.http,
        "OPTIONS",
        OFFER,
        &[("Origin", "https://app.example")],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(res.status, 204);
    assert_eq!(
        res.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        res.header("access-control-allow-methods"),
        Some("POST, PATCH, DELETE, OPTIONS"),
        "the call's resource URL takes PATCH and DELETE"
    );
    assert_eq!(
        res.header("access-control-allow-headers"),
        Some("Content-Type, Authorization, If-Match"),
        "a page on another origin may send its call token, and name its ICE session"
    );
    assert_eq!(
        res.header("access-control-expose-headers"),
        Some("Location, ETag, WWW-Authenticate, Retry-After")
    );
    assert!(
        res.headers_named("vary")
            .iter()
            .any(|v| v.contains("Origin"))
    );
    // Error replies carry them too, so a page can read the reason.
    let res = http::request(
        server.http,
        "POST",
        OFFER,
        &[
            ("Origin", "https://app.example"),
            ("Content-Type", "application/json"),
        ],
        b"{}",
    )
    .await
    .unwrap();
    assert_eq!(res.status, 400);
    assert_eq!(
        res.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    // No Origin: no CORS headers.
    let res = http::request(server.http, "OPTIONS", OFFER, &[], b"")
        .await
        .unwrap();
    assert_eq!(res.header("access-control-allow-origin"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allowlist_only_lets_listed_origins_read() {
    let server = TestServer::start(&[(
        "http.allowed_origins",
        "https://a.example,https://b.example",
    )]);
    for (origin, allowed) in [
        ("https://a.example", true),
        ("https://b.example", true),
        ("https://evil.example", false),
    ] {
        let res = http::request(
            server.http,
            "OPTIONS",
            "/webrtc/v1/hangup",
            &[("Origin", origin)],
            b"",
        )
        .await
        .unwrap();
        assert_eq!(res.status, 204, "{origin}");
        let got = res.header("access-control-allow-origin");
        assert_eq!(got.is_some(), allowed, "{origin}: {got:?}");
        if allowed {
            assert_eq!(got, Some(origin));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_and_client_module_are_served() {
    let server = TestServer::start(&[]);
    let page = http::request(server.http, "GET", "/", &[], b"")
        .await
        .unwrap();
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        page.text()
            .contains("import { VoicegateCall } from \"./voicegate.js\"")
    );
    let js = http::request(server.http, "GET", "/voicegate.js", &[], b"")
        .await
        .unwrap();
    assert_eq!(js.status, 200);
    assert!(
        js.header("content-type")
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(js.text().contains("export class VoicegateCall"));
}
