//! ACME certificates (`[listener.tls.acme]`, docs/tls.md#acme) against
//! Pebble, the ACME test CA, started here on 127.0.0.1 with its validations
//! pointed at the gateway's listeners (tests/common/pebble.rs). A served
//! certificate is checked by a real TLS client that trusts only Pebble's
//! issuing root and names the domain.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wsgate::{Gateway, GatewayHandle};

use crate::common::pebble::{Pebble, PebbleOpts};
use crate::common::redis::free_ports;
use crate::common::{eventually, get, init_logs, tls::try_tls_connect, WAIT};

/// How long a first certificate (account, order, validation, issuance) may take.
const ISSUE: Duration = Duration::from_secs(20);

/// Short retries: a failed first try must not outlast the test.
fn policy() -> wsgate::acme::Policy {
    wsgate::acme::Policy {
        first_retry: Duration::from_millis(500),
        max_retry: Duration::from_secs(2),
        order_timeout: Duration::from_secs(15),
        min_interval: Duration::from_millis(500),
    }
}

fn config(pebble: &Pebble, challenge: &str, plain: &str, tls: &str, cache: &Path) -> String {
    let plain = if plain.is_empty() {
        String::new()
    } else {
        format!("[[listener]]\naddr = \"{plain}\"\n")
    };
    format!(
        r#"[server]
shutdown_grace = "2s"
[admin]
addr = "127.0.0.1:0"
{plain}
[[listener]]
addr = "{tls}"
[listener.tls.acme]
directory = "{dir}"
ca_root = "{ca}"
contact = ["mailto:ops@example.test"]
domains = ["a.example.test", "b.example.test"]
challenge = "{challenge}"
cache = "{cache}"
"#,
        dir = pebble.directory,
        ca = pebble.ca_root.display(),
        cache = cache.display(),
    )
}

async fn start(text: &str, dir: &Path) -> GatewayHandle {
    init_logs();
    let path = dir.join("wsgate.toml");
    std::fs::write(&path, text).expect("write config");
    let cfg = wsgate::config::load(&path).unwrap_or_else(|e| panic!("config invalid:\n{e}"));
    Gateway::start_with_acme(cfg, policy())
        .await
        .expect("gateway starts")
}

