//! The gateway's own answers to gRPC requests, in the form gRPC clients read:
//! HTTP 200, `content-type: application/grpc`, the reason as `grpc-status`
//! and `grpc-message`, and no body (a trailers-only response), as Envoy
//! answers its local replies. A bare 502 with a text body reaches a gRPC
//! client as a guess from the HTTP status, its reason lost, and a client's
//! interceptors and metrics that read `grpc-status` see none.

use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};

use crate::body::{empty, Body};

/// What the access line shows: the HTTP status the error maps
/// to, not the 200 that carried it, so that failures stay visible as 5xx.
#[derive(Debug, Clone, Copy)]
pub struct HttpStatus(pub StatusCode);

/// A gRPC request: an HTTP/2 (gRPC has no HTTP/1.1 form; gRPC-Web, which
/// answers in the body, is another content type) `POST` (every gRPC call is
/// one; an answer to a `CONNECT` must not be a 200, which opens a tunnel)
/// with `application/grpc` or one of its `+codec` / `;parameter` forms.
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_2
        && req.method() == Method::POST
        && content_type_is_grpc(req.headers())
}

fn content_type_is_grpc(headers: &HeaderMap) -> bool {
    let Some(v) = headers.get(header::CONTENT_TYPE) else {
        return false;
    };
    let v = v.as_bytes();
    const GRPC: &[u8] = b"application/grpc";
    v.len() >= GRPC.len()
        && v[..GRPC.len()].eq_ignore_ascii_case(GRPC)
        && matches!(v.get(GRPC.len()), None | Some(b'+' | b';'))
}

/// gRPC's status for an HTTP status, by the table gRPC publishes for
/// clients that meet a non-gRPC answer (doc/http-grpc-status-mapping.md),
/// which Envoy uses for its local replies too.
pub fn code_for(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    }
}

/// `grpc-message` is percent-encoded: controls, `%` and every non-ASCII
/// byte (gRPC over HTTP/2, "Responses").
const MESSAGE: &AsciiSet = &CONTROLS.add(b'%');

/// Turns a local error answer into its gRPC form. Its other fields stay
/// (`Retry-After`, `WWW-Authenticate`), and so do its extensions, which the
/// access line reads.
pub fn convert(resp: Response<Body>, message: &str) -> Response<Body> {
    let (mut parts, _) = resp.into_parts();
    let code = code_for(parts.status);
    parts.extensions.insert(HttpStatus(parts.status));
    parts.status = StatusCode::OK;
    let h = &mut parts.headers;
    h.remove(header::CONTENT_LENGTH);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(u16::from(code)));
    let encoded = utf8_percent_encode(message.trim_end(), MESSAGE).to_string();
    if let Ok(v) = HeaderValue::from_str(&encoded) {
        h.insert("grpc-message", v);
    }
    Response::from_parts(parts, empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, ct: Option<&str>) -> Request<()> {
        let mut b = Request::builder().method(Method::POST).version(version);
        if let Some(ct) = ct {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn grpc_is_told_by_version_and_content_type() {
        for ct in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC;charset=utf-8",
        ] {
            assert!(is_grpc(&req(Version::HTTP_2, Some(ct))), "{ct}");
        }
        for ct in ["application/grpc-web", "application/grpcx", "text/plain"] {
            assert!(!is_grpc(&req(Version::HTTP_2, Some(ct))), "{ct}");
        }
        assert!(!is_grpc(&req(Version::HTTP_2, None)));
        assert!(!is_grpc(&req(Version::HTTP_11, Some("application/grpc"))));
        let mut connect = req(Version::HTTP_2, Some("application/grpc"));
        *connect.method_mut() = Method::CONNECT;
        assert!(!is_grpc(&connect), "a CONNECT is never a gRPC call");
    }

    #[test]
    fn statuses_map_by_grpcs_table() {
        let cases = [
            (400, 13),
            (401, 16),
            (403, 7),
            (404, 12),
            (429, 14),
            (502, 14),
            (503, 14),
            (504, 14),
            (500, 2),
            (413, 2),
        ];
        for (http, grpc) in cases {
            let s = StatusCode::from_u16(http).expect("status");
            assert_eq!(code_for(s), grpc, "{http}");
        }
    }

    #[test]
    fn an_error_answer_becomes_trailers_only() {
        let mut r = crate::body::text_response(StatusCode::TOO_MANY_REQUESTS, "slow down: 100%\n");
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("3"));
        let g = convert(r, "slow down: 100% é\n");
        assert_eq!(g.status(), StatusCode::OK);
        let h = g.headers();
        assert_eq!(h["content-type"], "application/grpc");
        assert_eq!(h["grpc-status"], "14");
        assert_eq!(h["grpc-message"], "slow down: 100%25 %C3%A9");
        assert_eq!(h[header::RETRY_AFTER], "3");
        assert!(h.get(header::CONTENT_LENGTH).is_none());
        assert!(http_body::Body::is_end_stream(g.body()));
        let logged = g.extensions().get::<HttpStatus>().map(|s| s.0);
        assert_eq!(logged, Some(StatusCode::TOO_MANY_REQUESTS));
    }
}
