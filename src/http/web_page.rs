//! The browser page at `/` and its client module, compiled into the binary (no build step, no
//! files to deploy next to it).

use actix_web::HttpResponse;
use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE};

const INDEX_HTML: &str = include_str!("../../web/index.html");
const CLIENT_JS: &str = include_str!("../../web/voicegate.js");

/// `GET /`
pub async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, "text/html; charset=utf-8"))
        .insert_header((CACHE_CONTROL, "no-cache"))
        .body(INDEX_HTML)
}

/// `GET /voicegate.js`
pub async fn client_js() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, "text/javascript; charset=utf-8"))
        .insert_header((CACHE_CONTROL, "no-cache"))
        // The module may be imported by pages on other origins.
        .insert_header(("Access-Control-Allow-Origin", "*"))
        .body(CLIENT_JS)
}
