//! Connection limits: new connections over the limit closed without a byte,
//! before TLS.

use std::time::Duration;

use http::StatusCode;
use tokio::io::AsyncWriteExt;

use super::{get_from, ip, limit, metrics, series};
use crate::common::raw::read_to_close;
use crate::common::{self, connect_from, Cfg, Listener, Route, TestGateway, WAIT};

#[tokio::test]
async fn connection_limits_close_new_connections_before_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (crt, key) = common::write_cert(dir.path(), "gw", &["localhost"]);
    let toml = limit(Cfg::new(), "conn", "1/m", 2, "ip")
        .listener(Listener::plain().set("connection_limits", vec!["conn"]))
        .listener(
            Listener::plain()
                .tls(&crt, &key)
                .set("connection_limits", vec!["conn"]),
        )
        .admin()
        .route(Route::app("/", "echo"))
        .build();
    let gw = TestGateway::start_in(&toml, dir).await;

    // Plain: two connections from one address are served, the third is closed
    // without a byte.
    for _ in 0..2 {
        let r = get_from("127.0.0.6", gw.http(), "/").await;
        assert_eq!(r.status, StatusCode::UPGRADE_REQUIRED);
    }
    let mut s = connect_from(ip("127.0.0.6"), gw.http()).await;
    let _ = s
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    let r = read_to_close(&mut s, WAIT).await;
    assert!(r.closed() && r.bytes.is_empty(), "{r:?}");
    // Another address is not affected.
    assert_eq!(
        get_from("127.0.0.7", gw.http(), "/").await.status,
        StatusCode::UPGRADE_REQUIRED
    );

    // TLS: a connection within the limit waits for a ClientHello (the TLS
    // handshake timeout is 10 s); one over it is closed before the gateway
    // reads anything, so the client, which sent nothing, sees EOF at once.
    let mut quiet = Vec::new();
    for _ in 0..2 {
        let mut s = connect_from(ip("127.0.0.8"), gw.https()).await;
        let r = read_to_close(&mut s, Duration::from_millis(200)).await;
        assert!(!r.closed(), "a connection within the limit was closed");
        quiet.push(s);
    }
    let mut s = connect_from(ip("127.0.0.8"), gw.https()).await;
    let r = read_to_close(&mut s, WAIT).await;
    assert!(r.closed() && r.bytes.is_empty(), "{r:?}");

    let m = metrics(&gw).await;
    assert_eq!(
        series(
            &m,
            r#"wsgate_limited_total{limit="conn",kind="connection"}"#
        ),
        2
    );
}

/// Behind a PROXY header the limit is the named client's, not the
/// balancer's: one client reconnecting fast must not lock out everyone
/// behind the same balancer (the ninth probe's high finding). Over its
/// limit, a client's connection is closed after the header, unanswered.
#[tokio::test]
async fn connection_limits_behind_a_proxy_header_count_the_named_client() {
    let toml = limit(Cfg::new(), "conn", "1/m", 2, "ip")
        .set("server.trusted_proxies", vec!["127.0.0.1/32"])
        .listener(
            Listener::plain()
                .set("proxy_protocol", true)
                .set("connection_limits", vec!["conn"]),
        )
        .admin()
        .route(Route::app("/", "echo"))
        .build();
    let gw = TestGateway::start(&toml).await;
    let addr = gw.http();
    let from_balancer = |client: &'static str| async move {
        let mut s = connect_from(ip("127.0.0.1"), addr).await;
        let head = format!(
            "PROXY TCP4 {client} 10.0.0.1 5555 80\r\nGET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        );
        let _ = s.write_all(head.as_bytes()).await;
        read_to_close(&mut s, WAIT).await
    };
    for _ in 0..2 {
        let r = from_balancer("203.0.113.1").await;
        assert!(r.text().starts_with("HTTP/1.1 426"), "{r:?}");
    }
    let r = from_balancer("203.0.113.1").await;
    assert!(r.closed() && r.bytes.is_empty(), "{r:?}");
    // Other clients through the same balancer keep their own buckets.
    for client in ["203.0.113.2", "203.0.113.3", "203.0.113.2"] {
        let r = from_balancer(client).await;
        assert!(r.text().starts_with("HTTP/1.1 426"), "{client}: {r:?}");
    }
    let m = metrics(&gw).await;
    assert_eq!(
        series(
            &m,
            r#"wsgate_limited_total{limit="conn",kind="connection"}"#
        ),
        1
    );
}
