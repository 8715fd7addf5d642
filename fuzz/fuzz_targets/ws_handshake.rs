//! The WebSocket opening-handshake validator (`proxy::ws::validate`) on
//! arbitrary request heads: byte 0 picks the HTTP version and an RFC 8441
//! `:protocol`, the rest is `METHOD URI` then `name: value` lines. Whatever the
//! input, `validate` returns Ok or Err and never panics; an accepted handshake
//! is internally consistent.
#![no_main]

use http::{HeaderName, HeaderValue, Method, Request, Version};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let mut lines = rest.split(|b| *b == b'\n');
    let first = lines.next().unwrap_or_default();
    let mut parts = first.splitn(2, |b| *b == b' ');
    let method = Method::from_bytes(parts.next().unwrap_or_default()).unwrap_or(Method::GET);
    let uri = parts
        .next()
        .and_then(|u| http::Uri::try_from(u.trim_ascii()).ok())
        .unwrap_or_else(|| http::Uri::from_static("/"));
    let version = match ctl & 3 {
        0 => Version::HTTP_10,
        1 => Version::HTTP_11,
        2 => Version::HTTP_2,
        _ => Version::HTTP_09,
    };
    let Ok(mut req) = Request::builder()
        .method(method)
        .uri(uri)
        .version(version)
        .body(())
    else {
        return;
    };
    match (ctl >> 2) & 3 {
        1 => {
            req.extensions_mut()
                .insert(hyper::ext::Protocol::from_static("websocket"));
        }
        2 => {
            req.extensions_mut()
                .insert(hyper::ext::Protocol::from_static("WebSocket2"));
        }
        _ => {}
    }
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(line[..colon].trim_ascii()),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        req.headers_mut().append(name, value);
    }
    if let Ok(hs) = wsgate::proxy::ws::validate(&req) {
        assert_eq!(hs.h2, hs.key.is_none());
        if let Some(k) = &hs.key {
            assert_eq!(k.len(), 24);
            assert_eq!(wsgate::proxy::ws::accept_key(k.as_bytes()).len(), 28);
        }
        assert!(hs.protocols.iter().all(|p| !p.is_empty() && p.trim() == p));
    }
});
