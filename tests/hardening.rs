//! Hardening over real sockets (issue 8): slowloris on plain and TLS listeners,
//! connection floods against the global and per-IP caps, malformed and smuggling
//! HTTP (checked against an upstream that counts what reaches it), malformed
//! WebSocket frames on app sessions, panics in connection tasks, and TLS version
//! and garbage handling. Nothing sleeps to synchronise: every wait is a poll
//! against a deadline.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::raw::{close_code, frame, open_ws, read_to_close, ws_request, End, Raw, MASK};
use common::tls::{tls11_client_hello, tls_client_versions};
use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// The tests here measure timing and process-wide RSS and open hundreds of
/// sockets: they run one at a time so they do not disturb each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A gateway with a plain and a TLS listener, `/echo`, `/chat` and `/` proxied to
/// `upstream`, on top of `cfg` (its `[server]` settings). Returns it with the CA
/// file for TLS clients.
async fn gateway(cfg: Cfg, upstream: SocketAddr) -> (TestGateway, String) {
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = write_cert(dir.path(), "localhost", &["localhost"]);
    let toml = cfg
        .listener_plain()
        .listener_tls(&crt, &key)
        .upstream("up", &[upstream])
        .set("upstream.up.retries", 0)
        .route_app("/echo", "echo")
        .route_app("/chat", "chat")
        .route_upstream("/", "up")
        .set("app.echo.max_message_size", "64KiB")
        .set("app.chat.max_message_size", "1KiB")
        .build();
    (TestGateway::start_in(&toml, dir).await, crt)
}

/// Sets `[server] key = value`.
fn server(key: &str, value: impl Into<toml::Value>) -> Cfg {
    Cfg::new().set(&format!("server.{key}"), value)
}

/// Sends raw bytes and returns the status line of the answer (or "" when the
/// connection was closed without one; a hang fails).
async fn status_line(addr: SocketAddr, bytes: &[u8]) -> String {
    raw(addr, bytes, Duration::from_secs(5)).await.status_line()
}

async fn get_ok(addr: SocketAddr) -> bool {
    status_line(
        addr,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await
    .starts_with("HTTP/1.1 200")
}

/// Connections admitted and not yet released, polled until it reaches `n`.
async fn active_reaches(gw: &TestGateway, n: usize) -> bool {
    eventually(Duration::from_secs(10), || async {
        gw.handle.active_connections() == n
    })
    .await
}

/// A slowloris client: sends a request line, then one header line every 100 ms
/// and never finishes the head. Returns how long the server took to cut it.
async fn dribble<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    give_up: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    if s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .is_err()
    {
        return Some(start.elapsed());
    }
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if start.elapsed() > give_up {
                    return None;
                }
                if s.write_all(b"X-Slow: 1\r\n").await.is_err() {
                    return Some(start.elapsed());
                }
            }
            r = s.read(&mut buf) => {
                // EOF, reset, or a 408: the server gave up on us.
                let _ = r;
                return Some(start.elapsed());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_at_header_timeout_and_does_not_delay_others() {
    let _serial = SERIAL.lock().await;
    let (up, hits) = counting_upstream().await;
    let (gw, ca) = gateway(
        server("header_timeout", "1500ms").set("server.tls_handshake_timeout", "1s"),
        up,
    )
    .await;
    let (plain, tls) = (gw.http(), gw.https());
    let client = tls_client(&ca, &[b"http/1.1"]);

    let mut lorises = Vec::new();
    for i in 0..200 {
        let client = client.clone();
        lorises.push(tokio::spawn(async move {
            if i % 4 == 0 {
                dribble(
                    tls_connect(tls, client, "localhost").await,
                    Duration::from_secs(8),
                )
                .await
            } else {
                dribble(
                    TcpStream::connect(plain).await.unwrap(),
                    Duration::from_secs(8),
                )
                .await
            }
        }));
    }
    // Silent clients: connect and say nothing (plain: no request; TLS: no ClientHello).
    let mut silent = Vec::new();
    for addr in [plain, plain, tls, tls] {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    // Meanwhile everyone else is served promptly, over plain and TLS.
    for _ in 0..20 {
        let t = Instant::now();
        assert!(
            get_ok(plain).await,
            "a normal request is answered during the attack"
        );
        let io = tls_connect(tls, client.clone(), "localhost").await;
        let r = send_h1(io, "/").await;
        assert_eq!(r, 200);
        assert!(
            t.elapsed() < Duration::from_millis(1000),
            "normal clients are not delayed: {:?}",
            t.elapsed()
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 40);

    for l in lorises {
        let cut = l.await.unwrap().expect("a slowloris connection is cut");
        assert!(cut >= Duration::from_millis(1000), "cut too early: {cut:?}");
        assert!(cut < Duration::from_millis(4000), "cut too late: {cut:?}");
    }
    for mut s in silent {
        let closed = read_to_close(&mut s, Duration::from_secs(5)).await.closed();
        assert!(closed, "a silent connection is closed");
    }
    assert!(active_reaches(&gw, 0).await, "every slot is released");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        40,
        "no dribbled request reached the upstream"
    );
    assert!(get_ok(plain).await);
}

/// One HTTP/1.1 GET over an established stream; returns the status code.
async fn send_h1<IO>(io: IO, path: &str) -> u16
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    send_on(io, request("GET", path, &[], ""))
        .await
        .status
        .as_u16()
}

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Opens `n` connections at once (from `source` when given), each sending a
/// WebSocket handshake; returns the status lines and the open streams.
async fn flood(addr: SocketAddr, n: usize, source: Option<&str>) -> (Vec<String>, Vec<TcpStream>) {
    let req = ws_request("/echo");
    let source = source.map(|s| s.parse::<std::net::IpAddr>().unwrap());
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let req = req.clone();
            tokio::spawn(async move {
                let sock = TcpSocket::new_v4().unwrap();
                if let Some(ip) = source {
                    sock.bind(SocketAddr::new(ip, 0)).unwrap();
                }
                let mut s = sock.connect(addr).await.unwrap();
                s.write_all(req.as_bytes()).await.unwrap();
                // Read the head only; 101s stay open as live sessions.
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                let deadline = Instant::now() + Duration::from_secs(20);
                while !head.ends_with(b"\r\n\r\n") {
                    match tokio::time::timeout_at(deadline, s.read(&mut b)).await {
                        Ok(Ok(1)) => head.push(b[0]),
                        _ => break,
                    }
                }
                let line = String::from_utf8_lossy(&head)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                (line, s)
            })
        })
        .collect();
    let mut lines = Vec::new();
    let mut streams = Vec::new();
    for t in tasks {
        let (l, s) = t.await.unwrap();
        lines.push(l);
        streams.push(s);
    }
    (lines, streams)
}

