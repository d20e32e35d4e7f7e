//! The web console, served at `/console/` on the admin listener (so over
//! HTTPS when the admin API has TLS). Its files are embedded in the binary
//! (`src/admin/console/`): no build step, no CDN, nothing fetched from
//! elsewhere at run time, so it works on an air-gapped network.
//!
//! The console is a client of the public API: it signs every call in the
//! browser (WebCrypto, ACS3-HMAC-SHA256) with an access key the operator
//! enters, so permissions, the owner check, rate limits and the audit
//! trail apply to it exactly as to the SDKs. This module only serves
//! files, with a strict Content-Security-Policy (no inline script, no
//! framing, connections to this origin only).

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde_json::json;

use super::AdminState;

const INDEX: &str = include_str!("console/index.html");
const APP: &str = include_str!("console/app.js");
const SIGN: &str = include_str!("console/sign.js");
const STYLE: &str = include_str!("console/style.css");

/// The policy of every console response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; \
     frame-ancestors 'none'";

/// The console's routes.
pub(super) fn routes() -> Router<AdminState> {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route(
            "/console/",
            get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/console/app.js",
            get(|| async { asset(APP, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/console/sign.js",
            get(|| async { asset(SIGN, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/console/style.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
        .route("/console/instance.json", get(instance))
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    secure(headers);
    response
}

fn secure(headers: &mut axum::http::HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// What the sign-in page pre-fills: the instance id (not a secret: every
/// call names it) and this node.
async fn instance(State(state): State<AdminState>) -> Response {
    let mut response = axum::Json(json!({
        "instance_id": state.ctx.instance.id,
        "node_id": &*state.ctx.node_id,
    }))
    .into_response();
    secure(response.headers_mut());
    response
}
