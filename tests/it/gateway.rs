//! Foundation over real sockets: routing, the HTTP reverse proxy, static files,
//! TLS with SNI, HTTP/2, and `wsgate check` messages.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::raw::End;
use common::tls::{tls11_client_hello, try_tls_connect};
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{Full, StreamBody};

/// `[upstream.api]` (already in `cfg`) with short timeouts, routed at `/api/`
/// (prefix stripped) and at `/raw` (path kept).
fn with_api_routes(cfg: Cfg) -> String {
    cfg.set("upstream.api.connect_timeout", "1s")
        .set("upstream.api.response_timeout", "2s")
        .route(Route::upstream("/api/", "api").set("strip_prefix", true))
        .route_upstream("/raw", "api")
        .build()
}

/// A plain listener and [`with_api_routes`] to `server`.
fn api_config(server: impl std::fmt::Display) -> String {
    with_api_routes(Cfg::new().listener_plain().upstream("api", &[server]))
}

#[tokio::test]
async fn proxies_with_forwarded_headers_and_strip_prefix() {
    let up = http_upstream(|req| async move {
        let h = req.headers();
        let body = format!(
            "path={} xff={:?} proto={:?} xhost={:?} host={:?} secret={:?} keep={:?} upgrade={:?}",
            req.uri().path_and_query().map(|p| p.as_str()).unwrap_or(""),
            h.get("x-forwarded-for"),
            h.get("x-forwarded-proto"),
            h.get("x-forwarded-host"),
            h.get("host"),
            h.get("x-secret"),
            h.get("x-keep"),
            h.get("upgrade"),
        );
        Response::builder()
            .header("connection", "x-upstream-hop")
            .header("x-upstream-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("x-end-to-end", "yes")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    })
    .await;
    let gw = TestGateway::start(&api_config(up)).await;
    let req = Request::get("/api/users?id=7")
        .header("host", "app.example.test")
        .header("x-forwarded-for", "203.0.113.9")
        .header("connection", "x-secret")
        .header("x-secret", "hop")
        .header("x-keep", "e2e")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(gw.http(), req).await;
    assert_eq!(r.status, StatusCode::OK);
    let t = r.text();
    assert!(t.contains("path=/users?id=7"), "{t}");
    // The client is not a trusted proxy: the X-Forwarded-For it sent is
    // replaced by its own address (docs/client-address.md).
    assert!(t.contains("xff=Some(\"127.0.0.1\")"), "{t}");
    assert!(t.contains("proto=Some(\"http\")"), "{t}");
    assert!(t.contains("xhost=Some(\"app.example.test\")"), "{t}");
    assert!(t.contains("host=Some(\"app.example.test\")"), "{t}");
    assert!(
        t.contains("secret=None"),
        "hop-by-hop header listed in Connection was forwarded: {t}"
    );
    assert!(t.contains("keep=Some(\"e2e\")"), "{t}");
    // Response hop-by-hop headers are stripped too.
    assert!(r.headers.get("x-upstream-hop").is_none());
    assert!(r.headers.get("keep-alive").is_none());
    assert_eq!(r.headers["x-end-to-end"], "yes");
    // Without strip_prefix the path is kept.
    let r = get(gw.http(), "/raw/x").await;
    assert!(r.text().contains("path=/raw/x"), "{}", r.text());
}

#[tokio::test]
async fn no_route_is_404_and_missing_host_is_400() {
    let gw = TestGateway::start(
        &Cfg::new()
            .listener_plain()
            .route_app("/echo", "echo")
            .build(),
    )
    .await;
    assert_eq!(
        get(gw.http(), "/nothing").await.status,
        StatusCode::NOT_FOUND
    );
    let out = raw(
        gw.http(),
        b"GET /echo HTTP/1.1\r\n\r\n",
        Duration::from_secs(2),
    )
    .await
    .answer();
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("missing Host"), "{out}");
}

#[tokio::test]
async fn host_routes_beat_pathless_and_wildcards_match() {
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let c = named_upstream("c").await;
    let toml = Cfg::new()
        .listener_plain()
        .upstream("a", &[a])
        .upstream("b", &[b])
        .upstream("c", &[c])
        .route_upstream("/", "a")
        .route_upstream("/deep/er", "a")
        .route(Route::upstream("/", "b").host("*.example.test"))
        .route(Route::upstream("/", "c").host("exact.example.test"))
        .build();
    let gw = TestGateway::start(&toml).await;
    let host = |h: &'static str, p: &'static str| {
        let addr = gw.http();
        async move {
            let req = Request::get(p)
                .header("host", h)
                .body(Full::new(Bytes::new()))
                .unwrap();
            send(addr, req).await.text()
        }
    };
    assert_eq!(host("other.test", "/deep/er/x").await, "a");
    assert_eq!(host("Foo.Example.TEST:8080", "/deep/er/x").await, "b");
    assert_eq!(host("exact.example.test", "/").await, "c");
    assert_eq!(
        host("example.test", "/").await,
        "a",
        "a wildcard does not match its bare domain"
    );
}

#[tokio::test]
async fn refused_upstream_is_502_and_slow_upstream_is_504() {
    // A port that was just free: connecting is refused.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gw = TestGateway::start(&api_config(dead)).await;
    let r = get(gw.http(), "/api/x").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(r.text().contains("upstream"), "{}", r.text());

    let slow = http_upstream(|_req| async move {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Response::new(Full::new(Bytes::from("late")))
    })
    .await;
    let gw = TestGateway::start(&api_config(slow)).await;
    let started = std::time::Instant::now();
    let r = get(gw.http(), "/api/x").await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[tokio::test]
async fn round_robin_spreads_by_weight() {
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let gw = TestGateway::start(&with_api_routes(
        Cfg::new()
            .listener_plain()
            .weighted_upstream("api", &[(a, 1), (b, 3)]),
    ))
    .await;
    let mut counts = std::collections::HashMap::new();
    for _ in 0..40 {
        *counts
            .entry(get(gw.http(), "/api/").await.text())
            .or_insert(0) += 1;
    }
    assert_eq!(counts.get("a"), Some(&10), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&30), "{counts:?}");
}

#[tokio::test]
async fn streams_8mib_upload_and_chunked_upload() {
    let up = body_summing_upstream().await;
    let gw = TestGateway::start(&api_config(up)).await;
    let data: Vec<u8> = (0..8 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let sum: u64 = data.iter().map(|b| u64::from(*b)).sum();
    let req = Request::post("/api/upload")
        .header("host", "x")
        .body(Full::new(Bytes::from(data)))
        .unwrap();
    let r = send(gw.http(), req).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), format!("{} {sum} None", 8 * 1024 * 1024));

    // Chunked: the client streams pieces with no Content-Length.
    let chunks: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> = (0..64)
        .map(|i| Ok(http_body::Frame::data(Bytes::from(vec![i as u8; 1000]))))
        .collect();
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let tcp = tokio::net::TcpStream::connect(gw.http()).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::post("/api/chunked")
        .header("host", "x")
        .body(body)
        .unwrap();
    let r = collect(tx.send_request(req).await.unwrap()).await;
    let expected_sum: u64 = (0..64u64).map(|i| i * 1000).sum();
    assert_eq!(r.text(), format!("64000 {expected_sum} Some(\"chunked\")"));
}

#[tokio::test]
async fn keepalive_upstream_connections_are_reused() {
    let conns = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let c2 = conns.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            c2.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let gw = TestGateway::start(&api_config(addr)).await;
    for _ in 0..10 {
        assert_eq!(get(gw.http(), "/api/").await.text(), "ok");
    }
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "upstream connections should be pooled"
    );
}