fn count(lines: &[String], prefix: &str) -> usize {
    lines.iter().filter(|l| l.starts_with(prefix)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_hold_the_global_and_per_ip_caps_with_bounded_memory() {
    let _serial = SERIAL.lock().await;
    let (up, _) = counting_upstream().await;
    let (gw, _) = gateway(server("max_connections", 300), up).await;
    let addr = gw.http();
    // Warm up (first-use allocations are not a leak), then measure.
    let (warm, s) = flood(addr, 50, None).await;
    assert_eq!(count(&warm, "HTTP/1.1 101"), 50);
    drop(s);
    assert!(active_reaches(&gw, 0).await);
    let before = vm_rss_kib();

    for round in 0..2 {
        let (lines, streams) = flood(addr, 750, None).await;
        let ok = count(&lines, "HTTP/1.1 101");
        let full = count(&lines, "HTTP/1.1 503");
        assert_eq!(ok, 300, "round {round}: exactly the cap is admitted");
        assert_eq!(
            ok + full,
            750,
            "round {round}: everyone else gets 503: {:?}",
            &lines[..5]
        );
        assert!(gw.handle.active_connections() <= 300);
        drop(streams);
        assert!(
            active_reaches(&gw, 0).await,
            "round {round}: slots come back"
        );
    }
    let after = vm_rss_kib();
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} KiB to {after} KiB over two floods"
    );
    // Service continues.
    let (lines, _held) = flood(addr, 10, None).await;
    assert_eq!(count(&lines, "HTTP/1.1 101"), 10);
    assert!(get_ok(addr).await);

    // Per-IP: 127.0.0.1 is capped at 50; another address is not affected.
    let (gw, _) = gateway(server("max_connections_per_ip", 50), up).await;
    let addr = gw.http();
    let (lines, held) = flood(addr, 700, None).await;
    assert_eq!(count(&lines, "HTTP/1.1 101"), 50);
    assert_eq!(count(&lines, "HTTP/1.1 429"), 650, "{:?}", &lines[..5]);
    let (other, _held2) = flood(addr, 20, Some("127.0.0.2")).await;
    assert_eq!(
        count(&other, "HTTP/1.1 101"),
        20,
        "another client address is still admitted"
    );
    drop(held);
    assert!(active_reaches(&gw, 20).await);
    let (again, _held3) = flood(addr, 5, None).await;
    assert_eq!(
        count(&again, "HTTP/1.1 101"),
        5,
        "freed per-IP slots are reusable"
    );
}

