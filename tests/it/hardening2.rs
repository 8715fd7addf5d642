//! Hardening, round 2 (issue 22): config diagnostics (unusable certificates,
//! listener addresses in use, the bind error's cause said once, a too small
//! `max_request_head`) checked on the real `wsgate` binary, and requests with a
//! repeated single field (two `Host` lines) refused over a real socket before
//! anything reaches the upstream. Helpers live here (not in `tests/common`).
//! Nothing sleeps to synchronise: every wait is bounded by a deadline.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(20);

// ---- running the binary ------------------------------------------------------

/// Runs `wsgate ARGS` in `dir` (so relative paths in messages are exact), with
/// a deadline: a gateway that unexpectedly started is killed and fails the test.
async fn wsgate(dir: &Path, args: &[&str]) -> Output {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn wsgate");
    tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("wsgate exits")
        .expect("wsgate output")
}

/// `wsgate check -c wsgate.toml` on `toml` written into `dir`; returns stdout
/// after asserting the exit status.
async fn check(dir: &Path, toml: &str, extra: &[&str], ok: bool) -> String {
    std::fs::write(dir.join("wsgate.toml"), toml).expect("write config");
    let mut args = vec!["check", "-c", "wsgate.toml"];
    args.extend_from_slice(extra);
    let out = wsgate(dir, &args).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.success(),
        ok,
        "check exit status {:?}; stdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Writes a self-signed certificate and key as `NAME.crt` / `NAME.key` in `dir`.
fn write_cert(dir: &Path, name: &str) {
    let g = wsgate::certs::generate_self_signed(&["localhost".to_string()]).expect("cert");
    std::fs::write(dir.join(format!("{name}.crt")), g.cert_pem).expect("write crt");
    std::fs::write(dir.join(format!("{name}.key")), g.key_pem).expect("write key");
}

#[tokio::test]
async fn check_points_at_unusable_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write_cert(d, "good");
    write_cert(d, "other");
    std::fs::write(d.join("empty.crt"), "").expect("write");
    std::fs::write(d.join("garbage.crt"), "not a certificate\n\x01\x02\n").expect("write");
    std::fs::create_dir(d.join("dir.crt")).expect("mkdir");
    std::fs::write(
        d.join("bad-der.crt"),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    std::fs::write(d.join("empty.key"), "").expect("write");

    // Layout: line 1 `[[listener]]`, 2 `addr`, 3 `[listener.tls]`, 4 `cert =
    // "..."` (the value at column 8), 5 `key = "..."` (column 7).
    let cases = [
        (
            "empty.crt",
            "good.key",
            "wsgate.toml:4:8: listener[0].tls.cert: \"empty.crt\" is not a usable certificate: no PEM CERTIFICATE block found (empty, or not a PEM certificate file)",
        ),
        (
            "garbage.crt",
            "good.key",
            "wsgate.toml:4:8: listener[0].tls.cert: \"garbage.crt\" is not a usable certificate: no PEM CERTIFICATE block found (empty, or not a PEM certificate file)",
        ),
        (
            "dir.crt",
            "good.key",
            "wsgate.toml:4:8: listener[0].tls.cert: cannot read \"dir.crt\": it is a directory, not a file (create a dev certificate with `wsgate gen-cert`)",
        ),
        (
            "bad-der.crt",
            "good.key",
            "wsgate.toml:4:8: listener[0].tls.cert: \"bad-der.crt\" is not a usable certificate: the first CERTIFICATE block is not a valid X.509 certificate",
        ),
        (
            "other.crt",
            "good.key",
            "wsgate.toml:4:8: listener[0].tls.cert: \"other.crt\" does not belong to the key \"good.key\" (listener[0].tls.key): the certificate's public key is not the private key's",
        ),
        (
            "good.crt",
            "empty.key",
            "wsgate.toml:5:7: listener[0].tls.key: \"empty.key\" is not a usable private key: no PEM PRIVATE KEY block found (empty, or not a PEM PRIVATE KEY file)",
        ),
        (
            "good.crt",
            "good.crt",
            "wsgate.toml:5:7: listener[0].tls.key: \"good.crt\" is not a usable private key: no PEM PRIVATE KEY block found (empty, or not a PEM PRIVATE KEY file)",
        ),
    ];
    for (cert, key, want) in cases {
        let toml = format!(
            "[[listener]]\naddr = \"127.0.0.1:0\"\n[listener.tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n"
        );
        let out = check(d, &toml, &[], false).await;
        assert_eq!(out, format!("{want}\n"), "cert {cert}, key {key}");
    }

    // An SNI entry is pointed at the same way.
    let toml = "[[listener]]\naddr = \"127.0.0.1:0\"\n[listener.tls]\ncert = \"good.crt\"\nkey = \"good.key\"\n\
                [[listener.tls.sni]]\nhost = \"a.test\"\ncert = \"other.crt\"\nkey = \"good.key\"\n";
    let out = check(d, toml, &[], false).await;
    assert_eq!(
        out,
        "wsgate.toml:8:8: listener[0].tls.sni[0].cert: \"other.crt\" does not belong to the key \"good.key\" (listener[0].tls.sni[0].key): the certificate's public key is not the private key's\n"
    );

    // A host listed twice, in another case: only the first would be served.
    let toml = "[[listener]]\naddr = \"127.0.0.1:0\"\n[listener.tls]\ncert = \"good.crt\"\nkey = \"good.key\"\n\
                [[listener.tls.sni]]\nhost = \"a.test\"\ncert = \"good.crt\"\nkey = \"good.key\"\n\
                [[listener.tls.sni]]\nhost = \"A.Test\"\ncert = \"good.crt\"\nkey = \"good.key\"\n";
    let out = check(d, toml, &[], false).await;
    assert_eq!(
        out,
        "wsgate.toml:11:8: listener[0].tls.sni[1].host: \"A.Test\" is already listener[0].tls.sni[0]'s host (names are compared without case)\n"
    );

    // The good pair passes.
    let toml = "[[listener]]\naddr = \"127.0.0.1:0\"\n[listener.tls]\ncert = \"good.crt\"\nkey = \"good.key\"\n";
    assert_eq!(check(d, toml, &[], true).await, "ok\n");
}

#[tokio::test]
async fn startup_fails_with_the_certificate_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write_cert(d, "good");
    write_cert(d, "other");
    std::fs::write(
        d.join("wsgate.toml"),
        "[[listener]]\naddr = \"127.0.0.1:0\"\n[listener.tls]\ncert = \"other.crt\"\nkey = \"good.key\"\n",
    )
    .expect("write config");
    let out = wsgate(d, &["-c", "wsgate.toml"]).await;
    assert!(
        !out.status.success(),
        "a mismatched key must stop the start"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "wsgate.toml:4:8: listener[0].tls.cert: \"other.crt\" does not belong to the key \"good.key\" (listener[0].tls.key): the certificate's public key is not the private key's\n"
    );
}