#[tokio::test]
async fn static_files_types_etag_index_and_traversal() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("site");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("index.html"), "<h1>home</h1>").unwrap();
    std::fs::write(root.join("app.js"), "let x = 1;").unwrap();
    std::fs::write(root.join("sub/index.html"), "sub").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "top secret").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("link.txt")).unwrap();
    let toml = Cfg::new()
        .listener_plain()
        .route_root("/", "{dir}/site")
        .build();
    let gw = TestGateway::start_in(&toml, dir).await;
    let r = get(gw.http(), "/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "<h1>home</h1>");
    assert_eq!(r.headers["content-type"], "text/html; charset=utf-8");
    let r = get(gw.http(), "/app.js").await;
    assert_eq!(r.headers["content-type"], "text/javascript; charset=utf-8");
    let etag = r.headers["etag"].clone();
    let req = Request::get("/app.js")
        .header("host", "x")
        .header("if-none-match", etag)
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(gw.http(), req).await.status, StatusCode::NOT_MODIFIED);
    let r = get(gw.http(), "/sub").await;
    assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(r.headers["location"], "/sub/");
    assert_eq!(get(gw.http(), "/sub/").await.text(), "sub");
    for evil in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/sub/..%2f..%2fsecret.txt",
        "/link.txt",
        "/%00",
        "/..%5csecret.txt",
    ] {
        let out = raw(
            gw.http(),
            format!("GET {evil} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(2),
        )
        .await
        .answer();
        assert!(!out.contains("top secret"), "{evil} leaked: {out}");
        assert!(
            out.starts_with("HTTP/1.1 404") || out.starts_with("HTTP/1.1 400"),
            "{evil}: {out}"
        );
    }
    assert_eq!(
        get(gw.http(), "/missing.txt").await.status,
        StatusCode::NOT_FOUND
    );
    // Other methods: 405 saying which are allowed (RFC 9110 §15.5.6).
    let r = send(gw.http(), request("POST", "/app.js", &[], "")).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers["allow"], "GET, HEAD");
}

