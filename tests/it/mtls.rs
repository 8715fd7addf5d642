//! mTLS on listeners (`client_ca`, `client_auth`; docs/auth.md) with a real TLS
//! client: rcgen makes a client CA, a client certificate and a rogue one; the
//! gateway requires or accepts them, and upstreams learn the verified subject
//! and fingerprint, never a client's own `X-Client-Cert-*`.

// tungstenite's handshake callback fixes its (large) error type.
#![allow(clippy::result_large_err)]

use crate::common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::*;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};

/// Fails the test instead of hanging when the gateway never answers.
async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .expect("no answer in time: the gateway hung")
}

/// A CA and a client certificate it issued (DER + key).
struct Pki {
    ca_pem: String,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

fn pki(ca_name: &str, client_cn: &str) -> Pki {
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    let ca_key = KeyPair::generate().expect("key");
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(Vec::<String>::new()).expect("params");
    leaf.distinguished_name = DistinguishedName::new();
    leaf.distinguished_name
        .push(DnType::OrganizationName, "Example Corp");
    leaf.distinguished_name.push(DnType::CommonName, client_cn);
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let leaf_key = KeyPair::generate().expect("key");
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).expect("leaf");
    Pki {
        ca_pem: ca_cert.pem(),
        cert: leaf_cert.der().clone(),
        key: PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    }
}