#[tokio::test]
async fn check_reports_listener_and_admin_addresses_in_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // Held (listening) for the whole test.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_admin = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let (p, a) = (
        taken.local_addr().expect("addr").port(),
        taken_admin.local_addr().expect("addr").port(),
    );
    let toml = format!(
        "[[listener]]\naddr = \"127.0.0.1:0\"\n\n[[listener]]\naddr = \"127.0.0.1:{p}\"\n\n[admin]\naddr = \"127.0.0.1:{a}\"\n"
    );
    let out = check(d, &toml, &[], false).await;
    assert_eq!(
        out,
        format!(
            "wsgate.toml:5:8: listener[1].addr: address 127.0.0.1:{p} is already in use\n\
             wsgate.toml:8:8: admin.addr: address 127.0.0.1:{a} is already in use\n"
        )
    );
    // `--no-bind` (before reloading a running gateway) skips the test.
    assert_eq!(check(d, &toml, &["--no-bind"], true).await, "ok\n");
    // Once they are free, check says ok and leaves them free.
    drop((taken, taken_admin));
    assert_eq!(check(d, &toml, &[], true).await, "ok\n");
    let again = std::net::TcpListener::bind(("127.0.0.1", p));
    assert!(again.is_ok(), "check released the address");
}

#[tokio::test]
async fn bind_error_says_its_cause_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    std::fs::write(
        d.join("wsgate.toml"),
        format!("[[listener]]\naddr = \"127.0.0.1:{port}\"\n"),
    )
    .expect("write config");
    let out = wsgate(d, &["-c", "wsgate.toml"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "wsgate: starting the gateway: wsgate.toml:2:8: listener[0].addr: cannot bind 127.0.0.1:{port}: Address already in use (os error 98)\n"
    );
    assert!(stderr.ends_with(&want), "stderr:\n{stderr}");
    assert_eq!(
        stderr.matches("Address already in use").count(),
        1,
        "{stderr}"
    );
    drop(taken);
}

#[tokio::test]
async fn max_request_head_out_of_bounds_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let cfg = |v: &str| {
        format!("[server]\nmax_request_head = \"{v}\"\n\n[[listener]]\naddr = \"127.0.0.1:0\"\n")
    };
    assert_eq!(
        check(d, &cfg("1B"), &[], false).await,
        "wsgate.toml:2:20: server.max_request_head: \"1B\" is below the minimum of 8KiB (8192 bytes)\n"
    );
    assert_eq!(
        check(d, &cfg("8191"), &[], false).await,
        "wsgate.toml:2:20: server.max_request_head: \"8191\" is below the minimum of 8KiB (8192 bytes)\n"
    );
    assert_eq!(
        check(d, &cfg("17MiB"), &[], false).await,
        "wsgate.toml:2:20: server.max_request_head: \"17MiB\" is above the maximum of 16MiB (16777216 bytes)\n"
    );
    assert_eq!(check(d, &cfg("8KiB"), &[], true).await, "ok\n");
    assert_eq!(check(d, &cfg("16MiB"), &[], true).await, "ok\n");
    // The gateway refuses to start with it too (same message, on stderr).
    std::fs::write(d.join("wsgate.toml"), cfg("1B")).expect("write config");
    let out = wsgate(d, &["-c", "wsgate.toml"]).await;
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "wsgate.toml:2:20: server.max_request_head: \"1B\" is below the minimum of 8KiB (8192 bytes)\n"
    );
}