#[tokio::test]
async fn malformed_http_is_refused_and_nothing_reaches_the_upstream() {
    let _serial = SERIAL.lock().await;
    let (up, hits) = counting_upstream().await;
    let (gw, _) = gateway(server("max_request_head", "8KiB"), up).await;
    let addr = gw.http();
    let big = "a".repeat(16 * 1024);
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        (
            "oversized head",
            format!("GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: {big}\r\n\r\n").into_bytes(),
            &["HTTP/1.1 431"],
        ),
        (
            "many headers",
            format!("GET / HTTP/1.1\r\nHost: localhost\r\n{}\r\n", "X-A: b\r\n".repeat(400)).into_bytes(),
            &["HTTP/1.1 431"],
        ),
        ("absurd URI length", format!("GET /{big} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes(), &["HTTP/1.1 414", "HTTP/1.1 431"]),
        (
            "CL + TE",
            b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
            &["HTTP/1.1 400"],
        ),
        (
            "TE + CL",
            b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nX".to_vec(),
            &["HTTP/1.1 400"],
        ),
        (
            "conflicting Content-Lengths",
            b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde".to_vec(),
            &["HTTP/1.1 400"],
        ),
        (
            "Content-Length list",
            b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3, 5\r\n\r\nabcde".to_vec(),
            &["HTTP/1.1 400"],
        ),
        (
            "TE not ending in chunked",
            b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked, gzip\r\n\r\nabc".to_vec(),
            &["HTTP/1.1 400"],
        ),
        (
            "TE in HTTP/1.0",
            b"POST / HTTP/1.0\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            &["HTTP/1.1 400", "HTTP/1.0 400"],
        ),
        ("control byte in a value", b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: a\x01b\r\n\r\n".to_vec(), &["HTTP/1.1 400"]),
        ("NUL in a value", b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: a\x00b\r\n\r\n".to_vec(), &["HTTP/1.1 400"]),
        ("space in a name", b"GET / HTTP/1.1\r\nHost: localhost\r\nBad Name: x\r\n\r\n".to_vec(), &["HTTP/1.1 400"]),
        ("space before colon", b"GET / HTTP/1.1\r\nHost : localhost\r\n\r\n".to_vec(), &["HTTP/1.1 400"]),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: a\r\n  b\r\n\r\n".to_vec(), &["HTTP/1.1 400"]),
        ("binary request line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(), &["HTTP/1.1 400", ""]),
        ("bad method", b"G(T / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(), &["HTTP/1.1 400"]),
        ("bad version", b"GET / HTTP/7.3\r\nHost: localhost\r\n\r\n".to_vec(), &["HTTP/1.1 400", "HTTP/1.1 505"]),
        ("URI with spaces", b"GET /a b c HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(), &["HTTP/1.1 400"]),
        ("URI with bytes >= 0x80", b"GET /\xff\xfe HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(), &["HTTP/1.1 400"]),
        ("bad authority", b"GET http://[::1/ HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(), &["HTTP/1.1 400"]),
        ("missing Host", b"GET / HTTP/1.1\r\n\r\n".to_vec(), &["HTTP/1.1 400"]),
        ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(), &["HTTP/1.1 400", "HTTP/1.1 200"]),
        (
            "bad chunk size",
            b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
            &["HTTP/1.1 400", "", "HTTP/1.1 502"],
        ),
        (
            "huge chunk size",
            b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n".to_vec(),
            &["HTTP/1.1 400", "", "HTTP/1.1 502"],
        ),
    ];
    let mut forwarded = 0;
    for (name, bytes, want) in &cases {
        let before = hits.load(Ordering::SeqCst);
        let line = status_line(addr, bytes).await;
        assert!(
            want.iter().any(|w| if w.is_empty() {
                line.is_empty()
            } else {
                line.starts_with(w)
            }),
            "{name}: got {line:?}"
        );
        if line.starts_with("HTTP/1.1 200") {
            forwarded += 1;
        } else {
            assert_eq!(
                hits.load(Ordering::SeqCst),
                before,
                "{name}: a refused request reached the upstream"
            );
        }
        // The process keeps serving after each one.
        assert!(get_ok(addr).await, "{name}: still serving");
    }
    // Only the one accepted shape (and the health probes) reached the upstream.
    assert!(forwarded <= 1);
    assert_eq!(hits.load(Ordering::SeqCst), cases.len() + forwarded);
}

/// A small deterministic PRNG (xorshift64*), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// Between `min` and `min + spread - 1` random bytes.
    fn some_bytes(&mut self, min: usize, spread: u64) -> Vec<u8> {
        let n = min + (self.next() % spread) as usize;
        self.bytes(n)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_websocket_frames_never_break_the_gateway() {
    let _serial = SERIAL.lock().await;
    let (up, _) = counting_upstream().await;
    let (gw, _) = gateway(Cfg::new(), up).await;
    let addr = gw.http();

    // A header claiming 2^62 bytes on a chat session: 1009 from the header alone.
    for path in ["/chat/ws?user=big", "/echo"] {
        let mut s = open_ws(addr, path).await;
        let mut huge = vec![0x81, 0x80 | 127];
        huge.extend_from_slice(&(1u64 << 62).to_be_bytes());
        huge.extend_from_slice(&[1, 2, 3, 4]);
        s.write_all(&huge).await.unwrap();
        let Raw { bytes: out, end } = read_to_close(&mut s, Duration::from_secs(5)).await;
        let closed = end == End::Closed;
        assert!(closed, "{path}: closed");
        assert_eq!(close_code(&out), Some(1009), "{path}");
    }
    // The most significant length bit set (RFC 6455 forbids it): closed, no hang.
    let mut s = open_ws(addr, "/echo").await;
    let mut bad = vec![0x82, 0x80 | 127];
    bad.extend_from_slice(&u64::MAX.to_be_bytes());
    bad.extend_from_slice(&[1, 2, 3, 4]);
    s.write_all(&bad).await.unwrap();
    let Raw { bytes: out, end } = read_to_close(&mut s, Duration::from_secs(5)).await;
    let closed = end == End::Closed;
    assert!(closed);
    assert!(
        matches!(close_code(&out), Some(1002) | Some(1009)),
        "{:?}",
        close_code(&out)
    );
    // Chat: malformed JSON and unknown types are answered with error frames, the
    // session stays usable; a close with a bad code is a protocol error.
    let mut s = open_ws(addr, "/chat/ws?user=fuzzy").await;
    for junk in [
        &b"{"[..],
        b"[]",
        b"{\"type\":1}",
        b"{\"type\":\"nope\"}",
        b"null",
        &[0xff; 10],
    ] {
        let op = if std::str::from_utf8(junk).is_ok() {
            1
        } else {
            2
        };
        s.write_all(&frame(true, op, junk, MASK)).await.unwrap();
    }
    s.write_all(&frame(true, 8, &[0x03, 0xe7], MASK))
        .await
        .unwrap(); // 999: invalid
    let Raw { bytes: out, end } = read_to_close(&mut s, Duration::from_secs(5)).await;
    let closed = end == End::Closed;
    assert!(closed);
    assert!(
        String::from_utf8_lossy(&out).contains("error"),
        "error frames were sent"
    );

    // Random frames and random bytes on echo and chat sessions: every session
    // ends (the client half-closes after its garbage) and nothing panics.
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for i in 0..120 {
        let path = if i % 2 == 0 {
            "/echo".to_string()
        } else {
            format!("/chat/ws?user=r{i}")
        };
        let mut s = open_ws(addr, &path).await;
        let mut junk = Vec::new();
        for _ in 0..(1 + rng.next() % 4) {
            match rng.next() % 4 {
                0 => junk.extend(rng.some_bytes(0, 64)),
                1 => {
                    let op = [0u8, 1, 2, 3, 8, 9, 10, 11, 15][(rng.next() % 9) as usize];
                    let payload = rng.some_bytes(0, 200);
                    let mut f = frame(rng.next() % 2 == 0, op, &payload, MASK);
                    f[0] |= (rng.next() as u8) & 0x70; // reserved bits
                    junk.extend(f);
                }
                2 => {
                    // A frame header with a random 64-bit length and a short body.
                    junk.extend([0x82, 0x80 | 127]);
                    junk.extend(rng.next().to_be_bytes());
                    junk.extend(rng.bytes(8));
                }
                _ => junk.extend(frame(true, 1, b"{\"type\":\"join\",\"room\":\"r\"}", MASK)),
            }
        }
        s.write_all(&junk).await.unwrap();
        let _ = s.shutdown().await;
        let closed = read_to_close(&mut s, Duration::from_secs(10))
            .await
            .closed();
        assert!(closed, "iteration {i}: the session ended");
    }
    assert!(
        active_reaches(&gw, 0).await,
        "every session released its slot"
    );
    // Still serving: a clean echo session works.
    let mut s = open_ws(addr, "/echo").await;
    s.write_all(&frame(true, 1, b"still here", MASK))
        .await
        .unwrap();
    let mut h = [0u8; 12];
    tokio::time::timeout(WAIT, s.read_exact(&mut h))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(&h[2..], b"still here");
}

#[tokio::test]
async fn a_panicking_connection_task_is_logged_and_releases_its_slot() {
    let _serial = SERIAL.lock().await;
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    // The same pieces the accept loop uses: a slot from the caps, a real socket,
    // a task wrapped in `catch_panics`, on a tracker like `shutdown.sessions`.
    let limits = wsgate::limits::ConnLimits::new();
    let tracker = tokio_util::task::TaskTracker::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let logs = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let mut client = TcpStream::connect(addr).await.unwrap();
    let (stream, peer) = listener.accept().await.unwrap();
    let slot = limits.admit(peer.ip(), 1, 1).unwrap();
    assert_eq!(
        limits.admit(peer.ip(), 1, 1).err(),
        Some(wsgate::limits::Refusal::Full)
    );
    let task = tracker.spawn(tracing::instrument::WithSubscriber::with_subscriber(
        wsgate::shutdown::catch_panics(async move {
            let _slot = slot;
            let _stream = stream;
            if std::hint::black_box(true) {
                panic!("injected failure in a session");
            }
        }),
        subscriber,
    ));
    assert_eq!(task.await.unwrap(), None, "the panic was caught");
    let closed = read_to_close(&mut client, Duration::from_secs(5))
        .await
        .closed();
    assert!(closed, "the panicked task's socket was closed");
    assert_eq!(limits.active(), 0, "the slot was released");
    assert!(limits.admit(peer.ip(), 1, 1).is_ok());
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("connection task panicked") && text.contains("injected failure"),
        "{text}"
    );
}

#[tokio::test]
async fn tls_only_1_2_and_1_3_and_garbage_or_silence_is_closed() {
    let _serial = SERIAL.lock().await;
    let (up, _) = counting_upstream().await;
    let (gw, ca) = gateway(
        server("tls_handshake_timeout", "500ms").set("server.header_timeout", "5s"),
        up,
    )
    .await;
    let tls = gw.https();

    // TLS 1.1 only: refused with an alert, never a ServerHello.
    let mut s = TcpStream::connect(tls).await.unwrap();
    s.write_all(&tls11_client_hello()).await.unwrap();
    let Raw { bytes: out, end } = read_to_close(&mut s, Duration::from_secs(5)).await;
    let closed = end == End::Closed;
    assert!(closed, "a TLS 1.1 client is disconnected");
    assert!(
        out.is_empty() || out[0] == 0x15,
        "answered with an alert, not a handshake: {out:?}"
    );
    if out.len() >= 7 {
        assert_eq!(out[6], 70, "alert protocol_version");
    }

    // TLS 1.2 only and TLS 1.3 only both work.
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let cfg = tls_client_versions(&ca, &[], &[version]);
        let io = tls_connect(tls, cfg, "localhost").await;
        assert_eq!(io.get_ref().1.protocol_version(), Some(version.version));
        assert_eq!(send_h1(io, "/").await, 200);
    }

    // Garbage: plaintext HTTP and random bytes on the TLS port are closed at once.
    let mut rng = Rng(77);
    let mut garbage: Vec<Vec<u8>> = vec![b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec()];
    for _ in 0..20 {
        garbage.push(rng.some_bytes(1, 300));
    }
    // A record header claiming a huge length, then nothing: timed out.
    garbage.push(vec![0x16, 0x03, 0x03, 0xff, 0xff, 0x01]);
    for g in garbage {
        let t = Instant::now();
        let mut s = TcpStream::connect(tls).await.unwrap();
        let _ = s.write_all(&g).await;
        let closed = read_to_close(&mut s, Duration::from_secs(5)).await.closed();
        assert!(
            closed,
            "garbage {:?} closes the connection",
            &g[..g.len().min(8)]
        );
        assert!(t.elapsed() < Duration::from_secs(3));
    }

    // Silence: closed once tls_handshake_timeout passes.
    let t = Instant::now();
    let mut s = TcpStream::connect(tls).await.unwrap();
    let closed = read_to_close(&mut s, Duration::from_secs(5)).await.closed();
    assert!(closed);
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert!(active_reaches(&gw, 0).await);
}
