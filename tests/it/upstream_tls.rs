//! TLS to upstreams (issue 21, item 4) against a real TLS upstream made here
//! (tokio-rustls + hyper, certificates from a test CA): HTTP over TLS with
//! SNI and keep-alive, `tls = true` with `tls_server_name` and IP servers,
//! verification failures (502 with a generic body), mTLS to the upstream,
//! wss spliced and inspected, and active health checks over TLS.

use crate::common;

use std::sync::atomic::Ordering;

use common::process::WsgateProc;
use common::redis::free_ports;
use common::tls_upstream::{TestCa, TlsUpstream};
use common::{eventually, get, Cfg, Listener, Route, TestGateway, WAIT};
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use tokio_tungstenite::tungstenite::Message;
use wsgate::upstream::BackendId;

/// A gateway with one plain listener and `/` routed to `[upstream.api]`,
/// whose servers and other keys `f` sets.
async fn gateway(dir: tempfile::TempDir, f: impl FnOnce(Cfg) -> Cfg) -> TestGateway {
    let cfg = f(Cfg::new()
        .listener_plain()
        .route(Route::upstream("/", "api")))
    .build();
    tokio::time::timeout(WAIT, TestGateway::start_in(&cfg, dir))
        .await
        .expect("gateway starts in time")
}

async fn get_in_time(gw: &TestGateway, path: &str) -> common::Reply {
    tokio::time::timeout(WAIT, get(gw.http(), path))
        .await
        .expect("the gateway answers in time")
}

#[tokio::test]
async fn http_over_tls_sends_sni_verifies_and_keeps_the_connection() {
    let ca = TestCa::new("a");
    let up = TlsUpstream::start(&ca, None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_path = ca.write(dir.path(), "ca");
    let port = up.addr.port();
    let gw = gateway(dir, |c| {
        c.upstream("api", &[format!("https://localhost:{port}")])
            .set("upstream.api.tls_ca", ca_path)
    })
    .await;
    for path in ["/a", "/b", "/c"] {
        let r = get_in_time(&gw, path).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.text(), format!("tls:{path}"));
        assert_eq!(r.headers["x-sni"], "localhost");
        assert_eq!(r.headers["x-client-cert"], "no");
    }
    // Keep-alive: three requests, one TLS connection.
    assert_eq!(up.handshakes.load(Ordering::SeqCst), 1);
    assert_eq!(up.snis(), vec![Some("localhost".to_string())]);
}

#[tokio::test]
async fn tls_true_with_ip_servers_and_an_explicit_server_name() {
    let ca = TestCa::new("a");
    let (named, bare) = (
        TlsUpstream::start(&ca, None).await,
        TlsUpstream::start(&ca, None).await,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_path = ca.write(dir.path(), "ca");
    // `tls_server_name` is the SNI (and the name checked) for every server.
    let gw = gateway(dir, |c| {
        c.upstream("api", &[named.addr])
            .set("upstream.api.tls", true)
            .set("upstream.api.tls_ca", ca_path.clone())
            .set("upstream.api.tls_server_name", "localhost")
    })
    .await;
    let r = get_in_time(&gw, "/").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.headers["x-sni"], "localhost");
    // Without it, an IP server is checked against the certificate's IP
    // addresses and no SNI is sent (RFC 6066 allows host names only).
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_path = ca.write(dir.path(), "ca");
    let gw = gateway(dir, |c| {
        c.upstream("api", &[format!("https://{}", bare.addr)])
            .set("upstream.api.tls_ca", ca_path)
    })
    .await;
    let r = get_in_time(&gw, "/").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(bare.snis(), vec![None]);
}