// ---- repeated single fields over a real socket --------------------------------

/// An upstream recording the `Host` values (every line) of each request it gets.
async fn recording_upstream() -> (SocketAddr, Arc<Mutex<Vec<Vec<String>>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let hosts = req
                        .headers()
                        .get_all(http::header::HOST)
                        .iter()
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .collect();
                    record.lock().unwrap_or_else(|e| e.into_inner()).push(hosts);
                    async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("up")))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// A gateway (config written into a temp dir) proxying everything to `up`.
async fn gateway(up: SocketAddr) -> (wsgate::GatewayHandle, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wsgate.toml");
    std::fs::write(
        &path,
        format!(
            "[[listener]]\naddr = \"127.0.0.1:0\"\n\
             [upstream.up]\nservers = [\"{up}\"]\nretries = 0\n\
             [[route]]\npath = \"/\"\nupstream = \"up\"\n"
        ),
    )
    .expect("write config");
    let cfg = wsgate::config::load(&path).unwrap_or_else(|e| panic!("config:\n{e}"));
    let gw = wsgate::Gateway::start(cfg).await.expect("gateway starts");
    (gw, dir)
}

/// Writes `req` on a fresh connection and reads until the gateway closes it
/// (failing the test if it does not within the deadline).
async fn exchange_until_close(addr: SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(req).await.expect("write");
    read_until_close(&mut s).await
}

/// What the gateway sends until it closes the connection.
async fn read_until_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("the gateway closes the connection")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

/// The HTTP/1.1 fast path serves plain requests itself and hands the first
/// head it does not take to hyper, under the smuggling guard: a refused head
/// behind a served one (pipelined, or on a kept-alive connection) is refused
/// as it would be alone, and the request before it is answered.
#[tokio::test]
async fn a_refused_head_behind_a_served_one_is_still_refused() {
    let (up, seen) = recording_upstream().await;
    let (gw, _dir) = gateway(up).await;
    let addr = gw.http_addr().expect("listener");
    let good = &b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"[..];
    for bad in [
        &b"GET / HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ] {
        // Pipelined: both in one write.
        let resp = exchange_until_close(addr, &[good, bad].concat()).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert_eq!(resp.matches("HTTP/1.1 400").count(), 1, "{resp}");
        // Kept alive: the second head sent once the first is answered.
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(good).await.expect("write");
        let mut first = [0u8; 12];
        tokio::time::timeout(WAIT, s.read_exact(&mut first))
            .await
            .expect("answered")
            .expect("read");
        assert_eq!(&first, b"HTTP/1.1 200");
        s.write_all(bad).await.expect("write");
        let rest = read_until_close(&mut s).await;
        assert_eq!(rest.matches("HTTP/1.1 400").count(), 1, "{rest}");
    }
    // The upstream saw the four good requests only.
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(seen.len(), 4, "{seen:?}");
}

#[tokio::test]
async fn repeated_host_and_other_single_fields_get_400_and_reach_nobody() {
    let (up, seen) = recording_upstream().await;
    let (gw, _dir) = gateway(up).await;
    let addr = gw.http_addr().expect("listener");
    let refused: [&[u8]; 7] = [
        b"GET / HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n\r\n",
        // Equal values are still two Host lines (RFC 9112 §3.2).
        b"GET / HTTP/1.1\r\nHost: localhost\r\nHost: localhost\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: localhost\r\nX-A: 1\r\nHOST: evil.example\r\n\r\n",
        b"GET http://localhost/ HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\nContent-Length: 3\r\n\r\nabc",
        b"GET / HTTP/1.1\r\nHost: localhost\r\nOrigin: http://localhost\r\nOrigin: http://evil.example\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\n",
    ];
    for req in refused {
        let resp = exchange_until_close(addr, req).await;
        assert!(
            resp.starts_with("HTTP/1.1 400"),
            "{}\n-> {resp}",
            String::from_utf8_lossy(req)
        );
    }
    // One Host line (with or without an absolute-form target) is forwarded,
    // with that one Host.
    for req in [
        &b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"[..],
        b"GET http://localhost/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    ] {
        let resp = exchange_until_close(addr, req).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    }
    // The upstream answered both good requests before the gateway replied to
    // them, and the refused ones were answered before these were sent: it saw
    // exactly the two good ones.
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(
        seen,
        vec![vec!["localhost".to_string()], vec!["localhost".to_string()]]
    );
}
