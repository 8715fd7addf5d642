//! The demo page served at `GET PREFIX/`: one self-contained HTML file
//! (`demo.html`: markup, CSS and script inline; no CDN, no build step) compiled
//! into the binary. Its element ids (`#status`, `#log`, `#text`, `#send`,
//! `#users`) are part of the contract (docs/chat-protocol.md): people and tests rely on them.

use http::{header, HeaderValue, Response};

use crate::body::Body;
use crate::body::{empty, full};

const DEMO: &str = include_str!("demo.html");

/// Everything the page may load or talk to: itself, and the chat endpoints on
/// the same origin (WebSocket included).
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self' ws: wss:; img-src data:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

pub fn response(head: bool) -> Response<Body> {
    let mut r = Response::new(if head { empty() } else { full(DEMO) });
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // No framing (clickjacking): CSP's frame-ancestors, and the header older
    // browsers read.
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(DEMO.len()));
    r
}