/// A TLS listener with a default certificate for localhost and SNI ones for
/// `a.example.test` and `*.b.example.test`, serving `{dir}` as static files.
fn tls_config(dir: &std::path::Path) -> String {
    write_cert(dir, "default", &["localhost"]);
    write_cert(dir, "a", &["a.example.test"]);
    write_cert(dir, "wild", &["*.b.example.test"]);
    Cfg::new()
        .listener(
            Listener::plain()
                .tls("{dir}/default.crt", "{dir}/default.key")
                .sni("a.example.test", "{dir}/a.crt", "{dir}/a.key")
                .sni("*.b.example.test", "{dir}/wild.crt", "{dir}/wild.key"),
        )
        .route_root("/", "{dir}")
        .build()
}

#[tokio::test]
async fn sni_picks_certificates_and_h2_is_negotiated() {
    let dir = tempfile::tempdir().unwrap();
    let toml = tls_config(dir.path());
    std::fs::write(dir.path().join("hello.txt"), "hello over tls").unwrap();
    let d = dir.path().to_path_buf();
    let gw = TestGateway::start_in(&toml, dir).await;
    let ca = |n: &str| d.join(format!("{n}.crt")).to_string_lossy().into_owned();
    // Each name verifies only against its own certificate.
    for (sni, cert) in [
        ("a.example.test", "a"),
        ("x.b.example.test", "wild"),
        ("localhost", "default"),
        ("unknown.test", "default"),
    ] {
        let res = try_tls_connect(gw.https(), tls_client(&ca(cert), &[b"http/1.1"]), sni).await;
        if sni == "unknown.test" {
            assert!(res.is_err(), "the default cert is for localhost, not {sni}");
        } else {
            assert!(
                res.is_ok(),
                "{sni} should verify against {cert}.crt: {:?}",
                res.err()
            );
        }
    }
    // HTTP/2 via ALPN.
    let s = tls_connect(
        gw.https(),
        tls_client(&ca("default"), &[b"h2", b"http/1.1"]),
        "localhost",
    )
    .await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let req = Request::get("https://localhost/hello.txt")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send_h2(s, req).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "hello over tls");
}

