//! The web playground: plain HTML/CSS/JS compiled into the binary (no build step), served at
//! `/` without a key; the page asks for one and talks to `/v1` like any client.

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

const INDEX: &str = include_str!("../playground/index.html");
const FILES: &[(&str, &str, &str)] = &[
    (
        "playground.js",
        "text/javascript; charset=utf-8",
        include_str!("../playground/playground.js"),
    ),
    (
        "mask.js",
        "text/javascript; charset=utf-8",
        include_str!("../playground/mask.js"),
    ),
    (
        "playground.css",
        "text/css; charset=utf-8",
        include_str!("../playground/playground.css"),
    ),
];

/// Scripts and styles from this server only; images also from `public_url` (another host
/// when links point at a CDN or object store) and data/blob URIs (previews, the mask editor).
const CSP: &str = "default-src 'self'; img-src * data: blob:; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; frame-ancestors 'none'";

pub async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX)
}

pub async fn asset(Path(file): Path<String>) -> Response {
    match FILES.iter().find(|(name, _, _)| *name == file) {
        Some((_, kind, body)) => page(kind, body),
        None => ApiError::not_found("no such playground file").into_response(),
    }
}

fn page(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            // the files change with the binary: always revalidate
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}
