//! Call tokens (`auth.mode = "token"`) against the real server and a real client peer: refusals
//! cost nothing, a good token places the call, and what the token decided wins over the body.

mod common;

use common::TestServer;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use voicegate_core::token::{Claims, mint};
use voicegate_testkit::dialog_app::TestDialogApp;
use voicegate_testkit::{ClientPeer, http};

const SECRET: &str = "a test secret that is long enough for HS256";
const OLD_SECRET: &str = "the previous secret still accepted in rotation";
const SECOND: Duration = Duration::from_secs(1);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(secret: &str, claims: Claims) -> String {
    mint(secret.as_bytes(), &claims)
}

fn fresh(claims: Claims) -> Claims {
    Claims {
        exp: now() + 120,
        ..claims
    }
}

fn server(app: &TestDialogApp) -> TestServer {
    server_with(app, &[])
}

/// [`server`], plus `extra` settings.
fn server_with(app: &TestDialogApp, extra: &[(&str, &str)]) -> TestServer {
    let secrets = format!("{SECRET},{OLD_SECRET}");
    let url = app.url();
    let mut settings = vec![
        ("auth.mode", "token"),
        ("auth.secrets", secrets.as_str()),
        ("dialog.url", url.as_str()),
    ];
    settings.extend_from_slice(extra);
    TestServer::start(&settings)
}

/// Places an echo call (with `token`, when given) and waits for it to end `max-duration`;
/// how long that took from connected media.
async fn ends_at_max_duration(server: &TestServer, token: Option<&str>) -> Duration {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| vec![("Authorization", b)])
        .unwrap_or_default();
    let peer = ClientPeer::call_with_headers(server.http, "/webrtc/v1/offer?mode=echo", &headers)
        .await
        .expect("call placed");
    peer.wait_connected(5 * SECOND).await.expect("media");
    let t0 = std::time::Instant::now();
    assert_eq!(
        server
            .end_reason(&peer.call_id, 5 * SECOND)
            .await
            .as_deref(),
        Some("max-duration")
    );
    peer.close().await;
    t0.elapsed()
}

async fn offer_sdp() -> String {
    let (pc, _, _, _, _, sdp) = ClientPeer::offer().await.expect("offer");
    let _ = pc.close().await;
    sdp
}