#[tokio::test]
async fn h2_clients_are_proxied_to_http1_upstreams() {
    let up = http_upstream(|req| async move {
        Response::new(Full::new(Bytes::from(format!(
            "{:?} {}",
            req.version(),
            req.uri()
        ))))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = write_cert(dir.path(), "default", &["localhost"]);
    let toml = Cfg::new()
        .listener_tls("{dir}/default.crt", "{dir}/default.key")
        .upstream("u", &[up])
        .route_upstream("/", "u")
        .build();
    let gw = TestGateway::start_in(&toml, dir).await;
    let s = tls_connect(gw.https(), tls_client(&ca, &[b"h2"]), "localhost").await;
    let r = send_h2(
        s,
        Request::get("https://localhost/p?q=1")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "HTTP/1.1 /p?q=1");
}

#[tokio::test]
async fn tls_rejects_old_versions_and_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let toml = tls_config(dir.path());
    let gw = TestGateway::start_in(&toml, dir).await;
    // Garbage instead of a ClientHello: the connection is closed, nothing served.
    let out = raw(
        gw.https(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(out.end, End::Closed, "garbage is closed at once: {out:?}");
    assert!(!out.text().contains("200"), "{}", out.text());
    // A TLS 1.1 ClientHello is refused: an alert (or nothing), then a close.
    let out = raw(gw.https(), &tls11_client_hello(), Duration::from_secs(5)).await;
    assert_eq!(
        out.end,
        End::Closed,
        "a TLS 1.1 client is disconnected: {out:?}"
    );
    assert!(
        out.bytes.is_empty() || out.bytes[0] == 0x15,
        "expected an alert or close, got {out:?}"
    );
}

#[test]
fn default_config_parses() {
    let text = std::fs::read_to_string("conf/wsgate.toml").unwrap();
    // Cert files may be missing on a fresh checkout: check everything else.
    match wsgate::config::parse(std::path::Path::new("conf/wsgate.toml"), &text) {
        Ok(cfg) => {
            assert_eq!(cfg.listeners.len(), 2);
            assert_eq!(
                cfg.admin.map(|a| a.to_string()),
                Some("127.0.0.1:9900".into())
            );
            assert!(cfg.routes.iter().any(|r| r.path == "/echo"));
            assert!(cfg.routes.iter().any(|r| r.path == "/chat"));
        }
        Err(e) => {
            for i in &e.issues {
                assert!(
                    i.message.contains("gen-cert"),
                    "unexpected error in conf/wsgate.toml: {e}"
                );
            }
        }
    }
}

/// Runs `wsgate check` on `toml`; returns its output and the config's path.
fn run_check(toml: &str) -> (std::process::Output, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("check.toml");
    std::fs::write(&path, toml).unwrap();
    // `--no-bind`: the configs use fixed ports (9, 10) that only test positions.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["check", "--no-bind", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    (out, path.to_string_lossy().into_owned())
}

/// Whether `wsgate check` accepts `toml`, and what it printed (the config's
/// path shown as `PATH`).
fn check(toml: &str) -> (bool, String) {
    let (out, path) = run_check(toml);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text.replace(&path, "PATH"))
}

#[test]
fn check_reports_each_error_with_position() {
    let (ok, out) =
        check("[server]\nheader_timeout = \"10 parsecs\"\n[[listener]]\naddr = \"127.0.0.1:0\"\n");
    assert!(!ok);
    assert!(out.contains("PATH:2:18: server.header_timeout"), "{out}");

    let (ok, out) = check("[server]\nbogus = 1\n");
    assert!(!ok);
    assert!(out.contains("PATH:2:1:") && out.contains("bogus"), "{out}");

    let (ok, out) =
        check("[app.echo]\nmax_message_size = \"lots\"\n[[listener]]\naddr = \"127.0.0.1:0\"\n");
    assert!(!ok);
    assert!(
        out.contains("PATH:2:20: app.echo.max_message_size"),
        "{out}"
    );

    let (ok, out) = check(
        "[[listener]]\naddr = \"127.0.0.1:9\"\n[[listener]]\naddr = \"127.0.0.1:9\"\n[[listener]]\naddr = \"127.0.0.1:10\"\n[listener.tls]\ncert = \"/nonexistent.crt\"\nkey = \"/nonexistent.key\"\n[[route]]\npath = \"/a\"\nupstream = \"nope\"\n[[route]]\npath = \"/b\"\napp = \"nope\"\n[[route]]\npath = \"/c\"\n[[route]]\npath = \"/d\"\napp = \"echo\"\nroot = \"/tmp\"\n",
    );
    assert!(!ok);
    for want in [
        "PATH:4:8: listener[1].addr: duplicate listener address",
        "PATH:8:8: listener[2].tls.cert: cannot read",
        "PATH:9:7: listener[2].tls.key: cannot read",
        "PATH:12:12: route[0].upstream: no [upstream.nope]",
        "PATH:15:7: route[1].app: unknown app",
        "route[2]: a route needs exactly one of `upstream`, `app` or `root` (found 0)",
        "route[3]: a route needs exactly one of `upstream`, `app` or `root` (found 2)",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    assert_eq!(out.lines().count(), 7, "{out}");
}

#[test]
fn check_refuses_a_wildcard_beside_an_address_on_its_port() {
    let (ok, out) = check(
        "[[listener]]\naddr = \"127.0.0.1:9\"\n[[listener]]\naddr = \"0.0.0.0:9\"\n[[listener]]\naddr = \"127.0.0.1:10\"\n[admin]\naddr = \"[::]:10\"\n",
    );
    assert!(!ok);
    assert!(out.contains("PATH:4:8: listener[1].addr: 0.0.0.0:9 and listener[0].addr (127.0.0.1:9) cannot both listen"), "{out}");
    assert!(
        out.contains(
            "PATH:8:8: admin.addr: [::]:10 and the [[listener]] at 127.0.0.1:10 cannot both listen"
        ),
        "{out}"
    );
    assert_eq!(out.lines().count(), 2, "{out}");
}

#[test]
fn check_accepts_later_issue_keys_and_prints_ok() {
    // Literal TOML: this is what a user writes (inline tables and all).
    let (out, _) = run_check(
        r#"
[server]
node_id = "n1"
secret = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
[[listener]]
addr = "127.0.0.1:0"
[upstream.api]
servers = ["127.0.0.1:3000", { addr = "localhost:3001", weight = 2 }]
balance = "least_conn"
sticky = "header:X-User-Id"
ws_inspect = true
ws_max_message_size = "1MiB"
ws_ping_interval = "20s"
[upstream.api.health]
path = "/healthz"
interval = "5s"
[[route]]
host = "*.example.test"
path = "/api/"
upstream = "api"
origins = ["https://app.example.test"]
[app.chat]
push_token = "t"
[cluster]
redis = "redis://127.0.0.1:6379"
heartbeat = "2s"
"#,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

#[test]
fn gen_cert_writes_a_loadable_pair() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["gen-cert", "--out"])
        .arg(dir.path())
        .args(["--host", "dev.test"])
        .output()
        .unwrap();
    assert!(out.status.success());
    wsgate::certs::load_certified_key(
        &dir.path().join("localhost.crt"),
        &dir.path().join("localhost.key"),
    )
    .unwrap();
    let v = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).contains(env!("CARGO_PKG_VERSION")));
}
