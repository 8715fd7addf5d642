//! The TLS front end (issue 21, items 2 and 3): OCSP stapling checked with
//! `openssl s_client -status` against responses made by `openssl ocsp`
//! (stapled per certificate, re-read on reload), and session resumption
//! (`openssl s_client -reconnect`; a rustls client resuming across the
//! process's listeners and across a reload).

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::openssl::{ocsp_response, s_client, s_client_with};
use common::tls_upstream::TestCa;
use common::{tls_client, Cfg, Listener, Route, TestGateway, WAIT};
use rustls::HandshakeKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `dir/ca.pem`, `dir/ca.key` and a server certificate `dir/srv.crt` for
/// `localhost` and `other.test`.
fn pki(dir: &Path) -> (TestCa, String, String) {
    let ca = TestCa::new("front");
    ca.write(dir, "ca");
    std::fs::write(dir.join("ca.key"), &ca.key_pem).expect("write ca key");
    let (crt, key) = ca.issue_files(dir, "srv", &["localhost", "other.test"], false);
    (ca, crt, key)
}

/// The `Next Update:` line `s_client -status` printed, if any.
fn next_update_line(out: &str) -> Option<String> {
    out.lines()
        .find(|l| l.trim_start().starts_with("Next Update:"))
        .map(|l| l.trim().to_string())
}

#[tokio::test]
async fn an_ocsp_response_is_stapled_per_certificate_and_reread_on_reload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_path_buf();
    let (_ca, crt, key) = pki(&d);
    ocsp_response(&d, "ca.pem", "ca.key", "srv.crt", 1, "srv.ocsp");
    let ocsp = d.join("srv.ocsp").to_string_lossy().into_owned();

    // The gateway's reading of it: fresh for a day.
    let parsed = wsgate::certs::load_ocsp(Path::new(&ocsp)).expect("a stapleable response");
    let next = parsed.next_update.expect("openssl sets nextUpdate");
    let ahead = next
        .duration_since(SystemTime::now())
        .expect("in the future");
    assert!(
        ahead > Duration::from_secs(23 * 3600) && ahead <= Duration::from_secs(24 * 3600 + 60),
        "{ahead:?}"
    );

    // `other.test` is the same certificate without `ocsp`: nothing stapled.
    let cfg = Cfg::new()
        .listener(
            Listener::plain()
                .tls(&crt, &key)
                .set("tls.ocsp", ocsp.clone())
                .sni("other.test", &crt, &key),
        )
        .route(Route::app("/", "echo"))
        .build();
    let gw = TestGateway::start_in(&cfg, dir).await;
    let addr = gw.https();
    let out = s_client(&d, addr, "localhost", "ca.pem", &["-status"]).await;
    assert!(out.contains("OCSP Response Status: successful"), "{out}");
    assert!(out.contains("Cert Status: good"), "{out}");
    let first = next_update_line(&out).expect("a Next Update line");
    let out = s_client(&d, addr, "other.test", "ca.pem", &["-status"]).await;
    assert!(out.contains("OCSP response: no response sent"), "{out}");

    // A renewed response on disk is served after a reload (what SIGHUP runs).
    ocsp_response(&d, "ca.pem", "ca.key", "srv.crt", 3, "srv.ocsp");
    let config = d.join("wsgate.toml");
    tokio::time::timeout(
        WAIT,
        gw.handle
            .reload(wsgate::config::load(&config).expect("config")),
    )
    .await
    .expect("reload in time")
    .expect("reload");
    let out = s_client(&d, addr, "localhost", "ca.pem", &["-status"]).await;
    assert!(out.contains("Cert Status: good"), "{out}");
    let second = next_update_line(&out).expect("a Next Update line");
    assert_ne!(first, second, "the renewed response is stapled");
}

#[tokio::test]
async fn a_broken_ocsp_file_is_a_config_error_at_its_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_ca, crt, key) = pki(dir.path());
    let bad = dir.path().join("bad.ocsp");
    std::fs::write(&bad, b"not an OCSP response").expect("write");
    let text = Cfg::new()
        .listener(
            Listener::plain()
                .tls(&crt, &key)
                .set("tls.ocsp", bad.to_string_lossy().into_owned()),
        )
        .route(Route::app("/", "echo"))
        .build();
    let e = wsgate::config::parse(Path::new("t.toml"), &text)
        .expect_err("refused")
        .to_string();
    assert!(e.contains("listener[0].tls.ocsp: "), "{e}");
    assert!(e.contains("not a DER OCSP response"), "{e}");
}

