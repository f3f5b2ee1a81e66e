//! The admin console: one static page, its script and its style sheet,
//! compiled into the binary and served at `/admin/`.
//!
//! The page holds no data. It asks the operator for the admin token, keeps
//! it in the tab's session storage, and calls the token-protected API
//! (`/admin/v1`) with it, so the console can do exactly what the API lets a
//! token holder do, and nothing reaches a browser without the token. No
//! cookie is set, so there is no cross-site request to forge. The script
//! writes data into the page as text only (never as HTML), and the content
//! security policy admits this origin's script and nothing else.

use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                      img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// `/admin/` and its two assets.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/admin", get(|| async { Redirect::permanent("/admin/") }))
        .route("/admin/", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/admin/console.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/admin/console.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            // Served from the binary: a new binary may bring a new page.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
