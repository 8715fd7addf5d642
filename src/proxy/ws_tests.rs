//! Unit tests of the handshake check (`proxy::ws`).

use super::*;

fn req(f: impl FnOnce(http::request::Builder) -> http::request::Builder) -> Request<()> {
    let b = Request::builder()
        .method("GET")
        .uri("/ws")
        .header("host", "x")
        .header("connection", "keep-alive, Upgrade")
        .header("upgrade", "WebSocket")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13");
    f(b).body(()).unwrap()
}

#[test]
fn accepts_valid_and_computes_rfc_accept() {
    let hs = validate(&req(|b| b.header("sec-websocket-protocol", "a, b"))).unwrap();
    assert_eq!(hs.protocols, vec!["a", "b"]);
    assert_eq!(
        accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

#[test]
fn rejects_each_bad_part() {
    let bad_key = Request::builder()
        .uri("/")
        .header("host", "x")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-key", "c2hvcnQ=")
        .header("sec-websocket-version", "13")
        .body(())
        .unwrap();
    assert_eq!(validate(&bad_key).unwrap_err(), HandshakeError::BadKey);
    let post = req(|b| b.method("POST"));
    assert!(matches!(
        validate(&post).unwrap_err(),
        HandshakeError::Method(_)
    ));
    let old = req(|b| b.version(Version::HTTP_10));
    assert_eq!(validate(&old).unwrap_err(), HandshakeError::HttpVersion);
    let mut v8 = req(|b| b);
    v8.headers_mut()
        .insert("sec-websocket-version", HeaderValue::from_static("8"));
    assert_eq!(validate(&v8).unwrap_err(), HandshakeError::BadVersion);
    let mut noconn = req(|b| b);
    noconn
        .headers_mut()
        .insert("connection", HeaderValue::from_static("keep-alive"));
    assert_eq!(
        validate(&noconn).unwrap_err(),
        HandshakeError::ConnectionNotUpgrade
    );
    let mut nohost = req(|b| b);
    nohost.headers_mut().remove("host");
    assert_eq!(validate(&nohost).unwrap_err(), HandshakeError::MissingHost);
    for (name, value) in [("content-length", "5"), ("transfer-encoding", "chunked")] {
        let mut with_body = req(|b| b);
        with_body.headers_mut().insert(name, value.parse().unwrap());
        assert_eq!(validate(&with_body).unwrap_err(), HandshakeError::Body);
    }
    let mut zero = req(|b| b);
    zero.headers_mut()
        .insert("content-length", "0".parse().unwrap());
    assert!(validate(&zero).is_ok());
}