fn sha256_hex(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A client trusting the gateway's certificate, presenting `cert` if given.
fn client(server_ca: &str, cert: Option<&Pki>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    client_of(rustls::DEFAULT_VERSIONS, server_ca, cert, alpn)
}

/// [`client`] speaking only `versions`.
fn client_of(
    versions: &[&'static rustls::SupportedProtocolVersion],
    server_ca: &str,
    cert: Option<&Pki>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(server_ca).expect("pem") {
        roots.add(c.expect("cert")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots);
    let mut cfg = match cert {
        Some(p) => b
            .with_client_auth_cert(vec![p.cert.clone()], p.key.clone_key())
            .expect("client cert"),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// One HTTP/1.1 request over a new TLS connection; `Err` when the handshake
/// or the exchange failed (with TLS 1.3 a refused client certificate shows
/// on the first read, after the client thinks the handshake is done).
async fn attempt(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    within(async {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let resp = tx
            .send_request(request("GET", "/api/x", headers, ""))
            .await
            .map_err(|e| format!("exchange: {e}"))?;
        Ok(collect(resp).await)
    })
    .await
}

/// An upstream echoing the `x-client-cert-*` headers it got as `seen-*`.
async fn echo_upstream() -> SocketAddr {
    http_upstream(|req: Request<Incoming>| async move {
        let mut b = Response::builder();
        for (k, v) in req.headers() {
            if k.as_str().starts_with("x-client-cert") {
                b = b.header(format!("seen-{k}"), v.clone());
            }
        }
        b.body(Full::default()).expect("response")
    })
    .await
}

struct Setup {
    gw: TestGateway,
    server_crt: String,
    good: Pki,
    rogue: Pki,
}

async fn setup(client_auth: &str, extra: impl FnOnce(Cfg) -> Cfg) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let (crt, key) = write_cert(dir.path(), "server", &["localhost"]);
    let good = pki("Test Client CA", "alice");
    let rogue = pki("Rogue CA", "alice");
    let ca_path = dir.path().join("clients-ca.pem");
    std::fs::write(&ca_path, &good.ca_pem).expect("write ca");
    let up = echo_upstream().await;
    let cfg = Cfg::new()
        .listener(
            Listener::plain()
                .tls(&crt, &key)
                .set("tls.client_ca", ca_path.to_string_lossy().into_owned())
                .set("tls.client_auth", client_auth),
        )
        .listener_plain()
        .upstream("api", &[up])
        .route_upstream("/api/", "api");
    let gw = TestGateway::start_in(&extra(cfg).build(), dir).await;
    Setup {
        gw,
        server_crt: crt,
        good,
        rogue,
    }
}

const SPOOF: [(&str, &str); 2] = [
    ("x-client-cert-subject", "CN=admin"),
    ("X-Client-Cert-Sha256", "00ff"),
];

#[tokio::test]
async fn required_client_auth_refuses_clients_without_a_valid_certificate() {
    let s = setup("required", |c| c).await;
    let none = attempt(s.gw.https(), client(&s.server_crt, None, &[]), &[]).await;
    assert!(none.is_err(), "no certificate was let in: {none:?}");
    let rogue = attempt(
        s.gw.https(),
        client(&s.server_crt, Some(&s.rogue), &[]),
        &[],
    )
    .await;
    assert!(
        rogue.is_err(),
        "a certificate of another CA was let in: {rogue:?}"
    );
    let r = attempt(
        s.gw.https(),
        client(&s.server_crt, Some(&s.good), &[]),
        &SPOOF,
    )
    .await
    .expect("a valid certificate is let in");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["seen-x-client-cert-subject"],
        "CN=alice,O=Example Corp"
    );
    assert_eq!(
        r.headers["seen-x-client-cert-sha256"],
        sha256_hex(&s.good.cert).as_str()
    );
    assert_eq!(
        r.headers
            .get_all("seen-x-client-cert-subject")
            .iter()
            .count(),
        1
    );
}

#[tokio::test]
async fn optional_client_auth_lets_anonymous_clients_in_without_identity() {
    let s = setup("optional", |c| c).await;
    let r = attempt(s.gw.https(), client(&s.server_crt, None, &[]), &SPOOF)
        .await
        .expect("no certificate is fine when optional");
    assert_eq!(r.status, 200);
    assert!(
        !r.headers.contains_key("seen-x-client-cert-subject"),
        "{:?}",
        r.headers
    );
    assert!(
        !r.headers.contains_key("seen-x-client-cert-sha256"),
        "{:?}",
        r.headers
    );
    let rogue = attempt(
        s.gw.https(),
        client(&s.server_crt, Some(&s.rogue), &[]),
        &[],
    )
    .await;
    assert!(
        rogue.is_err(),
        "an invalid certificate still fails: {rogue:?}"
    );
    let r = attempt(s.gw.https(), client(&s.server_crt, Some(&s.good), &[]), &[])
        .await
        .expect("valid certificate");
    assert_eq!(
        r.headers["seen-x-client-cert-subject"],
        "CN=alice,O=Example Corp"
    );
}

#[tokio::test]
async fn spoofed_certificate_headers_are_stripped_on_plain_listeners() {
    let s = setup("required", |c| c).await;
    let r = within(get_with(s.gw.http(), "/api/x", &SPOOF)).await;
    assert_eq!(r.status, 200);
    assert!(
        !r.headers.contains_key("seen-x-client-cert-subject"),
        "{:?}",
        r.headers
    );
    assert!(
        !r.headers.contains_key("seen-x-client-cert-sha256"),
        "{:?}",
        r.headers
    );
}

#[tokio::test]
async fn http2_requests_carry_the_connection_certificate() {
    let s = setup("required", |c| c).await;
    let cfg = client(&s.server_crt, Some(&s.good), &[b"h2"]);
    let tls = within(tls_connect(s.gw.https(), cfg, "localhost")).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let req = Request::builder()
        .uri("https://localhost/api/x")
        .header("x-client-cert-subject", "CN=admin")
        .body(Full::default())
        .expect("request");
    let r = within(send_h2(tls, req)).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["seen-x-client-cert-subject"],
        "CN=alice,O=Example Corp"
    );
}

/// A WebSocket upstream recording the `x-client-cert-subject` of each handshake.
async fn ws_upstream() -> (SocketAddr, Arc<Mutex<Vec<Option<String>>>>) {
    use tokio_tungstenite::tungstenite::handshake::server::{Request as WsReq, Response as WsResp};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let s = s.clone();
            tokio::spawn(async move {
                let cb = |req: &WsReq, resp: WsResp| {
                    let subject = req
                        .headers()
                        .get("x-client-cert-subject")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    s.lock().unwrap().push(subject);
                    Ok(resp)
                };
                let _ = tokio_tungstenite::accept_hdr_async(tcp, cb).await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn websocket_handshakes_carry_the_certificate_and_drop_spoofs() {
    use tokio::io::AsyncWriteExt;
    let (ws, seen) = ws_upstream().await;
    let s = setup("optional", |c| {
        c.upstream("wsup", &[ws]).route_upstream("/ws/", "wsup")
    })
    .await;
    let extra = format!("{}X-Client-Cert-Subject: CN=admin\r\n", raw::WS_HEADERS);
    let req = raw::handshake("/ws/", &extra);
    for cert in [Some(&s.good), None] {
        let cfg = client(&s.server_crt, cert, &[b"http/1.1"]);
        let mut tls = within(tls_connect(s.gw.https(), cfg, "localhost")).await;
        tls.write_all(req.as_bytes()).await.expect("write");
        let head = within(raw::read_head(&mut tls)).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    }
    // Over plain TCP too.
    let mut tcp = TcpStream::connect(s.gw.http()).await.expect("connect");
    tcp.write_all(req.as_bytes()).await.expect("write");
    let head = within(raw::read_head(&mut tcp)).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(
        *seen.lock().unwrap(),
        vec![Some("CN=alice,O=Example Corp".to_string()), None, None]
    );
}

/// A resumed session skips the certificate checks of a full handshake, so a
/// session made where no certificate is asked for must not resume where one
/// is required, nor one made under another CA (nginx's CVE-2014-3616).
/// Listeners with the same policy still share sessions (listener_tls.rs).
#[tokio::test]
async fn sessions_do_not_resume_under_another_client_certificate_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (crt, key) = write_cert(dir.path(), "server", &["localhost"]);
    let (good, other) = (pki("Test Client CA", "alice"), pki("Other CA", "bob"));
    let ca_file = |name: &str, pem: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).expect("write ca");
        p.to_string_lossy().into_owned()
    };
    let (good_ca, other_ca) = (
        ca_file("good.pem", &good.ca_pem),
        ca_file("other.pem", &other.ca_pem),
    );
    let requiring = |ca: &str| {
        Listener::plain()
            .tls(&crt, &key)
            .set("tls.client_ca", ca.to_string())
            .set("tls.client_auth", "required")
    };
    let cfg = Cfg::new()
        .listener(Listener::plain().tls(&crt, &key))
        .listener(requiring(&good_ca))
        .listener(requiring(&other_ca))
        .upstream("api", &[echo_upstream().await])
        .route_upstream("/api/", "api")
        .build();
    let gw = TestGateway::start_in(&cfg, dir).await;
    let [open, strict, foreign] = gw.handle.https_addrs()[..] else {
        panic!("three TLS listeners");
    };
    // TLS 1.3 tickets, and TLS 1.2 session ids (the session cache).
    let tls12: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    for versions in [rustls::DEFAULT_VERSIONS, tls12] {
        // Without a certificate: served where none is asked for, and its
        // session is refused where one is required.
        let anonymous = client_of(versions, &crt, None, &[b"http/1.1"]);
        for _ in 0..2 {
            attempt(open, anonymous.clone(), &[]).await.expect("served");
        }
        assert!(attempt(strict, anonymous.clone(), &[]).await.is_err());
        // alice's session, made under her CA, does not resume under another.
        let alice = client_of(versions, &crt, Some(&good), &[b"http/1.1"]);
        for _ in 0..2 {
            let r = attempt(strict, alice.clone(), &[]).await.expect("served");
            assert!(r.headers.contains_key("seen-x-client-cert-subject"));
        }
        assert!(attempt(foreign, alice, &[]).await.is_err());
    }
}