#[tokio::test]
async fn openssl_reconnects_with_a_resumed_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_path_buf();
    let (_ca, crt, key) = pki(&d);
    let cfg = Cfg::new()
        .listener(Listener::plain().tls(&crt, &key))
        .route(Route::app("/", "echo"))
        .build();
    let gw = TestGateway::start_in(&cfg, dir).await;
    let addr = gw.https();
    let out = s_client(&d, addr, "localhost", "ca.pem", &["-reconnect", "-tls1_2"]).await;
    let reused = out
        .lines()
        .filter(|l| l.starts_with("Reused, TLSv1.2"))
        .count();
    // One full handshake, then five reconnections with the session.
    assert_eq!(reused, 5, "{out}");
    // TLS 1.3: `-reconnect` leaves before the ticket arrives, so the session
    // is saved after a request and used by a second run.
    let req = b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n";
    let first = ["-tls1_3", "-ign_eof", "-sess_out", "sess.pem"];
    let out = s_client_with(&d, addr, "localhost", "ca.pem", &first, req).await;
    assert!(out.contains("New, TLSv1.3"), "{out}");
    let second = ["-tls1_3", "-sess_in", "sess.pem"];
    let out = s_client(&d, addr, "localhost", "ca.pem", &second).await;
    assert!(out.contains("Reused, TLSv1.3"), "{out}");
}

/// A TLS connection with `cfg` (which keeps its sessions) to `addr`: sends
/// one request and reads the answer (TLS 1.3 tickets arrive after the
/// handshake), then says how the handshake went.
async fn handshake_kind(
    addr: std::net::SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> HandshakeKind {
    let mut tls = common::tls_connect(addr, cfg, "localhost").await;
    let kind = tls.get_ref().1.handshake_kind().expect("handshake done");
    tls.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, tls.read_to_end(&mut buf))
        .await
        .expect("answer in time")
        .ok();
    assert!(
        buf.starts_with(b"HTTP/1.1 "),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    kind
}

#[tokio::test]
async fn tickets_resume_across_listeners_and_reloads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_path_buf();
    let (_ca, crt, key) = pki(&d);
    let cfg = Cfg::new()
        .listener(Listener::plain().tls(&crt, &key))
        .listener(Listener::plain().tls(&crt, &key))
        .route(Route::upstream("/", "none"))
        .upstream("none", &["127.0.0.1:9"])
        .build();
    let gw = TestGateway::start_in(&cfg, dir).await;
    let addrs = gw.handle.https_addrs();
    assert_eq!(addrs.len(), 2);
    let client = tls_client(&d.join("ca.pem").to_string_lossy(), &[b"http/1.1"]);
    assert_eq!(
        handshake_kind(addrs[0], client.clone()).await,
        HandshakeKind::Full
    );
    assert_eq!(
        handshake_kind(addrs[0], client.clone()).await,
        HandshakeKind::Resumed
    );
    // The other listener knows the ticket key.
    assert_eq!(
        handshake_kind(addrs[1], client.clone()).await,
        HandshakeKind::Resumed
    );
    // So does the configuration after a reload.
    let config = d.join("wsgate.toml");
    gw.handle
        .reload(wsgate::config::load(&config).expect("config"))
        .await
        .expect("reload");
    assert_eq!(
        handshake_kind(addrs[0], client).await,
        HandshakeKind::Resumed
    );
}

/// The `wsgate_tls_cert_expiry_seconds` series in the admin listener's
/// metrics, as (labels, value).
async fn expiry_series(gw: &TestGateway) -> Vec<(String, i64)> {
    let text = common::get(gw.admin(), "/metrics").await.text();
    text.lines()
        .filter_map(|l| l.strip_prefix("wsgate_tls_cert_expiry_seconds{"))
        .filter_map(|l| {
            let (labels, value) = l.split_once("} ")?;
            Some((labels.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn certificate_expiry_is_exported_per_listener_and_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_path_buf();
    let (_ca, crt, key) = pki(&d);
    let with_sni = |sni: bool| {
        let l = Listener::plain().tls(&crt, &key);
        let l = if sni {
            l.sni("*.apps.test", &crt, &key)
        } else {
            l
        };
        Cfg::new()
            .listener(l)
            .admin()
            .route(Route::app("/", "echo"))
            .build()
    };
    let gw = TestGateway::start_in(&with_sni(true), dir).await;
    let listener = gw.https().to_string();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let series = expiry_series(&gw).await;
    let mut names: Vec<String> = series.iter().map(|(l, _)| l.clone()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            format!("listener=\"{listener}\",host=\"*.apps.test\""),
            format!("listener=\"{listener}\",host=\"default\""),
        ],
        "{series:?}"
    );
    // rcgen's default notAfter is the year 4096.
    assert!(
        series.iter().all(|(_, v)| *v > now + 100 * 365 * 86400),
        "{series:?}"
    );

    // A reload that drops the SNI certificate drops its series.
    std::fs::write(d.join("wsgate.toml"), with_sni(false)).expect("write config");
    gw.handle
        .reload(wsgate::config::load(&d.join("wsgate.toml")).expect("config"))
        .await
        .expect("reload");
    let series = expiry_series(&gw).await;
    assert_eq!(series.len(), 1, "{series:?}");
    assert!(series[0].0.ends_with("host=\"default\""), "{series:?}");
}