/// A client trusting only Pebble's issuing root.
fn client(root_pem: &str) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(c.expect("root")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// The leaf certificate served for `sni`, once the handshake verifies
/// against `tls` (chain to Pebble's root, name); `None` while it does not.
async fn served(addr: SocketAddr, tls: &Arc<rustls::ClientConfig>, sni: &str) -> Option<Vec<u8>> {
    let s = try_tls_connect(addr, tls.clone(), sni).await.ok()?;
    let leaf = s.get_ref().1.peer_certificates()?.first()?.to_vec();
    Some(leaf)
}

/// Waits until `sni` is served a verified certificate for which `accept`
/// holds; panics after `limit`.
async fn wait_served(
    addr: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    sni: &str,
    limit: Duration,
    accept: impl Fn(&[u8]) -> bool,
) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(der) = served(addr, tls, sni).await {
            if accept(&der) {
                return der;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no accepted certificate for {sni} on {addr} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `wsgate_tls_cert_expiry_seconds{listener="ADDR",host="default"}`.
async fn expiry_metric(admin: SocketAddr, listener: SocketAddr) -> Option<u64> {
    let text = get(admin, "/metrics").await.text();
    let series =
        format!("wsgate_tls_cert_expiry_seconds{{listener=\"{listener}\",host=\"default\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

/// `wsgate_acme_orders_total{domain="a.example.test",result=RESULT}` (0 when absent).
async fn orders(admin: SocketAddr, result: &str) -> u64 {
    let text = get(admin, "/metrics").await.text();
    let series =
        format!("wsgate_acme_orders_total{{domain=\"a.example.test\",result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Pebble on two free ports that its validations reach (http-01, tls-alpn-01),
/// issuing certificates valid `validity_secs` (its default when `None`).
async fn pebble(validity_secs: Option<u64>) -> (Pebble, u16, u16) {
    let [http_port, tls_port] = free_ports();
    let pebble = Pebble::start(PebbleOpts {
        http_port,
        tls_port,
        validity_secs,
        listen_port: None,
    })
    .await;
    (pebble, http_port, tls_port)
}

fn not_after_secs(der: &[u8]) -> u64 {
    let t = wsgate::certs::not_after(&der.to_vec().into()).expect("X.509");
    t.duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

fn cache_files(cache: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cache)
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_issues_and_a_restart_reuses_the_cache() {
    let (pebble, http_port, tls_port) = pebble(None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("acme");
    let tls_addr: SocketAddr = ([127, 0, 0, 1], tls_port).into();
    let text = config(
        &pebble,
        "http-01",
        &format!("127.0.0.1:{http_port}"),
        &tls_addr.to_string(),
        &cache,
    );
    let gw = start(&text, dir.path()).await;
    let tls = client(&pebble.root().await);

    let first = wait_served(tls_addr, &tls, "a.example.test", ISSUE, |_| true).await;
    // Served: ready (degraded while there was no certificate, below).
    let admin = gw.admin_addr().expect("admin");
    assert!(
        eventually(WAIT, || async move {
            get(admin, "/readyz").await.status == http::StatusCode::OK
        })
        .await,
        "not ready once the certificate is served"
    );
    // One certificate for both names.
    assert_eq!(
        served(tls_addr, &tls, "b.example.test").await.as_deref(),
        Some(&first[..])
    );
    let files = cache_files(&cache);
    assert_eq!(
        files.len(),
        3,
        "account, chain and key in the cache: {files:?}"
    );
    assert!(
        files[0].starts_with("account-") && files[0].ends_with(".json"),
        "{files:?}"
    );
    assert!(
        files[1].ends_with(".key") && files[2].ends_with(".pem"),
        "{files:?}"
    );
    let admin = gw.admin_addr().expect("admin");
    assert_eq!(
        expiry_metric(admin, tls_addr).await,
        Some(not_after_secs(&first))
    );
    assert_eq!(orders(admin, "ok").await, 1);
    // A reload that keeps the setting keeps the certificate (and orders nothing).
    let cfg = wsgate::config::load(&dir.path().join("wsgate.toml")).expect("config");
    gw.reload(cfg).await.expect("reload");
    assert_eq!(
        served(tls_addr, &tls, "a.example.test").await.as_deref(),
        Some(&first[..])
    );
    assert_eq!(cache_files(&cache), files);
    assert_eq!(orders(admin, "ok").await, 1);
    // A reload that adds a name serves the old certificate until the new
    // one, for all three names, is issued.
    let three = text.replace(
        r#"domains = ["a.example.test", "b.example.test"]"#,
        r#"domains = ["a.example.test", "b.example.test", "c.example.test"]"#,
    );
    let path3 = dir.path().join("three.toml");
    std::fs::write(&path3, &three).expect("write config");
    gw.reload(wsgate::config::load(&path3).expect("config"))
        .await
        .expect("reload");
    assert_eq!(
        served(tls_addr, &tls, "a.example.test").await.as_deref(),
        Some(&first[..]),
        "the previous certificate stays in service"
    );
    let wider = wait_served(tls_addr, &tls, "c.example.test", ISSUE, |_| true).await;
    assert_ne!(wider, first);
    assert_eq!(orders(admin, "ok").await, 2);
    assert!(gw.shutdown().await, "the first gateway drains");
    let before = cache_files(&cache);
    assert_eq!(
        before.len(),
        5,
        "the three-name chain and key were added: {before:?}"
    );

    // Restart with the two names, on the same ports (where an order would
    // succeed): the cached certificate is served at once, the very same
    // one, and no order is placed (none finished within a second, the
    // served certificate unchanged). The old listeners let their ports go
    // when their accept loops end, just after the drain.
    for port in [http_port, tls_port] {
        let free = eventually(WAIT, || async move {
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        });
        assert!(free.await, "port {port} never came free");
    }
    let gw = start(&text, dir.path()).await;
    let admin = gw.admin_addr().expect("admin");
    let again = wait_served(
        tls_addr,
        &tls,
        "a.example.test",
        Duration::from_secs(5),
        |_| true,
    )
    .await;
    assert_eq!(again, first, "the restart served the cached certificate");
    let ordered = eventually(Duration::from_secs(1), || async {
        orders(admin, "ok").await + orders(admin, "error").await > 0
            || served(tls_addr, &tls, "a.example.test").await.as_deref() != Some(&first[..])
    })
    .await;
    assert!(!ordered, "the restart placed an order");
    assert_eq!(cache_files(&cache), before, "nothing new in the cache");
    assert!(gw.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_issues_and_renews_live() {
    // 6 s certificates: renewed 4 s after they start.
    let (pebble, _, tls_port) = pebble(Some(6)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("acme");
    let tls_addr: SocketAddr = ([127, 0, 0, 1], tls_port).into();
    let text = config(&pebble, "tls-alpn-01", "", &tls_addr.to_string(), &cache);
    let gw = start(&text, dir.path()).await;
    let tls = client(&pebble.root().await);
    let first = wait_served(tls_addr, &tls, "a.example.test", ISSUE, |_| true).await;

    // A connection made with the first certificate keeps working across
    // the renewal.
    let mut conn = try_tls_connect(tls_addr, tls.clone(), "a.example.test")
        .await
        .expect("handshake");
    assert!(status_line(&mut conn).await.starts_with("HTTP/1.1 404"));

    let renewed = wait_served(tls_addr, &tls, "a.example.test", ISSUE, |d| d != first).await;
    assert!(not_after_secs(&renewed) > not_after_secs(&first));
    assert!(orders(gw.admin_addr().expect("admin"), "ok").await >= 2);
    assert!(
        status_line(&mut conn).await.starts_with("HTTP/1.1 404"),
        "the old connection survived"
    );
    let admin = gw.admin_addr().expect("admin");
    assert!(
        eventually(Duration::from_secs(5), || async {
            expiry_metric(admin, tls_addr)
                .await
                .is_some_and(|t| t >= not_after_secs(&renewed))
        })
        .await,
        "the expiry metric follows the certificate in service"
    );
    assert!(gw.shutdown().await);
}

/// Sends a request on an open TLS connection: the response's status line.
async fn status_line(conn: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
    let req = b"GET /nothing HTTP/1.1\r\nHost: a.example.test\r\n\r\n";
    conn.write_all(req).await.expect("send");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .expect("an answer within 5 s")
        .expect("read");
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_renewals_keep_the_certificate_in_service() {
    // 9 s certificates: due for renewal 6 s after they start.
    let (mut pebble, _, tls_port) = pebble(Some(9)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("acme");
    let tls_addr: SocketAddr = ([127, 0, 0, 1], tls_port).into();
    let text = config(&pebble, "tls-alpn-01", "", &tls_addr.to_string(), &cache);
    let gw = start(&text, dir.path()).await;
    let tls = client(&pebble.root().await);
    let first = wait_served(tls_addr, &tls, "a.example.test", ISSUE, |_| true).await;

    // The CA goes away: every renewal from now on fails and is retried
    // (every 0.5-2 s here). Past the renewal time the first certificate is
    // still the one served.
    pebble.stop();
    let (from, until) = wsgate::certs::validity(&first.clone().into()).expect("X.509");
    let due = wsgate::acme::renew::renew_at(from, until);
    let watch_until = due + Duration::from_millis(1500);
    assert!(watch_until < until, "the certificate outlives the watch");
    let admin = gw.admin_addr().expect("admin");
    // Until past the renewal time and two failed tries (a retry) are counted.
    while SystemTime::now() < watch_until || orders(admin, "error").await < 2 {
        assert!(
            SystemTime::now() + Duration::from_millis(300) < until,
            "no retried failure before the certificate expired"
        );
        let now = served(tls_addr, &tls, "a.example.test").await;
        assert_eq!(
            now.as_deref(),
            Some(&first[..]),
            "the last good certificate stays"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gw.shutdown().await);
}

/// An issued certificate the cache cannot take is served all the same, and
/// stored once the cache takes writes again, with no second order (it was
/// dropped and ordered again on every retry: Let's Encrypt's 5 duplicates a
/// week gone in minutes; the TLS review's finding).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_the_cache_cannot_take_is_served_and_stored_later() {
    use rustls_pki_types::pem::PemObject;
    use sha2::{Digest, Sha256};
    let (pebble, _, tls_port) = pebble(None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("acme");
    // The certificate's temporary file cannot be made: a directory holds
    // its name (the cache's naming: a hash of the CA and the domains).
    let mut h = Sha256::new();
    for part in [
        pebble.directory.as_str(),
        "a.example.test",
        "b.example.test",
    ] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    let hash: String = h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let blocker = cache.join(format!("cert-{hash}.tmp"));
    std::fs::create_dir_all(&blocker).expect("blocker");
    let tls_addr: SocketAddr = ([127, 0, 0, 1], tls_port).into();
    let text = config(&pebble, "tls-alpn-01", "", &tls_addr.to_string(), &cache);
    let gw = start(&text, dir.path()).await;
    let tls = client(&pebble.root().await);
    let served_first = wait_served(tls_addr, &tls, "a.example.test", ISSUE, |_| true).await;
    let admin = gw.admin_addr().expect("admin");
    assert_eq!(orders(admin, "ok").await, 1);
    assert!(!cache_files(&cache).iter().any(|f| f.ends_with(".pem")));

    std::fs::remove_dir(&blocker).expect("unblock");
    let pem = cache.join(format!("cert-{hash}.pem"));
    assert!(
        eventually(WAIT, || async { pem.exists() }).await,
        "the certificate was never stored: {:?}",
        cache_files(&cache)
    );
    let stored = std::fs::read(&pem).expect("stored");
    let stored_leaf = rustls_pki_types::CertificateDer::pem_slice_iter(&stored)
        .next()
        .expect("a certificate")
        .expect("PEM");
    assert_eq!(
        stored_leaf.as_ref(),
        &served_first[..],
        "the one in service is stored"
    );
    assert_eq!(orders(admin, "ok").await, 1, "ordered again");
    assert_eq!(orders(admin, "error").await, 0);
    assert!(gw.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_the_ca_forgot_is_registered_again() {
    let [http_port, tls_port] = free_ports();
    let opts = |listen_port| PebbleOpts {
        http_port,
        tls_port,
        validity_secs: None,
        listen_port,
    };
    let mut pebble = Pebble::start(opts(None)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("acme");
    let tls_addr: SocketAddr = ([127, 0, 0, 1], tls_port).into();
    let text = config(&pebble, "tls-alpn-01", "", &tls_addr.to_string(), &cache);
    let gw = start(&text, dir.path()).await;
    let tls = client(&pebble.root().await);
    wait_served(tls_addr, &tls, "a.example.test", ISSUE, |_| true).await;
    assert!(gw.shutdown().await);

    // Pebble restarts on the same directory URL and has forgotten every
    // account; the gateway restarts with another name, so it must order.
    let listen: u16 = pebble
        .directory
        .trim_start_matches("https://127.0.0.1:")
        .trim_end_matches("/dir")
        .parse()
        .expect("port");
    pebble.stop();
    let pebble = Pebble::start(opts(Some(listen))).await;
    let text = config(&pebble, "tls-alpn-01", "", &tls_addr.to_string(), &cache)
        .replace("\"b.example.test\"", "\"d.example.test\"");
    let gw = start(&text, dir.path()).await;
    let tls = client(&pebble.root().await);
    wait_served(tls_addr, &tls, "d.example.test", ISSUE, |_| true).await;
    let admin = gw.admin_addr().expect("admin");
    assert_eq!(orders(admin, "ok").await, 1);
    assert_eq!(
        orders(admin, "error").await,
        0,
        "re-registered within the same try"
    );
    let files = cache_files(&cache);
    assert!(
        files.iter().any(|f| f.ends_with(".json.old")),
        "the forgotten account was moved aside: {files:?}"
    );
    assert!(gw.shutdown().await);
}

/// Until its first certificate is issued, an ACME listener fails every
/// handshake, so `/readyz` says degraded and a balancer keeps clients away.
/// Before, it said ready (the fifth probe: a CA unreachable on a first start
/// with an empty cache). Ready once issued: the http-01 test above.
#[tokio::test]
async fn readyz_is_degraded_while_an_acme_listener_has_no_certificate() {
    let [tls_port, closed] = free_ports();
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        r#"[admin]
addr = "127.0.0.1:0"
[[listener]]
addr = "127.0.0.1:{tls_port}"
[listener.tls.acme]
directory = "https://127.0.0.1:{closed}/dir"
domains = ["a.example.test"]
cache = "{cache}"
"#,
        cache = dir.path().join("acme").display()
    );
    let gw = start(&text, dir.path()).await;
    let r = get(gw.admin_addr().expect("admin"), "/readyz").await;
    assert_eq!(r.status, http::StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        r.text().contains(&format!(
            "listener 127.0.0.1:{tls_port} has no certificate yet (ACME: a.example.test)"
        )),
        "{}",
        r.text()
    );
}