#[tokio::test]
async fn an_untrusted_upstream_is_a_generic_502() {
    let (ca, other) = (TestCa::new("a"), TestCa::new("other"));
    let up = TlsUpstream::start(&ca, None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let wrong = other.write(dir.path(), "other");
    let port = up.addr.port();
    let gw = gateway(dir, |c| {
        c.upstream("api", &[format!("https://localhost:{port}")])
            .set("upstream.api.tls_ca", wrong)
            .set("upstream.api.max_fails", 0)
    })
    .await;
    let r = get_in_time(&gw, "/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    // No address, no certificate detail: those go to the debug log.
    assert_eq!(r.text(), "upstream server failed\n");
    assert_eq!(up.hits.load(Ordering::SeqCst), 0);

    // A certificate for another name fails the same way.
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_path = ca.write(dir.path(), "ca");
    let gw = gateway(dir, |c| {
        c.upstream("api", &[format!("https://localhost:{port}")])
            .set("upstream.api.tls_ca", ca_path)
            .set("upstream.api.tls_server_name", "elsewhere.test")
    })
    .await;
    let r = get_in_time(&gw, "/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.text(), "upstream server failed\n");
}

/// The reason of a refused certificate reaches the access line in words:
/// rustls prints its own with `Debug` (`invalid peer certificate:
/// UnknownIssuer`). The real binary, as the line goes to its stderr.
#[tokio::test]
async fn a_refused_upstream_certificate_is_logged_in_words() {
    let (ca, other) = (TestCa::new("a"), TestCa::new("other"));
    let up = TlsUpstream::start(&ca, None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let [port] = free_ports();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let cfg = Cfg::new()
        .listener(Listener::at(addr))
        .upstream("api", &[format!("https://localhost:{}", up.addr.port())])
        .set("upstream.api.tls_ca", other.write(dir.path(), "other"))
        .route_upstream("/", "api");
    let path = dir.path().join("wsgate.toml");
    std::fs::write(&path, cfg.build()).expect("write config");
    let mut gw = WsgateProc::start(&path);
    gw.wait_for("listening", WAIT);
    let r = tokio::time::timeout(WAIT, get(addr, "/"))
        .await
        .expect("the gateway answers in time");
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    let line = gw.wait_for("status=502", WAIT);
    assert!(
        line.contains("certificate refused: signed by an unknown authority"),
        "{line}"
    );
}

#[tokio::test]
async fn a_client_certificate_is_presented_to_an_upstream_that_requires_one() {
    let (ca, clients) = (TestCa::new("a"), TestCa::new("clients"));
    let up = TlsUpstream::start(&ca, Some(&clients)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_path = ca.write(dir.path(), "ca");
    let (crt, key) = clients.issue_files(dir.path(), "gw", &["gateway.test"], true);
    let port = up.addr.port();
    let server = format!("https://localhost:{port}");
    let gw = gateway(dir, |c| {
        c.upstream("api", std::slice::from_ref(&server))
            .set("upstream.api.tls_ca", ca_path.clone())
            .set("upstream.api.tls_client_cert", crt)
            .set("upstream.api.tls_client_key", key)
    })
    .await;
    let r = get_in_time(&gw, "/").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.headers["x-client-cert"], "yes");

    // Without one, the upstream refuses the handshake.
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_path = ca.write(dir.path(), "ca");
    let gw = gateway(dir, |c| {
        c.upstream("api", &[server])
            .set("upstream.api.tls_ca", ca_path)
    })
    .await;
    let r = get_in_time(&gw, "/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.text(), "upstream server failed\n");
}

/// Opens a WebSocket through the gateway and checks an echo both ways.
async fn echo_through(gw: &TestGateway) {
    let url = format!("ws://{}/ws", gw.http());
    let (mut ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("handshake in time")
        .expect("handshake");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for text in ["one", "two"] {
        ws.send(Message::text(text)).await.expect("send");
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("echo in time")
            .expect("a message")
            .expect("not an error");
        assert_eq!(m.into_text().expect("text").as_str(), text);
    }
    ws.close(None).await.expect("close");
}

#[tokio::test]
async fn wss_upstreams_spliced_and_inspected() {
    let ca = TestCa::new("a");
    let up = TlsUpstream::start(&ca, None).await;
    let port = up.addr.port();
    for inspect in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_path = ca.write(dir.path(), "ca");
        let gw = gateway(dir, |c| {
            c.upstream("api", &[format!("wss://localhost:{port}")])
                .set("upstream.api.tls_ca", ca_path)
                .set("upstream.api.ws_inspect", inspect)
        })
        .await;
        echo_through(&gw).await;
    }
    assert_eq!(up.handshakes.load(Ordering::SeqCst), 2);
    assert!(up.snis().iter().all(|s| s.as_deref() == Some("localhost")));
}

#[tokio::test]
async fn health_checks_run_over_tls() {
    let ca = TestCa::new("a");
    let up = TlsUpstream::start(&ca, None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_path = ca.write(dir.path(), "ca");
    let port = up.addr.port();
    let server = format!("localhost:{port}");
    let gw = gateway(dir, |c| {
        c.upstream("api", &[format!("https://{server}")])
            .set("upstream.api.tls_ca", ca_path)
            .set("upstream.api.health.path", "/healthz")
            .set("upstream.api.health.interval", "50ms")
            .set("upstream.api.health.timeout", "1s")
            .set("upstream.api.health.healthy", 1)
            .set("upstream.api.health.unhealthy", 1)
    })
    .await;
    let pool = gw.handle.pool("api").expect("pool api");
    let backend = pool.backend(BackendId::of(&server)).expect("server");
    up.health.store(503, Ordering::SeqCst);
    assert!(
        eventually(WAIT, || async { !backend.health().active_up() }).await,
        "marked down by a probe over TLS"
    );
    assert_eq!(get_in_time(&gw, "/").await.status, StatusCode::BAD_GATEWAY);
    up.health.store(200, Ordering::SeqCst);
    assert!(
        eventually(WAIT, || async { backend.health().active_up() }).await,
        "back up"
    );
    assert_eq!(get_in_time(&gw, "/").await.status, StatusCode::OK);
    // Probes and requests shared kept-alive TLS connections.
    assert!(up.handshakes.load(Ordering::SeqCst) <= 2);
}
