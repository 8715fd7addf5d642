//! Static files for `root` routes: percent-decoded paths that can never leave the
//! root (`..` rejected, files opened beneath it: [`open`]), `index.html` for
//! directories, content types by extension, validators, preconditions and
//! single byte ranges ([`conditions`]), bodies streamed from disk.

mod conditions;
mod open;

use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use futures_util::TryStreamExt;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use percent_encoding::percent_decode_str;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use self::conditions::{Outcome, Validators};
use super::error::ProxyError;
use crate::body::empty;
use crate::body::{Body, BoxError};
use crate::config::RouteConfig;

pub async fn serve<B>(
    root: &Path,
    route: &RouteConfig,
    req: &Request<B>,
) -> Result<Response<Body>, ProxyError> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(ProxyError::MethodNotAllowed);
    }
    let rel_path = req
        .uri()
        .path()
        .strip_prefix(route.path.trim_end_matches('/'))
        .unwrap_or("");
    let rel = safe_relative(rel_path).ok_or(ProxyError::NotFound)?;
    // Opened for HEAD and conditional requests too, so that they answer as a
    // GET would (an unreadable file is 404 to all of them, RFC 9110 §9.3.2),
    // and the length and validators are the opened file's own.
    let slash = req.uri().path().ends_with('/');
    let root = root.to_path_buf();
    let found = tokio::task::spawn_blocking(move || open::find(&root, &rel, slash))
        .await
        .map_err(|e| ProxyError::Internal(format!("static file lookup: {e}")))?;
    let (file, meta, name) = match found {
        Ok(open::Found::File { file, meta, name }) => (file, meta, name),
        Ok(open::Found::Directory) => return Ok(redirect_to_dir(req)),
        Err(_) => return Err(ProxyError::NotFound),
    };
    let mut file = tokio::fs::File::from_std(file);
    let v = Validators::of(&meta);
    let len = meta.len();
    let outcome = conditions::evaluate(req.method(), req.headers(), &v, len, SystemTime::now());
    let (status, start, count) = match outcome {
        Outcome::PreconditionFailed => return Err(ProxyError::PreconditionFailed),
        Outcome::NotModified => return Ok(bodiless(StatusCode::NOT_MODIFIED, &v)),
        Outcome::Unsatisfiable => {
            let mut r = bodiless(StatusCode::RANGE_NOT_SATISFIABLE, &v);
            if let Ok(cr) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, cr);
            }
            return Ok(r);
        }
        Outcome::Full => (StatusCode::OK, 0, len),
        Outcome::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
    };
    let body = if req.method() == Method::HEAD {
        empty()
    } else {
        if start > 0 {
            file.seek(std::io::SeekFrom::Start(start))
                .await
                .map_err(|e| ProxyError::Internal(format!("static file seek: {e}")))?;
        }
        let stream = ReaderStream::with_capacity(file.take(count), chunk_size(req.version()))
            .map_ok(Frame::data)
            .map_err(|e| -> BoxError { Box::new(e) });
        StreamBody::new(stream).boxed_unsync()
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(&name)),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT {
        let cr = format!("bytes {start}-{}/{len}", start + count - 1);
        if let Ok(cr) = HeaderValue::from_str(&cr) {
            h.insert(header::CONTENT_RANGE, cr);
        }
    }
    v.set(h);
    Ok(r)
}

/// A 304 or 416: the validators, no body.
fn bodiless(status: StatusCode, v: &Validators) -> Response<Body> {
    let mut r = Response::new(empty());
    *r.status_mut() = status;
    v.set(r.headers_mut());
    r
}

/// Percent-decodes a request path and turns it into a relative path made only of
/// normal components. `None` for anything that could escape: `..`, NUL,
/// backslashes, or invalid UTF-8 after decoding.
pub fn safe_relative(path: &str) -> Option<PathBuf> {
    let decoded = percent_decode_str(path).decode_utf8().ok()?;
    if decoded.contains('\0') || decoded.contains('\\') {
        return None;
    }
    let mut out = PathBuf::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => continue,
            ".." => return None,
            s => {
                let p = Path::new(s);
                if p.components().count() != 1
                    || !matches!(p.components().next(), Some(Component::Normal(_)))
                {
                    return None;
                }
                out.push(s);
            }
        }
    }
    Some(out)
}

fn redirect_to_dir<B>(req: &Request<B>) -> Response<Body> {
    let mut loc = format!("{}/", req.uri().path());
    if let Some(q) = req.uri().query() {
        loc.push('?');
        loc.push_str(q);
    }
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::MOVED_PERMANENTLY;
    if let Ok(v) = HeaderValue::from_str(&loc) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

pub fn content_type(p: &Path) -> &'static str {
    let ext = p
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "wasm" => "application/wasm",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "pdf" => "application/pdf",
        "xml" => "application/xml",
        _ => "application/octet-stream",
    }
}

/// How much of a file one read takes. hyper reads an HTTP/2 stream's next
/// chunk before it waits for window, so a stream the client keeps shut
/// holds one chunk, and the file's own buffer of the same size, until
/// `send_timeout`: 128 KiB a stream at 64 KiB, 16 MiB for one connection's
/// 128 streams (the seventh probe: 2 000 stalled streams, 310 MB). HTTP/2
/// frames are 16 KiB anyway; an HTTP/1.1 connection has one response at a
/// time and takes larger reads.
fn chunk_size(version: http::Version) -> usize {
    match version {
        http::Version::HTTP_2 => 16 * 1024,
        _ => 64 * 1024,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_is_rejected() {
        assert_eq!(safe_relative("/a/b.txt"), Some(PathBuf::from("a/b.txt")));
        assert_eq!(safe_relative("/"), Some(PathBuf::new()));
        assert_eq!(safe_relative("/../etc/passwd"), None);
        assert_eq!(safe_relative("/a/%2e%2e/%2e%2e/etc/passwd"), None);
        assert_eq!(safe_relative("/a/..%2Fb"), None);
        assert_eq!(safe_relative("/a%00b"), None);
        assert_eq!(safe_relative("/a%5c..%5cb"), None);
        assert_eq!(safe_relative("/%ff"), None);
        assert_eq!(safe_relative("/a/./b"), Some(PathBuf::from("a/b")));
    }
}