async fn post(server: &TestServer, path: &str, auth: Option<&str>, sdp: &str) -> http::Response {
    let bearer = auth.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| vec![("Authorization", b)])
        .unwrap_or_default();
    http::post_json_with(
        server.http,
        path,
        &headers,
        &serde_json::json!({"type": "offer", "sdp": sdp, "payload": {"from": "the browser"}}),
    )
    .await
    .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_without_a_valid_token_get_401_and_set_nothing_up() {
    let app = TestDialogApp::start().await;
    let server = server(&app);
    let sdp = offer_sdp().await;
    let expired = token(
        SECRET,
        Claims {
            exp: now() - 120,
            ..Claims::default()
        },
    );
    let forged = token(
        "somebody else's secret, long enough",
        fresh(Claims::default()),
    );
    let cases: [(Option<&str>, &str); 4] = [
        (None, "a call token is required"),
        (Some("not-a-jwt"), "malformed"),
        (Some(&expired), "expired"),
        (Some(&forged), "signature"),
    ];
    for (auth, why) in cases {
        let res = post(&server, "/webrtc/v1/offer", auth, &sdp).await;
        assert_eq!(res.status, 401, "{why}: {}", res.text());
        let challenge = res.header("www-authenticate").unwrap_or_default();
        assert!(challenge.starts_with("Bearer"), "{why}: {challenge:?}");
        assert!(
            res.json()["error"].as_str().unwrap_or("").contains(why),
            "{why}: {}",
            res.text()
        );
    }
    let snap = server.snapshot().await;
    assert!(snap.calls.is_empty(), "no call was set up");
    assert!(snap.recent_ends.is_empty(), "no call was even started");
    assert!(app.dials().is_empty(), "no dialog app was dialled");
    let metrics = voicegate_testkit::without_node_label(
        &http::request(server.http, "GET", "/metrics", &[], b"")
            .await
            .unwrap()
            .text(),
    );
    // Process-wide, and the other tests here refuse tokens too: at least these four.
    let counted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("voicegate_offers_unauthorized_total "))
        .and_then(|n| n.parse().ok())
        .expect("the series is exported");
    assert!(counted >= 4, "counted: {counted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_places_the_call_and_its_claims_win_over_the_body() {
    let app = TestDialogApp::start().await;
    let server = server(&app);
    // Signed with the older of the two secrets: rotation keeps it valid.
    let t = token(
        OLD_SECRET,
        fresh(Claims {
            sub: Some("user-42".into()),
            payload: Some(serde_json::json!({"plan": "from the backend"})),
            jti: Some("call-1".into()),
            ..Claims::default()
        }),
    );
    let bearer = format!("Bearer {t}");
    let peer = ClientPeer::call_with_headers(
        server.http,
        "/webrtc/v1/offer",
        &[("Authorization", &bearer)],
    )
    .await
    .expect("call placed with a token");
    peer.wait_connected(5 * SECOND).await.expect("media");
    let started = app
        .wait_type(5 * SECOND, "call.started", None)
        .await
        .expect("call.started");
    assert_eq!(started["sub"], "user-42");
    let dial = &app.dials()[0];
    assert!(
        dial.contains("from+the+backend") || dial.contains("from%20the%20backend"),
        "the token's payload is dialled: {dial}"
    );
    peer.close().await;

    // The same single-use token again: refused, nothing set up.
    let res = post(&server, "/webrtc/v1/offer", Some(&t), &offer_sdp().await).await;
    assert_eq!(res.status, 401, "{}", res.text());
    assert!(res.text().contains("already used"), "{}", res.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echo_token_allows_an_echo_test_only() {
    let app = TestDialogApp::start().await;
    let server = server(&app);
    let echo_only = token(
        SECRET,
        fresh(Claims {
            mode: Some("echo".into()),
            ..Claims::default()
        }),
    );
    let sdp = offer_sdp().await;
    let res = post(
        &server,
        "/webrtc/v1/offer?mode=dialog",
        Some(&echo_only),
        &sdp,
    )
    .await;
    assert_eq!(res.status, 403, "{}", res.text());
    assert!(res.text().contains("echo test only"), "{}", res.text());
    let res = post(
        &server,
        "/webrtc/v1/offer?mode=echo",
        Some(&echo_only),
        &sdp,
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    // Without `mode`, the token makes it an echo test: the dialog app is never dialled.
    let res = post(&server, "/webrtc/v1/offer", Some(&echo_only), &sdp).await;
    assert_eq!(res.status, 200, "{}", res.text());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(app.dials().is_empty(), "an echo test dials no app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_ends_at_the_tokens_max_duration() {
    let app = TestDialogApp::start().await;
    let server = server(&app);
    let t = token(
        SECRET,
        fresh(Claims {
            max_duration_s: Some(2),
            ..Claims::default()
        }),
    );
    ends_at_max_duration(&server, Some(&t)).await;
}

/// `calls.max_duration_s` bounds every call, with or without a token (a tab left open keeps
/// sending audio, so nothing else would end it); a token's `max_duration_s` may shorten it, never
/// lengthen it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_max_duration_ends_calls_and_a_token_cannot_lengthen_it() {
    let open = TestServer::start(&[("calls.max_duration_s", "1")]);
    let took = ends_at_max_duration(&open, None).await;
    assert!(took < 3 * SECOND, "{took:?}");

    let app = TestDialogApp::start().await;
    let server = server_with(&app, &[("calls.max_duration_s", "1")]);
    let longer = token(
        SECRET,
        fresh(Claims {
            max_duration_s: Some(60),
            ..Claims::default()
        }),
    );
    let took = ends_at_max_duration(&server, Some(&longer)).await;
    assert!(
        took < 3 * SECOND,
        "the token's 60 s outlasted the server's 1 s: {took:?}"
    );
}

/// A single-use token spent on an offer that could not become a call (here: the server is full)
/// is given back: the caller told to retry after `Retry-After` can retry with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_use_token_refused_for_a_full_server_can_be_used_again() {
    let app = TestDialogApp::start().await;
    let server = server_with(&app, &[("calls.max", "1")]);
    let echo = |jti: &str| {
        token(
            SECRET,
            fresh(Claims {
                mode: Some("echo".into()),
                jti: Some(jti.into()),
                ..Claims::default()
            }),
        )
    };
    let holder = format!("Bearer {}", echo("the-first-call"));
    let first = ClientPeer::call_with_headers(
        server.http,
        "/webrtc/v1/offer",
        &[("Authorization", &holder)],
    )
    .await
    .expect("the first call is placed");
    first.wait_connected(5 * SECOND).await.expect("media");

    let retried = echo("the-retried-call");
    let sdp = offer_sdp().await;
    let res = post(&server, "/webrtc/v1/offer", Some(&retried), &sdp).await;
    assert_eq!(res.status, 503, "{}", res.text());
    assert!(res.header("retry-after").is_some());

    first.close().await;
    server
        .wait_released(5 * SECOND)
        .await
        .expect("the first call ended");
    let res = post(
        &server,
        "/webrtc/v1/offer",
        Some(&retried),
        &offer_sdp().await,
    )
    .await;
    assert_eq!(
        res.status,
        200,
        "the token the full server refused was burnt: {}",
        res.text()
    );
    // Used now: a second time is refused.
    let res = post(
        &server,
        "/webrtc/v1/offer",
        Some(&retried),
        &offer_sdp().await,
    )
    .await;
    assert_eq!(res.status, 401, "{}", res.text());
}
